"""The admin address: /metrics, /healthz, /readyz and the dashboard, one server per process.

The standard library's ThreadingHTTPServer on a thread of its own, rather
than a server on the event loop: every answer here does blocking work (a
scrape and the dashboard's views list objects through the store, which in a
cluster are API requests; prometheus_client's exposition is synchronous), and
none of it may ever hold up the data plane's loop. It is also how
prometheus_client's own `start_http_server` served /metrics before, and it
needs no dependency. /healthz asks the loop for an answer (see `health`), so a
stuck loop still fails the probe.

There is no login: the address must not be reachable from outside (the
default binds loopback; in a cluster the pod's own address, which a
NetworkPolicy should keep to Prometheus and the kubelet). The dashboard and
its API answer only requests whose Host is an IP address or `localhost`: a web
page elsewhere cannot make a browser read them through a name it controls
(DNS rebinding). /metrics and the probes are for Prometheus and the kubelet and
answer whatever the Host.
"""

from __future__ import annotations

import http.server
import importlib.resources
import ipaddress
import json
import logging
import socket
import threading
import urllib.parse
from typing import Any, Protocol

import prometheus_client
from prometheus_client import exposition

from certctl.admin.health import Health

logger = logging.getLogger(__name__)

# The page and its assets, shipped as package data (pyproject: tool.setuptools.package-data).
STATIC = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/static/dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
    "/static/dashboard.css": ("dashboard.css", "text/css; charset=utf-8"),
}
# The page loads its own script and style and fetches the API: nothing else, from nowhere else.
PAGE_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
               "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


class NotOffered(Exception):
    """This process does not have what a view shows; the message says where to look."""


class Views(Protocol):
    """The dashboard's JSON API (admin.dashboard); a protocol here so that the data plane,
    which imports no controller, can run an admin server without one."""

    def summary(self) -> dict[str, Any]: ...

    def view(self, name: str) -> dict[str, Any]:
        """LookupError for a name that is no view, NotOffered for one this process lacks."""
        ...


class AdminServer:
    """One admin address, on one or several hosts (`address`'s host may be a comma-separated
    list, e.g. a pod's IP for kubelet and Prometheus plus 127.0.0.1 for `kubectl
    port-forward`), all on the same port."""

    def __init__(self, *, address: tuple[str, int], health: Health,
                 registry: prometheus_client.CollectorRegistry,
                 dashboard: Views | None = None) -> None:
        hosts, port = address
        self._hosts = tuple(host.strip() for host in hosts.split(",") if host.strip())
        if not self._hosts:
            raise ValueError(f"admin address {hosts!r}: no host")
        self._port = port
        self.health = health
        self.registry = registry
        self.dashboard = dashboard
        self._servers: list[tuple[http.server.ThreadingHTTPServer, threading.Thread]] = []

    @property
    def port(self) -> int | None:
        """The bound port (the real one when asked for port 0); None before start."""
        return int(self._servers[0][0].server_address[1]) if self._servers else None

    def start(self) -> int:
        """Bind every host (OSError, after closing what did bind, when one is taken) and
        serve each from a daemon thread; the port asked for, or the one the first got."""
        port = self._port
        try:
            for host in self._hosts:
                server_class = _Server6 if ":" in host else http.server.ThreadingHTTPServer
                server = server_class((host, port), _handler_for(self))
                port = int(server.server_address[1])
                thread = threading.Thread(target=server.serve_forever, name=f"admin {host}",
                                          daemon=True)
                self._servers.append((server, thread))
                thread.start()
        except OSError:
            self.stop()
            raise
        logger.info("admin address (metrics, probes, dashboard): %s", ", ".join(
            f"http://{f'[{host}]' if ':' in host else host}:{port}/" for host in self._hosts))
        return port

    def stop(self) -> None:
        servers, self._servers = self._servers, []
        for server, thread in servers:
            server.shutdown()
            server.server_close()
            thread.join(5)


class _Server6(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6


def _handler_for(admin: AdminServer) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(_Handler):
        server_admin = admin

    return Handler


class _Handler(http.server.BaseHTTPRequestHandler):
    server_admin: AdminServer
    server_version = "certctl-admin"
    sys_version = ""

    def do_GET(self) -> None:
        self._answer(send_body=True)

    def do_HEAD(self) -> None:
        self._answer(send_body=False)

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("admin %s: " + format, self.client_address[0], *args)

    def _answer(self, *, send_body: bool) -> None:
        admin = self.server_admin
        path = urllib.parse.urlsplit(self.path).path
        try:
            if path == "/metrics":
                encoder, content_type = exposition.choose_encoder(self.headers.get("Accept", ""))
                self._send(200, encoder(admin.registry), content_type, send_body=send_body)
            elif path in ("/healthz", "/livez"):
                self._probe(admin.health.liveness(), send_body=send_body)
            elif path == "/readyz":
                self._probe(admin.health.readiness(), send_body=send_body)
            elif admin.dashboard is None:
                self._send(404, b"not found\n", "text/plain; charset=utf-8", send_body=send_body)
            elif not _local_host(self.headers.get("Host")):
                self._send(403, b"the dashboard answers only requests to an IP address or "
                           b"localhost (DNS rebinding guard)\n", "text/plain; charset=utf-8",
                           send_body=send_body)
            elif path in STATIC:
                name, content_type = STATIC[path]
                body = importlib.resources.files("certctl.admin").joinpath(
                    "static", name).read_bytes()
                self._send(200, body, content_type, send_body=send_body, page=True)
            elif path.startswith("/api/v1/"):
                self._api(admin.dashboard, path.removeprefix("/api/v1/"), send_body=send_body)
            else:
                self._send(404, b"not found\n", "text/plain; charset=utf-8", send_body=send_body)
        except BrokenPipeError:
            pass  # the client went away; nothing to tell it

    def _api(self, dashboard: Views, name: str, *, send_body: bool) -> None:
        status = 200
        try:
            found = dashboard.summary() if name == "summary" else dashboard.view(name)
        except LookupError as err:
            status, found = 404, {"error": str(err).strip("'\"")}
        except NotOffered as err:
            status, found = 404, {"error": str(err)}
        except Exception as err:  # the store failed (API down): say so, keep serving
            logger.warning("dashboard view %s failed: %s", name, err)
            status, found = 503, {"error": f"{type(err).__name__}: {err}"}
        body = json.dumps(found, indent=1, sort_keys=True).encode()
        self._send(status, body, "application/json", send_body=send_body)

    def _probe(self, verdict: tuple[bool, str], *, send_body: bool) -> None:
        ok, text = verdict
        self._send(200 if ok else 503, (text + "\n").encode(), "text/plain; charset=utf-8",
                   send_body=send_body)

    def _send(self, status: int, body: bytes, content_type: str, *, send_body: bool,
              page: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        if page:
            self.send_header("Content-Security-Policy", PAGE_POLICY)
            self.send_header("Referrer-Policy", "no-referrer")
        self.end_headers()
        if send_body:
            self.wfile.write(body)


def _local_host(header: str | None) -> bool:
    """Whether a Host header names an IP address or localhost (with or without a port)."""
    if not header:
        return False
    host = header.strip()
    if host.startswith("["):  # [v6]:port
        host = host[1:].partition("]")[0]
    elif host.count(":") == 1:
        host = host.partition(":")[0]
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
