"""Kubernetes-shaped dicts (as loaded from YAML or read from the API) to models.

Every parser either returns a fully validated model or raises
`errors.InvalidObject` naming the object, the dotted field path
(`spec.tls[0].secretName`) and what to change. The first problem found wins:
a user fixes one thing at a time, and the message stays short.

Our own kinds (Issuer, ClusterIssuer, Certificate, Challenge) are read
strictly, like cert-manager's API server with its CRD schema and webhook
would: unknown fields in `spec` are errors, so a typo such as `sever:` does
not silently fall back to a default. Fields cert-manager knows but certctl
does not implement are refused when set, rather than ignored, because
ignoring them would issue a different certificate than the one asked for.
Built-in kinds (Ingress, Service, ...) were already validated by the API
server, and may carry fields newer than this code, so their unknown fields
are ignored; for Ingresses read from manifests, where no API server has
checked them, `unknown_ingress_fields` names them so a typo is reported.

Objects without `metadata.namespace` land in "default", as `kubectl apply`
would put them.
"""

from __future__ import annotations

import base64
import binascii
import copy
import datetime
import difflib
import fractions
import ipaddress
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, Final, NoReturn, cast, get_args
from urllib.parse import urlsplit

from cryptography import x509

from certctl.api import annotations as annotation_keys
from certctl.api import conditions, errors, names, resources

DEFAULT_NAMESPACE: Final = "default"
# cert-manager's limits (MinimumCertificateDuration, MinimumRenewBefore,
# DefaultCertificateDuration): a Certificate without `duration` lasts 90 days.
MINIMUM_DURATION: Final = datetime.timedelta(hours=1)
MINIMUM_RENEW_BEFORE: Final = datetime.timedelta(minutes=5)
DEFAULT_DURATION: Final = datetime.timedelta(days=90)

_OUR_API_VERSIONS: Final = (f"{resources.GROUP}/v1", f"{resources.CERT_MANAGER_GROUP}/v1")
_ISSUER_KINDS: Final = ("ClusterIssuer", "Issuer")
_UNNAMED: Final = "<unnamed>"
_RSA_SIZES: Final = range(2048, 8193)
_ECDSA_SIZES: Final = (256, 384, 521)
_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")

_DURATION_UNITS_NS: Final = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,  # Go accepts both micro signs
    "μs": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60 * 1_000_000_000,
    "h": 3600 * 1_000_000_000,
}
_DURATION_PART = re.compile(r"(\d*)(?:\.(\d*))?(ns|us|µs|μs|ms|s|m|h)")


def parse_duration(text: str) -> datetime.timedelta:
    """Parse a Go duration (`2160h`, `1h30m`, `1.5h`, `90s`) as cert-manager does.

    Go's grammar: an optional sign, then one or more decimal numbers each with
    a unit (h, m, s, ms, us/µs, ns); "0" alone needs no unit. Days are not a
    unit in Go, so `90d` is refused with a hint. Sub-microsecond parts are
    truncated, as `timedelta` cannot hold nanoseconds.
    """
    hint = "use a number with a unit such as '2160h', '1h30m' or '45s' (units: h, m, s, ms, us, ns)"
    rest = text.strip()
    sign = -1 if rest.startswith("-") else 1
    rest = rest[1:] if rest[:1] in ("-", "+") else rest
    if rest == "0":
        return datetime.timedelta(0)
    if not rest:
        raise ValueError(f"{text!r} is not a duration: {hint}")
    total = fractions.Fraction(0)
    position = 0
    while position < len(rest):
        match = _DURATION_PART.match(rest, position)
        if match is None or not (match.group(1) or match.group(2)):
            if rest.endswith("d") and rest[:-1].isdigit():
                raise ValueError(
                    f"{text!r} is not a duration: days are not a unit, write {int(rest[:-1]) * 24}h"
                )
            raise ValueError(f"{text!r} is not a duration: {hint}")
        whole, fraction, unit = match.group(1), match.group(2), match.group(3)
        value = fractions.Fraction(int(whole or "0"))
        if fraction:
            value += fractions.Fraction(int(fraction), 10 ** len(fraction))
        total += value * _DURATION_UNITS_NS[unit]
        position = match.end()
    microseconds = int(total) // 1_000
    return datetime.timedelta(microseconds=sign * microseconds)


def format_duration(value: datetime.timedelta) -> str:
    """Go's rendering (`2160h0m0s`), used in messages so users see their own notation."""
    seconds = int(value.total_seconds())
    sign = "-" if seconds < 0 else ""
    hours, remainder = divmod(abs(seconds), 3600)
    minutes, secs = divmod(remainder, 60)
    if hours:
        return f"{sign}{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{sign}{minutes}m{secs}s"
    return f"{sign}{secs}s"


# --- issuers -------------------------------------------------------------------


def parse_issuer(
    obj: Mapping[str, Any], *, source: str | None = None
) -> resources.Issuer[resources.IssuerSpec]:
    """Read a ClusterIssuer or Issuer, `certctl.io/v1` or `cert-manager.io/v1`."""
    ctx = _open(
        obj,
        kinds=_ISSUER_KINDS,
        api_versions=_OUR_API_VERSIONS,
        cluster_scoped=("ClusterIssuer",),
        source=source,
    )
    spec = ctx.mapping(obj.get("spec"), field="spec")
    ctx.check_fields(
        spec, at="spec", known=("acme", "selfSigned", "ca"), unsupported=("vault", "venafi")
    )
    configured = [key for key in ("acme", "selfSigned", "ca") if spec.get(key) is not None]
    if not configured:
        ctx.fail("spec", "exactly one issuer type must be set: acme, selfSigned or ca")
    if len(configured) > 1:
        ctx.fail(
            f"spec.{configured[1]}",
            f"only one issuer type may be set, found {' and '.join(configured)}",
        )
    kind: resources.IssuerKind = "ClusterIssuer" if ctx.kind == "ClusterIssuer" else "Issuer"
    return resources.Issuer(
        kind=kind,
        namespace=ctx.namespace,
        name=ctx.name,
        generation=ctx.generation(obj),
        spec=_ISSUER_SPECS[configured[0]](ctx, spec[configured[0]], at=f"spec.{configured[0]}"),
    )


def _self_signed_issuer(ctx: _Object, value: Any, *, at: str) -> resources.SelfSignedIssuer:
    self_signed = ctx.mapping(value, field=at)
    ctx.check_fields(self_signed, at=at, known=(), unsupported=("crlDistributionPoints",))
    return resources.SelfSignedIssuer()


def _ca_issuer(ctx: _Object, value: Any, *, at: str) -> resources.CaIssuer:
    ca = ctx.mapping(value, field=at)
    ctx.check_fields(
        ca,
        at=at,
        known=("secretName",),
        unsupported=("crlDistributionPoints", "ocspServers", "issuingCertificateURLs"),
    )
    secret_name = ctx.required_str(ca, "secretName", at=at)
    ctx.check_subdomain(secret_name, field=f"{at}.secretName")
    return resources.CaIssuer(secret_name=secret_name)


