"""The Ingress route source: networking.k8s.io/v1 Ingresses compiled into the route model.

Pure. `compile_ingresses` compiles a whole set; `IngressRoutes` keeps one compiled
and takes changes one Ingress at a time (`compile_ingress`), settling again only
the hosts a change touches, with the same result. Semantics (DESIGN.md,
"Semantics to honour"):

- Which Ingresses are served: `ingressClassName` names an IngressClass whose
  controller is ours; or it equals our class name and no IngressClass of
  that name exists (plain manifests in standalone mode, and the legacy
  `kubernetes.io/ingress.class` annotation, which needs no object); an
  Ingress without a class is served when an IngressClass of ours is marked
  default, or when there are no IngressClass objects at all (a directory of
  plain Ingresses just works).
- Rules for one host merge across Ingresses; when two claim the same host,
  path and match type, the oldest Ingress wins (creation timestamp, then
  namespace/name; an Ingress without a timestamp counts as newest): routes
  come out oldest first.
- `defaultBackend`: for the hosts its Ingress has rules for, and the oldest
  served Ingress's one for every host.
- `ImplementationSpecific` paths are `Prefix` paths.
- A canary Ingress (`canary: "true"`) adds no routes of its own: each of its
  rules attaches to the route with the same host, path and match type (the
  first canary wins), which then splits traffic by header, cookie or weight;
  a canary rule with no such route is ignored, as in ingress-nginx.
- `use-regex` (or a rewrite-target with capture groups) makes every Prefix
  path of the Ingress's hosts, in every Ingress, a regular expression, as
  ingress-nginx's host-wide `location ~*`: case-insensitive, anchored at the
  start, tried longest path first after Exact paths; a path that does not
  compile is reported and not served.
- `server-alias`: more names for the hosts of the Ingress's rules, served
  exactly as they are (every Ingress's paths for them); an alias that is a
  host of some Ingress's rules, or an earlier Ingress's alias, is left out
  and reported, as ingress-nginx does.
- `from-to-www-redirect`: each host of the Ingress's rules gets its `www.`
  twin (or its bare name, for a `www.` host) redirected to it (308, path and
  query kept), unless some Ingress has rules for the twin itself.
- Annotations become route options (`ingress_annotations`); the ones certctl
  does not honour are reported (`certctl.api.nginx_annotations`), and an
  access-restricting one it does not enforce refuses the Ingress's routes
  (503, a canary attached to them too, and a refused canary attaches
  nowhere) unless `enforce_access_annotations` is False, the operator's
  explicit opt-out.
"""

from __future__ import annotations

import dataclasses
import datetime
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from certctl.api import nginx_annotations, resources
from certctl.api.resources import ObjectKey
from certctl.routes import access, ingress_annotations, model, options

BAD_ANNOTATION = "BadAnnotation"  # a value that does not parse; the setting keeps its default
BAD_PATH = "BadPath"  # a regular-expression path that does not compile; not served
ALIAS_CONFLICT = "AliasConflict"  # a server-alias that another Ingress's host already is
_NEWEST = datetime.datetime.max.replace(tzinfo=datetime.UTC)


def compile_ingresses(
    *,
    ingresses: Iterable[resources.Ingress],
    ingress_classes: Iterable[resources.IngressClass],
    controller_name: str,
    class_name: str | None,
    enforce_access_annotations: bool = True,
    secret_data: access.SecretData | None = None,
) -> model.RouteSet:
    """The routes of the Ingresses this controller serves, oldest first.

    `secret_data(namespace, name)` reads the auth Secrets Ingresses name
    (see `ingress_annotations.secret_names`); without it they are missing.
    """
    served = served_ingresses(ingresses=ingresses, ingress_classes=ingress_classes,
                              controller_name=controller_name, class_name=class_name)
    compiled = IngressRoutes()
    compiled.update({ing.key: compile_ingress(
        ing, enforce_access_annotations=enforce_access_annotations, secret_data=secret_data)
        for ing in served})
    return compiled.route_set()


@dataclass(frozen=True, kw_only=True, slots=True)
class ClassFilter:
    """Which Ingresses are ours by their class (see the module's docstring)."""

    ours: frozenset[str]
    serve_classless: bool

    def serves(self, ingress: resources.Ingress) -> bool:
        if ingress.ingress_class_name is None:
            return self.serve_classless
        return ingress.ingress_class_name in self.ours


