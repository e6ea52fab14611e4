"""Faults survived on the ACME side: a CA that rejects nonces, forgets everything, or
sees certctl killed halfway through an order.

Every test talks to a real Pebble through `AcmeGate`, a TLS-terminating HTTP
proxy that forwards each request to Pebble unchanged (Pebble builds its URLs
from the Host header, so they point back at the gate) and can hold requests
back. Holding is how a test stops certctl at an exact step of an order, from
outside, without timing guesses: once the request of that step was answered,
the next request certctl makes waits at the gate, and the test knows certctl
has done everything it does between the two. The gate also keeps the log of
requests and answers the assertions count (newOrder, finalize, badNonce).

The faults that are Pebble's (badNonce, a restart that forgets everything) run
against Debian's Pebble 2.4 and the current release; certctl's own (SIGKILL), which
no Pebble changes, against Debian's.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import http.server
import json
import os
import re
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509

from certctl.controllers import orders
from tests.acme_proxy import PebbleProxy
from tests.bind import BindServer
from tests.pebble import PebbleBuild, PebbleServer, free_port
from tests.serving import (
    Serving,
    dns_names,
    eventually,
    http_get,
    ingress,
    served_certificate,
    write_yaml,
)

NEW_ORDER_PATH = "/order-plz"  # Pebble's paths
FINALIZE_PREFIX = "/finalize-order/"
CHALLENGE_PREFIX = "/chalZ/"
ORDER_PREFIX = "/my-order/"
NEW_ACCOUNT_PATH = "/sign-me-up"
BAD_NONCE = "urn:ietf:params:acme:error:badNonce"


@dataclasses.dataclass(frozen=True)
class Request:
    method: str
    path: str
    post_as_get: bool  # a POST whose JWS payload is empty (RFC 8555 section 6.3)
    kid: str | None  # the account that signed it (JWS protected header), None for a JWK


@dataclasses.dataclass(frozen=True)
class Exchange(Request):
    """One request the gate forwarded, and Pebble's answer."""

    status: int
    problem: str | None  # the problem document's type, if the answer was one


Matcher = Callable[[Exchange], bool]


class AcmeGate(PebbleProxy):
    """Pebble behind a proxy that logs every exchange and can hold requests back.

    `close_after(matcher)`: the answer to the first request matching is sent
    only after the gate has closed, so every later request waits (`held`
    counts them) until `open()`. `hold_requests(predicate)` holds only the
    requests it selects, the gate staying open for the rest. `open(drop_held=True)`
    answers the waiting ones by closing their connection instead of forwarding
    them: they belong to a certctl that was killed meanwhile, and must not
    reach Pebble.
    """

    def __init__(self, pebble: PebbleServer) -> None:
        self.exchanges: list[Exchange] = []
        self.held = 0
        self._cond = threading.Condition()
        self._open = True
        self._generation = 0  # bumped by a dropping open()
        self._close_after: Matcher | None = None
        self._hold: Callable[[Request], bool] | None = None
        self._refuse: Callable[[Request], bool] | None = None
        super().__init__(pebble)

    def close(self) -> None:
        self.open(drop_held=True)
        super().close()

    def close_after(self, matcher: Matcher) -> None:
        with self._cond:
            self._close_after = matcher

    def hold_requests(self, predicate: Callable[[Request], bool]) -> None:
        with self._cond:
            self._hold = predicate

    def refuse(self, predicate: Callable[[Request], bool]) -> None:
        """Close the connection of every request selected, from now on, unforwarded."""
        with self._cond:
            self._refuse = predicate

    def open(self, *, drop_held: bool = False,
             then_hold: Callable[[Request], bool] | None = None,
             then_close_after: Matcher | None = None) -> None:
        """Let requests through again; `then_hold` and `then_close_after` are
        `hold_requests` and `close_after` in the same step."""
        with self._cond:
            self._open = True
            self._close_after = then_close_after
            self._hold = then_hold
            if drop_held:
                self._generation += 1
            self._cond.notify_all()

    def is_holding(self) -> bool:
        with self._cond:
            return (not self._open or self._hold is not None) and self.held > 0

    def count(self, matcher: Matcher) -> int:
        with self._cond:
            return sum(1 for exchange in self.exchanges if matcher(exchange))

    def _handle(self, handler: http.server.BaseHTTPRequestHandler) -> None:
        body = self.read_body(handler)
        request = Request(method=handler.command, path=handler.path.split("?")[0],
                          post_as_get=_empty_payload(body), kid=_signer(body))
        with self._cond:
            # The generation is read with the rule: a request that came in before a
            # dropping open() is dropped even when it gets the lock after it.
            hold, refuse, generation = self._hold, self._refuse, self._generation
        if refuse is not None and refuse(request):
            handler.close_connection = True
            return
        selected = hold is not None and hold(request)
        with self._cond:
            if not self._open or (selected and self._hold is not None):
                self.held += 1
                while not self._open or (selected and self._hold is not None):
                    self._cond.wait()
                self.held -= 1
            if generation != self._generation:
                handler.close_connection = True  # its sender is gone: nothing reaches Pebble
                return
        forwarded = self.forward(handler, body)
        if forwarded is None:
            return
        status, answer_headers, answer = forwarded
        exchange = Exchange(method=request.method, path=request.path,
                            post_as_get=request.post_as_get, kid=request.kid, status=status,
                            problem=_problem_type(answer_headers, answer))
        with self._cond:
            self.exchanges.append(exchange)
            if self._close_after is not None and self._close_after(exchange):
                self._open = False
                self._close_after = None
        self.reply(handler, status, answer_headers, answer)


