"""The Challenge reconciler: present, self-check, accept, wait for the CA's verdict.

The steps are the Challenge's solver's (`solvers.protocol.Solver`, chosen by
the solver configuration the Challenge carries): HTTP-01 and TLS-ALPN-01
answered by the data plane, DNS-01 through a provider. Before asking the CA to validate, certctl
checks the answer itself the way the CA will (the self-check); telling the CA
too early would burn the authorization, since a failed validation is final.
Self-check retries back off from 50 ms so a fast path stays fast and a broken
one stays cheap. What was presented is cleaned up when the challenge ends,
valid or not, and when the Challenge is deleted.

What a DNS provider needs to remove a record lives in the process that wrote
it, so an ending Order does not delete a Challenge whose solver
`ends_with_its_challenge`: the Challenge sees its Order ended, cleans up
(rebuilt from its spec after a restart) and is deleted after that. A solver
that refuses its configuration or credentials fails the challenge at once,
without asking the CA anything: retrying would not help, and the Order
reports the reason.

That the CA was asked to validate is kept in memory, not written: with a CA that
answers within UNTOLD_ANSWER the verdict's write is the only one after the answer
(one status write a certificate fewer: bench B8, 18 -> 17 writes a certificate);
a slower one gets "Accepted" written then. A restarted certctl answers again, and
the ACME client returns a challenge no longer pending as it is.

A Challenge that passed cleans up and deletes itself, its verdict left in
memory for its Order (`orders.PassedChallenges`), which its deletion wakes: a
status write a certificate fewer (bench B8: 15 -> 14 writes a certificate), as
the Order deleted it a moment after reading that verdict anyway. A failed one
writes why, and stays until its Order ends, for users to read.

Events: a Warning for each distinct failure; "Presented" and "CleanedUp" only
when a solver changed something outside certctl (a DNS record, a solver
Ingress). A challenge passed tells no Event: its Certificate's Events tell the
issuance.
"""

from __future__ import annotations

import datetime
import logging
import threading
from dataclasses import dataclass, field
from typing import Literal

from certctl.api import names, parsing
from certctl.api.errors import InvalidObject
from certctl.api.resources import Challenge, ObjectKey
from certctl.api.status import ChallengeStatus, OrderStatus, challenge_state
from certctl.controllers import orders, reconciling
from certctl.controllers.reconciling import Clock, Result, TransientError
from certctl.issuers.acme import accounts as acme_accounts
from certctl.issuers.acme import errors as acme_errors
from certctl.solvers import http01, http01_solver, protocol
from certctl.solvers import registry as solver_registry
from certctl.store.interface import Object, Store

logger = logging.getLogger(__name__)

SelfCheck = http01_solver.SelfCheck

FIRST_RETRY = 0.05
LONGEST_RETRY = 10.0
# How long the CA may take to validate an answered challenge before the status says it is
# waiting for the CA: most verdicts come sooner, and the write would be one a certificate
# for nothing (the verdict's write follows).
UNTOLD_ANSWER = datetime.timedelta(seconds=1)
# How long after presenting a failed self-check is taken for propagation under way (a data
# plane's watch of the solver's route, a DNS provider's servers) and retried without a
# word: cert-manager only logs it. A status write and a Warning for the first look of a
# certificate whose route was still on its way were a write a certificate more in a busy
# cluster (bench B8), and an alarm for what works.
QUIET_PROPAGATION = datetime.timedelta(seconds=2)
# How long a deleted Challenge's finished clean-up is remembered (`Settings.settled`):
# far longer than a pass queued before the deletion can wait (LONGEST_RETRY, the queue's
# backoff for a refused write).
SETTLED_MEMORY = datetime.timedelta(minutes=10)


