"""ingress-shim turns an annotated Ingress into one owned Certificate per tls entry."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from certctl.api import parsing
from certctl.api.resources import ObjectKey
from certctl.controllers import ingress_shim
from certctl.store.local import LocalStore

INGRESS_UID = "6f1c2a1e-0000-4000-8000-000000000001"
KEY = ObjectKey(kind="Ingress", namespace="shop", name="web")


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(manifests_dir=None, state_dir=tmp_path / "state")


def ingress(
    annotations: dict[str, str] | None = None,
    tls: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {
            "name": "web",
            "namespace": "shop",
            "uid": INGRESS_UID,
            "annotations": (
                {"cert-manager.io/cluster-issuer": "letsencrypt"}
                if annotations is None else annotations
            ),
        },
        "spec": {
            "ingressClassName": "certctl",
            "rules": [{"host": "a.example.test", "http": {"paths": [{
                "path": "/", "pathType": "Prefix",
                "backend": {"service": {"name": "web", "port": {"number": 80}}},
            }]}}],
            "tls": tls if tls is not None else [
                {"hosts": ["a.example.test", "www.a.example.test"], "secretName": "a-tls"},
                {"hosts": ["b.example.test"], "secretName": "b-tls"},
            ],
        },
    }


def reconcile(store: LocalStore) -> None:
    result = ingress_shim.reconcile(store=store, key=KEY)
    assert result.requeue_after is None


def certificates(store: LocalStore) -> dict[str, dict[str, Any]]:
    return {c["metadata"]["name"]: c for c in store.list(kind="Certificate", namespace="shop")}


def update_ingress(store: LocalStore, **changes: Any) -> None:
    current = store.get(kind="Ingress", namespace="shop", name="web")
    assert current is not None
    wanted = ingress(**changes)
    current["metadata"]["annotations"] = wanted["metadata"]["annotations"]
    current["spec"] = wanted["spec"]
    store.replace(obj=current)


def test_one_owned_certificate_per_tls_entry_named_after_its_secret(store: LocalStore) -> None:
    created = store.create(obj=ingress())

    reconcile(store)

    found = certificates(store)
    assert sorted(found) == ["a-tls", "b-tls"]
    a = found["a-tls"]
    assert a["spec"]["secretName"] == "a-tls"
    assert a["spec"]["dnsNames"] == ["a.example.test", "www.a.example.test"]
    assert found["b-tls"]["spec"]["dnsNames"] == ["b.example.test"]
    [owner] = a["metadata"]["ownerReferences"]
    assert owner["uid"] == created["metadata"]["uid"] == INGRESS_UID
    assert (owner["kind"], owner["name"], owner["controller"]) == ("Ingress", "web", True)
    assert owner["apiVersion"] == "networking.k8s.io/v1"
    # Labelled with the Ingress, so reconciling it lists only its own Certificates.
    assert a["metadata"]["labels"] == {"certctl.io/ingress-name": "web"}
    parsed = parsing.parse_certificate(a)  # what the certificates controller will read
    assert parsed.dns_names == ("a.example.test", "www.a.example.test")


@pytest.mark.parametrize(
    ("annotations", "name", "kind"),
    [
        ({"cert-manager.io/cluster-issuer": "letsencrypt"}, "letsencrypt", "ClusterIssuer"),
        ({"certctl.io/cluster-issuer": "pebble"}, "pebble", "ClusterIssuer"),
        ({"cert-manager.io/issuer": "team-ca"}, "team-ca", "Issuer"),
        ({"certctl.io/issuer": "team-ca"}, "team-ca", "Issuer"),
        (
            {"cert-manager.io/issuer": "shared", "cert-manager.io/issuer-kind": "ClusterIssuer"},
            "shared",
            "ClusterIssuer",
        ),
        (
            {"certctl.io/cluster-issuer": "ours", "cert-manager.io/cluster-issuer": "theirs"},
            "ours",
            "ClusterIssuer",
        ),
    ],
    ids=["cm-cluster-issuer", "certctl-cluster-issuer", "cm-issuer", "certctl-issuer",
         "cm-issuer-kind", "certctl-key-first"],
)
def test_issuer_ref_comes_from_the_issuer_annotation(
    store: LocalStore, annotations: dict[str, str], name: str, kind: str
) -> None:
    store.create(obj=ingress(annotations=annotations))

    reconcile(store)

    for cert in certificates(store).values():
        assert cert["spec"]["issuerRef"]["name"] == name
        assert cert["spec"]["issuerRef"]["kind"] == kind
        assert parsing.parse_certificate(cert).issuer_ref.kind == kind
    assert len(certificates(store)) == 2


def test_ingress_without_issuer_annotation_gets_no_certificate(store: LocalStore) -> None:
    store.create(obj=ingress(annotations={"kubernetes.io/ingress.class": "nginx"}))

    reconcile(store)

    assert certificates(store) == {}


def test_spec_annotations_are_applied_to_every_certificate(store: LocalStore) -> None:
    store.create(obj=ingress(annotations={
        "cert-manager.io/cluster-issuer": "letsencrypt",
        "cert-manager.io/common-name": "a.example.test",
        "cert-manager.io/duration": "2160h",
        "cert-manager.io/renew-before": "360h",
        "cert-manager.io/private-key-algorithm": "RSA",
        "cert-manager.io/private-key-size": "3072",
    }))

    reconcile(store)

    found = certificates(store)
    assert len(found) == 2
    spec = found["a-tls"]["spec"]
    assert spec["commonName"] == "a.example.test"
    assert spec["duration"] == "2160h"
    assert spec["renewBefore"] == "360h"
    assert spec["privateKey"] == {"algorithm": "RSA", "size": 3072}
    parsed = parsing.parse_certificate(found["b-tls"])
    assert parsed.private_key.algorithm == "RSA"
    assert parsed.private_key.size == 3072
    assert parsed.duration is not None
    assert parsed.duration.days == 90


def test_invalid_annotation_creates_no_certificate(store: LocalStore) -> None:
    store.create(obj=ingress(annotations={
        "cert-manager.io/cluster-issuer": "letsencrypt",
        "cert-manager.io/private-key-size": "big",
    }))

    reconcile(store)

    assert certificates(store) == {}


def test_removing_the_issuer_annotation_deletes_the_owned_certificates(store: LocalStore) -> None:
    store.create(obj=ingress())
    reconcile(store)
    assert len(certificates(store)) == 2

    update_ingress(store, annotations={})
    reconcile(store)

    assert certificates(store) == {}


def test_removing_a_tls_entry_deletes_only_its_certificate(store: LocalStore) -> None:
    store.create(obj=ingress())
    reconcile(store)

    update_ingress(store, tls=[{"hosts": ["a.example.test"], "secretName": "a-tls"}])
    reconcile(store)

    found = certificates(store)
    assert sorted(found) == ["a-tls"]
    assert found["a-tls"]["spec"]["dnsNames"] == ["a.example.test"]
    assert found["a-tls"]["metadata"]["generation"] == 2


def test_tls_entry_without_secret_name_is_skipped_and_others_still_issue(
    store: LocalStore,
) -> None:
    store.create(obj=ingress(tls=[
        {"hosts": ["a.example.test"]},
        {"hosts": ["b.example.test"], "secretName": "b-tls"},
        {"secretName": "c-tls"},
    ]))

    reconcile(store)

    assert sorted(certificates(store)) == ["b-tls"]


def test_tls_entries_sharing_a_secret_merge_their_hosts(store: LocalStore) -> None:
    store.create(obj=ingress(tls=[
        {"hosts": ["a.example.test"], "secretName": "shared-tls"},
        {"hosts": ["b.example.test", "a.example.test"], "secretName": "shared-tls"},
    ]))

    reconcile(store)

    found = certificates(store)
    assert sorted(found) == ["shared-tls"]
    assert found["shared-tls"]["spec"]["dnsNames"] == ["a.example.test", "b.example.test"]


def test_certificate_not_owned_by_the_ingress_is_left_untouched(
    store: LocalStore, caplog: pytest.LogCaptureFixture
) -> None:
    theirs = store.create(obj={
        "apiVersion": "certctl.io/v1",
        "kind": "Certificate",
        "metadata": {"name": "a-tls", "namespace": "shop"},
        "spec": {
            "secretName": "a-tls",
            "dnsNames": ["hand.example.test"],
            "issuerRef": {"name": "manual", "kind": "Issuer"},
        },
    })
    store.create(obj=ingress())

    with caplog.at_level(logging.WARNING):
        reconcile(store)
        update_ingress(store, annotations={})
        reconcile(store)

    assert store.get(kind="Certificate", namespace="shop", name="a-tls") == theirs
    assert "not owned by this Ingress" in caplog.text


def test_reconciling_again_changes_nothing(store: LocalStore) -> None:
    store.create(obj=ingress())
    reconcile(store)
    before = certificates(store)

    reconcile(store)

    assert certificates(store) == before


def test_deleted_ingress_takes_its_certificates_with_it(store: LocalStore) -> None:
    store.create(obj=ingress())
    reconcile(store)

    store.delete(kind="Ingress", namespace="shop", name="web")
    reconcile(store)

    assert certificates(store) == {}


def test_usages_annotation_is_applied(store: LocalStore) -> None:
    store.create(obj=ingress(annotations={
        "cert-manager.io/cluster-issuer": "letsencrypt",
        "cert-manager.io/usages": "digital signature,key encipherment,server auth",
    }))

    reconcile(store)

    found = certificates(store)
    assert found["a-tls"]["spec"]["usages"] == [
        "digital signature", "key encipherment", "server auth"
    ]
