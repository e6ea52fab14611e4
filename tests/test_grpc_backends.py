"""backend-protocol GRPC, GRPCS and H2C: HTTP/2 to the backend, gRPC calls relayed whole.

Real gRPC servers and clients (grpcio, a service defined without generated code:
bytes in, bytes out) talk through the data plane over TLS on loopback; an h2c
backend written with the h2 library's server side serves plain HTTP/2 for the
HTTP/1.1 and HTTP/2 clients, and misbehaves on request (GOAWAY). Connections
at a backend are counted from the kernel's table (/proc/net/tcp).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import queue
import socket
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc  # type: ignore[import-untyped]  # grpcio ships no stubs
import h2.config
import h2.connection
import h2.errors
import h2.events
import pytest

from certctl.dataplane import routing
from certctl.routes import ingress as ingress_routes
from certctl.routes import ingress_annotations
from certctl.routes import options as route_options
from tests.test_dataplane import closed_port
from tests.test_dataplane_http2 import H2Client
from tests.test_dataplane_proxy import RawServer, Running, running_plane, simple_ingress
from tests.testca import TestCA

NGINX = "nginx.ingress.kubernetes.io/"
CERTCTL = "certctl.io/"
SERVICE = "test.Echo"


# --- a gRPC service without generated code ----------------------------------------------


class Seen:
    """What the gRPC backend observed, for the tests to check."""

    def __init__(self) -> None:
        self.cancelled = threading.Event()
        self.metadata: list[dict[str, str]] = []


def echo_service(seen: Seen, *, delay: float = 0.0) -> grpc.GenericRpcHandler:
    def unary(request: bytes, context: grpc.ServicerContext) -> bytes:
        metadata = {k: str(v) for k, v in context.invocation_metadata()}
        seen.metadata.append(metadata)
        if delay:
            time.sleep(delay)
        context.set_trailing_metadata((("x-trailer", "yes"),))
        return b"echo:" + request

    def not_found(request: bytes, context: grpc.ServicerContext) -> bytes:
        context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")
        raise AssertionError("abort raises")

    def numbers(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        count, size = (int(part) for part in request.split(b":"))
        for index in range(count):
            yield index.to_bytes(4, "big") + b"x" * (size - 4)

    def total(requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        digest = hashlib.sha256()
        count = 0
        for message in requests:
            digest.update(message)
            count += 1
        return b"%d:%s" % (count, digest.hexdigest().encode())

    def shout(requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        for message in requests:
            yield message.upper()

    def paced(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        count, pause = request.split(b":")
        for index in range(int(count)):
            time.sleep(float(pause))
            yield b"%d" % index

    def ticks(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        context.add_callback(seen.cancelled.set)
        while context.is_active():
            yield b"tick"
            time.sleep(0.05)

    return grpc.method_handlers_generic_handler(SERVICE, {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "NotFound": grpc.unary_unary_rpc_method_handler(not_found),
        "Numbers": grpc.unary_stream_rpc_method_handler(numbers),
        "Total": grpc.stream_unary_rpc_method_handler(total),
        "Shout": grpc.stream_stream_rpc_method_handler(shout),
        "Ticks": grpc.unary_stream_rpc_method_handler(ticks),
        "Paced": grpc.unary_stream_rpc_method_handler(paced),
    })


class GrpcBackend:
    def __init__(self, *, tls: TestCA | None = None, max_streams: int = 0,
                 delay: float = 0.0) -> None:
        self.seen = Seen()
        options = [("grpc.max_concurrent_streams", max_streams)] if max_streams else []
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=160), options=options)
        self.server.add_generic_rpc_handlers((echo_service(self.seen, delay=delay),))
        if tls is None:
            self.port = self.server.add_insecure_port("127.0.0.1:0")
        else:
            issued = tls.issue("backend.test", ips=("127.0.0.1",))
            credentials = grpc.ssl_server_credentials([(issued.key_pem, issued.chain_pem)])
            self.port = self.server.add_secure_port("127.0.0.1:0", credentials)
        self.server.start()

    def stop(self) -> None:
        self.server.stop(grace=None)


def established_to(port: int) -> int:
    """TCP connections established to 127.0.0.1:`port`, server side (the kernel's count;
    gRPC's sockets are IPv6 ones with IPv4-mapped addresses)."""
    count = 0
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(name) as table:
            next(table)
            for line in table:
                fields = line.split()
                local, state = fields[1], fields[3]
                if state == "01" and local.endswith(f"0100007F:{port:04X}"):
                    count += 1
    return count


# --- an h2c backend: plain HTTP/2 with prior knowledge --------------------------------------


class H2cBackend:
    """Answers every request with JSON of its headers, body size and trailers, then
    trailers of its own (x-checksum); counts connections. `/refused-once`: the first such
    request gets a GOAWAY that spares no stream (the connection then closes); `/goaway`:
    a GOAWAY sparing the stream, which is then answered; `/refused-after-body/...`: the
    first request for each such path is reset with REFUSED_STREAM once its whole body was
    read, as grpc-core does when it still counts a finished stream; `/status/<code>`: that
    status."""

    def __init__(self) -> None:
        self.connections = 0
        self.refused = 0
        self.refused_after_body: dict[str, int] = {}  # path -> requests
        self._lock = threading.Lock()
        self._server = RawServer(self._serve)
        self.port = self._server.port

    def _serve(self, sock: socket.socket) -> None:
        with self._lock:
            self.connections += 1
        conn = h2.connection.H2Connection(
            config=h2.config.H2Configuration(client_side=False, header_encoding=None))
        conn.initiate_connection()
        requests: dict[int, dict[str, Any]] = {}
        sock.sendall(conn.data_to_send())
        while True:
            data = sock.recv(65536)
            if not data:
                return
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.RequestReceived):
                    requests[event.stream_id] = {
                        "headers": [[n.decode(), v.decode()] for n, v in event.headers],
                        "body": 0, "trailers": []}
                elif isinstance(event, h2.events.DataReceived):
                    requests[event.stream_id]["body"] += len(event.data)
                    conn.acknowledge_received_data(event.flow_controlled_length,
                                                   event.stream_id)
                elif isinstance(event, h2.events.TrailersReceived):
                    requests[event.stream_id]["trailers"] = [
                        [n.decode(), v.decode()] for n, v in event.headers]
                elif isinstance(event, h2.events.StreamEnded) and not self._answer(
                        sock, conn, event.stream_id, requests.pop(event.stream_id)):
                    return
            sock.sendall(conn.data_to_send())

    def _answer(self, sock: socket.socket, conn: h2.connection.H2Connection, stream_id: int,
                request: dict[str, Any]) -> bool:
        path = dict(request["headers"])[":path"]
        if path == "/refused-once":
            with self._lock:
                self.refused += 1
                first = self.refused == 1
            if first:
                # GOAWAY written by hand: h2 would close its side at once (so do we, after).
                sock.sendall(conn.data_to_send() + b"\x00\x00\x08\x07\x00\x00\x00\x00\x00"
                             + (stream_id - 2).to_bytes(4, "big") + b"\x00\x00\x00\x00")
                time.sleep(0.2)
                return False
        if path.startswith("/refused-after-body/"):
            with self._lock:
                seen = self.refused_after_body[path] = self.refused_after_body.get(path, 0) + 1
            if seen == 1:
                conn.reset_stream(stream_id, error_code=h2.errors.ErrorCodes.REFUSED_STREAM)
                return True
        if path == "/reset-midway":
            conn.send_headers(stream_id, [(b":status", b"200")])
            conn.send_data(stream_id, b"partial")
            conn.reset_stream(stream_id, error_code=h2.errors.ErrorCodes.CANCEL)
            return True
        if path == "/goaway":
            sock.sendall(conn.data_to_send() + b"\x00\x00\x08\x07\x00\x00\x00\x00\x00"
                         + stream_id.to_bytes(4, "big") + b"\x00\x00\x00\x00")
            time.sleep(0.2)  # the data plane has read the GOAWAY before the answer
        body = json.dumps(request).encode()
        status = path.removeprefix("/status/").encode() if path.startswith("/status/") else b"200"
        conn.send_headers(stream_id, [(b":status", status), (b"content-type", b"application/json")])
        conn.send_data(stream_id, body)
        conn.send_headers(stream_id, [(b"x-checksum", hashlib.sha256(body).hexdigest().encode())],
                          end_stream=True)
        if path == "/goaway":
            sock.sendall(conn.data_to_send())
            time.sleep(0.2)
            return False  # then closes, as a backend that drained would
        return True

    def close(self) -> None:
        self._server.close()


