"""The route table: which backend answers a (host, path).

Pure: `RouteTable.build` turns a route set (`certctl.routes.model`, compiled
by a route source such as `certctl.routes.ingress`) plus Services and
EndpointSlices into an immutable table that the server swaps in whole;
`RouteTable.updated` makes the next table from the previous one and the
hosts whose routes changed (each host is indexed from its own routes alone,
so a table updated host by host equals one built whole); and
`RouteTable.match` is a few dict lookups per request. Everything a request
needs (the backend and its ready endpoint addresses) is resolved at build
time, so matching allocates nothing but the path candidates it probes.

Matching (DESIGN.md, "Semantics to honour"):

- Exact paths match the request path exactly, case-sensitive.
- Regular-expression paths (a route's `pattern`; ingress-nginx's use-regex)
  are tried after Exact ones and before Prefix ones, longest path first; the
  first that matches wins (nginx's `location ~*`).
- Prefix paths match element-wise: `/foo` matches `/foo`, `/foo/`,
  `/foo/bar`, not `/foobar`; a trailing slash in the rule is ignored; `/`
  matches every path.
- The longest matching path wins; on equal length Exact beats Prefix.
- Hosts: an exact host beats a wildcard, and `*.foo.com` matches exactly one
  extra label. Routes without a host apply to every host. Route sets are
  tried from the most specific host to the least (exact, wildcard, hostless),
  and a request that matches no path in one falls through to the next.
- No route matches: the default route of the matched host (exact, then
  wildcard), then the set's first default; else no match (404).
- Of two routes with the same host, path and match type, the first in the
  set wins.
- The path matched is the raw request path without the query string, not
  percent-decoded (as ingress-nginx does).
- HTTPRoute rules may also ask for a method, headers, query parameters or a
  scheme (`model.RequestConditions`): routes with the same host, path and
  match type form a chain in the set's order (the route source orders them
  by the Gateway API's precedence) and the first whose conditions hold
  wins; when none holds, matching goes on with the next shorter path. Only
  a table with such routes (`conditional`) is matched through
  `match_request`; Ingress-only tables keep the plain `match`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from certctl.api import resources
from certctl.routes import model
from certctl.routes import options as route_options

Upstream = tuple[str, int]
BAD_ANNOTATION = "BadAnnotation"  # as certctl.routes.ingress reports unreadable annotations


@dataclass(frozen=True, kw_only=True, slots=True)
class Canary:
    """The canary Ingress's route attached to a main route, and when to take it."""

    settings: route_options.CanarySettings
    route: RouteMatch


@dataclass(frozen=True, kw_only=True, slots=True)
class ErrorRoute:
    """custom-http-errors resolved (`route_options.ErrorPages`): a response with one of
    `codes` is replaced by `route`'s answer (None: certctl answers the code itself), asked
    with `headers` (X-Namespace, X-Ingress-Name, X-Service-Name, X-Service-Port) and the
    per-request ones (`dispatch.error_page_headers`)."""

    codes: frozenset[int]
    route: RouteMatch | None
    headers: tuple[route_options.Header, ...]


