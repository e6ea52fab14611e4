"""ACME Renewal Information (RFC 9773) against the current Pebble, and its absence on 2.4.

- The client fetches a certificate's window by its CertID and sends `replaces`.
- `certctl serve` renews inside the CA's window; a window the CA moves (Pebble's
  management API) moves the renewal at the next check; the renewal order
  replaces the old certificate; a refused `replaces` is ordered again without.
- cert-manager #8993: a stale window left over from the replaced certificate
  renews nothing, whatever it says: one renewal, not a loop.
- Debian's Pebble 2.4 has no renewalInfo: the lifetime sets the renewal time.

Time: `certctl serve` runs on a clock the test moves forward past the CA's
Retry-After (6 hours), then the test hands the Certificate to the work queue,
as the timer would after 6 hours. Nothing sleeps, nothing asserts durations.
"""

from __future__ import annotations

import base64
import datetime
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography import x509

from certctl.api import conditions
from certctl.api.resources import ObjectKey
from certctl.controllers import certificate_orders, policies
from certctl.issuers.acme import ari
from certctl.issuers.acme.client import AcmeClient
from certctl.pki import renewal
from tests.lifecycle import World
from tests.pebble import PebbleServer, free_port
from tests.serving import Serving, cluster_issuer, eventually, ingress, write_yaml
from tests.test_acme_client import ChallengeResponder, _client, _issue
from tests.test_manifests import _violations as crd_violations

HOST = "web.example.test"
SECRET = "web-tls"
CERTIFICATE_KEY = ObjectKey(kind="Certificate", namespace="default", name=SECRET)
DAY = datetime.timedelta(days=1)
PEBBLE_RETRY_AFTER = datetime.timedelta(hours=6)  # what Pebble says for every window


class MovableClock:
    """Real time plus an offset the test moves forward (never back)."""

    def __init__(self) -> None:
        self._offset = datetime.timedelta(0)
        self._lock = threading.Lock()

    def __call__(self) -> datetime.datetime:
        with self._lock:
            return datetime.datetime.now(datetime.UTC) + self._offset

    def advance(self, delta: datetime.timedelta) -> None:
        with self._lock:
            self._offset += delta


@contextmanager
def serving_with_clock(*, tmp_path: Path, pebble: PebbleServer, clock: MovableClock,
                       **issuer_spec: Any) -> Iterator[Serving]:
    manifests = tmp_path / "manifests"
    manifests.mkdir(exist_ok=True)
    issuer = cluster_issuer(pebble)
    issuer["spec"]["acme"].update(issuer_spec)
    write_yaml(manifests / "all.yaml", issuer, ingress("web", hosts=[HOST], secret_name=SECRET))
    run = Serving(manifests=manifests, state_dir=tmp_path / "state", pebble=pebble,
                  clock=clock)
    run.start()
    try:
        yield run
    finally:
        run.stop()


def _leaf(run: Serving) -> x509.Certificate | None:
    secret = run.store.get(kind="Secret", namespace="default", name=SECRET)
    if secret is None:
        return None
    return x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["tls.crt"]))


def _renewed(run: Serving, *, than: x509.Certificate) -> x509.Certificate | None:
    """The certificate in the Secret once it is another than `than`."""
    leaf = _leaf(run)
    return leaf if leaf is not None and leaf.serial_number != than.serial_number else None


def _status(run: Serving) -> dict[str, Any]:
    status: dict[str, Any] = (run.certificate(SECRET) or {}).get("status") or {}
    return status


def _ari(run: Serving) -> dict[str, Any]:
    record: dict[str, Any] = (_status(run).get("acme") or {}).get("ari") or {}
    return record


def _set_window(pebble: PebbleServer, leaf: x509.Certificate, *, start: datetime.datetime,
                end: datetime.datetime) -> None:
    """Pebble's management API: answer this certificate's renewalInfo with this window."""
    from cryptography.hazmat.primitives import serialization

    window = {"suggestedWindow": {"start": conditions.format_time(start),
                                  "end": conditions.format_time(end)}}
    response = requests.post(
        f"{pebble.management_url}/set-renewal-info/",
        json={"Certificate": leaf.public_bytes(serialization.Encoding.PEM).decode(),
              "ARIResponse": json.dumps(window)},
        verify=str(pebble.ca_bundle_path), timeout=5)
    response.raise_for_status()


def _next_check(run: Serving, clock: MovableClock) -> None:
    """Move past the CA's Retry-After and wake the Certificate, as its timer would."""
    clock.advance(PEBBLE_RETRY_AFTER + datetime.timedelta(minutes=1))
    run.standalone.queue.add(("certificate", CERTIFICATE_KEY))


def _issued(pebble: PebbleServer) -> int:
    return len(pebble.log_lines("Issued certificate serial"))


