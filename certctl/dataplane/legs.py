"""The leg a forwarded request goes out on, for HTTP/1.1 and HTTP/2 clients alike.

A route's backend-protocol says which: a pooled HTTP/1.1 connection
(`upstream.Pool`) or a stream on an HTTP/2 backend's connection
(`upstream_h2.Pool`: GRPC, GRPCS, H2C). A client connection's exchange
(`connection`, `http2`) takes an idle one at once when there is one, else
opens one in a task; either way it gets back a `Leg` to attach the request to.
"""

from __future__ import annotations

from certctl.dataplane import routing, services, upstream, upstream_h2

# The two kinds of `upstream.Leg`, each attached to its request its own way.
Leg = upstream.UpstreamConnection | upstream_h2.Stream


def take(services: services.Services, match: routing.RouteMatch, start: int) -> Leg | None:
    """An idle leg to the endpoint at `start`, if there is one now."""
    address = match.upstreams[start]
    if match.backend_h2:
        return services.h2_pool.take(address, match.backend_tls)
    return services.pool.take(address, match.backend_tls)


async def connect(
    services: services.Services, match: routing.RouteMatch, *, start: int, fresh: bool,
    tried: int, tried_since: float,
) -> Leg | None:
    """A leg to the first endpoint from `start` that has an idle one (unless `fresh`) or
    accepts a new connection, within the route's proxy-next-upstream budget
    (`upstream.connect_for`); None when none did."""
    if match.backend_h2:
        return await upstream.connect_for(
            services.h2_pool, match, start=start, fresh=fresh,
            default_timeout=services.connect_timeout, tried=tried, tried_since=tried_since)
    return await upstream.connect_for(
        services.pool, match, start=start, fresh=fresh,
        default_timeout=services.connect_timeout, tried=tried, tried_since=tried_since)
