"""CORS as ingress-nginx's enable-cors answers it: preflights by the data plane, headers on
the backend's responses, over HTTP/1.1 and HTTP/2.

The requests are the ones browsers send: a preflight is `OPTIONS` with
`Origin`, `Access-Control-Request-Method` and `Access-Control-Request-Headers`;
a simple request carries `Origin`.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from certctl.dataplane import routing
from certctl.routes import ingress as ingress_routes
from tests.test_dataplane_http2 import H2Client
from tests.test_dataplane_proxy import RawServer, Running, read_head, running_plane, simple_ingress

NGINX = "nginx.ingress.kubernetes.io/"
CERTCTL = "certctl.io/"
DEFAULT_METHODS = "GET, PUT, POST, DELETE, PATCH, OPTIONS"
PREFLIGHT = {"Access-Control-Request-Method": "PUT",
             "Access-Control-Request-Headers": "content-type, x-token"}


def _answer_with_its_own_cors_header(conn) -> None:
    while read_head(conn):
        conn.sendall(b"HTTP/1.1 200 OK\r\naccess-control-allow-origin: https://evil.example\r\n"
                     b"vary: Accept-Encoding\r\ncontent-length: 2\r\n\r\nok")


@pytest.fixture(scope="module")
def plane() -> Iterator[Running]:
    own_headers = RawServer(_answer_with_its_own_cors_header)
    ingresses = [
        simple_ingress("open", {("open.test", "/"): "api"},
                       annotations={NGINX + "enable-cors": "true"}),
        simple_ingress("listed", {("listed.test", "/"): "api"}, annotations={
            NGINX + "enable-cors": "true",
            NGINX + "cors-allow-origin": "https://app.example.com, https://*.example.org:8443",
            NGINX + "cors-allow-methods": "GET, PUT",
            NGINX + "cors-allow-headers": "Content-Type, X-Token",
            NGINX + "cors-expose-headers": "X-Request-Id",
            NGINX + "cors-allow-credentials": "false",
            NGINX + "cors-max-age": "600",
        }),
        simple_ingress("own", {("own.test", "/"): "own"}, annotations={
            CERTCTL + "enable-cors": "true",
            CERTCTL + "cors-allow-origin": "https://app.example.com"}),
        simple_ingress("off", {("off.test", "/"): "api"},
                       annotations={NGINX + "enable-cors": "false"}),
        simple_ingress("all-bad", {("all-bad.test", "/"): "api"}, annotations={
            NGINX + "enable-cors": "true", NGINX + "cors-allow-origin": "app.example.com"}),
    ]
    with running_plane(ingresses=ingresses, echo=("api",),
                       backends={"own": (own_headers.port,)},
                       tls_hosts=("h2-open.test",)) as running:
        yield running
    own_headers.close()


def _send(plane: Running, method: str, host: str,
          **headers: str) -> tuple[int, dict[str, list[str]], bytes]:
    connection = plane.http()
    try:
        connection.request(method, "/", headers={"Host": host, **headers})
        response = connection.getresponse()
        found: dict[str, list[str]] = {}
        for name, value in response.getheaders():
            found.setdefault(name.lower(), []).append(value)
        return response.status, found, response.read()
    finally:
        connection.close()


def test_preflight_is_answered_204_by_the_data_plane(plane):
    status, headers, body = _send(plane, "OPTIONS", "open.test",
                                  Origin="https://anything.example", **PREFLIGHT)
    assert (status, body) == (204, b"")  # the echo backend would answer 501 to OPTIONS
    assert headers["access-control-allow-origin"] == ["*"]
    assert headers["access-control-allow-credentials"] == ["true"]
    assert headers["access-control-allow-methods"] == [DEFAULT_METHODS]
    assert "Authorization" in headers["access-control-allow-headers"][0]
    assert headers["access-control-max-age"] == ["1728000"]
    assert "content-length" not in headers


def test_simple_request_gets_cors_headers_on_the_backends_response(plane):
    status, headers, body = _send(plane, "GET", "open.test", Origin="https://a.example")
    assert status == 200 and b'"backend": "api"' in body
    assert headers["access-control-allow-origin"] == ["*"]
    assert "access-control-max-age" not in headers  # a preflight's header only
    assert "vary" not in headers


@pytest.mark.parametrize("origin", ["https://app.example.com", "https://eu.example.org:8443"])
def test_listed_origin_is_echoed_with_the_configured_settings(plane, origin):
    status, headers, _ = _send(plane, "OPTIONS", "listed.test", Origin=origin, **PREFLIGHT)
    assert status == 204
    assert headers["access-control-allow-origin"] == [origin]
    assert headers["access-control-allow-methods"] == ["GET, PUT"]
    assert headers["access-control-allow-headers"] == ["Content-Type, X-Token"]
    assert headers["access-control-expose-headers"] == ["X-Request-Id"]
    assert headers["access-control-max-age"] == ["600"]
    assert headers["vary"] == ["Origin"]
    assert "access-control-allow-credentials" not in headers


@pytest.mark.parametrize("origin", [
    "https://evil.example", "https://a.b.example.org:8443", "https://eu.example.org",
    "http://app.example.com", "https://app.example.com.evil.example",
])
def test_origin_not_listed_gets_no_cors_and_its_preflight_goes_to_the_backend(plane, origin):
    status, headers, _ = _send(plane, "OPTIONS", "listed.test", Origin=origin, **PREFLIGHT)
    assert status == 501  # the backend's answer: the data plane did not take it
    assert not any(name.startswith("access-control-") for name in headers)
    status, headers, _ = _send(plane, "GET", "listed.test", Origin=origin)
    assert status == 200
    assert not any(name.startswith("access-control-") for name in headers)


def test_cors_headers_replace_the_backends_own(plane):
    _, headers, body = _send(plane, "GET", "own.test", Origin="https://app.example.com")
    assert body == b"ok"
    assert headers["access-control-allow-origin"] == ["https://app.example.com"]
    # Vary is a list: the backend's stays beside certctl's (a cache keyed by it needs both).
    assert sorted(headers["vary"]) == ["Accept-Encoding", "Origin"]


def test_backends_headers_pass_untouched_for_other_origins_and_without_cors(plane):
    _, headers, _ = _send(plane, "GET", "own.test", Origin="https://other.example")
    assert headers["access-control-allow-origin"] == ["https://evil.example"]
    status, _, _ = _send(plane, "OPTIONS", "off.test", Origin="https://a.example", **PREFLIGHT)
    assert status == 501


def test_no_readable_origin_leaves_cors_off_and_says_why(plane):
    status, headers, _ = _send(plane, "OPTIONS", "all-bad.test", Origin="https://app.example.com",
                               **PREFLIGHT)
    assert status == 501
    assert not any(name.startswith("access-control-") for name in headers)
    problems = [p.message for p in plane.plane.routes.problems if p.source.name == "all-bad"]
    assert problems == [NGINX + "cors-allow-origin: 'app.example.com' is not an origin such as "
                        "https://app.example.com or https://*.example.com; left out"]


@pytest.mark.parametrize(("key", "value"), [
    ("cors-allow-methods", "GET\r\nX-Injected: 1"),
    ("cors-allow-headers", "Content-Type; drop"),
    ("cors-max-age", "forever"),
])
def test_unreadable_setting_keeps_its_default_and_is_reported(key, value):
    table = routing.RouteTable.build(
        routes=ingress_routes.compile_ingresses(
            ingresses=[simple_ingress("t", {("t.test", "/"): "web"}, annotations={
                NGINX + "enable-cors": "true", NGINX + key: value})],
            ingress_classes=[], controller_name="certctl.io/ingress-controller", class_name=None,
        ),
        services=[], endpoint_slices=[],
    )
    match = table.match(host="t.test", path="/")
    assert match is not None and match.options.cors is not None
    default = type(match.options.cors)()
    assert (match.options.cors.methods, match.options.cors.headers,
            match.options.cors.max_age) == (default.methods, default.headers, default.max_age)
    (problem,) = table.problems
    assert problem.message.startswith(NGINX + key + ": ")


def test_http2_preflight_and_request(plane):
    client = H2Client(plane, "h2-open.test")
    try:
        preflight, simple = client.wait(
            client.request("OPTIONS", "/", host="open.test", headers=(
                ("origin", "https://a.example"), ("access-control-request-method", "PUT"))),
            client.request("GET", "/", host="open.test",
                           headers=(("origin", "https://a.example"),)))
        assert preflight["status"] == 204 and preflight["body"] == b""
        assert preflight["headers"][b"access-control-max-age"] == b"1728000"
        assert simple["status"] == 200
        assert simple["headers"][b"access-control-allow-origin"] == b"*"
    finally:
        client.close()
