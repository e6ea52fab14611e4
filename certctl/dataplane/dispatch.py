"""What to do with one request, whatever the HTTP version it came in: answer it or forward it.

`decide` holds the decisions HTTP/1.1 (`connection`) and HTTP/2 (`http2`)
share, in order: ACME HTTP-01 tokens on plain HTTP, the Ingress route,
redirects to HTTPS (ssl-redirect / force-ssl-redirect), 404 without a
route, the redirect annotations (before the HTTPS redirect, as nginx's
`return`), 503 for an Ingress refused for unenforced access annotations, 503
over its request limits, 403 and 401 from its access rules (source ranges,
basic auth), 204 for a CORS preflight, the canary
split, 503 without ready endpoints, 413 over proxy-body-size by declared
length, and rewrite-target; before all of them, 400 for an authority that
is not well formed. An HTTPRoute rule (a match with `filters` or a `split`)
takes its own branch after the route is found (`_gateway_decision`): 204 for
a CORS preflight, its RequestRedirect, its weighted backend (500 for an
invalid one's share), 503 without ready endpoints, then URLRewrite and the
header modifiers (CORS's response headers on every answer but a preflight's,
local ones included). It touches no socket: the caller writes the answer or starts the upstream
exchange. Which endpoint it goes to is `first_endpoint`'s (affinity, upstream-hash-by,
load-balance) or the data plane's round-robin, and `next_endpoint` says where a failed try
goes next (proxy-next-upstream).
"""

from __future__ import annotations

import datetime
import hashlib
import os
import random
import re
import time
from collections.abc import Callable, Sequence
from typing import Any, Final

import httptools

from certctl.dataplane import affinity, limits, routing, services
from certctl.routes import model
from certctl.routes import options as route_options
from certctl.solvers import http01

_CHALLENGE_PREFIX: Final = http01.CHALLENGE_PATH_PREFIX
# RFC 9110 7.2 / RFC 3986 3.2.2: an IP literal or a reg-name, then an optional
# port. A Host outside this (spaces, `/`, `@`, a second colon, raw 8-bit bytes)
# is refused like nginx does, before it reaches routing, a Location or a backend.
_AUTHORITY: Final = re.compile(
    rb"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~!$&'()*+,;=%-]*)(?::[0-9]{0,5})?"
)
_ROUTING_HOSTS: Final[dict[bytes, str | None]] = {}  # see _routing_host
_ROUTING_HOSTS_SIZE: Final = 4096
_METHOD: Final = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_BAD_TARGET: Final = re.compile(rb"[\x00-\x20\x7f-\xff]")
_GROUP: Final = re.compile(r"\$([1-9])")
# The Server header of the data plane's own answers, and of a backend's that sent none
# (the Ingress conformance suite looks for one).
SERVER: Final = b"certctl"
# Headers the data plane adds beside the backend's own rather than instead of them.
ADDED_BESIDE: Final = frozenset({b"set-cookie", b"vary"})
_REFUSED_BODY: Final = (
    b"Not served: this Ingress asks for access restrictions certctl does not enforce.\n"
)


def is_request_line_safe(*, method: bytes, target: bytes) -> bool:
    """A method that is a token and a target without whitespace or control bytes, so
    neither can reshape the HTTP/1.1 request line sent upstream. For HTTP/2's
    pseudo-headers only: llhttp already holds HTTP/1.1 requests to this."""
    return _METHOD.fullmatch(method) is not None and _BAD_TARGET.search(target) is None


class Decision:
    """Either `status` (answer locally, with `body` and `headers`) or `match` (forward).

    `target` is what to send upstream (after rewrite-target), `authority` the
    Host to send (the absolute-form URL's, if the request used one), and
    `route_host` the metrics label of the matched rule ("" without a match).
    """

    __slots__ = ("authority", "body", "headers", "match", "request_headers", "route_host",
                 "slot", "status", "target")

    def __init__(
        self,
        *,
        status: int = 0,
        match: routing.RouteMatch | None = None,
        target: bytes = b"",
        authority: bytes | None = None,
        body: bytes | None = None,
        headers: tuple[route_options.Header, ...] = (),
        route_host: str = "",
        slot: limits.Slot | None = None,
        request_headers: tuple[route_options.Header, ...] = (),
    ) -> None:
        self.status = status
        self.match = match
        self.target = target
        self.authority = authority
        self.body = body
        # Added to the answer, local or the backend's (whose same-named ones they
        # replace): a redirect's Location, a 401's WWW-Authenticate, CORS headers.
        self.headers = headers
        self.route_host = route_host
        # A limit-connections count taken for this request: the caller releases it
        # (services.limits.release) when the request ends, whatever the answer.
        self.slot = slot
        # Set on the request to the backend, replacing what the client sent under
        # those names (the ssl-client-* headers of a verified client certificate).
        self.request_headers = request_headers


