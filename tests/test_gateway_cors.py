"""HTTPRoute's CORS filter through the data plane on real sockets, over TLS (HTTP/1.1 and
HTTP/2): the cases of the Gateway API conformance test HTTPRouteCORS (its names, our own
manifests and assertions), then what its CRD's field descriptions say beyond them.

A preflight is `OPTIONS` with `Origin` and `Access-Control-Request-Method`; the echo
backends answer 501 to OPTIONS, so a 204 is the data plane's own answer. Header values
are compared as lists, since the order of a configured list is the route's.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from http.client import HTTPConnection
from typing import Any

import pytest
import yaml

from certctl.api import gateway as gateway_api
from certctl.api.errors import InvalidObject
from certctl.routes import options
from tests.test_dataplane_http2 import H2Client
from tests.test_gateway_routing import (
    INFRA,
    Plane,
    compile_manifests,
    gateway_plane,
    http_route,
    route_conditions,
)

HOST = "cors.example"
TLS_INFRA = INFRA.replace("- {name: http, port: 80, protocol: HTTP}", f"""
  - {{name: http, port: 80, protocol: HTTP}}
  - name: https
    port: 443
    protocol: HTTPS
    hostname: {HOST}
    tls: {{certificateRefs: [{{name: cors}}]}}""")
BACKEND = "backendRefs: [{name: infra-backend-v1, port: 8080}]"
# The conformance suite's routes (tests/httproute-cors.yaml), as one route per case.
ROUTES = {
    "cors-multiple-origins-methods-headers": f"""
  - matches: [{{path: {{type: PathPrefix, value: /cors-1}}}}]
    filters:
    - type: CORS
      cors:
        allowOrigins: ["https://www.foo.com", "https://*.bar.com"]
        allowMethods: [GET, OPTIONS]
        allowHeaders: [x-header-1, x-header-2]
        exposeHeaders: [x-header-3, x-header-4]
        allowCredentials: true
        maxAge: 3600
    {BACKEND}
""",
    "cors-wildcard-methods": f"""
  - matches: [{{path: {{type: PathPrefix, value: /cors-2}}}}]
    filters:
    - {{type: CORS, cors: {{allowOrigins: ["https://www.foo.com"], allowMethods: ["*"]}}}}
    {BACKEND}
""",
    "cors-wildcard-origin": f"""
  - matches: [{{path: {{type: PathPrefix, value: /cors-wildcard-origin}}}}]
    filters:
    - type: CORS
      cors: {{allowOrigins: ["*"], allowMethods: [PUT], allowCredentials: false}}
    {BACKEND}
""",
    "cors-wildcard-methods-headers": f"""
  - matches: [{{path: {{type: PathPrefix, value: /cors-wildcard-methods-headers}}}}]
    filters:
    - type: CORS
      cors:
        allowOrigins: ["*"]
        allowMethods: ["*"]
        allowHeaders: ["*"]
        allowCredentials: true
    {BACKEND}
  - matches: [{{path: {{type: PathPrefix, value: /cors-wildcard-methods-headers-unauth}}}}]
    filters:
    - type: CORS
      cors:
        allowOrigins: ["*"]
        allowMethods: ["*"]
        allowHeaders: ["*"]
        allowCredentials: false
    {BACKEND}
""",
    # Beyond the suite: default ports, maxAge's default, no credentials with listed origins,
    # CORS beside the other filters, a rule without a usable backend.
    "cors-ports": f"""
  - matches: [{{path: {{type: PathPrefix, value: /ports}}}}]
    filters:
    - type: CORS
      cors:
        allowOrigins: ["https://app.example", "http://local.example:8080", "https://*:8443"]
        exposeHeaders: ["*"]
    {BACKEND}
  - matches: [{{path: {{type: PathPrefix, value: /wildcard-expose}}}}]
    filters:
    - type: CORS
      cors: {{allowOrigins: ["*"], exposeHeaders: ["*"], allowCredentials: true}}
    {BACKEND}
  - matches: [{{path: {{type: PathPrefix, value: /named-expose}}}}]
    filters:
    - type: CORS
      cors: {{allowOrigins: ["*"], exposeHeaders: ["*", X-Total], allowCredentials: true}}
    {BACKEND}
