"""The ACME client wrapper and the HTTP-01 self-check, against a real Pebble.

The tests answer HTTP-01 themselves with a tiny http.server on Pebble's
httpPort, so they do not depend on certctl's data plane. Every test that talks
to Pebble runs twice, against Debian's Pebble 2.4 and the current release.
"""

from __future__ import annotations

import datetime
import http.server
import importlib.metadata
import re
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from certctl.issuers.acme import errors
from certctl.issuers.acme.client import AccountClient, AcmeClient, OrderState
from certctl.solvers.http01 import SelfCheckFailed, self_check
from tests.pebble import PebbleBuild, PebbleProfile, PebbleServer, free_port
from tests.serving import verify_chain


def _account_key_pem(kind: str = "ec") -> bytes:
    key = (
        ec.generate_private_key(ec.SECP256R1())
        if kind == "ec"
        else rsa.generate_private_key(public_exponent=65537, key_size=2048)
    )
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _csr_pem(*names: str) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), False)
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


class ChallengeResponder:
    """Serves registered key authorizations on 127.0.0.1:<port>, like the data plane will."""

    def __init__(self, port: int) -> None:
        self.responses: dict[str, str] = {}
        self.hosts_seen: list[str] = []
        responder = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                responder.hosts_seen.append(self.headers.get("Host", ""))
                token = self.path.rsplit("/", 1)[-1]
                body = responder.responses.get(token)
                if not self.path.startswith("/.well-known/acme-challenge/") or body is None:
                    self.send_error(404)
                    return
                data = body.encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def pebble(any_pebble: PebbleServer) -> PebbleServer:
    """This module's tests meet both Pebbles (conftest's `any_pebble`)."""
    return any_pebble


@pytest.fixture
def responder(pebble: PebbleServer) -> Iterator[ChallengeResponder]:
    server = ChallengeResponder(pebble.http_port)
    try:
        yield server
    finally:
        server.close()


def _client(pebble: PebbleServer, **kwargs: object) -> AcmeClient:
    options: dict[str, object] = {
        "directory_url": pebble.directory_url,
        "account_key_pem": _account_key_pem(),
        "ca_bundle_pem": pebble.ca_bundle_pem,
    }
    options.update(kwargs)
    return AcmeClient(**options)  # type: ignore[arg-type]


