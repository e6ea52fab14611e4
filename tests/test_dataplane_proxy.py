"""The HTTP/1.1 reverse proxy on real sockets: pooling, streaming, upgrades, limits, abuse.

Backends are real servers on loopback: the JSON echo server of
test_dataplane (it reports the port it was reached from, which tells a
pooled connection from a new one), a WebSocket echo server, and raw socket
servers that misbehave on purpose.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import hashlib
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.client import HTTPConnection
from typing import Any

import pytest
import uvloop
import websocket

from certctl.api import resources
from certctl.dataplane import certstore, routing, server
from certctl.routes import ingress as ingress_routes
from tests.test_dataplane import EchoServer, LoopThread, read_until_closed, secret
from tests.testca import TestCA

MiB = 1024 * 1024


# --- a data plane in front of named backends ---------------------------------------------


def simple_ingress(
    name: str,
    routes: dict[tuple[str, str], str],
    *,
    annotations: dict[str, str] | None = None,
    created_offset: int = 0,
) -> resources.Ingress:
    """An Ingress with Prefix rules {(host, path): service}, port by name."""
    by_host: dict[str, list[resources.IngressPath]] = {}
    for (host, path), service in routes.items():
        by_host.setdefault(host, []).append(
            resources.IngressPath(
                path=path,
                path_type="Prefix",
                backend=resources.ServiceBackend(name=service, port_name="http"),
            )
        )
    return resources.Ingress(
        namespace="default",
        name=name,
        creation_timestamp=datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)
        + datetime.timedelta(seconds=created_offset),
        annotations=tuple((annotations or {}).items()),
        rules=tuple(
            resources.IngressRule(host=host, paths=tuple(paths)) for host, paths in by_host.items()
        ),
    )


class Running:
    def __init__(self, plane: server.DataPlane, ca: TestCA) -> None:
        self.plane = plane
        self.ca = ca

    def http(self, timeout: float = 5) -> HTTPConnection:
        return HTTPConnection("127.0.0.1", self.plane.http_port, timeout=timeout)

    def https(self, host: str) -> HTTPConnection:
        port = self.plane.https_port
        assert port is not None
        raw = socket.create_connection(("127.0.0.1", port), timeout=5)
        conn = HTTPConnection(host, port, timeout=5)
        conn.sock = self.ca.client_context().wrap_socket(raw, server_hostname=host)
        return conn


@contextmanager
def running_plane(
    *,
    ingresses: list[resources.Ingress],
    backends: dict[str, tuple[int, ...]] | None = None,
    echo: tuple[str, ...] = (),
    tls_hosts: tuple[str, ...] = (),
    enforce_access_annotations: bool = True,
    secrets: dict[tuple[str, str], dict[str, bytes]] | None = None,
    **options: Any,
) -> Iterator[Running]:
    """A DataPlane on uvloop serving `ingresses`; `backends` maps Service name -> ports,
    and each Service named in `echo` gets an EchoServer of that name for the plane's life."""
    with contextlib.ExitStack() as stack:
        servers = {name: EchoServer(name) for name in echo}
        for server in servers.values():
            stack.callback(server.server_close)
            stack.callback(server.shutdown)
        yield from _running_plane(
            ingresses=ingresses,
            backends={**(backends or {}), **{n: (s.port,) for n, s in servers.items()}},
            tls_hosts=tls_hosts, enforce_access_annotations=enforce_access_annotations,
            secrets=secrets, **options)


