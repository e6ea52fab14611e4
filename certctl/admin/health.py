"""Liveness and readiness of one process, as its admin address reports them.

`/healthz` answers 200 while the process runs its event loop: the check hands
the loop a callback and waits for it, so a loop stuck in a blocking call fails
the probe (and kubelet restarts the pod) although the admin server's own
thread still answers.

`/readyz` answers 200 once everything the process waits for at start is done
(`Readiness.done`), and 503 again from the moment it starts draining
(SIGTERM): a Service stops sending it new connections while it still serves
the ones it has. The body names what is still awaited, as kube-apiserver's
`/readyz?verbose` does, so `curl` says why a pod is not Ready.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterable

# How long the event loop may take to run a callback before the process counts as hung.
LOOP_TIMEOUT = 5.0


class Health:
    """What a process waits for before it is ready, and whether its loop still runs."""

    def __init__(self, *, waiting_for: Iterable[str]) -> None:
        self._lock = threading.Lock()
        self._pending = list(dict.fromkeys(waiting_for))  # in the order they are awaited
        self._draining = False
        self._loop: asyncio.AbstractEventLoop | None = None

    def watch_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Make liveness depend on `loop` answering (the loop the process runs on)."""
        self._loop = loop

    def done(self, what: str) -> None:
        """One awaited step is done (idempotent: a later repeat of the step is harmless)."""
        with self._lock:
            if what in self._pending:
                self._pending.remove(what)

    def start_draining(self) -> None:
        """Not ready from now on, whatever else holds: the process is stopping."""
        with self._lock:
            self._draining = True

    @property
    def draining(self) -> bool:
        return self._draining

    def readiness(self) -> tuple[bool, str]:
        """(ready, what to say): what is still awaited, or that the process is stopping."""
        with self._lock:
            if self._draining:
                return False, "not ready: shutting down"
            if self._pending:
                return False, "not ready: waiting for " + ", ".join(self._pending)
        return True, "ok"

    def liveness(self, *, timeout: float = LOOP_TIMEOUT) -> tuple[bool, str]:
        """(alive, what to say): whether the event loop ran a callback within `timeout`."""
        loop = self._loop
        if loop is None:
            return True, "ok"
        answered = threading.Event()
        try:
            loop.call_soon_threadsafe(answered.set)
        except RuntimeError:  # the loop is closed: the process is on its way out
            return False, "not alive: the event loop has stopped"
        if not answered.wait(timeout):
            return False, f"not alive: the event loop did not answer within {timeout:g} s"
        return True, "ok"
