"""Ownership on a real cluster: kube-controller-manager's garbage collector and namespace
controller clean up after certctl, through every kind it creates.

The issuance is held mid-way on purpose: the controller's HTTP-01 self-check
reaches a server that is not the data plane, so the Certificate, the Order, the
Challenge and the solver Ingress and ExternalName Service all exist and stay
(nothing is sent to Pebble for validation). Then an owner goes, and the cluster,
not certctl, must remove what hung from it. The pending private key is in the
order ledger of the cluster resource namespace (`order_budget`), owned by
nothing: no Secret of the namespace is certctl's while it issues.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest

from certctl.store.kube import KubeStore
from tests.clusterops import (
    Operator,
    admin_store,
    annotated_ingress,
    issuer_ready,
    namespace,
    running,
)
from tests.pebble import PebbleServer
from tests.serving import cluster_issuer, echo_backend, eventually

if TYPE_CHECKING:
    from tests.controlplane import ControlPlane

pytest_plugins = ["tests.controlplane"]

GARBAGE_COLLECTOR = "system:kube-controller-manager"
# What certctl creates for one Ingress while issuing (kind, name prefix).
OWNED_KINDS = ("Certificate", "Order", "Challenge", "Ingress", "Service")


@dataclass
class Stalled:
    plane: ControlPlane
    api: KubeStore
    operator: Operator
    namespace: str


@pytest.fixture
def stalled(control_plane: ControlPlane, pebble: PebbleServer,
            request: pytest.FixtureRequest) -> Iterator[Stalled]:
    """A namespace, a ClusterIssuer and an operator whose self-checks never pass."""
    name = "gc-" + request.node.name.removeprefix("test_").replace("_", "-")[:40].rstrip("-")
    issuer = f"pebble-{name}"
    api = admin_store(control_plane)
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(api.close)
        cleanup.enter_context(namespace(control_plane, name))
        wrong_port = cleanup.enter_context(echo_backend("not-the-data-plane"))
        operator = cleanup.enter_context(running(Operator(
            plane=control_plane, pebble=pebble, namespaces=("certctl", name),
            dataplane_namespaces=(name,), self_check_port=wrong_port)))
        # Solver Ingresses of another controller's class, so that the challenge has its
        # solver Ingress and Service (the data plane's own class needs neither).
        issuer_obj = cluster_issuer(pebble, name=issuer, api_version="certctl.io/v1")
        issuer_obj["spec"]["acme"]["solvers"] = [
            {"http01": {"ingress": {"ingressClassName": "nginx"}}}]
        api.create(obj=issuer_obj)
        cleanup.callback(api.delete, kind="ClusterIssuer", namespace=None, name=issuer)
        eventually(lambda: issuer_ready(api, issuer), timeout=60, what="the ClusterIssuer")
        api.create(obj=annotated_ingress("shop", "shop.example.test", namespace=name,
                                         issuer=issuer))
        eventually(lambda: _solver_objects(api, name), timeout=60,
                   what="the challenge with its solver Ingress and Service")
        yield Stalled(plane=control_plane, api=api, operator=operator, namespace=name)


def _solver_objects(api: KubeStore, ns: str) -> bool:
    return bool(api.list(kind="Challenge", namespace=ns)
                and [i for i in api.list(kind="Ingress", namespace=ns)
                     if i["metadata"]["name"].startswith("certctl-http01-")]
                and [s for s in api.list(kind="Service", namespace=ns)
                     if s["metadata"]["name"].startswith("certctl-http01-")])


def _owned(api: KubeStore, ns: str) -> dict[str, list[str]]:
    """Every object in the namespace that names an owner, by kind."""
    found: dict[str, list[str]] = {}
    for kind in OWNED_KINDS:
        for obj in api.list(kind=kind, namespace=ns):
            if obj["metadata"].get("ownerReferences"):
                found.setdefault(kind, []).append(obj["metadata"]["name"])
    return found


def test_deleting_the_ingress_lets_the_garbage_collector_remove_everything_below_it(
    stalled: Stalled,
) -> None:
    plane, api, operator, where = stalled.plane, stalled.api, stalled.operator, stalled.namespace
    before = _owned(api, where)
    assert set(before) == set(OWNED_KINDS), before  # a chain of owners through every kind
    # Held because the self-check fails, which the controller says on the Challenge.
    event = eventually(lambda: next((e for e in api.list(kind="Event", namespace=where)
                                     if e["reason"] == "SelfCheckFailed"), None),
                       what="a SelfCheckFailed event")
    assert event["type"] == "Warning" and event["involvedObject"]["kind"] == "Challenge"
    assert event["message"].startswith("HTTP-01 self-check failed: GET http://shop.example.test:")
    # Only the cluster acts now: certctl is stopped (it would delete some of it itself).
    operator.stop_controller()
    plane.wait_garbage_collector()
    mark = plane.audit.mark()
    api.delete(kind="Ingress", namespace=where, name="shop")

    eventually(lambda: _owned(api, where) == {}, timeout=60,
               what="the garbage collector to delete every dependent")
    collected = {(e.resource, e.name) for e in plane.audit.events(since=mark)
                 if e.verb == "delete" and e.user == GARBAGE_COLLECTOR and e.code == 200}
    assert ("certificates", "shop-tls") in collected
    assert {"orders", "challenges", "ingresses", "services"} <= {
        resource for resource, _ in collected}, collected
    assert api.list(kind="Secret", namespace=where) == []


def test_removing_the_annotation_removes_the_certificate_and_what_it_owned(
    stalled: Stalled,
) -> None:
    api, where = stalled.api, stalled.namespace

    def unannotated(obj: dict[str, Any]) -> None:
        obj["metadata"]["annotations"] = {}

    _edit(api, kind="Ingress", namespace=where, name="shop", change=unannotated)
    eventually(lambda: _owned(api, where) == {}, timeout=60,
               what="the Certificate and its dependents to go")
    assert api.get(kind="Ingress", namespace=where, name="shop") is not None  # only the tls


def test_deleted_namespace_goes_away_with_everything_in_it(
    stalled: Stalled,
) -> None:
    plane, api, where = stalled.plane, stalled.api, stalled.namespace
    plane.wait_garbage_collector()
    started = time.monotonic()
    # With certctl still running and watching it, as during a real `kubectl delete ns`.
    plane.kubectl("delete", "namespace", where, "--wait=false")

    def gone() -> bool:
        return plane.kubectl("get", "namespace", where, check=False).returncode != 0

    eventually(gone, timeout=90, what=f"namespace {where} to be deleted (a stuck finalizer?)")
    plane.report(f"namespace with a certificate mid-issuance deleted in "
          f"{time.monotonic() - started:.1f} s")
    for kind in ("Certificate", "Order", "Challenge", "Secret", "Ingress"):
        assert api.list(kind=kind, namespace=where) == [], kind


def _edit(api: KubeStore, *, kind: str, namespace: str, name: str, change: Any) -> None:
    """Get, change, replace; again on a conflict (the controllers write the same objects)."""
    from certctl.store.interface import Conflict

    for _ in range(10):
        obj = api.get(kind=kind, namespace=namespace, name=name)
        assert obj is not None
        change(obj)
        try:
            api.replace(obj=obj)
        except Conflict:
            continue
        return
    raise AssertionError(f"{kind} {namespace}/{name}: 10 conflicts in a row")
