"""End to end: a wildcard certificate through DNS-01, RFC 2136 to a real BIND, issued by Pebble.

Pebble resolves through the same BIND (`-dnsserver`), so its validation sees
exactly the TXT records certctl wrote with TSIG-signed updates. Each test with
Pebble validating runs against Debian's Pebble 2.4 (DNS over UDP) and the
current release (DNS over TCP).
"""

from __future__ import annotations

import base64
import datetime
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from certctl.pki import secret as tls_secret
from certctl.solvers.dns01 import lookup
from certctl.solvers.dns01 import solver as dns01_solver
from tests.bind import BindServer
from tests.pebble import PebbleBuild, PebbleServer, free_port
from tests.serving import (
    Serving,
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

TSIG_SECRET_NAME = "rfc2136-tsig"


@pytest.fixture
def bind(tmp_path: Path) -> Iterator[BindServer]:
    with BindServer.start(tmp_path=tmp_path) as server:
        yield server


@pytest.fixture
def pebble_via_bind(tmp_path: Path, bind: BindServer, pebble_build: PebbleBuild
                    ) -> Iterator[PebbleServer]:
    server = PebbleServer.start(tmp_path=tmp_path, http_port=free_port(),
                                dns_server=bind.nameserver, build=pebble_build)
    try:
        yield server
    finally:
        server.stop()


def dns_cluster_issuer(pebble: PebbleServer, bind: BindServer | None) -> dict[str, Any]:
    nameserver = bind.nameserver if bind is not None else "127.0.0.1:53"
    key_name = bind.tsig_key_name if bind is not None else "certctl"
    return {
        "apiVersion": "cert-manager.io/v1",
        "kind": "ClusterIssuer",
        "metadata": {"name": "pebble-dns"},
        "spec": {"acme": {
            "server": pebble.directory_url,
            "email": "test@example.test",
            "caBundle": base64.b64encode(pebble.ca_bundle_pem).decode(),
            "privateKeySecretRef": {"name": "pebble-dns-account"},
            "solvers": [{"dns01": {"rfc2136": {
                "nameserver": nameserver,
                "tsigKeyName": key_name,
                "tsigAlgorithm": "HMACSHA256",
                "tsigSecretSecretRef": {"name": TSIG_SECRET_NAME, "key": "secret"},
            }}}],
        }},
    }


def tsig_secret(value: str) -> dict[str, Any]:
    # A ClusterIssuer's Secrets live in the cluster resource namespace.
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": TSIG_SECRET_NAME, "namespace": "certctl"},
            "stringData": {"secret": value}}


def start_serving(*, tmp_path: Path, pebble: PebbleServer, bind: BindServer) -> Serving:
    # As `certctl serve --dns01-recursive-nameservers <bind> --dns01-recursive-nameservers-only`:
    # the test names are known only to BIND, which listens on a port NS records cannot name.
    return Serving(manifests=tmp_path / "manifests", state_dir=tmp_path / "state", pebble=pebble,
                   dns01=dns01_solver.Options(
                       recursive_nameservers=(lookup.parse_nameserver(bind.nameserver),),
                       recursive_nameservers_only=True)).start()


def _leaf_for(port: int, server_name: str, roots: bytes) -> x509.Certificate | None:
    leaf = served_certificate(port=port, server_name=server_name, roots_pem=roots)
    return leaf if "*.example.test" in dns_names(leaf) else None


