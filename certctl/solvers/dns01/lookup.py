"""Every DNS query DNS-01 needs: zone apex, CNAME delegation, nameservers, TXT values.

Queries go to the nameservers certctl is given (`--dns01-recursive-nameservers`)
or, without any, to the host's resolvers from /etc/resolv.conf. Going to
them directly (with dnspython, not the C library) is what lets names the
host's resolver does not know, split-horizon setups and test zones work, and
lets a failure name the server that did not answer.

Names are absolute, with the trailing dot (`_acme-challenge.example.com.`),
as in zone files and cert-manager's `resolvedFQDN`.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence
from dataclasses import dataclass

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import dns.rdtypes.ANY.CNAME
import dns.rdtypes.ANY.NS
import dns.rdtypes.ANY.TXT
import dns.resolver
import dns.rrset

from certctl.solvers.dns01 import errors

DEFAULT_PORT = 53
MAX_CNAME_HOPS = 10
"""More hops than any sane delegation needs; also ends CNAME loops early."""


@dataclass(frozen=True, kw_only=True)
class Nameserver:
    """One DNS server: an IP address (or a hostname, resolved when used) and a port."""

    host: str
    port: int = DEFAULT_PORT

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_nameserver(text: str) -> Nameserver:
    """`1.2.3.4`, `1.2.3.4:5353`, `[2001:db8::1]:53`, `2001:db8::1` or `ns1.example.com:53`.

    As in cert-manager, an IPv6 address with a port needs brackets; the
    port defaults to 53. Raises ValueError with a message fit for "field: ".
    """
    value = text.strip()
    if not value:
        raise ValueError("must not be empty")
    host, port_text = value, ""
    if value.startswith("["):
        host, bracket, rest = value[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(f"{text!r}: write an IPv6 address as [address] or [address]:port")
        port_text = rest[1:]
    elif value.count(":") == 1:
        host, _, port_text = value.partition(":")
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{text!r} is not an IPv6 address") from None
    if not host:
        raise ValueError(f"{text!r} has no host")
    port = DEFAULT_PORT
    if port_text:
        if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            raise ValueError(f"{text!r}: the port must be a number between 1 and 65535")
        port = int(port_text)
    return Nameserver(host=host, port=port)


def system_nameservers() -> tuple[Nameserver, ...]:
    """The host's resolvers from /etc/resolv.conf (empty if there is none)."""
    try:
        configured = dns.resolver.Resolver(configure=True).nameservers
    except (dns.resolver.NoResolverConfiguration, OSError):
        return ()
    return tuple(Nameserver(host=str(server)) for server in configured)


def absolute(name: str) -> str:
    """`name` with exactly one trailing dot, lowercased."""
    return dns.name.from_text(name).to_text().lower()


@dataclass(frozen=True, kw_only=True)
class Answer:
    """A response and the server (address and port) that gave it."""

    server: Nameserver
    message: dns.message.Message

    @property
    def rcode_text(self) -> str:
        return dns.rcode.to_text(self.message.rcode())

    def records(self, *, name: str, rdtype: dns.rdatatype.RdataType) -> list[dns.rrset.RRset]:
        wanted = dns.name.from_text(name)
        return [rrset for rrset in self.message.answer
                if rrset.name == wanted and rrset.rdtype == rdtype]


@dataclass(frozen=True, kw_only=True)
class AuthoritativeServer:
    """A zone's NS name and the addresses it resolves to (port 53)."""

    name: str
    addresses: tuple[Nameserver, ...]


