"""ingress-nginx's upstream-vhost and x-forwarded-prefix: what the backend is told."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from certctl.dataplane import routing
from certctl.routes import ingress as ingress_routes
from tests.test_dataplane_http2 import H2Client
from tests.test_dataplane_proxy import Running, echoed, running_plane, simple_ingress

NGINX = "nginx.ingress.kubernetes.io/"


@pytest.fixture(scope="module")
def plane() -> Iterator[Running]:
    ingresses = [
        simple_ingress("vhost", {("vhost.test", "/"): "app"}, annotations={
            NGINX + "upstream-vhost": "internal.svc:8080",
            NGINX + "x-forwarded-prefix": "/shop"}),
    ]
    with running_plane(ingresses=ingresses, echo=("app",), tls_hosts=("vhost.test",)) as running:
        yield running


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
