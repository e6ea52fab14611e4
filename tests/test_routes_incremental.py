"""Routes kept up to date one Ingress at a time equal routes compiled from every Ingress.

`IngressRoutes.update` re-settles only the hosts a changed Ingress touches and
`RouteTable.updated` indexes only those hosts again; a random sequence of
Ingress adds, edits and deletes (overlapping hosts and paths, canaries,
server-alias, www twins, use-regex, refused Ingresses, defaultBackends)
must leave the same route set and the same table as compiling and building
everything afresh. Then the feed over a real LocalStore: an edit updates
the published table in place of its hosts, and the others stay shared.
"""

from __future__ import annotations

import base64
import collections
import datetime
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from certctl.api import resources
from certctl.api.resources import ObjectKey
from certctl.dataplane import certstore, routing
from certctl.routes import ingress as ingress_routes
from certctl.routes import model
from certctl.runtime import dataplane_feed
from certctl.store.local import LocalStore

NGINX = "nginx.ingress.kubernetes.io/"
HOSTS = ("a.test", "www.a.test", "b.test", "www.b.test", "*.a.test", "c.test", None)
ALIASES = ("a.test", "alias.test", "www.b.test", "other.test", "*.a.test")
PATHS = ("/", "/x", "/x/", "/x/y", "/(", "/[a-z]+", "/y")
NAMES = ("one", "two", "three", "four", "five", "six")
SERVICES = ("web", "api", "missing")
HTPASSWD = b"user:$apr1$abcdefgh$h9FWgUz3n9YxylKLlR5SQ/\n"  # `openssl passwd -apr1`
TIMES = (None, *(datetime.datetime(2026, 1, day, tzinfo=datetime.UTC) for day in (1, 2, 3)))


def service_backend(name: str) -> resources.ServiceBackend:
    return resources.ServiceBackend(name=name, port_number=80)


paths = st.builds(
    resources.IngressPath,
    path=st.sampled_from(PATHS),
    path_type=st.sampled_from(("Exact", "Prefix", "ImplementationSpecific")),
    backend=st.sampled_from(SERVICES).map(service_backend),
)
rules = st.builds(resources.IngressRule, host=st.sampled_from(HOSTS),
                  paths=st.lists(paths, max_size=3).map(tuple))
annotation_sets = st.fixed_dictionaries({}, optional={
    NGINX + "canary": st.just("true"),
    NGINX + "canary-weight": st.sampled_from(("0", "50", "100")),
    NGINX + "use-regex": st.sampled_from(("true", "false")),
    NGINX + "server-alias": st.lists(st.sampled_from(ALIASES), min_size=1, max_size=2)
    .map(", ".join),
    NGINX + "from-to-www-redirect": st.just("true"),
    NGINX + "auth-proxy-set-headers": st.just("default/h"),  # refused: not enforced
    NGINX + "default-backend": st.sampled_from(("api", "nowhere")),
    NGINX + "custom-http-errors": st.just("404,503"),
})


@st.composite
def ingresses(draw: st.DrawFn) -> resources.Ingress:
    return resources.Ingress(
        namespace="default", name=draw(st.sampled_from(NAMES)),
        creation_timestamp=draw(st.sampled_from(TIMES)),
        annotations=tuple(sorted(draw(annotation_sets).items())),
        default_backend=draw(st.none() | st.sampled_from(SERVICES).map(service_backend)),
        rules=tuple(draw(st.lists(rules, max_size=3))),
    )


# An operation: an Ingress added or replaced, or one deleted by name.
operations = st.lists(st.one_of(ingresses(), st.sampled_from(NAMES)), min_size=1, max_size=12)

SERVICE_OBJECTS = (
    resources.Service(namespace="default", name="web", ports=(resources.ServicePort(port=80),)),
    resources.Service(namespace="default", name="api", ports=(resources.ServicePort(port=80),)),
)
SLICES = (
    resources.EndpointSlice(namespace="default", name="web-1", service_name="web",
                            ports=(resources.EndpointPort(port=8080),),
                            endpoints=(resources.Endpoint(addresses=("10.0.0.1",)),)),
    resources.EndpointSlice(namespace="default", name="api-1", service_name="api",
                            ports=(resources.EndpointPort(port=9090),),
                            endpoints=(resources.Endpoint(addresses=("10.0.0.2",)),)),
)


def snapshot(table: routing.RouteTable) -> dict[str, Any]:
    """Everything a table answers with, in the order that matters (regular expressions
    are tried in order; the other dicts are looked up by key)."""
    def host(found: Any) -> Any:
        return (found.exact, found.prefix, list(found.regex.items()), found.default,
                found.client_ca, found.conditional, found.problems)
    return {
        "exact": {name: host(found) for name, found in table._exact_hosts.items()},
        "wildcard": {name: host(found) for name, found in table._wildcard_hosts.items()},
        "hostless": host(table._hostless),
        "default": table._default,
        "served": table.served,
        "problems": collections.Counter(table.problems),  # reported as a set: any order
        "client_certificates": table.client_certificates,
        "conditional": table.conditional,
    }


