"""ingress-nginx's client-certificate authentication (auth-tls-*), through the data plane
over real TLS handshakes with real client certificates.

The handshake for a host with `auth-tls-secret` asks for a certificate and
OpenSSL checks it against the Secret's `ca.crt`; each request is then held to
its own route's CA (a connection may be made for another host), the
certificate's validity and `auth-tls-match-cn`, and the backend learns what
was verified from `ssl-client-*` headers the client cannot forge.
"""

from __future__ import annotations

import json
import socket
import ssl
import tempfile
import urllib.parse
from collections.abc import Iterator
from http.client import HTTPConnection
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from certctl.dataplane import routing, tls
from certctl.routes import ingress as ingress_routes
from tests.test_dataplane_http2 import H2Client
from tests.test_dataplane_proxy import Running, running_plane, simple_ingress
from tests.testca import Issued, TestCA

NGINX = "nginx.ingress.kubernetes.io/"
CLIENT_CA = TestCA(common_name="clients A")
OTHER_CA = TestCA(common_name="clients B")


def _mtls(secret: str = "default/client-ca", **more: str) -> dict[str, str]:
    return {NGINX + "auth-tls-secret": secret, **more}


@pytest.fixture(scope="module")
def plane() -> Iterator[Running]:
    ingresses = [
        simple_ingress("mtls", {("mtls.test", "/"): "app"}, annotations=_mtls(**{
            NGINX + "auth-tls-verify-client": "on",
            NGINX + "auth-tls-pass-certificate-to-upstream": "true"})),
        simple_ingress("optional", {("optional.test", "/"): "app"},
                       annotations=_mtls(**{NGINX + "auth-tls-verify-client": "optional"})),
        simple_ingress("cn", {("cn.test", "/"): "app"},
                       annotations=_mtls(**{NGINX + "auth-tls-match-cn": "CN=(alice|carol)$"})),
        simple_ingress("error-page", {("error-page.test", "/"): "app"}, annotations=_mtls(**{
            NGINX + "auth-tls-error-page": "https://errors.example/mtls?from=$host"})),
        simple_ingress("other-ca", {("other-ca.test", "/"): "app"},
                       annotations=_mtls("default/other-ca")),
        simple_ingress("open", {("open.test", "/"): "app"}),
    ]
    with running_plane(
        ingresses=ingresses, echo=("app",),
        tls_hosts=("mtls.test", "optional.test", "cn.test", "error-page.test", "other-ca.test",
                   "open.test"),
        secrets={("default", "client-ca"): {"ca.crt": CLIENT_CA.pem},
                 ("default", "other-ca"): {"ca.crt": OTHER_CA.pem}},
    ) as running:
        yield running


def _client_context(plane: Running, issued: Issued | None, *, alpn: str = "http/1.1",
                    ) -> ssl.SSLContext:
    context = plane.ca.client_context()
    context.set_alpn_protocols([alpn])
    if issued is not None:
        directory = Path(tempfile.mkdtemp())
        (directory / "cert.pem").write_bytes(issued.chain_pem)
        (directory / "key.pem").write_bytes(issued.key_pem)
        context.load_cert_chain(directory / "cert.pem", directory / "key.pem")
    return context


def _get(plane: Running, sni: str, issued: Issued | None, *, host: str | None = None,
         **headers: str) -> tuple[int, dict[str, str], bytes]:
    port = plane.plane.https_port
    assert port is not None
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    connection = HTTPConnection(sni, port, timeout=5)
    connection.sock = _client_context(plane, issued).wrap_socket(raw, server_hostname=sni)
    try:
        connection.request("GET", "/", headers={"Host": host or sni, **headers})
        response = connection.getresponse()
        return (response.status, {k.lower(): v for k, v in response.getheaders()},
                response.read())
    finally:
        connection.close()


ALICE = CLIENT_CA.issue("alice", client=True)
BOB = CLIENT_CA.issue("bob", client=True)
MALLORY = OTHER_CA.issue("mallory", client=True)


def test_request_without_a_client_certificate_is_refused(plane):
    status, _, body = _get(plane, "mtls.test", None, **{"ssl-client-verify": "SUCCESS"})
    assert status == 403 and b"backend" not in body


