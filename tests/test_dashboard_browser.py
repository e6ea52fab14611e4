"""The dashboard in a real browser: Debian's chromium, driven by Playwright, against a
running `certctl serve` and Pebble.

The page loads, lists what the manifests define, and shows a certificate turning
Ready once its issuer appears and Pebble issues it. Playwright drives the system's
chromium (`executable_path`): it downloads no browser. The screenshots are kept
with the test's files; `CERTCTL_UPDATE_SCREENSHOTS=1` also writes them to docs/,
where the README shows them.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.pebble import PebbleServer, free_port
from tests.serving import (
    Serving,
    cluster_issuer,
    ingress,
    service_with_endpoints,
    write_yaml,
)

CHROMIUM = Path("/usr/bin/chromium")
DOCS = Path(__file__).resolve().parent.parent / "docs"
HOST = "shop.example.test"

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason=f"{CHROMIUM} is missing: apt-get install chromium (scripts/install.sh does)")


@pytest.fixture
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            yield launched
        finally:
            launched.close()


def _screenshot(page: Page, tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=True)
    if os.environ.get("CERTCTL_UPDATE_SCREENSHOTS") == "1":
        DOCS.mkdir(exist_ok=True)
        shutil.copyfile(path, DOCS / name)


def test_page_lists_the_manifests_and_shows_a_certificate_turning_ready(
    tmp_path: Path, pebble: PebbleServer, browser: Browser
) -> None:
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    # The Ingress first, its ClusterIssuer later: the Certificate is not Ready until then.
    write_yaml(manifests / "shop.yaml", ingress("shop", hosts=[HOST], secret_name="shop-tls"),
               *service_with_endpoints("echo", port=free_port()))
    port = free_port()
    serving = Serving(manifests=manifests, state_dir=tmp_path / "state", pebble=pebble,
                      metrics_port=port).start()
    try:
        page = browser.new_page(viewport={"width": 1400, "height": 800})
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.on("console", lambda message: errors.append(message.text)
                if message.type == "error" else None)
        page.goto(f"http://127.0.0.1:{port}/")
        expect(page.locator("#process")).to_have_text("(serve)")

        route = page.locator('#routes tr[data-host="shop.example.test"]')
        expect(route).to_contain_text("default/echo:80")
        expect(route).to_contain_text("Ingress default/shop")
        expect(route).to_contain_text("Prefix")

        certificate = page.locator('#certificates tr[data-name="default/shop-tls"]')
        expect(certificate).to_have_attribute("data-ready", "False")
        expect(certificate).to_contain_text("ClusterIssuer pebble")
        expect(certificate).to_contain_text("not issued yet")
        expect(certificate.locator(".pill")).to_have_text("False")
        _screenshot(page, tmp_path, "dashboard-not-ready.png")

        write_yaml(manifests / "issuer.yaml", cluster_issuer(pebble))
        expect(certificate).to_have_attribute("data-ready", "True", timeout=60_000)
        expect(certificate.locator(".pill")).to_have_text("True")
        expect(certificate).to_contain_text("expires in")
        expect(certificate).to_contain_text("from Lifetime")
        expect(certificate.locator(".bar .renew")).to_have_count(1)
        # Served now: the route names the Secret the data plane loaded for its host.
        expect(route).to_contain_text("default/shop-tls", timeout=10_000)
        expect(page.locator("#events")).to_contain_text("Issuing")
        expect(page.locator("#orders .empty")).to_have_text("Nothing in flight.")
        _screenshot(page, tmp_path, "dashboard.png")
        assert errors == []
    finally:
        serving.stop()
