"""B4: keep-alive requests/s through the proxy, certctl's data plane vs nginx proxy_pass.

Every proxy terminates TLS for the same certificate and forwards every request
to the same backend (a second nginx answering `return 200`) over kept-alive
upstream connections; wrk drives each in turn with the same keep-alive load.
certctl runs as the commands users start, installed as users install it
(bench/installed.py: the wheel, into a virtualenv of `--python`, by default the
distribution's interpreter): `certctl serve` on a manifests folder,
and `certctl dataplane` against a real control plane (etcd + kube-apiserver
from tests/controlplane.py, started here) holding the same Secret, Ingress,
Service and EndpointSlice. One more row is `certctl serve` routing by the Gateway
API instead (`httproute_objects`: a GatewayClass of certctl's, a Gateway whose HTTPS
listener names the same Secret, an HTTPRoute to the same Service); `--harness` adds
bench.b3_peers' directly fed data plane.
The rounds interleave the servers. Reported per server: median requests/s,
latency percentiles, server CPU per 1,000 requests and RSS, and the ratio to
nginx (DESIGN.md target: >= 0.8 x nginx), with the lowest and highest of the rounds'
own ratios (each to nginx's run of the same round).

    python -m bench.b4_proxy [--seconds 10] [--rounds 3] [--connections 50] [--harness]
        [--asyncio] [--python /usr/bin/python3] [--write-results]

Needs root (wrk runs in a private mount namespace, see bench/b3_peers.py; the
backend's address on `lo`), the test servers of scripts/testservers/build.sh and
`apt-get install -y nginx-light wrk python3-venv`.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import shlex
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import b3_peers, installed
from certctl.api import gateway as gateway_api
from certctl.routes import gateway as gateway_routes
from tests.pebble import free_port

NAME = "b4.bench.test"
SERVE_LABEL = "certctl serve"
DATAPLANE_LABEL = "certctl dataplane"
HARNESS_LABEL = "certctl (harness)"
HTTPROUTE_LABEL = "certctl serve (HTTPRoute)"
_NAMESPACE = "bench"
_SERVE_NAMESPACE = "default"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.b4_proxy", description=__doc__)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--harness", action="store_true",
                        help=f"also run `{HARNESS_LABEL}`: the data plane fed directly by "
                        "bench.b3_peers, without the commands' store and feed")
    parser.add_argument("--asyncio", action="store_true",
                        help="also run the harness on the stdlib event loop")
    parser.add_argument("--python", default=installed.DEFAULT_PYTHON,
                        help="the interpreter certctl is installed for and runs on")
    parser.add_argument("--write-results", action="store_true")
    args = parser.parse_args(argv)
    command = "python -m bench.b4_proxy " + shlex.join(argv if argv is not None else sys.argv[1:])
    started = datetime.datetime.now(datetime.UTC)

    work = Path(tempfile.mkdtemp(prefix="certctl-b4-"))
    certs = work / "certs"
    b3_peers.make_certificates(certs, [NAME])
    certctl = installed.install(python=args.python, into=work / "venv")
    print(f"certctl installed for Python {certctl.interpreter}", flush=True)
    backend_port, nginx_port = free_port(), free_port()
    servers: dict[str, b3_peers.ServerProcess] = {}
    ports: dict[str, int] = {}
    with contextlib.ExitStack() as stack:
        plane = stack.enter_context(b3_peers.one_site_in_a_cluster(
            work=work, certs=certs, name=NAME, namespace=_NAMESPACE, backend_port=backend_port))
        servers["nginx"] = b3_peers.proxy_nginx(
            workdir=work / "nginx", port=nginx_port, backend_port=backend_port,
            certs=certs, name=NAME, http2=False)
        stack.callback(servers["nginx"].stop)
        ports["nginx"] = nginx_port
        serve = b3_peers.ServeCommand(
            workdir=work / "serve", certs=certs, name=NAME, https_port=free_port(),
            http_port=free_port(), backend_port=backend_port, command=certctl.command)
        stack.callback(serve.stop)  # also when it never comes to serve
        servers[SERVE_LABEL], ports[SERVE_LABEL] = serve.start(log=work / "serve.log"), \
            serve.https_port
        dataplane = b3_peers.DataPlaneCommand(
            kubeconfig=plane.kubeconfig, namespace=_NAMESPACE, certs=certs, name=NAME,
            https_port=free_port(), http_port=free_port(), command=certctl.command)
        stack.callback(dataplane.stop)
        servers[DATAPLANE_LABEL], ports[DATAPLANE_LABEL] = \
            dataplane.start(log=work / "dataplane.log"), dataplane.https_port
        loops = [*(["uvloop"] if args.harness else []), *(["asyncio"] if args.asyncio else [])]
        for loop in loops:
            label = HARNESS_LABEL if loop == "uvloop" else f"{HARNESS_LABEL} (asyncio loop)"
            harness = b3_peers.DataPlaneServer(
                certs=certs, names=[NAME], https_port=free_port(),
                http_port=free_port(), backend_port=backend_port, loop=loop)
            stack.callback(harness.stop)
            servers[label], ports[label] = harness.start(log=work / f"{loop}.log"), \
                harness.https_port
        httproute = b3_peers.ServeCommand(
            workdir=work / "serve-httproute", certs=certs, name=NAME, https_port=free_port(),
            http_port=free_port(), backend_port=backend_port,
            objects=httproute_objects(certs=certs, backend_port=backend_port),
            command=certctl.command)
        stack.callback(httproute.stop)
        servers[HTTPROUTE_LABEL], ports[HTTPROUTE_LABEL] = \
            httproute.start(log=work / "serve-httproute.log"), httproute.https_port
        for label in servers:  # warm-up: pools, caches, first handshakes
            b3_peers.wrk(url=f"https://{NAME}:{ports[label]}/", hosts={NAME: "127.0.0.1"},
                         workdir=work, seconds=1, connections=args.connections)

        def run(label: str) -> b3_peers.Run:
            result = b3_peers.wrk(
                url=f"https://{NAME}:{ports[label]}/", hosts={NAME: "127.0.0.1"},
                workdir=work, seconds=args.seconds, connections=args.connections,
            )
            return b3_peers.Run(rate=result.rate, p50_ms=result.p50_ms, p99_ms=result.p99_ms,
                                served=result.requests, failures=result.errors + result.non_2xx)

        samples = b3_peers.measure_rounds(servers=servers, rounds=args.rounds, run=run)
    section = results_section(command=command, started=started, args=args, samples=samples,
                              certctl=certctl)
    return b3_peers.report(name="b4_proxy", section=section, samples=samples,
                           write=args.write_results)


def results_section(
    *, command: str, started: datetime.datetime, args: argparse.Namespace,
    samples: dict[str, b3_peers.Samples], certctl: installed.Installed,
) -> str:
    nginx_rates = samples["nginx"].rates
    nginx_rate = statistics.median(nginx_rates)
    rows = []
    for label, found in samples.items():
        rate = statistics.median(found.rates)
        rows.append(
            f"| {label} | {rate:,.0f} | {rate / nginx_rate:.2f}x | "
            f"{b3_peers.round_ratios(found.rates, nginx_rates)} | "
            f"{statistics.median(found.p50):.2f} | {statistics.median(found.p99):.2f} | "
            f"{statistics.median(found.cpu_per_1000):.3f} | {found.rss / 2**20:.0f} | "
            f"{found.failures} |"
        )
    return (
        "## B4: keep-alive requests/s through the proxy (TLS, HTTP/1.1)\n\n"
        f"Command (from the repo root, as root): `{command}`  \n"
        f"Date: {started:%Y-%m-%d %H:%M} UTC; {args.rounds} interleaved rounds of "
        f"{args.seconds:g} s per server, `wrk -t1 -c{args.connections}` keep-alive over TLS, "
        "medians over rounds; the ratio of each round (to nginx's run of that round), "
        "lowest-highest, beside the median's.\n\n"
        "| server | requests/s | ratio to nginx | per round | p50 (ms) | p99 (ms) | "
        "server CPU s / 1,000 req | RSS (MiB) | failed requests |\n"
        "|---|---|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n\n"
        "Every proxy: TLS 1.2/1.3 with the same ECDSA P-256 certificate, forward to one "
        "backend (nginx, 1 worker, `return 200`, 23-byte body) over kept-alive upstream "
        "connections, set Host and X-Forwarded-*; nginx has 1 worker. "
        "The certctl rows run the package as `pip install` installs it, its data plane "
        "compiled, in a new virtualenv of the interpreter the machine table names. "
        f"`{SERVE_LABEL}` is the shipped command on a manifests folder (the TLS Secret, an "
        f"Ingress, its Service and EndpointSlice); `{DATAPLANE_LABEL}` is the shipped command "
        "against a real kube-apiserver + etcd (tests/controlplane.py) started by the "
        "benchmark, holding the same objects (the backend on an address of `lo` outside "
        "127.0.0.0/8, which the API server accepts in an EndpointSlice); the control plane "
        "idles on the same cores during every row. "
        f"`{HTTPROUTE_LABEL}` is the shipped command on a manifests folder routing by the "
        "Gateway API instead of an Ingress: certctl's GatewayClass, a Gateway whose HTTPS "
        "listener names the same Secret, an HTTPRoute (PathPrefix `/`, one backendRef) to "
        "the same Service. wrk, the proxies and the backend share the machine's cores.\n\n"
        "Machine:\n\n" + b3_peers.machine_table(certctl=certctl)
    )


# --- the HTTPRoute row's manifests ----------------------------------------------------


def httproute_objects(*, certs: Path, backend_port: int) -> list[dict[str, Any]]:
    """What `certctl serve` reads for the HTTPRoute row: NAME's TLS Secret, the Service and
    its EndpointSlice of `b3_peers.site_objects` (no Ingress), certctl's GatewayClass, a
    Gateway with an HTTPS listener for NAME naming that Secret, and an HTTPRoute from it
    to the Service."""
    api = gateway_api.API_VERSION
    site = [obj for obj in b3_peers.site_objects(
        certs=certs, names=[NAME], namespace=_SERVE_NAMESPACE, backend_address="127.0.0.1",
        backend_port=backend_port) if obj["kind"] != "Ingress"]
    (secret,) = (obj for obj in site if obj["kind"] == "Secret")
    metadata = {"name": "bench", "namespace": _SERVE_NAMESPACE}
    return [
        *site,
        {"apiVersion": api, "kind": "GatewayClass", "metadata": {"name": "certctl"},
         "spec": {"controllerName": gateway_routes.CONTROLLER_NAME}},
        {"apiVersion": api, "kind": "Gateway", "metadata": metadata,
         "spec": {"gatewayClassName": "certctl", "listeners": [
             {"name": "https", "port": 443, "protocol": "HTTPS", "hostname": NAME,
              "tls": {"certificateRefs": [{"name": secret["metadata"]["name"]}]}}]}},
        {"apiVersion": api, "kind": "HTTPRoute", "metadata": metadata,
         "spec": {"parentRefs": [{"name": "bench"}], "hostnames": [NAME], "rules": [
             {"matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
              "backendRefs": [{"name": "backend", "port": 80}]}]}},
    ]


if __name__ == "__main__":
    sys.exit(main())
