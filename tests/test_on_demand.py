"""On-demand TLS: `certctl serve` obtains a certificate during a name's first handshake.

End to end with real Pebble and real TLS sockets: many concurrent first
handshakes for a few permitted names place one order per name and all get the
new certificate; refused names (outside the allow-list, refused by an ask
endpoint on loopback, an ask endpoint that does not answer, beyond the
global rate limit) get the default certificate and place no order. Around
that, the policy's pure checks and the CLI's refusal of an open policy.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime
import functools
import http.server
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from certctl import cli
from certctl.dataplane import certstore
from certctl.runtime import on_demand
from certctl.runtime.standalone import ServeOptions, Standalone
from tests.pebble import PebbleServer, free_port
from tests.serving import cluster_issuer, dns_names, eventually, write_yaml

NAMESPACE = "certctl"


@contextmanager
def serving(*, tmp_path: Path, pebble: PebbleServer | None,
            policy: on_demand.Policy) -> Iterator[Standalone]:
    """`certctl serve` with on-demand TLS, its loop on a thread of its own."""
    manifests = tmp_path / "manifests"
    manifests.mkdir(exist_ok=True)
    if pebble is not None:
        write_yaml(manifests / "issuer.yaml", cluster_issuer(pebble))
    options = ServeOptions(
        manifests=manifests, state_dir=tmp_path / "state", listen_address="127.0.0.1",
        http_port=pebble.http_port if pebble is not None else free_port(),
        https_port=free_port(), self_check_address="127.0.0.1", workers=4,
        backoff_base=datetime.timedelta(seconds=1), watch_manifests=False,
        on_demand_tls=policy)
    standalone = Standalone(options=options)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(standalone.start(), loop).result(15)
    try:
        yield standalone
    finally:
        asyncio.run_coroutine_threadsafe(standalone.stop(), loop).result(20)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def handshake(*, port: int, name: str, timeout: float) -> tuple[x509.Certificate, float]:
    """The leaf presented for SNI `name` (not verified) and how long the handshake took."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw, \
            context.wrap_socket(raw, server_hostname=name) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der), time.monotonic() - started


def is_default(certificate: x509.Certificate) -> bool:
    common_names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return [attribute.value for attribute in common_names] == [certstore.DEFAULT_COMMON_NAME]


def concurrently(names: list[str], *, port: int,
                 timeout: float) -> list[tuple[str, x509.Certificate, float]]:
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(names)) as pool:
        results = list(pool.map(lambda n: handshake(port=port, name=n, timeout=timeout), names))
    return [(name, leaf, took) for name, (leaf, took) in zip(names, results, strict=True)]


def on_demand_certificates(standalone: Standalone) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = standalone.store.list(
        kind="Certificate", namespace=NAMESPACE, labels={on_demand.LABEL: "true"})
    return found


def ready_status(standalone: Standalone, name: str) -> dict[str, Any] | None:
    """The Certificate's status once its Ready condition is True."""
    found = standalone.store.get(kind="Certificate", namespace=NAMESPACE, name=name) or {}
    status: dict[str, Any] = found.get("status") or {}
    ready = [c for c in status.get("conditions") or [] if c["type"] == "Ready"]
    return status if ready and ready[0]["status"] == "True" else None


@contextmanager
def ask_endpoint(allowed: set[str]) -> Iterator[tuple[str, list[str]]]:
    """An ask endpoint on loopback: 200 for `allowed` names, 403 for the rest; yields its URL
    and the domains it was asked about."""
    asked: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            domain = self.path.partition("domain=")[2]
            asked.append(domain)
            self.send_response(200 if domain in allowed else 403)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/check?token=t", asked
    finally:
        server.shutdown()
        server.server_close()


def policy(**fields: object) -> on_demand.Policy:
    defaults: dict[str, object] = {"issuer_kind": "ClusterIssuer", "issuer_name": "pebble",
                                   "namespace": NAMESPACE}
    return on_demand.Policy(**{**defaults, **fields})  # type: ignore[arg-type]


# --- end to end with Pebble ------------------------------------------------------------


