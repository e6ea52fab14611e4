"""What the backend is told (upstream-vhost, x-forwarded-prefix) and the Server header
clients get (the data plane's own answers, and backends' that sent none)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from certctl.dataplane import routing
from certctl.routes import ingress as ingress_routes
from tests.test_dataplane_http2 import H2Client
from tests.test_dataplane_proxy import (
    RawServer,
    Running,
    echoed,
    read_head,
    running_plane,
    simple_ingress,
)

NGINX = "nginx.ingress.kubernetes.io/"


@pytest.fixture(scope="module")
def plane() -> Iterator[Running]:
    anonymous = RawServer(_answer_without_server)
    shouting = RawServer(_answer_in_capitals)
    ingresses = [
        simple_ingress("anonymous", {("anonymous.test", "/"): "anonymous"}),
        simple_ingress("shouting", {("shouting.test", "/"): "shouting"}),
        simple_ingress("vhost", {("vhost.test", "/"): "app"}, annotations={
            NGINX + "upstream-vhost": "internal.svc:8080",
            NGINX + "x-forwarded-prefix": "/shop"}),
    ]
    with running_plane(ingresses=ingresses, echo=("app",), tls_hosts=("vhost.test",),
                       backends={"anonymous": (anonymous.port,),
                                 "shouting": (shouting.port,)}) as running:
        yield running
    anonymous.close()
    shouting.close()


def _answer_without_server(conn) -> None:
    while read_head(conn):
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")


_SHOUTING_CONNECTIONS: list[int] = []


def _answer_in_capitals(conn) -> None:
    """Framing, hop-by-hop and Server fields named in capitals, and a field the Connection
    header names; the same connection answers every request, each one numbered."""
    _SHOUTING_CONNECTIONS.append(conn.fileno())
    answered = 0
    while read_head(conn):
        answered += 1
        conn.sendall(b"HTTP/1.1 200 OK\r\nSERVER: shouting\r\nKEEP-ALIVE: timeout=5\r\n"
                     b"CONNECTION: X-Hop, keep-alive\r\nX-HOP: 1\r\nX-Kept: %d\r\n"
                     b"PROXY-AUTHENTICATE: Basic\r\nCONTENT-LENGTH: 2\r\n\r\nok" % answered)


def _server_header(plane: Running, host: str) -> str | None:
    connection = plane.http()
    connection.request("GET", "/", headers={"Host": host})
    response = connection.getresponse()
    response.read()
    return response.getheader("server")


def test_server_header_is_the_backends_or_certctls(plane):
    assert _server_header(plane, "anonymous.test") == "certctl"
    assert _server_header(plane, "nowhere.test") == "certctl"  # the data plane's own 404
    assert (_server_header(plane, "vhost.test") or "") == "certctl"  # its HTTPS redirect
    backend = echoed(plane.https("vhost.test"), "/", headers={"Host": "vhost.test"})
    assert backend["backend"] == "app"
    connection = plane.https("vhost.test")
    connection.request("GET", "/", headers={"Host": "vhost.test"})
    response = connection.getresponse()
    response.read()
    assert (response.getheader("server") or "").startswith("BaseHTTP/")  # the backend's kept


def test_backend_fields_are_known_whatever_their_case(plane):
    # Names are classified by their case as sent (and cached so): the capitals' framing
    # still frames, their hop-by-hop fields still stop here, their Server still counts.
    connection = plane.http()
    for number in (1, 2, 3):
        connection.request("GET", "/", headers={"Host": "shouting.test"})
        response = connection.getresponse()
        assert response.read() == b"ok"
        names = {name.lower() for name, _ in response.getheaders()}
        assert response.getheader("x-kept") == str(number)  # one backend connection, reused
        assert response.getheader("server") == "shouting"  # and no second one added
        assert len(response.headers.get_all("server") or []) == 1
        assert not names & {"keep-alive", "x-hop", "proxy-authenticate"}
        assert response.getheader("content-length") == "2"
    assert len(_SHOUTING_CONNECTIONS) == 1


def test_backend_gets_the_vhost_and_the_prefix_and_the_original_host_forwarded(plane):
    headers = echoed(plane.https("vhost.test"), "/", headers={"Host": "vhost.test",
                                                 "X-Forwarded-Prefix": "/spoofed"})["headers"]
    assert headers["host"] == "internal.svc:8080"
    assert headers["x-forwarded-host"] == "vhost.test"
    assert headers["x-forwarded-prefix"] == "/shop"


def test_http2_requests_too(plane):
    client = H2Client(plane, "vhost.test")
    try:
        (answer,) = client.wait(client.request("GET", "/"))
        headers = json.loads(answer["body"])["headers"]
        assert (headers["host"], headers["x-forwarded-prefix"]) == ("internal.svc:8080", "/shop")
    finally:
        client.close()


def test_unreadable_values_are_reported_and_not_sent():
    table = routing.RouteTable.build(
        routes=ingress_routes.compile_ingresses(
            ingresses=[simple_ingress("t", {("t.test", "/"): "web"}, annotations={
                NGINX + "upstream-vhost": "bad host", NGINX + "x-forwarded-prefix": "/a b",
                NGINX + "proxy-send-timeout": "30", NGINX + "proxy-request-buffering": "on"})],
            ingress_classes=[], controller_name="certctl.io/ingress-controller", class_name=None,
        ),
        services=[], endpoint_slices=[],
    )
    match = table.match(host="t.test", path="/")
    assert match is not None
    assert (match.options.upstream_vhost, match.options.request_headers) == (None, ())
    # Two reported values; the accepted no-ops (send timeout, request buffering) say nothing.
    assert sorted(p.message.split(":")[0] for p in table.problems) == [
        NGINX + "upstream-vhost", NGINX + "x-forwarded-prefix"]
