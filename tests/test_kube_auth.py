"""The store's Authorization header against the real API server: reused for a while, then
asked of the configuration again, whose hook is where expiring credentials are renewed
(exec plugins, projected service-account tokens)."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import kubernetes.client
import pytest

from certctl.store.interface import Forbidden, StoreError
from certctl.store.kube import AUTH_REUSE_SECONDS, KubeStore, load_configuration

if TYPE_CHECKING:
    from tests.controlplane import ControlPlane

pytest_plugins = ["tests.controlplane"]


def test_the_authorization_header_is_reused_for_a_while_then_asked_for_again(
    control_plane: ControlPlane, tmp_path: Path
) -> None:
    # A real token of a service account with no rights: the API server knows who asks
    # (403 for a Secret) and refuses a token it does not know (401).
    account = f"auth-{uuid.uuid4().hex[:6]}"
    control_plane.kubectl("create", "serviceaccount", account, "-n", "default")
    token = control_plane.token(namespace="default", service_account=account)
    configuration = load_configuration(kubeconfig=str(control_plane.token_kubeconfig(
        tmp_path / "kubeconfig", token=token)))
    renewed = False
    asked = 0

    def refresh(config: kubernetes.client.Configuration) -> None:
        nonlocal asked
        asked += 1
        if renewed:  # the credential changed meanwhile (here to one the server refuses)
            config.api_key["BearerToken"] = "Bearer not-a-token-the-server-knows"

    configuration.refresh_api_key_hook = refresh  # type: ignore[assignment]
    now = 1000.0
    store = KubeStore(configuration=configuration, component="certctl-test",
                      clock=lambda: now)
    try:
        with pytest.raises(Forbidden):
            store.get(kind="Secret", namespace="default", name="any")
        assert asked == 1
        renewed = True
        now += AUTH_REUSE_SECONDS - 1
        with pytest.raises(Forbidden):  # the header asked for before, not asked again
            store.get(kind="Secret", namespace="default", name="any")
        assert asked == 1
        now += 1
        with pytest.raises(StoreError, match="401") as refused:
            store.get(kind="Secret", namespace="default", name="any")
        assert not isinstance(refused.value, Forbidden)
        assert asked == 2
    finally:
        store.close()
        control_plane.kubectl("delete", "serviceaccount", account, "-n", "default")
