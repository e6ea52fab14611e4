import datetime
from typing import Any

import pytest

from certctl.api import conditions

T0 = datetime.datetime(2024, 5, 1, 12, 0, 0, tzinfo=datetime.UTC)
T1 = T0 + datetime.timedelta(minutes=5)


def _set(
    existing: list[dict[str, Any]],
    *,
    status: conditions.ConditionStatus,
    reason: str = "R",
    message: str = "m",
    now: datetime.datetime = T0,
    generation: int = 1,
    type: str = "Ready",
) -> list[dict[str, Any]]:
    return conditions.set_condition(
        existing,
        type=type,
        status=status,
        reason=reason,
        message=message,
        now=now,
        observed_generation=generation,
    )


def test_new_condition_is_appended_with_all_fields():
    result = _set([], status="True", reason="Issued", message="ok")
    assert result == [
        {
            "type": "Ready",
            "status": "True",
            "reason": "Issued",
            "message": "ok",
            "lastTransitionTime": "2024-05-01T12:00:00Z",
            "observedGeneration": 1,
        }
    ]


def test_transition_time_stays_when_status_unchanged():
    first = _set([], status="False", reason="Pending")
    second = _set(first, status="False", reason="Ordering", message="new", now=T1, generation=2)
    assert second[0]["lastTransitionTime"] == "2024-05-01T12:00:00Z"
    assert second[0]["reason"] == "Ordering"
    assert second[0]["message"] == "new"
    assert second[0]["observedGeneration"] == 2


def test_transition_time_moves_when_status_changes():
    first = _set([], status="False")
    second = _set(first, status="True", now=T1)
    assert second[0]["lastTransitionTime"] == "2024-05-01T12:05:00Z"


def test_set_condition_returns_new_list_and_leaves_input_alone():
    first = _set([], status="False")
    snapshot = [dict(c) for c in first]
    _set(first, status="True", now=T1)
    assert first == snapshot


def test_other_conditions_keep_their_position():
    start = _set(_set([], status="True", type="Ready"), status="True", type="Issuing")
    result = _set(start, status="False", type="Ready", now=T1)
    assert [c["type"] for c in result] == ["Ready", "Issuing"]
    assert result[1] == start[1]


def test_get_condition_and_is_true():
    conds = _set(_set([], status="True", type="Ready"), status="False", type="Issuing")
    ready = conditions.get_condition(conds, "Ready")
    assert ready is not None
    assert ready["status"] == "True"
    assert conditions.get_condition(conds, "Missing") is None
    assert conditions.is_true(conds, "Ready") is True
    assert conditions.is_true(conds, "Issuing") is False
    assert conditions.is_true(conds, "Missing") is False


def test_format_time_converts_to_utc_and_drops_fraction():
    tz = datetime.timezone(datetime.timedelta(hours=2))
    dt = datetime.datetime(2024, 5, 1, 14, 0, 0, 987654, tzinfo=tz)
    assert conditions.format_time(dt) == "2024-05-01T12:00:00Z"


def test_format_time_refuses_naive_datetime():
    with pytest.raises(ValueError, match="timezone-aware"):
        conditions.format_time(datetime.datetime(2024, 5, 1))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-05-01T12:00:00Z", T0),
        ("2024-05-01T14:00:00+02:00", T0),
        ("2024-05-01t12:00:00z", T0),
        ("2024-05-01T12:00:00.5Z", T0 + datetime.timedelta(milliseconds=500)),
        ("2024-05-01T12:00:00.123456789Z", T0 + datetime.timedelta(microseconds=123456)),
    ],
)
def test_parse_time_accepts_rfc3339(text, expected):
    parsed = conditions.parse_time(text)
    assert parsed == expected
    assert parsed.tzinfo == datetime.UTC


@pytest.mark.parametrize(
    "text", ["2024-05-01", "2024-05-01 12:00:00Z", "2024-05-01T12:00:00", "2024-13-01T00:00:00Z"]
)
def test_parse_time_refuses_non_rfc3339(text):
    with pytest.raises(ValueError, match="timestamp"):
        conditions.parse_time(text)


def test_format_and_parse_round_trip():
    assert conditions.parse_time(conditions.format_time(T0)) == T0
