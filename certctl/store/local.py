"""The standalone store: user manifests in, controller state under a state dir.

Two layers make up the objects a reconciler sees:

- *manifests*: the YAML/JSON files under `--manifests`, re-read on change.
  They are the user's; certctl never writes them.
- *state*: every object certctl created or changed (derived Certificates,
  Orders, Challenges, Secrets, and the status of manifest objects), one file
  per object under `<state-dir>/objects/<kind>/<namespace>/<name>.yaml`.
  A state object shadows a manifest object with the same key, so writing a
  Secret the user also declared (a pre-seeded tls Secret) works as in a cluster.

Every write is atomic (temporary file, fsync, rename) and every state file is
mode 0600 because Secrets hold private keys. Like an API server the store
keeps a resourceVersion per object, refuses stale writes with `Conflict`, and
garbage-collects dependents through `ownerReferences` when an owner goes.

A write's file is written and fsynced outside the store's lock: on a disk
whose fsyncs take milliseconds, one lock held through them made every read and
write of the store wait for each write in turn (B2 on a disk of 3,000 write
IOPS: 14 certificates a second at most, whatever the CPU). Writes of one
object still go one at a time (`_writing`), each checking its resourceVersion
against what the one before it made; readers see an object once its file is
in place; a deletion waits for the writes of what it deletes.

Costs, since one store may hold tens of thousands of objects: `list` reads an
index by kind, namespace and label, so it costs what it returns; a manifest
reload parses only the files whose content changed, and a restart parses none
it parsed before: each file's documents are kept under the state dir by the
digest of its bytes (`MANIFEST_CACHE`, Secrets' values excepted), which loads
~100x faster than YAML parses (a file edited while running is kept at the
clean stop, off the edit's way); likewise the state files, which
`save_state_cache` (at a clean stop) writes into one file (`STATE_CACHE`) with
each file's mtime, ctime, size and inode: a file whose own no longer match
(written since, by a process that then crashed) is parsed from its YAML. Both
caches are `marshal` with each cache's equal strings one object (`dump_cache`).
"""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import datetime
import difflib
import fcntl
import hashlib
import itertools
import json
import logging
import marshal
import os
import random
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from certctl.api import annotations as annotation_keys
from certctl.api import conditions, kinds, parsing
from certctl.api.resources import ObjectKey
from certctl.store import interface
from certctl.store.interface import EventType, Object, WatchEvent, WatchType

logger = logging.getLogger(__name__)

SOURCE_ANNOTATION = annotation_keys.MANIFEST_SOURCE
MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")
CLUSTER_DIR = "_cluster"
SERVE_INFO = "serve.json"  # which manifests `certctl serve` reads into this state dir
MANIFEST_CACHE = "manifest-cache"  # manifest files parsed before, by the digest of their bytes
STATE_CACHE = "state-cache"  # the state files as written, for the next start to read
_PARSE_CACHE_SUFFIX = ".cache"
# The state cache as JSON, where certctl kept it before `dump_cache`: the next stop removes it.
_JSON_STATE_CACHE = "state-cache.json"

Listener = Callable[[WatchEvent], None]

# libyaml's loader when PyYAML was built with it: ~16x faster than the pure
# Python one, which matters when 10,000 objects are read at start-up.
_SafeLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
# And libyaml's emitter for state files: PyYAML's own was 18 % of the CPU of issuing
# 500 certificates (B2), every store write being one dump.
_SafeDumper: Any = getattr(yaml, "CSafeDumper", yaml.SafeDumper)

# How far a file's timestamps may trail the clock (coarse kernel clock, file systems
# that keep seconds or two): a file changed this recently may change again without
# its mtime, size or inode moving, so its content is compared rather than trusted.
_TIMESTAMP_SLACK_NS = 2_000_000_000


class _Versions:
    """The resourceVersions of every LocalStore of the process, from one counter.

    A uid and a resourceVersion then name one content of one object in the process, as in
    an API server (api/parsing remembers parsed issuers by them), even where one process
    opens several stores (the tests; manifest objects' uids are derived from their names,
    so two stores' copies of one issuer share a uid)."""

    def __init__(self) -> None:
        self._next = 1
        self._lock = threading.Lock()

    def take(self) -> str:
        with self._lock:
            version, self._next = self._next, self._next + 1
        return str(version)

    def above(self, highest: int) -> None:
        """Versions from now on are higher than `highest` (a state dir's, as read back)."""
        with self._lock:
            self._next = max(self._next, highest + 1)


_VERSIONS = _Versions()


@dataclass(frozen=True, kw_only=True)
class ManifestError:
    """A problem with one manifest file or document, reported but not fatal."""

    source: str
    message: str

    def __str__(self) -> str:
        return f"{self.source}: {self.message}"


# One document of a manifest file: its object (normalised, as loaded) or what is wrong with it.
_Entry = ManifestError | tuple[ObjectKey, Object]


@dataclass(frozen=True, kw_only=True)
class _ParsedFile:
    """One manifest file as last parsed, and what tells that it has not changed since."""

    signature: tuple[int, int, int, int]  # mtime_ns, ctime_ns, size, inode
    digest: bytes  # sha256 of the bytes parsed
    settled: bool  # its timestamps were older than the read by more than their slack
    entries: tuple[_Entry, ...]  # in document order


def key_of(obj: Mapping[str, Any]) -> ObjectKey:
    metadata = obj.get("metadata") or {}
    return ObjectKey(
        kind=str(obj.get("kind")), namespace=metadata.get("namespace"), name=str(metadata["name"])
    )


def _now_rfc3339() -> str:
    return conditions.format_time(datetime.datetime.now(datetime.UTC))


def private_mkdir(path: Path) -> None:
    """Create `path` and missing parents as 0700: the state dir holds private keys."""
    missing = []
    while not path.exists():
        missing.append(path)
        path = path.parent
    for folder in reversed(missing):
        folder.mkdir(mode=0o700, exist_ok=True)


class StateWriteError(interface.StoreUnavailable, OSError):
    """A state file could not be written or removed; the previous file is intact.

    Also an OSError carrying the cause's errno and strerror, so code handling
    OS errors (start-up) keeps working; the message names the file.
    """

    def __init__(self, *, path: Path, error: OSError, action: str = "write") -> None:
        OSError.__init__(self, error.errno, error.strerror or str(error), str(path))
        self.path = path
        self.action = action

    def __str__(self) -> str:
        return f"cannot {self.action} state file {self.path}: {self.strerror}"


class StateDirBusy(Exception):
    """Another process serves from this state dir."""


