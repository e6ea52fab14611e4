"""The Certificate reconciler: trigger, key manager, request manager, issuing, readiness.

One pass decides, in cert-manager's order:
- is the Certificate valid and its issuer present? (else `Ready=False` and stop:
  no key, no order, no ACME traffic); with `spec.fallbackIssuerRefs`, which issuer
  this issuance tries now (`issuer_fallback`: the first choice, unless it failed in
  this issuance for a reason the next one could fix; `_fall_back` moves on);
- is it the rightful writer of its Secret? (`secret_claims`: of two
  Certificates naming one Secret the newer stands down);
- does the Secret need (re)issuing? (`policies.needs_issuing`; for ACME, the
  renewal time is the CA's ARI window when it offers one, `renewal_info`);
- can a kept copy stand in for a lost Secret? (`kept_certificates`: no order);
- is a failed issuance still backing off? (1 h doubling to 32 h, or longer
  when the CA said Retry-After);
- which private key? (for ACME a "next private key" Secret owned by the
  Certificate, so a restart reuses the key the pending order's CSR was made with);
- the issuer's type (`issuers.protocol`, one module per type, found by
  `issuers.registry`) refuses what it cannot issue, then signs the CSR right
  here (selfSigned, ca) or says which order to place; for ACME, which Order? (named
  from a hash of everything the CSR depends on, so a restart finds the order
  it placed instead of placing a second one, and counted against the order
  budget before it is placed; it names the certificate it `replaces`, and a
  `spec.acme.profile` the CA does not offer stops it before ordering);
- when the certificate is there: write the `kubernetes.io/tls` Secret, keep a
  copy, bump the revision, mark Ready and requeue at the renewal time, or at
  the CA's next ARI check when that comes first (a timer in the work queue,
  not a poll).
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import hashlib
import json
import logging
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import serialization

from certctl.api import annotations as annotation_keys
from certctl.api import conditions, parsing
from certctl.api.errors import InvalidObject
from certctl.api.resources import (
    Certificate,
    Issuer,
    IssuerRef,
    IssuerSpec,
    KeyEncoding,
    ObjectKey,
)
from certctl.controllers import (
    issuer_fallback,
    kept_certificates,
    order_budget,
    policies,
    reconciling,
    renewal_info,
    secret_claims,
)
from certctl.controllers.reconciling import Clock, Result
from certctl.issuers import protocol, registry
from certctl.issuers.acme import accounts as acme_accounts
from certctl.issuers.acme import ari
from certctl.issuers.acme import errors as acme_errors
from certctl.pki import csr, inspect, keys
from certctl.pki import secret as tls_secret
from certctl.store.interface import AlreadyExists, Object, Store

logger = logging.getLogger(__name__)

NEXT_KEY_LABEL = "certctl.io/next-private-key"
CERTIFICATE_NAME_LABEL = "certctl.io/certificate-name"
# On Orders, as cert-manager puts it on CertificateRequests: the revision it issues.
REVISION_ANNOTATION = "cert-manager.io/certificate-revision"
# cert-manager's default since 1.18 (it was unbounded before): keep the latest Order only.
DEFAULT_REVISION_HISTORY = 1
# A lost or unreadable Secret may be replaced by the kept copy; other triggers
# (names changed, renewal due...) need a certificate the copy is not.
RESTORABLE = (policies.DOES_NOT_EXIST, policies.INVALID_CERTIFICATE, policies.INVALID_KEY_PAIR)
# The Certificate that stood down for an older one looks again this often, so it
# takes over once the older one is deleted (no event tells it).
DUPLICATE_RECHECK_SECONDS = 600.0
ORDER_BUDGET_EXHAUSTED = "OrderBudgetExhausted"


@dataclass(frozen=True, kw_only=True)
class Settings:
    clock: Clock
    backoff_base: datetime.timedelta = datetime.timedelta(hours=1)
    backoff_max: datetime.timedelta = datetime.timedelta(hours=32)
    # Where ClusterIssuers' CA Secrets, kept copies and order ledgers live.
    cluster_resource_namespace: str = "certctl"
    # None: no budget (a private ACME CA without limits).
    order_budget: order_budget.Budget | None = order_budget.DUPLICATE_CERTIFICATE_LIMIT
    # The ACME clients, for renewal information (ARI) and the profiles a CA offers;
    # None: neither is asked for (renewal by lifetime, profiles checked by the CA).
    accounts: acme_accounts.AcmeAccounts | None = None
    # Where in an ARI window to renew, 0..1 (RFC 9773: uniformly at random).
    draw: Callable[[], float] = random.random
    # A Certificate with a fallback issuer passes over one whose CA has not taken the order
    # (no order URL) this long after it was created: the CA went down after its issuer
    # became Ready, and the Order reconciler is retrying an unreachable server. Long enough
    # for a queue of thousands of new orders.
    order_placement_timeout: datetime.timedelta = datetime.timedelta(minutes=2)


def failure_backoff(*, failures: int, settings: Settings) -> datetime.timedelta:
    """cert-manager's schedule: base, doubling per consecutive failure, capped."""
    delay = settings.backoff_base * (1 << min(16, max(0, failures - 1)))
    return min(delay, settings.backoff_max)


def issuer_key(certificate: Certificate, ref: IssuerRef | None = None) -> ObjectKey:
    """Where the issuer `ref` (default: spec.issuerRef) of `certificate` is stored."""
    ref = ref or certificate.issuer_ref
    namespace = None if ref.kind == "ClusterIssuer" else certificate.namespace
    return ObjectKey(kind=ref.kind, namespace=namespace, name=ref.name)


