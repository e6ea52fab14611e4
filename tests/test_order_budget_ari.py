"""ARI renewals and the order budget: the CA exempts them, so certctl does not count them.

A renewal naming the old certificate in `replaces`, placed inside the window the
CA suggested for that certificate, is exempt from Let's Encrypt's limits. Here
the window is the one the Certificate reconciler keeps in `status.acme.ari`
after asking the CA (the test writes it as the CA would have answered).
"""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest

from certctl.api import conditions
from certctl.controllers import certificate_orders, order_budget, policies
from certctl.issuers.acme import ari
from tests.lifecycle import ACME_SERVER, World

DAY = datetime.timedelta(days=1)
# One order in longer than any lifetime here: every order after the first is over budget.
ONE_ORDER = order_budget.Budget(orders=1, window=100 * DAY)


@pytest.fixture
def world(tmp_path: Path) -> World:
    world = World(tmp_path, order_budget=ONE_ORDER)
    world.add_acme_issuer("acme")
    return world


def _requested(world: World, name: str = "web") -> int:
    return sum(1 for _, reason, _ in world.events(name) if reason == "Requested")


def _ca_suggests_window(world: World, *, opens_in: datetime.timedelta) -> str:
    """Store the CA's ARI window for the current certificate; returns its CertID."""
    cert_id = ari.cert_id(world.contents("web").leaf)
    assert cert_id is not None
    start = world.clock.now + opens_in
    obj = world.certificate("web")
    obj["status"]["acme"] = {"ari": {
        "certID": cert_id,
        "lastChecked": conditions.format_time(world.clock.now),
        "nextCheck": conditions.format_time(world.clock.now + 365 * DAY),
        "suggestedWindow": {"start": conditions.format_time(start),
                            "end": conditions.format_time(start + DAY)},
        "selectedTime": conditions.format_time(start),
    }}
    world.store.replace_status(obj=obj)
    return cert_id


def _ledger_count(world: World) -> int:
    ref = order_budget.ledger_ref(server=ACME_SERVER, names=("web.example.test",),
                                  cluster_resource_namespace="certctl")
    return len(order_budget.placed_orders(
        ledger=order_budget.read_ledger(store=world.store, ref=ref)))


def _renew(world: World) -> None:
    obj = world.certificate("web")
    obj["status"]["conditions"].append({"type": "Issuing", "status": "True",
                                        "reason": policies.MANUALLY_TRIGGERED, "message": "renew"})
    world.store.replace_status(obj=obj)


@pytest.mark.parametrize("lifetime", [90 * DAY, 6 * DAY], ids=["90-days", "short-lived"])
def test_an_ari_renewal_is_not_counted(world: World, lifetime: datetime.timedelta) -> None:
    world.add_certificate("web")
    world.issue("web", lifetime=lifetime)
    assert _ledger_count(world) == 1  # the budget is spent
    cert_id = _ca_suggests_window(world, opens_in=lifetime / 2)

    world.clock.advance(seconds=(lifetime / 2).total_seconds())
    world.reconcile("web")

    assert _requested(world) == 2, world.condition("web", "Issuing")
    assert world.pending_order("web")["spec"]["replaces"] == cert_id
    assert _ledger_count(world) == 1
    world.complete_order("web", lifetime=lifetime)
    world.reconcile("web")
    assert world.condition("web", "Ready")["status"] == "True"
    assert _ledger_count(world) == 1


def test_a_renewal_before_the_window_opens_is_counted(world: World) -> None:
    world.add_certificate("web")
    world.issue("web")
    _ca_suggests_window(world, opens_in=30 * DAY)

    world.clock.advance(days=1)
    _renew(world)
    world.reconcile("web")

    assert _requested(world) == 1
    assert world.condition("web", "Issuing")["reason"] == certificate_orders.ORDER_BUDGET_EXHAUSTED


def test_a_window_for_another_certificate_exempts_nothing(world: World) -> None:
    world.add_certificate("web")
    world.issue("web")
    _ca_suggests_window(world, opens_in=DAY)
    obj = world.certificate("web")
    obj["status"]["acme"]["ari"]["certID"] = "aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE"
    world.store.replace_status(obj=obj)

    world.clock.advance(days=2)
    _renew(world)
    world.reconcile("web")

    assert _requested(world) == 1
    assert world.condition("web", "Issuing")["reason"] == certificate_orders.ORDER_BUDGET_EXHAUSTED


def test_an_ari_renewal_the_ca_refused_replaces_for_is_counted_once_issued(
    world: World,
) -> None:
    world.add_certificate("web")
    world.issue("web")
    _ca_suggests_window(world, opens_in=DAY)
    world.clock.advance(days=1)
    world.reconcile("web")
    assert _ledger_count(world) == 1
    # The Order reconciler was refused `replaces` and ordered without it (orders.py).
    name = world.pending_order("web")["metadata"]["name"]
    world.complete_order("web")
    order = world.store.get(kind="Order", namespace="default", name=name)
    assert order is not None
    order["status"]["replacesRefused"] = "urn:ietf:params:acme:error:malformed"
    world.store.replace_status(obj=order)

    world.reconcile("web")

    assert world.condition("web", "Ready")["status"] == "True"
    assert _ledger_count(world) == 2
    _renew(world)
    world.reconcile("web")
    assert world.condition("web", "Issuing")["reason"] == certificate_orders.ORDER_BUDGET_EXHAUSTED
