"""gateway-shim: one Certificate per TLS Secret of an annotated Gateway's listeners.

Behaves like cert-manager's gateway-shim: a Gateway annotated with an issuer
(`cert-manager.io/cluster-issuer`, `cert-manager.io/issuer`, or certctl's
own keys) gets, for each HTTPS or TLS listener with `tls.mode: Terminate`, a
`hostname` and `tls.certificateRefs`, a Certificate named after each
referenced Secret with the listener's hostname in `dnsNames`; listeners
sharing a Secret merge into one Certificate. A listener without a hostname,
with a reference to another namespace, another kind, or a mode other than
Terminate is skipped with a Warning naming its field (as cert-manager's
"Skipped a listener block" events). The Certificates are owned by the
Gateway and carry the same annotation-driven fields as an Ingress's
(`ingress_shim`, whose annotation handling and create-or-update this
reuses); those no longer requested are deleted.

A ListenerSet's listeners get theirs the same way, owned by the ListenerSet
and in its namespace, with its annotations over its Gateway's (an issuer named
on the ListenerSet replaces the Gateway's whole), as long as the Gateway
allows it (`spec.allowedListeners`); a Gateway change looks at them again.

An HTTPRoute annotated `certctl.io/certificate: "true"` and with an issuer
annotation gets one Certificate too (the opt-in users ask cert-manager for in
#6051 and #7473: certificates per route, without a wildcard or an edit of the
Gateway), named by `certctl.io/certificate-secret-name` or `<route>-tls`, for
the route's hostnames that HTTPS listeners of our Gateways admit, as the
route source (`routes.gateway`) attaches it: the listener still decides. It
is owned by the route, and looked at again when the route or a Gateway it
names changes.

HTTP-01 for these names needs no solver route: the data plane answers
`/.well-known/acme-challenge/` for every host.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from certctl.api import annotations as annotation_keys
from certctl.api import gateway as gateway_api
from certctl.api import names
from certctl.api.errors import InvalidObject
from certctl.api.resources import ObjectKey
from certctl.controllers import ingress_shim, reconciling
from certctl.controllers.reconciling import Result
from certctl.routes import gateway as gateway_routes
from certctl.store.interface import Forbidden, NotFound, Object, Store

GATEWAY_NAME_LABEL = "certctl.io/gateway-name"
HTTPROUTE_NAME_LABEL = "certctl.io/httproute-name"
LISTENER_SET_NAME_LABEL = "certctl.io/listenerset-name"
BAD_CONFIG = "BadConfig"
NOT_ADMITTED = "HostnamesNotAdmitted"
NOT_ALLOWED = "NotAllowed"
_ISSUER_KEYS = frozenset({
    annotation_keys.CLUSTER_ISSUER, annotation_keys.ISSUER, annotation_keys.CM_CLUSTER_ISSUER,
    annotation_keys.CM_ISSUER, *annotation_keys.ISSUER_KIND_KEYS,
    *annotation_keys.ISSUER_GROUP_KEYS})
T = TypeVar("T")
_TLS_PROTOCOLS = frozenset({"HTTPS", "TLS"})


@dataclass(frozen=True, kw_only=True)
class ListenerSetAnnotations:
    """What the shim reads for a ListenerSet's listeners: its annotations over its Gateway's.
    The issuer goes as a whole: a ListenerSet naming any issuer annotation takes none of the
    Gateway's (its `issuer` must not lose to the Gateway's `cluster-issuer`)."""

    listener_set: gateway_api.ListenerSet
    gateway: gateway_api.Gateway

    @property
    def namespace(self) -> str:
        return self.listener_set.namespace

    @property
    def name(self) -> str:
        return self.listener_set.name

    @property
    def key(self) -> ObjectKey:
        return self.listener_set.key

    def annotation(self, name: str) -> str | None:
        own = self.listener_set.annotation(name)
        if own is not None:
            return own
        if name in _ISSUER_KEYS and any(self.listener_set.annotation(key) is not None
                                        for key in _ISSUER_KEYS):
            return None
        return self.gateway.annotation(name)


def desired_certificates(*, gateway: gateway_api.Gateway,
                         gateway_obj: Object) -> ingress_shim.Desired:
    """The Certificates an annotated Gateway asks for, and the listeners skipped."""
    return _listener_certificates(owner=gateway, owner_obj=gateway_obj, annotations=gateway,
                                  label=GATEWAY_NAME_LABEL)


def desired_listener_set_certificates(
    *, listener_set: gateway_api.ListenerSet, listener_set_obj: Object,
    gateway: gateway_api.Gateway,
) -> ingress_shim.Desired:
    """The Certificates of a ListenerSet's listeners, its Gateway having taken it; owned by
    the ListenerSet, in its namespace."""
    return _listener_certificates(
        owner=listener_set, owner_obj=listener_set_obj,
        annotations=ListenerSetAnnotations(listener_set=listener_set, gateway=gateway),
        label=LISTENER_SET_NAME_LABEL)


def _listener_certificates(
    *, owner: gateway_api.Gateway | gateway_api.ListenerSet, owner_obj: Object,
    annotations: ingress_shim.ShimSource, label: str,
) -> ingress_shim.Desired:
    issuer = ingress_shim.select_issuer(annotations)
    if issuer is None:
        return ingress_shim.Desired(certificates=[], problems=[], notices=[])
    source = reconciling.manifest_source(owner_obj)
    try:
        annotation_fields = ingress_shim.spec_annotation_fields(annotations, source)
        san_only_name = ingress_shim.long_common_name(annotations, source)
    except InvalidObject as err:
        return ingress_shim.Desired(certificates=[], problems=[err], notices=[])
    problems: list[InvalidObject] = []
    hosts: dict[str, list[str]] = {}  # Secret name -> hostnames, in listener order
    for index, listener in enumerate(owner.listeners):
        if listener.protocol not in _TLS_PROTOCOLS:
            continue
        problem = _skipped(owner, listener, index=index)
        if problem is not None:
            problems.append(InvalidObject(kind=owner.key.kind, namespace=owner.namespace,
                                          name=owner.name, field=problem[0],
                                          message=f"listener skipped: {problem[1]}",
                                          source=source))
            continue
        assert listener.hostname is not None  # checked by _skipped
        for ref in listener.certificate_refs:
            found = hosts.setdefault(ref.name, [])
            if listener.hostname not in found:
                found.append(listener.hostname)
    certificates = [_certificate(
        owner_obj=owner_obj, namespace=owner.namespace, secret_name=secret_name,
        dns_names=dns_names, issuer=issuer, annotation_fields=annotation_fields,
        san_only_name=san_only_name, labels=_owner_labels(label, owner.name),
        source=source) for secret_name, dns_names in hosts.items()]
    return ingress_shim.Desired(certificates=certificates, problems=problems,
                                notices=_notices(san_only_name))


def desired_route_certificates(
    *, route: gateway_api.HTTPRoute, route_obj: Object,
    admitted: gateway_routes.RouteCertificate | None,
) -> ingress_shim.Desired:
    """The Certificate an HTTPRoute opted in to, for the hostnames `admitted` (what the
    route source found HTTPS listeners of ours serving it under; None: none)."""
    source = reconciling.manifest_source(route_obj)
    try:
        secret_name = gateway_api.route_certificate_secret(route, source=source)
        if secret_name is None:
            return ingress_shim.Desired(certificates=[], problems=[], notices=[])
        issuer = ingress_shim.select_issuer(route)
        if issuer is None:
            raise InvalidObject(
                kind="HTTPRoute", namespace=route.namespace, name=route.name,
                field=f"metadata.annotations[{gateway_api.ROUTE_CERTIFICATE}]",
                message="asks for a Certificate but names no issuer: annotate the route "
                f"{annotation_keys.CM_CLUSTER_ISSUER} or {annotation_keys.CM_ISSUER} too",
                source=source)
        annotation_fields = ingress_shim.spec_annotation_fields(route, source)
        san_only_name = ingress_shim.long_common_name(route, source)
    except InvalidObject as err:
        return ingress_shim.Desired(certificates=[], problems=[err], notices=[])
    if admitted is None:
        return ingress_shim.Desired(certificates=[], problems=[], notices=[
            "no HTTPS listener of a Gateway served by certctl admits this route's hostnames: "
            "no Certificate (the listener's hostname and allowedRoutes decide)"])
    return ingress_shim.Desired(certificates=[_certificate(
        owner_obj=route_obj, namespace=route.namespace, secret_name=secret_name,
        dns_names=list(admitted.hosts), issuer=issuer, annotation_fields=annotation_fields,
        san_only_name=san_only_name, labels=_owner_labels(HTTPROUTE_NAME_LABEL, route.name),
        source=source)], problems=[], notices=_notices(san_only_name))


def _certificate(
    *, owner_obj: Object, namespace: str, secret_name: str, dns_names: list[str],
    issuer: ingress_shim.IssuerSelection, annotation_fields: list[tuple[tuple[str, ...], Any]],
    san_only_name: str | None, labels: dict[str, str], source: str | None,
) -> Object:
    if san_only_name is not None and san_only_name not in dns_names:
        dns_names = [*dns_names, san_only_name]
    spec: dict[str, Any] = {
        "secretName": secret_name,
        "dnsNames": dns_names,
        "issuerRef": {"name": issuer.name, "kind": issuer.kind, "group": issuer.group},
        "usages": ["digital signature", "key encipherment"],
    }
    for path, value in annotation_fields:
        ingress_shim.set_path(spec, path, value)
    metadata: dict[str, Any] = {
        "name": secret_name, "namespace": namespace, "labels": labels,
        "ownerReferences": [reconciling.owner_reference(owner_obj)]}
    if source:
        metadata["annotations"] = {annotation_keys.MANIFEST_SOURCE: source}
    return {"apiVersion": "certctl.io/v1", "kind": "Certificate", "metadata": metadata,
            "spec": spec}


def _notices(san_only_name: str | None) -> list[str]:
    return [] if san_only_name is None else [
        f"metadata.annotations[{annotation_keys.CM_COMMON_NAME}]: {san_only_name!r} is longer "
        f"than the {names.MAX_COMMON_NAME_LENGTH} characters a certificate subject may hold: "
        "kept in the SAN (spec.dnsNames) only"]


def _skipped(owner: gateway_api.Gateway | gateway_api.ListenerSet,
             listener: gateway_api.Listener, *, index: int) -> tuple[str, str] | None:
    """(field, why) when a TLS listener cannot have a Certificate, as cert-manager checks."""
    at = f"spec.listeners[{index}]"
    if listener.hostname is None:
        return (f"{at}.hostname", "a hostname is required to issue a certificate")
    if listener.tls_mode is None:
        return (f"{at}.tls", "a tls block is required to issue a certificate")
    if listener.tls_mode != "Terminate":
        return (f"{at}.tls.mode", f"{listener.tls_mode}: only Terminate gets a certificate")
    if not listener.certificate_refs:
        return (f"{at}.tls.certificateRefs", "at least one Secret is required")
    for ref_index, ref in enumerate(listener.certificate_refs):
        ref_at = f"{at}.tls.certificateRefs[{ref_index}]"
        if ref.group not in ("", "core") or ref.kind != "Secret":
            return (ref_at, f"{ref.kind} ({ref.group or 'core'}) is not a core Secret")
        if ref.namespace not in (None, owner.namespace):
            return (f"{ref_at}.namespace", f"{ref.namespace}: certificates are issued into "
                    f"the {owner.key.kind}'s own namespace only")
    return None


def reconcile(*, store: Store, key: ObjectKey) -> Result:
    read = _read(store=store, kind="Gateway", key=key, parse=gateway_api.parse_gateway)
    if read is None:
        return Result.done()
    gateway_obj, gateway = read
    _apply(store=store, owner_obj=gateway_obj,
           desired=desired_certificates(gateway=gateway, gateway_obj=gateway_obj),
           notice_reason=ingress_shim.COMMON_NAME_TOO_LONG,
           labels=_owner_labels(GATEWAY_NAME_LABEL, gateway.name))
    return Result.done()


def reconcile_listener_set(*, store: Store, key: ObjectKey) -> Result:
    """A ListenerSet's Certificates, while its Gateway takes it (allowedListeners)."""
    read = _read(store=store, kind="ListenerSet", key=key,
                 parse=gateway_api.parse_listener_set)
    if read is None:
        return Result.done()
    set_obj, listener_set = read
    gateway = _parent_gateway(store=store, listener_set=listener_set)
    if gateway is None:
        desired = ingress_shim.Desired(certificates=[], problems=[], notices=[])
        store.emit_event(obj=set_obj, type="Warning", reason=NOT_ALLOWED, message=(
            "no certificates: its parent Gateway does not exist or does not allow it "
            "(spec.allowedListeners)"))
    else:
        desired = desired_listener_set_certificates(listener_set=listener_set,
                                                    listener_set_obj=set_obj, gateway=gateway)
    _apply(store=store, owner_obj=set_obj, desired=desired,
           notice_reason=ingress_shim.COMMON_NAME_TOO_LONG,
           labels=_owner_labels(LISTENER_SET_NAME_LABEL, listener_set.name))
    return Result.done()


