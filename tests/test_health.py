"""/healthz and /readyz of `certctl serve`, and what liveness means.

`serve` runs as users start it (a subprocess): its admin address binds loopback
unless told otherwise, answers ready once routes and certificates are loaded,
and after SIGTERM answers 503 while it keeps serving for --shutdown-delay.
Liveness asks the event loop itself: a loop stuck in a blocking call fails it.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import prometheus_client
import requests

from certctl.admin.health import Health
from certctl.admin.server import AdminServer
from tests.pebble import PebbleServer, free_port
from tests.serving import cluster_issuer, eventually, http_get, ingress, write_yaml


def _probe(port: int, path: str) -> tuple[int, str]:
    response = requests.get(f"http://127.0.0.1:{port}{path}", timeout=5)
    return response.status_code, response.text


def test_serve_binds_loopback_is_ready_and_drains_after_sigterm(
    tmp_path: Path, pebble: PebbleServer
) -> None:
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    write_yaml(manifests / "all.yaml", cluster_issuer(pebble),
               ingress("web", hosts=["web.example.test"], secret_name="web-tls"))
    admin = free_port()
    log = tmp_path / "serve.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "certctl", "serve", "--manifests", str(manifests),
             "--state-dir", str(tmp_path / "state"), "--listen-address", "127.0.0.1",
             "--http-port", str(pebble.http_port), "--https-port", str(free_port()),
             "--self-check-address", "127.0.0.1", "--metrics-port", str(admin),
             "--shutdown-delay", "2s"],
            stdout=output, stderr=subprocess.STDOUT)
    try:
        eventually(lambda: _probe(admin, "/readyz") == (200, "ok\n") or process.poll(),
                   what="serve ready", timeout=30)
        assert process.poll() is None, log.read_text()
        assert f"admin address (metrics, probes, dashboard): http://127.0.0.1:{admin}/" \
            in log.read_text()
        assert _probe(admin, "/healthz") == (200, "ok\n")

        process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        eventually(lambda: _probe(admin, "/readyz") == (503, "not ready: shutting down\n"),
                   what="not ready after SIGTERM", timeout=1.5)
        assert process.poll() is None
        # Still serving: plain HTTP for the host is answered (redirected once issued).
        assert http_get(port=pebble.http_port, host="web.example.test", path="/")[0] in (
            308, 503)
        assert process.wait(15) == 0, log.read_text()
        assert time.monotonic() - signalled >= 1.5, "exited before --shutdown-delay"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def test_liveness_fails_while_the_event_loop_is_stuck() -> None:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    health = Health(waiting_for=("routes",))
    health.watch_loop(loop)
    try:
        assert health.liveness(timeout=1.0) == (True, "ok")
        loop.call_soon_threadsafe(time.sleep, 1.5)  # a blocking call on the loop
        time.sleep(0.1)
        assert health.liveness(timeout=0.5) == (
            False, "not alive: the event loop did not answer within 0.5 s")
        assert eventually(lambda: health.liveness(timeout=1.0)[0], what="alive again")
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()
    assert health.liveness() == (False, "not alive: the event loop has stopped")


def test_readiness_names_what_it_waits_for_and_draining_wins() -> None:
    health = Health(waiting_for=("watches started", "routes loaded"))
    assert health.readiness() == (False, "not ready: waiting for watches started, routes loaded")
    health.done("routes loaded")
    assert health.readiness() == (False, "not ready: waiting for watches started")
    health.done("watches started")
    health.done("watches started")
    assert health.readiness() == (True, "ok")
    health.start_draining()
    assert health.readiness() == (False, "not ready: shutting down")


def test_admin_address_binds_each_host_given_on_one_port_and_no_other() -> None:
    admin = AdminServer(address=("127.0.0.1, 127.0.0.2", 0),
                        health=Health(waiting_for=("watches started",)),
                        registry=prometheus_client.CollectorRegistry())
    port = admin.start()
    try:
        for host in ("127.0.0.1", "127.0.0.2"):
            answer = requests.get(f"http://{host}:{port}/readyz", timeout=5)
            assert (answer.status_code, answer.text) == (
                503, "not ready: waiting for watches started\n")
        with socket.socket() as other:
            assert other.connect_ex(("127.0.0.3", port)) != 0
    finally:
        admin.stop()
    with socket.socket() as closed:
        assert closed.connect_ex(("127.0.0.1", port)) != 0