def decide(
    *,
    services: services.Services,
    scheme: bytes,
    method: bytes,
    target: bytes,
    authority: bytes | None,
    header: Callable[[bytes], bytes | None],
    content_length: bytes | None,
    client_ip: bytes,
    client_certificate: bytes | None = None,
) -> Decision:
    """The decision for one request; `header(lowercase name)` reads a request header."""
    if target.startswith(b"/"):
        query = target.find(b"?")
        raw_path = target if query < 0 else target[:query]
    else:  # absolute-form: the authority replaces Host (RFC 9112 3.2.2)
        try:
            # Any: httptools' stub types the parts a URL lacks as bytes, but they are None
            # (and compiled with mypyc, a wrong type is a TypeError).
            url: Any = httptools.parse_url(target)
        except httptools.HttpParserInvalidURLError:
            return Decision(status=400)
        if not url.host or url.userinfo is not None:
            return Decision(status=400)  # RFC 9110 4.2.4: userinfo is an error
        host_part = b"[%s]" % url.host if b":" in url.host else url.host
        authority = host_part if url.port is None else b"%s:%d" % (host_part, url.port)
        raw_path = url.path or b"/"
        target = raw_path if url.query is None else raw_path + b"?" + url.query
    host = _routing_host(authority) if authority else ""
    if host is None:
        return Decision(status=400)
    path = raw_path.decode("latin-1")

    if scheme == b"http" and path.startswith(_CHALLENGE_PREFIX) and method in (b"GET", b"HEAD"):
        token = path[len(_CHALLENGE_PREFIX) :]
        key_authorization = (
            services.challenge_responder(host, token) if http01.TOKEN.fullmatch(token) else None
        )
        if key_authorization is None:
            return Decision(status=404)
        return Decision(status=200, body=key_authorization.encode())

    routes = services.routes
    if routes.conditional:
        query_at = target.find(b"?")
        match = routes.match_request(host=host, path=path, method=method, scheme=scheme,
                                     header=header,
                                     query=b"" if query_at < 0 else target[query_at + 1:])
    else:
        match = routes.match(host=host, path=path)
    if match is not None and (match.filters is not None or match.split):
        return _gateway_decision(match=match, scheme=scheme, method=method, target=target,
                                 raw_path=raw_path, authority=authority, host=host,
                                 header=header)
    route_host = "" if match is None else (match.host or "*")
    if match is not None and match.plain and scheme == b"https":
        # Its options hold their defaults but for what the connection reads itself and the
        # redirect to HTTPS (RouteOptions.plain): none of the checks below would answer or
        # change this request.
        chosen = _chosen(match, header)
        if chosen is None:
            return Decision(status=503, route_host=route_host)
        return Decision(match=chosen, target=target, authority=authority, route_host=route_host)
    options = route_options.DEFAULT_OPTIONS if match is None else match.options
    redirect = options.redirect
    if redirect is not None and options.refusal is None and (
        not redirect.only_root or path == "/"
    ):  # nginx's `return`: its rewrite phase comes before the HTTPS redirect and access
        location = redirect.location(scheme=scheme, http_host=authority or b"", host=host,
                                     target=target)
        return Decision(status=redirect.code, headers=((b"location", location),),
                        route_host=route_host)
    if scheme == b"http" and host:
        https_port = services.https_port
        if https_port is not None and (
            options.force_ssl_redirect
            or (options.ssl_redirect and services.certificates.has_certificate_for(host))
        ):
            netloc = host if https_port == 443 else f"{host}:{https_port}"
            return Decision(
                status=308, headers=((b"location", b"https://" + netloc.encode() + target),),
                route_host=route_host,
            )
    if match is None:
        return Decision(status=404)
    if options.refusal is not None:
        # Never served open: see certctl.api.nginx_annotations. The reason is
        # logged by the data plane feed; the client learns only that it is refused.
        return Decision(status=503, body=_REFUSED_BODY, route_host=route_host)
    slot = None
    limit_rules = options.limits
    if limit_rules is not None:  # before the access rules, as nginx's preaccess phase
        admitted, slot = services.limits.admit(rules=limit_rules, client_ip=client_ip,
                                            now=time.monotonic())
        if not admitted:
            return Decision(status=503, route_host=route_host)
    rules = options.access
    if rules is not None:
        verdict = rules.check(client_ip=client_ip, authorization=header(b"authorization"))
        if verdict:
            basic = rules.basic_auth
            challenge = ((b"www-authenticate", basic.challenge),) if verdict == 401 and basic \
                else ()
            return Decision(status=verdict, route_host=route_host, slot=slot, headers=challenge)
    request_headers: tuple[route_options.Header, ...] = ()
    certificates = options.client_certificates
    if certificates is not None:  # auth-tls-*: nginx's `$ssl_client_verify != SUCCESS` check
        allowed, request_headers = certificates.check(
            client_certificate if scheme == b"https" else None,
            now=datetime.datetime.now(datetime.UTC))
        if not allowed:
            if certificates.error_page is not None:
                location = route_options.expand(certificates.error_page, {
                    "$scheme": scheme, "$http_host": authority or b"", "$host": host.encode(),
                    "$request_uri": target})
                return Decision(status=302, route_host=route_host, slot=slot,
                                headers=((b"location", location),))
            return Decision(status=403, route_host=route_host, slot=slot)
    headers: tuple[route_options.Header, ...] = ()
    cors = options.cors
    if cors is not None:
        found = cors.response_headers(header(b"origin"))
        if found is not None:
            if method == b"OPTIONS":  # a preflight: answered here, the backend never sees it
                return Decision(status=204, route_host=route_host, slot=slot, body=b"",
                                headers=found + cors.preflight_headers())
            headers = found
    chosen = _chosen(match, header)
    if chosen is None:
        return Decision(status=503, route_host=route_host, slot=slot, headers=headers)
    match = chosen
    limit = options.body_size_limit
    if limit is not None and content_length is not None and int(content_length) > limit:
        return Decision(status=413, route_host=route_host, slot=slot)
    if options.rewrite_target is not None:
        target = rewrite(target=target, raw_path=raw_path, match=match)
    return Decision(match=match, target=target, authority=authority, route_host=route_host,
                    slot=slot, headers=headers,
                    request_headers=request_headers + options.request_headers)


