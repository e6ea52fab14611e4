"""Reading issued certificates: what a chain holds and what its leaf says.

The reissue checks compare a `CertificateInfo` with the Certificate spec, so
the names here are already in the spec's form: DNS names as in the SAN
(lowercase A-labels), IP addresses in canonical text, times as aware UTC.
"""

from __future__ import annotations

import binascii
import dataclasses
import datetime
from collections.abc import Iterator

from cryptography import x509
from cryptography.x509.oid import NameOID

from certctl.api import resources
from certctl.pki import keys


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


def pem_blocks(pem: bytes) -> Iterator[tuple[bytes, bytes]]:
    """(label, DER) of each PEM block in `pem`, in order. Text outside the blocks
    (OpenSSL's "subject=" lines, "Bag Attributes") is skipped, as OpenSSL skips it;
    ValueError for a block without its END line. Found with `bytes.find`: a lazy regex
    over each block showed in the data plane's profile of first handshakes."""
    start = pem.find(b"-----BEGIN ")
    while start >= 0:
        label_end = pem.find(b"-----", start + 11)
        label = pem[start + 11:label_end]
        end = pem.find(b"-----END " + label + b"-----", label_end) if label_end > 0 else -1
        if end < 0:
            raise ValueError("a PEM block is cut short")
        try:
            der = binascii.a2b_base64(pem[label_end + 5:end])  # line breaks are skipped
        except binascii.Error:
            raise ValueError(f"a PEM {label.decode('ascii', 'replace')} is not base64") from None
        yield label, der
        start = pem.find(b"-----BEGIN ", end + len(label) + 14)


def split_pem_chain(pem: bytes) -> list[x509.Certificate]:
    """The certificates of a PEM chain, leaf first, in the order given.

    Raises ValueError when there is no certificate, when a block is not a
    CERTIFICATE (a key pasted into tls.crt), or when one does not parse.
    Text outside the blocks (OpenSSL's "subject=" lines) is tolerated.
    """
    certificates = []
    for index, (label, der) in enumerate(pem_blocks(pem)):
        if label != b"CERTIFICATE":
            raise ValueError(
                f"PEM block {index} is a {label.decode('ascii', 'replace')}, not a CERTIFICATE")
        try:
            certificates.append(x509.load_der_x509_certificate(der))
        except ValueError as exc:
            raise ValueError(f"PEM certificate {index} does not parse") from exc
    if not certificates:
        raise ValueError("no PEM certificate found")
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
