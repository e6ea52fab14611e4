"""ingress-nginx's session affinity (`affinity: cookie`), through the data plane with a
Service of two endpoints: a client keeps its endpoint, a client without a cookie (or with
one naming no ready endpoint) is balanced and told where it went."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from certctl.dataplane import routing
from certctl.routes import ingress as ingress_routes
from tests.test_dataplane import EchoServer
from tests.test_dataplane_http2 import H2Client
from tests.test_dataplane_proxy import RawServer, Running, read_head, running_plane, simple_ingress

NGINX = "nginx.ingress.kubernetes.io/"


def _with_own_cookie(conn) -> None:
    while read_head(conn):
        conn.sendall(b"HTTP/1.1 200 OK\r\nset-cookie: app=1\r\ncontent-length: 2\r\n\r\nok")


@pytest.fixture(scope="module")
def plane() -> Iterator[Running]:
    first, second = EchoServer("first"), EchoServer("second")
    own = RawServer(_with_own_cookie)
    ingresses = [
        simple_ingress("sticky", {("sticky.test", "/app"): "pair"},
                       annotations={NGINX + "affinity": "cookie"}),
        simple_ingress("tuned", {("tuned.test", "/"): "pair"}, annotations={
            NGINX + "affinity": "cookie", NGINX + "session-cookie-name": "route",
            NGINX + "session-cookie-path": "/shop", NGINX + "session-cookie-max-age": "3600",
            NGINX + "session-cookie-samesite": "None", NGINX + "affinity-mode": "persistent"}),
        simple_ingress("own", {("own.test", "/"): "own"},
                       annotations={NGINX + "affinity": "cookie"}),
        simple_ingress("plain", {("plain.test", "/"): "pair"}),
    ]
    with running_plane(ingresses=ingresses,
                       backends={"pair": (first.port, second.port), "own": (own.port,)},
                       tls_hosts=("sticky.test",)) as running:
        yield running
    own.close()
    for server in (first, second):
        server.shutdown()
        server.server_close()


def _get(plane: Running, host: str, path: str = "/", cookie: str | None = None,
         ) -> tuple[str, list[str]]:
    connection = plane.http()
    try:
        headers = {"Host": host, **({"Cookie": cookie} if cookie else {})}
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        body = response.read()
        cookies = [v for k, v in response.getheaders() if k.lower() == "set-cookie"]
        backend = json.loads(body)["backend"] if body.startswith(b"{") else body.decode()
        return backend, cookies
    finally:
        connection.close()


def _https_get(plane: Running, host: str, path: str) -> tuple[str, list[str]]:
    connection = plane.https(host)
    connection.request("GET", path, headers={"Host": host})
    response = connection.getresponse()
    cookies = [v for k, v in response.getheaders() if k.lower() == "set-cookie"]
    return json.loads(response.read())["backend"], cookies


def test_a_client_with_the_cookie_stays_on_its_endpoint(plane):
    backend, cookies = _https_get(plane, "sticky.test", "/app/x")
    (cookie,) = cookies
    name_value, *attributes = [part.strip() for part in cookie.split(";")]
    assert name_value.startswith("INGRESSCOOKIE=")
    assert attributes == ["Path=/app", "HttpOnly"]
    for _ in range(10):
        connection = plane.https("sticky.test")
        connection.request("GET", "/app/y", headers={"Host": "sticky.test",
                                                      "Cookie": f"other=1; {name_value}"})
        response = connection.getresponse()
        assert json.loads(response.read())["backend"] == backend
        assert response.getheader("set-cookie") is None  # already where it belongs


def test_clients_without_the_cookie_are_balanced_over_both_endpoints(plane):
    seen = {_https_get(plane, "sticky.test", "/app")[0] for _ in range(6)}
    assert seen == {"first", "second"}
    assert {_get(plane, "plain.test")[1] == [] for _ in range(4)} == {True}  # no affinity


def test_a_cookie_naming_no_ready_endpoint_gets_a_new_one(plane):
    _, cookies = _https_get(plane, "sticky.test", "/app")
    assert cookies
    connection = plane.https("sticky.test")
    connection.request("GET", "/app", headers={"Host": "sticky.test",
                                               "Cookie": "INGRESSCOOKIE=0123456789abcdef"})
    response = connection.getresponse()
    assert response.getheader("set-cookie", "").startswith("INGRESSCOOKIE=")
    assert response.getheader("set-cookie") != "INGRESSCOOKIE=0123456789abcdef"
    response.read()


def test_cookie_settings_are_honoured(plane):
    _, (cookie,) = _get(plane, "tuned.test")
    assert cookie.startswith("route=")
    assert cookie.split("; ")[1:] == ["Path=/shop", "Max-Age=3600", "SameSite=None", "Secure",
                                      "HttpOnly"]


def test_the_backends_own_cookies_stay_beside_ours(plane):
    body, cookies = _get(plane, "own.test")
    assert body == "ok"
    assert "app=1" in cookies and any(c.startswith("INGRESSCOOKIE=") for c in cookies)


def test_http2_streams_are_sticky_too(plane):
    backend, (cookie,) = _https_get(plane, "sticky.test", "/app")
    client = H2Client(plane, "sticky.test")
    try:
        answers = client.wait(*(client.request("GET", "/app", headers=(
            ("cookie", cookie.split(";")[0]),)) for _ in range(4)))
        assert {json.loads(a["body"])["backend"] for a in answers} == {backend}
        assert all(b"set-cookie" not in a["headers"] for a in answers)
    finally:
        client.close()


def test_unreadable_settings_are_reported():
    table = routing.RouteTable.build(
        routes=ingress_routes.compile_ingresses(
            ingresses=[simple_ingress("t", {("t.test", "/"): "web"}, annotations={
                NGINX + "affinity": "cookie", NGINX + "session-cookie-name": "bad name",
                NGINX + "session-cookie-path": "/a;b",
                NGINX + "session-cookie-samesite": "Maybe"})],
            ingress_classes=[], controller_name="certctl.io/ingress-controller", class_name=None,
        ),
        services=[], endpoint_slices=[],
    )
    match = table.match(host="t.test", path="/")
    assert match is not None and match.options.affinity is not None
    assert (match.options.affinity.cookie_name, match.options.affinity.path,
            match.options.affinity.samesite) == ("INGRESSCOOKIE", None, None)
    assert len(table.problems) == 3
