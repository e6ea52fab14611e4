"""Fuzzing the data plane's HTTP/1.1 request path (and HTTP/2 frames), on real sockets.

Hypothesis generates request streams (valid-ish requests with conflicting
framing, obs-fold, NUL bytes, huge numbers, pipelined requests hidden in
bodies; byte-level mutations of a good request; plain garbage) and sends
each to a running data plane on loopback, once followed by a good request
and once cut off where it ends. After every example:

- what came back parses as HTTP/1.1 responses (or nothing: the server
  closed), and every error the data plane answers itself closes;
- every request the backend received is one the server's own parser
  (llhttp, run here on the same bytes) saw as a request head, never bytes
  from inside a body: nothing is smuggled; and the backend, itself a strict
  llhttp parser, never sees a stream it cannot parse (no desync);
- a good request on a new connection is still served: the server neither
  crashed nor hung.

Mutated and random HTTP/2 frames get the same last check over TLS. The
ClientHello fuzzing is in test_dataplane_security. Runs are derandomized
(the same examples every run, as CI needs); CERTCTL_FUZZ_EXAMPLES raises the
count for a longer local hunt. The holes found while writing these (by the
fuzzers or by reading the parser's callbacks) are kept below as plain
regression tests.
"""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
import httptools
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.test_dataplane_proxy import RawServer, Running, running_plane, simple_ingress