def claim_state_dir(state_dir: Path) -> int:
    """Hold `state_dir` for this process and clear what a killed writer left in it.

    An exclusive lock on its `.lock` file (released when the returned descriptor is
    closed, or the process ends however it ends) keeps two `serve` processes from
    writing one state; holding it, the temporary files of an `atomic_write` that
    never reached its rename (a SIGKILL mid-write) can only be leftovers, and go.
    StateDirBusy when another process holds it.
    """
    private_mkdir(state_dir)
    fd = os.open(state_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StateDirBusy(f"another certctl serve is using {state_dir}") from None
    for leftover in state_dir.rglob(".*.tmp"):
        with contextlib.suppress(OSError):
            leftover.unlink()
    return fd


_TEMPORARY_FILES = itertools.count()
# Drawn for objects' uids: uuid4 reads os.urandom, a system call that lets the GIL go
# (a uid must be unique, not secret).
_UIDS = random.Random()  # noqa: S311
os.register_at_fork(after_in_child=_UIDS.seed)  # a forked child draws its own


def atomic_write(path: Path, data: bytes) -> None:
    """Replace `path` with `data` so readers see the old or the new file, never half.

    The data goes to a temporary file beside it (created 0600), is fsynced
    and renamed over `path`. On any failure (disk full, read-only file
    system, file size limit) the temporary file is removed, `path` is as it
    was, and StateWriteError names `path` and the reason. Every store write
    comes here: plain `os` calls on strings (the noqa's), and the folder made
    only when the first create meets it missing (pathlib's objects, a uuid and
    a stat a write were a third of its CPU: 98 -> 64 us a write).
    """
    target = os.fspath(path)
    directory, name = os.path.split(target)
    directory = directory or os.curdir  # a bare file name: the working directory's
    # Named by process and count, not by random bytes: os.urandom is a system call
    # that lets the GIL go, handing it to another thread at every write.
    tmp = os.path.join(  # noqa: PTH118
        directory, f".{name}.{os.getpid()}-{next(_TEMPORARY_FILES)}.tmp")
    try:
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileNotFoundError:
            private_mkdir(path.parent)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, target)  # noqa: PTH105
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)  # noqa: PTH108
            raise
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as err:
        raise StateWriteError(path=path, error=err) from err


def remove_state_file(path: Path) -> None:
    """Remove `path` if it exists; StateWriteError naming it if it cannot be removed."""
    try:
        path.unlink(missing_ok=True)
    except OSError as err:
        raise StateWriteError(path=path, error=err, action="remove") from err


def _labels_of(obj: Object | None) -> Mapping[Any, Any]:
    """The labels of `obj`; none if it has no (or a malformed) `metadata.labels`."""
    labels = ((obj or {}).get("metadata") or {}).get("labels")
    return labels if isinstance(labels, Mapping) else {}


def _label_items(obj: Object | None) -> set[tuple[Any, Any]]:
    """The (name, value) labels of `obj` a selector can match through a dict lookup."""
    items = set()
    for item in _labels_of(obj).items():
        with contextlib.suppress(TypeError):  # an unhashable value never equals a selector's
            hash(item)
            items.add(item)
    return items


class _Dependents:
    """State objects by the uids of their owners (metadata.ownerReferences), so deleting
    an owner finds what it owns without a pass over every object: that pass, once per
    deletion and again for each dependent, was a tenth of certctl's CPU issuing 500
    certificates at once (B2's profile), quadratic in the objects kept. Not thread-safe:
    the store calls it under its lock."""

    def __init__(self) -> None:
        self._by_owner: dict[str, dict[ObjectKey, None]] = {}  # in the order they came

    def update(self, key: ObjectKey, *, before: Object | None, after: Object | None) -> None:
        had, has = _owner_uids(before), _owner_uids(after)
        for uid in had - has:
            _discard(self._by_owner, uid, key)
        for uid in has - had:
            self._by_owner.setdefault(uid, {})[key] = None

    def of(self, uid: str) -> builtins.list[ObjectKey]:
        return builtins.list(self._by_owner.get(uid, ()))


def _owner_uids(obj: Object | None) -> set[str]:
    if obj is None:
        return set()
    owners = obj.get("metadata", {}).get("ownerReferences") or []
    return {owner["uid"] for owner in owners if isinstance(owner, dict) and owner.get("uid")}


class _ListIndex:
    """Keys of the visible objects by kind and namespace, and by label.

    So `list` costs what it returns rather than the size of the store: ingress-shim
    lists each Ingress's Certificates by label, 10,000 times at start-up. Each key
    maps to `str(key)`, the order `list` returns, computed once. Not thread-safe:
    the store calls it under its lock.
    """

    def __init__(self) -> None:
        self._scopes: dict[str, dict[str | None, dict[ObjectKey, str]]] = {}
        self._labelled: dict[tuple[str, str | None, Any, Any], dict[ObjectKey, str]] = {}

    def update(self, key: ObjectKey, *, before: Object | None, after: Object | None) -> None:
        """Record that the visible object at `key` went from `before` to `after` (None:
        absent)."""
        if before is after:
            return
        if before is None:
            self._scopes.setdefault(key.kind, {}).setdefault(key.namespace, {})[key] = str(key)
        elif after is None:
            by_namespace = self._scopes[key.kind]
            _discard(by_namespace, key.namespace, key)
            if not by_namespace:
                del self._scopes[key.kind]
        had, has = _label_items(before), _label_items(after)
        for name, value in had - has:
            _discard(self._labelled, (key.kind, key.namespace, name, value), key)
        for name, value in has - had:
            self._labelled.setdefault((key.kind, key.namespace, name, value), {})[key] = str(key)

    def candidates(
        self, *, kind: str, namespace: str | None, labels: Mapping[str, str] | None
    ) -> builtins.list[ObjectKey]:
        """Keys that may match, in `list`'s order: all of the kind and namespace, or of
        its narrowest label bucket; the caller still checks every label."""
        by_namespace = self._scopes.get(kind, {})
        namespaces = builtins.list(by_namespace) if namespace is None else [namespace]
        found: builtins.list[tuple[ObjectKey, str]] = []
        for each in namespaces:
            narrowest = by_namespace.get(each, {})
            for name, value in (labels or {}).items():
                try:
                    bucket = self._labelled.get((kind, each, name, value), {})
                except TypeError:  # an unhashable selector value: no bucket to narrow by
                    continue
                # A None selector value also matches objects without the label: no bucket.
                if value is not None and len(bucket) < len(narrowest):
                    narrowest = bucket
            found.extend(narrowest.items())
        found.sort(key=lambda item: item[1])
        return [key for key, _ in found]


def _discard(table: dict[Any, dict[ObjectKey, Any]], bucket: Any, key: ObjectKey) -> None:
    keys = table.get(bucket)
    if keys is not None:
        keys.pop(key, None)
        if not keys:
            del table[bucket]


