"""Backends that speak HTTP/2 (backend-protocol GRPC, GRPCS, H2C): streams over few connections.

ingress-nginx hands GRPC and GRPCS routes to nginx's grpc_pass (and H2C too):
HTTP/2 to the backend, cleartext with prior knowledge or TLS with ALPN h2,
unverified as `backend-protocol: HTTPS` (proxy_ssl_verify off). Here a
`Stream` is what `upstream.UpstreamConnection` is for HTTP/1.1 backends: the
leg a client connection's exchange forwards one request on, calling the
same `upstream.Exchange` methods back, plus `response_trailers` (gRPC's
status travels in trailers). Unlike HTTP/1.1 connections, a `Connection`
carries many streams at once: the `Pool` puts every request for an endpoint
on its first connection with room under the backend's
SETTINGS_MAX_CONCURRENT_STREAMS (at most MAX_STREAMS), and opens another
only when all are full; requests arriving while one is being set up wait
for it rather than each opening its own.

Flow control instead of buffering, per stream, both ways:
- a request body piece the stream window cannot take yet waits in the
  stream, and the exchange is told to stop sending (`upstream_write_paused`)
  until the backend's WINDOW_UPDATE has let it all out;
- response bytes are handed to the exchange as they arrive, and the stream
  window is returned to the backend only while the exchange reads
  (`pause_reading`): a slow client stops its own stream, never the others
  sharing the connection, whose window is returned as bytes arrive.

A backend's GOAWAY stops new streams on the connection (the next request
opens another) while the streams it still serves finish; those above its
last stream id were not processed and fail as `reused` (their exchange
sends them again when nothing of their body was sent, or it kept what was:
up to RESEND_LIMIT bytes, until the response head; else it answers 502). A
REFUSED_STREAM reset is treated the same way, and also makes its connection
full until one of its streams ends (`Connection.stream_refused`), so that
the request sent again goes to another connection rather than back to the
backend that still counts more streams than it allows; any other reset before the
response head is a 502, after it a reset of the client's stream
(`StreamReset` carries the code). A connection the backend closes fails
the streams it carried; one idle for `idle_timeout` is closed by us.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections import deque
from collections.abc import Iterable
from typing import Final, Protocol, cast

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import hyperframe.frame

from certctl.dataplane import forwarding, reasons, routing, upstream

logger = logging.getLogger(__name__)

MAX_STREAMS: Final = 128  # streams per connection, however many the backend allows
# Request body an exchange keeps of what it wrote to a stream, to send it again on another
# if the backend did not process the stream (grpc-core refuses some at once when many
# calls arrive together); a longer body is not kept, and such a refusal is a 502.
RESEND_LIMIT: Final = 65536
STREAM_WINDOW: Final = 1 << 20  # response bytes a backend may send ahead on one stream
CONNECTION_WINDOW: Final = 1 << 24  # ... and on a connection (returned as they arrive)
# Places on a connection still being set up (its SETTINGS not in yet) for requests
# waiting for it; past that, another connection is opened beside it.
_ASSUMED_STREAMS: Final = 100
# Response headers are validated by h2 (backends are not ours to trust: an uppercase or
# connection-specific field must not reach an HTTP/2 client); requests are already
# checked by the client side and lowercased by `request_headers`.
_CONFIG: Final = h2.config.H2Configuration(
    client_side=True, header_encoding=None, validate_inbound_headers=True,
    normalize_inbound_headers=False, validate_outbound_headers=False,
    normalize_outbound_headers=False,
)
_LOCAL_SETTINGS: Final = {
    h2.settings.SettingCodes.ENABLE_PUSH: 0,
    h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
    h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: 65536,
}
# A backend's reset passed on to the client as it is when its code says something about
# the request; codes about the backend's own hop (PROTOCOL_ERROR, FLOW_CONTROL_ERROR...)
# become INTERNAL_ERROR.
_CLIENT_CODES: Final = frozenset(
    {h2.errors.ErrorCodes.NO_ERROR, h2.errors.ErrorCodes.CANCEL,
     h2.errors.ErrorCodes.REFUSED_STREAM, h2.errors.ErrorCodes.ENHANCE_YOUR_CALM,
     h2.errors.ErrorCodes.INADEQUATE_SECURITY, h2.errors.ErrorCodes.HTTP_1_1_REQUIRED}
)


class Exchange(upstream.Exchange, Protocol):
    """What a client connection implements to receive one HTTP/2 backend's response."""

    def response_trailers(self, trailers: list[tuple[bytes, bytes]]) -> None:
        """Trailer fields, before `response_complete`."""


