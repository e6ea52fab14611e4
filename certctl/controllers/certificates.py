"""The Certificate reconciler: trigger, key manager, request manager, issuing, readiness.

One pass decides, in cert-manager's order:
- is the Certificate valid and its issuer present? (else `Ready=False` and stop:
  no key, no order, no ACME traffic);
- does the Secret need (re)issuing? (`policies.needs_issuing`);
- which private key? (a "next private key" Secret owned by the Certificate,
  so a restart reuses the key the pending order's CSR was made with);
- which Order? (named from a hash of everything the CSR depends on, so a
  restart finds the order it placed instead of placing a second one);
- when the Order is valid: write the `kubernetes.io/tls` Secret, bump the
  revision, mark Ready and schedule the renewal.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import logging
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization

from certctl.api import annotations as annotation_keys
from certctl.api import conditions, parsing
from certctl.api.errors import InvalidObject
from certctl.api.resources import Certificate, Issuer, ObjectKey
from certctl.controllers import policies, reconciling
from certctl.controllers.reconciling import Clock, Result
from certctl.pki import csr, inspect, keys
from certctl.pki import secret as tls_secret
from certctl.solvers import selection
from certctl.solvers.dns01 import errors as dns01_errors
from certctl.solvers.dns01 import registry as dns01_registry
from certctl.store.interface import AlreadyExists, Object, Store

logger = logging.getLogger(__name__)

NEXT_KEY_LABEL = "certctl.io/next-private-key"
CERTIFICATE_NAME_LABEL = "certctl.io/certificate-name"
DEFAULT_REVISION_HISTORY = 1


@dataclass(frozen=True, kw_only=True)
class Settings:
    clock: Clock
    backoff_base: datetime.timedelta = datetime.timedelta(hours=1)
    backoff_max: datetime.timedelta = datetime.timedelta(hours=32)


def failure_backoff(*, failures: int, settings: Settings) -> datetime.timedelta:
    """cert-manager's schedule: base, doubling per consecutive failure, capped."""
    delay = settings.backoff_base * (1 << min(16, max(0, failures - 1)))
    return min(delay, settings.backoff_max)


def issuer_key(certificate: Certificate) -> ObjectKey:
    ref = certificate.issuer_ref
    namespace = None if ref.kind == "ClusterIssuer" else certificate.namespace
    return ObjectKey(kind=ref.kind, namespace=namespace, name=ref.name)


