"""Which reconciler runs for which change (runtime/dispatch.py), on the local store."""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from certctl.api.resources import ObjectKey
from certctl.controllers import challenges, reconciling
from certctl.issuers.acme import accounts as acme_accounts
from certctl.runtime import dispatch
from certctl.solvers.dns01 import solver as dns01_solver
from certctl.store.interface import WatchEvent, WatchType
from certctl.store.local import LocalStore


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(manifests_dir=None, state_dir=tmp_path / "state")


def _dispatcher_over(store: LocalStore) -> dispatch.Dispatcher:
    accounts = acme_accounts.AcmeAccounts(cluster_resource_namespace="certctl")
    settings = dispatch.controller_settings(
        clock=reconciling.system_clock, accounts=accounts,
        backoff_base=datetime.timedelta(hours=1),
        self_check=challenges.self_check_for(port=80, connect_address=None),
        dns01=dns01_solver.Options(), order_budget=None)
    return dispatch.Dispatcher(store=store, settings=settings)


@pytest.fixture
def dispatcher(store: LocalStore) -> dispatch.Dispatcher:
    return _dispatcher_over(store)


def _secret_event(name: str, namespace: str, **metadata: Any) -> WatchEvent:
    obj = {"apiVersion": "v1", "kind": "Secret",
           "metadata": {"name": name, "namespace": namespace, **metadata}, "data": {}}
    return WatchEvent(type="ADDED", key=ObjectKey(kind="Secret", namespace=namespace, name=name),
                      obj=obj)


def test_a_secret_wakes_the_issuers_that_read_it(
    store: LocalStore, dispatcher: dispatch.Dispatcher
) -> None:
    store.create(obj={"apiVersion": "certctl.io/v1", "kind": "ClusterIssuer",
                      "metadata": {"name": "private-ca"}, "spec": {"ca": {"secretName": "ca-key"}}})
    store.create(obj={"apiVersion": "certctl.io/v1", "kind": "Issuer",
                      "metadata": {"name": "zerossl", "namespace": "shop"},
                      "spec": {"acme": {"server": "https://acme.example/dir",
                                        "privateKeySecretRef": {"name": "zerossl-account"},
                                        "externalAccountBinding": {
                                            "keyID": "kid", "keySecretRef": {"name": "eab"}}}}})
    store.create(obj={"apiVersion": "certctl.io/v1", "kind": "Issuer",
                      "metadata": {"name": "broken", "namespace": "shop"},
                      "spec": {"acme": "not a mapping"}})

    assert list(dispatcher.items_for(_secret_event("ca-key", "certctl"))) == [
        ("issuer", ObjectKey(kind="ClusterIssuer", namespace=None, name="private-ca"))]
    assert list(dispatcher.items_for(_secret_event("eab", "shop"))) == [
        ("issuer", ObjectKey(kind="Issuer", namespace="shop", name="zerossl"))]
    # A ClusterIssuer reads Secrets of the cluster-resource namespace only.
    assert list(dispatcher.items_for(_secret_event("ca-key", "shop"))) == []
    # certctl's own Secrets (a Certificate's, a kept copy) wake no issuer.
    written = _secret_event("ca-key", "certctl",
                            annotations={"cert-manager.io/certificate-name": "web"})
    assert ("issuer", ObjectKey(kind="ClusterIssuer", namespace=None, name="private-ca")) \
        not in list(dispatcher.items_for(written))


def test_an_ingress_annotation_change_runs_ingress_shim(dispatcher: dispatch.Dispatcher) -> None:
    key = ObjectKey(kind="Ingress", namespace="default", name="web")

    def event(annotations: dict[str, str]) -> WatchEvent:
        return WatchEvent(type="MODIFIED", key=key, obj={
            "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": {"name": "web", "namespace": "default", "generation": 1,
                         "annotations": annotations}})

    annotated = {"cert-manager.io/cluster-issuer": "pebble"}
    assert ("ingress", key) in list(dispatcher.items_for(event(annotated)))
    # Only its status changed (same generation, same annotations): nothing to do.
    assert ("ingress", key) not in list(dispatcher.items_for(event(annotated)))
    # Annotations are metadata: the generation stays, yet ingress-shim must run.
    assert ("ingress", key) in list(dispatcher.items_for(event({})))


