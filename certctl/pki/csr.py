"""Certificate signing requests, shaped like cert-manager's.

Names go in the subjectAltName; the common name, when set and short enough,
also goes in the subject. Usages are encoded as keyUsage (critical) and
extendedKeyUsage extensions, as cert-manager does by default: ACME CAs ignore
them, but our own CA issuer copies them.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from certctl.api.names import MAX_COMMON_NAME_LENGTH
from certctl.pki import keys

_KEY_USAGE_FLAGS: dict[str, str] = {
    "signing": "digital_signature",
    "digital signature": "digital_signature",
    "content commitment": "content_commitment",
    "key encipherment": "key_encipherment",
    "key agreement": "key_agreement",
    "data encipherment": "data_encipherment",
    "cert sign": "key_cert_sign",
    "crl sign": "crl_sign",
    "encipher only": "encipher_only",
    "decipher only": "decipher_only",
}
_EXTENDED_KEY_USAGES: dict[str, x509.ObjectIdentifier] = {
    "any": ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE,
    "server auth": ExtendedKeyUsageOID.SERVER_AUTH,
    "client auth": ExtendedKeyUsageOID.CLIENT_AUTH,
    "code signing": ExtendedKeyUsageOID.CODE_SIGNING,
    "email protection": ExtendedKeyUsageOID.EMAIL_PROTECTION,
    "s/mime": ExtendedKeyUsageOID.EMAIL_PROTECTION,
    "ipsec end system": x509.ObjectIdentifier("1.3.6.1.5.5.7.3.5"),
    "ipsec tunnel": x509.ObjectIdentifier("1.3.6.1.5.5.7.3.6"),
    "ipsec user": x509.ObjectIdentifier("1.3.6.1.5.5.7.3.7"),
    "timestamping": ExtendedKeyUsageOID.TIME_STAMPING,
    "ocsp signing": ExtendedKeyUsageOID.OCSP_SIGNING,
    "microsoft sgc": x509.ObjectIdentifier("1.3.6.1.4.1.311.10.3.3"),
    "netscape sgc": x509.ObjectIdentifier("2.16.840.1.113730.4.1"),
}


def build_csr(
    *,
    key: keys.PrivateKey,
    dns_names: Sequence[str],
    ip_addresses: Sequence[str],
    common_name: str | None,
    usages: Sequence[str],
) -> bytes:
    """A PEM CSR signed by `key`.

    A common name over 64 characters is left out of the subject but its name
    stays in the SAN (callers put it in `dns_names`). With an empty subject the
    SAN extension is marked critical, as RFC 5280 requires. Raises ValueError
    when there is no name at all or a usage is unknown.
    """
    if not (dns_names or ip_addresses or common_name):
        raise ValueError("a CSR needs at least one DNS name, IP address or common name")
    subject = subject_name(common_name)
    builder = x509.CertificateSigningRequestBuilder().subject_name(subject)
    alt_names = subject_alt_names(dns_names=dns_names, ip_addresses=ip_addresses)
    if alt_names is not None:
        builder = builder.add_extension(alt_names, critical=len(subject) == 0)
    for extension, critical in usage_extensions(usages):
        builder = builder.add_extension(extension, critical=critical)
    csr = builder.sign(key, keys.signature_hash(key))
    return csr.public_bytes(serialization.Encoding.PEM)


def subject_name(common_name: str | None) -> x509.Name:
    """The subject: just the CN, or empty when there is none or it is too long."""
    if common_name and len(common_name) <= MAX_COMMON_NAME_LENGTH:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    return x509.Name([])


def subject_alt_names(
    *, dns_names: Sequence[str], ip_addresses: Sequence[str]
) -> x509.SubjectAlternativeName | None:
    """The SAN extension, or None when there are no names (a CN-only request)."""
    general_names: list[x509.GeneralName] = [x509.DNSName(name) for name in dns_names]
    general_names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses]
    return x509.SubjectAlternativeName(general_names) if general_names else None


def usage_extensions(usages: Sequence[str]) -> list[tuple[x509.ExtensionType, bool]]:
    """keyUsage (critical) and extendedKeyUsage for cert-manager usage names.

    Either extension is left out when no usage of its kind is asked for.
    Raises ValueError for a name cert-manager does not know, and (from
    cryptography, as X.509 says) for encipher/decipher only without key agreement.
    """
    flags: set[str] = set()
    extended: list[x509.ObjectIdentifier] = []
    for usage in usages:
        if usage in _KEY_USAGE_FLAGS:
            flags.add(_KEY_USAGE_FLAGS[usage])
        elif usage in _EXTENDED_KEY_USAGES:
            oid = _EXTENDED_KEY_USAGES[usage]
            if oid not in extended:
                extended.append(oid)
        else:
            raise ValueError(f"unknown usage {usage!r}")
    extensions: list[tuple[x509.ExtensionType, bool]] = []
    if flags:
        key_usage = x509.KeyUsage(
            digital_signature="digital_signature" in flags,
            content_commitment="content_commitment" in flags,
            key_encipherment="key_encipherment" in flags,
            data_encipherment="data_encipherment" in flags,
            key_agreement="key_agreement" in flags,
            key_cert_sign="key_cert_sign" in flags,
            crl_sign="crl_sign" in flags,
            encipher_only="encipher_only" in flags,
            decipher_only="decipher_only" in flags,
        )
        extensions.append((key_usage, True))
    if extended:
        extensions.append((x509.ExtendedKeyUsage(extended), False))
    return extensions
