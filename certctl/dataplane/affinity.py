"""Session affinity: ingress-nginx's `affinity: cookie`, a client kept on one endpoint.

A request whose affinity cookie names one of the route's ready endpoints goes
there first; any other request is balanced as usual, and its response sets
the cookie to the endpoint that served it (so a vanished endpoint, or one
that refused the connection, hands the client over to another). The cookie
holds a digest of the endpoint's address, not the address itself.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from certctl.dataplane import routing
from certctl.routes import options


def endpoint_key(address: routing.Upstream) -> bytes:
    return hashlib.sha1(f"{address[0]}:{address[1]}".encode(), usedforsecurity=False
                        ).hexdigest()[:16].encode()


def cookie_value(rules: options.Affinity, cookie_header: bytes | None) -> bytes | None:
    """The affinity cookie's value in a request's Cookie header, if it has one."""
    if cookie_header is None:
        return None
    name = rules.cookie_name.encode()
    for pair in cookie_header.split(b";"):
        key, _, value = pair.strip().partition(b"=")
        if key == name:
            return value
    return None


def sticky_index(upstreams: Sequence[routing.Upstream], value: bytes | None) -> int | None:
    """Where the cookie's endpoint is among the ready ones; None when it names none."""
    if value is None:
        return None
    for index, address in enumerate(upstreams):
        if endpoint_key(address) == value:
            return index
    return None


def set_cookie(rules: options.Affinity, *, address: routing.Upstream, path: str) -> bytes:
    """The Set-Cookie header value sending the client back to `address`."""
    parts = [f"{rules.cookie_name}={endpoint_key(address).decode()}",
             f"Path={rules.path or path or '/'}"]
    if rules.domain:
        parts.append(f"Domain={rules.domain}")
    if rules.expires is not None:
        parts.append(f"Max-Age={rules.expires}")
    if rules.samesite:
        parts.append(f"SameSite={rules.samesite}")
    if rules.secure or rules.samesite == "None":
        parts.append("Secure")
    parts.append("HttpOnly")
    return "; ".join(parts).encode()


def start_index(match: routing.RouteMatch, cookie_header: bytes | None) -> int | None:
    """The endpoint a request's affinity cookie keeps it on, if the route has affinity."""
    rules = match.options.affinity
    if rules is None:
        return None
    return sticky_index(match.upstreams, cookie_value(rules, cookie_header))


def with_cookie(
    response_headers: tuple[options.Header, ...], *, match: routing.RouteMatch,
    cookie_header: bytes | None, address: routing.Upstream,
) -> tuple[options.Header, ...]:
    """The headers a response gets, with the affinity cookie when the request was sent to an
    endpoint its cookie does not name (or it had none); a retry's endpoint replaces the
    first's."""
    rules = match.options.affinity
    if rules is None or cookie_value(rules, cookie_header) == endpoint_key(address):
        return response_headers
    path = "/" if match.pattern is not None else match.path
    ours = rules.cookie_name.encode() + b"="
    return (*(h for h in response_headers
              if not (h[0] == b"set-cookie" and h[1].startswith(ours))),
            (b"set-cookie", set_cookie(rules, address=address, path=path)))
