"""The data plane end to end: real sockets, real TLS, real backends on loopback.

The DataPlane runs on an event loop in a background thread (once on the stdlib
loop, once on uvloop); backends are threaded `http.server`s that echo what
they received as JSON; clients are `http.client` and `ssl` sockets verifying
against a CA made for the test.
"""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import http.server
import json
import socket
import ssl
import threading
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import uvloop
from cryptography import x509

from certctl.api import resources
from certctl.dataplane import certstore, routing, server
from certctl.routes import ingress as ingress_routes
from tests.testca import Issued, TestCA


def secret(name: str) -> resources.ObjectKey:
    return resources.ObjectKey(kind="Secret", namespace="default", name=name)


# --- backends ------------------------------------------------------------------------


class EchoHandler(http.server.BaseHTTPRequestHandler):
    """Echoes the request as JSON; `/stream` answers chunked, `/eof` close-delimited,
    `/bytes/N` streams N bytes. Bodies are hashed as they arrive, never held whole."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # head and body go in two writes on a kept-alive connection
    server: EchoServer

    def do_GET(self) -> None:
        length, digest = self._read_body()
        if self.path.startswith("/bytes/"):
            self._send_bytes(int(self.path.removeprefix("/bytes/")))
            return
        payload = json.dumps(
            {
                "backend": self.server.name,
                "method": self.command,
                "path": self.path,
                "headers": {k.lower(): v for k, v in self.headers.items()},
                "body_length": length,
                "body_sha256": digest,
                "peer_port": self.client_address[1],
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        if self.path == "/stream":
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for start in range(0, len(payload), 7):
                piece = payload[start : start + 7]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\n\r\n")
        elif self.path == "/eof":
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(payload)
            self.close_connection = True
        else:
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)

    do_POST = do_GET
    do_PUT = do_GET
    do_HEAD = do_GET

    def _send_bytes(self, count: int) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(count))
        self.end_headers()
        block = b"x" * 65536
        while count > 0:
            self.wfile.write(block[:count])
            count -= len(block)

    def _read_body(self) -> tuple[int, str]:
        digest = hashlib.sha256()
        length = 0
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b""):
                        pass
                    return length, digest.hexdigest()
                self._hash(size, digest)
                length += size
                self.rfile.readline()
        length = int(self.headers.get("Content-Length", "0"))
        self._hash(length, digest)
        return length, digest.hexdigest()

    def _hash(self, count: int, digest: Any) -> None:
        while count > 0:
            piece = self.rfile.read(min(count, 65536))
            if not piece:
                raise ConnectionError("body cut short")
            digest.update(piece)
            count -= len(piece)

    def log_message(self, format: str, *args: object) -> None:
        pass


class EchoServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, name: str) -> None:
        super().__init__(("127.0.0.1", 0), EchoHandler)
        self.name = name
        self.port = self.server_address[1]
        threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True).start()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients that leave mid-response are part of the tests; stay quiet about them."""


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# --- the data plane under test ---------------------------------------------------------


class LoopThread:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.thread = threading.Thread(target=loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, None]) -> None:
        asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=10)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)
        self.loop.close()


