"""Does this Certificate need issuing? An ordered chain of pure checks.

As in cert-manager's trigger controller, each check looks at one aspect of
the current Secret against the spec and returns a `Violation` (reason and a
message that goes straight into the `Issuing` condition) or None. The first
violation wins; adding a trigger is adding a function to `ISSUANCE_CHAIN`.
Checks never do I/O: the Secret is read and parsed once, before the chain.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from certctl.api import annotations as annotation_keys
from certctl.api.resources import Certificate, PrivateKeySpec
from certctl.issuers.acme import ari
from certctl.pki import inspect, keys, renewal
from certctl.pki import secret as tls_secret

# Reasons, as cert-manager spells them, so users can search for them.
DOES_NOT_EXIST = "DoesNotExist"
INVALID_CERTIFICATE = "InvalidCertificate"
INVALID_KEY_PAIR = "InvalidKeyPair"
INCORRECT_ISSUER = "IncorrectIssuer"
SECRET_MISMATCH = "SecretMismatch"  # noqa: S105 - a reason, not a password
INCORRECT_KEY = "IncorrectPrivateKey"
RENEWING = "Renewing"
EXPIRED = "Expired"
MANUALLY_TRIGGERED = "ManuallyTriggered"  # what `cmctl renew` and `certctl renew` set

# On a Secret certctl wrote (and its kept copy): the spec.commonName its certificate was
# requested with, which the CA may have left out of the certificate (`names_differ`).
REQUESTED_COMMON_NAME_ANNOTATION = "certctl.io/requested-common-name"
# Likewise the spec.acme.profile it was ordered under: the certificate does not say.
REQUESTED_PROFILE_ANNOTATION = "certctl.io/requested-acme-profile"


@dataclass(frozen=True, kw_only=True)
class Violation:
    reason: str
    message: str


@dataclass(frozen=True, kw_only=True)
class Input:
    """What every check may look at; `contents`/`info` are None when the Secret is unusable."""

    certificate: Certificate
    secret: Mapping[str, Any] | None
    contents: tls_secret.TLSSecretContents | None
    secret_problem: str | None
    info: inspect.CertificateInfo | None
    now: datetime.datetime
    # The Issuing condition says a user asked for a new certificate (`certctl renew`).
    renewal_requested: bool = False
    # The issuer is an ACME issuer: profiles and the short-lived renewal rule apply.
    acme: bool = False
    # The ARI window last fetched (status.acme.ari), for whichever certificate it was.
    ari: renewal.RenewalWindow | None = None


Check = Callable[[Input], Violation | None]


def read_input(
    *,
    certificate: Certificate,
    secret: Mapping[str, Any] | None,
    now: datetime.datetime,
    renewal_requested: bool = False,
    acme: bool = False,
    ari: renewal.RenewalWindow | None = None,
) -> Input:
    """Parse the Secret once; a parse failure becomes `secret_problem`, not an exception."""
    contents = None
    info = None
    problem = None
    if secret is not None:
        try:
            contents = tls_secret.read_tls_secret(secret)
            info = contents.info
        except (tls_secret.SecretInvalid, ValueError) as err:
            problem = str(err)
            contents = None
    return Input(certificate=certificate, secret=secret, contents=contents,
                 secret_problem=problem, info=info, now=now, renewal_requested=renewal_requested,
                 acme=acme, ari=ari)


def renewal_requested(data: Input) -> Violation | None:
    if data.renewal_requested:
        return Violation(reason=MANUALLY_TRIGGERED,
                         message="Re-issuance of the certificate was manually triggered")
    return None


def secret_does_not_exist(data: Input) -> Violation | None:
    if data.secret is None:
        return Violation(reason=DOES_NOT_EXIST,
                         message="Issuing certificate as Secret does not exist")
    return None


def secret_is_invalid(data: Input) -> Violation | None:
    if data.secret_problem is not None or data.contents is None or data.info is None:
        return Violation(
            reason=INVALID_CERTIFICATE,
            message=f"Issuing certificate as Secret contains invalid data: {data.secret_problem}",
        )
    return None


def key_does_not_match(data: Input) -> Violation | None:
    assert data.contents is not None
    if not inspect.key_matches_certificate(data.contents.key, data.contents.leaf):
        return Violation(
            reason=INVALID_KEY_PAIR,
            message="Issuing certificate as Secret contains a private key that does not match "
            "the certificate",
        )
    return None


def issuer_changed(data: Input) -> Violation | None:
    assert data.secret is not None
    have = data.secret.get("metadata", {}).get("annotations") or {}
    ref = data.certificate.issuer_ref
    name = have.get(annotation_keys.SECRET_ISSUER_NAME)
    kind = have.get(annotation_keys.SECRET_ISSUER_KIND)
    if name is None:
        return None  # a Secret the user brought: judge it by its contents only
    # A fallback issuer's certificate is as good as the first choice's until renewal,
    # which starts with the first choice again.
    if all(name != r.name or (kind or "Issuer") != r.kind for r in data.certificate.issuer_refs):
        return Violation(
            reason=INCORRECT_ISSUER,
            message=f"Issuing certificate as Secret was previously issued by {kind}/{name}, "
            f"not {ref.kind}/{ref.name}",
        )
    return None


def names_differ(data: Input) -> Violation | None:
    assert data.info is not None
    spec = data.certificate
    differences = []
    if sorted(set(spec.dns_names)) != sorted(set(data.info.dns_names)):
        differences.append("spec.dnsNames")
    if sorted(set(spec.ip_addresses)) != sorted(set(data.info.ip_addresses)):
        differences.append("spec.ipAddresses")
    if spec.common_name and len(spec.common_name) <= 64 and (
        spec.common_name != data.info.common_name
    ) and not _common_name_left_out(spec.common_name, data):
        differences.append("spec.commonName")
    if differences:
        return Violation(
            reason=SECRET_MISMATCH,
            message="Issuing certificate as the issued certificate does not match "
            f"{', '.join(differences)}",
        )
    return None


def _common_name_left_out(common_name: str, data: Input) -> bool:
    """The certificate was requested with this Common Name, and the CA issued it
    without any, the name being among its SANs.

    ACME CAs may drop the CSR's Common Name whatever it asks: Let's Encrypt's
    `tlsserver` and `shortlived` profiles and the current Pebble's default do.
    Ordering again would get the same certificate, until the order budget ran out.
    A Common Name added to the spec since, or a Secret certctl did not write,
    still counts as a mismatch: the certificate was never asked for it.
    """
    info = data.info
    assert info is not None and data.secret is not None
    requested = (data.secret.get("metadata", {}).get("annotations") or {}).get(
        REQUESTED_COMMON_NAME_ANNOTATION)
    return requested == common_name and info.common_name is None and (
        common_name in info.dns_names or common_name in info.ip_addresses)


def key_differs(data: Input) -> Violation | None:
    assert data.info is not None
    algorithm, size = wanted_key_shape(data.certificate.private_key)
    if (data.info.key_algorithm, data.info.key_size) != (algorithm, size):
        return Violation(
            reason=INCORRECT_KEY,
            message=f"Issuing certificate as the private key is {data.info.key_algorithm} "
            f"{data.info.key_size}, not {algorithm} {size} as spec.privateKey asks",
        )
    return None


def wanted_key_shape(spec: PrivateKeySpec) -> tuple[str, int]:
    """(algorithm, size) as `keys.describe_key` reports them, defaults filled in."""
    if spec.algorithm == "RSA":
        return ("RSA", spec.size or keys.DEFAULT_RSA_SIZE)
    if spec.algorithm == "ECDSA":
        return ("ECDSA", spec.size or keys.DEFAULT_ECDSA_SIZE)
    return ("Ed25519", 256)


def profile_differs(data: Input) -> Violation | None:
    """spec.acme.profile changed since the certificate was ordered (ACME issuers only).

    A certificate does not name its profile, so certctl records the one it
    asked for on the Secret; a Secret without the record (ordered under the
    issuer's profile, or before the field was set) is issued again once.
    """
    wanted = data.certificate.acme_profile
    if not data.acme or wanted is None:
        return None
    assert data.secret is not None
    have = (data.secret.get("metadata", {}).get("annotations") or {}).get(
        REQUESTED_PROFILE_ANNOTATION)
    if have != wanted:
        return Violation(
            reason=SECRET_MISMATCH,
            message="Issuing certificate as the issued certificate was not ordered under "
            f"ACME profile {wanted!r}, which spec.acme.profile asks for",
        )
    return None


def expired(data: Input) -> Violation | None:
    assert data.info is not None
    if data.now >= data.info.not_after:
        return Violation(reason=EXPIRED, message="Issuing certificate as it has expired "
                         f"(notAfter {data.info.not_after:%Y-%m-%dT%H:%M:%SZ})")
    return None


def renewal_due(data: Input) -> Violation | None:
    when, source = renewal_schedule(data)
    if data.now >= when:
        where = (" inside the renewal window the ACME server suggested (ARI)"
                 if source == renewal.ARI else "")
        return Violation(reason=RENEWING, message="Renewing certificate as renewal was "
                         f"scheduled at {when:%Y-%m-%dT%H:%M:%SZ}{where}")
    return None


def renewal_schedule(data: Input) -> tuple[datetime.datetime, renewal.RenewalTimeSource]:
    """When to renew the certificate in the Secret, and whether ARI or its lifetime said so.

    An ARI window counts only for the certificate it was fetched for (its
    CertID): a window fetched before the current certificate was issued
    says nothing about it, whatever it says (cert-manager #8993, where a
    stale window in the past renewed short-lived certificates in a loop).
    Until the current certificate's own window is fetched, its lifetime rules.
    """
    assert data.info is not None and data.contents is not None
    window = data.ari
    if window is not None and window.cert_id == ari.cert_id(data.contents.leaf):
        return window.selected, renewal.ARI
    return renewal.renewal_time(
        not_before=data.info.not_before,
        not_after=data.info.not_after,
        renew_before=data.certificate.renew_before,
        renew_before_percentage=data.certificate.renew_before_percentage,
        short_lived_at_half=data.acme,
    ), renewal.LIFETIME


ISSUANCE_CHAIN: Sequence[Check] = (
    renewal_requested,
    secret_does_not_exist,
    secret_is_invalid,
    key_does_not_match,
    issuer_changed,
    names_differ,
    key_differs,
    profile_differs,
    expired,
    renewal_due,
)

# Ready means "the Secret holds a usable certificate for this spec": a
# certificate inside its renewal window is still Ready while it is renewed.
READINESS_CHAIN: Sequence[Check] = tuple(
    c for c in ISSUANCE_CHAIN if c not in (renewal_due, renewal_requested))


def needs_issuing(data: Input, chain: Sequence[Check] = ISSUANCE_CHAIN) -> Violation | None:
    """The first violated check, or None when the Secret is fine as it is."""
    for check in chain:
        violation = check(data)
        if violation is not None:
            return violation
    return None