def test_concurrent_first_handshakes_share_one_order_per_name(
    tmp_path: Path, pebble: PebbleServer
) -> None:
    allowed = ["a.shop.test", "b.shop.test", "c.shop.test"]
    wait = 30.0
    with serving(tmp_path=tmp_path, pebble=pebble,
                 policy=policy(allow=("*.shop.test",), wait=wait, names_per_minute=3)) as serve:
        port = serve.options.https_port
        names = [allowed[i % 3] for i in range(20)] + ["outside.test"] * 4
        results = concurrently(names, port=port, timeout=wait + 10)
        for name, leaf, took in results:
            if name == "outside.test":
                assert is_default(leaf), "a name outside the allow-list got a certificate"
                assert took < 5, f"a refused handshake waited {took:.1f} s"
            else:
                assert dns_names(leaf) == [name], f"{name} got {dns_names(leaf)}"
                assert took < wait + 5
        assert len(pebble.log_lines("Added order")) == 3
        # The new certificate verifies against Pebble's roots, on a later handshake too.
        roots = pebble.issuance_roots_pem()
        verified = ssl.create_default_context(cadata=roots.decode())
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
                verified.wrap_socket(raw, server_hostname="b.shop.test") as tls:
            assert tls.version() is not None

        # A normal Certificate: Ready, with a renewal time, and its kept Secret.
        certificates = on_demand_certificates(serve)
        assert sorted(str(c["metadata"]["name"]) for c in certificates) == [
            "on-demand-a-shop-test", "on-demand-b-shop-test", "on-demand-c-shop-test"]
        for certificate in certificates:
            name = certificate["metadata"]["name"]
            status = eventually(functools.partial(ready_status, serve, name),
                                what=f"{name} Ready")
            assert status.get("renewalTime")
            secret = serve.store.get(kind="Secret", namespace=NAMESPACE,
                                     name=certificate["metadata"]["name"])
            assert secret is not None and secret["data"]["tls.crt"]

        # The global limit (3 new names per minute) is spent: a fourth permitted name is
        # refused at once, and no order is placed for it.
        leaf, took = handshake(port=port, name="d.shop.test", timeout=10)
        assert is_default(leaf) and took < 5
        assert len(pebble.log_lines("Added order")) == 3
        assert len(on_demand_certificates(serve)) == 3

    # Kept across a restart: served from the first handshake on, no new order.
    with serving(tmp_path=tmp_path, pebble=pebble,
                 policy=policy(allow=("*.shop.test",), wait=wait)) as serve:
        leaf, _took = handshake(port=serve.options.https_port, name="c.shop.test", timeout=10)
        assert dns_names(leaf) == ["c.shop.test"]
        assert len(pebble.log_lines("Added order")) == 3


def test_names_the_ask_endpoint_refuses_place_no_order(
    tmp_path: Path, pebble: PebbleServer
) -> None:
    with ask_endpoint({"ok.asked.test"}) as (url, asked), \
            serving(tmp_path=tmp_path, pebble=pebble,
                    policy=policy(ask_url=url, wait=30.0)) as serve:
        port = serve.options.https_port
        results = concurrently(["no.asked.test"] * 10 + ["ok.asked.test"] * 5, port=port,
                               timeout=40)
        for name, leaf, _took in results:
            if name == "no.asked.test":
                assert is_default(leaf)
            else:
                assert dns_names(leaf) == ["ok.asked.test"]
        # Concurrent handshakes for a name share one question (the query the URL had kept).
        assert sorted(asked) == ["no.asked.test", "ok.asked.test"]
        assert len(pebble.log_lines("Added order")) == 1
        assert [c["metadata"]["name"] for c in on_demand_certificates(serve)] == [
            "on-demand-ok-asked-test"]


# --- without a CA ------------------------------------------------------------------------


def test_unreachable_ask_endpoint_refuses(tmp_path: Path) -> None:
    closed = f"http://127.0.0.1:{free_port()}/ask"
    with serving(tmp_path=tmp_path, pebble=None, policy=policy(ask_url=closed)) as serve:
        leaf, took = handshake(port=serve.options.https_port, name="x.unasked.test", timeout=10)
        assert is_default(leaf) and took < 5
        assert on_demand_certificates(serve) == []


