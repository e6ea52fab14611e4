"""The neutral route model every route source compiles into.

Precedence is the order of `RouteSet.routes`: of two routes with the same
host, path and match type, the first wins (for Ingresses: the oldest).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from certctl.api.resources import ObjectKey
from certctl.routes import options as route_options


@dataclass(frozen=True, kw_only=True, slots=True)
class Backend:
    """A Service port in a namespace, by number or by name."""

    namespace: str
    service: str
    port_number: int | None = None
    port_name: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class Canary:
    """Another source's backend that takes some of a route's requests (`settings` say which)."""

    source: ObjectKey
    backend: Backend
    settings: route_options.CanarySettings


Header = route_options.Header  # (lowercase name, value)


@dataclass(frozen=True, kw_only=True, slots=True)
class RequestConditions:
    """What a request must also have for a route to take it (HTTPRoute matches): all hold.

    Header names are lowercase and compare case-insensitively, values exactly;
    query parameters compare exactly (the first value of a repeated name);
    `scheme` b"http" or b"https" limits the route to the listeners it attached
    to, None serves both.
    """

    method: bytes | None = None
    headers: tuple[Header, ...] = ()
    query: tuple[tuple[bytes, bytes], ...] = ()
    scheme: bytes | None = None

    @property
    def rank(self) -> tuple[int, int, int]:
        """The Gateway API's order after the path: a method match, then more header
        matches, then more query parameter matches (larger first)."""
        return (self.method is not None, len(self.headers), len(self.query))


@dataclass(frozen=True, kw_only=True, slots=True)
class PathModifier:
    """`ReplaceFullPath` (`prefix` False) or `ReplacePrefixMatch` (True) with `value`."""

    prefix: bool
    value: bytes


@dataclass(frozen=True, kw_only=True, slots=True)
class Redirect:
    """An HTTPRoute RequestRedirect; None fields keep the request's own."""

    status: int
    scheme: bytes | None = None
    hostname: bytes | None = None
    port: int | None = None
    path: PathModifier | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class GatewayFilters:
    """HTTPRoute filters, applied by the data plane in the order the spec gives: a CORS
    preflight is answered at once, then a redirect; otherwise request headers and the URL
    change on the way to the backend and response headers (CORS's among them) on the way
    back."""

    request_set: tuple[Header, ...] = ()
    request_add: tuple[Header, ...] = ()
    request_remove: tuple[bytes, ...] = ()
    response_set: tuple[Header, ...] = ()
    redirect: Redirect | None = None
    rewrite_host: bytes | None = None
    rewrite_path: PathModifier | None = None
    cors: route_options.GatewayCorsPolicy | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class WeightedBackend:
    """One backendRef's share of a route's requests; `backend` None answers 500 for it
    (a Service that does not exist, a namespace not granted, a kind certctl cannot reach)."""

    backend: Backend | None
    weight: int


@dataclass(frozen=True, kw_only=True, slots=True)
class Route:
    """Requests for `host` whose path matches `path` go to `backend`.

    `host` "" matches every host, `*.example.com` one extra label; `path` is
    as written (Prefix matches element-wise, a trailing slash ignored). With
    `pattern` the path is a regular expression instead (nginx's `location ~*`:
    case-insensitive, anchored at the start), tried in the order of the set
    after Exact routes and before Prefix ones.
    """

    source: ObjectKey
    host: str
    path: str
    exact: bool
    backend: Backend
    pattern: re.Pattern[str] | None = None
    options: route_options.RouteOptions = route_options.DEFAULT_OPTIONS
    canary: Canary | None = None
    # HTTPRoute rules only (None/empty for Ingresses, which pay nothing for them): more
    # to match, filters, and weighted backends replacing `backend` when not empty.
    conditions: RequestConditions | None = None
    filters: GatewayFilters | None = None
    backends: tuple[WeightedBackend, ...] = ()


@dataclass(frozen=True, kw_only=True, slots=True)
class DefaultRoute:
    """Where requests no route matches go: for `hosts` (the source's own), and as the
    catch-all for every host when it is the first default of the set."""

    source: ObjectKey
    backend: Backend
    options: route_options.RouteOptions
    hosts: tuple[str, ...]


@dataclass(frozen=True, kw_only=True, slots=True)
class SourceProblem:
    """Something to tell the owner of a source object: an Event's reason and message."""

    source: ObjectKey
    reason: str
    message: str


@dataclass(frozen=True, kw_only=True, slots=True)
class RouteSet:
    routes: tuple[Route, ...] = ()  # Ingress routes, then HTTPRoute rules by precedence
    defaults: tuple[DefaultRoute, ...] = ()
    served: frozenset[ObjectKey] = frozenset()  # the objects this data plane serves
    problems: tuple[SourceProblem, ...] = ()


@dataclass(frozen=True, kw_only=True, slots=True)
class HostRoutes:
    """One host's routes from every source, in precedence order, and its default route:
    what the route table indexes again when the host's routes change."""

    routes: tuple[Route, ...] = ()
    default: DefaultRoute | None = None
