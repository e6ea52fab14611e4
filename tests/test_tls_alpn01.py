"""TLS-ALPN-01 (RFC 8737): the data plane's HTTPS listener answers acme-tls/1 handshakes.

End to end, `certctl serve` with an issuer whose only solver is `tlsALPN01: {}`
gets its certificate from real Pebble (both builds), whose validator connects
to the data plane's HTTPS port (Pebble's `tlsPort`); Pebble's `httpPort`
points where nothing listens, so HTTP-01 could not have passed. Around that,
a live Challenge fed to the running data plane shows what a validator and a
normal client each get over real sockets, and that it is gone afterwards.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from certctl.api import parsing
from certctl.api.errors import InvalidObject
from certctl.api.resources import GROUP, AcmeIssuer, ObjectKey
from certctl.controllers import reconciling
from certctl.dataplane import certstore
from certctl.runtime.standalone import ServeOptions, Standalone
from certctl.solvers import selection, tls_alpn01_solver
from certctl.solvers.dns01 import solver as dns01_solver
from certctl.store.interface import WatchEvent, WatchType
from tests.pebble import PebbleBuild, PebbleServer, free_port
from tests.serving import (
    cluster_issuer,
    dns_names,
    echo_backend,
    eventually,
    https_get,
    ingress,
    service_with_endpoints,
    write_yaml,
)

KEY_AUTHORIZATION = "token-abc.thumbprint-xyz"


def tls_alpn01_issuer(pebble: PebbleServer) -> dict[str, Any]:
    issuer = cluster_issuer(pebble, name="pebble-alpn")
    issuer["spec"]["acme"]["solvers"] = [{"tlsALPN01": {}}]
    return issuer


class ServeHttpsOnly:
    """`certctl serve --no-http` whose HTTPS port is Pebble's tlsPort: no HTTP listener at
    all, so nothing but TLS-ALPN-01 can validate."""

    def __init__(self, *, tmp_path: Path, pebble: PebbleServer, https_port: int) -> None:
        self.options = ServeOptions(
            manifests=tmp_path / "manifests", state_dir=tmp_path / "state",
            listen_address="127.0.0.1", http_port=None, https_port=https_port,
            self_check_address="127.0.0.1", workers=2,
            backoff_base=datetime.timedelta(seconds=1), dns01=dns01_solver.Options())
        self.standalone = Standalone(options=self.options, clock=reconciling.system_clock)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def __enter__(self) -> ServeHttpsOnly:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.standalone.start(), self._loop).result(15)
        with pytest.raises(RuntimeError, match="no HTTP listener"):
            self.standalone.dataplane.http_port  # noqa: B018 - it raises: nothing listens
        return self

    def __exit__(self, *_: object) -> None:
        asyncio.run_coroutine_threadsafe(self.standalone.stop(), self._loop).result(20)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def condition(self, name: str, type: str) -> dict[str, Any]:
        obj = self.standalone.store.get(kind="Certificate", namespace="default", name=name)
        found = [c for c in ((obj or {}).get("status") or {}).get("conditions", [])
                 if c.get("type") == type]
        return found[0] if found else {}


@pytest.fixture
def https_port() -> int:
    return free_port()


@pytest.fixture
def alpn_pebble(tmp_path: Path, pebble_build: PebbleBuild,
                https_port: int) -> Iterator[PebbleServer]:
    server = PebbleServer.start(tmp_path=tmp_path, http_port=free_port(), build=pebble_build,
                                config={"tlsPort": https_port})
    try:
        yield server
    finally:
        server.stop()


def handshake(
    port: int, server_name: str, alpn: list[str]
) -> tuple[x509.Certificate, str | None, bytes]:
    """Handshake as a client offering `alpn`; the certificate, the protocol negotiated and
    what the server sent after the handshake before closing (b"" for nothing)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(alpn)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            context.wrap_socket(raw, server_hostname=server_name) as tls:
        der = tls.getpeercert(binary_form=True)
        negotiated = tls.selected_alpn_protocol()
        tls.settimeout(0.5)
        try:
            after = tls.recv(100)
        except TimeoutError:
            after = b"<still open>"
    assert der is not None
    return x509.load_der_x509_certificate(der), negotiated, after


