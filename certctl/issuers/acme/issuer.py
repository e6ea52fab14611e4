"""The acme issuer type (`issuers.protocol.IssuerType`): an ACME account, and orders placed with it.

- readiness: the account is registered (its key generated on first use and
  kept in the Secret named by `privateKeySecretRef`, for a ClusterIssuer in
  the cluster resource namespace, so the account survives restarts and moves
  with the Secret); an `externalAccountBinding` binds it with the key ID and
  HMAC key from its Secret; a `profile` the server does not offer is a
  configuration error, reported here rather than on every order.
- refusal: what no ACME CA would issue, or certctl cannot prove, fails before
  an order is spent on it.
- issue: nothing is signed here: the CSR becomes an Order (`controllers.orders`
  follows it through authorizations, challenges and finalization).
"""

from __future__ import annotations

import base64
import datetime
from collections.abc import Mapping, Sequence
from typing import Any

from certctl.api.resources import AcmeIssuer, Certificate, Issuer, IssuerSpec
from certctl.issuers import protocol
from certctl.issuers.acme import accounts, errors
from certctl.pki import keys
from certctl.solvers import registry as solver_registry
from certctl.solvers import selection
from certctl.store.interface import Store

secret_paths: Sequence[tuple[str, ...]] = (
    ("spec", "acme", "privateKeySecretRef", "name"),
    ("spec", "acme", "externalAccountBinding", "keySecretRef", "name"),
)

# Let's Encrypt's limit of names in one certificate (most ACME CAs have the same or a
# lower one). Pebble has none, so certctl refuses before ordering rather than learning
# it from a production CA's rejected order.
MAX_NAMES = 100

_NOT_REGISTERED = "ErrRegisterACMEAccount"


def order_server(issuer: Issuer[IssuerSpec]) -> str:
    return _typed(issuer).spec.server


def readiness(
    *, store: Store, issuer: Issuer[IssuerSpec], now: datetime.datetime,
    env: protocol.Environment,
) -> protocol.Readiness:
    acme = _typed(issuer)
    if env.accounts is None:
        return protocol.Readiness(ready=False, reason=_NOT_REGISTERED,
                                  message="this process has no ACME client to register with")
    ref = accounts.account_key_ref(issuer=acme,
                                   cluster_resource_namespace=env.cluster_resource_namespace)
    key_pem = accounts.ensure_account_key(store=store, ref=ref)
    try:
        keys.load_private_key(key_pem)
    except ValueError as err:
        # Someone else's bytes in the Secret: name it and the field, never quote them.
        return protocol.Readiness(
            ready=False, reason=_NOT_REGISTERED, retry=True,
            message=f"Failed to register ACME account: Secret {ref.namespace}/{ref.name} key "
            f"{ref.field!r}: {err}")
    try:
        client = env.accounts.client_for_key(acme=acme.spec, account_key_pem=key_pem)
        external_account = accounts.external_account_key(
            store=store, issuer=acme, cluster_resource_namespace=env.cluster_resource_namespace)
        uri = client.register(email=acme.spec.email, external_account=external_account)
        offered = client.profiles()
    except (errors.AcmeError, LookupError) as err:
        return protocol.Readiness(ready=False, reason=_NOT_REGISTERED, retry=True,
                                  message=f"Failed to register ACME account: {err}")
    status = {"acme": {"uri": uri, "lastRegisteredEmail": acme.spec.email or ""}}
    profile = acme.spec.profile
    if profile is not None and profile not in offered:
        return protocol.Readiness(ready=False, reason="BadConfig", status=status,
                                  message=_profile_missing(acme.spec, profile, offered))
    return protocol.Readiness(
        ready=True, reason="ACMEAccountRegistered", status=status,
        message="The ACME account was registered with the ACME server")


