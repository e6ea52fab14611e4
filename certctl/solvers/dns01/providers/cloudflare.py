"""`dns01.cloudflare`: TXT records through Cloudflare's API v4.

Configured as in cert-manager, with an API token (recommended: Zone:DNS:Edit
on the zones concerned) or a global API key plus the account's email:

    cloudflare:
      apiTokenSecretRef: {name: cloudflare-api-token, key: api-token}
    # or
    cloudflare:
      email: me@example.com
      apiKeySecretRef: {name: cloudflare-api-key, key: api-key}

Endpoints used (https://developers.cloudflare.com/api/): `GET /zones?name=`,
`GET|POST /zones/{id}/dns_records`, `DELETE /zones/{id}/dns_records/{id}`.
Cloudflare keeps each TXT value as its own record, so values of one name
coexist and cleanup deletes only the record holding ours.
"""

from __future__ import annotations

from typing import Any, Final

from certctl.solvers.dns01 import errors
from certctl.solvers.dns01.config import ProviderConfig
from certctl.solvers.dns01.provider import ProviderContext, TxtRecord
from certctl.solvers.dns01.providers import http_api

API_URL: Final = "https://api.cloudflare.com/client/v4"
TTL: Final = 120  # the lowest Cloudflare accepts outside Enterprise plans
_DUPLICATE_RECORD: Final = 81058  # "An identical record already exists."


def build(*, config: ProviderConfig, context: ProviderContext) -> CloudflareProvider:
    config.check_fields(known=("email", "apiKeySecretRef", "apiTokenSecretRef"))
    key_ref = config.secret_ref("apiKeySecretRef")
    token_ref = config.secret_ref("apiTokenSecretRef")
    email = config.optional_str("email")
    if (key_ref is None) == (token_ref is None):
        raise config.fail(None, "exactly one of apiTokenSecretRef or apiKeySecretRef must be set")
    if token_ref is not None:
        headers = {"Authorization": "Bearer " + context.secrets.read(
            token_ref, field=config.field("apiTokenSecretRef"))}
    else:
        assert key_ref is not None
        if email is None:
            raise config.fail("email", "is required with apiKeySecretRef")
        headers = {"X-Auth-Email": email,
                   "X-Auth-Key": context.secrets.read(key_ref,
                                                      field=config.field("apiKeySecretRef"))}
    api = http_api.JsonApi(name="Cloudflare API",
                           base_url=context.api_endpoints.get("cloudflare", API_URL),
                           headers=headers, timeout=context.timeout)
    return CloudflareProvider(api=api)


class CloudflareProvider:
    def __init__(self, *, api: http_api.JsonApi) -> None:
        self._api = api

    def __repr__(self) -> str:
        return f"<cloudflare provider {self._api!r}>"

    def present(self, *, record: TxtRecord) -> None:
        zone_id = self._zone_id(record)
        if self._records_with_value(zone_id=zone_id, record=record):
            return
        response = self._api.call(
            "POST", f"/zones/{zone_id}/dns_records",
            json={"type": "TXT", "name": _bare(record.fqdn), "content": record.value, "ttl": TTL},
            expect=(200,), allow=(400,))
        if response.status == 400 and not _has_error_code(response.body, _DUPLICATE_RECORD):
            raise self._api.failure(response, what=f"creating TXT {record.fqdn}")

    def cleanup(self, *, record: TxtRecord) -> None:
        zone_id = self._zone_id(record)
        for record_id in self._records_with_value(zone_id=zone_id, record=record):
            self._api.call("DELETE", f"/zones/{zone_id}/dns_records/{record_id}",
                           expect=(200,), allow=(404,))

    def _zone_id(self, record: TxtRecord) -> str:
        """The id of the zone holding the record: the SOA zone, else the nearest parent
        the account has (the public SOA may come from a different view than Cloudflare's)."""
        labels = _bare(record.fqdn).split(".")
        candidates = [_bare(record.zone)] + [".".join(labels[i:])
                                             for i in range(1, len(labels) - 1)]
        for name in dict.fromkeys(candidates):
            body = self._api.call("GET", "/zones", params={"name": name}).body
            for zone in _results(body):
                if isinstance(zone, dict) and zone.get("name") == name and zone.get("id"):
                    return str(zone["id"])
        raise errors.ConfigError(
            f"Cloudflare API: no zone for {record.fqdn} in this account (looked for "
            f"{', '.join(dict.fromkeys(candidates))}); check the token's zone permissions")

    def _records_with_value(self, *, zone_id: str, record: TxtRecord) -> list[str]:
        body = self._api.call("GET", f"/zones/{zone_id}/dns_records",
                              params={"type": "TXT", "name": _bare(record.fqdn),
                                      "per_page": "100"}).body
        return [str(item["id"]) for item in _results(body)
                if isinstance(item, dict) and _unquoted(item.get("content")) == record.value
                and item.get("id")]


def _results(body: Any) -> list[Any]:
    result = body.get("result") if isinstance(body, dict) else None
    return result if isinstance(result, list) else []


def _has_error_code(body: Any, code: int) -> bool:
    problems = body.get("errors") if isinstance(body, dict) else None
    return isinstance(problems, list) and any(
        isinstance(p, dict) and p.get("code") == code for p in problems)


def _unquoted(content: Any) -> str:
    """Cloudflare may hand TXT content back in quotes (`"value"`) or not."""
    text = str(content or "")
    return text[1:-1] if len(text) >= 2 and text[0] == text[-1] == '"' else text


def _bare(name: str) -> str:
    return name.rstrip(".")
