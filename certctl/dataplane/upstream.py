"""Connections to backends: a keep-alive pool per endpoint, and parsing what they answer.

An `UpstreamConnection` is an asyncio Protocol: bytes from the backend go
straight into an httptools response parser whose callbacks are forwarded to
the client connection using it (its `Exchange`), so a response is relayed
without a task switch or a buffer in between. That is what lets a Python
proxy keep up with nginx's share of the work; see bench/RESULTS.md (B4).

The `Pool` keeps idle kept-alive connections per endpoint (like nginx's
`keepalive` in an upstream block): at most `max_idle_per_endpoint` (512:
ingress-nginx keeps 320 per worker process; four HTTP/2 clients with their
128 streams each keep 512 requests in flight, and with fewer kept every
burst past the limit costs new connections, bench B10), dropped
after `idle_timeout` or as soon as the backend closes them. Only a
connection whose last response ended cleanly, with framing that says where
it ended and no `Connection: close`, goes back to the pool.
"""

from __future__ import annotations

import asyncio
import logging
import math
import ssl
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Final, Protocol, TypeVar, cast

import httptools

from certctl.dataplane import routing
from certctl.routes import options as route_options

logger = logging.getLogger(__name__)

# Hop-by-hop headers (RFC 9110 7.6.1, plus the legacy ones proxies strip).
# Names are compared lowercased.
HOP_BY_HOP: Final = frozenset(
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

# What a backend's response header is to the relay, by its name as sent: a backend sends
# the same few names, in the same case, with every response, so each is lowercased and
# classified once, not once a response. Bounded: made-up names only cost their own check.
_FORWARDED: Final = 0
_SERVER: Final = 1  # forwarded, and no Server header is added
_CONTENT_LENGTH: Final = 2
_TRANSFER_ENCODING: Final = 3
_CONNECTION: Final = 4
_UPGRADE: Final = 5
_DROPPED: Final = 6  # the other hop-by-hop headers
_HEADER_KINDS: Final[dict[bytes, int]] = {}
_HEADER_KINDS_SIZE: Final = 1024
_SPECIAL_HEADERS: Final = {
    b"server": _SERVER,
    b"content-length": _CONTENT_LENGTH,
    b"transfer-encoding": _TRANSFER_ENCODING,
    b"connection": _CONNECTION,
    b"upgrade": _UPGRADE,
}


def _header_kind(name: bytes) -> int:
    lname = name.lower()
    kind = _SPECIAL_HEADERS.get(lname, _DROPPED if lname in HOP_BY_HOP else _FORWARDED)
    if len(_HEADER_KINDS) >= _HEADER_KINDS_SIZE:
        _HEADER_KINDS.clear()
    _HEADER_KINDS[name] = kind
    return kind


class UpstreamError(Exception):
    """The upstream broke the exchange: 502 before the response head was sent, else abort."""


class ResponseHead:
    __slots__ = ("chunked", "content_length", "has_server", "headers", "reason", "status",
                 "upgrade")

    def __init__(self) -> None:
        self.status = 0
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []  # minus hop-by-hop and framing
        self.content_length: bytes | None = None
        self.chunked = False
        self.upgrade: bytes | None = None
        self.has_server = False  # the backend sent a Server header (else the data plane adds one)


class Exchange(Protocol):
    """What a client connection implements to receive one upstream response."""

    def response_head(self, head: ResponseHead) -> None: ...

    def response_body(self, chunk: bytes) -> None: ...

    def response_flush(self) -> None: ...

    def response_complete(self) -> None: ...

    def response_upgraded(self, leftover: bytes) -> None: ...

    def tunnel_data(self, data: bytes) -> None: ...

    def upstream_failed(self, error: Exception | None) -> None: ...

    def upstream_write_paused(self, paused: bool) -> None: ...


class Leg(Protocol):
    """What a client connection holds for the request it forwards: an `UpstreamConnection`
    (HTTP/1.1, one exchange at a time) or a stream of a multiplexed HTTP/2 connection
    (`upstream_h2.Stream`). Each tells its exchange what the backend answers."""

    address: routing.Upstream
    tries: int  # endpoints tried to get this one (proxy-next-upstream)
    # The backend cannot have acted on the request: sending it again is safe if nothing
    # of it was sent (a kept-alive connection closed while idle, a refused HTTP/2 stream).
    reused: bool
    received_any: bool  # of the response
    reusable: bool

    def write(self, data: bytes) -> None: ...

    def pause_reading(self, paused: bool) -> None: ...

    def close(self) -> None: ...


LegT = TypeVar("LegT", bound=Leg)
LegT_co = TypeVar("LegT_co", bound=Leg, covariant=True)


class Opener(Protocol[LegT_co]):
    """Where legs to an endpoint come from: `Pool` here, `upstream_h2.Pool` for HTTP/2."""

    def take(self, address: routing.Upstream, tls: bool) -> LegT_co | None: ...

    async def open(self, address: routing.Upstream, *, tls: bool, timeout: float) -> LegT_co: ...


class UpstreamConnection(asyncio.Protocol):
    """One connection to one endpoint, serving one exchange at a time."""

    def __init__(self, *, address: routing.Upstream, tls: bool) -> None:
        self.address = address
        self.tls = tls
        self.transport: asyncio.Transport | None = None
        self.exchange: Exchange | None = None
        self.reused = False  # served a request before: a failure may be a stale keep-alive
        self.idle_since = 0.0
        self.closed = False
        self.reusable = False
        self.reading_paused = False
        self.received_any = False  # of the current response
        self.tries = 1  # endpoints tried to get this one for the request it serves
        self._parser = httptools.HttpResponseParser(self)
        # The calls every exchange makes, bound once (compiled, a call by name of a C
        # object's method looks it up on its type every time).
        self._feed = self._parser.feed_data
        self._send: Callable[[bytes], object] | None = None  # the transport's write
        self._head = ResponseHead()
        self._head_only = False
        self._informational = False
        self._done = True
        self._complete_pending = False
        self._upgrading = False
        self._named: list[bytes] = []
        self._tunnel = False

    # -- used by the client connection ---------------------------------------------

    def begin(self, *, exchange: Exchange, request: bytes, head_only: bool) -> None:
        """Send a request head; its response goes to `exchange`."""
        self.exchange = exchange
        if self._head_only or self._informational:
            # The last response left the parser expecting a body that never came.
            self._parser = httptools.HttpResponseParser(self)
            self._feed = self._parser.feed_data
            self._informational = False
        self._head_only = head_only  # HEAD: no body whatever the headers say
        self._done = False
        self._complete_pending = False
        self._upgrading = False
        self.received_any = False
        self.reusable = True
        assert self._send is not None
        self._send(request)

    def write(self, data: bytes) -> None:
        assert self._send is not None
        self._send(data)

    def pause_reading(self, paused: bool) -> None:
        if self.transport is not None and not self.closed and paused != self.reading_paused:
            self.reading_paused = paused
            if paused:
                self.transport.pause_reading()
            else:
                self.transport.resume_reading()

    def close(self) -> None:
        self.exchange = None
        if self.transport is not None and not self.closed:
            self.transport.close()
        self.closed = True

    # -- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        self._send = self.transport.write

    def data_received(self, data: bytes) -> None:
        exchange = self.exchange
        if self._tunnel:
            if exchange is not None:
                exchange.tunnel_data(data)
            return
        if exchange is None or self._done:
            # Bytes nobody asked for: the stream is out of step, never reuse it.
            self.reusable = False
            self.close()
            return
        self.received_any = True
        try:
            self._feed(data)
        except httptools.HttpParserUpgrade as upgrade:
            self._tunnel = True
            exchange.response_upgraded(data[upgrade.args[0] :])
            return
        except httptools.HttpParserError as err:
            self.reusable = False
            self._done = True
            exchange.upstream_failed(UpstreamError(f"invalid response: {err}"))
            return
        exchange = self.exchange
        if exchange is None:
            return
        if self._complete_pending:
            # Completed outside the parser's callbacks: the exchange may hand this
            # connection to the next request at once.
            self._complete_pending = False
            self._done = True
            exchange.response_complete()
        else:
            exchange.response_flush()

    def eof_received(self) -> bool | None:
        return None  # close our side too: connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.reusable = False
        exchange, self.exchange = self.exchange, None
        if exchange is not None and not self._done:
            self._done = True
            exchange.upstream_failed(exc)

    def pause_writing(self) -> None:
        if self.exchange is not None:
            self.exchange.upstream_write_paused(True)

    def resume_writing(self) -> None:
        if self.exchange is not None:
            self.exchange.upstream_write_paused(False)

    # -- httptools callbacks --------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._complete_pending:
            self.reusable = False  # bytes after the response: the stream is out of step
        self._head = ResponseHead()
        self._named = []

    def on_status(self, reason: bytes) -> None:
        self._head.reason = reason

    def on_header(self, name: bytes, value: bytes) -> None:
        kind = _HEADER_KINDS.get(name)
        if kind is None:
            kind = _header_kind(name)
        head = self._head
        if kind == _FORWARDED:
            head.headers.append((name, value))
        elif kind == _SERVER:
            head.headers.append((name, value))
            head.has_server = True
        elif kind == _CONTENT_LENGTH:
            head.content_length = value.strip()
        elif kind == _TRANSFER_ENCODING:
            head.chunked = True
        elif kind == _CONNECTION:
            for token in value.split(b","):
                token = token.strip().lower()
                if token == b"close":
                    self.reusable = False
                elif token != b"keep-alive":
                    self._named.append(token)
        elif kind == _UPGRADE:
            head.upgrade = value

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            # A hint such as 103: we never forward Expect, so no 100 is awaited.
            self._informational = True
            return
        head = self._head
        head.status = status
        self._upgrading = status == 101
        if self._named:
            named = self._named
            head.headers = [(n, v) for n, v in head.headers if n.lower() not in named]
        if (head.content_length is None and not head.chunked and status not in (204, 304)) or (
            not self._parser.should_keep_alive()
        ):
            self.reusable = False
        exchange = self.exchange
        assert exchange is not None
        exchange.response_head(head)
        if self._head_only:
            self._complete_pending = True

    def on_body(self, body: bytes) -> None:
        if self._complete_pending:
            self.reusable = False  # a body after a HEAD response's head: out of step
        elif body and self.exchange is not None:
            self.exchange.response_body(body)

    def on_message_complete(self) -> None:
        if self._informational:
            self._informational = False
            return
        if not self._upgrading:
            self._complete_pending = True


class RoundRobin:
    """Where round-robin starts among a route's endpoints: one counter for the whole data
    plane, even enough without one per route."""

    def __init__(self) -> None:
        self._turn = 0

    def start(self, count: int) -> int:
        """The endpoint to try first of `count`."""
        turn = self._turn
        self._turn = turn + 1
        return turn % count


EWMA_DECAY_SECONDS: Final = 10.0  # ingress-nginx's balancer/ewma.lua DECAY_TIME


class Latencies:
    """Per endpoint, the peak-weighted moving average of how long its response heads take
    (ingress-nginx's `load-balance: ewma`): a slower answer counts at once, a faster one is
    averaged in, and an idle score decays towards 0 so a once-slow endpoint is tried again."""

    def __init__(self) -> None:
        self._scores: dict[routing.Upstream, tuple[float, float]] = {}  # (ewma, when)

    def observe(self, address: routing.Upstream, seconds: float, *, now: float) -> None:
        found = self._scores.get(address)
        if found is None or seconds > found[0]:
            self._scores[address] = (seconds, now)
            return
        weight = math.exp(-(now - found[1]) / EWMA_DECAY_SECONDS)
        self._scores[address] = (found[0] * weight + seconds * (1.0 - weight), now)

    def fastest(self, upstreams: Sequence[routing.Upstream], *, start: int, now: float) -> int:
        """The index of the endpoint with the lowest decayed score (never measured: 0); ties
        go to the first from `start`, so a round-robin start spreads them."""
        count = len(upstreams)
        best, best_score = start % count, math.inf
        for offset in range(count):
            index = (start + offset) % count
            found = self._scores.get(upstreams[index])
            score = 0.0 if found is None else found[0] * math.exp(
                -(now - found[1]) / EWMA_DECAY_SECONDS)
            if score < best_score:
                best, best_score = index, score
        return best


class Pool:
    def __init__(self, *, max_idle_per_endpoint: int = 512, idle_timeout: float = 60.0) -> None:
        self._idle: dict[tuple[routing.Upstream, bool], deque[UpstreamConnection]] = {}
        self.latencies = Latencies()  # fed only by routes with load-balance: ewma
        self._max_idle = max_idle_per_endpoint
        self._idle_timeout = idle_timeout
        self._tls_context: ssl.SSLContext | None = None

    def take(self, address: routing.Upstream, tls: bool) -> UpstreamConnection | None:
        """The most recently used idle connection to `address` (least likely timed out)."""
        idle = self._idle.get((address, tls))
        if not idle:
            return None
        oldest_allowed = time.monotonic() - self._idle_timeout
        while idle:
            connection = idle.pop()
            if connection.idle_since >= oldest_allowed and not connection.closed:
                connection.tries = 1
                return connection
            connection.close()
        return None

    async def open(
        self, address: routing.Upstream, *, tls: bool, timeout: float
    ) -> UpstreamConnection:
        """A new connection; OSError (timeouts included) when the endpoint does not accept."""
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout):
            _, connection = await loop.create_connection(
                lambda: UpstreamConnection(address=address, tls=tls),
                address[0],
                address[1],
                ssl=self._context() if tls else None,
            )
        return connection

    async def connect_any(
        self,
        upstreams: Sequence[routing.Upstream],
        *,
        start: int,
        tls: bool,
        timeout: float,
        fresh: bool,
    ) -> UpstreamConnection | None:
        """`connect_any` with this pool's connections, every endpoint tried."""
        return await connect_any(self, upstreams, start=start, tls=tls, timeout=timeout,
                                 fresh=fresh)

    def release(self, connection: Leg) -> None:
        """Keep `connection` for the next request to its endpoint if it can serve one;
        a stream of a multiplexed connection is closed instead (which ends it, if its
        exchange did not, and frees its place on the connection)."""
        if not isinstance(connection, UpstreamConnection):
            connection.close()
            return
        connection.exchange = None
        if not connection.reusable or connection.closed:
            connection.close()
            return
        # A slow client may have paused it just before its response ended; idle,
        # it must read again to notice the backend closing it.
        connection.pause_reading(False)
        key = (connection.address, connection.tls)
        idle = self._idle.get(key)
        if idle is None:  # not setdefault: that would make a deque every time
            idle = self._idle[key] = deque()
        if len(idle) >= self._max_idle:
            connection.close()
            return
        connection.reused = True
        connection.idle_since = time.monotonic()
        idle.append(connection)

    def close_all(self) -> None:
        for idle in self._idle.values():
            for connection in idle:
                connection.close()
        self._idle.clear()

    def _context(self) -> ssl.SSLContext:
        """TLS to backends, unverified like nginx's `proxy_ssl_verify off` default: inside
        a cluster, backends present self-signed or pod-IP certificates that cannot verify."""
        if self._tls_context is None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            self._tls_context = context
        return self._tls_context