class StreamReset(upstream.UpstreamError):
    """The backend reset the stream (RST_STREAM) with `error_code`."""

    def __init__(self, error_code: int) -> None:
        super().__init__(f"the backend reset the stream (error code {error_code})")
        self.error_code = error_code

    @property
    def client_code(self) -> int:
        """The code to reset the client's stream with."""
        code = self.error_code
        return code if code in _CLIENT_CODES else h2.errors.ErrorCodes.INTERNAL_ERROR


def request_headers(
    *, method: bytes, scheme: bytes, target: bytes, authority: bytes,
    headers: Iterable[tuple[bytes, bytes]], content_length: bytes | None, te_trailers: bool,
    client_ip: bytes, forwarded_proto: bytes, forwarded_host: bytes,
) -> list[tuple[bytes, bytes]]:
    """The HEADERS of a request forwarded to an HTTP/2 backend: the client's fields
    (HTTP/1.1 ones lowercased) minus those `forwarding` says are not, with its forwarding
    fields as on HTTP/1.1 legs; `te: trailers` only, and only when the client sent it
    (gRPC servers require it)."""
    fields = [(b":method", method), (b":scheme", scheme), (b":path", target),
              (b":authority", authority)]
    fields += [(lname, value) for lname, value in ((name.lower(), value)
                                                   for name, value in headers)
               if lname not in forwarding.NOT_FORWARDED]
    if te_trailers:
        fields.append((b"te", b"trailers"))
    if content_length is not None:
        fields.append((b"content-length", content_length))
    fields += forwarding.forwarded_fields(client_ip=client_ip, proto=forwarded_proto,
                                          host=forwarded_host)
    return fields


class _Client(h2.connection.H2Connection):
    """h2's client side, but a GOAWAY received lets the streams it spares finish: h2 would
    close the connection at once and refuse their frames (python-hyper/h2 issue 1181).
    `Connection` stops opening streams on it and drops the others itself."""

    def _receive_goaway_frame(
        self, frame: hyperframe.frame.GoAwayFrame
    ) -> tuple[list[hyperframe.frame.Frame], list[h2.events.Event]]:
        event = h2.events.ConnectionTerminated()
        event.error_code = frame.error_code
        event.last_stream_id = frame.last_stream_id
        event.additional_data = frame.additional_data or None
        return [], [event]


