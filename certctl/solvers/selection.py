"""Which of an ACME issuer's solvers answers the challenge for one name.

cert-manager's rules, in order of preference:
1. a solver whose `selector.dnsNames` lists the name exactly;
2. the solver whose `selector.dnsZones` has the longest zone the name is in;
3. a solver whose `selector.matchLabels` all match the Certificate's labels
   (more labels matched wins);
4. a solver with no selector at all.
Ties keep the order of `solvers[]`. Wildcard names can only be proven with
DNS-01, so solvers of a type that cannot prove them (HTTP-01, TLS-ALPN-01)
never match them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from certctl.api.resources import AcmeIssuer, AcmeSolver
from certctl.solvers import registry


@dataclass(frozen=True, kw_only=True)
class SelectedSolver:
    index: int
    solver: AcmeSolver


class NoSolver(ValueError):
    """No solver can prove control of a name; the message says why."""


def select_solver(
    *, issuer: AcmeIssuer, dns_name: str, labels: Mapping[str, str]
) -> SelectedSolver:
    wildcard = dns_name.startswith("*.")
    base_name = dns_name[2:] if wildcard else dns_name
    best: tuple[tuple[int, int], int] | None = None
    for index, solver in enumerate(issuer.solvers):
        if wildcard and not _proves_wildcards(solver):
            continue
        score = _score(solver=solver, dns_name=dns_name, base_name=base_name, labels=labels)
        if score is None:
            continue
        if best is None or score > best[0]:
            best = (score, index)
    if best is None:
        if wildcard and not all(_proves_wildcards(s) for s in issuer.solvers):
            types = " and ".join(sorted({registry.solver_type(s.config).challenge_type
                                         for s in issuer.solvers if not _proves_wildcards(s)}))
            raise NoSolver(
                f"{dns_name}: wildcard names need a DNS-01 solver; "
                f"the issuer only has {types} solvers that could match"
            )
        raise NoSolver(f"{dns_name}: no solver of the issuer matches this name")
    return SelectedSolver(index=best[1], solver=issuer.solvers[best[1]])


def _proves_wildcards(solver: AcmeSolver) -> bool:
    return registry.solver_type(solver.config).proves_wildcards


def _score(
    *, solver: AcmeSolver, dns_name: str, base_name: str, labels: Mapping[str, str]
) -> tuple[int, int] | None:
    """A sortable rank: (rule number from the module docstring, strength within it)."""
    selector = solver.selector
    if selector is None or (
        not selector.dns_names and not selector.dns_zones and not selector.match_labels
    ):
        return (1, 0)
    if selector.match_labels and any(labels.get(k) != v for k, v in selector.match_labels):
        return None
    # Every part of a selector that is set must match (cert-manager's solverpicker).
    zone_strength = 0
    if selector.dns_zones:
        zones = [z for z in selector.dns_zones if base_name == z or base_name.endswith("." + z)]
        if not zones:
            return None
        zone_strength = max(len(z) for z in zones) * 100
    if selector.dns_names:
        if dns_name not in selector.dns_names:
            return None
        return (4, zone_strength + len(selector.match_labels))
    if selector.dns_zones:
        return (3, zone_strength + len(selector.match_labels))
    return (2, len(selector.match_labels))
