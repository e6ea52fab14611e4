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
CM_EMAIL_SANS = "cert-manager.io/email-sans"
CM_SUBJECT_ORGANIZATIONS = "cert-manager.io/subject-organizations"
CM_REVISION_HISTORY_LIMIT = "cert-manager.io/revision-history-limit"

# --- Kubernetes keys -------------------------------------------------------------

INGRESS_CLASS = "kubernetes.io/ingress.class"
# kube-lego's opt-in, still honoured by cert-manager when a default issuer is configured.
TLS_ACME = "kubernetes.io/tls-acme"
# On an IngressClass: "true" makes it the class of Ingresses that name none.
INGRESS_CLASS_IS_DEFAULT = "ingressclass.kubernetes.io/is-default-class"

# --- certctl's bookkeeping -------------------------------------------------------

# Standalone mode: the manifest file (and document index) an object came from,
# or was derived from, so every error and event can name it.
MANIFEST_SOURCE = "certctl.io/manifest-source"

# --- keys accepted for one setting, in precedence order --------------------------

CLUSTER_ISSUER_KEYS = (CLUSTER_ISSUER, CM_CLUSTER_ISSUER)
ISSUER_KEYS = (ISSUER, CM_ISSUER)
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