# --- the data plane in front of them --------------------------------------------------------


@pytest.fixture(scope="module")
def backend_ca() -> TestCA:
    return TestCA(common_name="backend CA")


@pytest.fixture(scope="module")
def backends(backend_ca) -> Iterator[dict[str, Any]]:
    found: dict[str, Any] = {
        "grpc": GrpcBackend(),
        "many": GrpcBackend(max_streams=50, delay=0.3),
        "grpcs": GrpcBackend(tls=backend_ca),
        "h2c": H2cBackend(),
    }
    yield found
    for backend in found.values():
        if isinstance(backend, GrpcBackend):
            backend.stop()
        else:
            backend.close()


HOSTS = {"grpc.test": ("grpc", "GRPC"), "many.test": ("many", "grpc"),
         "grpcs.test": ("grpcs", "GRPCS"), "h2c.test": ("h2c", "H2C"),
         "down.test": ("down", "GRPC"), "mixed.test": ("mixed", "GRPC"),
         "slow.test": ("grpc", "GRPC"), "denied.test": ("grpc", "GRPC")}
EXTRA = {"slow.test": {NGINX + "proxy-read-timeout": "1"},
         "denied.test": {NGINX + "whitelist-source-range": "10.0.0.0/8"}}


@pytest.fixture(scope="module")
def plane(backends) -> Iterator[Running]:
    ports: dict[str, tuple[int, ...]] = {name: (backend.port,)
                                         for name, backend in backends.items()}
    ports["down"] = (closed_port(),)
    ports["mixed"] = (closed_port(), backends["grpc"].port)  # the first endpoint is down
    ingresses = [
        simple_ingress(host.split(".")[0], {(host, "/"): service},
                       # the certctl.io key wins over ingress-nginx's
                       annotations={NGINX + "backend-protocol": "HTTP",
                                    CERTCTL + "backend-protocol": protocol,
                                    **EXTRA.get(host, {})})
        for host, (service, protocol) in HOSTS.items()
    ]
    with running_plane(ingresses=ingresses, backends=ports, tls_hosts=tuple(HOSTS)) as running:
        yield running