def _acme_issuer(ctx: _Object, value: Any, *, at: str) -> resources.AcmeIssuer:
    acme = ctx.mapping(value, field=at)
    ctx.check_fields(
        acme,
        at=at,
        known=(
            "server",
            "email",
            "privateKeySecretRef",
            "caBundle",
            "skipTLSVerify",
            "externalAccountBinding",
            "preferredChain",
            "profile",
            "solvers",
        ),
        unsupported=("disableAccountKeyGeneration", "enableDurationFeature"),
    )
    server = ctx.required_str(acme, "server", at=at)
    parts = urlsplit(server)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        ctx.fail(
            f"{at}.server",
            f"{server!r} is not an http(s) URL; use the CA's directory URL, such as"
            " https://acme-v02.api.letsencrypt.org/directory",
        )
    email = ctx.optional_str(acme, "email", at=at)
    if email is not None and not re.fullmatch(r"[^@\s]+@[^@\s]+", email):
        ctx.fail(f"{at}.email", f"{email!r} is not an email address")
    key_ref = ctx.mapping(acme.get("privateKeySecretRef"), field=f"{at}.privateKeySecretRef")
    private_key_secret_ref = _secret_key_selector(ctx, key_ref, at=f"{at}.privateKeySecretRef")
    skip_tls_verify = ctx.optional_bool(acme, "skipTLSVerify", at=at) or False
    ca_bundle = None
    if acme.get("caBundle"):
        if skip_tls_verify:
            ctx.fail(
                f"{at}.caBundle", "caBundle and skipTLSVerify are mutually exclusive; set only one"
            )
        ca_bundle = _ca_bundle(ctx, acme["caBundle"], field=f"{at}.caBundle")
    eab = None
    if acme.get("externalAccountBinding") is not None:
        eab = _external_account_binding(
            ctx, acme["externalAccountBinding"], at=f"{at}.externalAccountBinding"
        )
    solvers = tuple(
        _acme_solver(ctx, item, at=f"{at}.solvers[{index}]")
        for index, item in enumerate(ctx.sequence(acme.get("solvers"), field=f"{at}.solvers"))
    )
    return resources.AcmeIssuer(
        server=server,
        private_key_secret_ref=private_key_secret_ref,
        external_account_binding=eab,
        email=email,
        ca_bundle=ca_bundle,
        skip_tls_verify=skip_tls_verify,
        preferred_chain=ctx.optional_str(acme, "preferredChain", at=at),
        profile=ctx.optional_str(acme, "profile", at=at),
        solvers=solvers,
    )


# The issuer types by their spec field: the one-of resolved once, here.
_ISSUER_SPECS: Final[dict[str, Callable[..., resources.IssuerSpec]]] = {
    "acme": _acme_issuer, "selfSigned": _self_signed_issuer, "ca": _ca_issuer}


def _secret_key_selector(
    ctx: _Object, ref: Mapping[str, Any], *, at: str
) -> resources.SecretKeySelector:
    ctx.check_fields(ref, at=at, known=("name", "key"))
    name = ctx.required_str(ref, "name", at=at)
    ctx.check_subdomain(name, field=f"{at}.name")
    return resources.SecretKeySelector(name=name, key=ctx.optional_str(ref, "key", at=at) or "")


def _external_account_binding(
    ctx: _Object, value: Any, *, at: str
) -> resources.ExternalAccountBinding:
    eab = ctx.mapping(value, field=at)
    # keyAlgorithm is deprecated in cert-manager and ignored there too: the
    # algorithm is always HS256.
    ctx.check_fields(eab, at=at, known=("keyID", "keySecretRef"), ignored=("keyAlgorithm",))
    key_id = ctx.required_str(eab, "keyID", at=at)
    key_ref = ctx.mapping(eab.get("keySecretRef"), field=f"{at}.keySecretRef")
    return resources.ExternalAccountBinding(
        key_id=key_id, key_secret_ref=_secret_key_selector(ctx, key_ref, at=f"{at}.keySecretRef")
    )


def _ca_bundle(ctx: _Object, value: Any, *, field: str) -> bytes:
    """Decode caBundle (base64 of PEM, as in cert-manager) and insist it holds certificates.

    A bundle that decodes to garbage would otherwise surface much later as a
    TLS verification failure against the ACME server, far from its cause.
    """
    if not isinstance(value, str):
        ctx.fail(field, f"must be a base64-encoded string, got {describe_value(value)}")
    try:
        pem = base64.b64decode("".join(value.split()), validate=True)
    except binascii.Error:
        ctx.fail(field, "is not valid base64; encode the PEM file with `base64 -w0 ca.pem`")
    if b"-----BEGIN" not in pem:
        ctx.fail(
            field, "does not decode to PEM; it must be the base64 of PEM-encoded CA certificates"
        )
    blocks = re.findall(rb"-----BEGIN ([A-Z0-9 ]+)-----", pem)
    if any(block != b"CERTIFICATE" for block in blocks):
        ctx.fail(
            field,
            "contains a PEM block that is not a CERTIFICATE (only CA certificates belong here)",
        )
    try:
        x509.load_pem_x509_certificates(pem)
    except ValueError:
        ctx.fail(field, "contains a PEM certificate that does not parse")
    return pem


def _acme_solver(ctx: _Object, value: Any, *, at: str) -> resources.AcmeSolver:
    solver = ctx.mapping(value, field=at)
    ctx.check_fields(solver, at=at, known=("selector", "http01", "dns01", "tlsALPN01"))
    selector = None
    if solver.get("selector") is not None:
        selector = _solver_selector(ctx, solver["selector"], at=f"{at}.selector")
    has_http01 = solver.get("http01") is not None
    has_dns01 = solver.get("dns01") is not None
    has_tls_alpn01 = solver.get("tlsALPN01") is not None
    if has_http01 + has_dns01 + has_tls_alpn01 != 1:
        ctx.fail(at, "exactly one of http01, dns01 or tlsALPN01 must be set")
    if has_tls_alpn01:
        tls_alpn01 = ctx.mapping(solver["tlsALPN01"], field=f"{at}.tlsALPN01")
        for unknown in tls_alpn01:
            ctx.fail(f"{at}.tlsALPN01.{unknown}", "unknown field; tlsALPN01 takes no settings: {}")
        return resources.AcmeSolver(selector=selector, config=resources.TlsAlpn01ListenerSolver())
    if has_http01:
        return resources.AcmeSolver(
            selector=selector, config=_http01(ctx, solver["http01"], at=f"{at}.http01")
        )
    dns01 = ctx.mapping(solver["dns01"], field=f"{at}.dns01")
    # Provider names are open-ended (third-party providers register their own),
    # so any other key is taken as the provider.
    ctx.check_fields(dns01, at=f"{at}.dns01", known=(), open_ended=True)
    # Accepted for cert-manager compatibility; certctl always follows a CNAME at
    # _acme-challenge, since a TXT record cannot sit beside one ("None" could only fail).
    ctx.choice(dns01, "cnameStrategy", at=f"{at}.dns01", choices=("None", "Follow"))
    account_label = ctx.choice(dns01, "accountLabel", at=f"{at}.dns01",
                               choices=get_args(resources.AccountLabelMode)) or "Never"
    providers = [key for key in dns01 if key not in ("cnameStrategy", "accountLabel")]
    if len(providers) != 1:
        found = ", ".join(providers) if providers else "none"
        ctx.fail(f"{at}.dns01", f"exactly one DNS provider must be configured, found {found}")
    provider = providers[0]
    config = ctx.mapping(dns01[provider], field=f"{at}.dns01.{provider}")
    return resources.AcmeSolver(
        selector=selector,
        config=resources.Dns01ProviderSolver(
            provider=provider,
            config=tuple((str(key), copy.deepcopy(item)) for key, item in config.items()),
            account_label=cast(resources.AccountLabelMode, account_label),
        ),
    )


