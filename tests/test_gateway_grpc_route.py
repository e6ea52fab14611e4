"""GRPCRoutes through the data plane: a real grpcio client over TLS (HTTPS listener),
real grpcio servers behind (h2c, as GEP-1911 has a GRPCRoute's backends speak).

Each backend answers every method of every service with JSON naming itself, the
method path it got and the x-route metadata, so a call shows which rule took it.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import json
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc  # type: ignore[import-untyped]  # grpcio ships no stubs
import pytest

from certctl.api import gateway as gateway_api
from certctl.api import resources
from certctl.api.errors import InvalidObject
from certctl.dataplane import certstore, server
from certctl.routes import gateway as gateway_routes
from tests.pebble import PebbleServer
from tests.serving import eventually, service_with_endpoints, serving, write_yaml
from tests.test_gateway_backend_protocol import service
from tests.test_gateway_routing import documents, started_plane, tls_gateway
from tests.testca import TestCA

NS = "grpc"
HOST = "grpc.example"
GATEWAY = tls_gateway("""\
  - name: https
    port: 443
    protocol: HTTPS
    hostname: "*.example"
    tls: {certificateRefs: [{name: grpc-example}]}
  - {name: http, port: 80, protocol: HTTP}""", namespace=NS)
PARSERS = {"GatewayClass": gateway_api.parse_gateway_class,
           "Gateway": gateway_api.parse_gateway, "HTTPRoute": gateway_api.parse_http_route,
           "GRPCRoute": gateway_api.parse_grpc_route}
# Service name -> the appProtocol of its port 50051.
APP_PROTOCOLS: dict[str, str | None] = {
    "v1": None, "v2": None, "v3": "kubernetes.io/h2c", "ws": "kubernetes.io/ws"}


SERVICES = [service(name, app_protocol, namespace=NS, port={"name": "grpc", "port": 50051})
            for name, app_protocol in APP_PROTOCOLS.items()]


def compile_manifests(text: str, *, gateway: str = GATEWAY) -> gateway_routes.Compiled:
    found: dict[str, list[Any]] = collections.defaultdict(list)
    for created, doc in enumerate(documents(gateway + "\n---\n" + text)):
        doc["metadata"].setdefault("creationTimestamp", f"2026-01-01T00:00:{created:02d}Z")
        found[doc["kind"]].append(PARSERS[doc["kind"]](doc))
    return gateway_routes.compile_gateways(
        classes=found["GatewayClass"], gateways=found["Gateway"],
        http_routes=found["HTTPRoute"], grpc_routes=found["GRPCRoute"], grants=[],
        services=SERVICES, secret_exists=lambda namespace, name: name == "grpc-example")


def grpc_route(name: str, rules: str, *, hostnames: str = f"[{HOST}]") -> str:
    return f"""
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {{name: {name}, namespace: {NS}}}
spec:
  parentRefs: [{{name: gateway}}]
  hostnames: {hostnames}
  rules:
{rules}
"""


def conditions(statuses: tuple[gateway_routes.RouteStatus, ...],
               name: str) -> dict[str, tuple[str, str, str]]:
    (status,) = [found for found in statuses if found.key.name == name]
    (parent,) = status.parents
    return {c.type: (c.status, c.reason, c.message) for c in parent.conditions}


class NamedBackend(grpc.GenericRpcHandler):  # type: ignore[misc]  # grpcio is untyped
    """A gRPC server answering any unary call with JSON of its name, the method path
    and the x-route metadata it got; the h2c backend the GRPCRoute's rules point at."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        self.server.add_generic_rpc_handlers((self,))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        def answer(request: bytes, context: grpc.ServicerContext) -> bytes:
            metadata = dict(context.invocation_metadata())
            return json.dumps({"backend": self.name, "method": details.method,
                               "x-route": metadata.get("x-route")}).encode()

        return grpc.unary_unary_rpc_method_handler(answer)


