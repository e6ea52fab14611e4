"""A harness for the Certificate reconciler alone: a local store, a clock the test moves.

The Certificate reconciler talks to the ACME CA only through Order objects:
it creates an Order and reads its `status.state` and `status.certificate`,
which the Order reconciler fills in. Here the test plays the Order
reconciler's part (`complete_order`, `fail_order`) with a real local CA
signing the Order's real CSR, so renewal, backoff and budget behaviour is
driven by a clock the test controls, without sleeping. End-to-end behaviour
against Pebble is tested in test_lifecycle_pebble.py.
"""

from __future__ import annotations

import base64
import datetime
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography import x509

from certctl.api import conditions, parsing
from certctl.api.resources import AcmeIssuer, ObjectKey, PrivateKeySpec
from certctl.controllers import (
    certificate_orders,
    certificate_settings,
    certificates,
    challenges,
    issuers,
    reconciling,
)
from certctl.controllers.reconciling import Result
from certctl.issuers.acme.accounts import AcmeAccounts
from certctl.pki import keys, selfsigned
from certctl.pki import secret as tls_secret
from certctl.runtime import dispatch
from certctl.solvers import http01_ingress
from certctl.solvers.dns01 import lookup
from certctl.solvers.dns01 import solver as dns01_solver
from certctl.store.interface import EventType, Object
from certctl.store.local import LocalStore

START = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)
ACME_SERVER = "https://acme.example.invalid/directory"  # never contacted: no Order runs here


def with_condition(
    obj: Object,
    *,
    type: str,
    status: conditions.ConditionStatus,
    reason: str,
    message: str,
    now: datetime.datetime,
) -> Object:
    """`obj` with one status condition set, as another writer would (`certctl renew`, a
    controller that already made its issuer Ready)."""
    current = obj.setdefault("status", {})
    current["conditions"] = conditions.set_condition(
        current.get("conditions") or [],
        type=type,
        status=status,
        reason=reason,
        message=message,
        now=now,
        observed_generation=obj["metadata"].get("generation", 0),
    )
    return obj


class Clock:
    def __init__(self, start: datetime.datetime = START) -> None:
        self.now = start

    def __call__(self) -> datetime.datetime:
        return self.now

    def advance(self, **delta: float) -> datetime.datetime:
        self.now += datetime.timedelta(**delta)
        return self.now

    def set(self, when: datetime.datetime) -> None:
        self.now = when


class RecordingStore(LocalStore):
    """The standalone store, also remembering the Events reconcilers emit."""

    def __init__(self, *, state_dir: Path) -> None:
        super().__init__(manifests_dir=None, state_dir=state_dir)
        self.events: list[tuple[str, str, str, str]] = []  # (object name, type, reason, message)

    def emit_event(
        self, *, obj: Mapping[str, Any], type: EventType, reason: str, message: str
    ) -> None:
        self.events.append((obj["metadata"]["name"], type, reason, message))
        super().emit_event(obj=obj, type=type, reason=reason, message=message)


def challenge_settings(
    *,
    clock: reconciling.Clock = reconciling.system_clock,
    accounts: AcmeAccounts | None = None,
    self_check_port: int = 80,
    self_check_address: str | None = None,
    nameserver: str | None = None,
    data_plane: http01_ingress.DataPlaneService | None = None,
) -> challenges.Settings:
    """A controller process's Challenge settings, built as the commands build them; a new
    call is a restarted process. `nameserver`: the only one DNS-01 asks
    (`--dns01-recursive-nameservers-only`)."""
    return dispatch.controller_settings(
        clock=clock,
        accounts=accounts or AcmeAccounts(cluster_resource_namespace="certctl"),
        backoff_base=datetime.timedelta(hours=1),
        self_check=challenges.self_check_for(port=self_check_port,
                                             connect_address=self_check_address),
        dns01=dns01_solver.Options(
            recursive_nameservers=() if nameserver is None else (
                lookup.parse_nameserver(nameserver),),
            recursive_nameservers_only=nameserver is not None, query_timeout=1.0),
        order_budget=None, data_plane=data_plane).challenges