async def connect_for(
    opener: Opener[LegT], match: routing.RouteMatch, *, start: int, fresh: bool,
    default_timeout: float, tried: int, tried_since: float,
) -> LegT | None:
    """`connect_any` for a matched route, within its proxy-next-upstream budget: `tried`
    endpoints were already tried since `tried_since` (HTTP/1.1 and HTTP/2, clients and
    backends alike)."""
    options = match.options
    timeout = options.connect_timeout or default_timeout
    policy = options.next_upstream
    if policy is None:
        return await connect_any(opener, match.upstreams, start=start, tls=options.backend_tls,
                                 fresh=fresh, timeout=timeout)
    count = len(match.upstreams)
    return await connect_any(
        opener, match.upstreams, start=start, tls=options.backend_tls, fresh=fresh,
        timeout=timeout, attempts=max(1, min(policy.tries or count, count) - tried),
        next_upstream=policy,
        deadline=tried_since + policy.timeout_seconds if policy.timeout_seconds else 0.0)


async def connect_any(
    opener: Opener[LegT],
    upstreams: Sequence[routing.Upstream],
    *,
    start: int,
    tls: bool,
    timeout: float,
    fresh: bool,
    attempts: int = 0,
    next_upstream: route_options.NextUpstream | None = None,
    deadline: float = 0.0,
) -> LegT | None:
    """A leg to the first endpoint, round-robin from `start`, that has one ready (unless
    `fresh`) or accepts a new connection; None when every endpoint refused.

    With `next_upstream` (proxy-next-upstream), at most `attempts` endpoints (0: all),
    stopping at a failure it does not list or past `deadline` (monotonic, 0: none); the
    leg's `tries` says how many endpoints it took."""
    count = len(upstreams)
    limit = min(attempts, count) if attempts else count
    for offset in range(limit):
        address = upstreams[(start + offset) % count]
        connection = None if fresh else opener.take(address, tls)
        if connection is None:
            try:
                connection = await opener.open(address, tls=tls, timeout=timeout)
            except OSError as err:  # TimeoutError included
                logger.debug("upstream %s:%s: %r", address[0], address[1], err)
                if next_upstream is not None and (
                    not (next_upstream.timeout if isinstance(err, TimeoutError)
                         else next_upstream.error)
                    or (deadline and time.monotonic() >= deadline)
                ):
                    break
                continue
        connection.tries = offset + 1
        return connection
    logger.warning("no upstream of %d accepted a connection: %s", count, list(upstreams))
    return None
