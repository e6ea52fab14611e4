"""Which private key an issuance uses, and the CSR made with it.

rotationPolicy Never keeps the Secret's key when it has the wanted shape; else a
new one. For ACME the key waits for its order in a "next private key" Secret
owned by the Certificate, so a restart reuses the key the pending order's CSR was
made with. When only spec.privateKey.encoding changed, the Secret's key is
re-encoded in place (`reencode_key`): no issuance.
"""

from __future__ import annotations

import base64
import logging

from certctl.api.resources import Certificate, KeyEncoding
from certctl.controllers import certificate_orders, policies, reconciling
from certctl.pki import csr, keys
from certctl.pki import secret as tls_secret
from certctl.store.interface import AlreadyExists, Object, Store

logger = logging.getLogger(__name__)

NEXT_KEY_LABEL = "certctl.io/next-private-key"


def key_for_issuance(*, certificate: Certificate, data: policies.Input) -> keys.PrivateKey:
    """rotationPolicy Never reuses the Secret's key when it has the wanted shape; else a new one."""
    wanted = certificate.private_key
    if (
        wanted.rotation_policy == "Never"
        and data.contents is not None
        and keys.describe_key(data.contents.key) == policies.wanted_key_shape(wanted)
    ):
        return data.contents.key
    return keys.generate_private_key(wanted)


def signing_request(*, certificate: Certificate, key: keys.PrivateKey) -> bytes:
    """The CSR of an issuance: the Certificate's names and usages, signed with `key`."""
    return csr.build_csr(
        key=key,
        dns_names=certificate.dns_names,
        ip_addresses=certificate.ip_addresses,
        common_name=certificate.common_name,
        usages=certificate.usages,
    )


def next_key_name(certificate: Certificate) -> str:
    return f"{certificate.name}-next-private-key"


def next_private_key(
    store: Store, obj: Object, *, certificate: Certificate, data: policies.Input,
    placed: bool,
) -> keys.PrivateKey:
    """The key the pending ACME issuance uses, kept in a Secret so restarts reuse it.

    The Certificate's status names that Secret from the pass that placed the order on
    (`status.nextPrivateKeySecretName`), or this process knows it `placed` the order (an
    issuance not told of yet); before, there is none to read, unless a pass stopped
    between creating it and writing the status: the create meets it then."""
    name = next_key_name(certificate)
    named = placed or (obj.get("status") or {}).get("nextPrivateKeySecretName") == name
    existing = store.get(kind="Secret", namespace=certificate.namespace,
                         name=name) if named else None
    stored = _stored_key(existing, certificate=certificate)
    if stored is not None:
        return stored
    key = key_for_issuance(certificate=certificate, data=data)
    secret: Object = {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": name,
            "namespace": certificate.namespace,
            "labels": {NEXT_KEY_LABEL: "true",
                       certificate_orders.CERTIFICATE_NAME_LABEL: certificate.name},
            "ownerReferences": [reconciling.owner_reference(obj)],
        },
        "data": {"tls.key": base64.b64encode(keys.encode_private_key(
            key, encoding="PKCS8")).decode()},
    }
    if existing is None:
        try:
            store.create(obj=secret)
            return key
        except AlreadyExists:
            existing = store.get(kind="Secret", namespace=certificate.namespace, name=name)
            if existing is None:
                raise
            stored = _stored_key(existing, certificate=certificate)
            if stored is not None:
                return stored
    secret["metadata"]["resourceVersion"] = existing["metadata"].get("resourceVersion")
    store.replace(obj=secret)
    return key


def _stored_key(secret: Object | None, *, certificate: Certificate) -> keys.PrivateKey | None:
    """The next private key `secret` holds, if it has the shape the Certificate wants."""
    if secret is None:
        return None
    try:
        key = keys.load_private_key(base64.b64decode(secret["data"]["tls.key"]))
    except (KeyError, ValueError, TypeError):
        logger.warning("%s: next private key Secret %s is unreadable; replacing it",
                       certificate.key, secret["metadata"].get("name"))
        return None
    return key if keys.describe_key(key) == policies.wanted_key_shape(
        certificate.private_key) else None


def reencode_key(
    store: Store, *, secret: Object, key: keys.PrivateKey, encoding: KeyEncoding
) -> None:
    data = dict(secret.get("data") or {})
    data[tls_secret.TLS_PRIVATE_KEY_KEY] = base64.b64encode(
        keys.encode_private_key(key, encoding=encoding)).decode("ascii")
    secret["data"] = data
    store.replace(obj=secret)