def refuse(
    *, store: Store, issuer: Issuer[IssuerSpec], certificate: Certificate,
    labels: Mapping[str, str], env: protocol.Environment,
) -> None:
    """Raises `protocol.Refused`, or `errors.AcmeError` when the CA cannot be asked which
    profiles it offers."""
    acme = _typed(issuer)
    if certificate.private_key.algorithm == "Ed25519":
        raise protocol.Refused(
            "spec.privateKey.algorithm: ACME CAs do not issue certificates for Ed25519 keys "
            "(the CA/Browser Forum rules allow only RSA and ECDSA, and Let's Encrypt refuses "
            "them); use ECDSA or RSA, or a selfSigned or ca issuer")
    if certificate.ip_addresses:
        # Pebble offers http-01 (and tls-alpn-01) for IP identifiers, and Let's Encrypt
        # issues IP certificates under its short-lived profile since 2025; but DNS-01
        # cannot prove an IP (RFC 8738) and certctl routes HTTP-01 challenges by host
        # name through a solver Ingress, whose rules cannot hold an IP address.
        raise protocol.Refused(
            f"spec.ipAddresses[0]: {certificate.ip_addresses[0]}: {issuer.kind} {issuer.name} "
            "is an ACME issuer, and certctl does not order IP address certificates over ACME "
            "(DNS-01 cannot prove an IP address and certctl answers HTTP-01 by host name); "
            "use a selfSigned or ca issuer for IP addresses, or a DNS name")
    count = len({*certificate.dns_names, *certificate.ip_addresses,
                 *([certificate.common_name] if certificate.common_name else [])})
    if count > MAX_NAMES:
        raise protocol.Refused(
            f"spec.dnsNames: {count} names, more than the {MAX_NAMES} Let's Encrypt allows in "
            "one certificate; split them over several Certificates (for an Ingress: several "
            "spec.tls entries, each with its own secretName)")
    for index, name in enumerate(certificate.dns_names):
        try:
            chosen = selection.select_solver(issuer=acme.spec, dns_name=name, labels=labels)
        except selection.NoSolver as err:
            raise protocol.Refused(f"spec.dnsNames[{index}]: {err}") from err
        problem = solver_registry.solver_type(chosen.solver.config).configuration_problem(
            chosen.solver.config)
        if problem is not None:
            raise protocol.Refused(
                f"spec.dnsNames[{index}]: {name}: {issuer.kind} {issuer.name} "
                f"spec.acme.solvers[{chosen.index}].{problem}")
    _refuse_missing_profile(store=store, issuer=acme, certificate=certificate, env=env)


def issue(
    *, store: Store, issuer: Issuer[IssuerSpec], request: protocol.Request,
    env: protocol.Environment,
) -> protocol.Ordered:
    """The Order's spec: the CSR, and what the order reconciler needs besides the issuer."""
    certificate = request.certificate
    spec: dict[str, Any] = {
        "request": base64.b64encode(request.csr_pem).decode(),
        "issuerRef": {
            "name": certificate.issuer_ref.name,
            "kind": certificate.issuer_ref.kind,
            "group": certificate.issuer_ref.group,
        },
        "dnsNames": list(certificate.dns_names),
        "ipAddresses": list(certificate.ip_addresses),
        **({"commonName": certificate.common_name} if certificate.common_name else {}),
        **({"profile": certificate.acme_profile} if certificate.acme_profile else {}),
        **({"replaces": request.replaces} if request.replaces else {}),
    }
    return protocol.Ordered(spec=spec)


def _refuse_missing_profile(
    *, store: Store, issuer: Issuer[AcmeIssuer], certificate: Certificate,
    env: protocol.Environment,
) -> None:
    """spec.acme.profile names a profile the CA's directory does not offer.

    Checked before ordering, against the directory the issuer's client has
    already fetched, so the condition names the field to fix instead of an
    Order failing. Without `env.accounts` the CA's answer has to do.
    """
    profile = certificate.acme_profile
    if profile is None or env.accounts is None:
        return
    try:
        offered = env.accounts.client(store=store, issuer=issuer).profiles()
    except (errors.AcmeError, LookupError) as err:
        raise errors.AcmeError(
            f"{certificate.key}: cannot read the profiles of {issuer.spec.server}: {err}"
        ) from err
    if profile not in offered:
        raise protocol.Refused(_profile_missing(issuer.spec, profile, offered))


def _profile_missing(acme: AcmeIssuer, profile: str, offered: Mapping[str, str]) -> str:
    return (f"spec.acme.profile: ACME server {acme.server} does not offer profile {profile!r} "
            f"(offers: {', '.join(sorted(offered)) or 'none'})")


def _typed(issuer: Issuer[IssuerSpec]) -> Issuer[AcmeIssuer]:
    """The registry hands this module ACME issuers only."""
    acme = accounts.acme_issuer(issuer)
    if acme is None:
        raise TypeError(f"{issuer.kind} {issuer.name} is not an ACME issuer")
    return acme
