"""The dashboard's JSON views: routes, certificates, orders and challenges, events.

Read-only, and never anything secret: Secrets are named, their data is not
read; Orders and Challenges show their names, state and step, not their keys,
CSRs or tokens. Each view is built per request from what the process already
holds: the store (status as `certctl status` shows it) and, where the data
plane runs, its current route set and the certificates it serves.

Which views a process offers depends on what it runs: `serve` all of them,
the cluster controller the certificates, orders, challenges and events (its
routes are compiled by the data plane), `certctl dataplane` the routes and
their certificates (it may not read Certificates or Orders).
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from certctl.admin.events import EventRecorder
from certctl.admin.server import NotOffered
from certctl.api import conditions, parsing, resources
from certctl.api.errors import InvalidObject
from certctl.api.resources import ObjectKey
from certctl.controllers.orders import FINAL_STATES
from certctl.routes import model
from certctl.store.interface import Object, Store

Json = dict[str, Any]

SECTIONS = ("routes", "certificates", "orders", "events")


@dataclass(frozen=True, kw_only=True)
class Sources:
    """What a process can show. None: not this process's to show."""

    process: str  # "serve", "controller", "dataplane"
    store: Store | None = None  # Certificates, Orders, Challenges
    routes: Callable[[], model.RouteSet] | None = None  # the data plane's current route set
    # Where the served Ingresses are read again, for their rules the route set left out
    # (another Ingress had the same host, path and match first).
    route_store: Store | None = None
    served_names: Callable[[], dict[str, ObjectKey]] | None = None  # name -> Secret served
    events: EventRecorder | None = None
    now: Callable[[], datetime.datetime] = lambda: datetime.datetime.now(datetime.UTC)


