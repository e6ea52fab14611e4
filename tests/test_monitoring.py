"""The Grafana dashboard and the Prometheus alert rules of monitoring/, checked with
Debian's promtool (the `prometheus` package, scripts/install.sh).

Every PromQL expression, in the rules and in the dashboard, must parse (promtool
parses the dashboard's too, put into a throwaway rules file as recording rules, after
Grafana's variables are replaced as Grafana would) and may name only series that
certctl exports: the names are collected from the registries of the controller's and
the data plane's metrics (certctl/runtime/metrics.py, certctl/dataplane/metrics.py),
never from a list kept here. The alert rules are unit-tested with `promtool test rules`
(monitoring/prometheus/certctl-alerts.test.yaml: series in, alerts out). Finally a real
Prometheus (Debian's) scrapes a real `certctl serve` that has issued a certificate from
Pebble and proxied requests: every dashboard query answers, the panels that must show
data do, and every alert rule evaluates without error and raises nothing.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import prometheus_client
import pytest
import requests
import yaml
from prometheus_client.metrics_core import Metric

from certctl.dataplane import certstore
from certctl.dataplane import metrics as dataplane_metrics
from certctl.runtime import metrics as controller_metrics
from certctl.store.local import LocalStore
from tests.pebble import free_port
from tests.serving import (
    Serving,
    cluster_issuer,
    dns_names,
    echo_backend,
    eventually,
    https_get,
    ingress,
    served_certificate,
    service_with_endpoints,
    write_yaml,
)

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "monitoring" / "grafana" / "certctl.json"
RULES = ROOT / "monitoring" / "prometheus" / "certctl-alerts.yaml"
RULE_TESTS = ROOT / "monitoring" / "prometheus" / "certctl-alerts.test.yaml"
# Series Prometheus makes itself for every scrape target: the only names allowed that
# certctl does not export.
SYNTHETIC = {"up"}
# What issue 22 asks the alerts to catch, by the rule that does.
REQUIRED_ALERTS = {
    "CertctlCertificateExpiringSoon",    # expiring within a week and not renewing
    "CertctlCertificateNotReady",        # issuance failing for an hour
    "CertctlCertificateRenewalOverdue",  # renewal failing for an hour
    "CertctlACMEServerErrors",           # ACME errors
    "CertctlDataPlaneDown",              # no data-plane replica ready
}
# Grafana's built-in interval variables, as Grafana fills them in for a query.
GRAFANA_INTERVALS = {"__rate_interval": "5m", "__interval": "1m", "__range": "6h"}


def _promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail("promtool not found: install Debian's prometheus package "
                    "(bash scripts/install.sh does)")
    return found


def _run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([_promtool(), *args], capture_output=True, text=True, timeout=120,
                          check=False, cwd=cwd)


# --- what certctl exports ---------------------------------------------------------------


def _sample_names(family: Metric) -> set[str]:
    """The series names a family is scraped as (prometheus_client's text format)."""
    if family.type == "counter":
        return {f"{family.name}_total", f"{family.name}_created"}
    if family.type == "histogram":
        return {f"{family.name}_{suffix}" for suffix in ("bucket", "sum", "count", "created")}
    if family.type == "summary":
        return {family.name, f"{family.name}_sum", f"{family.name}_count",
                f"{family.name}_created"}
    assert family.type in {"gauge", "unknown", "info", "stateset"}, family.type
    return {family.name}


def _families(registry: prometheus_client.CollectorRegistry) -> list[Metric]:
    return list(registry.collect())


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, set[str]]:
    """Family name -> series names, from the registries certctl serves on /metrics."""
    store = LocalStore(manifests_dir=None, state_dir=tmp_path_factory.mktemp("state"))
    controller = controller_metrics.ControllerMetrics(store=store)
    dataplane = dataplane_metrics.Metrics(certificates=certstore.CertificateIndex())
    families = _families(controller.registry) + _families(dataplane.registry)
    return {family.name: _sample_names(family) for family in families}


def _series_names(exported: dict[str, set[str]]) -> set[str]:
    return {name for names in exported.values() for name in names}


