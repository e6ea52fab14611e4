"""Ingress routing semantics (DESIGN.md, "Ingress semantics the data plane must honour")."""

from __future__ import annotations

import dataclasses
import datetime
from typing import Any

import pytest

from certctl.api import resources
from certctl.dataplane import routing
from certctl.routes import ingress as ingress_routes
from certctl.routes import model
from certctl.routes import options as route_options

CONTROLLER = "certctl.io/ingress-controller"
T0 = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)


def backend(name: str) -> resources.ServiceBackend:
    return resources.ServiceBackend(name=name, port_number=80)


def ingress(
    name: str,
    *rules: resources.IngressRule,
    created: datetime.datetime | None = T0,
    default: str | None = None,
    class_name: str | None = None,
    namespace: str = "default",
) -> resources.Ingress:
    return resources.Ingress(
        namespace=namespace,
        name=name,
        creation_timestamp=created,
        ingress_class_name=class_name,
        default_backend=backend(default) if default else None,
        rules=rules,
    )


def rule(host: str | None, *paths: tuple[str, resources.PathType, str]) -> resources.IngressRule:
    return resources.IngressRule(
        host=host,
        paths=tuple(
            resources.IngressPath(path=p, path_type=t, backend=backend(b)) for p, t, b in paths
        ),
    )


def table(
    *ingresses: resources.Ingress,
    services: tuple[resources.Service, ...] = (),
    slices: tuple[resources.EndpointSlice, ...] = (),
    classes: tuple[resources.IngressClass, ...] = (),
    class_name: str | None = None,
) -> routing.RouteTable:
    return routing.RouteTable.build(
        routes=ingress_routes.compile_ingresses(
            ingresses=ingresses,
            ingress_classes=classes,
            controller_name=CONTROLLER,
            class_name=class_name,
        ),
        services=services,
        endpoint_slices=slices,
    )


def chosen(routes: routing.RouteTable, host: str, path: str) -> str | None:
    match = routes.match(host=host, path=path)
    return None if match is None else match.backend.service


# (rule paths as (path, pathType, backend), request path, expected backend or None)
PATH_CASES = [
    # Exact: exact and case-sensitive
    ([("/foo", "Exact", "a")], "/foo", "a"),
    ([("/foo", "Exact", "a")], "/bar", None),
    ([("/foo", "Exact", "a")], "/foo/", None),
    ([("/foo/", "Exact", "a")], "/foo", None),
    ([("/foo", "Exact", "a")], "/FOO", None),
    ([("/foo", "Exact", "a")], "/foo/bar", None),
    # Prefix: element-wise
    ([("/", "Prefix", "a")], "/", "a"),
    ([("/", "Prefix", "a")], "/anything/at/all", "a"),
    ([("/foo", "Prefix", "a")], "/foo", "a"),
    ([("/foo", "Prefix", "a")], "/foo/", "a"),
    ([("/foo", "Prefix", "a")], "/foo/bar", "a"),
    ([("/foo", "Prefix", "a")], "/foobar", None),
    ([("/foo/", "Prefix", "a")], "/foo", "a"),
    ([("/foo/", "Prefix", "a")], "/foo/", "a"),
    ([("/aaa/bb", "Prefix", "a")], "/aaa/bbb", None),
    ([("/aaa/bbb", "Prefix", "a")], "/aaa/bbb", "a"),
    ([("/aaa/bbb/", "Prefix", "a")], "/aaa/bbb", "a"),
    ([("/aaa/bbb", "Prefix", "a")], "/aaa/bbb/", "a"),
    ([("/aaa/bbb", "Prefix", "a")], "/aaa/bbb/ccc", "a"),
    ([("/aaa/bbb", "Prefix", "a")], "/aaa/bbbxyz", None),
    ([("/foo", "Prefix", "a")], "/FOO", None),
    # ImplementationSpecific is Prefix
    ([("/foo", "ImplementationSpecific", "a")], "/foo/bar", "a"),
    ([("/foo", "ImplementationSpecific", "a")], "/foobar", None),
    # longest match wins, whatever the order of the rules
    ([("/", "Prefix", "a"), ("/aaa", "Prefix", "b")], "/aaa/ccc", "b"),
    ([("/aaa", "Prefix", "b"), ("/", "Prefix", "a")], "/aaa/ccc", "b"),
    ([("/", "Prefix", "a"), ("/aaa", "Prefix", "b")], "/ccc", "a"),
    ([("/aaa", "Prefix", "a"), ("/aaa/bbb", "Prefix", "b")], "/aaa/bbb/c", "b"),
    ([("/aaa", "Prefix", "a"), ("/aaa/bbb", "Exact", "b")], "/aaa/bbb/c", "a"),
    ([("/aaa/bbb", "Prefix", "a"), ("/aaa/bbb/c", "Exact", "b")], "/aaa/bbb/c", "b"),
    # on equal length Exact beats Prefix, in either order
    ([("/aaa", "Prefix", "p"), ("/aaa", "Exact", "e")], "/aaa", "e"),
    ([("/aaa", "Exact", "e"), ("/aaa", "Prefix", "p")], "/aaa", "e"),
    ([("/aaa", "Exact", "e"), ("/aaa", "Prefix", "p")], "/aaa/", "p"),
    ([("/foo", "Prefix", "p"), ("/foo/", "Exact", "e")], "/foo/", "e"),
    ([("/foo", "Prefix", "p"), ("/foo/", "Exact", "e")], "/foo", "p"),
    # nothing matches
    ([("/aaa", "Prefix", "a"), ("/bbb", "Prefix", "b")], "/ccc", None),
    # the path is raw: no percent-decoding
    ([("/foo/bar", "Prefix", "a")], "/foo%2Fbar", None),
]


