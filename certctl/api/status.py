"""Typed status of certctl's kinds: what reconcilers read from and write to `status`.

Each model reads a stored status with `from_object`, tolerating what is
missing or of the wrong type (a status written by an older certctl, or by
hand, reads as unset rather than failing the reconcile), and writes it back
with `to_dict`: exactly the fields of the CRD's status schema, camelCase,
unset ones left out, so the dict compares equal to what the API server
stores and a no-op write can be skipped.
"""

from __future__ import annotations

import base64
import binascii
import datetime
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal, Protocol

from certctl.api import conditions
from certctl.api.conditions import Condition, ConditionStatus

ChallengeState = Literal["pending", "processing", "valid", "invalid", "expired", "errored"]

CHALLENGE_STATES: Final[tuple[ChallengeState, ...]] = (
    "pending", "processing", "valid", "invalid", "expired", "errored")
FINAL_CHALLENGE_STATES: Final[frozenset[ChallengeState]] = frozenset({"valid", "invalid"})


class Status(Protocol):
    """What `reconciling.write_status` writes: a status model's dict for the store."""

    def to_dict(self) -> dict[str, Any]: ...


def _stored(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    status = obj.get("status")
    return status if isinstance(status, Mapping) else {}


def _bool(value: object) -> bool | None:
    return value if isinstance(value, bool) else None


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def challenge_state(value: object) -> ChallengeState | None:
    """`value` as a Challenge state (an ACME challenge's status is one); None if it is none."""
    return next((state for state in CHALLENGE_STATES if state == value), None)


@dataclass(kw_only=True)
class ChallengeStatus:
    """A Challenge's status (crds/challenges.yaml): mutable, as a reconcile pass moves it
    along step by step and writes it after each step that matters."""

    presented: bool | None = None
    processing: bool | None = None
    state: ChallengeState | None = None
    reason: str | None = None

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> ChallengeStatus:
        stored = _stored(obj)
        return cls(
            presented=_bool(stored.get("presented")),
            processing=_bool(stored.get("processing")),
            state=challenge_state(stored.get("state")),
            reason=_str(stored.get("reason")),
        )

    @property
    def ended(self) -> bool:
        return self.state in FINAL_CHALLENGE_STATES

    def to_dict(self) -> dict[str, Any]:
        return _without_unset({
            "presented": self.presented,
            "processing": self.processing,
            "state": self.state,
            "reason": self.reason,
        })


OrderState = Literal["pending", "ready", "processing", "valid", "invalid", "expired", "errored"]
AuthorizationState = Literal["pending", "valid", "invalid", "deactivated", "expired", "revoked"]

ORDER_STATES: Final[tuple[OrderState, ...]] = (
    "pending", "ready", "processing", "valid", "invalid", "expired", "errored")
AUTHORIZATION_STATES: Final[tuple[AuthorizationState, ...]] = (
    "pending", "valid", "invalid", "deactivated", "expired", "revoked")


def order_state(value: object) -> OrderState | None:
    """`value` as an Order state (an ACME order's status is one); None if it is none."""
    return next((state for state in ORDER_STATES if state == value), None)


def authorization_state(value: object) -> AuthorizationState | None:
    """`value` as an ACME authorization's state; None if it is none."""
    return next((state for state in AUTHORIZATION_STATES if state == value), None)


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _time(value: object) -> datetime.datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return conditions.parse_time(value)
    except ValueError:
        return None


def _base64(value: object) -> bytes | None:
    if not isinstance(value, str):
        return None
    try:
        return base64.b64decode(value, validate=True)
    except binascii.Error:
        return None


def _without_unset(fields: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in fields.items() if value is not None}


@dataclass(frozen=True, kw_only=True)
class OrderChallenge:
    """The challenge certctl chose to solve an authorization with."""

    type: str
    url: str
    token: str

    @classmethod
    def from_stored(cls, stored: object) -> OrderChallenge | None:
        """None for an entry missing a field the CRD requires."""
        if not isinstance(stored, Mapping):
            return None
        type, url, token = (_str(stored.get(name)) for name in ("type", "url", "token"))
        if type is None or url is None or token is None:
            return None
        return cls(type=type, url=url, token=token)

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "url": self.url, "token": self.token}


