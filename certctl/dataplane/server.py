"""The data plane's listeners: HTTP (ACME HTTP-01, redirects) and HTTPS (SNI), both proxying.

Each accepted connection becomes a `connection.ClientConnection` on the
running event loop; the runtime picks uvloop
(`asyncio.Runner(loop_factory=uvloop.new_event_loop)`) when it is installed.
TLS is terminated by the loop's own SSL transport; the SNI callback only
looks the certificate up in the in-memory index (`certstore`), so nothing
slow happens during a handshake.

Handshake failures never reach application code (the loop drops the
connection before calling us), so they are counted from the SSLObjects
themselves: one seen by the SNI callback that is freed without having
reached `_serve_https` failed.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import weakref
from collections.abc import Callable

from certctl.dataplane import certstore, connection, metrics, routing, upstream

logger = logging.getLogger(__name__)

ChallengeResponder = Callable[[str, str], str | None]
"""(host, token) -> the key authorization to serve, or None. Called on the event loop: be quick."""


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
        handshake_timeout: float = 10.0,
        metrics_address: tuple[str, int] | None = None,
    ) -> None:
        """`upstream_timeout` bounds each wait for upstream bytes (like nginx's
        proxy_read_timeout) and `connect_timeout` each connect, unless an
        Ingress annotation says otherwise; `client_timeout` bounds each wait
        for client bytes, including the idle time between keep-alive
        requests. `metrics_address` serves Prometheus metrics (None: off)."""
        self._http_address = http_address
        self._https_address = https_address
        self._metrics_address = metrics_address
        self.certificates = certificates
        self.challenge_responder = challenge_responder
        self.connect_timeout = connect_timeout
        self.upstream_timeout = upstream_timeout
        self.client_timeout = client_timeout
        self._handshake_timeout = handshake_timeout
        self._routes = routing.RouteTable.empty()
        self._servers: list[asyncio.Server] = []
        self._http_port: int | None = None
        self._https_port: int | None = None
        self._metrics_port: int | None = None
        self.pool = upstream.Pool()
        self.metrics = metrics.Metrics(certificates=certificates)
        self._connections: set[asyncio.Task[None]] = set()
        self._handshaking: dict[weakref.ref[ssl.SSLObject], None] = {}

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

    @property
    def metrics_port(self) -> int | None:
        """The bound metrics port, None when metrics are off or not started."""
        return self._metrics_port

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
                self._serve_https,
                host,
                port,
                ssl=context,
                ssl_handshake_timeout=self._handshake_timeout,
                reuse_address=True,
            )
            self._servers.append(server)
            self._https_port = server.sockets[0].getsockname()[1]
        if self._metrics_address is not None:
            self._metrics_port = self.metrics.serve(self._metrics_address)
        logger.info(
            "data plane listening: http %s, https %s, metrics %s",
            self._http_port,
            self._https_port,
            self._metrics_port,
        )

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
        self.pool.close_all()
        self.metrics.stop()
        self._http_port = self._https_port = self._metrics_port = None

    def _on_sni(
        self, ssl_object: ssl.SSLObject, server_name: str | None, _context: ssl.SSLContext
    ) -> None:
        ssl_object.context = self.certificates.select(server_name)
        self._handshaking[weakref.ref(ssl_object, self._handshake_freed)] = None

    def _handshake_freed(self, ref: weakref.ref[ssl.SSLObject]) -> None:
        if self._handshaking.pop(ref, 0) is None:
            self.metrics.handshake_errors += 1

    async def _serve_http(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self._serve(reader=reader, writer=writer, scheme=b"http")

    async def _serve_https(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        ssl_object = writer.get_extra_info("ssl_object")
        if ssl_object is not None:
            self._handshaking.pop(weakref.ref(ssl_object), None)
        self.metrics.handshakes += 1
        await self._serve(reader=reader, writer=writer, scheme=b"https")

    async def _serve(
        self, *, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, scheme: bytes
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await connection.ClientConnection(
                plane=self, reader=reader, writer=writer, scheme=scheme
            ).run()
        except asyncio.CancelledError:
            # `stop` cancels open connections. Ending quietly: Python 3.11's
            # stream callback logs a cancelled handler task as an error.
            pass
        finally:
            self._connections.discard(task)
            writer.close()
