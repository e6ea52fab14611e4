"""The selfSigned issuer: every certificate is signed by its own private key.

As in cert-manager, `ca.crt` holds the certificate itself (it is its own
root), and the key may be of any type certctl generates, Ed25519 included.
The caller brings the key it generated and the CSR made with it.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence

from certctl.api import parsing
from certctl.api.resources import Issuer, IssuerSpec
from certctl.issuers import issued, protocol
from certctl.pki import keys, selfsigned
from certctl.store.interface import Store

secret_paths: Sequence[tuple[str, ...]] = ()


def order_server(issuer: Issuer[IssuerSpec]) -> None:
    return None  # signs in-process


def readiness(
    *, store: Store, issuer: Issuer[IssuerSpec], now: datetime.datetime,
    env: protocol.Environment,
) -> protocol.Readiness:
    """Always ready: there is nothing to be missing."""
    return protocol.Readiness(ready=True, reason="IsReady",
                              message="Each certificate is signed by its own private key")


refuse = protocol.refuses_nothing


def issue(
    *, store: Store, issuer: Issuer[IssuerSpec], request: protocol.Request,
    env: protocol.Environment,
) -> protocol.Issued:
    signed = sign(csr_pem=request.csr_pem, key=request.private_key, now=request.now,
                  duration=request.certificate.duration or parsing.DEFAULT_DURATION)
    return protocol.Issued(certificate=signed, how="self-signed")


def sign(
    *,
    csr_pem: bytes,
    key: keys.PrivateKey,
    now: datetime.datetime,
    duration: datetime.timedelta,
) -> issued.IssuedCertificate:
    """A certificate valid from `now` for `duration`; ValueError if `key` did not make the CSR."""
    leaf = selfsigned.self_sign_csr(csr_pem=csr_pem, key=key, not_before=now,
                                    not_after=now + duration)
    return issued.IssuedCertificate(chain_pem=leaf, ca_pem=leaf)
