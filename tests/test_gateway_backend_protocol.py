"""HTTPRoute backends spoken to in the protocol their Service port's appProtocol names
(GEP-1911), through the data plane on real sockets.

Backends: the h2c server of test_grpc_backends (plain HTTP/2 with prior knowledge;
it answers JSON of the request it got), the WebSocket echo server of
test_dataplane_proxy, the TLS echo server of test_dataplane_annotations and the
HTTP/1.1 JSON echo server of test_dataplane. The Gateway API objects are parsed and
compiled as the data plane feed does (`tests.test_gateway_routing.compile_manifests`).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from http.client import HTTPConnection
from typing import Any

import websocket

from certctl.api import parsing, resources
from certctl.dataplane import server
from certctl.routes import gateway as gateway_routes
from tests.test_dataplane import EchoServer
from tests.test_dataplane_annotations import TlsEchoServer
from tests.test_dataplane_proxy import RawServer, websocket_echo
from tests.test_gateway_routing import (
    INFRA,
    NS,
    compile_manifests,
    http_route,
    route_conditions,
    started_plane,
)
from tests.test_grpc_backends import H2cBackend

# Service name -> the appProtocol of its port 8080 (None: not set).
APP_PROTOCOLS: dict[str, str | None] = {
    "plain": None,
    "h2c": "kubernetes.io/h2c",
    "ws": "kubernetes.io/ws",
    "wss": "kubernetes.io/wss",
    "iana-http": "http",
    "custom": "example.com/custom",
}


def service(name: str, app_protocol: str | None, *, namespace: str = NS,
            port: dict[str, Any] | None = None) -> resources.Service:
    """The Service as the API server would hand it over, parsed as certctl reads it: one
    port (`port`, by default web 8080 -> 3000) with `app_protocol`."""
    spec_port: dict[str, Any] = dict(port or {"name": "web", "port": 8080, "targetPort": 3000})
    if app_protocol is not None:
        spec_port["appProtocol"] = app_protocol
    return parsing.parse_service({"apiVersion": "v1", "kind": "Service",
                                  "metadata": {"name": name, "namespace": namespace},
                                  "spec": {"ports": [spec_port]}})


SERVICES = [service(name, app_protocol) for name, app_protocol in APP_PROTOCOLS.items()]


def rule(path: str, *backends: str) -> str:
    refs = ", ".join(f"{{name: {name}, port: 8080}}" for name in backends)
    return (f"  - matches: [{{path: {{type: PathPrefix, value: {path}}}}}]\n"
            f"    backendRefs: [{refs}]\n")


class Plane:
    def __init__(self, plane: server.DataPlane, compiled: gateway_routes.Compiled,
                 h2c: H2cBackend) -> None:
        self.plane = plane
        self.compiled = compiled
        self.h2c = h2c

    def get(self, path: str) -> tuple[int, Any]:
        connection = HTTPConnection("127.0.0.1", self.plane.http_port, timeout=5)
        try:
            connection.request("GET", path, headers={"Host": "example.org"})
            response = connection.getresponse()
            body = response.read()
            if response.getheader("content-type") == "application/json":
                return response.status, json.loads(body)
            return response.status, body.decode()
        finally:
            connection.close()


@contextlib.contextmanager
def protocol_plane(routes: str) -> Iterator[Plane]:
    """A data plane serving `routes` on the infra Gateway: Service `h2c` is the h2c
    backend, `ws` the WebSocket echo server, `wss` the TLS echo server, every other one
    an HTTP/1.1 echo server named after it."""
    with contextlib.ExitStack() as stack:
        h2c = H2cBackend()
        stack.callback(h2c.close)
        ws = RawServer(websocket_echo)
        stack.callback(ws.close)
        slices = []
        for name in APP_PROTOCOLS:
            if name == "h2c":
                port = h2c.port
            elif name == "ws":
                port = ws.port
            else:
                echo = TlsEchoServer(name) if name == "wss" else EchoServer(name)
                stack.callback(echo.server_close)
                stack.callback(echo.shutdown)
                port = echo.port
            slices.append(resources.EndpointSlice(
                namespace=NS, name=f"{name}-1", service_name=name,
                ports=(resources.EndpointPort(port=port, name="web"),),
                endpoints=(resources.Endpoint(addresses=("127.0.0.1",)),)))
        compiled = compile_manifests(INFRA + "\n---\n" + routes, services=SERVICES)
        with started_plane(routes=compiled.routes, services=SERVICES,
                           endpoint_slices=slices) as plane:
            yield Plane(plane, compiled, h2c)


def test_service_port_app_protocol_is_parsed() -> None:
    assert [s.ports[0].app_protocol for s in SERVICES] == list(APP_PROTOCOLS.values())


def test_h2c_app_protocol_speaks_http2_to_the_backend_and_others_http11() -> None:
    routes = http_route("protocols", rule("/grpc-ish", "h2c") + rule("/", "plain"))
    with protocol_plane(routes) as plane:
        status, answer = plane.get("/grpc-ish/call")
        assert status == 200, answer
        # The h2c backend reports the HTTP/2 pseudo-headers it got: only HTTP/2 has them.
        headers = dict(answer["headers"])
        assert headers[":path"] == "/grpc-ish/call"
        assert headers[":authority"] == "example.org"
        assert plane.h2c.connections == 1
        status, answer = plane.get("/other")
        assert (status, answer["backend"]) == (200, "plain")
        assert plane.h2c.connections == 1
        assert route_conditions(plane.compiled, "protocols") == {
            "Accepted": ("True", "Accepted"), "ResolvedRefs": ("True", "ResolvedRefs")}


def test_websocket_app_protocols_choose_http11_and_tls() -> None:
    routes = http_route("websockets", rule("/ws", "ws") + rule("/wss", "wss")
                        + rule("/http", "iana-http"))
    compiled = compile_manifests(INFRA + "\n---\n" + routes, services=SERVICES)
    found = {route.path: (route.options.backend_h2, route.options.backend_tls)
             for route in compiled.routes.routes}
    assert found == {"/ws": (False, False), "/wss": (False, True), "/http": (False, False)}
    assert route_conditions(compiled, "websockets")["ResolvedRefs"] == ("True", "ResolvedRefs")
    with protocol_plane(routes) as plane:
        ws = websocket.create_connection(f"ws://127.0.0.1:{plane.plane.http_port}/ws/chat",
                                         host="example.org", timeout=5)
        try:
            ws.send("hello")
            assert ws.recv() == "hello"
        finally:
            ws.close()
        # The TLS echo server answers only over TLS: a 200 from it is TLS spoken.
        status, answer = plane.get("/wss/x")
        assert (status, answer["backend"]) == (200, "wss")
        status, answer = plane.get("/http/x")
        assert (status, answer["backend"]) == (200, "iana-http")


def test_unknown_app_protocol_is_unsupported_and_its_backend_unused() -> None:
    routes = http_route("custom", rule("/custom", "custom") + rule("/", "plain"))
    with protocol_plane(routes) as plane:
        assert plane.get("/custom")[0] == 500
        status, answer = plane.get("/else")
        assert (status, answer["backend"]) == (200, "plain")
        assert route_conditions(plane.compiled, "custom") == {
            "Accepted": ("True", "Accepted"),
            "ResolvedRefs": ("False", "UnsupportedProtocol")}
        (parent,) = plane.compiled.http_routes[0].parents
        message = {c.type: c.message for c in parent.conditions}["ResolvedRefs"]
        assert message.startswith(f"spec.rules[0]: Service {NS}/custom port 8080: "
                                  "appProtocol example.com/custom is not supported")


def test_backends_of_one_rule_speaking_different_protocols() -> None:
    """The protocol is one per rule: the backend differing from the first is invalid
    (500 for its share), the first keeps its own."""
    routes = http_route("mixed", rule("/", "plain", "h2c"))
    with protocol_plane(routes) as plane:
        answers = [plane.get("/")[0] for _ in range(40)]
        assert set(answers) == {200, 500}
        assert plane.h2c.connections == 0
        assert route_conditions(plane.compiled, "mixed")["ResolvedRefs"] == (
            "False", "UnsupportedProtocol")
