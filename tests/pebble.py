"""Pebble (Let's Encrypt's ACME test server) on loopback, for tests and benchmarks.

`PebbleServer.start()` runs `pebble-challtestsrv` as Pebble's DNS server (every
A query answers 127.0.0.1, AAAA queries get nothing, so Pebble's HTTP-01
validator always connects to 127.0.0.1:<http_port>) and Pebble itself with a
freshly generated listener certificate. Nothing listens on `http_port`: the
caller binds it (certctl's data plane, or a test's own responder).

Two Pebbles (`build=`); the ACME suites run against both (`any_pebble` and
`pebble_build` in tests/conftest.py):

- ``"debian"``: Debian's Pebble 2.4 (/usr/bin/pebble), what `demo/run.sh`
  installs; no profiles, no ARI, no User-Agent check.
- ``"current"``: the current release, built from its Go module by
  scripts/testservers/build.sh and located through `tests.testservers`. It
  rejects requests without a User-Agent (RFC 8555 section 6.1), advertises
  profiles (`meta.profiles`) and picks one at random for an order that names
  none, reads a certificate's lifetime from its profile only (the old
  `certificateValidityPeriod` key is ignored), offers ARI (`renewalInfo`),
  asks its `-dnsserver` over TCP, and its challtestsrv has renamed and added
  listeners (`-dnsserver`, `-doh`).

Benchmarks import this module too (`from tests.pebble import PebbleServer`), so
it depends on nothing from pytest.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal

import requests

from tests import testservers
from tests.testca import TestCA

PebbleBuild = Literal["debian", "current"]
# Both, in the order parametrized tests run them.
PEBBLE_BUILDS: tuple[PebbleBuild, ...] = ("debian", "current")
# Debian's Pebble 2.4; the current one lives where tests.testservers builds it.
PEBBLE_BIN = "/usr/bin/pebble"
CHALLTESTSRV_BIN = "/usr/bin/pebble-challtestsrv"


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago, never one this process
    was given before.

    The port is released before returning, so another process could grab it first. It
    is taken from below the kernel's ephemeral range (ip_local_port_range), where no
    outgoing connection is given a local port: a port bind(0) had handed out once went
    to a connection to Pebble before certctl listened on it (bind: address already in
    use, in a clean-clone CI run). The kernel may also hand the same released port out
    twice in a row, so ports given out are remembered.
    """
    first, last = _LISTENING_PORTS
    while True:
        port = _ports.randrange(first, last)
        if port in _HANDED_OUT:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue  # something listens there
        _HANDED_OUT.add(port)
        return port


def _listening_ports() -> tuple[int, int]:
    """[first, last) for `free_port`: from 20000 up to the ephemeral range's start."""
    first = 20000
    try:
        ephemeral = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral = 32768  # Linux's default
    return first, max(ephemeral, first + 1000)


_LISTENING_PORTS = _listening_ports()
_ports = random.Random()


@dataclass(frozen=True, kw_only=True)
class PebbleProfile:
    """A certificate profile of the current Pebble (its JSON config's `profiles`).

    `validity_period` is in seconds (None: Pebble's 90 days, or the server's
    `certificate_validity_period`); `promote_common_name` puts the first name
    into the subject's Common Name, as Let's Encrypt's `classic` profile does
    and its `tlsserver` and `shortlived` profiles do not.
    """

    description: str
    validity_period: int | None = None
    promote_common_name: bool = False


# The profile the current Pebble has when its config names none, written out so that
# `certificate_validity_period` can go into it. One profile, so an order naming none
# gets it every time (Pebble picks among several at random).
DEFAULT_PROFILES: dict[str, PebbleProfile] = {
    "default": PebbleProfile(description="The default profile"),
}


@dataclass(frozen=True)
class _ListenerPki:
    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes


def _listener_pki() -> _ListenerPki:
    """A throwaway CA and a `localhost`/127.0.0.1 server cert for Pebble's listeners."""
    ca = TestCA(common_name="certctl test Pebble listener CA")
    issued = ca.issue("localhost", ips=("127.0.0.1",), days=7)
    return _ListenerPki(ca_pem=ca.pem, cert_pem=issued.leaf_pem, key_pem=issued.key_pem)


