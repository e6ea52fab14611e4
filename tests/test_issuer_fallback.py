"""Issuer fallback against two real Pebbles: `spec.fallbackIssuerRefs` is tried when the
first choice cannot issue for a reason another CA could fix, the status says who issued
and why the first choice was passed over, and renewals go back to the first choice.

Each Pebble sits behind `CaSwitch`, a TLS proxy the test turns off (the CA unreachable:
connections are closed unanswered), back on, or makes answer newOrder with a problem
document of its choosing (429 rateLimited as Let's Encrypt sends it, or a malformed
request), forwarding everything else to Pebble unchanged.
"""

from __future__ import annotations

import base64
import copy
import datetime
import http.client
import http.server
import json
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from certctl.api import annotations as annotation_keys
from certctl.api import conditions, errors, parsing
from certctl.api.resources import ObjectKey
from certctl.controllers import (
    challenges,
    ingress_shim,
    kept_certificates,
    order_budget,
    policies,
    reconciling,
)
from certctl.issuers.acme import accounts as acme_accounts
from certctl.runtime import dispatch
from certctl.solvers.dns01 import solver as dns01_solver
from certctl.store.interface import WatchEvent
from certctl.store.local import LocalStore
from tests import lifecycle, test_gateway_shim
from tests.acme_proxy import PebbleProxy
from tests.pebble import PebbleServer, free_port
from tests.serving import Serving, eventually, ingress, write_yaml
from tests.test_manifests import _violations

NEW_ORDER_PATH = "/order-plz"  # Pebble's
HOST = "fallback.example.test"


class CaSwitch(PebbleProxy):
    """Pebble behind a proxy that can play dead or answer newOrder with a problem."""

    def __init__(self, pebble: PebbleServer) -> None:
        self.up = True
        self.new_order_problem: tuple[int, str] | None = None  # (status, ACME error code)
        self.new_orders = 0  # orders placed (created by Pebble, or refused by the switch)
        super().__init__(pebble)

    def _handle(self, handler: http.server.BaseHTTPRequestHandler) -> None:
        if not self.up:
            handler.close_connection = True  # no answer at all, as from a CA that is down
            return
        body = self.read_body(handler)
        new_order = handler.path == NEW_ORDER_PATH and handler.command == "POST"
        if new_order and self.new_order_problem is not None:
            self.new_orders += 1
            status, code = self.new_order_problem
            answer = json.dumps({"type": f"urn:ietf:params:acme:error:{code}",
                                 "detail": f"{code}, as the test asked"}).encode()
            headers = [("Content-Type", "application/problem+json")]
            if code == "rateLimited":
                headers.append(("Retry-After", "3600"))
            self.reply(handler, status, headers, answer)
            return
        forwarded = self.forward(handler, body)
        if forwarded is None:
            return
        status, answer_headers, answer = forwarded
        if new_order and status == 201:  # not a badNonce retried
            self.new_orders += 1
        self.reply(handler, status, answer_headers, answer)


@contextmanager
def two_cas(tmp_path: Path) -> Iterator[tuple[CaSwitch, CaSwitch]]:
    """Pebbles "first" and "second", each behind its switch; both validate HTTP-01 on the
    same port, where certctl answers."""
    http_port = free_port()
    with ExitStack() as stack:
        switches = []
        for name in ("first", "second"):
            pebble = stack.enter_context(
                PebbleServer.start(tmp_path=tmp_path / name, http_port=http_port))
            switch = CaSwitch(pebble)
            stack.callback(switch.close)
            switches.append(switch)
        yield switches[0], switches[1]


def issuer(name: str, switch: CaSwitch) -> dict[str, Any]:
    return {
        "apiVersion": "certctl.io/v1",
        "kind": "ClusterIssuer",
        "metadata": {"name": name},
        "spec": {"acme": {
            "server": switch.directory_url,
            "email": "test@example.test",
            "caBundle": base64.b64encode(switch.pebble.ca_bundle_pem).decode(),
            "privateKeySecretRef": {"name": f"{name}-account"},
            "solvers": [{"http01": {"ingress": {"ingressClassName": "certctl"}}}],
        }},
    }


