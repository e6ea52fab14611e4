"""Typed models of the Gateway API kinds certctl reads, and their parsers.

GatewayClass, Gateway, ListenerSet, HTTPRoute and GRPCRoute are read as
gateway.networking.k8s.io/v1,
ReferenceGrant as v1beta1 (its storage version) or v1. As for Ingresses, the
API server has already checked these against the CRDs in a cluster, so a
parser checks what certctl relies on (required fields, enums, names,
hostnames) and ignores fields it does not use; objects read from manifests
get the same errors naming file, object and field. Defaults are the CRDs'
(a parentRef's kind Gateway, a listener's tls.mode Terminate, allowedRoutes
from Same, a Gateway's allowedListeners from None, a ListenerSet's parentRef
kind Gateway, a backendRef's weight 1, a rule without matches matching
PathPrefix "/", a redirect's status 302, a GRPCRoute method match's type
Exact, a CORS filter's maxAge 5).
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Final, Literal, TypedDict, cast

from certctl.api import parsing, resources
from certctl.api.resources import ObjectKey

GROUP: Final = "gateway.networking.k8s.io"
API_VERSION: Final = f"{GROUP}/v1"
REFERENCE_GRANT_VERSIONS: Final = (f"{GROUP}/v1beta1", f"{GROUP}/v1")

ListenerProtocol = Literal["HTTP", "HTTPS", "TLS", "TCP", "UDP"]
FromNamespaces = Literal["All", "Same", "Selector"]
ListenersFrom = Literal["All", "Same", "Selector", "None"]
PathMatchType = Literal["Exact", "PathPrefix", "RegularExpression"]
ValueMatchType = Literal["Exact", "RegularExpression"]
PathModifierType = Literal["ReplaceFullPath", "ReplacePrefixMatch"]
FilterType = Literal["RequestHeaderModifier", "ResponseHeaderModifier", "RequestRedirect",
                     "URLRewrite", "RequestMirror", "ExtensionRef", "CORS", "ExternalAuth"]
FILTER_TYPES: Final = ("RequestHeaderModifier", "ResponseHeaderModifier", "RequestRedirect",
                       "URLRewrite", "RequestMirror", "ExtensionRef", "CORS", "ExternalAuth")
REDIRECT_CODES: Final = (301, 302, 303, 307, 308)
KINDS: Final = ("GatewayClass", "Gateway", "ListenerSet", "HTTPRoute", "GRPCRoute",
                "ReferenceGrant")
ROUTE_KINDS: Final = ("HTTPRoute", "GRPCRoute")  # what HTTP and HTTPS listeners take
GrpcMethodMatchType = Literal["Exact", "RegularExpression"]
# The characters the CRD allows an Exact match's service and method (its CEL rules).
_GRPC_SERVICE = re.compile(r"\.?[a-z_][a-z_0-9]*(\.[a-z_][a-z_0-9]*)*", re.IGNORECASE)
_GRPC_METHOD = re.compile(r"[A-Za-z_][A-Za-z_0-9]*")
# The CRD's checks of a CORS filter: origins (`*`, or scheme, host with an optional
# leading `*.` or `*` alone, optional port), method names, header names (HTTPHeaderName).
_CORS_ORIGIN = re.compile(
    r"\*|https?://((\*\.)?([a-zA-Z0-9-]+\.)*[a-zA-Z0-9-]+|\*)(:[0-9]{1,5})?")
CORS_METHODS: Final = ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE",
                       "PATCH", "*")
_HEADER_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+\-.^_`|~]+")
CORS_DEFAULT_MAX_AGE: Final = 5
_INT32_MAX: Final = 2**31 - 1
SelectorOperator = Literal["In", "NotIn", "Exists", "DoesNotExist"]
SELECTOR_OPERATORS: Final = ("In", "NotIn", "Exists", "DoesNotExist")
# Set on every Namespace by the API server (and by certctl serve, which has no API server).
NAMESPACE_NAME_LABEL: Final = "kubernetes.io/metadata.name"
# The opt-in of an HTTPRoute to a Certificate for its hostnames (cert-manager #6051, #7473),
# "true" or "false", with the issuer annotations of an Ingress; and the Secret's name
# (default: the route's name + "-tls").
ROUTE_CERTIFICATE: Final = "certctl.io/certificate"
ROUTE_CERTIFICATE_SECRET: Final = "certctl.io/certificate-secret-name"  # noqa: S105 - a key


@dataclass(frozen=True, kw_only=True)
class GatewayClass:
    name: str
    controller_name: str
    generation: int = 0


@dataclass(frozen=True, kw_only=True)
class SecretObjectReference:
    """A listener's certificateRef: a core Secret unless group/kind say otherwise."""

    group: str
    kind: str
    name: str
    namespace: str | None  # None: the Gateway's own


@dataclass(frozen=True, kw_only=True)
class RouteGroupKind:
    group: str
    kind: str


