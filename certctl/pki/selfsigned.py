"""Certificates signed locally: self-signed ones and ones signed by our own CA.

Used by the selfSigned and ca issuers, and by tests and the data plane's
default certificate. Serial numbers are 159 random bits, as CAs must use.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

from certctl.pki import csr, keys


def self_signed_certificate(
    *,
    key: keys.PrivateKey,
    dns_names: Sequence[str],
    common_name: str | None,
    not_before: datetime.datetime,
    not_after: datetime.datetime,
    is_ca: bool = False,
    ip_addresses: Sequence[str] = (),
) -> bytes:
    """A PEM certificate for `key`, signed by itself.

    A CA gets keyCertSign/cRLSign and no extendedKeyUsage; a leaf gets
    digital signature (plus key encipherment for RSA) and server auth. The
    issuer equals the subject, so a CN too long for the subject (over 64
    characters) leaves both empty and the names only in the SAN.
    """
    subject = csr.subject_name(common_name)
    public_key = key.public_key()
    builder = _base_builder(
        subject=subject,
        issuer=subject,
        public_key=public_key,
        not_before=not_before,
        not_after=not_after,
    )
    alt_names = csr.subject_alt_names(dns_names=dns_names, ip_addresses=ip_addresses)
    if alt_names is not None:
        builder = builder.add_extension(alt_names, critical=len(subject) == 0)
    if is_ca:
        builder = builder.add_extension(
            x509.BasicConstraints(ca=True, path_length=None), critical=True
        )
        usages = ["digital signature", "cert sign", "crl sign"]
    else:
        builder = builder.add_extension(
            x509.BasicConstraints(ca=False, path_length=None), critical=True
        )
        usages = ["digital signature", "server auth"]
        if isinstance(key, rsa.RSAPrivateKey):
            usages.append("key encipherment")
    for extension, critical in csr.usage_extensions(usages):
        builder = builder.add_extension(extension, critical=critical)
    builder = builder.add_extension(
        x509.AuthorityKeyIdentifier.from_issuer_public_key(public_key), critical=False
    )
    certificate = builder.sign(key, keys.signature_hash(key))
    return certificate.public_bytes(serialization.Encoding.PEM)


def sign_certificate(
    *,
    csr_pem: bytes,
    ca_cert: x509.Certificate,
    ca_key: keys.PrivateKey,
    not_before: datetime.datetime,
    not_after: datetime.datetime,
) -> bytes:
    """Issue a leaf for a CSR with our CA, as cert-manager's CA issuer does.

    Subject, SAN and usages are copied from the CSR; without usages in the CSR
    the leaf gets digital signature, key encipherment and server auth. The
    leaf never becomes a CA whatever the CSR asks. `not_after` is capped at the
    CA's own expiry, since a leaf outliving its issuer fails verification.
    Raises ValueError for a CSR whose signature does not verify or a CA key
    that does not belong to the CA certificate.
    """
    request = _verified_csr(csr_pem)
    if not keys.public_keys_equal(ca_key, ca_cert.public_key()):
        raise ValueError("the CA key does not belong to the CA certificate")
    return _leaf_from_csr(
        request=request,
        issuer=ca_cert.subject,
        signing_key=ca_key,
        not_before=not_before,
        not_after=min(not_after, ca_cert.not_valid_after_utc),
    )


def self_sign_csr(
    *,
    csr_pem: bytes,
    key: keys.PrivateKey,
    not_before: datetime.datetime,
    not_after: datetime.datetime,
) -> bytes:
    """A leaf for a CSR signed by the CSR's own key, as cert-manager's selfSigned issuer does.

    Same shape as `sign_certificate` (subject, SAN and usages from the CSR),
    with the subject as issuer. Raises ValueError when `key` is not the key
    the CSR was made with: a self-signed certificate whose signature does not
    verify with its own public key is worthless.
    """
    request = _verified_csr(csr_pem)
    if not keys.public_keys_equal(key, request.public_key()):
        raise ValueError("the key is not the key of the CSR")
    return _leaf_from_csr(
        request=request,
        issuer=request.subject,
        signing_key=key,
        not_before=not_before,
        not_after=not_after,
    )


def _verified_csr(csr_pem: bytes) -> x509.CertificateSigningRequest:
    try:
        request = x509.load_pem_x509_csr(csr_pem)
    except ValueError as exc:
        raise ValueError("the CSR is not valid PEM") from exc
    if not request.is_signature_valid:
        raise ValueError("the CSR's signature does not verify")
    return request


def _leaf_from_csr(
    *,
    request: x509.CertificateSigningRequest,
    issuer: x509.Name,
    signing_key: keys.PrivateKey,
    not_before: datetime.datetime,
    not_after: datetime.datetime,
) -> bytes:
    builder = _base_builder(
        subject=request.subject,
        issuer=issuer,
        public_key=request.public_key(),
        not_before=not_before,
        not_after=not_after,
    )
    builder = builder.add_extension(
        x509.BasicConstraints(ca=False, path_length=None), critical=True
    )
    has_usages = False
    for extension in request.extensions:
        critical = extension.critical
        if isinstance(extension.value, x509.KeyUsage | x509.ExtendedKeyUsage):
            has_usages = True
        elif isinstance(extension.value, x509.SubjectAlternativeName):
            critical = critical or len(request.subject) == 0
        else:
            continue
        builder = builder.add_extension(extension.value, critical=critical)
    if not has_usages:
        for extension_value, critical in csr.usage_extensions(
            ["digital signature", "key encipherment", "server auth"]
        ):
            builder = builder.add_extension(extension_value, critical=critical)
    builder = builder.add_extension(
        x509.AuthorityKeyIdentifier.from_issuer_public_key(signing_key.public_key()),
        critical=False,
    )
    certificate = builder.sign(signing_key, keys.signature_hash(signing_key))
    return certificate.public_bytes(serialization.Encoding.PEM)


def _base_builder(
    *,
    subject: x509.Name,
    issuer: x509.Name,
    public_key: CertificatePublicKeyTypes,
    not_before: datetime.datetime,
    not_after: datetime.datetime,
) -> x509.CertificateBuilder:
    if not_after <= not_before:
        raise ValueError("not_after must be later than not_before")
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )
