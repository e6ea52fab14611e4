"""What the data plane benchmarks (B3, B4, B5, B10) share: certificates, nginx, wrk, processes.

- `make_certificates` writes N ECDSA P-256 leaves from one throwaway CA as
  `<name>.crt` (leaf + CA) and `<name>.key`, the files both servers load.
- `Nginx` runs Debian's nginx (1 worker) on a generated config.
- `ServeCommand` and `DataPlaneCommand` run the shipped commands, `certctl serve` on a
  manifests folder and `certctl dataplane` against a control plane (`control_plane`,
  `one_site_in_a_cluster`): what the benchmarks measure.
- `DataPlaneServer` runs certctl's data plane in a process of its own
  (`python -m bench.b3_peers serve ...`: the CertificateIndex and DataPlane of
  `certctl serve`, fed directly instead of through a store), for B4's `--harness`
  row, to compare with the tables measured before the commands were.
- `wrk` runs wrk with a private /etc/hosts (a mount namespace from `unshare
  -m`, root only) so that it sends the benchmark names as SNI; the machine's
  own /etc/hosts is never touched.
- `cpu_seconds` / `rss_bytes` read /proc for a process and its children.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime
import http.client
import importlib.metadata
import os
import random
import re
import shlex
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from bench import installed, reporting
from tests.pebble import stop_process

if TYPE_CHECKING:  # imported when a benchmark starts one: it pulls in pytest and requests
    from tests.controlplane import ControlPlane

NGINX_BIN = "/usr/sbin/nginx"
WRK_BIN = "/usr/bin/wrk"


# --- certificates ---------------------------------------------------------------------


def make_certificates(directory: Path, names: Sequence[str], *, days: int = 30) -> bytes:
    """Write `<name>.crt` and `<name>.key` for every name; returns the CA's PEM."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "certctl bench CA")])
    now = datetime.datetime.now(datetime.UTC)
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    ca_pem = ca.public_bytes(serialization.Encoding.PEM)
    for name in names:
        write_leaf(directory=directory, name=name, ca=ca, ca_key=ca_key, ca_pem=ca_pem, days=days)
    (directory / "ca.pem").write_bytes(ca_pem)
    return ca_pem


def write_leaf(
    *,
    directory: Path,
    name: str,
    ca: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_pem: bytes,
    days: int,
) -> int:
    """One leaf for `name`; returns its serial number."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    serial = x509.random_serial_number()
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    (directory / f"{name}.crt").write_bytes(leaf.public_bytes(serialization.Encoding.PEM) + ca_pem)
    (directory / f"{name}.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return serial


# --- processes ------------------------------------------------------------------------


def _tree(pid: int) -> list[int]:
    pids = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        for child in children.read_text().split():
            pids += _tree(int(child))
    return pids


def cpu_seconds(pid: int) -> float:
    """User + system CPU of `pid` and its live children (nginx: master and worker)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for each in _tree(pid):
        fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / ticks


def rss_bytes(pid: int) -> int:
    page = os.sysconf("SC_PAGE_SIZE")
    return sum(
        int(Path(f"/proc/{each}/statm").read_text().split()[1]) * page for each in _tree(pid)
    )


def wait_for_port(port: int, *, timeout: float, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after {timeout} s")


class ServerProcess:
    """A server under test in its own process: measured by pid, stopped with SIGTERM."""

    proc: subprocess.Popen[bytes] | None

    def _spawn(self, argv: Sequence[str], *, log: Path, port: int, timeout: float,
               environment: Mapping[str, str] | None = None) -> None:
        """Start `argv` from the repo root, its output to `log`, with `environment` added
        to this process's; return once `port` listens."""
        self.proc = subprocess.Popen(
            argv, cwd=reporting.REPO_ROOT, stdin=subprocess.DEVNULL, stdout=log.open("wb"),
            stderr=subprocess.STDOUT, env={**os.environ, **(environment or {})},
        )
        wait_for_port(port, timeout=timeout, proc=self.proc)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)


# --- nginx ----------------------------------------------------------------------------