class LocalStore:
    """A `Store` over manifest files and a state directory; thread-safe."""

    def __init__(self, *, manifests_dir: Path | None, state_dir: Path) -> None:
        self.manifests_dir = manifests_dir
        self.state_dir = state_dir
        self._objects_dir = state_dir / "objects"
        self._status_dir = state_dir / "status"
        self._lock = threading.RLock()
        # Objects whose file is being written outside the lock, by key, and the wake-up of
        # those waiting for one of them: the next writer of the object, or a deletion.
        self._writing: dict[ObjectKey, Object] = {}
        self._written = threading.Condition(self._lock)
        self._manifest: dict[ObjectKey, Object] = {}
        self._manifest_status: dict[ObjectKey, Any] = {}
        self._state: dict[ObjectKey, Object] = {}
        self._index = _ListIndex()
        self._dependents = _Dependents()
        self._listeners: list[Listener] = []
        self.manifest_errors: list[ManifestError] = []
        # Reloads run one at a time: each starts from the files the last one parsed.
        self._reload_lock = threading.Lock()
        self._parse_cache = _ParseCache(state_dir / MANIFEST_CACHE)
        # Manifest files edited while running, by path: the digest whose parse-cache entry
        # `save_state_cache` writes at the stop, off the edit's way to the data plane.
        self._unkept: dict[Path, bytes] = {}
        # State object -> its file's signature when this store last read or wrote it.
        self._state_files: dict[ObjectKey, _Signature] = {}
        self._files: dict[str, _ParsedFile] = {}
        # The objects of `_files` the manifest objects were made from, by key: an object
        # still parsed from the very same document is unchanged, without comparing it.
        self._parsed: dict[ObjectKey, Object] = {}
        self.last_parsed: tuple[Path, ...] = ()
        """Manifest files the last reload parsed; the others had not changed."""
        private_mkdir(state_dir)
        self._load_state()

    # --- watching ------------------------------------------------------------

    def subscribe(self, listener: Listener) -> None:
        """Call `listener` after every change; it runs on the writer's thread."""
        with self._lock:
            self._listeners.append(listener)

    def _notify(self, events: Iterable[WatchEvent]) -> None:
        for event in events:
            for listener in list(self._listeners):
                try:
                    listener(event)
                except Exception:
                    logger.exception("store listener failed on %s", event.key)

    # --- reads ---------------------------------------------------------------

    def _visible(self, key: ObjectKey) -> Object | None:
        obj = self._state.get(key)
        if obj is None:
            obj = self._manifest.get(key)
        return obj

    def _put(self, layer: dict[ObjectKey, Object], key: ObjectKey, obj: Object | None) -> None:
        """Put (None: drop) the object at `key` of `layer` (`_state` or `_manifest`),
        keeping the list index in step."""
        before = self._visible(key)
        if layer is self._state:
            self._dependents.update(key, before=layer.get(key), after=obj)
        if obj is None:
            del layer[key]
        else:
            layer[key] = obj
        self._index.update(key, before=before, after=self._visible(key))

    # Reads copy outside the lock: a stored object is never changed in place (every
    # write stores a new dict), so the copy is of the snapshot taken under the lock,
    # and a list of 10,000 objects does not hold up the writers while it copies.

    def get(self, *, kind: str, namespace: str | None, name: str) -> Object | None:
        # Without the lock: sixteen reconcile threads taking it for every read queued on
        # it (B2), each one that got it holding it while it waited for the GIL. Each dict
        # lookup is atomic, and a key only enters `_state` when no manifest object has it
        # (`create`), so the two lookups of `_visible` see what a read just before or just
        # after a change between them would.
        obj = self._visible(ObjectKey(kind=kind, namespace=namespace, name=name))
        return interface.copy_object(obj) if obj is not None else None

    def list(
        self,
        *,
        kind: str,
        namespace: str | None = None,
        labels: Mapping[str, str] | None = None,
        shared: bool = False,
    ) -> list[Object]:
        with self._lock:
            found = []
            for key in self._index.candidates(kind=kind, namespace=namespace, labels=labels):
                obj = self._visible(key)
                if obj is None:
                    continue
                if labels:
                    have = _labels_of(obj)
                    if any(have.get(k) != v for k, v in labels.items()):
                        continue
                found.append(obj)
        return found if shared else [interface.copy_object(obj) for obj in found]

    # --- writes --------------------------------------------------------------

    def create(self, *, obj: Object) -> Object:
        key = self._check_key(obj)
        # Copied before the lock is taken: every writer and every read not served from
        # `_state` waits while the lock is held.
        stored = interface.kept_copy(obj)
        metadata = stored.setdefault("metadata", {})
        metadata.setdefault("uid", str(uuid.UUID(int=_UIDS.getrandbits(128), version=4)))
        metadata.setdefault("creationTimestamp", _now_rfc3339())
        metadata["generation"] = 1
        self._fill_api_version(stored)
        with self._lock:
            self._wait_for_writes(key)
            if self._visible(key) is not None:
                raise interface.AlreadyExists(f"{key} already exists")
            write = self._begin_write(key, stored, manifest_status=False)
        self._notify([self._finish_write(write, event_type="ADDED")])
        return interface.copy_object(stored)

    def replace(self, *, obj: Object) -> Object:
        return self._replace(obj=obj, status_only=False)

    def replace_status(self, *, obj: Object) -> Object:
        return self._replace(obj=obj, status_only=True)

    def _replace(self, *, obj: Object, status_only: bool) -> Object:
        key = self._check_key(obj)
        # The caller's parts are copied before the lock is taken (see `create`); the
        # parts kept from the current object are shared with it, as a stored object is
        # never changed in place: the new one gets its own top level and metadata, the
        # only parts set below and in `_begin_write`.
        copied = interface.kept_copy(obj.get("status", {}) if status_only else obj)
        with self._lock:
            self._wait_for_writes(key)
            current = self._visible(key)
            if current is None:
                raise interface.NotFound(f"{key} not found")
            wanted_version = obj.get("metadata", {}).get("resourceVersion")
            if wanted_version is not None and wanted_version != current["metadata"].get(
                "resourceVersion"
            ):
                raise interface.Conflict(f"{key} was modified; re-read it and try again")
            if status_only:
                stored = dict(current)
                stored["metadata"] = dict(current["metadata"])
                stored["status"] = copied
            else:
                status = current.get("status")
                stored = copied
                stored["metadata"]["uid"] = current["metadata"].get("uid")
                stored["metadata"]["creationTimestamp"] = current["metadata"].get(
                    "creationTimestamp"
                )
                if status is not None:
                    stored["status"] = status
                else:
                    stored.pop("status", None)
                if _spec_of(stored) != _spec_of(current):
                    stored["metadata"]["generation"] = current["metadata"].get("generation", 1) + 1
                else:
                    stored["metadata"]["generation"] = current["metadata"].get("generation", 1)
            if stored == current:
                return interface.copy_object(current)
            self._fill_api_version(stored)
            # The status of a user's object is kept beside it, so edits to its file still apply.
            write = self._begin_write(key, stored, manifest_status=(
                status_only and key in self._manifest and key not in self._state))
        self._notify([self._finish_write(write, event_type="MODIFIED")])
        return interface.copy_object(stored)

    def delete(self, *, kind: str, namespace: str | None, name: str) -> None:
        key = ObjectKey(kind=kind, namespace=namespace, name=name)
        with self._lock:
            if key in self._manifest:
                source = self._manifest[key]["metadata"].get("annotations", {}).get(
                    SOURCE_ANNOTATION
                )
                raise interface.StoreError(
                    f"{key} is defined in {source}; remove it from that file to delete it"
                )
            self._wait_for_writes(key, dependents=True)
            events = list(self._delete_with_dependents(key))
        self._notify(events)

    def emit_event(
        self, *, obj: Mapping[str, Any], type: EventType, reason: str, message: str
    ) -> None:
        try:
            key = key_of(obj)
        except (KeyError, TypeError):
            return
        # Standalone has no Event API: the log is where users read events, so
        # name the file the object came from (or was derived from) as well.
        source = (obj.get("metadata", {}).get("annotations") or {}).get(SOURCE_ANNOTATION)
        where = f"{source}: " if source else ""
        log = logger.warning if type == "Warning" else logger.info
        log("%s%s %s: %s", where, key, reason, message)

    # --- manifests -----------------------------------------------------------

    def reload_manifests(self) -> builtins.list[ManifestError]:
        """Re-read the manifest files; objects of files that fail to parse are kept.

        Keeping the last good objects of a broken file is what a cluster does
        when `kubectl apply` of a bad file fails: the old objects stay.

        Only files whose content changed are parsed again (`last_parsed` names
        them); the objects of the others stay as they are, so an edit costs the
        size of its file, not of the folder. A file is unchanged when its mtime,
        ctime, size and inode are those of its last read and that read came well
        after its last change; otherwise its bytes are hashed and compared.
        """
        if self.manifests_dir is None:
            return []
        with self._reload_lock:
            errors: builtins.list[ManifestError] = []
            loaded: dict[ObjectKey, Object] = {}
            files: dict[str, _ParsedFile] = {}
            parsed: builtins.list[Path] = []
            failed: set[str] = set()  # files that could not be read: their last objects stay
            for path in sorted(self._manifest_files()):
                source = str(path)
                previous = self._files.get(source)
                try:
                    # A file seen first is kept in the cache at once (the start: the next
                    # one may follow a crash); an edit's entry waits for the stop.
                    record = _read_manifest(path, previous=previous, cache=self._parse_cache,
                                            keep_now=previous is None)
                except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
                    message = (describe_yaml_error(err) if isinstance(err, yaml.YAMLError)
                               else f"cannot read: {err}")
                    errors.append(ManifestError(source=source, message=message))
                    failed.add(source)
                    if previous is not None:
                        files[source] = previous  # its objects are still the ones loaded
                    continue
                files[source] = record
                if previous is None or record.entries is not previous.entries:
                    parsed.append(path)
                if previous is not None and record.digest != previous.digest:
                    self._unkept[path] = record.digest
            keys = None if failed else self._changed_keys(files, parsed)
            if keys is not None:
                # Only the parsed files' objects can differ from the last load's.
                loaded = dict(self._parsed)
                for path in parsed:
                    for entry in self._files[str(path)].entries:
                        if not isinstance(entry, ManifestError):
                            loaded.pop(entry[0], None)
                    for entry in files[str(path)].entries:
                        if not isinstance(entry, ManifestError):
                            loaded[entry[0]] = entry[1]
            else:
                for source, record in files.items():
                    if source not in failed:
                        self._add_entries(record, loaded=loaded, errors=errors)
                        continue
                    for entry in record.entries:
                        if not isinstance(entry, ManifestError) and (
                            self._parsed.get(entry[0]) is entry[1]
                        ):
                            loaded[entry[0]] = entry[1]
            for error in errors:
                logger.error("manifest error: %s", error)
            logger.debug("manifests: parsed %d of %d files", len(parsed), len(files))
            with self._lock:
                events = builtins.list(self._apply_manifests(loaded, keys=keys))
                self.manifest_errors = errors
            self._files = files
            self.last_parsed = tuple(parsed)
            if parsed:
                self._parse_cache.keep_only({record.digest for record in files.values()})
            # Still under the reload lock: the events of two reloads never interleave.
            self._notify(events)
        return errors

    def _manifest_files(self) -> Iterator[Path]:
        assert self.manifests_dir is not None
        if self.manifests_dir.is_file():
            yield self.manifests_dir
            return
        for path in self.manifests_dir.rglob("*"):
            hidden = path.name.startswith(".")
            if path.suffix in MANIFEST_SUFFIXES and path.is_file() and not hidden:
                yield path

    @staticmethod
    def _add_entries(record: _ParsedFile, *, loaded: dict[ObjectKey, Object],
                     errors: builtins.list[ManifestError]) -> None:
        """A file's objects into `loaded`, its problems into `errors` (the first file
        defining a key keeps it)."""
        for entry in record.entries:
            if isinstance(entry, ManifestError):
                errors.append(entry)
                continue
            key, obj = entry
            if key in loaded:
                errors.append(ManifestError(
                    source=obj["metadata"]["annotations"][SOURCE_ANNOTATION],
                    message=f"{key} is also defined in "
                    f"{loaded[key]['metadata']['annotations'][SOURCE_ANNOTATION]}; "
                    "keeping the first",
                ))
                continue
            loaded[key] = obj

    def _changed_keys(self, files: dict[str, _ParsedFile],
                      parsed: builtins.list[Path]) -> set[ObjectKey] | None:
        """The keys the parsed files held before and hold now, when they are all that can
        have changed: the same files as before, and no key defined twice before or now (a
        file's objects could then shadow another's); else None: look at every key."""
        if files.keys() != self._files.keys() or self.manifest_errors:
            return None
        keys: set[ObjectKey] = set()
        for path in parsed:
            source = str(path)
            before = self._files[source].entries
            now = files[source].entries
            held = {entry[0] for entry in before if not isinstance(entry, ManifestError)}
            for entry in now:
                if isinstance(entry, ManifestError):
                    return None
                key = entry[0]
                if key in keys or (key in self._parsed and key not in held):
                    return None  # defined twice in these files, or in another file too
                keys.add(key)
            keys |= held
        return keys

    def _apply_manifests(self, loaded: dict[ObjectKey, Object], *,
                         keys: set[ObjectKey] | None = None) -> Iterator[WatchEvent]:
        """Make `loaded` (objects as parsed, never changed) the manifest objects; events
        for the objects that changed. With `keys`, only they can have changed: the others
        are kept as they are without looking (an edit costs its file, not the folder)."""
        old = self._manifest
        manifest: dict[ObjectKey, Object] = {} if keys is None else dict(old)
        changed: builtins.list[ObjectKey] = []
        events: builtins.list[WatchEvent] = []
        for key in loaded.keys() if keys is None else keys:
            parsed = loaded.get(key)
            if parsed is None:
                continue  # removed: below
            previous = old.get(key)
            if previous is not None and (
                self._parsed.get(key) is parsed
                or _without_version(previous) == _without_version(parsed)
            ):
                manifest[key] = previous
                continue
            # The parsed object stays as parsed (the next reload compares with it): the
            # stored one gets its own top level and metadata, the only parts set below.
            obj = dict(parsed)
            obj["metadata"] = dict(parsed["metadata"])
            if previous is not None:
                # Like the API server: an edit never changes when the object was created.
                obj["metadata"]["creationTimestamp"] = previous["metadata"]["creationTimestamp"]
            obj["metadata"]["resourceVersion"] = _VERSIONS.take()
            obj["metadata"]["generation"] = (
                previous["metadata"].get("generation", 1) + 1 if previous is not None else 1
            )
            status = self._manifest_status.get(key)
            if status is not None:
                obj["status"] = interface.copy_object(status)
            self._fill_api_version(obj)
            manifest[key] = obj
            changed.append(key)
            if key not in self._state and self._listeners:
                # Without listeners (the first load of `certctl serve`) the copy each event
                # carries would be made for nobody.
                events.append(WatchEvent(
                    type="MODIFIED" if previous is not None else "ADDED",
                    key=key,
                    obj=interface.copy_object(obj),
                ))
        removed = [key for key in (old if keys is None else keys) if key not in loaded]
        for key in removed:
            manifest.pop(key, None)
        self._manifest, self._parsed = manifest, loaded
        for key in [*changed, *removed]:
            self._index.update(key, before=self._state.get(key, old.get(key)),
                               after=self._visible(key))
        yield from events
        for key in removed:
            if key in self._state:
                continue
            yield from self._delete_with_dependents(key, manifest_object=old[key])

    def collect_orphans(self) -> None:
        """Delete state objects whose owners are all gone, as Kubernetes' GC would.

        Owners removed while certctl was stopped (an Ingress deleted from the
        manifests) leave dependents no event will ever clean up. Call this
        only after a manifest load without errors: a file that failed to
        parse would otherwise look like deleted owners.
        """
        with self._lock:
            uids = {obj["metadata"].get("uid") for obj in self._manifest.values()}
            uids |= {obj["metadata"].get("uid") for obj in self._state.values()}
            events: builtins.list[WatchEvent] = []
            for key, obj in list(self._state.items()):
                owners = obj.get("metadata", {}).get("ownerReferences") or []
                if owners and key in self._state and not any(
                    owner.get("uid") in uids for owner in owners
                ):
                    logger.info("deleting %s: its owners no longer exist", key)
                    events.extend(self._delete_with_dependents(key))
        self._notify(events)

    # --- state files ---------------------------------------------------------

    def _path_for(self, key: ObjectKey) -> Path:
        return (
            self._objects_dir / key.kind / (key.namespace or CLUSTER_DIR) / f"{key.name}.yaml"
        )

    def _status_path_for(self, key: ObjectKey) -> Path:
        return self._status_dir / key.kind / (key.namespace or CLUSTER_DIR) / f"{key.name}.yaml"

    def _wait_for_writes(self, key: ObjectKey, *, dependents: bool = False) -> None:
        """Under the lock: until no write of `key` is under way, nor, with `dependents`, of
        what deleting it deletes (`_with_dependents`, looked at again after each write: one
        that ended may have made another dependent)."""
        while not self._writing.keys().isdisjoint(
                self._with_dependents(key) if dependents else (key,)):
            self._written.wait()

    def _with_dependents(self, key: ObjectKey) -> set[ObjectKey]:
        """Under the lock: `key` and what deleting it deletes (`_delete_with_dependents`),
        counting the objects being written: one created for an owner being deleted is
        deleted with it once written, as Kubernetes' garbage collector would."""
        found: set[ObjectKey] = set()
        todo = [key]
        while todo:
            each = todo.pop()
            if each in found:
                continue
            found.add(each)
            uid = (self._state.get(each) or {}).get("metadata", {}).get("uid")
            if uid:
                todo.extend(self._dependents.of(uid))
                todo.extend(written for written, obj in self._writing.items()
                            if uid in _owner_uids(obj))
        return found

    def _begin_write(self, key: ObjectKey, obj: Object, *, manifest_status: bool) -> _Write:
        """Under the lock, after `_wait_for_writes(key)` and the checks: give `obj` its
        resourceVersion and claim `key` until `_finish_write`."""
        obj["metadata"]["resourceVersion"] = _VERSIONS.take()
        self._writing[key] = obj
        layer = self._manifest if manifest_status else self._state
        return _Write(key=key, obj=obj, manifest_status=manifest_status,
                      based_on=layer.get(key))

    def _finish_write(self, write: _Write, *, event_type: WatchType) -> WatchEvent:
        """Outside the lock: write the object's file (or a user's object's status file),
        then make it what readers see; its watch event. Nothing changes when the file
        cannot be written (StateWriteError). NotFound or Conflict when the object was
        deleted, or the user's object reloaded, while its file was written: the file is
        made what the store holds again."""
        key, obj = write.key, write.obj
        path = self._status_path_for(key) if write.manifest_status else self._path_for(key)
        try:
            atomic_write(path, dump_state_file(obj.get("status", {}) if write.manifest_status
                                               else obj))
            signature = None
            if not write.manifest_status:
                with contextlib.suppress(OSError):
                    signature = _signature(path.stat())
        except BaseException:
            self._end_write(key)
            raise
        held_status = (interface.copy_object(obj.get("status", {}))
                       if write.manifest_status else None)
        with self._lock:
            self._end_write(key)
            layer = self._manifest if write.manifest_status else self._state
            if layer.get(key) is not write.based_on or (
                    write.manifest_status and key in self._state):
                self._rewrite_as_held(key, manifest_status=write.manifest_status)
                if self._visible(key) is None:
                    raise interface.NotFound(f"{key} was deleted while it was written")
                raise interface.Conflict(f"{key} was modified; re-read it and try again")
            if held_status is not None:
                self._manifest_status[key] = held_status
            elif signature is not None:
                self._state_files[key] = signature
            self._put(layer, key, obj)
        # Copied once the lock is let go (`create`): `obj` is stored now, never changed.
        return WatchEvent(type=event_type, key=key, obj=interface.copy_object(obj))

    def _end_write(self, key: ObjectKey) -> None:
        with self._lock:
            del self._writing[key]
            self._written.notify_all()

    def _rewrite_as_held(self, key: ObjectKey, *, manifest_status: bool) -> None:
        """Under the lock: put back on disk what the store holds for `key`, after a write
        that raced a deletion or a manifest reload (rare: so under the lock)."""
        if manifest_status:
            path, held = self._status_path_for(key), self._manifest_status.get(key)
        else:
            path, held = self._path_for(key), self._state.get(key)
            self._state_files.pop(key, None)
        try:
            if held is None:
                remove_state_file(path)
            else:
                atomic_write(path, dump_state_file(held))
        except StateWriteError as err:
            logger.error("%s: %s", key, err)

    def _load_state(self) -> None:
        for path in self._status_dir.glob("*/*/*.yaml"):
            namespace = None if path.parent.name == CLUSTER_DIR else path.parent.name
            key = ObjectKey(kind=path.parent.parent.name, namespace=namespace, name=path.stem)
            try:
                self._manifest_status[key] = load_state_file(path.read_text()) or {}
            except (OSError, yaml.YAMLError) as err:
                logger.error("ignoring unreadable status file %s: %s", path, _unquoted(err))
        highest = 0
        cached = self._read_state_cache()
        for path in self._objects_dir.glob("*/*/*.yaml"):
            try:
                signature = _signature(path.stat())
                found = cached.get(str(path.relative_to(self.state_dir)))
                if found is not None and found[0] == signature:
                    obj = found[1]
                else:
                    obj = load_state_file(path.read_text())
                key = key_of(obj)
            except (OSError, yaml.YAMLError, KeyError, TypeError) as err:
                logger.error("ignoring unreadable state file %s: %s", path, _unquoted(err))
                continue
            self._put(self._state, key, obj)
            self._state_files[key] = signature
            with contextlib.suppress(TypeError, ValueError):
                highest = max(highest, int(obj["metadata"].get("resourceVersion", 0)))
        _VERSIONS.above(highest)

    def _read_state_cache(self) -> dict[str, tuple[_Signature, Object]]:
        """What `save_state_cache` wrote: state file (relative path) -> (signature, object)."""
        try:
            entries = load_cache((self.state_dir / STATE_CACHE).read_bytes())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as err:
            logger.warning("state cache not used (every state file is parsed): %s", err)
            return {}
        found: dict[str, tuple[_Signature, Object]] = {}
        for entry in entries if isinstance(entries, builtins.list) else ():
            with contextlib.suppress(TypeError, ValueError):
                path, signature, obj = entry
                found[str(path)] = (tuple(int(part) for part in signature), obj)
        return found

    def save_state_cache(self) -> None:
        """Write every state object with its file's signature, for the next start to read
        instead of parsing the YAML (at a clean stop: nothing writes meanwhile). Files
        written in the last seconds are left out: their timestamps may not tell the next
        write from this one (`_TIMESTAMP_SLACK_NS`). Also the parse-cache entries of
        manifest files edited while running."""
        settled_before = time.time_ns() - _TIMESTAMP_SLACK_NS
        entries: builtins.list[builtins.list[Any]] = []
        with self._lock:
            state = builtins.list(self._state.items())
            signatures = dict(self._state_files)
        for key, obj in state:
            signature = signatures.get(key)
            if signature is None or max(signature[0], signature[1]) >= settled_before:
                continue
            entries.append([str(self._path_for(key).relative_to(self.state_dir)),
                            builtins.list(signature), obj])
        try:
            data = dump_cache(entries)
        except ValueError:  # a timestamp from a manifest (YAML): those objects are parsed
            data = dump_cache([entry for entry in entries if _marshals(entry[2])])
        atomic_write(self.state_dir / STATE_CACHE, data)
        with contextlib.suppress(FileNotFoundError):
            (self.state_dir / _JSON_STATE_CACHE).unlink()
        self._keep_edited_manifests()

    def _keep_edited_manifests(self) -> None:
        """Write the parse-cache entries of the manifest files edited while running, for
        the content each has now if that is still the content last loaded."""
        with self._reload_lock:
            unkept, self._unkept = self._unkept, {}
            loaded = {record.digest for record in self._files.values()}
            for path, digest in unkept.items():
                try:
                    data = path.read_bytes()
                except OSError:
                    continue
                if digest in loaded and hashlib.sha256(data).digest() == digest:
                    with contextlib.suppress(UnicodeDecodeError, yaml.YAMLError):
                        self._parse_cache.store(digest, data=data)

    def _delete_with_dependents(
        self, key: ObjectKey, *, manifest_object: Object | None = None
    ) -> Iterator[WatchEvent]:
        """Delete `key` and, like Kubernetes' garbage collector, what it owns."""
        obj = manifest_object if manifest_object is not None else self._state.get(key)
        if obj is None:
            return
        # The file goes first: if it cannot, memory still matches the disk.
        if manifest_object is None:
            remove_state_file(self._path_for(key))
            self._put(self._state, key, None)
            self._state_files.pop(key, None)
        elif key in self._manifest_status:
            remove_state_file(self._status_path_for(key))
            del self._manifest_status[key]
        yield WatchEvent(type="DELETED", key=key, obj=obj)
        uid = obj.get("metadata", {}).get("uid")
        if not uid:
            return
        for dependent_key in self._dependents.of(uid):
            yield from self._delete_with_dependents(dependent_key)

    def _check_key(self, obj: Object) -> ObjectKey:
        try:
            key = key_of(obj)
        except KeyError as err:
            raise interface.StoreError("object has no metadata.name") from err
        info = kinds.lookup(key.kind)
        if info is not None and info.namespaced != (key.namespace is not None):
            raise interface.StoreError(f"{key}: namespace does not match the kind's scope")
        return key

    @staticmethod
    def _fill_api_version(obj: Object) -> None:
        info = kinds.lookup(obj.get("kind", ""))
        if info is not None:
            obj.setdefault("apiVersion", info.api_version)


