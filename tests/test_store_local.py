"""The standalone store behaves like an API server over manifest files and a state dir."""

from __future__ import annotations

import datetime
import os
import stat
import threading
import tracemalloc
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from certctl.api.resources import ObjectKey
from certctl.store import interface, local
from certctl.store.interface import WatchEvent
from certctl.store.local import SOURCE_ANNOTATION, LocalStore


def secret(name: str, *, namespace: str = "default", **extra: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "type": "Opaque",
        "data": {"k": "dmFsdWU="},
    }
    obj.update(extra)
    return obj


def certificate(name: str, *, namespace: str = "default") -> dict[str, Any]:
    return {
        "apiVersion": "certctl.io/v1",
        "kind": "Certificate",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "secretName": name,
            "dnsNames": [f"{name}.example.test"],
            "issuerRef": {"name": "pebble", "kind": "ClusterIssuer"},
        },
    }


def owned_by(obj: dict[str, Any], owner: dict[str, Any]) -> dict[str, Any]:
    obj["metadata"]["ownerReferences"] = [
        {
            "apiVersion": owner["apiVersion"],
            "kind": owner["kind"],
            "name": owner["metadata"]["name"],
            "uid": owner["metadata"]["uid"],
            "controller": True,
        }
    ]
    return obj


def new_store(tmp_path: Path, *, manifests: bool = False) -> LocalStore:
    manifests_dir = tmp_path / "manifests" if manifests else None
    if manifests_dir is not None:
        manifests_dir.mkdir(exist_ok=True)
    return LocalStore(manifests_dir=manifests_dir, state_dir=tmp_path / "state")


def recording(store: LocalStore) -> list[WatchEvent]:
    events: list[WatchEvent] = []
    store.subscribe(events.append)
    return events


