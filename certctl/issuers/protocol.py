"""The Issuer seam: what every issuer type does, whatever signs the certificate.

An issuer type is one module (`acme.issuer`, `ca`, `selfsigned`) implementing
`IssuerType` for its variant of the Issuer spec (`resources.IssuerSpec`);
`registry` maps each variant to its module. The reconcilers ask these
questions and never which type they talk to:

- readiness: can the issuer issue now? (the issuer's `Ready` condition);
- refusal: can it issue *this* certificate at all? (`Refused`, before any work);
- issue: here is a CSR: either the certificate, signed now (`Issued`), or the
  ACME order to place (`Ordered`), whose progress the Certificate follows.

An issuer with an `order_server` keeps the Certificate waiting across passes,
so its private key is kept in a Secret meanwhile, a copy of what it issued is
kept (an order is never repeated for a lost Secret), orders are budgeted per
server and the server's renewal information (ARI) is followed.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from certctl.api.resources import Certificate, Issuer, IssuerSpec
from certctl.api.status import AcmeAccountStatus
from certctl.issuers import issued
from certctl.issuers.acme import accounts as acme_accounts
from certctl.pki import keys
from certctl.store.interface import Store


@dataclass(frozen=True, kw_only=True)
class Environment:
    """What an issuer type may use besides the store."""

    cluster_resource_namespace: str
    """Where a ClusterIssuer's Secrets live, as in cert-manager."""
    accounts: acme_accounts.AcmeAccounts | None = None
    """The process's ACME clients; None where no ACME server may be asked (the
    certificate reconciler tested alone)."""


@dataclass(frozen=True, kw_only=True)
class Readiness:
    """The issuer's `Ready` condition, with cert-manager's reasons."""

    ready: bool
    reason: str
    message: str
    look_again: float | None = None
    """Seconds until the answer changes by itself (a CA certificate expiring)."""
    retry: bool = False
    """Not ready for a reason no event announces (a Secret fixed in place): look again
    with backoff."""
    acme: AcmeAccountStatus | None = None
    """The registered ACME account (`status.acme`), written with the condition."""


@dataclass(frozen=True, kw_only=True)
class Request:
    """A CSR for `certificate`, made with `private_key` (which self-signing needs)."""

    certificate: Certificate
    csr_pem: bytes
    private_key: keys.PrivateKey
    now: datetime.datetime
    replaces: str | None = None
    """The ARI CertID of the certificate this one renews (orders only)."""


@dataclass(frozen=True, kw_only=True)
class Issued:
    """Signed in this pass."""

    certificate: issued.IssuedCertificate
    how: str
    """For the Event: "self-signed", "signed by ClusterIssuer ca"."""


@dataclass(frozen=True, kw_only=True)
class Ordered:
    """An order to place: the spec of the Order object the Certificate then follows."""

    spec: Mapping[str, Any]


class Refused(Exception):
    """This issuer cannot issue this certificate; the message names the field to fix."""

    def __init__(self, message: str, *, reason: str = "BadConfig") -> None:
        super().__init__(message)
        self.reason = reason  # for the Certificate's Ready condition, cert-manager's


class CannotIssue(Exception):
    """The issuer cannot sign now (its key pair went missing): the message says why."""


def refuses_nothing(
    *, store: Store, issuer: Issuer[IssuerSpec], certificate: Certificate,
    labels: Mapping[str, str], env: Environment,
) -> None:
    """`IssuerType.refuse` of a type that signs any key type, DNS name and IP address."""


class IssuerType(Protocol):
    secret_paths: Sequence[tuple[str, ...]]
    """Where in the raw issuer object the Secrets it reads are named, so a Secret's change
    wakes the issuer even when its spec does not parse."""

    def order_server(self, issuer: Issuer[IssuerSpec]) -> str | None:
        """The ACME directory `issuer` places orders with; None when it signs in-process."""
        ...

    def readiness(
        self, *, store: Store, issuer: Issuer[IssuerSpec], now: datetime.datetime,
        env: Environment,
    ) -> Readiness:
        """Whether the issuer can issue now."""
        ...

    def refuse(
        self, *, store: Store, issuer: Issuer[IssuerSpec], certificate: Certificate,
        labels: Mapping[str, str], env: Environment,
    ) -> None:
        """Raise `Refused` when this issuer cannot issue `certificate`."""
        ...

    def issue(
        self, *, store: Store, issuer: Issuer[IssuerSpec], request: Request, env: Environment
    ) -> Issued | Ordered:
        """Sign `request` now, or say which order to place; raises `CannotIssue`."""
        ...