class Stream:
    """One request on a `Connection`: `upstream.Leg` for HTTP/2 backends."""

    def __init__(self, *, connection: Connection) -> None:
        self.connection = connection
        self.address = connection.address
        self.tries = 1
        self.reused = connection.served > 0  # a failure may be the backend closing it idle
        self.received_any = False
        self.reusable = False  # streams are never reused (`upstream.Leg`)
        self.stream_id = 0  # not begun
        self.exchange: Exchange | None = None
        self.finished = False
        self._queue: deque[bytes] = deque()  # request body the stream window cannot take yet
        self._end_pending = False
        self._trailers: list[tuple[bytes, bytes]] | None = None
        self._request_ended = False
        self._response_ended = False
        self._write_paused = False
        self._reading_paused = False
        self._unacked = 0  # response bytes received and not yet returned to the window
        self.flush_pending = False  # bytes arrived in the read being handled

    # -- used by the client connection (`upstream.Leg`) -------------------------------------

    def begin(
        self, *, exchange: Exchange, headers: list[tuple[bytes, bytes]], end_stream: bool
    ) -> None:
        """Send the request's HEADERS (`end_stream`: it has no body); the response goes to
        `exchange`, which hears of a failure at once if the connection cannot take it."""
        self.exchange = exchange
        connection = self.connection
        if self.finished or connection.closed or connection.draining:
            self.reused = True  # nothing reached the backend
            self._fail(upstream.UpstreamError("the backend's connection is closing"))
            return
        h2conn = connection.h2
        try:
            stream_id = h2conn.get_next_available_stream_id()
            h2conn.send_headers(stream_id, headers, end_stream=end_stream)
        except h2.exceptions.ProtocolError as err:  # stream ids used up, too many streams
            connection.draining = True
            connection.pool.forget(connection)
            self.reused = True
            self._fail(upstream.UpstreamError(f"no stream: {err}"))
            return
        self.stream_id = stream_id
        connection.streams[stream_id] = self
        connection.served += 1
        self._request_ended = end_stream
        connection.flush()

    def write(self, data: bytes) -> None:
        """A piece of the request body: sent as the stream's window allows, the rest kept
        (and the exchange paused) until the backend makes room."""
        if self.finished or self._request_ended or self._end_pending or not data:
            return
        self._queue.append(data)
        self.send_queued()

    def end(self, trailers: list[tuple[bytes, bytes]] | None = None) -> None:
        """The request body is complete (with its trailer fields, if any)."""
        if self.finished or self._request_ended or self._end_pending:
            return
        self._end_pending = True
        self._trailers = trailers or None
        self.send_queued()

    def pause_reading(self, paused: bool) -> None:
        """Stop returning the stream's window to the backend (the client cannot take more),
        or return what it holds."""
        self._reading_paused = paused
        if not paused and self._unacked:
            self._return_window()

    def close(self) -> None:
        """The exchange is done with the stream: reset it (CANCEL) unless it is over both
        ways, and free its place on the connection."""
        self.exchange = None
        if not self.finished:
            over = self._request_ended and self._response_ended
            self._finish(reset=0 if over or not self.stream_id
                         else h2.errors.ErrorCodes.CANCEL)

    # -- flow control ----------------------------------------------------------------------

    def send_queued(self) -> None:
        """Send queued body pieces within the windows, then the end; tell the exchange to
        pause while anything is left and to resume once it is out."""
        connection = self.connection
        if self.finished or connection.closed:
            return
        h2conn = connection.h2
        stream_id = self.stream_id
        queue = self._queue
        sent = False
        try:
            while queue and not connection.write_paused:
                window = min(h2conn.local_flow_control_window(stream_id),
                             h2conn.max_outbound_frame_size)
                if window <= 0:
                    break
                data = queue[0]
                if len(data) <= window:
                    queue.popleft()
                    ending = not queue and self._end_pending and self._trailers is None
                    h2conn.send_data(stream_id, data, end_stream=ending)
                    self._request_ended = ending
                else:
                    h2conn.send_data(stream_id, data[:window])
                    queue[0] = data[window:]
                sent = True
            if not queue and self._end_pending and not self._request_ended:
                if self._trailers is not None:
                    h2conn.send_headers(stream_id, self._trailers, end_stream=True)
                else:
                    h2conn.end_stream(stream_id)
                self._request_ended = sent = True
        except h2.exceptions.NoSuchStreamError:
            # The backend ended the stream meanwhile (its reset is among the events read).
            queue.clear()
            self._request_ended = True
        if sent:
            connection.flush()
        paused = bool(queue)
        if paused != self._write_paused:
            self._write_paused = paused
            exchange = self.exchange
            if exchange is not None:
                exchange.upstream_write_paused(paused)

    def _return_window(self) -> None:
        unacked, self._unacked = self._unacked, 0
        if self.finished or self._response_ended or self.connection.closed:
            return
        try:
            self.connection.h2.increment_flow_control_window(unacked, stream_id=self.stream_id)
        except (h2.exceptions.NoSuchStreamError, KeyError):
            return  # ended by the backend in the same read
        self.connection.flush()

    # -- events from the connection --------------------------------------------------------

    def response_received(self, headers: list[tuple[bytes, bytes]]) -> None:
        self.received_any = True
        head = upstream.ResponseHead()
        fields = head.headers
        status = b""
        for name, value in headers:
            if name[:1] == b":":
                if name == b":status":
                    status = value
            elif name == b"content-length":
                head.content_length = value
            else:
                fields.append((name, value))
                if name == b"server":
                    head.has_server = True
        if len(status) != 3 or not status.isdigit():
            self.reused = False
            self._fail(upstream.UpstreamError(f"invalid :status {status!r}"), reset=True)
            return
        head.status = int(status)
        head.reason = reasons.REASONS.get(head.status, b"")
        head.chunked = head.content_length is None  # ends with the stream, not by length
        if self.exchange is not None:
            self.exchange.response_head(head)

    def data_received(self, data: bytes, flow_length: int) -> None:
        self.received_any = True
        self._unacked += flow_length
        if data and self.exchange is not None:
            self.exchange.response_body(data)

    def flushed(self) -> None:
        """The bytes of the read just handled are all in: let the exchange send them, and
        return the window if it keeps up."""
        self.flush_pending = False
        exchange = self.exchange
        if self.finished or exchange is None:
            return
        exchange.response_flush()
        if not self._reading_paused and self._unacked >= STREAM_WINDOW // 4:
            self._return_window()

    def trailers_received(self, trailers: list[tuple[bytes, bytes]]) -> None:
        if self.exchange is not None:
            self.exchange.response_trailers(trailers)

    def ended(self) -> None:
        """The response is complete; a request still being sent is cut short (RFC 9113
        8.1: the backend answered without the rest)."""
        self._response_ended = True
        exchange = self.exchange
        self._finish(reset=0 if self._request_ended else h2.errors.ErrorCodes.CANCEL)
        if exchange is not None:
            exchange.response_complete()

    def reset_received(self, error_code: int) -> None:
        if error_code == h2.errors.ErrorCodes.REFUSED_STREAM and not self.received_any:
            self.reused = True  # RFC 9113 8.7: not processed, safe to send again
            self.connection.stream_refused()
        if self.flush_pending and self.exchange is not None:
            self.exchange.response_flush()  # what came before the reset goes first
        self._fail(StreamReset(error_code))

    def _fail(self, error: Exception, *, reset: bool = False) -> None:
        exchange = self.exchange
        self._finish(reset=h2.errors.ErrorCodes.PROTOCOL_ERROR if reset else 0)
        if exchange is not None:
            exchange.upstream_failed(error)

    def _finish(self, *, reset: int) -> None:
        """Forget the stream (RST_STREAM with `reset` first, unless 0)."""
        if self.finished:
            return
        self.finished = True
        self.exchange = None
        self._queue.clear()
        connection = self.connection
        if self.stream_id:
            connection.streams.pop(self.stream_id, None)
            if reset and not connection.closed:
                with contextlib.suppress(h2.exceptions.ProtocolError):  # closed on h2's side
                    connection.h2.reset_stream(self.stream_id, error_code=reset)
                connection.flush()
        connection.place_freed()


