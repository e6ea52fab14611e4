"""The DNS provider interface: what a built-in or third-party provider implements.

A provider puts one TXT value at one name and takes it away again. It is
built from its issuer configuration by a factory registered under a name
(`dns01.<name>` in the issuer, the entry-point name in the `certctl.dns01`
group):

    def build(*, config: ProviderConfig, context: ProviderContext) -> Provider

The factory validates the configuration and reads credentials from Secrets
(raising `errors.ConfigError`), so a broken solver is reported before any
DNS change. Both operations must be idempotent, since a restarted or
retried reconciler repeats them, and must leave other values alone: the
apex and the wildcard name of one order (`example.com` and
`*.example.com`) put two different values at the same
`_acme-challenge.example.com`, and both must be there at once.
Raise `errors.CredentialsRejected` when the provider refuses the
credentials, `errors.ConfigError` when nothing will work until the user
changes something, and `errors.TemporaryError` for anything worth retrying.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from certctl.solvers.dns01 import config, credentials, lookup


@dataclass(frozen=True, kw_only=True)
class TxtRecord:
    """One TXT value to present, as cert-manager's webhook ChallengeRequest describes it."""

    dns_name: str
    """The name being validated, without `*.` (`example.com`)."""
    wildcard: bool
    """Whether the order asks for `*.<dns_name>`."""
    fqdn: str
    """Where the record goes, after following CNAMEs (`_acme-challenge.example.com.`)."""
    zone: str
    """The apex of the zone `fqdn` is in (`example.com.`)."""
    value: str
    """The TXT value: base64url(SHA-256(key authorization))."""


class Provider(Protocol):
    def present(self, *, record: TxtRecord) -> None:
        """Make `record.value` one of the TXT values at `record.fqdn`; a no-op if it is."""
        ...

    def cleanup(self, *, record: TxtRecord) -> None:
        """Remove `record.value` from `record.fqdn`, and nothing else; a no-op if absent."""
        ...


@dataclass(frozen=True, kw_only=True)
class ProviderContext:
    """What a factory may use besides its configuration."""

    secrets: credentials.SecretReader
    """Secrets of the issuer's namespace (the cluster resource namespace for a ClusterIssuer)."""
    dns: lookup.DnsLookup
    """DNS queries through the configured nameservers (zone apex, TXT values, ...)."""
    allow_ambient_credentials: bool = False
    """Whether credentials from the environment (AWS instance roles, ...) may be used.
    True for ClusterIssuers and false for Issuers by default, as in cert-manager."""
    api_endpoints: Mapping[str, str] = field(default_factory=dict)
    """Base URLs replacing a provider's public API (`cloudflare`, `digitalocean`,
    `route53`, `sts`), for API proxies and tests; `webhook` is where webhook
    solvers' `/apis/<groupName>/v1alpha1/<solverName>` is served."""
    timeout: float = 10.0
    """Seconds per API request."""


class ProviderFactory(Protocol):
    def __call__(
        self, *, config: config.ProviderConfig, context: ProviderContext
    ) -> Provider: ...
