"""Which issuer of a Certificate's list to try now, and which failures move on to the next.

A Certificate names its first choice in `spec.issuerRef` and may name more in
`spec.fallbackIssuerRefs`. Every issuance (a new revision) starts with the
first choice; when an issuer fails `spec.fallbackAfterFailedAttempts` times
(default 1) for a reason another issuer could fix, the next one is tried at
once, without the failure backoff. When the last one fails too, the usual
backoff applies and the next round starts with the first choice again, which
may have recovered. What failed, per issuer, is kept in
`status.issuerFallback` (for the issuance in progress, and once issued for the
certificate in the Secret), and `status.issuedBy` says which issuer issued.

Pure: the state is read from and written to the typed status
(`api.status.CertificateStatus`) by the certificate reconciler.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Final

from certctl.api.resources import Certificate, IssuerRef
from certctl.api.status import (
    CertificateStatus,
    IssuedByStatus,
    IssuerFallbackStatus,
    PassedOverStatus,
)

# Reasons an issuer is passed over for (the `reason` of a status.issuerFallback entry).
CA_UNREACHABLE: Final = "CAUnreachable"
RATE_LIMITED: Final = "RateLimited"
REFUSED: Final = "Refused"
ISSUER_NOT_READY: Final = "IssuerNotReady"
# Of the Issuing condition and the Event, when the next issuer is tried.
FALLING_BACK: Final = "FallingBack"

# ACME problem types (RFC 8555 section 6.7, and the CAs' additions) an order can fail with,
# and whether another CA could do better. Yes when the problem is this CA's, or its
# policy's: it is down or overloaded, it limits us, its policy (or a CAA record naming
# other CAs) forbids the name, it wants an account binding or a human first. No when the
# problem is in our request (a malformed CSR or identifier, a key no CA takes): every CA
# would refuse it, and another attempt elsewhere only spends that CA's limits.
# Validation failures (connection, dns, tls, incorrectResponse, and a failed challenge)
# do not move on either: they say the names do not reach this data plane (DNS, routing,
# a firewall), which every CA's validation would find the same way.
_FALLS_BACK: Final[Mapping[str, str]] = {
    "rateLimited": RATE_LIMITED,
    "serverInternal": CA_UNREACHABLE,
    "rejectedIdentifier": REFUSED,
    "unauthorized": REFUSED,
    "caa": REFUSED,
    "unsupportedIdentifier": REFUSED,
    "externalAccountRequired": REFUSED,
    "userActionRequired": REFUSED,
    "unsupportedContact": REFUSED,
    "invalidContact": REFUSED,
}
_ACME_PROBLEM = re.compile(r"urn:ietf:params:acme:error:([A-Za-z]+)")


def order_failure_reason(message: str) -> str | None:
    """The fallback reason for an Order that failed with `message` (its `status.reason`,
    which starts with the ACME problem type when the CA sent one), or None: not a reason
    to try another issuer."""
    found = _ACME_PROBLEM.match(message.strip())
    if found is None:
        return None
    return _FALLS_BACK.get(found.group(1))


@dataclass(frozen=True, kw_only=True)
class Failure:
    """Why one issuer failed in this issuance; `failed_attempts` counts this round only."""

    ref: IssuerRef
    reason: str
    message: str
    failed_attempts: int
    last_failure_time: datetime.datetime
    retry_after: datetime.datetime | None = None

    def describe(self) -> str:
        return f"{self.ref.kind} {self.ref.name}: {self.reason}: {self.message}"


@dataclass(frozen=True, kw_only=True)
class Attempt:
    """The issuers that failed in the issuance of `revision` (started at `generation`)."""

    revision: int
    generation: int
    failures: tuple[Failure, ...] = ()

    def failure_of(self, ref: IssuerRef) -> Failure | None:
        return next((f for f in self.failures if _same(f.ref, ref)), None)

    def current_index(self, certificate: Certificate) -> int:
        """The issuer to try now: the first not yet failed `fallbackAfterFailedAttempts`
        times in this round."""
        for index, ref in enumerate(certificate.issuer_refs):
            failure = self.failure_of(ref)
            if failure is None or failure.failed_attempts < (
                    certificate.fallback_after_failed_attempts):
                return index
        return 0

    def failed(self, *, ref: IssuerRef, reason: str, message: str, now: datetime.datetime,
               retry_after: datetime.datetime | None) -> Attempt:
        previous = self.failure_of(ref)
        failure = Failure(ref=ref, reason=reason, message=message, retry_after=retry_after,
                          failed_attempts=(previous.failed_attempts if previous else 0) + 1,
                          last_failure_time=now)
        kept = tuple(f for f in self.failures if not _same(f.ref, ref))
        return replace(self, failures=(*kept, failure))

    def new_round(self) -> Attempt:
        """Every issuer failed (or failed for a reason no other issuer fixes): the next
        attempt, after the backoff, starts with the first choice; the reasons stay."""
        return replace(self, failures=tuple(replace(f, failed_attempts=0)
                                            for f in self.failures))

    def passed_over(self, certificate: Certificate, *, before: int) -> Sequence[Failure]:
        """Why each issuer ahead of `certificate.issuer_refs[before]` was not the one."""
        return [failure for ref in certificate.issuer_refs[:before]
                if (failure := self.failure_of(ref)) is not None]


def read(status: CertificateStatus, *, certificate: Certificate) -> Attempt:
    """The state of the issuance in progress (revision + 1); a fresh one when the status
    describes an earlier issuance or an older spec: renewals start with the first choice."""
    revision = (status.revision or 0) + 1
    fresh = Attempt(revision=revision, generation=certificate.generation)
    stored = status.issuer_fallback
    if stored is None or stored.revision != revision or (
            stored.generation != certificate.generation):
        return fresh
    failures = []
    for entry in stored.passed_over:
        ref = next((r for r in certificate.issuer_refs if r.name == entry.name
                    and r.kind == (entry.kind or "Issuer")), None)
        if ref is None or entry.reason is None or entry.last_failure_time is None:
            continue  # an issuer no longer listed, or an entry someone mangled
        failures.append(Failure(
            ref=ref, reason=entry.reason, message=entry.message or "",
            failed_attempts=entry.failed_attempts or 0,
            last_failure_time=entry.last_failure_time, retry_after=entry.retry_after))
    return replace(fresh, failures=tuple(failures))


def to_status(attempt: Attempt) -> IssuerFallbackStatus:
    return IssuerFallbackStatus(
        revision=attempt.revision, generation=attempt.generation,
        passed_over=tuple(PassedOverStatus(
            name=f.ref.name, kind=f.ref.kind, group=f.ref.group, reason=f.reason,
            message=f.message, failed_attempts=f.failed_attempts,
            last_failure_time=f.last_failure_time, retry_after=f.retry_after)
            for f in attempt.failures))


def ref_status(ref: IssuerRef) -> IssuedByStatus:
    return IssuedByStatus(name=ref.name, kind=ref.kind, group=ref.group)


def issued_by(status: CertificateStatus, *, certificate: Certificate) -> IssuerRef | None:
    """`status.issuedBy` when it is still one of the Certificate's issuers."""
    stored = status.issued_by
    if stored is None:
        return None
    return next((r for r in certificate.issuer_refs if r.name == stored.name
                 and r.kind == (stored.kind or "Issuer")), None)


def _same(a: IssuerRef, b: IssuerRef) -> bool:
    return a.name == b.name and a.kind == b.kind
