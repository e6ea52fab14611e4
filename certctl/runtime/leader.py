"""Leader election over a coordination.k8s.io Lease, as client-go and controller-runtime do it.

Several controller replicas may run; only the holder of the Lease reconciles,
so no certificate is ever ordered twice. The Lease is taken or renewed with
an optimistic-concurrency write (`resourceVersion`): of two replicas racing
for it, the API server lets exactly one write win. A follower takes over once
the holder has not renewed for `lease_duration`, measured on the follower's
own clock from when it last saw the record change (so clock skew between
nodes does not matter). A leader that cannot renew within `renew_deadline`
steps down before anybody else may take over (renew_deadline < lease_duration).

Not kopf's peering: with equal priorities kopf pauses every replica, which is
not an election. Not `kubernetes.leaderelection`: it cannot be stopped and
reads the global client configuration.
"""

from __future__ import annotations

import datetime
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from certctl.store import interface
from certctl.store.interface import Store

logger = logging.getLogger(__name__)

MICRO_TIME = "%Y-%m-%dT%H:%M:%S.%fZ"


@dataclass(frozen=True, kw_only=True)
class ElectionSettings:
    namespace: str
    name: str
    identity: str
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0


class LeaderElector:
    def __init__(
        self,
        *,
        store: Store,
        settings: ElectionSettings,
        on_started_leading: Callable[[], None],
        on_stopped_leading: Callable[[], None],
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._settings = settings
        self._on_started = on_started_leading
        self._on_stopped = on_stopped_leading
        self._monotonic = monotonic
        self._leading = threading.Event()
        self._stopping = threading.Event()
        self._observed: tuple[Any, ...] | None = None  # the last holder record seen
        self._observed_at = 0.0
        self._renewed_at = 0.0
        self._thread = threading.Thread(target=self._run, name="leader-election", daemon=True)

    @property
    def is_leader(self) -> bool:
        return self._leading.is_set()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop campaigning; a leader releases the Lease so a peer takes over at once."""
        self._stopping.set()
        self._thread.join(self._settings.retry_period + 5)
        if self._leading.is_set():
            self._release()
            self._step_down()

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                acquired = self.try_acquire_or_renew()
            except interface.StoreError as err:
                logger.warning("leader election: %s", err)
                acquired = False
            now = self._monotonic()
            if acquired:
                self._renewed_at = now
                if not self._leading.is_set():
                    logger.info("%s became the leader (Lease %s/%s)", self._settings.identity,
                                self._settings.namespace, self._settings.name)
                    self._leading.set()
                    self._on_started()
            elif self._leading.is_set() and now - self._renewed_at > self._settings.renew_deadline:
                logger.error("%s could not renew Lease %s/%s for %.0f s; stepping down",
                             self._settings.identity, self._settings.namespace,
                             self._settings.name, self._settings.renew_deadline)
                self._step_down()
            self._stopping.wait(self._settings.retry_period)

    def _step_down(self) -> None:
        self._leading.clear()
        self._on_stopped()

    def try_acquire_or_renew(self) -> bool:
        """One round: True if this replica holds the Lease afterwards."""
        settings = self._settings
        now = datetime.datetime.now(datetime.UTC)
        lease = self._store.get(kind="Lease", namespace=settings.namespace, name=settings.name)
        if lease is None:
            try:
                self._store.create(obj=self._lease(spec=self._spec(now=now, transitions=0)))
            except interface.AlreadyExists:
                return False
            return True
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity")
        record = (holder, spec.get("renewTime"), spec.get("leaseTransitions"))
        if record != self._observed:
            self._observed, self._observed_at = record, self._monotonic()
        duration = float(spec.get("leaseDurationSeconds") or settings.lease_duration)
        held_by_other = bool(holder) and holder != settings.identity
        if held_by_other and self._monotonic() - self._observed_at < duration:
            return False
        transitions = int(spec.get("leaseTransitions") or 0)
        new_spec = self._spec(now=now, transitions=transitions + (holder != settings.identity))
        if holder == settings.identity and spec.get("acquireTime"):
            new_spec["acquireTime"] = spec["acquireTime"]
        lease["spec"] = new_spec
        try:
            self._store.replace(obj=lease)
        except (interface.Conflict, interface.NotFound):
            return False
        return True

    def _release(self) -> None:
        """Best effort: a Lease that cannot be released expires (lease_duration)."""
        try:
            lease = self._store.get(kind="Lease", namespace=self._settings.namespace,
                                    name=self._settings.name)
            if lease is None or (lease.get("spec") or {}).get("holderIdentity") != \
                    self._settings.identity:
                return
            lease["spec"] = dict(lease["spec"], holderIdentity="", leaseDurationSeconds=1)
            self._store.replace(obj=lease)
        except interface.StoreError as err:
            logger.info("could not release Lease %s: %s", self._settings.name, err)

    def _spec(self, *, now: datetime.datetime, transitions: int) -> dict[str, Any]:
        stamp = now.strftime(MICRO_TIME)
        return {
            "holderIdentity": self._settings.identity,
            "leaseDurationSeconds": round(self._settings.lease_duration),
            "acquireTime": stamp,
            "renewTime": stamp,
            "leaseTransitions": transitions,
        }

    def _lease(self, *, spec: dict[str, Any]) -> dict[str, Any]:
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self._settings.name, "namespace": self._settings.namespace},
            "spec": spec,
        }