@pytest.mark.parametrize(("paths", "request_path", "expected"), PATH_CASES)
def test_path_matching(paths, request_path, expected):
    routes = table(ingress("ing", rule("example.test", *paths)))
    assert chosen(routes, "example.test", request_path) == expected


# (rule hosts -> backend, request host, expected backend or None); every rule is Prefix "/"
HOST_CASES = [
    ({"foo.com": "exact"}, "foo.com", "exact"),
    ({"foo.com": "exact"}, "bar.com", None),
    ({"*.foo.com": "wild"}, "bar.foo.com", "wild"),
    ({"*.foo.com": "wild"}, "baz.bar.foo.com", None),
    ({"*.foo.com": "wild"}, "foo.com", None),
    ({"*.foo.com": "wild", "bar.foo.com": "exact"}, "bar.foo.com", "exact"),
    ({"*.foo.com": "wild", "bar.foo.com": "exact"}, "baz.foo.com", "wild"),
    ({None: "any"}, "whatever.test", "any"),
    ({None: "any"}, "", "any"),
    ({None: "any", "foo.com": "exact"}, "foo.com", "exact"),
    ({None: "any", "*.foo.com": "wild"}, "bar.foo.com", "wild"),
    ({None: "any", "*.foo.com": "wild"}, "baz.bar.foo.com", "any"),
    ({"FOO.com": "exact"}, "foo.com", "exact"),
]


@pytest.mark.parametrize(("hosts", "request_host", "expected"), HOST_CASES)
def test_host_matching(hosts, request_host, expected):
    rules = [rule(host, ("/", "Prefix", name)) for host, name in hosts.items()]
    routes = table(ingress("ing", *rules))
    assert chosen(routes, request_host, "/x") == expected


def test_specific_host_falls_through_to_less_specific_rules_when_no_path_matches():
    routes = table(
        ingress(
            "ing",
            rule("api.foo.com", ("/v1", "Prefix", "exact")),
            rule("*.foo.com", ("/v2", "Prefix", "wild")),
            rule(None, ("/", "Prefix", "any")),
        )
    )
    assert chosen(routes, "api.foo.com", "/v1/x") == "exact"
    assert chosen(routes, "api.foo.com", "/v2/x") == "wild"
    assert chosen(routes, "api.foo.com", "/v3") == "any"


