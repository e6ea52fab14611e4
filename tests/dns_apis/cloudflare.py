"""Cloudflare's API v4, the part certctl uses: zones by name, DNS records list/create/delete.

Shapes follow https://developers.cloudflare.com/api/: every answer is
`{"success", "errors", "messages", "result"}`; a bad token is a 403 with
code 10000 ("Authentication error"); an identical record is refused with
code 81058; each TXT value is a record of its own.
"""

from __future__ import annotations

import re
from typing import Any

from tests.dns_apis.http_app import LocalApiServer, Request
from tests.dns_apis.records import Record, RecordStore

API_PREFIX = "/client/v4"


class CloudflareApi:
    def __init__(self, *, store: RecordStore, token: str) -> None:
        self.store = store
        self.token = token
        self.server = LocalApiServer(handler=self.handle)

    @property
    def base_url(self) -> str:
        return self.server.url + API_PREFIX

    def stop(self) -> None:
        self.server.stop()

    def handle(self, request: Request) -> tuple[int, Any]:
        if request.headers.get("authorization") != f"Bearer {self.token}":
            return 403, _failure(10000, "Authentication error")
        path = request.path.removeprefix(API_PREFIX)
        if request.method == "GET" and path == "/zones":
            name = request.query.get("name")
            zones = [{"id": zone_id, "name": zone, "status": "active"}
                     for zone, zone_id in self.store.zones.items() if name in (None, zone)]
            return 200, _success(zones)
        match = re.fullmatch(r"/zones/([^/]+)/dns_records(?:/([^/]+))?", path)
        if match is None:
            return 404, _failure(7003, "Could not route to " + path)
        zone = self.store.zone_name(match.group(1))
        if zone is None:
            return 404, _failure(7003, "Could not route to " + path)
        record_id = match.group(2)
        if request.method == "GET" and record_id is None:
            found = self.store.find(zone=zone, name=request.query.get("name"),
                                    type=request.query.get("type"))
            return 200, _success([_record_json(r) for r in found])
        if request.method == "POST" and record_id is None:
            body = request.body or {}
            name, content = str(body.get("name", "")), str(body.get("content", ""))
            if not (name == zone or name.endswith("." + zone)):
                return 400, _failure(1004, "DNS Validation Error")
            if any(r.content == content for r in self.store.find(name=name, type=body["type"])):
                return 400, _failure(81058, "An identical record already exists.")
            record = self.store.add(zone=zone, name=name, type=body["type"], content=content,
                                    ttl=int(body.get("ttl", 1)))
            return 200, _success(_record_json(record))
        if request.method == "DELETE" and record_id is not None:
            if not self.store.remove(record_id):
                return 404, _failure(81044, "Record does not exist.")
            return 200, _success({"id": record_id})
        return 405, _failure(10405, "Method not allowed")


def _record_json(record: Record) -> dict[str, Any]:
    return {"id": record.id, "zone_name": record.zone, "name": record.name,
            "type": record.type, "content": record.content, "ttl": record.ttl}


def _success(result: Any) -> dict[str, Any]:
    return {"success": True, "errors": [], "messages": [], "result": result}


def _failure(code: int, message: str) -> dict[str, Any]:
    return {"success": False, "errors": [{"code": code, "message": message}], "messages": [],
            "result": None}
