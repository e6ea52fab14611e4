"""Access rules enforced by the data plane: source ranges and basic authentication.

ingress-nginx's `whitelist-source-range` / `allowlist-source-range`,
`denylist-source-range`, `auth-type: basic` with `auth-secret` (htpasswd
file or auth-map), `auth-realm` and `satisfy`, through a real DataPlane over
real sockets (HTTP/1.1 and HTTP/2), with htpasswd files written by Apache's
own `htpasswd` (Debian's apache2-utils) for every hash type it offers, and
through `certctl serve` with the Secret edited while it runs.
"""

from __future__ import annotations

import base64
import http.client
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from certctl.dataplane import routing
from certctl.routes import access
from certctl.routes import ingress as ingress_routes
from tests.pebble import free_port
from tests.serving import eventually, ingress, service_with_endpoints, write_yaml
from tests.test_dataplane import EchoServer
from tests.test_dataplane_http2 import H2Client
from tests.test_dataplane_proxy import Running, echoed, running_plane, simple_ingress

NGINX = "nginx.ingress.kubernetes.io/"
CERTCTL = "certctl.io/"
# htpasswd's flag for each hash type it writes.
HASH_FLAGS = {"apr1": "-m", "bcrypt": "-B", "sha1": "-s", "crypt": "-d", "sha256": "-2",
              "sha512": "-5"}


def htpasswd(user: str, password: str, *, flag: str) -> str:
    """One `user:hash` line as Apache's htpasswd writes it."""
    result = subprocess.run(["htpasswd", "-nb", flag, user, password], capture_output=True,
                            text=True, check=True)
    return result.stdout.strip()


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.fixture(scope="module")
def backend() -> Iterator[EchoServer]:
    server = EchoServer("private")
    yield server
    server.shutdown()
    server.server_close()


def _auth(secret: str, **more: str) -> dict[str, str]:
    return {NGINX + "auth-type": "basic", NGINX + "auth-secret": secret, **more}


@pytest.fixture(scope="module")
def plane(backend: EchoServer) -> Iterator[Running]:
    users_file = "\n".join(
        ["# written by htpasswd", *(htpasswd(f"user-{kind}", f"pw-{kind}", flag=flag)
                                    for kind, flag in HASH_FLAGS.items())])
    secrets = {
        ("default", "users"): {"auth": users_file.encode()},
        ("default", "user-map"): {"alice": htpasswd("alice", "pw-map", flag="-B")
                                  .partition(":")[2].encode()},
        ("default", "broken"): {"auth": b"alice$apr1$no-colon\n"},
        ("default", "plain"): {"auth": b"alice:pw-plain\n"},
    }
    ingresses = [
        simple_ingress("allow-local", {("allow-local.test", "/"): "private"},
                       annotations={NGINX + "whitelist-source-range": "10.0.0.0/8, 127.0.0.0/8"}),
        simple_ingress("allow-remote", {("allow-remote.test", "/"): "private"},
                       annotations={NGINX + "allowlist-source-range": "10.0.0.0/8,192.0.2.7"}),
        simple_ingress("deny-local", {("deny-local.test", "/"): "private"},
                       annotations={CERTCTL + "denylist-source-range": "127.0.0.1/32"}),
        simple_ingress("deny-first", {("deny-first.test", "/"): "private"},
                       annotations={NGINX + "denylist-source-range": "127.0.0.0/24",
                                    NGINX + "whitelist-source-range": "127.0.0.0/8"}),
        simple_ingress("auth-file", {("auth-file.test", "/"): "private"},
                       annotations=_auth("users", **{NGINX + "auth-realm": "Staff only"})),
        simple_ingress("auth-tls", {("auth-tls.test", "/"): "private"},
                       annotations=_auth("users", **{NGINX + "auth-realm": "Staff only"})),
        simple_ingress("auth-map", {("auth-map.test", "/"): "private"},
                       annotations=_auth("default/user-map",
                                         **{NGINX + "auth-secret-type": "auth-map"})),
        simple_ingress("any-remote", {("any-remote.test", "/"): "private"},
                       annotations=_auth("users", **{NGINX + "satisfy": "any",
                                                     NGINX + "whitelist-source-range":
                                                     "10.0.0.0/8"})),
        simple_ingress("any-local", {("any-local.test", "/"): "private"},
                       annotations=_auth("users", **{NGINX + "satisfy": "any",
                                                     NGINX + "whitelist-source-range":
                                                     "127.0.0.0/8"})),
        simple_ingress("all-remote", {("all-remote.test", "/"): "private"},
                       annotations=_auth("users", **{NGINX + "whitelist-source-range":
                                                     "10.0.0.0/8"})),
        simple_ingress("broken", {("broken.test", "/"): "private"}, annotations=_auth("broken")),
        simple_ingress("plain", {("plain.test", "/"): "private"}, annotations=_auth("plain")),
        simple_ingress("elsewhere", {("elsewhere.test", "/"): "private"},
                       annotations=_auth("kube-system/users")),
    ]
    with running_plane(ingresses=ingresses, backends={"private": (backend.port,)},
                       tls_hosts=("auth-tls.test",), secrets=secrets) as running:
        yield running


