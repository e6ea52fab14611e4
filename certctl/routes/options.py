"""How the data plane serves the requests of a route: the options a route source sets.

Every route source (Ingress annotations today, HTTPRoute filters next)
compiles into these; the data plane reads nothing else of its source.
Defaults differ from ingress-nginx's in two places, on purpose:
- no request body limit unless one is set (nginx: 1m), since certctl
  streams bodies and never buffers them;
- no HSTS header unless asked for (nginx: on, from its ConfigMap), since
  HSTS cannot be taken back from browsers that saw it.
"""

from __future__ import annotations

import datetime
import ipaddress
import operator
import re
import urllib.parse
from dataclasses import dataclass, field, fields
from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from certctl.routes import access

DEFAULT_BURST_MULTIPLIER: Final = 5


@dataclass(frozen=True, kw_only=True, slots=True)
class LimitRules:
    """Requests per client address (certctl.dataplane.limits keeps the counts)."""

    zone: str  # the source ("namespace/name"): its routes share one count per client
    rps: float | None = None
    rpm: float | None = None
    burst_multiplier: int = DEFAULT_BURST_MULTIPLIER
    connections: int | None = None
    exempt: tuple[access.Network, ...] = ()

    def exempts(self, client_ip: bytes) -> bool:
        if not self.exempt:
            return False
        try:
            address = ipaddress.ip_address(client_ip.decode("ascii"))
        except (ValueError, UnicodeDecodeError):
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self.exempt)


Header = tuple[bytes, bytes]  # (lowercase name, value)


@dataclass(frozen=True, kw_only=True, slots=True)
class CorsPolicy:
    """Cross-origin requests, as ingress-nginx's enable-cors answers them.

    `origins` is ("*",) or exact origins (`https://app.example.com[:port]`),
    where a host may start with `*.` for one label. The response headers of
    an allowed origin replace the backend's own; a preflight (OPTIONS from an
    allowed origin) is answered 204 by the data plane without the backend.
    With "*" every request counts as allowed, as in ingress-nginx.
    """

    origins: tuple[str, ...] = ("*",)
    methods: bytes = b"GET, PUT, POST, DELETE, PATCH, OPTIONS"
    headers: bytes = (b"DNT,Keep-Alive,User-Agent,X-Requested-With,If-Modified-Since,"
                      b"Cache-Control,Content-Type,Range,Authorization")
    expose_headers: bytes = b""
    credentials: bool = True
    max_age: int = 1_728_000

    def response_headers(self, origin: bytes | None) -> tuple[Header, ...] | None:
        """The CORS headers for a request from `origin`; None when it is not allowed."""
        if self.origins == ("*",):
            allowed = b"*"
        elif origin is None or not self._allows(origin.decode("latin-1").lower()):
            return None
        else:
            allowed = origin
        found: list[Header] = [(b"access-control-allow-origin", allowed)]
        if self.credentials:
            found.append((b"access-control-allow-credentials", b"true"))
        found += [(b"access-control-allow-methods", self.methods),
                  (b"access-control-allow-headers", self.headers)]
        if self.expose_headers:
            found.append((b"access-control-expose-headers", self.expose_headers))
        if allowed != b"*":
            found.append((b"vary", b"Origin"))  # the answer differs per origin: caches must know
        return tuple(found)

    def preflight_headers(self) -> tuple[Header, ...]:
        return ((b"access-control-max-age", b"%d" % self.max_age),)

    def _allows(self, origin: str) -> bool:
        for allowed in self.origins:
            if origin == allowed:
                return True
            scheme, sep, host = allowed.partition("://*.")
            if sep and origin.startswith(scheme + "://"):
                label, dot, rest = origin[len(scheme) + 3:].partition(".")
                if dot and label and "/" not in label and rest == host:
                    return True
        return False


DEFAULT_PORTS: Final = {"http": 80, "https": 443}
# What a wildcard in allowMethods / allowHeaders / exposeHeaders is written as.
WILDCARD: Final = (b"*",)


