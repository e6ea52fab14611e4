"""Ingress routing conformance on real sockets: manifests in, the backend that answered out.

Every Service is a small HTTP server answering with its own name, so each
request checks which backend the data plane chose. The manifests go through
the same parsers as `certctl serve` reads them (ports by number and by
name, legacy class annotation, IngressClass objects, defaultBackend), and
the table is served by a real DataPlane on loopback.
"""

from __future__ import annotations

import datetime
import http.client
import json
from collections.abc import Iterator
from typing import Any

import pytest
import uvloop

from certctl.api import parsing
from certctl.dataplane import certstore, routing, server
from certctl.routes import ingress as ingress_routes
from tests.test_dataplane import EchoServer, LoopThread

CONTROLLER = "certctl.io/ingress-controller"
T0 = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)
SERVICES = (
    "exact-foo", "prefix-foo", "prefix-foo-bar", "root", "wild", "exact-host", "hostless",
    "default-a", "default-b", "old", "new", "named-port", "numbered-port", "impl",
    "legacy-class", "other-class", "classless", "trailing",
)


def ingress(
    name: str,
    rules: list[tuple[str | None, list[tuple[str, str, str, Any]]]],
    *,
    age: int = 0,
    default: str | None = None,
    class_name: str | None = None,
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    """An Ingress manifest; each path is (path, pathType, service, port number or name)."""
    spec: dict[str, Any] = {"rules": [
        {**({"host": host} if host else {}), "http": {"paths": [
            {"path": path, "pathType": path_type, "backend": {"service": {
                "name": service,
                "port": {"number": port} if isinstance(port, int) else {"name": port},
            }}}
            for path, path_type, service, port in paths
        ]}}
        for host, paths in rules
    ]}
    if default:
        spec["defaultBackend"] = {"service": {"name": default, "port": {"number": 80}}}
    if class_name:
        spec["ingressClassName"] = class_name
    created = (T0 + datetime.timedelta(seconds=age)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {"name": name, "namespace": "default", "creationTimestamp": created,
                     "annotations": annotations or {}},
        "spec": spec,
    }


def p(path: str, path_type: str, service: str, port: Any = 80) -> tuple[str, str, str, Any]:
    return (path, path_type, service, port)


INGRESSES = [
    ingress("paths", [("paths.test", [
        p("/foo", "Exact", "exact-foo"),
        p("/foo", "Prefix", "prefix-foo"),
        p("/foo/bar", "Prefix", "prefix-foo-bar"),
        p("/", "Prefix", "root"),
        p("/impl", "ImplementationSpecific", "impl"),
        p("/trailing/", "Prefix", "trailing"),
    ])]),
    ingress("hosts", [
        ("*.hosts.test", [p("/", "Prefix", "wild")]),
        ("exact.hosts.test", [p("/only", "Prefix", "exact-host")]),
        (None, [p("/hostless", "Prefix", "hostless")]),
    ]),
    ingress("defaults-a", [("defaults-a.test", [p("/x", "Exact", "root")])],
            default="default-a", age=1),
    ingress("defaults-b", [("defaults-b.test", [p("/x", "Exact", "root")])],
            default="default-b", age=2),
    ingress("conflict-new", [("merge.test", [p("/same", "Prefix", "new")])], age=20),
    ingress("conflict-old", [("merge.test", [p("/same", "Prefix", "old"),
                                             p("/old-only", "Prefix", "old")])], age=10),
    ingress("merge-more", [("merge.test", [p("/new-only", "Prefix", "new")])], age=30),
    ingress("ports", [("ports.test", [p("/by-name", "Prefix", "named-port", "http"),
                                      p("/by-number", "Prefix", "numbered-port", 80)])]),
    ingress("legacy", [("legacy.test", [p("/", "Prefix", "legacy-class")])],
            annotations={"kubernetes.io/ingress.class": "certctl"}),
    ingress("theirs", [("theirs.test", [p("/", "Prefix", "other-class")])], class_name="nginx"),
    ingress("classless", [("classless.test", [p("/", "Prefix", "classless")])]),
]

# (Host, path, the backend expected to answer, or the status when nothing does)
CASES: list[tuple[str, str, str | int]] = [
    # Exact is exact and case-sensitive; on equal length Exact beats Prefix
    ("paths.test", "/foo", "exact-foo"),
    ("paths.test", "/foo/", "prefix-foo"),
    ("paths.test", "/FOO", "root"),
    # Prefix is element-wise; longest wins
    ("paths.test", "/foo/baz", "prefix-foo"),
    ("paths.test", "/foobar", "root"),
    ("paths.test", "/foo/bar", "prefix-foo-bar"),
    ("paths.test", "/foo/bar/baz", "prefix-foo-bar"),
    ("paths.test", "/foo/barbaz", "prefix-foo"),
    ("paths.test", "/", "root"),
    ("paths.test", "/anything?query=/foo", "root"),
    # ImplementationSpecific is Prefix
    ("paths.test", "/impl/x", "impl"),
    ("paths.test", "/implx", "root"),
    # a trailing slash in a Prefix rule is ignored
    ("paths.test", "/trailing", "trailing"),
    ("paths.test", "/trailing/x", "trailing"),
    # Host matching: case-insensitive, port ignored, one-label wildcard, exact first
    ("PATHS.test:8080", "/foo", "exact-foo"),
    ("a.hosts.test", "/x", "wild"),
    ("a.b.hosts.test", "/x", "default-a"),  # nothing matches: the oldest defaultBackend
    ("hosts.test", "/x", "default-a"),
    ("exact.hosts.test", "/only/x", "exact-host"),
    ("exact.hosts.test", "/other", "wild"),  # falls through to the wildcard's rules
    ("unknown.test", "/hostless/y", "hostless"),
    ("exact.hosts.test", "/hostless", "wild"),  # a wildcard rule is more specific
    # defaultBackend: the Ingress serving the host first, else the oldest
    ("defaults-a.test", "/y", "default-a"),
    ("defaults-b.test", "/y", "default-b"),
    ("nowhere.test", "/y", "default-a"),
    # merging across Ingresses, the oldest wins a conflict
    ("merge.test", "/same", "old"),
    ("merge.test", "/old-only", "old"),
    ("merge.test", "/new-only", "new"),
    # Service ports by name and by number, each to its Service's target port
    ("ports.test", "/by-name", "named-port"),
    ("ports.test", "/by-number", "numbered-port"),
    # classes: legacy annotation and classless served; another controller's class not
    ("legacy.test", "/", "legacy-class"),
    ("classless.test", "/", "classless"),
    ("theirs.test", "/", "default-a"),
]


@pytest.fixture(scope="module")
def plane_port() -> Iterator[int]:
    backends = {name: EchoServer(name) for name in SERVICES}
    services, slices = [], []
    for name, backend in backends.items():
        services.append(parsing.parse_service({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"ports": [{"name": "http", "port": 80, "targetPort": "web"}]},
        }))
        slices.append(parsing.parse_endpoint_slice({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": f"{name}-x", "namespace": "default",
                         "labels": {"kubernetes.io/service-name": name}},
            "ports": [{"name": "http", "port": backend.port}],
            "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": True}}],
        }))
    classes = [
        parsing.parse_ingress_class({
            "apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
            "metadata": {"name": "certctl", "annotations": {
                "ingressclass.kubernetes.io/is-default-class": "true"}},
            "spec": {"controller": CONTROLLER},
        }),
        parsing.parse_ingress_class({
            "apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
            "metadata": {"name": "nginx"}, "spec": {"controller": "k8s.io/ingress-nginx"},
        }),
    ]
    plane = server.DataPlane(
        http_address=("127.0.0.1", 0),
        https_address=None,
        certificates=certstore.CertificateIndex(),
        challenge_responder=lambda host, token: None,
    )
    plane.set_routes(
        routing.RouteTable.build(
            routes=ingress_routes.compile_ingresses(
                ingresses=[parsing.parse_ingress(obj) for obj in INGRESSES],
                ingress_classes=classes,
                controller_name=CONTROLLER,
                class_name="certctl",
            ),
            services=services,
            endpoint_slices=slices,
        )
    )
    loop = LoopThread(uvloop.new_event_loop())
    loop.run(plane.start())
    yield plane.http_port
    loop.run(plane.stop())
    loop.close()
    for backend in backends.values():
        backend.shutdown()
        backend.server_close()


