"""A real Kubernetes control plane for tests, as controller-runtime's envtest runs one.

etcd, kube-apiserver and kube-controller-manager (garbage collector and
namespace controller only), built from their Go modules by
scripts/testservers/build.sh and found through `tests.testservers`, run on
loopback from a temporary directory:

- a CA generated per run signs the API server's serving certificate and two
  client certificates in group `system:masters` (the admin kubeconfig the
  tests and kubectl use, and the controller-manager's);
- a service-account signing key, so the TokenRequest API (served by
  kube-apiserver itself: no serviceaccount-token controller needed) mints
  tokens for the ServiceAccounts of manifests/ (`ControlPlane.token`);
- authorization is RBAC only: a client without a binding gets 403, as in a
  cluster; the ServiceAccount admission plugin stays on, since the
  controller-manager runs (it only concerns Pods, of which there are none);
- an audit log (`ControlPlane.audit`): every request with its user agent,
  user, verb, object and answer, and the bodies of writes to Ingresses;
- certctl's CRDs (crds/) and the Gateway API's (GATEWAY_API_CRDS) installed
  and Established, the namespace `certctl` and the IngressClass `certctl` of
  manifests/, before the controller-manager starts, so its garbage collector
  knows our kinds from its first discovery.

There is no kubelet, scheduler or Pod: tests write EndpointSlices themselves.
Start-up takes about 5 s on two busy cores (reported at the end of the
session, with the other measurements the cluster tests make: `report`); the
garbage collector syncs a few seconds later, in the background.

The `control_plane` fixture starts it once per pytest session, and only
when a test asks for it (test modules load this file with
`pytest_plugins = ["tests.controlplane"]`, and import it themselves only for
type checking, so that pytest's import comes first and rewrites its asserts);
it is stopped when the session
ends (SIGTERM, then SIGKILL), and its processes die with the test process
even if that is killed (PR_SET_PDEATHSIG). Nothing here depends on pytest
but the fixtures at the end.
"""

from __future__ import annotations

import ctypes
import datetime
import ipaddress
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests import testservers
from tests.pebble import free_port

REPO = Path(__file__).resolve().parent.parent
CERTCTL_CRDS = ("clusterissuers", "issuers", "certificates", "orders", "challenges")
# The Gateway API kinds certctl serves, from the standard channel's CRDs (v1.5.1, cached by
# scripts/testservers/build.sh), installed as `kubectl apply --server-side` would.
GATEWAY_API_CRDS = ("gatewayclasses", "gateways", "httproutes", "grpcroutes", "listenersets",
                    "referencegrants")
SERVICE_CLUSTER_IP_RANGE = "10.0.0.0/24"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"

# Metadata for every request (who, what, the answer's code); the bodies of writes to
# Ingresses, to see what certctl changed in them. (Not worth it for custom resources: their
# bodies are logged as decoded, after pruning, so they cannot show what was pruned.)
AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [
        {"level": "RequestResponse", "verbs": ["create", "update", "patch"],
         "resources": [{"group": "networking.k8s.io", "resources": ["ingresses"]},
                       {"group": "certctl.io", "resources": ["orders", "orders/status",
                                                             "challenges/status",
                                                             "certificates/status"]}]},
        {"level": "Metadata"},
    ],
}


# --- PKI ---------------------------------------------------------------------------


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@dataclass(frozen=True)
class _Pki:
    ca_pem: bytes
    serving_pem: bytes
    serving_key_pem: bytes
    admin_pem: bytes
    admin_key_pem: bytes
    manager_pem: bytes
    manager_key_pem: bytes
    service_account_key_pem: bytes
    service_account_public_pem: bytes


def _generate_pki() -> _Pki:
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "certctl test cluster CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(hours=1))
          .not_valid_after(now + datetime.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(
              digital_signature=True, content_commitment=False, key_encipherment=False,
              data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
              encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))

    def leaf(subject: x509.Name, *, server: bool) -> tuple[bytes, bytes]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(ca_name)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(hours=1))
                   .not_valid_after(now + datetime.timedelta(days=2))
                   .add_extension(x509.ExtendedKeyUsage([
                       ExtendedKeyUsageOID.SERVER_AUTH if server
                       else ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False))
        if server:
            builder = builder.add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                x509.DNSName("kubernetes.default.svc")]), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        return cert.public_bytes(serialization.Encoding.PEM), _pem_key(key)

    def client(common_name: str) -> tuple[bytes, bytes]:
        return leaf(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:masters"),
                               x509.NameAttribute(NameOID.COMMON_NAME, common_name)]),
                    server=False)

    serving = leaf(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]),
                   server=True)
    admin = client("certctl-test-admin")
    manager = client("system:kube-controller-manager")
    sa_key = ec.generate_private_key(ec.SECP256R1())
    return _Pki(
        ca_pem=ca.public_bytes(serialization.Encoding.PEM),
        serving_pem=serving[0], serving_key_pem=serving[1],
        admin_pem=admin[0], admin_key_pem=admin[1],
        manager_pem=manager[0], manager_key_pem=manager[1],
        service_account_key_pem=_pem_key(sa_key),
        service_account_public_pem=sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
    )


