"""The Gateway API against the real control plane, its CRDs installed (tests/controlplane.py),
with exactly the rights manifests/ grants: an annotated Gateway with two HTTPS listeners ->
Certificates (owned by the Gateway) -> Secrets from Pebble -> served by SNI, its HTTPRoute
proxied to a backend in a network namespace, and the statuses the spec asks for accepted
by the API server's schema for them; neither component refused anything."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests import clusterops, testservers
from tests.pebble import PebbleServer
from tests.serving import cluster_issuer, dns_names, eventually, https_get, served_certificate

if TYPE_CHECKING:
    from tests.controlplane import ControlPlane

pytest_plugins = ["tests.controlplane"]

ISSUER = "pebble-gateway"
HOSTS = {"gw-a": "gw-a.example.test", "gw-b": "gw-b.example.test"}
API = "gateway.networking.k8s.io/v1"


def _conditions(entry: dict[str, Any] | None) -> dict[str, tuple[str, str]]:
    found = (entry or {}).get("conditions") or ((entry or {}).get("status") or {}).get(
        "conditions") or []
    return {c["type"]: (c["status"], c["reason"]) for c in found}


def _objects() -> list[dict[str, Any]]:
    return [
        {"apiVersion": API, "kind": "GatewayClass", "metadata": {"name": "certctl-cluster"},
         "spec": {"controllerName": "certctl.io/gateway-controller"}},
        {"apiVersion": API, "kind": "Gateway",
         "metadata": {"name": "edge", "namespace": "default",
                      "annotations": {"cert-manager.io/cluster-issuer": ISSUER}},
         "spec": {"gatewayClassName": "certctl-cluster", "listeners": [
             {"name": "http", "port": 80, "protocol": "HTTP"},
             *({"name": name, "port": 443, "protocol": "HTTPS", "hostname": host,
                "tls": {"mode": "Terminate", "certificateRefs": [{"name": f"{name}-tls"}]}}
               for name, host in HOSTS.items())]}},
        {"apiVersion": API, "kind": "HTTPRoute",
         "metadata": {"name": "edge", "namespace": "default"},
         "spec": {"parentRefs": [{"name": "edge"}], "hostnames": list(HOSTS.values()),
                  "rules": [{"backendRefs": [{"name": "gw-shop", "port": 80}]}]}},
        # Another controller's Ingress with the Gateway's name: served Gateways are no
        # served Ingresses, so it gets no load-balancer address from us.
        {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
         "metadata": {"name": "edge", "namespace": "default"},
         "spec": {"ingressClassName": "someone-else", "rules": [{"host": "x.example.test"}]}},
    ]


@contextlib.contextmanager
def certctl_in_cluster(plane: ControlPlane, pebble: PebbleServer, tmp_path: Path,
                       objects: list[dict[str, Any]]) -> Iterator[tuple[Any, clusterops.Operator]]:
    """manifests/ applied, the controller and the data plane running with exactly their
    rights, the ClusterIssuer ready, `objects` and the backend Service gw-shop created; after
    the block, neither component was refused anything."""
    if not clusterops.netns_available():
        pytest.skip("needs root for a network namespace (ip netns)")
    _, kubeconfigs = clusterops.apply_manifests(plane, directory=tmp_path)
    api = clusterops.admin_store(plane)
    mark = plane.audit.mark()
    operator = clusterops.granted_operator(plane=plane, pebble=pebble, kubeconfigs=kubeconfigs)
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(api.close)
        backend = cleanup.enter_context(clusterops.netns_backend("gateway-backend"))
        cleanup.callback(operator.stop)
        operator.start()
        api.create(obj=cluster_issuer(pebble, name=ISSUER, api_version="certctl.io/v1"))
        cleanup.callback(api.delete, kind="ClusterIssuer", namespace=None, name=ISSUER)
        eventually(lambda: clusterops.issuer_ready(api, ISSUER), timeout=60,
                   what="the ClusterIssuer")
        for obj in [*clusterops.service_with_slice("gw-shop", namespace="default",
                                                   address=backend.address, port=backend.port),
                    *objects]:
            api.create(obj=obj)
            cleanup.callback(api.delete, kind=obj["kind"],
                             namespace=obj["metadata"].get("namespace"),
                             name=obj["metadata"]["name"])
        yield api, operator

    refused = [str(e) for e in plane.audit.events(since=mark)
               if e.user in (clusterops.CONTROLLER_USER, clusterops.DATA_PLANE_USER)
               and e.code in (401, 403)]
    assert refused == []


def test_annotated_gateway_is_issued_served_and_reported_in_the_cluster(
    control_plane: ControlPlane, pebble: PebbleServer, tmp_path: Path,
) -> None:
    with certctl_in_cluster(control_plane, pebble, tmp_path, _objects()) as (api, operator):
        roots = pebble.issuance_roots_pem()
        for name, host in HOSTS.items():
            served = eventually(functools.partial(
                served_certificate, port=operator.https_port, server_name=host,
                roots_pem=roots), timeout=90, what=f"the certificate for {host} served by SNI")
            assert dns_names(served) == [host]
            secret = eventually(functools.partial(clusterops.ready_secret, api,
                                                  namespace="default", name=f"{name}-tls"),
                                what=f"Certificate {name}-tls Ready")
            assert served.serial_number == clusterops.leaf_of(secret).serial_number
            status, body = https_get(port=operator.https_port, host=host, path="/cart",
                                     roots_pem=roots)
            assert (status, body) == (200, f"gateway-backend {host} /cart https")
        gateway = api.get(kind="Gateway", namespace="default", name="edge")
        assert gateway is not None
        certificate = api.get(kind="Certificate", namespace="default", name="gw-a-tls")
        assert certificate is not None
        (owner,) = certificate["metadata"]["ownerReferences"]
        assert (owner["apiVersion"], owner["kind"], owner["uid"]) == (
            API, "Gateway", gateway["metadata"]["uid"])

        def listeners_resolved() -> dict[str, Any] | None:
            found = api.get(kind="Gateway", namespace="default", name="edge") or {}
            listeners = (found.get("status") or {}).get("listeners") or []
            return found if len(listeners) == 3 and all(
                _conditions(entry).get("ResolvedRefs") == ("True", "ResolvedRefs")
                for entry in listeners) else None

        gateway = eventually(listeners_resolved, timeout=20, what="the listeners' statuses")
        assert _conditions(gateway) == {"Accepted": ("True", "Accepted"),
                                        "Programmed": ("True", "Programmed")}
        assert gateway["status"]["addresses"] == [{"type": "IPAddress",
                                                   "value": clusterops.LOAD_BALANCER_ADDRESS}]
        assert {entry["name"]: entry["attachedRoutes"]
                for entry in gateway["status"]["listeners"]} == {"http": 1, "gw-a": 1, "gw-b": 1}
        route = eventually(lambda: (api.get(kind="HTTPRoute", namespace="default", name="edge")
                                    or {}).get("status", {}).get("parents"),
                           what="the route's status")
        (parent,) = route
        assert parent["controllerName"] == "certctl.io/gateway-controller"
        assert _conditions(parent) == {"Accepted": ("True", "Accepted"),
                                       "ResolvedRefs": ("True", "ResolvedRefs")}
        eventually(lambda: _conditions(api.get(kind="GatewayClass", namespace=None,
                                               name="certctl-cluster")) == {
            "Accepted": ("True", "Accepted")}, what="the GatewayClass Accepted")
        ingress = api.get(kind="Ingress", namespace="default", name="edge") or {}
        assert not ((ingress.get("status") or {}).get("loadBalancer") or {}).get("ingress")


def test_listener_set_and_opted_in_route_are_issued_served_and_reported_in_the_cluster(
    control_plane: ControlPlane, pebble: PebbleServer, tmp_path: Path,
) -> None:
    """The annotated Gateway allows ListenerSets by namespace labels (both components read
    Namespaces); a ListenerSet's HTTPS listener gets its Certificate from the Gateway's
    issuer annotation, owned by the ListenerSet; an HTTPRoute opted in to a Certificate
    attached to the ListenerSet's hostname-less listener gets one for its hostname; both
    served by SNI and routed; the API server accepts the ListenerSet's status."""
    gateway, listener_set, route = (
        {"apiVersion": API, "kind": "Gateway",
         "metadata": {"name": "platform", "namespace": "default",
                      "annotations": {"cert-manager.io/cluster-issuer": ISSUER}},
         "spec": {"gatewayClassName": "certctl-cluster",
                  "allowedListeners": {"namespaces": {"from": "Selector", "selector": {
                      "matchLabels": {"kubernetes.io/metadata.name": "default"}}}},
                  "listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}]}},
        {"apiVersion": API, "kind": "ListenerSet",
         "metadata": {"name": "team", "namespace": "default"},
         "spec": {"parentRef": {"name": "platform"}, "listeners": [
             {"name": "team", "port": 443, "protocol": "HTTPS",
              "hostname": "gw-team.example.test",
              "tls": {"certificateRefs": [{"name": "team-tls"}]}},
             {"name": "apps", "port": 443, "protocol": "HTTPS",
              "tls": {"certificateRefs": [{"name": "team-tls"}]}}]}},
        {"apiVersion": API, "kind": "HTTPRoute",
         "metadata": {"name": "apps", "namespace": "default", "annotations": {
             "certctl.io/certificate": "true", "cert-manager.io/cluster-issuer": ISSUER}},
         "spec": {"parentRefs": [{"name": "team", "kind": "ListenerSet"}],
                  "hostnames": ["gw-team.example.test", "gw-apps.example.test"],
                  "rules": [{"backendRefs": [{"name": "gw-shop", "port": 80}]}]}})
    objects = [{"apiVersion": API, "kind": "GatewayClass",
                "metadata": {"name": "certctl-cluster"},
                "spec": {"controllerName": "certctl.io/gateway-controller"}},
               gateway, listener_set, route]
    # The fixture installs the kinds every test needs; ListenerSets only this one.
    crd = testservers.directory("gateway-api") / "crds" / (
        "gateway.networking.k8s.io_listenersets.yaml")
    control_plane.kubectl("apply", "--server-side", f"-f={crd}")
    control_plane.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                          "crd/listenersets.gateway.networking.k8s.io")
    with certctl_in_cluster(control_plane, pebble, tmp_path, objects) as (api, operator):
        roots = pebble.issuance_roots_pem()
        for host, secret_name, owner_kind in (("gw-team.example.test", "team-tls", "ListenerSet"),
                                              ("gw-apps.example.test", "apps-tls", "HTTPRoute")):
            served = eventually(functools.partial(
                served_certificate, port=operator.https_port, server_name=host,
                roots_pem=roots), timeout=90, what=f"the certificate for {host} served by SNI")
            assert host in dns_names(served)
            certificate = api.get(kind="Certificate", namespace="default", name=secret_name)
            assert certificate is not None
            (owner,) = certificate["metadata"]["ownerReferences"]
            assert owner["kind"] == owner_kind
            status, body = https_get(port=operator.https_port, host=host, path="/x",
                                     roots_pem=roots)
            assert (status, body) == (200, f"gateway-backend {host} /x https")
        # The route's Certificate covers both its hostnames: the hostname-less listener
        # admits each.
        apps = api.get(kind="Certificate", namespace="default", name="apps-tls")
        assert sorted(apps["spec"]["dnsNames"]) == ["gw-apps.example.test",
                                                    "gw-team.example.test"]

        def set_accepted() -> dict[str, Any] | None:
            found = api.get(kind="ListenerSet", namespace="default", name="team") or {}
            listeners = (found.get("status") or {}).get("listeners") or []
            return found if len(listeners) == 2 and _conditions(found).get("Accepted") == (
                "True", "Accepted") else None

        found = eventually(set_accepted, timeout=20, what="the ListenerSet's status")
        assert _conditions(found)["Programmed"] == ("True", "Programmed")
        assert {entry["name"]: entry["attachedRoutes"]
                for entry in found["status"]["listeners"]} == {"team": 1, "apps": 1}
        platform = eventually(lambda: (api.get(kind="Gateway", namespace="default",
                                               name="platform") or {}).get("status", {}).get(
            "attachedListenerSets") == 1 and api.get(kind="Gateway", namespace="default",
                                                      name="platform"),
            timeout=20, what="attachedListenerSets")
        assert _conditions(platform)["Accepted"] == ("True", "Accepted")