def _wait(fetch, *, until: set[str], timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while True:
        state = fetch()
        if state.status in until or time.monotonic() > deadline:
            return state
        time.sleep(0.05)


def _issue(
    client: AccountClient, responder: ChallengeResponder, *names: str, http_port: int,
    profile: str | None = None,
) -> tuple[OrderState, str]:
    """The resumable flow a reconciler runs, one call per step."""
    csr = _csr_pem(*names)
    order = client.new_order(csr_pem=csr, profile=profile)
    for authorization_url in order.authorization_urls:
        authorization = client.get_authorization(authorization_url)
        if authorization.status == "valid":  # Pebble reuses authorizations 50 % of the time
            continue
        (challenge,) = [c for c in authorization.challenges if c.type == "http-01"]
        assert challenge.token is not None
        key_authorization = client.key_authorization(challenge.token)
        responder.responses[challenge.token] = key_authorization
        self_check(
            host=authorization.identifier.value,
            token=challenge.token,
            expected_key_authorization=key_authorization,
            port=http_port,
            connect_address="127.0.0.1",
        )
        client.answer_challenge(challenge.url)
        done = _wait(
            lambda url=challenge.url: client.get_challenge(url), until={"valid", "invalid"}
        )
        assert done.status == "valid", done.error
    ready = _wait(lambda: client.get_order(order.url), until={"ready", "invalid"})
    assert ready.status == "ready", ready.error
    client.finalize(order_url=order.url, finalize_url=order.finalize_url, csr_pem=csr)
    valid = _wait(lambda: client.get_order(order.url), until={"valid", "invalid"})
    assert valid.status == "valid" and valid.certificate_url is not None, valid.error
    chain = client.download_certificate(certificate_url=valid.certificate_url, preferred_chain=None)
    return valid, chain


def test_register_twice_returns_same_account_uri(pebble: PebbleServer) -> None:
    key = _account_key_pem()
    first = _client(pebble, account_key_pem=key)
    uri = first.register(email="ops@example.test")
    assert uri.startswith("https://127.0.0.1:")
    assert first.register(email="ops@example.test") == uri
    assert _client(pebble, account_key_pem=key).register(email=None) == uri
    assert first.account_uri == uri


def test_rsa_account_key_registers(pebble: PebbleServer) -> None:
    assert _client(pebble, account_key_pem=_account_key_pem("rsa")).register(email=None)


def test_http01_issuance_chain_verifies_and_order_resumes_by_url(
    pebble: PebbleServer, responder: ChallengeResponder
) -> None:
    account_key = _account_key_pem()
    client = _client(pebble, account_key_pem=account_key)
    client.register(email=None)
    order, chain = _issue(
        client, responder, "a.example.test", "b.example.test", http_port=pebble.http_port
    )

    verify_chain(chain.encode(), roots_pem=pebble.issuance_roots_pem(), host="b.example.test")
    assert {i.value for i in order.identifiers} == {"a.example.test", "b.example.test"}
    # Our self-check and then Pebble's VA fetched from us (the VA sends the port in Host).
    assert responder.hosts_seen.count(f"a.example.test:{pebble.http_port}") >= 2

    # A restarted controller only has the persisted URL and the account URI.
    restarted = _client(pebble, account_key_pem=account_key, account_uri=client.account_uri)
    resumed = restarted.get_order(order.url)
    assert resumed == order


def test_a_restarted_client_answering_an_answered_challenge_gets_its_state(
    pebble: PebbleServer, responder: ChallengeResponder
) -> None:
    """A certctl restarted after answering (before it recorded that) answers again: the
    CA refuses to update a challenge that is not pending, so the client returns the
    challenge as it is instead of sending the answer."""
    account_key = _account_key_pem()
    client = _client(pebble, account_key_pem=account_key)
    client.register(email=None)
    order = client.new_order(csr_pem=_csr_pem("again.example.test"))
    (authorization_url,) = order.authorization_urls
    authorization = client.get_authorization(authorization_url)
    (challenge,) = [c for c in authorization.challenges if c.type == "http-01"]
    assert challenge.token is not None
    responder.responses[challenge.token] = client.key_authorization(challenge.token)
    client.answer_challenge(challenge.url)
    assert _wait(lambda: client.get_challenge(challenge.url), until={"valid"}).status == "valid"

    restarted = _client(pebble, account_key_pem=account_key, account_uri=client.account_uri)
    again = restarted.answer_challenge(challenge.url)
    assert (again.status, again.url, again.token) == ("valid", challenge.url, challenge.token)
    assert restarted.get_order(order.url).status == "ready"


def test_finalize_before_authorizations_are_valid_returns_pending_order(
    pebble: PebbleServer,
) -> None:
    client = _client(pebble)
    client.register(email=None)
    csr = _csr_pem("early.example.test")
    order = client.new_order(csr_pem=csr)
    state = client.finalize(order_url=order.url, finalize_url=order.finalize_url, csr_pem=csr)
    assert state.status == "pending"
    assert state.url == order.url


def test_forgotten_account_raises_typed_error_and_register_recovers(
    pebble: PebbleServer,
) -> None:
    client = _client(pebble)
    old_uri = client.register(email=None)
    order = client.new_order(csr_pem=_csr_pem("restart.example.test"))
    pebble.restart()
    with pytest.raises(errors.AccountDoesNotExist) as raised:
        client.get_order(order.url)
    assert raised.value.code == "accountDoesNotExist"
    new_uri = client.register(email=None)
    assert new_uri != old_uri
    assert client.new_order(csr_pem=_csr_pem("restart.example.test")).status == "pending"


def test_request_before_register_is_a_typed_error(pebble: PebbleServer) -> None:
    with pytest.raises(errors.AccountNotRegistered):
        _client(pebble).new_order(csr_pem=_csr_pem("x.example.test"))


def test_preferred_chain_picks_alternate_by_top_issuer_cn(
    tmp_path: Path, pebble_build: PebbleBuild
) -> None:
    with PebbleServer.start(
        tmp_path=tmp_path, http_port=free_port(), env={"PEBBLE_ALTERNATE_ROOTS": "1"},
        build=pebble_build,
    ) as pebble:
        responder = ChallengeResponder(pebble.http_port)
        try:
            client = _client(pebble)
            client.register(email=None)
            order, default_chain = _issue(
                client, responder, "chain.example.test", http_port=pebble.http_port
            )
        finally:
            responder.close()
        assert order.certificate_url is not None
        alternate_root = x509.load_pem_x509_certificate(pebble.issuance_roots_pem(index=1))
        alternate_cn = alternate_root.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value

        preferred = client.download_certificate(
            certificate_url=order.certificate_url, preferred_chain=str(alternate_cn)
        )
        unknown = client.download_certificate(
            certificate_url=order.certificate_url, preferred_chain="No Such CA"
        )

    top = x509.load_pem_x509_certificates(preferred.encode())[-1]
    assert top.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == alternate_cn
    assert preferred != default_chain
    assert unknown == default_chain


def test_persistent_bad_nonce_is_typed_and_transient_ones_are_retried(
    tmp_path: Path, pebble_build: PebbleBuild
) -> None:
    with (
        PebbleServer.start(
            tmp_path=tmp_path, http_port=free_port(), env={"PEBBLE_WFE_NONCEREJECT": "100"},
            build=pebble_build,
        ) as pebble,
        pytest.raises(errors.BadNonce),
    ):
        _client(pebble).register(email=None)
    with PebbleServer.start(
        tmp_path=tmp_path / "half", http_port=free_port(), env={"PEBBLE_WFE_NONCEREJECT": "50"},
        build=pebble_build,
    ) as pebble:
        client = _client(pebble, bad_nonce_attempts=10)
        client.register(email=None)
        for _ in range(5):
            client.new_order(csr_pem=_csr_pem("nonce.example.test"))


def test_one_client_is_shared_by_many_threads(pebble: PebbleServer) -> None:
    client = _client(pebble)
    client.register(email=None)
    orders = [client.new_order(csr_pem=_csr_pem(f"t{i}.example.test")) for i in range(8)]

    # Eight threads at once on one client (its session and its nonces), each reading its
    # own order, as the reconcilers do (one pass per Order at a time). Not one order from
    # several threads at once: Pebble (2.4 and 2.10 alike) read-locks an order twice while
    # answering for it, and a concurrent write lock on it wedges the whole server
    # (letsencrypt/pebble#554); a CI run hung 30 s on it.
    def read_own(order_url: str) -> list[str]:
        return [client.get_order(order_url).url for _ in range(6)]

    with ThreadPoolExecutor(max_workers=len(orders)) as pool:
        results = list(pool.map(read_own, [o.url for o in orders]))
    assert results == [[o.url] * 6 for o in orders]
    client.close()


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_tls_is_verified_against_the_ca_bundle(pebble: PebbleServer) -> None:
    tls_error = r"TLS connection to ACME server https://127\.0\.0\.1:\d+/dir failed"
    with pytest.raises(errors.AcmeUnreachable, match=tls_error):
        _client(pebble, ca_bundle_pem=None).register(email=None)  # system roots only
    with pytest.raises(errors.AcmeUnreachable, match=tls_error):
        _client(pebble, ca_bundle_pem=pebble.issuance_roots_pem()).register(email=None)
    assert _client(pebble, ca_bundle_pem=None, skip_tls_verify=True).register(email=None)


def test_url_that_is_not_an_acme_directory_is_a_clear_error(
    pebble: PebbleServer, responder: ChallengeResponder
) -> None:
    url = f"http://127.0.0.1:{pebble.http_port}/directory"
    client = AcmeClient(directory_url=url, account_key_pem=_account_key_pem())
    with pytest.raises(errors.AcmeNotADirectory, match=rf"{url} is not an ACME directory.*404"):
        client.register(email=None)
    roots_url = f"{pebble.management_url}/roots/0"  # HTTPS, 200, but a PEM
    client = _client(pebble, directory_url=roots_url)
    with pytest.raises(errors.AcmeNotADirectory, match=f"{roots_url} is not an ACME directory"):
        client.register(email=None)


def test_unreachable_server_error_names_the_url() -> None:
    url = f"https://127.0.0.1:{free_port()}/dir"
    client = AcmeClient(directory_url=url, account_key_pem=_account_key_pem(), timeout=2)
    with pytest.raises(errors.AcmeUnreachable, match=f"cannot reach ACME server {url}"):
        client.register(email=None)


def test_requests_take_the_environments_proxy_unless_no_proxy_names_the_server(
    pebble: PebbleServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What requests reads from the environment holds for every ACME request (certctl
    reads it once per server, not per request): here a proxy that refuses connections."""
    refusing_proxy = f"http://127.0.0.1:{free_port()}"
    for no_proxy, goes_through_proxy in (("127.0.0.1", False), ("", True)):
        client = _client(pebble, timeout=2)
        assert client.profiles() is not None  # the directory, fetched before the proxy is set
        for name in ("https_proxy", "HTTPS_PROXY"):
            monkeypatch.setenv(name, refusing_proxy)
        for name in ("no_proxy", "NO_PROXY"):
            monkeypatch.setenv(name, no_proxy)
        if goes_through_proxy:
            with pytest.raises(errors.AcmeUnreachable, match="cannot reach ACME server"):
                client.register(email=None)
        else:
            assert client.register(email=None)
        for name in ("https_proxy", "HTTPS_PROXY", "no_proxy", "NO_PROXY"):
            monkeypatch.delenv(name)
        client.close()


def test_unusable_account_key_is_a_config_error_without_key_material() -> None:
    with pytest.raises(errors.AcmeConfigError) as raised:
        AcmeClient(directory_url="https://127.0.0.1:1/dir", account_key_pem=b"not a key")
    assert "not a key" not in str(raised.value)


def test_key_authorization_and_dns01_value_use_the_account_thumbprint() -> None:
    client = AcmeClient(directory_url="https://127.0.0.1:1/dir", account_key_pem=_account_key_pem())
    token = "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA"
    key_authorization = client.key_authorization(token)
    token_part, thumbprint = key_authorization.split(".")
    assert token_part == token and len(thumbprint) == 43
    txt = client.dns01_txt_value(token)
    assert len(txt) == 43 and txt != thumbprint


@pytest.fixture
def plain_responder() -> Iterator[ChallengeResponder]:
    server = ChallengeResponder(free_port())
    try:
        yield server
    finally:
        server.close()


def test_self_check_passes_when_the_key_authorization_is_served(
    plain_responder: ChallengeResponder,
) -> None:
    port = plain_responder.server.server_address[1]
    plain_responder.responses["tok"] = "tok.thumb"
    self_check(
        host="app.example.test",
        token="tok",
        expected_key_authorization="tok.thumb",
        port=port,
        connect_address="127.0.0.1",
    )
    assert plain_responder.hosts_seen == [f"app.example.test:{port}"]


def test_self_check_reports_404_with_the_url(plain_responder: ChallengeResponder) -> None:
    port = plain_responder.server.server_address[1]
    with pytest.raises(SelfCheckFailed) as raised:
        self_check(host="127.0.0.1", token="missing", expected_key_authorization="x", port=port)
    assert str(raised.value) == (
        f"HTTP-01 self-check failed: GET http://127.0.0.1:{port}"
        "/.well-known/acme-challenge/missing returned 404"
    )


def test_self_check_reports_wrong_content(plain_responder: ChallengeResponder) -> None:
    port = plain_responder.server.server_address[1]
    plain_responder.responses["tok"] = "tok.other"
    with pytest.raises(SelfCheckFailed, match=r"unexpected content 'tok\.other'"):
        self_check(host="127.0.0.1", token="tok", expected_key_authorization="tok.me", port=port)


def test_self_check_reports_connection_errors() -> None:
    port = free_port()
    with pytest.raises(SelfCheckFailed, match=rf"GET http://h.example.test:{port}/.*127\.0\.0\.1"):
        self_check(
            host="h.example.test",
            token="t",
            expected_key_authorization="t.x",
            port=port,
            connect_address="127.0.0.1",
        )


def test_profile_the_server_does_not_offer_is_a_config_error(pebble: PebbleServer) -> None:
    client = _client(pebble)
    client.register(email=None)
    with pytest.raises(errors.AcmeConfigError, match=r"does not offer profile 'shortlived'"):
        client.new_order(csr_pem=_csr_pem("p.example.test"), profile="shortlived")


def test_every_request_names_certctl_and_its_version_in_the_user_agent(
    pebble: PebbleServer, responder: ChallengeResponder
) -> None:
    # RFC 8555 section 6.1; the current Pebble refuses requests without one (Debian's
    # does not check), so this also holds where no CA would notice.
    sent: list[str] = []
    client = _client(pebble, component="controller",
                     on_response=lambda exchange: sent.append(exchange.user_agent))
    client.register(email=None)
    _issue(client, responder, "agent.example.test", http_port=pebble.http_port)

    version = re.escape(importlib.metadata.version("certctl"))
    assert len(sent) > 5, "the directory, the account, the order, its steps, the certificate"
    assert {agent for agent in sent if not re.fullmatch(
        rf"certctl/{version} \(controller\) acme-python/\S+ python-requests/\S+", agent)} == set()


def test_the_current_pebble_refuses_a_request_without_user_agent(tmp_path: Path) -> None:
    """Why the User-Agent matters: without one, nothing works with a current CA."""
    with PebbleServer.start(tmp_path=tmp_path, http_port=free_port(), build="current") as pebble:
        response = requests.get(pebble.directory_url, verify=str(pebble.ca_bundle_path),
                                headers={"User-Agent": ""}, timeout=5)
    assert response.status_code == 400
    assert "User-Agent" in response.json()["detail"]


def test_reused_authorizations_need_no_challenge_answered(tmp_path: Path,
                                                           pebble_build: PebbleBuild) -> None:
    # PEBBLE_AUTHZREUSE=100: a second order for the same name gets the valid
    # authorization of the first, as ACME CAs do for a while after validating a name.
    with PebbleServer.start(tmp_path=tmp_path, http_port=free_port(),
                            env={"PEBBLE_AUTHZREUSE": "100"}, build=pebble_build) as pebble:
        responder = ChallengeResponder(pebble.http_port)
        try:
            client = _client(pebble)
            client.register(email=None)
            first, _ = _issue(client, responder, "reuse.example.test", http_port=pebble.http_port)
            fetched = len(responder.hosts_seen)
            second = client.new_order(csr_pem=_csr_pem("reuse.example.test"))
            authorizations = [client.get_authorization(url) for url in second.authorization_urls]
            ready = _wait(lambda: client.get_order(second.url), until={"ready", "invalid"})
        finally:
            responder.close()
    assert second.authorization_urls == first.authorization_urls
    assert [authorization.status for authorization in authorizations] == ["valid"]
    assert ready.status == "ready"
    assert len(responder.hosts_seen) == fetched, "nothing validated again"


def test_an_order_for_a_profile_gets_that_profiles_certificate(tmp_path: Path) -> None:
    # Current Pebble only: Debian's 2.4 has no profiles. Shaped after Let's Encrypt's.
    profiles = {
        "classic": PebbleProfile(description="90 days, Common Name", promote_common_name=True),
        "shortlived": PebbleProfile(description="6 days, no Common Name",
                                    validity_period=6 * 24 * 3600),
    }
    with PebbleServer.start(tmp_path=tmp_path, http_port=free_port(), build="current",
                            profiles=profiles) as pebble:
        responder = ChallengeResponder(pebble.http_port)
        try:
            client = _client(pebble)
            client.register(email=None)
            offered = client.profiles()
            leaves = {
                profile: x509.load_pem_x509_certificates(_issue(
                    client, responder, f"{profile}.example.test", http_port=pebble.http_port,
                    profile=profile)[1].encode())[0]
                for profile in profiles
            }
        finally:
            responder.close()

    assert offered == {name: profile.description for name, profile in profiles.items()}
    lifetime = {profile: leaf.not_valid_after_utc - leaf.not_valid_before_utc + datetime.timedelta(
        seconds=1) for profile, leaf in leaves.items()}  # Pebble's notAfter is inclusive
    assert lifetime == {"classic": datetime.timedelta(days=90),
                        "shortlived": datetime.timedelta(days=6)}
    common_names = {profile: [attribute.value for attribute in
                              leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
                    for profile, leaf in leaves.items()}
    assert common_names == {"classic": ["classic.example.test"], "shortlived": []}
