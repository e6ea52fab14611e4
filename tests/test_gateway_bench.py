"""B4's HTTPRoute server (bench/b4_proxy.py) serves what the benchmark measures: the
backend through an HTTPRoute over TLS, and not over plain HTTP, which the route did not
attach to."""

from __future__ import annotations

from pathlib import Path

from bench import b3_peers, b4_proxy
from tests.pebble import free_port
from tests.serving import echo_backend, http_get, https_get


def test_b4_httproute_server_proxies_the_route_over_tls(tmp_path: Path) -> None:
    roots = b3_peers.make_certificates(tmp_path / "certs", [b4_proxy.NAME])
    with echo_backend("bench-backend") as backend_port:
        plane = b4_proxy.HTTPRouteServer(certs=tmp_path / "certs", https_port=free_port(),
                                         http_port=free_port(), backend_port=backend_port)
        plane.start(log=tmp_path / "httproute.log", timeout=60)
        try:
            assert https_get(port=plane.https_port, host=b4_proxy.NAME, path="/x",
                             roots_pem=roots) == (200, f"bench-backend {b4_proxy.NAME} /x https")
            # The route attached to HTTPS listeners only: plain HTTP never reaches the backend.
            status, _, body = http_get(port=plane.http_port, host=b4_proxy.NAME, path="/x")
            assert status != 200 and "bench-backend" not in body
        finally:
            plane.stop()