def certificate(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "certctl.io/v1",
        "kind": "Certificate",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {
            "secretName": "web-tls",
            "dnsNames": [HOST],
            "issuerRef": {"name": "first", "kind": "ClusterIssuer"},
            "fallbackIssuerRefs": [{"name": "second", "kind": "ClusterIssuer"}],
            **spec,
        },
    }


@contextmanager
def serving(tmp_path: Path, first: CaSwitch, second: CaSwitch,
            cert: dict[str, Any]) -> Iterator[Serving]:
    manifests = write_yaml(tmp_path / "manifests.yaml", issuer("first", first),
                           issuer("second", second), cert)
    running = Serving(manifests=manifests, state_dir=tmp_path / "state",
                      pebble=first.pebble).start()
    try:
        yield running
    finally:
        running.stop()


def issued(run: Serving, *, revision: int) -> dict[str, Any] | None:
    found = run.certificate("web")
    status = (found or {}).get("status") or {}
    ready = [c for c in status.get("conditions") or [] if c["type"] == "Ready"]
    return found if status.get("revision") == revision and ready and \
        ready[0]["status"] == "True" else None


def issued_by_pebble(run: Serving, switch: CaSwitch) -> bool:
    """Whether the Secret's chain was signed under this Pebble's issuance root."""
    secret = run.store.get(kind="Secret", namespace="default", name="web-tls")
    chain = x509.load_pem_x509_certificates(base64.b64decode(secret["data"]["tls.crt"]))
    root = x509.load_pem_x509_certificate(switch.pebble.issuance_roots_pem())
    try:
        chain[-1].verify_directly_issued_by(root)
    except (ValueError, TypeError, Exception):
        return False
    return True


def request_renewal(run: Serving) -> None:
    obj = run.certificate("web")
    assert obj is not None
    lifecycle.with_condition(obj, type="Issuing", status="True",
                             reason=policies.MANUALLY_TRIGGERED, message="renew",
                             now=reconciling.system_clock())
    run.store.replace_status(obj=obj)


def issuer_ready(run: Serving, name: str) -> bool:
    obj = run.store.get(kind="ClusterIssuer", namespace=None, name=name) or {}
    return any(c["type"] == "Ready" and c["status"] == "True"
               for c in (obj.get("status") or {}).get("conditions") or [])


def test_first_ca_down_second_issues_and_renewal_returns_to_the_first(tmp_path: Path) -> None:
    with two_cas(tmp_path) as (first, second):
        first.up = False
        with serving(tmp_path, first, second, certificate()) as run:
            obj = eventually(lambda: issued(run, revision=1), timeout=60,
                             what="issued by the second issuer")
            status = obj["status"]
            assert status["issuedBy"] == {"name": "second", "kind": "ClusterIssuer",
                                          "group": "certctl.io"}
            (passed,) = status["issuerFallback"]["passedOver"]
            assert (passed["name"], passed["reason"]) == ("first", "IssuerNotReady")
            assert "Failed to register ACME account" in passed["message"]
            ready = run.condition("web", "Ready")
            assert "issued by ClusterIssuer second" in ready["message"], ready
            assert issued_by_pebble(run, second) and not issued_by_pebble(run, first)
            secret = run.store.get(kind="Secret", namespace="default", name="web-tls")
            assert secret["metadata"]["annotations"][annotation_keys.SECRET_ISSUER_NAME] == \
                "second"
            assert first.new_orders == 0
            assert second.new_orders == 1

            # A lost Secret comes back from the second issuer's kept copy, as its certificate.
            run.store.delete(kind="Secret", namespace="default", name="web-tls")
            eventually(lambda: run.store.get(kind="Secret", namespace="default",
                                             name="web-tls"), what="the Secret restored")
            assert issued_by_pebble(run, second)
            assert second.new_orders == 1 and first.new_orders == 0
            assert (run.certificate("web") or {})["status"]["issuedBy"]["name"] == "second"

            first.up = True
            eventually(lambda: issuer_ready(run, "first"), timeout=90,
                       what="the first issuer registered again")
            # Up to date with the second's certificate: nothing is ordered by itself.
            assert first.new_orders == 0
            request_renewal(run)
            obj = eventually(lambda: issued(run, revision=2), timeout=60,
                             what="renewed by the first issuer")
            assert obj["status"]["issuedBy"]["name"] == "first"
            assert "issuerFallback" not in obj["status"]
            assert issued_by_pebble(run, first)
            assert first.new_orders == 1
            # One kept copy per issuer, each naming its own.
            kept = run.store.list(kind="Secret", namespace="certctl",
                                  labels={kept_certificates.KEPT_LABEL: "true"})
            assert sorted(k["metadata"]["annotations"][annotation_keys.SECRET_ISSUER_NAME]
                          for k in kept) == ["first", "second"]