@contextlib.contextmanager
def channel(plane: Running, host: str) -> Iterator[grpc.Channel]:
    port = plane.plane.https_port
    credentials = grpc.ssl_channel_credentials(root_certificates=plane.ca.pem)
    with grpc.secure_channel(f"127.0.0.1:{port}", credentials, options=[
        ("grpc.ssl_target_name_override", host), ("grpc.default_authority", host),
    ]) as opened:
        yield opened


def method(opened: grpc.Channel, kind: str, name: str) -> Any:
    return getattr(opened, kind)(f"/{SERVICE}/{name}")


# --- gRPC calls ---------------------------------------------------------------------------------


def test_unary_call_gets_its_answer_and_trailing_metadata(plane, backends):
    with channel(plane, "grpc.test") as opened:
        answer, call = method(opened, "unary_unary", "Unary").with_call(b"hello", timeout=10)
    assert answer == b"echo:hello"
    assert call.code() == grpc.StatusCode.OK
    assert ("x-trailer", "yes") in call.trailing_metadata()
    seen = backends["grpc"].seen.metadata[-1]
    assert seen["x-forwarded-for"] == "127.0.0.1"
    assert seen["x-forwarded-proto"] == "https"
    requests = plane.plane.metrics.counts.requests
    assert requests.get(("grpc.test", 200), 0) >= 1


def test_error_status_and_message_reach_the_client(plane):
    with channel(plane, "grpc.test") as opened, pytest.raises(grpc.RpcError) as raised:
        method(opened, "unary_unary", "NotFound")(b"x", timeout=10)
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    assert raised.value.details() == "no such thing"


@pytest.mark.parametrize(("count", "size"), [(1000, 100), (3, 3 * 1024 * 1024)],
                         ids=["many-small", "large"])
def test_server_streaming_relays_every_message(plane, count, size):
    with channel(plane, "grpc.test") as opened:
        call = method(opened, "unary_stream", "Numbers")(b"%d:%d" % (count, size), timeout=30)
        messages = list(call)
        assert call.code() == grpc.StatusCode.OK
    assert [int.from_bytes(m[:4], "big") for m in messages] == list(range(count))
    assert all(len(m) == size for m in messages)


def test_client_streaming_sends_more_than_the_windows_hold(plane):
    # 8 MiB in 128 messages: past the client's and the backend's stream windows, so both
    # legs' flow control (and the data plane's pausing) take part.
    messages = [bytes([i]) * 65536 for i in range(128)]
    with channel(plane, "grpc.test") as opened:
        answer = method(opened, "stream_unary", "Total")(iter(messages), timeout=30)
    assert answer == b"128:" + hashlib.sha256(b"".join(messages)).hexdigest().encode()


