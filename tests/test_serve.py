"""End to end: annotated Ingresses in a folder -> certificates from Pebble -> served by SNI."""

from __future__ import annotations

import base64
import datetime
import json
import logging
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography import x509

from certctl.api import schema
from certctl.dataplane import certstore
from certctl.pki import inspect
from certctl.pki import secret as tls_secret
from certctl.runtime import standalone
from certctl.store import local
from tests.pebble import PebbleServer, free_port
from tests.serving import (
    Serving,
    cluster_issuer,
    dns_names,
    echo_backend,
    eventually,
    http_get,
    https_get,
    ingress,
    served_certificate,
    service_with_endpoints,
    serving,
    write_yaml,
)


def _served(port: int, host: str, roots: bytes) -> x509.Certificate | None:
    certificate = served_certificate(port=port, server_name=host, roots_pem=roots)
    return certificate if host in dns_names(certificate) else None


def _one_ingress(tmp_path: Path, pebble: PebbleServer) -> Path:
    """A manifests folder with the Pebble ClusterIssuer and Ingress `web` (web.example.test)."""
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    write_yaml(manifests / "all.yaml", cluster_issuer(pebble),
               ingress("web", hosts=["web.example.test"], secret_name="web-tls"))
    return manifests


def _orders(state_dir: Path) -> list[str]:
    folder = state_dir / "objects" / "Order" / "default"
    return sorted(p.name for p in folder.glob("*.yaml")) if folder.is_dir() else []


def test_annotated_ingresses_are_issued_and_served_by_sni(tmp_path: Path, pebble: PebbleServer):
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    with echo_backend("shop-backend") as shop_port, echo_backend("blog-backend") as blog_port:
        write_yaml(manifests / "issuer.yaml", cluster_issuer(pebble))
        write_yaml(
            manifests / "apps.yaml",
            ingress("shop", hosts=["shop.example.test"], secret_name="shop-tls",
                    backend="shop"),
            # certctl's own annotation key works like cert-manager's.
            ingress("blog", hosts=["blog.example.test", "www.blog.example.test"],
                    secret_name="blog-tls", backend="blog",
                    annotations={"certctl.io/cluster-issuer": "pebble"}),
            *service_with_endpoints("shop", port=shop_port),
            *service_with_endpoints("blog", port=blog_port),
        )
        with serving(manifests=manifests, state_dir=tmp_path / "state", pebble=pebble) as run:
            roots = pebble.issuance_roots_pem()
            for host in ("shop.example.test", "blog.example.test", "www.blog.example.test"):
                leaf = eventually(partial(_served, run.https_port, host, roots),
                                  what=f"a verified certificate for {host}")
                assert host in dns_names(leaf)
            blog_leaf = served_certificate(port=run.https_port, server_name="blog.example.test",
                                           roots_pem=roots)
            assert sorted(dns_names(blog_leaf)) == ["blog.example.test", "www.blog.example.test"]

            # Unknown names get the self-signed default, which does not verify.
            default = served_certificate(port=run.https_port, server_name="other.example.test",
                                         roots_pem=None)
            assert "other.example.test" not in dns_names(default) if _has_san(default) else True
            with pytest.raises(Exception, match="CERTIFICATE_VERIFY_FAILED"):
                served_certificate(port=run.https_port, server_name="other.example.test",
                                   roots_pem=roots)

            status, body = https_get(port=run.https_port, host="shop.example.test",
                                     path="/cart?x=1", roots_pem=roots)
            assert (status, body) == (200, "shop-backend shop.example.test /cart?x=1 https")
            status, body = https_get(port=run.https_port, host="www.blog.example.test",
                                     path="/", roots_pem=roots)
            assert status == 200
            assert body.startswith("blog-backend www.blog.example.test / ")

            ready = run.condition("shop-tls", "Ready")
            assert ready["status"] == "True", ready


