"""B1: one annotated Ingress to a served certificate (HTTP-01, Pebble), certctl vs certbot vs lego.

    .venv/bin/python -m bench.b1_issuance --runs 20 [--write-results]

One Pebble (+ challtestsrv) is started for the whole run with
`PEBBLE_AUTHZREUSE=0` (no authorization is ever reused) and every run uses a
fresh hostname, so each timed run is one full ACME order: newOrder, one
HTTP-01 challenge validated by Pebble's VA, finalize, download.

What is timed, per client:

- certctl: from spawning `certctl serve` (fresh manifests dir: ClusterIssuer +
  annotated Ingress + Service/EndpointSlice; fresh state dir, so a new ACME
  account every run) until a TLS handshake with SNI=<host> on the HTTPS port
  presents a chain that verifies against Pebble's issuance root (handshakes
  polled every 10 ms). Python start-up is included; the time from the
  "serving HTTP" log line to the served certificate is reported separately.
- certbot: the whole `certbot certonly --standalone` CLI, with an account
  registered before the timed runs.
- lego: the whole `lego ... run` CLI; the account is registered by the
  untimed warm-up run and reused by every timed run (same --path).

Runs are interleaved (run i does every client once, the client order rotating
with i), so drift on the machine or in Pebble's in-memory state hits every
client alike. Each client gets one untimed warm-up run first (page cache,
account registration for the peers). Run it, as B2, at least five minutes after anything
removed many files on the file system (bench/b2_bulk_issuance.py says why): started a
minute after B2's clean-up, certctl's median was 17 % slower (bench/RESULTS.md, B1 notes).
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import datetime
import importlib.metadata
import math
import os
import re
import shlex
import signal
import socket
import ssl
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import IO

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from bench import reporting
from bench import workdir as workdir_module
from tests import testservers
from tests.pebble import PebbleBuild, PebbleServer, free_port, stop_process

CERTCTL_BIN = Path(sys.executable).parent / "certctl"
CERTBOT_BIN = "/usr/bin/certbot"
LEGO_BIN = "/usr/bin/lego"
EMAIL = "x@example.test"
CLIENTS = ("certctl", "certbot", "lego")
POLL_INTERVAL = 0.010


class RunFailed(Exception):
    """One run did not produce a verified certificate; the message carries the log tail."""


@dataclasses.dataclass(frozen=True)
class Sample:
    seconds: float
    # certctl only: spawn -> "serving HTTP" log line, and that line -> served.
    startup: float | None = None
    after_serving: float | None = None
    timeline: tuple[tuple[float, str], ...] = ()


@dataclasses.dataclass
class Bench:
    pebble: PebbleServer
    workdir: Path
    issuance_root_pem: bytes
    timeout: float
    certbot_dir: Path
    lego_dir: Path

    @property
    def ca_file(self) -> Path:
        """Pebble's listener CA, which the peers must trust to talk ACME to it."""
        return self.pebble.ca_bundle_path


# --- helpers ------------------------------------------------------------------


def tail(text: str, *, lines: int = 25) -> str:
    return "\n".join(text.splitlines()[-lines:])


def run_cli(*, argv: Sequence[str], env: dict[str, str], timeout: float, log_path: Path) -> float:
    """Run a CLI to completion and return its wall time; RunFailed on error or timeout."""
    with log_path.open("wb") as log:
        started = time.monotonic()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, env=env)
        try:
            returncode = proc.wait(timeout=timeout)
            elapsed = time.monotonic() - started
        except subprocess.TimeoutExpired:
            raise RunFailed(f"{shlex.join(argv)}: no exit after {timeout} s\n"
                            f"{tail(log_path.read_text(errors='replace'))}") from None
        finally:
            stop_process(proc)
    if returncode != 0:
        raise RunFailed(f"{shlex.join(argv)}: exit {returncode}\n"
                        f"{tail(log_path.read_text(errors='replace'))}")
    return elapsed