# A file's mtime_ns, ctime_ns, size and inode: a replaced file (atomic_write) has new ones.
_Signature = tuple[int, ...]


@dataclass(frozen=True, kw_only=True)
class _Write:
    """A write claimed by `LocalStore._begin_write`: the object to store at `key`, and
    what its layer held there then (None: nothing)."""

    key: ObjectKey
    obj: Object
    manifest_status: bool  # the status file of a user's object, not a state object
    based_on: Object | None


def _signature(stat: os.stat_result) -> _Signature:
    return (stat.st_mtime_ns, stat.st_ctime_ns, stat.st_size, stat.st_ino)


def _spec_of(obj: Mapping[str, Any]) -> Any:
    return {k: v for k, v in obj.items() if k not in ("metadata", "status")}


def _without_version(obj: Mapping[str, Any]) -> Any:
    trimmed = {k: v for k, v in obj.items() if k != "status"}
    metadata = dict(trimmed.get("metadata", {}))
    for field in ("resourceVersion", "generation", "creationTimestamp"):
        metadata.pop(field, None)
    trimmed["metadata"] = metadata
    return trimmed


def _stable_uid(key: ObjectKey) -> str:
    """A uid that survives restarts, so ownerReferences to manifest objects stay valid."""
    digest = hashlib.sha256(str(key).encode()).hexdigest()
    return str(uuid.UUID(digest[:32]))