def order_and_challenge(
    store: LocalStore, *, issuer: str, dns_name: str, type: str, key: str
) -> ObjectKey:
    """An Order of the ClusterIssuer `issuer` and the Challenge orders.py creates for it,
    with the issuer's first solver copied in."""
    order = store.create(obj={
        "apiVersion": "certctl.io/v1", "kind": "Order",
        "metadata": {"name": "web-1", "namespace": "default"},
        "spec": {"request": "", "issuerRef": {"name": issuer, "kind": "ClusterIssuer"}},
    })
    issuer_obj = store.get(kind="ClusterIssuer", namespace=None, name=issuer)
    assert issuer_obj is not None
    parsed = parsing.parse_issuer(issuer_obj)
    assert isinstance(parsed.spec, AcmeIssuer)
    store.create(obj={
        "apiVersion": "certctl.io/v1", "kind": "Challenge",
        "metadata": {"name": "web-1-abc", "namespace": "default",
                     "ownerReferences": [reconciling.owner_reference(order)]},
        "spec": {"url": "https://acme.example.test/chall/1",
                 "authorizationURL": "https://acme.example.test/authz/1", "dnsName": dns_name,
                 "wildcard": False, "type": type, "token": "tok", "key": key,
                 "issuerRef": {"name": issuer, "kind": "ClusterIssuer"},
                 "solver": parsing.solver_spec(parsed.spec.solvers[0]), "solverIndex": 0},
    })
    return ObjectKey(kind="Challenge", namespace="default", name="web-1-abc")


class TestCA:
    """A CA key pair, as certctl's ca issuer reads it from a Secret."""

    __test__ = False

    def __init__(self, *, now: datetime.datetime, common_name: str = "lifecycle test CA",
                 days: int = 3650) -> None:
        self.key = keys.generate_private_key(PrivateKeySpec(algorithm="ECDSA", size=256))
        self.pem = selfsigned.self_signed_certificate(
            key=self.key, dns_names=(), common_name=common_name, is_ca=True,
            not_before=now - datetime.timedelta(days=1), not_after=now + datetime.timedelta(
                days=days))

    def secret(self, *, namespace: str, name: str) -> Object:
        return {
            "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": {"name": name, "namespace": namespace},
            "data": tls_secret.build_tls_secret_data(
                chain_pem=self.pem, key_pem=keys.encode_private_key(self.key, encoding="PKCS8"),
                ca_pem=None),
        }

    def sign(self, csr_pem: bytes, *, not_before: datetime.datetime,
             not_after: datetime.datetime) -> bytes:
        return selfsigned.sign_certificate(
            csr_pem=csr_pem, ca_cert=x509.load_pem_x509_certificate(self.pem), ca_key=self.key,
            not_before=not_before, not_after=not_after) + self.pem


