"""ingress-nginx's server-alias: more names for an Ingress's hosts, through the data plane."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from certctl.routes import ingress as ingress_routes
from tests.test_dataplane_proxy import Running, echoed, running_plane, simple_ingress

NGINX = "nginx.ingress.kubernetes.io/"


@pytest.fixture(scope="module")
def plane() -> Iterator[Running]:
    ingresses = [
        simple_ingress("main", {("main.test", "/"): "one"},
                       annotations={NGINX + "server-alias": "Alias.test, *.wild.test, bad_host!"}),
        simple_ingress("more", {("main.test", "/b"): "two"}, created_offset=5),
        simple_ingress("taken", {("taken.test", "/"): "three"}),
        simple_ingress("grabber", {("grabber.test", "/"): "one"}, created_offset=10,
                       annotations={NGINX + "server-alias": "taken.test"}),
    ]
    with running_plane(ingresses=ingresses, echo=("one", "two", "three")) as running:
        yield running


@pytest.mark.parametrize(("host", "path", "backend"), [
    ("alias.test", "/", "one"),
    ("alias.test", "/b/x", "two"),  # every Ingress's paths of the aliased host
    ("x.wild.test", "/", "one"),
    ("taken.test", "/", "three"),  # a host of another Ingress's rules keeps its own routes
])
def test_alias_is_served_as_the_host_it_names(plane, host, path, backend):
    assert echoed(plane.http(), path, headers={"Host": host})["backend"] == backend


def test_conflicting_and_unreadable_aliases_are_reported(plane):
    problems = {(p.source.name, p.reason): p.message for p in plane.plane.routes.problems}
    assert "'bad_host!' is not a host name" in problems[("main", ingress_routes.BAD_ANNOTATION)]
    assert "'taken.test' is already a host" in problems[("grabber", ingress_routes.ALIAS_CONFLICT)]
