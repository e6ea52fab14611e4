"""Keeps the data plane in step with the store: routes, certificates, HTTP-01 tokens and
TLS-ALPN-01 certificates.

Store events arrive on reconciler threads; the handshake and request paths
only ever read what this feed publishes (an immutable route table swapped by
reference, the certificate index, a token dict), so nothing slow happens
while a client waits. Rebuilds are debounced: a burst of events (500
Ingresses at start-up) costs one rebuild, not 500.

With a load-balancer address configured (a fixed one, or with
--publish-service its Service's, followed as they change:
`runtime.published_service`), every Ingress this data plane serves gets it
in `status.loadBalancer.ingress` (an `ip` entry for an IP address, else a
`hostname`), as every Ingress controller reports where it serves; the
write is skipped when the status already says so, and the entry is taken
away again from an Ingress that is no longer served. Only the Store
protocol is used, so the same feed runs against the local store and the
Kubernetes API.

Gateway API objects (GatewayClass, Gateway, ListenerSet, HTTPRoute, ReferenceGrant) are a
second route source (`certctl.routes.gateway`) served from the same route
table; its statuses (GatewayClass, Gateway and ListenerSet conditions, listeners, the
route parents of our controllerName) are written after every rebuild that
changes them, with `status.addresses` from the load-balancer address, else
the listen address when it is a specific one. A cluster without the Gateway
API CRDs simply has none of these objects.
"""

from __future__ import annotations

import asyncio
import datetime
import functools
import ipaddress
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from certctl.admin import dashboard, health
from certctl.admin import server as admin_server
from certctl.admin.events import EventRecorder
from certctl.api import conditions, parsing, resources
from certctl.api import gateway as gateway_api
from certctl.api.errors import InvalidObject
from certctl.api.resources import ObjectKey
from certctl.controllers import reconciling
from certctl.dataplane import DEFAULT_MAX_CONNECTIONS, certstore, routing, server
from certctl.pki import secret as tls_secret
from certctl.routes import gateway as gateway_routes
from certctl.routes import ingress as ingress_routes
from certctl.routes import ingress_annotations, model
from certctl.solvers import tls_alpn01_solver
from certctl.store.interface import Conflict, Forbidden, NotFound, Object, Store, WatchEvent

logger = logging.getLogger(__name__)

# Namespaces for their labels (Gateway listeners taking routes `from: Selector`).
ROUTING_KINDS = frozenset({"Ingress", "Service", "EndpointSlice", "Endpoints", "IngressClass",
                           "Namespace", *gateway_api.KINDS})
CONTROLLER_NAME = "certctl.io/ingress-controller"
DEBOUNCE_SECONDS = 0.02
# A refresh that failed (the API down past the store's own retries) is tried
# again after these, doubling.
FIRST_RETRY_SECONDS = 0.5
MAX_RETRY_SECONDS = 30.0


