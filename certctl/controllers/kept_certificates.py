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

A copy is restored only when it fits the Certificate exactly: the same DNS
names and IP addresses (as sets), the same issuer (kind and name: the copy's
Secret name is derived from them, and its annotations are checked too), the
same key algorithm and size, and not expired. It is kept until its
certificate expires, not forever: `reconcile` deletes it at its notAfter (a
timer on the injected clock) and at start-up, when every copy is looked at
once; each issuance replaces it with the newer certificate. A 6-day
(short-lived) certificate is thus kept for at most 6 days.

The copy carries the issuer, requested-Common-Name and requested-profile annotations of a
certctl-written Secret, so the issuance checks of `policies` judge it exactly
as they judge the Secret.
It is an Opaque Secret named in no Ingress, so the data plane never serves it.
"""

from __future__ import annotations

import datetime
import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from certctl.api import annotations as annotation_keys
from certctl.api import conditions
from certctl.api.resources import Certificate, ObjectKey
from certctl.controllers import policies
from certctl.controllers.reconciling import Clock, Result
from certctl.pki import secret as tls_secret
from certctl.store.interface import AlreadyExists, Object, Store

logger = logging.getLogger(__name__)

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
    expect_copy: bool,
) -> None:
    """Replace the copy with this issuance's Secret data (tls.crt, tls.key, ca.crt).

    `expect_copy`: whether a copy likely exists (a renewal's): looked up first. Else it
    is created at once, a GET fewer, and looked up only if it was there after all."""
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
    existing = find(store=store, ref=ref) if expect_copy else None
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


def is_kept_copy(obj: Mapping[str, Any], *, cluster_resource_namespace: str) -> bool:
    """A copy certctl keeps: labelled so, in the cluster resource namespace (a Secret
    elsewhere carrying the label is someone else's, never deleted for it)."""
    metadata = obj.get("metadata") or {}
    return metadata.get("namespace") == cluster_resource_namespace and (
        (metadata.get("labels") or {}).get(KEPT_LABEL) == "true")


def expiry(secret: Mapping[str, Any]) -> datetime.datetime | None:
    """The kept certificate's notAfter; None when the copy cannot be read."""
    try:
        return tls_secret.read_tls_secret(secret).info.not_after
    except ValueError:  # SecretInvalid is one
        return None


def reconcile(*, store: Store, key: ObjectKey, clock: Clock,
              cluster_resource_namespace: str) -> Result:
    """Delete the copy once its certificate has expired; until then look again at notAfter.

    An expired copy can never be restored (restoring checks expiry too), so
    keeping it would only leave a private key lying around. A copy that
    cannot be read could never be restored either, and goes as well.
    """
    secret = store.get(kind="Secret", namespace=key.namespace, name=key.name)
    if secret is None or not is_kept_copy(
            secret, cluster_resource_namespace=cluster_resource_namespace):
        return Result.done()
    not_after = expiry(secret)
    now = clock()
    if not_after is not None and now < not_after:
        return Result.after((not_after - now).total_seconds())
    why = (f"its certificate expired at {conditions.format_time(not_after)}"
           if not_after is not None else "it holds no readable certificate and key")
    logger.info("deleting the kept copy %s/%s of %s: %s", key.namespace, key.name,
                (secret["metadata"].get("annotations") or {}).get(KEPT_FOR_ANNOTATION, "?"), why)
    store.delete(kind="Secret", namespace=key.namespace, name=key.name)
    return Result.done()
