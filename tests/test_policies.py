"""The "needs issuing" chain: one violation per way a Secret can fall short of its spec."""

from __future__ import annotations

import base64
import datetime
import functools
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from certctl.api import annotations as annotation_keys
from certctl.api import parsing
from certctl.api.resources import Certificate
from certctl.controllers import policies
from certctl.pki import keys, selfsigned
from certctl.pki.secret import build_tls_secret_data

NOW = datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC)
NOT_BEFORE = NOW - datetime.timedelta(days=1)
NOT_AFTER = NOT_BEFORE + datetime.timedelta(days=90)
# 2/3 through the 90-day lifetime
DEFAULT_RENEWAL = NOT_BEFORE + datetime.timedelta(days=60)


@functools.cache
def ecdsa_key(name: str) -> keys.PrivateKey:
    del name  # one key per name, generated once per run
    return ec.generate_private_key(ec.SECP256R1())


def certificate(**spec: Any) -> Certificate:
    body: dict[str, Any] = {
        "secretName": "web-tls",
        "dnsNames": ["web.example.test", "www.example.test"],
        "issuerRef": {"name": "pebble", "kind": "ClusterIssuer"},
    }
    body.update(spec)
    return parsing.parse_certificate({
        "apiVersion": "certctl.io/v1",
        "kind": "Certificate",
        "metadata": {"name": "web", "namespace": "default", "generation": 1},
        "spec": body,
    })


def tls_secret(
    *,
    dns_names: tuple[str, ...] = ("web.example.test", "www.example.test"),
    ip_addresses: tuple[str, ...] = (),
    common_name: str | None = None,
    key: keys.PrivateKey | None = None,
    secret_key: keys.PrivateKey | None = None,
    not_before: datetime.datetime = NOT_BEFORE,
    not_after: datetime.datetime = NOT_AFTER,
    issuer: tuple[str, str] | None = ("ClusterIssuer", "pebble"),
) -> dict[str, Any]:
    """A kubernetes.io/tls Secret holding a certificate for `key` (and `secret_key` as tls.key)."""
    cert_key = key or ecdsa_key("leaf")
    chain_pem = selfsigned.self_signed_certificate(
        key=cert_key,
        dns_names=dns_names,
        ip_addresses=ip_addresses,
        common_name=common_name,
        not_before=not_before,
        not_after=not_after,
    )
    key_pem = keys.encode_private_key(secret_key or cert_key, encoding="PKCS8")
    metadata: dict[str, Any] = {"name": "web-tls", "namespace": "default"}
    if issuer is not None:
        metadata["annotations"] = {
            annotation_keys.SECRET_ISSUER_KIND: issuer[0],
            annotation_keys.SECRET_ISSUER_NAME: issuer[1],
        }
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": metadata,
        "data": build_tls_secret_data(chain_pem=chain_pem, key_pem=key_pem, ca_pem=None),
    }


def check(
    cert: Certificate,
    secret: dict[str, Any] | None,
    *,
    now: datetime.datetime = NOW,
    chain: Any = policies.ISSUANCE_CHAIN,
) -> policies.Violation | None:
    data = policies.read_input(certificate=cert, secret=secret, now=now)
    return policies.needs_issuing(data, chain)


def test_matching_fresh_certificate_needs_nothing() -> None:
    assert check(certificate(), tls_secret()) is None


def test_names_compare_as_sets_in_any_order() -> None:
    secret = tls_secret(dns_names=("www.example.test", "web.example.test"))
    assert check(certificate(), secret) is None


def test_requested_renewal_reissues_a_fine_certificate_that_stays_ready() -> None:
    data = policies.read_input(certificate=certificate(), secret=tls_secret(), now=NOW,
                               renewal_requested=True)

    violation = policies.needs_issuing(data)
    assert violation is not None
    assert violation.reason == policies.MANUALLY_TRIGGERED == "ManuallyTriggered"
    assert policies.needs_issuing(data, policies.READINESS_CHAIN) is None


def test_missing_secret_is_does_not_exist() -> None:
    violation = check(certificate(), None)

    assert violation is not None
    assert violation.reason == policies.DOES_NOT_EXIST == "DoesNotExist"
    assert "does not exist" in violation.message


