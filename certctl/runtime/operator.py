"""`certctl controller` and `certctl dataplane`: watches of the cluster, the reconcilers act.

Both watch through `runtime.kube_watches`: each kind listed once into a
`WatchCache`, then a watch from that listing's version, resumed after a
dropped stream and listed again after a 410 Gone (deletions meanwhile
included). Each event becomes a `WatchEvent`; from there everything is what
`certctl serve` runs too: `runtime.dispatch` picks the reconcilers, the work
queue runs them on threads against `store.kube`. Nothing is written to
objects beyond what the reconcilers decide (no finalizers, no progress
annotations).

The controller reconciles only while it holds the leader Lease
(`runtime.leader`); followers keep their watches warm and drop events, and
a new leader starts by queueing every object once. The data plane has no
leader: every replica serves.

With `namespaces` (`--namespace`), the watches and the store list only
those namespaces, so the service accounts need rights there and nowhere
else (manifests/rbac-*.yaml). When the API fails, nothing is lost: a
failed watch is retried with backoff from the last version it saw, an event
whose fan-out needed the API is retried on the work queue, and so is the
listing a new leader starts with.
"""

from __future__ import annotations

import asyncio
import datetime
import gc
import logging
import os
import socket
import uuid
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field

import kubernetes.client

from certctl.admin import dashboard, health
from certctl.admin import server as admin_server
from certctl.admin.events import EventRecorder
from certctl.controllers import (
    challenges,
    reconciling,
)
from certctl.controllers.order_budget import DUPLICATE_CERTIFICATE_LIMIT, Budget
from certctl.controllers.reconciling import Clock
from certctl.runtime import (
    dataplane_feed,
    dispatch,
    kube_watches,
    leader,
    metrics,
    published_service,
    runner,
)
from certctl.solvers import http01_ingress, tls_alpn01_solver
from certctl.solvers.dns01 import solver as dns01_solver
from certctl.store import interface as store_interface
from certctl.store import watch_cache
from certctl.store.interface import WatchEvent
from certctl.store.kube import RESOURCES, KubeStore

logger = logging.getLogger(__name__)

def default_identity() -> str:
    """The pod name in a cluster (set from the downward API), else host and a random suffix."""
    return os.environ.get("POD_NAME") or f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True, kw_only=True)
class ControllerOptions:
    configuration: kubernetes.client.Configuration
    namespaces: tuple[str, ...] = ()  # watched namespaces; empty: the whole cluster
    cluster_resource_namespace: str = "certctl"
    leader_election: bool = True
    election: leader.ElectionSettings = field(default_factory=lambda: leader.ElectionSettings(
        namespace="certctl", name="certctl-controller", identity=default_identity()))
    # The data-plane Service that solver Ingresses route HTTP-01 tokens to.
    data_plane: http01_ingress.DataPlaneService | None = None
    self_check_address: str | None = None  # default: resolve each name through DNS
    self_check_port: int = 80
    workers: int = 16
    acme_process: bool = True  # ACME requests from a helper process (`client_process`)
    backoff_base: datetime.timedelta = datetime.timedelta(hours=1)
    # The admin address: /metrics, /healthz, /readyz, the dashboard; None: off.
    metrics_address: tuple[str, int] | None = None
    dns01: dns01_solver.Options = field(default_factory=dns01_solver.Options)
    # Orders allowed per exact name set per ACME server; None: no budget.
    order_budget: Budget | None = DUPLICATE_CERTIFICATE_LIMIT


@dataclass(frozen=True, kw_only=True)
class DataPlaneOptions:
    configuration: kubernetes.client.Configuration
    listening: dataplane_feed.Listening
    namespaces: tuple[str, ...] = ()
    # After SIGTERM: seconds not ready but still serving, while load balancers and the
    # Service's endpoints stop sending new connections here.
    shutdown_delay: float = 0.0
    # (namespace, name) of the data plane's own Service, whose addresses served Ingresses
    # publish (--publish-service); None: `listening.load_balancer_address`, if any.
    publish_service: tuple[str, str] | None = None


class StartupError(Exception):
    """The controller or data plane cannot start; the message says what to do."""


# What /readyz waits for, in this order (certctl.admin.health).
API_CHECKED = "Kubernetes API reachable, CRDs installed"
WATCHES_STARTED = "watches started"
WATCHES_LISTED = "watched kinds listed"


