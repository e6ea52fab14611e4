"""dns-account-01 (draft-ietf-acme-dns-account-label) through RFC 2136 to a real BIND.

The current Pebble offers dns-account-01 beside dns-01 and resolves through
the same BIND (`-dnsserver`), so its validation sees exactly the TXT records
certctl wrote at `_<account label>._acme-challenge.<name>`. Debian's Pebble 2.4
does not offer it: a solver that prefers it falls back to dns-01 and says so,
one that requires it fails the order naming what is missing.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from certctl.api import parsing
from certctl.api.errors import InvalidObject
from certctl.api.resources import AcmeIssuer
from certctl.pki import secret as tls_secret
from certctl.solvers import registry
from certctl.solvers.dns01 import lookup
from certctl.solvers.dns01 import solver as dns01_solver
from tests.bind import BindServer
from tests.clusterops import admin_store, namespace
from tests.pebble import PebbleBuild, PebbleServer, free_port
from tests.serving import Serving, dns_names, eventually, write_yaml
from tests.test_dns01_serve import certificate, dns_cluster_issuer, tsig_secret

if TYPE_CHECKING:
    from tests.controlplane import ControlPlane

pytest_plugins = ["tests.controlplane"]

NAME = "shared.example.test"


def test_the_account_label_is_the_drafts_example_and_takes_the_first_ten_bytes():
    # draft-ietf-acme-dns-account-label's example account.
    assert (dns01_solver.account_label("https://example.com/acme/acct/ExampleAccount")
            == "_ujmmovf2vn55tgye")
    url = "https://127.0.0.1:14000/my-account/1"
    expected = base64.b32encode(hashlib.sha256(url.encode()).digest()[:10]).decode().lower()
    assert dns01_solver.account_label(url) == "_" + expected
    assert len(expected) == 16 and "=" not in expected


@pytest.mark.parametrize(("field", "types"), [
    (None, ("dns-01",)),
    ("Never", ("dns-01",)),
    ("IfOffered", ("dns-account-01", "dns-01")),
    ("Required", ("dns-account-01",)),
])
def test_account_label_decides_which_challenge_types_the_solver_takes(
    field: str | None, types: tuple[str, ...]
):
    dns01: dict[str, Any] = {"rfc2136": {"nameserver": "127.0.0.1:53"}}
    if field is not None:
        dns01["accountLabel"] = field
    issuer = parsing.parse_issuer(_issuer_object([{"dns01": dns01}]))
    assert isinstance(issuer.spec, AcmeIssuer)
    solver = issuer.spec.solvers[0]
    assert registry.challenge_types(solver.config) == types
    # The Challenge's copy of the solver keeps the choice.
    copied = parsing.solver_spec(solver)
    assert copied["dns01"].get("accountLabel") == (field if field != "Never" else None)


def test_a_misspelt_account_label_names_the_field_and_the_choices():
    issuer = _issuer_object([{"dns01": {"accountLabel": "Auto",
                                        "rfc2136": {"nameserver": "127.0.0.1:53"}}}])
    with pytest.raises(InvalidObject) as caught:
        parsing.parse_issuer(issuer)
    assert ("spec.acme.solvers[0].dns01.accountLabel: must be one of Never, IfOffered,"
            " Required, got 'Auto'") in str(caught.value)


def _issuer_object(solvers: list[dict[str, Any]]) -> dict[str, Any]:
    return {"apiVersion": "cert-manager.io/v1", "kind": "ClusterIssuer",
            "metadata": {"name": "dns"},
            "spec": {"acme": {"server": "https://127.0.0.1:14000/dir",
                              "privateKeySecretRef": {"name": "account"},
                              "solvers": solvers}}}


# --- end to end -------------------------------------------------------------------


@pytest.fixture
def bind(tmp_path: Path) -> Iterator[BindServer]:
    with BindServer.start(tmp_path=tmp_path / "bind") as server:
        yield server


def _pebble(tmp_path: Path, bind: BindServer, build: PebbleBuild) -> Iterator[PebbleServer]:
    # Every authorization fresh: a reused one would need no challenge at all.
    server = PebbleServer.start(tmp_path=tmp_path / "pebble", http_port=free_port(),
                                dns_server=bind.nameserver, build=build,
                                env={"PEBBLE_AUTHZREUSE": "0"})
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def current_pebble(tmp_path: Path, bind: BindServer) -> Iterator[PebbleServer]:
    yield from _pebble(tmp_path, bind, "current")


@pytest.fixture
def debian_pebble(tmp_path: Path, bind: BindServer) -> Iterator[PebbleServer]:
    yield from _pebble(tmp_path, bind, "debian")


def issuer_with(pebble: PebbleServer, bind: BindServer, *, account_label: str | None,
                name: str = "pebble-dns") -> dict[str, Any]:
    issuer = dns_cluster_issuer(pebble, bind)
    issuer["metadata"]["name"] = name
    issuer["spec"]["acme"]["privateKeySecretRef"]["name"] = f"{name}-account"
    if account_label is not None:
        issuer["spec"]["acme"]["solvers"][0]["dns01"]["accountLabel"] = account_label
    return issuer


def start(*, directory: Path, pebble: PebbleServer, bind: BindServer) -> Serving:
    """One `certctl serve` installation (its own state dir, hence its own ACME account).

    Each gets an HTTP port of its own so two can run side by side (DNS-01 needs none)."""
    # Serving listens for HTTP-01 on the Pebble's `http_port`: a copy names another.
    own_port = copy.copy(pebble)
    own_port.http_port = free_port()
    return Serving(manifests=directory / "manifests", state_dir=directory / "state",
                   pebble=own_port,
                   dns01=dns01_solver.Options(
                       recursive_nameservers=(lookup.parse_nameserver(bind.nameserver),),
                       recursive_nameservers_only=True)).start()


class Watcher:
    """Records, while certctl runs, the Challenges and Order authorizations it creates and
    the TXT values BIND serves at each Challenge's name (they are gone once it ends)."""

    def __init__(self, *, runs: list[Serving], bind: BindServer) -> None:
        self.runs = runs
        self.bind = bind
        self.challenges: dict[str, dict[str, Any]] = {}  # by name
        self.authorizations: list[dict[str, Any]] = []
        self.txt: dict[str, set[str]] = {}  # fqdn -> values seen
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Watcher:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            for run in self.runs:
                for challenge in run.store.list(kind="Challenge"):
                    self.challenges[challenge["metadata"]["name"]] = challenge
                for order in run.store.list(kind="Order"):
                    for found in (order.get("status") or {}).get("authorizations") or []:
                        if found not in self.authorizations:
                            self.authorizations.append(found)
            for challenge in self.challenges.values():
                fqdn = fqdn_of(challenge)
                self.txt.setdefault(fqdn, set()).update(self.bind.txt_values(fqdn))


