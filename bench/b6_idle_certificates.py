"""B6: 10,000 Certificates at rest in `certctl serve`: start-up, RSS and idle CPU.

    /work/venv/bin/python -m bench.b6_idle_certificates [--certificates 10000]
        [--idle-seconds 60] [--ingresses] [--write-results] [--keep]

Set-up (untimed): a local CA (ClusterIssuer `local-ca`, `spec.ca`, its key
pair in a Secret of the cluster resource namespace) and, per certificate, a
Certificate (cert-manager.io/v1, as users write them) with one DNS name and
its own kubernetes.io/tls Secret, pre-issued by that CA with the annotations
certctl writes. Every Certificate is therefore up to date for the policy
chain: nothing is signed, no ACME server exists, and all that is left is to
schedule each renewal. The certificates are 90-day ones issued over the last
50 days, so renewals fall between 10 and 60 days out, none during the run.
With `--ingresses`, each Certificate comes instead from an Ingress annotated
`cert-manager.io/cluster-issuer: local-ca` (ingress-shim derives it) and the
data plane serves every Secret, which also measures the shim and the data
plane at rest.

Measured on `certctl serve` as its own process (`/proc/<pid>`, all threads):

1. first start on an empty state dir, from spawn until the process is quiet
   (every Certificate reconciled to Ready, its renewal timer queued);
2. restart on the same state dir, spawn until quiet (the steady state after a
   redeploy);
3. an idle stretch after the restart: CPU time (user + system) over
   `--idle-seconds`, as a share of one core, and RSS at its end (VmRSS) and
   at peak (VmHWM).

"Quiet" means the process used under 1 % of a core over the last 2 s and
every Certificate is Ready. Checked afterwards: every Certificate is Ready
with a renewalTime in the future, no Order exists, no Secret was written by
certctl, and (with `--ingresses`) TLS handshakes for a sample of hosts
present the pre-made certificates. Exit status 0 when every check passed.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import os
import random
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from bench import reporting, workdir
from certctl.pki import secret as tls_secret
from tests.pebble import free_port

REPO_ROOT = reporting.REPO_ROOT
PER_FILE = 500  # Ingress + Secret pairs per manifest file
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
QUIET_WINDOW = 2.0
QUIET_SHARE = 0.01  # of one core
TARGET_IDLE_CPU_PERCENT = 1.0
TARGET_RSS_MB = 500.0


# --- the fixture: a CA, certificates, manifests -------------------------------------------


@dataclass(frozen=True)
class LocalCA:
    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate

    @property
    def pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)


def make_ca(now: datetime.datetime) -> LocalCA:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "B6 local CA")])
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=365))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    return LocalCA(key=key, certificate=certificate)


def issue(ca: LocalCA, host: str, *, not_before: datetime.datetime,
          rsa_keys: bool) -> tuple[bytes, bytes, int]:
    """(chain PEM, PKCS#1 key PEM, serial) for `host`, as certctl's ca issuer shapes it;
    its key ECDSA P-256, or RSA 2048 with `rsa_keys`."""
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048) if rsa_keys
        else ec.generate_private_key(ec.SECP256R1()))
    serial = x509.random_serial_number()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(not_before)
        .not_valid_after(not_before + datetime.timedelta(days=90))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=True)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption())
    return certificate.public_bytes(serialization.Encoding.PEM), key_pem, serial


def write_manifests(*, folder: Path, ca: LocalCA, count: int, now: datetime.datetime,
                    seed: int, ingresses: bool, rsa_keys: bool = False) -> dict[str, int]:
    """The manifests; returns each host's certificate serial. `rsa_keys`: RSA 2048 keys,
    asked for by every Certificate (`spec.privateKey.algorithm`, or the Ingress's
    annotation), as a fleet moved from cert-manager with RSA keys has."""
    rng = random.Random(seed)
    ca_key_pem = ca.key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())
    issuer = [
        {"apiVersion": "cert-manager.io/v1", "kind": "ClusterIssuer",
         "metadata": {"name": "local-ca"}, "spec": {"ca": {"secretName": "local-ca"}}},
        {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
         "metadata": {"name": "local-ca", "namespace": "certctl"},
         "data": tls_secret.build_tls_secret_data(chain_pem=ca.pem, key_pem=ca_key_pem,
                                                  ca_pem=None)},
    ]
    (folder / "issuer.yaml").write_text(yaml.safe_dump_all(issuer))
    serials: dict[str, int] = {}
    documents: list[dict[str, object]] = []
    for index in range(count):
        name = f"site-{index:05d}"
        host = f"{name}.example.test"
        secret_name = f"{name}-tls"
        issued_at = (now - datetime.timedelta(seconds=rng.randrange(50 * 86400))).replace(
            microsecond=0)
        chain_pem, key_pem, serials[host] = issue(ca, host, not_before=issued_at,
                                                  rsa_keys=rsa_keys)
        data = tls_secret.build_tls_secret_data(chain_pem=chain_pem, key_pem=key_pem,
                                                ca_pem=ca.pem)
        documents.append({
            "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": {"name": secret_name, "namespace": "default", "annotations": {
                "cert-manager.io/certificate-name": secret_name,
                "cert-manager.io/issuer-name": "local-ca",
                "cert-manager.io/issuer-kind": "ClusterIssuer",
                "cert-manager.io/issuer-group": "certctl.io",
            }},
            "data": data,
        })
        if ingresses:
            documents.append({
                "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
                "metadata": {"name": name, "namespace": "default",
                             "annotations": {"cert-manager.io/cluster-issuer": "local-ca",
                                             **({"cert-manager.io/private-key-algorithm":
                                                 "RSA"} if rsa_keys else {})}},
                "spec": {
                    "tls": [{"hosts": [host], "secretName": secret_name}],
                    "rules": [{"host": host, "http": {"paths": [{
                        "path": "/", "pathType": "Prefix",
                        "backend": {"service": {"name": name, "port": {"number": 80}}}}]}}],
                },
            })
        else:
            documents.append({
                "apiVersion": "cert-manager.io/v1", "kind": "Certificate",
                "metadata": {"name": secret_name, "namespace": "default"},
                "spec": {"secretName": secret_name, "dnsNames": [host],
                         "issuerRef": {"name": "local-ca", "kind": "ClusterIssuer"},
                         **({"privateKey": {"algorithm": "RSA"}} if rsa_keys else {})},
            })
        if len(documents) == 2 * PER_FILE or index == count - 1:
            part = index // PER_FILE
            (folder / f"sites-{part:03d}.yaml").write_text(
                yaml.dump_all(documents, Dumper=yaml.CSafeDumper))
            documents = []
    return serials


# --- watching the process -------------------------------------------------------------------


def process_tree(pid: int) -> list[int]:
    """`pid` and the processes it started, theirs too (certctl's ACME helper process)."""
    found, todo = [], [pid]
    while todo:
        each = todo.pop()
        found.append(each)
        for task in Path(f"/proc/{each}/task").glob("*/children"):
            try:
                todo.extend(int(child) for child in task.read_text().split())
            except OSError:
                continue  # the task ended
    return found


def cpu_seconds(pid: int) -> float:
    """CPU time of `pid` and the processes it started (`process_tree`)."""
    total = 0
    for each in process_tree(pid):
        try:
            fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # a child that has just exited
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLOCK_TICKS


def memory_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) in MB of `pid` and the processes it started (`process_tree`): their
    sums (the sum of peaks bounds the peak of the sum)."""
    rss_kb = hwm_kb = 0
    for each in process_tree(pid):
        try:
            status = Path(f"/proc/{each}/status").read_text()
        except OSError:
            continue
        rss = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
        hwm = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
        rss_kb += int(rss.group(1)) if rss else 0
        hwm_kb += int(hwm.group(1)) if hwm else 0
    return rss_kb / 1024, hwm_kb / 1024


def certificate_statuses(state: Path) -> list[dict[str, object]]:
    """Statuses of the Certificates: in their state files (derived by ingress-shim) or
    beside the manifests (hand-written ones keep only their status in the state dir)."""
    statuses = []
    for folder, whole_object in ((state / "objects" / "Certificate" / "default", True),
                                 (state / "status" / "Certificate" / "default", False)):
        for path in folder.glob("*.yaml"):
            try:
                loaded = yaml.load(path.read_text(), Loader=yaml.CSafeLoader) or {}
            except (OSError, yaml.YAMLError):
                continue  # being replaced right now
            statuses.append((loaded.get("status") if whole_object else loaded) or {})
    return statuses


def ready_count(state: Path) -> int:
    count = 0
    for status in certificate_statuses(state):
        conditions = status.get("conditions") or []
        assert isinstance(conditions, list)
        if any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions):
            count += 1
    return count


@dataclass(frozen=True)
class Start:
    seconds: float  # spawn until quiet
    serving_seconds: float  # spawn until the "serving HTTP" log line
    cpu_seconds: float  # CPU used from spawn until quiet
    rss_mb: float


def start_certctl(*, manifests: Path, state: Path, log_path: Path, https_port: int,
                  http_port: int) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "certctl", "serve", "--manifests", str(manifests),
            "--state-dir", str(state), "--listen-address", "127.0.0.1",
            "--http-port", str(http_port), "--https-port", str(https_port)]
    with log_path.open("ab") as log:
        return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})


def wait_until_quiet(*, proc: subprocess.Popen[bytes], spawned: float, log_path: Path,
                     state: Path, count: int, timeout: float) -> Start:
    serving_at: float | None = None
    samples: list[tuple[float, float]] = []
    deadline = spawned + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"certctl exited with {proc.returncode}:\n{tail(log_path)}")
        now = time.monotonic()
        samples.append((now, cpu_seconds(proc.pid)))
        if serving_at is None and b"serving HTTP" in log_path.read_bytes():
            serving_at = now
        window = [s for s in samples if s[0] >= now - QUIET_WINDOW]
        if serving_at is not None and now - serving_at >= QUIET_WINDOW and len(window) > 2:
            used = window[-1][1] - window[0][1]
            if used < QUIET_SHARE * (window[-1][0] - window[0][0]):
                busy_until = _last_busy(samples)
                if ready_count(state) == count:
                    return Start(seconds=busy_until - spawned,
                                 serving_seconds=serving_at - spawned,
                                 cpu_seconds=samples[-1][1], rss_mb=memory_mb(proc.pid)[0])
        time.sleep(0.25)
    raise RuntimeError(f"certctl not quiet with {count} Ready Certificates after {timeout:.0f} s "
                       f"({ready_count(state)} Ready):\n{tail(log_path)}")


def _last_busy(samples: Sequence[tuple[float, float]]) -> float:
    """The end of the last sample interval in which the process used CPU noticeably."""
    for (t0, c0), (t1, c1) in zip(reversed(samples[:-1]), reversed(samples[1:]), strict=True):
        if c1 - c0 >= QUIET_SHARE * (t1 - t0) * 5:
            return t1
    return samples[0][0]


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def tail(path: Path, lines: int = 20) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def served_serial(*, port: int, host: str, ca_pem: bytes) -> int:
    context = ssl.create_default_context(cadata=ca_pem.decode())
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname=host) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


# --- results ----------------------------------------------------------------------------------


def machine() -> list[tuple[str, str]]:
    return reporting.machine_rows(extra=[
        ("certctl", f"git {reporting.git_describe()}, cryptography "
                    f"{importlib.metadata.version('cryptography')}, "
                    f"PyYAML {importlib.metadata.version('PyYAML')}"),
    ])


def verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


def results_section(*, command: str, started_at: datetime.datetime, count: int,
                    ingresses: bool, idle: float,
                    first: Start, restart: Start, idle_cpu_percent: float, rss_mb: float,
                    hwm_mb: float, checks: list[tuple[str, bool]]) -> str:
    rows = [
        "| measurement | value | target |",
        "|---|---|---|",
        f"| idle CPU over {idle:.0f} s after the restart, all threads | "
        f"{idle_cpu_percent:.3f} % of one core | < {TARGET_IDLE_CPU_PERCENT:.0f} % "
        f"({verdict(idle_cpu_percent < TARGET_IDLE_CPU_PERCENT)}) |",
        f"| RSS at the end of the idle stretch (VmRSS) | {rss_mb:.0f} MB | <= "
        f"{TARGET_RSS_MB:.0f} MB ({verdict(rss_mb <= TARGET_RSS_MB)}) |",
        f"| peak RSS since the restart (VmHWM) | {hwm_mb:.0f} MB | |",
        f"| first start (empty state dir): spawn to quiet | {first.seconds:.1f} s "
        f"({first.cpu_seconds:.1f} s CPU; \"serving HTTP\" at {first.serving_seconds:.1f} s) | |",
        f"| restart (same state dir): spawn to quiet | {restart.seconds:.1f} s "
        f"({restart.cpu_seconds:.1f} s CPU; \"serving HTTP\" at {restart.serving_seconds:.1f} s)"
        " | |",
    ]
    check_lines = [f"- {'ok' if ok else 'FAILED'}: {what}" for what, ok in checks]
    machine_rows = reporting.machine_table(machine()).splitlines()
    return "\n".join([
        "## B6: 10,000 Certificates at rest (renewal scheduling, idle)",
        "",
        f"Command (from the repo root): `{command}`  ",
        f"Date: {started_at:%Y-%m-%d %H:%M} UTC; {count} "
        + ("annotated Ingresses (ingress-shim derives the Certificates; the data plane serves "
           "every Secret)" if ingresses else "Certificates (cert-manager.io/v1 manifests)")
        + ", each with its own pre-issued Secret from a local CA (ClusterIssuer `local-ca`), so "
        "every Certificate is up to date: no signing, no ACME; renewals 10 to 60 days out.",
        "",
        *rows,
        "",
        "Quiet: under 1 % of a core over 2 s with every Certificate Ready; the start-up times "
        "run to the last busy moment before that. CPU and RSS are read from `/proc/<pid>` of "
        "the `certctl serve` process (all threads: work queue, data plane, manifest watcher).",
        "",
        "Checks after the idle stretch:",
        "",
        *check_lines,
        "",
        "Machine:",
        "",
        *machine_rows,
    ])


# --- main ----------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--certificates", type=int, default=10_000)
    parser.add_argument("--idle-seconds", type=float, default=60.0)
    parser.add_argument("--startup-timeout", type=float, default=900.0)
    parser.add_argument("--write-results", action="store_true",
                        help=f"replace this benchmark's section of {reporting.RESULTS_PATH.name}")
    parser.add_argument("--ingresses", action="store_true",
                        help="derive the Certificates from annotated Ingresses and serve them")
    parser.add_argument("--rsa-keys", action="store_true",
                        help="RSA 2048 keys instead of ECDSA P-256 (their making takes longer)")
    parser.add_argument("--keep", action="store_true", help="keep the work dir")
    args = parser.parse_args(argv)
    started_at = datetime.datetime.now(datetime.UTC)
    work = workdir.create(prefix="certctl-b6-")
    manifests, state = work / "manifests", work / "state"
    manifests.mkdir()
    try:
        print(f"work dir {work}; issuing {args.certificates} certificates...", flush=True)
        ca = make_ca(started_at)
        serials = write_manifests(folder=manifests, ca=ca, count=args.certificates,
                                  now=started_at, seed=6, ingresses=args.ingresses,
                                  rsa_keys=args.rsa_keys)
        https_port, http_port = free_port(), free_port()

        log_path = work / "certctl-first-start.log"
        spawned = time.monotonic()
        proc = start_certctl(manifests=manifests, state=state, log_path=log_path,
                             https_port=https_port, http_port=http_port)
        try:
            first = wait_until_quiet(proc=proc, spawned=spawned, log_path=log_path, state=state,
                                     count=args.certificates, timeout=args.startup_timeout)
        finally:
            stop(proc)
        print(f"first start: quiet after {first.seconds:.1f} s", flush=True)

        log_path = work / "certctl-restart.log"
        spawned = time.monotonic()
        proc = start_certctl(manifests=manifests, state=state, log_path=log_path,
                             https_port=https_port, http_port=http_port)
        try:
            restart = wait_until_quiet(proc=proc, spawned=spawned, log_path=log_path,
                                       state=state, count=args.certificates,
                                       timeout=args.startup_timeout)
            print(f"restart: quiet after {restart.seconds:.1f} s; idle for "
                  f"{args.idle_seconds:.0f} s...", flush=True)
            cpu_before, wall_before = cpu_seconds(proc.pid), time.monotonic()
            time.sleep(args.idle_seconds)
            idle_cpu = cpu_seconds(proc.pid) - cpu_before
            idle_wall = time.monotonic() - wall_before
            rss_mb, hwm_mb = memory_mb(proc.pid)
            sample = random.Random(7).sample(sorted(serials), k=min(20, len(serials)))
            served_ok = not args.ingresses or all(
                served_serial(port=https_port, host=host, ca_pem=ca.pem) == serials[host]
                for host in sample)
        finally:
            stop(proc)

        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        statuses = certificate_statuses(state)
        checks = [
            (f"{len(statuses)} Certificates, all Ready",
             len(statuses) == args.certificates and ready_count(state) == args.certificates),
            ("every renewalTime is in the future",
             all(str(s.get("renewalTime", "")) > now for s in statuses)),
            ("no Order exists", not any((state / "objects" / "Order").glob("*/*.yaml"))),
            ("no Secret was written by certctl (nothing was issued)",
             not any((state / "objects" / "Secret" / "default").glob("*.yaml"))),
        ]
        if args.ingresses:
            checks.append((f"{len(sample)} sampled hosts are served their pre-issued "
                           "certificate", served_ok))
        idle_cpu_percent = 100 * idle_cpu / idle_wall
        for what, ok in checks:
            print(f"{'ok' if ok else 'FAILED'}: {what}")
        print(f"idle CPU {idle_cpu_percent:.3f} % of one core; RSS {rss_mb:.0f} MB "
              f"(peak {hwm_mb:.0f} MB); first start {first.seconds:.1f} s, restart "
              f"{restart.seconds:.1f} s")
        if args.write_results:
            command = reporting.command_line(module="bench.b6_idle_certificates", argv=argv)
            reporting.write_results(name="b6_idle_certificates", section=results_section(
                command=command, started_at=started_at, count=args.certificates,
                ingresses=args.ingresses,
                idle=args.idle_seconds, first=first, restart=restart,
                idle_cpu_percent=idle_cpu_percent, rss_mb=rss_mb, hwm_mb=hwm_mb,
                checks=checks))
            print(f"wrote {reporting.RESULTS_PATH}")
        return 0 if all(ok for _, ok in checks) else 1
    finally:
        workdir.remove_unless_kept(work, keep=args.keep)


if __name__ == "__main__":
    sys.exit(main())
