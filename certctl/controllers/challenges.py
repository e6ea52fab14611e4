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
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from certctl.api import parsing
from certctl.api.errors import InvalidObject
from certctl.api.resources import Challenge, Issuer, ObjectKey
from certctl.controllers import acme_accounts, reconciling
from certctl.controllers.reconciling import Clock, Result, TransientError
from certctl.issuers.acme import errors as acme_errors
from certctl.solvers import http01, http01_ingress
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
        settings.forget(key)
        _clean_up(store, key=key, settings=settings)
        return Result.done()
    status = obj.setdefault("status", {})
    if status.get("state") in ("valid", "invalid"):
        settings.forget(key)
        _clean_up(store, key=key, settings=settings)
        return Result.done()
    try:
        challenge = parsing.parse_challenge(obj)
    except InvalidObject as err:
        return _finish(store, obj, state="invalid", reason=str(err), settings=settings)
    issuer = acme_accounts.find_acme_issuer(
        store=store, kind=challenge.issuer_ref.kind, name=challenge.issuer_ref.name,
        namespace=challenge.namespace)
    if issuer is None:
        raise TransientError(f"{key}: issuer {challenge.issuer_ref.name} is missing or invalid")
    if challenge.type != "HTTP-01":
        return _finish(store, obj, state="invalid", settings=settings,
                       reason=f"{challenge.type} challenges cannot be solved yet")

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
                settings.self_check(challenge)
            except http01.SelfCheckFailed as err:
                status["reason"] = f"Waiting for HTTP-01 challenge propagation: {err}"
                if reconciling.write_status(store, obj=obj):  # once per distinct failure
                    store.emit_event(obj=obj, type="Warning", reason="SelfCheckFailed",
                                     message=str(err))
                return Result.after(settings.next_delay(key))
            settings.forget(key)
            state = client.answer_challenge(challenge.url)
            status.update(processing=True, state=state.status,
                          reason="Accepted: waiting for the ACME server to validate")
            reconciling.write_status(store, obj=obj)
        else:
            state = client.get_challenge(challenge.url)
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


def _route_token(
    store: Store,
    obj: Object,
    *,
    challenge: Challenge,
    issuer: Issuer,
    data_plane: http01_ingress.DataPlaneService,
) -> None:
    """Create the solver Service and Ingress if missing (they never change while the
    challenge lives: the token and host are fixed)."""
    assert issuer.acme is not None
    solvers = issuer.acme.solvers
    solver = solvers[challenge.solver_index].http01 if challenge.solver_index < len(
        solvers) else None
    wanted = (
        http01_ingress.solver_service(challenge_obj=obj, data_plane=data_plane),
        http01_ingress.solver_ingress(challenge_obj=obj, challenge=challenge, solver=solver,
                                      data_plane=data_plane),
    )
    for dependent in wanted:
        meta = dependent["metadata"]
        if store.get(kind=dependent["kind"], namespace=meta["namespace"],
                     name=meta["name"]) is not None:
            continue
        try:
            store.create(obj=dependent)
        except AlreadyExists:
            continue
        if dependent["kind"] == "Ingress":
            store.emit_event(obj=obj, type="Normal", reason="Presented",
                             message=f"Created solver Ingress {meta['name']} routing "
                             f"http://{challenge.dns_name}{http01_ingress.CHALLENGE_PATH}"
                             f"{challenge.token} to the data plane")


def _clean_up(store: Store, *, key: ObjectKey, settings: Settings) -> None:
    """Delete the solver objects of a finished or deleted challenge (a no-op if absent)."""
    if settings.data_plane is None:
        return
    for dependent in http01_ingress.solver_keys(key):
        store.delete(kind=dependent.kind, namespace=dependent.namespace, name=dependent.name)


def _finish(
    store: Store, obj: Object, *, state: str, reason: str, settings: Settings
) -> Result:
    key = reconciling.key_of(obj)
    settings.forget(key)
    _clean_up(store, key=key, settings=settings)
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