def test_pebble_validates_tls_alpn01_through_the_https_listener(
    tmp_path: Path, alpn_pebble: PebbleServer, https_port: int
) -> None:
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    with echo_backend("alpn-backend") as backend_port:
        write_yaml(manifests / "all.yaml", tls_alpn01_issuer(alpn_pebble),
                   ingress("alpn", hosts=["alpn.example.test"], secret_name="alpn-tls",
                           backend="alpn",
                           annotations={"cert-manager.io/cluster-issuer": "pebble-alpn"}),
                   *service_with_endpoints("alpn", port=backend_port))
        with ServeHttpsOnly(tmp_path=tmp_path, pebble=alpn_pebble, https_port=https_port) as run:
            served_through_tls_alpn01(run, alpn_pebble, https_port)


def served_through_tls_alpn01(
    run: ServeHttpsOnly, alpn_pebble: PebbleServer, https_port: int
) -> None:
    """Issued through TLS-ALPN-01 alone, served to normal clients, no challenge left."""
    eventually(lambda: run.condition("alpn-tls", "Ready").get("status") == "True",
               timeout=60, what="the certificate issued through TLS-ALPN-01")
    [order] = run.standalone.store.list(kind="Order")
    assert order["status"]["state"] == "valid"
    assert [c["type"] for authorization in order["status"]["authorizations"]
            for c in authorization["challenges"]] == ["tls-alpn-01"]
    assert alpn_pebble.log_lines("set VALID by completed challenge")
    roots = alpn_pebble.issuance_roots_pem()
    # The issued certificate is served, verified against Pebble's root, with h2.
    context = ssl.create_default_context(cadata=roots.decode())
    context.set_alpn_protocols(["h2", "http/1.1"])

    def verified() -> tuple[str | None, list[str]]:
        with socket.create_connection(("127.0.0.1", https_port), timeout=5) as raw, \
                context.wrap_socket(raw, server_hostname="alpn.example.test") as tls:
            der = tls.getpeercert(binary_form=True)
            assert der is not None
            return (tls.selected_alpn_protocol(),
                    dns_names(x509.load_der_x509_certificate(der)))

    assert eventually(verified, timeout=10, what="the issued certificate served") == (
        "h2", ["alpn.example.test"])
    assert https_get(port=https_port, host="alpn.example.test", path="/x",
                     roots_pem=roots) == (200, "alpn-backend alpn.example.test /x https")
    # After the challenge no acme-tls/1 certificate is left: a validator's
    # handshake gets the normal certificate and no protocol.
    eventually(lambda: run.standalone.store.list(kind="Challenge") == [], timeout=15,
               what="the Challenge to be deleted with its Order")
    leaf, negotiated, _ = handshake(https_port, "alpn.example.test", ["acme-tls/1"])
    assert negotiated is None
    with pytest.raises(x509.ExtensionNotFound):
        leaf.extensions.get_extension_for_oid(tls_alpn01_solver.ACME_IDENTIFIER)


def test_pebble_validates_an_ip_address_through_tls_alpn01(
    tmp_path: Path, alpn_pebble: PebbleServer, https_port: int
) -> None:
    """RFC 8738: Pebble's validator connects to the address itself, with its reverse-DNS
    name as the server name, and wants the address as the only (iPAddress) SAN."""
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    write_yaml(manifests / "all.yaml", tls_alpn01_issuer(alpn_pebble), {
        "apiVersion": "cert-manager.io/v1", "kind": "Certificate",
        "metadata": {"name": "loopback", "namespace": "default"},
        "spec": {"secretName": "loopback-tls", "ipAddresses": ["127.0.0.1"],
                 "issuerRef": {"name": "pebble-alpn", "kind": "ClusterIssuer"}}})
    with ServeHttpsOnly(tmp_path=tmp_path, pebble=alpn_pebble, https_port=https_port) as run:
        eventually(lambda: run.condition("loopback", "Ready").get("status") == "True",
                   timeout=60, what="the IP certificate issued through TLS-ALPN-01")
        [order] = run.standalone.store.list(kind="Order")
        assert [c["type"] for authorization in order["status"]["authorizations"]
                for c in authorization["challenges"]] == ["tls-alpn-01"]
        secret = run.standalone.store.get(kind="Secret", namespace="default",
                                          name="loopback-tls")
        assert secret is not None
        leaf = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["tls.crt"]))
        sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]


