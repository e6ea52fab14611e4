"""`certctl serve`: the reconcilers and the data plane on one host, no cluster.

The local store plays the API server, the work queue is the controller's, and a file
watcher plays `kubectl apply`; `runtime.dispatch` decides which reconciler
runs for which change, exactly as in a cluster.
"""

from __future__ import annotations

import asyncio
import datetime
import gc
import json
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import watchfiles

from certctl.admin.events import EventRecorder
from certctl.api import parsing, schema
from certctl.api.errors import InvalidObject
from certctl.api.resources import ObjectKey
from certctl.controllers import (
    challenges,
    reconciling,
)
from certctl.controllers.order_budget import DUPLICATE_CERTIFICATE_LIMIT, Budget
from certctl.controllers.reconciling import Clock
from certctl.dataplane import DEFAULT_MAX_CONNECTIONS, certstore
from certctl.issuers.acme import accounts as acme_accounts
from certctl.runtime import dataplane_feed, dispatch, metrics, on_demand, runner
from certctl.solvers import tls_alpn01_solver
from certctl.solvers.dns01 import solver as dns01_solver
from certctl.store import local
from certctl.store.interface import WatchEvent
from certctl.store.local import LocalStore

logger = logging.getLogger(__name__)

Item = tuple[str, ObjectKey]

# What the data plane took from parsing each certificate it served (names, expiry), by
# the digest of its Secret's content, written at a clean stop for the next start to
# serve the same contents without parsing them (`certstore.CertificateFacts`).
CERTIFICATE_CACHE = "certificate-cache"
# The digests of the object contents the CRDs' rules found valid (`schema.valid_digests`),
# with the CRDs' own digest: the next start's pass over every Certificate skips the rules
# for those it finds unchanged.
VALIDATION_CACHE = "validation-cache"


@dataclass(frozen=True, kw_only=True)
class ServeOptions:
    manifests: Path
    state_dir: Path
    listen_address: str = "0.0.0.0"  # noqa: S104 - an ingress controller listens on all
    http_port: int | None = 80  # None: no HTTP listener (TLS-ALPN-01 or DNS-01 only)
    https_port: int = 443
    # Where the HTTP-01 self-check connects; None resolves each name through DNS.
    self_check_address: str | None = None
    self_check_port: int | None = None  # default: http_port
    cluster_resource_namespace: str = "certctl"
    ingress_class: str = "certctl"
    workers: int = 16
    acme_process: bool = True  # ACME requests from a helper process (`client_process`)
    backoff_base: datetime.timedelta = datetime.timedelta(hours=1)
    watch_manifests: bool = True
    dns01: dns01_solver.Options = field(default_factory=dns01_solver.Options)
    # Orders allowed per exact name set per ACME server; None: no budget.
    order_budget: Budget | None = DUPLICATE_CERTIFICATE_LIMIT
    # The admin address: /metrics of controller and data plane, probes, the dashboard.
    metrics_port: int | None = None  # None: off
    metrics_address: str = "127.0.0.1"  # no login: never a public address by default
    # After SIGTERM: seconds not ready but still serving, before the listeners close.
    shutdown_delay: float = 0.0
    # Then: seconds in-flight requests and streams get to finish before they are cut
    # (0: cut them; the command's --drain-timeout defaults to 8 s, see cli.py).
    drain_timeout: float = 0.0
    load_balancer_address: str | None = None  # written into served Ingresses' status
    tls_context_cache: int = certstore.DEFAULT_CONTEXT_CACHE_SIZE
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    enforce_access_annotations: bool = True
    on_demand_tls: on_demand.Policy | None = None  # None: off

    @property
    def listening(self) -> dataplane_feed.Listening:
        return dataplane_feed.Listening(
            address=self.listen_address, http_port=self.http_port, https_port=self.https_port,
            ingress_class=self.ingress_class, metrics_port=self.metrics_port,
            metrics_address=self.metrics_address,
            load_balancer_address=self.load_balancer_address,
            tls_context_cache=self.tls_context_cache,
            max_connections=self.max_connections,
            enforce_access_annotations=self.enforce_access_annotations,
            drain_timeout=self.drain_timeout)


class StartupError(Exception):
    """certctl serve cannot start; the message says what to change."""


