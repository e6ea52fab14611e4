"""certctl's controller and data plane against the real control plane (tests/controlplane.py).

`Operator` runs what `certctl controller` and `certctl dataplane` run
(certctl.runtime.operator), in-process, each with the kubeconfig it is
given: the admin's, or one with a ServiceAccount token so that RBAC decides.
`netns_backend` is an HTTP backend the data plane can proxy to although the
API server refuses loopback addresses in EndpointSlices: a network namespace
of its own joined to this one by a veth pair, addresses in a /30 of
10.213.0.0/16. Test traffic goes only to loopback and to that namespace.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import datetime
import os
import random
import subprocess
import sys
import textwrap
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography import x509

from certctl.runtime import dataplane_feed, leader, operator
from certctl.solvers import http01_ingress
from certctl.store.kube import KubeStore
from tests.pebble import PebbleServer, free_port

if TYPE_CHECKING:  # imported by pytest itself (pytest_plugins), to rewrite its asserts
    from tests.controlplane import ControlPlane

TEST_CLIENT = "certctl-test"  # the User-Agent of the test's own requests
# As manifests/ runs the controller: `--solver-service certctl/certctl-dataplane`,
# `--ingress-class certctl`.
DATA_PLANE = http01_ingress.DataPlaneService(namespace="certctl", name="certctl-dataplane",
                                             ingress_class="certctl")
LOAD_BALANCER_ADDRESS = "203.0.113.7"
# User-Agents of the code under test: the controller's and the data plane's stores.
OPERATOR_AGENTS = ("certctl", "certctl-dataplane")
# The ServiceAccounts manifests/ creates, as the audit log names them.
CONTROLLER_USER = "system:serviceaccount:certctl:certctl-controller"
DATA_PLANE_USER = "system:serviceaccount:certctl:certctl-dataplane"
MANIFESTS = Path(__file__).resolve().parent.parent / "manifests"


@dataclass(frozen=True)
class Write:
    """One write certctl sent (the body as it left) and the server's answer (as stored)."""

    method: str
    path: str
    kind: str
    sent: dict[str, Any]
    stored: dict[str, Any]


class WriteLog:
    """Every write (POST/PUT) a KubeStore makes, with what the API server answered.

    The audit log cannot tell what was pruned: kube-apiserver logs a custom
    resource as decoded, unknown fields already gone. So the store itself
    records: its requests still go to the real server, unchanged."""

    def __init__(self) -> None:
        self.writes: list[Write] = []
        self._lock = threading.Lock()

    def record(self, store: KubeStore) -> None:
        send = store._call

        def call(method: str, path: str, *, kind: str, body: Any = None,
                 query: Any = None) -> dict[str, Any]:
            sent = copy.deepcopy(body)  # the caller may change it once answered
            answer = send(method, path, kind=kind, body=body, query=query)
            if method in ("POST", "PUT") and isinstance(sent, dict):
                with self._lock:
                    self.writes.append(Write(method=method, path=path, kind=kind, sent=sent,
                                             stored=copy.deepcopy(answer)))
            return answer

        store._call = call  # type: ignore[method-assign]

    def snapshot(self) -> list[Write]:
        with self._lock:
            return list(self.writes)


def admin_store(plane: ControlPlane) -> KubeStore:
    return KubeStore(configuration=plane.configuration(), component=TEST_CLIENT)


def apply_manifests(plane: ControlPlane, *, directory: Path) -> tuple[str, dict[str, Path]]:
    """`kubectl kustomize manifests/` applied: its YAML, and per ServiceAccount
    (certctl-controller, certctl-dataplane) a kubeconfig in `directory` with a token from
    the TokenRequest API, so that RBAC decides what certctl may do."""
    rendered = plane.kubectl("kustomize", str(MANIFESTS)).stdout
    plane.kubectl("apply", "-f", "-", input=rendered)
    kubeconfigs = {
        name: plane.token_kubeconfig(directory / f"{name}.kubeconfig", token=plane.token(
            namespace="certctl", service_account=name))
        for name in ("certctl-controller", "certctl-dataplane")
    }
    return rendered, kubeconfigs


def deployment_args(deployment: dict[str, Any], **overrides: str) -> list[str]:
    """The container's args, with `--flag value` pairs replaced (or added) by `overrides`
    (`http_port="5002"` is `--http-port 5002`)."""
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    args: list[str] = list(container["args"])
    for key, value in overrides.items():
        flag = "--" + key.replace("_", "-")
        if flag in args:
            args[args.index(flag) + 1] = value
        else:
            args += [flag, value]
    return args


