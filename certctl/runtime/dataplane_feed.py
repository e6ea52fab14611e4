"""Keeps the data plane in step with the store: routes, certificates, HTTP-01 tokens and
TLS-ALPN-01 certificates.

Store events arrive on reconciler threads; the handshake and request paths
only ever read what this feed publishes (an immutable route table swapped by
reference, the certificate index, a token dict), so nothing slow happens
while a client waits. Updates are debounced: a burst of events (500
Ingresses at start-up) costs one update, not 500.

Updates are incremental: an Ingress event recompiles that Ingress alone
(`routes.ingress.IngressRoutes`), the route table indexes again only the
hosts whose routes changed (`RouteTable.updated`), and only the Secrets it
names, and its status, are looked at again; so an edit costs the same with
10,000 Ingresses as with one. Whole rebuilds remain for what every route may
depend on: an IngressClass (which Ingresses are ours), Services and
EndpointSlices (every backend resolved again from the compiled routes, no
Ingress recompiled), and the Gateway API objects (their routes compiled again
as a whole; no Ingress recompiled).

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
# Events of one change arrive together (a manifest reload notifies all of its at once); a
# short wait still gathers a burst into one update, which is incremental: cheap either way.
DEBOUNCE_SECONDS = 0.005
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
        self._wake = threading.Event()
        self._stopping = False
        # What changed since the last refresh, set by events on any thread (under `_lock`);
        # a refresh takes it all, and on failure leaves everything marked for a whole reload.
        self._lock = threading.Lock()
        self._routes_dirty = True
        self._all_ingresses = True  # recompile every Ingress (start, IngressClass changes)
        self._changed_ingresses: set[ObjectKey] = set()
        self._backends_dirty = True  # Services, EndpointSlices: resolve every backend again
        self._gateways_dirty = True
        self._secrets_dirty = True
        self._all_secrets = True  # look at every Secret to serve again
        self._changed_secrets: set[ObjectKey] = set()
        self._statuses_dirty = False
        self._all_statuses = True  # every Ingress's status to look at (the address changed)
        self._changed_statuses: set[ObjectKey] = set()
        # The Ingresses compiled, and what the table is built from besides them. Written by
        # the feed's thread under `_routes_lock`, which `routes` (the dashboard) takes too.
        self._routes_lock = threading.Lock()
        self._ingress_routes = ingress_routes.IngressRoutes()
        self._class_filter: ingress_routes.ClassFilter | None = None
        self._services: list[resources.Service] = []
        self._backends: routing.Backends | None = None
        self._gateway_hosts: dict[str, tuple[model.Route, ...]] = {}  # Gateway API routes by host
        self._table = routing.RouteTable.empty()
        # Served Ingress -> the Secrets its tls section names, and the reverse.
        self._tls_secrets: dict[ObjectKey, frozenset[ObjectKey]] = {}
        self._tls_users: dict[ObjectKey, set[ObjectKey]] = {}
        # Auth Secret (namespace, name) -> the served Ingresses whose access rules read it.
        self._auth_users: dict[tuple[str, str], set[ObjectKey]] = {}
        self._auth_by_ingress: dict[ObjectKey, frozenset[tuple[str, str]]] = {}
        self._more_served: frozenset[ObjectKey] = frozenset()  # `_more_secrets()` last read
        self._gateway_secrets_loaded: frozenset[ObjectKey] = frozenset()  # at the last load
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
        """Load routes and certificates once now; when that fails (the API refuses, RBAC is
        missing), the feed's thread retries with backoff and the data plane stays not ready
        meanwhile. The statuses are the thread's to write: the caller may be the loop the
        data plane serves from, and 10,000 Ingresses' statuses held it for seconds after
        it was ready."""
        try:
            self.refresh(statuses=False)
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
        key = event.key
        kind = key.kind
        if kind == "Challenge":
            self._on_challenge(event)
            return
        with self._lock:
            if kind == "Ingress":
                self._changed_ingresses.add(key)
            elif kind == "IngressClass":
                self._all_ingresses = True
            elif kind in ("Service", "EndpointSlice", "Endpoints"):
                self._backends_dirty = True
            elif kind in ROUTING_KINDS:  # the Gateway API's kinds and Namespaces
                self._gateways_dirty = True
            elif kind == "Secret":
                secret = (key.namespace or "", key.name)
                self._changed_ingresses |= self._auth_users.get(secret, set())
                if secret in self._listener_secrets:
                    self._gateways_dirty = True
                self._changed_secrets.add(key)
                self._secrets_dirty = True
            else:
                return
            if kind != "Secret" or self._changed_ingresses or self._gateways_dirty:
                self._routes_dirty = True
        self._wake.set()

    def answer_live_challenges(self) -> None:
        """Take each Challenge the store holds now as new: one created before this process
        listed them (a replica starting, or `serve` restarting, during an issuance) has
        no event to come until it changes, and a Challenge waiting for its self-check
        does not change. Events bring what changes after the store's listing."""
        for obj in self._store.list(kind="Challenge", shared=True):
            self._on_challenge(WatchEvent(type="ADDED", key=reconciling.key_of(obj), obj=obj))

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
        with self._lock:
            self._secrets_dirty = True
        self._wake.set()

    def set_load_balancer(self, entries: list[dict[str, str]]) -> None:
        """What served Ingresses' `status.loadBalancer.ingress` says from now on (with
        --publish-service, its Service's addresses as they change); from any thread."""
        previous = self._load_balancer or []
        self._withdrawn = [e for e in (*self._withdrawn, *previous) if e not in entries]
        self._load_balancer = entries
        with self._lock:
            self._statuses_dirty = True
            self._all_statuses = True
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

    def refresh(self, *, statuses: bool = True) -> None:
        """Update what events marked; on failure what failed is marked for a whole reload.

        Ingress statuses come last: a status the API refuses (a 403 from a
        Role without `ingresses/status`, a server down) must not keep routes
        or certificates from being served. Without `statuses` they stay marked.
        """
        if self._routes_dirty:
            with self._lock:  # taken as it is now: an event arriving meanwhile marks anew
                self._routes_dirty = False
                everything, self._all_ingresses = self._all_ingresses, False
                changed, self._changed_ingresses = self._changed_ingresses, set()
                backends, self._backends_dirty = self._backends_dirty, False
                gateways, self._gateways_dirty = self._gateways_dirty, False
            try:
                self._refresh_routes(everything=everything, changed=changed, backends=backends,
                                     gateways=gateways)
            except Exception:
                with self._lock:
                    self._routes_dirty = self._all_ingresses = True
                    self._backends_dirty = self._gateways_dirty = True
                raise
        if self._secrets_dirty:
            with self._lock:
                self._secrets_dirty = False
                everything, self._all_secrets = self._all_secrets, False
                secrets, self._changed_secrets = self._changed_secrets, set()
            try:
                self._load_certificates(everything=everything, changed=secrets)
            except Exception:
                with self._lock:
                    self._secrets_dirty = self._all_secrets = True
                raise
        if self._on_loaded is not None:
            loaded, self._on_loaded = self._on_loaded, None
            loaded()
        if not statuses:
            return
        if self._gateway_statuses_dirty:
            self._gateway_statuses_dirty = False
            try:
                self._write_gateway_statuses()
            except Exception:
                self._gateway_statuses_dirty = True
                raise
        if self._statuses_dirty and self._load_balancer is not None:
            with self._lock:
                self._statuses_dirty = False
                everything, self._all_statuses = self._all_statuses, False
                keys, self._changed_statuses = self._changed_statuses, set()
            try:
                self._write_statuses(self._load_balancer, everything=everything, keys=keys)
            except Exception:
                with self._lock:
                    self._statuses_dirty = self._all_statuses = True
                raise

    @property
    def routes(self) -> model.RouteSet:
        """The route set served (for the dashboard): Ingress routes, then HTTPRoute rules."""
        with self._routes_lock:
            routes = self._ingress_routes.route_set()
            gateway_set = self._gateways.routes
        if not (gateway_set.routes or gateway_set.served):
            return routes
        return model.RouteSet(routes=routes.routes + gateway_set.routes,
                              defaults=routes.defaults, served=routes.served | gateway_set.served,
                              problems=routes.problems + gateway_set.problems)

    def _refresh_routes(self, *, everything: bool, changed: set[ObjectKey], backends: bool,
                        gateways: bool) -> None:
        served_secrets = self._gateways.secrets
        with self._routes_lock:
            table, served = self._updated_table(everything=everything, changed=changed,
                                                backends=backends, gateways=gateways)
        if self._gateways.secrets != served_secrets:
            self._secrets_dirty = True  # a listener's Secret resolved, or no longer
        self._publish_routes(table)
        self._table = table
        # The Ingresses served (the table's also names Gateways and HTTPRoutes, whose
        # statuses are the Gateway API's own).
        self._served = served
        self._report(table.problems)
        with self._lock:
            self._statuses_dirty = True
            if everything:
                self._all_statuses = True
            else:
                self._changed_statuses |= changed
        if gateways or backends:
            self._gateway_statuses_dirty = True

    def _updated_table(self, *, everything: bool, changed: set[ObjectKey], backends: bool,
                       gateways: bool) -> tuple[routing.RouteTable, frozenset[ObjectKey]]:
        """The next route table, from the previous one and what changed; and the Ingresses
        served."""
        rebuild = everything or backends or self._backends is None
        if backends or self._backends is None:
            self._services = _parsed(self._store.list(kind="Service", shared=True),
                                    parsing.parse_service)
            slices = _parsed(self._store.list(kind="EndpointSlice", shared=True),
                             parsing.parse_endpoint_slice)
            for endpoints in self._store.list(kind="Endpoints", shared=True):
                try:
                    slices.extend(parsing.parse_endpoints(endpoints))
                except InvalidObject as err:
                    logger.error("%s", err)
            self._backends = routing.Backends(services=self._services, endpoint_slices=slices)
        hosts: set[str] = set()
        if gateways or backends:  # HTTPRoutes name Services: compiled with them
            hosts |= self._gateway_hosts.keys()
            self._gateways = self._compile_gateways(self._services)
            by_host: dict[str, list[model.Route]] = {}
            for route in self._gateways.routes.routes:
                by_host.setdefault(route.host.lower(), []).append(route)
            self._gateway_hosts = {host: tuple(found) for host, found in by_host.items()}
            hosts |= self._gateway_hosts.keys()
        if everything:
            hosts |= self._compile_every_ingress()
        else:
            hosts |= self._compile_ingresses(changed)
        compiled = self._ingress_routes
        if rebuild:
            hosts = set(compiled.host_names()) | self._gateway_hosts.keys()
        gateway_set = self._gateways.routes
        table = (routing.RouteTable.empty() if rebuild else self._table).updated(
            hosts={host: model.HostRoutes(
                routes=compiled.routes_for(host) + self._gateway_hosts.get(host, ()),
                default=compiled.default_for(host)) for host in hosts},
            default=compiled.default,
            served=compiled.served | gateway_set.served,
            problems=compiled.problems() + gateway_set.problems,
            backends=self._backends)
        return table, compiled.served

    def _compile_every_ingress(self) -> set[str]:
        """Compile every Ingress anew (at start, and when the IngressClasses change)."""
        with self._lock:
            self._changed_ingresses.clear()  # listed now: their events are included
            self._auth_users.clear()
            self._auth_by_ingress.clear()
            # Ingresses no longer ours stop naming Secrets: every one is looked at again.
            self._secrets_dirty = self._all_secrets = True
        self._class_filter = ingress_routes.class_filter(
            ingress_classes=_parsed(self._store.list(kind="IngressClass", shared=True),
                                    parsing.parse_ingress_class),
            controller_name=CONTROLLER_NAME, class_name=self._ingress_class)
        self._ingress_routes = ingress_routes.IngressRoutes()
        self._tls_secrets.clear()
        self._tls_users.clear()
        # Ingress problems are reported by ingress-shim; the rest only matter here.
        ingresses = _parsed(self._store.list(kind="Ingress", shared=True), parsing.parse_ingress,
                            quiet=True)
        return set(self._ingress_routes.update(
            {ingress.key: self._compiled(ingress) for ingress in ingresses}))

    def _compile_ingresses(self, keys: set[ObjectKey]) -> set[str]:
        """Compile the Ingresses that changed, as the store has them now."""
        changed: dict[ObjectKey, ingress_routes.CompiledIngress | None] = {}
        for key in keys:
            obj = self._store.get(kind="Ingress", namespace=key.namespace, name=key.name)
            ingress = None if obj is None else _parsed_one(obj, parsing.parse_ingress, quiet=True)
            changed[key] = None if ingress is None else self._compiled(ingress)
            if changed[key] is None:
                self._forget(key)
        return set(self._ingress_routes.update(changed))

    def _compiled(self, ingress: resources.Ingress) -> ingress_routes.CompiledIngress | None:
        """One Ingress compiled, None when it is not ours; the Secrets it names indexed."""
        assert self._class_filter is not None
        key = ingress.key
        if not self._class_filter.serves(ingress):
            self._forget(key)
            return None
        wanted = frozenset(ObjectKey(kind="Secret", namespace=ingress.namespace,
                                     name=tls.secret_name)
                           for tls in ingress.tls if tls.secret_name)
        self._index_secrets(key, tls=wanted, auth=frozenset(ingress_annotations.secret_names(
            ingress.annotations, namespace=ingress.namespace)))
        return ingress_routes.compile_ingress(
            ingress, enforce_access_annotations=self._enforce_access_annotations,
            secret_data=self._auth_secret)

    def _forget(self, key: ObjectKey) -> None:
        self._index_secrets(key, tls=frozenset(), auth=frozenset())

    def _index_secrets(self, key: ObjectKey, *, tls: frozenset[ObjectKey],
                       auth: frozenset[tuple[str, str]]) -> None:
        """Record the Secrets a served Ingress names (its tls ones: to serve; its access rules'
        ones: a change recompiles it); the ones it named before and no longer are looked at
        again, to stop serving them."""
        before = self._tls_secrets.pop(key, frozenset())
        for secret in before - tls:
            users = self._tls_users.get(secret)
            if users is not None:
                users.discard(key)
                if not users:
                    del self._tls_users[secret]
        for secret in tls:
            self._tls_users.setdefault(secret, set()).add(key)
        if tls:
            self._tls_secrets[key] = tls
        if before != tls:
            with self._lock:
                self._changed_secrets |= before ^ tls
                self._secrets_dirty = True
        with self._lock:  # read by on_event on other threads
            for secret_name in self._auth_by_ingress.pop(key, frozenset()) - auth:
                users = self._auth_users.get(secret_name)
                if users is not None:
                    users.discard(key)
                    if not users:
                        del self._auth_users[secret_name]
            for secret_name in auth:
                self._auth_users.setdefault(secret_name, set()).add(key)
            if auth:
                self._auth_by_ingress[key] = auth

    def _auth_secret(self, namespace: str, name: str) -> dict[str, bytes] | None:
        """A Secret access rules read (basic auth, client certificates' CA); one that is
        missing or unreadable is None, and the Ingress naming it is refused, not served
        open."""
        secret = self._store.get(kind="Secret", namespace=namespace, name=name)
        if secret is None:
            return None
        try:
            return tls_secret.decoded_data(secret)
        except tls_secret.SecretInvalid as err:
            logger.warning("Secret %s/%s is not used for authentication: %s", namespace,
                           name, err)
            return None

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

    def _write_statuses(self, entries: list[dict[str, str]], *, everything: bool,
                        keys: set[ObjectKey]) -> None:
        """Served Ingresses say where they are served; ones no longer served stop saying it.
        Only `keys` are looked at, unless `everything`."""
        candidates = self._served | self._status_written if everything else {
            key for key in keys if key in self._served or key in self._status_written}
        for key in sorted(candidates, key=str):
            served = key in self._served
            obj = self._store.get(kind="Ingress", namespace=key.namespace, name=key.name)
            if obj is None:
                self._status_written.discard(key)
                continue
            status = obj.get("status") or {}
            current = (status.get("loadBalancer") or {}).get("ingress") or []
            wanted_entries = entries if served else [
                e for e in current if e not in entries and e not in self._withdrawn]
            if current == wanted_entries:
                if served:
                    self._status_written.add(key)
                else:
                    self._status_written.discard(key)
                continue
            obj["status"] = {**status,
                             "loadBalancer": {"ingress": wanted_entries} if wanted_entries else {}}
            try:
                self._store.replace_status(obj=obj)
            except Conflict:
                # Changed since we read it: its watch event brings us back here.
                with self._lock:
                    self._statuses_dirty = True
                    self._changed_statuses.add(key)
                self._wake.set()
                continue
            except NotFound:
                pass
            if served:
                self._status_written.add(key)
            else:
                self._status_written.discard(key)

    def _compile_gateways(self, services: list[resources.Service]) -> gateway_routes.Compiled:
        gateways = _parsed(self._listed("Gateway"), gateway_api.parse_gateway)
        listener_sets = _parsed(self._listed("ListenerSet"), gateway_api.parse_listener_set)
        http_routes = _parsed(self._listed("HTTPRoute"), gateway_api.parse_http_route)
        grpc_routes = _parsed(self._listed("GRPCRoute"), gateway_api.parse_grpc_route)
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
            grpc_routes=grpc_routes,
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
            return self._store.list(kind=kind, shared=True)
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
            tls_secret.read_tls_secret(secret, check_rsa_key=False)
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
        wanted = {route.key: route for route in (*compiled.http_routes, *compiled.grpc_routes)}
        for key in sorted(set(wanted) | self._route_parents_written, key=str):
            route = wanted.get(key)
            self._update_status(kind=key.kind, namespace=key.namespace, name=key.name,
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

    def _load_certificates(self, *, everything: bool, changed: set[ObjectKey]) -> None:
        """Serve the Secrets served Ingresses, Gateways and `serve_secrets` name: each of
        them when `everything`, else those that `changed` or are named or no longer named."""
        more = self._more_secrets()
        candidates = set(changed) | (more ^ self._more_served)
        self._more_served = more
        gateway_secrets = self._gateways.secrets
        if everything:
            candidates |= (self._tls_users.keys() | gateway_secrets | more
                           | self._served_secrets.keys())
        else:
            candidates |= gateway_secrets ^ self._gateway_secrets_loaded
        self._gateway_secrets_loaded = gateway_secrets
        # A load of every Secret (the start, a resync) says how many in one line: a line
        # per certificate was 8 % of a restart's CPU with 10,000 of them (and a wall of log).
        loaded = known = 0
        for key in candidates:
            if key not in self._tls_users and key not in gateway_secrets and key not in more:
                self._drop(key)
                continue
            secret = self._store.get(kind="Secret", namespace=key.namespace, name=key.name)
            if secret is None:
                self._drop(key)
                continue
            version = str(secret["metadata"].get("resourceVersion"))
            if self._served_secrets.get(key) == version:
                continue
            try:
                content = tls_secret.tls_secret_bytes(secret)
                if self._certificates.serve_known(source=key, content=content,
                                                  announce=not everything):
                    known += 1
                else:
                    self._certificates.serve_secret(
                        source=key, announce=not everything,
                        contents=tls_secret.parse_tls_secret_bytes(content, check_rsa_key=False))
            except (tls_secret.SecretInvalid, ValueError) as err:
                logger.warning("%s is not served: %s", key, err)
                self._drop(key)
                continue
            self._served_secrets[key] = version
            loaded += 1
        if everything and loaded:
            logger.info("serving certificates from %d Secrets (%d of them as parsed before "
                        "the last stop)", loaded, known)

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
    return [found for obj in objects
            if (found := _parsed_one(obj, parse, quiet=quiet)) is not None]


def _parsed_one(obj: Object, parse: Callable[..., Any], *, quiet: bool = False) -> Any:
    """The object parsed, or None (reported) when it is invalid."""
    try:
        return parse(obj, source=reconciling.manifest_source(obj))
    except InvalidObject as err:
        (logger.debug if quiet else logger.error)("data plane skips %s", err)
        return None


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
    tls_context_cache: int = certstore.DEFAULT_CONTEXT_CACHE_SIZE  # certificates kept decoded
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