def solver_spec(solver: resources.AcmeSolver) -> dict[str, Any]:
    """The `solvers[]` entry `solver` was read from, as a Challenge's `spec.solver` keeps it.

    Written back from the model rather than copied from the issuer, so the
    copy holds exactly what certctl acts on (ignored fields are left out).
    """
    spec: dict[str, Any] = {}
    selector = solver.selector
    if selector is not None:
        spec["selector"] = {
            key: value
            for key, value in (
                ("dnsNames", list(selector.dns_names)),
                ("dnsZones", list(selector.dns_zones)),
                ("matchLabels", dict(selector.match_labels)),
            )
            if value
        }
    config = solver.config
    if isinstance(config, resources.Http01IngressSolver):
        ingress = {
            key: value
            for key, value in (
                ("ingressClassName", config.ingress_class_name),
                ("class", config.ingress_class),
                ("name", config.name),
            )
            if value is not None
        }
        spec["http01"] = {"ingress": ingress}
    elif isinstance(config, resources.TlsAlpn01ListenerSolver):
        spec["tlsALPN01"] = {}
    else:
        spec["dns01"] = {config.provider: copy.deepcopy(dict(config.config))}
        if config.account_label != "Never":
            spec["dns01"]["accountLabel"] = config.account_label
    return spec


def _solver_selector(ctx: _Object, value: Any, *, at: str) -> resources.SolverSelector:
    selector = ctx.mapping(value, field=at)
    ctx.check_fields(selector, at=at, known=("dnsNames", "dnsZones", "matchLabels"))
    return resources.SolverSelector(
        dns_names=tuple(
            ctx.dns_name(name, field=f"{at}.dnsNames[{index}]", allow_wildcard=True)
            for index, name in enumerate(ctx.str_list(selector, "dnsNames", at=at))
        ),
        dns_zones=tuple(
            ctx.dns_name(zone, field=f"{at}.dnsZones[{index}]", allow_wildcard=False)
            for index, zone in enumerate(ctx.str_list(selector, "dnsZones", at=at))
        ),
        match_labels=ctx.str_map(selector, "matchLabels", at=at),
    )


def _http01(ctx: _Object, value: Any, *, at: str) -> resources.Http01IngressSolver:
    http01 = ctx.mapping(value, field=at)
    ctx.check_fields(http01, at=at, known=("ingress",), unsupported=("gatewayHTTPRoute",))
    if http01.get("ingress") is None:
        ctx.fail(f"{at}.ingress", "is required: certctl solves HTTP-01 through an Ingress")
    ingress = ctx.mapping(http01["ingress"], field=f"{at}.ingress")
    # No solver pods or Services exist in certctl (the data plane answers the
    # challenge), so the fields shaping them have nothing to apply to.
    ctx.check_fields(
        ingress,
        at=f"{at}.ingress",
        known=("ingressClassName", "class", "name"),
        ignored=("serviceType", "podTemplate", "ingressTemplate"),
    )
    set_fields = [key for key in ("ingressClassName", "class", "name") if ingress.get(key)]
    if len(set_fields) > 1:
        ctx.fail(
            f"{at}.ingress",
            "only one of ingressClassName, class or name may be set,"
            f" found {' and '.join(set_fields)}",
        )
    class_name = ctx.optional_str(ingress, "ingressClassName", at=f"{at}.ingress")
    if class_name is not None:
        ctx.check_subdomain(class_name, field=f"{at}.ingress.ingressClassName")
    return resources.Http01IngressSolver(
        ingress_class_name=class_name,
        ingress_class=ctx.optional_str(ingress, "class", at=f"{at}.ingress"),
        name=ctx.optional_str(ingress, "name", at=f"{at}.ingress"),
    )


# --- certificates ------------------------------------------------------------------


def parse_certificate(
    obj: Mapping[str, Any], *, source: str | None = None
) -> resources.Certificate:
    """Read a Certificate, `certctl.io/v1` or `cert-manager.io/v1`, validated as cert-manager does.

    Differences from cert-manager: dnsNames are normalised (lowercase,
    punycode) and de-duplicated, ipAddresses are written in canonical form, so
    they compare equal to what an issued certificate contains.
    """
    ctx = _open(
        obj,
        kinds=("Certificate",),
        api_versions=_OUR_API_VERSIONS,
        cluster_scoped=(),
        source=source,
    )
    spec = ctx.mapping(obj.get("spec"), field="spec")
    ctx.check_fields(
        spec,
        at="spec",
        known=(
            "secretName",
            "dnsNames",
            "ipAddresses",
            "commonName",
            "duration",
            "renewBefore",
            "renewBeforePercentage",
            "issuerRef",
            "privateKey",
            "usages",
            "secretTemplate",
            "revisionHistoryLimit",
            "acme",
            "fallbackIssuerRefs",
            "fallbackAfterFailedAttempts",
        ),
        unsupported=(
            "subject",
            "literalSubject",
            "isCA",
            "uris",
            "emailAddresses",
            "otherNames",
            "keystores",
            "additionalOutputFormats",
            "nameConstraints",
            "signatureAlgorithm",
            "renewal",
        ),
        # certctl always encodes usages in the CSR; ACME CAs ignore them anyway.
        ignored=("encodeUsagesInRequest",),
    )
    secret_name = ctx.required_str(spec, "secretName", at="spec")
    ctx.check_subdomain(secret_name, field="spec.secretName")
    dns_names = tuple(
        dict.fromkeys(
            ctx.dns_name(name, field=f"spec.dnsNames[{index}]", allow_wildcard=True)
            for index, name in enumerate(ctx.str_list(spec, "dnsNames", at="spec"))
        )
    )
    ip_addresses = tuple(
        dict.fromkeys(
            ctx.ip_address(address, field=f"spec.ipAddresses[{index}]")
            for index, address in enumerate(ctx.str_list(spec, "ipAddresses", at="spec"))
        )
    )
    common_name = ctx.optional_str(spec, "commonName", at="spec")
    if common_name is not None and len(common_name) > names.MAX_COMMON_NAME_LENGTH:
        ctx.fail(
            "spec.commonName",
            f"must be at most {names.MAX_COMMON_NAME_LENGTH} characters, is {len(common_name)}; "
            "put long names in dnsNames",
        )
    if not (dns_names or ip_addresses or common_name):
        ctx.fail("spec", "at least one of dnsNames, ipAddresses or commonName must be set")

    duration = ctx.duration(spec, "duration", at="spec")
    renew_before = ctx.duration(spec, "renewBefore", at="spec")
    percentage = ctx.optional_int(spec, "renewBeforePercentage", at="spec")
    _check_renewal(ctx, duration=duration, renew_before=renew_before, percentage=percentage)

    revision_history_limit = ctx.optional_int(spec, "revisionHistoryLimit", at="spec")
    if revision_history_limit is not None and revision_history_limit < 1:
        ctx.fail("spec.revisionHistoryLimit", "must be at least 1")

    usages = tuple(ctx.str_list(spec, "usages", at="spec"))
    known_usages = resources.KEY_USAGES | resources.EXTENDED_KEY_USAGES
    for index, usage in enumerate(usages):
        if usage not in known_usages:
            ctx.fail(
                f"spec.usages[{index}]",
                f"unknown usage {usage!r}; expected one of: {', '.join(sorted(known_usages))}",
            )

    issuer_ref = _issuer_ref(ctx, spec.get("issuerRef"), at="spec.issuerRef")
    fallback_refs = _fallback_issuer_refs(ctx, spec, first=issuer_ref)
    return resources.Certificate(
        namespace=ctx.scoped_namespace,
        name=ctx.name,
        secret_name=secret_name,
        issuer_ref=issuer_ref,
        fallback_issuer_refs=fallback_refs,
        fallback_after_failed_attempts=_fallback_after(ctx, spec, fallbacks=fallback_refs),
        generation=ctx.generation(obj),
        dns_names=dns_names,
        ip_addresses=ip_addresses,
        common_name=common_name,
        duration=duration,
        renew_before=renew_before,
        renew_before_percentage=percentage,
        private_key=_private_key(ctx, spec.get("privateKey"), at="spec.privateKey"),
        secret_template=_secret_template(ctx, spec.get("secretTemplate"), at="spec.secretTemplate"),
        revision_history_limit=revision_history_limit,
        acme_profile=_certificate_acme_profile(ctx, spec.get("acme"), at="spec.acme"),
        **({"usages": usages} if usages else {}),
    )


