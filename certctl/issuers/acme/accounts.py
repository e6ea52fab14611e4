"""ACME accounts: where an issuer's account key lives, and one client per account.

Every reconciler that talks to an ACME server goes through `AcmeAccounts`, so
all Orders and Challenges of an issuer share one client: one directory fetch,
one nonce pool, kept-alive connections.
"""

from __future__ import annotations

import base64
import hashlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from certctl.api import parsing
from certctl.api.errors import InvalidObject
from certctl.api.resources import AcmeIssuer, Issuer, IssuerSpec, PrivateKeySpec
from certctl.issuers.acme import client as acme_client
from certctl.issuers.acme import client_process
from certctl.pki import keys
from certctl.store.interface import AlreadyExists, Object, Store

DEFAULT_KEY_FIELD = "tls.key"


@dataclass(frozen=True, kw_only=True)
class AccountKeyRef:
    namespace: str
    name: str
    field: str


def account_key_ref(
    *, issuer: Issuer[AcmeIssuer], cluster_resource_namespace: str
) -> AccountKeyRef:
    """A ClusterIssuer's Secrets live in the cluster resource namespace, as in cert-manager."""
    ref = issuer.spec.private_key_secret_ref
    namespace = issuer.namespace or cluster_resource_namespace
    return AccountKeyRef(namespace=namespace, name=ref.name, field=ref.key or DEFAULT_KEY_FIELD)


def read_account_key(*, store: Store, ref: AccountKeyRef) -> bytes | None:
    secret = store.get(kind="Secret", namespace=ref.namespace, name=ref.name)
    if secret is None:
        return None
    encoded = (secret.get("data") or {}).get(ref.field)
    if not encoded:
        return None
    return base64.b64decode(encoded)


def ensure_account_key(*, store: Store, ref: AccountKeyRef) -> bytes:
    """The account key, generated (ECDSA P-256, signed ES256) and stored on first use."""
    existing = read_account_key(store=store, ref=ref)
    if existing is not None:
        return existing
    pem = keys.encode_private_key(
        keys.generate_private_key(PrivateKeySpec(algorithm="ECDSA", size=256)), encoding="PKCS8"
    )
    secret: Object = {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {"name": ref.name, "namespace": ref.namespace},
        "data": {ref.field: base64.b64encode(pem).decode()},
    }
    current = store.get(kind="Secret", namespace=ref.namespace, name=ref.name)
    try:
        if current is None:
            store.create(obj=secret)
        else:  # the Secret exists without the key field: add it, keep the rest
            current.setdefault("data", {})[ref.field] = secret["data"][ref.field]
            store.replace(obj=current)
    except AlreadyExists:
        raced = read_account_key(store=store, ref=ref)
        if raced is not None:
            return raced
        raise
    return pem


def external_account_key(
    *, store: Store, issuer: Issuer[AcmeIssuer], cluster_resource_namespace: str
) -> acme_client.ExternalAccountKey | None:
    """The issuer's EAB key ID and HMAC key, or None when it binds no external account.

    The HMAC key Secret lives beside the account key (the cluster resource
    namespace for a ClusterIssuer). Raises LookupError naming the Secret and
    field when either is missing; the key itself is never in a message.
    """
    binding = issuer.spec.external_account_binding
    if binding is None:
        return None
    ref = binding.key_secret_ref
    namespace = issuer.namespace or cluster_resource_namespace
    where = (f"{issuer.kind} {issuer.name} spec.acme.externalAccountBinding.keySecretRef: "
             f"Secret {namespace}/{ref.name}")
    if not ref.key:
        raise LookupError(f"{where}: keySecretRef.key is required (the field holding the "
                          "HMAC key)")
    secret = store.get(kind="Secret", namespace=namespace, name=ref.name)
    if secret is None:
        raise LookupError(f"{where} not found")
    encoded = (secret.get("data") or {}).get(ref.key)
    if not encoded:
        raise LookupError(f"{where} has no field {ref.key!r}")
    try:
        hmac_key = base64.b64decode(encoded).decode("ascii").strip()
    except (ValueError, UnicodeDecodeError) as err:
        raise LookupError(f"{where}: field {ref.key!r} is not base64 of the base64url "
                          "HMAC key") from err
    return acme_client.ExternalAccountKey(key_id=binding.key_id, hmac_key=hmac_key)


def acme_issuer(issuer: Issuer[IssuerSpec]) -> Issuer[AcmeIssuer] | None:
    """`issuer` typed as the ACME issuer it is, or None when it is of another type."""
    return cast(Issuer[AcmeIssuer], issuer) if isinstance(issuer.spec, AcmeIssuer) else None


