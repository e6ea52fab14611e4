"""An ACME issuance is told of in the Certificate's status only when it takes a while.

Most orders end within a second; their Certificate's status is written once, at the end,
and the Issuing Event says which Order issued it and why (`Settings.untold_issuance`).
One still running a second later is told of then, as before: Issuing, Requested.
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import pytest

from certctl.api.resources import ObjectKey
from certctl.controllers import certificate_settings
from certctl.store.interface import Object
from tests.lifecycle import World

UNTOLD = datetime.timedelta(seconds=1)
KEY = ObjectKey(kind="Certificate", namespace="default", name="web")
NOT_THERE = "Issuing certificate as Secret does not exist"


class StatusWrites:
    """The Certificate status writes the store took, each as its conditions' (type, status)."""

    def __init__(self, world: World) -> None:
        self.written: list[list[tuple[str, str]]] = []
        replace_status = world.store.replace_status

        def counting(*, obj: Object) -> Object:
            if obj["kind"] == "Certificate":
                self.written.append([(c["type"], c["status"])
                                     for c in obj["status"].get("conditions") or []])
            return replace_status(obj=obj)

        world.store.replace_status = counting  # type: ignore[method-assign]


@pytest.fixture
def world(tmp_path: Path) -> World:
    world = World(tmp_path, untold_issuance=UNTOLD)
    world.add_acme_issuer("acme")
    return world


def _normal_events(world: World) -> list[tuple[str, str]]:
    return [(reason, message) for type, reason, message in world.events("web")
            if type == "Normal"]


def test_an_issuance_done_within_the_second_writes_the_status_once(world: World) -> None:
    writes = StatusWrites(world)
    world.add_certificate("web")
    started = world.reconcile("web")
    order = world.pending_order("web")["metadata"]["name"]
    assert writes.written == [] and world.status("web") == {}
    assert _normal_events(world) == []
    # Woken then to tell of it, unless the Order's progress comes first.
    assert started.requeue_after == pytest.approx(UNTOLD.total_seconds())

    world.clock.advance(seconds=0.4)
    world.complete_order("web")
    world.reconcile("web")
    assert world.condition("web", "Ready")["status"] == "True"
    assert writes.written == [[("Ready", "True")]]
    assert _normal_events(world) == [
        ("Issuing", f"The certificate has been successfully issued by Order {order} "
         f"({NOT_THERE})")]
    assert world.settings.untold.get(KEY) is None


def test_an_issuance_still_running_a_second_later_is_told_of_then(world: World) -> None:
    writes = StatusWrites(world)
    world.add_certificate("web")
    world.reconcile("web")
    order = world.pending_order("web")["metadata"]["name"]
    world.clock.advance(seconds=0.6)
    waiting = world.reconcile("web")  # the Order's progress woke it: not a second yet
    assert writes.written == [] and _normal_events(world) == []
    assert waiting.requeue_after == pytest.approx(0.4)

    world.clock.advance(seconds=0.4)
    told = world.reconcile("web")
    issuing = world.condition("web", "Issuing")
    assert (issuing["status"], issuing["reason"], issuing["message"]) == (
        "True", "DoesNotExist", NOT_THERE)
    assert world.condition("web", "Ready")["status"] == "False"
    assert _normal_events(world) == [("Requested", f"Created new Order {order}: {NOT_THERE}")]
    assert told.requeue_after is None  # the Order's progress wakes the Certificate
    world.reconcile("web")
    assert len(writes.written) == 1 and len(_normal_events(world)) == 1  # told once

    world.complete_order("web")
    world.reconcile("web")
    assert world.condition("web", "Ready")["status"] == "True"
    assert _normal_events(world)[1:] == [
        ("Issuing", "The certificate has been successfully issued")]


def test_a_restarted_controller_tells_of_the_pending_issuance_at_once(world: World) -> None:
    world.add_certificate("web")
    world.reconcile("web")
    assert world.status("web") == {}
    # The new process's settings remember nothing this one started.
    fields: dict[str, Any] = {"clock": world.clock, "untold_issuance": UNTOLD}
    world.settings = certificate_settings.Settings(**fields)
    world.reconcile("web")
    assert world.condition("web", "Issuing")["status"] == "True"
    assert len(world.orders("web")) == 1  # the same Order, not a second


def test_an_issuance_failing_within_the_second_forgets_it(world: World) -> None:
    world.add_certificate("web")
    world.reconcile("web")
    world.fail_order("web")
    world.reconcile("web")
    issuing = world.condition("web", "Issuing")
    assert (issuing["status"], issuing["reason"]) == ("False", "Failed")
    assert [reason for reason, _ in _normal_events(world)] == []
    assert world.settings.untold.get(KEY) is None


def test_a_deleted_certificate_is_forgotten(world: World) -> None:
    world.add_certificate("web")
    world.reconcile("web")
    assert world.settings.untold.get(KEY) is not None
    world.store.delete(kind="Certificate", namespace="default", name="web")
    world.reconcile("web")
    assert world.settings.untold.get(KEY) is None