def reconcile(*, store: Store, key: ObjectKey, settings: Settings) -> Result:
    obj = store.get(kind="Certificate", namespace=key.namespace, name=key.name)
    if obj is None:
        return Result.done()
    now = settings.clock()
    try:
        certificate = parsing.parse_certificate(obj, source=reconciling.manifest_source(obj))
    except InvalidObject as err:
        return _not_ready(store, obj, reason="BadConfig", message=err.detail, now=now)

    # Which of the Certificate's issuers this issuance tries now (issuer_fallback): the
    # first choice unless it failed in this issuance for a reason the next one could fix.
    attempt = issuer_fallback.read(obj.get("status") or {}, certificate=certificate)
    position = attempt.current_index(certificate)
    fallback = _Fallback(certificate=certificate, attempt=attempt, position=position)
    tried = fallback.tried
    issuer_ref = issuer_key(tried)
    issuer_obj = store.get(kind=issuer_ref.kind, namespace=issuer_ref.namespace,
                           name=issuer_ref.name)
    if issuer_obj is None:
        # Not a reason to fall back: a typo in the Certificate, or an issuer not applied
        # yet (falling back would issue from the second choice on every first deploy).
        return _not_ready(store, obj, reason="IssuerNotFound",
                          message=f"{issuer_ref.kind} {issuer_ref.name} not found"
                          f"{_other_kind_hint(store, tried)}", now=now,
                          field=fallback.field)
    try:
        issuer = parsing.parse_issuer(issuer_obj, source=reconciling.manifest_source(issuer_obj))
    except InvalidObject as err:
        message = f"{issuer_ref.kind} {issuer_ref.name} is invalid: {err.detail}"
        if fallback.has_next:
            return _fall_back(store, obj, fallback=fallback, now=now, request=None,
                              reason=issuer_fallback.ISSUER_NOT_READY, message=message)
        return _not_ready(store, obj, reason="IssuerNotReady", message=message, now=now)
    issuer_type = registry.issuer_type(issuer)
    order_server = issuer_type.order_server(issuer)
    # The Secret is judged (ACME renewal rules, the CA's renewal window) by the issuer
    # that issued it, which may be a fallback.
    judge = _issuer_of_secret(store, obj, certificate=certificate, tried=issuer)
    env = protocol.Environment(cluster_resource_namespace=settings.cluster_resource_namespace,
                               accounts=settings.accounts)

    secret = store.get(kind="Secret", namespace=certificate.namespace,
                       name=certificate.secret_name)
    contender = secret_claims.rival(store=store, certificate=certificate, secret=secret)
    if contender is not None:
        if secret_claims.is_newer(obj, than=contender):
            return _duplicate(store, obj, holder=contender, now=now)
        _duplicate(store, contender, holder=obj, now=now)
    if secret is not None and secret_claims.writer_of(secret) not in (None, certificate.name):
        # Written by a Certificate that lost it (or is gone): claim it now, not after the
        # next issuance, so the loser reading the Secret meanwhile sees who holds it.
        secret = secret_claims.claim(store=store, certificate=certificate, secret=secret)

    issuing = conditions.get_condition((obj.get("status") or {}).get("conditions") or [],
                                       "Issuing")
    data = policies.read_input(
        certificate=certificate, secret=secret, now=now,
        renewal_requested=issuing is not None and issuing.get("status") == "True"
        and issuing.get("reason") == policies.MANUALLY_TRIGGERED,
        acme=_places_orders(judge), ari=renewal_info.stored_window(obj.get("status") or {}))
    readiness = policies.needs_issuing(data, policies.READINESS_CHAIN)
    if readiness is None:
        data = _with_renewal_info(store, obj, data=data, issuer=judge, now=now,
                                  settings=settings)
    violation = policies.needs_issuing(data)
    if violation is None:
        return _up_to_date(store, obj, certificate=certificate, data=data, now=now)
    data = dataclasses.replace(data, acme=order_server is not None)

    # A kept copy needs no issuer: it comes back even while the CA is down.
    if order_server is not None and violation.reason in RESTORABLE:
        restored = _restore_kept_copy(store, obj, certificate=certificate, violation=violation,
                                      now=now, settings=settings)
        if restored is not None:
            return restored

    try:
        problem = _issuer_problem(store, issuer_obj=issuer_obj, issuer=issuer,
                                  certificate=tried,
                                  labels=obj["metadata"].get("labels") or {}, env=env)
    except acme_errors.AcmeError as err:  # the CA could not be asked
        if not fallback.has_next:
            raise reconciling.TransientError(str(err)) from err
        return _fall_back(store, obj, fallback=fallback, now=now, request=None,
                          reason=issuer_fallback.CA_UNREACHABLE, message=str(err))
    if problem is not None:
        if fallback.has_next and not isinstance(problem, _NotLookedAt):
            return _fall_back(store, obj, fallback=fallback, now=now, request=None,
                              reason=(issuer_fallback.ISSUER_NOT_READY
                                      if problem.reason == "IssuerNotReady"
                                      else issuer_fallback.REFUSED), message=str(problem))
        return _not_ready(store, obj, reason=problem.reason, message=str(problem), now=now,
                          keep_ready=readiness is None)


    status = obj.get("status") or {}
    failures = int(status.get("failedIssuanceAttempts") or 0)
    if failures and status.get("lastFailureGeneration") != obj["metadata"].get("generation"):
        failures = 0  # a spec change deserves a fresh attempt, as in cert-manager
    if failures:
        retry_at = _retry_time(status, failures=failures, settings=settings)
        if now < retry_at:
            return Result.after((retry_at - now).total_seconds())

    if order_server is None:
        return _sign_locally(store, obj, fallback=fallback, issuer=issuer, data=data,
                             violation=violation, now=now, settings=settings, env=env,
                             keep_ready=readiness is None)

    private_key = _next_private_key(store, obj, certificate=certificate, data=data)
    order_name = _order_name(certificate=certificate, obj=obj, private_key=private_key,
                             failures=failures, issuer=fallback.ref)
    order = store.get(kind="Order", namespace=certificate.namespace, name=order_name)
    if order is None:
        replaces = _replaced_cert_id(data=data, issuer=issuer)
        refused = _spend_order_budget(store, obj, certificate=certificate, server=order_server,
                                      order_name=order_name, now=now, settings=settings,
                                      keep_ready=readiness is None,
                                      exempt=order_budget.ari_renewal(
                                          replaces=replaces, window=data.ari, now=now))
        if refused is not None:
            return refused
        _delete_unfinished_orders(store, obj, keep=order_name)
        request_pem = csr.build_csr(
            key=private_key,
            dns_names=certificate.dns_names,
            ip_addresses=certificate.ip_addresses,
            common_name=certificate.common_name,
            usages=certificate.usages,
        )
        outcome = issuer_type.issue(store=store, issuer=issuer, env=env, request=protocol.Request(
            certificate=tried, csr_pem=request_pem, private_key=private_key, now=now,
            replaces=replaces))
        assert isinstance(outcome, protocol.Ordered)  # an issuer that places orders
        order = _create_order(store, obj, certificate=certificate, name=order_name,
                              spec=outcome.spec, now=now)
        store.emit_event(obj=obj, type="Normal", reason="Requested",
                         message=f"Created new Order {order_name}: {violation.message}")

    order_status = order.get("status") or {}
    if order_status.get("state") == "valid" and order_status.get("certificate"):
        if order_status.get("replacesRefused") and settings.order_budget is not None:
            # Placed as an ARI renewal, not counted; issued without `replaces`, the CA counts it.
            order_budget.record_order(store=store, ref=_ledger_ref(
                certificate=certificate, server=order_server, settings=settings),
                order=f"{certificate.namespace}/{order_name}", now=now,
                budget=settings.order_budget)
        chain_pem = base64.b64decode(order_status["certificate"])
        return _store_issued(store, obj, fallback=fallback, issuer=issuer,
                             private_key=private_key, chain_pem=chain_pem, ca_pem=None,
                             failed_request=order_name, now=now, failures=failures,
                             settings=settings)
    if order_status.get("state") in ("invalid", "errored"):
        if settings.order_budget is not None:
            order_budget.refund_order(store=store, ref=_ledger_ref(certificate=certificate,
                                                                   server=order_server,
                                                                   settings=settings),
                                      order=f"{certificate.namespace}/{order_name}")
        retry_after_text = order_status.get("retryAfter")
        retry_after = conditions.parse_time(retry_after_text) if retry_after_text else None
        message = order_status.get("reason") or "the ACME order failed"
        reason = issuer_fallback.order_failure_reason(message)
        if reason is not None and certificate.fallback_issuer_refs:
            return _fall_back(store, obj, fallback=fallback, now=now, request=order_name,
                              reason=reason, message=message, retry_after=retry_after,
                              failures=failures, settings=settings,
                              keep_ready=readiness is None)
        return _failed(store, obj, message=message, request=order_name, failures=failures,
                       now=now, settings=settings, keep_ready=readiness is None,
                       retry_after=retry_after,
                       attempt=fallback.attempt.new_round() if fallback.attempt.failures
                       else None)
    wake: float | None = None  # the Order's progress re-triggers this reconciler
    if fallback.has_next and not order_status.get("url"):
        created = (order.get("metadata") or {}).get("creationTimestamp")
        deadline = (conditions.parse_time(created) if created else now) + \
            settings.order_placement_timeout
        if now >= deadline:
            if settings.order_budget is not None:
                order_budget.refund_order(store=store, ref=_ledger_ref(
                    certificate=certificate, server=order_server, settings=settings),
                    order=f"{certificate.namespace}/{order_name}")
            store.delete(kind="Order", namespace=certificate.namespace, name=order_name)
            return _fall_back(
                store, obj, fallback=fallback, now=now, request=None,
                reason=issuer_fallback.CA_UNREACHABLE,
                message=f"ACME server {order_server} did not take Order {order_name} within "
                f"{parsing.format_duration(settings.order_placement_timeout)} (the Order's "
                "events say why)")
        wake = (deadline - now).total_seconds()
    updated = reconciling.with_condition(obj, type="Issuing", status="True",
                                         reason=violation.reason, message=violation.message,
                                         now=now)
    if readiness is not None:
        updated = reconciling.with_condition(updated, type="Ready", status="False",
                                             reason=readiness.reason, message=readiness.message,
                                             now=now)
    updated["status"]["nextPrivateKeySecretName"] = _next_key_name(certificate)
    reconciling.write_status(store, obj=updated)
    return Result() if wake is None else Result.after(wake)


