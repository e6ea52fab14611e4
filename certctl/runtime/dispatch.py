"""Which reconciler runs for which change: shared by `certctl serve` and `certctl controller`.

Both drivers feed watch events in and run the items this yields on a work
queue. The rules mirror what owner references and watches give a
controller-runtime controller:

- a change to an object's spec (its generation) runs its own reconciler;
- a status change of a Challenge, and an Order reaching a final state (or
  deleted), runs its owner's reconciler (that is how progress flows upward
  without polling); an Order's earlier status writes do not, as its
  Certificate has nothing to do until the verdict;
- an issuer change runs the Certificates that use it; a Secret change runs
  the Certificate that writes it (a deleted Secret is reissued at once);
- a renewal requested in a Certificate's status (`certctl renew`) runs it;
- a kept copy of a certificate (`kept_certificates`) and an order ledger
  (`order_budget`) run their own expiry timers, started by their writes and,
  for every one, at start-up.
"""

from __future__ import annotations

import datetime
import threading
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass

from certctl.api import annotations as annotation_keys
from certctl.api import conditions
from certctl.api.resources import ObjectKey
from certctl.controllers import (
    certificate_settings,
    certificates,
    challenges,
    gateway_shim,
    ingress_shim,
    issuers,
    kept_certificates,
    orders,
    policies,
    reconciling,
)
from certctl.controllers import order_budget as order_budget_module
from certctl.issuers import registry as issuer_registry
from certctl.issuers.acme import accounts as acme_accounts
from certctl.issuers.acme import client as acme_client
from certctl.issuers.acme import client_process
from certctl.runtime import workqueue
from certctl.solvers import http01_ingress, tls_alpn01_solver
from certctl.solvers import registry as solver_registry
from certctl.solvers.dns01 import solver as dns01_solver
from certctl.store import interface as store_interface
from certctl.store.interface import Object, Store, WatchEvent

Item = tuple[str, ObjectKey]

@dataclass(frozen=True, kw_only=True)
class ControllerSettings:
    certificates: certificate_settings.Settings
    orders: orders.Settings
    challenges: challenges.Settings
    issuers: issuers.Settings


def controller_settings(
    *,
    clock: reconciling.Clock,
    accounts: acme_accounts.AcmeAccounts,
    backoff_base: datetime.timedelta,
    self_check: challenges.SelfCheck,
    dns01: dns01_solver.Options,
    order_budget: order_budget_module.Budget | None,
    data_plane: http01_ingress.DataPlaneService | None = None,
    tls_alpn01: tls_alpn01_solver.SelfCheckTarget | None = None,
) -> ControllerSettings:
    passed = orders.PassedChallenges()  # told by the Challenges, read by their Orders
    return ControllerSettings(
        certificates=certificate_settings.Settings(
            clock=clock, backoff_base=backoff_base, order_budget=order_budget,
            cluster_resource_namespace=accounts.cluster_resource_namespace, accounts=accounts),
        orders=orders.Settings(clock=clock, accounts=accounts, passed=passed),
        issuers=issuers.Settings(clock=clock, accounts=accounts),
        challenges=challenges.Settings(
            clock=clock, accounts=accounts, passed=passed, solvers=solver_registry.Solvers(
                self_check=self_check, data_plane=data_plane, tls_alpn01=tls_alpn01,
                dns01=dns01_solver.Dns01Solver(
                    options=dns01,
                    cluster_resource_namespace=accounts.cluster_resource_namespace))),
    )


@dataclass(frozen=True, kw_only=True)
class Reconciler:
    """One reconciler as the queue knows it: its name in `(name, key)` items, the kinds
    whose own changes run it, its rank in the flow (see `flow_rank`; None: after every
    ranked one), and how to run it with the settings both drivers build alike."""
    name: str
    kinds: tuple[str, ...]
    rank: int | None
    run: Callable[[Store, ObjectKey, ControllerSettings], reconciling.Result]