@pytest.fixture
def current_pebble(tmp_path: Path) -> Iterator[PebbleServer]:
    server = PebbleServer.start(tmp_path=tmp_path, http_port=free_port(), build="current")
    try:
        yield server
    finally:
        server.stop()


# --- the client -------------------------------------------------------------------------


def test_the_client_fetches_a_window_by_cert_id_and_the_ca_accepts_replaces(
    current_pebble: PebbleServer,
) -> None:
    pebble = current_pebble
    responder = ChallengeResponder(pebble.http_port)
    try:
        client = _client(pebble)
        client.register(email=None)
        _, chain = _issue(client, responder, "ari.example.test", http_port=pebble.http_port)
        leaf = x509.load_pem_x509_certificates(chain.encode())[0]
        first = client.renewal_info(certificate=leaf)
        moved_to = datetime.datetime(2031, 1, 1, tzinfo=datetime.UTC)
        _set_window(pebble, leaf, start=moved_to, end=moved_to + DAY)
        moved = client.renewal_info(certificate=leaf)
        renewal_order = client.new_order(csr_pem=_csr("ari.example.test"),
                                         replaces=ari.cert_id(leaf))
    finally:
        responder.close()

    assert client.offers_renewal_info()
    assert first.cert_id == ari.cert_id(leaf)
    # Pebble's window: a day either side of the point 2/3 through the lifetime.
    lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    two_thirds = leaf.not_valid_before_utc + lifetime * 2 / 3
    assert first.window_start < two_thirds < first.window_end
    assert first.retry_after is not None
    assert abs(first.retry_after - PEBBLE_RETRY_AFTER) < datetime.timedelta(minutes=1)
    assert (moved.window_start, moved.window_end) == (moved_to, moved_to + DAY)
    assert renewal_order.status in ("pending", "ready")  # Pebble may reuse the authorization
    assert len(pebble.log_lines("is a replacement of")) == 1


def _csr(name: str) -> bytes:
    from tests.test_acme_client import _csr_pem

    return _csr_pem(name)


def test_debian_pebble_offers_no_renewal_info(tmp_path: Path) -> None:
    with PebbleServer.start(tmp_path=tmp_path, http_port=free_port(), build="debian") as pebble:
        client: AcmeClient = _client(pebble)
        assert client.offers_renewal_info() is False


# --- certctl serve ----------------------------------------------------------------------


def test_a_window_the_ca_moves_moves_the_renewal_and_the_renewal_replaces_the_certificate(
    tmp_path: Path, current_pebble: PebbleServer,
) -> None:
    pebble = current_pebble
    clock = MovableClock()
    with serving_with_clock(tmp_path=tmp_path, pebble=pebble, clock=clock) as run:
        first = eventually(lambda: _leaf(run), what="the first certificate")
        eventually(lambda: _status(run).get("renewalTimeSource") == "ARI", what="an ARI window")
        window = _ari(run)
        assert window["certID"] == ari.cert_id(first)
        checked = conditions.parse_time(window["lastChecked"])
        assert conditions.parse_time(window["nextCheck"]) - checked == PEBBLE_RETRY_AFTER
        renewal_time = conditions.parse_time(_status(run)["renewalTime"])
        start = conditions.parse_time(window["suggestedWindow"]["start"])
        end = conditions.parse_time(window["suggestedWindow"]["end"])
        assert start <= renewal_time <= end
        assert conditions.parse_time(window["selectedTime"]) == renewal_time

        # The CA moves the window later: the next check moves the renewal into it.
        later = first.not_valid_before_utc + 40 * DAY
        _set_window(pebble, first, start=later, end=later + DAY)
        _next_check(run, clock)
        eventually(lambda: _ari(run)["suggestedWindow"]["start"] == conditions.format_time(later),
                   what="the moved window")
        moved = conditions.parse_time(_status(run)["renewalTime"])
        assert later <= moved <= later + DAY
        assert _status(run)["renewalTimeSource"] == "ARI"
        assert _issued(pebble) == 1

        # The CA says "renew now" (a window in the past, as for a revocation).
        past = clock() - 2 * DAY
        _set_window(pebble, first, start=past, end=past + DAY)
        _next_check(run, clock)
        second = eventually(lambda: _renewed(run, than=first),
                            what="the renewed certificate")
        eventually(lambda: _ari(run).get("certID") == ari.cert_id(second),
                   what="the new certificate's own window")
        eventually(run.standalone.queue.idle, what="the controllers to settle")
        status = _status(run)
        written = [run.certificate(SECRET), *run.store.list(kind="Order", namespace="default")]

    assert status["revision"] == 2
    assert status["renewalTimeSource"] == "ARI"
    # The CRDs keep what the controllers wrote (an API server prunes unknown fields).
    for obj in written:
        assert obj is not None and crd_violations(obj) == [], obj["kind"]
    assert _issued(pebble) == 2
    assert len(pebble.log_lines("is a replacement of")) == 1, "the renewal named the old one"


