"""Typed models of the resources certctl reads.

These are the *validated* views of Kubernetes-shaped objects: the store keeps
plain dicts (as the API server would), and `certctl.api.parsing` turns them
into these models or raises `certctl.api.errors.InvalidObject` naming the
object and field. Field names follow cert-manager's v1 API, in snake_case.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import Generic, Literal, TypeVar

GROUP = "certctl.io"
CERT_MANAGER_GROUP = "cert-manager.io"

IssuerKind = Literal["ClusterIssuer", "Issuer"]
PathType = Literal["Exact", "Prefix", "ImplementationSpecific"]
KeyAlgorithm = Literal["RSA", "ECDSA", "Ed25519"]
KeyEncoding = Literal["PKCS1", "PKCS8"]
RotationPolicy = Literal["Always", "Never"]
# DNS-ACCOUNT-01 (draft-ietf-acme-dns-account-label) is answered by the DNS-01 solver.
ChallengeType = Literal["HTTP-01", "DNS-01", "DNS-ACCOUNT-01", "TLS-ALPN-01"]
# `solvers[].dns01.accountLabel`: whether the TXT record goes to the account-scoped name
# of dns-account-01 (Never: always `_acme-challenge`; IfOffered; Required).
AccountLabelMode = Literal["Never", "IfOffered", "Required"]

# `Certificate.spec.usages` values, as cert-manager spells them. "signing" is
# cert-manager's alias of "digital signature", "s/mime" of "email protection".
KEY_USAGES = frozenset(
    {
        "signing",
        "digital signature",
        "content commitment",
        "key encipherment",
        "key agreement",
        "data encipherment",
        "cert sign",
        "crl sign",
        "encipher only",
        "decipher only",
    }
)
EXTENDED_KEY_USAGES = frozenset(
    {
        "any",
        "server auth",
        "client auth",
        "code signing",
        "email protection",
        "s/mime",
        "ipsec end system",
        "ipsec tunnel",
        "ipsec user",
        "timestamping",
        "ocsp signing",
        "microsoft sgc",
        "netscape sgc",
    }
)


@dataclass(frozen=True, kw_only=True)
class ObjectKey:
    """Identifies one object in a store; `namespace` is None for cluster-scoped kinds."""

    kind: str
    namespace: str | None
    name: str

    def __str__(self) -> str:
        if self.namespace is None:
            return f"{self.kind} {self.name}"
        return f"{self.kind} {self.namespace}/{self.name}"


@dataclass(frozen=True, kw_only=True)
class SecretKeySelector:
    name: str
    key: str = ""


# --- issuers -----------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class SolverSelector:
    dns_names: tuple[str, ...] = ()
    dns_zones: tuple[str, ...] = ()
    match_labels: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, kw_only=True)
class Http01IngressSolver:
    """`solvers[].http01.ingress`: how the temporary solver Ingress is shaped."""

    ingress_class_name: str | None = None
    ingress_class: str | None = None  # legacy `class` field
    name: str | None = None  # edit an existing Ingress instead of creating one


@dataclass(frozen=True, kw_only=True)
class Dns01ProviderSolver:
    """`solvers[].dns01.<provider>`: the provider name and its raw config mapping, validated
    by the provider plugin, not here (third-party providers define their own)."""

    provider: str
    config: tuple[tuple[str, object], ...] = ()
    account_label: AccountLabelMode = "Never"


@dataclass(frozen=True, kw_only=True)
class TlsAlpn01ListenerSolver:
    """`solvers[].tlsALPN01: {}`: answered by the data plane's HTTPS listener (RFC 8737)."""


# One variant per solver type; `certctl.solvers.registry` maps each to its Solver.
SolverConfig = Http01IngressSolver | Dns01ProviderSolver | TlsAlpn01ListenerSolver


@dataclass(frozen=True, kw_only=True)
class AcmeSolver:
    """One entry of `spec.acme.solvers`, and the copy a Challenge carries (`spec.solver`)."""

    config: SolverConfig
    selector: SolverSelector | None = None


