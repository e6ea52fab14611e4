"""`certctl controller` and `certctl dataplane`: kopf watches the cluster, the reconcilers act.

kopf does what it is good at: logging in, discovering the API, keeping watch
streams alive across disconnects and expiries. Its `on.event` handlers only
translate each event into a `WatchEvent`; from there everything is what
`certctl serve` runs too: `runtime.dispatch` picks the reconcilers, the work
queue runs them on threads against `store.kube`. kopf's own persistence
(finalizers, progress annotations) is never used, so certctl writes nothing to
objects beyond what the reconcilers decide.

The controller reconciles only while it holds the leader Lease
(`runtime.leader`); followers keep their watches warm and drop events, and
a new leader starts by queueing every object once. The data plane has no
leader: every replica serves. It needs objects, not handlers: its watches are
`runtime.kube_watches`, from its cache's own listings.

With `namespaces` (`--namespace`), kopf watches and the store lists only
those namespaces, so the service accounts need rights there and nowhere
else (manifests/rbac-*.yaml). When the API fails, nothing is lost: kopf is
restarted if it gives up, an event whose fan-out needed the API is retried
on the work queue, and so is the listing a new leader starts with.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any

import kopf
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
    workqueue,
)
from certctl.solvers import http01_ingress, tls_alpn01_solver
from certctl.solvers.dns01 import solver as dns01_solver
from certctl.store import interface as store_interface
from certctl.store import watch_cache
from certctl.store.interface import WatchEvent
from certctl.store.kube import RESOURCES, KubeStore, auth_headers

logger = logging.getLogger(__name__)

Listener = Callable[[WatchEvent], None]

# Between restarts of kopf after it stopped on its own (`Watcher._run`).
WATCH_RESTART = workqueue.Backoff(initial=1.0, maximum=30.0)


class _KopfNoise(logging.Filter):
    """kopf warns that it ignores OS signals when not on the main thread: certctl
    handles them itself, so that warning would only confuse whoever reads the log."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("OS signals are ignored")