def _parent_gateway(*, store: Store,
                    listener_set: gateway_api.ListenerSet) -> gateway_api.Gateway | None:
    """The ListenerSet's Gateway when it exists and allows the ListenerSet."""
    parent = listener_set.parent_key
    if parent is None:
        return None
    gateway_obj = store.get(kind="Gateway", namespace=parent.namespace, name=parent.name)
    if gateway_obj is None:
        return None
    try:
        gateway = gateway_api.parse_gateway(gateway_obj)
    except InvalidObject:
        return None  # reported on the Gateway by its own reconcile
    try:
        namespace_obj = store.get(kind="Namespace", namespace=None, name=listener_set.namespace)
    except (NotFound, Forbidden):
        namespace_obj = None
    labels = {gateway_api.NAMESPACE_NAME_LABEL: listener_set.namespace}
    if namespace_obj is not None:
        with contextlib.suppress(InvalidObject):  # unlabelled, then
            labels = dict(gateway_api.parse_namespace(namespace_obj).labels)
    if not gateway_routes.allows_listener_set(gateway=gateway, listener_set=listener_set,
                                              labels=labels):
        return None
    return gateway


def listener_sets_of(*, store: Store, gateway: ObjectKey) -> list[ObjectKey]:
    """The ListenerSets naming `gateway` as their parent: its annotations and
    allowedListeners decide their Certificates."""
    return [found.key for found in _parsed(store, "ListenerSet", gateway_api.parse_listener_set)
            if found.parent_key == gateway]