def test_the_registries_hold_cert_managers_names_and_the_data_planes(exported):
    # A guard on the collection itself: were the registries read empty, every
    # "only exported names" check below would pass vacuously... or fail on everything.
    names = _series_names(exported)
    assert {"certmanager_certificate_expiration_timestamp_seconds",
            "certmanager_http_acme_client_request_count_total",
            "certmanager_http_acme_client_request_duration_seconds_bucket",
            "certctl_dataplane_requests_total",
            "certctl_dataplane_tls_handshakes_total"} <= names
    assert "certctl_dataplane_requests" not in names  # counters are scraped as *_total


# --- metric names in PromQL ---------------------------------------------------------------

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENTIFIER = re.compile(r"(?<![\w:.])([A-Za-z_:][A-Za-z0-9_:]*)(?![A-Za-z0-9_:])(?!\s*\()")
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
             "group_left", "group_right", "inf", "nan", "atan2", "start", "end"}


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects (one that promtool has parsed): what is
    left once strings, label matchers, ranges and label lists are removed, other than
    function calls and keywords."""
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    return {name for name in _IDENTIFIER.findall(text) if name.lower() not in _KEYWORDS}


@pytest.mark.parametrize(("expr", "names"), [
    ('sum by (host) (rate(a_total{status=~"5..|x"}[5m])) / sum by (host) (rate(b_total[5m]))',
     {"a_total", "b_total"}),
    ("histogram_quantile(0.95, sum by (le, path) (rate(h_bucket[1m]))) > 1e3",
     {"h_bucket"}),
    ("max by (namespace, name) (x) - time() < 7 * 86400 unless on (namespace, name) y > 0",
     {"x", "y"}),
    ('absent(up{job="certctl-dataplane"} == 1) or vector(0) and on () z offset 5m',
     {"up", "z"}),
    ("count(changes(x:recorded[1h:1m])) or ignoring (a) group_left (b) w", {"x:recorded", "w"}),
])
def test_metric_names_are_found_in_promql(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def _check_expressions(exprs: dict[str, str], tmp_path: Path) -> None:
    """promtool parses each expression, as a recording rule of a throwaway rules file."""
    rules = [{"record": record, "expr": expr} for record, expr in exprs.items()]
    path = tmp_path / "expressions.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "expressions", "rules": rules}]}))
    result = _run("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


def test_promtool_refuses_a_broken_expression(tmp_path):
    # The parse check above is real: promtool says which expression is wrong.
    with pytest.raises(AssertionError, match="parse error"):
        _check_expressions({"good:expr": "sum(rate(x[5m]))",
                            "bad:expr": "sum(rate(x[5m])"}, tmp_path)


# --- the dashboard --------------------------------------------------------------------------


def _dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return loaded


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))  # collapsed rows hold their panels
    return found


def _grafana_substitute(expr: str, variables: dict[str, str]) -> str:
    """Grafana's variables replaced by what Grafana sends for them."""
    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        assert name in variables, f"unknown variable ${name} in {expr}"
        return variables[name]
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", value, expr)


def _dashboard_expressions(intervals: dict[str, str] | None = None) -> dict[str, str]:
    """'panel title/refId' -> PromQL as Prometheus receives it."""
    dashboard = _dashboard()
    variables = dict(intervals or GRAFANA_INTERVALS)
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            variables[variable["name"]] = variable.get("allValue") or ".*"
    return {
        f"{panel['title']}/{target['refId']}": _grafana_substitute(target["expr"], variables)
        for panel in _panels(dashboard) for target in panel.get("targets", [])
    }


def test_every_dashboard_query_parses(tmp_path):
    exprs = _dashboard_expressions()
    assert len(exprs) >= 20
    records = {f"dashboard:query_{index}": expr for index, expr in enumerate(exprs.values())}
    _check_expressions(records, tmp_path)


def test_dashboard_queries_only_name_what_certctl_exports(exported):
    names = _series_names(exported) | SYNTHETIC
    unknown = {where: sorted(metric_names(expr) - names)
               for where, expr in _dashboard_expressions().items()
               if metric_names(expr) - names}
    assert unknown == {}


def test_dashboard_shows_every_metric_certctl_exports(exported):
    used = set().union(*(metric_names(expr) for expr in _dashboard_expressions().values()))
    unshown = [family for family, names in exported.items() if not names & used]
    assert unshown == []