def test_wildcard_certificate_is_issued_through_rfc2136_and_served_for_any_subdomain(
    tmp_path: Path, bind: BindServer, pebble_via_bind: PebbleServer
):
    pebble = pebble_via_bind
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    with echo_backend("wild-backend") as backend_port:
        write_yaml(
            manifests / "all.yaml",
            dns_cluster_issuer(pebble, bind),
            tsig_secret(bind.tsig_secret),
            ingress("wild", hosts=["example.test", "*.example.test"], secret_name="wild-tls",
                    backend="wild", annotations={"cert-manager.io/cluster-issuer": "pebble-dns"}),
            *service_with_endpoints("wild", port=backend_port),
        )
        run = start_serving(tmp_path=tmp_path, pebble=pebble, bind=bind)
        try:
            roots = pebble.issuance_roots_pem()
            leaf = eventually(lambda: _leaf_for(run.https_port, "shop.example.test", roots),
                              timeout=60, what="the wildcard certificate, verified")
            assert sorted(dns_names(leaf)) == ["*.example.test", "example.test"]
            # Any one-label subdomain and the apex get it, verified against Pebble's root.
            for name in ("example.test", "a.example.test", "xn--bcher-kva.example.test"):
                served = served_certificate(port=run.https_port, server_name=name,
                                            roots_pem=roots)
                assert served.serial_number == leaf.serial_number, name
            status, body = https_get(port=run.https_port, host="anything.example.test",
                                     path="/x", roots_pem=roots)
            assert (status, body) == (200, "wild-backend anything.example.test /x https")
            # Two labels down is not covered by the wildcard: the default certificate.
            with pytest.raises(Exception, match="CERTIFICATE_VERIFY_FAILED"):
                served_certificate(port=run.https_port, server_name="a.b.example.test",
                                   roots_pem=roots)

            secret = run.store.get(kind="Secret", namespace="default", name="wild-tls")
            contents = tls_secret.read_tls_secret(secret)
            assert contents.leaf.serial_number == leaf.serial_number
            eventually(lambda: run.condition("wild-tls", "Ready").get("status") == "True",
                       what="Ready=True")
            # Both TXT values (apex and wildcard) are gone from BIND, and so are the Challenges.
            eventually(lambda: bind.txt_values("_acme-challenge.example.test.") == set(),
                       timeout=10, what="the TXT records to be removed from BIND")
            eventually(lambda: run.store.list(kind="Challenge") == [], timeout=10,
                       what="the Challenges to end with their Order")
        finally:
            run.stop()


def test_a_wrong_tsig_secret_fails_with_a_message_saying_so_and_leaves_nothing_behind(
    tmp_path: Path, bind: BindServer, pebble_via_bind: PebbleServer
):
    pebble = pebble_via_bind
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    wrong = base64.b64encode(b"not the key named.conf has!!!!!!").decode()
    write_yaml(
        manifests / "all.yaml",
        dns_cluster_issuer(pebble, bind),
        tsig_secret(wrong),
        {"apiVersion": "cert-manager.io/v1", "kind": "Certificate",
         "metadata": {"name": "bad", "namespace": "default"},
         "spec": {"secretName": "bad-tls", "dnsNames": ["bad.example.test"],
                  "issuerRef": {"name": "pebble-dns", "kind": "ClusterIssuer"}}},
    )
    run = start_serving(tmp_path=tmp_path, pebble=pebble, bind=bind)
    try:
        issuing = eventually(lambda: run.condition("bad", "Issuing").get("reason") == "Failed"
                             and run.condition("bad", "Issuing"), timeout=30,
                             what="the Certificate to report the failure")
        message = issuing["message"]
        assert message.startswith(
            "The certificate request has failed to complete and will be retried: DNS-01"
            " challenge for bad.example.test failed: Error presenting DNS-01 challenge: "
            f"nameserver {bind.nameserver} rejected the TSIG signature of key"
            f" '{bind.tsig_key_name}'"), message
        assert "(BADSIG)" in message
        assert (f"the secret in Secret certctl/{TSIG_SECRET_NAME} key 'secret' does not match"
                in message)
        assert wrong not in message
        assert run.condition("bad", "Ready")["status"] == "False"
        orders = run.store.list(kind="Order")
        assert [o["status"]["state"] for o in orders] == ["errored"]
        assert "(BADSIG)" in orders[0]["status"]["reason"]
        # Nothing behind: no record in BIND, no Challenge left, no Secret written.
        assert bind.txt_values("_acme-challenge.bad.example.test.") == set()
        eventually(lambda: run.store.list(kind="Challenge") == [], timeout=10,
                   what="the failed Challenge to go with its Order")
        assert run.store.get(kind="Secret", namespace="default", name="bad-tls") is None
    finally:
        run.stop()


def certificate(name: str, *dns: str) -> dict[str, Any]:
    return {"apiVersion": "cert-manager.io/v1", "kind": "Certificate",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"secretName": f"{name}-tls", "dnsNames": list(dns),
                     "issuerRef": {"name": "pebble-dns", "kind": "ClusterIssuer"}}}


@pytest.fixture
def lagging_secondary(tmp_path: Path) -> Iterator[BindServer]:
    """A second server for example.test that never receives certctl's updates."""
    with BindServer.start(tmp_path=tmp_path / "secondary") as server:
        yield server