@pytest.mark.parametrize(
    ("data", "cause"),
    [
        ({"tls.crt": base64.b64encode(b"garbage").decode(), "tls.key": "a2V5"}, "tls.crt"),
        ({"tls.key": "a2V5"}, "tls.crt is missing"),
        ({"tls.crt": "not base64!", "tls.key": "a2V5"}, "base64"),
    ],
    ids=["garbage-pem", "missing-cert", "bad-base64"],
)
def test_unreadable_secret_is_invalid_certificate(data: dict[str, str], cause: str) -> None:
    secret = {"apiVersion": "v1", "kind": "Secret",
              "metadata": {"name": "web-tls", "namespace": "default"}, "data": data}

    violation = check(certificate(), secret)

    assert violation is not None
    assert violation.reason == policies.INVALID_CERTIFICATE == "InvalidCertificate"
    assert cause in violation.message


def test_garbage_key_is_invalid_certificate_naming_the_key() -> None:
    secret = tls_secret()
    secret["data"]["tls.key"] = base64.b64encode(b"-----BEGIN PRIVATE KEY-----\nxx").decode()

    violation = check(certificate(), secret)

    assert violation is not None
    assert violation.reason == policies.INVALID_CERTIFICATE
    assert "tls.key" in violation.message


def test_key_not_matching_the_certificate_is_invalid_key_pair() -> None:
    secret = tls_secret(secret_key=ecdsa_key("other"))

    violation = check(certificate(), secret)

    assert violation is not None
    assert violation.reason == policies.INVALID_KEY_PAIR == "InvalidKeyPair"
    assert "does not match" in violation.message


def test_other_issuer_annotation_is_incorrect_issuer() -> None:
    secret = tls_secret(issuer=("ClusterIssuer", "staging"))

    violation = check(certificate(), secret)

    assert violation is not None
    assert violation.reason == policies.INCORRECT_ISSUER == "IncorrectIssuer"
    assert "ClusterIssuer/staging" in violation.message
    assert "ClusterIssuer/pebble" in violation.message


def test_same_issuer_name_of_another_kind_is_incorrect_issuer() -> None:
    violation = check(certificate(), tls_secret(issuer=("Issuer", "pebble")))

    assert violation is not None
    assert violation.reason == policies.INCORRECT_ISSUER


def test_secret_without_issuer_annotations_is_judged_by_contents() -> None:
    assert check(certificate(), tls_secret(issuer=None)) is None


def test_different_dns_names_is_secret_mismatch() -> None:
    secret = tls_secret(dns_names=("web.example.test",))

    violation = check(certificate(), secret)

    assert violation is not None
    assert violation.reason == policies.SECRET_MISMATCH == "SecretMismatch"
    assert "spec.dnsNames" in violation.message
    assert "spec.ipAddresses" not in violation.message


def test_different_ip_addresses_and_common_name_are_named() -> None:
    cert = certificate(dnsNames=["web.example.test"], ipAddresses=["192.0.2.1"],
                       commonName="web.example.test")
    secret = tls_secret(dns_names=("web.example.test",), ip_addresses=("192.0.2.2",),
                        common_name="other.example.test")

    violation = check(cert, secret)

    assert violation is not None
    assert violation.reason == policies.SECRET_MISMATCH
    assert "spec.ipAddresses" in violation.message
    assert "spec.commonName" in violation.message
    assert "spec.dnsNames" not in violation.message


def test_matching_ip_addresses_and_common_name_need_nothing() -> None:
    cert = certificate(dnsNames=["web.example.test"], ipAddresses=["2001:db8::1"],
                       commonName="web.example.test")
    secret = tls_secret(dns_names=("web.example.test",), ip_addresses=("2001:db8::1",),
                        common_name="web.example.test")

    assert check(cert, secret) is None


@pytest.mark.parametrize(("dns_names", "ip_addresses", "common_name", "requested", "violated"), [
    (("web.example.test",), (), "web.example.test", "web.example.test", False),
    (("web.example.test",), ("192.0.2.1",), "192.0.2.1", "192.0.2.1", False),
    (("www.example.test",), (), "web.example.test", "web.example.test", True),
    (("web.example.test",), (), "web.example.test", None, True),
    (("web.example.test",), (), "web.example.test", "www.example.test", True),
], ids=["dns-name-among-sans", "ip-among-sans", "not-among-sans", "never-requested",
        "other-name-requested"])
