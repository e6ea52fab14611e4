"""Ingress routing: which backend answers a (host, path), per the Ingress spec.

Pure: `RouteTable.build` turns Ingresses, Services, EndpointSlices and
IngressClasses into an immutable table that the server swaps in whole, and
`RouteTable.match` is a few dict lookups per request. Everything a request
needs (the backend and its ready endpoint addresses) is resolved at build time,
so matching allocates nothing but the path candidates it probes.

Semantics (DESIGN.md, "Ingress semantics the data plane must honour"):

- `Exact` paths match the request path exactly, case-sensitive.
- `Prefix` (and `ImplementationSpecific`, which we define as `Prefix`) match
  element-wise: `/foo` matches `/foo`, `/foo/`, `/foo/bar`, not `/foobar`; a
  trailing slash in the rule is ignored; `/` matches every path.
- The longest matching path wins; on equal length `Exact` beats `Prefix`.
- Hosts: an exact host beats a wildcard, and `*.foo.com` matches exactly one
  extra label. Rules without a host apply to every host. Rule sets are tried
  from the most specific host to the least (exact, wildcard, hostless), and a
  request that matches no path in one falls through to the next.
- No rule matches: a `defaultBackend`, preferring the oldest Ingress that has
  rules for the matched host (exact, then wildcard), then the oldest served
  Ingress with one at all; else no match (404).
- Rules for one host are merged across Ingresses; when two claim the same
  host, path and match type, the oldest Ingress wins (creation timestamp, then
  namespace/name; an Ingress without a timestamp counts as newest).
- The path matched is the raw request path without the query string, not
  percent-decoded (as ingress-nginx does).
- A canary Ingress (`canary: "true"`, see `route_options`) adds no routes of
  its own: each of its rules attaches to the served route with the same host,
  path and match type, which then splits traffic by header, cookie or
  weight. A canary rule with no such route is ignored, as in ingress-nginx.
- An Ingress with an access-restricting annotation certctl does not enforce
  (`nginx_annotations`) keeps its routes, so no other Ingress's rule takes
  its paths over, but they answer 503 (`RouteOptions.refusal`), and so does
  a canary attached to them; `enforce_access_annotations=False` is the
  operator's explicit opt-out.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Iterable
from dataclasses import dataclass, field

from certctl.api import nginx_annotations, resources
from certctl.dataplane import access, route_options

Upstream = tuple[str, int]


@dataclass(frozen=True, kw_only=True, slots=True)
class IngressProblem:
    """Something to tell the owner of an Ingress: an Event's reason and message."""

    ingress: resources.ObjectKey
    reason: str
    message: str


BAD_ANNOTATION = "BadAnnotation"  # a value that does not parse; the setting keeps its default


@dataclass(frozen=True, kw_only=True, slots=True)
class Canary:
    """The canary Ingress's route attached to a main route, and when to take it."""

    settings: route_options.CanarySettings
    route: RouteMatch


@dataclass(frozen=True, kw_only=True, slots=True)
class RouteMatch:
    """Where a request goes: `upstreams` empty means no ready endpoints (503).

    `host` and `path` are the rule's as written (`host` "" for rules without a
    host and for default backends, `path` "" for default backends): metrics
    label by the rule rather than by whatever Host a client sent, and
    rewrite-target replaces the matched `path`.
    """

    ingress: resources.ObjectKey
    backend: resources.ServiceBackend
    upstreams: tuple[Upstream, ...]
    host: str = ""
    path: str = ""
    exact: bool = False
    options: route_options.RouteOptions = route_options.DEFAULT_OPTIONS
    canary: Canary | None = None
    service: str = ""  # "namespace/name" of the backend Service, the metrics label


