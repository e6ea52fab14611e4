"""The temporary objects that route an HTTP-01 token to the data plane in a cluster.

cert-manager starts a solver pod, a Service and an Ingress per challenge.
certctl starts no pod: the data plane answers every live token itself. What
remains is routing, for clusters where the challenged host is served by
another Ingress controller (the solver's `ingressClassName`): an Ingress for
exactly `/.well-known/acme-challenge/<token>` on the challenged host, whose
backend is an ExternalName Service in the challenge's namespace (an Ingress
may only name Services of its own namespace) aliasing the data-plane Service.

Both objects have deterministic names derived from the Challenge, so a
restarted controller finds (and cleans up) what an earlier run created, and
both are owned by the Challenge, so the cluster's garbage collector removes
them too if certctl is gone.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from certctl.api import annotations as annotation_keys
from certctl.api.resources import Challenge, Http01IngressSolver, ObjectKey

SOLVER_LABEL = "acme.cert-manager.io/http01-solver"  # cert-manager's, so users' tooling finds it
CHALLENGE_LABEL = "certctl.io/challenge"
CHALLENGE_PATH = "/.well-known/acme-challenge/"


@dataclass(frozen=True, kw_only=True)
class DataPlaneService:
    """Where the data plane is reachable inside the cluster."""

    namespace: str
    name: str
    port: int = 80
    cluster_domain: str = "cluster.local"

    @property
    def fqdn(self) -> str:
        return f"{self.name}.{self.namespace}.svc.{self.cluster_domain}"


def solver_name(challenge_name: str) -> str:
    """The name of the solver Ingress and Service of one Challenge (both <= 63 chars,
    a valid DNS label, as Service names must be)."""
    digest = hashlib.sha256(challenge_name.encode()).hexdigest()[:10]
    return f"certctl-http01-{digest}"


def solver_keys(challenge: ObjectKey) -> tuple[ObjectKey, ObjectKey]:
    name = solver_name(challenge.name)
    return (ObjectKey(kind="Ingress", namespace=challenge.namespace, name=name),
            ObjectKey(kind="Service", namespace=challenge.namespace, name=name))


def _metadata(challenge_obj: dict[str, Any], *, name: str) -> dict[str, Any]:
    challenge_meta = challenge_obj["metadata"]
    return {
        "name": name,
        "namespace": challenge_meta["namespace"],
        "labels": {SOLVER_LABEL: "true", CHALLENGE_LABEL: challenge_meta["name"]},
        "ownerReferences": [{
            "apiVersion": challenge_obj["apiVersion"],
            "kind": challenge_obj["kind"],
            "name": challenge_meta["name"],
            "uid": challenge_meta["uid"],
            "controller": True,
            "blockOwnerDeletion": True,
        }],
    }


def solver_service(
    *, challenge_obj: dict[str, Any], data_plane: DataPlaneService
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(challenge_obj, name=solver_name(challenge_obj["metadata"]["name"])),
        "spec": {
            "type": "ExternalName",
            "externalName": data_plane.fqdn,
            "ports": [{"name": "http", "port": data_plane.port, "protocol": "TCP"}],
        },
    }


def solver_ingress(
    *,
    challenge_obj: dict[str, Any],
    challenge: Challenge,
    solver: Http01IngressSolver | None,
    data_plane: DataPlaneService,
) -> dict[str, Any]:
    name = solver_name(challenge.name)
    metadata = _metadata(challenge_obj, name=name)
    spec: dict[str, Any] = {
        "rules": [{
            "host": challenge.dns_name,
            "http": {"paths": [{
                "path": CHALLENGE_PATH + challenge.token,
                "pathType": "Exact",
                "backend": {"service": {"name": name, "port": {"number": data_plane.port}}},
            }]},
        }],
    }
    if solver is not None and solver.ingress_class_name:
        spec["ingressClassName"] = solver.ingress_class_name
    elif solver is not None and solver.ingress_class:
        # The legacy field maps to the legacy annotation, as in cert-manager.
        metadata["annotations"] = {annotation_keys.INGRESS_CLASS: solver.ingress_class}
    return {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": metadata,
            "spec": spec}
