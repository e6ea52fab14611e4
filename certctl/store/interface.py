"""The store interface the reconcilers read and write through.

Objects are plain Kubernetes-shaped dicts (apiVersion, kind, metadata, spec,
status, data), exactly as an API server would return them, so the same
reconciler runs against the Kubernetes API (`store.kube`) and the local
file-backed store (`store.local`). Reconcilers never see how objects are kept.

Semantics every implementation honours, because a real API server does:
- `create` fails with `AlreadyExists` if the name is taken;
- `replace` and `replace_status` fail with `Conflict` when the caller's
  `metadata.resourceVersion` is stale (optimistic concurrency);
- `replace` never changes `status`; `replace_status` changes only `status`;
- `delete` of a missing object is not an error (level-triggered callers may
  repeat it).
"""

from __future__ import annotations

import copy
import datetime
import marshal
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeVar

from certctl.api.resources import ObjectKey

Object = dict[str, Any]
EventType = Literal["Normal", "Warning"]
WatchType = Literal["ADDED", "MODIFIED", "DELETED"]


@dataclass(frozen=True, kw_only=True)
class WatchEvent:
    """One change to one object, as a watch stream (or the local store) reports it;
    for DELETED, `obj` is the last state."""

    type: WatchType
    key: ObjectKey
    obj: Object


class StoreError(Exception):
    """Base class for store failures a reconciler may want to tell apart."""


class AlreadyExists(StoreError):
    pass


class Conflict(StoreError):
    """The object changed since it was read; re-read and try again."""


class NotFound(StoreError):
    pass


class Forbidden(StoreError):
    """The API refused the request to this identity (RBAC): asking again changes nothing."""


class StoreUnavailable(StoreError):
    """The store could not take a write (disk full, read-only state dir...): nothing
    changed, the previous object is intact; retry later. The message says where and why."""


class Store(Protocol):
    def get(self, *, kind: str, namespace: str | None, name: str) -> Object | None:
        """The object, or None if it does not exist."""
        ...

    def list(
        self,
        *,
        kind: str,
        namespace: str | None = None,
        labels: Mapping[str, str] | None = None,
        shared: bool = False,
    ) -> list[Object]:
        """Objects of a kind, in all namespaces when `namespace` is None.

        `shared`: the objects the store holds, not copies, where it holds them, for a
        caller that only reads them and keeps none: a pass over 10,000 Certificates
        then makes no copies (60 MB at once, which the process kept as its size after).
        """
        ...

    def create(self, *, obj: Object) -> Object: ...

    def replace(self, *, obj: Object) -> Object: ...

    def replace_status(self, *, obj: Object) -> Object: ...

    def delete(self, *, kind: str, namespace: str | None, name: str) -> None: ...

    def emit_event(
        self, *, obj: Mapping[str, Any], type: EventType, reason: str, message: str
    ) -> None:
        """Record a Kubernetes-style Event about `obj` (best effort, never raises)."""
        ...


class ForwardingStore:
    """A Store that passes every call to the store it wraps: the base of wrappers that
    change one part (the watch cache its reads, the event recorder its events)."""

    def __init__(self, *, backing: Store) -> None:
        self.backing = backing

    def get(self, *, kind: str, namespace: str | None, name: str) -> Object | None:
        return self.backing.get(kind=kind, namespace=namespace, name=name)

    def list(self, *, kind: str, namespace: str | None = None,
             labels: Mapping[str, str] | None = None, shared: bool = False) -> list[Object]:
        return self.backing.list(kind=kind, namespace=namespace, labels=labels, shared=shared)

    def create(self, *, obj: Object) -> Object:
        return self.backing.create(obj=obj)

    def replace(self, *, obj: Object) -> Object:
        return self.backing.replace(obj=obj)

    def replace_status(self, *, obj: Object) -> Object:
        return self.backing.replace_status(obj=obj)

    def delete(self, *, kind: str, namespace: str | None, name: str) -> None:
        self.backing.delete(kind=kind, namespace=namespace, name=name)

    def emit_event(self, *, obj: Mapping[str, Any], type: EventType, reason: str,
                   message: str) -> None:
        self.backing.emit_event(obj=obj, type=type, reason=reason, message=message)


_T = TypeVar("_T")

# Values YAML and JSON objects hold that nothing can change in place.
_IMMUTABLE = frozenset({str, int, float, bool, type(None), bytes, datetime.date,
                        datetime.datetime})


# marshal's format 2 writes a part referenced twice twice (format 3 added references).
_MARSHAL_VERSION = 2


def copy_object(value: _T) -> _T:
    """A deep copy of a Kubernetes-shaped object, ~25x faster than `copy.deepcopy`.

    The local store returns one from every read (10,000 Secrets per data-plane refresh),
    the watch cache one of each Order and Challenge the controller reads. Plain data (dicts,
    lists, strings, numbers, bytes, sets) goes through marshal, in C; what marshal
    refuses (timestamps YAML parsed, subclasses) is copied as `kept_copy` copies.
    Shared parts come out as separate, equal copies.
    """
    plain: Any = value
    try:
        # Only the bytes made on this line are read back.
        copied: _T = marshal.loads(marshal.dumps(plain, _MARSHAL_VERSION))  # noqa: S302
    except ValueError:
        copied = kept_copy(value)
    return copied


def kept_copy(value: _T) -> _T:
    """A deep copy for a store to keep, dict by dict and list by list, with every mapping
    key interned: the objects a store keeps repeat the same field, label and annotation
    names, and marshal's copies (format 2) gave each object its own strings for them, about
    9 KB of the 30 KB a certificate's objects take in `certctl serve` (B2). Interned keys
    stay shared for as long as an object holding them is kept. Keys only: they are a
    bounded vocabulary, so even where interned strings never die (Python 3.12.0-3.12.4,
    cpython#113993) they cannot pile up as values would (names, uids, times). Strings that
    are values are taken as they are (immutable: shared with `value`); shared parts come
    out as separate, equal copies, and objects that contain themselves (YAML anchors can
    build them) go to `copy.deepcopy`."""
    try:
        copied: _T = _copy_tree(value)
    except RecursionError:
        copied = copy.deepcopy(value)
    return copied


def _copy_tree(value: Any) -> Any:
    kind = type(value)
    if kind is dict:
        return {(sys.intern(key) if type(key) is str else key): _copy_tree(item)
                for key, item in value.items()}
    if kind is list:
        return [_copy_tree(item) for item in value]
    if kind in _IMMUTABLE:
        return value
    return copy.deepcopy(value)
