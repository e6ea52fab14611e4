"""Status conditions and the RFC 3339 timestamps Kubernetes status fields use.

Conditions follow `metav1.Condition`: `type`, `status`, `reason`, `message`,
`lastTransitionTime`, `observedGeneration`. They are kept as plain dicts
because they live in status written back to the store verbatim.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal

ConditionStatus = Literal["True", "False", "Unknown"]

_RFC3339 = re.compile(
    r"(?P<seconds>\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2})"
    r"(?:\.(?P<fraction>\d+))?"
    r"(?P<offset>[Zz]|[+-]\d{2}:\d{2})"
)


def format_time(dt: datetime.datetime) -> str:
    """`2024-05-01T12:00:00Z`: UTC, fractions dropped, as the API server stores it.

    A naive datetime is refused rather than guessed to be UTC or local time.
    """
    if dt.tzinfo is None:
        raise ValueError("a timezone-aware datetime is required")
    return dt.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str) -> datetime.datetime:
    """Parse an RFC 3339 timestamp into an aware UTC datetime.

    Offsets other than Z are converted to UTC; fractional seconds (as in
    `MicroTime` fields) are kept to the microsecond. Date-only and
    space-separated forms that `fromisoformat` would accept are refused.
    """
    match = _RFC3339.fullmatch(text)
    if match is None:
        raise ValueError(f"{text!r} is not an RFC 3339 timestamp such as 2024-05-01T12:00:00Z")
    seconds, fraction, offset = match.group("seconds", "fraction", "offset")
    micro = f".{fraction[:6].ljust(6, '0')}" if fraction else ""
    zone = "+00:00" if offset in ("Z", "z") else offset
    try:
        parsed = datetime.datetime.fromisoformat(f"{seconds.upper()}{micro}{zone}")
    except ValueError as exc:
        raise ValueError(f"{text!r} is not a valid timestamp: {exc}") from exc
    return parsed.astimezone(datetime.UTC)


def get_condition(conditions: Sequence[Mapping[str, Any]], type: str) -> dict[str, Any] | None:
    """A copy of the condition of that type, or None when it has never been set."""
    for condition in conditions:
        if condition.get("type") == type:
            return dict(condition)
    return None


def is_true(conditions: Sequence[Mapping[str, Any]], type: str) -> bool:
    """True only when the condition exists with status "True"; missing means not true."""
    condition = get_condition(conditions, type)
    return condition is not None and condition.get("status") == "True"


def set_condition(
    conditions: Sequence[Mapping[str, Any]],
    *,
    type: str,
    status: ConditionStatus,
    reason: str,
    message: str,
    now: datetime.datetime,
    observed_generation: int,
) -> list[dict[str, Any]]:
    """Return a new list with the condition of `type` set; the input is not modified.

    `lastTransitionTime` moves only when the status changes, so it tells the
    user how long the object has been (not) Ready even though reconcilers set
    the condition on every pass. A new condition type is appended; existing
    ones keep their position so status diffs stay small.
    """
    updated: list[dict[str, Any]] = []
    found = False
    for existing in conditions:
        condition = dict(existing)
        if condition.get("type") == type:
            found = True
            if condition.get("status") != status or "lastTransitionTime" not in condition:
                condition["lastTransitionTime"] = format_time(now)
            condition.update(
                status=status,
                reason=reason,
                message=message,
                observedGeneration=observed_generation,
            )
        updated.append(condition)
    if not found:
        updated.append(
            {
                "type": type,
                "status": status,
                "reason": reason,
                "message": message,
                "lastTransitionTime": format_time(now),
                "observedGeneration": observed_generation,
            }
        )
    return updated
