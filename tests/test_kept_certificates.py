"""How long kept copies live (kept_certificates), and what they are restored to.

A copy goes when its certificate expires: on a timer at its notAfter (the
injected clock here) and at start-up for one that expired while certctl was
down. It is restored only to a Certificate with exactly its names, issuer and
key type.
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import pytest

from certctl.api.resources import ObjectKey, PrivateKeySpec
from certctl.controllers import challenges, kept_certificates, policies
from certctl.pki import keys, selfsigned
from certctl.pki import secret as tls_secret
from certctl.runtime import dispatch
from certctl.solvers.dns01 import solver as dns01_solver
from certctl.store.interface import WatchEvent
from certctl.store.local import LocalStore
from tests.lifecycle import World
from tests.pebble import PebbleServer
from tests.serving import eventually, serving, write_yaml

DAY = datetime.timedelta(days=1)


@pytest.fixture
def world(tmp_path: Path) -> World:
    world = World(tmp_path)
    world.add_acme_issuer("acme")
    return world


def _dispatcher(world: World) -> dispatch.Dispatcher:
    """The dispatcher `serve` and `controller` run, on the world's store and clock."""
    settings = dispatch.controller_settings(
        clock=world.clock, accounts=world.accounts, backoff_base=datetime.timedelta(hours=1),
        self_check=challenges.self_check_for(port=80, connect_address=None),
        dns01=dns01_solver.Options(), order_budget=None)
    return dispatch.Dispatcher(store=world.store, settings=settings)


def _kept(world: World) -> list[dict[str, Any]]:
    return world.store.list(kind="Secret", namespace="certctl",
                            labels={kept_certificates.KEPT_LABEL: "true"})


def _requested(world: World, name: str = "web") -> int:
    return sum(1 for _, reason, _ in world.events(name) if reason == "Requested")


def _run_kept(world: World, dispatcher: dispatch.Dispatcher) -> list[float | None]:
    """What a watch event for each kept copy queues, run: the delays until they run again."""
    delays = []
    for secret in _kept(world):
        key = ObjectKey(kind="Secret", namespace="certctl", name=secret["metadata"]["name"])
        (item,) = dispatcher.items_for(WatchEvent(type="ADDED", key=key, obj=secret))
        assert item == ("kept", key)
        delays.append(dispatcher.handle(item))
    return delays


# --- for how long ------------------------------------------------------------------


@pytest.mark.parametrize("lifetime", [90 * DAY, 6 * DAY], ids=["90-days", "short-lived"])
def test_a_kept_copy_is_deleted_when_its_certificate_expires(
    world: World, lifetime: datetime.timedelta
) -> None:
    dispatcher = _dispatcher(world)
    world.add_certificate("web")
    world.issue("web", lifetime=lifetime)
    not_after = world.clock.now + lifetime

    # The copy's own event starts its timer, at its notAfter on the injected clock.
    assert _run_kept(world, dispatcher) == [pytest.approx(lifetime.total_seconds())]
    world.clock.set(not_after - datetime.timedelta(seconds=1))
    assert _run_kept(world, dispatcher) == [pytest.approx(1.0)]
    assert len(_kept(world)) == 1

    world.clock.set(not_after)
    assert _run_kept(world, dispatcher) == [None]
    assert _kept(world) == []
    # Losing the Secret now costs an order: there is nothing left to restore.
    world.store.delete(kind="Secret", namespace="default", name="web")
    world.reconcile("web")
    assert _requested(world) == 2


def test_every_kept_copy_is_looked_at_on_start_up(world: World) -> None:
    world.add_certificate("web")
    world.issue("web")
    (copy,) = _kept(world)

    items = list(_dispatcher(world).everything())

    assert ("kept", ObjectKey(kind="Secret", namespace="certctl",
                              name=copy["metadata"]["name"])) in items


def test_a_renewal_replaces_the_copy_and_moves_its_timer(world: World) -> None:
    dispatcher = _dispatcher(world)
    world.add_certificate("web")
    world.issue("web", lifetime=6 * DAY)
    world.clock.advance(days=3)
    world.reconcile("web")  # renewal due at half the lifetime of a short-lived certificate
    world.complete_order("web", lifetime=6 * DAY)
    world.reconcile("web")

    assert _requested(world) == 2
    assert _run_kept(world, dispatcher) == [pytest.approx((6 * DAY).total_seconds())]


def test_an_unreadable_copy_is_deleted_and_a_labelled_secret_elsewhere_is_not(
    world: World,
) -> None:
    dispatcher = _dispatcher(world)
    world.add_certificate("web")
    world.issue("web")
    (copy,) = _kept(world)
    copy["data"]["tls.crt"] = "Z2FyYmFnZQ=="
    world.store.replace(obj=copy)
    stranger = world.store.create(obj={
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": "mine", "namespace": "default",
                     "labels": {kept_certificates.KEPT_LABEL: "true"}},
        "data": {"tls.crt": "Z2FyYmFnZQ=="}})

    assert _run_kept(world, dispatcher) == [None]
    assert _kept(world) == []
    key = ObjectKey(kind="Secret", namespace="default", name="mine")
    assert list(dispatcher.items_for(WatchEvent(type="ADDED", key=key, obj=stranger))) == []
    assert dispatcher.handle(("kept", key)) is None
    assert world.secret("mine") is not None


