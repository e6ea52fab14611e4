"""The TLS-ALPN-01 solver (`solvers.protocol.Solver`, RFC 8737), answered by the data plane.

certctl terminates TLS itself, so the challenge needs neither port 80 nor a
solver pod: while a Challenge of this type is live, every data-plane replica
(they all watch Challenges) answers a ClientHello for its name that offers
ALPN `acme-tls/1` with a self-signed certificate made for it
(`challenge_certificate`): the name as its only SAN and the critical
acmeIdentifier extension holding SHA-256 of the key authorization. The
handshake completes with `acme-tls/1` and nothing else is sent; other
clients of that name get its normal certificate. Presenting is therefore
only the Challenge existing; cleaning up is the Challenge ending (the data
plane drops the certificate when it turns valid or invalid, or is deleted).

An IP identifier (RFC 8738 section 6) is asked for with its reverse-DNS
name as the server name (`server_name`) and answered with the address as the
certificate's only (iPAddress) SAN.

The self-check connects to the HTTPS listener the way the CA's validator
does and checks what it would.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import socket
import ssl
from dataclasses import dataclass
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from certctl.api.resources import (
    Challenge,
    ChallengeType,
    ObjectKey,
    SolverConfig,
    TlsAlpn01ListenerSolver,
)
from certctl.api.status import ChallengeStatus
from certctl.issuers.acme import client as acme_client
from certctl.solvers import protocol
from certctl.store.interface import Object, Store

ALPN_PROTOCOL: Final = "acme-tls/1"
ACME_IDENTIFIER: Final = x509.ObjectIdentifier("1.3.6.1.5.5.7.1.31")  # id-pe-acmeIdentifier
# The validator only needs the handshake; a day covers any clock skew between it and us.
_VALIDITY: Final = datetime.timedelta(days=1)


@dataclass(frozen=True, kw_only=True)
class SelfCheckTarget:
    """Where the self-check connects: the HTTPS port, and an address instead of resolving
    the name through DNS (as the CA will) when given."""

    port: int = 443
    connect_address: str | None = None
    timeout: float = 5.0


class NotAnAnswer(Exception):
    """Not a TLS-ALPN-01 answer; the message says what is wrong with it."""


class TlsAlpn01Solver:
    """Stateless: what answers is the Challenge itself, seen by the data plane."""

    config_type: type = TlsAlpn01ListenerSolver
    challenge_type: ChallengeType = "TLS-ALPN-01"
    ends_with_its_challenge = False
    proves_wildcards = False

    def __init__(self, *, self_check: SelfCheckTarget) -> None:
        self.self_check = self_check

    @staticmethod
    def configuration_problem(config: SolverConfig) -> str | None:
        return None  # `tlsALPN01: {}` has nothing to get wrong the parser did not refuse

    @staticmethod
    def challenge_key(*, client: acme_client.AccountClient, token: str) -> str:
        return client.key_authorization(token)

    def present(
        self, *, store: Store, obj: Object, challenge: Challenge, now: datetime.datetime
    ) -> protocol.Presented | None:
        if ChallengeStatus.from_object(obj).presented:
            return None
        return protocol.Presented(
            description="the data plane answers acme-tls/1 handshakes for the name")

    def check(self, *, challenge: Challenge, now: datetime.datetime) -> None:
        target = self.self_check
        # The CA connects to an IP identifier itself, to a name where DNS says.
        connect_to = target.connect_address or challenge.dns_name
        where = f"{connect_to}:{target.port}"
        try:
            der = fetch_certificate(host=server_name(challenge.dns_name), port=target.port,
                                    connect_address=connect_to, timeout=target.timeout)
            verify_certificate(der, dns_name=challenge.dns_name,
                               key_authorization=challenge.key)
        except (OSError, NotAnAnswer) as err:
            raise protocol.NotServed(
                f"TLS-ALPN-01 self-check failed: {where} for {challenge.dns_name}: "
                f"{err or type(err).__name__}") from err

    def clean_up(
        self, *, store: Store, key: ObjectKey, challenge: Challenge | None
    ) -> str | None:
        return None  # the data plane stops answering when the Challenge ends


def server_name(identifier: str) -> str:
    """The server name a validator sends for `identifier`: the DNS name itself, or an IP
    address's reverse-DNS name (RFC 8738 section 6: `1.0.0.127.in-addr.arpa`)."""
    address = _address(identifier)
    return identifier if address is None else address.reverse_pointer


