"""`certctl controller` + `certctl dataplane` against a Kubernetes API emulator and real Pebble.

The controller runs kopf watches and the reconcilers on threads, the data
plane serves on loopback ports (its HTTP port is the one Pebble's VA
connects to), and the test plays `kubectl`: it writes objects through the
API and reads what the controller did.
"""

from __future__ import annotations

import base64
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from cryptography import x509
from cryptography.x509 import verification
from prometheus_client import parser as prometheus_parser

from certctl import cli
from certctl.pki import inspect
from certctl.store.kube import RESOURCES, KubeStore
from tests.kube import TEST_CLIENT, Cluster, Deployment, edit
from tests.pebble import PebbleServer, free_port
from tests.serving import (
    cluster_issuer,
    dns_names,
    echo_backend,
    eventually,
    https_get,
    ingress,
    served_certificate,
    service_with_endpoints,
)


def _issuer(pebble: PebbleServer, *, name: str = "pebble") -> dict[str, Any]:
    return cluster_issuer(pebble, name=name, api_version="certctl.io/v1")


def _apply_app(api: KubeStore, *, backend_port: int, name: str = "shop",
               host: str = "shop.example.test") -> None:
    api.create(obj=ingress(name, hosts=[host], secret_name=f"{name}-tls", backend=name))
    for obj in service_with_endpoints(name, port=backend_port):
        api.create(obj=obj)


def _remove_annotations(api: KubeStore, *, ingress_name: str) -> None:
    edit(api, kind="Ingress", namespace="default", name=ingress_name,
         change=lambda found: found["metadata"].update(annotations={}))


def _ready_secret(api: KubeStore, name: str) -> dict[str, Any] | None:
    certificate = api.get(kind="Certificate", namespace="default", name=name)
    if certificate is None:
        return None
    ready = [c for c in (certificate.get("status") or {}).get("conditions") or []
             if c["type"] == "Ready" and c["status"] == "True"]
    if not ready:
        return None
    return api.get(kind="Secret", namespace="default", name=name)


def _leaf(secret: dict[str, Any]) -> x509.Certificate:
    chain = base64.b64decode(secret["data"]["tls.crt"])
    return x509.load_pem_x509_certificate(chain)


def _events(api: KubeStore, *, kind: str, name: str) -> list[tuple[str, str, str]]:
    return [(e["type"], e["reason"], e["message"])
            for e in api.list(kind="Event", namespace="default")
            if e["involvedObject"]["kind"] == kind and e["involvedObject"]["name"] == name]


def _key(labels: dict[str, str]) -> frozenset[tuple[str, str]]:
    return frozenset(labels.items())


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {(sample.name, _key(sample.labels)): sample.value
            for family in prometheus_parser.text_string_to_metric_families(text)
            for sample in family.samples}


def _history(cluster: Cluster, *, plural: str, namespace: str | None = None) -> list[Any]:
    """Every object of a kind the emulator ever held, deleted ones included."""
    assert cluster.emulator is not None
    return [obj for (resource, ns, _), obj in cluster.emulator.objects.items()
            if resource.plural == plural and (namespace is None or ns == namespace)]