def fqdn_of(challenge: dict[str, Any]) -> str:
    spec = challenge["spec"]
    name = f"_acme-challenge.{spec['dnsName']}."
    if spec["type"] == "DNS-ACCOUNT-01":
        digest = hashlib.sha256(spec["accountURI"].encode()).digest()[:10]
        name = f"_{base64.b32encode(digest).decode().lower()}.{name}"
    return name


def _issued(run: Serving, name: str) -> dict[str, Any] | None:
    ready = run.condition(name, "Ready")
    return ready if ready.get("status") == "True" else None


def _leaf_names(run: Serving, secret: str) -> list[str]:
    contents = tls_secret.read_tls_secret(run.store.get(kind="Secret", namespace="default",
                                                        name=secret))
    return dns_names(contents.leaf)


def test_a_certificate_is_issued_by_dns_account_01_with_the_record_at_the_account_label(
    tmp_path: Path, bind: BindServer, current_pebble: PebbleServer
):
    pebble = current_pebble
    directory = tmp_path / "one"
    (directory / "manifests").mkdir(parents=True)
    write_yaml(directory / "manifests" / "all.yaml",
               issuer_with(pebble, bind, account_label="IfOffered"),
               tsig_secret(bind.tsig_secret), certificate("acct", NAME, f"*.{NAME}"))
    run = start(directory=directory, pebble=pebble, bind=bind)
    try:
        with Watcher(runs=[run], bind=bind) as watcher:
            eventually(lambda: _issued(run, "acct"), timeout=60, what="Ready=True")
        assert sorted(_leaf_names(run, "acct-tls")) == [f"*.{NAME}", NAME]
        challenges = list(watcher.challenges.values())
        assert len(challenges) == 2  # the name and its wildcard, one TXT value each
        assert {c["spec"]["type"] for c in challenges} == {"DNS-ACCOUNT-01"}
        account = challenges[0]["spec"]["accountURI"]
        assert account.startswith(pebble.directory_url.rsplit("/", 1)[0])
        label = "_" + base64.b32encode(
            hashlib.sha256(account.encode()).digest()[:10]).decode().lower()
        fqdn = f"{label}._acme-challenge.{NAME}."
        # Both values were served at the account's own name, none at the shared one.
        assert watcher.txt[fqdn] == {c["spec"]["key"] for c in challenges}
        assert f"_acme-challenge.{NAME}." not in watcher.txt
        assert bind.txt_values(f"_acme-challenge.{NAME}.") == set()
        # The Order's final status lists its authorizations in full (while pending, its
        # Challenges record them).
        authorizations = [a for order in run.store.list(kind="Order")
                          for a in order["status"]["authorizations"]]
        assert len(authorizations) == 2
        assert {a["challenges"][0]["type"] for a in authorizations} == {"dns-account-01"}
        assert not any("challengeFallback" in a for a in authorizations)
        eventually(lambda: bind.txt_values(fqdn) == set(), timeout=10,
                   what="the TXT record at the account label to be removed")
    finally:
        run.stop()