def _has_san(certificate: x509.Certificate) -> bool:
    try:
        certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return False
    return True


def test_secret_holds_chain_and_matching_key_with_private_file_mode(
    tmp_path: Path, pebble: PebbleServer
):
    manifests = _one_ingress(tmp_path, pebble)
    state = tmp_path / "state"
    with serving(manifests=manifests, state_dir=state, pebble=pebble) as run:
        secret = eventually(lambda: run.store.get(kind="Secret", namespace="default",
                                                  name="web-tls"), what="the Secret")
    assert secret["type"] == "kubernetes.io/tls"
    contents = tls_secret.read_tls_secret(secret)
    assert len(contents.chain) >= 2, "tls.crt must hold the leaf and the chain"
    assert inspect.key_matches_certificate(contents.key, contents.leaf)
    assert b"BEGIN EC PRIVATE KEY" in contents.key_pem  # ECDSA P-256, PKCS1 by default
    annotations = secret["metadata"]["annotations"]
    assert annotations["cert-manager.io/certificate-name"] == "web-tls"
    assert annotations["cert-manager.io/issuer-name"] == "pebble"
    assert annotations["cert-manager.io/issuer-kind"] == "ClusterIssuer"
    for path in [state, *state.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o600 if path.is_file() else 0o700), (path, oct(mode))
    key_bytes = base64.b64decode(secret["data"]["tls.key"])
    for path in (state / "objects").rglob("*.yaml"):
        if "Secret" not in path.parts:
            assert key_bytes not in path.read_bytes()


def test_restart_serves_the_same_certificate_without_a_new_order(
    tmp_path: Path, pebble: PebbleServer, caplog: pytest.LogCaptureFixture
):
    manifests = _one_ingress(tmp_path, pebble)
    state = tmp_path / "state"
    roots = pebble.issuance_roots_pem()
    with serving(manifests=manifests, state_dir=state, pebble=pebble) as run:
        first = eventually(lambda: _served(run.https_port, "web.example.test", roots))
        eventually(lambda: run.condition("web-tls", "Ready").get("status") == "True")
    orders_before = _orders(state)
    assert len(orders_before) == 1
    # What the data plane parsed of it, kept for the restart (not the key: names, expiry).
    cache = state / "certificate-cache"
    assert stat.S_IMODE(cache.stat().st_mode) == 0o600
    assert b"web.example.test" in cache.read_bytes()
    assert standalone._read_validation_cache(state / "validation-cache")  # contents found valid
    caplog.set_level(logging.INFO, logger="certctl.runtime.dataplane_feed")
    with serving(manifests=manifests, state_dir=state, pebble=pebble) as run:
        again = eventually(lambda: _served(run.https_port, "web.example.test", roots))
        eventually(lambda: run.standalone.queue.idle(), what="the controllers to settle")
        time.sleep(0.3)
        assert (run.certificate("web-tls") or {})["status"]["revision"] == 1
    assert again.serial_number == first.serial_number
    assert _orders(state) == orders_before
    assert "serving certificates from 1 Secrets (1 of them as parsed before the last stop)" \
        in caplog.messages


def test_restart_continues_the_order_in_flight_instead_of_placing_another(
    tmp_path: Path, pebble: PebbleServer
):
    manifests = _one_ingress(tmp_path, pebble)
    state = tmp_path / "state"
    # First run: the self-check points at a closed port, so the challenge can
    # never be accepted and the order stays pending when certctl stops.
    with serving(manifests=manifests, state_dir=state, pebble=pebble,
                 self_check_port=free_port()) as run:
        def order_in_flight() -> dict[str, Any] | None:
            orders = run.store.list(kind="Order")
            challenges = run.store.list(kind="Challenge")
            if len(orders) == 1 and orders[0].get("status", {}).get("url") and challenges and (
                "self-check failed" in challenges[0].get("status", {}).get("reason", "")
            ):
                found: dict[str, Any] = orders[0]
                return found
            return None

        pending = eventually(order_in_flight, what="an order waiting on its self-check")
    roots = pebble.issuance_roots_pem()
    with serving(manifests=manifests, state_dir=state, pebble=pebble) as run:
        eventually(lambda: _served(run.https_port, "web.example.test", roots))
        orders = run.store.list(kind="Order")
    assert [o["metadata"]["name"] for o in orders] == [pending["metadata"]["name"]]
    assert orders[0]["status"]["url"] == pending["status"]["url"]
    assert orders[0]["status"]["state"] == "valid"


