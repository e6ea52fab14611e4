"""ACME clients run by the helper process (`client_process`), against both Pebbles: the
same results and typed errors as `AcmeClient` in this process, every exchange reported
back, and a child that dies replaced without losing the account."""

from __future__ import annotations

import os
import pickle
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from certctl.issuers.acme import client_process, errors
from certctl.issuers.acme.client import AcmeClient, AcmeExchange
from tests.pebble import PebbleServer, free_port
from tests.serving import verify_chain
from tests.test_acme_client import ChallengeResponder, _account_key_pem, _csr_pem, _issue


@pytest.fixture
def pebble(any_pebble: PebbleServer) -> PebbleServer:
    return any_pebble


@pytest.fixture
def process() -> Iterator[client_process.AcmeProcess]:
    started = client_process.AcmeProcess()
    try:
        yield started
    finally:
        started.close()


def _client(process: client_process.AcmeProcess, pebble: PebbleServer, *,
            key: bytes | None = None,
            exchanges: list[AcmeExchange] | None = None) -> client_process.ProcessAcmeClient:
    return process.client(
        directory_url=pebble.directory_url, account_key_pem=key or _account_key_pem(),
        ca_bundle_pem=pebble.ca_bundle_pem, skip_tls_verify=False, component="serve",
        on_response=None if exchanges is None else exchanges.append)


def _child_pid(process: client_process.AcmeProcess) -> int:
    child = process._child
    assert child is not None
    return child._process.pid


def test_a_certificate_is_issued_through_the_helper_and_every_exchange_reported(
    process: client_process.AcmeProcess, pebble: PebbleServer
) -> None:
    key = _account_key_pem()
    exchanges: list[AcmeExchange] = []
    client = _client(process, pebble, key=key, exchanges=exchanges)
    responder = ChallengeResponder(pebble.http_port)
    try:
        uri = client.register(email=None)
        order, chain = _issue(client, responder, "helper.example.test",
                              http_port=pebble.http_port)
    finally:
        responder.close()

    verify_chain(chain.encode(), roots_pem=pebble.issuance_roots_pem(),
                 host="helper.example.test")
    assert _child_pid(process) != os.getpid()
    # The account is the key's, whichever process registered it.
    assert AcmeClient(directory_url=pebble.directory_url, account_key_pem=key,
                      ca_bundle_pem=pebble.ca_bundle_pem).register(email=None) == uri
    assert client.account_uri == uri
    # Made from the key in this process, as `AcmeClient` makes them.
    in_process = AcmeClient(directory_url=pebble.directory_url, account_key_pem=key)
    assert client.key_authorization("dG9rZW4") == in_process.key_authorization("dG9rZW4")
    assert client.dns01_txt_value("dG9rZW4") == in_process.dns01_txt_value("dG9rZW4")
    # Every request the child made came back to `on_response`: the directory, a nonce,
    # the account, the order and its steps, the certificate.
    paths = [exchange.url for exchange in exchanges]
    assert any(url == pebble.directory_url for url in paths)
    assert any(url == order.url for url in paths)
    assert any(url.startswith(order.certificate_url or "-") for url in paths)
    # (The current Pebble also rejects some nonces with 400 at random: retried.)
    assert {200, 201} <= {exchange.status for exchange in exchanges}
    assert all(exchange.user_agent.startswith("certctl/") and "(serve)" in exchange.user_agent
               for exchange in exchanges)
    if client.offers_renewal_info():  # the current Pebble: ARI, a certificate sent as DER
        leaf = x509.load_pem_x509_certificates(chain.encode())[0]
        assert client.renewal_info(certificate=leaf).window_start > leaf.not_valid_before_utc


def test_errors_come_back_as_their_own_types(
    process: client_process.AcmeProcess, pebble: PebbleServer
) -> None:
    client = _client(process, pebble)
    with pytest.raises(errors.AccountNotRegistered):
        client.new_order(csr_pem=_csr_pem("early.example.test"))
    client.register(email=None)
    order = client.new_order(csr_pem=_csr_pem("forgotten.example.test"))
    pebble.restart()
    with pytest.raises(errors.AccountDoesNotExist) as raised:
        client.get_order(order.url)
    assert raised.value.code == "accountDoesNotExist"

    url = f"https://127.0.0.1:{free_port()}/dir"
    unreachable = process.client(directory_url=url, account_key_pem=_account_key_pem(),
                                 ca_bundle_pem=None, skip_tls_verify=False, component=None,
                                 on_response=None)
    with pytest.raises(errors.AcmeUnreachable, match=f"cannot reach ACME server {url}"):
        unreachable.register(email=None)


