"""--publish-service: served Ingresses' `status.loadBalancer` follows the data plane's own
Service, as with ingress-nginx's flag of that name.

`certctl dataplane` runs as a process with the args of its Deployment in
manifests/ (so `--publish-service certctl/certctl-dataplane`) and the token of
its ServiceAccount, against the real control plane with manifests/ applied
(tests/test_cluster_rbac.py's `granted`). The test sets the Service's
`status.loadBalancer` through the status subresource, as a cloud's load
balancer controller does: the Ingress gets that address, then the new one when
it changes, and the data plane was never refused by RBAC nor read anything of
namespace certctl but that one Service.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from certctl import cli
from certctl.runtime import published_service
from tests.clusterops import DATA_PLANE_USER, admin_store, deployment_args, service_with_slice
from tests.pebble import free_port
from tests.serving import eventually
from tests.test_cluster_rbac import REPO, Granted, granted
from tests.test_health_cluster import probe

if TYPE_CHECKING:
    from certctl.store.kube import KubeStore

pytest_plugins = ["tests.controlplane"]
__all__ = ["granted"]  # the fixture, imported to be used here

SERVICE = ("certctl", "certctl-dataplane")


def _set_service_addresses(api: KubeStore, entries: list[dict[str, str]]) -> None:
    service = api.get(kind="Service", namespace=SERVICE[0], name=SERVICE[1])
    assert service is not None, "manifests/ creates the data plane's Service"
    service["status"] = {"loadBalancer": {"ingress": entries} if entries else {}}
    api.replace_status(obj=service)


def _published(api: KubeStore, name: str) -> list[dict[str, Any]]:
    ingress = api.get(kind="Ingress", namespace="default", name=name)
    assert ingress is not None
    found: list[dict[str, Any]] = ((ingress.get("status") or {}).get("loadBalancer")
                                   or {}).get("ingress") or []
    return found


def _kill_if_running(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.kill()
        process.wait(10)


def test_served_ingresses_publish_the_address_of_the_data_planes_service(
    granted: Granted, tmp_path: Path
) -> None:
    plane = granted.plane
    api = admin_store(plane)
    name = f"pub-{uuid.uuid4().hex[:6]}"
    [deployment] = [d for d in granted.rendered
                    if d["kind"] == "Deployment" and d["metadata"]["name"] == SERVICE[1]]
    admin_port = free_port()
    args = deployment_args(deployment, kubeconfig=str(granted.kubeconfigs["certctl-dataplane"]),
                 listen_address="127.0.0.1", http_port=str(free_port()),
                 https_port=str(free_port()), metrics_address="127.0.0.1",
                 metrics_port=str(admin_port), shutdown_delay="0")
    assert args[args.index("--publish-service") + 1] == "/".join(SERVICE)
    log = tmp_path / "dataplane.log"
    with ExitStack() as cleanup:
        cleanup.callback(api.close)
        for obj in service_with_slice(name, namespace="default", address="10.213.250.1",
                                      port=80):
            api.create(obj=obj)
            cleanup.callback(api.delete, kind=obj["kind"], namespace="default", name=name
                             if obj["kind"] == "Service" else obj["metadata"]["name"])
        api.create(obj={
            "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"ingressClassName": "certctl", "rules": [{
                "host": f"{name}.example.test", "http": {"paths": [{
                    "path": "/", "pathType": "Prefix",
                    "backend": {"service": {"name": name, "port": {"number": 80}}}}]}}]}})
        cleanup.callback(api.delete, kind="Ingress", namespace="default", name=name)
        cleanup.callback(_set_service_addresses, api, [])
        _set_service_addresses(api, [{"ip": "203.0.113.7"}])
        mark = plane.audit.mark()
        with log.open("wb") as output:
            process = subprocess.Popen([sys.executable, "-m", "certctl", *args], cwd=REPO,
                                       stdout=output, stderr=subprocess.STDOUT)
        cleanup.callback(_kill_if_running, process)

        def published(wanted: list[dict[str, str]]) -> bool:
            assert process.poll() is None, log.read_text()
            return _published(api, name) == wanted

        eventually(lambda: probe(admin_port, "/readyz") == (200, "ok\n"), what="ready",
                   timeout=60)
        eventually(lambda: published([{"ip": "203.0.113.7"}]), what="the Service's IP",
                   timeout=30)
        # The load balancer's address changes: the Ingress follows, the old one is gone.
        _set_service_addresses(api, [{"hostname": "lb.example.test"}])
        eventually(lambda: published([{"hostname": "lb.example.test"}]),
                   what="the Service's new address", timeout=30)

        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0, log.read_text()
        time.sleep(0.5)  # requests in flight reach the audit log

    made = [e for e in plane.audit.events(since=mark) if e.user == DATA_PLANE_USER]
    assert [str(e) for e in made if e.code in (401, 403)] == []
    in_certctl = {(e.resource, e.name, e.verb) for e in made if e.namespace == SERVICE[0]}
    assert in_certctl == {("services", SERVICE[1], "list"), ("services", SERVICE[1], "watch")}


@pytest.mark.parametrize(("flags", "message"), [
    (["--publish-service", "certctl"], "--publish-service 'certctl': expected NAMESPACE/NAME"),
    (["--publish-service", "certctl/a/b"], "expected NAMESPACE/NAME"),
    (["--publish-service", "/certctl-dataplane", "--load-balancer-address", "192.0.2.1"],
     "expected NAMESPACE/NAME"),
])
def test_publish_service_flag_mistakes_are_refused(
    flags: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["dataplane", *flags]) == 2
    assert message in capsys.readouterr().err


def test_entries_are_the_load_balancers_then_the_external_ips_without_repeats() -> None:
    service = {"spec": {"externalIPs": ["192.0.2.9", "203.0.113.7"]},
               "status": {"loadBalancer": {"ingress": [
                   {"ip": "203.0.113.7", "ports": [{"port": 443, "protocol": "TCP"}]},
                   {"hostname": "lb.example.test"}, {"ipMode": "Proxy"}]}}}
    assert published_service.load_balancer_entries(service) == [
        {"ip": "203.0.113.7"}, {"hostname": "lb.example.test"}, {"ip": "192.0.2.9"}]
    assert published_service.load_balancer_entries(None) == []
    assert published_service.load_balancer_entries({"spec": {"type": "LoadBalancer"}}) == []