def class_filter(
    *,
    ingress_classes: Iterable[resources.IngressClass],
    controller_name: str,
    class_name: str | None,
) -> ClassFilter:
    classes = list(ingress_classes)
    class_names = {c.name for c in classes}
    ours = {c.name for c in classes if c.controller == controller_name}
    if class_name is not None and class_name not in class_names:
        ours.add(class_name)
    serve_classless = not classes or any(
        c.is_default and c.controller == controller_name for c in classes
    )
    return ClassFilter(ours=frozenset(ours), serve_classless=serve_classless)


def served_ingresses(
    *,
    ingresses: Iterable[resources.Ingress],
    ingress_classes: Iterable[resources.IngressClass],
    controller_name: str,
    class_name: str | None,
) -> list[resources.Ingress]:
    """The Ingresses of our class (see the module's docstring), oldest first."""
    ours = class_filter(ingress_classes=ingress_classes, controller_name=controller_name,
                        class_name=class_name)
    return sorted((ing for ing in ingresses if ours.serves(ing)), key=_age_key)


# --- one Ingress at a time ------------------------------------------------------------------

Age = tuple[datetime.datetime, str, str]
PathKey = tuple[str, str, bool]  # (host, path without a Prefix's trailing slash, exact)
# Where a route or problem comes in the set compile_ingresses returns: a group (main routes,
# alias copies, www twins, host problems), then ages and positions within the group.
_Order = tuple[Any, ...]


@dataclass(frozen=True, kw_only=True, slots=True)
class _RulePath:
    """One path of one rule of an Ingress."""

    host: str  # lowercase; "" for a rule without a host
    path: str
    key: PathKey
    backend: model.Backend
    position: tuple[int, int]  # (rule, path) in the Ingress: its own order


@dataclass(frozen=True, kw_only=True, slots=True)
class _Twin:
    """The www./bare twin of one rule's host (from-to-www-redirect)."""

    name: str
    host: str
    rule: int
    backend: model.Backend | None  # the rule's first path's, else the defaultBackend


@dataclass(frozen=True, kw_only=True, slots=True)
class CompiledIngress:
    """What one served Ingress brings to the route set, compiled alone: everything that
    does not depend on other Ingresses (precedence, regex hosts, canaries and aliases are
    settled per host by `IngressRoutes`)."""

    key: ObjectKey
    age: Age
    canary: bool  # a canary Ingress: its paths attach to main routes, it adds none
    canary_settings: options.CanarySettings | None  # None for a refused canary too
    options: options.RouteOptions
    regex: bool  # use-regex for its hosts (never for a canary)
    hosts: frozenset[str]  # its rules' hosts, "" for a rule without one
    paths: dict[str, tuple[_RulePath, ...]]  # by host, in rule and path order
    default: model.DefaultRoute | None
    aliases: tuple[str, ...]
    twins: tuple[_Twin, ...]
    problems: tuple[model.SourceProblem, ...]


def compile_ingress(
    ingress: resources.Ingress,
    *,
    enforce_access_annotations: bool = True,
    secret_data: access.SecretData | None = None,
) -> CompiledIngress:
    """One served Ingress compiled (see `compile_ingresses` for `secret_data`)."""
    problems: list[model.SourceProblem] = []

    def bad(found: Iterable[str]) -> None:
        problems.extend(model.SourceProblem(source=ingress.key, reason=BAD_ANNOTATION,
                                            message=problem) for problem in found)

    wanted_regex, found = ingress_annotations.uses_regex(ingress.annotations)
    bad(found)
    canary, found = ingress_annotations.canary_settings(ingress.annotations)
    route_options, more = ingress_annotations.route_options(
        ingress.annotations, namespace=ingress.namespace, name=ingress.name,
        secret_data=secret_data or _no_secrets)
    bad((*found, *more))
    refusal = _review_annotations(ingress=ingress, problems=problems,
                                  enforce=enforce_access_annotations)
    if refusal is not None and route_options.refusal is None:
        route_options = dataclasses.replace(route_options, refusal=refusal)
    paths: dict[str, list[_RulePath]] = {}
    for rule_index, rule in enumerate(ingress.rules):
        host = (rule.host or "").lower()
        found_paths = paths.setdefault(host, [])
        for path_index, ing_path in enumerate(rule.paths):
            found_paths.append(_RulePath(
                host=host, path=ing_path.path, key=_key(host, ing_path),
                backend=_backend(ingress, ing_path.backend),
                position=(rule_index, path_index)))
    hosts = frozenset(paths)
    if canary is not None:
        # A refused canary takes no traffic from its main route: it attaches nowhere.
        return CompiledIngress(
            key=ingress.key, age=_age_key(ingress), canary=True,
            canary_settings=canary if refusal is None else None, options=route_options,
            regex=False, hosts=hosts, paths={h: tuple(p) for h, p in paths.items()},
            default=None, aliases=(), twins=(), problems=tuple(problems))
    wants_twins, found = ingress_annotations.from_to_www_redirect(ingress.annotations)
    bad(found)
    aliases, found = ingress_annotations.server_aliases(ingress.annotations)
    bad(found)
    default = None
    if ingress.default_backend is not None:
        default = model.DefaultRoute(
            source=ingress.key, backend=_backend(ingress, ingress.default_backend),
            options=route_options,
            hosts=tuple(rule.host.lower() for rule in ingress.rules if rule.host))
    return CompiledIngress(
        key=ingress.key, age=_age_key(ingress), canary=False, canary_settings=None,
        options=route_options, regex=wanted_regex, hosts=hosts,
        paths={h: tuple(p) for h, p in paths.items()}, default=default,
        aliases=aliases,
        twins=_twins(ingress) if wants_twins else (), problems=tuple(problems))


