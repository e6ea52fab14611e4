"""ACME profiles end to end, and renewal arithmetic for 6-, 45- and 90-day certificates.

- `certctl.io/acme-profile` on an Ingress becomes the Certificate's
  `spec.acme.profile`, overriding the issuer's `spec.acme.profile`; the order is
  placed under it and a change of it issues again.
- A profile the CA's directory does not offer stops the Certificate before any
  order, with a condition naming `spec.acme.profile` and what the CA offers (none
  on Debian's Pebble 2.4).
- Short-lived certificates (a week or less) renew half way through without ARI;
  with ARI, inside the CA's window.
"""

from __future__ import annotations

import base64
import datetime
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from certctl.api import conditions, parsing
from certctl.pki import renewal
from tests.pebble import PebbleProfile, PebbleServer, free_port
from tests.serving import cluster_issuer, eventually, ingress, serving, write_yaml

HOST = "web.example.test"
SECRET = "web-tls"
DAY = datetime.timedelta(days=1)
NOW = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)
PROFILES = {  # shaped after Let's Encrypt's
    "classic": PebbleProfile(description="90 days, Common Name", promote_common_name=True),
    "shortlived": PebbleProfile(description="6 days, no Common Name",
                                validity_period=6 * 24 * 3600),
}


# --- renewal arithmetic ---------------------------------------------------------------


@pytest.mark.parametrize(("lifetime", "acme_renewal", "cert_manager_renewal"), [
    (6 * DAY, 3 * DAY, 4 * DAY),          # short-lived: half way (ACME), 2/3 (cert-manager)
    (45 * DAY, 30 * DAY, 30 * DAY),       # tlsserver from 2026: a third before expiry
    (90 * DAY, 60 * DAY, 60 * DAY),       # classic
])
def test_renewal_time_by_lifetime(lifetime: datetime.timedelta, acme_renewal: datetime.timedelta,
                                  cert_manager_renewal: datetime.timedelta) -> None:
    def renew(*, acme: bool, **settings: Any) -> datetime.datetime:
        return renewal.renewal_time(not_before=NOW, not_after=NOW + lifetime,
                                    renew_before=settings.get("renew_before"),
                                    renew_before_percentage=settings.get("percentage"),
                                    short_lived_at_half=acme)

    assert renew(acme=True) == NOW + acme_renewal
    assert renew(acme=False) == NOW + cert_manager_renewal
    # What the user set wins over either default.
    assert renew(acme=True, renew_before=DAY) == NOW + lifetime - DAY
    assert renew(acme=True, percentage=10) == NOW + lifetime * 9 / 10


@pytest.mark.parametrize("lifetime", [6 * DAY, 45 * DAY, 90 * DAY])
def test_a_pick_in_an_ari_window_stays_inside_it_and_before_the_last_quarter(
    lifetime: datetime.timedelta,
) -> None:
    # Pebble's and Boulder's window: a day either side of the point 2/3 through.
    ideal = NOW + lifetime * 2 / 3
    start, end = ideal - DAY, min(ideal + DAY, NOW + lifetime)
    latest = NOW + lifetime * 3 / 4
    picks = [renewal.pick_in_window(start=start, end=end, not_before=NOW,
                                    not_after=NOW + lifetime, fraction=fraction)
             for fraction in (0.0, 0.25, 0.5, 0.75, 1.0)]
    assert picks == sorted(picks)
    assert picks[0] == start
    assert all(start <= pick <= min(end, latest) for pick in picks)
    # A window running up to expiry still leaves a quarter of the lifetime.
    whole = renewal.pick_in_window(start=NOW, end=NOW + lifetime, not_before=NOW,
                                   not_after=NOW + lifetime, fraction=1.0)
    assert whole == NOW + lifetime * 3 / 4
    # A window in the past: renew now.
    assert renewal.pick_in_window(start=NOW - 2 * DAY, end=NOW - DAY, not_before=NOW - 30 * DAY,
                                  not_after=NOW + lifetime, fraction=0.5) < NOW


# --- the Certificate field -------------------------------------------------------------


def test_spec_acme_profile_parses_and_mistakes_name_the_field() -> None:
    from tests.test_api_parsing import certificate, invalid

    parsed = parsing.parse_certificate(certificate(acme={"profile": "shortlived"}))
    assert parsed.acme_profile == "shortlived"
    assert parsing.parse_certificate(certificate()).acme_profile is None
    # "" is unset, as everywhere (Go's omitempty); blanks are a mistake.
    assert parsing.parse_certificate(certificate(acme={"profile": ""})).acme_profile is None
    assert invalid(parsing.parse_certificate,
                   certificate(acme={"profile": " "})).field == "spec.acme.profile"
    assert invalid(parsing.parse_certificate,
                   certificate(acme={"profiles": "x"})).field == "spec.acme.profiles"


# --- end to end -----------------------------------------------------------------------


@pytest.fixture
def profiled_pebble(tmp_path: Path) -> Iterator[PebbleServer]:
    server = PebbleServer.start(tmp_path=tmp_path, http_port=free_port(), build="current",
                                profiles=PROFILES)
    try:
        yield server
    finally:
        server.stop()


