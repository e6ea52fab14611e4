"""ACME Renewal Information (RFC 9773) for the Certificate reconciler: when to ask, what to keep.

The CA's window for the certificate in the Secret is kept in the Certificate's
`status.acme.ari`, as cert-manager keeps it (`certID`, `lastChecked`,
`nextCheck`, `suggestedWindow`), with the moment picked in it (`selectedTime`)
and the CA's `explanationURL`. It is asked for:
- right after each issuance (the new certificate's CertID is not the one in
  status), and
- again at `nextCheck`: the CA's Retry-After, held between one minute and a
  day as RFC 9773 section 4.3 suggests (Pebble and Let's Encrypt say 6 hours).
The Certificate is requeued at `nextCheck`, so a CA that moves the window
(for a revocation, or to spread load) moves the renewal at the next check.

Nothing is asked when the issuer is not ACME, the CA offers no `renewalInfo`
(Debian's Pebble 2.4), the certificate is expired (RFC 9773 forbids it) or
came from another issuer: its renewal time then comes from its lifetime.
A failed check keeps what was known and tries again in an hour (or at the
CA's Retry-After).
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Callable, Mapping
from typing import Any

from cryptography import x509

from certctl.api import annotations as annotation_keys
from certctl.api import conditions
from certctl.api.resources import Issuer, IssuerSpec
from certctl.issuers.acme import accounts as acme_accounts
from certctl.issuers.acme import ari
from certctl.issuers.acme import errors as acme_errors
from certctl.pki import renewal
from certctl.store.interface import Object, Store

logger = logging.getLogger(__name__)

DEFAULT_RECHECK = datetime.timedelta(hours=6)  # no Retry-After: the RFC's example
MINIMUM_RECHECK = datetime.timedelta(minutes=1)
MAXIMUM_RECHECK = datetime.timedelta(days=1)
FAILED_RECHECK = datetime.timedelta(hours=1)
WINDOW_MOVED = "RenewalWindowMoved"  # the Event when the CA moves a certificate's window


def stored_window(status: Mapping[str, Any]) -> renewal.RenewalWindow | None:
    """The window in `status.acme.ari`, or None when there is none (or it does not parse)."""
    record = (status.get("acme") or {}).get("ari") or {}
    window = record.get("suggestedWindow") or {}
    try:
        return renewal.RenewalWindow(
            cert_id=str(record["certID"]),
            start=conditions.parse_time(window["start"]),
            end=conditions.parse_time(window["end"]),
            selected=conditions.parse_time(record["selectedTime"]),
        )
    except (KeyError, TypeError, ValueError):
        return None


def next_check(status: Mapping[str, Any]) -> datetime.datetime | None:
    value = ((status.get("acme") or {}).get("ari") or {}).get("nextCheck")
    try:
        return conditions.parse_time(value) if value else None
    except ValueError:
        return None


def refresh(
    store: Store,
    obj: Object,
    *,
    issuer: Issuer[IssuerSpec],
    secret: Mapping[str, Any] | None,
    leaf: x509.Certificate | None,
    accounts: acme_accounts.AcmeAccounts | None,
    now: datetime.datetime,
    draw: Callable[[], float],
) -> renewal.RenewalWindow | None:
    """The current certificate's window, asked of the CA when due; None: its lifetime rules.

    Updates `obj`'s status in memory only: the caller writes the status it
    writes anyway, so a check costs no write of its own.
    """
    status = obj.setdefault("status", {})
    known = stored_window(status)
    acme = acme_accounts.acme_issuer(issuer)
    if accounts is None or acme is None or leaf is None or secret is None:
        return known
    if leaf.not_valid_after_utc <= now or not issued_by(secret=secret, issuer=issuer):
        return known
    current_id = ari.cert_id(leaf)
    if current_id is None:
        return known
    due = next_check(status)
    same = ((status.get("acme") or {}).get("ari") or {}).get("certID") == current_id
    if same and due is not None and now < due:
        return known
    try:
        client = accounts.client(store=store, issuer=acme)
        if not client.offers_renewal_info():
            (status.get("acme") or {}).pop("ari", None)
            if not status.get("acme"):
                status.pop("acme", None)
            return None
        info = client.renewal_info(certificate=leaf)
    except (acme_errors.AcmeError, LookupError) as err:
        logger.warning("%s/%s: cannot fetch ACME renewal information: %s",
                       obj["metadata"].get("namespace"), obj["metadata"]["name"], err)
        record = status.setdefault("acme", {}).setdefault("ari", {})
        if not same:
            record.clear()
            record["certID"] = current_id
        record["nextCheck"] = conditions.format_time(now + _failed_recheck(err))
        return known if same else None
    not_before = leaf.not_valid_before_utc
    not_after = leaf.not_valid_after_utc
    start, end = _whole(info.window_start), _whole(info.window_end)
    if same and known is not None and (known.start, known.end) == (start, end):
        selected = known.selected  # the CA kept the window: keep the moment picked in it
    else:
        selected = renewal.pick_in_window(start=start, end=end, not_before=not_before,
                                          not_after=not_after, fraction=draw())
        if same and known is not None:
            store.emit_event(obj=obj, type="Normal", reason=WINDOW_MOVED, message=(
                f"The ACME server moved the renewal window to {conditions.format_time(start)}"
                f" - {conditions.format_time(end)}; renewing at "
                f"{conditions.format_time(selected)}"
                + (f" (see {info.explanation_url})" if info.explanation_url else "")))
    recheck = min(max(info.retry_after or DEFAULT_RECHECK, MINIMUM_RECHECK), MAXIMUM_RECHECK)
    record = {
        "certID": current_id,
        "lastChecked": conditions.format_time(now),
        "nextCheck": conditions.format_time(now + recheck),
        "suggestedWindow": {"start": conditions.format_time(start),
                            "end": conditions.format_time(end)},
        "selectedTime": conditions.format_time(selected),
    }
    if info.explanation_url:
        record["explanationURL"] = info.explanation_url
    status.setdefault("acme", {})["ari"] = record
    return renewal.RenewalWindow(cert_id=current_id, start=start, end=end, selected=selected)


def _failed_recheck(err: Exception) -> datetime.timedelta:
    """An hour after a failed check, or the Retry-After the CA sent with its problem."""
    retry_after = err.retry_after if isinstance(err, acme_errors.AcmeProblem) else None
    if retry_after is None:
        return FAILED_RECHECK
    # The client places Retry-After on the wall clock; keep only the wait it asks for.
    wait = retry_after - datetime.datetime.now(datetime.UTC)
    return min(max(wait, MINIMUM_RECHECK), MAXIMUM_RECHECK)


def issued_by(*, secret: Mapping[str, Any], issuer: Issuer[IssuerSpec]) -> bool:
    """Whether certctl wrote the Secret from this issuer: only its CA knows the certificate."""
    annotations = (secret.get("metadata") or {}).get("annotations") or {}
    return (annotations.get(annotation_keys.SECRET_ISSUER_NAME) == issuer.name
            and (annotations.get(annotation_keys.SECRET_ISSUER_KIND) or "Issuer") == issuer.kind)


def _whole(moment: datetime.datetime) -> datetime.datetime:
    """Status times have second precision: compare what will be read back."""
    return moment - datetime.timedelta(microseconds=moment.microsecond)
