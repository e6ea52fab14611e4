"""Renewal time and every reissue trigger, fired through the Certificate reconciler.

Each trigger test starts from a Certificate issued once and up to date,
changes one thing, reconciles, and checks that an Order was placed and the
`Issuing` condition names the trigger, as cert-manager words it.
"""

from __future__ import annotations

import base64
import datetime
from pathlib import Path
from typing import Any

import pytest

from certctl.api import conditions
from certctl.api.resources import PrivateKeySpec
from certctl.controllers import policies
from certctl.pki import inspect, keys
from tests.lifecycle import World

DAY = datetime.timedelta(days=1)


@pytest.fixture
def world(tmp_path: Path) -> World:
    world = World(tmp_path)
    world.add_acme_issuer("acme")
    return world


def _issued(world: World, name: str = "web", **spec: Any) -> World:
    world.add_certificate(name, **spec)
    world.issue(name)
    assert world.condition(name, "Ready")["status"] == "True"
    assert len(world.orders(name)) == 1
    return world


def _assert_issuing(world: World, *, reason: str, message: str, name: str = "web") -> None:
    result = world.reconcile(name)
    issuing = world.condition(name, "Issuing")
    assert (issuing.get("status"), issuing.get("reason")) == ("True", reason), issuing
    assert message in issuing["message"]
    pending = world.pending_order(name)
    assert ("Normal", "Requested", f"Created new Order {pending['metadata']['name']}: "
            f"{issuing['message']}") in world.events(name)
    assert result.requeue_after is None  # the Order's progress wakes the Certificate


# --- renewal time -------------------------------------------------------------------


def test_renewal_is_two_thirds_through_the_issued_lifetime_and_requeued_for_then(
    world: World,
) -> None:
    world.add_certificate("web")
    world.reconcile("web")
    issued_at = world.clock.now
    world.complete_order("web", lifetime=30 * DAY)  # the CA decides, whatever spec.duration says

    result = world.reconcile("web")

    renewal = issued_at + 20 * DAY
    status = world.status("web")
    assert status["notBefore"] == conditions.format_time(issued_at)
    assert status["notAfter"] == conditions.format_time(issued_at + 30 * DAY)
    assert status["renewalTime"] == conditions.format_time(renewal)
    assert result.requeue_after == pytest.approx((renewal - world.clock.now).total_seconds())


@pytest.mark.parametrize(
    ("spec", "before_expiry"),
    [
        ({"renewBefore": "240h"}, 10 * DAY),
        ({"renewBeforePercentage": 10}, 3 * DAY),
        # Longer than the certificate actually lasts: cert-manager falls back to 2/3.
        ({"renewBefore": "1000h"}, 10 * DAY),
    ],
    ids=["renewBefore", "renewBeforePercentage", "renewBefore-longer-than-lifetime"],
)
def test_renew_before_settings_move_the_renewal_time(
    world: World, spec: dict[str, Any], before_expiry: datetime.timedelta
) -> None:
    world.add_certificate("web", **spec)
    world.reconcile("web")
    expiry = world.clock.now + 30 * DAY
    world.complete_order("web", lifetime=30 * DAY)

    result = world.reconcile("web")

    assert world.status("web")["renewalTime"] == conditions.format_time(expiry - before_expiry)
    assert result.requeue_after == pytest.approx(
        (expiry - before_expiry - world.clock.now).total_seconds())


def test_nothing_happens_before_the_renewal_time_and_renewing_starts_at_it(world: World) -> None:
    _issued(world)
    renewal = conditions.parse_time(world.status("web")["renewalTime"])

    world.clock.set(renewal - datetime.timedelta(seconds=1))
    early = world.reconcile("web")
    assert len(world.orders("web")) == 1
    assert early.requeue_after == pytest.approx(1.0)

    world.clock.set(renewal)
    _assert_issuing(world, reason=policies.RENEWING,
                    message=f"Renewing certificate as renewal was scheduled at "
                    f"{conditions.format_time(renewal)}")
    # Still Ready while renewing: the current certificate is good until notAfter.
    assert world.condition("web", "Ready")["status"] == "True"


def test_renewed_certificate_replaces_the_old_one_and_schedules_the_next_renewal(
    world: World,
) -> None:
    _issued(world)
    first = world.contents("web").leaf
    world.clock.set(conditions.parse_time(world.status("web")["renewalTime"]))
    world.reconcile("web")
    world.complete_order("web")

    result = world.reconcile("web")

    second = world.contents("web").leaf
    assert second.serial_number != first.serial_number
    assert world.status("web")["revision"] == 2
    assert world.condition("web", "Issuing") == {}
    assert result.requeue_after == pytest.approx(60 * DAY.total_seconds())


