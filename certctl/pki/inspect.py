"""Reading issued certificates: what a chain holds and what its leaf says.

The reissue checks compare a `CertificateInfo` with the Certificate spec, so
the names here are already in the spec's form: DNS names as in the SAN
(lowercase A-labels), IP addresses in canonical text, times as aware UTC.
"""

from __future__ import annotations

import dataclasses
import datetime
import re

from cryptography import x509
from cryptography.x509.oid import NameOID

from certctl.api import resources
from certctl.pki import keys

_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----.*?-----END \1-----", re.DOTALL)


@dataclasses.dataclass(frozen=True, kw_only=True)
class CertificateInfo:
    dns_names: tuple[str, ...]
    ip_addresses: tuple[str, ...]
    common_name: str | None
    not_before: datetime.datetime
    not_after: datetime.datetime
    key_algorithm: resources.KeyAlgorithm
    key_size: int
    issuer_common_name: str | None
    serial: int


def split_pem_chain(pem: bytes) -> list[x509.Certificate]:
    """The certificates of a PEM chain, leaf first, in the order given.

    Raises ValueError when there is no certificate, when a block is not a
    CERTIFICATE (a key pasted into tls.crt), or when one does not parse.
    Text outside the blocks (OpenSSL's "subject=" lines) is tolerated.
    """
    blocks = list(_PEM_BLOCK.finditer(pem))
    if not blocks:
        raise ValueError("no PEM certificate found")
    certificates = []
    for index, block in enumerate(blocks):
        if block.group(1) != b"CERTIFICATE":
            label = block.group(1).decode("ascii")
            raise ValueError(f"PEM block {index} is a {label}, not a CERTIFICATE")
        try:
            certificates.append(x509.load_pem_x509_certificate(block.group(0)))
        except ValueError as exc:
            raise ValueError(f"PEM certificate {index} does not parse") from exc
    return certificates


def certificate_info(cert: x509.Certificate) -> CertificateInfo:
    """What a parsed certificate says, in the Certificate spec's terms."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        dns_names: list[str] = []
        ip_addresses: list[str] = []
    else:
        dns_names = [name.lower() for name in san.get_values_for_type(x509.DNSName)]
        ip_addresses = [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    algorithm, size = keys.describe_key(cert.public_key())
    return CertificateInfo(
        dns_names=tuple(dns_names),
        ip_addresses=tuple(ip_addresses),
        common_name=_common_name(cert.subject),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        key_algorithm=algorithm,
        key_size=size,
        issuer_common_name=_common_name(cert.issuer),
        serial=cert.serial_number,
    )


def inspect_certificate(pem: bytes) -> CertificateInfo:
    """Describe the leaf (first certificate) of a PEM chain; ValueError as `split_pem_chain`."""
    return certificate_info(split_pem_chain(pem)[0])


def key_matches_certificate(key: keys.PrivateKey, cert: x509.Certificate) -> bool:
    """True when `key` is the private half of the certificate's public key."""
    return keys.public_keys_equal(key, cert.public_key())


def _common_name(name: x509.Name) -> str | None:
    attributes = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not attributes:
        return None
    value = attributes[0].value
    return value if isinstance(value, str) else value.decode("utf-8", errors="replace")