def _manifests(tmp_path: Path, pebble: PebbleServer, *, issuer_profile: str | None,
               certificate_profile: str | None) -> Path:
    manifests = tmp_path / "manifests"
    manifests.mkdir(exist_ok=True)
    issuer = cluster_issuer(pebble)
    if issuer_profile is not None:
        issuer["spec"]["acme"]["profile"] = issuer_profile
    annotations = {"cert-manager.io/cluster-issuer": "pebble"}
    if certificate_profile is not None:
        annotations["certctl.io/acme-profile"] = certificate_profile
    write_yaml(manifests / "all.yaml", issuer,
               ingress("web", hosts=[HOST], secret_name=SECRET, annotations=annotations))
    return manifests


def _leaf(run: Any) -> x509.Certificate | None:
    secret = run.store.get(kind="Secret", namespace="default", name=SECRET)
    if secret is None:
        return None
    return x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["tls.crt"]))


def _leaf_living(run: Any, lifetime: datetime.timedelta) -> x509.Certificate | None:
    leaf = _leaf(run)
    return leaf if leaf is not None and _lifetime(leaf) == lifetime else None


def _lifetime(leaf: x509.Certificate) -> datetime.timedelta:
    return leaf.not_valid_after_utc - leaf.not_valid_before_utc + datetime.timedelta(seconds=1)


def test_an_ingress_annotation_overrides_the_issuers_profile_and_a_change_issues_again(
    tmp_path: Path, profiled_pebble: PebbleServer,
) -> None:
    pebble = profiled_pebble
    manifests = _manifests(tmp_path, pebble, issuer_profile="classic",
                           certificate_profile="shortlived")
    with serving(manifests=manifests, state_dir=tmp_path / "state", pebble=pebble) as run:
        short = eventually(lambda: _leaf(run), what="the short-lived certificate")
        eventually(lambda: ((run.certificate(SECRET) or {}).get("status") or {}).get(
            "renewalTimeSource"), what="its renewal time")
        certificate = run.certificate(SECRET)
        assert certificate is not None
        (order,) = run.store.list(kind="Order", namespace="default")

        _manifests(tmp_path, pebble, issuer_profile="classic", certificate_profile="classic")
        classic = eventually(lambda: _leaf_living(run, 90 * DAY), what="the classic one")
        eventually(run.standalone.queue.idle, what="the controllers to settle")
        ready = run.condition(SECRET, "Ready")

    assert certificate["spec"]["acme"] == {"profile": "shortlived"}
    assert order["spec"]["profile"] == "shortlived"
    assert _lifetime(short) == 6 * DAY
    status = certificate["status"]
    # The current Pebble offers ARI: the window decides, and leaves at least a quarter.
    assert status["renewalTimeSource"] == "ARI"
    renewal_time = conditions.parse_time(status["renewalTime"])
    assert renewal_time <= short.not_valid_after_utc - 6 * DAY / 4
    window = status["acme"]["ari"]["suggestedWindow"]
    assert conditions.parse_time(window["start"]) <= renewal_time
    assert classic.serial_number != short.serial_number
    assert ready["status"] == "True", ready
    assert len(pebble.log_lines("Issued certificate serial")) == 2


def test_a_profile_the_ca_does_not_offer_stops_the_certificate_with_a_condition(
    tmp_path: Path, profiled_pebble: PebbleServer,
) -> None:
    pebble = profiled_pebble
    manifests = _manifests(tmp_path, pebble, issuer_profile=None, certificate_profile="tlsserver")
    with serving(manifests=manifests, state_dir=tmp_path / "state", pebble=pebble) as run:
        ready = eventually(lambda: (condition := run.condition(SECRET, "Ready"))
                           and condition.get("reason") == "BadConfig" and condition,
                           what="the BadConfig condition")
        eventually(run.standalone.queue.idle, what="the controllers to settle")
        orders = run.store.list(kind="Order", namespace="default")

    assert ready["status"] == "False"
    assert ready["message"] == (
        f"spec.acme.profile: ACME server {pebble.directory_url} does not offer profile "
        "'tlsserver' (offers: classic, shortlived)")
    assert orders == []
    assert pebble.log_lines("Added order") == []


def test_on_debian_pebble_a_profile_is_refused_and_short_lived_renews_at_half(
    tmp_path: Path,
) -> None:
    with PebbleServer.start(tmp_path=tmp_path, http_port=free_port(), build="debian",
                            certificate_validity_period=6 * 24 * 3600) as pebble:
        manifests = _manifests(tmp_path, pebble, issuer_profile=None,
                               certificate_profile="shortlived")
        with serving(manifests=manifests, state_dir=tmp_path / "state", pebble=pebble) as run:
            refused = eventually(lambda: (condition := run.condition(SECRET, "Ready"))
                                 and condition.get("reason") == "BadConfig" and condition,
                                 what="the BadConfig condition")
            # Without the override the issuer's (no) profile applies: a 6-day certificate.
            _manifests(tmp_path, pebble, issuer_profile=None, certificate_profile=None)
            leaf = eventually(lambda: _leaf(run), what="the certificate")
            eventually(lambda: run.condition(SECRET, "Ready").get("status") == "True",
                       what="Ready")
            status = (run.certificate(SECRET) or {})["status"]

    assert refused["message"] == (
        f"spec.acme.profile: ACME server {pebble.directory_url} does not offer profile "
        "'shortlived' (offers: none)")
    assert status["renewalTimeSource"] == "Lifetime"
    assert "acme" not in status
    not_before, not_after = leaf.not_valid_before_utc, leaf.not_valid_after_utc
    assert not_after - not_before < 7 * DAY
    half = not_before + (not_after - not_before) / 2
    assert status["renewalTime"] == conditions.format_time(half)
