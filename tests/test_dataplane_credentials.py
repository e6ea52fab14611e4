"""Certificates presented as decoded OpenSSL objects (certctl.dataplane.credentials):
real handshakes between memory BIOs, a client verifying against a root it trusts."""

from __future__ import annotations

import ctypes
import datetime
import gc
import ssl
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import NameOID

from certctl.api import resources
from certctl.dataplane import certstore, credentials
from tests.handshake import presented_leaf, presenting

NOW = datetime.datetime.now(datetime.UTC)
KEYS: dict[str, Callable[[], CertificateIssuerPrivateKeyTypes]] = {
    "ecdsa": lambda: ec.generate_private_key(ec.SECP256R1()),
    "ecdsa-384": lambda: ec.generate_private_key(ec.SECP384R1()),
    "rsa": lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
    "ed25519": ed25519.Ed25519PrivateKey.generate,
    "ed448": ed448.Ed448PrivateKey.generate,
}
FORMATS = {
    "PKCS1": serialization.PrivateFormat.TraditionalOpenSSL,
    "PKCS8": serialization.PrivateFormat.PKCS8,
}


def _certificate(*, subject: str, key, issuer: tuple[str, object] | None = None,
                 ca: bool) -> x509.Certificate:
    issuer_name, issuer_key = issuer or (subject, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_name)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - datetime.timedelta(hours=1))
        .not_valid_after(NOW + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(subject)]), critical=False)
    algorithm = None if isinstance(issuer_key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(issuer_key, algorithm)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Hierarchy:
    """A root the client trusts and an intermediate it does not know: a handshake only
    verifies when the server sends the intermediate."""

    root_pem: str
    intermediate: x509.Certificate
    intermediate_key: ec.EllipticCurvePrivateKey

    def issue(self, name: str, *, key_type: str = "ecdsa", key_format: str = "PKCS1",
              ) -> tuple[x509.Certificate, bytes, bytes]:
        """A leaf for `name`: (leaf, chain PEM, key PEM)."""
        key = KEYS[key_type]()
        if isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey):
            key_format = "PKCS8"  # no traditional form
        leaf = _certificate(subject=name, key=key, ca=False,
                            issuer=("test intermediate", self.intermediate_key))
        chain = b"".join(c.public_bytes(serialization.Encoding.PEM)
                         for c in (leaf, self.intermediate))
        key_pem = key.private_bytes(serialization.Encoding.PEM, FORMATS[key_format],
                                    serialization.NoEncryption())
        return leaf, chain, key_pem


@pytest.fixture(scope="module")
def hierarchy() -> Hierarchy:
    root_key = ec.generate_private_key(ec.SECP256R1())
    root = _certificate(subject="test root", key=root_key, ca=True)
    intermediate_key = ec.generate_private_key(ec.SECP256R1())
    intermediate = _certificate(subject="test intermediate", key=intermediate_key, ca=True,
                                issuer=("test root", root_key))
    return Hierarchy(root_pem=root.public_bytes(serialization.Encoding.PEM).decode(),
                     intermediate=intermediate, intermediate_key=intermediate_key)


def test_this_interpreter_binds_libssl():
    # The fallback (a context per certificate) would pass every other test here too.
    assert credentials.BINDING is not None


def test_every_call_into_libssl_keeps_the_gil():
    # A call that let the GIL go handed it, in `certctl serve` issuing, to a busy reconciler
    # thread at each call of a first handshake: 63 ms instead of 0.8 per certificate
    # decoded beside two busy threads. ctypes keeps it for a PyDLL's functions only.
    binding = credentials.BINDING
    assert binding is not None
    flags = {name: value._flags_ for name, value in vars(binding).items()
             if hasattr(value, "_flags_")}
    assert len(flags) >= 20
    for name, flag in flags.items():
        assert flag == ctypes.PyDLL._func_flags_, name


