"""The fallback fields of crds/certificates.yaml as the real kube-apiserver enforces them:
a Certificate with fallback issuers is admitted, the mistakes the parser refuses are
refused with the CEL rules' messages (which also shows the rules fit the API server's
cost budget), and the status the reconciler writes survives pruning unchanged."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests import lifecycle
from tests.clusterops import admin_store, namespace
from tests.test_issuer_fallback import certificate

if TYPE_CHECKING:
    from tests.controlplane import ControlPlane

pytest_plugins = ["tests.controlplane"]

NAMESPACE = "fallback-schemas"


@pytest.fixture(scope="module")
def plane(control_plane: ControlPlane) -> Iterator[ControlPlane]:
    with namespace(control_plane, NAMESPACE):
        yield control_plane


def _apply(plane: ControlPlane, obj: dict[str, Any], name: str) -> tuple[int, str]:
    obj = copy.deepcopy(obj)
    obj["metadata"] = {"name": name, "namespace": NAMESPACE}
    result = plane.kubectl("apply", "--dry-run=server", "-f", "-", input=json.dumps(obj),
                           check=False)
    return result.returncode, result.stderr + result.stdout


def test_a_certificate_with_fallback_issuers_is_admitted(plane: ControlPlane) -> None:
    code, said = _apply(plane, certificate(fallbackAfterFailedAttempts=2), "good")
    assert code == 0, said


@pytest.mark.parametrize(("spec", "message"), [
    ({"fallbackIssuerRefs": [{"name": "first", "kind": "ClusterIssuer"}]},
     "fallbackIssuerRefs must not name the issuer in issuerRef; name each issuer once"),
    ({"fallbackIssuerRefs": [{"name": "b"}, {"name": "b", "kind": "Issuer"}]},
     "name each issuer once"),
    ({"fallbackIssuerRefs": None, "fallbackAfterFailedAttempts": 2},
     "fallbackAfterFailedAttempts only applies with fallbackIssuerRefs"),
], ids=["names-issuerRef-again", "named-twice", "attempts-without-fallbacks"])
def test_the_api_server_refuses_the_fallback_mistakes(
    plane: ControlPlane, spec: dict[str, Any], message: str
) -> None:
    obj = certificate()
    obj["spec"].update(spec)
    obj["spec"] = {key: value for key, value in obj["spec"].items() if value is not None}
    code, said = _apply(plane, obj, "bad")
    assert code != 0, said
    assert message in said, said


def test_the_fallback_status_survives_pruning(plane: ControlPlane, tmp_path: Path) -> None:
    world = lifecycle.World(tmp_path)
    world.add_acme_issuer("first")
    world.add_acme_issuer("second")
    world.add_certificate("web", issuer="first", fallbackIssuerRefs=[
        {"name": "second", "kind": "ClusterIssuer"}])
    world.reconcile("web")
    world.fail_order("web", reason="urn:ietf:params:acme:error:rateLimited: too many")
    world.reconcile("web")
    world.issue("web")
    status = world.status("web")
    assert status["issuedBy"] and status["issuerFallback"]["passedOver"]
    api = admin_store(plane)
    try:
        obj = certificate()
        obj["metadata"] = {"name": "status", "namespace": NAMESPACE}
        stored = api.create(obj=obj)
        stored["status"] = dict(copy.deepcopy(status), unknownToTheSchema="pruned")
        answered = api.replace_status(obj=stored)
        assert answered["status"] == status
    finally:
        api.delete(kind="Certificate", namespace=NAMESPACE, name="status")
        api.close()
