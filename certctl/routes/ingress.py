"""The Ingress route source: networking.k8s.io/v1 Ingresses compiled into the route model.

Pure. Semantics (DESIGN.md, "Semantics to honour"):

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
from collections.abc import Iterable

from certctl.api import nginx_annotations, resources
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
    routes: list[model.Route] = []
    claimed: dict[tuple[str, str, bool], int] = {}  # (host, path key, exact) -> index in routes
    defaults: list[model.DefaultRoute] = []
    problems: list[model.SourceProblem] = []
    canaries: list[tuple[resources.Ingress, options.CanarySettings]] = []
    www_twins: list[resources.Ingress] = []
    aliased: list[resources.Ingress] = []
    regex_hosts = _regex_hosts(served, problems)
    for ing in served:
        canary, found = ingress_annotations.canary_settings(ing.annotations)
        route_options, more = ingress_annotations.route_options(
            ing.annotations, namespace=ing.namespace, name=ing.name,
            secret_data=secret_data or _no_secrets)
        problems += (model.SourceProblem(source=ing.key, reason=BAD_ANNOTATION, message=problem)
                     for problem in (*found, *more))
        refusal = _review_annotations(ingress=ing, problems=problems,
                                      enforce=enforce_access_annotations)
        if refusal is not None and route_options.refusal is None:
            route_options = dataclasses.replace(route_options, refusal=refusal)
        if canary is not None:
            if refusal is None:  # a refused canary takes no traffic from its main route
                canaries.append((ing, canary))
            continue
        twins, bad = ingress_annotations.from_to_www_redirect(ing.annotations)
        problems += (model.SourceProblem(source=ing.key, reason=BAD_ANNOTATION, message=problem)
                     for problem in bad)
        if twins:
            www_twins.append(ing)
        aliases, bad = ingress_annotations.server_aliases(ing.annotations)
        problems += (model.SourceProblem(source=ing.key, reason=BAD_ANNOTATION, message=problem)
                     for problem in bad)
        if aliases:
            aliased.append(ing)
        if ing.default_backend is not None:
            defaults.append(model.DefaultRoute(
                source=ing.key, backend=_backend(ing, ing.default_backend),
                options=route_options,
                hosts=tuple(rule.host.lower() for rule in ing.rules if rule.host)))
        for rule in ing.rules:
            host = (rule.host or "").lower()
            for ing_path in rule.paths:
                key = _key(host, ing_path)
                if key in claimed:
                    continue
                pattern = None
                if host in regex_hosts and not key[2]:
                    try:
                        pattern = re.compile("^" + ing_path.path, re.IGNORECASE)
                    except re.error as err:
                        problems.append(model.SourceProblem(
                            source=ing.key, reason=BAD_PATH,
                            message=f"path {ing_path.path!r} of host {host or '*'} is not a "
                            f"regular expression ({err}), and use-regex is in force for the "
                            "host: the path is not served"))
                        continue
                claimed[key] = len(routes)
                routes.append(model.Route(
                    source=ing.key, host=host, path=ing_path.path, exact=key[2],
                    backend=_backend(ing, ing_path.backend), options=route_options,
                    pattern=pattern))
    for ing, settings in canaries:
        _attach_canary(ingress=ing, settings=settings, routes=routes, claimed=claimed)
    routes += _alias_routes(ingresses=aliased, served=served, routes=routes, problems=problems)
    routes += _www_twin_routes(ingresses=www_twins, served=served)
    return model.RouteSet(routes=tuple(routes), defaults=tuple(defaults),
                          served=frozenset(ing.key for ing in served), problems=tuple(problems))


def _regex_hosts(served: list[resources.Ingress], problems: list[model.SourceProblem]) -> set[str]:
    """The hosts ("" for rules without one) whose Prefix paths are regular expressions."""
    hosts: set[str] = set()
    for ing in served:
        wanted, bad = ingress_annotations.uses_regex(ing.annotations)
        problems += (model.SourceProblem(source=ing.key, reason=BAD_ANNOTATION, message=problem)
                     for problem in bad)
        canary, _ = ingress_annotations.canary_settings(ing.annotations)
        if wanted and canary is None:  # a canary follows its main Ingress's paths
            hosts.update((rule.host or "").lower() for rule in ing.rules)
    return hosts


def served_ingresses(
    *,
    ingresses: Iterable[resources.Ingress],
    ingress_classes: Iterable[resources.IngressClass],
    controller_name: str,
    class_name: str | None,
) -> list[resources.Ingress]:
    """The Ingresses of our class (see the module's docstring), oldest first."""
    classes = list(ingress_classes)
    class_names = {c.name for c in classes}
    ours = {c.name for c in classes if c.controller == controller_name}
    if class_name is not None and class_name not in class_names:
        ours.add(class_name)
    serve_classless = not classes or any(
        c.is_default and c.controller == controller_name for c in classes
    )
    return sorted(
        (
            ing
            for ing in ingresses
            if (ing.ingress_class_name in ours)
            or (ing.ingress_class_name is None and serve_classless)
        ),
        key=_age_key,
    )


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


def _attach_canary(
    *,
    ingress: resources.Ingress,
    settings: options.CanarySettings,
    routes: list[model.Route],
    claimed: dict[tuple[str, str, bool], int],
) -> None:
    """Attach a canary Ingress's paths to the main routes they shadow (the first canary wins)."""
    for rule in ingress.rules:
        host = (rule.host or "").lower()
        for ing_path in rule.paths:
            index = claimed.get(_key(host, ing_path))
            if index is None or routes[index].canary is not None:
                continue
            routes[index] = dataclasses.replace(routes[index], canary=model.Canary(
                source=ingress.key, backend=_backend(ingress, ing_path.backend),
                settings=settings))


def _alias_routes(
    *, ingresses: list[resources.Ingress], served: list[resources.Ingress],
    routes: list[model.Route], problems: list[model.SourceProblem],
) -> list[model.Route]:
    """Copies of the aliased hosts' routes under each alias not taken by a rule or an
    earlier alias."""
    taken = {(rule.host or "").lower() for ing in served for rule in ing.rules}
    copies: list[model.Route] = []
    for ing in ingresses:
        aliases, _ = ingress_annotations.server_aliases(ing.annotations)
        hosts = {(rule.host or "").lower() for rule in ing.rules if rule.host}
        for alias in aliases:
            if alias in taken:
                problems.append(model.SourceProblem(
                    source=ing.key, reason=ALIAS_CONFLICT,
                    message=f"server-alias {alias!r} is already a host of an Ingress's rules "
                    "or another Ingress's alias; left out"))
                continue
            taken.add(alias)
            copies += (dataclasses.replace(route, host=alias) for route in routes
                       if route.host in hosts)
    return copies


def _www_twin_routes(
    *, ingresses: list[resources.Ingress], served: list[resources.Ingress]
) -> list[model.Route]:
    """Redirects from each host's www./bare twin, for the twins no Ingress has rules for."""
    taken = {(rule.host or "").lower() for ing in served for rule in ing.rules}
    twins = []
    for ing in ingresses:
        for rule in ing.rules:
            host = (rule.host or "").lower()
            if not host or host.startswith("*."):
                continue
            twin = host.removeprefix("www.") if host.startswith("www.") else "www." + host
            if twin in taken:
                continue
            taken.add(twin)
            # The backend is never reached: every request is redirected first.
            backend = rule.paths[0].backend if rule.paths else ing.default_backend
            if backend is None:
                continue
            twins.append(model.Route(
                source=ing.key, host=twin, path="/", exact=False, backend=_backend(ing, backend),
                options=options.RouteOptions(redirect=options.Redirect(
                    code=308, target=f"$scheme://{host}$request_uri"))))
    return twins


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