""",
    "cors-with-other-filters": f"""
  - matches: [{{path: {{type: PathPrefix, value: /modified}}}}]
    filters:
    - type: ResponseHeaderModifier
      responseHeaderModifier: {{set: [{{name: X-Modified, value: "yes"}}]}}
    - type: RequestHeaderModifier
      requestHeaderModifier: {{set: [{{name: X-Route, value: cors}}]}}
    - {{type: CORS, cors: {{allowOrigins: ["https://www.foo.com"]}}}}
    {BACKEND}
  - matches: [{{path: {{type: PathPrefix, value: /moved}}}}]
    filters:
    - {{type: CORS, cors: {{allowOrigins: ["https://www.foo.com"]}}}}
    - {{type: RequestRedirect, requestRedirect: {{hostname: elsewhere.example}}}}
  - matches: [{{path: {{type: PathPrefix, value: /missing}}}}]
    filters:
    - {{type: CORS, cors: {{allowOrigins: ["https://www.foo.com"]}}}}
    backendRefs: [{{name: no-such-service, port: 8080}}]
""",
}
Answer = tuple[int, dict[str, list[str]], Any]


@pytest.fixture(scope="module")
def plane() -> Iterator[Plane]:
    routes = "\n---\n".join(http_route(name, rules) for name, rules in ROUTES.items())
    with gateway_plane(routes, infra=TLS_INFRA, tls_hosts=(HOST,)) as running:
        yield running


def _send(plane: Plane, method: str, path: str, **headers: str) -> Answer:
    """One request over TLS (HTTP/1.1); header names of the answer lowercase, each with
    all its values."""
    port = plane.plane.https_port
    assert port is not None
    connection = HTTPConnection(HOST, port, timeout=5)
    connection.sock = plane.ca.client_context().wrap_socket(
        socket.create_connection(("127.0.0.1", port), timeout=5), server_hostname=HOST)
    try:
        connection.request(method, path, headers={
            name.replace("_", "-"): value for name, value in headers.items()})
        response = connection.getresponse()
        found: dict[str, list[str]] = {}
        for name, value in response.getheaders():
            found.setdefault(name.lower(), []).append(value)
        body = response.read()
        if response.getheader("content-type") == "application/json":
            return response.status, found, json.loads(body)
        return response.status, found, body
    finally:
        connection.close()


def _names(value: str) -> set[str]:
    return {name.strip() for name in value.split(",")}


def _preflight(plane: Plane, path: str, origin: str, method: str,
               request_headers: str | None = None) -> Answer:
    headers = {"Origin": origin, "Access_Control_Request_Method": method}
    if request_headers is not None:
        headers["Access_Control_Request_Headers"] = request_headers
    return _send(plane, "OPTIONS", path, **headers)


# --- the conformance suite's cases ------------------------------------------------------


def test_routes_with_cors_are_accepted(plane: Plane) -> None:
    for name in ROUTES:
        assert route_conditions(plane.compiled, name)["Accepted"] == ("True", "Accepted")


@pytest.mark.parametrize("origin", ["https://www.foo.com", "https://www.bar.com",
                                    "https://xpto.www.bar.com"])
def test_preflight_from_an_exact_or_wildcard_matching_origin_is_allowed(
        plane: Plane, origin: str) -> None:
    """CORS preflight request from an exact matching origin / a wildcard matching origin /
    a wildcard matching any number of periods left to '*' should be allowed."""
    status, headers, body = _preflight(plane, "/cors-1", origin, "GET",
                                       "x-header-1, x-header-2")
    assert (status, body) == (204, b"")
    assert headers["access-control-allow-origin"] == [origin]
    (methods,) = headers["access-control-allow-methods"]
    assert _names(methods) == {"GET", "OPTIONS"}
    (allowed,) = headers["access-control-allow-headers"]
    assert _names(allowed) == {"x-header-1", "x-header-2"}
    (exposed,) = headers["access-control-expose-headers"]
    assert _names(exposed) == {"x-header-3", "x-header-4"}
    assert headers["access-control-max-age"] == ["3600"]
    assert headers["access-control-allow-credentials"] == ["true"]
    assert headers["vary"] == ["Origin"]


@pytest.mark.parametrize("origin", ["https://foobar.com", "https://bar.com",
                                    "http://www.bar.com", "https://www.bar.com:8443", "null"])
def test_preflight_from_a_non_matching_origin_is_not_allowed(plane: Plane, origin: str) -> None:
    """CORS preflight request from a non-matching origin should not be allowed: answered,
    without any CORS header. `*.bar.com` needs a label before `.bar.com`, the scheme must
    be the same, and an origin without a port is the scheme's default port."""
    status, headers, body = _preflight(plane, "/cors-1", origin, "GET")
    assert (status, body) == (204, b"")
    assert not [name for name in headers if name.startswith("access-control-")], headers


