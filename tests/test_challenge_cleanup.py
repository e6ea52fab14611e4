"""How a Challenge's clean-up finds what its solver presented, without a list per Challenge.

The Challenge reconciler runs against the local store; the ACME server is never reached
(the issuer's account does not exist, so each pass stops before asking it). The HTTP-01
solver is of the class the data plane serves: nothing was put in any Ingress, and a
clean-up that knows the Challenge's solver reads none. One that does not know it (a
restarted controller) must look through every Ingress of the namespace for token paths.
A DNS-01 Challenge's clean-up (its record on a real BIND) asks no HTTP-01 solver either.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from certctl.api.resources import ObjectKey
from certctl.controllers import challenges, reconciling
from certctl.solvers import http01_ingress
from certctl.store.interface import Object
from tests.bind import BindServer
from tests.lifecycle import RecordingStore, challenge_settings, order_and_challenge

NAME = "www.example.test"
DATA_PLANE = http01_ingress.DataPlaneService(namespace="certctl", name="dataplane",
                                             ingress_class="certctl")


class IngressListCounter(RecordingStore):
    """The local store, counting the lists of Ingresses made through it."""

    def __init__(self, *, state_dir: Path) -> None:
        super().__init__(state_dir=state_dir)
        self.ingress_lists = 0

    def list(
        self, *, kind: str, namespace: str | None = None,
        labels: Mapping[str, str] | None = None, shared: bool = False,
    ) -> list[Object]:
        if kind == "Ingress":
            self.ingress_lists += 1
        return super().list(kind=kind, namespace=namespace, labels=labels, shared=shared)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[IngressListCounter]:
    store = IngressListCounter(state_dir=tmp_path / "state")
    store.create(obj={
        "apiVersion": "certctl.io/v1", "kind": "ClusterIssuer", "metadata": {"name": "web"},
        "spec": {"acme": {
            "server": "https://acme.example.test/dir",
            "privateKeySecretRef": {"name": "account"},
            "solvers": [{"http01": {"ingress": {"ingressClassName": "certctl"}}}]}}})
    store.create(obj={
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": "shop", "namespace": "default"},
        "spec": {"ingressClassName": "certctl", "rules": [{"host": NAME}]}})
    yield store


def _settings(*, nameserver: str | None = None) -> challenges.Settings:
    """A controller process's Challenge settings; a new call is a restarted process."""
    return challenge_settings(nameserver=nameserver, data_plane=DATA_PLANE)


def _presented_challenge(store: IngressListCounter, settings: challenges.Settings) -> ObjectKey:
    """An Order and its HTTP-01 Challenge, presented by a pass of `settings`' process."""
    key = order_and_challenge(store, issuer="web", dns_name=NAME, type="HTTP-01",
                              key="tok.thumb")
    with pytest.raises(reconciling.TransientError, match="account key"):
        challenges.reconcile(store=store, key=key, settings=settings)
    assert settings.presented_challenge(key) is not None
    return key


def _deleted_by_its_order(store: IngressListCounter, key: ObjectKey) -> None:
    # As orders.py does when the Order ends, whether or not the Challenge saw its end.
    store.delete(kind=key.kind, namespace=key.namespace, name=key.name)


def test_a_challenge_deleted_before_it_was_seen_ending_is_cleaned_up_without_a_list(
    store: IngressListCounter,
) -> None:
    settings = _settings()
    key = _presented_challenge(store, settings)
    _deleted_by_its_order(store, key)

    assert challenges.reconcile(store=store, key=key, settings=settings).requeue_after is None
    assert store.ingress_lists == 0, "the presenting process knew the Challenge's solver"


def test_passes_after_the_deletion_was_cleaned_up_read_no_ingress(
    store: IngressListCounter,
) -> None:
    """A pass queued before the deletion (the retry of a status write the deletion
    refused) can run after the pass that cleaned up: it has nothing left to do."""
    settings = _settings()
    key = _presented_challenge(store, settings)
    _deleted_by_its_order(store, key)
    for _ in range(3):
        assert challenges.reconcile(store=store, key=key, settings=settings).requeue_after \
            is None
    assert store.ingress_lists == 0
    assert settings.presented_challenge(key) is None


