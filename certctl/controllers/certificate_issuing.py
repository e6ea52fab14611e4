"""Writing an issued certificate: kept copy, `kubernetes.io/tls` Secret, revision.

Also restoring a lost Secret from a kept copy (`kept_certificates`), without a
new order, as the certificate of the issuer that issued it.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Mapping

from certctl.api import annotations as annotation_keys
from certctl.api import conditions, parsing
from certctl.api.errors import InvalidObject
from certctl.api.resources import Certificate, Issuer, IssuerRef, IssuerSpec
from certctl.api.status import CertificateStatus
from certctl.controllers import (
    certificate_issuer,
    certificate_orders,
    certificate_status,
    issuer_fallback,
    kept_certificates,
    policies,
    reconciling,
    secret_claims,
)
from certctl.controllers.certificate_fallback import Fallback
from certctl.controllers.certificate_settings import Settings
from certctl.controllers.reconciling import Result
from certctl.pki import inspect, keys
from certctl.pki import secret as tls_secret
from certctl.store.interface import AlreadyExists, Object, Store


def store_issued(
    store: Store,
    obj: Object,
    *,
    fallback: Fallback,
    issuer: Issuer[IssuerSpec],
    private_key: keys.PrivateKey,
    chain_pem: bytes,
    ca_pem: bytes | None,
    current: Object | None,
    failed_request: str,
    now: datetime.datetime,
    failures: int,
    settings: Settings,
    requested: str | None = None,
) -> Result:
    """Write the new certificate: kept copy first, then the Secret, then the status.

    `current` is the Secret as this pass read it (None: there is none). `requested`: which
    order issued it and why, for the Event, when no Requested Event told it
    (`Settings.untold_issuance`).
    """
    certificate = fallback.certificate
    key_pem = keys.encode_private_key(private_key, encoding=certificate.private_key.encoding)
    # Parsed as the Secret will be read (this pass's check below, the next pass, the data
    # plane): from the bytes it will hold, so that those reads find it parsed.
    issued = tls_secret.parse_tls_secret_bytes(tls_secret.TLSSecretBytes(
        chain_pem=chain_pem, key_pem=key_pem, ca_pem=ca_pem))
    if not inspect.key_matches_certificate(private_key, issued.leaf):
        # Never publish a key pair that does not belong together; a new order follows.
        return certificate_status.failed(
            store, obj, message="the issued certificate does not match the private key of the "
            "request", request=failed_request, failures=failures, now=now, settings=settings,
            keep_ready=False, retry_after=None)
    # Another Certificate may have taken the Secret while this one was ordering.
    contender = secret_claims.rival(store=store, certificate=certificate, secret=current)
    if contender is not None and secret_claims.is_newer(obj, than=contender):
        return certificate_status.duplicate(store, obj, holder=contender, now=now)
    data = tls_secret.build_tls_secret_data(chain_pem=chain_pem, key_pem=key_pem, ca_pem=ca_pem)
    if certificate_issuer.places_orders(issuer):
        # Before the Secret: if certctl stops in between, the copy restores the Secret
        # instead of a second order replacing it.
        # One copy per issuer (`fallback.tried` names the one that issued): a copy is
        # restored only as what it is, that issuer's certificate.
        kept_certificates.keep(store=store, certificate=fallback.tried, data=data,
                               expect_copy=current is not None, ref=kept_certificates.kept_ref(
                                   certificate=fallback.tried,
                                   cluster_resource_namespace=settings.cluster_resource_namespace))
    # `current` is still the Secret as stored: certctl writes it only here, in this pass.
    secret = _write_secret(store, certificate=certificate, existing=current, ref=fallback.ref,
                           acme=certificate_issuer.places_orders(issuer), data=data,
                           info=issued.info, restored_from=None)
    fresh = store.get(kind="Certificate", namespace=certificate.namespace, name=certificate.name)
    if fresh is None:
        return Result.done()
    status = fresh.setdefault("status", {})
    status["revision"] = int(status.get("revision") or 0) + 1
    for stale in ("failedIssuanceAttempts", "lastFailureTime", "lastFailureGeneration",
                  "lastFailedOrder", "retryAfter", "nextPrivateKeySecretName"):
        status.pop(stale, None)
    status["issuedBy"] = issuer_fallback.ref_status(fallback.ref).to_dict()
    passed_over = fallback.attempt.passed_over(certificate, before=fallback.position)
    if passed_over:
        # Why the first choice did not issue this one, until the next issuance.
        status["issuerFallback"] = issuer_fallback.to_status(dataclasses.replace(
            fallback.attempt, failures=tuple(passed_over))).to_dict()
    else:
        status.pop("issuerFallback", None)
    certificate_orders.prune_orders(store, fresh, certificate=certificate)
    store.emit_event(obj=fresh, type="Normal", reason="Issuing",
                     message="The certificate has been successfully issued"
                     + ("" if requested is None else f" {requested}")
                     + certificate_status.issued_by_note(passed_over, ref=fallback.ref))
    data_input = certificate_issuer.with_renewal_info(
        store, fresh, data=policies.read_input(certificate=certificate, secret=secret, now=now,
                                               acme=certificate_issuer.places_orders(issuer)),
        issuer=issuer, now=now, settings=settings)
    return certificate_status.up_to_date(
        store, fresh, certificate=certificate, data=data_input, now=now)


def restore_kept_copy(
    store: Store,
    obj: Object,
    *,
    certificate: Certificate,
    violation: policies.Violation,
    now: datetime.datetime,
    settings: Settings,
) -> Result | None:
    """Put a kept copy back when it is still good for the spec; None when none is.

    Each issuer of the Certificate has its own copy; the one of the issuer that issued
    the lost certificate is tried first, then the others, first choice first. A copy is
    restored as what it is: its issuer's certificate (`status.issuedBy` says so).
    """
    issued_by = issuer_fallback.issued_by(CertificateStatus.from_object(obj),
                                         certificate=certificate)
    for issuer_ref in dict.fromkeys((*([issued_by] if issued_by else []),
                                     *certificate.issuer_refs)):
        restored = _restore_copy_of(store, obj, certificate=certificate, issuer_ref=issuer_ref,
                                    violation=violation, now=now, settings=settings)
        if restored is not None:
            return restored
    return None


def _restore_copy_of(
    store: Store,
    obj: Object,
    *,
    certificate: Certificate,
    issuer_ref: IssuerRef,
    violation: policies.Violation,
    now: datetime.datetime,
    settings: Settings,
) -> Result | None:
    ref = kept_certificates.kept_ref(certificate=dataclasses.replace(
        certificate, issuer_ref=issuer_ref),
        cluster_resource_namespace=settings.cluster_resource_namespace)
    kept = kept_certificates.find(store=store, ref=ref)
    if kept is None:
        return None
    kept_input = policies.read_input(certificate=certificate, secret=kept, now=now, acme=True)
    if policies.needs_issuing(kept_input, policies.READINESS_CHAIN) is not None:
        return None  # expired, or for other names, keys or issuers: only an order helps
    kept_by = (kept.get("metadata", {}).get("annotations") or {})
    if (kept_by.get(annotation_keys.SECRET_ISSUER_NAME) != issuer_ref.name
            or kept_by.get(annotation_keys.SECRET_ISSUER_KIND) != issuer_ref.kind):
        return None  # a copy is restored only for the issuer that issued it
    issuer_at = certificate_issuer.issuer_key(certificate, issuer_ref)
    issuer_obj = store.get(kind=issuer_at.kind, namespace=issuer_at.namespace,
                           name=issuer_at.name)
    if issuer_obj is None:
        return None
    assert kept_input.contents is not None and kept_input.info is not None
    key_pem = keys.encode_private_key(kept_input.contents.key,
                                      encoding=certificate.private_key.encoding)
    data = tls_secret.build_tls_secret_data(chain_pem=kept_input.contents.chain_pem,
                                            key_pem=key_pem, ca_pem=kept_input.contents.ca_pem)
    existing = store.get(kind="Secret", namespace=certificate.namespace,
                         name=certificate.secret_name)
    secret = _write_secret(store, certificate=certificate, existing=existing, ref=issuer_ref,
                           acme=True, data=data, info=kept_input.info, restored_from=str(ref))
    store.emit_event(obj=obj, type="Normal", reason="Restored", message=(
        f"Restored the certificate (serial {kept_input.info.serial:x}, valid until "
        f"{conditions.format_time(kept_input.info.not_after)}) from the copy certctl keeps in "
        f"Secret {ref}, without a new order: {violation.message}"))
    try:
        issuer = parsing.parse_issuer(issuer_obj, source=reconciling.manifest_source(issuer_obj))
    except InvalidObject:
        issuer = None  # the CA's renewal window cannot be asked: the lifetime rules
    written = policies.read_input(certificate=certificate, secret=secret, now=now, acme=True)
    restored = written if issuer is None else certificate_issuer.with_renewal_info(
        store, obj, data=written, issuer=issuer, now=now, settings=settings)
    status = obj.setdefault("status", {})
    status["issuedBy"] = issuer_fallback.ref_status(issuer_ref).to_dict()
    if (status.get("issuerFallback") or {}).get("revision") != status.get("revision"):
        # What failed in this pass is no longer news: nothing was issued.
        status.pop("issuerFallback", None)
    return certificate_status.up_to_date(store, obj, certificate=certificate, data=restored,
                                         now=now)


def _write_secret(
    store: Store,
    *,
    certificate: Certificate,
    existing: Object | None,
    ref: IssuerRef,
    acme: bool,
    data: dict[str, str],
    info: inspect.CertificateInfo,
    restored_from: str | None,
) -> Object:
    """Create or update the Secret (`existing`: as read before, None when there was none),
    as issued by `ref` (an ACME issuer when `acme`); returns it as stored. A Secret
    created or changed by someone else since is met as AlreadyExists or Conflict."""
    secret_annotations = {
        **dict(certificate.secret_template.annotations),
        annotation_keys.SECRET_CERTIFICATE_NAME: certificate.name,
        annotation_keys.SECRET_ISSUER_NAME: ref.name,
        annotation_keys.SECRET_ISSUER_KIND: ref.kind,
        annotation_keys.SECRET_ISSUER_GROUP: ref.group,
        annotation_keys.SECRET_COMMON_NAME: info.common_name or "",
        annotation_keys.SECRET_ALT_NAMES: ",".join(info.dns_names),
        annotation_keys.SECRET_IP_SANS: ",".join(info.ip_addresses),
        annotation_keys.SECRET_URI_SANS: "",
    }
    if certificate.common_name:
        # The order (or the kept copy, checked against this spec) asked for it.
        secret_annotations[policies.REQUESTED_COMMON_NAME_ANNOTATION] = certificate.common_name
    if acme and certificate.acme_profile:
        secret_annotations[policies.REQUESTED_PROFILE_ANNOTATION] = certificate.acme_profile
    if restored_from is not None:
        secret_annotations[kept_certificates.RESTORED_FROM_ANNOTATION] = restored_from
    labels = {**dict(certificate.secret_template.labels),
              "controller.cert-manager.io/fao": "true"}
    if existing is None:
        secret: Object = {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": tls_secret.SECRET_TYPE,
            "metadata": {"name": certificate.secret_name, "namespace": certificate.namespace,
                         "annotations": secret_annotations, "labels": labels},
            "data": data,
        }
        try:
            return store.create(obj=secret)
        except AlreadyExists:
            existing = store.get(kind="Secret", namespace=certificate.namespace,
                                 name=certificate.secret_name)
            assert existing is not None
    # Keep what others put in the Secret; replace only what we own.
    existing_annotations = existing.setdefault("metadata", {}).setdefault("annotations", {})
    existing_annotations.pop(kept_certificates.RESTORED_FROM_ANNOTATION, None)
    existing_annotations.update(secret_annotations)
    existing["metadata"].setdefault("labels", {}).update(labels)
    # A Secret whose data is not even a mapping (hand-written garbage) is replaced whole.
    old_data = existing.get("data")
    existing_data = ({k: v for k, v in old_data.items() if k != "ca.crt"}
                     if isinstance(old_data, Mapping) else {})
    existing_data.update(data)
    existing["data"] = existing_data
    existing["type"] = tls_secret.SECRET_TYPE
    return store.replace(obj=existing)