def _address(identifier: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(identifier)
    except ValueError:
        return None


def _subject_alternative_name(identifier: str) -> x509.GeneralName:
    address = _address(identifier)
    return x509.DNSName(identifier) if address is None else x509.IPAddress(address)


def challenge_certificate(*, dns_name: str, key_authorization: str) -> tuple[bytes, bytes]:
    """A self-signed certificate (PEM) and its key (PEM, PKCS#8) answering the challenge:
    `dns_name` (a DNS name or an IP address) its only SAN, the critical acmeIdentifier
    extension an OCTET STRING of the SHA-256 of `key_authorization` (RFC 8737 section 3)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "certctl TLS-ALPN-01")])
    now = datetime.datetime.now(datetime.UTC)
    digest = hashlib.sha256(key_authorization.encode()).digest()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _VALIDITY)
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.SubjectAlternativeName([_subject_alternative_name(dns_name)]),
                       critical=False)
        # DER OCTET STRING (tag 4, length 32) around the digest.
        .add_extension(x509.UnrecognizedExtension(ACME_IDENTIFIER, b"\x04\x20" + digest),
                       critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return certificate.public_bytes(serialization.Encoding.PEM), key_pem


def fetch_certificate(
    *, host: str, port: int, connect_address: str | None = None, timeout: float = 5.0
) -> bytes:
    """The DER certificate a TLS-ALPN-01 validator gets from `host` (SNI) on `port`: it
    offers only `acme-tls/1` and verifies nothing but what `verify_certificate` checks.
    Raises NotAnAnswer when `acme-tls/1` is not negotiated, OSError when the handshake fails."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # self-signed by design: the extension is the proof
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols([ALPN_PROTOCOL])
    with (socket.create_connection((connect_address or host, port), timeout=timeout) as sock,
          context.wrap_socket(sock, server_hostname=host) as tls):
        negotiated = tls.selected_alpn_protocol()
        der = tls.getpeercert(binary_form=True)
    if negotiated != ALPN_PROTOCOL:
        raise NotAnAnswer(f"the server negotiated ALPN {negotiated!r}, not {ALPN_PROTOCOL!r}")
    if der is None:
        raise NotAnAnswer("the server sent no certificate")
    return der


def verify_certificate(der: bytes, *, dns_name: str, key_authorization: str) -> None:
    """Check a certificate as the CA does (RFC 8737 section 3): `dns_name` (a DNS name or an
    IP address) its only SAN, the acmeIdentifier extension critical and equal to SHA-256 of
    `key_authorization`."""
    try:
        certificate = x509.load_der_x509_certificate(der)
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        identifier = certificate.extensions.get_extension_for_oid(ACME_IDENTIFIER)
    except (ValueError, x509.ExtensionNotFound) as err:
        raise NotAnAnswer(f"not a TLS-ALPN-01 certificate: {err}") from err
    if list(names.value) != [_subject_alternative_name(dns_name)]:
        sans = [str(name.value) for name in names.value]
        raise NotAnAnswer(f"the certificate names {sans}, not only {dns_name!r}")
    if not identifier.critical:
        raise NotAnAnswer("the acmeIdentifier extension is not critical")
    expected = b"\x04\x20" + hashlib.sha256(key_authorization.encode()).digest()
    value = identifier.value
    got = value.value if isinstance(value, x509.UnrecognizedExtension) else b""
    if got != expected:
        raise NotAnAnswer("the acmeIdentifier extension does not hold this challenge's key "
                        "authorization (an older or another challenge's certificate)")