@dataclass(frozen=True, kw_only=True)
class SelectorRequirement:
    key: str
    operator: SelectorOperator
    values: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class LabelSelector:
    """A Kubernetes label selector: every matchLabels pair and every requirement hold
    (an empty selector selects everything, as in Kubernetes)."""

    match_labels: tuple[tuple[str, str], ...] = ()
    match_expressions: tuple[SelectorRequirement, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        if any(labels.get(key) != value for key, value in self.match_labels):
            return False
        for requirement in self.match_expressions:
            present = requirement.key in labels
            value = labels.get(requirement.key)
            if requirement.operator == "In" and value not in requirement.values:
                return False
            if requirement.operator == "NotIn" and present and value in requirement.values:
                return False
            if requirement.operator == "Exists" and not present:
                return False
            if requirement.operator == "DoesNotExist" and present:
                return False
        return True


@dataclass(frozen=True, kw_only=True)
class Namespace:
    """A Namespace's labels, for listeners that take routes `from: Selector`; with the
    name label the API server sets on every Namespace."""

    name: str
    labels: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, kw_only=True)
class Listener:
    name: str
    port: int
    protocol: str  # ListenerProtocol, or a domain-prefixed one certctl does not serve
    hostname: str | None = None  # normalised; may start with "*."
    tls_mode: Literal["Terminate", "Passthrough"] | None = None  # None: no tls block
    certificate_refs: tuple[SecretObjectReference, ...] = ()
    allowed_from: FromNamespaces = "Same"
    allowed_selector: LabelSelector | None = None  # with `from: Selector` (required there)
    allowed_kinds: tuple[RouteGroupKind, ...] = ()  # empty: what the protocol allows


@dataclass(frozen=True, kw_only=True)
class _Namespaced(resources.Annotated):
    """The metadata Gateway, ListenerSet, HTTPRoute and GRPCRoute keep (read by
    `_metadata`)."""

    KIND: ClassVar[str]
    namespace: str
    name: str
    uid: str = ""
    generation: int = 0
    creation_timestamp: datetime.datetime | None = None
    annotations: tuple[tuple[str, str], ...] = ()

    @property
    def key(self) -> ObjectKey:
        return ObjectKey(kind=self.KIND, namespace=self.namespace, name=self.name)


@dataclass(frozen=True, kw_only=True)
class Gateway(_Namespaced):
    KIND: ClassVar[str] = "Gateway"
    gateway_class_name: str
    listeners: tuple[Listener, ...] = ()
    # spec.allowedListeners.namespaces: which ListenerSets may attach (None: none).
    allowed_listeners_from: ListenersFrom = "None"
    allowed_listeners_selector: LabelSelector | None = None  # with from Selector


@dataclass(frozen=True, kw_only=True)
class ListenerSet(_Namespaced):
    """Listeners added to a parent Gateway (standard channel since v1.5) that allows them."""

    KIND: ClassVar[str] = "ListenerSet"
    parent_group: str = GROUP
    parent_kind: str = "Gateway"
    parent_name: str
    parent_namespace: str | None = None  # None: the ListenerSet's own
    listeners: tuple[Listener, ...] = ()

    @property
    def parent_key(self) -> ObjectKey | None:
        """The parent Gateway, None when the parentRef names another kind."""
        if self.parent_group != GROUP or self.parent_kind != "Gateway":
            return None
        return ObjectKey(kind="Gateway", namespace=self.parent_namespace or self.namespace,
                         name=self.parent_name)


@dataclass(frozen=True, kw_only=True)
class ParentReference:
    group: str
    kind: str
    name: str
    namespace: str | None = None  # None: the route's own
    section_name: str | None = None
    port: int | None = None


@dataclass(frozen=True, kw_only=True)
class ValueMatch:
    """A header or query parameter match; header names compare case-insensitively."""

    type: ValueMatchType
    name: str
    value: str


@dataclass(frozen=True, kw_only=True)
class HTTPRouteMatch:
    path_type: PathMatchType = "PathPrefix"
    path: str = "/"
    headers: tuple[ValueMatch, ...] = ()
    query_params: tuple[ValueMatch, ...] = ()
    method: str | None = None


@dataclass(frozen=True, kw_only=True)
class HeaderModifier:
    set: tuple[tuple[str, str], ...] = ()
    add: tuple[tuple[str, str], ...] = ()
    remove: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class PathModifier:
    type: PathModifierType
    value: str  # replaceFullPath or replacePrefixMatch


@dataclass(frozen=True, kw_only=True)
class RequestRedirect:
    scheme: str | None = None
    hostname: str | None = None
    path: PathModifier | None = None
    port: int | None = None
    status_code: int = 302


@dataclass(frozen=True, kw_only=True)
class URLRewrite:
    hostname: str | None = None
    path: PathModifier | None = None


@dataclass(frozen=True, kw_only=True)
class HTTPCORSFilter:
    """A CORS filter as written (its CRD's defaults: no credentials, maxAge 5); a `*`
    in a list is that list's only entry."""

    allow_origins: tuple[str, ...] = ()
    allow_credentials: bool = False
    allow_methods: tuple[str, ...] = ()
    allow_headers: tuple[str, ...] = ()
    expose_headers: tuple[str, ...] = ()
    max_age: int = CORS_DEFAULT_MAX_AGE


@dataclass(frozen=True, kw_only=True)
class HTTPRouteFilter:
    """One filter; the field of its type is set (others certctl does not implement carry
    only their type, so the route's status can say which)."""

    type: str
    request_header_modifier: HeaderModifier | None = None
    response_header_modifier: HeaderModifier | None = None
    request_redirect: RequestRedirect | None = None
    url_rewrite: URLRewrite | None = None
    cors: HTTPCORSFilter | None = None