@pytest.fixture(scope="module")
def client(plane_port: int) -> Iterator[http.client.HTTPConnection]:
    """One kept-alive connection for every case: routing is per request, not per connection."""
    conn = http.client.HTTPConnection("127.0.0.1", plane_port, timeout=5)
    yield conn
    conn.close()


@pytest.mark.parametrize(("host", "path", "expected"), CASES)
def test_request_is_answered_by_the_backend_the_ingress_rules_choose(client, host, path, expected):
    client.request("GET", path, headers={"Host": host})
    response = client.getresponse()
    body = response.read()
    if isinstance(expected, int):
        assert response.status == expected
    else:
        assert response.status == 200, body
        echoed = json.loads(body)
        assert echoed["backend"] == expected
        assert echoed["path"] == path  # forwarded unchanged, query included


def test_ingress_without_class_is_not_served_when_no_class_is_default():
    obj = ingress("classless", [("classless.test", [p("/", "Prefix", "classless")])])
    table = routing.RouteTable.build(
        routes=ingress_routes.compile_ingresses(
            ingresses=[parsing.parse_ingress(obj)],
            ingress_classes=[
                parsing.parse_ingress_class(
                    {
                        "apiVersion": "networking.k8s.io/v1",
                        "kind": "IngressClass",
                        "metadata": {"name": "certctl"},
                        "spec": {"controller": CONTROLLER},
                    }
                )
            ],
            controller_name=CONTROLLER,
            class_name="certctl",
        ),
        services=[],
        endpoint_slices=[],
    )
    assert table.match(host="classless.test", path="/") is None
    assert table.served == frozenset()
