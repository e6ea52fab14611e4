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

The ledger also holds the private key each Certificate's pending order was made
with (`NextKey`), written with the order's record in one write before the order
is placed, so a restart makes the same CSR and finds the same Order. cert-manager
keeps it in a "next private key" Secret of the Certificate's namespace, created
before and deleted after each issuance: two writes a certificate more (bench B8).
A key is dropped a week after its order was placed (`NEXT_KEY_KEPT`), by the
ledger's timer (`reconcile`) or the next write; until then, once issued, it is the
certificate's key, which the kept copy of the same namespace holds too
(`kept_certificates`). A ledger with nothing left in it is deleted.

A renewal naming the certificate it renews in ARI's `replaces` (RFC 9773),
placed once that certificate's suggested window has opened, is exempt from
all of Let's Encrypt's limits, so it is not counted (`ari_renewal`): ARI and
short-lived certificates (6 days, renewed every 3) would otherwise spend the
budget on renewals the CA does not count. When the CA refuses `replaces` and
the order goes again without it, the certificate it yields is counted then.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from certctl.api import conditions
from certctl.api.resources import ObjectKey
from certctl.controllers.reconciling import Clock, Result
from certctl.pki import renewal
from certctl.store.interface import AlreadyExists, Object, Store

LEDGER_LABEL = "certctl.io/order-ledger"
PLACED_ANNOTATION = "certctl.io/orders-placed"  # JSON: {"<namespace>/<order>": "<time>"}
NAMES_ANNOTATION = "certctl.io/order-names"
SERVER_ANNOTATION = "certctl.io/acme-server"
# JSON: {"<namespace>/<certificate>": {"revision": <n>, "placed": "<time>"}}; each key's
# PKCS#8 PEM in `data` under NEXT_KEY_PREFIX + "<namespace>.<certificate>".
NEXT_KEYS_ANNOTATION = "certctl.io/next-private-keys"
NEXT_KEY_PREFIX = "next-private-key."
# How long a next private key stays after its order was placed: far longer than an order
# takes, as long as the records of the default budget.
NEXT_KEY_KEPT = datetime.timedelta(days=7)


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


def records_window(budget: Budget | None) -> datetime.timedelta:
    """How long a ledger keeps its records: the budget's window; without a budget the
    default's (records from before it was turned off go in time)."""
    return (budget or DUPLICATE_CERTIFICATE_LIMIT).window


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


@dataclass(frozen=True, kw_only=True)
class NextKey:
    """The private key a Certificate's pending order was made with."""
    certificate: str  # "<namespace>/<name>"
    revision: int  # the Certificate's status.revision it was made at: for the one after it
    key_pem: bytes  # PKCS#8


def read_ledger(*, store: Store, ref: LedgerRef) -> Object | None:
    return store.get(kind="Secret", namespace=ref.namespace, name=ref.name)


def placed_orders(*, ledger: Mapping[str, Any] | None) -> list[datetime.datetime]:
    return list(_entries(ledger).values())


def next_key(ledger: Mapping[str, Any] | None, *, certificate: str,
             revision: int) -> bytes | None:
    """The key (PKCS#8 PEM) the ledger keeps for `certificate`'s order at `revision`: an
    older one is a certificate issued since, not the next."""
    told = _next_keys(ledger).get(certificate)
    if told is None or told.get("revision") != revision:
        return None
    assert ledger is not None
    encoded = (ledger.get("data") or {}).get(_next_key_field(certificate))
    try:
        return base64.b64decode(encoded, validate=True) if isinstance(encoded, str) else None
    except ValueError:
        return None


def record(
    *, store: Store, ref: LedgerRef, ledger: Object | None, order: str | None,
    key: NextKey | None, now: datetime.datetime, budget: Budget | None
) -> None:
    """Count `order` (`namespace/name`, None: none counted) as placed at `now` and keep
    `key` for its Certificate, in one write; records older than `budget`'s window
    (`records_window`) and keys older than NEXT_KEY_KEPT go.

    `ledger` is the ledger as the caller read it (`read_ledger`: the budget was
    judged on it), None when there was none. Raises the store's Conflict when
    another writer got in between: the reconciler runs again and counts afresh.
    """
    entries = _entries(ledger)
    if order is not None:
        entries.setdefault(order, now)
    told = _next_keys(ledger)
    data = dict((ledger or {}).get("data") or {})
    if key is not None:
        told[key.certificate] = {"revision": key.revision,
                                 "placed": conditions.format_time(now)}
        data[_next_key_field(key.certificate)] = base64.b64encode(key.key_pem).decode()
    entries, told, data = _pruned(entries, told, data, now=now,
                                  window=records_window(budget))
    annotations = {
        PLACED_ANNOTATION: _placed_text(entries),
        NAMES_ANNOTATION: ",".join(ref.names),
        SERVER_ANNOTATION: ref.server,
        NEXT_KEYS_ANNOTATION: json.dumps(told, sort_keys=True),
    }
    if ledger is None:
        try:
            store.create(obj={
                "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                "metadata": {"name": ref.name, "namespace": ref.namespace,
                             "labels": {LEDGER_LABEL: "true"}, "annotations": annotations},
                "data": data,
            })
            return
        except AlreadyExists:
            ledger = read_ledger(store=store, ref=ref)
            if ledger is None:
                raise
            return record(store=store, ref=ref, ledger=ledger, order=order, key=key, now=now,
                          budget=budget)
    ledger["metadata"].setdefault("annotations", {}).update(annotations)
    ledger["data"] = data
    store.replace(obj=ledger)