def compiled(ingress: resources.Ingress) -> ingress_routes.CompiledIngress:
    return ingress_routes.compile_ingress(ingress)


def fresh_table(routes: model.RouteSet) -> routing.RouteTable:
    return routing.RouteTable.build(routes=routes, services=SERVICE_OBJECTS,
                                    endpoint_slices=SLICES)


def updated_table(table: routing.RouteTable, kept: ingress_routes.IngressRoutes,
                  hosts: frozenset[str], backends: routing.Backends) -> routing.RouteTable:
    return table.updated(
        hosts={host: model.HostRoutes(routes=kept.routes_for(host),
                                      default=kept.default_for(host)) for host in hosts},
        default=kept.default, served=kept.served, problems=kept.problems(),
        backends=backends)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(operations)
def test_random_edits_applied_one_at_a_time_equal_a_fresh_compile(steps):
    kept = ingress_routes.IngressRoutes()
    backends = routing.Backends(services=SERVICE_OBJECTS, endpoint_slices=SLICES)
    table = routing.RouteTable.empty()
    current: dict[ObjectKey, resources.Ingress] = {}
    for step in steps:
        if isinstance(step, str):
            key = ObjectKey(kind="Ingress", namespace="default", name=step)
            current.pop(key, None)
            hosts = kept.update({key: None})
        else:
            current[step.key] = step
            hosts = kept.update({step.key: compiled(step)})
        table = updated_table(table, kept, hosts, backends)
        fresh = ingress_routes.compile_ingresses(
            ingresses=current.values(), ingress_classes=(),
            controller_name=dataplane_feed.CONTROLLER_NAME, class_name="certctl")
        assert kept.route_set() == fresh
        assert snapshot(table) == snapshot(fresh_table(fresh))


def ingress(name: str, *hosts: str, path: str = "/", service: str = "web", day: int = 1,
            annotations: dict[str, str] | None = None) -> resources.Ingress:
    return resources.Ingress(
        namespace="default", name=name,
        creation_timestamp=datetime.datetime(2026, 1, day, tzinfo=datetime.UTC),
        annotations=tuple(sorted((annotations or {}).items())),
        rules=tuple(resources.IngressRule(host=host, paths=(resources.IngressPath(
            path=path, path_type="Prefix", backend=service_backend(service)),))
            for host in hosts))


def settle(kept: ingress_routes.IngressRoutes,
           *found: resources.Ingress) -> frozenset[str]:
    return kept.update({one.key: compiled(one) for one in found})


def test_an_edit_settles_only_the_hosts_it_had_and_has():
    kept = ingress_routes.IngressRoutes()
    settle(kept, *(ingress(f"site-{n}", f"site-{n}.test") for n in range(50)))
    assert settle(kept, ingress("site-7", "moved.test")) == {"site-7.test", "moved.test"}
    assert kept.routes_for("site-7.test") == ()
    assert [r.source.name for r in kept.routes_for("moved.test")] == ["site-7"]


def test_deleting_the_oldest_claim_hands_the_path_to_the_next_oldest():
    kept = ingress_routes.IngressRoutes()
    settle(kept, ingress("old", "a.test", service="web", day=1),
           ingress("new", "a.test", service="api", day=2))
    assert [r.backend.service for r in kept.routes_for("a.test")] == ["web"]
    kept.update({ObjectKey(kind="Ingress", namespace="default", name="old"): None})
    assert [r.backend.service for r in kept.routes_for("a.test")] == ["api"]


def test_an_alias_follows_an_edit_to_another_ingress_of_its_host():
    kept = ingress_routes.IngressRoutes()
    settle(kept, ingress("main", "a.test", day=1,
                         annotations={NGINX + "server-alias": "alias.test"}))
    settle(kept, ingress("extra", "a.test", path="/extra", service="api", day=2))
    assert [(r.path, r.backend.service) for r in kept.routes_for("alias.test")] == [
        ("/", "web"), ("/extra", "api")]
    # An Ingress taking the alias as a host of its rules: the alias goes, with a problem.
    hosts = settle(kept, ingress("taker", "alias.test", service="api", day=3))
    assert "alias.test" in hosts
    assert [r.source.name for r in kept.routes_for("alias.test")] == ["taker"]
    assert {p.reason for p in kept.problems()} == {ingress_routes.ALIAS_CONFLICT}


