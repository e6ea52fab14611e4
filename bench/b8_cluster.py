"""B8: annotated Ingresses on a real API server to served certificates, with the API requests
each certificate costs; then a data-plane replica starting against many Ingresses and Secrets.

    .venv/bin/python -m bench.b8_cluster [--ingresses 1000] [--replica-ingresses 10000]
        [--edits 5] [--write-results] [--keep]

The cluster is the tests' (tests/controlplane.py): etcd, kube-apiserver with an audit log and
kube-controller-manager, built by scripts/testservers/build.sh, with manifests/ applied
(CRDs, RBAC, ServiceAccounts). certctl runs as users run it: `certctl controller` and
`certctl dataplane` processes with the args of manifests/' Deployments and their
ServiceAccounts' tokens (loopback ports swapped in, as a cluster's Services would route).
One current Pebble (`PEBBLE_VA_NOSLEEP=1 PEBBLE_AUTHZREUSE=0 PEBBLE_WFE_NONCEREJECT=0`)
validates HTTP-01 against the data plane's HTTP port.

1. Issuance: `--ingresses` annotated Ingresses (a ClusterIssuer, HTTP-01) created at once
   by 8 client threads. Timed from the first create until every host has been served, in
   a TLS handshake with SNI, a chain that verifies to Pebble's root (hosts are tried once
   their Secret exists). Then, once every Challenge is gone, the audit log gives every
   request the controller and the data plane made since the first create, per
   certificate, writes by verb and resource; and the CPU time (utime + stime) the
   controller, the data plane, kube-apiserver and etcd spent until served.
2. Replica start-up: `--replica-ingresses` Ingresses of class certctl, each with a
   pre-issued kubernetes.io/tls Secret (one local CA, no ACME), created, and the running
   controller and data plane left to take them in until they are quiet (a replica has a
   node of its own in a cluster; here it shares the two cores), before a second
   `certctl dataplane` is spawned; timed from the spawn until its /readyz answers 200
   (ready means its watches synced and its routes and certificates are loaded), with its
   RSS then. Then `--edits` times: one Ingress's path changed by an update through the API,
   timed from the update's answer until the replica routes a request by the new path.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import contextlib
import datetime
import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import requests
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from bench import b1_issuance as b1
from bench import b6_idle_certificates as b6
from bench import reporting
from bench import workdir as workdir_module
from certctl.pki import secret as tls_secret
from certctl.store.kube import KubeStore
from tests.clusterops import (
    CONTROLLER_USER,
    DATA_PLANE_USER,
    admin_store,
    annotated_ingress,
    apply_manifests,
    deployment_args,
    issuer_ready,
)
from tests.controlplane import AuditEvent, ControlPlane
from tests.pebble import PebbleServer, free_port
from tests.serving import cluster_issuer, verified_context

REPO = Path(__file__).resolve().parent.parent
NAMESPACE = "default"  # watched by manifests/' Roles (rbac-watched-namespaces.yaml)
ISSUER = "b8"
TARGET_SECONDS = 120.0
TARGET_WRITES = 12.0
TARGET_READY_SECONDS = 10.0
TARGET_READY_RSS_MB = 500.0
TARGET_EDIT_MS = 100.0
CREATE_THREADS = 8
# certctl's running processes are quiet when together under this share of a core...
QUIET_CPU = 0.05
# ... over this many seconds.
QUIET_WINDOW = 2.0


def _spawn(args: Sequence[str], *, log: Path, name: str) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "certctl", *args], cwd=REPO, stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "POD_NAME": f"{name}-0", "POD_NAMESPACE": "certctl"})


def _create_all(api: KubeStore, objects: Sequence[dict[str, Any]]) -> None:
    with concurrent.futures.ThreadPoolExecutor(CREATE_THREADS) as pool:
        for done in pool.map(lambda obj: api.create(obj=obj), objects):
            del done


# --- 1. issuance ------------------------------------------------------------------------


def issuance(*, plane: ControlPlane, api: KubeStore, pebble: PebbleServer, count: int,
             https_port: int, pids: Mapping[str, int]) -> dict[str, Any]:
    """Issue `count` certificates at once; `pids` are the processes whose CPU time the
    issuance is charged with (the machine is shared, so CPU seconds vary less than the
    wall time)."""
    hosts = [f"b8-{i}.example.test" for i in range(count)]
    ingresses = [annotated_ingress(f"b8-{i}", host, namespace=NAMESPACE, issuer=ISSUER)
                 for i, host in enumerate(hosts)]
    context = verified_context(pebble.issuance_roots_pem())
    mark = plane.audit.mark()
    cpu_before = {name: b6.cpu_seconds(pid) for name, pid in pids.items()}
    started = time.monotonic()
    _create_all(api, ingresses)
    created = time.monotonic() - started
    waiting = set(hosts)
    while waiting:
        if time.monotonic() - started > 600:
            raise RuntimeError(f"{len(waiting)} of {count} hosts not served after 600 s")
        secrets = {s["metadata"]["name"] for s in api.list(kind="Secret", namespace=NAMESPACE)}
        for host in sorted(waiting):
            if f"{host.split('.')[0]}-tls" in secrets and b1.served_and_verified(
                    port=https_port, host=host, context=context):
                waiting.discard(host)
        time.sleep(0.2)
    seconds = time.monotonic() - started
    cpu = {name: b6.cpu_seconds(pid) - cpu_before[name] for name, pid in pids.items()}
    deadline = time.monotonic() + 120
    while api.list(kind="Challenge", namespace=NAMESPACE) and time.monotonic() < deadline:
        time.sleep(0.5)
    time.sleep(2.0)  # the last requests reach the audit log
    events = [e for e in plane.audit.events(since=mark)
              if e.user in (CONTROLLER_USER, DATA_PLANE_USER)]
    return {"seconds": seconds, "created": created, "events": events, "count": count,
            "cpu": cpu}


def _request_rows(events: list[AuditEvent], count: int) -> list[tuple[str, str]]:
    rows = []
    for user, label in ((CONTROLLER_USER, "controller"), (DATA_PLANE_USER, "data plane")):
        mine = [e for e in events if e.user == user]
        leases = [e for e in mine if e.resource == "leases"]
        writes = [e for e in mine if e.is_write and e.resource != "leases"]
        events_written = [e for e in writes if e.resource == "events"]
        reads = [e for e in mine if not e.is_write and e.resource != "leases"]
        rows.append((f"{label}: requests per certificate (without leases)",
                     f"{(len(mine) - len(leases)) / count:.1f} ({len(reads) / count:.1f} reads, "
                     f"{len(writes) / count:.1f} writes of which {len(events_written) / count:.1f}"
                     f" Events; {len(leases)} lease requests in all)"))
        for what, these in (("writes", writes), ("reads", reads)):
            by_kind = collections.Counter(
                f"{e.verb} {e.resource}{'/' + e.subresource if e.subresource else ''}"
                f"{' (' + str(e.code) + ')' if e.code >= 400 else ''}" for e in these)
            if by_kind:
                rows.append((f"{label}: {what} per certificate, by kind", ", ".join(
                    f"{kind} {n / count:.2f}" for kind, n in sorted(by_kind.items()))))
    return rows


def _writes_per_certificate(events: list[AuditEvent], count: int) -> float:
    return sum(1 for e in events if e.is_write and e.resource != "leases") / count


# --- 2. a replica starting against many Ingresses ------------------------------------


def _local_ca() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "b8 local CA")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return key, cert


def _leaf_secret(*, name: str, host: str, ca_key: ec.EllipticCurvePrivateKey,
                 ca: x509.Certificate) -> dict[str, Any]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, host)]))
            .issuer_name(ca.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=20))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return {"apiVersion": "v1", "kind": "Secret", "type": tls_secret.SECRET_TYPE,
            "metadata": {"name": name, "namespace": NAMESPACE},
            "data": tls_secret.build_tls_secret_data(
                chain_pem=cert.public_bytes(serialization.Encoding.PEM), key_pem=key_pem,
                ca_pem=None)}


def _plain_ingress(i: int, *, path: str = "/") -> dict[str, Any]:
    host = f"r{i}.example.test"
    return {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": {"name": f"r{i}", "namespace": NAMESPACE},
            "spec": {"ingressClassName": "certctl",
                     "tls": [{"hosts": [host], "secretName": f"r{i}-tls"}],
                     "rules": [{"host": host, "http": {"paths": [{
                         "path": path, "pathType": "Prefix",
                         "backend": {"service": {"name": "nowhere", "port": {"number": 80}}}}]}}]}}


def _unverified_context() -> ssl.SSLContext:
    """A client context for the edits' polls, made once: `ssl.create_default_context` loads
    the system's CA bundle, 10-90 ms on this machine, which a poll made per try added to
    every edit's measured latency."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _status_of(*, port: int, host: str, path: str, context: ssl.SSLContext) -> int:
    """The status of a GET over TLS to the replica (503: routed to a Service with no
    endpoints; 404: no route)."""
    with socket.create_connection(("127.0.0.1", port), timeout=2) as raw, \
            context.wrap_socket(raw, server_hostname=host) as tls:
        tls.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        head = tls.recv(64)
    return int(head.split(b" ", 2)[1])