class Connection(asyncio.Protocol):
    """One HTTP/2 connection to one endpoint, carrying up to `max_streams` streams."""

    def __init__(self, *, pool: Pool, address: routing.Upstream, tls: bool) -> None:
        self.pool = pool
        self.address = address
        self.tls = tls
        self.transport: asyncio.Transport | None = None
        self.h2 = _Client(config=_CONFIG)
        self.h2.local_settings = h2.settings.Settings(client=True,
                                                      initial_values=_LOCAL_SETTINGS)
        self.streams: dict[int, Stream] = {}
        self.max_streams = _ASSUMED_STREAMS  # the backend's SETTINGS tell, once in
        # Lowered by a stream the backend refused (`stream_refused`) until none is left.
        self._refusal_cap = MAX_STREAMS
        self.active = 0  # streams taken and not finished, and requests waiting for setup
        self._loop = asyncio.get_running_loop()
        self.ready: asyncio.Future[None] = self._loop.create_future()  # SETTINGS received
        self.settled = False
        self.draining = False  # GOAWAY received: no new streams
        self.closed = False
        self.write_paused = False
        self.served = 0
        self.idle_since = time.monotonic()
        self._idle_timer: asyncio.TimerHandle | None = None
        self._flush_scheduled = False
        self._unacked = 0  # connection-level bytes received since the last WINDOW_UPDATE

    def has_room(self) -> bool:
        return self.settled and not self.draining and not self.closed and (
            self.active < self.max_streams)

    def take(self) -> Stream:
        self.active += 1
        return Stream(connection=self)

    def place_freed(self) -> None:
        """A stream ended (or a request stopped waiting for the setup)."""
        self.active -= 1
        if not self.active:
            if self._refusal_cap < MAX_STREAMS:
                # Nothing of ours left open: the backend's count is in step with ours again.
                self._refusal_cap = MAX_STREAMS
                if self.settled:
                    self.max_streams = self._streams_allowed()
            self._idle()

    def stream_refused(self) -> None:
        """The backend refused a stream unprocessed (REFUSED_STREAM) below the limit its
        SETTINGS gave: it still counts streams we saw end (grpc-core does, for a moment,
        when a freed place is taken at once). Until a stream of ours ends here, the
        connection is full: the refused request, sent again, and those after it go to
        another connection (opened if none has room) rather than to the same refusal,
        and each refusal lowers the limit again, to the streams still open, until the
        connection has none left."""
        others = len(self.streams) - 1  # the refused stream is still among them
        self._refusal_cap = min(self._refusal_cap, others)
        self.max_streams = self._streams_allowed()

    def _streams_allowed(self) -> int:
        return min(MAX_STREAMS, self.h2.remote_settings.max_concurrent_streams,
                   self._refusal_cap)

    def _idle(self) -> None:
        """No stream left: close if draining, else once idle for the pool's idle timeout."""
        if self.draining:
            self.close()
            return
        self.idle_since = time.monotonic()
        if self._idle_timer is None and not self.closed:
            self._idle_timer = self._loop.call_later(self.pool.idle_timeout, self._idle_check)

    def _idle_check(self) -> None:
        self._idle_timer = None
        if self.closed or self.active:
            return
        left = self.idle_since + self.pool.idle_timeout - time.monotonic()
        if left > 0:
            self._idle_timer = self._loop.call_later(left, self._idle_check)
            return
        self.close()

    async def connect(self, *, timeout: float, context: ssl.SSLContext | None) -> None:
        """Connect, and wait for the backend's SETTINGS (`ready`); failures go to `ready`."""
        try:
            async with asyncio.timeout(timeout):
                await self._loop.create_connection(lambda: self, self.address[0],
                                                   self.address[1], ssl=context)
                if context is not None:
                    assert self.transport is not None
                    ssl_object = self.transport.get_extra_info("ssl_object")
                    if ssl_object is None or ssl_object.selected_alpn_protocol() != "h2":
                        raise ConnectionRefusedError("the backend did not agree to h2 (ALPN)")
                await asyncio.shield(self.ready)
        except OSError as err:  # TimeoutError and ssl.SSLError included
            logger.debug("upstream %s:%s (h2): %r", self.address[0], self.address[1], err)
            self.fail(err)
        except asyncio.CancelledError:
            self.fail(ConnectionAbortedError("the data plane stops"))
            raise

    def close(self) -> None:
        """Close now, politely (GOAWAY) if the connection still works."""
        if self.closed:
            return
        if self.transport is not None:
            with contextlib.suppress(h2.exceptions.ProtocolError):  # h2 saw it fail already
                self.h2.close_connection()
            self._write_out()
        self.fail(ConnectionAbortedError("closed by the data plane"))

    def fail(self, error: Exception) -> None:
        """The connection is gone: fail the streams it carried and whoever waits for it."""
        if not self.ready.done():
            self.ready.set_exception(
                error if isinstance(error, OSError) else ConnectionError(str(error)))
        if self.closed:
            return
        self.closed = True
        self.pool.forget(self)
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        if self.transport is not None:
            self.transport.close()
        for stream in list(self.streams.values()):
            stream._fail(error)

    def flush(self) -> None:
        """Write what h2 queued once this loop iteration is done: the frames of many
        streams in one write."""
        if not self._flush_scheduled and not self.closed:
            self._flush_scheduled = True
            self._loop.call_soon(self._write_out)

    def _write_out(self) -> None:
        self._flush_scheduled = False
        data = self.h2.data_to_send()
        if data and self.transport is not None and not self.closed:
            self.transport.write(data)

    # -- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        self.h2.initiate_connection()
        self.h2.increment_flow_control_window(CONNECTION_WINDOW - 65535)  # from RFC 9113's
        self._write_out()

    def data_received(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as err:
            self._write_out()  # the GOAWAY h2 queued
            self.fail(upstream.UpstreamError(f"HTTP/2 protocol error: {err}"))
            return
        streams = self.streams
        touched: list[Stream] = []
        for event in events:
            if isinstance(event, h2.events.DataReceived):
                length = event.flow_controlled_length or 0
                self._unacked += length
                stream = streams.get(event.stream_id or 0)
                if stream is not None:
                    stream.data_received(event.data or b"", length)
                    if not stream.flush_pending:
                        stream.flush_pending = True
                        touched.append(stream)
            elif isinstance(event, h2.events.ResponseReceived):
                stream = streams.get(event.stream_id or 0)
                if stream is not None:
                    stream.response_received(event.headers or [])
            elif isinstance(event, h2.events.StreamEnded):
                stream = streams.get(event.stream_id or 0)
                if stream is not None:
                    stream.ended()
            elif isinstance(event, h2.events.TrailersReceived):
                stream = streams.get(event.stream_id or 0)
                if stream is not None:
                    stream.trailers_received(event.headers or [])
            elif isinstance(event, h2.events.WindowUpdated):
                if event.stream_id:
                    stream = streams.get(event.stream_id)
                    if stream is not None:
                        stream.send_queued()
                else:
                    for stream in list(streams.values()):
                        stream.send_queued()
            elif isinstance(event, h2.events.StreamReset):
                stream = streams.get(event.stream_id or 0)
                if stream is not None:
                    stream.reset_received(int(event.error_code or 0))
            elif isinstance(event, h2.events.RemoteSettingsChanged):
                self._settings_changed()
            elif isinstance(event, h2.events.ConnectionTerminated):
                self._goaway(event.last_stream_id or 0, int(event.error_code or 0))
            if self.closed:
                return
        for stream in touched:
            stream.flushed()
        if self._unacked >= CONNECTION_WINDOW // 4 and not self.closed:
            self.h2.increment_flow_control_window(self._unacked)
            self._unacked = 0
        self._write_out()

    def eof_received(self) -> bool | None:
        return None  # close our side too: connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(exc or ConnectionResetError("the backend closed the connection"))
        self.transport = None

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        for stream in list(self.streams.values()):
            stream.send_queued()

    def _settings_changed(self) -> None:
        self.max_streams = self._streams_allowed()
        if not self.settled:
            self.settled = True
            if not self.ready.done():
                self.ready.set_result(None)
            if not self.active:
                self._idle()  # set up with nobody waiting any more (they timed out)
        # A new initial window may let queued bodies out.
        for stream in list(self.streams.values()):
            stream.send_queued()

    def _goaway(self, last_stream_id: int, error_code: int) -> None:
        """No new streams here; those above `last_stream_id` were not processed."""
        logger.info("upstream %s:%s sent GOAWAY (error code %d, last stream %d)",
                    self.address[0], self.address[1], error_code, last_stream_id)
        self.draining = True
        self.pool.forget(self)
        if not self.ready.done():
            self.ready.set_exception(ConnectionRefusedError("the backend sent GOAWAY"))
        for stream_id, stream in list(self.streams.items()):
            if stream_id > last_stream_id:
                stream.reused = not stream.received_any
                stream._fail(upstream.UpstreamError("not processed: the backend sent GOAWAY"))
        if not self.active:
            self.close()


class Pool:
    """HTTP/2 connections per endpoint (`upstream.Opener`), shared by every client."""

    def __init__(self, *, idle_timeout: float = 60.0) -> None:
        self.idle_timeout = idle_timeout
        self._connections: dict[tuple[routing.Upstream, bool], list[Connection]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._tls_context: ssl.SSLContext | None = None

    def connection_count(self, address: routing.Upstream, tls: bool) -> int:
        return len(self._connections.get((address, tls), ()))

    def take(self, address: routing.Upstream, tls: bool) -> Stream | None:
        """A stream on the first connection to `address` with room for one."""
        for connection in self._connections.get((address, tls), ()):
            if connection.has_room():
                return connection.take()
        return None

    async def open(self, address: routing.Upstream, *, tls: bool, timeout: float) -> Stream:
        """A stream on a connection being set up with room left, else on a new one; OSError
        (timeouts included) when the endpoint does not accept one within `timeout`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        key = (address, tls)
        while True:
            connections = self._connections.setdefault(key, [])
            pending = next((c for c in connections if not c.settled
                            and c.active < _ASSUMED_STREAMS), None)
            if pending is None:
                stream = self.take(address, tls)
                if stream is not None:
                    return stream
                pending = Connection(pool=self, address=address, tls=tls)
                connections.append(pending)
                task = loop.create_task(pending.connect(
                    timeout=timeout, context=self._context() if tls else None))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            pending.active += 1  # its place while it is set up
            try:
                async with asyncio.timeout(max(0.0, deadline - loop.time())):
                    await asyncio.shield(pending.ready)
            finally:
                pending.place_freed()
            if pending.has_room():
                return pending.take()
            # Full already (the backend allows fewer streams than were waiting): another.

    def forget(self, connection: Connection) -> None:
        """No new streams on `connection` (closed, or draining)."""
        connections = self._connections.get((connection.address, connection.tls))
        if connections is not None and connection in connections:
            connections.remove(connection)

    def close_all(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for connections in list(self._connections.values()):
            for connection in list(connections):
                connection.close()
        self._connections.clear()

    def _context(self) -> ssl.SSLContext:
        """TLS with ALPN h2, unverified as `backend-protocol: HTTPS` is (upstream.Pool)."""
        if self._tls_context is None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            context.set_alpn_protocols(["h2"])
            self._tls_context = context
        return self._tls_context
