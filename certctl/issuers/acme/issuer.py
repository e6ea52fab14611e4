"""The acme issuer type (`issuers.protocol.IssuerType`): an ACME account, and orders placed with it.

- readiness: the account is registered (its key generated on first use and
  kept in the Secret named by `privateKeySecretRef`, for a ClusterIssuer in
  the cluster resource namespace, so the account survives restarts and moves
  with the Secret); an `externalAccountBinding` binds it with the key ID and
  HMAC key from its Secret; a `profile` the server does not offer is a
  configuration error, reported here rather than on every order.
- refusal: what no ACME CA would issue, or certctl cannot prove, fails before
  an order is spent on it. IP addresses (RFC 8738) are ordered as `ip`
  identifiers, proven by HTTP-01 at the address, without a common name, and
  under `shortlived` when the CA offers it (Let's Encrypt issues them only so).
- issue: nothing is signed here: the CSR becomes an Order (`controllers.orders`
  follows it through authorizations, challenges and finalization).
"""

from __future__ import annotations

import base64
import datetime
from collections.abc import Mapping, Sequence
from typing import Any

from certctl.api import annotations as annotation_keys
from certctl.api import names
from certctl.api.resources import AcmeIssuer, Certificate, Issuer, IssuerSpec
from certctl.api.status import AcmeAccountStatus
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
# Let's Encrypt's profile of 6-day certificates, the only one it issues IP addresses under.
SHORT_LIVED = "shortlived"

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
    account = AcmeAccountStatus(uri=uri, last_registered_email=acme.spec.email or "")
    profile = acme.spec.profile
    if profile is not None and profile not in offered:
        return protocol.Readiness(ready=False, reason="BadConfig", acme=account,
                                  message=_profile_missing(acme.spec, profile, offered))
    return protocol.Readiness(
        ready=True, reason="ACMEAccountRegistered", acme=account,
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
    if certificate.common_name is not None and names.is_ip_address(certificate.common_name):
        # acme's CSR reader orders a CN as a DNS identifier, which no CA accepts for an
        # address, and Let's Encrypt's IP certificates carry no common name at all.
        raise protocol.Refused(
            f"spec.commonName: {certificate.common_name} is an IP address; an ACME "
            "certificate for an address has no common name: leave commonName out and list "
            "the address in spec.ipAddresses")
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
    for index, address in enumerate(certificate.ip_addresses):
        _refuse_unprovable_address(issuer=acme, address=address, index=index, labels=labels)
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


def _refuse_unprovable_address(
    *, issuer: Issuer[AcmeIssuer], address: str, index: int, labels: Mapping[str, str]
) -> None:
    """The solver the order will pick for `address` must be able to prove it.

    RFC 8738: an IP identifier is proven by HTTP-01 (the CA connects to the
    address itself, and our data plane answers there) or TLS-ALPN-01, never
    DNS-01 (no DNS name to put a TXT record under).
    """
    try:
        chosen = selection.select_solver(issuer=issuer.spec, dns_name=address, labels=labels)
    except selection.NoSolver as err:
        raise protocol.Refused(f"spec.ipAddresses[{index}]: {err}") from err
    if solver_registry.solver_type(chosen.solver.config).challenge_type == "DNS-01":
        raise protocol.Refused(
            f"spec.ipAddresses[{index}]: {address}: {issuer.kind} {issuer.name} "
            f"spec.acme.solvers[{chosen.index}] is a DNS-01 solver, and DNS-01 cannot prove an "
            "IP address (RFC 8738); add an http01 solver the address selects (the CA connects "
            "to the address itself, where certctl's data plane must listen on port 80)")


def _refuse_missing_profile(
    *, store: Store, issuer: Issuer[AcmeIssuer], certificate: Certificate,
    env: protocol.Environment,
) -> None:
    """The profile is one the CA's directory offers, and `shortlived` for IP addresses.

    Checked before ordering, against the directory the issuer's client has
    already fetched, so the condition names the field to fix instead of an
    Order failing. Let's Encrypt issues IP-address certificates only under its
    `shortlived` profile, so when the CA offers one by that name an IP
    certificate must ask for it; a CA without profiles (Pebble 2.4) or without
    that one decides for itself. Without `env.accounts` the CA's answer has to do.
    """
    explicit = certificate.acme_profile
    profile = explicit or issuer.spec.profile
    if (explicit is None and not certificate.ip_addresses) or env.accounts is None:
        return
    try:
        offered = env.accounts.client(store=store, issuer=issuer).profiles()
    except (errors.AcmeError, LookupError) as err:
        raise errors.AcmeError(
            f"{certificate.key}: cannot read the profiles of {issuer.spec.server}: {err}"
        ) from err
    if explicit is not None and explicit not in offered:
        raise protocol.Refused(_profile_missing(issuer.spec, explicit, offered))
    if certificate.ip_addresses and SHORT_LIVED in offered and profile != SHORT_LIVED:
        raise protocol.Refused(
            f"spec.acme.profile: {certificate.ip_addresses[0]} is an IP address, which ACME "
            f"server {issuer.spec.server} certifies only under its {SHORT_LIVED!r} profile; "
            f"set spec.acme.profile: {SHORT_LIVED} on this Certificate (annotation "
            f"{annotation_keys.ACME_PROFILE} on an Ingress) or on {issuer.kind} "
            f"{issuer.name}" + (f" (asks for {profile!r})" if profile else " (asks for none)"))


def _profile_missing(acme: AcmeIssuer, profile: str, offered: Mapping[str, str]) -> str:
    return (f"spec.acme.profile: ACME server {acme.server} does not offer profile {profile!r} "
            f"(offers: {', '.join(sorted(offered)) or 'none'})")


def _typed(issuer: Issuer[IssuerSpec]) -> Issuer[AcmeIssuer]:
    """The registry hands this module ACME issuers only."""
    acme = accounts.acme_issuer(issuer)
    if acme is None:
        raise TypeError(f"{issuer.kind} {issuer.name} is not an ACME issuer")
    return acme
