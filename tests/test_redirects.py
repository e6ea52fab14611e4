"""ingress-nginx's redirect annotations: permanent-redirect, temporal-redirect (and their
codes), app-root and from-to-www-redirect, through the real data plane.

Redirects are nginx's `return`: answered before the HTTPS redirect and before
the backend, with the request's path and query filled into `$request_uri`.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from certctl.dataplane import routing
from certctl.routes import ingress as ingress_routes
from tests.test_dataplane_http2 import H2Client
from tests.test_dataplane_proxy import Running, echoed, running_plane, simple_ingress

NGINX = "nginx.ingress.kubernetes.io/"
CERTCTL = "certctl.io/"


@pytest.fixture(scope="module")
def plane() -> Iterator[Running]:
    ingresses = [
        simple_ingress("moved", {("moved.test", "/"): "web"}, annotations={
            NGINX + "permanent-redirect": "https://new.example$request_uri"}),
        simple_ingress("moved-308", {("moved-308.test", "/"): "web"}, annotations={
            NGINX + "permanent-redirect": "https://new.example/landing",
            NGINX + "permanent-redirect-code": "308"}),
        simple_ingress("both", {("both.test", "/"): "web"}, annotations={
            NGINX + "temporal-redirect": "https://temporary.example/",
            NGINX + "permanent-redirect": "https://permanent.example/"}),
        simple_ingress("away", {("away.test", "/"): "web"}, annotations={
            CERTCTL + "temporal-redirect": "$scheme://elsewhere.test$uri$is_args$args",
            CERTCTL + "temporal-redirect-code": "307"}),
        simple_ingress("app-root", {("approot.test", "/"): "web"},
                       annotations={NGINX + "app-root": "/app1"}),
        simple_ingress("www", {("www.shop.test", "/"): "web"},
                       annotations={NGINX + "from-to-www-redirect": "true"}),
        simple_ingress("bare", {("bare.test", "/"): "web"},
                       annotations={NGINX + "from-to-www-redirect": "true"}),
        simple_ingress("taken", {("taken.test", "/"): "web"},
                       annotations={NGINX + "from-to-www-redirect": "true"}),
        simple_ingress("www-taken", {("www.taken.test", "/"): "web"}),
        simple_ingress("bad-url", {("bad-url.test", "/"): "web"},
                       annotations={NGINX + "permanent-redirect": "new.example"}),
        simple_ingress("bad-variable", {("bad-variable.test", "/"): "web"},
                       annotations={NGINX + "permanent-redirect": "https://x.example$cookie_id"}),
        simple_ingress("bad-code", {("bad-code.test", "/"): "web"}, annotations={
            NGINX + "permanent-redirect": "https://x.example/",
            NGINX + "permanent-redirect-code": "305"}),
    ]
    with running_plane(ingresses=ingresses, echo=("web",), tls_hosts=("moved.test",)) as running:
        yield running


def _get(plane: Running, host: str, target: str = "/") -> tuple[int, str | None]:
    connection = plane.http()
    try:
        connection.request("GET", target, headers={"Host": host})
        response = connection.getresponse()
        response.read()
        return response.status, response.getheader("location")
    finally:
        connection.close()


@pytest.mark.parametrize(("host", "target", "status", "location"), [
    # before the HTTPS redirect moved.test's certificate would give
    ("moved.test", "/a/b?c=1", 301, "https://new.example/a/b?c=1"),
    ("moved-308.test", "/x", 308, "https://new.example/landing"),
    ("both.test", "/", 301, "https://permanent.example/"),
    ("away.test", "/p?q", 307, "http://elsewhere.test/p?q"),
    ("away.test", "/p", 307, "http://elsewhere.test/p"),
    ("approot.test", "/", 302, "http://approot.test/app1"),
    ("shop.test", "/cart?id=7", 308, "http://www.shop.test/cart?id=7"),
    ("www.bare.test", "/", 308, "http://bare.test/"),
])
def test_redirect_annotations_answer_with_their_location(plane, host, target, status, location):
    assert _get(plane, host, target) == (status, location)


@pytest.mark.parametrize(("host", "target"), [
    ("approot.test", "/other"),  # app-root redirects `/` only
    ("www.shop.test", "/"),  # the www host itself is served
    ("www.taken.test", "/"),  # another Ingress has rules for the twin
    ("bad-url.test", "/"),
    ("bad-variable.test", "/"),
])
def test_requests_not_redirected_reach_the_backend(plane, host, target):
    assert echoed(plane.http(), target, headers={"Host": host})["backend"] == "web"


def test_unreadable_redirects_are_reported():
    table = routing.RouteTable.build(
        routes=ingress_routes.compile_ingresses(
            ingresses=[
                simple_ingress("u", {("u.test", "/"): "web"},
                               annotations={NGINX + "permanent-redirect": "new.example"}),
                simple_ingress("v", {("v.test", "/"): "web"}, annotations={
                    NGINX + "temporal-redirect": "https://x.example$cookie_id"}),
                simple_ingress("c", {("c.test", "/"): "web"}, annotations={
                    NGINX + "permanent-redirect": "https://x.example/",
                    NGINX + "permanent-redirect-code": "305"}),
                simple_ingress("w", {("w.test", "/"): "web"},
                               annotations={NGINX + "from-to-www-redirect": "yes"}),
            ],
            ingress_classes=[], controller_name="certctl.io/ingress-controller", class_name=None,
        ),
        services=[], endpoint_slices=[],
    )
    messages = sorted(p.message for p in table.problems)
    assert messages == [
        NGINX + "from-to-www-redirect: 'yes' is not true or false",
        NGINX + "permanent-redirect-code: 305 is not a redirect status (301, 302, 303, 307, 308)",
        NGINX + "permanent-redirect: 'new.example' is not a URL or an absolute path",
        NGINX + "temporal-redirect: $cookie_id is not a variable certctl fills in (it knows "
        "$request_uri, $uri, $is_args, $args, $scheme, $http_host, $host)",
    ]
    match = table.match(host="c.test", path="/")
    assert match is not None and match.options.redirect is not None
    assert match.options.redirect.code == 301  # the default kept
    assert table.match(host="www.w.test", path="/") is None


def test_http2_request_is_redirected_too(plane):
    client = H2Client(plane, "moved.test")
    try:
        (answer,) = client.wait(client.request("GET", "/x?y"))
        assert answer["status"] == 301
        assert answer["headers"][b"location"] == b"https://new.example/x?y"
    finally:
        client.close()