# --- issuer fallback ------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class _Fallback:
    """The issuer this pass tries: `certificate.issuer_refs[position]`."""

    certificate: Certificate
    attempt: issuer_fallback.Attempt
    position: int

    @property
    def ref(self) -> IssuerRef:
        return self.certificate.issuer_refs[self.position]

    @property
    def tried(self) -> Certificate:
        """The Certificate as this issuer issues it: its Order, kept copy and Secret name
        this issuer."""
        return dataclasses.replace(self.certificate, issuer_ref=self.ref)

    @property
    def has_next(self) -> bool:
        return self.position + 1 < len(self.certificate.issuer_refs)

    @property
    def field(self) -> str:
        return ("spec.issuerRef" if self.position == 0
                else f"spec.fallbackIssuerRefs[{self.position - 1}]")


def _fall_back(
    store: Store,
    obj: Object,
    *,
    fallback: _Fallback,
    now: datetime.datetime,
    request: str | None,
    reason: str,
    message: str,
    retry_after: datetime.datetime | None = None,
    failures: int = 0,
    settings: Settings | None = None,
    keep_ready: bool = True,
) -> Result:
    """The tried issuer failed for `reason`, which another issuer could fix.

    A failed order (`request`) counts one attempt; once the issuer has failed
    `fallbackAfterFailedAttempts` times the next issuer is tried at once, and the last
    one's failure backs off as usual before a new round from the first choice. An
    issuer that cannot start (not ready, unreachable, refusing) or that said when to
    come back (a rate limit's Retry-After) is passed over at once.
    """
    certificate = fallback.certificate
    attempt = fallback.attempt.failed(ref=fallback.ref, reason=reason, message=message,
                                      now=now, retry_after=retry_after)
    threshold = certificate.fallback_after_failed_attempts
    if request is None or (retry_after is not None and retry_after > now):
        # Passed over at once: no order was placed, so there is no attempt to repeat; or
        # the CA said when to come back (Retry-After), which no attempt before then helps.
        attempt = dataclasses.replace(attempt, failures=tuple(
            dataclasses.replace(f, failed_attempts=max(f.failed_attempts, threshold))
            if f.ref == fallback.ref else f for f in attempt.failures))
    failure = attempt.failure_of(fallback.ref)
    assert failure is not None
    if request is not None and (failure.failed_attempts < threshold or not fallback.has_next):
        assert settings is not None
        # Another attempt with this issuer after the backoff, or, after the last one, a new
        # round from the first choice.
        return _failed(store, obj, message=message, request=request, failures=failures,
                       now=now, settings=settings, keep_ready=keep_ready,
                       retry_after=retry_after,
                       attempt=attempt if failure.failed_attempts < threshold
                       else attempt.new_round())
    if not fallback.has_next:
        # The last issuer cannot start either: start over from the first choice when an
        # issuer's verdict next wakes this Certificate (no busy loop meanwhile).
        updated = reconciling.with_condition(obj, type="Issuing", status="False",
                                             reason=failure.reason,
                                             message=failure.describe(), now=now)
        updated["status"]["issuerFallback"] = issuer_fallback.to_status(attempt.new_round())
        if not keep_ready:
            updated = reconciling.with_condition(updated, type="Ready", status="False",
                                                 reason=failure.reason,
                                                 message=failure.describe(), now=now)
        if reconciling.write_status(store, obj=updated):
            store.emit_event(obj=obj, type="Warning", reason=failure.reason,
                             message=f"{fallback.field}: {failure.describe()}")
        return Result.done()
    following = certificate.issuer_refs[fallback.position + 1]
    text = (f"Passing over {fallback.ref.kind} {fallback.ref.name} ({failure.reason}: "
            f"{failure.message}); trying {following.kind} {following.name} next")
    updated = reconciling.with_condition(obj, type="Issuing", status="True",
                                         reason=issuer_fallback.FALLING_BACK, message=text,
                                         now=now)
    updated["status"]["issuerFallback"] = issuer_fallback.to_status(attempt)
    reconciling.write_status(store, obj=updated)
    store.emit_event(obj=obj, type="Warning", reason=issuer_fallback.FALLING_BACK, message=text)
    return Result.after(0)


