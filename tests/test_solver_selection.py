"""Solver selection follows cert-manager's precedence rules."""

from __future__ import annotations

from typing import Any

import pytest

from certctl.api import parsing
from certctl.api.resources import AcmeIssuer
from certctl.solvers import registry
from certctl.solvers.selection import NoSolver, select_solver


def http01(**selector: Any) -> dict[str, Any]:
    solver: dict[str, Any] = {"http01": {"ingress": {"ingressClassName": "certctl"}}}
    if selector:
        solver["selector"] = selector
    return solver


def dns01(**selector: Any) -> dict[str, Any]:
    solver: dict[str, Any] = {"dns01": {"rfc2136": {"nameserver": "127.0.0.1:53"}}}
    if selector:
        solver["selector"] = selector
    return solver


def issuer(*solvers: dict[str, Any]) -> AcmeIssuer:
    parsed = parsing.parse_issuer({
        "apiVersion": "cert-manager.io/v1",
        "kind": "ClusterIssuer",
        "metadata": {"name": "letsencrypt"},
        "spec": {"acme": {
            "server": "https://acme.example.test/directory",
            "privateKeySecretRef": {"name": "account"},
            "solvers": list(solvers),
        }},
    })
    assert isinstance(parsed.spec, AcmeIssuer)
    return parsed.spec


def pick(acme: AcmeIssuer, name: str, labels: dict[str, str] | None = None) -> int:
    return select_solver(issuer=acme, dns_name=name, labels=labels or {}).index


def test_solver_without_selector_matches_any_name() -> None:
    acme = issuer(http01())
    selected = select_solver(issuer=acme, dns_name="web.example.test", labels={})
    assert selected.index == 0
    assert registry.solver_type(selected.solver.config).challenge_type == "HTTP-01"


def test_dns_names_beat_dns_zones_beat_match_labels_beat_no_selector() -> None:
    acme = issuer(
        http01(),
        http01(matchLabels={"team": "web"}),
        dns01(dnsZones=["example.test"]),
        http01(dnsNames=["www.example.test"]),
    )
    labels = {"team": "web"}

    assert pick(acme, "www.example.test", labels) == 3
    assert pick(acme, "api.example.test", labels) == 2
    assert pick(acme, "api.other.test", labels) == 1
    assert pick(acme, "api.other.test", {}) == 0


def test_precedence_does_not_depend_on_solver_order() -> None:
    acme = issuer(
        http01(dnsNames=["www.example.test"]),
        dns01(dnsZones=["example.test"]),
        http01(matchLabels={"team": "web"}),
        http01(),
    )
    labels = {"team": "web"}

    assert pick(acme, "www.example.test", labels) == 0
    assert pick(acme, "api.example.test", labels) == 1
    assert pick(acme, "api.other.test", labels) == 2
    assert pick(acme, "api.other.test", {}) == 3


def test_longest_matching_zone_wins() -> None:
    acme = issuer(
        dns01(dnsZones=["example.test"]),
        dns01(dnsZones=["prod.example.test"]),
        dns01(dnsZones=["other.test", "eu.prod.example.test"]),
    )

    assert pick(acme, "www.eu.prod.example.test") == 2
    assert pick(acme, "www.prod.example.test") == 1
    assert pick(acme, "prod.example.test") == 1
    assert pick(acme, "www.example.test") == 0


def test_zone_matches_on_label_boundaries_only() -> None:
    acme = issuer(http01(), dns01(dnsZones=["example.test"]))

    assert pick(acme, "badexample.test") == 0
    assert pick(acme, "example.test") == 1


def test_more_matching_labels_wins_within_a_rule() -> None:
    acme = issuer(
        dns01(dnsZones=["example.test"]),
        dns01(dnsZones=["example.test"], matchLabels={"team": "web"}),
        http01(matchLabels={"team": "web"}),
        http01(matchLabels={"team": "web", "env": "prod"}),
    )

    assert pick(acme, "www.example.test", {"team": "web"}) == 1
    assert pick(acme, "www.other.test", {"team": "web", "env": "prod"}) == 3


def test_ties_keep_the_order_of_solvers() -> None:
    acme = issuer(dns01(dnsZones=["example.test"]), http01(dnsZones=["example.test"]))
    assert pick(acme, "www.example.test") == 0


def test_selector_whose_labels_do_not_match_is_skipped() -> None:
    acme = issuer(http01(dnsNames=["www.example.test"], matchLabels={"team": "db"}), dns01())

    assert pick(acme, "www.example.test", {"team": "web"}) == 1


def test_no_matching_solver_raises_no_solver_naming_the_name() -> None:
    acme = issuer(dns01(dnsZones=["example.test"]), http01(matchLabels={"team": "web"}))

    with pytest.raises(NoSolver, match=r"www\.other\.test"):
        select_solver(issuer=acme, dns_name="www.other.test", labels={})


def test_wildcard_never_picks_http01() -> None:
    acme = issuer(
        http01(dnsNames=["*.example.test"]),
        http01(),
        dns01(dnsZones=["example.test"]),
    )

    selected = select_solver(issuer=acme, dns_name="*.example.test", labels={})

    assert selected.index == 2
    assert registry.solver_type(selected.solver.config).challenge_type == "DNS-01"


def test_wildcard_dns_names_selector_matches_the_wildcard_itself() -> None:
    acme = issuer(dns01(), dns01(dnsNames=["*.example.test"]))

    assert pick(acme, "*.example.test") == 1
    assert pick(acme, "www.example.test") == 0


def test_wildcard_with_only_http01_solvers_says_dns01_is_needed() -> None:
    acme = issuer(http01(), http01(dnsZones=["example.test"]))

    with pytest.raises(NoSolver) as raised:
        select_solver(issuer=acme, dns_name="*.example.test", labels={})

    message = str(raised.value)
    assert "*.example.test" in message
    assert "DNS-01" in message
    assert "wildcard" in message


def test_issuer_without_solvers_raises_no_solver() -> None:
    with pytest.raises(NoSolver, match=r"web\.example\.test"):
        select_solver(issuer=issuer(), dns_name="web.example.test", labels={})


def test_dns_names_tie_is_broken_by_matching_zone() -> None:
    acme = issuer(
        http01(dnsNames=["www.example.test"]),
        http01(dnsNames=["www.example.test"], dnsZones=["example.test"]),
    )

    assert pick(acme, "www.example.test") == 1


def test_selector_with_names_and_zones_needs_both_to_match() -> None:
    acme = issuer(http01(), dns01(dnsNames=["www.example.test"], dnsZones=["other.test"]))

    assert pick(acme, "www.example.test") == 0
