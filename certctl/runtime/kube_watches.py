"""Watch streams that keep a `WatchCache` current: client-go's reflector.

The cache's `seed` lists each kind at a version; a watch from that version
brings every change after it, so nothing falls between the listing and the
watch, and each change reaches the listener once, after the cache has it. When
the server no longer keeps that version (410 Gone, after a long disconnect)
the kind is listed again, and what changed meanwhile, deletions included, is
told as events. A stream the server ends (at `WATCH_SECONDS`) or a dropped
connection resumes from the last version seen, which bookmarks keep recent.

Why not kopf, which watched for both before: kopf lists every kind again
when its watches start, and runs each object of that listing and each event
through its per-object machinery (a worker task, a diff base, cause
detection) before a handler hands it on. For a data-plane replica starting
against 10,000 Ingresses and Secrets that was most of its start-up, and in
the controller issuing 1,000 certificates a fifth of its CPU (bench B8's
profiles); both need the objects, not kopf's handlers.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable

from certctl.controllers import reconciling
from certctl.runtime import workqueue
from certctl.store.interface import StoreError, WatchEvent, WatchType
from certctl.store.kube import KubeStore, WatchExpired
from certctl.store.watch_cache import WatchCache

logger = logging.getLogger(__name__)

Listener = Callable[[WatchEvent], None]

# How long the server keeps one stream open: 5 to 10 minutes, spread as client-go spreads
# them so that replicas do not reconnect together.
WATCH_SECONDS = (300, 600)
EVENT_TYPES: dict[str, WatchType] = {"ADDED": "ADDED", "MODIFIED": "MODIFIED",
                                     "DELETED": "DELETED"}
# A stream that ended sooner than this is retried after a delay, as a failed one.
SHORTEST_STREAM = 1.0
# Between attempts after a stream failed (the API server down, a connection refused).
RETRY = workqueue.Backoff(initial=0.5, maximum=30.0)


class KubeWatches:
    """One thread per kind cached and namespace listed, each watching from the listing."""

    def __init__(self, *, store: KubeStore, cache: WatchCache, listener: Listener) -> None:
        self._store = store
        self._cache = cache
        self._listener = listener
        self._stopping = threading.Event()
        self._watched: set[tuple[str, str | None]] = set()  # (kind, namespace) with a thread

    def start(self) -> None:
        """Watch each kind the cache holds (again callable: starts the ones it lacks, for
        kinds cached since, such as Gateway API CRDs installed later)."""
        for kind, listings in self._cache.listed_at().items():
            for namespace, version in listings:
                if (kind, namespace) in self._watched:
                    continue
                self._watched.add((kind, namespace))
                threading.Thread(target=self._run, args=(kind, namespace, version),
                                 name=f"watch-{kind}", daemon=True).start()

    def watch_late_kinds(self) -> None:
        """List the kinds whose listing failed so far (Gateway API CRDs installed later, a
        Role granted later); tell the listener each object of those now listed, and watch
        them. The kinds watched need no listing again: their watches miss nothing."""
        late = self._cache.uncached()
        if not late:
            return
        self._cache.seed(kinds=late)
        for kind in late - self._cache.uncached():
            for obj in self._cache.list(kind=kind):
                self._listener(WatchEvent(type="ADDED", obj=obj, key=reconciling.key_of(obj)))
        self.start()

    def stop(self) -> None:
        """Stops the threads once the store is closed (which ends their streams)."""
        self._stopping.set()

    def _run(self, kind: str, namespace: str | None, since: int | None) -> None:
        """`since` None: the server's versions are no integers (etcd's are, so a real API
        server's), and the watch starts without one: every object comes again, each told
        to the listener once more (such versions cannot be compared), at every stream."""
        failures = 0
        while not self._stopping.is_set():
            started = time.monotonic()
            try:
                since = self._follow(kind, namespace, since)
                if time.monotonic() - started > SHORTEST_STREAM:
                    failures = 0
                    continue
                why = "the API server ended the stream at once"  # not asked again at once
            except WatchExpired:
                logger.info("watching %s: its version expired; listing it again", kind)
                listed = self._list_again(kind, namespace)
                if listed is not None:
                    since = listed
                    continue
                why = "listing it again failed"
            except StoreError as err:
                why = str(err)
            if self._stopping.is_set():
                return
            failures += 1
            delay = RETRY.delay(failures)
            logger.warning("watching %s failed (%s); again in %.1f s", kind, why, delay)
            self._stopping.wait(delay)

    def _follow(self, kind: str, namespace: str | None, since: int | None) -> int | None:
        """One stream: each change to the cache, then the listener. The last version seen."""
        seconds = random.randint(*WATCH_SECONDS)  # noqa: S311 a spread, not a secret
        for event_type, obj in self._store.watch(kind=kind, namespace=namespace, since=since,
                                                 seconds=seconds):
            metadata = obj.get("metadata") or {}
            version = str(metadata.get("resourceVersion"))
            if version.isdigit():
                since = int(version)
            if event_type not in EVENT_TYPES or "name" not in metadata:
                continue  # a BOOKMARK: only its version counts
            event = WatchEvent(type=EVENT_TYPES[event_type], obj=obj,
                               key=reconciling.key_of(obj))  # `watch` sets its kind
            if self._cache.apply(event):
                self._listener(event)
            if self._stopping.is_set():
                break
        return since

    def _list_again(self, kind: str, namespace: str | None) -> int | None:
        """List the kind and tell what changed; the version to watch from next, None when
        the listing failed (`seed` logs why and keeps the cache as it was)."""
        before = self._cache.listed_at().get(kind)
        for change in self._cache.seed(kinds=(kind,)):
            self._listener(change)
        after = self._cache.listed_at().get(kind)
        if after is None or after == before:
            return None
        for listed_namespace, version in after:
            if listed_namespace == namespace:
                return version
        return None
