"""The standalone work queue: de-duplicated, serial per item, delayed, retried."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Hashable, Iterator

import pytest

from certctl.runtime.workqueue import Backoff, WorkQueue

TIMEOUT = 2.0


def wait_for(condition: Callable[[], bool], *, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.002)


@pytest.fixture
def queues() -> Iterator[list[WorkQueue]]:
    """Queues a test starts; stopped afterwards even when the test fails."""
    started: list[WorkQueue] = []
    yield started
    for queue in started:
        queue.stop(timeout=1.0)


class Recorder:
    """A handler that records (item, start, end) and returns scripted delays."""

    def __init__(self, *, sleep: float = 0.0,
                 delays: list[float | None] | None = None,
                 failures: int = 0) -> None:
        self.sleep = sleep
        self.delays = list(delays or [])
        self.failures = failures
        self.runs: list[tuple[Hashable, float, float]] = []
        self.started = threading.Event()
        self._lock = threading.Lock()
        self.active = 0
        self.max_active = 0

    def __call__(self, item: Hashable) -> float | None:
        start = time.monotonic()
        with self._lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        self.started.set()
        try:
            if self.sleep:
                time.sleep(self.sleep)
            if self.failures:
                self.failures -= 1
                raise RuntimeError("boom")
            return self.delays.pop(0) if self.delays else None
        finally:
            with self._lock:
                self.active -= 1
                self.runs.append((item, start, time.monotonic()))

    def count(self, item: Hashable) -> int:
        with self._lock:
            return sum(1 for run in self.runs if run[0] == item)


def test_backoff_doubles_from_initial_and_is_capped() -> None:
    backoff = Backoff(initial=0.01, maximum=0.05)
    assert [backoff.delay(n) for n in (1, 2, 3, 4, 5)] == [0.01, 0.02, 0.04, 0.05, 0.05]
    assert backoff.delay(0) == 0.01


def test_item_added_many_times_while_queued_runs_once(queues: list[WorkQueue]) -> None:
    handler = Recorder()
    queue = WorkQueue(handler=handler, workers=4)
    queues.append(queue)
    for _ in range(20):
        queue.add("a")
    queue.add("b")
    queue.start()

    wait_for(lambda: handler.count("a") == 1 and handler.count("b") == 1)
    time.sleep(0.05)
    assert handler.count("a") == 1
    assert handler.count("b") == 1
    assert queue.idle()


def test_item_never_runs_concurrently_with_itself(queues: list[WorkQueue]) -> None:
    handler = Recorder(sleep=0.05)
    queue = WorkQueue(handler=handler, workers=4)
    queues.append(queue)
    queue.start()

    queue.add("a")
    assert handler.started.wait(TIMEOUT)
    for _ in range(5):
        queue.add("a")  # arrives while "a" runs: queued again, not run beside it

    wait_for(lambda: handler.count("a") == 2)
    time.sleep(0.08)
    assert handler.count("a") == 2
    assert handler.max_active == 1
    (_, _, first_end), (_, second_start, _) = handler.runs
    assert second_start >= first_end


def test_different_items_run_in_parallel(queues: list[WorkQueue]) -> None:
    handler = Recorder(sleep=0.05)
    queue = WorkQueue(handler=handler, workers=3)
    queues.append(queue)
    queue.start()
    for item in ("a", "b", "c"):
        queue.add(item)

    wait_for(lambda: len(handler.runs) == 3)
    assert handler.max_active > 1


def test_returned_delay_requeues_the_item_after_that_delay(queues: list[WorkQueue]) -> None:
    handler = Recorder(delays=[0.05, None])
    queue = WorkQueue(handler=handler, workers=2)
    queues.append(queue)
    queue.start()
    queue.add("a")

    wait_for(lambda: handler.count("a") == 2)
    (_, _, first_end), (_, second_start, _) = handler.runs
    assert 0.045 <= second_start - first_end < 1.0
    time.sleep(0.08)
    assert handler.count("a") == 2  # None: not again until re-added


def test_add_after_delays_the_first_run(queues: list[WorkQueue]) -> None:
    handler = Recorder()
    queue = WorkQueue(handler=handler, workers=1)
    queues.append(queue)
    queue.start()
    added = time.monotonic()
    queue.add("later", after=0.05)

    wait_for(lambda: handler.count("later") == 1)
    assert 0.045 <= handler.runs[0][1] - added < 1.0


def test_earlier_add_overrides_a_later_due_time(queues: list[WorkQueue]) -> None:
    handler = Recorder()
    queue = WorkQueue(handler=handler, workers=1)
    queues.append(queue)
    queue.start()
    added = time.monotonic()
    queue.add("a", after=30.0)
    queue.add("a")

    wait_for(lambda: handler.count("a") == 1)
    assert handler.runs[0][1] - added < 1.0
    time.sleep(0.05)
    assert handler.count("a") == 1  # the superseded 30 s entry is not a second run


def test_raising_handler_is_retried_with_backoff(queues: list[WorkQueue]) -> None:
    handler = Recorder(failures=2)
    queue = WorkQueue(handler=handler, workers=2, backoff=Backoff(initial=0.01))
    queues.append(queue)
    queue.start()
    queue.add("flaky")

    wait_for(lambda: handler.count("flaky") == 3)
    starts = [start for _, start, _ in handler.runs]
    ends = [end for _, _, end in handler.runs]
    assert starts[1] - ends[0] >= 0.009
    assert starts[2] - ends[1] >= 0.019  # doubled after the second failure
    time.sleep(0.05)
    assert handler.count("flaky") == 3  # success stops the retries


def test_stop_joins_workers_after_the_running_item_finishes(queues: list[WorkQueue]) -> None:
    handler = Recorder(sleep=0.05)
    queue = WorkQueue(handler=handler, workers=3, name="joined")
    queue.start()
    queue.add("a")
    queue.add("later", after=30.0)
    assert handler.started.wait(TIMEOUT)

    queue.stop(timeout=TIMEOUT)

    assert handler.count("a") == 1  # the run in progress completed before stop returned
    assert handler.count("later") == 0
    assert not [t for t in threading.enumerate() if t.name.startswith("joined-")]


def test_queue_is_not_idle_between_a_run_and_its_immediate_requeue(
    queues: list[WorkQueue],
) -> None:
    handler = Recorder(delays=[0.0, None])

    def slow_clock_after_first_run() -> float:
        # Widen the moment between a run and its requeue, on the worker only.
        if threading.current_thread().name.startswith("probe-") and handler.count("a") == 1:
            time.sleep(0.05)
        return time.monotonic()

    queue = WorkQueue(handler=handler, workers=1, name="probe",
                      monotonic=slow_clock_after_first_run)
    queues.append(queue)
    queue.add("a")
    queue.start()

    # Read idle() first, then the count: idle while only one run has happened
    # can only mean the queue looked idle before running its requeue.
    idle_too_early = False
    deadline = time.monotonic() + 5
    while handler.count("a") < 2 and time.monotonic() < deadline:
        if queue.idle() and handler.count("a") < 2:
            idle_too_early = True
    assert handler.count("a") == 2
    assert not idle_too_early


class ExpectedFailure(Exception):
    pass


def test_expected_errors_are_retried_and_logged_without_traceback(
    queues: list[WorkQueue], caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[str] = []

    def handler(item: Hashable) -> float | None:
        calls.append(str(item))
        if len(calls) == 1:
            raise ExpectedFailure("issuer x: ACME server unreachable")
        if len(calls) == 2:
            raise RuntimeError("a bug")
        return None

    queue = WorkQueue(handler=handler, workers=1, backoff=Backoff(initial=0.01),
                      expected_errors=(ExpectedFailure,))
    queues.append(queue)
    queue.start()
    queue.add("a")
    wait_for(lambda: len(calls) == 3)

    expected, unexpected = (r for r in caplog.records if r.name == "certctl.runtime.workqueue")
    assert "issuer x: ACME server unreachable (attempt 1" in expected.getMessage()
    assert expected.exc_info is None
    assert unexpected.exc_info is not None, "a bug keeps its traceback"


def test_due_items_run_by_priority_then_in_due_order(queues: list[WorkQueue]) -> None:
    handler = Recorder()
    queue = WorkQueue(handler=handler, workers=1, priority=lambda item: 0 if item == "a" else 1)
    queues.append(queue)
    for item in ("c1", "c2", "a"):
        queue.add(item)
    queue.add("c1")  # already queued: keeps its place
    queue.start()

    wait_for(lambda: len(handler.runs) == 3)
    assert [run[0] for run in handler.runs] == ["a", "c1", "c2"]
    assert queue.idle()


def test_one_idle_worker_waits_for_each_due_time_not_all_of_them(
    queues: list[WorkQueue],
) -> None:
    """Eight idle workers, ten items falling due one after another: each due time wakes
    the worker waiting for it, not all eight (each waking reads the queue's clock)."""
    reads = itertools.count()

    def clock() -> float:
        next(reads)
        return time.monotonic()

    handler = Recorder()
    queue = WorkQueue(handler=handler, workers=8, monotonic=clock)
    queues.append(queue)
    queue.start()
    time.sleep(0.05)  # every worker idle, waiting
    before = next(reads)
    for index in range(10):
        queue.add(index, after=0.02 * (index + 1))
    wait_for(lambda: len(handler.runs) == 10)
    time.sleep(0.05)
    looks = next(reads) - before - 1

    assert len(handler.runs) == 10 and {item for item, _, _ in handler.runs} == set(range(10))
    assert looks <= 60, f"{looks} looks at the queue for 10 items"  # 108 when all woke
