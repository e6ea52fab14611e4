"""TLS-ALPN-01 in a cluster, against the real kube-apiserver.

The CRDs: Issuer, ClusterIssuer and the Challenge's copy (`spec.solver`) take
`tlsALPN01: {}` as a third solver type beside http01 and dns01, exactly one
per solver, with no settings; a Challenge may be of type TLS-ALPN-01
(applied with `--dry-run=server`: validated and admitted, never stored).

The data plane: every replica answers acme-tls/1 from the Challenge object
it watches, so whichever replica a load balancer sends the CA to answers.
"""

from __future__ import annotations

import asyncio
import functools
import json
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

from certctl.api.resources import GROUP
from certctl.runtime import dataplane_feed, operator
from certctl.solvers import tls_alpn01_solver
from tests.clusterops import admin_store, namespace
from tests.pebble import free_port
from tests.serving import eventually

if TYPE_CHECKING:
    from tests.controlplane import ControlPlane

pytest_plugins = ["tests.controlplane"]

NAMESPACE = "tls-alpn01"
ONE_TYPE = "exactly one of http01, dns01 or tlsALPN01 must be set"


@pytest.fixture(scope="module")
def plane(control_plane: ControlPlane) -> Iterator[ControlPlane]:
    with namespace(control_plane, NAMESPACE):
        yield control_plane


def _apply(plane: ControlPlane, obj: dict[str, Any]) -> tuple[int, str]:
    result = plane.kubectl("apply", "--dry-run=server", "-f", "-", input=json.dumps(obj),
                           check=False)
    return result.returncode, result.stderr + result.stdout


def _issuer(kind: str, solver: dict[str, Any]) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": "alpn"}
    if kind == "Issuer":
        metadata["namespace"] = NAMESPACE
    return {"apiVersion": f"{GROUP}/v1", "kind": kind, "metadata": metadata,
            "spec": {"acme": {"server": "https://acme.example.test/directory",
                              "privateKeySecretRef": {"name": "alpn-account"},
                              "solvers": [solver]}}}


def _challenge(solver: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/v1", "kind": "Challenge",
            "metadata": {"name": "alpn", "namespace": NAMESPACE},
            "spec": {"type": "TLS-ALPN-01", "dnsName": "alpn.example.test", "token": "t",
                     "key": "t.thumbprint", "url": "https://acme.example.test/chall/1",
                     "authorizationURL": "https://acme.example.test/authz/1",
                     "wildcard": False, "issuerRef": {"name": "alpn", "kind": "Issuer"},
                     "solver": solver}}


@pytest.mark.parametrize("kind", ["Issuer", "ClusterIssuer", "Challenge"])
def test_tls_alpn01_is_accepted_alone_and_refused_beside_another_type(
    plane: ControlPlane, kind: str
) -> None:
    def build(solver: dict[str, Any]) -> dict[str, Any]:
        return _challenge(solver) if kind == "Challenge" else _issuer(kind, solver)

    code, said = _apply(plane, build({"tlsALPN01": {},
                                      "selector": {"dnsZones": ["example.test"]}}))
    assert code == 0, said
    assert "(server dry run)" in said

    code, said = _apply(plane, build({"tlsALPN01": {}, "http01": {"ingress": {}}}))
    assert code != 0, said
    assert ONE_TYPE in said, said

    code, said = _apply(plane, build({"tlsALPN01": {"port": 443}}))
    assert code != 0, said
    assert "tlsALPN01" in said, said


def test_every_data_plane_replica_answers_the_live_challenge(plane: ControlPlane) -> None:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    replicas = [operator.ClusterDataPlane(options=operator.DataPlaneOptions(
        configuration=plane.configuration(), namespaces=(NAMESPACE,),
        listening=dataplane_feed.Listening(address="127.0.0.1", http_port=free_port(),
                                           https_port=free_port(), ingress_class="certctl"),
    )) for _ in range(2)]
    admin = admin_store(plane)
    try:
        for replica in replicas:
            asyncio.run_coroutine_threadsafe(replica.start(), loop).result(60)
        ports = [replica.edge.server.https_port for replica in replicas]
        admin.create(obj=_challenge({"tlsALPN01": {}}))

        def answered(port: int | None) -> bool:
            assert port is not None
            der = tls_alpn01_solver.fetch_certificate(
                host="alpn.example.test", port=port, connect_address="127.0.0.1")
            tls_alpn01_solver.verify_certificate(der, dns_name="alpn.example.test",
                                                 key_authorization="t.thumbprint")
            return True

        for port in ports:
            eventually(functools.partial(answered, port), timeout=15,
                       what=f"the replica on {port} to answer acme-tls/1")
        admin.delete(kind="Challenge", namespace=NAMESPACE, name="alpn")
        for port in ports:
            def gone(port: int | None = port) -> bool:
                try:
                    answered(port)
                except tls_alpn01_solver.NotAnAnswer:
                    return True
                return False

            eventually(gone, timeout=15, what=f"the replica on {port} to stop answering")
    finally:
        for replica in replicas:
            asyncio.run_coroutine_threadsafe(replica.stop(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
        admin.close()
