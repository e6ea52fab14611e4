"""What the Certificate reconciler writes to a Certificate's status and events.

Ready and up to date (requeued at the renewal time, or at the CA's next ARI check
when that comes first); not ready (why it cannot be issued); a failed issuance
(counted once per request, then backing off); standing down for the older
Certificate naming the same Secret.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Mapping, Sequence
from typing import Any

from certctl.api.resources import Certificate, IssuerRef
from certctl.api.status import CertificateStatus
from certctl.controllers import (
    certificate_keys,
    certificate_settings,
    issuer_fallback,
    kept_certificates,
    policies,
    reconciling,
    secret_claims,
)
from certctl.controllers.certificate_settings import Settings
from certctl.controllers.reconciling import Result
from certctl.pki import keys
from certctl.store.interface import Object, Store

# The Certificate that stood down for an older one looks again this often, so it
# takes over once the older one is deleted (no event tells it).
DUPLICATE_RECHECK_SECONDS = 600.0


def failed(
    store: Store,
    obj: Object,
    *,
    message: str,
    request: str,
    failures: int,
    now: datetime.datetime,
    settings: Settings,
    keep_ready: bool,
    retry_after: datetime.datetime | None,
    attempt: issuer_fallback.Attempt | None = None,
) -> Result:
    """Count one failure per request (reconciling a failed Order again adds none) and back off.

    `retry_after` is the CA's Retry-After (a rateLimited order): the next
    attempt waits for it when it is later than the backoff. `attempt`: what the
    issuers of a Certificate with fallbacks did in this issuance, for its status.
    """
    status = CertificateStatus.from_object(obj)
    generation = obj["metadata"].get("generation", 0)
    if attempt is not None:
        status.issuer_fallback = issuer_fallback.to_status(attempt)
    text = f"The certificate request has failed to complete and will be retried: {message}"
    if status.last_failed_order != request:
        failures += 1
        status.failed_issuance_attempts = failures
        status.last_failure_time = now
        status.last_failure_generation = obj["metadata"].get("generation")
        status.last_failed_order = request
        status.retry_after = retry_after
        store.emit_event(obj=obj, type="Warning", reason="Failed", message=text)
    status.set_condition(type="Issuing", status="False", reason="Failed", message=text,
                         now=now, observed_generation=generation)
    if not keep_ready:
        status.set_condition(type="Ready", status="False", reason="Failed", message=text,
                             now=now, observed_generation=generation)
    reconciling.write_status(store, obj=obj, status=status)
    retry_at = certificate_settings.retry_time(
        last_failure=status.last_failure_time or now, retry_after=status.retry_after,
        failures=status.failed_issuance_attempts or 1, settings=settings)
    return Result.after((retry_at - now).total_seconds())


def duplicate(store: Store, obj: Object, *, holder: Mapping[str, Any],
              now: datetime.datetime) -> Result:
    """Mark `obj` as standing down for `holder`, the older Certificate naming its Secret."""
    message = secret_claims.duplicate_message(secret_name=obj["spec"]["secretName"],
                                              holder=holder)
    status = CertificateStatus.from_object(obj)
    for type in ("Ready", "Issuing"):
        status.set_condition(type=type, status="False",
                             reason=secret_claims.DUPLICATE_SECRET_NAME, message=message,
                             now=now, observed_generation=obj["metadata"].get("generation", 0))
    if reconciling.write_status(store, obj=obj, status=status):
        store.emit_event(obj=obj, type="Warning", reason=secret_claims.DUPLICATE_SECRET_NAME,
                         message=message)
    return Result.after(DUPLICATE_RECHECK_SECONDS)


def up_to_date(
    store: Store,
    obj: Object,
    *,
    certificate: Certificate,
    data: policies.Input,
    now: datetime.datetime,
) -> Result:
    assert data.info is not None and data.secret is not None and data.contents is not None
    wanted_encoding = keys.effective_encoding(data.contents.key,
                                              encoding=certificate.private_key.encoding)
    if secret_claims.writer_of(data.secret) == certificate.name and (
        keys.encoding_of(data.contents.key_pem) != wanted_encoding
    ):
        # Only spec.privateKey.encoding changed: same key, same certificate, no issuance.
        certificate_keys.reencode_key(store, secret=dict(data.secret), key=data.contents.key,
                                      encoding=wanted_encoding)
    renewal_time, source = policies.renewal_schedule(data)
    message = "Certificate is up to date and has not expired"
    restored_from = ((data.secret.get("metadata") or {}).get("annotations") or {}).get(
        kept_certificates.RESTORED_FROM_ANNOTATION)
    if restored_from:
        message += (f"; restored from the copy certctl keeps in Secret {restored_from}, "
                    "without a new order")
    status = CertificateStatus.from_object(obj)
    issued_by = issuer_fallback.issued_by(status, certificate=certificate)
    if issued_by is not None and issued_by != certificate.issuer_ref:
        # The issuance that made this certificate, whose revision the status now counts.
        attempt = issuer_fallback.read(
            dataclasses.replace(status, revision=(status.revision or 1) - 1),
            certificate=certificate)
        message += issued_by_note(
            attempt.passed_over(certificate, before=certificate.issuer_refs.index(issued_by))
            or [], ref=issued_by) or f"; issued by {issued_by.kind} {issued_by.name}"
    status.set_condition(type="Ready", status="True", reason="Ready", message=message,
                         now=now, observed_generation=obj["metadata"].get("generation", 0))
    status.remove_condition(type="Issuing")
    status.not_before = data.info.not_before
    status.not_after = data.info.not_after
    status.renewal_time = renewal_time
    status.renewal_time_source = source
    status.next_private_key_secret_name = None
    reconciling.write_status(store, obj=obj, status=status)
    wake = renewal_time
    check = status.ari.next_check if status.ari is not None else None
    if check is not None and data.acme and now < check < wake:
        wake = check  # the CA may move the window: ask again when it said to
    return Result.after((wake - now).total_seconds())


def not_ready(
    store: Store,
    obj: Object,
    *,
    reason: str,
    message: str,
    now: datetime.datetime,
    keep_ready: bool = False,
    field: str | None = None,
) -> Result:
    """Record why the Certificate cannot be issued; `field` prefixes the event, not the condition.

    The condition keeps cert-manager's wording (`Issuer x not found`), which
    users search for; the event and log line also say which field to fix.
    """
    status = CertificateStatus.from_object(obj)
    generation = obj["metadata"].get("generation", 0)
    if not keep_ready:
        status.set_condition(type="Ready", status="False", reason=reason, message=message,
                             now=now, observed_generation=generation)
    status.set_condition(type="Issuing", status="False", reason=reason, message=message,
                         now=now, observed_generation=generation)
    if reconciling.write_status(store, obj=obj, status=status):
        store.emit_event(obj=obj, type="Warning", reason=reason,
                         message=f"{field}: {message}" if field else message)
    return Result.done()


def issued_by_note(
    passed_over: Sequence[issuer_fallback.Failure], *, ref: IssuerRef
) -> str:
    """`; issued by ClusterIssuer b, passed over: ...` for a fallback's certificate."""
    if not passed_over:
        return ""
    return (f"; issued by {ref.kind} {ref.name}, passed over: "
            + "; ".join(failure.describe() for failure in passed_over))
