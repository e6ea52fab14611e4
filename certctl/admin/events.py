"""The last Events a process emitted, kept for the dashboard.

`certctl serve` has no Event API (its store logs events), and in a cluster
listing Events would need a right the controller's Role does not grant; so
the dashboard shows what this process emitted since it started, the newest
first. `EventRecorder` is a Store that forwards everything to the store it
wraps and keeps a copy of each `emit_event`: the reconcilers and the data
plane feed get it instead of the store, and nothing else changes for them.
"""

from __future__ import annotations

import collections
import datetime
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from certctl.store.interface import EventType, ForwardingStore, Store

KEPT_EVENTS = 200


@dataclass(frozen=True, kw_only=True)
class RecordedEvent:
    time: datetime.datetime
    type: EventType
    reason: str
    message: str
    kind: str
    namespace: str | None
    name: str


class EventRecorder(ForwardingStore):
    """A Store that remembers the last `keep` events emitted through it."""

    def __init__(self, *, store: Store, keep: int = KEPT_EVENTS,
                 now: Callable[[], datetime.datetime] | None = None) -> None:
        super().__init__(backing=store)
        self._events: collections.deque[RecordedEvent] = collections.deque(maxlen=keep)
        self._lock = threading.Lock()
        self._now = now or (lambda: datetime.datetime.now(datetime.UTC))

    def recent(self) -> list[RecordedEvent]:
        """The kept events, the newest first."""
        with self._lock:
            return list(reversed(self._events))

    def emit_event(self, *, obj: Mapping[str, Any], type: EventType, reason: str,
                   message: str) -> None:
        metadata = obj.get("metadata") or {}
        with self._lock:
            self._events.append(RecordedEvent(
                time=self._now(), type=type, reason=reason, message=message,
                kind=str(obj.get("kind", "")), namespace=metadata.get("namespace"),
                name=str(metadata.get("name", ""))))
        self.backing.emit_event(obj=obj, type=type, reason=reason, message=message)
