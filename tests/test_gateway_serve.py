"""End to end in `certctl serve`: the README's annotated Gateway -> Certificates from Pebble
-> Secrets -> served by SNI, its HTTPRoutes routed to real backends, statuses in the
state dir; and the bad input the Gateway API spec names a condition for."""

from __future__ import annotations

import base64
import contextlib
import re
import socket
import ssl
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509

from tests.pebble import PebbleServer
from tests.serving import (
    Serving,
    cluster_issuer,
    dns_names,
    echo_backend,
    eventually,
    http_get,
    https_get,
    served_certificate,
    service_with_endpoints,
    serving,
    write_yaml,
)
from tests.testca import TestCA

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_gateway_manifests() -> list[dict[str, Any]]:
    """The first YAML block of the README's "Gateway API" section, for Pebble and test
    names."""
    section = README.read_text().split("\n## Gateway API\n", 1)[1].split("\n## ", 1)[0]
    block = re.findall(r"```yaml\n(.*?)```", section, flags=re.DOTALL)[0]  # the main example
    block = block.replace("example.com", "example.test").replace("letsencrypt", "pebble")
    return [doc for doc in yaml.safe_load_all(block) if doc]


API = "gateway.networking.k8s.io/v1"
CERTCTL_CLASS = {"apiVersion": API, "kind": "GatewayClass", "metadata": {"name": "certctl"},
                 "spec": {"controllerName": "certctl.io/gateway-controller"}}


def _object(kind: str, name: str, spec: dict[str, Any], *, namespace: str = "default",
            annotations: dict[str, str] | None = None) -> dict[str, Any]:
    """A Gateway API object in `namespace`, with `annotations` when given."""
    metadata: dict[str, Any] = {"name": name, "namespace": namespace}
    if annotations:
        metadata["annotations"] = annotations
    return {"apiVersion": API, "kind": kind, "metadata": metadata, "spec": spec}


def _manifests(tmp_path: Path) -> Path:
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    return manifests


@contextlib.contextmanager
def _served_with_pebble(tmp_path: Path, pebble: PebbleServer, *objects: dict[str, Any],
                        service: str) -> Iterator[Serving]:
    """`objects` with certctl's GatewayClass, the ClusterIssuer `pebble` and the Service
    `service` to an echo backend `<service>-backend`, in `certctl serve`."""
    manifests = _manifests(tmp_path)
    with echo_backend(f"{service}-backend") as port:
        write_yaml(manifests / "issuer.yaml", cluster_issuer(pebble, name="pebble"))
        write_yaml(manifests / "all.yaml", CERTCTL_CLASS, *objects,
                   *service_with_endpoints(service, port=port))
        with serving(manifests=manifests, state_dir=tmp_path / "state", pebble=pebble) as run:
            yield run


def _served(port: int, host: str, roots: bytes) -> x509.Certificate | None:
    certificate = served_certificate(port=port, server_name=host, roots_pem=roots)
    return certificate if host in dns_names(certificate) else None


def _conditions(obj: dict[str, Any] | None) -> dict[str, tuple[str, str]]:
    """By type: of an object's status, or of a listener or route parent entry."""
    found = (obj or {}).get("conditions") or ((obj or {}).get("status") or {}).get(
        "conditions") or []
    return {c["type"]: (c["status"], c["reason"]) for c in found}


