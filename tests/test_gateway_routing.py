"""HTTPRoutes through the data plane on real sockets, case by case as the Gateway API
conformance suite states them (its test names, our own manifests and assertions).

The Gateway API objects are parsed (`certctl.api.gateway`), compiled
(`certctl.routes.gateway`) and indexed (`certctl.dataplane.routing`) as the data
plane feed does; backends are the JSON echo servers of test_dataplane, which
report the path and headers they got.
"""

from __future__ import annotations

import collections
import contextlib
import json
from collections.abc import Iterator
from http.client import HTTPConnection
from typing import Any

import pytest
import uvloop
import yaml

from certctl.api import gateway as gateway_api
from certctl.api import resources
from certctl.api.errors import InvalidObject
from certctl.api.resources import ObjectKey
from certctl.dataplane import certstore, routing, server
from certctl.routes import gateway as gateway_routes
from certctl.routes import ingress as ingress_routes
from certctl.routes.model import RouteSet
from tests.test_dataplane import EchoServer, LoopThread
from tests.test_dataplane_http2 import H2Client
from tests.testca import TestCA

NS = "gateway-conformance-infra"
INFRA = f"""
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{name: certctl}}
spec: {{controllerName: certctl.io/gateway-controller}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: same-namespace, namespace: {NS}}}
spec:
  gatewayClassName: certctl
  listeners:
  - {{name: http, port: 80, protocol: HTTP}}
"""
BACKENDS = ("infra-backend-v1", "infra-backend-v2", "infra-backend-v3")