@dataclass(kw_only=True)
class OrderAuthorization:
    """One of an Order's authorizations; `identifier` is set once it has been fetched."""

    url: str
    identifier: str | None = None
    wildcard: bool | None = None
    initial_state: AuthorizationState | None = None
    challenge_fallback: str | None = None
    challenges: tuple[OrderChallenge, ...] = ()

    @classmethod
    def from_stored(cls, stored: object) -> OrderAuthorization | None:
        """None for an entry without its URL (the one field the CRD requires)."""
        if not isinstance(stored, Mapping) or (url := _str(stored.get("url"))) is None:
            return None
        challenges = stored.get("challenges")
        return cls(
            url=url,
            identifier=_str(stored.get("identifier")),
            wildcard=_bool(stored.get("wildcard")),
            initial_state=authorization_state(stored.get("initialState")),
            challenge_fallback=_str(stored.get("challengeFallback")),
            challenges=tuple(
                challenge for entry in (challenges if isinstance(challenges, list) else ())
                if (challenge := OrderChallenge.from_stored(entry)) is not None),
        )

    def to_dict(self) -> dict[str, Any]:
        return _without_unset({
            "url": self.url,
            "identifier": self.identifier,
            "wildcard": self.wildcard,
            "initialState": self.initial_state,
            "challengeFallback": self.challenge_fallback,
            "challenges": [c.to_dict() for c in self.challenges] if self.challenges else None,
        })


@dataclass(kw_only=True)
class OrderStatus:
    """An Order's status (crds/orders.yaml). `certificate` is the issued PEM chain itself
    (stored base64-encoded); times are aware datetimes (stored as RFC 3339, whole seconds)."""

    url: str | None = None
    finalize_url: str | None = None
    state: OrderState | None = None
    reason: str | None = None
    failure_time: datetime.datetime | None = None
    retry_after: datetime.datetime | None = None
    replaces_refused: str | None = None
    forgotten_orders: int | None = None
    certificate: bytes | None = None
    authorizations: list[OrderAuthorization] = field(default_factory=list)

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> OrderStatus:
        stored = _stored(obj)
        authorizations = stored.get("authorizations")
        return cls(
            url=_str(stored.get("url")),
            finalize_url=_str(stored.get("finalizeURL")),
            state=order_state(stored.get("state")),
            reason=_str(stored.get("reason")),
            failure_time=_time(stored.get("failureTime")),
            retry_after=_time(stored.get("retryAfter")),
            replaces_refused=_str(stored.get("replacesRefused")),
            forgotten_orders=_int(stored.get("forgottenOrders")),
            certificate=_base64(stored.get("certificate")),
            authorizations=[
                authorization
                for entry in (authorizations if isinstance(authorizations, list) else ())
                if (authorization := OrderAuthorization.from_stored(entry)) is not None],
        )

    def to_dict(self) -> dict[str, Any]:
        return _without_unset({
            "url": self.url,
            "finalizeURL": self.finalize_url,
            "state": self.state,
            "reason": self.reason,
            "failureTime": (conditions.format_time(self.failure_time)
                            if self.failure_time is not None else None),
            "retryAfter": (conditions.format_time(self.retry_after)
                           if self.retry_after is not None else None),
            "replacesRefused": self.replaces_refused,
            "forgottenOrders": self.forgotten_orders,
            "certificate": (base64.b64encode(self.certificate).decode()
                            if self.certificate is not None else None),
            "authorizations": ([a.to_dict() for a in self.authorizations]
                               if self.authorizations else None),
        })


@dataclass(frozen=True, kw_only=True)
class AcmeAccountStatus:
    """An ACME issuer's registered account (`status.acme`)."""

    uri: str | None = None
    last_registered_email: str | None = None

    @classmethod
    def from_stored(cls, stored: object) -> AcmeAccountStatus | None:
        if not isinstance(stored, Mapping):
            return None
        return cls(uri=_str(stored.get("uri")),
                   last_registered_email=_str(stored.get("lastRegisteredEmail")))

    def to_dict(self) -> dict[str, Any]:
        return _without_unset({"uri": self.uri, "lastRegisteredEmail": self.last_registered_email})


@dataclass(kw_only=True)
class IssuerStatus:
    """An Issuer's or ClusterIssuer's status (crds/issuers.yaml, crds/clusterissuers.yaml:
    the same schema)."""

    conditions: list[Condition] = field(default_factory=list)
    acme: AcmeAccountStatus | None = None

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> IssuerStatus:
        stored = _stored(obj)
        return cls(conditions=conditions.read_conditions(stored.get("conditions")),
                   acme=AcmeAccountStatus.from_stored(stored.get("acme")))

    def to_dict(self) -> dict[str, Any]:
        return _without_unset({
            "conditions": ([c.to_dict() for c in self.conditions]
                           if self.conditions else None),
            "acme": self.acme.to_dict() if self.acme is not None else None,
        })