# --- processes ---------------------------------------------------------------------


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child, between fork and exec
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _spawn(argv: list[str], *, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)


def _stop(process: subprocess.Popen[bytes] | None, *, grace: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds; waits until it is gone."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _wait(check: Any, *, timeout: float, what: str, process: subprocess.Popen[bytes],
          log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what}: exited with {process.returncode}\n{_tail(log)}")
        try:
            if check():
                return
        except (requests.RequestException, OSError):
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{what}: not ready within {timeout:.0f} s\n{_tail(log)}")


# --- the audit log -----------------------------------------------------------------


@dataclass(frozen=True)
class AuditEvent:
    raw: dict[str, Any]

    @property
    def user_agent(self) -> str:
        return str(self.raw.get("userAgent") or "")

    @property
    def user(self) -> str:
        return str((self.raw.get("user") or {}).get("username") or "")

    @property
    def verb(self) -> str:
        return str(self.raw.get("verb") or "")

    @property
    def code(self) -> int:
        return int((self.raw.get("responseStatus") or {}).get("code") or 0)

    @property
    def resource(self) -> str:
        return str((self.raw.get("objectRef") or {}).get("resource") or "")

    @property
    def api_group(self) -> str:
        return str((self.raw.get("objectRef") or {}).get("apiGroup") or "")

    @property
    def subresource(self) -> str:
        return str((self.raw.get("objectRef") or {}).get("subresource") or "")

    @property
    def namespace(self) -> str | None:
        namespace = (self.raw.get("objectRef") or {}).get("namespace")
        return str(namespace) if namespace else None

    @property
    def name(self) -> str:
        return str((self.raw.get("objectRef") or {}).get("name") or "")

    @property
    def uri(self) -> str:
        return str(self.raw.get("requestURI") or "")

    @property
    def is_write(self) -> bool:
        return self.verb in ("create", "update", "patch", "delete", "deletecollection")

    def __str__(self) -> str:
        return (f"{self.user_agent} ({self.user}) {self.verb} {self.uri} -> {self.code}")