def reconcile_route(*, store: Store, key: ObjectKey) -> Result:
    """An HTTPRoute's opt-in Certificate, for what the listeners of our Gateways admit."""
    read = _read(store=store, kind="HTTPRoute", key=key, parse=gateway_api.parse_http_route)
    if read is None:
        return Result.done()
    route_obj, route = read
    admitted = None
    if route.annotation(gateway_api.ROUTE_CERTIFICATE) not in (None, "false"):
        compiled = gateway_routes.compile_gateways(
            classes=_parsed(store, "GatewayClass", gateway_api.parse_gateway_class),
            gateways=_parsed(store, "Gateway", gateway_api.parse_gateway),
            listener_sets=_parsed(store, "ListenerSet", gateway_api.parse_listener_set),
            http_routes=[route], grants=[], services=[],
            secret_exists=lambda namespace, name: False,
            namespaces=_parsed(store, "Namespace", gateway_api.parse_namespace))
        admitted = next(iter(compiled.route_certificates), None)
    _apply(store=store, owner_obj=route_obj,
           desired=desired_route_certificates(route=route, route_obj=route_obj,
                                              admitted=admitted),
           notice_reason=NOT_ADMITTED if admitted is None
           else ingress_shim.COMMON_NAME_TOO_LONG,
           labels=_owner_labels(HTTPROUTE_NAME_LABEL, route.name))
    return Result.done()