def _status(plane: Running, host: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
    connection = plane.http()
    connection.request("GET", "/", headers={"Host": host, **headers})
    response = connection.getresponse()
    return (response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())


# --- source ranges -----------------------------------------------------------------------------


@pytest.mark.parametrize(("host", "status"), [
    ("allow-local.test", 200),
    ("allow-remote.test", 403),
    ("deny-local.test", 403),
    ("deny-first.test", 403),
])
def test_source_ranges_let_through_or_forbid_the_client_address(plane, host, status):
    assert _status(plane, host)[0] == status


@pytest.mark.parametrize(("deny", "allow", "client", "allowed"), [
    ((), ("10.0.0.0/8",), "10.1.2.3", True),
    ((), ("10.0.0.0/8",), "11.1.2.3", False),
    (("10.1.0.0/16",), ("10.0.0.0/8",), "10.1.2.3", False),  # deny lines come first
    (("10.1.0.0/16",), (), "10.2.0.1", True),
    ((), ("192.0.2.0/24",), "::ffff:192.0.2.9", True),  # a mapped IPv4 peer is IPv4
    ((), ("2001:db8::/32",), "2001:db8::1", True),
    ((), ("2001:db8::/32",), "2001:db9::1", False),
    ((), ("0.0.0.0/0",), "not-an-address", False),  # nothing to judge: refused
])
def test_address_rules_follow_nginx_order(deny, allow, client, allowed):
    rules = access.AccessRules(
        deny=access.parse_networks("deny", ",".join(deny)) if deny else (),
        allow=access.parse_networks("allow", ",".join(allow)) if allow else ())
    verdict = rules.check(client_ip=client.encode(), authorization=None)
    assert verdict == (access.ALLOWED if allowed else access.FORBIDDEN)


@pytest.mark.parametrize("value", ["10.0.0.0/33", "10.0.0.x", " , ", "fe80::/129"])
def test_malformed_source_range_refuses_the_ingress(value):
    table = _table({NGINX + "whitelist-source-range": value})
    match = table.match(host="t.test", path="/")
    assert match is not None and match.options.refusal is not None
    (problem,) = table.problems
    assert problem.reason == ingress_routes.BAD_ANNOTATION
    assert problem.message.startswith(NGINX + "whitelist-source-range: ")


# --- basic authentication ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(HASH_FLAGS))
def test_each_htpasswd_hash_type_lets_its_user_in_and_nobody_else(plane, kind):
    user, password = f"user-{kind}", f"pw-{kind}"
    status, headers, _ = _status(plane, "auth-file.test")
    assert status == 401
    assert headers["www-authenticate"] == 'Basic realm="Staff only"'
    assert _status(plane, "auth-file.test", Authorization=basic(user, "wrong"))[0] == 401
    assert _status(plane, "auth-file.test", Authorization=basic("nobody", password))[0] == 401
    got = echoed(plane.http(), "/", headers={"Host": "auth-file.test",
                                             "Authorization": basic(user, password)})
    assert got["backend"] == "private"
    # As ingress-nginx: the backend still sees the credentials it may want.
    assert got["headers"]["authorization"] == basic(user, password)


def test_auth_map_secret_has_one_key_per_user(plane):
    assert _status(plane, "auth-map.test")[1]["www-authenticate"] == \
        'Basic realm="Authentication Required"'
    assert _status(plane, "auth-map.test", Authorization=basic("alice", "pw-map"))[0] == 200
    assert _status(plane, "auth-map.test", Authorization=basic("alice", "pw-file"))[0] == 401


@pytest.mark.parametrize("authorization", [
    "Bearer abc", "Basic !!!", "Basic " + base64.b64encode(b"no-colon").decode(), "Basic",
])
def test_malformed_credentials_get_401(plane, authorization):
    assert _status(plane, "auth-file.test", Authorization=authorization)[0] == 401


def test_satisfy_any_takes_an_allowed_address_or_credentials(plane):
    assert _status(plane, "any-local.test")[0] == 200  # loopback is in the allow list
    assert _status(plane, "any-remote.test")[0] == 401
    assert _status(plane, "any-remote.test",
                   Authorization=basic("user-bcrypt", "pw-bcrypt"))[0] == 200
    # satisfy all (the default): credentials do not make up for the address
    assert _status(plane, "all-remote.test",
                   Authorization=basic("user-bcrypt", "pw-bcrypt"))[0] == 403


@pytest.mark.parametrize(("host", "why"), [
    ("broken.test", "line 1: not 'user:hash'"),
    ("plain.test", "the hash of user 'alice' is not one htpasswd writes"),
    ("elsewhere.test", "is in another namespace"),
])
def test_unreadable_auth_secret_refuses_the_ingress(plane, host, why):
    status, _, body = _status(plane, host, Authorization=basic("alice", "pw-plain"))
    assert status == 503 and b"access restrictions" in body
    routes = plane.plane.routes
    problems = [p.message for p in routes.problems if p.source.name == host.split(".")[0]]
    assert any(why in message for message in problems), problems
    assert not any("pw-plain" in message for message in problems)


def test_plain_http_to_a_host_with_a_certificate_is_redirected_before_credentials_are_asked(
    plane,
):
    assert _status(plane, "auth-tls.test")[0] == 308


def test_http2_requests_are_checked_the_same_way(plane):
    client = H2Client(plane, "auth-tls.test")
    try:
        denied, allowed = client.wait(
            client.request("GET", "/"),
            client.request("GET", "/", headers=(("authorization", basic("user-sha1",
                                                                          "pw-sha1")),)))
        assert denied["status"] == 401
        assert denied["headers"][b"www-authenticate"] == b'Basic realm="Staff only"'
        assert allowed["status"] == 200
    finally:
        client.close()


def _table(annotations: dict[str, str]) -> routing.RouteTable:
    return routing.RouteTable.build(
        routes=ingress_routes.compile_ingresses(
            ingresses=[simple_ingress("t", {("t.test", "/"): "web"}, annotations=annotations)],
            ingress_classes=[],
            controller_name="certctl.io/ingress-controller",
            class_name=None,
        ),
        services=[],
        endpoint_slices=[],
    )


# --- through `certctl serve` ------------------------------------------------------------------


def _users_secret(line: str) -> dict[str, object]:
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": "admin-users", "namespace": "default"},
            "stringData": {"auth": line + "\n"}}


