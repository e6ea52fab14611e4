"""Private keys: generate per spec, encode as cert-manager does, load, compare.

Messages never contain key bytes: a key that fails to load is reported by
what is wrong with it, not by what it contains.
"""

from __future__ import annotations

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificatePublicKeyTypes,
    PrivateKeyTypes,
)

from certctl.api import resources

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey

DEFAULT_RSA_SIZE = 2048
DEFAULT_ECDSA_SIZE = 256
_CURVES: dict[int, ec.EllipticCurve] = {
    256: ec.SECP256R1(),
    384: ec.SECP384R1(),
    521: ec.SECP521R1(),
}


def generate_private_key(spec: resources.PrivateKeySpec) -> PrivateKey:
    """A fresh key for the spec; size None means the algorithm's default, Ed25519 has no size."""
    if spec.algorithm == "RSA":
        return rsa.generate_private_key(
            public_exponent=65537, key_size=spec.size or DEFAULT_RSA_SIZE
        )
    if spec.algorithm == "ECDSA":
        size = spec.size or DEFAULT_ECDSA_SIZE
        if size not in _CURVES:
            raise ValueError(f"ECDSA key size must be 256, 384 or 521, not {size}")
        return ec.generate_private_key(_CURVES[size])
    return ed25519.Ed25519PrivateKey.generate()


def encode_private_key(key: PrivateKey, *, encoding: resources.KeyEncoding) -> bytes:
    """Unencrypted PEM, as it goes into `tls.key`.

    PKCS1 means OpenSSL's "traditional" format, as in cert-manager: `BEGIN RSA
    PRIVATE KEY` for RSA and `BEGIN EC PRIVATE KEY` (SEC 1) for ECDSA, which is
    what older servers expect. Ed25519 has no traditional format and is always
    PKCS8 (`BEGIN PRIVATE KEY`).
    """
    if encoding == "PKCS1" and not isinstance(key, ed25519.Ed25519PrivateKey):
        key_format = serialization.PrivateFormat.TraditionalOpenSSL
    else:
        key_format = serialization.PrivateFormat.PKCS8
    return key.private_bytes(
        encoding=serialization.Encoding.PEM,
        format=key_format,
        encryption_algorithm=serialization.NoEncryption(),
    )


def encoding_of(pem: bytes) -> resources.KeyEncoding:
    """How an unencrypted PEM key is encoded: PKCS1 for OpenSSL's traditional RSA and EC
    forms, PKCS8 for `BEGIN PRIVATE KEY`. Only the header is read."""
    header = pem.lstrip()[:40]
    if header.startswith((b"-----BEGIN RSA PRIVATE KEY-----", b"-----BEGIN EC PRIVATE KEY-----")):
        return "PKCS1"
    return "PKCS8"


def effective_encoding(
    key: PrivateKey, *, encoding: resources.KeyEncoding
) -> resources.KeyEncoding:
    """The encoding `encode_private_key` really produces: Ed25519 is PKCS8 whatever is asked."""
    return "PKCS8" if isinstance(key, ed25519.Ed25519PrivateKey) else encoding


def load_private_key(pem: bytes, *, check_rsa: bool = True) -> PrivateKey:
    """Load an unencrypted PEM key in any of the encodings above.

    Raises ValueError for garbage, encrypted keys and key types certctl cannot
    issue for (DSA, X25519, ...); the message names the problem only.
    An RSA key's numbers are checked to agree with each other (`check_rsa`: the
    primes multiply to the modulus, the private exponents and the CRT
    coefficient are theirs), as Go's crypto/rsa does for cert-manager, in
    microseconds; OpenSSL's own check, which also tests the primes for
    primality, took about 35 ms a 2048-bit key, and every Certificate pass
    reads its Secret's key. `check_rsa=False` skips even that, as TLS servers
    loading a key do (the data plane): that the key matches its certificate is
    what counts there, and callers check that.
    """
    try:
        key: PrivateKeyTypes = serialization.load_pem_private_key(
            pem, password=None, unsafe_skip_rsa_key_validation=True)
    except TypeError as exc:
        raise ValueError("the private key is encrypted; certctl needs an unencrypted key") from exc
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ValueError("the private key is not a PEM-encoded key that can be read") from exc
    if check_rsa and isinstance(key, rsa.RSAPrivateKey) and not _consistent(key):
        raise ValueError("the private key is not a PEM-encoded key that can be read: its RSA "
                         "numbers do not agree with each other")
    if isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey):
        return key
    raise ValueError(
        f"unsupported private key type {type(key).__name__}; use RSA, ECDSA or Ed25519"
    )


def describe_key(
    key: PrivateKey | PublicKey | CertificatePublicKeyTypes,
) -> tuple[resources.KeyAlgorithm, int]:
    """(algorithm, size) in the Certificate's terms, for a private or public key.

    ECDSA size is the curve's (256, 384, 521); Ed25519 reports 256. Other
    public key types (from a certificate someone else issued) raise ValueError.
    """
    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        return "RSA", key.key_size
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        return "ECDSA", key.curve.key_size
    if isinstance(key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey):
        return "Ed25519", 256
    raise ValueError(f"unsupported key type {type(key).__name__}")


def signature_hash(key: PrivateKey) -> hashes.SHA256 | hashes.SHA384 | hashes.SHA512 | None:
    """The digest to sign with, scaled to the key's strength as cert-manager does.

    RSA 2048 and P-256 use SHA-256, RSA 3072 and P-384 SHA-384, bigger keys
    SHA-512. Ed25519 signs without a separate digest, hence None.
    """
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return None
    size = key.key_size if isinstance(key, rsa.RSAPrivateKey) else key.curve.key_size
    if size >= 4096 or size == 521:
        return hashes.SHA512()
    if size >= 3072 or size == 384:
        return hashes.SHA384()
    return hashes.SHA256()


def public_keys_equal(
    a: PrivateKey | PublicKey | CertificatePublicKeyTypes,
    b: PrivateKey | PublicKey | CertificatePublicKeyTypes,
) -> bool:
    """True when both keys (private keys stand for their public half) are the same key.

    Compared as DER SubjectPublicKeyInfo, so different key types simply differ.
    """
    return _spki(a) == _spki(b)


def _spki(key: PrivateKey | PublicKey | CertificatePublicKeyTypes) -> bytes:
    public = (
        key.public_key()
        if isinstance(
            key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
        )
        else key
    )
    return public.public_bytes(
        encoding=serialization.Encoding.DER,
        format=serialization.PublicFormat.SubjectPublicKeyInfo,
    )


def _consistent(key: rsa.RSAPrivateKey) -> bool:
    """Whether an RSA key's private numbers agree: p * q = n, d inverts e modulo p - 1 and
    q - 1, and the CRT values are d mod p - 1, d mod q - 1 and q^-1 mod p."""
    numbers = key.private_numbers()
    p, q, d = numbers.p, numbers.q, numbers.d
    e, n = numbers.public_numbers.e, numbers.public_numbers.n
    if p <= 1 or q <= 1 or p * q != n:
        return False
    return ((d * e) % (p - 1) == 1 and (d * e) % (q - 1) == 1
            and numbers.dmp1 == d % (p - 1) and numbers.dmq1 == d % (q - 1)
            and (numbers.iqmp * q) % p == 1)
