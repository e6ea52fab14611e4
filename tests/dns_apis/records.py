"""The record store behind the local DNS API servers: what a provider's DNS would serve."""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class Record:
    id: str
    zone: str  # without the trailing dot, as the HTTP APIs write names
    name: str  # fully qualified, no trailing dot
    type: str
    content: str
    ttl: int


class RecordStore:
    """Thread-safe records by zone; a TXT value may appear twice if an API allows that."""

    def __init__(self, *, zones: tuple[str, ...]) -> None:
        self.zones = {zone.rstrip(".").lower(): f"zone-{index}"
                      for index, zone in enumerate(zones, start=1)}
        self._records: list[Record] = []
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def zone_id(self, zone: str) -> str | None:
        return self.zones.get(zone.rstrip(".").lower())

    def zone_name(self, zone_id: str) -> str | None:
        return next((name for name, known in self.zones.items() if known == zone_id), None)

    def add(self, *, zone: str, name: str, type: str, content: str, ttl: int) -> Record:
        with self._lock:
            record = Record(id=str(next(self._ids)), zone=zone.rstrip(".").lower(),
                            name=name.rstrip(".").lower(), type=type, content=content, ttl=ttl)
            self._records.append(record)
            return record

    def find(self, *, zone: str | None = None, name: str | None = None,
             type: str | None = None) -> list[Record]:
        with self._lock:
            return [r for r in self._records
                    if (zone is None or r.zone == zone.rstrip(".").lower())
                    and (name is None or r.name == name.rstrip(".").lower())
                    and (type is None or r.type == type)]

    def remove(self, record_id: str) -> bool:
        with self._lock:
            before = len(self._records)
            self._records = [r for r in self._records if r.id != record_id]
            return len(self._records) != before

    def txt_values(self, fqdn: str) -> list[str]:
        """Every TXT value at `fqdn`, duplicates included, in the order they were added."""
        return [r.content for r in self.find(name=fqdn, type="TXT")]