def _running_plane(
    *,
    ingresses: list[resources.Ingress],
    backends: dict[str, tuple[int, ...]],
    tls_hosts: tuple[str, ...],
    enforce_access_annotations: bool,
    secrets: dict[tuple[str, str], dict[str, bytes]] | None,
    **options: Any,
) -> Iterator[Running]:
    ca = TestCA()
    certificates = certstore.CertificateIndex()
    for host in tls_hosts:
        issued = ca.issue(host)
        certificates.set_certificate(
            source=secret(host), chain_pem=issued.chain_pem, key_pem=issued.key_pem
        )
    services, slices = [], []
    for name, ports in backends.items():
        services.append(
            resources.Service(
                namespace="default",
                name=name,
                ports=(resources.ServicePort(port=80, name="http", target_port="web"),),
            )
        )
        slices += [
            resources.EndpointSlice(
                namespace="default",
                name=f"{name}-{index}",
                service_name=name,
                ports=(resources.EndpointPort(port=port, name="http"),),
                endpoints=(resources.Endpoint(addresses=("127.0.0.1",)),),
            )
            for index, port in enumerate(ports)
        ]
    plane = server.DataPlane(
        http_address=("127.0.0.1", 0),
        https_address=("127.0.0.1", 0),
        certificates=certificates,
        challenge_responder=lambda host, token: None,
        **options,
    )
    plane.set_routes(
        routing.RouteTable.build(
            routes=ingress_routes.compile_ingresses(
                ingresses=ingresses,
                ingress_classes=[],
                controller_name="certctl.io/ingress-controller",
                class_name=None,
                enforce_access_annotations=enforce_access_annotations,
                secret_data=lambda namespace, name: (secrets or {}).get((namespace, name)),
            ),
            services=services,
            endpoint_slices=slices,
        )
    )
    loop = LoopThread(uvloop.new_event_loop())
    loop.run(plane.start())
    try:
        yield Running(plane, ca)
    finally:
        loop.run(plane.stop())
        loop.close()


def echoed(conn: HTTPConnection, path: str, **kwargs: Any) -> dict[str, Any]:
    conn.request(kwargs.pop("method", "GET"), path, **kwargs)
    response = conn.getresponse()
    body = response.read()
    assert response.status == 200, (response.status, body)
    found: dict[str, Any] = json.loads(body)
    return found


# --- misbehaving and special backends ------------------------------------------------------