FUZZ = settings(
    max_examples=int(os.environ.get("CERTCTL_FUZZ_EXAMPLES", "200")),
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
HOST = b"fuzz.test"
GOOD = b"GET /good HTTP/1.1\r\nHost: fuzz.test\r\nConnection: close\r\n\r\n"
END = b"GET /end HTTP/1.1\r\nHost: fuzz.test\r\nConnection: close\r\n\r\n"
# Statuses the data plane answers itself; each closes the connection.
LOCAL_ERRORS = (400, 405, 413, 414, 431, 501)


# --- a strict backend that records what reaches it -----------------------------------------


@dataclass
class Seen:
    """One request as the backend parsed it."""

    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    complete: bool = False  # its body came to its end


class _BackendParser:
    """httptools callbacks for one backend connection; answers each complete request."""

    def __init__(self, backend: RecordingBackend, conn: socket.socket) -> None:
        self.backend = backend
        self.conn = conn
        self.parser = httptools.HttpRequestParser(self)
        self.current: Seen | None = None
        self.url = b""

    def on_message_begin(self) -> None:
        self.url = b""
        self.current = Seen(method=b"", target=b"")

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.current is not None and self.current.method == b"":
            self.current.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        assert self.current is not None
        self.current.method = self.parser.get_method()
        self.current.target = self.url
        with self.backend.lock:
            self.backend.seen.append(self.current)

    def on_message_complete(self) -> None:
        assert self.current is not None
        self.current.complete = True
        self.conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")


class RecordingBackend:
    """Parses what the proxy sends with llhttp in strict mode; any parse error is a finding."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seen: list[Seen] = []
        self.errors: list[str] = []
        self._server = RawServer(self._serve)
        self.port = self._server.port

    def reset(self) -> tuple[list[Seen], list[str]]:
        with self.lock:
            seen, errors = self.seen, self.errors
            self.seen, self.errors = [], []
        return seen, errors

    def _serve(self, conn: socket.socket) -> None:
        handler = _BackendParser(self, conn)
        while data := conn.recv(65536):
            try:
                handler.parser.feed_data(data)
            except httptools.HttpParserUpgrade:
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
                )
                return
            except httptools.HttpParserError as err:
                with self.lock:
                    self.errors.append(f"{err!r} in {data[:300]!r}")
                return

    def close(self) -> None:
        self._server.close()


@pytest.fixture(scope="module")
def backend() -> Iterator[RecordingBackend]:
    server = RecordingBackend()
    yield server
    server.close()


@pytest.fixture(scope="module")
def plane(backend: RecordingBackend) -> Iterator[Running]:
    with running_plane(
        ingresses=[
            simple_ingress("fuzz", {("fuzz.test", "/"): "recorder", ("tls.test", "/"): "recorder"})
        ],
        backends={"recorder": (backend.port,)},
        tls_hosts=("tls.test",),  # fuzz.test has none: plain HTTP is proxied, not redirected
        client_timeout=0.5,
        upstream_timeout=3.0,
        connect_timeout=2.0,
    ) as running:
        yield running


# --- what the server's parser sees in a stream ---------------------------------------------


class _Heads:
    """Request heads llhttp finds in a byte stream (the server runs the same parser)."""

    def __init__(self) -> None:
        self.targets: list[bytes] = []
        self.methods: list[bytes] = []
        self.completed = 0
        self.at_boundary = True  # the stream ended between messages, not in or after garbage
        self.parser = httptools.HttpRequestParser(self)
        self._url = b""

    def on_message_begin(self) -> None:
        self._url = b""

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_headers_complete(self) -> None:
        self.targets.append(self._url)
        self.methods.append(self.parser.get_method())

    def on_message_complete(self) -> None:
        self.completed += 1


def request_heads(stream: bytes) -> _Heads:
    """The request heads llhttp parses from `stream` before an error or an upgrade."""
    heads = _Heads()
    try:
        heads.parser.feed_data(stream)
    except httptools.HttpParserUpgrade:
        pass  # what follows is another protocol's: the requests so far are whole
    except httptools.HttpParserError:
        heads.at_boundary = False
    heads.at_boundary = heads.at_boundary and heads.completed == len(heads.targets)
    return heads


def upstream_form(target: bytes) -> bytes:
    """The target as forwarded: absolute-form becomes origin-form."""
    if target.startswith(b"/"):
        return target
    try:
        url = httptools.parse_url(target)
    except httptools.HttpParserInvalidURLError:
        return target
    path = url.path or b"/"
    return path if url.query is None else path + b"?" + url.query


# --- reading responses ---------------------------------------------------------------------


@dataclass
class Response:
    status: int
    close: bool


def parse_responses(received: bytes, methods: list[bytes]) -> list[Response]:
    """Split what the server sent into well-formed HTTP/1.1 responses, or fail the test.

    The n-th final response answers the n-th request (`methods`, HEAD has no
    body); a cut-off last one is allowed (the server may abort a relayed one).
    """
    responses: list[Response] = []
    rest = received
    while rest:
        head, found, after = rest.partition(b"\r\n\r\n")
        if not found:
            break  # cut off in its head
        status_line, *fields = head.split(b"\r\n")
        version, status_text, *_ = [*status_line.split(b" ", 2), b""]
        assert version == b"HTTP/1.1" and status_text.isdigit(), status_line
        status = int(status_text)
        headers = {}
        for line in fields:
            name, colon, value = line.partition(b":")
            assert colon and name == name.strip() and b"\r" not in value and b"\n" not in value
            headers[name.lower()] = value.strip()
        if status == 100:
            rest = after
            continue
        method = methods[len(responses)] if len(responses) < len(methods) else b"GET"
        responses.append(Response(status=status, close=headers.get(b"connection") == b"close"))
        if method == b"HEAD" or status in (204, 304):
            rest = after
        elif b"content-length" in headers:
            rest = after[int(headers[b"content-length"]) :]
        elif headers.get(b"transfer-encoding") == b"chunked":
            rest = after  # what the data plane re-chunks: skip its chunks
            while rest:
                size_line, _, rest = rest.partition(b"\r\n")
                size = int(size_line, 16)
                rest = rest[size + 2 :]
                if size == 0:
                    break
        else:
            rest = b""  # close-delimited: the rest is the body
    return responses


def exchange(port: int, payload: bytes, *, quiet: float = 1.0) -> bytes:
    """Send `payload`, then read until the server closes or stays quiet for `quiet` seconds."""
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        with contextlib.suppress(OSError):  # the server may close before taking it all
            sock.sendall(payload)
        sock.settimeout(quiet)
        with contextlib.suppress(OSError):  # TimeoutError: still open, nothing more said
            while chunk := sock.recv(65536):
                received += chunk
    return received


def good_request_still_served(running: Running) -> None:
    received = exchange(running.plane.http_port, GOOD, quiet=5)
    assert received.startswith(b"HTTP/1.1 200 "), received[:200]


def check_stream(
    running: Running, backend: RecordingBackend, stream: bytes, *, quiet: float = 1.0
) -> None:
    """The properties every fuzzed stream must keep (see the module docstring)."""
    backend.reset()
    received = exchange(running.plane.http_port, stream, quiet=quiet)
    heads = request_heads(stream)
    responses = parse_responses(received, heads.methods)
    seen, errors = backend.reset()
    # Shown by --hypothesis-show-statistics: what the examples exercised.
    event(f"statuses {sorted({response.status for response in responses})}")
    event(f"requests forwarded: {min(len(seen), 2)}{'+' if len(seen) > 2 else ''}")
    assert errors == [], f"the backend could not parse what the proxy sent: {errors}"
    allowed = {upstream_form(target) for target in heads.targets}
    for request in seen:
        assert request.target in allowed, f"smuggled: {request.target!r} from {stream!r}"
        names = [name for name, _ in request.headers]
        assert names.count(b"host") == 1
        assert not (b"content-length" in names and b"transfer-encoding" in names)
    assert len(seen) <= len(heads.targets)
    # A request whose body the client sent in full reaches the backend in full:
    # only the last one may be cut, when the stream itself breaks off in it.
    give_up = time.monotonic() + 5  # a loaded machine may still be relaying it
    while heads.at_boundary and not all(r.complete for r in seen) and time.monotonic() < give_up:
        time.sleep(0.01)
    cut = [request.target for request in seen if not request.complete]
    assert len(cut) <= (0 if heads.at_boundary else 1), f"bodies cut upstream: {cut} {stream!r}"
    assert len(responses) <= len(heads.targets) + 1  # + a 400 for what could not be parsed
    for response in responses:
        if response.status in LOCAL_ERRORS:
            assert response.close, f"{response.status} without connection: close"
    good_request_still_served(running)


# --- strategies --------------------------------------------------------------------------------

METHODS = st.sampled_from(
    [b"GET", b"POST", b"PUT", b"HEAD", b"DELETE", b"OPTIONS", b"PATCH", b"CONNECT", b"TRACE",
     b"get", b"G ET", b"GET\x00", b"\xffGET", b""]
)
TARGETS = st.one_of(
    st.sampled_from(
        [b"/", b"/a?b=c", b"*", b"http://fuzz.test/abs", b"//x", b"/%2e%2e/x", b"/a b",
         b"/.well-known/acme-challenge/tok", b"/.well-known/acme-challenge/../../etc/passwd",
         b"http://other.test/", b"/\x00", b"/\r\n", b"", b"/" + b"a" * 5000]
    ),
    st.binary(max_size=40).map(lambda b: b"/" + b),
)
VERSIONS = st.sampled_from(
    [b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/0.9", b"HTTP/1.10", b"http/1.1",
     b"HTTP/1.1 ", b"", b"HTTP/\x001"]
)
NUMBERS = st.one_of(
    st.integers(min_value=0, max_value=64).map(lambda n: str(n).encode()),
    st.sampled_from(
        [b"0", b"-1", b"+5", b"5, 5", b"5 5", b"0x10", b"1e3", b" 5", b"5\x00", b"",
         b"18446744073709551615", b"18446744073709551616", b"9" * 30, b"9" * 5000, b"\xff"]
    ),
)
CODINGS = st.sampled_from(
    [b"chunked", b"Chunked", b"chunked ", b" chunked", b"gzip, chunked", b"chunked, gzip",
     b"chunked, chunked", b"xchunked", b"chunked\x00", b"identity", b"", b"\tchunked"]
)
HEADER_NAMES = st.sampled_from(
    [b"Host", b"Content-Length", b"Transfer-Encoding", b"Connection", b"Upgrade", b"Expect",
     b"X-Forwarded-For", b"Te", b"Trailer", b"Keep-Alive", b"X-Fuzz", b"Content-Length ",
     b" Host", b"Ho st", b"Host\x00", b"\xffName", b""]
)
HEADER_VALUES = st.one_of(
    st.sampled_from(
        [b"fuzz.test", b"FUZZ.test:80", b"other.test", b"fuzz.test\x00.evil", b"fuzz.test, x",
         b"", b"close", b"keep-alive", b"upgrade", b"Upgrade, close", b"websocket",
         b"100-continue", b"a\r\n b", b"a\r\n\tb", b"a\nb", b"a\rb", b"\x00", b"\xff\xfe",
         b"x" * 70_000]
    ),
    NUMBERS,
    CODINGS,
    st.binary(max_size=30),
)
SEPARATORS = st.sampled_from([b": ", b":", b" : ", b":\t", b"\t:", b": \r\n "])
LINE_ENDS = st.sampled_from([b"\r\n", b"\r\n", b"\r\n", b"\n", b"\r", b"\r\r\n"])
SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: fuzz.test\r\n\r\n"


@st.composite
def chunked_body(draw: st.DrawFn) -> bytes:
    pieces = []
    for data in draw(st.lists(st.binary(min_size=1, max_size=20), max_size=3)):
        size = draw(st.sampled_from([b"%x" % len(data), b"%X;ext=1" % len(data), b"zz",
                                     b"%x" % (len(data) + 1), b"-1", b"f" * 20]))
        pieces.append(size + b"\r\n" + data + b"\r\n")
    pieces.append(draw(st.sampled_from([b"0\r\n\r\n", b"0\r\nTrailer: x\r\n\r\n", b"0\r\n", b""])))
    return b"".join(pieces)


FRAMING_FIELDS = st.one_of(
    st.tuples(st.just(b"Content-Length"), NUMBERS),
    st.tuples(st.just(b"Transfer-Encoding"), CODINGS),
    st.tuples(st.sampled_from([b"Connection"]),
              st.sampled_from([b"close", b"keep-alive", b"upgrade", b"Upgrade, close",
                               b"X-Fuzz", b"content-length", b"transfer-encoding, close"])),
    st.tuples(st.just(b"Upgrade"), st.sampled_from([b"websocket", b"h2c", b""])),
    # both halves of an upgrade request at once, so they meet framing often
    st.tuples(st.just(b"Connection"), st.just(b"upgrade\r\nUpgrade: websocket")),
    st.tuples(st.just(b"Expect"), st.sampled_from([b"100-continue", b"x"])),
    st.tuples(st.just(b"Host"), st.sampled_from([b"fuzz.test", b"other.test", b"fuzz.test:1"])),
    st.tuples(st.sampled_from([b"X-Fuzz", b"Cookie", b"Te", b"Trailer", b"Keep-Alive"]),
              st.binary(max_size=20).filter(lambda v: not ({13, 10, 0} & set(v)))),
)


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    """One request: two in three well formed but for their framing (CL/TE games,
    hidden requests in bodies), the rest with every part of HTTP open to abuse."""
    if draw(st.integers(min_value=0, max_value=2)):
        method = draw(st.sampled_from([b"GET", b"POST", b"PUT", b"HEAD", b"DELETE", b"PATCH"]))
        target = draw(st.sampled_from([b"/", b"/a?b=c", b"http://fuzz.test/abs", b"/%2e%2e/x"]))
        lines = [method + b" " + target + b" " + draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.0"]))
                 + b"\r\n", b"Host: fuzz.test\r\n"]
        for name, value in draw(st.lists(FRAMING_FIELDS, max_size=3)):
            lines.append(name + draw(st.sampled_from([b": ", b":"])) + value + b"\r\n")
        lines.append(b"\r\n")
    else:
        method = draw(METHODS)
        target = draw(TARGETS)
        version = draw(VERSIONS)
        end = draw(LINE_ENDS)
        lines = [method + b" " + target + (b" " + version if version else b"") + end]
        if draw(st.booleans()):
            lines.append(b"Host: fuzz.test\r\n")
        for _ in range(draw(st.integers(min_value=0, max_value=6))):
            lines.append(
                draw(HEADER_NAMES) + draw(SEPARATORS) + draw(HEADER_VALUES) + draw(LINE_ENDS)
            )
        lines.append(draw(LINE_ENDS))
    body = draw(
        st.one_of(
            st.just(b""),
            st.binary(max_size=64),
            chunked_body(),
            st.just(SMUGGLED),
            chunked_body().map(lambda b: b + SMUGGLED),
        )
    )
    return b"".join(lines) + body


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A good POST with its bytes inserted, deleted, replaced or cut."""
    data = bytearray(
        b"POST /m HTTP/1.1\r\nHost: fuzz.test\r\nContent-Length: 11\r\n\r\nhello world" + SMUGGLED
    )
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        where = draw(st.integers(min_value=0, max_value=len(data)))
        action = draw(st.sampled_from(["insert", "delete", "replace", "cut"]))
        byte = draw(st.sampled_from([0, 9, 10, 13, 32, 44, 58, 0x7F, 0xFF, ord("0"), ord("9")]))
        if action == "insert":
            data[where:where] = bytes([byte])
        elif action == "delete":
            del data[where : where + 1]
        elif action == "replace" and where < len(data):
            data[where] = byte
        elif action == "cut":
            del data[where:]
    return bytes(data)


STREAMS = st.one_of(  # weighted towards requests that get past the parser
    requests(),
    requests(),
    requests(),
    st.lists(requests(), min_size=2, max_size=3).map(b"".join),
    st.lists(requests(), min_size=2, max_size=3).map(b"".join),
    mutated(),
    st.binary(max_size=200),
)


# --- HTTP/1.1 fuzzing ------------------------------------------------------------------------


@FUZZ
@given(stream=STREAMS)
def test_fuzzed_request_streams_are_answered_or_closed_and_never_smuggled(plane, backend, stream):
    check_stream(plane, backend, stream + END)


@FUZZ
@given(stream=STREAMS)
def test_fuzzed_request_streams_cut_anywhere_leave_the_server_serving(plane, backend, stream):
    # No terminating request: the server is left waiting mid-request, as a client
    # that goes away leaves it; the client timeout (0.5 s) cleans up.
    check_stream(plane, backend, stream, quiet=0.3)


# --- holes found on this path, kept as plain examples ----------------------------------------


def raw_exchange(running: Running, payload: bytes) -> bytes:
    return exchange(running.plane.http_port, payload, quiet=5)


def test_trailer_fields_are_not_promoted_to_request_headers(plane, backend):
    backend.reset()
    received = raw_exchange(
        plane,
        b"POST /t HTTP/1.1\r\nHost: fuzz.test\r\nTransfer-Encoding: chunked\r\n"
        b"Connection: close\r\n\r\n3\r\nabc\r\n0\r\nX-Promoted: 1\r\nHost: evil.test\r\n\r\n",
    )
    assert received.startswith(b"HTTP/1.1 200 ")
    (seen,), errors = backend.reset()
    assert errors == []
    names = [name for name, _ in seen.headers]
    assert b"x-promoted" not in names
    assert dict(seen.headers)[b"host"] == b"fuzz.test"


@pytest.mark.parametrize(
    "codings",
    [[b"gzip", b"chunked"], [b"chunked", b"chunked"]],
    ids=["gzip-then-chunked", "chunked-twice"],
)
def test_transfer_encoding_split_over_two_fields_is_not_taken_for_plain_chunked(
    plane, backend, codings
):
    backend.reset()
    fields = b"".join(b"Transfer-Encoding: %s\r\n" % coding for coding in codings)
    received = raw_exchange(
        plane, b"POST /te HTTP/1.1\r\nHost: fuzz.test\r\n" + fields + b"\r\n0\r\n\r\n" + SMUGGLED
    )
    assert received.startswith((b"HTTP/1.1 400 ", b"HTTP/1.1 501 "))
    assert received.count(b"HTTP/1.1 ") == 1
    assert backend.reset() == ([], [])


def test_transfer_encoding_in_an_http10_request_is_refused(plane, backend):
    backend.reset()
    received = raw_exchange(
        plane,
        b"POST /old HTTP/1.0\r\nHost: fuzz.test\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\n\r\n" + SMUGGLED,
    )
    assert received.startswith(b"HTTP/1.1 400 ")
    assert received.count(b"HTTP/1.1 ") == 1
    assert backend.reset() == ([], [])


def test_upgrade_request_with_a_body_is_refused(plane, backend):
    # llhttp hands whatever follows an upgrade request's head to the upgraded
    # protocol, so its declared body would never be sent: the upstream would
    # wait for it and eat the next request's first bytes instead.
    backend.reset()
    received = raw_exchange(
        plane,
        b"POST /up HTTP/1.1\r\nHost: fuzz.test\r\nConnection: upgrade\r\nUpgrade: x\r\n"
        b"Content-Length: 5\r\n\r\nhello",
    )
    assert received.startswith(b"HTTP/1.1 400 ")
    assert backend.reset() == ([], [])


@pytest.mark.parametrize(
    "host",
    [b"fuzz.test/evil", b"fuzz test", b"fuzz.test\\x", b"fuzz.test:80:80", b"[::1", b"fuzz.test@x",
     b"a\xffb"],
    ids=repr,
)
def test_host_that_is_not_a_host_is_400(plane, backend, host):
    backend.reset()
    received = raw_exchange(plane, b"GET / HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
    assert received.startswith(b"HTTP/1.1 400 ")
    assert backend.reset() == ([], [])


@pytest.mark.parametrize(
    ("target", "status"),
    [(b"http://fuzz.test/abs", 200), (b"http://[::1]:80/", 404), (b"http://u:p@fuzz.test/", 400)],
    ids=["host", "ipv6-literal", "userinfo"],
)
def test_absolute_form_authority_is_checked_like_a_host(plane, target, status):
    received = raw_exchange(
        plane, b"GET %s HTTP/1.1\r\nHost: ignored.test\r\nConnection: close\r\n\r\n" % target
    )
    assert received.startswith(b"HTTP/1.1 %d " % status), received[:100]


@pytest.mark.parametrize("host", [b"fuzz.test", b"FUZZ.test:8080", b"fuzz.test.", b"[::1]:80",
                                  b"127.0.0.1", b""], ids=repr)
def test_ordinary_hosts_are_accepted(plane, host):
    received = raw_exchange(
        plane, b"GET / HTTP/1.1\r\nHost: " + host + b"\r\nConnection: close\r\n\r\n"
    )
    assert received.startswith((b"HTTP/1.1 200 ", b"HTTP/1.1 404 ")), received[:100]


def test_https_listener_survives_fuzzed_requests_too(plane):
    context = plane.ca.client_context()
    port = plane.plane.https_port
    assert port is not None
    for payload in (b"\x00" * 100, b"GET / HTTP/1.1\r\nHost: tls.test\r\nX: a\r\n b\r\n\r\n"):
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname="tls.test") as tls,
        ):
            tls.sendall(payload)
            received = b""
            with contextlib.suppress(OSError, ssl.SSLError):
                while chunk := tls.recv(65536):
                    received += chunk
        assert received.startswith(b"HTTP/1.1 400 ")
    conn = plane.https("tls.test")
    conn.request("GET", "/")
    assert conn.getresponse().status == 200
    conn.close()


