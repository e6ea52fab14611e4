"""ingress-nginx's external authentication (auth-url), through the data plane, with a real
auth service that allows, refuses and fails.

The auth service is an HTTP server on loopback that decides by the
Authorization header, as oauth2-proxy's /oauth2/auth does: `Bearer good`
passes (and names the user in X-User), `Bearer forbidden` gets 403, anything
else 401. It records what it was asked, so the headers ingress-nginx sends
(X-Original-URL, X-Original-Method, X-Auth-Request-Redirect, ...) are checked.
"""

from __future__ import annotations

import http.client
import http.server
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from certctl.dataplane import routing
from certctl.routes import ingress as ingress_routes
from tests.test_dataplane import closed_port
from tests.test_dataplane_http2 import H2Client
from tests.test_dataplane_proxy import RawServer, Running, read_head, running_plane, simple_ingress

NGINX = "nginx.ingress.kubernetes.io/"


class AuthService(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _AuthHandler)
        self.port = self.server_address[1]
        self.asked: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True).start()


class _AuthHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: AuthService

    def _decide(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        with self.server.lock:
            self.server.asked.append({"method": self.command, "path": self.path,
                                      "headers": {k.lower(): v for k, v in self.headers.items()}})
        token = self.headers.get("Authorization")
        if self.path.startswith("/error"):
            self._answer(500)
        elif token == "Bearer good":
            self._answer(200, ("X-User", "alice"), ("X-Ignored", "1"), ("Set-Cookie", "sso=1"))
        elif token == "Bearer forbidden":
            self._answer(403)
        else:
            self._answer(401, ("WWW-Authenticate", 'Bearer realm="sso"'))

    do_GET = do_POST = do_HEAD = _decide

    def _answer(self, status: int, *headers: tuple[str, str]) -> None:
        body = b"the auth service's body, never relayed"
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def auth() -> Iterator[AuthService]:
    service = AuthService()
    yield service
    service.shutdown()
    service.server_close()


@pytest.fixture(scope="module")
def plane(auth: AuthService) -> Iterator[Running]:
    raw = RawServer(_echo_raw_head)
    url = f"http://127.0.0.1:{auth.port}"
    ingresses = [
        simple_ingress("raw", {("raw.test", "/"): "raw"}, annotations={
            NGINX + "auth-url": url + "/oauth2/auth",
            NGINX + "auth-response-headers": "X-User"}),
        simple_ingress("ext", {("ext.test", "/"): "app"}, annotations={
            NGINX + "auth-url": url + "/oauth2/auth",
            NGINX + "auth-response-headers": "X-User"}),
        simple_ingress("signin", {("signin.test", "/"): "app"}, annotations={
            NGINX + "auth-url": url + "/oauth2/auth",
            NGINX + "auth-signin": "https://login.example/oauth2/start"}),
        simple_ingress("cached", {("cached.test", "/"): "app"}, annotations={
            NGINX + "auth-url": url + "/cached",
            NGINX + "auth-cache-key": "$http_authorization",
            NGINX + "auth-cache-duration": "200 401 1m"}),
        simple_ingress("method", {("method.test", "/"): "app"}, annotations={
            NGINX + "auth-url": url + "/method?host=$host", NGINX + "auth-method": "POST",
            NGINX + "auth-always-set-cookie": "true"}),
        simple_ingress("error", {("error.test", "/"): "app"},
                       annotations={NGINX + "auth-url": url + "/error"}),
        simple_ingress("down", {("down.test", "/"): "app"}, annotations={
            NGINX + "auth-url": f"http://127.0.0.1:{closed_port()}/auth"}),
        simple_ingress("any", {("any.test", "/"): "app"}, annotations={
            NGINX + "auth-url": url + "/any", NGINX + "satisfy": "any",
            NGINX + "whitelist-source-range": "127.0.0.0/8"}),
    ]
    with running_plane(ingresses=ingresses, echo=("app",), backends={"raw": (raw.port,)},
                       tls_hosts=("h2.test",)) as running:
        yield running
    raw.close()


def _echo_raw_head(conn: Any) -> None:
    while head := read_head(conn):
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(head), head))


def test_a_header_the_auth_service_sets_cannot_be_spoofed_by_the_client(plane):
    status, _, head = _send(plane, "raw.test", Authorization="Bearer good",
                            headers={"X-User": "mallory", "x-user": "eve"})
    assert status == 200
    lines = [line.lower() for line in head.split(b"\r\n")]
    assert [line for line in lines if line.startswith(b"x-user:")] == [b"x-user: alice"]


def _send(plane: Running, host: str, target: str = "/", method: str = "GET",
          body: bytes | None = None, *, headers: dict[str, str] | None = None,
          **named: str) -> tuple[int, dict[str, str], bytes]:
    connection = plane.http()
    try:
        connection.request(method, target, body=body,
                           headers={"Host": host, **(headers or {}), **named})
        response = connection.getresponse()
        return (response.status, {k.lower(): v for k, v in response.getheaders()},
                response.read())
    finally:
        connection.close()


def _last_asked(auth: AuthService, path_prefix: str) -> dict[str, Any]:
    with auth.lock:
        return [a for a in auth.asked if a["path"].startswith(path_prefix)][-1]


