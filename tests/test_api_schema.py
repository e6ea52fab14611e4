"""certctl/api/schema.py: our kinds validated by their CRDs, in certctl's words.

The CRDs in crds/ are the one definition of what our kinds accept; these tests
hold the validator to the messages users get (object, dotted field, what to
change), to the order in which problems are reported, and to where it runs
in full (objects no API server has checked) or cheaply (objects read from one).
The CRD rules themselves are exercised through the parsers in
test_api_parsing.py and test_bad_input.py, and against a real API server in
test_cluster_schemas.py.
"""

from __future__ import annotations

import copy
import datetime
import gc
import tomllib
import tracemalloc
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from certctl.api import errors, kinds, schema
from tests.clusterops import admin_store, namespace

if TYPE_CHECKING:
    from tests.controlplane import ControlPlane

pytest_plugins = ["tests.controlplane"]

REPO = Path(__file__).resolve().parent.parent


def issuer(**acme: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"server": "https://acme.example.test/dir",
                            "privateKeySecretRef": {"name": "account"}}
    spec.update(acme)
    return {"apiVersion": "certctl.io/v1", "kind": "ClusterIssuer",
            "metadata": {"name": "acme"}, "spec": {"acme": spec}}


def certificate(**spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"secretName": "web-tls", "dnsNames": ["web.example.test"],
                            "issuerRef": {"name": "acme", "kind": "ClusterIssuer"}}
    body.update(spec)
    return {"apiVersion": "certctl.io/v1", "kind": "Certificate",
            "metadata": {"name": "web", "namespace": "apps"}, "spec": body}


def refused(obj: dict[str, Any], *, source: str | None = None) -> errors.InvalidObject:
    with pytest.raises(errors.InvalidObject) as raised:
        schema.validate(obj, source=source)
    return raised.value


# --- the CRDs, shipped and compiled --------------------------------------------------------


def test_the_package_reads_the_crds_folder_through_its_link_and_ships_it():
    assert schema.CRDS.is_symlink(), "one copy of the CRDs: certctl/api/crds links to crds/"
    assert schema.CRDS.resolve() == REPO / "crds"
    with (REPO / "pyproject.toml").open("rb") as file:
        package_data = tomllib.load(file)["tool"]["setuptools"]["package-data"]
    assert "crds/*.yaml" in package_data["certctl.api"]


def test_every_kind_of_ours_is_compiled_with_its_scope():
    ours = {info.kind: info for info in kinds.BY_KIND.values()
            if info.api_version == "certctl.io/v1"}
    compiled = schema.kinds()
    assert sorted(compiled) == sorted(ours)
    for kind, info in ours.items():
        assert compiled[kind].namespaced == info.namespaced, kind


# --- structural problems, in certctl's words -------------------------------------------------


def test_a_typo_is_an_unknown_field_with_the_nearest_name_and_beats_the_missing_one():
    obj = issuer()
    obj["spec"]["acme"]["sever"] = obj["spec"]["acme"].pop("server")
    error = refused(obj, source="issuers.yaml")
    assert str(error) == ("issuers.yaml: ClusterIssuer acme: spec.acme.sever: unknown field; "
                          "did you mean 'server'?")
    assert error.namespace is None, "a ClusterIssuer is cluster-scoped"
    far = refused(certificate(zzz=1))
    assert far.field == "spec.zzz"
    assert far.message.startswith("unknown field; expected one of: acme, additionalOutputFormats,")


def test_wrong_types_say_what_was_expected_and_what_was_found():
    cases = [
        (certificate(issuerRef="acme"), "spec.issuerRef", "must be a mapping, got a string"),
        (certificate(dnsNames="web.example.test"), "spec.dnsNames", "must be a list, got a string"),
        (certificate(duration=90), "spec.duration",
         "must be a string, got a number; quote the value"),
        (certificate(privateKey={"size": "4096"}), "spec.privateKey.size",
         "must be an integer, got a string"),
        (issuer(skipTLSVerify="yes"), "spec.acme.skipTLSVerify",
         "must be true or false, got a string"),
    ]
    for obj, field, message in cases:
        error = refused(obj)
        assert (error.field, error.message) == (field, message)


