"""Which solver answers a challenge: one type per variant of the solver configuration.

The solver types are listed once here; `Solvers` holds this process's one
instance of each (built with what the process has: the HTTP-01 self-check and
data-plane Service, the DNS-01 solver with its options, where the TLS-ALPN-01
self-check connects), and picks the one
for a Challenge by the configuration it carries. Adding a solver type is
adding its module, its configuration variant (`api.resources`; its reader and
writer and a line of `api.parsing.SOLVER_TYPES`; its field in the issuer CRDs)
and a line below.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Final

from certctl.api.resources import Dns01ProviderSolver, SolverConfig
from certctl.solvers import http01_ingress, http01_solver, protocol, tls_alpn01_solver
from certctl.solvers.dns01 import solver as dns01_solver

SOLVER_TYPES: Final = (http01_solver.Http01Solver, dns01_solver.Dns01Solver,
                       tls_alpn01_solver.TlsAlpn01Solver)


def solver_type(config: SolverConfig) -> type[protocol.Solver]:
    """The solver type of a configuration, for what needs no instance (its challenge type,
    the Challenge's key, whether the configuration is usable)."""
    for found in SOLVER_TYPES:
        if isinstance(config, found.config_type):
            return found
    raise TypeError(f"no solver for {type(config).__name__}")


def challenge_types(config: SolverConfig) -> tuple[str, ...]:
    """The ACME challenge types (wire names, as in an authorization) a configuration
    answers, preferred first: its solver's type, except that a DNS-01 solver may take
    dns-account-01 too (`dns01.solver.challenge_types`)."""
    if isinstance(config, Dns01ProviderSolver):
        return dns01_solver.challenge_types(config)
    return (solver_type(config).challenge_type.lower(),)


def ends_with_its_challenge(challenge_type: object) -> bool:
    """Whether a raw Challenge of `spec.type` ends itself (`Solver.ends_with_its_challenge`)."""
    if challenge_type == "DNS-ACCOUNT-01":  # answered by the DNS-01 solver
        challenge_type = dns01_solver.Dns01Solver.challenge_type
    return any(found.challenge_type == challenge_type and found.ends_with_its_challenge
               for found in SOLVER_TYPES)


class Solvers:
    """This process's solvers, one of each type."""

    def __init__(
        self,
        *,
        self_check: http01_solver.SelfCheck,
        dns01: dns01_solver.Dns01Solver,
        data_plane: http01_ingress.DataPlaneService | None = None,
        tls_alpn01: tls_alpn01_solver.SelfCheckTarget | None = None,
    ) -> None:
        """`tls_alpn01`: where its self-check connects (default: the name, port 443)."""
        self.http01 = http01_solver.Http01Solver(self_check=self_check, data_plane=data_plane)
        self.dns01 = dns01
        self.tls_alpn01 = tls_alpn01_solver.TlsAlpn01Solver(
            self_check=tls_alpn01 or tls_alpn01_solver.SelfCheckTarget())
        self._by_config: dict[type, protocol.Solver] = {
            solver.config_type: solver for solver in (self.http01, self.dns01, self.tls_alpn01)}

    def for_config(self, config: SolverConfig) -> protocol.Solver:
        return self._by_config[type(config)]

    def __iter__(self) -> Iterator[protocol.Solver]:
        return iter(self._by_config.values())