def _chosen(
    match: routing.RouteMatch, header: Callable[[bytes], bytes | None]
) -> routing.RouteMatch | None:
    """`match`, or its canary when the request takes it; None when that has no endpoints."""
    if match.canary is not None and takes_canary(header, match.canary.settings):
        match = match.canary.route
    return match if match.upstreams else None


def _gateway_decision(
    *,
    match: routing.RouteMatch,
    scheme: bytes,
    method: bytes,
    target: bytes,
    raw_path: bytes,
    authority: bytes | None,
    host: str,
    header: Callable[[bytes], bytes | None],
) -> Decision:
    """An HTTPRoute rule's answer, the filters in the spec's order (see the module)."""
    route_host = match.host or "*"
    filters = match.filters
    cors_headers: tuple[route_options.Header, ...] = ()
    cors = None if filters is None else filters.cors
    origin = None if cors is None else header(b"origin")
    if cors is not None and origin is not None:
        requested_method = header(b"access-control-request-method")
        if method == b"OPTIONS" and requested_method is not None:
            # A preflight (Fetch's definition): answered here, the backend never sees it;
            # an origin not allowed gets no CORS headers, which the browser refuses.
            return Decision(status=204, body=b"", route_host=route_host,
                            headers=cors.preflight_headers(
                                origin=origin, request_method=requested_method,
                                request_headers=header(b"access-control-request-headers")))
        # On every other answer of the rule, local ones too: a browser shows a script an
        # error or a redirect only with them.
        cors_headers = cors.response_headers(origin)
    if filters is not None and filters.redirect is not None:
        location = _redirect_location(filters.redirect, match=match, scheme=scheme,
                                      target=target, raw_path=raw_path, host=host,
                                      authority=authority)
        return Decision(status=filters.redirect.status,
                        headers=((b"location", location), *cors_headers),
                        route_host=route_host)
    if match.split:
        roll = random.randrange(match.split[-1][0])  # noqa: S311 - a traffic split
        chosen = next(found for total, found in match.split if roll < total)
        if chosen is None:
            return Decision(status=500, route_host=route_host, headers=cors_headers)
        match = chosen
    if not match.upstreams:
        return Decision(status=503, route_host=route_host, headers=cors_headers)
    if filters is None:
        return Decision(match=match, target=target, authority=authority, route_host=route_host)
    if filters.rewrite_path is not None:
        target = _replaced_path(filters.rewrite_path, match=match, target=target,
                                raw_path=raw_path)
    if filters.rewrite_host is not None:
        authority = filters.rewrite_host
    request_headers = filters.request_set
    for name, value in filters.request_add:  # appended to what the client sent
        sent = header(name)
        request_headers += ((name, value if sent is None else sent + b"," + value),)
    # An empty value removes the header (HTTPRoute header values are never empty), so
    # removal travels the same way as the headers set (see upstream_request_headers).
    request_headers += tuple((name, b"") for name in filters.request_remove)
    return Decision(match=match, target=target, authority=authority, route_host=route_host,
                    headers=filters.response_set + cors_headers,
                    request_headers=request_headers)