@pytest.mark.parametrize(("key_type", "key_format"), [
    ("ecdsa", "PKCS1"), ("ecdsa", "PKCS8"), ("ecdsa-384", "PKCS1"),
    ("rsa", "PKCS1"), ("rsa", "PKCS8"), ("ed25519", "PKCS8"),
])
def test_each_key_type_and_encoding_presents_its_leaf_and_chain(hierarchy, key_type,
                                                                 key_format):
    leaf, chain_pem, key_pem = hierarchy.issue("a.test", key_type=key_type,
                                               key_format=key_format)
    decoded = credentials.Credentials(chain_pem=chain_pem, key_pem=key_pem)
    served = presented_leaf(decoded, name="a.test", cadata=hierarchy.root_pem)
    assert served == leaf  # verified against the root: the intermediate was sent


def test_an_intermediate_is_decoded_once_for_every_leaf_it_issued(hierarchy):
    decoded = [credentials.Credentials(chain_pem=chain, key_pem=key)
               for _, chain, key in (hierarchy.issue(f"{n}.test") for n in ("a", "b", "c"))]
    intermediate_der = hierarchy.intermediate.public_bytes(serialization.Encoding.DER)
    shared = credentials._intermediates[intermediate_der]
    assert all(each._intermediates == [shared] for each in decoded)
    del decoded, shared
    gc.collect()
    assert intermediate_der not in credentials._intermediates  # freed with its last leaf


def test_a_connection_keeps_what_it_was_given_after_the_credentials_are_dropped(hierarchy):
    leaf, chain_pem, key_pem = hierarchy.issue("kept.test")
    decoded: credentials.Credentials | None = credentials.Credentials(
        chain_pem=chain_pem, key_pem=key_pem)
    server = certstore.new_server_context()

    def present_then_drop(connection, _name, _context):
        nonlocal decoded
        binding = credentials.BINDING
        assert decoded is not None and binding is not None
        assert decoded.present(binding.ssl_of(connection._sslobj))
        decoded = None  # replaced by a newer certificate mid-handshake, say
        gc.collect()

    server.sni_callback = present_then_drop
    assert presented_leaf(server, name="kept.test", cadata=hierarchy.root_pem) == leaf


def test_a_certificate_of_another_key_type_on_the_context_is_not_presented(hierarchy):
    # The SNI callback clears what the connection inherited from its context: left in
    # place, OpenSSL would pick the ECDSA default for a client that accepts both.
    _, default_chain, default_key = hierarchy.issue("other.test")
    leaf, chain_pem, key_pem = hierarchy.issue("rsa.test", key_type="rsa")
    decoded = credentials.Credentials(chain_pem=chain_pem, key_pem=key_pem)
    server = certstore.new_server_context()
    certstore._load_chain(context=server, chain_pem=default_chain, key_pem=default_key)
    assert presented_leaf(presenting(decoded, context=server), name="rsa.test",
                          cadata=hierarchy.root_pem) == leaf


def test_a_key_of_another_certificate_is_refused_without_leaving_an_error(hierarchy):
    _, chain_pem, _ = hierarchy.issue("one.test")
    _, _, other_key = hierarchy.issue("two.test")
    mismatched = credentials.Credentials(chain_pem=chain_pem, key_pem=other_key)
    refused: list[bool] = []
    server = presenting(mismatched, outcomes=refused)
    with pytest.raises(ssl.SSLError, match="NO_SUITABLE_SIGNATURE_ALGORITHM"):  # no certificate
        presented_leaf(server, name="one.test", cadata=hierarchy.root_pem)
    assert refused == [False]
    # OpenSSL's error queue was emptied: the next handshake on this thread is unaffected.
    leaf, chain_pem, key_pem = hierarchy.issue("three.test")
    good = credentials.Credentials(chain_pem=chain_pem, key_pem=key_pem)
    assert presented_leaf(good, name="three.test", cadata=hierarchy.root_pem) == leaf


