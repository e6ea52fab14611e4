"""ingress-nginx's endpoint choice and retries through the data plane, over real sockets with
real backends, on HTTP/1.1 and HTTP/2: `upstream-hash-by`, `load-balance: ewma`,
`proxy-next-upstream` with `-tries` and `-timeout`."""

from __future__ import annotations

import collections
import dataclasses
import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from certctl.api import nginx_annotations
from certctl.dataplane import dispatch, routing
from certctl.routes import ingress as ingress_routes
from tests.test_dataplane import EchoServer, closed_port
from tests.test_dataplane_http2 import H2Client
from tests.test_dataplane_proxy import RawServer, Running, read_head, running_plane, simple_ingress

NGINX = "nginx.ingress.kubernetes.io/"


class Counted:
    """A raw backend answering `status` with its name as the body after `delay` seconds
    (or, with status 0, closing without an answer); counts the requests it got."""

    def __init__(self, name: str, *, status: int, delay: float = 0.0) -> None:
        self.name = name
        self.status = status
        self.delay = delay
        self.hits = 0
        self.server = RawServer(self._handle)
        self.port = self.server.port

    def _handle(self, conn: socket.socket) -> None:
        while True:
            data = read_head(conn)
            if not data:
                return
            head, _, body = data.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            while len(body) < length:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                body += chunk
            self.hits += 1
            time.sleep(self.delay)
            if not self.status:
                return  # the connection closes unanswered
            answer = self.name.encode()
            conn.sendall(b"HTTP/1.1 %d Answer\r\ncontent-length: %d\r\n\r\n%s"
                         % (self.status, len(answer), answer))


def _who(body: bytes) -> str:
    return str(json.loads(body)["backend"]) if body.startswith(b"{") else body.decode()


@pytest.fixture(scope="module")
def backends() -> Iterator[dict[str, Any]]:
    echoes = {name: EchoServer(name) for name in ("a", "b", "c", "ok")}
    raws = {
        "bad": Counted("bad", status=502), "bad2": Counted("bad2", status=503),
        "dropper": Counted("dropper", status=0),
        "slow": Counted("slow", status=200, delay=0.15), "fast": Counted("fast", status=200),
        "late1": Counted("late1", status=504, delay=0.6),
        "late2": Counted("late2", status=504, delay=0.6),
        "stall": Counted("stall", status=200, delay=4),
    }
    yield {**echoes, **raws, "closed": closed_port()}
    for echo in echoes.values():
        echo.shutdown()
        echo.server_close()
    for raw in raws.values():
        raw.server.close()


