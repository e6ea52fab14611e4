"""Keeps the data plane in step with the store: routes, certificates, HTTP-01 tokens.

Store events arrive on reconciler threads; the handshake and request paths
only ever read what this feed publishes (an immutable route table swapped by
reference, the certificate index, a token dict), so nothing slow happens
while a client waits. Rebuilds are debounced: a burst of events (500
Ingresses at start-up) costs one rebuild, not 500.

With a load-balancer address configured, every Ingress this data plane
serves gets it in `status.loadBalancer.ingress` (an `ip` entry for an IP
address, else a `hostname`), as every Ingress controller reports where it
serves; the write is skipped when the status already says so, and the entry
is taken away again from an Ingress that is no longer served. Only the Store
protocol is used, so the same feed runs against the local store and the
Kubernetes API.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from certctl.api import parsing, resources
from certctl.api.errors import InvalidObject
from certctl.api.resources import ObjectKey
from certctl.controllers import reconciling
from certctl.dataplane import DEFAULT_MAX_CONNECTIONS, certstore, routing, server
from certctl.pki import secret as tls_secret
from certctl.routes import ingress as ingress_routes
from certctl.routes import ingress_annotations, model
from certctl.store.interface import Conflict, NotFound, Object, Store, WatchEvent

logger = logging.getLogger(__name__)

ROUTING_KINDS = frozenset({"Ingress", "Service", "EndpointSlice", "Endpoints", "IngressClass"})
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
    ) -> None:
        """`load_balancer_address` (an IP or a DNS name) goes into the status of
        served Ingresses; None leaves their status alone. `enforce_access_annotations`
        False serves Ingresses with access annotations certctl does not enforce."""
        self._store = store
        self._certificates = certificates
        self._publish_routes = publish_routes
        self._ingress_class = ingress_class
        self._load_balancer = _load_balancer_entries(load_balancer_address)
        self._served: frozenset[ObjectKey] = frozenset()
        self._status_written: set[ObjectKey] = set()
        self._enforce_access_annotations = enforce_access_annotations
        self._reported: frozenset[model.SourceProblem] = frozenset()
        self._tokens: dict[str, tuple[str, str]] = {}  # token -> (dns name, key authorization)
        self._served_secrets: dict[ObjectKey, str] = {}  # Secret -> resourceVersion loaded
        # (namespace, name) of the Secrets the routes' basic authentication read.
        self._auth_secrets: frozenset[tuple[str, str]] = frozenset()
        self._wake = threading.Event()
        self._stopping = False
        self._routes_dirty = True
        self._secrets_dirty = True
        self._statuses_dirty = False
        self._thread = threading.Thread(target=self._run, name="dataplane-feed", daemon=True)

    def start(self) -> None:
        self.refresh()
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
            kind == "Secret" and (event.key.namespace or "", event.key.name) in self._auth_secrets
        ):
            self._routes_dirty = True
        if kind in ("Ingress", "Secret"):
            self._secrets_dirty = True
        if self._routes_dirty or self._secrets_dirty:
            self._wake.set()

    def _on_challenge(self, event: WatchEvent) -> None:
        spec = event.obj.get("spec") or {}
        token = spec.get("token")
        if not isinstance(token, str):
            return
        state = (event.obj.get("status") or {}).get("state")
        if event.type == "DELETED" or state in ("valid", "invalid"):
            self._tokens.pop(token, None)
        elif spec.get("type") == "HTTP-01":
            self._tokens[token] = (str(spec.get("dnsName", "")).lower(), str(spec.get("key")))

    def respond_to_challenge(self, host: str, token: str) -> str | None:
        """The key authorization for a live challenge of this host, else None (a 404)."""
        found = self._tokens.get(token)
        if found is None or found[0] != host.lower():
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
        if self._statuses_dirty and self._load_balancer is not None:
            self._statuses_dirty = False
            try:
                self._write_statuses(self._load_balancer)
            except Exception:
                self._statuses_dirty = True
                raise

    def _refresh_routes(self) -> None:
        table = self._build_routes()
        self._publish_routes(table)
        self._served = table.served
        self._report(table.problems)
        self._statuses_dirty = True

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
            wanted = entries if served else [e for e in current if e not in entries]
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
        routes = ingress_routes.compile_ingresses(
            ingresses=ingresses,
            ingress_classes=classes,
            controller_name=CONTROLLER_NAME,
            class_name=self._ingress_class,
            enforce_access_annotations=self._enforce_access_annotations,
            secret_data=lambda namespace, name: auth_secrets.get((namespace, name)),
        )
        return routing.RouteTable.build(routes=routes, services=services, endpoint_slices=slices)

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
    http_port: int
    https_port: int
    ingress_class: str
    metrics_port: int | None = None  # Prometheus /metrics; None: off
    load_balancer_address: str | None = None  # for served Ingresses' status; None: untouched
    tls_context_cache: int = certstore.DEFAULT_CONTEXT_CACHE_SIZE  # SSLContexts kept built
    max_connections: int = DEFAULT_MAX_CONNECTIONS  # client connections held at once
    # False serves Ingresses whose access annotations certctl does not enforce (the
    # operator's explicit opt-out, --allow-unenforced-access-annotations).
    enforce_access_annotations: bool = True


class FedDataPlane:
    """The data plane, its certificate index, and the feed keeping both in step with a store."""

    def __init__(self, *, store: Store, listening: Listening) -> None:
        self.listening = listening
        self.certificate_index = certstore.CertificateIndex(
            context_cache_size=listening.tls_context_cache
        )
        self.server = server.DataPlane(
            http_address=(listening.address, listening.http_port),
            https_address=(listening.address, listening.https_port),
            certificates=self.certificate_index,
            challenge_responder=self._respond_to_challenge,
            metrics_address=None if listening.metrics_port is None
            else (listening.address, listening.metrics_port),
            max_connections=listening.max_connections,
        )
        self.feed = DataPlaneFeed(
            store=store,
            certificates=self.certificate_index,
            publish_routes=self.server.set_routes,
            ingress_class=listening.ingress_class,
            load_balancer_address=listening.load_balancer_address,
            enforce_access_annotations=listening.enforce_access_annotations,
        )

    def _respond_to_challenge(self, host: str, token: str) -> str | None:
        return self.feed.respond_to_challenge(host, token)

    async def start_server(self) -> None:
        """Bind the ports; OSError (after closing what did bind) if one is taken."""
        try:
            await self.server.start()
        except OSError:
            await self.server.stop()
            raise
        logger.info("serving HTTP on %s:%s and HTTPS on %s:%s", self.listening.address,
                    self.server.http_port, self.listening.address, self.server.https_port)

    async def stop(self) -> None:
        self.feed.stop()
        await self.server.stop()
