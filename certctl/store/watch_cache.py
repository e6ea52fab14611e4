"""A Store whose reads of watched kinds come from memory, kept current by watch events.

The cluster data plane rebuilds its routes and certificates from whole lists of
Ingresses, Services, Secrets... after every burst of changes. Read from the API
server, that is one list per kind plus a GET per served Secret each time: at
1,000 certificates issued at once the data plane made 67 reads per certificate,
and a replica starting against 10,000 Ingresses and Secrets took 206 s to be
ready, most of it in 10,000 single GETs (bench B8). This is client-go's informer
store: the watch events the data plane receives anyway carry the objects, so
reads are answered from them and only writes go to the API.

Consistency, as an informer's: `seed` lists each kind (one request per namespace)
and merges what it lists with what the events already brought, by
resourceVersion (etcd's revision: in practice an integer; an object whose
version does not parse is taken as newer): an object is replaced only by a newer
version of itself, a deletion leaves a tombstone so that a listing taken before
the deletion cannot bring the object back, and an object missing from a listing
is dropped only if its version is older than the listing's (it was deleted before
the listing; one created after it stays). The watches (`runtime.kube_watches`,
the data plane's and the controller's) start from the versions `seed` listed at,
and `seed` a kind again after a 410 Gone, which tells what changed meanwhile,
deletions included.

A kind whose first listing fails (Gateway API CRDs not installed, a Role without
it) is not cached: its reads go to the API as before, which reports why.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

from certctl.api.resources import ObjectKey
from certctl.store.interface import (
    ForwardingStore,
    Object,
    StoreError,
    WatchEvent,
    copy_object,
    kept_copy,
)
from certctl.store.kube import KubeStore, labels_match

logger = logging.getLogger(__name__)

RESEED_SECONDS: Final = 300.0


def _version(obj: Mapping[str, Any]) -> int | None:
    version = str((obj.get("metadata") or {}).get("resourceVersion"))
    return int(version) if version.isdigit() else None


def _newer(candidate: int | None, than: int | None) -> bool:
    """Whether a version `candidate` replaces `than` (unparsable versions always do)."""
    return candidate is None or than is None or candidate > than


_SKELETON_METADATA: Final = ("name", "namespace", "uid", "resourceVersion", "ownerReferences")


def _skeleton(obj: Object) -> Object:
    """What a kind watched but not read from memory keeps of an object: enough to follow
    its versions, and to tell its deletion (by its owners) when a listing finds it gone."""
    metadata = obj.get("metadata") or {}
    return {"kind": obj.get("kind"), "apiVersion": obj.get("apiVersion"),
            "metadata": {field: metadata[field] for field in _SKELETON_METADATA
                         if field in metadata}}


class WatchCache(ForwardingStore):
    """Reads of `kinds` from memory once seeded; everything else through `backing`.

    `serves` (default: every one of `kinds`) are the kinds whose reads come from memory;
    the others are watched only (the controller's: its watches start from this cache's
    listings, its reconcilers read those kinds from the API), and of their objects only
    a skeleton is kept (`_skeleton`): 10,000 Secrets' data need not sit in the controller.

    `own` are kinds whose objects this process writes as it goes (the controller's Orders
    and Challenges, and its Certificates' statuses, while it leads; what others write
    comes as events, newer versions replacing older). An object of theirs is read from
    memory once this process has read
    it from the API or written it, not before (`_known`): its own writes go into memory
    as the API answers them, so a read after a write never finds the object from before
    it, as an event not arrived yet would (a stale Order without its ACME URL would place
    a second order). A write that fails, or whose answer is lost, makes the next read
    go to the API again; so does every object once this process becomes the leader
    (`forget_known`): another replica wrote them last.
    """

    def __init__(self, *, backing: KubeStore, kinds: Iterable[str],
                 serves: Iterable[str] | None = None, own: Iterable[str] = ()) -> None:
        super().__init__(backing=backing)
        self._kube = backing
        self._kinds = frozenset(kinds)
        self._own = self._kinds & frozenset(own)
        self._serves = (self._kinds if serves is None else self._kinds & frozenset(serves)
                        ) | self._own
        self._known: set[ObjectKey] = set()  # objects of `own` kinds memory has right
        self._by_label: dict[tuple[str, str, str], set[ObjectKey]] = {}
        # Own objects memory took from this process's writes, at the version whose watch
        # event (or a listing showing it, after a 410 Gone) is still to be told.
        self._untold: dict[ObjectKey, int | None] = {}
        self._cached: set[str] = set()  # kinds seeded: reads come from memory
        self._objects: dict[str, dict[ObjectKey, Object]] = {kind: {} for kind in self._kinds}
        self._tombstones: dict[ObjectKey, int | None] = {}
        # Per kind cached, the namespaces its last listing covered (None: all) and the
        # version it was taken at (None if the server's is no integer).
        self._listed_at: dict[str, list[tuple[str | None, int | None]]] = {}
        self._lock = threading.Lock()

    # --- fed by the watches ---------------------------------------------------------

    def apply(self, event: WatchEvent) -> bool:
        """One watch event: before the listener that reads this store sees it. False when
        it tells nothing new: a version this store has, or an older one (a listing
        after a restart of its watches replays what `seed` read). The event of an `own`
        kind's write is told although memory has its version from the write's answer
        (`_untold`): reconcilers go on from their own writes' events."""
        objects = self._objects.get(event.key.kind)
        if objects is None:
            return True
        version = _version(event.obj)
        with self._lock:
            current = objects.get(event.key)
            if current is not None and not _newer(version, _version(current)):
                return self._came(event.key, version)
            self._untold.pop(event.key, None)
            if event.type == "DELETED":
                if current is None and event.key in self._tombstones:
                    return False
                self._drop(event.key)
                self._tombstones[event.key] = version
                if event.key.kind in self._own:
                    # Gone is what memory has right: the reconcilers this event wakes read
                    # it from memory, not as a 404 from the API (2.6 a certificate in B8).
                    self._known.add(event.key)
                return True
            if event.key in self._tombstones:
                deleted_at = self._tombstones[event.key]
                if deleted_at is not None and version is not None and version <= deleted_at:
                    return False
                del self._tombstones[event.key]  # created again
            self._put(event.key, self._kept(event.key.kind, event.obj, alone=True))
        return True

    def _kept(self, kind: str, obj: Object, *, alone: bool = False) -> Object:
        """What memory keeps of `obj`: all of it for the kinds it serves, else a skeleton.
        `alone`: decoded on its own (a watch event, a write's answer), so with key strings
        of its own, which every renewal's event would add to a long-running process; kept
        with interned ones (`kept_copy`). A listing's objects share theirs already (the
        JSON decoder makes one string of each key of a response)."""
        if kind not in self._serves:
            return _skeleton(obj)
        return kept_copy(obj) if alone else obj

    def seed(self, kinds: Iterable[str] | None = None) -> list[WatchEvent]:
        """List every kind (or `kinds`) and merge (see the module docstring); a kind whose
        listing fails stays uncached (its first time) or keeps what it has (later).
        Returns what changed for kinds already cached, as the events the watches did not
        bring."""
        changes: list[WatchEvent] = []
        for kind in sorted(self._kinds if kinds is None else set(kinds) & self._kinds):
            try:
                listings = self._kube.list_with_versions(kind=kind)
            except StoreError as err:
                if kind in self._cached:
                    logger.warning("listing %s again failed, its cache stays as it is: %s",
                                   kind, err)
                else:  # its reads go to the API, which reports why where they are made
                    logger.debug("%s not cached: %s", kind, err)
                continue
            with self._lock:
                merged = self._merge(kind, listings)
                if kind in self._cached:
                    changes += merged
                self._cached.add(kind)
                self._listed_at[kind] = [(namespace, version)
                                         for namespace, version, _ in listings]
        with self._lock:
            self._tombstones.clear()  # every listing taken now is newer than they are
            # Absent objects known from their deletions go too: one key per Order and
            # Challenge ever deleted would otherwise pile up over renewals.
            self._known = {key for key in self._known if key in self._objects[key.kind]}
        return changes

    def _merge(self, kind: str, listings: list[tuple[str | None, int | None, list[Object]]]
               ) -> list[WatchEvent]:
        objects = self._objects[kind]
        changes: list[WatchEvent] = []
        for namespace, listed_at, items in listings:
            listed: set[ObjectKey] = set()
            for item in items:
                meta = item["metadata"]
                key = ObjectKey(kind=kind, namespace=meta.get("namespace"), name=meta["name"])
                listed.add(key)
                version = _version(item)
                current = objects.get(key)
                if current is not None and not _newer(version, _version(current)):
                    if self._came(key, version):  # a listing after a 410 Gone shows it
                        changes.append(WatchEvent(type="MODIFIED", key=key, obj=item))
                    continue
                if key in self._tombstones:
                    deleted_at = self._tombstones[key]
                    if deleted_at is None or version is None or version <= deleted_at:
                        continue  # the listing was taken before the deletion
                changes.append(WatchEvent(type="MODIFIED" if current else "ADDED", key=key,
                                          obj=item))
                self._put(key, self._kept(kind, item))
            for key in [k for k in objects if k not in listed
                        and (namespace is None or k.namespace == namespace)]:
                if listed_at is not None and not _newer(_version(objects[key]), listed_at):
                    # Deleted before the listing, and its event never came.
                    changes.append(WatchEvent(type="DELETED", key=key, obj=objects[key]))
                    self._drop(key)
        return changes

    def _came(self, key: ObjectKey, version: int | None) -> bool:
        """Whether `version` is that of this process's own write whose event was untold."""
        if key in self._untold and self._untold[key] == version:
            del self._untold[key]
            return True
        return False

    # Own kinds' objects are also indexed by label (`_by_label`): a reconciler lists the
    # Orders of its Certificate by label for each certificate, and scanning every Order for
    # each grows with the square of their number. Called with the lock held.

    def _put(self, key: ObjectKey, obj: Object) -> None:
        objects = self._objects[key.kind]
        if key.kind in self._own:
            self._unindex(key, objects.get(key))
            for label in ((obj.get("metadata") or {}).get("labels") or {}).items():
                self._by_label.setdefault((key.kind, *label), set()).add(key)
        objects[key] = obj

    def _drop(self, key: ObjectKey) -> None:
        self._unindex(key, self._objects[key.kind].pop(key, None))

    def _unindex(self, key: ObjectKey, obj: Object | None) -> None:
        if obj is None or key.kind not in self._own:
            return
        for label in ((obj.get("metadata") or {}).get("labels") or {}).items():
            holders = self._by_label.get((key.kind, *label))
            if holders is not None:
                holders.discard(key)
                if not holders:
                    del self._by_label[(key.kind, *label)]

    def _labelled(self, kind: str, labels: Mapping[str, str]) -> set[ObjectKey]:
        found = [self._by_label.get((kind, name, value), set())
                 for name, value in labels.items()]
        return set.intersection(*found)

    def uncached(self) -> frozenset[str]:
        """The kinds whose listing has failed every time so far."""
        with self._lock:
            return self._kinds - self._cached

    def listed_at(self) -> dict[str, list[tuple[str | None, int | None]]]:
        """For each kind cached: where its last listing looked and at which version."""
        with self._lock:
            return {kind: list(found) for kind, found in self._listed_at.items()}

    # --- the Store protocol --------------------------------------------------------

    def get(self, *, kind: str, namespace: str | None, name: str) -> Object | None:
        if kind not in self._cached or kind not in self._serves:
            return self.backing.get(kind=kind, namespace=namespace, name=name)
        key = ObjectKey(kind=kind, namespace=namespace, name=name)
        if kind in self._own:
            return self._get_own(key)
        with self._lock:
            found = self._objects[kind].get(key)
        # A shallow copy, with its own metadata: a caller may set a field (its status)
        # before writing it back, and `reconciling.write_status` then sets the version the
        # write returned, which in the cached object would make the watch event of that
        # very write look old (and dropped). What is below is shared, as `list` shares it.
        if found is None:
            return None
        return dict(found, metadata=dict(found["metadata"]))

    def _get_own(self, key: ObjectKey) -> Object | None:
        """A copy, whole: reconcilers change their own objects' statuses in place."""
        with self._lock:
            if key in self._known:
                found = self._objects[key.kind].get(key)
                return None if found is None else copy_object(found)
        read = self.backing.get(kind=key.kind, namespace=key.namespace, name=key.name)
        with self._lock:
            current = self._objects[key.kind].get(key)
            if read is None:
                if current is None:  # else its deletion's event is still to come
                    self._known.add(key)
                return None
            self._remember(key, read)
        return read

    def forget_known(self) -> None:
        """Read every object of the `own` kinds from the API again before memory."""
        with self._lock:
            self._known.clear()

    def create(self, *, obj: Object) -> Object:
        return self._writing(obj, lambda: self.backing.create(obj=obj))

    def replace(self, *, obj: Object) -> Object:
        return self._writing(obj, lambda: self.backing.replace(obj=obj))

    def replace_status(self, *, obj: Object) -> Object:
        return self._writing(obj, lambda: self.backing.replace_status(obj=obj))

    def delete(self, *, kind: str, namespace: str | None, name: str) -> None:
        try:
            self.backing.delete(kind=kind, namespace=namespace, name=name)
        finally:  # gone once its event comes; until then, asked of the API
            with self._lock:
                self._known.discard(ObjectKey(kind=kind, namespace=namespace, name=name))

    def _writing(self, obj: Object, write: Callable[[], Object]) -> Object:
        """An own kind's write goes into memory as the API answered it; a write that
        failed leaves the object to be read from the API."""
        kind = obj.get("kind")
        if kind not in self._own or kind not in self._cached:
            return write()
        key = ObjectKey(kind=kind, namespace=obj["metadata"].get("namespace"),
                        name=obj["metadata"]["name"])
        try:
            stored = write()
        except BaseException:
            with self._lock:
                self._known.discard(key)
            raise
        with self._lock:
            if self._remember(key, stored):
                self._untold[key] = _version(stored)
        return stored

    def _remember(self, key: ObjectKey, obj: Object) -> bool:
        """An own object as the API gave it (read or written): known from now on, and kept
        if newer than memory's. Called with the lock held."""
        self._known.add(key)
        current = self._objects[key.kind].get(key)
        if current is not None and not _newer(_version(obj), _version(current)):
            return False
        self._put(key, kept_copy(obj))  # decoded on its own: see `_kept`
        self._tombstones.pop(key, None)
        return True

    def list(self, *, kind: str, namespace: str | None = None,
             labels: Mapping[str, str] | None = None, shared: bool = False) -> list[Object]:
        """The objects themselves, not copies (a list of 10,000 Secrets is read after every
        burst of changes): read them, do not change them. Copies of `own` kinds' objects,
        unless `shared`."""
        if kind not in self._cached or kind not in self._serves:
            return self.backing.list(kind=kind, namespace=namespace, labels=labels,
                                     shared=shared)
        with self._lock:
            if labels and kind in self._own:
                found = [self._objects[kind][key] for key in self._labelled(kind, labels)]
            else:
                found = list(self._objects[kind].values())
        listed = [obj for obj in found
                  if (namespace is None or obj["metadata"].get("namespace") == namespace)
                  and labels_match(obj, labels)]
        if kind in self._own and not shared:
            return [copy_object(obj) for obj in listed]
        return listed
