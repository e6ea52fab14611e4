"""Every benchmark in sequence: B1-B6, B8, B10, then `serve` at scale, at the sizes
their targets name (B8's cert-manager peer, bench.b8_peer, takes half an hour and is
run on its own).

    python -m bench.run_all [--quick] [--only B2,scale] [--write-results]

Each benchmark runs as its own process (`python -m bench.<module>`), one after
the other so they never share the machine's cores, with its output passed
through. A benchmark whose prerequisites are missing is skipped with the
reason (B3 and B4 need root, nginx, wrk and python3-venv, B10 root, nginx and h2load; B1 and B2
need Pebble, and B2 runs without its certbot/lego peers when those are missing; B8
builds the servers it needs from Go modules, scripts/testservers/build.sh). `--quick` runs every
benchmark with small parameters, to check that they all work, in a few
minutes; its numbers are not comparable and cannot be written to RESULTS.md.
With `--write-results` every benchmark replaces its own section of
bench/RESULTS.md, and this script adds a section listing what ran.
Exit status: 0 when every benchmark that ran exited 0, 1 otherwise.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from bench import b1_issuance as b1
from bench import b3_peers, installed, reporting
from bench import b10_http2 as b10
from tests import pebble

Prerequisite = Callable[[], str | None]  # why the benchmark cannot run, or None


def needs_pebble() -> str | None:
    missing = [binary for binary in (pebble.PEBBLE_BIN, pebble.CHALLTESTSRV_BIN)
               if not Path(binary).exists()]
    return f"missing {', '.join(missing)} (apt-get install -y pebble)" if missing else None


def needs_b3_b4_peers() -> str | None:
    if os.geteuid() != 0:
        return "needs root (wrk runs in a private mount namespace for its /etc/hosts)"
    missing = [binary for binary in (b3_peers.NGINX_BIN, b3_peers.WRK_BIN)
               if not Path(binary).exists()]
    if missing:
        return f"missing {', '.join(missing)} (apt-get install -y nginx-light wrk)"
    return installed.missing(installed.DEFAULT_PYTHON)  # certctl is installed for it


def needs_b1_peers() -> str | None:
    return needs_pebble() or (None if peers_installed() else
                              "missing certbot or lego (apt-get install -y certbot lego)")


def peers_installed() -> bool:
    return all(Path(binary).exists() for binary in (b1.CERTBOT_BIN, b1.LEGO_BIN))


def needs_root_nginx_h2load() -> str | None:
    if os.geteuid() != 0:
        return "needs root (an address on lo outside 127.0.0.0/8 for the cluster's backend)"
    missing = [binary for binary in (b3_peers.NGINX_BIN, b10.H2LOAD_BIN)
               if not Path(binary).exists()]
    return f"missing {', '.join(missing)} (apt-get install -y nginx-light nghttp2-client)" \
        if missing else None


def nothing() -> str | None:
    return None


@dataclasses.dataclass(frozen=True, kw_only=True)
class Benchmark:
    name: str
    module: str
    full: tuple[str, ...]  # arguments of a full run
    quick: tuple[str, ...]  # arguments of a --quick run
    prerequisite: Prerequisite = nothing

    def argv(self, *, quick: bool, write_results: bool) -> list[str]:
        arguments = list(self.quick if quick else self.full)
        if self.name == "B2" and not peers_installed():
            arguments += ["--peer-sample", "0"]
        if write_results:
            arguments.append("--write-results")
        return [sys.executable, "-m", self.module, *arguments]


BENCHMARKS = (
    Benchmark(name="B1", module="bench.b1_issuance", full=("--runs", "20"),
              quick=("--runs", "3"), prerequisite=needs_b1_peers),
    Benchmark(name="B2", module="bench.b2_bulk_issuance",
              full=("--ingresses", "5000", "--peer-sample", "20", "--timeout", "1200"),
              quick=("--ingresses", "50", "--peer-sample", "2"), prerequisite=needs_pebble),
    Benchmark(name="B3", module="bench.b3_handshakes",
              full=("--certificates", "10000", "--seconds", "10", "--rounds", "3"),
              quick=("--certificates", "1000", "--hot-names", "100", "--seconds", "2",
                     "--rounds", "1"),
              prerequisite=needs_b3_b4_peers),
    Benchmark(name="B4", module="bench.b4_proxy", full=("--seconds", "10", "--rounds", "5"),
              quick=("--seconds", "2", "--rounds", "1"), prerequisite=needs_b3_b4_peers),
    Benchmark(name="B5", module="bench.b5_hot_swap", full=("--swaps", "10"),
              quick=("--swaps", "3")),
    Benchmark(name="B6", module="bench.b6_idle_certificates",
              full=("--certificates", "10000", "--idle-seconds", "60"),
              quick=("--certificates", "500", "--idle-seconds", "5")),
    Benchmark(name="B8", module="bench.b8_cluster",
              full=("--ingresses", "1000", "--replica-ingresses", "10000", "--edits", "5"),
              quick=("--ingresses", "20", "--replica-ingresses", "200", "--edits", "2")),
    Benchmark(name="B10", module="bench.b10_http2", full=("--seconds", "10", "--rounds", "3"),
              quick=("--seconds", "2", "--rounds", "1"), prerequisite=needs_root_nginx_h2load),
    Benchmark(name="scale", module="bench.scale_controller",
              full=("--sizes", "100,1000,10000", "--edits", "5"),
              quick=("--sizes", "500", "--edits", "2")),
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Outcome:
    name: str
    command: str
    status: str  # "ok", "failed (exit N)" or "skipped: why"
    seconds: float | None


def run(benchmark: Benchmark, *, quick: bool, write_results: bool) -> Outcome:
    argv = benchmark.argv(quick=quick, write_results=write_results)
    command = shlex.join(["python", *argv[1:]])
    why_not = benchmark.prerequisite()
    if why_not is not None:
        print(f"\n=== {benchmark.name}: SKIPPED, {why_not}", flush=True)
        return Outcome(name=benchmark.name, command=command, status=f"skipped: {why_not}",
                       seconds=None)
    print(f"\n=== {benchmark.name}: {command}", flush=True)
    started = time.monotonic()
    returncode = subprocess.call(argv, cwd=reporting.REPO_ROOT)
    seconds = time.monotonic() - started
    status = "ok" if returncode == 0 else f"failed (exit {returncode})"
    print(f"=== {benchmark.name}: {status} after {seconds:.0f} s", flush=True)
    return Outcome(name=benchmark.name, command=command, status=status, seconds=seconds)


def summary(outcomes: Sequence[Outcome]) -> str:
    rows = ["| benchmark | command | result | wall time |", "|---|---|---|---|"]
    rows += [f"| {o.name} | `{o.command}` | {o.status} | "
             f"{'-' if o.seconds is None else f'{o.seconds:.0f} s'} |" for o in outcomes]
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run_all",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="small parameters: checks that every benchmark runs")
    parser.add_argument("--only", default=None, metavar="NAMES",
                        help="comma-separated subset, e.g. B2,scale "
                        f"(of {', '.join(b.name for b in BENCHMARKS)})")
    parser.add_argument("--write-results", action="store_true",
                        help=f"every benchmark replaces its section of "
                        f"{reporting.RESULTS_PATH.name}")
    args = parser.parse_args(argv)
    if args.quick and args.write_results:
        parser.error("--quick numbers are not comparable: they are never written to "
                     f"{reporting.RESULTS_PATH.name}")
    chosen = list(BENCHMARKS)
    if args.only:
        wanted = {name.strip().lower() for name in args.only.split(",") if name.strip()}
        unknown = wanted - {b.name.lower() for b in BENCHMARKS}
        if unknown:
            parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
        chosen = [b for b in BENCHMARKS if b.name.lower() in wanted]
    started_at = datetime.datetime.now(datetime.UTC)
    outcomes = [run(benchmark, quick=args.quick, write_results=args.write_results)
                for benchmark in chosen]
    table = summary(outcomes)
    print(f"\n{table}")
    if args.write_results:
        command = reporting.command_line(module="bench.run_all", argv=argv)
        reporting.write_results(name="run_all", section="\n".join([
            "## The last full run (`bench.run_all`)",
            "",
            f"Command (from the repo root): `{command}`  ",
            f"Date: {started_at:%Y-%m-%d %H:%M} UTC; git {reporting.git_describe()}. Each "
            "benchmark wrote its own section below or above.",
            "",
            table,
            "",
            "Machine:",
            "",
            reporting.machine_table(reporting.machine_rows()),
        ]))
        print(f"wrote {reporting.RESULTS_PATH}")
    return 0 if all(o.status in ("ok",) or o.status.startswith("skipped")
                    for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