def test_missing_fields_choices_and_bounds_name_the_field():
    no_secret = certificate()
    del no_secret["spec"]["secretName"]
    assert refused(no_secret).detail == "spec.secretName: is required"
    assert refused(certificate(privateKey={"algorithm": "DSA"})).detail == (
        "spec.privateKey.algorithm: must be one of RSA, ECDSA, Ed25519, got 'DSA'")
    assert refused(certificate(renewBeforePercentage=100)).detail == (
        "spec.renewBeforePercentage: must be between 1 and 99, is 100")
    assert refused(certificate(revisionHistoryLimit=0)).detail == (
        "spec.revisionHistoryLimit: must be at least 1, is 0")
    refs = [{"name": f"ca-{index}"} for index in range(6)]
    assert refused(certificate(fallbackIssuerRefs=refs)).detail == (
        "spec.fallbackIssuerRefs: must have at most 5 items, has 6")


def test_formats_kubernetes_checks_are_checked_with_their_own_explanations():
    assert refused(certificate(duration="90d")).detail == (
        "spec.duration: '90d' is not a duration: days are not a unit, write 2160h")
    assert refused(issuer(caBundle="not base64!!")).detail == (
        "spec.acme.caBundle: is not valid base64; encode the file with `base64 -w0`")
    schema.validate(issuer(caBundle="Zm9v\nYmFy"))  # line breaks are skipped, as in Go


def test_nulls_are_unset_and_a_yaml_date_is_refused_as_not_a_string():
    schema.validate(certificate(commonName=None, privateKey=None))
    error = refused(certificate(commonName=datetime.date(2026, 1, 1)))
    assert error.detail == "spec.commonName: must be a string, got date; quote the value"


# --- CEL rules ---------------------------------------------------------------------------------


def test_a_rule_reports_its_own_message_at_the_node_it_is_declared_on():
    assert refused(certificate(dnsNames=[])).detail == (
        "spec: at least one of dnsNames, ipAddresses or commonName must be set")
    assert refused(certificate(duration="30m")).detail == "spec.duration: must be at least 1h"
    assert refused(certificate(commonName="a" * 65)).detail == (
        "spec.commonName: must be at most 64 characters; put long names in dnsNames")


def test_a_childs_rule_is_reported_before_its_parents():
    """A field certctl does not support, as the only issuer type: the field is named
    (its rule), not the one-of at spec that also fails."""
    for spec, field, message in [
        ({"vault": {"server": "https://vault"}}, "spec.vault", "does not support"),
        ({"selfSigned": {"crlDistributionPoints": ["http://crl"]}},
         "spec.selfSigned.crlDistributionPoints", "is a cert-manager field certctl does not "
                                                  "support; remove it"),
    ]:
        error = refused({**issuer(), "spec": spec})
        assert error.field == field
        assert message in error.message
    # Left empty, unsupported fields are accepted, as cert-manager manifests carry them.
    schema.validate(certificate(isCA=False, subject={}, uris=[]))


def test_structural_problems_come_before_rules_that_would_misread_them():
    error = refused(certificate(duration="two weeks", renewBefore="1h"))
    assert error.field == "spec.duration"
    assert "is not a duration" in error.message


def test_violations_lists_everything_status_included():
    obj = certificate(dnsNames=[])
    obj["status"] = {"revision": -1}
    assert [str(v) for v in schema.violations(obj)] == [
        "status.revision: must be at least 0, is -1"]
    obj["status"] = {"revision": 1}
    assert [str(v) for v in schema.violations(obj)] == [
        "spec: at least one of dnsNames, ipAddresses or commonName must be set"]
    # validate() reads the spec only: a status certctl wrote never makes an object unreadable.
    obj = certificate()
    obj["status"] = {"revision": "three"}
    schema.validate(obj)


# --- where the rules run -------------------------------------------------------------------------


