"""Helpers for end-to-end tests of `certctl serve`: manifests, a running instance, probes.

Everything here talks to real servers: Pebble issues, the data plane answers
on real sockets, and certificates are checked with real TLS handshakes.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import http.client
import http.server
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import yaml
from cryptography import x509
from cryptography.x509 import verification

from certctl.controllers import reconciling
from certctl.controllers.reconciling import Clock
from certctl.runtime.standalone import ServeOptions, Standalone
from certctl.solvers.dns01 import solver as dns01_solver
from tests.pebble import PebbleServer, free_port

T = TypeVar("T")


def verify_chain(chain_pem: bytes, *, roots_pem: bytes, host: str) -> list[x509.Certificate]:
    """The chain, leaf first; raises `verification.VerificationError` unless `roots_pem`
    vouches for it as a server certificate for `host`."""
    chain = x509.load_pem_x509_certificates(chain_pem)
    verifier = verification.PolicyBuilder().store(verification.Store(
        x509.load_pem_x509_certificates(roots_pem))).build_server_verifier(x509.DNSName(host))
    verifier.verify(chain[0], chain[1:])
    return chain


def eventually(check: Callable[[], T | None], *, timeout: float = 30.0, what: str = "") -> T:
    """Poll `check` until it returns something truthy; errors count as 'not yet'."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
        except Exception as err:
            last_error = err
        else:
            if value:
                return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what or check}; last error: {last_error}")


# --- manifests -------------------------------------------------------------------


def write_yaml(path: Path, *documents: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump_all(documents, sort_keys=False))
    return path


def cluster_issuer(
    pebble: PebbleServer, *, name: str = "pebble", api_version: str = "cert-manager.io/v1"
) -> dict[str, Any]:
    return {
        "apiVersion": api_version,
        "kind": "ClusterIssuer",
        "metadata": {"name": name},
        "spec": {"acme": {
            "server": pebble.directory_url,
            "email": "test@example.test",
            "caBundle": base64.b64encode(pebble.ca_bundle_pem).decode(),
            "privateKeySecretRef": {"name": f"{name}-account"},
            "solvers": [{"http01": {"ingress": {"ingressClassName": "certctl"}}}],
        }},
    }


def ingress(
    name: str,
    *,
    hosts: list[str],
    secret_name: str | None,
    annotations: dict[str, str] | None = None,
    backend: str = "echo",
    namespace: str = "default",
) -> dict[str, Any]:
    tls: dict[str, Any] = {"hosts": hosts}
    if secret_name is not None:
        tls["secretName"] = secret_name
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "annotations": annotations
            if annotations is not None
            else {"cert-manager.io/cluster-issuer": "pebble"},
        },
        "spec": {
            "tls": [tls],
            "rules": [
                {"host": host, "http": {"paths": [{
                    "path": "/", "pathType": "Prefix",
                    "backend": {"service": {"name": backend, "port": {"number": 80}}},
                }]}}
                for host in hosts
            ],
        },
    }


def service_with_endpoints(
    name: str, *, port: int, namespace: str = "default"
) -> list[dict[str, Any]]:
    return [
        {"apiVersion": "v1", "kind": "Service",
         "metadata": {"name": name, "namespace": namespace},
         "spec": {"ports": [{"name": "http", "port": 80, "targetPort": port}]}},
        {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
         "metadata": {"name": f"{name}-1", "namespace": namespace,
                      "labels": {"kubernetes.io/service-name": name}},
         "addressType": "IPv4",
         "ports": [{"name": "http", "port": port}],
         "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": True}}]},
    ]


# --- backends --------------------------------------------------------------------


