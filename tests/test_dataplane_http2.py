"""HTTP/2 over TLS (ALPN h2): streams routed and proxied to HTTP/1.1 backends.

The client is the h2 library's own client side over a real TLS socket, so
framing, HPACK and flow control are exercised for real on both ends.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import ssl
from collections.abc import Iterator
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import pytest

from tests.test_dataplane import EchoServer
from tests.test_dataplane_proxy import Running, running_plane, simple_ingress

MiB = 1024 * 1024


class H2Client:
    """A blocking HTTP/2 client: send requests on streams, then collect their responses."""

    def __init__(self, running: Running, host: str,
                 context: ssl.SSLContext | None = None) -> None:
        port = running.plane.https_port
        assert port is not None
        context = context or running.ca.client_context()
        context.set_alpn_protocols(["h2", "http/1.1"])
        raw = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.sock = context.wrap_socket(raw, server_hostname=host)
        self.alpn = self.sock.selected_alpn_protocol()
        self.host = host
        self.conn = h2.connection.H2Connection(
            config=h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        self.conn.initiate_connection()
        self.sock.sendall(self.conn.data_to_send())
        self.responses: dict[int, dict[str, Any]] = {}
        self.terminated = False

    def request(
        self, method: str, path: str, *, body: bytes | None = None, host: str | None = None,
        headers: tuple[tuple[str, str], ...] = (),
    ) -> int:
        stream_id = self.conn.get_next_available_stream_id()
        self.conn.send_headers(
            stream_id,
            [(":method", method), (":path", path), (":scheme", "https"),
             (":authority", host or self.host), *headers],
            end_stream=body is None,
        )
        self.responses[stream_id] = {"status": None, "headers": {}, "body": b"", "done": False}
        self.sock.sendall(self.conn.data_to_send())
        if body is not None:
            view = memoryview(body)
            while view:
                window = min(self.conn.local_flow_control_window(stream_id),
                             self.conn.max_outbound_frame_size)
                if window <= 0:
                    self._receive()
                    continue
                self.conn.send_data(stream_id, bytes(view[:window]))
                view = view[window:]
                self.sock.sendall(self.conn.data_to_send())
            self.conn.end_stream(stream_id)
            self.sock.sendall(self.conn.data_to_send())
        return stream_id

    def wait(self, *stream_ids: int) -> list[dict[str, Any]]:
        while not all(self.responses[s]["done"] for s in stream_ids):
            self._receive()
        return [self.responses[s] for s in stream_ids]

    def _receive(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("server closed the connection")
        for event in self.conn.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived):
                found = self.responses[event.stream_id]
                headers = dict(event.headers)
                found["status"] = int(headers[b":status"])
                found["headers"] = headers
            elif isinstance(event, h2.events.DataReceived):
                self.responses[event.stream_id]["body"] += event.data
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded | h2.events.StreamReset):
                self.responses[event.stream_id]["done"] = True
            elif isinstance(event, h2.events.ConnectionTerminated):
                self.terminated = True
        self.sock.sendall(self.conn.data_to_send())

    def close(self) -> None:
        with contextlib.suppress(OSError):  # the server may have closed first
            self.conn.close_connection()
            self.sock.sendall(self.conn.data_to_send())
        self.sock.close()


@pytest.fixture(scope="module")
def plane() -> Iterator[Running]:
    backends = {name: EchoServer(name) for name in ("one", "two")}
    with running_plane(
        ingresses=[simple_ingress("h2", {("h2.test", "/"): "one", ("h2.test", "/two"): "two",
                                         ("h2.test", "/down"): "down"})],
        backends={"one": (backends["one"].port,), "two": (backends["two"].port,), "down": ()},
        tls_hosts=("h2.test",),
    ) as running:
        yield running
    for backend in backends.values():
        backend.shutdown()
        backend.server_close()


@pytest.fixture
def client(plane) -> Iterator[H2Client]:
    connection = H2Client(plane, "h2.test")
    yield connection
    connection.close()


def test_alpn_offers_h2_and_the_request_is_proxied_with_forwarding_headers(client, plane):
    assert client.alpn == "h2"
    (response,) = client.wait(client.request("GET", "/a?b=c", headers=(
        ("cookie", "a=1"), ("cookie", "b=2"), ("x-real-ip", "10.9.9.9"),
        ("expect", "100-continue"))))
    assert response["status"] == 200
    echoed = json.loads(response["body"])
    assert echoed["backend"] == "one"
    assert echoed["path"] == "/a?b=c"
    headers = echoed["headers"]
    assert headers["host"] == "h2.test"
    assert headers["x-forwarded-proto"] == "https"
    assert headers["x-forwarded-for"] == "127.0.0.1"
    assert headers["x-real-ip"] == "127.0.0.1"  # the client's own is replaced
    assert "expect" not in headers  # answered by the data plane, as on HTTP/1.1
    assert headers["cookie"] == "a=1; b=2"  # HTTP/2 cookie crumbs joined for HTTP/1.1


def test_concurrent_streams_on_one_connection_reach_their_own_backends(client):
    streams = {client.request("GET", f"/two/{i}" if i % 2 else f"/{i}"): i for i in range(10)}
    for stream_id, response in zip(streams, client.wait(*streams), strict=True):
        i = streams[stream_id]
        echoed = json.loads(response["body"])
        assert (echoed["backend"], echoed["path"]) == (
            ("two", f"/two/{i}") if i % 2 else ("one", f"/{i}")
        )


def test_large_bodies_flow_both_ways_within_flow_control_windows(client):
    body = os.urandom(MiB)
    upload = client.request("POST", "/upload", body=body)
    download = client.request("GET", f"/bytes/{2 * MiB}")
    uploaded, downloaded = client.wait(upload, download)
    echoed = json.loads(uploaded["body"])
    assert (echoed["body_length"], echoed["body_sha256"]) == (
        len(body), hashlib.sha256(body).hexdigest()
    )
    assert downloaded["status"] == 200
    assert len(downloaded["body"]) == 2 * MiB


@pytest.mark.parametrize(("host", "path", "status"), [("other.test", "/", 404),
                                                      ("h2.test", "/down", 503)])
def test_requests_without_a_ready_backend_are_answered_by_the_proxy(client, host, path, status):
    (response,) = client.wait(client.request("GET", path, host=host))
    assert response["status"] == status
    assert response["body"].startswith(b"Not Found" if status == 404 else b"Service")


def test_header_list_over_the_limit_ends_the_connection(client):
    stream_id = client.request("GET", "/", headers=(("x-filler", "x" * 70_000),))
    # A GOAWAY or a plain close; an answer instead would leave the loop waiting
    # until the socket's timeout fails the test.
    with contextlib.suppress(ConnectionError):
        while not client.terminated:
            client._receive()
    assert client.responses[stream_id]["status"] is None


def test_http11_only_clients_still_get_http11(plane):
    conn = plane.https("h2.test")
    conn.request("GET", "/")
    response = conn.getresponse()
    assert json.loads(response.read())["backend"] == "one"
    assert conn.sock.selected_alpn_protocol() == "http/1.1"
    conn.close()


class CountingEchoServer(EchoServer):
    """An echo backend that counts the connections the data plane opened to it."""

    def __init__(self, name: str) -> None:
        self.connections = 0
        super().__init__(name)

    def process_request(self, request: Any, client_address: Any) -> None:
        self.connections += 1
        super().process_request(request, client_address)


def test_rapid_reset_reaches_no_backend_and_ends_the_connection():
    backend = CountingEchoServer("counted")
    with running_plane(
        ingresses=[simple_ingress("reset", {("reset.test", "/"): "counted"})],
        backends={"counted": (backend.port,)},
        tls_hosts=("reset.test",),
    ) as running:
        attacker = H2Client(running, "reset.test")
        (first,) = attacker.wait(attacker.request("GET", "/"))
        assert first["status"] == 200
        before = backend.connections
        # CVE-2023-44487: open a stream and cancel it at once, a thousand times; the data
        # plane lets 200 through, then sends GOAWAY (ENHANCE_YOUR_CALM) and closes.
        for _ in range(1000):
            stream_id = attacker.conn.get_next_available_stream_id()
            attacker.conn.send_headers(
                stream_id,
                [(":method", "GET"), (":path", "/"), (":scheme", "https"),
                 (":authority", "reset.test")],
                end_stream=True,
            )
            attacker.conn.reset_stream(stream_id)
        with contextlib.suppress(OSError):
            attacker.sock.sendall(attacker.conn.data_to_send())
        error_code = None
        with contextlib.suppress(OSError):
            while data := attacker.sock.recv(65536):
                for event in attacker.conn.receive_data(data):
                    if isinstance(event, h2.events.ConnectionTerminated):
                        error_code = event.error_code
        attacker.sock.close()
        assert error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
        # The cancelled streams did not churn the backend's connections: those opened for
        # them went back to the pool unused.
        assert backend.connections - before < 20
        other = H2Client(running, "reset.test")
        (answer,) = other.wait(other.request("GET", "/"))
        assert answer["status"] == 200
        other.close()
    backend.shutdown()
    backend.server_close()