def test_two_installations_validate_one_name_at_once_each_at_its_own_label(
    tmp_path: Path, bind: BindServer, current_pebble: PebbleServer
):
    pebble = current_pebble
    runs: list[Serving] = []
    for installation in ("a", "b"):
        directory = tmp_path / installation
        (directory / "manifests").mkdir(parents=True)
        write_yaml(directory / "manifests" / "all.yaml",
                   issuer_with(pebble, bind, account_label="Required"),
                   tsig_secret(bind.tsig_secret), certificate("shared", NAME))
    try:
        for installation in ("a", "b"):
            runs.append(start(directory=tmp_path / installation, pebble=pebble, bind=bind))
        with Watcher(runs=runs, bind=bind) as watcher:
            eventually(lambda: all(_issued(run, "shared") for run in runs) or None,
                       timeout=60, what="both installations' certificates")
        for run in runs:
            assert _leaf_names(run, "shared-tls") == [NAME]
        challenges = list(watcher.challenges.values())
        assert len(challenges) == 2
        accounts = {c["spec"]["accountURI"] for c in challenges}
        assert len(accounts) == 2, "two installations, two ACME accounts"
        fqdns = {fqdn_of(c) for c in challenges}
        assert len(fqdns) == 2
        for challenge in challenges:
            # Each installation's value was at its own label, and only its own value.
            assert watcher.txt[fqdn_of(challenge)] == {challenge["spec"]["key"]}
        # Two names, neither the shared one dns-01 would have had them both use: the
        # records can stand side by side. (Whether they did depended on how fast each
        # installation validated: CI saw one finish before the other presented.)
        assert f"_acme-challenge.{NAME}." not in fqdns
        eventually(lambda: not any(bind.txt_values(fqdn) for fqdn in fqdns), timeout=10,
                   what="both records to be cleaned up")
        assert bind.txt_values(f"_acme-challenge.{NAME}.") == set()
    finally:
        for run in runs:
            run.stop()


def test_without_the_opt_in_dns_01_is_solved_even_when_dns_account_01_is_offered(
    tmp_path: Path, bind: BindServer, current_pebble: PebbleServer
):
    directory = tmp_path / "never"
    (directory / "manifests").mkdir(parents=True)
    write_yaml(directory / "manifests" / "all.yaml",
               issuer_with(current_pebble, bind, account_label=None),
               tsig_secret(bind.tsig_secret), certificate("plain", NAME))
    run = start(directory=directory, pebble=current_pebble, bind=bind)
    try:
        with Watcher(runs=[run], bind=bind) as watcher:
            eventually(lambda: _issued(run, "plain"), timeout=60, what="Ready=True")
        challenges = list(watcher.challenges.values())
        assert [c["spec"]["type"] for c in challenges] == ["DNS-01"]
        assert "accountURI" not in challenges[0]["spec"]
        assert watcher.txt[f"_acme-challenge.{NAME}."] == {challenges[0]["spec"]["key"]}
    finally:
        run.stop()


