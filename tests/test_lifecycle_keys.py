"""Private keys across issuances: rotation policy, encoding, algorithm and size."""

from __future__ import annotations

import base64
import datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from certctl.api.resources import ObjectKey
from certctl.controllers import (
    certificate_settings,
    certificates,
    order_budget,
    policies,
    reconciling,
)
from certctl.pki import inspect, keys
from certctl.store.interface import Object
from tests.lifecycle import ACME_SERVER, World


def _renew(world: World, name: str) -> None:
    obj = world.certificate(name)
    obj["status"]["conditions"].append({"type": "Issuing", "status": "True",
                                        "reason": policies.MANUALLY_TRIGGERED, "message": "renew"})
    world.store.replace_status(obj=obj)


def _ca_world(tmp_path: Path) -> World:
    world = World(tmp_path)
    ca_secret = world.acme_ca.secret(namespace="certctl", name="root-ca")
    world.store.create(obj=ca_secret)
    world.add_local_issuer("ca", {"ca": {"secretName": "root-ca"}})
    return world


@pytest.mark.parametrize(("policy", "same_key"), [("Always", False), ("Never", True)])
def test_rotation_policy_decides_whether_a_reissue_gets_a_new_key(
    tmp_path: Path, policy: str, same_key: bool
) -> None:
    world = _ca_world(tmp_path)
    world.add_certificate("web", issuer="ca", privateKey={"rotationPolicy": policy})
    world.reconcile("web")
    first = world.contents("web")
    _renew(world, "web")
    world.reconcile("web")
    second = world.contents("web")

    assert second.leaf.serial_number != first.leaf.serial_number
    assert keys.public_keys_equal(first.key, second.key) is same_key
    assert inspect.key_matches_certificate(second.key, second.leaf)


@pytest.mark.parametrize(("policy", "same_key"), [("Always", False), ("Never", True)])
def test_rotation_policy_applies_to_the_csr_of_an_acme_renewal(
    tmp_path: Path, policy: str, same_key: bool
) -> None:
    world = World(tmp_path)
    world.add_acme_issuer("acme")
    world.add_certificate("web", privateKey={"rotationPolicy": policy})
    world.issue("web")
    current = world.contents("web").key
    _renew(world, "web")
    world.reconcile("web")

    request = x509.load_pem_x509_csr(base64.b64decode(
        world.pending_order("web")["spec"]["request"]))
    assert keys.public_keys_equal(current, request.public_key()) is same_key
    # The key the order waits for is kept, for a restart, in the ledger of its names.
    stored = order_budget.next_key(_ledger(world), certificate="default/web", revision=1)
    assert stored is not None
    assert keys.public_keys_equal(keys.load_private_key(stored), request.public_key())

    world.complete_order("web")
    world.reconcile("web")
    assert keys.public_keys_equal(world.contents("web").key, request.public_key())
    # Issued with it: it is no next key any more (the next issuance makes its own).
    assert order_budget.next_key(_ledger(world), certificate="default/web", revision=2) is None


def _ledger(world: World) -> Object | None:
    return order_budget.read_ledger(store=world.store, ref=order_budget.ledger_ref(
        server=ACME_SERVER, names=("web.example.test",), cluster_resource_namespace="certctl"))


def test_a_restarted_controller_orders_with_the_key_the_ledger_keeps(tmp_path: Path) -> None:
    world = World(tmp_path)
    world.add_acme_issuer("acme")
    world.add_certificate("web")
    world.reconcile("web")
    (placed,) = world.orders("web")

    # A new process, its memory empty.
    restarted = certificate_settings.Settings(clock=world.clock,
                                              untold_issuance=datetime.timedelta(0))
    certificates.reconcile(store=world.store, settings=restarted,
                           key=ObjectKey(kind="Certificate", namespace="default", name="web"))

    assert world.orders("web") == [placed], "the same Order: the same key and CSR"
    (ledger,) = world.store.list(kind="Secret", namespace="certctl",
                                 labels={order_budget.LEDGER_LABEL: "true"})
    assert ledger["type"] == "Opaque" and not ledger["metadata"].get("ownerReferences")
    assert set(ledger["data"]) == {"next-private-key.default.web"}


