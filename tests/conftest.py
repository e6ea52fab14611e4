"""Fixtures shared by the whole test suite.

Real servers only (see DESIGN.md, "Real components in tests"): the `pebble`
fixture runs Let's Encrypt's Pebble on loopback for one test.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.pebble import PebbleServer, free_port

__all__ = ["free_port"]


@pytest.fixture
def pebble(tmp_path: Path) -> Iterator[PebbleServer]:
    """A fresh Pebble per test; its `http_port` is free for the test to bind.

    Tests needing extra Pebble environment (fault injection, short validity)
    call `PebbleServer.start()` themselves and `stop()` it in a finally block.
    """
    server = PebbleServer.start(tmp_path=tmp_path, http_port=free_port())
    try:
        yield server
    finally:
        server.stop()
