"""The controller and the data plane with exactly the rights manifests/ grants them.

`kubectl kustomize manifests/` is applied to the real API server (its
ServiceAccounts, ClusterRoles, Roles and bindings; the Deployments are stored
but never run, there is no kubelet), a token is minted for each
ServiceAccount with the TokenRequest API, and certctl runs with those
tokens, watching the namespaces the manifests name (`certctl` and `default`
for the controller, `default` for the data plane), with two controller
replicas sharing the one Lease their Role allows. Certificates are issued and
served end to end, before and after the leader steps down, and the audit log
shows that neither component was ever refused (403) nor asked anything of a
namespace it was not given: what the code does and what the manifests allow
agree.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import requests
import yaml

from tests.clusterops import (
    CONTROLLER_USER,
    DATA_PLANE_USER,
    admin_store,
    annotated_ingress,
    apply_manifests,
    deployment_args,
    granted_operator,
    issuer_ready,
    leaf_of,
    namespace,
    ready_secret,
)
from tests.pebble import PebbleServer, free_port
from tests.serving import cluster_issuer, eventually, served_certificate

if TYPE_CHECKING:
    from tests.controlplane import AuditEvent, ControlPlane

pytest_plugins = ["tests.controlplane"]

REPO = Path(__file__).resolve().parent.parent
ISSUER = "pebble-rbac"
HOST = "rbac.example.test"
HOST2 = "rbac2.example.test"
OTHER = "not-granted"
COMMANDS_ISSUER = "pebble-commands"
COMMANDS_HOST = "commands.example.test"


@dataclass(frozen=True)
class Granted:
    plane: ControlPlane
    rendered: list[dict[str, Any]]  # `kubectl kustomize manifests/`
    kubeconfigs: dict[str, Path]  # per ServiceAccount, with a token from the TokenRequest API


@pytest.fixture(scope="module")
def granted(control_plane: ControlPlane,
            tmp_path_factory: pytest.TempPathFactory) -> Granted:
    plane = control_plane
    rendered, kubeconfigs = apply_manifests(plane, directory=tmp_path_factory.mktemp("tokens"))
    # The tokens are what they claim, and RBAC holds: a Secret in another namespace is off
    # limits to the data plane.
    denied = plane.kubectl("get", "secrets", "-n", "certctl",
                           kubeconfig=kubeconfigs["certctl-dataplane"], check=False)
    assert denied.returncode != 0 and "Forbidden" in denied.stderr, denied.stderr
    return Granted(plane=plane, rendered=[d for d in yaml.safe_load_all(rendered) if d],
                   kubeconfigs=kubeconfigs)


def _never_refused(events: list[AuditEvent], *, writes_expected: set[str]) -> None:
    """Both identities worked, were never refused, and stayed in their namespaces."""
    by_user = {user: [e for e in events if e.user == user]
               for user in (CONTROLLER_USER, DATA_PLANE_USER)}
    for user, made in by_user.items():
        assert len(made) > 10, f"{user} made no requests: not running with its token?"
        refused = [str(e) for e in made if e.code in (401, 403)]
        assert refused == [], f"{user} was refused:\n" + "\n".join(refused)
    # And the test is not vacuous: the controller did write with its own identity.
    assert {e.resource for e in by_user[CONTROLLER_USER] if e.is_write} >= writes_expected
    assert [str(e) for e in events if e.user in (CONTROLLER_USER, DATA_PLANE_USER)
            and e.namespace not in (None, "certctl", "default")] == []


def test_controller_and_data_plane_need_no_more_than_the_manifests_grant(
    granted: Granted, pebble: PebbleServer,
) -> None:
    plane, kubeconfigs = granted.plane, granted.kubeconfigs
    api = admin_store(plane)
    mark = plane.audit.mark()
    operator = granted_operator(plane=plane, pebble=pebble, kubeconfigs=kubeconfigs)
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(api.close)
        cleanup.callback(operator.stop)
        operator.start()
        # Two replicas, as manifests/ runs them: one leads, through the one Lease allowed.
        first, second = operator.controllers[0], operator.start_controller(identity="replica-1")
        eventually(lambda: first.is_leader != second.is_leader, what="exactly one leader")
        # Solvers of another controller's class: the solver Ingress and Service are
        # created (and removed) with the controller's own rights.
        issuer = cluster_issuer(pebble, name=ISSUER, api_version="certctl.io/v1")
        issuer["spec"]["acme"]["solvers"] = [
            {"http01": {"ingress": {"ingressClassName": "nginx"}}}]
        api.create(obj=issuer)
        cleanup.callback(api.delete, kind="ClusterIssuer", namespace=None, name=ISSUER)
        eventually(lambda: issuer_ready(api, ISSUER), timeout=60, what="the ClusterIssuer")
        # Outside the namespaces granted (and watched): left alone, and no request goes there.
        cleanup.enter_context(namespace(plane, OTHER))
        api.create(obj=annotated_ingress("other", "other.example.test", namespace=OTHER,
                                         issuer=ISSUER))
        api.create(obj=annotated_ingress("rbac", HOST, namespace="default", issuer=ISSUER))
        cleanup.callback(api.delete, kind="Ingress", namespace="default", name="rbac")
        served = eventually(lambda: served_certificate(
            port=operator.https_port, server_name=HOST, roots_pem=pebble.issuance_roots_pem()),
            timeout=60, what="the certificate served")
        secret = eventually(lambda: ready_secret(api, namespace="default", name="rbac-tls"),
                            what="the Certificate Ready")
        assert served.serial_number == leaf_of(secret).serial_number
        eventually(lambda: not api.list(kind="Challenge", namespace="default"),
                   what="the challenge cleaned up")
        leading, following = (first, second) if first.is_leader else (second, first)
        lease = api.get(kind="Lease", namespace="certctl", name="certctl-controller")
        assert lease is not None
        assert lease["spec"]["holderIdentity"] == ("replica-0" if leading is first
                                                   else "replica-1")
        # The leader goes; the follower takes the Lease over and acts.
        operator.stop_controller(leading)
        eventually(lambda: following.is_leader, timeout=20, what="the follower to take over")
        api.delete(kind="Ingress", namespace="default", name="rbac")
        api.create(obj=annotated_ingress("rbac2", HOST2, namespace="default", issuer=ISSUER))
        cleanup.callback(api.delete, kind="Ingress", namespace="default", name="rbac2")
        eventually(lambda: served_certificate(
            port=operator.https_port, server_name=HOST2, roots_pem=pebble.issuance_roots_pem()),
            timeout=60, what="a certificate issued by the new leader, served")
        time.sleep(0.5)  # requests in flight reach the audit log
        assert api.list(kind="Certificate", namespace=OTHER) == []

    events = plane.audit.events(since=mark)
    _never_refused(events, writes_expected={
        "certificates", "orders", "challenges", "secrets", "ingresses", "services", "events"})
    # Deleted by certctl once the challenge ended or, once their owner the Challenge is
    # gone, by the garbage collector: whoever is first.
    solver_objects = {(e.resource, e.name) for e in events if e.user == CONTROLLER_USER
                      and e.resource in ("ingresses", "services") and e.verb == "create"
                      and e.code == 201}
    deleted = {(e.resource, e.name) for e in events if e.verb == "delete" and e.code == 200}
    assert {resource for resource, _ in solver_objects} == {"ingresses", "services"}
    assert solver_objects <= deleted, solver_objects - deleted
    assert any(e.resource == "ingresses" and e.subresource == "status" and e.is_write
               for e in events if e.user == DATA_PLANE_USER)
    # One Order per certificate, with two replicas and a change of leader.
    created = [e.name for e in events if e.user == CONTROLLER_USER
               and e.resource == "orders" and e.verb == "create" and e.code == 201]
    assert sorted(name.rsplit("-", 2)[0] for name in created) == ["rbac-tls", "rbac2-tls"]


def _stop_command(process: subprocess.Popen[bytes]) -> int:
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)
        return -9


def test_the_commands_of_the_manifests_deployments_issue_and_serve(
    granted: Granted, pebble: PebbleServer, tmp_path: Path,
) -> None:
    """`certctl controller` and `certctl dataplane` as processes, with the args of their
    Deployments in manifests/ (loopback ports and the self-check target swapped in, as a
    cluster's Service and DNS would route them) and their ServiceAccounts' tokens."""
    plane = granted.plane
    deployments = {d["metadata"]["name"]: d for d in granted.rendered
                   if d["kind"] == "Deployment"}
    https_port = free_port()
    # The admin addresses' probes, on loopback instead of the pod's IP.
    admin_ports = {"certctl-controller": free_port(), "certctl-dataplane": free_port()}
    commands = {
        "certctl-controller": deployment_args(
            deployments["certctl-controller"], kubeconfig=str(
                granted.kubeconfigs["certctl-controller"]),
            self_check_address="127.0.0.1", self_check_port=str(pebble.http_port),
            metrics_address="127.0.0.1", metrics_port=str(admin_ports["certctl-controller"]),
            backoff_base="1"),
        "certctl-dataplane": deployment_args(
            deployments["certctl-dataplane"], kubeconfig=str(
                granted.kubeconfigs["certctl-dataplane"]),
            listen_address="127.0.0.1", http_port=str(pebble.http_port),
            https_port=str(https_port), metrics_address="127.0.0.1",
            metrics_port=str(admin_ports["certctl-dataplane"])),
    }
    api = admin_store(plane)
    mark = plane.audit.mark()
    processes: dict[str, subprocess.Popen[bytes]] = {}
    logs = {name: tmp_path / f"{name}.log" for name in commands}
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(api.close)
        for name, args in commands.items():
            with logs[name].open("wb") as log:
                processes[name] = subprocess.Popen(
                    [sys.executable, "-m", "certctl", *args], cwd=REPO, stdout=log,
                    stderr=subprocess.STDOUT,
                    env={**os.environ, "POD_NAME": f"{name}-0", "POD_NAMESPACE": "certctl"})
            cleanup.callback(_stop_command, processes[name])
        api.create(obj=cluster_issuer(pebble, name=COMMANDS_ISSUER,
                                      api_version="certctl.io/v1"))
        cleanup.callback(api.delete, kind="ClusterIssuer", namespace=None, name=COMMANDS_ISSUER)
        api.create(obj=annotated_ingress("commands", COMMANDS_HOST, namespace="default",
                                         issuer=COMMANDS_ISSUER))
        cleanup.callback(api.delete, kind="Ingress", namespace="default", name="commands")

        def served() -> Any:
            for name, process in processes.items():
                assert process.poll() is None, f"{name} exited:\n{logs[name].read_text()}"
            return served_certificate(port=https_port, server_name=COMMANDS_HOST,
                                      roots_pem=pebble.issuance_roots_pem())

        eventually(served, timeout=90, what="the certificate served by `certctl dataplane`")
        for name, port in admin_ports.items():  # what the Deployments' probes ask
            for probe in ("/healthz", "/readyz"):
                answer = requests.get(f"http://127.0.0.1:{port}{probe}", timeout=5)
                assert (answer.status_code, answer.text) == (200, "ok\n"), (name, probe)
        eventually(lambda: not api.list(kind="Challenge", namespace="default"),
                   what="the challenge cleaned up")
        # SIGTERM, as kubelet stops a pod: both stop cleanly.
        for name, process in processes.items():
            code = _stop_command(process)
            assert code == 0, f"{name} exited with {code}:\n{logs[name].read_text()[-3000:]}"
        time.sleep(0.5)  # requests in flight reach the audit log

    # The Deployment's `--ingress-class certctl` is the issuer's solver class: no solver
    # Ingress or Service, the data plane answers the token itself.
    events = plane.audit.events(since=mark)
    _never_refused(events, writes_expected={
        "certificates", "orders", "challenges", "secrets", "events", "leases"})
    assert not [str(e) for e in events if e.user == CONTROLLER_USER and e.is_write
                and e.resource in ("ingresses", "services")]
