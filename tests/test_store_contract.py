"""The Store contract (certctl/store/interface.py), run against every store: the local
one over a state dir, and the Kubernetes one talking to a real API server.

Each test gets two namespaces of its own (`Space`): on the cluster, fresh ones, so
that tests neither see each other's objects nor need cleaning up. What only one store
does (state files, manifests, watch events of the local store) is in test_store_local.py.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from certctl.store import interface
from certctl.store.interface import Store
from certctl.store.local import LocalStore
from tests.clusterops import admin_store, namespace
from tests.serving import eventually
from tests.test_store_local import certificate, owned_by

if TYPE_CHECKING:  # imported by pytest itself (pytest_plugins), to rewrite its asserts
    from tests.controlplane import ControlPlane

pytest_plugins = ["tests.controlplane"]


@dataclass(frozen=True, kw_only=True)
class Space:
    store: Store
    ns: str
    other: str

    def names(self, objs: list[dict[str, Any]]) -> list[str]:
        """Names of the objects in this test's namespaces (a cluster holds others too)."""
        return sorted(o["metadata"]["name"] for o in objs
                      if o["metadata"].get("namespace") in (self.ns, self.other))


@pytest.fixture(params=["local", "kube"])
def space(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Space]:
    if request.param == "local":
        yield Space(store=LocalStore(manifests_dir=None, state_dir=tmp_path / "state"),
                    ns="default", other="other")
        return
    plane: ControlPlane = request.getfixturevalue("control_plane")
    suffix = uuid.uuid4().hex[:8]
    store = admin_store(plane)
    try:
        with namespace(plane, f"store-{suffix}") as ns, \
                namespace(plane, f"store-other-{suffix}") as other:
            yield Space(store=store, ns=ns, other=other)
    finally:
        store.close()


def secret(name: str, *, namespace: str, labels: dict[str, str] | None = None
           ) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "namespace": namespace}
    if labels:
        metadata["labels"] = labels
    return {"apiVersion": "v1", "kind": "Secret", "metadata": metadata, "type": "Opaque",
            "data": {"k": "dmFsdWU="}}


def order(name: str, *, namespace: str) -> dict[str, Any]:
    return {"apiVersion": "certctl.io/v1", "kind": "Order",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"request": "LS0tLS0=", "dnsNames": ["web.example.test"],
                     "issuerRef": {"name": "pebble", "kind": "ClusterIssuer"}}}


# --- create / get / list -----------------------------------------------------------


def test_created_object_is_returned_by_get_with_server_fields(space: Space) -> None:
    store = space.store
    created = store.create(obj=certificate("a", namespace=space.ns))

    got = store.get(kind="Certificate", namespace=space.ns, name="a")

    assert got == created
    assert got["spec"]["dnsNames"] == ["a.example.test"]
    assert got["metadata"]["uid"]
    assert got["metadata"]["resourceVersion"]
    assert got["metadata"]["generation"] == 1
    assert got["metadata"]["creationTimestamp"].endswith("Z")
    assert store.get(kind="Certificate", namespace=space.other, name="a") is None


def test_list_filters_by_kind_namespace_and_labels(space: Space) -> None:
    store, ns, other = space.store, space.ns, space.other
    store.create(obj=secret("a", namespace=ns, labels={"app": "web", "tier": "front"}))
    store.create(obj=secret("b", namespace=ns, labels={"app": "db"}))
    store.create(obj=secret("c", namespace=other, labels={"app": "web"}))
    store.create(obj=certificate("web", namespace=ns))

    assert space.names(store.list(kind="Secret")) == ["a", "b", "c"]
    assert space.names(store.list(kind="Secret", namespace=ns)) == ["a", "b"]
    assert space.names(store.list(kind="Secret", labels={"app": "web"})) == ["a", "c"]
    assert space.names(store.list(kind="Secret", labels={"app": "web", "tier": "front"})) \
        == ["a"]
    assert space.names(store.list(kind="Secret", labels={"app": "nope"})) == []
    listed = store.list(kind="Certificate", namespace=ns)
    assert space.names(listed) == ["web"]
    assert (listed[0]["kind"], listed[0]["apiVersion"]) == ("Certificate", "certctl.io/v1")


