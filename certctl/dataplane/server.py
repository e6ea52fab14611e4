"""The data plane's listeners: HTTP (ACME HTTP-01, redirects) and HTTPS (SNI), both proxying.

Each client connection is one coroutine that parses requests with httptools
and answers them in order. The parser's callbacks only queue events (request
head, body chunk, end of message); the coroutine consumes them and reads more
from the socket only when the queue is empty. That gives backpressure for free
(we never read faster than the upstream accepts), keeps pipelined requests in
order, and bounds buffering to one read.

Bodies are streamed in both directions and re-framed rather than copied
verbatim: the parser has already decoded chunked framing, so we always emit
framing we generated ourselves, which is what keeps request smuggling out.

The server runs on whatever event loop is running; the runtime picks uvloop
(`asyncio.Runner(loop_factory=uvloop.new_event_loop)`) when it is installed.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import re
import ssl
from collections import deque
from collections.abc import Callable
from typing import Final

import httptools

from certctl.dataplane import certstore, routing

logger = logging.getLogger(__name__)

ChallengeResponder = Callable[[str, str], str | None]
"""(host, token) -> the key authorization to serve, or None. Called on the event loop: be quick."""

_CHALLENGE_PREFIX: Final = "/.well-known/acme-challenge/"
_TOKEN: Final = re.compile(r"[A-Za-z0-9_-]+")
_READ_SIZE: Final = 65536
_MAX_HEAD: Final = 65536  # request line + headers; beyond this: 431

# Hop-by-hop headers (RFC 9110 7.6.1, plus the legacy ones proxies strip) and the
# ones we set ourselves. Names are compared lowercased.
_HOP_BY_HOP: Final = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authenticate",
        b"proxy-authorization",
    }
)
_REPLACED: Final = frozenset(
    {
        b"host",
        b"content-length",
        b"expect",
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"x-real-ip",
    }
)
_REASONS: Final = {
    200: b"OK",
    308: b"Permanent Redirect",
    400: b"Bad Request",
    404: b"Not Found",
    405: b"Method Not Allowed",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    501: b"Not Implemented",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
}


class DataPlane:
    """HTTP and HTTPS listeners routing requests per the current `RouteTable`.

    Routes start empty (every request 404s) until `set_routes`; swapping the
    table is one reference assignment, safe from any thread, and in-flight
    requests finish on the table they matched against.
    """

    def __init__(
        self,
        *,
        http_address: tuple[str, int],
        https_address: tuple[str, int] | None,
        certificates: certstore.CertificateIndex,
        challenge_responder: ChallengeResponder,
        connect_timeout: float = 5.0,
        upstream_timeout: float = 60.0,
        client_timeout: float = 60.0,
    ) -> None:
        """`upstream_timeout` bounds each wait for upstream bytes (like nginx's
        proxy_read_timeout); `client_timeout` bounds each wait for client
        bytes, including the idle time between keep-alive requests."""
        self._http_address = http_address
        self._https_address = https_address
        self.certificates = certificates
        self.challenge_responder = challenge_responder
        self.upstream_timeout = upstream_timeout
        self.client_timeout = client_timeout
        self._routes = routing.RouteTable.empty()
        self._servers: list[asyncio.Server] = []
        self._http_port: int | None = None
        self._https_port: int | None = None
        self.connector = _UpstreamConnector(connect_timeout=connect_timeout)
        self._connections: set[asyncio.Task[None]] = set()

    def set_routes(self, table: routing.RouteTable) -> None:
        self._routes = table

    @property
    def routes(self) -> routing.RouteTable:
        return self._routes

    @property
    def http_port(self) -> int:
        """The bound HTTP port (the real one when the address asked for port 0)."""
        if self._http_port is None:
            raise RuntimeError("DataPlane is not started")
        return self._http_port

    @property
    def https_port(self) -> int | None:
        """The bound HTTPS port, None when HTTPS is disabled or not started."""
        return self._https_port

    async def start(self) -> None:
        host, port = self._http_address
        server = await asyncio.start_server(self._serve_http, host, port, reuse_address=True)
        self._servers.append(server)
        self._http_port = server.sockets[0].getsockname()[1]
        if self._https_address is not None:
            context = certstore.new_server_context()
            context.sni_callback = self._on_sni
            host, port = self._https_address
            server = await asyncio.start_server(
                self._serve_https, host, port, ssl=context, reuse_address=True
            )
            self._servers.append(server)
            self._https_port = server.sockets[0].getsockname()[1]
        logger.info("data plane listening: http %s, https %s", self._http_port, self._https_port)

    async def stop(self) -> None:
        """Stop listening and drop open connections (in-flight requests are cut)."""
        for server in self._servers:
            server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()
        self._http_port = self._https_port = None

    def _on_sni(
        self, ssl_object: ssl.SSLObject, server_name: str | None, _context: ssl.SSLContext
    ) -> None:
        ssl_object.context = self.certificates.select(server_name)

    async def _serve_http(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self._serve(reader=reader, writer=writer, scheme=b"http")

    async def _serve_https(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await self._serve(reader=reader, writer=writer, scheme=b"https")

    async def _serve(
        self, *, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, scheme: bytes
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await _ClientConnection(plane=self, reader=reader, writer=writer, scheme=scheme).run()
        finally:
            self._connections.discard(task)
            writer.close()


class _UpstreamConnector:
    """Opens upstream connections; the seam where a keep-alive pool will go.

    Today every request gets a fresh connection and says `Connection: close`;
    a pool would keep released connections per address and hand them out
    again from `connect`.
    """

    def __init__(self, *, connect_timeout: float) -> None:
        self._connect_timeout = connect_timeout
        self._round_robin = itertools.count()

    async def connect(
        self, upstreams: tuple[routing.Upstream, ...]
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        """A connection to one of `upstreams`, or None when none accepts one (502).

        The start rotates with one process-wide counter, which spreads load
        evenly enough without per-backend state; a refused or timed-out
        connect moves on to the next address.
        """
        count = len(upstreams)
        start = next(self._round_robin) % count
        for offset in range(count):
            host, port = upstreams[(start + offset) % count]
            try:
                async with asyncio.timeout(self._connect_timeout):
                    return await asyncio.open_connection(host, port)
            except OSError as err:  # TimeoutError included
                logger.debug("upstream %s:%s: %r", host, port, err)
        logger.warning("no upstream of %d accepted a connection: %s", count, upstreams)
        return None

    def release(self, writer: asyncio.StreamWriter) -> None:
        """Done with a connection: requests said `Connection: close`, so close it."""
        writer.close()


class _ClientGone(Exception):
    """The client closed, timed out or upgraded away: no more requests on this connection."""


class _BadRequest(Exception):
    """The request stream cannot be parsed; answer `status` if nothing was sent yet, then close."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class _UpstreamError(Exception):
    """The upstream broke the exchange: 502 before the response head was sent, else abort."""


