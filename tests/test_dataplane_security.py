"""The data plane under attack: slowloris, oversized heads, challenge-path tricks, SNI games.

Everything runs against a real DataPlane on loopback (uvloop), real TLS and
real sockets. Raw ClientHellos come from `ssl.MemoryBIO` and are rewritten
(server_name replaced, lengths recomputed) where Python's ssl module would
refuse to send them; for TLS 1.2 the server's Certificate message is read
off the wire, so the certificate presented for any server name, IP literals
and bytes no client library sends included, is checked without a verifying
client. HTTP-01 tokens are served by the same feed `certctl serve` uses,
over a LocalStore. HTTP/2 requests come from the h2 library's client side.
"""

from __future__ import annotations

import contextlib
import gc
import select
import socket
import ssl
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from certctl.dataplane import certstore
from certctl.runtime import dataplane_feed
from certctl.solvers import http01
from certctl.store.local import LocalStore
from tests.test_dataplane import EchoServer, read_until_closed
from tests.test_dataplane_http2 import H2Client
from tests.test_dataplane_proxy import Running, echoed, running_plane, simple_ingress

# CPython decodes a server name as ASCII before calling the SNI callback; a
# name that is not ASCII fails the handshake there and is reported through
# sys.unraisablehook, which the data plane takes over so that such hellos
# cannot flood stderr with tracebacks: pytest would turn one into a warning,
# made an error here.
NO_UNRAISABLE_REPORTS = pytest.mark.filterwarnings(
    "error::pytest.PytestUnraisableExceptionWarning"
)
SETTINGS = settings(
    max_examples=100,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def eventually(check: Any, *, timeout: float = 20.0) -> None:
    """Poll until `check()` is true; generous, since 6 test runs share 2 cores."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"still not true after {timeout} s: {check}"
        time.sleep(0.05)


def is_closed(sock: socket.socket) -> bool:
    """Whether the server closed this connection (FIN or RST), without blocking."""
    readable, _, _ = select.select([sock], [], [], 0)
    if not readable:
        return False
    try:
        return sock.recv(65536) == b""
    except OSError:
        return True


@pytest.fixture(scope="module")
def echo() -> Iterator[EchoServer]:
    backend = EchoServer("echo")
    yield backend
    backend.shutdown()
    backend.server_close()


@pytest.fixture(scope="module")
def plane(echo: EchoServer) -> Iterator[Running]:
    with running_plane(
        ingresses=[
            simple_ingress(
                "sec", {("sec.test", "/"): "echo", ("tls.test", "/"): "echo",
                        ("*.wild.test", "/"): "echo"}
            )
        ],
        backends={"echo": (echo.port,)},
        tls_hosts=("tls.test", "*.wild.test"),
        client_timeout=1.0,
        handshake_timeout=1.0,
    ) as running:
        yield running


def served(running: Running) -> bool:
    conn = running.http()
    try:
        backend: str = echoed(conn, "/ok", headers={"Host": "sec.test"})["backend"]
        return backend == "echo"
    finally:
        conn.close()


# --- slowloris -----------------------------------------------------------------------------


def test_heads_sent_byte_by_byte_are_cut_at_the_header_timeout_while_others_are_served(plane):
    # Each byte comes well within client_timeout (1 s) of the last, which used
    # to buy another second every time: a head now has 1 s from its first byte.
    port = plane.plane.http_port
    slow = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(60)]
    drip = b"GET / HTTP/1.1\r\nHost: sec.test\r\n" + b"X-Drip: " + b"a" * 10_000
    try:
        for sock in slow:
            sock.sendall(drip[:1])
        sent = 1
        give_up = time.monotonic() + 30  # the old behaviour: never cut, 30 s of drip
        while not all(is_closed(sock) for sock in slow):
            assert time.monotonic() < give_up, "slow heads were never cut"
            for sock in slow:
                with contextlib.suppress(OSError):
                    sock.send(drip[sent : sent + 1])
            sent += 1
            if sent == 3:
                assert served(plane)  # meanwhile, a normal client is served
            time.sleep(0.1)
        assert sent < len(drip)
    finally:
        for sock in slow:
            sock.close()
    assert served(plane)


def test_bytes_between_requests_do_not_keep_an_idle_connection_open(plane):
    with socket.create_connection(("127.0.0.1", plane.plane.http_port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: sec.test\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
        give_up = time.monotonic() + 30
        while not is_closed(sock):
            assert time.monotonic() < give_up, "an idle connection fed CRLFs was never cut"
            with contextlib.suppress(OSError):
                sock.send(b"\r\n")  # llhttp skips these before a request line
            time.sleep(0.1)


def test_clienthello_sent_byte_by_byte_is_cut_at_the_handshake_timeout(plane):
    port = plane.plane.https_port
    hello = client_hello("tls.test")
    slow = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(20)]
    try:
        sent = 0
        give_up = time.monotonic() + 30
        while not all(is_closed(sock) for sock in slow):
            assert time.monotonic() < give_up and sent < len(hello) - 1
            for sock in slow:
                with contextlib.suppress(OSError):
                    sock.send(hello[sent : sent + 1])
            sent += 1
            time.sleep(0.1)
    finally:
        for sock in slow:
            sock.close()
    assert https_get(plane, "tls.test").startswith(b"HTTP/1.1 200 ")


# --- oversized heads -----------------------------------------------------------------------


def exchange(running: Running, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", running.plane.http_port), timeout=5) as sock:
        sock.sendall(payload)
        return read_until_closed(sock)


def test_request_line_over_the_limit_is_414_and_close(plane):
    received = exchange(plane, b"GET /" + b"a" * 40_000 + b" HTTP/1.1\r\nHost: sec.test\r\n\r\n")
    assert received.startswith(b"HTTP/1.1 414 ")
    assert b"connection: close" in received


def test_request_line_over_the_limit_and_still_coming_is_414(plane):
    # The first read already holds more target than allowed and no end of it.
    received = exchange(plane, b"GET /" + b"a" * 40_000)
    assert received.startswith(b"HTTP/1.1 414 ")


@pytest.mark.parametrize(
    "headers",
    [
        [b"X-Big: " + b"x" * 70_000],
        [b"X-Many-%d: %s" % (i, b"y" * 500) for i in range(140)],
    ],
    ids=["one-huge-field", "many-fields"],
)
def test_complete_head_over_the_limit_in_one_write_is_431(plane, headers):
    # A whole oversized head arriving in one read used to be served: the limit
    # was only checked while a head was incomplete at the end of a read.
    head = b"GET / HTTP/1.1\r\nHost: sec.test\r\n" + b"".join(h + b"\r\n" for h in headers)
    received = exchange(plane, head + b"\r\n")
    assert received.startswith(b"HTTP/1.1 431 ")
    assert b"connection: close" in received
    assert served(plane)


def test_too_many_header_fields_is_431(plane):
    fields = b"".join(b"X-%d: 1\r\n" % i for i in range(300))
    received = exchange(plane, b"GET / HTTP/1.1\r\nHost: sec.test\r\n" + fields + b"\r\n")
    assert received.startswith(b"HTTP/1.1 431 ")


def test_many_header_fields_under_the_limit_are_forwarded(plane):
    fields = b"".join(b"X-%d: 1\r\n" % i for i in range(90))  # http.server takes 100
    received = exchange(
        plane, b"GET / HTTP/1.1\r\nHost: sec.test\r\nConnection: close\r\n" + fields + b"\r\n"
    )
    assert received.startswith(b"HTTP/1.1 200 ")


# --- /.well-known/acme-challenge/ ------------------------------------------------------------

LIVE_TOKEN = "LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0"  # 43 characters, like Pebble's
OTHER_TOKEN = "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA"
DONE_TOKEN = "9jg46WB3rR_AHD-EBXdN7cBkH1WOu0tA3M9fm21mqTI"


def challenge_object(name: str, *, host: str, token: str, state: str = "pending") -> dict[str, Any]:
    return {
        "apiVersion": "certctl.io/v1",
        "kind": "Challenge",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "url": f"https://ca.test/chall/{name}",
            "authorizationURL": f"https://ca.test/authz/{name}",
            "dnsName": host,
            "type": "HTTP-01",
            "token": token,
            "key": f"{token}.thumbprint-{name}",
            "issuerRef": {"name": "ca", "kind": "ClusterIssuer"},
        },
        "status": {"state": state},
    }


@pytest.fixture(scope="module")
def acme(tmp_path_factory: pytest.TempPathFactory, echo: EchoServer) -> Iterator[Running]:
    """A data plane answering challenges from the feed over a store: one live challenge
    for live.test, one for other.test, one that finished (valid) and one deleted."""
    store = LocalStore(manifests_dir=None, state_dir=Path(tmp_path_factory.mktemp("acme")))
    feed = dataplane_feed.DataPlaneFeed(
        store=store,
        certificates=certstore.CertificateIndex(),
        publish_routes=lambda table: None,
        ingress_class="certctl",
    )
    store.subscribe(feed.on_event)
    store.create(obj=challenge_object("live", host="live.test", token=LIVE_TOKEN))
    store.create(obj=challenge_object("other", host="other.test", token=OTHER_TOKEN))
    done = store.create(obj=challenge_object("done", host="live.test", token=DONE_TOKEN))
    done["status"] = {"state": "valid"}
    store.replace_status(obj=done)
    gone = challenge_object("gone", host="live.test", token="gone_token-1234567890abc")
    store.create(obj=gone)
    store.delete(kind="Challenge", namespace="default", name="gone")
    with running_plane(
        # A catch-all route: a challenge path that is not answered must not reach it either.
        ingresses=[
            simple_ingress("all", {("live.test", "/"): "echo", ("other.test", "/"): "echo"})
        ],
        backends={"echo": (echo.port,)},
    ) as running:
        running.plane.challenge_responder = feed.respond_to_challenge  # as `certctl serve` wires it
        yield running


def challenge_get(running: Running, host: str, target: str) -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", running.plane.http_port), timeout=5) as sock:
        sock.sendall(
            b"GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n"
            % (target.encode("latin-1"), host.encode())
        )
        received = read_until_closed(sock)
    head, _, body = received.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body


def test_live_challenge_token_is_answered_for_its_host_only(acme):
    prefix = http01.CHALLENGE_PATH_PREFIX
    assert challenge_get(acme, "live.test", prefix + LIVE_TOKEN) == (
        200, f"{LIVE_TOKEN}.thumbprint-live".encode()
    )
    assert challenge_get(acme, "LIVE.test:80", prefix + LIVE_TOKEN)[0] == 200
    assert challenge_get(acme, "other.test", prefix + LIVE_TOKEN)[0] == 404
    assert challenge_get(acme, "unknown.test", prefix + LIVE_TOKEN)[0] == 404
    assert challenge_get(acme, "live.test", prefix + OTHER_TOKEN)[0] == 404


@pytest.mark.parametrize("token", [DONE_TOKEN, "gone_token-1234567890abc", "x" * 43, "a" * 129])
def test_finished_deleted_unknown_or_overlong_tokens_are_404(acme, token):
    assert challenge_get(acme, "live.test", http01.CHALLENGE_PATH_PREFIX + token)[0] == 404


TRICKS = [
    "../../../../etc/passwd",
    "..%2F..%2Fetc%2Fpasswd",
    "%2e%2e/%2e%2e/etc/passwd",
    "%252e%252e%252f",
    "..",
    ".",
    "",
    "/",
    f"{LIVE_TOKEN}/",
    f"{LIVE_TOKEN}/../{OTHER_TOKEN}",
    f"../acme-challenge/{LIVE_TOKEN}",
    f"{LIVE_TOKEN}%00",
    f"{LIVE_TOKEN};x",
    f"{LIVE_TOKEN}.",
    f"{LIVE_TOKEN}%20",
    f"%{LIVE_TOKEN[1:]}",
    f"{LIVE_TOKEN[:-1]}%{LIVE_TOKEN[-1]:s}",
    f"{LIVE_TOKEN}*",
    f"{LIVE_TOKEN[:-1]}",
    f"{LIVE_TOKEN}x",
    f"{LIVE_TOKEN.lower()}",
]


@pytest.mark.parametrize("suffix", TRICKS, ids=repr)
def test_path_tricks_under_the_challenge_prefix_are_404_and_reach_no_backend(acme, suffix):
    status, body = challenge_get(acme, "live.test", http01.CHALLENGE_PATH_PREFIX + suffix)
    assert status == 404, body
    assert b"thumbprint" not in body and b"backend" not in body


@SETTINGS
@given(
    suffix=st.one_of(
        st.text(alphabet="./%2eEfF_-aA09" + LIVE_TOKEN[:5], max_size=50),
        st.sampled_from([LIVE_TOKEN, OTHER_TOKEN, DONE_TOKEN]).flatmap(
            lambda token: st.tuples(st.just(token), st.text(alphabet="./%_-a", max_size=6)).map(
                lambda pair: pair[0] + pair[1]
            )
        ),
    ),
    host=st.sampled_from(["live.test", "other.test", "unknown.test", "live.test.", "LIVE.TEST"]),
)
def test_only_a_live_token_of_that_host_ever_gets_a_key_authorization(acme, suffix, host):
    status, body = challenge_get(acme, host, http01.CHALLENGE_PATH_PREFIX + suffix)
    live = {("live.test", LIVE_TOKEN): "live", ("other.test", OTHER_TOKEN): "other"}
    name = live.get((host.lower().rstrip("."), suffix))
    if name is not None:
        assert (status, body) == (200, f"{suffix}.thumbprint-{name}".encode())
    else:
        assert status in (400, 404), (status, body)
        assert b"thumbprint" not in body and b"backend" not in body


def test_malformed_token_fails_the_self_check_without_a_request():
    with pytest.raises(http01.SelfCheckFailed, match="malformed token"):
        http01.self_check(
            host="live.test",
            token="../../x",
            expected_key_authorization="x",
            port=1,  # nothing listens: a request would fail differently
        )


# --- TLS: raw ClientHellos ---------------------------------------------------------------------


def client_hello(server_hostname: str | None, *, tls12: bool = False) -> bytes:
    """A real ClientHello (one TLS record) as Python's ssl module sends it."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if tls12:
        context.maximum_version = ssl.TLSVersion.TLSv1_2
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=server_hostname)
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def with_sni(hello: bytes, name: bytes | None) -> bytes:
    """`hello` with its server_name extension replaced by `name` (None: removed); every
    length around it is recomputed, so the result is well formed whatever `name` holds."""
    assert hello[0] == 22 and hello[5] == 1
    body = hello[9:]
    at = 2 + 32  # legacy_version, random
    at += 1 + body[at]  # session id
    at += 2 + struct.unpack_from("!H", body, at)[0]  # cipher suites
    at += 1 + body[at]  # compression methods
    extensions_end = at + 2 + struct.unpack_from("!H", body, at)[0]
    kept = []
    position = at + 2
    while position < extensions_end:
        kind, length = struct.unpack_from("!HH", body, position)
        if kind != 0:
            kept.append(body[position : position + 4 + length])
        position += 4 + length
    if name is not None:
        entry = b"\x00" + struct.pack("!H", len(name)) + name
        data = struct.pack("!H", len(entry)) + entry
        kept.insert(0, struct.pack("!HH", 0, len(data)) + data)
    extensions = b"".join(kept)
    new_body = body[:at] + struct.pack("!H", len(extensions)) + extensions
    handshake = b"\x01" + len(new_body).to_bytes(3, "big") + new_body
    return hello[:3] + struct.pack("!H", len(handshake)) + handshake