def test_rate_limited_first_ca_falls_back_and_says_until_when(tmp_path: Path) -> None:
    with two_cas(tmp_path) as (first, second):
        first.new_order_problem = (429, "rateLimited")
        with serving(tmp_path, first, second, certificate()) as run:
            obj = eventually(lambda: issued(run, revision=1), timeout=60,
                             what="issued by the second issuer")
            assert obj["status"]["issuedBy"]["name"] == "second"
            (passed,) = obj["status"]["issuerFallback"]["passedOver"]
            assert passed["reason"] == "RateLimited"
            assert "urn:ietf:params:acme:error:rateLimited" in passed["message"]
            assert passed["retryAfter"]
            assert first.new_orders == 1  # one attempt (fallbackAfterFailedAttempts 1)
            # The second's order is not held back by the first's Retry-After.
            assert "retryAfter" not in obj["status"]
            assert issued_by_pebble(run, second)


def test_the_next_issuer_waits_for_the_configured_attempts(tmp_path: Path) -> None:
    with two_cas(tmp_path) as (first, second):
        first.new_order_problem = (400, "rejectedIdentifier")
        with serving(tmp_path, first, second,
                     certificate(fallbackAfterFailedAttempts=2)) as run:
            obj = eventually(lambda: issued(run, revision=1), timeout=60,
                             what="issued by the second issuer")
            assert first.new_orders == 2
            assert obj["status"]["issuedBy"]["name"] == "second"
            (passed,) = obj["status"]["issuerFallback"]["passedOver"]
            assert (passed["reason"], passed["failedAttempts"]) == ("Refused", 2)


def test_a_rate_limit_with_retry_after_passes_over_at_once(tmp_path: Path) -> None:
    with two_cas(tmp_path) as (first, second):
        first.new_order_problem = (429, "rateLimited")
        with serving(tmp_path, first, second,
                     certificate(fallbackAfterFailedAttempts=3)) as run:
            obj = eventually(lambda: issued(run, revision=1), timeout=60,
                             what="issued by the second issuer")
            assert first.new_orders == 1
            assert obj["status"]["issuedBy"]["name"] == "second"


def test_a_request_every_ca_would_refuse_does_not_fall_back(tmp_path: Path) -> None:
    with two_cas(tmp_path) as (first, second):
        first.new_order_problem = (400, "malformed")
        with serving(tmp_path, first, second, certificate()) as run:
            failed = eventually(
                lambda: (run.condition("web", "Issuing").get("reason") == "Failed"
                         and run.certificate("web")),
                timeout=60, what="the issuance failed")
            assert first.new_orders == 1
            assert second.new_orders == 0
            status = failed["status"]
            assert "issuedBy" not in status
            assert not (status.get("issuerFallback") or {}).get("passedOver")
            assert status["failedIssuanceAttempts"] == 1
            assert "malformed" in run.condition("web", "Issuing")["message"]