def check_chain(*, chain_pem: bytes, host: str, root_pem: bytes) -> None:
    """The peers' output must be what certctl is held to: host's cert chaining to the root."""
    chain = x509.load_pem_x509_certificates(chain_pem)
    root = x509.load_pem_x509_certificate(root_pem)
    san = chain[0].extensions.get_extension_for_class(x509.SubjectAlternativeName)
    if host not in san.value.get_values_for_type(x509.DNSName):
        raise RunFailed(f"issued certificate does not name {host}")
    for child, parent in zip(chain, [*chain[1:], root], strict=True):
        try:
            child.verify_directly_issued_by(parent)
        except (ValueError, TypeError, InvalidSignature) as err:
            raise RunFailed(f"issued chain for {host} does not verify: {err!r}") from err


class LogLines:
    """Drain a child's output in a thread, timestamping every line on arrival."""

    def __init__(self, stream: IO[bytes], log_path: Path) -> None:
        self.lines: list[tuple[float, str]] = []
        self._lock = threading.Lock()
        self._stream = stream
        self._log_path = log_path
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        with self._log_path.open("w") as log:
            for raw in iter(self._stream.readline, b""):
                now = time.monotonic()
                line = raw.decode(errors="replace").rstrip("\n")
                log.write(line + "\n")
                with self._lock:
                    self.lines.append((now, line))

    def first(self, needle: str) -> float | None:
        with self._lock:
            return next((at for at, line in self.lines if needle in line), None)

    def since(self, index: int) -> list[tuple[float, str]]:
        """The lines from the `index`-th on (callers keep their own read position)."""
        with self._lock:
            return self.lines[index:]

    def text(self) -> str:
        with self._lock:
            return "\n".join(line for _, line in self.lines)

    def join(self) -> None:
        self._thread.join(timeout=10)


def served_and_verified(*, port: int, host: str, context: ssl.SSLContext) -> bool:
    """One handshake with SNI=host; True once the presented chain verifies to Pebble's root."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock, \
                context.wrap_socket(sock, server_hostname=host):
            return True
    except (ssl.SSLError, OSError):
        return False


# --- the three clients ----------------------------------------------------------


def issuer_manifests(*, pebble: PebbleServer, backend_port: int) -> str:
    """The ClusterIssuer `pebble` (HTTP-01 through the data plane) and a Service
    `b1-backend` with its EndpointSlice, which the Ingresses route to."""
    return (cluster_issuer_manifest(pebble=pebble, name="pebble") + "---\n"
            + backend_manifests(backend_port=backend_port))


def cluster_issuer_manifest(*, pebble: PebbleServer, name: str) -> str:
    """The ClusterIssuer `name`: `pebble`'s ACME server, HTTP-01 through the data plane."""
    ca_bundle = base64.b64encode(pebble.ca_bundle_pem).decode()
    return textwrap.dedent(f"""\
        apiVersion: cert-manager.io/v1
        kind: ClusterIssuer
        metadata:
          name: {name}
        spec:
          acme:
            server: {pebble.directory_url}
            email: {EMAIL}
            caBundle: {ca_bundle}
            privateKeySecretRef:
              name: {name}-account-key
            solvers:
              - http01:
                  ingress:
                    ingressClassName: certctl
        """)


def backend_manifests(*, backend_port: int) -> str:
    """The Service `b1-backend` and its EndpointSlice, which the Ingresses route to."""
    return textwrap.dedent(f"""\
        apiVersion: v1
        kind: Service
        metadata:
          name: b1-backend
          namespace: default
        spec:
          ports:
            - name: http
              port: 80
              targetPort: {backend_port}
        ---
        apiVersion: discovery.k8s.io/v1
        kind: EndpointSlice
        metadata:
          name: b1-backend-local
          namespace: default
          labels:
            kubernetes.io/service-name: b1-backend
        addressType: IPv4
        ports:
          - name: http
            port: {backend_port}
        endpoints:
          - addresses: ["127.0.0.1"]
            conditions:
              ready: true
        """)


def ingress_manifest(*, name: str, host: str, issuer: str = "pebble") -> str:
    """An Ingress annotated for the ClusterIssuer `issuer`; its Secret is `<name>-tls`."""
    return textwrap.dedent(f"""\
        apiVersion: networking.k8s.io/v1
        kind: Ingress
        metadata:
          name: {name}
          namespace: default
          annotations:
            cert-manager.io/cluster-issuer: {issuer}
        spec:
          ingressClassName: certctl
          tls:
            - hosts:
                - {host}
              secretName: {name}-tls
          rules:
            - host: {host}
              http:
                paths:
                  - path: /
                    pathType: Prefix
                    backend:
                      service:
                        name: b1-backend
                        port:
                          name: http
        """)


def certctl_manifests(*, bench: Bench, host: str, backend_port: int) -> str:
    return (issuer_manifests(pebble=bench.pebble, backend_port=backend_port) + "---\n"
            + ingress_manifest(name="b1", host=host))


def certctl_argv(*, manifests: Path, state: Path, http_port: int, https_port: int) -> list[str]:
    """`certctl serve` on loopback, answering Pebble's VA on `http_port` and self-checking
    against 127.0.0.1 (the machine's resolver knows none of the benchmark names)."""
    return [str(CERTCTL_BIN), "serve", "--manifests", str(manifests),
            "--state-dir", str(state), "--listen-address", "127.0.0.1",
            "--http-port", str(http_port), "--https-port", str(https_port),
            "--self-check-address", "127.0.0.1"]


def run_certctl(bench: Bench, host: str, rundir: Path) -> Sample:
    manifests = rundir / "manifests"
    manifests.mkdir()
    # The backend is never contacted; any closed port will do.
    (manifests / "b1.yaml").write_text(certctl_manifests(bench=bench, host=host, backend_port=9))
    https_port = free_https_port(bench)
    argv = certctl_argv(manifests=manifests, state=rundir / "state",
                        http_port=bench.pebble.http_port, https_port=https_port)
    context = ssl.create_default_context(cadata=bench.issuance_root_pem.decode())
    started = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, cwd=rundir)
    assert proc.stdout is not None
    log = LogLines(proc.stdout, rundir / "certctl.log")
    try:
        deadline = started + bench.timeout
        while True:
            attempt = time.monotonic()
            if served_and_verified(port=https_port, host=host, context=context):
                served = time.monotonic()
                break
            if proc.poll() is not None:
                raise RunFailed(f"{shlex.join(argv)}: exit {proc.returncode} before serving "
                                f"{host}\n{tail(log.text())}")
            if attempt > deadline:
                raise RunFailed(f"{shlex.join(argv)}: {host} not served after {bench.timeout} s"
                                f"\n{tail(log.text())}")
            time.sleep(max(0.0, attempt + POLL_INTERVAL - time.monotonic()))
    finally:
        stop_process(proc)
        log.join()
    serving = log.first("serving HTTP")
    return Sample(
        seconds=served - started,
        startup=None if serving is None else serving - started,
        after_serving=None if serving is None else served - serving,
        timeline=(*((at - started, line) for at, line in log.lines if at <= served),
                  (served - started, "(benchmark) handshake verified")),
    )


def free_https_port(bench: Bench) -> int:
    while True:
        port = free_port()
        if port != bench.pebble.http_port:
            return port


def certbot_argv(bench: Bench, *command: str) -> list[str]:
    return [CERTBOT_BIN, *command, "--server", bench.pebble.directory_url,
            "--non-interactive", "--agree-tos", "-m", EMAIL,
            "--config-dir", str(bench.certbot_dir / "config"),
            "--work-dir", str(bench.certbot_dir / "work"),
            "--logs-dir", str(bench.certbot_dir / "logs")]


def certbot_env(bench: Bench) -> dict[str, str]:
    return {**os.environ, "REQUESTS_CA_BUNDLE": str(bench.ca_file)}


def register_certbot(bench: Bench) -> None:
    run_cli(argv=certbot_argv(bench, "register", "--no-eff-email"), env=certbot_env(bench),
            timeout=bench.timeout, log_path=bench.certbot_dir / "register.out")


