"""A self-check that fails just after its challenge was presented is propagation under way.

The Challenge reconciler runs against the local store with an issuer registered at a
real Pebble (its account is needed before the self-check); the self-check knocks on a
real server that is not the data plane, so it fails. Within QUIET_PROPAGATION of the
presentation it is only looked at again: no status write, no Warning (cert-manager only
logs it). Past it, the Challenge says why it waits, as before. Nothing reaches the CA's
challenge: it is answered only once the self-check passes.
"""

from __future__ import annotations

from pathlib import Path

from certctl.controllers import challenges
from certctl.solvers import http01_ingress
from tests.lifecycle import World, challenge_settings, order_and_challenge
from tests.pebble import PebbleServer
from tests.serving import cluster_issuer, echo_backend

NAME = "www.example.test"
DATA_PLANE = http01_ingress.DataPlaneService(namespace="certctl", name="dataplane",
                                             ingress_class="certctl")


def test_a_self_check_failing_right_after_presenting_is_retried_without_a_word_then_said(
    tmp_path: Path, pebble: PebbleServer
) -> None:
    world = World(tmp_path)
    issuer = cluster_issuer(pebble, name="pebble", api_version="certctl.io/v1")
    world.add_local_issuer("pebble", issuer["spec"])  # registers its account at Pebble
    assert world.issuer("pebble")["status"]["conditions"][0]["status"] == "True"
    key = order_and_challenge(world.store, issuer="pebble", dns_name=NAME, type="HTTP-01",
                              key="tok.thumbprint")

    def look() -> tuple[float | None, dict[str, object], list[str]]:
        result = challenges.reconcile(store=world.store, key=key, settings=settings)
        found = world.store.get(kind="Challenge", namespace=key.namespace, name=key.name)
        assert found is not None
        return (result.requeue_after, found.get("status") or {},
                [reason for _, _, reason, _ in world.store.events])

    with echo_backend("not-the-data-plane") as wrong_port:
        settings = challenge_settings(clock=world.clock, accounts=world.accounts,
                                      self_check_port=wrong_port,
                                      self_check_address="127.0.0.1", data_plane=DATA_PLANE)
        for _ in range(3):  # presented, then looked at again while propagation may be on
            again, status, events = look()
            assert again is not None and again < 1.0
            assert "reason" not in status, status
            assert "SelfCheckFailed" not in events
            world.clock.advance(seconds=0.5)

        world.clock.advance(seconds=challenges.QUIET_PROPAGATION.total_seconds())
        again, status, events = look()

    assert again is not None
    reason = str(status["reason"])
    assert reason.startswith(f"Waiting for HTTP-01 challenge propagation: HTTP-01 self-check "
                             f"failed: GET http://{NAME}:{wrong_port}/"), reason
    assert "unexpected content" in reason
    assert events.count("SelfCheckFailed") == 1
    assert not status.get("processing")  # never answered: the CA saw nothing