# Every reconciler, in one place: `certctl serve` and `certctl controller` both dispatch
# through this table, so a new reconciler is one entry here (plus its rules in
# `Dispatcher.items_for` when other kinds' changes must wake it).
# Of the items due, the later steps of the flow run first (see runtime.workqueue): an
# issuer gates all its Certificates, then a Challenge before its Order before its
# Certificate before the Ingress it came from. With 500 new Ingresses at once (bench B2)
# the first certificates are served in seconds instead of after all the others.
RECONCILERS = (
    Reconciler(name="issuer", kinds=("ClusterIssuer", "Issuer"), rank=0,
               run=lambda store, key, settings: issuers.reconcile(
                   store=store, key=key, settings=settings.issuers)),
    Reconciler(name="ingress", kinds=("Ingress",), rank=4,
               run=lambda store, key, settings: ingress_shim.reconcile(store=store, key=key)),
    Reconciler(name="gateway", kinds=("Gateway",), rank=4,
               run=lambda store, key, settings: gateway_shim.reconcile(store=store, key=key)),
    Reconciler(name="listenerset", kinds=("ListenerSet",), rank=4,
               run=lambda store, key, settings: gateway_shim.reconcile_listener_set(
                   store=store, key=key)),
    Reconciler(name="httproute", kinds=("HTTPRoute",), rank=4,
               run=lambda store, key, settings: gateway_shim.reconcile_route(
                   store=store, key=key)),
    Reconciler(name="certificate", kinds=("Certificate",), rank=3,
               run=lambda store, key, settings: certificates.reconcile(
                   store=store, key=key, settings=settings.certificates)),
    Reconciler(name="order", kinds=("Order",), rank=2,
               run=lambda store, key, settings: orders.reconcile(
                   store=store, key=key, settings=settings.orders)),
    Reconciler(name="challenge", kinds=("Challenge",), rank=1,
               run=lambda store, key, settings: challenges.reconcile(
                   store=store, key=key, settings=settings.challenges)),
    # A kept copy of a certificate (a Secret) has no kind of its own, only an expiry
    # timer: `Dispatcher.items_for` and `everything` queue it.
    Reconciler(name="kept", kinds=(), rank=None,
               run=lambda store, key, settings: kept_certificates.reconcile(
                   store=store, key=key, clock=settings.certificates.clock,
                   cluster_resource_namespace=settings.certificates.cluster_resource_namespace)),
    # An order ledger (a Secret) too: its records and next private keys expire.
    Reconciler(name="ledger", kinds=(), rank=None,
               run=lambda store, key, settings: order_budget_module.reconcile(
                   store=store, key=key, clock=settings.certificates.clock,
                   cluster_resource_namespace=settings.certificates.cluster_resource_namespace,
                   budget=settings.certificates.order_budget)),
)
_RECONCILER_BY_NAME = {reconciler.name: reconciler for reconciler in RECONCILERS}
# Anything but a ranked reconciler's item runs after every ranked one's.
_LAST_RANK = max(reconciler.rank for reconciler in RECONCILERS
                 if reconciler.rank is not None) + 1
# The kinds with a reconciler of their own, and its name in queue items.
OWN_CONTROLLER = {kind: reconciler.name for reconciler in RECONCILERS
                  for kind in reconciler.kinds}
# Kinds whose events matter to the reconcilers (beyond their own kinds).
WATCHED_KINDS = (*OWN_CONTROLLER, "Secret")
# Kinds a cluster may lack (the Gateway API CRDs are installed separately) or a Role from
# before them may not grant: not required at start-up, and such a list lists nothing.
OPTIONAL_KINDS = frozenset({"Gateway", "ListenerSet", "HTTPRoute"})
# A Certificate acts on its Order's verdict only (store the chain, or count a failure):
# waking it on the Order's progress writes (pending, processing) cost each Certificate
# reconciles that changed nothing (bench B2).
ORDER_STATES_WAKING_CERTIFICATE = frozenset(orders.FINAL_STATES)


def flow_rank(item: Hashable) -> int:
    """The queue priority of a `(controller, key)` item; anything else runs last."""
    if isinstance(item, tuple) and item and isinstance(item[0], str):
        reconciler = _RECONCILER_BY_NAME.get(item[0])
        if reconciler is not None and reconciler.rank is not None:
            return reconciler.rank
    return _LAST_RANK