class Standalone:
    """Owns the store, the queue, the data plane and the watcher; start, then stop."""

    def __init__(self, *, options: ServeOptions, clock: Clock = reconciling.system_clock) -> None:
        self.options = options
        try:
            self._state_lock = local.claim_state_dir(options.state_dir)
        except local.StateDirBusy as err:
            raise StartupError(f"--state-dir {options.state_dir}: {err}") from err
        except OSError as err:
            raise StartupError(f"--state-dir {options.state_dir}: {err.strerror or err}") from err
        try:
            self.store = LocalStore(manifests_dir=options.manifests, state_dir=options.state_dir)
            # Lets `certctl status` show user-defined objects without --manifests.
            local.atomic_write(options.state_dir / local.SERVE_INFO, json.dumps(
                {"manifests": str(options.manifests.resolve())}).encode())
        except OSError as err:
            self._release_state_dir()
            raise StartupError(f"--state-dir {options.state_dir}: {err.strerror or err}") from err
        # Reconcilers and the feed emit their events through it, for the dashboard.
        self.events = EventRecorder(store=self.store)
        self.edge = dataplane_feed.FedDataPlane(store=self.events, listening=options.listening,
                                                process="serve", status_store=self.store,
                                                events=self.events)
        self.feed = self.edge.feed
        self.dataplane = self.edge.server
        self.on_demand: on_demand.OnDemandTls | None = None
        if options.on_demand_tls is not None:
            self.on_demand = on_demand.OnDemandTls(
                policy=options.on_demand_tls, store=self.store,
                covers=self.edge.certificate_index.has_certificate_for)
            self.dataplane.hold_unknown_names(hold=self.on_demand.hold,
                                              timeout=options.on_demand_tls.wait)
            self.feed.serve_secrets(self.on_demand.secrets)
        # One /metrics for both: the data plane's registry also carries the controller's.
        self.metrics = metrics.ControllerMetrics(store=self.store,
                                                 registry=self.dataplane.metrics.registry)
        controllers = dispatch.build_controllers(
            store=self.events,
            component="standalone",
            cluster_resource_namespace=options.cluster_resource_namespace,
            on_acme_response=self.metrics.observe_acme_response,
            acme_process=options.acme_process,
            clock=clock,
            backoff_base=options.backoff_base,
            self_check=challenges.self_check_for(
                port=options.self_check_port or options.http_port or 80,
                connect_address=options.self_check_address,
            ),
            dns01=options.dns01,
            order_budget=options.order_budget,
            # This process's own HTTPS listener answers TLS-ALPN-01.
            tls_alpn01=tls_alpn01_solver.SelfCheckTarget(
                port=options.https_port, connect_address=options.self_check_address),
        )
        self.accounts = controllers.accounts
        self.dispatcher = controllers.dispatcher
        self.queue = dispatch.work_queue(handler=self.dispatcher.handle, workers=options.workers)
        self._stop_watching = threading.Event()
        self._watcher: threading.Thread | None = None
        self._seeder: threading.Thread | None = None

    # --- lifecycle -----------------------------------------------------------

    async def start(self) -> None:
        if not self.store.reload_manifests():
            self.store.collect_orphans()
        if _uses_acme(self.store):
            self.accounts.expect_acme()  # its helper starts while the data plane does
        # Subscribed after the first load: the feed's first refresh reads every object,
        # and `everything` below queues each once.
        self.store.subscribe(self.feed.on_event)
        self.store.subscribe(self._on_event)
        self.edge.certificate_index.remember(
            _read_certificate_cache(self.options.state_dir / CERTIFICATE_CACHE))
        self.feed.answer_live_challenges()
        if self.on_demand is not None:
            self.on_demand.start(asyncio.get_running_loop())
        try:
            self.edge.start_admin()
            await self.edge.start_server()
        except OSError as err:
            listening = self.options.listening
            ports = f"{listening.http_port}/{listening.https_port}" + (
                f"/{listening.metrics_port}" if listening.metrics_port is not None else "")
            raise StartupError(f"cannot listen on {listening.address} ports {ports}: "
                               f"{err.strerror or err}") from err
        self.feed.start()
        schema.remember_valid(_read_validation_cache(self.options.state_dir / VALIDATION_CACHE))
        self.queue.start()
        # Off the loop: listing every object to queue it once takes seconds with 10,000
        # of them, and the data plane, ready now, serves from this loop.
        self._seeder = threading.Thread(target=self._queue_everything, name="queue-everything",
                                        daemon=True)
        self._seeder.start()
        if self.options.watch_manifests:
            self._watcher = threading.Thread(target=self._watch, name="manifest-watcher",
                                             daemon=True)
            self._watcher.start()

    async def stop(self) -> None:
        self._stop_watching.set()
        self.queue.stop()
        if self.on_demand is not None:
            self.on_demand.stop()
        await self.edge.stop()
        self.accounts.close()
        for thread in (self._watcher, self._seeder):
            if thread is not None:
                thread.join(5)
        try:
            self.store.save_state_cache()  # the next start reads it instead of the YAML
        except OSError as err:
            logger.warning("the next start parses every state file: %s", err)
        _write_cache(self.options.state_dir / CERTIFICATE_CACHE,
                     _certificate_cache(self.edge.certificate_index.known_facts()),
                     lost="the next start parses every certificate")
        _write_cache(self.options.state_dir / VALIDATION_CACHE, local.dump_cache(
            {"crds": schema.crds_digest(), "valid": schema.valid_digests()}),
            lost="the next start validates every object")
        self._release_state_dir()

    def _release_state_dir(self) -> None:
        lock, self._state_lock = self._state_lock, -1
        if lock >= 0:
            os.close(lock)

    async def run_until_signalled(self, *, started: Callable[[], None] | None = None) -> None:
        """Start, call `started` once serving, and stop at SIGINT or SIGTERM (also one
        that arrives while starting: the data plane is ready before `start` returns)."""
        stopped = runner.stop_signal()
        await self.start()
        if started is not None:
            started()
        await stopped.wait()
        self.edge.health.start_draining()
        logger.info("stopping")
        if self.options.shutdown_delay > 0:
            await asyncio.sleep(self.options.shutdown_delay)
        await self.stop()

    def _watch(self) -> None:
        # A change is taken once 10 ms pass without another (watchfiles' `step`; its
        # default, 50 ms, was most of the time an edit took to reach the data plane).
        for _changes in watchfiles.watch(self.options.manifests, stop_event=self._stop_watching,
                                         debounce=200, step=10, raise_interrupt=False):
            logger.info("manifests changed; reloading")
            self.store.reload_manifests()

    def _queue_everything(self) -> None:
        for item in self.dispatcher.everything():
            self.queue.add(item)

    def _on_event(self, event: WatchEvent) -> None:
        self.metrics.observe_certificate(event)
        for item in self.dispatcher.items_for(event):
            self.queue.add(item)



