"""Per-client request limits: ingress-nginx's limit-rps, limit-rpm and limit-connections.

As in ingress-nginx, each Ingress is one zone and each client address one
key in it (the TCP peer's address), and a refused request gets 503:
- `limit-rps` / `limit-rpm`: nginx's `limit_req ... burst=<rate x
  limit-burst-multiplier (default 5)> nodelay`: a client may send burst + 1
  requests at once, then one per 1/rate seconds; the excess decays at the
  rate. With both set, both apply.
- `limit-connections`: nginx's `limit_conn`: requests of one client in
  progress at once (each HTTP/2 stream counts, as in nginx).
- `limit-whitelist` (or `limit-allowlist`): addresses and CIDRs exempt.

The state lives in the data plane (`RequestLimits`), not in the route table,
so a rebuild after an unrelated change does not hand every client a new
burst; a rule change keeps the counts too. Limits are per data-plane
process (per replica in a cluster), as ingress-nginx's are per pod.
"""

from __future__ import annotations

from typing import Final

from certctl.routes import options

_MAX_KEYS: Final = 100_000  # client states kept per kind; the oldest go first beyond it

Slot = tuple[str, bytes]  # (zone, client address) of a request counted by limit-connections


class RequestLimits:
    """The counts behind every Ingress's limits, kept across route table rebuilds."""

    __slots__ = ("_excess", "_in_progress")

    def __init__(self) -> None:
        # (zone, per-second rate, client) -> (excess requests, when last updated)
        self._excess: dict[tuple[str, float, bytes], tuple[float, float]] = {}
        self._in_progress: dict[Slot, int] = {}

    def admit(
        self, *, rules: options.LimitRules, client_ip: bytes, now: float
    ) -> tuple[bool, Slot | None]:
        """(False, None) when over a limit (503); else (True, the slot to release when the
        request ends, None without limit-connections)."""
        if rules.exempts(client_ip):
            return True, None
        rates = []
        if rules.rps:
            rates.append((rules.rps, rules.rps * rules.burst_multiplier))
        if rules.rpm:
            rates.append((rules.rpm / 60.0, rules.rpm * rules.burst_multiplier))
        for per_second, burst in rates:
            if not self._within_rate(key=(rules.zone, per_second, client_ip),
                                     per_second=per_second, burst=burst, now=now):
                return False, None
        if rules.connections is None:
            return True, None
        slot = (rules.zone, client_ip)
        count = self._in_progress.get(slot, 0)
        if count >= rules.connections:
            return False, None
        self._in_progress[slot] = count + 1
        return True, slot

    def release(self, slot: Slot) -> None:
        count = self._in_progress.get(slot, 0) - 1
        if count > 0:
            self._in_progress[slot] = count
        else:
            self._in_progress.pop(slot, None)

    def _within_rate(
        self, *, key: tuple[str, float, bytes], per_second: float, burst: float, now: float
    ) -> bool:
        """nginx's leaky bucket: the excess drains at the rate; over `burst` is refused."""
        found = self._excess.get(key)
        if found is None:
            if len(self._excess) >= _MAX_KEYS:
                del self._excess[next(iter(self._excess))]
            self._excess[key] = (0.0, now)
            return True
        excess, last = found
        excess = max(0.0, excess - per_second * (now - last)) + 1.0
        if excess > burst:
            return False
        self._excess[key] = (excess, now)
        return True
