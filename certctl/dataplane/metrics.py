"""Prometheus metrics of the data plane, served by the admin address (certctl.admin).

Each DataPlane has its own registry (several run in one test process). The
request path only bumps plain ints in dicts (`counters.RequestCounts`), which a
collector turns into Prometheus families when scraped; prometheus_client's own
Counter and Histogram cost several times more per request (a lock each) and
showed up in B4's profile. Certificate figures are read from the index at
scrape time, never on the handshake path.

Label values are bounded by configuration, not by clients: `host` is the
Ingress rule's host as written ("*" for rules without one and default
backends, "" when nothing matched), `service` is `namespace/name`.
"""

from __future__ import annotations

from collections.abc import Iterator

import prometheus_client
from prometheus_client import core

from certctl.dataplane import certstore, counters


class Metrics:
    def __init__(self, *, certificates: certstore.CertificateIndex) -> None:
        self.registry = prometheus_client.CollectorRegistry()
        self.counts = counters.RequestCounts()  # by the request path and the TLS listener
        self.registry.register(_Collector(metrics=self, certificates=certificates))


class _Collector(prometheus_client.registry.Collector):
    """The figures read when Prometheus scrapes: handshake counts and certificates."""

    def __init__(self, *, metrics: Metrics, certificates: certstore.CertificateIndex) -> None:
        self._metrics = metrics
        self._certificates = certificates

    def collect(self) -> Iterator[core.Metric]:
        requests = core.CounterMetricFamily(
            "certctl_dataplane_requests",
            "Requests answered, by Ingress rule host and status code.",
            labels=["host", "status"],
        )
        for (host, status), count in list(self._metrics.counts.requests.items()):
            requests.add_metric([host, str(status)], count)
        yield requests
        latency = core.HistogramMetricFamily(
            "certctl_dataplane_upstream_response_seconds",
            "From sending a request to a backend until its response head arrived.",
            labels=["service"],
        )
        for service, observed in list(self._metrics.counts.latency.items()):
            cumulative, buckets = 0, []
            for bound, count in zip((*counters.LATENCY_BUCKETS, float("inf")), observed.counts,
                                    strict=True):
                cumulative += count
                buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
            latency.add_metric([service], buckets, observed.total)
        yield latency
        yield core.CounterMetricFamily(
            "certctl_dataplane_tls_handshakes",
            "TLS handshakes completed.",
            value=self._metrics.counts.handshakes,
        )
        yield core.CounterMetricFamily(
            "certctl_dataplane_tls_handshake_errors",
            "TLS handshakes that started and failed (protocol errors, timeouts, resets).",
            value=self._metrics.counts.handshake_errors,
        )
        loaded = self._certificates.loaded()
        yield core.GaugeMetricFamily(
            "certctl_dataplane_certificates",
            "Certificates loaded from Secrets.",
            value=len(loaded),
        )
        expiry = core.GaugeMetricFamily(
            "certctl_dataplane_certificate_expiry_timestamp_seconds",
            "When each loaded certificate expires (notAfter, Unix time).",
            labels=["namespace", "secret"],
        )
        for source, not_after in loaded:
            expiry.add_metric([source.namespace or "", source.name], not_after.timestamp())
        yield expiry
