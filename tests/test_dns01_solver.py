"""The DNS-01 solver the Challenge reconciler uses: issuer config in, TXT records in BIND out."""

from __future__ import annotations

import base64
import datetime
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from certctl.api import parsing
from certctl.api.resources import Challenge, IssuerRef, ObjectKey
from certctl.solvers.dns01 import errors, lookup
from certctl.solvers.dns01 import solver as dns01_solver
from certctl.store.local import LocalStore
from tests.bind import BindServer

NOW = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
KEY = ObjectKey(kind="Challenge", namespace="default", name="c1")
ALIAS_DELEGATION = ["_acme-challenge.alias IN CNAME alias.delegated.test."]


@pytest.fixture
def bind(tmp_path: Path) -> Iterator[BindServer]:
    with BindServer.start(tmp_path=tmp_path, zones=("example.test", "delegated.test"),
                          records={"example.test": ALIAS_DELEGATION}) as server:
        yield server


@pytest.fixture
def store(tmp_path: Path, bind: BindServer) -> LocalStore:
    found = LocalStore(manifests_dir=None, state_dir=tmp_path / "state")
    found.create(obj={"apiVersion": "v1", "kind": "Secret",
                      "metadata": {"name": "tsig", "namespace": "certctl"},
                      "data": {"secret": base64.b64encode(bind.tsig_secret.encode()).decode()}})
    return found


def issuer(bind: BindServer, *, provider: dict[str, Any] | None = None) -> Any:
    return parsing.parse_issuer({
        "apiVersion": "cert-manager.io/v1", "kind": "ClusterIssuer",
        "metadata": {"name": "dns"},
        "spec": {"acme": {
            "server": "https://acme.example.test/dir",
            "privateKeySecretRef": {"name": "account"},
            "solvers": [
                {"http01": {"ingress": {}}},
                {"dns01": provider or {"rfc2136": {
                    "nameserver": bind.nameserver, "tsigKeyName": bind.tsig_key_name,
                    "tsigAlgorithm": "hmac-sha256",
                    "tsigSecretSecretRef": {"name": "tsig", "key": "secret"}}}},
            ],
        }},
    })


def challenge(
    bind: BindServer, dns_name: str, *, wildcard: bool = False, value: str = "txt-value",
    key: ObjectKey = KEY, provider: dict[str, Any] | None = None,
) -> Challenge:
    """A Challenge carrying the issuer's DNS-01 solver (`solvers[1]`), as orders.py makes it."""
    return Challenge(namespace="default", name=key.name, url="https://acme.example.test/chall",
                     authorization_url="https://acme.example.test/authz", dns_name=dns_name,
                     wildcard=wildcard, type="DNS-01", token="token", key=value,
                     issuer_ref=IssuerRef(name="dns", kind="ClusterIssuer"),
                     solver=issuer(bind, provider=provider).spec.solvers[1], solver_index=1)


def solver_via(bind: BindServer) -> dns01_solver.Dns01Solver:
    return dns01_solver.Dns01Solver(
        cluster_resource_namespace="certctl", options=dns01_solver.Options(
            recursive_nameservers=(lookup.parse_nameserver(bind.nameserver),),
            recursive_nameservers_only=True, query_timeout=1.0))


def test_wildcard_and_apex_values_share_the_name_and_each_cleanup_takes_only_its_own(
    bind: BindServer, store: LocalStore
):
    solver = solver_via(bind)
    apex_key = KEY
    wildcard_key = ObjectKey(kind="Challenge", namespace="default", name="c2")
    for item in (challenge(bind, "example.test", value="apex", key=apex_key),
                 challenge(bind, "example.test", wildcard=True, value="wild", key=wildcard_key)):
        presented = solver.present_record(store=store, challenge=item, now=NOW)
        assert presented.record.fqdn == "_acme-challenge.example.test."
        solver.check_record(record=presented.record)
    assert bind.txt_values("_acme-challenge.example.test.") == {"apex", "wild"}
    removed = solver.remove_record(key=apex_key)
    assert removed is not None and removed.record.value == "apex"
    assert bind.txt_values("_acme-challenge.example.test.") == {"wild"}
    assert solver.remove_record(key=apex_key) is None, "nothing left to remove for that challenge"
    solver.remove_record(key=wildcard_key)
    assert bind.txt_values("_acme-challenge.example.test.") == set()


def test_a_delegated_acme_challenge_name_is_written_in_the_zone_its_cname_points_to(
    bind: BindServer, store: LocalStore
):
    solver = solver_via(bind)
    presented = solver.present_record(store=store, challenge=challenge(bind, "alias.example.test"),
                                      now=NOW)
    assert (presented.record.fqdn, presented.record.zone) == ("alias.delegated.test.",
                                                              "delegated.test.")
    assert bind.txt_values("alias.delegated.test.") == {"txt-value"}
    solver.check_record(record=presented.record)
    assert presented.describe() == (
        "TXT alias.delegated.test. in zone delegated.test. via the rfc2136 provider")


def test_a_restarted_process_cleans_up_from_the_challenge_and_issuer(
    bind: BindServer, store: LocalStore
):
    solver_via(bind).present_record(store=store, challenge=challenge(bind, "www.example.test"),
                                    now=NOW)
    restarted = solver_via(bind)
    assert restarted.remove_record(key=KEY) is None, "a new process knows nothing by itself"
    assert bind.txt_values("_acme-challenge.www.example.test.") == {"txt-value"}
    restarted.remove_record(key=KEY, rebuild_from=(store, challenge(bind, "www.example.test")))
    assert bind.txt_values("_acme-challenge.www.example.test.") == set()


def test_provider_errors_name_the_issuer_and_the_field(bind: BindServer, store: LocalStore):
    solver = solver_via(bind)
    with pytest.raises(errors.ConfigError) as raised:
        solver.present_record(store=store, now=NOW, challenge=challenge(
            bind, "www.example.test", provider={"rfc2136": {"nameserver": ""}}))
    assert str(raised.value) == (
        "ClusterIssuer dns: spec.acme.solvers[1].dns01.rfc2136.nameserver: is required")
    with pytest.raises(errors.ConfigError, match="ClusterIssuer dns: no DNS-01 provider named "
                                                 "'nosuch'"):
        solver.present_record(store=store, now=NOW, challenge=challenge(
            bind, "www.example.test", provider={"nosuch": {}}))
    assert solver.presented(KEY) is None