@pytest.fixture(scope="module")
def plane(backends: dict[str, Any]) -> Iterator[Running]:
    def port(name: str) -> int:
        return int(backends[name].port)

    trio = (port("a"), port("b"), port("c"))
    retry = (port("bad"), port("ok"))
    ingresses = [
        simple_ingress("by-uri", {("uri.test", "/"): "trio"},
                       annotations={NGINX + "upstream-hash-by": "$request_uri"}),
        simple_ingress("by-user", {("user.test", "/"): "trio"},
                       annotations={NGINX + "upstream-hash-by": "$http_x_user"}),
        simple_ingress("by-cookie", {("cookie.test", "/"): "trio"},
                       annotations={NGINX + "upstream-hash-by": "$cookie_x"}),
        simple_ingress("by-addr", {("addr.test", "/"): "trio"},
                       annotations={NGINX + "upstream-hash-by": "$remote_addr"}),
        simple_ingress("rr", {("rr.test", "/"): "trio"},
                       annotations={NGINX + "load-balance": "round_robin"}),
        simple_ingress("ewma", {("ewma.test", "/"): "mixed"},
                       annotations={NGINX + "load-balance": "ewma"}),
        simple_ingress("even", {("even.test", "/"): "mixed"}),
        # proxy-next-upstream: the first endpoint pinned by $arg_k (see _key_for)
        simple_ingress("on502", {("on502.test", "/"): "retry"}, annotations={
            NGINX + "upstream-hash-by": "$arg_k",
            NGINX + "proxy-next-upstream": "error timeout http_502"}),
        simple_ingress("on502-post", {("post.test", "/"): "retry"}, annotations={
            NGINX + "upstream-hash-by": "$arg_k",
            NGINX + "proxy-next-upstream": "error http_502 non_idempotent"}),
        simple_ingress("errors-only", {("errors.test", "/"): "retry"}, annotations={
            NGINX + "upstream-hash-by": "$arg_k", NGINX + "proxy-next-upstream": "error"}),
        simple_ingress("refused-off", {("off.test", "/"): "refused"}, annotations={
            NGINX + "upstream-hash-by": "$arg_k", NGINX + "proxy-next-upstream": "off"}),
        simple_ingress("refused-error", {("refused.test", "/"): "refused"}, annotations={
            NGINX + "upstream-hash-by": "$arg_k", NGINX + "proxy-next-upstream": "error"}),
        simple_ingress("dropped", {("dropped.test", "/"): "dropping"}, annotations={
            NGINX + "upstream-hash-by": "$arg_k", NGINX + "proxy-next-upstream": "error"}),
        simple_ingress("two-tries", {("tries.test", "/"): "chain"}, annotations={
            NGINX + "upstream-hash-by": "$arg_k",
            NGINX + "proxy-next-upstream": "http_502 http_503",
            NGINX + "proxy-next-upstream-tries": "2"}),
        simple_ingress("all-tries", {("alltries.test", "/"): "chain"}, annotations={
            NGINX + "upstream-hash-by": "$arg_k",
            NGINX + "proxy-next-upstream": "http_502 http_503",
            NGINX + "proxy-next-upstream-tries": "0"}),
        simple_ingress("timed", {("timed.test", "/"): "late"}, annotations={
            NGINX + "upstream-hash-by": "$arg_k", NGINX + "proxy-next-upstream": "http_504",
            NGINX + "proxy-next-upstream-timeout": "1"}),
        simple_ingress("untimed", {("untimed.test", "/"): "late"}, annotations={
            NGINX + "upstream-hash-by": "$arg_k", NGINX + "proxy-next-upstream": "http_504"}),
        simple_ingress("stalled", {("stalled.test", "/"): "stalling"}, annotations={
            NGINX + "upstream-hash-by": "$arg_k", NGINX + "proxy-next-upstream": "timeout",
            NGINX + "proxy-read-timeout": "1"}),
        simple_ingress("stalled-errors", {("stalled-errors.test", "/"): "stalling"},
                       annotations={NGINX + "upstream-hash-by": "$arg_k",
                                    NGINX + "proxy-next-upstream": "error",
                                    NGINX + "proxy-read-timeout": "1"}),
    ]
    # plain HTTP answered too, for the hosts with a certificate (HTTP/2)
    ingresses = [dataclasses.replace(ingress, annotations=(
        *ingress.annotations, (NGINX + "ssl-redirect", "false"))) for ingress in ingresses]
    with running_plane(ingresses=ingresses, tls_hosts=("uri.test", "on502.test", "post.test",
                                                        "stalled.test", "ewma.test",
                                                        "refused.test"),
                       backends={
                           "trio": trio, "retry": retry, "mixed": (port("slow"), port("fast")),
                           "refused": (backends["closed"], port("ok")),
                           "dropping": (port("dropper"), port("ok")),
                           "chain": (port("bad"), port("bad2"), port("ok")),
                           "late": (port("late1"), port("late2"), port("ok")),
                           "stalling": (port("stall"), port("ok")),
                       }) as running:
        yield running


def _get(plane: Running, host: str, path: str = "/", method: str = "GET",
         headers: dict[str, str] | None = None, body: bytes | None = None) -> tuple[int, str]:
    connection = plane.http()
    try:
        connection.request(method, path, body=body, headers={"Host": host, **(headers or {})})
        response = connection.getresponse()
        return response.status, _who(response.read())
    finally:
        connection.close()


def _key_for(plane: Running, host: str, port: int) -> str:
    """A value of `k` whose $arg_k hashes to the endpoint at `port`."""
    match = plane.plane.routes.match(host=host, path="/")
    assert match is not None
    for number in range(1000):
        key = f"k{number}"
        if match.upstreams[dispatch.hashed_index(match.upstreams, key.encode())][1] == port:
            return key
    raise AssertionError("no key found")


# --- upstream-hash-by ---------------------------------------------------------------------------


def test_the_same_uri_goes_to_the_same_endpoint_and_uris_spread(plane):
    for path in ("/one", "/two?x=1", "/three/four"):
        assert len({_get(plane, "uri.test", path)[1] for _ in range(5)}) == 1
    # 60 URIs over three endpoints: 20 each expected, fewer than 5 on one has p < 3e-6
    spread = collections.Counter(_get(plane, "uri.test", f"/p{n}")[1] for n in range(60))
    assert set(spread) == {"a", "b", "c"} and min(spread.values()) >= 5, spread


