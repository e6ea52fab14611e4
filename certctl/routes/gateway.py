"""The Gateway API route source: Gateways of our GatewayClasses and their HTTPRoutes.

Pure, like the Ingress source: objects in, the neutral route model and the
statuses the spec asks for out (Envoy Gateway's first stage: the reasons are
known here, so the conditions are decided here; `runtime.dataplane_feed`
only writes them). Semantics (GATEWAY-HTTP profile, DESIGN.md):

- A Gateway is ours when its GatewayClass's controllerName is ours. HTTP
  listeners are served on the data plane's HTTP port, HTTPS ones
  (`tls.mode: Terminate`) on its HTTPS port, whatever port number they
  name; other protocols are not accepted (UnsupportedProtocol). Listeners of
  one port with different protocols conflict (ProtocolConflict), with the
  same protocol and hostname too (HostnameConflict): conflicted listeners
  are not programmed and take no routes.
- An HTTPS listener's certificateRefs must be core Secrets in the
  Gateway's namespace, or in another one whose ReferenceGrant lets the
  Gateway's namespace refer to them (RefNotPermitted otherwise), and must
  exist (InvalidCertificateRef): the listener is still programmed, its
  resolvable Secrets served by SNI.
- A ListenerSet (gateway.networking.k8s.io/v1, standard since v1.5) adds
  listeners to its parent Gateway when the Gateway allows it
  (`spec.allowedListeners.namespaces.from` Same, All or Selector; None, the
  default, refuses it: NotAllowed) and is accepted (ParentNotAccepted
  otherwise). Its listeners compile like the Gateway's, after them and after
  older ListenerSets': one conflicting with an earlier listener is the one
  conflicted. Its certificateRefs need ReferenceGrants from ListenerSets
  (a Gateway's do not extend to it). Routes attach to its listeners by a
  parentRef of kind ListenerSet; a parentRef naming the Gateway attaches to
  the Gateway's own listeners only. The Gateway's status counts the
  ListenerSets accepted (`attachedListenerSets`).
- An HTTPRoute attaches to each parentRef that names our Gateway (and, with
  `sectionName` / `port`, that listener): listeners allow routes from the
  Gateway's namespace (Same, the default), All, or the namespaces whose
  labels the listener's selector selects (Selector; a namespace certctl has
  not seen, as `serve` without its manifest, has only its
  `kubernetes.io/metadata.name` label);
  hostnames are the intersection of the listener's and the route's, the
  more specific side of a wildcard winning. A parentRef naming a Gateway
  that is not ours gets no status from us and no routes.
- Rules compile into routes, one per (hostname, match); of two routes with
  the same host, path and match type, the one with a method match comes
  first, then more header matches, then more query matches, then the
  oldest route, then namespace/name, then rule order (the spec's
  precedence; the longest path and Exact before PathPrefix are the route
  table's own order). Ingress routes come before all of them.
- backendRefs are Services (port required) in the route's namespace, or in
  another one a ReferenceGrant opens to HTTPRoutes of the route's; others
  are invalid and answer 500 for their weight's share (ResolvedRefs False
  with the spec's reason). A rule without backends answers 500 unless it
  redirects.
- The Service port's appProtocol picks how a backend is spoken to (GEP-1911):
  unset or `http` HTTP/1.1; `kubernetes.io/h2c` HTTP/2 cleartext with prior
  knowledge (backend-protocol H2C's path); `kubernetes.io/ws` HTTP/1.1 and
  `kubernetes.io/wss` TLS, unverified like backend-protocol HTTPS (certctl has
  no BackendTLSPolicy), WebSocket upgrades passed through as for every
  HTTP/1.1 backend. Any other value makes the backend invalid (ResolvedRefs
  False, UnsupportedProtocol). The protocol is a route option, one per rule: a
  backend speaking another protocol than the rule's first usable one is
  invalid too.
- An HTTPRoute annotated `certctl.io/certificate: "true"` (the opt-in of
  cert-manager #6051 and #7473) asks for a Certificate for the hostnames it
  is served under on HTTPS listeners of ours: the route's hostnames as the
  listeners admit them, never more. Once its Secret exists it is served by
  SNI, like a listener's. gateway-shim creates the Certificate from
  `Compiled.route_certificates`.
- A GRPCRoute (standard since v1.1) attaches as an HTTPRoute does, to HTTP and
  HTTPS listeners that take its kind (both kinds unless allowedRoutes.kinds
  says otherwise). Its method matches become paths (`certctl.routes.grpc_route`),
  its header matches and header modifier filters are an HTTPRoute's, its
  backends speak gRPC over HTTP/2 cleartext unless their Service port's
  appProtocol says otherwise (GEP-1911: only `kubernetes.io/h2c` fits).
  An HTTPRoute and a GRPCRoute must not share a hostname on one listener
  (GEP-1016): the newer route of the two is not Accepted there
  (NotAllowedByListeners).
- Implemented filters: RequestHeaderModifier, ResponseHeaderModifier (set
  and add; add replaces a header the backend sends), RequestRedirect,
  URLRewrite, CORS (the data plane answers preflights itself, with the
  Gateway API's semantics: `options.GatewayCorsPolicy`). Any other filter, a
  RegularExpression match, or a response header removal leaves the route not
  Accepted (UnsupportedValue).
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from certctl.api import gateway as gw
from certctl.api import resources
from certctl.api.errors import InvalidObject
from certctl.api.resources import ObjectKey
from certctl.routes import grpc_route, model, options

CONTROLLER_NAME = "certctl.io/gateway-controller"
ConditionStatus = Literal["True", "False", "Unknown"]
_NEWEST = datetime.datetime.max.replace(tzinfo=datetime.UTC)
_SCHEMES = {"HTTP": b"http", "HTTPS": b"https"}
_IMPLEMENTED_FILTERS = frozenset({"RequestHeaderModifier", "ResponseHeaderModifier",
                                  "RequestRedirect", "URLRewrite", "CORS"})


@dataclass(frozen=True, kw_only=True)
class _BackendProtocol:
    """How the data plane speaks to a backend: the route options of the same names."""

    backend_h2: bool = False
    backend_tls: bool = False


_HTTP1 = _BackendProtocol()
# Service appProtocol -> protocol (GEP-1911's Kubernetes standard application protocols,
# and IANA's `http` as most charts write it), by route kind: gRPC needs HTTP/2.
_H2C = _BackendProtocol(backend_h2=True)
_GRPC_APP_PROTOCOLS = {None: _H2C, "kubernetes.io/h2c": _H2C}
_HTTP_APP_PROTOCOLS = {
    None: _HTTP1,
    "http": _HTTP1,
    "kubernetes.io/h2c": _H2C,
    "kubernetes.io/ws": _HTTP1,
    "kubernetes.io/wss": _BackendProtocol(backend_tls=True),
}


@dataclass(frozen=True, kw_only=True)
class Condition:
    type: str
    status: ConditionStatus
    reason: str
    message: str


@dataclass(frozen=True, kw_only=True)
class ListenerStatus:
    name: str
    supported_kinds: tuple[gw.RouteGroupKind, ...]
    attached_routes: int
    conditions: tuple[Condition, ...]


@dataclass(frozen=True, kw_only=True)
class GatewayStatus:
    """A Gateway's status, or a ListenerSet's (`key.kind`; no `attached_listener_sets`)."""

    key: ObjectKey
    generation: int
    conditions: tuple[Condition, ...]
    listeners: tuple[ListenerStatus, ...]
    attached_listener_sets: int | None = None


@dataclass(frozen=True, kw_only=True)
class RouteParentStatus:
    parent: gw.ParentReference
    conditions: tuple[Condition, ...]


@dataclass(frozen=True, kw_only=True)
class RouteStatus:
    key: ObjectKey
    generation: int
    parents: tuple[RouteParentStatus, ...]


@dataclass(frozen=True, kw_only=True)
class ClassStatus:
    name: str
    generation: int
    conditions: tuple[Condition, ...]


@dataclass(frozen=True, kw_only=True)
class RouteCertificate:
    """The Certificate an HTTPRoute opted in to: its Secret, and the hostnames HTTPS
    listeners of ours serve the route under."""

    route: ObjectKey
    secret_name: str
    hosts: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class Compiled:
    """What the Gateway API objects come to: routes, statuses, and the Secrets to serve."""

    routes: model.RouteSet
    classes: tuple[ClassStatus, ...] = ()
    gateways: tuple[GatewayStatus, ...] = ()
    listener_sets: tuple[GatewayStatus, ...] = ()
    http_routes: tuple[RouteStatus, ...] = ()
    grpc_routes: tuple[RouteStatus, ...] = ()
    secrets: frozenset[ObjectKey] = frozenset()  # listeners' and routes' Secrets, resolved
    route_certificates: tuple[RouteCertificate, ...] = ()


Route = gw.HTTPRoute | gw.GRPCRoute
SecretExists = Callable[[str, str], bool]  # (namespace, name) -> a kubernetes.io/tls Secret
_Compiled = list[tuple["_Listener", tuple[Condition, ...], tuple[gw.RouteGroupKind, ...]]]


@dataclass(frozen=True, kw_only=True)
class _Listener:
    """A listener as compiled: whose it is (a Gateway or a ListenerSet), whether it takes
    routes, and from whom."""

    owner: ObjectKey
    spec: gw.Listener
    ready: bool  # accepted, not conflicted: takes routes
    kinds: frozenset[str]  # the route kinds it takes


def compile_gateways(
    *,
    classes: Iterable[gw.GatewayClass],
    gateways: Iterable[gw.Gateway],
    http_routes: Iterable[gw.HTTPRoute],
    grants: Iterable[gw.ReferenceGrant],
    services: Iterable[resources.Service],
    secret_exists: SecretExists,
    namespaces: Iterable[gw.Namespace] = (),
    listener_sets: Iterable[gw.ListenerSet] = (),
    grpc_routes: Iterable[gw.GRPCRoute] = (),
    controller_name: str = CONTROLLER_NAME,
) -> Compiled:
    ours = {c.name: c for c in classes if c.controller_name == controller_name}
    labels = {found.name: dict(found.labels) for found in namespaces}

    def labels_of(namespace: str) -> dict[str, str]:
        return labels.get(namespace) or {gw.NAMESPACE_NAME_LABEL: namespace}

    grant_list = list(grants)
    service_keys = {(s.namespace, s.name): s for s in services}
    served_gateways = sorted((g for g in gateways if g.gateway_class_name in ours), key=_age)
    sets_by_parent: dict[ObjectKey, list[gw.ListenerSet]] = {}
    for listener_set in sorted(listener_sets, key=_age):
        if listener_set.parent_key is not None:
            sets_by_parent.setdefault(listener_set.parent_key, []).append(listener_set)
    listeners: dict[ObjectKey, list[_Listener]] = {}  # by Gateway or ListenerSet
    statuses: list[tuple[gw.Gateway | gw.ListenerSet, tuple[Condition, ...], _Compiled]] = []
    attached_sets: dict[ObjectKey, int] = {}
    secrets: set[ObjectKey] = set()
    for gateway in served_gateways:
        compiled = _compile_listeners(owner=gateway, grants=grant_list,
                                      secret_exists=secret_exists, secrets=secrets)
        listeners[gateway.key] = [entry for entry, _, _ in compiled]
        valid = any(entry.ready for entry, _, _ in compiled)
        statuses.append((gateway, (
            Condition(type="Accepted", status="True" if valid else "False",
                      reason="Accepted" if valid else "ListenersNotValid",
                      message="served by certctl's data plane" if valid
                      else "no listener is valid"),
            Condition(type="Programmed", status="True" if valid else "False",
                      reason="Programmed" if valid else "Invalid",
                      message="listeners are live" if valid else "no listener is valid"),
        ), compiled))
        # ListenerSets: after the Gateway's own listeners, oldest first (the spec's order).
        earlier = list(gateway.listeners)
        attached_sets[gateway.key] = 0
        for listener_set in sets_by_parent.get(gateway.key, ()):
            refused = _listener_set_refused(gateway=gateway, listener_set=listener_set,
                                            gateway_valid=valid,
                                            labels=labels_of(listener_set.namespace))
            if refused is not None:
                statuses.append((listener_set, refused, []))
                listeners[listener_set.key] = []  # its routes: NoMatchingParent
                continue
            compiled = _compile_listeners(owner=listener_set, grants=grant_list,
                                          secret_exists=secret_exists, secrets=secrets,
                                          earlier=earlier)
            earlier += listener_set.listeners
            listeners[listener_set.key] = [entry for entry, _, _ in compiled]
            ready = [entry.ready for entry, _, _ in compiled]
            accepted = any(ready)
            attached_sets[gateway.key] += accepted
            reason = "Accepted" if all(ready) else "ListenersNotValid"
            statuses.append((listener_set, (
                Condition(type="Accepted", status="True" if accepted else "False",
                          reason=reason, message="attached to Gateway "
                          f"{gateway.namespace}/{gateway.name}" if accepted
                          else "no listener is valid"),
                Condition(type="Programmed", status="True" if accepted else "False",
                          reason="Programmed" if accepted else "ListenersNotValid",
                          message="listeners are live" if accepted
                          else "no listener is valid"),
            ), compiled))

    attached: dict[tuple[ObjectKey, str], int] = {}
    routes: list[tuple[tuple[object, ...], model.Route]] = []
    route_statuses: list[RouteStatus] = []
    served: set[ObjectKey] = {g.key for g in served_gateways}
    route_certificates = []
    # Hostnames attached to each listener, by route kind: HTTPRoutes' and GRPCRoutes'
    # must not meet (GEP-1016); routes come oldest first, so the newer one is refused.
    kind_hosts: dict[tuple[ObjectKey, str], dict[str, set[str]]] = {}
    every_route: list[Route] = [*http_routes, *grpc_routes]
    for route in sorted(every_route, key=_age):
        parents = []
        https_hosts: list[str] = []
        for parent in route.parent_refs:
            if parent.group != gw.GROUP or parent.kind not in ("Gateway", "ListenerSet"):
                continue
            found = listeners.get(ObjectKey(kind=parent.kind,
                                            namespace=parent.namespace or route.namespace,
                                            name=parent.name))
            if found is None:
                continue  # not our Gateway (or none at all): not ours to answer for
            parents.append(_attach(route=route, parent=parent, listeners=found,
                                   namespace_labels=labels_of(route.namespace),
                                   grants=grant_list, services=service_keys,
                                   attached=attached, routes=routes, served=served,
                                   https_hosts=https_hosts, kind_hosts=kind_hosts))
        certificate = _route_certificate(route, https_hosts) \
            if isinstance(route, gw.HTTPRoute) else None
        if certificate is not None:
            route_certificates.append(certificate)
            if secret_exists(route.namespace, certificate.secret_name):
                secrets.add(ObjectKey(kind="Secret", namespace=route.namespace,
                                      name=certificate.secret_name))
        if parents:
            route_statuses.append(RouteStatus(key=route.key, generation=route.generation,
                                              parents=tuple(parents)))

    gateway_statuses: list[GatewayStatus] = []
    set_statuses: list[GatewayStatus] = []
    for owner, owner_conditions, compiled in statuses:
        status = GatewayStatus(
            key=owner.key, generation=owner.generation, conditions=owner_conditions,
            listeners=tuple(ListenerStatus(
                name=entry.spec.name, supported_kinds=kinds,
                attached_routes=attached.get((owner.key, entry.spec.name), 0),
                conditions=listener_conditions) for entry, listener_conditions, kinds in compiled),
            attached_listener_sets=attached_sets.get(owner.key))
        (gateway_statuses if owner.key.kind == "Gateway" else set_statuses).append(status)
    routes.sort(key=lambda item: item[0])
    unique: dict[model.Route, None] = dict.fromkeys(route for _, route in routes)
    return Compiled(
        routes=model.RouteSet(routes=tuple(unique), served=frozenset(served)),
        classes=tuple(ClassStatus(name=c.name, generation=c.generation, conditions=(Condition(
            type="Accepted", status="True", reason="Accepted",
            message=f"handled by {controller_name}"),)) for c in ours.values()),
        gateways=tuple(gateway_statuses), listener_sets=tuple(set_statuses),
        http_routes=tuple(r for r in route_statuses if r.key.kind == "HTTPRoute"),
        grpc_routes=tuple(r for r in route_statuses if r.key.kind == "GRPCRoute"),
        secrets=frozenset(secrets),
        route_certificates=tuple(route_certificates))


def _listener_set_refused(*, gateway: gw.Gateway, listener_set: gw.ListenerSet,
                          gateway_valid: bool,
                          labels: dict[str, str]) -> tuple[Condition, ...] | None:
    """The conditions of a ListenerSet its Gateway does not take, None when it does."""
    if not gateway_valid:
        reason, programmed, message = ("ParentNotAccepted", "ParentNotProgrammed",
                                       f"Gateway {gateway.namespace}/{gateway.name} is not "
                                       "accepted")
    elif allows_listener_set(gateway=gateway, listener_set=listener_set, labels=labels):
        return None
    else:
        reason, programmed, message = ("NotAllowed", "NotAllowed", (
            f"Gateway {gateway.namespace}/{gateway.name} does not allow ListenerSets from "
            f"namespace {listener_set.namespace} (spec.allowedListeners.namespaces.from: "
            f"{gateway.allowed_listeners_from})"))
    return (Condition(type="Accepted", status="False", reason=reason, message=message),
            Condition(type="Programmed", status="False", reason=programmed, message=message))


def allows_listener_set(*, gateway: gw.Gateway, listener_set: gw.ListenerSet,
                        labels: dict[str, str]) -> bool:
    """Whether the Gateway's allowedListeners take a ListenerSet whose namespace has
    `labels`."""
    allowed = gateway.allowed_listeners_from
    return allowed == "All" or (allowed == "Same" and listener_set.namespace == gateway.namespace) \
        or (allowed == "Selector" and gateway.allowed_listeners_selector is not None
            and gateway.allowed_listeners_selector.matches(labels))


def _route_certificate(route: gw.HTTPRoute, https_hosts: list[str]) -> RouteCertificate | None:
    """The route's opt-in Certificate, when it asks for one (validly: gateway-shim reports a
    bad annotation) and HTTPS listeners of ours admit some of its hostnames."""
    try:
        secret_name = gw.route_certificate_secret(route)
    except InvalidObject:
        return None
    hosts = tuple(dict.fromkeys(host for host in https_hosts if host))
    if secret_name is None or not hosts:
        return None
    return RouteCertificate(route=route.key, secret_name=secret_name, hosts=hosts)


def _conflict(listener: gw.Listener, others: Iterable[gw.Listener]) -> tuple[str, str] | None:
    """Why `listener` conflicts with one of `others` (same port), None if it does not."""
    same_port = [other for other in others if other.port == listener.port]
    if any(other.protocol != listener.protocol for other in same_port):
        return ("ProtocolConflict",
                f"another listener on port {listener.port} uses another protocol")
    if any(other.hostname == listener.hostname for other in same_port):
        return ("HostnameConflict", f"another listener on port {listener.port} has the "
                f"hostname {listener.hostname or '(none)'}")
    return None


def _compile_listeners(
    *, owner: gw.Gateway | gw.ListenerSet, grants: list[gw.ReferenceGrant],
    secret_exists: SecretExists, secrets: set[ObjectKey],
    earlier: Sequence[gw.Listener] = (),
) -> _Compiled:
    """Each listener with its conditions (the spec's reasons) and the route kinds it takes.

    Listeners of one owner that conflict are all conflicted; a ListenerSet's listener that
    conflicts with one `earlier` (its Gateway's, an older ListenerSet's) is, the earlier
    one keeps its place.
    """
    compiled: _Compiled = []
    for listener in owner.listeners:
        conflict = _conflict(listener, [other for other in owner.listeners
                                        if other is not listener]) or _conflict(
            listener, earlier)
        supported = listener.protocol in _SCHEMES and (
            listener.protocol == "HTTP" or listener.tls_mode == "Terminate")
        kinds = tuple(k for k in listener.allowed_kinds
                      if k.group == gw.GROUP and k.kind in gw.ROUTE_KINDS) \
            if listener.allowed_kinds else tuple(
                gw.RouteGroupKind(group=gw.GROUP, kind=kind) for kind in gw.ROUTE_KINDS)
        resolved = ("ResolvedRefs", "references are resolved")
        if listener.allowed_kinds and len(kinds) < len(listener.allowed_kinds):
            resolved = ("InvalidRouteKinds", "only HTTPRoute and GRPCRoute "
                        "(gateway.networking.k8s.io) are supported in allowedRoutes.kinds")
        if listener.protocol == "HTTPS" and supported:
            problem = _resolve_certificates(owner=owner, listener=listener, grants=grants,
                                            secret_exists=secret_exists, secrets=secrets)
            if problem is not None:
                resolved = problem
        conditions = [
            Condition(type="Accepted", status="True" if supported else "False",
                      reason="Accepted" if supported else "UnsupportedProtocol",
                      message="accepted" if supported else
                      f"protocol {listener.protocol}"
                      f"{' with tls.mode ' + listener.tls_mode if listener.tls_mode else ''} "
                      "is not served by certctl: HTTP, and HTTPS with tls.mode Terminate"),
            Condition(type="Conflicted", status="True" if conflict else "False",
                      reason=conflict[0] if conflict else "NoConflicts",
                      message=conflict[1] if conflict else "no conflicts"),
            Condition(type="ResolvedRefs", status="True" if resolved[0] == "ResolvedRefs"
                      else "False", reason=resolved[0], message=resolved[1]),
        ]
        ready = supported and conflict is None and bool(kinds)
        conditions.append(Condition(
            type="Programmed", status="True" if ready else "False",
            reason="Programmed" if ready else "Invalid",
            message="serving" if ready else "not served: see the other conditions"))
        compiled.append((_Listener(owner=owner.key, spec=listener, ready=ready,
                                   kinds=frozenset(k.kind for k in kinds)),
                         tuple(conditions), kinds if supported else ()))
    return compiled


def _resolve_certificates(
    *, owner: gw.Gateway | gw.ListenerSet, listener: gw.Listener,
    grants: list[gw.ReferenceGrant], secret_exists: SecretExists, secrets: set[ObjectKey],
) -> tuple[str, str] | None:
    """Adds the listener's servable Secrets to `secrets`; the first problem, if any. A
    ListenerSet needs grants of its own: its Gateway's do not extend to it."""
    if not listener.certificate_refs:
        return ("InvalidCertificateRef", "tls.certificateRefs is empty: nothing to serve")
    problem = None
    kind = owner.key.kind
    for ref in listener.certificate_refs:
        namespace = ref.namespace or owner.namespace
        where = f"Secret {namespace}/{ref.name}"
        if ref.group != "" or ref.kind != "Secret":
            problem = problem or ("InvalidCertificateRef",
                                  f"{ref.kind} ({ref.group or 'core'}) is not a core Secret")
            continue
        if namespace != owner.namespace and not any(
            g.namespace == namespace and g.permits(
                from_group=gw.GROUP, from_kind=kind, from_namespace=owner.namespace,
                to_group="", to_kind="Secret", to_name=ref.name) for g in grants):
            problem = problem or ("RefNotPermitted", f"{where} is in another namespace and no "
                                  f"ReferenceGrant there allows {kind}s of {owner.namespace}")
            continue
        if not secret_exists(namespace, ref.name):
            problem = problem or ("InvalidCertificateRef",
                                  f"{where} does not exist or is not a kubernetes.io/tls Secret")
            continue
        secrets.add(ObjectKey(kind="Secret", namespace=namespace, name=ref.name))
    return problem


def _attach(
    *,
    route: Route,
    parent: gw.ParentReference,
    listeners: list[_Listener],
    namespace_labels: dict[str, str],
    grants: list[gw.ReferenceGrant],
    services: dict[tuple[str, str], resources.Service],
    attached: dict[tuple[ObjectKey, str], int],
    routes: list[tuple[tuple[object, ...], model.Route]],
    served: set[ObjectKey],
    https_hosts: list[str],
    kind_hosts: dict[tuple[ObjectKey, str], dict[str, set[str]]],
) -> RouteParentStatus:
    """One parentRef of our Gateway: its status, and its routes when accepted (and the
    hostnames it is served under by HTTPS listeners added to `https_hosts`)."""
    candidates = [entry for entry in listeners
                  if (parent.section_name is None or entry.spec.name == parent.section_name)
                  and (parent.port is None or entry.spec.port == parent.port)]
    resolved = _resolved_refs(route=route, grants=grants, services=services)
    if not candidates:
        return _parent_status(parent, ("NoMatchingParent", f"no listener of the {parent.kind} "
                                       "matches sectionName/port (a ListenerSet its Gateway "
                                       "did not accept has none)"), resolved)
    allowed = [entry for entry in candidates
               if entry.ready and route.KIND in entry.kinds
               and _allows(entry, route, namespace_labels)]
    if not allowed:
        return _parent_status(parent, ("NotAllowedByListeners", "no ready listener allows "
                                       f"{route.KIND}s from namespace {route.namespace}"),
                              resolved)
    other_kind = "GRPCRoute" if route.KIND == "HTTPRoute" else "HTTPRoute"
    by_listener = [(entry, _intersect(entry.spec.hostname, route.hostnames))
                   for entry in allowed]
    for entry, found in by_listener:
        taken = kind_hosts.get((entry.owner, entry.spec.name), {}).get(other_kind, set())
        shared = next((host for host in found for other in taken
                       if _hosts_meet(host, other)), None)
        if shared is not None:
            return _parent_status(parent, ("NotAllowedByListeners", (
                f"listener {entry.spec.name} already serves {other_kind}s for "
                f"{shared or 'every hostname'}: an HTTPRoute and a GRPCRoute may not share a "
                "hostname on one listener (GEP-1016)")), resolved)
    hosts: dict[str, set[bytes]] = {}  # effective hostname -> schemes of its listeners
    for entry, found in by_listener:
        if found:
            key = (entry.owner, entry.spec.name)
            attached[key] = attached.get(key, 0) + 1
        for host in found:
            hosts.setdefault(host, set()).add(_SCHEMES[entry.spec.protocol])
    if not hosts:
        return _parent_status(parent, ("NoMatchingListenerHostname", "no hostname of the route "
                                       "matches a listener's"), resolved)
    unsupported = _unsupported(route)
    if unsupported is not None:
        return _parent_status(parent, ("UnsupportedValue", unsupported), resolved)
    for entry, found in by_listener:  # served: routes of the other kind must keep off
        kind_hosts.setdefault((entry.owner, entry.spec.name), {}).setdefault(
            route.KIND, set()).update(found)
    served.add(route.key)
    https_hosts.extend(host for host, schemes in hosts.items() if b"https" in schemes)
    for host, schemes in hosts.items():
        scheme = None if len(schemes) > 1 else next(iter(schemes))
        routes.extend(_rule_routes(route=route, host=host, scheme=scheme, grants=grants,
                                   services=services))
    return _parent_status(parent, None, resolved)


def _parent_status(parent: gw.ParentReference, refused: tuple[str, str] | None,
                   resolved: tuple[str, str]) -> RouteParentStatus:
    return RouteParentStatus(parent=parent, conditions=(
        Condition(type="Accepted", status="False" if refused else "True",
                  reason=refused[0] if refused else "Accepted",
                  message=refused[1] if refused else "attached"),
        Condition(type="ResolvedRefs", status="True" if resolved[0] == "ResolvedRefs"
                  else "False", reason=resolved[0], message=resolved[1])))


def _allows(entry: _Listener, route: Route, namespace_labels: dict[str, str]) -> bool:
    spec = entry.spec
    if spec.allowed_from == "All":
        return True
    if spec.allowed_from == "Same":
        return route.namespace == entry.owner.namespace
    return spec.allowed_selector is not None and spec.allowed_selector.matches(
        namespace_labels)


def _intersect(listener: str | None, hostnames: tuple[str, ...]) -> list[str]:
    """The hostnames a route serves on a listener: "" for every host."""
    if listener is None:
        return list(hostnames) or [""]
    if not hostnames:
        return [listener]
    found = []
    for host in hostnames:
        if host == listener or _covers(listener, host):
            found.append(host)
        elif _covers(host, listener):
            found.append(listener)
    return list(dict.fromkeys(found))


def _hosts_meet(one: str, other: str) -> bool:
    """Whether two effective hostnames ("" for every host) have a host in common."""
    return one == other or not one or not other or _covers(one, other) or _covers(other, one)


def _covers(wildcard: str, host: str) -> bool:
    """`*.example.com` covers `a.example.com`, `a.b.example.com` and `*.a.example.com`."""
    return wildcard.startswith("*.") and host.endswith(wildcard[1:]) and host != wildcard


def _unsupported(route: Route) -> str | None:
    if isinstance(route, gw.GRPCRoute):
        return _grpc_unsupported(route)
    for index, rule in enumerate(route.rules):
        at = f"spec.rules[{index}]"
        for filter_ in (*rule.filters, *(f for b in rule.backend_refs for f in b.filters)):
            if filter_.type not in _IMPLEMENTED_FILTERS:
                return f"{at}: filter {filter_.type} is not supported by certctl"
            modifier = filter_.response_header_modifier
            if modifier is not None and modifier.remove:
                return f"{at}: ResponseHeaderModifier.remove is not supported by certctl"
        if any(b.filters for b in rule.backend_refs):
            return f"{at}: filters on backendRefs are not supported by certctl"
        for match in rule.matches:
            if match.path_type == "RegularExpression" or any(
                    m.type == "RegularExpression" for m in (*match.headers,
                                                            *match.query_params)):
                return f"{at}: RegularExpression matches are not supported by certctl"
    return None


def _grpc_unsupported(route: gw.GRPCRoute) -> str | None:
    for index, rule in enumerate(route.rules):
        at = f"spec.rules[{index}]"
        for filter_ in (*rule.filters, *(f for b in rule.backend_refs for f in b.filters)):
            if filter_.type not in ("RequestHeaderModifier", "ResponseHeaderModifier"):
                return f"{at}: filter {filter_.type} is not supported by certctl for GRPCRoutes"
            modifier = filter_.response_header_modifier
            if modifier is not None and modifier.remove:
                return f"{at}: ResponseHeaderModifier.remove is not supported by certctl"
        if any(b.filters for b in rule.backend_refs):
            return f"{at}: filters on backendRefs are not supported by certctl"
        if any(h.type == "RegularExpression" for m in rule.matches for h in m.headers):
            return f"{at}: RegularExpression header matches are not supported by certctl"
    return None


def _resolved_refs(*, route: Route, grants: list[gw.ReferenceGrant],
                   services: dict[tuple[str, str], resources.Service]) -> tuple[str, str]:
    for index, rule in enumerate(_rules(route)):
        problems, _ = _rule_backends(route=route, rule=rule, grants=grants,
                                     services=services)
        for problem in problems:
            if problem is not None:
                return (problem[0], f"spec.rules[{index}]: {problem[1]}")
    return ("ResolvedRefs", "backends are resolved")


def _rule_backends(
    *, route: Route, rule: gw.HTTPRouteRule | gw.GRPCRouteRule, grants: list[gw.ReferenceGrant],
    services: dict[tuple[str, str], resources.Service],
) -> tuple[list[tuple[str, str] | None], _BackendProtocol]:
    """Each backendRef's problem (None: usable), and the protocol the rule's usable
    backends are spoken to in: the route options hold one per rule, so a backend whose
    Service port asks for another than the first usable one's is not usable."""
    problems: list[tuple[str, str] | None] = []
    protocol: _BackendProtocol | None = None
    first = ""
    for ref in rule.backend_refs:
        problem = _backend_problem(route=route, ref=ref, grants=grants, services=services)
        if problem is None:
            app_protocol = _app_protocol(route=route, ref=ref, services=services)
            spoken = _app_protocols(route)[app_protocol]
            if protocol is None:
                protocol, first = spoken, f"{ref.name} ({app_protocol or 'no appProtocol'})"
            elif spoken != protocol:
                problem = ("UnsupportedProtocol", f"backendRef {ref.name}: appProtocol "
                           f"{app_protocol or '(none)'} differs from that of backendRef "
                           f"{first} in the same rule; certctl speaks one protocol per rule")
        problems.append(problem)
    return problems, protocol or _HTTP1


def _rules(route: Route) -> Sequence[gw.HTTPRouteRule | gw.GRPCRouteRule]:
    """A route's rules as one sequence type (the union's own would iterate as objects)."""
    return route.rules


def _app_protocols(route: Route) -> dict[str | None, _BackendProtocol]:
    return _GRPC_APP_PROTOCOLS if isinstance(route, gw.GRPCRoute) else _HTTP_APP_PROTOCOLS


def _app_protocol(*, route: Route, ref: gw.BackendRef,
                  services: dict[tuple[str, str], resources.Service]) -> str | None:
    """The appProtocol of the Service port a (resolvable) backendRef names."""
    service = services[(ref.namespace or route.namespace, ref.name)]
    return next((port.app_protocol for port in service.ports if port.port == ref.port), None)


def _backend_problem(*, route: Route, ref: gw.BackendRef,
                     grants: list[gw.ReferenceGrant],
                     services: dict[tuple[str, str], resources.Service]) -> tuple[str, str] | None:
    namespace = ref.namespace or route.namespace
    if ref.group != "" or ref.kind != "Service":
        return ("InvalidKind", f"backendRef {ref.name}: {ref.kind} ({ref.group or 'core'}) is "
                "not a Service")
    if namespace != route.namespace and not any(
        g.namespace == namespace and g.permits(
            from_group=gw.GROUP, from_kind=route.KIND, from_namespace=route.namespace,
            to_group="", to_kind="Service", to_name=ref.name) for g in grants):
        return ("RefNotPermitted", f"Service {namespace}/{ref.name} is in another namespace "
                f"and no ReferenceGrant there allows {route.KIND}s of {route.namespace}")
    if (namespace, ref.name) not in services:
        return ("BackendNotFound", f"Service {namespace}/{ref.name} does not exist")
    if ref.port is None:
        return ("UnsupportedValue", f"backendRef {ref.name}: port is required for a Service")
    app_protocol = _app_protocol(route=route, ref=ref, services=services)
    known = _app_protocols(route)
    if app_protocol not in known:
        return ("UnsupportedProtocol", f"Service {namespace}/{ref.name} port {ref.port}: "
                f"appProtocol {app_protocol} is not supported by certctl for {route.KIND}s "
                f"(it speaks {', '.join(p for p in known if p is not None)})")
    return None


def _rule_routes(
    *, route: Route, host: str, scheme: bytes | None, grants: list[gw.ReferenceGrant],
    services: dict[tuple[str, str], resources.Service],
) -> Iterable[tuple[tuple[object, ...], model.Route]]:
    age = _age(route)
    for rule_index, rule in enumerate(_rules(route)):
        problems, protocol = _rule_backends(route=route, rule=rule, grants=grants,
                                            services=services)
        backends = tuple(
            model.WeightedBackend(
                backend=None if problem is not None
                else model.Backend(namespace=ref.namespace or route.namespace,
                                   service=ref.name, port_number=ref.port),
                weight=ref.weight)
            for ref, problem in zip(rule.backend_refs, problems, strict=True))
        filters = _filters(rule.filters)
        if not backends and (filters is None or filters.redirect is None):
            backends = (model.WeightedBackend(backend=None, weight=1),)  # 500, as the spec says
        valid = [b.backend for b in backends if b.backend is not None and b.weight]
        backend = valid[0] if valid else model.Backend(namespace=route.namespace, service="")
        if len(backends) == 1 and backends[0].backend is not None and backends[0].weight:
            backends = ()  # one backend: a plain route
        timeout = rule.backend_request_timeout or rule.request_timeout \
            if isinstance(rule, gw.HTTPRouteRule) else None
        route_options = options.RouteOptions(
            ssl_redirect=False, backend_h2=protocol.backend_h2, backend_tls=protocol.backend_tls,
            read_timeout=None if timeout is None else timeout.total_seconds())
        if isinstance(rule, gw.GRPCRouteRule):
            for match_index, grpc_match in enumerate(rule.matches):
                conditions = model.RequestConditions(
                    headers=_first_of_each((h.name.lower().encode(), h.value.encode())
                                           for h in grpc_match.headers), scheme=scheme)
                has_conditions = conditions != model.RequestConditions()
                where = grpc_route.method_path(grpc_match.method)
                # The spec's precedence after the method: more header matches, then age.
                order = (tuple(-rank for rank in conditions.rank), age, rule_index,
                         match_index)
                yield order, model.Route(
                    source=route.key, host=host, path=where.path, exact=where.exact,
                    pattern=where.pattern, backend=backend, options=route_options,
                    conditions=conditions if has_conditions else None, filters=filters,
                    backends=backends)
            continue
        for match_index, match in enumerate(rule.matches):
            conditions = model.RequestConditions(
                method=None if match.method is None else match.method.encode(),
                headers=_first_of_each(
                    (h.name.lower().encode(), h.value.encode()) for h in match.headers),
                query=_first_of_each(
                    (q.name.encode(), q.value.encode()) for q in match.query_params),
                scheme=scheme)
            has_conditions = conditions != model.RequestConditions()
            order = (tuple(-rank for rank in conditions.rank), age, rule_index, match_index)
            yield order, model.Route(
                source=route.key, host=host, path=match.path, exact=match.path_type == "Exact",
                backend=backend, options=route_options,
                conditions=conditions if has_conditions else None, filters=filters,
                backends=backends)


def _first_of_each(pairs: Iterable[tuple[bytes, bytes]]) -> tuple[tuple[bytes, bytes], ...]:
    """Of several matches on one name only the first counts (header names compared
    lowercase, query names exactly), as the spec says."""
    found: dict[bytes, bytes] = {}
    for name, value in pairs:
        found.setdefault(name, value)
    return tuple(found.items())


def _filters(filters: tuple[gw.HTTPRouteFilter, ...]) -> model.GatewayFilters | None:
    if not filters:
        return None
    request_set: tuple[model.Header, ...] = ()
    request_add: tuple[model.Header, ...] = ()
    request_remove: tuple[bytes, ...] = ()
    response_set: tuple[model.Header, ...] = ()
    redirect = None
    rewrite_host = None
    rewrite_path = None
    cors = None
    for found in filters:
        request = found.request_header_modifier
        if request is not None:
            request_set += _headers(request.set)
            request_add += _headers(request.add)
            request_remove += tuple(name.lower().encode() for name in request.remove)
        response = found.response_header_modifier
        if response is not None:
            response_set += _headers(response.set) + _headers(response.add)
        if found.request_redirect is not None:
            spec = found.request_redirect
            redirect = model.Redirect(
                status=spec.status_code,
                scheme=None if spec.scheme is None else spec.scheme.encode(),
                hostname=None if spec.hostname is None else spec.hostname.encode(),
                port=spec.port, path=_path_modifier(spec.path))
        if found.url_rewrite is not None:
            if found.url_rewrite.hostname is not None:
                rewrite_host = found.url_rewrite.hostname.encode()
            rewrite_path = _path_modifier(found.url_rewrite.path)
        if found.cors is not None:
            cors = _cors_policy(found.cors)
    return model.GatewayFilters(request_set=request_set, request_add=request_add,
                                request_remove=request_remove, response_set=response_set,
                                redirect=redirect, rewrite_host=rewrite_host,
                                rewrite_path=rewrite_path, cors=cors)


def _cors_policy(spec: gw.HTTPCORSFilter) -> options.GatewayCorsPolicy:
    """The filter as the data plane applies it: origins split into scheme, host and port
    (the parser checked their form), names as bytes."""
    origins = []
    for origin in spec.allow_origins:
        if origin == "*":
            continue  # alone in its list (the parser checked): `any_origin`
        parts = options.split_origin(origin)
        assert parts is not None, origin  # the parser's pattern admits only these forms
        scheme, host, port = parts
        origins.append(options.AllowedOrigin(scheme=scheme, host=host, port=port))
    return options.GatewayCorsPolicy(
        any_origin="*" in spec.allow_origins, origins=tuple(origins),
        credentials=spec.allow_credentials,
        methods=tuple(m.encode() for m in spec.allow_methods),
        headers=tuple(h.encode() for h in spec.allow_headers),
        expose_headers=tuple(h.encode() for h in spec.expose_headers),
        max_age=spec.max_age)


def _headers(pairs: tuple[tuple[str, str], ...]) -> tuple[model.Header, ...]:
    return tuple((name.lower().encode(), value.encode()) for name, value in pairs)


def _path_modifier(spec: gw.PathModifier | None) -> model.PathModifier | None:
    if spec is None:
        return None
    return model.PathModifier(prefix=spec.type == "ReplacePrefixMatch",
                              value=spec.value.encode())


def _age(
    obj: gw.Gateway | gw.ListenerSet | gw.HTTPRoute | gw.GRPCRoute,
) -> tuple[datetime.datetime, str, str]:
    """Oldest first, then namespace/name, as the spec breaks ties between routes."""
    created = obj.creation_timestamp or _NEWEST
    if created.tzinfo is None:
        created = created.replace(tzinfo=datetime.UTC)
    return (created, obj.namespace, obj.name)
