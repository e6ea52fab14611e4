"""ingress-shim: one Certificate per `spec.tls` entry of an annotated Ingress.

Behaves like cert-manager's ingress-shim: the Certificate is named after the
entry's secretName, owned by the Ingress (so it goes when the Ingress goes),
updated when the Ingress changes and deleted when the annotation or the tls
entry is removed. A Certificate of the same name that the Ingress does not
own is left alone and reported, never overwritten.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from certctl.api import annotations as annotation_keys
from certctl.api import names, parsing
from certctl.api.errors import InvalidObject
from certctl.api.resources import GROUP, Ingress, IssuerKind, ObjectKey
from certctl.controllers import reconciling
from certctl.controllers.reconciling import Result
from certctl.store.interface import AlreadyExists, Object, Store

logger = logging.getLogger(__name__)

INGRESS_NAME_LABEL = "certctl.io/ingress-name"

# (annotation, kind it selects), in the order they are honoured.
_ISSUER_ANNOTATIONS: tuple[tuple[str, IssuerKind], ...] = (
    (annotation_keys.CLUSTER_ISSUER, "ClusterIssuer"),
    (annotation_keys.ISSUER, "Issuer"),
    (annotation_keys.CM_CLUSTER_ISSUER, "ClusterIssuer"),
    (annotation_keys.CM_ISSUER, "Issuer"),
)

# Ingress annotation -> Certificate spec path it sets.
_SPEC_ANNOTATIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (annotation_keys.CM_COMMON_NAME, ("commonName",)),
    (annotation_keys.CM_DURATION, ("duration",)),
    (annotation_keys.CM_RENEW_BEFORE, ("renewBefore",)),
    (annotation_keys.CM_PRIVATE_KEY_ALGORITHM, ("privateKey", "algorithm")),
    (annotation_keys.CM_PRIVATE_KEY_ENCODING, ("privateKey", "encoding")),
    (annotation_keys.CM_PRIVATE_KEY_ROTATION_POLICY, ("privateKey", "rotationPolicy")),
    (annotation_keys.CM_REVISION_HISTORY_LIMIT, ("revisionHistoryLimit",)),
    (annotation_keys.CM_PRIVATE_KEY_SIZE, ("privateKey", "size")),
    (annotation_keys.CM_USAGES, ("usages",)),  # comma-separated
    (annotation_keys.ACME_PROFILE, ("acme", "profile")),
    (annotation_keys.FALLBACK_ISSUERS, ("fallbackIssuerRefs",)),
    (annotation_keys.FALLBACK_AFTER_FAILED_ATTEMPTS, ("fallbackAfterFailedAttempts",)),
)
_INTEGER_PATHS = frozenset({("revisionHistoryLimit",), ("privateKey", "size"),
                            ("fallbackAfterFailedAttempts",)})
COMMON_NAME_TOO_LONG = "CommonNameTooLong"
UNKNOWN_FIELD = "UnknownField"


class ShimSource(Protocol):
    """What the shims read of an annotated object: an Ingress, or a Gateway
    (`controllers.gateway_shim`, which shares the annotation handling here)."""

    @property
    def namespace(self) -> str: ...

    @property
    def name(self) -> str: ...

    @property
    def key(self) -> ObjectKey: ...

    def annotation(self, name: str) -> str | None: ...


@dataclass(frozen=True, kw_only=True)
class IssuerSelection:
    name: str
    kind: IssuerKind
    group: str


def select_issuer(ingress: ShimSource) -> IssuerSelection | None:
    """The issuer the Ingress asks for, or None when it is not annotated for certctl."""
    for annotation, kind in _ISSUER_ANNOTATIONS:
        name = ingress.annotation(annotation)
        if name:
            explicit_kind = _first_annotation(ingress, annotation_keys.ISSUER_KIND_KEYS)
            group = _first_annotation(ingress, annotation_keys.ISSUER_GROUP_KEYS)
            chosen_kind: IssuerKind = kind
            if kind == "Issuer" and explicit_kind == "ClusterIssuer":
                chosen_kind = "ClusterIssuer"
            return IssuerSelection(name=name, kind=chosen_kind, group=group or GROUP)
    return None


def _first_annotation(ingress: ShimSource, keys: tuple[str, ...]) -> str | None:
    for key in keys:
        value = ingress.annotation(key)
        if value:
            return value
    return None


@dataclass(frozen=True, kw_only=True)
class Desired:
    """What an Ingress asks for: its Certificates, the entries refused, and notices.

    A notice explains an adjustment made instead of a refusal (a common name
    too long for a subject, kept in the SAN only); it becomes a Warning event.
    """

    certificates: list[Object]
    problems: list[InvalidObject]
    notices: list[str]


def desired_certificates(*, ingress: Ingress, ingress_obj: Mapping[str, Any]) -> Desired:
    """The Certificates an Ingress asks for, and the tls entries that are invalid.

    Invalid entries do not stop the valid ones: one bad host must not take
    down the certificates of its neighbours. Hosts that are IP addresses go
    to `ipAddresses`, the others to `dnsNames`, as cert-manager's ingress-shim
    does; whether the issuer can certify them is the Certificate's business.
    """
    issuer = select_issuer(ingress)
    if issuer is None:
        return Desired(certificates=[], problems=[], notices=[])
    problems: list[InvalidObject] = []
    notices: list[str] = []
    wanted: dict[str, Object] = {}
    source = reconciling.manifest_source(ingress_obj)
    try:
        annotation_fields = spec_annotation_fields(ingress, source)
        san_only_name = long_common_name(ingress, source)
    except InvalidObject as err:
        return Desired(certificates=[], problems=[err], notices=[])
    if san_only_name is not None:
        notices.append(
            f"metadata.annotations[{annotation_keys.CM_COMMON_NAME}]: {san_only_name!r} is "
            f"{len(san_only_name)} characters, more than the {names.MAX_COMMON_NAME_LENGTH} a "
            "certificate subject may hold: it is left out of the subject and kept in the "
            "SAN (spec.dnsNames), which is what clients check")
    for index, tls in enumerate(ingress.tls):
        field = f"spec.tls[{index}]"
        if not tls.secret_name:
            problems.append(_invalid(ingress, f"{field}.secretName", "required to issue a "
                                     "certificate", source))
            continue
        if not tls.hosts:
            problems.append(_invalid(ingress, f"{field}.hosts", "at least one host is required "
                                     "to issue a certificate", source))
            continue
        dns_names = [h for h in tls.hosts if not names.is_ip_address(h)]
        ip_addresses = [h for h in tls.hosts if names.is_ip_address(h)]
        if san_only_name is not None and san_only_name not in dns_names:
            dns_names.append(san_only_name)
        spec: dict[str, Any] = {
            "secretName": tls.secret_name,
            "dnsNames": dns_names,
            "issuerRef": {"name": issuer.name, "kind": issuer.kind, "group": issuer.group},
            "usages": ["digital signature", "key encipherment"],
        }
        if ip_addresses:
            spec["ipAddresses"] = ip_addresses
        for path, value in annotation_fields:
            set_path(spec, path, value)
        certificate: Object = {
            "apiVersion": "certctl.io/v1",
            "kind": "Certificate",
            "metadata": {
                "name": tls.secret_name,
                "namespace": ingress.namespace,
                "labels": _owner_labels(ingress),
                "ownerReferences": [reconciling.owner_reference(ingress_obj)],
            },
            "spec": spec,
        }
        if source:
            certificate["metadata"]["annotations"] = {annotation_keys.MANIFEST_SOURCE: source}
        if tls.secret_name in wanted:
            # Two entries for one Secret: merge hosts like cert-manager does.
            merged_spec = wanted[tls.secret_name]["spec"]
            merged = merged_spec["dnsNames"]
            merged.extend(h for h in dns_names if h not in merged)
            if ip_addresses:
                merged_ips = merged_spec.setdefault("ipAddresses", [])
                merged_ips.extend(ip for ip in ip_addresses if ip not in merged_ips)
            continue
        try:
            parsing.parse_certificate(certificate, source=source)
        except InvalidObject as err:
            problems.append(_invalid(ingress, f"{field} ({err.field})", err.message, source))
            continue
        wanted[tls.secret_name] = certificate
    return Desired(certificates=list(wanted.values()), problems=problems, notices=notices)


def spec_annotation_fields(
    ingress: ShimSource, source: str | None
) -> list[tuple[tuple[str, ...], Any]]:
    """(spec path, value) set through annotations, the same for every tls entry."""
    fields: list[tuple[tuple[str, ...], Any]] = []
    for annotation, path in _SPEC_ANNOTATIONS:
        value: Any = ingress.annotation(annotation)
        if value is None:
            continue
        if path == ("commonName",) and len(value) > names.MAX_COMMON_NAME_LENGTH:
            continue  # SAN only: see long_common_name
        if path in _INTEGER_PATHS:
            value = _int_annotation(ingress, annotation, value, source)
        elif path == ("usages",):
            value = [u.strip() for u in value.split(",") if u.strip()]
        elif path == ("fallbackIssuerRefs",):
            value = _fallback_issuers(ingress, value, source)
        fields.append((path, value))
    return fields


def _fallback_issuers(ingress: ShimSource, value: str, source: str | None) -> list[Any]:
    """`ClusterIssuer/b,Issuer/c` as issuerRefs; a bare name has the first choice's kind."""
    first = select_issuer(ingress)
    refs: list[Any] = []
    for item in (part.strip() for part in value.split(",")):
        if not item:
            continue
        kind, _, name = item.rpartition("/")
        if kind not in ("", "ClusterIssuer", "Issuer") or not name:
            raise _invalid(
                ingress, f"metadata.annotations[{annotation_keys.FALLBACK_ISSUERS}]",
                f"{item!r} is not an issuer: write ClusterIssuer/NAME or Issuer/NAME (or NAME, "
                "of the kind of the first choice), comma-separated", source)
        refs.append({"name": name, "kind": kind or (first.kind if first else "Issuer"),
                     "group": first.group if first else GROUP})
    return refs