def test_a_stale_window_of_the_replaced_certificate_renews_once_not_in_a_loop(
    tmp_path: Path, current_pebble: PebbleServer,
) -> None:
    # cert-manager #8993: after a renewal the Certificate still held the old certificate's
    # window, in the past; with notBefore backdated the guard missed it and five
    # certificates were issued in ten seconds. Here the stale window is put back into
    # status, its nextCheck ahead: it names another certificate, so it renews nothing
    # and the current certificate's own window is fetched in its place.
    pebble = current_pebble
    clock = MovableClock()
    with serving_with_clock(tmp_path=tmp_path, pebble=pebble, clock=clock) as run:
        first = eventually(lambda: _leaf(run), what="the first certificate")
        eventually(lambda: _ari(run).get("certID") == ari.cert_id(first), what="its window")
        past = clock() - 2 * DAY
        _set_window(pebble, first, start=past, end=past + DAY)
        _next_check(run, clock)
        second = eventually(lambda: _renewed(run, than=first),
                            what="the renewal")
        eventually(lambda: _ari(run).get("certID") == ari.cert_id(second), what="its window")
        eventually(run.standalone.queue.idle, what="the controllers to settle")

        # Put the first certificate's stale "renew now" window back, fetched before the
        # second certificate was issued, and wake the Certificate a few times.
        certificate = run.certificate(SECRET)
        assert certificate is not None
        certificate["status"]["acme"]["ari"] = {
            "certID": ari.cert_id(first),
            "lastChecked": conditions.format_time(past),
            "nextCheck": conditions.format_time(clock() + DAY),
            "suggestedWindow": {"start": conditions.format_time(past),
                                "end": conditions.format_time(past + DAY)},
            "selectedTime": conditions.format_time(past),
        }
        run.store.replace_status(obj=certificate)
        for _ in range(3):
            run.standalone.queue.add(("certificate", CERTIFICATE_KEY))
            eventually(run.standalone.queue.idle, what="the controllers to settle")
        status = _status(run)
        leaf = _leaf(run)

    assert leaf is not None and leaf.serial_number == second.serial_number
    assert status["revision"] == 2
    assert status["acme"]["ari"]["certID"] == ari.cert_id(second), "its own window again"
    assert _issued(pebble) == 2, "one renewal, not a loop"


def test_the_same_scenario_with_a_backdated_certificate_needs_no_ca(tmp_path: Path) -> None:
    # The #8993 situation exactly, on the reconciler alone: Let's Encrypt backdates
    # notBefore by an hour, so the new certificate "starts" before the stale window was
    # fetched. The window's CertID names the old certificate: it is ignored.
    world = World(tmp_path)
    world.add_acme_issuer()
    world.add_certificate("web")
    world.issue("web", lifetime=6 * DAY)
    old = x509.load_pem_x509_certificate(world.contents("web").chain_pem)
    stale_start = world.clock.now + datetime.timedelta(minutes=30)
    status_with_window(world, cert_id=ari.cert_id(old), start=stale_start,
                       end=stale_start + datetime.timedelta(hours=1),
                       fetched=world.clock.now + datetime.timedelta(minutes=20))
    world.clock.advance(hours=1)
    world.reconcile("web")  # inside the old certificate's window: renew it
    order = world.pending_order("web")
    chain = world.acme_ca.sign(base64.b64decode(order["spec"]["request"]),
                               not_before=world.clock.now - datetime.timedelta(hours=1),
                               not_after=world.clock.now + 6 * DAY)
    order["status"] = {"state": "valid", "certificate": base64.b64encode(chain).decode()}
    world.store.replace_status(obj=order)
    world.reconcile("web")
    for _ in range(3):
        world.clock.advance(minutes=1)
        world.reconcile("web")

    assert world.status("web")["revision"] == 2
    assert len(world.orders("web")) == 1, "no order after the renewal"
    assert world.status("web")["renewalTimeSource"] == "Lifetime"
    # Short-lived, without ARI: half way through.
    not_before = conditions.parse_time(world.status("web")["notBefore"])
    not_after = conditions.parse_time(world.status("web")["notAfter"])
    assert world.status("web")["renewalTime"] == conditions.format_time(
        not_before + (not_after - not_before) / 2)


def status_with_window(world: World, *, cert_id: str | None, start: datetime.datetime,
                       end: datetime.datetime, fetched: datetime.datetime) -> None:
    certificate = world.certificate("web")
    certificate["status"]["acme"] = {"ari": {
        "certID": cert_id,
        "lastChecked": conditions.format_time(fetched),
        "nextCheck": conditions.format_time(fetched + PEBBLE_RETRY_AFTER),
        "suggestedWindow": {"start": conditions.format_time(start),
                            "end": conditions.format_time(end)},
        "selectedTime": conditions.format_time(start),
    }}
    world.store.replace_status(obj=certificate)