@dataclass(kw_only=True)
class Settings:
    clock: Clock
    accounts: acme_accounts.AcmeAccounts
    solvers: solver_registry.Solvers
    # Per-challenge retry counters: in memory on purpose, a restart may start
    # polling fast again.
    _attempts: dict[ObjectKey, int] = field(default_factory=dict)
    # Challenges whose solvers this process cleaned up as they ended (`_clean_up_ending`,
    # which knows each one's solver): their later passes, ended or deleted, have nothing
    # to take away. Without it each such pass listed every Ingress of the namespace (a
    # solver told no Challenge cannot know which one it edited): one list per certificate,
    # the controller's largest cost at 600 certificates (bench B8's profile).
    _cleaned: set[ObjectKey] = field(default_factory=set)
    # Challenges this process presented, and when it first did, until cleaned up: a
    # Challenge its Order ended and deleted before the Challenge's own pass saw it end is
    # cleaned up knowing its solver too, instead of by a list of every Ingress of the
    # namespace.
    _presented: dict[ObjectKey, tuple[Challenge, datetime.datetime]] = field(
        default_factory=dict)
    # Deleted Challenges whose clean-up is done, and when it was: a pass queued before the
    # deletion (a retry of the status write the deletion refused) may run after the pass
    # that cleaned up, and must find nothing to do rather than list the namespace. Kept
    # for SETTLED_MEMORY, oldest first, so that memory does not grow with every renewal.
    _settled: dict[ObjectKey, datetime.datetime] = field(default_factory=dict)
    # Challenges this process answered, and when, until their verdict: their passes read the
    # challenge instead of answering again, and the status says so only after UNTOLD_ANSWER.
    # In memory on purpose: a restarted certctl answers again, and the ACME client returns
    # a challenge that is no longer pending as it is (`AcmeClient.answer_challenge`).
    _answered: dict[ObjectKey, datetime.datetime] = field(default_factory=dict)
    # Shared with the Orders' settings (`dispatch.controller_settings`).
    passed: orders.PassedChallenges = field(default_factory=orders.PassedChallenges)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def next_delay(self, key: ObjectKey) -> float:
        with self._lock:
            attempt = self._attempts.get(key, 0)
            self._attempts[key] = attempt + 1
        return min(LONGEST_RETRY, FIRST_RETRY * (1 << min(attempt, 16)))

    def forget(self, key: ObjectKey) -> None:
        with self._lock:
            self._attempts.pop(key, None)
            self._answered.pop(key, None)

    def answered(self, key: ObjectKey, *, at: datetime.datetime) -> None:
        with self._lock:
            self._answered[key] = at

    def answered_at(self, key: ObjectKey) -> datetime.datetime | None:
        """When this process answered `key`'s challenge, if it did and has no verdict yet."""
        with self._lock:
            return self._answered.get(key)

    def presented(self, key: ObjectKey, challenge: Challenge, *, at: datetime.datetime) -> None:
        with self._lock:
            earlier = self._presented.get(key)
            self._presented[key] = (challenge, at if earlier is None else earlier[1])
            self._settled.pop(key, None)  # a new Challenge of the name: its own clean-up

    def presented_challenge(self, key: ObjectKey) -> Challenge | None:
        return self._presentation(key)[0]

    def presented_since(self, key: ObjectKey) -> datetime.datetime | None:
        """When this process first presented `key`'s challenge, if it did."""
        return self._presentation(key)[1]

    def _presentation(self, key: ObjectKey) -> tuple[Challenge | None, datetime.datetime | None]:
        with self._lock:
            return self._presented.get(key) or (None, None)

    def cleaned_up(self, key: ObjectKey) -> None:
        with self._lock:
            self._cleaned.add(key)
            self._presented.pop(key, None)

    def was_cleaned_up(self, key: ObjectKey) -> bool:
        """Whether `key`'s solvers were cleaned up as it ended; kept until it is deleted."""
        with self._lock:
            return key in self._cleaned

    def deleted_was_cleaned_up(self, key: ObjectKey) -> bool:
        """Whether the deleted `key` needs no clean-up: done as it ended, or by an earlier
        pass after its deletion. Either way it is remembered as settled for a while."""
        with self._lock:
            if key in self._settled:
                return True
            if key in self._cleaned:
                self._settle_locked(key)
                return True
            return False

    def settled(self, key: ObjectKey) -> None:
        """The deleted `key`'s clean-up is done."""
        with self._lock:
            self._settle_locked(key)

    def _settle_locked(self, key: ObjectKey) -> None:
        self._cleaned.discard(key)
        self._presented.pop(key, None)
        self._attempts.pop(key, None)
        self._answered.pop(key, None)
        now = self.clock()
        self._settled.pop(key, None)
        self._settled[key] = now  # last in the order: the newest
        while self._settled:
            oldest = next(iter(self._settled))
            if now - self._settled[oldest] < SETTLED_MEMORY:
                break
            del self._settled[oldest]


