"""The watch cache against the real API server: reads answered from the watches'
objects, listings that catch what the watches did not report, and kinds only watched."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from functools import partial
from typing import TYPE_CHECKING, Any

import pytest

from certctl.api.resources import ObjectKey
from certctl.runtime.kube_watches import KubeWatches
from certctl.store.interface import Conflict, WatchEvent
from certctl.store.kube import KubeStore
from certctl.store.watch_cache import WatchCache
from tests.clusterops import namespace
from tests.serving import eventually

if TYPE_CHECKING:
    from tests.controlplane import ControlPlane

pytest_plugins = ["tests.controlplane"]
pytestmark = pytest.mark.timeout(120)

AGENT = "certctl-watch-cache-test"


def _secret(name: str, ns: str, value: str = "djE=") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": name, "namespace": ns}, "data": {"v": value}}


def _state(objects: list[dict[str, Any]]) -> dict[str, str]:
    return {o["metadata"]["name"]: o["metadata"]["resourceVersion"] for o in objects}


@contextlib.contextmanager
def _stores(plane: ControlPlane, ns: str) -> Iterator[tuple[KubeStore, KubeStore, WatchCache]]:
    admin = KubeStore(configuration=plane.configuration(), component="certctl-test")
    backing = KubeStore(configuration=plane.configuration(), component=AGENT, namespaces=(ns,))
    try:
        yield admin, backing, WatchCache(backing=backing, kinds=("Secret", "Ingress"))
    finally:
        admin.close()
        backing.close()


def test_reads_come_from_the_watches_and_follow_every_change(control_plane: ControlPlane) -> None:
    with contextlib.ExitStack() as cleanup:
        ns = cleanup.enter_context(namespace(control_plane, "watch-cache-live"))
        admin, backing, cache = cleanup.enter_context(_stores(control_plane, ns))
        admin.create(obj=_secret("before", ns))
        seen: list[WatchEvent] = []
        assert cache.seed() == []  # nothing was cached before: no changes to report
        watches = KubeWatches(store=backing, cache=cache, listener=seen.append)
        watches.start()
        cleanup.callback(watches.stop)
        for name in ("a", "b", "c"):
            admin.create(obj=_secret(name, ns))
        changed = admin.get(kind="Secret", namespace=ns, name="b")
        assert changed is not None
        changed["data"] = {"v": "djI="}
        admin.replace(obj=changed)
        admin.delete(kind="Secret", namespace=ns, name="c")
        admin.delete(kind="Secret", namespace=ns, name="before")

        mark = control_plane.audit.mark()
        expected = _state(admin.list(kind="Secret", namespace=ns))
        assert set(expected) == {"a", "b"}
        eventually(lambda: _state(cache.list(kind="Secret", namespace=ns)) == expected,
                   what="the cache to follow the watch events")
        got = cache.get(kind="Secret", namespace=ns, name="b")
        assert got is not None and got["data"] == {"v": "djI="}
        assert cache.get(kind="Secret", namespace=ns, name="c") is None
        # A caller setting a field of what it got, or its version (as write_status does
        # after a write), does not change the cache.
        got["data"] = {"v": "changed locally"}
        got["metadata"]["resourceVersion"] = "1"
        again = cache.get(kind="Secret", namespace=ns, name="b")
        assert again is not None and again["data"] == {"v": "djI="}
        assert again["metadata"]["resourceVersion"] == expected["b"]
        # ... and none of these reads went to the API server.
        assert [str(e) for e in control_plane.audit.events(since=mark)
                if e.user_agent.split("/")[0] == AGENT] == []
        assert {e.key.name for e in seen if e.type == "DELETED"} == {"c", "before"}


def test_a_listing_drops_what_was_deleted_unseen_and_adds_what_is_new(
    control_plane: ControlPlane,
) -> None:
    """No watches at all: what a listing finds, as after a 410 Gone, deletions included."""
    with contextlib.ExitStack() as cleanup:
        ns = cleanup.enter_context(namespace(control_plane, "watch-cache-seed"))
        admin, _, cache = cleanup.enter_context(_stores(control_plane, ns))
        for name in ("kept", "gone"):
            admin.create(obj=_secret(name, ns))
        cache.seed()
        assert set(_state(cache.list(kind="Secret", namespace=ns))) == {"kept", "gone"}
        admin.delete(kind="Secret", namespace=ns, name="gone")
        admin.create(obj=_secret("new", ns))

        changes = cache.seed()

        assert sorted((e.type, e.key.name) for e in changes if e.key.kind == "Secret") == [
            ("ADDED", "new"), ("DELETED", "gone")]
        assert _state(cache.list(kind="Secret", namespace=ns)) == _state(
            admin.list(kind="Secret", namespace=ns))


def test_objects_from_watch_events_share_their_keys_in_memory(
    control_plane: ControlPlane,
) -> None:
    """Each watch event is decoded on its own, with key strings of its own: kept as they
    came, every renewed Secret would add its own copies of every field and managedFields
    name to a long-running process. In memory they are one string each."""
    with contextlib.ExitStack() as cleanup:
        ns = cleanup.enter_context(namespace(control_plane, "watch-cache-keys"))
        admin, backing, cache = cleanup.enter_context(_stores(control_plane, ns))
        cache.seed()
        watches = KubeWatches(store=backing, cache=cache, listener=lambda event: None)
        watches.start()
        cleanup.callback(watches.stop)
        for name in ("one", "two"):
            secret = _secret(name, ns)
            secret["metadata"]["annotations"] = {"example.com/owner-team": "web"}
            admin.create(obj=secret)
        eventually(lambda: set(_state(cache.list(kind="Secret", namespace=ns)))
                   >= {"one", "two"}, what="both Secrets in the cache")

        one, two = sorted((obj for obj in cache.list(kind="Secret", namespace=ns, shared=True)
                           if obj["metadata"]["name"] in ("one", "two")),
                          key=lambda obj: obj["metadata"]["name"])
        [key_one], [key_two] = one["metadata"]["annotations"], two["metadata"]["annotations"]
        assert key_one == key_two == "example.com/owner-team" and key_one is key_two
        fields_one = next(iter(one["metadata"]["managedFields"]))
        fields_two = next(iter(two["metadata"]["managedFields"]))
        assert all(a is b for a, b in zip(fields_one, fields_two, strict=True))


def test_an_older_event_or_listing_does_not_undo_a_newer_one(control_plane: ControlPlane) -> None:
    with contextlib.ExitStack() as cleanup:
        ns = cleanup.enter_context(namespace(control_plane, "watch-cache-order"))
        admin, _, cache = cleanup.enter_context(_stores(control_plane, ns))
        first = admin.create(obj=_secret("s", ns))
        cache.seed()
        first["data"] = {"v": "djI="}
        second = admin.replace(obj=first)
        assert cache.apply(WatchEvent(type="MODIFIED", key=_key(second), obj=second))
        # The same version again (a replayed event) is nothing new.
        assert not cache.apply(WatchEvent(type="ADDED", key=_key(second), obj=second))
        # The first version replayed changes nothing.
        original = admin.list(kind="Secret", namespace=ns)  # now: the second version
        assert not cache.apply(WatchEvent(type="ADDED", key=_key(first), obj={
            **first, "metadata": {**first["metadata"],
                                  "resourceVersion": str(int(_rv(second)) - 1)}}))
        assert _state(cache.list(kind="Secret", namespace=ns)) == _state(original)
        # Deleted: its tombstone keeps a replay of the older version out.
        admin.delete(kind="Secret", namespace=ns, name="s")
        deleted_at = str(int(_rv(second)) + 1)
        deletion = WatchEvent(type="DELETED", key=_key(second), obj={
            **second, "metadata": {**second["metadata"], "resourceVersion": deleted_at}})
        assert cache.apply(deletion)
        assert not cache.apply(deletion)  # told twice (a watch restarted across it)
        assert not cache.apply(WatchEvent(type="ADDED", key=_key(second), obj=second))
        assert cache.get(kind="Secret", namespace=ns, name="s") is None


def _rv(obj: dict[str, Any]) -> str:
    return str(obj["metadata"]["resourceVersion"])


def _key(obj: dict[str, Any]) -> ObjectKey:
    return ObjectKey(kind="Secret", namespace=obj["metadata"]["namespace"],
                     name=obj["metadata"]["name"])


def test_a_kind_only_watched_is_read_from_the_api_and_kept_as_a_skeleton(
    control_plane: ControlPlane,
) -> None:
    """The controller's cache: every kind it watches is listed and followed (its watches
    start there), issuers alone are read from memory; of the rest it keeps no data."""
    with contextlib.ExitStack() as cleanup:
        ns = cleanup.enter_context(namespace(control_plane, "watch-cache-skeleton"))
        admin, backing, _ = cleanup.enter_context(_stores(control_plane, ns))
        cache = WatchCache(backing=backing, kinds=("Secret", "Ingress"), serves=("Ingress",))
        # An owner that exists (the cluster's garbage collector deletes what names one
        # that does not).
        holder = admin.create(obj=_secret("holder", ns))
        owner = {"apiVersion": "v1", "kind": "Secret", "name": "holder",
                 "uid": holder["metadata"]["uid"]}
        admin.create(obj={**_secret("owned", ns), "metadata": {
            "name": "owned", "namespace": ns, "ownerReferences": [owner]}})
        cache.seed()
        assert cache.uncached() == frozenset()

        mark = control_plane.audit.mark()
        got = cache.get(kind="Secret", namespace=ns, name="owned")
        assert got is not None and got["data"] == {"v": "djE="}  # from the API, whole
        assert [e.resource for e in control_plane.audit.events(since=mark)
                if e.user_agent.split("/")[0] == AGENT] == ["secrets"]
        # Its watch starts from the listing: a change after it is told, in full.
        seen: list[WatchEvent] = []
        watches = KubeWatches(store=backing, cache=cache, listener=seen.append)
        watches.start()
        cleanup.callback(watches.stop)
        admin.create(obj=_secret("later", ns, value="djI="))
        eventually(lambda: any(e.key.name == "later" for e in seen), what="the event")
        assert next(e for e in seen if e.key.name == "later").obj["data"] == {"v": "djI="}
        # Deleted unseen (no watch told it): a listing tells the deletion, with the owner
        # the skeleton kept, and without any of the data it did not keep.
        watches.stop()
        backing.close()
        admin.delete(kind="Secret", namespace=ns, name="owned")
        deleted = [e for e in cache.seed(kinds=("Secret",)) if e.type == "DELETED"]
        assert [e.key.name for e in deleted] == ["owned"]
        assert deleted[0].obj["metadata"]["ownerReferences"] == [owner]
        assert "data" not in deleted[0].obj


def test_an_own_kind_is_read_from_the_api_once_then_from_memory_and_its_writes(
    control_plane: ControlPlane,
) -> None:
    """The controller's Orders and Challenges (`own`): memory answers once this process
    read or wrote an object; a failed write, or becoming the leader, sends the next read
    to the API again. No watches here: every change memory has came from this process."""
    with contextlib.ExitStack() as cleanup:
        ns = cleanup.enter_context(namespace(control_plane, "watch-cache-own"))
        admin, backing, _ = cleanup.enter_context(_stores(control_plane, ns))
        cache = WatchCache(backing=backing, kinds=("Secret",), own=("Secret",))
        admin.create(obj=_secret("a", ns))
        cache.seed()

        def reads(action: Any) -> tuple[Any, list[str]]:
            mark = control_plane.audit.mark()
            result = action()  # the audit log has a request before its answer is sent
            return result, [e.verb for e in control_plane.audit.events(since=mark)
                            if e.user_agent.split("/")[0] == AGENT]

        get_a = partial(cache.get, kind="Secret", namespace=ns, name="a")
        first, verbs = reads(get_a)
        assert first is not None and verbs == ["get"]  # listed, but not yet read
        _, verbs = reads(get_a)
        assert verbs == []
        # Its own write is what memory answers next, at once.
        first["data"] = {"v": "djI="}
        written, verbs = reads(lambda: cache.replace(obj=first))
        assert verbs == ["update"]
        got, verbs = reads(get_a)
        assert verbs == [] and got is not None and got["data"] == {"v": "djI="}
        assert got["metadata"]["resourceVersion"] == written["metadata"]["resourceVersion"]
        # The write's own event is still told (reconcilers go on from it); the version
        # before it is not.
        assert cache.apply(WatchEvent(type="MODIFIED", key=_key(written), obj=written))
        assert not cache.apply(WatchEvent(type="MODIFIED", key=_key(written), obj={
            **written, "metadata": {**written["metadata"],
                                    "resourceVersion": str(int(_rv(written)) - 1)}}))
        # A copy: changing what was read changes nothing in memory.
        got["data"]["v"] = "changed"
        listed = cache.list(kind="Secret", namespace=ns)
        listed[0]["data"]["v"] = "changed too"
        again = get_a()
        assert again is not None and again["data"] == {"v": "djI="}
        # Written meanwhile by someone else: this process's write fails (Conflict), and its
        # next read asks the API.
        other = admin.get(kind="Secret", namespace=ns, name="a")
        assert other is not None
        other["data"] = {"v": "b3RoZXI="}
        admin.replace(obj=other)
        with pytest.raises(Conflict):
            cache.replace(obj=again)
        fresh, verbs = reads(get_a)
        assert verbs == ["get"] and fresh is not None and fresh["data"] == {"v": "b3RoZXI="}
        # Leading anew: every object is asked of the API once more.
        cache.forget_known()
        _, verbs = reads(get_a)
        assert verbs == ["get"]
        # Absent: asked once; then created by this process, known at once.
        get_b = partial(cache.get, kind="Secret", namespace=ns, name="b")
        missing, verbs = reads(get_b)
        assert missing is None and verbs == ["get"]
        _, verbs = reads(get_b)
        assert verbs == []
        cache.create(obj=_secret("b", ns))
        created, verbs = reads(get_b)
        assert created is not None and verbs == []
        # Deleted by this process: asked of the API until its event comes, then gone from
        # memory without asking; a new listing forgets such deletions.
        cache.delete(kind="Secret", namespace=ns, name="b")
        gone, verbs = reads(get_b)
        assert gone is None and verbs == ["get"]
        assert created is not None
        assert cache.apply(WatchEvent(type="DELETED", key=_key(created), obj={
            **created, "metadata": {**created["metadata"],
                                    "resourceVersion": str(int(_rv(created)) + 1)}}))
        gone, verbs = reads(get_b)
        assert gone is None and verbs == []
        cache.seed(kinds=("Secret",))
        gone, verbs = reads(get_b)
        assert gone is None and verbs == ["get"]
        # Listed by label from memory, as labels are now (its index follows each change).
        labelled = {**_secret("c", ns), "metadata": {"name": "c", "namespace": ns,
                                                      "labels": {"for": "web", "n": "1"}}}
        created = cache.create(obj=labelled)

        def names(**labels: str) -> list[str]:
            return sorted(o["metadata"]["name"] for o in cache.list(
                kind="Secret", namespace=ns, labels=labels))

        assert names(**{"for": "web"}) == ["c"]
        assert names(**{"for": "web", "n": "1"}) == ["c"]
        assert names(**{"for": "web", "n": "2"}) == []
        created["metadata"]["labels"] = {"for": "shop"}
        cache.replace(obj=created)
        assert names(**{"for": "web"}) == [] and names(**{"for": "shop"}) == ["c"]
        moved = cache.get(kind="Secret", namespace=ns, name="c")
        assert moved is not None
        assert cache.apply(WatchEvent(type="DELETED", key=_key(moved), obj={
            **moved, "metadata": {**moved["metadata"],
                                  "resourceVersion": str(int(_rv(moved)) + 1)}}))
        assert names(**{"for": "shop"}) == []
        # An own write whose event never came (its watch expired: 410 Gone) is told by the
        # listing that replaces the watch, once.
        cache.create(obj=_secret("d", ns))
        assert [(e.type, e.key.name) for e in cache.seed(kinds=("Secret",))
                if e.key.name == "d"] == [("MODIFIED", "d")]
        assert [e for e in cache.seed(kinds=("Secret",)) if e.key.name == "d"] == []