@contextlib.contextmanager
def _replica(args: Sequence[str], *, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    process = _spawn(args, log=log, name="certctl-dataplane-b")
    try:
        yield process
    finally:
        b6.stop(process)


def _settled(pids: Sequence[int], *, timeout: float = 600.0) -> float:
    """Seconds until `pids` together use under QUIET_CPU of a core over QUIET_WINDOW."""
    started = time.monotonic()
    before = sum(b6.cpu_seconds(pid) for pid in pids)
    while time.monotonic() - started < timeout:
        time.sleep(QUIET_WINDOW)
        now = sum(b6.cpu_seconds(pid) for pid in pids)
        if now - before < QUIET_CPU * QUIET_WINDOW:
            return time.monotonic() - started
        before = now
    raise RuntimeError(f"certctl's processes still busy after {timeout:.0f} s")


def replica_start(*, api: KubeStore, count: int, edits: int, args: list[str],
                  admin_port: int, https_port: int, log: Path,
                  running: Sequence[int]) -> dict[str, Any]:
    ca_key, ca = _local_ca()
    secrets = [_leaf_secret(name=f"r{i}-tls", host=f"r{i}.example.test", ca_key=ca_key, ca=ca)
               for i in range(count)]
    created = time.monotonic()
    _create_all(api, secrets)
    _create_all(api, [_plain_ingress(i) for i in range(count)])
    # In a cluster the replica has a node of its own; here it shares two cores with the
    # controller and the first data plane, which first take in the objects just created.
    settled = _settled(running) + (time.monotonic() - created)
    started = time.monotonic()
    with _replica(args, log=log) as process:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the replica exited:\n{log.read_text()[-3000:]}")
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"http://127.0.0.1:{admin_port}/readyz",
                                timeout=1).status_code == 200:
                    break
            if time.monotonic() - started > 300:
                raise RuntimeError("the replica was not ready after 300 s")
            time.sleep(0.02)
        ready = time.monotonic() - started
        rss = b6.memory_mb(process.pid)[0]
        last = f"r{count - 1}.example.test"
        served = b1.served_and_verified(port=https_port, host=last, context=_ca_context(ca))
        edit_ms = []
        client = _unverified_context()
        for n in range(edits):
            i = (n * 7919) % count
            host, path = f"r{i}.example.test", f"/edited-{n}"
            current = api.get(kind="Ingress", namespace=NAMESPACE, name=f"r{i}")
            assert current is not None
            current["spec"]["rules"][0]["http"]["paths"][0]["path"] = path
            api.replace(obj=current)
            written = time.monotonic()
            while _status_of(port=https_port, host=host, path=path, context=client) == 404:
                if time.monotonic() - written > 30:
                    raise RuntimeError(f"edit {n} not routed after 30 s")
            edit_ms.append((time.monotonic() - written) * 1000)
        peak = b6.memory_mb(process.pid)[1]
    return {"ready": ready, "rss": rss, "peak": peak, "served_last": served,
            "edit_ms": edit_ms, "count": count, "settled": settled}