@dataclass(frozen=True, kw_only=True)
class ExternalAccountBinding:
    """`acme.externalAccountBinding`: ties the ACME account to one at the CA (ZeroSSL, Google)."""

    key_id: str
    key_secret_ref: SecretKeySelector  # the base64url-encoded HMAC key


@dataclass(frozen=True, kw_only=True)
class AcmeIssuer:
    server: str
    private_key_secret_ref: SecretKeySelector
    external_account_binding: ExternalAccountBinding | None = None
    email: str | None = None
    ca_bundle: bytes | None = None  # PEM, already base64-decoded
    skip_tls_verify: bool = False
    preferred_chain: str | None = None
    profile: str | None = None
    solvers: tuple[AcmeSolver, ...] = ()


@dataclass(frozen=True, kw_only=True)
class SelfSignedIssuer:
    """`spec.selfSigned`: each certificate is signed by its own key; nothing to configure."""


@dataclass(frozen=True, kw_only=True)
class CaIssuer:
    """`spec.ca`: sign with the CA key pair in this Secret."""

    secret_name: str


# The spec's one-of, resolved once when the issuer is parsed; `certctl.issuers.registry`
# maps each variant to the module implementing it.
IssuerSpec = AcmeIssuer | CaIssuer | SelfSignedIssuer
SpecT = TypeVar("SpecT", bound=IssuerSpec, covariant=True)


@dataclass(frozen=True, kw_only=True)
class Issuer(Generic[SpecT]):
    """A ClusterIssuer (namespace None) or a namespaced Issuer; `Issuer[AcmeIssuer]` is one
    known to be ACME (what Orders and Challenges work with)."""

    kind: IssuerKind
    namespace: str | None
    name: str
    spec: SpecT
    generation: int = 0

    @property
    def key(self) -> ObjectKey:
        return ObjectKey(kind=self.kind, namespace=self.namespace, name=self.name)


# --- certificates --------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class IssuerRef:
    name: str
    kind: IssuerKind = "Issuer"
    group: str = GROUP


@dataclass(frozen=True, kw_only=True)
class PrivateKeySpec:
    algorithm: KeyAlgorithm = "ECDSA"
    size: int | None = None  # None: the algorithm's default (RSA 2048, ECDSA 256)
    encoding: KeyEncoding = "PKCS1"
    rotation_policy: RotationPolicy = "Always"


@dataclass(frozen=True, kw_only=True)
class SecretTemplate:
    annotations: tuple[tuple[str, str], ...] = ()
    labels: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, kw_only=True)
class Certificate:
    namespace: str
    name: str
    secret_name: str
    issuer_ref: IssuerRef
    generation: int = 0
    dns_names: tuple[str, ...] = ()
    ip_addresses: tuple[str, ...] = ()
    common_name: str | None = None
    duration: datetime.timedelta | None = None
    renew_before: datetime.timedelta | None = None
    renew_before_percentage: int | None = None
    private_key: PrivateKeySpec = field(default_factory=PrivateKeySpec)
    usages: tuple[str, ...] = ("digital signature", "key encipherment")
    secret_template: SecretTemplate = field(default_factory=SecretTemplate)
    revision_history_limit: int | None = None
    # spec.acme.profile: overrides the ACME issuer's spec.acme.profile for this certificate.
    acme_profile: str | None = None
    # spec.fallbackIssuerRefs: tried in order when issuance with the one before failed for
    # a reason another issuer could fix (controllers.certificates says which).
    fallback_issuer_refs: tuple[IssuerRef, ...] = ()
    # spec.fallbackAfterFailedAttempts: failed attempts with one issuer before the next.
    fallback_after_failed_attempts: int = 1

    @property
    def key(self) -> ObjectKey:
        return ObjectKey(kind="Certificate", namespace=self.namespace, name=self.name)

    @property
    def issuer_refs(self) -> tuple[IssuerRef, ...]:
        """Every issuer this Certificate may be issued by, first choice first."""
        return (self.issuer_ref, *self.fallback_issuer_refs)