def work_queue(*, handler: workqueue.Handler, workers: int) -> workqueue.WorkQueue:
    """The queue the reconcilers run on, retrying failures with backoff."""
    return workqueue.WorkQueue(
        handler=handler,
        workers=workers,
        backoff=workqueue.Backoff(initial=0.05, maximum=300.0),
        # A conflict means someone wrote first, NotFound that someone deleted first (an
        # Order ending deletes its Challenges, maybe while one writes its verdict): re-read
        # and go again. A store that cannot write (disk full) says where and why in one
        # line; a traceback adds nothing.
        expected_errors=(reconciling.TransientError, store_interface.Conflict,
                         store_interface.NotFound, store_interface.StoreUnavailable),
        priority=flow_rank,
    )


_CONTROLLER_SECRET_LABELS = (kept_certificates.KEPT_LABEL, order_budget_module.LEDGER_LABEL)


def _secret_names(issuer: Object) -> set[str]:
    """The Secrets an issuer reads, from its raw spec (which may not even parse)."""
    names = set()
    for path in issuer_registry.secret_paths():
        value: object = issuer
        for step in path:
            value = value.get(step) if isinstance(value, dict) else None
        if isinstance(value, str):
            names.add(value)
    return names


def _fingerprint(obj: Object) -> object:
    """What must differ for a change to count: the generation, and for an Ingress, a
    Gateway, a ListenerSet or an HTTPRoute also its annotations, which (being metadata) do
    not move `generation` on an API server, yet removing the issuer annotation must reach
    the shim. None: always counts."""
    metadata = obj.get("metadata", {})
    generation = metadata.get("generation")
    if obj.get("kind") not in ("Ingress", "Gateway", "ListenerSet", "HTTPRoute") \
            or generation is None:
        return generation
    return (generation, repr(sorted((metadata.get("annotations") or {}).items())))


def _order_verdict(event: WatchEvent) -> bool:
    """An Order event its Certificate must see: deletion, or a final state (the
    Certificate created it, so its ADDED event tells the Certificate nothing either)."""
    if event.type == "DELETED":
        return True
    return (event.obj.get("status") or {}).get("state") in ORDER_STATES_WAKING_CERTIFICATE


def _renewal_requested(event: WatchEvent) -> bool:
    """`certctl renew` (or cmctl) changed only the status: that must run the reconciler too."""
    if event.key.kind != "Certificate" or event.type == "DELETED":
        return False
    issuing = conditions.get_condition(
        (event.obj.get("status") or {}).get("conditions") or [], "Issuing")
    return issuing is not None and issuing.get("reason") == policies.MANUALLY_TRIGGERED and \
        issuing.get("status") == "True"