def test_the_wait_is_bounded_then_the_name_backs_off(tmp_path: Path) -> None:
    # No such issuer: the Certificate is created but never issued.
    with serving(tmp_path=tmp_path, pebble=None,
                 policy=policy(issuer_name="absent", allow=("slow.test",), wait=3.0)) as serve:
        port = serve.options.https_port
        results = concurrently(["slow.test"] * 5, port=port, timeout=10)
        for _name, leaf, took in results:
            assert is_default(leaf)
            assert 2.8 < took < 6, f"the handshake took {took:.1f} s, the bound is 3 s"
        assert len(on_demand_certificates(serve)) == 1
        # Backing off: the next handshake does not wait again.
        leaf, took = handshake(port=port, name="slow.test", timeout=10)
        assert is_default(leaf) and took < 1.5, f"waited {took:.1f} s again"
        # Names that are not certifiable DNS names are never held.
        for name in ("localhost", "127.0.0.1"):
            leaf, took = handshake(port=port, name=name, timeout=10)
            assert is_default(leaf) and took < 1.5, f"{name} waited {took:.1f} s"
        assert len(on_demand_certificates(serve)) == 1


def test_a_name_another_certificate_asks_for_gets_no_second_certificate(
    tmp_path: Path
) -> None:
    # An Ingress's Certificate (here one whose issuer does not exist, so it stays pending)
    # names the host: an on-demand Certificate for it would be a second order for one name.
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    write_yaml(manifests / "certificate.yaml", {
        "apiVersion": "cert-manager.io/v1", "kind": "Certificate",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"secretName": "web-tls", "dnsNames": ["web.example.test"],
                 "issuerRef": {"name": "absent", "kind": "ClusterIssuer"}}})
    with serving(tmp_path=tmp_path, pebble=None,
                 policy=policy(issuer_name="absent", allow=("*.example.test",),
                               wait=1.0)) as serve:
        port = serve.options.https_port
        leaf, _took = handshake(port=port, name="web.example.test", timeout=10)
        assert is_default(leaf)
        assert on_demand_certificates(serve) == []
        # A name no Certificate asks for still gets one of its own.
        handshake(port=port, name="other.example.test", timeout=10)
        assert [c["spec"]["dnsNames"] for c in on_demand_certificates(serve)] == \
            [["other.example.test"]]


# --- the policy's pure checks ---------------------------------------------------------


def test_patterns_match_whole_labels() -> None:
    patterns = ("*.example.test", "exact.test")
    assert on_demand.allowed_by_patterns("a.example.test", patterns)
    assert on_demand.allowed_by_patterns("exact.test", patterns)
    assert not on_demand.allowed_by_patterns("a.b.example.test", patterns)
    assert not on_demand.allowed_by_patterns("example.test", patterns)
    assert not on_demand.allowed_by_patterns("sub.exact.test", patterns)


def test_server_names_are_normalized_or_refused() -> None:
    assert on_demand.dns_name("Shop.Example.TEST.") == "shop.example.test"
    for bad in ("localhost", "10.0.0.1", "*.example.test", "-a.example.test",
                "a_b.example.test", "a." + "x" * 64 + ".test"):
        assert on_demand.dns_name(bad) is None, bad


def test_certificate_names_stay_short_and_distinct() -> None:
    assert on_demand.certificate_name("a.shop.test") == "on-demand-a-shop-test"
    long_a = "a" * 60 + ".example.test"
    long_b = "a" * 60 + ".example.tesu"
    assert len(on_demand.certificate_name(long_a)) <= on_demand.MAX_OBJECT_NAME
    assert on_demand.certificate_name(long_a) != on_demand.certificate_name(long_b)


def test_rate_limit_slides_with_the_clock() -> None:
    limit = on_demand.RateLimit(limit=2, interval=60.0)
    assert limit.take(0.0) and limit.take(1.0)
    assert not limit.take(59.0)
    assert limit.take(60.5)  # the first has left the window
    assert not limit.take(60.9)


def test_open_and_malformed_policies_are_refused() -> None:
    with pytest.raises(ValueError, match="--on-demand-tls-ask or --on-demand-tls-allow"):
        policy()
    with pytest.raises(ValueError, match="--on-demand-tls-ask"):
        policy(ask_url="ftp://example.test/ask")
    with pytest.raises(ValueError, match="--on-demand-tls-allow"):
        policy(allow=("*",))
    with pytest.raises(ValueError, match="--on-demand-tls-issuer"):
        on_demand.parse_issuer("pebble")


def test_cli_refuses_on_demand_without_ask_or_allow(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main(["serve", "--manifests", str(tmp_path), "--state-dir", str(tmp_path / "s"),
                     "--on-demand-tls-issuer", "ClusterIssuer/pebble"])
    assert code == 2
    assert "--on-demand-tls-ask or --on-demand-tls-allow" in capsys.readouterr().err
