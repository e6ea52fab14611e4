"""The operator flow on a real Kubernetes API server (tests/controlplane.py) and real Pebble.

An annotated Ingress becomes a Certificate, an Order, a Challenge answered by
the data plane over HTTP-01, a kubernetes.io/tls Secret, and the data plane
serves it by SNI over real TLS, proxying to a backend in a network
namespace of its own. The flow runs once for the module (`flow`); the tests
then look at what it left: the objects, every write the controller and data
plane made next to what the server kept of it (the CRDs' structural pruning),
the audit log of their requests (none refused), and how many requests a
certificate costs.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import requests
from cryptography import x509
from prometheus_client import parser as prometheus_parser

from certctl import cli
from certctl.store.kube import KubeStore
from tests.clusterops import (
    OPERATOR_AGENTS,
    Backend,
    Operator,
    admin_store,
    annotated_ingress,
    issuer_ready,
    leaf_of,
    namespace,
    netns_available,
    netns_backend,
    ready_secret,
    service_with_slice,
)
from tests.pebble import PebbleServer, free_port
from tests.serving import (
    cluster_issuer,
    dns_names,
    eventually,
    https_get,
    served_certificate,
    verify_chain,
)
from tests.testca import TestCA

if TYPE_CHECKING:
    from tests.controlplane import AuditEvent, ControlPlane

pytest_plugins = ["tests.controlplane"]

NAMESPACE = "flow"
ISSUER = "pebble-flow"
HOST = "shop.example.test"


@dataclass
class Flow:
    plane: ControlPlane
    api: KubeStore
    operator: Operator
    pebble: PebbleServer
    backend: Backend
    audit_start: int  # audit log offset when the Ingress was created
    audit_end: int  # ... when its challenge objects were cleaned up
    served_seconds: float
    secret: dict[str, Any]
    served: x509.Certificate

    def operator_events(self) -> list[AuditEvent]:
        """The controller's and data plane's requests for the first certificate."""
        return _operators(self.plane.audit.events(since=self.audit_start, until=self.audit_end))


def _operators(events: list[AuditEvent]) -> list[AuditEvent]:
    return [e for e in events if e.user_agent.split("/")[0] in OPERATOR_AGENTS]


def _ingress(name: str, host: str) -> dict[str, Any]:
    return annotated_ingress(name, host, namespace=NAMESPACE, issuer=ISSUER)


def _challenges_cleaned_up(api: KubeStore) -> bool:
    return not api.list(kind="Challenge", namespace=NAMESPACE) and not [
        obj for kind in ("Ingress", "Service") for obj in api.list(kind=kind, namespace=NAMESPACE)
        if obj["metadata"]["name"].startswith("certctl-http01-")]


@pytest.fixture(scope="module")
def flow(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flow]:
    if not netns_available():
        pytest.skip("needs root for a network namespace (ip netns)")
    plane = control_plane
    with contextlib.ExitStack() as cleanup:
        pebble = PebbleServer.start(tmp_path=tmp_path_factory.mktemp("pebble"),
                                    http_port=free_port())
        cleanup.callback(pebble.stop)
        api = admin_store(plane)
        cleanup.callback(api.close)
        cleanup.enter_context(namespace(plane, NAMESPACE))
        backend = cleanup.enter_context(netns_backend("shop-backend"))
        operator = Operator(plane=plane, pebble=pebble, namespaces=("certctl", NAMESPACE),
                            dataplane_namespaces=(NAMESPACE,))
        cleanup.callback(operator.stop)
        operator.start()
        api.create(obj=cluster_issuer(pebble, name=ISSUER, api_version="certctl.io/v1"))
        cleanup.callback(api.delete, kind="ClusterIssuer", namespace=None, name=ISSUER)
        # The ACME account first, so that the time measured is the Ingress's alone.
        eventually(lambda: issuer_ready(api, ISSUER), timeout=60, what="the ClusterIssuer Ready")
        for obj in service_with_slice("shop", namespace=NAMESPACE, address=backend.address,
                                      port=backend.port):
            api.create(obj=obj)
        # The new leader's listing of every kind (its resync) done too: on a busy machine
        # its last lists (the namespace's Ingresses among them) came after the Ingress.
        eventually(lambda: all(c.queue.idle() for c in operator.controllers),
                   what="the controller's start-up work done")

        audit_start = plane.audit.mark()
        started = time.monotonic()
        api.create(obj=_ingress("shop", HOST))
        served = eventually(lambda: served_certificate(
            port=operator.https_port, server_name=HOST,
            roots_pem=pebble.issuance_roots_pem()), timeout=60,
            what="the certificate served by SNI")
        served_seconds = time.monotonic() - started
        secret = eventually(lambda: ready_secret(api, namespace=NAMESPACE, name="shop-tls"),
                            what="the Certificate Ready")
        eventually(lambda: _challenges_cleaned_up(api), what="the challenge cleaned up")
        time.sleep(0.5)  # requests in flight reach the audit log
        audit_end = plane.audit.mark()
        plane.report(f"Ingress to served certificate (HTTP-01, Pebble): {served_seconds:.2f} s")
        yield Flow(plane=plane, api=api, operator=operator, pebble=pebble, backend=backend,
                   audit_start=audit_start, audit_end=audit_end,
                   served_seconds=served_seconds, secret=secret, served=served)


def test_annotated_ingress_is_issued_and_served_by_sni_over_tls(flow: Flow) -> None:
    api, roots = flow.api, flow.pebble.issuance_roots_pem()
    secret = flow.secret
    assert secret["type"] == "kubernetes.io/tls"
    # Raises unless Pebble's root vouches for it.
    verify_chain(base64.b64decode(secret["data"]["tls.crt"]), roots_pem=roots, host=HOST)
    assert dns_names(leaf_of(secret)) == [HOST]
    # What the data plane presents for the name is that certificate, verified by the client.
    assert flow.served.serial_number == leaf_of(secret).serial_number
    # ... and it proxies to the backend in its network namespace, found through the slice.
    status, body = https_get(port=flow.operator.https_port, host=HOST, path="/cart",
                             roots_pem=roots)
    assert (status, body) == (200, f"shop-backend {HOST} /cart https")

    # The Certificate belongs to the Ingress (the server's uid), the Order is valid.
    shop = api.get(kind="Ingress", namespace=NAMESPACE, name="shop")
    certificate = api.get(kind="Certificate", namespace=NAMESPACE, name="shop-tls")
    assert shop is not None and certificate is not None
    [owner] = certificate["metadata"]["ownerReferences"]
    assert (owner["apiVersion"], owner["kind"], owner["name"], owner["uid"]) == (
        "networking.k8s.io/v1", "Ingress", "shop", shop["metadata"]["uid"])
    [order] = api.list(kind="Order", namespace=NAMESPACE)
    assert order["status"]["state"] == "valid"
    assert order["metadata"]["ownerReferences"][0]["uid"] == certificate["metadata"]["uid"]
    eventually(lambda: (api.get(kind="Ingress", namespace=NAMESPACE, name="shop") or {}).get(
        "status", {}).get("loadBalancer") == {"ingress": [{"ip": "203.0.113.7"}]},
        what="the data plane's address in the Ingress status")

    # The Challenge existed on the server and is gone (its solver, of the data plane's own
    # class, needed no solver Ingress: see the next test; test_cluster_rbac has another
    # controller's class).
    created = {(e.resource, e.name) for e in flow.operator_events()
               if e.verb == "create" and e.code == 201}
    deleted = {(e.resource, e.name) for e in flow.plane.audit.events(since=flow.audit_start)
               if e.verb == "delete" and e.code == 200}
    challenges = {(r, n) for r, n in created if r == "challenges"}
    assert len(challenges) == 1, created
    assert challenges <= deleted, challenges - deleted
    # Prometheus metrics, under cert-manager's names, from what the server holds.
    [controller] = flow.operator.controllers
    assert controller.options.metrics_address is not None
    scraped = {(sample.name, frozenset(sample.labels.items())): sample.value
               for family in prometheus_parser.text_string_to_metric_families(requests.get(
                   f"http://127.0.0.1:{controller.options.metrics_address[1]}/metrics",
                   timeout=5).text)
               for sample in family.samples}
    labels = {"issuer_group": "certctl.io", "issuer_kind": "ClusterIssuer",
              "issuer_name": ISSUER, "name": "shop-tls", "namespace": NAMESPACE}
    assert scraped[("certmanager_certificate_ready_status",
                    frozenset({**labels, "condition": "True"}.items()))] == 1.0
    assert scraped[("certmanager_certificate_expiration_timestamp_seconds",
                    frozenset(labels.items()))] == leaf_of(secret).not_valid_after_utc.timestamp()

    # The issuance's story is told where users look, once a step: the Ingress and the
    # Certificate; its Order and Challenge (deleted by now) get Events only for failures.
    # "Requested" only when the issuance ran longer than a second (else the Issuing Event
    # names the Order: test_requests_per_certificate).
    told = sorted((e["involvedObject"]["kind"], e["reason"])
                  for e in api.list(kind="Event", namespace=NAMESPACE) if e["type"] == "Normal")
    assert told in ([("Certificate", "Issuing"), ("Ingress", "CreateCertificate")],
                    [("Certificate", "Issuing"), ("Certificate", "Requested"),
                     ("Ingress", "CreateCertificate")]), told


def test_a_solver_of_the_data_planes_own_class_creates_no_solver_objects(flow: Flow) -> None:
    # The ClusterIssuer's solver is `ingressClassName: certctl`, the class the data plane
    # serves: a solver Ingress would route the token to the data plane, which answers every
    # live token anyway. The certificate was issued and served (the fixture) without one.
    solver_writes = [str(e) for e in flow.operator_events() if e.is_write
                     and e.resource in ("ingresses", "services") and e.subresource != "status"]
    assert solver_writes == []
    # Nor did its clean-up look for Ingresses to take a token path out of (one list of the
    # namespace per certificate: the controller's largest cost at 600 certificates, B8):
    # it was cleaned up knowing its solver, as it ended, and not again when deleted; or,
    # when its Order deleted it before it was seen ending, as it was deleted.
    ingress_lists = [str(e) for e in flow.operator_events()
                     if e.verb == "list" and e.resource == "ingresses"]
    assert ingress_lists == []


def test_no_request_of_the_controller_or_data_plane_is_refused(flow: Flow) -> None:
    # 404 (a get of what is not there yet) and 409 (a stale write, retried) are part of the
    # protocol; anything else in 4xx is an object or a request the real server rejects.
    refused = [str(e) for e in flow.operator_events() if e.code >= 400
               and e.code not in (404, 409)]
    assert refused == []


def test_every_status_the_controllers_write_survives_structural_pruning(flow: Flow) -> None:
    """What certctl sent against what the server answered: a field the CRD's structural
    schema does not declare is dropped silently, and the reconciler that wrote it would
    find it missing and write it again, forever. (The audit log cannot show this: it
    records custom resources as decoded, pruned already.)"""
    writes = [w for w in flow.operator.writes.snapshot() if w.path.startswith("/apis/certctl.io/")]
    status_writes = [w for w in writes if w.path.endswith("/status")]
    kinds = {w.kind for w in status_writes}
    # A Challenge that passes at once writes no status (test_requests_per_certificate);
    # every kind's status as the controllers write it: test_cluster_schemas.
    assert {"ClusterIssuer", "Certificate", "Order"} <= kinds, kinds
    assert {"Certificate", "Order", "Challenge"} <= {w.kind for w in writes
                                                   if w.method == "POST"}
    last_status: dict[tuple[str, str | None, str], Any] = {}
    for write in writes:
        part = "status" if write.path.endswith("/status") else "spec"
        assert write.stored.get(part) == write.sent.get(part), (
            f"{write.method} {write.path}: the server pruned or changed {part}",
            write.sent.get(part), write.stored.get(part))
        if part == "status":
            metadata = write.stored["metadata"]
            last_status[(write.kind, metadata.get("namespace"), metadata["name"])] = \
                write.stored.get("status")
    # Read back now, what is still there holds exactly what was written last (the flow is
    # at rest: its certificates are issued).
    read_back = 0
    for (kind, namespace_, name), status in last_status.items():
        current = flow.api.get(kind=kind, namespace=namespace_, name=name)
        if current is not None:
            read_back += 1
            assert current.get("status") == status, (kind, name)
    assert read_back >= 3  # the ClusterIssuer, the Certificate and the Order at least


def test_requests_per_certificate(flow: Flow) -> None:
    """Four more Ingresses at once: what each certificate costs in API requests."""
    api, plane = flow.api, flow.plane
    names = [f"shop{i}" for i in range(4)]
    start = plane.audit.mark()
    started = time.monotonic()
    for name in names:
        api.create(obj=_ingress(name, f"{name}.example.test"))
    for name in names:
        eventually(partial(served_certificate, port=flow.operator.https_port,
                           server_name=f"{name}.example.test",
                           roots_pem=flow.pebble.issuance_roots_pem()),
                   timeout=90, what=f"{name} served")
    batch_seconds = time.monotonic() - started
    eventually(lambda: _challenges_cleaned_up(api), what="the challenges cleaned up")
    time.sleep(0.5)
    events = _operators(plane.audit.events(since=start))
    # Exactly one Order per certificate: nothing was ordered twice.
    orders = collections.Counter(e.name.rsplit("-", 2)[0] for e in events
                                 if e.resource == "orders" and e.verb == "create"
                                 and not e.subresource and e.code == 201)
    assert sorted(orders) == sorted(f"{name}-tls" for name in names), orders
    assert set(orders.values()) == {1}
    # Each order counted in its order-budget ledger (one per name set), with the private
    # key it is made with, in one write: the ledger's create (cert-manager's next private
    # key Secret, created and deleted again, was two writes more). The ledger read first,
    # to judge the budget and to write the count on; nothing more written to it.
    ledgers = collections.Counter(
        (e.verb, e.code) for e in events if e.resource == "secrets"
        and e.name.startswith("certctl-orders-") and e.verb != "get")
    assert ledgers == {("create", 201): len(names)}, ledgers
    first_reads = collections.Counter(
        e.name for e in events if e.resource == "secrets"
        and e.name.startswith("certctl-orders-") and e.verb == "get" and e.code == 404)
    assert sorted(first_reads.values()) == [1] * len(names), first_reads
    # Each Certificate read from the API once: the 404 before the ingress shim creates it.
    # Its passes after that read it from memory (the create's and status writes' answers,
    # the watch's events), not once a pass (6 reads a certificate before).
    certificate_reads = collections.Counter(
        (e.verb, e.code) for e in events if e.resource == "certificates"
        and e.verb in ("get", "list"))
    assert certificate_reads == {("get", 404): len(names)}, certificate_reads
    # Each certificate's kept copy looked for once, by the pass that placed the order (the
    # passes after it, one per step of the order, do not ask for it again), created
    # without a read first (no Secret, no copy expected), and read once by its expiry timer.
    kept = collections.Counter(
        (e.verb, e.code) for e in events if e.resource == "secrets"
        and e.name.startswith("certctl-kept-"))
    assert kept == {("get", 404): len(names), ("create", 201): len(names),
                    ("get", 200): len(names)}, kept
    assert not [e for e in events if e.resource == "secrets"
                and e.name.endswith("-next-private-key")]
    # An Order's status: its ACME URL first, before anything can fail (a crash after it
    # continues the order instead of placing another), then valid with the chain and its
    # authorizations in full; while pending, the Challenges record what was fetched of
    # them, not a status write; "processing" in between only when the CA was still
    # signing at the next look. No Events on Orders or Challenges for an issuance that
    # went well: Events are writes too, and the Certificate's tell it.
    order_names = [e.name for e in events if e.resource == "orders" and e.verb == "create"
                   and not e.subresource and e.code == 201]
    written = {name: [s for s in statuses if s.get("state") != "processing"]
               for name, statuses in _status_writes(events, "orders").items()}
    assert sorted(written) == sorted(order_names)
    for name, statuses in written.items():
        assert [s.get("state") for s in statuses] == ["pending", "valid"], name
        placed, done = statuses
        assert [a.keys() for a in placed["authorizations"]] == [{"url"}]
        [authorization] = done["authorizations"]
        assert authorization["url"] == placed["authorizations"][0]["url"]
        assert authorization["identifier"] == f"{name.split('-')[0]}.example.test"
        assert authorization["challenges"][0]["type"] == "http-01"
        assert authorization["challenges"][0]["token"]
        assert done["url"] == placed["url"]
    challenge_names = {e.name for e in events if e.resource == "challenges"
                       and e.verb == "create" and e.code == 201}
    assert len(challenge_names) == len(names)
    # A Challenge's status: "processing" (the answer accepted) only when the CA took
    # longer than a second, and no verdict: one that passed deletes itself, the verdict
    # told to its Order in this process's memory (it was written, then the Order deleted
    # the Challenge). Pebble here validates at once, so at least one Challenge's status
    # was never written. A self-check that found the token not served yet (the data
    # plane's watch had not brought it the Challenge) says it waits: a retry, not a step.
    challenge_writes = {
        name: [s for s in states if s != "waiting"]
        for name, states in _challenge_states(events).items()}
    assert set(challenge_writes) <= challenge_names, challenge_writes
    assert all(states in ([], ["processing"])
               for states in challenge_writes.values()), challenge_writes
    assert any(not challenge_writes.get(name) for name in challenge_names), challenge_writes
    deleted = collections.Counter(e.name for e in events if e.resource == "challenges"
                                  and e.verb == "delete")
    assert deleted == dict.fromkeys(challenge_names, 1), deleted
    # A Certificate's status: Ready with the certificate, and before it Issuing (with
    # Ready False, and the Requested Event) only when the issuance ran longer than a
    # second; else its Issuing Event names the Order that issued it, and why.
    def state_of(status: dict[str, Any]) -> str:
        conditions_ = {c["type"]: c["status"] for c in status.get("conditions") or []}
        return ("issuing" if conditions_.get("Issuing") == "True" else
                "ready" if conditions_.get("Ready") == "True" else str(conditions_))

    certificate_writes = {name: [state_of(s) for s in statuses]
                          for name, statuses in _status_writes(events, "certificates").items()}
    assert sorted(certificate_writes) == sorted(f"{name}-tls" for name in names)
    # Pebble here issues within a second (all four took well under one): at least one
    # Certificate's status was written once only (each was written twice before).
    assert ["ready"] in certificate_writes.values(), certificate_writes
    certificate_events = collections.defaultdict(list)
    for event in api.list(kind="Event", namespace=NAMESPACE):
        involved = event["involvedObject"]["name"]
        if involved in certificate_writes and event["type"] == "Normal":
            certificate_events[involved].append((event["reason"], event["message"]))
    for certificate_name, states in certificate_writes.items():
        [order_name] = [n for n in order_names if n.startswith(f"{certificate_name}-")]
        reason = "Issuing certificate as Secret does not exist"
        if states == ["ready"]:
            assert certificate_events[certificate_name] == [("Issuing", (
                f"The certificate has been successfully issued by Order {order_name} "
                f"({reason})"))], certificate_events[certificate_name]
        else:
            assert states == ["issuing", "ready"], (certificate_name, states)
            assert sorted(certificate_events[certificate_name]) == [
                ("Issuing", "The certificate has been successfully issued"),
                ("Requested", f"Created new Order {order_name}: {reason}")]
    # Challenges are created without a read first: none can be there that the Order's
    # pass did not read already (a GET answered 404 each before). A GET answered 200 may
    # come before the create in the log: the audit log writes each entry as its request
    # completes, and a read that followed the create can complete first.
    created_at: dict[str, int] = {}
    for index, e in enumerate(events):
        if e.resource == "challenges" and not e.subresource and e.verb == "create":
            created_at.setdefault(e.name, index)
    assert sorted(created_at) == sorted(challenge_names)
    read_first = [e.name for index, e in enumerate(events)
                  if e.resource == "challenges" and not e.subresource and e.verb == "get"
                  and e.code == 404 and index < created_at.get(e.name, -1)]
    assert read_first == [], read_first
    told = [(e["involvedObject"]["name"], e["reason"])
            for e in api.list(kind="Event", namespace=NAMESPACE) if e["type"] == "Normal"
            and e["involvedObject"]["name"] in {*order_names, *challenge_names}]
    assert told == []

    plane.report(f"{len(names)} Ingresses at once to served certificates: {batch_seconds:.2f} s")
    for label, counted, count in (("the first certificate", flow.operator_events(), 1),
                                  (f"{len(names)} at once", events, len(names))):
        plane.report(f"API requests per certificate, {label}: {_summary(counted, count)}")


def _status_writes(events: list[AuditEvent], resource: str) -> dict[str, list[dict[str, Any]]]:
    """The statuses written to each object of `resource` (certctl.io), in the log's order
    (the audit policy keeps their request bodies)."""
    written: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for e in events:
        if e.resource == resource and e.subresource == "status" and e.verb == "update":
            written[e.name].append(e.raw["requestObject"]["status"])
    return written


def _challenge_states(events: list[AuditEvent]) -> dict[str, list[str | None]]:
    """Each Challenge's status writes as "waiting" (its self-check found the token not
    served yet), "processing" (the answer accepted) or the state written."""
    return {name: ["waiting" if str(s.get("reason") or "").startswith("Waiting for ")
                   else "processing" if s.get("processing") else s.get("state")
                   for s in statuses]
            for name, statuses in _status_writes(events, "challenges").items()}


def _summary(events: list[AuditEvent], certificates: int) -> str:
    """Requests of the controller and data plane per certificate, leader-lease renewals apart
    (they depend on time, not work); then the writes by verb and resource."""
    leases = [e for e in events if e.resource == "leases"]
    counted = [e for e in events if e.resource != "leases"]
    writes = [e for e in counted if e.is_write]
    by_kind = collections.Counter(
        f"{e.verb} {e.resource}{'/' + e.subresource if e.subresource else ''}"
        + (f" ({e.code})" if e.code >= 400 else "") for e in writes)
    per = certificates
    return (f"{len(counted) / per:.1f} requests ({len(writes) / per:.1f} writes, "
            f"{sum(1 for e in writes if e.resource == 'events') / per:.1f} of them Events; "
            f"{sum(1 for e in counted if e.verb in ('list', 'watch')) / per:.1f} lists/watches) "
            f"+ {len(leases)} lease requests; writes: "
            + ", ".join(f"{k} {v / per:g}" for k, v in sorted(by_kind.items())))


def test_deleted_secret_is_restored_from_the_kept_copy_without_a_new_order(flow: Flow) -> None:
    api = flow.api
    first = eventually(lambda: ready_secret(api, namespace=NAMESPACE, name="shop-tls"),
                       what="the Secret")
    orders = sorted(o["metadata"]["name"] for o in api.list(kind="Order", namespace=NAMESPACE))
    api.delete(kind="Secret", namespace=NAMESPACE, name="shop-tls")
    second = eventually(lambda: ready_secret(api, namespace=NAMESPACE, name="shop-tls"),
                        what="the Secret back")
    assert second["metadata"]["uid"] != first["metadata"]["uid"]  # really deleted and made anew
    assert leaf_of(second).serial_number == leaf_of(first).serial_number
    assert sorted(o["metadata"]["name"]
                  for o in api.list(kind="Order", namespace=NAMESPACE)) == orders
    assert "Restored" in [e["reason"] for e in api.list(kind="Event", namespace=NAMESPACE)
                          if e["involvedObject"]["name"] == "shop-tls"]


def test_missing_issuer_is_a_clear_condition_and_no_order(flow: Flow) -> None:
    api = flow.api
    api.create(obj=annotated_ingress("lost", "lost.example.test", namespace=NAMESPACE,
                                     issuer="letsencrypt-prod"))

    def not_ready() -> dict[str, Any] | None:
        certificate = api.get(kind="Certificate", namespace=NAMESPACE, name="lost-tls") or {}
        return next((c for c in (certificate.get("status") or {}).get("conditions") or []
                     if c["type"] == "Ready"), None)

    ready = eventually(not_ready, what="a Ready condition")
    assert (ready["status"], ready["reason"]) == ("False", "IssuerNotFound")
    assert "ClusterIssuer letsencrypt-prod not found" in ready["message"]
    assert not [o for o in api.list(kind="Order", namespace=NAMESPACE)
                if o["metadata"]["name"].startswith("lost-tls")]


def test_cli_status_and_renew_against_the_cluster(
    flow: Flow, capsys: pytest.CaptureFixture[str],
) -> None:
    kubeconfig = str(flow.plane.kubeconfig)
    first = eventually(lambda: ready_secret(flow.api, namespace=NAMESPACE, name="shop-tls"),
                       what="the Secret")
    capsys.readouterr()
    assert cli.main(["status", "certificate", "shop-tls", "-n", NAMESPACE,
                     "--kubeconfig", kubeconfig]) == 0
    shown = capsys.readouterr().out
    assert f"Certificate {NAMESPACE}/shop-tls" in shown and "Ready: True" in shown

    assert cli.main(["renew", "shop-tls", "-n", NAMESPACE, "--kubeconfig", kubeconfig]) == 0
    assert f"Manually triggered issuance of Certificate {NAMESPACE}/shop-tls" in \
        capsys.readouterr().out

    def renewed_and_served() -> x509.Certificate | None:
        served = served_certificate(port=flow.operator.https_port, server_name=HOST,
                                    roots_pem=flow.pebble.issuance_roots_pem())
        return served if served.serial_number != leaf_of(first).serial_number else None

    renewed = eventually(renewed_and_served, timeout=60, what="the renewed certificate served")
    assert dns_names(renewed) == [HOST]
    assert cli.main(["status", "certificate", "nope", "-n", NAMESPACE,
                     "--kubeconfig", kubeconfig]) == 1
    assert f"Certificate {NAMESPACE}/nope not found" in capsys.readouterr().err


def test_the_clusters_ca_is_trusted_whatever_the_environment_names(
    control_plane: ControlPlane, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    # requests prefers REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE to a session's own CA; a store
    # that set its CA on the session failed every call wherever those are set.
    unrelated = tmp_path / "unrelated-ca.pem"
    unrelated.write_bytes(TestCA(common_name="not the cluster's CA").pem)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(unrelated))
    monkeypatch.setenv("CURL_CA_BUNDLE", str(unrelated))
    store = KubeStore(configuration=control_plane.configuration(), component="certctl-test")
    try:
        assert "certctl" in [c["metadata"]["name"] for c in store.list(kind="IngressClass")]
    finally:
        store.close()


def test_solver_naming_an_ingress_gets_the_token_path_added_and_removed_again(
    flow: Flow,
) -> None:
    # As for GKE or ALB, where every Ingress has its own address: no solver Ingress.
    api, plane = flow.api, flow.plane
    issuer = cluster_issuer(flow.pebble, name=f"{ISSUER}-named", api_version="certctl.io/v1")
    issuer["spec"]["acme"]["solvers"] = [{"http01": {"ingress": {"name": "named"}}}]
    api.create(obj=issuer)
    try:
        eventually(lambda: issuer_ready(api, issuer["metadata"]["name"]), timeout=60,
                   what="the ClusterIssuer")
        start = plane.audit.mark()
        api.create(obj=annotated_ingress("named", "named.example.test", namespace=NAMESPACE,
                                         issuer=issuer["metadata"]["name"]))
        eventually(partial(served_certificate, port=flow.operator.https_port,
                           server_name="named.example.test",
                           roots_pem=flow.pebble.issuance_roots_pem()),
                   timeout=60, what="the certificate served")
        eventually(lambda: not api.list(kind="Challenge", namespace=NAMESPACE),
                   what="the challenge cleaned up")
        time.sleep(0.5)
    finally:
        api.delete(kind="ClusterIssuer", namespace=None, name=issuer["metadata"]["name"])
    updates = [e for e in _operators(plane.audit.events(since=start))
               if e.resource == "ingresses" and e.verb == "update" and e.code == 200]
    assert not [e for e in updates if e.name != "named"]  # no solver Ingress, no other one
    paths = [[(p["path"], p["pathType"], p["backend"]["service"]["name"])
              for rule in e.raw["requestObject"]["spec"]["rules"]
              for p in rule["http"]["paths"]]
             for e in updates if not e.subresource]
    added = [path for version in paths for path in version
             if path[0].startswith("/.well-known/acme-challenge/")]
    assert added, f"the token path was never added to Ingress named: {paths}"
    assert added[0][1] == "Exact" and added[0][2].startswith("certctl-http01-")
    named = api.get(kind="Ingress", namespace=NAMESPACE, name="named")
    assert named is not None
    assert [[p["path"] for p in rule["http"]["paths"]] for rule in named["spec"]["rules"]] == [
        ["/"]]