def test_bidi_streaming_answers_each_message_before_the_next_is_sent(plane):
    # Ping-pong: the next message is only sent once the last one's answer came back, which
    # a proxy that waited for the end of either stream would never deliver.
    outgoing: queue.Queue[bytes | None] = queue.Queue()

    def requests() -> Iterator[bytes]:
        while (message := outgoing.get()) is not None:
            yield message

    with channel(plane, "grpc.test") as opened:
        call = method(opened, "stream_stream", "Shout")(requests(), timeout=20)
        answers = []
        for index in range(50):
            outgoing.put(b"ping %d" % index)
            answers.append(next(call))
        outgoing.put(None)
        assert list(call) == []
        assert call.code() == grpc.StatusCode.OK
    assert answers == [b"PING %d" % index for index in range(50)]


def test_concurrent_calls_share_few_upstream_connections(plane, backends):
    backend = backends["many"]  # allows 50 streams per connection; each call takes 0.3 s
    with channel(plane, "many.test") as opened:
        unary = method(opened, "unary_unary", "Unary")
        # 300 at once: a stream slot freed by a finished call is taken again at once, and
        # grpc-core, still counting the old stream, may refuse the new one (REFUSED_STREAM).
        # Such a call is sent again (with its body) on a connection with room: not onto
        # the one that refused until one of its streams ends (upstream_h2.Connection).
        calls = [unary.future(b"%d" % index, timeout=30) for index in range(300)]
        answers = [call.result() for call in calls]
    assert answers == [b"echo:%d" % index for index in range(300)]
    connections = established_to(backend.port)
    # More than one (the backend allows 50 at once), and far fewer than the calls:
    # streams were multiplexed.
    assert 2 <= connections <= 12, connections


def test_grpcs_speaks_tls_with_alpn_h2_to_the_backend(plane, backends):
    with channel(plane, "grpcs.test") as opened:
        answer, call = method(opened, "unary_unary", "Unary").with_call(b"secure", timeout=10)
    assert answer == b"echo:secure"
    assert ("x-trailer", "yes") in call.trailing_metadata()
    assert backends["grpcs"].seen.metadata[-1]["x-forwarded-proto"] == "https"


def test_backend_down_is_unavailable_without_hanging(plane):
    started = time.monotonic()
    with channel(plane, "down.test") as opened, pytest.raises(grpc.RpcError) as raised:
        method(opened, "unary_unary", "Unary")(b"x", timeout=20)
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE  # the data plane's 502
    assert time.monotonic() - started < 10


def test_a_cancelled_call_resets_the_backend_stream(plane, backends):
    seen = backends["grpc"].seen
    seen.cancelled.clear()
    with channel(plane, "grpc.test") as opened:
        call = method(opened, "unary_stream", "Ticks")(b"", timeout=30)
        assert next(call) == b"tick"
        call.cancel()
        assert seen.cancelled.wait(10), "the backend's stream was not reset"


def test_an_endpoint_that_refuses_is_skipped_before_anything_was_sent(plane):
    with channel(plane, "mixed.test") as opened:
        unary = method(opened, "unary_unary", "Unary")
        # Round-robin starts at either endpoint: over four calls, some at the one down.
        assert [unary(b"%d" % index, timeout=10) for index in range(4)] == [
            b"echo:%d" % index for index in range(4)]


def test_access_rules_apply_to_grpc_routes(plane, backends):
    calls = len(backends["grpc"].seen.metadata)
    client = H2Client(plane, "denied.test")
    try:
        (response,) = client.wait(client.request(
            "POST", f"/{SERVICE}/Unary", body=b"\x00\x00\x00\x00\x01x",
            headers=(("content-type", "application/grpc"), ("te", "trailers"))))
    finally:
        client.close()
    # Refused as gRPC servers refuse a call (trailers-only; tests/test_grpc_refusals.py).
    assert (response["status"], response["headers"][b"grpc-status"]) == (200, b"7")
    with channel(plane, "denied.test") as opened, pytest.raises(grpc.RpcError) as raised:
        method(opened, "unary_unary", "Unary")(b"x", timeout=10)
    assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert len(backends["grpc"].seen.metadata) == calls  # never reached


