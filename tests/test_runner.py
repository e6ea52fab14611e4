"""The commands' event loop (runtime/runner.py): a stop signal is the command's to handle
from the loop's first logged line on."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.controlplane import REPO

SIGNALLED_AT_ONCE = textwrap.dedent("""
    import asyncio, logging, os, signal
    from certctl.runtime import runner

    async def main() -> str:
        # What a supervisor does on reading "event loop: ...": before the command's
        # own code has run a single step.
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(runner.stop_signal().wait(), 10)
        return "stopped by the command"

    logging.basicConfig(level=logging.INFO)
    print(runner.run(main()))
""")


def test_a_sigterm_right_after_the_loop_starts_is_the_commands_to_handle() -> None:
    """Failed before the handlers were installed ahead of the "event loop" line: the
    default action ended the process (-15) when a SIGTERM came between that line and the
    command's own `stop_signal()` (tests/test_drain_serve.py saw it once in a CI run)."""
    done = subprocess.run([sys.executable, "-c", SIGNALLED_AT_ONCE], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "stopped by the command"
    assert "event loop: uvloop.Loop" in done.stderr