class DataPlaneFeed:
    def __init__(
        self,
        *,
        store: Store,
        certificates: certstore.CertificateIndex,
        publish_routes: Callable[[routing.RouteTable], None],
        ingress_class: str,
        load_balancer_address: str | None = None,
        enforce_access_annotations: bool = True,
        gateway_address: str | None = None,
        clock: reconciling.Clock = reconciling.system_clock,
        on_loaded: Callable[[], None] | None = None,
    ) -> None:
        """`load_balancer_address` (an IP or a DNS name) goes into the status of
        served Ingresses; None leaves their status alone. `enforce_access_annotations`
        False serves Ingresses with access annotations certctl does not enforce.
        `gateway_address` goes into served Gateways' `status.addresses`. `on_loaded` is
        called once, after the first refresh that loaded the routes (with their Services)
        and the certificates: the data plane's readiness."""
        self._on_loaded = on_loaded
        self.routes = model.RouteSet()  # the route set last published (for the dashboard)
        self._store = store
        self._certificates = certificates
        self._publish_routes = publish_routes
        self._ingress_class = ingress_class
        self._load_balancer = _load_balancer_entries(load_balancer_address)
        # Entries published before and no longer (set_load_balancer): taken away too.
        self._withdrawn: list[dict[str, str]] = []
        self._served: frozenset[ObjectKey] = frozenset()
        self._status_written: set[ObjectKey] = set()
        self._enforce_access_annotations = enforce_access_annotations
        self._reported: frozenset[model.SourceProblem] = frozenset()
        self._tokens: dict[str, tuple[str, str]] = {}  # token -> (dns name, key authorization)
        # Live TLS-ALPN-01 Challenges -> the (dns name, key authorization) answered for them.
        self._tls_alpn01: dict[ObjectKey, tuple[str, str]] = {}
        self._served_secrets: dict[ObjectKey, str] = {}  # Secret -> resourceVersion loaded
        # More Secrets to serve than the routes name (on-demand TLS's Certificates').
        self._more_secrets: Callable[[], frozenset[ObjectKey]] = frozenset
        # (namespace, name) of the Secrets the routes' basic authentication read.
        self._auth_secrets: frozenset[tuple[str, str]] = frozenset()
        self._wake = threading.Event()
        self._stopping = False
        self._routes_dirty = True
        self._secrets_dirty = True
        self._statuses_dirty = False
        self._gateway_addresses = _gateway_addresses(gateway_address)
        self._clock = clock
        self._gateways = gateway_routes.Compiled(routes=model.RouteSet())
        self._gateway_statuses_dirty = False
        # HTTPRoutes whose status has a parent entry of ours (to take it back when detached).
        self._route_parents_written: set[ObjectKey] = set()
        self._forbidden_kinds: set[str] = set()  # Gateway API kinds logged as not readable
        # (namespace, name) of the Secrets our Gateways' listeners name, resolved or not.
        self._listener_secrets: frozenset[tuple[str, str]] = frozenset()
        self._thread = threading.Thread(target=self._run, name="dataplane-feed", daemon=True)

    def start(self) -> None:
        """Load everything once now; when that fails (the API refuses, RBAC is missing), the
        feed's thread retries with backoff and the data plane stays not ready meanwhile."""
        try:
            self.refresh()
        except Exception:
            logger.exception("loading routes and certificates failed; retrying")
            self._wake.set()
        self._thread.start()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(5)

    # --- events --------------------------------------------------------------

    def on_event(self, event: WatchEvent) -> None:
        kind = event.key.kind
        if kind == "Challenge":
            self._on_challenge(event)
            return
        if kind in ROUTING_KINDS or (
            kind == "Secret" and (event.key.namespace or "", event.key.name) in (
                self._auth_secrets | self._listener_secrets)
        ):
            self._routes_dirty = True
        if kind in ("Ingress", "Secret", "Gateway"):
            self._secrets_dirty = True
        if self._routes_dirty or self._secrets_dirty:
            self._wake.set()

    def _on_challenge(self, event: WatchEvent) -> None:
        spec = event.obj.get("spec") or {}
        token = spec.get("token")
        if not isinstance(token, str):
            return
        state = (event.obj.get("status") or {}).get("state")
        ended = event.type == "DELETED" or state in ("valid", "invalid")
        if ended:
            self._tokens.pop(token, None)
        elif spec.get("type") == "HTTP-01":
            self._tokens[token] = (str(spec.get("dnsName", "")).lower(), str(spec.get("key")))
        if spec.get("type") == "TLS-ALPN-01":
            self._on_tls_alpn01(event.key, spec, ended=ended)

    def _on_tls_alpn01(self, key: ObjectKey, spec: dict[str, Any], *, ended: bool) -> None:
        """Answer acme-tls/1 handshakes for the Challenge's name while it is live; each
        replica makes its own certificate (only its extension and name are checked)."""
        if ended:
            if self._tls_alpn01.pop(key, None) is not None:
                self._certificates.remove_acme_tls_certificate(source=key)
            return
        answer = (str(spec.get("dnsName", "")).lower(), str(spec.get("key")))
        if self._tls_alpn01.get(key) == answer:
            return  # a status update: the certificate answering it is unchanged
        chain_pem, key_pem = tls_alpn01_solver.challenge_certificate(
            dns_name=answer[0], key_authorization=answer[1])
        self._certificates.set_acme_tls_certificate(source=key,
                                                    name=tls_alpn01_solver.server_name(answer[0]),
                                                    chain_pem=chain_pem, key_pem=key_pem)
        self._tls_alpn01[key] = answer

    def serve_secrets(self, source: Callable[[], frozenset[ObjectKey]]) -> None:
        """Also serve the Secrets `source()` names (read at each load; from any thread)."""
        self._more_secrets = source
        self._secrets_dirty = True
        self._wake.set()

    def set_load_balancer(self, entries: list[dict[str, str]]) -> None:
        """What served Ingresses' `status.loadBalancer.ingress` says from now on (with
        --publish-service, its Service's addresses as they change); from any thread."""
        previous = self._load_balancer or []
        self._withdrawn = [e for e in (*self._withdrawn, *previous) if e not in entries]
        self._load_balancer = entries
        self._statuses_dirty = True
        self._wake.set()

    def respond_to_challenge(self, host: str, token: str) -> str | None:
        """The key authorization for a live challenge of this host, else None (a 404).

        An IPv6 address arrives bracketed (`[::1]`, the routing key) while its
        Challenge names it bare (RFC 8738 identifiers), in canonical form.
        """
        found = self._tokens.get(token)
        if found is None:
            return None
        if host.startswith("["):
            try:
                host = str(ipaddress.IPv6Address(host[1:-1]))
            except ValueError:
                return None
        if found[0] != host.lower():
            return None
        return found[1]

    # --- rebuilding ----------------------------------------------------------

    def _run(self) -> None:
        retry_delay = FIRST_RETRY_SECONDS
        while not self._stopping:
            self._wake.wait()
            if self._stopping:
                return
            self._wake.clear()
            time.sleep(DEBOUNCE_SECONDS)  # let a burst of events land
            try:
                self.refresh()
            except Exception:
                logger.exception("refreshing the data plane failed")
                # What failed is still marked dirty: try again, later each time
                # (sooner when a new event or stop() sets the wake-up).
                self._wake.wait(retry_delay)
                retry_delay = min(retry_delay * 2, MAX_RETRY_SECONDS)
                self._wake.set()
            else:
                retry_delay = FIRST_RETRY_SECONDS

    def refresh(self) -> None:
        """Rebuild what events marked dirty; on failure it stays marked for the next try.

        Ingress statuses come last: a status the API refuses (a 403 from a
        Role without `ingresses/status`, a server down) must not keep routes
        or certificates from being served.
        """
        if self._routes_dirty:
            # Cleared before reading, so an event arriving meanwhile marks it again.
            self._routes_dirty = False
            try:
                self._refresh_routes()
            except Exception:
                self._routes_dirty = True
                raise
        if self._secrets_dirty:
            self._secrets_dirty = False
            try:
                self._load_certificates()
            except Exception:
                self._secrets_dirty = True
                raise
        if self._on_loaded is not None:
            loaded, self._on_loaded = self._on_loaded, None
            loaded()
        if self._gateway_statuses_dirty:
            self._gateway_statuses_dirty = False
            try:
                self._write_gateway_statuses()
            except Exception:
                self._gateway_statuses_dirty = True
                raise
        if self._statuses_dirty and self._load_balancer is not None:
            self._statuses_dirty = False
            try:
                self._write_statuses(self._load_balancer)
            except Exception:
                self._statuses_dirty = True
                raise

    def _refresh_routes(self) -> None:
        served_secrets = self._gateways.secrets
        table = self._build_routes()
        if self._gateways.secrets != served_secrets:
            self._secrets_dirty = True  # a listener's Secret resolved, or no longer
        self._publish_routes(table)
        # The Ingresses served (the table's also names Gateways and HTTPRoutes, whose
        # statuses are the Gateway API's own).
        self._served = frozenset(key for key in table.served if key.kind == "Ingress")
        self._report(table.problems)
        self._statuses_dirty = True
        self._gateway_statuses_dirty = True

    def _report(self, problems: tuple[model.SourceProblem, ...]) -> None:
        """A Warning event (logged too) on the source object of each problem not reported yet."""
        for problem in sorted(set(problems) - self._reported,
                              key=lambda p: (str(p.source), p.message)):
            obj = self._store.get(kind=problem.source.kind, namespace=problem.source.namespace,
                                  name=problem.source.name)
            if obj is not None:
                self._store.emit_event(obj=obj, type="Warning", reason=problem.reason,
                                       message=problem.message)
        self._reported = frozenset(problems)

    def _write_statuses(self, entries: list[dict[str, str]]) -> None:
        """Served Ingresses say where they are served; ones no longer served stop saying it."""
        for key in sorted(self._served | self._status_written, key=str):
            served = key in self._served
            obj = self._store.get(kind="Ingress", namespace=key.namespace, name=key.name)
            if obj is None:
                self._status_written.discard(key)
                continue
            status = obj.get("status") or {}
            current = (status.get("loadBalancer") or {}).get("ingress") or []
            wanted = entries if served else [
                e for e in current if e not in entries and e not in self._withdrawn]
            if current == wanted:
                if served:
                    self._status_written.add(key)
                else:
                    self._status_written.discard(key)
                continue
            obj["status"] = {**status, "loadBalancer": {"ingress": wanted} if wanted else {}}
            try:
                self._store.replace_status(obj=obj)
            except Conflict:
                # Changed since we read it: its watch event brings us back here.
                self._statuses_dirty = True
                self._wake.set()
                continue
            except NotFound:
                pass
            if served:
                self._status_written.add(key)
            else:
                self._status_written.discard(key)

    def _build_routes(self) -> routing.RouteTable:
        # Ingress problems are reported by ingress-shim; the rest only matter here.
        ingresses = _parsed(self._store.list(kind="Ingress"), parsing.parse_ingress, quiet=True)
        services = _parsed(self._store.list(kind="Service"), parsing.parse_service)
        slices = _parsed(self._store.list(kind="EndpointSlice"), parsing.parse_endpoint_slice)
        for endpoints in self._store.list(kind="Endpoints"):
            try:
                slices.extend(parsing.parse_endpoints(endpoints))
            except InvalidObject as err:
                logger.error("%s", err)
        classes = _parsed(self._store.list(kind="IngressClass"), parsing.parse_ingress_class)
        auth_secrets = self._read_auth_secrets(ingresses)
        self._gateways = self._compile_gateways(services)
        routes = ingress_routes.compile_ingresses(
            ingresses=ingresses,
            ingress_classes=classes,
            controller_name=CONTROLLER_NAME,
            class_name=self._ingress_class,
            enforce_access_annotations=self._enforce_access_annotations,
            secret_data=lambda namespace, name: auth_secrets.get((namespace, name)),
        )
        gateway_set = self._gateways.routes
        if gateway_set.routes or gateway_set.served:
            routes = model.RouteSet(routes=routes.routes + gateway_set.routes,
                                    defaults=routes.defaults,
                                    served=routes.served | gateway_set.served,
                                    problems=routes.problems + gateway_set.problems)
        self.routes = routes
        return routing.RouteTable.build(routes=routes, services=services, endpoint_slices=slices)

    def _compile_gateways(self, services: list[resources.Service]) -> gateway_routes.Compiled:
        gateways = _parsed(self._listed("Gateway"), gateway_api.parse_gateway)
        listener_sets = _parsed(self._listed("ListenerSet"), gateway_api.parse_listener_set)
        http_routes = _parsed(self._listed("HTTPRoute"), gateway_api.parse_http_route)
        # Before reading them: a Secret changing meanwhile marks the routes again.
        self._listener_secrets = frozenset(
            (ref.namespace or owner.namespace, ref.name) for owner in (*gateways, *listener_sets)
            for listener in owner.listeners for ref in listener.certificate_refs
        ) | frozenset((route.namespace, name) for route in http_routes
                      if (name := _route_certificate_secret(route)) is not None)
        return gateway_routes.compile_gateways(
            classes=_parsed(self._listed("GatewayClass"),
                            gateway_api.parse_gateway_class),
            gateways=gateways,
            listener_sets=listener_sets,
            http_routes=http_routes,
            grants=_parsed(self._listed("ReferenceGrant"),
                           gateway_api.parse_reference_grant),
            services=services,
            secret_exists=self._tls_secret_exists,
            # Read only when a selector needs their labels.
            namespaces=_parsed(self._listed("Namespace"), gateway_api.parse_namespace)
            if _selects_namespaces(gateways, listener_sets) else (),
        )

    def _listed(self, kind: str) -> list[Object]:
        """The objects of a Gateway API kind (or Namespaces): none when the cluster does not
        know the kind (its CRDs not installed) or the data plane may not read it (a Role from
        before certctl served the Gateway API): Ingresses are served all the same."""
        try:
            return self._store.list(kind=kind)
        except NotFound:
            return []
        except Forbidden as err:
            if kind not in self._forbidden_kinds:
                self._forbidden_kinds.add(kind)
                logger.warning("%s are not served: the data plane may not list them (%s); "
                               "its Role needs the Gateway API rules of "
                               "manifests/rbac-dataplane.yaml", kind, err)
            return []

    def _tls_secret_exists(self, namespace: str, name: str) -> bool:
        secret = self._store.get(kind="Secret", namespace=namespace, name=name)
        if secret is None:
            return False
        try:
            tls_secret.read_tls_secret(secret)
        except (tls_secret.SecretInvalid, ValueError):
            return False
        return True

    def _write_gateway_statuses(self) -> None:
        """GatewayClass, Gateway and HTTPRoute statuses as compiled; a write that changes
        nothing is skipped, so replicas agreeing on the status write it once."""
        now = self._clock()
        compiled = self._gateways
        for found in compiled.classes:
            self._update_status(kind="GatewayClass", namespace=None, name=found.name,
                                change=functools.partial(_class_status, found=found, now=now))
        for gateway in (*compiled.gateways, *compiled.listener_sets):
            self._update_status(kind=gateway.key.kind, namespace=gateway.key.namespace,
                                name=gateway.key.name,
                                change=functools.partial(self._gateway_status, found=gateway,
                                                         now=now))
        wanted = {route.key: route for route in compiled.http_routes}
        for key in sorted(set(wanted) | self._route_parents_written, key=str):
            route = wanted.get(key)
            self._update_status(kind="HTTPRoute", namespace=key.namespace, name=key.name,
                                change=functools.partial(_route_status, found=route, now=now))
            if route is None:
                self._route_parents_written.discard(key)
            else:
                self._route_parents_written.add(key)

    def _gateway_status(self, status: dict[str, Any], *, found: gateway_routes.GatewayStatus,
                        now: datetime.datetime) -> dict[str, Any]:
        before = {entry.get("name"): entry for entry in status.get("listeners") or []
                  if isinstance(entry, dict)}
        listeners = [{
            "name": listener.name,
            "supportedKinds": [{"group": k.group, "kind": k.kind}
                               for k in listener.supported_kinds],
            "attachedRoutes": listener.attached_routes,
            "conditions": _conditions((before.get(listener.name) or {}).get("conditions") or [],
                                      listener.conditions, generation=found.generation, now=now),
        } for listener in found.listeners]
        updated = {**status, "listeners": listeners, "conditions": _conditions(
            status.get("conditions") or [], found.conditions, generation=found.generation,
            now=now)}
        if found.attached_listener_sets is not None:  # a Gateway (not a ListenerSet)
            updated["attachedListenerSets"] = found.attached_listener_sets
            if self._gateway_addresses:
                updated["addresses"] = self._gateway_addresses
        return updated

    def _update_status(self, *, kind: str, namespace: str | None, name: str,
                       change: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
        obj = self._store.get(kind=kind, namespace=namespace, name=name)
        if obj is None:
            return
        status = dict(obj.get("status") or {})
        wanted = change(status)
        if wanted == status:
            return
        obj["status"] = wanted
        try:
            self._store.replace_status(obj=obj)
        except Conflict:
            self._gateway_statuses_dirty = True  # its watch event brings us back
            self._wake.set()
        except NotFound:
            pass

    def _read_auth_secrets(
        self, ingresses: list[resources.Ingress]
    ) -> dict[tuple[str, str], dict[str, bytes]]:
        """The Secrets access rules read (basic auth, client certificates' CA); one that is
        missing or unreadable is left out, and the Ingress naming it is refused, not served
        open."""
        wanted = {found for ingress in ingresses for found in ingress_annotations.secret_names(
            ingress.annotations, namespace=ingress.namespace)}
        self._auth_secrets = frozenset(wanted)  # before reading: a change meanwhile re-marks
        found = {}
        for namespace, name in sorted(wanted):
            secret = self._store.get(kind="Secret", namespace=namespace, name=name)
            if secret is None:
                continue
            try:
                found[(namespace, name)] = tls_secret.decoded_data(secret)
            except tls_secret.SecretInvalid as err:
                logger.warning("Secret %s/%s is not used for authentication: %s", namespace,
                               name, err)
        return found

    def _load_certificates(self) -> None:
        wanted: set[ObjectKey] = set()
        for ingress in self._store.list(kind="Ingress"):
            namespace = ingress["metadata"].get("namespace")
            name = ingress["metadata"].get("name")
            if ObjectKey(kind="Ingress", namespace=namespace, name=name) not in self._served:
                continue  # another controller's Ingress: its Secrets are not ours to serve
            for tls in (ingress.get("spec") or {}).get("tls") or []:
                name = tls.get("secretName") if isinstance(tls, dict) else None
                if isinstance(name, str) and name:
                    wanted.add(ObjectKey(kind="Secret", namespace=namespace, name=name))
        wanted |= self._gateways.secrets
        wanted |= self._more_secrets()
        for key in wanted:
            secret = self._store.get(kind="Secret", namespace=key.namespace, name=key.name)
            if secret is None:
                self._drop(key)
                continue
            version = str(secret["metadata"].get("resourceVersion"))
            if self._served_secrets.get(key) == version:
                continue
            try:
                contents = tls_secret.read_tls_secret(secret)
                self._certificates.set_certificate(source=key, chain_pem=contents.chain_pem,
                                                   key_pem=contents.key_pem)
            except (tls_secret.SecretInvalid, ValueError) as err:
                logger.warning("%s is not served: %s", key, err)
                self._drop(key)
                continue
            self._served_secrets[key] = version
        for key in set(self._served_secrets) - wanted:
            self._drop(key)

    def _drop(self, key: ObjectKey) -> None:
        if self._served_secrets.pop(key, None) is not None:
            self._certificates.remove_certificate(source=key)


def _load_balancer_entries(address: str | None) -> list[dict[str, str]] | None:
    if address is None:
        return None
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return [{"hostname": address}]
    return [{"ip": address}]


def _selects_namespaces(gateways: list[gateway_api.Gateway],
                        listener_sets: list[gateway_api.ListenerSet]) -> bool:
    """Whether a Gateway takes ListenerSets, or a listener routes, by namespace labels."""
    owners: list[gateway_api.Gateway | gateway_api.ListenerSet] = [*gateways, *listener_sets]
    return any(gateway.allowed_listeners_from == "Selector" for gateway in gateways) or any(
        listener.allowed_from == "Selector" for owner in owners for listener in owner.listeners)


def _route_certificate_secret(route: gateway_api.HTTPRoute) -> str | None:
    """The Secret of a route's opt-in Certificate; a bad annotation is gateway-shim's to
    report."""
    try:
        return gateway_api.route_certificate_secret(route)
    except InvalidObject:
        return None


def _gateway_addresses(address: str | None) -> list[dict[str, str]]:
    if address is None:
        return []
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return [{"type": "Hostname", "value": address}]
    return [{"type": "IPAddress", "value": address}]


def _conditions(
    current: list[dict[str, Any]], wanted: tuple[gateway_routes.Condition, ...], *,
    generation: int, now: datetime.datetime,
) -> list[dict[str, Any]]:
    found = current
    for condition in wanted:
        found = conditions.set_condition(found, type=condition.type, status=condition.status,
                                         reason=condition.reason, message=condition.message,
                                         now=now, observed_generation=generation)
    return found


def _class_status(status: dict[str, Any], *, found: gateway_routes.ClassStatus,
                  now: datetime.datetime) -> dict[str, Any]:
    return {**status, "conditions": _conditions(status.get("conditions") or [], found.conditions,
                                                generation=found.generation, now=now)}


def _route_status(status: dict[str, Any], *, found: gateway_routes.RouteStatus | None,
                  now: datetime.datetime) -> dict[str, Any]:
    """`status.parents` with the entries of other controllers kept and ours replaced."""
    parents = [entry for entry in status.get("parents") or []
               if isinstance(entry, dict)]
    ours = {_parent_key(entry.get("parentRef") or {}): entry for entry in parents
            if entry.get("controllerName") == gateway_routes.CONTROLLER_NAME}
    kept = [entry for entry in parents
            if entry.get("controllerName") != gateway_routes.CONTROLLER_NAME]
    for parent in found.parents if found is not None else ():
        ref: dict[str, Any] = {"group": parent.parent.group, "kind": parent.parent.kind,
                               "name": parent.parent.name}
        if parent.parent.namespace is not None:
            ref["namespace"] = parent.parent.namespace
        if parent.parent.section_name is not None:
            ref["sectionName"] = parent.parent.section_name
        if parent.parent.port is not None:
            ref["port"] = parent.parent.port
        before = ours.get(_parent_key(ref)) or {}
        kept.append({"parentRef": ref, "controllerName": gateway_routes.CONTROLLER_NAME,
                     "conditions": _conditions(before.get("conditions") or [], parent.conditions,
                                               generation=found.generation if found else 0,
                                               now=now)})
    return {**status, "parents": kept}


def _parent_key(ref: dict[str, Any]) -> tuple[object, ...]:
    return (ref.get("group", gateway_api.GROUP), ref.get("kind", "Gateway"), ref.get("namespace"),
            ref.get("name"), ref.get("sectionName"), ref.get("port"))


def _parsed(
    objects: list[Object], parse: Callable[..., Any], *, quiet: bool = False
) -> list[Any]:
    """Parse what parses; an invalid object is skipped and reported, not fatal."""
    found = []
    for obj in objects:
        try:
            found.append(parse(obj, source=reconciling.manifest_source(obj)))
        except InvalidObject as err:
            (logger.debug if quiet else logger.error)("data plane skips %s", err)
    return found


@dataclass(frozen=True, kw_only=True)
class Listening:
    """Where and as what the data plane serves (`serve` and `dataplane` alike)."""

    address: str
    http_port: int | None  # None: no HTTP listener (--no-http)
    https_port: int
    ingress_class: str
    metrics_port: int | None = None  # the admin address's port: /metrics, probes; None: off
    metrics_address: str | None = None  # the admin address's host; None: `address`
    load_balancer_address: str | None = None  # for served Ingresses' status; None: untouched
    tls_context_cache: int = certstore.DEFAULT_CONTEXT_CACHE_SIZE  # SSLContexts kept built
    max_connections: int = DEFAULT_MAX_CONNECTIONS  # client connections held at once
    # False serves Ingresses whose access annotations certctl does not enforce (the
    # operator's explicit opt-out, --allow-unenforced-access-annotations).
    enforce_access_annotations: bool = True
    # At stop, seconds in-flight requests and streams get to finish (0: cut them).
    drain_timeout: float = 0.0


# What a data plane's readiness waits for, after its caller's own steps.
LOADED = "routes, Services and certificates loaded"


class FedDataPlane:
    """The data plane, its certificate index, and the feed keeping both in step with a store;
    and its process's admin address (with `listening.metrics_port`)."""

    def __init__(self, *, store: Store, listening: Listening, process: str = "dataplane",
                 awaiting: tuple[str, ...] = (), status_store: Store | None = None,
                 events: EventRecorder | None = None) -> None:
        """`process` names the command on the dashboard; `awaiting` are the caller's steps
        before the process is ready (LOADED comes after them); `status_store` and `events`
        add the certificates, orders and events views (`serve`: one process does all)."""
        self.listening = listening
        self.health = health.Health(waiting_for=(*awaiting, LOADED))
        self.certificate_index = certstore.CertificateIndex(
            context_cache_size=listening.tls_context_cache
        )
        self.server = server.DataPlane(
            http_address=None if listening.http_port is None
            else (listening.address, listening.http_port),
            https_address=(listening.address, listening.https_port),
            certificates=self.certificate_index,
            challenge_responder=self._respond_to_challenge,
            max_connections=listening.max_connections,
        )
        self.feed = DataPlaneFeed(
            store=store,
            certificates=self.certificate_index,
            publish_routes=self.server.set_routes,
            ingress_class=listening.ingress_class,
            load_balancer_address=listening.load_balancer_address,
            enforce_access_annotations=listening.enforce_access_annotations,
            gateway_address=listening.load_balancer_address or (
                None if listening.address in ("", "0.0.0.0", "::")  # noqa: S104 - compared
                else listening.address),
            on_loaded=lambda: self.health.done(LOADED),
        )
        self.admin: admin_server.AdminServer | None = None
        if listening.metrics_port is not None:
            self.admin = admin_server.AdminServer(
                address=(listening.metrics_address or listening.address,
                         listening.metrics_port),
                health=self.health,
                registry=self.server.metrics.registry,
                dashboard=dashboard.Dashboard(sources=dashboard.Sources(
                    process=process, store=status_store, events=events,
                    routes=lambda: self.feed.routes, route_store=store,
                    served_names=self.certificate_index.names)))

    def start_admin(self) -> None:
        """Serve the admin address, first, so that its probes answer while the rest starts;
        OSError if its port is taken."""
        if self.admin is not None:
            self.admin.start()

    def _respond_to_challenge(self, host: str, token: str) -> str | None:
        return self.feed.respond_to_challenge(host, token)

    async def start_server(self) -> None:
        """Bind the ports; OSError (after closing what did bind) if one is taken."""
        self.health.watch_loop(asyncio.get_running_loop())
        try:
            await self.server.start()
        except OSError:
            await self.server.stop()
            if self.admin is not None:
                self.admin.stop()
            raise
        http = ("no HTTP" if self.listening.http_port is None
                else f"HTTP on {self.listening.address}:{self.server.http_port}")
        logger.info("serving %s and HTTPS on %s:%s", http, self.listening.address,
                    self.server.https_port)

    async def stop(self) -> None:
        self.feed.stop()
        await self.server.stop(grace=self.listening.drain_timeout)
        if self.admin is not None:
            self.admin.stop()
