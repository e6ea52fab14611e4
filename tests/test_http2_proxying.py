"""HTTP/2 streams on the wire: how responses are framed and flushed, malformed requests
refused, and upstream connections kept for the next burst of streams.

The client is the h2 library's client side over a real TLS socket (tests/
test_dataplane_http2.py's H2Client); each test records the events it decodes,
so the frames the data plane sent can be checked, not only the responses.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import h2.errors
import h2.events
import pytest

from tests.test_dataplane_http2 import CountingEchoServer, H2Client
from tests.test_dataplane_proxy import Running, running_plane, simple_ingress

HOST = "frames.test"


class RecordingClient(H2Client):
    """An H2Client that keeps every event it decoded, in order."""

    def __init__(self, running: Running, host: str) -> None:
        super().__init__(running, host)
        self.events: list[Any] = []
        decode = self.conn.receive_data

        def record(data: Any) -> list[h2.events.Event]:
            events = decode(data)
            self.events += events
            return events

        self.conn.receive_data = record  # type: ignore[method-assign]

    def events_of(self, stream_id: int) -> list[Any]:
        return [e for e in self.events if getattr(e, "stream_id", None) == stream_id]


class BusyEchoServer(CountingEchoServer):
    """Counts connections, and takes a burst of them at once (socketserver's backlog is 5)."""

    request_queue_size = 512


@pytest.fixture(scope="module")
def backend() -> Iterator[BusyEchoServer]:
    server = BusyEchoServer("echo")
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def plane(backend: BusyEchoServer) -> Iterator[Running]:
    with running_plane(
        ingresses=[simple_ingress("frames", {(HOST, "/"): "echo"})],
        backends={"echo": (backend.port,)}, tls_hosts=(HOST,),
    ) as running:
        yield running


@pytest.fixture
def client(plane: Running) -> Iterator[RecordingClient]:
    connection = RecordingClient(plane, HOST)
    yield connection
    connection.close()


def test_a_head_response_goes_out_without_waiting_for_another_client_frame(client):
    # The response ends inside the upstream's header callback; it used to wait in h2's
    # buffer until the client sent something else (h2spec generic/4/2 timed out).
    (response,) = client.wait(client.request("HEAD", "/"))
    assert response["status"] == 200
    assert response["body"] == b""
    assert int(response["headers"][b"content-length"]) > 0


def test_a_small_response_is_one_headers_and_one_data_frame_that_ends_the_stream(client):
    stream_id = client.request("GET", "/small")
    (response,) = client.wait(stream_id)
    assert json.loads(response["body"])["path"] == "/small"
    data = [e for e in client.events_of(stream_id) if isinstance(e, h2.events.DataReceived)]
    assert len(data) == 1
    assert data[0].stream_ended is not None  # END_STREAM on the body, no empty DATA after it


def test_a_request_body_within_the_initial_window_needs_no_window_update(client):
    (first,) = client.wait(client.request("GET", "/"))  # the server's SETTINGS are in force
    assert first["status"] == 200
    seen = len(client.events)  # the connection window's initial increment among them
    body = b"x" * 60_000  # past half of RFC 9113's 65,535 default, which h2 would top up
    stream_id = client.request("POST", "/upload", body=body)
    (response,) = client.wait(stream_id)
    assert json.loads(response["body"])["body_length"] == len(body)
    updates = [e for e in client.events[seen:] if isinstance(e, h2.events.WindowUpdated)]
    assert updates == []


@pytest.mark.parametrize("headers", [
    [(":method", "GET"), (":path", "/"), (":scheme", "https"), (":authority", HOST),
     ("X-Upper", "1")],
    [(":method", "GET"), (":path", "/"), (":scheme", "https"), (":authority", HOST),
     ("connection", "keep-alive")],
    [(":method", "GET"), (":path", "/"), (":scheme", "https"), (":authority", HOST),
     ("te", "gzip")],
    [(":method", "GET"), (":scheme", "https"), ("accept", "*/*"), (":path", "/"),
     (":authority", HOST)],
    [(":method", "GET"), (":scheme", "https"), (":authority", HOST)],
    [(":method", "GET"), (":path", ""), (":scheme", "https"), (":authority", HOST)],
    [(":method", "GET"), (":path", "/"), (":path", "/"), (":scheme", "https"),
     (":authority", HOST)],
    [(":method", "GET"), (":path", "/"), (":scheme", "https"), (":authority", HOST),
     (":status", "200")],
    [(":method", "GET"), (":path", "/"), (":scheme", "https"), (":authority", HOST),
     ("x-padded", " value")],
    [(":method", "GET"), (":path", "/"), (":scheme", "https"), (":authority", HOST),
     ("x-split", "a\nb")],
    [(":method", "GET"), (":path", "/"), (":scheme", "https"), (":authority", HOST),
     ("host", "other.test")],
], ids=["uppercase-name", "connection", "te-gzip", "pseudo-after-regular", "no-path",
        "empty-path", "two-paths", "response-pseudo", "value-padded", "value-newline",
        "host-differs"])
def test_a_malformed_request_is_a_stream_error_and_the_connection_serves_on(
    client, backend, headers,
):
    # The client's own checks are off, so it sends what a broken or hostile one would.
    client.conn.config.validate_outbound_headers = False
    client.conn.config.normalize_outbound_headers = False
    before = backend.connections
    stream_id = client.conn.get_next_available_stream_id()
    client.conn.send_headers(stream_id, headers, end_stream=True)
    client.responses[stream_id] = {"status": None, "headers": {}, "body": b"", "done": False}
    client.sock.sendall(client.conn.data_to_send())
    (refused,) = client.wait(stream_id)
    assert refused["status"] is None
    (reset,) = [e for e in client.events_of(stream_id) if isinstance(e, h2.events.StreamReset)]
    assert reset.error_code == h2.errors.ErrorCodes.PROTOCOL_ERROR
    assert backend.connections == before  # nothing reached the backend
    (served,) = client.wait(client.request("GET", "/after"))
    assert served["status"] == 200


def test_a_burst_of_streams_reuses_the_upstream_connections_of_the_last_burst(plane, backend):
    # 100 streams in one write need 100 upstream connections at once; all of them are
    # kept for the next burst (the pool used to keep 64 and open the rest again, every
    # burst).
    client = H2Client(plane, HOST)
    try:
        opened = 0
        for burst in ("first", "second"):
            streams = []
            for i in range(100):
                stream_id = client.conn.get_next_available_stream_id()
                client.conn.send_headers(stream_id, [
                    (":method", "GET"), (":path", f"/{burst}/{i}"), (":scheme", "https"),
                    (":authority", HOST)], end_stream=True)
                client.responses[stream_id] = {"status": None, "headers": {}, "body": b"",
                                               "done": False}
                streams.append(stream_id)
            client.sock.sendall(client.conn.data_to_send())
            assert all(r["status"] == 200 for r in client.wait(*streams))
            if burst == "first":
                opened = backend.connections
        assert backend.connections == opened
    finally:
        client.close()