def _presented_serial(port: int, host: str) -> int | None:
    """The serial of the certificate presented for SNI `host`, None without a handshake."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
                context.wrap_socket(raw, server_hostname=host) as tls:
            der = tls.getpeercert(binary_form=True)
    except (ssl.SSLError, ConnectionError):
        return None
    return None if der is None else x509.load_der_x509_certificate(der).serial_number


def _issued_certificate(run: Serving, *, roots: bytes, host: str, secret: str,
                        owner: tuple[str, str]) -> dict[str, Any]:
    """The Certificate `secret`, once Pebble's certificate for `host` (and only `host`) is
    served by SNI; owned by `owner` (kind, name)."""
    leaf = eventually(partial(_served, run.https_port, host, roots), timeout=60,
                      what=f"a Pebble certificate for {host}")
    assert dns_names(leaf) == [host]
    certificate = run.certificate(secret)
    assert certificate is not None
    (found,) = certificate["metadata"]["ownerReferences"]
    assert (found["kind"], found["name"]) == owner
    return certificate


def listeners_now(run: Any) -> dict[str, dict[str, Any]]:
    return _listeners(run.store.get(kind="Gateway", namespace="default", name="edge"))


def _listeners(obj: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    return {entry["name"]: entry for entry in ((obj or {}).get("status") or {}).get(
        "listeners") or []}


def test_readme_gateway_is_issued_served_by_sni_and_routed(tmp_path: Path,
                                                          pebble: PebbleServer) -> None:
    manifests = _manifests(tmp_path)
    with echo_backend("shop-backend") as shop_port, echo_backend("blog-backend") as blog_port, \
            echo_backend("api-backend") as api_port:
        write_yaml(manifests / "issuer.yaml", cluster_issuer(pebble, name="pebble"))
        write_yaml(manifests / "gateway.yaml", *readme_gateway_manifests())
        write_yaml(manifests / "services.yaml", *service_with_endpoints("shop", port=shop_port),
                   *service_with_endpoints("blog", port=blog_port),
                   *service_with_endpoints("api", port=api_port))
        with serving(manifests=manifests, state_dir=tmp_path / "state", pebble=pebble) as run:
            roots = pebble.issuance_roots_pem()
            for host in ("shop.example.test", "blog.example.test"):
                leaf = eventually(partial(_served, run.https_port, host, roots),
                                  timeout=60, what=f"a Pebble certificate for {host}")
                assert dns_names(leaf) == [host]
            for name in ("shop-tls", "blog-tls"):
                certificate = run.certificate(name)
                assert certificate is not None
                (owner,) = certificate["metadata"]["ownerReferences"]
                assert (owner["kind"], owner["name"]) == ("Gateway", "web")
                assert certificate["spec"]["issuerRef"]["name"] == "pebble"

            assert https_get(port=run.https_port, host="shop.example.test", path="/cart",
                             roots_pem=roots) == (200, "shop-backend shop.example.test /cart https")
            assert https_get(port=run.https_port, host="shop.example.test", path="/api/items",
                             roots_pem=roots)[1].startswith("api-backend ")
            assert https_get(port=run.https_port, host="blog.example.test", path="/",
                             roots_pem=roots)[1].startswith("blog-backend ")
            # The plain HTTP listener serves the same routes (no redirect unless a filter asks).
            status, _, body = http_get(port=run.http_port, host="blog.example.test", path="/x")
            assert (status, body) == (200, "blog-backend blog.example.test /x http")
            assert http_get(port=run.http_port, host="other.example.test", path="/")[0] == 404

            def statuses_written() -> bool:
                gateway = run.store.get(kind="Gateway", namespace="default", name="web")
                listeners = _listeners(gateway)
                return all(_conditions(entry).get("ResolvedRefs") == ("True", "ResolvedRefs")
                           for entry in listeners.values()) and len(listeners) == 3

            eventually(statuses_written, timeout=10, what="listeners with resolved Secrets")
            gateway = run.store.get(kind="Gateway", namespace="default", name="web")
            assert _conditions(gateway) == {"Accepted": ("True", "Accepted"),
                                            "Programmed": ("True", "Programmed")}
            assert gateway["status"]["addresses"] == [{"type": "IPAddress",
                                                       "value": "127.0.0.1"}]
            listeners = _listeners(gateway)
            assert listeners["http"]["attachedRoutes"] == 2
            assert listeners["shop"]["attachedRoutes"] == 1
            assert _conditions(listeners["shop"])["Conflicted"] == ("False", "NoConflicts")
            assert _conditions(run.store.get(kind="GatewayClass", namespace=None,
                                             name="certctl")) == {"Accepted": ("True",
                                                                               "Accepted")}
            route = run.store.get(kind="HTTPRoute", namespace="default", name="shop")
            (parent,) = route["status"]["parents"]
            assert parent["controllerName"] == "certctl.io/gateway-controller"
            assert parent["parentRef"]["name"] == "web"
            assert _conditions(parent) == {"Accepted": ("True", "Accepted"),
                                           "ResolvedRefs": ("True", "ResolvedRefs")}
            # Kept in the state dir, beside the user's manifests (which certctl never writes).
            (kept,) = (tmp_path / "state").rglob("Gateway/default/web.yaml")
            assert "ResolvedRefs" in kept.read_text()
            assert all("status" not in doc for doc in yaml.safe_load_all(
                (manifests / "gateway.yaml").read_text()))


def test_bad_gateway_input_gets_the_spec_conditions_and_is_not_served(
        tmp_path: Path, pebble: PebbleServer) -> None:
    """A Secret in another namespace without a ReferenceGrant (RefNotPermitted), two
    listeners claiming one hostname (HostnameConflict), and a route whose parent is another
    controller's Gateway (no status from us, nothing served)."""
    manifests = _manifests(tmp_path)
    gateway = _object("Gateway", "edge", {"gatewayClassName": "certctl", "listeners": [
        {"name": "http", "port": 80, "protocol": "HTTP"},
        {"name": "foreign", "port": 443, "protocol": "HTTPS",
         "hostname": "foreign.example.test",
         "tls": {"certificateRefs": [{"name": "theirs", "namespace": "other"}]}},
        {"name": "twin-a", "port": 8080, "protocol": "HTTP", "hostname": "twin.example.test"},
        {"name": "twin-b", "port": 8080, "protocol": "HTTP", "hostname": "twin.example.test"},
    ]})
    theirs = _object("Gateway", "theirs", {"gatewayClassName": "other", "listeners": [
        {"name": "http", "port": 80, "protocol": "HTTP"}]})
    route = _object("HTTPRoute", "lost", {
        "parentRefs": [{"name": "theirs"}], "hostnames": ["lost.example.test"],
        "rules": [{"backendRefs": [{"name": "shop", "port": 80}]}]})
    issued = TestCA().issue("foreign.example.test")
    foreign_secret = {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
                      "metadata": {"name": "theirs", "namespace": "other"},
                      "data": {"tls.crt": base64.b64encode(issued.chain_pem).decode(),
                               "tls.key": base64.b64encode(issued.key_pem).decode()}}
    with echo_backend("shop-backend") as shop_port:
        write_yaml(manifests / "secret.yaml", foreign_secret)
        write_yaml(manifests / "all.yaml",
                   CERTCTL_CLASS,
                   {"apiVersion": API, "kind": "GatewayClass", "metadata": {"name": "other"},
                    "spec": {"controllerName": "example.com/other"}},
                   gateway, theirs, route, *service_with_endpoints("shop", port=shop_port))
        with serving(manifests=manifests, state_dir=tmp_path / "state", pebble=pebble) as run:
            def listeners() -> dict[str, dict[str, Any]] | None:
                found = _listeners(run.store.get(kind="Gateway", namespace="default",
                                                 name="edge"))
                return found if len(found) == 4 else None

            found = eventually(listeners, timeout=10, what="the Gateway's listener statuses")
            assert _conditions(found["foreign"])["ResolvedRefs"] == ("False", "RefNotPermitted")
            assert _conditions(found["twin-a"])["Conflicted"] == ("True", "HostnameConflict")
            assert _conditions(found["twin-b"])["Programmed"] == ("False", "Invalid")
            assert _conditions(found["http"])["Programmed"] == ("True", "Programmed")
            assert (run.store.get(kind="HTTPRoute", namespace="default", name="lost")
                    .get("status") or {}).get("parents") in (None, [])
            assert run.store.get(kind="Gateway", namespace="default", name="theirs").get(
                "status") in (None, {})
            assert http_get(port=run.http_port, host="lost.example.test", path="/")[0] == 404
            # The Secret exists, but the Gateway may not use it: not served for its name.
            assert _presented_serial(run.https_port, "foreign.example.test") != issued.serial

            # A ReferenceGrant in the Secret's namespace lets it through, live.
            write_yaml(manifests / "grant.yaml", {
                "apiVersion": "gateway.networking.k8s.io/v1beta1", "kind": "ReferenceGrant",
                "metadata": {"name": "gateways-of-default", "namespace": "other"},
                "spec": {"from": [{"group": "gateway.networking.k8s.io", "kind": "Gateway",
                                   "namespace": "default"}],
                         "to": [{"group": "", "kind": "Secret", "name": "theirs"}]}})
            eventually(lambda: _presented_serial(run.https_port, "foreign.example.test")
                       == issued.serial, timeout=10, what="the granted Secret served by SNI")
            eventually(lambda: _conditions(listeners_now(run)["foreign"])["ResolvedRefs"]
                       == ("True", "ResolvedRefs"), timeout=10, what="ResolvedRefs True")


