"""Bad input: every mistake gives an error naming the object and the field, and nothing else.

What "nothing else" means here: the other objects of the same manifests still
issue and serve, a refused Certificate gets no ACME order and no Secret, and
a broken Secret is replaced rather than crashing anything.

Most cases run at reconciler level (a local store, a test clock, a local CA
standing in for the ACME CA's signature) so they are fast; the issuer cases
talk to real local HTTP servers that are unreachable or not ACME; one
`certctl serve` against Pebble holds many bad objects at once, with good
ones beside them, to show the whole path: log line, conditions, no orders,
served certificates.
"""

from __future__ import annotations

import base64
import http.server
import logging
import re
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509

from certctl.api import parsing
from certctl.api.errors import InvalidObject
from certctl.api.resources import ObjectKey
from certctl.controllers import ingress_shim
from certctl.controllers.reconciling import TransientError
from certctl.store import local
from tests.lifecycle import RecordingStore, TestCA, World
from tests.pebble import PebbleServer, free_port
from tests.serving import (
    cluster_issuer,
    dns_names,
    echo_backend,
    eventually,
    https_get,
    ingress,
    served_certificate,
    service_with_endpoints,
    serving,
    write_yaml,
)

LONG_LABEL = "l" * 60
LONG_HOST = f"{LONG_LABEL}.long.example.test"  # 78 characters: too long for a subject CN
TOO_LONG_HOST = ".".join(["a" * 63] * 3 + ["b" * 61]) + ".test"  # 258 characters
LABEL_OVER_63 = f"{'x' * 64}.example.test"
GARBAGE = base64.b64encode(b"-----BEGIN CERTIFICATE-----\nnot a certificate\n").decode()


@pytest.fixture
def world(tmp_path: Path) -> World:
    world = World(tmp_path)
    world.add_acme_issuer()
    return world


def _csr(order: dict[str, Any]) -> x509.CertificateSigningRequest:
    return x509.load_pem_x509_csr(base64.b64decode(order["spec"]["request"]))


def _sans(csr: x509.CertificateSigningRequest) -> x509.SubjectAlternativeName:
    return csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value


def _refused(world: World, name: str) -> dict[str, Any]:
    """Reconcile; the Certificate must be BadConfig with no Order and no Secret."""
    world.reconcile(name)
    ready = world.condition(name, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "BadConfig"), ready
    assert world.orders(name) == [], "no ACME order for refused input"
    assert world.secret(name) is None, "no Secret for refused input"
    return ready


# --- Certificates: names -------------------------------------------------------------


def test_ip_address_only_a_dns01_solver_could_prove_is_refused_before_any_order(
    world: World,
) -> None:
    world.add_acme_issuer("dns")
    issuer = world.issuer("dns")
    issuer["spec"]["acme"]["solvers"] = [{"dns01": {"rfc2136": {"nameserver": "127.0.0.1:53"}}}]
    world.store.replace(obj=issuer)
    world.add_certificate("ip", issuer="dns", dnsNames=[], ipAddresses=["192.0.2.10"])

    ready = _refused(world, "ip")

    assert ready["message"].startswith(
        "spec.ipAddresses[0]: 192.0.2.10: ClusterIssuer dns spec.acme.solvers[0] is a DNS-01 "
        "solver, and DNS-01 cannot prove an IP address (RFC 8738)"), ready
    assert ("ip", "Warning", "BadConfig", ready["message"]) in world.store.events


def test_ip_address_as_common_name_with_an_acme_issuer_is_refused(world: World) -> None:
    world.add_certificate("ipcn", dnsNames=[], commonName="192.0.2.10",
                          ipAddresses=["192.0.2.10"])

    ready = _refused(world, "ipcn")

    assert ready["message"].startswith("spec.commonName: 192.0.2.10 is an IP address"), ready


def test_ip_address_with_an_http01_acme_issuer_is_ordered_without_common_name(
    world: World,
) -> None:
    world.add_certificate("ip", dnsNames=[], ipAddresses=["192.0.2.10", "2001:DB8::1"])

    world.reconcile("ip")

    [order] = world.orders("ip")
    assert order["spec"]["ipAddresses"] == ["192.0.2.10", "2001:db8::1"]
    csr = _csr(order)
    assert len(csr.subject) == 0, "an IP-only request has no common name"
    assert csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).critical
    assert [str(ip) for ip in _sans(csr).get_values_for_type(x509.IPAddress)] == [
        "192.0.2.10", "2001:db8::1"]


def test_ip_address_with_a_ca_issuer_is_issued_in_the_san(world: World) -> None:
    world.store.create(obj=TestCA(now=world.clock.now).secret(namespace="certctl",
                                                               name="root-ca"))
    world.add_local_issuer("ca", {"ca": {"secretName": "root-ca"}})
    world.add_certificate("ip", issuer="ca", dnsNames=[], ipAddresses=["2001:DB8::0:1"])

    world.reconcile("ip")

    leaf = world.contents("ip").leaf
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["2001:db8::1"]


def test_more_than_100_names_are_fine_for_a_ca_issuer(world: World) -> None:
    world.store.create(obj=TestCA(now=world.clock.now).secret(namespace="certctl",
                                                               name="root-ca"))
    world.add_local_issuer("ca", {"ca": {"secretName": "root-ca"}})
    world.add_certificate("many", issuer="ca",
                          dnsNames=[f"n{i}.example.test" for i in range(150)])

    world.reconcile("many")

    assert world.condition("many", "Ready")["status"] == "True"
    leaf = world.contents("many").leaf
    assert len(leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value) == 150


