"""A TLS proxy in front of a Pebble, for tests that make the CA misbehave.

Pebble's ACME URLs are built from the Host header, so an ACME client given
`directory_url` talks to the proxy throughout. Subclasses decide per request
(`_handle`): forward it (`forward`, then `reply`), answer it themselves, or
drop the connection.
"""

from __future__ import annotations

import http.client
import http.server
import ssl
import threading

from tests.pebble import PebbleServer

# Not forwarded either way: they describe one hop (and Date is Pebble's to set again).
HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length",
                        "date", "server", "proxy-connection"})


class PebbleProxy:
    def __init__(self, pebble: PebbleServer) -> None:
        self.pebble = pebble
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                proxy._handle(self)

            do_HEAD = do_GET
            do_POST = do_GET

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(pebble.workdir / "cert.pem", pebble.workdir / "key.pem")
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self._upstream = ssl.create_default_context(cafile=str(pebble.ca_bundle_path))
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    @property
    def directory_url(self) -> str:
        return f"https://127.0.0.1:{self._server.server_address[1]}/dir"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handle(self, handler: http.server.BaseHTTPRequestHandler) -> None:
        raise NotImplementedError

    @staticmethod
    def read_body(handler: http.server.BaseHTTPRequestHandler) -> bytes:
        length = int(handler.headers.get("Content-Length") or 0)
        return handler.rfile.read(length) if length else b""

    def forward(
        self, handler: http.server.BaseHTTPRequestHandler, body: bytes
    ) -> tuple[int, list[tuple[str, str]], bytes] | None:
        """Pebble's answer to the request (status, headers, body); None when Pebble cannot
        be reached, the client's connection then closed without an answer."""
        headers = {name: value for name, value in handler.headers.items()
                   if name.lower() not in HOP_BY_HOP}
        upstream = http.client.HTTPSConnection("127.0.0.1", self.pebble.acme_port,
                                               context=self._upstream, timeout=30)
        try:
            upstream.request(handler.command, handler.path, body=body or None, headers=headers)
            response = upstream.getresponse()
            answer = response.read()
            answer_headers = [(name, value) for name, value in response.getheaders()
                              if name.lower() not in HOP_BY_HOP]
        except OSError:
            handler.close_connection = True
            return None
        finally:
            upstream.close()
        return response.status, answer_headers, answer

    @staticmethod
    def reply(handler: http.server.BaseHTTPRequestHandler, status: int,
              headers: list[tuple[str, str]], body: bytes) -> None:
        handler.send_response(status)
        for name, value in headers:
            handler.send_header(name, value)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        if handler.command != "HEAD":
            handler.wfile.write(body)
