"""B3: server CPU per 1,000 new TLS connections with 10,000 certificates loaded, vs nginx.

Every server loads the same 10,000 ECDSA P-256 certificates (one name each)
and proxies `GET /` for every name to one backend (nginx `return 200`); nginx
has one worker and a `server` block per name. certctl runs as the commands users
start, installed as users install it (bench/installed.py: the wheel, into a virtualenv
of `--python`, by default the distribution's interpreter): `certctl serve` on a
manifests folder, and `certctl dataplane` against a
real control plane (etcd + kube-apiserver from tests/controlplane.py, started
here), each holding a TLS Secret per name, Ingresses of 500 rules, the backend's
Service and EndpointSlice.
Every connection is a new TCP connection, a TLS handshake with SNI,
one request and a close. What is compared is the CPU the server process
spent (utime + stime from /proc, master and worker for nginx) per 1,000
connections; the clients saturate before either server on 2 cores, so
requests/s says little (DESIGN.md target: certctl <= 1.4 x nginx).

Loads, each run against both servers:

- first connection to each name: one connection per certificate, once, right
  after start-up. certctl decodes a name's certificate for OpenSSL on its first
  handshake (dataplane/credentials.py, about 0.5 ms); nginx built all of its
  contexts before it listened (its start-up time, reported beside). Measured
  once: the second time is the next row.
- full handshakes, in interleaved rounds: `--clients` Python processes
  connecting with no session to resume, SNI rotating over a working set of
  names: `--hot-names` of them, then all of them.
- resumed handshakes: `wrk -H "Connection: close"`, which resumes its TLS
  session on every reconnect (both servers allow it), one name per run.

Each row is the median over the rounds: on a shared 2-core machine single
rounds of the same server move by 10 % and more. Beside each ratio to nginx,
the lowest and highest of the rounds' own ratios (each to nginx's run of the
same round).

    python -m bench.b3_handshakes [--certificates 10000] [--seconds 10] [--rounds 4]
                                  [--python /usr/bin/python3] [--write-results]

Needs root (wrk runs in a private mount namespace, see bench/b3_peers.py; the
backend's address on `lo`), the test servers of scripts/testservers/build.sh and
`apt-get install -y nginx-light wrk python3-venv`.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import itertools
import multiprocessing
import shlex
import socket
import ssl
import statistics
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from bench import b3_peers, installed, reporting
from tests.pebble import free_port

SERVE = "certctl serve"
DATAPLANE = "certctl dataplane"
_NAMESPACE = "bench"


def client_loop(
    port: int, names: Sequence[str], seconds: float | None, offset: int
) -> tuple[int, int]:
    """New connection, full handshake (no session offered), GET /, close; until time is up.

    `seconds` None: one connection to each name, in order, then stop.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    done = failed = 0
    if seconds is None:
        sequence: Iterable[str] = names
    else:
        deadline = time.monotonic() + seconds
        # a prime stride: every name in turn, in no cache-friendly order
        sequence = itertools.takewhile(
            lambda _: time.monotonic() < deadline,
            (names[i * 7919 % len(names)] for i in itertools.count(offset)),
        )
    for name in sequence:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
                    context.wrap_socket(raw, server_hostname=name) as tls:
                tls.sendall(f"GET / HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n".encode())
                response = b""
                while chunk := tls.recv(65536):
                    response += chunk
            if response.startswith(b"HTTP/1.1 200"):
                done += 1
            else:
                failed += 1
        except OSError:
            failed += 1
    return done, failed


