"""The data plane's feed against the real API server, where the API can refuse it.

A data plane whose Role lacks `ingresses/status` (a cluster that dropped it,
or a hand-written Role) gets 403 on every status write; it must still serve
its routes and certificates, and say what it could not write.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import yaml

from certctl.dataplane import certstore
from certctl.runtime import dataplane_feed
from certctl.store.kube import KubeStore
from tests.clusterops import admin_store, namespace
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
