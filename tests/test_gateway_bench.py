"""B4's HTTPRoute row (bench/b4_proxy.py) measures what it says: `certctl serve` on its
manifests routes the benchmark name to the backend through the HTTPRoute over TLS, and not
over plain HTTP, which the route's HTTPS listener does not take."""

from __future__ import annotations

from pathlib import Path

from bench import b3_peers, b4_proxy
from tests.pebble import free_port
from tests.serving import echo_backend, http_get, https_get


def test_b4_httproute_manifests_are_served_by_certctl_serve_over_tls(tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    roots = b3_peers.make_certificates(certs, [b4_proxy.NAME])
    with echo_backend("bench-backend") as backend_port:
        objects = b4_proxy.httproute_objects(certs=certs, backend_port=backend_port)
        assert "Ingress" not in {obj["kind"] for obj in objects}  # routed by the HTTPRoute
        serve = b3_peers.ServeCommand(
            workdir=tmp_path / "serve", certs=certs, name=b4_proxy.NAME,
            https_port=free_port(), http_port=free_port(), backend_port=backend_port,
            objects=objects)
        try:
            serve.start(log=tmp_path / "serve.log", timeout=60)
            assert https_get(port=serve.https_port, host=b4_proxy.NAME, path="/x",
                             roots_pem=roots) == (200, f"bench-backend {b4_proxy.NAME} /x https")
            status, _, body = http_get(port=serve.http_port, host=b4_proxy.NAME, path="/x")
            assert status != 200 and "bench-backend" not in body
        finally:
            serve.stop()