def test_listener_selects_route_namespaces_by_their_labels_live(tmp_path: Path,
                                                                pebble: PebbleServer) -> None:
    """`allowedRoutes.namespaces.from: Selector` in serve: the Namespace manifest's labels
    decide, and relabelling it detaches the route (NotAllowedByListeners, 404)."""
    manifests = _manifests(tmp_path)

    def namespace(labels: dict[str, str]) -> dict[str, Any]:
        return {"apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": "shop", "labels": labels}}

    gateway = _object("Gateway", "edge", {"gatewayClassName": "certctl", "listeners": [
        {"name": "http", "port": 80, "protocol": "HTTP", "allowedRoutes": {"namespaces": {
            "from": "Selector", "selector": {"matchLabels": {"edge": "allowed"}}}}}]})
    route = _object("HTTPRoute", "shop", {
        "parentRefs": [{"name": "edge", "namespace": "default"}],
        "hostnames": ["shop.example.test"],
        "rules": [{"backendRefs": [{"name": "shop", "port": 80}]}]}, namespace="shop")
    with echo_backend("shop-backend") as shop_port:
        write_yaml(manifests / "namespace.yaml", namespace({"edge": "allowed"}))
        write_yaml(manifests / "all.yaml",
                   CERTCTL_CLASS, gateway, route,
                   *service_with_endpoints("shop", port=shop_port, namespace="shop"))
        with serving(manifests=manifests, state_dir=tmp_path / "state", pebble=pebble) as run:
            eventually(lambda: http_get(port=run.http_port, host="shop.example.test",
                                        path="/")[0] == 200, timeout=10,
                       what="the route of a selected namespace served")

            def accepted() -> tuple[str, str] | None:
                obj = run.store.get(kind="HTTPRoute", namespace="shop", name="shop")
                parents = ((obj or {}).get("status") or {}).get("parents") or []
                return _conditions(parents[0]).get("Accepted") if parents else None

            assert eventually(accepted, timeout=10, what="route status") == ("True",
                                                                             "Accepted")
            assert _listeners(run.store.get(kind="Gateway", namespace="default", name="edge"))[
                "http"]["attachedRoutes"] == 1
            write_yaml(manifests / "namespace.yaml", namespace({"edge": "refused"}))
            eventually(lambda: http_get(port=run.http_port, host="shop.example.test",
                                        path="/")[0] == 404, timeout=10,
                       what="the route detached once its namespace is no longer selected")
            eventually(lambda: accepted() == ("False", "NotAllowedByListeners"), timeout=10,
                       what="NotAllowedByListeners")


