"""Adding and removing an HTTP-01 token path in a user's Ingress (`http01.ingress.name`)."""

from __future__ import annotations

from typing import Any

from certctl.api.resources import AcmeSolver, Challenge, Http01IngressSolver, IssuerRef, ObjectKey
from certctl.solvers import http01_ingress

DATA_PLANE = http01_ingress.DataPlaneService(namespace="certctl", name="certctl-dataplane")


def _challenge(name: str = "shop-tls-1-abc", host: str = "shop.example.test") -> Challenge:
    return Challenge(namespace="default", name=name, url="https://ca/chall/1",
                     authorization_url="https://ca/authz/1", dns_name=host, wildcard=False,
                     type="HTTP-01", token="tok", key="tok.thumb",
                     issuer_ref=IssuerRef(name="le", kind="ClusterIssuer"),
                     solver=AcmeSolver(config=Http01IngressSolver()))


def _ingress() -> dict[str, Any]:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": {"name": "shop", "namespace": "default"},
            "spec": {"rules": [{"host": "shop.example.test", "http": {"paths": [
                {"path": "/", "pathType": "Prefix",
                 "backend": {"service": {"name": "shop", "port": {"number": 80}}}}]}}]}}


def test_token_path_goes_first_in_the_hosts_rule_once() -> None:
    added = http01_ingress.with_challenge_path(ingress_obj=_ingress(), challenge=_challenge(),
                                               data_plane=DATA_PLANE)
    assert added is not None
    [rule] = added["spec"]["rules"]
    first, second = rule["http"]["paths"]
    assert (first["path"], first["pathType"]) == ("/.well-known/acme-challenge/tok", "Exact")
    assert first["backend"]["service"]["name"] == http01_ingress.solver_name("shop-tls-1-abc")
    assert second["path"] == "/"
    assert http01_ingress.with_challenge_path(ingress_obj=added, challenge=_challenge(),
                                              data_plane=DATA_PLANE) is None


def test_another_host_gets_a_rule_that_goes_again_with_its_path() -> None:
    other = _challenge(name="www-1-def", host="www.example.test")
    added = http01_ingress.with_challenge_path(ingress_obj=_ingress(), challenge=other,
                                               data_plane=DATA_PLANE)
    assert added is not None
    assert [rule["host"] for rule in added["spec"]["rules"]] == [
        "shop.example.test", "www.example.test"]

    both = http01_ingress.with_challenge_path(ingress_obj=added, challenge=_challenge(),
                                              data_plane=DATA_PLANE)
    assert both is not None
    removed = http01_ingress.without_challenge_paths(
        ingress_obj=both, challenge=ObjectKey(kind="Challenge", namespace="default",
                                              name="www-1-def"))
    assert removed is not None
    # Only that challenge's path and the rule it emptied go; the other challenge stays.
    assert [rule["host"] for rule in removed["spec"]["rules"]] == ["shop.example.test"]
    assert [p["path"] for p in removed["spec"]["rules"][0]["http"]["paths"]] == [
        "/.well-known/acme-challenge/tok", "/"]
    assert http01_ingress.without_challenge_paths(
        ingress_obj=_ingress(), challenge=ObjectKey(kind="Challenge", namespace="default",
                                                    name="www-1-def")) is None


def test_only_a_solver_of_the_data_planes_own_class_routes_itself() -> None:
    ours = http01_ingress.DataPlaneService(namespace="certctl", name="certctl-dataplane",
                                           ingress_class="certctl")

    def routes_itself(solver: Http01IngressSolver, data_plane: http01_ingress.DataPlaneService
                      = ours) -> bool:
        return http01_ingress.routes_itself(solver=solver, data_plane=data_plane)

    assert routes_itself(Http01IngressSolver(ingress_class_name="certctl"))
    assert routes_itself(Http01IngressSolver(ingress_class="certctl"))  # the legacy field
    # Another controller's class, the cluster's default class, or an Ingress of the user's
    # to edit: the token needs routing to the data plane.
    assert not routes_itself(Http01IngressSolver(ingress_class_name="nginx"))
    assert not routes_itself(Http01IngressSolver())
    assert not routes_itself(Http01IngressSolver(ingress_class_name="certctl", name="shop"))
    # A controller not told its data plane's class creates solver objects, as before.
    assert not routes_itself(Http01IngressSolver(ingress_class_name="certctl"), DATA_PLANE)