def test_annotated_ingress_gets_a_certificate_issued_through_orders_and_challenges(
    cluster: Cluster, api: KubeStore, deployment: Deployment, pebble: PebbleServer
) -> None:
    api.create(obj=_issuer(pebble))
    with echo_backend("shop-backend") as backend_port:
        _apply_app(api, backend_port=backend_port)
        secret = eventually(partial(_ready_secret, api, "shop-tls"), timeout=60,
                            what="a Ready certificate and its Secret")

        roots = pebble.issuance_roots_pem()
        chain = inspect.split_pem_chain(base64.b64decode(secret["data"]["tls.crt"]))
        verifier = verification.PolicyBuilder().store(verification.Store(
            x509.load_pem_x509_certificates(roots))).build_server_verifier(
            x509.DNSName("shop.example.test"))
        verified = verifier.verify(chain[0], chain[1:])  # raises if it does not verify
        assert verified[-1].subject == x509.load_pem_x509_certificates(roots)[0].subject
        assert dns_names(_leaf(secret)) == ["shop.example.test"]
        assert secret["type"] == "kubernetes.io/tls"
        annotations = secret["metadata"]["annotations"]
        assert annotations["cert-manager.io/certificate-name"] == "shop-tls"
        assert annotations["cert-manager.io/issuer-name"] == "pebble"
        assert annotations["cert-manager.io/issuer-kind"] == "ClusterIssuer"

        # The data plane serves it by SNI and proxies to the backend.
        leaf = eventually(lambda: served_certificate(
            port=deployment.https_port, server_name="shop.example.test", roots_pem=roots),
            what="the certificate served by the data plane")
        assert dns_names(leaf) == ["shop.example.test"]
        status, body = https_get(port=deployment.https_port, host="shop.example.test",
                                 path="/cart", roots_pem=roots)
        assert (status, body) == (200, "shop-backend shop.example.test /cart https")

    # Every served Ingress shows the data plane's address, as Ingress controllers do.
    shop = eventually(lambda: (found := api.get(kind="Ingress", namespace="default", name="shop"))
                      and (found.get("status") or {}).get("loadBalancer") and found,
                      what="the Ingress status")
    assert shop["status"]["loadBalancer"] == {"ingress": [{"ip": "203.0.113.7"}]}

    # The Certificate belongs to the Ingress; the issuer registered an account.
    certificate = api.get(kind="Certificate", namespace="default", name="shop-tls")
    assert certificate is not None
    [owner] = certificate["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"]) == ("Ingress", "shop")
    issuer = api.get(kind="ClusterIssuer", namespace=None, name="pebble")
    assert issuer is not None
    assert issuer["status"]["acme"]["uri"].startswith("https://")
    assert [c["status"] for c in issuer["status"]["conditions"] if c["type"] == "Ready"] == [
        "True"]

    # One Order, valid, with its ACME URL; its Challenge was solved and cleaned up.
    [order] = api.list(kind="Order", namespace="default")
    assert order["status"]["state"] == "valid"
    assert order["status"]["url"].startswith("https://")
    challenges = _history(cluster, plural="challenges", namespace="default")
    assert len(challenges) == 1
    challenge_versions = [v for v in challenges[0].history if v is not None]
    # Accepted after the self-check; whether "valid" is recorded before the finished
    # Order deletes it is a race, so only acceptance is certain.
    assert any((v.get("status") or {}).get("processing") for v in challenge_versions)
    assert challenges[0].deleted

    # The solver Ingress existed while the challenge was pending and is gone now.
    solver_ingresses = [obj for obj in _history(cluster, plural="ingresses", namespace="default")
                        if obj.history.last["metadata"]["name"].startswith("certctl-http01-")]
    assert len(solver_ingresses) == 1
    solver = solver_ingresses[0].history.last
    assert solver_ingresses[0].deleted
    [rule] = solver["spec"]["rules"]
    assert rule["host"] == "shop.example.test"
    [path] = rule["http"]["paths"]
    token = challenge_versions[-1]["spec"]["token"]
    assert (path["path"], path["pathType"]) == (f"/.well-known/acme-challenge/{token}", "Exact")
    assert solver["spec"]["ingressClassName"] == "certctl"
    backend_service = path["backend"]["service"]["name"]
    [service] = [obj.history.last for obj in _history(cluster, plural="services")
                 if obj.history.last["metadata"]["name"] == backend_service]
    assert service["spec"]["externalName"] == "certctl-dataplane.certctl.svc.cluster.local"
    assert not any(name.startswith("certctl-http01-") for name in
                   (s["metadata"]["name"] for s in api.list(kind="Service",
                                                            namespace="default")))

    # Prometheus metrics, under cert-manager's names.
    controller = deployment.controllers[0]
    assert controller.options.metrics_address is not None
    scraped = _samples(requests.get(
        f"http://127.0.0.1:{controller.options.metrics_address[1]}/metrics", timeout=5).text)
    labels = {"issuer_group": "certctl.io", "issuer_kind": "ClusterIssuer",
              "issuer_name": "pebble", "name": "shop-tls", "namespace": "default"}
    assert scraped[("certmanager_certificate_ready_status",
                    _key({**labels, "condition": "True"}))] == 1.0
    assert scraped[("certmanager_certificate_ready_status",
                    _key({**labels, "condition": "False"}))] == 0.0
    assert scraped[("certmanager_certificate_expiration_timestamp_seconds", _key(labels))] == \
        _leaf(secret).not_valid_after_utc.timestamp()
    host = pebble.directory_url.split("/")[2]
    assert scraped[("certmanager_http_acme_client_request_count_total", _key(
        {"host": host, "method": "POST", "path": "/order-plz", "scheme": "https",
         "status": "201"}))] == 1.0

    # Events tell the story, on each object.
    assert ("Normal", "CreateCertificate") in [
        e[:2] for e in _events(api, kind="Ingress", name="shop")]
    certificate_reasons = [e[1] for e in _events(api, kind="Certificate", name="shop-tls")]
    assert "Requested" in certificate_reasons and "Issuing" in certificate_reasons
    assert "Complete" in [e[1] for e in _events(api, kind="Order",
                                                name=order["metadata"]["name"])]


