"""One client connection: HTTP/1.1 requests parsed with httptools, answered or proxied in order.

`ClientConnection` is an asyncio Protocol driven by its callbacks, with no
task per connection or per request: bytes from the client go into the
request parser (`http1_request.RequestReader`), whose callbacks queue events
(request head, body piece, end of message, parse error); `_pump` consumes
them in order. A proxied request is written to a leg (`legs`): a pooled
`upstream.UpstreamConnection`, whose response parser calls back
`response_head` / `response_body` / `response_complete` here, which write to
the client at once, framed for it by `http1_response.Relay`. Only opening a
new upstream connection runs as a task.

Flow control instead of buffering: when the upstream cannot take more body,
the client stops being read; when the client cannot take more response, the
upstream stops being read. At most one read (64 KB) per direction is held,
so a 100 MB upload or download streams through in constant memory, and
pipelined requests wait, unread, for the response before them.

Bodies are re-framed rather than copied verbatim: the parser has already
decoded chunked framing, so we always emit framing we generated ourselves
(`http1_request` says which heads are refused to keep request smuggling out),
and the request head sent upstream is `forwarding.request_head`'s.

A route with backend-protocol GRPC, GRPCS or H2C forwards each request as
a stream of a multiplexed HTTP/2 connection (`upstream_h2`) through the
same callbacks: the response is re-chunked unless it has a Content-Length,
and the backend's trailers become the chunked body's trailer section (a
client may ignore them; with a Content-Length they are dropped). The
client's own trailers and TE are not forwarded (hop-by-hop on HTTP/1.1).

A request with `Connection: upgrade` (WebSocket) is forwarded on a fresh
upstream connection; if the upstream answers 101, both connections switch
to relaying raw bytes until either side closes or both stay silent for the
read timeout.

Timeouts are deadlines checked by the data plane's sweeper (`check_deadline`,
about twice a second) rather than a timer per read: waiting for a request or
for a slow client uses `client_timeout`; waiting on the upstream (and
relaying a tunnel) uses the route's read timeout, refreshed by any progress.
A request head is the exception: it must be complete `client_timeout` after
its first byte, however slowly the rest trickles in (slowloris), and bytes
between requests do not extend the idle deadline.

When the data plane drains (`drain`, SIGTERM), a connection between requests
is closed at once and one serving a request answers it with `Connection:
close` and closes after it; a tunnel runs on until the grace period ends.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import cast

import httptools

from certctl.dataplane import (
    affinity,
    dispatch,
    forwarding,
    http1_request,
    http1_response,
    http2,
    legs,
    limits,
    routing,
    services,
    tls,
    upstream,
    upstream_h2,
)
from certctl.routes import options as route_options

logger = logging.getLogger(__name__)


def factory(*, services: services.Services, scheme: bytes) -> Callable[[], ClientConnection]:
    """A listener's protocol factory. Compiled, each connection is built by a direct call:
    a functools.partial of the class parses its keyword arguments again every time."""

    def new_connection() -> ClientConnection:
        return ClientConnection(services=services, scheme=scheme)

    return new_connection


class ClientConnection(asyncio.Protocol):
    """One client connection; `on_*` are httptools callbacks, `response_*` the upstream's."""

    # Slots: over 30 attributes would give every connection a dict of its own, grown
    # three times while __init__ runs (bench B3 counts that per connection).
    __slots__ = (
        "_body_done",
        "_body_sent",
        "_client_certificate",
        "_client_ip",
        "_client_slow",
        "_client_timeout",
        "_closed",
        "_counts",
        "_deadline",
        "_draining",
        "_events",
        "_extra_headers",
        "_forwarded",
        "_forwarded_host",
        "_head",
        "_limit_slot",
        "_match",
        "_pool",
        "_read_timeout",
        "_reader",
        "_reading_paused",
        "_relay",
        "_response_started",
        "_retried",
        "_round_robin",
        "_route_host",
        "_scheme",
        "_send",
        "_sent_body",
        "_services",
        "_started_at",
        "_status",
        "_target",
        "_transport",
        "_tried",
        "_tried_since",
        "_tunnel",
        "_upgrade_head",
        "_upgraded_bytes",
        "_upstream",
        "_upstream_paused",
        "_upstream_timeout",
    )

    def __init__(self, *, services: services.Services, scheme: bytes) -> None:
        self._services = services
        # Fixed for the data plane's life: read here once, not by every request from the
        # services object (an interpreted class, whose attributes cost a lookup each).
        self._counts = services.counts
        self._pool = services.pool
        self._round_robin = services.round_robin
        self._client_timeout = services.client_timeout
        self._upstream_timeout = services.upstream_timeout
        self._scheme = scheme
        self._transport: asyncio.Transport | None = None
        self._send: Callable[[bytes], object] | None = None  # its write, bound once
        self._client_ip = b""
        self._client_certificate: bytes | None = None  # DER, of a TLS client that sent one
        self._limit_slot: limits.Slot | None = None  # released when the request ends
        self._extra_headers: tuple[tuple[bytes, bytes], ...] = ()  # the dispatch decision's
        # The forwarding fields' lines and the host they were made for (`_forwarded_lines`).
        self._forwarded = b""
        self._forwarded_host: bytes | None = None
        self._reader = http1_request.RequestReader(client_timeout=self._client_timeout)
        self._events = self._reader.events  # read by `_pump`
        self._closed = False
        self._reading_paused = False  # by us: flow control or a request in flight
        self._client_slow = False  # the client's transport asked us to stop writing
        self._deadline = 0.0
        self._draining = False  # the data plane stops: close after the request in flight
        self._upgraded_bytes: bytes | None = None  # what followed an upgrade request
        # the request being served
        self._head: http1_request.RequestHead | None = None
        self._match: routing.RouteMatch | None = None
        self._target = b""
        self._route_host = ""
        self._upstream: upstream.Leg | None = None
        self._upstream_paused = False
        self._body_done = False
        self._body_sent = 0
        # The body written to an HTTP/2 backend, until its answer: sent again if it
        # refuses the stream unprocessed (None: more than upstream_h2.RESEND_LIMIT).
        self._sent_body: list[bytes] | None = []
        self._response_started = False
        self._status = 0
        self._relay = http1_response.Relay()
        self._started_at = 0.0
        self._retried = False
        self._tried = 0  # endpoints tried for this request (proxy-next-upstream)
        self._tried_since = 0.0
        self._tunnel = False
        self._upgrade_head: upstream.ResponseHead | None = None
        self._read_timeout = 0.0

    # -- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        self._send = self._transport.write
        if self._scheme == b"http" and not self._services.admits_connection():
            # The HTTPS listener was admitted at accept; this server cannot pause accepting.
            self._closed = True
            self._transport.abort()
            return
        peer = self._transport.get_extra_info("peername")
        self._client_ip = str(peer[0]).encode() if peer else b""
        ssl_object = self._transport.get_extra_info("ssl_object")
        if ssl_object is not None and self._services.certificates.asks_for_client_certificates:
            # Asked for only by hosts with auth-tls-secret (checked by OpenSSL at the
            # handshake); no other connection pays for the lookup.
            self._client_certificate = ssl_object.getpeercert(True)
        if ssl_object is not None and ssl_object.selected_alpn_protocol() == "h2":
            # ALPN chose HTTP/2 during the handshake: hand the connection over.
            replacement = http2.Http2Connection(
                services=self._services, client_ip=self._client_ip,
                client_certificate=self._client_certificate)
            self._transport.set_protocol(replacement)
            replacement.connection_made(self._transport)
            return
        self._deadline = time.monotonic() + self._client_timeout
        # A handshake that completed after the listeners closed: serve its one request.
        self._draining = self._services.draining
        self._services.connection_opened(self)

    def data_received(self, data: bytes) -> None:
        if self._tunnel:
            self._deadline = time.monotonic() + self._read_timeout
            if self._upstream is not None:
                self._upstream.write(data)
            return
        if self._upgraded_bytes is not None:
            self._upgraded_bytes += data  # before the upstream answered the upgrade
            return
        if self._head is not None:  # progress on a request body
            self._deadline = time.monotonic() + (
                self._client_timeout if self._upstream is None else self._read_timeout
            )
        # Between requests, bytes buy no time: the idle deadline set when the
        # last response was done stands, and a head has `client_timeout` from
        # its first byte however slowly the rest arrives (slowloris).
        reader = self._reader
        try:
            if reader.feed(data):
                self._pause_reading()  # the rest cannot be parsed
            elif reader.in_head and self._head is None:
                self._deadline = reader.head_deadline
        except httptools.HttpParserUpgrade as upgrade:
            # Events up to the upgrade are queued; what follows is the upgraded
            # protocol, relayed raw if the upstream agrees.
            self._upgraded_bytes = data[upgrade.args[0] :]
        self._pump()

    def eof_received(self) -> bool | None:
        return None  # a half-closed client gets no answer: HTTP/1.1 needs both ways

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        # Without the parser's cycle the connection's objects (its transport's OpenSSL
        # buffers too) are freed now, memory the next connection reuses while it is
        # still in the CPU's caches, not at the next GC.
        self._reader.close()
        self._services.connection_closed(self)
        self._release_limit()
        connection, self._upstream = self._upstream, None
        if connection is not None:
            connection.close()  # mid-exchange: the upstream stream is out of step

    def pause_writing(self) -> None:
        self._client_slow = True
        self._deadline = time.monotonic() + self._client_timeout
        if self._upstream is not None:
            self._upstream.pause_reading(True)

    def resume_writing(self) -> None:
        self._client_slow = False
        if self._upstream is not None:
            self._upstream.pause_reading(False)

    def check_deadline(self, now: float) -> None:
        """Called by the sweeper: give up on whatever this connection waits for."""
        if now < self._deadline or self._closed:
            return
        if self._head is None and not self._events:
            self._close()  # idle between requests
            return
        if self._head is None or self._tunnel or self._client_slow or self._response_started:
            self._abort()
            return
        if self._upstream is not None:
            logger.warning("upstream %s:%s timed out", *self._upstream.address)
            policy = self._match.options.next_upstream if self._match is not None else None
            if (
                policy is not None
                and policy.timeout
                and not self._head.has_body
                and self._try_next(policy)
            ):
                return
        self._drop_upstream()
        self._respond_local(status=504, keep_alive=False)

    # -- the request loop ---------------------------------------------------------------

    def _pump(self) -> None:
        """Consume queued events as far as the request in flight allows."""
        events = self._events
        while events and not self._closed:
            if self._head is None:
                event = events.popleft()
                if isinstance(event, http1_request.ParseError):
                    self._respond_local(status=event.status, keep_alive=False)
                    return
                if isinstance(event, http1_request.RequestHead):
                    self._begin(event)
                # A body piece or end of message here belongs to a request that
                # was answered without reading its body; `_respond_local` closed.
                continue
            if self._body_done or self._upstream is None or self._upstream_paused:
                break  # the rest waits for the response, a connection or the upstream
            event = events[0]
            if isinstance(event, http1_request.RequestHead):
                break
            events.popleft()
            if isinstance(event, http1_request.ParseError):  # the body cannot be read to its end
                self._drop_upstream()
                if self._response_started:
                    self._abort()
                else:
                    self._respond_local(status=event.status, keep_alive=False)
                return
            self._send_body(event)
        if events and self._head is not None and not self._closed:
            self._pause_reading()  # pipelined or early bytes: let the client wait
        elif self._reading_paused and self._head is None and not events:
            self._resume_reading()

    def _pause_reading(self) -> None:
        if not self._reading_paused and self._transport is not None and not self._closed:
            self._reading_paused = True
            self._transport.pause_reading()

    def _resume_reading(self) -> None:
        if self._reading_paused and self._transport is not None and not self._closed:
            self._reading_paused = False
            self._transport.resume_reading()

    def _begin(self, head: http1_request.RequestHead) -> None:
        """Route one request and answer it locally, or start proxying it."""
        self._head = head
        self._route_host = ""
        self._response_started = False
        if head.error is not None:
            self._respond_local(status=head.error, keep_alive=False)
            return
        decision = dispatch.decide(
            services=self._services,
            scheme=self._scheme,
            method=head.method,
            target=head.target,
            authority=head.host,
            header=head.header,
            content_length=head.content_length,
            client_ip=self._client_ip,
            client_certificate=self._client_certificate,
        )
        self._route_host = decision.route_host
        self._limit_slot = decision.slot
        self._extra_headers = decision.headers
        match = decision.match
        if match is None:
            extra_headers = b"".join(name + b": " + value + b"\r\n"
                                     for name, value in decision.headers)
            self._respond_local(
                status=decision.status,
                body=decision.body,
                extra_headers=extra_headers,
                keep_alive=head.keep_alive and decision.status not in (400, 413),
            )
            return
        head.host = decision.authority
        # A plain route's options are their defaults but for a few (RouteOptions.plain):
        # its requests read none of the others, here and below.
        plain = match.plain
        if decision.request_headers or (
                not plain and match.options.client_certificates is not None):
            head.headers = dispatch.upstream_request_headers(head.headers, decision,
                                                             match.options)
        if not head.has_body:
            # Only the end of the message is left (bodies of 0 bytes included).
            if self._events and self._events[0] is None:
                self._events.popleft()
            self._body_done = True
        else:
            self._body_done = False
        self._match = match
        self._target = decision.target
        self._read_timeout = match.options.read_timeout or self._upstream_timeout
        self._body_sent = 0
        self._sent_body = []
        self._retried = False
        self._tried = 0
        external_auth = None if plain else match.options.external_auth
        if external_auth is not None:
            rules = match.options.access
            if rules is None or not rules.satisfied_by_address(self._client_ip):
                self._deadline = time.monotonic() + self._read_timeout
                self._services.spawn(self._authorize(external_auth, match, head))
                return
        self._connect(fresh=head.upgrade is not None and self._upgraded_bytes is not None)

    async def _authorize(
        self, rules: route_options.ExternalAuth, match: routing.RouteMatch,
        head: http1_request.RequestHead,
    ) -> None:
        """auth-url: ask the auth service, then forward the request or answer it."""
        authority = head.host or b""
        verdict = await self._services.external_auth.check(
            rules=rules, scheme=self._scheme, method=head.method, target=head.target,
            http_host=authority, host=routing.normalize_host(authority.decode("latin-1")),
            client_ip=self._client_ip, headers=head.headers)
        if self._closed or self._match is not match:
            return  # the client left, or timed out, meanwhile
        if verdict.status:
            self._respond_local(
                status=verdict.status, keep_alive=head.keep_alive,
                extra_headers=b"".join(name + b": " + value + b"\r\n"
                                       for name, value in verdict.client_headers))
            return
        if verdict.upstream_headers:  # the auth service's word replaces the client's
            head.headers = dispatch.replace_headers(head.headers, verdict.upstream_headers)
        self._extra_headers += verdict.client_headers
        self._connect(fresh=head.upgrade is not None and self._upgraded_bytes is not None)

    # -- talking to the upstream -------------------------------------------------------------

    def _connect(self, *, fresh: bool) -> None:
        """Use an idle pooled connection at once, or open one in a task."""
        match = self._match
        assert match is not None
        upstreams = match.upstreams
        head = self._head
        if not match.plain and head is not None and (
                match.options.affinity is not None or match.options.balancing is not None):
            start = dispatch.first_endpoint(  # per request: only then
                services=self._services, match=match, header=head.header, method=head.method,
                target=head.target, authority=head.host, scheme=self._scheme,
                client_ip=self._client_ip)
        else:
            start = self._round_robin.start(len(upstreams))
        self._open_from(start, fresh=fresh)

    def _open_from(self, start: int, *, fresh: bool) -> None:
        """Use an idle pooled connection to the endpoint at `start` at once, or find one
        from there in a task."""
        match = self._match
        assert match is not None
        if self._tried == 0 and not match.plain and match.options.next_upstream is not None:
            self._tried_since = time.monotonic()
        if not fresh:
            leg = legs.take(self._services, match, start)
            if leg is not None:
                self._attach(leg)
                return
        self._deadline = time.monotonic() + self._read_timeout
        self._services.spawn(self._open(start=start, fresh=fresh))

    async def _open(self, *, start: int, fresh: bool) -> None:
        match = self._match
        assert match is not None
        leg = await legs.connect(self._services, match, start=start, fresh=fresh,
                                 tried=self._tried, tried_since=self._tried_since)
        if leg is not None:
            if self._closed or self._match is not match:
                self._pool.release(leg)  # unused: the client left or timed out meanwhile
                return
            self._attach(leg)
            return
        if not self._closed and self._match is match:
            self._bad_gateway()

    def _attach(self, leg: legs.Leg) -> None:
        if isinstance(leg, upstream_h2.Stream):
            self._attach_h2(leg)
        else:
            self._attach_h1(leg)

    def _attach_h1(self, connection: upstream.UpstreamConnection) -> None:
        """Send the request head on `connection`, then whatever body is queued."""
        head = self._attached(connection)
        match = self._match
        assert match is not None
        host = head.host or b""
        connection.begin(
            exchange=self,
            request=forwarding.request_head(
                method=head.method, target=self._target,
                host=host if match.plain else match.options.upstream_vhost or host,
                headers=head.headers, checked=True, forwarded=self._forwarded_lines(host),
                upgrade=head.upgrade if self._upgraded_bytes is not None else None,
                chunked=head.chunked, content_length=head.content_length),
            head_only=head.method == b"HEAD",
        )
        self._send_queued(connection)

    def _forwarded_lines(self, host: bytes) -> bytes:
        """The forwarding fields of a request for `host`, made again only when the host
        differs from the connection's last request's."""
        if host != self._forwarded_host:
            self._forwarded = forwarding.forwarded_lines(
                client_ip=self._client_ip, proto=self._scheme, host=host)
            self._forwarded_host = host
        return self._forwarded

    def _attach_h2(self, leg: upstream_h2.Stream) -> None:
        """Send the request as a stream to an HTTP/2 backend (GRPC, GRPCS, H2C; the client's
        trailers are dropped, and TE with them), then whatever body is queued."""
        head = self._attached(leg)
        match = self._match
        assert match is not None
        host = head.host or b""
        headers = upstream_h2.request_headers(
            method=head.method, scheme=b"https" if match.options.backend_tls else b"http",
            target=self._target, authority=match.options.upstream_vhost or host,
            headers=head.headers, content_length=None if head.chunked else head.content_length,
            te_trailers=False, client_ip=self._client_ip, forwarded_proto=self._scheme,
            forwarded_host=host)
        sent = self._sent_body or ()  # to a stream the backend refused (`upstream_failed`)
        leg.begin(exchange=self, end_stream=self._body_done and not sent, headers=headers)
        if sent and self._upstream is leg:
            for piece in sent:
                leg.write(piece)
            if self._body_done:
                leg.end()
        self._send_queued(leg)

    def _attached(self, leg: upstream.Leg) -> http1_request.RequestHead:
        """`leg` serves the current request from now on."""
        head = self._head
        match = self._match
        assert head is not None and match is not None
        self._upstream = leg
        self._upstream_paused = False
        self._tried += leg.tries
        if not match.plain and match.options.affinity is not None:
            self._extra_headers = affinity.with_cookie(
                self._extra_headers, match=match, cookie_header=head.header(b"cookie"),
                address=leg.address)
        self._started_at = time.monotonic()
        self._deadline = self._started_at + self._read_timeout
        return head

    def _send_queued(self, leg: upstream.Leg) -> None:
        """The request head went out on `leg`: the body follows as it comes."""
        head = self._head
        if head is None or self._upstream is not leg:
            return  # failed at once, and answered or sent elsewhere
        if self._client_slow:
            leg.pause_reading(True)
        if head.expect_continue and not self._body_done and not head.http10:
            # We answer the client's Expect ourselves and do not forward it, so
            # the upstream never has to and the body is not held back.
            self._write(b"HTTP/1.1 100 Continue\r\n\r\n")
        self._pump()
        if self._reading_paused and not self._body_done and not self._events:
            self._resume_reading()

    def _send_body(self, event: bytes | None) -> None:
        head = self._head
        connection = self._upstream
        assert head is not None and connection is not None
        h2_leg = connection if isinstance(connection, upstream_h2.Stream) else None
        if event is None:
            self._body_done = True
            if h2_leg is not None:
                h2_leg.end()
            elif head.chunked:
                connection.write(b"0\r\n\r\n")
            return
        self._body_sent += len(event)
        assert self._match is not None
        limit = self._match.options.body_size_limit
        if limit is not None and self._body_sent > limit:
            self._drop_upstream()
            if self._response_started:
                self._abort()
            else:
                self._respond_local(status=413, keep_alive=False)
            return
        if h2_leg is None:
            connection.write(b"%x\r\n%s\r\n" % (len(event), event) if head.chunked else event)
            return
        sent = self._sent_body
        if sent is not None:
            if self._body_sent > upstream_h2.RESEND_LIMIT:
                self._sent_body = None
            else:
                sent.append(event)
        h2_leg.write(event)

    def upstream_write_paused(self, paused: bool) -> None:
        self._upstream_paused = paused
        if self._tunnel:
            if paused:
                self._pause_reading()
            else:
                self._resume_reading()
        elif paused:
            self._pause_reading()
        else:
            self._pump()
            if not self._events and not self._body_done:
                self._resume_reading()

    def _drop_upstream(self) -> None:
        connection, self._upstream = self._upstream, None
        if connection is not None:
            connection.close()

    # -- the upstream's answer -------------------------------------------------------------------

    def response_head(self, response: upstream.ResponseHead) -> None:
        head = self._head
        match = self._match
        assert head is not None and match is not None
        self._sent_body = None  # answered: never sent again
        now = time.monotonic()
        self._deadline = now + self._read_timeout
        self._counts.observe_upstream(
            service=match.service,
            seconds=now - self._started_at,
        )
        options = match.options
        if not match.plain:
            balancing = options.balancing
            if balancing is not None and balancing.ewma and self._upstream is not None:
                self._pool.latencies.observe(self._upstream.address,
                                             now - self._started_at, now=now)
            policy = options.next_upstream
            if (
                policy is not None
                and response.status in policy.statuses
                and not head.has_body
                and self._try_next(policy)
            ):
                return
        errors = match.errors
        if (
            errors is not None
            and response.status in errors.codes
            and not head.has_body
            and head.upgrade is None
        ):
            self._error_page(errors, response.status)
            return
        if response.status == 101:
            self._upgrade_head = response  # relayed by `response_upgraded`, which follows
            return
        # `Connection: close` while draining: the client's next request goes elsewhere.
        keep_alive = head.keep_alive and not self._draining and (
            head.upgrade is None or self._upgraded_bytes is None)
        self._relay.start(response, method=head.method, http10=head.http10,
                          keep_alive=keep_alive, extra=self._extra_headers,
                          hsts=options.hsts_line if self._scheme == b"https" else None)
        self._response_started = True
        self._status = response.status

    def _bad_gateway(self) -> None:
        """No endpoint answered: 502, or the default backend's page for it when listed in
        custom-http-errors (nginx's error_page takes its own 502s too)."""
        head, match = self._head, self._match
        errors = None if match is None else match.errors
        if (
            errors is not None
            and 502 in errors.codes
            and head is not None
            and not head.has_body
            and head.upgrade is None
        ):
            self._error_page(errors, 502)
            return
        self._respond_local(status=502, keep_alive=False)

    def _error_page(self, errors: routing.ErrorRoute, code: int) -> None:
        """custom-http-errors: the backend's answer (unread) is replaced by the default
        backend's to the request sent again for `/` with X-Code and the rest; whatever that
        answers goes to the client, and is never replaced in turn."""
        head = self._head
        assert head is not None
        connection = self._upstream
        if connection is not None:
            connection.reusable = False
        self._drop_upstream()
        route = errors.route
        if route is None or not route.upstreams:
            self._respond_local(status=code if route is None else 503,
                                keep_alive=head.keep_alive)
            return
        head.headers = dispatch.replace_headers(head.headers, dispatch.error_page_headers(
            errors, code=code, target=head.target, header=head.header))
        self._match = route
        self._target = b"/"
        self._tried = 0
        self._retried = False
        self._connect(fresh=False)

    def response_body(self, chunk: bytes) -> None:
        self._deadline = time.monotonic() + (
            self._client_timeout if self._client_slow else self._read_timeout
        )
        piece = self._relay.body(chunk)
        if piece:
            self._write(piece)

    def response_flush(self) -> None:
        """The upstream's bytes so far are in: send what the relay holds back (a head, or
        the body so far of a response the connection closes after)."""
        held = self._relay.flush()
        if held:
            self._write(held)

    def response_trailers(self, trailers: list[tuple[bytes, bytes]]) -> None:
        self._relay.trailers(trailers)

    def response_complete(self) -> None:
        end = self._relay.end()
        connection, self._upstream = self._upstream, None
        keep_alive = self._relay.keep_alive
        if not self._body_done:
            # The upstream answered before taking the whole body: neither stream
            # can be trusted to be at a message boundary.
            keep_alive = False
            if connection is not None:
                connection.reusable = False
        if connection is not None:
            self._pool.release(connection)
        self._finish(keep_alive=keep_alive, last=end)

    def upstream_failed(self, error: Exception | None) -> None:
        """The upstream closed or sent garbage before its response was complete."""
        connection, self._upstream = self._upstream, None
        if connection is not None:
            connection.close()
        if self._closed or self._head is None:
            return
        if self._tunnel:
            self._close()  # after what the upstream sent last (a close frame) is flushed
            return
        if self._response_started:
            if self._relay.close_delimited and error is None:
                self.response_complete()  # EOF is how this body ends
            else:
                self._abort()
            return
        head = self._head
        if (
            connection is not None
            and connection.reused
            and not connection.received_any
            and (not head.has_body or (self._sent_body is not None
                                       and isinstance(connection, upstream_h2.Stream)))
            and not self._retried
        ):
            # A kept-alive connection the backend closed while it sat idle, or an HTTP/2
            # backend refusing the stream unprocessed: send a request without a body, or
            # with the body kept of what went to that stream, again, once, on a fresh one.
            self._retried = True
            self._connect(fresh=True)
            return
        match = self._match
        policy = None if match is None else match.options.next_upstream
        if (
            policy is not None
            and policy.error
            and connection is not None
            and not head.has_body
            and self._try_next(policy, failed=connection)
        ):
            return
        address = connection.address if connection is not None else ("?", 0)
        logger.warning("upstream %s:%s failed: %s", *address, error or "closed")
        self._bad_gateway()

    def _try_next(
        self, policy: route_options.NextUpstream, failed: upstream.Leg | None = None,
    ) -> bool:
        """proxy-next-upstream: send the request to the next endpoint, if the policy lets
        it, dropping the one that failed (its answer unread); False: answer with it."""
        head, match = self._head, self._match
        connection = failed or self._upstream
        assert head is not None and match is not None and connection is not None
        start = dispatch.next_endpoint(policy, match=match, address=connection.address,
                                       tried=self._tried, since=self._tried_since,
                                       method=head.method)
        if start is None:
            return False
        logger.info("upstream %s:%s failed; trying the next endpoint", *connection.address)
        connection.reusable = False
        self._drop_upstream()
        connection.close()
        self._open_from(start, fresh=False)
        return True

    def response_upgraded(self, leftover: bytes) -> None:
        """The upstream answered 101: relay its head, then bytes both ways."""
        connection = self._upstream
        head = self._head
        response = self._upgrade_head
        if (
            connection is None
            or head is None
            or response is None
            or head.upgrade is None
            or self._upgraded_bytes is None
        ):
            self.upstream_failed(upstream.UpstreamError("unexpected protocol upgrade"))
            return
        self._response_started = True
        self._status = 101
        self._tunnel = True
        self._deadline = time.monotonic() + self._read_timeout
        self._write(http1_response.switching_protocols(
            response, upgrade=response.upgrade or head.upgrade))
        if leftover:
            self._write(leftover)
        pending, self._upgraded_bytes = self._upgraded_bytes, b""
        if pending:
            connection.write(pending)
        self._counts.count_request(host=self._route_host, status=101)
        self._resume_reading()

    def tunnel_data(self, data: bytes) -> None:
        self._deadline = time.monotonic() + self._read_timeout
        self._write(data)

    # -- answering ---------------------------------------------------------------------------

    def _respond_local(
        self,
        *,
        status: int,
        keep_alive: bool,
        body: bytes | None = None,
        extra_headers: bytes = b"",
    ) -> None:
        """Answer the current request ourselves (no upstream, or instead of a failed one)."""
        keep_alive = keep_alive and not self._draining and self._request_fully_read()
        head = self._head
        self._response_started = True
        self._status = status
        self._finish(keep_alive=keep_alive, last=http1_response.local_response(
            status=status, body=body, extra_headers=extra_headers, keep_alive=keep_alive,
            head_only=head is not None and head.method == b"HEAD"))

    def _request_fully_read(self) -> bool:
        """Discard the current request's body received so far; True if it was all there.

        A bodyless request (or a small body that came in the same read) keeps
        the connection; anything still in flight would have to be read to
        find the next request, so we close instead.
        """
        if self._body_done:
            return True
        events = self._events
        while events:
            event = events[0]
            if isinstance(event, http1_request.RequestHead | http1_request.ParseError):
                return False
            events.popleft()
            if event is None:
                self._body_done = True
                return True
        return False

    def _finish(self, *, keep_alive: bool, last: bytes = b"") -> None:
        """The response is written but for `last`: count it, write `last` (with the close,
        if the connection ends), then serve the next request or close."""
        self._counts.count_request(host=self._route_host, status=self._status)
        self._release_limit()
        self._drop_upstream()  # still attached only when answered instead of it
        self._head = None
        self._match = None
        self._body_done = False
        self._response_started = False
        if not keep_alive or self._upgraded_bytes is not None or self._draining:
            self._close(last)
            return
        if last:
            self._write(last)
        self._deadline = self._reader.head_deadline = (
            time.monotonic() + self._client_timeout)
        self._pump()

    def _release_limit(self) -> None:
        slot, self._limit_slot = self._limit_slot, None
        if slot is not None:
            self._services.limits.release(slot)

    def _write(self, data: bytes) -> None:
        if not self._closed and self._send is not None:
            self._send(data)

    def _close(self, last: bytes = b"") -> None:
        """Write `last`, then close after what was written is flushed."""
        if not self._closed and self._transport is not None:
            self._closed = True
            transport = self._transport
            if isinstance(transport, tls.TlsTransport):
                transport.write_and_close(last)  # with the close_notify, one send
            else:
                if last:
                    transport.write(last)
                transport.close()
        self._drop_upstream()

    def _abort(self) -> None:
        """Cut the connection: the only honest signal once a response head went out."""
        if self._transport is not None and not self._closed:
            self._closed = True
            self._transport.abort()
        self._drop_upstream()

    def drain(self) -> None:
        """The data plane stops: close now if between requests, else after the response
        in flight (sent with `Connection: close` if its head is not out yet)."""
        self._draining = True
        if self._head is None and not self._events and not self._reader.in_head:
            self._close()

    def close(self) -> None:
        """Stop serving this connection now (the data plane is stopping)."""
        self._abort()