def test_simple_requests_get_the_origin_only_when_it_matches(plane: Plane) -> None:
    """Simple request from an exact / a wildcard / a non-matching origin."""
    for origin in ("https://www.foo.com", "https://www.bar.com"):
        status, headers, body = _send(plane, "GET", "/cors-1", Origin=origin)
        assert (status, body["backend"]) == (200, "infra-backend-v1")
        assert headers["access-control-allow-origin"] == [origin]
        assert headers["access-control-allow-credentials"] == ["true"]
        (exposed,) = headers["access-control-expose-headers"]
        assert _names(exposed) == {"x-header-3", "x-header-4"}
        # Preflight-only headers stay off the actual response.
        assert "access-control-allow-methods" not in headers
        assert "access-control-max-age" not in headers
    status, headers, body = _send(plane, "GET", "/cors-1", Origin="https://foobar.com")
    assert status == 200 and body["backend"] == "infra-backend-v1"
    assert "access-control-allow-origin" not in headers


def test_wildcard_methods_without_credentials(plane: Plane) -> None:
    """CORS preflight request with POST method should be allowed by allowMethods with
    wildcard, and gets no access-control-allow-credentials without allowCredentials."""
    status, headers, _ = _preflight(plane, "/cors-2", "https://www.foo.com", "POST")
    assert status == 204
    assert headers["access-control-allow-methods"] == ["*"]
    assert headers["access-control-allow-origin"] == ["https://www.foo.com"]
    assert "access-control-allow-credentials" not in headers
    assert "access-control-allow-headers" not in headers  # none configured
    assert headers["access-control-max-age"] == ["5"]  # the CRD's default


@pytest.mark.parametrize("origin", ["https://foobar.com", "https://foobar.com:12345"])
def test_wildcard_origin_without_credentials(plane: Plane, origin: str) -> None:
    """A preflight and a simple request from a wildcard origin (with a port or not) get
    '*' (allowed without credentials)."""
    status, headers, _ = _preflight(plane, "/cors-wildcard-origin", origin, "PUT")
    assert status == 204
    assert headers["access-control-allow-origin"] == ["*"]
    assert headers["access-control-allow-methods"] == ["PUT"]
    assert "access-control-allow-credentials" not in headers
    assert "vary" not in headers  # the same answer for every origin
    status, headers, body = _send(plane, "PUT", "/cors-wildcard-origin", Origin=origin)
    assert (status, body["method"]) == (200, "PUT")
    assert headers["access-control-allow-origin"] == ["*"]
    assert "access-control-allow-credentials" not in headers


