"""DNS names and IP addresses as they appear in Ingresses and Certificates.

Names are compared everywhere in their normalised form (lowercase A-labels),
so `Bücher.Example` in an Ingress and `xn--bcher-kva.example` in an issued
certificate are the same name. Errors are plain `ValueError`s with a message
that reads well after "field: "; the parsers wrap them into `InvalidObject`.
"""

from __future__ import annotations

import ipaddress
import re

import idna

MAX_NAME_LENGTH = 253
MAX_LABEL_LENGTH = 63
# X.520 ub-common-name: a longer CN makes an invalid subject, so it is left
# out and the name lives only in the SAN (which is what clients check anyway).
MAX_COMMON_NAME_LENGTH = 64

_LDH_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?")


def is_ip_address(text: str) -> bool:
    """True for an IPv4 or IPv6 address literal (no brackets, no prefix length)."""
    if ":" not in text and not text.replace(".", "").isdigit():
        # Neither IPv6 (a colon) nor IPv4 (digits and dots): a DNS name, told without the
        # two ValueErrors ipaddress raises for it (each Ingress host is asked several times).
        return False
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def normalize_dns_name(name: str, *, allow_wildcard: bool) -> str:
    """Return `name` lowercased with internationalised labels in punycode.

    A wildcard is accepted only as the whole first label (`*.example.com`), as
    in certificates and Ingress hosts; `*` alone, `foo.*.com` and `*foo.com`
    are rejected. IP addresses are rejected because they belong in
    `ipAddresses`, and a trailing dot is rejected because neither Ingress hosts
    nor certificate SANs carry one. Underscores are not LDH and are refused, as
    public CAs refuse them.
    """
    if not name:
        raise ValueError("must not be empty")
    if name.endswith("."):
        raise ValueError(f"{name!r} must not end with a dot")
    if is_ip_address(name):
        raise ValueError(f"{name!r} is an IP address, not a DNS name")
    wildcard = name.startswith("*.")
    rest = name[2:] if wildcard else name
    if wildcard and not allow_wildcard:
        raise ValueError(f"{name!r}: a wildcard name is not allowed here")
    if "*" in rest:
        raise ValueError(
            f"{name!r}: a wildcard must be the whole first label, as in '*.example.com'"
        )
    ascii_name = _to_ascii(rest, original=name)
    labels = ascii_name.split(".")
    for label in labels:
        if not label:
            raise ValueError(f"{name!r} has an empty label")
        if len(label) > MAX_LABEL_LENGTH:
            raise ValueError(
                f"{_shown(name)}: label {_shown(label)} is longer than {MAX_LABEL_LENGTH}"
                f" characters ({len(label)})"
            )
        if not _LDH_LABEL.fullmatch(label):
            raise ValueError(
                f"{name!r}: label {label!r} may contain only letters, digits and hyphens,"
                " and must not start or end with a hyphen"
            )
    result = f"*.{ascii_name}" if wildcard else ascii_name
    if len(result) > MAX_NAME_LENGTH:
        raise ValueError(
            f"{_shown(name)} is longer than {MAX_NAME_LENGTH} characters ({len(result)})"
        )
    return result


def _shown(text: str, *, limit: int = 80) -> str:
    """`text` quoted for a message, its middle elided when long, so the message stays readable."""
    if len(text) <= limit:
        return repr(text)
    return repr(f"{text[:40]}...{text[-30:]}")


def _to_ascii(name: str, *, original: str) -> str:
    if name.isascii():
        return name.lower()
    try:
        return idna.encode(name, uts46=True).decode("ascii")
    except idna.IDNAError as exc:
        raise ValueError(f"{original!r} is not a valid internationalised name: {exc}") from exc