def load_state_file(text: str) -> Any:
    """One state or status file: JSON as `dump_state_file` writes it, else YAML (files of
    earlier versions, values JSON has not), parsed with libyaml when available."""
    if text.startswith("{"):
        with contextlib.suppress(ValueError):
            return json.loads(text)
    return yaml.load(text, Loader=_SafeLoader)  # noqa: S506 - _SafeLoader is a safe loader


def dump_state_file(obj: Any) -> bytes:
    """`obj` as a state file: JSON, which YAML reads too, written by the json module's C
    encoder; PyYAML's representer, in Python even with libyaml's emitter, was a tenth
    of certctl's CPU issuing 500 certificates (B2's profile), a dump per store write.
    Values JSON has not (timestamps YAML parsed from a manifest, bytes, NaN) go to YAML.
    """
    try:
        return json.dumps(obj, ensure_ascii=False, allow_nan=False,
                          separators=(",", ":")).encode() + b"\n"
    except (TypeError, ValueError):
        return yaml.dump(obj, Dumper=_SafeDumper, sort_keys=False).encode()


# The caches' format: marshal loads them ~2x faster than JSON, and keeps what was shared
# when they were written, so `dump_cache` makes each cache's equal strings one object: a
# fleet's objects repeat apiVersions, kinds, namespaces, issuers and conditions, ~20 MB
# of 10,000 Ingresses' and Certificates' objects as JSON loaded them. Marshal's format
# is the Python version's own, hence the header; and it is for data this program wrote,
# which these files are (the state dir's, 0600 like the Secrets beside them).
_CACHE_HEADER = b"certctl cache: marshal %d, Python %d.%d\n" % (
    marshal.version, *sys.version_info[:2])


