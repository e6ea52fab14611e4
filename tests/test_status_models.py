"""certctl/api/status.py: typed status models write what their CRD's status schema accepts.

Each model's `to_dict` is validated against the status schema of its kind's
CRD in crds/ (through schema.violations, which checks status too), and reads
back to the same model; a stored status that is partial, or of the wrong
shape, reads as unset fields rather than failing.
"""

from __future__ import annotations

import datetime
from typing import Any

import pytest

from certctl.api import conditions, schema
from certctl.api.conditions import CONDITION_STATUSES, Condition
from certctl.api.status import (
    AUTHORIZATION_STATES,
    CHALLENGE_STATES,
    ORDER_STATES,
    AcmeAccountStatus,
    AriStatus,
    CertificateStatus,
    ChallengeStatus,
    IssuedByStatus,
    IssuerFallbackStatus,
    IssuerStatus,
    OrderAuthorization,
    OrderChallenge,
    OrderStatus,
    PassedOverStatus,
    RenewalWindowStatus,
)


def status_violations(kind: str, status: dict[str, Any]) -> list[str]:
    """What the CRD of `kind` finds wrong under `status` (the spec is left empty, so its
    own violations are not ours to judge here)."""
    obj = {"apiVersion": "certctl.io/v1", "kind": kind,
           "metadata": {"name": "x", "namespace": "default"}, "spec": {}, "status": status}
    return [str(v) for v in schema.violations(obj)
            if v.field == "status" or v.field.startswith("status.")]


def test_the_status_check_sees_a_wrong_status() -> None:
    """The check the models are held to can fail: an undeclared field and a bad enum."""
    found = status_violations("Challenge", {"state": "done", "presentedAt": "now"})
    assert any("presentedAt" in violation for violation in found), found
    assert any("status.state" in violation for violation in found), found


@pytest.mark.parametrize("state", CHALLENGE_STATES)
def test_challenge_status_matches_the_crd(state: str) -> None:
    status = ChallengeStatus.from_object({"status": {"state": state}})
    status.presented = True
    status.processing = False
    status.reason = "Presented: token served"
    written = status.to_dict()
    assert written == {"presented": True, "processing": False, "state": state,
                       "reason": "Presented: token served"}
    assert status_violations("Challenge", written) == []
    assert ChallengeStatus.from_object({"status": written}) == status


def test_an_empty_challenge_status_writes_nothing() -> None:
    status = ChallengeStatus.from_object({"kind": "Challenge"})
    assert status == ChallengeStatus()
    assert status.to_dict() == {}
    assert status_violations("Challenge", status.to_dict()) == []
    assert not status.ended


def test_a_challenge_status_of_the_wrong_shape_reads_as_unset() -> None:
    stored = {"status": {"presented": "yes", "processing": 1, "state": "done",
                         "reason": ["x"], "presentedAt": "2024-05-01T12:00:00Z"}}
    assert ChallengeStatus.from_object(stored) == ChallengeStatus()
    assert ChallengeStatus.from_object({"status": None}) == ChallengeStatus()


@pytest.mark.parametrize(("state", "ended"), [("pending", False), ("processing", False),
                                             ("valid", True), ("invalid", True)])
def test_a_challenge_ends_valid_or_invalid(state: str, ended: bool) -> None:
    assert ChallengeStatus.from_object({"status": {"state": state}}).ended is ended


NOW = datetime.datetime(2024, 5, 1, 12, 0, 0, tzinfo=datetime.UTC)


def full_order_status(*, state: str, initial_state: str) -> OrderStatus:
    status = OrderStatus.from_object({"status": {"state": state}})
    status.url = "https://acme.example.test/order/1"
    status.finalize_url = "https://acme.example.test/order/1/finalize"
    status.reason = "the ACME server forgot an order"
    status.failure_time = NOW
    status.retry_after = NOW + datetime.timedelta(minutes=5)
    status.replaces_refused = "urn:ietf:params:acme:error:conflict: already replaced"
    status.forgotten_orders = 2
    status.certificate = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    fetched = OrderAuthorization.from_stored(
        {"url": "https://acme.example.test/authz/1", "initialState": initial_state})
    assert fetched is not None
    fetched.identifier = "example.test"
    fetched.wildcard = True
    fetched.challenge_fallback = "The ACME server offers no DNS-ACCOUNT-01 challenge"
    fetched.challenges = (OrderChallenge(type="dns-01", url="https://acme.example.test/chall/1",
                                         token="tok"),)
    status.authorizations = [fetched, OrderAuthorization(url="https://acme.example.test/authz/2")]
    return status


@pytest.mark.parametrize(("state", "initial_state"), list(zip(
    ORDER_STATES, (AUTHORIZATION_STATES * 2)[:len(ORDER_STATES)], strict=True)))
