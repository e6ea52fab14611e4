"""`dns01.webhook`: cert-manager's webhook solvers, called over HTTP.

Configured as in cert-manager:

    webhook:
      groupName: acme.example.com
      solverName: example
      config: {...}            # anything; passed through as-is

cert-manager reaches a webhook through the Kubernetes API server (an
aggregated API): it POSTs a `ChallengePayload` to
`/apis/<groupName>/v1alpha1/<solverName>` and reads `response.success` and
`response.status.message` back. certctl sends the same request to the base
URL it is configured with (`api_endpoints["webhook"]`: the API server in a
cluster, or the webhook server itself with `certctl serve`), so existing
webhook servers work unchanged. `resolvedFQDN` and `resolvedZone` carry the
name after CNAME following and its zone, as cert-manager's do.
"""

from __future__ import annotations

import uuid
from typing import Any

from certctl.solvers.dns01 import errors
from certctl.solvers.dns01.config import ProviderConfig
from certctl.solvers.dns01.provider import ProviderContext, TxtRecord
from certctl.solvers.dns01.providers import http_api

PAYLOAD_API_VERSION = "acme.cert-manager.io/v1alpha1"


def build(*, config: ProviderConfig, context: ProviderContext) -> WebhookProvider:
    config.check_fields(known=("groupName", "solverName", "config"))
    group = config.required_str("groupName")
    solver = config.required_str("solverName")
    base_url = context.api_endpoints.get("webhook")
    if not base_url:
        raise config.fail(None, f"webhook solver {group}/{solver} needs the URL"
                          " webhook APIs are served at (certctl serve --dns01-webhook-url)")
    api = http_api.JsonApi(name=f"webhook {group}/{solver}", base_url=base_url, headers={},
                           timeout=context.timeout)
    return WebhookProvider(api=api, group=group, solver=solver,
                           solver_config=config.raw.get("config"),
                           resource_namespace=context.secrets.namespace,
                           allow_ambient_credentials=context.allow_ambient_credentials)


class WebhookProvider:
    def __init__(
        self,
        *,
        api: http_api.JsonApi,
        group: str,
        solver: str,
        solver_config: Any,
        resource_namespace: str,
        allow_ambient_credentials: bool,
    ) -> None:
        self._api = api
        self.group = group
        self.solver = solver
        self._config = solver_config
        self._resource_namespace = resource_namespace
        self._allow_ambient_credentials = allow_ambient_credentials

    def __repr__(self) -> str:
        return f"<webhook provider {self.group}/{self.solver} {self._api!r}>"

    def present(self, *, record: TxtRecord) -> None:
        self._send(action="Present", record=record)

    def cleanup(self, *, record: TxtRecord) -> None:
        self._send(action="CleanUp", record=record)

    def _send(self, *, action: str, record: TxtRecord) -> None:
        uid = str(uuid.uuid4())
        request: dict[str, Any] = {
            "uid": uid,
            "action": action,
            "type": "dns-01",
            "dnsName": record.dns_name,
            "key": record.value,
            "resourceNamespace": self._resource_namespace,
            "resolvedFQDN": record.fqdn,
            "resolvedZone": record.zone,
            "allowAmbientCredentials": self._allow_ambient_credentials,
        }
        if self._config is not None:
            request["config"] = self._config
        response = self._api.call(
            "POST", f"/apis/{self.group}/v1alpha1/{self.solver}",
            json={"apiVersion": PAYLOAD_API_VERSION, "kind": "ChallengePayload",
                  "request": request},
            expect=(200, 201))
        body = response.body if isinstance(response.body, dict) else {}
        result = body.get("response")
        if not isinstance(result, dict):
            raise errors.TemporaryError(
                f"webhook {self.group}/{self.solver}: {action} answered without a"
                " ChallengePayload response")
        if result.get("success") is not True:
            status = result.get("status")
            detail = http_api.api_message(status) if status else "no reason given"
            raise errors.TemporaryError(
                f"webhook {self.group}/{self.solver} failed to {action.lower()} TXT"
                f" {record.fqdn}: {detail}")