def _empty_payload(body: bytes) -> bool:
    try:
        return bool(json.loads(body).get("payload") == "")
    except (ValueError, AttributeError):
        return False


def _signer(body: bytes) -> str | None:
    try:
        protected = json.loads(body)["protected"]
        header = json.loads(base64.urlsafe_b64decode(protected + "=" * (-len(protected) % 4)))
        return str(header["kid"]) if "kid" in header else None
    except (ValueError, KeyError, TypeError):
        return None


def _problem_type(headers: list[tuple[str, str]], body: bytes) -> str | None:
    content_type = next((v for k, v in headers if k.lower() == "content-type"), "")
    if "problem+json" not in content_type:
        return None
    try:
        problem_type = json.loads(body).get("type")
    except (ValueError, AttributeError):
        return None
    return str(problem_type) if problem_type else None


def is_new_order(exchange: Exchange) -> bool:
    """An order Pebble created (a badNonce-rejected newOrder created nothing)."""
    return exchange.path == NEW_ORDER_PATH and exchange.status == 201


def is_finalize(exchange: Exchange) -> bool:
    return exchange.path.startswith(FINALIZE_PREFIX) and exchange.status == 200


def is_challenge_answer(exchange: Exchange) -> bool:
    return (exchange.path.startswith(CHALLENGE_PREFIX) and not exchange.post_as_get
            and exchange.status == 200)


def is_new_account(exchange: Exchange) -> bool:
    return exchange.path == NEW_ACCOUNT_PATH and exchange.status in (200, 201)


@contextmanager
def gated(pebble: PebbleServer) -> Iterator[AcmeGate]:
    gate = AcmeGate(pebble)
    try:
        yield gate
    finally:
        gate.close()


def gated_issuer(pebble: PebbleServer, gate: AcmeGate) -> dict[str, Any]:
    """The Pebble ClusterIssuer of the other end-to-end tests, its server the gate."""
    return {
        "apiVersion": "cert-manager.io/v1",
        "kind": "ClusterIssuer",
        "metadata": {"name": "pebble"},
        "spec": {"acme": {
            "server": gate.directory_url,
            "email": "test@example.test",
            "caBundle": base64.b64encode(pebble.ca_bundle_pem).decode(),
            "privateKeySecretRef": {"name": "pebble-account"},
            "solvers": [{"http01": {"ingress": {"ingressClassName": "certctl"}}}],
        }},
    }


def _served(port: int, host: str, roots: bytes) -> x509.Certificate | None:
    certificate = served_certificate(port=port, server_name=host, roots_pem=roots)
    return certificate if host in dns_names(certificate) else None


def _issued_certificate(run: Serving, name: str) -> dict[str, Any] | None:
    found = run.certificate(name)
    return found if found and (found.get("status") or {}).get("revision") else None


_FAILED = re.compile(r"\b(Order|Certificate) \S+ Failed: ")


