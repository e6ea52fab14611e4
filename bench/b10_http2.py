"""B10: HTTP/2 requests/s through `certctl serve`, against nginx with `http2` in the same run.

Both proxies terminate TLS (ALPN h2) for the same certificate and forward
every request to the same backend (a second nginx answering `return 200`)
over kept-alive HTTP/1.1 upstream connections. h2load drives each in turn
with the same load: `--clients` connections, `--streams` concurrent streams
on each, for `--seconds`. The rounds interleave the servers. Reported per
server: median requests/s over rounds (and the spread), p50/p99 request
latency (from h2load's per-request log), server CPU per 1,000 requests and
the ratios to nginx (issue 21's targets: >= 0.5x nginx's requests/s, <= 2.5x
its CPU per request).

certctl runs as users run it, three times: `python -m certctl serve` on a
manifests folder with the Ingress, its Service and EndpointSlice and the
kubernetes.io/tls Secret (no issuer: nothing is ordered); the same command with
`CERTCTL_PURE_PYTHON=1` (the uncompiled data plane, the fallback of an install
without a compiler); and `certctl dataplane` against a real control plane (etcd +
kube-apiserver from tests/controlplane.py, started here) holding the same objects,
the backend on an address of `lo` outside 127.0.0.0/8 (the API server refuses
loopback addresses in EndpointSlices).

    python -m bench.b10_http2 [--seconds 10] [--rounds 3] [--clients 50] [--streams 10]
                              [--write-results]

Needs root (the loopback alias), the test servers of scripts/testservers/build.sh and
`apt-get install -y nginx-light nghttp2-client` (h2load).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime
import re
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bench import b3_peers, reporting
from tests.pebble import free_port

NAME = "b10.bench.test"
SERVE = "certctl serve"
SERVE_PURE = "certctl serve (pure Python)"
DATAPLANE = "certctl dataplane"
_NAMESPACE = "bench"
H2LOAD_BIN = "/usr/bin/h2load"


@dataclass(frozen=True)
class H2loadResult:
    requests: int  # succeeded (2xx)
    failed: int  # failed, errored or timed out, and non-2xx answers
    seconds: float
    p50_ms: float
    p99_ms: float

    @property
    def rate(self) -> float:
        return self.requests / self.seconds


def h2load(*, port: int, seconds: int, clients: int, streams: int, log: Path) -> H2loadResult:
    """One timed h2load run at https://NAME:port/ (SNI and :authority NAME, on loopback)."""
    log.unlink(missing_ok=True)
    argv = [H2LOAD_BIN, f"--connect-to=127.0.0.1:{port}", "-c", str(clients),
            "-m", str(streams), "-D", str(seconds), "--warm-up-time=1",
            f"--log-file={log}", f"https://{NAME}:{port}/"]
    done = subprocess.run(argv, capture_output=True, text=True, check=False,
                          timeout=seconds + 60)
    return parse_h2load(done.stdout, log_text=log.read_text() if log.exists() else "",
                        seconds=seconds)