def test_a_header_a_cookie_and_the_client_address_as_keys(plane):
    for user in ("alice", "bob", "carol"):
        assert len({_get(plane, "user.test", f"/{n}", headers={"X-User": user})[1]
                    for n in range(5)}) == 1
    users = {_get(plane, "user.test", headers={"X-User": f"user{n}"})[1] for n in range(30)}
    assert users == {"a", "b", "c"}
    # one cookie value for each endpoint (chosen by the hash, so the test does not hang on
    # which ports the backends got): each keeps its endpoint, and the three are apart
    match = plane.plane.routes.match(host="cookie.test", path="/")
    assert match is not None
    cookies = {}
    for _, endpoint_port in match.upstreams:
        value = _key_for(plane, "cookie.test", endpoint_port)
        cookies[value] = {_get(plane, "cookie.test", f"/{n}",
                               headers={"Cookie": f"y=1; x={value}"})[1] for n in range(4)}
    assert all(len(found) == 1 for found in cookies.values()), cookies
    assert set().union(*cookies.values()) == {"a", "b", "c"}, cookies
    # every test client is 127.0.0.1: one endpoint for all of them
    assert len({_get(plane, "addr.test", f"/{n}")[1] for n in range(12)}) == 1


def test_round_robin_spreads_the_same_uri(plane):
    assert {_get(plane, "rr.test", "/same")[1] for _ in range(6)} == {"a", "b", "c"}


def test_an_endpoint_leaving_moves_only_its_own_keys():
    upstreams = (("10.0.0.1", 80), ("10.0.0.2", 80), ("10.0.0.3", 80), ("10.0.0.4", 80))
    before = {key: upstreams[dispatch.hashed_index(upstreams, key)]
              for key in (b"/%d" % n for n in range(400))}
    remaining = upstreams[:2] + upstreams[3:]
    after = {key: remaining[dispatch.hashed_index(remaining, key)] for key in before}
    moved = {key for key in before if before[key] != after[key]}
    assert moved == {key for key in before if before[key] == upstreams[2]}
    assert 60 < len(moved) < 140  # about a quarter


def test_http2_requests_hash_as_http11_ones(plane):
    expected = {path: _get(plane, "uri.test", path)[1] for path in ("/h1", "/h2", "/h3", "/h4")}
    client = H2Client(plane, "uri.test")
    try:
        streams = {path: client.request("GET", path) for path in expected for _ in range(2)}
        client.wait(*streams.values())
        assert {path: _who(client.responses[s]["body"]) for path, s in streams.items()} \
            == expected
    finally:
        client.close()


# --- load-balance: ewma ---------------------------------------------------------------------------


def test_ewma_sends_requests_to_the_faster_endpoint(plane, backends):
    ewma = collections.Counter(_get(plane, "ewma.test")[1] for _ in range(16))
    assert ewma["fast"] >= 14 and ewma["slow"] <= 2, ewma
    even = collections.Counter(_get(plane, "even.test")[1] for _ in range(8))
    assert even == {"fast": 4, "slow": 4}  # round-robin, the default, for comparison
    client = H2Client(plane, "ewma.test")
    try:
        answers = client.wait(*(client.request("GET", "/") for _ in range(6)))
        assert collections.Counter(_who(a["body"]) for a in answers)["fast"] >= 5
    finally:
        client.close()


# --- proxy-next-upstream ------------------------------------------------------------------------


def test_a_502_is_retried_on_the_next_endpoint(plane, backends):
    key = _key_for(plane, "on502.test", backends["bad"].port)
    hits = backends["bad"].hits
    assert _get(plane, "on502.test", f"/?k={key}") == (200, "ok")
    assert backends["bad"].hits == hits + 1  # it was asked first
    # not listed: the 502 is the answer
    assert _get(plane, "errors.test", f"/?k={key}") == (502, "bad")


def test_non_idempotent_requests_are_retried_only_when_listed(plane, backends):
    key = _key_for(plane, "on502.test", backends["bad"].port)
    assert _get(plane, "on502.test", f"/?k={key}", method="POST") == (502, "bad")
    assert _get(plane, "on502.test", f"/?k={key}", method="PUT") == (200, "ok")
    assert _get(plane, "post.test", f"/?k={key}", method="POST") == (200, "ok")
    # a body already streamed to the first endpoint cannot be sent again
    assert _get(plane, "post.test", f"/?k={key}", method="POST", body=b"x" * 100) \
        == (502, "bad")


def test_refused_connections_follow_the_policy(plane, backends):
    key = _key_for(plane, "off.test", backends["closed"])
    assert _get(plane, "off.test", f"/?k={key}")[0] == 502
    assert _get(plane, "refused.test", f"/?k={key}") == (200, "ok")
    assert _get(plane, "refused.test", f"/?k={key}", method="POST", body=b"data") == (200, "ok")


def test_a_connection_closed_unanswered_is_an_error(plane, backends):
    key = _key_for(plane, "dropped.test", backends["dropper"].port)
    hits = backends["dropper"].hits
    assert _get(plane, "dropped.test", f"/?k={key}") == (200, "ok")
    assert backends["dropper"].hits == hits + 1


