"""Annotation keys certctl reads from Ingresses and writes on Secrets.

We speak cert-manager's language: an Ingress annotated for cert-manager works
unchanged, and the Secrets we write carry the annotations cert-manager writes,
so tools that read them (kubectl cert-manager, dashboards) keep working.
Where certctl has its own key, the `*_KEYS` tuples list the keys the ingress
shim accepts for one setting, in precedence order: certctl's key first.
"""

# The SECRET_* names are annotation keys on Secrets, not secrets themselves.
# ruff: noqa: S105

from __future__ import annotations

# --- certctl's own Ingress keys -----------------------------------------------

CLUSTER_ISSUER = "certctl.io/cluster-issuer"
ISSUER = "certctl.io/issuer"
ISSUER_KIND = "certctl.io/issuer-kind"
ISSUER_GROUP = "certctl.io/issuer-group"
# The ACME profile of the Ingress's certificates (Certificate spec.acme.profile);
# cert-manager has no such key.
ACME_PROFILE = "certctl.io/acme-profile"
# The Certificate's spec.fallbackIssuerRefs, as `Kind/name` (or a name alone, of the kind
# the first choice's annotation names), comma-separated in order; and its
# spec.fallbackAfterFailedAttempts. cert-manager has no fallback issuers.
FALLBACK_ISSUERS = "certctl.io/fallback-issuers"
FALLBACK_AFTER_FAILED_ATTEMPTS = "certctl.io/fallback-after-failed-attempts"

# --- cert-manager's ingress-shim keys -----------------------------------------

CM_CLUSTER_ISSUER = "cert-manager.io/cluster-issuer"
CM_ISSUER = "cert-manager.io/issuer"
CM_ISSUER_KIND = "cert-manager.io/issuer-kind"
CM_ISSUER_GROUP = "cert-manager.io/issuer-group"
CM_COMMON_NAME = "cert-manager.io/common-name"
CM_DURATION = "cert-manager.io/duration"
CM_RENEW_BEFORE = "cert-manager.io/renew-before"
CM_PRIVATE_KEY_ALGORITHM = "cert-manager.io/private-key-algorithm"
CM_PRIVATE_KEY_SIZE = "cert-manager.io/private-key-size"
CM_PRIVATE_KEY_ENCODING = "cert-manager.io/private-key-encoding"
CM_PRIVATE_KEY_ROTATION_POLICY = "cert-manager.io/private-key-rotation-policy"
CM_USAGES = "cert-manager.io/usages"
CM_REVISION_HISTORY_LIMIT = "cert-manager.io/revision-history-limit"

# --- Kubernetes keys -------------------------------------------------------------

INGRESS_CLASS = "kubernetes.io/ingress.class"
# On an IngressClass: "true" makes it the class of Ingresses that name none.
INGRESS_CLASS_IS_DEFAULT = "ingressclass.kubernetes.io/is-default-class"

# --- certctl's bookkeeping -------------------------------------------------------

# Standalone mode: the manifest file (and document index) an object came from,
# or was derived from, so every error and event can name it.
MANIFEST_SOURCE = "certctl.io/manifest-source"

# --- keys accepted for one setting, in precedence order --------------------------

ISSUER_KIND_KEYS = (ISSUER_KIND, CM_ISSUER_KIND)
ISSUER_GROUP_KEYS = (ISSUER_GROUP, CM_ISSUER_GROUP)

# --- keys written on the kubernetes.io/tls Secret (as cert-manager writes them) ---

SECRET_CERTIFICATE_NAME = "cert-manager.io/certificate-name"
SECRET_ISSUER_NAME = "cert-manager.io/issuer-name"
SECRET_ISSUER_KIND = "cert-manager.io/issuer-kind"
SECRET_ISSUER_GROUP = "cert-manager.io/issuer-group"
SECRET_COMMON_NAME = "cert-manager.io/common-name"
SECRET_ALT_NAMES = "cert-manager.io/alt-names"
SECRET_IP_SANS = "cert-manager.io/ip-sans"
SECRET_URI_SANS = "cert-manager.io/uri-sans"

# --- data plane settings on Ingresses ---------------------------------------------
# certctl's key first, then ingress-nginx's, so Ingresses written for
# ingress-nginx keep their behaviour when moved to certctl.

_NGINX = "nginx.ingress.kubernetes.io/"


def _keys(*names: str) -> tuple[str, ...]:
    """The keys of one setting, in precedence order: every `certctl.io/<name>`, then every
    ingress-nginx `<name>` (a setting ingress-nginx renamed has both names)."""
    return (*("certctl.io/" + name for name in names), *(_NGINX + name for name in names))


SSL_REDIRECT_KEYS = _keys("ssl-redirect")
FORCE_SSL_REDIRECT_KEYS = _keys("force-ssl-redirect")
# ingress-nginx reads the HSTS settings from its ConfigMap only; the Ingress
# keys are certctl's, with the ConfigMap names accepted under nginx's prefix.
HSTS_KEYS = _keys("hsts")
HSTS_MAX_AGE_KEYS = _keys("hsts-max-age")
HSTS_INCLUDE_SUBDOMAINS_KEYS = _keys("hsts-include-subdomains")
PROXY_BODY_SIZE_KEYS = _keys("proxy-body-size")
PROXY_READ_TIMEOUT_KEYS = _keys("proxy-read-timeout")
PROXY_CONNECT_TIMEOUT_KEYS = _keys("proxy-connect-timeout")
BACKEND_PROTOCOL_KEYS = _keys("backend-protocol")
REWRITE_TARGET_KEYS = _keys("rewrite-target")
CANARY_KEYS = _keys("canary")
CANARY_WEIGHT_KEYS = _keys("canary-weight")
CANARY_WEIGHT_TOTAL_KEYS = _keys("canary-weight-total")
CANARY_BY_HEADER_KEYS = _keys("canary-by-header")
CANARY_BY_HEADER_VALUE_KEYS = _keys("canary-by-header-value")
CANARY_BY_HEADER_PATTERN_KEYS = _keys("canary-by-header-pattern")
CANARY_BY_COOKIE_KEYS = _keys("canary-by-cookie")