def parse_h2load(output: str, *, log_text: str, seconds: int) -> H2loadResult:
    """h2load's summary (`requests: ... succeeded, ... failed, ... errored, ... timeout`,
    `status codes: ... 2xx`) and its per-request log (`start  status  microseconds`)."""
    found = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded, "
                      r"(\d+) failed, (\d+) errored, (\d+) timeout", output)
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", output)
    if found is None or codes is None:
        raise RuntimeError(f"unexpected h2load output:\n{output}")
    succeeded = int(codes.group(1))
    failed = sum(int(n) for n in found.groups()[1:]) + sum(int(n) for n in codes.groups()[1:])
    latencies = sorted(int(line.split()[2]) for line in log_text.splitlines() if line.strip())
    if not latencies:
        raise RuntimeError(f"h2load logged no request:\n{output}")
    return H2loadResult(
        requests=succeeded, failed=failed, seconds=float(seconds),
        p50_ms=latencies[len(latencies) // 2] / 1000,
        p99_ms=latencies[min(len(latencies) - 1, len(latencies) * 99 // 100)] / 1000,
    )


def manifests(*, certs: Path, backend_port: int) -> list[dict[str, Any]]:
    """What `certctl serve` reads: the user's Secret, the Ingress, its Service and endpoints."""
    return [
        {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
         "metadata": {"name": "b10-tls", "namespace": "default"},
         "data": {"tls.crt": base64.b64encode((certs / f"{NAME}.crt").read_bytes()).decode(),
                  "tls.key": base64.b64encode((certs / f"{NAME}.key").read_bytes()).decode()}},
        {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
         "metadata": {"name": "b10", "namespace": "default"},
         "spec": {"tls": [{"hosts": [NAME], "secretName": "b10-tls"}],
                  "rules": [{"host": NAME, "http": {"paths": [{
                      "path": "/", "pathType": "Prefix",
                      "backend": {"service": {"name": "b10", "port": {"number": 80}}}}]}}]}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "b10", "namespace": "default"},
         "spec": {"ports": [{"name": "http", "port": 80, "targetPort": backend_port}]}},
        {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
         "metadata": {"name": "b10-1", "namespace": "default",
                      "labels": {"kubernetes.io/service-name": "b10"}},
         "addressType": "IPv4", "ports": [{"name": "http", "port": backend_port}],
         "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": True}}]},
    ]


class CertctlServe(b3_peers.ServerProcess):
    """`python -m certctl serve` on the benchmark's manifests."""

    def __init__(self, *, work: Path, certs: Path, backend_port: int,
                 pure_python: bool = False) -> None:
        self.work = work
        self.environment = {"CERTCTL_PURE_PYTHON": "1"} if pure_python else {}
        self.https_port = free_port()
        manifest_dir = work / "manifests"
        manifest_dir.mkdir(parents=True)
        (manifest_dir / "b10.yaml").write_text(
            yaml.safe_dump_all(manifests(certs=certs, backend_port=backend_port)))
        self.argv = [sys.executable, "-m", "certctl", "serve", "--manifests", str(manifest_dir),
                     "--state-dir", str(work / "state"), "--listen-address", "127.0.0.1",
                     "--http-port", str(free_port()), "--https-port", str(self.https_port)]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> CertctlServe:
        self._spawn(self.argv, log=self.work / "certctl.log", port=self.https_port, timeout=60,
                    environment=self.environment)
        return self


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.b10_http2", description=__doc__)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--streams", type=int, default=10)
    parser.add_argument("--write-results", action="store_true")
    args = parser.parse_args(argv)
    command = reporting.command_line(module="bench.b10_http2", argv=argv)
    started = datetime.datetime.now(datetime.UTC)

    work = Path(tempfile.mkdtemp(prefix="certctl-b10-"))
    certs = work / "certs"
    b3_peers.make_certificates(certs, [NAME])
    backend_port, nginx_port = free_port(), free_port()
    servers: dict[str, b3_peers.ServerProcess] = {}
    ports: dict[str, int] = {}
    with contextlib.ExitStack() as stack:
        cluster = stack.enter_context(b3_peers.one_site_in_a_cluster(
            work=work, certs=certs, name=NAME, namespace=_NAMESPACE, backend_port=backend_port))
        stack.callback(lambda: b3_peers.stop_all(*servers.values()))
        servers["nginx"] = b3_peers.proxy_nginx(
            workdir=work / "nginx", port=nginx_port, backend_port=backend_port,
            certs=certs, name=NAME, http2=True)
        ports["nginx"] = nginx_port
        for label, pure_python in ((SERVE, False), (SERVE_PURE, True)):
            serve = CertctlServe(work=work / label.replace(" ", "-"), certs=certs,
                                 backend_port=backend_port, pure_python=pure_python)
            servers[label], ports[label] = serve, serve.https_port  # stopped if start fails
            serve.start()
        dataplane = b3_peers.DataPlaneCommand(
            kubeconfig=cluster.kubeconfig, namespace=_NAMESPACE, certs=certs, name=NAME,
            https_port=free_port(), http_port=free_port())
        servers[DATAPLANE] = dataplane  # stopped with the others, also if it never serves
        dataplane.start(log=work / "dataplane.log")
        ports[DATAPLANE] = dataplane.https_port
        log = work / "h2load.log"
        for label in servers:  # warm-up, and certctl must be serving the certificate
            warm = h2load(port=ports[label], seconds=2, clients=args.clients,
                          streams=args.streams, log=log)
            if warm.requests == 0:
                raise RuntimeError(f"{label} answered no request in the warm-up")

        def run(label: str) -> b3_peers.Run:
            result = h2load(port=ports[label], seconds=args.seconds, clients=args.clients,
                            streams=args.streams, log=log)
            # h2load's warm-up second is served too: count its CPU per request measured
            # over the whole run, warm-up included.
            return b3_peers.Run(rate=result.rate, p50_ms=result.p50_ms, p99_ms=result.p99_ms,
                                served=result.rate * (args.seconds + 1), failures=result.failed)

        samples = b3_peers.measure_rounds(servers=servers, rounds=args.rounds, run=run)
    section = results_section(command=command, started=started, args=args, samples=samples)
    return b3_peers.report(name="b10_http2", section=section, samples=samples,
                           write=args.write_results)


