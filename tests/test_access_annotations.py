"""Ingresses whose ingress-nginx annotations certctl does not enforce are never served open.

An access-restricting annotation certctl does not implement (auth-proxy-set-headers,
limit-rate, global-rate-limit, a WAF switched on), one it cannot enforce as written
(digest auth, a Secret that is missing, a CIDR that does not parse), or raw nginx
configuration (snippets) makes the Ingress's routes answer 503 instead of serving what
the annotation protected; other unimplemented annotations are reported and the Ingress
is served. Checked through the real data plane over real sockets, through the feed's
Warning events, and through `certctl serve` itself. (What certctl enforces:
test_access_rules.py, test_external_auth.py, test_client_certificates.py,
test_request_limits.py.)
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from certctl.api import nginx_annotations, resources
from certctl.dataplane import routing
from certctl.routes import ingress as ingress_routes
from tests.pebble import free_port
from tests.serving import (
    echo_backend,
    eventually,
    http_get,
    ingress,
    service_with_endpoints,
    write_yaml,
)
from tests.test_dataplane import EchoServer
from tests.test_dataplane_proxy import Running, echoed, running_plane, simple_ingress

NGINX = "nginx.ingress.kubernetes.io/"
CERTCTL = "certctl.io/"
REFUSED_BODY = b"Not served: this Ingress asks for access restrictions certctl does not enforce.\n"

ACCESS_ANNOTATIONS = [
    {NGINX + "auth-proxy-set-headers": "default/auth-headers"},
    {NGINX + "auth-type": "basic", NGINX + "auth-secret": "no-such-secret"},
    {NGINX + "auth-type": "digest", NGINX + "auth-secret": "no-such-secret"},
    {NGINX + "auth-secret": "no-such-secret"},
    {NGINX + "whitelist-source-range": "10.0.0.0/33"},
    {NGINX + "auth-tls-secret": "default/client-ca", NGINX + "auth-tls-verify-client": "on"},
    {NGINX + "limit-rate": "100k"},
    {NGINX + "limit-rate-after": "1m"},
    {NGINX + "global-rate-limit": "100"},
    {NGINX + "enable-modsecurity": "true"},
    {NGINX + "backend-protocol": "HTTPS", NGINX + "proxy-ssl-verify": "on"},
    {NGINX + "configuration-snippet": "deny all;"},
    {NGINX + "server-snippet": "allow 10.0.0.0/8; deny all;"},
    {CERTCTL + "auth-tls-secret": "default/client-ca"},
]


@pytest.fixture(scope="module")
def backends() -> Iterator[dict[str, EchoServer]]:
    servers = {name: EchoServer(name) for name in ("open", "secret", "canary")}
    yield servers
    for srv in servers.values():
        srv.shutdown()
        srv.server_close()


def _refused_ingresses() -> list[resources.Ingress]:
    return [
        simple_ingress(f"refused-{index}", {(f"refused-{index}.test", "/"): "secret"},
                       annotations=annotations)
        for index, annotations in enumerate(ACCESS_ANNOTATIONS)
    ]


def _ingresses() -> list[resources.Ingress]:
    return [
        *_refused_ingresses(),
        simple_ingress("refused-tls", {("refused-tls.test", "/"): "secret"},
                       annotations={NGINX + "auth-tls-secret": "default/client-ca"}),
        simple_ingress("open", {("open.test", "/"): "open"}),
        # A hostless rule for every path must not take over a refused host's requests.
        simple_ingress("catch-all", {("", "/"): "open"}, created_offset=10),
        simple_ingress("cors", {("cors.test", "/"): "secret"},
                       annotations={NGINX + "enable-cors": "true",
                                    NGINX + "enable-modsecurity": "false",
                                    NGINX + "proxy-buffering": "off"}),
        # A canary attached to a refused main route is refused with it ...
        simple_ingress("canary-main-refused", {("canary-main.test", "/"): "secret"},
                       annotations={NGINX + "auth-tls-secret": "default/client-ca"}),
        simple_ingress("canary-of-refused", {("canary-main.test", "/"): "canary"},
                       created_offset=5,
                       annotations={NGINX + "canary": "true", NGINX + "canary-weight": "100"}),
        # ... and a refused canary takes nothing from an open main route.
        simple_ingress("open-main", {("canary-refused.test", "/"): "open"}),
        simple_ingress("refused-canary", {("canary-refused.test", "/"): "secret"},
                       created_offset=5,
                       annotations={NGINX + "canary": "true", NGINX + "canary-weight": "100",
                                    NGINX + "limit-rate": "1k"}),
    ]


@pytest.fixture(scope="module")
def plane(backends: dict[str, EchoServer]) -> Iterator[Running]:
    with running_plane(
        ingresses=_ingresses(),
        backends={name: (srv.port,) for name, srv in backends.items()},
        tls_hosts=("refused-tls.test",),
    ) as running:
        yield running


@pytest.mark.parametrize("index", range(len(ACCESS_ANNOTATIONS)))
def test_unenforced_access_annotation_answers_503_over_http(plane, index):
    connection = plane.http()
    connection.request("GET", "/admin", headers={"Host": f"refused-{index}.test"})
    answer = connection.getresponse()
    # The data plane's own answer, not the backend's echo.
    assert (answer.status, answer.read()) == (503, REFUSED_BODY)


def test_unenforced_access_annotation_answers_503_over_https(plane):
    connection = plane.https("refused-tls.test")
    connection.request("GET", "/", headers={"Host": "refused-tls.test"})
    answer = connection.getresponse()
    assert (answer.status, answer.read()) == (503, REFUSED_BODY)


def test_ingress_without_access_annotations_is_served(plane):
    assert echoed(plane.http(), "/", headers={"Host": "open.test"})["backend"] == "open"
    assert echoed(plane.http(), "/", headers={"Host": "elsewhere.test"})["backend"] == "open"


def test_unsupported_annotation_that_restricts_nothing_is_served(plane):
    assert echoed(plane.http(), "/", headers={"Host": "cors.test"})["backend"] == "secret"


def test_canary_cannot_open_a_refused_route(plane):
    for _ in range(5):
        connection = plane.http()
        connection.request("GET", "/", headers={"Host": "canary-main.test"})
        answer = connection.getresponse()
        assert (answer.status, answer.read()) == (503, REFUSED_BODY)


def test_refused_canary_takes_no_traffic_from_its_main_route(plane):
    for _ in range(5):
        got = echoed(plane.http(), "/", headers={"Host": "canary-refused.test"})
        assert got["backend"] == "open"


def test_opt_out_serves_the_ingress_without_the_restriction(backends):
    ingresses = [simple_ingress("admin", {("admin.test", "/"): "secret"},
                                annotations={NGINX + "auth-proxy-set-headers": "default/h"})]
    with running_plane(ingresses=ingresses,
                       backends={"secret": (backends["secret"].port,)},
                       enforce_access_annotations=False) as running:
        assert echoed(running.http(), "/", headers={"Host": "admin.test"})["backend"] == "secret"


def _table(ingresses: list[resources.Ingress], *, enforce: bool = True) -> routing.RouteTable:
    return routing.RouteTable.build(
        routes=ingress_routes.compile_ingresses(
            ingresses=ingresses,
            ingress_classes=[],
            controller_name="certctl.io/ingress-controller",
            class_name=None,
            enforce_access_annotations=enforce,
        ),
        services=[],
        endpoint_slices=[],
    )


def test_each_annotation_not_honoured_is_reported_with_its_key():
    table = _table([simple_ingress("mixed", {("mixed.test", "/"): "web"}, annotations={
        NGINX + "auth-proxy-set-headers": "default/h", NGINX + "custom-headers": "default/h",
        NGINX + "proxy-buffering": "off", NGINX + "ssl-redirect": "false",
        NGINX + "made-up-thing": "1", "example.com/other": "x",
    })])
    reported = {(p.reason, p.message.split(":")[0]) for p in table.problems}
    assert reported == {
        (nginx_annotations.ACCESS_NOT_ENFORCED, NGINX + "auth-proxy-set-headers"),
        (nginx_annotations.UNSUPPORTED_ANNOTATION, NGINX + "custom-headers"),
        (nginx_annotations.UNSUPPORTED_ANNOTATION, NGINX + "made-up-thing"),
    }
    assert all(str(p.source) == "Ingress default/mixed" for p in table.problems)
    match = table.match(host="mixed.test", path="/")
    assert match is not None and match.options.refusal is not None
    assert NGINX + "auth-proxy-set-headers" in match.options.refusal


def test_snippet_is_refused_with_what_to_use_instead():
    review = nginx_annotations.review({NGINX + "configuration-snippet": "more_set_headers x;"})
    (finding,) = review.refusals
    assert finding.verdict == "snippet"
    assert "use the annotation for what the snippet did" in finding.message


def test_opt_out_is_reported_as_served_without_the_restriction():
    table = _table([simple_ingress("admin", {("admin.test", "/"): "web"},
                                   annotations={NGINX + "limit-rate": "5k"})], enforce=False)
    (problem,) = table.problems
    assert problem.reason == nginx_annotations.ACCESS_NOT_ENFORCED
    assert nginx_annotations.OPT_OUT_FLAG in problem.message
    match = table.match(host="admin.test", path="/")
    assert match is not None and match.options.refusal is None


def test_every_documented_annotation_has_exactly_one_verdict():
    classes = [nginx_annotations.SUPPORTED, frozenset(nginx_annotations.NO_OP),
               frozenset(nginx_annotations.SNIPPETS), frozenset(nginx_annotations.UNSUPPORTED)]
    for index, one in enumerate(classes):
        for other in classes[index + 1:]:
            assert not one & other
    # No unsupported name slips past the access rule that should refuse it, and each
    # Warning says what certctl does instead.
    for name, instead in nginx_annotations.UNSUPPORTED.items():
        assert not name.startswith(("auth-", "limit-")), name
        (finding,) = nginx_annotations.review({NGINX + name: "x"}).findings
        assert finding.verdict == "unsupported" and f"({instead})" in finding.message
    # A protection switched off asks for what certctl does: nothing to say.
    assert nginx_annotations.review({NGINX + "proxy-ssl-verify": "off",
                                     NGINX + "enable-modsecurity": "false"}).findings == ()


# --- through `certctl serve` ------------------------------------------------------------------


def _serve(
    manifests: Path, state_dir: Path, log: Path, *extra: str
) -> tuple[subprocess.Popen[bytes], int]:
    """`certctl serve` as users start it; returns it and its HTTP port."""
    http_port, https_port = free_port(), free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "certctl", "serve", "--manifests", str(manifests),
         "--state-dir", str(state_dir), "--listen-address", "127.0.0.1",
         "--http-port", str(http_port), "--https-port", str(https_port), *extra],
        stdout=log.open("wb"), stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    return proc, http_port


def test_serve_refuses_an_auth_annotated_ingress_until_the_annotation_is_removed(tmp_path):
    with echo_backend("admin") as port:
        manifests = tmp_path / "manifests"
        manifests.mkdir()
        admin = ingress("admin", hosts=["admin.test"], secret_name=None, backend="admin",
                        annotations={NGINX + "auth-proxy-set-headers": "default/h",
                                     NGINX + "global-rate-limit": "100"})
        write_yaml(manifests / "apps.yaml", admin, *service_with_endpoints("admin", port=port))
        log = tmp_path / "serve.log"
        proc, http_port = _serve(manifests, tmp_path / "state", log)
        try:
            eventually(lambda: http_get(port=http_port, host="admin.test", path="/")[0] == 503,
                       what="503 for admin.test")
            text = eventually(lambda: "AccessNotEnforced" in log.read_text() and log.read_text(),
                              what="the Warning in the log")
            assert "Ingress default/admin" in text and NGINX + "auth-proxy-set-headers" in text
            assert NGINX + "global-rate-limit" in text
            shown = subprocess.run(
                [sys.executable, "-m", "certctl", "status", "ingress", "admin", "--state-dir",
                 str(tmp_path / "state")], capture_output=True, text=True, check=True).stdout
            assert "AccessEnforced: False (AccessNotEnforced)" in shown
            assert NGINX + "auth-proxy-set-headers" in shown
            assert "AnnotationsSupported: True" in shown
            admin["metadata"]["annotations"] = {}
            write_yaml(manifests / "apps.yaml", admin, *service_with_endpoints("admin", port=port))
            eventually(lambda: http_get(port=http_port, host="admin.test", path="/")[0] == 200,
                       what="admin.test served once the annotation is gone")
        finally:
            proc.terminate()
            proc.wait(10)


def test_serve_opt_out_flag_serves_it_open(tmp_path):
    with echo_backend("admin") as port:
        manifests = tmp_path / "manifests"
        manifests.mkdir()
        admin = ingress("admin", hosts=["admin.test"], secret_name=None, backend="admin",
                        annotations={NGINX + "global-rate-limit": "1"})
        write_yaml(manifests / "apps.yaml", admin, *service_with_endpoints("admin", port=port))
        proc, http_port = _serve(manifests, tmp_path / "state", tmp_path / "serve.log",
                                 nginx_annotations.OPT_OUT_FLAG)
        try:
            body = eventually(lambda: _served_body(http_port, "admin.test"),
                              what="admin.test served")
            assert body.startswith("admin admin.test /")
        finally:
            proc.terminate()
            proc.wait(10)


def _served_body(port: int, host: str) -> str | None:
    status, _, body = http_get(port=port, host=host, path="/")
    return body if status == 200 else None


def test_the_readme_gives_every_annotation_a_verdict():
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme[readme.index("## ingress-nginx annotations"):readme.index("## DNS-01")]
    every = {*nginx_annotations.SUPPORTED, *nginx_annotations.NO_OP, *nginx_annotations.SNIPPETS,
             *nginx_annotations.UNSUPPORTED}
    assert [name for name in sorted(every) if f"`{name}" not in section] == []