def reconcile(*, store: Store, key: ObjectKey, settings: Settings) -> Result:
    obj = store.get(kind="Challenge", namespace=key.namespace, name=key.name)
    if obj is None:
        if settings.deleted_was_cleaned_up(key):
            return Result.done()
        return _clean_up_deleted(store, key=key, settings=settings, deleted=True)
    status = ChallengeStatus.from_object(obj)
    if status.ended:
        settings.forget(key)
        if not settings.was_cleaned_up(key):
            _clean_up_deleted(store, key=key, settings=settings, deleted=False)
        return Result.done()
    if solver_registry.ends_with_its_challenge((obj.get("spec") or {}).get("type")):
        # Its Order leaves such a Challenge to end itself, so the cleanup goes first.
        ended = _order_ended(store, obj)
        if ended is not None:
            return _finish(store, obj, status=status,
                           state="valid" if ended == "valid" else "invalid",
                           reason=f"Its Order is {ended}: the challenge ends with it",
                           settings=settings)
    try:
        challenge = parsing.parse_challenge(obj)
    except InvalidObject as err:
        return _finish(store, obj, status=status, state="invalid", reason=str(err),
                       settings=settings)
    issuer = acme_accounts.find_acme_issuer(
        store=store, kind=challenge.issuer_ref.kind, name=challenge.issuer_ref.name,
        namespace=challenge.namespace)
    if issuer is None:
        raise TransientError(f"{key}: issuer {challenge.issuer_ref.name} is missing or invalid")
    solver = settings.solvers.for_config(challenge.solver.config)
    answered_at = settings.answered_at(key)
    answered = status.processing or answered_at is not None
    if not answered:
        waiting = _present(store, obj, status=status, key=key, challenge=challenge,
                           solver=solver, settings=settings)
        if waiting is not None:
            return waiting

    try:
        client = settings.accounts.client(store=store, issuer=issuer)
        if not answered:
            try:
                checked_at = settings.clock()
                solver.check(challenge=challenge, now=checked_at)
            except protocol.NotServed as err:
                return _wait_for_propagation(store, obj, status=status, key=key,
                                             challenge=challenge, error=err,
                                             settings=settings, now=checked_at)
            settings.forget(key)
            state = client.answer_challenge(challenge.url)
            answered_at = settings.clock()
            settings.answered(key, at=answered_at)
        else:
            state = client.get_challenge(challenge.url)
    except acme_errors.AcmeNotFound as err:
        # The server forgot the challenge (a restarted CA): it can never be solved. Its
        # Order, woken by this, finds its own URL forgotten too and places a new order.
        return _finish(store, obj, status=status, state="invalid", settings=settings,
                       reason=f"The ACME server forgot this challenge: {err}")
    except acme_errors.AccountDoesNotExist as err:
        # The server forgot the account: the Order registers it again and starts over.
        # Saying so in the status wakes the Order now rather than at its next poll.
        status.reason = f"The ACME server forgot this challenge's account: {err}"
        reconciling.write_status(store, obj=obj, status=status)
        raise TransientError(f"{key}: {err}") from err
    except (acme_errors.AcmeError, LookupError) as err:
        raise TransientError(f"{key}: {err}") from err

    if state.status == "valid":
        return _finish(store, obj, status=status, state="valid",
                       reason="Successfully authorized domain", settings=settings)
    if state.status == "invalid":
        detail = state.error.detail if state.error is not None else "no detail given"
        return _finish(store, obj, status=status, state="invalid", settings=settings,
                       reason=f"Accepting challenge authorization failed: {detail}")
    now = settings.clock()
    if not status.processing and answered_at is not None and now - answered_at >= UNTOLD_ANSWER:
        status.processing = True
        status.state = challenge_state(state.status)
        status.reason = "Accepted: waiting for the ACME server to validate"
        reconciling.write_status(store, obj=obj, status=status)
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
    if order is None:
        return None
    state = OrderStatus.from_object(order).state
    return state if state in orders.FINAL_STATES else None