class Plane:
    def __init__(self, plane: server.DataPlane, compiled: gateway_routes.Compiled,
                 ca: TestCA) -> None:
        self.plane = plane
        self.compiled = compiled
        self.ca = ca

    def call(self, path: str, *, metadata: tuple[tuple[str, str], ...] = ()
             ) -> tuple[dict[str, Any], dict[str, str]]:
        """One unary call over TLS to HOST: the backend's answer, the response metadata."""
        credentials = grpc.ssl_channel_credentials(root_certificates=self.ca.pem)
        with grpc.secure_channel(f"127.0.0.1:{self.plane.https_port}", credentials, options=[
            ("grpc.ssl_target_name_override", HOST), ("grpc.default_authority", HOST),
        ]) as opened:
            answer, call = opened.unary_unary(path).with_call(b"", metadata=metadata,
                                                              timeout=10)
        return json.loads(answer), dict(call.initial_metadata())


@contextlib.contextmanager
def grpc_plane(routes: str) -> Iterator[Plane]:
    ca = TestCA()
    certificates = certstore.CertificateIndex()
    issued = ca.issue(HOST)
    certificates.set_certificate(source=resources.ObjectKey(
        kind="Secret", namespace=NS, name="grpc-example"), chain_pem=issued.chain_pem,
        key_pem=issued.key_pem)
    with contextlib.ExitStack() as stack:
        slices = []
        for name in APP_PROTOCOLS:
            backend = NamedBackend(name)
            stack.callback(backend.server.stop, None)
            slices.append(resources.EndpointSlice(
                namespace=NS, name=f"{name}-1", service_name=name,
                ports=(resources.EndpointPort(port=backend.port, name="grpc"),),
                endpoints=(resources.Endpoint(addresses=("127.0.0.1",)),)))
        compiled = compile_manifests(routes)
        with started_plane(routes=compiled.routes, services=SERVICES, endpoint_slices=slices,
                           certificates=certificates) as plane:
            yield Plane(plane, compiled, ca)


MATCHING_RULES = r"""
  - matches:
    - method: {service: pkg.Greeter, method: Hello}
      headers: [{name: version, value: two}]
    filters:
    - {type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-route, value: canary}]}}
    - type: ResponseHeaderModifier
      responseHeaderModifier: {add: [{name: x-served-by, value: canary}]}
    backendRefs: [{name: v2, port: 50051}]
  - matches: [{method: {service: pkg.Greeter, method: Hello}}]
    backendRefs: [{name: v1, port: 50051}]
  - matches: [{method: {service: pkg.Greeter}}]
    backendRefs: [{name: v2, port: 50051}]
  - matches: [{method: {method: Status}}]
    backendRefs: [{name: v3, port: 50051}]
  - matches: [{method: {type: RegularExpression, service: 'pkg\.v[0-9]+\.Store', method: 'Get.*'}}]
    backendRefs: [{name: v3, port: 50051}]
  - backendRefs: [{name: v1, port: 50051}]
"""


def test_grpc_route_method_and_header_matches_pick_the_backend_over_tls() -> None:
    with grpc_plane(grpc_route("matching", MATCHING_RULES)) as plane:
        expected = {
            "/pkg.Greeter/Hello": "v1",
            "/pkg.Greeter/Bye": "v2",  # service only: any of its methods
            "/health.Check/Status": "v3",  # method only: of any service
            "/pkg.v2.Store/GetItem": "v3",  # regular expressions
            "/pkg.v2.Store/PutItem": "v1",  # the rule without matches takes the rest
            "/other.Svc/Thing": "v1",
        }
        for path, backend in expected.items():
            answer, metadata = plane.call(path)
            assert (answer["backend"], answer["method"]) == (backend, path)
            assert answer["x-route"] is None
            assert "x-served-by" not in metadata
        answer, metadata = plane.call("/pkg.Greeter/Hello", metadata=(("version", "two"),))
        assert answer == {"backend": "v2", "method": "/pkg.Greeter/Hello", "x-route": "canary"}
        assert metadata["x-served-by"] == "canary"
        status = conditions(plane.compiled.grpc_routes, "matching")
        assert {kind: found[:2] for kind, found in status.items()} == {
            "Accepted": ("True", "Accepted"), "ResolvedRefs": ("True", "ResolvedRefs")}
        assert plane.compiled.http_routes == ()
        (gateway,) = plane.compiled.gateways
        attached = {listener.name: listener.attached_routes for listener in gateway.listeners}
        assert attached == {"https": 1, "http": 1}
        assert {k.kind for k in gateway.listeners[0].supported_kinds} == {
            "HTTPRoute", "GRPCRoute"}