def check_api(store: KubeStore, *, kinds: Iterable[str]) -> None:
    """Fail fast, and say why, when the API is unreachable or our CRDs are missing:
    the watches would otherwise retry quietly forever."""
    namespace = store.namespaces[0] if store.namespaces else "default"
    for kind in kinds:
        try:
            store.check_served(kind=kind,
                               namespace=namespace if RESOURCES[kind].namespaced else None)
        except store_interface.NotFound as err:
            raise StartupError(
                f"the API server does not know {kind} ({RESOURCES[kind].api_version}): "
                "install the CRDs first (kubectl apply -k crds/, or -k manifests/)") from err
        except store_interface.StoreError as err:
            raise StartupError(f"cannot reach the Kubernetes API at "
                               f"{store.configuration.host}: {err}") from err


class Controller:
    """The reconcilers against the Kubernetes API, reconciling only while leading."""

    def __init__(self, *, options: ControllerOptions,
                 clock: Clock = reconciling.system_clock) -> None:
        self.options = options
        self.store = KubeStore(configuration=options.configuration, component="certctl",
                               namespaces=options.namespaces)
        self.metrics = metrics.ControllerMetrics(store=self.store)
        # Every kind watched is listed into the cache, its watch starting from that
        # listing (kube_watches). Issuers are read by every Certificate, Order and Challenge
        # step (8 of the 64 API reads per certificate, bench B8): from the watches' objects.
        # Harmless when a read is a moment behind: an issuer's change reaches the
        # Certificates using it as an event, after the cache has it. Orders and Challenges,
        # which only the leader writes, from memory once read or written (`own`: 17 of the
        # 38 reads per certificate, B8). Certificates too (6 reads a certificate, B8): the
        # leader writes their statuses step by step, and what others write (a spec, a
        # renewal asked for in the status) reaches memory as the event that wakes the
        # Certificate; a pass that read it before that event writes its status on the older
        # resourceVersion and meets Conflict, as one that read it from the API just before
        # the change would (cert-manager reads them from its informers).
        # Secrets from the API: private keys are not kept in this process's memory.
        self.cache = watch_cache.WatchCache(backing=self.store, kinds=dispatch.WATCHED_KINDS,
                                            serves=("ClusterIssuer", "Issuer"),
                                            own=("Order", "Challenge", "Certificate"))
        # The reconcilers emit their events through it, for the dashboard's last events.
        self.events = EventRecorder(store=self.cache)
        self.health = health.Health(waiting_for=(API_CHECKED, WATCHES_STARTED, WATCHES_LISTED))
        self.admin = None if options.metrics_address is None else admin_server.AdminServer(
            address=options.metrics_address, health=self.health, registry=self.metrics.registry,
            dashboard=dashboard.Dashboard(sources=dashboard.Sources(
                process="controller", store=self.store, events=self.events)))
        controllers = dispatch.build_controllers(
            store=self.events,
            component="controller",
            cluster_resource_namespace=options.cluster_resource_namespace,
            on_acme_response=self.metrics.observe_acme_response,
            acme_process=options.acme_process,
            clock=clock,
            backoff_base=options.backoff_base,
            self_check=challenges.self_check_for(port=options.self_check_port,
                                                 connect_address=options.self_check_address),
            dns01=options.dns01,
            order_budget=options.order_budget,
            data_plane=options.data_plane,
            # The CA's port 443, at the self-check address too (the data plane's Service).
            tls_alpn01=tls_alpn01_solver.SelfCheckTarget(
                connect_address=options.self_check_address),
        )
        self.accounts = controllers.accounts
        self.dispatcher = controllers.dispatcher
        self.queue = dispatch.work_queue(handler=self._handle, workers=options.workers)
        self.elector: leader.LeaderElector | None = None
        if options.leader_election:
            self.elector = leader.LeaderElector(
                store=self.store, settings=options.election,
                on_started_leading=self._queue_everything,
                on_stopped_leading=lambda: None,  # queued items are dropped by _handle
            )
        self.watches = kube_watches.KubeWatches(store=self.store, cache=self.cache,
                                                listener=self._on_event)

    @property
    def is_leader(self) -> bool:
        return self.elector is None or self.elector.is_leader

    def start(self) -> None:
        if self.admin is not None and self.options.metrics_address is not None:
            address, port = self.options.metrics_address
            try:
                self.admin.start()  # first: /healthz answers while the rest starts
            except OSError as err:
                raise StartupError(f"cannot serve metrics on {address}:{port}: "
                                   f"{err.strerror or err}") from err
        try:
            check_api(self.store, kinds=[kind for kind in dispatch.OWN_CONTROLLER
                                         if kind not in dispatch.OPTIONAL_KINDS])
            self.health.done(API_CHECKED)
            self.queue.start()
            self.cache.seed()
            self._check_listed()
            self.health.done(WATCHES_LISTED)
            self.watches.start()
            self.health.done(WATCHES_STARTED)
            self.queue.add(_RESEED, after=watch_cache.RESEED_SECONDS)
        except BaseException:
            if self.admin is not None:
                self.admin.stop()  # a controller that did not start holds no port
            raise
        if self.elector is None:
            self._queue_everything()
        else:
            self.elector.start()

    def stop(self) -> None:
        if self.elector is not None:
            self.elector.stop()
        self.watches.stop()
        self.queue.stop()
        self.accounts.close()
        self.store.close()  # ends the watch streams
        if self.admin is not None:
            self.admin.stop()

    def _check_listed(self) -> None:
        """Ready means the API answered every list this replica needs with its RBAC: a
        kind the cache could not list (`seed` logs why) is listed once more here, to
        stop the start with the API's own words, or to be cached now that it answers."""
        for kind in sorted(self.cache.uncached() - dispatch.OPTIONAL_KINDS):
            try:
                self.store.list(kind=kind)
            except store_interface.StoreError as err:
                raise StartupError(f"cannot list {kind}: {err}") from err
            self.cache.seed(kinds=(kind,))

    def _queue_everything(self) -> None:
        """Queued, not done here: listing may fail, and the queue retries with backoff
        (this runs on the election thread, which must not die of an API error)."""
        self.accounts.forget_account_keys()  # events are not dispatched while not leading
        self.cache.forget_known()  # Orders and Challenges another replica wrote last
        self.queue.add(_RESYNC)

    def _on_event(self, event: WatchEvent) -> None:
        """After the cache has it (kube_watches), also while not leading."""
        if not self.is_leader:
            return
        self.metrics.observe_certificate(event)
        try:
            for item in self.dispatcher.items_for(event):
                self.queue.add(item)
        except store_interface.StoreError as err:
            # Which reconcilers an event concerns may take a list (the Certificates
            # using an issuer, ...). The watches do not retry a listener, so an API
            # error here would lose the event: the queue retries it instead.
            logger.info("%s %s: deferred (%s)", event.type, event.key, err)
            self.queue.add(_Fanout(event=event))

    def _handle(self, item: Hashable) -> float | None:
        if item is _RESEED:
            self.watches.watch_late_kinds()  # the Gateway API's CRDs installed since, ...
            return watch_cache.RESEED_SECONDS
        if not self.is_leader:
            return None  # the new leader re-reads everything
        if item is _RESYNC:
            for queued in self.dispatcher.everything():
                self.queue.add(queued)
            return None
        if isinstance(item, _Fanout):
            for queued in self.dispatcher.items_for(item.event):
                self.queue.add(queued)
            return None
        return self.dispatcher.handle(item)