class Nginx(ServerProcess):
    """nginx with one worker on a config written by the caller (`http { ... }` body)."""

    def __init__(self, *, workdir: Path, http_block: str) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.config = workdir / "nginx.conf"
        self.config.write_text(
            "worker_processes 1;\n"
            "daemon off;\n"
            "master_process on;\n"
            f"pid {workdir}/nginx.pid;\n"
            f"error_log {workdir}/error.log warn;\n"
            "events { worker_connections 4096; }\n"
            "http {\n"
            "  access_log off;\n"
            f"  client_body_temp_path {workdir}/body;\n"
            f"  proxy_temp_path {workdir}/proxy;\n"
            "  keepalive_requests 1000000;\n"
            f"{http_block}\n"
            "}\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *, port: int, timeout: float = 120.0) -> Nginx:
        self.proc = subprocess.Popen(
            [NGINX_BIN, "-c", str(self.config), "-p", str(self.workdir)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=(self.workdir / "stderr.log").open("wb"),
        )
        wait_for_port(port, timeout=timeout, proc=self.proc)
        return self


def nginx_version() -> str:
    done = subprocess.run([NGINX_BIN, "-v"], capture_output=True, text=True, check=False)
    return (done.stderr or done.stdout).strip().removeprefix("nginx version: ")


# --- proxy benchmarks (B4, B10): one backend, servers measured in interleaved rounds ---


@dataclass
class Samples:
    """One server's measurements, a value per round."""

    rates: list[float] = field(default_factory=list)
    p50: list[float] = field(default_factory=list)
    p99: list[float] = field(default_factory=list)
    cpu_per_1000: list[float] = field(default_factory=list)
    failures: int = 0
    rss: int = 0

    def record(self, run: Run, *, cpu: float, pid: int) -> None:
        self.rates.append(run.rate)
        self.p50.append(run.p50_ms)
        self.p99.append(run.p99_ms)
        self.cpu_per_1000.append(cpu / run.served * 1000)
        self.failures += run.failures
        self.rss = max(self.rss, rss_bytes(pid))


@dataclass(frozen=True, kw_only=True)
class Run:
    """One load run against one server."""

    rate: float  # successful requests/s
    p50_ms: float
    p99_ms: float
    served: float  # the requests the server's CPU time over the run is divided by
    failures: int


def measure_rounds(
    *, servers: Mapping[str, ServerProcess], rounds: int, run: Callable[[str], Run],
) -> dict[str, Samples]:
    """`rounds` interleaved rounds: every server loaded by `run(label)` in turn, its CPU
    time counted around the run."""
    samples = {label: Samples() for label in servers}
    for round_index in range(rounds):
        for label in round_order(list(servers), round_index):
            pid = servers[label].pid
            cpu_before = cpu_seconds(pid)
            result = run(label)
            cpu = cpu_seconds(pid) - cpu_before
            samples[label].record(result, cpu=cpu, pid=pid)
            print(f"round {round_index + 1} {label}: {result.rate:,.0f} req/s, "
                  f"p99 {result.p99_ms:.2f} ms, {cpu:.2f} s CPU, "
                  f"{result.failures} failed", flush=True)
    return samples


def stop_all(*servers: ServerProcess) -> None:
    for server in servers:
        server.stop()


def round_order(labels: Sequence[str], round_index: int) -> list[str]:
    """`labels` rotated by the round, so no server always runs first (or after the same one)."""
    shift = round_index % len(labels)
    return [*labels[shift:], *labels[:shift]]


def round_ratios(values: Sequence[float | None], reference: Sequence[float | None]) -> str:
    """The lowest and the highest of the ratios `values[i] / reference[i]`, round by round
    (a server's round i ran beside the reference's round i): how far a median ratio of a
    row moves with the machine's noise. Rounds without a value (None) on either side are
    left out."""
    ratios = [value / ref for value, ref in zip(values, reference, strict=True)
              if value is not None and ref]
    return f"{min(ratios):.2f}-{max(ratios):.2f}x" if ratios else "-"


def backend_nginx(*, workdir: Path, port: int, also_on: Sequence[str] = ()) -> Nginx:
    """The proxied backend: `return 200` with a 23-byte body, on 127.0.0.1 and the
    addresses `also_on` (B4's `certctl dataplane` reaches it on one the API server accepts
    in an EndpointSlice)."""
    listens = "".join(f"listen {address}:{port}; " for address in ("127.0.0.1", *also_on))
    return Nginx(workdir=workdir, http_block=(
        f"  server {{ {listens}"
        'location / { return 200 "hello from the backend\\n"; } }'
    )).start(port=port)


def proxy_nginx(
    *, workdir: Path, port: int, backend_port: int, certs: Path, name: str, http2: bool,
) -> Nginx:
    """nginx as the reference proxy: TLS with `name`'s certificate, kept-alive upstream
    connections to the backend, Host and X-Forwarded-* set as certctl sets them."""
    listen = f"127.0.0.1:{port} ssl http2" if http2 else f"127.0.0.1:{port} ssl"
    return Nginx(workdir=workdir, http_block=(
        f"  upstream backend {{ server 127.0.0.1:{backend_port}; keepalive 64; }}\n"
        f"  server {{ listen {listen}; server_name {name};\n"
        f"    ssl_certificate {certs}/{name}.crt; ssl_certificate_key {certs}/{name}.key;\n"
        "    ssl_protocols TLSv1.2 TLSv1.3; ssl_ciphers ECDHE+AESGCM:ECDHE+CHACHA20;\n"
        + ("    http2_max_requests 1000000;\n" if http2 else "")
        + "    location / { proxy_pass http://backend; proxy_http_version 1.1;\n"
        '      proxy_set_header Connection ""; proxy_set_header Host $http_host;\n'
        "      proxy_set_header X-Forwarded-For $remote_addr;\n"
        "      proxy_set_header X-Real-IP $remote_addr;\n"
        "      proxy_set_header X-Forwarded-Proto $scheme;\n"
        "      proxy_set_header X-Forwarded-Host $http_host; } }"
    )).start(port=port)


def report(*, name: str, section: str, samples: dict[str, Samples], write: bool) -> int:
    """Print the results section (and write it to RESULTS.md); 1 if any request failed."""
    print("\n" + section)
    if write:
        reporting.write_results(name=name, section=section)
        print(f"wrote {reporting.RESULTS_PATH}")
    return 0 if all(s.failures == 0 for s in samples.values()) else 1


# --- certctl's data plane in its own process ----------------------------------------------


@dataclass
class DataPlaneServer(ServerProcess):
    """`python -m bench.b3_peers serve`: the data plane on given ports and certificates."""

    certs: Path
    names: Sequence[str]
    https_port: int
    http_port: int
    backend_port: int
    loop: str = "uvloop"
    proc: subprocess.Popen[bytes] | None = None

    def start(self, *, log: Path, timeout: float = 300.0) -> DataPlaneServer:
        names_file = self.certs / "names.txt"
        names_file.write_text("\n".join(self.names) + "\n")
        argv = [
            sys.executable, "-m", "bench.b3_peers", "serve",
            "--certs", str(self.certs),
            "--names", str(names_file),
            "--https-port", str(self.https_port),
            "--http-port", str(self.http_port),
            "--backend-port", str(self.backend_port),
            "--loop", self.loop,
        ]
        self._spawn(argv, log=log, port=self.https_port, timeout=timeout)
        return self


def serve(args: argparse.Namespace) -> None:
    """The body of `python -m bench.b3_peers serve`; runs until SIGTERM."""
    from certctl.api import resources
    from certctl.dataplane import certstore, routing, server
    from certctl.routes import ingress as ingress_routes

    names = Path(args.names).read_text().split()
    certificates = certstore.CertificateIndex()
    certs = Path(args.certs)
    for name in names:
        certificates.set_certificate(
            source=resources.ObjectKey(kind="Secret", namespace="bench", name=name),
            chain_pem=(certs / f"{name}.crt").read_bytes(),
            key_pem=(certs / f"{name}.key").read_bytes(),
        )
    backend = resources.ServiceBackend(name="backend", port_number=80)
    ingress = resources.Ingress(
        namespace="bench",
        name="bench",
        rules=tuple(
            resources.IngressRule(
                host=name,
                paths=(resources.IngressPath(path="/", path_type="Prefix", backend=backend),),
            )
            for name in names
        ),
    )
    table = routing.RouteTable.build(
        routes=ingress_routes.compile_ingresses(
            ingresses=[ingress],
            ingress_classes=[],
            controller_name="certctl.io/ingress-controller",
            class_name=None,
        ),
        services=[
            resources.Service(
                namespace="bench",
                name="backend",
                ports=(resources.ServicePort(port=80, name="http", target_port=args.backend_port),),
            )
        ],
        endpoint_slices=[
            resources.EndpointSlice(
                namespace="bench",
                name="backend-1",
                service_name="backend",
                ports=(resources.EndpointPort(port=args.backend_port, name="http"),),
                endpoints=(resources.Endpoint(addresses=("127.0.0.1",)),),
            )
        ],
    )

    async def main() -> None:
        plane = server.DataPlane(
            http_address=("127.0.0.1", args.http_port),
            https_address=("127.0.0.1", args.https_port),
            certificates=certificates,
            challenge_responder=lambda host, token: None,
        )
        plane.set_routes(table)
        await plane.start()
        stopped = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stopped.set)
        await stopped.wait()
        await plane.stop()

    if args.loop == "uvloop":
        import uvloop

        uvloop.run(main())
    else:
        asyncio.run(main())


# --- the shipped commands: `certctl serve` and `certctl dataplane` --------------------------


def site_objects(
    *, certs: Path, names: Sequence[str], namespace: str, backend_address: str,
    backend_port: int, rules_per_ingress: int = 500,
) -> list[dict[str, Any]]:
    """What a user gives either command for `names`: a TLS Secret per name, Ingresses of
    class certctl (`rules_per_ingress` names each: an object stays far below the API
    server's size limit) routing `/` to Service `backend`, and the Service's EndpointSlice."""
    from tests.clusterops import service_with_slice

    def secret(index: int, name: str) -> dict[str, Any]:
        data = {key: base64.b64encode((certs / f"{name}.{suffix}").read_bytes()).decode()
                for key, suffix in (("tls.crt", "crt"), ("tls.key", "key"))}
        return {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
                "metadata": {"name": f"tls-{index}", "namespace": namespace}, "data": data}

    def ingress(first: int) -> dict[str, Any]:
        chunk = list(enumerate(names))[first:first + rules_per_ingress]
        path = {"path": "/", "pathType": "Prefix",
                "backend": {"service": {"name": "backend", "port": {"number": 80}}}}
        return {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
                "metadata": {"name": f"bench-{first // rules_per_ingress}",
                             "namespace": namespace},
                "spec": {"ingressClassName": "certctl",
                         "tls": [{"hosts": [name], "secretName": f"tls-{index}"}
                                 for index, name in chunk],
                         "rules": [{"host": name, "http": {"paths": [path]}}
                                   for _, name in chunk]}}

    return [
        *(secret(index, name) for index, name in enumerate(names)),
        *(ingress(first) for first in range(0, len(names), rules_per_ingress)),
        *service_with_slice("backend", namespace=namespace, address=backend_address,
                            port=backend_port),
    ]


def wait_served(*, port: int, name: str, certs: Path, proc: subprocess.Popen[bytes],
                timeout: float) -> None:
    """Until `name` on `port` answers 200 over TLS, verified against the bench CA: the
    command has loaded the certificate and the route, not only opened its listener."""
    context = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        connection = http.client.HTTPSConnection("127.0.0.1", port, timeout=5, context=context)
        try:
            raw = socket.create_connection(("127.0.0.1", port), timeout=5)
            connection.sock = context.wrap_socket(raw, server_hostname=name)
            connection.request("GET", "/", headers={"Host": name})
            response = connection.getresponse()
            response.read()
            if response.status == 200:
                return
            last = f"status {response.status}"
        except (OSError, http.client.HTTPException) as err:
            last = str(err)
        finally:
            connection.close()
        time.sleep(0.2)
    raise RuntimeError(f"{name} not served on port {port} after {timeout} s: {last}")


# How the commands start unless a benchmark installs certctl (bench/installed.py): the
# checkout, on the interpreter running the benchmark.
CHECKOUT_COMMAND: Final = (sys.executable, "-m", "certctl")


@dataclass
class ServeCommand(ServerProcess):
    """`certctl serve` (`command`) on a manifests folder of `objects` (by default
    `site_objects` for `name`, the backend on 127.0.0.1), listening on 127.0.0.1; started
    once `name` is served."""

    workdir: Path
    certs: Path
    name: str
    https_port: int
    http_port: int
    backend_port: int
    proc: subprocess.Popen[bytes] | None = None
    objects: Sequence[dict[str, Any]] | None = None
    command: Sequence[str] = CHECKOUT_COMMAND

    def start(self, *, log: Path, timeout: float = 300.0) -> ServeCommand:
        manifests = self.workdir / "manifests"
        manifests.mkdir(parents=True, exist_ok=True)
        objects = self.objects if self.objects is not None else site_objects(
            certs=self.certs, names=[self.name], namespace="default",
            backend_address="127.0.0.1", backend_port=self.backend_port)
        (manifests / "site.yaml").write_text(yaml.safe_dump_all(objects))
        self._spawn(
            [*self.command, "serve", "--manifests", str(manifests),
             "--state-dir", str(self.workdir / "state"), "--listen-address", "127.0.0.1",
             "--http-port", str(self.http_port), "--https-port", str(self.https_port)],
            log=log, port=self.https_port, timeout=timeout)
        assert self.proc is not None
        wait_served(port=self.https_port, name=self.name, certs=self.certs, proc=self.proc,
                    timeout=timeout)
        return self


@dataclass
class DataPlaneCommand(ServerProcess):
    """`certctl dataplane` (`command`) against a real control plane (tests/controlplane.py),
    as the admin, watching one namespace whose objects the caller created."""

    kubeconfig: Path
    namespace: str
    certs: Path
    name: str
    https_port: int
    http_port: int
    proc: subprocess.Popen[bytes] | None = None
    command: Sequence[str] = CHECKOUT_COMMAND

    def start(self, *, log: Path, timeout: float = 300.0) -> DataPlaneCommand:
        self._spawn(
            [*self.command, "dataplane", "--kubeconfig", str(self.kubeconfig),
             "--namespace", self.namespace, "--listen-address", "127.0.0.1",
             "--http-port", str(self.http_port), "--https-port", str(self.https_port)],
            log=log, port=self.https_port, timeout=timeout)
        assert self.proc is not None
        wait_served(port=self.https_port, name=self.name, certs=self.certs, proc=self.proc,
                    timeout=timeout)
        return self


@contextlib.contextmanager
def loopback_alias() -> Iterator[str]:
    """An address of the `lo` interface outside 127.0.0.0/8 (root only): the API server
    refuses loopback addresses in EndpointSlices, the traffic still stays on `lo`."""
    used = subprocess.run(["ip", "-4", "-br", "addr"], capture_output=True, text=True,
                          check=True).stdout
    address = next(a for a in (f"10.215.{random.randrange(256)}.{random.randrange(1, 255)}"
                               for _ in range(100)) if a + "/" not in used)
    subprocess.run(["ip", "addr", "add", f"{address}/32", "dev", "lo"], check=True)
    try:
        yield address
    finally:
        subprocess.run(["ip", "addr", "del", f"{address}/32", "dev", "lo"], check=False)


@contextlib.contextmanager
def control_plane(*, workdir: Path, namespace: str) -> Iterator[ControlPlane]:
    """etcd + kube-apiserver (+ the CRDs and the certctl IngressClass) from
    tests/controlplane.py, with `namespace` created; stopped after."""
    from tests.controlplane import ControlPlane

    workdir.mkdir(parents=True, exist_ok=True)
    plane = ControlPlane.start(workdir)
    try:
        plane.kubectl("create", "namespace", namespace)
        yield plane
    finally:
        plane.stop()


@contextlib.contextmanager
def one_site_in_a_cluster(
    *, work: Path, certs: Path, name: str, namespace: str, backend_port: int
) -> Iterator[ControlPlane]:
    """A control plane holding `site_objects` for `name` in `namespace`, and the backend
    nginx they route to, listening on 127.0.0.1 and on a loopback alias (the API server
    refuses loopback addresses in EndpointSlices: `certctl dataplane` reaches the backend
    on an address of `lo` outside 127.0.0.0/8, the other servers on 127.0.0.1)."""
    with loopback_alias() as alias, control_plane(workdir=work / "controlplane",
                                                  namespace=namespace) as plane:
        create_objects(plane, site_objects(certs=certs, names=[name], namespace=namespace,
                                           backend_address=alias, backend_port=backend_port))
        backend = backend_nginx(workdir=work / "backend", port=backend_port, also_on=[alias])
        try:
            yield plane
        finally:
            backend.stop()


def create_objects(plane: ControlPlane, objects: Sequence[dict[str, Any]]) -> None:
    """Create `objects` through the API server, as the admin."""
    from tests.clusterops import admin_store

    store = admin_store(plane)
    try:
        for obj in objects:
            store.create(obj=obj)
    finally:
        store.close()


# --- wrk ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class WrkResult:
    requests: int
    seconds: float
    errors: int
    non_2xx: int
    p50_ms: float
    p99_ms: float

    @property
    def rate(self) -> float:
        return self.requests / self.seconds


def wrk(
    *,
    url: str,
    hosts: dict[str, str],
    workdir: Path,
    seconds: int,
    connections: int,
    threads: int = 1,
    headers: Sequence[str] = (),
) -> WrkResult:
    """Run wrk against `url`, with `hosts` (name -> address) in a private /etc/hosts."""
    hosts_file = workdir / "hosts"
    hosts_file.write_text(
        "127.0.0.1 localhost\n" + "".join(f"{addr} {name}\n" for name, addr in hosts.items())
    )
    wrk_argv = [WRK_BIN, f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency"]
    for header in headers:
        wrk_argv += ["-H", header]
    wrk_argv.append(url)
    script = (
        f"mount --bind {shlex.quote(str(hosts_file))} /etc/hosts && exec {shlex.join(wrk_argv)}"
    )
    done = subprocess.run(
        ["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, check=False,
        timeout=seconds + 60,
    )
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    return parse_wrk(done.stdout)


def parse_wrk(output: str) -> WrkResult:
    def latency_ms(label: str) -> float:
        found = re.search(rf"^\s*{label}%\s+([\d.]+)(us|ms|s)\s*$", output, re.MULTILINE)
        if found is None:
            return float("nan")
        scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[found.group(2)]
        return float(found.group(1)) * scale

    done = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", output)
    if done is None:
        raise RuntimeError(f"cannot read wrk's output:\n{output}")
    scale = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[done.group(3)]
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return WrkResult(
        requests=int(done.group(1)),
        seconds=float(done.group(2)) * scale,
        errors=sum(int(g) for g in errors.groups()) if errors else 0,
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        p50_ms=latency_ms("50"),
        p99_ms=latency_ms("99"),
    )


def wrk_version() -> str:
    done = subprocess.run([WRK_BIN, "-v"], capture_output=True, text=True, check=False)
    return (done.stdout or done.stderr).strip().splitlines()[0]


# --- reporting ---------------------------------------------------------------------------


def machine_table(*, certctl: installed.Installed | None = None) -> str:
    """The machine, the peers' versions, and what certctl ran on: the `installed`
    package's virtualenv (bench/installed.py), else the benchmark's own interpreter."""
    if certctl is None:
        runtime = [
            ("OpenSSL (certctl)", ssl.OPENSSL_VERSION),
            ("uvloop / httptools", f"{importlib.metadata.version('uvloop')} / "
                                   f"{importlib.metadata.version('httptools')}"),
        ]
    else:
        runtime = [
            ("Python (certctl, installed by pip)", certctl.interpreter),
            ("OpenSSL (certctl)", certctl.openssl),
            ("uvloop / httptools", certctl.libraries),
        ]
    return reporting.machine_table(reporting.machine_rows(extra=[
        *runtime,
        ("nginx", f"{nginx_version()} (Debian nginx-light)"),
        ("wrk", wrk_version()),
        ("certctl", f"git {reporting.git_describe()}"),
    ]))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.b3_peers")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("serve", help="run the data plane for a benchmark")
    run.add_argument("--certs", required=True)
    run.add_argument("--names", required=True, help="file with one certificate name a line")
    run.add_argument("--https-port", type=int, required=True)
    run.add_argument("--http-port", type=int, required=True)
    run.add_argument("--backend-port", type=int, required=True)
    run.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    args = parser.parse_args(argv)
    serve(args)


if __name__ == "__main__":
    main()