@contextmanager
def echo_backend(name: str) -> Iterator[int]:
    """An HTTP server answering `<name> <Host> <path> <X-Forwarded-Proto>`; yields its port."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = (f"{name} {self.headers.get('Host')} {self.path} "
                    f"{self.headers.get('X-Forwarded-Proto')}").encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


# --- a running certctl serve ------------------------------------------------------


class Serving:
    """`certctl serve` in-process, its event loop on a thread of its own."""

    def __init__(
        self,
        *,
        manifests: Path,
        state_dir: Path,
        pebble: PebbleServer,
        self_check_port: int | None = None,
        dns01: dns01_solver.Options | None = None,
        metrics_port: int | None = None,
        clock: Clock = reconciling.system_clock,
        http_port: int | None = None,
    ) -> None:
        """`http_port`: the HTTP listener's, Pebble's httpPort (where its VA connects) if None."""
        self.options = ServeOptions(
            manifests=manifests,
            state_dir=state_dir,
            listen_address="127.0.0.1",
            http_port=pebble.http_port if http_port is None else http_port,
            https_port=free_port(),
            self_check_address="127.0.0.1",
            self_check_port=self_check_port,
            workers=4,
            backoff_base=datetime.timedelta(seconds=1),
            dns01=dns01 or dns01_solver.Options(),
            metrics_port=metrics_port,
        )
        self.pebble = pebble
        self.standalone = Standalone(options=self.options, clock=clock)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def start(self) -> Serving:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.standalone.start(), self._loop).result(15)
        return self

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.standalone.stop(), self._loop).result(20)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    @property
    def store(self) -> Any:
        return self.standalone.store

    @property
    def https_port(self) -> int:
        return self.options.https_port

    @property
    def http_port(self) -> int:
        port = self.options.http_port
        assert port is not None, "this serve has no HTTP listener"
        return port

    def certificate(self, name: str, namespace: str = "default") -> dict[str, Any] | None:
        found: dict[str, Any] | None = self.store.get(kind="Certificate", namespace=namespace,
                                                      name=name)
        return found

    def condition(self, name: str, type: str, namespace: str = "default") -> dict[str, Any]:
        obj = self.certificate(name, namespace) or {}
        for condition in (obj.get("status") or {}).get("conditions") or []:
            if condition["type"] == type:
                found: dict[str, Any] = condition
                return found
        return {}


@contextmanager
def serving(
    *,
    manifests: Path,
    state_dir: Path,
    pebble: PebbleServer,
    self_check_port: int | None = None,
) -> Iterator[Serving]:
    running = Serving(manifests=manifests, state_dir=state_dir, pebble=pebble,
                      self_check_port=self_check_port).start()
    try:
        yield running
    finally:
        running.stop()


# --- TLS probes ------------------------------------------------------------------


def verified_context(roots_pem: bytes) -> ssl.SSLContext:
    context = ssl.create_default_context(cadata=roots_pem.decode())
    return context


def served_certificate(
    *, port: int, server_name: str, roots_pem: bytes | None
) -> x509.Certificate:
    """The leaf the data plane presents for SNI `server_name` (verified if roots given)."""
    if roots_pem is not None:
        context = verified_context(roots_pem)
    else:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            context.wrap_socket(raw, server_hostname=server_name) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def https_get(
    *, port: int, host: str, path: str, roots_pem: bytes
) -> tuple[int, str]:
    """GET over TLS with SNI and Host `host`, verifying against `roots_pem`."""
    connection = http.client.HTTPSConnection(host, port, context=verified_context(roots_pem),
                                             timeout=5)
    connection.sock = verified_context(roots_pem).wrap_socket(
        socket.create_connection(("127.0.0.1", port), timeout=5), server_hostname=host)
    try:
        connection.request("GET", path, headers={"Host": host})
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


def http_get(*, port: int, host: str, path: str) -> tuple[int, dict[str, str], str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", path, headers={"Host": host})
        response = connection.getresponse()
        headers = {name.lower(): value for name, value in response.getheaders()}
        return response.status, headers, response.read().decode()
    finally:
        connection.close()


def dns_names(certificate: x509.Certificate) -> list[str]:
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    return list(names.value.get_values_for_type(x509.DNSName))
