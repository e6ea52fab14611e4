"""B8's peer: certctl and cert-manager issuing for the same annotated Ingresses, each on a
real API server of its own, DNS-01.

    .venv/bin/python -m bench.b8_peer [--ingresses 100] [--pebble debian|current]
        [--cert-manager-qps 20] [--cert-manager-burst 50] [--write-results] [--keep]

cert-manager solves HTTP-01 with solver Pods, which need a kubelet the test control plane
does not have, so both issue by DNS-01 here: rfc2136 updates to one BIND9 per run
(tests/bind.py), which the run's Pebble asks (`-dnsserver`). Each controller gets
`--dns01-recursive-nameservers <BIND> --dns01-recursive-nameservers-only` (the zone's NS
records name port 53, where nothing listens) and otherwise runs with its defaults:

- certctl: `certctl controller` with manifests/' Deployment args and ServiceAccount token,
  as B8 runs it (no data plane: DNS-01 needs none, and served is not measured here).
- cert-manager: its controller (github.com/cert-manager/cert-manager v1.21.2, built by
  scripts/testservers/build.sh from its main.go there, which wires the default
  controllers as cert-manager's own binary does) with its CRDs from that module and a
  ServiceAccount bound to cluster-admin; its defaults include a client limit of 20 API
  requests a second (burst 50: `--cert-manager-qps` and `--cert-manager-burst` change
  them, as `--kube-api-qps` and `--kube-api-burst` do cert-manager's), 5 workers a
  controller, 60 challenges at once and a DNS-01 propagation re-check every 10 s. Once
  its check sees a DNS-01 record, cert-manager sleeps 60 s (the record's TTL, "to allow
  the DNS01 record to propagate": pkg/issuer/acme/dns/dns.go) in the challenge worker, so
  with its 5 workers it validates at most 5 challenges a minute; hence the default of
  100 Ingresses (about 20 minutes for cert-manager).

The Pebble is Debian's (2.4.0) unless `--pebble current`: since letsencrypt/pebble#508
(2025) the current Pebble answers a finalize without the `Location` header, which RFC 8555
does not require and Let's Encrypt sends; cert-manager's ACME client (a fork of
x/crypto/acme, golang/go#77704) then polls the URL "" and fails each order's finalize
once, and its exponential re-queue (5 s doubling, to 30 min) makes it slower than it is
against Let's Encrypt. The runs go one after the other, each on a fresh control plane
(tests/controlplane.py), Pebble and BIND, so neither shares the two cores with the
other. Each creates `--ingresses` Ingresses annotated `cert-manager.io/cluster-issuer`
(both read it) at once by 8 client threads and is timed from the first create until
every Ingress's Secret holds a chain that verifies, for its host, to Pebble's root. Then,
once the controller is quiet, kube-apiserver's audit log gives the controller's requests
per certificate, and /proc the CPU time of the controller, kube-apiserver and etcd until
issued.
"""

from __future__ import annotations

import argparse
import base64
import collections
import contextlib
import datetime
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from cryptography.x509 import verification

from bench import b6_idle_certificates as b6
from bench import b8_cluster as b8
from bench import reporting
from bench import workdir as workdir_module
from certctl.api import conditions
from certctl.store.kube import KubeStore
from tests import testservers
from tests.bind import BindServer
from tests.clusterops import (
    CONTROLLER_USER,
    admin_store,
    annotated_ingress,
    apply_manifests,
    deployment_args,
)
from tests.controlplane import AuditEvent, ControlPlane
from tests.pebble import PebbleBuild, PebbleServer, free_port
from tests.serving import cluster_issuer, eventually, verify_chain

ISSUER = "b8-dns"
ZONE = "example.test"
TSIG_SECRET = "b8-tsig"
CERT_MANAGER_NAMESPACE = "cert-manager"
CERT_MANAGER_USER = f"system:serviceaccount:{CERT_MANAGER_NAMESPACE}:cert-manager"
CERTCTL_NAMESPACE = "certctl"  # manifests/' --cluster-resource-namespace
ISSUE_TIMEOUT = 1800.0


@dataclass(frozen=True, kw_only=True)
class Issuance:
    seconds: float
    created: float
    requests: list[AuditEvent]
    cpu: dict[str, float]
    peak_rss_mb: float


def _issuer(*, pebble: PebbleServer, bind: BindServer, api_version: str) -> dict[str, Any]:
    """One ClusterIssuer both controllers read alike (certctl takes cert-manager's spec)."""
    issuer = cluster_issuer(pebble, name=ISSUER, api_version=api_version)
    issuer["spec"]["acme"]["solvers"] = [
        {"dns01": {"rfc2136": bind.rfc2136_solver(secret_name=TSIG_SECRET)}}]
    return issuer


