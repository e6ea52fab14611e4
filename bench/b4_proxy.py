"""B4: keep-alive requests/s through the proxy, certctl's data plane vs nginx proxy_pass.

Both proxies terminate TLS for the same certificate and forward every request
to the same backend (a second nginx answering `return 200`) over kept-alive
upstream connections; wrk drives each in turn with the same keep-alive load.
The rounds interleave the servers. Reported per server: median requests/s,
latency percentiles, server CPU per 1,000 requests and RSS, and the ratio to
nginx (DESIGN.md target: >= 0.5 x nginx).

    python -m bench.b4_proxy [--seconds 10] [--rounds 3] [--connections 50] [--write-results]

Needs root (wrk runs in a private mount namespace, see bench/b3_peers.py) and
`apt-get install -y nginx-light wrk`.
"""

from __future__ import annotations

import argparse
import datetime
import shlex
import statistics
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench import b3_peers, reporting
from tests.pebble import free_port

NAME = "b4.bench.test"


@dataclass
class Samples:
    rates: list[float] = field(default_factory=list)
    p50: list[float] = field(default_factory=list)
    p99: list[float] = field(default_factory=list)
    cpu_per_1000: list[float] = field(default_factory=list)
    failures: int = 0
    rss: int = 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.b4_proxy", description=__doc__)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--asyncio", action="store_true",
                        help="also run certctl on the stdlib event loop")
    parser.add_argument("--write-results", action="store_true")
    args = parser.parse_args(argv)
    command = "python -m bench.b4_proxy " + shlex.join(argv if argv is not None else sys.argv[1:])
    started = datetime.datetime.now(datetime.UTC)

    work = Path(tempfile.mkdtemp(prefix="certctl-b4-"))
    certs = work / "certs"
    b3_peers.make_certificates(certs, [NAME])
    backend_port, nginx_port = free_port(), free_port()
    servers: dict[str, b3_peers.Nginx | b3_peers.DataPlaneServer] = {}
    backend = b3_peers.Nginx(workdir=work / "backend", http_block=(
        f"  server {{ listen 127.0.0.1:{backend_port}; "
        'location / { return 200 "hello from the backend\\n"; } }'
    )).start(port=backend_port)
    try:
        servers["nginx"] = b3_peers.Nginx(workdir=work / "nginx", http_block=(
            f"  upstream backend {{ server 127.0.0.1:{backend_port}; keepalive 64; }}\n"
            f"  server {{ listen 127.0.0.1:{nginx_port} ssl; server_name {NAME};\n"
            f"    ssl_certificate {certs}/{NAME}.crt; ssl_certificate_key {certs}/{NAME}.key;\n"
            "    ssl_protocols TLSv1.2 TLSv1.3; ssl_ciphers ECDHE+AESGCM:ECDHE+CHACHA20;\n"
            "    location / { proxy_pass http://backend; proxy_http_version 1.1;\n"
            '      proxy_set_header Connection ""; proxy_set_header Host $http_host;\n'
            "      proxy_set_header X-Forwarded-For $remote_addr;\n"
            "      proxy_set_header X-Real-IP $remote_addr;\n"
            "      proxy_set_header X-Forwarded-Proto $scheme;\n"
            "      proxy_set_header X-Forwarded-Host $http_host; } }"
        )).start(port=nginx_port)
        loops = ["uvloop", "asyncio"] if args.asyncio else ["uvloop"]
        for loop in loops:
            label = "certctl" if loop == "uvloop" else "certctl (asyncio loop)"
            servers[label] = b3_peers.DataPlaneServer(
                certs=certs, names=[NAME], https_port=free_port(),
                http_port=free_port(), backend_port=backend_port, loop=loop,
            ).start(log=work / f"{loop}.log")
        ports = {
            label: (nginx_port if isinstance(srv, b3_peers.Nginx) else srv.https_port)
            for label, srv in servers.items()
        }
        samples = {label: Samples() for label in servers}
        for label in servers:  # warm-up: pools, caches, first handshakes
            b3_peers.wrk(url=f"https://{NAME}:{ports[label]}/", hosts={NAME: "127.0.0.1"},
                         workdir=work, seconds=1, connections=args.connections)
        for round_index in range(args.rounds):
            order = list(servers)
            order = order[round_index % len(order):] + order[:round_index % len(order)]
            for label in order:
                pid = servers[label].pid
                cpu_before = b3_peers.cpu_seconds(pid)
                result = b3_peers.wrk(
                    url=f"https://{NAME}:{ports[label]}/", hosts={NAME: "127.0.0.1"},
                    workdir=work, seconds=args.seconds, connections=args.connections,
                )
                cpu = b3_peers.cpu_seconds(pid) - cpu_before
                found = samples[label]
                found.rates.append(result.rate)
                found.p50.append(result.p50_ms)
                found.p99.append(result.p99_ms)
                found.cpu_per_1000.append(cpu / result.requests * 1000)
                found.failures += result.errors + result.non_2xx
                found.rss = max(found.rss, b3_peers.rss_bytes(pid))
                print(f"round {round_index + 1} {label}: {result.rate:,.0f} req/s, "
                      f"p99 {result.p99_ms:.2f} ms, {cpu:.2f} s CPU", flush=True)
    finally:
        for srv in servers.values():
            srv.stop()
        backend.stop()
    section = results_section(command=command, started=started, args=args, samples=samples)
    print("\n" + section)
    if args.write_results:
        reporting.write_results(name="b4_proxy", section=section)
        print(f"wrote {reporting.RESULTS_PATH}")
    return 0 if all(s.failures == 0 for s in samples.values()) else 1


def results_section(
    *, command: str, started: datetime.datetime, args: argparse.Namespace,
    samples: dict[str, Samples],
) -> str:
    nginx_rate = statistics.median(samples["nginx"].rates)
    rows = []
    for label, found in samples.items():
        rate = statistics.median(found.rates)
        rows.append(
            f"| {label} | {rate:,.0f} | {rate / nginx_rate:.2f}x | "
            f"{statistics.median(found.p50):.2f} | {statistics.median(found.p99):.2f} | "
            f"{statistics.median(found.cpu_per_1000):.3f} | {found.rss / 2**20:.0f} | "
            f"{found.failures} |"
        )
    return (
        "## B4: keep-alive requests/s through the proxy (TLS, HTTP/1.1)\n\n"
        f"Command (from the repo root, as root): `{command}`  \n"
        f"Date: {started:%Y-%m-%d %H:%M} UTC; {args.rounds} interleaved rounds of "
        f"{args.seconds:g} s per server, `wrk -t1 -c{args.connections}` keep-alive over TLS, "
        "medians over rounds.\n\n"
        "| server | requests/s | ratio to nginx | p50 (ms) | p99 (ms) | "
        "server CPU s / 1,000 req | RSS (MiB) | failed requests |\n"
        "|---|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n\n"
        "Both proxies: TLS 1.2/1.3 with the same ECDSA P-256 certificate, forward to one "
        "backend (nginx, 1 worker, `return 200`, 23-byte body) over kept-alive upstream "
        "connections, set Host and X-Forwarded-*; nginx has 1 worker. wrk, both proxies and "
        "the backend share the machine's 2 cores.\n\n"
        "Machine:\n\n" + b3_peers.machine_table()
    )


if __name__ == "__main__":
    sys.exit(main())