def long_common_name(ingress: ShimSource, source: str | None) -> str | None:
    """The common-name annotation when too long for a subject, as the DNS name it must be.

    X.509 bounds a subject CN at 64 characters; cert-manager's webhook (and
    the Certificate CRD) refuse a longer `spec.commonName`. A name this long
    can still be certified in the SAN, where clients look anyway, so the
    shim keeps it there instead of writing a Certificate that cannot exist.
    """
    value = ingress.annotation(annotation_keys.CM_COMMON_NAME)
    if value is None or len(value) <= names.MAX_COMMON_NAME_LENGTH:
        return None
    try:
        return names.normalize_dns_name(value, allow_wildcard=True)
    except ValueError as err:
        raise _invalid(
            ingress, f"metadata.annotations[{annotation_keys.CM_COMMON_NAME}]",
            f"is {len(value)} characters, more than the {names.MAX_COMMON_NAME_LENGTH} a "
            "certificate subject may hold, and not a DNS name that could go in the SAN "
            f"instead: {err}",
            source) from err


def reconcile(*, store: Store, key: ObjectKey) -> Result:
    ingress_obj = store.get(kind="Ingress", namespace=key.namespace, name=key.name)
    if ingress_obj is None:
        return Result.done()  # owned Certificates go with it (ownerReferences)
    for unknown in parsing.unknown_ingress_fields(ingress_obj):
        store.emit_event(obj=ingress_obj, type="Warning", reason=UNKNOWN_FIELD, message=unknown)
    try:
        ingress = parsing.parse_ingress(ingress_obj,
                                        source=reconciling.manifest_source(ingress_obj))
    except InvalidObject as err:
        store.emit_event(obj=ingress_obj, type="Warning", reason="BadConfig", message=err.detail)
        return Result.done()
    desired = desired_certificates(ingress=ingress, ingress_obj=ingress_obj)
    wanted = desired.certificates
    for problem in desired.problems:
        store.emit_event(obj=ingress_obj, type="Warning", reason="BadConfig",
                         message=problem.detail)
    for notice in desired.notices:
        store.emit_event(obj=ingress_obj, type="Warning", reason=COMMON_NAME_TOO_LONG,
                         message=notice)
    wanted_names = {c["metadata"]["name"] for c in wanted}
    for certificate in wanted:
        apply_certificate(store=store, ingress_obj=ingress_obj, certificate=certificate)
    # By label, so an Ingress costs its own Certificates, not all of its namespace's.
    for existing in store.list(kind="Certificate", namespace=ingress.namespace,
                               labels=_owner_labels(ingress) or None):
        if (
            reconciling.is_owned_by(existing, ingress_obj)
            and existing["metadata"]["name"] not in wanted_names
        ):
            store.delete(kind="Certificate", namespace=ingress.namespace,
                         name=existing["metadata"]["name"])
            store.emit_event(obj=ingress_obj, type="Normal", reason="DeletedCertificate",
                             message=f"Deleted Certificate {existing['metadata']['name']}: "
                             "no longer requested by this Ingress")
    return Result.done()


