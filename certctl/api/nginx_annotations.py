"""Which ingress-nginx annotations certctl honours, and what it does with the others.

Someone moving from ingress-nginx brings Ingresses annotated for it. An
annotation certctl ignores silently is a lie about how the Ingress is served,
and for the annotations that restrict access (authentication, source ranges,
rate limits, client certificates, a WAF) it would publish what they protected.
So every `nginx.ingress.kubernetes.io/<name>` and `certctl.io/<name>` key is
reviewed here:

- supported: the data plane (certctl.routes.ingress_annotations) or ingress-shim honours it;
- no-op: accepted and ignored, because it changes nothing certctl does
  (buffer sizes of a proxy that streams, nginx's logging and tracing modules);
- unsupported: not implemented, and serving without it exposes nothing that
  was protected (a redirect, CORS, affinity): reported, the Ingress is served;
- restricts access: not enforced, so the Ingress's routes are refused (503)
  unless the operator explicitly accepts serving them open;
- raw nginx configuration (snippets): never run, refused like an access
  annotation (a snippet may hold `deny` or `auth_request` lines), with a
  message saying what to use instead.

Pure: `review` takes the annotations and returns findings; routing turns
refusals into 503s and the data plane feed into Warning events.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal

NGINX_PREFIX: Final = "nginx.ingress.kubernetes.io/"
CERTCTL_PREFIX: Final = "certctl.io/"

# The annotation names (after either prefix) that certctl honours. Keep in step
# with certctl.api.annotations' *_KEYS tuples and ingress-shim's issuer keys.
SUPPORTED: Final = frozenset({
    # access rules (certctl.routes.access); auth-type other than basic is refused there
    "whitelist-source-range", "allowlist-source-range", "denylist-source-range", "auth-type",
    "auth-secret", "auth-secret-type", "auth-realm", "satisfy",
    # external authentication (certctl.dataplane.external_auth)
    "auth-url", "auth-method", "auth-signin", "auth-signin-redirect-param",
    "auth-response-headers", "auth-request-redirect", "auth-always-set-cookie",
    "auth-cache-key", "auth-cache-duration",
    # client certificates (certctl.routes.options.ClientCertificates)
    "auth-tls-secret", "auth-tls-verify-client", "auth-tls-verify-depth", "auth-tls-error-page",
    "auth-tls-pass-certificate-to-upstream", "auth-tls-match-cn",
    "upstream-vhost", "x-forwarded-prefix",
    "affinity", "affinity-mode", "session-cookie-name", "session-cookie-path",
    "session-cookie-domain", "session-cookie-expires", "session-cookie-max-age",
    "session-cookie-samesite", "session-cookie-secure",
    # request limits (certctl.routes.options.LimitRules, counted by certctl.dataplane.limits)
    "limit-rps", "limit-rpm", "limit-burst-multiplier", "limit-connections", "limit-whitelist",
    "limit-allowlist",
    "enable-cors", "cors-allow-origin", "cors-allow-methods", "cors-allow-headers",
    "cors-expose-headers", "cors-allow-credentials", "cors-max-age",
    "permanent-redirect", "permanent-redirect-code", "temporal-redirect",
    "temporal-redirect-code", "app-root", "from-to-www-redirect", "use-regex", "server-alias",
    "ssl-redirect", "force-ssl-redirect", "hsts", "hsts-max-age", "hsts-include-subdomains",
    "proxy-body-size", "proxy-read-timeout", "proxy-connect-timeout", "backend-protocol",
    "rewrite-target", "canary", "canary-weight", "canary-weight-total", "canary-by-header",
    "canary-by-header-value", "canary-by-header-pattern", "canary-by-cookie",
    # endpoint choice and retries (certctl.routes.options.Balancing, NextUpstream)
    "upstream-hash-by", "load-balance", "proxy-next-upstream", "proxy-next-upstream-tries",
    "proxy-next-upstream-timeout",
    # error pages (certctl.routes.options.ErrorPages)
    "custom-http-errors", "default-backend",
})
# certctl's own keys that are not data plane settings (certctl.io/ only).
CERTCTL_OWN: Final = frozenset({
    "cluster-issuer", "issuer", "issuer-kind", "issuer-group", "manifest-source",
})

# name -> why it changes nothing in certctl.
_STREAMS = "certctl streams bodies both ways and never buffers them to disk"
NO_OP: Final[dict[str, str]] = {
    "proxy-buffering": _STREAMS,
    "proxy-buffers-number": _STREAMS,
    "proxy-buffer-size": _STREAMS,
    "proxy-max-temp-file-size": _STREAMS,
    "client-body-buffer-size": _STREAMS,
    "proxy-request-buffering": _STREAMS,
    "session-cookie-change-on-failure": "a client whose endpoint fails or goes is always "
                                        "handed to another, with a new cookie",
    "session-cookie-conditional-samesite-none": "certctl sends SameSite=None (with Secure) "
                                                "to every browser",
    "proxy-send-timeout": "a backend that stops taking the request body is cut after "
                          "proxy-read-timeout, as a backend that stops answering is",
    "proxy-http-version": "certctl always speaks HTTP/1.1 to backends, with keep-alive",
    "connection-proxy-header": "certctl manages the upstream Connection header itself "
                               "(keep-alive, and Upgrade passed through)",
    "enable-access-log": "certctl has no per-request access log; see its request metrics",
    "enable-rewrite-log": "nginx's rewrite log has no counterpart in certctl",
    "enable-opentracing": "certctl has no tracing module",
    "opentracing-trust-incoming-span": "certctl has no tracing module",
    "enable-opentelemetry": "certctl has no tracing module",
    "opentelemetry-trust-incoming-span": "certctl has no tracing module",
    "opentelemetry-operation-name": "certctl has no tracing module",
    "enable-influxdb": "certctl exports Prometheus metrics, not InfluxDB",
    "influxdb-measurement": "certctl exports Prometheus metrics, not InfluxDB",
    "influxdb-port": "certctl exports Prometheus metrics, not InfluxDB",
    "influxdb-host": "certctl exports Prometheus metrics, not InfluxDB",
    "influxdb-server-name": "certctl exports Prometheus metrics, not InfluxDB",
    "http2-push-preload": "browsers no longer accept HTTP/2 server push",
    "preserve-trailing-slash": "certctl's redirects keep the path as sent, trailing "
                               "slash included",
    "enable-global-auth": "certctl has no global external authentication to opt out of",
    "auth-keepalive": "connections to the auth service are always kept alive and reused",
    "auth-keepalive-requests": "connections to the auth service are always kept alive",
    "auth-keepalive-timeout": "connections to the auth service are always kept alive",
    "auth-keepalive-share-vars": "each request gets its own subrequest's answer",
}

# Raw nginx configuration: name -> what to use instead.
SNIPPETS: Final[dict[str, str]] = {
    "configuration-snippet": "use the annotation for what the snippet did (e.g. "
                             "rewrite-target, ssl-redirect, canary-*), or an HTTPRoute filter",
    "server-snippet": "use the annotation for what the snippet did, or a Gateway listener "
                      "and HTTPRoute filters",
    "location-snippet": "use the annotation for what the snippet did",
    "stream-snippet": "certctl proxies HTTP only; expose TCP services with a Service of "
                      "type LoadBalancer",
    "auth-snippet": "raw nginx configuration cannot express certctl's authentication",
    "modsecurity-snippet": "certctl has no ModSecurity WAF; put a WAF in front of it",
}

# Names that restrict who may reach the backend (the supported ones aside).
_ACCESS_PREFIXES: Final = ("auth-", "limit-", "global-rate-limit")
# Names that restrict access only when switched on (to a value in lower case). Verifying
# an HTTPS backend's certificate keeps a man in the middle from the traffic: certctl does
# not, so it does not serve such an Ingress rather than serve it unverified.
_ACCESS_SWITCHES: Final = {"enable-modsecurity": "true", "enable-owasp-core-rules": "true",
                           "proxy-ssl-verify": "on"}

# Every other annotation ingress-nginx documents: known, not implemented, and
# serving without it exposes nothing its user protected with it: name -> what
# certctl does instead.
_BACKEND_TLS = ("certctl's TLS to HTTPS backends is unverified, as ingress-nginx's default "
                "proxy-ssl-verify off, with Python's TLS 1.2+ defaults and no client certificate")
_MIRROR = "certctl does not mirror requests"
UNSUPPORTED: Final[dict[str, str]] = {
    "affinity-canary-behavior": "certctl chooses the canary for each request by its weight, "
                                "header or cookie (ingress-nginx's legacy behaviour)",
    "custom-headers": "it names a ConfigMap, which certctl does not read; an HTTPRoute's "
                      "ResponseHeaderModifier filter adds response headers",
    "proxy-cookie-domain": "backends' Set-Cookie headers reach clients unchanged",
    "proxy-cookie-path": "backends' Set-Cookie headers reach clients unchanged",
    "proxy-redirect-from": "backends' Location headers reach clients unchanged",
    "proxy-redirect-to": "backends' Location headers reach clients unchanged",
    "proxy-ssl-secret": _BACKEND_TLS,
    "proxy-ssl-ciphers": _BACKEND_TLS,
    "proxy-ssl-name": _BACKEND_TLS,
    "proxy-ssl-protocols": _BACKEND_TLS,
    "proxy-ssl-verify-depth": _BACKEND_TLS,
    "proxy-ssl-server-name": _BACKEND_TLS,
    "service-upstream": "certctl balances over the Service's ready endpoints itself, as "
                        "kube-proxy would behind the ClusterIP",
    "ssl-passthrough": "certctl terminates TLS for every host it serves",
    "ssl-ciphers": "one TLS configuration serves every host (TLS 1.2 and 1.3, Python's "
                   "default ciphers)",
    "ssl-prefer-server-ciphers": "one TLS configuration serves every host",
    "upstream-hash-by-subset": "upstream-hash-by hashes over every endpoint",
    "upstream-hash-by-subset-size": "upstream-hash-by hashes over every endpoint",
    "mirror-request-body": _MIRROR,
    "mirror-target": _MIRROR,
    "mirror-host": _MIRROR,
    "modsecurity-transaction-id": "certctl has no ModSecurity (enable-modsecurity refuses "
                                  "the Ingress)",
}

Verdict = Literal["unsupported", "unknown", "restricts-access", "snippet"]
OPT_OUT_FLAG: Final = "--allow-unenforced-access-annotations"
# Event and condition reasons.
UNSUPPORTED_ANNOTATION: Final = "UnsupportedAnnotation"  # ignored, the Ingress is served
ACCESS_NOT_ENFORCED: Final = "AccessNotEnforced"  # routes refused (503), or open by opt-out


@dataclass(frozen=True, kw_only=True, slots=True)
class Finding:
    """One annotation certctl does not honour: the key as written, and what to tell the user."""

    key: str
    verdict: Verdict
    message: str

    @property
    def refuses_routes(self) -> bool:
        return self.verdict in ("restricts-access", "snippet")

    @property
    def reason(self) -> str:
        return ACCESS_NOT_ENFORCED if self.refuses_routes else UNSUPPORTED_ANNOTATION


@dataclass(frozen=True, kw_only=True, slots=True)
class Review:
    findings: tuple[Finding, ...]

    @property
    def refusals(self) -> tuple[Finding, ...]:
        """The findings that keep the Ingress's routes from being served."""
        return tuple(f for f in self.findings if f.refuses_routes)

    def conditions(self) -> list[dict[str, str]]:
        """What `certctl status ingress` shows: Ingresses have no conditions of their own."""
        ignored = [f for f in self.findings if not f.refuses_routes]
        return [
            _condition("AccessEnforced", self.refusals, ACCESS_NOT_ENFORCED,
                       "every access-restricting annotation is enforced"),
            _condition("AnnotationsSupported", ignored, UNSUPPORTED_ANNOTATION,
                       "every annotation is honoured"),
        ]