def test_rules_for_one_host_merge_across_ingresses():
    routes = table(
        ingress("one", rule("foo.com", ("/a", "Prefix", "a"))),
        ingress("two", rule("foo.com", ("/b", "Prefix", "b"))),
    )
    assert chosen(routes, "foo.com", "/a") == "a"
    assert chosen(routes, "foo.com", "/b") == "b"


@pytest.mark.parametrize("order", [1, -1])
def test_conflicting_rule_goes_to_the_oldest_ingress_whatever_the_input_order(order):
    old = ingress("zzz-old", rule("foo.com", ("/a", "Prefix", "old")), created=T0)
    new = ingress(
        "aaa-new",
        rule("foo.com", ("/a", "Prefix", "new")),
        created=T0 + datetime.timedelta(seconds=1),
    )
    routes = table(*[old, new][::order])
    match = routes.match(host="foo.com", path="/a")
    assert match is not None
    assert match.backend.service == "old"
    assert match.source == old.key


def test_conflict_between_equally_old_ingresses_goes_by_namespace_then_name():
    routes = table(
        ingress("b", rule("foo.com", ("/", "Prefix", "b")), namespace="ns1"),
        ingress("a", rule("foo.com", ("/", "Prefix", "a")), namespace="ns2"),
        ingress("c", rule("foo.com", ("/", "Prefix", "c")), namespace="ns1", created=None),
    )
    assert chosen(routes, "foo.com", "/") == "b"


def test_same_path_with_different_types_is_not_a_conflict():
    routes = table(
        ingress("one", rule("foo.com", ("/a", "Prefix", "prefix"))),
        ingress("two", rule("foo.com", ("/a", "Exact", "exact"))),
    )
    assert chosen(routes, "foo.com", "/a") == "exact"
    assert chosen(routes, "foo.com", "/a/b") == "prefix"


def test_default_backend_when_no_rule_matches():
    routes = table(ingress("ing", rule("foo.com", ("/a", "Exact", "a")), default="fallback"))
    assert chosen(routes, "foo.com", "/b") == "fallback"
    assert chosen(routes, "other.test", "/b") == "fallback"


def test_default_backend_prefers_the_ingress_serving_the_host():
    routes = table(
        ingress("old", rule("a.test", ("/x", "Exact", "a")), default="default-a"),
        ingress(
            "new",
            rule("b.test", ("/x", "Exact", "b")),
            default="default-b",
            created=T0 + datetime.timedelta(seconds=1),
        ),
    )
    assert chosen(routes, "a.test", "/y") == "default-a"
    assert chosen(routes, "b.test", "/y") == "default-b"
    assert chosen(routes, "c.test", "/y") == "default-a"  # the oldest overall


def test_no_rule_and_no_default_backend_is_no_match():
    assert (
        chosen(table(ingress("ing", rule("foo.com", ("/a", "Exact", "a")))), "foo.com", "/") is None
    )
    assert chosen(routing.RouteTable.empty(), "foo.com", "/") is None


OURS = resources.IngressClass(name="certctl", controller=CONTROLLER)
OURS_DEFAULT = resources.IngressClass(name="certctl", controller=CONTROLLER, is_default=True)
THEIRS = resources.IngressClass(name="nginx", controller="k8s.io/ingress-nginx")


