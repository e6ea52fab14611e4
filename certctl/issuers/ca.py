"""The ca issuer: signs with a CA key pair kept in a Secret, as cert-manager's CA issuer does.

The Secret is shaped like a kubernetes.io/tls Secret: `tls.crt` holds the CA
certificate, optionally followed by the chain up to its root, `tls.key` its
private key, and `ca.crt` (optional) the root. Issued Secrets get the leaf and
any intermediates in `tls.crt` and the root in `ca.crt`, so
`openssl verify -CAfile ca.crt -untrusted tls.crt tls.crt` succeeds.

The issuer type (`protocol.IssuerType`) reads the Secret through the store
(in the issuer's namespace, or the cluster resource namespace for a
ClusterIssuer); `load_key_pair` and `sign` below do no I/O.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from certctl.api import parsing
from certctl.api.resources import CaIssuer, Issuer, IssuerSpec
from certctl.issuers import issued, protocol
from certctl.pki import inspect, keys, selfsigned
from certctl.pki import secret as tls_secret
from certctl.store.interface import Store

# cert-manager's reasons for a CA issuer that cannot sign, so users find them.
ProblemReason = Literal["ErrGetKeyPair", "ErrInvalidKeyPair"]


class KeyPairProblem(Exception):
    """The CA Secret is missing or unusable; `reason` goes into the Ready condition."""

    def __init__(self, *, reason: ProblemReason, message: str) -> None:
        super().__init__(message)
        self.reason: ProblemReason = reason
        self.message = message


@dataclass(frozen=True, kw_only=True)
class KeyPair:
    certificate: x509.Certificate
    key: keys.PrivateKey
    issuers: tuple[x509.Certificate, ...]  # the CA's own chain above it, root last if present
    root_pem: bytes | None  # the Secret's ca.crt


def load_key_pair(
    *, secret: Mapping[str, Any] | None, namespace: str, name: str, now: datetime.datetime
) -> KeyPair:
    """The CA key pair from its Secret, checked to be able to sign now.

    Raises KeyPairProblem: ErrGetKeyPair when the Secret is missing or does
    not parse, ErrInvalidKeyPair when it parses but cannot sign (the key does
    not match, the certificate is not a CA or has expired). Messages never
    quote key material.
    """
    where = f"Secret {namespace}/{name}"
    if secret is None:
        raise KeyPairProblem(reason="ErrGetKeyPair",
                             message=f"Error getting keypair for CA issuer: {where} not found")
    try:
        contents = tls_secret.read_tls_secret(secret)
    except tls_secret.SecretInvalid as err:
        raise KeyPairProblem(
            reason="ErrGetKeyPair", message=f"Error getting keypair for CA issuer: {where}: {err}"
        ) from err
    certificate = contents.leaf
    if not inspect.key_matches_certificate(contents.key, certificate):
        raise KeyPairProblem(reason="ErrInvalidKeyPair",
                             message=f"{where}: tls.key is not the key of the certificate in "
                             "tls.crt")
    try:
        constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is None or not constraints.ca:
        raise KeyPairProblem(reason="ErrInvalidKeyPair",
                             message=f"{where}: the certificate in tls.crt is not a CA "
                             "(basicConstraints CA:TRUE is missing)")
    if not certificate.not_valid_before_utc <= now < certificate.not_valid_after_utc:
        raise KeyPairProblem(reason="ErrInvalidKeyPair",
                             message=f"{where}: the CA certificate is valid only from "
                             f"{certificate.not_valid_before_utc:%Y-%m-%dT%H:%M:%SZ} to "
                             f"{certificate.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}")
    return KeyPair(certificate=certificate, key=contents.key, issuers=contents.chain[1:],
                   root_pem=contents.ca_pem)


def sign(
    *, key_pair: KeyPair, csr_pem: bytes, now: datetime.datetime, duration: datetime.timedelta
) -> issued.IssuedCertificate:
    """A leaf for the CSR, valid from `now` for `duration` (capped at the CA's expiry).

    ValueError when the CSR's signature does not verify.
    """
    leaf_pem = selfsigned.sign_certificate(csr_pem=csr_pem, ca_cert=key_pair.certificate,
                                           ca_key=key_pair.key, not_before=now,
                                           not_after=now + duration)
    chain = [key_pair.certificate, *key_pair.issuers]
    top = chain[-1]
    if top.subject == top.issuer:
        # A root in the chain is what clients trust, not what servers send.
        root_pem = _pem(top)
        chain = chain[:-1]
    else:
        root_pem = key_pair.root_pem or _pem(top)
    return issued.IssuedCertificate(
        chain_pem=leaf_pem + b"".join(_pem(certificate) for certificate in chain),
        ca_pem=root_pem,
    )


def _pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


# --- the issuer type -------------------------------------------------------------------

secret_paths: Sequence[tuple[str, ...]] = (("spec", "ca", "secretName"),)


def order_server(issuer: Issuer[IssuerSpec]) -> None:
    return None  # signs in-process


def readiness(
    *, store: Store, issuer: Issuer[IssuerSpec], now: datetime.datetime,
    env: protocol.Environment,
) -> protocol.Readiness:
    """Ready while the key pair can sign; looked at again when the CA certificate expires."""
    try:
        key_pair = _key_pair(store=store, issuer=issuer, now=now, env=env)
    except KeyPairProblem as err:
        return protocol.Readiness(ready=False, reason=err.reason, message=err.message,
                                  retry=True)
    return protocol.Readiness(
        ready=True, reason="KeyPairVerified", message="Signing CA verified",
        look_again=(key_pair.certificate.not_valid_after_utc - now).total_seconds())


refuse = protocol.refuses_nothing


def issue(
    *, store: Store, issuer: Issuer[IssuerSpec], request: protocol.Request,
    env: protocol.Environment,
) -> protocol.Issued:
    try:
        key_pair = _key_pair(store=store, issuer=issuer, now=request.now, env=env)
    except KeyPairProblem as err:
        raise protocol.CannotIssue(f"{issuer.kind} {issuer.name}: {err.message}") from err
    signed = sign(key_pair=key_pair, csr_pem=request.csr_pem, now=request.now,
                  duration=request.certificate.duration or parsing.DEFAULT_DURATION)
    return protocol.Issued(certificate=signed, how=f"signed by {issuer.kind} {issuer.name}")


def _key_pair(
    *, store: Store, issuer: Issuer[IssuerSpec], now: datetime.datetime,
    env: protocol.Environment,
) -> KeyPair:
    secret_name = cast(CaIssuer, issuer.spec).secret_name
    namespace = issuer.namespace or env.cluster_resource_namespace
    return load_key_pair(secret=store.get(kind="Secret", namespace=namespace, name=secret_name),
                         namespace=namespace, name=secret_name, now=now)