# --- ingress and services ------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ServiceBackend:
    """`backend.service`: exactly one of port_number / port_name is set."""

    name: str
    port_number: int | None = None
    port_name: str | None = None


@dataclass(frozen=True, kw_only=True)
class IngressPath:
    path: str
    path_type: PathType
    backend: ServiceBackend


@dataclass(frozen=True, kw_only=True)
class IngressRule:
    host: str | None  # None: the rule applies to every host
    paths: tuple[IngressPath, ...] = ()


@dataclass(frozen=True, kw_only=True)
class IngressTLS:
    hosts: tuple[str, ...] = ()  # normalised DNS names, and IP addresses in canonical form
    secret_name: str | None = None


class Annotated:
    """An object whose annotations the shims read (Ingress, Gateway, ListenerSet, HTTPRoute)."""

    annotations: tuple[tuple[str, str], ...]

    def annotation(self, name: str) -> str | None:
        for key, value in self.annotations:
            if key == name:
                return value
        return None


@dataclass(frozen=True, kw_only=True)
class Ingress(Annotated):
    namespace: str
    name: str
    uid: str = ""
    creation_timestamp: datetime.datetime | None = None
    annotations: tuple[tuple[str, str], ...] = ()
    ingress_class_name: str | None = None  # spec.ingressClassName or legacy annotation
    default_backend: ServiceBackend | None = None
    rules: tuple[IngressRule, ...] = ()
    tls: tuple[IngressTLS, ...] = ()

    @property
    def key(self) -> ObjectKey:
        return ObjectKey(kind="Ingress", namespace=self.namespace, name=self.name)


@dataclass(frozen=True, kw_only=True)
class IngressClass:
    name: str
    controller: str
    is_default: bool = False


@dataclass(frozen=True, kw_only=True)
class ServicePort:
    port: int
    name: str | None = None
    target_port: int | str | None = None  # None: same as port
    # The application protocol (`kubernetes.io/h2c`, `kubernetes.io/ws`, ...): how the
    # Gateway API's routes speak to the port (GEP-1911); None: not said.
    app_protocol: str | None = None


@dataclass(frozen=True, kw_only=True)
class Service:
    namespace: str
    name: str
    ports: tuple[ServicePort, ...] = ()


@dataclass(frozen=True, kw_only=True)
class EndpointPort:
    port: int
    name: str | None = None


@dataclass(frozen=True, kw_only=True)
class Endpoint:
    addresses: tuple[str, ...]
    ready: bool = True


@dataclass(frozen=True, kw_only=True)
class EndpointSlice:
    """An EndpointSlice, or a legacy Endpoints object converted to one per subset."""

    namespace: str
    name: str
    service_name: str
    ports: tuple[EndpointPort, ...] = ()
    endpoints: tuple[Endpoint, ...] = ()


# --- ACME orders and challenges (written by certctl itself) -------------------


@dataclass(frozen=True, kw_only=True)
class Challenge:
    """One ACME challenge certctl is solving; spec fields as in cert-manager."""

    namespace: str
    name: str
    url: str
    authorization_url: str
    dns_name: str
    wildcard: bool
    type: ChallengeType
    token: str
    # The key authorization served (HTTP-01), hashed into TXT (DNS-01) or into the
    # acmeIdentifier extension of the acme-tls/1 certificate (TLS-ALPN-01).
    key: str
    issuer_ref: IssuerRef
    # A copy of the issuer's solver when the Challenge was created (cert-manager's
    # `spec.solver`): editing the issuer does not change a running challenge.
    solver: AcmeSolver
    solver_index: int = 0
    # The ACME account's URL, for DNS-ACCOUNT-01 (its TXT name is derived from it).
    account_uri: str | None = None

    @property
    def key_ref(self) -> ObjectKey:
        return ObjectKey(kind="Challenge", namespace=self.namespace, name=self.name)
