"""DNS-01 lookups against a real BIND: zones by SOA walking, CNAME delegation, propagation."""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from certctl.solvers.dns01 import errors, lookup, propagation
from tests.bind import BindServer
from tests.pebble import free_port

DELEGATION = [
    # _acme-challenge of alias.example.test is handed to another zone, through two hops.
    "_acme-challenge.alias IN CNAME hop.example.test.",
    "hop IN CNAME alias.challenges.delegated.test.",
    "_acme-challenge.loop IN CNAME loop2.example.test.",
    "loop2 IN CNAME _acme-challenge.loop.example.test.",
]


@pytest.fixture
def bind(tmp_path: Path) -> Iterator[BindServer]:
    with BindServer.start(tmp_path=tmp_path, zones=("example.test", "sub.example.test",
                                                    "delegated.test"),
                          records={"example.test": DELEGATION}) as server:
        yield server


def dns_via(bind: BindServer) -> lookup.DnsLookup:
    return lookup.DnsLookup(nameservers=(lookup.parse_nameserver(bind.nameserver),),
                            timeout=1.0)


@pytest.mark.parametrize(("text", "expected"), [
    ("192.0.2.53", lookup.Nameserver(host="192.0.2.53", port=53)),
    ("192.0.2.53:5353", lookup.Nameserver(host="192.0.2.53", port=5353)),
    ("[2001:db8::53]:53", lookup.Nameserver(host="2001:db8::53", port=53)),
    ("[2001:db8::53]", lookup.Nameserver(host="2001:db8::53", port=53)),
    ("2001:db8::53", lookup.Nameserver(host="2001:db8::53", port=53)),
    ("ns1.example.test:8053", lookup.Nameserver(host="ns1.example.test", port=8053)),
])
def test_nameservers_are_written_as_cert_manager_writes_them(
    text: str, expected: lookup.Nameserver
):
    assert lookup.parse_nameserver(text) == expected


@pytest.mark.parametrize(("text", "message"), [
    ("", "must not be empty"),
    ("192.0.2.53:99999", "the port must be a number between 1 and 65535"),
    ("[2001:db8::53:53", "write an IPv6 address as [address] or [address]:port"),
    ("2001:db8::zz", "is not an IPv6 address"),
])
def test_malformed_nameservers_say_what_is_wrong(text: str, message: str):
    with pytest.raises(ValueError, match=re.escape(message)):
        lookup.parse_nameserver(text)


def test_the_zone_is_found_by_walking_up_to_the_soa(bind: BindServer):
    dns = dns_via(bind)
    assert dns.find_zone("_acme-challenge.www.example.test.") == "example.test."
    assert dns.find_zone("_acme-challenge.example.test.") == "example.test."
    assert dns.find_zone("_acme-challenge.a.b.sub.example.test.") == "sub.example.test."
    # A name that is a CNAME is never a zone apex.
    assert dns.find_zone("hop.example.test.") == "example.test."


def test_a_name_in_no_zone_of_the_server_names_the_server_and_its_answer(bind: BindServer):
    with pytest.raises(errors.TemporaryError) as raised:
        dns_via(bind).find_zone("_acme-challenge.www.elsewhere.test.")
    assert str(raised.value) == (
        f"cannot find the DNS zone of _acme-challenge.www.elsewhere.test.: nameserver "
        f"{bind.nameserver} answered REFUSED for SOA _acme-challenge.www.elsewhere.test.")


def test_cname_delegation_of_acme_challenge_is_followed_to_its_end(bind: BindServer):
    dns = dns_via(bind)
    assert dns.follow_cnames("_acme-challenge.alias.example.test.") == (
        "alias.challenges.delegated.test.")
    assert dns.find_zone("alias.challenges.delegated.test.") == "delegated.test."
    assert dns.follow_cnames("_acme-challenge.www.example.test.") == (
        "_acme-challenge.www.example.test.")


