"""What the Certificate reconciler asks about an issuer a Certificate names.

Where it is stored (with a hint when only the other kind has that name); whether
it can issue now (Ready, and its type does not refuse the certificate); which
issuer judges the Secret (the one that issued it); whether it places orders; and
what its CA says about renewal (the ARI window, the CertID an order `replaces`).
"""

from __future__ import annotations

import dataclasses
import datetime

from certctl.api import conditions, parsing
from certctl.api.errors import InvalidObject
from certctl.api.resources import Certificate, Issuer, IssuerRef, IssuerSpec, ObjectKey
from certctl.api.status import CertificateStatus
from certctl.controllers import issuer_fallback, policies, reconciling, renewal_info
from certctl.controllers.certificate_settings import Settings
from certctl.issuers import protocol, registry
from certctl.issuers.acme import ari
from certctl.store.interface import Object, Store


def issuer_key(certificate: Certificate, ref: IssuerRef | None = None) -> ObjectKey:
    """Where the issuer `ref` (default: spec.issuerRef) of `certificate` is stored."""
    ref = ref or certificate.issuer_ref
    namespace = None if ref.kind == "ClusterIssuer" else certificate.namespace
    return ObjectKey(kind=ref.kind, namespace=namespace, name=ref.name)


def issuer_of_secret(
    store: Store, obj: Object, *, certificate: Certificate, tried: Issuer[IssuerSpec]
) -> Issuer[IssuerSpec]:
    """The issuer that issued the Secret's certificate (`status.issuedBy`), when it is one
    of the Certificate's and can be read; else the one tried now."""
    ref = issuer_fallback.issued_by(CertificateStatus.from_object(obj), certificate=certificate)
    if ref is None or (ref.kind, ref.name) == (tried.kind, tried.name):
        return tried
    key = issuer_key(certificate, ref)
    issuer_obj = store.get(kind=key.kind, namespace=key.namespace, name=key.name)
    if issuer_obj is None:
        return tried
    try:
        return parsing.parse_issuer(issuer_obj, source=reconciling.manifest_source(issuer_obj))
    except InvalidObject:
        return tried


def other_kind_hint(store: Store, certificate: Certificate) -> str:
    """`; a ClusterIssuer x exists: ...` when the name is right but the kind is not.

    The usual cause: `cert-manager.io/issuer` written for a ClusterIssuer (or
    issuerRef without `kind`, which means Issuer).
    """
    ref = certificate.issuer_ref
    if ref.kind == "Issuer":
        other = store.get(kind="ClusterIssuer", namespace=None, name=ref.name)
        fix = ("set issuerRef.kind: ClusterIssuer (on an Ingress, use the "
               "cert-manager.io/cluster-issuer annotation)")
        kind = "ClusterIssuer"
    else:
        other = store.get(kind="Issuer", namespace=certificate.namespace, name=ref.name)
        fix = ("set issuerRef.kind: Issuer (on an Ingress, use the cert-manager.io/issuer "
               "annotation)")
        kind = f"Issuer in namespace {certificate.namespace}"
    return f"; a {kind} {ref.name} exists: {fix}" if other is not None else ""


def issuer_problem(
    store: Store, *, issuer_obj: Object, issuer: Issuer[IssuerSpec], certificate: Certificate,
    labels: dict[str, str], env: protocol.Environment,
) -> protocol.Refused | None:
    """Why issuing cannot start now, or None: the issuer is not Ready, or refuses this
    certificate (its type says why); raises `AcmeError` when the CA cannot be asked."""
    issuer_status = issuer_obj.get("status") or {}
    ready = conditions.get_condition(issuer_status.get("conditions") or [], "Ready")
    if ready is None:
        return NotLookedAt(f"{issuer.kind} {issuer.name} is not ready", reason="IssuerNotReady")
    if ready.get("status") != "True":
        detail = f": {ready['message']}" if ready.get("message") else ""
        return protocol.Refused(f"{issuer.kind} {issuer.name} is not ready{detail}",
                                reason="IssuerNotReady")
    try:
        registry.issuer_type(issuer).refuse(
            store=store, issuer=issuer, certificate=certificate, labels=labels, env=env)
    except protocol.Refused as refused:
        return refused
    return None


class NotLookedAt(protocol.Refused):
    """The issuer has no Ready condition yet: its reconciler has not run. Not a reason to
    fall back, nor to record anything on the Certificate: its verdict wakes it."""


def places_orders(issuer: Issuer[IssuerSpec]) -> bool:
    return registry.issuer_type(issuer).order_server(issuer) is not None


def with_renewal_info(
    store: Store, obj: Object, *, data: policies.Input, issuer: Issuer[IssuerSpec],
    now: datetime.datetime, settings: Settings,
) -> policies.Input:
    """`data` with the CA's current renewal window (ARI), asked for when due (issuers that
    place orders only: `data.acme`)."""
    if not data.acme or data.contents is None:
        return data
    window = renewal_info.refresh(store, obj, issuer=issuer, secret=data.secret,
                                  leaf=data.contents.leaf, accounts=settings.accounts, now=now,
                                  draw=settings.draw)
    return dataclasses.replace(data, ari=window)


def replaced_cert_id(*, data: policies.Input, issuer: Issuer[IssuerSpec]) -> str | None:
    """The ARI CertID for the new order's `replaces`: the certificate it renews.

    Only a certificate this issuer's CA issued (certctl wrote it from this
    issuer) can be named to it; the Order sends it only to a CA offering ARI.
    """
    if data.contents is None or data.secret is None or not renewal_info.issued_by(
            secret=data.secret, issuer=issuer):
        return None
    return ari.cert_id(data.contents.leaf)