def test_deleted_secret_is_restored_without_a_new_order(tmp_path: Path, pebble: PebbleServer):
    manifests = _one_ingress(tmp_path, pebble)
    state = tmp_path / "state"
    roots = pebble.issuance_roots_pem()
    with serving(manifests=manifests, state_dir=state, pebble=pebble) as run:
        first = eventually(lambda: _served(run.https_port, "web.example.test", roots))
        eventually(lambda: run.condition("web-tls", "Ready").get("status") == "True")
        orders = _orders(state)
        run.store.delete(kind="Secret", namespace="default", name="web-tls")

        def restored() -> bool:
            ready = run.condition("web-tls", "Ready")
            return ready.get("status") == "True" and "restored" in ready.get("message", "")

        eventually(restored, what="the Secret restored from the kept copy")
        served = eventually(lambda: _served(run.https_port, "web.example.test", roots))
        assert served.serial_number == first.serial_number
        assert (run.certificate("web-tls") or {})["status"]["revision"] == 1
    assert _orders(state) == orders


def test_invalid_manifests_are_reported_by_file_object_and_field_and_the_rest_keeps_working(
    tmp_path: Path, pebble: PebbleServer, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.INFO)
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    write_yaml(manifests / "issuer.yaml", cluster_issuer(pebble))
    (manifests / "broken.yaml").write_text("kind: Ingress\nmetadata: [unclosed\n")
    write_yaml(manifests / "no-secret.yaml",
               ingress("nosecret", hosts=["nosecret.example.test"], secret_name=None))
    write_yaml(manifests / "bad-host.yaml",
               ingress("badhost", hosts=["bad_host!.example.test"], secret_name="bad-tls"))
    write_yaml(manifests / "unknown-issuer.yaml",
               ingress("lost", hosts=["lost.example.test"], secret_name="lost-tls",
                       annotations={"cert-manager.io/cluster-issuer": "does-not-exist"}))
    write_yaml(manifests / "wildcard.yaml",
               ingress("wild", hosts=["*.wild.example.test"], secret_name="wild-tls"))
    write_yaml(manifests / "good.yaml",
               ingress("good", hosts=["good.example.test"], secret_name="good-tls"))
    roots = pebble.issuance_roots_pem()
    with serving(manifests=manifests, state_dir=tmp_path / "state", pebble=pebble) as run:
        eventually(lambda: _served(run.https_port, "good.example.test", roots),
                   what="the valid Ingress to be served despite its broken neighbours")
        lost = eventually(lambda: run.condition("lost-tls", "Ready").get("reason") and
                          run.condition("lost-tls", "Ready"))
        assert lost["reason"] == "IssuerNotFound"
        assert lost["message"] == "ClusterIssuer does-not-exist not found"
        wild = eventually(lambda: run.condition("wild-tls", "Ready").get("reason") and
                          run.condition("wild-tls", "Ready"))
        assert wild["reason"] == "BadConfig"
        assert "spec.dnsNames[0]" in wild["message"]
        assert "DNS-01" in wild["message"]
        orders = run.store.list(kind="Order")
        assert {o["metadata"]["labels"]["certctl.io/certificate-name"] for o in orders} == {
            "good-tls"}, "no ACME order for invalid Certificates"
        assert run.certificate("bad-tls") is None
        assert run.certificate("nosecret") is None

    log = caplog.text
    assert f"{manifests / 'broken.yaml'}: invalid YAML" in log
    assert "no-secret.yaml#0: Ingress default/nosecret BadConfig: spec.tls[0].secretName" in log
    assert ("bad-host.yaml#0: Ingress default/badhost BadConfig: "
            "spec.rules[0].host: 'bad_host!") in log
    assert ("unknown-issuer.yaml#0: Certificate default/lost-tls IssuerNotFound: "
            "spec.issuerRef: ClusterIssuer does-not-exist not found") in log
    assert "wildcard.yaml#0: Certificate default/wild-tls BadConfig: spec.dnsNames[0]: " in log