def test_read_timeout_is_between_reads_for_a_long_stream(plane):
    # proxy-read-timeout 1 s: a stream of 2.4 s whose messages come every 0.4 s lives on ...
    with channel(plane, "slow.test") as opened:
        assert list(method(opened, "unary_stream", "Paced")(b"6:0.4", timeout=20)) == [
            b"%d" % index for index in range(6)]
        # ... and a backend silent for longer than that is cut (after what it sent).
        call = method(opened, "unary_stream", "Paced")(b"2:2.5", timeout=20)
        with pytest.raises(grpc.RpcError) as raised:
            list(call)
    assert raised.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED,
                                   grpc.StatusCode.INTERNAL)


# --- H2C: plain HTTP/2 backends, HTTP/1.1 and HTTP/2 clients ---------------------------------


def post_with_trailers(client: H2Client, path: str, *, body: bytes) -> int:
    """Send a POST to h2c.test with `te: trailers`, `body` and a trailer field
    (x-request-checksum: abc); its stream id."""
    stream_id = client.conn.get_next_available_stream_id()
    client.conn.send_headers(stream_id, [
        (":method", "POST"), (":path", path), (":scheme", "https"),
        (":authority", "h2c.test"), ("te", "trailers"), ("x-custom", "1")])
    client.conn.send_data(stream_id, body)
    client.conn.send_headers(stream_id, [("x-request-checksum", "abc")], end_stream=True)
    client.responses[stream_id] = {"status": None, "headers": {}, "body": b"", "done": False}
    client.sock.sendall(client.conn.data_to_send())
    return stream_id


def test_h2c_backend_for_an_http2_client_gets_trailers_both_ways(plane):
    client = H2Client(plane, "h2c.test")
    try:
        stream_id = post_with_trailers(client, "/upload", body=b"a" * 1000)
        trailers: list[Any] = []
        decode = client.conn.receive_data

        def record(data: Any) -> list[h2.events.Event]:
            events = decode(data)
            trailers.extend(e.headers for e in events
                            if isinstance(e, h2.events.TrailersReceived))
            return events

        client.conn.receive_data = record  # type: ignore[method-assign]
        (response,) = client.wait(stream_id)
    finally:
        client.close()
    assert response["status"] == 200
    assert response["headers"][b"server"] == b"certctl"  # the backend sent none
    seen = json.loads(response["body"])
    headers = dict(seen["headers"])
    assert headers["te"] == "trailers"
    assert headers["x-custom"] == "1"
    assert headers["x-forwarded-for"] == "127.0.0.1"
    assert headers[":authority"] == "h2c.test"
    assert headers[":scheme"] == "http"
    assert seen["body"] == 1000
    assert seen["trailers"] == [["x-request-checksum", "abc"]]
    assert trailers == [[(b"x-checksum", hashlib.sha256(response["body"]).hexdigest().encode())]]


def http11_exchange(plane: Running, host: str, request: bytes) -> bytes:
    """All an HTTP/1.1 client over TLS receives for `request` (which asks to close)."""
    port = plane.plane.https_port
    assert port is not None
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    with plane.ca.client_context().wrap_socket(raw, server_hostname=host) as sock:
        sock.sendall(request)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    return received


def test_h2c_backend_for_an_http11_client_answers_chunked_with_trailers(plane):
    received = http11_exchange(
        plane, "h2c.test", b"POST /form HTTP/1.1\r\nHost: h2c.test\r\nContent-Length: 5\r\n"
        b"TE: trailers\r\nConnection: close\r\n\r\nhello")
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"transfer-encoding: chunked" in head.lower()
    size, _, rest = body.partition(b"\r\n")
    payload = rest[: int(size, 16)]
    seen = json.loads(payload)
    headers = dict(seen["headers"])
    assert seen["body"] == 5
    assert headers["content-length"] == "5"
    assert headers["x-forwarded-proto"] == "https"
    assert "te" not in headers  # TE is hop-by-hop on HTTP/1.1: not forwarded from there
    checksum = hashlib.sha256(payload).hexdigest().encode()
    assert rest[int(size, 16):] == b"\r\n0\r\nx-checksum: " + checksum + b"\r\n\r\n"


@pytest.mark.parametrize(("status", "reason"), [
    (200, b"OK"), (413, b"Content Too Large"), (414, b"URI Too Long"),
    (422, b"Unprocessable Content"), (429, b"Too Many Requests"),
])
def test_an_http2_backends_status_gets_rfc_9110s_reason_phrase(plane, status, reason):
    """HTTP/2 has no reason phrase: an HTTP/1.1 client gets RFC 9110's (not Python 3.11's
    older ones for 413, 414 and 422)."""
    received = http11_exchange(
        plane, "h2c.test",
        b"GET /status/%d HTTP/1.1\r\nHost: h2c.test\r\nConnection: close\r\n\r\n" % status)
    assert received.startswith(b"HTTP/1.1 %d %s\r\n" % (status, reason))