def routes_of(*, store: Store, parents: set[ObjectKey]) -> list[ObjectKey]:
    """The HTTPRoutes opted in to a Certificate that name one of `parents` (Gateways,
    ListenerSets): what their listeners admit decides the routes' Certificates."""
    found = []
    for route in _parsed(store, "HTTPRoute", gateway_api.parse_http_route):
        if route.annotation(gateway_api.ROUTE_CERTIFICATE) in (None, "false"):
            continue
        if any(parent.group == gateway_api.GROUP and ObjectKey(
                kind=parent.kind, namespace=parent.namespace or route.namespace,
                name=parent.name) in parents for parent in route.parent_refs):
            found.append(route.key)
    return found


def _read(*, store: Store, kind: str, key: ObjectKey,
          parse: Callable[..., T]) -> tuple[Object, T] | None:
    """An owner and its model; None when it is gone (its Certificates go with it, by
    ownerReferences) or does not parse (a Warning event on it says why)."""
    obj = store.get(kind=kind, namespace=key.namespace, name=key.name)
    if obj is None:
        return None
    try:
        return obj, parse(obj, source=reconciling.manifest_source(obj))
    except InvalidObject as err:
        store.emit_event(obj=obj, type="Warning", reason=BAD_CONFIG, message=err.detail)
        return None


