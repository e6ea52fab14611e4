"""Controller metrics for Prometheus, under cert-manager's names so its dashboards and
alerts work unchanged.

Issuances are counted from the Certificates' status as their watch events
show it (`observe_certificate`): `status.revision` going up is one certificate
issued, a new `status.lastFailureTime` one failed attempt. The reconcilers are
not touched, and an event the leader sees is counted once, by the leader only.

Certificate gauges are computed at scrape time from the Certificates' status
(one list per scrape), so they can never disagree with what `certctl status`
shows, and an idle controller does no metrics work at all. ACME requests are
counted as they happen, from a response hook on the ACME client's HTTP session.

One difference: prometheus_client exposes counters with a `_total` suffix, so
cert-manager's `certmanager_http_acme_client_request_count` is scraped as
`certmanager_http_acme_client_request_count_total`.
"""

from __future__ import annotations

import re
import threading
import urllib.parse
from collections.abc import Iterator
from typing import TYPE_CHECKING

import prometheus_client
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from certctl.api import conditions
from certctl.api.resources import ObjectKey
from certctl.store.interface import Object, Store, WatchEvent

if TYPE_CHECKING:
    from certctl.issuers.acme.client import AcmeExchange

ACME_LABELS = ("scheme", "host", "path", "method", "status")
CERTIFICATE_LABELS = ("name", "namespace", "issuer_name", "issuer_kind", "issuer_group")
ISSUANCE_LABELS = ("issuer_name", "issuer_kind", "issuer_group", "result")
# A path segment that names one object (an order, an authorization...) rather than a
# kind of request: a number or a long random token (an ARI CertID is two, joined by a
# dot). It and everything after it are scrubbed, to keep label values few.
_OBJECT_ID = re.compile(r"^\d+$|^[A-Za-z0-9_.-]{16,}$")


def acme_path(url: str) -> str:
    """`/my-order/Hgy6o...` -> `/my-order/*`; `/acme/chall-v3/12/Ab3d` -> `/acme/chall-v3/*/*`."""
    parts = (urllib.parse.urlsplit(url).path or "/").split("/")
    for index, part in enumerate(parts):
        if _OBJECT_ID.match(part):
            return "/".join([*parts[:index], *("*" for _ in parts[index:])])
    return "/".join(parts)


class ControllerMetrics:
    def __init__(self, *, store: Store,
                 registry: prometheus_client.CollectorRegistry | None = None) -> None:
        self.registry = registry or prometheus_client.CollectorRegistry()
        self._acme_requests = prometheus_client.Counter(
            "certmanager_http_acme_client_request_count",
            "The number of requests made by the ACME client.",
            ACME_LABELS, registry=self.registry)
        self._acme_duration = prometheus_client.Histogram(
            "certmanager_http_acme_client_request_duration_seconds",
            "The HTTP request latencies in seconds for the ACME client.",
            ACME_LABELS, registry=self.registry)
        self._issuances = prometheus_client.Counter(
            "certctl_certificate_issuances",
            "Issuances that ended, by issuer and result: success (a certificate was stored) "
            "or failure (the attempt failed and backs off).",
            ISSUANCE_LABELS, registry=self.registry)
        # Certificate -> (status.revision, status.lastFailureTime) last seen.
        self._seen: dict[ObjectKey, tuple[int, str | None]] = {}
        self._seen_lock = threading.Lock()
        self.registry.register(_CertificateCollector(store=store))

    def observe_certificate(self, event: WatchEvent) -> None:
        """Count the issuance a Certificate's watch event shows ended. The first event of a
        Certificate (a start's initial listing) only records where it stands."""
        if event.key.kind != "Certificate":
            return
        status = event.obj.get("status") or {}
        now = (int(status.get("revision") or 0), status.get("lastFailureTime"))
        with self._seen_lock:
            if event.type == "DELETED":
                self._seen.pop(event.key, None)
                return
            before = self._seen.get(event.key)
            self._seen[event.key] = now
        if before is None:
            return
        labels = _issuer_labels(event.obj)
        if now[0] > before[0]:
            self._issuances.labels(*labels, "success").inc(now[0] - before[0])
        if now[1] is not None and now[1] != before[1]:
            self._issuances.labels(*labels, "failure").inc()

    def observe_acme_response(self, exchange: AcmeExchange) -> None:
        """Count and time one ACME HTTP request (the ACME clients' `on_response`)."""
        parts = urllib.parse.urlsplit(exchange.url)
        labels = (parts.scheme, parts.netloc, acme_path(exchange.url), exchange.method,
                  str(exchange.status))
        self._acme_requests.labels(*labels).inc()
        self._acme_duration.labels(*labels).observe(exchange.seconds)


class _CertificateCollector(Collector):
    def __init__(self, *, store: Store) -> None:
        self._store = store

    def collect(self) -> Iterator[GaugeMetricFamily]:
        expiration = GaugeMetricFamily(
            "certmanager_certificate_expiration_timestamp_seconds",
            "The date after which the certificate expires, as a Unix timestamp.",
            labels=CERTIFICATE_LABELS)
        renewal = GaugeMetricFamily(
            "certmanager_certificate_renewal_timestamp_seconds",
            "The time after which the certificate will be renewed, as a Unix timestamp.",
            labels=CERTIFICATE_LABELS)
        ready = GaugeMetricFamily(
            "certmanager_certificate_ready_status",
            "The ready status of the certificate.",
            labels=(*CERTIFICATE_LABELS, "condition"))
        for certificate in self._store.list(kind="Certificate"):
            metadata = certificate["metadata"]
            labels = [metadata["name"], metadata.get("namespace") or "",
                      *_issuer_labels(certificate)]
            status = certificate.get("status") or {}
            for family, field in ((expiration, "notAfter"), (renewal, "renewalTime")):
                if status.get(field):
                    family.add_metric(labels, conditions.parse_time(status[field]).timestamp())
            current = conditions.get_condition(status.get("conditions") or [], "Ready")
            state = current.get("status", "Unknown") if current else "Unknown"
            for value in ("True", "False", "Unknown"):
                ready.add_metric([*labels, value], 1.0 if state == value else 0.0)
        yield expiration
        yield renewal
        yield ready


def _issuer_labels(certificate: Object) -> list[str]:
    """issuer_name, issuer_kind, issuer_group of a Certificate, as cert-manager labels them."""
    ref = (certificate.get("spec") or {}).get("issuerRef") or {}
    return [str(ref.get("name", "")), str(ref.get("kind", "Issuer")), str(ref.get("group", ""))]