class AuditLog:
    """kube-apiserver's audit log: one JSON event per line, once a request is answered."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def mark(self) -> int:
        """Where the log ends now: `events(since=...)` returns what comes after."""
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def events(self, *, since: int = 0, until: int | None = None) -> list[AuditEvent]:
        """Answered requests (stage ResponseComplete, or Panic) logged between two marks."""
        try:
            with self.path.open("rb") as log:
                log.seek(since)
                data = log.read() if until is None else log.read(until - since)
        except FileNotFoundError:
            return []
        events = []
        for line in data.splitlines():
            if not line.strip():
                continue
            try:
                raw = json.loads(line)
            except ValueError:  # a line still being written
                continue
            if raw.get("stage") in ("ResponseComplete", "Panic"):
                events.append(AuditEvent(raw))
        return events


# --- the control plane -------------------------------------------------------------


@dataclass
class ControlPlane:
    directory: Path
    etcd_port: int = field(default_factory=free_port)
    etcd_peer_port: int = field(default_factory=free_port)
    apiserver_port: int = field(default_factory=free_port)
    startup_seconds: dict[str, float] = field(default_factory=dict)
    etcd: subprocess.Popen[bytes] | None = None
    apiserver: subprocess.Popen[bytes] | None = None
    controller_manager: subprocess.Popen[bytes] | None = None
    _binaries: dict[str, Path] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.apiserver_port}"

    @property
    def ca_path(self) -> Path:
        return self.directory / "pki" / "ca.crt"

    @property
    def kubeconfig(self) -> Path:
        """The admin's kubeconfig (group system:masters, by client certificate)."""
        return self.directory / "admin.kubeconfig"

    @property
    def audit(self) -> AuditLog:
        return AuditLog(self.directory / "audit.log")

    # --- start and stop ---

    @classmethod
    def start(cls, directory: Path) -> ControlPlane:
        plane = cls(directory=directory)
        try:
            plane._start()
        except BaseException:
            plane.stop()
            raise
        return plane

    def _start(self) -> None:
        started = time.monotonic()
        self._binaries = binaries = {
            "etcd": testservers.binary("etcd", "etcd"),
            "kube-apiserver": testservers.binary("kubernetes", "kube-apiserver"),
            "kube-controller-manager": testservers.binary("kubernetes",
                                                          "kube-controller-manager"),
            "kubectl": testservers.binary("kubernetes", "kubectl"),
        }
        pki_dir = self.directory / "pki"
        pki_dir.mkdir(parents=True, exist_ok=True)
        pki = _generate_pki()
        files = {
            "ca.crt": pki.ca_pem, "apiserver.crt": pki.serving_pem,
            "apiserver.key": pki.serving_key_pem, "admin.crt": pki.admin_pem,
            "admin.key": pki.admin_key_pem, "manager.crt": pki.manager_pem,
            "manager.key": pki.manager_key_pem, "sa.key": pki.service_account_key_pem,
            "sa.pub": pki.service_account_public_pem,
        }
        for name, content in files.items():
            (pki_dir / name).write_bytes(content)
            (pki_dir / name).chmod(0o600)
        (self.directory / "audit-policy.yaml").write_text(yaml.safe_dump(AUDIT_POLICY))
        self._write_kubeconfig(self.kubeconfig, user={
            "client-certificate": str(pki_dir / "admin.crt"),
            "client-key": str(pki_dir / "admin.key")})
        self._write_kubeconfig(self.directory / "controller-manager.kubeconfig", user={
            "client-certificate": str(pki_dir / "manager.crt"),
            "client-key": str(pki_dir / "manager.key")})
        self.startup_seconds["pki"] = time.monotonic() - started

        # etcd and kube-apiserver start together: the API server retries etcd until it answers.
        self._start_etcd()
        self._start_apiserver()
        self._wait_apiserver(timeout=90)
        self.startup_seconds["apiserver ready"] = time.monotonic() - started

        self.kubectl("apply", "-k", str(REPO / "crds"))
        self.kubectl("apply", "-f", str(REPO / "manifests" / "namespace.yaml"),
                     "-f", str(REPO / "manifests" / "ingressclass.yaml"))
        gateway_crds = testservers.directory("gateway-api") / "crds"
        self.kubectl("apply", "--server-side", *(
            f"-f={gateway_crds / f'gateway.networking.k8s.io_{plural}.yaml'}"
            for plural in GATEWAY_API_CRDS))
        self.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                     *(f"crd/{plural}.certctl.io" for plural in CERTCTL_CRDS),
                     *(f"crd/{plural}.gateway.networking.k8s.io" for plural in GATEWAY_API_CRDS))
        self.startup_seconds["CRDs established"] = time.monotonic() - started

        # Not waited for: only the tests relying on it do (wait_garbage_collector).
        self.controller_manager = _spawn([
            str(binaries["kube-controller-manager"]),
            f"--kubeconfig={self.directory / 'controller-manager.kubeconfig'}",
            "--controllers=garbagecollector,namespace",
            "--leader-elect=false",
            "--secure-port=0",
            "--use-service-account-credentials=false",
            "--concurrent-gc-syncs=5",
            "--concurrent-namespace-syncs=2",
            "--v=1",
        ], log=self.directory / "kube-controller-manager.log")

    def wait_garbage_collector(self, *, timeout: float = 60.0) -> None:
        """Until the controller-manager's garbage collector watches every kind (it starts in
        the background; only the tests relying on it wait). It serves no port to ask, so
        its log says."""
        log = self.directory / "kube-controller-manager.log"
        assert self.controller_manager is not None
        _wait(lambda: "all resource monitors have synced" in log.read_text(errors="replace"),
              timeout=timeout, what="kube-controller-manager", process=self.controller_manager,
              log=log)

    def _write_kubeconfig(self, path: Path, *, user: dict[str, str]) -> None:
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "test",
            "clusters": [{"name": "test", "cluster": {
                "server": self.url, "certificate-authority": str(self.ca_path)}}],
            "users": [{"name": "test", "user": user}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}],
        }))
        path.chmod(0o600)

    def _start_etcd(self) -> None:
        data = self.directory / "etcd"
        data.mkdir(exist_ok=True)
        client = f"http://127.0.0.1:{self.etcd_port}"
        peer = f"http://127.0.0.1:{self.etcd_peer_port}"
        self.etcd = _spawn([
            str(self._binaries["etcd"]),
            f"--data-dir={data}",
            "--name=default",
            f"--listen-client-urls={client}", f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}", f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=default={peer}",
            "--unsafe-no-fsync",  # as envtest: a test cluster need not survive a power cut
            "--log-level=warn",
        ], log=self.directory / "etcd.log")

    def _start_apiserver(self) -> None:
        pki = self.directory / "pki"
        self.apiserver = _spawn([
            str(self._binaries["kube-apiserver"]),
            f"--etcd-servers=http://127.0.0.1:{self.etcd_port}",
            f"--cert-dir={pki}",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            f"--secure-port={self.apiserver_port}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
            "--authorization-mode=RBAC",
            f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            f"--audit-policy-file={self.directory / 'audit-policy.yaml'}",
            f"--audit-log-path={self.directory / 'audit.log'}",
            "--audit-log-maxsize=0",
            "--allow-privileged=true",
            # On SIGTERM, end open watches (clients see their streams close) and exit;
            # without it, it waits for them until its shutdown timeout (a minute).
            "--shutdown-watch-termination-grace-period=2s",
            "--v=1",
        ], log=self.directory / "kube-apiserver.log")

    def _wait_apiserver(self, *, timeout: float) -> None:
        assert self.apiserver is not None
        _wait(lambda: self.get("/readyz").status_code == 200, timeout=timeout,
              what="kube-apiserver", process=self.apiserver,
              log=self.directory / "kube-apiserver.log")

    def restart_apiserver(self) -> float:
        """Stop kube-apiserver (SIGTERM: its connections close) and start it again on the
        same port and etcd; the seconds until it was ready again."""
        started = time.monotonic()
        _stop(self.apiserver)
        self.startup_seconds["last apiserver stop"] = time.monotonic() - started
        self._start_apiserver()
        self._wait_apiserver(timeout=90)
        return time.monotonic() - started

    def stop(self) -> None:
        for process in (self.controller_manager, self.apiserver, self.etcd):
            _stop(process)

    def report(self, line: str) -> None:
        """A measurement, shown at the end of the pytest session (never asserted)."""
        report(line)

    def processes(self) -> list[subprocess.Popen[bytes]]:
        return [p for p in (self.etcd, self.apiserver, self.controller_manager) if p is not None]

    # --- clients ---

    def get(self, path: str) -> requests.Response:
        """A GET as the admin, e.g. `/readyz` or `/metrics`."""
        pki = self.directory / "pki"
        return requests.get(self.url + path, verify=str(self.ca_path), timeout=10,
                            cert=(str(pki / "admin.crt"), str(pki / "admin.key")))

    def kubectl(self, *args: str, input: str | None = None, check: bool = True,
                kubeconfig: Path | None = None) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(self._binaries["kubectl"]), f"--kubeconfig={kubeconfig or self.kubeconfig}",
             *args], input=input, capture_output=True, text=True, timeout=120)
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({result.returncode}):\n"
                                 f"{result.stderr}{result.stdout}")
        return result

    def configuration(self, kubeconfig: Path | None = None) -> Any:
        """A `kubernetes.client.Configuration`, loaded from a kubeconfig as `certctl
        controller --kubeconfig` loads it."""
        from certctl.store.kube import load_configuration

        return load_configuration(kubeconfig=str(kubeconfig or self.kubeconfig))

    def token(self, *, namespace: str, service_account: str, seconds: int = 3600) -> str:
        """A token of the ServiceAccount, from the TokenRequest API (as kubelet projects)."""
        result = self.kubectl("create", "token", service_account, "-n", namespace,
                              f"--duration={seconds}s")
        return result.stdout.strip()

    def token_kubeconfig(self, path: Path, *, token: str) -> Path:
        self._write_kubeconfig(path, user={"token": token})
        return path