class _SecretNames:
    """Which Certificates name which Secret (`spec.secretName`), from the Certificates
    the dispatcher saw: their events and the listing of `everything`.

    A Secret's event wakes the Certificates naming it; listing the namespace's
    Certificates for each one made N Secrets in a namespace of M Certificates cost N
    lists of M objects (20,015 lists in B8 for 10,000 Secrets and Ingresses). Only
    wake-ups come from here, and reconcilers read what they act on: a Certificate
    not seen yet is reconciled by its own event, one deleted meanwhile finds nothing.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._named: dict[ObjectKey, tuple[str | None, str]] = {}
        self._users: dict[tuple[str | None, str], set[ObjectKey]] = {}

    def saw(self, event: WatchEvent) -> None:
        key = event.key
        name = (event.obj.get("spec") or {}).get("secretName")
        secret = (key.namespace, name) if isinstance(name, str) and event.type != "DELETED" \
            else None
        with self._lock:
            before = self._named.pop(key, None)
            if before is not None:
                users = self._users[before]
                users.discard(key)
                if not users:
                    del self._users[before]
            if secret is not None:
                self._named[key] = secret
                self._users.setdefault(secret, set()).add(key)

    def users(self, namespace: str | None, secret_name: str) -> list[ObjectKey]:
        with self._lock:
            return sorted(self._users.get((namespace, secret_name), ()),
                          key=lambda key: key.name)


class Dispatcher:
    def __init__(self, *, store: Store, settings: ControllerSettings) -> None:
        self._store = store
        self._settings = settings
        self._generations: dict[ObjectKey, object] = {}
        self._generations_lock = threading.Lock()
        self._secret_names = _SecretNames()

    def handle(self, item: Hashable) -> float | None:
        """Run one queue item; the delay before it should run again, if any."""
        assert isinstance(item, tuple)
        controller: str = item[0]
        key: ObjectKey = item[1]
        reconciler = _RECONCILER_BY_NAME.get(controller)
        if reconciler is None:
            raise ValueError(f"unknown controller {controller}")
        result = reconciler.run(self._store, key, self._settings)
        return result.requeue_after

    def items_for(self, event: WatchEvent) -> Iterator[Item]:
        key = event.key
        if key.kind == "Certificate":
            self._secret_names.saw(event)
        if self._spec_changed(event) or _renewal_requested(event):
            own = OWN_CONTROLLER.get(key.kind)
            if own is not None:
                yield (own, key)
            if key.kind == "Gateway":  # its listeners and annotations decide these
                listener_sets = gateway_shim.listener_sets_of(store=self._store, gateway=key)
                for listener_set in listener_sets:
                    yield ("listenerset", listener_set)
                for route in gateway_shim.routes_of(store=self._store,
                                                    parents={key, *listener_sets}):
                    yield ("httproute", route)
            elif key.kind == "ListenerSet":
                for route in gateway_shim.routes_of(store=self._store, parents={key}):
                    yield ("httproute", route)
        owner = reconciling.controller_of(event.obj)
        if key.kind == "Order" and owner is not None and owner.kind == "Certificate":
            if _order_verdict(event):
                yield ("certificate", owner)
        elif key.kind == "Challenge" and owner is not None and owner.kind == "Order":
            yield ("order", owner)
        elif key.kind in ("ClusterIssuer", "Issuer"):
            yield from self._certificates_using(key)
        elif key.kind == "Secret":
            if key.namespace is not None:
                self._settings.issuers.accounts.forget_account_key(namespace=key.namespace,
                                                                   name=key.name)
            if event.type != "DELETED" and kept_certificates.is_kept_copy(
                    event.obj, cluster_resource_namespace=self._kept_namespace):
                yield ("kept", key)
            if event.type != "DELETED" and order_budget_module.is_ledger(
                    event.obj, cluster_resource_namespace=self._kept_namespace):
                yield ("ledger", key)
            yield from self._certificates_writing(event)
            yield from self._issuers_reading(event)
        elif key.kind == "Certificate" and event.type == "DELETED":
            yield from self._certificates_claiming(event)

    def everything(self) -> Iterator[Item]:
        """Every object with a reconciler, once (start-up, or leadership just won)."""
        for kind, controller in OWN_CONTROLLER.items():
            try:
                # Read, not kept: no copies of every object at once.
                objects = self._store.list(kind=kind, shared=True)
            except (store_interface.NotFound, store_interface.Forbidden):
                if kind in OPTIONAL_KINDS:
                    continue
                raise
            for obj in objects:
                key = reconciling.key_of(obj)
                with self._generations_lock:
                    self._generations[key] = _fingerprint(obj)
                if kind == "Certificate":
                    self._secret_names.saw(WatchEvent(type="ADDED", key=key, obj=obj))
                yield (controller, key)
        # Kept copies and ledgers have no reconciler of their kind, only an expiry timer:
        # what expired while certctl was not running goes now.
        for name, label in (("kept", kept_certificates.KEPT_LABEL),
                            ("ledger", order_budget_module.LEDGER_LABEL)):
            for secret in self._store.list(kind="Secret", namespace=self._kept_namespace,
                                           labels={label: "true"}, shared=True):
                yield (name, reconciling.key_of(secret))

    @property
    def _kept_namespace(self) -> str:
        return self._settings.certificates.cluster_resource_namespace

    def _spec_changed(self, event: WatchEvent) -> bool:
        """Skip our own status writes, like controller-runtime's generation predicate."""
        generation = _fingerprint(event.obj)
        with self._generations_lock:
            if event.type == "DELETED":
                self._generations.pop(event.key, None)
                return True
            previous = self._generations.get(event.key)
            self._generations[event.key] = generation
        return event.type == "ADDED" or previous != generation or generation is None

    def _certificates_writing(self, event: WatchEvent) -> Iterator[Item]:
        """The Certificate whose Secret this is: named in the Secret's annotation when
        certctl wrote it (also on deletion: the event carries the last state), else
        found by `spec.secretName` (a Secret the user brought)."""
        annotations = event.obj.get("metadata", {}).get("annotations") or {}
        name = annotations.get(annotation_keys.SECRET_CERTIFICATE_NAME)
        if name:
            yield ("certificate", ObjectKey(kind="Certificate", namespace=event.key.namespace,
                                            name=name))
            return
        labels = event.obj.get("metadata", {}).get("labels") or {}
        if any(labels.get(label) for label in _CONTROLLER_SECRET_LABELS):
            return  # next private keys, kept copies, order ledgers: the reconciler's own doing
        for certificate in self._secret_names.users(event.key.namespace, event.key.name):
            yield ("certificate", certificate)

    def _issuers_reading(self, event: WatchEvent) -> Iterator[Item]:
        """Issuers naming this Secret (CA key pair, EAB key, account key): a Secret
        applied after its issuer, or fixed, makes the issuer Ready without waiting."""
        metadata = event.obj.get("metadata", {})
        labels = metadata.get("labels") or {}
        if (metadata.get("annotations") or {}).get(annotation_keys.SECRET_CERTIFICATE_NAME) or any(
                labels.get(label) for label in _CONTROLLER_SECRET_LABELS):
            return
        candidates = self._store.list(kind="Issuer", namespace=event.key.namespace)
        if event.key.namespace == self._settings.certificates.cluster_resource_namespace:
            candidates += self._store.list(kind="ClusterIssuer")
        for issuer in candidates:
            if event.key.name in _secret_names(issuer):
                yield ("issuer", reconciling.key_of(issuer))

    def _certificates_claiming(self, event: WatchEvent) -> Iterator[Item]:
        """A deleted Certificate may have held a Secret another one also names: that one
        takes the Secret over now instead of at its next look."""
        secret_name = (event.obj.get("spec") or {}).get("secretName")
        if isinstance(secret_name, str):
            for certificate in self._secret_names.users(event.key.namespace, secret_name):
                yield ("certificate", certificate)

    def _certificates_using(self, issuer: ObjectKey) -> Iterator[Item]:
        for certificate in self._store.list(kind="Certificate"):
            spec = certificate.get("spec") or {}
            refs = [spec.get("issuerRef") or {}, *(spec.get("fallbackIssuerRefs") or [])]
            if not any(isinstance(ref, dict) and ref.get("name") == issuer.name
                       and ref.get("kind", "Issuer") == issuer.kind for ref in refs):
                continue
            if issuer.namespace is not None and (
                certificate["metadata"].get("namespace") != issuer.namespace
            ):
                continue
            yield ("certificate", reconciling.key_of(certificate))