class Dashboard:
    def __init__(self, *, sources: Sources) -> None:
        self._sources = sources

    def summary(self) -> Json:
        offered = {
            "routes": self._sources.routes is not None,
            "certificates": self._sources.store is not None,
            "orders": self._sources.store is not None,
            "events": self._sources.events is not None,
        }
        return {"process": self._sources.process, "now": self._now(),
                "sections": [name for name in SECTIONS if offered[name]]}

    def view(self, name: str) -> Json:
        """The view `name` (one of SECTIONS); LookupError for another name, NotOffered when
        this process does not have it."""
        views: dict[str, Callable[[], Json]] = {
            "routes": self.routes, "certificates": self.certificates, "orders": self.orders,
            "events": self.events}
        if name not in views:
            raise LookupError(f"no view {name!r}; try summary, {', '.join(SECTIONS)}")
        return views[name]()

    # --- routes ----------------------------------------------------------------------

    def routes(self) -> Json:
        if self._sources.routes is None:
            raise NotOffered("routes are shown by the data plane's admin address "
                             "(certctl dataplane --metrics-port)")
        route_set = self._sources.routes()
        names = self._sources.served_names() if self._sources.served_names else {}
        problems: dict[ObjectKey, list[Json]] = {}
        for problem in route_set.problems:
            problems.setdefault(problem.source, []).append(
                {"reason": problem.reason, "message": problem.message})
        first: dict[tuple[str, bool, str, str], model.Route] = {}
        shown = []
        for route in route_set.routes:
            conditions_text = _conditions(route.conditions)
            key = (route.host, route.exact, _path_key(route.path, exact=route.exact),
                   conditions_text)
            winner = first.setdefault(key, route)
            shown.append(self._route_row(
                host=route.host, path=route.path, exact=route.exact,
                regex=route.pattern is not None, conditions=conditions_text,
                backend=_backends(route), source=route.source, winner=winner, names=names,
                problems=problems))
        for ingress in self._served_ingresses(route_set.served):
            for rule in ingress.rules:
                host = rule.host or ""
                for path in rule.paths:
                    exact = path.path_type == "Exact"
                    taken = first.get((host, exact, _path_key(path.path, exact=exact), ""))
                    if taken is None or taken.source == ingress.key:
                        continue
                    shown.append(self._route_row(
                        host=host, path=path.path, exact=exact, regex=False, conditions="",
                        backend=_backend(model.Backend(
                            namespace=ingress.namespace, service=path.backend.name,
                            port_number=path.backend.port_number,
                            port_name=path.backend.port_name)),
                        source=ingress.key, winner=taken, names=names, problems=problems))
        defaults = [{"hosts": list(default.hosts) or ["*"], "backend": _backend(default.backend),
                     "source": _source(default.source)} for default in route_set.defaults]
        served = {key for key in route_set.served}
        unserved = [{"source": _source(key), "problems": found}
                    for key, found in sorted(problems.items(), key=lambda item: str(item[0]))
                    if key not in served]
        return {"now": self._now(), "routes": shown, "defaults": defaults,
                "notServed": unserved}

    @staticmethod
    def _route_row(*, host: str, path: str, exact: bool, regex: bool, conditions: str,
                   backend: str, source: ObjectKey, winner: model.Route,
                   names: dict[str, ObjectKey],
                   problems: dict[ObjectKey, list[Json]]) -> Json:
        conflict = None
        if winner.source != source:
            conflict = (f"not served: {_describe(winner.source)} has the same host, path and "
                        "match, and comes first (the oldest Ingress wins)")
        return {
            "host": host or "*",
            "path": path,
            "match": "Regex" if regex else "Exact" if exact else "Prefix",
            "conditions": conditions,
            "backend": backend,
            "tlsSecret": _secret_for(host, names),
            "source": _source(source),
            "conflict": conflict,
            "problems": problems.get(source, []),
        }

    def _served_ingresses(self, served: frozenset[ObjectKey]) -> list[resources.Ingress]:
        """The served Ingresses as parsed models (one that no longer parses is left out:
        it is not served either)."""
        if self._sources.route_store is None:
            return []
        found = []
        for obj in self._sources.route_store.list(kind="Ingress"):
            try:
                ingress = parsing.parse_ingress(obj)
            except InvalidObject:
                continue
            if ingress.key in served:
                found.append(ingress)
        return sorted(found, key=lambda ingress: (ingress.namespace, ingress.name))

    # --- certificates ----------------------------------------------------------------

    def certificates(self) -> Json:
        store = self._store()
        shown = []
        for obj in sorted(store.list(kind="Certificate"), key=_name_order):
            spec, status = obj.get("spec") or {}, obj.get("status") or {}
            ready = conditions.get_condition(status.get("conditions") or [], "Ready") or {}
            issuing = conditions.get_condition(status.get("conditions") or [], "Issuing")
            ref = spec.get("issuerRef") or {}
            shown.append({
                **_identity(obj),
                "dnsNames": list(spec.get("dnsNames") or []),
                "ipAddresses": list(spec.get("ipAddresses") or []),
                "secretName": spec.get("secretName"),
                "issuer": {"kind": ref.get("kind", "Issuer"), "name": ref.get("name")},
                "notBefore": status.get("notBefore"),
                "notAfter": status.get("notAfter"),
                "renewalTime": status.get("renewalTime"),
                "renewalTimeSource": status.get("renewalTimeSource"),
                "ready": ready.get("status", "Unknown"),
                "reason": ready.get("reason"),
                "message": ready.get("message"),
                "issuing": bool(issuing and issuing.get("status") == "True"),
                "failedIssuanceAttempts": status.get("failedIssuanceAttempts"),
                "revision": status.get("revision"),
            })
        return {"now": self._now(), "certificates": shown}

    # --- orders and challenges -------------------------------------------------------

    def orders(self) -> Json:
        store = self._store()
        orders = []
        for obj in sorted(store.list(kind="Order"), key=_name_order):
            status = obj.get("status") or {}
            if status.get("state") in FINAL_STATES:
                continue
            owner = _owner(obj, kind="Certificate")
            orders.append({
                **_identity(obj),
                "certificate": owner,
                "dnsNames": list((obj.get("spec") or {}).get("dnsNames") or []),
                "state": status.get("state") or "new",
                "step": _order_step(status),
                "reason": status.get("reason"),
                "created": obj["metadata"].get("creationTimestamp"),
            })
        challenges = []
        for obj in sorted(store.list(kind="Challenge"), key=_name_order):
            spec, status = obj.get("spec") or {}, obj.get("status") or {}
            if status.get("state") in FINAL_STATES:
                continue
            challenges.append({
                **_identity(obj),
                "order": _owner(obj, kind="Order"),
                "dnsName": spec.get("dnsName"),
                "type": spec.get("type"),
                "state": status.get("state") or "new",
                "step": _challenge_step(status),
                "reason": status.get("reason"),
            })
        return {"now": self._now(), "orders": orders, "challenges": challenges}

    # --- events ----------------------------------------------------------------------

    def events(self) -> Json:
        if self._sources.events is None:
            raise NotOffered("this process emits no events")
        return {"now": self._now(), "events": [
            {"time": conditions.format_time(event.time), "type": event.type,
             "reason": event.reason, "message": event.message,
             "object": {"kind": event.kind, "namespace": event.namespace, "name": event.name}}
            for event in self._sources.events.recent()]}

    # --- helpers ---------------------------------------------------------------------

    def _store(self) -> Store:
        if self._sources.store is None:
            raise NotOffered("certificates, orders and challenges are shown by the "
                             "controller's admin address (certctl controller --metrics-port)")
        return self._sources.store

    def _now(self) -> str:
        return conditions.format_time(self._sources.now())