def _ready(obj: Mapping[str, Any]) -> bool:
    return conditions.is_true((obj.get("status") or {}).get("conditions") or [], "Ready")


def _verifier(pebble: PebbleServer) -> Callable[[str, Mapping[str, Any]], bool]:
    """Whether a Secret's chain verifies to Pebble's issuance root for a host."""
    roots = pebble.issuance_roots_pem()

    def verifies(host: str, secret: Mapping[str, Any]) -> bool:
        try:
            verify_chain(base64.b64decode((secret.get("data") or {}).get("tls.crt") or ""),
                         roots_pem=roots, host=host)
        except (ValueError, verification.VerificationError):
            return False
        return True

    return verifies


def _issue(*, plane: ControlPlane, api: KubeStore, pebble: PebbleServer, count: int,
           controller: subprocess.Popen[bytes], user: str) -> Issuance:
    """`count` annotated Ingresses at once; timed until each one's Secret verifies."""
    hosts = {f"b8-{i}": f"b8-{i}.{ZONE}" for i in range(count)}
    verifies = _verifier(pebble)
    mark = plane.audit.mark()
    assert plane.apiserver is not None and plane.etcd is not None
    pids = {"controller": controller.pid, "kube-apiserver": plane.apiserver.pid,
            "etcd": plane.etcd.pid}
    cpu_before = {name: b6.cpu_seconds(pid) for name, pid in pids.items()}
    started = time.monotonic()
    b8._create_all(api, [annotated_ingress(name, host, namespace=b8.NAMESPACE, issuer=ISSUER)
                         for name, host in hosts.items()])
    created = time.monotonic() - started
    waiting = dict(hosts)
    while waiting:
        if controller.poll() is not None:
            raise RuntimeError(f"the controller exited ({controller.returncode})")
        if time.monotonic() - started > ISSUE_TIMEOUT:
            raise RuntimeError(f"{len(waiting)} of {count} Secrets not issued after "
                               f"{ISSUE_TIMEOUT:.0f} s")
        secrets = {s["metadata"]["name"]: s
                   for s in api.list(kind="Secret", namespace=b8.NAMESPACE)}
        for name, host in list(waiting.items()):
            secret = secrets.get(f"{name}-tls")
            if secret is not None and verifies(host, secret):
                del waiting[name]
        time.sleep(0.5)
    seconds = time.monotonic() - started
    cpu = {name: b6.cpu_seconds(pid) - cpu_before[name] for name, pid in pids.items()}
    b8._settled([controller.pid])  # the clean-up after issuance (Challenges, keys) too
    time.sleep(2.0)  # the last requests reach the audit log
    return Issuance(seconds=seconds, created=created,
                    requests=[e for e in plane.audit.events(since=mark) if e.user == user],
                    cpu=cpu, peak_rss_mb=b6.memory_mb(controller.pid)[1])


@contextlib.contextmanager
def _servers(work: Path, *, pebble_build: PebbleBuild,
             ) -> Iterator[tuple[ControlPlane, BindServer, PebbleServer]]:
    """A fresh control plane, BIND for the zone, and a Pebble asking that BIND."""
    with contextlib.ExitStack() as stack:
        plane = ControlPlane.start(work / "plane")
        stack.callback(plane.stop)
        bind = stack.enter_context(BindServer.start(tmp_path=work, zones=(ZONE,)))
        pebble = PebbleServer.start(
            tmp_path=work, http_port=free_port(), build=pebble_build, dns_server=bind.nameserver,
            env={"PEBBLE_AUTHZREUSE": "0", "PEBBLE_WFE_NONCEREJECT": "0"})
        stack.callback(pebble.stop)
        yield plane, bind, pebble


