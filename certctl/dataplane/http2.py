"""HTTP/2 over TLS (ALPN `h2`): each stream routed and proxied as an HTTP/1.1 request.

`h2_server` (sans-IO, compiled) does the framing, stream states and
flow-control accounting, with our compiled HPACK codec (`hpack_codec`); this
module checks request headers itself (in the pass that reads them), maps the
framing layer's events to the same decisions as
HTTP/1.1 (`dispatch.decide`) and the same pooled upstream connections, one
upstream exchange per stream. Backends speak HTTP/1.1, as behind
ingress-nginx, unless their route says GRPC, GRPCS or H2C (backend-protocol):
then each stream is a stream to the backend too (`upstream_h2`), with `te:
trailers` passed on and trailers relayed both ways. A gRPC call the data
plane refuses itself (access rules, limits, no route or endpoint) is
answered as gRPC servers refuse one, trailers-only with the gRPC status its
HTTP status maps to (`_answer_grpc`). What the framing layer queues is
written once per event-loop turn (`flush`), and a response's head waits
for the body its upstream read brought, so a small response is two frames
in one TLS record shared with other streams.
h2spec's whole suite passes (tests/test_h2spec.py); the CPU per request is
compared with nginx in bench B10.

Flow control instead of buffering, per stream:
- request bodies are acknowledged to the client (WINDOW_UPDATE) only once
  written to the upstream, so a client cannot send more than its window
  ahead of a slow backend;
- response bodies are sent as the client's windows allow; what does not fit
  waits in the stream, and past 64 KB the upstream stops being read until
  the client's WINDOW_UPDATE makes room.

Rapid reset (CVE-2023-44487): a client that cancels more than `RESET_BURST`
streams, refilled at `RESET_RATE` per second (browsers cancel a few when the
user navigates away), gets a GOAWAY with ENHANCE_YOUR_CALM and is
disconnected. Each cancelled stream was routed and handed an upstream
connection, which is closed if the request had reached it (the exchange is
out of step): without a limit one client could keep the proxy and the
backends busy with requests nobody waits for, never more than
MAX_CONCURRENT_STREAMS open at a time.

Not supported: upgrades inside HTTP/2 (extended CONNECT for WebSocket, RFC
8441: not advertised, so clients use HTTP/1.1 for WebSocket), server push,
and trailers to or from HTTP/1.1 backends (dropped: that leg has no TE).
A reset by an HTTP/2 backend resets the client's stream (with the backend's
code when it is about the request, `upstream_h2.StreamReset`), and a client's
reset resets the backend's stream.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import deque
from typing import Final, cast

from certctl.dataplane import (
    affinity,
    dispatch,
    forwarding,
    h2_server,
    legs,
    limits,
    reasons,
    routing,
    services,
    upstream,
    upstream_h2,
)
from certctl.routes import options as route_options

logger = logging.getLogger(__name__)
# How often one request is sent again after a backend refused it unprocessed. grpc-core
# refuses a stream placed in a slot whose last stream it still counts; with many requests
# waiting, every slot freed in a burst of answers is taken at once, so one request can
# meet such a refusal on connection after connection (a clean-clone CI run saw a call
# get 502 after three).
UNPROCESSED_RETRIES: Final = 8

MAX_CONCURRENT_STREAMS: Final = 128
RESET_BURST: Final = 200  # streams a client may cancel at once ...
RESET_RATE: Final = 100.0  # ... and per second after that
MAX_HEADER_LIST_SIZE: Final = 65536  # as HTTP/1.1's request head limit (431 there)
_PENDING_LIMIT: Final = 65536  # response bytes held per stream before the upstream is paused
# What the client may send ahead on each stream and on the connection (so 1 MiB in
# flight per client connection whatever its streams): a request body up to 1 MiB
# needs no WINDOW_UPDATE before the backend has read it.
_INITIAL_WINDOW: Final = 1 << 20
# The framing layer checks no header: a request's are checked by `_Stream` as it
# reads them (and trailers by `_trailers`), h2spec's HTTP message cases hold us to
# it; a response's are the backend's, parsed by httptools (tokens only), lowercased
# and stripped of hop-by-hop fields by us.
_CONNECTION_SPECIFIC: Final = frozenset(
    {b"connection", b"proxy-connection", b"keep-alive", b"transfer-encoding", b"upgrade"}
)
# A field name is an RFC 9110 token, lowercase (RFC 9113 8.2.1): nothing else can be
# forwarded on the HTTP/1.1 leg either.
_token: Final = re.compile(rb"[!#$%&'*+\-.^_`|~0-9a-z]+").fullmatch
# A field value holds no NUL, CR or LF and neither starts nor ends with a space or tab.
_bad_value: Final = re.compile(rb"[\x00\r\n]|\A[ \t]|[ \t]\Z").search
# A gRPC request (application/grpc, alone or +proto, +json...; not grpc-web, whose
# clients read an HTTP status): refused here, it is answered the way gRPC servers refuse
# a call (`_answer_grpc`).
_grpc_content_type: Final = re.compile(rb"application/grpc(?:[+;].*)?", re.IGNORECASE).fullmatch
# gRPC's "HTTP to gRPC status code mapping" (doc/http-grpc-status-mapping.md); any other
# status is UNKNOWN (2).
_GRPC_STATUS: Final = {
    400: 13,  # INTERNAL
    401: 16,  # UNAUTHENTICATED
    403: 7,  # PERMISSION_DENIED
    404: 12,  # UNIMPLEMENTED
    429: 14,  # UNAVAILABLE (retryable, as Envoy's rate limits default to)
    502: 14,
    503: 14,  # also limit-rps and limit-connections: retried later, like a 429
    504: 14,
}
# grpc-message is percent-encoded: bytes outside visible ASCII and space, and "%".
_grpc_message_escaped: Final = re.compile(rb"[^\x20-\x24\x26-\x7e]")


class _Stream:
    """One request stream; implements `upstream.Exchange` for its upstream connection."""

    def __init__(
        self, *, owner: Http2Connection, stream_id: int, headers: list[tuple[bytes, bytes]]
    ) -> None:
        self.owner = owner
        self.stream_id = stream_id
        self.method = b""
        self.path = b""
        self.authority: bytes | None = None
        self.content_length: bytes | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        # Why the request is malformed (RFC 9113 8.1.1, answered with RST_STREAM
        # PROTOCOL_ERROR); checked here in the one pass that reads the headers.
        self.malformed: str | None = None
        scheme: bytes | None = None
        path_seen = False
        host: bytes | None = None
        cookies: list[bytes] = []
        regular = False  # a regular field was seen: no pseudo-header may follow
        for name, value in headers:
            if value and _bad_value(value) is not None:
                self.malformed = f"invalid value of {name!r}"
            if name[:1] == b":":
                if regular:
                    self.malformed = f"pseudo-header {name!r} after a regular field"
                elif name == b":method" and not self.method:
                    self.method = value
                elif name == b":path" and not path_seen:
                    self.path, path_seen = value, True
                elif name == b":scheme" and scheme is None:
                    scheme = value
                elif name == b":authority" and self.authority is None:
                    self.authority = value
                else:  # repeated, a response's (:status), :protocol (not offered), unknown
                    self.malformed = f"unexpected pseudo-header {name!r}"
                continue
            regular = True
            if name == b"cookie":
                cookies.append(value)  # HTTP/2 may split cookies into crumbs
                continue
            if _token(name) is None:
                self.malformed = f"invalid field name {name!r}"
            elif name in _CONNECTION_SPECIFIC or (name == b"te" and value.lower() != b"trailers"):
                self.malformed = f"connection-specific field {name!r}"
            elif name == b"host":
                if host is not None:
                    self.malformed = "two Host fields"
                host = value
                continue  # the authority, sent as Host upstream
            elif name == b"content-length":
                self.content_length = value
            self.headers.append((name, value))
        if cookies:
            self.headers.append((b"cookie", b"; ".join(cookies)))
        if not self.method or (self.method != b"CONNECT" and (not self.path or scheme is None)):
            self.malformed = "missing :method, :scheme or :path (or an empty :path)"
        if host is not None:
            if self.authority is not None and self.authority != host:
                self.malformed = ":authority and Host differ"
            self.authority = host
        elif self.authority is None:
            self.malformed = "neither :authority nor Host"
        self.chunked = False  # the request body goes upstream chunked (no Content-Length)
        self.body_done = False
        self.body_queue: deque[tuple[bytes, int]] = deque()  # (data, flow-controlled length)
        self.body_sent = 0
        # The body written to an HTTP/2 backend, until its answer: sent again if it
        # refuses the stream unprocessed (None: more than upstream_h2.RESEND_LIMIT).
        self.sent_body: list[bytes] | None = []
        self.match: routing.RouteMatch | None = None
        self.target = b""
        self.route_host = ""
        self.limit_slot: limits.Slot | None = None  # released when the stream is forgotten
        # Added to the backend's response, replacing its same-named ones (CORS headers).
        self.extra_headers: tuple[tuple[bytes, bytes], ...] = ()
        self.connection: upstream.Leg | None = None
        self.upstream_paused = False
        self.read_timeout = 0.0
        self.deadline = 0.0
        self.started_at = 0.0
        self.response_started = False
        self.status = 0
        self.head_pending: list[tuple[bytes, bytes]] | None = None  # not sent yet
        self.pending = bytearray()  # response bytes waiting for flow-control window
        self.trailers: list[tuple[bytes, bytes]] | None = None  # sent after `pending`
        self.request_trailers: list[tuple[bytes, bytes]] | None = None  # for an HTTP/2 backend
        self.end_after_pending = False
        self.upstream_reading_paused = False
        self.retried = 0  # sent again unprocessed (see upstream_failed)
        self.tried = 0  # endpoints tried (proxy-next-upstream)
        self.tried_since = 0.0
        self.finished = False

    def header(self, lname: bytes) -> bytes | None:
        for name, value in self.headers:
            if name == lname:
                return value
        return None

    # -- upstream.Exchange ----------------------------------------------------------------

    def response_head(self, head: upstream.ResponseHead) -> None:
        match = self.match
        assert match is not None
        self.sent_body = None  # answered: never sent again
        now = time.monotonic()
        self.deadline = now + self.read_timeout
        self.owner.services.counts.observe_upstream(
            service=match.service, seconds=now - self.started_at
        )
        options = match.options
        balancing = options.balancing
        if balancing is not None and balancing.ewma and self.connection is not None:
            self.owner.services.pool.latencies.observe(self.connection.address,
                                                       now - self.started_at, now=now)
        policy = options.next_upstream
        if (
            policy is not None
            and head.status in policy.statuses
            and self.body_sent == 0
            and self.body_done
            and self.try_next(policy)
        ):
            return
        errors = match.errors
        if (
            errors is not None
            and head.status in errors.codes
            and self.body_sent == 0
            and self.body_done
        ):
            self.error_page(errors, head.status)
            return
        headers = [(b":status", b"%d" % head.status)]
        extra = self.extra_headers
        if extra:
            replaced = {name for name, _ in extra} - dispatch.ADDED_BESIDE
            headers += [(name.lower(), value) for name, value in head.headers
                        if name.lower() not in replaced]
            headers += [(name.lower(), value) for name, value in extra]  # not lowercased below
        else:
            headers += [(name.lower(), value) for name, value in head.headers]
        if not head.has_server:
            headers.append((b"server", dispatch.SERVER))
        if head.content_length is not None and not head.chunked:
            headers.append((b"content-length", head.content_length))
        hsts = match.options.hsts_line
        if hsts is not None:
            headers.append((b"strict-transport-security", hsts.split(b": ", 1)[1].strip()))
        self.response_started = True
        self.status = head.status
        if self.method == b"HEAD" or head.status in (204, 304):
            self.owner.send_headers(self, headers, end_stream=True)
            self.end_after_pending = True
            return
        # Sent with the body this read brought (`send_pending`): a small response is one
        # HEADERS and one DATA frame that ends the stream, not a third to end it.
        self.head_pending = headers

    def bad_gateway(self) -> None:
        """No endpoint answered: 502, or the default backend's page for it when listed in
        custom-http-errors (nginx's error_page takes its own 502s too)."""
        errors = None if self.match is None else self.match.errors
        if errors is not None and 502 in errors.codes and self.body_sent == 0 and self.body_done:
            self.error_page(errors, 502)
            return
        self.owner.answer(self, status=502)

    def error_page(self, errors: routing.ErrorRoute, code: int) -> None:
        """custom-http-errors: the backend's answer (unread) is replaced by the default
        backend's to the request sent again for `/` with X-Code and the rest; whatever that
        answers goes to the client, and is never replaced in turn."""
        connection, self.connection = self.connection, None
        if connection is not None:
            connection.reusable = False
            connection.close()
        route = errors.route
        if route is None or not route.upstreams:
            self.owner.answer(self, status=code if route is None else 503)
            return
        self.headers = dispatch.replace_headers(self.headers, dispatch.error_page_headers(
            errors, code=code, target=self.path, header=self.header))
        self.match = route
        self.target = b"/"
        self.tried = 0
        self.retried = 0
        self.owner.connect(self, fresh=False)
        self.owner.flush()

    def response_body(self, chunk: bytes) -> None:
        if self.end_after_pending:
            return  # a body where none may be: dropped, as HTTP/2 cannot carry it
        self.pending += chunk

    def response_flush(self) -> None:
        """The upstream's bytes so far are framed: send them, once per read."""
        self.deadline = time.monotonic() + self.read_timeout
        self.owner.send_pending(self)

    def response_complete(self) -> None:
        connection, self.connection = self.connection, None
        if connection is not None:
            if not self.body_done:
                connection.reusable = False
            self.owner.services.pool.release(connection)
        if not self.end_after_pending:
            self.end_after_pending = True
            self.owner.send_pending(self)

    def response_trailers(self, trailers: list[tuple[bytes, bytes]]) -> None:
        """An HTTP/2 backend's trailers (gRPC's status): sent once the body is out."""
        if not self.end_after_pending:
            self.trailers = trailers

    def response_upgraded(self, leftover: bytes) -> None:
        self.upstream_failed(upstream.UpstreamError("unexpected protocol upgrade"))

    def tunnel_data(self, data: bytes) -> None:
        raise AssertionError("HTTP/2 streams never tunnel")

    def upstream_failed(self, error: Exception | None) -> None:
        connection, self.connection = self.connection, None
        if connection is not None:
            connection.close()
        if self.finished:
            return
        if self.response_started:
            self.owner.reset(self, error_code=error.client_code
                             if isinstance(error, upstream_h2.StreamReset)
                             else h2_server.CANCEL)
            return
        if (
            connection is not None
            and connection.reused
            and not connection.received_any
            and (self.body_sent == 0 or (self.sent_body is not None
                                         and isinstance(connection, upstream_h2.Stream)))
            and self.body_done
            and self.retried < UNPROCESSED_RETRIES
        ):
            # A kept-alive connection closed while idle, or an HTTP/2 backend refusing the
            # stream unprocessed (RFC 9113 8.7; grpc-core does while 300 calls arrive at
            # once): nothing reached the backend, so it is sent again (with the body kept of
            # what went to that stream), a few times at most, on a connection with room
            # (not the refusing one: `upstream_h2.Connection.stream_refused`).
            self.retried += 1
            self.owner.connect(self, fresh=True)
            return
        policy = None if self.match is None else self.match.options.next_upstream
        if (
            policy is not None
            and policy.error
            and connection is not None
            and self.body_sent == 0
            and self.body_done
            and self.try_next(policy, failed=connection)
        ):
            return
        address = connection.address if connection is not None else ("?", 0)
        logger.warning("upstream %s:%s failed: %s", *address, error or "closed")
        self.bad_gateway()

    def upstream_write_paused(self, paused: bool) -> None:
        self.upstream_paused = paused
        if not paused:
            self.owner.send_body(self)

    def try_next(
        self, policy: route_options.NextUpstream, failed: upstream.Leg | None = None,
    ) -> bool:
        """proxy-next-upstream: send the request to the next endpoint, if the policy lets
        it, dropping the one that failed (its answer unread); False: answer with it."""
        connection = failed or self.connection
        assert self.match is not None and connection is not None
        start = dispatch.next_endpoint(policy, match=self.match, address=connection.address,
                                       tried=self.tried, since=self.tried_since,
                                       method=self.method)
        if start is None:
            return False
        logger.info("upstream %s:%s failed; trying the next endpoint", *connection.address)
        self.connection = None
        connection.reusable = False
        connection.close()
        self.owner.open_from(self, start, fresh=False)
        self.owner.flush()
        return True


class Http2Connection(asyncio.Protocol):
    """One HTTP/2 client connection, handed over by `ClientConnection` after ALPN chose h2."""

    def __init__(
        self, *, services: services.Services, client_ip: bytes,
        client_certificate: bytes | None = None,
    ) -> None:
        self.services = services
        self._client_ip = client_ip
        self._client_certificate = client_certificate  # DER, checked at the handshake
        self._transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()  # constructed on it, by ClientConnection
        self._h2 = h2_server.ServerConnection(
            max_concurrent_streams=MAX_CONCURRENT_STREAMS,
            max_header_list_size=MAX_HEADER_LIST_SIZE, initial_window=_INITIAL_WINDOW)
        self._streams: dict[int, _Stream] = {}
        self._closed = False
        self._flush_scheduled = False
        self._client_slow = False
        self._deadline = 0.0
        self._reset_allowance = float(RESET_BURST)  # a token bucket of client resets
        self._reset_checked = time.monotonic()
        # Draining (the data plane stops): the last stream id our GOAWAY let through.
        self._last_stream: int | None = None

    # -- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        self._deadline = time.monotonic() + self.services.client_timeout
        self.services.connection_opened(self)
        self._write_out()  # the preface: our settings, the connection's window
        if self.services.draining:  # a handshake that completed after the listeners closed
            self.drain()

    def data_received(self, data: bytes) -> None:
        try:
            events = self._h2.receive_data(data)
        except h2_server.ProtocolError:
            self._write_out()  # the GOAWAY queued
            self._close()
            return
        for event in events:
            if isinstance(event, h2_server.RequestReceived):
                self._request(event)
            elif isinstance(event, h2_server.DataReceived):
                self._data(event)
            elif isinstance(event, h2_server.TrailersReceived):
                self._trailers(event)
            elif isinstance(event, h2_server.StreamEnded):
                stream = self._streams.get(event.stream_id)
                if stream is not None and not stream.body_done:
                    stream.body_queue.append((b"", 0))  # the end of the body
                    self.send_body(stream)
            elif isinstance(event, h2_server.StreamReset):
                self._forget(event.stream_id, cancel=True)
                if event.remote_reset and not self._allow_reset():
                    logger.info("HTTP/2 client %s cancels streams too fast: disconnected",
                                self._client_ip.decode())
                    self._h2.close_connection(error_code=h2_server.ENHANCE_YOUR_CALM)
                    self._write_out()
                    self._close()
                    return
            elif isinstance(event, h2_server.WindowUpdated):
                targets = (
                    list(self._streams.values())
                    if event.stream_id == 0
                    else [s for s in (self._streams.get(event.stream_id),) if s is not None]
                )
                for stream in targets:
                    self.send_pending(stream)
            elif isinstance(event, h2_server.ConnectionTerminated):
                self._write_out()
                self._close()
                return
        self.flush()

    def eof_received(self) -> bool | None:
        return None

    def _allow_reset(self) -> bool:
        """Take one client reset from the allowance; False once it is spent."""
        now = time.monotonic()
        refilled = self._reset_allowance + (now - self._reset_checked) * RESET_RATE
        self._reset_allowance = min(float(RESET_BURST), refilled) - 1
        self._reset_checked = now
        return self._reset_allowance >= 0

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self.services.connection_closed(self)
        for stream_id in list(self._streams):
            self._forget(stream_id, cancel=True)

    def pause_writing(self) -> None:
        self._client_slow = True
        for stream in self._streams.values():
            if stream.connection is not None:
                stream.connection.pause_reading(True)

    def resume_writing(self) -> None:
        self._client_slow = False
        for stream in self._streams.values():
            if stream.connection is not None and not stream.upstream_reading_paused:
                stream.connection.pause_reading(False)

    def check_deadline(self, now: float) -> None:
        """Called by the sweeper: time out streams waiting on upstreams, and idleness."""
        if self._closed:
            return
        for stream in list(self._streams.values()):
            if now >= stream.deadline and not stream.finished and stream.match is not None:
                if stream.response_started:
                    self.reset(stream)
                else:
                    connection, stream.connection = stream.connection, None
                    if connection is not None:
                        logger.warning("upstream %s:%s timed out", *connection.address)
                        policy = stream.match.options.next_upstream
                        if (
                            policy is not None
                            and policy.timeout
                            and stream.body_sent == 0
                            and stream.body_done
                            and stream.try_next(policy, failed=connection)
                        ):
                            continue
                        connection.close()
                    self.answer(stream, status=504)
        if self._streams:
            self._deadline = now + self.services.client_timeout
        elif now >= self._deadline:
            self._h2.close_connection()
            self._write_out()
            self._close()

    def close(self) -> None:
        """Stop serving this connection now (the data plane is stopping)."""
        if self._transport is not None and not self._closed:
            self._closed = True
            self._transport.abort()

    def drain(self) -> None:
        """The data plane stops: a GOAWAY (NO_ERROR) naming the last stream opened, whose
        streams finish; later ones are refused, and the connection closes once none is
        left (RFC 9113 6.8)."""
        if self._closed or self._last_stream is not None or self._transport is None:
            return
        self._last_stream = self._h2.announce_shutdown()
        self._write_out()  # and closes at once if no stream is open

    # -- requests -----------------------------------------------------------------------------

    def _request(self, event: h2_server.RequestReceived) -> None:
        stream_id = event.stream_id
        if self._last_stream is not None and stream_id > self._last_stream:
            # Opened after our GOAWAY: the client may retry it elsewhere.
            self._h2.reset_stream(stream_id, error_code=h2_server.REFUSED_STREAM)
            return
        stream = _Stream(owner=self, stream_id=stream_id, headers=event.headers)
        stream.body_done = event.stream_ended
        self._streams[stream_id] = stream
        if stream.malformed is not None:
            self._refuse_malformed(stream_id)
            return
        stream.deadline = time.monotonic() + self.services.client_timeout
        if stream.method == b"CONNECT":
            self.answer(stream, status=400)  # not a tunnel, and extended CONNECT is not offered
            return
        if not dispatch.is_request_line_safe(method=stream.method, target=stream.path):
            self.answer(stream, status=400)
            return
        decision = dispatch.decide(
            services=self.services,
            scheme=b"https",
            method=stream.method,
            target=stream.path,
            authority=stream.authority,
            header=stream.header,
            content_length=stream.content_length,
            client_ip=self._client_ip,
            client_certificate=self._client_certificate,
        )
        stream.route_host = decision.route_host
        stream.limit_slot = decision.slot
        stream.extra_headers = decision.headers
        match = decision.match
        if match is None:
            self.answer(stream, status=decision.status, body=decision.body,
                        headers=decision.headers)
            return
        stream.authority = decision.authority
        if decision.request_headers or match.options.client_certificates is not None:
            stream.headers = dispatch.upstream_request_headers(stream.headers, decision,
                                                               match.options)
        stream.match = match
        stream.target = decision.target
        stream.read_timeout = match.options.read_timeout or self.services.upstream_timeout
        stream.deadline = time.monotonic() + stream.read_timeout
        options = match.options
        rules = options.access
        if options.external_auth is not None and not (
            rules is not None and rules.satisfied_by_address(self._client_ip)
        ):
            self.services.spawn(self._authorize(stream, options.external_auth))
            return
        self.connect(stream, fresh=False)

    async def _authorize(self, stream: _Stream, rules: route_options.ExternalAuth) -> None:
        """auth-url: ask the auth service, then forward the stream's request or answer it."""
        authority = stream.authority or b""
        verdict = await self.services.external_auth.check(
            rules=rules, scheme=b"https", method=stream.method, target=stream.path,
            http_host=authority, host=routing.normalize_host(authority.decode("latin-1")),
            client_ip=self._client_ip, headers=stream.headers)
        if self._closed or stream.finished:
            return
        if verdict.status:
            self.answer(stream, status=verdict.status, headers=verdict.client_headers)
            self.flush()
            return
        if verdict.upstream_headers:  # the auth service's word replaces the client's
            stream.headers = dispatch.replace_headers(stream.headers, verdict.upstream_headers)
        stream.extra_headers += verdict.client_headers
        self.connect(stream, fresh=False)
        self.flush()

    def connect(self, stream: _Stream, *, fresh: bool) -> None:
        match = stream.match
        assert match is not None
        options = match.options
        if options.affinity is not None or options.balancing is not None:
            start = dispatch.first_endpoint(  # per request: only then
                services=self.services, match=match, header=stream.header, method=stream.method,
                target=stream.path, authority=stream.authority, scheme=b"https",
                client_ip=self._client_ip)
        else:
            start = self.services.round_robin.start(len(match.upstreams))
        self.open_from(stream, start, fresh=fresh)

    def open_from(self, stream: _Stream, start: int, *, fresh: bool) -> None:
        """Use an idle pooled connection (or a stream on an HTTP/2 backend's connection)
        to the endpoint at `start` at once, or find one from there in a task."""
        match = stream.match
        assert match is not None
        if stream.tried == 0 and match.options.next_upstream is not None:
            stream.tried_since = time.monotonic()
        if not fresh:
            leg = legs.take(self.services, match, start)
            if leg is not None:
                self._attach(stream, leg)
                return
        self.services.spawn(self._open(stream, start=start, fresh=fresh))

    async def _open(self, stream: _Stream, *, start: int, fresh: bool) -> None:
        match = stream.match
        assert match is not None
        leg = await legs.connect(self.services, match, start=start, fresh=fresh,
                                 tried=stream.tried, tried_since=stream.tried_since)
        if leg is not None:
            if self._closed or stream.finished:
                self.services.pool.release(leg)  # unused: the client reset or left meanwhile
                return
            self._attach(stream, leg)
            self.flush()
            return
        if not self._closed and not stream.finished:
            stream.bad_gateway()
            self.flush()

    def _attached(self, stream: _Stream, leg: upstream.Leg) -> None:
        """`leg` serves the stream from now on."""
        stream.connection = leg
        stream.upstream_paused = False
        stream.tried += leg.tries
        if stream.match is not None and stream.match.options.affinity is not None:
            stream.extra_headers = affinity.with_cookie(
                stream.extra_headers, match=stream.match, cookie_header=stream.header(b"cookie"),
                address=leg.address)
        stream.started_at = time.monotonic()

    def _attach(self, stream: _Stream, leg: legs.Leg) -> None:
        if isinstance(leg, upstream_h2.Stream):
            self._attach_h2(stream, leg)
        else:
            self._attach_h1(stream, leg)

    def _attach_h1(self, stream: _Stream, connection: upstream.UpstreamConnection) -> None:
        self._attached(stream, connection)
        host = stream.authority or b""
        chunked = stream.content_length is None and not stream.body_done
        match = stream.match
        assert match is not None
        stream.chunked = chunked
        # The pseudo-headers are the request line and Host; the client's fields were
        # checked as HTTP/2's (lowercase) but not against what is not forwarded.
        connection.begin(
            exchange=stream,
            request=forwarding.request_head(
                method=stream.method, target=stream.target,
                host=match.options.upstream_vhost or host, headers=stream.headers,
                checked=False, forwarded=forwarding.forwarded_lines(
                    client_ip=self._client_ip, proto=b"https", host=host),
                upgrade=None, chunked=chunked,
                content_length=stream.content_length),
            head_only=stream.method == b"HEAD",
        )
        if self._client_slow:
            connection.pause_reading(True)
        self.send_body(stream)

    def _attach_h2(self, stream: _Stream, leg: upstream_h2.Stream) -> None:
        """Forward the stream's request as a stream to an HTTP/2 backend (GRPC, GRPCS,
        H2C), `te: trailers` included when the client sent it."""
        self._attached(stream, leg)
        match = stream.match
        assert match is not None
        host = stream.authority or b""
        stream.chunked = False
        headers = upstream_h2.request_headers(
            method=stream.method, scheme=b"https" if match.options.backend_tls else b"http",
            target=stream.target, authority=match.options.upstream_vhost or host,
            headers=stream.headers, content_length=stream.content_length,
            te_trailers=stream.header(b"te") is not None, client_ip=self._client_ip,
            forwarded_proto=b"https", forwarded_host=host)
        # What went to a stream the backend refused (`upstream_failed`), sent again.
        sent = stream.sent_body or ()
        trailers = stream.request_trailers
        leg.begin(exchange=stream, headers=headers,
                  end_stream=stream.body_done and not sent and trailers is None)
        if stream.connection is leg and stream.body_done and (sent or trailers is not None):
            for piece in sent:
                leg.write(piece)
            leg.end(trailers)
        if self._client_slow and stream.connection is leg:
            leg.pause_reading(True)
        self.send_body(stream)

    def _data(self, event: h2_server.DataReceived) -> None:
        stream = self._streams.get(event.stream_id)
        if stream is None:
            # Body of a stream already answered: give the connection's window back.
            if event.flow_controlled_length:
                self._h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            return
        stream.body_queue.append((event.data, event.flow_controlled_length))
        self.send_body(stream)

    def send_body(self, stream: _Stream) -> None:
        """Write queued body pieces upstream and return their window to the client; stop
        while the upstream leg cannot take more (`upstream_write_paused`)."""
        connection = stream.connection
        if connection is None or stream.upstream_paused or stream.finished:
            return
        match = stream.match
        assert match is not None
        limit = match.options.body_size_limit
        chunked = stream.chunked
        h2_leg = connection if isinstance(connection, upstream_h2.Stream) else None
        while stream.body_queue and not stream.upstream_paused:
            data, flow_length = stream.body_queue.popleft()
            if not data and not flow_length:
                stream.body_done = True
                if h2_leg is not None:
                    h2_leg.end(stream.request_trailers)
                elif chunked:
                    connection.write(b"0\r\n\r\n")
                continue
            stream.body_sent += len(data)
            if limit is not None and stream.body_sent > limit:
                stream.connection = None
                connection.close()
                if stream.response_started:
                    self.reset(stream)
                else:
                    self.answer(stream, status=413)
                return
            if data:
                connection.write(b"%x\r\n%s\r\n" % (len(data), data) if chunked else data)
                sent = stream.sent_body
                if h2_leg is not None and sent is not None:
                    if stream.body_sent > upstream_h2.RESEND_LIMIT:
                        stream.sent_body = None
                    else:
                        sent.append(data)
                if h2_leg is not None and not stream.response_started:
                    # A long client stream (gRPC) waits for no answer while it sends: the
                    # read timeout runs from what the backend last took, as nginx's.
                    stream.deadline = time.monotonic() + stream.read_timeout
            if flow_length and not self._closed:
                self._h2.acknowledge_received_data(flow_length, stream.stream_id)

    # -- responses ------------------------------------------------------------------------------

    def send_headers(
        self, stream: _Stream, headers: list[tuple[bytes, bytes]], *, end_stream: bool
    ) -> None:
        if self._closed or stream.finished:
            return
        self._h2.send_headers(stream.stream_id, headers, end_stream=end_stream)
        self.flush()  # also when called from an upstream callback that ends the exchange
        if end_stream:
            self._finish(stream)

    def send_pending(self, stream: _Stream) -> None:
        """Send what the windows allow; pause or resume the upstream by what is left."""
        if self._closed or stream.finished:
            return
        h2conn = self._h2
        stream_id = stream.stream_id
        pending = stream.pending
        head = stream.head_pending
        # The last DATA frame ends the stream, unless trailers (an HTTP/2 backend's) follow.
        ending = stream.end_after_pending and stream.trailers is None
        if head is not None:
            stream.head_pending = None
            ended = ending and not pending
            h2conn.send_headers(stream_id, head, end_stream=ended)
            self.flush()
            if ended:
                self._finish(stream)
                return
        while pending:
            window = min(h2conn.local_flow_control_window(stream_id),
                         h2conn.max_outbound_frame_size)
            if window <= 0:
                break
            if len(pending) <= window:
                h2conn.send_data(stream_id, bytes(pending), end_stream=ending)
                pending.clear()
                self.flush()
                if ending:
                    self._finish(stream)
                    return
                break
            h2conn.send_data(stream_id, bytes(pending[:window]))
            del pending[:window]
            self.flush()
        if not pending and stream.end_after_pending:
            if stream.trailers is not None:
                h2conn.send_headers(stream_id, stream.trailers, end_stream=True)
            else:
                h2conn.end_stream(stream_id)
            self.flush()
            self._finish(stream)
            return
        paused = len(stream.pending) > _PENDING_LIMIT
        if paused != stream.upstream_reading_paused and stream.connection is not None:
            stream.upstream_reading_paused = paused
            stream.connection.pause_reading(paused or self._client_slow)

    def answer(
        self, stream: _Stream, *, status: int, body: bytes | None = None,
        headers: tuple[tuple[bytes, bytes], ...] = (),
    ) -> None:
        """Answer a stream ourselves (no upstream, or instead of a failed one);
        `headers` are added (a 401's WWW-Authenticate, CORS headers)."""
        if self._closed or stream.finished:
            return
        reason = reasons.REASONS.get(status, b"")
        if body is None:
            body = reason + b"\n"
        added = [(name.lower(), value) for name, value in headers]  # HTTP/2: lowercase
        stream.status = status
        stream.response_started = True
        if status >= 400:
            content_type = stream.header(b"content-type")
            if content_type is not None and _grpc_content_type(content_type) is not None:
                self._answer_grpc(stream, status=status, message=body.strip() or reason,
                                  headers=added)
                return
        response_headers = [
            (b":status", b"%d" % status),
            (b"server", dispatch.SERVER),
            (b"content-type", b"text/plain; charset=utf-8"),
            *([] if status == 204 else [(b"content-length", b"%d" % len(body))]),
            *added,
        ]
        if stream.method == b"HEAD" or status == 204:
            self.send_headers(stream, response_headers, end_stream=True)
            return
        stream.head_pending = response_headers
        stream.pending += body
        stream.end_after_pending = True
        self.send_pending(stream)

    def _answer_grpc(
        self, stream: _Stream, *, status: int, message: bytes,
        headers: list[tuple[bytes, bytes]],
    ) -> None:
        """A gRPC call refused here: a trailers-only response (HTTP 200, grpc-status and
        grpc-message in the one HEADERS frame that ends the stream), as gRPC servers, Envoy
        and ingress-nginx's gRPC error pages answer. Clients map an HTTP error status
        themselves, each its own way and with a message of their own ("Received http2
        header with status: 403"); this is the gRPC status itself, with our reason (why
        a route is refused), and grpc-core takes the RST_STREAM NO_ERROR that may follow
        (`_finish`) as a clean end only once a call's trailers came."""
        fields = [
            (b":status", b"200"),
            (b"content-type", b"application/grpc"),
            (b"grpc-status", b"%d" % _GRPC_STATUS.get(status, 2)),
            (b"grpc-message", _grpc_message_escaped.sub(
                lambda found: b"%%%02X" % found[0][0], message)),
            (b"server", dispatch.SERVER),
            *headers,  # `answer`'s additions: a 401's WWW-Authenticate, CORS headers
        ]
        self.send_headers(stream, fields, end_stream=True)

    def _refuse_malformed(self, stream_id: int) -> None:
        """A malformed request (RFC 9113 8.1.1): a stream error PROTOCOL_ERROR."""
        self._h2.reset_stream(stream_id, error_code=h2_server.PROTOCOL_ERROR)
        self.flush()
        self._forget(stream_id, cancel=True)

    def _trailers(self, event: h2_server.TrailersReceived) -> None:
        """Trailers must be well-formed; they go to an HTTP/2 backend with the end of the
        body, and are dropped for an HTTP/1.1 one (that leg has no TE)."""
        trailers = event.headers
        for name, value in trailers:
            if _token(name) is None or (value and _bad_value(value) is not None):
                self._refuse_malformed(event.stream_id)
                return
        stream = self._streams.get(event.stream_id)
        if stream is not None and stream.match is not None and stream.match.options.backend_h2:
            stream.request_trailers = trailers

    def reset(self, stream: _Stream, *, error_code: int = h2_server.CANCEL) -> None:
        if not self._closed and not stream.finished:
            self._h2.reset_stream(stream.stream_id, error_code=error_code)
            self.flush()
        self._forget(stream.stream_id, cancel=True)

    def _finish(self, stream: _Stream) -> None:
        """The response went out: count it and forget the stream."""
        self.services.counts.count_request(host=stream.route_host, status=stream.status)
        if not stream.body_done:
            # Answered before the request body ended: tell the client to stop sending
            # (RFC 9113 8.1), unless its END_STREAM came in the read being handled (the
            # stream closed with our answer; the event follows): nothing is left to stop,
            # and reset_stream does nothing. A unary gRPC call refused on its HEADERS is
            # that, its one message in the same TLS record.
            self._h2.reset_stream(stream.stream_id, error_code=h2_server.NO_ERROR)
        self._forget(stream.stream_id, cancel=not stream.body_done)

    def _forget(self, stream_id: int, *, cancel: bool) -> None:
        stream = self._streams.pop(stream_id, None)
        if stream is None:
            return
        stream.finished = True
        slot, stream.limit_slot = stream.limit_slot, None
        if slot is not None:
            self.services.limits.release(slot)
        connection, stream.connection = stream.connection, None
        if connection is not None:
            if cancel:
                connection.close()
            else:
                self.services.pool.release(connection)
        if not self._streams:
            self._deadline = time.monotonic() + self.services.client_timeout
            if self._last_stream is not None:
                self.flush()  # then closes: draining, and the last stream is done

    def flush(self) -> None:
        """Write what the framing layer queued once this loop iteration's reads are
        handled: responses from many upstream connections (and a client read's frames)
        go out as one TLS write, one record and one send, not one each."""
        if not self._flush_scheduled and not self._closed:
            self._flush_scheduled = True
            self._loop.call_soon(self._write_out)

    def _write_out(self) -> None:
        self._flush_scheduled = False
        data = self._h2.data_to_send()
        if data and self._transport is not None and not self._closed:
            self._transport.write(data)
        if self._last_stream is not None and not self._streams:
            self._close()

    def _close(self) -> None:
        if self._transport is not None and not self._closed:
            self._closed = True
            self._transport.close()
