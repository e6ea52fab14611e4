"""A cert-manager DNS-01 webhook server: `POST /apis/<group>/v1alpha1/<solver>`.

It speaks the `ChallengePayload` API (acme.cert-manager.io/v1alpha1) that
cert-manager's webhook solvers implement: `request.action` is `Present` or
`CleanUp`, the record goes at `request.resolvedFQDN`, and the answer is the
payload with `response: {uid, success, status: {message}}`. Like a typical
webhook, it reads its credentials through `request.config` (here an
`apiKey` it compares), and keeps TXT values in a record store.
"""

from __future__ import annotations

from typing import Any

from tests.dns_apis.http_app import LocalApiServer, Request
from tests.dns_apis.records import RecordStore


class WebhookServer:
    def __init__(self, *, store: RecordStore, group: str, solver: str, api_key: str) -> None:
        self.store = store
        self.group = group
        self.solver = solver
        self.api_key = api_key
        self.server = LocalApiServer(handler=self.handle)

    @property
    def base_url(self) -> str:
        return self.server.url

    def stop(self) -> None:
        self.server.stop()

    def handle(self, request: Request) -> tuple[int, Any]:
        if request.method != "POST" or request.path != f"/apis/{self.group}/v1alpha1/{self.solver}":
            return 404, {"kind": "Status", "status": "Failure", "reason": "NotFound",
                         "code": 404, "message": f"the server could not find {request.path}"}
        payload = request.body or {}
        challenge = payload.get("request") or {}
        uid = challenge.get("uid")
        if (challenge.get("config") or {}).get("apiKey") != self.api_key:
            return 200, _response(payload, uid=uid, success=False, message="invalid apiKey")
        fqdn, zone, key = (challenge.get(k) for k in ("resolvedFQDN", "resolvedZone", "key"))
        if not (isinstance(fqdn, str) and isinstance(zone, str) and isinstance(key, str)):
            return 200, _response(payload, uid=uid, success=False,
                                  message="resolvedFQDN, resolvedZone and key are required")
        existing = [r for r in self.store.find(name=fqdn, type="TXT") if r.content == key]
        if challenge.get("action") == "Present" and not existing:
            self.store.add(zone=zone, name=fqdn, type="TXT", content=key, ttl=60)
        elif challenge.get("action") == "CleanUp":
            for record in existing:
                self.store.remove(record.id)
        return 200, _response(payload, uid=uid, success=True, message="")


def _response(payload: dict[str, Any], *, uid: Any, success: bool, message: str
              ) -> dict[str, Any]:
    answer: dict[str, Any] = {"uid": uid, "success": success}
    if message:
        answer["status"] = {"status": "Failure", "message": message}
    return {**payload, "response": answer}