@dataclass(frozen=True, kw_only=True)
class BackendRef:
    name: str
    group: str = ""
    kind: str = "Service"
    namespace: str | None = None  # None: the route's own
    port: int | None = None
    weight: int = 1
    filters: tuple[HTTPRouteFilter, ...] = ()


@dataclass(frozen=True, kw_only=True)
class HTTPRouteRule:
    matches: tuple[HTTPRouteMatch, ...] = (HTTPRouteMatch(),)
    filters: tuple[HTTPRouteFilter, ...] = ()
    backend_refs: tuple[BackendRef, ...] = ()
    request_timeout: datetime.timedelta | None = None
    backend_request_timeout: datetime.timedelta | None = None


@dataclass(frozen=True, kw_only=True)
class HTTPRoute(_Namespaced):
    KIND: ClassVar[str] = "HTTPRoute"
    parent_refs: tuple[ParentReference, ...] = ()
    hostnames: tuple[str, ...] = ()  # normalised; may start with "*."
    rules: tuple[HTTPRouteRule, ...] = ()


@dataclass(frozen=True, kw_only=True)
class GRPCMethodMatch:
    """A gRPC service/method match: at least one of the two is set; unset matches any."""

    type: GrpcMethodMatchType = "Exact"
    service: str | None = None
    method: str | None = None


@dataclass(frozen=True, kw_only=True)
class GRPCRouteMatch:
    method: GRPCMethodMatch | None = None  # None: every service and method
    headers: tuple[ValueMatch, ...] = ()


@dataclass(frozen=True, kw_only=True)
class GRPCRouteRule:
    matches: tuple[GRPCRouteMatch, ...] = (GRPCRouteMatch(),)
    filters: tuple[HTTPRouteFilter, ...] = ()
    backend_refs: tuple[BackendRef, ...] = ()


@dataclass(frozen=True, kw_only=True)
class GRPCRoute(_Namespaced):
    KIND: ClassVar[str] = "GRPCRoute"
    parent_refs: tuple[ParentReference, ...] = ()
    hostnames: tuple[str, ...] = ()  # normalised; may start with "*."
    rules: tuple[GRPCRouteRule, ...] = ()


def route_certificate_secret(route: HTTPRoute, *, source: str | None = None) -> str | None:
    """The Secret of the Certificate the route opted in to, None without the opt-in;
    InvalidObject naming the annotation when a value is not one certctl can use."""
    opt_in = route.annotation(ROUTE_CERTIFICATE)
    if opt_in is None or opt_in == "false":
        return None
    ctx = parsing.ObjectReader(kind="HTTPRoute", namespace=route.namespace, name=route.name,
                               source=source)
    if opt_in != "true":
        ctx.fail(f"metadata.annotations[{ROUTE_CERTIFICATE}]",
                 f'must be "true" or "false", got {opt_in!r}')
    named = route.annotation(ROUTE_CERTIFICATE_SECRET)
    ctx.check_subdomain(named or f"{route.name}-tls", field=(
        f"metadata.annotations[{ROUTE_CERTIFICATE_SECRET if named else ROUTE_CERTIFICATE}]"))
    return named or f"{route.name}-tls"


@dataclass(frozen=True, kw_only=True)
class ReferenceGrantFrom:
    group: str
    kind: str
    namespace: str


@dataclass(frozen=True, kw_only=True)
class ReferenceGrantTo:
    group: str
    kind: str
    name: str | None = None  # None: every object of the kind


@dataclass(frozen=True, kw_only=True)
class ReferenceGrant:
    namespace: str
    name: str
    from_: tuple[ReferenceGrantFrom, ...] = ()
    to: tuple[ReferenceGrantTo, ...] = ()

    def permits(self, *, from_group: str, from_kind: str, from_namespace: str, to_group: str,
                to_kind: str, to_name: str) -> bool:
        """Whether an object in `from_namespace` may refer to `to_name` in the grant's."""
        return any(f.group == from_group and f.kind == from_kind
                   and f.namespace == from_namespace for f in self.from_) and any(
            t.group == to_group and t.kind == to_kind and t.name in (None, to_name)
            for t in self.to)


# --- parsers ---------------------------------------------------------------------


def parse_gateway_class(obj: Mapping[str, Any], *, source: str | None = None) -> GatewayClass:
    ctx = parsing.open_object(obj, kinds=("GatewayClass",), api_versions=(API_VERSION,),
                              cluster_scoped=("GatewayClass",), source=source)
    spec = ctx.mapping(obj.get("spec"), field="spec")
    return GatewayClass(name=ctx.name,
                        controller_name=ctx.required_str(spec, "controllerName", at="spec"),
                        generation=ctx.generation(obj))


class _Metadata(TypedDict):
    """What Gateway, ListenerSet, HTTPRoute and GRPCRoute read from metadata alike."""

    namespace: str
    name: str
    uid: str
    generation: int
    creation_timestamp: datetime.datetime | None
    annotations: tuple[tuple[str, str], ...]