def test_ingress_annotation_names_the_fallback_issuers() -> None:
    obj = ingress("web", hosts=[HOST], secret_name="web-tls", annotations={
        "cert-manager.io/cluster-issuer": "first",
        annotation_keys.FALLBACK_ISSUERS: "second, Issuer/third",
        annotation_keys.FALLBACK_AFTER_FAILED_ATTEMPTS: "3",
    })
    obj["metadata"]["uid"] = "7e1e5a3c-0000-4000-8000-000000000001"
    desired = ingress_shim.desired_certificates(ingress=parsing.parse_ingress(obj),
                                                ingress_obj=obj)
    assert desired.problems == []
    (wanted,) = desired.certificates
    assert wanted["spec"]["fallbackIssuerRefs"] == [
        {"name": "second", "kind": "ClusterIssuer", "group": "certctl.io"},
        {"name": "third", "kind": "Issuer", "group": "certctl.io"}]
    assert wanted["spec"]["fallbackAfterFailedAttempts"] == 3
    assert [r.name for r in parsing.parse_certificate(wanted).issuer_refs] == [
        "first", "second", "third"]


def test_ingress_annotation_with_an_unknown_kind_is_refused_by_name() -> None:
    obj = ingress("web", hosts=[HOST], secret_name="web-tls", annotations={
        "cert-manager.io/cluster-issuer": "first",
        annotation_keys.FALLBACK_ISSUERS: "Vault/second"})
    obj["metadata"]["uid"] = "7e1e5a3c-0000-4000-8000-000000000001"
    desired = ingress_shim.desired_certificates(ingress=parsing.parse_ingress(obj),
                                                ingress_obj=obj)
    assert desired.certificates == []
    (problem,) = desired.problems
    assert annotation_keys.FALLBACK_ISSUERS in str(problem) and "Vault/second" in str(problem)


def test_gateway_annotation_names_the_fallback_issuers(tmp_path: Path) -> None:
    store = LocalStore(manifests_dir=None, state_dir=tmp_path / "state")
    store.create(obj=test_gateway_shim.gateway(
        [test_gateway_shim.listener("a", "a.example.test", "a-tls")],
        annotations={"cert-manager.io/cluster-issuer": "first",
                     annotation_keys.FALLBACK_ISSUERS: "ClusterIssuer/second"}))
    test_gateway_shim.reconcile(store)
    found = test_gateway_shim.certificates(store)["a-tls"]
    assert found["spec"]["fallbackIssuerRefs"] == [
        {"name": "second", "kind": "ClusterIssuer", "group": "certctl.io"}]


def test_a_fallback_issuer_changing_wakes_the_certificates_naming_it(tmp_path: Path) -> None:
    store = LocalStore(manifests_dir=None, state_dir=tmp_path / "state")
    store.create(obj=certificate())
    other = certificate()
    other["metadata"]["name"] = "other"
    other["spec"].pop("fallbackIssuerRefs")
    store.create(obj=other)
    dispatcher = dispatch.Dispatcher(store=store, settings=dispatch.controller_settings(
        clock=reconciling.system_clock,
        accounts=acme_accounts.AcmeAccounts(cluster_resource_namespace="certctl"),
        backoff_base=datetime.timedelta(hours=1),
        self_check=challenges.self_check_for(port=80, connect_address=None),
        dns01=dns01_solver.Options(), order_budget=None))
    key = ObjectKey(kind="ClusterIssuer", namespace=None, name="second")
    event = WatchEvent(type="MODIFIED", key=key, obj={
        "apiVersion": "certctl.io/v1", "kind": "ClusterIssuer",
        "metadata": {"name": "second", "generation": 1}})
    assert [item for item in dispatcher.items_for(event) if item[0] == "certificate"] == [
        ("certificate", ObjectKey(kind="Certificate", namespace="default", name="web"))]