def served_leaf(running: Running, hello: bytes) -> x509.Certificate | None:
    """Send a TLS 1.2 ClientHello and read the server's Certificate message (plaintext
    in TLS 1.2); None when the server refuses the handshake."""
    port = running.plane.https_port
    assert port is not None
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(hello)
        stream = b""
        handshake = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except OSError:
                return None
            if not chunk:
                return None
            stream += chunk
            while len(stream) >= 5 and len(stream) >= 5 + struct.unpack_from("!H", stream, 3)[0]:
                length = struct.unpack_from("!H", stream, 3)[0]
                kind, fragment, stream = stream[0], stream[5 : 5 + length], stream[5 + length :]
                if kind == 21:  # alert
                    return None
                if kind == 22:
                    handshake += fragment
            while len(handshake) >= 4 and len(handshake) >= 4 + int.from_bytes(handshake[1:4]):
                length = int.from_bytes(handshake[1:4])
                kind, message = handshake[0], handshake[4 : 4 + length]
                handshake = handshake[4 + length :]
                if kind == 11:  # Certificate: list length (3), then length (3) + DER each
                    leaf_length = int.from_bytes(message[3:6])
                    return x509.load_der_x509_certificate(message[6 : 6 + leaf_length])


def https_get(running: Running, sni: str) -> bytes:
    port = running.plane.https_port
    assert port is not None
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        running.ca.client_context().wrap_socket(raw, server_hostname=sni) as tls,
    ):
        tls.sendall(f"GET / HTTP/1.1\r\nHost: {sni}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := tls.recv(65536):
            data += chunk
        return data


def is_default(leaf: x509.Certificate) -> bool:
    names = leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return [n.value for n in names] == [certstore.DEFAULT_COMMON_NAME]


def covers(leaf: x509.Certificate, name: bytes) -> bool:
    """RFC 6125 matching: exact, or `*.` standing for exactly one leftmost label."""
    try:
        host = name.decode("ascii").lower()
    except UnicodeDecodeError:
        return False
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    for pattern in (p.lower() for p in san.get_values_for_type(x509.DNSName)):
        if pattern == host:
            return True
        if pattern.startswith("*.") and "." in host:
            label, rest = host.split(".", 1)
            if label and label != "*" and rest == pattern[2:]:
                return True
    return False


SNI_NAMES = st.one_of(
    st.sampled_from(
        [b"tls.test", b"TLS.Test", b"a.wild.test", b"A.WILD.TEST", b"a.b.wild.test", b"wild.test",
         b"*.wild.test", b".wild.test", b"a..wild.test", b"tls.test.", b"a.wild.test.",
         b"x.tls.test", b"ls.test", b"tls.test.evil", b"evil-tls.test", b"127.0.0.1", b"::1",
         b"[::1]", b"10.0.0.1", b"tls.test\x00.evil", b"t\xc3\xbcls.test", b"\xff", b"",
         b"a" * 255, b"a" * 256, b"a." * 200 + b"wild.test", b"*", b"*.*.wild.test",
         b"a.*.wild.test", b"tls.test:443", b"xn--tls-cqa.test"]
    ),
    st.binary(min_size=1, max_size=40),
    st.text(alphabet="abc.*-_", min_size=1, max_size=20).map(lambda t: (t + ".wild.test").encode()),
)


@NO_UNRAISABLE_REPORTS
@SETTINGS
@given(name=SNI_NAMES)
def test_only_a_covering_certificate_or_the_default_one_is_ever_presented(plane, name):
    leaf = served_leaf(plane, with_sni(client_hello("placeholder.test", tls12=True), name))
    if leaf is not None:
        assert is_default(leaf) or covers(leaf, name), (name, leaf.subject)


@pytest.mark.parametrize("name", [None, b"127.0.0.1", b"a.b.wild.test", b"unknown.test"],
                         ids=repr)
def test_names_not_covered_get_the_default_certificate(plane, name):
    leaf = served_leaf(plane, with_sni(client_hello("placeholder.test", tls12=True), name))
    assert leaf is not None and is_default(leaf)


@pytest.mark.parametrize("name", [b"tls.test", b"a.wild.test"])
def test_covered_names_get_their_certificate_through_the_raw_path_too(plane, name):
    leaf = served_leaf(plane, with_sni(client_hello("placeholder.test", tls12=True), name))
    assert leaf is not None and covers(leaf, name) and not is_default(leaf)


@st.composite
def broken_hellos(draw: st.DrawFn) -> bytes:
    hello = draw(st.sampled_from([HELLO_13, HELLO_12]))
    how = draw(st.sampled_from(["truncate", "flip", "random", "sni", "append"]))
    if how == "truncate":
        return hello[: draw(st.integers(min_value=0, max_value=len(hello) - 1))]
    if how == "flip":
        data = bytearray(hello)
        for _ in range(draw(st.integers(min_value=1, max_value=8))):
            where = draw(st.integers(min_value=0, max_value=len(data) - 1))
            data[where] = draw(st.integers(min_value=0, max_value=255))
        return bytes(data)
    if how == "random":
        return draw(st.binary(min_size=1, max_size=600))
    if how == "sni":
        return with_sni(hello, draw(SNI_NAMES))
    return hello + draw(st.binary(min_size=1, max_size=100))


HELLO_13 = client_hello("tls.test")
HELLO_12 = client_hello("tls.test", tls12=True)


def send_and_drain(running: Running, data: bytes, *, wait: float = 0.2) -> None:
    """Send `data`, read what comes for up to `wait` seconds, then hang up."""
    port = running.plane.https_port
    assert port is not None
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        with contextlib.suppress(OSError):
            sock.sendall(data)
        sock.settimeout(wait)
        with contextlib.suppress(OSError):
            while sock.recv(65536):
                pass


@NO_UNRAISABLE_REPORTS
@SETTINGS
@given(hello=broken_hellos())
def test_broken_clienthellos_leave_the_https_listener_serving(plane, hello):
    # A short wait: the server takes the hello in whether or not the client is still there
    # when it answers; the GET after it says the listener survived.
    send_and_drain(plane, hello, wait=0.02)
    assert https_get(plane, "tls.test").startswith(b"HTTP/1.1 200 ")


def test_handshakes_abandoned_after_the_sni_callback_are_counted_as_errors(plane):
    metrics = plane.plane.metrics.counts
    before = metrics.handshake_errors
    for name in (b"tls.test", b"unknown.test", b"a" * 200):
        # A hello the server answers, then the client goes away mid-handshake.
        send_and_drain(plane, with_sni(HELLO_12, name))
    gc.collect()
    eventually(lambda: metrics.handshake_errors >= before + 3)
    assert https_get(plane, "tls.test").startswith(b"HTTP/1.1 200 ")


@NO_UNRAISABLE_REPORTS
def test_server_name_with_non_ascii_or_nul_bytes_fails_the_handshake_cleanly(plane):
    metrics = plane.plane.metrics.counts
    before = metrics.handshake_errors
    for name in (b"t\xc3\xbcls.test", b"tls.test\x00.evil", b"a" * 256):
        assert served_leaf(plane, with_sni(HELLO_12, name)) is None
    gc.collect()
    eventually(lambda: metrics.handshake_errors >= before + 3)
    assert https_get(plane, "tls.test").startswith(b"HTTP/1.1 200 ")


def test_handshakes_failing_before_the_sni_callback_are_counted_as_errors(plane):
    metrics = plane.plane.metrics.counts
    before = (metrics.handshakes, metrics.handshake_errors)
    garbage = [b"\x16\x03\x01\x00\x05hello", HELLO_12[:40], b"GET / HTTP/1.1\r\n\r\n", b""]
    for data in garbage:
        send_and_drain(plane, data)

    def counted():
        gc.collect()  # a failed connection's protocol may sit in a reference cycle
        return metrics.handshake_errors >= before[1] + len(garbage)

    eventually(counted)
    assert metrics.handshakes == before[0]



# --- HTTP/2: what reaches the HTTP/1.1 request line upstream -------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "authority"),
    [
        ("GET", "/a HTTP/1.1", "tls.test"),
        ("GET", "/a\tb", "tls.test"),
        ("GET", "/\x7f", "tls.test"),
        ("GET /admin", "/", "tls.test"),
        ("GET", "/", "tls.test/evil"),
        ("GET", "/", "tls.test evil"),
        ("GET", "/", "evil@tls.test"),
    ],
    ids=["space-in-path", "tab-in-path", "del-in-path", "space-in-method", "slash-in-authority",
         "space-in-authority", "userinfo-in-authority"],
)
def test_http2_pseudo_headers_that_would_reshape_the_request_line_are_400(
    plane, method, path, authority
):
    # h2 refuses CR, LF and NUL in any field; a space or a tab in :path or
    # :method would still turn into a different HTTP/1.1 request line upstream.
    client = H2Client(plane, "tls.test")
    client.conn.config.validate_outbound_headers = False
    try:
        stream = client.request(method, path, host=authority)
        (response,) = client.wait(stream)
    finally:
        client.close()
    assert (response["status"], response["body"]) == (400, b"Bad Request\n")


def test_http2_ordinary_request_still_proxied(plane):
    client = H2Client(plane, "tls.test")
    try:
        (response,) = client.wait(client.request("GET", "/x?y=1"))
    finally:
        client.close()
    assert response["status"] == 200