def _issuer_of_secret(
    store: Store, obj: Object, *, certificate: Certificate, tried: Issuer[IssuerSpec]
) -> Issuer[IssuerSpec]:
    """The issuer that issued the Secret's certificate (`status.issuedBy`), when it is one
    of the Certificate's and can be read; else the one tried now."""
    ref = issuer_fallback.issued_by(obj.get("status") or {}, certificate=certificate)
    if ref is None or (ref.kind, ref.name) == (tried.kind, tried.name):
        return tried
    key = issuer_key(certificate, ref)
    issuer_obj = store.get(kind=key.kind, namespace=key.namespace, name=key.name)
    if issuer_obj is None:
        return tried
    try:
        return parsing.parse_issuer(issuer_obj, source=reconciling.manifest_source(issuer_obj))
    except InvalidObject:
        return tried


def _issued_by_note(
    passed_over: Sequence[issuer_fallback.Failure], *, ref: IssuerRef
) -> str:
    """`; issued by ClusterIssuer b, passed over: ...` for a fallback's certificate."""
    if not passed_over:
        return ""
    return (f"; issued by {ref.kind} {ref.name}, passed over: "
            + "; ".join(failure.describe() for failure in passed_over))


def _other_kind_hint(store: Store, certificate: Certificate) -> str:
    """`; a ClusterIssuer x exists: ...` when the name is right but the kind is not.

    The usual cause: `cert-manager.io/issuer` written for a ClusterIssuer (or
    issuerRef without `kind`, which means Issuer).
    """
    ref = certificate.issuer_ref
    if ref.kind == "Issuer":
        other = store.get(kind="ClusterIssuer", namespace=None, name=ref.name)
        fix = ("set issuerRef.kind: ClusterIssuer (on an Ingress, use the "
               "cert-manager.io/cluster-issuer annotation)")
        kind = "ClusterIssuer"
    else:
        other = store.get(kind="Issuer", namespace=certificate.namespace, name=ref.name)
        fix = ("set issuerRef.kind: Issuer (on an Ingress, use the cert-manager.io/issuer "
               "annotation)")
        kind = f"Issuer in namespace {certificate.namespace}"
    return f"; a {kind} {ref.name} exists: {fix}" if other is not None else ""


def _issuer_problem(
    store: Store, *, issuer_obj: Object, issuer: Issuer[IssuerSpec], certificate: Certificate,
    labels: dict[str, str], env: protocol.Environment,
) -> protocol.Refused | None:
    """Why issuing cannot start now, or None: the issuer is not Ready, or refuses this
    certificate (its type says why); raises `AcmeError` when the CA cannot be asked."""
    issuer_status = issuer_obj.get("status") or {}
    ready = conditions.get_condition(issuer_status.get("conditions") or [], "Ready")
    if ready is None:
        return _NotLookedAt(f"{issuer.kind} {issuer.name} is not ready", reason="IssuerNotReady")
    if ready.get("status") != "True":
        detail = f": {ready['message']}" if ready.get("message") else ""
        return protocol.Refused(f"{issuer.kind} {issuer.name} is not ready{detail}",
                                reason="IssuerNotReady")
    try:
        registry.issuer_type(issuer).refuse(
            store=store, issuer=issuer, certificate=certificate, labels=labels, env=env)
    except protocol.Refused as refused:
        return refused
    return None


class _NotLookedAt(protocol.Refused):
    """The issuer has no Ready condition yet: its reconciler has not run. Not a reason to
    fall back: its verdict wakes this Certificate."""


