"""IP-address certificates over ACME (RFC 8738): HTTP-01 answered by the data plane at the
address, served to clients that send no SNI.

Pebble's validator connects to the address itself (127.0.0.1 or ::1) at its
`httpPort`, which is the data plane's HTTP port here, with the address as
Host; `certctl serve` answers the token from the Challenge objects. The
current Pebble offers Let's Encrypt's profiles, so an IP certificate must ask
for `shortlived`.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import http.client
import socket
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from certctl.api import errors, parsing, resources
from certctl.dataplane import certstore
from certctl.pki import csr, keys
from certctl.runtime.standalone import ServeOptions, Standalone
from tests.lifecycle import TestCA
from tests.pebble import PebbleBuild, PebbleProfile, PebbleServer, free_port
from tests.serving import (
    Serving,
    cluster_issuer,
    echo_backend,
    eventually,
    service_with_endpoints,
    write_yaml,
)

SECRET = "ip-tls"
PROFILES = {  # shaped after Let's Encrypt's: IP addresses only under shortlived
    "classic": PebbleProfile(description="90 days, Common Name", promote_common_name=True),
    "shortlived": PebbleProfile(description="6 days, no Common Name",
                                validity_period=6 * 24 * 3600),
}


def _ip_ingress(address: str, *, profile: str | None) -> dict[str, Any]:
    """An Ingress whose TLS host is an address; its rule has no host (a rule cannot hold one)."""
    annotations = {"cert-manager.io/cluster-issuer": "pebble"}
    if profile is not None:
        annotations["certctl.io/acme-profile"] = profile
    return {
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": "ip", "namespace": "default", "annotations": annotations},
        "spec": {
            "tls": [{"hosts": [address], "secretName": SECRET}],
            "rules": [{"http": {"paths": [{
                "path": "/", "pathType": "Prefix",
                "backend": {"service": {"name": "echo", "port": {"number": 80}}},
            }]}}],
        },
    }


def _ip_certificate(name: str, address: str) -> dict[str, Any]:
    return {
        "apiVersion": "certctl.io/v1", "kind": "Certificate",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"secretName": name, "ipAddresses": [address],
                 "issuerRef": {"name": "pebble", "kind": "ClusterIssuer"}},
    }


class _ServingAt(Serving):
    """`certctl serve` listening on `address` only; the self-check connects there too."""

    def __init__(self, *, address: str, manifests: Path, state_dir: Path,
                 pebble: PebbleServer) -> None:
        self.options = ServeOptions(
            manifests=manifests, state_dir=state_dir, listen_address=address,
            http_port=pebble.http_port, https_port=free_port(), self_check_address=address,
            workers=4, backoff_base=datetime.timedelta(seconds=1))
        self.pebble = pebble
        self.standalone = Standalone(options=self.options)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)


@contextmanager
def _serving_at(address: str, *, manifests: Path, state_dir: Path,
                pebble: PebbleServer) -> Iterator[Serving]:
    running = _ServingAt(address=address, manifests=manifests, state_dir=state_dir,
                         pebble=pebble).start()
    try:
        yield running
    finally:
        running.stop()


def _leaf(run: Serving, name: str = SECRET) -> x509.Certificate | None:
    secret = run.store.get(kind="Secret", namespace="default", name=name)
    if secret is None:
        return None
    return x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["tls.crt"]))


def _addresses(leaf: x509.Certificate) -> list[str]:
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]


def _served_without_sni(*, address: str, port: int, roots_pem: bytes) -> x509.Certificate:
    """The leaf presented to a client that sends no SNI, its chain verified."""
    context = ssl.create_default_context(cadata=roots_pem.decode())
    context.check_hostname = False  # no name to check against: the caller checks the SAN
    with socket.create_connection((address, port), timeout=5) as raw, \
            context.wrap_socket(raw, server_hostname=None) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def _served_when_issued(
    *, address: str, port: int, roots_pem: bytes, leaf: x509.Certificate
) -> x509.Certificate | None:
    """What a client without SNI gets, once it is `leaf`."""
    got = _served_without_sni(address=address, port=port, roots_pem=roots_pem)
    return got if got.serial_number == leaf.serial_number else None


def _https_get(*, address: str, port: int, roots_pem: bytes) -> tuple[int, str]:
    """GET https://<address>/ as a browser would: no SNI (Python sends none for an address),
    the certificate verified against the address."""
    context = ssl.create_default_context(cadata=roots_pem.decode())
    connection = http.client.HTTPSConnection(address, port, context=context, timeout=5)
    try:
        connection.request("GET", "/")
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


def _issue_and_serve(
    tmp_path: Path, *, build: PebbleBuild, address: str, profile: str | None,
    extra: tuple[dict[str, Any], ...] = (),
) -> dict[str, Any]:
    """Run serve at `address` until the Ingress's certificate is served; what was seen."""
    profiles = PROFILES if build == "current" else None
    with PebbleServer.start(tmp_path=tmp_path, http_port=free_port(), build=build,
                            profiles=profiles) as pebble, echo_backend("echo") as echo_port:
        manifests = tmp_path / "manifests"
        manifests.mkdir()
        write_yaml(manifests / "all.yaml", cluster_issuer(pebble),
                   *service_with_endpoints("echo", port=echo_port),
                   _ip_ingress(address, profile=profile), *extra)
        with _serving_at(address, manifests=manifests, state_dir=tmp_path / "state",
                         pebble=pebble) as run:
            leaf = eventually(lambda: _leaf(run), timeout=60, what="the IP certificate")
            roots = pebble.issuance_roots_pem()
            served = eventually(
                lambda: _served_when_issued(address=address, port=run.https_port,
                                            roots_pem=roots, leaf=leaf),
                what="the IP certificate served without SNI")
            answer = _https_get(address=address, port=run.https_port, roots_pem=roots)
            eventually(run.standalone.queue.idle, what="the controllers to settle")
            return {
                "leaf": leaf, "served": served, "answer": answer,
                "certificate": run.certificate(SECRET),
                "challenges": run.store.list(kind="Challenge", namespace="default"),
                "orders": run.store.list(kind="Order", namespace="default"),
                "run": run, "pebble": pebble,
                "conditions": {obj["metadata"]["name"]: run.condition(obj["metadata"]["name"],
                                                                       "Ready")
                               for obj in extra},
            }