def test_grpc_route_backend_with_an_http11_app_protocol_is_unsupported() -> None:
    rules = """
  - matches: [{method: {service: pkg.Greeter}}]
    backendRefs: [{name: ws, port: 50051}]
  - backendRefs: [{name: v1, port: 50051}]
"""
    with grpc_plane(grpc_route("websocket-backend", rules)) as plane:
        with pytest.raises(grpc.RpcError) as refused:
            plane.call("/pkg.Greeter/Hello")
        # The data plane's 500 for the invalid backend, which gRPC's HTTP status mapping
        # reads as UNKNOWN.
        assert refused.value.code() == grpc.StatusCode.UNKNOWN
        assert "Internal Server Error" in refused.value.details()
        assert plane.call("/other.Svc/Thing")[0]["backend"] == "v1"
        status = conditions(plane.compiled.grpc_routes, "websocket-backend")
        assert status["Accepted"][:2] == ("True", "Accepted")
        assert status["ResolvedRefs"] == (
            "False", "UnsupportedProtocol",
            f"spec.rules[0]: Service {NS}/ws port 50051: appProtocol kubernetes.io/ws is not "
            "supported by certctl for GRPCRoutes (it speaks kubernetes.io/h2c)")


def test_http_route_and_grpc_route_must_not_share_a_hostname_on_a_listener() -> None:
    """GEP-1016: the newer of an HTTPRoute and a GRPCRoute whose hostnames meet on one
    listener is not Accepted; another hostname on the same listener is."""
    http_route = f"""
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: web, namespace: {NS}}}
spec:
  parentRefs: [{{name: gateway, sectionName: https}}]
  hostnames: ["*.example"]
  rules: [{{backendRefs: [{{name: v1, port: 50051}}]}}]
"""
    rules = "  - backendRefs: [{name: v1, port: 50051}]\n"
    compiled = compile_manifests(http_route + "---\n" + grpc_route(
        "clash", rules, hostnames=f"[{HOST}]").replace(
        "[{name: gateway}]", "[{name: gateway, sectionName: https}]") + "---\n" + grpc_route(
        "elsewhere", rules, hostnames="[grpc.other]").replace(
        "[{name: gateway}]", "[{name: gateway, sectionName: http}]"))
    assert conditions(compiled.http_routes, "web")["Accepted"][:2] == ("True", "Accepted")
    clash = conditions(compiled.grpc_routes, "clash")["Accepted"]
    assert clash == ("False", "NotAllowedByListeners",
                     "listener https already serves HTTPRoutes for grpc.example: an HTTPRoute "
                     "and a GRPCRoute may not share a hostname on one listener (GEP-1016)")
    assert conditions(compiled.grpc_routes, "elsewhere")["Accepted"][:2] == (
        "True", "Accepted")
    served = {(route.source.kind, route.host) for route in compiled.routes.routes}
    assert served == {("HTTPRoute", "*.example"), ("GRPCRoute", "grpc.other")}


def test_a_grpc_route_not_accepted_keeps_no_hostname_from_http_routes() -> None:
    rules = """
  - matches: [{headers: [{type: RegularExpression, name: version, value: 'v[0-9]+'}]}]
    backendRefs: [{name: v1, port: 50051}]
"""
    http_route = f"""
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: web, namespace: {NS}}}
spec:
  parentRefs: [{{name: gateway}}]
  hostnames: [{HOST}]
  rules: [{{backendRefs: [{{name: v1, port: 50051}}]}}]
"""
    compiled = compile_manifests(grpc_route("older", rules) + "---\n" + http_route)
    assert conditions(compiled.grpc_routes, "older")["Accepted"] == (
        "False", "UnsupportedValue",
        "spec.rules[0]: RegularExpression header matches are not supported by certctl")
    assert conditions(compiled.http_routes, "web")["Accepted"][:2] == ("True", "Accepted")


