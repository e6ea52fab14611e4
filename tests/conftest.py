"""Fixtures shared by the whole test suite.

Real servers only (see DESIGN.md, "Real components in tests"): the `pebble`
fixture runs Let's Encrypt's Pebble on loopback for one test; `any_pebble` runs
each test that takes it twice, once against Debian's Pebble 2.4 and once against
the current release (tests/pebble.py), as does `pebble_build` for tests that
start their own.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.pebble import PEBBLE_BUILDS, PebbleBuild, PebbleServer, free_port

if TYPE_CHECKING:
    from certctl.store.kube import KubeStore
    from tests.kube import Cluster, Deployment

__all__ = ["free_port"]


@pytest.fixture
def pebble(tmp_path: Path) -> Iterator[PebbleServer]:
    """A fresh Pebble per test (Debian's); its `http_port` is free for the test to bind.

    Tests needing extra Pebble environment (fault injection, short validity)
    call `PebbleServer.start()` themselves and `stop()` it in a finally block.
    A test module whose every test should meet both Pebbles overrides this
    fixture with one returning `any_pebble`.
    """
    server = PebbleServer.start(tmp_path=tmp_path, http_port=free_port())
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=PEBBLE_BUILDS)
def pebble_build(request: pytest.FixtureRequest) -> PebbleBuild:
    """Each Pebble in turn: the test runs once per build (ids `debian`, `current`).

    For tests that start their own Pebble: `PebbleServer.start(..., build=pebble_build)`.
    """
    build: PebbleBuild = request.param
    return build


@pytest.fixture
def any_pebble(tmp_path: Path, pebble_build: PebbleBuild) -> Iterator[PebbleServer]:
    """As `pebble`, once with each Pebble: the ACME suites run against both."""
    server = PebbleServer.start(tmp_path=tmp_path, http_port=free_port(), build=pebble_build)
    try:
        yield server
    finally:
        server.stop()


# The operator suites' fixtures: an emulated API server, a client of it, and
# certctl's controller and data plane running against it (tests/kube.py).
# Imported when used, so suites without a cluster do not load kmock.


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    from tests.kube import Cluster

    running = Cluster()
    running.start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def api(cluster: Cluster) -> Iterator[KubeStore]:
    store = cluster.store()
    try:
        yield store
    finally:
        store.close()


@pytest.fixture
def deployment(cluster: Cluster, pebble: PebbleServer) -> Iterator[Deployment]:
    from tests.kube import Deployment

    running = Deployment(cluster=cluster, pebble=pebble).start()
    try:
        yield running
    finally:
        running.stop()