def test_a_backend_reset_after_the_head_resets_the_client_stream(plane):
    client = H2Client(plane, "h2c.test")
    resets: list[Any] = []
    decode = client.conn.receive_data

    def record(data: Any) -> list[h2.events.Event]:
        events = decode(data)
        resets.extend(e for e in events if isinstance(e, h2.events.StreamReset))
        return events

    client.conn.receive_data = record  # type: ignore[method-assign]
    try:
        (response,) = client.wait(client.request("GET", "/reset-midway"))
    finally:
        client.close()
    assert response["status"] == 200
    (reset,) = resets
    assert reset.error_code == h2.errors.ErrorCodes.CANCEL  # the backend's code, passed on


def test_backend_goaway_lets_its_stream_finish_and_new_ones_use_a_new_connection(plane,
                                                                                  backends):
    backend = backends["h2c"]
    with contextlib.closing(plane.https("h2c.test")) as conn:
        conn.request("GET", "/warm")
        assert conn.getresponse().read()
        before = backend.connections
        conn.request("GET", "/goaway")
        response = conn.getresponse()
        assert response.status == 200
        assert dict(json.loads(response.read())["headers"])[":path"] == "/goaway"
        conn.request("GET", "/after")
        response = conn.getresponse()
        assert response.status == 200
        assert dict(json.loads(response.read())["headers"])[":path"] == "/after"
    assert backend.connections == before + 1


def test_a_stream_the_backend_did_not_process_is_sent_again(plane, backends):
    backend = backends["h2c"]
    with contextlib.closing(plane.https("h2c.test")) as conn:
        conn.request("GET", "/refused-once")
        response = conn.getresponse()
        assert response.status == 200
        assert dict(json.loads(response.read())["headers"])[":path"] == "/refused-once"
    assert backend.refused == 2


def test_a_refused_stream_is_sent_again_with_its_body_for_an_http11_client(plane, backends):
    body = b"x" * 40_000  # more than one DATA frame, less than what is kept to send again
    with contextlib.closing(plane.https("h2c.test")) as conn:
        conn.request("POST", "/refused-after-body/http11", body=body)
        response = conn.getresponse()
        assert response.status == 200
        assert json.loads(response.read())["body"] == len(body)
    assert backends["h2c"].refused_after_body["/refused-after-body/http11"] == 2


def test_a_refused_stream_is_sent_again_with_its_body_and_trailers_for_an_http2_client(
        plane, backends):
    client = H2Client(plane, "h2c.test")
    try:
        stream_id = post_with_trailers(client, "/refused-after-body/http2", body=b"y" * 1000)
        (response,) = client.wait(stream_id)
    finally:
        client.close()
    assert response["status"] == 200
    seen = json.loads(response["body"])
    assert seen["body"] == 1000
    assert seen["trailers"] == [["x-request-checksum", "abc"]]
    assert backends["h2c"].refused_after_body["/refused-after-body/http2"] == 2


# --- the annotation -----------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "tls", "h2"), [
    ("GRPC", False, True), ("grpcs", True, True), ("H2C", False, True), ("HTTPS", True, False),
])
def test_backend_protocol_values(value, tls, h2):
    found, problems = ingress_annotations.route_options([(NGINX + "backend-protocol", value)])
    assert problems == []
    assert (found.backend_tls, found.backend_h2) == (tls, h2)


@pytest.mark.parametrize("value", ["FCGI", "AJP", "HTTP3"])
def test_unsupported_backend_protocol_is_a_bad_annotation_and_keeps_http(value):
    ingress = simple_ingress("bad", {("bad.test", "/"): "main"},
                             annotations={NGINX + "backend-protocol": value})
    table = routing.RouteTable.build(
        routes=ingress_routes.compile_ingresses(
            ingresses=[ingress], ingress_classes=[],
            controller_name="certctl.io/ingress-controller", class_name=None),
        services=[], endpoint_slices=[])
    match = table.match(host="bad.test", path="/")
    assert match is not None
    assert match.options == route_options.DEFAULT_OPTIONS
    (problem,) = table.problems
    assert problem.reason == ingress_routes.BAD_ANNOTATION
    assert "backend-protocol" in problem.message and value in problem.message