def _present(
    store: Store,
    obj: Object,
    *,
    status: ChallengeStatus,
    key: ObjectKey,
    challenge: Challenge,
    solver: protocol.Solver,
    settings: Settings,
) -> Result | None:
    """Present the answer unless it already is; a Result means "stop here"."""
    now = settings.clock()
    try:
        presented = solver.present(store=store, obj=obj, challenge=challenge, now=now)
    except protocol.PresentFailed as err:
        reason = f"Error presenting {challenge.type} challenge: {err}"
        if err.permanent:
            return _finish(store, obj, status=status, state="invalid", settings=settings,
                           reason=reason)
        status.state = "pending"
        status.reason = reason
        if reconciling.write_status(store, obj=obj, status=status):  # once per distinct failure
            store.emit_event(obj=obj, type="Warning", reason="PresentError", message=str(err))
        return Result.after(settings.next_delay(key))
    settings.presented(key, challenge, at=now)
    if presented is None:
        return None
    status.presented = True
    status.processing = False
    status.state = "pending"
    status.reason = f"Presented: {presented.description}"
    if not presented.announce:
        # Nothing outside the cluster changed: the status write that follows (the
        # self-check's wait, the CA's verdict or its delay) records it, one write per
        # certificate fewer. A pass that fails before answering presents again next time,
        # and this process knows the solver to clean up meanwhile (`settings.presented`).
        return None
    if reconciling.write_status(store, obj=obj, status=status):
        store.emit_event(obj=obj, type="Normal", reason="Presented",
                         message=f"Presented challenge using {challenge.type}: "
                         f"{presented.description}")
    return None


def _wait_for_propagation(
    store: Store,
    obj: Object,
    *,
    status: ChallengeStatus,
    key: ObjectKey,
    challenge: Challenge,
    error: protocol.NotServed,
    settings: Settings,
    now: datetime.datetime,
) -> Result:
    """Record why the self-check failed, once per distinct failure, and look again soon;
    a solver that gave up waiting fails the challenge. Within QUIET_PROPAGATION of its
    presentation it only looks again."""
    if error.final:
        return _finish(store, obj, status=status, state="invalid", settings=settings,
                       reason=str(error))
    since = settings.presented_since(key)
    if since is not None and now - since < QUIET_PROPAGATION:
        logger.debug("%s: not served yet: %s", key, error)
        return Result.after(settings.next_delay(key))
    status.reason = f"Waiting for {challenge.type} challenge propagation: {error}"
    if reconciling.write_status(store, obj=obj, status=status):  # once per distinct failure
        store.emit_event(obj=obj, type="Warning", reason="SelfCheckFailed", message=str(error))
    return Result.after(settings.next_delay(key))


