"""Errors raised while reading user objects.

Every message names the object and the field, so a user can find and fix the
input without reading certctl's source.
"""

from __future__ import annotations


class InvalidObject(ValueError):
    """An object failed validation: `source` is the file it came from, when known."""

    def __init__(
        self,
        *,
        kind: str,
        namespace: str | None,
        name: str,
        field: str,
        message: str,
        source: str | None = None,
    ) -> None:
        self.kind = kind
        self.namespace = namespace
        self.name = name
        self.field = field
        self.message = message
        self.source = source
        super().__init__(str(self))

    @property
    def detail(self) -> str:
        """`field: message`, for places that already name the object (conditions, events)."""
        return f"{self.field}: {self.message}"

    def __str__(self) -> str:
        where = f"{self.source}: " if self.source else ""
        obj = f"{self.namespace}/{self.name}" if self.namespace else self.name
        return f"{where}{self.kind} {obj}: {self.field}: {self.message}"