def test_verified_client_reaches_the_backend_which_learns_who_it_is(plane):
    status, _, body = _get(plane, "mtls.test", ALICE, **{"ssl-client-subject-dn": "CN=root"})
    assert status == 200
    headers = json.loads(body)["headers"]
    assert headers["ssl-client-verify"] == "SUCCESS"
    assert headers["ssl-client-subject-dn"] == "CN=alice"  # the client's own claim replaced
    assert headers["ssl-client-issuer-dn"] == "CN=clients A"
    pem = urllib.parse.unquote(headers["ssl-client-cert"]).encode()
    assert pem.startswith(b"-----BEGIN CERTIFICATE-----") and pem in ALICE.chain_pem


def test_certificate_of_another_ca_fails_the_handshake(plane):
    with pytest.raises((ssl.SSLError, ConnectionError)):
        _get(plane, "mtls.test", MALLORY)


def test_each_request_is_held_to_its_own_routes_ca(plane):
    # Handshaken as mtls.test (CA A) with Alice's certificate, then asking other-ca.test.
    assert _get(plane, "mtls.test", ALICE, host="other-ca.test")[0] == 403
    assert _get(plane, "open.test", ALICE, host="mtls.test")[0] == 403  # no certificate asked


def test_optional_lets_clients_without_one_in_and_says_so(plane):
    status, _, body = _get(plane, "optional.test", None, **{"ssl-client-verify": "SUCCESS"})
    assert status == 200
    assert json.loads(body)["headers"]["ssl-client-verify"] == "NONE"
    assert _get(plane, "optional.test", ALICE)[0] == 200


def test_match_cn_admits_only_the_names_it_matches(plane):
    assert _get(plane, "cn.test", ALICE)[0] == 200
    assert _get(plane, "cn.test", BOB)[0] == 403


def test_error_page_gets_a_redirect_instead_of_403(plane):
    status, headers, _ = _get(plane, "error-page.test", None)
    assert status == 302 and headers["location"] == "https://errors.example/mtls?from=error-page.test"


def test_http2_streams_carry_the_verified_certificate(plane):
    client = H2Client(plane, "mtls.test", context=_client_context(plane, ALICE, alpn="h2"))
    try:
        (answer,) = client.wait(client.request("GET", "/"))
        assert answer["status"] == 200
        assert json.loads(answer["body"])["headers"]["ssl-client-subject-dn"] == "CN=alice"
    finally:
        client.close()


@pytest.mark.parametrize(("annotations", "why"), [
    (_mtls(**{NGINX + "auth-tls-verify-depth": "2"}), "depth 1"),
    (_mtls(**{NGINX + "auth-tls-verify-client": "optional_no_ca"}), "optional_no_ca"),
    (_mtls("default/missing"), "Secret default/missing not found"),
    (_mtls("default/with-crl"), "certificate revocation lists"),
    (_mtls(**{NGINX + "auth-tls-match-cn": "CN=(unclosed"}), "not a regular expression"),
])
def test_settings_that_cannot_be_enforced_refuse_the_ingress(annotations, why):
    table = routing.RouteTable.build(
        routes=ingress_routes.compile_ingresses(
            ingresses=[simple_ingress("t", {("t.test", "/"): "web"}, annotations=annotations)],
            ingress_classes=[], controller_name="certctl.io/ingress-controller", class_name=None,
            secret_data=lambda namespace, name: {
                ("default", "client-ca"): {"ca.crt": CLIENT_CA.pem},
                ("default", "with-crl"): {"ca.crt": CLIENT_CA.pem, "ca.crl": b"..."},
            }.get((namespace, name)),
        ),
        services=[], endpoint_slices=[],
    )
    match = table.match(host="t.test", path="/")
    assert match is not None and match.options.refusal is not None
    assert why in match.options.refusal


@given(st.binary(max_size=400))
def test_client_hello_reader_never_raises_on_garbage(data):
    name, complete = tls.client_hello_server_name(data)
    assert name is None or isinstance(name, str)
    assert complete or len(data) < 5 or data[0] == 22


def test_client_hello_reader_finds_the_name_of_a_real_client_hello():
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = ssl.create_default_context().wrap_bio(incoming, outgoing,
                                                   server_hostname="name.example.test")
    with pytest.raises(ssl.SSLWantReadError):
        client.do_handshake()
    hello = outgoing.read()
    assert tls.client_hello_server_name(hello) == ("name.example.test", True)
    assert tls.client_hello_server_name(hello[:40]) == (None, False)