def dump_cache(value: Any) -> bytes:
    """`value` (dicts, lists, strings and marshal's other types) as a cache file's bytes,
    equal strings as one; ValueError for what marshal cannot hold (a datetime)."""
    seen: dict[str, str] = {}

    def shared(item: Any) -> Any:
        # Containers are built anew, so the loaded ones never share (as YAML anchors do).
        if type(item) is str:
            return seen.setdefault(item, item)
        if type(item) is dict:
            return {shared(key): shared(each) for key, each in item.items()}
        if type(item) is builtins.list:
            return [shared(each) for each in item]
        return item

    try:
        return _CACHE_HEADER + marshal.dumps(shared(value))
    except RecursionError as err:
        raise ValueError("nested too deep") from err


def load_cache(data: bytes) -> Any:
    """What `dump_cache` gave `data` from; ValueError if it is not such a cache of this
    Python's."""
    if not data.startswith(_CACHE_HEADER):
        raise ValueError("not a cache of this certctl and Python")
    try:
        return marshal.loads(memoryview(data)[len(_CACHE_HEADER):])  # noqa: S302 - see above
    except (EOFError, TypeError) as err:
        raise ValueError(f"damaged: {err}") from err


def _marshals(value: Any) -> bool:
    try:
        marshal.dumps(value)
    except ValueError:
        return False
    return True