def start_with_secondary(
    *, tmp_path: Path, pebble: PebbleServer, bind: BindServer, secondary: BindServer,
    propagation_timeout: float,
) -> Serving:
    return Serving(manifests=tmp_path / "manifests", state_dir=tmp_path / "state", pebble=pebble,
                   dns01=dns01_solver.Options(
                       recursive_nameservers=(lookup.parse_nameserver(bind.nameserver),
                                              lookup.parse_nameserver(secondary.nameserver)),
                       recursive_nameservers_only=True,
                       propagation_timeout=datetime.timedelta(seconds=propagation_timeout))
                   ).start()


def _challenge_reason(run: Serving) -> str | None:
    found = run.store.list(kind="Challenge")
    return found[0].get("status", {}).get("reason") if found else None


def test_a_deleted_challenge_takes_its_txt_record_with_it(
    tmp_path: Path, bind: BindServer, pebble_via_bind: PebbleServer,
    lagging_secondary: BindServer,
):
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    write_yaml(manifests / "issuer.yaml", dns_cluster_issuer(pebble_via_bind, bind),
               tsig_secret(bind.tsig_secret))
    cert_file = write_yaml(manifests / "certificate.yaml", certificate("gone", "gone.example.test"))
    run = start_with_secondary(tmp_path=tmp_path, pebble=pebble_via_bind, bind=bind,
                               secondary=lagging_secondary, propagation_timeout=300)
    try:
        def waiting() -> str | None:
            reason = _challenge_reason(run)
            return reason if reason and "Waiting for DNS-01" in reason else None

        reason = eventually(waiting, timeout=30, what="the self-check to wait for the secondary")
        assert f"at nameserver {lagging_secondary.nameserver}" in reason
        assert len(bind.txt_values("_acme-challenge.gone.example.test.")) == 1
        cert_file.unlink()  # the Certificate goes, and its Order and Challenge with it
        eventually(lambda: run.store.list(kind="Challenge") == [], timeout=10,
                   what="the Challenge to be deleted")
        eventually(lambda: bind.txt_values("_acme-challenge.gone.example.test.") == set(),
                   timeout=10, what="the deleted Challenge's TXT record to be removed")
    finally:
        run.stop()


def test_a_record_never_served_fails_after_the_propagation_timeout_naming_the_server(
    tmp_path: Path, bind: BindServer, pebble_via_bind: PebbleServer,
    lagging_secondary: BindServer,
):
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    write_yaml(manifests / "all.yaml", dns_cluster_issuer(pebble_via_bind, bind),
               tsig_secret(bind.tsig_secret), certificate("slow", "slow.example.test"))
    run = start_with_secondary(tmp_path=tmp_path, pebble=pebble_via_bind, bind=bind,
                               secondary=lagging_secondary, propagation_timeout=1)
    try:
        issuing = eventually(lambda: run.condition("slow", "Issuing").get("reason") == "Failed"
                             and run.condition("slow", "Issuing"), timeout=30,
                             what="the Certificate to report the timeout")
        assert ("DNS-01 challenge for slow.example.test failed: DNS-01 self-check failed after"
                " waiting 1s: TXT _acme-challenge.slow.example.test. does not have the challenge"
                f" value at nameserver {lagging_secondary.nameserver}: "
                f"{lagging_secondary.nameserver} answered NOERROR with no TXT record"
                ) in issuing["message"]
        assert bind.txt_values("_acme-challenge.slow.example.test.") == set()
    finally:
        run.stop()


def test_an_unknown_dns_provider_is_a_bad_config_before_any_order(
    tmp_path: Path, pebble: PebbleServer
):
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    issuer = dns_cluster_issuer(pebble, bind=None)
    issuer["spec"]["acme"]["solvers"] = [{"dns01": {"nosuch": {"token": "x"}}}]
    write_yaml(manifests / "all.yaml", issuer, certificate("unknown", "*.unknown.example.test"))
    with serving(manifests=manifests, state_dir=tmp_path / "state", pebble=pebble) as run:
        ready = eventually(lambda: run.condition("unknown", "Ready").get("reason") == "BadConfig"
                           and run.condition("unknown", "Ready"), timeout=30)
        assert ready["message"].startswith(
            "spec.dnsNames[0]: *.unknown.example.test: ClusterIssuer pebble-dns"
            " spec.acme.solvers[0].dns01: no DNS-01 provider named 'nosuch'; available: rfc2136,"
            " cloudflare, route53, digitalocean, acmeDNS, webhook"), ready["message"]
        assert run.store.list(kind="Order") == []