def reconcile(*, store: Store, key: ObjectKey, settings: Settings) -> Result:
    obj = store.get(kind="Certificate", namespace=key.namespace, name=key.name)
    if obj is None:
        return Result.done()
    now = settings.clock()
    try:
        certificate = parsing.parse_certificate(obj, source=reconciling.manifest_source(obj))
    except InvalidObject as err:
        return _not_ready(store, obj, reason="BadConfig", message=err.detail, now=now)

    issuer_ref = issuer_key(certificate)
    issuer_obj = store.get(kind=issuer_ref.kind, namespace=issuer_ref.namespace,
                           name=issuer_ref.name)
    if issuer_obj is None:
        return _not_ready(store, obj, reason="IssuerNotFound",
                          message=f"{issuer_ref.kind} {issuer_ref.name} not found", now=now,
                          field="spec.issuerRef")
    try:
        issuer = parsing.parse_issuer(issuer_obj, source=reconciling.manifest_source(issuer_obj))
    except InvalidObject as err:
        return _not_ready(store, obj, reason="IssuerNotReady",
                          message=f"{issuer_ref.kind} {issuer_ref.name} is invalid: {err}",
                          now=now)

    secret = store.get(kind="Secret", namespace=certificate.namespace,
                       name=certificate.secret_name)
    issuing = conditions.get_condition((obj.get("status") or {}).get("conditions") or [],
                                       "Issuing")
    data = policies.read_input(
        certificate=certificate, secret=secret, now=now,
        renewal_requested=issuing is not None and issuing.get("status") == "True"
        and issuing.get("reason") == policies.MANUALLY_TRIGGERED)
    violation = policies.needs_issuing(data)
    if violation is None:
        return _up_to_date(store, obj, certificate=certificate, data=data, now=now)

    readiness = policies.needs_issuing(data, policies.READINESS_CHAIN)
    problem = _issuer_problem(issuer_obj=issuer_obj, issuer=issuer, certificate=certificate,
                              labels=obj["metadata"].get("labels") or {})
    if problem is not None:
        return _not_ready(store, obj, reason=problem[0], message=problem[1], now=now,
                          keep_ready=readiness is None)

    status = obj.get("status") or {}
    failures = int(status.get("failedIssuanceAttempts") or 0)
    if failures and status.get("lastFailureGeneration") != obj["metadata"].get("generation"):
        failures = 0  # a spec change deserves a fresh attempt, as in cert-manager
    if failures:
        retry_at = conditions.parse_time(status["lastFailureTime"]) + failure_backoff(
            failures=failures, settings=settings)
        if now < retry_at:
            return Result.after((retry_at - now).total_seconds())

    private_key = _next_private_key(store, obj, certificate=certificate, data=data)
    order_name = _order_name(certificate=certificate, obj=obj, private_key=private_key,
                             failures=failures)
    order = store.get(kind="Order", namespace=certificate.namespace, name=order_name)
    if order is None:
        _delete_unfinished_orders(store, obj, keep=order_name)
        request_pem = csr.build_csr(
            key=private_key,
            dns_names=certificate.dns_names,
            ip_addresses=certificate.ip_addresses,
            common_name=certificate.common_name,
            usages=certificate.usages,
        )
        order = _create_order(store, obj, certificate=certificate, name=order_name,
                              request_pem=request_pem)
        store.emit_event(obj=obj, type="Normal", reason="Requested",
                         message=f"Created new Order {order_name}: {violation.message}")

    order_status = order.get("status") or {}
    if order_status.get("state") == "valid" and order_status.get("certificate"):
        return _issue(store, obj, certificate=certificate, issuer=issuer,
                      private_key=private_key, order=order, now=now, failures=failures,
                      settings=settings)
    if order_status.get("state") in ("invalid", "errored"):
        return _failed(store, obj, message=order_status.get("reason") or "the ACME order failed",
                       order_name=order_name, failures=failures, now=now, settings=settings,
                       keep_ready=readiness is None)
    updated = reconciling.with_condition(obj, type="Issuing", status="True",
                                         reason=violation.reason, message=violation.message,
                                         now=now)
    if readiness is not None:
        updated = reconciling.with_condition(updated, type="Ready", status="False",
                                             reason=readiness.reason, message=readiness.message,
                                             now=now)
    updated["status"]["nextPrivateKeySecretName"] = _next_key_name(certificate)
    reconciling.write_status(store, obj=updated)
    return Result.done()  # the Order's progress re-triggers this reconciler


def _issuer_problem(
    *, issuer_obj: Object, issuer: Issuer, certificate: Certificate, labels: dict[str, str]
) -> tuple[str, str] | None:
    """Why issuing cannot start now, as (reason, message), or None."""
    issuer_status = issuer_obj.get("status") or {}
    ready = conditions.get_condition(issuer_status.get("conditions") or [], "Ready")
    if ready is None or ready.get("status") != "True":
        detail = f": {ready['message']}" if ready and ready.get("message") else ""
        return ("IssuerNotReady", f"{issuer.kind} {issuer.name} is not ready{detail}")
    if issuer.acme is None:
        return ("IssuerNotSupported",
                f"{issuer.kind} {issuer.name}: only ACME issuers can issue certificates yet")
    if certificate.ip_addresses:
        return ("BadConfig", "spec.ipAddresses: ACME HTTP-01 cannot validate IP addresses")
    for index, name in enumerate(certificate.dns_names):
        try:
            chosen = selection.select_solver(issuer=issuer.acme, dns_name=name, labels=labels)
        except selection.NoSolver as err:
            return ("BadConfig", f"spec.dnsNames[{index}]: {err}")
        provider = chosen.solver.dns01_provider
        if provider is not None:
            try:
                dns01_registry.find_factory(provider)
            except dns01_errors.Dns01Error as err:
                return ("BadConfig", f"spec.dnsNames[{index}]: {name}: {issuer.kind} "
                        f"{issuer.name} spec.acme.solvers[{chosen.index}].dns01: {err}")
    return None


