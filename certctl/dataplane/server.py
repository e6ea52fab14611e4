"""The data plane's listeners: HTTP (ACME HTTP-01, redirects) and HTTPS (SNI), both proxying.

Each accepted connection is a `connection.ClientConnection` protocol on the
running event loop; the runtime picks uvloop
(`asyncio.Runner(loop_factory=uvloop.new_event_loop)`) when it is installed.
TLS is terminated by `tls.TlsListener`, a transport of our own that is
lighter per connection than the loop's SSL transport (bench B3); the SNI
callback only looks the certificate up in the in-memory index
(`certstore`), so nothing slow happens during a handshake. Clients that
negotiate `h2` through ALPN are handed to `http2.Http2Connection` right
after the handshake; the rest speak HTTP/1.1 with
`connection.ClientConnection`. A sweeper task enforces every connection's
deadline (see `connection`) and every handshake's twice a second, instead
of a timer per read.

`stop(grace=...)` drains rather than cuts (SIGTERM, after the shutdown
delay): the listeners close, so new connections are refused and go to another
replica; each HTTP/1.1 connection is closed as soon as it is between requests,
and the request in flight, if any, is answered with `Connection: close` first;
each HTTP/2 connection gets a GOAWAY naming the last stream it had opened, its
open streams finish and it closes when none is left. Whatever still runs when
the grace period ends (a long download, a WebSocket) is cut, so that the
process exits before kubelet's terminationGracePeriodSeconds kills it.

Handshakes are counted by the TLS listener: a protocol is only created for a
connection whose handshake completed; the others (garbage, a truncated
hello, a timeout, a reset, plain HTTP on the TLS port) are counted as
failed.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import sys
import time
from collections.abc import Callable, Coroutine
from typing import Any

from certctl.admin import health as admin_health
from certctl.admin import server as admin_server
from certctl.dataplane import (
    DEFAULT_MAX_CONNECTIONS,
    certstore,
    connection,
    external_auth,
    limits,
    metrics,
    routing,
    services,
    tls,
    upstream,
    upstream_h2,
)

logger = logging.getLogger(__name__)


class DataPlane:
    """HTTP and HTTPS listeners routing requests per the current `RouteTable`.

    Routes start empty (every request 404s) until `set_routes`; swapping the
    table is one reference assignment, safe from any thread, and in-flight
    requests finish on the table they matched against.
    """

    def __init__(
        self,
        *,
        http_address: tuple[str, int] | None,
        https_address: tuple[str, int] | None,
        certificates: certstore.CertificateIndex,
        challenge_responder: services.ChallengeResponder,
        connect_timeout: float = 5.0,
        upstream_timeout: float = 60.0,
        client_timeout: float = 60.0,
        handshake_timeout: float = 10.0,
        metrics_address: tuple[str, int] | None = None,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
    ) -> None:
        """`upstream_timeout` bounds each wait for upstream bytes (like nginx's
        proxy_read_timeout) and `connect_timeout` each connect, unless an
        Ingress annotation says otherwise; `client_timeout` bounds each wait
        for client bytes, including the idle time between keep-alive
        requests. `metrics_address` serves the admin address (None: off): /metrics and
        the probes of a data plane embedded on its own (tests, benchmarks); the commands
        run one admin server per process instead (runtime.dataplane_feed).

        At most `max_connections` client connections are held, both listeners and
        TLS handshakes in progress together: at the limit the HTTPS listener stops
        accepting until one closes (new clients wait in the kernel's backlog, as with
        nginx's worker_connections), and the HTTP listener closes new connections at
        once (its server cannot pause accepting)."""
        self._http_address = http_address
        self._https_address = https_address
        self.connect_timeout = connect_timeout
        self.upstream_timeout = upstream_timeout
        self.client_timeout = client_timeout
        self._handshake_timeout = handshake_timeout
        self.max_connections = max_connections
        self._at_limit = False  # the limit was reached (and logged once)
        self._servers: list[asyncio.Server] = []
        self._http_port: int | None = None
        self._https_port: int | None = None
        self.pool = upstream.Pool()
        self.h2_pool = upstream_h2.Pool()  # backend-protocol GRPC, GRPCS, H2C
        self.limits = limits.RequestLimits()  # Ingresses' limit-rps/-rpm/-connections counts
        self.external_auth = external_auth.ExternalAuthorizer(
            pool=self.pool, connect_timeout=connect_timeout, timeout=upstream_timeout)
        self.metrics = metrics.Metrics(certificates=certificates)
        self.health = admin_health.Health(waiting_for=())
        self._admin = None if metrics_address is None else admin_server.AdminServer(
            address=metrics_address, health=self.health, registry=self.metrics.registry)
        self._connections: set[services.Client] = set()
        # What connections use of the data plane; its routes, certificates, HTTPS port and
        # draining flag are assigned there as they change.
        self.services = services.Services(
            certificates=certificates, challenge_responder=challenge_responder, pool=self.pool,
            h2_pool=self.h2_pool, limits=self.limits, external_auth=self.external_auth,
            counts=self.metrics.counts, connect_timeout=connect_timeout,
            upstream_timeout=upstream_timeout, client_timeout=client_timeout,
            admits_connection=self.admits_connection, connection_opened=self.connection_opened,
            connection_closed=self.connection_closed, spawn=self.spawn)
        self._drained: asyncio.Event | None = None  # set when the last one closed
        self._tasks: set[asyncio.Task[None]] = set()
        self._sweeper: asyncio.Task[None] | None = None
        self._tls: tls.TlsListener | None = None
        self._hold: tls.Hold | None = None
        self._hold_timeout = 0.0
        self._previous_unraisablehook: Callable[[Any], object] | None = None

    def hold_unknown_names(self, *, hold: tls.Hold, timeout: float) -> None:
        """Before `start`: handshakes for names no certificate covers are offered to `hold`
        (on-demand TLS, see `tls.TlsListener`), which resumes them within `timeout` seconds.
        Every handshake then reads its ClientHello before OpenSSL does."""
        self._hold = hold
        self._hold_timeout = timeout

    def set_routes(self, table: routing.RouteTable) -> None:
        # The handshakes of hosts with auth-tls-secret ask for client certificates first,
        # so no request of such a host is routed before its handshake could ask.
        self.certificates.set_client_certificates(table.client_certificates)
        self.services.routes = table

    @property
    def routes(self) -> routing.RouteTable:
        return self.services.routes

    @property
    def certificates(self) -> certstore.CertificateIndex:
        return self.services.certificates

    @certificates.setter
    def certificates(self, certificates: certstore.CertificateIndex) -> None:
        self.services.certificates = certificates
        if self._tls is not None:
            self._tls.select_certificate = certificates.select
            self._tls.unknown_context = certificates.default_context

    @property
    def challenge_responder(self) -> services.ChallengeResponder:
        return self.services.challenge_responder

    @challenge_responder.setter
    def challenge_responder(self, responder: services.ChallengeResponder) -> None:
        self.services.challenge_responder = responder

    @property
    def http_port(self) -> int:
        """The bound HTTP port (the real one when the address asked for port 0)."""
        if self._http_port is None:
            raise RuntimeError("DataPlane is not started, or has no HTTP listener")
        return self._http_port

    @property
    def https_port(self) -> int | None:
        """The bound HTTPS port, None when HTTPS is disabled or not started."""
        return self._https_port

    @property
    def metrics_port(self) -> int | None:
        """The bound admin port, None when it is off or not started."""
        return None if self._admin is None else self._admin.port

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self._http_address is not None:  # None: HTTPS only (no HTTP-01, no redirects)
            host, port = self._http_address
            server = await loop.create_server(
                connection.factory(services=self.services, scheme=b"http"),
                host,
                port,
                reuse_address=True,
            )
            self._servers.append(server)
            self._http_port = server.sockets[0].getsockname()[1]
        if self._https_address is not None:
            self._install_unraisablehook()
            self._tls = tls.TlsListener(
                context=certstore.new_server_context(),
                # Called on every handshake, so without a wrapper of DataPlane's between (B3):
                # the index's own `select` (the setter points the listener at a new index),
                # the compiled connection's factory, the compiled counts.
                select_certificate=self.certificates.select,
                protocol_factory=connection.factory(services=self.services, scheme=b"https"),
                handshake_timeout=self._handshake_timeout,
                on_handshake=self.metrics.counts.count_handshake,
                admit=self.admits_connection,
                preread=self._certificates_asked_for,
                select_acme_context=self._select_acme_context,
                hold=self._hold,
                unknown_context=self.certificates.default_context,
                hold_timeout=self._hold_timeout,
            )
            self._tls.listen(*self._https_address)
            self._https_port = self.services.https_port = self._tls.sockets[0].getsockname()[1]
        if self._admin is not None:
            self.health.watch_loop(loop)
            self._admin.start()
        self._sweeper = asyncio.create_task(self._sweep())
        logger.info(
            "data plane listening: http %s, https %s, metrics %s",
            self._http_port,
            self._https_port,
            self.metrics_port,
        )

    async def stop(self, *, grace: float = 0.0) -> None:
        """Stop listening and drop open connections; with a `grace` period (seconds), let
        in-flight requests and streams finish first, for up to that long (see above)."""
        if grace > 0 and (self._servers or self._tls is not None):
            await self._drain(grace)
        for server in self._servers:
            server.close()
        if self._tls is not None:
            self._tls.close()
            self._tls = None
        tasks = list(self._tasks)
        if self._sweeper is not None:
            tasks.append(self._sweeper)
            self._sweeper = None
        for client in list(self._connections):
            client.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()
        self.pool.close_all()
        self.h2_pool.close_all()
        if self._admin is not None:
            self._admin.stop()
        self._uninstall_unraisablehook()
        self._http_port = self._https_port = self.services.https_port = None
        self.services.draining = False
        self._drained = None

    async def _drain(self, grace: float) -> None:
        """Refuse new connections and wait, up to `grace` seconds, until the open ones
        finished what they serve and closed."""
        self.services.draining = True
        self._drained = asyncio.Event()
        for server in self._servers:
            server.close()
        if self._tls is not None:
            self._tls.stop_listening()
        for client in list(self._connections):
            client.drain()
        if not self._connections:
            return
        logger.info("draining %d client connections for up to %g s", len(self._connections),
                    grace)
        try:
            await asyncio.wait_for(self._drained.wait(), grace)
        except TimeoutError:
            logger.warning("%d client connections still busy after the drain timeout: cut",
                           len(self._connections))

    def _certificates_asked_for(self) -> bool:
        """Whether some host asks for client certificates (its handshakes then start on its
        own context, see TlsListener), a TLS-ALPN-01 challenge is live, or on-demand TLS
        may hold handshakes for unknown names."""
        certificates = self.certificates
        return (certificates.asks_for_client_certificates or certificates.answers_acme_tls
                or self._hold is not None)

    def _select_acme_context(self, server_name: str) -> ssl.SSLContext | None:
        return self.certificates.select_acme_tls(server_name)

    def _install_unraisablehook(self) -> None:
        """Count, rather than print, server names that are not ASCII.

        CPython decodes the SNI name as ASCII before calling `_on_sni`; when
        that fails it aborts the handshake and reports the error through
        sys.unraisablehook, whose default prints a traceback to stderr for
        every such ClientHello: anyone could flood the logs. The handshake
        failure is counted when its connection is freed; this only keeps it
        out of stderr. Anything else goes to the previous hook.
        """
        if self._previous_unraisablehook is not None:
            return
        previous = sys.unraisablehook

        def hook(unraisable: Any) -> None:
            if isinstance(unraisable.exc_value, UnicodeDecodeError) and isinstance(
                unraisable.object, bytes
            ):
                logger.debug("TLS handshake refused: server name is not ASCII")
                return
            previous(unraisable)

        self._previous_unraisablehook = previous
        sys.unraisablehook = hook

    def _uninstall_unraisablehook(self) -> None:
        if self._previous_unraisablehook is not None:
            sys.unraisablehook = self._previous_unraisablehook
            self._previous_unraisablehook = None

    # -- used by connections -------------------------------------------------------------

    def admits_connection(self) -> bool:
        """Whether one more client connection stays within `max_connections`."""
        held = len(self._connections) + (len(self._tls.handshaking) if self._tls else 0)
        if held < self.max_connections:
            self._at_limit = False
            return True
        if not self._at_limit:
            self._at_limit = True
            logger.warning(
                "data plane holds %d client connections, its limit (--max-connections): "
                "new ones wait or are closed until some end", held)
        return False

    def connection_opened(self, client: services.Client) -> None:
        self._connections.add(client)

    def connection_closed(self, client: services.Client) -> None:
        self._connections.discard(client)
        if self._drained is not None and not self._connections:
            self._drained.set()
        if self._tls is not None:
            self._tls.resume_accepting()  # if the limit had paused it

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        """Run a connection's background step (opening an upstream connection)."""
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("data plane task failed", exc_info=task.exception())

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            self._sweep_once(time.monotonic())

    def _sweep_once(self, now: float) -> None:
        # A function of its own: a loop variable of `_sweep` would hold the last connection
        # it checked (its transport, its buffers) for as long as no later sweep had one.
        if self._tls is not None:
            self._tls.sweep(now)
        for client in list(self._connections):
            client.check_deadline(now)