def full_handshakes(
    *, pid: int, port: int, names: Sequence[str], seconds: float | None, clients: int
) -> tuple[int, int, float]:
    """(connections, failures, server CPU seconds) for one timed run.

    `seconds` None: each name once, the names dealt out to the clients.
    """
    work: list[tuple[int, Sequence[str], float | None, int]]
    if seconds is None:
        work = [(port, names[i::clients], None, 0) for i in range(clients)]
    else:
        work = [(port, names, seconds, i * 104729) for i in range(clients)]
    with multiprocessing.get_context("fork").Pool(clients) as pool:
        before = b3_peers.cpu_seconds(pid)
        results = pool.starmap(client_loop, work)
        cpu = b3_peers.cpu_seconds(pid) - before
    return sum(r[0] for r in results), sum(r[1] for r in results), cpu


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.b3_handshakes", description=__doc__)
    parser.add_argument("--certificates", type=int, default=10_000)
    parser.add_argument("--hot-names", type=int, default=1_000)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--python", default=installed.DEFAULT_PYTHON,
                        help="the interpreter certctl is installed for and runs on")
    parser.add_argument("--write-results", action="store_true")
    args = parser.parse_args(argv)
    command = "python -m bench.b3_handshakes " + shlex.join(
        argv if argv is not None else sys.argv[1:]
    )
    started = datetime.datetime.now(datetime.UTC)
    work = Path(tempfile.mkdtemp(prefix="certctl-b3-"))
    certs = work / "certs"
    names = [f"h{i:05d}.b3.bench.test" for i in range(args.certificates)]
    t0 = time.monotonic()
    b3_peers.make_certificates(certs, [*names, "default.b3.bench.test"])
    print(f"{len(names)} certificates written in {time.monotonic() - t0:.1f} s", flush=True)
    certctl = installed.install(python=args.python, into=work / "venv")
    print(f"certctl installed for Python {certctl.interpreter}", flush=True)

    backend_port, nginx_port = free_port(), free_port()
    servers: dict[str, b3_peers.ServerProcess] = {}
    rows: dict[tuple[str, str], list[tuple[int, int, float]]] = {}
    startup: dict[str, tuple[float, int]] = {}
    with contextlib.ExitStack() as stack:
        # The API server refuses loopback addresses in EndpointSlices: `certctl dataplane`
        # reaches the backend on an address of `lo` outside 127.0.0.0/8, the rest on 127.0.0.1.
        alias = stack.enter_context(b3_peers.loopback_alias())
        cluster = stack.enter_context(b3_peers.control_plane(
            workdir=work / "controlplane", namespace=_NAMESPACE))
        backend = b3_peers.backend_nginx(workdir=work / "backend", port=backend_port,
                                         also_on=[alias])
        stack.callback(backend.stop)
        stack.callback(lambda: b3_peers.stop_all(*servers.values()))
        location = (
            "location / { proxy_pass http://backend; proxy_http_version 1.1; "
            'proxy_set_header Connection ""; proxy_set_header Host $http_host; '
            "proxy_set_header X-Forwarded-For $remote_addr; }"
        )
        blocks = [
            f"  upstream backend {{ server 127.0.0.1:{backend_port}; keepalive 64; }}",
            "  server_names_hash_max_size 65536; server_names_hash_bucket_size 128;",
            "  ssl_protocols TLSv1.2 TLSv1.3; ssl_ciphers ECDHE+AESGCM:ECDHE+CHACHA20;",
            f"  server {{ listen 127.0.0.1:{nginx_port} ssl default_server; "
            f"ssl_certificate {certs}/default.b3.bench.test.crt; "
            f"ssl_certificate_key {certs}/default.b3.bench.test.key; {location} }}",
        ] + [
            f"  server {{ listen 127.0.0.1:{nginx_port} ssl; server_name {name}; "
            f"ssl_certificate {certs}/{name}.crt; ssl_certificate_key {certs}/{name}.key; "
            f"{location} }}"
            for name in names
        ]
        t0 = time.monotonic()
        nginx = b3_peers.Nginx(workdir=work / "nginx", http_block="\n".join(blocks))
        servers["nginx"] = nginx.start(port=nginx_port, timeout=600)
        startup["nginx"] = (time.monotonic() - t0, b3_peers.rss_bytes(nginx.pid))
        serve = b3_peers.ServeCommand(
            workdir=work / "serve", certs=certs, name=names[-1], https_port=free_port(),
            http_port=free_port(), backend_port=backend_port,
            objects=b3_peers.site_objects(certs=certs, names=names, namespace="default",
                                          backend_address="127.0.0.1",
                                          backend_port=backend_port),
            command=certctl.command)
        stack.callback(serve.stop)  # also when it never comes to serve
        t0 = time.monotonic()  # the manifests are written by start(): part of its start-up
        servers[SERVE] = serve.start(log=work / "serve.log", timeout=600)
        startup[SERVE] = (time.monotonic() - t0, b3_peers.rss_bytes(serve.pid))
        t0 = time.monotonic()
        b3_peers.create_objects(cluster, b3_peers.site_objects(
            certs=certs, names=names, namespace=_NAMESPACE, backend_address=alias,
            backend_port=backend_port))
        print(f"{len(names)} Secrets and their Ingresses created in the API server in "
              f"{time.monotonic() - t0:.1f} s", flush=True)
        t0 = time.monotonic()
        # Served once its last name answers: every Secret and Ingress is loaded.
        dataplane = b3_peers.DataPlaneCommand(
            kubeconfig=cluster.kubeconfig, namespace=_NAMESPACE, certs=certs, name=names[-1],
            https_port=free_port(), http_port=free_port(), command=certctl.command)
        stack.callback(dataplane.stop)  # also when it never comes to serve
        servers[DATAPLANE] = dataplane.start(log=work / "dataplane.log", timeout=600)
        startup[DATAPLANE] = (time.monotonic() - t0, b3_peers.rss_bytes(dataplane.pid))
        ports = {"nginx": nginx_port, SERVE: serve.https_port,
                 DATAPLANE: dataplane.https_port}
        for label, (seconds, rss) in startup.items():
            print(f"{label}: listening after {seconds:.1f} s, RSS {rss / 2**20:.0f} MiB",
                  flush=True)

        loads = {
            f"full handshakes, {args.hot_names:,} hot names": names[: args.hot_names],
            f"full handshakes, all {len(names):,} names": names,
        }
        first = f"first connection to each of the {len(names):,} names"
        for label in servers:  # certctl decodes its certificates here, nginx did at start-up
            result = full_handshakes(pid=servers[label].pid, port=ports[label], names=names,
                                     seconds=None, clients=args.clients)
            rows[(first, label)] = [result]
            print(f"{first} {label}: {result[0]} ok, {result[1]} failed, {result[2]:.2f} s CPU",
                  flush=True)
        for round_index in range(args.rounds):
            for load, load_names in loads.items():
                order = list(servers)[:: 1 if round_index % 2 == 0 else -1]
                for label in order:
                    result = full_handshakes(pid=servers[label].pid, port=ports[label],
                                             names=load_names, seconds=args.seconds,
                                             clients=args.clients)
                    rows.setdefault((load, label), []).append(result)
                    print(f"round {round_index + 1} {load} {label}: {result[0]} ok, "
                          f"{result[1]} failed, {result[2]:.2f} s CPU", flush=True)
            for label in list(servers)[:: 1 if round_index % 2 == 0 else -1]:
                name = names[round_index * 997 % len(names)]
                pid = servers[label].pid
                before = b3_peers.cpu_seconds(pid)
                resumed = b3_peers.wrk(
                    url=f"https://{name}:{ports[label]}/", hosts={name: "127.0.0.1"},
                    workdir=work, seconds=args.seconds, connections=16,
                    headers=["Connection: close"],
                )
                cpu = b3_peers.cpu_seconds(pid) - before
                rows.setdefault(("resumed handshakes (wrk)", label), []).append(
                    (resumed.requests, resumed.errors + resumed.non_2xx, cpu)
                )
                print(f"round {round_index + 1} wrk {label}: {resumed.requests} ok, "
                      f"{cpu:.2f} s CPU", flush=True)
        after_rss = {label: b3_peers.rss_bytes(srv.pid) for label, srv in servers.items()}

    section = results_section(command=command, started=started, args=args, rows=rows,
                              startup=startup, after_rss=after_rss,
                              certctl=certctl)
    print("\n" + section)
    if args.write_results:
        reporting.write_results(name="b3_handshakes", section=section)
        print(f"wrote {reporting.RESULTS_PATH}")
    return 0 if all(r[1] == 0 for runs in rows.values() for r in runs) else 1


