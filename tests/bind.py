"""BIND9 (`named`) on loopback, for DNS-01 tests: the real authoritative server.

`BindServer.start()` writes a `named.conf` and one zone file per zone, runs
`named -g` (foreground, logging to stderr, here to `named.log`) on one
loopback address and port, and returns once the server answers an SOA query
for every zone. Each zone:

- has an SOA and an NS record naming `ns.<first zone>`, whose A record is the
  server's own address (so the zone's authoritative nameserver can be found
  through DNS, as certctl's propagation check does);
- answers A 127.0.0.1 for the apex and every name below it (`*`), so Pebble
  and the data plane tests can reach anything under it;
- accepts dynamic updates (RFC 2136) of TXT records, and only those, signed
  with the TSIG key `tsig_key_name` (`update-policy { grant ... zonesub TXT; }`).

`records` adds extra lines to the zone files (e.g. a CNAME delegating
`_acme-challenge` to another zone). Nothing here depends on pytest, so
benchmarks may use it too.
"""

from __future__ import annotations

import base64
import contextlib
import secrets
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import dns.exception
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.TXT
import dns.tsig
import dns.update

from tests.pebble import _log_tail, free_port, stop_process

NAMED_BIN = "/usr/sbin/named"
DEFAULT_ZONES = ("example.test",)