def test_objects_from_an_api_server_get_the_structural_check_only():
    """managedFields is written only by an API server, which has enforced the CRD's rules."""
    served = certificate(renewBefore="3000h")
    served["metadata"]["managedFields"] = [{"manager": "kubectl", "operation": "Update"}]
    schema.validate(served)
    assert "must be less than duration" in refused(certificate(renewBefore="3000h")).message
    served["spec"]["dnsNames"] = "web.example.test"
    assert refused(served).detail == "spec.dnsNames: must be a list, got a string"


@pytest.fixture
def checks(monkeypatch) -> list[str]:
    """The kinds of the contents the CRDs' checks ran for (not answered from memory)."""
    ran: list[str] = []
    check = schema._violations

    def counted(kind, obj, *, cel):
        ran.append(kind.kind)
        return check(kind, obj, cel=cel)

    monkeypatch.setattr(schema, "_violations", counted)
    return ran


def test_the_same_content_is_validated_once(checks):
    obj = certificate(dnsNames=["once.example.test"])
    schema.validate(obj)
    renamed = copy.deepcopy(obj)
    renamed["metadata"]["name"] = "other"  # metadata is the API server's: not part of it
    schema.validate(renamed)
    assert checks == ["Certificate"]
    wrong = certificate(dnsNames=["once.example.test"], renewBefore="3000h")
    for _ in range(2):
        assert "must be less than duration" in refused(wrong).message
    assert checks == ["Certificate"] * 2
    served = copy.deepcopy(obj)  # the same content from an API server: checked apart
    served["metadata"]["managedFields"] = [{"manager": "kubectl", "operation": "Update"}]
    for _ in range(2):
        schema.validate(served)
    assert checks == ["Certificate"] * 3


def test_the_contents_checked_are_remembered_by_digest_not_kept():
    """A content's outcome is remembered, not the content: each object's JSON, kept
    beside its stored object, was about 2 KB of every certificate's memory in serve."""
    schema.validate(certificate())  # the rules compiled before counting
    long_name = ".".join(["x" * 60] * 4)  # no rule reads secretName: only this entry keeps it
    contents = [certificate(secretName=f"{index}{long_name}") for index in range(200)]
    # What validating allocated (under schema.py's frames) and still holds after: not
    # what the test itself or pytest allocate meanwhile.
    only_validation = [tracemalloc.Filter(True, schema.__file__, all_frames=True)]
    tracemalloc.start(64)
    try:
        before = tracemalloc.take_snapshot().filter_traces(only_validation)
        for obj in contents:
            schema.validate(obj)
        gc.collect()
        after = tracemalloc.take_snapshot().filter_traces(only_validation)
    finally:
        tracemalloc.stop()
    kept = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    assert kept < 200 * 250  # each JSON (more than 250 bytes) when they are kept


def test_contents_found_valid_are_handed_to_a_later_process_with_the_same_crds(
        monkeypatch, checks):
    """What `certctl serve` keeps across a restart: the next process takes the contents
    found valid without running the rules for them again, and no other content."""
    handed = certificate(dnsNames=["handed.example.test"])
    schema.validate(handed)
    refused(certificate(dnsNames=["handed.example.test"], renewBefore="3000h"))
    digests = schema.valid_digests()
    assert schema.crds_digest() == schema.crds_digest() and len(schema.crds_digest()) == 32

    monkeypatch.setattr(schema, "_valid", schema._Outcomes(limit=65536))  # a new process
    monkeypatch.setattr(schema, "_structure_only", schema._Outcomes(limit=16384))
    schema.remember_valid(digests)
    checks.clear()
    schema.validate(handed)
    assert checks == []  # no rule ran
    schema.validate(certificate(dnsNames=["new.example.test"]))
    assert checks == ["Certificate"]
    assert "must be less than duration" in refused(
        certificate(dnsNames=["handed.example.test"], renewBefore="3000h")).message