def _failures(caplog: pytest.LogCaptureFixture) -> list[str]:
    """Failed Orders and Certificates, as their Warning events were logged (a Challenge
    the CA forgot fails too, which is no failure of its Order)."""
    return [record.getMessage() for record in caplog.records
            if _FAILED.search(record.getMessage())]


def _hosts(count: int) -> list[str]:
    return [f"app{index}.example.test" for index in range(count)]


def _all_served(run: Serving, hosts: list[str], roots: bytes, *, timeout: float) -> None:
    for host in hosts:
        eventually(partial(_served, run.https_port, host, roots), timeout=timeout,
                   what=f"a verified certificate for {host}")


def _manifests(tmp_path: Path, pebble: PebbleServer, gate: AcmeGate, hosts: list[str]) -> Path:
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    write_yaml(manifests / "all.yaml", gated_issuer(pebble, gate),
               *(ingress(host.split(".")[0], hosts=[host],
                         secret_name=f"{host.split('.')[0]}-tls") for host in hosts))
    return manifests


# --- the requests of an order -----------------------------------------------------------


def test_an_order_whose_challenges_passed_is_finalized_without_asking_for_it_first(
    tmp_path: Path, pebble: PebbleServer
) -> None:
    """Every authorization valid makes the order ready (RFC 8555 7.1.6): the Order
    finalizes on its Challenges' word. From the challenge's answer to the finalize the
    gate refuses every read of the order, so asking first would never finalize."""
    host = "web.example.test"
    with gated(pebble) as gate:
        manifests = _manifests(tmp_path, pebble, gate, [host])

        def before_finalize(request: Request) -> bool:
            return (request.path.startswith(ORDER_PREFIX) and request.post_as_get
                    and gate.count(is_challenge_answer) > 0 and gate.count(is_finalize) == 0)

        gate.refuse(before_finalize)
        roots = pebble.issuance_roots_pem()
        run = Serving(manifests=manifests, state_dir=tmp_path / "state", pebble=pebble).start()
        try:
            eventually(partial(_served, run.https_port, host, roots), timeout=60,
                       what=f"a verified certificate for {host}")
        finally:
            run.stop()
    assert gate.count(is_finalize) == 1
    # Pebble refuses 5 % of nonces by default; a finalize refused for its nonce reached
    # nothing, and the client sends it again.
    assert gate.count(lambda exchange: exchange.path.startswith(FINALIZE_PREFIX)
                      and exchange.problem != BAD_NONCE) == 1, \
        "finalized once, not again on an orderNotReady"


def test_an_order_is_not_read_while_its_challenges_are_at_work(
    tmp_path: Path, pebble: PebbleServer
) -> None:
    """Each step of a Challenge (created, presented, answered) wakes its Order; until one
    of them ends, the CA has nothing new to say of the order, so the Order does not ask
    it: the order is read only after the finalize (it was read once before it too, one
    ACME request a certificate more)."""
    hosts = _hosts(4)
    with gated(pebble) as gate:
        manifests = _manifests(tmp_path, pebble, gate, hosts)
        roots = pebble.issuance_roots_pem()
        run = Serving(manifests=manifests, state_dir=tmp_path / "state", pebble=pebble).start()
        try:
            _all_served(run, hosts, roots, timeout=60)
        finally:
            run.stop()
        exchanges = list(gate.exchanges)
    finalized: set[str] = set()
    read_before_finalize = []
    for exchange in exchanges:
        if is_finalize(exchange):
            finalized.add(exchange.path.removeprefix(FINALIZE_PREFIX))
        elif (exchange.path.startswith(ORDER_PREFIX) and exchange.post_as_get
              and exchange.path.removeprefix(ORDER_PREFIX) not in finalized):
            read_before_finalize.append(exchange.path)
    assert len(finalized) == len(hosts)
    assert read_before_finalize == []


@contextmanager
def slow_forwarder(*, listen_port: int, target_port: int, delay: float) -> Iterator[None]:
    """TCP from 127.0.0.1:`listen_port` to `target_port`, each connection held `delay` s first."""

    class Forward(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            time.sleep(delay)
            with socket.create_connection(("127.0.0.1", target_port), timeout=10) as upstream:
                pump = threading.Thread(target=_pump, args=(upstream, self.request), daemon=True)
                pump.start()
                _pump(self.request, upstream)
                pump.join(10)

    server = socketserver.ThreadingTCPServer(("127.0.0.1", listen_port), Forward)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while chunk := source.recv(65536):
            sink.sendall(chunk)
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_WR)


