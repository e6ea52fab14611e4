"""Never spend the CA's rate limits by accident: kept copies and the order budget."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest

from certctl.api import conditions
from certctl.controllers import certificate_orders, kept_certificates, policies
from tests.lifecycle import World

DAY = datetime.timedelta(days=1)


@pytest.fixture
def world(tmp_path: Path) -> World:
    world = World(tmp_path)
    world.add_acme_issuer("acme")
    return world


def _requested(world: World, name: str = "web") -> int:
    return sum(1 for _, reason, _ in world.events(name) if reason == "Requested")


def _renew(world: World, name: str = "web") -> None:
    obj = world.certificate(name)
    obj["status"]["conditions"].append({"type": "Issuing", "status": "True",
                                        "reason": policies.MANUALLY_TRIGGERED, "message": "renew"})
    world.store.replace_status(obj=obj)


# --- kept copies ---------------------------------------------------------------------


def test_every_issuance_is_kept_in_the_cluster_resource_namespace(world: World) -> None:
    world.add_certificate("web")
    world.issue("web")

    (kept,) = world.store.list(kind="Secret", namespace="certctl",
                               labels={kept_certificates.KEPT_LABEL: "true"})
    assert kept["type"] == "Opaque"  # not a TLS Secret: nothing serves or mounts it by accident
    assert not kept["metadata"].get("ownerReferences"), "owned: it would go with its owner"
    assert kept["metadata"]["annotations"][kept_certificates.KEPT_FOR_ANNOTATION] == "default/web"
    assert kept["data"] == {k: v for k, v in (world.secret("web") or {})["data"].items()}


def test_deleted_secret_is_restored_without_new_order(world: World) -> None:
    world.add_certificate("web")
    world.issue("web")
    serial = world.contents("web").leaf.serial_number
    world.store.delete(kind="Secret", namespace="default", name="web")

    result = world.reconcile("web")

    assert world.contents("web").leaf.serial_number == serial
    assert _requested(world) == 1
    ready = world.condition("web", "Ready")
    assert ready["status"] == "True"
    assert "restored from the copy certctl keeps in Secret certctl/certctl-kept-" in (
        ready["message"])
    assert "without a new order" in ready["message"]
    (restored,) = [m for _, reason, m in world.events("web") if reason == "Restored"]
    assert restored.startswith(f"Restored the certificate (serial {serial:x}, valid until ")
    assert restored.endswith("without a new order: Issuing certificate as Secret does not exist")
    assert result.requeue_after == pytest.approx(60 * DAY.total_seconds())

    # The Secret's own event runs the reconciler again: it stays restored and Ready...
    world.reconcile("web")
    assert "restored" in world.condition("web", "Ready")["message"]
    # ...until the next issuance, which is a certificate like any other.
    world.clock.set(conditions.parse_time(world.status("web")["renewalTime"]))
    world.issue("web")
    assert "restored" not in world.condition("web", "Ready")["message"]
    assert kept_certificates.RESTORED_FROM_ANNOTATION not in (
        world.secret("web") or {})["metadata"]["annotations"]


def test_unreadable_secret_is_restored_too(world: World) -> None:
    world.add_certificate("web")
    world.issue("web")
    serial = world.contents("web").leaf.serial_number
    secret = world.secret("web")
    assert secret is not None
    secret["data"]["tls.crt"] = "Z2FyYmFnZQ=="
    world.store.replace(obj=secret)

    world.reconcile("web")

    assert world.contents("web").leaf.serial_number == serial
    assert _requested(world) == 1


def test_redeployed_certificate_gets_its_kept_copy_back(world: World) -> None:
    # The namespace went away with the Certificate, its Orders and its Secret.
    world.add_certificate("web", privateKey={"encoding": "PKCS8"})
    world.issue("web")
    serial = world.contents("web").leaf.serial_number
    world.store.delete(kind="Certificate", namespace="default", name="web")
    world.store.delete(kind="Secret", namespace="default", name="web")
    assert world.orders("web") == []

    world.add_certificate("web", privateKey={"encoding": "PKCS1"})
    world.reconcile("web")

    contents = world.contents("web")
    assert contents.leaf.serial_number == serial
    assert contents.key_pem.startswith(b"-----BEGIN EC PRIVATE KEY-----"), "encoded per spec"
    assert world.orders("web") == []


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"dnsNames": ["web.example.test", "new.example.test"]}, policies.DOES_NOT_EXIST),
        ({"privateKey": {"algorithm": "RSA"}}, policies.DOES_NOT_EXIST),
    ],
    ids=["other-names", "other-key-type"],
)
def test_kept_copy_that_no_longer_fits_the_spec_is_not_restored(
    world: World, change: dict[str, object], reason: str
) -> None:
    world.add_certificate("web")
    world.issue("web")
    world.store.delete(kind="Secret", namespace="default", name="web")
    world.edit_spec("web", **change)

    world.reconcile("web")

    assert world.condition("web", "Issuing")["reason"] == reason
    assert _requested(world) == 2


def test_expired_kept_copy_is_not_restored(world: World) -> None:
    world.add_certificate("web")
    world.issue("web")
    world.store.delete(kind="Secret", namespace="default", name="web")
    world.clock.advance(days=91)

    world.reconcile("web")

    assert world.secret("web") is None
    assert _requested(world) == 2


def test_kept_copy_of_another_issuer_is_not_restored(world: World) -> None:
    world.add_acme_issuer("other")
    world.add_certificate("web")
    world.issue("web")
    world.store.delete(kind="Secret", namespace="default", name="web")
    world.edit_spec("web", issuerRef={"name": "other", "kind": "ClusterIssuer"})

    world.reconcile("web")

    assert world.secret("web") is None
    assert _requested(world) == 2


# --- the order budget -------------------------------------------------------------------


def test_sixth_order_for_the_same_names_within_a_week_is_refused(world: World) -> None:
    world.add_certificate("web")
    first_order_at = world.clock.now
    world.issue("web")
    for _ in range(4):
        world.clock.advance(hours=1)
        _renew(world)
        world.issue("web")
    assert _requested(world) == 5
    serial = world.contents("web").leaf.serial_number

    world.clock.advance(hours=1)
    _renew(world)
    result = world.reconcile("web")

    assert _requested(world) == 5
    assert world.contents("web").leaf.serial_number == serial
    allowed_at = first_order_at + 7 * DAY
    issuing = world.condition("web", "Issuing")
    assert (issuing["status"], issuing["reason"]) == ("False",
                                                      certificate_orders.ORDER_BUDGET_EXHAUSTED)
    assert issuing["message"] == (
        "Not placing an order: 5 orders for exactly [web.example.test] were placed with "
        "https://acme.example.invalid/directory within 168h0m0s (failed ones not counted), the "
        "budget certctl keeps to stay clear of the CA's duplicate-certificate limit (5 orders "
        f"per 168h); the next order may be placed at {conditions.format_time(allowed_at)}")
    assert world.condition("web", "Ready")["status"] == "True", "the current one still serves"
    assert ("Warning", certificate_orders.ORDER_BUDGET_EXHAUSTED,
            issuing["message"]) in world.events("web")
    assert result.requeue_after == pytest.approx((allowed_at - world.clock.now).total_seconds())

    # The refusal answered that request; once the first order leaves the window, one fits.
    world.clock.set(allowed_at - datetime.timedelta(seconds=1))
    _renew(world)
    world.reconcile("web")
    assert _requested(world) == 5
    world.clock.set(allowed_at)
    _renew(world)
    world.reconcile("web")
    assert _requested(world) == 6


def test_the_budget_is_shared_by_certificates_with_the_same_names(world: World) -> None:
    for name in ("a", "b", "c", "d", "e", "f"):
        world.add_certificate(name, dnsNames=["shared.example.test"])
        world.reconcile(name)
    placed = [name for name in "abcdef" if world.orders(name)]
    assert placed == ["a", "b", "c", "d", "e"]
    assert world.condition("f", "Ready")["reason"] == certificate_orders.ORDER_BUDGET_EXHAUSTED


def test_failed_orders_do_not_use_up_the_budget(world: World) -> None:
    world.add_certificate("web")
    world.reconcile("web")
    for _ in range(6):
        world.fail_order("web")
        world.clock.advance(seconds=world.reconcile("web").requeue_after or 0)
        world.reconcile("web")
    assert world.pending_order("web") is not None
    assert _requested(world) == 7


def test_budget_can_be_turned_off(tmp_path: Path) -> None:
    world = World(tmp_path, order_budget=None)
    world.add_acme_issuer("acme")
    world.add_certificate("web")
    world.issue("web")
    for _ in range(6):
        _renew(world)
        world.issue("web")
    assert _requested(world) == 7