def test_dashboard_has_the_sections_issue_22_asks_for():
    dashboard = _dashboard()
    assert dashboard["uid"] == "certctl"
    titles = {panel["title"] for panel in _panels(dashboard)}
    assert {"Certificates", "Certificates by expiry", "Certificates issued",
            "Issuance failures", "ACME request latency", "Data plane", "Requests by status",
            "Upstream response latency", "TLS handshakes"} <= titles
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"


def test_dashboard_panels_are_laid_out_without_overlap():
    panels = _panels(_dashboard())
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids))
    cells: dict[tuple[int, int], str] = {}
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]
        if panel["type"] != "row":
            # Every query goes to the data source the user picks on import.
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert all(target["datasource"] == panel["datasource"]
                       for target in panel["targets"])


# --- the alert rules ----------------------------------------------------------------------


def _rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_promtool_checks_the_alert_rules():
    result = _run("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(_rules())} rules found" in result.stdout


def test_promtool_unit_tests_of_the_alert_rules_pass():
    result = _run("test", "rules", RULE_TESTS.name, cwd=RULE_TESTS.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_unit_tests_can_fail(tmp_path):
    # The unit tests compare labels and annotations for real: a wrong expectation fails.
    shutil.copy(RULES, tmp_path / RULES.name)
    (tmp_path / "wrong.test.yaml").write_text(yaml.safe_dump({
        "rule_files": [RULES.name],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": [{"series": 'up{job="certctl-dataplane"}', "values": "0x20"}],
            "alert_rule_test": [{"eval_time": "10m", "alertname": "CertctlDataPlaneDown",
                                 "exp_alerts": [{"exp_labels": {"severity": "page"}}]}],
        }],
    }))
    result = _run("test", "rules", "wrong.test.yaml", cwd=tmp_path)
    assert result.returncode != 0
    assert 'severity="critical"' in result.stdout + result.stderr  # what it got instead


def test_alert_rules_only_name_what_certctl_exports(exported):
    names = _series_names(exported) | SYNTHETIC
    unknown = {rule["alert"]: sorted(metric_names(rule["expr"]) - names)
               for rule in _rules() if metric_names(rule["expr"]) - names}
    assert unknown == {}


def test_each_alert_is_what_issue_22_asks_and_each_is_seen_firing_in_a_unit_test():
    rules = {rule["alert"]: rule for rule in _rules()}
    assert set(rules) >= REQUIRED_ALERTS
    for name, rule in rules.items():
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        assert {"summary", "description"} <= rule["annotations"].keys(), name
    tests = yaml.safe_load(RULE_TESTS.read_text(encoding="utf-8"))["tests"]
    fired = {case["alertname"] for test in tests for case in test["alert_rule_test"]
             if case.get("exp_alerts")}
    quiet = {case["alertname"] for test in tests for case in test["alert_rule_test"]
             if not case.get("exp_alerts")}
    assert fired == set(rules)
    assert quiet == set(rules)  # and each is also seen not firing when it should not


# --- on a real Prometheus scraping a real certctl ------------------------------------------

# Panels that must show data once certctl has issued a certificate and served requests
# (the others may rightly be empty: errors, refusals, expired certificates...).
MUST_SHOW = ["Certificates/A", "Not Ready/A", "Certificates by expiry/A",
             "Certificates by expiry/B", "Certificates by expiry/C", "Soonest expiry/A",
             "Certificates by time to expiry/E", "Certificates issued/A",
             "ACME requests by status/A", "Data-plane replicas up/A",
             "Controller replicas up/A", "Requests by status/A", "Requests by host (top 10)/A",
             "Upstream response latency/A", "Upstream latency p95 by service/A",
             "TLS handshakes/A", "Certificates served/A", "Certificates loaded by replica/A",
             "Served certificates expiring first/A"]