def write_manifest(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / "manifests" / name
    path.write_text(text)
    return path


INGRESS_YAML = """\
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: web
spec:
  rules:
  - host: {host}
"""

ISSUER_YAML = """\
apiVersion: certctl.io/v1
kind: ClusterIssuer
metadata:
  name: {name}
spec:
  selfSigned: {{}}
"""


# --- what only the local store does (the contract is in test_store_contract.py) ------


def test_two_stores_of_one_process_never_give_one_object_the_same_version_twice(
    tmp_path: Path,
) -> None:
    """A manifest object's uid comes from its name, so the same issuer read by two stores
    (a test's, the next test's) has one uid: its versions must differ, or a uid and a
    resourceVersion would name two contents (api/parsing remembers issuers by them)."""
    issuer = {"apiVersion": "certctl.io/v1", "kind": "ClusterIssuer",
              "metadata": {"name": "pebble"}, "spec": {"selfSigned": {}}}
    read = []
    for directory in (tmp_path / "one", tmp_path / "two"):
        (directory / "manifests").mkdir(parents=True)
        (directory / "manifests" / "issuer.yaml").write_text(yaml.safe_dump(issuer))
        store = new_store(directory, manifests=True)
        store.reload_manifests()
        found = store.get(kind="ClusterIssuer", namespace=None, name="pebble")
        assert found is not None
        read.append((found["metadata"]["uid"], found["metadata"]["resourceVersion"]))
    assert read[0][0] == read[1][0]  # the same uid
    assert read[0][1] != read[1][1]


def test_secret_generation_counts_data_changes(tmp_path: Path) -> None:
    """The API server keeps no generation for a Secret; the local store counts its data
    changes, so that `serve`'s dispatch skips its own metadata-only writes to Secrets."""
    store = new_store(tmp_path)
    sec = store.create(obj=secret("s"))
    assert sec["metadata"]["generation"] == 1
    sec["metadata"]["labels"] = {"team": "x"}
    sec = store.replace(obj=sec)
    assert sec["metadata"]["generation"] == 1
    sec["data"] = {"k": "b3RoZXI="}
    sec = store.replace(obj=sec)
    assert sec["metadata"]["generation"] == 2


def test_replace_with_a_forged_uid_keeps_the_stored_one(tmp_path: Path) -> None:
    """The API server refuses such a write as invalid (uid is immutable); the local
    store keeps the uid it gave, which its garbage collection goes by."""
    store = new_store(tmp_path)
    created = store.create(obj=secret("a"))
    changed = dict(created)
    changed["metadata"] = dict(created["metadata"], uid="forged")
    changed["data"] = {"k": "eA=="}

    replaced = store.replace(obj=changed)

    assert replaced["metadata"]["uid"] == created["metadata"]["uid"]
    assert replaced["data"] == {"k": "eA=="}


# --- state files -------------------------------------------------------------------


def test_state_files_are_private_and_leave_no_temporary_files(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    obj = store.create(obj=secret("a"))
    obj["data"] = {"k": "Yg=="}
    obj = store.replace(obj=obj)
    obj["status"] = {"seen": True}
    store.replace_status(obj=obj)
    store.create(obj=certificate("c"))

    files = [p for p in (tmp_path / "state").rglob("*") if p.is_file()]
    assert len(files) == 2
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        assert not path.name.startswith("."), path
        assert not path.name.endswith(".tmp"), path


def test_deleted_object_leaves_no_state_file(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    store.create(obj=secret("a"))
    store.delete(kind="Secret", namespace="default", name="a")
    store.delete(kind="Secret", namespace="default", name="a")  # repeating is fine

    assert store.get(kind="Secret", namespace="default", name="a") is None
    assert [p for p in (tmp_path / "state").rglob("*") if p.is_file()] == []


def test_objects_persist_across_a_new_store_and_versions_keep_increasing(
    tmp_path: Path,
) -> None:
    first = new_store(tmp_path)
    created = first.create(obj=secret("a"))
    created["status"] = {"note": "kept"}
    updated = first.replace_status(obj=created)
    cluster_scoped = first.create(obj={
        "apiVersion": "certctl.io/v1", "kind": "ClusterIssuer",
        "metadata": {"name": "pebble"}, "spec": {"selfSigned": {}},
    })

    second = new_store(tmp_path)

    assert second.get(kind="Secret", namespace="default", name="a") == updated
    assert second.get(kind="ClusterIssuer", namespace=None, name="pebble") == cluster_scoped
    newer = second.create(obj=secret("b"))
    assert int(newer["metadata"]["resourceVersion"]) > int(updated["metadata"]["resourceVersion"])
    assert int(newer["metadata"]["resourceVersion"]) > int(
        cluster_scoped["metadata"]["resourceVersion"]
    )
    # the version read before the restart is still current, so it may be written
    updated["data"] = {"k": "YWZ0ZXI="}
    assert second.replace(obj=updated)["data"] == {"k": "YWZ0ZXI="}


# --- garbage collection -------------------------------------------------------------


def test_collected_dependents_are_reported_as_deleted_and_stay_gone(tmp_path: Path) -> None:
    """The contract test shows that they go; here, the watch events and the state dir."""
    store = new_store(tmp_path)
    cert = store.create(obj=certificate("web"))
    order = store.create(obj=owned_by({
        "apiVersion": "certctl.io/v1", "kind": "Order",
        "metadata": {"name": "web-1", "namespace": "default"}, "spec": {},
    }, cert))
    store.create(obj=owned_by({
        "apiVersion": "certctl.io/v1", "kind": "Challenge",
        "metadata": {"name": "web-1-0", "namespace": "default"}, "spec": {},
    }, order))
    store.create(obj=secret("unrelated"))
    events = recording(store)

    store.delete(kind="Certificate", namespace="default", name="web")

    assert store.list(kind="Order") == []
    assert store.list(kind="Challenge") == []
    assert store.get(kind="Secret", namespace="default", name="unrelated") is not None
    assert {(e.type, e.key.kind) for e in events} == {
        ("DELETED", "Certificate"), ("DELETED", "Order"), ("DELETED", "Challenge")
    }
    assert new_store(tmp_path).list(kind="Challenge") == []


def test_dependents_are_matched_by_owner_uid_not_name(tmp_path: Path) -> None:
    """Local only: on a cluster the garbage collector also takes an object whose owner
    (by uid) is gone, at any time, so this case says nothing about a deleted owner."""
    store = new_store(tmp_path)
    cert = store.create(obj=certificate("web"))
    stranger = owned_by(secret("web"), dict(cert, metadata=dict(cert["metadata"], uid="other")))
    store.create(obj=stranger)

    store.delete(kind="Certificate", namespace="default", name="web")

    assert store.get(kind="Secret", namespace="default", name="web") is not None


def test_owners_changed_by_an_update_decide_what_a_deletion_takes(tmp_path: Path) -> None:
    """Dependents are found through an index of owner uids: an update that drops an
    owner reference, or adds one, must move the object in it, as after a restart."""
    store = new_store(tmp_path)
    first = store.create(obj=certificate("first"))
    second = store.create(obj=certificate("second"))
    moved = store.create(obj=owned_by(secret("moved"), first))
    adopted = store.create(obj=secret("adopted"))
    moved["metadata"]["ownerReferences"] = []
    store.replace(obj=moved)
    store.replace(obj=owned_by(adopted, second))

    store.delete(kind="Certificate", namespace="default", name="first")
    assert store.get(kind="Secret", namespace="default", name="moved") is not None
    restarted = new_store(tmp_path)
    restarted.delete(kind="Certificate", namespace="default", name="second")
    assert restarted.get(kind="Secret", namespace="default", name="adopted") is None
    store.delete(kind="Certificate", namespace="default", name="second")
    assert store.get(kind="Secret", namespace="default", name="adopted") is None


# --- manifests ------------------------------------------------------------------------


def test_multi_document_and_list_manifests_load_with_default_namespace(tmp_path: Path) -> None:
    store = new_store(tmp_path, manifests=True)
    write_manifest(tmp_path, "all.yaml", """\
apiVersion: v1
kind: Secret
metadata:
  name: one
---
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Secret
  metadata:
    name: two
    namespace: team
- apiVersion: certctl.io/v1
  kind: ClusterIssuer
  metadata:
    name: ca
    namespace: ignored
  spec:
    selfSigned: {}
""")

    errors = store.reload_manifests()

    assert errors == []
    one = store.get(kind="Secret", namespace="default", name="one")
    assert one is not None
    assert one["metadata"]["namespace"] == "default"
    assert one["metadata"]["annotations"][SOURCE_ANNOTATION].endswith("all.yaml#0")
    assert one["metadata"]["uid"]
    assert store.get(kind="Secret", namespace="team", name="two") is not None
    issuer = store.get(kind="ClusterIssuer", namespace=None, name="ca")
    assert issuer is not None
    assert "namespace" not in issuer["metadata"]


def test_cert_manager_objects_are_kept_as_written(tmp_path: Path) -> None:
    store = new_store(tmp_path, manifests=True)
    write_manifest(tmp_path, "cm.yml", """\
apiVersion: cert-manager.io/v1
kind: ClusterIssuer
metadata:
  name: letsencrypt
spec:
  selfSigned: {}
---
apiVersion: cert-manager.io/v1
kind: Certificate
metadata:
  name: web
spec:
  secretName: web
  dnsNames: [web.example.test]
  issuerRef: {name: letsencrypt, kind: ClusterIssuer, group: cert-manager.io}
""")

    assert store.reload_manifests() == []

    issuer = store.get(kind="ClusterIssuer", namespace=None, name="letsencrypt")
    cert = store.get(kind="Certificate", namespace="default", name="web")
    assert issuer is not None
    assert cert is not None
    assert issuer["apiVersion"] == "cert-manager.io/v1"
    assert cert["spec"]["issuerRef"]["group"] == "cert-manager.io"


def test_bad_yaml_is_reported_and_keeps_that_files_previous_objects(tmp_path: Path) -> None:
    store = new_store(tmp_path, manifests=True)
    broken = write_manifest(tmp_path, "a.yaml", ISSUER_YAML.format(name="a"))
    write_manifest(tmp_path, "b.yaml", ISSUER_YAML.format(name="b"))
    assert store.reload_manifests() == []

    broken.write_text("kind: [unclosed\n")
    write_manifest(tmp_path, "c.yaml", ISSUER_YAML.format(name="c"))
    events = recording(store)
    errors = store.reload_manifests()

    assert len(errors) == 1
    assert errors[0].source == str(broken)
    assert str(broken) in str(errors[0])
    assert "YAML" in errors[0].message
    assert store.manifest_errors == errors
    names = [o["metadata"]["name"] for o in store.list(kind="ClusterIssuer")]
    assert names == ["a", "b", "c"]
    assert [(e.type, e.key.name) for e in events] == [("ADDED", "c")]


def test_document_without_kind_or_name_is_reported_with_its_index(tmp_path: Path) -> None:
    store = new_store(tmp_path, manifests=True)
    path = write_manifest(tmp_path, "docs.yaml", """\
apiVersion: v1
metadata:
  name: no-kind
---
apiVersion: v1
kind: Secret
metadata: {}
---
apiVersion: v1
kind: Secret
metadata:
  name: fine
""")

    errors = store.reload_manifests()

    assert [(e.source, "kind" in e.message) for e in errors] == [
        (f"{path}#0", True), (f"{path}#1", False)
    ]
    assert "metadata.name" in errors[1].message
    assert store.get(kind="Secret", namespace="default", name="fine") is not None


def test_duplicate_object_across_files_is_reported_and_first_kept(tmp_path: Path) -> None:
    store = new_store(tmp_path, manifests=True)
    first = write_manifest(tmp_path, "1.yaml", ISSUER_YAML.format(name="dup"))
    second = write_manifest(
        tmp_path, "2.yaml", ISSUER_YAML.format(name="dup").replace("selfSigned: {}", "ca: {}")
    )

    errors = store.reload_manifests()

    assert len(errors) == 1
    assert errors[0].source == f"{second}#0"
    assert str(first) in errors[0].message
    kept = store.get(kind="ClusterIssuer", namespace=None, name="dup")
    assert kept is not None
    assert "selfSigned" in kept["spec"]


def test_edited_manifest_emits_modified_and_removed_manifest_emits_deleted(
    tmp_path: Path,
) -> None:
    store = new_store(tmp_path, manifests=True)
    path = write_manifest(tmp_path, "web.yaml", INGRESS_YAML.format(host="a.example.test"))
    events = recording(store)
    store.reload_manifests()
    before = store.get(kind="Ingress", namespace="default", name="web")
    assert before is not None

    store.reload_manifests()  # nothing changed: no event
    path.write_text(INGRESS_YAML.format(host="b.example.test"))
    store.reload_manifests()
    after = store.get(kind="Ingress", namespace="default", name="web")
    assert after is not None
    path.unlink()
    store.reload_manifests()

    key = ObjectKey(kind="Ingress", namespace="default", name="web")
    assert [(e.type, e.key) for e in events] == [
        ("ADDED", key), ("MODIFIED", key), ("DELETED", key)
    ]
    assert events[1].obj["spec"]["rules"][0]["host"] == "b.example.test"
    assert after["metadata"]["generation"] == before["metadata"]["generation"] + 1
    assert after["metadata"]["uid"] == before["metadata"]["uid"]
    assert after["metadata"]["resourceVersion"] != before["metadata"]["resourceVersion"]
    assert store.get(kind="Ingress", namespace="default", name="web") is None


def test_editing_a_manifest_keeps_its_creation_timestamp(tmp_path: Path) -> None:
    store = new_store(tmp_path, manifests=True)
    path = write_manifest(tmp_path, "web.yaml", INGRESS_YAML.format(host="a.example.test"))
    os.utime(path, (1_600_000_000, 1_600_000_000))
    store.reload_manifests()
    before = store.get(kind="Ingress", namespace="default", name="web")
    assert before is not None

    path.write_text(INGRESS_YAML.format(host="b.example.test"))
    os.utime(path, (1_700_000_000, 1_700_000_000))
    store.reload_manifests()
    after = store.get(kind="Ingress", namespace="default", name="web")

    assert after is not None
    assert after["spec"]["rules"][0]["host"] == "b.example.test"
    assert after["metadata"]["creationTimestamp"] == before["metadata"]["creationTimestamp"]


def _manifest_ingress_owning_a_certificate(tmp_path: Path) -> tuple[LocalStore, Path]:
    """An Ingress from a manifest and a Certificate in the state dir owned by it: the
    store and the manifest's path."""
    store = new_store(tmp_path, manifests=True)
    path = write_manifest(tmp_path, "web.yaml", INGRESS_YAML.format(host="a.example.test"))
    store.reload_manifests()
    ingress = store.get(kind="Ingress", namespace="default", name="web")
    assert ingress is not None
    store.create(obj=owned_by(certificate("web"), ingress))
    return store, path


def test_removed_manifest_owner_takes_its_state_dependents(tmp_path: Path) -> None:
    store, path = _manifest_ingress_owning_a_certificate(tmp_path)

    path.unlink()
    store.reload_manifests()

    assert store.get(kind="Certificate", namespace="default", name="web") is None


def test_manifest_owner_removed_while_stopped_takes_its_dependents(tmp_path: Path) -> None:
    _, path = _manifest_ingress_owning_a_certificate(tmp_path)

    path.unlink()
    restarted = new_store(tmp_path, manifests=True)
    assert restarted.reload_manifests() == []
    assert restarted.get(kind="Certificate", namespace="default", name="web") is not None
    restarted.collect_orphans()

    assert restarted.get(kind="Certificate", namespace="default", name="web") is None


def test_status_of_a_manifest_object_survives_edits_and_restarts(tmp_path: Path) -> None:
    store = new_store(tmp_path, manifests=True)
    path = write_manifest(tmp_path, "issuer.yaml", ISSUER_YAML.format(name="ca"))
    store.reload_manifests()
    issuer = store.get(kind="ClusterIssuer", namespace=None, name="ca")
    assert issuer is not None
    issuer["status"] = {"conditions": [{"type": "Ready", "status": "True"}]}
    store.replace_status(obj=issuer)

    path.write_text(ISSUER_YAML.format(name="ca").replace("selfSigned: {}", "ca: {secretName: x}"))
    store.reload_manifests()
    edited = store.get(kind="ClusterIssuer", namespace=None, name="ca")
    assert edited is not None
    assert edited["spec"] == {"ca": {"secretName": "x"}}
    assert edited["status"] == issuer["status"]
    assert path.read_text().count("status") == 0  # the user's file is never written

    restarted = new_store(tmp_path, manifests=True)
    restarted.reload_manifests()
    again = restarted.get(kind="ClusterIssuer", namespace=None, name="ca")
    assert again is not None
    assert again["spec"] == {"ca": {"secretName": "x"}}
    assert again["status"] == issuer["status"]


def test_stale_version_of_a_manifest_object_conflicts_after_an_edit(tmp_path: Path) -> None:
    store = new_store(tmp_path, manifests=True)
    path = write_manifest(tmp_path, "issuer.yaml", ISSUER_YAML.format(name="ca"))
    store.reload_manifests()
    stale = store.get(kind="ClusterIssuer", namespace=None, name="ca")
    assert stale is not None

    path.write_text(ISSUER_YAML.format(name="ca").replace("selfSigned: {}", "ca: {secretName: x}"))
    store.reload_manifests()
    stale["status"] = {"observed": 1}

    with pytest.raises(interface.Conflict):
        store.replace_status(obj=stale)


def test_deleting_a_manifest_object_names_its_file(tmp_path: Path) -> None:
    store = new_store(tmp_path, manifests=True)
    path = write_manifest(tmp_path, "issuer.yaml", ISSUER_YAML.format(name="ca"))
    store.reload_manifests()

    with pytest.raises(interface.StoreError, match=str(path)):
        store.delete(kind="ClusterIssuer", namespace=None, name="ca")
    assert store.get(kind="ClusterIssuer", namespace=None, name="ca") is not None


def test_state_object_shadows_a_manifest_object_of_the_same_key(tmp_path: Path) -> None:
    store = new_store(tmp_path, manifests=True)
    write_manifest(tmp_path, "tls.yaml", """\
apiVersion: v1
kind: Secret
metadata:
  name: web-tls
data:
  k: dXNlcg==
""")
    store.reload_manifests()
    seeded = store.get(kind="Secret", namespace="default", name="web-tls")
    assert seeded is not None

    seeded["data"] = {"k": "Y2VydGN0bA=="}
    store.replace(obj=seeded)

    got = store.get(kind="Secret", namespace="default", name="web-tls")
    assert got is not None
    assert got["data"] == {"k": "Y2VydGN0bA=="}
    restarted = new_store(tmp_path, manifests=True)
    restarted.reload_manifests()
    again = restarted.get(kind="Secret", namespace="default", name="web-tls")
    assert again is not None
    assert again["data"] == {"k": "Y2VydGN0bA=="}


# --- list index and incremental reload -----------------------------------------------------


def test_list_returns_only_its_kind_and_namespace_after_creates_deletes_and_replaces(
    tmp_path: Path,
) -> None:
    store = new_store(tmp_path)
    for namespace in ("default", "other"):
        for name in ("a", "b", "c"):
            store.create(obj=secret(name, namespace=namespace, metadata={
                "name": name, "namespace": namespace, "labels": {"app": name}}))
        store.create(obj=certificate("web", namespace=namespace))
    store.create(obj={"apiVersion": "certctl.io/v1", "kind": "ClusterIssuer",
                      "metadata": {"name": "ca"}, "spec": {"selfSigned": {}}})

    store.delete(kind="Secret", namespace="default", name="b")
    moved = store.get(kind="Secret", namespace="other", name="c")
    assert moved is not None
    moved["metadata"]["labels"] = {"app": "a"}
    store.replace(obj=moved)
    store.delete(kind="Certificate", namespace="other", name="web")

    def keys(objs: list[dict[str, Any]]) -> list[str]:
        return [f"{o['kind']} {o['metadata'].get('namespace')}/{o['metadata']['name']}"
                for o in objs]

    assert keys(store.list(kind="Secret", namespace="default")) == [
        "Secret default/a", "Secret default/c"]
    assert keys(store.list(kind="Secret")) == [
        "Secret default/a", "Secret default/c", "Secret other/a", "Secret other/b",
        "Secret other/c"]
    assert keys(store.list(kind="Secret", labels={"app": "a"})) == [
        "Secret default/a", "Secret other/a", "Secret other/c"]
    assert keys(store.list(kind="Secret", namespace="other", labels={"app": "c"})) == []
    assert keys(store.list(kind="Secret", labels={"app": "b"})) == ["Secret other/b"]
    assert keys(store.list(kind="Certificate")) == ["Certificate default/web"]
    assert store.list(kind="Certificate", namespace="other") == []
    assert keys(store.list(kind="ClusterIssuer")) == ["ClusterIssuer None/ca"]
    assert store.list(kind="ClusterIssuer", namespace="default") == []
    assert store.list(kind="Issuer") == []


def test_list_sees_a_state_object_shadowing_a_manifest_object_and_its_labels(
    tmp_path: Path,
) -> None:
    store = new_store(tmp_path, manifests=True)
    write_manifest(tmp_path, "tls.yaml", """\
apiVersion: v1
kind: Secret
metadata:
  name: web-tls
  labels: {owner: user}
""")
    store.reload_manifests()
    seeded = store.get(kind="Secret", namespace="default", name="web-tls")
    assert seeded is not None

    seeded["metadata"]["labels"] = {"owner": "certctl"}
    store.replace(obj=seeded)

    assert store.list(kind="Secret", labels={"owner": "user"}) == []
    [listed] = store.list(kind="Secret", labels={"owner": "certctl"})
    assert listed["metadata"]["name"] == "web-tls"
    assert len(store.list(kind="Secret")) == 1


def test_unchanged_manifest_files_are_not_parsed_again(tmp_path: Path) -> None:
    store = new_store(tmp_path, manifests=True)
    a = write_manifest(tmp_path, "a.yaml", ISSUER_YAML.format(name="a"))
    b = write_manifest(tmp_path, "b.yaml", ISSUER_YAML.format(name="b"))
    store.reload_manifests()
    parsed = [store.last_parsed]
    kept = store.get(kind="ClusterIssuer", namespace=None, name="a")
    events = recording(store)

    b.write_text(ISSUER_YAML.format(name="b").replace("selfSigned: {}", "ca: {}"))
    os.utime(a)  # touched, same bytes
    store.reload_manifests()
    parsed.append(store.last_parsed)
    store.reload_manifests()
    parsed.append(store.last_parsed)

    assert parsed == [(a, b), (b,), ()]
    assert [(e.type, e.key.name) for e in events] == [("MODIFIED", "b")]
    assert store.get(kind="ClusterIssuer", namespace=None, name="a") == kept


def test_an_edit_keeping_size_and_mtime_is_still_seen(tmp_path: Path) -> None:
    store = new_store(tmp_path, manifests=True)
    path = write_manifest(tmp_path, "web.yaml", INGRESS_YAML.format(host="a.example.test"))
    os.utime(path, ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000))
    store.reload_manifests()

    path.write_text(INGRESS_YAML.format(host="b.example.test"))
    os.utime(path, ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000))
    store.reload_manifests()

    assert store.last_parsed == (path,)
    ingress = store.get(kind="Ingress", namespace="default", name="web")
    assert ingress is not None
    assert ingress["spec"]["rules"][0]["host"] == "b.example.test"


def test_a_file_broken_then_restored_keeps_its_objects_without_events(tmp_path: Path) -> None:
    store = new_store(tmp_path, manifests=True)
    path = write_manifest(tmp_path, "web.yaml", INGRESS_YAML.format(host="a.example.test"))
    store.reload_manifests()
    before = store.get(kind="Ingress", namespace="default", name="web")
    events = recording(store)

    path.write_text("kind: [unclosed\n")
    broken_twice = [store.reload_manifests(), store.reload_manifests()]
    path.write_text(INGRESS_YAML.format(host="a.example.test"))
    assert store.reload_manifests() == []

    assert [[e.source for e in errors] for errors in broken_twice] == [[str(path)]] * 2
    assert "line 1" in broken_twice[1][0].message
    assert events == []
    assert store.get(kind="Ingress", namespace="default", name="web") == before


def test_a_duplicate_takes_over_when_the_file_defining_it_first_goes(tmp_path: Path) -> None:
    store = new_store(tmp_path, manifests=True)
    first = write_manifest(tmp_path, "1.yaml", ISSUER_YAML.format(name="dup"))
    write_manifest(
        tmp_path, "2.yaml", ISSUER_YAML.format(name="dup").replace("selfSigned: {}", "ca: {}"))
    assert len(store.reload_manifests()) == 1
    events = recording(store)

    first.unlink()
    assert store.reload_manifests() == []

    assert [(e.type, e.key.name) for e in events] == [("MODIFIED", "dup")]
    kept = store.get(kind="ClusterIssuer", namespace=None, name="dup")
    assert kept is not None
    assert "ca" in kept["spec"]


def test_state_files_are_json_and_yaml_reads_them_too() -> None:
    obj = {"b": 1, "a": [1, "x"], "c": {"d": None, "e": True, "f": "ü\n\"q\""}, "g": 1e20}
    written = local.dump_state_file(obj)
    assert written.startswith(b'{"b":1,"a":[1,"x"]')  # JSON, key order kept
    assert local.load_state_file(written.decode()) == obj  # exactly, the float too
    assert yaml.safe_load(written) == {**obj, "g": "1e+20"}  # YAML 1.1 wants a dot in floats


def test_values_json_has_not_are_written_as_yaml_with_libyaml_when_pyyaml_has_it() -> None:
    expected = yaml.CSafeDumper if yaml.__with_libyaml__ else yaml.SafeDumper
    assert local._SafeDumper is expected
    when = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
    written = local.dump_state_file({"b": when, "a": {"x", "y"}})
    assert written.startswith(b"b: 2026-01-02 03:04:05+00:00\n")  # key order kept
    assert local.load_state_file(written.decode()) == {"b": when, "a": {"x", "y"}}


def test_listed_objects_are_copies_down_to_nested_values(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    store.create(obj=secret("a", metadata={"name": "a", "namespace": "default",
                                           "labels": {"app": "web"}},
                            extra={"hosts": ["a.test"], "when": {"b", "c"}}))

    [listed] = store.list(kind="Secret", labels={"app": "web"})
    listed["metadata"]["labels"]["app"] = "changed"
    listed["extra"]["hosts"].append("b.test")
    listed["extra"]["when"].add("d")

    [again] = store.list(kind="Secret", labels={"app": "web"})
    assert again["extra"] == {"hosts": ["a.test"], "when": {"b", "c"}}


def test_a_shared_list_hands_out_the_stored_objects_without_copying(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    store.create(obj=secret("a"))

    [first] = store.list(kind="Secret", shared=True)
    [second] = store.list(kind="Secret", shared=True)
    [copied] = store.list(kind="Secret")

    assert first is second
    assert copied == first and copied is not first


def _annotated(name: str) -> dict[str, Any]:
    # Each object's annotation key built at run time: equal strings, not one object.
    key = "".join(("example.com/", "owner-team"))
    return secret(name, metadata={"name": name, "namespace": "default",
                                  "annotations": {key: "web"}})


def test_stored_objects_share_their_keys_whoever_wrote_them(tmp_path: Path) -> None:
    """Every object a store keeps repeats the same field and annotation names: one string
    for each, not one per object (a certificate's objects in `certctl serve` held ~9 KB of
    copies of them), whether created, replaced or written a status."""
    (tmp_path / "manifests").mkdir()
    (tmp_path / "manifests" / "two.yaml").write_text(yaml.safe_dump_all([
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name},
         "data": {"some-setting": "on"}} for name in ("m1", "m2")]))
    store = new_store(tmp_path, manifests=True)
    store.reload_manifests()
    store.create(obj=_annotated("a"))
    replaced = store.create(obj=_annotated("b"))
    replaced["metadata"]["annotations"] = _annotated("b")["metadata"]["annotations"]
    store.replace(obj=replaced)
    store.create(obj=_annotated("c"))
    with_status = store.get(kind="Secret", namespace="default", name="c")
    assert with_status is not None
    with_status["status"] = {"observed-by": "x"}
    store.replace_status(obj=with_status)

    secrets = store.list(kind="Secret", shared=True)
    keys = [next(iter(obj["metadata"]["annotations"])) for obj in secrets]
    assert len(keys) == 3 and keys[0] == "example.com/owner-team"
    assert all(key is keys[0] for key in keys)
    assert all(next(iter(obj["metadata"])) is next(iter(secrets[0]["metadata"]))
               for obj in secrets)
    parsed = store.list(kind="ConfigMap", shared=True)
    assert [next(iter(obj["data"])) for obj in parsed] == ["some-setting"] * 2
    assert next(iter(parsed[0]["data"])) is next(iter(parsed[1]["data"]))
    # What readers get stays their own copy.
    copied = store.get(kind="Secret", namespace="default", name="a")
    assert copied == secrets[0] and copied is not secrets[0]


def test_one_process_at_a_time_holds_a_state_dir_and_clears_what_a_killed_writer_left(
    tmp_path: Path,
):
    state = tmp_path / "state"
    leftover = state / "objects" / "Order" / "default" / ".web-tls-1.yaml.0123abcd.tmp"
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"half an ord")
    kept = leftover.with_name("web-tls-1.yaml")
    kept.write_bytes(b"kind: Order\n")
    held = local.claim_state_dir(state)
    try:
        assert not leftover.exists() and kept.exists()
        with pytest.raises(local.StateDirBusy, match="another certctl serve"):
            local.claim_state_dir(state)  # a second open of the lock file: another holder
    finally:
        os.close(held)
    os.close(local.claim_state_dir(state))  # free again once released


