"""ACME Renewal Information (RFC 9773): the certificate identifier.

The CA names each certificate it issued by its ARI ``CertID``: the base64url
(unpadded) keyIdentifier of the certificate's Authority Key Identifier, a
dot, and the base64url DER content octets of its serial number. The same
identifier goes into a renewal order's ``replaces`` field. The window maths
lives in `certctl.pki.renewal`; fetching in `certctl.issuers.acme.client`.
"""

from __future__ import annotations

from cryptography import x509
from josepy import b64


def cert_id(certificate: x509.Certificate) -> str | None:
    """The ARI CertID of `certificate`, or None when it has no keyIdentifier to name it by.

    The serial is encoded as DER encodes an INTEGER (two's complement, big
    endian, minimal): a serial whose top bit is set gets a leading zero
    octet, so ``0x80`` is ``AIA``, not ``gA``.
    """
    try:
        aki = certificate.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
    except x509.ExtensionNotFound:
        return None
    key_identifier = aki.value.key_identifier
    if not key_identifier:
        return None
    serial = certificate.serial_number
    serial_octets = serial.to_bytes(serial.bit_length() // 8 + 1, "big", signed=True)
    return f"{b64.b64encode(key_identifier).decode()}.{b64.b64encode(serial_octets).decode()}"
