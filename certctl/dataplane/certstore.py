"""The SNI certificate store: which certificate a TLS handshake presents.

Certificates arrive from Secrets (keyed by the Secret's ObjectKey) and are
indexed by the DNS names and IP addresses in the leaf's subjectAltName. The
handshake path only does dict lookups: `select` is called from the SNI callback
for every new TLS connection, so it never parses PEM unless a name is served
for the first time.

- A certificate is presented without a context of its own: on the first handshake
  for it, its leaf, chain and key are decoded into OpenSSL objects
  (`credentials.Credentials`, about 0.5 ms, most of it the leaf's public key going
  through OpenSSL 3's decoders), which the SNI callback sets on each connection of
  the listener's one context. A context per certificate, loaded from PEM, cost
  about 2 ms and 24 KiB (bench B3); it is what happens where `credentials` cannot
  bind libssl or take the key (Ed448, an EC key on explicit parameters), and for the
  few certificates that ask for a client certificate.
  Decoded certificates are kept for the `context_cache_size` most recently used
  (`--tls-context-cache`), so 10,000 loaded certificates cost 10,000 parsed
  leaves (about 1.2 KB each) at start-up and memory grows only with the names
  clients actually ask for; clients cannot grow it beyond the loaded
  certificates: unknown names get the default.
- Updates come from another thread (the Secret watcher). Writers hold a lock;
  readers use plain `dict.get`, which is atomic in CPython, and every name is
  switched with one assignment, so a handshake sees the old or the new
  certificate, never none. Existing connections keep the certificate they
  negotiated.
- Two Secrets may claim the same name: the certificate that expires last
  serves it (ties: the Secret's key, for determinism), and removing one falls
  back to the other.
- A client that sends no SNI (one connecting to an IP address: RFC 6066
  forbids an address as SNI, so curl and browsers send none) gets the
  certificate for an IP address that expires last, if any is loaded, else the
  default; one sending the address as SNI anyway gets that address's. The
  handshake does not say which local address the client connected to, so
  with certificates for several addresses, put them in one certificate.
- Private keys are handed to OpenSSL through an anonymous memfd, never a named
  file (see `_load_chain`), and are never logged.
- What serving a Secret takes from parsing it (its names and expiry: `CertificateFacts`)
  can be handed over by content digest (`known_facts`, `remember`): `certctl serve`
  keeps them across a restart, where parsing 10,000 chains and keys again (and matching
  each key to its leaf) was a third of the time to ready.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
import ssl
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509.oid import NameOID

from certctl.api import resources
from certctl.dataplane import credentials
from certctl.pki import secret as tls_secret

logger = logging.getLogger(__name__)

DEFAULT_COMMON_NAME = "certctl default"
DEFAULT_CONTEXT_CACHE_SIZE = 16_384
# TLS 1.2 suites: forward secret AEADs only (Mozilla's "intermediate" minus
# DHE). TLS 1.3 suites are OpenSSL's defaults, all of them modern.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"

Presented = ssl.SSLContext | credentials.Credentials
"""What a handshake gets for its name: a context to switch to, or a certificate to present
on the context it started on (which holds none: `new_server_context`)."""


def new_server_context() -> ssl.SSLContext:
    """A server context with certctl's TLS policy and no certificate: TLS 1.2+, ALPN h2/http1.1.

    Session tickets stay enabled (OpenSSL's server default). OpenSSL encrypts
    and decrypts tickets with the keys of the context the connection was
    accepted on, not the one the SNI callback switches to, so resumption
    works across certificates and across certificate swaps.

    One TLS 1.3 ticket a handshake, not OpenSSL's two (Go's crypto/tls, under
    Caddy, sends one too): each is encrypted and MACed on the handshake's CPU
    (bench B3, about 4 % of a full handshake's), and a client resumes with
    one. The count is the accepting context's, copied into each connection.
    Not none: a client writing its Finished and its request apart then waits
    out the delayed ACK of a server with nothing to send (40 ms a connection).
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(TLS12_CIPHERS)
    context.options |= ssl.OP_NO_RENEGOTIATION | ssl.OP_CIPHER_SERVER_PREFERENCE
    # ALPN is answered from the context the SNI callback switched to, so every
    # certificate's context offers both; h2 first: clients that speak it get it.
    context.set_alpn_protocols(["h2", "http/1.1"])
    context.num_tickets = 1
    return context


@dataclass(frozen=True, kw_only=True, slots=True)
class CertificateFacts:
    """What serving a certificate takes from its parsed leaf, once its key is known to
    match: the same for every copy of the same Secret content."""

    names: tuple[str, ...]  # DNS names, then IP addresses in canonical form
    addressed: bool
    not_after: datetime.datetime


@dataclass(kw_only=True, slots=True, eq=False)
class _Entry:
    """One loaded certificate; `presented` is filled on the first handshake that needs it."""

    source: resources.ObjectKey
    names: tuple[str, ...]  # DNS names, then IP addresses in canonical form
    addressed: bool  # it certifies an IP address: a candidate for handshakes without SNI
    not_after: datetime.datetime
    chain_pem: bytes
    key_pem: bytes
    digest: bytes | None = None  # of the Secret's content (`TLSSecretBytes.digest`)
    presented: Presented | None = None

    def rank(self) -> tuple[datetime.datetime, str]:
        return (self.not_after, str(self.source))


class CertificateIndex:
    """Certificates by DNS name, with a self-signed default for unknown names."""

    def __init__(self, *, context_cache_size: int = DEFAULT_CONTEXT_CACHE_SIZE) -> None:
        self._lock = threading.Lock()
        self._context_cache_size = context_cache_size
        # Entries holding what they present, least recently handshaken first.
        # Only `select` touches it, and `select` runs on the event loop alone.
        self._recent: OrderedDict[_Entry, None] = OrderedDict()
        self._by_source: dict[resources.ObjectKey, _Entry] = {}
        self._claims: dict[str, dict[resources.ObjectKey, _Entry]] = {}
        self._by_name: dict[str, _Entry] = {}  # read without the lock
        # Certificates for IP addresses (few: kept apart so that loading 10,000 DNS
        # certificates costs no scan each), and the best of them, which a handshake
        # without SNI gets.
        self._addressed: dict[resources.ObjectKey, _Entry] = {}
        self._no_sni: _Entry | None = None  # read without the lock
        # Host (or `*.` pattern) -> CA bundle: its handshakes ask for a client certificate
        # that chains to it (auth-tls-secret); replaced whole, read without the lock.
        self._client_cas: dict[str, bytes] = {}
        self._client_contexts: dict[tuple[_Entry, bytes], ssl.SSLContext] = {}
        # Facts handed over (`remember`) by Secret content digest, each taken once.
        self._known: dict[bytes, CertificateFacts] = {}
        # Live TLS-ALPN-01 challenges: name -> the context answering acme-tls/1 for it,
        # replaced whole, read without the lock; and the Challenge each came from.
        self._acme_tls: dict[str, ssl.SSLContext] = {}
        self._acme_tls_sources: dict[resources.ObjectKey, tuple[str, ssl.SSLContext]] = {}
        chain_pem, key_pem = _default_certificate()
        self._default_context = new_server_context()
        _load_chain(context=self._default_context, chain_pem=chain_pem, key_pem=key_pem)

    def set_certificate(
        self, *, source: resources.ObjectKey, chain_pem: bytes, key_pem: bytes
    ) -> None:
        """Serve this chain for the DNS names in its leaf, replacing what `source` held.

        `chain_pem` is the leaf first, then intermediates (the `tls.crt` of a
        kubernetes.io/tls Secret). Raises ValueError, naming `source`, when the
        chain does not parse or the key does not belong to the leaf: checked
        here because what OpenSSL presents is only built at the first handshake.
        """
        self._serve(_parse_entry(source=source, chain_pem=chain_pem, key_pem=key_pem))

    def serve_secret(self, *, source: resources.ObjectKey,
                     contents: tls_secret.TLSSecretContents, announce: bool = True) -> None:
        """`set_certificate` for a Secret already read by `pki.secret.read_tls_secret`:
        its parsed leaf and key are used as they are, not parsed again from the PEM
        (only the PEM bytes are kept, for what is built at the first handshake).
        Without `announce`, logged at debug level only: a start-up loading thousands
        says how many in one line of its own."""
        entry = _entry_of(source=source, leaf=contents.leaf, key=contents.key,
                          chain_pem=contents.chain_pem, key_pem=contents.key_pem)
        entry.digest = tls_secret.TLSSecretBytes(
            chain_pem=contents.chain_pem, key_pem=contents.key_pem,
            ca_pem=contents.ca_pem).digest()
        self._serve(entry, announce=announce)

    def serve_known(self, *, source: resources.ObjectKey, content: tls_secret.TLSSecretBytes,
                    announce: bool = True) -> bool:
        """Serve a Secret's content as `serve_secret` would, from the facts `remember` was
        given for it, without parsing; False (nothing done) when there are none."""
        if not self._known:  # nothing handed over (the cluster's data plane): no digest
            return False
        digest = content.digest()
        with self._lock:
            facts = self._known.pop(digest, None)
        if facts is None:
            return False
        self._serve(_Entry(source=source, names=facts.names, addressed=facts.addressed,
                           not_after=facts.not_after, chain_pem=content.chain_pem,
                           key_pem=content.key_pem, digest=digest), announce=announce)
        return True

    def known_facts(self) -> dict[bytes, CertificateFacts]:
        """The facts of every certificate served from a Secret, by its content digest."""
        with self._lock:
            entries = list(self._by_source.values())
        return {entry.digest: CertificateFacts(names=entry.names, addressed=entry.addressed,
                                               not_after=entry.not_after)
                for entry in entries if entry.digest is not None}

    def remember(self, facts: dict[bytes, CertificateFacts]) -> None:
        """Facts `known_facts` gave (a process before this one) for `serve_known`: only
        ever the same content's, which was parsed and matched with its key then."""
        with self._lock:
            self._known.update(facts)

    def _serve(self, entry: _Entry, *, announce: bool = True) -> None:
        source = entry.source
        if not entry.names:
            logger.warning("certificate from %s has no DNS names nor IP addresses; it serves "
                           "nothing", source)
        with self._lock:
            previous = self._by_source.get(source)
            self._by_source[source] = entry
            affected = set(entry.names)
            if previous is not None:
                affected.update(previous.names)
                for name in previous.names:
                    self._claims[name].pop(source, None)
            for name in entry.names:
                self._claims.setdefault(name, {})[source] = entry
            self._publish(affected)
            if entry.addressed or (previous is not None and previous.addressed):
                self._publish_no_sni(source, entry if entry.addressed else None)
        logger.log(logging.INFO if announce else logging.DEBUG,
                   "serving certificate from %s for %s", source, ", ".join(entry.names))

    def remove_certificate(self, *, source: resources.ObjectKey) -> None:
        """Stop serving what `source` held; unknown sources are ignored (deletes may repeat)."""
        with self._lock:
            previous = self._by_source.pop(source, None)
            if previous is None:
                return
            for name in previous.names:
                self._claims[name].pop(source, None)
            self._publish(set(previous.names))
            if previous.addressed:
                self._publish_no_sni(source, None)
        logger.info("removed certificate from %s", source)

    def select(self, server_name: str | None) -> Presented:
        """What a handshake presents: exact name, then `*.` + parent, then the default;
        without a name, the certificate for an IP address (see the module docstring).

        Never raises: a certificate OpenSSL refuses to load is logged once and
        answered with the default certificate until it is replaced.
        """
        if not server_name:
            entry = self._no_sni
            return self._default_context if entry is None else self._presented_by(entry)
        name = server_name.lower()
        entry = self._by_name.get(name)
        if entry is None:
            dot = name.find(".")
            if dot > 0:
                entry = self._by_name.get("*" + name[dot:])
        if entry is None:
            return self._default_context
        if self._client_cas:
            ca = self._client_ca(name)
            if ca is not None:
                return self._client_context(entry, ca)
        presented = entry.presented
        if presented is None:
            return self._presented_by(entry)
        self._recent.move_to_end(entry)  # `_presented_by`'s own, without its call
        return presented

    @property
    def default_context(self) -> ssl.SSLContext:
        """What `select` answers for a name no certificate covers."""
        return self._default_context

    def _presented_by(self, entry: _Entry) -> Presented:
        """What the entry presents, built on first use and kept among the most recent."""
        presented = entry.presented
        recent = self._recent
        if presented is None:
            presented = self._build(entry)
            recent[entry] = None
            if len(recent) > self._context_cache_size:
                evicted, _ = recent.popitem(last=False)
                evicted.presented = None
        else:
            recent.move_to_end(entry)
        return presented

    def set_acme_tls_certificate(
        self, *, source: resources.ObjectKey, name: str, chain_pem: bytes, key_pem: bytes
    ) -> None:
        """Answer handshakes for `name` offering ALPN acme-tls/1 with this TLS-ALPN-01
        certificate (RFC 8737) until `remove_acme_tls_certificate(source=...)`."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2  # RFC 8737: TLS 1.2 or later
        context.set_alpn_protocols(["acme-tls/1"])
        # Nothing but the handshake: no session tickets after it (TLS 1.3) either.
        context.options |= ssl.OP_NO_TICKET
        context.num_tickets = 0
        _load_chain(context=context, chain_pem=chain_pem, key_pem=key_pem)
        with self._lock:
            self._acme_tls_sources[source] = (name.lower(), context)
            self._publish_acme_tls()
        logger.info("answering TLS-ALPN-01 for %s (%s)", name, source)

    def remove_acme_tls_certificate(self, *, source: resources.ObjectKey) -> None:
        """Stop answering the TLS-ALPN-01 challenge of `source`; unknown ones are ignored."""
        with self._lock:
            if self._acme_tls_sources.pop(source, None) is None:
                return
            self._publish_acme_tls()
        logger.info("stopped answering TLS-ALPN-01 for %s", source)

    def _publish_acme_tls(self) -> None:
        self._acme_tls = {name: context for name, context in self._acme_tls_sources.values()}

    def select_acme_tls(self, server_name: str) -> ssl.SSLContext | None:
        """The context answering acme-tls/1 for `server_name`, None when no challenge is live."""
        return self._acme_tls.get(server_name.lower())

    @property
    def answers_acme_tls(self) -> bool:
        """Whether a TLS-ALPN-01 challenge is live (handshakes then preread their ALPN)."""
        return bool(self._acme_tls)

    def set_client_certificates(self, by_host: dict[str, bytes]) -> None:
        """Which hosts' handshakes ask for a client certificate, and the CA it must chain to."""
        if by_host != self._client_cas:
            self._client_contexts = {}
            self._client_cas = dict(by_host)

    @property
    def asks_for_client_certificates(self) -> bool:
        return bool(self._client_cas)

    def _client_ca(self, name: str) -> bytes | None:
        cas = self._client_cas
        ca = cas.get(name)
        if ca is None:
            dot = name.find(".")
            if dot > 0:
                ca = cas.get("*" + name[dot:])
        return ca

    def _client_context(self, entry: _Entry, ca: bytes) -> ssl.SSLContext:
        """The certificate's context that also asks for a client certificate and has OpenSSL
        check its chain and the client's possession of the key. Optional at the handshake:
        a client without one gets an HTTP answer (403) rather than a TLS alert."""
        contexts = self._client_contexts
        context = contexts.get((entry, ca))
        if context is None:
            context = new_server_context()
            try:
                _load_chain(context=context, chain_pem=entry.chain_pem, key_pem=entry.key_pem)
                context.load_verify_locations(cadata=ca.decode("ascii", "replace"))
            except (ssl.SSLError, OSError, ValueError) as err:
                logger.error("cannot build the client-certificate context for %s: %s",
                             entry.source, err)
                return self._default_context
            context.verify_mode = ssl.CERT_OPTIONAL
            if len(contexts) >= self._context_cache_size:
                contexts.clear()
            contexts[(entry, ca)] = context
        return context

    def has_certificate_for(self, host: str) -> bool:
        """Whether `select(host)` would present a real certificate (used to redirect to HTTPS);
        `host` is a routing key, so an IPv6 address comes bracketed."""
        if host.startswith("["):
            host = _canonical_address(host[1:-1]) or host
        if host in self._by_name:
            return True
        dot = host.find(".")
        return dot > 0 and ("*" + host[dot:]) in self._by_name

    @property
    def built_count(self) -> int:
        """How many certificates are held built for handshakes right now (at most the cache
        size)."""
        return len(self._recent)

    def loaded(self) -> list[tuple[resources.ObjectKey, datetime.datetime]]:
        """Each loaded Secret and its leaf's notAfter (for metrics)."""
        with self._lock:
            return [(source, entry.not_after) for source, entry in self._by_source.items()]

    def names(self) -> dict[str, resources.ObjectKey]:
        """Served name -> the Secret serving it, a snapshot for diagnostics."""
        with self._lock:
            return {name: entry.source for name, entry in self._by_name.items()}

    def _publish(self, names: set[str]) -> None:
        """Point each name at its best claimant with one assignment each (lock held)."""
        for name in names:
            claimants = self._claims.get(name)
            if claimants:
                self._by_name[name] = max(claimants.values(), key=_Entry.rank)
            else:
                self._claims.pop(name, None)
                self._by_name.pop(name, None)

    def _publish_no_sni(self, source: resources.ObjectKey, entry: _Entry | None) -> None:
        """Record what `source` now holds for an address (None: nothing) and pick what
        handshakes without SNI get (lock held)."""
        if entry is None:
            self._addressed.pop(source, None)
        else:
            self._addressed[source] = entry
        addressed = self._addressed.values()
        self._no_sni = max(addressed, key=_Entry.rank) if addressed else None

    def _build(self, entry: _Entry) -> Presented:
        presented: Presented
        try:
            presented = _presentable(entry)
        except (ssl.SSLError, OSError, ValueError, MemoryError) as err:
            logger.error("cannot load certificate from %s: %s", entry.source, err)
            presented = self._default_context
        entry.presented = presented
        return presented


def _presentable(entry: _Entry) -> Presented:
    """The entry's certificate decoded where libssl is bound and takes its key; else in
    a context of its own (an Ed448 key, an EC key on explicit parameters)."""
    if credentials.BINDING is not None:
        try:
            return credentials.Credentials(chain_pem=entry.chain_pem, key_pem=entry.key_pem)
        except credentials.UnsupportedKey:
            pass
    context = new_server_context()
    _load_chain(context=context, chain_pem=entry.chain_pem, key_pem=entry.key_pem)
    return context


def _parse_entry(*, source: resources.ObjectKey, chain_pem: bytes, key_pem: bytes) -> _Entry:
    try:
        leaf = x509.load_pem_x509_certificates(chain_pem)[0]
    except ValueError as err:
        raise ValueError(f"{source}: certificate chain does not parse: {err}") from None
    try:
        key = serialization.load_pem_private_key(
            key_pem, password=None, unsafe_skip_rsa_key_validation=True
        )
    except (ValueError, TypeError):
        # The message could quote key material: say only what failed.
        raise ValueError(f"{source}: private key does not parse") from None
    return _entry_of(source=source, leaf=leaf, key=key, chain_pem=chain_pem, key_pem=key_pem)


def _entry_of(*, source: resources.ObjectKey, leaf: x509.Certificate,
              key: PrivateKeyTypes, chain_pem: bytes, key_pem: bytes) -> _Entry:
    """The entry for a parsed leaf and key; only their PEM is kept (10,000 certificates
    at rest must stay small), the x509 objects go once the names are read."""
    # Compared as keys (OpenSSL's EVP_PKEY_eq), not as encoded bytes: two DER encodings
    # per Secret were a quarter of loading 10,000 of them at a restart.
    if key.public_key() != leaf.public_key():
        raise ValueError(f"{source}: private key does not match the certificate")
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns_names = [n.lower() for n in san.get_values_for_type(x509.DNSName)]
        addresses = [str(address) for address in san.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        dns_names, addresses = [], []
    return _Entry(
        source=source,
        names=tuple(dict.fromkeys([*dns_names, *addresses])),
        addressed=bool(addresses),
        not_after=leaf.not_valid_after_utc,
        chain_pem=chain_pem,
        key_pem=key_pem,
    )


def _canonical_address(text: str) -> str | None:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


def _load_chain(*, context: ssl.SSLContext, chain_pem: bytes, key_pem: bytes) -> None:
    """Load a chain and key into `context` without a key file anyone else could open.

    `load_cert_chain` only reads paths. On Linux the PEM goes into an anonymous
    memfd read back through /proc/self/fd: it has no name in any filesystem
    and disappears when closed. Elsewhere it is a 0600 file in a fresh 0700
    directory, deleted as soon as OpenSSL has read it.
    """
    data = chain_pem.rstrip(b"\n") + b"\n" + key_pem
    if hasattr(os, "memfd_create") and Path("/proc/self/fd").is_dir():
        fd = os.memfd_create("certctl-tls", os.MFD_CLOEXEC)
        try:
            _write_all(fd, data)
            context.load_cert_chain(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)
        return
    with tempfile.TemporaryDirectory(prefix="certctl-tls-") as directory:
        path = Path(directory) / "tls.pem"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            _write_all(fd, data)
        finally:
            os.close(fd)
        context.load_cert_chain(path)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _default_certificate() -> tuple[bytes, bytes]:
    """A fresh self-signed ECDSA P-256 certificate for names we hold nothing for.

    Generated per process (about a millisecond): there is nothing to protect,
    it only lets the handshake finish so the client sees a clear name mismatch.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, DEFAULT_COMMON_NAME)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem
