"""The Order reconciler: one ACME order, from newOrder to a downloaded chain.

The ACME URLs go into the Order's status as soon as the server returns them,
so a restarted controller continues the order it placed instead of placing
another (the window between the server's answer and the status write is the
only one in which a crash costs a second order). Each pending authorization
gets a Challenge object; Challenges report back through their status, or, having
passed, by deleting themselves (`PassedChallenges`), which re-triggers this
reconciler (they are owned by the Order); while each is still at work, those
passes do not ask the CA about the order (the timer does, every PENDING_POLL).
While the order is pending, a Challenge is also the record of its authorization
(identifier, challenge, token): the Order's status then lists the authorizations'
URLs only, and says more before that only for what no Challenge tells (an
authorization valid when fetched, a challenge type fallen back to). The final
status lists them in full. One status write an issuance fewer (bench B8: 19 -> 18
writes a certificate).

Events: Warnings (a failure, a refused `replaces`) and a challenge type fallen
back to. That an order was placed and completed is told on its Certificate
("Requested", "Issuing"), where users look: a Challenge is deleted as it
passes, and an Event for each step of each object
was 6 of the 22 API writes of an issuance (bench B8, before they went).

`status.state` follows cert-manager: pending, ready, processing, valid, and
the final failures invalid (the CA said no) and errored (we could not go on).
A server that forgot the order (a restarted CA: its account answers
accountDoesNotExist, its URLs 404) is not a failure: the account is
registered again and the Order places a new ACME order, a few times at most.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import hashlib
import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field

from certctl.api import parsing
from certctl.api.resources import AcmeIssuer, AcmeSolver, Issuer, ObjectKey
from certctl.api.status import (
    ChallengeStatus,
    OrderAuthorization,
    OrderChallenge,
    OrderState,
    OrderStatus,
    authorization_state,
    order_state,
)
from certctl.controllers import reconciling
from certctl.controllers.reconciling import Clock, Result, TransientError
from certctl.issuers.acme import accounts as acme_accounts
from certctl.issuers.acme import client as acme_client
from certctl.issuers.acme import errors as acme_errors
from certctl.solvers import registry as solver_registry
from certctl.solvers import selection
from certctl.store.interface import AlreadyExists, Object, Store

logger = logging.getLogger(__name__)

FINAL_STATES: tuple[OrderState, ...] = ("valid", "invalid", "errored")
# How long to wait for the CA while it processes a finalized order, absent Retry-After.
PROCESSING_POLL = 0.1
# Safety net while challenges run: their status changes wake us up anyway.
PENDING_POLL = 5.0


@dataclass(kw_only=True)
class PassedChallenges:
    """The Challenges that passed and deleted themselves, as they were then (status
    valid), by Order, until it ends.

    A Challenge the CA validated has nothing left to do: it cleans up and deletes itself
    (`challenges`), where it wrote its verdict for its Order to read before and was
    deleted by the Order after: one write a certificate fewer (bench B8). Its deletion
    wakes its Order, which reads the verdict here. In memory on purpose, as the Challenges'
    other memories: an Order missing a Challenge after a restart asks the CA (its order
    is ready, or the authorization valid when fetched)."""

    _by_order: dict[ObjectKey, dict[str, Object]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, *, order: ObjectKey, challenge: Object) -> None:
        with self._lock:
            self._by_order.setdefault(order, {})[challenge["metadata"]["name"]] = challenge

    def of(self, order: ObjectKey) -> dict[str, Object]:
        """The Order's passed Challenges, by name."""
        with self._lock:
            return dict(self._by_order.get(order) or {})

    def forget(self, order: ObjectKey) -> None:
        with self._lock:
            self._by_order.pop(order, None)


@dataclass(frozen=True, kw_only=True)
class Settings:
    clock: Clock
    accounts: acme_accounts.AcmeAccounts
    # The ACME orders this process finalized and has not seen end. In memory on purpose:
    # after a restart an order whose challenges passed is finalized once more, which a CA
    # answers with orderNotReady if it is past ready (`AcmeClient.finalize` then reads it).
    finalized: set[str] = field(default_factory=set)
    # When this process last heard from the CA that an Order's ACME order (its URL) is
    # pending. While every authorization's Challenge is still at work, the passes their
    # progress wakes do not ask again until PENDING_POLL has passed (`_step`). In
    # memory: a restarted controller asks once.
    asked: dict[ObjectKey, tuple[str, datetime.datetime]] = field(default_factory=dict)
    # Shared with the Challenges' settings (`dispatch.controller_settings`).
    passed: PassedChallenges = field(default_factory=PassedChallenges)


def reconcile(*, store: Store, key: ObjectKey, settings: Settings) -> Result:
    order = store.get(kind="Order", namespace=key.namespace, name=key.name)
    passed = settings.passed
    if order is None:
        settings.asked.pop(key, None)
        passed.forget(key)
        return Result.done()
    status = OrderStatus.from_object(order)
    if status.state in FINAL_STATES:
        settings.finalized.discard(status.url or "")
        settings.asked.pop(key, None)
        _delete_challenges(store, order, passed=passed,
                           challenges=_challenges_of(store, order, status=status, passed=passed))
        return Result.done()
    now = settings.clock()
    ref = order["spec"]["issuerRef"]
    issuer = acme_accounts.find_acme_issuer(store=store, kind=ref.get("kind", "Issuer"),
                                            name=ref["name"],
                                            namespace=order["metadata"]["namespace"])
    if issuer is None:
        return _finish(store, order, status=status, state="errored", now=now, passed=passed,
                       reason=f"{ref.get('kind', 'Issuer')} {ref.get('name')} not found or invalid")
    try:
        client = settings.accounts.client(store=store, issuer=issuer)
        return _step(store, order, status=status, issuer=issuer, client=client, now=now,
                     finalized=settings.finalized, asked=settings.asked, passed=passed)
    except acme_errors.AccountDoesNotExist as err:
        # The server forgot our account (a restarted Pebble does): register
        # again; its orders are gone too, so this one starts over.
        settings.accounts.register_again(store=store, issuer=issuer)
        if status.url:
            return _replace_forgotten(store, order, status=status, now=now, passed=passed,
                                      why=f"it no longer knows the order's account: {err}")
        raise TransientError(f"{key}: re-registered the ACME account") from err
    except acme_errors.AcmeNotFound as err:
        # Another reconciler registered the account again first: the order's URLs 404.
        if status.url:
            return _replace_forgotten(store, order, status=status, now=now, passed=passed,
                                      why=str(err))
        raise TransientError(f"{key}: {err}") from err
    except (acme_errors.RateLimited, acme_errors.Unauthorized) as err:
        if err.retry_after is not None:
            # The Certificate waits at least this long before ordering again.
            status.retry_after = err.retry_after
        return _finish(store, order, status=status, state="errored", now=now, passed=passed,
                       reason=str(err))
    except acme_errors.AcmeProblem as err:
        if err.status == 404 and status.url:  # a problem document saying the same
            return _replace_forgotten(store, order, status=status, now=now, passed=passed,
                                      why=str(err))
        if err.status == 404 or err.code in ("malformed", "rejectedIdentifier", "badCSR",
                                              "caa", "unsupportedIdentifier"):
            return _finish(store, order, status=status, state="errored", now=now,
                           passed=passed, reason=str(err))
        raise TransientError(f"{key}: {err}") from err
    except (acme_errors.AcmeError, LookupError) as err:
        raise TransientError(f"{key}: {err}") from err


def _step(
    store: Store,
    order: Object,
    *,
    status: OrderStatus,
    issuer: Issuer[AcmeIssuer],
    client: acme_client.AccountClient,
    now: datetime.datetime,
    finalized: set[str],
    asked: dict[ObjectKey, tuple[str, datetime.datetime]],
    passed: PassedChallenges,
) -> Result:
    """One step of the ACME order; `status` is the Order's, updated here as it goes (an
    exception leaves in it what the step learned, such as the URL of a placed order).
    `finalized`, `asked`, `passed`: what this process did and heard of the ACME orders
    and their Challenges (`Settings`)."""
    request_pem = base64.b64decode(order["spec"]["request"])
    finalizing = False  # in this pass
    key = reconciling.key_of(order)
    asked_url, asked_at = asked.get(key) or (None, None)
    # Read once a pass: the checks below all look at them (each read is a copy).
    challenges = _challenges_of(store, order, status=status, passed=passed)
    if not status.url:
        state = _new_order(store, order, status=status, client=client,
                           request_pem=request_pem,
                           profile=order["spec"].get("profile") or issuer.spec.profile)
        status.url = state.url
        status.finalize_url = state.finalize_url
        status.state = order_state(state.status)
        status.authorizations = [OrderAuthorization(url=url)
                                 for url in state.authorization_urls]
        # The URL first, before anything can fail. No Event: the URL is in the status.
        reconciling.write_status(store, obj=order, status=status)
    elif (status.finalize_url and status.url not in finalized
          and _authorizations_passed(status, challenges=challenges)):
        # Every authorization valid makes the order ready (RFC 8555 7.1.6): finalize
        # without asking first, one ACME request a certificate fewer. A CA that does not
        # agree yet answers orderNotReady, and `finalize` returns the order as it is.
        state = client.finalize(order_url=status.url, finalize_url=status.finalize_url,
                                csr_pem=request_pem)
        finalized.add(status.url)
        finalizing = True
    elif (asked_at is not None and asked_url == status.url
          and (now - asked_at).total_seconds() < PENDING_POLL
          and _challenges_at_work(status, challenges=challenges)):
        # Woken by a Challenge's progress (created, presented, answered): until one of
        # them ends the CA has nothing new to say of the order, and asking would be one
        # ACME request a certificate for nothing (bench B2). The timer still asks.
        return Result.after(PENDING_POLL - (now - asked_at).total_seconds())
    else:
        state = client.get_order(status.url)

    if state.status == "pending":
        asked[key] = (state.url, now)
        return _present(store, order, status=status, issuer=issuer, client=client,
                        state=state, challenges=challenges, now=now, passed=passed)
    if state.status == "ready":
        state = client.finalize(order_url=state.url, finalize_url=state.finalize_url,
                                csr_pem=request_pem)
        finalized.add(state.url)
        finalizing = True
    if state.status == "processing":
        # Said in the status only when the CA is still at it at the next look: most sign
        # within that first poll, and the write would be one per certificate for nothing
        # (a restarted controller reads the CA's state, or finalizes once more and is
        # refused with orderNotReady: the CA signs once either way).
        if not finalizing:
            status.state = "processing"
            reconciling.write_status(store, obj=order, status=status)
        return Result.after(_delay_until(state.retry_after, now=now, default=PROCESSING_POLL))
    asked.pop(key, None)
    if state.status == "valid" and state.certificate_url:
        chain = client.download_certificate(certificate_url=state.certificate_url,
                                            preferred_chain=issuer.spec.preferred_chain)
        status.certificate = chain.encode()
        finalized.discard(state.url)
        _ask_for_the_gone(status, challenges=challenges, client=client)
        return _finish(store, order, status=status, state="valid", now=now, reason="",
                       passed=passed, challenges=challenges)
    if state.status == "invalid":
        finalized.discard(state.url)
        return _finish(store, order, status=status, state="invalid", now=now,
                       reason=_failure_reason(store, order, client=client, state=state),
                       passed=passed, challenges=challenges)
    raise TransientError(f"order {state.url} is {state.status}; waiting")


REPLACES_REFUSED = "ReplacesRefused"  # the Event when the CA will not take `replaces`


def _new_order(
    store: Store, order: Object, *, status: OrderStatus, client: acme_client.AccountClient,
    request_pem: bytes, profile: str | None,
) -> acme_client.OrderState:
    """Place the ACME order, naming the certificate it replaces when the CA offers ARI.

    RFC 9773 section 5: a CA may refuse `replaces` (the certificate was
    issued to another account, was already replaced, or it does not know
    it), which says nothing against the order itself: it is placed again
    without `replaces`, a renewal like any other. Problems that are about
    the request, not the field (rate limits, the account), are not retried.
    """
    replaces = order["spec"].get("replaces")
    if replaces and client.offers_renewal_info():
        try:
            return client.new_order(csr_pem=request_pem, profile=profile, replaces=replaces)
        except (acme_errors.RateLimited, acme_errors.BadNonce,
                acme_errors.AccountDoesNotExist):
            raise
        except acme_errors.AcmeProblem as err:
            store.emit_event(obj=order, type="Warning", reason=REPLACES_REFUSED, message=(
                f"The ACME server refused replaces={replaces} ({err}); ordering without it"))
            status.replaces_refused = str(err)
    return client.new_order(csr_pem=request_pem, profile=profile)


def _present(
    store: Store,
    order: Object,
    *,
    status: OrderStatus,
    issuer: Issuer[AcmeIssuer],
    client: acme_client.AccountClient,
    state: acme_client.OrderState,
    challenges: Mapping[str, Object],
    now: datetime.datetime,
    passed: PassedChallenges,
) -> Result:
    """Make sure every pending authorization has a Challenge being solved.

    An authorization recorded in status, or by the Challenge this Order made for
    it, is not fetched again: while challenges run, each of their updates would
    cost this reconciler one ACME request. The solver is chosen here, once: the
    Challenge carries a copy of it. The status is written only when it has to say
    what the Challenges do not (module docstring). `challenges`: the Order's
    Challenges by authorization URL (`_challenges_of`).
    """
    labels = order["metadata"].get("labels") or {}
    recorded = {a.url: a for a in status.authorizations}
    authorizations: list[OrderAuthorization] = []
    untold = status.state != "pending"  # the status must say something new
    for url in state.authorization_urls:
        known = _in_full(recorded.get(url) or OrderAuthorization(url=url),
                         challenge=challenges.get(url))
        if known.identifier is not None:
            authorizations.append(known)
            continue
        authorization = client.get_authorization(url)
        identifier = authorization.identifier.value
        dns_name = f"*.{identifier}" if authorization.wildcard else identifier
        record = OrderAuthorization(url=url, identifier=identifier,
                                    wildcard=authorization.wildcard,
                                    initial_state=authorization_state(authorization.status))
        authorizations.append(record)
        if authorization.status != "pending":
            untold = True  # no Challenge will say it was valid, or why it is invalid
            continue
        chosen = selection.select_solver(issuer=issuer.spec, dns_name=dns_name, labels=labels)
        solver = solver_registry.solver_type(chosen.solver.config)
        # In the solver's order of preference (dns-account-01 before dns-01 when allowed).
        wanted = solver_registry.challenge_types(chosen.solver.config)
        offered = {c.type: c for c in authorization.challenges}
        picked = next((offered[t] for t in wanted if t in offered), None)
        if picked is None or picked.token is None:
            return _finish(store, order, status=status, state="errored", now=now,
                           passed=passed, reason=f"the ACME server offers no "
                           f"{' or '.join(t.upper() for t in wanted)} challenge for {dns_name}"
                           f" (spec.acme.solvers[{chosen.index}])")
        if picked.type != wanted[0]:
            fallback = (f"The ACME server offers no {wanted[0].upper()} challenge for"
                        f" {dns_name}; solving {picked.type.upper()} instead")
            record.challenge_fallback = fallback
            untold = True
            store.emit_event(obj=order, type="Normal", reason="ChallengeTypeFallback",
                             message=fallback)
        record.challenges = (OrderChallenge(type=picked.type, url=picked.url,
                                            token=picked.token),)
        _ensure_challenge(store, order, dns_name=identifier,
                          wildcard=authorization.wildcard, authorization_url=url,
                          challenge=picked, solver=chosen.solver, solver_index=chosen.index,
                          key=solver.challenge_key(client=client, token=picked.token),
                          account_uri=(client.account_uri if picked.type == "dns-account-01"
                                       else None))
    failed = _locally_failed_challenge(challenges)
    if failed is not None:
        # Read again: this pass may have created some.
        return _finish(store, order, status=status, state="errored", now=now, passed=passed,
                       reason=failed)
    status.authorizations = authorizations
    if untold:
        status.state = "pending"
        reconciling.write_status(store, obj=order, status=status)
    return Result.after(PENDING_POLL)