def test_an_ipv4_certificate_is_issued_by_http01_and_served_without_sni(
    tmp_path: Path,
) -> None:
    seen = _issue_and_serve(
        tmp_path, build="current", address="127.0.0.1", profile="shortlived",
        extra=(_ip_certificate("no-profile", "127.0.0.1"),))

    certificate = seen["certificate"]
    assert certificate["spec"]["ipAddresses"] == ["127.0.0.1"]
    assert certificate["spec"]["dnsNames"] == []
    assert certificate["spec"]["acme"] == {"profile": "shortlived"}
    [order] = [o for o in seen["orders"] if o["spec"].get("ipAddresses") == ["127.0.0.1"]
               and o["spec"].get("profile") == "shortlived"]
    assert order["status"]["state"] == "valid"
    leaf = seen["leaf"]
    assert _addresses(leaf) == ["127.0.0.1"]
    assert len(leaf.subject) == 0, "an IP certificate has no common name"
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc + datetime.timedelta(
        seconds=1) == datetime.timedelta(days=6)
    assert seen["served"].serial_number == leaf.serial_number
    status, body = seen["answer"]
    assert (status, body.split()[0]) == (200, "echo"), body
    # The profile is required when the CA offers it: the Certificate without one is refused
    # with the field to set, before any order.
    ready = seen["conditions"]["no-profile"]
    assert (ready["status"], ready["reason"]) == ("False", "BadConfig"), ready
    assert ready["message"] == (
        f"spec.acme.profile: 127.0.0.1 is an IP address, which ACME server "
        f"{seen['pebble'].directory_url} certifies only under its 'shortlived' profile; set "
        "spec.acme.profile: shortlived on this Certificate (annotation "
        "certctl.io/acme-profile on an Ingress) or on ClusterIssuer pebble (asks for none)")
    assert seen["run"].store.get(kind="Secret", namespace="default", name="no-profile") is None
    assert len(seen["orders"]) == 1


