"""`certctl controller` + `certctl dataplane` against a Kubernetes API emulator and real Pebble.

The operator flow itself is tested against a real kube-apiserver
(tests/test_cluster_*.py: issuance and serving, solver Ingresses, kept copies,
missing issuers, status/renew, leader election, namespaced RBAC). What stays
here needs what the emulator offers and the real server does not, cheaply:
its history of every object ever held, deleted ones included (a restarted
controller placed exactly one Order in all), an API server without certctl's
CRDs, and none at all (the start-up errors), and a second controller replica
misrouted while the first is stopped, in seconds. tests/test_faults_kube.py
keeps the emulator's switchable faults (500s, 409s, broken watch streams),
which the real server cannot be made to produce on demand.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import pytest
import yaml

from certctl import cli
from certctl.store.kube import KubeStore
from tests.kube import Cluster, Deployment
from tests.pebble import PebbleServer, free_port
from tests.serving import (
    cluster_issuer,
    echo_backend,
    eventually,
    ingress,
    service_with_endpoints,
)


def _issuer(pebble: PebbleServer, *, name: str = "pebble") -> dict[str, Any]:
    return cluster_issuer(pebble, name=name, api_version="certctl.io/v1")


def _apply_app(api: KubeStore, *, backend_port: int, name: str = "shop",
               host: str = "shop.example.test") -> None:
    api.create(obj=ingress(name, hosts=[host], secret_name=f"{name}-tls", backend=name))
    for obj in service_with_endpoints(name, port=backend_port):
        api.create(obj=obj)


def _ready_secret(api: KubeStore, name: str) -> dict[str, Any] | None:
    certificate = api.get(kind="Certificate", namespace="default", name=name)
    if certificate is None:
        return None
    ready = [c for c in (certificate.get("status") or {}).get("conditions") or []
             if c["type"] == "Ready" and c["status"] == "True"]
    if not ready:
        return None
    return api.get(kind="Secret", namespace="default", name=name)


def _events(api: KubeStore, *, kind: str, name: str) -> list[tuple[str, str, str]]:
    return [(e["type"], e["reason"], e["message"])
            for e in api.list(kind="Event", namespace="default")
            if e["involvedObject"]["kind"] == kind and e["involvedObject"]["name"] == name]


def _history(cluster: Cluster, *, plural: str, namespace: str | None = None) -> list[Any]:
    """Every object of a kind the emulator ever held, deleted ones included."""
    assert cluster.emulator is not None
    return [obj for (resource, ns, _), obj in cluster.emulator.objects.items()
            if resource.plural == plural and (namespace is None or ns == namespace)]


def test_missing_issuer_is_a_clear_condition_and_no_acme_traffic(
    api: KubeStore, deployment: Deployment
) -> None:
    api.create(obj=ingress("shop", hosts=["shop.example.test"], secret_name="shop-tls",
                           annotations={"cert-manager.io/cluster-issuer": "letsencrypt-prod"}))

    def not_ready() -> dict[str, Any] | None:
        certificate = api.get(kind="Certificate", namespace="default", name="shop-tls")
        conditions = (certificate or {}).get("status", {}).get("conditions") or []
        return next((c for c in conditions if c["type"] == "Ready"), None)

    ready = eventually(not_ready, what="a Ready condition")
    assert ready["status"] == "False"
    assert ready["reason"] == "IssuerNotFound"
    assert "ClusterIssuer letsencrypt-prod not found" in ready["message"]
    # The Event follows the condition's write.
    eventually(lambda: ("Warning", "IssuerNotFound",
                        "spec.issuerRef: ClusterIssuer letsencrypt-prod not found")
               in _events(api, kind="Certificate", name="shop-tls"), what="the Warning event")
    assert api.list(kind="Order", namespace="default") == []
    assert api.list(kind="Secret", namespace="certctl") == []  # no account key was made


def test_failing_self_check_is_explained_and_nothing_is_sent_to_the_ca(
    api: KubeStore, deployment: Deployment, pebble: PebbleServer
) -> None:
    # A replica whose self-checks reach something that is not the data plane.
    deployment.controllers.pop().stop()
    with echo_backend("not-the-data-plane") as wrong_port:
        deployment.add_controller(identity="misrouted", self_check_port=wrong_port)
        api.create(obj=_issuer(pebble))
        _apply_app(api, backend_port=free_port())

        def failed_check() -> dict[str, Any] | None:
            return next((e for e in api.list(kind="Event", namespace="default")
                         if e["reason"] == "SelfCheckFailed"), None)

        event = eventually(failed_check, timeout=30, what="a SelfCheckFailed event")
    [challenge] = api.list(kind="Challenge", namespace="default")
    token = challenge["spec"]["token"]
    expected = (f"HTTP-01 self-check failed: GET http://shop.example.test:{wrong_port}"
                f"/.well-known/acme-challenge/{token} returned unexpected content")
    assert event["type"] == "Warning"
    assert event["message"].startswith(expected), event["message"]
    assert challenge["status"]["reason"].startswith("Waiting for HTTP-01 challenge propagation")
    assert not challenge["status"].get("processing")  # never accepted: the CA saw nothing


def test_restarted_controller_resumes_the_order_instead_of_placing_another(
    cluster: Cluster, api: KubeStore, deployment: Deployment, pebble: PebbleServer
) -> None:
    # The first controller gets as far as a placed order, then stops.
    deployment.controllers.pop().stop()
    with echo_backend("not-the-data-plane") as wrong_port:
        stalled = deployment.add_controller(identity="first", self_check_port=wrong_port)
        api.create(obj=_issuer(pebble))
        _apply_app(api, backend_port=free_port())
        order = eventually(lambda: next(
            (o for o in api.list(kind="Order", namespace="default")
             if (o.get("status") or {}).get("url")), None), what="an order placed at the CA")
        eventually(lambda: api.list(kind="Challenge", namespace="default"), what="a challenge")
        stalled.stop()
        deployment.controllers.remove(stalled)

    deployment.add_controller(identity="second")
    eventually(partial(_ready_secret, api, "shop-tls"), timeout=60, what="the certificate")
    orders = _history(cluster, plural="orders")
    assert len(orders) == 1
    assert orders[0].history.last["status"]["url"] == order["status"]["url"]


def _kubeconfig(path: Path, *, server: str) -> Path:
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "test",
        "clusters": [{"name": "test", "cluster": {"server": server}}],
        "users": [{"name": "test", "user": {"token": "test-token"}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}],
    }))
    return path


def test_controller_explains_missing_crds_and_an_unreachable_api(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bare = Cluster(with_crds=False)
    bare.start()
    try:
        kubeconfig = _kubeconfig(tmp_path / "bare", server=bare.url)
        assert cli.main(["controller", "--kubeconfig", str(kubeconfig)]) == 1
    finally:
        bare.stop()
    error = capsys.readouterr().err
    assert "does not know ClusterIssuer (certctl.io/v1): install the CRDs first" in error

    closed = f"http://127.0.0.1:{free_port()}"
    kubeconfig = _kubeconfig(tmp_path / "closed", server=closed)
    assert cli.main(["controller", "--kubeconfig", str(kubeconfig)]) == 1
    assert f"cannot reach the Kubernetes API at {closed}" in capsys.readouterr().err


def test_controller_namespaces_must_include_the_cluster_resource_namespace(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bare = Cluster(with_crds=False)
    bare.start()
    try:
        kubeconfig = str(_kubeconfig(tmp_path / "bare", server=bare.url))
        assert cli.main(["controller", "--kubeconfig", kubeconfig, "--namespace", "default"]) == 2
        assert "add --namespace certctl, the --cluster-resource-namespace" in \
            capsys.readouterr().err
        # Given both, it starts as far as the API lets it.
        assert cli.main(["controller", "--kubeconfig", kubeconfig, "--namespace", "certctl",
                         "--namespace", "default"]) == 1
        assert "install the CRDs first" in capsys.readouterr().err
    finally:
        bare.stop()