def test_a_cname_loop_is_reported_with_its_path(bind: BindServer):
    with pytest.raises(errors.ConfigError, match=r"CNAME loop from _acme-challenge.loop"
                       r".example.test.: _acme-challenge.loop.example.test. -> "
                       r"loop2.example.test. -> _acme-challenge.loop.example.test."):
        dns_via(bind).follow_cnames("_acme-challenge.loop.example.test.")


def test_a_silent_nameserver_is_named_with_the_time_waited():
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # bound, never answers
    silent.bind(("127.0.0.1", 0))
    try:
        port = silent.getsockname()[1]
        dns = lookup.DnsLookup(nameservers=(lookup.Nameserver(host="127.0.0.1", port=port),),
                               timeout=0.2)
        with pytest.raises(errors.TemporaryError,
                           match=f"no answer for SOA _acme-challenge.example.test.: "
                                 f"127.0.0.1:{port} did not answer within 0.2s"):
            dns.find_zone("_acme-challenge.example.test.")
    finally:
        silent.close()


def test_propagation_via_recursive_nameservers_names_the_server_until_the_value_is_there(
    bind: BindServer,
):
    dns = dns_via(bind)
    server = lookup.parse_nameserver(bind.nameserver)
    fqdn = "_acme-challenge.www.example.test."
    with pytest.raises(propagation.NotVisible) as raised:
        propagation.check_txt_visible(dns=dns, fqdn=fqdn, zone="example.test.", value="ours",
                                      nameservers=(server,))
    assert str(raised.value) == (
        f"TXT {fqdn} does not have the challenge value at nameserver {bind.nameserver}: "
        f"{bind.nameserver} answered NOERROR with no TXT record")
    bind.add_txt(zone="example.test", fqdn=fqdn, value="theirs")
    with pytest.raises(propagation.NotVisible, match="answered 1 other TXT value"):
        propagation.check_txt_visible(dns=dns, fqdn=fqdn, zone="example.test.", value="ours",
                                      nameservers=(server,))
    bind.add_txt(zone="example.test", fqdn=fqdn, value="ours")
    propagation.check_txt_visible(dns=dns, fqdn=fqdn, zone="example.test.", value="ours",
                                  nameservers=(server,))


def _loopback_port_53_bindable(address: str) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((address, 53))
        except OSError:
            return False
    return True


def test_propagation_asks_the_zones_authoritative_nameservers(tmp_path: Path):
    """The NS records lead to the server, on port 53: the only port NS records imply.

    named listens only on addresses of the host's interfaces, so this takes
    127.0.0.1:53 (other 127/8 addresses are routed to lo but not on it).
    """
    address = "127.0.0.1"
    if not _loopback_port_53_bindable(address):
        pytest.skip(f"{address}:53 is taken or needs privileges this test run lacks")
    with BindServer.start(tmp_path=tmp_path, address=address, port=53) as bind:
        dns = dns_via(bind)
        fqdn = "_acme-challenge.example.test."
        with pytest.raises(propagation.NotVisible) as raised:
            propagation.check_txt_visible(dns=dns, fqdn=fqdn, zone="example.test.", value="v")
        assert str(raised.value) == (
            f"TXT {fqdn} does not have the challenge value at nameserver ns.example.test. "
            f"(authoritative for example.test.): {address}:53 answered NOERROR with no TXT"
            " record")
        bind.add_txt(zone="example.test", fqdn=fqdn, value="v")
        propagation.check_txt_visible(dns=dns, fqdn=fqdn, zone="example.test.", value="v")


def test_an_unreachable_recursive_nameserver_makes_propagation_name_it():
    port = free_port()  # nothing listens: loopback answers with ICMP port unreachable
    server = lookup.Nameserver(host="127.0.0.1", port=port)
    dns = lookup.DnsLookup(nameservers=(server,), timeout=0.2)
    with pytest.raises(propagation.NotVisible, match=f"at nameserver 127.0.0.1:{port}: no answer"
                                                     f" for TXT _acme-challenge.example.test."):
        propagation.check_txt_visible(dns=dns, fqdn="_acme-challenge.example.test.",
                                      zone="example.test.", value="v", nameservers=(server,))
