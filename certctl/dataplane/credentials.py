"""A certificate as OpenSSL objects, set on each handshake's connection by the SNI callback.

Why: Python's `ssl` module presents a certificate only through an SSLContext loaded
from a PEM file, and under OpenSSL 3.0 that made the first connection to a name cost
about 4x nginx's CPU (bench B3): `SSLContext()` fetches every cipher and digest from
the providers (about 0.35 ms) and `load_cert_chain` decodes the key and the chain
through 3.0's decoder framework, which tries decoder after decoder (1.1-1.6 ms).
nginx builds all of its contexts before listening; certctl builds on demand, so this
was paid on the first connection to each name.

Here every name is served from one context (the listener's, which holds no
certificate): a certificate's leaf, chain and key are decoded once into OpenSSL
objects and set on each connection's SSL with `SSL_use_cert_and_key` in the SNI
callback. An EC or RSA key goes straight from its PEM (traditional or PKCS8) to
OpenSSL's legacy decoders, which 3.0 kept beside the new ones (0.03 ms, against 0.43
for `d2i_PrivateKey` and 0.1 through `cryptography`, which checks the key's point
again), and an intermediate is decoded once for every leaf it issued. Only the leaf's
own decoding is left (about 0.3 ms: its public key goes through the decoders). A
decoded certificate holds about 7 KiB, a context 24.

How: ctypes, bound through the `_ssl` extension module itself, so the symbols are
those of the libssl and libcrypto the interpreter's `ssl` uses (another copy's SSL
objects would be foreign to it), and the SSL pointer read from the `_ssl._SSLSocket`
object: the field after its object header and its socket reference (CPython's
`Modules/_ssl.c` since 3.2; sslkeylog and sabctools read the same fields). All of it
is checked once, on a throwaway connection, before anything is used: with another
interpreter, a changed layout or no library to bind, `BINDING` is None (with one
warning), the certificate store builds a context per certificate instead
(`certstore`) and `tls` handshakes and closes through `_ssl`'s own methods.
"""

from __future__ import annotations

import ctypes
import logging
import ssl
import sys
import weakref
from typing import Any, Final

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from certctl.pki import inspect

logger = logging.getLogger(__name__)

_POINTER: Final = ctypes.c_void_p
_EVP_PKEY_RSA: Final = 6
_EVP_PKEY_EC: Final = 408
_EVP_PKEY_ED25519: Final = 1087
_V_ASN1_OBJECT: Final = 6  # an AlgorithmIdentifier's parameters: a named curve
# SSL_get_error's answers (ssl.h)
_SSL_ERROR_SSL: Final = 1
SSL_ERROR_WANT_READ: Final = 2
_SSL_ERROR_SYSCALL: Final = 5
_SSL_ERROR_ZERO_RETURN: Final = 6