def _fleet_ingress(number: int, *, renew_before: str = "720h") -> dict[str, Any]:
    name = f"site-{number:04d}"
    return {
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": name, "annotations": {
            "cert-manager.io/cluster-issuer": "pebble",
            "cert-manager.io/renew-before": renew_before}},
        "spec": {"tls": [{"hosts": [f"{name}.example.test"], "secretName": f"{name}-tls"}],
                 "rules": [{"host": f"{name}.example.test", "http": {"paths": [{
                     "path": "/", "pathType": "Prefix",
                     "backend": {"service": {"name": name, "port": {"number": 80}}}}]}}]},
    }


def test_an_edit_to_one_document_of_a_big_file_keeps_one_copy_of_the_others(
    tmp_path: Path,
) -> None:
    """The file is parsed again, but the store goes on holding the other documents' objects
    as first parsed (not a second set beside them), and the parse never holds every YAML
    node of the file at once (a process keeps most of what it took for a moment)."""
    store = new_store(tmp_path, manifests=True)
    ingresses = [_fleet_ingress(number) for number in range(300)]
    path = write_manifest(tmp_path, "sites.yaml", yaml.dump_all(ingresses))
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        store.reload_manifests()
        held = tracemalloc.get_traced_memory()[0] - start
        [first_kept] = [obj for obj in store.list(kind="Ingress", shared=True)
                        if obj["metadata"]["name"] == "site-0007"]

        ingresses[150] = _fleet_ingress(150, renew_before="700h")
        path.write_text(yaml.dump_all(ingresses))
        tracemalloc.reset_peak()
        before_edit = tracemalloc.get_traced_memory()[0]
        store.reload_manifests()
        now, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    edited = store.get(kind="Ingress", namespace="default", name="site-0150")
    assert edited is not None
    assert edited["metadata"]["annotations"]["cert-manager.io/renew-before"] == "700h"
    [kept] = [obj for obj in store.list(kind="Ingress", shared=True)
              if obj["metadata"]["name"] == "site-0007"]
    assert kept is first_kept
    assert now - before_edit < held * 0.1, (now - before_edit, held)
    assert peak - before_edit < held * 1.5, (peak - before_edit, held)