@pytest.mark.parametrize(
    ("classes", "class_name", "ingress_class", "served"),
    [
        ((OURS, THEIRS), None, "certctl", True),
        ((OURS, THEIRS), None, "nginx", False),
        ((OURS, THEIRS), None, None, False),
        ((OURS_DEFAULT, THEIRS), None, None, True),
        ((OURS, THEIRS), "nginx", "nginx", False),  # an IngressClass says nginx is not ours
        ((THEIRS,), "certctl", "certctl", True),  # legacy annotation: no IngressClass needed
        ((), "certctl", "certctl", True),
        ((), "certctl", "other", False),
        ((), None, None, True),  # standalone: plain classless Ingresses are served
        ((), "certctl", None, True),
    ],
)
def test_ingress_class_selection(classes, class_name, ingress_class, served):
    routes = table(
        ingress("ing", rule("foo.com", ("/", "Prefix", "a")), class_name=ingress_class),
        classes=classes,
        class_name=class_name,
    )
    assert (chosen(routes, "foo.com", "/") == "a") is served


def service_routes(
    backend_ref: resources.ServiceBackend,
    *,
    services: tuple[resources.Service, ...],
    slices: tuple[resources.EndpointSlice, ...],
) -> routing.RouteMatch | None:
    ing = resources.Ingress(
        namespace="web",
        name="ing",
        rules=(
            resources.IngressRule(
                host="foo.com",
                paths=(resources.IngressPath(path="/", path_type="Prefix", backend=backend_ref),),
            ),
        ),
    )
    routes = routing.RouteTable.build(
        routes=ingress_routes.compile_ingresses(
            ingresses=(ing,),
            ingress_classes=(),
            controller_name=CONTROLLER,
            class_name=None,
        ),
        services=services,
        endpoint_slices=slices,
    )
    return routes.match(host="foo.com", path="/")


SVC = resources.Service(
    namespace="web",
    name="app",
    ports=(
        resources.ServicePort(port=80, name="http", target_port="web"),
        resources.ServicePort(port=9090, name="metrics", target_port=9100),
    ),
)
SLICE = resources.EndpointSlice(
    namespace="web",
    name="app-abc",
    service_name="app",
    ports=(
        resources.EndpointPort(port=8080, name="http"),
        resources.EndpointPort(port=9100, name="metrics"),
    ),
    endpoints=(
        resources.Endpoint(addresses=("10.0.0.1",)),
        resources.Endpoint(addresses=("10.0.0.2",), ready=False),
        resources.Endpoint(addresses=("10.0.0.3", "10.0.0.1")),
    ),
)


@pytest.mark.parametrize(
    "backend_ref",
    [
        resources.ServiceBackend(name="app", port_number=80),
        resources.ServiceBackend(name="app", port_name="http"),
    ],
)
def test_backend_resolves_to_ready_endpoints_of_the_service_port(backend_ref):
    match = service_routes(backend_ref, services=(SVC,), slices=(SLICE,))
    assert match is not None
    assert match.upstreams == (("10.0.0.1", 8080), ("10.0.0.3", 8080))


def test_slice_without_port_names_is_matched_by_numeric_target_port():
    svc = resources.Service(
        namespace="web",
        name="app",
        ports=(resources.ServicePort(port=80, name="http", target_port=8080),),
    )
    eps = resources.EndpointSlice(
        namespace="web",
        name="app-1",
        service_name="app",
        ports=(resources.EndpointPort(port=8080),),
        endpoints=(resources.Endpoint(addresses=("10.0.0.9",)),),
    )
    match = service_routes(
        resources.ServiceBackend(name="app", port_number=80), services=(svc,), slices=(eps,)
    )
    assert match is not None
    assert match.upstreams == (("10.0.0.9", 8080),)


@pytest.mark.parametrize(
    ("backend_ref", "services", "slices"),
    [
        (resources.ServiceBackend(name="missing", port_number=80), (SVC,), (SLICE,)),
        (resources.ServiceBackend(name="app", port_number=81), (SVC,), (SLICE,)),
        (resources.ServiceBackend(name="app", port_number=80), (SVC,), ()),
        (
            resources.ServiceBackend(name="app", port_number=80),
            (SVC,),
            (
                resources.EndpointSlice(
                    namespace="web",
                    name="app-x",
                    service_name="app",
                    ports=SLICE.ports,
                    endpoints=(resources.Endpoint(addresses=("10.0.0.2",), ready=False),),
                ),
            ),
        ),
    ],
    ids=["missing-service", "missing-port", "no-slices", "no-ready-endpoints"],
)
def test_unresolvable_backend_still_matches_with_no_upstreams(backend_ref, services, slices):
    match = service_routes(backend_ref, services=services, slices=slices)
    assert match is not None
    assert match.upstreams == ()