def test_returned_objects_are_copies(space: Space) -> None:
    store = space.store
    created = store.create(obj=secret("a", namespace=space.ns))
    created["data"]["k"] = "changed"
    got = store.get(kind="Secret", namespace=space.ns, name="a")
    assert got is not None
    got["data"]["k"] = "changed too"

    again = store.get(kind="Secret", namespace=space.ns, name="a")
    assert again is not None
    assert again["data"]["k"] == "dmFsdWU="


def test_a_shared_list_lists_the_same_objects_and_a_later_write_leaves_them_as_read(
    space: Space,
) -> None:
    store, ns = space.store, space.ns
    store.create(obj=secret("a", namespace=ns, labels={"app": "web"}))
    store.create(obj=secret("b", namespace=ns))

    shared = [o for o in store.list(kind="Secret", shared=True)
              if o["metadata"]["namespace"] == ns]
    assert sorted(shared, key=lambda o: o["metadata"]["name"]) == sorted(
        store.list(kind="Secret", namespace=ns), key=lambda o: o["metadata"]["name"])
    assert space.names(store.list(kind="Secret", labels={"app": "web"}, shared=True)) == ["a"]
    read = next(o for o in shared if o["metadata"]["name"] == "a")
    changed = store.get(kind="Secret", namespace=ns, name="a")
    assert changed is not None
    changed["data"]["k"] = "bmV3"
    store.replace(obj=changed)
    assert read["data"]["k"] == "dmFsdWU="  # the store wrote a new object, not into this one


def test_create_of_existing_name_raises_already_exists_naming_it(space: Space) -> None:
    space.store.create(obj=secret("a", namespace=space.ns))
    with pytest.raises(interface.AlreadyExists, match=f"Secret {space.ns}/a"):
        space.store.create(obj=secret("a", namespace=space.ns))


def test_create_with_namespace_not_matching_the_kind_scope_is_refused(space: Space) -> None:
    unscoped = secret("a", namespace=space.ns)
    del unscoped["metadata"]["namespace"]
    with pytest.raises(interface.StoreError, match="namespace"):
        space.store.create(obj=unscoped)
    scoped_issuer = {"apiVersion": "certctl.io/v1", "kind": "ClusterIssuer",
                     "metadata": {"name": f"scoped-{space.ns}", "namespace": space.ns},
                     "spec": {"selfSigned": {}}}
    with pytest.raises(interface.StoreError, match="namespace"):
        space.store.create(obj=scoped_issuer)
    assert space.store.get(kind="ClusterIssuer", namespace=None,
                           name=f"scoped-{space.ns}") is None


# --- replace / replace_status ------------------------------------------------------


def test_replace_with_stale_resource_version_raises_conflict(space: Space) -> None:
    store = space.store
    first = store.create(obj=certificate("a", namespace=space.ns))
    stale = store.get(kind="Certificate", namespace=space.ns, name="a")
    assert stale is not None
    first["spec"]["dnsNames"] = ["new.example.test"]
    store.replace(obj=first)

    stale["spec"]["dnsNames"] = ["lost.example.test"]
    with pytest.raises(interface.Conflict, match=f"Certificate {space.ns}/a"):
        store.replace(obj=stale)
    stale["status"] = {"revision": 7}
    with pytest.raises(interface.Conflict):
        store.replace_status(obj=stale)
    got = store.get(kind="Certificate", namespace=space.ns, name="a")
    assert got is not None
    assert got["spec"]["dnsNames"] == ["new.example.test"]
    assert "revision" not in got.get("status", {})


