"""Kubernetes-shaped dicts (as loaded from YAML or read from the API) to models.

Every parser either returns a fully validated model or raises
`errors.InvalidObject` naming the object, the dotted field path
(`spec.tls[0].secretName`) and what to change. The first problem found wins:
a user fixes one thing at a time, and the message stays short.

Our own kinds (Issuer, ClusterIssuer, Certificate, Challenge) are validated
first by their CRDs in crds/ (api/schema.py: the structural schema, closed to
unknown fields, and the CEL rules), the one definition of what they accept,
which the API server enforces in a cluster too. Fields cert-manager knows but
certctl does not implement are declared there and refused when set, rather
than ignored, because ignoring them would issue a different certificate than
the one asked for. What is left here is what a schema cannot say: values read
into typed models (durations, normalised DNS names and IP addresses, object
names, the key algorithm a lone size implies, the CA bundle's certificates)
and DNS-01's one provider among plugin keys no schema knows.
Built-in kinds (Ingress, Service, ...) were already validated by the API
server, and may carry fields newer than this code, so their unknown fields
are ignored; for Ingresses read from manifests, where no API server has
checked them, `unknown_ingress_fields` names them so a typo is reported.

Objects without `metadata.namespace` land in "default", as `kubectl apply`
would put them.
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import datetime
import difflib
import ipaddress
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, Final, Generic, NoReturn, Protocol, TypeVar, cast

from cryptography import x509

from certctl.api import annotations as annotation_keys
from certctl.api import conditions, errors, names, resources, schema

DEFAULT_NAMESPACE: Final = "default"
# cert-manager's DefaultCertificateDuration: a Certificate without `duration` lasts 90 days.
DEFAULT_DURATION: Final = datetime.timedelta(days=90)

_OUR_API_VERSIONS: Final = (f"{resources.GROUP}/v1", f"{resources.CERT_MANAGER_GROUP}/v1")
_ISSUER_KINDS: Final = ("ClusterIssuer", "Issuer")
_UNNAMED: Final = "<unnamed>"
_ECDSA_SIZES: Final = (256, 384, 521)
_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")

# Go durations are the CRDs' `format: duration`, so the grammar lives with the schemas;
# callers keep reading it (and describe_value) from here.
parse_duration = schema.parse_duration
describe_value = schema.describe_value


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


# The last issuer parsed of each issuer object, with the object's uid and resourceVersion.
# Every pass of a Certificate, Order and Challenge reconciler parses its issuer, and an
# ACME issuer with a caBundle costs the bundle's certificates' parsing each time (B2: 5 %
# of certctl's CPU). A resourceVersion names one content of one object, in the API server
# and in `serve`'s store; an object without one is parsed every time. Issuers are few.
_parsed_issuers: dict[tuple[Any, ...], tuple[str, str, resources.Issuer[Any]]] = {}


def parse_issuer(
    obj: Mapping[str, Any], *, source: str | None = None
) -> resources.Issuer[resources.IssuerSpec]:
    """Read a ClusterIssuer or Issuer, `certctl.io/v1` or `cert-manager.io/v1`."""
    metadata = obj.get("metadata")
    if isinstance(metadata, Mapping) and metadata.get("uid") and metadata.get("resourceVersion"):
        uid, version = str(metadata["uid"]), str(metadata["resourceVersion"])
        memo_key = (obj.get("apiVersion"), obj.get("kind"), metadata.get("namespace"),
                    metadata.get("name"))
        parsed = _parsed_issuers.get(memo_key)
        if parsed is not None and parsed[0] == uid and parsed[1] == version:
            return parsed[2]
        issuer = _parse_issuer(obj, source=source)
        _parsed_issuers[memo_key] = (uid, version, issuer)
        return issuer
    return _parse_issuer(obj, source=source)


def _parse_issuer(
    obj: Mapping[str, Any], *, source: str | None
) -> resources.Issuer[resources.IssuerSpec]:
    ctx = _open(
        obj,
        kinds=_ISSUER_KINDS,
        api_versions=_OUR_API_VERSIONS,
        cluster_scoped=("ClusterIssuer",),
        source=source,
    )
    schema.validate(obj, source=source)
    spec = obj["spec"]
    # The schema lets exactly one issuer type through.
    (configured,) = [key for key in _ISSUER_SPECS if spec.get(key) is not None]
    kind: resources.IssuerKind = "ClusterIssuer" if ctx.kind == "ClusterIssuer" else "Issuer"
    return resources.Issuer(
        kind=kind,
        namespace=ctx.namespace,
        name=ctx.name,
        generation=ctx.generation(obj),
        spec=_ISSUER_SPECS[configured](ctx, spec[configured], at=f"spec.{configured}"),
    )


def _self_signed_issuer(ctx: _Object, value: Any, *, at: str) -> resources.SelfSignedIssuer:
    return resources.SelfSignedIssuer()


def _ca_issuer(ctx: _Object, ca: Mapping[str, Any], *, at: str) -> resources.CaIssuer:
    secret_name = ctx.required_str(ca, "secretName", at=at)
    ctx.check_subdomain(secret_name, field=f"{at}.secretName")
    return resources.CaIssuer(secret_name=secret_name)


def _acme_issuer(ctx: _Object, acme: Mapping[str, Any], *, at: str) -> resources.AcmeIssuer:
    ca_bundle = None
    if acme.get("caBundle"):
        ca_bundle = _ca_bundle(ctx, acme["caBundle"], field=f"{at}.caBundle")
    eab = None
    if acme.get("externalAccountBinding") is not None:
        eab = _external_account_binding(
            ctx, acme["externalAccountBinding"], at=f"{at}.externalAccountBinding"
        )
    return resources.AcmeIssuer(
        server=acme["server"],
        private_key_secret_ref=_secret_key_selector(
            ctx, acme["privateKeySecretRef"], at=f"{at}.privateKeySecretRef"),
        external_account_binding=eab,
        email=ctx.optional_str(acme, "email", at=at),
        ca_bundle=ca_bundle,
        skip_tls_verify=acme.get("skipTLSVerify") or False,
        preferred_chain=ctx.optional_str(acme, "preferredChain", at=at),
        profile=ctx.optional_str(acme, "profile", at=at),
        solvers=tuple(
            _acme_solver(ctx, item, at=f"{at}.solvers[{index}]")
            for index, item in enumerate(acme.get("solvers") or ())
        ),
    )


# The issuer types by their spec field: the one-of resolved once, here.
_ISSUER_SPECS: Final[dict[str, Callable[..., resources.IssuerSpec]]] = {
    "acme": _acme_issuer, "selfSigned": _self_signed_issuer, "ca": _ca_issuer}


def _secret_key_selector(
    ctx: _Object, ref: Mapping[str, Any], *, at: str
) -> resources.SecretKeySelector:
    name = ctx.required_str(ref, "name", at=at)
    ctx.check_subdomain(name, field=f"{at}.name")
    return resources.SecretKeySelector(name=name, key=ctx.optional_str(ref, "key", at=at) or "")


def _external_account_binding(
    ctx: _Object, eab: Mapping[str, Any], *, at: str
) -> resources.ExternalAccountBinding:
    # keyAlgorithm is deprecated in cert-manager and ignored there too: the
    # algorithm is always HS256.
    return resources.ExternalAccountBinding(
        key_id=ctx.required_str(eab, "keyID", at=at),
        key_secret_ref=_secret_key_selector(ctx, eab["keySecretRef"], at=f"{at}.keySecretRef"),
    )


def _ca_bundle(ctx: _Object, value: str, *, field: str) -> bytes:
    """Decode caBundle (base64 of PEM, as in cert-manager) and insist it holds certificates.

    The schema checked the base64 (`format: byte`). A bundle that decodes to
    garbage would otherwise surface much later as a TLS verification failure
    against the ACME server, far from its cause.
    """
    pem = base64.b64decode(value.replace("\r", "").replace("\n", ""))
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


# The keys of a dns01 solver that are settings; any other key names the provider.
_DNS01_SETTINGS: Final = ("cnameStrategy", "accountLabel")


def _acme_solver(ctx: _Object, solver: Mapping[str, Any], *, at: str) -> resources.AcmeSolver:
    """One `solvers[]` entry (or a Challenge's copy), which the schema has checked (exactly
    one solver type set among them)."""
    selector = None
    if solver.get("selector") is not None:
        selector = _solver_selector(ctx, solver["selector"], at=f"{at}.selector")
    (key,) = [key for key in SOLVER_TYPES if solver.get(key) is not None]
    return resources.AcmeSolver(
        selector=selector, config=SOLVER_TYPES[key].parse(ctx, solver[key], at=f"{at}.{key}"))


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
    key, solver_type = next((key, solver_type) for key, solver_type in SOLVER_TYPES.items()
                            if isinstance(solver.config, solver_type.config_type))
    spec[key] = solver_type.to_spec(solver.config)
    return spec


def _solver_selector(
    ctx: _Object, selector: Mapping[str, Any], *, at: str
) -> resources.SolverSelector:
    return resources.SolverSelector(
        dns_names=tuple(
            ctx.dns_name(name, field=f"{at}.dnsNames[{index}]", allow_wildcard=True)
            for index, name in enumerate(selector.get("dnsNames") or ())
        ),
        dns_zones=tuple(
            ctx.dns_name(zone, field=f"{at}.dnsZones[{index}]", allow_wildcard=False)
            for index, zone in enumerate(selector.get("dnsZones") or ())
        ),
        match_labels=_pairs(selector.get("matchLabels")),
    )


def _http01(ctx: _Object, http01: Mapping[str, Any], *, at: str) -> resources.Http01IngressSolver:
    # No solver pods or Services exist in certctl (the data plane answers the
    # challenge), so the fields shaping them (serviceType, podTemplate,
    # ingressTemplate) have nothing to apply to: the schema accepts them, certctl
    # ignores them.
    ingress = http01["ingress"]
    class_name = ctx.optional_str(ingress, "ingressClassName", at=f"{at}.ingress")
    if class_name is not None:
        ctx.check_subdomain(class_name, field=f"{at}.ingress.ingressClassName")
    return resources.Http01IngressSolver(
        ingress_class_name=class_name,
        ingress_class=ctx.optional_str(ingress, "class", at=f"{at}.ingress"),
        name=ctx.optional_str(ingress, "name", at=f"{at}.ingress"),
    )


def _http01_spec(config: resources.Http01IngressSolver) -> dict[str, Any]:
    ingress = {
        key: value
        for key, value in (
            ("ingressClassName", config.ingress_class_name),
            ("class", config.ingress_class),
            ("name", config.name),
        )
        if value is not None
    }
    return {"ingress": ingress}


def _dns01(ctx: _Object, dns01: Mapping[str, Any], *, at: str) -> resources.Dns01ProviderSolver:
    # Provider names are open-ended (third-party providers register their own), so
    # the schema keeps unknown keys here and cannot count them: that is done here.
    # cnameStrategy is accepted for cert-manager compatibility; certctl always follows
    # a CNAME at _acme-challenge, since a TXT record cannot sit beside one ("None"
    # could only fail).
    providers = [key for key in dns01 if key not in _DNS01_SETTINGS]
    if len(providers) != 1:
        found = ", ".join(providers) if providers else "none"
        ctx.fail(at, f"exactly one DNS provider must be configured, found {found}")
    provider = providers[0]
    config = ctx.mapping(dns01[provider], field=f"{at}.{provider}")
    return resources.Dns01ProviderSolver(
        provider=provider,
        config=tuple((str(key), copy.deepcopy(item)) for key, item in config.items()),
        account_label=cast(resources.AccountLabelMode, dns01.get("accountLabel") or "Never"),
    )


def _dns01_spec(config: resources.Dns01ProviderSolver) -> dict[str, Any]:
    spec: dict[str, Any] = {config.provider: copy.deepcopy(dict(config.config))}
    if config.account_label != "Never":
        spec["accountLabel"] = config.account_label
    return spec


def _tls_alpn01(ctx: _Object, tls_alpn01: Mapping[str, Any], *,
                at: str) -> resources.TlsAlpn01ListenerSolver:
    return resources.TlsAlpn01ListenerSolver()  # no settings (the schema says so)


def _tls_alpn01_spec(config: resources.TlsAlpn01ListenerSolver) -> dict[str, Any]:
    return {}


_Config = TypeVar("_Config")
_Parsed = TypeVar("_Parsed", covariant=True)


class _ParseSolver(Protocol[_Parsed]):
    def __call__(self, ctx: _Object, value: Mapping[str, Any], /, *, at: str) -> _Parsed: ...


@dataclasses.dataclass(frozen=True, kw_only=True)
class SolverType(Generic[_Config]):
    """How one variant of `resources.SolverConfig` is read from its field of a `solvers[]`
    entry, and written back (`solver_spec`)."""

    config_type: type[_Config]
    parse: _ParseSolver[_Config]
    to_spec: Callable[[_Config], dict[str, Any]]


# One line per solver type, keyed by its field in `solvers[]`; `certctl.solvers.registry`
# maps each configuration variant to the Solver answering it.
SOLVER_TYPES: Final[dict[str, SolverType[Any]]] = {
    "http01": SolverType(config_type=resources.Http01IngressSolver, parse=_http01,
                         to_spec=_http01_spec),
    "dns01": SolverType(config_type=resources.Dns01ProviderSolver, parse=_dns01,
                        to_spec=_dns01_spec),
    "tlsALPN01": SolverType(config_type=resources.TlsAlpn01ListenerSolver, parse=_tls_alpn01,
                            to_spec=_tls_alpn01_spec),
}


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
    schema.validate(obj, source=source)
    spec = obj["spec"]
    secret_name = ctx.required_str(spec, "secretName", at="spec")
    ctx.check_subdomain(secret_name, field="spec.secretName")
    dns_names = tuple(
        dict.fromkeys(
            ctx.dns_name(name, field=f"spec.dnsNames[{index}]", allow_wildcard=True)
            for index, name in enumerate(spec.get("dnsNames") or ())
        )
    )
    ip_addresses = tuple(
        dict.fromkeys(
            ctx.ip_address(address, field=f"spec.ipAddresses[{index}]")
            for index, address in enumerate(spec.get("ipAddresses") or ())
        )
    )
    usages = tuple(spec.get("usages") or ())
    fallback_refs = tuple(
        _issuer_ref(ctx, ref, at=f"spec.fallbackIssuerRefs[{index}]")
        for index, ref in enumerate(spec.get("fallbackIssuerRefs") or ()))
    template = spec.get("secretTemplate") or {}
    acme = spec.get("acme") or {}
    return resources.Certificate(
        namespace=ctx.scoped_namespace,
        name=ctx.name,
        secret_name=secret_name,
        issuer_ref=_issuer_ref(ctx, spec["issuerRef"], at="spec.issuerRef"),
        fallback_issuer_refs=fallback_refs,
        fallback_after_failed_attempts=spec.get("fallbackAfterFailedAttempts") or 1,
        generation=ctx.generation(obj),
        dns_names=dns_names,
        ip_addresses=ip_addresses,
        common_name=ctx.optional_str(spec, "commonName", at="spec"),
        duration=ctx.duration(spec, "duration", at="spec"),
        renew_before=ctx.duration(spec, "renewBefore", at="spec"),
        renew_before_percentage=spec.get("renewBeforePercentage"),
        private_key=_private_key(spec.get("privateKey") or {}),
        secret_template=resources.SecretTemplate(
            annotations=_pairs(template.get("annotations")), labels=_pairs(template.get("labels"))
        ),
        revision_history_limit=spec.get("revisionHistoryLimit"),
        # Whether the CA offers the profile is known only from its directory: the
        # Certificate reconciler checks that before ordering.
        acme_profile=ctx.optional_str(acme, "profile", at="spec.acme"),
        **({"usages": usages} if usages else {}),
    )


def _issuer_ref(ctx: _Object, ref: Mapping[str, Any], *, at: str) -> resources.IssuerRef:
    """Read an issuerRef; group cert-manager.io is taken as ours so cert-manager manifests work."""
    kind = cast(resources.IssuerKind, ref.get("kind") or "Issuer")
    return resources.IssuerRef(name=ctx.required_str(ref, "name", at=at), kind=kind,
                               group=resources.GROUP)


def _pairs(value: Mapping[str, str] | None) -> tuple[tuple[str, str], ...]:
    """A string map (the schema checked the values are strings) as sorted pairs."""
    return tuple(sorted((str(key), item) for key, item in (value or {}).items()))


def _private_key(spec: Mapping[str, Any]) -> resources.PrivateKeySpec:
    """The key to generate; unset fields keep the model's defaults."""
    size = spec.get("size")
    settings: dict[str, Any] = {"size": size}
    if spec.get("algorithm"):
        settings["algorithm"] = spec["algorithm"]
    elif size is not None and size not in _ECDSA_SIZES:
        # certctl defaults to ECDSA, cert-manager to RSA: a cert-manager manifest
        # giving only an RSA size (`size: 4096`) still means RSA.
        settings["algorithm"] = "RSA"
    if spec.get("encoding"):
        settings["encoding"] = spec["encoding"]
    if spec.get("rotationPolicy"):
        settings["rotation_policy"] = spec["rotationPolicy"]
    return resources.PrivateKeySpec(**settings)


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
                port=port, name=ctx.optional_str(entry, "name", at=at), target_port=target_port,
                app_protocol=ctx.optional_str(entry, "appProtocol", at=at),
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
    schema.validate(obj, source=source)
    spec = obj["spec"]
    return resources.Challenge(
        namespace=ctx.scoped_namespace,
        name=ctx.name,
        url=ctx.required_str(spec, "url", at="spec"),
        authorization_url=ctx.required_str(spec, "authorizationURL", at="spec"),
        dns_name=_challenge_name(ctx, ctx.required_str(spec, "dnsName", at="spec")),
        wildcard=spec.get("wildcard") or False,
        type=spec["type"],
        token=ctx.required_str(spec, "token", at="spec"),
        key=ctx.required_str(spec, "key", at="spec"),
        issuer_ref=_issuer_ref(ctx, spec["issuerRef"], at="spec.issuerRef"),
        solver=_acme_solver(ctx, spec["solver"], at="spec.solver"),
        solver_index=spec.get("solverIndex") or 0,
        account_uri=ctx.optional_str(spec, "accountURI", at="spec"),
    )


def _challenge_name(ctx: _Object, value: str) -> str:
    """`spec.dnsName`: the identifier proven, a DNS name or (RFC 8738) an IP address."""
    if names.is_ip_address(value):
        return ctx.ip_address(value, field="spec.dnsName")
    return ctx.dns_name(value, field="spec.dnsName", allow_wildcard=False)


# --- reading helpers ---------------------------------------------------------------------


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