def _challenges_of(store: Store, order: Object, *, status: OrderStatus,
                   passed: PassedChallenges) -> dict[str, Object]:
    """The Challenges this Order made for the authorizations its status lists, by URL:
    as stored, or as they passed and deleted themselves (`passed`)."""
    found = {}
    gone = passed.of(reconciling.key_of(order))
    namespace = order["metadata"]["namespace"]
    for authorization in status.authorizations:
        name = _challenge_name(order, authorization_url=authorization.url)
        challenge = store.get(kind="Challenge", namespace=namespace, name=name) or gone.get(name)
        if challenge is not None and reconciling.is_owned_by(challenge, order):
            found[authorization.url] = challenge
    return found


def _ask_for_the_gone(status: OrderStatus, *, challenges: Mapping[str, Object],
                     client: acme_client.AccountClient) -> None:
    """Fill in from the CA the authorizations the status lists by URL only and whose
    Challenge is gone: one that passed and deleted itself before this process started
    (`PassedChallenges`). The final status lists every authorization in full."""
    authorizations = []
    for authorization in status.authorizations:
        if authorization.identifier is None and authorization.url not in challenges:
            told = client.get_authorization(authorization.url)
            authorization = OrderAuthorization(
                url=authorization.url, identifier=told.identifier.value,
                wildcard=told.wildcard, initial_state="pending",
                challenges=tuple(OrderChallenge(type=c.type, url=c.url, token=c.token)
                                 for c in told.challenges
                                 if c.status == "valid" and c.token is not None))
        authorizations.append(authorization)
    status.authorizations = authorizations


def _in_full(authorization: OrderAuthorization, *,
             challenge: Object | None) -> OrderAuthorization:
    """`authorization` with what the status left to its Challenge (module docstring)."""
    if authorization.identifier is not None or challenge is None:
        return authorization
    spec = challenge.get("spec") or {}
    return OrderAuthorization(
        url=authorization.url, identifier=spec.get("dnsName"),
        wildcard=bool(spec.get("wildcard")), initial_state="pending",
        challenges=(OrderChallenge(type=str(spec.get("type", "")).lower(),
                                   url=spec.get("url", ""), token=spec.get("token", "")),))


def _ensure_challenge(
    store: Store,
    order: Object,
    *,
    dns_name: str,
    wildcard: bool,
    authorization_url: str,
    challenge: acme_client.ChallengeState,
    solver: AcmeSolver,
    solver_index: int,
    key: str,
    account_uri: str | None,
) -> None:
    """Create the authorization's Challenge, without reading first: one this Order made
    is among the Challenges its pass read (`_challenges_of`), and AlreadyExists covers
    the rest (one read a certificate fewer)."""
    namespace = order["metadata"]["namespace"]
    name = _challenge_name(order, authorization_url=authorization_url)
    obj = {
        "apiVersion": "certctl.io/v1",
        "kind": "Challenge",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": dict(order["metadata"].get("labels") or {}),
            "ownerReferences": [reconciling.owner_reference(order)],
        },
        "spec": {
            "url": challenge.url,
            "authorizationURL": authorization_url,
            "dnsName": dns_name,
            "wildcard": wildcard,
            "type": challenge.type.upper(),
            "token": challenge.token,
            "key": key,
            "issuerRef": order["spec"]["issuerRef"],
            "solver": parsing.solver_spec(solver),
            "solverIndex": solver_index,
            **({"accountURI": account_uri} if account_uri is not None else {}),
        },
    }
    with contextlib.suppress(AlreadyExists):
        store.create(obj=obj)


