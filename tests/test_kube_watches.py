"""The data plane's watches (runtime/kube_watches.py) against the tests' API server: every
change after the cache's listing reaches the listener once, also across a dropped
connection and a compacted history (410 Gone: listed again, deletions told)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from certctl.runtime.kube_watches import KubeWatches
from certctl.store.interface import WatchEvent
from certctl.store.kube import KubeStore
from certctl.store.watch_cache import WatchCache
from tests.kube import Cluster
from tests.serving import eventually

pytestmark = pytest.mark.timeout(60)


def _secret(name: str, value: str = "djE=") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": name, "namespace": "default"}, "data": {"v": value}}


class _Seen:
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def __call__(self, event: WatchEvent) -> None:
        with self._lock:
            self.events.append((event.type, event.key.name))

    def names(self, type_: str) -> list[str]:
        with self._lock:
            return [name for t, name in self.events if t == type_]


@contextlib.contextmanager
def _parts() -> Iterator[tuple[Cluster, KubeStore, WatchCache, KubeWatches, _Seen]]:
    """The tests' API server, an admin client, and a Secret cache with its watches (neither
    started)."""
    cluster = Cluster()
    cluster.start()
    admin = KubeStore(configuration=cluster.configuration(), component="certctl-test")
    store = KubeStore(configuration=cluster.configuration(), component="certctl-dataplane")
    cache = WatchCache(backing=store, kinds=("Secret",))
    seen = _Seen()
    watches = KubeWatches(store=store, cache=cache, listener=seen)
    try:
        yield cluster, admin, cache, watches, seen
    finally:
        watches.stop()
        store.close()
        admin.close()
        cluster.stop()


@contextlib.contextmanager
def _watching() -> Iterator[tuple[Cluster, KubeStore, WatchCache, _Seen]]:
    with _parts() as (cluster, admin, cache, watches, seen):
        admin.create(obj=_secret("listed"))
        cache.seed()
        watches.start()
        yield cluster, admin, cache, seen


def test_changes_after_the_listing_reach_the_listener_once_and_in_order() -> None:
    with _watching() as (_, admin, cache, seen):
        admin.create(obj=_secret("a"))
        changed = admin.get(kind="Secret", namespace="default", name="a")
        assert changed is not None
        changed["data"] = {"v": "djI="}
        admin.replace(obj=changed)
        admin.delete(kind="Secret", namespace="default", name="listed")
        eventually(lambda: seen.names("DELETED") == ["listed"], what="the deletion")
        assert seen.events == [("ADDED", "a"), ("MODIFIED", "a"), ("DELETED", "listed")]
        got = cache.get(kind="Secret", namespace="default", name="a")
        assert got is not None and got["data"] == {"v": "djI="}
        assert cache.get(kind="Secret", namespace="default", name="listed") is None


def test_a_dropped_stream_resumes_where_it_was_and_loses_nothing() -> None:
    with _watching() as (cluster, admin, _, seen):
        eventually(lambda: cluster.open_watches() == 1, what="the watch to be open")
        cluster.faults.refuse_watches = True
        assert cluster.drop_watches() == 1
        admin.create(obj=_secret("while-down"))
        eventually(lambda: cluster.faults.injected["WatchRefused"] >= 1,
                   what="the watch to try again and be refused")
        cluster.faults.refuse_watches = False
        eventually(lambda: seen.names("ADDED") == ["while-down"], timeout=10,
                   what="the Secret created while the watch was down")
        assert cluster.faults.injected["Expired"] == 0  # resumed, not listed again
        assert seen.events == [("ADDED", "while-down")]


def test_a_compacted_history_is_listed_again_and_deletions_are_told() -> None:
    with _watching() as (cluster, admin, cache, seen):
        eventually(lambda: cluster.open_watches() == 1, what="the watch to be open")
        cluster.faults.refuse_watches = True
        cluster.drop_watches()
        admin.create(obj=_secret("while-down"))
        admin.delete(kind="Secret", namespace="default", name="listed")
        cluster.compact()
        cluster.faults.refuse_watches = False
        eventually(lambda: sorted(seen.events) == [("ADDED", "while-down"),
                                                   ("DELETED", "listed")],
                   timeout=10, what="what changed while the history was compacted")
        assert cluster.faults.injected["Expired"] >= 1
        assert cache.get(kind="Secret", namespace="default", name="listed") is None
        # Watching again from the new listing: later changes still arrive.
        admin.create(obj=_secret("after"))
        eventually(lambda: "after" in seen.names("ADDED"), what="a change after the listing")


def test_a_kind_not_listable_at_start_is_told_and_watched_once_it_is() -> None:
    with _parts() as (cluster, admin, cache, watches, seen):
        cluster.faults.refuse_watches = True  # lists too: as a kind without its CRD or Role
        cache.seed()
        watches.start()
        assert cache.uncached() == {"Secret"}
        admin.create(obj=_secret("before"))
        cluster.faults.refuse_watches = False

        watches.watch_late_kinds()

        assert seen.events == [("ADDED", "before")]  # what was there when it was listed
        admin.create(obj=_secret("after"))
        eventually(lambda: seen.names("ADDED") == ["before", "after"],
                   what="a change after the listing, by the watch")
        watches.watch_late_kinds()  # nothing late any more: nothing listed or told again
        assert seen.events == [("ADDED", "before"), ("ADDED", "after")]