def test_a_second_ending_pass_after_a_refused_status_write_reads_no_ingress(
    store: IngressListCounter,
) -> None:
    """The pass that saw the challenge end cleaned up, then its status write was refused
    (a conflict): the retry ends it again, with nothing left to take away."""
    settings = _settings()
    key = _presented_challenge(store, settings)
    obj = store.get(kind=key.kind, namespace=key.namespace, name=key.name)
    assert obj is not None
    for _ in range(2):
        challenges._clean_up_ending(store, obj, settings=settings)
    assert store.ingress_lists == 0


def test_a_new_challenge_of_a_settled_name_is_cleaned_up_again(
    store: IngressListCounter,
) -> None:
    """What is remembered of a deleted Challenge never spares a later one of the same name
    its own clean-up: presenting it forgets the old one's."""
    settings = _settings()
    key = _presented_challenge(store, settings)
    _deleted_by_its_order(store, key)
    challenges.reconcile(store=store, key=key, settings=settings)
    assert settings.deleted_was_cleaned_up(key)

    store.delete(kind="Order", namespace=key.namespace, name="web-1")  # placed anew
    assert _presented_challenge(store, settings) == key
    assert not settings.deleted_was_cleaned_up(key)


def test_settled_challenges_are_forgotten_after_a_while() -> None:
    now = [datetime.datetime(2026, 12, 4, tzinfo=datetime.UTC)]
    settings = challenges.Settings(clock=lambda: now[0], accounts=_settings().accounts,
                                   solvers=_settings().solvers)
    old, new = (ObjectKey(kind="Challenge", namespace="default", name=n) for n in "ab")
    settings.settled(old)
    now[0] += challenges.SETTLED_MEMORY
    settings.settled(new)
    assert not settings.deleted_was_cleaned_up(old)
    assert settings.deleted_was_cleaned_up(new)


def test_a_restarted_controller_looks_through_the_ingresses_for_token_paths(
    store: IngressListCounter,
) -> None:
    key = _presented_challenge(store, _settings())
    _deleted_by_its_order(store, key)

    restarted = _settings()
    assert challenges.reconcile(store=store, key=key, settings=restarted).requeue_after is None
    assert store.ingress_lists == 1


def test_presenting_in_the_cluster_is_recorded_by_the_next_status_write_of_the_pass(
    store: IngressListCounter,
) -> None:
    """An HTTP-01 answer changes nothing outside the cluster, so "presented" is written
    with what the pass does next (here it stops at the missing account key: nothing),
    one status write per certificate fewer; the process still knows the solver."""
    settings = _settings()
    key = _presented_challenge(store, settings)
    challenge = store.get(kind=key.kind, namespace=key.namespace, name=key.name)
    assert challenge is not None
    assert not (challenge.get("status") or {}).get("presented")


def test_a_dns01_challenge_ending_asks_no_http01_solver(
    store: IngressListCounter, tmp_path: Path
) -> None:
    """The Challenge names its solver: the HTTP-01 one presented nothing for it, and asked
    without the Challenge it would list every Ingress of the namespace (one list per
    DNS-01 certificate in the cluster, bench/b8_peer)."""
    with BindServer.start(tmp_path=tmp_path) as bind:
        store.create(obj=bind.tsig_secret_object(namespace="certctl"))
        store.create(obj={
            "apiVersion": "certctl.io/v1", "kind": "ClusterIssuer", "metadata": {"name": "dns"},
            "spec": {"acme": {
                "server": "https://acme.example.test/dir",
                "privateKeySecretRef": {"name": "account"},
                "solvers": [{"dns01": {"rfc2136": bind.rfc2136_solver()}}]}}})
        settings = _settings(nameserver=bind.nameserver)
        key = order_and_challenge(store, issuer="dns", dns_name=NAME, type="DNS-01",
                                  key="txt-value")
        with pytest.raises(reconciling.TransientError, match="account key"):
            challenges.reconcile(store=store, key=key, settings=settings)
        assert bind.txt_values(f"_acme-challenge.{NAME}") == {"txt-value"}
        obj = store.get(kind=key.kind, namespace=key.namespace, name=key.name)
        assert obj is not None

        challenges._clean_up_ending(store, obj, settings=settings)

        assert bind.txt_values(f"_acme-challenge.{NAME}") == set()
        assert store.ingress_lists == 0, "the HTTP-01 solver looked for what it never made"