def test_an_unusable_ca_bundle_fails_each_call_as_building_the_client_does(
    process: client_process.AcmeProcess, pebble: PebbleServer
) -> None:
    with pytest.raises(errors.AcmeConfigError) as in_process:
        AcmeClient(directory_url=pebble.directory_url, account_key_pem=_account_key_pem(),
                   ca_bundle_pem=b"not a bundle")
    client = process.client(directory_url=pebble.directory_url,
                            account_key_pem=_account_key_pem(), ca_bundle_pem=b"not a bundle",
                            skip_tls_verify=False, component=None, on_response=None)
    for _ in range(2):
        with pytest.raises(errors.AcmeConfigError) as raised:
            client.register(email=None)
        assert str(raised.value) == str(in_process.value)
    with pytest.raises(errors.AcmeConfigError, match="not an unencrypted PEM private key"):
        process.client(directory_url=pebble.directory_url, account_key_pem=b"no key",
                       ca_bundle_pem=None, skip_tls_verify=False, component=None,
                       on_response=None)


def test_a_child_that_dies_fails_the_calls_in_flight_and_the_next_starts_another(
    process: client_process.AcmeProcess, pebble: PebbleServer
) -> None:
    client = _client(process, pebble)
    uri = client.register(email=None)
    order = client.new_order(csr_pem=_csr_pem("respawn.example.test"))

    # A call in flight when the child dies: to a server that accepts and never answers.
    silent = socket.create_server(("127.0.0.1", 0))
    try:
        stuck = process.client(
            directory_url=f"http://127.0.0.1:{silent.getsockname()[1]}/dir",
            account_key_pem=_account_key_pem(), ca_bundle_pem=None, skip_tls_verify=False,
            component=None, on_response=None)
        failures: list[BaseException] = []

        def register() -> None:
            try:
                stuck.register(email=None)
            except BaseException as err:
                failures.append(err)

        caller = threading.Thread(target=register)
        caller.start()
        time.sleep(0.5)
        first_pid = _child_pid(process)
        os.kill(first_pid, 9)
        caller.join(10)
    finally:
        silent.close()
    assert not caller.is_alive()
    assert len(failures) == 1 and isinstance(failures[0], errors.AcmeUnreachable)
    assert "helper process exited (code -9)" in str(failures[0])

    # The next call starts another child, which knows the account registered before.
    assert client.get_order(order.url).url == order.url
    assert _child_pid(process) != first_pid
    assert client.account_uri == uri


def test_close_ends_the_child_and_later_calls_fail(
    process: client_process.AcmeProcess, pebble: PebbleServer
) -> None:
    client = _client(process, pebble)
    client.register(email=None)
    pid = _child_pid(process)
    started = time.monotonic()
    process.close()
    assert time.monotonic() - started < 2, "it exits when its control socket shuts"
    assert not Path(f"/proc/{pid}").exists()
    with pytest.raises(errors.AcmeError, match="stopped"):
        client.new_order(csr_pem=_csr_pem("late.example.test"))


def test_every_error_type_pickles_as_it_was() -> None:
    """What the child sends back: each type, message and field as raised."""
    for error in (errors.AcmeUnreachable("down", url="https://ca/dir"),
                  errors.AcmeNotADirectory("a page", url="https://ca/"),
                  errors.RateLimited(typ=errors.ACME_ERROR_PREFIX + "rateLimited",
                                     detail="slow down", status=429,
                                     subproblems=(("a.test", "t", "d"),)),
                  errors.AcmeNotFound("gone"), errors.AcmeConfigError("bad bundle")):
        copied = pickle.loads(pickle.dumps(error))
        assert (type(copied), str(copied), vars(copied)) == (type(error), str(error),
                                                             vars(error))