def test_manifest_changes_apply_without_restart(tmp_path: Path, pebble: PebbleServer):
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    write_yaml(manifests / "issuer.yaml", cluster_issuer(pebble))
    roots = pebble.issuance_roots_pem()
    with serving(manifests=manifests, state_dir=tmp_path / "state", pebble=pebble) as run:
        added = write_yaml(manifests / "late.yaml",
                           ingress("late", hosts=["late.example.test"], secret_name="late-tls"))
        eventually(lambda: _served(run.https_port, "late.example.test", roots),
                   what="an Ingress added while running to be served")
        added.unlink()
        eventually(lambda: run.certificate("late-tls") is None,
                   what="the Certificate of a removed Ingress to go")


def test_plain_http_redirects_to_https_but_not_acme_challenges(
    tmp_path: Path, pebble: PebbleServer
):
    manifests = _one_ingress(tmp_path, pebble)
    roots = pebble.issuance_roots_pem()
    with serving(manifests=manifests, state_dir=tmp_path / "state", pebble=pebble) as run:
        eventually(lambda: _served(run.https_port, "web.example.test", roots))
        status, headers, _ = http_get(port=run.http_port, host="web.example.test",
                                      path="/a/b?c=d")
        assert status == 308
        assert headers["location"] == f"https://web.example.test:{run.https_port}/a/b?c=d"
        status, _, _ = http_get(port=run.http_port, host="web.example.test",
                                path="/.well-known/acme-challenge/unknown-token")
        assert status == 404