def parse_manifest(data: bytes) -> builtins.list[Any]:
    """Every YAML document of a manifest file's bytes, parsed with libyaml when available.

    The bytes are decoded as UTF-8 first (a BOM is allowed), so a file in
    another encoding is a UnicodeDecodeError rather than mojibake.
    """
    return [each.document for each in _parse_documents(data.decode("utf-8-sig"), nodes=False)]


@dataclass(frozen=True, kw_only=True)
class _Parsed:
    """One YAML document of a file: what it is, its node tree (a document holding a
    Secret only, where asked for) and its span of the text that is it alone (from the end
    of the document before, or the start, to the end of its root node, in characters:
    libyaml's marks), its `---` and comments included."""

    document: Any
    node: yaml.Node | None
    span: tuple[int, int]


def _parse_documents(text: str, *, nodes: bool) -> builtins.list[_Parsed]:
    """Every YAML document of `text`, with the node trees of those holding a Secret when
    `nodes` (where their values lie). Other node trees are dropped as soon as their
    document is built: a file's every node at once is ~10x its size in memory, and a
    process that took so much for a moment keeps most of it (pymalloc's arenas)."""
    loader = _SafeLoader(text)
    found = []
    try:
        start = 0
        while loader.check_node():
            node = loader.get_node()
            end = node.end_mark.index
            document = loader.construct_document(node)
            found.append(_Parsed(document=document,
                                 node=node if nodes and _holds_secret(document) else None,
                                 span=(start, end)))
            start = end
    finally:
        loader.dispose()
    return found


_SECRET_FIELDS = ("data", "stringData")
# Where a Secret's values lie in its file: per field, per key, the span of the value.
_ValueSpans = dict[str, dict[str, tuple[int, int]]]


def _value_spans(parsed: _Parsed, text: str) -> tuple[Any, _ValueSpans] | None:
    """A Secret without its values, and where each lies in `text`; None unless every value
    is a scalar whose text is the value exactly (a plain or literal base64 string on one
    line: what Secrets hold) and nothing else in the Secret repeats one (a
    last-applied-configuration annotation would)."""
    document, node = parsed.document, parsed.node
    if not isinstance(document, dict) or document.get("kind") != "Secret" or not isinstance(
            node, yaml.MappingNode):
        return None
    skeleton = dict(document)
    spans: _ValueSpans = {}
    values: builtins.list[str] = []
    for key_node, value_node in node.value:
        field = key_node.value
        if field not in _SECRET_FIELDS or not isinstance(value_node, yaml.MappingNode):
            continue
        held = document.get(field)
        if not isinstance(held, dict):
            return None
        found: dict[str, tuple[int, int]] = {}
        for item_key, item_value in value_node.value:
            start, end = item_value.start_mark.index, item_value.end_mark.index
            value = held.get(item_key.value)
            if not isinstance(item_value, yaml.ScalarNode) or value != text[start:end]:
                return None
            found[item_key.value] = (start, end)
            values.append(value)
        if len(found) != len(held):
            return None
        spans[field] = found
        skeleton[field] = dict.fromkeys(found)
    if any(document.get(field) and field not in spans for field in _SECRET_FIELDS):
        return None  # values from elsewhere (a `<<` merge key)
    encoded = json.dumps(skeleton, ensure_ascii=False)
    # As JSON writes them: a value with a quote or a backslash is escaped in `encoded`.
    if any(value and json.dumps(value, ensure_ascii=False)[1:-1] in encoded
           for value in values):
        return None
    return skeleton, spans


def _holds_secret(document: Any) -> bool:
    """A Secret, or a `kind: List` with one among its items."""
    return any(isinstance(item, dict) and item.get("kind") == "Secret"
               for item in _flatten([document]))


class _ParseCache:
    """Manifest files' documents as parsed before, by the sha256 of the file's bytes, one
    cache file each (`dump_cache`): a restart loads them instead of parsing YAML again. A
    file with a document marshal cannot hold (a YAML timestamp) is not kept; an entry
    that cannot be read or written is simply parsed again next time. The files are 0600
    under the state dir.

    A document holding a Secret is not kept: its values stay in the user's file (and the
    Secret's own state file) only. Its entry holds where it lies in the file instead (its
    span, in characters), and a restart parses that span alone from the file it read
    anyway, the same bytes (the digest says so). A fleet's files of Ingress and Secret
    pairs were a quarter of a restart's CPU until ready when such files were parsed whole.
    """

    def __init__(self, folder: Path) -> None:
        self._folder = folder

    def _path(self, digest: bytes) -> Path:
        return self._folder / f"{digest.hex()}{_PARSE_CACHE_SUFFIX}"

    def load(self, digest: bytes, *, data: bytes) -> builtins.list[Any] | None:
        """The documents of the file whose bytes, `data`, have this digest; None when
        there is no usable entry."""
        try:
            entry = load_cache(self._path(digest).read_bytes())
        except (OSError, ValueError):
            return None
        if isinstance(entry, builtins.list):  # every document as it is
            return entry
        if not isinstance(entry, dict) or not isinstance(entry.get("documents"), builtins.list):
            return None
        documents: builtins.list[Any] = entry["documents"]
        try:
            text = data.decode("utf-8-sig")
            for index, (start, end) in (entry.get("spans") or {}).items():
                span = text[start:end]
                document = yaml.load(span, Loader=_SafeLoader)  # noqa: S506 - a safe loader
                documents[int(index)] = interface.copy_object(document) if "&" in span else document
            for index, fields in (entry.get("values") or {}).items():
                secret = documents[int(index)]
                for field, spans in fields.items():
                    secret[field] = {key: text[start:end] for key, (start, end) in spans.items()}
        except (ValueError, TypeError, IndexError, KeyError, UnicodeDecodeError,
                yaml.YAMLError):
            return None
        return documents

    def store(self, digest: bytes, *, data: bytes) -> builtins.list[Any]:
        """Parse the file whose bytes are `data` and keep what it gives; its documents."""
        text = data.decode("utf-8-sig")
        parsed = _parse_documents(text, nodes=True)
        documents = [each.document for each in parsed]
        kept: builtins.list[Any] = []
        spans: dict[str, tuple[int, int]] = {}
        values: dict[str, _ValueSpans] = {}
        for index, each in enumerate(parsed):
            if not _holds_secret(each.document):
                kept.append(each.document)
                continue
            without_values = _value_spans(each, text)
            if without_values is not None:  # the values alone read from the file
                kept.append(without_values[0])
                values[str(index)] = without_values[1]
                continue
            kept.append(None)  # the whole document parsed from the file
            start, end = spans[str(index)] = each.span
            try:  # the span parsed alone must give the document back, or the file is not kept
                alone = yaml.load(text[start:end], Loader=_SafeLoader)  # noqa: S506 - a safe loader
            except yaml.YAMLError:
                return documents
            if alone != each.document:
                return documents
        entry = {"documents": kept, "spans": spans, "values": values} if (
            spans or values) else kept
        try:
            encoded = dump_cache(entry)
        except ValueError:
            return documents  # something marshal cannot hold: parsed at every start
        try:
            atomic_write(self._path(digest), encoded)
        except StateWriteError as err:
            logger.debug("manifest parse cache not written: %s", err)
        return documents

    def keep_only(self, digests: set[bytes]) -> None:
        """Remove the entries of file contents no manifest file has any more (and those
        an earlier certctl wrote as JSON)."""
        wanted = {f"{digest.hex()}{_PARSE_CACHE_SUFFIX}" for digest in digests}
        try:
            entries = builtins.list(self._folder.iterdir())
        except OSError:
            return
        for entry in entries:
            if entry.name not in wanted and entry.suffix in (_PARSE_CACHE_SUFFIX, ".json"):
                with contextlib.suppress(OSError):
                    entry.unlink()