def _with_renewal_info(
    store: Store, obj: Object, *, data: policies.Input, issuer: Issuer[IssuerSpec],
    now: datetime.datetime, settings: Settings,
) -> policies.Input:
    """`data` with the CA's current renewal window (ARI), asked for when due (issuers that
    place orders only: `data.acme`)."""
    if not data.acme or data.contents is None:
        return data
    window = renewal_info.refresh(store, obj, issuer=issuer, secret=data.secret,
                                  leaf=data.contents.leaf, accounts=settings.accounts, now=now,
                                  draw=settings.draw)
    return dataclasses.replace(data, ari=window)


def _places_orders(issuer: Issuer[IssuerSpec]) -> bool:
    return registry.issuer_type(issuer).order_server(issuer) is not None


def _replaced_cert_id(*, data: policies.Input, issuer: Issuer[IssuerSpec]) -> str | None:
    """The ARI CertID for the new order's `replaces`: the certificate it renews.

    Only a certificate this issuer's CA issued (certctl wrote it from this
    issuer) can be named to it; the Order sends it only to a CA offering ARI.
    """
    if data.contents is None or data.secret is None or not renewal_info.issued_by(
            secret=data.secret, issuer=issuer):
        return None
    return ari.cert_id(data.contents.leaf)


def _retry_time(
    status: Mapping[str, Any], *, failures: int, settings: Settings
) -> datetime.datetime:
    """The backoff after the last failure, or the CA's Retry-After when that is later."""
    retry_at = conditions.parse_time(status["lastFailureTime"]) + failure_backoff(
        failures=failures, settings=settings)
    if status.get("retryAfter"):
        retry_at = max(retry_at, conditions.parse_time(status["retryAfter"]))
    return retry_at


# --- keys ---------------------------------------------------------------------------


def _key_for_issuance(*, certificate: Certificate, data: policies.Input) -> keys.PrivateKey:
    """rotationPolicy Never reuses the Secret's key when it has the wanted shape; else a new one."""
    wanted = certificate.private_key
    if (
        wanted.rotation_policy == "Never"
        and data.contents is not None
        and keys.describe_key(data.contents.key) == policies.wanted_key_shape(wanted)
    ):
        return data.contents.key
    return keys.generate_private_key(wanted)


def _next_key_name(certificate: Certificate) -> str:
    return f"{certificate.name}-next-private-key"


def _next_private_key(
    store: Store, obj: Object, *, certificate: Certificate, data: policies.Input
) -> keys.PrivateKey:
    """The key the pending ACME issuance uses, kept in a Secret so restarts reuse it."""
    name = _next_key_name(certificate)
    existing = store.get(kind="Secret", namespace=certificate.namespace, name=name)
    wanted_shape = policies.wanted_key_shape(certificate.private_key)
    if existing is not None:
        try:
            key = keys.load_private_key(base64.b64decode(existing["data"]["tls.key"]))
            if keys.describe_key(key) == wanted_shape:
                return key
        except (KeyError, ValueError, TypeError):
            logger.warning("%s: next private key Secret %s is unreadable; replacing it",
                           certificate.key, name)
    key = _key_for_issuance(certificate=certificate, data=data)
    secret: Object = {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": name,
            "namespace": certificate.namespace,
            "labels": {NEXT_KEY_LABEL: "true", CERTIFICATE_NAME_LABEL: certificate.name},
            "ownerReferences": [reconciling.owner_reference(obj)],
        },
        "data": {"tls.key": base64.b64encode(keys.encode_private_key(
            key, encoding="PKCS8")).decode()},
    }
    if existing is None:
        store.create(obj=secret)
    else:
        secret["metadata"]["resourceVersion"] = existing["metadata"].get("resourceVersion")
        store.replace(obj=secret)
    return key


# --- issuers that sign in-process -------------------------------------------------------


def _sign_locally(
    store: Store,
    obj: Object,
    *,
    fallback: _Fallback,
    issuer: Issuer[IssuerSpec],
    data: policies.Input,
    violation: policies.Violation,
    now: datetime.datetime,
    settings: Settings,
    env: protocol.Environment,
    keep_ready: bool,
) -> Result:
    """Issuers that place no orders (selfSigned, ca): signed in this pass."""
    certificate = fallback.certificate
    private_key = _key_for_issuance(certificate=certificate, data=data)
    request_pem = csr.build_csr(
        key=private_key,
        dns_names=certificate.dns_names,
        ip_addresses=certificate.ip_addresses,
        common_name=certificate.common_name,
        usages=certificate.usages,
    )
    try:
        outcome = registry.issuer_type(issuer).issue(
            store=store, issuer=issuer, env=env, request=protocol.Request(
                certificate=fallback.tried, csr_pem=request_pem, private_key=private_key,
                now=now))
    except protocol.CannotIssue as err:
        if fallback.has_next:
            return _fall_back(store, obj, fallback=fallback, now=now, request=None,
                              reason=issuer_fallback.ISSUER_NOT_READY, message=str(err))
        return _not_ready(store, obj, reason="IssuerNotReady", message=str(err), now=now,
                          keep_ready=keep_ready)
    assert isinstance(outcome, protocol.Issued)  # an issuer that places no orders
    signed = outcome.certificate
    store.emit_event(obj=obj, type="Normal", reason="Requested",
                     message=f"Issuing a certificate {outcome.how}: {violation.message}")
    return _store_issued(store, obj, fallback=fallback, issuer=issuer,
                         private_key=private_key, chain_pem=signed.chain_pem,
                         ca_pem=signed.ca_pem, failed_request="local-signing", now=now,
                         failures=0, settings=settings)


# --- ACME orders ---------------------------------------------------------------------