def test_serve_enforces_basic_auth_and_follows_the_secret(tmp_path: Path):
    backend = EchoServer("admin")
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    admin = ingress("admin", hosts=["admin.test"], secret_name=None, backend="admin",
                    annotations=_auth("admin-users"))
    apps = [admin, *service_with_endpoints("admin", port=backend.port)]
    write_yaml(manifests / "apps.yaml", *apps)
    write_yaml(manifests / "users.yaml", _users_secret(htpasswd("ops", "first", flag="-B")))
    http_port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "certctl", "serve", "--manifests", str(manifests),
         "--state-dir", str(tmp_path / "state"), "--listen-address", "127.0.0.1",
         "--http-port", str(http_port), "--https-port", str(free_port())],
        stdout=(tmp_path / "serve.log").open("wb"), stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})

    def status(password: str | None) -> int:
        headers = {} if password is None else {"Authorization": basic("ops", password)}
        return _get_status(port=http_port, host="admin.test", headers=headers)

    try:
        eventually(lambda: status("first") == 200, what="ops let in with the first password")
        assert status(None) == 401
        write_yaml(manifests / "users.yaml", _users_secret(htpasswd("ops", "second", flag="-m")))
        eventually(lambda: status("second") == 200, what="the edited Secret in force")
        assert status("first") == 401
        assert "second" not in (tmp_path / "serve.log").read_text()
    finally:
        proc.terminate()
        proc.wait(10)
        backend.shutdown()
        backend.server_close()


def _get_status(*, port: int, host: str, headers: dict[str, str]) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", "/", headers={"Host": host, **headers})
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()
