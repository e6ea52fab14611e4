"""Scale: annotated Ingresses in `certctl serve`: start-up, restart, time per edit, RSS.

    /work/main/.venv/bin/python -m bench.scale_controller [--sizes 100,1000,10000]
        [--edits 5] [--write-results] [--keep]

The fixture is B6's (`bench.b6_idle_certificates`): a local CA as ClusterIssuer
`local-ca` and, per Ingress, a kubernetes.io/tls Secret pre-issued by it, so
ingress-shim derives that many Certificates that are all up to date: nothing is
signed and no ACME server is needed, which isolates the controller's and the
data plane's own costs (store, shim, Certificate reconciler, work queue, route
compilation, certificate index) from issuance. One more manifest file holds the
Ingress the route edits change (host `edit.example.test`, no TLS) and two
Services with EndpointSlices naming two echo backends of this process.

Measured per size, on the `certctl serve` process:

1. start-up on an empty state dir, from spawn until quiet (B6's definition:
   every Certificate Ready, under 1 % of a core over 2 s), with its CPU time;
   then the process is stopped (SIGTERM);
2. restart on the state dir it left: from spawn until `/readyz` answers 200
   (the data plane's readiness: every route, Service and certificate loaded,
   polled every 50 ms on the admin address), then verified: a TLS handshake
   for the first and the last name (and 20 more at random) returns the
   certificate pre-issued for it, and a request over HTTPS for the last name
   gets its route (a 503: its Service has no endpoints; no route would be a
   404), and the edit Ingress answers from its backend. Also until quiet again
   (the reconcilers checking every Certificate once more);
3. `--edits` route edits, one at a time: the edit Ingress's backend switched
   between the two Services, its manifest file replaced by a rename, timed
   from the rename until a request through the data plane (HTTP on loopback,
   a new connection every ~1 ms) answers from the new backend; and from
   certctl's "manifests changed; reloading" log line, which leaves out the
   file watcher's own latency (in a cluster the edit arrives as a watch event);
4. `--edits` certificate edits, as before: one Ingress of the big files gets a
   new `cert-manager.io/renew-before`, timed until the derived Certificate's
   spec, then its status, follow (read from its state file every 5 ms);
5. RSS (VmRSS) once ready, once quiet, after the edits, and the peak (VmHWM).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import os
import random
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

import yaml

from bench import b1_issuance as b1
from bench import b6_idle_certificates as b6
from bench import reporting, workdir
from certctl.api import annotations as annotation_keys
from tests import serving
from tests.pebble import free_port

STATE_POLL = 0.005
# Every 50 ms: each poll is a request the process answers on a thread of its own while it
# loads, and at 5 ms apart they took a fifth of its CPU until ready (py-spy), slowing what
# they measured. A kubelet probes once a second at most; 50 ms is the resolution.
READY_POLL = 0.05
EDIT_TIMEOUT = 120.0
LOG_TIME_FORMAT = "%Y-%m-%d %H:%M:%S,%f"
EDIT_HOST = "edit.example.test"
EDIT_FILE = "edit-target.yaml"
BACKENDS = ("edit-a", "edit-b")  # the Services the route edits switch between
TARGET_RESTART_SECONDS = 5.0
TARGET_EDIT_MS = 50.0
TARGET_RSS_MB = 300.0


@dataclasses.dataclass(frozen=True, kw_only=True)
class Edit:
    ingress: str
    to_reloading: float  # rename -> "manifests changed; reloading"
    to_spec: float  # rename -> the Certificate's spec.renewBefore is the new value
    to_status: float  # rename -> its status.renewalTime follows from it


def ingress_file(manifests: Path, *, index: int) -> Path:
    """The manifest file b6.write_manifests put the `index`-th Ingress in."""
    return manifests / f"sites-{index // b6.PER_FILE:03d}.yaml"


def edit_ingress(*, manifests: Path, index: int, renew_before: str) -> float:
    """Set one Ingress's renew-before annotation; returns the wall time of the rename."""
    path = ingress_file(manifests, index=index)
    documents = list(yaml.load_all(path.read_text(), Loader=yaml.CSafeLoader))
    name = f"site-{index:05d}"
    for document in documents:
        if document["kind"] == "Ingress" and document["metadata"]["name"] == name:
            document["metadata"]["annotations"][annotation_keys.CM_RENEW_BEFORE] = renew_before
            break
    else:
        raise RuntimeError(f"Ingress {name} is not in {path}")
    # Staged outside the watched folder (same file system), so only the rename is seen.
    staged = manifests.parent / f"{path.name}.staged"
    staged.write_text(yaml.dump_all(documents, Dumper=yaml.CSafeDumper))
    renamed_at = time.time()
    os.replace(staged, path)
    return renamed_at


def certificate_state(state: Path, *, name: str) -> dict[str, object]:
    """The derived Certificate as certctl last wrote it ({} while it is being replaced)."""
    path = state / "objects" / "Certificate" / "default" / f"{name}.yaml"
    try:
        loaded = yaml.load(path.read_text(), Loader=yaml.CSafeLoader)
    except (OSError, yaml.YAMLError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


def log_time(log_path: Path, *, needle: str, after: float) -> float | None:
    """Wall time of the first line holding `needle` logged at or after `after`."""
    for line in log_path.read_text(errors="replace").splitlines():
        if needle not in line:
            continue
        try:
            at = datetime.datetime.strptime(line[:23], LOG_TIME_FORMAT).timestamp()
        except ValueError:
            continue
        if at >= after - 0.001:  # the log has millisecond resolution
            return at
    return None


def time_edit(*, manifests: Path, state: Path, log_path: Path, index: int,
              renew_before: str) -> Edit:
    name = f"site-{index:05d}-tls"
    status_before = certificate_state(state, name=name).get("status") or {}
    assert isinstance(status_before, dict)
    old_renewal = status_before.get("renewalTime")
    renamed_at = edit_ingress(manifests=manifests, index=index, renew_before=renew_before)
    spec_at = status_at = None
    deadline = renamed_at + EDIT_TIMEOUT
    while status_at is None:
        now = time.time()
        if now > deadline:
            raise RuntimeError(f"Certificate {name} did not reflect renewBefore {renew_before} "
                               f"after {EDIT_TIMEOUT:.0f} s:\n{b6.tail(log_path)}")
        current = certificate_state(state, name=name)
        spec = current.get("spec") or {}
        status = current.get("status") or {}
        assert isinstance(spec, dict) and isinstance(status, dict)
        if spec.get("renewBefore") == renew_before:
            spec_at = spec_at or now
            if status.get("renewalTime") not in (None, old_renewal):
                status_at = now
        time.sleep(STATE_POLL)
    assert spec_at is not None
    reloading_at = log_time(log_path, needle="manifests changed; reloading", after=renamed_at)
    return Edit(ingress=f"default/site-{index:05d}",
                to_reloading=float("nan") if reloading_at is None else reloading_at - renamed_at,
                to_spec=spec_at - renamed_at, to_status=status_at - renamed_at)


# --- the route edits ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class RouteEdit:
    to_live: float  # rename -> a request through the data plane reaches the new backend
    from_reload: float  # "manifests changed; reloading" -> the same


def edit_target_documents(*, backend: str, ports: dict[str, int]) -> list[dict[str, object]]:
    """The edit Ingress (routing `EDIT_HOST` to `backend`) and both Services' objects."""
    documents: list[dict[str, object]] = [{
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": "edit-target", "namespace": "default"},
        "spec": {"rules": [{"host": EDIT_HOST, "http": {"paths": [{
            "path": "/", "pathType": "Prefix",
            "backend": {"service": {"name": backend, "port": {"number": 80}}}}]}}]},
    }]
    for name in BACKENDS:
        documents += serving.service_with_endpoints(name, port=ports[name])
    return documents


def write_edit_target(manifests: Path, *, backend: str, ports: dict[str, int]) -> float:
    """Write the edit file (by a rename, as an editor does); the wall time of the rename."""
    staged = manifests.parent / f"{EDIT_FILE}.staged"
    staged.write_text(yaml.dump_all(edit_target_documents(backend=backend, ports=ports),
                                    Dumper=yaml.CSafeDumper))
    renamed_at = time.time()
    os.replace(staged, manifests / EDIT_FILE)
    return renamed_at


def answering_backend(http_port: int) -> str | None:
    """Which echo backend a request for EDIT_HOST reaches through the data plane."""
    with socket.create_connection(("127.0.0.1", http_port), timeout=5) as conn:
        conn.sendall(f"GET / HTTP/1.1\r\nHost: {EDIT_HOST}\r\nConnection: close\r\n\r\n"
                     .encode())
        response = b""
        while chunk := conn.recv(65536):
            response += chunk
    head, _, body = response.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        return None
    return body.split(b" ", 1)[0].decode()


def time_route_edit(*, manifests: Path, log_path: Path, http_port: int, backend: str,
                    ports: dict[str, int]) -> RouteEdit:
    renamed_at = write_edit_target(manifests, backend=backend, ports=ports)
    deadline = renamed_at + EDIT_TIMEOUT
    while answering_backend(http_port) != backend:
        if time.time() > deadline:
            raise RuntimeError(f"{EDIT_HOST} not routed to {backend} after {EDIT_TIMEOUT:.0f} s:"
                               f"\n{b6.tail(log_path)}")
    live_at = time.time()
    reloading_at = log_time(log_path, needle="manifests changed; reloading", after=renamed_at)
    return RouteEdit(to_live=live_at - renamed_at,
                     from_reload=float("nan") if reloading_at is None else live_at - reloading_at)


# --- the process ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class Ports:
    http: int
    https: int
    admin: int


def start_certctl(*, manifests: Path, state: Path, log_path: Path,
                  ports: Ports) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "certctl", "serve", "--manifests", str(manifests),
            "--state-dir", str(state), "--listen-address", "127.0.0.1",
            "--http-port", str(ports.http), "--https-port", str(ports.https),
            "--metrics-port", str(ports.admin)]
    with log_path.open("ab") as log:
        return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=b6.REPO_ROOT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})


