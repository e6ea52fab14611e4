"""What client connections and `dispatch` use of the data plane, and nothing else.

`server.DataPlane` owns the listeners and builds one `Services` for the
connections it accepts (`connection.ClientConnection`, `http2.Http2Connection`)
and for `dispatch.decide`; those modules import this one, never `server`, so
the data plane's modules form no import circle. What changes while the data
plane runs (the route table, the certificate index, the HTTPS port, draining)
is an attribute here that `DataPlane` assigns, read fresh by every request.

A plain class with slots rather than a compiled one: compiled into the data
plane's group as well (pyproject.toml's `[tool.certctl.mypyc]`), it measured no
faster under B4's load at df23870, and a slot hands back the stored object where
a compiled class's getter would box a float first.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any, Protocol, final

from certctl.dataplane import (
    certstore,
    counters,
    external_auth,
    limits,
    routing,
    upstream,
    upstream_h2,
)

ChallengeResponder = Callable[[str, str], str | None]
"""(host, token) -> the key authorization to serve, or None. Called on the event loop: be quick."""


class Client(Protocol):
    """A client connection as the data plane holds it (HTTP/1.1 or HTTP/2)."""

    def check_deadline(self, now: float) -> None: ...

    def drain(self) -> None: ...

    def close(self) -> None: ...


@final
class Services:
    """The data plane's shared pieces and settings, and its callbacks, for connections."""

    __slots__ = ("admits_connection", "certificates", "challenge_responder", "client_timeout",
                 "connect_timeout", "connection_closed", "connection_opened", "counts",
                 "draining", "external_auth", "h2_pool", "https_port", "limits", "pool",
                 "round_robin", "routes", "spawn", "upstream_timeout")

    def __init__(
        self,
        *,
        certificates: certstore.CertificateIndex,
        challenge_responder: ChallengeResponder,
        pool: upstream.Pool,
        h2_pool: upstream_h2.Pool,
        limits: limits.RequestLimits,
        external_auth: external_auth.ExternalAuthorizer,
        counts: counters.RequestCounts,
        connect_timeout: float,
        upstream_timeout: float,
        client_timeout: float,
        admits_connection: Callable[[], bool],
        connection_opened: Callable[[Client], None],
        connection_closed: Callable[[Client], None],
        spawn: Callable[[Coroutine[Any, Any, None]], None],
    ) -> None:
        # Assigned by the data plane while it runs (see the module).
        self.routes = routing.RouteTable.empty()
        self.certificates = certificates
        self.challenge_responder = challenge_responder
        self.https_port: int | None = None  # bound, for redirects to HTTPS
        self.draining = False  # stopping: connections finish what they serve, then close
        self.pool = pool
        self.h2_pool = h2_pool  # backend-protocol GRPC, GRPCS, H2C
        self.limits = limits  # Ingresses' limit-rps/-rpm/-connections counts
        self.external_auth = external_auth
        self.counts = counts  # what requests count for the metrics
        # Unless a route's annotations say otherwise: see `server.DataPlane`.
        self.connect_timeout = connect_timeout
        self.upstream_timeout = upstream_timeout
        self.client_timeout = client_timeout
        # Whether one more client connection stays within the data plane's limit.
        self.admits_connection = admits_connection
        self.connection_opened = connection_opened
        self.connection_closed = connection_closed
        self.round_robin = upstream.RoundRobin()  # where round-robin starts
        # Run a connection's background step (opening an upstream connection).
        self.spawn = spawn