def find_acme_issuer(
    *, store: Store, kind: str, name: str, namespace: str
) -> Issuer[AcmeIssuer] | None:
    """The ACME issuer an Order or Challenge refers to, or None if missing or invalid."""
    obj = store.get(kind=kind, namespace=None if kind == "ClusterIssuer" else namespace,
                    name=name)
    if obj is None:
        return None
    try:
        issuer = parsing.parse_issuer(obj)
    except InvalidObject:
        return None
    return acme_issuer(issuer)


class AcmeAccounts:
    """Caches one client per (server, account key, TLS settings): an `AcmeClient`, or
    with `process` one run by that helper process (`client_process`)."""

    def __init__(
        self,
        *,
        cluster_resource_namespace: str,
        component: str | None = None,
        on_response: Callable[[acme_client.AcmeExchange], None] | None = None,
        process: client_process.AcmeProcess | None = None,
    ) -> None:
        self.cluster_resource_namespace = cluster_resource_namespace
        self._component = component  # in the User-Agent of every ACME request
        self._on_response = on_response
        self._process = process
        self._lock = threading.Lock()
        self._clients: dict[tuple[str, str, str, bool], acme_client.AccountClient] = {}
        # Account keys as last read, until their Secret's next watch event
        # (`forget_account_key`): every Order and Challenge step needs its issuer's client,
        # and reading the key each time was 6 of the controller's 64 API reads per
        # certificate (bench B8). A key changes only when someone replaces the Secret.
        self._keys: dict[AccountKeyRef, bytes] = {}

    def client(self, *, store: Store, issuer: Issuer[AcmeIssuer]) -> acme_client.AccountClient:
        """The registered client for an issuer whose account key exists.

        Registers on first use in this process (registration is idempotent:
        an existing account is found by its key), binding the external account
        when the issuer has one. Raises LookupError when the key Secret (or the
        EAB Secret) is missing: the issuer reconciler has not run yet or the
        Secret was deleted.
        """
        ref = account_key_ref(issuer=issuer, cluster_resource_namespace=self.
                              cluster_resource_namespace)
        with self._lock:
            key_pem = self._keys.get(ref)
        if key_pem is None:
            key_pem = read_account_key(store=store, ref=ref)
            if key_pem is None:
                raise LookupError(f"ACME account key Secret {ref.namespace}/{ref.name} "
                                  f"(field {ref.field}) not found")
            with self._lock:
                self._keys[ref] = key_pem
        found = self.client_for_key(acme=issuer.spec, account_key_pem=key_pem)
        if found.account_uri is None:
            self._register(found, store=store, issuer=issuer)
        return found

    def expect_acme(self) -> None:
        """ACME requests will follow: start the helper process now, if there is one, so
        that the first of them does not wait for its start (B1: about 0.15 s)."""
        if self._process is not None:
            self._process.start()

    def forget_account_key(self, *, namespace: str, name: str) -> None:
        """A Secret changed or went: read its key again next time, if it holds one."""
        with self._lock:
            for ref in [ref for ref in self._keys
                        if ref.namespace == namespace and ref.name == name]:
                del self._keys[ref]

    def forget_account_keys(self) -> None:
        """Read every key again (a replica that starts leading saw no events meanwhile)."""
        with self._lock:
            self._keys.clear()

    def register_again(self, *, store: Store, issuer: Issuer[AcmeIssuer]) -> None:
        """Register the issuer's account anew.

        For after `AccountDoesNotExist`: the server forgot the account (a
        restarted or reset CA). Binds the external account again when the
        issuer has one. Several reconcilers racing here is harmless: the
        first creates the account, the others find it by its key.
        """
        self._register(self.client(store=store, issuer=issuer), store=store, issuer=issuer)

    def _register(
        self, found: acme_client.AccountClient, *, store: Store, issuer: Issuer[AcmeIssuer]
    ) -> None:
        found.register(email=issuer.spec.email, external_account=external_account_key(
            store=store, issuer=issuer, cluster_resource_namespace=self.cluster_resource_namespace))

    def client_for_key(
        self, *, acme: AcmeIssuer, account_key_pem: bytes
    ) -> acme_client.AccountClient:
        cache_key = (
            acme.server,
            hashlib.sha256(account_key_pem).hexdigest(),
            hashlib.sha256(acme.ca_bundle or b"").hexdigest(),
            acme.skip_tls_verify,
        )
        with self._lock:
            found = self._clients.get(cache_key)
            if found is None:
                found = (acme_client.AcmeClient if self._process is None
                         else self._process.client)(
                    directory_url=acme.server,
                    account_key_pem=account_key_pem,
                    ca_bundle_pem=acme.ca_bundle,
                    skip_tls_verify=acme.skip_tls_verify,
                    component=self._component,
                    on_response=self._on_response,
                )
                self._clients[cache_key] = found
            return found

    def close(self) -> None:
        """Close every client's connections, then the helper process if there is one."""
        if self._process is not None:
            self._process.close()  # its clients' connections go with it
            return
        with self._lock:
            clients = list(self._clients.values())
        for found in clients:
            found.close()