def results_section(
    *, command: str, started: datetime.datetime, args: argparse.Namespace,
    samples: dict[str, b3_peers.Samples],
) -> str:
    nginx = samples["nginx"]
    nginx_rate = statistics.median(nginx.rates)
    nginx_cpu = statistics.median(nginx.cpu_per_1000)
    rows = []
    for label, found in samples.items():
        rate = statistics.median(found.rates)
        cpu = statistics.median(found.cpu_per_1000)
        rows.append(
            f"| {label} | {rate:,.0f} ({min(found.rates):,.0f}-{max(found.rates):,.0f}) | "
            f"{rate / nginx_rate:.2f}x | {statistics.median(found.p50):.2f} | "
            f"{statistics.median(found.p99):.2f} | {cpu:.3f} "
            f"({min(found.cpu_per_1000):.3f}-{max(found.cpu_per_1000):.3f}) | "
            f"{cpu / nginx_cpu:.2f}x | {found.rss / 2**20:.0f} | {found.failures} |"
        )
    return (
        "## B10: HTTP/2 requests/s through `certctl serve` and `certctl dataplane` "
        "(TLS, ALPN h2)\n\n"
        f"Command (from the repo root, as root): `{command}`  \n"
        f"Date: {started:%Y-%m-%d %H:%M} UTC; commit {reporting.git_describe()}; "
        f"{args.rounds} interleaved rounds of {args.seconds:g} s per server, "
        f"`h2load -c{args.clients} -m{args.streams}` ({args.clients} connections x "
        f"{args.streams} concurrent streams); medians over rounds, (min-max) in brackets.\n\n"
        "| server | requests/s | ratio to nginx | p50 (ms) | p99 (ms) | "
        "server CPU s / 1,000 req | CPU ratio to nginx | RSS (MiB) | failed requests |\n"
        "|---|---|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n\n"
        "Both proxies: TLS 1.2/1.3 with the same ECDSA P-256 certificate, HTTP/2 to the "
        "client, HTTP/1.1 over kept-alive connections to one backend (nginx, 1 worker, "
        "`return 200`, 23-byte body), Host and X-Forwarded-* set; nginx has 1 worker. "
        f"`{SERVE}` runs the data plane's modules compiled with mypyc (as `pip install` "
        f"builds them), `{SERVE_PURE}` their Python sources (CERTCTL_PURE_PYTHON=1); "
        f"`{DATAPLANE}` is the compiled build against a real kube-apiserver + etcd started "
        "by the benchmark, idle on the same cores during every row. h2load, "
        "both proxies and the backend share the machine's 2 cores, which other engineers' "
        "test runs share too: the spread between rounds is part of the result.\n\n"
        "Machine:\n\n" + reporting.machine_table(reporting.machine_rows(extra=[
            ("nginx", b3_peers.nginx_version()),
            ("h2load", reporting.command_output([H2LOAD_BIN, "--version"])),
        ]))
    )


if __name__ == "__main__":
    sys.exit(main())