# --- pytest fixtures and the session's measurements ---------------------------------

_REPORTED: list[str] = []


def report(line: str) -> None:
    """A measurement (never asserted) shown at the end of the session, and printed now."""
    _REPORTED.append(line)
    print(f"\n{line}", file=sys.stderr)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _REPORTED:
        terminalreporter.section("real Kubernetes control plane: measurements")
        for line in _REPORTED:
            terminalreporter.write_line(line)



@pytest.fixture(scope="session")
def control_plane() -> Iterator[ControlPlane]:
    """etcd + kube-apiserver + kube-controller-manager, once per session, on first use."""
    directory = Path(tempfile.mkdtemp(prefix="certctl-controlplane-"))
    started = time.monotonic()
    try:
        plane = ControlPlane.start(directory)  # stops what it started if it fails
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise
    seconds = time.monotonic() - started
    steps = ", ".join(f"{step} {at:.1f} s" for step, at in plane.startup_seconds.items())
    report(f"control plane started in {seconds:.1f} s ({steps})")
    try:
        yield plane
    finally:
        plane.stop()
        left = [p.pid for p in plane.processes() if p.poll() is None]
        if not left:
            shutil.rmtree(directory, ignore_errors=True)
        else:  # kept for a post-mortem; should never happen
            print(f"control plane processes still running: {left}", file=sys.stderr)


__all__ = ["AuditEvent", "AuditLog", "ControlPlane", "control_plane", "report"]
