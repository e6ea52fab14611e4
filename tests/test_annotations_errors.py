"""ingress-nginx's `custom-http-errors` and `default-backend` through the data plane, over real
sockets with real backends, on HTTP/1.1 and HTTP/2."""

from __future__ import annotations

import dataclasses
import re
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from certctl.api import nginx_annotations
from certctl.dataplane import routing
from certctl.routes import ingress as ingress_routes
from certctl.routes import options as route_options
from tests.test_dataplane import closed_port
from tests.test_dataplane_http2 import H2Client
from tests.test_dataplane_proxy import RawServer, Running, read_head, running_plane, simple_ingress

NGINX = "nginx.ingress.kubernetes.io/"
CERTCTL = "certctl.io/"


class Recording:
    """A raw backend: `/status/<code>` answers that code, anything else 200; with
    `code_from_header`, the X-Code it is sent (200 without one), as ingress-nginx's
    custom-error-pages image. The body names the backend, the status and the path; every
    request's line and headers (lowercase names) are kept."""

    def __init__(self, name: str, *, code_from_header: bool = False) -> None:
        self.name = name
        self.code_from_header = code_from_header
        self.requests: list[tuple[bytes, dict[bytes, bytes]]] = []
        self._lock = threading.Lock()
        self.server = RawServer(self._handle)
        self.port = self.server.port

    def _handle(self, conn: socket.socket) -> None:
        pending = b""
        while True:
            while b"\r\n\r\n" not in pending:
                chunk = read_head(conn) if not pending else conn.recv(4096)
                if not chunk:
                    return
                pending += chunk
            head, _, pending = pending.partition(b"\r\n\r\n")
            line, *fields = head.split(b"\r\n")
            headers: dict[bytes, bytes] = {}
            for field in fields:
                name, _, value = field.partition(b":")
                headers[name.strip().lower()] = value.strip()
            length = int(headers.get(b"content-length", b"0"))
            while len(pending) < length:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                pending += chunk
            pending = pending[length:]
            with self._lock:
                self.requests.append((line, headers))
            path = line.split(b" ")[1]
            found = re.match(rb"/status/(\d+)", path)
            if self.code_from_header:
                status = int(headers.get(b"x-code", b"200"))
            else:
                status = int(found[1]) if found else 200
            answer = b"%s %d %s" % (self.name.encode(), status, path)
            conn.sendall(b"HTTP/1.1 %d Answer\r\ncontent-length: %d\r\n\r\n%s"
                         % (status, len(answer), answer))

    def last(self) -> tuple[bytes, dict[bytes, bytes]]:
        with self._lock:
            return self.requests[-1]


@pytest.fixture(scope="module")
def backends() -> Iterator[dict[str, Recording]]:
    found = {"app": Recording("app"), "errors": Recording("errors", code_from_header=True)}
    yield found
    for backend in found.values():
        backend.server.close()


@pytest.fixture(scope="module")
def plane(backends: dict[str, Recording]) -> Iterator[Running]:
    ingresses = [
        simple_ingress("pages", {("pages.test", "/"): "app"}, annotations={
            NGINX + "custom-http-errors": "404,503", NGINX + "default-backend": "errors"}),
        simple_ingress("fallback", {("fallback.test", "/"): "empty"},
                       annotations={NGINX + "default-backend": "errors"}),
        simple_ingress("missing", {("missing.test", "/"): "app"}, annotations={
            NGINX + "custom-http-errors": "404", NGINX + "default-backend": "nowhere"}),
        simple_ingress("plain", {("plain.test", "/"): "app"}),
        simple_ingress("down", {("down.test", "/"): "down"}, annotations={
            NGINX + "custom-http-errors": "502", NGINX + "default-backend": "errors"}),
    ]
    ingresses = [dataclasses.replace(ingress, annotations=(
        *ingress.annotations, (NGINX + "ssl-redirect", "false"))) for ingress in ingresses]
    with running_plane(ingresses=ingresses, tls_hosts=("pages.test", "down.test"), backends={
        "app": (backends["app"].port,), "errors": (backends["errors"].port,), "empty": (),
        "down": (closed_port(),),
    }) as running:
        yield running