def test_wildcard_with_only_an_http01_solver_is_refused(world: World) -> None:
    world.add_certificate("wild", dnsNames=["a.example.test", "*.example.test"])

    ready = _refused(world, "wild")

    assert ready["message"] == ("spec.dnsNames[1]: *.example.test: wildcard names need a "
                                "DNS-01 solver; the issuer only has HTTP-01 solvers that "
                                "could match")


def test_more_than_100_names_are_refused_and_100_are_ordered(world: World) -> None:
    world.add_certificate("many", dnsNames=[f"n{i}.example.test" for i in range(101)])
    world.add_certificate("hundred", dnsNames=[f"h{i}.example.test" for i in range(100)])

    ready = _refused(world, "many")
    world.reconcile("hundred")

    assert ready["message"].startswith("spec.dnsNames: 101 names, more than the 100 Let's "
                                       "Encrypt allows in one certificate; split them")
    assert len(_sans(_csr(world.pending_order("hundred")))) == 100


def test_duplicate_names_appear_once_in_the_san_without_an_error(world: World) -> None:
    world.add_certificate("dup", dnsNames=["dup.example.test", "DUP.Example.Test",
                                           "www.dup.example.test", "dup.example.test"])

    world.issue("dup")

    assert world.condition("dup", "Ready")["status"] == "True"
    leaf = world.contents("dup").leaf
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["dup.example.test",
                                                       "www.dup.example.test"]


def test_idn_names_are_issued_in_punycode(world: World) -> None:
    world.add_certificate("idn", dnsNames=["Bücher.example.test", "xn--bcher-kva.example.test"])

    world.issue("idn")

    assert world.condition("idn", "Ready")["status"] == "True"
    leaf = world.contents("idn").leaf
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["xn--bcher-kva.example.test"]
    # The normalised spec matches what was issued: no reissue loop.
    world.reconcile("idn")
    assert len(world.orders("idn")) == 1


def test_name_over_64_characters_is_kept_in_the_san_and_out_of_the_subject(
    world: World,
) -> None:
    world.add_certificate("long", dnsNames=[LONG_HOST])

    world.reconcile("long")

    csr = _csr(world.pending_order("long"))
    assert len(csr.subject) == 0
    extension = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert extension.critical, "RFC 5280: SAN is critical when the subject is empty"
    assert extension.value.get_values_for_type(x509.DNSName) == [LONG_HOST]


@pytest.mark.parametrize(
    ("spec", "field", "message"),
    [
        ({"dnsNames": [TOO_LONG_HOST]}, "spec.dnsNames[0]",
         "is longer than 253 characters"),
        ({"dnsNames": ["ok.example.test", LABEL_OVER_63]}, "spec.dnsNames[1]",
         f"label {'x' * 64!r} is longer than 63 characters"),
        ({"dnsNames": ["bad_host!.example.test"]}, "spec.dnsNames[0]",
         "may contain only letters, digits and hyphens"),
        ({"dnsNames": ["☃.example.test"]}, "spec.dnsNames[0]",
         "'☃.example.test' is not a valid internationalised name: "),
        ({"commonName": LONG_HOST}, "spec.commonName",
         "must be at most 64 characters; put long names in dnsNames"),
        ({"ipAddresses": ["192.0.2.300"]}, "spec.ipAddresses[0]",
         "'192.0.2.300' is not an IP address"),
        ({"dnsName": ["typo.example.test"]}, "spec.dnsName",
         "unknown field; did you mean 'dnsNames'?"),
        ({"dnsNames": "one.example.test"}, "spec.dnsNames",
         "must be a list, got a string"),
        ({"dnsNames": ["a.example.test", 7]}, "spec.dnsNames[1]",
         "must be a string, got a number"),
        ({"duration": 90}, "spec.duration",
         "must be a string, got a number; quote the value"),
        ({"privateKey": {"size": "4096"}}, "spec.privateKey.size",
         "must be an integer, got a string"),
        ({"issuerRef": "acme"}, "spec.issuerRef", "must be a mapping, got a string"),
    ],
    ids=["name-over-253", "label-over-63", "not-ldh", "not-idna", "common-name-over-64",
         "bad-ip",
         "unknown-field", "list-as-string", "number-in-list", "number-as-duration",
         "string-as-size", "string-as-mapping"],
)
def test_invalid_certificate_is_not_ready_naming_the_field(
    world: World, spec: dict[str, Any], field: str, message: str
) -> None:
    world.add_certificate("bad", **spec)

    ready = _refused(world, "bad")

    assert ready["message"].startswith(f"{field}: ")
    assert message in ready["message"]
    # The log line and the event name the object too.
    assert any(obj == "bad" and text.startswith(f"{field}: ")
               for obj, _, _, text in world.store.events)


def test_invalid_certificate_does_not_stop_its_neighbours(world: World) -> None:
    world.add_certificate("bad", dnsNames=[TOO_LONG_HOST])
    world.add_certificate("good")

    _refused(world, "bad")
    world.issue("good")

    assert world.condition("good", "Ready")["status"] == "True"


# --- Certificates: issuers and Secrets -------------------------------------------------


def test_issuer_that_does_not_exist_is_named_and_nothing_is_ordered(world: World) -> None:
    world.add_certificate("lost", issuer="nowhere")

    world.reconcile("lost")

    ready = world.condition("lost", "Ready")
    assert (ready["status"], ready["reason"], ready["message"]) == (
        "False", "IssuerNotFound", "ClusterIssuer nowhere not found")
    assert world.events("lost") == [("Warning", "IssuerNotFound",
                                     "spec.issuerRef: ClusterIssuer nowhere not found")]
    assert world.orders("lost") == []
    assert world.secret("lost") is None