def test_order_status_matches_the_crd(state: str, initial_state: str) -> None:
    status = full_order_status(state=state, initial_state=initial_state)
    written = status.to_dict()
    assert written["finalizeURL"] == "https://acme.example.test/order/1/finalize"
    assert written["failureTime"] == "2024-05-01T12:00:00Z"
    assert written["retryAfter"] == "2024-05-01T12:05:00Z"
    assert written["certificate"] == "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCk1JSUIKLS0tLS1FTkQg" \
        "Q0VSVElGSUNBVEUtLS0tLQo="
    assert written["authorizations"] == [
        {"url": "https://acme.example.test/authz/1", "identifier": "example.test",
         "wildcard": True, "initialState": initial_state,
         "challengeFallback": "The ACME server offers no DNS-ACCOUNT-01 challenge",
         "challenges": [{"type": "dns-01", "url": "https://acme.example.test/chall/1",
                         "token": "tok"}]},
        {"url": "https://acme.example.test/authz/2"}]
    assert status_violations("Order", written) == []
    assert OrderStatus.from_object({"status": written}) == status


def test_an_empty_order_status_writes_nothing() -> None:
    status = OrderStatus.from_object({"kind": "Order", "status": {}})
    assert status == OrderStatus()
    assert status.to_dict() == {}


def test_an_order_status_of_the_wrong_shape_reads_as_unset() -> None:
    stored = {"status": {
        "url": 1, "state": "done", "failureTime": "yesterday", "retryAfter": "2024-05-01",
        "forgottenOrders": True, "certificate": "not base64!",
        "authorizations": [{"identifier": "no url"}, "x",
                           {"url": "https://acme.example.test/authz/1",
                            "challenges": [{"type": "http-01"}], "initialState": "new"}]}}
    assert OrderStatus.from_object(stored) == OrderStatus(
        authorizations=[OrderAuthorization(url="https://acme.example.test/authz/1")])


@pytest.mark.parametrize("kind", ["Issuer", "ClusterIssuer"])
@pytest.mark.parametrize("condition_status", CONDITION_STATUSES)
def test_issuer_status_matches_the_crd(
        kind: str, condition_status: conditions.ConditionStatus) -> None:
    status = IssuerStatus.from_object({"kind": kind})
    status.conditions = conditions.updated(
        [Condition(type="Other", status="Unknown")], type="Ready", status=condition_status,
        reason="ACMEAccountRegistered", message="registered", now=NOW, observed_generation=3)
    status.acme = AcmeAccountStatus(uri="https://acme.example.test/acct/1",
                                    last_registered_email="")
    written = status.to_dict()
    assert written == {
        "conditions": [
            {"type": "Other", "status": "Unknown"},
            {"type": "Ready", "status": condition_status, "reason": "ACMEAccountRegistered",
             "message": "registered", "lastTransitionTime": "2024-05-01T12:00:00Z",
             "observedGeneration": 3}],
        "acme": {"uri": "https://acme.example.test/acct/1", "lastRegisteredEmail": ""}}
    assert status_violations(kind, written) == []
    assert IssuerStatus.from_object({"status": written}) == status


def test_an_empty_issuer_status_writes_nothing() -> None:
    status = IssuerStatus.from_object({"kind": "Issuer", "status": {}})
    assert status == IssuerStatus()
    assert status.to_dict() == {}
    assert status_violations("Issuer", status.to_dict()) == []


def test_an_issuer_status_of_the_wrong_shape_reads_as_unset() -> None:
    stored = {"status": {
        "acme": {"uri": 1, "lastRegisteredEmail": ["x"]},
        "conditions": ["Ready", {"type": "Ready"}, {"status": "True"},
                       {"type": "Ready", "status": "Yes"},
                       {"type": "Ready", "status": "True", "reason": 1, "message": None,
                        "lastTransitionTime": "yesterday", "observedGeneration": True}]}}
    assert IssuerStatus.from_object(stored) == IssuerStatus(
        conditions=[Condition(type="Ready", status="True")], acme=AcmeAccountStatus())
    assert IssuerStatus.from_object({"status": {"conditions": {"type": "Ready"}}}) == (
        IssuerStatus())


def test_a_condition_keeps_its_transition_time_while_its_status_stays() -> None:
    later = NOW + datetime.timedelta(minutes=5)
    first = conditions.updated([], type="Ready", status="False", reason="Pending",
                               message="m", now=NOW, observed_generation=1)
    same = conditions.updated(first, type="Ready", status="False", reason="Ordering",
                              message="n", now=later, observed_generation=2)
    assert same == [Condition(type="Ready", status="False", reason="Ordering", message="n",
                              last_transition_time=NOW, observed_generation=2)]
    moved = conditions.updated(same, type="Ready", status="True", reason="Ready",
                               message="o", now=later, observed_generation=2)
    assert moved[0].last_transition_time == later
    assert first[0].reason == "Pending"