def _challenge_name(order: Object, *, authorization_url: str) -> str:
    """Deterministic, so the Challenge of an authorization is found without a list."""
    return f"{order['metadata']['name'][:230]}-" + hashlib.sha256(
        authorization_url.encode()).hexdigest()[:10]


def _challenge_statuses(status: OrderStatus, *, challenges: Mapping[str, Object]
                        ) -> list[ChallengeStatus | None] | None:
    """The status of each authorization's Challenge (None: it has none), leaving out the
    authorizations valid when fetched; None when the status lists no authorization."""
    if not status.authorizations:
        return None
    return [None if (challenge := challenges.get(authorization.url)) is None
            else ChallengeStatus.from_object(challenge)
            for authorization in status.authorizations
            if authorization.initial_state != "valid"]


def _authorizations_passed(status: OrderStatus, *, challenges: Mapping[str, Object]) -> bool:
    """Whether every authorization of the order is known valid: valid when fetched, or its
    Challenge passed (its status says what the CA answered)."""
    statuses = _challenge_statuses(status, challenges=challenges)
    return statuses is not None and all(
        challenge is not None and challenge.state == "valid" for challenge in statuses)


def _challenges_at_work(status: OrderStatus, *, challenges: Mapping[str, Object]) -> bool:
    """Whether the order waits on its Challenges alone: each authorization not valid when
    fetched has one, none of them with an outcome yet (valid or invalid)."""
    statuses = _challenge_statuses(status, challenges=challenges)
    return bool(statuses) and all(
        challenge is not None and challenge.state not in ("valid", "invalid")
        for challenge in statuses or ())


def _locally_failed_challenge(challenges: Mapping[str, Object]) -> str | None:
    """Why one of the order's Challenges failed without the CA's verdict, if one did.

    While the order is pending at the CA, an invalid Challenge can only have
    failed on our side (a DNS provider refusing its credentials, a record
    never served): the CA would wait for it forever, so the order ends here.
    """
    for challenge in challenges.values():
        status = ChallengeStatus.from_object(challenge)
        if status.state == "invalid":
            spec = challenge.get("spec") or {}
            name = f"*.{spec.get('dnsName')}" if spec.get("wildcard") else spec.get("dnsName")
            return (f"{spec.get('type')} challenge for {name} failed: "
                    f"{status.reason or 'no reason given'}")
    return None


def _failure_reason(
    store: Store, order: Object, *, client: acme_client.AccountClient,
    state: acme_client.OrderState,
) -> str:
    """The most useful explanation of an invalid order: a challenge's error if there is one."""
    for url in state.authorization_urls:
        authorization = client.get_authorization(url)
        for challenge in authorization.challenges:
            if challenge.error is not None:
                return (f"{challenge.type} challenge for {authorization.identifier.value} "
                        f"failed: {challenge.error.detail}")
    if state.error is not None:
        return f"{state.error.typ}: {state.error.detail}"
    return "the ACME server marked the order invalid"


