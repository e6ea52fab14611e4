"""The Orders a Certificate places with an ACME issuer (`orders` then carries them out).

An Order is named from a hash of everything its CSR depends on, so a restart
finds the order it placed instead of placing a second one; it is counted against
the order budget (`order_budget`) before it is placed; Orders for an older spec
or key are dropped, and the `revisionHistoryLimit` newest are kept.
"""

from __future__ import annotations

import datetime
import hashlib
import json
from collections.abc import Mapping
from typing import Any

from cryptography.hazmat.primitives import serialization

from certctl.api import conditions, parsing
from certctl.api.resources import Certificate, IssuerRef
from certctl.api.status import CertificateStatus, OrderStatus
from certctl.controllers import order_budget, reconciling
from certctl.controllers.certificate_settings import Settings
from certctl.controllers.reconciling import Result
from certctl.pki import keys
from certctl.store.interface import AlreadyExists, Object, Store

# On the Orders of a Certificate: its name.
CERTIFICATE_NAME_LABEL = "certctl.io/certificate-name"
# On Orders, as cert-manager puts it on CertificateRequests: the revision it issues.
REVISION_ANNOTATION = "cert-manager.io/certificate-revision"
# cert-manager's default since 1.18 (it was unbounded before): keep the latest Order only.
DEFAULT_REVISION_HISTORY = 1
ORDER_BUDGET_EXHAUSTED = "OrderBudgetExhausted"


def enter_order(
    store: Store,
    obj: Object,
    *,
    certificate: Certificate,
    ledger: order_budget.LedgerRef,
    recorded: Object | None,
    key: order_budget.NextKey | None,
    order_name: str,
    now: datetime.datetime,
    settings: Settings,
    keep_ready: bool,
    exempt: bool,
) -> Result | None:
    """Count the order about to be placed and keep the `key` it is made with (None: the
    ledger has it) in the ledger, one write; or refuse the order (a Result) when over
    budget. An `exempt` one (an ARI renewal, see `order_budget.ari_renewal`) is not
    counted, nor any without a budget. `recorded`: the ledger as this pass read it."""
    counted = None if exempt else settings.order_budget  # the budget the order spends
    if counted is not None:
        placed = order_budget.placed_orders(ledger=recorded)
        allowed_at = order_budget.next_allowed(placed=placed, now=now, budget=counted)
        if allowed_at is not None:
            return _refuse(store, obj, ledger=ledger, placed=placed, allowed_at=allowed_at,
                           budget=counted, now=now, keep_ready=keep_ready)
    if counted is not None or key is not None:
        order_budget.record(
            store=store, ref=ledger, ledger=recorded, key=key, now=now,
            order=None if counted is None else f"{certificate.namespace}/{order_name}",
            budget=settings.order_budget)
    return None


def _refuse(
    store: Store, obj: Object, *, ledger: order_budget.LedgerRef,
    placed: list[datetime.datetime], allowed_at: datetime.datetime,
    budget: order_budget.Budget, now: datetime.datetime, keep_ready: bool,
) -> Result:
    """Say why the order is not placed, and come back when one fits in the budget."""
    recent = sum(1 for time in placed if time > now - budget.window)
    message = (f"Not placing an order: {recent} orders for exactly [{', '.join(ledger.names)}] "
               f"were placed with {ledger.server} within "
               f"{parsing.format_duration(budget.window)} (failed ones not counted), the budget "
               f"certctl keeps to stay clear of the CA's duplicate-certificate limit "
               f"({budget.describe()}); the next order may be placed at "
               f"{conditions.format_time(allowed_at)}")
    status = CertificateStatus.from_object(obj)
    for type in ("Issuing",) if keep_ready else ("Issuing", "Ready"):
        status.set_condition(type=type, status="False", reason=ORDER_BUDGET_EXHAUSTED,
                             message=message, now=now,
                             observed_generation=obj["metadata"].get("generation", 0))
    if reconciling.write_status(store, obj=obj, status=status):
        store.emit_event(obj=obj, type="Warning", reason=ORDER_BUDGET_EXHAUSTED, message=message)
    return Result.after((allowed_at - now).total_seconds())