def test_replace_of_missing_object_raises_not_found(space: Space) -> None:
    with pytest.raises(interface.NotFound, match=f"Secret {space.ns}/ghost"):
        space.store.replace(obj=secret("ghost", namespace=space.ns))


def test_replace_never_changes_status(space: Space) -> None:
    store = space.store
    created = store.create(obj=certificate("a", namespace=space.ns))
    created["status"] = {"revision": 1}
    with_status = store.replace_status(obj=created)

    with_status["spec"]["dnsNames"] = ["b.example.test"]
    with_status["status"] = {"revision": 99}
    replaced = store.replace(obj=with_status)

    assert replaced["spec"]["dnsNames"] == ["b.example.test"]
    assert replaced["status"] == {"revision": 1}
    got = store.get(kind="Certificate", namespace=space.ns, name="a")
    assert got is not None
    assert got["status"] == {"revision": 1}


def test_replace_status_changes_only_status(space: Space) -> None:
    created = space.store.create(obj=certificate("a", namespace=space.ns))
    created["spec"]["dnsNames"] = ["sneaky.example.test"]
    created["metadata"]["labels"] = {"sneaky": "yes"}
    created["status"] = {"revision": 2}

    updated = space.store.replace_status(obj=created)

    assert updated["status"] == {"revision": 2}
    assert updated["spec"]["dnsNames"] == ["a.example.test"]
    assert "labels" not in updated["metadata"]
    assert updated["metadata"]["generation"] == 1
    assert updated["metadata"]["resourceVersion"] != created["metadata"]["resourceVersion"]


def test_generation_bumps_on_spec_change_only(space: Space) -> None:
    cert = space.store.create(obj=certificate("a", namespace=space.ns))
    assert cert["metadata"]["generation"] == 1

    cert["metadata"]["labels"] = {"team": "x"}
    cert = space.store.replace(obj=cert)
    assert cert["metadata"]["generation"] == 1

    cert["status"] = {"revision": 1}
    cert = space.store.replace_status(obj=cert)
    assert cert["metadata"]["generation"] == 1

    cert["spec"]["dnsNames"] = ["b.example.test"]
    cert = space.store.replace(obj=cert)
    assert cert["metadata"]["generation"] == 2


def test_replace_keeps_uid_and_creation_timestamp(space: Space) -> None:
    created = space.store.create(obj=secret("a", namespace=space.ns))
    changed = dict(created)
    changed["metadata"] = dict(created["metadata"], creationTimestamp="1999-01-01T00:00:00Z")
    changed["data"] = {"k": "eA=="}

    replaced = space.store.replace(obj=changed)

    assert replaced["data"] == {"k": "eA=="}
    assert replaced["metadata"]["uid"] == created["metadata"]["uid"]
    assert replaced["metadata"]["creationTimestamp"] == created["metadata"]["creationTimestamp"]


def test_delete_of_a_missing_object_is_not_an_error(space: Space) -> None:
    space.store.create(obj=secret("a", namespace=space.ns))
    space.store.delete(kind="Secret", namespace=space.ns, name="a")
    space.store.delete(kind="Secret", namespace=space.ns, name="a")  # repeating is fine

    assert space.store.get(kind="Secret", namespace=space.ns, name="a") is None


# --- garbage collection -------------------------------------------------------------


def test_deleted_owner_takes_its_dependents_recursively(space: Space) -> None:
    """On a cluster kube-controller-manager's garbage collector does it, a moment later."""
    store, ns = space.store, space.ns
    cert = store.create(obj=certificate("web", namespace=ns))
    placed = store.create(obj=owned_by(order("web-1", namespace=ns), cert))
    store.create(obj=owned_by(secret("web-1-key", namespace=ns), placed))
    store.create(obj=secret("unrelated", namespace=ns))

    store.delete(kind="Certificate", namespace=ns, name="web")

    eventually(lambda: not store.list(kind="Order", namespace=ns)
               and space.names(store.list(kind="Secret", namespace=ns)) == ["unrelated"],
               what="the garbage collector", timeout=60)