def run_certbot(bench: Bench, host: str, rundir: Path) -> Sample:
    argv = certbot_argv(bench, "certonly", "--standalone",
                        "--http-01-port", str(bench.pebble.http_port), "-d", host)
    seconds = run_cli(argv=argv, env=certbot_env(bench), timeout=bench.timeout,
                      log_path=rundir / "certbot.out")
    live = bench.certbot_dir / "config" / "live" / host
    check_chain(chain_pem=(live / "fullchain.pem").read_bytes(), host=host,
                root_pem=bench.issuance_root_pem)
    return Sample(seconds=seconds)


def run_lego(bench: Bench, host: str, rundir: Path) -> Sample:
    argv = [LEGO_BIN, "--server", bench.pebble.directory_url, "--email", EMAIL, "--accept-tos",
            "--http", "--http.port", f":{bench.pebble.http_port}", "--domains", host,
            "--path", str(bench.lego_dir), "run"]
    env = {**os.environ, "LEGO_CA_CERTIFICATES": str(bench.ca_file)}
    seconds = run_cli(argv=argv, env=env, timeout=bench.timeout, log_path=rundir / "lego.out")
    check_chain(chain_pem=(bench.lego_dir / "certificates" / f"{host}.crt").read_bytes(),
                host=host, root_pem=bench.issuance_root_pem)
    return Sample(seconds=seconds)


RUNNERS: dict[str, Callable[[Bench, str, Path], Sample]] = {
    "certctl": run_certctl,
    "certbot": run_certbot,
    "lego": run_lego,
}


# --- statistics and reporting ----------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclasses.dataclass(frozen=True)
class Summary:
    client: str
    runs: int
    failed: int
    p50: float
    p95: float
    low: float
    high: float


def summarise(client: str, samples: Sequence[float], failed: int) -> Summary | None:
    if not samples:
        return None
    return Summary(client=client, runs=len(samples), failed=failed,
                   p50=percentile(samples, 0.50), p95=percentile(samples, 0.95),
                   low=min(samples), high=max(samples))


def results_table(*, summaries: dict[str, Summary | None], failures: dict[str, int],
                  certctl_samples: Sequence[Sample]) -> str:
    base = summaries.get("certctl")
    rows = ["| client | runs ok / failed | p50 (s) | p95 (s) | min (s) | max (s) "
            "| p50 ratio to certctl |",
            "|---|---|---|---|---|---|---|"]
    for client in CLIENTS:
        summary = summaries.get(client)
        if summary is None:
            rows.append(f"| {client} | 0 / {failures.get(client, 0)} | - | - | - | - | - |")
            continue
        ratio = "-" if base is None else f"{summary.p50 / base.p50:.2f}x"
        rows.append(f"| {client} | {summary.runs} / {summary.failed} | {summary.p50:.3f} "
                    f"| {summary.p95:.3f} | {summary.low:.3f} | {summary.high:.3f} | {ratio} |")
    startups = [s.startup for s in certctl_samples if s.startup is not None]
    afters = [s.after_serving for s in certctl_samples if s.after_serving is not None]
    if startups and afters:
        for label, values in (("certctl: spawn to \"serving HTTP\" log line", startups),
                              ("certctl: \"serving HTTP\" to served", afters)):
            rows.append(f"| {label} | {len(values)} | {percentile(values, 0.5):.3f} "
                        f"| {percentile(values, 0.95):.3f} | {min(values):.3f} "
                        f"| {max(values):.3f} | |")
    return "\n".join(rows)


def median_timeline(samples: Sequence[Sample]) -> str:
    """certctl's log for the run nearest the median, with times since spawn."""
    if not samples:
        return ""
    middle = percentile([s.seconds for s in samples], 0.5)
    run = min(samples, key=lambda s: abs(s.seconds - middle))
    return "\n".join(f"{at:7.3f}s  {_strip_log_prefix(line)}" for at, line in run.timeline)


def _strip_log_prefix(line: str) -> str:
    # "2024-01-01 00:00:00,123 INFO name: message" -> "INFO name: message"
    return re.sub(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ", "", line)


def machine(*, pebble: PebbleBuild = "debian") -> list[tuple[str, str]]:
    def dpkg(package: str) -> str:
        return reporting.command_output(["dpkg-query", "-W", "-f", "${Version}", package])

    return reporting.machine_rows(extra=[
        ("Python (certbot)", reporting.command_output(["/usr/bin/python3", "--version"])),
        ("OpenSSL (certctl)", ssl.OPENSSL_VERSION),
        ("Pebble", f"{dpkg('pebble')} (Debian)" if pebble == "debian" else
         f"{testservers.directory('pebble').name} (built by scripts/testservers/build.sh)"),
        ("certbot", f"{reporting.command_output([CERTBOT_BIN, '--version'])} "
                    f"(Debian {dpkg('certbot')}, python3-acme {dpkg('python3-acme')})"),
        ("lego", f"{dpkg('lego')} (Debian)"),
        ("work dirs' file system", workdir_module.file_system()),
        ("certctl", f"git {reporting.git_describe()}, acme {importlib.metadata.version('acme')}, "
                    f"cryptography {importlib.metadata.version('cryptography')}"),
    ])


def schedule(*, runs: int, warmup: int) -> Iterator[tuple[int, str, bool]]:
    """(index, client, timed): warm-ups first, then rounds with a rotating client order."""
    for index in range(warmup):
        for client in CLIENTS:
            yield index, client, False
    for index in range(runs):
        shift = index % len(CLIENTS)
        for client in CLIENTS[shift:] + CLIENTS[:shift]:
            yield index, client, True


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.b1_issuance",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="timed runs per client")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs per client first")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per run")
    parser.add_argument("--write-results", action="store_true",
                        help=f"replace this benchmark's section of {reporting.RESULTS_PATH.name}")
    parser.add_argument("--keep", action="store_true",
                        help="keep the work dir (logs of every run) instead of deleting it")
    parser.add_argument("--fail-fast", action="store_true", help="stop at the first failed run")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    for binary in (CERTBOT_BIN, LEGO_BIN, str(CERTCTL_BIN)):
        if not Path(binary).exists():
            parser.error(f"{binary} is missing (apt-get install -y certbot lego pebble; "
                         "pip install -e . in the venv)")

    # SIGTERM must unwind through the finally blocks that stop our children.
    def terminate(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, terminate)

    command = reporting.command_line(module="bench.b1_issuance", argv=argv)
    started_at = datetime.datetime.now(datetime.UTC)
    workdir = workdir_module.create(prefix="certctl-b1-")
    samples: dict[str, list[Sample]] = {client: [] for client in CLIENTS}
    failures: dict[str, int] = dict.fromkeys(CLIENTS, 0)
    failure_notes: list[str] = []
    pebble: PebbleServer | None = None
    try:
        pebble = PebbleServer.start(tmp_path=workdir, http_port=free_port(),
                                    env={"PEBBLE_AUTHZREUSE": "0", "PEBBLE_WFE_NONCEREJECT": "0"})
        bench = Bench(pebble=pebble, workdir=workdir, issuance_root_pem=pebble.issuance_roots_pem(),
                      timeout=args.timeout, certbot_dir=workdir / "certbot",
                      lego_dir=workdir / "lego")
        bench.certbot_dir.mkdir()
        try:
            register_certbot(bench)
        except RunFailed as err:
            print(f"FAILED certbot register: {err}", file=sys.stderr)
            return 2
        for index, client, timed in schedule(runs=args.runs, warmup=args.warmup):
            host = f"b1-{client}-{index}.example.test" if timed \
                else f"b1-{client}-warmup{index}.example.test"
            rundir = workdir / "runs" / host
            rundir.mkdir(parents=True)
            try:
                sample = RUNNERS[client](bench, host, rundir)
            except RunFailed as err:
                note = f"{client} {host}: {err}"
                print(f"FAILED {note}", file=sys.stderr, flush=True)
                if not timed:
                    print("a warm-up run failed; giving up", file=sys.stderr)
                    return 2
                failures[client] += 1
                failure_notes.append(note)
                if args.fail_fast:
                    break
                continue
            label = "run" if timed else "warm-up"
            extra = "" if sample.after_serving is None else \
                f" (serving HTTP after {sample.startup:.3f} s, then {sample.after_serving:.3f} s)"
            print(f"{label} {index:3d} {client:8s} {sample.seconds:7.3f} s{extra}", flush=True)
            if timed:
                samples[client].append(sample)
    finally:
        if pebble is not None:
            pebble.stop()
        workdir_module.remove_unless_kept(workdir, keep=args.keep)

    summaries = {client: summarise(client, [s.seconds for s in samples[client]], failures[client])
                 for client in CLIENTS}
    table = results_table(summaries=summaries, failures=failures,
                          certctl_samples=samples["certctl"])
    timeline = median_timeline(samples["certctl"])
    print()
    print(table)
    base = summaries["certctl"]
    for peer in ("certbot", "lego"):
        summary = summaries[peer]
        if base is not None and summary is not None:
            print(f"p50 {peer}/certctl = {summary.p50 / base.p50:.2f}")
    print("\nEvery timed run, in run order (s):")
    print("\n".join(raw_samples(samples)))
    if timeline:
        print("\ncertctl log of the run nearest the median (seconds since spawn):")
        print(timeline)
    if args.write_results:
        reporting.write_results(name="b1_issuance", section=results_section(
            command=command, started_at=started_at, runs=args.runs, warmup=args.warmup,
            table=table, timeline=timeline, failure_notes=failure_notes, samples=samples))
        print(f"\nwrote {reporting.RESULTS_PATH}")
    return 1 if any(failures.values()) else 0