def _prometheus_config(tmp_path: Path, *, metrics_port: int) -> Path:
    shutil.copy(RULES, tmp_path / RULES.name)
    target = {"targets": [f"127.0.0.1:{metrics_port}"]}
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [RULES.name],
        # `certctl serve` serves the controller's and the data plane's metrics on one
        # port; in a cluster they are the two jobs the rules and the dashboard name.
        "scrape_configs": [{"job_name": job, "honor_labels": True, "static_configs": [target]}
                           for job in ("certctl-controller", "certctl-dataplane")],
    }
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def _query(url: str, expr: str) -> list[dict[str, Any]]:
    answer = requests.get(f"{url}/api/v1/query", params={"query": expr}, timeout=10).json()
    assert answer["status"] == "success", (expr, answer)
    result: list[dict[str, Any]] = answer["data"]["result"]
    return result


def test_dashboard_and_alerts_on_a_real_prometheus_scraping_certctl(tmp_path, pebble):
    prometheus = shutil.which("prometheus")
    if prometheus is None:
        pytest.fail("prometheus not found: install Debian's prometheus package")
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    metrics_port, web_port = free_port(), free_port()
    url = f"http://127.0.0.1:{web_port}"
    with echo_backend("shop") as backend_port:
        write_yaml(manifests / "all.yaml", cluster_issuer(pebble),
                   ingress("shop", hosts=["shop.example.test"], secret_name="shop-tls",
                           backend="shop"),
                   *service_with_endpoints("shop", port=backend_port))
        log = (tmp_path / "prometheus.log").open("wb")
        config = _prometheus_config(tmp_path, metrics_port=metrics_port)
        server = subprocess.Popen(
            [prometheus, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{web_port}"],
            stdout=log, stderr=subprocess.STDOUT)
        try:
            run = Serving(manifests=manifests, state_dir=tmp_path / "state", pebble=pebble,
                          metrics_port=metrics_port).start()
            try:
                roots = pebble.issuance_roots_pem()
                eventually(lambda: "shop.example.test" in dns_names(served_certificate(
                    port=run.https_port, server_name="shop.example.test", roots_pem=roots)),
                    timeout=60, what="the certificate")
                eventually(lambda: requests.get(f"{url}/-/ready", timeout=2).ok, timeout=30,
                           what="Prometheus")
                # Traffic while Prometheus scrapes, until it has a few scrapes of it.
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    assert https_get(port=run.https_port, host="shop.example.test", path="/",
                                     roots_pem=roots)[0] == 200
                    if _query(url, 'count_over_time(certctl_dataplane_requests_total[1m]) >= 4'):
                        break
                    time.sleep(0.3)
                exprs = _dashboard_expressions({**GRAFANA_INTERVALS, "__rate_interval": "15s"})
                results = {where: _query(url, expr) for where, expr in exprs.items()}
                empty = [where for where in MUST_SHOW if not results[where]]
                assert empty == []
                assert float(results["Certificates/A"][0]["value"][1]) == 1
                assert float(results["Data-plane replicas up/A"][0]["value"][1]) == 1
                assert float(results["Requests by status/A"][0]["value"][1]) > 0
                assert results["Requests by status/A"][0]["metric"] == {"status": "200"}
                assert float(results["TLS handshakes/A"][0]["value"][1]) > 0
                p50 = float(results["Upstream response latency/A"][0]["value"][1])
                assert 0 < p50 < 1 and not math.isnan(p50)
                table = {(row["metric"]["namespace"], row["metric"]["name"],
                          row["metric"]["issuer_kind"], row["metric"]["issuer_name"])
                         for row in results["Certificates by expiry/A"]}
                assert table == {("default", "shop-tls", "ClusterIssuer", "pebble")}

                # Every rule evaluates on certctl's real series, and a healthy certctl
                # raises no alert.
                def evaluated() -> list[dict[str, Any]] | None:
                    groups = requests.get(f"{url}/api/v1/rules", timeout=10).json()["data"]
                    rules = [rule for group in groups["groups"] for rule in group["rules"]]
                    return rules if all(rule["evaluationTime"] > 0 for rule in rules) else None

                rules = eventually(evaluated, timeout=30, what="the rules evaluated")
                assert len(rules) == len(_rules())
                assert {rule["name"]: rule["health"] for rule in rules} == {
                    rule["alert"]: "ok" for rule in _rules()}
                assert [alert for rule in rules for alert in rule["alerts"]] == []
            finally:
                run.stop()
        finally:
            server.terminate()
            server.wait(20)
            log.close()