def test_slices_of_another_namespace_are_ignored():
    other = resources.EndpointSlice(
        namespace="other",
        name="app-abc",
        service_name="app",
        ports=SLICE.ports,
        endpoints=(resources.Endpoint(addresses=("10.9.9.9",)),),
    )
    match = service_routes(
        resources.ServiceBackend(name="app", port_number=80), services=(SVC,), slices=(other,)
    )
    assert match is not None
    assert match.upstreams == ()


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Foo.Example.COM", "foo.example.com"),
        ("foo.com:8443", "foo.com"),
        ("foo.com.", "foo.com"),
        ("[::1]:8080", "[::1]"),
        ("127.0.0.1:80", "127.0.0.1"),
    ],
)
def test_normalize_host(raw, expected):
    assert routing.normalize_host(raw) == expected


def _match_with(options: route_options.RouteOptions) -> routing.RouteMatch:
    return routing.RouteMatch(
        source=resources.ObjectKey(kind="Ingress", namespace="default", name="site"),
        backend=model.Backend(namespace="default", service="web", port_number=80),
        upstreams=(), options=options)


_CHECKED = sorted(checked.name for checked in dataclasses.fields(route_options.RouteOptions)
                  if checked.init and checked.name not in route_options.PLAIN_FIELDS)


def test_default_options_are_plain():
    assert route_options.DEFAULT_OPTIONS.plain
    assert _match_with(route_options.DEFAULT_OPTIONS).plain


@pytest.mark.parametrize("name", _CHECKED)
def test_any_option_the_fast_path_skips_makes_a_route_not_plain(name):
    """A request to a plain route skips the checks of every option but PLAIN_FIELDS: one
    set to anything but its default must send its requests the whole way (and a field
    added to RouteOptions is in this list until it is added to PLAIN_FIELDS)."""
    # Any value not the default will do: a sentinel of no option's type.
    changed: dict[str, Any] = {name: object()}
    options = dataclasses.replace(route_options.DEFAULT_OPTIONS, **changed)
    assert not options.plain
    assert not _match_with(options).plain


_FAST_PATH_VALUES: dict[str, Any] = {
    "ssl_redirect": False, "force_ssl_redirect": True, "hsts_max_age": 600,
    "hsts_include_subdomains": False, "read_timeout": 5.0, "connect_timeout": 2.0,
    "backend_tls": True, "backend_h2": True,
    "error_pages": route_options.ErrorPages(codes=frozenset({503})),
}


def test_every_option_the_fast_path_reads_itself_is_tried():
    assert set(_FAST_PATH_VALUES) == route_options.PLAIN_FIELDS


@pytest.mark.parametrize(("name", "value"), sorted(_FAST_PATH_VALUES.items()))
def test_options_the_fast_path_reads_itself_keep_a_route_plain(name, value):
    options = dataclasses.replace(route_options.DEFAULT_OPTIONS, **{name: value})
    assert options.plain
    assert _match_with(options).plain


@pytest.mark.parametrize(("h2", "tls"), [(False, False), (True, False), (False, True),
                                         (True, True)])
def test_a_route_reads_its_backends_protocol_from_its_options(h2, tls):
    # Copies, read by every request taking an idle leg: a replaced route copies again.
    options = dataclasses.replace(route_options.DEFAULT_OPTIONS, backend_h2=h2, backend_tls=tls)
    match = _match_with(options)
    assert (match.backend_h2, match.backend_tls) == (h2, tls)
    replaced = dataclasses.replace(match, options=route_options.DEFAULT_OPTIONS)
    assert (replaced.backend_h2, replaced.backend_tls) == (False, False)