def _metadata(ctx: parsing.ObjectReader, obj: Mapping[str, Any]) -> _Metadata:
    metadata = ctx.mapping(obj.get("metadata"), field="metadata")
    return _Metadata(
        namespace=ctx.scoped_namespace, name=ctx.name,
        uid=ctx.optional_str(metadata, "uid", at="metadata") or "",
        generation=ctx.generation(obj),
        creation_timestamp=ctx.timestamp(metadata.get("creationTimestamp"),
                                         field="metadata.creationTimestamp"),
        annotations=ctx.str_map(metadata, "annotations", at="metadata"))


def parse_gateway(obj: Mapping[str, Any], *, source: str | None = None) -> Gateway:
    ctx = parsing.open_object(obj, kinds=("Gateway",), api_versions=(API_VERSION,),
                              cluster_scoped=(), source=source)
    spec = ctx.mapping(obj.get("spec"), field="spec")
    listeners = _listeners(ctx, spec)
    allowed = ctx.mapping(ctx.mapping(spec.get("allowedListeners"),
                                      field="spec.allowedListeners").get("namespaces"),
                          field="spec.allowedListeners.namespaces")
    listeners_from = ctx.choice(allowed, "from", at="spec.allowedListeners.namespaces",
                                choices=("All", "Same", "Selector", "None")) or "None"
    return Gateway(
        **_metadata(ctx, obj),
        gateway_class_name=ctx.required_str(spec, "gatewayClassName", at="spec"),
        listeners=listeners, allowed_listeners_from=cast(ListenersFrom, listeners_from),
        allowed_listeners_selector=_label_selector(
            ctx, allowed.get("selector"), at="spec.allowedListeners.namespaces.selector")
        if listeners_from == "Selector" else None,
    )


def _listeners(ctx: parsing.ObjectReader, spec: Mapping[str, Any]) -> tuple[Listener, ...]:
    """spec.listeners of a Gateway or a ListenerSet: at least one, names unique."""
    listeners = tuple(_listener(ctx, item, at=f"spec.listeners[{index}]") for index, item
                      in enumerate(ctx.sequence(spec.get("listeners"), field="spec.listeners")))
    if not listeners:
        ctx.fail("spec.listeners", "at least one listener is required")
    seen: set[str] = set()
    for index, listener in enumerate(listeners):
        if listener.name in seen:
            ctx.fail(f"spec.listeners[{index}].name",
                     f"{listener.name!r} is the name of an earlier listener; names must be unique")
        seen.add(listener.name)
    return listeners


def parse_listener_set(obj: Mapping[str, Any], *, source: str | None = None) -> ListenerSet:
    ctx = parsing.open_object(obj, kinds=("ListenerSet",), api_versions=(API_VERSION,),
                              cluster_scoped=(), source=source)
    spec = ctx.mapping(obj.get("spec"), field="spec")
    if spec.get("parentRef") is None:
        ctx.fail("spec.parentRef", "is required: the Gateway the listeners are added to")
    parent = ctx.mapping(spec.get("parentRef"), field="spec.parentRef")
    return ListenerSet(
        **_metadata(ctx, obj),
        parent_group=ctx.optional_str(parent, "group", at="spec.parentRef") or GROUP,
        parent_kind=ctx.optional_str(parent, "kind", at="spec.parentRef") or "Gateway",
        parent_name=ctx.required_str(parent, "name", at="spec.parentRef"),
        parent_namespace=ctx.optional_str(parent, "namespace", at="spec.parentRef"),
        listeners=_listeners(ctx, spec))


def _listener(ctx: parsing.ObjectReader, value: Any, *, at: str) -> Listener:
    entry = ctx.mapping(value, field=at)
    name = ctx.required_str(entry, "name", at=at)
    port = ctx.required_int(entry, "port", at=at)
    ctx.check_port(port, field=f"{at}.port")
    protocol = ctx.required_str(entry, "protocol", at=at)
    hostname = ctx.optional_str(entry, "hostname", at=at)
    if hostname is not None:
        hostname = ctx.dns_name(hostname, field=f"{at}.hostname", allow_wildcard=True)
    tls_mode: Literal["Terminate", "Passthrough"] | None = None
    refs: list[SecretObjectReference] = []
    if entry.get("tls") is not None:
        tls = ctx.mapping(entry.get("tls"), field=f"{at}.tls")
        mode = ctx.choice(tls, "mode", at=f"{at}.tls", choices=("Terminate", "Passthrough"))
        tls_mode = cast(Literal["Terminate", "Passthrough"], mode or "Terminate")
        for index, item in enumerate(ctx.sequence(tls.get("certificateRefs"),
                                                  field=f"{at}.tls.certificateRefs")):
            ref_at = f"{at}.tls.certificateRefs[{index}]"
            ref = ctx.mapping(item, field=ref_at)
            refs.append(SecretObjectReference(
                group=ctx.optional_str(ref, "group", at=ref_at) or "",
                kind=ctx.optional_str(ref, "kind", at=ref_at) or "Secret",
                name=ctx.required_str(ref, "name", at=ref_at),
                namespace=ctx.optional_str(ref, "namespace", at=ref_at)))
    allowed = ctx.mapping(entry.get("allowedRoutes"), field=f"{at}.allowedRoutes")
    namespaces = ctx.mapping(allowed.get("namespaces"), field=f"{at}.allowedRoutes.namespaces")
    allowed_from = ctx.choice(namespaces, "from", at=f"{at}.allowedRoutes.namespaces",
                              choices=("All", "Same", "Selector")) or "Same"
    selector = None
    if allowed_from == "Selector":
        selector = _label_selector(ctx, namespaces.get("selector"),
                                   at=f"{at}.allowedRoutes.namespaces.selector")
    kinds = []
    for index, item in enumerate(ctx.sequence(allowed.get("kinds"),
                                              field=f"{at}.allowedRoutes.kinds")):
        kind_at = f"{at}.allowedRoutes.kinds[{index}]"
        kind = ctx.mapping(item, field=kind_at)
        kinds.append(RouteGroupKind(group=ctx.optional_str(kind, "group", at=kind_at) or GROUP,
                                    kind=ctx.required_str(kind, "kind", at=kind_at)))
    return Listener(
        name=name, port=port, protocol=protocol, hostname=hostname, tls_mode=tls_mode,
        certificate_refs=tuple(refs), allowed_from=cast(FromNamespaces, allowed_from),
        allowed_selector=selector, allowed_kinds=tuple(kinds))