def test_wildcards_with_credentials_echo_the_request(plane: Plane) -> None:
    """CORS preflight request requesting specific method and headers should be allowed and
    always echo the origin with allowCredentials set to true: `*` is never answered."""
    status, headers, _ = _preflight(plane, "/cors-wildcard-methods-headers",
                                    "https://other.foo.com", "PUT", "x-header-1, x-header-2")
    assert status == 204
    assert headers["access-control-allow-origin"] == ["https://other.foo.com"]
    assert headers["access-control-allow-methods"] == ["PUT"]
    (allowed,) = headers["access-control-allow-headers"]
    assert _names(allowed) == {"x-header-1", "x-header-2"}
    assert headers["access-control-allow-credentials"] == ["true"]
    # Without Access-Control-Request-Headers there is nothing to echo: omitted, never `*`.
    status, headers, _ = _preflight(plane, "/cors-wildcard-methods-headers",
                                    "https://other.foo.com", "DELETE")
    assert status == 204
    assert headers["access-control-allow-methods"] == ["DELETE"]
    assert "access-control-allow-headers" not in headers
    status, headers, body = _send(plane, "GET", "/cors-wildcard-methods-headers",
                                  Origin="https://other.foo.com")
    assert (status, body["backend"]) == (200, "infra-backend-v1")
    assert headers["access-control-allow-origin"] == ["https://other.foo.com"]
    assert headers["access-control-allow-credentials"] == ["true"]


def test_wildcards_without_credentials(plane: Plane) -> None:
    """CORS preflight request requesting specific method and headers should hide
    access-control-allow-credentials headers with allowCredentials set to false."""
    status, headers, _ = _preflight(plane, "/cors-wildcard-methods-headers-unauth",
                                    "https://other.foo.com", "PUT", "x-header-1, x-header-2")
    assert status == 204
    assert headers["access-control-allow-origin"] == ["*"]
    assert headers["access-control-allow-methods"] == ["*"]
    assert headers["access-control-allow-headers"] == ["*"]
    assert "access-control-allow-credentials" not in headers
    status, headers, _ = _send(plane, "GET", "/cors-wildcard-methods-headers-unauth",
                               Origin="https://other.foo.com")
    assert status == 200
    assert headers["access-control-allow-origin"] == ["*"]
    assert "access-control-allow-credentials" not in headers


# --- beyond the suite: the CRD's descriptions ---------------------------------------------


@pytest.mark.parametrize(("origin", "allowed"), [
    ("https://app.example", True),
    ("https://app.example:443", True),  # the default port, written
    ("https://APP.example", True),  # hosts and schemes compare case-insensitively
    ("https://app.example:9443", False),
    ("http://app.example", False),
    ("http://local.example:8080", True),
    ("http://local.example", False),  # port 80, not 8080
    ("https://anything.example:8443", True),  # `*` alone: every host, on that port
    ("https://anything.example", False),
    ("https://user@app.example", False),
])
def test_origins_match_scheme_host_and_port(plane: Plane, origin: str, allowed: bool) -> None:
    status, headers, _ = _preflight(plane, "/ports", origin, "GET")
    assert status == 204
    assert headers.get("access-control-allow-origin") == ([origin] if allowed else None)
    if allowed:
        assert headers["access-control-max-age"] == ["5"]
        assert headers["access-control-expose-headers"] == ["*"]
        assert "access-control-allow-methods" not in headers  # none configured


def test_expose_headers_wildcard_is_not_sent_with_credentials(plane: Plane) -> None:
    status, headers, _ = _send(plane, "GET", "/wildcard-expose", Origin="https://a.example")
    assert status == 200
    assert headers["access-control-allow-origin"] == ["https://a.example"]
    assert "access-control-expose-headers" not in headers
    status, headers, _ = _send(plane, "GET", "/named-expose", Origin="https://a.example")
    assert status == 200
    assert headers["access-control-expose-headers"] == ["X-Total"]