@contextlib.contextmanager
def running(**kwargs: object) -> Iterator[subprocess.Popen[bytes]]:
    proc = start_certctl(**kwargs)  # type: ignore[arg-type]
    try:
        yield proc
    finally:
        b6.stop(proc)


def ready(admin_port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/readyz", timeout=2) as r:
            return bool(r.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def https_status(*, port: int, host: str, ca_pem: bytes) -> int:
    """The status of GET / for `host` over HTTPS (SNI and Host both `host`)."""
    context = ssl.create_default_context(cadata=ca_pem.decode())
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname=host) as tls:
        tls.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        first = tls.recv(64)
    return int(first.split(b" ", 2)[1])


@dataclasses.dataclass(frozen=True, kw_only=True)
class Restart:
    ready_seconds: float  # spawn -> /readyz 200
    verified_seconds: float  # spawn -> the handshakes and requests below checked
    ready_cpu_seconds: float  # CPU used until ready (sampled just after)
    quiet: b6.Start  # spawn -> quiet again
    rss_ready_mb: float
    names_checked: int


def measure_restart(*, proc: subprocess.Popen[bytes], spawned: float, log_path: Path,
                    state: Path, ports: Ports, count: int, serials: dict[str, int],
                    ca_pem: bytes, backend: str, timeout: float) -> Restart:
    deadline = spawned + timeout
    while not ready(ports.admin):
        if proc.poll() is not None:
            raise RuntimeError(f"certctl exited with {proc.returncode}:\n{b6.tail(log_path)}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"not ready after {timeout:.0f} s:\n{b6.tail(log_path)}")
        time.sleep(READY_POLL)
    ready_at = time.monotonic()
    ready_cpu = b6.cpu_seconds(proc.pid)
    rss_ready_mb, _ = b6.memory_mb(proc.pid)
    hosts = sorted(serials)
    checked = [hosts[0], hosts[-1],
               *random.Random(20).sample(hosts[1:-1], k=min(20, max(0, len(hosts) - 2)))]
    for host in checked:
        served = b6.served_serial(port=ports.https, host=host, ca_pem=ca_pem)
        if served != serials[host]:
            raise RuntimeError(f"{host}: served serial {served:x}, issued {serials[host]:x}")
    last = hosts[-1]
    status = https_status(port=ports.https, host=last, ca_pem=ca_pem)
    if status != 503:  # routed to its Service, which has no endpoints; no route: 404
        raise RuntimeError(f"{last}: HTTPS answered {status}, not its route's 503")
    if answering_backend(ports.http) != backend:
        raise RuntimeError(f"{EDIT_HOST} is not routed to {backend} when ready")
    verified_at = time.monotonic()
    quiet = b6.wait_until_quiet(proc=proc, spawned=spawned, log_path=log_path, state=state,
                                count=count, timeout=timeout)
    return Restart(ready_seconds=ready_at - spawned, verified_seconds=verified_at - spawned,
                   ready_cpu_seconds=ready_cpu, quiet=quiet, rss_ready_mb=rss_ready_mb,
                   names_checked=len(checked))


# --- one size -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class SizeResult:
    count: int
    start: b6.Start  # empty state dir
    rss_quiet_mb: float  # after the start on an empty state dir
    restart: Restart
    route_edits: list[RouteEdit]
    edits: list[Edit]
    rss_end_mb: float
    hwm_mb: float  # peak of the restarted process
    checks: list[tuple[str, bool]]


def run_size(*, count: int, edits: int, started_at: datetime.datetime, keep: bool,
             timeout: float) -> SizeResult:
    work = workdir.create(prefix=f"certctl-scale-{count}-")
    manifests, state = work / "manifests", work / "state"
    manifests.mkdir()
    try:
        with serving.echo_backend(BACKENDS[0]) as port_a, \
                serving.echo_backend(BACKENDS[1]) as port_b:
            backend_ports = {BACKENDS[0]: port_a, BACKENDS[1]: port_b}
            print(f"[{count}] work dir {work}; issuing {count} certificates...", flush=True)
            ca = b6.make_ca(started_at)
            serials = b6.write_manifests(folder=manifests, ca=ca, count=count, now=started_at,
                                         seed=6, ingresses=True)
            write_edit_target(manifests, backend=BACKENDS[0], ports=backend_ports)
            log_path = work / "certctl.log"
            ports = Ports(http=free_port(), https=free_port(), admin=free_port())
            spawned = time.monotonic()
            with running(manifests=manifests, state=state, log_path=log_path,
                         ports=ports) as proc:
                start = b6.wait_until_quiet(proc=proc, spawned=spawned, log_path=log_path,
                                            state=state, count=count, timeout=timeout)
                rss_quiet_mb, _ = b6.memory_mb(proc.pid)
            print(f"[{count}] empty state dir: quiet after {start.seconds:.1f} s "
                  f"({start.cpu_seconds:.1f} s CPU), RSS {rss_quiet_mb:.0f} MB; restarting...",
                  flush=True)
            spawned = time.monotonic()
            with running(manifests=manifests, state=state, log_path=log_path,
                         ports=ports) as proc:
                restart = measure_restart(proc=proc, spawned=spawned, log_path=log_path,
                                          state=state, ports=ports, count=count,
                                          serials=serials, ca_pem=ca.pem,
                                          backend=BACKENDS[0], timeout=timeout)
                print(f"[{count}] restart: ready after {restart.ready_seconds:.2f} s "
                      f"(verified {restart.verified_seconds:.2f} s), RSS "
                      f"{restart.rss_ready_mb:.0f} MB; quiet after "
                      f"{restart.quiet.seconds:.1f} s", flush=True)
                route_edits = []
                for number in range(edits):
                    time.sleep(0.5)  # apart, as edits by hand are
                    route_edit = time_route_edit(
                        manifests=manifests, log_path=log_path, http_port=ports.http,
                        backend=BACKENDS[(number + 1) % 2], ports=backend_ports)
                    route_edits.append(route_edit)
                    print(f"[{count}] route edit live after {route_edit.to_live * 1000:.0f} ms "
                          f"({route_edit.from_reload * 1000:.0f} ms from the reload)",
                          flush=True)
                cert_edits: list[Edit] = []
                for number, index in enumerate(
                        random.Random(8).sample(range(count), k=min(edits, count))):
                    cert_edit = time_edit(manifests=manifests, state=state, log_path=log_path,
                                          index=index, renew_before=f"{700 + number}h")
                    cert_edits.append(cert_edit)
                    print(f"[{count}] {cert_edit.ingress}: spec "
                          f"{cert_edit.to_spec * 1000:.0f} ms, status "
                          f"{cert_edit.to_status * 1000:.0f} ms", flush=True)
                    time.sleep(1.0)  # let the reload's aftermath settle before the next edit
                rss_end_mb, hwm_mb = b6.memory_mb(proc.pid)
        checks = [
            (f"{count} Certificates derived, all Ready", b6.ready_count(state) == count),
            ("no Order exists (nothing was issued)",
             not any((state / "objects" / "Order").glob("*/*.yaml"))),
            (f"restart: {restart.names_checked} names served their pre-issued certificate, "
             "the last name routed, the edit Ingress answered by its backend, once ready",
             True),
        ]
        return SizeResult(count=count, start=start, rss_quiet_mb=rss_quiet_mb, restart=restart,
                          route_edits=route_edits, edits=cert_edits, rss_end_mb=rss_end_mb,
                          hwm_mb=hwm_mb, checks=checks)
    finally:
        workdir.remove_unless_kept(work, keep=keep)


# --- results ---------------------------------------------------------------------------------


def _ms(values: Sequence[float]) -> str:
    return (f"{b1.percentile(values, 0.5) * 1000:.0f} ms "
            f"({min(values) * 1000:.0f}-{max(values) * 1000:.0f})")


def _median(values: Sequence[float]) -> float:
    return b1.percentile(values, 0.5)


def results_section(*, command: str, started_at: datetime.datetime,
                    results: Sequence[SizeResult]) -> str:
    largest = max(results, key=lambda r: r.count)
    restart = largest.restart
    edit_ms = _median([e.from_reload for e in largest.route_edits]) * 1000
    rows = [
        "| measurement | value | target |",
        "|---|---|---|",
        f"| restart (state dir of the previous run): spawn to `/readyz` 200, every route and "
        f"certificate loaded | {restart.ready_seconds:.2f} s ({restart.ready_cpu_seconds:.1f} s "
        f"CPU) | <= {TARGET_RESTART_SECONDS:.0f} s "
        f"({b6.verdict(restart.ready_seconds <= TARGET_RESTART_SECONDS)}) |",
        f"| restart: spawn to {restart.names_checked} handshakes and the routes checked | "
        f"{restart.verified_seconds:.2f} s | |",
        f"| restart: spawn to quiet (the reconcilers' own pass over every Certificate) | "
        f"{restart.quiet.seconds:.1f} s ({restart.quiet.cpu_seconds:.1f} s CPU) | |",
        f"| route edit: \"reloading\" log line to the new backend answering, median of "
        f"{len(largest.route_edits)} (min-max) | "
        f"{_ms([e.from_reload for e in largest.route_edits])} | <= {TARGET_EDIT_MS:.0f} ms "
        f"({b6.verdict(edit_ms <= TARGET_EDIT_MS)}) |",
        f"| route edit: manifest rename to the new backend answering (+ the file watcher) | "
        f"{_ms([e.to_live for e in largest.route_edits])} | |",
        f"| certificate edit: rename to the Certificate's spec / status updated | "
        f"{_ms([e.to_spec for e in largest.edits])} / {_ms([e.to_status for e in largest.edits])}"
        " | |",
        f"| start-up, empty state dir: spawn to quiet | {largest.start.seconds:.1f} s "
        f"({largest.start.cpu_seconds:.1f} s CPU) | |",
        f"| RSS: restarted and ready / after the edits / peak (VmHWM) | "
        f"{restart.rss_ready_mb:.0f} / {largest.rss_end_mb:.0f} / {largest.hwm_mb:.0f} MB | "
        f"<= {TARGET_RSS_MB:.0f} MB ({b6.verdict(largest.hwm_mb <= TARGET_RSS_MB)}) |",
    ]
    table = [
        "| Ingresses | start-up, empty state dir, to quiet | restart to ready | restart to "
        "quiet | route edit from the reload (median) | route edit from the rename (median) | "
        "Certificate spec after an edit (median) | RSS ready / peak |",
        "|---|---|---|---|---|---|---|---|",
        *(f"| {r.count:,} | {r.start.seconds:.1f} s | {r.restart.ready_seconds:.2f} s | "
          f"{r.restart.quiet.seconds:.1f} s | "
          f"{_median([e.from_reload for e in r.route_edits]) * 1000:.0f} ms | "
          f"{_median([e.to_live for e in r.route_edits]) * 1000:.0f} ms | "
          f"{_median([e.to_spec for e in r.edits]) * 1000:.0f} ms | "
          f"{r.restart.rss_ready_mb:.0f} / {r.hwm_mb:.0f} MB |"
          for r in sorted(results, key=lambda r: r.count)),
    ]
    checks = [(f"{r.count:,}: {what}", ok) for r in results for what, ok in r.checks]
    return "\n".join([
        f"## Scale: {largest.count:,} Ingresses in `certctl serve` (restart, time per edit, "
        "RSS, and how they grow)",
        "",
        f"Command (from the repo root): `{command}`  ",
        f"Date: {started_at:%Y-%m-%d %H:%M} UTC. Per size: that many annotated Ingresses "
        "(ClusterIssuer `local-ca`, a `spec.ca` issuer), each with its pre-issued Secret "
        "(B6's fixture), so ingress-shim derives that many up-to-date Certificates: no "
        "signing, no ACME; plus the edit Ingress and two Services with EndpointSlices for two "
        "echo backends of the benchmark. The machine is shared: 2 cores, other engineers' "
        "test runs on them during this run, so the numbers are noisy.",
        "",
        f"{largest.count:,} Ingresses:",
        "",
        *rows,
        "",
        "Scaling:",
        "",
        *table,
        "",
        "Restart: the state dir the empty-state run left, a new process; `/readyz` polled every "
        "50 ms; then TLS handshakes checked against the pre-issued serials and HTTPS requests "
        "routed. A route edit switches the edit Ingress between the two Services in its own "
        "manifest file (replaced by a rename), timed until a request through the data plane "
        "(HTTP on loopback) answers from the new backend: from the rename, and from certctl's "
        "\"manifests changed; reloading\" log line (millisecond resolution), which leaves out "
        "the file watcher's latency (in a cluster the edit is a watch event). A certificate "
        f"edit sets `{annotation_keys.CM_RENEW_BEFORE}` on one Ingress of the big files "
        f"({b6.PER_FILE} Ingress + Secret pairs each).",
        "",
        "Checks:",
        "",
        *(f"- {'ok' if ok else 'FAILED'}: {what}" for what, ok in checks),
        "",
        "Machine:",
        "",
        reporting.machine_table(b6.machine()),
    ])


# --- main ------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scale_controller",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="100,1000,10000",
                        help="comma-separated Ingress counts, one run each")
    parser.add_argument("--edits", type=int, default=5, help="timed edits of each kind")
    parser.add_argument("--timeout", type=float, default=1800.0,
                        help="seconds a start may take before the run fails")
    parser.add_argument("--write-results", action="store_true",
                        help=f"replace this benchmark's section of {reporting.RESULTS_PATH.name}")
    parser.add_argument("--keep", action="store_true", help="keep the work dirs")
    args = parser.parse_args(argv)
    try:
        sizes = [int(size) for size in args.sizes.split(",")]
    except ValueError:
        parser.error("--sizes takes comma-separated counts")
    if min(sizes) < 1 or args.edits < 1:
        parser.error("--sizes and --edits must be at least 1")
    started_at = datetime.datetime.now(datetime.UTC)
    results = [run_size(count=count, edits=args.edits, started_at=started_at, keep=args.keep,
                        timeout=args.timeout) for count in sizes]
    for result in results:
        for what, ok in result.checks:
            print(f"{result.count}: {'ok' if ok else 'FAILED'}: {what}")
    if args.write_results:
        command = reporting.command_line(module="bench.scale_controller", argv=argv)
        reporting.write_results(name="scale_controller", section=results_section(
            command=command, started_at=started_at, results=results))
        print(f"wrote {reporting.RESULTS_PATH}")
    return 0 if all(ok for r in results for _, ok in r.checks) else 1


if __name__ == "__main__":
    sys.exit(main())
