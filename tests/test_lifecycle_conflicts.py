"""Two Certificates naming one Secret: the newer stands down, nobody overwrites in a loop."""

from __future__ import annotations

from pathlib import Path

import pytest

from certctl.controllers import certificate_status, secret_claims
from certctl.pki import inspect
from tests.lifecycle import World


@pytest.fixture
def world(tmp_path: Path) -> World:
    world = World(tmp_path)
    world.add_acme_issuer("acme")
    return world


def _requested(world: World, name: str) -> int:
    return sum(1 for _, reason, _ in world.events(name) if reason == "Requested")


def _serial(world: World) -> int:
    return world.contents("shared").leaf.serial_number


def _assert_stood_down(world: World, name: str, *, holder: str) -> None:
    ready = world.condition(name, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", secret_claims.DUPLICATE_SECRET_NAME)
    assert ready["message"].startswith(
        f"Secret shared is also the spec.secretName of Certificate default/{holder}, which is "
        "older")
    assert ready["message"].endswith("this Certificate issues nothing until one of them names "
                                     "another Secret")


def test_newer_certificate_naming_a_held_secret_issues_nothing(world: World) -> None:
    world.add_certificate("older", secretName="shared")
    world.issue("older")
    world.clock.advance(seconds=1)
    world.add_certificate("newer", secretName="shared")

    result = world.reconcile("newer")

    _assert_stood_down(world, "newer", holder="older")
    assert world.orders("newer") == []
    assert result.requeue_after == certificate_status.DUPLICATE_RECHECK_SECONDS
    assert ("Warning", secret_claims.DUPLICATE_SECRET_NAME,
            world.condition("newer", "Ready")["message"]) in world.events("newer")


def test_both_ordering_at_once_settle_on_the_older_without_a_loop(world: World) -> None:
    world.add_certificate("older", secretName="shared", dnsNames=["a.example.test"])
    world.clock.advance(seconds=1)
    world.add_certificate("newer", secretName="shared", dnsNames=["b.example.test"])
    world.reconcile("older")
    world.reconcile("newer")  # the Secret does not exist yet: both have an Order in flight
    # The newer one's Order completes first and its certificate lands in the Secret.
    world.complete_order("newer")
    world.reconcile("newer")
    world.complete_order("older")
    world.reconcile("older")

    assert world.contents("shared").leaf.subject.rfc4514_string() == ""
    held_by_older = _serial(world)
    assert (world.secret("shared") or {})["metadata"]["annotations"][
        "cert-manager.io/certificate-name"] == "older"
    _assert_stood_down(world, "newer", holder="older")

    for _ in range(5):  # whatever wakes them, they do not take turns
        world.reconcile("newer")
        world.reconcile("older")
    assert _serial(world) == held_by_older
    assert (_requested(world, "older"), _requested(world, "newer")) == (1, 1)
    assert world.condition("older", "Ready")["status"] == "True"
    _assert_stood_down(world, "newer", holder="older")


def test_older_certificate_takes_a_secret_over_from_a_newer_one(world: World) -> None:
    world.add_certificate("older", secretName="older-tls")
    world.clock.advance(seconds=1)
    world.add_certificate("newer", secretName="shared")
    world.issue("newer")
    assert world.condition("newer", "Ready")["status"] == "True"

    world.edit_spec("older", secretName="shared")
    world.issue("older")

    assert (world.secret("shared") or {})["metadata"]["annotations"][
        "cert-manager.io/certificate-name"] == "older"
    assert world.condition("older", "Ready")["status"] == "True"
    # Marked by the older one at once: the newer one is not woken by the Secret's events.
    _assert_stood_down(world, "newer", holder="older")
    world.reconcile("newer")
    _assert_stood_down(world, "newer", holder="older")


def test_creation_in_the_same_second_is_settled_by_name(world: World) -> None:
    world.add_certificate("beta", secretName="shared")
    world.add_certificate("alpha", secretName="shared")
    world.issue("beta")
    world.reconcile("alpha")
    world.reconcile("beta")  # beta wrote the Secret, but alpha sorts first
    _assert_stood_down(world, "beta", holder="alpha")


def test_the_newer_one_takes_over_when_the_older_is_deleted(world: World) -> None:
    world.add_certificate("older", secretName="shared", dnsNames=["a.example.test"])
    world.issue("older")
    world.clock.advance(seconds=1)
    world.add_certificate("newer", secretName="shared", dnsNames=["b.example.test"])
    assert world.reconcile("newer").requeue_after == certificate_status.DUPLICATE_RECHECK_SECONDS

    world.store.delete(kind="Certificate", namespace="default", name="older")
    world.clock.advance(seconds=certificate_status.DUPLICATE_RECHECK_SECONDS)
    world.issue("newer")

    assert world.condition("newer", "Ready")["status"] == "True"
    assert inspect.certificate_info(world.contents("shared").leaf).dns_names == (
        "b.example.test",)
