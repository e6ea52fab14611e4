"""ingress-nginx's request limits: limit-rps, limit-rpm, limit-burst-multiplier,
limit-connections and limit-whitelist, answered 503 per client address.

The leaky-bucket arithmetic is checked with an injected clock; the data
plane over real sockets with concurrent clients and a backend that holds its
answers, so nothing here depends on how fast the machine is.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from certctl.dataplane import limits, routing
from certctl.routes import access, options
from certctl.routes import ingress as ingress_routes
from tests.test_dataplane import EchoServer
from tests.test_dataplane_http2 import H2Client
from tests.test_dataplane_proxy import RawServer, Running, read_head, running_plane, simple_ingress

NGINX = "nginx.ingress.kubernetes.io/"


# --- the arithmetic, with an injected clock ----------------------------------------------------


def _rules(**settings: Any) -> options.LimitRules:
    return options.LimitRules(zone="default/web", **settings)


def _admitted(state: limits.RequestLimits, rules: options.LimitRules, *, at: float,
              client: bytes = b"192.0.2.1") -> bool:
    return state.admit(rules=rules, client_ip=client, now=at)[0]


def test_rps_allows_burst_plus_one_at_once_then_one_per_interval():
    state, rules = limits.RequestLimits(), _rules(rps=2, burst_multiplier=3)  # burst 6
    assert [_admitted(state, rules, at=0.0) for _ in range(8)] == [True] * 7 + [False]
    assert not _admitted(state, rules, at=0.2)  # 0.4 drained: still over
    assert _admitted(state, rules, at=0.5)  # one request's worth drained
    assert not _admitted(state, rules, at=0.5)
    # Drained, a known client gets the burst; only an unseen one gets one more (nginx's
    # first request of a key leaves no excess).
    assert [_admitted(state, rules, at=10.0) for _ in range(8)] == [True] * 6 + [False] * 2


def test_default_burst_multiplier_is_five():
    state, rules = limits.RequestLimits(), _rules(rps=1)
    assert sum(_admitted(state, rules, at=0.0) for _ in range(20)) == 6


def test_rpm_counts_per_minute():
    state, rules = limits.RequestLimits(), _rules(rpm=6, burst_multiplier=1)
    assert sum(_admitted(state, rules, at=0.0) for _ in range(20)) == 7
    assert not _admitted(state, rules, at=9.0)
    assert _admitted(state, rules, at=10.0)


def test_clients_and_zones_are_counted_apart():
    state = limits.RequestLimits()
    web, api = _rules(rps=1, burst_multiplier=1), options.LimitRules(zone="default/api", rps=1,
                                                                     burst_multiplier=1)
    assert sum(_admitted(state, web, at=0.0) for _ in range(5)) == 2
    assert sum(_admitted(state, web, at=0.0, client=b"192.0.2.2") for _ in range(5)) == 2
    assert sum(_admitted(state, api, at=0.0) for _ in range(5)) == 2


def test_exempt_addresses_are_never_limited():
    state = limits.RequestLimits()
    rules = _rules(rps=1, burst_multiplier=1, connections=1,
                   exempt=access.parse_networks("limit-whitelist", "192.0.2.0/24, ::1"))
    assert all(_admitted(state, rules, at=0.0) for _ in range(50))
    assert all(_admitted(state, rules, at=0.0, client=b"::ffff:192.0.2.9") for _ in range(50))
    assert sum(_admitted(state, rules, at=0.0, client=b"198.51.100.1") for _ in range(5)) == 1


def test_connections_count_requests_in_progress_until_released():
    state, rules = limits.RequestLimits(), _rules(connections=2)
    first = state.admit(rules=rules, client_ip=b"192.0.2.1", now=0.0)
    second = state.admit(rules=rules, client_ip=b"192.0.2.1", now=0.0)
    assert first[0] and second[0]
    assert state.admit(rules=rules, client_ip=b"192.0.2.1", now=0.0) == (False, None)
    assert first[1] is not None
    state.release(first[1])
    assert state.admit(rules=rules, client_ip=b"192.0.2.1", now=0.0)[0]


@pytest.mark.parametrize("value", ["-1", "ten", "1.5"])
def test_unreadable_limit_refuses_the_ingress(value):
    table = routing.RouteTable.build(
        routes=ingress_routes.compile_ingresses(
            ingresses=[
                simple_ingress(
                    "t", {("t.test", "/"): "web"}, annotations={NGINX + "limit-rps": value}
                )
            ],
            ingress_classes=[],
            controller_name="certctl.io/ingress-controller",
            class_name=None,
        ),
        services=[],
        endpoint_slices=[],
    )
    match = table.match(host="t.test", path="/")
    assert match is not None and match.options.refusal is not None
    assert NGINX + "limit-rps" in match.options.refusal


# --- the data plane ---------------------------------------------------------------------------


class HeldBackend:
    """Answers 200 to each request only once `release` is set; counts requests seen."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.seen = 0
        self._lock = threading.Lock()
        self.server = RawServer(self._handle)

    def _handle(self, conn: Any) -> None:
        while read_head(conn):
            with self._lock:
                self.seen += 1
            self.release.wait(10)
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")