class DnsLookup:
    """Queries over UDP (TCP when truncated) to `nameservers`, or the host's when empty.

    Each server is tried in order until one answers; `timeout` is per server
    and address, so a dead first server costs `timeout` once per query.
    """

    def __init__(self, *, nameservers: Sequence[Nameserver] = (), timeout: float = 2.0) -> None:
        self.nameservers = tuple(nameservers)
        self.timeout = timeout

    def resolvers(self) -> tuple[Nameserver, ...]:
        return self.nameservers or system_nameservers()

    def query(
        self,
        name: str,
        rdtype: dns.rdatatype.RdataType,
        *,
        servers: Sequence[Nameserver] | None = None,
        recursion_desired: bool = True,
    ) -> Answer:
        """The first answer from `servers` (default: the resolvers); TemporaryError if none.

        Any response counts as an answer, whatever its rcode: deciding what
        SERVFAIL or REFUSED means is the caller's business.
        """
        targets = tuple(servers) if servers is not None else self.resolvers()
        if not targets:
            raise errors.TemporaryError(
                f"no nameserver to ask for {dns.rdatatype.to_text(rdtype)} {name}: none"
                " configured and none in /etc/resolv.conf")
        query = dns.message.make_query(dns.name.from_text(name), rdtype)
        if not recursion_desired:
            query.flags &= ~dns.flags.RD
        failures: list[str] = []
        for server in targets:
            for address in _addresses(server, failures=failures):
                try:
                    response, _ = dns.query.udp_with_fallback(
                        query, address.host, port=address.port, timeout=self.timeout)
                except dns.exception.Timeout:
                    failures.append(f"{address} did not answer within {self.timeout:g}s")
                except (OSError, dns.exception.DNSException) as err:
                    failures.append(f"{address}: {err}")
                else:
                    return Answer(server=address, message=response)
        raise errors.TemporaryError(
            f"no answer for {dns.rdatatype.to_text(rdtype)} {name}: {'; '.join(failures)}")

    def find_zone(self, fqdn: str) -> str:
        """The apex of the zone `fqdn` is in, found by asking for SOA records upwards.

        As lego and cert-manager do: a name whose SOA query is answered with
        an SOA record of that name is the apex; NXDOMAIN and empty answers
        move one label up; a name that is a CNAME is not an apex (a CNAME
        cannot sit at a zone apex). Other rcodes are errors naming the
        server, since guessing a zone from a broken answer would send the
        update to the wrong place.
        """
        name = dns.name.from_text(fqdn)
        candidate = name
        while len(candidate.labels) > 1:
            text = candidate.to_text()
            answer = self.query(text, dns.rdatatype.SOA)
            rcode = answer.message.rcode()
            if rcode == dns.rcode.NOERROR:
                if not answer.records(name=text, rdtype=dns.rdatatype.CNAME) and answer.records(
                        name=text, rdtype=dns.rdatatype.SOA):
                    return text.lower()
            elif rcode != dns.rcode.NXDOMAIN:
                raise errors.TemporaryError(
                    f"cannot find the DNS zone of {name}: nameserver {answer.server} answered "
                    f"{answer.rcode_text} for SOA {text}")
            candidate = candidate.parent()
        raise errors.TemporaryError(
            f"cannot find the DNS zone of {name}: no SOA record at it or any parent"
            f" (asked {', '.join(str(s) for s in self.resolvers())})")

    def follow_cnames(self, fqdn: str) -> str:
        """Where a CNAME chain starting at `fqdn` ends (`fqdn` itself without one).

        `_acme-challenge.example.com CNAME <id>.auth.acme-dns.io` delegates
        the challenge to another zone (acme-dns, or a zone with narrower
        credentials); the TXT record must then be written at the target.
        """
        current = absolute(fqdn)
        seen = [current]
        for _ in range(MAX_CNAME_HOPS):
            answer = self.query(current, dns.rdatatype.CNAME)
            if answer.message.rcode() not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
                raise errors.TemporaryError(
                    f"cannot follow CNAMEs from {fqdn}: nameserver {answer.server} answered "
                    f"{answer.rcode_text} for CNAME {current}")
            targets = [rdata.target.to_text().lower()
                       for rrset in answer.records(name=current, rdtype=dns.rdatatype.CNAME)
                       for rdata in rrset
                       if isinstance(rdata, dns.rdtypes.ANY.CNAME.CNAME)]
            if not targets:
                return current
            if targets[0] in seen:
                raise errors.ConfigError(
                    f"CNAME loop from {fqdn}: {' -> '.join([*seen, targets[0]])}")
            current = targets[0]
            seen.append(current)
        raise errors.ConfigError(
            f"more than {MAX_CNAME_HOPS} CNAMEs from {fqdn}: {' -> '.join(seen)}")

    def authoritative_servers(self, zone: str) -> list[AuthoritativeServer]:
        """The zone's NS records, each with its addresses (glue, else A/AAAA lookups)."""
        answer = self.query(zone, dns.rdatatype.NS)
        names = sorted({rdata.target.to_text().lower()
                        for rrset in answer.records(name=zone, rdtype=dns.rdatatype.NS)
                        for rdata in rrset if isinstance(rdata, dns.rdtypes.ANY.NS.NS)})
        if not names:
            raise errors.TemporaryError(
                f"nameserver {answer.server} lists no NS records for zone {zone}"
                f" ({answer.rcode_text})")
        found = []
        for ns_name in names:
            addresses = _glue(answer.message, ns_name) or self._resolve_host(ns_name)
            found.append(AuthoritativeServer(
                name=ns_name, addresses=tuple(Nameserver(host=a) for a in addresses)))
        return found

    def txt_values(self, fqdn: str, *, server: Nameserver) -> tuple[str, set[str]]:
        """(rcode, TXT strings at `fqdn`) as `server` answers without recursion."""
        answer = self.query(fqdn, dns.rdatatype.TXT, servers=(server,), recursion_desired=False)
        values = {b"".join(rdata.strings).decode("utf-8", errors="replace")
                  for rrset in answer.records(name=fqdn, rdtype=dns.rdatatype.TXT)
                  for rdata in rrset if isinstance(rdata, dns.rdtypes.ANY.TXT.TXT)}
        return answer.rcode_text, values

    def _resolve_host(self, host: str) -> list[str]:
        """An NS record's addresses, asked of the resolvers (IPv4 first)."""
        name = absolute(host)
        addresses: list[str] = []
        for rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
            try:
                answer = self.query(name, rdtype, servers=self.resolvers())
            except errors.TemporaryError:
                continue
            addresses.extend(rdata.to_text() for rrset in answer.records(name=name, rdtype=rdtype)
                             for rdata in rrset)
        if not addresses:
            raise errors.TemporaryError(f"cannot resolve nameserver {host} to an address")
        return addresses


def _addresses(server: Nameserver, *, failures: list[str]) -> list[Nameserver]:
    """A configured nameserver's addresses: itself if an IP, else the host's resolver's answer.

    A nameserver given by name (`nameserver: ns1.example.com:53`) must be
    resolvable by the host, as in cert-manager: asking DNS for the address
    of the server DNS questions go to would go in circles.
    """
    if _is_ip(server.host):
        return [server]
    try:
        infos = socket.getaddrinfo(server.host, server.port, type=socket.SOCK_DGRAM)
    except OSError as err:
        failures.append(f"{server}: cannot resolve {server.host}: {err}")
        return []
    return [Nameserver(host=str(info[4][0]), port=server.port) for info in infos]


def _glue(message: dns.message.Message, ns_name: str) -> list[str]:
    wanted = dns.name.from_text(ns_name)
    return [rdata.to_text() for rrset in message.additional
            if rrset.name == wanted and rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA)
            for rdata in rrset]


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