# --- HTTP/2 frames -------------------------------------------------------------------------------


def h2_request() -> tuple[h2.connection.H2Connection, bytes]:
    """A client's preface, SETTINGS and one POST, as the h2 library writes them."""
    client = h2.connection.H2Connection(
        config=h2.config.H2Configuration(client_side=True, header_encoding=None)
    )
    client.initiate_connection()
    client.send_headers(
        1,
        [(b":method", b"POST"), (b":path", b"/h2"), (b":scheme", b"https"),
         (b":authority", b"tls.test"), (b"content-length", b"5")],
    )
    client.send_data(1, b"hello", end_stream=True)
    return client, client.data_to_send()


_, H2_REQUEST = h2_request()
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


@st.composite
def h2_streams(draw: st.DrawFn) -> bytes:
    how = draw(st.sampled_from(["flip", "cut", "frames", "append"]))
    if how == "flip":
        data = bytearray(H2_REQUEST)
        for _ in range(draw(st.integers(min_value=1, max_value=6))):
            where = draw(st.integers(min_value=len(H2_PREFACE), max_value=len(data) - 1))
            data[where] = draw(st.integers(min_value=0, max_value=255))
        return bytes(data)
    if how == "cut":
        return H2_REQUEST[: draw(st.integers(min_value=0, max_value=len(H2_REQUEST) - 1))]
    if how == "frames":  # well-framed garbage: any type, flags, stream and payload
        frames = []
        for _ in range(draw(st.integers(min_value=1, max_value=4))):
            payload = draw(st.binary(max_size=40))
            frames.append(
                len(payload).to_bytes(3, "big")
                + bytes([draw(st.integers(0, 10)), draw(st.integers(0, 255))])
                + draw(st.integers(0, 2**31 - 1)).to_bytes(4, "big")
                + payload
            )
        return H2_PREFACE + b"".join(frames)
    return H2_REQUEST + draw(st.binary(min_size=1, max_size=60))