@pytest.fixture(scope="module")
def backends() -> Iterator[tuple[EchoServer, HeldBackend]]:
    echo, held = EchoServer("web"), HeldBackend()
    yield echo, held
    held.release.set()
    held.server.close()
    echo.shutdown()
    echo.server_close()


@pytest.fixture(scope="module")
def plane(backends) -> Iterator[Running]:
    echo, held = backends
    ingresses = [
        simple_ingress("rps", {("rps.test", "/"): "web"},
                       annotations={NGINX + "limit-rps": "1",
                                    NGINX + "limit-burst-multiplier": "1"}),
        simple_ingress("exempt", {("exempt.test", "/"): "web"},
                       annotations={NGINX + "limit-rps": "1",
                                    NGINX + "limit-burst-multiplier": "1",
                                    NGINX + "limit-whitelist": "127.0.0.1"}),
        simple_ingress("conn", {("conn.test", "/"): "held"},
                       annotations={NGINX + "limit-connections": "1"}),
        simple_ingress("conn-tls", {("conn-tls.test", "/"): "held"},
                       annotations={NGINX + "limit-connections": "1"}),
        simple_ingress("conn-fast", {("conn-fast.test", "/"): "web"},
                       annotations={NGINX + "limit-connections": "1"}),
    ]
    with running_plane(ingresses=ingresses,
                       backends={"web": (echo.port,), "held": (held.server.port,)},
                       tls_hosts=("conn-tls.test",)) as running:
        yield running


def _get(plane: Running, host: str) -> int:
    connection = plane.http()
    try:
        connection.request("GET", "/", headers={"Host": host})
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def test_rps_over_http_refuses_with_503_beyond_the_burst(plane):
    started = time.monotonic()
    statuses = [_get(plane, "rps.test") for _ in range(10)]
    elapsed = time.monotonic() - started
    # burst 1: two at once, then one a second; whatever the machine's pace:
    assert statuses.count(200) <= 2 + int(elapsed)
    assert set(statuses) <= {200, 503}
    if elapsed < 5:
        assert 503 in statuses


def test_rps_counts_survive_a_route_table_rebuild(plane):
    while _get(plane, "rps.test") == 200:
        pass
    plane.plane.set_routes(plane.plane.routes)  # what any other Ingress's change does
    assert _get(plane, "rps.test") == 503


def test_exempt_client_is_not_limited(plane):
    assert [_get(plane, "exempt.test") for _ in range(10)] == [200] * 10


def test_connections_limit_refuses_a_second_request_in_progress(plane, backends):
    _, held = backends
    held.release.clear()
    seen = held.seen
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(_get, plane, "conn.test")
        deadline = time.monotonic() + 10
        while held.seen == seen and time.monotonic() < deadline:
            time.sleep(0.01)
        assert held.seen == seen + 1  # the first request is at the backend, in progress
        assert _get(plane, "conn.test") == 503
        held.release.set()
        assert first.result(10) == 200
    assert _get(plane, "conn.test") == 200  # released when it ended


def test_http2_streams_in_progress_count_one_each(plane, backends):
    _, held = backends
    held.release.clear()
    client = H2Client(plane, "conn-tls.test")
    try:
        seen = held.seen
        first = client.request("GET", "/")
        deadline = time.monotonic() + 10
        while held.seen == seen and time.monotonic() < deadline:
            time.sleep(0.01)
        (second,) = client.wait(client.request("GET", "/"))
        assert second["status"] == 503
        held.release.set()
        (answered,) = client.wait(first)
        assert answered["status"] == 200
        (third,) = client.wait(client.request("GET", "/"))
        assert third["status"] == 200
    finally:
        held.release.set()
        client.close()


def test_requests_answered_one_after_another_never_hit_the_connections_limit(plane):
    assert [_get(plane, "conn-fast.test") for _ in range(20)] == [200] * 20
