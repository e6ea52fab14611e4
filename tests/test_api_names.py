import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from certctl.api import names


def test_names_are_lowercased():
    assert names.normalize_dns_name("WWW.Example.COM", allow_wildcard=False) == "www.example.com"


def test_internationalised_names_become_punycode():
    assert (
        names.normalize_dns_name("Bücher.example", allow_wildcard=False) == "xn--bcher-kva.example"
    )


def test_wildcard_allowed_as_whole_first_label():
    assert names.normalize_dns_name("*.Example.com", allow_wildcard=True) == "*.example.com"


def test_wildcard_with_idn_keeps_star_and_encodes_rest():
    assert (
        names.normalize_dns_name("*.bücher.example", allow_wildcard=True)
        == "*.xn--bcher-kva.example"
    )


@pytest.mark.parametrize("name", ["foo.*.example.com", "*foo.example.com", "f*o.example.com", "*"])
def test_wildcard_label_only_in_first_position(name):
    with pytest.raises(ValueError, match=r"wildcard|label"):
        names.normalize_dns_name(name, allow_wildcard=True)


def test_wildcard_refused_where_not_allowed():
    with pytest.raises(ValueError, match="wildcard name is not allowed"):
        names.normalize_dns_name("*.example.com", allow_wildcard=False)


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("", "empty"),
        ("foo..example", "empty label"),
        ("-foo.example", "hyphen"),
        ("foo-.example", "hyphen"),
        ("foo_bar.example", "letters, digits and hyphens"),
        ("foo.example.", "dot"),
        ("foo bar.example", "letters, digits and hyphens"),
    ],
)
def test_malformed_names_are_refused_with_the_reason(name, problem):
    with pytest.raises(ValueError, match=problem):
        names.normalize_dns_name(name, allow_wildcard=True)


def test_label_longer_than_63_is_refused_but_63_is_accepted():
    assert names.normalize_dns_name("a" * 63 + ".example", allow_wildcard=False)
    with pytest.raises(ValueError, match="longer than 63"):
        names.normalize_dns_name("a" * 64 + ".example", allow_wildcard=False)


def test_name_longer_than_253_is_refused():
    name = ".".join(["a" * 63] * 4)  # 255 characters
    with pytest.raises(ValueError, match="longer than 253"):
        names.normalize_dns_name(name, allow_wildcard=False)


def test_ip_address_is_not_a_dns_name():
    with pytest.raises(ValueError, match="IP address"):
        names.normalize_dns_name("10.0.0.1", allow_wildcard=False)


def test_invalid_idn_is_refused():
    with pytest.raises(ValueError, match="internationalised"):
        names.normalize_dns_name("ü\u200d.example", allow_wildcard=False)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10.0.0.1", True),
        ("::1", True),
        ("2001:db8::1", True),
        ("example.com", False),
        ("10.0.0.1/24", False),
        ("", False),
    ],
)
def test_is_ip_address(text, expected):
    assert names.is_ip_address(text) is expected


@given(st.one_of(st.text(max_size=40), st.ip_addresses().map(str),
                 st.text(alphabet="0123456789.:abcdef%", max_size=40)))
def test_is_ip_address_agrees_with_ipaddress(text: str) -> None:
    # The fast answer for DNS names must never differ from the library's.
    try:
        ipaddress.ip_address(text)
    except ValueError:
        expected = False
    else:
        expected = True
    assert names.is_ip_address(text) is expected
