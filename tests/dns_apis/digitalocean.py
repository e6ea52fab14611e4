"""DigitalOcean's API v2 Domains records, the part certctl uses.

Shapes follow https://docs.digitalocean.com/reference/api/: records carry a
name relative to the domain (`@` for the apex), lists page with
`links.pages.next`, a bad token is a 401 `{"id": "unauthorized"}`, an
unknown domain a 404 `{"id": "not_found"}`. DigitalOcean accepts duplicate
records, so a provider must not create one twice.
"""

from __future__ import annotations

import re
from typing import Any

from tests.dns_apis.http_app import LocalApiServer, Request
from tests.dns_apis.records import Record, RecordStore


class DigitalOceanApi:
    def __init__(self, *, store: RecordStore, token: str) -> None:
        self.store = store
        self.token = token
        self.server = LocalApiServer(handler=self.handle)

    @property
    def base_url(self) -> str:
        return self.server.url + "/v2"

    def stop(self) -> None:
        self.server.stop()

    def handle(self, request: Request) -> tuple[int, Any]:
        if request.headers.get("authorization") != f"Bearer {self.token}":
            return 401, {"id": "unauthorized", "message": "Unable to authenticate you."}
        match = re.fullmatch(r"/v2/domains/([^/]+)/records(?:/([^/]+))?", request.path)
        if match is None or self.store.zone_id(match.group(1)) is None:
            return 404, {"id": "not_found",
                         "message": "The resource you were accessing could not be found."}
        domain, record_id = match.group(1), match.group(2)
        if request.method == "GET" and record_id is None:
            found = self.store.find(zone=domain, name=request.query.get("name"),
                                    type=request.query.get("type"))
            page = int(request.query.get("page", "1"))
            per_page = int(request.query.get("per_page", "20"))
            chunk = found[(page - 1) * per_page: page * per_page]
            pages: dict[str, str] = {}
            if page * per_page < len(found):
                pages["next"] = f"{self.base_url}/domains/{domain}/records?page={page + 1}"
            return 200, {"domain_records": [_record_json(r, domain) for r in chunk],
                         "links": {"pages": pages}, "meta": {"total": len(found)}}
        if request.method == "POST" and record_id is None:
            body = request.body or {}
            relative = str(body.get("name", ""))
            name = domain if relative == "@" else f"{relative}.{domain}"
            record = self.store.add(zone=domain, name=name, type=str(body["type"]),
                                    content=str(body["data"]), ttl=int(body.get("ttl", 1800)))
            return 201, {"domain_record": _record_json(record, domain)}
        if request.method == "DELETE" and record_id is not None:
            if not self.store.remove(record_id):
                return 404, {"id": "not_found", "message": "The resource you were accessing"
                             " could not be found."}
            return 204, None
        return 405, {"id": "method_not_allowed", "message": "Method not allowed."}


def _record_json(record: Record, domain: str) -> dict[str, Any]:
    relative = "@" if record.name == domain else record.name.removesuffix("." + domain)
    return {"id": int(record.id), "type": record.type, "name": relative, "data": record.content,
            "ttl": record.ttl}
