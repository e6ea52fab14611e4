"""Orders per exact set of names per ACME server, counted so certctl stops before the CA does.

Let's Encrypt issues at most 5 certificates for one exact set of names per 7
days (its duplicate-certificate limit); past it, those names get nothing for
days, renewals included. Whatever goes wrong (a Secret deleted in a loop, a
spec flapping between two values), certctl refuses to place the order that
would exceed a budget, by default the same 5 per 7 days, and says so in the
Certificate's condition instead.

Orders are not a usable count: they are pruned by revisionHistoryLimit and
deleted with their Certificate. Each order placed is recorded, before it is
placed, in a ledger Secret of the cluster resource namespace keyed by the
ACME server and the name set (two issuers of one CA share its limit). The
record is keyed by the Order, so recording the same Order twice counts once.
An order that fails is taken off again: the CA's limit counts certificates
issued, and failures are already spaced out by the failure backoff, so after
fixing what failed the user is not locked out for a week.

A renewal naming the certificate it renews in ARI's `replaces` (RFC 9773),
placed once that certificate's suggested window has opened, is exempt from
all of Let's Encrypt's limits, so it is not counted (`ari_renewal`): ARI and
short-lived certificates (6 days, renewed every 3) would otherwise spend the
budget on renewals the CA does not count. When the CA refuses `replaces` and
the order goes again without it, the certificate it yields is counted then.
"""

from __future__ import annotations

import datetime
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from certctl.api import conditions
from certctl.pki import renewal
from certctl.store.interface import AlreadyExists, Object, Store

LEDGER_LABEL = "certctl.io/order-ledger"
PLACED_ANNOTATION = "certctl.io/orders-placed"  # JSON: {"<namespace>/<order>": "<time>"}
NAMES_ANNOTATION = "certctl.io/order-names"
SERVER_ANNOTATION = "certctl.io/acme-server"


@dataclass(frozen=True, kw_only=True)
class Budget:
    orders: int
    window: datetime.timedelta

    def describe(self) -> str:
        hours = int(self.window.total_seconds() // 3600)
        return f"{self.orders} orders per {hours}h" if hours else (
            f"{self.orders} orders per {int(self.window.total_seconds())}s")


# Let's Encrypt's duplicate-certificate limit.
DUPLICATE_CERTIFICATE_LIMIT = Budget(orders=5, window=datetime.timedelta(days=7))


def name_set(*, dns_names: Iterable[str], ip_addresses: Iterable[str],
             common_name: str | None) -> tuple[str, ...]:
    """The exact set of names a CA counts: SANs and the common name, case-insensitive."""
    names = {name.lower() for name in dns_names} | set(ip_addresses)
    if common_name:
        names.add(common_name.lower())
    return tuple(sorted(names))


def next_allowed(
    *, placed: Sequence[datetime.datetime], now: datetime.datetime, budget: Budget
) -> datetime.datetime | None:
    """When one more order fits in the budget, or None when it fits now."""
    recent = sorted(time for time in placed if time > now - budget.window)
    if len(recent) < budget.orders:
        return None
    # The order that must leave the window before another one may enter it.
    return recent[len(recent) - budget.orders] + budget.window


def ari_renewal(*, replaces: str | None, window: renewal.RenewalWindow | None,
                now: datetime.datetime) -> bool:
    """Whether an order with this `replaces` is one the CA exempts from its limits.

    The window must be the CA's own answer for the replaced certificate (it
    offers ARI and knows it) and must have opened: Let's Encrypt exempts a
    replacement inside the suggested window, not one ordered before it opens
    (`certctl renew`).
    """
    return (replaces is not None and window is not None and window.cert_id == replaces
            and now >= window.start)


@dataclass(frozen=True, kw_only=True)
class LedgerRef:
    namespace: str
    name: str
    server: str
    names: tuple[str, ...]


def ledger_ref(*, server: str, names: Sequence[str], cluster_resource_namespace: str) -> LedgerRef:
    identity = json.dumps([server, list(names)])
    digest = hashlib.sha256(identity.encode()).hexdigest()[:20]
    return LedgerRef(namespace=cluster_resource_namespace, name=f"certctl-orders-{digest}",
                     server=server, names=tuple(names))


def read_ledger(*, store: Store, ref: LedgerRef) -> Object | None:
    return store.get(kind="Secret", namespace=ref.namespace, name=ref.name)


def placed_orders(*, ledger: Mapping[str, Any] | None) -> list[datetime.datetime]:
    return list(_entries(ledger).values())


def record_order(
    *, store: Store, ref: LedgerRef, ledger: Object | None, order: str,
    now: datetime.datetime, budget: Budget
) -> None:
    """Count `order` (`namespace/name`) as placed at `now`; entries older than the window go.

    `ledger` is the ledger as the caller read it (`read_ledger`: the budget was
    judged on it), None when there was none. Raises the store's Conflict when
    another writer got in between: the reconciler runs again and counts afresh.
    """
    entries = {key: time for key, time in _entries(ledger).items()
               if time > now - budget.window}
    entries.setdefault(order, now)
    annotations = {
        PLACED_ANNOTATION: json.dumps({key: conditions.format_time(time)
                                       for key, time in sorted(entries.items())}),
        NAMES_ANNOTATION: ",".join(ref.names),
        SERVER_ANNOTATION: ref.server,
    }
    if ledger is None:
        try:
            store.create(obj={
                "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                "metadata": {"name": ref.name, "namespace": ref.namespace,
                             "labels": {LEDGER_LABEL: "true"}, "annotations": annotations},
            })
            return
        except AlreadyExists:
            ledger = read_ledger(store=store, ref=ref)
            if ledger is None:
                raise
            return record_order(store=store, ref=ref, ledger=ledger, order=order, now=now,
                                budget=budget)
    ledger["metadata"].setdefault("annotations", {}).update(annotations)
    store.replace(obj=ledger)


def refund_order(*, store: Store, ref: LedgerRef, order: str) -> None:
    """Take a failed order off the ledger (no-op when it was never counted)."""
    ledger = read_ledger(store=store, ref=ref)
    entries = _entries(ledger)
    if ledger is None or order not in entries:
        return
    del entries[order]
    ledger["metadata"]["annotations"][PLACED_ANNOTATION] = json.dumps(
        {key: conditions.format_time(time) for key, time in sorted(entries.items())})
    store.replace(obj=ledger)


def _entries(ledger: Mapping[str, Any] | None) -> dict[str, datetime.datetime]:
    """The recorded orders; an unreadable ledger counts as empty rather than blocking forever."""
    if ledger is None:
        return {}
    text = ((ledger.get("metadata") or {}).get("annotations") or {}).get(PLACED_ANNOTATION)
    try:
        raw = json.loads(text) if text else {}
        return {str(key): conditions.parse_time(str(value)) for key, value in raw.items()}
    except (ValueError, AttributeError):
        return {}