def test_issuer_of_the_wrong_kind_is_named_with_the_fix(world: World) -> None:
    world.add_certificate("kind", issuerRef={"name": "acme"})  # kind defaults to Issuer

    world.reconcile("kind")

    ready = world.condition("kind", "Ready")
    assert (ready["reason"], ready["message"]) == (
        "IssuerNotFound", "Issuer acme not found; a ClusterIssuer acme exists: set "
        "issuerRef.kind: ClusterIssuer (on an Ingress, use the cert-manager.io/cluster-issuer "
        "annotation)")
    assert world.orders("kind") == []


def test_issuer_that_is_not_ready_is_named_with_its_reason_and_nothing_is_ordered(
    world: World,
) -> None:
    url = f"http://127.0.0.1:{free_port()}/directory"  # nothing listens there
    world.store.create(obj={
        "apiVersion": "certctl.io/v1", "kind": "ClusterIssuer", "metadata": {"name": "down"},
        "spec": {"acme": {"server": url, "privateKeySecretRef": {"name": "down-account"}}},
    })
    with pytest.raises(TransientError):
        world.reconcile_issuer("down")
    world.add_certificate("waiting", issuer="down")

    world.reconcile("waiting")

    ready = world.condition("waiting", "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "IssuerNotReady")
    assert ready["message"].startswith("ClusterIssuer down is not ready: Failed to register "
                                       f"ACME account: cannot reach ACME server {url}: ")
    assert world.orders("waiting") == []


@pytest.mark.parametrize(
    "data",
    [
        {"tls.crt": GARBAGE, "tls.key": GARBAGE},
        {"tls.crt": "not base64 at all!", "tls.key": ""},
        {"tls.crt": 12, "tls.key": ["a list"]},
        ["not", "a", "mapping"],
    ],
    ids=["garbage-pem", "not-base64", "wrong-types", "data-not-a-mapping"],
)
def test_existing_tls_secret_with_garbage_is_reissued(world: World, data: Any) -> None:
    world.store.create(obj={"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
                            "metadata": {"name": "web", "namespace": "default"},
                            "data": data})
    world.add_certificate("web")

    world.reconcile("web")

    issuing = world.condition("web", "Issuing")
    assert issuing["reason"] == "InvalidCertificate"
    assert issuing["message"].startswith("Issuing certificate as Secret contains invalid data: ")
    world.complete_order("web")
    world.reconcile("web")
    assert world.condition("web", "Ready")["status"] == "True"
    assert world.contents("web").leaf is not None


def test_ca_issuer_with_garbage_pem_is_not_ready_and_signs_nothing(tmp_path: Path) -> None:
    world = World(tmp_path)
    ca_secret = TestCA(now=world.clock.now).secret(namespace="certctl", name="root-ca")
    ca_secret["data"]["tls.key"] = GARBAGE
    world.store.create(obj=ca_secret)
    with pytest.raises(TransientError):
        world.add_local_issuer("ca", {"ca": {"secretName": "root-ca"}})
    world.add_certificate("web", issuer="ca")

    world.reconcile("web")

    issuer_ready = world.issuer("ca")["status"]["conditions"][0]
    assert issuer_ready["reason"] == "ErrGetKeyPair"
    assert issuer_ready["message"].startswith(
        "Error getting keypair for CA issuer: Secret certctl/root-ca: tls.key does not parse")
    ready = world.condition("web", "Ready")
    assert (ready["reason"], ready["message"]) == ("IssuerNotReady",
                                                   f"ClusterIssuer ca is not ready: "
                                                   f"{issuer_ready['message']}")
    assert world.secret("web") is None


# --- ACME servers that are not there or not ACME ----------------------------------------


class _NotAcme(http.server.BaseHTTPRequestHandler):
    """A web server that is up but is no ACME CA: a home page, some JSON, 404s."""

    def do_GET(self) -> None:
        if self.path == "/home":
            body, content_type, status = b"<html>welcome</html>", "text/html", 200
        elif self.path == "/api":
            body, content_type, status = b'{"status": "ok"}', "application/json", 200
        else:
            body, content_type, status = b"no such page", "text/plain", 404
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def not_acme() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NotAcme)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(
    ("server", "reason"),
    [
        ("http://127.0.0.1:{closed}/directory", "cannot reach ACME server {url}: "),
        ("https://acme.certctl-test.invalid/directory", "cannot reach ACME server {url}: "),
        ("http://{web}/home", "{url} is not an ACME directory: Unexpected response "
         "Content-Type: text/html"),
        ("http://{web}/api", "{url} is not an ACME directory: JSON without newNonce, "
         "newAccount, newOrder"),
        ("http://{web}/directory", "{url} is not an ACME directory: HTTP 404 (text/plain)"),
        ("https://{web}/directory", "TLS connection to ACME server {url} failed: "),
    ],
    ids=["connection-refused", "no-such-host", "html-page", "other-json", "not-found",
         "https-to-plain-http"],
)
def test_acme_issuer_that_cannot_register_is_not_ready_naming_url_and_reason(
    tmp_path: Path, not_acme: str, server: str, reason: str
) -> None:
    world = World(tmp_path)
    url = server.format(closed=free_port(), web=not_acme)
    world.store.create(obj={
        "apiVersion": "certctl.io/v1", "kind": "ClusterIssuer", "metadata": {"name": "acme"},
        "spec": {"acme": {"server": url, "privateKeySecretRef": {"name": "acme-account"}}},
    })

    with pytest.raises(TransientError, match="ClusterIssuer acme: "):
        world.reconcile_issuer("acme")

    ready = world.issuer("acme")["status"]["conditions"][0]
    assert (ready["status"], ready["reason"]) == ("False", "ErrRegisterACMEAccount")
    assert ready["message"].startswith("Failed to register ACME account: "
                                       + reason.format(url=url))
    assert any(obj == "acme" and reason_ == "ErrRegisterACMEAccount"
               for obj, _, reason_, _ in world.store.events)