# Enough for any sensible chain (Caddy's default has two); each one is tried in turn.
MAX_FALLBACK_ISSUERS: Final = 5
MAX_FALLBACK_AFTER_FAILED_ATTEMPTS: Final = 10


def _fallback_issuer_refs(
    ctx: _Object, spec: Mapping[str, Any], *, first: resources.IssuerRef
) -> tuple[resources.IssuerRef, ...]:
    """`spec.fallbackIssuerRefs`: the issuers after `issuerRef`, each named once."""
    at = "spec.fallbackIssuerRefs"
    items = ctx.sequence(spec.get("fallbackIssuerRefs"), field=at)
    if len(items) > MAX_FALLBACK_ISSUERS:
        ctx.fail(at, f"at most {MAX_FALLBACK_ISSUERS} fallback issuers, got {len(items)}")
    refs: list[resources.IssuerRef] = []
    for index, item in enumerate(items):
        ref = _issuer_ref(ctx, item, at=f"{at}[{index}]")
        if (ref.kind, ref.name) in {(r.kind, r.name) for r in (first, *refs)}:
            ctx.fail(f"{at}[{index}]", f"{ref.kind} {ref.name} is already named in issuerRef or "
                     "an earlier fallbackIssuerRefs entry; name each issuer once")
        refs.append(ref)
    return tuple(refs)


def _fallback_after(
    ctx: _Object, spec: Mapping[str, Any], *, fallbacks: tuple[resources.IssuerRef, ...]
) -> int:
    """`spec.fallbackAfterFailedAttempts` (default 1): only meaningful with fallbacks."""
    at = "spec.fallbackAfterFailedAttempts"
    attempts = ctx.optional_int(spec, "fallbackAfterFailedAttempts", at="spec")
    if attempts is None:
        return 1
    if not fallbacks:
        ctx.fail(at, "only applies with spec.fallbackIssuerRefs; set those or leave it out")
    if not 1 <= attempts <= MAX_FALLBACK_AFTER_FAILED_ATTEMPTS:
        ctx.fail(at, f"must be between 1 and {MAX_FALLBACK_AFTER_FAILED_ATTEMPTS}, is {attempts}")
    return attempts


def _certificate_acme_profile(ctx: _Object, value: Any, *, at: str) -> str | None:
    """`spec.acme.profile`: this Certificate's ACME profile, overriding its issuer's.

    Whether the CA offers it is known only from its directory: the
    Certificate reconciler checks that before ordering.
    """
    if value is None:
        return None
    acme = ctx.mapping(value, field=at)
    ctx.check_fields(acme, at=at, known=("profile",))
    profile = ctx.optional_str(acme, "profile", at=at)
    if profile is not None and not profile.strip():
        ctx.fail(f"{at}.profile", "must not be blank; leave it out to use the issuer's profile")
    return profile


def _check_renewal(
    ctx: _Object,
    *,
    duration: datetime.timedelta | None,
    renew_before: datetime.timedelta | None,
    percentage: int | None,
) -> None:
    effective = duration if duration is not None else DEFAULT_DURATION
    if duration is not None and duration < MINIMUM_DURATION:
        ctx.fail(
            "spec.duration", f"{format_duration(duration)} is too short; it must be at least 1h"
        )
    if renew_before is not None and percentage is not None:
        ctx.fail(
            "spec.renewBeforePercentage",
            "renewBefore and renewBeforePercentage are mutually exclusive; set only one",
        )
    if renew_before is not None:
        if renew_before < MINIMUM_RENEW_BEFORE:
            ctx.fail(
                "spec.renewBefore",
                f"{format_duration(renew_before)} is too short; it must be at least 5m",
            )
        if renew_before >= effective:
            ctx.fail(
                "spec.renewBefore",
                f"{format_duration(renew_before)} must be less than the duration"
                f" {format_duration(effective)}",
            )
    if percentage is not None:
        if not 0 < percentage < 100:
            ctx.fail("spec.renewBeforePercentage", f"must be between 1 and 99, is {percentage}")
        if effective * percentage / 100 < MINIMUM_RENEW_BEFORE:
            ctx.fail(
                "spec.renewBeforePercentage",
                f"{percentage}% of {format_duration(effective)} is less than"
                " the minimum renewBefore of 5m",
            )


def _issuer_ref(ctx: _Object, value: Any, *, at: str) -> resources.IssuerRef:
    """Read issuerRef; group cert-manager.io is taken as ours so cert-manager manifests work."""
    ref = ctx.mapping(value, field=at)
    ctx.check_fields(ref, at=at, known=("name", "kind", "group"))
    name = ctx.required_str(ref, "name", at=at)
    group = ctx.optional_str(ref, "group", at=at) or resources.GROUP
    if group not in (resources.GROUP, resources.CERT_MANAGER_GROUP):
        ctx.fail(
            f"{at}.group",
            f"issuers of group {group!r} are not served by certctl; use {resources.GROUP}"
            f" or {resources.CERT_MANAGER_GROUP}",
        )
    kind = ctx.optional_str(ref, "kind", at=at) or "Issuer"
    if kind == "ClusterIssuer":
        return resources.IssuerRef(name=name, kind="ClusterIssuer", group=resources.GROUP)
    if kind == "Issuer":
        return resources.IssuerRef(name=name, kind="Issuer", group=resources.GROUP)
    ctx.fail(f"{at}.kind", f"must be Issuer or ClusterIssuer, got {kind!r}")