def _read_manifest(path: Path, *, previous: _ParsedFile | None,
                   cache: _ParseCache | None = None, keep_now: bool = True) -> _ParsedFile:
    """`path` parsed (or its documents from `cache`, where parsed documents are kept too
    when `keep_now`); if its bytes are those `previous` was parsed from, `previous` itself
    or a record with its very same entries.

    OSError, UnicodeDecodeError or yaml.YAMLError if it cannot be read or parsed.
    """
    started = time.time_ns()
    stat = path.stat()
    signature = (stat.st_mtime_ns, stat.st_ctime_ns, stat.st_size, stat.st_ino)
    if previous is not None and previous.settled and previous.signature == signature:
        return previous
    data = path.read_bytes()
    digest = hashlib.sha256(data).digest()
    settled = max(stat.st_mtime_ns, stat.st_ctime_ns) < started - _TIMESTAMP_SLACK_NS
    if previous is not None and previous.digest == digest:
        return dataclasses.replace(previous, signature=signature, settled=settled)
    documents = None if cache is None else cache.load(digest, data=data)
    # Documents read from the cache share their equal strings (`dump_cache`) and no parts
    # (it builds containers anew; the spans it parses apart it copies apart). Parsed now,
    # each gets a copy with interned keys (`kept_copy`), which also copies apart the parts
    # YAML anchors (`&name`) share between documents.
    parsed_now = documents is None
    if documents is None:
        documents = (cache.store(digest, data=data) if cache is not None and keep_now
                     else parse_manifest(data))
    created = datetime.datetime.fromtimestamp(stat.st_mtime, datetime.UTC).strftime(
        "%Y-%m-%dT%H:%M:%SZ")
    # An edit of one document leaves the others as they were: they keep the objects parsed
    # before, so the store keeps one copy of each (its stored object shares their parts)
    # and what this parse built for them is freed at once.
    earlier: dict[ObjectKey, Object] = {} if previous is None else {
        entry[0]: entry[1] for entry in previous.entries if not isinstance(entry, ManifestError)}
    entries: builtins.list[_Entry] = []
    for index, document in enumerate(_flatten(documents)):
        where = f"{path}#{index}"
        problem = _document_problem(document)
        if problem is not None:
            entries.append(ManifestError(source=where, message=problem))
            continue
        obj = interface.kept_copy(document) if parsed_now else document
        metadata = obj["metadata"]
        info = kinds.lookup(obj["kind"])
        if info is not None and info.namespaced:
            metadata.setdefault("namespace", "default")
        elif info is not None:
            metadata.pop("namespace", None)
        metadata.setdefault("annotations", {})[SOURCE_ANNOTATION] = where
        key = key_of(obj)
        if "uid" not in metadata:
            metadata["uid"] = _stable_uid(key)
        before = earlier.get(key)
        # An object already loaded was created then, not at this edit of its file.
        metadata.setdefault("creationTimestamp", created if before is None else
                            before["metadata"].get("creationTimestamp", created))
        entries.append((key, before if before is not None and before == obj else obj))
    return _ParsedFile(signature=signature, digest=digest, settled=settled,
                       entries=tuple(entries))


def describe_yaml_error(err: yaml.YAMLError) -> str:
    """`invalid YAML at line 2, column 11: did not find expected ',' or ']'`.

    Lines and columns count from 1, as editors show them. Where the parser
    knows where the broken construct began (an unclosed `[`), that line is
    named too, since it is usually the one to fix.
    """
    if not isinstance(err, yaml.MarkedYAMLError) or err.problem_mark is None:
        return f"invalid YAML: {err}"
    mark = err.problem_mark
    message = f"invalid YAML at line {mark.line + 1}, column {mark.column + 1}: {err.problem}"
    context_mark = err.context_mark
    if err.context and context_mark is not None and context_mark.line != mark.line:
        message += (f" ({err.context} that started at line {context_mark.line + 1},"
                    f" column {context_mark.column + 1})")
    elif err.context:
        message += f" ({err.context})"
    return message


def _unquoted(err: Exception) -> object:
    """What to log about an unreadable state file: never PyYAML's own text, which
    quotes the line it stopped at, in a Secret's file its key material."""
    return describe_yaml_error(err) if isinstance(err, yaml.YAMLError) else err


def _flatten(documents: Iterable[Any]) -> Iterator[Any]:
    """Documents of a file, with `kind: List` expanded as kubectl does."""
    for document in documents:
        if document is None:
            continue
        if isinstance(document, dict) and document.get("kind") == "List":
            yield from document.get("items") or []
        else:
            yield document


# API groups whose kinds certctl reads; another kind of these groups is one it does not serve.
_OUR_GROUPS = ("certctl.io", "cert-manager.io", "acme.cert-manager.io")


def _document_problem(document: Any) -> str | None:
    """What makes a document unloadable, or None; it names the object as far as it can.

    Kinds certctl does not know are kept (a folder may hold a whole app's
    manifests), except a near miss of one it knows (`Ingresses`, `Secrets`)
    or another kind of its own API groups (`CertificateRequest`), which would
    otherwise be ignored without a word.
    """
    if not isinstance(document, dict):
        return f"expected a Kubernetes object (a mapping), got {parsing.describe_value(document)}"
    kind = document.get("kind")
    if kind is None or kind == "":
        return "kind: required"
    if not isinstance(kind, str):
        return f"kind: must be a string, got {parsing.describe_value(kind)}"
    api_version = document.get("apiVersion")
    if api_version is None or api_version == "":
        return f"{kind}: apiVersion: required"
    if not isinstance(api_version, str):
        return f"{kind}: apiVersion: must be a string, got {parsing.describe_value(api_version)}"
    metadata = document.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        return f"{kind}: metadata: must be a mapping, got {parsing.describe_value(metadata)}"
    name = (metadata or {}).get("name")
    if name is None or name == "":
        return f"{kind}: metadata.name: required"
    if not isinstance(name, str):
        return (f"{kind}: metadata.name: must be a string, got {parsing.describe_value(name)};"
                " quote the value")
    namespace = (metadata or {}).get("namespace")
    if namespace is not None and not isinstance(namespace, str):
        return (f"{kind} {name}: metadata.namespace: must be a string, got "
                f"{parsing.describe_value(namespace)}; quote the value")
    if kinds.lookup(kind) is None:
        group = api_version.rpartition("/")[0]
        if group in _OUR_GROUPS:
            ours = sorted(info.kind for info in kinds.BY_KIND.values()
                          if info.api_version.startswith("certctl.io/"))
            return (f"{kind} {name}: kind: certctl does not read {kind} objects "
                    f"({api_version}); it reads {', '.join(ours)}")
        close = difflib.get_close_matches(kind, list(kinds.BY_KIND), n=1, cutoff=0.8)
        if close:
            return f"{kind} {name}: kind: unknown kind {kind!r}; did you mean {close[0]!r}?"
    return None