def test_expired_certificate_is_reissued_and_not_ready(world: World) -> None:
    _issued(world)
    world.clock.advance(days=91)
    _assert_issuing(world, reason=policies.EXPIRED, message="Issuing certificate as it has expired")
    assert world.condition("web", "Ready")["reason"] == policies.EXPIRED


# --- triggers -----------------------------------------------------------------------


def test_missing_secret_triggers_issuance(world: World) -> None:
    _issued(world)
    world.forget_kept_copies()
    world.store.delete(kind="Secret", namespace="default", name="web")
    _assert_issuing(world, reason=policies.DOES_NOT_EXIST,
                    message="Issuing certificate as Secret does not exist")


def test_unparseable_secret_triggers_issuance(world: World) -> None:
    _issued(world)
    world.forget_kept_copies()
    secret = world.secret("web")
    assert secret is not None
    secret["data"]["tls.crt"] = base64.b64encode(b"not a certificate").decode()
    world.store.replace(obj=secret)
    _assert_issuing(world, reason=policies.INVALID_CERTIFICATE,
                    message="Secret contains invalid data: tls.crt does not parse")


def test_key_not_matching_the_certificate_triggers_issuance(world: World) -> None:
    _issued(world)
    world.forget_kept_copies()
    secret = world.secret("web")
    assert secret is not None
    other = keys.generate_private_key(PrivateKeySpec())
    secret["data"]["tls.key"] = base64.b64encode(
        keys.encode_private_key(other, encoding="PKCS8")).decode()
    world.store.replace(obj=secret)
    _assert_issuing(world, reason=policies.INVALID_KEY_PAIR,
                    message="private key that does not match the certificate")


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"dnsNames": ["web.example.test", "www.example.test"]}, "spec.dnsNames"),
        ({"commonName": "web.example.test"}, "spec.commonName"),
    ],
    ids=["dnsNames", "commonName"],
)
def test_changed_names_trigger_issuance(world: World, change: dict[str, object],
                                        field: str) -> None:
    _issued(world)
    world.edit_spec("web", **change)
    _assert_issuing(world, reason=policies.SECRET_MISMATCH,
                    message=f"the issued certificate does not match {field}")


def test_changed_ip_addresses_trigger_issuance(tmp_path: Path) -> None:
    # ACME cannot validate IP addresses: a selfSigned issuer signs them, in one pass.
    world = World(tmp_path)
    world.add_local_issuer("self", {"selfSigned": {}})
    world.add_certificate("web", issuer="self", ipAddresses=["192.0.2.1"])
    world.reconcile("web")
    assert inspect.certificate_info(world.contents("web").leaf).ip_addresses == ("192.0.2.1",)

    world.edit_spec("web", ipAddresses=["192.0.2.1", "2001:db8::1"])
    world.reconcile("web")

    assert inspect.certificate_info(world.contents("web").leaf).ip_addresses == (
        "192.0.2.1", "2001:db8::1")
    requested = [m for _, reason, m in world.events("web") if reason == "Requested"]
    assert requested[-1] == ("Issuing a certificate self-signed: Issuing certificate as the "
                             "issued certificate does not match spec.ipAddresses")


@pytest.mark.parametrize(
    ("private_key", "shape"),
    [({"algorithm": "RSA"}, "RSA 2048"), ({"algorithm": "ECDSA", "size": 384}, "ECDSA 384")],
    ids=["algorithm", "size"],
)
def test_changed_key_algorithm_or_size_triggers_issuance(
    world: World, private_key: dict[str, object], shape: str
) -> None:
    _issued(world)
    world.edit_spec("web", privateKey=private_key)
    _assert_issuing(world, reason=policies.INCORRECT_KEY,
                    message=f"the private key is ECDSA 256, not {shape} as spec.privateKey asks")


def test_changed_issuer_triggers_issuance(world: World) -> None:
    _issued(world)
    world.add_acme_issuer("other")
    world.edit_spec("web", issuerRef={"name": "other", "kind": "ClusterIssuer"})
    _assert_issuing(world, reason=policies.INCORRECT_ISSUER,
                    message="previously issued by ClusterIssuer/acme, not ClusterIssuer/other")


def test_requested_renewal_triggers_issuance_of_a_fine_certificate(world: World) -> None:
    _issued(world)
    obj = world.certificate("web")
    # What `certctl renew` (and cmctl renew) writes.
    obj["status"]["conditions"].append({"type": "Issuing", "status": "True",
                                        "reason": policies.MANUALLY_TRIGGERED,
                                        "message": "Certificate re-issuance manually triggered"})
    world.store.replace_status(obj=obj)
    _assert_issuing(world, reason=policies.MANUALLY_TRIGGERED,
                    message="Re-issuance of the certificate was manually triggered")
    world.complete_order("web")
    world.reconcile("web")
    assert world.condition("web", "Issuing") == {}, "the request is consumed by the issuance"
    assert world.status("web")["revision"] == 2
