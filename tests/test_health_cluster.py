"""/healthz and /readyz of `certctl dataplane` and `certctl controller` against the real
control plane (tests/controlplane.py), run as the commands users start.

Both reach the API server through a relay of the test's own that holds every
connection until released: the initial lists cannot complete, so /readyz must
answer 503 (and /healthz 200: the process runs) until the relay lets them
through, and 200 after. The data plane is only ready with its routes, their
Services and certificates loaded: at its first 200, its dashboard already
shows the route with its TLS Secret. On SIGTERM it turns 503 first and keeps
serving for --shutdown-delay before it exits.
"""

from __future__ import annotations

import base64
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import requests
import yaml

from tests.clusterops import admin_store, namespace, service_with_slice
from tests.pebble import free_port
from tests.serving import eventually, http_get
from tests.testca import TestCA

if TYPE_CHECKING:
    from tests.controlplane import ControlPlane

pytest_plugins = ["tests.controlplane"]

HOST = "ready.example.test"
HELD = 2.0  # seconds the relay holds the API connections


class HeldRelay:
    """A TCP relay on loopback to the API server that holds every connection (TLS passes
    through untouched) until `release()`."""

    def __init__(self, *, upstream: tuple[str, int]) -> None:
        self._upstream = upstream
        self._released = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.held = 0  # connections that arrived while held
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def release(self) -> None:
        self._released.set()

    def close(self) -> None:
        self._listener.close()
        for sock in self._sockets:
            sock.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if not self._released.is_set():
                self.held += 1
            threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    def _relay(self, client: socket.socket) -> None:
        self._released.wait()
        try:
            server = socket.create_connection(self._upstream)
        except OSError:
            client.close()
            return
        self._sockets += [client, server]
        threading.Thread(target=_pipe, args=(server, client), daemon=True).start()
        _pipe(client, server)


def _pipe(source: socket.socket, target: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            target.sendall(data)
    except OSError:
        pass
    finally:
        for sock in (source, target):
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


@contextmanager
def held_relay(plane: ControlPlane, tmp_path: Path) -> Iterator[tuple[HeldRelay, Path]]:
    """The relay, and the admin's kubeconfig pointing at it."""
    relay = HeldRelay(upstream=("127.0.0.1", plane.apiserver_port))
    config = yaml.safe_load(plane.kubeconfig.read_text())
    for cluster in config["clusters"]:
        cluster["cluster"]["server"] = f"https://127.0.0.1:{relay.port}"
    kubeconfig = tmp_path / "relay.kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(config))
    try:
        yield relay, kubeconfig
    finally:
        relay.close()


@contextmanager
def command(args: list[str], *, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as output:
        process = subprocess.Popen([sys.executable, "-m", "certctl", *args],
                                   stdout=output, stderr=subprocess.STDOUT)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def probe(port: int, path: str) -> tuple[int, str]:
    response = requests.get(f"http://127.0.0.1:{port}{path}", timeout=10)
    return response.status_code, response.text


def not_ready_while_held(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    """/healthz 200 and /readyz 503 for as long as the relay holds the API connections."""
    eventually(lambda: probe(port, "/healthz")[0] == 200 or process.poll() is not None,
               what="/healthz", timeout=30)
    assert process.poll() is None, log.read_text()
    deadline = time.monotonic() + HELD
    while time.monotonic() < deadline:
        status, text = probe(port, "/readyz")
        assert status == 503, text
        assert text.startswith("not ready: waiting for Kubernetes API reachable"), text
        assert probe(port, "/healthz") == (200, "ok\n")
        time.sleep(0.1)


@pytest.fixture
def plane(control_plane: ControlPlane) -> ControlPlane:
    return control_plane


def test_dataplane_is_ready_once_loaded_and_not_ready_while_draining(
    plane: ControlPlane, tmp_path: Path
) -> None:
    api = admin_store(plane)
    ca = TestCA()
    issued = ca.issue(HOST)
    with namespace(plane, f"health-{uuid.uuid4().hex[:6]}") as ns, \
            held_relay(plane, tmp_path) as (relay, kubeconfig):
        for obj in service_with_slice("shop", namespace=ns, address="10.213.250.1", port=80):
            api.create(obj=obj)
        api.create(obj={"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
                        "metadata": {"name": "ready-tls", "namespace": ns},
                        "data": {"tls.crt": base64.b64encode(issued.chain_pem).decode(),
                                 "tls.key": base64.b64encode(issued.key_pem).decode()}})
        api.create(obj={
            "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": {"name": "ready", "namespace": ns},
            "spec": {"ingressClassName": "certctl",
                     "tls": [{"hosts": [HOST], "secretName": "ready-tls"}],
                     "rules": [{"host": HOST, "http": {"paths": [{
                         "path": "/", "pathType": "Prefix",
                         "backend": {"service": {"name": "shop", "port": {"number": 80}}}}]}}]},
        })
        admin, http_port = free_port(), free_port()
        log = tmp_path / "dataplane.log"
        with command(["dataplane", "--kubeconfig", str(kubeconfig), "--namespace", ns,
                      "--listen-address", "127.0.0.1", "--http-port", str(http_port),
                      "--https-port", str(free_port()), "--metrics-port", str(admin),
                      "--shutdown-delay", "3"], log=log) as process:
            not_ready_while_held(admin, process, log)
            assert relay.held > 0
            relay.release()
            eventually(lambda: probe(admin, "/readyz") == (200, "ok\n"), what="ready",
                       timeout=60)
            # Ready means loaded: the route, its Service and its certificate are there.
            routes = requests.get(f"http://127.0.0.1:{admin}/api/v1/routes", timeout=10).json()
            [route] = [r for r in routes["routes"] if r["host"] == HOST]
            assert (route["backend"], route["tlsSecret"]) == (f"{ns}/shop:80", f"{ns}/ready-tls")
            assert http_get(port=http_port, host=HOST, path="/")[0] == 308  # to HTTPS

            process.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            assert eventually(lambda: probe(admin, "/readyz") == (
                503, "not ready: shutting down\n"), what="not ready after SIGTERM", timeout=2)
            # Still serving while load balancers move away.
            assert process.poll() is None
            assert http_get(port=http_port, host=HOST, path="/")[0] == 308
            assert probe(admin, "/healthz") == (200, "ok\n")
            assert process.wait(20) == 0, log.read_text()
            assert time.monotonic() - signalled >= 2.5, "exited before --shutdown-delay"


def test_controller_is_ready_once_its_watched_kinds_are_listed(
    plane: ControlPlane, tmp_path: Path
) -> None:
    with namespace(plane, f"health-{uuid.uuid4().hex[:6]}") as ns, \
            held_relay(plane, tmp_path) as (relay, kubeconfig):
        admin = free_port()
        log = tmp_path / "controller.log"
        with command(["controller", "--kubeconfig", str(kubeconfig), "--namespace", ns,
                      "--cluster-resource-namespace", ns, "--no-leader-election",
                      "--metrics-port", str(admin)], log=log) as process:
            not_ready_while_held(admin, process, log)
            relay.release()
            eventually(lambda: probe(admin, "/readyz") == (200, "ok\n"), what="ready",
                       timeout=60)
            assert "certmanager_http_acme_client_request_count" in probe(admin, "/metrics")[1]
            summary = requests.get(f"http://127.0.0.1:{admin}/api/v1/summary", timeout=10)
            assert summary.json()["sections"] == ["certificates", "orders", "events"]
            process.send_signal(signal.SIGTERM)
            assert process.wait(30) == 0, log.read_text()