def test_a_challenge_the_ca_is_slow_to_validate_says_it_was_accepted(
    tmp_path: Path, pebble_build: PebbleBuild
) -> None:
    """The answer accepted is said in the Challenge's status only when the CA has not
    given its verdict a second later (challenges.UNTOLD_ANSWER); a fast CA's verdict is
    the one write after the answer (test_cluster_operator's request count). Pebble's
    validation requests reach the data plane 3 s late here."""
    host = "slow.example.test"
    data_plane_http = free_port()
    seen: list[tuple[str, bool]] = []
    with PebbleServer.start(tmp_path=tmp_path, http_port=free_port(),
                            build=pebble_build) as pebble, \
            slow_forwarder(listen_port=pebble.http_port, target_port=data_plane_http,
                           delay=3.0), \
            gated(pebble) as gate:
        manifests = _manifests(tmp_path, pebble, gate, [host])
        roots = pebble.issuance_roots_pem()
        run = Serving(manifests=manifests, state_dir=tmp_path / "state", pebble=pebble,
                      http_port=data_plane_http, self_check_port=data_plane_http).start()
        try:
            def served_while_watching() -> x509.Certificate | None:
                for challenge in run.store.list(kind="Challenge", namespace="default"):
                    status = challenge.get("status") or {}
                    if status.get("reason") and (status.get("reason"),
                                                 bool(status.get("processing"))) not in seen:
                        seen.append((status["reason"], bool(status.get("processing"))))
                return _served(run.https_port, host, roots)

            eventually(served_while_watching, timeout=60,
                       what=f"a verified certificate for {host}")
        finally:
            run.stop()
    assert ("Accepted: waiting for the ACME server to validate", True) in seen, seen
    assert gate.count(is_challenge_answer) == 1


# --- badNonce ---------------------------------------------------------------------------


def test_half_the_nonces_rejected_every_certificate_is_still_issued_and_served(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, pebble_build: PebbleBuild
) -> None:
    hosts = _hosts(5)
    with PebbleServer.start(tmp_path=tmp_path, http_port=free_port(), build=pebble_build,
                            env={"PEBBLE_WFE_NONCEREJECT": "50"}) as pebble, \
            gated(pebble) as gate:
        manifests = _manifests(tmp_path, pebble, gate, hosts)
        roots = pebble.issuance_roots_pem()
        run = Serving(manifests=manifests, state_dir=tmp_path / "state", pebble=pebble).start()
        try:
            _all_served(run, hosts, roots, timeout=90)
            # Served once the Secret is written; the status (revision) is written after it.
            certificates = {
                host: eventually(partial(_issued_certificate, run, f"{host.split('.')[0]}-tls"),
                                 what=f"the status of {host}'s Certificate after issuance")
                for host in hosts}
        finally:
            run.stop()
    rejected = gate.count(lambda exchange: exchange.problem == BAD_NONCE)
    assert rejected >= 10, f"Pebble rejected only {rejected} nonces: is the fault on?"
    assert gate.count(is_new_order) == len(hosts), "a retried badNonce placed no extra order"
    assert gate.count(is_finalize) == len(hosts)
    for host, certificate in certificates.items():
        assert certificate is not None
        status = certificate["status"]
        assert status["revision"] == 1, (host, status)
    assert not _failures(caplog), "a retried badNonce fails no order"


# --- Pebble restarted -------------------------------------------------------------------