# --- the Ingresses together, kept up to date one Ingress at a time --------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class _Host:
    """One host's part of the route set, settled against every Ingress that names it."""

    routes: tuple[tuple[_Order, model.Route], ...]  # in precedence order
    default: model.DefaultRoute | None  # the oldest defaultBackend of an Ingress with rules for it
    problems: tuple[tuple[_Order, model.SourceProblem], ...]  # BadPath, AliasConflict


class IngressRoutes:
    """The served Ingresses' routes, compiled one Ingress at a time and settled per host.

    Whatever decides between Ingresses is decided per host (the oldest claim of a host,
    path and match type; use-regex; canaries; server-alias and www twins are names no
    Ingress has rules for), so a change to one Ingress re-settles only the hosts it had
    and has, the aliases copying those hosts' routes and the names it aliases and twins:
    `update` returns them, and their routes equal what compiling every Ingress again
    gives (`route_set`).
    """

    def __init__(self) -> None:
        self._sources: dict[ObjectKey, CompiledIngress] = {}
        self._by_host: dict[str, set[ObjectKey]] = {}  # rule host -> Ingresses, canaries too
        self._by_alias: dict[str, set[ObjectKey]] = {}  # server-alias -> Ingresses naming it
        self._by_twin: dict[str, set[ObjectKey]] = {}  # www twin -> Ingresses making it
        self._defaults: set[ObjectKey] = set()  # Ingresses with a defaultBackend
        self._hosts: dict[str, _Host] = {}  # every name with routes, a default or a problem
        self.default: model.DefaultRoute | None = None  # the catch-all: the oldest one

    @property
    def served(self) -> frozenset[ObjectKey]:
        return frozenset(self._sources)

    def host_names(self) -> frozenset[str]:
        return frozenset(self._hosts)

    def routes_for(self, host: str) -> tuple[model.Route, ...]:
        found = self._hosts.get(host)
        return () if found is None else tuple(route for _, route in found.routes)

    def default_for(self, host: str) -> model.DefaultRoute | None:
        found = self._hosts.get(host)
        return None if found is None else found.default

    def update(self, changed: Mapping[ObjectKey, CompiledIngress | None]) -> frozenset[str]:
        """Put each compiled Ingress in place of its previous self (None: no longer served);
        the hosts whose routes, default or problems may have changed."""
        touched: set[str] = set()  # rule hosts before or after
        names: set[str] = set()  # aliases and twins before or after
        defaults_changed = False
        for key, compiled in changed.items():
            for found in (self._sources.get(key), compiled):
                if found is not None:
                    touched |= found.hosts
                    names.update(found.aliases)
                    names.update(twin.name for twin in found.twins)
                    defaults_changed = defaults_changed or found.default is not None
            self._unindex(key)
            if compiled is not None:
                self._index(compiled)
        # The aliases copying a touched host's routes follow them.
        for host in touched:
            for key in self._by_host.get(host, ()):
                names.update(self._sources[key].aliases)
        hosts = touched | names
        # Rule hosts first: the other names (aliases) copy their routes.
        for host in (*(h for h in hosts if h in self._by_host),
                     *(h for h in hosts if h not in self._by_host)):
            settled = self._settled(host)
            if settled is None:
                self._hosts.pop(host, None)
            else:
                self._hosts[host] = settled
        if defaults_changed:
            oldest = min((self._sources[key] for key in self._defaults),
                         key=lambda found: found.age, default=None)
            self.default = None if oldest is None else oldest.default
        return frozenset(hosts)

    def problems(self) -> tuple[model.SourceProblem, ...]:
        """What to tell the Ingresses' owners (unordered across Ingresses: `route_set` orders)."""
        return (*(problem for found in self._sources.values() for problem in found.problems),
                *(problem for host in self._hosts.values() for _, problem in host.problems))

    def route_set(self) -> model.RouteSet:
        """Every route, default and problem, in the order compiling all Ingresses gives:
        routes oldest first, then alias copies, then www twins."""
        sources = sorted(self._sources.values(), key=lambda found: found.age)
        routes = sorted((entry for host in self._hosts.values() for entry in host.routes),
                        key=lambda entry: entry[0])
        host_problems = sorted((entry for host in self._hosts.values()
                                for entry in host.problems), key=lambda entry: entry[0])
        return model.RouteSet(
            routes=tuple(route for _, route in routes),
            defaults=tuple(found.default for found in sources if found.default is not None),
            served=self.served,
            problems=(*(problem for found in sources for problem in found.problems),
                      *(problem for _, problem in host_problems)))

    # --- the indexes --------------------------------------------------------------------

    def _index(self, compiled: CompiledIngress) -> None:
        key = compiled.key
        self._sources[key] = compiled
        for host in compiled.hosts:
            self._by_host.setdefault(host, set()).add(key)
        for alias in compiled.aliases:
            self._by_alias.setdefault(alias, set()).add(key)
        for twin in compiled.twins:
            self._by_twin.setdefault(twin.name, set()).add(key)
        if compiled.default is not None:
            self._defaults.add(key)

    def _unindex(self, key: ObjectKey) -> None:
        compiled = self._sources.pop(key, None)
        if compiled is None:
            return
        for index, names in ((self._by_host, compiled.hosts),
                             (self._by_alias, compiled.aliases),
                             (self._by_twin, [twin.name for twin in compiled.twins])):
            for name in names:
                found = index.get(name)
                if found is not None:
                    found.discard(key)
                    if not found:
                        del index[name]
        self._defaults.discard(key)

    def _oldest_first(self, keys: Iterable[ObjectKey]) -> list[CompiledIngress]:
        return sorted((self._sources[key] for key in keys), key=lambda found: found.age)

    # --- settling one host --------------------------------------------------------------

    def _settled(self, host: str) -> _Host | None:
        """A host some Ingress has rules for: the oldest claim of each path wins, its
        Prefix paths are regular expressions when one Ingress asks, the oldest canary
        of a path attaches to it; its aliases and twins of other Ingresses conflict.
        Other names are `_alias_host`'s. None: nothing for this name."""
        sources = self._oldest_first(self._by_host.get(host, ()))
        if not sources:
            return self._alias_host(host)
        regex = any(found.regex for found in sources)
        routes: list[tuple[_Order, model.Route]] = []
        claimed: dict[PathKey, int] = {}
        problems: list[tuple[_Order, model.SourceProblem]] = []
        default: model.DefaultRoute | None = None
        for found in sources:
            if found.canary:
                continue
            if default is None and found.default is not None and host in found.default.hosts:
                default = found.default
            for rule_path in found.paths.get(host, ()):
                if rule_path.key in claimed:
                    continue
                pattern = None
                if regex and not rule_path.key[2]:
                    try:
                        pattern = re.compile("^" + rule_path.path, re.IGNORECASE)
                    except re.error as err:
                        problems.append(((0, found.age, rule_path.position), model.SourceProblem(
                            source=found.key, reason=BAD_PATH,
                            message=f"path {rule_path.path!r} of host {host or '*'} is not a "
                            f"regular expression ({err}), and use-regex is in force for the "
                            "host: the path is not served")))
                        continue
                claimed[rule_path.key] = len(routes)
                routes.append(((0, found.age, rule_path.position), model.Route(
                    source=found.key, host=host, path=rule_path.path, exact=rule_path.key[2],
                    backend=rule_path.backend, options=found.options, pattern=pattern)))
        for found in sources:
            if found.canary_settings is None:
                continue
            for rule_path in found.paths.get(host, ()):
                index = claimed.get(rule_path.key)
                if index is None or routes[index][1].canary is not None:
                    continue
                order, route = routes[index]
                routes[index] = (order, dataclasses.replace(route, canary=model.Canary(
                    source=found.key, backend=rule_path.backend,
                    settings=found.canary_settings)))
        for found in self._oldest_first(self._by_alias.get(host, ())):
            problems.append(((1, found.age, found.aliases.index(host)),
                             _alias_conflict(found.key, host)))
        if not routes and not problems and default is None:
            return None  # only canaries name it
        return _Host(routes=tuple(routes), default=default, problems=tuple(problems))

    def _alias_host(self, name: str) -> _Host | None:
        """A name no Ingress has rules for: the oldest server-alias of it copies its
        Ingress's hosts' routes (later ones conflict), and the oldest www twin of it
        redirects."""
        routes: list[tuple[_Order, model.Route]] = []
        problems: list[tuple[_Order, model.SourceProblem]] = []
        aliasing = self._oldest_first(self._by_alias.get(name, ()))
        if aliasing:
            first, *later = aliasing
            at = first.aliases.index(name)
            copied = sorted((entry for host in first.hosts if host
                             for entry in self._main_routes(host)), key=lambda entry: entry[0])
            routes += (((1, first.age, at, order), dataclasses.replace(route, host=name))
                       for order, route in copied)
            problems += (((1, found.age, found.aliases.index(name)),
                          _alias_conflict(found.key, name)) for found in later)
        twins = sorted(((found.age, twin.rule, found, twin)
                        for found in self._oldest_first(self._by_twin.get(name, ()))
                        for twin in found.twins if twin.name == name), key=lambda t: t[:2])
        if twins:
            age, rule, found, twin = twins[0]
            if twin.backend is not None:
                # The backend is never reached: every request is redirected first.
                routes.append(((2, age, rule), model.Route(
                    source=found.key, host=name, path="/", exact=False, backend=twin.backend,
                    options=options.RouteOptions(redirect=options.Redirect(
                        code=308, target=f"$scheme://{twin.host}$request_uri")))))
        if not routes and not problems:
            return None
        return _Host(routes=tuple(routes), default=None, problems=tuple(problems))

    def _main_routes(self, host: str) -> tuple[tuple[_Order, model.Route], ...]:
        """A rule host's routes, settled already."""
        found = self._hosts.get(host)
        return () if found is None else found.routes


