"""The Certificate reconciler's settings, and the failure backoff they set.

A failed issuance waits `failure_backoff` (cert-manager's: 1 h, doubling per
consecutive failure, capped at 32 h), or until the CA's Retry-After when that is
later (`retry_time`).
"""

from __future__ import annotations

import datetime
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from certctl.api.resources import ObjectKey
from certctl.controllers import order_budget
from certctl.controllers.reconciling import Clock
from certctl.issuers.acme import accounts as acme_accounts


@dataclass(frozen=True, kw_only=True)
class Untold:
    """An ACME issuance this process started whose Certificate's status does not say so yet."""
    order: str
    at: datetime.datetime
    # Why it was started (`policies.Violation`).
    reason: str
    message: str

    @property
    def requested(self) -> str:
        """The Requested Event's message, as a told issuance has it at once."""
        return f"Created new Order {self.order}: {self.message}"


class UntoldIssuances:
    """The issuances this process started and has not told of, by Certificate.

    In memory on purpose: a restarted certctl tells at once of the issuance it finds
    pending (its status says nothing yet), as it did before any deferral."""

    def __init__(self) -> None:
        self._started: dict[ObjectKey, Untold] = {}
        self._lock = threading.Lock()

    def start(self, key: ObjectKey, untold: Untold) -> None:
        with self._lock:
            self._started[key] = untold

    def get(self, key: ObjectKey) -> Untold | None:
        with self._lock:
            return self._started.get(key)

    def pop(self, key: ObjectKey, *, order: str | None = None) -> Untold | None:
        """Forget `key`'s issuance; returns it when it was the one of `order` (any: None)."""
        with self._lock:
            untold = self._started.pop(key, None)
        return untold if untold is not None and order in (None, untold.order) else None


@dataclass(frozen=True, kw_only=True)
class Settings:
    clock: Clock
    backoff_base: datetime.timedelta = datetime.timedelta(hours=1)
    backoff_max: datetime.timedelta = datetime.timedelta(hours=32)
    # Where ClusterIssuers' CA Secrets, kept copies and order ledgers live.
    cluster_resource_namespace: str = "certctl"
    # None: no budget (a private ACME CA without limits).
    order_budget: order_budget.Budget | None = order_budget.DUPLICATE_CERTIFICATE_LIMIT
    # The ACME clients, for renewal information (ARI) and the profiles a CA offers;
    # None: neither is asked for (renewal by lifetime, profiles checked by the CA).
    accounts: acme_accounts.AcmeAccounts | None = None
    # Where in an ARI window to renew, 0..1 (RFC 9773: uniformly at random).
    draw: Callable[[], float] = random.random
    # A Certificate with a fallback issuer passes over one whose CA has not taken the order
    # (no order URL) this long after it was created: the CA went down after its issuer
    # became Ready, and the Order reconciler is retrying an unreachable server. Long enough
    # for a queue of thousands of new orders.
    order_placement_timeout: datetime.timedelta = datetime.timedelta(minutes=2)
    # How long an ACME issuance may run before the Certificate's status says Issuing (and
    # its Requested Event is emitted): most orders end sooner, and the status written at
    # the end says all there is (one status write and one Event a certificate fewer:
    # bench B8). Zero: told at once.
    untold_issuance: datetime.timedelta = datetime.timedelta(seconds=1)
    untold: UntoldIssuances = field(default_factory=UntoldIssuances)


def failure_backoff(*, failures: int, settings: Settings) -> datetime.timedelta:
    """cert-manager's schedule: base, doubling per consecutive failure, capped."""
    delay = settings.backoff_base * (1 << min(16, max(0, failures - 1)))
    return min(delay, settings.backoff_max)


def retry_time(
    *, last_failure: datetime.datetime, retry_after: datetime.datetime | None, failures: int,
    settings: Settings,
) -> datetime.datetime:
    """The backoff after the last failure, or the CA's Retry-After when that is later."""
    retry_at = last_failure + failure_backoff(failures=failures, settings=settings)
    if retry_after is not None:
        retry_at = max(retry_at, retry_after)
    return retry_at