@dataclass(frozen=True, kw_only=True, slots=True)
class RouteMatch:
    """Where a request goes: `upstreams` empty means no ready endpoints (503).

    `host` and `path` are the route's as written (`host` "" for routes without
    a host and for default routes, `path` "" for default routes): metrics
    label by the route rather than by whatever Host a client sent, and
    rewrite-target replaces the matched `path`.
    """

    source: resources.ObjectKey  # the object the route came from (an Ingress)
    backend: model.Backend
    upstreams: tuple[Upstream, ...]
    host: str = ""
    path: str = ""
    exact: bool = False
    options: route_options.RouteOptions = route_options.DEFAULT_OPTIONS
    canary: Canary | None = None
    service: str = ""  # "namespace/name" of the backend Service, the metrics label
    pattern: re.Pattern[str] | None = None  # a regular-expression path: rewrite-target's groups
    # HTTPRoute rules only: what else must hold, the next route of the same path when it
    # does not, the filters, and the weighted split (cumulative weight, target; None: 500).
    conditions: model.RequestConditions | None = None
    otherwise: RouteMatch | None = None
    filters: model.GatewayFilters | None = None
    split: tuple[tuple[int, RouteMatch | None], ...] = ()
    errors: ErrorRoute | None = None  # custom-http-errors
    # What every request reads of the (interpreted) options, copied to be read natively.
    plain: bool = field(init=False, default=False, repr=False, compare=False)
    backend_h2: bool = field(init=False, default=False, repr=False, compare=False)
    backend_tls: bool = field(init=False, default=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        options = self.options
        object.__setattr__(self, "plain", options.plain)
        object.__setattr__(self, "backend_h2", options.backend_h2)
        object.__setattr__(self, "backend_tls", options.backend_tls)


def admits(
    conditions: model.RequestConditions,
    *,
    method: bytes,
    scheme: bytes,
    header: Callable[[bytes], bytes | None],
    query: bytes,
) -> bool:
    """Whether a request meets a route's conditions (see `model.RequestConditions`)."""
    if conditions.scheme is not None and conditions.scheme != scheme:
        return False
    if conditions.method is not None and conditions.method != method:
        return False
    for name, value in conditions.headers:
        if header(name) != value:
            return False
    if conditions.query:
        found: dict[bytes, bytes] = {}
        for pair in query.split(b"&"):
            key, _, item = pair.partition(b"=")
            found.setdefault(key, item)
        for key, value in conditions.query:
            if found.get(key) != value:
                return False
    return True


class Request:
    """What conditional routes look at besides host and path.

    A plain class, not a frozen dataclass as the route types: one is made by every
    request to a table with conditions, and compiled, a frozen dataclass is built through
    its interpreted `__init__` from a dict of the keywords (2.6 % of the CPU a request
    through an HTTPRoute, bench B4)."""

    __slots__ = ("header", "method", "query", "scheme")

    def __init__(self, *, method: bytes, scheme: bytes,
                 header: Callable[[bytes], bytes | None], query: bytes) -> None:
        self.method = method
        self.scheme = scheme
        self.header = header  # by lowercase name
        self.query = query  # raw, without the "?"


@dataclass(kw_only=True, slots=True)
class _HostRoutes:
    """Merged rules for one host pattern; Prefix keys have no trailing slash."""

    exact: dict[str, RouteMatch] = field(default_factory=dict)
    prefix: dict[str, RouteMatch] = field(default_factory=dict)
    regex: dict[str, RouteMatch] = field(default_factory=dict)  # by path; ordered at the end
    default: RouteMatch | None = None
    # What building it found: the CA bundle its handshakes ask client certificates for,
    # whether a route has conditions, and backend problems (a missing default-backend).
    client_ca: bytes | None = None
    conditional: bool = False
    problems: tuple[model.SourceProblem, ...] = ()

    def match(self, path: str, request: Request | None = None) -> RouteMatch | None:
        """Longest match: the whole path as Exact first, then the regular expressions in
        their order, then Prefix keys from long to short; with `request`, each candidate
        path's chain is tried for the first route whose conditions hold, and a path whose
        chain has none falls through to the next.

        An Exact hit on the whole path is at least as long as any Prefix hit,
        and beats a Prefix rule of equal length, so it is checked first. The
        Prefix candidates are the path itself and the path cut before each
        `/`, down to the empty string (the key of the rule `/`).
        """
        if self.exact:
            hit = self.exact.get(path)
            if hit is not None:
                found = _admitted(hit, request)
                if found is not None:
                    return found
        if self.regex:
            for match in self.regex.values():
                pattern = match.pattern
                if pattern is not None and pattern.match(path) is not None:
                    found = _admitted(match, request)
                    if found is not None:
                        return found
        prefix = self.prefix
        if not prefix:
            return None
        end = len(path)
        while end >= 0:
            hit = prefix.get(path[:end])
            if hit is not None:
                found = _admitted(hit, request)
                if found is not None:
                    return found
            if end == 0:
                return None
            end = path.rfind("/", 0, end)
        return None


def _admitted(chain: RouteMatch, request: Request | None) -> RouteMatch | None:
    """The first route of a path's chain whose conditions the request meets; without a
    request (a table without conditional routes) the chain's first."""
    if request is None:
        return chain
    current: RouteMatch | None = chain
    while current is not None:
        conditions = current.conditions
        if conditions is None or admits(conditions, method=request.method,
                                        scheme=request.scheme, header=request.header,
                                        query=request.query):
            return current
        current = current.otherwise
    return None


def normalize_host(raw: str) -> str:
    """A Host header (or SNI name) as routing keys it: lowercase, no port, no trailing dot.

    IPv6 literals keep their brackets (`[::1]:8080` -> `[::1]`), so they can
    never be confused with a DNS name.
    """
    host = raw.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        return host[: end + 1] if end >= 0 else host
    colon = host.rfind(":")
    if colon >= 0:
        host = host[:colon]
    return host.rstrip(".")


class RouteTable:
    """An immutable routing table: `build` indexes a whole route set, `updated` a copy with
    some hosts indexed again (the others shared), so one Ingress's change costs its hosts."""

    __slots__ = ("_default", "_default_problems", "_exact_hosts", "_hostless",
                 "_source_problems", "_wildcard_hosts", "client_certificates", "conditional",
                 "served")

    def __init__(
        self,
        *,
        exact_hosts: dict[str, _HostRoutes],
        wildcard_hosts: dict[str, _HostRoutes],
        hostless: _HostRoutes,
        default: RouteMatch | None,
        served: frozenset[resources.ObjectKey] = frozenset(),
        problems: tuple[model.SourceProblem, ...] = (),
        default_problems: tuple[model.SourceProblem, ...] = (),
        client_certificates: dict[str, bytes] | None = None,
    ) -> None:
        self._exact_hosts = exact_hosts
        self._wildcard_hosts = wildcard_hosts  # keyed by the suffix after "*."
        self._hostless = hostless
        self._default = default
        self._default_problems = default_problems  # resolving `default` found them
        self.served = served  # the objects this data plane serves (for their status)
        self._source_problems = problems  # the route sources' own
        # Host -> the CA bundle its handshakes ask client certificates for (auth-tls-secret).
        self.client_certificates = client_certificates or {}
        # Some route has conditions (HTTPRoute matches): requests go through match_request.
        self.conditional = any(host_routes.conditional for host_routes in self._all_hosts())

    @property
    def problems(self) -> tuple[model.SourceProblem, ...]:
        """What to tell the sources' owners: the route set's problems, then the backends'."""
        return self._source_problems + tuple(dict.fromkeys(
            (*(p for host_routes in self._all_hosts() for p in host_routes.problems),
             *self._default_problems)))

    def _all_hosts(self) -> list[_HostRoutes]:
        return [*self._exact_hosts.values(), *self._wildcard_hosts.values(), self._hostless]

    @classmethod
    def empty(cls) -> RouteTable:
        """A table that matches nothing: what the data plane serves before the first build."""
        return cls(exact_hosts={}, wildcard_hosts={}, hostless=_HostRoutes(), default=None)

    @classmethod
    def build(
        cls,
        *,
        routes: model.RouteSet,
        services: Iterable[resources.Service],
        endpoint_slices: Iterable[resources.EndpointSlice],
    ) -> RouteTable:
        """Index a route set. A backend whose Service or port does not exist resolves
        to no upstreams (503), as ingress-nginx does, rather than dropping the route."""
        by_host: dict[str, list[model.Route]] = {}
        for route in routes.routes:
            by_host.setdefault(route.host.lower(), []).append(route)
        defaults: dict[str, model.DefaultRoute] = {}
        for fallback in routes.defaults:
            for host in fallback.hosts:
                defaults.setdefault(host.lower(), fallback)
        return cls.empty().updated(
            hosts={host: model.HostRoutes(routes=tuple(by_host.get(host, ())),
                                          default=defaults.get(host))
                   for host in by_host.keys() | defaults.keys()},
            default=routes.defaults[0] if routes.defaults else None,
            served=routes.served, problems=routes.problems,
            backends=Backends(services=services, endpoint_slices=endpoint_slices))

    def updated(
        self,
        *,
        hosts: Mapping[str, model.HostRoutes],
        default: model.DefaultRoute | None,
        served: frozenset[resources.ObjectKey],
        problems: tuple[model.SourceProblem, ...],
        backends: Backends,
    ) -> RouteTable:
        """A copy with each of `hosts` (lowercase: "" for routes without a host, `*.` for
        wildcards) indexed again from all of its routes (every source's, in precedence
        order), and the set-wide parts replaced: the catch-all `default`, what is `served`,
        the sources' `problems`. The other hosts are shared with this table, so `backends`
        must resolve as the ones this table was built with did (else `build` anew)."""
        exact_hosts = dict(self._exact_hosts)
        wildcard_hosts = dict(self._wildcard_hosts)
        hostless = self._hostless
        client_certificates = dict(self.client_certificates)
        for host, found in hosts.items():
            host_routes = _indexed(found, backends)
            client_certificates.pop(host, None)
            if host_routes.client_ca is not None:
                client_certificates[host] = host_routes.client_ca
            empty = not (host_routes.exact or host_routes.prefix or host_routes.regex
                         or host_routes.default or host_routes.problems)
            if not host:
                hostless = host_routes
            elif host.startswith("*."):
                if empty:
                    wildcard_hosts.pop(host[2:], None)
                else:
                    wildcard_hosts[host[2:]] = host_routes
            elif empty:
                exact_hosts.pop(host, None)
            else:
                exact_hosts[host] = host_routes
        backends.problems.clear()
        default_match = None if default is None else backends.route(
            source=default.source, backend=default.backend, options=default.options)
        return RouteTable(
            exact_hosts=exact_hosts,
            wildcard_hosts=wildcard_hosts,
            hostless=hostless,
            default=default_match,
            served=served,
            problems=problems,
            default_problems=tuple(backends.problems),
            client_certificates=client_certificates,
        )

    def match_request(
        self,
        *,
        host: str,
        path: str,
        method: bytes,
        scheme: bytes,
        header: Callable[[bytes], bytes | None],
        query: bytes,
    ) -> RouteMatch | None:
        """`match` for a table with conditional routes (`conditional`): the request's
        method, scheme, headers (`header(lowercase name)`) and raw query count too."""
        return self.match(host=host, path=path, request=Request(
            method=method, scheme=scheme, header=header, query=query))

    def match(self, *, host: str, path: str, request: Request | None = None) -> RouteMatch | None:
        """The route for a request, or None (404).

        `host` must already be normalized (see `normalize_host`); `path` is
        the raw path without the query string; `request` only for a table with
        conditional routes (see `match_request`).
        """
        exact = self._exact_hosts.get(host)
        if exact is not None:
            hit = exact.match(path, request)
            if hit is not None:
                return hit
        wildcard = None
        dot = host.find(".")
        if dot > 0:
            wildcard = self._wildcard_hosts.get(host[dot + 1 :])
            if wildcard is not None:
                hit = wildcard.match(path, request)
                if hit is not None:
                    return hit
        hit = self._hostless.match(path, request)
        if hit is not None:
            return hit
        if exact is not None and exact.default is not None:
            return exact.default
        if wildcard is not None and wildcard.default is not None:
            return wildcard.default
        return self._default


def _indexed(found: model.HostRoutes, backends: Backends) -> _HostRoutes:
    """One host's routes indexed by path, their backends resolved."""
    host_routes = _HostRoutes()
    backends.problems.clear()
    # (id of the dict, key) -> the routes of one path, in precedence order.
    chains: dict[tuple[int, str], list[RouteMatch]] = {}
    for route in found.routes:
        required = route.options.client_certificates
        if required is not None and route.host and host_routes.client_ca is None:
            host_routes.client_ca = required.ca_pem
        if route.pattern is not None:
            found_in, key = host_routes.regex, route.path
        elif route.exact:
            found_in, key = host_routes.exact, route.path
        else:
            found_in, key = host_routes.prefix, route.path.rstrip("/")
        if key in found_in:
            head = found_in[key]
            if head.conditions is not None:  # may not hold: the next one may
                chains.setdefault((id(found_in), key), [head]).append(
                    backends.gateway_route(route))
            continue
        if route.conditions is not None or route.filters is not None or route.backends:
            found_in[key] = backends.gateway_route(route)
            host_routes.conditional = host_routes.conditional or route.conditions is not None
            continue
        match = backends.route(source=route.source, backend=route.backend,
                               options=route.options, host=route.host, path=route.path,
                               exact=route.exact)
        if route.canary is not None:
            target = backends.route(source=route.canary.source, backend=route.canary.backend,
                                    options=route.options, host=route.host,
                                    path=route.path, exact=route.exact)
            match = dataclasses.replace(match, canary=Canary(settings=route.canary.settings,
                                                             route=target))
        if route.pattern is not None:
            match = dataclasses.replace(match, pattern=route.pattern)
        found_in[key] = match
    for found_in in (host_routes.exact, host_routes.prefix, host_routes.regex):
        for key in found_in:
            chain = chains.get((id(found_in), key))
            if chain is not None:
                found_in[key] = _linked(chain)
    if host_routes.regex:  # ingress-nginx orders its regex locations longest first
        host_routes.regex = dict(sorted(host_routes.regex.items(),
                                        key=lambda item: -len(item[0])))
    if found.default is not None:
        host_routes.default = backends.route(source=found.default.source,
                                             backend=found.default.backend,
                                             options=found.default.options)
    host_routes.problems = tuple(backends.problems)
    return host_routes


def _linked(chain: list[RouteMatch]) -> RouteMatch:
    """The routes of one path as a chain: each one's `otherwise` is the next."""
    following: RouteMatch | None = None
    for match in reversed(chain):
        following = dataclasses.replace(match, otherwise=following)
    assert following is not None
    return following


class Backends:
    """Resolves backends to ready endpoint addresses, once per Service port: one per set of
    Services and EndpointSlices, kept while they do not change."""

    def __init__(
        self,
        *,
        services: Iterable[resources.Service],
        endpoint_slices: Iterable[resources.EndpointSlice],
    ) -> None:
        self._services = {(s.namespace, s.name): s for s in services}
        self._slices: dict[tuple[str, str], list[resources.EndpointSlice]] = {}
        for eps in sorted(endpoint_slices, key=lambda s: (s.namespace, s.name)):
            self._slices.setdefault((eps.namespace, eps.service_name), []).append(eps)
        self._cache: dict[model.Backend, tuple[Upstream, ...]] = {}
        self.problems: dict[model.SourceProblem, None] = {}  # in order, once each

    def route(
        self,
        *,
        source: resources.ObjectKey,
        backend: model.Backend,
        options: route_options.RouteOptions,
        host: str = "",
        path: str = "",
        exact: bool = False,
    ) -> RouteMatch:
        upstreams = self._cache.get(backend)
        if upstreams is None:
            upstreams = self._upstreams(backend)
            self._cache[backend] = upstreams
        match = RouteMatch(
            source=source,
            backend=backend,
            upstreams=upstreams,
            host=host,
            path=path,
            exact=exact,
            options=options,
            service=f"{backend.namespace}/{backend.service}",
        )
        if options.error_pages is None:
            return match
        return self._with_error_pages(match, options.error_pages)

    def _with_error_pages(
        self, match: RouteMatch, pages: route_options.ErrorPages
    ) -> RouteMatch:
        """default-backend: its endpoints when the route's Service has none (as ingress-nginx
        does); custom-http-errors: the route that answers the listed codes. A default-backend
        Service that does not exist is a problem, and the route is served without it."""
        source = match.source
        namespace = source.namespace or ""
        fallback: RouteMatch | None = None
        if pages.service is not None:
            service = self._services.get((namespace, pages.service))
            if service is None or not service.ports:
                self.problems[model.SourceProblem(
                    source=source, reason=BAD_ANNOTATION,
                    message=f"{pages.service_key}: Service {namespace}/{pages.service} "
                            f"{'not found' if service is None else 'has no ports'}; served "
                            "without a default backend")] = None
            else:
                options = match.options
                # The error location's own settings: nothing of the route's but its timeouts
                # and HSTS (ingress-nginx's named location), and no error pages of its own.
                fallback = self.route(
                    source=source,
                    backend=model.Backend(namespace=namespace, service=pages.service,
                                          port_number=service.ports[0].port),
                    options=route_options.RouteOptions(
                        read_timeout=options.read_timeout,
                        connect_timeout=options.connect_timeout,
                        hsts_max_age=options.hsts_max_age,
                        hsts_include_subdomains=options.hsts_include_subdomains),
                    host=match.host, path=match.path, exact=match.exact)
        if not match.upstreams and fallback is not None:
            match = dataclasses.replace(match, upstreams=fallback.upstreams)
        if not pages.codes:
            return match
        backend = match.backend
        port = (str(backend.port_number) if backend.port_number is not None
                else backend.port_name or "")
        return dataclasses.replace(match, errors=ErrorRoute(
            codes=pages.codes, route=fallback, headers=(
                (b"x-namespace", namespace.encode()),
                (b"x-ingress-name", source.name.encode()),
                (b"x-service-name", backend.service.encode()),
                (b"x-service-port", port.encode()))))

    def gateway_route(self, route: model.Route) -> RouteMatch:
        """An HTTPRoute rule's match: its conditions and filters, and its weighted split
        when it has more than one backend or an invalid one."""
        backends = route.backends
        first = next((b.backend for b in backends if b.backend is not None and b.weight),
                     route.backend)
        match = self.route(source=route.source, backend=first, options=route.options,
                           host=route.host, path=route.path, exact=route.exact)
        split: list[tuple[int, RouteMatch | None]] = []
        if len(backends) > 1 or any(b.backend is None for b in backends):
            total = 0
            for weighted in backends:
                if not weighted.weight:
                    continue
                total += weighted.weight
                split.append((total, None if weighted.backend is None else self.route(
                    source=route.source, backend=weighted.backend, options=route.options,
                    host=route.host, path=route.path, exact=route.exact)))
            if not split:  # every weight 0: no backend takes requests (500)
                split.append((1, None))
        return dataclasses.replace(match, conditions=route.conditions, filters=route.filters,
                                   split=tuple(split), pattern=route.pattern)

    def _upstreams(self, backend: model.Backend) -> tuple[Upstream, ...]:
        """Ready addresses of the Service port the backend names, in slice order, deduplicated.

        EndpointSlice ports carry the *Service* port's name and the resolved
        target port number, so the Service port is found by number or name and
        its slice port by name; a slice without that name (hand-written
        manifests) is matched by the numeric targetPort instead.
        """
        service = self._services.get((backend.namespace, backend.service))
        if service is None:
            return ()
        service_port = next(
            (
                p
                for p in service.ports
                if (backend.port_number is not None and p.port == backend.port_number)
                or (backend.port_name is not None and p.name == backend.port_name)
            ),
            None,
        )
        if service_port is None:
            return ()
        want_name = service_port.name or ""
        target = service_port.port if service_port.target_port is None else service_port.target_port
        upstreams: dict[Upstream, None] = {}
        for eps in self._slices.get((backend.namespace, backend.service), ()):
            port = next((p.port for p in eps.ports if (p.name or "") == want_name), None)
            if port is None and isinstance(target, int):
                port = next((p.port for p in eps.ports if p.port == target), None)
            if port is None:
                continue
            for endpoint in eps.endpoints:
                if endpoint.ready:
                    for address in endpoint.addresses:
                        upstreams[(address, port)] = None
        return tuple(upstreams)