class World:
    """One namespace's worth of issuers and Certificates, reconciled by hand."""

    def __init__(self, tmp_path: Path, **settings: Any) -> None:
        self.clock = Clock()
        self.store = RecordingStore(state_dir=tmp_path / "state")
        # An issuance is told of at the pass that starts it, as one a second old is: this
        # clock moves only when the test moves it (test_lifecycle_untold tests the wait).
        settings.setdefault("untold_issuance", datetime.timedelta(0))
        self.settings = certificate_settings.Settings(clock=self.clock, **settings)
        self.acme_ca = TestCA(now=self.clock.now, common_name="stand-in ACME CA")
        self.accounts = AcmeAccounts(cluster_resource_namespace="certctl")

    # --- issuers ---------------------------------------------------------------

    def add_acme_issuer(self, name: str = "acme") -> None:
        """A ClusterIssuer already Ready, as the issuer reconciler leaves a registered one."""
        self.store.create(obj={
            "apiVersion": "certctl.io/v1", "kind": "ClusterIssuer", "metadata": {"name": name},
            "spec": {"acme": {
                "server": ACME_SERVER, "privateKeySecretRef": {"name": f"{name}-account"},
                "solvers": [{"http01": {"ingress": {"ingressClassName": "certctl"}}}],
            }},
        })
        issuer = self.store.get(kind="ClusterIssuer", namespace=None, name=name)
        assert issuer is not None
        with_condition(issuer, type="Ready", status="True",
                       reason="ACMEAccountRegistered", message="registered",
                       now=self.clock.now)
        self.store.replace_status(obj=issuer)

    def add_local_issuer(self, name: str, spec: dict[str, Any], *,
                         kind: str = "ClusterIssuer") -> Result:
        metadata: dict[str, Any] = {"name": name}
        if kind == "Issuer":
            metadata["namespace"] = "default"
        self.store.create(obj={"apiVersion": "certctl.io/v1", "kind": kind,
                               "metadata": metadata, "spec": spec})
        return self.reconcile_issuer(name, kind=kind)

    def reconcile_issuer(self, name: str, *, kind: str = "ClusterIssuer") -> Result:
        return issuers.reconcile(
            store=self.store,
            key=ObjectKey(kind=kind, namespace="default" if kind == "Issuer" else None, name=name),
            settings=issuers.Settings(clock=self.clock, accounts=self.accounts))

    def issuer(self, name: str, *, kind: str = "ClusterIssuer") -> Object:
        found = self.store.get(kind=kind, namespace="default" if kind == "Issuer" else None,
                               name=name)
        assert found is not None
        return found

    # --- certificates ----------------------------------------------------------------

    def add_certificate(self, name: str, *, issuer: str = "acme", **spec: Any) -> Object:
        body: dict[str, Any] = {
            "secretName": name,
            "dnsNames": [f"{name}.example.test"],
            "issuerRef": {"name": issuer, "kind": "ClusterIssuer"},
        }
        body.update(spec)
        return self.store.create(obj={
            "apiVersion": "certctl.io/v1", "kind": "Certificate",
            "metadata": {"name": name, "namespace": "default",
                         "creationTimestamp": conditions.format_time(self.clock.now)},
            "spec": body,
        })

    def edit_spec(self, name: str, **changes: Any) -> None:
        obj = self.certificate(name)
        obj["spec"].update(changes)
        self.store.replace(obj=obj)

    def reconcile(self, name: str) -> Result:
        return certificates.reconcile(
            store=self.store, key=ObjectKey(kind="Certificate", namespace="default", name=name),
            settings=self.settings)

    def certificate(self, name: str) -> Object:
        found = self.store.get(kind="Certificate", namespace="default", name=name)
        assert found is not None
        return found

    def status(self, name: str) -> dict[str, Any]:
        status: dict[str, Any] = self.certificate(name).get("status") or {}
        return status

    def condition(self, name: str, type: str) -> dict[str, Any]:
        for condition in self.status(name).get("conditions") or []:
            if condition["type"] == type:
                found: dict[str, Any] = condition
                return found
        return {}

    def secret(self, name: str, namespace: str = "default") -> Object | None:
        return self.store.get(kind="Secret", namespace=namespace, name=name)

    def contents(self, name: str) -> tls_secret.TLSSecretContents:
        secret = self.secret(name)
        assert secret is not None, f"Secret {name} does not exist"
        return tls_secret.read_tls_secret(secret)

    def events(self, name: str) -> list[tuple[str, str, str]]:
        return [(type, reason, message) for obj, type, reason, message in self.store.events
                if obj == name]

    # --- the Order reconciler's part ------------------------------------------------

    def orders(self, name: str) -> list[Object]:
        return [o for o in self.store.list(kind="Order", namespace="default")
                if o["metadata"]["labels"].get(certificate_orders.CERTIFICATE_NAME_LABEL) == name]

    def pending_order(self, name: str) -> Object:
        pending = [o for o in self.orders(name)
                   if (o.get("status") or {}).get("state") not in ("valid", "invalid", "errored")]
        assert len(pending) == 1, f"expected one pending Order, found {len(pending)}"
        return pending[0]

    def complete_order(self, name: str, *, lifetime: datetime.timedelta = datetime.timedelta(
            days=90)) -> bytes:
        """Sign the pending Order's CSR as a CA would; returns the chain."""
        order = self.pending_order(name)
        chain = self.acme_ca.sign(base64.b64decode(order["spec"]["request"]),
                                  not_before=self.clock.now,
                                  not_after=self.clock.now + lifetime)
        order["status"] = {"state": "valid", "certificate": base64.b64encode(chain).decode()}
        self.store.replace_status(obj=order)
        return chain

    def fail_order(self, name: str, *, reason: str = "urn:ietf:params:acme:error:unauthorized: "
                   "no", retry_after: datetime.datetime | None = None) -> None:
        order = self.pending_order(name)
        order["status"] = {"state": "errored", "reason": reason}
        if retry_after is not None:
            order["status"]["retryAfter"] = conditions.format_time(retry_after)
        self.store.replace_status(obj=order)

    def issue(self, name: str, **order: Any) -> Result:
        """Reconcile until the Order exists, complete it, reconcile again."""
        self.reconcile(name)
        self.complete_order(name, **order)
        return self.reconcile(name)

    def forget_kept_copies(self) -> None:
        """Delete certctl's kept copies, so a lost Secret can only be issued again."""
        for secret in self.store.list(kind="Secret", namespace="certctl"):
            self.store.delete(kind="Secret", namespace="certctl",
                              name=secret["metadata"]["name"])
