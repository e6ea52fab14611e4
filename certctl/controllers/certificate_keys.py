"""Which private key an issuance uses, and the CSR made with it.

rotationPolicy Never keeps the Secret's key when it has the wanted shape; else a
new one. For ACME the key waits for its order in the order ledger of the
Certificate's names (`order_budget.NextKey`), written with the order's record, so
a restart reuses the key the pending order's CSR was made with. When only
spec.privateKey.encoding changed, the Secret's key is re-encoded in place
(`reencode_key`): no issuance.
"""

from __future__ import annotations

import base64
import logging

from certctl.api.resources import Certificate, KeyEncoding
from certctl.controllers import order_budget, policies
from certctl.pki import csr, keys
from certctl.pki import secret as tls_secret
from certctl.store.interface import Object, Store

logger = logging.getLogger(__name__)


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


def next_private_key(
    *, ledger: Object | None, certificate: Certificate, data: policies.Input, revision: int,
) -> tuple[keys.PrivateKey, order_budget.NextKey | None]:
    """The key of the Certificate's next ACME issuance (after `revision`): the one its
    ledger keeps (`ledger`, as read this pass), or a new one, returned with what the
    ledger must keep of it (None: it does already) before the order is placed."""
    held_by = f"{certificate.namespace}/{certificate.name}"
    stored = order_budget.next_key(ledger, certificate=held_by, revision=revision)
    if stored is not None:
        try:
            key = keys.load_private_key(stored)
        except ValueError:
            logger.warning("%s: the next private key in Secret %s/%s is unreadable; "
                           "replacing it", certificate.key,
                           (ledger or {}).get("metadata", {}).get("namespace"),
                           (ledger or {}).get("metadata", {}).get("name"))
        else:
            if keys.describe_key(key) == policies.wanted_key_shape(certificate.private_key):
                return key, None
    key = key_for_issuance(certificate=certificate, data=data)
    return key, order_budget.NextKey(
        certificate=held_by, revision=revision,
        key_pem=keys.encode_private_key(key, encoding="PKCS8"))


def reencode_key(
    store: Store, *, secret: Object, key: keys.PrivateKey, encoding: KeyEncoding
) -> None:
    data = dict(secret.get("data") or {})
    data[tls_secret.TLS_PRIVATE_KEY_KEY] = base64.b64encode(
        keys.encode_private_key(key, encoding=encoding)).decode("ascii")
    secret["data"] = data
    store.replace(obj=secret)