def _replaced_path(
    modifier: model.PathModifier, *, match: routing.RouteMatch, target: bytes, raw_path: bytes
) -> bytes:
    """A path after ReplaceFullPath, or ReplacePrefixMatch of the matched prefix (element-wise:
    `/prefix/one` with `/prefix` replaced by `/` becomes `/one`); the query string is kept."""
    query = target[len(raw_path):]
    if not modifier.prefix:
        return modifier.value + query
    matched = match.path.rstrip("/").encode("latin-1")
    rest = raw_path[len(matched):]
    replacement = modifier.value
    if replacement.endswith(b"/") and rest.startswith(b"/"):
        replacement = replacement[:-1]
    path = replacement + rest
    return (path or b"/") + query


def _redirect_location(
    redirect: model.Redirect,
    *,
    match: routing.RouteMatch,
    scheme: bytes,
    target: bytes,
    raw_path: bytes,
    host: str,
    authority: bytes | None,
) -> bytes:
    """RequestRedirect's Location: each part the filter does not set is the request's.

    The port, when not set: the well-known one of a scheme the filter changes,
    else the port the request came to (as its Host says; none said is the
    scheme's); omitted when it is the new scheme's well-known port.
    """
    new_scheme = redirect.scheme or scheme
    port = redirect.port
    if port is None:
        given = b""
        if authority and not authority.endswith(b"]"):
            given = authority.rpartition(b":")[2] if b":" in authority else b""
        if (redirect.scheme is not None and redirect.scheme != scheme) or not given.isdigit():
            port = 443 if new_scheme == b"https" else 80
        else:
            port = int(given)
    hostname = redirect.hostname or host.encode()
    default_port = 443 if new_scheme == b"https" else 80
    netloc = hostname if port == default_port else b"%s:%d" % (hostname, port)
    path_and_query = target if redirect.path is None else _replaced_path(
        redirect.path, match=match, target=target, raw_path=raw_path)
    return new_scheme + b"://" + netloc + path_and_query


def _routing_host(authority: bytes) -> str | None:
    """The routing key of a Host / :authority, None if it is not well formed; remembered,
    since a keep-alive client sends the same one with every request."""
    try:
        return _ROUTING_HOSTS[authority]
    except KeyError:
        pass
    host = (
        routing.normalize_host(authority.decode("latin-1"))
        if _AUTHORITY.fullmatch(authority)
        else None
    )
    if len(_ROUTING_HOSTS) >= _ROUTING_HOSTS_SIZE:
        _ROUTING_HOSTS.clear()  # bounded: made-up Hosts only cost their own check
    _ROUTING_HOSTS[authority] = host
    return host


