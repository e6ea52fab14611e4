"""The ACME client's HTTP session (`certctl.issuers.acme.session`) against a real Pebble
behind a proxy: where it sends straight through urllib3, what requests would do still
holds (cookies kept and sent back, redirected GETs followed, TLS failures told apart).
"""

from __future__ import annotations

import http.server
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from certctl.issuers.acme import errors
from tests.acme_proxy import PebbleProxy
from tests.pebble import PebbleServer, free_port
from tests.test_acme_client import ChallengeResponder, _client, _csr_pem, _issue
from tests.testca import TestCA

MOVED = "/moved"


class _Proxy(PebbleProxy):
    """Pebble behind a proxy that records each request's Cookie header and can set a
    cookie on every answer, redirect GETs of renewal information, or hand out a
    directory whose URLs lead to `elsewhere` (scheme, host and port)."""

    def __init__(self, pebble: PebbleServer, *, set_cookie: str | None = None,
                 redirect_gets: bool = False, elsewhere: str | None = None) -> None:
        self.requests: list[tuple[str, str, str | None]] = []  # method, path, Cookie
        self._set_cookie = set_cookie
        self._redirect_gets = redirect_gets
        self._elsewhere = elsewhere
        super().__init__(pebble)

    def _handle(self, handler: http.server.BaseHTTPRequestHandler) -> None:
        path = handler.path
        self.requests.append((handler.command, path, handler.headers.get("Cookie")))
        if (self._redirect_gets and handler.command == "GET" and "renewalInfo" in path
                and not path.startswith(MOVED)):
            self.reply(handler, 307, [("Location", MOVED + path)], b"")
            return
        if path.startswith(MOVED):
            handler.path = path[len(MOVED):]
        forwarded = self.forward(handler, self.read_body(handler))
        if forwarded is None:
            return
        status, headers, answer = forwarded
        if self._elsewhere is not None and path == "/dir":
            here = self.directory_url.removesuffix("/dir")
            answer = answer.replace(here.encode(), self._elsewhere.encode())
        if self._set_cookie is not None:
            headers.append(("Set-Cookie", self._set_cookie))
        self.reply(handler, status, headers, answer)


@pytest.fixture
def untrusted_tls_server(tmp_path: Path) -> Iterator[str]:
    """An HTTPS server whose certificate no ACME client here trusts: its origin."""
    issued = TestCA().issue("untrusted.example.test", ips=("127.0.0.1",))
    (tmp_path / "chain.pem").write_bytes(issued.chain_pem)
    (tmp_path / "key.pem").write_bytes(issued.key_pem)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "chain.pem", tmp_path / "key.pem")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                             http.server.BaseHTTPRequestHandler)
    server.daemon_threads = True
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_cookie_the_ca_sets_is_sent_back_on_every_later_request(
    any_pebble: PebbleServer,
) -> None:
    """A CA behind a load balancer that pins clients with a cookie, as requests keeps
    them: the requests after the first answer carry it."""
    proxy = _Proxy(any_pebble, set_cookie="pin=node-1; Path=/")
    try:
        client = _client(any_pebble, directory_url=proxy.directory_url)
        client.register(email=None)
        client.new_order(csr_pem=_csr_pem("cookie.example.test"))
        client.close()
    finally:
        proxy.close()

    directory, first, *later = proxy.requests
    assert directory[:2] == ("GET", "/dir")
    assert first[2] is None, "nothing set yet when the session's first request went out"
    assert len(later) >= 2  # the account and the order
    assert [cookie for _, _, cookie in later] == ["pin=node-1"] * len(later)


def test_a_redirected_renewal_information_get_is_followed(tmp_path: Path) -> None:
    with PebbleServer.start(tmp_path=tmp_path, http_port=free_port(),
                            build="current") as pebble:
        proxy = _Proxy(pebble, redirect_gets=True)
        responder = ChallengeResponder(pebble.http_port)
        try:
            client = _client(pebble, directory_url=proxy.directory_url)
            client.register(email=None)
            _, chain = _issue(client, responder, "moved.example.test",
                              http_port=pebble.http_port)
            leaf = x509.load_pem_x509_certificates(chain.encode())[0]
            info = client.renewal_info(certificate=leaf)
            client.close()
        finally:
            responder.close()
            proxy.close()

    assert leaf.not_valid_before_utc < info.window_start < info.window_end
    gets = [path for method, path, _ in proxy.requests
            if method == "GET" and "renewalInfo" in path]
    assert len(gets) == 2 and gets[1] == MOVED + gets[0]


def test_acme_requests_to_a_server_with_an_untrusted_certificate_fail_as_tls_errors(
    any_pebble: PebbleServer, untrusted_tls_server: str,
) -> None:
    """The directory comes from the trusted server, every other URL it gives leads to
    one the CA bundle does not vouch for: the ACME requests (not the directory's fetch)
    meet the TLS failure, and it is told as one."""
    proxy = _Proxy(any_pebble, elsewhere=untrusted_tls_server)
    try:
        client = _client(any_pebble, directory_url=proxy.directory_url, timeout=5)
        with pytest.raises(errors.AcmeUnreachable,
                           match=f"TLS connection to ACME server {untrusted_tls_server}/"):
            client.register(email=None)
        client.close()
    finally:
        proxy.close()
    assert [path for _, path, _ in proxy.requests] == ["/dir"]