def _private_key(ctx: _Object, value: Any, *, at: str) -> resources.PrivateKeySpec:
    spec = ctx.mapping(value, field=at)
    ctx.check_fields(spec, at=at, known=("algorithm", "size", "encoding", "rotationPolicy"))
    algorithm = ctx.choice(spec, "algorithm", at=at, choices=("RSA", "ECDSA", "Ed25519"))
    size = ctx.optional_int(spec, "size", at=at)
    encoding = ctx.choice(spec, "encoding", at=at, choices=("PKCS1", "PKCS8"))
    rotation = ctx.choice(spec, "rotationPolicy", at=at, choices=("Always", "Never"))
    # Unset fields keep the model's defaults; choice() has checked the values.
    settings: dict[str, Any] = {"size": size}
    if algorithm is not None:
        settings["algorithm"] = cast(resources.KeyAlgorithm, algorithm)
    elif size is not None and size not in _ECDSA_SIZES:
        # certctl defaults to ECDSA, cert-manager to RSA: a cert-manager manifest
        # giving only an RSA size (`size: 4096`) still means RSA.
        settings["algorithm"] = "RSA"
    if encoding is not None:
        settings["encoding"] = cast(resources.KeyEncoding, encoding)
    if rotation is not None:
        settings["rotation_policy"] = cast(resources.RotationPolicy, rotation)
    key_spec = resources.PrivateKeySpec(**settings)
    if size is not None:
        if key_spec.algorithm == "RSA" and size not in _RSA_SIZES:
            ctx.fail(f"{at}.size", f"must be between 2048 and 8192 for RSA keys, is {size}")
        if key_spec.algorithm == "ECDSA" and size not in _ECDSA_SIZES:
            ctx.fail(f"{at}.size", f"must be 256, 384 or 521 for ECDSA keys, is {size}")
    return key_spec


def _secret_template(ctx: _Object, value: Any, *, at: str) -> resources.SecretTemplate:
    template = ctx.mapping(value, field=at)
    ctx.check_fields(template, at=at, known=("annotations", "labels"))
    secret_annotations = ctx.str_map(template, "annotations", at=at)
    for key, _ in secret_annotations:
        # These keys are written by certctl itself; a template must not fight it.
        if key.startswith(f"{resources.CERT_MANAGER_GROUP}/") or key.startswith(
            f"{resources.GROUP}/"
        ):
            ctx.fail(
                f"{at}.annotations",
                f"{key!r}: cert-manager.io/ and certctl.io/ annotations are reserved",
            )
    return resources.SecretTemplate(
        annotations=secret_annotations, labels=ctx.str_map(template, "labels", at=at)
    )


# --- ingress and services ------------------------------------------------------------


def parse_ingress(obj: Mapping[str, Any], *, source: str | None = None) -> resources.Ingress:
    """Read a networking.k8s.io/v1 Ingress; hosts come back normalised.

    The class is `spec.ingressClassName`, else the legacy
    `kubernetes.io/ingress.class` annotation (the field wins when both are
    set, as in Kubernetes). A path without `path` under ImplementationSpecific
    means "/": that is how the common controllers treat it.
    """
    ctx = _open(
        obj,
        kinds=("Ingress",),
        api_versions=("networking.k8s.io/v1",),
        cluster_scoped=(),
        source=source,
    )
    metadata = ctx.mapping(obj.get("metadata"), field="metadata")
    ingress_annotations = ctx.str_map(metadata, "annotations", at="metadata")
    spec = ctx.mapping(obj.get("spec"), field="spec")
    class_name = ctx.optional_str(spec, "ingressClassName", at="spec")
    if class_name is None:
        class_name = dict(ingress_annotations).get(annotation_keys.INGRESS_CLASS) or None
    default_backend = None
    if spec.get("defaultBackend") is not None:
        default_backend = _backend(ctx, spec["defaultBackend"], at="spec.defaultBackend")
    rules = tuple(
        _ingress_rule(ctx, item, at=f"spec.rules[{index}]")
        for index, item in enumerate(ctx.sequence(spec.get("rules"), field="spec.rules"))
    )
    tls = tuple(
        _ingress_tls(ctx, item, at=f"spec.tls[{index}]")
        for index, item in enumerate(ctx.sequence(spec.get("tls"), field="spec.tls"))
    )
    return resources.Ingress(
        namespace=ctx.scoped_namespace,
        name=ctx.name,
        uid=ctx.optional_str(metadata, "uid", at="metadata") or "",
        creation_timestamp=ctx.timestamp(
            metadata.get("creationTimestamp"), field="metadata.creationTimestamp"
        ),
        annotations=ingress_annotations,
        ingress_class_name=class_name,
        default_backend=default_backend,
        rules=rules,
        tls=tls,
    )


# The fields of networking.k8s.io/v1 Ingress certctl knows: a mapping per object,
# a one-item list for "each item is", None for a leaf (its type is checked by parse_ingress).
_BACKEND_FIELDS: Final[dict[str, Any]] = {
    "service": {"name": None, "port": {"number": None, "name": None}},
    "resource": None,
}
_INGRESS_FIELDS: Final[dict[str, Any]] = {
    "apiVersion": None,
    "kind": None,
    "metadata": None,  # open-ended enough (managedFields, finalizers...) to leave alone
    "status": None,
    "spec": {
        "ingressClassName": None,
        "defaultBackend": _BACKEND_FIELDS,
        "rules": [{"host": None,
                   "http": {"paths": [{"path": None, "pathType": None,
                                       "backend": _BACKEND_FIELDS}]}}],
        "tls": [{"hosts": None, "secretName": None}],
    },
}


def unknown_ingress_fields(obj: Mapping[str, Any]) -> list[str]:
    """`spec.tls[0].host: unknown field, ignored; did you mean 'hosts'?` for each typo.

    An API server drops or refuses fields a built-in kind does not have
    (`kubectl apply` validates strictly), so this only finds anything in
    manifests read by `certctl serve`. The fields are ignored, not refused,
    as newer Kubernetes versions may add some; but a typo such as `secretname`
    would otherwise silently leave a host without its certificate.
    """
    found: list[str] = []
    _walk_fields(obj, _INGRESS_FIELDS, at="", found=found)
    return found