@dataclass
class Env:
    plane: server.DataPlane
    ca: TestCA
    certificates: certstore.CertificateIndex
    challenges: dict[tuple[str, str], str]
    responder_calls: list[tuple[str, str]]
    issued: dict[str, Issued]

    def https(self, sni: str | None, *, verify: bool = True) -> http.client.HTTPConnection:
        """A connection to the HTTPS listener with this SNI; the Host header follows it."""
        context = self.ca.client_context()
        if not verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        raw = socket.create_connection(("127.0.0.1", self.https_port), timeout=5)
        conn = http.client.HTTPConnection(sni or "127.0.0.1", self.https_port, timeout=5)
        conn.sock = context.wrap_socket(raw, server_hostname=sni)
        return conn

    def http(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.plane.http_port, timeout=5)

    @property
    def https_port(self) -> int:
        port = self.plane.https_port
        assert port is not None
        return port

    def served_serial(self, sni: str | None) -> int:
        """The serial of the certificate the server presents, verified against the test CA."""
        with (
            socket.create_connection(("127.0.0.1", self.https_port), timeout=5) as raw,
            self.ca.client_context().wrap_socket(raw, server_hostname=sni) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
        assert der is not None
        return x509.load_der_x509_certificate(der).serial_number

    def unverified_subject(self, sni: str | None) -> str:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        with (
            socket.create_connection(("127.0.0.1", self.https_port), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname=sni) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
        assert der is not None
        return x509.load_der_x509_certificate(der).subject.rfc4514_string()


def endpoint_slices(name: str, *ports: int, ready: bool = True) -> list[resources.EndpointSlice]:
    return [
        resources.EndpointSlice(
            namespace="default",
            name=f"{name}-{i}",
            service_name=name,
            ports=(resources.EndpointPort(port=port, name="http"),),
            endpoints=(resources.Endpoint(addresses=("127.0.0.1",), ready=ready),),
        )
        for i, port in enumerate(ports)
    ]


def route(host: str | None, path: str, service_name: str) -> resources.IngressRule:
    return resources.IngressRule(
        host=host,
        paths=(
            resources.IngressPath(
                path=path,
                path_type="Prefix",
                backend=resources.ServiceBackend(name=service_name, port_name="http"),
            ),
        ),
    )


@pytest.fixture(scope="module")
def backends() -> Iterator[dict[str, EchoServer]]:
    servers = {name: EchoServer(name) for name in ("alpha", "beta")}
    yield servers
    for srv in servers.values():
        srv.shutdown()
        srv.server_close()


@pytest.fixture(scope="module")
def silent_port() -> Iterator[int]:
    """A port that accepts connections (kernel backlog) and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield sock.getsockname()[1]


LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}


@pytest.fixture(scope="module", params=sorted(LOOPS))
def env(request, backends, silent_port) -> Iterator[Env]:
    ca = TestCA()
    certificates = certstore.CertificateIndex()
    issued = {
        "exact": ca.issue("exact.test"),
        "wild": ca.issue("*.wild.test"),
    }
    certificates.set_certificate(
        source=secret("exact"), chain_pem=issued["exact"].chain_pem, key_pem=issued["exact"].key_pem
    )
    certificates.set_certificate(
        source=secret("wild"), chain_pem=issued["wild"].chain_pem, key_pem=issued["wild"].key_pem
    )
    challenges = {("plain.test", "tok_en-1"): "tok_en-1.thumbprint"}
    calls: list[tuple[str, str]] = []

    def responder(host: str, token: str) -> str | None:
        calls.append((host, token))
        return challenges.get((host, token))

    plane = server.DataPlane(
        http_address=("127.0.0.1", 0),
        https_address=("127.0.0.1", 0),
        certificates=certificates,
        challenge_responder=responder,
        connect_timeout=1.0,
        upstream_timeout=0.5,
    )
    alpha, beta = backends["alpha"].port, backends["beta"].port
    services = [
        resources.Service(
            namespace="default",
            name=name,
            ports=(resources.ServicePort(port=80, name="http", target_port="web"),),
        )
        for name in ("alpha", "beta", "down", "closed", "silent", "failover")
    ]
    slices = [
        *endpoint_slices("alpha", alpha),
        *endpoint_slices("beta", beta),
        *endpoint_slices("down", alpha, ready=False),
        *endpoint_slices("closed", closed_port()),
        *endpoint_slices("silent", silent_port),
        *endpoint_slices("failover", closed_port(), beta),
    ]
    ingress = resources.Ingress(
        namespace="default",
        name="web",
        rules=(
            route("exact.test", "/", "alpha"),
            route("exact.test", "/beta", "beta"),
            route("*.wild.test", "/", "beta"),
            route("plain.test", "/", "alpha"),
            route("plain.test", "/down", "down"),
            route("plain.test", "/closed", "closed"),
            route("plain.test", "/silent", "silent"),
            route("plain.test", "/failover", "failover"),
        ),
    )
    plane.set_routes(
        routing.RouteTable.build(
            routes=ingress_routes.compile_ingresses(
                ingresses=[ingress],
                ingress_classes=[],
                controller_name="certctl.io/ingress-controller",
                class_name=None,
            ),
            services=services,
            endpoint_slices=slices,
        )
    )
    loop = LoopThread(LOOPS[request.param]())
    loop.run(plane.start())
    yield Env(
        plane=plane,
        ca=ca,
        certificates=certificates,
        challenges=challenges,
        responder_calls=calls,
        issued=issued,
    )
    loop.run(plane.stop())
    loop.close()


def get_json(conn: http.client.HTTPConnection, path: str, **kwargs: Any) -> dict[str, Any]:
    conn.request(kwargs.pop("method", "GET"), path, **kwargs)
    response = conn.getresponse()
    body = response.read()
    assert response.status == 200, (response.status, body)
    echoed: dict[str, Any] = json.loads(body)
    return echoed


def status_of(conn: http.client.HTTPConnection, path: str, headers=None) -> tuple[int, bytes]:
    conn.request("GET", path, headers=headers or {})
    response = conn.getresponse()
    return response.status, response.read()


def status_once(env: Env, path: str, headers: dict[str, str]) -> tuple[int, bytes]:
    conn = env.http()
    try:
        return status_of(conn, path, headers)
    finally:
        conn.close()


# --- SNI -------------------------------------------------------------------------------


def test_sni_selects_exact_then_wildcard_certificate(env):
    assert env.served_serial("exact.test") == env.issued["exact"].serial
    assert env.served_serial("EXACT.test") == env.issued["exact"].serial
    assert env.served_serial("foo.wild.test") == env.issued["wild"].serial


@pytest.mark.parametrize("sni", ["unknown.test", "a.b.wild.test", "wild.test"])
def test_unknown_server_name_gets_the_default_certificate(env, sni):
    assert env.unverified_subject(sni) == "CN=certctl default"
    with pytest.raises(ssl.SSLCertVerificationError):
        env.served_serial(sni)


def test_client_without_sni_gets_the_default_certificate(env):
    assert env.unverified_subject(None) == "CN=certctl default"


def test_swapped_certificate_is_served_to_new_handshakes(env):
    first = env.ca.issue("swap.test")
    env.certificates.set_certificate(
        source=secret("swap"), chain_pem=first.chain_pem, key_pem=first.key_pem
    )
    assert env.served_serial("swap.test") == first.serial
    second = env.ca.issue("swap.test")
    env.certificates.set_certificate(
        source=secret("swap"), chain_pem=second.chain_pem, key_pem=second.key_pem
    )
    assert env.served_serial("swap.test") == second.serial
    env.certificates.remove_certificate(source=secret("swap"))
    assert env.unverified_subject("swap.test") == "CN=certctl default"


def test_negotiates_tls12_or_later_with_http11_alpn(env):
    with (
        socket.create_connection(("127.0.0.1", env.https_port), timeout=5) as raw,
        env.ca.client_context().wrap_socket(raw, server_hostname="exact.test") as tls,
    ):
        assert tls.version() in ("TLSv1.2", "TLSv1.3")
        assert tls.selected_alpn_protocol() == "http/1.1"


# --- proxying ------------------------------------------------------------------------------


def test_https_request_reaches_the_routed_backend_with_forwarding_headers(env):
    conn = env.https("exact.test")
    echoed = get_json(
        conn,
        "/some/path?q=1",
        headers={
            "X-Forwarded-For": "6.6.6.6",
            "Connection": "keep-alive, X-Secret",
            "X-Secret": "hop",
            "Keep-Alive": "timeout=5",
            "X-Custom": "kept",
        },
    )
    assert echoed["backend"] == "alpha"
    assert echoed["path"] == "/some/path?q=1"
    headers = echoed["headers"]
    assert headers["host"] == f"exact.test:{env.https_port}"
    assert headers["x-forwarded-host"] == f"exact.test:{env.https_port}"
    assert headers["x-forwarded-proto"] == "https"
    assert headers["x-forwarded-for"] == "127.0.0.1"
    assert headers["x-real-ip"] == "127.0.0.1"
    assert headers["x-custom"] == "kept"
    assert "x-secret" not in headers
    assert "keep-alive" not in headers
    # the same connection serves the next request (keep-alive), routed by path
    assert get_json(conn, "/beta/x")["backend"] == "beta"
    conn.close()


def test_each_request_of_a_kept_connection_forwards_its_own_host(env):
    """The forwarding fields a connection made for one Host are not sent for another."""
    conn = env.https("exact.test")
    hosts = ["exact.test", "foo.wild.test", "foo.wild.test", "exact.test"]
    echoed = [get_json(conn, "/", headers={"Host": host}) for host in hosts]
    assert [e["headers"]["x-forwarded-host"] for e in echoed] == hosts
    assert [e["backend"] for e in echoed] == ["alpha", "beta", "beta", "alpha"]
    conn.close()


def test_wildcard_host_routes_over_https(env):
    conn = env.https("foo.wild.test")
    assert get_json(conn, "/")["backend"] == "beta"
    conn.close()


def test_http_request_without_certificate_is_proxied(env):
    conn = env.http()
    echoed = get_json(conn, "/x", headers={"Host": "plain.test"})
    assert echoed["backend"] == "alpha"
    assert echoed["headers"]["x-forwarded-proto"] == "http"
    conn.close()


@pytest.mark.parametrize("path", ["/stream", "/eof"])
def test_streamed_and_close_delimited_responses_are_relayed_on_a_kept_connection(env, path):
    conn = env.https("exact.test")
    for _ in range(2):
        assert get_json(conn, path)["path"] == path
    conn.close()


def test_request_bodies_are_streamed_with_either_framing(env):
    body = bytes(range(256)) * 4096  # 1 MiB
    digest = hashlib.sha256(body).hexdigest()
    conn = env.https("exact.test")
    echoed = get_json(conn, "/upload", method="POST", body=body)
    assert (echoed["body_length"], echoed["body_sha256"]) == (len(body), digest)
    pieces = (body[i : i + 100_000] for i in range(0, len(body), 100_000))
    echoed = get_json(conn, "/upload", method="PUT", body=pieces, encode_chunked=True)
    assert (echoed["body_length"], echoed["body_sha256"]) == (len(body), digest)
    assert echoed["headers"]["transfer-encoding"] == "chunked"
    conn.close()


def test_expect_continue_is_answered_by_the_proxy(env):
    with socket.create_connection(("127.0.0.1", env.plane.http_port), timeout=5) as sock:
        sock.sendall(
            b"POST /x HTTP/1.1\r\nHost: plain.test\r\nContent-Length: 5\r\n"
            b"Expect: 100-continue\r\n\r\n"
        )
        assert sock.recv(100).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        sock.sendall(b"hello")
        response = http.client.HTTPResponse(sock)
        response.begin()
        echoed = json.loads(response.read())
    assert echoed["body_length"] == 5
    assert "expect" not in echoed["headers"]


def test_no_matching_rule_is_404(env):
    conn = env.http()
    assert status_of(conn, "/", {"Host": "nowhere.test"})[0] == 404
    # a local answer keeps the connection usable
    assert get_json(conn, "/", headers={"Host": "plain.test"})["backend"] == "alpha"
    conn.close()


def test_service_without_ready_endpoints_is_503(env):
    assert status_once(env, "/down", {"Host": "plain.test"})[0] == 503


def test_closed_upstream_port_is_502(env):
    assert status_once(env, "/closed", {"Host": "plain.test"})[0] == 502


def test_unreachable_endpoint_is_skipped_for_the_next_one(env):
    conn = env.http()
    for _ in range(4):
        assert get_json(conn, "/failover", headers={"Host": "plain.test"})["backend"] == "beta"
    conn.close()


def test_upstream_that_never_answers_is_504(env):
    assert status_once(env, "/silent", {"Host": "plain.test"})[0] == 504


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"POST / HTTP/1.1\r\nHost: plain.test\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",  # HTTP/1.1 without Host
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"NOT HTTP AT ALL\r\n\r\n",
    ],
    ids=["content-length-and-chunked", "no-host", "two-hosts", "garbage"],
)
def test_malformed_requests_are_400_and_close(env, request_bytes):
    with socket.create_connection(("127.0.0.1", env.plane.http_port), timeout=5) as sock:
        sock.sendall(request_bytes)
        received = read_until_closed(sock)
    assert received.startswith(b"HTTP/1.1 400 ")
    assert b"connection: close" in received


# --- HTTP listener: redirects and ACME challenges ----------------------------------------------


def test_http_request_for_a_host_with_a_certificate_redirects_to_https(env):
    conn = env.http()
    conn.request("GET", "/a/b?c=d", headers={"Host": "Exact.test:8080"})
    response = conn.getresponse()
    response.read()
    assert response.status == 308
    assert response.getheader("Location") == f"https://exact.test:{env.https_port}/a/b?c=d"
    conn.request("GET", "/", headers={"Host": "x.wild.test"})
    response = conn.getresponse()
    response.read()
    assert response.status == 308
    conn.close()


def test_challenge_token_is_served_before_any_redirect(env):
    env.challenges[("exact.test", "abc")] = "abc.key"
    conn = env.http()
    status, body = status_of(conn, "/.well-known/acme-challenge/abc", {"Host": "exact.test"})
    assert (status, body) == (200, b"abc.key")
    status, body = status_of(
        conn, "/.well-known/acme-challenge/tok_en-1", {"Host": "plain.test:80"}
    )
    assert (status, body) == (200, b"tok_en-1.thumbprint")
    conn.close()


def test_unknown_challenge_token_is_404(env):
    status, _ = status_once(env, "/.well-known/acme-challenge/nope", {"Host": "plain.test"})
    assert status == 404


@pytest.mark.parametrize("token", ["../x", "..%2Fx", "a.b", "", "tok_en-1/", "tok en"], ids=repr)
def test_malformed_challenge_token_is_404_without_asking_the_responder(env, token):
    env.responder_calls.clear()
    conn = env.http()
    target = "/.well-known/acme-challenge/" + token.replace(" ", "%20")
    assert status_of(conn, target, {"Host": "plain.test"})[0] == 404
    assert env.responder_calls == []
    conn.close()


def read_until_closed(sock: socket.socket) -> bytes:
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


def test_pipelined_requests_are_answered_in_order(env):
    with socket.create_connection(("127.0.0.1", env.plane.http_port), timeout=5) as sock:
        sock.sendall(
            b"GET /first HTTP/1.1\r\nHost: plain.test\r\n\r\n"
            b"GET /nowhere HTTP/1.1\r\nHost: nowhere.test\r\n\r\n"
            b"GET /third HTTP/1.1\r\nHost: plain.test\r\nConnection: close\r\n\r\n"
        )
        received = read_until_closed(sock)
    assert received.count(b"HTTP/1.1 ") == 3
    first, second, third = (
        received.index(b'"path": "/first"'),
        received.index(b"HTTP/1.1 404 "),
        received.index(b'"path": "/third"'),
    )
    assert first < second < third


def test_connect_is_405(env):
    with socket.create_connection(("127.0.0.1", env.plane.http_port), timeout=5) as sock:
        sock.sendall(b"CONNECT plain.test:443 HTTP/1.1\r\nHost: plain.test:443\r\n\r\n")
        assert read_until_closed(sock).startswith(b"HTTP/1.1 405 ")


def test_oversized_request_head_is_431(env):
    # One byte over the limit and nothing more: the server reads everything,
    # so it closes with a FIN rather than resetting over unread data.
    start = b"GET / HTTP/1.1\r\nHost: plain.test\r\nX-Filler: "
    with socket.create_connection(("127.0.0.1", env.plane.http_port), timeout=5) as sock:
        sock.sendall(start + b"x" * (65537 - len(start)))
        received = read_until_closed(sock)
    assert received.startswith(b"HTTP/1.1 431 ")


# --- the certificate index on its own ---------------------------------------------------------


def test_certificate_with_a_foreign_key_is_refused_without_quoting_the_key():
    ca = TestCA()
    one, other = ca.issue("one.test"), ca.issue("one.test")
    index = certstore.CertificateIndex()
    with pytest.raises(ValueError, match="does not match") as raised:
        index.set_certificate(source=secret("one"), chain_pem=one.chain_pem, key_pem=other.key_pem)
    assert b"PRIVATE" not in str(raised.value).encode()
    assert not index.has_certificate_for("one.test")


def test_name_claimed_twice_is_served_by_the_later_expiry_and_falls_back_on_removal():
    ca = TestCA()
    short, long = ca.issue("dup.test", days=1), ca.issue("dup.test", "*.dup.test", days=30)
    index = certstore.CertificateIndex()
    index.set_certificate(source=secret("long"), chain_pem=long.chain_pem, key_pem=long.key_pem)
    index.set_certificate(source=secret("short"), chain_pem=short.chain_pem, key_pem=short.key_pem)
    assert index.names() == {"dup.test": secret("long"), "*.dup.test": secret("long")}
    index.remove_certificate(source=secret("long"))
    assert index.names() == {"dup.test": secret("short")}
    assert index.has_certificate_for("dup.test")
    assert not index.has_certificate_for("x.dup.test")