def run_certctl(*, work: Path, count: int, pebble_build: PebbleBuild) -> Issuance:
    with _servers(work, pebble_build=pebble_build) as (plane, bind, pebble), \
            contextlib.ExitStack() as stack:
        rendered, kubeconfigs = apply_manifests(plane, directory=work)
        [deployment] = [d for d in yaml.safe_load_all(rendered)
                        if d and d["kind"] == "Deployment"
                        and d["metadata"]["name"] == "certctl-controller"]
        api = admin_store(plane)
        stack.callback(api.close)
        api.create(obj=bind.tsig_secret_object(namespace=CERTCTL_NAMESPACE, name=TSIG_SECRET))
        api.create(obj=_issuer(pebble=pebble, bind=bind, api_version="certctl.io/v1"))
        controller = b8._spawn([*deployment_args(
            deployment, kubeconfig=str(kubeconfigs["certctl-controller"]),
            metrics_address="127.0.0.1", metrics_port=str(free_port()),
            dns01_recursive_nameservers=bind.nameserver), "--dns01-recursive-nameservers-only"],
            log=work / "certctl-controller.log", name="certctl-controller")
        stack.callback(b6.stop, controller)
        eventually(lambda: _ready(api.get(kind="ClusterIssuer", namespace=None, name=ISSUER)
                                  or {}), timeout=60, what="the certctl ClusterIssuer Ready")
        return _issue(plane=plane, api=api, pebble=pebble, count=count, controller=controller,
                      user=CONTROLLER_USER)


def run_cert_manager(*, work: Path, count: int, pebble_build: PebbleBuild, qps: float,
                     burst: int) -> Issuance:
    built = testservers.directory("cert-manager")
    with _servers(work, pebble_build=pebble_build) as (plane, bind, pebble), \
            contextlib.ExitStack() as stack:
        for crd in sorted((built / "crds").glob("*.yaml")):
            plane.kubectl("apply", "--server-side", "-f", str(crd))
        for crd in sorted((built / "crds").glob("*.yaml")):
            name = yaml.safe_load(crd.read_text())["metadata"]["name"]
            plane.kubectl("wait", "--for=condition=Established", f"crd/{name}", "--timeout=60s")
        plane.kubectl("create", "namespace", CERT_MANAGER_NAMESPACE)
        plane.kubectl("create", "serviceaccount", "cert-manager", "-n", CERT_MANAGER_NAMESPACE)
        plane.kubectl("create", "clusterrolebinding", "cert-manager", "--clusterrole",
                      "cluster-admin", f"--serviceaccount={CERT_MANAGER_NAMESPACE}:cert-manager")
        kubeconfig = plane.token_kubeconfig(work / "cert-manager.kubeconfig", token=plane.token(
            namespace=CERT_MANAGER_NAMESPACE, service_account="cert-manager"))
        api = admin_store(plane)
        stack.callback(api.close)
        api.create(obj=bind.tsig_secret_object(namespace=CERT_MANAGER_NAMESPACE,
                                                 name=TSIG_SECRET))
        plane.kubectl("apply", "-f", "-", input=json.dumps(
            _issuer(pebble=pebble, bind=bind, api_version="cert-manager.io/v1")))
        with (work / "cert-manager.log").open("wb") as log:
            controller = subprocess.Popen(
                [str(built / "bin" / "cert-manager-controller"), f"-kubeconfig={kubeconfig}",
                 f"-cluster-resource-namespace={CERT_MANAGER_NAMESPACE}",
                 f"-dns01-recursive-nameserver={bind.nameserver}",
                 f"-kube-api-qps={qps}", f"-kube-api-burst={burst}"],
                stdout=log, stderr=subprocess.STDOUT)
        stack.callback(b6.stop, controller)

        def issuer_ready() -> bool:
            found = plane.kubectl("get", "clusterissuers.cert-manager.io", ISSUER, "-o", "json",
                                  check=False)
            return found.returncode == 0 and _ready(json.loads(found.stdout))

        eventually(issuer_ready, timeout=60, what="the cert-manager ClusterIssuer Ready")
        return _issue(plane=plane, api=api, pebble=pebble, count=count, controller=controller,
                      user=CERT_MANAGER_USER)


# --- the report ---------------------------------------------------------------------------


def _counts(found: Issuance) -> dict[str, float]:
    requests = [e for e in found.requests if e.resource != "leases"]
    writes = [e for e in requests if e.is_write]
    return {"requests": len(requests), "writes": len(writes),
            "events": sum(1 for e in writes if e.resource == "events"),
            "reads": len(requests) - len(writes)}


def _by_kind(found: Issuance, *, writes: bool, count: int) -> str:
    kinds = collections.Counter(
        f"{e.verb} {e.resource}{'/' + e.subresource if e.subresource else ''}"
        f"{' (' + str(e.code) + ')' if e.code >= 400 else ''}"
        for e in found.requests if e.resource != "leases" and e.is_write == writes)
    return ", ".join(f"{kind} {n / count:.2f}" for kind, n in sorted(kinds.items()))