class RawServer:
    """A loopback TCP server running `handle(conn)` per connection on its own thread."""

    def __init__(self, handle: Any) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port: int = self.sock.getsockname()[1]
        self._handle = handle
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._run, args=(conn,), daemon=True).start()

    def _run(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            self._handle(conn)

    def close(self) -> None:
        self.sock.close()


def read_head(conn: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def answer_then_close(conn: socket.socket) -> None:
    """Says nothing about closing, then closes: a backend whose keep-alive timeout is 0."""
    read_head(conn)
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")


def websocket_echo(conn: socket.socket) -> None:
    """RFC 6455 server side, just enough to echo text and binary frames back."""
    head = read_head(conn).decode("latin-1")
    key = next(
        line.split(":", 1)[1].strip()
        for line in head.split("\r\n")
        if line.lower().startswith("sec-websocket-key:")
    )
    accept = base64.b64encode(
        hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()
    ).decode()
    conn.sendall(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept.encode() + b"\r\n\r\n"
    )
    reader = conn.makefile("rb")
    while True:
        first, second = reader.read(2)
        opcode, length = first & 0x0F, second & 0x7F
        if length == 126:
            length = int.from_bytes(reader.read(2), "big")
        elif length == 127:
            length = int.from_bytes(reader.read(8), "big")
        mask = reader.read(4)
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(reader.read(length)))
        if length < 126:
            header = bytes([0x80 | opcode, length])
        elif length < 65536:
            header = bytes([0x80 | opcode, 126]) + length.to_bytes(2, "big")
        else:
            header = bytes([0x80 | opcode, 127]) + length.to_bytes(8, "big")
        conn.sendall(header + payload)
        if opcode == 8:
            return


@pytest.fixture(scope="module")
def echo() -> Iterator[EchoServer]:
    srv = EchoServer("echo")
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture(scope="module")
def plane(echo) -> Iterator[Running]:
    closer = RawServer(answer_then_close)
    ws = RawServer(websocket_echo)
    other = EchoServer("other")
    with running_plane(
        ingresses=[
            simple_ingress(
                "proxy",
                {
                    (host, path): service
                    for host in ("proxy.test", "tls.test")
                    for path, service in (
                        ("/", "echo"), ("/closer", "closer"), ("/ws", "ws"), ("/pair", "pair")
                    )
                },
            )
        ],
        backends={
            "echo": (echo.port,),
            "closer": (closer.port,),
            "ws": (ws.port,),
            "pair": (echo.port, other.port),
        },
        tls_hosts=("tls.test",),
    ) as running:
        yield running
    closer.close()
    ws.close()
    other.shutdown()
    other.server_close()


# --- keep-alive and balancing ----------------------------------------------------------------


def test_backend_connection_is_kept_alive_and_shared_by_later_clients(plane):
    ports = set()
    for _ in range(3):
        conn = plane.http()
        ports.add(echoed(conn, "/a", headers={"Host": "proxy.test"})["peer_port"])
        conn.close()
    assert len(ports) == 1


def test_requests_alternate_over_the_ready_endpoints(plane):
    conn = plane.http()
    seen = [echoed(conn, "/pair", headers={"Host": "proxy.test"})["backend"] for _ in range(4)]
    conn.close()
    assert sorted(seen) == ["echo", "echo", "other", "other"]


def test_backend_that_closes_after_each_response_still_serves_every_request(plane):
    conn = plane.http()
    for _ in range(5):
        conn.request("GET", "/closer", headers={"Host": "proxy.test"})
        response = conn.getresponse()
        assert (response.status, response.read()) == (200, b"ok")
    conn.close()


def test_head_response_leaves_both_connections_usable(plane):
    conn = plane.http()
    conn.request("HEAD", "/a", headers={"Host": "proxy.test"})
    response = conn.getresponse()
    assert response.status == 200
    assert response.read() == b""
    assert echoed(conn, "/b", headers={"Host": "proxy.test"})["path"] == "/b"
    conn.close()


# --- streaming ---------------------------------------------------------------------------------


def rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRss:
    """Samples this process's resident memory until stopped; `growth` is peak minus start."""

    def __init__(self) -> None:
        self.start = rss()
        self.peak = self.start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, rss())

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak - self.start


def test_100_mib_upload_and_download_stream_through_with_flat_memory(plane):
    block = os.urandom(MiB)
    digest = hashlib.sha256()
    for _ in range(100):
        digest.update(block)
    conn = plane.https("tls.test")
    sampler = PeakRss()
    result = echoed(
        conn,
        "/upload",
        method="PUT",
        body=(block for _ in range(100)),
        headers={"Content-Length": str(100 * MiB)},
    )
    conn.request("GET", f"/bytes/{100 * MiB}")
    response = conn.getresponse()
    received = 0
    while piece := response.read(MiB):
        received += len(piece)
    growth = sampler.stop()
    conn.close()
    assert (result["body_length"], result["body_sha256"]) == (100 * MiB, digest.hexdigest())
    assert received == 100 * MiB
    assert growth < 40 * MiB, f"resident memory grew by {growth / MiB:.0f} MiB"


def test_a_slow_client_does_not_hold_up_others(plane):
    stalled_head = socket.create_connection(("127.0.0.1", plane.plane.http_port), timeout=5)
    stalled_head.sendall(b"GET / HTTP/1.1\r\nHost: proxy.t")
    not_reading = socket.create_connection(("127.0.0.1", plane.plane.http_port), timeout=5)
    not_reading.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    not_reading.sendall(f"GET /bytes/{50 * MiB} HTTP/1.1\r\nHost: proxy.test\r\n\r\n".encode())
    try:
        conn = plane.http()
        for _ in range(3):
            assert echoed(conn, "/other", headers={"Host": "proxy.test"})["backend"] == "echo"
        conn.close()
    finally:
        stalled_head.close()
        not_reading.close()