def _next_key_name(certificate: Certificate) -> str:
    return f"{certificate.name}-next-private-key"


def _next_private_key(
    store: Store, obj: Object, *, certificate: Certificate, data: policies.Input
) -> keys.PrivateKey:
    """The key the pending issuance uses, kept in a Secret so restarts reuse it."""
    name = _next_key_name(certificate)
    existing = store.get(kind="Secret", namespace=certificate.namespace, name=name)
    wanted = certificate.private_key
    wanted_shape = policies.wanted_key_shape(wanted)
    if existing is not None:
        try:
            key = keys.load_private_key(base64.b64decode(existing["data"]["tls.key"]))
            if keys.describe_key(key) == wanted_shape:
                return key
        except (KeyError, ValueError, TypeError):
            logger.warning("%s: next private key Secret %s is unreadable; replacing it",
                           certificate.key, name)
    if (
        wanted.rotation_policy == "Never"
        and data.contents is not None
        and keys.describe_key(data.contents.key) == wanted_shape
    ):
        key = data.contents.key
    else:
        key = keys.generate_private_key(wanted)
    secret: Object = {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": name,
            "namespace": certificate.namespace,
            "labels": {NEXT_KEY_LABEL: "true", CERTIFICATE_NAME_LABEL: certificate.name},
            "ownerReferences": [reconciling.owner_reference(obj)],
        },
        "data": {"tls.key": base64.b64encode(keys.encode_private_key(
            key, encoding="PKCS8")).decode()},
    }
    if existing is None:
        store.create(obj=secret)
    else:
        secret["metadata"]["resourceVersion"] = existing["metadata"].get("resourceVersion")
        store.replace(obj=secret)
    return key


def _order_name(
    *, certificate: Certificate, obj: Object, private_key: keys.PrivateKey, failures: int
) -> str:
    """Deterministic: everything the order depends on, so a restart finds the same one."""
    status = obj.get("status") or {}
    material = json.dumps({
        "spec": obj.get("spec"),
        "key": hashlib.sha256(private_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo,
        )).hexdigest(),
        "revision": status.get("revision", 0),
        "failures": failures,
    }, sort_keys=True)
    digest = hashlib.sha256(material.encode()).hexdigest()[:10]
    revision = int(status.get("revision") or 0) + 1
    return f"{certificate.name[:200]}-{revision}-{digest}"


def _create_order(
    store: Store, obj: Object, *, certificate: Certificate, name: str, request_pem: bytes
) -> Object:
    order = {
        "apiVersion": "certctl.io/v1",
        "kind": "Order",
        "metadata": {
            "name": name,
            "namespace": certificate.namespace,
            "labels": {CERTIFICATE_NAME_LABEL: certificate.name},
            "ownerReferences": [reconciling.owner_reference(obj)],
        },
        "spec": {
            "request": base64.b64encode(request_pem).decode(),
            "issuerRef": {
                "name": certificate.issuer_ref.name,
                "kind": certificate.issuer_ref.kind,
                "group": certificate.issuer_ref.group,
            },
            "dnsNames": list(certificate.dns_names),
            "ipAddresses": list(certificate.ip_addresses),
            **({"commonName": certificate.common_name} if certificate.common_name else {}),
        },
    }
    try:
        return store.create(obj=order)
    except AlreadyExists:
        existing = store.get(kind="Order", namespace=certificate.namespace, name=name)
        assert existing is not None
        return existing