@dataclass(frozen=True, kw_only=True)
class Controllers:
    """The reconcilers of one process, wired the same way for `certctl serve` and
    `certctl controller`: the ACME accounts they share (closed by the process on stop)
    and the dispatcher that runs them."""
    accounts: acme_accounts.AcmeAccounts
    dispatcher: Dispatcher


def build_controllers(
    *,
    store: Store,
    component: str,
    cluster_resource_namespace: str,
    on_acme_response: Callable[[acme_client.AcmeExchange], None],
    acme_process: bool,
    clock: reconciling.Clock,
    backoff_base: datetime.timedelta,
    self_check: challenges.SelfCheck,
    dns01: dns01_solver.Options,
    order_budget: order_budget_module.Budget | None,
    data_plane: http01_ingress.DataPlaneService | None = None,
    tls_alpn01: tls_alpn01_solver.SelfCheckTarget | None = None,
) -> Controllers:
    """The one place both drivers build their reconcilers from: what differs between
    them (the store, where the data plane answers self-checks) comes in as arguments."""
    accounts = acme_accounts.AcmeAccounts(
        cluster_resource_namespace=cluster_resource_namespace, component=component,
        on_response=on_acme_response,
        process=client_process.AcmeProcess() if acme_process else None)
    settings = controller_settings(
        clock=clock, accounts=accounts, backoff_base=backoff_base, self_check=self_check,
        dns01=dns01, order_budget=order_budget, data_plane=data_plane, tls_alpn01=tls_alpn01)
    return Controllers(accounts=accounts, dispatcher=Dispatcher(store=store, settings=settings))
