"""What an issuer that signs in-process hands back: the chain for tls.crt and the CA for ca.crt."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class IssuedCertificate:
    chain_pem: bytes  # the leaf, then intermediates; never the root
    ca_pem: bytes  # what `ca.crt` holds: the root clients should trust
