"""When to renew a certificate, computed exactly as cert-manager does."""

from __future__ import annotations

import datetime


def renewal_time(
    *,
    not_before: datetime.datetime,
    not_after: datetime.datetime,
    renew_before: datetime.timedelta | None,
    renew_before_percentage: int | None,
) -> datetime.datetime:
    """The moment to renew, from the issued certificate's actual lifetime.

    - `renew_before`, when positive and shorter than the lifetime, wins;
    - else `renew_before_percentage` in 1..99 renews that share of the
      lifetime before expiry (25 on a 60-minute cert renews at minute 45);
    - else renew when a third of the lifetime remains (2/3 through).
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
    else:
        before = lifetime / 3
    moment = not_after - before
    return moment - datetime.timedelta(microseconds=moment.microsecond)
