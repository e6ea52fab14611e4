"""What the request path counts for the data plane's metrics (`metrics.Metrics`, which
turns it into Prometheus families when scraped).

Plain ints in dicts, without locks (everything runs on the event loop), in a module
compiled with the per-request ones (pyproject.toml's `[tool.certctl.mypyc]`): a request
counts itself with two native calls, where the same methods on `metrics.Metrics`, an
interpreted class, cost about 2 % of B4's CPU a request (perf).
"""

from __future__ import annotations

from typing import Final

LATENCY_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
                          30)


class Latency:
    """One service's upstream response times: a count per bucket of LATENCY_BUCKETS (and
    one for beyond the last), and their sum in seconds."""

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.total = 0.0


class RequestCounts:
    """Requests answered by (route host, status), upstream response times per service, and
    TLS handshakes completed and failed."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, int], int] = {}
        self.latency: dict[str, Latency] = {}
        self.handshakes = 0
        self.handshake_errors = 0

    def count_handshake(self, completed: bool) -> None:
        if completed:
            self.handshakes += 1
        else:
            self.handshake_errors += 1

    def count_request(self, *, host: str, status: int) -> None:
        key = (host, status)
        requests = self.requests
        requests[key] = requests.get(key, 0) + 1

    def observe_upstream(self, *, service: str, seconds: float) -> None:
        found = self.latency.get(service)
        if found is None:
            found = self.latency[service] = Latency()
        bucket = 0  # the first bound at or above `seconds` (a response takes a few at most)
        for bound in LATENCY_BUCKETS:
            if seconds <= bound:
                break
            bucket += 1
        found.counts[bucket] += 1
        found.total += seconds