def test_the_outcomes_kept_are_the_most_recently_seen():
    kept = schema._Outcomes(limit=2)
    refusal = schema.Violation("spec", "wrong")
    for digest, found in ((b"a", None), (b"b", refusal)):
        kept.put(digest, found)
    assert kept.get(b"a") == (True, None)  # now the most recent
    assert kept.get(b"b") == (True, refusal)
    kept.put(b"c", None)
    assert kept.valid() == [b"c"] and kept.get(b"a") == (False, None)  # a went first


def test_a_rule_is_remembered_by_the_fields_it_reads_only_when_it_reads_no_more():
    assert schema._fields_read("!(has(self.renewBefore) && has(self.renewBeforePercentage))"
                               ) == ("renewBefore", "renewBeforePercentage")
    assert schema._fields_read("size(self) <= 64") is None  # self whole
    assert schema._fields_read("self.all(k, k != '')") is None  # a method of self
    assert schema._fields_read("self.x == 1 || self.matches('a')") is None

    # Certificates that differ only in fields a rule does not read share its outcome;
    # one that changes a field it reads gets its own. Outcomes stay those of a fresh
    # evaluation whatever came first.
    cases: list[tuple[dict[str, Any], str | None]] = [
        (certificate(dnsNames=[f"n{i}.example.test"]), None) for i in range(3)
    ]
    cases += [
        (certificate(dnsNames=["r.example.test"], renewBefore="3000h"),
         "must be less than duration"),
        (certificate(dnsNames=["d.example.test"], renewBefore="3000h", duration="4000h"), None),
        (certificate(dnsNames=["p.example.test"], renewBefore="1h", renewBeforePercentage=50),
         "mutually exclusive"),
        (certificate(dnsNames=["m.example.test"]), None),
    ]
    for obj, problem in cases:
        if problem is None:
            schema.validate(obj)
        else:
            assert problem in refused(obj).message

    # Another name: the rule that reads dnsNames reads only whether there are any
    # (`_sized_fields`), so nothing is evaluated again; two names are a new size. From
    # an empty memory: tests before this one may have validated two names already.
    schema._rule_holds.cache_clear()
    schema.validate(certificate(dnsNames=["first.example.test"]))
    before = schema._rule_holds.cache_info()
    schema.validate(certificate(dnsNames=["another.example.test"]))
    after = schema._rule_holds.cache_info()
    assert (after.misses - before.misses, after.hits - before.hits) == (0, 6)
    schema.validate(certificate(dnsNames=["one.example.test", "two.example.test"]))
    assert schema._rule_holds.cache_info().misses - after.misses == 1


def test_a_field_read_only_through_has_and_size_is_remembered_by_its_size():
    rule = ("(has(self.commonName) && self.commonName != '') || (has(self.dnsNames) && "
            "size(self.dnsNames) > 0) || (has(self.ipAddresses) && size(self.ipAddresses) > 0)")
    fields = schema._fields_read(rule)
    assert schema._sized_fields(rule, fields) == {"dnsNames", "ipAddresses"}
    assert schema._sized_fields("size(self.x) > 0 && self.x[0] == 'a'",
                                schema._fields_read("size(self.x) > 0 && self.x[0] == 'a'")
                                ) == frozenset()  # its content too
    assert schema._stand_in(["a.example", "b.example"]) == [0, 0]
    assert schema._stand_in("héllo") == "xxxxx"
    # The outcomes stay a fresh evaluation's: no names is refused, whatever came before.
    schema.validate(certificate(dnsNames=["named.example.test"]))
    assert "commonName" in refused(certificate(dnsNames=[])).message


def test_what_an_api_server_returns_carries_managed_fields(control_plane: ControlPlane):
    """The premise of the cheap path, with the real kube-apiserver."""
    api = admin_store(control_plane)
    try:
        with namespace(control_plane, "schema-managed-fields") as name:
            obj = certificate()
            obj["metadata"]["namespace"] = name
            api.create(obj=obj)
            stored = api.get(kind="Certificate", namespace=name, name="web")
            assert stored is not None and stored["metadata"]["managedFields"]
            listed = api.list(kind="Certificate", namespace=name)
            assert all(item["metadata"].get("managedFields") for item in listed)
    finally:
        api.close()