def _parsed(spec: dict[str, Any]) -> Any:
    return parsing.parse_certificate(certificate(**spec))


def test_parser_reads_the_fallback_list_in_order() -> None:
    parsed = _parsed({"fallbackIssuerRefs": [
        {"name": "second", "kind": "ClusterIssuer"}, {"name": "third"}],
        "fallbackAfterFailedAttempts": 2})
    assert [(r.kind, r.name) for r in parsed.issuer_refs] == [
        ("ClusterIssuer", "first"), ("ClusterIssuer", "second"), ("Issuer", "third")]
    assert parsed.fallback_after_failed_attempts == 2
    assert _parsed({}).fallback_after_failed_attempts == 1


@pytest.mark.parametrize(("spec", "message"), [
    ({"fallbackIssuerRefs": [{"name": "first", "kind": "ClusterIssuer"}]},
     "name each issuer once"),
    ({"fallbackIssuerRefs": [{"name": "b"}, {"name": "b", "kind": "Issuer"}]},
     "name each issuer once"),
    ({"fallbackIssuerRefs": None, "fallbackAfterFailedAttempts": 2},
     "fallbackAfterFailedAttempts only applies with fallbackIssuerRefs"),
    ({"fallbackAfterFailedAttempts": 0}, "must be between 1 and 10, is 0"),
    ({"fallbackIssuerRefs": [{"name": "b", "kind": "Vault"}]}, "got 'Vault'"),
], ids=["names-issuerRef-again", "named-twice", "attempts-without-fallbacks", "attempts-0",
        "unknown-kind"])
def test_schema_and_parser_refuse_the_same_fallback_mistakes(spec: dict[str, Any],
                                                             message: str) -> None:
    obj = certificate()
    obj["spec"].update(copy.deepcopy(spec))
    obj["spec"] = {key: value for key, value in obj["spec"].items() if value is not None}
    said = _violations(obj)
    assert any(message in line for line in said), said
    with pytest.raises(errors.InvalidObject):
        parsing.parse_certificate(obj)


# --- the state machine alone, on a clock the test moves (tests/lifecycle.py) ----------


def _world(tmp_path: Path) -> lifecycle.World:
    world = lifecycle.World(tmp_path)
    world.add_acme_issuer("first")
    world.add_acme_issuer("second")
    world.add_certificate("web", issuer="first", fallbackIssuerRefs=[
        {"name": "second", "kind": "ClusterIssuer"}])
    return world


def _ordered_from(world: lifecycle.World) -> str:
    return str(world.pending_order("web")["spec"]["issuerRef"]["name"])


def test_after_the_last_issuer_fails_the_next_round_starts_with_the_first(
        tmp_path: Path) -> None:
    world = _world(tmp_path)
    world.reconcile("web")
    assert _ordered_from(world) == "first"
    world.fail_order("web")  # unauthorized: the first CA's policy
    assert world.reconcile("web").requeue_after == 0  # the next issuer at once
    world.reconcile("web")
    assert _ordered_from(world) == "second"
    world.fail_order("web")
    assert world.reconcile("web").requeue_after == pytest.approx(3600)  # the usual backoff
    assert world.status("web")["failedIssuanceAttempts"] == 1
    world.clock.advance(hours=1)
    world.reconcile("web")
    assert _ordered_from(world) == "first"
    world.complete_order("web")
    world.reconcile("web")
    status = world.status("web")
    assert status["issuedBy"]["name"] == "first"
    assert "issuerFallback" not in status


