"""The lifecycle end to end: `certctl serve`, real Pebble, real TLS handshakes.

- Restarts and a lost namespace place no new order: the kept copy comes back.
- Short-lived certificates renew themselves before they expire, and the data
  plane swaps to each new one while a client keeps handshaking: no handshake
  fails, ever.

Both run against Debian's Pebble 2.4 and the current release.
"""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509

from certctl.controllers import order_budget
from tests.pebble import PebbleBuild, PebbleServer, free_port
from tests.serving import (
    cluster_issuer,
    dns_names,
    eventually,
    ingress,
    served_certificate,
    serving,
    write_yaml,
)

HOST = "web.example.test"


@pytest.fixture
def pebble(any_pebble: PebbleServer) -> PebbleServer:
    """This module's tests meet both Pebbles (conftest's `any_pebble`)."""
    return any_pebble


def _served(port: int, roots: bytes) -> x509.Certificate | None:
    certificate = served_certificate(port=port, server_name=HOST, roots_pem=roots)
    return certificate if HOST in dns_names(certificate) else None


def _orders_placed(run: object) -> int:
    """Orders on the ledger certctl keeps per name set (it survives everything but the state)."""
    store = run.store  # type: ignore[attr-defined]
    (ledger,) = store.list(kind="Secret", namespace="certctl",
                           labels={order_budget.LEDGER_LABEL: "true"})
    return len(json.loads(ledger["metadata"]["annotations"][order_budget.PLACED_ANNOTATION]))


def test_restart_and_a_lost_namespace_place_no_new_order(tmp_path: Path, pebble: PebbleServer
                                                         ) -> None:
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    write_yaml(manifests / "all.yaml", cluster_issuer(pebble),
               ingress("web", hosts=[HOST], secret_name="web-tls"))
    state = tmp_path / "state"
    roots = pebble.issuance_roots_pem()
    with serving(manifests=manifests, state_dir=state, pebble=pebble) as run:
        first = eventually(lambda: _served(run.https_port, roots), what="the first certificate")
        eventually(lambda: run.condition("web-tls", "Ready").get("status") == "True")

    # A plain restart: everything is in place, nothing to do.
    with serving(manifests=manifests, state_dir=state, pebble=pebble) as run:
        eventually(lambda: _served(run.https_port, roots))
        eventually(run.standalone.queue.idle, what="the controllers to settle")
        assert run.store.list(kind="Order", namespace="default") != []  # the one from before
        assert _orders_placed(run) == 1

    # The namespace is deleted while certctl is down: its Secret, Certificate and Orders go.
    for kind in ("Secret", "Certificate", "Order", "Challenge"):
        shutil.rmtree(state / "objects" / kind / "default", ignore_errors=True)

    with serving(manifests=manifests, state_dir=state, pebble=pebble) as run:
        again = eventually(lambda: _served(run.https_port, roots), what="the restored certificate")
        eventually(run.standalone.queue.idle, what="the controllers to settle")
        assert again.serial_number == first.serial_number
        assert run.store.list(kind="Order", namespace="default") == []
        assert _orders_placed(run) == 1
        assert "restored" in run.condition("web-tls", "Ready")["message"]


@dataclass
class HandshakeLoop:
    """Connects and handshakes (verifying against Pebble's root) until stopped."""

    port: int
    roots: bytes
    serials: list[int] = field(default_factory=list)  # in the order first seen
    handshakes: dict[int, int] = field(default_factory=dict)  # per serial served
    failures: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        context = ssl.create_default_context(cadata=self.roots.decode())
        while not self.stop.is_set():
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=5) as raw, \
                        context.wrap_socket(raw, server_hostname=HOST) as tls:
                    der = tls.getpeercert(binary_form=True)
                assert der is not None
                serial = x509.load_der_x509_certificate(der).serial_number
                if serial not in self.serials:
                    self.serials.append(serial)
                self.handshakes[serial] = self.handshakes.get(serial, 0) + 1
            except (OSError, AssertionError) as err:  # ssl.SSLError is an OSError
                self.failures.append(f"{time.time():.3f}: {err}")
            time.sleep(0.005)


def test_short_lived_certificates_renew_before_expiry_with_no_failed_handshake(
    tmp_path: Path, pebble_build: PebbleBuild
) -> None:
    # Pebble issues 7-second certificates here: renewal is due 2/3 through, about 4 s in.
    with PebbleServer.start(tmp_path=tmp_path, http_port=free_port(),
                            certificate_validity_period=8, build=pebble_build) as pebble:
        manifests = tmp_path / "manifests"
        manifests.mkdir()
        write_yaml(manifests / "all.yaml", cluster_issuer(pebble),
                   ingress("web", hosts=[HOST], secret_name="web-tls"))
        roots = pebble.issuance_roots_pem()
        with serving(manifests=manifests, state_dir=tmp_path / "state", pebble=pebble) as run:
            first = eventually(lambda: _served(run.https_port, roots), what="a certificate")
            loop = HandshakeLoop(port=run.https_port, roots=roots)
            client = threading.Thread(target=loop.run, daemon=True)
            client.start()
            try:
                eventually(lambda: len(loop.serials) >= 3 or loop.failures, timeout=30,
                           what="two renewals seen by the client")
            finally:
                loop.stop.set()
                client.join(10)
            status = run.certificate("web-tls")["status"]  # type: ignore[index]

    assert loop.failures == []
    assert loop.serials[0] == first.serial_number
    assert len(loop.serials) >= 3, "renewed twice by itself"
    # Each replaced certificate served several handshakes before its swap (a count, not a
    # rate: a loaded machine handshakes slower, not differently).
    assert all(loop.handshakes[serial] >= 3 for serial in loop.serials[:2]), \
        f"the client kept connecting through both swaps: {loop.handshakes}"
    assert status["revision"] >= 3
    assert status["renewalTime"] < status["notAfter"]