# --- writes wait for their disk outside the store's lock ---------------------------


class HeldWrites:
    """`atomic_write` of the state files whose name starts with `prefix` waits until
    `release`: a disk that takes its time, for one object's writes only."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, *, prefix: str) -> None:
        self.started = threading.Semaphore(0)
        self.released = threading.Event()
        write = local.atomic_write

        def held(path: Path, data: bytes) -> None:
            if path.name.startswith(prefix):
                self.started.release()
                assert self.released.wait(10)
            write(path, data)

        monkeypatch.setattr(local, "atomic_write", held)

    def wait_started(self) -> None:
        assert self.started.acquire(timeout=5), "the held write never started"


def in_thread(call: Callable[[], object]) -> tuple[threading.Thread, list[object]]:
    """Run `call` on a thread; the list gets its result or the exception it raised."""
    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(call())
        except Exception as err:  # handed to the test to assert on
            outcome.append(err)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def assert_slow_secret_is(outcome: list[object], *, store: LocalStore, tmp_path: Path) -> None:
    """The one write in `outcome` returned the Secret "slow" that the store holds now, and
    that a new store over the same state dir reads."""
    [written] = outcome
    assert isinstance(written, dict)
    assert store.get(kind="Secret", namespace="default", name="slow") == written
    assert new_store(tmp_path).get(kind="Secret", namespace="default", name="slow") == written


def test_a_write_waiting_for_its_disk_holds_up_no_other_object(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = new_store(tmp_path)
    store.create(obj=secret("other"))
    held = HeldWrites(monkeypatch, prefix="slow")
    slow, slow_outcome = in_thread(lambda: store.create(obj=secret("slow")))
    held.wait_started()

    # Reads and writes of other objects go on, and the object is not there before its file.
    def others() -> tuple[list[str], dict[str, Any] | None]:
        store.create(obj=secret("fast"))
        other = store.get(kind="Secret", namespace="default", name="other")
        assert other is not None
        store.replace(obj=other | {"data": {"k": "b3RoZXI="}})
        return ([obj["metadata"]["name"] for obj in store.list(kind="Secret")],
                store.get(kind="Secret", namespace="default", name="slow"))

    fast, fast_outcome = in_thread(others)
    fast.join(5)
    assert not fast.is_alive(), "writing another object waited for the held write"
    assert not (tmp_path / "state/objects/Secret/default/slow.yaml").exists()
    assert fast_outcome == [(["fast", "other"], None)]

    held.released.set()
    slow.join(5)
    assert_slow_secret_is(slow_outcome, store=store, tmp_path=tmp_path)


def test_writes_of_one_object_take_turns_and_each_checks_the_version_before_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = new_store(tmp_path)
    stale = store.create(obj=secret("slow"))
    held = HeldWrites(monkeypatch, prefix="slow")
    first, first_outcome = in_thread(lambda: store.replace(obj=stale | {"data": {"k": "MQ=="}}))
    held.wait_started()
    second, second_outcome = in_thread(lambda: store.replace(obj=stale | {"data": {"k": "Mg=="}}))
    again, again_outcome = in_thread(lambda: store.create(obj=secret("slow")))
    second.join(0.3)
    assert second.is_alive(), "a second write of the object did not wait for the first"

    held.released.set()
    for thread in (first, second, again):
        thread.join(5)
    assert_slow_secret_is(first_outcome, store=store, tmp_path=tmp_path)
    assert first_outcome[0]["data"] == {"k": "MQ=="}  # type: ignore[index]
    [refused] = second_outcome
    assert isinstance(refused, interface.Conflict)
    [exists] = again_outcome
    assert isinstance(exists, interface.AlreadyExists)


def test_a_deletion_waits_for_a_dependent_being_written_and_takes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = new_store(tmp_path)
    owner = store.create(obj=certificate("web"))
    events = recording(store)
    held = HeldWrites(monkeypatch, prefix="slow")
    creating, created = in_thread(lambda: store.create(obj=owned_by(secret("slow"), owner)))
    held.wait_started()
    deleting, _ = in_thread(lambda: store.delete(kind="Certificate", namespace="default",
                                                 name="web"))
    deleting.join(0.3)
    assert deleting.is_alive(), "the owner was deleted while its dependent was written"

    held.released.set()
    creating.join(5)
    deleting.join(5)
    assert isinstance(created[0], dict)
    assert [(e.type, e.key.kind) for e in events] == [
        ("ADDED", "Secret"), ("DELETED", "Certificate"), ("DELETED", "Secret")]
    assert store.get(kind="Secret", namespace="default", name="slow") is None
    assert not (tmp_path / "state/objects/Secret/default/slow.yaml").exists()


def test_a_write_that_fails_on_disk_changes_nothing_and_frees_the_object(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = new_store(tmp_path)
    write = local.atomic_write

    def full_disk(path: Path, data: bytes) -> None:
        raise local.StateWriteError(path=path, error=OSError(28, "No space left on device"))

    monkeypatch.setattr(local, "atomic_write", full_disk)
    with pytest.raises(local.StateWriteError, match="No space left"):
        store.create(obj=secret("web"))
    assert store.get(kind="Secret", namespace="default", name="web") is None

    monkeypatch.setattr(local, "atomic_write", write)
    created, outcome = in_thread(lambda: store.create(obj=secret("web")))
    created.join(5)
    assert isinstance(outcome[0], dict), "the failed write kept the object claimed"


def test_a_status_write_racing_an_edit_of_its_manifest_conflicts_and_keeps_the_status_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = new_store(tmp_path, manifests=True)
    path = write_manifest(tmp_path, "issuer.yaml", ISSUER_YAML.format(name="slow"))
    store.reload_manifests()
    issuer = store.get(kind="ClusterIssuer", namespace=None, name="slow")
    assert issuer is not None
    before = {"conditions": [{"type": "Ready", "status": "True"}]}
    issuer = store.replace_status(obj=issuer | {"status": before})
    held = HeldWrites(monkeypatch, prefix="slow")
    writing, outcome = in_thread(lambda: store.replace_status(
        obj=issuer | {"status": {"conditions": [{"type": "Ready", "status": "False"}]}}))
    held.wait_started()

    path.write_text(ISSUER_YAML.format(name="slow").replace("selfSigned: {}",
                                                            "ca: {secretName: x}"))
    store.reload_manifests()  # not held up by the write either
    held.released.set()
    writing.join(5)
    assert isinstance(outcome[0], interface.Conflict)
    for reader in (store, new_store(tmp_path, manifests=True)):
        reader.reload_manifests()
        edited = reader.get(kind="ClusterIssuer", namespace=None, name="slow")
        assert edited is not None
        assert edited["spec"] == {"ca": {"secretName": "x"}}
        assert edited["status"] == before


def test_atomic_write_to_a_bare_file_name_writes_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    local.atomic_write(Path("state.json"), b"{}")
    assert (tmp_path / "state.json").read_bytes() == b"{}"
    assert stat.S_IMODE((tmp_path / "state.json").stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_created_objects_get_distinct_version_4_uids_and_a_forked_child_draws_its_own(
    tmp_path: Path,
) -> None:
    store = new_store(tmp_path)
    uids = [store.create(obj=secret(f"s{index}"))["metadata"]["uid"] for index in range(50)]
    assert len(set(uids)) == 50
    assert {uuid.UUID(uid).version for uid in uids} == {4}
    # The uids come from a generator of the process's own, not from os.urandom: a child
    # forked from it must not draw what the parent draws next.
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child
        os.write(write_end, local._UIDS.getrandbits(128).to_bytes(16, "big"))
        os._exit(0)
    os.close(write_end)
    drawn_by_child = os.read(read_end, 16)
    os.close(read_end)
    os.waitpid(child, 0)
    assert drawn_by_child != local._UIDS.getrandbits(128).to_bytes(16, "big")