def _order_step(status: Object) -> str:
    """What an order in flight waits for, in the words of RFC 8555's states."""
    state = status.get("state")
    if state == "pending":
        return "authorizing: challenges being answered"
    if state == "ready":
        return "finalizing: CSR sent"
    if state == "processing":
        return "issuing: the CA is signing"
    return "placing the order"


def _challenge_step(status: Object) -> str:
    if status.get("processing"):
        return "validating: the CA is checking"
    if status.get("presented"):
        return "presented: self-checking before asking the CA"
    return "presenting"


def _path_key(path: str, *, exact: bool) -> str:
    """A path as the route table keys it: Prefix paths without their trailing slash."""
    return path if exact else path.rstrip("/")


def _identity(obj: Object) -> Json:
    metadata = obj.get("metadata") or {}
    return {"namespace": metadata.get("namespace"), "name": metadata.get("name")}


def _name_order(obj: Object) -> tuple[str, str]:
    metadata = obj.get("metadata") or {}
    return (str(metadata.get("namespace") or ""), str(metadata.get("name") or ""))


def _owner(obj: Object, *, kind: str) -> str | None:
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("kind") == kind:
            return str(ref.get("name"))
    return None


def _source(key: ObjectKey) -> Json:
    return {"kind": key.kind, "namespace": key.namespace, "name": key.name}


def _describe(key: ObjectKey) -> str:
    return f"{key.kind} {key.namespace}/{key.name}" if key.namespace else f"{key.kind} {key.name}"


def _backend(backend: model.Backend | None) -> str:
    if backend is None:
        return "(invalid: answered 500)"
    port = backend.port_number if backend.port_number is not None else backend.port_name
    return f"{backend.namespace}/{backend.service}:{port}"


def _backends(route: model.Route) -> str:
    if not route.backends:
        text = _backend(route.backend)
    else:
        total = sum(weighted.weight for weighted in route.backends) or 1
        text = ", ".join(f"{_backend(weighted.backend)} ({100 * weighted.weight // total}%)"
                         for weighted in route.backends)
    if route.canary is not None:
        text += f"; canary {_backend(route.canary.backend)} from {_describe(route.canary.source)}"
    return text


def _conditions(found: model.RequestConditions | None) -> str:
    if found is None:
        return ""
    parts = []
    if found.method is not None:
        parts.append(f"method {found.method.decode()}")
    parts += [f"header {name.decode()}: {value.decode()}" for name, value in found.headers]
    parts += [f"query {name.decode()}={value.decode()}" for name, value in found.query]
    if found.scheme is not None:
        parts.append(f"{found.scheme.decode()} only")
    return ", ".join(parts)


def _secret_for(host: str, names: dict[str, ObjectKey]) -> str | None:
    """The Secret the data plane serves for `host`: its exact name, else a wildcard."""
    found = names.get(host)
    if found is None and "." in host and not host.startswith("*."):
        found = names.get("*." + host.split(".", 1)[1])
    if found is None:
        return None
    return f"{found.namespace}/{found.name}"
