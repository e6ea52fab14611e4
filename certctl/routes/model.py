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
    routes: tuple[Route, ...] = ()
    defaults: tuple[DefaultRoute, ...] = ()
    served: frozenset[ObjectKey] = frozenset()  # the objects this data plane serves
    problems: tuple[SourceProblem, ...] = ()