def _delete_unfinished_orders(store: Store, obj: Object, *, keep: str) -> None:
    """Orders for an older spec or key will never be used: drop them (and their challenges)."""
    for order in store.list(kind="Order", namespace=obj["metadata"]["namespace"]):
        if not reconciling.is_owned_by(order, obj) or order["metadata"]["name"] == keep:
            continue
        if (order.get("status") or {}).get("state") != "valid":
            store.delete(kind="Order", namespace=order["metadata"]["namespace"],
                         name=order["metadata"]["name"])


def _issue(
    store: Store,
    obj: Object,
    *,
    certificate: Certificate,
    issuer: Issuer,
    private_key: keys.PrivateKey,
    order: Object,
    now: datetime.datetime,
    failures: int,
    settings: Settings,
) -> Result:
    chain_pem = base64.b64decode(order["status"]["certificate"])
    key_pem = keys.encode_private_key(private_key, encoding=certificate.private_key.encoding)
    data = tls_secret.build_tls_secret_data(chain_pem=chain_pem, key_pem=key_pem, ca_pem=None)
    leaf = inspect.split_pem_chain(chain_pem)[0]
    if not inspect.key_matches_certificate(private_key, leaf):
        # Never publish a key pair that does not belong together; a new order follows.
        return _failed(store, obj, message="the issued certificate does not match the private "
                       "key of the request", order_name=order["metadata"]["name"],
                       failures=failures, now=now, settings=settings, keep_ready=False)
    secret = _write_secret(store, certificate=certificate, issuer=issuer, data=data,
                           info=inspect.certificate_info(leaf))
    store.delete(kind="Secret", namespace=certificate.namespace,
                 name=_next_key_name(certificate))
    fresh = store.get(kind="Certificate", namespace=certificate.namespace, name=certificate.name)
    if fresh is None:
        return Result.done()
    status = fresh.setdefault("status", {})
    status["revision"] = int(status.get("revision") or 0) + 1
    for stale in ("failedIssuanceAttempts", "lastFailureTime", "lastFailureGeneration",
                  "lastFailedOrder", "nextPrivateKeySecretName"):
        status.pop(stale, None)
    _prune_orders(store, fresh, certificate=certificate)
    store.emit_event(obj=fresh, type="Normal", reason="Issuing",
                     message="The certificate has been successfully issued")
    data_input = policies.read_input(certificate=certificate, secret=secret, now=now)
    return _up_to_date(store, fresh, certificate=certificate, data=data_input, now=now)