def results_section(
    *,
    command: str,
    started: datetime.datetime,
    args: argparse.Namespace,
    rows: dict[tuple[str, str], list[tuple[int, int, float]]],
    startup: dict[str, tuple[float, int]],
    after_rss: dict[str, int],
    certctl: installed.Installed,
) -> str:
    # None for a run no connection succeeded in (its failures are counted).
    rounds = {key: [cpu / ok * 1000 if ok else None for ok, _, cpu in runs]
              for key, runs in rows.items()}
    per_1000 = {key: statistics.median(value for value in values if value is not None)
                for key, values in rounds.items()}
    lines = []
    for (load, label), runs in rows.items():
        ratio = per_1000[(load, label)] / per_1000[(load, "nginx")]
        lines.append(
            f"| {load} | {label} | {sum(r[0] for r in runs):,} | {sum(r[1] for r in runs)} | "
            f"{per_1000[(load, label)]:.3f} | {ratio:.2f}x | "
            f"{b3_peers.round_ratios(rounds[(load, label)], rounds[(load, 'nginx')])} |"
        )
    start_lines = [
        f"| {label} | {seconds:.1f} | {rss / 2**20:.0f} | {after_rss[label] / 2**20:.0f} |"
        for label, (seconds, rss) in startup.items()
    ]
    return (
        f"## B3: server CPU per 1,000 new TLS connections, {args.certificates:,} certificates "
        "loaded\n\n"
        f"Command (from the repo root, as root): `{command}`  \n"
        f"Date: {started:%Y-%m-%d %H:%M} UTC; first one connection to each name after "
        "start-up (certctl decodes each name's certificate on its first handshake, nginx "
        f"built all its contexts before listening), then {args.rounds} rounds of "
        f"{args.seconds} s per load and server, servers interleaved; full handshakes from "
        f"{args.clients} Python "
        "client processes (no session resumption, SNI rotating over the names), resumed ones "
        "from `wrk -t1 -c16 -H 'Connection: close'`; each connection is one proxied "
        "`GET /`. Medians over rounds; the ratio of each round (to nginx's run of that "
        "round), lowest-highest, beside the median's.\n\n"
        "| load | server | connections | failed | server CPU s / 1,000 connections | "
        "ratio to nginx | per round |\n"
        "|---|---|---|---|---|---|---|\n" + "\n".join(lines) + "\n\n"
        f"`{SERVE}` is the shipped command on a manifests folder holding a TLS Secret per "
        f"name and Ingresses of 500 rules; `{DATAPLANE}` is the shipped command against a "
        "real kube-apiserver + etcd (started by the benchmark, idle on the same cores "
        "during the runs) holding the same objects. Both run the package as `pip install` "
        "installs it, its data plane compiled, in a new virtualenv of the interpreter the "
        "machine table names.\n\n"
        "Start-up with the certificates (nginx: spawn to listening; the certctl commands: "
        "spawn, or for `serve` writing its manifests, to serving the last name) and "
        "resident memory:\n\n"
        "| server | start-up (s) | RSS at start (MiB) | RSS after the runs (MiB) |\n"
        "|---|---|---|---|\n" + "\n".join(start_lines) + "\n\n"
        "Machine:\n\n" + b3_peers.machine_table(certctl=certctl)
    )


if __name__ == "__main__":
    sys.exit(main())
