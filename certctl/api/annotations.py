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

SSL_REDIRECT_KEYS = ("certctl.io/ssl-redirect", _NGINX + "ssl-redirect")
FORCE_SSL_REDIRECT_KEYS = ("certctl.io/force-ssl-redirect", _NGINX + "force-ssl-redirect")
# ingress-nginx reads the HSTS settings from its ConfigMap only; the Ingress
# keys are certctl's, with the ConfigMap names accepted under nginx's prefix.
HSTS_KEYS = ("certctl.io/hsts", _NGINX + "hsts")
HSTS_MAX_AGE_KEYS = ("certctl.io/hsts-max-age", _NGINX + "hsts-max-age")
HSTS_INCLUDE_SUBDOMAINS_KEYS = (
    "certctl.io/hsts-include-subdomains",
    _NGINX + "hsts-include-subdomains",
)
PROXY_BODY_SIZE_KEYS = ("certctl.io/proxy-body-size", _NGINX + "proxy-body-size")
PROXY_READ_TIMEOUT_KEYS = ("certctl.io/proxy-read-timeout", _NGINX + "proxy-read-timeout")
PROXY_CONNECT_TIMEOUT_KEYS = (
    "certctl.io/proxy-connect-timeout",
    _NGINX + "proxy-connect-timeout",
)
BACKEND_PROTOCOL_KEYS = ("certctl.io/backend-protocol", _NGINX + "backend-protocol")
REWRITE_TARGET_KEYS = ("certctl.io/rewrite-target", _NGINX + "rewrite-target")
CANARY_KEYS = ("certctl.io/canary", _NGINX + "canary")
CANARY_WEIGHT_KEYS = ("certctl.io/canary-weight", _NGINX + "canary-weight")
CANARY_WEIGHT_TOTAL_KEYS = ("certctl.io/canary-weight-total", _NGINX + "canary-weight-total")
CANARY_BY_HEADER_KEYS = ("certctl.io/canary-by-header", _NGINX + "canary-by-header")
CANARY_BY_HEADER_VALUE_KEYS = (
    "certctl.io/canary-by-header-value",
    _NGINX + "canary-by-header-value",
)
CANARY_BY_COOKIE_KEYS = ("certctl.io/canary-by-cookie", _NGINX + "canary-by-cookie")

# Access rules (certctl.routes.access). ingress-nginx renamed whitelist to
# allowlist in some places; both spellings are read, certctl's keys first.
ALLOWLIST_SOURCE_RANGE_KEYS = (
    "certctl.io/allowlist-source-range",
    "certctl.io/whitelist-source-range",
    _NGINX + "allowlist-source-range",
    _NGINX + "whitelist-source-range",
)
DENYLIST_SOURCE_RANGE_KEYS = ("certctl.io/denylist-source-range", _NGINX + "denylist-source-range")
AUTH_TYPE_KEYS = ("certctl.io/auth-type", _NGINX + "auth-type")
AUTH_SECRET_KEYS = ("certctl.io/auth-secret", _NGINX + "auth-secret")
AUTH_SECRET_TYPE_KEYS = ("certctl.io/auth-secret-type", _NGINX + "auth-secret-type")
AUTH_REALM_KEYS = ("certctl.io/auth-realm", _NGINX + "auth-realm")
SATISFY_KEYS = ("certctl.io/satisfy", _NGINX + "satisfy")

# Request limits (certctl.routes.options.LimitRules).
LIMIT_RPS_KEYS = ("certctl.io/limit-rps", _NGINX + "limit-rps")
LIMIT_RPM_KEYS = ("certctl.io/limit-rpm", _NGINX + "limit-rpm")
LIMIT_BURST_MULTIPLIER_KEYS = (
    "certctl.io/limit-burst-multiplier",
    _NGINX + "limit-burst-multiplier",
)
LIMIT_CONNECTIONS_KEYS = ("certctl.io/limit-connections", _NGINX + "limit-connections")
LIMIT_EXEMPT_KEYS = (
    "certctl.io/limit-allowlist",
    "certctl.io/limit-whitelist",
    _NGINX + "limit-allowlist",
    _NGINX + "limit-whitelist",
)

# CORS (certctl.routes.options.CorsPolicy).
ENABLE_CORS_KEYS = ("certctl.io/enable-cors", _NGINX + "enable-cors")
CORS_ALLOW_ORIGIN_KEYS = ("certctl.io/cors-allow-origin", _NGINX + "cors-allow-origin")
CORS_ALLOW_METHODS_KEYS = ("certctl.io/cors-allow-methods", _NGINX + "cors-allow-methods")
CORS_ALLOW_HEADERS_KEYS = ("certctl.io/cors-allow-headers", _NGINX + "cors-allow-headers")
CORS_EXPOSE_HEADERS_KEYS = ("certctl.io/cors-expose-headers", _NGINX + "cors-expose-headers")
CORS_ALLOW_CREDENTIALS_KEYS = (
    "certctl.io/cors-allow-credentials",
    _NGINX + "cors-allow-credentials",
)
CORS_MAX_AGE_KEYS = ("certctl.io/cors-max-age", _NGINX + "cors-max-age")

# Redirects (certctl.routes.options.Redirect).
PERMANENT_REDIRECT_KEYS = ("certctl.io/permanent-redirect", _NGINX + "permanent-redirect")
PERMANENT_REDIRECT_CODE_KEYS = (
    "certctl.io/permanent-redirect-code",
    _NGINX + "permanent-redirect-code",
)
TEMPORAL_REDIRECT_KEYS = ("certctl.io/temporal-redirect", _NGINX + "temporal-redirect")
TEMPORAL_REDIRECT_CODE_KEYS = (
    "certctl.io/temporal-redirect-code",
    _NGINX + "temporal-redirect-code",
)
APP_ROOT_KEYS = ("certctl.io/app-root", _NGINX + "app-root")
FROM_TO_WWW_REDIRECT_KEYS = ("certctl.io/from-to-www-redirect", _NGINX + "from-to-www-redirect")

# Regular-expression paths (certctl.routes.ingress).
USE_REGEX_KEYS = ("certctl.io/use-regex", _NGINX + "use-regex")
SERVER_ALIAS_KEYS = ("certctl.io/server-alias", _NGINX + "server-alias")

# External authentication (certctl.routes.options.ExternalAuth).
AUTH_URL_KEYS = ("certctl.io/auth-url", _NGINX + "auth-url")
AUTH_METHOD_KEYS = ("certctl.io/auth-method", _NGINX + "auth-method")
AUTH_SIGNIN_KEYS = ("certctl.io/auth-signin", _NGINX + "auth-signin")
AUTH_SIGNIN_REDIRECT_PARAM_KEYS = (
    "certctl.io/auth-signin-redirect-param",
    _NGINX + "auth-signin-redirect-param",
)
AUTH_RESPONSE_HEADERS_KEYS = ("certctl.io/auth-response-headers", _NGINX + "auth-response-headers")
AUTH_REQUEST_REDIRECT_KEYS = ("certctl.io/auth-request-redirect", _NGINX + "auth-request-redirect")
AUTH_ALWAYS_SET_COOKIE_KEYS = (
    "certctl.io/auth-always-set-cookie",
    _NGINX + "auth-always-set-cookie",
)
AUTH_CACHE_KEY_KEYS = ("certctl.io/auth-cache-key", _NGINX + "auth-cache-key")
AUTH_CACHE_DURATION_KEYS = ("certctl.io/auth-cache-duration", _NGINX + "auth-cache-duration")
