"""`dns01.acmeDNS`: TXT values on an acme-dns server (https://github.com/joohoi/acme-dns).

Configured as in cert-manager:

    acmeDNS:
      host: https://auth.example.org
      accountSecretRef: {name: acme-dns, key: acmedns.json}

The Secret holds the JSON acme-dns' `/register` returned, per domain:
`{"example.com": {"username": ..., "password": ..., "fulldomain": ...,
"subdomain": ..., "allowfrom": []}}`, and `_acme-challenge.example.com` is
a CNAME to that `fulldomain` (certctl follows it, so the record handed over
is at `fulldomain` already; anything else means the CNAME is missing).

acme-dns has one call, `POST /update`, and keeps the two most recent values
of a subdomain, which is what lets `example.com` and `*.example.com` of one
order coexist. It cannot delete, so cleanup does nothing (as in
cert-manager); and since a third update would push out the older value,
present first looks the value up and does not send it again.
"""

from __future__ import annotations

import json
from typing import Any

from certctl.solvers.dns01 import errors, lookup
from certctl.solvers.dns01.config import ProviderConfig
from certctl.solvers.dns01.provider import ProviderContext, TxtRecord
from certctl.solvers.dns01.providers import http_api


def build(*, config: ProviderConfig, context: ProviderContext) -> AcmeDnsProvider:
    config.check_fields(known=("host", "accountSecretRef"))
    host = config.required_str("host")
    if not host.startswith(("https://", "http://")):
        raise config.fail("host", f"{host!r} must be a URL such as https://auth.example.org")
    ref = config.required_secret_ref("accountSecretRef")
    field = config.field("accountSecretRef")
    source = f"{field}: Secret {context.secrets.namespace}/{ref.name} key {ref.key!r}"
    try:
        accounts = json.loads(context.secrets.read(ref, field=field))
    except ValueError as err:
        raise errors.ConfigError(f"{source} is not JSON") from err
    if not isinstance(accounts, dict):
        raise errors.ConfigError(f"{source} must be a JSON object keyed by domain")
    return AcmeDnsProvider(host=host.rstrip("/"), accounts=accounts, source=source,
                           dns=context.dns, timeout=context.timeout)


class AcmeDnsProvider:
    """Holds the accounts' passwords: never put `_accounts` in a message or log."""

    def __init__(
        self,
        *,
        host: str,
        accounts: dict[str, Any],
        source: str,
        dns: lookup.DnsLookup,
        timeout: float,
    ) -> None:
        self.host = host
        self._accounts = accounts
        self._source = source
        self._dns = dns
        self._timeout = timeout

    def __repr__(self) -> str:
        return f"<acmeDNS provider at {self.host}>"

    def present(self, *, record: TxtRecord) -> None:
        account = self._account(record)
        fulldomain = lookup.absolute(account["fulldomain"])
        if record.fqdn != fulldomain:
            raise errors.ConfigError(
                f"acme-dns: _acme-challenge.{record.dns_name}. must be a CNAME to {fulldomain}"
                f" (the account's fulldomain), but it leads to {record.fqdn}")
        if self._already_served(fulldomain, record.value):
            return
        api = http_api.JsonApi(name="acme-dns API", base_url=self.host, timeout=self._timeout,
                               headers={"X-Api-User": account["username"],
                                        "X-Api-Key": account["password"]})
        api.call("POST", "/update",
                 json={"subdomain": account["subdomain"], "txt": record.value})

    def cleanup(self, *, record: TxtRecord) -> None:
        """acme-dns cannot delete: the value ages out when two newer ones are set."""

    def _account(self, record: TxtRecord) -> dict[str, str]:
        account = self._accounts.get(record.dns_name)
        if not isinstance(account, dict):
            raise errors.ConfigError(
                f"{self._source} has no account for {record.dns_name}: register one at"
                f" {self.host}/register and add its answer under {record.dns_name!r}")
        missing = [key for key in ("username", "password", "subdomain", "fulldomain")
                   if not isinstance(account.get(key), str) or not account.get(key)]
        if missing:
            raise errors.ConfigError(
                f"{self._source}: the account for {record.dns_name} lacks {', '.join(missing)}")
        return {key: str(value) for key, value in account.items() if isinstance(value, str)}

    def _already_served(self, fulldomain: str, value: str) -> bool:
        """Best effort: if the lookup fails, updating again is the lesser evil."""
        resolvers = self._dns.resolvers()
        for server in resolvers:
            try:
                _, values = self._dns.txt_values(fulldomain, server=server)
            except errors.Dns01Error:
                continue
            return value in values
        return False