def test_solver_naming_an_ingress_gets_the_token_path_added_and_removed_again(
    cluster: Cluster, api: KubeStore, deployment: Deployment, pebble: PebbleServer
) -> None:
    # As for GKE or ALB, where every Ingress has its own address: no solver Ingress.
    issuer = _issuer(pebble)
    issuer["spec"]["acme"]["solvers"] = [{"http01": {"ingress": {"name": "shop"}}}]
    api.create(obj=issuer)
    _apply_app(api, backend_port=free_port())
    eventually(partial(_ready_secret, api, "shop-tls"), timeout=60, what="the certificate")

    [shop_history] = [obj for obj in _history(cluster, plural="ingresses", namespace="default")
                      if obj.history.last["metadata"]["name"] == "shop"]
    challenge_paths = [
        path for version in shop_history.history if version is not None
        for rule in version["spec"]["rules"] for path in rule["http"]["paths"]
        if path["path"].startswith("/.well-known/acme-challenge/")]
    assert challenge_paths, "the token path was never added to Ingress shop"
    assert challenge_paths[0]["pathType"] == "Exact"
    assert challenge_paths[0]["backend"]["service"]["name"].startswith("certctl-http01-")
    shop = api.get(kind="Ingress", namespace="default", name="shop")
    assert shop is not None
    assert [[p["path"] for p in rule["http"]["paths"]] for rule in shop["spec"]["rules"]] == [
        ["/"]]
    assert not [obj for obj in _history(cluster, plural="ingresses", namespace="default")
                if obj.history.last["metadata"]["name"].startswith("certctl-http01-")]


def test_removing_the_annotation_removes_the_certificate(
    api: KubeStore, deployment: Deployment, pebble: PebbleServer
) -> None:
    api.create(obj=_issuer(pebble))
    _apply_app(api, backend_port=free_port())
    eventually(lambda: api.get(kind="Certificate", namespace="default", name="shop-tls"),
               what="the Certificate")
    _remove_annotations(api, ingress_name="shop")
    eventually(lambda: api.get(kind="Certificate", namespace="default", name="shop-tls") is None,
               what="the Certificate to be deleted")


def test_deleted_secret_is_restored_from_the_kept_copy_without_a_new_order(
    api: KubeStore, deployment: Deployment, pebble: PebbleServer
) -> None:
    api.create(obj=_issuer(pebble))
    _apply_app(api, backend_port=free_port())
    first = eventually(partial(_ready_secret, api, "shop-tls"), timeout=60, what="a certificate")
    orders = [o["metadata"]["name"] for o in api.list(kind="Order", namespace="default")]
    api.delete(kind="Secret", namespace="default", name="shop-tls")
    second = eventually(partial(_ready_secret, api, "shop-tls"), timeout=60,
                        what="the Secret back")
    assert _leaf(second).serial_number == _leaf(first).serial_number
    assert [o["metadata"]["name"] for o in api.list(kind="Order", namespace="default")] == orders
    assert any(reason == "Restored" for _, reason, _ in
               _events(api, kind="Certificate", name="shop-tls"))


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
    assert ("Warning", "IssuerNotFound", "spec.issuerRef: ClusterIssuer letsencrypt-prod not found"
            ) in _events(api, kind="Certificate", name="shop-tls")
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


def test_two_replicas_elect_one_leader_and_issue_each_certificate_once(
    cluster: Cluster, api: KubeStore, deployment: Deployment, pebble: PebbleServer
) -> None:
    second = deployment.add_controller(identity="replica-1")
    first = deployment.controllers[0]
    eventually(lambda: first.is_leader != second.is_leader, what="exactly one leader")
    api.create(obj=_issuer(pebble))
    with echo_backend("a") as port_a, echo_backend("b") as port_b:
        _apply_app(api, backend_port=port_a, name="a", host="a.example.test")
        _apply_app(api, backend_port=port_b, name="b", host="b.example.test")
        for name in ("a-tls", "b-tls"):
            eventually(partial(_ready_secret, api, name), timeout=60, what=name)
    orders = _history(cluster, plural="orders")
    assert len(orders) == 2, [o.history.last["metadata"]["name"] for o in orders]

    # The leader steps down; the follower takes over and keeps reconciling.
    leading, following = (first, second) if first.is_leader else (second, first)
    leading.stop()
    deployment.controllers.remove(leading)
    eventually(lambda: following.is_leader, timeout=15, what="the follower to take over")
    _remove_annotations(api, ingress_name="a")
    eventually(lambda: api.get(kind="Certificate", namespace="default", name="a-tls") is None,
               what="the new leader to act")


