"""Which module implements an issuer: one per variant of the Issuer spec.

Adding an issuer type is adding its module (implementing
`protocol.IssuerType`), its spec variant in `api.resources` and its parser in
`api.parsing`, and a line below.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Final

from certctl.api.resources import AcmeIssuer, CaIssuer, Issuer, IssuerSpec, SelfSignedIssuer
from certctl.issuers import ca, protocol, selfsigned
from certctl.issuers.acme import issuer as acme

ISSUER_TYPES: Final[dict[type, protocol.IssuerType]] = {
    AcmeIssuer: acme,
    CaIssuer: ca,
    SelfSignedIssuer: selfsigned,
}


def issuer_type(issuer: Issuer[IssuerSpec]) -> protocol.IssuerType:
    return ISSUER_TYPES[type(issuer.spec)]


def secret_paths() -> Iterator[tuple[str, ...]]:
    """Where any issuer type names a Secret it reads, in the raw issuer object."""
    for module in ISSUER_TYPES.values():
        yield from module.secret_paths
