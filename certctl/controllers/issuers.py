"""The issuer reconciler: an ACME issuer is Ready once its account is registered.

The account key is generated on first use and kept in the Secret named by
`privateKeySecretRef` (for a ClusterIssuer, in the cluster resource
namespace), so the account survives restarts and moves with the Secret.
"""

from __future__ import annotations

import datetime
import logging
from dataclasses import dataclass

from certctl.api import parsing
from certctl.api.errors import InvalidObject
from certctl.api.resources import ObjectKey
from certctl.controllers import acme_accounts, reconciling
from certctl.controllers.reconciling import Clock, Result, TransientError
from certctl.issuers.acme import errors as acme_errors
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
        _set_ready(store, obj, ready=False, reason="BadConfig", message=err.detail, now=now)
        return Result.done()
    if issuer.acme is None:
        kind = "selfSigned" if issuer.self_signed else "ca"
        _set_ready(store, obj, ready=False, reason="NotSupported",
                   message=f"{kind} issuers are not supported yet; use spec.acme", now=now)
        return Result.done()

    ref = acme_accounts.account_key_ref(
        issuer=issuer, cluster_resource_namespace=settings.accounts.cluster_resource_namespace)
    key_pem = acme_accounts.ensure_account_key(store=store, ref=ref)
    client = settings.accounts.client_for_key(acme=issuer.acme, account_key_pem=key_pem)
    try:
        uri = client.register(email=issuer.acme.email)
    except acme_errors.AcmeError as err:
        message = f"Failed to register ACME account: {err}"
        _set_ready(store, obj, ready=False, reason="ErrRegisterACMEAccount", message=message,
                   now=now)
        raise TransientError(f"{key}: {message}") from err
    fresh = store.get(kind=key.kind, namespace=key.namespace, name=key.name)
    if fresh is None:
        return Result.done()
    status = fresh.setdefault("status", {})
    status["acme"] = {"uri": uri, "lastRegisteredEmail": issuer.acme.email or ""}
    _set_ready(store, fresh, ready=True, reason="ACMEAccountRegistered",
               message="The ACME account was registered with the ACME server", now=now)
    return Result.done()


def _set_ready(
    store: Store, obj: Object, *, ready: bool, reason: str, message: str,
    now: datetime.datetime,
) -> None:
    before = (obj.get("status") or {}).get("conditions")
    updated = reconciling.with_condition(obj, type="Ready", status="True" if ready else "False",
                                         reason=reason, message=message, now=now)
    if reconciling.write_status(store, obj=updated) and (
        before != updated["status"]["conditions"]
    ):
        store.emit_event(obj=obj, type="Normal" if ready else "Warning", reason=reason,
                         message=message)