def test_backend_connection_paused_for_a_slow_client_serves_the_next_request(plane):
    with socket.create_connection(("127.0.0.1", plane.plane.http_port), timeout=5) as slow:
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        slow.sendall(f"GET /bytes/{32 * MiB} HTTP/1.1\r\nHost: proxy.test\r\n\r\n".encode())
        received = 0
        while received < 32 * MiB:
            time.sleep(0.0005)  # slower than the backend: the proxy's write buffer stays full
            received += len(slow.recv(65536))
    for _ in range(3):  # the pooled connection it used must read again
        conn = plane.http()
        assert echoed(conn, "/after", headers={"Host": "proxy.test"})["backend"] == "echo"
        conn.close()


# --- WebSocket ---------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["ws", "wss"])
def test_websocket_upgrade_is_passed_through_and_echoes(plane, scheme):
    port = plane.plane.http_port if scheme == "ws" else plane.plane.https_port
    host = "proxy.test" if scheme == "ws" else "tls.test"
    sslopt = {"context": plane.ca.client_context(), "server_hostname": host}
    ws = websocket.create_connection(
        f"{scheme}://127.0.0.1:{port}/ws", host=host, sslopt=sslopt, timeout=5
    )
    try:
        ws.send("hello")
        assert ws.recv() == "hello"
        big = os.urandom(70_000)
        ws.send_binary(big)
        assert ws.recv() == big
    finally:
        ws.close()


def test_upgrade_refused_by_the_backend_is_an_ordinary_response(plane):
    with socket.create_connection(("127.0.0.1", plane.plane.http_port), timeout=5) as sock:
        sock.sendall(
            b"GET /plain HTTP/1.1\r\nHost: proxy.test\r\nConnection: Upgrade\r\n"
            b"Upgrade: websocket\r\n\r\n"
        )
        received = read_until_closed(sock)
    assert received.startswith(b"HTTP/1.1 200 ")
    body = received.split(b"\r\n\r\n", 1)[1]
    headers = json.loads(body)["headers"]
    assert headers["upgrade"] == "websocket"  # forwarded: the backend chose not to upgrade
    assert b"connection: close" in received.lower()


# --- request smuggling and limits ------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"POST / HTTP/1.1\r\nHost: proxy.test\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"
         b"hello!", 400),
        (b"POST / HTTP/1.1\r\nHost: proxy.test\r\nTransfer-Encoding: chunked\r\n"
         b"Content-Length: 3\r\n\r\n0\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: proxy.test\r\nContent-Length : 5\r\n\r\nhello", 400),
        (b"POST / HTTP/1.1\r\nHost: proxy.test\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
         b"0\r\n\r\n", 501),
        (b"POST / HTTP/1.1\r\nHost: proxy.test\r\nTransfer-Encoding: chunked\r\n\r\n"
         b"zz\r\nhello\r\n0\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: proxy.test\r\n\x00Bad: header\r\n\r\n", 400),
    ],
    ids=["two-lengths", "chunked-and-length", "space-before-colon", "unknown-coding",
         "bad-chunk-size", "bad-header-name"],
)
def test_ambiguous_or_malformed_framing_is_refused(plane, request_bytes, status):
    with socket.create_connection(("127.0.0.1", plane.plane.http_port), timeout=5) as sock:
        sock.sendall(request_bytes)
        received = read_until_closed(sock)
    assert received.startswith(b"HTTP/1.1 %d " % status)
    assert received.count(b"HTTP/1.1 ") == 1  # nothing smuggled behind it was answered


def test_idle_client_is_disconnected_after_the_client_timeout(echo):
    with running_plane(
        ingresses=[simple_ingress("idle", {("idle.test", "/"): "echo"})],
        backends={"echo": (echo.port,)},
        client_timeout=0.2,
    ) as running, socket.create_connection(
        ("127.0.0.1", running.plane.http_port), timeout=5
    ) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: idle.test\r\n\r\n")
        # The socket's own 5 s timeout would raise here if we did not close first.
        received = read_until_closed(sock)
        assert received.startswith(b"HTTP/1.1 200 ")
