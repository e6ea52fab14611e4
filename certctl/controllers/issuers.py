"""The issuer reconciler: is this issuer able to issue? Its `Ready` condition says.

- ACME: Ready once the account is registered. The account key is generated
  on first use and kept in the Secret named by `privateKeySecretRef` (for a
  ClusterIssuer, in the cluster resource namespace), so the account survives
  restarts and moves with the Secret. An `externalAccountBinding` binds the
  new account with the key ID and HMAC key from its Secret; a `profile` the
  server does not offer is a configuration error, reported here rather than
  on every order.
- selfSigned: always Ready; each certificate is signed by its own key.
- ca: Ready while the CA key pair in `spec.ca.secretName` (the issuer's
  namespace, or the cluster resource namespace for a ClusterIssuer) can
  sign: it parses, the key matches, the certificate is a CA and valid now.

Reasons are cert-manager's (ACMEAccountRegistered, ErrRegisterACMEAccount,
IsReady, KeyPairVerified, ErrGetKeyPair, ErrInvalidKeyPair) so users find them.
"""

from __future__ import annotations

import datetime
import logging
from dataclasses import dataclass

from certctl.api import parsing
from certctl.api.errors import InvalidObject
from certctl.api.resources import Issuer, ObjectKey
from certctl.controllers import acme_accounts, reconciling
from certctl.controllers.reconciling import Clock, Result, TransientError
from certctl.issuers import ca as ca_issuer
from certctl.issuers.acme import errors as acme_errors
from certctl.pki import keys
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
    if issuer.self_signed:
        _set_ready(store, obj, ready=True, reason="IsReady",
                   message="Each certificate is signed by its own private key", now=now)
        return Result.done()
    if issuer.acme is None:
        return _reconcile_ca(store, obj, issuer=issuer, key=key, now=now, settings=settings)
    return _reconcile_acme(store, obj, issuer=issuer, key=key, now=now, settings=settings)


def _reconcile_ca(
    store: Store, obj: Object, *, issuer: Issuer, key: ObjectKey, now: datetime.datetime,
    settings: Settings,
) -> Result:
    assert issuer.ca_secret_name is not None
    namespace = issuer.namespace or settings.accounts.cluster_resource_namespace
    try:
        key_pair = ca_issuer.load_key_pair(
            secret=store.get(kind="Secret", namespace=namespace, name=issuer.ca_secret_name),
            namespace=namespace, name=issuer.ca_secret_name, now=now)
    except ca_issuer.KeyPairProblem as err:
        _set_ready(store, obj, ready=False, reason=err.reason, message=err.message, now=now)
        # No event says the Secret appeared or was fixed: look again, with backoff.
        raise TransientError(f"{key}: {err.message}") from err
    _set_ready(store, obj, ready=True, reason="KeyPairVerified", message="Signing CA verified",
               now=now)
    # The CA expiring ends its ability to sign: look again then.
    return Result.after((key_pair.certificate.not_valid_after_utc - now).total_seconds())


def _reconcile_acme(
    store: Store, obj: Object, *, issuer: Issuer, key: ObjectKey, now: datetime.datetime,
    settings: Settings,
) -> Result:
    assert issuer.acme is not None
    ref = acme_accounts.account_key_ref(
        issuer=issuer, cluster_resource_namespace=settings.accounts.cluster_resource_namespace)
    key_pem = acme_accounts.ensure_account_key(store=store, ref=ref)
    try:
        keys.load_private_key(key_pem)
    except ValueError as err:
        # Someone else's bytes in the Secret: name it and the field, never quote them.
        message = (f"Failed to register ACME account: Secret {ref.namespace}/{ref.name} key "
                   f"{ref.field!r}: {err}")
        _set_ready(store, obj, ready=False, reason="ErrRegisterACMEAccount", message=message,
                   now=now)
        raise TransientError(f"{key}: {message}") from err
    try:
        client = settings.accounts.client_for_key(acme=issuer.acme, account_key_pem=key_pem)
        external_account = acme_accounts.external_account_key(
            store=store, issuer=issuer,
            cluster_resource_namespace=settings.accounts.cluster_resource_namespace)
        uri = client.register(email=issuer.acme.email, external_account=external_account)
        offered = client.profiles()
    except (acme_errors.AcmeError, LookupError) as err:
        message = f"Failed to register ACME account: {err}"
        _set_ready(store, obj, ready=False, reason="ErrRegisterACMEAccount", message=message,
                   now=now)
        raise TransientError(f"{key}: {message}") from err
    fresh = store.get(kind=key.kind, namespace=key.namespace, name=key.name)
    if fresh is None:
        return Result.done()
    status = fresh.setdefault("status", {})
    status["acme"] = {"uri": uri, "lastRegisteredEmail": issuer.acme.email or ""}
    profile = issuer.acme.profile
    if profile is not None and profile not in offered:
        _set_ready(store, fresh, ready=False, reason="BadConfig",
                   message=f"spec.acme.profile: ACME server {issuer.acme.server} does not offer "
                   f"profile {profile!r} (offers: {', '.join(sorted(offered)) or 'none'})",
                   now=now)
        return Result.done()
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