def _get(plane: Running, host: str, path: str, method: str = "GET",
         headers: dict[str, str] | None = None, body: bytes | None = None) -> tuple[int, bytes]:
    connection = plane.http()
    try:
        connection.request(method, path, body=body, headers={"Host": host, **(headers or {})})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def _assert_told(headers: dict[bytes, bytes], *, code: bytes, accept: bytes, uri: bytes) -> None:
    assert headers[b"x-code"] == code
    assert headers[b"x-format"] == accept
    assert headers[b"x-original-uri"] == uri
    assert headers[b"x-namespace"] == b"default"
    assert headers[b"x-ingress-name"] == b"pages"
    assert headers[b"x-service-name"] == b"app"
    assert headers[b"x-service-port"] == b"http"  # the Ingress names its port
    assert headers[b"host"] == b"pages.test"


def test_a_listed_code_is_answered_by_the_default_backend_http1(plane, backends):
    status, body = _get(plane, "pages.test", "/status/404?x=1",
                        headers={"Accept": "application/json", "X-Request-ID": "req-1"})
    assert (status, body) == (404, b"errors 404 /")
    line, headers = backends["errors"].last()
    assert line == b"GET / HTTP/1.1"
    _assert_told(headers, code=b"404", accept=b"application/json", uri=b"/status/404?x=1")
    assert headers[b"x-request-id"] == b"req-1"
    # Without one from the client, a new request id; the other listed code too.
    status, body = _get(plane, "pages.test", "/status/503", headers={"Accept": "text/html"})
    assert (status, body) == (503, b"errors 503 /")
    _, headers = backends["errors"].last()
    _assert_told(headers, code=b"503", accept=b"text/html", uri=b"/status/503")
    assert re.fullmatch(rb"[0-9a-f]{32}", headers[b"x-request-id"])


def test_codes_not_listed_pass_through_and_the_connection_stays_usable(plane, backends):
    connection = plane.http()
    try:
        for path, expected in (("/status/500", (500, b"app 500 /status/500")),
                               ("/status/404", (404, b"errors 404 /")),
                               ("/fine", (200, b"app 200 /fine")),
                               ("/status/410", (410, b"app 410 /status/410"))):
            connection.request("GET", path, headers={"Host": "pages.test"})
            response = connection.getresponse()
            assert (response.status, response.read()) == expected, path
    finally:
        connection.close()


def test_a_request_with_a_body_gets_the_backends_own_answer(plane, backends):
    # certctl streams bodies and keeps no copy to send again.
    assert _get(plane, "pages.test", "/status/404", method="POST", body=b"data") == (
        404, b"app 404 /status/404")


def test_a_listed_code_is_answered_by_the_default_backend_http2(plane, backends):
    client = H2Client(plane, "pages.test")
    try:
        assert client.alpn == "h2"
        first = client.request("GET", "/status/404?y=2", headers=(
            ("accept", "application/xml"), ("x-request-id", "req-2")))
        (response,) = client.wait(first)
        assert (response["status"], response["body"]) == (404, b"errors 404 /")
        line, headers = backends["errors"].last()
        assert line == b"GET / HTTP/1.1"
        _assert_told(headers, code=b"404", accept=b"application/xml", uri=b"/status/404?y=2")
        assert headers[b"x-request-id"] == b"req-2"
        second = client.request("GET", "/status/502")
        third = client.request("GET", "/ok")
        responses = client.wait(second, third)
        assert [(r["status"], r["body"]) for r in responses] == [
            (502, b"app 502 /status/502"), (200, b"app 200 /ok")]
    finally:
        client.close()