def apply_certificate(*, store: Store, ingress_obj: Object, certificate: Object) -> None:
    """Create or update one Certificate the object (an Ingress, a Gateway) owns."""
    name = certificate["metadata"]["name"]
    namespace = certificate["metadata"]["namespace"]
    existing = store.get(kind="Certificate", namespace=namespace, name=name)
    if existing is None:
        try:
            store.create(obj=certificate)
        except AlreadyExists:
            return  # created concurrently; the next event reconciles it
        store.emit_event(obj=ingress_obj, type="Normal", reason="CreateCertificate",
                         message=f"Successfully created Certificate {name}")
        return
    if not reconciling.is_owned_by(existing, ingress_obj):
        store.emit_event(
            obj=ingress_obj, type="Warning", reason="BadConfig",
            message=f"Certificate {name} already exists and is not owned by this "
            f"{ingress_obj.get('kind', 'Ingress')}; "
            "leaving it alone",
        )
        return
    labels = existing["metadata"].get("labels") or {}
    wanted_labels = {**labels, **certificate["metadata"].get("labels", {})}
    if existing.get("spec") == certificate["spec"] and labels == wanted_labels:
        return
    updated = dict(existing)
    updated["spec"] = certificate["spec"]
    updated["metadata"] = dict(existing["metadata"], labels=wanted_labels)
    store.replace(obj=updated)
    store.emit_event(obj=ingress_obj, type="Normal", reason="UpdateCertificate",
                     message=f"Successfully updated Certificate {name}")


def _owner_labels(ingress: Ingress) -> dict[str, str]:
    """Marks the Certificates an Ingress owns, so they are listed by label. A label value
    holds at most 63 characters: a longer Ingress name goes unlabelled, and its
    Certificates are then found by ownerReference in a list of the whole namespace."""
    if len(ingress.name) > 63:
        return {}
    return {INGRESS_NAME_LABEL: ingress.name}


def _invalid(ingress: ShimSource, field: str, message: str,
             source: str | None) -> InvalidObject:
    return InvalidObject(kind=ingress.key.kind, namespace=ingress.namespace, name=ingress.name,
                         field=field, message=message, source=source)


def _int_annotation(ingress: ShimSource, annotation: str, value: str, source: str | None) -> int:
    try:
        return int(value)
    except ValueError as err:
        raise _invalid(ingress, f"metadata.annotations[{annotation}]",
                       f"must be a whole number, got {value!r}", source) from err


def set_path(target: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for part in path[:-1]:
        target = target.setdefault(part, {})
    target[path[-1]] = value