def _rows(results: Mapping[str, Issuance], *, count: int) -> list[tuple[str, ...]]:
    certctl, peer = results["certctl"], results["cert-manager"]

    def row(what: str, value: Callable[[Issuance], float], fmt: str) -> tuple[str, ...]:
        mine, theirs = value(certctl), value(peer)
        ratio = f"{theirs / mine:.2f}x" if mine else "-"
        return (what, format(mine, fmt), format(theirs, fmt), ratio)

    rows = [
        row(f"{count} annotated Ingresses to issued Secrets, s", lambda r: r.seconds, ".1f"),
        row("certificates issued a second", lambda r: count / r.seconds, ".1f"),
        row("API requests per certificate (without leases)",
            lambda r: _counts(r)["requests"] / count, ".1f"),
        row("writes per certificate", lambda r: _counts(r)["writes"] / count, ".1f"),
        row("of which Events", lambda r: _counts(r)["events"] / count, ".1f"),
        row("reads per certificate", lambda r: _counts(r)["reads"] / count, ".1f"),
    ]
    def cpu_ms(name: str) -> Callable[[Issuance], float]:
        return lambda r: r.cpu[name] / count * 1000

    for name in certctl.cpu:
        rows.append(row(f"CPU until issued: {name}, ms per certificate", cpu_ms(name), ".0f"))
    rows.append(row("controller peak RSS (VmHWM), MB", lambda r: r.peak_rss_mb, ".0f"))
    for writes in (True, False):
        rows.append((f"{'writes' if writes else 'reads'} per certificate, by kind",
                     _by_kind(certctl, writes=writes, count=count),
                     _by_kind(peer, writes=writes, count=count), ""))
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.b8_peer", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ingresses", type=int, default=100)
    parser.add_argument("--pebble", choices=("debian", "current"), default="debian",
                        help="which Pebble (the module docstring says why Debian's)")
    parser.add_argument("--cert-manager-qps", type=float, default=20.0,
                        help="cert-manager's --kube-api-qps (its default: 20)")
    parser.add_argument("--cert-manager-burst", type=int, default=50,
                        help="cert-manager's --kube-api-burst (its default: 50)")
    parser.add_argument("--write-results", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)

    work = workdir_module.create(prefix="certctl-b8-peer-")
    started_at = datetime.datetime.now(datetime.UTC)
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(workdir_module.remove_unless_kept, work, keep=args.keep)
        runs: dict[str, Callable[[Path], Issuance]] = {
            "certctl": lambda into: run_certctl(work=into, count=args.ingresses,
                                                pebble_build=args.pebble),
            "cert-manager": lambda into: run_cert_manager(
                work=into, count=args.ingresses, pebble_build=args.pebble,
                qps=args.cert_manager_qps,
                burst=args.cert_manager_burst),
        }
        results = {}
        for name, run in runs.items():
            (work / name).mkdir()
            results[name] = run(work / name)
            print(f"b8_peer: {name}: {results[name].seconds:.1f} s", file=sys.stderr)

    table = "\n".join([
        "| measurement | certctl | cert-manager | cert-manager / certctl |", "|---|---|---|---|",
        *("| " + " | ".join(row) + " |" for row in _rows(results, count=args.ingresses))])
    section = (
        "## B8 peer: certctl and cert-manager, the same Ingresses, DNS-01 on a real API "
        "server\n\n"
        "Command (from the repo root): "
        f"`{reporting.command_line(module='bench.b8_peer', argv=argv)}`  \n"
        f"Date: {started_at:%Y-%m-%d %H:%M} UTC. Each controller on a control plane of its own "
        "(kube-apiserver, etcd, kube-controller-manager from tests/controlplane.py), one "
        f"after the other; {'Debian' if args.pebble == 'debian' else 'the current'} Pebble "
        "(`PEBBLE_VA_NOSLEEP=1 PEBBLE_AUTHZREUSE=0 PEBBLE_WFE_NONCEREJECT=0`; see the module "
        "docstring for which) and BIND9 for DNS-01 (rfc2136). `certctl controller` as "
        "manifests/ runs it; cert-manager v1.21.2's controllers with its defaults but "
        f"{args.cert_manager_qps:g} API requests a second, burst {args.cert_manager_burst} "
        "(its defaults: 20, 50); DNS-01 re-checked every 10 s. Timed from the first "
        "create until every Secret verifies; requests from kube-apiserver's audit log.\n\n"
        f"{table}\n\nMachine:\n\n"
        + reporting.machine_table(reporting.machine_rows(
            extra=[("certctl", f"git {reporting.git_describe()}"),
                   ("cert-manager", "v1.21.2 (scripts/testservers/cert-manager)")])) + "\n")
    print(section)
    if args.write_results:
        reporting.write_results(name="b8_peer", section=section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
