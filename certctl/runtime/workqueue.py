"""A delaying, de-duplicating work queue drained by a pool of threads.

What client-go's workqueue gives a controller, for `serve` and `controller`
alike: an item queued many times runs once; an item is never run by two
workers at once (a change that arrives while it runs queues it again);
an item can be scheduled for later (requeue-after, renewals, backoff); failures
retry with capped exponential backoff per item. Waiting costs nothing: idle
workers block on a condition variable, one of them until the earliest due time
(not every idle worker: each would wake at every due time, take the GIL and go back
to sleep but one; eight idle workers and ten items falling due one by one looked at
the queue 108 times, now 48).

Of the items that are due, a worker takes the one of the lowest `priority`
first, then the longest due. A controller ranks the later steps of its flow
first, so one certificate goes through all its steps before the next starts
(depth first) instead of every certificate doing step one, then every one
step two (breadth first): the first certificates are served in seconds, not
after all of them, and half-done work (live Challenges, pending Orders)
does not pile up.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass

logger = logging.getLogger(__name__)

Handler = Callable[[Hashable], float | None]
Priority = Callable[[Hashable], int]  # lower runs first among due items


@dataclass(frozen=True, kw_only=True)
class Backoff:
    initial: float = 0.5
    maximum: float = 300.0

    def delay(self, failures: int) -> float:
        return float(min(self.maximum, self.initial * 2 ** max(0, failures - 1)))


class WorkQueue:
    """Runs `handler(item)`; its return value is the delay before running it again."""

    def __init__(
        self,
        *,
        handler: Handler,
        workers: int,
        backoff: Backoff | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        name: str = "reconcile",
        expected_errors: tuple[type[Exception], ...] = (),
        priority: Priority | None = None,
    ) -> None:
        """`expected_errors` are retried like any failure but logged in one line, no traceback.
        Without `priority`, due items run in the order they fell due."""
        self._handler = handler
        self._priority = priority
        self._expected_errors = expected_errors
        self._workers = workers
        self._backoff = backoff or Backoff()
        self._monotonic = monotonic
        self._name = name
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, Hashable]] = []  # not due yet, by due time
        # Due items by priority, each in due order; entries superseded by a later add()
        # (their due time no longer matches `_due`) are skipped when taken.
        self._ready: dict[int, collections.deque[tuple[float, Hashable]]] = {}
        self._due: dict[Hashable, float] = {}  # earliest due time of each queued item
        self._running: set[Hashable] = set()
        self._rerun: dict[Hashable, float] = {}  # queued while running: due time
        self._failures: dict[Hashable, int] = {}
        self._sequence = itertools.count()
        self._threads: list[threading.Thread] = []
        self._stopping = False
        self._busy = 0
        self._timer_due: float | None = None  # the due time one idle worker waits for

    def start(self) -> None:
        for index in range(self._workers):
            thread = threading.Thread(
                target=self._work, name=f"{self._name}-{index}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def stop(self, *, timeout: float = 10.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def add(self, item: Hashable, *, after: float = 0.0) -> None:
        """Queue `item` to run in `after` seconds, or sooner if it is already due sooner."""
        with self._cond:
            self._add_locked(item, due=self._monotonic() + after)

    def _add_locked(self, item: Hashable, *, due: float) -> None:
        if item in self._running:
            self._rerun[item] = min(due, self._rerun.get(item, due))
            return
        if item in self._due and self._due[item] <= due:
            return
        self._due[item] = due
        heapq.heappush(self._heap, (due, next(self._sequence), item))
        self._cond.notify()

    def idle(self) -> bool:
        """True when nothing is running and nothing is due now (for tests and benchmarks)."""
        with self._cond:
            now = self._monotonic()
            return self._busy == 0 and not any(due <= now for due in self._due.values())

    def _next_item(self) -> Hashable | None:
        with self._cond:
            while not self._stopping:
                now = self._monotonic()
                while self._heap and self._heap[0][0] <= now:
                    due, _, item = heapq.heappop(self._heap)
                    if self._due.get(item) == due:  # else superseded by an earlier add()
                        rank = self._priority(item) if self._priority is not None else 0
                        self._ready.setdefault(rank, collections.deque()).append((due, item))
                item = self._take_ready()
                if item is not None:
                    del self._due[item]
                    self._running.add(item)
                    self._busy += 1
                    self._wake_next()
                    return item
                first = self._heap[0][0] if self._heap else None
                if first is None or (self._timer_due is not None and self._timer_due <= first):
                    self._cond.wait()  # until an add, or the worker timing `first` hands over
                    continue
                self._timer_due = first
                self._cond.wait(first - now)
                if self._timer_due == first:
                    self._timer_due = None
            return None

    def _wake_next(self) -> None:
        """Under the lock, as a worker takes an item: wake another idle one when work is
        left that no worker would otherwise see to (an item due now, or the next due time
        with none waiting for it)."""
        if self._ready or (self._heap and (self._timer_due is None
                                           or self._heap[0][0] < self._timer_due)):
            self._cond.notify()

    def _take_ready(self) -> Hashable | None:
        """The due item of the lowest priority that fell due first, if any."""
        for rank in sorted(self._ready):
            entries = self._ready[rank]
            while entries:
                due, item = entries.popleft()
                if self._due.get(item) == due:
                    return item
            del self._ready[rank]
        return None

    def _work(self) -> None:
        while True:
            item = self._next_item()
            if item is None:
                return
            delay: float | None
            try:
                delay = self._handler(item)
                self._failures.pop(item, None)
            except Exception as err:
                failures = self._failures.get(item, 0) + 1
                self._failures[item] = failures
                delay = self._backoff.delay(failures)
                if isinstance(err, self._expected_errors):
                    logger.warning("%s (attempt %d, retrying in %.1fs)", err, failures, delay)
                else:
                    logger.exception("%s failed (attempt %d), retrying in %.1fs", item,
                                     failures, delay)
            with self._cond:
                # Re-queue before dropping `busy`, so `idle()` never sees a gap.
                self._running.discard(item)
                rerun = self._rerun.pop(item, None)
                if rerun is not None:
                    self._add_locked(item, due=rerun)
                if delay is not None:
                    self._add_locked(item, due=self._monotonic() + delay)
                self._busy -= 1