def _spend_order_budget(
    store: Store,
    obj: Object,
    *,
    certificate: Certificate,
    server: str,
    order_name: str,
    now: datetime.datetime,
    settings: Settings,
    keep_ready: bool,
    exempt: bool,
) -> Result | None:
    """Count the order about to be placed, or refuse it (a Result) when over budget;
    an `exempt` one (an ARI renewal, see `order_budget.ari_renewal`) is neither."""
    budget = settings.order_budget
    if budget is None or exempt:
        return None
    ledger = _ledger_ref(certificate=certificate, server=server, settings=settings)
    placed = order_budget.placed_orders(store=store, ref=ledger)
    allowed_at = order_budget.next_allowed(placed=placed, now=now, budget=budget)
    if allowed_at is None:
        order_budget.record_order(store=store, ref=ledger, order=f"{certificate.namespace}/"
                                  f"{order_name}", now=now, budget=budget)
        return None
    recent = sum(1 for time in placed if time > now - budget.window)
    message = (f"Not placing an order: {recent} orders for exactly [{', '.join(ledger.names)}] "
               f"were placed with {server} within "
               f"{parsing.format_duration(budget.window)} (failed ones not counted), the budget "
               f"certctl keeps to stay clear of the CA's duplicate-certificate limit "
               f"({budget.describe()}); the next order may be placed at "
               f"{conditions.format_time(allowed_at)}")
    updated = reconciling.with_condition(obj, type="Issuing", status="False",
                                         reason=ORDER_BUDGET_EXHAUSTED, message=message, now=now)
    if not keep_ready:
        updated = reconciling.with_condition(updated, type="Ready", status="False",
                                             reason=ORDER_BUDGET_EXHAUSTED, message=message,
                                             now=now)
    if reconciling.write_status(store, obj=updated):
        store.emit_event(obj=obj, type="Warning", reason=ORDER_BUDGET_EXHAUSTED, message=message)
    return Result.after((allowed_at - now).total_seconds())


def _ledger_ref(
    *, certificate: Certificate, server: str, settings: Settings
) -> order_budget.LedgerRef:
    names = order_budget.name_set(dns_names=certificate.dns_names,
                                  ip_addresses=certificate.ip_addresses,
                                  common_name=certificate.common_name)
    return order_budget.ledger_ref(server=server, names=names,
                                   cluster_resource_namespace=settings.cluster_resource_namespace)