def _clean_up_ending(store: Store, obj: Object, *, settings: Settings) -> None:
    """Take away what every solver presented for an ending challenge: what this process
    holds, and, after a restart, what the Challenge's own solver presented (from its spec).

    A temporary failure raises TransientError so the challenge is not
    recorded as ended before its answer is gone; a permanent one is reported
    and given up on.
    """
    key = reconciling.key_of(obj)
    if settings.was_cleaned_up(key):
        # Done by an earlier pass whose status write then failed (a conflict): this
        # process no longer holds what it presented, and would list every Ingress of the
        # namespace to look for it.
        return
    challenge = settings.presented_challenge(key)
    if challenge is None and ChallengeStatus.from_object(obj).presented:
        try:
            challenge = parsing.parse_challenge(obj)
        except InvalidObject:
            challenge = None
    complete = True
    for solver in settings.solvers:
        try:
            removed = _clean_up_solver(store, solver=solver, key=key, challenge=challenge)
        except protocol.CleanUpFailed as err:
            if not err.permanent:
                raise TransientError(f"{key}: {err}") from err
            store.emit_event(obj=obj, type="Warning", reason="CleanUpError", message=str(err))
            complete = False  # the later passes try again
            continue
        if removed is not None:
            store.emit_event(obj=obj, type="Normal", reason="CleanedUp",
                             message=f"Removed {removed}")
    if complete:
        settings.cleaned_up(key)


def _clean_up_solver(
    store: Store, *, solver: protocol.Solver, key: ObjectKey, challenge: Challenge | None
) -> str | None:
    """Have `solver` take away what it presented for `key`: told the Challenge when it is
    the Challenge's solver; nothing when the Challenge names another one (its spec holds a
    copy of the one solver that presents it: an HTTP-01 solver asked without it looks
    through every Ingress of the namespace, one list per DNS-01 certificate); when the
    Challenge is not known (deleted, presented by an earlier process), what it holds or
    finds."""
    if challenge is None:
        return solver.clean_up(store=store, key=key, challenge=None)
    if not isinstance(challenge.solver.config, solver.config_type):
        return None
    return solver.clean_up(store=store, key=key, challenge=challenge)


def _clean_up_deleted(
    store: Store, *, key: ObjectKey, settings: Settings, deleted: bool
) -> Result:
    """The Challenge is gone (`deleted`) or ended: take away what this process presented
    for it, retrying temporary failures (nothing else will ever remove it)."""
    challenge = settings.presented_challenge(key)
    for solver in settings.solvers:
        try:
            removed = _clean_up_solver(store, solver=solver, key=key, challenge=challenge)
        except protocol.CleanUpFailed as err:
            if not err.permanent:
                logger.warning("%s ended; %s failed, will retry", key, err)
                return Result.after(settings.next_delay(key))
            logger.warning("%s ended: %s", key, err)
            continue
        if removed is not None:
            logger.info("%s ended; removed %s", key, removed)
    if deleted:
        settings.settled(key)
    else:
        settings.cleaned_up(key)
    return Result.done()


def _finish(
    store: Store,
    obj: Object,
    *,
    status: ChallengeStatus,
    state: Literal["valid", "invalid"],
    reason: str,
    settings: Settings,
) -> Result:
    key = reconciling.key_of(obj)
    settings.forget(key)
    _clean_up_ending(store, obj, settings=settings)
    status.state = state
    status.processing = False
    status.reason = reason
    owner = reconciling.controller_of(obj)
    if state == "valid" and owner is not None and owner.kind == "Order":
        # Passed: nothing left to do (module docstring). Told before the deletion wakes
        # the Order.
        obj["status"] = status.to_dict()
        settings.passed.add(order=owner, challenge=obj)
        store.delete(kind="Challenge", namespace=key.namespace, name=key.name)
        return Result.done()
    reconciling.write_status(store, obj=obj, status=status)
    if state == "invalid":
        store.emit_event(obj=obj, type="Warning", reason="Failed", message=reason)
    return Result.done()


def self_check_for(
    *, port: int, connect_address: str | None, timeout: float = 5.0
) -> SelfCheck:
    """The HTTP-01 self-check against `port` (and `connect_address` instead of DNS if given).

    An IP address is checked at the address itself, as the CA will (RFC 8738):
    `connect_address` stands in for name resolution only.
    """

    def check(challenge: Challenge) -> None:
        address = names.is_ip_address(challenge.dns_name)
        http01.self_check(host=challenge.dns_name, token=challenge.token,
                          expected_key_authorization=challenge.key, port=port,
                          connect_address=None if address else connect_address,
                          timeout=timeout)

    return check