class BindServer:
    """A running `named`; build it with `BindServer.start()`, end it with `stop()`."""

    def __init__(
        self,
        *,
        workdir: Path,
        address: str,
        port: int,
        zones: Sequence[str],
        tsig_key_name: str,
        tsig_algorithm: str,
        tsig_secret: str,
    ) -> None:
        self.workdir = workdir
        self.address = address
        self.port = port
        self.zones = tuple(zones)
        self.tsig_key_name = tsig_key_name
        self.tsig_algorithm = tsig_algorithm
        self.tsig_secret = tsig_secret
        self._process: subprocess.Popen[bytes] | None = None

    @classmethod
    def start(
        cls,
        *,
        tmp_path: Path,
        zones: Sequence[str] = DEFAULT_ZONES,
        address: str = "127.0.0.1",
        port: int | None = None,
        tsig_key_name: str = "certctl-test",
        tsig_algorithm: str = "hmac-sha256",
        records: Mapping[str, Sequence[str]] | None = None,
        startup_timeout: float = 15.0,
    ) -> BindServer:
        """Start `named` and return once every zone answers.

        `port` None picks a free one; `records` maps a zone to extra zone-file
        lines. Raises RuntimeError with the tail of the log if `named` exits
        or never answers.
        """
        workdir = tmp_path / "bind"
        workdir.mkdir(parents=True, exist_ok=True)
        server = cls(
            workdir=workdir,
            address=address,
            port=port if port is not None else free_port(),
            zones=zones,
            tsig_key_name=tsig_key_name,
            tsig_algorithm=tsig_algorithm,
            tsig_secret=base64.b64encode(secrets.token_bytes(32)).decode(),
        )
        server._write_config(records=records or {})
        try:
            server._run(startup_timeout=startup_timeout)
        except BaseException:
            server.stop()
            raise
        return server

    @property
    def nameserver(self) -> str:
        """`host:port`, as an rfc2136 solver's `nameserver` or Pebble's `-dnsserver` takes it."""
        return f"{self.address}:{self.port}"

    def rfc2136_solver(self, *, secret_name: str = "tsig") -> dict[str, Any]:
        """An ACME issuer's `dns01.rfc2136` solver for this server, as cert-manager spells
        it, its TSIG secret in key `secret` of Secret `secret_name` (`tsig_secret_object`)."""
        return {"nameserver": self.nameserver, "tsigKeyName": self.tsig_key_name,
                "tsigAlgorithm": "HMACSHA256",
                "tsigSecretSecretRef": {"name": secret_name, "key": "secret"}}

    def tsig_secret_object(self, *, namespace: str, name: str = "tsig") -> dict[str, Any]:
        """The Secret `rfc2136_solver` refers to (for a ClusterIssuer: in the cluster
        resource namespace)."""
        return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                "metadata": {"name": name, "namespace": namespace},
                "data": {"secret": base64.b64encode(self.tsig_secret.encode()).decode()}}

    def txt_values(self, fqdn: str) -> set[str]:
        """The TXT strings at `fqdn` (absolute or not), asked of this server directly."""
        name = dns.name.from_text(fqdn)
        response = dns.query.udp(dns.message.make_query(name, dns.rdatatype.TXT), self.address,
                                 port=self.port, timeout=2)
        if response.rcode() not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
            raise RuntimeError(f"{self.nameserver} answered {dns.rcode.to_text(response.rcode())}"
                               f" for TXT {name}")
        values = set()
        for rrset in response.answer:
            if rrset.name != name or rrset.rdtype != dns.rdatatype.TXT:
                continue
            for rdata in rrset:
                assert isinstance(rdata, dns.rdtypes.ANY.TXT.TXT)
                values.add(b"".join(rdata.strings).decode())
        return values

    def add_txt(self, *, zone: str, fqdn: str, value: str) -> None:
        """Add a TXT value as someone other than certctl would (for 'leave it alone' tests)."""
        update = dns.update.UpdateMessage(zone)
        update.use_tsig(dns.tsig.Key(self.tsig_key_name, self.tsig_secret, self.tsig_algorithm))
        update.add(dns.name.from_text(fqdn), 60, dns.rdtypes.ANY.TXT.TXT(
            dns.rdataclass.IN, dns.rdatatype.TXT, [value.encode()]))
        response = dns.query.tcp(update, self.address, port=self.port, timeout=2)
        if response.rcode() != dns.rcode.NOERROR:
            raise RuntimeError(f"adding TXT {fqdn}: {dns.rcode.to_text(response.rcode())}")

    def stop(self) -> None:
        """Stop `named`; safe to call twice and after a failed start."""
        stop_process(self._process)
        self._process = None

    def __enter__(self) -> BindServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # --- internals -------------------------------------------------------------

    def _write_config(self, *, records: Mapping[str, Sequence[str]]) -> None:
        workdir = self.workdir
        primary = self.zones[0]
        zone_blocks = []
        for zone in self.zones:
            zone_file = workdir / f"{zone}.zone"
            lines = [
                "$TTL 60",
                f"@ IN SOA ns.{primary}. hostmaster.{primary}. 1 60 60 3600 1",
                f"@ IN NS ns.{primary}.",
                "@ IN A 127.0.0.1",
                "* IN A 127.0.0.1",
                *([f"ns IN A {self.address}"] if zone == primary else []),
                *records.get(zone, ()),
            ]
            zone_file.write_text("\n".join(lines) + "\n")
            zone_blocks.append(
                f'zone "{zone}" {{\n'
                f"    type primary;\n"
                f'    file "{zone_file}";\n'
                f'    update-policy {{ grant "{self.tsig_key_name}" zonesub TXT; }};\n'
                f"}};\n"
            )
        # The negative-caching TTL (SOA minimum) is 1 s: nothing here caches,
        # but a resolver put in front in a test should not hide fresh records.
        config = (
            "options {\n"
            f'    directory "{workdir}";\n'
            f'    pid-file "{workdir}/named.pid";\n'
            f'    session-keyfile "{workdir}/session.key";\n'
            f'    managed-keys-directory "{workdir}";\n'
            f"    listen-on port {self.port} {{ {self.address}; }};\n"
            "    listen-on-v6 { none; };\n"
            "    recursion no;\n"
            "    allow-query { any; };\n"
            "    dnssec-validation no;\n"
            "    notify no;\n"
            "};\n"
            "controls { };\n"
            f'key "{self.tsig_key_name}" {{\n'
            f"    algorithm {self.tsig_algorithm};\n"
            f'    secret "{self.tsig_secret}";\n'
            "};\n" + "".join(zone_blocks)
        )
        (workdir / "named.conf").write_text(config)

    def _run(self, *, startup_timeout: float) -> None:
        log_path = self.workdir / "named.log"
        with log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [NAMED_BIN, "-g", "-u", "root", "-n", "1", "-c", str(self.workdir / "named.conf")],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + startup_timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"named exited with {self._process.returncode}:\n{_log_tail(log_path)}"
                )
            if all(self._answers_soa(zone) for zone in self.zones):
                return
            time.sleep(0.02)
        raise RuntimeError(f"named not ready after {startup_timeout}s:\n{_log_tail(log_path)}")

    def _answers_soa(self, zone: str) -> bool:
        query = dns.message.make_query(dns.name.from_text(zone), dns.rdatatype.SOA)
        with contextlib.suppress(dns.exception.DNSException, OSError):
            response = dns.query.udp(query, self.address, port=self.port, timeout=0.2)
            return response.rcode() == dns.rcode.NOERROR and bool(response.answer)
        return False
