"""When to renew a certificate: cert-manager's lifetime rule, or the CA's ARI window."""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Literal

# Where a renewal time came from (`status.renewalTimeSource`).
RenewalTimeSource = Literal["ARI", "Lifetime"]
ARI: RenewalTimeSource = "ARI"
LIFETIME: RenewalTimeSource = "Lifetime"

# The CA/Browser Forum's short-lived certificates (at most 7 days since March 2026;
# Let's Encrypt's `shortlived` profile issues 160 hours).
SHORT_LIVED = datetime.timedelta(days=7)
# A renewal picked from an ARI window leaves at least this share of the lifetime, so
# a window reaching up to notAfter cannot let the certificate expire while its
# renewal is still under way.
ARI_MINIMUM_REMAINING = 0.25


@dataclass(frozen=True, kw_only=True)
class RenewalWindow:
    """The ARI window a CA suggested for one certificate, and the moment picked in it.

    `cert_id` names the certificate the window belongs to; a window applies to
    that certificate only, never to the one that replaces it (cert-manager
    #8993). `selected` stays put while the CA keeps the window where it was,
    so that checking again does not drift the renewal towards the start.
    """

    cert_id: str
    start: datetime.datetime
    end: datetime.datetime
    selected: datetime.datetime


def renewal_time(
    *,
    not_before: datetime.datetime,
    not_after: datetime.datetime,
    renew_before: datetime.timedelta | None,
    renew_before_percentage: int | None,
    short_lived_at_half: bool = False,
) -> datetime.datetime:
    """The moment to renew, from the issued certificate's actual lifetime.

    - `renew_before`, when positive and shorter than the lifetime, wins;
    - else `renew_before_percentage` in 1..99 renews that share of the
      lifetime before expiry (25 on a 60-minute cert renews at minute 45);
    - else, with `short_lived_at_half` (ACME issuers), a certificate living
      `SHORT_LIVED` or less renews half way through: a third of 6 days
      leaves 2 days, too little to notice and fix a failing renewal, and
      Let's Encrypt asks short-lived certificates to renew at half;
    - else renew when a third of the lifetime remains (2/3 through),
      cert-manager's default.
    A `renew_before` at least as long as the lifetime (the CA issued a
    shorter cert than asked) falls back to the default instead of renewing in
    a loop. The result is truncated to whole seconds because it is stored in
    status with second precision and compared against again later; a
    sub-second value would requeue before it is due.
    """
    lifetime = not_after - not_before
    if renew_before is not None and datetime.timedelta(0) < renew_before < lifetime:
        before = renew_before
    elif renew_before_percentage is not None and 0 < renew_before_percentage < 100:
        before = lifetime * renew_before_percentage / 100
    elif short_lived_at_half and lifetime <= SHORT_LIVED:
        before = lifetime / 2
    else:
        before = lifetime / 3
    return _whole_seconds(not_after - before)


def pick_in_window(
    *,
    start: datetime.datetime,
    end: datetime.datetime,
    not_before: datetime.datetime,
    not_after: datetime.datetime,
    fraction: float,
) -> datetime.datetime:
    """A moment uniformly inside an ARI window, `fraction` (0..1) of the way in.

    RFC 9773 section 4.2: pick uniformly at random inside the suggested
    window (the caller draws `fraction`), which spreads renewals over the
    window instead of every client renewing at its start. The window's end
    is first pulled back so that `ARI_MINIMUM_REMAINING` of the lifetime
    remains; a window lying entirely after that point gives that point.
    A window in the past gives a moment in the past: renew now.
    """
    latest = not_after - (not_after - not_before) * ARI_MINIMUM_REMAINING
    end = min(end, latest)
    if end <= start:
        return _whole_seconds(end)
    return _whole_seconds(start + (end - start) * min(max(fraction, 0.0), 1.0))


def _whole_seconds(moment: datetime.datetime) -> datetime.datetime:
    return moment - datetime.timedelta(microseconds=moment.microsecond)