def stop_process(proc: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM, wait up to 10 s, then SIGKILL: never leave a child behind, even one that
    ignores SIGTERM (the test servers here, the benchmarks' processes)."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def _log_tail(path: Path, *, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class PebbleServer:
    """A running Pebble + challtestsrv pair; build it with `PebbleServer.start()`.

    `restart()` restarts Pebble only, on the same ports and with the same
    listener certificate (so `ca_bundle_pem` stays valid), but Pebble forgets
    every account and order and generates a new issuance root: fetch
    `issuance_roots_pem()` again afterwards.
    """

    def __init__(
        self,
        *,
        workdir: Path,
        pki: _ListenerPki,
        http_port: int,
        acme_port: int,
        management_port: int,
        dns_port: int,
        challtestsrv_management_port: int,
        env: dict[str, str],
        build: PebbleBuild,
        dns_server: str | None = None,
    ) -> None:
        self.workdir = workdir
        self.build: PebbleBuild = build
        self.http_port = http_port
        self.acme_port = acme_port
        self.management_port = management_port
        self.dns_port = dns_port
        self.challtestsrv_management_port = challtestsrv_management_port
        self.ca_bundle_pem = pki.ca_pem
        self.ca_bundle_path = workdir / "listener-ca.pem"
        self._env = env
        # host:port Pebble resolves names with; None: its own challtestsrv.
        self.dns_server = dns_server
        self._pebble: subprocess.Popen[bytes] | None = None
        self._challtestsrv: subprocess.Popen[bytes] | None = None

    @classmethod
    def start(
        cls,
        *,
        tmp_path: Path,
        http_port: int,
        env: dict[str, str] | None = None,
        certificate_validity_period: int | None = None,
        startup_timeout: float = 15.0,
        dns_server: str | None = None,
        config: dict[str, object] | None = None,
        build: PebbleBuild = "debian",
        profiles: dict[str, PebbleProfile] | None = None,
    ) -> PebbleServer:
        """Start challtestsrv and Pebble and return once the ACME directory answers.

        `build` picks the Pebble (see the module docstring); Debian's is the
        default because benchmarks and the demo run it and it needs no build.
        `env` is added to Pebble's environment on top of `PEBBLE_VA_NOSLEEP=1`
        (e.g. `{"PEBBLE_WFE_NONCEREJECT": "50"}`); note Pebble's own defaults
        already reject 5 % of nonces and reuse 50 % of valid authorizations.
        `certificate_validity_period` is in seconds, for every profile of the
        current Pebble that does not set its own. `dns_server` (`host:port`,
        e.g. a BIND fixture for DNS-01) replaces challtestsrv as Pebble's DNS
        server, which is then not started. `config` is merged into Pebble's JSON
        config (e.g. `externalAccountBindingRequired` and `externalAccountMACKeys`).
        `profiles` (current Pebble only; `DEFAULT_PROFILES` if None) are the
        profiles its directory offers. Raises ValueError for `profiles` with
        Debian's Pebble (it would ignore them), RuntimeError with the tail of the
        process log if either process dies or never becomes ready.
        """
        workdir = tmp_path / "pebble"
        workdir.mkdir(parents=True, exist_ok=True)
        pki = _listener_pki()
        server = cls(
            workdir=workdir,
            pki=pki,
            http_port=http_port,
            acme_port=free_port(),
            management_port=free_port(),
            dns_port=free_port(),
            challtestsrv_management_port=free_port(),
            env={"PEBBLE_VA_NOSLEEP": "1", **(env or {})},
            build=build,
            dns_server=dns_server,
        )
        (workdir / "cert.pem").write_bytes(pki.cert_pem)
        key_path = workdir / "key.pem"
        key_path.touch(mode=0o600)
        key_path.write_bytes(pki.key_pem)
        server.ca_bundle_path.write_bytes(pki.ca_pem)
        settings: dict[str, object] = {
            "listenAddress": f"127.0.0.1:{server.acme_port}",
            "managementListenAddress": f"127.0.0.1:{server.management_port}",
            "certificate": str(workdir / "cert.pem"),
            "privateKey": str(key_path),
            "httpPort": http_port,
            "tlsPort": free_port(),
            "ocspResponderURL": "",
            "externalAccountBindingRequired": False,
        }
        settings.update(config or {})
        settings.update(_lifetime_settings(
            build=build, profiles=profiles,
            certificate_validity_period=certificate_validity_period))
        (workdir / "pebble-config.json").write_text(json.dumps({"pebble": settings}, indent=2))
        try:
            if dns_server is None:
                server._start_challtestsrv(startup_timeout=startup_timeout)
            server._start_pebble(startup_timeout=startup_timeout)
        except BaseException:
            server.stop()
            raise
        return server

    @property
    def pids(self) -> tuple[int, ...]:
        """The processes running now: Pebble and its challtestsrv (benchmarks read their CPU)."""
        return tuple(proc.pid for proc in (self._pebble, self._challtestsrv)
                     if proc is not None and proc.poll() is None)

    @property
    def directory_url(self) -> str:
        return f"https://127.0.0.1:{self.acme_port}/dir"

    @property
    def management_url(self) -> str:
        return f"https://127.0.0.1:{self.management_port}"

    def issuance_roots_pem(self, *, index: int = 0) -> bytes:
        """The root that signs issued chains; Pebble makes a new one at every (re)start.

        `index` > 0 selects an alternate root (env `PEBBLE_ALTERNATE_ROOTS`).
        """
        response = requests.get(
            f"{self.management_url}/roots/{index}", verify=str(self.ca_bundle_path), timeout=5
        )
        response.raise_for_status()
        return response.content

    def log_lines(self, containing: str) -> list[str]:
        """Lines of Pebble's log (all runs, restarts included) that contain `containing`.

        Pebble logs each request (`POST /order-plz -> calling handler()`), each
        validation (`authz <id> set VALID by completed challenge <id>`) and each
        issuance (`Issued certificate serial <hex> for order <id>`).
        """
        log_path = self.workdir / "pebble.log"
        text = log_path.read_text(errors="replace") if log_path.exists() else ""
        return [line for line in text.splitlines() if containing in line]

    def profiles(self) -> dict[str, str]:
        """The profiles the directory advertises (name -> description); none for Debian's."""
        response = requests.get(self.directory_url, verify=str(self.ca_bundle_path), timeout=5)
        response.raise_for_status()
        offered = response.json().get("meta", {}).get("profiles") or {}
        return {str(name): str(description) for name, description in offered.items()}

    def restart(self, *, startup_timeout: float = 15.0) -> None:
        stop_process(self._pebble)
        self._pebble = None
        self._start_pebble(startup_timeout=startup_timeout)

    def stop(self) -> None:
        """Stop both processes; safe to call twice and after a failed start."""
        try:
            stop_process(self._pebble)
        finally:
            self._pebble = None
            stop_process(self._challtestsrv)
            self._challtestsrv = None

    def __enter__(self) -> PebbleServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _start_challtestsrv(self, *, startup_timeout: float) -> None:
        log_path = self.workdir / "challtestsrv.log"
        dns_address = f"127.0.0.1:{self.dns_port}"
        # The current challtestsrv calls the DNS listener -dnsserver (2.4: -dns01) and
        # adds a DNS-over-HTTPS one on :8443 of every interface unless told not to.
        listeners = (["-dns01", dns_address] if self.build == "debian"
                     else ["-dnsserver", dns_address, "-doh", ""])
        with log_path.open("ab") as log:
            self._challtestsrv = subprocess.Popen(
                [
                    str(_challtestsrv_program(self.build)),
                    "-http01",
                    "",
                    "-https01",
                    "",
                    "-tlsalpn01",
                    "",
                    *listeners,
                    "-management",
                    f"127.0.0.1:{self.challtestsrv_management_port}",
                    "-defaultIPv6",
                    "",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        self._wait_until(
            proc=self._challtestsrv,
            name="pebble-challtestsrv",
            log_path=log_path,
            startup_timeout=startup_timeout,
            ready=lambda: _tcp_open(self.challtestsrv_management_port),
        )

    def _start_pebble(self, *, startup_timeout: float) -> None:
        log_path = self.workdir / "pebble.log"
        with log_path.open("ab") as log:
            self._pebble = subprocess.Popen(
                [
                    str(_pebble_program(self.build)),
                    "-config",
                    str(self.workdir / "pebble-config.json"),
                    "-dnsserver",
                    self.dns_server or f"127.0.0.1:{self.dns_port}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **self._env},
            )
        self._wait_until(
            proc=self._pebble,
            name="pebble",
            log_path=log_path,
            startup_timeout=startup_timeout,
            ready=self._directory_answers,
        )

    def _directory_answers(self) -> bool:
        try:
            response = requests.get(self.directory_url, verify=str(self.ca_bundle_path), timeout=1)
        except requests.RequestException:
            return False
        return response.status_code == 200

    @staticmethod
    def _wait_until(
        *,
        proc: subprocess.Popen[bytes] | None,
        name: str,
        log_path: Path,
        startup_timeout: float,
        ready: Callable[[], bool],
    ) -> None:
        assert proc is not None
        deadline = time.monotonic() + startup_timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{_log_tail(log_path)}")
            if ready():
                return
            time.sleep(0.02)
        raise RuntimeError(f"{name} not ready after {startup_timeout}s:\n{_log_tail(log_path)}")


def _tcp_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True
    return False


def _pebble_program(build: PebbleBuild) -> Path:
    return Path(PEBBLE_BIN) if build == "debian" else testservers.binary("pebble", "pebble")


def _challtestsrv_program(build: PebbleBuild) -> Path:
    if build == "debian":
        return Path(CHALLTESTSRV_BIN)
    return testservers.binary("pebble", "pebble-challtestsrv")


def _lifetime_settings(
    *, build: PebbleBuild, profiles: dict[str, PebbleProfile] | None,
    certificate_validity_period: int | None,
) -> dict[str, object]:
    """The config keys that set certificate lifetimes, in the form each build reads.

    Pebble 2.4 reads `certificateValidityPeriod` and knows no profiles; the
    current Pebble reads only each profile's `validityPeriod`.
    """
    if build == "debian":
        if profiles is not None:
            raise ValueError("Debian's Pebble 2.4 has no profiles: start build='current'")
        if certificate_validity_period is None:
            return {}
        return {"certificateValidityPeriod": certificate_validity_period}
    written: dict[str, dict[str, object]] = {}
    for name, profile in (profiles or DEFAULT_PROFILES).items():
        settings: dict[str, object] = {"description": profile.description,
                                       "promoteCommonName": profile.promote_common_name}
        validity_period = profile.validity_period or certificate_validity_period
        if validity_period is not None:
            settings["validityPeriod"] = validity_period
        written[name] = settings
    return {"profiles": written}
