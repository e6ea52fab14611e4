"""Who may reach an Ingress's backends: source ranges and basic authentication.

ingress-nginx's semantics, from its annotations:
- `denylist-source-range`: clients in these networks get 403;
- `whitelist-source-range` (alias `allowlist-source-range`): only clients in
  these networks are let through, the others get 403 (nginx's `deny` lines
  come first, then `allow` lines and `deny all`, first match wins);
- `auth-type: basic` with `auth-secret` (`name` in the Ingress's namespace)
  holding an htpasswd file under the key `auth` (`auth-secret-type:
  auth-file`, the default) or one key per user whose value is the hash
  (`auth-map`); `auth-realm` names the realm of the 401's challenge. Hashes
  as Apache's htpasswd writes them: bcrypt, apr1 (MD5), SHA1, crypt (DES,
  SHA-256, SHA-512); read with passlib, never logged;
- `satisfy: any`: either check passing is enough (nginx's `satisfy any`);
  the default `all` needs both.

The client address is the TCP peer's (IPv4-mapped IPv6 peers compare as
IPv4). A value that cannot be read never loosens anything: the reader returns
a refusal and the Ingress is not served (see nginx_annotations).

Verifying a bcrypt hash costs milliseconds of CPU on the event loop, so each
rule set remembers the outcome for the Authorization headers it has seen
(bounded); a credentials change arrives as a new rule set.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final

from passlib.apache import htpasswd_context

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
SecretData = Callable[[str, str], Mapping[str, bytes] | None]

ALLOWED: Final = 0
FORBIDDEN: Final = 403
UNAUTHORIZED: Final = 401
DEFAULT_REALM: Final = "Authentication Required"
_VERIFIED_CACHE_SIZE: Final = 1024


class BasicAuth:
    """Users and their htpasswd hashes, with the outcomes of recent checks remembered."""

    __slots__ = ("_hashes", "_verified", "challenge")

    def __init__(self, *, hashes: dict[str, str], realm: str) -> None:
        self._hashes = hashes
        self._verified: dict[bytes, bool] = {}
        self.challenge = b'Basic realm="' + realm.encode() + b'"'  # WWW-Authenticate

    def allows(self, authorization: bytes | None) -> bool:
        if authorization is None:
            return False
        known = self._verified.get(authorization)
        if known is not None:
            return known
        verdict = self._verify(authorization)
        if len(self._verified) >= _VERIFIED_CACHE_SIZE:
            self._verified.clear()
        self._verified[authorization] = verdict
        return verdict

    def _verify(self, authorization: bytes) -> bool:
        scheme, _, encoded = authorization.strip().partition(b" ")
        if scheme.lower() != b"basic":
            return False
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        user, colon, password = decoded.partition(b":")
        stored = self._hashes.get(user.decode("utf-8", "replace"))
        if not colon or stored is None:
            return False
        try:
            return bool(htpasswd_context.verify(password, stored))
        except ValueError:
            return False


@dataclass(frozen=True, kw_only=True, slots=True)
class AccessRules:
    deny: tuple[Network, ...] = ()
    allow: tuple[Network, ...] = ()
    basic_auth: BasicAuth | None = None
    satisfy_any: bool = False

    def check(self, *, client_ip: bytes, authorization: bytes | None) -> int:
        """ALLOWED, FORBIDDEN (an address rule) or UNAUTHORIZED (credentials wanted)."""
        address_ok = self._address_allowed(client_ip)
        auth = self.basic_auth
        if auth is None:
            return ALLOWED if address_ok else FORBIDDEN
        if self.satisfied_by_address(client_ip):
            return ALLOWED
        if not address_ok and not self.satisfy_any:
            return FORBIDDEN
        return ALLOWED if auth.allows(authorization) else UNAUTHORIZED

    def satisfied_by_address(self, client_ip: bytes) -> bool:
        """`satisfy: any` with address rules the client passes: no other check applies."""
        return self.satisfy_any and bool(self.allow or self.deny) and self._address_allowed(
            client_ip)

    def _address_allowed(self, client_ip: bytes) -> bool:
        if not self.allow and not self.deny:
            return True
        try:
            address = ipaddress.ip_address(client_ip.decode("ascii"))
        except (ValueError, UnicodeDecodeError):
            return False  # no address to judge (never expected from TCP): refuse
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if any(address in network for network in self.deny):
            return False
        return not self.allow or any(address in network for network in self.allow)


class Unreadable(ValueError):
    """An access annotation whose value cannot be enforced; the message names it."""


def parse_networks(key: str, value: str) -> tuple[Network, ...]:
    """A comma-separated list of addresses and CIDRs, as ingress-nginx takes it."""
    networks = []
    for item in value.split(","):
        item = item.strip()
        if not item:
            continue
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError as err:
            raise Unreadable(f"{key}: {item!r} is not an IP address or CIDR range") from err
    if not networks:
        raise Unreadable(f"{key}: no address or CIDR range given")
    return tuple(networks)


def basic_auth(
    *, key: str, secret_ref: str, secret_type: str, realm: str, namespace: str,
    secret_data: SecretData,
) -> BasicAuth:
    """The users of an auth Secret; `key` names the annotation in messages."""
    if "/" in secret_ref:
        ref_namespace, _, name = secret_ref.partition("/")
        if ref_namespace != namespace:
            raise Unreadable(f"{key}: {secret_ref!r} is in another namespace; certctl reads "
                             "auth Secrets from the Ingress's own namespace only")
    else:
        name = secret_ref
    if any(c in realm for c in '"\\\r\n') or not realm.isprintable():
        raise Unreadable(f"{key}: the realm may not hold quotes, backslashes or control "
                         "characters")
    data = secret_data(namespace, name)
    if data is None:
        raise Unreadable(f"{key}: Secret {namespace}/{name} not found")
    where = f"{key}: Secret {namespace}/{name}"
    if secret_type == "auth-map":  # noqa: S105 - a format's name, not a password
        lines = [(user, value.decode("utf-8", "replace").strip()) for user, value in data.items()]
    elif secret_type == "auth-file":  # noqa: S105
        content = data.get("auth")
        if content is None:
            raise Unreadable(f"{where} has no key 'auth' (auth-secret-type: auth-file)")
        lines = []
        for number, line in enumerate(content.decode("utf-8", "replace").splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            user, colon, hashed = line.partition(":")
            if not colon or not user:
                raise Unreadable(f"{where} key 'auth' line {number}: not 'user:hash'")
            lines.append((user, hashed.strip()))
    else:
        raise Unreadable(f"{key}: auth-secret-type {secret_type!r} is not auth-file or auth-map")
    hashes = {}
    for user, hashed in lines:
        if not _is_hash(hashed):
            raise Unreadable(f"{where}: the hash of user {user!r} is not one htpasswd writes "
                             "(bcrypt, apr1, SHA1, crypt)")
        hashes[user] = hashed
    if not hashes:
        raise Unreadable(f"{where} lists no users")
    return BasicAuth(hashes=hashes, realm=realm)


def _is_hash(hashed: str) -> bool:
    """A complete hash of a scheme htpasswd writes (not a bare salt or a plain password)."""
    try:
        scheme = htpasswd_context.identify(hashed)
        parsed = htpasswd_context.handler(scheme).from_string(hashed)
    except (ValueError, TypeError, AttributeError):
        return False
    return getattr(parsed, "checksum", None) is not None and scheme != "plaintext"