def test_debians_pebble_falls_back_to_dns_01_and_a_required_label_fails_clearly(
    tmp_path: Path, bind: BindServer, debian_pebble: PebbleServer
):
    pebble = debian_pebble
    directory = tmp_path / "old"
    (directory / "manifests").mkdir(parents=True)
    required = certificate("required", f"required.{NAME}")
    required["spec"]["issuerRef"]["name"] = "pebble-required"
    write_yaml(directory / "manifests" / "all.yaml",
               issuer_with(pebble, bind, account_label="IfOffered"),
               issuer_with(pebble, bind, account_label="Required", name="pebble-required"),
               tsig_secret(bind.tsig_secret), certificate("fallback", NAME), required)
    run = start(directory=directory, pebble=pebble, bind=bind)
    try:
        with Watcher(runs=[run], bind=bind) as watcher:
            eventually(lambda: _issued(run, "fallback"), timeout=60, what="Ready=True")
            issuing = eventually(
                lambda: run.condition("required", "Issuing").get("reason") == "Failed"
                and run.condition("required", "Issuing"), timeout=30,
                what="the Required certificate to fail")
        assert [c["spec"]["type"] for c in watcher.challenges.values()] == ["DNS-01"]
        fallback = [a for a in watcher.authorizations
                    if a.get("identifier") == NAME and "challenges" in a]
        assert [a.get("challengeFallback") for a in fallback] == [
            f"The ACME server offers no DNS-ACCOUNT-01 challenge for {NAME}; solving DNS-01"
            " instead"]
        assert fallback[0]["challenges"][0]["type"] == "dns-01"
        assert (f"the ACME server offers no DNS-ACCOUNT-01 challenge for required.{NAME}"
                " (spec.acme.solvers[0])") in issuing["message"]
        assert run.condition("required", "Ready")["status"] == "False"
    finally:
        run.stop()


# --- the CRDs, on a real API server ---------------------------------------------------


def test_the_crds_keep_what_dns_account_01_writes_and_refuse_an_unknown_mode(
    control_plane: ControlPlane,
):
    with namespace(control_plane, "dns-account"):
        issuer = _issuer_object([{"dns01": {"accountLabel": "IfOffered",
                                            "rfc2136": {"nameserver": "127.0.0.1:53"}}}])
        issuer["apiVersion"] = "certctl.io/v1"
        issuer["metadata"]["name"] = "dns-account-schema"
        issuer["spec"]["acme"]["server"] = "https://127.0.0.1:9/directory"  # never contacted
        bad = copy.deepcopy(issuer)
        bad["spec"]["acme"]["solvers"][0]["dns01"]["accountLabel"] = "Auto"
        refused = control_plane.kubectl("apply", "--dry-run=server", "-f", "-",
                                        input=json.dumps(bad), check=False)
        assert refused.returncode != 0
        assert 'accountLabel: Unsupported value: "Auto"' in refused.stderr
        api = admin_store(control_plane)
        try:
            stored = api.create(obj=issuer)
            assert stored["spec"]["acme"]["solvers"][0]["dns01"]["accountLabel"] == "IfOffered"
            solver = parsing.solver_spec(_acme(parsing.parse_issuer(stored)).solvers[0])
            challenge = api.create(obj={
                "apiVersion": "certctl.io/v1", "kind": "Challenge",
                "metadata": {"name": "acct", "namespace": "dns-account"},
                "spec": {"url": "https://acme.example/chall/1",
                         "authorizationURL": "https://acme.example/authz/1",
                         "dnsName": NAME, "wildcard": False, "type": "DNS-ACCOUNT-01",
                         "token": "tok", "key": "txt-value",
                         "accountURI": "https://acme.example/acct/1",
                         "issuerRef": {"name": "dns-account-schema", "kind": "ClusterIssuer",
                                       "group": "certctl.io"},
                         "solverIndex": 0, "solver": solver}})
            parsed = parsing.parse_challenge(challenge)
            assert (parsed.type, parsed.account_uri) == ("DNS-ACCOUNT-01",
                                                         "https://acme.example/acct/1")
            assert dns01_solver.challenge_fqdn(parsed) == (
                f"{dns01_solver.account_label('https://acme.example/acct/1')}"
                f"._acme-challenge.{NAME}.")
            order = api.create(obj={
                "apiVersion": "certctl.io/v1", "kind": "Order",
                "metadata": {"name": "acct", "namespace": "dns-account"},
                "spec": {"request": base64.b64encode(b"csr").decode(), "dnsNames": [NAME],
                         "issuerRef": {"name": "dns-account-schema", "kind": "ClusterIssuer"}}})
            fallback = {"url": "https://acme.example/authz/1", "identifier": NAME,
                        "challengeFallback": "The ACME server offers no DNS-ACCOUNT-01",
                        "challenges": [{"type": "dns-01", "url": "u", "token": "tok"}]}
            order["status"] = {"state": "pending", "authorizations": [fallback]}
            answered = api.replace_status(obj=order)
            assert answered["status"]["authorizations"] == [fallback]  # nothing pruned
        finally:
            api.delete(kind="ClusterIssuer", namespace=None, name="dns-account-schema")
            api.close()


def _acme(issuer: Any) -> AcmeIssuer:
    assert isinstance(issuer.spec, AcmeIssuer)
    return issuer.spec