def test_acme_account_key_secret_with_garbage_pem_is_named_and_not_quoted(
    tmp_path: Path,
) -> None:
    world = World(tmp_path)
    world.store.create(obj={"apiVersion": "v1", "kind": "Secret",
                            "metadata": {"name": "acme-account", "namespace": "certctl"},
                            "data": {"tls.key": GARBAGE}})
    world.store.create(obj={
        "apiVersion": "certctl.io/v1", "kind": "ClusterIssuer", "metadata": {"name": "acme"},
        "spec": {"acme": {"server": f"http://127.0.0.1:{free_port()}/directory",
                          "privateKeySecretRef": {"name": "acme-account"}}},
    })

    with pytest.raises(TransientError):
        world.reconcile_issuer("acme")

    ready = world.issuer("acme")["status"]["conditions"][0]
    assert (ready["status"], ready["reason"]) == ("False", "ErrRegisterACMEAccount")
    assert "Secret certctl/acme-account" in ready["message"]
    assert "not a certificate" not in ready["message"], "the Secret's bytes are never quoted"


@pytest.mark.parametrize(
    ("spec", "field", "message"),
    [
        ({"acme": {"sever": "https://x.test/dir", "privateKeySecretRef": {"name": "k"}}},
         "spec.acme.sever", "unknown field; did you mean 'server'?"),
        ({"acme": {"server": "acme.example.test/directory",
                   "privateKeySecretRef": {"name": "k"}}},
         "spec.acme.server", "is not an http(s) URL"),
        ({"acme": {"server": "https://x.test/dir", "privateKeySecretRef": "k"}},
         "spec.acme.privateKeySecretRef", "must be a mapping, got a string"),
        ({"acme": {"server": "https://x.test/dir", "privateKeySecretRef": {"name": "k"},
                   "solvers": [{"http01": {"ingress": {}},
                               "dns01": {"rfc2136": {"nameserver": "ns.example.test"}}}]}},
         "spec.acme.solvers[0]", "exactly one of http01, dns01 or tlsALPN01 must be set"),
        ({"ca": {"secretName": "Not_A_Name"}}, "spec.ca.secretName",
         "is not a valid object name"),
    ],
    ids=["unknown-field", "not-a-url", "string-as-mapping", "two-solver-types",
         "bad-secret-name"],
)
def test_invalid_issuer_is_not_ready_naming_the_field(
    tmp_path: Path, spec: dict[str, Any], field: str, message: str
) -> None:
    world = World(tmp_path)

    world.add_local_issuer("bad", spec)

    ready = world.issuer("bad")["status"]["conditions"][0]
    assert (ready["status"], ready["reason"]) == ("False", "BadConfig")
    assert ready["message"].startswith(f"{field}: ")
    assert message in ready["message"]
    world.add_certificate("web", issuer="bad")
    world.reconcile("web")
    certificate_ready = world.condition("web", "Ready")
    assert certificate_ready["reason"] == "IssuerNotReady"
    assert certificate_ready["message"].startswith(f"ClusterIssuer bad is invalid: {field}: ")
    assert world.orders("web") == []


# --- Ingresses ---------------------------------------------------------------------------


def _ingress(name: str, *, tls: list[dict[str, Any]], annotations: dict[str, str] | None = None,
             rules_hosts: tuple[str, ...] = ()) -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": name, "namespace": "default", "uid": f"uid-{name}",
                     "annotations": {"cert-manager.io/cluster-issuer": "acme",
                                     **(annotations or {})}},
        "spec": {"tls": tls, "rules": [
            {"host": host, "http": {"paths": [{
                "path": "/", "pathType": "Prefix",
                "backend": {"service": {"name": "web", "port": {"number": 80}}}}]}}
            for host in rules_hosts]},
    }