class _RequestHead:
    __slots__ = (
        "chunked",
        "content_length",
        "error",
        "expect_continue",
        "headers",
        "host",
        "keep_alive",
        "method",
        "target",
        "version",
    )

    def __init__(
        self,
        *,
        method: bytes,
        target: bytes,
        version: str,
        headers: list[tuple[bytes, bytes]],
        host: bytes | None,
        keep_alive: bool,
        content_length: bytes | None,
        chunked: bool,
        expect_continue: bool,
        error: int | None,
    ) -> None:
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers  # minus hop-by-hop and the ones we replace
        self.host = host
        self.keep_alive = keep_alive
        self.content_length = content_length
        self.chunked = chunked
        self.expect_continue = expect_continue
        self.error = error  # a status to answer instead of serving the request

    @property
    def has_body(self) -> bool:
        return self.chunked or (self.content_length is not None and self.content_length != b"0")


# Parser events: a request head, a body chunk, or None for the end of a message.
_Event = _RequestHead | bytes | None


class _ClientConnection:
    """One client connection; the `on_*` methods are httptools callbacks."""

    def __init__(
        self,
        *,
        plane: DataPlane,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        scheme: bytes,
    ) -> None:
        self._plane = plane
        self._reader = reader
        self._writer = writer
        self._scheme = scheme
        peer = writer.get_extra_info("peername")
        self._client_ip = str(peer[0]).encode() if peer else b""
        self._parser = httptools.HttpRequestParser(self)
        self._events: deque[_Event] = deque()
        self._end_of_stream: Exception | None = None
        self._in_head = False
        self._head_size = 0
        self._url: list[bytes] = []
        self._headers: list[tuple[bytes, bytes]] = []
        self._host: bytes | None = None
        self._content_length: bytes | None = None
        self._transfer_encoding: bytes | None = None
        self._expect_continue = False
        self._connection_tokens: list[bytes] = []
        self._head_error: int | None = None
        self._response_started = False

    # -- httptools callbacks ----------------------------------------------------

    def on_message_begin(self) -> None:
        self._in_head = True
        self._head_size = 0
        self._url = []
        self._headers = []
        self._host = self._content_length = self._transfer_encoding = None
        self._expect_continue = False
        self._connection_tokens = []
        self._head_error = None

    def on_url(self, url: bytes) -> None:
        self._url.append(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        lname = name.lower()
        if lname not in _HOP_BY_HOP and lname not in _REPLACED:
            self._headers.append((name, value))
        elif lname == b"host":
            if self._host is not None:
                self._head_error = 400  # RFC 9112 3.2: more than one Host
            self._host = value
        elif lname == b"content-length":
            self._content_length = value.strip()
        elif lname == b"transfer-encoding":
            self._transfer_encoding = value.strip().lower()
        elif lname == b"connection":
            self._connection_tokens.extend(t.strip().lower() for t in value.split(b","))
        elif lname == b"expect":
            self._expect_continue = value.strip().lower() == b"100-continue"

    def on_headers_complete(self) -> None:
        self._in_head = False
        parser = self._parser
        version = parser.get_http_version()
        error = self._head_error
        if self._content_length is not None and self._transfer_encoding is not None:
            error = 400  # llhttp refuses this too; never guess which framing wins
        elif self._transfer_encoding not in (None, b"chunked"):
            error = 501
        elif self._host is None and version != "1.0":
            error = 400
        method = parser.get_method()
        if method == b"CONNECT":
            error = 405  # we are a reverse proxy, not a tunnel
        headers = self._headers
        named = [t for t in self._connection_tokens if t not in (b"close", b"keep-alive")]
        if named:
            headers = [(n, v) for n, v in headers if n.lower() not in named]
        self._events.append(
            _RequestHead(
                method=method,
                target=b"".join(self._url),
                version=version,
                headers=headers,
                host=self._host,
                keep_alive=parser.should_keep_alive(),
                content_length=self._content_length,
                chunked=self._transfer_encoding is not None,
                expect_continue=self._expect_continue,
                error=error,
            )
        )

    def on_body(self, body: bytes) -> None:
        if body:
            self._events.append(body)

    def on_message_complete(self) -> None:
        self._events.append(None)

    # -- the connection loop ------------------------------------------------------

    async def run(self) -> None:
        """Serve requests until the client leaves, a response ends the connection, or an error.

        Errors are answered (400/431 for unparsable input, 500 for our own
        bugs) only while no response head was sent for the current request;
        after that the only honest signal left is closing the connection.
        """
        status: int | None = None
        try:
            while True:
                head = await self._next_event()
                assert isinstance(head, _RequestHead)
                self._response_started = False
                if not await self._handle(head):
                    return
        except (_ClientGone, ConnectionError):
            return
        except _BadRequest as err:
            status = err.status
        except Exception:
            logger.exception("request failed")
            status = 500
        if not self._response_started:
            with contextlib.suppress(ConnectionError):
                await self._respond_local(method=b"GET", status=status, keep_alive=False)

    async def _next_event(self) -> _Event:
        """The next parser event, reading from the client only when none is queued."""
        events = self._events
        while not events:
            if self._end_of_stream is not None:
                raise self._end_of_stream
            try:
                async with asyncio.timeout(self._plane.client_timeout):
                    data = await self._reader.read(_READ_SIZE)
            except (TimeoutError, ConnectionError):
                raise _ClientGone from None
            if not data:
                raise _ClientGone
            try:
                self._parser.feed_data(data)
            except httptools.HttpParserUpgrade:
                # Events up to the upgrade are served; then the stream is no
                # longer HTTP/1.1 and we do not tunnel (Upgrade is hop-by-hop).
                self._end_of_stream = _ClientGone()
            except httptools.HttpParserError:
                self._end_of_stream = _BadRequest(400)
            if self._in_head:
                self._head_size += len(data)
                if self._head_size > _MAX_HEAD:
                    raise _BadRequest(431)
        return events.popleft()

    def _request_fully_read(self) -> bool:
        """Discard body bytes already received; True when the whole request was consumed.

        Used before answering locally: a bodyless request (or a small body that
        came in the same read) keeps the connection; anything still in flight
        would have to be read to find the next request, so we close instead.
        """
        events = self._events
        while events:
            event = events.popleft()
            if event is None:
                return True
        return False

    async def _handle(self, head: _RequestHead) -> bool:
        """Serve one request; returns whether the connection stays open."""
        if head.error is not None:
            return await self._respond_local(
                method=head.method, status=head.error, keep_alive=False
            )
        target = head.target
        if target.startswith(b"/"):
            query = target.find(b"?")
            raw_path = target if query < 0 else target[:query]
        else:  # absolute-form: the authority replaces Host (RFC 9112 3.2.2)
            try:
                url = httptools.parse_url(target)
            except httptools.HttpParserInvalidURLError:
                return await self._respond_local(method=head.method, status=400, keep_alive=False)
            if not url.host:
                return await self._respond_local(method=head.method, status=400, keep_alive=False)
            head.host = url.host if url.port is None else b"%s:%d" % (url.host, url.port)
            raw_path = url.path or b"/"
            target = raw_path if url.query is None else raw_path + b"?" + url.query
        path = raw_path.decode("latin-1")
        host = routing.normalize_host(head.host.decode("latin-1")) if head.host else ""
        plane = self._plane

        if self._scheme == b"http":
            if path.startswith(_CHALLENGE_PREFIX) and head.method in (b"GET", b"HEAD"):
                token = path[len(_CHALLENGE_PREFIX) :]
                key_authorization = (
                    plane.challenge_responder(host, token) if _TOKEN.fullmatch(token) else None
                )
                if key_authorization is None:
                    return await self._respond_local(
                        method=head.method, status=404, keep_alive=head.keep_alive
                    )
                return await self._respond_local(
                    method=head.method,
                    status=200,
                    body=key_authorization.encode(),
                    keep_alive=head.keep_alive,
                )
            https_port = plane.https_port
            if https_port is not None and host and plane.certificates.has_certificate_for(host):
                authority = host if https_port == 443 else f"{host}:{https_port}"
                location = b"https://" + authority.encode() + target
                return await self._respond_local(
                    method=head.method,
                    status=308,
                    extra_headers=b"location: " + location + b"\r\n",
                    keep_alive=head.keep_alive,
                )

        match = plane.routes.match(host=host, path=path)
        if match is None:
            return await self._respond_local(
                method=head.method, status=404, keep_alive=head.keep_alive
            )
        if not match.upstreams:
            return await self._respond_local(
                method=head.method, status=503, keep_alive=head.keep_alive
            )
        return await self._proxy(head=head, target=target, upstreams=match.upstreams)

    async def _respond_local(
        self,
        *,
        method: bytes,
        status: int,
        keep_alive: bool,
        body: bytes | None = None,
        extra_headers: bytes = b"",
    ) -> bool:
        """Write a response we generate ourselves; returns whether the connection stays open."""
        keep_alive = keep_alive and self._request_fully_read()
        reason = _REASONS[status]
        if body is None:
            body = reason + b"\n"
        parts = [
            b"HTTP/1.1 %d %s\r\n" % (status, reason),
            b"content-type: text/plain; charset=utf-8\r\ncontent-length: %d\r\n" % len(body),
            extra_headers,
            b"\r\n" if keep_alive else b"connection: close\r\n\r\n",
        ]
        if method != b"HEAD":
            parts.append(body)
        self._response_started = True
        self._writer.write(b"".join(parts))
        await self._writer.drain()
        return keep_alive

    async def _proxy(
        self, *, head: _RequestHead, target: bytes, upstreams: tuple[routing.Upstream, ...]
    ) -> bool:
        plane = self._plane
        connection = await plane.connector.connect(upstreams)
        if connection is None:
            return await self._respond_local(method=head.method, status=502, keep_alive=False)
        upstream_reader, upstream_writer = connection
        try:
            await self._send_request(head=head, target=target, upstream=upstream_writer)
            return await self._relay_response(head=head, upstream=upstream_reader)
        except TimeoutError:
            if self._response_started:
                raise _ClientGone from None
            logger.warning("upstream %s timed out", upstream_writer.get_extra_info("peername"))
            return await self._respond_local(method=head.method, status=504, keep_alive=False)
        except (_UpstreamError, ConnectionError) as err:
            # A ConnectionError may be either side's; the upstream's when nothing
            # was sent yet, and answering a gone client fails harmlessly.
            if self._response_started:
                raise _ClientGone from None
            logger.warning(
                "upstream %s failed: %s", upstream_writer.get_extra_info("peername"), err
            )
            return await self._respond_local(method=head.method, status=502, keep_alive=False)
        finally:
            plane.connector.release(upstream_writer)

    async def _send_request(
        self, *, head: _RequestHead, target: bytes, upstream: asyncio.StreamWriter
    ) -> None:
        """Write the request head and stream its body to the upstream, re-framed."""
        host = head.host or b""
        parts = [head.method, b" ", target, b" HTTP/1.1\r\nhost: ", host, b"\r\n"]
        for name, value in head.headers:
            parts += (name, b": ", value, b"\r\n")
        ip = self._client_ip
        parts += (b"x-forwarded-for: ", ip, b"\r\nx-real-ip: ", ip, b"\r\n")
        parts += (b"x-forwarded-proto: ", self._scheme, b"\r\nx-forwarded-host: ", host, b"\r\n")
        if head.chunked:
            parts.append(b"transfer-encoding: chunked\r\n")
        elif head.content_length is not None:
            parts += (b"content-length: ", head.content_length, b"\r\n")
        parts.append(b"connection: close\r\n\r\n")
        upstream.write(b"".join(parts))

        if head.expect_continue and head.has_body and head.version != "1.0":
            # We answer the client's Expect ourselves and do not forward it, so
            # the upstream never has to and the body is not held back.
            self._writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        while True:
            event = await self._next_event()
            if event is None:
                break
            assert isinstance(event, bytes)
            if head.chunked:
                upstream.writelines((b"%x\r\n" % len(event), event, b"\r\n"))
            else:
                upstream.write(event)
            await upstream.drain()
        if head.chunked:
            upstream.write(b"0\r\n\r\n")
        await upstream.drain()

    async def _relay_response(self, *, head: _RequestHead, upstream: asyncio.StreamReader) -> bool:
        """Stream the upstream's response to the client; returns whether to keep the connection."""
        response = _UpstreamResponse(reader=upstream, timeout=self._plane.upstream_timeout)
        await response.read_head()
        client_http11 = head.version != "1.0"
        keep_alive = head.keep_alive
        bodyless = head.method == b"HEAD" or response.status in (204, 304)
        # Framing towards the client: keep a Content-Length, re-chunk the rest
        # for HTTP/1.1 clients, and fall back to closing for HTTP/1.0 ones.
        rechunk = False
        framing = b""
        if response.content_length is not None and not response.chunked:
            framing = b"content-length: " + response.content_length + b"\r\n"
        elif not bodyless and client_http11:
            rechunk = True
            framing = b"transfer-encoding: chunked\r\n"
        elif not bodyless:
            keep_alive = False
        if keep_alive:
            connection = b"" if client_http11 else b"connection: keep-alive\r\n"
        else:
            connection = b"connection: close\r\n"
        parts = [b"HTTP/1.1 %d %s\r\n" % (response.status, response.reason)]
        for name, value in response.headers:
            parts += (name, b": ", value, b"\r\n")
        parts += (framing, connection, b"\r\n")
        writer = self._writer
        self._response_started = True
        writer.write(b"".join(parts))
        if not bodyless:
            while (chunk := await response.next_chunk()) is not None:
                if rechunk:
                    writer.writelines((b"%x\r\n" % len(chunk), chunk, b"\r\n"))
                else:
                    writer.write(chunk)
                await writer.drain()
            if rechunk:
                writer.write(b"0\r\n\r\n")
        await writer.drain()
        return keep_alive


class _UpstreamResponse:
    """Parses one upstream response; the `on_*` methods are httptools callbacks.

    Informational (1xx) responses are skipped: we never forward `Expect` or
    `Upgrade`, so they can only be hints such as 103. A response with neither
    Content-Length nor chunked framing ends when the upstream closes.
    """

    def __init__(self, *, reader: asyncio.StreamReader, timeout: float) -> None:
        self._reader = reader
        self._timeout = timeout
        self._parser = httptools.HttpResponseParser(self)
        self._chunks: deque[bytes | None] = deque()
        self._head_done = False
        self._informational = False
        self.status = 0
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.content_length: bytes | None = None
        self.chunked = False
        self._named: list[bytes] = []

    def on_status(self, reason: bytes) -> None:
        self.reason = reason

    def on_header(self, name: bytes, value: bytes) -> None:
        lname = name.lower()
        if lname == b"content-length":
            self.content_length = value.strip()
        elif lname == b"transfer-encoding":
            self.chunked = True
        elif lname == b"connection":
            self._named.extend(t.strip().lower() for t in value.split(b","))
        elif lname not in _HOP_BY_HOP:
            self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200:
            self._informational = True
            self.headers = []
            self._named = []
            return
        self.status = status
        if self._named:
            named = self._named
            self.headers = [(n, v) for n, v in self.headers if n.lower() not in named]
        self._head_done = True

    def on_body(self, body: bytes) -> None:
        if body:
            self._chunks.append(body)

    def on_message_complete(self) -> None:
        if self._informational:
            self._informational = False
            return
        self._chunks.append(None)

    async def _feed(self) -> bool:
        """Read and parse one chunk from the upstream; False at end of stream."""
        async with asyncio.timeout(self._timeout):
            data = await self._reader.read(_READ_SIZE)
        if not data:
            return False
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as err:
            raise _UpstreamError(f"invalid response: {err}") from None
        except httptools.HttpParserUpgrade:
            raise _UpstreamError("unexpected protocol upgrade") from None
        return True

    async def read_head(self) -> None:
        while not self._head_done:
            if not await self._feed():
                raise _UpstreamError("closed before sending a response")
        if self.status == 101:
            raise _UpstreamError("unexpected protocol upgrade")

    async def next_chunk(self) -> bytes | None:
        """The next body chunk, or None at the end of the body."""
        chunks = self._chunks
        while not chunks:
            if not await self._feed():
                if self.content_length is None and not self.chunked:
                    return None  # close-delimited body: EOF is the end
                raise _UpstreamError("closed in the middle of the body")
        return chunks.popleft()