def test_requests_without_origin_or_not_preflights_reach_the_backend(plane: Plane) -> None:
    """Only a preflight is answered by the data plane: an OPTIONS without
    Access-Control-Request-Method is the backend's (the echo server's 501), and a request
    without Origin gets no CORS headers."""
    status, headers, _ = _send(plane, "OPTIONS", "/cors-1", Origin="https://www.foo.com")
    assert status == 501
    assert headers["access-control-allow-origin"] == ["https://www.foo.com"]
    status, headers, _ = _send(plane, "OPTIONS", "/cors-1",
                               Access_Control_Request_Method="GET")
    assert status == 501
    status, headers, body = _send(plane, "GET", "/cors-1")
    assert status == 200 and body["backend"] == "infra-backend-v1"
    assert not [name for name in headers if name.startswith("access-control-")]


def test_cors_beside_other_filters(plane: Plane) -> None:
    """The other filters still apply; a preflight is answered before a redirect; local
    answers (a redirect, a 500 for a missing backend) carry the CORS headers too."""
    status, headers, body = _send(plane, "GET", "/modified", Origin="https://www.foo.com")
    assert status == 200 and body["headers"]["x-route"] == "cors"
    assert headers["x-modified"] == ["yes"]
    assert headers["access-control-allow-origin"] == ["https://www.foo.com"]
    status, headers, _ = _preflight(plane, "/moved", "https://www.foo.com", "PUT")
    assert status == 204 and "location" not in headers
    assert headers["access-control-allow-origin"] == ["https://www.foo.com"]
    status, headers, _ = _send(plane, "GET", "/moved", Origin="https://www.foo.com")
    (location,) = headers["location"]  # the port the request came to (RequestRedirect's)
    assert status == 302 and location == f"https://elsewhere.example:{plane.plane.https_port}/moved"
    assert headers["access-control-allow-origin"] == ["https://www.foo.com"]
    status, headers, _ = _send(plane, "GET", "/missing", Origin="https://www.foo.com")
    assert status == 500
    assert headers["access-control-allow-origin"] == ["https://www.foo.com"]


def test_cors_over_http2_and_plain_http(plane: Plane) -> None:
    """One decision for HTTP/1.1 and HTTP/2 (dispatch): the same answers on a stream; and
    on the plain HTTP listener."""
    client = H2Client(plane, HOST)  # type: ignore[arg-type]
    try:
        assert client.alpn == "h2"
        preflight, simple = client.wait(
            client.request("OPTIONS", "/cors-1", headers=(
                ("origin", "https://www.bar.com"), ("access-control-request-method", "GET"))),
            client.request("GET", "/cors-1", headers=(("origin", "https://www.foo.com"),)))
    finally:
        client.close()
    assert preflight["status"] == 204 and preflight["body"] == b""
    assert preflight["headers"][b"access-control-allow-origin"] == b"https://www.bar.com"
    assert preflight["headers"][b"access-control-max-age"] == b"3600"
    assert simple["status"] == 200
    assert json.loads(simple["body"])["backend"] == "infra-backend-v1"
    assert simple["headers"][b"access-control-allow-origin"] == b"https://www.foo.com"
    status, headers, _ = plane.get("/cors-1", host=HOST, method="OPTIONS", headers={
        "Origin": "https://www.foo.com", "Access-Control-Request-Method": "GET"})
    assert status == 204
    assert headers["access-control-allow-origin"] == "https://www.foo.com"


# --- the filter as parsed and compiled ------------------------------------------------------


def test_cors_filter_is_parsed_with_the_crd_defaults() -> None:
    route = _parse("rules: [{filters: [{type: CORS, cors: {allowOrigins: ['https://*.a.example']"
                   "}}]}]")
    (found,) = route.rules[0].filters
    assert found.cors == gateway_api.HTTPCORSFilter(allow_origins=("https://*.a.example",))
    assert found.cors.max_age == 5 and not found.cors.allow_credentials


def test_compiled_policy_splits_origins() -> None:
    compiled = compile_manifests(INFRA + "\n---\n" + http_route("compiled", """
  - filters:
    - type: CORS
      cors: {allowOrigins: ["https://*.Example.com", "http://b.example:8080"],
             allowMethods: [GET], allowHeaders: [X-A], maxAge: 60}
    backendRefs: [{name: infra-backend-v1, port: 8080}]
"""))
    (route,) = compiled.routes.routes
    assert route.filters is not None
    assert route.filters.cors == options.GatewayCorsPolicy(
        origins=(options.AllowedOrigin(scheme="https", host="*.example.com", port=443),
                 options.AllowedOrigin(scheme="http", host="b.example", port=8080)),
        methods=(b"GET",), headers=(b"X-A",), max_age=60)