logging.getLogger("kopf._core.reactor.running").addFilter(_KopfNoise())
# One line per watch event ("Handler ... succeeded") would drown certctl's own log.
logging.getLogger("kopf.objects").setLevel(logging.WARNING)


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
    kopf would otherwise retry quietly forever."""
    namespace = store.namespaces[0] if store.namespaces else "default"
    for kind in kinds:
        try:
            store.list(kind=kind, namespace=namespace if RESOURCES[kind].namespaced else None)
        except store_interface.NotFound as err:
            raise StartupError(
                f"the API server does not know {kind} ({RESOURCES[kind].api_version}): "
                "install the CRDs first (kubectl apply -k crds/, or -k manifests/)") from err
        except store_interface.StoreError as err:
            raise StartupError(f"cannot reach the Kubernetes API at "
                               f"{store.configuration.host}: {err}") from err


class Watcher:
    """kopf in a thread of its own: watches kinds and hands every event to a listener."""

    def __init__(
        self,
        *,
        configuration: kubernetes.client.Configuration,
        kinds: Iterable[str],
        namespaces: tuple[str, ...],
        listener: Listener,
    ) -> None:
        self._configuration = configuration
        self._namespaces = namespaces
        self._listener = listener
        self._registry = kopf.OperatorRegistry()
        self._stop_flag = threading.Event()
        self._ready_flag = threading.Event()
        self._stopper: tuple[asyncio.AbstractEventLoop, asyncio.Future[None]] | None = None
        self._thread = threading.Thread(target=self._run, name="kopf", daemon=True)
        self._failure: BaseException | None = None
        kopf.on.login(registry=self._registry)(self._login)
        for kind in kinds:
            resource = RESOURCES[kind]
            kopf.on.event(resource.group, resource.version, resource.plural,
                          registry=self._registry)(self._handler_for(kind))

    def start(self, *, timeout: float = 30.0) -> None:
        self._thread.start()
        if not self._ready_flag.wait(timeout):
            self.stop()
            raise StartupError(f"the Kubernetes watches did not start within {timeout:.0f} s"
                               + (f": {self._failure}" if self._failure else ""))

    def stop(self) -> None:
        self._stop_flag.set()
        stopper = self._stopper
        if stopper is not None:
            loop, future = stopper
            with contextlib.suppress(RuntimeError):  # that run has ended, its loop is closed
                loop.call_soon_threadsafe(_resolve, future)
        self._thread.join(15)

    def _run(self) -> None:
        """kopf, started again whenever it stops on its own.

        kopf gives up on a watch, and then stops altogether, when the API keeps
        failing past its retries (about a minute of 5xx or refused connections)
        or sends an ERROR event other than 410 Gone down a stream. A controller
        that kept running deaf would be worse than one that restarts: so it
        restarts, with backoff, and its first listing replays every object."""
        failures = 0
        while not self._stop_flag.is_set():
            started = time.monotonic()
            try:
                asyncio.run(self._operate())
            except Exception as err:  # reported by start(), logged, and retried
                self._failure = err
                reason = f"{type(err).__name__}: {err}"
            except BaseException as err:  # interpreter shutdown: nothing to restart for
                self._failure = err
                logger.exception("the Kubernetes watches stopped")
                return
            else:
                reason = "kopf returned"
            if self._stop_flag.is_set():
                return
            failures = 1 if time.monotonic() - started > WATCH_RESTART.maximum else failures + 1
            delay = WATCH_RESTART.delay(failures)
            logger.error("the Kubernetes watches stopped (%s); restarting them in %.0f s",
                         reason, delay)
            self._stop_flag.wait(delay)

    async def _operate(self) -> None:
        """One run of kopf. Its stop flag is a future of this run's loop, set by `stop()`:
        kopf waits for a threading.Event in an executor thread, which would keep
        `asyncio.run` from returning after a failure until the process stops."""
        loop = asyncio.get_running_loop()
        stop: asyncio.Future[None] = loop.create_future()
        self._stopper = (loop, stop)
        if self._stop_flag.is_set():  # stop() came before the stopper was there
            return
        await kopf.operator(
            registry=self._registry,
            settings=self._settings(),
            standalone=True,  # certctl elects its own leader (runtime.leader)
            clusterwide=not self._namespaces,
            namespaces=list(self._namespaces),
            stop_flag=stop,
            ready_flag=self._ready_flag,
        )

    @staticmethod
    def _settings() -> kopf.OperatorSettings:
        settings = kopf.OperatorSettings()
        settings.posting.enabled = False  # certctl posts its own Events, kopf's would be noise
        settings.scanning.disabled = True  # no CRD/namespace scanning: needs no RBAC for it
        settings.watching.connect_timeout = 10
        settings.watching.server_timeout = 300
        settings.networking.request_timeout = 30
        return settings

    def _login(self, **_: Any) -> kopf.ConnectionInfo:
        configuration = self._configuration
        token: str | None = None
        for value in auth_headers(configuration).values():
            if value.lower().startswith("bearer "):
                token = value.split(" ", 1)[1]
        return kopf.ConnectionInfo(
            server=configuration.host,
            ca_path=configuration.ssl_ca_cert or None,
            insecure=not configuration.verify_ssl,
            token=token,
            certificate_path=configuration.cert_file or None,
            private_key_path=configuration.key_file or None,
        )

    def _handler_for(self, kind: str) -> Callable[..., None]:
        listener = self._listener

        def on_event(event: kopf.RawEvent, **_: Any) -> None:
            obj = dict(event["object"])
            obj.setdefault("kind", kind)
            event_type = event.get("type") or "ADDED"  # None: the initial listing
            try:
                key = reconciling.key_of(obj)
            except KeyError:
                return
            listener(WatchEvent(type=event_type if event_type in ("ADDED", "MODIFIED", "DELETED")
                                else "MODIFIED", key=key, obj=obj))

        on_event.__name__ = f"on_{kind.lower()}_event"
        return on_event


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class Controller:
    """The reconcilers against the Kubernetes API, reconciling only while leading."""

    def __init__(self, *, options: ControllerOptions,
                 clock: Clock = reconciling.system_clock) -> None:
        self.options = options
        self.store = KubeStore(configuration=options.configuration, component="certctl",
                               namespaces=options.namespaces)
        self.metrics = metrics.ControllerMetrics(store=self.store)
        # Issuers are read by every Certificate, Order and Challenge step (8 of the 64 API
        # reads per certificate, bench B8): from the watches' objects instead. Harmless
        # when a read is a moment behind: an issuer's change reaches the Certificates using
        # it as an event, after the cache has it. Other kinds are read from the API: a
        # stale Certificate, Order or Secret could place a second ACME order.
        self.cache = watch_cache.WatchCache(backing=self.store, kinds=("ClusterIssuer", "Issuer"))
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
        self.watcher = Watcher(configuration=options.configuration,
                               kinds=dispatch.WATCHED_KINDS, namespaces=options.namespaces,
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
            self.queue.add(_RESEED)
            self.watcher.start()
            self.health.done(WATCHES_STARTED)
            self._list_watched()
            self.health.done(WATCHES_LISTED)
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
        self.watcher.stop()
        self.queue.stop()
        self.accounts.close()
        self.store.close()
        if self.admin is not None:
            self.admin.stop()

    def _list_watched(self) -> None:
        """List each watched kind once, as the watches just did: Ready means the API answers
        every list this replica needs with its RBAC (kopf tells no one when its own initial
        lists are done; one list per kind at start is the price of knowing)."""
        for kind in dispatch.WATCHED_KINDS:
            try:
                self.store.list(kind=kind)
            except (store_interface.NotFound, store_interface.Forbidden) as err:
                if kind not in dispatch.OPTIONAL_KINDS:  # no Gateway API CRDs: no Gateways
                    raise StartupError(f"cannot list {kind}: {err}") from err
            except store_interface.StoreError as err:
                raise StartupError(f"cannot list {kind}: {err}") from err

    def _queue_everything(self) -> None:
        """Queued, not done here: listing may fail, and the queue retries with backoff
        (this runs on the election thread, which must not die of an API error)."""
        self.accounts.forget_account_keys()  # events are not dispatched while not leading
        self.queue.add(_RESYNC)

    def _on_event(self, event: WatchEvent) -> None:
        self.cache.apply(event)  # also while not leading: read once this replica leads
        if not self.is_leader:
            return
        self.metrics.observe_certificate(event)
        try:
            for item in self.dispatcher.items_for(event):
                self.queue.add(item)
        except store_interface.StoreError as err:
            # Which reconcilers an event concerns may take a list (the Certificates
            # using an issuer, ...). kopf does not retry event handlers, so an API
            # error here would lose the event: the queue retries it instead.
            logger.info("%s %s: deferred (%s)", event.type, event.key, err)
            self.queue.add(_Fanout(event=event))

    def _handle(self, item: Hashable) -> float | None:
        if item is _RESEED:
            # kopf's watches list again after a restart or a 410 Gone, but do not report
            # what was deleted meanwhile: listing again drops it (watch_cache's docstring).
            for event in self.cache.seed():
                self._on_event(event)
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
_RESEED = "reseed"  # list the cached kinds again (Controller.cache), every RESEED_SECONDS


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
        # Watched from the cache's own listings, not by kopf (kube_watches' docstring).
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
            await asyncio.to_thread(self.cache.seed)
            self.watches.start()
            self.edge.health.done(WATCHES_STARTED)
            await asyncio.to_thread(self.edge.feed.start)
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


def _stop_signal() -> asyncio.Event:
    """Set on SIGINT or SIGTERM, from now on: a signal arriving while the process still
    starts (its loop is free meanwhile) stops it once started, not by the default action."""
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopped.set)
    return stopped


async def _until_signalled(process_health: health.Health,
                           stopped: asyncio.Event | None = None) -> None:
    """Until SIGINT or SIGTERM; then the process is not ready (its /healthz watches the
    loop this runs on meanwhile)."""
    process_health.watch_loop(asyncio.get_running_loop())
    await (stopped or _stop_signal()).wait()
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
        stopped = _stop_signal()
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
