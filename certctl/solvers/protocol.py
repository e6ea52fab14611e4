"""The Solver seam: how one ACME challenge type is answered, whatever answers it.

A solver type is one module (`http01_solver`: the token answered by our data
plane, routed by a solver Ingress in a cluster; `dns01.solver`: a TXT record
through the provider registry) implementing `Solver` for its variant of the
solver configuration (`resources.SolverConfig`); `registry` maps each variant
to its type. The Challenge reconciler decides when each step runs and records
it in the status; the solver does the step:

- present: make the answer available (once per Challenge and process);
- check: is it served where the CA will look? (the self-check);
- clean up: take it away when the challenge ends or the Challenge is deleted.

A solver works from the Challenge alone, whose `spec.solver` is a copy of
the issuer's solver taken when the Challenge was created, so editing the
issuer does not change a challenge already running.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Protocol

from certctl.api.resources import Challenge, ChallengeType, ObjectKey, SolverConfig
from certctl.issuers.acme import client as acme_client
from certctl.store.interface import Object, Store


@dataclass(frozen=True, kw_only=True)
class Presented:
    description: str
    """What now answers the challenge, for the status reason (`Presented: ...`)."""
    announce: bool = False
    """Whether an Event says so too (the solver changed something outside the cluster)."""


class PresentFailed(Exception):
    """Presenting failed; `permanent` when retrying cannot help (credentials refused)."""

    def __init__(self, message: str, *, permanent: bool) -> None:
        super().__init__(message)
        self.permanent = permanent


class NotServed(Exception):
    """The self-check did not see the answer; `final` when the solver gave up waiting."""

    def __init__(self, message: str, *, final: bool = False) -> None:
        super().__init__(message)
        self.final = final


class CleanUpFailed(Exception):
    """Cleaning up failed; `permanent` when the solver gave up (and forgot it)."""

    def __init__(self, message: str, *, permanent: bool) -> None:
        super().__init__(message)
        self.permanent = permanent


class Solver(Protocol):
    config_type: type
    """The `resources.SolverConfig` variant it answers for."""
    challenge_type: ChallengeType
    ends_with_its_challenge: bool
    """Its answer lives outside the cluster and only this process can take it away, so
    the Challenge ends itself (cleaning up) rather than being deleted with its Order."""
    proves_wildcards: bool
    """Whether it can prove `*.<name>` (RFC 8555: only DNS-01 can)."""

    @staticmethod
    def configuration_problem(config: SolverConfig) -> str | None:
        """What makes `config` unusable before any challenge, as `<field>: <problem>`."""
        ...

    @staticmethod
    def challenge_key(*, client: acme_client.AccountClient, token: str) -> str:
        """The Challenge's `spec.key`: what is served, or put in DNS, for `token`."""
        ...

    def present(
        self, *, store: Store, obj: Object, challenge: Challenge, now: datetime.datetime
    ) -> Presented | None:
        """Make the answer available; None when it already was. Raises `PresentFailed`."""
        ...

    def check(self, *, challenge: Challenge, now: datetime.datetime) -> None:
        """Raise `NotServed` until the CA would see the answer."""
        ...

    def clean_up(
        self, *, store: Store, key: ObjectKey, challenge: Challenge | None
    ) -> str | None:
        """Take away what was presented for `key`: what this process presented, or, given
        the `challenge` that presented it, what an earlier process did. Returns what was
        removed, for an Event; a no-op for what is absent. Raises `CleanUpFailed`."""
        ...
