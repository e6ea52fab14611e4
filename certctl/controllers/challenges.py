"""The Challenge reconciler: present, self-check, accept, wait for the CA's verdict.

HTTP-01 needs no solver pod: the data plane answers
`/.well-known/acme-challenge/<token>` from live Challenge objects, so a
Challenge is presented as soon as it exists. In a cluster, where the host
may be served by another Ingress controller, a temporary solver Ingress
routes the token path to the data plane (`solvers.http01_ingress`); it is
deleted as soon as the challenge ends, valid or not. Before asking the CA to
validate, certctl fetches the token itself the way the CA will (the
self-check); telling the CA too early would burn the authorization, since a
failed validation is final. Self-check retries back off from 50 ms so a
fast path stays fast and a broken one stays cheap.

DNS-01 goes through the issuer solver's DNS provider (`solvers.dns01`): the
TXT record is written once, the self-check waits until the zone's
nameservers serve it (failing the challenge after the propagation timeout),
and the record is removed when the challenge ends, valid or not, and when
the Challenge is deleted. What a provider needs to remove a record lives in
the process that wrote it, so an ending Order does not delete a DNS-01
Challenge whose record is out there: the Challenge sees its Order ended,
removes the record (rebuilt from its spec after a restart) and is deleted
after that. A provider that refuses its configuration or
credentials fails the challenge at once, without asking the CA anything:
retrying would not help, and the Order reports the reason.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from certctl.api import parsing
from certctl.api.errors import InvalidObject
from certctl.api.resources import Challenge, Issuer, ObjectKey
from certctl.controllers import acme_accounts, orders, reconciling
from certctl.controllers.reconciling import Clock, Result, TransientError
from certctl.issuers.acme import errors as acme_errors
from certctl.solvers import http01, http01_ingress
from certctl.solvers.dns01 import errors as dns01_errors
from certctl.solvers.dns01 import propagation
from certctl.solvers.dns01 import solver as dns01_solver
from certctl.store.interface import AlreadyExists, Object, Store

logger = logging.getLogger(__name__)

SelfCheck = Callable[[Challenge], None]  # raises http01.SelfCheckFailed

FIRST_RETRY = 0.05
LONGEST_RETRY = 10.0


@dataclass(kw_only=True)
class Settings:
    clock: Clock
    accounts: acme_accounts.AcmeAccounts
    self_check: SelfCheck
    # Set in a cluster: solver Ingresses route tokens to this Service.
    data_plane: http01_ingress.DataPlaneService | None = None
    # DNS-01 providers, lookups and what this process presented.
    dns01: dns01_solver.Dns01Solver = field(default_factory=dns01_solver.Dns01Solver)
    # Per-challenge retry counters: in memory on purpose, a restart may start
    # polling fast again.
    _attempts: dict[ObjectKey, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def next_delay(self, key: ObjectKey) -> float:
        with self._lock:
            attempt = self._attempts.get(key, 0)
            self._attempts[key] = attempt + 1
        return min(LONGEST_RETRY, FIRST_RETRY * (1 << min(attempt, 16)))

    def forget(self, key: ObjectKey) -> None:
        with self._lock:
            self._attempts.pop(key, None)


def reconcile(*, store: Store, key: ObjectKey, settings: Settings) -> Result:
    obj = store.get(kind="Challenge", namespace=key.namespace, name=key.name)
    if obj is None:
        _clean_up(store, key=key, settings=settings)
        return _remove_txt_record_of_deleted(key=key, settings=settings)
    status = obj.setdefault("status", {})
    if status.get("state") in ("valid", "invalid"):
        settings.forget(key)
        _clean_up(store, key=key, settings=settings)
        return Result.done()
    if (obj.get("spec") or {}).get("type") == "DNS-01":
        # Its Order leaves a DNS-01 Challenge to end itself, so the record goes first.
        ended = _order_ended(store, obj)
        if ended is not None:
            return _finish(store, obj, state="valid" if ended == "valid" else "invalid",
                           reason=f"Its Order is {ended}: the challenge ends with it",
                           settings=settings)
    try:
        challenge = parsing.parse_challenge(obj)
    except InvalidObject as err:
        return _finish(store, obj, state="invalid", reason=str(err), settings=settings)
    issuer = acme_accounts.find_acme_issuer(
        store=store, kind=challenge.issuer_ref.kind, name=challenge.issuer_ref.name,
        namespace=challenge.namespace)
    if issuer is None:
        raise TransientError(f"{key}: issuer {challenge.issuer_ref.name} is missing or invalid")
    if challenge.type == "DNS-01":
        if not status.get("processing"):
            waiting = _present_txt_record(store, obj, key=key, challenge=challenge,
                                          issuer=issuer, settings=settings)
            if waiting is not None:
                return waiting
    else:
        if not status.get("processing") and settings.data_plane is not None:
            _route_token(store, obj, challenge=challenge, issuer=issuer,
                         data_plane=settings.data_plane)
        if not status.get("presented"):
            status.update(presented=True, processing=False, state="pending",
                          reason="Presented: the data plane answers the HTTP-01 token")
            reconciling.write_status(store, obj=obj)

    try:
        client = settings.accounts.client(store=store, issuer=issuer)
        if not status.get("processing"):
            try:
                _self_check(challenge, key=key, settings=settings)
            except (http01.SelfCheckFailed, propagation.NotVisible) as err:
                return _wait_for_propagation(store, obj, key=key, challenge=challenge,
                                             error=err, settings=settings)
            settings.forget(key)
            state = client.answer_challenge(challenge.url)
            status.update(processing=True, state=state.status,
                          reason="Accepted: waiting for the ACME server to validate")
            reconciling.write_status(store, obj=obj)
        else:
            state = client.get_challenge(challenge.url)
    except acme_errors.AcmeNotFound as err:
        # The server forgot the challenge (a restarted CA): it can never be solved. Its
        # Order, woken by this, finds its own URL forgotten too and places a new order.
        return _finish(store, obj, state="invalid", settings=settings,
                       reason=f"The ACME server forgot this challenge: {err}")
    except acme_errors.AccountDoesNotExist as err:
        # The server forgot the account: the Order registers it again and starts over.
        # Saying so in the status wakes the Order now rather than at its next poll.
        status["reason"] = f"The ACME server forgot this challenge's account: {err}"
        reconciling.write_status(store, obj=obj)
        raise TransientError(f"{key}: {err}") from err
    except (acme_errors.AcmeError, LookupError) as err:
        raise TransientError(f"{key}: {err}") from err

    if state.status == "valid":
        return _finish(store, obj, state="valid", reason="Successfully authorized domain",
                       settings=settings)
    if state.status == "invalid":
        detail = state.error.detail if state.error is not None else "no detail given"
        return _finish(store, obj, state="invalid", settings=settings,
                       reason=f"Accepting challenge authorization failed: {detail}")
    now = settings.clock()
    if state.retry_after is not None and state.retry_after > now:
        return Result.after((state.retry_after - now).total_seconds())
    return Result.after(settings.next_delay(key))


def _order_ended(store: Store, obj: Object) -> str | None:
    """The final state of the Order owning this Challenge; None while it runs (or is gone,
    when the store deletes the Challenge with it)."""
    owner = reconciling.controller_of(obj)
    if owner is None or owner.kind != "Order":
        return None
    order = store.get(kind="Order", namespace=owner.namespace, name=owner.name)
    state = ((order or {}).get("status") or {}).get("state")
    return state if state in orders.FINAL_STATES else None


def _route_token(
    store: Store,
    obj: Object,
    *,
    challenge: Challenge,
    issuer: Issuer,
    data_plane: http01_ingress.DataPlaneService,
) -> None:
    """Create the solver Service and a solver Ingress if missing (they never change while
    the challenge lives: the token and host are fixed), or, when the solver names an
    Ingress (`http01.ingress.name`), add the token path to that Ingress instead."""
    assert issuer.acme is not None
    solvers = issuer.acme.solvers
    solver = solvers[challenge.solver_index].http01 if challenge.solver_index < len(
        solvers) else None
    _create_if_missing(store, http01_ingress.solver_service(challenge_obj=obj,
                                                            data_plane=data_plane))
    url = f"http://{challenge.dns_name}{http01_ingress.CHALLENGE_PATH}{challenge.token}"
    if solver is not None and solver.name:
        named = store.get(kind="Ingress", namespace=challenge.namespace, name=solver.name)
        if named is None:
            raise TransientError(
                f"{challenge.key_ref}: Ingress {challenge.namespace}/{solver.name} named by "
                f"{issuer.kind} {issuer.name} spec.acme.solvers[{challenge.solver_index}]"
                ".http01.ingress.name does not exist")
        updated = http01_ingress.with_challenge_path(ingress_obj=named, challenge=challenge,
                                                     data_plane=data_plane)
        if updated is not None:
            store.replace(obj=updated)  # a Conflict is retried by the queue
            store.emit_event(obj=obj, type="Normal", reason="Presented",
                             message=f"Added {url} to Ingress {solver.name}, routed to the "
                             "data plane")
        return
    ingress = http01_ingress.solver_ingress(challenge_obj=obj, challenge=challenge,
                                            solver=solver, data_plane=data_plane)
    if _create_if_missing(store, ingress):
        store.emit_event(obj=obj, type="Normal", reason="Presented",
                         message=f"Created solver Ingress {ingress['metadata']['name']} "
                         f"routing {url} to the data plane")


def _create_if_missing(store: Store, dependent: Object) -> bool:
    """True if this call created it."""
    meta = dependent["metadata"]
    if store.get(kind=dependent["kind"], namespace=meta["namespace"],
                 name=meta["name"]) is not None:
        return False
    try:
        store.create(obj=dependent)
    except AlreadyExists:
        return False
    return True


def _present_txt_record(
    store: Store,
    obj: Object,
    *,
    key: ObjectKey,
    challenge: Challenge,
    issuer: Issuer,
    settings: Settings,
) -> Result | None:
    """Write the TXT record unless this process already did; a Result means "stop here".

    A restarted controller writes it again (providers make that a no-op),
    which also brings back what cleanup on deletion needs.
    """
    if settings.dns01.presented(key) is not None:
        return None
    status = obj.setdefault("status", {})
    try:
        presented = settings.dns01.present(
            key=key, store=store, issuer=issuer, challenge=challenge, now=settings.clock(),
            cluster_resource_namespace=settings.accounts.cluster_resource_namespace)
    except dns01_errors.Dns01Error as err:
        if err.permanent:
            return _finish(store, obj, state="invalid", settings=settings,
                           reason=f"Error presenting DNS-01 challenge: {err}")
        status.update(state="pending", reason=f"Error presenting DNS-01 challenge: {err}")
        if reconciling.write_status(store, obj=obj):  # once per distinct failure
            store.emit_event(obj=obj, type="Warning", reason="PresentError", message=str(err))
        return Result.after(settings.next_delay(key))
    status.update(presented=True, processing=False, state="pending",
                  reason=f"Presented: {presented.describe()}")
    if reconciling.write_status(store, obj=obj):
        store.emit_event(obj=obj, type="Normal", reason="Presented",
                         message=f"Presented challenge using DNS-01: {presented.describe()}")
    return None


def _self_check(challenge: Challenge, *, key: ObjectKey, settings: Settings) -> None:
    """Raise SelfCheckFailed (HTTP-01) or NotVisible (DNS-01) until the CA would succeed."""
    if challenge.type != "DNS-01":
        settings.self_check(challenge)
        return
    presented = settings.dns01.presented(key)
    assert presented is not None  # _present_txt_record ran first in this pass
    settings.dns01.check(record=presented.record)


def _wait_for_propagation(
    store: Store,
    obj: Object,
    *,
    key: ObjectKey,
    challenge: Challenge,
    error: Exception,
    settings: Settings,
) -> Result:
    """Record why the self-check failed, once per distinct failure, and look again soon;
    a DNS-01 record still not served after the propagation timeout fails the challenge."""
    presented = settings.dns01.presented(key) if challenge.type == "DNS-01" else None
    if presented is not None:
        waited = settings.clock() - presented.presented_at
        if waited > settings.dns01.options.propagation_timeout:
            return _finish(store, obj, state="invalid", settings=settings,
                           reason=f"DNS-01 self-check failed after waiting"
                           f" {int(waited.total_seconds())}s: {error}")
    status = obj.setdefault("status", {})
    status["reason"] = f"Waiting for {challenge.type} challenge propagation: {error}"
    if reconciling.write_status(store, obj=obj):  # once per distinct failure
        store.emit_event(obj=obj, type="Warning", reason="SelfCheckFailed", message=str(error))
    return Result.after(settings.next_delay(key))


def _remove_txt_record(store: Store, obj: Object, *, settings: Settings) -> None:
    """Remove an ending DNS-01 challenge's record (also after a restart, from its spec).

    A temporary failure raises TransientError so the challenge is not
    recorded as ended before its record is gone; a permanent one (the
    credentials were revoked meanwhile) is reported and given up on.
    """
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    if spec.get("type") != "DNS-01" or not status.get("presented"):
        return
    key = reconciling.key_of(obj)
    rebuild_from = None
    if settings.dns01.presented(key) is None:
        try:
            challenge = parsing.parse_challenge(obj)
        except InvalidObject:
            return
        issuer = acme_accounts.find_acme_issuer(
            store=store, kind=challenge.issuer_ref.kind, name=challenge.issuer_ref.name,
            namespace=challenge.namespace)
        if issuer is None:
            logger.warning("%s: cannot remove its TXT record: issuer %s is gone", key,
                           challenge.issuer_ref.name)
            return
        rebuild_from = (store, issuer, challenge, settings.accounts.cluster_resource_namespace)
    try:
        removed = settings.dns01.cleanup(key=key, rebuild_from=rebuild_from)
    except dns01_errors.Dns01Error as err:
        if not err.permanent:
            raise TransientError(f"{key}: removing the DNS-01 TXT record: {err}") from err
        settings.dns01.forget(key)
        store.emit_event(obj=obj, type="Warning", reason="CleanUpError",
                         message=f"Could not remove the DNS-01 TXT record: {err}")
        return
    if removed is not None:
        store.emit_event(obj=obj, type="Normal", reason="CleanedUp",
                         message=f"Removed {removed.describe()}")


def _remove_txt_record_of_deleted(*, key: ObjectKey, settings: Settings) -> Result:
    """The Challenge is gone: remove what this process presented for it, retrying
    temporary failures (nothing else will ever remove it)."""
    try:
        removed = settings.dns01.cleanup(key=key)
    except dns01_errors.Dns01Error as err:
        if not err.permanent:
            logger.warning("%s was deleted; removing its DNS-01 TXT record failed, will retry:"
                           " %s", key, err)
            return Result.after(settings.next_delay(key))
        settings.dns01.forget(key)
        logger.warning("%s was deleted; could not remove its DNS-01 TXT record: %s", key, err)
        settings.forget(key)
        return Result.done()
    if removed is not None:
        logger.info("%s was deleted; removed %s", key, removed.describe())
    settings.forget(key)
    return Result.done()


def _clean_up(store: Store, *, key: ObjectKey, settings: Settings) -> None:
    """Delete the solver objects of a finished or deleted challenge, and its token paths
    from Ingresses it edited (`http01.ingress.name`); a no-op for what is absent."""
    if settings.data_plane is None:
        return
    for ingress in store.list(kind="Ingress", namespace=key.namespace):
        if (ingress["metadata"].get("labels") or {}).get(http01_ingress.CHALLENGE_LABEL):
            continue  # a solver Ingress: deleted below
        updated = http01_ingress.without_challenge_paths(ingress_obj=ingress, challenge=key)
        if updated is not None:
            store.replace(obj=updated)
    for dependent in http01_ingress.solver_keys(key):
        store.delete(kind=dependent.kind, namespace=dependent.namespace, name=dependent.name)


def _finish(
    store: Store, obj: Object, *, state: str, reason: str, settings: Settings
) -> Result:
    key = reconciling.key_of(obj)
    settings.forget(key)
    _clean_up(store, key=key, settings=settings)
    _remove_txt_record(store, obj, settings=settings)
    status = obj.setdefault("status", {})
    status.update(state=state, processing=False, reason=reason)
    reconciling.write_status(store, obj=obj)
    store.emit_event(obj=obj, type="Normal" if state == "valid" else "Warning",
                     reason="DomainVerified" if state == "valid" else "Failed", message=reason)
    return Result.done()


def self_check_for(
    *, port: int, connect_address: str | None, timeout: float = 5.0
) -> SelfCheck:
    """The HTTP-01 self-check against `port` (and `connect_address` instead of DNS if given)."""

    def check(challenge: Challenge) -> None:
        http01.self_check(host=challenge.dns_name, token=challenge.token,
                          expected_key_authorization=challenge.key, port=port,
                          connect_address=connect_address, timeout=timeout)

    return check
