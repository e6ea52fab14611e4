"""`certctl serve`: the reconcilers and the data plane on one host, no cluster.

The local store plays the API server, a work queue plays kopf, and a file
watcher plays `kubectl apply`. Which reconciler runs for which change mirrors
what owner references and watches give a cluster controller:

- a change to an object's spec (its generation) runs its own reconciler;
- a status change of an Order or Challenge runs its owner's reconciler
  (that is how progress flows upward without polling);
- an issuer change runs the Certificates that use it; a Secret change runs
  the Certificate that writes it (a deleted Secret is reissued at once).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
import signal
import threading
from collections.abc import Hashable, Iterator
from dataclasses import dataclass
from pathlib import Path

import watchfiles

from certctl.api import annotations as annotation_keys
from certctl.api.resources import ObjectKey
from certctl.controllers import (
    acme_accounts,
    certificates,
    challenges,
    ingress_shim,
    issuers,
    orders,
    reconciling,
)
from certctl.controllers.reconciling import Clock
from certctl.dataplane import certstore, server
from certctl.runtime import dataplane_feed, workqueue
from certctl.store import interface as store_interface
from certctl.store import local
from certctl.store.interface import WatchEvent
from certctl.store.local import LocalStore

logger = logging.getLogger(__name__)

Item = tuple[str, ObjectKey]


@dataclass(frozen=True, kw_only=True)
class ServeOptions:
    manifests: Path
    state_dir: Path
    listen_address: str = "0.0.0.0"  # noqa: S104 - an ingress controller listens on all
    http_port: int = 80
    https_port: int = 443
    # Where the HTTP-01 self-check connects; None resolves each name through DNS.
    self_check_address: str | None = None
    self_check_port: int | None = None  # default: http_port
    cluster_resource_namespace: str = "certctl"
    ingress_class: str = "certctl"
    workers: int = 16
    backoff_base: datetime.timedelta = datetime.timedelta(hours=1)
    watch_manifests: bool = True


class StartupError(Exception):
    """certctl serve cannot start; the message says what to change."""


class Standalone:
    """Owns the store, the queue, the data plane and the watcher; start, then stop."""

    def __init__(self, *, options: ServeOptions, clock: Clock = reconciling.system_clock) -> None:
        self.options = options
        try:
            self.store = LocalStore(manifests_dir=options.manifests, state_dir=options.state_dir)
            # Lets `certctl status` show user-defined objects without --manifests.
            local.atomic_write(options.state_dir / local.SERVE_INFO, json.dumps(
                {"manifests": str(options.manifests.resolve())}).encode())
        except OSError as err:
            raise StartupError(f"--state-dir {options.state_dir}: {err.strerror or err}") from err
        self.accounts = acme_accounts.AcmeAccounts(
            cluster_resource_namespace=options.cluster_resource_namespace,
            user_agent="certctl-standalone",
        )
        self.certificate_settings = certificates.Settings(clock=clock,
                                                          backoff_base=options.backoff_base)
        self.order_settings = orders.Settings(clock=clock, accounts=self.accounts)
        self.issuer_settings = issuers.Settings(clock=clock, accounts=self.accounts)
        self.challenge_settings = challenges.Settings(
            clock=clock,
            accounts=self.accounts,
            self_check=challenges.self_check_for(
                port=options.self_check_port or options.http_port,
                connect_address=options.self_check_address,
            ),
        )
        self.certificate_index = certstore.CertificateIndex()
        self.dataplane = server.DataPlane(
            http_address=(options.listen_address, options.http_port),
            https_address=(options.listen_address, options.https_port),
            certificates=self.certificate_index,
            challenge_responder=self._respond_to_challenge,
        )
        self.feed = dataplane_feed.DataPlaneFeed(
            store=self.store,
            certificates=self.certificate_index,
            publish_routes=self.dataplane.set_routes,
            ingress_class=options.ingress_class,
        )
        self.queue = workqueue.WorkQueue(
            handler=self._handle,
            workers=options.workers,
            # A conflict means someone wrote first: re-read and go again, as kopf does.
            backoff=workqueue.Backoff(initial=0.05, maximum=300.0),
            expected_errors=(reconciling.TransientError, store_interface.Conflict),
        )
        self._generations: dict[ObjectKey, object] = {}
        self._generations_lock = threading.Lock()
        self._stop_watching = threading.Event()
        self._watcher: threading.Thread | None = None

    def _respond_to_challenge(self, host: str, token: str) -> str | None:
        return self.feed.respond_to_challenge(host, token)

    # --- lifecycle -----------------------------------------------------------

    async def start(self) -> None:
        self.store.subscribe(self.feed.on_event)
        if not self.store.reload_manifests():
            self.store.collect_orphans()
        # Subscribed after the first load: `_everything` below queues those objects once.
        self.store.subscribe(self._on_event)
        self._seed_challenges()
        try:
            await self.dataplane.start()
        except OSError as err:
            await self.dataplane.stop()
            raise StartupError(
                f"cannot listen on {self.options.listen_address} ports "
                f"{self.options.http_port}/{self.options.https_port}: {err.strerror or err}"
            ) from err
        self.feed.start()
        self.queue.start()
        for item in self._everything():
            self.queue.add(item)
        if self.options.watch_manifests:
            self._watcher = threading.Thread(target=self._watch, name="manifest-watcher",
                                             daemon=True)
            self._watcher.start()
        logger.info("serving HTTP on %s:%d and HTTPS on %s:%s", self.options.listen_address,
                    self.dataplane.http_port, self.options.listen_address,
                    self.dataplane.https_port)

    async def stop(self) -> None:
        self._stop_watching.set()
        self.queue.stop()
        self.feed.stop()
        await self.dataplane.stop()
        self.accounts.close()
        if self._watcher is not None:
            self._watcher.join(5)

    async def run_until_signalled(self) -> None:
        await self.start()
        stopped = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stopped.set)
        await stopped.wait()
        logger.info("stopping")
        await self.stop()

    def _watch(self) -> None:
        for _changes in watchfiles.watch(self.options.manifests, stop_event=self._stop_watching,
                                         debounce=200, raise_interrupt=False):
            logger.info("manifests changed; reloading")
            self.store.reload_manifests()

    # --- dispatch ------------------------------------------------------------

    def _handle(self, item: Hashable) -> float | None:
        assert isinstance(item, tuple)
        controller: str = item[0]
        key: ObjectKey = item[1]
        if controller == "ingress":
            result = ingress_shim.reconcile(store=self.store, key=key)
        elif controller == "certificate":
            result = certificates.reconcile(store=self.store, key=key,
                                            settings=self.certificate_settings)
        elif controller == "order":
            result = orders.reconcile(store=self.store, key=key, settings=self.order_settings)
        elif controller == "challenge":
            result = challenges.reconcile(store=self.store, key=key,
                                          settings=self.challenge_settings)
        elif controller == "issuer":
            result = issuers.reconcile(store=self.store, key=key, settings=self.issuer_settings)
        else:
            raise ValueError(f"unknown controller {controller}")
        return result.requeue_after

    def _on_event(self, event: WatchEvent) -> None:
        for item in self._items_for(event):
            self.queue.add(item)

    def _items_for(self, event: WatchEvent) -> Iterator[Item]:
        key = event.key
        if self._spec_changed(event):
            own = _OWN_CONTROLLER.get(key.kind)
            if own is not None:
                yield (own, key)
        owner = reconciling.controller_of(event.obj)
        if key.kind == "Order" and owner is not None and owner.kind == "Certificate":
            yield ("certificate", owner)
        elif key.kind == "Challenge" and owner is not None and owner.kind == "Order":
            yield ("order", owner)
        elif key.kind in ("ClusterIssuer", "Issuer"):
            yield from self._certificates_using(key)
        elif key.kind == "Secret":
            yield from self._certificates_writing(event)

    def _spec_changed(self, event: WatchEvent) -> bool:
        """Skip our own status writes, like controller-runtime's generation predicate."""
        generation = event.obj.get("metadata", {}).get("generation")
        with self._generations_lock:
            if event.type == "DELETED":
                self._generations.pop(event.key, None)
                return True
            previous = self._generations.get(event.key)
            self._generations[event.key] = generation
        return event.type == "ADDED" or previous != generation or generation is None

    def _certificates_writing(self, event: WatchEvent) -> Iterator[Item]:
        """The Certificate whose Secret this is: named in the Secret's annotation when
        certctl wrote it (also on deletion: the event carries the last state), else
        found by `spec.secretName` (a Secret the user brought)."""
        annotations = event.obj.get("metadata", {}).get("annotations") or {}
        name = annotations.get(annotation_keys.SECRET_CERTIFICATE_NAME)
        if name:
            yield ("certificate", ObjectKey(kind="Certificate", namespace=event.key.namespace,
                                            name=name))
            return
        if (event.obj.get("metadata", {}).get("labels") or {}).get(certificates.NEXT_KEY_LABEL):
            return  # the next private key is the Certificate reconciler's own doing
        for certificate in self.store.list(kind="Certificate", namespace=event.key.namespace):
            if (certificate.get("spec") or {}).get("secretName") == event.key.name:
                yield ("certificate", reconciling.key_of(certificate))

    def _certificates_using(self, issuer: ObjectKey) -> Iterator[Item]:
        for certificate in self.store.list(kind="Certificate"):
            ref = (certificate.get("spec") or {}).get("issuerRef") or {}
            if ref.get("name") != issuer.name or ref.get("kind", "Issuer") != issuer.kind:
                continue
            if issuer.namespace is not None and (
                certificate["metadata"].get("namespace") != issuer.namespace
            ):
                continue
            yield ("certificate", reconciling.key_of(certificate))

    def _everything(self) -> Iterator[Item]:
        for kind, controller in _OWN_CONTROLLER.items():
            for obj in self.store.list(kind=kind):
                key = reconciling.key_of(obj)
                with self._generations_lock:
                    self._generations[key] = obj["metadata"].get("generation")
                yield (controller, key)

    def _seed_challenges(self) -> None:
        """Challenges persisted by a previous run must be answerable before the first event."""
        for obj in self.store.list(kind="Challenge"):
            self.feed.on_event(WatchEvent(type="ADDED", key=reconciling.key_of(obj), obj=obj))


_OWN_CONTROLLER = {
    "ClusterIssuer": "issuer",
    "Issuer": "issuer",
    "Ingress": "ingress",
    "Certificate": "certificate",
    "Order": "order",
    "Challenge": "challenge",
}


def run(options: ServeOptions) -> None:
    """Serve until SIGINT/SIGTERM, on uvloop when it is installed; StartupError if it cannot."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency; stdlib still works
        runner = asyncio.run
    else:
        runner = uvloop.run
    with contextlib.suppress(KeyboardInterrupt):
        runner(Standalone(options=options).run_until_signalled())