RenewalTimeSource = Literal["ARI", "Lifetime"]


def _formatted(value: datetime.datetime | None) -> str | None:
    return conditions.format_time(value) if value is not None else None


@dataclass(frozen=True, kw_only=True)
class RenewalWindowStatus:
    """The renewal window an ACME server suggested (`suggestedWindow`)."""

    start: datetime.datetime | None = None
    end: datetime.datetime | None = None

    @classmethod
    def from_stored(cls, stored: object) -> RenewalWindowStatus | None:
        if not isinstance(stored, Mapping):
            return None
        return cls(start=_time(stored.get("start")), end=_time(stored.get("end")))

    def to_dict(self) -> dict[str, Any]:
        return _without_unset({"start": _formatted(self.start), "end": _formatted(self.end)})


@dataclass(frozen=True, kw_only=True)
class AriStatus:
    """What the ACME server's renewal information (ARI) said last (`status.acme.ari`)."""

    cert_id: str | None = None
    last_checked: datetime.datetime | None = None
    next_check: datetime.datetime | None = None
    suggested_window: RenewalWindowStatus | None = None
    selected_time: datetime.datetime | None = None
    explanation_url: str | None = None

    @classmethod
    def from_stored(cls, stored: object) -> AriStatus | None:
        if not isinstance(stored, Mapping):
            return None
        return cls(
            cert_id=_str(stored.get("certID")),
            last_checked=_time(stored.get("lastChecked")),
            next_check=_time(stored.get("nextCheck")),
            suggested_window=RenewalWindowStatus.from_stored(stored.get("suggestedWindow")),
            selected_time=_time(stored.get("selectedTime")),
            explanation_url=_str(stored.get("explanationURL")),
        )

    def to_dict(self) -> dict[str, Any]:
        return _without_unset({
            "certID": self.cert_id,
            "lastChecked": _formatted(self.last_checked),
            "nextCheck": _formatted(self.next_check),
            "suggestedWindow": (self.suggested_window.to_dict()
                                if self.suggested_window is not None else None),
            "selectedTime": _formatted(self.selected_time),
            "explanationURL": self.explanation_url,
        })


@dataclass(frozen=True, kw_only=True)
class IssuedByStatus:
    """Which of a Certificate's issuers issued its certificate (`status.issuedBy`)."""

    name: str | None = None
    kind: str | None = None
    group: str | None = None

    @classmethod
    def from_stored(cls, stored: object) -> IssuedByStatus | None:
        if not isinstance(stored, Mapping):
            return None
        return cls(name=_str(stored.get("name")), kind=_str(stored.get("kind")),
                   group=_str(stored.get("group")))

    def to_dict(self) -> dict[str, Any]:
        return _without_unset({"name": self.name, "kind": self.kind, "group": self.group})


@dataclass(frozen=True, kw_only=True)
class PassedOverStatus:
    """An issuer that failed in the issuance in progress (`issuerFallback.passedOver[]`)."""

    name: str | None = None
    kind: str | None = None
    group: str | None = None
    reason: str | None = None
    message: str | None = None
    failed_attempts: int | None = None
    last_failure_time: datetime.datetime | None = None
    retry_after: datetime.datetime | None = None

    @classmethod
    def from_stored(cls, stored: object) -> PassedOverStatus | None:
        if not isinstance(stored, Mapping):
            return None
        return cls(
            name=_str(stored.get("name")),
            kind=_str(stored.get("kind")),
            group=_str(stored.get("group")),
            reason=_str(stored.get("reason")),
            message=_str(stored.get("message")),
            failed_attempts=_int(stored.get("failedAttempts")),
            last_failure_time=_time(stored.get("lastFailureTime")),
            retry_after=_time(stored.get("retryAfter")),
        )

    def to_dict(self) -> dict[str, Any]:
        return _without_unset({
            "name": self.name,
            "kind": self.kind,
            "group": self.group,
            "reason": self.reason,
            "message": self.message,
            "failedAttempts": self.failed_attempts,
            "lastFailureTime": _formatted(self.last_failure_time),
            "retryAfter": _formatted(self.retry_after),
        })


