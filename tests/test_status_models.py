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

from certctl.api import schema
from certctl.api.status import (
    AUTHORIZATION_STATES,
    CHALLENGE_STATES,
    ORDER_STATES,
    ChallengeStatus,
    OrderAuthorization,
    OrderChallenge,
    OrderStatus,
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
