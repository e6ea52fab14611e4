"""The Certificate reconciler: trigger, key manager, request manager, issuing, readiness.

One pass decides, in cert-manager's order:
- is the Certificate valid and its issuer present? (else `Ready=False` and stop:
  no key, no order, no ACME traffic); with `spec.fallbackIssuerRefs`, which issuer
  this issuance tries now (`issuer_fallback`: the first choice, unless it failed in
  this issuance for a reason the next one could fix; `certificate_fallback` moves on);
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
  in this pass (selfSigned, ca) or says which order to place; for ACME, which Order? (named
  from a hash of everything the CSR depends on, so a restart finds the order
  it placed instead of placing a second one, and counted against the order
  budget before it is placed; it names the certificate it `replaces`, and a
  `spec.acme.profile` the CA does not offer stops it before ordering); the status says
  Issuing, and the Requested Event is emitted, once the order has run a second
  (`Settings.untold_issuance`): most end sooner, and then the status is written once,
  at the end, and the Issuing Event names the Order and why it was placed;
- when the certificate is there: write the `kubernetes.io/tls` Secret, keep a
  copy, bump the revision, mark Ready and requeue at the renewal time, or at
  the CA's next ARI check when that comes first (a timer in the work queue,
  not a poll).

This module is that pass; its steps live in modules named for them:
`certificate_settings` (settings, failure backoff), `certificate_issuer` (finding and
asking the issuer), `certificate_fallback` (passing over an issuer),
`certificate_keys` (private key, CSR), `certificate_local_signing` (selfSigned, ca),
`certificate_orders` (ACME Orders, order budget), `certificate_issuing` (Secret, kept
copy, restoring it) and `certificate_status` (Ready, failures, duplicates).
"""

from __future__ import annotations

import dataclasses

from certctl.api import conditions, parsing
from certctl.api.errors import InvalidObject
from certctl.api.resources import ObjectKey
from certctl.api.status import CertificateStatus, OrderStatus
from certctl.controllers import (
    certificate_fallback,
    certificate_issuer,
    certificate_issuing,
    certificate_keys,
    certificate_local_signing,
    certificate_orders,
    certificate_settings,
    certificate_status,
    issuer_fallback,
    order_budget,
    policies,
    reconciling,
    renewal_info,
    secret_claims,
)
from certctl.controllers.certificate_fallback import Fallback
from certctl.controllers.certificate_settings import Settings
from certctl.controllers.reconciling import Result
from certctl.issuers import protocol, registry
from certctl.issuers.acme import errors as acme_errors
from certctl.store.interface import Store

# A lost or unreadable Secret may be replaced by the kept copy; other triggers
# (names changed, renewal due...) need a certificate the copy is not.
RESTORABLE = (policies.DOES_NOT_EXIST, policies.INVALID_CERTIFICATE, policies.INVALID_KEY_PAIR)