def test_opted_in_httproute_gets_a_certificate_served_by_sni(tmp_path: Path,
                                                             pebble: PebbleServer) -> None:
    """cert-manager #6051/#7473 as an opt-in: the platform's Gateway has a wildcard HTTPS
    listener (its own Secret absent), not annotated; the app's HTTPRoute asks for a
    Certificate for its hostname, gets one from Pebble, served by SNI; a hostname the
    listener does not admit is left out."""
    gateway = _object("Gateway", "platform", {"gatewayClassName": "certctl", "listeners": [
        {"name": "http", "port": 80, "protocol": "HTTP"},
        {"name": "apps", "port": 443, "protocol": "HTTPS", "hostname": "*.apps.test",
         "tls": {"certificateRefs": [{"name": "apps-wildcard"}]}}]})
    route = _object("HTTPRoute", "shop", {
        "parentRefs": [{"name": "platform"}],
        "hostnames": ["shop.apps.test", "shop.elsewhere.test"],
        "rules": [{"backendRefs": [{"name": "shop", "port": 80}]}]}, annotations={
            "certctl.io/certificate": "true", "cert-manager.io/cluster-issuer": "pebble",
            "certctl.io/certificate-secret-name": "shop-route-tls"})
    with _served_with_pebble(tmp_path, pebble, gateway, route, service="shop") as run:
        roots = pebble.issuance_roots_pem()
        _issued_certificate(run, roots=roots, host="shop.apps.test", secret="shop-route-tls",
                            owner=("HTTPRoute", "shop"))
        assert https_get(port=run.https_port, host="shop.apps.test", path="/cart",
                         roots_pem=roots) == (200, "shop-backend shop.apps.test /cart https")
        # The Gateway was not annotated: no Certificate of its own.
        assert run.certificate("apps-wildcard") is None