def _copy_secret(name: str, *, namespace: str, not_after: datetime.datetime) -> dict[str, Any]:
    key = keys.generate_private_key(PrivateKeySpec(algorithm="ECDSA", size=256))
    chain = selfsigned.self_signed_certificate(
        key=key, dns_names=("kept.example.test",), common_name=None, is_ca=False,
        not_before=not_after - 90 * DAY, not_after=not_after)
    data = tls_secret.build_tls_secret_data(
        chain_pem=chain, key_pem=keys.encode_private_key(key, encoding="PKCS8"), ca_pem=None)
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": name, "namespace": namespace,
                         "labels": {kept_certificates.KEPT_LABEL: "true"},
                         "annotations": {kept_certificates.KEPT_FOR_ANNOTATION: "default/x"}},
            "data": data}


def test_serve_deletes_copies_that_expired_while_it_was_down(
    tmp_path: Path, pebble: PebbleServer
) -> None:
    state = tmp_path / "state"
    now = datetime.datetime.now(datetime.UTC)
    offline = LocalStore(manifests_dir=None, state_dir=state)
    offline.create(obj=_copy_secret("certctl-kept-expired", namespace="certctl",
                                    not_after=now - DAY))
    offline.create(obj=_copy_secret("certctl-kept-valid", namespace="certctl",
                                    not_after=now + 30 * DAY))
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    write_yaml(manifests / "empty.yaml", {"apiVersion": "v1", "kind": "Namespace",
                                          "metadata": {"name": "default"}})

    with serving(manifests=manifests, state_dir=state, pebble=pebble) as run:
        eventually(lambda: run.store.get(kind="Secret", namespace="certctl",
                                         name="certctl-kept-expired") is None or None,
                   what="the expired copy deleted")
        assert run.store.get(kind="Secret", namespace="certctl",
                             name="certctl-kept-valid") is not None
    assert not (state / "objects" / "Secret" / "certctl" / "certctl-kept-expired.yaml").exists()
    assert (state / "objects" / "Secret" / "certctl" / "certctl-kept-valid.yaml").exists()


# --- restored only on an exact match -------------------------------------------------


def _add_namespaced_acme_issuer(world: World, name: str) -> None:
    """An Issuer (not ClusterIssuer) of the same name as the world's ClusterIssuer."""
    cluster = world.issuer(name)
    world.store.create(obj={"apiVersion": "certctl.io/v1", "kind": "Issuer",
                            "metadata": {"name": name, "namespace": "default"},
                            "spec": cluster["spec"]})
    issuer = world.issuer(name, kind="Issuer")
    issuer["status"] = cluster["status"]
    world.store.replace_status(obj=issuer)


@pytest.mark.parametrize(
    "change",
    [
        {"dnsNames": ["web.example.test"]},
        {"ipAddresses": ["192.0.2.7", "192.0.2.8"]},
        {"privateKey": {"algorithm": "ECDSA", "size": 384}},
        {"privateKey": {"algorithm": "RSA", "size": 2048}},
        {"issuerRef": {"name": "acme", "kind": "Issuer"}},
    ],
    ids=["dns-names", "ip-addresses", "key-size", "key-algorithm", "issuer-kind"],
)
def test_a_copy_is_restored_only_to_exactly_its_names_issuer_and_key(
    world: World, change: dict[str, Any]
) -> None:
    _add_namespaced_acme_issuer(world, "acme")
    world.add_certificate("web", dnsNames=["web.example.test", "www.example.test"],
                          ipAddresses=["192.0.2.7"])
    world.issue("web")
    world.store.delete(kind="Secret", namespace="default", name="web")
    world.edit_spec("web", **change)

    world.reconcile("web")

    assert world.condition("web", "Issuing")["reason"] == policies.DOES_NOT_EXIST
    assert [r for _, r, _ in world.events("web")].count("Restored") == 0
    assert _requested(world) == 2


def test_names_are_compared_as_sets(world: World) -> None:
    world.add_certificate("web", dnsNames=["web.example.test", "www.example.test"],
                          ipAddresses=["192.0.2.7", "192.0.2.8"])
    world.issue("web")
    serial = world.contents("web").leaf.serial_number
    world.store.delete(kind="Secret", namespace="default", name="web")
    world.edit_spec("web", dnsNames=["www.example.test", "web.example.test", "www.example.test"],
                    ipAddresses=["192.0.2.8", "192.0.2.7"])

    world.reconcile("web")

    assert world.contents("web").leaf.serial_number == serial
    assert _requested(world) == 1
