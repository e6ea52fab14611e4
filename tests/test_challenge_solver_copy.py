"""A Challenge keeps the solver it was created with: editing the issuer does not change it.

The Challenge reconciler runs against a real BIND (TSIG-signed updates) and a
local store; the ACME server is never reached (the issuer's account does not
exist, so each pass stops before asking it), which is where a DNS-01
challenge waits anyway while its record propagates.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from certctl.controllers import challenges, reconciling
from certctl.store.interface import Object
from tests.bind import BindServer
from tests.lifecycle import RecordingStore, challenge_settings, order_and_challenge

NAME = "www.example.test"
RECORD = f"_acme-challenge.{NAME}."


@pytest.fixture
def bind(tmp_path: Path) -> Iterator[BindServer]:
    with BindServer.start(tmp_path=tmp_path, zones=("example.test",)) as server:
        yield server


def _settings(bind: BindServer) -> challenges.Settings:
    """A controller process's Challenge settings; a new call is a restarted process."""
    return challenge_settings(nameserver=bind.nameserver)


def _issuer(bind: BindServer) -> Object:
    return {
        "apiVersion": "certctl.io/v1", "kind": "ClusterIssuer", "metadata": {"name": "dns"},
        "spec": {"acme": {
            "server": "https://acme.example.test/dir",
            "privateKeySecretRef": {"name": "account"},
            "solvers": [{"dns01": {"rfc2136": bind.rfc2136_solver()}}],
        }},
    }


def _replace_solver_by_http01(issuer: Object) -> None:
    issuer["spec"]["acme"]["solvers"] = [{"http01": {"ingress": {"ingressClassName": "x"}}}]


def _point_tsig_at_a_missing_secret(issuer: Object) -> None:
    issuer["spec"]["acme"]["solvers"][0]["dns01"]["rfc2136"]["tsigSecretSecretRef"] = {
        "name": "rotated-tsig", "key": "secret"}


@pytest.mark.parametrize("edit", [_replace_solver_by_http01, _point_tsig_at_a_missing_secret])
def test_editing_the_issuers_solver_mid_challenge_cleans_up_with_the_original_config(
    bind: BindServer, tmp_path: Path, edit: Callable[[Object], None]
) -> None:
    store = RecordingStore(state_dir=tmp_path / "state")
    store.create(obj=bind.tsig_secret_object(namespace="certctl"))
    store.create(obj=_issuer(bind))
    key = order_and_challenge(store, issuer="dns", dns_name=NAME, type="DNS-01",
                              key="txt-value")

    with pytest.raises(reconciling.TransientError, match="account key"):
        challenges.reconcile(store=store, key=key, settings=_settings(bind))
    assert bind.txt_values(RECORD) == {"txt-value"}, "presented with the issuer's solver"

    issuer = store.get(kind="ClusterIssuer", namespace=None, name="dns")
    assert issuer is not None
    edit(issuer)
    store.replace(obj=issuer)
    order = store.get(kind="Order", namespace="default", name="web-1")
    assert order is not None
    order["status"] = {"state": "invalid"}
    store.replace_status(obj=order)

    # A restarted controller: only the Challenge says where the record is and how to reach it.
    challenges.reconcile(store=store, key=key, settings=_settings(bind))

    assert bind.txt_values(RECORD) == set(), "removed with the solver the challenge started with"
    challenge = store.get(kind="Challenge", namespace="default", name="web-1-abc")
    assert challenge is not None
    assert challenge["status"]["state"] == "invalid"
    assert challenge["status"]["reason"] == "Its Order is invalid: the challenge ends with it"
    warnings = [reason for _, type, reason, _ in store.events if type == "Warning"]
    assert warnings == ["Failed"], "no CleanUpError: the record's provider was still reachable"
    assert any(reason == "CleanedUp" and RECORD in message
               for _, _, reason, message in store.events)