def _challenge_event(kind: WatchType, *, name: str, dns_name: str, state: str = "pending",
                     key: str = KEY_AUTHORIZATION) -> WatchEvent:
    obj = {"apiVersion": f"{GROUP}/v1", "kind": "Challenge",
           "metadata": {"name": name, "namespace": "default"},
           "spec": {"type": "TLS-ALPN-01", "dnsName": dns_name, "token": "token-abc",
                    "key": key},
           "status": {"state": state}}
    return WatchEvent(type=kind, key=ObjectKey(kind="Challenge", namespace="default",
                                              name=name), obj=obj)


def test_a_live_challenge_answers_only_acme_tls_clients_and_ends_with_the_challenge(
    tmp_path: Path, pebble: PebbleServer
) -> None:
    (tmp_path / "manifests").mkdir()
    with ServeHttpsOnly(tmp_path=tmp_path, pebble=pebble, https_port=free_port()) as run:
        port = run.options.https_port
        feed = run.standalone.feed
        solver = tls_alpn01_solver.TlsAlpn01Solver(self_check=tls_alpn01_solver.SelfCheckTarget(
            port=port, connect_address="127.0.0.1"))
        feed.on_event(_challenge_event("ADDED", name="c1", dns_name="Live.Example.Test"))

        # What a validator gets: the challenge certificate, acme-tls/1, then nothing.
        der = tls_alpn01_solver.fetch_certificate(host="live.example.test", port=port,
                                                  connect_address="127.0.0.1")
        tls_alpn01_solver.verify_certificate(der, dns_name="live.example.test",
                                             key_authorization=KEY_AUTHORIZATION)
        leaf, negotiated, after = handshake(port, "live.example.test", ["acme-tls/1"])
        assert negotiated == "acme-tls/1"
        assert after == b"", "the server sends nothing after the handshake and closes"
        assert leaf.extensions.get_extension_for_oid(
            tls_alpn01_solver.ACME_IDENTIFIER).critical
        # The self-check against our own listener passes, and fails for a stale key.
        challenge = parsing.parse_challenge(_challenge_obj(port, key=KEY_AUTHORIZATION))
        solver.check(challenge=challenge, now=datetime.datetime.now(datetime.UTC))
        with pytest.raises(Exception, match="does not hold this challenge's key"):
            solver.check(challenge=parsing.parse_challenge(_challenge_obj(port, key="other")),
                         now=datetime.datetime.now(datetime.UTC))

        # Every other client is unaffected: the default certificate and h2 / http/1.1.
        for alpn, expected in ((["h2", "http/1.1"], "h2"), (["http/1.1"], "http/1.1")):
            leaf, negotiated, _ = handshake(port, "live.example.test", alpn)
            assert negotiated == expected
            assert leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == (
                certstore.DEFAULT_COMMON_NAME)
            with pytest.raises(x509.ExtensionNotFound):
                leaf.extensions.get_extension_for_oid(tls_alpn01_solver.ACME_IDENTIFIER)
        # acme-tls/1 for a name without a live challenge: no challenge certificate.
        leaf, negotiated, _ = handshake(port, "other.example.test", ["acme-tls/1"])
        assert negotiated is None

        # A status update keeps the certificate; the challenge turning valid takes it away.
        feed.on_event(_challenge_event("MODIFIED", name="c1", dns_name="live.example.test"))
        assert tls_alpn01_solver.fetch_certificate(
            host="live.example.test", port=port, connect_address="127.0.0.1") == der
        feed.on_event(_challenge_event("MODIFIED", name="c1", dns_name="live.example.test",
                                       state="valid"))
        with pytest.raises(tls_alpn01_solver.NotAnAnswer, match="negotiated ALPN None"):
            tls_alpn01_solver.fetch_certificate(host="live.example.test", port=port,
                                                connect_address="127.0.0.1")
        with pytest.raises(Exception, match="TLS-ALPN-01 self-check failed"):
            solver.check(challenge=challenge, now=datetime.datetime.now(datetime.UTC))

        # An IP identifier (RFC 8738): asked for by its reverse-DNS name, the address the
        # only SAN; the self-check connects to the address itself.
        feed.on_event(_challenge_event("ADDED", name="c2", dns_name="127.0.0.1"))
        assert tls_alpn01_solver.server_name("127.0.0.1") == "1.0.0.127.in-addr.arpa"
        leaf, negotiated, after = handshake(port, "1.0.0.127.in-addr.arpa", ["acme-tls/1"])
        assert (negotiated, after) == ("acme-tls/1", b"")
        sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert len(sans) == 1
        assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
        ip_solver = tls_alpn01_solver.TlsAlpn01Solver(
            self_check=tls_alpn01_solver.SelfCheckTarget(port=port))
        ip_challenge = _challenge_obj(port, key=KEY_AUTHORIZATION)
        ip_challenge["spec"]["dnsName"] = "127.0.0.1"
        ip_solver.check(challenge=parsing.parse_challenge(ip_challenge),
                        now=datetime.datetime.now(datetime.UTC))
        with pytest.raises(tls_alpn01_solver.NotAnAnswer,
                           match=r"names \['127\.0\.0\.1'\], not only"):
            tls_alpn01_solver.verify_certificate(
                leaf.public_bytes(serialization.Encoding.DER), dns_name="live.example.test",
                key_authorization=KEY_AUTHORIZATION)