# Queue items of the controller's own, beside the reconcilers' (controller, key) items.
_RESYNC = "resync"  # list everything and queue each object once
_RESEED = "reseed"  # list the kinds not listed so far, every RESEED_SECONDS


@dataclass(frozen=True, kw_only=True, eq=False)
class _Fanout:
    """A watch event whose reconcilers are still to be found (compared by identity)."""

    event: WatchEvent


class ClusterDataPlane:
    """The data plane fed from the Kubernetes API: routes, certificates, live tokens."""

    def __init__(self, *, options: DataPlaneOptions) -> None:
        self.options = options
        self.store = KubeStore(configuration=options.configuration,
                               component="certctl-dataplane", namespaces=options.namespaces)
        kinds = (*dataplane_feed.ROUTING_KINDS, "Secret", "Challenge")
        # What the feed reads comes from the watches' own objects (watch_cache's docstring).
        self.cache = watch_cache.WatchCache(backing=self.store, kinds=kinds)
        # The feed's Warnings about the sources it serves, for the dashboard's last events.
        self.events = EventRecorder(store=self.cache)
        self.edge = dataplane_feed.FedDataPlane(store=self.events, listening=options.listening,
                                                process="dataplane", events=self.events,
                                                awaiting=(API_CHECKED, WATCHES_STARTED))
        # Watched from the cache's own listings (kube_watches' docstring).
        self.watches = kube_watches.KubeWatches(store=self.store, cache=self.cache,
                                                listener=self.edge.feed.on_event)
        self._reseeding: asyncio.Task[None] | None = None
        self.published: published_service.PublishedService | None = None
        if options.publish_service is not None:
            namespace, name = options.publish_service
            self.published = published_service.PublishedService(
                configuration=options.configuration, namespace=namespace, name=name,
                on_change=self.edge.feed.set_load_balancer)

    async def start(self) -> None:
        """Ready (/readyz) once the API answered, every kind was listed, the watches
        started from those listings (every later change reaches the feed as an event), and
        routes, Services and certificates were loaded. The blocking steps run on threads:
        the loop keeps answering /healthz meanwhile."""
        self.edge.start_admin()
        try:
            await asyncio.to_thread(check_api, self.store, kinds=("Ingress", "Challenge"))
            self.edge.health.done(API_CHECKED)
            await self.edge.start_server()
            # What start-up loads (every object listed, the routes and certificates made
            # from them) lives as long as the process: the cyclic collector walking it
            # again and again while it grew took 1.5 s of a replica's start with 10,000
            # Ingresses and Secrets (bench B8). Off while loading, then set aside for good
            # (gc.freeze: later collections skip it; it holds no cycles worth collecting).
            gc.disable()
            try:
                await asyncio.to_thread(self.cache.seed)
                # Before the watches: they bring what changed after the listing, nothing of
                # what it found (a replica started during an issuance left those unanswered).
                await asyncio.to_thread(self.edge.feed.answer_live_challenges)
                self.watches.start()
                self.edge.health.done(WATCHES_STARTED)
                await asyncio.to_thread(self.edge.feed.start)
            finally:
                gc.freeze()
                gc.enable()
            self._reseeding = asyncio.create_task(self._reseed())
            if self.published is not None:
                self.published.start()
        except BaseException:
            if self.edge.admin is not None:
                self.edge.admin.stop()  # a data plane that did not start holds no port
            raise

    async def _reseed(self) -> None:
        """Now and then, the kinds whose listing failed so far (`watch_late_kinds`)."""
        while True:
            await asyncio.sleep(watch_cache.RESEED_SECONDS)
            try:
                await asyncio.to_thread(self.watches.watch_late_kinds)
            except Exception:
                logger.exception("listing the kinds not listed yet failed")

    async def stop(self) -> None:
        if self._reseeding is not None:
            self._reseeding.cancel()
        if self.published is not None:
            self.published.stop()
        self.watches.stop()
        await self.edge.stop()
        self.store.close()  # ends the watch streams


async def _until_signalled(process_health: health.Health,
                           stopped: asyncio.Event | None = None) -> None:
    """Until SIGINT or SIGTERM; then the process is not ready (its /healthz watches the
    loop this runs on meanwhile)."""
    process_health.watch_loop(asyncio.get_running_loop())
    await (stopped or runner.stop_signal()).wait()
    process_health.start_draining()
    logger.info("stopping")


def run_controller(options: ControllerOptions) -> None:
    controller = Controller(options=options)
    controller.start()
    try:
        runner.run(_until_signalled(controller.health))
    finally:
        controller.stop()


def run_dataplane(options: DataPlaneOptions) -> None:
    async def main() -> None:
        plane = ClusterDataPlane(options=options)
        stopped = runner.stop_signal()
        await plane.start()
        try:
            await _until_signalled(plane.edge.health, stopped)
            if options.shutdown_delay > 0:
                logger.info("not ready; serving for %g s more while traffic moves away",
                            options.shutdown_delay)
                await asyncio.sleep(options.shutdown_delay)
        finally:
            await plane.stop()

    # The loop `serve` runs on (runtime.runner): the data plane a cluster runs is the one
    # the benchmarks measure.
    runner.run(main())
