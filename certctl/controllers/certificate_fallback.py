"""Passing over a Certificate's issuer for the next of its `spec.fallbackIssuerRefs`.

`Fallback` is the issuer this pass tries; `fall_back` records why it failed and
tries the next one, backs off, or starts a new round from the first choice. The
record of what was tried (`status.issuerFallback`) is `issuer_fallback`'s.
"""

from __future__ import annotations

import dataclasses
import datetime
from dataclasses import dataclass

from certctl.api.resources import Certificate, IssuerRef
from certctl.api.status import CertificateStatus
from certctl.controllers import certificate_status, issuer_fallback, reconciling
from certctl.controllers.certificate_settings import Settings
from certctl.controllers.reconciling import Result
from certctl.store.interface import Object, Store


@dataclass(frozen=True, kw_only=True)
class Fallback:
    """The issuer this pass tries: `certificate.issuer_refs[position]`."""

    certificate: Certificate
    attempt: issuer_fallback.Attempt
    position: int

    @property
    def ref(self) -> IssuerRef:
        return self.certificate.issuer_refs[self.position]

    @property
    def tried(self) -> Certificate:
        """The Certificate as this issuer issues it: its Order, kept copy and Secret name
        this issuer."""
        return dataclasses.replace(self.certificate, issuer_ref=self.ref)

    @property
    def has_next(self) -> bool:
        return self.position + 1 < len(self.certificate.issuer_refs)

    @property
    def field(self) -> str:
        return ("spec.issuerRef" if self.position == 0
                else f"spec.fallbackIssuerRefs[{self.position - 1}]")


def fall_back(
    store: Store,
    obj: Object,
    *,
    fallback: Fallback,
    now: datetime.datetime,
    request: str | None,
    reason: str,
    message: str,
    retry_after: datetime.datetime | None = None,
    failures: int = 0,
    settings: Settings | None = None,
    keep_ready: bool = True,
) -> Result:
    """The tried issuer failed for `reason`, which another issuer could fix.

    A failed order (`request`) counts one attempt; once the issuer has failed
    `fallbackAfterFailedAttempts` times the next issuer is tried at once, and the last
    one's failure backs off as usual before a new round from the first choice. An
    issuer that cannot start (not ready, unreachable, refusing) or that said when to
    come back (a rate limit's Retry-After) is passed over at once.
    """
    certificate = fallback.certificate
    attempt = fallback.attempt.failed(ref=fallback.ref, reason=reason, message=message,
                                      now=now, retry_after=retry_after)
    threshold = certificate.fallback_after_failed_attempts
    if request is None or (retry_after is not None and retry_after > now):
        # Passed over at once: no order was placed, so there is no attempt to repeat; or
        # the CA said when to come back (Retry-After), which no attempt before then helps.
        attempt = dataclasses.replace(attempt, failures=tuple(
            dataclasses.replace(f, failed_attempts=max(f.failed_attempts, threshold))
            if f.ref == fallback.ref else f for f in attempt.failures))
    failure = attempt.failure_of(fallback.ref)
    assert failure is not None
    if request is not None and (failure.failed_attempts < threshold or not fallback.has_next):
        assert settings is not None
        # Another attempt with this issuer after the backoff, or, after the last one, a new
        # round from the first choice.
        return certificate_status.failed(
            store, obj, message=message, request=request, failures=failures, now=now,
            settings=settings, keep_ready=keep_ready, retry_after=retry_after,
            attempt=attempt if failure.failed_attempts < threshold else attempt.new_round())
    if not fallback.has_next:
        # The last issuer cannot start either: start over from the first choice when an
        # issuer's verdict next wakes this Certificate (no busy loop meanwhile).
        status = CertificateStatus.from_object(obj)
        for type in ("Issuing",) if keep_ready else ("Issuing", "Ready"):
            status.set_condition(type=type, status="False", reason=failure.reason,
                                 message=failure.describe(), now=now,
                                 observed_generation=obj["metadata"].get("generation", 0))
        status.issuer_fallback = issuer_fallback.to_status(attempt.new_round())
        if reconciling.write_status(store, obj=obj, status=status):
            store.emit_event(obj=obj, type="Warning", reason=failure.reason,
                             message=f"{fallback.field}: {failure.describe()}")
        return Result.done()
    following = certificate.issuer_refs[fallback.position + 1]
    text = (f"Passing over {fallback.ref.kind} {fallback.ref.name} ({failure.reason}: "
            f"{failure.message}); trying {following.kind} {following.name} next")
    status = CertificateStatus.from_object(obj)
    status.set_condition(type="Issuing", status="True", reason=issuer_fallback.FALLING_BACK,
                         message=text, now=now,
                         observed_generation=obj["metadata"].get("generation", 0))
    status.issuer_fallback = issuer_fallback.to_status(attempt)
    reconciling.write_status(store, obj=obj, status=status)
    store.emit_event(obj=obj, type="Warning", reason=issuer_fallback.FALLING_BACK, message=text)
    return Result.after(0)
