"""kube-apiserver restarted in the middle of an issuance: certctl's watches resume.

The API server is stopped (SIGTERM: every watch connection closes, every
request fails for a few seconds) once the Order of a certificate exists, and
started again on the same port and etcd. The certificate is then still issued,
from the same Order, and an Ingress created only after the restart, which
nothing but a live watch can report, is served too.
"""

from __future__ import annotations

import contextlib
import time
from functools import partial
from typing import TYPE_CHECKING

from tests.clusterops import (
    Operator,
    admin_store,
    annotated_ingress,
    issuer_ready,
    namespace,
    ready_secret,
)
from tests.pebble import PebbleServer
from tests.serving import cluster_issuer, eventually, served_certificate

if TYPE_CHECKING:
    from tests.controlplane import ControlPlane

pytest_plugins = ["tests.controlplane"]

NAMESPACE = "restart"
ISSUER = "pebble-restart"


def test_watches_resume_after_the_api_server_restarts_mid_issuance(
    control_plane: ControlPlane, pebble: PebbleServer,
) -> None:
    plane = control_plane
    api = admin_store(plane)
    roots = pebble.issuance_roots_pem()
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(api.close)
        cleanup.enter_context(namespace(plane, NAMESPACE))
        operator = Operator(plane=plane, pebble=pebble, namespaces=("certctl", NAMESPACE),
                            dataplane_namespaces=(NAMESPACE,))
        cleanup.callback(operator.stop)
        operator.start()
        api.create(obj=cluster_issuer(pebble, name=ISSUER, api_version="certctl.io/v1"))
        cleanup.callback(api.delete, kind="ClusterIssuer", namespace=None, name=ISSUER)
        eventually(lambda: issuer_ready(api, ISSUER), timeout=60, what="the ClusterIssuer")

        api.create(obj=annotated_ingress("before", "before.example.test", namespace=NAMESPACE,
                                         issuer=ISSUER))
        [order] = eventually(lambda: api.list(kind="Order", namespace=NAMESPACE),
                             what="the Order")
        down = plane.restart_apiserver()
        plane.report(f"kube-apiserver restarted, ready again after {down:.1f} s (stopping took "
              f"{plane.startup_seconds['last apiserver stop']:.1f} s)")

        eventually(partial(served_certificate, port=operator.https_port,
                           server_name="before.example.test", roots_pem=roots),
                   timeout=90, what="the certificate ordered before the restart, served")
        eventually(lambda: ready_secret(api, namespace=NAMESPACE, name="before-tls"),
                   what="its Certificate Ready")
        # The Order placed before the restart was carried on, not placed again.
        assert [o["metadata"]["name"] for o in api.list(kind="Order", namespace=NAMESPACE)] == [
            order["metadata"]["name"]]

        started = time.monotonic()
        api.create(obj=annotated_ingress("after", "after.example.test", namespace=NAMESPACE,
                                         issuer=ISSUER))
        eventually(partial(served_certificate, port=operator.https_port,
                           server_name="after.example.test", roots_pem=roots),
                   timeout=90, what="an Ingress created after the restart, served")
        plane.report("an Ingress created after the restart served in "
                     f"{time.monotonic() - started:.1f} s")