def _challenge_obj(port: int, *, key: str) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/v1", "kind": "Challenge",
            "metadata": {"name": "c1", "namespace": "default"},
            "spec": {"type": "TLS-ALPN-01", "dnsName": "live.example.test", "token": "t",
                     "key": key, "url": "https://ca.test/chall/1",
                     "authorizationURL": "https://ca.test/authz/1", "wildcard": False,
                     "issuerRef": {"name": "i", "kind": "ClusterIssuer"},
                     "solver": {"tlsALPN01": {}}}}


@pytest.mark.parametrize(("solvers", "field", "problem"), [
    ([{"tlsALPN01": {"port": 443}}], "spec.acme.solvers[0].tlsALPN01.port",
     "tlsALPN01 takes no settings"),
    ([{"tlsALPN01": "yes"}], "spec.acme.solvers[0].tlsALPN01", "must be a mapping"),
    ([{"tlsALPN01": {}, "http01": {"ingress": {}}}], "spec.acme.solvers[0]",
     "exactly one of http01, dns01 or tlsALPN01 must be set"),
])
def test_bad_tls_alpn01_configuration_names_the_field(
    solvers: list[Any], field: str, problem: str
) -> None:
    issuer = issuer_without_pebble()
    issuer["spec"]["acme"]["solvers"] = solvers
    with pytest.raises(InvalidObject, match=problem) as raised:
        parsing.parse_issuer(issuer)
    assert field in str(raised.value)


def test_tls_alpn01_is_copied_into_challenges_and_cannot_prove_wildcards() -> None:
    acme = parsing.parse_issuer(issuer_without_pebble()).spec
    assert isinstance(acme, AcmeIssuer)
    [solver] = acme.solvers
    assert parsing.solver_spec(solver) == {"tlsALPN01": {}}
    chosen = selection.select_solver(issuer=acme, dns_name="a.example.test", labels={})
    assert chosen.solver == solver
    with pytest.raises(selection.NoSolver, match="only has TLS-ALPN-01 solvers"):
        selection.select_solver(issuer=acme, dns_name="*.example.test", labels={})


def issuer_without_pebble() -> dict[str, Any]:
    return {"apiVersion": "cert-manager.io/v1", "kind": "ClusterIssuer",
            "metadata": {"name": "alpn"},
            "spec": {"acme": {"server": "https://acme.example.test/directory",
                              "privateKeySecretRef": {"name": "alpn-account"},
                              "solvers": [{"tlsALPN01": {}}]}}}