def test_namespaced_controller_and_data_plane_ignore_other_namespaces(
    cluster: Cluster, api: KubeStore, pebble: PebbleServer
) -> None:
    # As manifests/ runs them: the controller in certctl and default, the data plane in
    # default; their RBAC allows nothing elsewhere.
    allowed = {"certctl": {"certctl", "default"}, "certctl-dataplane": {"default"}}
    running = Deployment(cluster=cluster, pebble=pebble, namespaces=("certctl", "default"),
                         dataplane_namespaces=("default",)).start()
    try:
        api.create(obj=_issuer(pebble))
        # Elsewhere: an annotated Ingress, and a Certificate written by hand.
        api.create(obj=ingress("other-shop", hosts=["other.example.test"],
                               secret_name="other-shop-tls", namespace="other"))
        api.create(obj={
            "apiVersion": "certctl.io/v1", "kind": "Certificate",
            "metadata": {"name": "by-hand", "namespace": "other"},
            "spec": {"secretName": "by-hand-tls", "dnsNames": ["hand.example.test"],
                     "issuerRef": {"name": "pebble", "kind": "ClusterIssuer"}}})
        with echo_backend("shop-backend") as backend_port:
            _apply_app(api, backend_port=backend_port)
            secret = eventually(partial(_ready_secret, api, "shop-tls"), timeout=60,
                                what="the certificate in default")
            leaf = eventually(lambda: served_certificate(
                port=running.https_port, server_name="shop.example.test",
                roots_pem=pebble.issuance_roots_pem()), what="the certificate served")
            assert leaf.serial_number == _leaf(secret).serial_number
    finally:
        running.stop()

    [by_hand] = api.list(kind="Certificate", namespace="other")
    assert by_hand["metadata"]["name"] == "by-hand" and not by_hand.get("status")
    for kind in ("Order", "Challenge", "Secret", "Event", "Service"):
        assert api.list(kind=kind, namespace="other") == [], kind
    other_ingress = api.get(kind="Ingress", namespace="other", name="other-shop")
    assert other_ingress is not None and not other_ingress.get("status")  # not served either

    # Not a single request went outside, not even a cluster-wide list: RBAC would refuse it.
    namespaced = {resource.plural: resource.namespaced for resource in RESOURCES.values()}
    seen: set[tuple[str, str | None, str]] = set()
    for request in cluster.requests():
        agent = request.headers.get("User-Agent", "")
        if agent == TEST_CLIENT or request.resource is None or not request.resource.plural:
            continue
        plural = request.resource.plural
        seen.add((agent.split("/")[0], request.namespace, plural))
        if not namespaced[plural]:
            continue
        where = allowed.get(agent, allowed["certctl"] | allowed["certctl-dataplane"])  # kopf
        assert request.namespace in where, (agent, request.method, request.url)
    # The watches and lists were there, namespaced.
    assert ("kopf", "default", "secrets") in seen and ("kopf", "certctl", "secrets") in seen
    assert ("kopf", "default", "ingresses") in seen
    assert ("kopf", None, "clusterissuers") in seen


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


def test_cli_status_and_renew_against_the_cluster(
    tmp_path: Path, api: KubeStore, cluster: Cluster, deployment: Deployment,
    pebble: PebbleServer, capsys: pytest.CaptureFixture[str],
) -> None:
    kubeconfig = _kubeconfig(tmp_path / "kubeconfig", server=cluster.url)
    api.create(obj=_issuer(pebble))
    _apply_app(api, backend_port=free_port())
    first = eventually(partial(_ready_secret, api, "shop-tls"), timeout=60, what="a certificate")

    capsys.readouterr()
    assert cli.main(["status", "certificate", "shop-tls", "-n", "default",
                     "--kubeconfig", str(kubeconfig)]) == 0
    shown = capsys.readouterr().out
    assert "Certificate default/shop-tls" in shown
    assert "Ready: True" in shown

    assert cli.main(["renew", "shop-tls", "-n", "default", "--kubeconfig", str(kubeconfig)]) == 0
    assert "Manually triggered issuance of Certificate default/shop-tls" in capsys.readouterr().out
    def renewed_secret() -> dict[str, Any] | None:
        secret = _ready_secret(api, "shop-tls")
        if secret is None or _leaf(secret).serial_number == _leaf(first).serial_number:
            return None
        return secret

    renewed = eventually(renewed_secret, timeout=60, what="a renewed certificate")
    assert dns_names(_leaf(renewed)) == ["shop.example.test"]

    assert cli.main(["status", "certificate", "nope", "-n", "default",
                     "--kubeconfig", str(kubeconfig)]) == 1
    assert "Certificate default/nope not found" in capsys.readouterr().err