def _uses_acme(store: LocalStore) -> bool:
    """Whether an issuer in `store` is an ACME one (invalid ones are not)."""
    for kind in ("ClusterIssuer", "Issuer"):
        for obj in store.list(kind=kind, shared=True):
            try:
                issuer = parsing.parse_issuer(obj)
            except InvalidObject:
                continue
            if acme_accounts.acme_issuer(issuer) is not None:
                return True
    return False


def _write_cache(path: Path, data: bytes, *, lost: str) -> None:
    try:
        local.atomic_write(path, data)
    except OSError as err:
        logger.warning("%s: %s", lost, err)


def _read_cache(path: Path, *, lost: str) -> Any:
    """What a cache file holds (`local.load_cache`); None when it is not there or cannot
    be read, which `lost` says the consequence of."""
    try:
        return local.load_cache(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        logger.warning("%s: %s", lost, err)
        return None


def _certificate_cache(facts: dict[bytes, certstore.CertificateFacts]) -> bytes:
    return local.dump_cache({
        digest: [list(known.names), known.addressed, int(known.not_after.timestamp())]
        for digest, known in facts.items()})


def _read_certificate_cache(path: Path) -> dict[bytes, certstore.CertificateFacts]:
    """What `_certificate_cache` wrote; nothing (every certificate parsed) when it is not
    there or not as written."""
    entries = _read_cache(path, lost="certificate cache not used (every certificate is "
                                     "parsed)")
    found: dict[bytes, certstore.CertificateFacts] = {}
    for digest, entry in entries.items() if isinstance(entries, dict) else ():
        try:
            names, addressed, not_after = entry
            if not (isinstance(digest, bytes) and isinstance(names, list)
                    and all(isinstance(name, str) for name in names)
                    and isinstance(addressed, bool) and isinstance(not_after, int)):
                raise TypeError(digest)
            found[digest] = certstore.CertificateFacts(
                names=tuple(names), addressed=addressed,
                not_after=datetime.datetime.fromtimestamp(not_after, datetime.UTC))
        except (TypeError, ValueError, OverflowError, OSError):
            logger.warning("certificate cache not used (every certificate is parsed): "
                           "an entry is not as written")
            return {}
    return found


def _read_validation_cache(path: Path) -> list[bytes]:
    """The valid contents' digests a stop wrote, if written with these very CRDs."""
    entry = _read_cache(path, lost="validation cache not used (every object is validated)")
    if not (isinstance(entry, dict) and entry.get("crds") == schema.crds_digest()
            and isinstance(entry.get("valid"), list)
            and all(isinstance(digest, bytes) for digest in entry["valid"])):
        return []  # other CRDs (another certctl), or not as written
    digests: list[bytes] = entry["valid"]
    return digests


def run(options: ServeOptions) -> None:
    """Serve until SIGINT/SIGTERM, on the commands' loop (uvloop); StartupError if it cannot.

    The garbage collector is paused while the store, the routes and the certificates
    load, and what they loaded is then frozen out of its generations (`gc.freeze`): it
    lives as long as the process, and collections walking it again and again made
    loading 10,000 Ingresses with their Secrets ~4x slower in CPU, and every collection
    after it slower too. (The process's own: tests running `Standalone` in-process keep
    their collector as it is.)
    """
    gc.disable()
    try:
        standalone = Standalone(options=options)
    except BaseException:
        gc.enable()
        raise
    runner.run(standalone.run_until_signalled(started=_freeze_loaded))


def _freeze_loaded() -> None:
    gc.freeze()
    gc.enable()