def test_listener_set_adds_an_https_listener_issued_served_and_reported(
        tmp_path: Path, pebble: PebbleServer) -> None:
    """A team's ListenerSet adds an HTTPS listener to the platform's annotated Gateway
    (which allows ListenerSets of its namespace): gateway-shim issues its Secret with the
    ListenerSet's annotations over the Gateway's, served by SNI, a route naming the
    ListenerSet is routed there; statuses on both."""
    gateway = _object("Gateway", "platform", {
        "gatewayClassName": "certctl", "allowedListeners": {"namespaces": {"from": "Same"}},
        "listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}]}, annotations={
            "cert-manager.io/cluster-issuer": "pebble",
            "cert-manager.io/private-key-algorithm": "RSA"})
    team = _object("ListenerSet", "team", {"parentRef": {"name": "platform"}, "listeners": [
        {"name": "team-https", "port": 443, "protocol": "HTTPS", "hostname": "team.example.test",
         "tls": {"certificateRefs": [{"name": "team-tls"}]}}]},
        annotations={"cert-manager.io/private-key-algorithm": "ECDSA"})
    route = _object("HTTPRoute", "team", {
        "parentRefs": [{"name": "team", "kind": "ListenerSet", "sectionName": "team-https"}],
        "rules": [{"backendRefs": [{"name": "team", "port": 80}]}]})
    with _served_with_pebble(tmp_path, pebble, gateway, team, route, service="team") as run:
        roots = pebble.issuance_roots_pem()
        certificate = _issued_certificate(run, roots=roots, host="team.example.test",
                                          secret="team-tls", owner=("ListenerSet", "team"))
        assert certificate["spec"]["privateKey"] == {"algorithm": "ECDSA"}
        assert https_get(port=run.https_port, host="team.example.test", path="/x",
                         roots_pem=roots) == (200, "team-backend team.example.test /x https")
        # Attached to the HTTPS listener only: plain HTTP is not routed to it.
        assert http_get(port=run.http_port, host="team.example.test",
                        path="/x")[2] != "team-backend team.example.test /x http"

        def set_listeners() -> dict[str, dict[str, Any]] | None:
            found = _listeners(run.store.get(kind="ListenerSet", namespace="default",
                                             name="team"))
            entry = found.get("team-https")
            ready = entry is not None and _conditions(entry).get("ResolvedRefs") == (
                "True", "ResolvedRefs")
            return found if ready else None

        listeners = eventually(set_listeners, timeout=10,
                               what="the ListenerSet's listener with its Secret resolved")
        assert listeners["team-https"]["attachedRoutes"] == 1
        assert _conditions(run.store.get(kind="ListenerSet", namespace="default",
                                         name="team")) == {
            "Accepted": ("True", "Accepted"), "Programmed": ("True", "Programmed")}
        platform = run.store.get(kind="Gateway", namespace="default", name="platform")
        assert platform["status"]["attachedListenerSets"] == 1
        (parent,) = run.store.get(kind="HTTPRoute", namespace="default",
                                  name="team")["status"]["parents"]
        assert parent["parentRef"]["kind"] == "ListenerSet"
        assert _conditions(parent)["Accepted"] == ("True", "Accepted")