def _ca_context(ca: x509.Certificate) -> ssl.SSLContext:
    return verified_context(ca.public_bytes(serialization.Encoding.PEM))


# --- the run ------------------------------------------------------------------------------


def _median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.b8_cluster", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ingresses", type=int, default=1000)
    parser.add_argument("--replica-ingresses", type=int, default=10000,
                        help="Ingresses + Secrets a second data-plane replica starts against "
                        "(0: skip)")
    parser.add_argument("--edits", type=int, default=5)
    parser.add_argument("--write-results", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)

    work = workdir_module.create(prefix="certctl-b8-")
    started_at = datetime.datetime.now(datetime.UTC)
    ok = True
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(workdir_module.remove_unless_kept, work, keep=args.keep)
        plane = ControlPlane.start(work / "plane")
        cleanup.callback(plane.stop)
        rendered, kubeconfigs = apply_manifests(plane, directory=work)
        deployments = {d["metadata"]["name"]: d for d in yaml.safe_load_all(rendered)
                       if d and d["kind"] == "Deployment"}
        pebble = PebbleServer.start(tmp_path=work, http_port=free_port(), build="current",
                                    env={"PEBBLE_AUTHZREUSE": "0", "PEBBLE_WFE_NONCEREJECT": "0"})
        cleanup.callback(pebble.stop)
        https_port = free_port()
        commands = {
            "certctl-controller": deployment_args(
                deployments["certctl-controller"],
                kubeconfig=str(kubeconfigs["certctl-controller"]),
                self_check_address="127.0.0.1", self_check_port=str(pebble.http_port),
                metrics_address="127.0.0.1", metrics_port=str(free_port())),
            "certctl-dataplane": deployment_args(
                deployments["certctl-dataplane"],
                kubeconfig=str(kubeconfigs["certctl-dataplane"]),
                listen_address="127.0.0.1", http_port=str(pebble.http_port),
                https_port=str(https_port), metrics_address="127.0.0.1",
                metrics_port=str(free_port())),
        }
        processes = {}
        for name, command in commands.items():
            processes[name] = _spawn(command, log=work / f"{name}.log", name=name)
            cleanup.callback(b6.stop, processes[name])
        api = admin_store(plane)
        cleanup.callback(api.close)
        api.create(obj=cluster_issuer(pebble, name=ISSUER, api_version="certctl.io/v1"))
        deadline = time.monotonic() + 60
        while not issuer_ready(api, ISSUER):
            if time.monotonic() > deadline:
                raise RuntimeError("the ClusterIssuer is not Ready after 60 s")
            time.sleep(0.2)

        rows: list[tuple[str, str]] = []
        checks: list[str] = []
        if args.ingresses:
            assert plane.apiserver is not None and plane.etcd is not None
            found = issuance(plane=plane, api=api, pebble=pebble, count=args.ingresses,
                             https_port=https_port, pids={
                                 **{name: p.pid for name, p in processes.items()},
                                 "kube-apiserver": plane.apiserver.pid,
                                 "etcd": plane.etcd.pid})
            writes = _writes_per_certificate(found["events"], args.ingresses)
            rows.append((f"{args.ingresses} annotated Ingresses to served certificates",
                         f"{found['seconds']:.1f} s (target <= {TARGET_SECONDS:.0f} s; the "
                         f"creates took {found['created']:.1f} s)"))
            rows.append(("writes per certificate (controller + data plane, without leases)",
                         f"{writes:.2f} (target <= {TARGET_WRITES:.0f})"))
            rows.append(("CPU until served, s (ms per certificate)", ", ".join(
                f"{name} {seconds:.1f} ({seconds / args.ingresses * 1000:.0f})"
                for name, seconds in found["cpu"].items())))
            rows += _request_rows(found["events"], args.ingresses)
            for name, process in processes.items():
                rows.append((f"{name} peak RSS (VmHWM, with the processes it started)",
                             f"{b6.memory_mb(process.pid)[1]:.0f} MB"))
            ok &= found["seconds"] <= TARGET_SECONDS
            checks.append(f"ok: every one of the {args.ingresses} hosts served a verified chain")
        if args.replica_ingresses:
            admin_port, replica_https = free_port(), free_port()
            replica_args = deployment_args(
                deployments["certctl-dataplane"], kubeconfig=str(kubeconfigs["certctl-dataplane"]),
                listen_address="127.0.0.1", http_port=str(free_port()),
                https_port=str(replica_https), metrics_address="127.0.0.1",
                metrics_port=str(admin_port))
            found = replica_start(api=api, count=args.replica_ingresses, edits=args.edits,
                                  args=replica_args, admin_port=admin_port,
                                  https_port=replica_https, log=work / "replica.log",
                                  running=[p.pid for p in processes.values()])
            n = found["count"]
            rows.append((f"the running controller and data plane, {n} Ingresses + {n} Secrets "
                         "created: from the first create until both are quiet",
                         f"{found['settled']:.1f} s (the replica starts then)"))
            rows.append((f"replica start, {n} Ingresses + Secrets: spawn to /readyz 200",
                         f"{found['ready']:.1f} s (target <= {TARGET_READY_SECONDS:.0f} s)"))
            rows.append(("replica RSS when ready / peak after the edits",
                         f"{found['rss']:.0f} MB / {found['peak']:.0f} MB (target <= "
                         f"{TARGET_READY_RSS_MB:.0f} MB)"))
            if found["edit_ms"]:
                rows.append((f"Ingress update answered -> routed by the replica, median of "
                             f"{len(found['edit_ms'])} (min-max)",
                             f"{_median(found['edit_ms']):.0f} ms ({min(found['edit_ms']):.0f}-"
                             f"{max(found['edit_ms']):.0f}; target <= {TARGET_EDIT_MS:.0f} ms "
                             "after the watch event)"))
            ok &= found["served_last"]
            checks.append(("ok" if found["served_last"] else "FAILED")
                          + f": the last of the {n} names served its Secret when ready")

    table = "\n".join(["| measurement | value |", "|---|---|",
                       *(f"| {k} | {v} |" for k, v in rows)])
    section = (
        "## B8: the cluster, on a real API server (issuance, API requests, replica start-up)\n\n"
        "Command (from the repo root): "
        f"`{reporting.command_line(module='bench.b8_cluster', argv=argv)}`  \n"
        f"Date: {started_at:%Y-%m-%d %H:%M} UTC. kube-apiserver, etcd and kube-controller-manager "
        "from tests/controlplane.py; `certctl controller` and `certctl dataplane` as processes "
        "with manifests/' Deployment args and ServiceAccount tokens; one current Pebble "
        "(`PEBBLE_VA_NOSLEEP=1 PEBBLE_AUTHZREUSE=0 PEBBLE_WFE_NONCEREJECT=0`), HTTP-01. "
        "Requests counted from kube-apiserver's audit log.\n\n"
        f"{table}\n\nChecks:\n\n" + "\n".join(f"- {c}" for c in checks) + "\n\nMachine:\n\n"
        + reporting.machine_table(reporting.machine_rows(
            extra=[("certctl", f"git {reporting.git_describe()}")])) + "\n")
    print(section)
    if args.write_results:
        reporting.write_results(name="b8_cluster", section=section)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
