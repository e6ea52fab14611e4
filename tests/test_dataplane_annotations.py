"""Ingress annotations the data plane honours, under certctl's and ingress-nginx's names.

Each test serves Ingresses carrying the annotation through a real DataPlane
and checks what the client or the backend saw.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import tempfile
from collections.abc import Iterator

import pytest

from certctl.dataplane import routing
from certctl.routes import ingress as ingress_routes
from certctl.routes import ingress_annotations
from certctl.routes import options as route_options
from tests.test_dataplane import EchoServer, read_until_closed
from tests.test_dataplane_proxy import Running, echoed, running_plane, simple_ingress
from tests.testca import TestCA

NGINX = "nginx.ingress.kubernetes.io/"
CERTCTL = "certctl.io/"


class TlsEchoServer(EchoServer):
    """The echo backend behind TLS, for backend-protocol HTTPS."""

    def __init__(self, name: str) -> None:
        issued = TestCA().issue("backend.internal")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*_write_pair(issued.chain_pem, issued.key_pem))
        super().__init__(name)
        self.socket = context.wrap_socket(self.socket, server_side=True)


def _write_pair(chain_pem: bytes, key_pem: bytes) -> tuple[str, str]:
    directory = tempfile.mkdtemp()
    paths = (f"{directory}/tls.crt", f"{directory}/tls.key")
    for path, data in zip(paths, (chain_pem, key_pem), strict=True):
        with open(path, "wb") as out:
            out.write(data)
    return paths


@pytest.fixture(scope="module")
def backends() -> Iterator[dict[str, EchoServer]]:
    servers = {name: EchoServer(name) for name in ("main", "canary", "weighted", "heavy")}
    servers["secure"] = TlsEchoServer("secure")
    yield servers
    for srv in servers.values():
        srv.shutdown()
        srv.server_close()


@pytest.fixture(scope="module")
def silent() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield sock.getsockname()[1]


@pytest.fixture(scope="module")
def plane(backends, silent) -> Iterator[Running]:
    ingresses = [
        simple_ingress("no-redirect", {("noredirect.test", "/"): "main"},
                       annotations={NGINX + "ssl-redirect": "false"}),
        simple_ingress("force", {("force.test", "/"): "main"},
                       annotations={CERTCTL + "force-ssl-redirect": "true"}),
        simple_ingress("hsts", {("hsts.test", "/"): "main"},
                       annotations={NGINX + "hsts": "true", NGINX + "hsts-max-age": "600",
                                    NGINX + "hsts-include-subdomains": "false"}),
        simple_ingress("hsts-default", {("hsts-default.test", "/"): "main"},
                       annotations={CERTCTL + "hsts": "true"}),
        simple_ingress("limit", {("limit.test", "/"): "main"},
                       annotations={NGINX + "proxy-body-size": "1k"}),
        simple_ingress("slow", {("slow.test", "/"): "silent"},
                       annotations={NGINX + "proxy-read-timeout": "1"}),
        simple_ingress("secure", {("secure.test", "/"): "secure"},
                       annotations={NGINX + "backend-protocol": "HTTPS"}),
        simple_ingress("rewrite", {("rewrite.test", "/app"): "main",
                                   ("rewrite.test", "/api/v1/"): "main"},
                       annotations={NGINX + "rewrite-target": "/"}),
        simple_ingress("main", {("canary.test", "/"): "main", ("weighted.test", "/"): "main",
                                ("heavy.test", "/"): "main", ("pattern.test", "/"): "main"}),
        simple_ingress("canary-pattern", {("pattern.test", "/"): "canary"}, created_offset=5,
                       annotations={NGINX + "canary": "true",
                                    NGINX + "canary-by-header": "X-Region",
                                    NGINX + "canary-by-header-pattern": "^(eu|us)-west"}),
        simple_ingress("canary-header", {("canary.test", "/"): "canary"}, created_offset=5,
                       annotations={NGINX + "canary": "true",
                                    NGINX + "canary-by-header": "X-Canary",
                                    NGINX + "canary-by-cookie": "canary_cookie"}),
        simple_ingress("canary-none", {("weighted.test", "/"): "weighted"}, created_offset=5,
                       annotations={CERTCTL + "canary": "true", CERTCTL + "canary-weight": "0",
                                    CERTCTL + "canary-by-header": "X-Version",
                                    CERTCTL + "canary-by-header-value": "v2"}),
        simple_ingress("canary-all", {("heavy.test", "/"): "heavy"}, created_offset=5,
                       annotations={NGINX + "canary": "true", NGINX + "canary-weight": "5",
                                    NGINX + "canary-weight-total": "5"}),
        simple_ingress("canary-orphan", {("orphan.test", "/"): "canary"}, created_offset=5,
                       annotations={NGINX + "canary": "true", NGINX + "canary-weight": "100"}),
    ]
    with running_plane(
        ingresses=ingresses,
        backends={name: (srv.port,) for name, srv in backends.items()} | {"silent": (silent,)},
        tls_hosts=("noredirect.test", "hsts.test", "hsts-default.test"),
    ) as running:
        yield running


def request(conn: http.client.HTTPConnection, path: str, host: str, **headers: str):
    conn.request("GET", path, headers={"Host": host, **headers})
    response = conn.getresponse()
    response.read()
    return response


# --- redirects and HSTS ------------------------------------------------------------------------


def test_ssl_redirect_false_serves_plain_http_for_a_host_with_a_certificate(plane):
    assert echoed(plane.http(), "/x", headers={"Host": "noredirect.test"})["backend"] == "main"


def test_force_ssl_redirect_redirects_a_host_without_a_certificate(plane):
    response = request(plane.http(), "/x?y", "force.test")
    assert response.status == 308
    assert response.getheader("location") == f"https://force.test:{plane.plane.https_port}/x?y"


def test_hsts_header_is_sent_over_https_only_with_its_settings(plane):
    response = request(plane.https("hsts.test"), "/", "hsts.test")
    assert response.getheader("strict-transport-security") == "max-age=600"
    response = request(plane.https("hsts-default.test"), "/", "hsts-default.test")
    assert response.getheader("strict-transport-security") == "max-age=31536000; includeSubDomains"
    response = request(plane.https("noredirect.test"), "/", "noredirect.test")
    assert response.getheader("strict-transport-security") is None
    response = request(plane.http(), "/", "noredirect.test")
    assert response.getheader("strict-transport-security") is None


# --- limits and timeouts -----------------------------------------------------------------------


def test_body_over_proxy_body_size_is_413_whatever_the_framing(plane):
    conn = plane.http()
    assert echoed(conn, "/", method="POST", body=b"x" * 1024,
                  headers={"Host": "limit.test"})["body_length"] == 1024
    conn.request("POST", "/", body=b"x" * 1025, headers={"Host": "limit.test"})
    assert conn.getresponse().status == 413
    conn = plane.http()
    conn.request("POST", "/", body=iter([b"x" * 1000, b"x" * 1000]), encode_chunked=True,
                 headers={"Host": "limit.test"})
    response = conn.getresponse()
    assert response.status == 413
    assert response.getheader("connection") == "close"


def test_proxy_read_timeout_annotation_bounds_the_wait_for_the_backend(plane):
    # The plane's own upstream timeout is 60 s; the client gives up after 10 s.
    conn = http.client.HTTPConnection("127.0.0.1", plane.plane.http_port, timeout=10)
    assert request(conn, "/", "slow.test").status == 504


# --- backends ------------------------------------------------------------------------------------


def test_backend_protocol_https_speaks_tls_to_the_backend(plane):
    conn = plane.http()
    for _ in range(2):  # the second request reuses the pooled TLS connection
        assert echoed(conn, "/s", headers={"Host": "secure.test"})["backend"] == "secure"


@pytest.mark.parametrize(
    ("path", "upstream_path"),
    [
        ("/app", "/"),
        ("/app/", "/"),
        ("/app/x/y?q=1", "/x/y?q=1"),
        ("/api/v1/users", "/users"),
    ],
)
def test_rewrite_target_replaces_the_matched_prefix(plane, path, upstream_path):
    assert echoed(plane.http(), path, headers={"Host": "rewrite.test"})["path"] == upstream_path


# --- canary ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "headers", "expected"),
    [
        ("canary.test", {}, "main"),
        ("canary.test", {"X-Canary": "always"}, "canary"),
        ("canary.test", {"X-Canary": "never", "Cookie": "canary_cookie=always"}, "main"),
        ("canary.test", {"X-Canary": "maybe", "Cookie": "a=b; canary_cookie=always"}, "canary"),
        ("canary.test", {"Cookie": "canary_cookie=never"}, "main"),
        ("weighted.test", {"X-Version": "v2"}, "weighted"),
        ("weighted.test", {"X-Version": "always"}, "main"),
        ("weighted.test", {}, "main"),
        ("heavy.test", {}, "heavy"),
        ("orphan.test", {}, 404),
        ("pattern.test", {"X-Region": "eu-west-1"}, "canary"),
        ("pattern.test", {"X-Region": "ap-south-1"}, "main"),
        ("pattern.test", {"X-Region": "always"}, "main"),  # a pattern, not the keyword
    ],
)
def test_canary_ingress_takes_requests_by_header_cookie_or_weight(plane, host, headers, expected):
    conn = plane.http()
    for _ in range(3):
        if isinstance(expected, int):
            assert request(conn, "/", host, **headers).status == expected
        else:
            assert echoed(conn, "/", headers={"Host": host, **headers})["backend"] == expected


def test_canary_weight_and_weight_total_are_read():
    options, _ = ingress_annotations.canary_settings([(NGINX + "canary", "true"),
                                                (NGINX + "canary-weight", "50")])
    assert options is not None
    assert (options.weight, options.weight_total) == (50, 100)


# --- bad values -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value"),
    [
        (NGINX + "proxy-body-size", "lots"),
        (NGINX + "proxy-read-timeout", "0"),
        (NGINX + "ssl-redirect", "yes"),
        (NGINX + "backend-protocol", "FCGI"),
        (NGINX + "rewrite-target", "relative"),
    ],
)
def test_unreadable_annotation_keeps_the_default_and_is_reported(key, value):
    ingress = simple_ingress("bad", {("bad.test", "/"): "main"}, annotations={key: value})
    table = routing.RouteTable.build(
        routes=ingress_routes.compile_ingresses(
            ingresses=[ingress],
            ingress_classes=[],
            controller_name="certctl.io/ingress-controller",
            class_name=None,
        ),
        services=[],
        endpoint_slices=[],
    )
    match = table.match(host="bad.test", path="/")
    assert match is not None
    assert match.options == route_options.DEFAULT_OPTIONS
    (problem,) = table.problems
    assert problem.reason == ingress_routes.BAD_ANNOTATION
    assert key in problem.message and str(problem.source) == "Ingress default/bad"


def test_an_ingress_without_annotations_gets_what_reading_none_of_them_gives():
    # route_options skips the reading for no annotations: the two must not drift apart.
    read = ingress_annotations._read_options({}, namespace="default", name="plain",
                                             secret_data=lambda namespace, name: None)
    assert read == ingress_annotations.route_options([]) == (route_options.DEFAULT_OPTIONS, [])


def test_certctl_key_wins_over_the_nginx_alias():
    options, problems = ingress_annotations.route_options(
        [(NGINX + "proxy-body-size", "1m"), (CERTCTL + "proxy-body-size", "2k")]
    )
    assert problems == []
    assert options.body_size_limit == 2048


def test_declared_length_over_the_limit_is_refused_before_the_body_is_sent(plane):
    with socket.create_connection(("127.0.0.1", plane.plane.http_port), timeout=5) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: limit.test\r\nContent-Length: 5000\r\n\r\n")
        assert read_until_closed(sock).startswith(b"HTTP/1.1 413 ")