def test_pebble_restarted_mid_order_certctl_registers_again_and_replaces_forgotten_orders(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, pebble_build: PebbleBuild
) -> None:
    hosts = _hosts(3)
    with PebbleServer.start(tmp_path=tmp_path, http_port=free_port(),
                            build=pebble_build) as pebble, \
            gated(pebble) as gate:
        manifests = _manifests(tmp_path, pebble, gate, hosts)
        # Stop everything once the first challenge was answered: that order (and maybe
        # others) has its URL, authorizations and accepted challenge at the old Pebble.
        gate.close_after(is_challenge_answer)
        run = Serving(manifests=manifests, state_dir=tmp_path / "state", pebble=pebble).start()
        try:
            eventually(gate.is_holding, what="certctl to wait at the gate")
            orders_before = gate.count(is_new_order)
            # An Order created but not placed yet has no status at all (the gate may hold
            # its newOrder).
            in_flight = {o["metadata"]["name"]: (o.get("status") or {}).get("url")
                         for o in run.store.list(kind="Order")}
            exchanges_before = len(gate.exchanges)
            pebble.restart()  # it forgets every account, order and authorization
            gate.open()
            roots = pebble.issuance_roots_pem()
            for host in hosts:
                eventually(partial(_served, run.https_port, host, roots), timeout=60,
                           what=f"a certificate for {host} from the restarted Pebble")
            eventually(run.standalone.queue.idle, what="the controllers to settle")
            certificates = [
                eventually(partial(_issued_certificate, run, f"{host.split('.')[0]}-tls"),
                           what=f"the status of {host}'s Certificate after issuance")
                for host in hosts]
            orders = run.store.list(kind="Order")
            challenges = run.store.list(kind="Challenge")
        finally:
            run.stop()
    after_restart = gate.exchanges[exchanges_before:]
    assert orders_before >= 1
    assert any(is_new_account(exchange) for exchange in after_restart), \
        "certctl registered its account again"
    # Each certificate places at most one order at the new Pebble: forgotten ones are
    # replaced once, not retried, and no certificate fails over it.
    assert sum(1 for exchange in after_restart if is_new_order(exchange)) <= len(hosts)
    for certificate in certificates:
        assert certificate is not None
        assert certificate["status"]["revision"] == 1
    assert sorted(order["status"]["state"] for order in orders) == ["valid"] * len(hosts)
    # The orders in flight carried on (with new ACME orders where Pebble forgot theirs):
    # none failed and was superseded by another Order.
    finished = {order["metadata"]["name"]: order for order in orders}
    for name, url in in_flight.items():
        assert name in finished, f"Order {name} was superseded"
        if url:
            assert finished[name]["status"]["url"] != url
            assert finished[name]["status"]["forgottenOrders"] == 1
    assert not _failures(caplog)
    assert challenges == []


def test_an_order_whose_url_404s_after_a_pebble_restart_is_replaced_not_retried(
    tmp_path: Path, any_pebble: PebbleServer
) -> None:
    """The account was registered again (here by the issuer) before the order looked
    again: the order's own requests carry a valid account and its URL answers 404."""
    pebble = any_pebble
    host = "web.example.test"
    with gated(pebble) as gate:
        manifests = _manifests(tmp_path, pebble, gate, [host])
        gate.close_after(is_challenge_answer)
        run = Serving(manifests=manifests, state_dir=tmp_path / "state", pebble=pebble).start()
        try:
            eventually(gate.is_holding, what="certctl to wait after answering the challenge")
            (order,) = run.store.list(kind="Order")
            pebble.restart()
            old_account = run.store.get(kind="ClusterIssuer", namespace=None,
                                        name="pebble")["status"]["acme"]["uri"]

            def account_business(request: Request) -> bool:
                return request.path in ("/dir", "/nonce-plz", NEW_ACCOUNT_PATH)

            # Only account business gets through while the issuer registers again (an
            # edit of the issuer runs it); what certctl signed with the old account never
            # reaches Pebble (a request signed just before the registration can arrive
            # after the gate opens), so that the order's URL is asked with the new one.
            gate.refuse(lambda request: request.kid == old_account)
            gate.open(drop_held=True, then_hold=lambda request: not account_business(request))
            issuer = gated_issuer(pebble, gate)
            issuer["spec"]["acme"]["email"] = "ops@example.test"
            write_yaml(manifests / "all.yaml", issuer,
                       ingress("web", hosts=[host], secret_name="web-tls"))

            def registered_again() -> bool:
                found = run.store.get(kind="ClusterIssuer", namespace=None, name="pebble")
                return bool(found["status"]["acme"]["uri"] != old_account)

            eventually(registered_again, what="the issuer to register the account again")
            gate.open(drop_held=True)
            roots = pebble.issuance_roots_pem()
            eventually(partial(_served, run.https_port, host, roots),
                       what="a certificate from the restarted Pebble")
            replaced = run.store.get(kind="Order", namespace="default",
                                     name=order["metadata"]["name"])
            # Served once the Secret is written; the status (revision) is written after it.
            certificate = eventually(partial(_issued_certificate, run, "web-tls"),
                                     what="the Certificate's status after issuance")
        finally:
            run.stop()
    forgotten = order["status"]["url"]
    forgotten_path = urllib.parse.urlsplit(forgotten).path
    assert gate.count(lambda e: e.path == forgotten_path and e.status == 404) >= 1, \
        "the order's own URL answered 404"
    assert replaced is not None
    assert replaced["status"]["state"] == "valid"
    assert replaced["status"]["url"] != forgotten
    assert replaced["status"]["forgottenOrders"] == 1
    assert gate.count(is_new_order) == 2, "one order before the restart, one after"
    assert certificate is not None and certificate["status"]["revision"] == 1