@dataclass(kw_only=True, slots=True)
class _HostRoutes:
    """Merged rules for one host pattern; Prefix keys have no trailing slash."""

    exact: dict[str, RouteMatch] = field(default_factory=dict)
    prefix: dict[str, RouteMatch] = field(default_factory=dict)
    default: RouteMatch | None = None

    def match(self, path: str) -> RouteMatch | None:
        """Longest match: the whole path as Exact first, then Prefix keys from long to short.

        An Exact hit on the whole path is at least as long as any Prefix hit,
        and beats a Prefix rule of equal length, so it is checked first. The
        Prefix candidates are the path itself and the path cut before each
        `/`, down to the empty string (the key of the rule `/`).
        """
        if self.exact:
            hit = self.exact.get(path)
            if hit is not None:
                return hit
        prefix = self.prefix
        if not prefix:
            return None
        end = len(path)
        while end >= 0:
            hit = prefix.get(path[:end])
            if hit is not None:
                return hit
            if end == 0:
                return None
            end = path.rfind("/", 0, end)
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
    """An immutable routing table; build a new one when any input changes."""

    __slots__ = ("_default", "_exact_hosts", "_hostless", "_wildcard_hosts", "problems", "served")

    def __init__(
        self,
        *,
        exact_hosts: dict[str, _HostRoutes],
        wildcard_hosts: dict[str, _HostRoutes],
        hostless: _HostRoutes,
        default: RouteMatch | None,
        served: frozenset[resources.ObjectKey] = frozenset(),
        problems: tuple[IngressProblem, ...] = (),
    ) -> None:
        self._exact_hosts = exact_hosts
        self._wildcard_hosts = wildcard_hosts  # keyed by the suffix after "*."
        self._hostless = hostless
        self._default = default
        self.served = served  # the Ingresses this controller serves (for their status)
        self.problems = problems  # annotations not honoured as written, per Ingress

    @classmethod
    def empty(cls) -> RouteTable:
        """A table that matches nothing: what the data plane serves before the first build."""
        return cls(exact_hosts={}, wildcard_hosts={}, hostless=_HostRoutes(), default=None)

    @classmethod
    def build(
        cls,
        *,
        ingresses: Iterable[resources.Ingress],
        services: Iterable[resources.Service],
        endpoint_slices: Iterable[resources.EndpointSlice],
        ingress_classes: Iterable[resources.IngressClass],
        controller_name: str,
        class_name: str | None,
        enforce_access_annotations: bool = True,
        secret_data: access.SecretData | None = None,
    ) -> RouteTable:
        """Merge the Ingresses this controller serves into one table.

        Which Ingresses are served:
        - `ingressClassName` names an IngressClass whose controller is
          `controller_name`;
        - or it equals `class_name` and no IngressClass of that name exists
          (plain manifests in standalone mode, and the legacy
          `kubernetes.io/ingress.class` annotation, which needs no object);
        - an Ingress without a class is served when an IngressClass of ours is
          marked default, or when there are no IngressClass objects at all
          (standalone convenience: a directory of plain Ingresses just works).
        A backend whose Service or port does not exist resolves to no
        upstreams (503), as ingress-nginx does, rather than dropping the rule.
        `secret_data(namespace, name)` reads the auth Secrets Ingresses name
        (see `route_options.auth_secret_name`); without it they are missing.
        """
        classes = list(ingress_classes)
        class_names = {c.name for c in classes}
        ours = {c.name for c in classes if c.controller == controller_name}
        if class_name is not None and class_name not in class_names:
            ours.add(class_name)
        serve_classless = not classes or any(
            c.is_default and c.controller == controller_name for c in classes
        )
        served = sorted(
            (
                ing
                for ing in ingresses
                if (ing.ingress_class_name in ours)
                or (ing.ingress_class_name is None and serve_classless)
            ),
            key=_age_key,
        )
        resolver = _Resolver(services=services, endpoint_slices=endpoint_slices)
        problems: list[IngressProblem] = []
        canaries: list[tuple[resources.Ingress, route_options.CanarySettings]] = []

        exact_hosts: dict[str, _HostRoutes] = {}
        wildcard_hosts: dict[str, _HostRoutes] = {}
        hostless = _HostRoutes()
        default: RouteMatch | None = None
        for ing in served:
            canary, found = route_options.canary_settings(ing.annotations)
            options, more = route_options.route_options(
                ing.annotations, namespace=ing.namespace, name=ing.name,
                secret_data=secret_data or _no_secrets)
            problems += (IngressProblem(ingress=ing.key, reason=BAD_ANNOTATION, message=problem)
                         for problem in (*found, *more))
            refusal = _review_annotations(ingress=ing, problems=problems,
                                          enforce=enforce_access_annotations)
            if refusal is not None and options.refusal is None:
                options = dataclasses.replace(options, refusal=refusal)
            if canary is not None:
                if refusal is None:  # a refused canary takes no traffic from its main route
                    canaries.append((ing, canary))
                continue
            ing_default = (
                resolver.route(ingress=ing, backend=ing.default_backend, options=options)
                if ing.default_backend is not None
                else None
            )
            if default is None:
                default = ing_default
            for rule in ing.rules:
                routes = _routes_for(
                    host=rule.host,
                    exact_hosts=exact_hosts,
                    wildcard_hosts=wildcard_hosts,
                    hostless=hostless,
                )
                if routes is not hostless and routes.default is None:
                    routes.default = ing_default
                for ing_path in rule.paths:
                    exact = ing_path.path_type == "Exact"
                    found_in = routes.exact if exact else routes.prefix
                    key = ing_path.path if exact else ing_path.path.rstrip("/")
                    if key not in found_in:
                        found_in[key] = resolver.route(
                            ingress=ing,
                            backend=ing_path.backend,
                            options=options,
                            host=rule.host or "",
                            path=ing_path.path,
                            exact=exact,
                        )
        for ing, canary in canaries:
            _attach_canary(
                ingress=ing,
                settings=canary,
                resolver=resolver,
                exact_hosts=exact_hosts,
                wildcard_hosts=wildcard_hosts,
                hostless=hostless,
            )
        return cls(
            exact_hosts=exact_hosts,
            wildcard_hosts=wildcard_hosts,
            hostless=hostless,
            default=default,
            served=frozenset(ing.key for ing in served),
            problems=tuple(problems),
        )

    def match(self, *, host: str, path: str) -> RouteMatch | None:
        """The route for a request, or None (404).

        `host` must already be normalized (see `normalize_host`); `path` is
        the raw path without the query string.
        """
        exact = self._exact_hosts.get(host)
        if exact is not None:
            hit = exact.match(path)
            if hit is not None:
                return hit
        wildcard = None
        dot = host.find(".")
        if dot > 0:
            wildcard = self._wildcard_hosts.get(host[dot + 1 :])
            if wildcard is not None:
                hit = wildcard.match(path)
                if hit is not None:
                    return hit
        hit = self._hostless.match(path)
        if hit is not None:
            return hit
        if exact is not None and exact.default is not None:
            return exact.default
        if wildcard is not None and wildcard.default is not None:
            return wildcard.default
        return self._default