def _shim(store: RecordingStore, obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    store.create(obj=obj)
    ingress_shim.reconcile(store=store, key=ObjectKey(kind="Ingress", namespace="default",
                                                      name=obj["metadata"]["name"]))
    return {c["metadata"]["name"]: c["spec"]
            for c in store.list(kind="Certificate", namespace="default")}


@pytest.fixture
def store(tmp_path: Path) -> RecordingStore:
    return RecordingStore(state_dir=tmp_path / "state")


def test_ingress_hosts_are_punycoded_deduplicated_and_ips_split_out(
    store: RecordingStore,
) -> None:
    specs = _shim(store, _ingress("web", tls=[{"secretName": "web-tls", "hosts": [
        "Bücher.example.test", "xn--bcher-kva.example.test", "www.example.test",
        "WWW.example.test", "192.0.2.1", "2001:DB8::1", "2001:db8:0::1"]}],
        rules_hosts=("bücher.example.test",)))

    assert specs["web-tls"]["dnsNames"] == ["xn--bcher-kva.example.test", "www.example.test"]
    assert specs["web-tls"]["ipAddresses"] == ["192.0.2.1", "2001:db8::1"]
    assert [e for e in store.events if e[2] == "BadConfig"] == []
    parsed = parsing.parse_ingress(store.get(kind="Ingress", namespace="default", name="web")
                                   or {})
    assert parsed.rules[0].host == "xn--bcher-kva.example.test", "routing uses the A-label"


@pytest.mark.parametrize(
    ("tls", "field", "message"),
    [
        ([{"secretName": "a-tls", "hosts": ["ok.example.test", TOO_LONG_HOST]}],
         "spec.tls[0].hosts[1]", "is longer than 253 characters"),
        ([{"secretName": "a-tls", "hosts": ["ok.example.test"]},
          {"secretName": "b-tls", "hosts": ["ok2.example.test", LABEL_OVER_63]}],
         "spec.tls[1].hosts[1]", "is longer than 63 characters"),
        ([{"secretName": "a-tls", "hosts": "ok.example.test"}],
         "spec.tls[0].hosts", "must be a list, got a string"),
        ([{"secretName": "a-tls", "hosts": ["*.*.example.test"]}],
         "spec.tls[0].hosts[0]", "a wildcard must be the whole first label"),
        ([{"secretName": "A_TLS", "hosts": ["ok.example.test"]}],
         "spec.tls[0].secretName", "is not a valid object name"),
    ],
    ids=["host-over-253", "label-over-63", "hosts-as-string", "double-wildcard",
         "bad-secret-name"],
)
def test_invalid_ingress_is_reported_naming_the_field_and_gets_no_certificate(
    store: RecordingStore, tls: list[dict[str, Any]], field: str, message: str
) -> None:
    specs = _shim(store, _ingress("web", tls=tls))

    assert specs == {}
    events = [(reason, text) for obj, _, reason, text in store.events if obj == "web"]
    assert len(events) == 1
    assert events[0][0] == "BadConfig"
    assert events[0][1].startswith(f"{field}: ")
    assert message in events[0][1]


def test_unknown_ingress_fields_are_named_with_a_suggestion_and_ignored(
    store: RecordingStore,
) -> None:
    obj = _ingress("web", tls=[{"secretname": "typo-tls", "hosts": ["typo.example.test"]},
                               {"secretName": "ok-tls", "hosts": ["ok.example.test"]}],
                   rules_hosts=("ok.example.test",))
    obj["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["prot"] = {"number": 1}
    obj["spec"]["tlsOptions"] = {"minVersion": "1.3"}

    specs = _shim(store, obj)

    assert list(specs) == ["ok-tls"], "the valid entry still gets its Certificate"
    warnings = [(reason, text) for _, type_, reason, text in store.events
                if type_ == "Warning"]
    assert warnings[:3] == [
        ("UnknownField", "spec.tls[0].secretname: unknown field, ignored; did you mean "
         "'secretName'?"),
        ("UnknownField", "spec.rules[0].http.paths[0].backend.service.prot: unknown field, "
         "ignored; did you mean 'port'?"),
        ("UnknownField", "spec.tlsOptions: unknown field, ignored"),
    ]
    assert ("BadConfig", "spec.tls[0].secretName: required to issue a certificate") in warnings


def test_tls_entry_without_hosts_or_secret_is_skipped_and_the_others_issue(
    store: RecordingStore,
) -> None:
    specs = _shim(store, _ingress("web", tls=[
        {"hosts": ["nosecret.example.test"]},
        {"secretName": "nohosts-tls"},
        {"secretName": "ok-tls", "hosts": ["ok.example.test"]},
    ]))

    assert list(specs) == ["ok-tls"]
    assert [text for _, _, reason, text in store.events if reason == "BadConfig"] == [
        "spec.tls[0].secretName: required to issue a certificate",
        "spec.tls[1].hosts: at least one host is required to issue a certificate",
    ]


def test_common_name_annotation_over_64_characters_goes_to_the_san_only(
    store: RecordingStore,
) -> None:
    specs = _shim(store, _ingress(
        "web", tls=[{"secretName": "web-tls", "hosts": ["web.example.test"]}],
        annotations={"cert-manager.io/common-name": LONG_HOST.upper()}))

    spec = specs["web-tls"]
    assert "commonName" not in spec
    assert spec["dnsNames"] == ["web.example.test", LONG_HOST]
    warning = [text for _, _, reason, text in store.events
               if reason == ingress_shim.COMMON_NAME_TOO_LONG]
    assert warning == [
        f"metadata.annotations[cert-manager.io/common-name]: {LONG_HOST!r} is 78 characters, "
        "more than the 64 a certificate subject may hold: it is left out of the subject and "
        "kept in the SAN (spec.dnsNames), which is what clients check"]
    parsing.parse_certificate({"apiVersion": "certctl.io/v1", "kind": "Certificate",
                               "metadata": {"name": "web-tls"}, "spec": spec})


def test_common_name_annotation_over_64_characters_that_is_no_dns_name_is_refused(
    store: RecordingStore,
) -> None:
    long_text = "The Example Company Web Shop Front End Certificate For Production Use"
    specs = _shim(store, _ingress(
        "web", tls=[{"secretName": "web-tls", "hosts": ["web.example.test"]}],
        annotations={"cert-manager.io/common-name": long_text}))

    assert specs == {}
    [text] = [text for _, _, reason, text in store.events if reason == "BadConfig"]
    assert text.startswith("metadata.annotations[cert-manager.io/common-name]: is 69 "
                           "characters, more than the 64 a certificate subject may hold, and "
                           "not a DNS name that could go in the SAN instead: ")


def test_common_name_annotation_of_64_characters_stays_the_common_name(
    store: RecordingStore,
) -> None:
    name = f"{'c' * 47}.example.test"
    assert len(name) == 60
    specs = _shim(store, _ingress(
        "web", tls=[{"secretName": "web-tls", "hosts": ["web.example.test"]}],
        annotations={"cert-manager.io/common-name": name}))

    assert specs["web-tls"]["commonName"] == name
    assert specs["web-tls"]["dnsNames"] == ["web.example.test"]


# --- manifests -----------------------------------------------------------------------------


def test_manifests_load_with_libyaml_when_pyyaml_has_it() -> None:
    if yaml.__with_libyaml__:
        assert local._SafeLoader is yaml.CSafeLoader
    else:
        assert local._SafeLoader is yaml.SafeLoader


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("kind: Ingress\nmetadata: [unclosed\n",
         "invalid YAML at line 3, column 1: did not find expected ',' or ']' (while parsing a "
         "flow sequence that started at line 2, column 11)"),
        ("kind: Secret\nmetadata:\n  name: a\n\tnamespace: b\n",
         "invalid YAML at line 4, column 1: "),
        ("kind: Secret\nmetadata: name: a\n", "invalid YAML at line 2, column 15: "
         "mapping values are not allowed"),
        ("kind: Secret\nmetadata: !!python/object:os.system {}\n",
         "invalid YAML at line 2, column 11: could not determine a constructor for the tag"),
    ],
    ids=["unclosed-bracket", "tab-indent", "colon-in-value", "python-tag"],
)
def test_malformed_yaml_names_file_and_line_and_other_files_still_load(
    tmp_path: Path, text: str, message: str, caplog: pytest.LogCaptureFixture
) -> None:
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    broken = manifests / "broken.yaml"
    broken.write_text(text)
    (manifests / "latin1.yaml").write_bytes("kind: Secret\n# caf\xe9\n".encode("latin-1"))
    write_yaml(manifests / "good.yaml", {"apiVersion": "v1", "kind": "Secret",
                                         "metadata": {"name": "fine"}})
    store = local.LocalStore(manifests_dir=manifests, state_dir=tmp_path / "state")

    errors = store.reload_manifests()

    by_file = {error.source: error.message for error in errors}
    assert by_file[str(broken)].startswith(message)
    assert by_file[str(manifests / "latin1.yaml")].startswith("cannot read: 'utf-8' codec")
    assert f"{broken}: {message}" in caplog.text
    assert store.get(kind="Secret", namespace="default", name="fine") is not None


