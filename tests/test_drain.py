"""Graceful shutdown of `certctl dataplane` on SIGTERM, over real sockets, against the real
control plane (tests/controlplane.py); and the HTTP/2 frames of a drain, read raw.

After --shutdown-delay the data plane closes its listeners (a new connection is
refused), closes a keep-alive connection that sits between requests at once,
lets the requests in flight finish, one on HTTP/1.1 (answered with
`Connection: close`) and one on HTTP/2 (curl, whose nghttp2 keeps a stream
going after a graceful GOAWAY), both with 200, and cuts a request still running
when --drain-timeout is over; then it exits by itself with status 0.

The h2 library's client cannot read past a GOAWAY (its connection state
machine closes), so the frames of a drain are parsed here by hand: a GOAWAY
NO_ERROR naming the last stream opened, that stream's response after it, a
stream opened after the GOAWAY refused with REFUSED_STREAM, then the close.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import http.server
import os
import random
import re
import signal
import socket
import ssl
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

import h2.config
import h2.connection
import hpack
import pytest
import uvloop

from certctl.api import resources
from certctl.dataplane import certstore, routing, server
from certctl.routes import ingress as ingress_routes
from tests.clusterops import admin_store, namespace
from tests.pebble import free_port
from tests.serving import eventually
from tests.test_dataplane import LoopThread, secret
from tests.test_dataplane_proxy import simple_ingress
from tests.test_health_cluster import command, probe
from tests.testca import TestCA

if TYPE_CHECKING:
    from certctl.store.kube import KubeStore
    from tests.controlplane import ControlPlane

pytest_plugins = ["tests.controlplane"]

HOST = "drain.example.test"
SHUTDOWN_DELAY = 1.0
DRAIN_TIMEOUT = 6.0
SLOW = 4.0  # seconds the in-flight requests take: past the delay, within the drain


class SlowHandler(http.server.BaseHTTPRequestHandler):
    """GET /sleep/SECONDS answers 200 after that long; counts requests begun and ended."""

    protocol_version = "HTTP/1.1"  # kept alive, as the data plane's pool expects
    server: SlowBackend

    def do_GET(self) -> None:
        match = re.fullmatch(r"/sleep/([0-9.]+)", self.path)
        seconds = float(match.group(1)) if match else 0.0
        with self.server.lock:
            self.server.begun += 1
        time.sleep(seconds)
        body = f"slept {seconds:g}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        with self.server.lock:
            self.server.ended += 1

    def log_message(self, *args: Any) -> None:
        pass


class SlowBackend(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: str) -> None:
        super().__init__((address, 0), SlowHandler)
        self.address = address
        self.port: int = self.server_address[1]
        self.lock = threading.Lock()
        self.begun = 0
        self.ended = 0
        threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True).start()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """The data plane cuts the request that outlasts the drain: expected here."""


@contextmanager
def slow_backend() -> Iterator[SlowBackend]:
    """A SlowBackend on an address of the loopback interface that is not in 127.0.0.0/8:
    the API server refuses loopback addresses in EndpointSlices, the traffic stays on `lo`."""
    if os.geteuid() != 0:
        pytest.skip("adding an address to the loopback interface needs root")
    used = subprocess.run(["ip", "-4", "-br", "addr"], capture_output=True, text=True,
                          check=True).stdout
    address = next(a for a in (f"10.214.{random.randrange(256)}.{random.randrange(1, 255)}"
                               for _ in range(100)) if a + "/" not in used)
    subprocess.run(["ip", "addr", "add", f"{address}/32", "dev", "lo"], check=True)
    try:
        backend = SlowBackend(address)
        try:
            yield backend
        finally:
            backend.shutdown()
            backend.server_close()
    finally:
        subprocess.run(["ip", "addr", "del", f"{address}/32", "dev", "lo"], check=False)


def serve_through_dataplane(api: KubeStore, *, ns: str, ca: TestCA, backend: SlowBackend,
                            tls: bool = True) -> None:
    """An Ingress for HOST (with a TLS Secret of `ca`'s when `tls`) routing to the backend,
    through a Service and its EndpointSlice."""
    backend_port = backend.port
    api.create(obj={"apiVersion": "v1", "kind": "Service",
                    "metadata": {"name": "slow", "namespace": ns},
                    "spec": {"ports": [{"name": "http", "port": 80,
                                        "targetPort": backend_port}]}})
    api.create(obj={"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                    "metadata": {"name": "slow-1", "namespace": ns,
                                 "labels": {"kubernetes.io/service-name": "slow"}},
                    "addressType": "IPv4", "ports": [{"name": "http", "port": backend_port}],
                    "endpoints": [{"addresses": [backend.address], "conditions": {"ready": True}}]})
    spec: dict[str, Any] = {
        "ingressClassName": "certctl",
        "rules": [{"host": HOST, "http": {"paths": [{
            "path": "/", "pathType": "Prefix",
            "backend": {"service": {"name": "slow", "port": {"number": 80}}}}]}}]}
    if tls:
        issued = ca.issue(HOST)
        api.create(obj={"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
                        "metadata": {"name": "drain-tls", "namespace": ns},
                        "data": {"tls.crt": base64.b64encode(issued.chain_pem).decode(),
                                 "tls.key": base64.b64encode(issued.key_pem).decode()}})
        spec["tls"] = [{"hosts": [HOST], "secretName": "drain-tls"}]
    api.create(obj={"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
                    "metadata": {"name": "drain", "namespace": ns}, "spec": spec})


def dataplane_args(plane: ControlPlane, *, ns: str, http_port: int, https_port: int,
                   admin_port: int, drain_timeout: float) -> list[str]:
    return ["dataplane", "--kubeconfig", str(plane.kubeconfig), "--namespace", ns,
            "--listen-address", "127.0.0.1", "--http-port", str(http_port),
            "--https-port", str(https_port), "--metrics-port", str(admin_port),
            "--shutdown-delay", f"{SHUTDOWN_DELAY:g}", "--drain-timeout", f"{drain_timeout:g}"]


class Outcome:
    """What a request made on a thread of its own came to."""

    def __init__(self) -> None:
        self.status: int | None = None
        self.headers: dict[str, str] = {}
        self.body = b""
        self.error: BaseException | None = None
        self.done = threading.Event()


def https_get(*, port: int, ca: TestCA, path: str) -> Outcome:
    """GET `path` over HTTP/1.1 and TLS, on a thread; the Outcome fills in when it ends."""
    outcome = Outcome()

    def run() -> None:
        connection = http.client.HTTPConnection(HOST, port, timeout=30)
        try:
            raw = socket.create_connection(("127.0.0.1", port), timeout=30)
            connection.sock = ca.client_context().wrap_socket(raw, server_hostname=HOST)
            connection.request("GET", path, headers={"Host": HOST})
            response = connection.getresponse()
            outcome.headers = {k.lower(): v for k, v in response.getheaders()}
            outcome.body = response.read()
            outcome.status = response.status
        except (OSError, http.client.HTTPException) as err:
            outcome.error = err
        finally:
            connection.close()
            outcome.done.set()

    threading.Thread(target=run, daemon=True).start()
    return outcome


def wait_ready(admin_port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    eventually(lambda: process.poll() is not None or probe(admin_port, "/readyz") == (
        200, "ok\n"), what="ready", timeout=60)
    assert process.poll() is None, log.read_text()


def served(*, port: int, ca: TestCA) -> bool:
    outcome = https_get(port=port, ca=ca, path="/sleep/0")
    return outcome.done.wait(5) and outcome.status == 200


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


@pytest.fixture
def plane(control_plane: ControlPlane) -> ControlPlane:
    return control_plane


def test_sigterm_drains_http1_and_http2_requests_and_cuts_what_outlasts_the_grace(
    plane: ControlPlane, tmp_path: Path
) -> None:
    api = admin_store(plane)
    ca = TestCA()
    (tmp_path / "ca.pem").write_bytes(ca.pem)
    with namespace(plane, f"drain-{uuid.uuid4().hex[:6]}") as ns, slow_backend() as backend:
        serve_through_dataplane(api, ns=ns, ca=ca, backend=backend)
        http_port, https_port, admin_port = free_port(), free_port(), free_port()
        log = tmp_path / "dataplane.log"
        with command(dataplane_args(plane, ns=ns, http_port=http_port, https_port=https_port,
                                    admin_port=admin_port, drain_timeout=DRAIN_TIMEOUT),
                     log=log) as process:
            wait_ready(admin_port, process, log)
            eventually(lambda: served(port=https_port, ca=ca), what="the route served",
                       timeout=30)
            # A keep-alive connection that has served a request and sits idle.
            idle = http.client.HTTPConnection(HOST, https_port, timeout=10)
            idle.sock = ca.client_context().wrap_socket(
                socket.create_connection(("127.0.0.1", https_port)), server_hostname=HOST)
            idle.request("GET", "/sleep/0", headers={"Host": HOST})
            response = idle.getresponse()
            assert (response.status, response.read()) == (200, b"slept 0\n")
            assert response.getheader("connection") is None  # kept alive
            begun = backend.begun

            http1 = https_get(port=https_port, ca=ca, path=f"/sleep/{SLOW:g}")
            too_long = https_get(port=https_port, ca=ca, path="/sleep/60")
            http2 = subprocess.Popen(
                ["curl", "--silent", "--show-error", "--http2", "--cacert",
                 str(tmp_path / "ca.pem"), "--resolve", f"{HOST}:{https_port}:127.0.0.1",
                 "--write-out", "%{http_code} %{http_version}",
                 f"https://{HOST}:{https_port}/sleep/{SLOW:g}"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            eventually(lambda: backend.begun == begun + 3, what="3 requests in flight",
                       timeout=10)

            process.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            # After the shutdown delay the listeners close while the requests still run.
            eventually(lambda: refused(https_port) and refused(http_port),
                       what="new connections refused", timeout=SHUTDOWN_DELAY + 3)
            assert time.monotonic() - signalled >= SHUTDOWN_DELAY * 0.9
            assert not http1.done.is_set() and http2.poll() is None
            # The idle keep-alive connection is closed at once (TLS close_notify, then EOF).
            assert idle.sock is not None
            idle.sock.settimeout(2)
            # An SSLEOFError: closed without our close_notify awaited, closed all the same.
            with suppress(ssl.SSLEOFError):
                assert idle.sock.recv(65536) == b""
            idle.close()

            assert http1.done.wait(SLOW + 5), "the HTTP/1.1 request did not finish"
            assert http1.error is None, http1.error
            assert (http1.status, http1.body) == (200, f"slept {SLOW:g}\n".encode())
            assert http1.headers.get("connection") == "close"
            out, err = http2.communicate(timeout=SLOW + 5)
            assert http2.returncode == 0, err.decode()
            assert out.decode() == f"slept {SLOW:g}\n200 2"  # over HTTP/2

            # The request outlasting the drain is cut when it ends, and the process exits.
            assert process.wait(SHUTDOWN_DELAY + DRAIN_TIMEOUT + 10) == 0, log.read_text()
            elapsed = time.monotonic() - signalled
            assert too_long.done.wait(5)
            assert too_long.status is None and too_long.error is not None
            assert SHUTDOWN_DELAY + DRAIN_TIMEOUT - 0.5 <= elapsed < SHUTDOWN_DELAY + \
                DRAIN_TIMEOUT + 5, elapsed
            assert "still busy after the drain timeout: cut" in log.read_text()


# --- the frames of an HTTP/2 drain, in process ---------------------------------------------

GOAWAY, RST_STREAM, HEADERS, DATA = 0x7, 0x3, 0x1, 0x0
END_STREAM = 0x1
REFUSED_STREAM = 0x7


def read_frames(sock: ssl.SSLSocket) -> list[tuple[int, int, int, bytes]]:
    """(type, flags, stream id, payload) of every frame until the server closes."""
    buffer = b""
    while True:
        try:
            data = sock.recv(65536)
        except ssl.SSLEOFError:
            data = b""
        if not data:
            break
        buffer += data
    frames = []
    while len(buffer) >= 9:
        length = int.from_bytes(buffer[:3], "big")
        frame_type, flags = buffer[3], buffer[4]
        stream_id = int.from_bytes(buffer[5:9], "big") & 0x7FFFFFFF
        frames.append((frame_type, flags, stream_id, buffer[9:9 + length]))
        buffer = buffer[9 + length:]
    assert buffer == b"", "a frame cut short"
    return frames


def test_http2_drain_sends_goaway_finishes_the_open_stream_and_refuses_later_ones() -> None:
    ca = TestCA()
    certificates = certstore.CertificateIndex()
    issued = ca.issue(HOST)
    certificates.set_certificate(source=secret(HOST), chain_pem=issued.chain_pem,
                                 key_pem=issued.key_pem)
    backend = SlowBackend("127.0.0.1")
    plane = server.DataPlane(http_address=("127.0.0.1", 0), https_address=("127.0.0.1", 0),
                             certificates=certificates, challenge_responder=lambda h, t: None)
    plane.set_routes(routing.RouteTable.build(
        routes=ingress_routes.compile_ingresses(
            ingresses=[simple_ingress("drain", {(HOST, "/"): "slow"})], ingress_classes=[],
            controller_name="certctl.io/ingress-controller", class_name=None,
            enforce_access_annotations=True, secret_data=lambda namespace, name: None),
        services=[resources.Service(namespace="default", name="slow", ports=(
            resources.ServicePort(port=80, name="http", target_port="web"),))],
        endpoint_slices=[resources.EndpointSlice(
            namespace="default", name="slow-1", service_name="slow",
            ports=(resources.EndpointPort(port=backend.port, name="http"),),
            endpoints=(resources.Endpoint(addresses=("127.0.0.1",)),))]))
    loop = LoopThread(uvloop.new_event_loop())
    stopped = False
    try:
        loop.run(plane.start())
        port = plane.https_port
        assert port is not None
        context = ca.client_context()
        context.set_alpn_protocols(["h2"])
        sock = context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10),
                                   server_hostname=HOST)
        assert sock.selected_alpn_protocol() == "h2"
        client = h2.connection.H2Connection(
            config=h2.config.H2Configuration(client_side=True, header_encoding=None))
        client.initiate_connection()
        request = [(":method", "GET"), (":path", "/sleep/1.5"), (":scheme", "https"),
                   (":authority", HOST)]
        client.send_headers(1, request, end_stream=True)
        sock.sendall(client.data_to_send())
        eventually(lambda: backend.begun == 1, what="the request at the backend", timeout=5)

        started = time.monotonic()
        drained = asyncio.run_coroutine_threadsafe(plane.stop(grace=10), loop.loop)
        eventually(lambda: refused(port), what="the listener closed", timeout=5)
        # Opened after the GOAWAY went out (the client has not read it yet).
        client.send_headers(3, [(name, "/sleep/0" if name == ":path" else value)
                                for name, value in request], end_stream=True)
        sock.sendall(client.data_to_send())
        frames = read_frames(sock)
        drained.result(10)
        stopped = True
        elapsed = time.monotonic() - started
    finally:
        if not stopped:
            loop.run(plane.stop())
        loop.close()
        backend.shutdown()
        backend.server_close()

    kinds = [(frame_type, stream_id) for frame_type, _, stream_id, _ in frames]
    [goaway] = [payload for frame_type, _, _, payload in frames if frame_type == GOAWAY]
    assert (int.from_bytes(goaway[:4], "big"), int.from_bytes(goaway[4:8], "big")) == (1, 0)
    assert kinds.index((GOAWAY, 0)) < kinds.index((HEADERS, 1)), kinds
    [refusal] = [payload for frame_type, _, stream_id, payload in frames
                 if (frame_type, stream_id) == (RST_STREAM, 3)]
    assert int.from_bytes(refusal, "big") == REFUSED_STREAM
    assert (HEADERS, 3) not in kinds and backend.begun == 1  # stream 3 never went upstream
    [head] = [payload for frame_type, _, stream_id, payload in frames
              if (frame_type, stream_id) == (HEADERS, 1)]
    assert (b":status", b"200") in list(hpack.Decoder().decode(head, raw=True))
    body = b"".join(payload for frame_type, _, stream_id, payload in frames
                    if (frame_type, stream_id) == (DATA, 1))
    assert body == b"slept 1.5\n"
    assert frames[-1][0] == DATA and frames[-1][1] & END_STREAM, "closed after the last stream"
    assert elapsed < 5, "the drain waited for the grace period instead of the last stream"
