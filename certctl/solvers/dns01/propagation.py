"""The DNS-01 self-check: is the TXT value served where the CA will look?

Run before asking the CA to validate: a failed validation is final and
burns the authorization, while a failed self-check only means "look again
in a moment". By default every authoritative nameserver of the zone must
serve the value (the CA's resolver may ask any of them, and secondaries lag
behind the primary); with `nameservers` given, those are asked instead
(cert-manager's `--dns01-recursive-nameservers-only`), for networks where
the authoritative servers cannot be reached.
"""

from __future__ import annotations

from collections.abc import Sequence

from certctl.solvers.dns01 import errors, lookup


class NotVisible(Exception):
    """The value is not (yet) served; the message names the server and what it answered."""


def check_txt_visible(
    *,
    dns: lookup.DnsLookup,
    fqdn: str,
    zone: str,
    value: str,
    nameservers: Sequence[lookup.Nameserver] = (),
) -> None:
    """Return if every server serves `value` at `fqdn`, else raise NotVisible.

    An authoritative server counts as serving the value if any of its
    addresses does (a host without IPv6 routes cannot reach the AAAA
    address of a server that is fine).
    """
    try:
        servers = ([lookup.AuthoritativeServer(name=str(ns), addresses=(ns,))
                    for ns in nameservers] if nameservers
                   else dns.authoritative_servers(zone))
    except errors.Dns01Error as err:
        raise NotVisible(f"cannot find the nameservers of zone {zone}: {err}") from err
    for server in servers:
        problems = []
        for address in server.addresses:
            try:
                rcode, values = dns.txt_values(fqdn, server=address)
            except errors.Dns01Error as err:
                problems.append(str(err))
                continue
            if value in values:
                break
            if values:
                problems.append(f"{address} answered {len(values)} other TXT value(s)")
            else:
                problems.append(f"{address} answered {rcode} with no TXT record")
        else:
            label = server.name if nameservers else f"{server.name} (authoritative for {zone})"
            raise NotVisible(
                f"TXT {fqdn} does not have the challenge value at nameserver {label}: "
                + "; ".join(problems or ["it has no address"]))
