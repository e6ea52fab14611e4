"""reconciling.write_status against the real API server: the status this process wrote
stands in for a read of the object it wrote, and only for that version of it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from certctl.api.status import OrderStatus
from certctl.controllers import reconciling
from certctl.store.interface import Conflict, Object
from certctl.store.kube import KubeStore
from tests.clusterops import namespace

if TYPE_CHECKING:
    from tests.controlplane import ControlPlane

pytest_plugins = ["tests.controlplane"]
pytestmark = pytest.mark.timeout(120)

AGENT = "certctl-write-status-test"


@contextlib.contextmanager
def _stores(plane: ControlPlane) -> Iterator[tuple[KubeStore, KubeStore]]:
    """The reconciler's store (its own user agent, to count its requests) and another
    writer's."""
    ours = KubeStore(configuration=plane.configuration(), component=AGENT)
    theirs = KubeStore(configuration=plane.configuration(), component="certctl-test")
    try:
        yield ours, theirs
    finally:
        ours.close()
        theirs.close()


def _order(store: KubeStore, ns: str) -> Object:
    return store.create(obj={
        "apiVersion": "certctl.io/v1", "kind": "Order",
        "metadata": {"name": "web-1", "namespace": ns},
        "spec": {"request": "Q1NS", "issuerRef": {"name": "web", "kind": "ClusterIssuer"}}})


def _requests(plane: ControlPlane, since: int) -> list[str]:
    return [f"{e.verb} {e.subresource or e.resource}" for e in plane.audit.events(since=since)
            if e.user_agent.split("/")[0] == AGENT]


def test_a_pass_woken_by_its_own_write_writes_without_reading_first(
    control_plane: ControlPlane,
) -> None:
    with contextlib.ExitStack() as cleanup:
        ns = cleanup.enter_context(namespace(control_plane, "write-status"))
        ours, theirs = cleanup.enter_context(_stores(control_plane))
        _order(theirs, ns)

        mark = control_plane.audit.mark()
        order = ours.get(kind="Order", namespace=ns, name="web-1")
        assert order is not None
        status = OrderStatus.from_object(order)
        status.state, status.reason = "pending", "placing the order"
        assert reconciling.write_status(ours, obj=order, status=status)
        # Nothing of this object was written by this process yet: its status is read.
        assert _requests(control_plane, mark) == ["get orders", "get orders", "update status"]

        # The next pass reads it at the version its own write made: no second read.
        mark = control_plane.audit.mark()
        order = ours.get(kind="Order", namespace=ns, name="web-1")
        assert order is not None
        status = OrderStatus.from_object(order)
        assert not reconciling.write_status(ours, obj=order, status=status), "a no-op"
        status.reason = "waiting for the authorizations"
        assert reconciling.write_status(ours, obj=order, status=status)
        status.state = "ready"
        assert reconciling.write_status(ours, obj=order, status=status), "again, same pass"
        assert _requests(control_plane, mark) == ["get orders", "update status", "update status"]
        stored = theirs.get(kind="Order", namespace=ns, name="web-1")
        assert stored is not None and OrderStatus.from_object(stored) == status

        # Someone else writes. An object read before that still has the version this
        # process's last write made: its write is refused, not lost over theirs.
        stale = ours.get(kind="Order", namespace=ns, name="web-1")
        assert stale is not None
        stored["status"]["reason"] = "edited by hand"
        theirs.replace_status(obj=stored)
        status = OrderStatus.from_object(stale)
        status.state = "valid"
        with pytest.raises(Conflict):
            reconciling.write_status(ours, obj=stale, status=status)

        # An object read since is at a version this process did not make: what is stored
        # is read again before the write.
        mark = control_plane.audit.mark()
        order = ours.get(kind="Order", namespace=ns, name="web-1")
        assert order is not None
        status = OrderStatus.from_object(order)
        status.reason = "waiting for the authorizations"
        assert reconciling.write_status(ours, obj=order, status=status)
        assert _requests(control_plane, mark) == ["get orders", "get orders", "update status"]