def test_the_ledger_lets_go_of_a_next_key_a_week_after_its_order(tmp_path: Path) -> None:
    world = World(tmp_path)
    world.add_acme_issuer("acme")
    world.add_certificate("web")
    world.reconcile("web")
    world.store.delete(kind="Certificate", namespace="default", name="web")
    ledger = _ledger(world)
    assert ledger is not None
    key = reconciling.key_of(ledger)
    settings = world.settings

    result = order_budget.reconcile(store=world.store, key=key, clock=world.clock,
                                    cluster_resource_namespace="certctl",
                                    budget=settings.order_budget)
    assert result.requeue_after == pytest.approx(7 * 24 * 3600)
    world.clock.advance(days=7)
    order_budget.reconcile(store=world.store, key=key, clock=world.clock,
                           cluster_resource_namespace="certctl",
                           budget=settings.order_budget)
    assert _ledger(world) is None, "neither a record nor a key left: the ledger goes"


@pytest.mark.parametrize(
    ("private_key", "header"),
    [
        ({"algorithm": "RSA", "encoding": "PKCS1"}, b"-----BEGIN RSA PRIVATE KEY-----"),
        ({"algorithm": "RSA", "encoding": "PKCS8"}, b"-----BEGIN PRIVATE KEY-----"),
        ({"algorithm": "ECDSA", "encoding": "PKCS1"}, b"-----BEGIN EC PRIVATE KEY-----"),
        ({"algorithm": "ECDSA", "encoding": "PKCS8"}, b"-----BEGIN PRIVATE KEY-----"),
        # Ed25519 has no PKCS#1 form: always PKCS#8, as in cert-manager.
        ({"algorithm": "Ed25519", "encoding": "PKCS1"}, b"-----BEGIN PRIVATE KEY-----"),
    ],
    ids=["rsa-pkcs1", "rsa-pkcs8", "ec-pkcs1", "ec-pkcs8", "ed25519"],
)
def test_key_encoding_in_the_secret(tmp_path: Path, private_key: dict[str, Any],
                                    header: bytes) -> None:
    world = _ca_world(tmp_path)
    world.add_certificate("web", issuer="ca", privateKey=private_key)
    world.reconcile("web")
    assert world.contents("web").key_pem.startswith(header)


@pytest.mark.parametrize(
    ("private_key", "shape"),
    [
        ({"algorithm": "RSA", "size": 2048}, ("RSA", 2048)),
        ({"algorithm": "RSA", "size": 3072}, ("RSA", 3072)),
        ({"algorithm": "RSA", "size": 4096}, ("RSA", 4096)),
        ({"algorithm": "ECDSA", "size": 256}, ("ECDSA", 256)),
        ({"algorithm": "ECDSA", "size": 384}, ("ECDSA", 384)),
        ({"algorithm": "Ed25519"}, ("Ed25519", 256)),
    ],
    ids=["rsa2048", "rsa3072", "rsa4096", "p256", "p384", "ed25519"],
)
def test_ca_issuer_issues_every_key_type(tmp_path: Path, private_key: dict[str, Any],
                                         shape: tuple[str, int]) -> None:
    world = _ca_world(tmp_path)
    world.add_certificate("web", issuer="ca", privateKey=private_key)
    world.reconcile("web")

    contents = world.contents("web")
    assert keys.describe_key(contents.leaf.public_key()) == shape
    assert inspect.key_matches_certificate(contents.key, contents.leaf)
    assert world.condition("web", "Ready")["status"] == "True"
    # Up to date now: reconciling again changes nothing.
    world.reconcile("web")
    assert world.contents("web").leaf.serial_number == contents.leaf.serial_number


def test_ed25519_with_an_acme_issuer_is_refused_before_any_order(tmp_path: Path) -> None:
    world = World(tmp_path)
    world.add_acme_issuer("acme")
    world.add_certificate("web", privateKey={"algorithm": "Ed25519"})

    world.reconcile("web")

    ready = world.condition("web", "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "BadConfig")
    assert ready["message"].startswith("spec.privateKey.algorithm: ACME CAs do not issue "
                                       "certificates for Ed25519 keys")
    assert "use ECDSA or RSA" in ready["message"]
    assert world.orders("web") == []
    assert _ledger(world) is None


def test_changing_only_the_encoding_rewrites_the_key_without_issuing(tmp_path: Path) -> None:
    world = World(tmp_path)
    world.add_acme_issuer("acme")
    world.add_certificate("web", privateKey={"encoding": "PKCS1"})
    world.issue("web")
    before = world.contents("web")
    assert before.key_pem.startswith(b"-----BEGIN EC PRIVATE KEY-----")

    world.edit_spec("web", privateKey={"encoding": "PKCS8"})
    world.reconcile("web")

    after = world.contents("web")
    assert after.key_pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    assert after.leaf.serial_number == before.leaf.serial_number
    assert keys.public_keys_equal(after.key, before.key)
    assert len(world.orders("web")) == 1
    world.reconcile("web")  # the Secret's own event: nothing more to do
    assert world.contents("web").key_pem == after.key_pem
