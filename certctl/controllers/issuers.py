"""The issuer reconciler: is this issuer able to issue? Its `Ready` condition says.

The answer is the issuer type's (`issuers.protocol.IssuerType.readiness`,
one module per type: acme, ca, selfSigned); this reconciler writes it, with
the type's other status fields, and looks again when the type says the answer
changes by itself, or with backoff when it failed for a reason no event
announces. Reasons are cert-manager's (ACMEAccountRegistered,
ErrRegisterACMEAccount, IsReady, KeyPairVerified, ErrGetKeyPair,
ErrInvalidKeyPair) so users find them.
"""

from __future__ import annotations

import datetime
import logging
from dataclasses import dataclass

from certctl.api import conditions, parsing
from certctl.api.errors import InvalidObject
from certctl.api.resources import ObjectKey
from certctl.api.status import IssuerStatus
from certctl.controllers import reconciling
from certctl.controllers.reconciling import Clock, Result, TransientError
from certctl.issuers import protocol, registry
from certctl.issuers.acme import accounts as acme_accounts
from certctl.store.interface import Object, Store

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class Settings:
    clock: Clock
    accounts: acme_accounts.AcmeAccounts


def reconcile(*, store: Store, key: ObjectKey, settings: Settings) -> Result:
    obj = store.get(kind=key.kind, namespace=key.namespace, name=key.name)
    if obj is None:
        return Result.done()
    now = settings.clock()
    try:
        issuer = parsing.parse_issuer(obj, source=reconciling.manifest_source(obj))
    except InvalidObject as err:
        _set_ready(store, obj, IssuerStatus.from_object(obj), ready=False, reason="BadConfig",
                   message=err.detail, now=now)
        return Result.done()
    readiness = registry.issuer_type(issuer).readiness(
        store=store, issuer=issuer, now=now,
        env=protocol.Environment(
            cluster_resource_namespace=settings.accounts.cluster_resource_namespace,
            accounts=settings.accounts))
    if readiness.acme is not None:
        # The account the type registered is written with the condition; the object is
        # read again, as reaching the CA took a while.
        fresh = store.get(kind=key.kind, namespace=key.namespace, name=key.name)
        if fresh is None:
            return Result.done()
        obj = fresh
    status = IssuerStatus.from_object(obj)
    if readiness.acme is not None:
        status.acme = readiness.acme
    _set_ready(store, obj, status, ready=readiness.ready, reason=readiness.reason,
               message=readiness.message, now=now)
    if readiness.retry:
        # No event says the Secret appeared or was fixed: look again, with backoff.
        raise TransientError(f"{key}: {readiness.message}")
    if readiness.look_again is not None:
        return Result.after(readiness.look_again)
    return Result.done()


def _set_ready(
    store: Store, obj: Object, status: IssuerStatus, *, ready: bool, reason: str,
    message: str, now: datetime.datetime,
) -> None:
    """Write `status` with its Ready condition set; an Event when the condition changed."""
    before = status.conditions
    status.conditions = conditions.updated(
        before, type="Ready", status="True" if ready else "False", reason=reason,
        message=message, now=now, observed_generation=obj["metadata"].get("generation", 0))
    if reconciling.write_status(store, obj=obj, status=status) and before != status.conditions:
        store.emit_event(obj=obj, type="Normal" if ready else "Warning", reason=reason,
                         message=message)