def _label_selector(ctx: parsing.ObjectReader, value: Any, *, at: str) -> LabelSelector:
    """`from: Selector` requires a selector (the CRD's CEL rule says so too)."""
    if value is None:
        ctx.fail(at, "is required when from is Selector")
    spec = ctx.mapping(value, field=at)
    requirements = []
    for index, item in enumerate(ctx.sequence(spec.get("matchExpressions"),
                                              field=f"{at}.matchExpressions")):
        item_at = f"{at}.matchExpressions[{index}]"
        entry = ctx.mapping(item, field=item_at)
        operator = ctx.choice(entry, "operator", at=item_at, choices=SELECTOR_OPERATORS)
        if operator is None:
            ctx.fail(f"{item_at}.operator", f"is required: one of {', '.join(SELECTOR_OPERATORS)}")
        values = tuple(ctx.str_list(entry, "values", at=item_at))
        if operator in ("In", "NotIn") and not values:
            ctx.fail(f"{item_at}.values", f"must not be empty for operator {operator}")
        if operator in ("Exists", "DoesNotExist") and values:
            ctx.fail(f"{item_at}.values", f"must be empty for operator {operator}")
        requirements.append(SelectorRequirement(
            key=ctx.required_str(entry, "key", at=item_at),
            operator=cast(SelectorOperator, operator), values=values))
    return LabelSelector(match_labels=ctx.str_map(spec, "matchLabels", at=at),
                         match_expressions=tuple(requirements))


def parse_namespace(obj: Mapping[str, Any], *, source: str | None = None) -> Namespace:
    ctx = parsing.open_object(obj, kinds=("Namespace",), api_versions=("v1",),
                              cluster_scoped=("Namespace",), source=source)
    metadata = ctx.mapping(obj.get("metadata"), field="metadata")
    labels = dict(ctx.str_map(metadata, "labels", at="metadata"))
    labels[NAMESPACE_NAME_LABEL] = ctx.name
    return Namespace(name=ctx.name, labels=tuple(sorted(labels.items())))


def parse_http_route(obj: Mapping[str, Any], *, source: str | None = None) -> HTTPRoute:
    ctx = parsing.open_object(obj, kinds=("HTTPRoute",), api_versions=(API_VERSION,),
                              cluster_scoped=(), source=source)
    spec = ctx.mapping(obj.get("spec"), field="spec")
    parents, hostnames = _route_parents_and_hostnames(ctx, spec)
    rules = tuple(_rule(ctx, item, at=f"spec.rules[{index}]") for index, item
                  in enumerate(ctx.sequence(spec.get("rules"), field="spec.rules")))
    return HTTPRoute(
        **_metadata(ctx, obj),
        parent_refs=parents, hostnames=hostnames,
        rules=rules or (HTTPRouteRule(),))


def parse_grpc_route(obj: Mapping[str, Any], *, source: str | None = None) -> GRPCRoute:
    ctx = parsing.open_object(obj, kinds=("GRPCRoute",), api_versions=(API_VERSION,),
                              cluster_scoped=(), source=source)
    spec = ctx.mapping(obj.get("spec"), field="spec")
    parents, hostnames = _route_parents_and_hostnames(ctx, spec)
    rules = []
    for index, item in enumerate(ctx.sequence(spec.get("rules"), field="spec.rules")):
        at = f"spec.rules[{index}]"
        entry = ctx.mapping(item, field=at)
        matches = tuple(_grpc_match(ctx, found, at=f"{at}.matches[{number}]")
                        for number, found in enumerate(ctx.sequence(entry.get("matches"),
                                                                    field=f"{at}.matches")))
        rules.append(GRPCRouteRule(matches=matches or (GRPCRouteMatch(),),
                                   filters=_filters(ctx, entry, at=at),
                                   backend_refs=_backend_refs(ctx, entry, at=at)))
    return GRPCRoute(**_metadata(ctx, obj), parent_refs=parents, hostnames=hostnames,
                     rules=tuple(rules) or (GRPCRouteRule(),))