def test_an_order_wakes_its_certificate_only_with_its_verdict(
    dispatcher: dispatch.Dispatcher,
) -> None:
    key = ObjectKey(kind="Order", namespace="default", name="web-tls-1")
    certificate = ObjectKey(kind="Certificate", namespace="default", name="web-tls")

    def event(type_: WatchType, state: str | None) -> WatchEvent:
        return WatchEvent(type=type_, key=key, obj={
            "apiVersion": "certctl.io/v1", "kind": "Order",
            "metadata": {"name": "web-tls-1", "namespace": "default", "generation": 1,
                         "ownerReferences": [{"apiVersion": "certctl.io/v1",
                                              "kind": "Certificate", "name": "web-tls",
                                              "uid": "u1", "controller": True}]},
            "status": {} if state is None else {"state": state}})

    wakes = ("certificate", certificate)
    assert wakes not in list(dispatcher.items_for(event("ADDED", None)))
    assert wakes not in list(dispatcher.items_for(event("MODIFIED", "pending")))
    assert wakes not in list(dispatcher.items_for(event("MODIFIED", "processing")))
    for verdict in ("valid", "invalid", "errored"):
        assert wakes in list(dispatcher.items_for(event("MODIFIED", verdict)))
    assert wakes in list(dispatcher.items_for(event("DELETED", "pending")))


def test_the_queue_runs_later_steps_of_the_flow_first() -> None:
    key = ObjectKey(kind="Order", namespace="default", name="x")
    ranks = [dispatch.flow_rank((controller, key))
             for controller in ("issuer", "challenge", "order", "certificate", "ingress")]
    assert ranks == sorted(ranks) and len(set(ranks)) == len(ranks)


class _CountingStore(LocalStore):
    """The local store, counting the lists of each kind made through it."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.lists: dict[str, int] = {}

    def list(self, *, kind: str, namespace: str | None = None,
             labels: Mapping[str, str] | None = None,
             shared: bool = False) -> list[dict[str, Any]]:
        self.lists[kind] = self.lists.get(kind, 0) + 1
        return super().list(kind=kind, namespace=namespace, labels=labels, shared=shared)


def _certificate(name: str, secret_name: str) -> dict[str, Any]:
    return {"apiVersion": "cert-manager.io/v1", "kind": "Certificate",
            "metadata": {"name": name, "namespace": "shop"},
            "spec": {"secretName": secret_name, "dnsNames": [f"{name}.example"],
                     "issuerRef": {"name": "ca", "kind": "ClusterIssuer"}}}


def _certificate_event(type_: WatchType, obj: dict[str, Any]) -> WatchEvent:
    return WatchEvent(type=type_, key=ObjectKey(kind="Certificate", namespace="shop",
                                                name=obj["metadata"]["name"]), obj=obj)


def test_a_users_secret_wakes_the_certificates_naming_it_without_listing_them(
    tmp_path: Path,
) -> None:
    store = _CountingStore(manifests_dir=None, state_dir=tmp_path / "state")
    dispatcher = _dispatcher_over(store)
    listed = store.create(obj=_certificate("listed", "shared-tls"))
    assert ("certificate", reconciling.key_of(listed)) in list(dispatcher.everything())
    web, api = _certificate("web", "web-tls"), _certificate("api", "shared-tls")
    for obj in (web, api):
        list(dispatcher.items_for(_certificate_event("ADDED", obj)))
    store.lists.clear()

    def woken(secret: str) -> list[str]:
        return [key.name for name, key in dispatcher.items_for(_secret_event(secret, "shop"))
                if name == "certificate"]

    assert woken("web-tls") == ["web"]
    assert woken("shared-tls") == ["api", "listed"]
    assert woken("other-tls") == []
    # Another name: the old Secret no longer wakes it.
    list(dispatcher.items_for(_certificate_event("MODIFIED", {
        **web, "spec": {**web["spec"], "secretName": "web-tls-2"}})))
    assert woken("web-tls") == []
    assert woken("web-tls-2") == ["web"]
    # Deleted: (its own reconciler runs, and) the other Certificate naming its Secret takes
    # it over; it wakes no more.
    assert [key.name for name, key in dispatcher.items_for(_certificate_event("DELETED", api))
            if name == "certificate"] == ["api", "listed"]
    assert woken("shared-tls") == ["listed"]
    assert store.lists.get("Certificate", 0) == 0
