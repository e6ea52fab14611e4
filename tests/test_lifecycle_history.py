"""Order history is bounded by revisionHistoryLimit (default 1, as in cert-manager 1.18+)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from certctl.controllers import certificate_orders, policies
from tests.lifecycle import World


def _renew(world: World) -> None:
    obj = world.certificate("web")
    obj["status"]["conditions"].append({"type": "Issuing", "status": "True",
                                        "reason": policies.MANUALLY_TRIGGERED, "message": "renew"})
    world.store.replace_status(obj=obj)


def _revisions(world: World) -> list[str]:
    return sorted(o["metadata"]["annotations"][certificate_orders.REVISION_ANNOTATION]
                  for o in world.orders("web"))


@pytest.mark.parametrize(("spec", "kept"), [({}, ["4"]), ({"revisionHistoryLimit": 2}, ["3", "4"])],
                         ids=["default", "limit-2"])
def test_only_the_latest_orders_are_kept(tmp_path: Path, spec: dict[str, Any],
                                         kept: list[str]) -> None:
    world = World(tmp_path, order_budget=None)
    world.add_acme_issuer("acme")
    world.add_certificate("web", **spec)
    world.issue("web")
    for _ in range(3):
        _renew(world)
        world.issue("web")

    assert world.status("web")["revision"] == 4
    assert _revisions(world) == kept


def test_a_failed_order_of_the_current_revision_goes_when_the_next_one_succeeds(
    tmp_path: Path,
) -> None:
    world = World(tmp_path)
    world.add_acme_issuer("acme")
    world.add_certificate("web", revisionHistoryLimit=1)
    world.reconcile("web")
    world.fail_order("web")
    world.clock.advance(seconds=world.reconcile("web").requeue_after or 0)
    world.issue("web")

    (order,) = world.orders("web")
    assert order["status"]["state"] == "valid"
