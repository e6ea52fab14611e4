"""ingress-nginx's use-regex and rewrite-target with capture groups, through the data plane.

The cases follow ingress-nginx's rewrite documentation and its e2e tests: a
path `/something(/|$)(.*)` with `rewrite-target: /$2` sends `/something/new`
to the backend as `/new`; regex paths are case-insensitive and anchored at
the start only; `use-regex` on one Ingress makes the paths of its hosts in
every Ingress regular expressions; Exact paths still win; the query string
is kept.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator

import pytest

from certctl.api import resources
from certctl.dataplane import routing
from certctl.routes import ingress as ingress_routes
from tests.test_dataplane_proxy import Running, echoed, running_plane

NGINX = "nginx.ingress.kubernetes.io/"


def regex_ingress(
    name: str, host: str, paths: list[tuple[str, resources.PathType, str]], *,
    annotations: dict[str, str] | None = None, created_offset: int = 0,
) -> resources.Ingress:
    """An Ingress with (path, pathType, service) rules for one host."""
    return resources.Ingress(
        namespace="default", name=name,
        creation_timestamp=datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)
        + datetime.timedelta(seconds=created_offset),
        annotations=tuple((annotations or {}).items()),
        rules=(resources.IngressRule(host=host, paths=tuple(
            resources.IngressPath(path=path, path_type=kind,
                                  backend=resources.ServiceBackend(name=service,
                                                                   port_name="http"))
            for path, kind, service in paths)),),
    )


@pytest.fixture(scope="module")
def plane() -> Iterator[Running]:
    ingresses = [
        regex_ingress("rewrite", "rewrite.test",
                      [("/something(/|$)(.*)", "ImplementationSpecific", "one")],
                      annotations={NGINX + "rewrite-target": "/$2"}),
        regex_ingress("regex", "regex.test", [
            ("/api/v[0-9]+/users", "Prefix", "one"),
            ("/api/.*", "Prefix", "two"),
            ("/api/v1/users", "Exact", "exact"),
        ], annotations={NGINX + "use-regex": "true"}),
        # No annotation of its own: regex.test's use-regex makes this path a regex too.
        regex_ingress("same-host", "regex.test", [("/static/[a-z]+\\.css", "Prefix", "two")],
                      created_offset=5),
        regex_ingress("query", "query.test", [("/q(/|$)(.*)", "Prefix", "one")],
                      annotations={NGINX + "rewrite-target": "/search?from=$2"}),
        regex_ingress("drop", "drop.test", [("/d/(.*)", "Prefix", "one")],
                      annotations={NGINX + "rewrite-target": "/$1?"}),
        regex_ingress("plain", "plain.test", [("/app", "Prefix", "one")],
                      annotations={NGINX + "rewrite-target": "/"}),
        regex_ingress("broken", "broken.test", [("/ok", "Prefix", "one"), ("/(", "Prefix", "two")],
                      annotations={NGINX + "use-regex": "true"}),
    ]
    with running_plane(ingresses=ingresses, echo=("one", "two", "exact")) as running:
        yield running


def _upstream(plane: Running, host: str, target: str) -> tuple[str, str]:
    got = echoed(plane.http(), target, headers={"Host": host})
    return got["backend"], got["path"]


@pytest.mark.parametrize(("target", "upstream"), [
    ("/something", "/"),
    ("/something/", "/"),
    ("/something/new", "/new"),
    ("/something/new?x=1", "/new?x=1"),
    ("/SOMETHING/new", "/new"),  # ~*: case-insensitive
])
def test_capture_group_rewrite_as_in_ingress_nginx_docs(plane, target, upstream):
    assert _upstream(plane, "rewrite.test", target) == ("one", upstream)


def test_path_not_matching_the_regex_is_not_routed(plane):
    connection = plane.http()
    connection.request("GET", "/somethingelse", headers={"Host": "rewrite.test"})
    assert connection.getresponse().status == 404


@pytest.mark.parametrize(("target", "backend"), [
    ("/api/v2/users", "one"),  # the longest regex first
    ("/api/v2/users/7", "one"),  # anchored at the start only
    ("/api/v1/users", "exact"),  # Exact still wins
    ("/api/other", "two"),
    ("/static/site.css", "two"),  # another Ingress's path on the host: a regex too
    ("/STATIC/SITE.CSS", "two"),
])
def test_use_regex_orders_like_nginx_locations(plane, target, backend):
    assert _upstream(plane, "regex.test", target)[0] == backend


def test_target_with_a_query_string_gets_the_original_query_after_an_ampersand(plane):
    assert _upstream(plane, "query.test", "/q/term?page=2") == ("one", "/search?from=term&page=2")
    assert _upstream(plane, "query.test", "/q/term") == ("one", "/search?from=term")


def test_target_ending_in_a_question_mark_drops_the_query(plane):
    assert _upstream(plane, "drop.test", "/d/x?secret=1") == ("one", "/x")


def test_rewrite_without_groups_keeps_certctls_prefix_rewrite(plane):
    assert _upstream(plane, "plain.test", "/app/x?y") == ("one", "/x?y")


def test_path_that_does_not_compile_is_reported_and_the_others_served(plane):
    assert _upstream(plane, "broken.test", "/ok")[0] == "one"
    problems = [p for p in plane.plane.routes.problems if p.source.name == "broken"]
    assert [p.reason for p in problems] == [ingress_routes.BAD_PATH]
    assert "'/('" in problems[0].message


def test_regex_is_per_host():
    table = routing.RouteTable.build(
        routes=ingress_routes.compile_ingresses(
            ingresses=[
                regex_ingress("r", "r.test", [("/a.c", "Prefix", "one")],
                              annotations={NGINX + "use-regex": "true"}),
                regex_ingress("p", "p.test", [("/a.c", "Prefix", "one")]),
            ],
            ingress_classes=[], controller_name="certctl.io/ingress-controller", class_name=None,
        ),
        services=[], endpoint_slices=[],
    )
    assert table.match(host="r.test", path="/abc") is not None
    assert table.match(host="p.test", path="/abc") is None
    assert table.match(host="p.test", path="/a.c/d") is not None
