"""The data plane against the real API server: where the API can refuse it, and what
it finds already there when it starts.

A data plane whose Role lacks `ingresses/status` (a cluster that dropped it,
or a hand-written Role) gets 403 on every status write; it must still serve
its routes and certificates, and say what it could not write.
"""

from __future__ import annotations

import asyncio
import base64
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from certctl.dataplane import certstore
from certctl.runtime import dataplane_feed, operator
from certctl.store.kube import KubeStore
from tests.clusterops import admin_store, namespace
from tests.pebble import free_port
from tests.serving import eventually
from tests.testca import TestCA

if TYPE_CHECKING:
    from tests.controlplane import ControlPlane

pytest_plugins = ["tests.controlplane"]

HOST = "no-status.example.test"


def _role_without_status(ns: str) -> str:
    """What the data plane reads, and events, but not ingresses/status."""
    return yaml.safe_dump_all([
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": {"name": "dp-no-status", "namespace": ns}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
         "metadata": {"name": "dp-no-status", "namespace": ns},
         "rules": [
             {"apiGroups": [""], "resources": ["secrets", "services", "endpoints"],
              "verbs": ["get", "list", "watch"]},
             {"apiGroups": ["networking.k8s.io"], "resources": ["ingresses"],
              "verbs": ["get", "list", "watch"]},
             {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"],
              "verbs": ["get", "list", "watch"]},
             {"apiGroups": ["", "events.k8s.io"], "resources": ["events"],
              "verbs": ["create", "patch"]},
         ]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": {"name": "dp-no-status", "namespace": ns},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                     "name": "dp-no-status"},
         "subjects": [{"kind": "ServiceAccount", "name": "dp-no-status", "namespace": ns}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
         "metadata": {"name": f"{ns}-ingressclasses"},
         "rules": [{"apiGroups": ["networking.k8s.io"], "resources": ["ingressclasses"],
                    "verbs": ["get", "list", "watch"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": f"{ns}-ingressclasses"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                     "name": f"{ns}-ingressclasses"},
         "subjects": [{"kind": "ServiceAccount", "name": "dp-no-status", "namespace": ns}]},
    ])


def test_refused_status_writes_do_not_keep_certificates_from_being_served(
    control_plane: ControlPlane, tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    plane = control_plane
    with namespace(plane, "status-denied") as ns:
        plane.kubectl("apply", "-f", "-", input=_role_without_status(ns))
        issued = TestCA().issue(HOST)
        admin = admin_store(plane)
        admin.create(obj={
            "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": {"name": "tls", "namespace": ns},
            "data": {"tls.crt": base64.b64encode(issued.chain_pem).decode(),
                     "tls.key": base64.b64encode(issued.key_pem).decode()}})
        admin.create(obj={
            "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": {"name": "web", "namespace": ns},
            "spec": {"ingressClassName": "certctl",
                     "tls": [{"hosts": [HOST], "secretName": "tls"}],
                     "rules": [{"host": HOST, "http": {"paths": [{
                         "path": "/", "pathType": "Prefix",
                         "backend": {"service": {"name": "web", "port": {"number": 80}}}}]}}]}})
        kubeconfig = plane.token_kubeconfig(
            tmp_path / "dp.kubeconfig",
            token=plane.token(namespace=ns, service_account="dp-no-status"))
        store = KubeStore(configuration=plane.configuration(kubeconfig), namespaces=(ns,))
        certificates = certstore.CertificateIndex()
        tables: list[object] = []
        feed = dataplane_feed.DataPlaneFeed(
            store=store, certificates=certificates, publish_routes=tables.append,
            ingress_class="certctl", load_balancer_address="203.0.113.9")
        with pytest.raises(Exception, match=r"403|[Ff]orbidden"):
            feed.refresh()  # the status write is refused ...
        # ... after the routes and the certificate are in place:
        assert tables, "no route table was published"
        assert certificates.has_certificate_for(HOST)
        ingress = admin.get(kind="Ingress", namespace=ns, name="web")
        assert ingress is not None and not (ingress.get("status") or {}).get("loadBalancer")
        with pytest.raises(Exception, match=r"403|[Ff]orbidden"):
            feed.refresh()  # tried again until allowed, without rebuilding anything else
        assert len(tables) == 1
        store.close()
        admin.close()


def _challenge(ns: str, *, token: str, host: str) -> dict[str, Any]:
    acme = "https://acme.example.test"
    return {"apiVersion": "certctl.io/v1", "kind": "Challenge",
            "metadata": {"name": "web-tls-1-0", "namespace": ns},
            "spec": {"authorizationURL": f"{acme}/authz/1", "dnsName": host,
                     "issuerRef": {"group": "certctl.io", "kind": "ClusterIssuer",
                                   "name": "pebble"},
                     "key": f"{token}.thumbprint", "token": token, "type": "HTTP-01",
                     "url": f"{acme}/chall/1", "wildcard": False, "solverIndex": 0,
                     "solver": {"http01": {"ingress": {"ingressClassName": "certctl"}}}}}


def _answer(port: int, *, host: str, token: str) -> tuple[int, str]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/.well-known/acme-challenge/{token}", headers={"Host": host})
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, ""


def test_a_challenge_created_before_the_data_plane_started_is_answered(
    control_plane: ControlPlane,
) -> None:
    """A replica starting (a rollout, a rescheduled pod) during an issuance: the Challenge
    it lists waits for its self-check and changes no more, so no watch event brings it.
    Unanswered, Pebble's and the self-check's requests got 404 until the Challenge
    changed, which it never did (3 of B8's 1,000 certificates stuck)."""
    plane, token, host = control_plane, "tOkEn-before-start", "live.example.test"
    with namespace(plane, "dp-live-challenge") as ns:
        admin = admin_store(plane)
        created = admin.create(obj=_challenge(ns, token=token, host=host))
        http_port = free_port()
        data_plane = operator.ClusterDataPlane(options=operator.DataPlaneOptions(
            configuration=plane.configuration(), namespaces=(ns,),
            listening=dataplane_feed.Listening(address="127.0.0.1", http_port=http_port,
                                               https_port=free_port(),
                                               ingress_class="certctl")))
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, daemon=True)
        thread.start()
        try:
            asyncio.run_coroutine_threadsafe(data_plane.start(), loop).result(60)
            assert _answer(http_port, host=host, token=token) == (200, f"{token}.thumbprint")
            assert _answer(http_port, host="other.example.test", token=token)[0] == 404
            # Later changes come by the watch: once valid, the token is no longer answered.
            admin.replace_status(obj={**created, "status": {"state": "valid"}})
            eventually(lambda: _answer(http_port, host=host, token=token)[0] == 404,
                       what="the token withdrawn", timeout=10)
        finally:
            asyncio.run_coroutine_threadsafe(data_plane.stop(), loop).result(30)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
            loop.close()
            admin.close()
