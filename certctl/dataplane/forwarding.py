"""What a request forwarded to a backend keeps of the client's fields, and what is added.

One place for every leg: an HTTP/1.1 or HTTP/2 client's request to an HTTP/1.1
backend (`request_head`) or to an HTTP/2 one (`upstream_h2.request_headers`).
The client's fields go on but for those in NOT_FORWARDED: hop-by-hop ones,
Host and Content-Length (set for the backend's hop), Expect (answered by the
data plane itself), and the forwarding fields, which the data plane sets from
what it saw (`forwarded_fields`) so that no client can claim another's address.
The auth-url subrequest (`external_auth`) sends fields of its own besides.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from certctl.dataplane import upstream

Field = tuple[bytes, bytes]

# Set by the data plane on every forwarded request, as ingress-nginx's proxy_set_header.
FORWARDING: Final = frozenset(
    {b"x-forwarded-for", b"x-real-ip", b"x-forwarded-proto", b"x-forwarded-host"}
)
# The client's fields not passed on (lowercase names).
NOT_FORWARDED: Final[frozenset[bytes]] = (
    upstream.HOP_BY_HOP | frozenset({b"host", b"content-length", b"expect"}) | FORWARDING
)


def forwarded_fields(*, client_ip: bytes, proto: bytes, host: bytes) -> tuple[Field, ...]:
    """The forwarding fields of a request from `client_ip` that came over `proto` (http,
    https) for `host` (the client's Host or :authority)."""
    return ((b"x-forwarded-for", client_ip), (b"x-real-ip", client_ip),
            (b"x-forwarded-proto", proto), (b"x-forwarded-host", host))


def forwarded_lines(*, client_ip: bytes, proto: bytes, host: bytes) -> bytes:
    """`forwarded_fields` as lines of an HTTP/1.1 head (the same for every request of a
    connection that names one host: its connection keeps them)."""
    fields = forwarded_fields(client_ip=client_ip, proto=proto, host=host)
    return b"".join(name + b": " + value + b"\r\n" for name, value in fields)


def request_head(
    *,
    method: bytes,
    target: bytes,
    host: bytes,
    headers: Iterable[Field],
    checked: bool,
    forwarded: bytes,
    upgrade: bytes | None,
    chunked: bool,
    content_length: bytes | None,
) -> bytes:
    """The head of a request to an HTTP/1.1 backend: its request line and `host`, the
    client's `headers` (those in NOT_FORWARDED left out, unless `checked` as they were
    read; unchecked names are HTTP/2's, lowercase), the forwarding fields' lines
    (`forwarded_lines`), then `upgrade` (a WebSocket's) and the body's framing."""
    parts = [method, b" ", target, b" HTTP/1.1\r\nhost: ", host, b"\r\n"]
    if checked:
        for name, value in headers:
            parts += (name, b": ", value, b"\r\n")
    else:
        for name, value in headers:
            if name not in NOT_FORWARDED:
                parts += (name, b": ", value, b"\r\n")
    parts.append(forwarded)
    if upgrade is not None:
        parts += (b"connection: upgrade\r\nupgrade: ", upgrade, b"\r\n")
    if chunked:
        parts.append(b"transfer-encoding: chunked\r\n")
    elif content_length is not None:
        parts += (b"content-length: ", content_length, b"\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)