# Access rules (certctl.routes.access). ingress-nginx renamed whitelist to
# allowlist in some places; both spellings are read, certctl's keys first.
ALLOWLIST_SOURCE_RANGE_KEYS = _keys("allowlist-source-range", "whitelist-source-range")
DENYLIST_SOURCE_RANGE_KEYS = _keys("denylist-source-range")
AUTH_TYPE_KEYS = _keys("auth-type")
AUTH_SECRET_KEYS = _keys("auth-secret")
AUTH_SECRET_TYPE_KEYS = _keys("auth-secret-type")
AUTH_REALM_KEYS = _keys("auth-realm")
SATISFY_KEYS = _keys("satisfy")

# Request limits (certctl.routes.options.LimitRules).
LIMIT_RPS_KEYS = _keys("limit-rps")
LIMIT_RPM_KEYS = _keys("limit-rpm")
LIMIT_BURST_MULTIPLIER_KEYS = _keys("limit-burst-multiplier")
LIMIT_CONNECTIONS_KEYS = _keys("limit-connections")
LIMIT_EXEMPT_KEYS = _keys("limit-allowlist", "limit-whitelist")

# CORS (certctl.routes.options.CorsPolicy).
ENABLE_CORS_KEYS = _keys("enable-cors")
CORS_ALLOW_ORIGIN_KEYS = _keys("cors-allow-origin")
CORS_ALLOW_METHODS_KEYS = _keys("cors-allow-methods")
CORS_ALLOW_HEADERS_KEYS = _keys("cors-allow-headers")
CORS_EXPOSE_HEADERS_KEYS = _keys("cors-expose-headers")
CORS_ALLOW_CREDENTIALS_KEYS = _keys("cors-allow-credentials")
CORS_MAX_AGE_KEYS = _keys("cors-max-age")

# Redirects (certctl.routes.options.Redirect).
PERMANENT_REDIRECT_KEYS = _keys("permanent-redirect")
PERMANENT_REDIRECT_CODE_KEYS = _keys("permanent-redirect-code")
TEMPORAL_REDIRECT_KEYS = _keys("temporal-redirect")
TEMPORAL_REDIRECT_CODE_KEYS = _keys("temporal-redirect-code")
APP_ROOT_KEYS = _keys("app-root")
FROM_TO_WWW_REDIRECT_KEYS = _keys("from-to-www-redirect")

# Regular-expression paths (certctl.routes.ingress).
USE_REGEX_KEYS = _keys("use-regex")
SERVER_ALIAS_KEYS = _keys("server-alias")

# External authentication (certctl.routes.options.ExternalAuth).
AUTH_URL_KEYS = _keys("auth-url")
AUTH_METHOD_KEYS = _keys("auth-method")
AUTH_SIGNIN_KEYS = _keys("auth-signin")
AUTH_SIGNIN_REDIRECT_PARAM_KEYS = _keys("auth-signin-redirect-param")
AUTH_RESPONSE_HEADERS_KEYS = _keys("auth-response-headers")
AUTH_REQUEST_REDIRECT_KEYS = _keys("auth-request-redirect")
AUTH_ALWAYS_SET_COOKIE_KEYS = _keys("auth-always-set-cookie")
AUTH_CACHE_KEY_KEYS = _keys("auth-cache-key")
AUTH_CACHE_DURATION_KEYS = _keys("auth-cache-duration")

# Client certificates (certctl.routes.options.ClientCertificates).
AUTH_TLS_SECRET_KEYS = _keys("auth-tls-secret")
AUTH_TLS_VERIFY_CLIENT_KEYS = _keys("auth-tls-verify-client")
AUTH_TLS_VERIFY_DEPTH_KEYS = _keys("auth-tls-verify-depth")
AUTH_TLS_ERROR_PAGE_KEYS = _keys("auth-tls-error-page")
AUTH_TLS_PASS_CERTIFICATE_KEYS = _keys("auth-tls-pass-certificate-to-upstream")
AUTH_TLS_MATCH_CN_KEYS = _keys("auth-tls-match-cn")

# What goes to the backend.
UPSTREAM_VHOST_KEYS = _keys("upstream-vhost")
X_FORWARDED_PREFIX_KEYS = _keys("x-forwarded-prefix")

# Session affinity (certctl.routes.options.Affinity).
AFFINITY_KEYS = _keys("affinity")
AFFINITY_MODE_KEYS = _keys("affinity-mode")
SESSION_COOKIE_NAME_KEYS = _keys("session-cookie-name")
SESSION_COOKIE_PATH_KEYS = _keys("session-cookie-path")
SESSION_COOKIE_DOMAIN_KEYS = _keys("session-cookie-domain")
SESSION_COOKIE_EXPIRES_KEYS = _keys("session-cookie-max-age", "session-cookie-expires")
SESSION_COOKIE_SAMESITE_KEYS = _keys("session-cookie-samesite")
SESSION_COOKIE_SECURE_KEYS = _keys("session-cookie-secure")