def test_cli_serve_then_status_shows_the_certificate(tmp_path: Path, pebble: PebbleServer):
    manifests = _one_ingress(tmp_path, pebble)
    state = tmp_path / "state"
    https_port = free_port()
    roots = pebble.issuance_roots_pem()
    certctl = [sys.executable, "-m", "certctl"]
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen(
        [*certctl, "serve", "--manifests", str(manifests), "--state-dir", str(state),
         "--listen-address", "127.0.0.1", "--http-port", str(pebble.http_port),
         "--https-port", str(https_port), "--self-check-address", "127.0.0.1"],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        eventually(lambda: _served(https_port, "web.example.test", roots), timeout=60,
                   what="the CLI to serve the certificate")
        shown = eventually(lambda: json.loads(subprocess.run(
            [*certctl, "status", "certificate", "web-tls", "-n", "default", "--state-dir",
             str(state), "-o", "json"], capture_output=True, check=True, text=True).stdout))
        conditions = {c["type"]: c for c in shown["status"]["conditions"]}
        assert conditions["Ready"]["status"] == "True"
        assert shown["status"]["notAfter"] > shown["status"]["renewalTime"]
        text = subprocess.run([*certctl, "status", "certificate", "web-tls", "--state-dir",
                               str(state)], capture_output=True, check=True, text=True).stdout
        assert "ready: yes" in text
        # The issuer comes from the manifests, which status finds without being told.
        issuer = subprocess.run([*certctl, "status", "clusterissuer", "pebble", "--state-dir",
                                 str(state)], capture_output=True, check=True, text=True).stdout
        assert "Ready: True (ACMEAccountRegistered)" in issuer
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    missing = subprocess.run([*certctl, "status", "certificate", "nope", "--state-dir",
                              str(state)], capture_output=True, text=True, check=False)
    assert missing.returncode == 1
    assert "Certificate default/nope not found" in missing.stderr


def test_one_metrics_port_serves_controller_and_data_plane_metrics(
    tmp_path: Path, pebble: PebbleServer
) -> None:
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    write_yaml(manifests / "all.yaml", cluster_issuer(pebble),
               ingress("shop", hosts=["shop.example.test"], secret_name="shop-tls"))
    metrics_port = free_port()
    run = Serving(manifests=manifests, state_dir=tmp_path / "state", pebble=pebble,
                  metrics_port=metrics_port).start()
    try:
        roots = pebble.issuance_roots_pem()
        eventually(partial(_served, run.https_port, "shop.example.test", roots),
                   what="the certificate")
        scraped = requests.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
    finally:
        run.stop()
    assert 'certmanager_certificate_ready_status{condition="True"' in scraped
    assert "certmanager_http_acme_client_request_count_total{" in scraped
    assert "certctl_dataplane_tls_handshakes" in scraped


def test_serve_explains_a_port_in_use_and_an_unwritable_state_dir(tmp_path: Path):
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "certctl", "serve", "--manifests", str(manifests),
             "--state-dir", str(tmp_path / "state"), "--listen-address", "127.0.0.1",
             "--http-port", str(port), "--https-port", str(free_port())],
            capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 1
    assert f"certctl: cannot listen on 127.0.0.1 ports {port}/" in result.stderr
    assert "Traceback" not in result.stderr

    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    result = subprocess.run(
        [sys.executable, "-m", "certctl", "serve", "--manifests", str(manifests),
         "--state-dir", str(not_a_dir / "state")],
        capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 1
    assert f"certctl: --state-dir {not_a_dir / 'state'}: " in result.stderr
    assert "Traceback" not in result.stderr


def test_a_certificate_cache_not_as_written_is_not_used(tmp_path: Path):
    """Every certificate is parsed then, as without one (the cache only saves time)."""
    path = tmp_path / standalone.CERTIFICATE_CACHE
    facts = {b"\x01" * 32: certstore.CertificateFacts(
        names=("a.example.test", "192.0.2.1"), addressed=True,
        not_after=datetime.datetime(2027, 3, 4, 5, 6, 7, tzinfo=datetime.UTC))}
    path.write_bytes(standalone._certificate_cache(facts))
    assert standalone._read_certificate_cache(path) == facts
    for damaged in (b"not a cache",
                    local.dump_cache({b"\x01" * 32: ["a.example.test", False, 1]}),
                    local.dump_cache({"not bytes": [["a.example.test"], False, 1]}),
                    local.dump_cache({b"\x01" * 32: [["a.example.test"], "yes", 1]}),
                    standalone._certificate_cache(facts)[:-3]):
        path.write_bytes(damaged)
        assert standalone._read_certificate_cache(path) == {}, damaged
    assert standalone._read_certificate_cache(tmp_path / "absent") == {}


def test_a_validation_cache_of_other_crds_is_not_used(tmp_path: Path):
    """Another certctl's CRDs may refuse what these accepted: its contents are validated."""
    path = tmp_path / standalone.VALIDATION_CACHE
    digests = [b"\x02" * 32, b"\x03" * 32]
    path.write_bytes(local.dump_cache({"crds": schema.crds_digest(), "valid": digests}))
    assert standalone._read_validation_cache(path) == digests
    for other in ({"crds": b"\x00" * 32, "valid": digests},
                  {"crds": schema.crds_digest(), "valid": ["not bytes"]},
                  [schema.crds_digest(), digests]):
        path.write_bytes(local.dump_cache(other))
        assert standalone._read_validation_cache(path) == [], other
    path.write_bytes(b"damaged")
    assert standalone._read_validation_cache(path) == []
