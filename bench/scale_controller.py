"""Scale: 10,000 annotated Ingresses in `certctl serve`: start-up, time per edit, RSS.

    /work/venv/bin/python -m bench.scale_controller [--ingresses 10000] [--edits 5]
        [--write-results] [--keep]

The fixture is B6's (`bench.b6_idle_certificates`): a local CA as ClusterIssuer
`local-ca` and, per Ingress, a kubernetes.io/tls Secret pre-issued by it, so
ingress-shim derives 10,000 Certificates that are all up to date: nothing is
signed and no ACME server is needed, which isolates the controller's own cost
(store, shim, Certificate reconciler, work queue) from issuance.

Measured on the `certctl serve` process:

1. start-up on an empty state dir, from spawn until quiet (B6's definition:
   every Certificate Ready, under 1 % of a core over 2 s), with its CPU time;
2. then `--edits` times, one at a time: one Ingress gets a new
   `cert-manager.io/renew-before` annotation, written the way an editor or
   `kubectl apply` does (its manifest file replaced by a rename). Timed from
   the rename to (a) certctl's "manifests changed; reloading" log line (the
   file watcher's debounce), (b) the derived Certificate's spec carrying the
   new renewBefore (manifest reload + ingress-shim), and (c) the Certificate's
   status carrying the renewalTime that follows from it (the Certificate
   reconciler), read from its state file every 5 ms;
3. RSS (VmRSS) once quiet and after the edits, and the peak (VmHWM).

In standalone mode a change of the manifests folder re-parses only the files
whose content changed, so (b) grows with the edited file (500 Ingress + Secret
pairs here), not with the folder; in a cluster the same edit arrives as one
watch event. The data plane's route rebuild after the edit runs at the same time.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import yaml

from bench import b1_issuance as b1
from bench import b6_idle_certificates as b6
from bench import reporting, workdir
from certctl.api import annotations as annotation_keys
from tests.pebble import free_port

STATE_POLL = 0.005
EDIT_TIMEOUT = 120.0
LOG_TIME_FORMAT = "%Y-%m-%d %H:%M:%S,%f"


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


# --- results ---------------------------------------------------------------------------------


def results_section(*, command: str, started_at: datetime.datetime, count: int,
                    start: b6.Start, rss_quiet_mb: float, rss_end_mb: float, hwm_mb: float,
                    edits: Sequence[Edit], checks: Sequence[tuple[str, bool]]) -> str:
    rows = [
        "| measurement | value |",
        "|---|---|",
        f"| start-up, empty state dir: spawn to quiet | {start.seconds:.1f} s "
        f"({start.cpu_seconds:.1f} s CPU; \"serving HTTP\" at {start.serving_seconds:.1f} s) |",
        f"| RSS once quiet (VmRSS) | {rss_quiet_mb:.0f} MB |",
        f"| RSS after the edits (VmRSS) / peak (VmHWM) | {rss_end_mb:.0f} MB / "
        f"{hwm_mb:.0f} MB |",
    ]
    for label, values in (
        ("edit -> \"reloading\" log line (watcher debounce)", [e.to_reloading for e in edits]),
        ("edit -> Certificate spec updated (reload + ingress-shim)", [e.to_spec for e in edits]),
        ("edit -> Certificate status updated (+ Certificate reconciler)",
         [e.to_status for e in edits]),
        ("Certificate reconciler alone (status - spec)", [e.to_status - e.to_spec for e in edits]),
    ):
        rows.append(f"| {label}, median of {len(values)} (min-max) | "
                    f"{b1.percentile(values, 0.5) * 1000:.0f} ms "
                    f"({min(values) * 1000:.0f}-{max(values) * 1000:.0f}) |")
    return "\n".join([
        f"## Scale: {count:,} Ingresses in `certctl serve` (start-up, time per edit, RSS)",
        "",
        f"Command (from the repo root): `{command}`  ",
        f"Date: {started_at:%Y-%m-%d %H:%M} UTC; {count} annotated Ingresses "
        "(ClusterIssuer `local-ca`, a `spec.ca` issuer), each with its pre-issued Secret "
        "(B6's fixture), so ingress-shim derives that many up-to-date Certificates: no "
        "signing, no ACME.",
        "",
        *rows,
        "",
        f"Each edit sets `{annotation_keys.CM_RENEW_BEFORE}` on one Ingress by replacing its "
        f"manifest file ({b6.PER_FILE} Ingress + Secret pairs) with a rename; times run from "
        "the rename. In standalone mode a change re-parses only the files whose content "
        f"changed (the edited one of {-(-count // b6.PER_FILE)}), while the data plane "
        "rebuilds its routes from every Ingress; the reconcilers' own share is the last row. The "
        "machine is shared (2 cores, other jobs running): numbers are noisy.",
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
    parser.add_argument("--ingresses", type=int, default=10_000)
    parser.add_argument("--edits", type=int, default=5, help="timed edits, one at a time")
    parser.add_argument("--startup-timeout", type=float, default=1800.0)
    parser.add_argument("--write-results", action="store_true",
                        help=f"replace this benchmark's section of {reporting.RESULTS_PATH.name}")
    parser.add_argument("--keep", action="store_true", help="keep the work dir")
    args = parser.parse_args(argv)
    if args.ingresses < 1 or args.edits < 1:
        parser.error("--ingresses and --edits must be at least 1")
    started_at = datetime.datetime.now(datetime.UTC)
    work = workdir.create(prefix="certctl-scale-")
    manifests, state = work / "manifests", work / "state"
    manifests.mkdir()
    try:
        print(f"work dir {work}; issuing {args.ingresses} certificates...", flush=True)
        ca = b6.make_ca(started_at)
        b6.write_manifests(folder=manifests, ca=ca, count=args.ingresses, now=started_at,
                           seed=6, ingresses=True)
        log_path = work / "certctl.log"
        spawned = time.monotonic()
        proc = b6.start_certctl(manifests=manifests, state=state, log_path=log_path,
                                https_port=free_port(), http_port=free_port())
        try:
            start = b6.wait_until_quiet(proc=proc, spawned=spawned, log_path=log_path,
                                        state=state, count=args.ingresses,
                                        timeout=args.startup_timeout)
            rss_quiet_mb, _ = b6.memory_mb(proc.pid)
            print(f"quiet after {start.seconds:.1f} s ({start.cpu_seconds:.1f} s CPU), RSS "
                  f"{rss_quiet_mb:.0f} MB; {args.edits} edits...", flush=True)
            edits: list[Edit] = []
            for number, index in enumerate(
                    random.Random(8).sample(range(args.ingresses), k=args.edits)):
                edit = time_edit(manifests=manifests, state=state, log_path=log_path,
                                 index=index, renew_before=f"{700 + number}h")
                edits.append(edit)
                print(f"{edit.ingress}: reloading after {edit.to_reloading * 1000:.0f} ms, "
                      f"spec {edit.to_spec * 1000:.0f} ms, status {edit.to_status * 1000:.0f} ms",
                      flush=True)
                time.sleep(1.0)  # let the reload's aftermath settle before the next edit
            rss_end_mb, hwm_mb = b6.memory_mb(proc.pid)
        finally:
            b6.stop(proc)
        checks = [
            (f"{args.ingresses} Certificates derived, all Ready",
             b6.ready_count(state) == args.ingresses),
            ("no Order exists (nothing was issued)",
             not any((state / "objects" / "Order").glob("*/*.yaml"))),
        ]
        for what, ok in checks:
            print(f"{'ok' if ok else 'FAILED'}: {what}")
        if args.write_results:
            command = reporting.command_line(module="bench.scale_controller", argv=argv)
            reporting.write_results(name="scale_controller", section=results_section(
                command=command, started_at=started_at, count=args.ingresses,
                start=start, rss_quiet_mb=rss_quiet_mb, rss_end_mb=rss_end_mb, hwm_mb=hwm_mb,
                edits=edits, checks=checks))
            print(f"wrote {reporting.RESULTS_PATH}")
        return 0 if all(ok for _, ok in checks) else 1
    finally:
        workdir.remove_unless_kept(work, keep=args.keep)


if __name__ == "__main__":
    sys.exit(main())