def split_origin(origin: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of an origin `scheme://host[:port]`, lowercase, the port the
    scheme's default when not written; None for anything else (`null`, a path, userinfo,
    a port out of range, a scheme without a default port and none written)."""
    scheme, sep, authority = origin.lower().partition("://")
    if not sep or not scheme or not authority or "/" in authority or "@" in authority:
        return None
    if authority.startswith("["):  # an IPv6 literal: its colons are not the port's
        host, bracket, rest = authority.partition("]")
        host += bracket
        colon, port_text = rest[:1], rest[1:]
        if not bracket or (rest and colon != ":"):
            return None
    else:
        host, colon, port_text = authority.partition(":")
    if not host:
        return None
    if not colon:
        default = DEFAULT_PORTS.get(scheme)
        return None if default is None else (scheme, host, default)
    if not port_text.isascii() or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        return None
    return scheme, host, int(port_text)


@dataclass(frozen=True, kw_only=True, slots=True)
class AllowedOrigin:
    """One HTTPRoute CORS allowOrigins entry other than `*`: a scheme, a host and a port
    (the scheme's default when not written, as the spec says, so `https://a.example`
    is `https://a.example:443` and nothing else). `host` is lowercase; `*` alone
    matches every host, a leading `*.` one or more labels."""

    scheme: str
    host: str
    port: int

    def matches(self, *, scheme: str, host: str, port: int) -> bool:
        if scheme != self.scheme or port != self.port:
            return False
        if self.host == "*":
            return True
        if self.host.startswith("*."):
            suffix = self.host[1:]  # ".example.com": the dot keeps `example.com` itself out
            return host.endswith(suffix) and len(host) > len(suffix)
        return host == self.host


@dataclass(frozen=True, kw_only=True, slots=True)
class GatewayCorsPolicy:
    """An HTTPRoute CORS filter, with the Gateway API's semantics (its CRD's field
    descriptions), which differ from ingress-nginx's (`CorsPolicy`):

    - an allowed origin is answered with itself, or with `*` only when every origin
      is allowed and credentials are not (with allowCredentials the spec forbids `*`
      in every Access-Control-Allow-* header: a `*` origin, method or header list
      echoes the request's Origin, Access-Control-Request-Method or
      -Request-Headers, and is omitted when there is nothing to echo);
    - Access-Control-Allow-Methods / -Headers and -Max-Age (default 5 s) answer
      preflights only; Access-Control-Allow-Credentials and -Expose-Headers go with
      every answer to an allowed origin;
    - an origin that is not allowed gets no CORS headers at all (its preflight is
      still answered, 204, as the spec permits: the browser then refuses it).
    """

    any_origin: bool = False  # allowOrigins `*`
    origins: tuple[AllowedOrigin, ...] = ()
    credentials: bool = False
    methods: tuple[bytes, ...] = ()  # WILDCARD, or names as written
    headers: tuple[bytes, ...] = ()  # WILDCARD, or names as written
    expose_headers: tuple[bytes, ...] = ()  # WILDCARD, or names as written
    max_age: int = 5

    def allows(self, origin: bytes) -> bool:
        if self.any_origin:
            return True
        parts = split_origin(origin.decode("latin-1"))
        if parts is None:
            return False
        scheme, host, port = parts
        return any(allowed.matches(scheme=scheme, host=host, port=port)
                   for allowed in self.origins)

    def response_headers(self, origin: bytes) -> tuple[Header, ...]:
        """The CORS headers of any answer but a preflight's to a request from `origin`;
        none when it is not allowed."""
        if not self.allows(origin):
            return ()
        found = self._origin_headers(origin)
        exposed = self.expose_headers
        if self.credentials:
            # With credentials `*` would name a header called `*`: left out, and nothing
            # said in its place, since the backend's header names are not known yet.
            exposed = tuple(name for name in exposed if name != b"*")
        if exposed:
            found.append((b"access-control-expose-headers", b", ".join(exposed)))
        return tuple(found)

    def preflight_headers(
        self, *, origin: bytes, request_method: bytes, request_headers: bytes | None,
    ) -> tuple[Header, ...]:
        """The headers of the data plane's answer to a preflight; none for an origin
        that is not allowed."""
        found = list(self.response_headers(origin))
        if not found:
            return ()
        methods = self._listed(self.methods, requested=request_method)
        if methods is not None:
            found.append((b"access-control-allow-methods", methods))
        headers = self._listed(self.headers, requested=request_headers)
        if headers is not None:
            found.append((b"access-control-allow-headers", headers))
        found.append((b"access-control-max-age", b"%d" % self.max_age))
        return tuple(found)

    def _origin_headers(self, origin: bytes) -> list[Header]:
        if self.any_origin and not self.credentials:
            return [(b"access-control-allow-origin", b"*")]
        found = [(b"access-control-allow-origin", origin),
                 (b"vary", b"Origin")]  # the answer differs per origin: caches must know
        if self.credentials:
            found.append((b"access-control-allow-credentials", b"true"))
        return found

    def _listed(self, allowed: tuple[bytes, ...], *, requested: bytes | None) -> bytes | None:
        """Access-Control-Allow-Methods' or -Headers' value: the list as configured,
        `*`, or (a `*` with credentials) what the preflight asked for; None to omit."""
        if allowed != WILDCARD:
            return b", ".join(allowed) if allowed else None
        if not self.credentials:
            return b"*"
        requested = (requested or b"").strip()
        return requested or None


REDIRECT_VARIABLES: Final = ("$request_uri", "$uri", "$is_args", "$args", "$scheme",
                              "$http_host", "$host")
# What external authentication's URLs and cache key may also use.
AUTH_VARIABLES: Final = (*REDIRECT_VARIABLES, "$escaped_request_uri", "$remote_addr",
                         "$request_method")


def expand(template: str, values: dict[str, bytes]) -> bytes:
    """nginx's variables in `template` replaced by `values` (longest names first, so
    `$request_uri` is not read as `$request` + `_uri`); `$http_<name>` are request headers
    and must be in `values` too (absent ones as b"")."""
    result = template.encode()
    for name in sorted(values, key=len, reverse=True):
        result = result.replace(name.encode(), values[name])
    return _ABSENT_HEADER.sub(b"", result)


_ABSENT_HEADER: Final = re.compile(rb"\$http_[a-z0-9_]+")  # a header the request lacks: empty


@dataclass(frozen=True, kw_only=True, slots=True)
class ExternalAuth:
    """ingress-nginx's auth-url: a subrequest to `url` decides each request.

    2xx lets it through (with `response_headers` of the answer copied onto the
    request to the backend, replacing what the client sent under those names);
    401 goes back to the client (or, with `signin`, a 302 to it with the
    original URL in `signin_redirect_param`); 403 goes back; anything else,
    or no answer, is 500. `cache_key` (nginx variables) caches the outcomes
    whose status is in `cache_statuses` for `cache_seconds`.
    """

    zone: str  # the source ("namespace/name"): cached outcomes are kept per zone
    url: str
    method: bytes = b"GET"
    signin: str | None = None
    signin_redirect_param: str = "rd"
    response_headers: tuple[bytes, ...] = ()  # lowercase names
    request_redirect: str | None = None  # X-Auth-Request-Redirect (default: $request_uri)
    always_set_cookie: bool = False
    cache_key: str | None = None
    cache_statuses: frozenset[int] = frozenset({200, 202, 401})
    cache_seconds: float = 300.0


@dataclass(frozen=True, kw_only=True, slots=True)
class Redirect:
    """Answer with a redirect instead of the backend (permanent-redirect, temporal-redirect,
    app-root, from-to-www-redirect).

    `target` may hold nginx's variables (REDIRECT_VARIABLES), filled in per
    request; `only_root` limits it to the path `/` (app-root).
    """

    code: int
    target: str
    only_root: bool = False

    def location(self, *, scheme: bytes, http_host: bytes, host: str, target: bytes) -> bytes:
        """The Location for a request (`target` is its path and query as received)."""
        if "$" not in self.target:
            return self.target.encode()
        path, question, query = target.partition(b"?")
        return expand(self.target, {
            "$request_uri": target, "$http_host": http_host, "$is_args": question,
            "$scheme": scheme, "$args": query, "$host": host.encode(), "$uri": path,
        })


@dataclass(frozen=True, kw_only=True, slots=True)
class ClientCertificates:
    """ingress-nginx's auth-tls-*: client certificates issued by `issuers` (depth 1).

    The handshake for the route's host asks for a certificate and OpenSSL checks
    it against `ca_pem` and the client's possession of its key; `check` then
    holds each request to this route's own issuers (a connection may have been
    made for another host), the validity period and `match_cn`.
    """

    ca_pem: bytes
    issuers: tuple[x509.Certificate, ...]
    required: bool = True  # auth-tls-verify-client: on; optional lets requests without one in
    pass_certificate: bool = False  # the PEM, URL-encoded, in ssl-client-cert upstream
    match_cn: re.Pattern[str] | None = None
    error_page: str | None = None  # a 302 there instead of 403

    def check(
        self, der: bytes | None, *, now: datetime.datetime
    ) -> tuple[bool, tuple[Header, ...]]:
        """(allowed, the ssl-client-* headers for the backend)."""
        if der is None:
            return not self.required, ((b"ssl-client-verify", b"NONE"),)
        try:
            leaf = x509.load_der_x509_certificate(der)
        except ValueError:
            return False, ()
        if not any(_issued_by(leaf, issuer) for issuer in self.issuers) or not (
            leaf.not_valid_before_utc <= now <= leaf.not_valid_after_utc
        ):
            return False, ()
        subject = leaf.subject.rfc4514_string()
        if self.match_cn is not None and not self.match_cn.search(subject):
            return False, ()
        headers: list[Header] = [
            (b"ssl-client-verify", b"SUCCESS"),
            (b"ssl-client-subject-dn", subject.encode()),
            (b"ssl-client-issuer-dn", leaf.issuer.rfc4514_string().encode()),
        ]
        if self.pass_certificate:
            pem = leaf.public_bytes(serialization.Encoding.PEM)
            headers.append((b"ssl-client-cert", urllib.parse.quote(pem, safe="").encode()))
        return True, tuple(headers)


CLIENT_CERTIFICATE_HEADERS: Final = frozenset({
    b"ssl-client-verify", b"ssl-client-subject-dn", b"ssl-client-issuer-dn", b"ssl-client-cert"})


def _issued_by(leaf: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        leaf.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


@dataclass(frozen=True, kw_only=True, slots=True)
class Affinity:
    """ingress-nginx's `affinity: cookie` and its session-cookie-* settings.

    `path` None means the route's path (`/` for a regular-expression one);
    `expires` is the cookie's lifetime in seconds (None: a session cookie).
    """

    cookie_name: str = "INGRESSCOOKIE"
    path: str | None = None
    domain: str | None = None
    expires: int | None = None
    samesite: str | None = None
    secure: bool = False


@dataclass(frozen=True, kw_only=True, slots=True)
class Balancing:
    """Which endpoint a request goes to first, when not round-robin (ingress-nginx's
    upstream-hash-by, which wins, and load-balance: ewma).

    `hash_by` is an nginx variable template (`$request_uri`, `$remote_addr`,
    `$host`, `$uri`, `$args`, `$http_<name>`, `$cookie_<name>`, `$arg_<name>`):
    requests whose key is the same go to the same endpoint while it is ready,
    and an endpoint's leaving moves only its own keys (rendezvous hashing, as
    consistent as ingress-nginx's chash). `ewma`: the endpoint with the lowest
    peak-weighted moving average of response-header latency.
    """

    hash_by: str | None = None
    ewma: bool = False


NEXT_UPSTREAM_CONDITIONS: Final = ("error", "timeout", "invalid_header", "http_500",
                                   "http_502", "http_503", "http_504", "http_403", "http_404",
                                   "http_429", "non_idempotent", "off")
IDEMPOTENT_METHODS: Final = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE",
                                       b"TRACE"})


@dataclass(frozen=True, kw_only=True, slots=True)
class NextUpstream:
    """ingress-nginx's proxy-next-upstream(-tries, -timeout): when a request is passed to
    the route's next endpoint instead of answering with what the first one did.

    `error`: the endpoint refused the connection, reset it or sent an invalid
    response before its head; `timeout`: connecting took longer than
    proxy-connect-timeout, or the response head longer than proxy-read-timeout; `statuses`: the
    endpoint answered one of these. `tries` bounds the endpoints tried (0: all),
    `timeout_seconds` the time spent trying (0: no bound). As nginx, only before
    anything went to the client, and a request whose method is not idempotent
    (POST, PATCH, LOCK) only with `non_idempotent`. certctl streams request bodies
    instead of buffering them, so a request whose body already went to an endpoint
    is retried only on a connection error that happened before it was sent.
    """

    error: bool = True
    timeout: bool = True
    statuses: frozenset[int] = frozenset()
    non_idempotent: bool = False
    tries: int = 3
    timeout_seconds: float = 0.0

    def allows(self, *, method: bytes, tried: int, elapsed: float) -> bool:
        """Whether one more endpoint may be tried after `tried` of them."""
        if self.tries and tried >= self.tries:
            return False
        if self.timeout_seconds and elapsed >= self.timeout_seconds:
            return False
        return self.non_idempotent or method in IDEMPOTENT_METHODS


NO_NEXT_UPSTREAM: Final = NextUpstream(error=False, timeout=False, tries=1)


@dataclass(frozen=True, kw_only=True, slots=True)
class ErrorPages:
    """ingress-nginx's custom-http-errors and default-backend.

    `service` (default-backend: a Service of the Ingress's namespace, its first
    port) takes the route's requests while the route's own Service has no ready
    endpoints. A response whose status is in `codes` is replaced by the answer
    of `service` (or, without one, certctl's own answer with that status, as
    ingress-nginx's built-in default backend) to the request sent again with
    path `/` and X-Code and the other headers ingress-nginx sends; that answer's
    status and body go to the client unchanged, as nginx's `error_page = ...`
    (which takes the data plane's own 502, no endpoint connecting, too).
    Only requests without a body: certctl streams bodies and keeps no copy to
    send again. `service_key` is the annotation that named the Service.
    """

    codes: frozenset[int] = frozenset()
    service: str | None = None
    service_key: str = ""


@dataclass(frozen=True, kw_only=True, slots=True)
class RouteOptions:
    """How requests matched by one source's routes are served.

    `read_timeout` / `connect_timeout` None means the data plane's defaults;
    `body_size_limit` None means unlimited; `hsts_max_age` None means no
    Strict-Transport-Security header; `refusal` None means served.
    """

    ssl_redirect: bool = True
    force_ssl_redirect: bool = False
    hsts_max_age: int | None = None
    hsts_include_subdomains: bool = True
    body_size_limit: int | None = None
    read_timeout: float | None = None
    connect_timeout: float | None = None
    backend_tls: bool = False
    # HTTP/2 to the backend (backend-protocol GRPC, GRPCS, H2C): cleartext with prior
    # knowledge, or TLS with ALPN h2 beside `backend_tls`; False: HTTP/1.1.
    backend_h2: bool = False
    rewrite_target: str | None = None
    # Who may pass (source ranges, basic auth); None lets every client through.
    access: access.AccessRules | None = None
    limits: LimitRules | None = None  # requests per client; None: unlimited
    cors: CorsPolicy | None = None  # cross-origin requests; None: passed through untouched
    redirect: Redirect | None = None  # answer every request with this redirect
    external_auth: ExternalAuth | None = None  # auth-url: a subrequest decides each request
    client_certificates: ClientCertificates | None = None  # auth-tls-*
    upstream_vhost: bytes | None = None  # the Host sent to the backend (X-Forwarded-Host keeps it)
    request_headers: tuple[Header, ...] = ()  # set on requests to the backend (x-forwarded-prefix)
    affinity: Affinity | None = None  # sticky sessions by cookie
    balancing: Balancing | None = None  # None: round-robin
    # proxy-next-upstream*; None: every endpoint is tried until one accepts the connection
    next_upstream: NextUpstream | None = None
    error_pages: ErrorPages | None = None  # custom-http-errors, default-backend
    # Why the Ingress is not served (503), when it carries an access-restricting
    # annotation certctl does not enforce (certctl.api.nginx_annotations) or
    # cannot read.
    refusal: str | None = None

    # The Strict-Transport-Security line HTTPS responses carry (from the two hsts_ fields),
    # made once here rather than by every response.
    hsts_line: bytes | None = field(init=False, default=None, repr=False, compare=False)
    # Every field but those in PLAIN_FIELDS holds its default: a request's path skips the
    # checks of the others (dispatch.decide, the connections' RouteMatch.plain).
    plain: bool = field(init=False, default=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.hsts_max_age is not None:
            value = b"max-age=%d" % self.hsts_max_age
            if self.hsts_include_subdomains:
                value += b"; includeSubDomains"
            object.__setattr__(self, "hsts_line",
                               b"strict-transport-security: " + value + b"\r\n")
        object.__setattr__(self, "plain", _checked_values(self) == _CHECKED_DEFAULTS)


# What the path of a request to a `plain` route still reads itself: the redirect to HTTPS,
# HSTS, the timeouts, the backend's protocol, the error pages (RouteMatch.errors). Named
# here rather than the fields it skips, so that a field added later is checked on every
# request until it is added here.
PLAIN_FIELDS: Final = frozenset({
    "ssl_redirect", "force_ssl_redirect", "hsts_max_age", "hsts_include_subdomains",
    "read_timeout", "connect_timeout", "backend_tls", "backend_h2", "error_pages",
})
_CHECKED: Final = tuple(checked for checked in fields(RouteOptions)
                       if checked.init and checked.name not in PLAIN_FIELDS)
_checked_values: Final = operator.attrgetter(*(checked.name for checked in _CHECKED))
# (A field with a default_factory would have MISSING here: never plain, the safe side.)
_CHECKED_DEFAULTS: Final = tuple(checked.default for checked in _CHECKED)

DEFAULT_OPTIONS = RouteOptions()


@dataclass(frozen=True, kw_only=True, slots=True)
class CanarySettings:
    """When a request goes to the canary's backend instead of the main one.

    Precedence as in ingress-nginx: the header, then the cookie, then the
    weight. A header equal to `header_value` (or matching `header_pattern`
    when no value is set, or "always" when neither is) selects the canary and
    "never" the main backend; other values fall through to the cookie and the
    weight.
    """

    weight: int = 0
    weight_total: int = 100
    header: bytes | None = None  # lowercased header name
    header_value: bytes | None = None
    header_pattern: re.Pattern[bytes] | None = None
    cookie: bytes | None = None