@dataclass(frozen=True, kw_only=True)
class IssuerFallbackStatus:
    """The issuers passed over in the issuance of `revision` (`status.issuerFallback`).
    `passedOver` is written even when empty: a new round of the same issuance."""

    revision: int | None = None
    generation: int | None = None
    passed_over: tuple[PassedOverStatus, ...] = ()

    @classmethod
    def from_stored(cls, stored: object) -> IssuerFallbackStatus | None:
        if not isinstance(stored, Mapping):
            return None
        passed_over = stored.get("passedOver")
        return cls(
            revision=_int(stored.get("revision")),
            generation=_int(stored.get("generation")),
            passed_over=tuple(
                entry for raw in (passed_over if isinstance(passed_over, list) else ())
                if (entry := PassedOverStatus.from_stored(raw)) is not None),
        )

    def to_dict(self) -> dict[str, Any]:
        return {**_without_unset({"revision": self.revision, "generation": self.generation}),
                "passedOver": [entry.to_dict() for entry in self.passed_over]}


@dataclass(kw_only=True)
class CertificateStatus:
    """A Certificate's status (crds/certificates.yaml); times are aware datetimes (stored
    as RFC 3339, whole seconds)."""

    conditions: list[Condition] = field(default_factory=list)
    not_before: datetime.datetime | None = None
    not_after: datetime.datetime | None = None
    renewal_time: datetime.datetime | None = None
    renewal_time_source: RenewalTimeSource | None = None
    ari: AriStatus | None = None
    """`status.acme.ari`, the one field of `status.acme`."""
    revision: int | None = None
    failed_issuance_attempts: int | None = None
    last_failure_time: datetime.datetime | None = None
    last_failure_generation: int | None = None
    last_failed_order: str | None = None
    retry_after: datetime.datetime | None = None
    next_private_key_secret_name: str | None = None
    issued_by: IssuedByStatus | None = None
    issuer_fallback: IssuerFallbackStatus | None = None

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> CertificateStatus:
        stored = _stored(obj)
        acme = stored.get("acme")
        source = stored.get("renewalTimeSource")
        return cls(
            conditions=conditions.read_conditions(stored.get("conditions")),
            not_before=_time(stored.get("notBefore")),
            not_after=_time(stored.get("notAfter")),
            renewal_time=_time(stored.get("renewalTime")),
            renewal_time_source="ARI" if source == "ARI" else (
                "Lifetime" if source == "Lifetime" else None),
            ari=AriStatus.from_stored(acme.get("ari")) if isinstance(acme, Mapping) else None,
            revision=_int(stored.get("revision")),
            failed_issuance_attempts=_int(stored.get("failedIssuanceAttempts")),
            last_failure_time=_time(stored.get("lastFailureTime")),
            last_failure_generation=_int(stored.get("lastFailureGeneration")),
            last_failed_order=_str(stored.get("lastFailedOrder")),
            retry_after=_time(stored.get("retryAfter")),
            next_private_key_secret_name=_str(stored.get("nextPrivateKeySecretName")),
            issued_by=IssuedByStatus.from_stored(stored.get("issuedBy")),
            issuer_fallback=IssuerFallbackStatus.from_stored(stored.get("issuerFallback")),
        )

    def set_condition(self, *, type: str, status: ConditionStatus, reason: str,
                      message: str, now: datetime.datetime, observed_generation: int) -> None:
        self.conditions = conditions.updated(
            self.conditions, type=type, status=status, reason=reason, message=message,
            now=now, observed_generation=observed_generation)

    def condition(self, type: str) -> Condition | None:
        return next((c for c in self.conditions if c.type == type), None)

    def remove_condition(self, *, type: str) -> None:
        self.conditions = [c for c in self.conditions if c.type != type]

    def to_dict(self) -> dict[str, Any]:
        return _without_unset({
            "conditions": ([c.to_dict() for c in self.conditions]
                           if self.conditions else None),
            "notBefore": _formatted(self.not_before),
            "notAfter": _formatted(self.not_after),
            "renewalTime": _formatted(self.renewal_time),
            "renewalTimeSource": self.renewal_time_source,
            "acme": {"ari": self.ari.to_dict()} if self.ari is not None else None,
            "revision": self.revision,
            "failedIssuanceAttempts": self.failed_issuance_attempts,
            "lastFailureTime": _formatted(self.last_failure_time),
            "lastFailureGeneration": self.last_failure_generation,
            "lastFailedOrder": self.last_failed_order,
            "retryAfter": _formatted(self.retry_after),
            "nextPrivateKeySecretName": self.next_private_key_secret_name,
            "issuedBy": self.issued_by.to_dict() if self.issued_by is not None else None,
            "issuerFallback": (self.issuer_fallback.to_dict()
                               if self.issuer_fallback is not None else None),
        })