def _grpc_match(ctx: parsing.ObjectReader, value: Any, *, at: str) -> GRPCRouteMatch:
    entry = ctx.mapping(value, field=at)
    method = None
    if entry.get("method") is not None:
        method_at = f"{at}.method"
        spec = ctx.mapping(entry.get("method"), field=method_at)
        kind = ctx.choice(spec, "type", at=method_at,
                          choices=("Exact", "RegularExpression")) or "Exact"
        service = ctx.optional_str(spec, "service", at=method_at)
        name = ctx.optional_str(spec, "method", at=method_at)
        if service is None and name is None:
            ctx.fail(method_at, "one or both of service and method must be set")
        for field, found, syntax in (("service", service, _GRPC_SERVICE),
                                     ("method", name, _GRPC_METHOD)):
            if found is None:
                continue
            if kind == "Exact" and syntax.fullmatch(found) is None:
                ctx.fail(f"{method_at}.{field}", f"{found!r} is not a gRPC {field} name "
                         f"(matching {syntax.pattern})")
            if kind == "RegularExpression":
                try:
                    re.compile(found)
                except re.error as err:
                    ctx.fail(f"{method_at}.{field}",
                             f"{found!r} is not a regular expression: {err}")
        method = GRPCMethodMatch(type=cast(GrpcMethodMatchType, kind), service=service,
                                 method=name)
    return GRPCRouteMatch(method=method, headers=_value_matches(ctx, entry, "headers", at=at))


def _route_parents_and_hostnames(
    ctx: parsing.ObjectReader, spec: Mapping[str, Any],
) -> tuple[tuple[ParentReference, ...], tuple[str, ...]]:
    """spec.parentRefs and spec.hostnames, which HTTPRoute and GRPCRoute share."""
    parents = []
    for index, item in enumerate(ctx.sequence(spec.get("parentRefs"), field="spec.parentRefs")):
        at = f"spec.parentRefs[{index}]"
        ref = ctx.mapping(item, field=at)
        port = ctx.optional_int(ref, "port", at=at)
        if port is not None:
            ctx.check_port(port, field=f"{at}.port")
        parents.append(ParentReference(
            group=ref.get("group", GROUP) if isinstance(ref.get("group"), str) else GROUP,
            kind=ctx.optional_str(ref, "kind", at=at) or "Gateway",
            name=ctx.required_str(ref, "name", at=at),
            namespace=ctx.optional_str(ref, "namespace", at=at),
            section_name=ctx.optional_str(ref, "sectionName", at=at), port=port))
    hostnames = tuple(
        ctx.dns_name(host, field=f"spec.hostnames[{index}]", allow_wildcard=True)
        for index, host in enumerate(ctx.str_list(spec, "hostnames", at="spec")))
    return tuple(parents), hostnames


def _rule(ctx: parsing.ObjectReader, value: Any, *, at: str) -> HTTPRouteRule:
    entry = ctx.mapping(value, field=at)
    matches = tuple(_match(ctx, item, at=f"{at}.matches[{index}]") for index, item
                    in enumerate(ctx.sequence(entry.get("matches"), field=f"{at}.matches")))
    filters = _filters(ctx, entry, at=at)
    timeouts = ctx.mapping(entry.get("timeouts"), field=f"{at}.timeouts")
    return HTTPRouteRule(
        matches=matches or (HTTPRouteMatch(),), filters=filters,
        backend_refs=_backend_refs(ctx, entry, at=at),
        request_timeout=_gateway_duration(ctx, timeouts, "request", at=f"{at}.timeouts"),
        backend_request_timeout=_gateway_duration(ctx, timeouts, "backendRequest",
                                                  at=f"{at}.timeouts"))


def _backend_refs(ctx: parsing.ObjectReader, entry: Mapping[str, Any], *,
                  at: str) -> tuple[BackendRef, ...]:
    backends = []
    for index, item in enumerate(ctx.sequence(entry.get("backendRefs"),
                                              field=f"{at}.backendRefs")):
        ref_at = f"{at}.backendRefs[{index}]"
        ref = ctx.mapping(item, field=ref_at)
        port = ctx.optional_int(ref, "port", at=ref_at)
        if port is not None:
            ctx.check_port(port, field=f"{ref_at}.port")
        weight = ctx.optional_int(ref, "weight", at=ref_at)
        if weight is not None and not 0 <= weight <= 1_000_000:
            ctx.fail(f"{ref_at}.weight", f"must be between 0 and 1000000, is {weight}")
        backends.append(BackendRef(
            name=ctx.required_str(ref, "name", at=ref_at),
            group=ctx.optional_str(ref, "group", at=ref_at) or "",
            kind=ctx.optional_str(ref, "kind", at=ref_at) or "Service",
            namespace=ctx.optional_str(ref, "namespace", at=ref_at), port=port,
            weight=1 if weight is None else weight, filters=_filters(ctx, ref, at=ref_at)))
    return tuple(backends)


def _gateway_duration(ctx: parsing.ObjectReader, value: Mapping[str, Any], key: str, *,
                      at: str) -> datetime.timedelta | None:
    """A Gateway API Duration (GEP-2257: `1h`, `10s`, `500ms`); "0s" means no timeout."""
    found = ctx.duration(value, key, at=at)
    return found if found else None