def test_manifest_document_errors_name_file_document_and_field(tmp_path: Path) -> None:
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    path = manifests / "docs.yaml"
    documents: list[Any] = [
        ["just", "a list"],
        {"apiVersion": "v1", "kind": "Secret", "metadata": {}},
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": 42}},
        {"apiVersion": "v1", "kind": 3, "metadata": {"name": "x"}},
        {"apiVersion": "v1", "kind": "Secret", "metadata": "x"},
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "x", "namespace": 7}},
        {"apiVersion": "networking.k8s.io/v1", "kind": "Ingresses", "metadata": {"name": "x"}},
        {"apiVersion": "cert-manager.io/v1", "kind": "CertificateRequest",
         "metadata": {"name": "x"}},
        # Kinds certctl does not read are loaded and left alone: a folder may hold a whole app.
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "app"}},
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "fine"}},
    ]
    path.write_text(yaml.safe_dump_all(documents))
    store = local.LocalStore(manifests_dir=manifests, state_dir=tmp_path / "state")

    errors = store.reload_manifests()

    assert [str(error) for error in errors] == [
        f"{path}#0: expected a Kubernetes object (a mapping), got a list",
        f"{path}#1: Secret: metadata.name: required",
        f"{path}#2: Secret: metadata.name: must be a string, got a number; quote the value",
        f"{path}#3: kind: must be a string, got a number",
        f"{path}#4: Secret: metadata: must be a mapping, got a string",
        f"{path}#5: Secret x: metadata.namespace: must be a string, got a number; quote the "
        "value",
        f"{path}#6: Ingresses x: kind: unknown kind 'Ingresses'; did you mean 'Ingress'?",
        f"{path}#7: CertificateRequest x: kind: certctl does not read CertificateRequest "
        "objects (cert-manager.io/v1); it reads Certificate, Challenge, ClusterIssuer, Issuer, "
        "Order",
    ]
    assert store.get(kind="Secret", namespace="default", name="fine") is not None


# --- the whole path: one certctl serve, many bad objects and some good ones -------------------


def _served_names(port: int, host: str, roots: bytes) -> list[str] | None:
    leaf = served_certificate(port=port, server_name=host, roots_pem=roots)
    names = dns_names(leaf)
    return names if host in names else None


def _condition(run: Any, kind: str, name: str, namespace: str | None = "default",
               type: str = "Ready") -> dict[str, Any]:
    obj = run.store.get(kind=kind, namespace=namespace, name=name) or {}
    for condition in (obj.get("status") or {}).get("conditions") or []:
        if condition["type"] == type and condition.get("reason"):
            found: dict[str, Any] = condition
            return found
    return {}


def _tls_ingress(name: str, *, tls_hosts: list[str], rule_hosts: list[str],
                 secret_name: str, issuer: str = "pebble") -> dict[str, Any]:
    obj = ingress(name, hosts=rule_hosts, secret_name=secret_name,
                  annotations={"cert-manager.io/cluster-issuer": issuer})
    obj["spec"]["tls"][0]["hosts"] = tls_hosts
    return obj


def _with_annotation(obj: dict[str, Any], key: str, value: str) -> dict[str, Any]:
    obj["metadata"]["annotations"][key] = value
    return obj


