"""B2: 500 annotated Ingresses at once to served certificates (HTTP-01, Pebble), vs peers.

    /work/venv/bin/python -m bench.b2_bulk_issuance [--ingresses 500] [--peer-sample 20]
        [--pebble current|debian] [--pebbles N] [--workers N]
        [--profile FILE.svg [--profile-gil]] [--write-results] [--keep]

Pebble (+ challtestsrv, `PEBBLE_VA_NOSLEEP=1 PEBBLE_AUTHZREUSE=0
PEBBLE_WFE_NONCEREJECT=0`) serves the whole run: the current one (built by
scripts/testservers/build.sh) unless `--pebble debian` picks Debian's 2.4; one
Pebble (a ClusterIssuer each) per 1,000 Ingresses, as one Pebble's deadlock comes
the likelier the more orders it holds (`ORDERS_PER_PEBBLE`). certctl goes first: one
`certctl serve` is spawned on a manifests folder holding the ClusterIssuer and
`--ingresses` annotated Ingresses, one fresh hostname each, and a fresh state
dir (so it also registers its ACME account). Timed: from the spawn until every
host has been served a chain that verifies against Pebble's issuance root in a
TLS handshake with SNI=host. The benchmark learns which hosts to try from
certctl's "serving certificate from Secret ... for <host>" log lines (trying
all 500 hosts over and over would steal CPU from the process under test), and
retries a host whose handshake does not verify yet on the next poll. Peak RSS
(VmHWM) and CPU time (user + system) are read from `/proc` of the certctl
process and its ACME helper process (summed) just before it is stopped.

Then the peers, in sequence against the same Pebble: `certbot certonly
--standalone` and `lego run` issue `--peer-sample` certificates each, one
CLI run after another (as a user scripting them over 500 hosts would), with
their account registered once beforehand (untimed). 500 sequential runs of
each would take most of an hour, so only the sample is measured: the table
gives the measured mean per certificate and the 500 total extrapolated from
it, labelled as such.

Run it at least five minutes after anything removed many files on the state dir's
file system (the last run's work dir, a test run). On ext4 without a journal, as
on the machines of bench/RESULTS.md, allocating an inode passes over every inode
freed in the last five minutes whose inode-table block is dirty again
(`recently_deleted` in fs/ext4/ialloc.c), and a run here creates files by the
ten thousand: right after another run, `perf` put 11-15 % of `certctl serve`'s CPU
in that walk, against 2 % after five quiet minutes (bench/RESULTS.md, B2 notes).

`--profile` runs `py-spy record` on the certctl process for the whole timed
run (an SVG flame graph; `--profile-format speedscope` for speedscope JSON).
Exit status: 0 when every certificate was served (and every peer run
succeeded), 1 otherwise, 2 when the set-up failed.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import datetime
import math
import re
import shlex
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType

from bench import b1_issuance as b1
from bench import b6_idle_certificates as b6
from bench import reporting
from bench import workdir as workdir_module
from tests.pebble import PEBBLE_BUILDS, PebbleBuild, PebbleServer, free_port, stop_process

PY_SPY_BIN = Path(sys.executable).parent / "py-spy"
# Issue 20's targets for 5,000 certificates on 2 cores.
TARGET_SECONDS = 120.0
TARGET_RSS_MB = 500.0
POLL_INTERVAL = 0.05
SERVING_LINE = re.compile(r"serving certificate from Secret \S+ for (?P<names>.+)$")
# Orders one Pebble takes in a run: each new order scans every authorization Pebble holds
# under its MemoryStore's read lock, and that scan can deadlock (Debian's 2.4 and the
# current 2.10 alike: the scan waits for an authorization a validation holds, which waits
# behind a new challenge's write lock, which waits for the scan), the likelier the longer
# it is: at some 4,500 orders in most stalls seen, once at about 200.
ORDERS_PER_PEBBLE = 1000
# Pebble logs every request it handles: "Pebble <date> <time> POST /my-order/... -> calling".
PEBBLE_REQUEST = re.compile(r"^Pebble \S+ \S+ (?P<method>[A-Z]+) (?P<path>/[a-z-]*)\S* -> calling",
                            re.MULTILINE)
PEERS = ("certbot", "lego")


@dataclasses.dataclass(frozen=True, kw_only=True)
class BulkRun:
    """certctl's run: every host's time to a verified handshake, since spawn."""

    seconds: float
    served: dict[str, float]
    serving_http: float | None  # spawn -> "serving HTTP" log line
    peak_rss_mb: float
    cpu_seconds: float
    ca_cpu_seconds: float  # Pebble's and its challtestsrv's, during certctl's run
    workers: int | None  # --workers given to certctl serve; None: its default
    acme_requests: dict[str, int]  # "POST /my-order" -> count, as the Pebbles logged them
    pebbles: int  # how many Pebbles, a ClusterIssuer each


@dataclasses.dataclass(frozen=True, kw_only=True)
class PeerRun:
    client: str
    samples: tuple[float, ...]
    failed: int

    @property
    def mean(self) -> float:
        return sum(self.samples) / len(self.samples)


def host_name(index: int) -> str:
    return f"b2-{index:04d}.example.test"


def write_manifests(*, folder: Path, pebbles: Sequence[PebbleServer], count: int) -> list[str]:
    """A ClusterIssuer per Pebble (`pebble`, `pebble-1`...) and `count` Ingresses in one
    file, taking the issuers in turn; returns their hosts."""
    hosts = [host_name(index) for index in range(count)]
    issuers = [issuer_name(index) for index in range(len(pebbles))]
    documents = [b1.backend_manifests(backend_port=9)]  # the backend is never contacted
    documents += [b1.cluster_issuer_manifest(pebble=pebble, name=name)
                  for pebble, name in zip(pebbles, issuers, strict=True)]
    documents += [b1.ingress_manifest(name=f"b2-{index:04d}", host=host,
                                      issuer=issuers[index % len(issuers)])
                  for index, host in enumerate(hosts)]
    (folder / "b2.yaml").write_text("---\n".join(documents))
    return hosts


def issuer_name(index: int) -> str:
    return "pebble" if index == 0 else f"pebble-{index}"


def pebble_log_sizes(pebbles: Sequence[PebbleServer]) -> list[int]:
    return [(pebble.workdir / "pebble.log").stat().st_size for pebble in pebbles]


def pebbles_cpu_seconds(pebbles: Sequence[PebbleServer]) -> float:
    """The CPU the Pebbles and their challtestsrv have used so far."""
    return sum(b6.cpu_seconds(pid) for each in pebbles for pid in each.pids)


def acme_requests(pebbles: Sequence[PebbleServer], *, since: Sequence[int]) -> dict[str, int]:
    """The requests the Pebbles handled since byte `since` of each one's log, by method and
    endpoint."""
    counted: collections.Counter[str] = collections.Counter()
    for pebble, start in zip(pebbles, since, strict=True):
        with (pebble.workdir / "pebble.log").open("rb") as log:
            log.seek(start)
            text = log.read().decode(errors="replace")
        counted.update(f"{m['method']} {m['path']}" for m in PEBBLE_REQUEST.finditer(text))
    return dict(counted.most_common())


def py_spy(*, pid: int, output: Path, profile_format: str,
           gil_only: bool) -> subprocess.Popen[bytes]:
    """py-spy on `pid`: every thread not idle (threads waiting for a lock count), or with
    `gil_only` the thread holding the GIL, i.e. where the CPU goes."""
    argv = [str(PY_SPY_BIN), "record", "--pid", str(pid), "--output", str(output),
            "--format", profile_format, "--threads", "--nonblocking", "--rate", "50",
            *(["--gil"] if gil_only else [])]
    return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT)


def run_certctl(*, pebbles: Sequence[PebbleServer], workdir: Path, count: int,
                workers: int | None,
                timeout: float, root_pem: bytes, profile: Path | None,
                profile_format: str, profile_gil: bool) -> BulkRun:
    manifests = workdir / "manifests"
    manifests.mkdir(parents=True)
    hosts = write_manifests(folder=manifests, pebbles=pebbles, count=count)
    pebble = pebbles[0]  # they all validate HTTP-01 on its port
    https_port = free_port()
    while https_port == pebble.http_port:
        https_port = free_port()
    argv = b1.certctl_argv(manifests=manifests, state=workdir / "state",
                           http_port=pebble.http_port, https_port=https_port)
    if workers is not None:
        argv += ["--workers", str(workers)]
    context = ssl.create_default_context(cadata=root_pem.decode())
    pending: set[str] = set(hosts)
    announced: set[str] = set()
    served: dict[str, float] = {}
    started = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, cwd=workdir)
    assert proc.stdout is not None
    log = b1.LogLines(proc.stdout, workdir / "certctl.log")
    profiler = None if profile is None else py_spy(
        pid=proc.pid, output=profile, profile_format=profile_format, gil_only=profile_gil)
    read = 0
    pebble_log_start = pebble_log_sizes(pebbles)
    ca_cpu_start = pebbles_cpu_seconds(pebbles)
    try:
        deadline = started + timeout
        while pending:
            attempt = time.monotonic()
            fresh = log.since(read)
            read += len(fresh)
            for _, line in fresh:
                match = SERVING_LINE.search(line)
                if match:
                    announced.update(match.group("names").split(", "))
            for host in sorted(announced & pending):
                if b1.served_and_verified(port=https_port, host=host, context=context):
                    served[host] = time.monotonic() - started
                    pending.discard(host)
            if not pending:
                break
            if proc.poll() is not None:
                raise b1.RunFailed(f"{shlex.join(argv)}: exit {proc.returncode} with "
                                   f"{len(pending)} hosts not served\n{b1.tail(log.text())}")
            if attempt > deadline:
                raise b1.RunFailed(f"{len(pending)} of {count} hosts not served after "
                                   f"{timeout:.0f} s\n{b1.tail(log.text())}")
            time.sleep(max(0.0, attempt + POLL_INTERVAL - time.monotonic()))
        seconds = time.monotonic() - started
        _, peak_rss_mb = b6.memory_mb(proc.pid)
        cpu = b6.cpu_seconds(proc.pid)
        ca_cpu = pebbles_cpu_seconds(pebbles) - ca_cpu_start
    finally:
        if profiler is not None:
            # py-spy writes its output when the process it samples exits.
            stop_process(proc)
            try:
                profiler.wait(timeout=60)
            except subprocess.TimeoutExpired:
                stop_process(profiler)
        stop_process(proc)
        log.join()
    serving = log.first("serving HTTP")
    return BulkRun(seconds=seconds, served=served,
                   serving_http=None if serving is None else serving - started,
                   peak_rss_mb=peak_rss_mb, cpu_seconds=cpu, ca_cpu_seconds=ca_cpu,
                   workers=workers,
                   acme_requests=acme_requests(pebbles, since=pebble_log_start),
                   pebbles=len(pebbles))


PEER_RUNNERS: dict[str, Callable[[b1.Bench, str, Path], b1.Sample]] = {
    "certbot": b1.run_certbot,
    "lego": b1.run_lego,
}


def run_peer(*, bench: b1.Bench, client: str, sample: int) -> PeerRun:
    """`sample` sequential issuances, after one untimed warm-up run (lego registers its
    account there; certbot's is registered before)."""
    samples: list[float] = []
    failed = 0
    for index in range(-1, sample):
        host = f"b2-{client}-{'warmup' if index < 0 else index}.example.test"
        rundir = bench.workdir / "runs" / host
        rundir.mkdir(parents=True)
        try:
            seconds = PEER_RUNNERS[client](bench, host, rundir).seconds
        except b1.RunFailed as err:
            print(f"FAILED {client} {host}: {b1.tail(str(err), lines=8)}", file=sys.stderr,
                  flush=True)
            if index < 0:
                raise
            failed += 1
            continue
        if index >= 0:
            samples.append(seconds)
        print(f"{client} {host}: {seconds:.3f} s", flush=True)
    return PeerRun(client=client, samples=tuple(samples), failed=failed)


# --- reporting ---------------------------------------------------------------------------


def results_table(*, run: BulkRun, count: int, peers: Sequence[PeerRun]) -> str:
    rows = [
        f"| client | certificates | total (s) | certs/s | s per certificate | {count} total (s) "
        "| ratio to certctl |",
        "|---|---|---|---|---|---|---|",
        f"| certctl, {count} at once | {len(run.served)} | {run.seconds:.1f} "
        f"| {len(run.served) / run.seconds:.1f} | {run.seconds / count:.3f} "
        f"| {run.seconds:.1f} (measured) | 1.00x |",
    ]
    for peer in peers:
        if not peer.samples:
            rows.append(f"| {peer.client}, in sequence | 0 ({peer.failed} failed) "
                        "| - | - | - | - | - |")
            continue
        total = sum(peer.samples)
        extrapolated = peer.mean * count
        rows.append(
            f"| {peer.client}, in sequence | {len(peer.samples)} (sample) | {total:.1f} "
            f"| {len(peer.samples) / total:.2f} | {peer.mean:.3f} "
            f"| {extrapolated:.0f} (**extrapolated** from the sample) "
            f"| {extrapolated / run.seconds:.1f}x |")
    return "\n".join(rows)


def progress_table(run: BulkRun, *, count: int) -> str:
    """When the first, 10 %, ..., last certificate was served: the shape of the run."""
    times = sorted(run.served.values())
    rows = ["| served | seconds since spawn |", "|---|---|"]
    if run.serving_http is not None:
        rows.append(f"| (\"serving HTTP\" log line) | {run.serving_http:.2f} |")
    for share in (0.0, 0.1, 0.5, 0.9, 1.0):
        index = max(0, min(len(times) - 1, round(share * count) - 1))
        label = "first" if share == 0.0 else f"{share:.0%} ({index + 1})"
        rows.append(f"| {label} | {times[index]:.2f} |")
    return "\n".join(rows)


def verdicts(run: BulkRun, *, count: int) -> str:
    def verdict(ok: bool) -> str:
        return "met" if ok else "**missed**"

    all_served = len(run.served) == count
    requests = sum(run.acme_requests.values())
    threads = "default number of" if run.workers is None else run.workers
    per_endpoint = ", ".join(f"{name} {number}" for name, number in run.acme_requests.items())
    return (f"Targets: {count} served in <= {TARGET_SECONDS:.0f} s: "
            f"{verdict(all_served and run.seconds <= TARGET_SECONDS)} ({run.seconds:.1f} s); "
            f"peak RSS <= {TARGET_RSS_MB:.0f} MB: {verdict(run.peak_rss_mb <= TARGET_RSS_MB)} "
            f"({run.peak_rss_mb:.0f} MB). certctl used {run.cpu_seconds:.1f} s of CPU, its "
            "ACME helper process's included "
            f"({threads} work-queue threads; Pebble and its DNS server "
            f"{run.ca_cpu_seconds:.1f} s meanwhile, on the same cores) and made {requests} ACME "
            f"requests ({requests / count:.1f} per certificate: {per_endpoint}).")


def results_section(*, command: str, started_at: datetime.datetime, count: int,
                    run: BulkRun, peers: Sequence[PeerRun], pebble: PebbleBuild) -> str:
    return "\n".join([
        f"## B2: {count} Ingresses at once to served certificates (HTTP-01, Pebble)",
        "",
        f"Command (from the repo root): `{command}`  ",
        f"Date: {started_at:%Y-%m-%d %H:%M} UTC. {run.pebbles} Pebble(s) (`PEBBLE_VA_NOSLEEP=1 "
        "PEBBLE_AUTHZREUSE=0 PEBBLE_WFE_NONCEREJECT=0`), a ClusterIssuer each, the Ingresses "
        "taking them in turn (one Pebble deadlocks the likelier the more orders it holds); the "
        "first one for both peers.",
        "",
        results_table(run=run, count=count, peers=peers),
        "",
        verdicts(run, count=count),
        "",
        f"- **certctl**: one `certctl serve`, spawned on {count} annotated Ingresses (one "
        "fresh host each, one manifest file) and an empty state dir, timed until every "
        "host's TLS handshake with SNI=host verifies against Pebble's issuance root. Peak "
        "RSS is the VmHWM of the process plus that of its ACME helper process.",
        "- **certbot / lego**: whole CLI runs one after another (`certbot certonly "
        "--standalone`, `lego run`), one host each, account registered beforehand; "
        f"the {count} total is the sample's mean times {count}, **not measured**.",
        "- The machine is shared (2 cores, other jobs running): numbers are noisy.",
        "",
        "certctl's progress:",
        "",
        progress_table(run, count=count),
        "",
        "Machine:",
        "",
        reporting.machine_table(b1.machine(pebble=pebble)),
    ])


# --- main ----------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.b2_bulk_issuance",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--ingresses", type=int, default=500)
    parser.add_argument("--peer-sample", type=int, default=20,
                        help="sequential issuances timed per peer (0: no peers)")
    parser.add_argument("--pebble", choices=PEBBLE_BUILDS, default="current",
                        help="which Pebble build (default: the current one)")
    parser.add_argument("--pebbles", type=int, default=None,
                        help=f"Pebbles, a ClusterIssuer each, the Ingresses taking them in "
                        f"turn (default: one per {ORDERS_PER_PEBBLE:,} Ingresses)")
    parser.add_argument("--workers", type=int, default=None,
                        help="certctl serve --workers (default: certctl's own)")
    parser.add_argument("--timeout", type=float, default=600.0,
                        help="seconds for certctl to serve every host")
    parser.add_argument("--profile", type=Path, default=None,
                        help="py-spy record the certctl process into this file")
    parser.add_argument("--profile-format", default="flamegraph",
                        choices=("flamegraph", "speedscope", "raw"))
    parser.add_argument("--profile-gil", action="store_true",
                        help="profile only the thread holding the GIL (CPU, not waits)")
    parser.add_argument("--write-results", action="store_true",
                        help=f"replace this benchmark's section of {reporting.RESULTS_PATH.name}")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (all logs)")
    args = parser.parse_args(argv)
    if args.ingresses < 1:
        parser.error("--ingresses must be at least 1")
    needed = [str(b1.CERTCTL_BIN)] + ([b1.CERTBOT_BIN, b1.LEGO_BIN] if args.peer_sample else [])
    if args.profile is not None:
        needed.append(str(PY_SPY_BIN))
    for binary in needed:
        if not Path(binary).exists():
            parser.error(f"{binary} is missing (apt-get install -y certbot lego pebble; "
                         "pip install -e . and py-spy in the venv)")

    def terminate(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, terminate)  # unwind through the finally blocks
    command = reporting.command_line(module="bench.b2_bulk_issuance", argv=argv)
    started_at = datetime.datetime.now(datetime.UTC)
    workdir = workdir_module.create(prefix="certctl-b2-")
    pebbles: list[PebbleServer] = []
    peers: list[PeerRun] = []
    try:
        http_port = free_port()
        for index in range(args.pebbles or math.ceil(args.ingresses / ORDERS_PER_PEBBLE)):
            folder = workdir / f"pebble-{index}"
            folder.mkdir()
            pebbles.append(PebbleServer.start(
                tmp_path=folder, http_port=http_port, build=args.pebble,
                env={"PEBBLE_AUTHZREUSE": "0", "PEBBLE_WFE_NONCEREJECT": "0"}))
        pebble = pebbles[0]  # the peers' CA
        print(f"work dir {workdir}; certctl: {args.ingresses} Ingresses, {len(pebbles)} "
              "Pebble(s)...", flush=True)
        try:
            run = run_certctl(pebbles=pebbles, workdir=workdir / "certctl",
                              count=args.ingresses, workers=args.workers,
                              timeout=args.timeout,
                              root_pem=b"".join(each.issuance_roots_pem() for each in pebbles),
                              profile=args.profile, profile_format=args.profile_format,
                              profile_gil=args.profile_gil)
        except b1.RunFailed as err:
            print(f"FAILED certctl: {err}", file=sys.stderr)
            return 1
        print(f"certctl: {len(run.served)} served in {run.seconds:.1f} s "
              f"({len(run.served) / run.seconds:.1f} certs/s), peak RSS "
              f"{run.peak_rss_mb:.0f} MB, {run.cpu_seconds:.1f} s CPU "
              f"(Pebble {run.ca_cpu_seconds:.1f} s)", flush=True)
        if args.peer_sample:
            bench = b1.Bench(pebble=pebble, workdir=workdir,
                             issuance_root_pem=pebble.issuance_roots_pem(),
                             timeout=120.0, certbot_dir=workdir / "certbot",
                             lego_dir=workdir / "lego")
            bench.certbot_dir.mkdir()
            try:
                b1.register_certbot(bench)
                for client in PEERS:
                    peers.append(run_peer(bench=bench, client=client, sample=args.peer_sample))
            except b1.RunFailed as err:
                print(f"FAILED peer set-up: {err}", file=sys.stderr)
                return 2
    finally:
        for each in pebbles:
            each.stop()
        workdir_module.remove_unless_kept(workdir, keep=args.keep)

    print()
    print(results_table(run=run, count=args.ingresses, peers=peers))
    print()
    print(verdicts(run, count=args.ingresses))
    print()
    print(progress_table(run, count=args.ingresses))
    if args.write_results:
        reporting.write_results(name="b2_bulk_issuance", section=results_section(
            command=command, started_at=started_at, count=args.ingresses, run=run, peers=peers,
            pebble=args.pebble))
        print(f"\nwrote {reporting.RESULTS_PATH}")
    return 0 if len(run.served) == args.ingresses and not any(p.failed for p in peers) else 1


if __name__ == "__main__":
    sys.exit(main())
