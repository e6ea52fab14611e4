"""The kubernetes.io/tls Secret layout: `tls.crt`, `tls.key`, optional `ca.crt`.

Values in `data` are base64, as the API server stores them. Reading a Secret
that someone else wrote (or that got corrupted) must never crash a
reconciler: every problem becomes a `SecretInvalid` whose reason goes into the
Certificate's status and triggers reissuance. Reasons never quote key bytes.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import functools
import hashlib
from collections.abc import Mapping
from typing import Any, Final

from cryptography import x509

from certctl.pki import inspect, keys

TLS_CERT_KEY = "tls.crt"
TLS_PRIVATE_KEY_KEY = "tls.key"
CA_CERT_KEY = "ca.crt"
SECRET_TYPE = "kubernetes.io/tls"  # noqa: S105 - a Secret type, not a password


class SecretInvalid(ValueError):
    """The Secret does not hold a usable certificate and key; `reason` says why."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


@dataclasses.dataclass(frozen=True, kw_only=True)
class TLSSecretContents:
    chain: tuple[x509.Certificate, ...]  # leaf first
    key: keys.PrivateKey
    chain_pem: bytes
    key_pem: bytes
    ca_pem: bytes | None

    @property
    def leaf(self) -> x509.Certificate:
        return self.chain[0]

    @functools.cached_property
    def info(self) -> inspect.CertificateInfo:
        """What the leaf says, read once for these contents."""
        return inspect.certificate_info(self.leaf)


def build_tls_secret_data(
    *, chain_pem: bytes, key_pem: bytes, ca_pem: bytes | None
) -> dict[str, str]:
    """The Secret's `data`; `ca.crt` only when the issuer knows its CA (ACME does not)."""
    data = {
        TLS_CERT_KEY: base64.b64encode(chain_pem).decode("ascii"),
        TLS_PRIVATE_KEY_KEY: base64.b64encode(key_pem).decode("ascii"),
    }
    if ca_pem is not None:
        data[CA_CERT_KEY] = base64.b64encode(ca_pem).decode("ascii")
    return data


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class TLSSecretBytes:
    """A kubernetes.io/tls Secret's values decoded, not parsed."""

    chain_pem: bytes
    key_pem: bytes
    ca_pem: bytes | None

    def digest(self) -> bytes:
        """What tells this content from any other: sha256 over the three values, each
        with its length (so no two contents run together into one)."""
        hashed = hashlib.sha256()
        for value in (self.chain_pem, self.key_pem, self.ca_pem or b""):
            hashed.update(len(value).to_bytes(8, "big"))
            hashed.update(value)
        return hashed.digest()


def tls_secret_bytes(secret: Mapping[str, Any]) -> TLSSecretBytes:
    """The Secret's `tls.crt`, `tls.key` and `ca.crt` decoded (`stringData` over `data`);
    SecretInvalid if one of the first two is missing or empty, or one is not base64."""
    return TLSSecretBytes(chain_pem=_required(secret, TLS_CERT_KEY),
                          key_pem=_required(secret, TLS_PRIVATE_KEY_KEY),
                          ca_pem=_value(secret, CA_CERT_KEY))


def read_tls_secret(secret: Mapping[str, Any], *, check_rsa_key: bool = True
                    ) -> TLSSecretContents:
    """Decode and parse a Secret object (the whole object, with `data`).

    `stringData` is honoured on top of `data`, as the API server merges it on
    write: a Secret written by hand in standalone mode may use it. Whether the
    key matches the certificate is left to the caller: it is a reason to
    reissue, not a reason the Secret cannot be read. `check_rsa_key`: see
    `keys.load_private_key` (the data plane, loading thousands to serve, skips it).
    """
    return parse_tls_secret_bytes(tls_secret_bytes(secret), check_rsa_key=check_rsa_key)


# Contents parsed lately: a Secret is read again and again while its certificate is
# issued (the issuing pass, the pass after it, the data plane loading it, the kept copy),
# and each parse of its chain and key cost more CPU than anything else a pass did with it
# (B2's profile: 7 % of `certctl serve`'s while it issues). Few, so that memory does not
# grow with the number of Secrets; what was parsed is immutable.
_PARSED_KEPT: Final = 256


def parse_tls_secret_bytes(found: TLSSecretBytes, *, check_rsa_key: bool = True
                           ) -> TLSSecretContents:
    """`read_tls_secret` for values already decoded; contents parsed lately are not
    parsed again."""
    # One call shape for the cache: lru_cache keys `f(x)` and `f(x, k=True)` apart.
    return _parsed(found, check_rsa_key)


@functools.lru_cache(maxsize=_PARSED_KEPT)
def _parsed(found: TLSSecretBytes, check_rsa_key: bool) -> TLSSecretContents:
    chain_pem, key_pem, ca_pem = found.chain_pem, found.key_pem, found.ca_pem
    try:
        chain = inspect.split_pem_chain(chain_pem)
    except ValueError as exc:
        raise SecretInvalid(f"{TLS_CERT_KEY} does not parse: {exc}") from exc
    try:
        key = keys.load_private_key(key_pem, check_rsa=check_rsa_key)
    except ValueError as exc:
        raise SecretInvalid(f"{TLS_PRIVATE_KEY_KEY} does not parse: {exc}") from exc
    if ca_pem:
        try:
            inspect.split_pem_chain(ca_pem)
        except ValueError as exc:
            raise SecretInvalid(f"{CA_CERT_KEY} does not parse: {exc}") from exc
    return TLSSecretContents(
        chain=tuple(chain), key=key, chain_pem=chain_pem, key_pem=key_pem, ca_pem=ca_pem or None
    )


def decoded_data(secret: Mapping[str, Any]) -> dict[str, bytes]:
    """Every key of a Secret, decoded (`stringData` over `data`); SecretInvalid if one is not."""
    names = {*(secret.get("data") or {}), *(secret.get("stringData") or {})}
    found = {}
    for name in names:
        value = _value(secret, str(name))
        if value is not None:
            found[str(name)] = value
    return found


def _required(secret: Mapping[str, Any], name: str) -> bytes:
    raw = _value(secret, name)
    if raw is None:
        raise SecretInvalid(f"{name} is missing")
    if not raw.strip():
        raise SecretInvalid(f"{name} is empty")
    return raw


def _value(secret: Mapping[str, Any], name: str) -> bytes | None:
    """The decoded value, or None when the key is absent."""
    string_data = secret.get("stringData") or {}
    data = secret.get("data") or {}
    if not isinstance(string_data, Mapping) or not isinstance(data, Mapping):
        raise SecretInvalid("data must be a mapping")
    if isinstance(string_data.get(name), str):
        text: str = string_data[name]
        return text.encode("utf-8")
    encoded = data.get(name)
    if encoded is None:
        return None
    if not isinstance(encoded, str | bytes):
        raise SecretInvalid(f"{name} is not a base64 string")
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SecretInvalid(f"{name} is not valid base64") from exc