# Pebble copies a name over 64 characters into the subject CN, which cryptography warns
# about when certctl inspects the issued certificate; certctl itself asked for no CN.
@pytest.mark.filterwarnings("ignore:Attribute's length must be >= 1 and <= 64")
def test_serve_reports_each_bad_object_and_serves_the_good_ones(
    tmp_path: Path, pebble: PebbleServer, not_acme: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    unreachable = f"http://127.0.0.1:{free_port()}/directory"
    write_yaml(manifests / "issuers.yaml", cluster_issuer(pebble), {
        "apiVersion": "cert-manager.io/v1", "kind": "ClusterIssuer",
        "metadata": {"name": "unreachable"},
        "spec": {"acme": {"server": unreachable,
                          "privateKeySecretRef": {"name": "unreachable-account"}}},
    }, {
        "apiVersion": "cert-manager.io/v1", "kind": "ClusterIssuer",
        "metadata": {"name": "not-acme"},
        "spec": {"acme": {"server": f"http://{not_acme}/home",
                          "privateKeySecretRef": {"name": "not-acme-account"}}},
    }, {
        "apiVersion": "cert-manager.io/v1", "kind": "ClusterIssuer",
        "metadata": {"name": "typo"},
        "spec": {"acme": {"sever": pebble.directory_url,
                          "privateKeySecretRef": {"name": "typo-account"}}},
    })
    (manifests / "broken.yaml").write_text(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: [oops\n")
    write_yaml(manifests / "certificates.yaml", {
        "apiVersion": "cert-manager.io/v1", "kind": "Certificate",
        "metadata": {"name": "typo", "namespace": "default"},
        "spec": {"secretName": "typo-tls", "dnsName": ["typo.example.test"],
                 "issuerRef": {"name": "pebble", "kind": "ClusterIssuer"}},
    }, {
        "apiVersion": "cert-manager.io/v1", "kind": "Certificate",
        "metadata": {"name": "cn", "namespace": "default"},
        "spec": {"secretName": "cn-tls", "commonName": LONG_HOST,
                 "issuerRef": {"name": "pebble", "kind": "ClusterIssuer"}},
    })
    many = [f"m{i}.example.test" for i in range(101)]
    with echo_backend("idn-backend") as idn_port:
        write_yaml(
            manifests / "ingresses.yaml",
            ingress("good", hosts=["good.example.test"], secret_name="good-tls"),
            ingress("idn", hosts=["bücher.example.test"], secret_name="idn-tls", backend="idn"),
            *service_with_endpoints("idn", port=idn_port),
            ingress("long", hosts=[LONG_HOST], secret_name="long-tls"),
            _tls_ingress("dup", tls_hosts=["dup.example.test", "DUP.example.test",
                                           "dup.example.test"],
                         rule_hosts=["dup.example.test"], secret_name="dup-tls"),
            _tls_ingress("toolong", tls_hosts=["fine.example.test", TOO_LONG_HOST],
                         rule_hosts=["fine.example.test"], secret_name="toolong-tls"),
            _tls_ingress("label", tls_hosts=[LABEL_OVER_63],
                         rule_hosts=["label.example.test"], secret_name="label-tls"),
            _tls_ingress("many", tls_hosts=many, rule_hosts=many[:1], secret_name="many-tls"),
            _with_annotation(_tls_ingress("ip", tls_hosts=["ip.example.test", "127.0.0.1"],
                                          rule_hosts=["ip.example.test"], secret_name="ip-tls"),
                             "cert-manager.io/common-name", "127.0.0.1"),
            ingress("wild", hosts=["*.wild.example.test"], secret_name="wild-tls"),
            _tls_ingress("wrongtype", tls_hosts="wrongtype.example.test",  # type: ignore[arg-type]
                         rule_hosts=["wrongtype.example.test"], secret_name="wrongtype-tls"),
            {**ingress("typoing", hosts=["typoing.example.test"], secret_name=None),
             "spec": {"tls": [{"hosts": ["typoing.example.test"], "secretname": "typo-tls"}]}},
            ingress("lost", hosts=["lost.example.test"], secret_name="lost-tls",
                    annotations={"cert-manager.io/cluster-issuer": "nowhere"}),
            ingress("down", hosts=["down.example.test"], secret_name="down-tls",
                    annotations={"cert-manager.io/cluster-issuer": "unreachable"}),
            # A pre-seeded tls Secret holding garbage: replaced, not a crash.
            {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
             "metadata": {"name": "garbage-tls", "namespace": "default"},
             "data": {"tls.crt": GARBAGE, "tls.key": GARBAGE}},
            ingress("garbage", hosts=["garbage.example.test"], secret_name="garbage-tls"),
            {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
             "metadata": {"name": "listdata-tls", "namespace": "default"},
             "data": ["not", "a", "mapping"]},
            ingress("listdata", hosts=["listdata.example.test"], secret_name="listdata-tls"),
        )
        with serving(manifests=manifests, state_dir=tmp_path / "state", pebble=pebble) as run:
            roots = pebble.issuance_roots_pem()
            port = run.https_port
            for host in ("good.example.test", "xn--bcher-kva.example.test", LONG_HOST,
                         "dup.example.test", "garbage.example.test",
                         "listdata.example.test"):
                eventually(partial(_served_names, port, host, roots), timeout=60,
                           what=f"a verified certificate for {host}")
            assert _served_names(port, "dup.example.test", roots) == ["dup.example.test"]
            assert _served_names(port, "xn--bcher-kva.example.test", roots) == [
                "xn--bcher-kva.example.test"]
            # certctl asks for no CN (Pebble then copies the name into the CN whatever its
            # length; Let's Encrypt leaves a name over 64 characters out).
            [long_order] = [o for o in run.store.list(kind="Order", namespace="default")
                            if o["metadata"]["labels"]["certctl.io/certificate-name"]
                            == "long-tls"]
            assert len(_csr(long_order).subject) == 0
            assert _served_names(port, LONG_HOST, roots) == [LONG_HOST]
            status, body = https_get(port=port, host="xn--bcher-kva.example.test", path="/x",
                                     roots_pem=roots)
            assert (status, body.split()[:3]) == (200, ["idn-backend",
                                                        "xn--bcher-kva.example.test", "/x"])

            conditions = {
                name: eventually(partial(_condition, run, "Certificate", name),
                                 what=f"a Ready condition on Certificate {name}")
                for name in ("typo", "cn", "many-tls", "ip-tls", "wild-tls", "lost-tls",
                             "down-tls")
            }
            issuers = {
                name: eventually(partial(_condition, run, "ClusterIssuer", name, None),
                                 what=f"a Ready condition on ClusterIssuer {name}")
                for name in ("unreachable", "not-acme", "typo")
            }
            orders = run.store.list(kind="Order")
            secrets = {s["metadata"]["name"] for s in run.store.list(kind="Secret",
                                                                     namespace="default")}
            created = {c["metadata"]["name"] for c in run.store.list(kind="Certificate")}

    assert {(c["status"], c["reason"]) for c in conditions.values()} <= {
        ("False", "BadConfig"), ("False", "IssuerNotFound"), ("False", "IssuerNotReady")}
    assert conditions["typo"]["message"] == ("spec.dnsName: unknown field; did you mean "
                                             "'dnsNames'?")
    assert conditions["cn"]["message"].startswith("spec.commonName: must be at most 64")
    assert conditions["many-tls"]["message"].startswith("spec.dnsNames: 101 names")
    assert conditions["ip-tls"]["message"].startswith(
        "spec.commonName: 127.0.0.1 is an IP address")
    assert conditions["wild-tls"]["message"].startswith("spec.dnsNames[0]: *.wild.example.test")
    assert conditions["lost-tls"]["message"] == "ClusterIssuer nowhere not found"
    assert conditions["down-tls"]["message"].startswith("ClusterIssuer unreachable is not ready")
    assert issuers["unreachable"]["message"].startswith(
        f"Failed to register ACME account: cannot reach ACME server {unreachable}: ")
    assert issuers["not-acme"]["message"].startswith(
        f"Failed to register ACME account: http://{not_acme}/home is not an ACME directory")
    assert issuers["typo"]["message"] == "spec.acme.sever: unknown field; did you mean 'server'?"

    ordered = {o["metadata"]["labels"]["certctl.io/certificate-name"] for o in orders}
    assert ordered == {"good-tls", "idn-tls", "long-tls", "dup-tls", "garbage-tls",
                       "listdata-tls"}, (
        "no ACME order for refused input")
    assert not secrets & {"typo-tls", "cn-tls", "many-tls", "ip-tls", "wild-tls", "lost-tls",
                          "down-tls", "toolong-tls", "label-tls", "wrongtype-tls"}
    assert not created & {"toolong-tls", "label-tls", "wrongtype-tls"}

    log = caplog.text
    source = str(manifests / "ingresses.yaml")
    for line in (
        f"{manifests / 'broken.yaml'}: invalid YAML at line 5, column 1: did not find "
        "expected ',' or ']' (while parsing a flow sequence that started at line 4, column 9)",
        "Ingress default/toolong BadConfig: spec.tls[0].hosts[1]: ",
        "Ingress default/label BadConfig: spec.tls[0].hosts[0]: ",
        "Ingress default/wrongtype BadConfig: spec.tls[0].hosts: must be a list, got a string",
        "Ingress default/typoing UnknownField: spec.tls[0].secretname: unknown field, ignored; "
        "did you mean 'secretName'?",
        "Ingress default/typoing BadConfig: spec.tls[0].secretName: required",
        "Certificate default/many-tls BadConfig: spec.dnsNames: 101 names",
        "Certificate default/ip-tls BadConfig: spec.commonName: 127.0.0.1 is an IP address",
        "Certificate default/lost-tls IssuerNotFound: spec.issuerRef: ClusterIssuer nowhere",
        "Certificate default/typo BadConfig: spec.dnsName: unknown field",
        "ClusterIssuer typo BadConfig: spec.acme.sever: unknown field",
        f"ClusterIssuer unreachable ErrRegisterACMEAccount: Failed to register ACME account: "
        f"cannot reach ACME server {unreachable}",
    ):
        assert line in log, line
    assert re.search(rf"{re.escape(source)}#\d+: Ingress default/toolong BadConfig", log), (
        "the log names the file the object came from")


def test_parse_errors_name_kind_namespace_name_and_field() -> None:
    with pytest.raises(InvalidObject) as caught:
        parsing.parse_certificate({
            "apiVersion": "certctl.io/v1", "kind": "Certificate",
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"secretName": "web", "dnsNames": ["ok.example.test", LABEL_OVER_63],
                     "issuerRef": {"name": "acme"}},
        }, source="apps.yaml#2")
    assert str(caught.value).startswith(
        "apps.yaml#2: Certificate shop/web: spec.dnsNames[1]: ")


def test_refused_input_places_no_order_however_often_it_is_reconciled(world: World) -> None:
    world.add_certificate("ip", dnsNames=["ip.example.test"], ipAddresses=["192.0.2.1"],
                          commonName="192.0.2.1")

    for _ in range(24):
        world.reconcile("ip")
        world.clock.advance(hours=1)

    assert world.orders("ip") == []
    assert [reason for _, reason, _ in world.events("ip")] == ["BadConfig"], (
        "one event, not one per pass")