@pytest.mark.parametrize("source", ["ARI", "Lifetime"])
def test_certificate_status_matches_the_crd(source: str) -> None:
    later = NOW + datetime.timedelta(days=60)
    status = CertificateStatus.from_object({"status": {"renewalTimeSource": source}})
    status.set_condition(type="Ready", status="True", reason="Ready", message="up to date",
                         now=NOW, observed_generation=2)
    status.set_condition(type="Issuing", status="False", reason="Failed", message="retrying",
                         now=NOW, observed_generation=2)
    assert status.condition("Ready") == Condition(
        type="Ready", status="True", reason="Ready", message="up to date",
        last_transition_time=NOW, observed_generation=2)
    status.remove_condition(type="Ready")
    assert status.condition("Ready") is None
    status.not_before, status.not_after, status.renewal_time = NOW, later, NOW
    status.ari = AriStatus(
        cert_id="aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE", last_checked=NOW, next_check=later,
        suggested_window=RenewalWindowStatus(start=NOW, end=later), selected_time=later,
        explanation_url="https://acme.example.test/why")
    status.revision, status.failed_issuance_attempts = 3, 1
    status.last_failure_time, status.last_failure_generation = NOW, 2
    status.last_failed_order, status.retry_after = "example-com-4-0123456789", later
    status.next_private_key_secret_name = "example-com-next-private-key"
    status.issued_by = IssuedByStatus(name="second", kind="ClusterIssuer", group="certctl.io")
    status.issuer_fallback = IssuerFallbackStatus(revision=4, generation=2, passed_over=(
        PassedOverStatus(name="first", kind="Issuer", group="certctl.io", reason="RateLimited",
                         message="too many", failed_attempts=1, last_failure_time=NOW,
                         retry_after=later),))
    written = status.to_dict()
    stamp, later_stamp = "2024-05-01T12:00:00Z", "2024-06-30T12:00:00Z"
    assert written == {
        "conditions": [{"type": "Issuing", "status": "False", "reason": "Failed",
                        "message": "retrying", "lastTransitionTime": stamp,
                        "observedGeneration": 2}],
        "notBefore": stamp, "notAfter": later_stamp, "renewalTime": stamp,
        "renewalTimeSource": source,
        "acme": {"ari": {"certID": "aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE",
                         "lastChecked": stamp, "nextCheck": later_stamp,
                         "suggestedWindow": {"start": stamp, "end": later_stamp},
                         "selectedTime": later_stamp,
                         "explanationURL": "https://acme.example.test/why"}},
        "revision": 3, "failedIssuanceAttempts": 1, "lastFailureTime": stamp,
        "lastFailureGeneration": 2, "lastFailedOrder": "example-com-4-0123456789",
        "retryAfter": later_stamp, "nextPrivateKeySecretName": "example-com-next-private-key",
        "issuedBy": {"name": "second", "kind": "ClusterIssuer", "group": "certctl.io"},
        "issuerFallback": {"revision": 4, "generation": 2, "passedOver": [{
            "name": "first", "kind": "Issuer", "group": "certctl.io", "reason": "RateLimited",
            "message": "too many", "failedAttempts": 1, "lastFailureTime": stamp,
            "retryAfter": later_stamp}]}}
    assert status_violations("Certificate", written) == []
    assert CertificateStatus.from_object({"status": written}) == status


def test_an_empty_certificate_status_writes_nothing() -> None:
    status = CertificateStatus.from_object({"kind": "Certificate"})
    assert status == CertificateStatus()
    assert status.to_dict() == {}


def test_a_new_round_of_fallback_keeps_an_empty_passed_over() -> None:
    """A round with nothing passed over yet is written as such, not as no fallback."""
    status = CertificateStatus(issuer_fallback=IssuerFallbackStatus(revision=1, generation=1))
    assert status.to_dict() == {"issuerFallback": {"revision": 1, "generation": 1,
                                                   "passedOver": []}}
    assert status_violations("Certificate", status.to_dict()) == []


def test_a_certificate_status_of_the_wrong_shape_reads_as_unset() -> None:
    stored = {"status": {
        "notBefore": "2024-05-01", "renewalTimeSource": "Never", "revision": "3",
        "acme": {"ari": "x"}, "issuedBy": "first", "lastFailureGeneration": 1.5,
        "issuerFallback": {"revision": True, "passedOver": ["first", {"name": 1}]},
        "conditions": [{"type": "Ready"}]}}
    assert CertificateStatus.from_object(stored) == CertificateStatus(
        issuer_fallback=IssuerFallbackStatus(passed_over=(PassedOverStatus(),)))