def _match(ctx: parsing.ObjectReader, value: Any, *, at: str) -> HTTPRouteMatch:
    entry = ctx.mapping(value, field=at)
    path = ctx.mapping(entry.get("path"), field=f"{at}.path")
    path_type = ctx.choice(path, "type", at=f"{at}.path",
                           choices=("Exact", "PathPrefix", "RegularExpression")) or "PathPrefix"
    path_value = ctx.optional_str(path, "value", at=f"{at}.path") or "/"
    if path_type != "RegularExpression" and not path_value.startswith("/"):
        ctx.fail(f"{at}.path.value", f"{path_value!r} must be an absolute path starting "
                 "with '/'")
    method = ctx.optional_str(entry, "method", at=at)
    return HTTPRouteMatch(
        path_type=cast(PathMatchType, path_type), path=path_value,
        headers=_value_matches(ctx, entry, "headers", at=at),
        query_params=_value_matches(ctx, entry, "queryParams", at=at),
        method=method)


def _value_matches(ctx: parsing.ObjectReader, entry: Mapping[str, Any], key: str, *,
                   at: str) -> tuple[ValueMatch, ...]:
    found = []
    for index, item in enumerate(ctx.sequence(entry.get(key), field=f"{at}.{key}")):
        item_at = f"{at}.{key}[{index}]"
        match = ctx.mapping(item, field=item_at)
        found.append(ValueMatch(
            type=cast(ValueMatchType, ctx.choice(match, "type", at=item_at,
                                                 choices=("Exact", "RegularExpression"))
                      or "Exact"),
            name=ctx.required_str(match, "name", at=item_at),
            value=ctx.required_str(match, "value", at=item_at)))
    return tuple(found)


def _filters(ctx: parsing.ObjectReader, entry: Mapping[str, Any], *,
             at: str) -> tuple[HTTPRouteFilter, ...]:
    found = []
    for index, item in enumerate(ctx.sequence(entry.get("filters"), field=f"{at}.filters")):
        item_at = f"{at}.filters[{index}]"
        spec = ctx.mapping(item, field=item_at)
        kind = ctx.optional_str(spec, "type", at=item_at)
        if kind is None:
            ctx.fail(f"{item_at}.type", f"is required: one of {', '.join(FILTER_TYPES)}")
        if kind == "RequestHeaderModifier":
            found.append(HTTPRouteFilter(type=kind, request_header_modifier=_header_modifier(
                ctx, spec.get("requestHeaderModifier"), at=f"{item_at}.requestHeaderModifier")))
        elif kind == "ResponseHeaderModifier":
            found.append(HTTPRouteFilter(type=kind, response_header_modifier=_header_modifier(
                ctx, spec.get("responseHeaderModifier"),
                at=f"{item_at}.responseHeaderModifier")))
        elif kind == "RequestRedirect":
            found.append(HTTPRouteFilter(type=kind, request_redirect=_redirect(
                ctx, spec.get("requestRedirect"), at=f"{item_at}.requestRedirect")))
        elif kind == "URLRewrite":
            rewrite_at = f"{item_at}.urlRewrite"
            rewrite = ctx.mapping(spec.get("urlRewrite"), field=rewrite_at)
            hostname = ctx.optional_str(rewrite, "hostname", at=rewrite_at)
            found.append(HTTPRouteFilter(type=kind, url_rewrite=URLRewrite(
                hostname=None if hostname is None else ctx.dns_name(
                    hostname, field=f"{rewrite_at}.hostname", allow_wildcard=False),
                path=_path_modifier(ctx, rewrite.get("path"), at=f"{rewrite_at}.path"))))
        elif kind == "CORS":
            if any(f.type == "CORS" for f in found):
                ctx.fail(f"{at}.filters", "a CORS filter cannot be repeated")
            found.append(HTTPRouteFilter(type=kind, cors=_cors(ctx, spec.get("cors"),
                                                               at=f"{item_at}.cors")))
        else:
            found.append(HTTPRouteFilter(type=kind))
    return tuple(found)


def _cors(ctx: parsing.ObjectReader, value: Any, *, at: str) -> HTTPCORSFilter:
    if value is None:
        ctx.fail(at, "is required for a filter of type CORS")
    spec = ctx.mapping(value, field=at)

    def listed(key: str, *, valid: Callable[[str], bool], expected: str,
               wildcard_alone: bool = True) -> tuple[str, ...]:
        items = ctx.str_list(spec, key, at=at)
        for index, item in enumerate(items):
            if not valid(item):
                ctx.fail(f"{at}.{key}[{index}]", f"{item!r} is not {expected}")
        if wildcard_alone and "*" in items and len(items) > 1:
            ctx.fail(f"{at}.{key}", "'*' (all of them) cannot be listed with other entries")
        if len(set(items)) < len(items):
            ctx.fail(f"{at}.{key}", "lists an entry twice")
        return tuple(items)

    max_age = ctx.optional_int(spec, "maxAge", at=at)
    if max_age is not None and not 1 <= max_age <= _INT32_MAX:
        ctx.fail(f"{at}.maxAge", f"must be a number of seconds of at least 1, is {max_age}")
    return HTTPCORSFilter(
        allow_origins=listed("allowOrigins", valid=_is_cors_origin,
                             expected="'*' or an origin http(s)://host[:port] whose host "
                             "may start with '*.'"),
        allow_credentials=bool(ctx.optional_bool(spec, "allowCredentials", at=at)),
        allow_methods=listed("allowMethods", valid=CORS_METHODS.__contains__,
                             expected=f"one of {', '.join(CORS_METHODS)}"),
        allow_headers=listed("allowHeaders", valid=_is_header_name,
                             expected="an HTTP header name"),
        # The CRD lets `*` stand beside other names here (and only here).
        expose_headers=listed("exposeHeaders", valid=_is_header_name,
                              expected="an HTTP header name", wildcard_alone=False),
        max_age=CORS_DEFAULT_MAX_AGE if max_age is None else max_age)


