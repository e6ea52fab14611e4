"""Failed issuances back off 1 h doubling to 32 h, or as long as the CA asks; a spec change resets.

The clock is the test's: every wait is checked by moving it, never by sleeping.
"""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest

from certctl.api import conditions
from tests.lifecycle import World

HOUR = 3600.0


@pytest.fixture
def world(tmp_path: Path) -> World:
    world = World(tmp_path)
    world.add_acme_issuer("acme")
    world.add_certificate("web")
    world.reconcile("web")
    return world


def _requested(world: World) -> int:
    """Orders placed so far (failed ones are deleted when the next one is placed)."""
    return sum(1 for _, reason, _ in world.events("web") if reason == "Requested")


def _fail(world: World, **kwargs: object) -> float | None:
    world.fail_order("web", **kwargs)  # type: ignore[arg-type]
    return world.reconcile("web").requeue_after


def test_each_failure_doubles_the_wait_from_one_hour_up_to_32_hours(world: World) -> None:
    waits = []
    for attempt in range(1, 9):
        failed_at = world.clock.now
        wait = _fail(world)
        assert wait is not None
        waits.append(wait / HOUR)
        status = world.status("web")
        assert status["failedIssuanceAttempts"] == attempt
        assert status["lastFailureTime"] == conditions.format_time(failed_at)

        # Just before the wait is over, reconciling places no new order...
        world.clock.advance(seconds=wait - 1)
        placed = _requested(world)
        assert world.reconcile("web").requeue_after == pytest.approx(1.0)
        assert _requested(world) == placed
        # ...and when it is, it places exactly one.
        world.clock.advance(seconds=1)
        world.reconcile("web")
        world.reconcile("web")
        assert _requested(world) == placed + 1

    assert waits == [1, 2, 4, 8, 16, 32, 32, 32]


def test_failure_is_explained_and_keeps_a_valid_certificate_ready(world: World) -> None:
    world.complete_order("web")
    world.reconcile("web")
    world.clock.set(conditions.parse_time(world.status("web")["renewalTime"]))
    world.reconcile("web")

    _fail(world, reason="urn:ietf:params:acme:error:unauthorized: the CA said no")

    issuing = world.condition("web", "Issuing")
    assert (issuing["status"], issuing["reason"]) == ("False", "Failed")
    assert issuing["message"] == (
        "The certificate request has failed to complete and will be retried: "
        "urn:ietf:params:acme:error:unauthorized: the CA said no")
    assert world.condition("web", "Ready")["status"] == "True"  # still valid: still serving
    assert ("Warning", "Failed", issuing["message"]) in world.events("web")


def test_reconciling_a_failed_order_again_counts_it_once(world: World) -> None:
    _fail(world)
    world.reconcile("web")
    world.reconcile("web")
    assert world.status("web")["failedIssuanceAttempts"] == 1


def test_a_spec_change_retries_at_once_and_resets_the_count(world: World) -> None:
    _fail(world)
    world.clock.advance(seconds=HOUR)
    world.reconcile("web")
    _fail(world)
    assert world.status("web")["failedIssuanceAttempts"] == 2

    world.edit_spec("web", dnsNames=["web.example.test", "www.example.test"])
    world.reconcile("web")

    order = world.pending_order("web")
    assert order["spec"]["dnsNames"] == ["web.example.test", "www.example.test"]
    assert _fail(world) == pytest.approx(HOUR)
    assert world.status("web")["failedIssuanceAttempts"] == 1


def test_retry_after_from_the_ca_is_respected_when_longer_than_the_backoff(world: World) -> None:
    later = world.clock.now + datetime.timedelta(hours=30)
    wait = _fail(world, reason="urn:ietf:params:acme:error:rateLimited: too many certificates",
                 retry_after=later)

    assert wait == pytest.approx(30 * HOUR)
    assert world.status("web")["retryAfter"] == conditions.format_time(later)
    world.clock.advance(hours=29)
    placed = _requested(world)
    assert world.reconcile("web").requeue_after == pytest.approx(HOUR)
    assert _requested(world) == placed
    world.clock.advance(hours=1)
    world.reconcile("web")
    assert _requested(world) == placed + 1


def test_retry_after_shorter_than_the_backoff_does_not_shorten_it(world: World) -> None:
    wait = _fail(world, retry_after=world.clock.now + datetime.timedelta(minutes=5))
    assert wait == pytest.approx(HOUR)


def test_success_clears_the_failure_record(world: World) -> None:
    _fail(world, retry_after=world.clock.now + datetime.timedelta(hours=2))
    world.clock.advance(hours=2)
    world.reconcile("web")
    world.complete_order("web")
    world.reconcile("web")

    status = world.status("web")
    for cleared in ("failedIssuanceAttempts", "lastFailureTime", "retryAfter"):
        assert cleared not in status
    assert world.condition("web", "Ready")["status"] == "True"


def test_backoff_base_is_configurable(tmp_path: Path) -> None:
    world = World(tmp_path, backoff_base=datetime.timedelta(seconds=2))
    world.add_acme_issuer("acme")
    world.add_certificate("web")
    world.reconcile("web")
    assert _fail(world) == pytest.approx(2.0)
    world.clock.advance(seconds=2)
    world.reconcile("web")
    assert _fail(world) == pytest.approx(4.0)
