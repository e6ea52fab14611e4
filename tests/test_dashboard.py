"""The dashboard's JSON API and page on `certctl serve`'s admin address, against Pebble.

What the manifests define is listed (routes with their source, backend, TLS Secret
and conflicts; certificates with issuer, validity and renewal; orders and
challenges in flight with their step; the last events), nothing secret is shown,
and the page and API answer only requests addressed to an IP or localhost.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.pebble import PebbleServer, free_port
from tests.serving import (
    Serving,
    cluster_issuer,
    eventually,
    ingress,
    service_with_endpoints,
    write_yaml,
)

HOST = "shop.example.test"


@pytest.fixture
def running(tmp_path: Path, pebble: PebbleServer) -> Iterator[tuple[Serving, str]]:
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    shadow = ingress("shadow", hosts=[HOST], secret_name=None, backend="other")
    del shadow["spec"]["tls"]
    shadow["metadata"]["annotations"] = {"nginx.ingress.kubernetes.io/mirror-target": "x"}
    # The older Ingress wins a host and path both claim.
    shadow["metadata"]["creationTimestamp"] = "2026-02-01T00:00:00Z"
    shop = ingress("shop", hosts=[HOST], secret_name="shop-tls")
    shop["metadata"]["creationTimestamp"] = "2026-01-01T00:00:00Z"
    # Its DNS-01 solver's TSIG Secret does not exist: every attempt fails.
    broken = cluster_issuer(pebble, name="broken")
    broken["spec"]["acme"]["solvers"] = [{"dns01": {"rfc2136": {
        "nameserver": f"127.0.0.1:{free_port()}", "tsigKeyName": "certctl",
        "tsigAlgorithm": "HMACSHA256",
        "tsigSecretSecretRef": {"name": "missing", "key": "secret"}}}}]
    write_yaml(manifests / "1-issuers.yaml", cluster_issuer(pebble), broken)
    write_yaml(manifests / "4-broken.yaml", ingress(
        "broken", hosts=["broken.example.test"], secret_name="broken-tls",
        annotations={"cert-manager.io/cluster-issuer": "broken"}))
    write_yaml(manifests / "2-shop.yaml", shop, *service_with_endpoints("echo", port=free_port()))
    write_yaml(manifests / "3-shadow.yaml", shadow)
    port = free_port()
    serving = Serving(manifests=manifests, state_dir=tmp_path / "state", pebble=pebble,
                      metrics_port=port).start()
    try:
        yield serving, f"http://127.0.0.1:{port}"
    finally:
        serving.stop()


def _get(url: str, **kwargs: Any) -> Any:
    response = requests.get(url, timeout=5, **kwargs)
    assert response.status_code == 200, (url, response.status_code, response.text)
    assert response.headers["Content-Type"] == "application/json"
    return response.json()


def _certificate(base: str, name: str) -> dict[str, Any] | None:
    for found in _get(f"{base}/api/v1/certificates")["certificates"]:
        if found["name"] == name:
            return dict(found)
    return None


def test_api_lists_routes_certificates_orders_and_events(
    running: tuple[Serving, str], pebble: PebbleServer
) -> None:
    serving, base = running
    assert _get(f"{base}/api/v1/summary")["sections"] == [
        "routes", "certificates", "orders", "events"]
    issued = eventually(lambda: (c := _certificate(base, "shop-tls")) and c["ready"] == "True"
                        and c, what="shop-tls Ready on the dashboard", timeout=60)
    assert issued["dnsNames"] == [HOST]
    assert issued["issuer"] == {"kind": "ClusterIssuer", "name": "pebble"}
    assert issued["secretName"] == "shop-tls"
    assert issued["notBefore"] < issued["renewalTime"] < issued["notAfter"]
    assert issued["renewalTimeSource"] in ("Lifetime", "ARI")
    assert issued["reason"] == "Ready"

    routes = eventually(lambda: [r for r in _get(f"{base}/api/v1/routes")["routes"]
                                 if r["host"] == HOST and r["tlsSecret"]],
                        what="the shop route with its Secret loaded")
    shop = next(r for r in routes if r["source"]["name"] == "shop")
    assert shop == {
        "host": HOST, "path": "/", "match": "Prefix", "conditions": "",
        "backend": "default/echo:80", "tlsSecret": "default/shop-tls",
        "source": {"kind": "Ingress", "namespace": "default", "name": "shop"},
        "conflict": None, "problems": []}
    shadowed = next(r for r in routes if r["source"]["name"] == "shadow")
    assert shadowed["backend"] == "default/other:80"
    assert shadowed["conflict"].startswith("not served: Ingress default/shop has the same host")
    assert [p["reason"] for p in shadowed["problems"]] == ["UnsupportedAnnotation"]

    assert eventually(lambda: (found := _get(f"{base}/api/v1/orders"))["orders"] == []
                      and found["challenges"] == [], what="nothing in flight once issued")

    failed = eventually(lambda: (c := _certificate(base, "broken-tls"))
                        and c["failedIssuanceAttempts"] and c, what="broken-tls failed")
    assert (failed["ready"], failed["reason"]) == ("False", "Failed")
    assert "Secret certctl/missing not found" in failed["message"]

    # The issuances counter, by issuer and result.
    scraped = requests.get(f"{base}/metrics", timeout=5).text
    labels = 'issuer_group="certctl.io",issuer_kind="ClusterIssuer",issuer_name="{}",result="{}"'
    assert f"certctl_certificate_issuances_total{{{labels.format('pebble', 'success')}}} 1.0" \
        in scraped
    assert f"certctl_certificate_issuances_total{{{labels.format('broken', 'failure')}}}" \
        in scraped
    assert labels.format("pebble", "failure") not in scraped

    events = _get(f"{base}/api/v1/events")["events"]
    about_shop = [e for e in events if e["object"] == {
        "kind": "Certificate", "namespace": "default", "name": "shop-tls"}]
    assert about_shop, events
    assert [e["time"] for e in events] == sorted((e["time"] for e in events), reverse=True)

    # Nothing secret in any view: no key, no certificate body, no token.
    everything = json.dumps([_get(f"{base}/api/v1/{name}") for name in
                             ("routes", "certificates", "orders", "events")])
    assert "PRIVATE KEY" not in everything and "BEGIN CERTIFICATE" not in everything
    secret = serving.store.get(kind="Secret", namespace="default", name="shop-tls")
    assert base64.b64decode(secret["data"]["tls.key"]).decode() not in everything


def test_page_and_api_answer_only_an_ip_or_localhost_metrics_and_probes_any_host(
    running: tuple[Serving, str],
) -> None:
    _, base = running
    page = requests.get(f"{base}/", timeout=5)
    assert page.status_code == 200
    assert page.headers["Content-Type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    assert '<script src="static/dashboard.js"' in page.text
    script = requests.get(f"{base}/static/dashboard.js", timeout=5)
    assert script.status_code == 200 and 'getJson("api/v1/summary")' in script.text
    assert requests.get(f"{base}/static/../health.py", timeout=5).status_code == 404
    assert requests.get(f"{base}/api/v1/secrets", timeout=5).json() == {
        "error": "no view 'secrets'; try summary, routes, certificates, orders, events"}
    assert _get(f"{base}/api/v1/summary", headers={"Host": "localhost:1234"})["process"] == "serve"

    rebound = {"Host": "attacker.example:80"}
    for path in ("/", "/api/v1/certificates", "/static/dashboard.js"):
        refused = requests.get(f"{base}{path}", headers=rebound, timeout=5)
        assert refused.status_code == 403, path
        assert "DNS rebinding" in refused.text
    metrics = requests.get(f"{base}/metrics", headers=rebound, timeout=5)
    assert metrics.status_code == 200 and "certctl_dataplane_requests" in metrics.text
    for probe in ("/healthz", "/readyz"):
        answer = requests.get(f"{base}{probe}", headers=rebound, timeout=5)
        assert (answer.status_code, answer.text) == (200, "ok\n"), probe


def test_orders_and_challenges_in_flight_show_their_step(
    tmp_path: Path, pebble: PebbleServer
) -> None:
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    write_yaml(manifests / "all.yaml", cluster_issuer(pebble),
               ingress("stuck", hosts=["stuck.example.test"], secret_name="stuck-tls"))
    port = free_port()
    # The HTTP-01 self-check knocks on a port nobody listens on: it never passes, so the
    # order and its challenge stay in flight, and the CA is never asked to validate.
    serving = Serving(manifests=manifests, state_dir=tmp_path / "state", pebble=pebble,
                      self_check_port=free_port(), metrics_port=port).start()
    base = f"http://127.0.0.1:{port}"
    try:
        in_flight = eventually(
            lambda: (found := _get(f"{base}/api/v1/orders"))["challenges"]
            and found["challenges"][0]["step"].startswith("presented") and found,
            what="a challenge presented and self-checking")
        challenge_obj = serving.store.get(kind="Challenge",
                                          namespace=in_flight["challenges"][0]["namespace"],
                                          name=in_flight["challenges"][0]["name"])
    finally:
        serving.stop()
    [order] = in_flight["orders"]
    assert order["certificate"] == "stuck-tls"
    assert order["dnsNames"] == ["stuck.example.test"]
    assert (order["state"], order["step"]) == ("pending",
                                               "authorizing: challenges being answered")
    [challenge] = in_flight["challenges"]
    assert challenge["order"] == order["name"]
    assert (challenge["dnsName"], challenge["type"]) == ("stuck.example.test", "HTTP-01")
    assert challenge["step"] == "presented: self-checking before asking the CA"
    assert challenge_obj["spec"]["key"] not in json.dumps(in_flight)  # its key authorization