def _is_cors_origin(value: str) -> bool:
    if len(value) > 253 or _CORS_ORIGIN.fullmatch(value) is None:
        return False
    port = value.rpartition(":")[2]
    return not port.isdigit() or 1 <= int(port) <= 65535


def _is_header_name(value: str) -> bool:
    return len(value) <= 256 and _HEADER_NAME.fullmatch(value) is not None


def _header_modifier(ctx: parsing.ObjectReader, value: Any, *, at: str) -> HeaderModifier:
    spec = ctx.mapping(value, field=at)

    def pairs(key: str) -> tuple[tuple[str, str], ...]:
        found = []
        for index, item in enumerate(ctx.sequence(spec.get(key), field=f"{at}.{key}")):
            header = ctx.mapping(item, field=f"{at}.{key}[{index}]")
            found.append((ctx.required_str(header, "name", at=f"{at}.{key}[{index}]"),
                          ctx.required_str(header, "value", at=f"{at}.{key}[{index}]")))
        return tuple(found)

    return HeaderModifier(set=pairs("set"), add=pairs("add"),
                          remove=tuple(ctx.str_list(spec, "remove", at=at)))


def _path_modifier(ctx: parsing.ObjectReader, value: Any, *, at: str) -> PathModifier | None:
    if value is None:
        return None
    spec = ctx.mapping(value, field=at)
    kind = ctx.choice(spec, "type", at=at, choices=("ReplaceFullPath", "ReplacePrefixMatch"))
    if kind is None:
        ctx.fail(f"{at}.type", "is required: ReplaceFullPath or ReplacePrefixMatch")
    key = "replaceFullPath" if kind == "ReplaceFullPath" else "replacePrefixMatch"
    replacement = ctx.optional_str(spec, key, at=at) or "/"
    if not replacement.startswith("/"):
        ctx.fail(f"{at}.{key}", f"{replacement!r} must be an absolute path starting with '/'")
    return PathModifier(type=cast(PathModifierType, kind), value=replacement)


def _redirect(ctx: parsing.ObjectReader, value: Any, *, at: str) -> RequestRedirect:
    spec = ctx.mapping(value, field=at)
    hostname = ctx.optional_str(spec, "hostname", at=at)
    port = ctx.optional_int(spec, "port", at=at)
    if port is not None:
        ctx.check_port(port, field=f"{at}.port")
    code = ctx.optional_int(spec, "statusCode", at=at)
    if code is not None and code not in REDIRECT_CODES:
        ctx.fail(f"{at}.statusCode", f"must be one of {', '.join(map(str, REDIRECT_CODES))}, "
                 f"got {code}")
    return RequestRedirect(
        scheme=ctx.choice(spec, "scheme", at=at, choices=("http", "https")),
        hostname=None if hostname is None else ctx.dns_name(hostname, field=f"{at}.hostname",
                                                            allow_wildcard=False),
        path=_path_modifier(ctx, spec.get("path"), at=f"{at}.path"), port=port,
        status_code=code or 302)


def parse_reference_grant(obj: Mapping[str, Any], *,
                          source: str | None = None) -> ReferenceGrant:
    ctx = parsing.open_object(obj, kinds=("ReferenceGrant",),
                              api_versions=REFERENCE_GRANT_VERSIONS, cluster_scoped=(),
                              source=source)
    spec = ctx.mapping(obj.get("spec"), field="spec")
    froms, tos = [], []
    for index, item in enumerate(ctx.sequence(spec.get("from"), field="spec.from")):
        at = f"spec.from[{index}]"
        entry = ctx.mapping(item, field=at)
        froms.append(ReferenceGrantFrom(group=ctx.optional_str(entry, "group", at=at) or "",
                                        kind=ctx.required_str(entry, "kind", at=at),
                                        namespace=ctx.required_str(entry, "namespace", at=at)))
    for index, item in enumerate(ctx.sequence(spec.get("to"), field="spec.to")):
        at = f"spec.to[{index}]"
        entry = ctx.mapping(item, field=at)
        tos.append(ReferenceGrantTo(group=ctx.optional_str(entry, "group", at=at) or "",
                                    kind=ctx.required_str(entry, "kind", at=at),
                                    name=ctx.optional_str(entry, "name", at=at)))
    if not froms:
        ctx.fail("spec.from", "at least one entry is required")
    if not tos:
        ctx.fail("spec.to", "at least one entry is required")
    return ReferenceGrant(namespace=ctx.scoped_namespace, name=ctx.name, from_=tuple(froms),
                          to=tuple(tos))