def h2_exchange(
    running: Running, data: bytes, *, client: h2.connection.H2Connection | None = None
) -> list[h2.events.Event]:
    """Send `data` over TLS with ALPN h2; with `client`, return its events up to the end of
    stream 1, else read for 0.1 s and return nothing."""
    port = running.plane.https_port
    assert port is not None
    context = running.ca.client_context()
    context.set_alpn_protocols(["h2"])
    events: list[h2.events.Event] = []
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="tls.test") as tls,
    ):
        assert tls.selected_alpn_protocol() == "h2"
        with contextlib.suppress(OSError):
            tls.sendall(data)
        if client is None:
            tls.settimeout(0.1)
            with contextlib.suppress(OSError, ssl.SSLError):
                while tls.recv(65536):
                    pass
            return events
        while not any(isinstance(event, h2.events.StreamEnded) for event in events):
            chunk = tls.recv(65536)
            assert chunk, "the server closed before answering"
            events += client.receive_data(chunk)
    return events


@settings(FUZZ, max_examples=min(FUZZ.max_examples, 100))
@given(data=h2_streams())
def test_fuzzed_http2_frames_leave_the_server_serving(plane, backend, data):
    backend.reset()
    h2_exchange(plane, data)
    _, errors = backend.reset()
    assert errors == [], f"the backend could not parse what the proxy sent: {errors}"
    client, request = h2_request()
    statuses = [
        dict(event.headers)[b":status"]
        for event in h2_exchange(plane, request, client=client)
        if isinstance(event, h2.events.ResponseReceived)
    ]
    assert statuses == [b"200"]