def test_the_data_planes_own_502_is_listed_too(plane, backends):
    # No endpoint takes the connection: nginx's error_page takes its own 502 as well.
    assert _get(plane, "down.test", "/x") == (502, b"errors 502 /")
    _, headers = backends["errors"].last()
    assert headers[b"x-code"] == b"502" and headers[b"x-original-uri"] == b"/x"
    client = H2Client(plane, "down.test")
    try:
        (response,) = client.wait(client.request("GET", "/y"))
        assert (response["status"], response["body"]) == (502, b"errors 502 /")
        assert backends["errors"].last()[1][b"x-original-uri"] == b"/y"
    finally:
        client.close()


def test_no_endpoints_are_served_by_the_default_backend(plane, backends):
    status, body = _get(plane, "fallback.test", "/some/path?q=1")
    assert (status, body) == (200, b"errors 200 /some/path?q=1")
    line, headers = backends["errors"].last()
    assert line == b"GET /some/path?q=1 HTTP/1.1" and b"x-code" not in headers


def test_a_missing_default_backend_is_reported_and_the_route_still_served(plane, backends):
    problems = [p for p in plane.plane.routes.problems if p.source.name == "missing"]
    assert [(p.reason, p.message) for p in problems] == [(
        "BadAnnotation", NGINX + "default-backend: Service default/nowhere not found; "
        "served without a default backend")]
    assert _get(plane, "missing.test", "/status/200") == (200, b"app 200 /status/200")
    # A listed code: certctl answers it itself, as ingress-nginx's built-in default backend.
    assert _get(plane, "missing.test", "/status/404") == (404, b"Not Found\n")


def test_a_route_without_them_takes_the_path_it_took_before(plane, backends):
    match = plane.plane.routes.match(host="plain.test", path="/")
    assert match is not None and match.errors is None
    assert match.options.error_pages is None
    count = len(backends["errors"].requests)
    assert _get(plane, "plain.test", "/status/404") == (404, b"app 404 /status/404")
    assert len(backends["errors"].requests) == count


def _options(annotations: dict[str, str]) -> tuple[Any, list[str]]:
    table = routing.RouteTable.build(
        routes=ingress_routes.compile_ingresses(
            ingresses=[simple_ingress("t", {("t.test", "/"): "web"}, annotations=annotations)],
            ingress_classes=[], controller_name="certctl.io/ingress-controller", class_name=None,
        ),
        services=[], endpoint_slices=[],
    )
    match = table.match(host="t.test", path="/")
    assert match is not None
    return match.options.error_pages, [p.message for p in table.problems]


def test_values_are_read_and_certctl_io_wins():
    pages, problems = _options({NGINX + "custom-http-errors": "404, 503,418",
                                NGINX + "default-backend": "a",
                                CERTCTL + "default-backend": "b"})
    assert problems == [CERTCTL + "default-backend: Service default/b not found; served "
                        "without a default backend"]
    assert pages == route_options.ErrorPages(codes=frozenset({404, 503, 418}), service="b",
                                             service_key=CERTCTL + "default-backend")


@pytest.mark.parametrize(("annotations", "named"), [
    ({NGINX + "custom-http-errors": "404,abc"}, "custom-http-errors"),
    ({NGINX + "custom-http-errors": "200"}, "custom-http-errors"),
    ({NGINX + "default-backend": "other/ns"}, "default-backend"),
    ({NGINX + "default-backend": "Upper"}, "default-backend"),
])
def test_bad_values_are_reported_by_name(annotations, named):
    _, problems = _options(annotations)
    assert len(problems) == 1 and problems[0].startswith(NGINX + named + ":"), problems


def test_the_catalogue_calls_them_supported():
    for name in ("custom-http-errors", "default-backend"):
        assert name in nginx_annotations.SUPPORTED and name not in nginx_annotations.UNSUPPORTED
    assert not nginx_annotations.review({NGINX + "custom-http-errors": "404",
                                         NGINX + "default-backend": "errors"}).findings