def ledger_ref(
    *, certificate: Certificate, server: str, settings: Settings
) -> order_budget.LedgerRef:
    names = order_budget.name_set(dns_names=certificate.dns_names,
                                  ip_addresses=certificate.ip_addresses,
                                  common_name=certificate.common_name)
    return order_budget.ledger_ref(server=server, names=names,
                                   cluster_resource_namespace=settings.cluster_resource_namespace)


def order_name(
    *, certificate: Certificate, obj: Object, private_key: keys.PrivateKey, failures: int,
    issuer: IssuerRef,
) -> str:
    """Deterministic: everything the order depends on, so a restart finds the same one."""
    status = obj.get("status") or {}
    # A fallback issuer's order differs from the first choice's (whose names stay as they
    # were before fallbacks existed).
    other_issuer = ({"issuer": [issuer.kind, issuer.name]}
                    if issuer != certificate.issuer_ref else {})
    material = json.dumps({
        **other_issuer,
        "spec": obj.get("spec"),
        "key": hashlib.sha256(private_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo,
        )).hexdigest(),
        "revision": status.get("revision", 0),
        "failures": failures,
    }, sort_keys=True)
    digest = hashlib.sha256(material.encode()).hexdigest()[:10]
    revision = int(status.get("revision") or 0) + 1
    return f"{certificate.name[:200]}-{revision}-{digest}"


def create_order(
    store: Store, obj: Object, *, certificate: Certificate, name: str, spec: Mapping[str, Any],
    now: datetime.datetime,
) -> Object:
    """The Order the issuer asked for (its `spec`), owned and labelled for this Certificate."""
    revision = int((obj.get("status") or {}).get("revision") or 0) + 1
    order = {
        "apiVersion": "certctl.io/v1",
        "kind": "Order",
        "metadata": {
            "name": name,
            "namespace": certificate.namespace,
            # The injected clock's (the API server sets its own): the placement deadline.
            "creationTimestamp": conditions.format_time(now),
            "labels": {CERTIFICATE_NAME_LABEL: certificate.name},
            "annotations": {REVISION_ANNOTATION: str(revision)},
            "ownerReferences": [reconciling.owner_reference(obj)],
        },
        "spec": dict(spec),
    }
    try:
        return store.create(obj=order)
    except AlreadyExists:
        existing = store.get(kind="Order", namespace=certificate.namespace, name=name)
        assert existing is not None
        return existing


def delete_unfinished_orders(store: Store, obj: Object, *, keep: str) -> None:
    """Orders for an older spec or key will never be used: drop them (and their challenges)."""
    for order in store.list(kind="Order", namespace=obj["metadata"]["namespace"],
                            labels={CERTIFICATE_NAME_LABEL: obj["metadata"]["name"]}):
        if not reconciling.is_owned_by(order, obj) or order["metadata"]["name"] == keep:
            continue
        if OrderStatus.from_object(order).state != "valid":
            store.delete(kind="Order", namespace=order["metadata"]["namespace"],
                         name=order["metadata"]["name"])


def prune_orders(store: Store, obj: Object, *, certificate: Certificate) -> None:
    """Keep the `revisionHistoryLimit` (default 1) Orders of the highest revisions."""
    limit = certificate.revision_history_limit or DEFAULT_REVISION_HISTORY
    owned = [o for o in store.list(kind="Order", namespace=certificate.namespace,
                                   labels={CERTIFICATE_NAME_LABEL: certificate.name})
             if reconciling.is_owned_by(o, obj)]
    owned.sort(key=_order_age, reverse=True)
    for order in owned[limit:]:
        store.delete(kind="Order", namespace=certificate.namespace, name=order["metadata"]["name"])


def _order_age(order: Mapping[str, Any]) -> tuple[int, str]:
    """Revision first; among Orders of one revision (failed attempts) the newest wins."""
    metadata = order.get("metadata") or {}
    revision = str((metadata.get("annotations") or {}).get(REVISION_ANNOTATION) or "")
    return (int(revision) if revision.isdigit() else 0,
            str(metadata.get("creationTimestamp") or ""))