def test_a_canary_attaches_again_when_its_main_ingress_comes_back():
    kept = ingress_routes.IngressRoutes()
    canary = ingress("canary", "a.test", service="api", day=2,
                     annotations={NGINX + "canary": "true", NGINX + "canary-weight": "50"})
    settle(kept, canary)
    assert kept.routes_for("a.test") == ()
    settle(kept, ingress("main", "a.test", day=1))
    (route,) = kept.routes_for("a.test")
    assert route.canary is not None and route.canary.backend.service == "api"


def test_a_www_twin_gives_way_to_an_ingress_with_rules_for_it():
    kept = ingress_routes.IngressRoutes()
    settle(kept, ingress("main", "a.test", annotations={NGINX + "from-to-www-redirect": "true"}))
    (twin,) = kept.routes_for("www.a.test")
    assert twin.options.redirect is not None
    assert settle(kept, ingress("www", "www.a.test", service="api", day=2)) >= {"www.a.test"}
    assert [r.backend.service for r in kept.routes_for("www.a.test")] == ["api"]


def test_use_regex_of_one_ingress_turns_the_other_ingresses_paths_of_its_host_into_patterns():
    kept = ingress_routes.IngressRoutes()
    settle(kept, ingress("plain", "a.test", path="/items/[0-9]+", day=1))
    assert kept.routes_for("a.test")[0].pattern is None
    settle(kept, ingress("regex", "a.test", path="/other", day=2,
                         annotations={NGINX + "use-regex": "true"}))
    assert all(route.pattern is not None for route in kept.routes_for("a.test"))
    kept.update({ObjectKey(kind="Ingress", namespace="default", name="regex"): None})
    assert kept.routes_for("a.test")[0].pattern is None


# --- the feed over a real store -----------------------------------------------------------


def ingress_object(name: str, host: str, service: str) -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"rules": [{"host": host, "http": {"paths": [{
            "path": "/", "pathType": "Prefix",
            "backend": {"service": {"name": service, "port": {"number": 80}}}}]}}]},
    }


def test_the_feed_updates_an_edited_ingress_hosts_and_shares_the_rest(tmp_path: Path):
    store = LocalStore(manifests_dir=None, state_dir=tmp_path / "state")
    tables: list[routing.RouteTable] = []
    feed = dataplane_feed.DataPlaneFeed(store=store, certificates=certstore.CertificateIndex(),
                                        publish_routes=tables.append, ingress_class="certctl")
    store.subscribe(feed.on_event)
    for n in range(20):
        store.create(obj=ingress_object(f"site-{n}", f"site-{n}.test", "web"))
    feed.refresh()
    before = tables[-1]
    edited = store.get(kind="Ingress", namespace="default", name="site-3")
    assert edited is not None
    edited["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["name"] = "api"
    store.replace(obj=edited)
    feed.refresh()
    after = tables[-1]
    assert after is not before
    match = after.match(host="site-3.test", path="/")
    assert match is not None and match.backend.service == "api"
    # The other hosts' indexes are the previous table's own objects: nothing rebuilt.
    assert all(after._exact_hosts[f"site-{n}.test"] is before._exact_hosts[f"site-{n}.test"]
               for n in range(20) if n != 3)
    # And the table equals one built from every Ingress in the store.
    rebuilt = routing.RouteTable.build(routes=feed.routes, services=(), endpoint_slices=())
    assert snapshot(after) == snapshot(rebuilt)


def test_the_feed_reads_a_changed_auth_secret_again_for_the_ingresses_naming_it(
        tmp_path: Path):
    store = LocalStore(manifests_dir=None, state_dir=tmp_path / "state")
    tables: list[routing.RouteTable] = []
    feed = dataplane_feed.DataPlaneFeed(store=store, certificates=certstore.CertificateIndex(),
                                        publish_routes=tables.append, ingress_class="certctl")
    store.subscribe(feed.on_event)
    guarded = ingress_object("guarded", "guarded.test", "web")
    guarded["metadata"]["annotations"] = {NGINX + "auth-type": "basic",
                                          NGINX + "auth-secret": "users"}
    store.create(obj=guarded)
    store.create(obj=ingress_object("open", "open.test", "web"))
    feed.refresh()
    missing = tables[-1].match(host="guarded.test", path="/")
    assert missing is not None and missing.options.refusal is not None  # no Secret: refused
    store.create(obj={"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                      "metadata": {"name": "users", "namespace": "default"},
                      "data": {"auth": base64.b64encode(HTPASSWD).decode()}})
    feed.refresh()
    found = tables[-1].match(host="guarded.test", path="/")
    assert found is not None and found.options.refusal is None
    assert (tables[-1]._exact_hosts["open.test"] is tables[-2]._exact_hosts["open.test"])