def test_a_window_applies_only_to_the_certificate_it_names() -> None:
    from tests.test_policies import certificate, tls_secret

    secret = tls_secret()
    data = policies.read_input(certificate=certificate(), secret=secret,
                               now=datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC))
    assert data.contents is not None
    past = datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC)
    own = ari.cert_id(data.contents.leaf)
    assert own is not None
    for cert_id, source in ((own, renewal.ARI), ("AAAA.AQ", renewal.LIFETIME)):
        window = renewal.RenewalWindow(cert_id=cert_id, start=past, end=past + DAY,
                                       selected=past)
        when, found = policies.renewal_schedule(
            policies.read_input(certificate=certificate(), secret=secret, now=past, acme=True,
                                ari=window))
        assert found == source
        assert (when == past) == (source == renewal.ARI)


def test_a_refused_replaces_is_ordered_again_without_it(
    tmp_path: Path, current_pebble: PebbleServer,
) -> None:
    # The old certificate was issued to another account (the issuer's account key
    # changed): Pebble refuses `replaces` as unauthorized; the order goes again without.
    pebble = current_pebble
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    issuer = cluster_issuer(pebble)
    write_yaml(manifests / "all.yaml", issuer, ingress("web", hosts=[HOST], secret_name=SECRET))
    run = Serving(manifests=manifests, state_dir=tmp_path / "state", pebble=pebble).start()
    try:
        first = eventually(lambda: _leaf(run), what="the first certificate")
        eventually(run.standalone.queue.idle, what="the controllers to settle")
        issuer["spec"]["acme"]["privateKeySecretRef"]["name"] = "pebble-account-2"
        write_yaml(manifests / "all.yaml", issuer,
                   ingress("web", hosts=[HOST], secret_name=SECRET))
        eventually(lambda: run.store.get(kind="Secret", namespace="certctl",
                                         name="pebble-account-2"), what="the new account")
        eventually(run.standalone.queue.idle, what="the controllers to settle")
        certificate = run.certificate(SECRET)
        assert certificate is not None
        certificate.setdefault("status", {})["conditions"] = conditions.set_condition(
            certificate["status"].get("conditions") or [], type="Issuing", status="True",
            reason=policies.MANUALLY_TRIGGERED, message="renew", observed_generation=0,
            now=datetime.datetime.now(datetime.UTC))
        run.store.replace_status(obj=certificate)
        second = eventually(lambda: _renewed(run, than=first),
                            what="the renewal")
        eventually(run.standalone.queue.idle, what="the controllers to settle")
        orders = run.store.list(kind="Order", namespace="default")
    finally:
        run.stop()

    assert second is not None
    # The renewal's Order (the first one's is pruned once the renewal is stored).
    (order,) = [o for o in orders
                if o["metadata"]["annotations"][certificate_orders.REVISION_ANNOTATION] == "2"]
    assert crd_violations(order) == []
    assert order["spec"]["replaces"] == ari.cert_id(first)
    assert "unauthorized" in order["status"]["replacesRefused"]
    assert pebble.log_lines("is a replacement of") == []
    assert _issued(pebble) == 2


def test_without_renewal_info_the_lifetime_sets_the_renewal(tmp_path: Path) -> None:
    with PebbleServer.start(tmp_path=tmp_path, http_port=free_port(), build="debian") as pebble:
        clock = MovableClock()
        with serving_with_clock(tmp_path=tmp_path, pebble=pebble, clock=clock) as run:
            leaf = eventually(lambda: _leaf(run), what="the certificate")
            eventually(lambda: _status(run).get("renewalTimeSource"), what="a renewal time")
            status = _status(run)
            orders = run.store.list(kind="Order", namespace="default")

    assert status["renewalTimeSource"] == "Lifetime"
    assert "acme" not in status
    lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    assert status["renewalTime"] == conditions.format_time(
        renewal.renewal_time(not_before=leaf.not_valid_before_utc,
                             not_after=leaf.not_valid_after_utc, renew_before=None,
                             renew_before_percentage=None))
    assert lifetime > 7 * DAY
    # The first order replaces nothing; a renewal would name its certificate only to a CA
    # with ARI, which this one is not.
    assert all("replaces" not in order["spec"] for order in orders)


def test_renewal_info_requests_are_one_metrics_label_whatever_the_certificate() -> None:
    from certctl.runtime.metrics import acme_path

    url = "https://acme-v02.api.letsencrypt.org/acme/renewal-info/aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE"
    assert acme_path(url) == "/acme/renewal-info/*"