def _order_name(
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


def _create_order(
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


def _delete_unfinished_orders(store: Store, obj: Object, *, keep: str) -> None:
    """Orders for an older spec or key will never be used: drop them (and their challenges)."""
    for order in store.list(kind="Order", namespace=obj["metadata"]["namespace"],
                            labels={CERTIFICATE_NAME_LABEL: obj["metadata"]["name"]}):
        if not reconciling.is_owned_by(order, obj) or order["metadata"]["name"] == keep:
            continue
        if (order.get("status") or {}).get("state") != "valid":
            store.delete(kind="Order", namespace=order["metadata"]["namespace"],
                         name=order["metadata"]["name"])


def _prune_orders(store: Store, obj: Object, *, certificate: Certificate) -> None:
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


# --- issuing -------------------------------------------------------------------------


def _store_issued(
    store: Store,
    obj: Object,
    *,
    fallback: _Fallback,
    issuer: Issuer[IssuerSpec],
    private_key: keys.PrivateKey,
    chain_pem: bytes,
    ca_pem: bytes | None,
    failed_request: str,
    now: datetime.datetime,
    failures: int,
    settings: Settings,
) -> Result:
    """Write the new certificate: kept copy first, then the Secret, then the status."""
    certificate = fallback.certificate
    leaf = inspect.split_pem_chain(chain_pem)[0]
    if not inspect.key_matches_certificate(private_key, leaf):
        # Never publish a key pair that does not belong together; a new order follows.
        return _failed(store, obj, message="the issued certificate does not match the private "
                       "key of the request", request=failed_request, failures=failures,
                       now=now, settings=settings, keep_ready=False, retry_after=None)
    # Another Certificate may have taken the Secret while this one was ordering.
    current = store.get(kind="Secret", namespace=certificate.namespace,
                        name=certificate.secret_name)
    contender = secret_claims.rival(store=store, certificate=certificate, secret=current)
    if contender is not None and secret_claims.is_newer(obj, than=contender):
        return _duplicate(store, obj, holder=contender, now=now)
    key_pem = keys.encode_private_key(private_key, encoding=certificate.private_key.encoding)
    data = tls_secret.build_tls_secret_data(chain_pem=chain_pem, key_pem=key_pem, ca_pem=ca_pem)
    if _places_orders(issuer):
        # Before the Secret: if certctl stops in between, the copy restores the Secret
        # instead of a second order replacing it.
        # One copy per issuer (`fallback.tried` names the one that issued): a copy is
        # restored only as what it is, that issuer's certificate.
        kept_certificates.keep(store=store, certificate=fallback.tried, data=data,
                               ref=kept_certificates.kept_ref(
                                   certificate=fallback.tried,
                                   cluster_resource_namespace=settings.cluster_resource_namespace))
    secret = _write_secret(store, certificate=certificate, ref=fallback.ref,
                           acme=_places_orders(issuer), data=data,
                           info=inspect.certificate_info(leaf), restored_from=None)
    store.delete(kind="Secret", namespace=certificate.namespace,
                 name=_next_key_name(certificate))
    fresh = store.get(kind="Certificate", namespace=certificate.namespace, name=certificate.name)
    if fresh is None:
        return Result.done()
    status = fresh.setdefault("status", {})
    status["revision"] = int(status.get("revision") or 0) + 1
    for stale in ("failedIssuanceAttempts", "lastFailureTime", "lastFailureGeneration",
                  "lastFailedOrder", "retryAfter", "nextPrivateKeySecretName"):
        status.pop(stale, None)
    status["issuedBy"] = issuer_fallback.ref_status(fallback.ref)
    passed_over = fallback.attempt.passed_over(certificate, before=fallback.position)
    if passed_over:
        # Why the first choice did not issue this one, until the next issuance.
        status["issuerFallback"] = issuer_fallback.to_status(dataclasses.replace(
            fallback.attempt, failures=tuple(passed_over)))
    else:
        status.pop("issuerFallback", None)
    _prune_orders(store, fresh, certificate=certificate)
    store.emit_event(obj=fresh, type="Normal", reason="Issuing",
                     message="The certificate has been successfully issued"
                     + _issued_by_note(passed_over, ref=fallback.ref))
    data_input = _with_renewal_info(
        store, fresh, data=policies.read_input(certificate=certificate, secret=secret, now=now,
                                               acme=_places_orders(issuer)),
        issuer=issuer, now=now, settings=settings)
    return _up_to_date(store, fresh, certificate=certificate, data=data_input, now=now)


def _restore_kept_copy(
    store: Store,
    obj: Object,
    *,
    certificate: Certificate,
    violation: policies.Violation,
    now: datetime.datetime,
    settings: Settings,
) -> Result | None:
    """Put a kept copy back when it is still good for the spec; None when none is.

    Each issuer of the Certificate has its own copy; the one of the issuer that issued
    the lost certificate is tried first, then the others, first choice first. A copy is
    restored as what it is: its issuer's certificate (`status.issuedBy` says so).
    """
    issued_by = issuer_fallback.issued_by(obj.get("status") or {}, certificate=certificate)
    for issuer_ref in dict.fromkeys((*([issued_by] if issued_by else []),
                                     *certificate.issuer_refs)):
        restored = _restore_copy_of(store, obj, certificate=certificate, issuer_ref=issuer_ref,
                                    violation=violation, now=now, settings=settings)
        if restored is not None:
            return restored
    return None


def _restore_copy_of(
    store: Store,
    obj: Object,
    *,
    certificate: Certificate,
    issuer_ref: IssuerRef,
    violation: policies.Violation,
    now: datetime.datetime,
    settings: Settings,
) -> Result | None:
    ref = kept_certificates.kept_ref(certificate=dataclasses.replace(
        certificate, issuer_ref=issuer_ref),
        cluster_resource_namespace=settings.cluster_resource_namespace)
    kept = kept_certificates.find(store=store, ref=ref)
    if kept is None:
        return None
    kept_input = policies.read_input(certificate=certificate, secret=kept, now=now, acme=True)
    if policies.needs_issuing(kept_input, policies.READINESS_CHAIN) is not None:
        return None  # expired, or for other names, keys or issuers: only an order helps
    kept_by = (kept.get("metadata", {}).get("annotations") or {})
    if (kept_by.get(annotation_keys.SECRET_ISSUER_NAME) != issuer_ref.name
            or kept_by.get(annotation_keys.SECRET_ISSUER_KIND) != issuer_ref.kind):
        return None  # a copy is restored only for the issuer that issued it
    issuer_key_ = issuer_key(certificate, issuer_ref)
    issuer_obj = store.get(kind=issuer_key_.kind, namespace=issuer_key_.namespace,
                           name=issuer_key_.name)
    if issuer_obj is None:
        return None
    assert kept_input.contents is not None and kept_input.info is not None
    key_pem = keys.encode_private_key(kept_input.contents.key,
                                      encoding=certificate.private_key.encoding)
    data = tls_secret.build_tls_secret_data(chain_pem=kept_input.contents.chain_pem,
                                            key_pem=key_pem, ca_pem=kept_input.contents.ca_pem)
    secret = _write_secret(store, certificate=certificate, ref=issuer_ref, acme=True, data=data,
                           info=kept_input.info, restored_from=str(ref))
    store.emit_event(obj=obj, type="Normal", reason="Restored", message=(
        f"Restored the certificate (serial {kept_input.info.serial:x}, valid until "
        f"{conditions.format_time(kept_input.info.not_after)}) from the copy certctl keeps in "
        f"Secret {ref}, without a new order: {violation.message}"))
    try:
        issuer = parsing.parse_issuer(issuer_obj, source=reconciling.manifest_source(issuer_obj))
    except InvalidObject:
        issuer = None  # the CA's renewal window cannot be asked: the lifetime rules
    written = policies.read_input(certificate=certificate, secret=secret, now=now, acme=True)
    restored = written if issuer is None else _with_renewal_info(
        store, obj, data=written, issuer=issuer, now=now, settings=settings)
    status = obj.setdefault("status", {})
    status["issuedBy"] = issuer_fallback.ref_status(issuer_ref)
    if (status.get("issuerFallback") or {}).get("revision") != status.get("revision"):
        # What failed in this pass is no longer news: nothing was issued.
        status.pop("issuerFallback", None)
    return _up_to_date(store, obj, certificate=certificate, data=restored, now=now)


def _write_secret(
    store: Store,
    *,
    certificate: Certificate,
    ref: IssuerRef,
    acme: bool,
    data: dict[str, str],
    info: inspect.CertificateInfo,
    restored_from: str | None,
) -> Object:
    """Create or update the Secret, as issued by `ref` (an ACME issuer when `acme`);
    returns it as stored."""
    secret_annotations = {
        **dict(certificate.secret_template.annotations),
        annotation_keys.SECRET_CERTIFICATE_NAME: certificate.name,
        annotation_keys.SECRET_ISSUER_NAME: ref.name,
        annotation_keys.SECRET_ISSUER_KIND: ref.kind,
        annotation_keys.SECRET_ISSUER_GROUP: ref.group,
        annotation_keys.SECRET_COMMON_NAME: info.common_name or "",
        annotation_keys.SECRET_ALT_NAMES: ",".join(info.dns_names),
        annotation_keys.SECRET_IP_SANS: ",".join(info.ip_addresses),
        annotation_keys.SECRET_URI_SANS: "",
    }
    if certificate.common_name:
        # The order (or the kept copy, checked against this spec) asked for it.
        secret_annotations[policies.REQUESTED_COMMON_NAME_ANNOTATION] = certificate.common_name
    if acme and certificate.acme_profile:
        secret_annotations[policies.REQUESTED_PROFILE_ANNOTATION] = certificate.acme_profile
    if restored_from is not None:
        secret_annotations[kept_certificates.RESTORED_FROM_ANNOTATION] = restored_from
    labels = {**dict(certificate.secret_template.labels),
              "controller.cert-manager.io/fao": "true"}
    existing = store.get(kind="Secret", namespace=certificate.namespace,
                         name=certificate.secret_name)
    if existing is None:
        secret: Object = {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": tls_secret.SECRET_TYPE,
            "metadata": {"name": certificate.secret_name, "namespace": certificate.namespace,
                         "annotations": secret_annotations, "labels": labels},
            "data": data,
        }
        try:
            return store.create(obj=secret)
        except AlreadyExists:
            existing = store.get(kind="Secret", namespace=certificate.namespace,
                                 name=certificate.secret_name)
            assert existing is not None
    # Keep what others put in the Secret; replace only what we own.
    existing_annotations = existing.setdefault("metadata", {}).setdefault("annotations", {})
    existing_annotations.pop(kept_certificates.RESTORED_FROM_ANNOTATION, None)
    existing_annotations.update(secret_annotations)
    existing["metadata"].setdefault("labels", {}).update(labels)
    # A Secret whose data is not even a mapping (hand-written garbage) is replaced whole.
    old_data = existing.get("data")
    existing_data = ({k: v for k, v in old_data.items() if k != "ca.crt"}
                     if isinstance(old_data, Mapping) else {})
    existing_data.update(data)
    existing["data"] = existing_data
    existing["type"] = tls_secret.SECRET_TYPE
    return store.replace(obj=existing)


def _reencode_key(
    store: Store, *, secret: Object, key: keys.PrivateKey, encoding: KeyEncoding
) -> None:
    data = dict(secret.get("data") or {})
    data[tls_secret.TLS_PRIVATE_KEY_KEY] = base64.b64encode(
        keys.encode_private_key(key, encoding=encoding)).decode("ascii")
    secret["data"] = data
    store.replace(obj=secret)


# --- status ----------------------------------------------------------------------------


def _failed(
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
    status = obj.setdefault("status", {})
    if attempt is not None:
        status["issuerFallback"] = issuer_fallback.to_status(attempt)
    text = f"The certificate request has failed to complete and will be retried: {message}"
    if status.get("lastFailedOrder") != request:
        failures += 1
        status["failedIssuanceAttempts"] = failures
        status["lastFailureTime"] = conditions.format_time(now)
        status["lastFailureGeneration"] = obj["metadata"].get("generation")
        status["lastFailedOrder"] = request
        if retry_after is not None:
            status["retryAfter"] = conditions.format_time(retry_after)
        else:
            status.pop("retryAfter", None)
        store.emit_event(obj=obj, type="Warning", reason="Failed", message=text)
    updated = reconciling.with_condition(obj, type="Issuing", status="False", reason="Failed",
                                         message=text, now=now)
    if not keep_ready:
        updated = reconciling.with_condition(updated, type="Ready", status="False",
                                             reason="Failed", message=text, now=now)
    reconciling.write_status(store, obj=updated)
    retry_at = _retry_time(status, failures=int(status.get("failedIssuanceAttempts") or 1),
                           settings=settings)
    return Result.after((retry_at - now).total_seconds())


def _duplicate(store: Store, obj: Object, *, holder: Mapping[str, Any],
               now: datetime.datetime) -> Result:
    """Mark `obj` as standing down for `holder`, the older Certificate naming its Secret."""
    message = secret_claims.duplicate_message(secret_name=obj["spec"]["secretName"],
                                              holder=holder)
    updated = reconciling.with_condition(obj, type="Ready", status="False",
                                         reason=secret_claims.DUPLICATE_SECRET_NAME,
                                         message=message, now=now)
    updated = reconciling.with_condition(updated, type="Issuing", status="False",
                                         reason=secret_claims.DUPLICATE_SECRET_NAME,
                                         message=message, now=now)
    if reconciling.write_status(store, obj=updated):
        store.emit_event(obj=obj, type="Warning", reason=secret_claims.DUPLICATE_SECRET_NAME,
                         message=message)
    return Result.after(DUPLICATE_RECHECK_SECONDS)


def _up_to_date(
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
        _reencode_key(store, secret=dict(data.secret), key=data.contents.key,
                      encoding=wanted_encoding)
    renewal_time, source = policies.renewal_schedule(data)
    message = "Certificate is up to date and has not expired"
    restored_from = ((data.secret.get("metadata") or {}).get("annotations") or {}).get(
        kept_certificates.RESTORED_FROM_ANNOTATION)
    if restored_from:
        message += (f"; restored from the copy certctl keeps in Secret {restored_from}, "
                    "without a new order")
    status_now = obj.get("status") or {}
    issued_by = issuer_fallback.issued_by(status_now, certificate=certificate)
    if issued_by is not None and issued_by != certificate.issuer_ref:
        attempt = issuer_fallback.read({**status_now, "revision": int(
            status_now.get("revision") or 1) - 1}, certificate=certificate)
        message += _issued_by_note(
            attempt.passed_over(certificate, before=certificate.issuer_refs.index(issued_by))
            or [], ref=issued_by) or f"; issued by {issued_by.kind} {issued_by.name}"
    updated = reconciling.with_condition(obj, type="Ready", status="True", reason="Ready",
                                         message=message, now=now)
    updated = reconciling.without_condition(updated, type="Issuing")
    status = updated["status"]
    status["notBefore"] = conditions.format_time(data.info.not_before)
    status["notAfter"] = conditions.format_time(data.info.not_after)
    status["renewalTime"] = conditions.format_time(renewal_time)
    status["renewalTimeSource"] = source
    status.pop("nextPrivateKeySecretName", None)
    reconciling.write_status(store, obj=updated)
    wake = renewal_time
    check = renewal_info.next_check(status)
    if check is not None and data.acme and now < check < wake:
        wake = check  # the CA may move the window: ask again when it said to
    return Result.after((wake - now).total_seconds())


def _not_ready(
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
    updated = obj
    if not keep_ready:
        updated = reconciling.with_condition(updated, type="Ready", status="False",
                                             reason=reason, message=message, now=now)
    updated = reconciling.with_condition(updated, type="Issuing", status="False", reason=reason,
                                         message=message, now=now)
    if reconciling.write_status(store, obj=updated):
        store.emit_event(obj=obj, type="Warning", reason=reason,
                         message=f"{field}: {message}" if field else message)
    return Result.done()
