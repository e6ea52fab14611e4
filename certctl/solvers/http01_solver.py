"""The HTTP-01 solver (`solvers.protocol.Solver`), answered by certctl's own data plane.

No solver pod: the data plane answers `/.well-known/acme-challenge/<token>`
from live Challenge objects, so a Challenge is presented as soon as it
exists. In a cluster, where the host may be served by another Ingress
controller, a temporary solver Ingress routes the token path to the data
plane (`http01_ingress`); it is deleted as soon as the challenge ends, valid
or not. An IP address (RFC 8738) gets none: the CA connects to the address,
so the data plane listening there answers it directly. The self-check
fetches the token the way the CA will (`http01`).
"""

from __future__ import annotations

import datetime
from collections.abc import Callable

from certctl.api import names
from certctl.api.resources import (
    Challenge,
    ChallengeType,
    Http01IngressSolver,
    ObjectKey,
    SolverConfig,
)
from certctl.api.status import ChallengeStatus
from certctl.issuers.acme import client as acme_client
from certctl.solvers import http01, http01_ingress, protocol
from certctl.store.interface import AlreadyExists, Object, Store

SelfCheck = Callable[[Challenge], None]  # raises http01.SelfCheckFailed


class Http01Solver:
    """Stateless: what it presents is in the store."""

    config_type: type = Http01IngressSolver
    challenge_type: ChallengeType = "HTTP-01"
    ends_with_its_challenge = False
    proves_wildcards = False

    def __init__(
        self, *, self_check: SelfCheck, data_plane: http01_ingress.DataPlaneService | None
    ) -> None:
        self.self_check = self_check
        # Set in a cluster: solver Ingresses route tokens to this Service.
        self.data_plane = data_plane

    @staticmethod
    def configuration_problem(config: SolverConfig) -> str | None:
        return None  # the parser checked all there is to check

    @staticmethod
    def challenge_key(*, client: acme_client.AccountClient, token: str) -> str:
        return client.key_authorization(token)

    def present(
        self, *, store: Store, obj: Object, challenge: Challenge, now: datetime.datetime
    ) -> protocol.Presented | None:
        address = names.is_ip_address(challenge.dns_name)
        if self.data_plane is not None and not address and not http01_ingress.routes_itself(
                solver=_ingress_solver(challenge), data_plane=self.data_plane):
            _route_token(store, obj, challenge=challenge, data_plane=self.data_plane)
        if ChallengeStatus.from_object(obj).presented:
            return None
        if address:
            # An Ingress rule cannot hold an IP address, so no solver Ingress: the CA
            # connects to the address itself, where the data plane answers the token
            # from the Challenge objects it watches, whatever Host the request names.
            return protocol.Presented(
                description=f"the data plane answers the HTTP-01 token at {challenge.dns_name}")
        return protocol.Presented(description="the data plane answers the HTTP-01 token")

    def check(self, *, challenge: Challenge, now: datetime.datetime) -> None:
        try:
            self.self_check(challenge)
        except http01.SelfCheckFailed as err:
            raise protocol.NotServed(str(err)) from err

    def clean_up(
        self, *, store: Store, key: ObjectKey, challenge: Challenge | None
    ) -> str | None:
        """Delete the solver objects of the challenge, and its token paths from Ingresses
        it edited (`http01.ingress.name`); a no-op for what is absent."""
        if self.data_plane is None or (challenge is not None and http01_ingress.routes_itself(
                solver=_ingress_solver(challenge), data_plane=self.data_plane)):
            return None
        for ingress in store.list(kind="Ingress", namespace=key.namespace):
            if (ingress["metadata"].get("labels") or {}).get(http01_ingress.CHALLENGE_LABEL):
                continue  # a solver Ingress: deleted below
            updated = http01_ingress.without_challenge_paths(ingress_obj=ingress, challenge=key)
            if updated is not None:
                store.replace(obj=updated)
        for dependent in http01_ingress.solver_keys(key):
            # Clean-up runs when the challenge ends and again when its Challenge is deleted
            # (then without the Challenge, so also for solvers that created nothing): a
            # read first, so that the second pass is no refused delete.
            if store.get(kind=dependent.kind, namespace=dependent.namespace,
                         name=dependent.name) is not None:
                store.delete(kind=dependent.kind, namespace=dependent.namespace,
                             name=dependent.name)
        return None


def _ingress_solver(challenge: Challenge) -> Http01IngressSolver:
    solver = challenge.solver.config
    if not isinstance(solver, Http01IngressSolver):
        raise protocol.PresentFailed(f"{challenge.key_ref} has no HTTP-01 solver",
                                     permanent=True)
    return solver


def _route_token(
    store: Store,
    obj: Object,
    *,
    challenge: Challenge,
    data_plane: http01_ingress.DataPlaneService,
) -> None:
    """Create the solver Service and a solver Ingress if missing (they never change while
    the challenge lives: the token and host are fixed), or, when the solver names an
    Ingress (`http01.ingress.name`), add the token path to that Ingress instead."""
    solver = _ingress_solver(challenge)
    _create_if_missing(store, http01_ingress.solver_service(challenge_obj=obj,
                                                            data_plane=data_plane))
    url = f"http://{challenge.dns_name}{http01.CHALLENGE_PATH_PREFIX}{challenge.token}"
    if solver.name:
        named = store.get(kind="Ingress", namespace=challenge.namespace, name=solver.name)
        if named is None:
            ref = challenge.issuer_ref
            raise protocol.PresentFailed(
                f"Ingress {challenge.namespace}/{solver.name} named by {ref.kind} {ref.name} "
                f"spec.acme.solvers[{challenge.solver_index}].http01.ingress.name does not "
                "exist", permanent=False)
        updated = http01_ingress.with_challenge_path(ingress_obj=named, challenge=challenge,
                                                     data_plane=data_plane)
        if updated is not None:
            store.replace(obj=updated)  # a Conflict is retried by the queue
            store.emit_event(obj=obj, type="Normal", reason="Presented",
                             message=f"Added {url} to Ingress {solver.name}, routed to the "
                             "data plane")
        return
    ingress = http01_ingress.solver_ingress(challenge_obj=obj, challenge=challenge,
                                            solver=solver, data_plane=data_plane)
    if _create_if_missing(store, ingress):
        store.emit_event(obj=obj, type="Normal", reason="Presented",
                         message=f"Created solver Ingress {ingress['metadata']['name']} "
                         f"routing {url} to the data plane")


def _create_if_missing(store: Store, dependent: Object) -> bool:
    """True if this call created it."""
    meta = dependent["metadata"]
    if store.get(kind=dependent["kind"], namespace=meta["namespace"],
                 name=meta["name"]) is not None:
        return False
    try:
        store.create(obj=dependent)
    except AlreadyExists:
        return False
    return True
