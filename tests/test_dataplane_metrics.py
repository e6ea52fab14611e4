"""Prometheus metrics of the data plane, scraped from their own port like Prometheus would."""

from __future__ import annotations

import gc
import socket
import ssl
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.test_dataplane import EchoServer
from tests.test_dataplane_proxy import Running, echoed, running_plane, simple_ingress

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture(scope="module")
def plane() -> Iterator[Running]:
    backend = EchoServer("echo")
    with running_plane(
        ingresses=[
            simple_ingress("m", {("metrics.test", "/"): "echo", ("*.wild.test", "/"): "echo"})
        ],
        backends={"echo": (backend.port,)},
        tls_hosts=("metrics.test",),
        metrics_address=("127.0.0.1", 0),
    ) as running:
        yield running
    backend.shutdown()
    backend.server_close()


def scrape(running: Running) -> Samples:
    port = running.plane.metrics_port
    assert port is not None
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_requests_are_counted_by_rule_host_and_status(plane):
    before = scrape(plane)
    conn = plane.https("metrics.test")
    for _ in range(3):
        echoed(conn, "/")
    conn.request("GET", "/", headers={"Host": "nowhere.test"})
    assert conn.getresponse().read()
    conn = plane.http()
    echoed(conn, "/", headers={"Host": "a.wild.test"})
    after = scrape(plane)
    total = "certctl_dataplane_requests_total"
    assert value(after, total, host="metrics.test", status="200") - value(
        before, total, host="metrics.test", status="200"
    ) == 3
    assert (
        value(after, total, host="", status="404") - value(before, total, host="", status="404")
        == 1
    )
    assert value(after, total, host="*.wild.test", status="200") >= 1
    latency = "certctl_dataplane_upstream_response_seconds_count"
    assert value(after, latency, service="default/echo") - value(
        before, latency, service="default/echo"
    ) == 4


def test_handshakes_and_failed_handshakes_are_counted(plane):
    before = scrape(plane)
    port = plane.plane.https_port
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            plane.ca.client_context().wrap_socket(raw, server_hostname="metrics.test"):
        pass
    old_client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old_client.check_hostname = False
    old_client.verify_mode = ssl.CERT_NONE
    old_client.minimum_version = old_client.maximum_version = ssl.TLSVersion.TLSv1_2
    old_client.set_ciphers("AES128-SHA")  # no forward secrecy: refused by our policy
    with (
        pytest.raises(ssl.SSLError),
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
    ):
        old_client.wrap_socket(raw, server_hostname="metrics.test")
    for _ in range(50):
        gc.collect()  # a failed handshake's SSLObject may sit in a reference cycle
        after = scrape(plane)
        if value(after, "certctl_dataplane_tls_handshake_errors_total") > value(
            before, "certctl_dataplane_tls_handshake_errors_total"
        ):
            break
    handshakes = "certctl_dataplane_tls_handshakes_total"
    errors = "certctl_dataplane_tls_handshake_errors_total"
    assert value(after, handshakes) - value(before, handshakes) == 1
    assert value(after, errors) - value(before, errors) == 1


def test_loaded_certificates_and_their_expiry_are_exported(plane):
    samples = scrape(plane)
    assert value(samples, "certctl_dataplane_certificates") == 1
    expiry = value(
        samples,
        "certctl_dataplane_certificate_expiry_timestamp_seconds",
        namespace="default",
        secret="metrics.test",
    )
    ((_, not_after),) = plane.plane.certificates.loaded()
    assert expiry == not_after.timestamp()