@pytest.mark.parametrize(("chain_pem", "key_pem", "message"), [
    (b"no PEM at all", b"", "holds no certificate"),
    (b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", b"",
     "does not decode"),
])
def test_a_chain_that_does_not_decode_is_refused_by_name(chain_pem, key_pem, message):
    with pytest.raises(ValueError, match=message):
        credentials.Credentials(chain_pem=chain_pem, key_pem=key_pem)


def test_a_key_that_does_not_decode_is_refused_without_quoting_it(hierarchy):
    _, chain_pem, _ = hierarchy.issue("k.test")
    secret = (b"-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWtleS1tYXRlcmlhbA==\n"
              b"-----END PRIVATE KEY-----\n")
    with pytest.raises(ValueError) as refused:
        credentials.Credentials(chain_pem=chain_pem, key_pem=secret)
    assert str(refused.value) == "the private key does not decode"


def _indexed(chain_pem: bytes, key_pem: bytes) -> certstore.CertificateIndex:
    index = certstore.CertificateIndex()
    index.set_certificate(source=resources.ObjectKey(kind="Secret", namespace="n", name="s"),
                          chain_pem=chain_pem, key_pem=key_pem)
    return index


@pytest.mark.parametrize(("bound", "key_type"), [
    # Without the binding, any certificate.
    (False, "rsa"),
    # A key the decoders do not take: before the fallback, an Ed448 certificate was logged
    # as not loading and its name got the default certificate.
    (True, "ed448"),
])
def test_the_index_falls_back_to_a_context_of_its_own(hierarchy, monkeypatch, bound,
                                                       key_type):
    if not bound:
        monkeypatch.setattr(credentials, "BINDING", None)
    leaf, chain_pem, key_pem = hierarchy.issue("fallback.test", key_type=key_type)
    index = _indexed(chain_pem, key_pem)
    selected = index.select("fallback.test")
    assert isinstance(selected, ssl.SSLContext) and selected is not index.default_context
    assert presented_leaf(selected, name="fallback.test", cadata=hierarchy.root_pem) == leaf


def test_the_index_presents_decoded_credentials_with_the_binding(hierarchy):
    leaf, chain_pem, key_pem = hierarchy.issue("native.test")
    index = _indexed(chain_pem, key_pem)
    selected = index.select("native.test")
    assert isinstance(selected, credentials.Credentials)
    assert index.select("native.test") is selected  # kept, not decoded again
    assert presented_leaf(selected, name="native.test", cadata=hierarchy.root_pem) == leaf


def test_text_around_the_blocks_and_a_parameters_block_are_skipped(hierarchy):
    # As `openssl ecparam -genkey` and `openssl pkcs12 -nodes` write them.
    leaf, chain_pem, key_pem = hierarchy.issue("text.test")
    parameters = (b"-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n"
                  b"-----END EC PARAMETERS-----\n")
    decoded = credentials.Credentials(
        chain_pem=b"subject=CN = text.test\n" + chain_pem.replace(
            b"-----END CERTIFICATE-----\n-----BEGIN",
            b"-----END CERTIFICATE-----\nissuer=CN = test intermediate\n-----BEGIN"),
        key_pem=b"Bag Attributes\n" + parameters + key_pem)
    assert presented_leaf(decoded, name="text.test", cadata=hierarchy.root_pem) == leaf


def test_a_key_these_decoders_do_not_take_is_refused_by_its_type(hierarchy):
    _, chain_pem, key_pem = hierarchy.issue("ed448.test", key_type="ed448")
    with pytest.raises(credentials.UnsupportedKey,
                       match=r"unsupported private key \(Ed448PrivateKey\)"):
        credentials.Credentials(chain_pem=chain_pem, key_pem=key_pem)


def test_a_pem_block_cut_short_is_refused(hierarchy):
    _, chain_pem, key_pem = hierarchy.issue("cut.test")
    with pytest.raises(ValueError, match="cut short"):
        credentials.Credentials(chain_pem=chain_pem[: chain_pem.rindex(b"-----END")],
                                key_pem=key_pem)