def test_a_ca_that_forgets_every_order_is_not_asked_forever(
    tmp_path: Path, any_pebble: PebbleServer
) -> None:
    pebble = any_pebble
    host = "web.example.test"
    with gated(pebble) as gate:
        manifests = _manifests(tmp_path, pebble, gate, [host])
        gate.close_after(is_new_order)
        run = Serving(manifests=manifests, state_dir=tmp_path / "state", pebble=pebble).start()
        try:
            eventually(gate.is_holding, what="the first order")
            (first,) = run.store.list(kind="Order")
            # Pebble forgets each order right after placing it: the first one and every
            # replacement, until the Order gives up.
            for replacements in range(orders.MAX_FORGOTTEN_ORDERS + 1):
                pebble.restart()
                last = replacements == orders.MAX_FORGOTTEN_ORDERS
                gate.open(then_close_after=None if last else is_new_order)
                if not last:
                    eventually(gate.is_holding, what=f"replacement {replacements + 1}")

            def gave_up() -> dict[str, Any] | None:
                found = run.store.get(kind="Order", namespace="default",
                                      name=first["metadata"]["name"])
                return found if found and found["status"]["state"] == "errored" else None

            errored = eventually(gave_up, what="the Order to give up")
            # The Certificate counts that as one failure and, backed off, orders again.
            roots = pebble.issuance_roots_pem()
            eventually(partial(_served, run.https_port, host, roots),
                       what="a certificate once the CA keeps its orders")
            # Served once the Secret is written; the status (revision) is written after it.
            certificate = eventually(partial(_issued_certificate, run, "web-tls"),
                                     what="the Certificate's status after issuance")
        finally:
            run.stop()
    assert errored["status"]["reason"].startswith(
        f"the ACME server forgot {orders.MAX_FORGOTTEN_ORDERS} orders placed for this request")
    assert errored["status"]["forgottenOrders"] == orders.MAX_FORGOTTEN_ORDERS
    assert gate.count(is_new_order) == orders.MAX_FORGOTTEN_ORDERS + 2
    assert certificate is not None and certificate["status"]["revision"] == 1


# --- certctl killed ---------------------------------------------------------------------


