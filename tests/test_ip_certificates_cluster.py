"""An IP-address certificate in a cluster: the real kube-apiserver, the current Pebble.

In a cluster HTTP-01 is routed to the data plane by a solver Ingress, whose
rule cannot hold an IP address (the API server refuses one in `rules[].host`).
For an address there is none: the CA connects to the address itself, and the
data plane listening there answers the token from the Challenge objects it
watches.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.clusterops import Operator, admin_store, issuer_ready, leaf_of, namespace, ready_secret
from tests.pebble import PebbleProfile, PebbleServer, free_port
from tests.serving import cluster_issuer, eventually
from tests.test_ip_certificates import _addresses, _served_when_issued

if TYPE_CHECKING:
    from tests.controlplane import ControlPlane

pytest_plugins = ["tests.controlplane"]

NAMESPACE = "ip-flow"
ISSUER = "pebble-ip"
PROFILES = {"shortlived": PebbleProfile(description="6 days, no Common Name",
                                        validity_period=6 * 24 * 3600)}


@pytest.fixture
def operator(control_plane: ControlPlane, tmp_path: Path) -> Iterator[Operator]:
    with contextlib.ExitStack() as cleanup:
        pebble = PebbleServer.start(tmp_path=tmp_path, http_port=free_port(), build="current",
                                    profiles=PROFILES)
        cleanup.callback(pebble.stop)
        cleanup.enter_context(namespace(control_plane, NAMESPACE))
        running = Operator(plane=control_plane, pebble=pebble,
                           namespaces=("certctl", NAMESPACE), dataplane_namespaces=(NAMESPACE,))
        cleanup.callback(running.stop)
        running.start()
        yield running


def _ingress() -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": "ip", "namespace": NAMESPACE,
                     "annotations": {"cert-manager.io/cluster-issuer": ISSUER,
                                     "certctl.io/acme-profile": "shortlived"}},
        "spec": {
            "ingressClassName": "certctl",
            "tls": [{"hosts": ["127.0.0.1"], "secretName": "ip-tls"}],
            "rules": [{"http": {"paths": [{
                "path": "/", "pathType": "Prefix",
                "backend": {"service": {"name": "web", "port": {"number": 80}}}}]}}],
        },
    }


def test_an_ip_certificate_is_answered_from_the_challenge_without_a_solver_ingress(
    operator: Operator,
) -> None:
    pebble = operator.pebble
    api = admin_store(operator.plane)
    try:
        api.create(obj=cluster_issuer(pebble, name=ISSUER, api_version="certctl.io/v1"))
        eventually(lambda: issuer_ready(api, ISSUER), timeout=60, what="the ClusterIssuer Ready")
        api.create(obj=_ingress())
        secret = eventually(lambda: ready_secret(api, namespace=NAMESPACE, name="ip-tls"),
                            timeout=60, what="the IP certificate Ready")
        leaf = leaf_of(secret)
        served = eventually(
            lambda: _served_when_issued(address="127.0.0.1", port=operator.https_port,
                                        roots_pem=pebble.issuance_roots_pem(), leaf=leaf),
            what="the IP certificate served without SNI")
    finally:
        api.delete(kind="ClusterIssuer", namespace=None, name=ISSUER)
        api.close()

    writes = operator.writes.snapshot()
    challenges = [w.sent for w in writes if w.kind == "Challenge" and w.method == "POST"]
    assert [c["spec"]["dnsName"] for c in challenges] == ["127.0.0.1"]
    created = [(w.kind, w.sent["metadata"]["name"]) for w in writes if w.method == "POST"]
    assert not [c for c in created if c[0] in ("Ingress", "Service")], created
    assert _addresses(leaf) == ["127.0.0.1"]
    assert len(leaf.subject) == 0
    assert served.serial_number == leaf.serial_number
