"""certctl's CRDs (crds/) as the real kube-apiserver enforces them.

test_manifests.py checks the schemas and CEL rules with a local validator;
here the API server itself judges: `kubectl apply` refuses each bad object of
test_manifests' list with the rule's own message, accepts the examples, and
a status of every kind, as the controllers write it, survives the structural
schema's pruning unchanged (while a field the schema does not know is
pruned, so the comparison can tell).

Everything is applied with `--dry-run=server` (validated and admitted, never
stored), except the status samples, which live in a namespace of their own
and are deleted again: no controller of another test may see an issuer
pointing at a real CA.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from tests.clusterops import admin_store, namespace
from tests.test_manifests import _REJECTED, _mutate, _status_samples

if TYPE_CHECKING:
    from tests.controlplane import ControlPlane

pytest_plugins = ["tests.controlplane"]

REPO = Path(__file__).resolve().parent.parent
NAMESPACE = "schemas"

# What kube-apiserver says where test_manifests' local validator words it its own way
# (OpenAPI checks); the CEL rules' messages are the CRDs' own, the same in both.
SERVER_SAYS = {
    "issuer-typo": 'unknown field "spec.acme.sever"',
    "duration-in-days": "spec.duration in body should match",
    "unknown-algorithm": 'spec.privateKey.algorithm: Unsupported value: "DSA"',
    "unknown-usage": 'Unsupported value: "web"',
    "percentage-100": "spec.renewBeforePercentage: Invalid value: 100: "
                      "spec.renewBeforePercentage in body should be less than or equal to 99",
    "issuerRef-kind": 'spec.issuerRef.kind: Unsupported value: "Vault"',
    "revisionHistoryLimit-0": "spec.revisionHistoryLimit in body should be greater than or "
                              "equal to 1",
}


def _cel_messages() -> set[str]:
    messages: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for rule in node.get("x-kubernetes-validations") or []:
                messages.add(rule["message"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    for path in sorted((REPO / "crds").glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document and document.get("kind") == "CustomResourceDefinition":
                walk(document)
    return messages


def _apply(plane: ControlPlane, obj: dict[str, Any]) -> tuple[int, str]:
    result = plane.kubectl("apply", "--dry-run=server", "-f", "-", input=json.dumps(obj),
                           check=False)
    return result.returncode, result.stderr + result.stdout


def _in_namespace(obj: dict[str, Any], name: str) -> dict[str, Any]:
    obj = copy.deepcopy(obj)
    obj["metadata"]["name"] = name
    if obj["kind"] != "ClusterIssuer":
        obj["metadata"]["namespace"] = NAMESPACE
    return obj


@pytest.fixture(scope="module")
def schemas(control_plane: ControlPlane) -> Iterator[ControlPlane]:
    with namespace(control_plane, NAMESPACE):
        yield control_plane


@pytest.mark.parametrize("example", ["letsencrypt-staging.yaml", "rfc2136.yaml",
                                     "selfsigned.yaml", "certificate.yaml"])
def test_examples_are_accepted(schemas: ControlPlane, example: str) -> None:
    obj = _mutate(example, lambda spec: None)
    code, said = _apply(schemas, _in_namespace(obj, f"good-{example.split('.')[0]}"))
    assert code == 0, said
    assert "(server dry run)" in said


@pytest.mark.parametrize(("example", "change", "message"),
                         [pytest.param(*case[1:], id=case[0]) for case in _REJECTED])
def test_kubectl_apply_refuses_bad_objects_with_the_rules_message(
    schemas: ControlPlane, request: pytest.FixtureRequest, example: str, change: Any,
    message: str,
) -> None:
    case = request.node.callspec.id
    obj = _in_namespace(_mutate(example, change), f"bad-{case}")
    code, said = _apply(schemas, obj)
    assert code != 0, f"the API server accepted {case}: {said}"
    assert f'"bad-{case}" is invalid' in said or "strict decoding error" in said, said
    if case in SERVER_SAYS:
        assert SERVER_SAYS[case] in said, said
    else:
        # A CEL rule: its message as the CRD words it, at the field it is declared on.
        matching = [m for m in _cel_messages() if message.endswith(m)]
        assert len(matching) == 1, f"{case}: {message!r} is no CRD rule's message"
        rule_message = matching[0]
        assert rule_message in said, said
        field = message.removesuffix(rule_message).removesuffix(": ")
        if field:
            assert f"{field}: Invalid value" in said, said


def test_every_status_the_controllers_write_survives_pruning(schemas: ControlPlane) -> None:
    api = admin_store(schemas)
    created: list[dict[str, Any]] = []
    try:
        for sample in _status_samples():
            obj = _in_namespace(sample, f"status-{sample['kind'].lower()}")
            if obj["kind"] == "ClusterIssuer":  # never a real CA, should a controller look
                obj["spec"]["acme"]["server"] = "https://127.0.0.1:9/directory"
            status = obj.pop("status")
            stored = api.create(obj=obj)
            created.append(stored)
            # A field no schema knows goes too: proof that the comparison below can fail.
            stored["status"] = dict(copy.deepcopy(status), unknownToTheSchema="pruned")
            answered = api.replace_status(obj=stored)
            assert "unknownToTheSchema" not in answered["status"]
            assert answered["status"] == status, obj["kind"]
            read_back = api.get(kind=obj["kind"], namespace=obj["metadata"].get("namespace"),
                                name=obj["metadata"]["name"])
            assert read_back is not None and read_back["status"] == status, obj["kind"]
    finally:
        for obj in created:
            api.delete(kind=obj["kind"], namespace=obj["metadata"].get("namespace"),
                       name=obj["metadata"]["name"])
        api.close()
