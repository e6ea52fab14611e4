"""What every reconciler shares: its result type, the clock, and object helpers.

A reconciler is a function `reconcile(*, store, key, ...) -> Result` that
reads the world through the store, moves it one step towards the desired
state and says when to look again. It is level-triggered: running it twice
in a row does no harm, so drivers (the cluster's watches, the standalone loop)
may call it as often as they like. It raises on unexpected failures and the
driver retries with backoff.
"""

from __future__ import annotations

import collections
import datetime
import threading
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from certctl.api import annotations as annotation_keys
from certctl.api.resources import ObjectKey
from certctl.api.status import Status
from certctl.store.interface import NotFound, Object, Store

Clock = Callable[[], datetime.datetime]


def system_clock() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


@dataclass(frozen=True, kw_only=True)
class Result:
    """When to reconcile again; None means only when something changes."""

    requeue_after: float | None = None

    @staticmethod
    def done() -> Result:
        return Result()

    @staticmethod
    def after(seconds: float) -> Result:
        return Result(requeue_after=max(0.0, seconds))


def key_of(obj: Mapping[str, Any]) -> ObjectKey:
    metadata = obj["metadata"]
    return ObjectKey(kind=obj["kind"], namespace=metadata.get("namespace"), name=metadata["name"])


def owner_reference(owner: Mapping[str, Any]) -> dict[str, Any]:
    """An ownerReference making `owner` the controller of the dependent object."""
    return {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def is_owned_by(obj: Mapping[str, Any], owner: Mapping[str, Any]) -> bool:
    uid = owner["metadata"].get("uid")
    return any(
        ref.get("uid") == uid for ref in obj.get("metadata", {}).get("ownerReferences") or []
    )


def controller_of(obj: Mapping[str, Any]) -> ObjectKey | None:
    """The owner marked `controller: true`, in the object's namespace."""
    for ref in obj.get("metadata", {}).get("ownerReferences") or []:
        if ref.get("controller"):
            return ObjectKey(
                kind=ref["kind"], namespace=obj["metadata"].get("namespace"), name=ref["name"]
            )
    return None


def manifest_source(obj: Mapping[str, Any]) -> str | None:
    """The file an object came from in standalone mode, for error messages."""
    annotations = obj.get("metadata", {}).get("annotations") or {}
    source = annotations.get(annotation_keys.MANIFEST_SOURCE)
    return str(source) if source else None


class TransientError(Exception):
    """A failure the driver retries with backoff; expected, so logged without a traceback."""


class _StatusesWritten:
    """The statuses this process last wrote, by object, with the resourceVersion each
    write made: an object read at that version holds exactly that status, so writing
    its next one needs no read to tell a change from a no-op. The most recent
    `MOST` objects are kept."""

    MOST = 65_536

    def __init__(self) -> None:
        self._written: collections.OrderedDict[ObjectKey, tuple[str, Any]] = \
            collections.OrderedDict()
        self._lock = threading.Lock()

    def at(self, key: ObjectKey, *, version: str | None) -> tuple[bool, Any]:
        """(True, the status) when this process's last write of `key` made `version`."""
        with self._lock:
            written = self._written.get(key)
        if version is None or written is None or written[0] != version:
            return False, None
        return True, written[1]

    def wrote(self, key: ObjectKey, *, version: str | None, status: Any) -> None:
        with self._lock:
            if version is None:
                self._written.pop(key, None)
                return
            self._written[key] = (version, status)
            self._written.move_to_end(key)
            if len(self._written) > self.MOST:
                self._written.popitem(last=False)


_statuses_written: weakref.WeakKeyDictionary[Store, _StatusesWritten] = \
    weakref.WeakKeyDictionary()
_statuses_lock = threading.Lock()


def _written_to(store: Store) -> _StatusesWritten:
    with _statuses_lock:
        written = _statuses_written.get(store)
        if written is None:
            written = _statuses_written[store] = _StatusesWritten()
        return written


def write_status(store: Store, *, obj: Object, status: Status) -> bool:
    """Write `status` (a model of `certctl.api.status`) as `obj`'s status if it differs
    from the stored one; True if written. `obj` carries it afterwards.

    Skipping no-op writes keeps level-triggered reconcilers from waking
    themselves up forever through their own watch events. After a write
    `obj` carries the new resourceVersion, so the caller can write it again
    in the same pass without a conflict with itself. The stored status is the
    one this process wrote when `obj` was read at the version that write made
    (the usual case: a pass woken by its own previous write); else it is read.
    """
    new = obj["status"] = status.to_dict()
    key = key_of(obj)
    written = _written_to(store)
    known, stored_status = written.at(key, version=obj["metadata"].get("resourceVersion"))
    if not known:
        current = store.get(kind=key.kind, namespace=key.namespace, name=key.name)
        if current is None:
            return False
        stored_status = current.get("status")
    if stored_status == new:
        return False
    try:
        stored = store.replace_status(obj=obj)
    except NotFound:
        return False  # deleted since it was read: nothing left to say it of
    version = stored["metadata"].get("resourceVersion")
    obj["metadata"]["resourceVersion"] = version
    written.wrote(key, version=version, status=stored.get("status"))
    return True
