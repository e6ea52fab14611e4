"""The event loop every command runs on: uvloop, the loop the data plane is measured on.

`serve`, `controller` and `dataplane` all run their main coroutine here, so the
data plane a cluster runs is the one bench/ measures through `serve` (B3, B4):
uvloop under the same TLS transport (dataplane/tls.py) and the same compiled
modules. On the standard loop the proxy did about half the requests per second.
uvloop is a dependency, not an option: a missing uvloop is an installation
error, not a reason to run slower without saying so.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import signal
from collections.abc import Coroutine
from typing import Any, TypeVar

import uvloop

logger = logging.getLogger(__name__)

T = TypeVar("T")


def new_event_loop() -> asyncio.AbstractEventLoop:
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


def run(main: Coroutine[Any, Any, T]) -> T | None:
    """Run `main` to its end on a new uvloop loop; None when interrupted by Ctrl-C.

    The commands stop on SIGINT and SIGTERM through their own signal handlers; this
    only keeps a Ctrl-C that lands before those are installed from ending in a
    traceback."""
    with contextlib.suppress(KeyboardInterrupt), \
            asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(_logged(main))
    return None


# The stop signal of the loop `run` runs (its main task's context), once installed.
_stopped: contextvars.ContextVar[asyncio.Event | None] = contextvars.ContextVar(
    "certctl_stopped", default=None)


def stop_signal() -> asyncio.Event:
    """Set on SIGINT or SIGTERM: a signal arriving while the process still starts (its
    loop is free meanwhile, or busy loading) stops it once started, not by the default
    action, which would skip draining and the clean stop's writes. On a loop `run` runs,
    the handlers are installed before the loop's first line is logged (and this returns
    their Event); elsewhere (a test's own loop), from now on."""
    stopped = _stopped.get()
    if stopped is None:
        stopped = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stopped.set)
        _stopped.set(stopped)
    return stopped


async def _logged(main: Coroutine[Any, Any, T]) -> T:
    loop = asyncio.get_running_loop()
    # Before the line below, which says the process runs: a SIGTERM sent once it is seen
    # (by a test, a supervisor reading the log) is the command's to handle, not the
    # default action's.
    stop_signal()
    # One line that says what the process runs on (the benchmarks' loop, or not).
    logger.info("event loop: %s.%s", type(loop).__module__, type(loop).__qualname__)
    return await main