def _finish(
    store: Store,
    order: Object,
    *,
    status: OrderStatus,
    state: OrderState,
    now: datetime.datetime,
    reason: str,
    passed: PassedChallenges,
    challenges: Mapping[str, Object] | None = None,
) -> Result:
    """End the Order. `challenges`: its Challenges as a pass that created none read them
    (`_step`), else read here."""
    status.state = state
    # In full, from the Challenges still there: while pending they were the record.
    if challenges is None:
        challenges = _challenges_of(store, order, status=status, passed=passed)
    status.authorizations = [_in_full(authorization, challenge=challenges.get(authorization.url))
                             for authorization in status.authorizations]
    if state != "valid":
        status.reason = reason
        status.failure_time = now
        store.emit_event(obj=order, type="Warning", reason="Failed", message=reason)
    else:
        status.reason = None  # no Event: its Certificate's "Issuing" says it
    reconciling.write_status(store, obj=order, status=status)
    _delete_challenges(store, order, challenges=challenges, passed=passed)
    return Result.done()


# How many times one Order replaces an ACME order the server forgot before it errors.
MAX_FORGOTTEN_ORDERS = 3


def _replace_forgotten(
    store: Store, order: Object, *, status: OrderStatus, now: datetime.datetime, why: str,
    passed: PassedChallenges,
) -> Result:
    """Start this Order over with a new ACME order: the server forgot the one it had.

    Nothing of the old order can be continued (its authorizations and
    challenges went with it), yet the CA said nothing about the request
    itself, so this is no failure for the Certificate to count and back off
    from. The Challenges end here (their cleanup runs on delete). A server
    that forgets every order would be asked forever: after
    MAX_FORGOTTEN_ORDERS replacements the Order errors instead.
    """
    forgotten = (status.forgotten_orders or 0) + 1
    if forgotten > MAX_FORGOTTEN_ORDERS:
        return _finish(store, order, status=status, state="errored", now=now, passed=passed,
                       reason=f"the ACME server forgot {MAX_FORGOTTEN_ORDERS} orders placed "
                       f"for this request; the last time {why}")
    old_url = status.url
    _delete_challenges(store, order, passed=passed,
                       challenges=_challenges_of(store, order, status=status, passed=passed))
    status.url = status.finalize_url = None
    status.authorizations = []
    status.state = "pending"
    status.forgotten_orders = forgotten
    status.reason = f"placing a new ACME order: the server forgot {old_url}: {why}"
    reconciling.write_status(store, obj=order, status=status)
    store.emit_event(obj=order, type="Warning", reason="OrderForgotten",
                     message=f"The ACME server forgot order {old_url} ({why}); placing a new one")
    return Result.after(0)


def _delete_challenges(store: Store, order: Object, *, challenges: Mapping[str, Object],
                       passed: PassedChallenges) -> None:
    """Challenges end with their order, succeeded or failed (their cleanup runs on delete);
    those that passed deleted themselves already (`PassedChallenges`), and are forgotten.

    Except a Challenge whose answer is out there and whose solver
    `ends_with_its_challenge` (DNS-01: what a provider needs to remove a
    record lives only in the process that wrote it, so deleted by a
    restarted certctl the record would stay behind). Such a
    Challenge ends itself when it sees its Order ended (or hears the CA's
    verdict), removing the record; that status change wakes this reconciler,
    which deletes it then. `challenges`: the Order's, by name (`_challenges_of`),
    not by listing the namespace: a list per finished order made issuing N
    certificates at once cost N^2 (a quarter of B2's CPU).
    """
    key = reconciling.key_of(order)
    gone = passed.of(key)
    for challenge in challenges.values():
        name = challenge["metadata"]["name"]
        if name not in gone and not _answer_out_there(challenge):
            store.delete(kind="Challenge", namespace=challenge["metadata"]["namespace"],
                         name=name)
    passed.forget(key)


def _answer_out_there(challenge: Object) -> bool:
    status = ChallengeStatus.from_object(challenge)
    return (solver_registry.ends_with_its_challenge((challenge.get("spec") or {}).get("type"))
            and bool(status.presented) and not status.ended)


def _delay_until(
    when: datetime.datetime | None, *, now: datetime.datetime, default: float
) -> float:
    if when is None:
        return default
    return max(default, (when - now).total_seconds())