def test_tries_bound_the_endpoints_asked(plane, backends):
    key = _key_for(plane, "tries.test", backends["bad"].port)
    assert _get(plane, "tries.test", f"/?k={key}") == (503, "bad2")  # bad, bad2, then stop
    assert _get(plane, "alltries.test", f"/?k={key}") == (200, "ok")
    key = _key_for(plane, "tries.test", backends["bad2"].port)
    assert _get(plane, "tries.test", f"/?k={key}") == (200, "ok")


def test_the_timeout_bounds_the_time_spent_retrying(plane, backends):
    key = _key_for(plane, "timed.test", backends["late1"].port)
    started = time.monotonic()
    assert _get(plane, "timed.test", f"/?k={key}") == (504, "late2")  # 1.2 s > 1 s: stop
    assert time.monotonic() - started < 2.5
    assert _get(plane, "untimed.test", f"/?k={key}") == (200, "ok")


def test_a_response_head_past_the_read_timeout_is_a_timeout(plane, backends):
    key = _key_for(plane, "stalled.test", backends["stall"].port)
    started = time.monotonic()
    assert _get(plane, "stalled.test", f"/?k={key}") == (200, "ok")
    assert time.monotonic() - started < 3.5  # not the 4 s the stalled endpoint takes
    assert _get(plane, "stalled-errors.test", f"/?k={key}")[0] == 504
    client = H2Client(plane, "stalled.test")
    try:
        (answer,) = client.wait(client.request("GET", f"/?k={key}"))
        assert (answer["status"], _who(answer["body"])) == (200, "ok")
    finally:
        client.close()


def test_http2_streams_are_retried_too(plane, backends):
    key = _key_for(plane, "on502.test", backends["bad"].port)
    client = H2Client(plane, "on502.test")
    try:
        get, post = client.request("GET", f"/?k={key}"), client.request(
            "POST", f"/?k={key}", host="on502.test")
        answers = client.wait(get, post)
        assert [(a["status"], _who(a["body"])) for a in answers] == [(200, "ok"), (502, "bad")]
    finally:
        client.close()
    key = _key_for(plane, "refused.test", backends["closed"])
    client = H2Client(plane, "refused.test")
    try:
        (answer,) = client.wait(client.request("GET", f"/?k={key}"))
        assert (answer["status"], _who(answer["body"])) == (200, "ok")
    finally:
        client.close()


# --- reading the annotations ----------------------------------------------------------------------


def _options(annotations: dict[str, str]) -> tuple[Any, list[str]]:
    table = routing.RouteTable.build(
        routes=ingress_routes.compile_ingresses(
            ingresses=[simple_ingress("t", {("t.test", "/"): "web"}, annotations=annotations)],
            ingress_classes=[], controller_name="certctl.io/ingress-controller", class_name=None,
        ),
        services=[], endpoint_slices=[],
    )
    match = table.match(host="t.test", path="/")
    assert match is not None
    return match.options, [problem.message for problem in table.problems]


def test_settings_are_read_with_ingress_nginx_defaults():
    found, problems = _options({NGINX + "proxy-next-upstream-tries": "5"})
    assert problems == []
    assert (found.next_upstream.error, found.next_upstream.timeout, found.next_upstream.tries,
            found.next_upstream.statuses) == (True, True, 5, frozenset())
    found, _ = _options({NGINX + "proxy-next-upstream": "off"})
    assert found.next_upstream.tries == 1 and not found.next_upstream.error
    found, _ = _options({NGINX + "upstream-hash-by": "$host$uri",
                         NGINX + "load-balance": "ewma", "certctl.io/load-balance": "ewma"})
    assert found.balancing.hash_by == "$host$uri"  # upstream-hash-by wins over load-balance
    found, _ = _options({})
    assert found.balancing is None and found.next_upstream is None


@pytest.mark.parametrize(("annotations", "named"), [
    ({NGINX + "upstream-hash-by": "$time_local"}, "upstream-hash-by"),
    ({NGINX + "upstream-hash-by": "fixed"}, "upstream-hash-by"),
    ({NGINX + "load-balance": "least_conn"}, "load-balance"),
    ({NGINX + "proxy-next-upstream": "error http_418"}, "proxy-next-upstream"),
    ({NGINX + "proxy-next-upstream": "off error"}, "proxy-next-upstream"),
    ({NGINX + "proxy-next-upstream-tries": "many"}, "proxy-next-upstream-tries"),
])
def test_bad_values_are_reported_by_name(annotations, named):
    _, problems = _options(annotations)
    assert len(problems) == 1 and NGINX + named in problems[0], problems


def test_the_catalogue_calls_them_supported():
    for name in ("upstream-hash-by", "load-balance", "proxy-next-upstream",
                 "proxy-next-upstream-tries", "proxy-next-upstream-timeout"):
        assert name in nginx_annotations.SUPPORTED and name not in nginx_annotations.UNSUPPORTED
    assert "upstream-hash-by-subset" in nginx_annotations.UNSUPPORTED