def _alias_conflict(source: ObjectKey, alias: str) -> model.SourceProblem:
    return model.SourceProblem(
        source=source, reason=ALIAS_CONFLICT,
        message=f"server-alias {alias!r} is already a host of an Ingress's rules "
        "or another Ingress's alias; left out")


def _twins(ingress: resources.Ingress) -> tuple[_Twin, ...]:
    """from-to-www-redirect: each rule's host's www./bare twin (not for wildcards)."""
    twins = []
    for index, rule in enumerate(ingress.rules):
        host = (rule.host or "").lower()
        if not host or host.startswith("*."):
            continue
        backend = rule.paths[0].backend if rule.paths else ingress.default_backend
        twins.append(_Twin(
            name=host.removeprefix("www.") if host.startswith("www.") else "www." + host,
            host=host, rule=index,
            backend=None if backend is None else _backend(ingress, backend)))
    return tuple(twins)


def _key(host: str, ing_path: resources.IngressPath) -> tuple[str, str, bool]:
    exact = ing_path.path_type == "Exact"
    return (host, ing_path.path if exact else ing_path.path.rstrip("/"), exact)


def _backend(ingress: resources.Ingress, backend: resources.ServiceBackend) -> model.Backend:
    return model.Backend(namespace=ingress.namespace, service=backend.name,
                         port_number=backend.port_number, port_name=backend.port_name)


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
    *, ingress: resources.Ingress, problems: list[model.SourceProblem], enforce: bool
) -> str | None:
    """Reports the annotations certctl does not honour; why the Ingress is refused, if it is."""
    review = nginx_annotations.review(dict(ingress.annotations))
    for finding in review.findings:
        message = finding.message
        if finding.refuses_routes and not enforce:
            message = (f"{finding.key}: not enforced by certctl; the Ingress is served without "
                       f"it because the data plane runs with {nginx_annotations.OPT_OUT_FLAG}")
        problems.append(model.SourceProblem(source=ingress.key, reason=finding.reason,
                                            message=message))
    if not enforce or not review.refusals:
        return None
    return (f"{ingress.key} is not served: "
            + ", ".join(f.key for f in review.refusals)
            + " restrict access and certctl does not enforce them")