def test_listener_taking_only_http_routes_refuses_grpc_routes() -> None:
    gateway = GATEWAY.replace("  - {name: http, port: 80, protocol: HTTP}\n", "").replace(
        'hostname: "*.example"',
        'hostname: "*.example"\n    allowedRoutes: {kinds: [{kind: HTTPRoute}]}')
    rules = "  - backendRefs: [{name: v1, port: 50051}]\n"
    compiled = compile_manifests(grpc_route("refused", rules), gateway=gateway)
    assert conditions(compiled.grpc_routes, "refused")["Accepted"] == (
        "False", "NotAllowedByListeners",
        f"no ready listener allows GRPCRoutes from namespace {NS}")
    assert compiled.routes.routes == ()
    (gateway_status,) = compiled.gateways
    assert [k.kind for k in gateway_status.listeners[0].supported_kinds] == ["HTTPRoute"]


@pytest.mark.parametrize(("method", "field", "says"), [
    ("{type: Exact}", "spec.rules[0].matches[0].method",
     "one or both of service and method must be set"),
    ("{service: 'pkg/Greeter'}", "spec.rules[0].matches[0].method.service",
     "is not a gRPC service name"),
    ("{method: 'Say-Hello'}", "spec.rules[0].matches[0].method.method",
     "is not a gRPC method name"),
    ("{type: RegularExpression, method: 'Get('}", "spec.rules[0].matches[0].method.method",
     "is not a regular expression"),
    ("{type: Prefix, method: Get}", "spec.rules[0].matches[0].method.type", ""),
])
def test_bad_grpc_route_names_the_route_and_field(method: str, field: str, says: str) -> None:
    rules = f"  - matches: [{{method: {method}}}]\n    backendRefs: [{{name: v1, port: 50051}}]\n"
    (doc,) = documents(grpc_route("bad", rules))
    with pytest.raises(InvalidObject) as raised:
        gateway_api.parse_grpc_route(doc)
    message = str(raised.value)
    assert f"GRPCRoute {NS}/bad" in message
    assert field in message
    assert says in message


def test_grpc_route_in_serve_gets_its_status_and_is_served(
    tmp_path: Path, pebble: PebbleServer
) -> None:
    """Through `certctl serve`: the data plane feed compiles GRPCRoutes from manifests."""
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    ca = TestCA()
    issued = ca.issue("grpc.example.test")
    secret = {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
              "metadata": {"name": "grpc-tls", "namespace": "default"},
              "data": {"tls.crt": base64.b64encode(issued.chain_pem).decode(),
                       "tls.key": base64.b64encode(issued.key_pem).decode()}}
    objects: list[dict[str, Any]] = [
        {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
         "metadata": {"name": "certctl"},
         "spec": {"controllerName": "certctl.io/gateway-controller"}},
        {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
         "metadata": {"name": "edge", "namespace": "default"},
         "spec": {"gatewayClassName": "certctl", "listeners": [
             {"name": "https", "port": 443, "protocol": "HTTPS", "hostname": "grpc.example.test",
              "tls": {"certificateRefs": [{"name": "grpc-tls"}]}}]}},
        {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GRPCRoute",
         "metadata": {"name": "greeter", "namespace": "default"},
         "spec": {"parentRefs": [{"name": "edge"}], "rules": [
             {"matches": [{"method": {"service": "pkg.Greeter"}}],
              "backendRefs": [{"name": "greeter", "port": 80}]}]}},
        secret,
    ]
    backend = NamedBackend("greeter")
    try:
        write_yaml(manifests / "all.yaml", *objects,
                   *service_with_endpoints("greeter", port=backend.port))
        with serving(manifests=manifests, state_dir=tmp_path / "state", pebble=pebble) as run:
            def accepted() -> Any:
                obj = run.store.get(kind="GRPCRoute", namespace="default", name="greeter")
                parents = ((obj or {}).get("status") or {}).get("parents") or []
                return parents[0]["conditions"] if parents else None
            conditions = eventually(accepted, timeout=10, what="GRPCRoute status")
            assert {c["type"]: c["status"] for c in conditions} == {
                "Accepted": "True", "ResolvedRefs": "True"}
            credentials = grpc.ssl_channel_credentials(root_certificates=ca.pem)
            with grpc.secure_channel(f"127.0.0.1:{run.https_port}", credentials, options=[
                ("grpc.ssl_target_name_override", "grpc.example.test"),
                ("grpc.default_authority", "grpc.example.test")]) as opened:
                answer = opened.unary_unary("/pkg.Greeter/Hello")(b"", timeout=10)
            assert json.loads(answer)["backend"] == "greeter"
    finally:
        backend.server.stop(None)