def first_endpoint(
    *,
    services: services.Services,
    match: routing.RouteMatch,
    header: Callable[[bytes], bytes | None],
    method: bytes,
    target: bytes,
    authority: bytes | None,
    scheme: bytes,
    client_ip: bytes,
) -> int:
    """The index of the endpoint a request goes to first, for a route with affinity or
    balancing (the caller asks the data plane's round-robin for the others): the affinity
    cookie's endpoint, else upstream-hash-by's, else the fastest by EWMA."""
    upstreams = match.upstreams
    options = match.options
    if options.affinity is not None:
        found = affinity.start_index(match, header(b"cookie"))
        if found is not None:
            return found
    balancing = options.balancing
    if balancing is not None and balancing.hash_by is not None:
        key = hash_key(balancing.hash_by, header=header, method=method, target=target,
                       authority=authority, scheme=scheme, client_ip=client_ip)
        return hashed_index(upstreams, key)
    start = services.round_robin.start(len(upstreams))
    if balancing is not None and balancing.ewma:
        return services.pool.latencies.fastest(upstreams, start=start, now=time.monotonic())
    return start


_NAMED_VARIABLE: Final = re.compile(rb"\$(http|cookie|arg)_([a-z0-9_]+)")


def hash_key(
    template: str, *, header: Callable[[bytes], bytes | None], method: bytes, target: bytes,
    authority: bytes | None, scheme: bytes, client_ip: bytes,
) -> bytes:
    """upstream-hash-by's template with nginx's variables filled in for one request."""
    path, question, query = target.partition(b"?")

    def named(found: re.Match[bytes]) -> bytes:
        kind, name = found[1], found[2]
        if kind == b"http":
            return header(name.replace(b"_", b"-")) or b""
        pairs = (header(b"cookie") or b"").split(b";") if kind == b"cookie" \
            else query.split(b"&")
        for pair in pairs:
            key, _, value = pair.strip().partition(b"=")
            if key == name:
                return value
        return b""

    expanded = _NAMED_VARIABLE.sub(named, template.encode())
    if b"$" not in expanded:
        return expanded
    host = authority or b""
    return route_options.expand(expanded.decode("latin-1"), {
        "$request_uri": target, "$uri": path, "$args": query, "$is_args": question,
        "$host": (_routing_host(host) or "").encode(), "$http_host": host,
        "$remote_addr": client_ip, "$scheme": scheme, "$request_method": method,
    })


def hashed_index(upstreams: Sequence[routing.Upstream], key: bytes) -> int:
    """Rendezvous hashing: the endpoint whose digest with `key` is highest. A key keeps
    its endpoint while it is ready, and an endpoint's leaving moves only its own keys."""
    best, best_digest = 0, b""
    for index, (address, port) in enumerate(upstreams):
        digest = hashlib.blake2b(b"%s:%d\0%s" % (address.encode(), port, key),
                                 digest_size=8).digest()
        if digest > best_digest:
            best, best_digest = index, digest
    return best


def error_page_headers(
    errors: routing.ErrorRoute, *, code: int, target: bytes,
    header: Callable[[bytes], bytes | None],
) -> tuple[route_options.Header, ...]:
    """What the default backend is told of a response it replaces (custom-http-errors), as
    ingress-nginx's error location sets them: X-Code, X-Format (the Accept header),
    X-Original-URI (path and query as received), the route's X-Namespace, X-Ingress-Name,
    X-Service-Name and X-Service-Port, and X-Request-ID (the client's, else a new one)."""
    request_id = header(b"x-request-id") or os.urandom(16).hex().encode()
    return ((b"x-code", b"%d" % code), (b"x-format", header(b"accept") or b""),
            (b"x-original-uri", target), *errors.headers, (b"x-request-id", request_id))


def next_endpoint(
    policy: route_options.NextUpstream, *, match: routing.RouteMatch,
    address: routing.Upstream, tried: int, since: float, method: bytes,
) -> int | None:
    """proxy-next-upstream: where to try next after the endpoint at `address` failed, the
    request having tried `tried` endpoints since `since` (monotonic); None: answer now."""
    upstreams = match.upstreams
    if tried >= len(upstreams) or not policy.allows(
        method=method, tried=tried, elapsed=time.monotonic() - since
    ):
        return None
    try:
        return (upstreams.index(address) + 1) % len(upstreams)
    except ValueError:
        return None


