"""An issuer's ACME account key is read once, and again after its Secret changes.

Every Order and Challenge step asks `AcmeAccounts.client` for its issuer's client;
reading the key Secret each time was 6 of the controller's 64 API reads per
certificate (bench B8). The key is kept until a watch event of that Secret reaches
the dispatcher, which the cluster and `certctl serve` both feed.
"""

from __future__ import annotations

import base64
import datetime
from pathlib import Path
from typing import cast

import pytest

from certctl.api import parsing
from certctl.api.resources import AcmeIssuer, Issuer, ObjectKey, PrivateKeySpec
from certctl.controllers import challenges, reconciling
from certctl.issuers.acme import accounts as acme_accounts
from certctl.issuers.acme import client as acme_client
from certctl.pki import keys
from certctl.runtime import dispatch
from certctl.solvers.dns01 import solver as dns01_solver
from certctl.store.interface import ForwardingStore, Object, WatchEvent
from certctl.store.local import LocalStore
from tests.pebble import PebbleServer
from tests.serving import cluster_issuer


class _SecretReads(ForwardingStore):
    """The store, counting the Secrets read through it."""

    def __init__(self, *, backing: LocalStore) -> None:
        super().__init__(backing=backing)
        self.secret_reads = 0

    def get(self, *, kind: str, namespace: str | None, name: str) -> Object | None:
        if kind == "Secret":
            self.secret_reads += 1
        return self.backing.get(kind=kind, namespace=namespace, name=name)


@pytest.fixture
def store(tmp_path: Path) -> _SecretReads:
    return _SecretReads(backing=LocalStore(manifests_dir=None, state_dir=tmp_path / "state"))


def _account_key_pem() -> bytes:
    return keys.encode_private_key(
        keys.generate_private_key(PrivateKeySpec(algorithm="ECDSA", size=256)), encoding="PKCS8")


def _thumbprint(client: acme_client.AccountClient) -> str:
    return client.key_authorization("dG9rZW4")  # the same token: differs by key only


def test_the_account_key_is_read_once_and_again_after_its_secret_changes(
    store: _SecretReads, pebble: PebbleServer
) -> None:
    accounts = acme_accounts.AcmeAccounts(cluster_resource_namespace="certctl")
    dispatcher = dispatch.Dispatcher(store=store, settings=dispatch.controller_settings(
        clock=reconciling.system_clock, accounts=accounts,
        backoff_base=datetime.timedelta(hours=1),
        self_check=challenges.self_check_for(port=80, connect_address=None),
        dns01=dns01_solver.Options(), order_budget=None))
    issuer = cast(Issuer[AcmeIssuer], parsing.parse_issuer(
        store.create(obj=cluster_issuer(pebble, api_version="certctl.io/v1"))))
    secret = store.create(obj={
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": "pebble-account", "namespace": "certctl"},
        "data": {"tls.key": base64.b64encode(_account_key_pem()).decode()}})

    first = accounts.client(store=store, issuer=issuer)
    reads = store.secret_reads
    assert accounts.client(store=store, issuer=issuer) is first
    assert accounts.client(store=store, issuer=issuer) is first
    assert store.secret_reads == reads  # the key was not read again

    # Someone replaces the key: its watch event reaches the dispatcher, and the next
    # step uses the new key (registering it), not the one kept.
    secret["data"] = {"tls.key": base64.b64encode(_account_key_pem()).decode()}
    changed = store.replace(obj=secret)
    list(dispatcher.items_for(WatchEvent(
        type="MODIFIED", key=ObjectKey(kind="Secret", namespace="certctl", name="pebble-account"),
        obj=changed)))
    second = accounts.client(store=store, issuer=issuer)
    assert second is not first
    assert _thumbprint(second) != _thumbprint(first)
    assert second.account_uri is not None and second.account_uri != first.account_uri

    # Another Secret's event leaves the kept key alone.
    reads = store.secret_reads
    list(dispatcher.items_for(WatchEvent(
        type="MODIFIED", key=ObjectKey(kind="Secret", namespace="certctl", name="other"),
        obj={"apiVersion": "v1", "kind": "Secret",
             "metadata": {"name": "other", "namespace": "certctl"}})))
    assert accounts.client(store=store, issuer=issuer) is second
    assert store.secret_reads == reads
    accounts.close()
