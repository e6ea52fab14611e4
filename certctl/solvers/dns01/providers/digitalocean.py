"""`dns01.digitalocean`: TXT records through DigitalOcean's API v2 (Domains).

Configured as in cert-manager:

    digitalocean:
      tokenSecretRef: {name: digitalocean-dns, key: access-token}

Endpoints used (https://docs.digitalocean.com/reference/api/): `GET|POST
/domains/{domain}/records` and `DELETE /domains/{domain}/records/{id}`. The
domain is the zone apex found by SOA walking. Each TXT value is its own
record, so values coexist and cleanup deletes only ours.
"""

from __future__ import annotations

from typing import Any, Final

from certctl.solvers.dns01 import errors
from certctl.solvers.dns01.config import ProviderConfig
from certctl.solvers.dns01.provider import ProviderContext, TxtRecord
from certctl.solvers.dns01.providers import http_api

API_URL: Final = "https://api.digitalocean.com/v2"
TTL: Final = 60
_PAGE_SIZE: Final = 200
_MAX_PAGES: Final = 50


def build(*, config: ProviderConfig, context: ProviderContext) -> DigitalOceanProvider:
    config.check_fields(known=("tokenSecretRef",))
    token = context.secrets.read(config.required_secret_ref("tokenSecretRef"),
                                 field=config.field("tokenSecretRef"))
    api = http_api.JsonApi(name="DigitalOcean API",
                           base_url=context.api_endpoints.get("digitalocean", API_URL),
                           headers={"Authorization": f"Bearer {token}"}, timeout=context.timeout)
    return DigitalOceanProvider(api=api)


class DigitalOceanProvider:
    def __init__(self, *, api: http_api.JsonApi) -> None:
        self._api = api

    def __repr__(self) -> str:
        return f"<digitalocean provider {self._api!r}>"

    def present(self, *, record: TxtRecord) -> None:
        if self._records_with_value(record):
            return
        domain = _bare(record.zone)
        self._api.call("POST", f"/domains/{domain}/records",
                       json={"type": "TXT", "name": _relative(record), "data": record.value,
                             "ttl": TTL},
                       expect=(200, 201))

    def cleanup(self, *, record: TxtRecord) -> None:
        domain = _bare(record.zone)
        for record_id in self._records_with_value(record):
            self._api.call("DELETE", f"/domains/{domain}/records/{record_id}",
                           expect=(204, 200), allow=(404,))

    def _records_with_value(self, record: TxtRecord) -> list[str]:
        domain = _bare(record.zone)
        found = []
        for page in range(1, _MAX_PAGES + 1):
            response = self._api.call(
                "GET", f"/domains/{domain}/records",
                params={"type": "TXT", "name": _bare(record.fqdn), "page": str(page),
                        "per_page": str(_PAGE_SIZE)},
                allow=(404,))
            if response.status == 404:
                raise errors.ConfigError(
                    f"DigitalOcean API: domain {domain} not found in this account"
                    f" ({http_api.api_message(response.body)})")
            items = _records(response.body)
            found += [str(item["id"]) for item in items
                      if item.get("data") == record.value and item.get("id") is not None]
            if not _has_next_page(response.body):
                break
        return found


def _records(body: Any) -> list[dict[str, Any]]:
    items = body.get("domain_records") if isinstance(body, dict) else None
    return [item for item in items if isinstance(item, dict)] if isinstance(items, list) else []


def _has_next_page(body: Any) -> bool:
    links = body.get("links") if isinstance(body, dict) else None
    pages = links.get("pages") if isinstance(links, dict) else None
    return isinstance(pages, dict) and bool(pages.get("next"))


def _relative(record: TxtRecord) -> str:
    """The record name DigitalOcean wants: relative to the domain, `@` for the apex."""
    fqdn, zone = _bare(record.fqdn), _bare(record.zone)
    return "@" if fqdn == zone else fqdn[: -len(zone) - 1]


def _bare(name: str) -> str:
    return name.rstrip(".")