def takes_canary(
    header: Callable[[bytes], bytes | None], settings: route_options.CanarySettings
) -> bool:
    """Header, then cookie, then weight, as ingress-nginx decides."""
    if settings.header is not None:
        value = header(settings.header)
        if value is not None:
            value = value.strip()
            if settings.header_value is not None:
                if value == settings.header_value:
                    return True
            elif settings.header_pattern is not None:
                if settings.header_pattern.search(value) is not None:
                    return True
            elif value == b"always":
                return True
            elif value == b"never":
                return False
    if settings.cookie is not None:
        cookies = header(b"cookie")
        if cookies is not None:
            for pair in cookies.split(b";"):
                name, _, value = pair.strip().partition(b"=")
                if name == settings.cookie:
                    if value == b"always":
                        return True
                    if value == b"never":
                        return False
    if settings.weight <= 0:
        return False
    return random.randrange(settings.weight_total) < settings.weight  # noqa: S311 - not security


def rewrite(*, target: bytes, raw_path: bytes, match: routing.RouteMatch) -> bytes:
    """rewrite-target: the matched path is replaced by the target, the rest is kept.

    For a Prefix rule `/app` with target `/`, `/app/x?q` goes upstream as
    `/x?q` and `/app` as `/`; for an Exact rule the whole path is replaced.
    The query string is kept as it came. A regular-expression path rewrites as
    nginx's `rewrite` does (`_rewrite_by_pattern`).
    """
    assert match.options.rewrite_target is not None
    if match.pattern is not None:
        return _rewrite_by_pattern(target=target, raw_path=raw_path, pattern=match.pattern,
                                   replacement=match.options.rewrite_target)
    new_target = match.options.rewrite_target.encode()
    remainder = b"" if match.exact else raw_path[len(match.path.rstrip("/")) :]
    path = new_target.rstrip(b"/") + remainder if remainder else new_target
    if not path.startswith(b"/"):
        path = b"/" + path
    query = target[len(raw_path) :] if target.startswith(raw_path) else b""
    return path + query


def _rewrite_by_pattern(
    *, target: bytes, raw_path: bytes, pattern: re.Pattern[str], replacement: str
) -> bytes:
    """nginx's `rewrite <path> <target> break`: the whole path becomes the target, its
    `$1`..`$9` filled with the path's groups (unmatched ones empty). The query string
    follows, after `&` when the target has one of its own; a target ending in `?` drops it.
    """
    path = raw_path.decode("latin-1")
    found = pattern.search(path)
    if found is None:  # the route matched with this very pattern: cannot happen
        return target
    groups = found.groups()
    rewritten = _GROUP.sub(
        lambda ref: groups[int(ref[1]) - 1] or "" if int(ref[1]) <= len(groups) else "",
        replacement)
    query = target[len(raw_path) + 1:] if len(target) > len(raw_path) else b""
    result = rewritten.encode("latin-1")
    if result.endswith(b"?"):
        return result[:-1]
    if not query:
        return result
    return result + (b"&" if b"?" in result else b"?") + query


def replace_headers(
    headers: list[route_options.Header], replacements: Sequence[route_options.Header], *,
    drop: frozenset[bytes] = frozenset(),
) -> list[route_options.Header]:
    """`headers` (a request's) without the names of `replacements` or in `drop`, then the
    replacements: what the data plane says under a name overrides what the client said."""
    names = drop.union(name for name, _ in replacements)
    return [(name, value) for name, value in headers if name.lower() not in names] + list(
        replacements)


def upstream_request_headers(
    headers: list[route_options.Header], decision: Decision, options: route_options.RouteOptions,
) -> list[route_options.Header]:
    """The request's headers as the backend gets them: the decision's replace the client's,
    and of a verified client certificate only the data plane speaks, even with nothing to say."""
    verified = options.client_certificates is not None
    if not decision.request_headers and not verified:
        return headers
    replaced = replace_headers(headers, decision.request_headers,
                               drop=route_options.CLIENT_CERTIFICATE_HEADERS if verified
                               else frozenset())
    removed = {name for name, value in decision.request_headers if not value}
    if removed:  # HTTPRoute removals: see _gateway_decision
        return [(name, value) for name, value in replaced
                if value or name.lower() not in removed]
    return replaced