def test_an_ipv6_certificate_is_issued_by_http01_and_served_without_sni(
    tmp_path: Path,
) -> None:
    seen = _issue_and_serve(tmp_path, build="current", address="::1", profile="shortlived")

    assert _addresses(seen["leaf"]) == ["::1"]
    assert seen["served"].serial_number == seen["leaf"].serial_number
    status, body = seen["answer"]
    # Host is the bracketed address; the hostless rule routes it to the backend.
    assert (status, body.split()[:2]) == (200, ["echo", f"[::1]:{seen['run'].https_port}"]), body
    [order] = seen["orders"]
    assert order["spec"]["ipAddresses"] == ["::1"]
    assert order["status"]["state"] == "valid"


def test_debian_pebble_2_4_issues_an_ip_certificate_without_profiles(tmp_path: Path) -> None:
    """Pebble 2.4 validates IP identifiers (RFC 8738) over HTTP-01 but offers no profiles:
    none is asked for, and none is required."""
    seen = _issue_and_serve(tmp_path, build="debian", address="127.0.0.1", profile=None)

    [order] = seen["orders"]
    assert "profile" not in order["spec"]
    assert order["status"]["state"] == "valid"
    assert _addresses(seen["leaf"]) == ["127.0.0.1"]
    assert seen["served"].serial_number == seen["leaf"].serial_number
    assert seen["answer"][0] == 200


@pytest.mark.parametrize("address", ["127.0.0.1", "::1"])
def test_a_handshake_without_sni_or_with_the_address_gets_the_ip_certificate(
    address: str,
) -> None:
    now = datetime.datetime.now(datetime.UTC)
    ca = TestCA(now=now)
    index = certstore.CertificateIndex()
    default = index.select(None)

    def load(name: str, *, dns_names: list[str], ip_addresses: list[str]) -> None:
        key = keys.generate_private_key(resources.PrivateKeySpec(algorithm="ECDSA", size=256))
        request = csr.build_csr(key=key, dns_names=dns_names, ip_addresses=ip_addresses,
                                common_name=None, usages=["digital signature"])
        index.set_certificate(
            source=resources.ObjectKey(kind="Secret", namespace="d", name=name),
            chain_pem=ca.sign(request, not_before=now, not_after=now + datetime.timedelta(days=6)),
            key_pem=keys.encode_private_key(key, encoding="PKCS8"))

    load("www", dns_names=["www.example.test"], ip_addresses=[])
    assert index.select(None) is default, "a DNS-only certificate is not for clients sans SNI"
    load("ip", dns_names=[], ip_addresses=[address])
    source = resources.ObjectKey(kind="Secret", namespace="d", name="ip")

    without_sni = index.select(None)
    assert without_sni is not default
    assert index.select(address) is without_sni
    bracketed = f"[{address}]" if ":" in address else address
    assert index.has_certificate_for(bracketed)
    load("ip", dns_names=["ip.example.test"], ip_addresses=[])  # the Secret now holds none
    assert index.select(None) is default
    load("ip", dns_names=[], ip_addresses=[address])
    assert index.select(None) is not default
    index.remove_certificate(source=source)
    assert index.select(None) is default


@pytest.mark.parametrize(("written", "read"), [("127.0.0.1", "127.0.0.1"),
                                               ("2001:DB8::0:1", "2001:db8::1")])
def test_a_challenge_names_an_ip_address_in_canonical_form(written: str, read: str) -> None:
    challenge = parsing.parse_challenge(_http01_challenge(written))

    assert challenge.dns_name == read


def test_a_challenge_for_a_malformed_name_names_the_field() -> None:
    with pytest.raises(errors.InvalidObject) as caught:
        parsing.parse_challenge(_http01_challenge("127.0.0.1:80"))

    assert caught.value.field == "spec.dnsName"


def _http01_challenge(dns_name: str) -> dict[str, Any]:
    return {
        "apiVersion": "certctl.io/v1", "kind": "Challenge",
        "metadata": {"name": "ip-1", "namespace": "default"},
        "spec": {"url": "https://acme.example.test/chall/1",
                 "authorizationURL": "https://acme.example.test/authz/1",
                 "dnsName": dns_name, "type": "HTTP-01", "token": "tok", "key": "tok.thumb",
                 "issuerRef": {"name": "pebble", "kind": "ClusterIssuer"},
                 "solver": {"http01": {"ingress": {}}}},
    }
