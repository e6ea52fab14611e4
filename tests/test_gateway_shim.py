"""gateway-shim turns an annotated Gateway into one owned Certificate per listener Secret."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from certctl.api.resources import ObjectKey
from certctl.controllers import gateway_shim
from certctl.runtime import dispatch
from certctl.store.interface import WatchEvent
from certctl.store.local import LocalStore
from tests.test_dispatch import dispatcher  # noqa: F401 - the fixture, built as there

GATEWAY_UID = "6f1c2a1e-0000-4000-8000-0000000000aa"
KEY = ObjectKey(kind="Gateway", namespace="shop", name="edge")


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(manifests_dir=None, state_dir=tmp_path / "state")


def listener(name: str, hostname: str | None, secret: str, **tls: Any) -> dict[str, Any]:
    found: dict[str, Any] = {"name": name, "port": 443, "protocol": "HTTPS",
                             "tls": {"certificateRefs": [{"name": secret}], **tls}}
    if hostname is not None:
        found["hostname"] = hostname
    return found


def gateway(listeners: list[dict[str, Any]], annotations: dict[str, str] | None = None
            ) -> dict[str, Any]:
    return {
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
        "metadata": {"name": "edge", "namespace": "shop", "uid": GATEWAY_UID,
                     "annotations": {"cert-manager.io/cluster-issuer": "letsencrypt"}
                     if annotations is None else annotations},
        "spec": {"gatewayClassName": "certctl", "listeners": [
            {"name": "http", "port": 80, "protocol": "HTTP"}, *listeners]},
    }


def certificates(store: LocalStore) -> dict[str, dict[str, Any]]:
    return {c["metadata"]["name"]: c for c in store.list(kind="Certificate", namespace="shop")}


def reconcile(store: LocalStore) -> None:
    assert gateway_shim.reconcile(store=store, key=KEY).requeue_after is None


def replace_gateway(store: LocalStore, obj: dict[str, Any]) -> None:
    current = store.get(kind="Gateway", namespace="shop", name="edge")
    assert current is not None
    current["metadata"]["annotations"] = obj["metadata"]["annotations"]
    current["spec"] = obj["spec"]
    store.replace(obj=current)


def test_one_owned_certificate_per_secret_with_the_listeners_hostnames(
        store: LocalStore) -> None:
    store.create(obj=gateway([
        listener("a", "a.example.test", "a-tls"),
        listener("www-a", "www.a.example.test", "a-tls"),  # shares a-tls: merged
        listener("b", "b.example.test", "b-tls"),
    ], annotations={"cert-manager.io/cluster-issuer": "letsencrypt",
                    "cert-manager.io/duration": "720h",
                    "cert-manager.io/private-key-algorithm": "ECDSA"}))
    reconcile(store)
    found = certificates(store)
    assert set(found) == {"a-tls", "b-tls"}
    a = found["a-tls"]
    assert a["spec"]["dnsNames"] == ["a.example.test", "www.a.example.test"]
    assert a["spec"]["secretName"] == "a-tls"
    assert a["spec"]["issuerRef"] == {"name": "letsencrypt", "kind": "ClusterIssuer",
                                      "group": "certctl.io"}
    assert a["spec"]["duration"] == "720h"
    assert a["spec"]["privateKey"] == {"algorithm": "ECDSA"}
    (owner,) = a["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == (
        "Gateway", "edge", GATEWAY_UID, True)
    assert found["b-tls"]["spec"]["dnsNames"] == ["b.example.test"]
    # Reconciling again changes nothing.
    versions = {n: c["metadata"]["resourceVersion"] for n, c in found.items()}
    reconcile(store)
    assert {n: c["metadata"]["resourceVersion"]
            for n, c in certificates(store).items()} == versions


def test_listeners_that_cannot_have_a_certificate_are_skipped_with_a_warning(
        store: LocalStore, caplog: pytest.LogCaptureFixture) -> None:
    """As cert-manager: no hostname, a Secret in another namespace, Passthrough."""
    cross = listener("cross", "c.example.test", "c-tls")
    cross["tls"]["certificateRefs"][0]["namespace"] = "elsewhere"
    store.create(obj=gateway([
        listener("nohost", None, "x-tls"),
        cross,
        listener("pass", "p.example.test", "p-tls", mode="Passthrough"),
        listener("good", "g.example.test", "g-tls"),
    ]))
    with caplog.at_level(logging.WARNING):
        reconcile(store)
    assert set(certificates(store)) == {"g-tls"}
    for field in ("spec.listeners[1].hostname",
                  "spec.listeners[2].tls.certificateRefs[0].namespace",
                  "spec.listeners[3].tls.mode"):
        assert field in caplog.text, field


def test_removing_the_annotation_or_a_listener_deletes_what_it_asked_for(
        store: LocalStore) -> None:
    store.create(obj=gateway([listener("a", "a.example.test", "a-tls"),
                              listener("b", "b.example.test", "b-tls")]))
    reconcile(store)
    assert set(certificates(store)) == {"a-tls", "b-tls"}
    replace_gateway(store, gateway([listener("a", "a.example.test", "a-tls")]))
    reconcile(store)
    assert set(certificates(store)) == {"a-tls"}
    replace_gateway(store, gateway([listener("a", "a.example.test", "a-tls")],
                                   annotations={}))
    reconcile(store)
    assert certificates(store) == {}


def test_certificate_not_owned_by_the_gateway_is_left_alone(store: LocalStore) -> None:
    store.create(obj={"apiVersion": "certctl.io/v1", "kind": "Certificate",
                      "metadata": {"name": "a-tls", "namespace": "shop"},
                      "spec": {"secretName": "a-tls", "dnsNames": ["mine.example.test"],
                               "issuerRef": {"name": "other"}}})
    store.create(obj=gateway([listener("a", "a.example.test", "a-tls")]))
    reconcile(store)
    assert certificates(store)["a-tls"]["spec"]["dnsNames"] == ["mine.example.test"]


def test_deleted_gateway_takes_its_certificates_with_it(store: LocalStore) -> None:
    store.create(obj=gateway([listener("a", "a.example.test", "a-tls")]))
    reconcile(store)
    store.delete(kind="Gateway", namespace="shop", name="edge")
    reconcile(store)
    assert certificates(store) == {}


def test_gateway_annotation_changes_run_the_shim_and_status_writes_do_not(
        dispatcher: dispatch.Dispatcher) -> None:  # noqa: F811 - the fixture
    """The data plane writes Gateway statuses often: only a new generation or new
    annotations (metadata: the generation stays) must run gateway-shim."""

    def event(annotations: dict[str, str], status: dict[str, Any]) -> WatchEvent:
        obj = gateway([listener("a", "a.example.test", "a-tls")], annotations=annotations)
        obj["metadata"]["generation"] = 1
        obj["status"] = status
        return WatchEvent(type="MODIFIED", key=KEY, obj=obj)

    annotated = {"cert-manager.io/cluster-issuer": "pebble"}
    assert ("gateway", KEY) in list(dispatcher.items_for(event(annotated, {})))
    assert ("gateway", KEY) not in list(dispatcher.items_for(event(annotated, {
        "conditions": [{"type": "Accepted", "status": "True"}]})))
    assert ("gateway", KEY) in list(dispatcher.items_for(event({}, {})))


# --- HTTPRoutes opted in to a Certificate ------------------------------------------------

ROUTE_KEY = ObjectKey(kind="HTTPRoute", namespace="shop", name="cart")
GATEWAY_CLASS = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
                 "metadata": {"name": "certctl"},
                 "spec": {"controllerName": "certctl.io/gateway-controller"}}


def http_route(hostnames: list[str], annotations: dict[str, str] | None = None,
               **parent: Any) -> dict[str, Any]:
    return {
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": "cart", "namespace": "shop",
                     "uid": "6f1c2a1e-0000-4000-8000-0000000000bb",
                     "annotations": {"certctl.io/certificate": "true",
                                     "cert-manager.io/cluster-issuer": "letsencrypt"}
                     if annotations is None else annotations},
        "spec": {"parentRefs": [{"name": "edge", **parent}], "hostnames": hostnames,
                 "rules": [{"backendRefs": [{"name": "cart", "port": 80}]}]},
    }


def reconcile_route(store: LocalStore) -> None:
    assert gateway_shim.reconcile_route(store=store, key=ROUTE_KEY).requeue_after is None


def test_opted_in_route_gets_a_certificate_for_the_hostnames_a_listener_admits(
        store: LocalStore) -> None:
    """The listener `*.shop.test` admits `cart.shop.test`, not `cart.other.test`; the
    Gateway itself is not annotated (the route owner does not edit it)."""
    store.create(obj=GATEWAY_CLASS)
    store.create(obj=gateway([listener("wild", "*.shop.test", "wildcard-tls")],
                             annotations={}))
    store.create(obj=http_route(["cart.shop.test", "cart.other.test"], annotations={
        "certctl.io/certificate": "true", "cert-manager.io/cluster-issuer": "letsencrypt",
        "certctl.io/certificate-secret-name": "cart-cert",
        "cert-manager.io/private-key-algorithm": "ECDSA"}))
    reconcile_route(store)
    (certificate,) = certificates(store).values()
    assert certificate["metadata"]["name"] == "cart-cert"
    assert certificate["spec"]["secretName"] == "cart-cert"
    assert certificate["spec"]["dnsNames"] == ["cart.shop.test"]
    assert certificate["spec"]["privateKey"] == {"algorithm": "ECDSA"}
    assert certificate["spec"]["issuerRef"]["name"] == "letsencrypt"
    (owner,) = certificate["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"]) == ("HTTPRoute", "cart")
    assert certificate["metadata"]["labels"] == {"certctl.io/httproute-name": "cart"}


def test_route_certificate_name_defaults_and_opt_out_deletes_it(store: LocalStore) -> None:
    store.create(obj=GATEWAY_CLASS)
    store.create(obj=gateway([listener("shop", "cart.shop.test", "shop-tls")],
                             annotations={}))
    store.create(obj=http_route(["cart.shop.test"]))
    reconcile_route(store)
    assert list(certificates(store)) == ["cart-tls"]
    current = store.get(kind="HTTPRoute", namespace="shop", name="cart")
    assert current is not None
    current["metadata"]["annotations"]["certctl.io/certificate"] = "false"
    store.replace(obj=current)
    reconcile_route(store)
    assert certificates(store) == {}


@pytest.mark.parametrize(("case", "reason"), [
    ("not our Gateway", gateway_shim.NOT_ADMITTED),
    ("HTTP listener only", gateway_shim.NOT_ADMITTED),
    ("another sectionName", gateway_shim.NOT_ADMITTED),
    ("namespace not allowed", gateway_shim.NOT_ADMITTED),
    ("no issuer", gateway_shim.BAD_CONFIG),
    ("bad opt-in value", gateway_shim.BAD_CONFIG),
])
def test_route_gets_no_certificate_unless_a_listener_of_ours_admits_it(
        store: LocalStore, case: str, reason: str, caplog: pytest.LogCaptureFixture) -> None:
    """The listener decides: nothing for another controller's Gateway, an HTTP listener,
    a listener the route did not name, or one that takes no routes from its namespace."""
    store.create(obj=GATEWAY_CLASS if case != "not our Gateway" else {
        **GATEWAY_CLASS, "spec": {"controllerName": "example.com/other"}})
    https = listener("shop", "cart.shop.test", "shop-tls")
    if case == "namespace not allowed":
        https["allowedRoutes"] = {"namespaces": {"from": "Selector", "selector": {
            "matchLabels": {"team": "shop"}}}}
    store.create(obj=gateway([] if case == "HTTP listener only" else [https],
                             annotations={}))
    annotations = {"certctl.io/certificate": "true",
                   "cert-manager.io/cluster-issuer": "letsencrypt"}
    if case == "no issuer":
        del annotations["cert-manager.io/cluster-issuer"]
    if case == "bad opt-in value":
        annotations["certctl.io/certificate"] = "yes"
    parent = {"sectionName": "http"} if case == "another sectionName" else {}
    store.create(obj=http_route(["cart.shop.test"], annotations=annotations, **parent))
    with caplog.at_level(logging.WARNING):
        reconcile_route(store)
    assert certificates(store) == {}
    (message,) = [r.getMessage() for r in caplog.records if f" {reason}: " in r.getMessage()]
    if reason == gateway_shim.BAD_CONFIG:
        assert "metadata.annotations[certctl.io/certificate]" in message


def test_gateway_changes_look_again_at_its_opted_in_routes(
        store: LocalStore, dispatcher: dispatch.Dispatcher) -> None:  # noqa: F811
    store.create(obj=http_route(["cart.shop.test"]))
    store.create(obj={**http_route(["x.shop.test"], annotations={}),
                      "metadata": {"name": "plain", "namespace": "shop"}})
    obj = gateway([listener("shop", "cart.shop.test", "shop-tls")], annotations={})
    obj["metadata"]["generation"] = 2
    items = list(dispatcher.items_for(WatchEvent(type="MODIFIED", key=KEY, obj=obj)))
    assert ("httproute", ROUTE_KEY) in items
    assert ("httproute", ObjectKey(kind="HTTPRoute", namespace="shop", name="plain")) \
        not in items


# --- ListenerSets ---------------------------------------------------------------------

SET_KEY = ObjectKey(kind="ListenerSet", namespace="shop", name="team")


def listener_set(listeners: list[dict[str, Any]],
                 annotations: dict[str, str] | None = None) -> dict[str, Any]:
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "ListenerSet",
            "metadata": {"name": "team", "namespace": "shop",
                         "uid": "6f1c2a1e-0000-4000-8000-0000000000cc",
                         "annotations": annotations or {}},
            "spec": {"parentRef": {"name": "edge"}, "listeners": listeners}}


def allowing(obj: dict[str, Any], allowed: str = "Same") -> dict[str, Any]:
    obj["spec"]["allowedListeners"] = {"namespaces": {"from": allowed}}
    return obj


def reconcile_set(store: LocalStore) -> None:
    assert gateway_shim.reconcile_listener_set(store=store, key=SET_KEY).requeue_after is None


def test_listener_set_certificates_take_its_annotations_over_the_gateways(
        store: LocalStore) -> None:
    store.create(obj=allowing(gateway([listener("a", "a.example.test", "a-tls")],
                                      annotations={"cert-manager.io/cluster-issuer": "le",
                                                   "cert-manager.io/duration": "720h"})))
    store.create(obj=listener_set([listener("team", "team.example.test", "team-tls")],
                                  annotations={"cert-manager.io/duration": "240h"}))
    reconcile_set(store)
    team = certificates(store)["team-tls"]
    assert team["spec"]["dnsNames"] == ["team.example.test"]
    assert team["spec"]["issuerRef"] == {"name": "le", "kind": "ClusterIssuer",
                                         "group": "certctl.io"}
    assert team["spec"]["duration"] == "240h"
    (owner,) = team["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"]) == ("ListenerSet", "team")
    assert "a-tls" not in certificates(store)  # the Gateway's listeners are its own shim's

    # An issuer named on the ListenerSet replaces the Gateway's as a whole.
    current = store.get(kind="ListenerSet", namespace="shop", name="team")
    assert current is not None
    current["metadata"]["annotations"] = {"cert-manager.io/issuer": "team-ca"}
    store.replace(obj=current)
    reconcile_set(store)
    assert certificates(store)["team-tls"]["spec"]["issuerRef"] == {
        "name": "team-ca", "kind": "Issuer", "group": "certctl.io"}


def test_listener_set_the_gateway_does_not_allow_gets_no_certificate(
        store: LocalStore, dispatcher: dispatch.Dispatcher,  # noqa: F811 - the fixture
        caplog: pytest.LogCaptureFixture) -> None:
    store.create(obj=gateway([listener("a", "a.example.test", "a-tls")]))  # no allowedListeners
    store.create(obj=listener_set([listener("team", "team.example.test", "team-tls")]))
    with caplog.at_level(logging.WARNING):
        reconcile_set(store)
    assert certificates(store) == {}
    assert f" {gateway_shim.NOT_ALLOWED}: " in caplog.text
    # Allowing it on the Gateway looks at the ListenerSet again, which then gets its own.
    obj = allowing(gateway([listener("a", "a.example.test", "a-tls")]))
    replace_gateway(store, obj)
    obj["metadata"]["generation"] = 3
    assert ("listenerset", SET_KEY) in list(dispatcher.items_for(
        WatchEvent(type="MODIFIED", key=KEY, obj=obj)))
    reconcile_set(store)
    assert set(certificates(store)) == {"team-tls"}


def test_route_attached_to_a_listener_set_gets_its_certificate_and_set_changes_look_again(
        store: LocalStore, dispatcher: dispatch.Dispatcher) -> None:  # noqa: F811
    store.create(obj=GATEWAY_CLASS)
    store.create(obj=allowing(gateway([], annotations={})))
    store.create(obj=listener_set([listener("apps", "*.apps.test", "apps-wildcard")]))
    store.create(obj=http_route(["cart.apps.test"], kind="ListenerSet", name="team"))
    reconcile_route(store)
    assert certificates(store)["cart-tls"]["spec"]["dnsNames"] == ["cart.apps.test"]
    obj = listener_set([listener("apps", "*.other.test", "apps-wildcard")])
    obj["metadata"]["generation"] = 2
    assert ("httproute", ROUTE_KEY) in list(dispatcher.items_for(
        WatchEvent(type="MODIFIED", key=SET_KEY, obj=obj)))