_NEWEST = datetime.datetime.max.replace(tzinfo=datetime.UTC)


def _age_key(ingress: resources.Ingress) -> tuple[datetime.datetime, str, str]:
    """Oldest first; naive timestamps are taken as UTC so they compare with aware ones."""
    created = ingress.creation_timestamp
    if created is None:
        created = _NEWEST
    elif created.tzinfo is None:
        created = created.replace(tzinfo=datetime.UTC)
    return (created, ingress.namespace, ingress.name)


def _no_secrets(namespace: str, name: str) -> None:
    return None


def _review_annotations(
    *, ingress: resources.Ingress, problems: list[IngressProblem], enforce: bool
) -> str | None:
    """Reports the annotations certctl does not honour; why the Ingress is refused, if it is."""
    review = nginx_annotations.review(dict(ingress.annotations))
    for finding in review.findings:
        message = finding.message
        if finding.refuses_routes and not enforce:
            message = (f"{finding.key}: not enforced by certctl; the Ingress is served without "
                       f"it because the data plane runs with {nginx_annotations.OPT_OUT_FLAG}")
        problems.append(IngressProblem(ingress=ingress.key, reason=finding.reason,
                                       message=message))
    if not enforce or not review.refusals:
        return None
    return (f"{ingress.key} is not served: "
            + ", ".join(f.key for f in review.refusals)
            + " restrict access and certctl does not enforce them")


def _routes_for(
    *,
    host: str | None,
    exact_hosts: dict[str, _HostRoutes],
    wildcard_hosts: dict[str, _HostRoutes],
    hostless: _HostRoutes,
) -> _HostRoutes:
    if not host:
        return hostless
    host = host.lower()
    if host.startswith("*."):
        return wildcard_hosts.setdefault(host[2:], _HostRoutes())
    return exact_hosts.setdefault(host, _HostRoutes())


def _attach_canary(
    *,
    ingress: resources.Ingress,
    settings: route_options.CanarySettings,
    resolver: _Resolver,
    exact_hosts: dict[str, _HostRoutes],
    wildcard_hosts: dict[str, _HostRoutes],
    hostless: _HostRoutes,
) -> None:
    """Attach a canary Ingress's paths to the main routes they shadow (the first canary wins)."""
    for rule in ingress.rules:
        host = (rule.host or "").lower()
        if not host:
            routes: _HostRoutes | None = hostless
        elif host.startswith("*."):
            routes = wildcard_hosts.get(host[2:])
        else:
            routes = exact_hosts.get(host)
        if routes is None:
            continue
        for ing_path in rule.paths:
            exact = ing_path.path_type == "Exact"
            table = routes.exact if exact else routes.prefix
            key = ing_path.path if exact else ing_path.path.rstrip("/")
            main = table.get(key)
            if main is None or main.canary is not None:
                continue
            target = resolver.route(
                ingress=ingress,
                backend=ing_path.backend,
                options=main.options,
                host=main.host,
                path=main.path,
                exact=exact,
            )
            table[key] = dataclasses.replace(
                main, canary=Canary(settings=settings, route=target)
            )


class _Resolver:
    """Resolves backends to ready endpoint addresses, once per Service port."""

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
        self._cache: dict[tuple[str, resources.ServiceBackend], tuple[Upstream, ...]] = {}

    def route(
        self,
        *,
        ingress: resources.Ingress,
        backend: resources.ServiceBackend,
        options: route_options.RouteOptions,
        host: str = "",
        path: str = "",
        exact: bool = False,
    ) -> RouteMatch:
        cache_key = (ingress.namespace, backend)
        upstreams = self._cache.get(cache_key)
        if upstreams is None:
            upstreams = self._upstreams(namespace=ingress.namespace, backend=backend)
            self._cache[cache_key] = upstreams
        return RouteMatch(
            ingress=ingress.key,
            backend=backend,
            upstreams=upstreams,
            host=host,
            path=path,
            exact=exact,
            options=options,
            service=f"{ingress.namespace}/{backend.name}",
        )

    def _upstreams(
        self, *, namespace: str, backend: resources.ServiceBackend
    ) -> tuple[Upstream, ...]:
        """Ready addresses of the Service port the backend names, in slice order, deduplicated.

        EndpointSlice ports carry the *Service* port's name and the resolved
        target port number, so the Service port is found by number or name and
        its slice port by name; a slice without that name (hand-written
        manifests) is matched by the numeric targetPort instead.
        """
        service = self._services.get((namespace, backend.name))
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
        for eps in self._slices.get((namespace, backend.name), ()):
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