def test_an_order_the_ca_never_takes_is_passed_over_after_the_placement_timeout(
        tmp_path: Path) -> None:
    world = _world(tmp_path)
    result = world.reconcile("web")
    assert _ordered_from(world) == "first"
    assert result.requeue_after == pytest.approx(120)
    world.clock.advance(minutes=2)
    assert world.reconcile("web").requeue_after == 0
    world.reconcile("web")
    assert _ordered_from(world) == "second"  # the first's Order is gone
    (passed,) = world.status("web")["issuerFallback"]["passedOver"]
    assert passed["reason"] == "CAUnreachable" and "did not take Order" in passed["message"]


def test_a_scheduled_renewal_goes_back_to_the_first_choice(tmp_path: Path) -> None:
    world = _world(tmp_path)
    world.reconcile("web")
    world.fail_order("web", reason="urn:ietf:params:acme:error:rateLimited: too many")
    world.reconcile("web")
    world.issue("web")
    assert world.status("web")["issuedBy"]["name"] == "second"
    assert world.reconcile("web").requeue_after is not None  # up to date: no order
    assert world.orders("web")[-1]["spec"]["issuerRef"]["name"] == "second"
    world.clock.set(conditions.parse_time(world.status("web")["renewalTime"]))
    world.reconcile("web")
    assert _ordered_from(world) == "first"
    world.complete_order("web")
    world.reconcile("web")
    assert world.status("web")["issuedBy"]["name"] == "first"
    assert world.status("web")["revision"] == 2


def test_the_fallback_status_fits_the_crd(tmp_path: Path) -> None:
    world = _world(tmp_path)
    world.reconcile("web")
    world.fail_order("web", reason="urn:ietf:params:acme:error:rateLimited: too many",
                     retry_after=world.clock.now + datetime.timedelta(hours=3))
    world.reconcile("web")
    world.issue("web")
    obj = world.certificate("web")
    assert obj["status"]["issuerFallback"]["passedOver"][0]["retryAfter"]
    obj["metadata"] = {"name": "web", "namespace": "default"}
    assert _violations(obj) == []


def test_orders_are_budgeted_per_ca(tmp_path: Path) -> None:
    world = _world(tmp_path)
    second = world.issuer("second")
    second["spec"]["acme"]["server"] = "https://second.example.invalid/directory"
    world.store.replace(obj=second)
    world.reconcile("web")
    world.fail_order("web", reason="urn:ietf:params:acme:error:rateLimited: too many")
    world.reconcile("web")
    world.issue("web")

    def placed(server: str) -> int:
        ref = order_budget.ledger_ref(server=server, names=("web.example.test",),
                                      cluster_resource_namespace="certctl")
        return len(order_budget.placed_orders(
            ledger=order_budget.read_ledger(store=world.store, ref=ref)))

    assert placed(lifecycle.ACME_SERVER) == 0  # the first's failed order was refunded
    assert placed("https://second.example.invalid/directory") == 1


def test_a_kept_copy_is_restored_only_for_an_issuer_still_listed(tmp_path: Path) -> None:
    world = _world(tmp_path)
    world.reconcile("web")
    world.fail_order("web", reason="urn:ietf:params:acme:error:rateLimited: too many")
    world.reconcile("web")
    world.issue("web")
    assert world.status("web")["issuedBy"]["name"] == "second"
    # Lost while both are listed: the second's copy comes back, as the second's.
    world.store.delete(kind="Secret", namespace="default", name="web")
    world.reconcile("web")
    secret = world.secret("web")
    assert secret is not None
    assert secret["metadata"]["annotations"][annotation_keys.SECRET_ISSUER_NAME] == "second"
    orders = len(world.orders("web"))
    # The second is no longer listed: its copy is not restored, the first orders anew.
    obj = world.certificate("web")
    del obj["spec"]["fallbackIssuerRefs"]
    obj["metadata"]["generation"] = 2
    world.store.replace(obj=obj)
    world.store.delete(kind="Secret", namespace="default", name="web")
    world.reconcile("web")
    assert world.secret("web") is None
    assert len(world.orders("web")) == orders + 1
    assert _ordered_from(world) == "first"