def _walk_fields(value: Any, schema: Any, *, at: str, found: list[str]) -> None:
    if isinstance(schema, list) and isinstance(value, list):
        for index, item in enumerate(value):
            _walk_fields(item, schema[0], at=f"{at}[{index}]", found=found)
    elif isinstance(schema, dict) and isinstance(value, Mapping):
        for key, item in value.items():
            path = f"{at}.{key}" if at else str(key)
            if key in schema:
                _walk_fields(item, schema[key], at=path, found=found)
                continue
            close = difflib.get_close_matches(str(key), list(schema), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            found.append(f"{path}: unknown field, ignored{hint}")


def _ingress_rule(ctx: _Object, value: Any, *, at: str) -> resources.IngressRule:
    rule = ctx.mapping(value, field=at)
    host = ctx.optional_str(rule, "host", at=at)
    if host is not None:
        host = ctx.dns_name(host, field=f"{at}.host", allow_wildcard=True)
    http = ctx.mapping(rule.get("http"), field=f"{at}.http")
    paths = ctx.sequence(http.get("paths"), field=f"{at}.http.paths")
    return resources.IngressRule(
        host=host,
        paths=tuple(
            _ingress_path(ctx, item, at=f"{at}.http.paths[{index}]")
            for index, item in enumerate(paths)
        ),
    )


def _ingress_path(ctx: _Object, value: Any, *, at: str) -> resources.IngressPath:
    entry = ctx.mapping(value, field=at)
    path_type = ctx.choice(
        entry, "pathType", at=at, choices=("Exact", "Prefix", "ImplementationSpecific")
    )
    if path_type is None:
        ctx.fail(f"{at}.pathType", "is required: one of Exact, Prefix or ImplementationSpecific")
    path = ctx.optional_str(entry, "path", at=at)
    if path is None:
        if path_type != "ImplementationSpecific":
            ctx.fail(f"{at}.path", f"is required for pathType {path_type}")
        path = "/"
    if not path.startswith("/"):
        ctx.fail(f"{at}.path", f"{path!r} must be an absolute path starting with '/'")
    return resources.IngressPath(
        path=path,
        path_type=cast(resources.PathType, path_type),
        backend=_backend(ctx, entry.get("backend"), at=f"{at}.backend"),
    )


def _backend(ctx: _Object, value: Any, *, at: str) -> resources.ServiceBackend:
    backend = ctx.mapping(value, field=at)
    if backend.get("resource") is not None:
        ctx.fail(f"{at}.resource", "resource backends are not supported; use a service backend")
    service = ctx.mapping(backend.get("service"), field=f"{at}.service")
    if not service:
        ctx.fail(f"{at}.service", "is required")
    name = ctx.required_str(service, "name", at=f"{at}.service")
    port = ctx.mapping(service.get("port"), field=f"{at}.service.port")
    number = ctx.optional_int(port, "number", at=f"{at}.service.port")
    port_name = ctx.optional_str(port, "name", at=f"{at}.service.port")
    if (number is None) == (port_name is None):
        ctx.fail(f"{at}.service.port", "exactly one of number or name must be set")
    if number is not None:
        ctx.check_port(number, field=f"{at}.service.port.number")
    return resources.ServiceBackend(name=name, port_number=number, port_name=port_name)


def _ingress_tls(ctx: _Object, value: Any, *, at: str) -> resources.IngressTLS:
    entry = ctx.mapping(value, field=at)
    secret_name = ctx.optional_str(entry, "secretName", at=at)
    if secret_name is not None:
        ctx.check_subdomain(secret_name, field=f"{at}.secretName")
    return resources.IngressTLS(
        hosts=tuple(
            dict.fromkeys(
                _tls_host(ctx, host, field=f"{at}.hosts[{index}]")
                for index, host in enumerate(ctx.str_list(entry, "hosts", at=at))
            )
        ),
        secret_name=secret_name,
    )


def _tls_host(ctx: _Object, host: str, *, field: str) -> str:
    """A `spec.tls[].hosts` entry: a DNS name, or an IP address in canonical form.

    The API server accepts IP addresses here (unlike in `rules[].host`), and
    cert-manager's ingress-shim puts them in the Certificate's ipAddresses.
    """
    if names.is_ip_address(host):
        return ctx.ip_address(host, field=field)
    return ctx.dns_name(host, field=field, allow_wildcard=True)


def parse_ingress_class(
    obj: Mapping[str, Any], *, source: str | None = None
) -> resources.IngressClass:
    """Read a networking.k8s.io/v1 IngressClass; default-ness comes from its annotation."""
    ctx = _open(
        obj,
        kinds=("IngressClass",),
        api_versions=("networking.k8s.io/v1",),
        cluster_scoped=("IngressClass",),
        source=source,
    )
    metadata = ctx.mapping(obj.get("metadata"), field="metadata")
    class_annotations = dict(ctx.str_map(metadata, "annotations", at="metadata"))
    spec = ctx.mapping(obj.get("spec"), field="spec")
    return resources.IngressClass(
        name=ctx.name,
        controller=ctx.required_str(spec, "controller", at="spec"),
        is_default=class_annotations.get(annotation_keys.INGRESS_CLASS_IS_DEFAULT, "").lower()
        == "true",
    )


def parse_service(obj: Mapping[str, Any], *, source: str | None = None) -> resources.Service:
    """Read a v1 Service's ports; a missing targetPort means "same as port"."""
    ctx = _open(obj, kinds=("Service",), api_versions=("v1",), cluster_scoped=(), source=source)
    spec = ctx.mapping(obj.get("spec"), field="spec")
    ports = []
    for index, item in enumerate(ctx.sequence(spec.get("ports"), field="spec.ports")):
        at = f"spec.ports[{index}]"
        entry = ctx.mapping(item, field=at)
        port = ctx.required_int(entry, "port", at=at)
        ctx.check_port(port, field=f"{at}.port")
        target = entry.get("targetPort")
        target_port: int | str | None
        if target is None or isinstance(target, str):
            target_port = target or None
        elif isinstance(target, int) and not isinstance(target, bool):
            ctx.check_port(target, field=f"{at}.targetPort")
            target_port = target
        else:
            ctx.fail(
                f"{at}.targetPort",
                f"must be a port number or a port name, got {describe_value(target)}",
            )
        ports.append(
            resources.ServicePort(
                port=port, name=ctx.optional_str(entry, "name", at=at), target_port=target_port
            )
        )
    return resources.Service(namespace=ctx.scoped_namespace, name=ctx.name, ports=tuple(ports))


def parse_endpoint_slice(
    obj: Mapping[str, Any], *, source: str | None = None
) -> resources.EndpointSlice:
    """Read a discovery.k8s.io/v1 EndpointSlice.

    An endpoint without `conditions.ready` counts as ready: Kubernetes says
    consumers should read "unknown" that way.
    """
    ctx = _open(
        obj,
        kinds=("EndpointSlice",),
        api_versions=("discovery.k8s.io/v1",),
        cluster_scoped=(),
        source=source,
    )
    metadata = ctx.mapping(obj.get("metadata"), field="metadata")
    labels = dict(ctx.str_map(metadata, "labels", at="metadata"))
    service_name = labels.get("kubernetes.io/service-name")
    if not service_name:
        ctx.fail("metadata.labels", "the kubernetes.io/service-name label is required")
    endpoints = []
    for index, item in enumerate(ctx.sequence(obj.get("endpoints"), field="endpoints")):
        at = f"endpoints[{index}]"
        entry = ctx.mapping(item, field=at)
        addresses = tuple(ctx.str_list(entry, "addresses", at=at))
        if not addresses:
            ctx.fail(f"{at}.addresses", "must list at least one address")
        endpoint_conditions = ctx.mapping(entry.get("conditions"), field=f"{at}.conditions")
        ready = ctx.optional_bool(endpoint_conditions, "ready", at=f"{at}.conditions")
        endpoints.append(resources.Endpoint(addresses=addresses, ready=ready is not False))
    return resources.EndpointSlice(
        namespace=ctx.scoped_namespace,
        name=ctx.name,
        service_name=service_name,
        ports=_endpoint_ports(ctx, obj.get("ports"), at="ports"),
        endpoints=tuple(endpoints),
    )


def parse_endpoints(
    obj: Mapping[str, Any], *, source: str | None = None
) -> list[resources.EndpointSlice]:
    """Read a legacy v1 Endpoints as one EndpointSlice per subset.

    Slices are named `<name>-<subset index>`; `notReadyAddresses` become
    endpoints with ready=False, so consumers need only understand slices.
    """
    ctx = _open(obj, kinds=("Endpoints",), api_versions=("v1",), cluster_scoped=(), source=source)
    slices = []
    for index, item in enumerate(ctx.sequence(obj.get("subsets"), field="subsets")):
        at = f"subsets[{index}]"
        subset = ctx.mapping(item, field=at)
        endpoints = [
            resources.Endpoint(addresses=(address,), ready=ready)
            for key, ready in (("addresses", True), ("notReadyAddresses", False))
            for address in _endpoint_ips(ctx, subset.get(key), at=f"{at}.{key}")
        ]
        slices.append(
            resources.EndpointSlice(
                namespace=ctx.scoped_namespace,
                name=f"{ctx.name}-{index}",
                service_name=ctx.name,
                ports=_endpoint_ports(ctx, subset.get("ports"), at=f"{at}.ports"),
                endpoints=tuple(endpoints),
            )
        )
    return slices


def _endpoint_ips(ctx: _Object, value: Any, *, at: str) -> list[str]:
    return [
        ctx.required_str(ctx.mapping(item, field=f"{at}[{index}]"), "ip", at=f"{at}[{index}]")
        for index, item in enumerate(ctx.sequence(value, field=at))
    ]


def _endpoint_ports(ctx: _Object, value: Any, *, at: str) -> tuple[resources.EndpointPort, ...]:
    ports = []
    for index, item in enumerate(ctx.sequence(value, field=at)):
        entry = ctx.mapping(item, field=f"{at}[{index}]")
        port = ctx.required_int(entry, "port", at=f"{at}[{index}]")
        ctx.check_port(port, field=f"{at}[{index}].port")
        ports.append(
            resources.EndpointPort(
                port=port, name=ctx.optional_str(entry, "name", at=f"{at}[{index}]")
            )
        )
    return tuple(ports)


# --- ACME challenges ------------------------------------------------------------------


def parse_challenge(obj: Mapping[str, Any], *, source: str | None = None) -> resources.Challenge:
    """Read a certctl.io/v1 Challenge (written by certctl itself, so only our group)."""
    ctx = _open(
        obj,
        kinds=("Challenge",),
        api_versions=(f"{resources.GROUP}/v1",),
        cluster_scoped=(),
        source=source,
    )
    spec = ctx.mapping(obj.get("spec"), field="spec")
    ctx.check_fields(
        spec,
        at="spec",
        known=(
            "url",
            "authorizationURL",
            "dnsName",
            "wildcard",
            "type",
            "token",
            "key",
            "issuerRef",
            "solver",
            "solverIndex",
            "accountURI",
        ),
    )
    types = get_args(resources.ChallengeType)
    challenge_type = ctx.choice(spec, "type", at="spec", choices=types)
    if challenge_type is None:
        ctx.fail("spec.type", f"is required: {' or '.join(types)}")
    solver_index = ctx.optional_int(spec, "solverIndex", at="spec") or 0
    if solver_index < 0:
        ctx.fail("spec.solverIndex", "must not be negative")
    account_uri = ctx.optional_str(spec, "accountURI", at="spec")
    if challenge_type == "DNS-ACCOUNT-01" and not account_uri:
        ctx.fail("spec.accountURI", "is required for a DNS-ACCOUNT-01 challenge: the TXT"
                 " record's name is derived from the ACME account's URL")
    return resources.Challenge(
        namespace=ctx.scoped_namespace,
        name=ctx.name,
        url=ctx.required_str(spec, "url", at="spec"),
        authorization_url=ctx.required_str(spec, "authorizationURL", at="spec"),
        dns_name=_challenge_name(ctx, ctx.required_str(spec, "dnsName", at="spec")),
        wildcard=ctx.optional_bool(spec, "wildcard", at="spec") or False,
        type=cast(resources.ChallengeType, challenge_type),
        token=ctx.required_str(spec, "token", at="spec"),
        key=ctx.required_str(spec, "key", at="spec"),
        issuer_ref=_issuer_ref(ctx, spec.get("issuerRef"), at="spec.issuerRef"),
        solver=_acme_solver(ctx, spec.get("solver"), at="spec.solver"),
        solver_index=solver_index,
        account_uri=account_uri,
    )


def _challenge_name(ctx: _Object, value: str) -> str:
    """`spec.dnsName`: the identifier proven, a DNS name or (RFC 8738) an IP address."""
    if names.is_ip_address(value):
        return ctx.ip_address(value, field="spec.dnsName")
    return ctx.dns_name(value, field="spec.dnsName", allow_wildcard=False)


# --- reading helpers ---------------------------------------------------------------------


def describe_value(value: Any) -> str:
    """A value's YAML type for error messages ("a number", "null", "a mapping", ...)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return type(value).__name__


def _open(
    obj: Any,
    *,
    kinds: Sequence[str],
    api_versions: Sequence[str],
    cluster_scoped: Collection[str],
    source: str | None,
) -> _Object:
    """Check kind, apiVersion and metadata.name, returning a reader that names the object.

    The name is looked up before anything is checked so that even an error
    about `kind` says which object it is about.
    """
    if not isinstance(obj, Mapping):
        raise errors.InvalidObject(
            kind=kinds[0],
            namespace=None,
            name=_UNNAMED,
            field="(object)",
            message=f"must be a mapping, got {describe_value(obj)}",
            source=source,
        )
    metadata = obj.get("metadata")
    name = metadata.get("name") if isinstance(metadata, Mapping) else None
    namespace = metadata.get("namespace") if isinstance(metadata, Mapping) else None
    kind = obj.get("kind")
    known_kind = kind if isinstance(kind, str) and kind in kinds else kinds[0]
    scoped = known_kind not in cluster_scoped
    ctx = _Object(
        kind=known_kind,
        namespace=(namespace if isinstance(namespace, str) and namespace else DEFAULT_NAMESPACE)
        if scoped
        else None,
        name=name if isinstance(name, str) and name else _UNNAMED,
        source=source,
    )
    if kind != known_kind:
        ctx.fail("kind", f"expected {' or '.join(kinds)}, got {kind!r}")
    api_version = obj.get("apiVersion")
    if api_version not in api_versions:
        ctx.fail("apiVersion", f"expected {' or '.join(api_versions)}, got {api_version!r}")
    meta = ctx.mapping(metadata, field="metadata")
    ctx.required_str(meta, "name", at="metadata")
    if scoped:
        ctx.optional_str(meta, "namespace", at="metadata")
    return ctx


class _Object:
    """The object being read: typed field access whose errors name it and the field."""

    def __init__(self, *, kind: str, namespace: str | None, name: str, source: str | None) -> None:
        self.kind = kind
        self.namespace = namespace
        self.name = name
        self.source = source

    def fail(self, field: str, message: str) -> NoReturn:
        raise errors.InvalidObject(
            kind=self.kind,
            namespace=self.namespace,
            name=self.name,
            field=field,
            message=message,
            source=self.source,
        )

    @property
    def scoped_namespace(self) -> str:
        """The namespace of a namespaced object, which `_open` always fills in."""
        return self.namespace or DEFAULT_NAMESPACE

    def generation(self, obj: Mapping[str, Any]) -> int:
        return (
            self.optional_int(
                self.mapping(obj.get("metadata"), field="metadata"), "generation", at="metadata"
            )
            or 0
        )

    def check_fields(
        self,
        value: Mapping[str, Any],
        *,
        at: str,
        known: Collection[str],
        unsupported: Collection[str] = (),
        ignored: Collection[str] = (),
        open_ended: bool = False,
    ) -> None:
        """Refuse unknown keys, and `unsupported` ones unless left empty/false.

        `open_ended` skips the unknown-key check (for maps keyed by a plugin name).
        """
        for key, item in value.items():
            if key in known or key in ignored:
                continue
            if key in unsupported:
                if item:
                    self.fail(
                        f"{at}.{key}", "is a cert-manager field certctl does not support; remove it"
                    )
                continue
            if open_ended:
                continue
            choices = sorted(known)
            close = difflib.get_close_matches(str(key), choices, n=1)
            hint = (
                f"did you mean {close[0]!r}?" if close else f"expected one of: {', '.join(choices)}"
            )
            self.fail(f"{at}.{key}", f"unknown field; {hint}")

    def mapping(self, value: Any, *, field: str) -> Mapping[str, Any]:
        """A mapping; a missing (null) one reads as empty, as Kubernetes omits empty structs."""
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            self.fail(field, f"must be a mapping, got {describe_value(value)}")
        return value

    def sequence(self, value: Any, *, field: str) -> list[Any]:
        if value is None:
            return []
        if not isinstance(value, list | tuple):
            self.fail(field, f"must be a list, got {describe_value(value)}")
        return list(value)

    def optional_str(self, value: Mapping[str, Any], key: str, *, at: str) -> str | None:
        """A string field; null and "" both read as unset, like Go's omitempty."""
        item = value.get(key)
        if item is None or item == "":
            return None
        if not isinstance(item, str):
            self.fail(f"{at}.{key}",
                      f"must be a string, got {describe_value(item)}; quote the value")
        return item

    def required_str(self, value: Mapping[str, Any], key: str, *, at: str) -> str:
        item = self.optional_str(value, key, at=at)
        if item is None:
            self.fail(f"{at}.{key}", "is required")
        return item

    def optional_int(self, value: Mapping[str, Any], key: str, *, at: str) -> int | None:
        item = value.get(key)
        if item is None:
            return None
        if isinstance(item, bool) or not isinstance(item, int):
            self.fail(f"{at}.{key}", f"must be an integer, got {describe_value(item)}")
        return item

    def required_int(self, value: Mapping[str, Any], key: str, *, at: str) -> int:
        item = self.optional_int(value, key, at=at)
        if item is None:
            self.fail(f"{at}.{key}", "is required")
        return item

    def optional_bool(self, value: Mapping[str, Any], key: str, *, at: str) -> bool | None:
        item = value.get(key)
        if item is None:
            return None
        if not isinstance(item, bool):
            self.fail(f"{at}.{key}", f"must be true or false, got {describe_value(item)}")
        return item

    def choice(
        self, value: Mapping[str, Any], key: str, *, at: str, choices: Sequence[str]
    ) -> str | None:
        item = self.optional_str(value, key, at=at)
        if item is not None and item not in choices:
            self.fail(f"{at}.{key}", f"must be one of {', '.join(choices)}, got {item!r}")
        return item

    def str_list(self, value: Mapping[str, Any], key: str, *, at: str) -> list[str]:
        items = self.sequence(value.get(key), field=f"{at}.{key}")
        for index, item in enumerate(items):
            if not isinstance(item, str):
                self.fail(f"{at}.{key}[{index}]", f"must be a string, got {describe_value(item)}")
        return items

    def str_map(
        self, value: Mapping[str, Any], key: str, *, at: str
    ) -> tuple[tuple[str, str], ...]:
        """A string map as sorted pairs; non-string values (`true`, `2`) must be quoted."""
        items = self.mapping(value.get(key), field=f"{at}.{key}")
        for name, item in items.items():
            if not isinstance(item, str):
                self.fail(
                    f"{at}.{key}.{name}",
                    f"must be a string, got {describe_value(item)}; quote the value",
                )
        return tuple(sorted((str(name), item) for name, item in items.items()))

    def duration(self, value: Mapping[str, Any], key: str, *, at: str) -> datetime.timedelta | None:
        text = self.optional_str(value, key, at=at)
        if text is None:
            return None
        try:
            return parse_duration(text)
        except ValueError as exc:
            self.fail(f"{at}.{key}", str(exc))

    def timestamp(self, value: Any, *, field: str) -> datetime.datetime | None:
        """RFC 3339 text, or the datetime PyYAML already made of it (naive means UTC there)."""
        if value is None:
            return None
        if isinstance(value, datetime.datetime):
            if value.tzinfo is None:
                return value.replace(tzinfo=datetime.UTC)
            return value.astimezone(datetime.UTC)
        if not isinstance(value, str):
            self.fail(field, f"must be an RFC 3339 timestamp, got {describe_value(value)}")
        try:
            return conditions.parse_time(value)
        except ValueError as exc:
            self.fail(field, str(exc))

    def dns_name(self, value: str, *, field: str, allow_wildcard: bool) -> str:
        try:
            return names.normalize_dns_name(value, allow_wildcard=allow_wildcard)
        except ValueError as exc:
            self.fail(field, str(exc))

    def ip_address(self, value: str, *, field: str) -> str:
        try:
            return str(ipaddress.ip_address(value))
        except ValueError:
            self.fail(field, f"{value!r} is not an IP address")

    def check_port(self, value: int, *, field: str) -> None:
        if not 1 <= value <= 65535:
            self.fail(field, f"must be a port number between 1 and 65535, is {value}")

    def check_subdomain(self, value: str, *, field: str) -> None:
        """Kubernetes object names (Secrets, IngressClasses) are lowercase DNS subdomains."""
        if len(value) > 253 or not _SUBDOMAIN.fullmatch(value):
            self.fail(
                field,
                f"{value!r} is not a valid object name: lowercase letters, digits, '-' and '.',"
                " starting and ending with a letter or digit",
            )


# The reader and its opening, public for the parsers of kinds with their own module
# (api/gateway.py: the Gateway API).
ObjectReader = _Object
open_object = _open