def _condition(type: str, findings: Sequence[Finding], reason: str, fine: str) -> dict[str, str]:
    if not findings:
        return {"type": type, "status": "True", "reason": "AsExpected", "message": fine}
    return {"type": type, "status": "False", "reason": reason,
            "message": "; ".join(f.message for f in findings)}


def review(annotations: dict[str, str]) -> Review:
    """Every ingress-nginx / certctl annotation of an Ingress that certctl does not honour."""
    findings = [
        finding
        for key in sorted(annotations)
        if (finding := _finding(key, annotations[key])) is not None
    ]
    return Review(findings=tuple(findings))


def _finding(key: str, value: str) -> Finding | None:
    if key.startswith(NGINX_PREFIX):
        name = key[len(NGINX_PREFIX):]
    elif key.startswith(CERTCTL_PREFIX):
        name = key[len(CERTCTL_PREFIX):]
        if name in CERTCTL_OWN:
            return None
    else:
        return None
    if name in SUPPORTED or name in NO_OP:
        return None
    if name in SNIPPETS:
        return Finding(key=key, verdict="snippet",
                       message=f"{key}: raw nginx configuration is never run by certctl, and it "
                       f"may restrict access, so the Ingress is not served; {SNIPPETS[name]}")
    if _restricts_access(name, value):
        return Finding(key=key, verdict="restricts-access",
                       message=f"{key}: restricts access and certctl does not enforce it yet, so "
                       "the Ingress is not served (503) rather than served open; remove the "
                       f"annotation, or run the data plane with {OPT_OUT_FLAG} to serve it "
                       "without that restriction")
    if name in UNSUPPORTED:
        return Finding(key=key, verdict="unsupported",
                       message=f"{key}: not supported by certctl and ignored ("
                       f"{UNSUPPORTED[name]}); the Ingress is served without it")
    if name in _ACCESS_SWITCHES:
        return None  # switched off: what certctl does
    return Finding(key=key, verdict="unknown",
                   message=f"{key}: not an annotation certctl or ingress-nginx knows; ignored")


def _restricts_access(name: str, value: str) -> bool:
    if name in _ACCESS_SWITCHES:
        return value.strip().lower() == _ACCESS_SWITCHES[name]
    return name.startswith(_ACCESS_PREFIXES)