class ServeProcess:
    """`python -m certctl serve` as a child process, its output copied to a log file.

    The output goes through a pipe, not straight into the file: a file size
    limit set on the child (tests/test_faults_disk.py) must not silence its log.
    """

    def __init__(self, *, manifests: Path, state_dir: Path, pebble: PebbleServer,
                 https_port: int, log_path: Path, extra_args: tuple[str, ...] = (),
                 watch: bool = False) -> None:
        self.log_path = log_path
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "certctl", "serve", "--manifests", str(manifests),
             "--state-dir", str(state_dir), "--listen-address", "127.0.0.1",
             "--http-port", str(pebble.http_port), "--https-port", str(https_port),
             "--self-check-address", "127.0.0.1", "--backoff-base", "1",
             *(() if watch else ("--no-watch",)), *extra_args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self._copier = threading.Thread(target=self._copy_output, daemon=True)
        self._copier.start()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def _copy_output(self) -> None:
        assert self.proc.stdout is not None
        with self.log_path.open("ab") as log:
            for line in self.proc.stdout:
                log.write(line)
                log.flush()

    def kill(self) -> None:
        """SIGKILL: no handler runs, nothing is flushed or cleaned up."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(15)
        self._copier.join(10)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._copier.join(10)
        return self.proc.returncode


def _step_recorded(state_dir: Path, kill_point: str) -> bool:
    """Whether certctl has written down the step it is to be killed after. An answered
    challenge is not written down: its verdict follows (or the CA's delay, after a second)."""
    if kill_point == "after-challenge-accepted":
        return True
    return any((o.get("status") or {}).get("url") for o in _state_objects(state_dir, "Order"))


def _answered_recorded(challenges: list[dict[str, Any]]) -> list[bool]:
    return [bool((c.get("status") or {}).get("processing")) for c in challenges]


def _state_objects(state_dir: Path, kind: str) -> list[dict[str, Any]]:
    folder = state_dir / "objects" / kind
    return [yaml.safe_load(path.read_text()) for path in sorted(folder.rglob("*.yaml"))]


KILL_POINTS: dict[str, Matcher] = {
    "after-new-order": is_new_order,
    "after-challenge-accepted": is_challenge_answer,
    "after-finalize": is_finalize,
}


@pytest.mark.parametrize("kill_point", list(KILL_POINTS))
def test_sigkill_at_each_step_of_an_order_resumes_it_without_a_second_order(
    tmp_path: Path, pebble: PebbleServer, kill_point: str
) -> None:
    host = "web.example.test"
    state = tmp_path / "state"
    https_port = free_port()
    with gated(pebble) as gate:
        manifests = _manifests(tmp_path, pebble, gate, [host])
        gate.close_after(KILL_POINTS[kill_point])
        validated_before = len(pebble.log_lines("set VALID by completed challenge"))
        first = ServeProcess(manifests=manifests, state_dir=state, pebble=pebble,
                             https_port=https_port, log_path=tmp_path / "first.log")
        try:
            # certctl answered that step and waits at the gate for the next request; with
            # several worker threads the one that took the step may still be recording it.
            eventually(lambda: gate.is_holding() and _step_recorded(state, kill_point),
                       timeout=60, what=f"certctl to stop {kill_point}")
            if kill_point == "after-challenge-accepted":
                # Pebble validates against the data plane about to die: let it finish, so
                # the step certctl is killed after is "accepted and valid at the CA".
                eventually(lambda: len(pebble.log_lines("set VALID by completed challenge"))
                           > validated_before, what="Pebble to validate the challenge")
        finally:
            first.kill()
        gate.open(drop_held=True)
        (order_at_kill,) = _state_objects(state, "Order")
        challenges_at_kill = _state_objects(state, "Challenge")
        assert order_at_kill["status"]["url"], "the order was recorded before the kill"
        assert not (state / "objects" / "Secret" / "default" / "web-tls.yaml").exists()
        if kill_point == "after-new-order":  # no authorization fetched yet
            assert challenges_at_kill == []
        elif kill_point == "after-challenge-accepted":
            # The restart answers again, unaware, and meets a challenge valid at the CA.
            assert _answered_recorded(challenges_at_kill) == [False]
        else:
            assert order_at_kill["status"]["state"] != "valid"

        roots = pebble.issuance_roots_pem()
        second = ServeProcess(manifests=manifests, state_dir=state, pebble=pebble,
                              https_port=https_port, log_path=tmp_path / "second.log")
        try:
            leaf = eventually(partial(_served, https_port, host, roots), timeout=60,
                              what="the certificate after the restart")
            eventually(lambda: [o["status"].get("state") for o in _state_objects(state, "Order")]
                       == ["valid"] and _state_objects(state, "Challenge") == [],
                       what="the order to end and its challenges to go")
            (authorization,) = _state_objects(state, "Order")[0]["status"]["authorizations"]
            token = authorization["challenges"][0]["token"]
            token_status, _, _ = http_get(port=pebble.http_port, host=host,
                                          path=f"/.well-known/acme-challenge/{token}")
        finally:
            assert second.stop() == 0

    assert gate.count(is_new_order) == 1, "the order in flight was continued, not placed again"
    assert gate.count(is_finalize) == 1
    assert len(pebble.log_lines("Issued certificate serial")) == 1
    (order,) = _state_objects(state, "Order")
    assert order["status"]["url"] == order_at_kill["status"]["url"]
    (secret,) = [s for s in _state_objects(state, "Secret")
                 if s["metadata"]["name"] == "web-tls"]
    chain = x509.load_pem_x509_certificates(base64.b64decode(secret["data"]["tls.crt"]))
    assert chain[0].serial_number == leaf.serial_number
    (certificate,) = _state_objects(state, "Certificate")
    assert certificate["status"]["revision"] == 1
    assert not _FAILED.search(second.log()), "nothing failed: the order was continued"
    # No solver leftovers: the data plane answered the token from the Challenge, which
    # is gone, and no solver Ingress or Service was ever needed.
    assert token_status == 404
    assert _state_objects(state, "Challenge") == []
    assert _state_objects(state, "Ingress") == [] and _state_objects(state, "Service") == []
    assert not list(state.rglob("*.tmp")), "no half-written state file"


@pytest.mark.parametrize("kill_point", ["after-challenge-accepted", "after-finalize"])
def test_sigkill_during_a_dns01_order_leaves_no_txt_record(
    tmp_path: Path, kill_point: str
) -> None:
    host = "web.example.test"
    fqdn = f"_acme-challenge.{host}."
    state = tmp_path / "state"
    https_port = free_port()
    with BindServer.start(tmp_path=tmp_path) as bind, \
            PebbleServer.start(tmp_path=tmp_path, http_port=free_port(),
                               dns_server=bind.nameserver) as pebble, \
            gated(pebble) as gate:
        issuer = gated_issuer(pebble, gate)
        issuer["spec"]["acme"]["solvers"] = [{"dns01": {"rfc2136": {
            "nameserver": bind.nameserver, "tsigKeyName": bind.tsig_key_name,
            "tsigAlgorithm": "HMACSHA256",
            "tsigSecretSecretRef": {"name": "rfc2136-tsig", "key": "secret"}}}}]
        manifests = tmp_path / "manifests"
        manifests.mkdir()
        write_yaml(manifests / "all.yaml", issuer,
                   {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                    "metadata": {"name": "rfc2136-tsig", "namespace": "certctl"},
                    "stringData": {"secret": bind.tsig_secret}},
                   ingress("web", hosts=[host], secret_name="web-tls"))
        dns01_args = ("--dns01-recursive-nameservers", bind.nameserver,
                      "--dns01-recursive-nameservers-only")
        if kill_point == "after-challenge-accepted":
            gate.close_after(is_challenge_answer)
        else:
            # The challenge never hears its verdict (its polls wait at the gate) while the
            # order is finalized (on the Order's own poll): the killed certctl leaves a
            # Challenge whose status does not say it was answered.
            gate.hold_requests(lambda request: request.path.startswith(CHALLENGE_PREFIX)
                               and request.post_as_get and gate.count(is_challenge_answer) > 0)
            gate.close_after(is_finalize)
        first = ServeProcess(manifests=manifests, state_dir=state, pebble=pebble,
                             https_port=https_port, log_path=tmp_path / "first.log",
                             extra_args=dns01_args)
        try:
            eventually(lambda: gate.count(KILL_POINTS[kill_point]) and gate.is_holding()
                       and _step_recorded(state, kill_point),
                       timeout=60, what=f"certctl to stop {kill_point}")
            eventually(lambda: pebble.log_lines("set VALID by completed challenge"),
                       what="Pebble to validate the TXT record")
        finally:
            first.kill()
        gate.open(drop_held=True)
        assert len(bind.txt_values(fqdn)) == 1, "the killed certctl had written the record"
        assert _answered_recorded(_state_objects(state, "Challenge")) == [False]

        roots = pebble.issuance_roots_pem()
        # One worker runs the restarted controllers in start-up order, Orders before
        # Challenges: the Order may well end before its Challenge is looked at again.
        second = ServeProcess(manifests=manifests, state_dir=state, pebble=pebble,
                              https_port=https_port, log_path=tmp_path / "second.log",
                              extra_args=(*dns01_args, "--workers", "1"))
        try:
            eventually(partial(_served, https_port, host, roots), timeout=60,
                       what="the certificate after the restart")
            eventually(lambda: _state_objects(state, "Challenge") == [],
                       what="the challenge to end")
            eventually(lambda: bind.txt_values(fqdn) == set(), timeout=10,
                       what="the TXT record to be removed")
        finally:
            assert second.stop() == 0
    assert gate.count(is_new_order) == 1
    assert gate.count(is_finalize) == 1