def refund_order(*, store: Store, ref: LedgerRef, order: str) -> None:
    """Take a failed order off the ledger (no-op when it was never counted)."""
    ledger = read_ledger(store=store, ref=ref)
    entries = _entries(ledger)
    if ledger is None or order not in entries:
        return
    del entries[order]
    ledger["metadata"]["annotations"][PLACED_ANNOTATION] = _placed_text(entries)
    store.replace(obj=ledger)


def is_ledger(obj: Mapping[str, Any], *, cluster_resource_namespace: str) -> bool:
    """A ledger certctl keeps: labelled so, in the cluster resource namespace."""
    metadata = obj.get("metadata") or {}
    return metadata.get("namespace") == cluster_resource_namespace and (
        (metadata.get("labels") or {}).get(LEDGER_LABEL) == "true")


def reconcile(*, store: Store, key: ObjectKey, clock: Clock, cluster_resource_namespace: str,
              budget: Budget | None) -> Result:
    """Drop the records older than `budget`'s window (`records_window`) and the keys older than
    NEXT_KEY_KEPT; delete the ledger once nothing is left in it; until then look again when
    the oldest goes. A ledger whose Certificates are all gone is empty within a week."""
    ledger = store.get(kind="Secret", namespace=key.namespace, name=key.name)
    if ledger is None or not is_ledger(
            ledger, cluster_resource_namespace=cluster_resource_namespace):
        return Result.done()
    now = clock()
    window = records_window(budget)
    entries, told = _entries(ledger), _next_keys(ledger)
    data = dict(ledger.get("data") or {})
    kept_entries, kept_told, kept_data = _pruned(entries, told, data, now=now, window=window)
    if not kept_entries and not kept_told:
        store.delete(kind="Secret", namespace=key.namespace, name=key.name)
        return Result.done()
    if (kept_entries, kept_told, kept_data) != (entries, told, data):
        ledger["metadata"].setdefault("annotations", {}).update({
            PLACED_ANNOTATION: _placed_text(kept_entries),
            NEXT_KEYS_ANNOTATION: json.dumps(kept_told, sort_keys=True)})
        ledger["data"] = kept_data
        store.replace(obj=ledger)
    ends = [time + window for time in kept_entries.values()] + [
        _placed(entry) + NEXT_KEY_KEPT for entry in kept_told.values()]
    return Result.after(max(0.0, (min(ends) - now).total_seconds()))


def _pruned(
    entries: dict[str, datetime.datetime], told: dict[str, dict[str, Any]],
    data: dict[str, str], *, now: datetime.datetime, window: datetime.timedelta,
) -> tuple[dict[str, datetime.datetime], dict[str, dict[str, Any]], dict[str, str]]:
    """Without the records older than `window` and the keys older than NEXT_KEY_KEPT."""
    entries = {k: time for k, time in entries.items() if time > now - window}
    told = {k: entry for k, entry in told.items() if _placed(entry) > now - NEXT_KEY_KEPT}
    fields = {_next_key_field(certificate) for certificate in told}
    data = {k: v for k, v in data.items() if not k.startswith(NEXT_KEY_PREFIX) or k in fields}
    return entries, told, data


def _placed_text(entries: Mapping[str, datetime.datetime]) -> str:
    """PLACED_ANNOTATION's value for these records."""
    return json.dumps({order: conditions.format_time(time)
                       for order, time in sorted(entries.items())})


def _next_key_field(certificate: str) -> str:
    """The data key of `certificate`'s (`namespace/name`) next key: a namespace holds no dot."""
    return NEXT_KEY_PREFIX + certificate.replace("/", ".", 1)


def _placed(entry: Mapping[str, Any]) -> datetime.datetime:
    try:
        return conditions.parse_time(str(entry.get("placed")))
    except ValueError:
        return datetime.datetime.min.replace(tzinfo=datetime.UTC)  # unreadable: it goes


def _next_keys(ledger: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    """The next keys' records by Certificate; unreadable ones count as none."""
    text = (((ledger or {}).get("metadata") or {}).get("annotations") or {}).get(
        NEXT_KEYS_ANNOTATION)
    try:
        raw = json.loads(text) if text else {}
    except ValueError:
        return {}
    return {str(k): dict(v) for k, v in raw.items() if isinstance(v, dict)} \
        if isinstance(raw, dict) else {}


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