def documents(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def compile_manifests(text: str, *, services: list[resources.Service] = (),  # type: ignore[assignment]
                      secrets: frozenset[tuple[str, str]] = frozenset()
                      ) -> gateway_routes.Compiled:
    parsers = {"GatewayClass": gateway_api.parse_gateway_class,
               "Gateway": gateway_api.parse_gateway, "HTTPRoute": gateway_api.parse_http_route,
               "ReferenceGrant": gateway_api.parse_reference_grant,
               "Namespace": gateway_api.parse_namespace,
               "ListenerSet": gateway_api.parse_listener_set}
    found: dict[str, list[Any]] = collections.defaultdict(list)
    for created, doc in enumerate(documents(text)):
        doc["metadata"].setdefault("creationTimestamp", f"2026-01-01T00:00:{created:02d}Z")
        found[doc["kind"]].append(parsers[doc["kind"]](doc))
    return gateway_routes.compile_gateways(
        classes=found["GatewayClass"], gateways=found["Gateway"],
        http_routes=found["HTTPRoute"], grants=found["ReferenceGrant"], services=services,
        secret_exists=lambda namespace, name: (namespace, name) in secrets,
        namespaces=found["Namespace"], listener_sets=found["ListenerSet"])


class Plane:
    def __init__(self, plane: server.DataPlane, compiled: gateway_routes.Compiled,
                 ca: TestCA) -> None:
        self.plane = plane
        self.compiled = compiled
        self.ca = ca  # signs the certificates of `tls_hosts`

    def get(self, path: str, *, host: str = "example.org", method: str = "GET",
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
        connection = HTTPConnection("127.0.0.1", self.plane.http_port, timeout=5)
        try:
            connection.request(method, path, headers={"Host": host, **(headers or {})})
            response = connection.getresponse()
            body = response.read()
            answer = {k.lower(): v for k, v in response.getheaders()}
            if answer.get("content-type") == "application/json":
                return response.status, answer, json.loads(body)
            return response.status, answer, body.decode()
        finally:
            connection.close()

    def backend(self, path: str, **kwargs: Any) -> str:
        status, _, body = self.get(path, **kwargs)
        assert status == 200, (path, kwargs, status, body)
        return str(body["backend"])


@contextlib.contextmanager
def started_plane(*, routes: RouteSet, services: list[resources.Service],
                  endpoint_slices: list[resources.EndpointSlice],
                  certificates: certstore.CertificateIndex | None = None,
                  ) -> Iterator[server.DataPlane]:
    """A data plane on its own loop thread, with HTTP and HTTPS listeners on loopback,
    serving `routes`."""
    plane = server.DataPlane(http_address=("127.0.0.1", 0), https_address=("127.0.0.1", 0),
                             certificates=certificates or certstore.CertificateIndex(),
                             challenge_responder=lambda host, token: None)
    plane.set_routes(routing.RouteTable.build(routes=routes, services=services,
                                              endpoint_slices=endpoint_slices))
    loop = LoopThread(uvloop.new_event_loop())
    loop.run(plane.start())
    try:
        yield plane
    finally:
        loop.run(plane.stop())
        loop.close()


@contextlib.contextmanager
def gateway_plane(routes: str, *, infra: str = INFRA,
                  ingresses: list[resources.Ingress] = (),  # type: ignore[assignment]
                  tls_hosts: tuple[str, ...] = ()) -> Iterator[Plane]:
    """A data plane serving the infra Gateway, `routes`, and echo backends in NS (and in
    `gateway-conformance-web-backend`, the suite's other namespace); `tls_hosts` get
    certificates of a test CA."""
    ca = TestCA()
    certificates = certstore.CertificateIndex()
    for host in tls_hosts:
        issued = ca.issue(host)
        certificates.set_certificate(source=resources.ObjectKey(
            kind="Secret", namespace=NS, name=host), chain_pem=issued.chain_pem,
            key_pem=issued.key_pem)
    with contextlib.ExitStack() as stack:
        services, slices = [], []
        for namespace, name in [(NS, b) for b in BACKENDS] + [
                ("gateway-conformance-web-backend", "web-backend")]:
            echo = EchoServer(name)
            stack.callback(echo.server_close)
            stack.callback(echo.shutdown)
            services.append(resources.Service(namespace=namespace, name=name, ports=(
                resources.ServicePort(port=8080, name="http", target_port=3000),)))
            slices.append(resources.EndpointSlice(
                namespace=namespace, name=f"{name}-1", service_name=name,
                ports=(resources.EndpointPort(port=echo.port, name="http"),),
                endpoints=(resources.Endpoint(addresses=("127.0.0.1",)),)))
        compiled = compile_manifests(infra + "\n---\n" + routes, services=services)
        route_set = ingress_routes.compile_ingresses(
            ingresses=ingresses, ingress_classes=[],
            controller_name="certctl.io/ingress-controller", class_name=None)
        route_set = route_set.__class__(routes=route_set.routes + compiled.routes.routes,
                                        defaults=route_set.defaults,
                                        served=route_set.served | compiled.routes.served)
        with started_plane(routes=route_set, services=services, endpoint_slices=slices,
                           certificates=certificates) as plane:
            yield Plane(plane, compiled, ca)


def http_route(name: str, rules: str, *, hostnames: str = "", parent: str = "same-namespace",
               namespace: str = NS, extra_parent: str = "") -> str:
    return f"""
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  parentRefs:
  - {{name: {parent}, namespace: {NS}{extra_parent}}}
  {hostnames}
  rules:
{rules}
"""


def match_rules(*rules: tuple[str, str]) -> str:
    """`http_route` rules from (matches, backend) pairs: the matches (a YAML flow list, ""
    for none) to port 8080 of the backend."""
    return "".join((f"  - matches: {matches}\n    backendRefs" if matches else "  - backendRefs")
                   + f": [{{name: {backend}, port: 8080}}]\n" for matches, backend in rules)


def route_conditions(compiled: gateway_routes.Compiled, name: str,
                     namespace: str = NS) -> dict[str, tuple[str, str]]:
    (status,) = [r for r in compiled.http_routes if r.key.name == name
                 and r.key.namespace == namespace]
    (parent,) = status.parents
    return {c.type: (c.status, c.reason) for c in parent.conditions}


# --- matching -------------------------------------------------------------------------


def test_httproute_matching_path_and_header_pick_the_backend() -> None:
    """HTTPRouteMatching."""
    rules = """
  - matches:
    - path: {type: PathPrefix, value: /}
    - headers: [{name: version, value: one}]
    backendRefs: [{name: infra-backend-v1, port: 8080}]
  - matches:
    - path: {type: PathPrefix, value: /v2}
    - headers: [{name: version, value: two}]
    backendRefs: [{name: infra-backend-v2, port: 8080}]
"""
    with gateway_plane(http_route("matching", rules)) as plane:
        assert plane.backend("/") == "infra-backend-v1"
        assert plane.backend("/example") == "infra-backend-v1"
        assert plane.backend("/", headers={"Version": "one"}) == "infra-backend-v1"
        assert plane.backend("/v2") == "infra-backend-v2"
        assert plane.backend("/v2/example") == "infra-backend-v2"
        assert plane.backend("/", headers={"Version": "two"}) == "infra-backend-v2"
        assert route_conditions(plane.compiled, "matching") == {
            "Accepted": ("True", "Accepted"), "ResolvedRefs": ("True", "ResolvedRefs")}


def test_httproute_exact_path_matching() -> None:
    """HTTPRouteExactPathMatching."""
    rules = match_rules(
        ("[{path: {type: Exact, value: /one}}]", "infra-backend-v1"),
        ("[{path: {type: Exact, value: /two}}]", "infra-backend-v2"))
    with gateway_plane(http_route("exact-matching", rules)) as plane:
        assert plane.backend("/one") == "infra-backend-v1"
        assert plane.backend("/two") == "infra-backend-v2"
        for path in ("/", "/one/example", "/two/", "/Two"):
            assert plane.get(path)[0] == 404, path


def test_httproute_path_prefix_matches_whole_segments() -> None:
    """HTTPRouteMatching's PathPrefix semantics: `/v2` is not a prefix of `/v2example`."""
    rules = match_rules(
        ("[{path: {type: PathPrefix, value: /v2/}}]", "infra-backend-v2"),
        ("", "infra-backend-v1"))
    with gateway_plane(http_route("prefix", rules)) as plane:
        assert plane.backend("/v2") == "infra-backend-v2"
        assert plane.backend("/v2/x") == "infra-backend-v2"
        assert plane.backend("/v2example") == "infra-backend-v1"


def test_httproute_header_matching() -> None:
    """HTTPRouteHeaderMatching: names are case-insensitive, values exact; more headers win."""
    rules = match_rules(
        ("[{headers: [{name: version, value: one}]}]", "infra-backend-v1"),
        ("[{headers: [{name: version, value: two}]}]", "infra-backend-v2"),
        ("[{headers: [{name: version, value: two}, {name: color, value: orange}]}]",
         "infra-backend-v1"),
        ("[{headers: [{name: color, value: blue}]}, {headers: [{name: color, value: green}]}]",
         "infra-backend-v1"),
        ("[{headers: [{name: color, value: red}]}, {headers: [{name: color, value: yellow}]}]",
         "infra-backend-v2"))
    with gateway_plane(http_route("header-matching", rules)) as plane:
        assert plane.backend("/", headers={"Version": "one"}) == "infra-backend-v1"
        assert plane.backend("/", headers={"VERSION": "two"}) == "infra-backend-v2"
        assert plane.backend("/", headers={"Version": "two", "Color": "orange"}) \
            == "infra-backend-v1"
        assert plane.backend("/", headers={"Color": "blue"}) == "infra-backend-v1"
        assert plane.backend("/", headers={"Color": "green"}) == "infra-backend-v1"
        assert plane.backend("/", headers={"Color": "red"}) == "infra-backend-v2"
        assert plane.backend("/", headers={"Color": "yellow"}) == "infra-backend-v2"
        assert plane.get("/")[0] == 404
        assert plane.get("/", headers={"Version": "ONE"})[0] == 404
        assert plane.get("/", headers={"Color": "purple"})[0] == 404


def test_httproute_query_param_matching() -> None:
    """HTTPRouteQueryParamMatching."""
    rules = match_rules(
        ("[{queryParams: [{name: animal, value: whale}]}]", "infra-backend-v1"),
        ("[{queryParams: [{name: animal, value: dolphin}]}]", "infra-backend-v2"),
        ("[{queryParams: [{name: animal, value: dolphin}, {name: color, value: blue}]}]",
         "infra-backend-v3"))
    with gateway_plane(http_route("query-param-matching", rules)) as plane:
        assert plane.backend("/?animal=whale") == "infra-backend-v1"
        assert plane.backend("/?animal=dolphin") == "infra-backend-v2"
        assert plane.backend("/?animal=dolphin&color=blue") == "infra-backend-v3"
        assert plane.backend("/?color=blue&animal=dolphin") == "infra-backend-v3"
        assert plane.get("/?animal=whalex")[0] == 404
        assert plane.get("/")[0] == 404


def test_httproute_method_matching() -> None:
    """HTTPRouteMethodMatching: a method match outranks header matches on the same path."""
    rules = match_rules(
        ("[{method: POST}]", "infra-backend-v1"),
        ("[{method: GET}]", "infra-backend-v2"),
        ("[{headers: [{name: version, value: one}]}]", "infra-backend-v3"))
    with gateway_plane(http_route("method-matching", rules)) as plane:
        assert plane.backend("/", method="POST") == "infra-backend-v1"
        assert plane.backend("/", method="GET") == "infra-backend-v2"
        assert plane.backend("/", method="GET", headers={"Version": "one"}) == "infra-backend-v2"
        assert plane.backend("/", method="PUT", headers={"Version": "one"}) == "infra-backend-v3"
        assert plane.get("/", method="HEAD")[0] == 404


def test_httproute_matching_across_routes() -> None:
    """HTTPRouteMatchingAcrossRoutes: two routes share hostnames; the longest path and the
    most specific match win whichever route holds them."""
    first = http_route("matching-part1", """
  - matches: [{path: {type: PathPrefix, value: /}}]
    backendRefs: [{name: infra-backend-v1, port: 8080}]
  - matches: [{path: {type: PathPrefix, value: /v2}, headers: [{name: version, value: two}]}]
    backendRefs: [{name: infra-backend-v2, port: 8080}]
""", hostnames="hostnames: [example.com, example.net]")
    second = http_route("matching-part2", """
  - matches: [{path: {type: PathPrefix, value: /v2}}]
    backendRefs: [{name: infra-backend-v3, port: 8080}]
""", hostnames="hostnames: [example.com]")
    with gateway_plane(first + "---" + second) as plane:
        assert plane.backend("/", host="example.com") == "infra-backend-v1"
        assert plane.backend("/example", host="example.net") == "infra-backend-v1"
        assert plane.backend("/v2", host="example.com") == "infra-backend-v3"
        assert plane.backend("/v2", host="example.com", headers={"Version": "two"}) \
            == "infra-backend-v2"
        assert plane.backend("/v2", host="example.net") == "infra-backend-v1"
        assert plane.get("/", host="example.org")[0] == 404


def test_httproute_hostname_intersection() -> None:
    """HTTPRouteHostnameIntersection / HTTPRouteListenerHostnameMatching: a route serves
    only the hostnames its listener has too, the more specific side of a wildcard."""
    infra = INFRA.replace("- {name: http, port: 80, protocol: HTTP}", """
  - {name: very-specific, port: 80, protocol: HTTP, hostname: very.specific.com}
  - {name: wildcard, port: 80, protocol: HTTP, hostname: "*.wildcard.io"}""")
    routes = http_route("specific-host-matches-listener", """
  - backendRefs: [{name: infra-backend-v1, port: 8080}]
""", hostnames="hostnames: [non.matching.com, very.specific.com, \"*.specific.com\"]") + \
        "---" + http_route("wildcard-host-matches-listener", """
  - backendRefs: [{name: infra-backend-v2, port: 8080}]
""", hostnames="hostnames: [bar.wildcard.io, \"*.anotherwildcard.io\"]") + \
        "---" + http_route("no-intersecting-hosts", """
  - backendRefs: [{name: infra-backend-v3, port: 8080}]
""", hostnames="hostnames: [specific.but.wrong.com, wildcard.io]")
    with gateway_plane(routes, infra=infra) as plane:
        assert plane.backend("/", host="very.specific.com") == "infra-backend-v1"
        assert plane.backend("/", host="bar.wildcard.io") == "infra-backend-v2"
        for host in ("non.matching.com", "foo.specific.com", "foo.wildcard.io",
                     "foo.anotherwildcard.io", "specific.but.wrong.com", "wildcard.io"):
            assert plane.get("/", host=host)[0] == 404, host
        assert route_conditions(plane.compiled, "no-intersecting-hosts")["Accepted"] == (
            "False", "NoMatchingListenerHostname")
        listeners = {listener.name: listener.attached_routes
                     for listener in plane.compiled.gateways[0].listeners}
        assert listeners == {"very-specific": 1, "wildcard": 1}


def test_httproute_listener_section_name_limits_the_route() -> None:
    """HTTPRouteListenerHostnameMatching's sectionName: a route bound to one listener serves
    only its hostname; a sectionName that names no listener is NoMatchingParent."""
    infra = INFRA.replace("- {name: http, port: 80, protocol: HTTP}", """
  - {name: listener-1, port: 80, protocol: HTTP, hostname: bar.com}
  - {name: listener-2, port: 80, protocol: HTTP, hostname: foo.bar.com}""")
    routes = http_route("backend-v1", """
  - backendRefs: [{name: infra-backend-v1, port: 8080}]
""", extra_parent=", sectionName: listener-1") + "---" + http_route("backend-v2", """
  - backendRefs: [{name: infra-backend-v2, port: 8080}]
""", extra_parent=", sectionName: listener-2") + "---" + http_route("nowhere", """
  - backendRefs: [{name: infra-backend-v3, port: 8080}]
""", extra_parent=", sectionName: listener-3")
    with gateway_plane(routes, infra=infra) as plane:
        assert plane.backend("/", host="bar.com") == "infra-backend-v1"
        assert plane.backend("/", host="foo.bar.com") == "infra-backend-v2"
        assert plane.get("/", host="baz.bar.com")[0] == 404
        assert route_conditions(plane.compiled, "nowhere")["Accepted"] == (
            "False", "NoMatchingParent")


# --- backends -------------------------------------------------------------------------


def test_httproute_weight_splits_requests() -> None:
    """HTTPRouteWeight: 70/30/0 over many requests, within a loose tolerance."""
    rules = """
  - backendRefs:
    - {name: infra-backend-v1, port: 8080, weight: 70}
    - {name: infra-backend-v2, port: 8080, weight: 30}
    - {name: infra-backend-v3, port: 8080, weight: 0}
"""
    with gateway_plane(http_route("weighted-backends", rules)) as plane:
        seen = collections.Counter(plane.backend("/") for _ in range(300))
        assert seen["infra-backend-v3"] == 0
        assert 150 <= seen["infra-backend-v1"] <= 260, seen
        assert 40 <= seen["infra-backend-v2"] <= 150, seen


def test_httproute_invalid_nonexistent_backend_ref_answers_500() -> None:
    """HTTPRouteInvalidNonExistentBackendRef, and a missing backend's share of a split."""
    routes = http_route("invalid-nonexistent-backend-ref", """
  - matches: [{path: {type: PathPrefix, value: /only}}]
    backendRefs: [{name: nonexistent, port: 8080}]
  - backendRefs:
    - {name: infra-backend-v1, port: 8080, weight: 1}
    - {name: nonexistent, port: 8080, weight: 1}
""")
    with gateway_plane(routes) as plane:
        assert plane.get("/only")[0] == 500
        seen = collections.Counter(plane.get("/")[0] for _ in range(100))
        assert set(seen) == {200, 500}, seen
        assert route_conditions(plane.compiled, "invalid-nonexistent-backend-ref") == {
            "Accepted": ("True", "Accepted"), "ResolvedRefs": ("False", "BackendNotFound")}


def test_httproute_cross_namespace_backend_needs_reference_grant() -> None:
    """HTTPRouteInvalidCrossNamespaceBackendRef (500, RefNotPermitted), then
    HTTPRouteReferenceGrant: the same route served once a grant allows it."""
    route = http_route("reference-grant", """
  - backendRefs: [{name: web-backend, namespace: gateway-conformance-web-backend, port: 8080}]
""")
    with gateway_plane(route) as plane:
        assert plane.get("/")[0] == 500
        assert route_conditions(plane.compiled, "reference-grant")["ResolvedRefs"] == (
            "False", "RefNotPermitted")
    grant = """
apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {name: reference-grant, namespace: gateway-conformance-web-backend}
spec:
  from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: gateway-conformance-infra}]
  to: [{group: "", kind: Service, name: web-backend}]
"""
    with gateway_plane(route + "---" + grant) as plane:
        assert plane.backend("/") == "web-backend"
        assert route_conditions(plane.compiled, "reference-grant")["ResolvedRefs"] == (
            "True", "ResolvedRefs")


def test_httproute_from_another_namespace_needs_allowed_routes() -> None:
    """HTTPRouteCrossNamespace / allowedRoutes: `Same` refuses a route from another
    namespace (NotAllowedByListeners, nothing served); `All` takes it."""
    route = http_route("cross-namespace", """
  - backendRefs: [{name: web-backend, port: 8080}]
""", namespace="gateway-conformance-web-backend")
    with gateway_plane(route) as plane:
        assert plane.get("/")[0] == 404
        assert route_conditions(plane.compiled, "cross-namespace",
                                namespace="gateway-conformance-web-backend")["Accepted"] == (
            "False", "NotAllowedByListeners")
    infra = INFRA.replace("protocol: HTTP}", "protocol: HTTP, allowedRoutes: "
                          "{namespaces: {from: All}}}")
    with gateway_plane(route, infra=infra) as plane:
        assert plane.backend("/") == "web-backend"


SELECTOR_INFRA = INFRA.replace("protocol: HTTP}", """protocol: HTTP,
      allowedRoutes: {namespaces: {from: Selector, selector: %s}}}""")


def test_httproute_cross_namespace_by_namespace_selector() -> None:
    """HTTPRouteCrossNamespace, as the suite's `backend-namespaces` Gateway takes it: a
    listener selecting namespaces labelled `gateway-conformance: backend` serves a route
    from one, and refuses a route from an unlabelled namespace, even its own."""
    labelled = """
apiVersion: v1
kind: Namespace
metadata: {name: gateway-conformance-web-backend, labels: {gateway-conformance: backend}}
---
"""
    routes = labelled + http_route("cross-namespace", """
  - backendRefs: [{name: web-backend, port: 8080}]
""", namespace="gateway-conformance-web-backend", hostnames="hostnames: [cross.example.org]") \
        + "---" + http_route("same-namespace", """
  - backendRefs: [{name: infra-backend-v1, port: 8080}]
""", hostnames="hostnames: [same.example.org]")
    infra = SELECTOR_INFRA % "{matchLabels: {gateway-conformance: backend}}"
    with gateway_plane(routes, infra=infra) as plane:
        assert plane.backend("/", host="cross.example.org") == "web-backend"
        assert plane.get("/", host="same.example.org")[0] == 404
        assert route_conditions(plane.compiled, "same-namespace")["Accepted"] == (
            "False", "NotAllowedByListeners")
        assert route_conditions(plane.compiled, "cross-namespace",
                                namespace="gateway-conformance-web-backend")["Accepted"] == (
            "True", "Accepted")
    # Without the Namespace's labels (no manifest for it) the route is not selected.
    with gateway_plane(routes.replace(labelled, ""), infra=infra) as plane:
        assert plane.get("/", host="cross.example.org")[0] == 404


@pytest.mark.parametrize(("selector", "selected"), [
    # A namespace never seen still has its name label, as the API server sets it.
    ("{matchExpressions: [{key: kubernetes.io/metadata.name, operator: In, "
     "values: [gateway-conformance-web-backend]}]}", True),
    ("{matchExpressions: [{key: kubernetes.io/metadata.name, operator: NotIn, "
     "values: [gateway-conformance-web-backend]}]}", False),
    ("{matchExpressions: [{key: team, operator: Exists}]}", False),
    ("{matchExpressions: [{key: team, operator: DoesNotExist}]}", True),
    ("{}", True),  # an empty selector selects every namespace
])
def test_namespace_selector_expressions(selector: str, selected: bool) -> None:
    route = http_route("cross-namespace", """
  - backendRefs: [{name: web-backend, port: 8080}]
""", namespace="gateway-conformance-web-backend")
    compiled = compile_manifests(SELECTOR_INFRA % selector + "---" + route)
    assert route_conditions(compiled, "cross-namespace",
                            namespace="gateway-conformance-web-backend")["Accepted"][0] == (
        "True" if selected else "False")


def test_route_whose_parent_is_not_ours_gets_no_status_and_no_routes() -> None:
    other = """
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: other}
spec: {controllerName: example.com/other-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: theirs, namespace: gateway-conformance-infra}
spec:
  gatewayClassName: other
  listeners: [{name: http, port: 80, protocol: HTTP}]
"""
    route = http_route("not-ours", """
  - backendRefs: [{name: infra-backend-v1, port: 8080}]
""", parent="theirs")
    with gateway_plane(other + "---" + route) as plane:
        assert plane.get("/")[0] == 404
        assert plane.compiled.http_routes == ()
        assert [c.name for c in plane.compiled.classes] == ["certctl"]
        assert [g.key.name for g in plane.compiled.gateways] == ["same-namespace"]


# --- filters --------------------------------------------------------------------------


def test_httproute_request_header_modifier() -> None:
    """HTTPRouteRequestHeaderModifier: set replaces, add appends, remove drops."""
    rules = """
  - filters:
    - type: RequestHeaderModifier
      requestHeaderModifier:
        set: [{name: X-Header-Set, value: set-overwrites-values}]
        add: [{name: X-Header-Add, value: add-appends-values}]
        remove: [X-Header-Remove]
    backendRefs: [{name: infra-backend-v1, port: 8080}]
"""
    with gateway_plane(http_route("request-header-modifier", rules)) as plane:
        status, _, body = plane.get("/", headers={
            "X-Header-Set": "some-other-value", "X-Header-Add": "header-val-1",
            "X-Header-Remove": "val", "X-Kept": "kept"})
        assert status == 200
        headers = body["headers"]
        assert headers["x-header-set"] == "set-overwrites-values"
        assert headers["x-header-add"] == "header-val-1,add-appends-values"
        assert "x-header-remove" not in headers
        assert headers["x-kept"] == "kept"
        status, _, body = plane.get("/")
        assert body["headers"]["x-header-add"] == "add-appends-values"


def test_httproute_response_header_modifier() -> None:
    """HTTPRouteResponseHeaderModifier's set and add."""
    rules = """
  - filters:
    - type: ResponseHeaderModifier
      responseHeaderModifier:
        set: [{name: X-Header-Set, value: set-value}]
        add: [{name: X-Header-Add, value: add-value}]
    backendRefs: [{name: infra-backend-v1, port: 8080}]
"""
    with gateway_plane(http_route("response-header-modifier", rules)) as plane:
        status, headers, body = plane.get("/")
        assert status == 200 and body["backend"] == "infra-backend-v1"
        assert headers["x-header-set"] == "set-value"
        assert headers["x-header-add"] == "add-value"


def test_httproute_response_header_remove_is_refused_as_unsupported() -> None:
    rules = """
  - filters:
    - type: ResponseHeaderModifier
      responseHeaderModifier: {remove: [Server]}
    backendRefs: [{name: infra-backend-v1, port: 8080}]
"""
    with gateway_plane(http_route("response-remove", rules)) as plane:
        assert plane.get("/")[0] == 404
        assert route_conditions(plane.compiled, "response-remove")["Accepted"] == (
            "False", "UnsupportedValue")


def redirect_rules(*filters: tuple[str, str]) -> str:
    return "".join(f"""
  - matches: [{{path: {{type: PathPrefix, value: {path}}}}}]
    filters: [{{type: RequestRedirect, requestRedirect: {spec}}}]
""" for path, spec in filters)


def test_httproute_redirect_host_and_status() -> None:
    """HTTPRouteRedirectHostAndStatus."""
    rules = redirect_rules(("/hostname-redirect", "{hostname: example.org}"),
                           ("/host-and-status", "{hostname: example.org, statusCode: 301}"))
    with gateway_plane(http_route("redirect-host-and-status", rules)) as plane:
        status, headers, _ = plane.get("/hostname-redirect", host="example.com")
        assert (status, headers["location"]) == (302, "http://example.org/hostname-redirect")
        status, headers, _ = plane.get("/host-and-status", host="example.com")
        assert (status, headers["location"]) == (301, "http://example.org/host-and-status")


def test_httproute_redirect_scheme_port_and_path() -> None:
    """HTTPRouteRedirectScheme, HTTPRouteRedirectPort, HTTPRouteRedirectPath (and the
    303/307/308 codes of the extended profile)."""
    rules = redirect_rules(
        ("/scheme", "{scheme: https}"),
        ("/scheme-and-host", "{scheme: https, hostname: example.org, statusCode: 308}"),
        ("/port", "{port: 8083}"),
        ("/scheme-and-port", "{scheme: https, port: 8443, statusCode: 307}"),
        ("/original-prefix", "{path: {type: ReplacePrefixMatch, "
         "replacePrefixMatch: /replacement-prefix}}"),
        ("/full", "{path: {type: ReplaceFullPath, replaceFullPath: /full-path-replacement}, "
         "statusCode: 303}"))
    with gateway_plane(http_route("redirect", rules)) as plane:
        def location(path: str, host: str = "example.com") -> tuple[int, str]:
            status, headers, _ = plane.get(path, host=host)
            return status, headers["location"]

        assert location("/scheme") == (302, "https://example.com/scheme")
        assert location("/scheme-and-host") == (308, "https://example.org/scheme-and-host")
        assert location("/port") == (302, "http://example.com:8083/port")
        assert location("/port", host="example.com:8080") == (302, "http://example.com:8083/port")
        assert location("/scheme-and-port") == (307, "https://example.com:8443/scheme-and-port")
        assert location("/original-prefix/lemon") == (302, "http://example.com/replacement-prefix/lemon")
        assert location("/original-prefix/lemon?x=1") == (
            302, "http://example.com/replacement-prefix/lemon?x=1")
        assert location("/full/x?q") == (303, "http://example.com/full-path-replacement?q")
        assert location("/scheme", host="example.com:8080") == (302, "https://example.com/scheme")


def test_httproute_rewrite_path_and_host() -> None:
    """HTTPRouteRewritePath and HTTPRouteRewriteHost."""
    rules = """
  - matches: [{path: {type: PathPrefix, value: /prefix/one}}]
    filters:
    - {type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /one}}}
    backendRefs: [{name: infra-backend-v1, port: 8080}]
  - matches: [{path: {type: PathPrefix, value: /strip-prefix}}]
    filters:
    - {type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /}}}
    backendRefs: [{name: infra-backend-v1, port: 8080}]
  - matches: [{path: {type: PathPrefix, value: /full/one}}]
    filters:
    - {type: URLRewrite, urlRewrite: {path: {type: ReplaceFullPath, replaceFullPath: /one}}}
    backendRefs: [{name: infra-backend-v1, port: 8080}]
  - matches: [{path: {type: PathPrefix, value: /host}}]
    filters: [{type: URLRewrite, urlRewrite: {hostname: one.example.org}}]
    backendRefs: [{name: infra-backend-v2, port: 8080}]
"""
    with gateway_plane(http_route("rewrite-path", rules)) as plane:
        def seen(path: str) -> tuple[str, str]:
            status, _, body = plane.get(path, host="rewrite.example")
            assert status == 200, (path, status, body)
            return body["path"], body["headers"]["host"]

        assert seen("/prefix/one/two") == ("/one/two", "rewrite.example")
        assert seen("/prefix/one") == ("/one", "rewrite.example")
        assert seen("/strip-prefix/three") == ("/three", "rewrite.example")
        assert seen("/strip-prefix") == ("/", "rewrite.example")
        assert seen("/full/one/two?q=1") == ("/one?q=1", "rewrite.example")
        assert seen("/host/x") == ("/host/x", "one.example.org")


# --- side by side with Ingresses ----------------------------------------------------------


def test_ingresses_and_httproutes_share_one_route_table() -> None:
    ingress = resources.Ingress(
        namespace=NS, name="legacy",
        rules=(resources.IngressRule(host="legacy.example", paths=(resources.IngressPath(
            path="/", path_type="Prefix", backend=resources.ServiceBackend(
                name="infra-backend-v3", port_number=8080)),)),))
    route = http_route("modern", """
  - backendRefs: [{name: infra-backend-v1, port: 8080}]
""", hostnames="hostnames: [modern.example]")
    with gateway_plane(route, ingresses=[ingress]) as plane:
        assert plane.backend("/", host="legacy.example") == "infra-backend-v3"
        assert plane.backend("/", host="modern.example") == "infra-backend-v1"
        assert plane.get("/", host="other.example")[0] == 404


# --- listeners and statuses ---------------------------------------------------------------


def listener_conditions(compiled: gateway_routes.Compiled) -> dict[str, dict[str, tuple[str, str]]]:
    (gateway,) = compiled.gateways
    return {listener.name: {c.type: (c.status, c.reason) for c in listener.conditions}
            for listener in gateway.listeners}


def tls_gateway(listeners: str, namespace: str = NS) -> str:
    return f"""
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{name: certctl}}
spec: {{controllerName: certctl.io/gateway-controller}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: gateway, namespace: {namespace}}}
spec:
  gatewayClassName: certctl
  listeners:
{listeners}
"""


def test_certificate_ref_in_another_namespace_needs_reference_grant() -> None:
    """GatewaySecretReferenceGrant / GatewayInvalidTLSConfiguration: RefNotPermitted
    without a grant (nothing to serve), ResolvedRefs once granted."""
    listeners = """
  - name: https
    port: 443
    protocol: HTTPS
    hostname: secure.example
    tls: {certificateRefs: [{name: certificate, namespace: gateway-conformance-web-backend}]}
"""
    secrets = frozenset({("gateway-conformance-web-backend", "certificate")})
    compiled = compile_manifests(tls_gateway(listeners), secrets=secrets)
    https = listener_conditions(compiled)["https"]
    assert https["ResolvedRefs"] == ("False", "RefNotPermitted")
    assert https["Programmed"] == ("True", "Programmed")
    assert compiled.secrets == frozenset()
    grant = """
apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {name: secrets, namespace: gateway-conformance-web-backend}
spec:
  from: [{group: gateway.networking.k8s.io, kind: Gateway, namespace: gateway-conformance-infra}]
  to: [{group: "", kind: Secret}]
"""
    compiled = compile_manifests(tls_gateway(listeners) + "---" + grant, secrets=secrets)
    assert listener_conditions(compiled)["https"]["ResolvedRefs"] == ("True", "ResolvedRefs")
    assert compiled.secrets == frozenset({resources.ObjectKey(
        kind="Secret", namespace="gateway-conformance-web-backend", name="certificate")})


def test_missing_certificate_secret_is_an_invalid_certificate_ref() -> None:
    listeners = """
  - {name: https, port: 443, protocol: HTTPS, hostname: a.example,
     tls: {certificateRefs: [{name: missing}]}}
"""
    conditions = listener_conditions(compile_manifests(tls_gateway(listeners)))["https"]
    assert conditions["ResolvedRefs"] == ("False", "InvalidCertificateRef")


def test_conflicting_listeners_are_not_programmed() -> None:
    """Listeners of one port: another protocol is a ProtocolConflict, the same hostname a
    HostnameConflict; neither takes routes, the rest of the Gateway is served."""
    listeners = """
  - {name: http-a, port: 80, protocol: HTTP, hostname: a.example}
  - {name: http-a-again, port: 80, protocol: HTTP, hostname: a.example}
  - {name: http-b, port: 80, protocol: HTTP, hostname: b.example}
  - {name: mixed, port: 8443, protocol: HTTP}
  - {name: mixed-tls, port: 8443, protocol: HTTPS, tls: {certificateRefs: [{name: s}]}}
  - {name: tcp, port: 9000, protocol: TCP}
"""
    route = f"""
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: everywhere, namespace: {NS}}}
spec:
  parentRefs: [{{name: gateway}}]
  rules: [{{backendRefs: [{{name: infra-backend-v1, port: 8080}}]}}]
"""
    compiled = compile_manifests(tls_gateway(listeners) + "---" + route)
    found = listener_conditions(compiled)
    assert found["http-a"]["Conflicted"] == ("True", "HostnameConflict")
    assert found["http-a-again"]["Conflicted"] == ("True", "HostnameConflict")
    assert found["http-a"]["Programmed"] == ("False", "Invalid")
    assert found["http-b"]["Conflicted"] == ("False", "NoConflicts")
    assert found["http-b"]["Programmed"] == ("True", "Programmed")
    assert found["mixed"]["Conflicted"] == ("True", "ProtocolConflict")
    assert found["mixed-tls"]["Conflicted"] == ("True", "ProtocolConflict")
    assert found["tcp"]["Accepted"] == ("False", "UnsupportedProtocol")
    hosts = {route.host for route in compiled.routes.routes}
    assert hosts == {"b.example"}
    (gateway,) = compiled.gateways
    assert {c.type: c.status for c in gateway.conditions} == {"Accepted": "True",
                                                              "Programmed": "True"}
    attached = {listener.name: listener.attached_routes for listener in gateway.listeners}
    assert attached["http-b"] == 1 and attached["http-a"] == 0


def test_gateway_without_valid_listeners_is_not_accepted() -> None:
    compiled = compile_manifests(tls_gateway("  - {name: udp, port: 53, protocol: UDP}"))
    (gateway,) = compiled.gateways
    assert {c.type: (c.status, c.reason) for c in gateway.conditions} == {
        "Accepted": ("False", "ListenersNotValid"), "Programmed": ("False", "Invalid")}


@pytest.mark.parametrize(("snippet", "field"), [
    ("spec: {listeners: [{name: a, port: 80, protocol: HTTP}]}", "spec.gatewayClassName"),
    ("spec: {gatewayClassName: c, listeners: [{name: a, port: 0, protocol: HTTP}]}",
     "spec.listeners[0].port"),
    ("spec: {gatewayClassName: c, listeners: [{name: a, port: 80, protocol: HTTP, "
     "hostname: 'bad host'}]}", "spec.listeners[0].hostname"),
    ("spec: {gatewayClassName: c, listeners: [{name: a, port: 80, protocol: HTTP}, "
     "{name: a, port: 81, protocol: HTTP}]}", "spec.listeners[1].name"),
    ("spec: {gatewayClassName: c, listeners: [{name: a, port: 80, protocol: HTTP, "
     "allowedRoutes: {namespaces: {from: Selector}}}]}",
     "spec.listeners[0].allowedRoutes.namespaces.selector"),
    ("spec: {gatewayClassName: c, listeners: [{name: a, port: 80, protocol: HTTP, "
     "allowedRoutes: {namespaces: {from: Selector, selector: {matchExpressions: "
     "[{key: a, operator: Has}]}}}}]}",
     "spec.listeners[0].allowedRoutes.namespaces.selector.matchExpressions[0].operator"),
    ("spec: {gatewayClassName: c, listeners: [{name: a, port: 80, protocol: HTTP, "
     "allowedRoutes: {namespaces: {from: Selector, selector: {matchExpressions: "
     "[{key: a, operator: In}]}}}}]}",
     "spec.listeners[0].allowedRoutes.namespaces.selector.matchExpressions[0].values"),
])
def test_bad_gateway_names_the_field(snippet: str, field: str) -> None:
    obj = yaml.safe_load("apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\n"
                         "metadata: {name: g, namespace: n}\n" + snippet)
    with pytest.raises(InvalidObject) as raised:
        gateway_api.parse_gateway(obj, source="site/gateway.yaml")
    assert raised.value.field == field
    assert str(raised.value).startswith("site/gateway.yaml: Gateway n/g: " + field)


@pytest.mark.parametrize(("snippet", "field"), [
    ("rules: [{matches: [{path: {type: Prefix, value: /}}]}]",
     "spec.rules[0].matches[0].path.type"),
    ("rules: [{filters: [{type: RequestRedirect, requestRedirect: {statusCode: 305}}]}]",
     "spec.rules[0].filters[0].requestRedirect.statusCode"),
    ("rules: [{backendRefs: [{port: 80}]}]", "spec.rules[0].backendRefs[0].name"),
    ("parentRefs: [{sectionName: x}]", "spec.parentRefs[0].name"),
])
def test_bad_http_route_names_the_field(snippet: str, field: str) -> None:
    obj = yaml.safe_load("apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n"
                         "metadata: {name: r, namespace: n}\nspec: {" + snippet + "}")
    with pytest.raises(InvalidObject) as raised:
        gateway_api.parse_http_route(obj)
    assert raised.value.field == field


# --- HTTPS listeners, HTTP/1.1 and HTTP/2 -------------------------------------------------


def test_https_listener_routes_serve_tls_only_and_filters_apply_over_http2() -> None:
    """A route attached to an HTTPS listener only is not served on plain HTTP; its
    matches and filters apply to HTTP/2 streams as to HTTP/1.1 requests (one decision
    for both, in dispatch)."""
    infra = INFRA.replace("- {name: http, port: 80, protocol: HTTP}", """
  - name: https
    port: 443
    protocol: HTTPS
    hostname: secure.example
    tls: {certificateRefs: [{name: secure}]}""")
    rules = """
  - matches: [{path: {type: PathPrefix, value: /api}, headers: [{name: x-tenant, value: blue}]}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {set: [{name: X-Route, value: api}], remove: [X-Secret]}
    - {type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /v1}}}
    backendRefs: [{name: infra-backend-v2, port: 8080}]
  - backendRefs: [{name: infra-backend-v1, port: 8080}]
"""
    with gateway_plane(http_route("secure", rules), infra=infra,
                       tls_hosts=("secure.example",)) as plane:
        # Plain HTTP: not this route; as for any host without an HTTP route whose
        # certificate the data plane holds, the answer is a redirect to HTTPS.
        status, headers, _ = plane.get("/api", host="secure.example", headers={
            "X-Tenant": "blue"})
        assert status == 308 and headers["location"].startswith("https://secure.example:")
        client = H2Client(plane, "secure.example")  # type: ignore[arg-type]
        try:
            assert client.alpn == "h2"
            first, second = client.wait(
                client.request("GET", "/api/items?x=1", headers=(
                    ("x-tenant", "blue"), ("x-secret", "s"), ("x-route", "client"))),
                client.request("GET", "/api/items", headers=(("x-tenant", "red"),)))
        finally:
            client.close()
        assert first["status"] == 200
        echoed = json.loads(first["body"])
        assert (echoed["backend"], echoed["path"]) == ("infra-backend-v2", "/v1/items?x=1")
        assert echoed["headers"]["x-route"] == "api"
        assert "x-secret" not in echoed["headers"]
        assert json.loads(second["body"])["backend"] == "infra-backend-v1"


def test_httproute_invalid_backend_ref_unknown_kind() -> None:
    """HTTPRouteInvalidBackendRefUnknownKind: 500, ResolvedRefs False InvalidKind."""
    routes = http_route("invalid-backend-ref-unknown-kind", """
  - backendRefs: [{group: unknown.example.com, kind: Unknown, name: infra-backend-v1, port: 8080}]
""")
    with gateway_plane(routes) as plane:
        assert plane.get("/")[0] == 500
        assert route_conditions(plane.compiled, "invalid-backend-ref-unknown-kind") == {
            "Accepted": ("True", "Accepted"), "ResolvedRefs": ("False", "InvalidKind")}


# --- ListenerSets ---------------------------------------------------------------------


def listener_set(name: str, listeners: str, *, namespace: str = NS,
                 parent: str = "same-namespace") -> str:
    return f"""
apiVersion: gateway.networking.k8s.io/v1
kind: ListenerSet
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  parentRef: {{name: {parent}, namespace: {NS}}}
  listeners:
{listeners}
---
"""


ALLOWING_INFRA = INFRA.replace("  gatewayClassName: certctl\n", """  gatewayClassName: certctl
  allowedListeners: {namespaces: {from: %s}}
""")


def set_status(compiled: gateway_routes.Compiled, name: str
               ) -> tuple[dict[str, tuple[str, str]], dict[str, dict[str, tuple[str, str]]]]:
    """A ListenerSet's conditions and its listeners' conditions, by type."""
    (found,) = [s for s in compiled.listener_sets if s.key.name == name]
    return ({c.type: (c.status, c.reason) for c in found.conditions},
            {entry.name: {c.type: (c.status, c.reason) for c in entry.conditions}
             for entry in found.listeners})


def test_listener_set_listeners_serve_routes_that_name_the_listener_set() -> None:
    """A ListenerSet the Gateway allows (Same) adds a listener for its hostname; a route
    naming the ListenerSet (and the listener by sectionName) is served there and counted on
    it; the Gateway counts the ListenerSet."""
    routes = listener_set("team", """
  - {name: team-http, port: 80, protocol: HTTP, hostname: team.example.org}
""") + http_route("team-route", """
  - backendRefs: [{name: infra-backend-v2, port: 8080}]
""", parent="team", extra_parent=", kind: ListenerSet, sectionName: team-http")
    with gateway_plane(routes, infra=ALLOWING_INFRA % "Same") as plane:
        assert plane.backend("/", host="team.example.org") == "infra-backend-v2"
        # The ListenerSet's listener admits its hostname only.
        assert plane.get("/", host="other.example.org")[0] == 404
        conditions, listeners = set_status(plane.compiled, "team")
        assert conditions == {"Accepted": ("True", "Accepted"),
                              "Programmed": ("True", "Programmed")}
        assert listeners["team-http"]["Programmed"] == ("True", "Programmed")
        (found,) = plane.compiled.listener_sets
        assert [entry.attached_routes for entry in found.listeners] == [1]
        (gateway,) = plane.compiled.gateways
        assert gateway.attached_listener_sets == 1
        assert [entry.attached_routes for entry in gateway.listeners] == [0]
        assert route_conditions(plane.compiled, "team-route")["Accepted"] == ("True",
                                                                             "Accepted")


@pytest.mark.parametrize(("allowed", "labels", "accepted"), [
    (None, "", False),  # allowedListeners absent: from None
    ("None", "", False),
    ("Same", "", False),  # the ListenerSet is in another namespace
    ("All", "", True),
    ("{from: Selector, selector: {matchLabels: {team: web}}}".replace("{from: ", ""), "web",
     True),
    ("{from: Selector, selector: {matchLabels: {team: web}}}".replace("{from: ", ""), "ops",
     False),
])
def test_gateway_allowed_listeners_decide_which_listener_sets_attach(
        allowed: str | None, labels: str, accepted: bool) -> None:
    namespace = "" if not labels else f"""
apiVersion: v1
kind: Namespace
metadata: {{name: gateway-conformance-web-backend, labels: {{team: {labels}}}}}
---
"""
    if allowed is not None and allowed.startswith("Selector"):
        infra = INFRA.replace("  gatewayClassName: certctl\n", "  gatewayClassName: certctl\n"
                              "  allowedListeners: {namespaces: {from: " + allowed + "}\n")
    elif allowed is not None:
        infra = ALLOWING_INFRA % allowed
    else:
        infra = INFRA
    routes = namespace + listener_set("web", """
  - {name: web-http, port: 80, protocol: HTTP, hostname: web.example.org}
""", namespace="gateway-conformance-web-backend") + http_route("web", """
  - backendRefs: [{name: web-backend, port: 8080}]
""", namespace="gateway-conformance-web-backend", parent="web",
        extra_parent=", kind: ListenerSet").replace(
        f"namespace: {NS}, kind: ListenerSet", "namespace: gateway-conformance-web-backend, "
        "kind: ListenerSet")
    with gateway_plane(routes, infra=infra) as plane:
        conditions, _ = set_status(plane.compiled, "web")
        (gateway,) = plane.compiled.gateways
        if accepted:
            assert conditions["Accepted"] == ("True", "Accepted")
            assert plane.backend("/", host="web.example.org") == "web-backend"
            assert gateway.attached_listener_sets == 1
        else:
            assert conditions == {"Accepted": ("False", "NotAllowed"),
                                  "Programmed": ("False", "NotAllowed")}
            assert plane.get("/", host="web.example.org")[0] == 404
            assert route_conditions(plane.compiled, "web",
                                    namespace="gateway-conformance-web-backend")[
                "Accepted"] == ("False", "NoMatchingParent")
            assert gateway.attached_listener_sets == 0


def test_listener_set_listener_conflicting_with_the_gateways_is_the_one_conflicted() -> None:
    """The Gateway's listeners come first: a ListenerSet's listener on the Gateway's port and
    hostname is conflicted (and takes no routes), the Gateway's is not."""
    infra = (ALLOWING_INFRA % "Same").replace(
        "- {name: http, port: 80, protocol: HTTP}",
        "- {name: http, port: 80, protocol: HTTP, hostname: shared.example.org}")
    routes = listener_set("twin", """
  - {name: twin, port: 80, protocol: HTTP, hostname: shared.example.org}
  - {name: own, port: 80, protocol: HTTP, hostname: own.example.org}
""") + listener_set("proto", """
  - {name: tls, port: 80, protocol: HTTPS, hostname: other.example.org,
     tls: {certificateRefs: [{name: other}]}}
""")
    compiled = compile_manifests(infra + "---\n" + routes)
    conditions, listeners = set_status(compiled, "twin")
    assert listeners["twin"]["Conflicted"] == ("True", "HostnameConflict")
    assert listeners["twin"]["Programmed"] == ("False", "Invalid")
    assert listeners["own"]["Conflicted"] == ("False", "NoConflicts")
    assert conditions["Accepted"] == ("True", "ListenersNotValid")  # one listener is valid
    conditions, listeners = set_status(compiled, "proto")
    assert listeners["tls"]["Conflicted"] == ("True", "ProtocolConflict")
    assert conditions["Accepted"] == ("False", "ListenersNotValid")
    assert listener_conditions(compiled)["http"]["Conflicted"] == ("False", "NoConflicts")


def test_listener_set_secret_in_another_namespace_needs_its_own_reference_grant() -> None:
    """A Gateway's ReferenceGrant does not extend to its ListenerSets."""
    grant = """
apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {name: grant, namespace: certs}
spec:
  from: [{group: gateway.networking.k8s.io, kind: %s, namespace: gateway-conformance-infra}]
  to: [{group: "", kind: Secret}]
---
"""
    listeners = listener_set("tls", """
  - {name: https, port: 443, protocol: HTTPS, hostname: tls.example.org,
     tls: {certificateRefs: [{name: shared, namespace: certs}]}}
""")
    secrets = frozenset({("certs", "shared")})
    for kind, reason in (("Gateway", "RefNotPermitted"), ("ListenerSet", "ResolvedRefs")):
        compiled = compile_manifests(ALLOWING_INFRA % "Same" + "---\n" + grant % kind
                                     + listeners, secrets=secrets)
        _, found = set_status(compiled, "tls")
        assert found["https"]["ResolvedRefs"][1] == reason
        assert (ObjectKey(kind="Secret", namespace="certs", name="shared")
                in compiled.secrets) == (reason == "ResolvedRefs")


def test_bad_listener_set_names_the_field() -> None:
    obj = yaml.safe_load("apiVersion: gateway.networking.k8s.io/v1\nkind: ListenerSet\n"
                         "metadata: {name: s, namespace: n}\n"
                         "spec: {listeners: [{name: a, port: 80, protocol: HTTP}]}")
    with pytest.raises(InvalidObject) as raised:
        gateway_api.parse_listener_set(obj, source="site/sets.yaml")
    assert raised.value.field == "spec.parentRef"