def test_a_certificate_the_ca_issued_without_the_requested_common_name_matches(
    dns_names: tuple[str, ...], ip_addresses: tuple[str, ...], common_name: str,
    requested: str | None, violated: bool,
) -> None:
    # As Let's Encrypt's tlsserver/shortlived profiles and the current Pebble issue them:
    # fine if it was requested with that Common Name and the SANs hold it.
    cert = certificate(dnsNames=list(dns_names), ipAddresses=list(ip_addresses),
                       commonName=common_name)
    secret = tls_secret(dns_names=dns_names, ip_addresses=ip_addresses, common_name=None)
    if requested is not None:
        secret["metadata"]["annotations"][policies.REQUESTED_COMMON_NAME_ANNOTATION] = requested

    violation = check(cert, secret)

    assert (violation is not None) == violated
    if violation is not None:
        assert violation.message.endswith("does not match spec.commonName")


def test_different_key_algorithm_is_incorrect_private_key() -> None:
    secret = tls_secret(key=ed25519.Ed25519PrivateKey.generate())

    violation = check(certificate(), secret)

    assert violation is not None
    assert violation.reason == policies.INCORRECT_KEY == "IncorrectPrivateKey"
    assert "Ed25519" in violation.message
    assert "ECDSA 256" in violation.message


def test_different_key_size_is_incorrect_private_key() -> None:
    cert = certificate(privateKey={"algorithm": "ECDSA", "size": 384})

    violation = check(cert, tls_secret())

    assert violation is not None
    assert violation.reason == policies.INCORRECT_KEY
    assert "ECDSA 256" in violation.message
    assert "ECDSA 384" in violation.message


def test_expired_certificate_is_expired() -> None:
    violation = check(certificate(), tls_secret(), now=NOT_AFTER + datetime.timedelta(seconds=1))

    assert violation is not None
    assert violation.reason == policies.EXPIRED == "Expired"
    assert "expired" in violation.message
    assert f"{NOT_AFTER:%Y-%m-%dT%H:%M:%SZ}" in violation.message


def test_renewal_time_reached_is_renewing() -> None:
    violation = check(certificate(), tls_secret(), now=DEFAULT_RENEWAL)

    assert violation is not None
    assert violation.reason == policies.RENEWING == "Renewing"
    assert f"{DEFAULT_RENEWAL:%Y-%m-%dT%H:%M:%SZ}" in violation.message


def test_just_before_renewal_time_needs_nothing() -> None:
    assert check(certificate(), tls_secret(),
                 now=DEFAULT_RENEWAL - datetime.timedelta(seconds=1)) is None


def test_renew_before_moves_the_renewal_time() -> None:
    cert = certificate(renewBefore="240h")
    renewal = NOT_AFTER - datetime.timedelta(days=10)

    assert check(cert, tls_secret(), now=DEFAULT_RENEWAL) is None
    violation = check(cert, tls_secret(), now=renewal)
    assert violation is not None
    assert violation.reason == policies.RENEWING


def test_first_violation_wins() -> None:
    secret = tls_secret(dns_names=("other.example.test",), secret_key=ecdsa_key("other"),
                        issuer=("ClusterIssuer", "staging"))

    violation = check(certificate(), secret, now=NOT_AFTER + datetime.timedelta(days=1))

    assert violation is not None
    assert violation.reason == policies.INVALID_KEY_PAIR


def test_readiness_stays_satisfied_inside_the_renewal_window() -> None:
    inside_window = DEFAULT_RENEWAL + datetime.timedelta(days=1)

    renewing = check(certificate(), tls_secret(), now=inside_window)
    ready = check(certificate(), tls_secret(), now=inside_window,
                  chain=policies.READINESS_CHAIN)

    assert renewing is not None
    assert renewing.reason == policies.RENEWING
    assert ready is None


def test_readiness_fails_once_expired_or_mismatched() -> None:
    expired = check(certificate(), tls_secret(), now=NOT_AFTER,
                    chain=policies.READINESS_CHAIN)
    mismatched = check(certificate(), tls_secret(dns_names=("web.example.test",)),
                       chain=policies.READINESS_CHAIN)

    assert expired is not None
    assert expired.reason == policies.EXPIRED
    assert mismatched is not None
    assert mismatched.reason == policies.SECRET_MISMATCH


def test_string_data_secret_is_read_like_data() -> None:
    secret = tls_secret()
    secret["stringData"] = {
        name: base64.b64decode(value).decode() for name, value in secret.pop("data").items()
    }

    assert check(certificate(), secret) is None
