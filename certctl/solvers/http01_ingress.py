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

import copy
import hashlib
from dataclasses import dataclass
from typing import Any

from certctl.api import annotations as annotation_keys
from certctl.api.resources import Challenge, Http01IngressSolver, ObjectKey
from certctl.solvers import http01

SOLVER_LABEL = "acme.cert-manager.io/http01-solver"  # cert-manager's, so users' tooling finds it
CHALLENGE_LABEL = "certctl.io/challenge"


@dataclass(frozen=True, kw_only=True)
class DataPlaneService:
    """Where the data plane is reachable inside the cluster, and the Ingress class it serves."""

    namespace: str
    name: str
    port: int = 80
    cluster_domain: str = "cluster.local"
    ingress_class: str | None = None

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


def routes_itself(*, solver: Http01IngressSolver, data_plane: DataPlaneService) -> bool:
    """Whether the solver's Ingress would be of the class the data plane serves: then it
    would route the token to the data plane that answers every live token anyway, and is
    not needed (two creates and two deletes per challenge saved)."""
    if solver.name or data_plane.ingress_class is None:
        return False
    return (solver.ingress_class_name or solver.ingress_class) == data_plane.ingress_class


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
                "path": http01.CHALLENGE_PATH_PREFIX + challenge.token,
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


# --- `http01.ingress.name`: the token path goes into an existing Ingress ----------------
# For controllers that give every Ingress its own load balancer (GKE, AWS ALB), a
# separate solver Ingress would get another address than the one the name
# resolves to; cert-manager then edits the named Ingress instead, and so does certctl.


def with_challenge_path(
    *, ingress_obj: dict[str, Any], challenge: Challenge, data_plane: DataPlaneService
) -> dict[str, Any] | None:
    """The named Ingress with the token path added for the challenged host, or None when
    it is already there. The path comes first in its rule, so it wins every match."""
    service = solver_name(challenge.name)
    path = {
        "path": http01.CHALLENGE_PATH_PREFIX + challenge.token,
        "pathType": "Exact",
        "backend": {"service": {"name": service, "port": {"number": data_plane.port}}},
    }
    updated = copy.deepcopy(ingress_obj)
    spec = updated.setdefault("spec", {})
    rules: list[dict[str, Any]] = spec.setdefault("rules", [])
    for rule in rules:
        if rule.get("host") == challenge.dns_name:
            paths: list[dict[str, Any]] = rule.setdefault("http", {}).setdefault("paths", [])
            if path in paths:
                return None
            paths.insert(0, path)
            return updated
    rules.append({"host": challenge.dns_name, "http": {"paths": [path]}})
    return updated


def without_challenge_paths(
    *, ingress_obj: dict[str, Any], challenge: ObjectKey
) -> dict[str, Any] | None:
    """The Ingress without the paths routed to `challenge`'s solver Service (and without
    rules left empty by that), or None when it has none."""
    service = solver_name(challenge.name)

    def routed_elsewhere(path: dict[str, Any]) -> bool:
        return ((path.get("backend") or {}).get("service") or {}).get("name") != service

    if all(routed_elsewhere(path)
           for rule in (ingress_obj.get("spec") or {}).get("rules") or []
           for path in (rule.get("http") or {}).get("paths") or []):
        return None  # checked before copying: every Ingress of the namespace comes here
    updated = copy.deepcopy(ingress_obj)
    kept_rules = []
    for rule in updated["spec"]["rules"]:
        paths = (rule.get("http") or {}).get("paths") or []
        kept = [path for path in paths if routed_elsewhere(path)]
        if len(kept) != len(paths):
            if not kept:
                continue
            rule["http"]["paths"] = kept
        kept_rules.append(rule)
    updated["spec"]["rules"] = kept_rules
    return updated