def raw_samples(samples: dict[str, list[Sample]]) -> list[str]:
    """Every timed run in run order: a p50 hides bimodal clients (lego's poll sleep)."""
    return [f"- {client}: " + " ".join(f"{s.seconds:.2f}" for s in samples[client])
            for client in CLIENTS]


def results_section(*, command: str, started_at: datetime.datetime, runs: int, warmup: int,
                    table: str, timeline: str, failure_notes: Sequence[str],
                    samples: dict[str, list[Sample]]) -> str:
    machine_rows = "\n".join(f"| {name} | {value} |" for name, value in machine())
    parts = [
        "## B1: one annotated Ingress to a served certificate (HTTP-01, Pebble)",
        "",
        f"Command (from the repo root): `{command}`  ",
        f"Date: {started_at.strftime('%Y-%m-%d %H:%M UTC')}; {runs} timed runs per client, "
        f"{warmup} untimed warm-up run(s) each, interleaved with a rotating client order.",
        "",
        table,
        "",
        "Setup: one Pebble for the whole run (`PEBBLE_VA_NOSLEEP=1 PEBBLE_AUTHZREUSE=0 "
        "PEBBLE_WFE_NONCEREJECT=0`), a fresh hostname per run, so every run is one full "
        "order with one HTTP-01 validation.",
        "",
        "- **certctl**: spawn of `certctl serve` (fresh manifests and state dirs, so it also "
        "registers a new ACME account every run) until a TLS handshake with SNI=host verifies "
        "against Pebble's issuance root (handshakes every 10 ms, so the resolution is about "
        "10 ms). Includes Python start-up.",
        "- **certbot**: whole `certbot certonly --standalone` CLI; account registered once "
        "before the runs (`certbot register`), reused by every run.",
        "- **lego**: whole `lego ... run` CLI; account registered by the warm-up run and "
        "reused by every timed run (same `--path`).",
        "- Every client issues an ECDSA P-256 key, its default (certctl's Certificate "
        "`privateKey.algorithm` defaults to ECDSA; certbot 2.x and lego default to P-256).",
        "",
        "Every timed run, in run order (s):",
        "",
        *raw_samples(samples),
        "",
        "Machine:",
        "",
        "| | |",
        "|---|---|",
        machine_rows,
    ]
    if timeline:
        parts += ["", "certctl's log for the run nearest the median (seconds since spawn):", "",
                  "```", timeline, "```"]
    if failure_notes:
        parts += ["", "Failed runs:", "", "```", *(tail(n, lines=12) for n in failure_notes),
                  "```"]
    return "\n".join(parts) + "\n"


if __name__ == "__main__":
    sys.exit(main())