@pytest.mark.parametrize(
    ("request_line", "keep_alive", "host", "answered"),
    [
        (b"GET /v HTTP/1.0", b"keep-alive", True, b"HTTP/1.1 200 "),
        (b"GET /v HTTP/1.0", b"", True, b"HTTP/1.1 200 "),
        (b"GET /v HTTP/1.0", b"", False, b"HTTP/1.1 404 "),  # HTTP/1.0 needs no Host
        (b"GET /v HTTP/1.1", b"keep-alive", True, b"HTTP/1.1 200 "),
        (b"GET /v HTTP/1.1", b"", False, b"HTTP/1.1 400 "),  # HTTP/1.1 does
    ],
    ids=["1.0-keep-alive", "1.0", "1.0-no-host", "1.1-keep-alive", "1.1-no-host"],
)
def test_the_request_version_decides_host_and_keep_alive(
    plane, backend, request_line, keep_alive, host, answered
):
    # The version is asked of httptools only when llhttp's keep-alive leaves it open
    # (http1_request's on_headers_complete): each way of coming to it is here.
    backend.reset()
    head = request_line + b"\r\n" + (b"Host: fuzz.test\r\n" if host else b"") + (
        b"Connection: " + keep_alive + b"\r\n" if keep_alive else b"") + b"\r\n"
    received = raw_exchange(plane, head + END)
    assert received.startswith(answered), received[:200]
    first_head = received.split(b"\r\n\r\n", 1)[0].lower()
    kept = (request_line.endswith(b"1.1") or keep_alive == b"keep-alive") \
        and answered != b"HTTP/1.1 400 "
    # An HTTP/1.0 client is told its connection stays; an HTTP/1.1 one assumes it.
    assert (b"\r\nconnection: keep-alive" in first_head) == (
        kept and request_line.endswith(b"1.0"))
    assert (b"\r\nconnection: close" in first_head) == (not kept)
    # The request after it is served only on a connection kept alive.
    assert received.count(b"HTTP/1.1 ") == (2 if kept else 1)
