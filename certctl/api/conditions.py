"""Status conditions and the RFC 3339 timestamps Kubernetes status fields use.

Conditions follow `metav1.Condition`: `type`, `status`, `reason`, `message`,
`lastTransitionTime`, `observedGeneration`. Typed statuses (`certctl.api.status`)
hold them as `Condition`s (`updated`); code editing a stored status dict
directly (`certctl renew`) uses `set_condition`, the same rule on dicts.
"""

from __future__ import annotations

import datetime
import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Final, Literal

ConditionStatus = Literal["True", "False", "Unknown"]

CONDITION_STATUSES: Final[tuple[ConditionStatus, ...]] = ("True", "False", "Unknown")

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


@functools.lru_cache(maxsize=4096)
def parse_time(text: str) -> datetime.datetime:
    """Parse an RFC 3339 timestamp into an aware UTC datetime.

    Offsets other than Z are converted to UTC; fractional seconds (as in
    `MicroTime` fields) are kept to the microsecond. Date-only and
    space-separated forms that `fromisoformat` would accept are refused.

    Remembered: each pass of a Certificate reads the same few times from its status some
    fifteen times (B2's profile), and a datetime is immutable.
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


@dataclass(frozen=True, kw_only=True)
class Condition:
    """One entry of `status.conditions`; `last_transition_time` is an aware datetime."""

    type: str
    status: ConditionStatus
    reason: str | None = None
    message: str | None = None
    last_transition_time: datetime.datetime | None = None
    observed_generation: int | None = None

    @classmethod
    def from_stored(cls, stored: object) -> Condition | None:
        """None for an entry without the type and status the CRDs require; other fields of
        the wrong type read as unset."""
        if not isinstance(stored, Mapping):
            return None
        type, status = stored.get("type"), stored.get("status")
        condition_status = next((s for s in CONDITION_STATUSES if s == status), None)
        if not isinstance(type, str) or condition_status is None:
            return None
        reason, message = stored.get("reason"), stored.get("message")
        generation = stored.get("observedGeneration")
        return cls(
            type=type,
            status=condition_status,
            reason=reason if isinstance(reason, str) else None,
            message=message if isinstance(message, str) else None,
            last_transition_time=_stored_time(stored.get("lastTransitionTime")),
            observed_generation=(generation if isinstance(generation, int)
                                 and not isinstance(generation, bool) else None),
        )

    def to_dict(self) -> dict[str, Any]:
        fields = {
            "type": self.type,
            "status": self.status,
            "reason": self.reason,
            "message": self.message,
            "lastTransitionTime": (format_time(self.last_transition_time)
                                   if self.last_transition_time is not None else None),
            "observedGeneration": self.observed_generation,
        }
        return {key: value for key, value in fields.items() if value is not None}


def read_conditions(stored: object) -> list[Condition]:
    """A stored `status.conditions` list, without the entries that are no conditions."""
    return [condition for entry in (stored if isinstance(stored, list) else ())
            if (condition := Condition.from_stored(entry)) is not None]


def _stored_time(value: object) -> datetime.datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return parse_time(value)
    except ValueError:
        return None


def updated(
    conditions: Sequence[Condition],
    *,
    type: str,
    status: ConditionStatus,
    reason: str,
    message: str,
    now: datetime.datetime,
    observed_generation: int,
) -> list[Condition]:
    """A new list with the condition of `type` set; the input is not modified.

    `lastTransitionTime` moves only when the status changes, so it tells the
    user how long the object has been (not) Ready even though reconcilers set
    the condition on every pass. A new condition type is appended; existing
    ones keep their position so status diffs stay small.
    """
    setting = Condition(type=type, status=status, reason=reason, message=message,
                        last_transition_time=now, observed_generation=observed_generation)
    result: list[Condition] = []
    for condition in conditions:
        if condition.type != type:
            result.append(condition)
        elif condition.status == status and condition.last_transition_time is not None:
            result.append(replace(setting, last_transition_time=condition.last_transition_time))
        else:
            result.append(setting)
    if not any(condition.type == type for condition in conditions):
        result.append(setting)
    return result


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
    """`updated`, for a kind whose status is not typed yet: conditions as stored dicts
    (entries that are no conditions are dropped); the input is not modified."""
    return [condition.to_dict() for condition in updated(
        read_conditions(list(conditions)), type=type, status=status, reason=reason,
        message=message, now=now, observed_generation=observed_generation)]