def granted_operator(*, plane: ControlPlane, pebble: PebbleServer,
                     kubeconfigs: dict[str, Path]) -> Operator:
    """Controller and data plane as manifests/ deploys them: with their ServiceAccounts'
    tokens (`apply_manifests`), watching the namespaces their Roles cover, on the one Lease
    the controller's Role allows."""
    return Operator(plane=plane, pebble=pebble, namespaces=("certctl", "default"),
                    dataplane_namespaces=("default",),
                    controller_kubeconfig=kubeconfigs["certctl-controller"],
                    dataplane_kubeconfig=kubeconfigs["certctl-dataplane"],
                    lease="certctl-controller")


class Operator:
    """One controller replica and one data plane, in-process, as manifests/ runs them."""

    def __init__(self, *, plane: ControlPlane, pebble: PebbleServer,
                 namespaces: tuple[str, ...], dataplane_namespaces: tuple[str, ...],
                 controller_kubeconfig: Path | None = None,
                 dataplane_kubeconfig: Path | None = None,
                 lease: str | None = None, self_check_port: int | None = None) -> None:
        """`self_check_port`: where the controller's HTTP-01 self-checks connect (default:
        the data plane's HTTP port, which Pebble's validator reaches too)."""
        self.plane = plane
        self.pebble = pebble
        self.namespaces = namespaces
        self.self_check_port = self_check_port or pebble.http_port
        self.controller_configuration = plane.configuration(controller_kubeconfig)
        self.lease = lease or f"certctl-controller-{uuid.uuid4().hex[:8]}"
        self.controllers: list[operator.Controller] = []
        self.writes = WriteLog()  # of the controllers and the data plane
        self.dataplane = operator.ClusterDataPlane(options=operator.DataPlaneOptions(
            configuration=plane.configuration(dataplane_kubeconfig),
            namespaces=dataplane_namespaces,
            listening=dataplane_feed.Listening(
                address="127.0.0.1", http_port=pebble.http_port, https_port=free_port(),
                ingress_class="certctl", load_balancer_address=LOAD_BALANCER_ADDRESS),
        ))
        self.writes.record(self.dataplane.store)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._dataplane_started = False

    def start(self) -> Operator:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.dataplane.start(), self._loop).result(60)
        self._dataplane_started = True
        self.start_controller()
        return self

    def start_controller(self, *, identity: str = "replica-0") -> operator.Controller:
        """One more controller replica; they share the leader Lease."""
        controller = operator.Controller(options=operator.ControllerOptions(
            configuration=self.controller_configuration,
            namespaces=self.namespaces,
            election=leader.ElectionSettings(namespace="certctl", name=self.lease,
                                             identity=identity, lease_duration=3.0,
                                             renew_deadline=2.0, retry_period=0.2),
            data_plane=DATA_PLANE,
            self_check_address="127.0.0.1",
            self_check_port=self.self_check_port,
            workers=4,
            backoff_base=datetime.timedelta(seconds=1),
            metrics_address=("127.0.0.1", free_port()),
        ))
        self.writes.record(controller.store)
        controller.start()
        self.controllers.append(controller)
        return controller

    def stop_controller(self, controller: operator.Controller | None = None) -> None:
        """Stop one replica, or all of them."""
        for each in [controller] if controller is not None else list(self.controllers):
            each.stop()
            self.controllers.remove(each)

    def stop(self) -> None:
        self.stop_controller()
        if self._dataplane_started:
            asyncio.run_coroutine_threadsafe(self.dataplane.stop(), self._loop).result(30)
            self._dataplane_started = False
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        if not self._loop.is_closed():
            self._loop.close()

    @property
    def https_port(self) -> int:
        port = self.dataplane.edge.server.https_port
        assert port is not None
        return port


@contextlib.contextmanager
def running(operator_: Operator) -> Iterator[Operator]:
    operator_.start()
    try:
        yield operator_
    finally:
        operator_.stop()


@contextlib.contextmanager
def namespace(plane: ControlPlane, name: str) -> Iterator[str]:
    """A namespace of the test's own, deleted afterwards (not waited for)."""
    plane.kubectl("create", "namespace", name)
    try:
        yield name
    finally:
        plane.kubectl("delete", "namespace", name, "--wait=false", check=False)


# --- objects -------------------------------------------------------------------------


def ready_secret(api: KubeStore, *, namespace: str, name: str) -> dict[str, Any] | None:
    """The Certificate's Secret once the Certificate is Ready, else None."""
    certificate = api.get(kind="Certificate", namespace=namespace, name=name)
    if certificate is None:
        return None
    ready = [c for c in (certificate.get("status") or {}).get("conditions") or []
             if c["type"] == "Ready" and c["status"] == "True"]
    if not ready:
        return None
    return api.get(kind="Secret", namespace=namespace, name=name)