def test_allowed_request_reaches_the_backend_with_the_auth_services_headers(plane, auth):
    status, _, body = _send(plane, "ext.test", "/page?x=1", Authorization="Bearer good",
                            headers={"X-User": "mallory"})  # spoofed: the auth service's wins
    seen = json.loads(body)
    assert status == 200 and seen["backend"] == "app"
    assert seen["headers"]["x-user"] == "alice"
    assert "x-ignored" not in seen["headers"]  # only auth-response-headers are copied
    asked = _last_asked(auth, "/oauth2/auth")
    assert asked["method"] == "GET"
    assert asked["headers"]["x-original-url"] == "http://ext.test/page?x=1"
    assert asked["headers"]["x-original-method"] == "GET"
    assert asked["headers"]["x-original-uri"] == "/page?x=1"
    assert asked["headers"]["x-auth-request-redirect"] == "/page?x=1"
    assert asked["headers"]["x-real-ip"] == "127.0.0.1"
    assert asked["headers"]["authorization"] == "Bearer good"
    assert asked["headers"]["host"] == f"127.0.0.1:{auth.port}"


@pytest.mark.parametrize(("token", "status"), [(None, 401), ("Bearer bad", 401),
                                              ("Bearer forbidden", 403)])
def test_refused_request_gets_the_auth_services_status_and_never_reaches_the_backend(
    plane, token, status,
):
    headers = {"Authorization": token} if token else {}
    got, answer_headers, body = _send(plane, "ext.test", **headers)
    assert got == status
    assert b"backend" not in body and b"never relayed" not in body
    if status == 401:
        assert answer_headers["www-authenticate"] == 'Bearer realm="sso"'


def test_post_body_waits_for_the_verdict_and_arrives_whole(plane):
    body = b"x" * 200_000
    status, _, answer = _send(plane, "ext.test", "/upload", method="POST", body=body,
                              Authorization="Bearer good")
    seen = json.loads(answer)
    assert status == 200 and seen["body_length"] == len(body)


def test_unauthenticated_request_is_sent_to_sign_in_with_where_it_was_going(plane):
    status, headers, _ = _send(plane, "signin.test", "/docs?page=2")
    assert status == 302
    assert headers["location"] == ("https://login.example/oauth2/start?rd="
                                   "http%3A%2F%2Fsignin.test%2Fdocs%3Fpage%3D2")
    assert _send(plane, "signin.test", Authorization="Bearer good")[0] == 200


def test_cached_outcomes_spare_the_auth_service(plane, auth):
    def calls() -> int:
        with auth.lock:
            return sum(1 for a in auth.asked if a["path"].startswith("/cached"))

    before = calls()
    for _ in range(3):
        assert _send(plane, "cached.test", Authorization="Bearer good")[0] == 200
        assert _send(plane, "cached.test", Authorization="Bearer other")[0] == 401
    assert calls() == before + 2  # one per distinct key


def test_method_variables_and_cookies(plane, auth):
    status, headers, _ = _send(plane, "method.test", Authorization="Bearer good")
    assert status == 200 and headers["set-cookie"] == "sso=1"
    asked = _last_asked(auth, "/method")
    assert asked["method"] == "POST" and asked["path"] == "/method?host=method.test"


@pytest.mark.parametrize("host", ["error.test", "down.test"])
def test_auth_service_failing_or_unreachable_is_500_never_open(plane, host):
    status, _, body = _send(plane, host, Authorization="Bearer good")
    assert status == 500 and b"backend" not in body


def test_satisfy_any_skips_the_subrequest_for_an_allowed_address(plane, auth):
    assert _send(plane, "any.test")[0] == 200
    with auth.lock:
        assert not [a for a in auth.asked if a["path"].startswith("/any")]


def test_http2_streams_are_authorized_too(plane):
    client = H2Client(plane, "h2.test")
    try:
        denied, allowed = client.wait(
            client.request("GET", "/", host="ext.test"),
            client.request("GET", "/", host="ext.test",
                           headers=(("authorization", "Bearer good"),)))
        assert denied["status"] == 401
        assert allowed["status"] == 200
        assert json.loads(allowed["body"])["headers"]["x-user"] == "alice"
    finally:
        client.close()


@pytest.mark.parametrize(("annotations", "why"), [
    ({NGINX + "auth-url": "auth.internal/check"}, "is not an http or https URL"),
    ({NGINX + "auth-url": "http://a.internal/$cookie_x"}, "$cookie_x is not a variable"),
    ({NGINX + "auth-url": "http://a.internal/", NGINX + "auth-method": "G ET"},
     "is not an HTTP method"),
    ({NGINX + "auth-url": "http://a.internal/", NGINX + "auth-cache-duration": "soon"},
     "is not status codes and a duration"),
])
def test_unreadable_auth_settings_refuse_the_ingress(annotations, why):
    table = routing.RouteTable.build(
        routes=ingress_routes.compile_ingresses(
            ingresses=[simple_ingress("t", {("t.test", "/"): "web"}, annotations=annotations)],
            ingress_classes=[], controller_name="certctl.io/ingress-controller", class_name=None,
        ),
        services=[], endpoint_slices=[],
    )
    match = table.match(host="t.test", path="/")
    assert match is not None and match.options.refusal is not None
    assert why in match.options.refusal