def _apply(*, store: Store, owner_obj: Object, desired: ingress_shim.Desired,
           notice_reason: str, labels: dict[str, str]) -> None:
    """Report the notices (as `notice_reason`) and problems, create or update the
    Certificates wanted, delete the others the owner owns."""
    kind = owner_obj["kind"]
    namespace = owner_obj["metadata"]["namespace"]
    for notice in desired.notices:
        store.emit_event(obj=owner_obj, type="Warning", reason=notice_reason, message=notice)
    for problem in desired.problems:
        store.emit_event(obj=owner_obj, type="Warning", reason=BAD_CONFIG,
                         message=problem.detail)
    for certificate in desired.certificates:
        ingress_shim.apply_certificate(store=store, ingress_obj=owner_obj,
                                       certificate=certificate)
    wanted = {c["metadata"]["name"] for c in desired.certificates}
    for existing in store.list(kind="Certificate", namespace=namespace, labels=labels or None):
        name = existing["metadata"]["name"]
        if reconciling.is_owned_by(existing, owner_obj) and name not in wanted:
            store.delete(kind="Certificate", namespace=namespace, name=name)
            store.emit_event(obj=owner_obj, type="Normal", reason="DeletedCertificate",
                             message=f"Deleted Certificate {name}: no longer requested by "
                             f"this {kind}")


def _parsed(store: Store, kind: str, parse: Callable[..., T]) -> list[T]:
    """The objects of a kind the cluster may lack (Gateway API CRDs) or the Role may not
    grant, parsed; those that do not parse are left out (the data plane reports them)."""
    try:
        objects = store.list(kind=kind)
    except (NotFound, Forbidden):
        return []
    found = []
    for obj in objects:
        try:
            found.append(parse(obj, source=reconciling.manifest_source(obj)))
        except InvalidObject:
            continue
    return found


def _owner_labels(label: str, name: str) -> dict[str, str]:
    """As ingress-shim's: an owner's name too long for a label value goes unlabelled."""
    if len(name) > 63:
        return {}
    return {label: name}