def _write_secret(
    store: Store,
    *,
    certificate: Certificate,
    issuer: Issuer,
    data: dict[str, str],
    info: inspect.CertificateInfo,
) -> Object:
    """Create or update the Secret; returns it as stored."""
    secret_annotations = {
        **dict(certificate.secret_template.annotations),
        annotation_keys.SECRET_CERTIFICATE_NAME: certificate.name,
        annotation_keys.SECRET_ISSUER_NAME: issuer.name,
        annotation_keys.SECRET_ISSUER_KIND: issuer.kind,
        annotation_keys.SECRET_ISSUER_GROUP: certificate.issuer_ref.group,
        annotation_keys.SECRET_COMMON_NAME: info.common_name or "",
        annotation_keys.SECRET_ALT_NAMES: ",".join(info.dns_names),
        annotation_keys.SECRET_IP_SANS: ",".join(info.ip_addresses),
        annotation_keys.SECRET_URI_SANS: "",
    }
    labels = {**dict(certificate.secret_template.labels),
              "controller.cert-manager.io/fao": "true"}
    existing = store.get(kind="Secret", namespace=certificate.namespace,
                         name=certificate.secret_name)
    if existing is None:
        secret: Object = {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "kubernetes.io/tls",
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
    existing.setdefault("metadata", {}).setdefault("annotations", {}).update(secret_annotations)
    existing["metadata"].setdefault("labels", {}).update(labels)
    existing_data = {k: v for k, v in (existing.get("data") or {}).items() if k != "ca.crt"}
    existing_data.update(data)
    existing["data"] = existing_data
    existing["type"] = "kubernetes.io/tls"
    return store.replace(obj=existing)


def _prune_orders(store: Store, obj: Object, *, certificate: Certificate) -> None:
    """Keep the newest `revisionHistoryLimit` orders (default 1), delete the rest."""
    limit = certificate.revision_history_limit or DEFAULT_REVISION_HISTORY
    owned = [o for o in store.list(kind="Order", namespace=certificate.namespace,
                                   labels={CERTIFICATE_NAME_LABEL: certificate.name})
             if reconciling.is_owned_by(o, obj)]
    owned.sort(key=lambda o: (o["metadata"].get("creationTimestamp") or "",
                              int(o["metadata"].get("resourceVersion") or 0)), reverse=True)
    for order in owned[limit:]:
        store.delete(kind="Order", namespace=certificate.namespace, name=order["metadata"]["name"])


def _failed(
    store: Store,
    obj: Object,
    *,
    message: str,
    order_name: str,
    failures: int,
    now: datetime.datetime,
    settings: Settings,
    keep_ready: bool,
) -> Result:
    """Count one failure per Order (reconciling a failed Order again adds none) and back off."""
    status = obj.setdefault("status", {})
    text = f"The certificate request has failed to complete and will be retried: {message}"
    if status.get("lastFailedOrder") != order_name:
        failures += 1
        status["failedIssuanceAttempts"] = failures
        status["lastFailureTime"] = conditions.format_time(now)
        status["lastFailureGeneration"] = obj["metadata"].get("generation")
        status["lastFailedOrder"] = order_name
        store.emit_event(obj=obj, type="Warning", reason="Failed", message=text)
    updated = reconciling.with_condition(obj, type="Issuing", status="False", reason="Failed",
                                         message=text, now=now)
    if not keep_ready:
        updated = reconciling.with_condition(updated, type="Ready", status="False",
                                             reason="Failed", message=text, now=now)
    reconciling.write_status(store, obj=updated)
    delay = failure_backoff(failures=int(status["failedIssuanceAttempts"]), settings=settings)
    return Result.after(delay.total_seconds())


def _up_to_date(
    store: Store,
    obj: Object,
    *,
    certificate: Certificate,
    data: policies.Input,
    now: datetime.datetime,
) -> Result:
    assert data.info is not None
    renewal_time = policies.renewal_time_of(certificate=certificate, info=data.info)
    updated = reconciling.with_condition(
        obj, type="Ready", status="True", reason="Ready",
        message="Certificate is up to date and has not expired", now=now)
    updated = reconciling.without_condition(updated, type="Issuing")
    status = updated["status"]
    status["notBefore"] = conditions.format_time(data.info.not_before)
    status["notAfter"] = conditions.format_time(data.info.not_after)
    status["renewalTime"] = conditions.format_time(renewal_time)
    status.pop("nextPrivateKeySecretName", None)
    reconciling.write_status(store, obj=updated)
    return Result.after((renewal_time - now).total_seconds())


def _not_ready(
    store: Store,
    obj: Object,
    *,
    reason: str,
    message: str,
    now: datetime.datetime,
    keep_ready: bool = False,
    field: str | None = None,
) -> Result:
    """Record why the Certificate cannot be issued; `field` prefixes the event, not the condition.

    The condition keeps cert-manager's wording (`Issuer x not found`), which
    users search for; the event and log line also say which field to fix.
    """
    updated = obj
    if not keep_ready:
        updated = reconciling.with_condition(updated, type="Ready", status="False",
                                             reason=reason, message=message, now=now)
    updated = reconciling.with_condition(updated, type="Issuing", status="False", reason=reason,
                                         message=message, now=now)
    if reconciling.write_status(store, obj=updated):
        store.emit_event(obj=obj, type="Warning", reason=reason,
                         message=f"{field}: {message}" if field else message)
    return Result.done()
