"""ARI and profile fields on the real kube-apiserver: the CRDs keep what certctl writes.

An API server prunes every field its structural schema does not know, silently:
a Certificate whose `status.acme.ari` were pruned would fetch its window again
on every pass and never show where its renewal time came from.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

from tests.clusterops import admin_store, namespace

if TYPE_CHECKING:
    from tests.controlplane import ControlPlane

pytest_plugins = ["tests.controlplane"]

NAMESPACE = "ari-fields"
STAMP = "2026-01-01T10:00:00Z"
ISSUER_REF = {"name": "letsencrypt", "kind": "ClusterIssuer", "group": "certctl.io"}


@pytest.fixture(scope="module")
def plane(control_plane: ControlPlane) -> Iterator[ControlPlane]:
    with namespace(control_plane, NAMESPACE):
        yield control_plane


def _certificate() -> dict[str, Any]:
    return {
        "apiVersion": "certctl.io/v1", "kind": "Certificate",
        "metadata": {"name": "web", "namespace": NAMESPACE},
        "spec": {"secretName": "web-tls", "dnsNames": ["web.example.test"],
                 "issuerRef": ISSUER_REF, "acme": {"profile": "shortlived"}},
    }


def _order() -> dict[str, Any]:
    return {
        "apiVersion": "certctl.io/v1", "kind": "Order",
        "metadata": {"name": "web-2-0123456789", "namespace": NAMESPACE},
        "spec": {"request": "LS0tLS1CRUdJTg==", "issuerRef": ISSUER_REF,
                 "dnsNames": ["web.example.test"], "profile": "shortlived",
                 "replaces": "aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE"},
    }


def test_ari_status_and_profile_fields_survive_the_api_servers_pruning(
    plane: ControlPlane,
) -> None:
    api = admin_store(plane)
    statuses: dict[str, dict[str, Any]] = {
        "Certificate": {
            "notBefore": STAMP, "notAfter": STAMP, "renewalTime": STAMP,
            "renewalTimeSource": "ARI", "revision": 1,
            "acme": {"ari": {
                "certID": "aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE", "lastChecked": STAMP,
                "nextCheck": STAMP, "suggestedWindow": {"start": STAMP, "end": STAMP},
                "selectedTime": STAMP, "explanationURL": "https://ca.example/why",
            }},
        },
        "Order": {"state": "pending", "url": "https://ca.example/order/1",
                  "replacesRefused": "urn:ietf:params:acme:error:unauthorized: not yours"},
    }
    created = []
    try:
        for obj in (_certificate(), _order()):
            stored = api.create(obj=obj)
            created.append(stored)
            assert stored["spec"] == obj["spec"], obj["kind"]
            stored["status"] = statuses[obj["kind"]]
            answered = api.replace_status(obj=stored)
            assert answered["status"] == statuses[obj["kind"]], obj["kind"]
    finally:
        for obj in created:
            api.delete(kind=obj["kind"], namespace=NAMESPACE, name=obj["metadata"]["name"])
        api.close()
