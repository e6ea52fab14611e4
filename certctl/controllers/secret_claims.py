"""Two Certificates naming one Secret: the older one writes it, the newer one stands down.

Left alone, two Certificates with one `spec.secretName` overwrite each other
for ever, each write making the other reissue (cert-manager issue #4846: tens
of thousands of orders an hour). certctl settles it without listing every
Certificate: the `cert-manager.io/certificate-name` annotation of the Secret
says which Certificate wrote it last. A Certificate finding the Secret
written by another one that still names it compares the two: the older
(creationTimestamp, then name) is the rightful writer, the newer one is
marked not Ready and issues nothing.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any

from certctl.api import annotations as annotation_keys
from certctl.api import conditions
from certctl.api.resources import Certificate
from certctl.store.interface import Object, Store

DUPLICATE_SECRET_NAME = "DuplicateSecretName"  # noqa: S105 - a reason, not a password


def writer_of(secret: Mapping[str, Any] | None) -> str | None:
    """The Certificate that wrote the Secret, per its annotation; None for a user's Secret."""
    if secret is None:
        return None
    name = ((secret.get("metadata") or {}).get("annotations") or {}).get(
        annotation_keys.SECRET_CERTIFICATE_NAME)
    return str(name) if name else None


def rival(*, store: Store, certificate: Certificate, secret: Mapping[str, Any] | None
          ) -> Object | None:
    """The other Certificate that wrote the Secret and still names it, if there is one."""
    writer = writer_of(secret)
    if writer is None or writer == certificate.name:
        return None
    other = store.get(kind="Certificate", namespace=certificate.namespace, name=writer)
    if other is None or (other.get("spec") or {}).get("secretName") != certificate.secret_name:
        return None  # the writer is gone or moved on: the Secret is free
    return other


def claim(*, store: Store, certificate: Certificate, secret: Object) -> Object:
    """Name `certificate` as the Secret's writer; returns the Secret as stored.

    Only the certificate-name annotation changes: the issuer annotations
    describe the certificate the Secret holds, which is still the old one.
    """
    secret.setdefault("metadata", {}).setdefault("annotations", {})[
        annotation_keys.SECRET_CERTIFICATE_NAME] = certificate.name
    return store.replace(obj=secret)


def is_newer(obj: Mapping[str, Any], *, than: Mapping[str, Any]) -> bool:
    """True when `obj` was created after `than` (by name when created the same second)."""
    return _age_key(obj) > _age_key(than)


def duplicate_message(*, secret_name: str, holder: Mapping[str, Any]) -> str:
    metadata = holder.get("metadata") or {}
    return (f"Secret {secret_name} is also the spec.secretName of Certificate "
            f"{metadata.get('namespace')}/{metadata.get('name')}, which is older "
            f"(created {metadata.get('creationTimestamp') or 'earlier'}) and keeps it; this "
            "Certificate issues nothing until one of them names another Secret")


def _age_key(obj: Mapping[str, Any]) -> tuple[datetime.datetime, str]:
    metadata = obj.get("metadata") or {}
    created = metadata.get("creationTimestamp")
    unknown = datetime.datetime.max.replace(tzinfo=datetime.UTC)  # no timestamp: newest
    if isinstance(created, datetime.datetime):  # a YAML manifest's unquoted timestamp
        when = created if created.tzinfo else created.replace(tzinfo=datetime.UTC)
    else:
        try:
            when = conditions.parse_time(str(created)) if created else unknown
        except ValueError:
            when = unknown
    return when, str(metadata.get("name"))