def annotated_ingress(name: str, host: str, *, namespace: str, issuer: str,
                      backend: str = "shop") -> dict[str, Any]:
    """An Ingress of class certctl for `host`, annotated for a certificate from a
    ClusterIssuer, its Secret named `<name>-tls`."""
    return {
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": name, "namespace": namespace,
                     "annotations": {"cert-manager.io/cluster-issuer": issuer}},
        "spec": {
            "ingressClassName": "certctl",
            "tls": [{"hosts": [host], "secretName": f"{name}-tls"}],
            "rules": [{"host": host, "http": {"paths": [{
                "path": "/", "pathType": "Prefix",
                "backend": {"service": {"name": backend, "port": {"number": 80}}}}]}}],
        },
    }


def issuer_ready(api: KubeStore, name: str) -> bool:
    issuer = api.get(kind="ClusterIssuer", namespace=None, name=name) or {}
    return any(c["type"] == "Ready" and c["status"] == "True"
               for c in (issuer.get("status") or {}).get("conditions") or [])


def leaf_of(secret: dict[str, Any]) -> x509.Certificate:
    return x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["tls.crt"]))


def service_with_slice(name: str, *, namespace: str, address: str,
                       port: int) -> list[dict[str, Any]]:
    return [
        {"apiVersion": "v1", "kind": "Service",
         "metadata": {"name": name, "namespace": namespace},
         "spec": {"ports": [{"name": "http", "port": 80, "targetPort": port}]}},
        {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
         "metadata": {"name": f"{name}-1", "namespace": namespace,
                      "labels": {"kubernetes.io/service-name": name}},
         "addressType": "IPv4",
         "ports": [{"name": "http", "port": port}],
         "endpoints": [{"addresses": [address], "conditions": {"ready": True}}]},
    ]


# --- a backend in a network namespace of its own --------------------------------------


@dataclass(frozen=True)
class Backend:
    address: str  # the namespace's side of the veth pair
    port: int


_ECHO = textwrap.dedent("""
    import http.server, sys
    name, address, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = (f"{name} {self.headers.get('Host')} {self.path} "
                    f"{self.headers.get('X-Forwarded-Proto')}").encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        def log_message(self, *args):
            pass
    server = http.server.ThreadingHTTPServer((address, port), Handler)
    print("ready", flush=True)
    server.serve_forever()
""")


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def netns_available() -> bool:
    return os.geteuid() == 0 and _ip("netns", "list", check=False).returncode == 0


@contextlib.contextmanager
def netns_backend(name: str) -> Iterator[Backend]:
    """An echo backend (`<name> <Host> <path> <X-Forwarded-Proto>`) on port 8080 of a
    fresh network namespace, reachable from this one through a veth pair; removed after."""
    tag = f"{os.getpid() % 10000}{random.randrange(100):02d}"
    netns, host_link, ns_link = f"certctl-t{tag}", f"cct{tag}h", f"cct{tag}n"
    used = _ip("-4", "-br", "addr").stdout
    subnet = next(n for n in random.sample(range(256), 256) if f"10.213.{n}." not in used)
    host_address, ns_address = f"10.213.{subnet}.1", f"10.213.{subnet}.2"
    server: subprocess.Popen[str] | None = None
    try:
        _ip("netns", "add", netns)
        _ip("link", "add", host_link, "type", "veth", "peer", "name", ns_link)
        _ip("link", "set", ns_link, "netns", netns)
        _ip("addr", "add", f"{host_address}/30", "dev", host_link)
        _ip("link", "set", host_link, "up")
        _ip("-n", netns, "addr", "add", f"{ns_address}/30", "dev", ns_link)
        _ip("-n", netns, "link", "set", ns_link, "up")
        _ip("-n", netns, "link", "set", "lo", "up")
        server = subprocess.Popen(
            ["ip", "netns", "exec", netns, sys.executable, "-c", _ECHO, name, ns_address,
             "8080"], stdout=subprocess.PIPE, text=True)
        assert server.stdout is not None
        assert server.stdout.readline().strip() == "ready", "the backend did not start"
        yield Backend(address=ns_address, port=8080)
    finally:
        if server is not None:
            server.terminate()
            try:
                server.wait(5)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(5)
        _ip("link", "del", host_link, check=False)  # its peer goes with it
        _ip("netns", "del", netns, check=False)