def reconcile(*, store: Store, key: ObjectKey, settings: Settings) -> Result:
    obj = store.get(kind="Certificate", namespace=key.namespace, name=key.name)
    if obj is None:
        settings.untold.pop(key)
        return Result.done()
    now = settings.clock()
    try:
        certificate = parsing.parse_certificate(obj, source=reconciling.manifest_source(obj))
    except InvalidObject as err:
        return certificate_status.not_ready(store, obj, reason="BadConfig", message=err.detail,
                                            now=now)

    # Which of the Certificate's issuers this issuance tries now (issuer_fallback): the
    # first choice unless it failed in this issuance for a reason the next one could fix.
    attempt = issuer_fallback.read(CertificateStatus.from_object(obj), certificate=certificate)
    position = attempt.current_index(certificate)
    fallback = Fallback(certificate=certificate, attempt=attempt, position=position)
    tried = fallback.tried
    issuer_ref = certificate_issuer.issuer_key(tried)
    issuer_obj = store.get(kind=issuer_ref.kind, namespace=issuer_ref.namespace,
                           name=issuer_ref.name)
    if issuer_obj is None:
        # Not a reason to fall back: a typo in the Certificate, or an issuer not applied
        # yet (falling back would issue from the second choice on every first deploy).
        return certificate_status.not_ready(
            store, obj, reason="IssuerNotFound",
            message=f"{issuer_ref.kind} {issuer_ref.name} not found"
            f"{certificate_issuer.other_kind_hint(store, tried)}", now=now,
            field=fallback.field)
    try:
        issuer = parsing.parse_issuer(issuer_obj, source=reconciling.manifest_source(issuer_obj))
    except InvalidObject as err:
        message = f"{issuer_ref.kind} {issuer_ref.name} is invalid: {err.detail}"
        if fallback.has_next:
            return certificate_fallback.fall_back(
                store, obj, fallback=fallback, now=now, request=None,
                reason=issuer_fallback.ISSUER_NOT_READY, message=message)
        return certificate_status.not_ready(store, obj, reason="IssuerNotReady", message=message,
                                            now=now)
    issuer_type = registry.issuer_type(issuer)
    order_server = issuer_type.order_server(issuer)
    # The Secret is judged (ACME renewal rules, the CA's renewal window) by the issuer
    # that issued it, which may be a fallback.
    judge = certificate_issuer.issuer_of_secret(store, obj, certificate=certificate, tried=issuer)
    env = protocol.Environment(cluster_resource_namespace=settings.cluster_resource_namespace,
                               accounts=settings.accounts)

    secret = store.get(kind="Secret", namespace=certificate.namespace,
                       name=certificate.secret_name)
    contender = secret_claims.rival(store=store, certificate=certificate, secret=secret)
    if contender is not None:
        if secret_claims.is_newer(obj, than=contender):
            return certificate_status.duplicate(store, obj, holder=contender, now=now)
        certificate_status.duplicate(store, contender, holder=obj, now=now)
    if secret is not None and secret_claims.writer_of(secret) not in (None, certificate.name):
        # Written by a Certificate that lost it (or is gone): claim it now, not after the
        # next issuance, so the loser reading the Secret meanwhile sees who holds it.
        secret = secret_claims.claim(store=store, certificate=certificate, secret=secret)

    issuing = CertificateStatus.from_object(obj).condition("Issuing")
    data = policies.read_input(
        certificate=certificate, secret=secret, now=now,
        renewal_requested=issuing is not None and issuing.status == "True"
        and issuing.reason == policies.MANUALLY_TRIGGERED,
        acme=certificate_issuer.places_orders(judge),
        ari=renewal_info.stored_window(obj.get("status") or {}))
    readiness = policies.needs_issuing(data, policies.READINESS_CHAIN)
    if readiness is None:
        data = certificate_issuer.with_renewal_info(store, obj, data=data, issuer=judge, now=now,
                                                    settings=settings)
    violation = policies.needs_issuing(data)
    if violation is None:
        return certificate_status.up_to_date(store, obj, certificate=certificate, data=data,
                                             now=now)
    data = dataclasses.replace(data, acme=order_server is not None)

    # A kept copy needs no issuer: it comes back even while the CA is down. Looked for
    # once an issuance: a pass that found none went on to place the order and said
    # Issuing for this reason, and the passes after it (one per step of the order) would
    # each ask the API for the same missing Secret, when a copy could not save the order.
    # An issuance not told of yet (`Settings.untold_issuance`) looked too.
    untold = settings.untold.get(key)
    looked_for_copy = ((issuing is not None and issuing.status == "True"
                        and issuing.reason == violation.reason)
                       or (untold is not None and untold.reason == violation.reason))
    if order_server is not None and violation.reason in RESTORABLE and not looked_for_copy:
        restored = certificate_issuing.restore_kept_copy(
            store, obj, certificate=certificate, violation=violation, now=now,
            settings=settings)
        if restored is not None:
            return restored

    try:
        problem = certificate_issuer.issuer_problem(
            store, issuer_obj=issuer_obj, issuer=issuer, certificate=tried,
            labels=obj["metadata"].get("labels") or {}, env=env)
    except acme_errors.AcmeError as err:  # the CA could not be asked
        if not fallback.has_next:
            raise reconciling.TransientError(str(err)) from err
        return certificate_fallback.fall_back(
            store, obj, fallback=fallback, now=now, request=None,
            reason=issuer_fallback.CA_UNREACHABLE, message=str(err))
    if isinstance(problem, certificate_issuer.NotLookedAt):
        # The issuer's reconciler has not run yet (it is registering its account at a
        # first start): its verdict wakes this Certificate, which waits without a word
        # meanwhile. A Warning and a status write for each of thousands of Certificates,
        # at every first start, told of nothing wrong.
        return Result.done()
    if problem is not None:
        if fallback.has_next:
            return certificate_fallback.fall_back(
                store, obj, fallback=fallback, now=now, request=None,
                reason=(issuer_fallback.ISSUER_NOT_READY if problem.reason == "IssuerNotReady"
                        else issuer_fallback.REFUSED), message=str(problem))
        return certificate_status.not_ready(store, obj, reason=problem.reason,
                                            message=str(problem), now=now,
                                            keep_ready=readiness is None)

    status = CertificateStatus.from_object(obj)
    failures = status.failed_issuance_attempts or 0
    if failures and status.last_failure_generation != obj["metadata"].get("generation"):
        failures = 0  # a spec change deserves a fresh attempt, as in cert-manager
    if failures and status.last_failure_time is not None:
        retry_at = certificate_settings.retry_time(
            last_failure=status.last_failure_time, retry_after=status.retry_after,
            failures=failures, settings=settings)
        if now < retry_at:
            return Result.after((retry_at - now).total_seconds())

    if order_server is None:
        return certificate_local_signing.sign_locally(
            store, obj, fallback=fallback, issuer=issuer, data=data, violation=violation,
            secret=secret, now=now, settings=settings, env=env, keep_ready=readiness is None)

    # The ledger of the names keeps the pending order's key, and counts the orders.
    ledger = certificate_orders.ledger_ref(certificate=certificate, server=order_server,
                                           settings=settings)
    recorded = order_budget.read_ledger(store=store, ref=ledger)
    private_key, new_key = certificate_keys.next_private_key(
        ledger=recorded, certificate=certificate, data=data, revision=status.revision or 0)
    order_name = certificate_orders.order_name(certificate=certificate, obj=obj,
                                               private_key=private_key, failures=failures,
                                               issuer=fallback.ref)
    order = store.get(kind="Order", namespace=certificate.namespace, name=order_name)
    if order is None:
        replaces = certificate_issuer.replaced_cert_id(data=data, issuer=issuer)
        refused = certificate_orders.enter_order(
            store, obj, certificate=certificate, ledger=ledger, recorded=recorded,
            key=new_key, order_name=order_name, now=now, settings=settings,
            keep_ready=readiness is None,
            exempt=order_budget.ari_renewal(replaces=replaces, window=data.ari, now=now))
        if refused is not None:
            return refused
        certificate_orders.delete_unfinished_orders(store, obj, keep=order_name)
        request_pem = certificate_keys.signing_request(certificate=certificate, key=private_key)
        outcome = issuer_type.issue(store=store, issuer=issuer, env=env, request=protocol.Request(
            certificate=tried, csr_pem=request_pem, private_key=private_key, now=now,
            replaces=replaces))
        assert isinstance(outcome, protocol.Ordered)  # an issuer that places orders
        order = certificate_orders.create_order(store, obj, certificate=certificate,
                                                name=order_name, spec=outcome.spec, now=now)
        started = certificate_settings.Untold(order=order_name, at=now,
                                              reason=violation.reason, message=violation.message)
        if settings.untold_issuance:
            settings.untold.start(key, started)
            untold = started
        else:
            store.emit_event(obj=obj, type="Normal", reason="Requested",
                             message=started.requested)

    order_status = OrderStatus.from_object(order)
    if order_status.state == "valid" and order_status.certificate:
        if order_status.replaces_refused and settings.order_budget is not None:
            # Placed as an ARI renewal, not counted; issued without `replaces`, the CA counts it.
            order_budget.record(
                store=store, ref=ledger, ledger=recorded, key=None,
                order=f"{certificate.namespace}/{order_name}", now=now,
                budget=settings.order_budget)
        untold = settings.untold.pop(key, order=order_name)
        return certificate_issuing.store_issued(
            store, obj, fallback=fallback, issuer=issuer, private_key=private_key,
            chain_pem=order_status.certificate, ca_pem=None, current=secret,
            failed_request=order_name, now=now, failures=failures, settings=settings,
            requested=None if untold is None else f"by Order {order_name} ({untold.message})")
    if order_status.state in ("invalid", "errored"):
        settings.untold.pop(key)
        if settings.order_budget is not None:
            order_budget.refund_order(store=store, ref=ledger,
                                      order=f"{certificate.namespace}/{order_name}")
        retry_after = order_status.retry_after
        message = order_status.reason or "the ACME order failed"
        reason = issuer_fallback.order_failure_reason(message)
        if reason is not None and certificate.fallback_issuer_refs:
            return certificate_fallback.fall_back(
                store, obj, fallback=fallback, now=now, request=order_name, reason=reason,
                message=message, retry_after=retry_after, failures=failures,
                settings=settings, keep_ready=readiness is None)
        return certificate_status.failed(
            store, obj, message=message, request=order_name, failures=failures, now=now,
            settings=settings, keep_ready=readiness is None, retry_after=retry_after,
            attempt=fallback.attempt.new_round() if fallback.attempt.failures else None)
    wake: float | None = None  # the Order's progress re-triggers this reconciler
    if fallback.has_next and not order_status.url:
        created = (order.get("metadata") or {}).get("creationTimestamp")
        deadline = (conditions.parse_time(created) if created else now) + \
            settings.order_placement_timeout
        if now >= deadline:
            if settings.order_budget is not None:
                order_budget.refund_order(store=store, ref=ledger,
                                          order=f"{certificate.namespace}/{order_name}")
            store.delete(kind="Order", namespace=certificate.namespace, name=order_name)
            settings.untold.pop(key)
            return certificate_fallback.fall_back(
                store, obj, fallback=fallback, now=now, request=None,
                reason=issuer_fallback.CA_UNREACHABLE,
                message=f"ACME server {order_server} did not take Order {order_name} within "
                f"{parsing.format_duration(settings.order_placement_timeout)} (the Order's "
                "events say why)")
        wake = (deadline - now).total_seconds()
    if untold is not None and untold.order == order_name:
        unsaid = (untold.at + settings.untold_issuance - now).total_seconds()
        if unsaid > 0:
            return Result.after(unsaid if wake is None else min(unsaid, wake))
        settings.untold.pop(key)
        store.emit_event(obj=obj, type="Normal", reason="Requested", message=untold.requested)
    status = CertificateStatus.from_object(obj)
    status.set_condition(type="Issuing", status="True", reason=violation.reason,
                         message=violation.message, now=now,
                         observed_generation=obj["metadata"].get("generation", 0))
    if readiness is not None:
        status.set_condition(type="Ready", status="False", reason=readiness.reason,
                             message=readiness.message, now=now,
                             observed_generation=obj["metadata"].get("generation", 0))
    reconciling.write_status(store, obj=obj, status=status)
    return Result() if wake is None else Result.after(wake)