class _Binding:
    """The libssl and libcrypto functions used here and by `tls`, with their C signatures."""

    def __init__(self, library: ctypes.PyDLL) -> None:
        def bind(name: str, restype: Any, *argtypes: Any) -> Any:
            function = getattr(library, name)
            function.restype = restype
            function.argtypes = argtypes
            return function

        # DER in: (T **reuse, const unsigned char **in, long length) -> T *
        der = (_POINTER, ctypes.POINTER(ctypes.c_char_p), ctypes.c_long)
        self.d2i_X509 = bind("d2i_X509", _POINTER, *der)
        self.d2i_ECPrivateKey = bind("d2i_ECPrivateKey", _POINTER, *der)
        self.d2i_RSAPrivateKey = bind("d2i_RSAPrivateKey", _POINTER, *der)
        self.d2i_PKCS8_PRIV_KEY_INFO = bind("d2i_PKCS8_PRIV_KEY_INFO", _POINTER, *der)
        self.PKCS8_PRIV_KEY_INFO_free = bind("PKCS8_PRIV_KEY_INFO_free", None, _POINTER)
        # (&algorithm OID, &private key bytes, &their length, &algorithm, info)
        self.PKCS8_pkey_get0 = bind("PKCS8_pkey_get0", ctypes.c_int,
                                    _POINTER, ctypes.POINTER(ctypes.c_char_p), _POINTER,
                                    _POINTER, _POINTER)
        # (&OID, &parameter type, &parameter, algorithm)
        self.X509_ALGOR_get0 = bind("X509_ALGOR_get0", None,
                                    _POINTER, _POINTER, _POINTER, _POINTER)
        self.OBJ_obj2nid = bind("OBJ_obj2nid", ctypes.c_int, _POINTER)
        self.EC_KEY_new_by_curve_name = bind("EC_KEY_new_by_curve_name", _POINTER,
                                             ctypes.c_int)
        self.X509_up_ref = bind("X509_up_ref", ctypes.c_int, _POINTER)
        self.X509_free = bind("X509_free", None, _POINTER)
        self.EC_KEY_free = bind("EC_KEY_free", None, _POINTER)
        self.RSA_free = bind("RSA_free", None, _POINTER)
        self.EVP_PKEY_new = bind("EVP_PKEY_new", _POINTER)
        self.EVP_PKEY_assign = bind("EVP_PKEY_assign", ctypes.c_int,
                                    _POINTER, ctypes.c_int, _POINTER)
        self.EVP_PKEY_new_raw_private_key = bind(
            "EVP_PKEY_new_raw_private_key", _POINTER,
            ctypes.c_int, _POINTER, ctypes.c_char_p, ctypes.c_size_t)
        self.EVP_PKEY_free = bind("EVP_PKEY_free", None, _POINTER)
        self.OPENSSL_sk_new_null = bind("OPENSSL_sk_new_null", _POINTER)
        self.OPENSSL_sk_push = bind("OPENSSL_sk_push", ctypes.c_int, _POINTER, _POINTER)
        self.OPENSSL_sk_pop_free = bind("OPENSSL_sk_pop_free", None, _POINTER, _POINTER)
        self.SSL_use_cert_and_key = bind("SSL_use_cert_and_key", ctypes.c_int,
                                         _POINTER, _POINTER, _POINTER, _POINTER, ctypes.c_int)
        self.SSL_certs_clear = bind("SSL_certs_clear", None, _POINTER)
        self.SSL_get_SSL_CTX = bind("SSL_get_SSL_CTX", _POINTER, _POINTER)
        self.SSL_CTX_get_options = bind("SSL_CTX_get_options", ctypes.c_uint64, _POINTER)
        self.ERR_clear_error = bind("ERR_clear_error", None)
        self.ERR_peek_last_error = bind("ERR_peek_last_error", ctypes.c_ulong)
        self.ERR_reason_error_string = bind("ERR_reason_error_string", ctypes.c_char_p,
                                            ctypes.c_ulong)
        # A connection's handshake and its close_notify, called by `tls` on the SSL itself:
        # through `_ssl`, a handshake waiting for the client's next flight and a close not
        # answered yet each raise SSLWantReadError, and raising (the message formatted, the
        # exception built, a traceback entry added by the compiled caller) costs more than
        # the call: 8 us less a connection's handshake and close this way, timed from
        # interpreted code, which adds no traceback entry. The handshake keeps the GIL, as
        # every call here does: `_ssl` lets it go around its signing and key exchange, and
        # a busy thread that takes it then (a reconciler, in `certctl serve` issuing) keeps
        # the event loop waiting up to the switch interval (5 ms) to get it back.
        self.SSL_do_handshake = bind("SSL_do_handshake", ctypes.c_int, _POINTER)
        self.SSL_get_error = bind("SSL_get_error", ctypes.c_int, _POINTER, ctypes.c_int)
        self.SSL_shutdown = bind("SSL_shutdown", ctypes.c_int, _POINTER)
        # The chain's destructor, passed to OPENSSL_sk_pop_free as a C function pointer.
        self.x509_free_address = ctypes.cast(self.X509_free, _POINTER).value
        # PySSLContext: {PyObject_HEAD; SSL_CTX *ctx; ...}
        # PySSLSocket:  {PyObject_HEAD; PyObject *Socket; SSL *ssl; ...}
        header = object.__basicsize__
        self.context_offset = header
        self.connection_offset = header + ctypes.sizeof(_POINTER)

    def ssl_of(self, connection: object) -> int:
        """The SSL pointer of an `_ssl._SSLSocket` (what `SSLContext._wrap_bio` returns)."""
        pointer: int | None = _POINTER.from_address(id(connection) + self.connection_offset).value
        if not pointer:
            raise ValueError("the connection has no SSL")
        return pointer

    def failure(self, error: int) -> str:
        """Why a handshake failed, from SSL_get_error's `error` and OpenSSL's error queue,
        which is emptied: SSL_get_error reads it too, and is only reliable on an empty one."""
        code = self.ERR_peek_last_error()
        self.ERR_clear_error()
        if error == _SSL_ERROR_SSL:
            reason: bytes | None = self.ERR_reason_error_string(code) if code else None
            return reason.decode("ascii", "replace") if reason else f"OpenSSL error {code:#x}"
        if error == _SSL_ERROR_ZERO_RETURN:
            return "the client closed the connection (close_notify)"
        if error == _SSL_ERROR_SYSCALL:
            return "the client left mid-handshake"
        return f"SSL_get_error {error}"

    def checked(self) -> bool:
        """Whether the layout read by `ssl_of` is this interpreter's: a throwaway
        connection's SSL must belong to its context, known by its options."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        connection = context._wrap_bio(  # type: ignore[attr-defined]
            ssl.MemoryBIO(), ssl.MemoryBIO(), True, None)
        context_pointer = _POINTER.from_address(id(context) + self.context_offset).value
        return bool(
            context_pointer
            and self.SSL_CTX_get_options(context_pointer) == context.options
            and self.SSL_get_SSL_CTX(self.ssl_of(connection)) == context_pointer
        )


def _bind() -> _Binding | None:
    if sys.implementation.name != "cpython":
        logger.warning("TLS certificates get a context each (slower first handshakes): "
                       "%s is not CPython", sys.implementation.name)
        return None
    import _ssl

    try:
        # dlsym through _ssl's handle finds the libraries _ssl was linked against;
        # an _ssl built into the interpreter has no file: the process's own symbols.
        # PyDLL: each call keeps the GIL, as `_ssl`'s own short calls do. A CDLL lets it
        # go around every call, and in `certctl serve` issuing (B2) each of the dozen calls
        # of a first handshake then handed it to a reconciler thread, the event loop waiting
        # to get it back.
        binding = _Binding(ctypes.PyDLL(getattr(_ssl, "__file__", None)))
        if binding.checked():
            return binding
    except (OSError, AttributeError) as err:
        logger.warning("TLS certificates get a context each (slower first handshakes): "
                       "cannot bind libssl: %s", err)
        return None
    logger.warning("TLS certificates get a context each (slower first handshakes): "
                   "this interpreter's ssl objects are not laid out as expected")
    return None


BINDING: Final = _bind()


class UnsupportedKey(ValueError):
    """A private key these decoders do not take (an EC key on explicit parameters, an
    Ed448 key): OpenSSL may still present it from a context of its own."""


class _Certificate:
    """One decoded X509, freed with its last holder."""

    __slots__ = ("__weakref__", "pointer")

    def __init__(self, der: bytes) -> None:
        self.pointer: int | None = None  # __del__ runs on a half-built object too
        binding = _bound()
        self.pointer = _decoded(binding, binding.d2i_X509, ctypes.c_char_p(der), len(der),
                                what="a certificate of the chain")

    def __del__(self) -> None:
        if self.pointer and BINDING is not None:
            BINDING.X509_free(self.pointer)


# Intermediates by their DER: one decoded copy for every leaf a CA issued under it,
# dropped once no decoded certificate holds it.
_intermediates: weakref.WeakValueDictionary[bytes, _Certificate] = (
    weakref.WeakValueDictionary())


class Credentials:
    """A leaf, its chain and its private key as OpenSSL objects, for `present`.

    Immutable once built; what a connection was given stays with it (OpenSSL counts
    its references), so dropping or replacing these never affects an open handshake.
    """

    __slots__ = ("_chain", "_intermediates", "_key", "_leaf")

    def __init__(self, *, chain_pem: bytes, key_pem: bytes) -> None:
        """Decode a PEM chain (leaf first) and its PEM private key. ValueError if either
        does not decode (the message names no key material)."""
        # Set first: __del__ runs on a half-built object too.
        self._key: int | None = None
        self._chain: int | None = None
        binding = _bound()
        ders = [der for label, der in inspect.pem_blocks(chain_pem) if label == b"CERTIFICATE"]
        if not ders:
            raise ValueError("the chain holds no certificate")
        self._leaf = _Certificate(ders[0])
        self._intermediates = [_intermediate(der) for der in ders[1:]]
        self._key = _private_key(binding, key_pem)
        chain = binding.OPENSSL_sk_new_null()
        if not chain:
            raise MemoryError("OPENSSL_sk_new_null")
        self._chain = chain
        for certificate in self._intermediates:
            # The chain holds its own reference to each, as OpenSSL's stacks of X509 do.
            binding.X509_up_ref(certificate.pointer)
            if not binding.OPENSSL_sk_push(chain, certificate.pointer):
                binding.X509_free(certificate.pointer)
                raise MemoryError("OPENSSL_sk_push")

    def present(self, pointer: int) -> bool:
        """Make the SSL connection at `pointer` (`_Binding.ssl_of` an `_ssl._SSLSocket` in
        its SNI callback, on a context holding no certificate) present this certificate;
        False if OpenSSL refused."""
        binding = BINDING
        assert binding is not None  # __init__ needed it
        binding.SSL_certs_clear(pointer)
        if binding.SSL_use_cert_and_key(pointer, self._leaf.pointer, self._key,
                                        self._chain, 1) == 1:
            return True
        binding.ERR_clear_error()  # or Python's ssl would report it as the handshake's
        return False

    def __del__(self) -> None:
        if BINDING is None:
            return
        if self._chain:
            BINDING.OPENSSL_sk_pop_free(self._chain, BINDING.x509_free_address)
        if self._key:
            BINDING.EVP_PKEY_free(self._key)


def _bound() -> _Binding:
    if BINDING is None:
        raise RuntimeError("credentials need libssl bound (check credentials.BINDING first)")
    return BINDING


def _intermediate(der: bytes) -> _Certificate:
    certificate = _intermediates.get(der)
    if certificate is None:
        certificate = _intermediates[der] = _Certificate(der)
    return certificate


def _private_key(binding: _Binding, key_pem: bytes) -> int:
    """An EVP_PKEY for the PEM key. EC (on a named curve) and RSA keys, traditional or
    PKCS8, go straight to OpenSSL's legacy decoders (the store checked the key against its
    leaf when it loaded the Secret); Ed25519 keys through `cryptography` first."""
    block = next(((label, der) for label, der in inspect.pem_blocks(key_pem)
                  if label.endswith(b"PRIVATE KEY")), None)
    if block is None:
        raise ValueError("the private key does not decode")
    label, der = block
    legacy = _legacy_key(binding, label, der)
    if legacy is None:
        try:
            parsed = serialization.load_der_private_key(
                der, password=None, unsafe_skip_rsa_key_validation=True)
        except (ValueError, TypeError):
            raise ValueError("the private key does not decode") from None
        if not isinstance(parsed, ed25519.Ed25519PrivateKey):
            raise UnsupportedKey(f"unsupported private key ({type(parsed).__name__})")
        return _ed25519_key(binding, parsed)
    key, kind, free = legacy
    pointer: int | None = binding.EVP_PKEY_new()
    # EVP_PKEY_assign takes the key over on success only.
    if not pointer or binding.EVP_PKEY_assign(pointer, kind, key) != 1:
        free(key)
        if pointer:
            binding.EVP_PKEY_free(pointer)
        binding.ERR_clear_error()
        raise MemoryError("EVP_PKEY_assign")
    return pointer


def _legacy_key(binding: _Binding, label: bytes, der: bytes) -> tuple[int, int, Any] | None:
    """(key, its EVP_PKEY type, its free function) from OpenSSL's legacy EC or RSA
    decoder, or None for a key they do not take (Ed25519, EC with explicit parameters)."""
    if label == b"EC PRIVATE KEY":
        key = _decoded(binding, binding.d2i_ECPrivateKey, ctypes.c_char_p(der), len(der))
        return key, _EVP_PKEY_EC, binding.EC_KEY_free
    if label == b"RSA PRIVATE KEY":
        key = _decoded(binding, binding.d2i_RSAPrivateKey, ctypes.c_char_p(der), len(der))
        return key, _EVP_PKEY_RSA, binding.RSA_free
    if label != b"PRIVATE KEY":
        return None
    info = _decoded(binding, binding.d2i_PKCS8_PRIV_KEY_INFO, ctypes.c_char_p(der), len(der))
    try:
        oid, algorithm, inner, size = _POINTER(), _POINTER(), ctypes.c_char_p(), ctypes.c_int()
        if not binding.PKCS8_pkey_get0(ctypes.byref(oid), ctypes.byref(inner),
                                       ctypes.byref(size), ctypes.byref(algorithm), info):
            binding.ERR_clear_error()
            raise ValueError("the private key does not decode")
        kind = binding.OBJ_obj2nid(oid)
        if kind == _EVP_PKEY_RSA:
            key = _decoded(binding, binding.d2i_RSAPrivateKey, inner, size.value)
            return key, kind, binding.RSA_free
        if kind != _EVP_PKEY_EC:
            return None
        parameter_type, curve = ctypes.c_int(), _POINTER()
        binding.X509_ALGOR_get0(None, ctypes.byref(parameter_type), ctypes.byref(curve),
                                algorithm)
        if parameter_type.value != _V_ASN1_OBJECT:
            return None
        # PKCS8 names the curve beside the key, which may leave it out: decoded into a key
        # on that curve.
        on_curve: int | None = binding.EC_KEY_new_by_curve_name(binding.OBJ_obj2nid(curve))
        if not on_curve:
            binding.ERR_clear_error()
            return None
        try:
            _decoded(binding, binding.d2i_ECPrivateKey, inner, size.value, into=on_curve)
        except ValueError:
            binding.EC_KEY_free(on_curve)  # d2i keeps a key it was given when it fails
            raise
        return on_curve, kind, binding.EC_KEY_free
    finally:
        binding.PKCS8_PRIV_KEY_INFO_free(info)


def _decoded(binding: _Binding, decode: Any, source: ctypes.c_char_p, size: int, *,
             what: str = "the private key", into: int | None = None) -> int:
    """What OpenSSL's d2i function `decode` makes of `size` bytes at `source` (into the
    object `into`, when given); ValueError naming `what` when it cannot."""
    decoded: int | None = decode(None if into is None else ctypes.byref(_POINTER(into)),
                                 ctypes.byref(source), size)
    if not decoded:
        binding.ERR_clear_error()
        raise ValueError(f"{what} does not decode")
    return decoded


def _ed25519_key(binding: _Binding, key: ed25519.Ed25519PrivateKey) -> int:
    raw = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                            serialization.NoEncryption())
    pointer: int | None = binding.EVP_PKEY_new_raw_private_key(
        _EVP_PKEY_ED25519, None, raw, len(raw))
    if not pointer:
        binding.ERR_clear_error()
        raise ValueError("the private key does not decode")
    return pointer
