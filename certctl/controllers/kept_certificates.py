"""The last certificate an ACME CA issued for each Certificate, kept where users do not delete it.

The most common way to exhaust Let's Encrypt's limits is by accident:
deleting a TLS Secret, its namespace, or an app and deploying it again makes
a controller order afresh, and five times in a week locks the names out for
days. certctl keeps a copy of every certificate and key it obtained from an
ACME issuer in a Secret of the cluster resource namespace, named from the
Certificate's namespace, name and issuer and owned by nothing, so neither
garbage collection nor a namespace deletion takes it. When a Certificate's
Secret is gone (or unreadable) and the copy is still valid for the spec, the
copy is restored and no order is placed.

The copy carries the issuer, requested-Common-Name and requested-profile annotations of a
certctl-written Secret, so the issuance checks of `policies` judge it exactly
as they judge the Secret.
It is an Opaque Secret named in no Ingress, so the data plane never serves it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

from certctl.api import annotations as annotation_keys
from certctl.api.resources import Certificate
from certctl.controllers import policies
from certctl.store.interface import AlreadyExists, Object, Store

KEPT_LABEL = "certctl.io/kept-certificate"
# Which Certificate the copy is of, for people reading `kubectl get secret -o yaml`.
KEPT_FOR_ANNOTATION = "certctl.io/kept-for"
# Set on a user's Secret that was restored from a copy, until the next issuance.
RESTORED_FROM_ANNOTATION = "certctl.io/restored-from"


@dataclass(frozen=True, kw_only=True)
class KeptRef:
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


def kept_ref(*, certificate: Certificate, cluster_resource_namespace: str) -> KeptRef:
    """Where the copy for this Certificate and issuer lives; a new issuer starts a new copy."""
    ref = certificate.issuer_ref
    identity = f"{certificate.namespace}/{certificate.name}/{ref.kind}/{ref.name}"
    digest = hashlib.sha256(identity.encode()).hexdigest()[:20]
    return KeptRef(namespace=cluster_resource_namespace, name=f"certctl-kept-{digest}")


def find(*, store: Store, ref: KeptRef) -> Object | None:
    return store.get(kind="Secret", namespace=ref.namespace, name=ref.name)


def keep(
    *,
    store: Store,
    ref: KeptRef,
    certificate: Certificate,
    data: Mapping[str, str],
) -> None:
    """Replace the copy with this issuance's Secret data (tls.crt, tls.key, ca.crt)."""
    issuer = certificate.issuer_ref
    secret: Object = {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": ref.name,
            "namespace": ref.namespace,
            "labels": {KEPT_LABEL: "true"},
            "annotations": {
                KEPT_FOR_ANNOTATION: f"{certificate.namespace}/{certificate.name}",
                annotation_keys.SECRET_ISSUER_NAME: issuer.name,
                annotation_keys.SECRET_ISSUER_KIND: issuer.kind,
                annotation_keys.SECRET_ISSUER_GROUP: issuer.group,
                **({policies.REQUESTED_COMMON_NAME_ANNOTATION: certificate.common_name}
                   if certificate.common_name else {}),
                **({policies.REQUESTED_PROFILE_ANNOTATION: certificate.acme_profile}
                   if certificate.acme_profile else {}),
            },
        },
        "data": dict(data),
    }
    existing = find(store=store, ref=ref)
    if existing is None:
        try:
            store.create(obj=secret)
            return
        except AlreadyExists:
            existing = find(store=store, ref=ref)
            if existing is None:
                raise
    secret["metadata"]["resourceVersion"] = existing["metadata"].get("resourceVersion")
    store.replace(obj=secret)
