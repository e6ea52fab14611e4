"""Graceful shutdown of `certctl serve` on SIGTERM, run as the command users start, over
real sockets.

The drain is the data plane's own (tests/test_drain.py covers its frames and the cluster
command); here `serve` must hand it its --drain-timeout: a request in flight when SIGTERM
arrives completes with 200 (answered with `Connection: close`), new connections are
refused meanwhile, one that outlasts the drain is cut, and the process exits by itself with
status 0 once the drain timeout is over.
"""

from __future__ import annotations

import base64
import signal
import time
from pathlib import Path

from tests.pebble import free_port
from tests.serving import eventually, ingress, service_with_endpoints, write_yaml
from tests.test_drain import HOST, SlowBackend, https_get, refused, served, wait_ready
from tests.test_health_cluster import command
from tests.testca import TestCA

DRAIN_TIMEOUT = 5.0
SLOW = 2.0  # seconds the completing request takes: within the drain


def test_sigterm_lets_serve_finish_in_flight_requests_within_the_drain_timeout(
    tmp_path: Path,
) -> None:
    ca = TestCA()
    issued = ca.issue(HOST)
    backend = SlowBackend("127.0.0.1")
    try:
        manifests = tmp_path / "manifests"
        manifests.mkdir()
        write_yaml(
            manifests / "site.yaml",
            {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
             "metadata": {"name": "drain-tls", "namespace": "default"},
             "data": {"tls.crt": base64.b64encode(issued.chain_pem).decode(),
                      "tls.key": base64.b64encode(issued.key_pem).decode()}},
            ingress("drain", hosts=[HOST], secret_name="drain-tls", annotations={},
                    backend="slow"),
            *service_with_endpoints("slow", port=backend.port),
        )
        http_port, https_port, admin_port = free_port(), free_port(), free_port()
        log = tmp_path / "serve.log"
        with command(["serve", "--manifests", str(manifests),
                      "--state-dir", str(tmp_path / "state"),
                      "--listen-address", "127.0.0.1", "--http-port", str(http_port),
                      "--https-port", str(https_port), "--metrics-port", str(admin_port),
                      "--drain-timeout", f"{DRAIN_TIMEOUT:g}"], log=log) as process:
            wait_ready(admin_port, process, log)
            eventually(lambda: served(port=https_port, ca=ca), what="the route served",
                       timeout=30)
            begun = backend.begun
            in_flight = https_get(port=https_port, ca=ca, path=f"/sleep/{SLOW:g}")
            too_long = https_get(port=https_port, ca=ca, path="/sleep/60")
            eventually(lambda: backend.begun == begun + 2, what="2 requests in flight",
                       timeout=10)

            process.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            eventually(lambda: refused(https_port) and refused(http_port),
                       what="new connections refused", timeout=3)
            assert not in_flight.done.is_set(), "the in-flight request was cut at SIGTERM"

            assert in_flight.done.wait(SLOW + 5), "the in-flight request did not finish"
            assert in_flight.error is None, in_flight.error
            assert (in_flight.status, in_flight.body) == (200, f"slept {SLOW:g}\n".encode())
            assert in_flight.headers.get("connection") == "close"

            assert process.wait(DRAIN_TIMEOUT + 10) == 0, log.read_text()
            elapsed = time.monotonic() - signalled
            assert too_long.done.wait(5)
            assert too_long.status is None and too_long.error is not None
            assert DRAIN_TIMEOUT - 0.5 <= elapsed < DRAIN_TIMEOUT + 5, elapsed
            assert "still busy after the drain timeout: cut" in log.read_text()
    finally:
        backend.shutdown()
        backend.server_close()


def test_sigterm_while_serve_starts_stops_it_cleanly_once_started(tmp_path: Path) -> None:
    """A SIGTERM that lands while the manifests load (a rollout's, a service manager's)
    takes the clean stop's way, not the default action: exit status 0, the state cache
    written for the next start."""
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    # Enough Ingresses that loading them takes a while after the loop is up.
    write_yaml(manifests / "fleet.yaml", *(
        ingress(f"site-{number}", hosts=[f"site-{number}.example.test"], secret_name=None,
                annotations={}, backend="web") for number in range(1500)))
    log = tmp_path / "serve.log"
    state = tmp_path / "state"
    with command(["serve", "--manifests", str(manifests), "--state-dir", str(state),
                  "--listen-address", "127.0.0.1", "--http-port", str(free_port()),
                  "--https-port", str(free_port()), "--metrics-port", str(free_port())],
                 log=log) as process:
        eventually(lambda: "event loop: uvloop" in log.read_text(), what="the loop running",
                   timeout=30)
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0, log.read_text()
    text = log.read_text()
    assert "stopping" in text, text
    assert text.index("serving HTTP") < text.index("stopping"), text  # stopped once started
    assert (state / "state-cache").exists()