def test_cors_on_a_backend_ref_is_still_unsupported() -> None:
    compiled = compile_manifests(INFRA + "\n---\n" + http_route("on-backend", """
  - backendRefs:
    - name: infra-backend-v1
      port: 8080
      filters: [{type: CORS, cors: {allowOrigins: ["*"]}}]
"""))
    assert route_conditions(compiled, "on-backend")["Accepted"] == ("False", "UnsupportedValue")


def _parse(spec: str, *, source: str | None = None) -> gateway_api.HTTPRoute:
    obj = yaml.safe_load("apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n"
                         "metadata: {name: r, namespace: n}\nspec: {" + spec + "}")
    return gateway_api.parse_http_route(obj, source=source)


@pytest.mark.parametrize(("cors", "field"), [
    ("{allowOrigins: ['www.foo.com']}", "cors.allowOrigins[0]"),
    ("{allowOrigins: ['https://www.*.com']}", "cors.allowOrigins[0]"),
    ("{allowOrigins: ['ftp://a.example']}", "cors.allowOrigins[0]"),
    ("{allowOrigins: ['https://a.example:70000']}", "cors.allowOrigins[0]"),
    ("{allowOrigins: ['https://a.example/path']}", "cors.allowOrigins[0]"),
    ("{allowOrigins: ['*', 'https://a.example']}", "cors.allowOrigins"),
    ("{allowMethods: [get]}", "cors.allowMethods[0]"),
    ("{allowMethods: ['*', GET]}", "cors.allowMethods"),
    ("{allowHeaders: ['x header']}", "cors.allowHeaders[0]"),
    ("{allowHeaders: ['*', x-a]}", "cors.allowHeaders"),
    ("{exposeHeaders: [':path']}", "cors.exposeHeaders[0]"),
    ("{maxAge: 0}", "cors.maxAge"),
    ("{allowCredentials: 'yes'}", "cors.allowCredentials"),
    ("null", "cors"),
])
def test_bad_cors_filter_names_the_route_and_field(cors: str, field: str) -> None:
    with pytest.raises(InvalidObject) as raised:
        _parse(f"rules: [{{filters: [{{type: CORS, cors: {cors}}}]}}]",
               source="site/route.yaml")
    assert raised.value.field == f"spec.rules[0].filters[0].{field}"
    assert str(raised.value).startswith(f"site/route.yaml: HTTPRoute n/r: "
                                        f"spec.rules[0].filters[0].{field}")


def test_repeated_cors_filter_is_refused() -> None:
    with pytest.raises(InvalidObject) as raised:
        _parse("rules: [{filters: [{type: CORS, cors: {}}, {type: CORS, cors: {}}]}]")
    assert raised.value.field == "spec.rules[0].filters"


def test_expose_headers_may_list_the_wildcard_with_names() -> None:
    route = _parse("rules: [{filters: [{type: CORS, cors: {exposeHeaders: ['*', X-A]}}]}]")
    assert route.rules[0].filters[0].cors is not None
    assert route.rules[0].filters[0].cors.expose_headers == ("*", "X-A")


@pytest.mark.parametrize(("origin", "parts"), [
    ("https://a.example", ("https", "a.example", 443)),
    ("HTTP://A.Example", ("http", "a.example", 80)),
    ("http://[::1]:8080", ("http", "[::1]", 8080)),
    ("chrome-extension://abc", None),  # no default port to assume
    ("null", None),
    ("https://a.example:0", None),
    ("https://a.example:", None),
])
def test_split_origin(origin: str, parts: tuple[str, str, int] | None) -> None:
    assert options.split_origin(origin) == parts
