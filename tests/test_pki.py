import base64
import datetime
import ipaddress
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from certctl.api import resources
from certctl.pki import csr, inspect, keys, renewal, secret, selfsigned

NOW = datetime.datetime(2024, 5, 1, 12, 0, 0, tzinfo=datetime.UTC)
DAY = datetime.timedelta(days=1)


@pytest.fixture(scope="module")
def ec_key():
    return keys.generate_private_key(resources.PrivateKeySpec(algorithm="ECDSA"))


@pytest.fixture(scope="module")
def rsa_key():
    return keys.generate_private_key(resources.PrivateKeySpec(algorithm="RSA"))


def _leaf(
    key: keys.PrivateKey,
    *,
    names: tuple[str, ...] = ("web.example.test",),
    cn: str = "web.example.test",
    days: int = 90,
) -> bytes:
    return selfsigned.self_signed_certificate(
        key=key, dns_names=list(names), common_name=cn, not_before=NOW, not_after=NOW + days * DAY
    )


# --- keys ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (resources.PrivateKeySpec(algorithm="RSA"), ("RSA", 2048)),
        (resources.PrivateKeySpec(algorithm="RSA", size=3072), ("RSA", 3072)),
        (resources.PrivateKeySpec(algorithm="ECDSA"), ("ECDSA", 256)),
        (resources.PrivateKeySpec(algorithm="ECDSA", size=384), ("ECDSA", 384)),
        (resources.PrivateKeySpec(algorithm="Ed25519"), ("Ed25519", 256)),
    ],
)
def test_generated_key_matches_spec(spec, expected):
    assert keys.describe_key(keys.generate_private_key(spec)) == expected


def test_unsupported_ecdsa_size_is_refused():
    with pytest.raises(ValueError, match="256, 384 or 521"):
        keys.generate_private_key(resources.PrivateKeySpec(algorithm="ECDSA", size=224))


def test_pkcs1_encoding_is_traditional_openssl(rsa_key, ec_key):
    assert keys.encode_private_key(rsa_key, encoding="PKCS1").startswith(
        b"-----BEGIN RSA PRIVATE KEY-----"
    )
    assert keys.encode_private_key(ec_key, encoding="PKCS1").startswith(
        b"-----BEGIN EC PRIVATE KEY-----"
    )


def test_pkcs8_encoding(rsa_key):
    assert keys.encode_private_key(rsa_key, encoding="PKCS8").startswith(
        b"-----BEGIN PRIVATE KEY-----"
    )


def test_ed25519_is_always_pkcs8():
    key = keys.generate_private_key(resources.PrivateKeySpec(algorithm="Ed25519"))
    assert keys.encode_private_key(key, encoding="PKCS1").startswith(b"-----BEGIN PRIVATE KEY-----")


@pytest.mark.parametrize("encoding", ["PKCS1", "PKCS8"])
def test_encoded_key_loads_back_as_same_key(ec_key, encoding):
    loaded = keys.load_private_key(keys.encode_private_key(ec_key, encoding=encoding))
    assert keys.public_keys_equal(loaded, ec_key)


def test_garbage_key_is_refused_without_echoing_it():
    with pytest.raises(ValueError) as info:
        keys.load_private_key(
            b"-----BEGIN PRIVATE KEY-----\nU0VDUkVUU0VDUkVU\n-----END PRIVATE KEY-----\n"
        )
    assert "U0VDUkVU" not in str(info.value)


def _rsa_pem(numbers: rsa.RSAPrivateNumbers) -> bytes:
    key = numbers.private_key(unsafe_skip_rsa_key_validation=True)
    return keys.encode_private_key(key, encoding="PKCS1")


@pytest.mark.parametrize("damage", ["dmp1", "dmq1", "iqmp", "d"])
def test_an_rsa_key_whose_numbers_disagree_is_refused(rsa_key, damage):
    """What Go's crypto/rsa refuses for cert-manager, without OpenSSL's primality tests: a
    wrong CRT value makes signatures that leak the key (a fault attack's answer)."""
    good = rsa_key.private_numbers()
    values = {"p": good.p, "q": good.q, "d": good.d, "dmp1": good.dmp1, "dmq1": good.dmq1,
              "iqmp": good.iqmp}
    values[damage] += 2
    damaged = rsa.RSAPrivateNumbers(**values, public_numbers=good.public_numbers)
    with pytest.raises(ValueError, match="RSA numbers do not agree"):
        keys.load_private_key(_rsa_pem(damaged))
    assert keys.load_private_key(_rsa_pem(damaged), check_rsa=False) is not None
    loaded = keys.load_private_key(_rsa_pem(good))
    assert keys.public_keys_equal(loaded.public_key(), rsa_key.public_key())


def test_unsupported_key_type_is_refused():
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import x25519

    pem = x25519.X25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(ValueError, match="unsupported private key type"):
        keys.load_private_key(pem)


def test_encrypted_key_is_refused(ec_key):
    from cryptography.hazmat.primitives import serialization

    pem = ec_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pw"),
    )
    with pytest.raises(ValueError, match="encrypted"):
        keys.load_private_key(pem)


def test_public_keys_equal_distinguishes_keys(ec_key, rsa_key):
    other = keys.generate_private_key(resources.PrivateKeySpec(algorithm="ECDSA"))
    assert keys.public_keys_equal(ec_key, ec_key.public_key())
    assert not keys.public_keys_equal(ec_key, other)
    assert not keys.public_keys_equal(ec_key, rsa_key)


# --- CSRs ----------------------------------------------------------------------------------


def test_csr_carries_names_and_usages(ec_key):
    pem = csr.build_csr(
        key=ec_key,
        dns_names=["web.example.test", "*.example.test"],
        ip_addresses=["10.0.0.1"],
        common_name="web.example.test",
        usages=["digital signature", "key encipherment", "server auth"],
    )
    request = x509.load_pem_x509_csr(pem)
    assert request.is_signature_valid
    assert (
        request.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "web.example.test"
    )
    san = request.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.value.get_values_for_type(x509.DNSName) == ["web.example.test", "*.example.test"]
    assert san.value.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.1")]
    key_usage = request.extensions.get_extension_for_class(x509.KeyUsage)
    assert key_usage.critical
    assert key_usage.value.digital_signature and key_usage.value.key_encipherment
    eku = request.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    assert list(eku.value) == [ExtendedKeyUsageOID.SERVER_AUTH]


def test_long_common_name_is_left_out_of_subject_but_kept_in_san(ec_key):
    long_name = "a" * 60 + ".example.test"
    request = x509.load_pem_x509_csr(
        csr.build_csr(
            key=ec_key, dns_names=[long_name], ip_addresses=[], common_name=long_name, usages=[]
        )
    )
    assert len(request.subject) == 0
    san = request.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.critical
    assert san.value.get_values_for_type(x509.DNSName) == [long_name]


def test_csr_needs_a_name(ec_key):
    with pytest.raises(ValueError, match="at least one"):
        csr.build_csr(key=ec_key, dns_names=[], ip_addresses=[], common_name=None, usages=[])


def test_csr_refuses_unknown_usage(ec_key):
    with pytest.raises(ValueError, match="unknown usage"):
        csr.build_csr(
            key=ec_key, dns_names=["a.test"], ip_addresses=[], common_name=None, usages=["fly"]
        )


@pytest.mark.parametrize(
    ("spec", "hash_name"),
    [
        (resources.PrivateKeySpec(algorithm="RSA", size=2048), "sha256"),
        (resources.PrivateKeySpec(algorithm="ECDSA", size=384), "sha384"),
    ],
)
def test_csr_digest_scales_with_key(spec, hash_name):
    key = keys.generate_private_key(spec)
    request = x509.load_pem_x509_csr(
        csr.build_csr(key=key, dns_names=["a.test"], ip_addresses=[], common_name=None, usages=[])
    )
    assert request.signature_hash_algorithm is not None
    assert request.signature_hash_algorithm.name == hash_name


def test_ed25519_csr_signs_without_digest():
    key = keys.generate_private_key(resources.PrivateKeySpec(algorithm="Ed25519"))
    request = x509.load_pem_x509_csr(
        csr.build_csr(key=key, dns_names=["a.test"], ip_addresses=[], common_name=None, usages=[])
    )
    assert request.is_signature_valid
    assert request.signature_hash_algorithm is None


# --- inspection ---------------------------------------------------------------------------


def test_inspect_certificate_reports_spec_terms(ec_key):
    pem = selfsigned.self_signed_certificate(
        key=ec_key,
        dns_names=["web.example.test"],
        ip_addresses=["2001:db8::1"],
        common_name="web.example.test",
        not_before=NOW,
        not_after=NOW + 90 * DAY,
    )
    info = inspect.inspect_certificate(pem)
    assert info.dns_names == ("web.example.test",)
    assert info.ip_addresses == ("2001:db8::1",)
    assert info.common_name == "web.example.test"
    assert info.issuer_common_name == "web.example.test"
    assert info.not_before == NOW
    assert info.not_after == NOW + 90 * DAY
    assert info.not_after.tzinfo is not None
    assert (info.key_algorithm, info.key_size) == ("ECDSA", 256)
    assert info.serial > 0


def test_split_pem_chain_keeps_order(ec_key, rsa_key):
    first, second = _leaf(ec_key), _leaf(rsa_key, cn="other")
    chain = inspect.split_pem_chain(first + b"subject=CN = other\n" + second)
    assert [c.subject.rfc4514_string() for c in chain] == ["CN=web.example.test", "CN=other"]


@pytest.mark.parametrize(
    ("pem", "problem"),
    [
        (b"", "no PEM certificate"),
        (b"hello world", "no PEM certificate"),
        (b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "does not parse"),
        (b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END PRIVATE KEY-----\n", "cut short"),
    ],
)
def test_split_pem_chain_refuses_garbage(pem, problem):
    with pytest.raises(ValueError, match=problem):
        inspect.split_pem_chain(pem)


def test_split_pem_chain_refuses_key_in_chain(ec_key):
    pem = _leaf(ec_key) + keys.encode_private_key(ec_key, encoding="PKCS8")
    with pytest.raises(ValueError, match="PEM block 1 is a PRIVATE KEY"):
        inspect.split_pem_chain(pem)


def test_key_matches_certificate(ec_key, rsa_key):
    cert = inspect.split_pem_chain(_leaf(ec_key))[0]
    assert inspect.key_matches_certificate(ec_key, cert)
    assert not inspect.key_matches_certificate(rsa_key, cert)


# --- Secret layout ----------------------------------------------------------------------------


def _secret(data: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls", "data": data}


def test_tls_secret_round_trip(ec_key):
    chain = _leaf(ec_key)
    key_pem = keys.encode_private_key(ec_key, encoding="PKCS1")
    data = secret.build_tls_secret_data(chain_pem=chain, key_pem=key_pem, ca_pem=None)
    assert set(data) == {"tls.crt", "tls.key"}
    assert base64.b64decode(data["tls.crt"]) == chain
    contents = secret.read_tls_secret(_secret(data))
    assert contents.chain_pem == chain
    assert contents.key_pem == key_pem
    assert contents.ca_pem is None
    assert inspect.key_matches_certificate(contents.key, contents.leaf)


def test_contents_read_lately_are_not_parsed_again(ec_key):
    """The same bytes give the same parsed contents (its leaf's info read once), other
    bytes their own, and only the most recent few are kept."""
    chain = _leaf(ec_key)
    data = secret.build_tls_secret_data(
        chain_pem=chain, key_pem=keys.encode_private_key(ec_key, encoding="PKCS8"), ca_pem=None)
    first = secret.read_tls_secret(_secret(data))
    again = secret.read_tls_secret(_secret(dict(data)))
    assert again is first and again.info is first.info
    # Parsed from bytes before the Secret exists (the issuing pass), found by its reads.
    assert secret.parse_tls_secret_bytes(secret.tls_secret_bytes(_secret(data))) is first
    assert first.info.dns_names == ("web.example.test",)
    assert secret.read_tls_secret(_secret(data), check_rsa_key=False) is not first
    other = dict(data, **{"tls.crt": base64.b64encode(_leaf(ec_key, names=("other.example.test",)
                                                             )).decode("ascii")})
    assert secret.read_tls_secret(_secret(other)).info.dns_names == ("other.example.test",)
    for days in range(secret._PARSED_KEPT):  # other contents push the first one out
        secret.read_tls_secret(_secret(dict(data, **{
            "tls.crt": base64.b64encode(_leaf(ec_key, days=days + 1)).decode("ascii")})))
    assert secret.read_tls_secret(_secret(data)) is not first


def test_ca_crt_is_written_when_known(ec_key):
    chain = _leaf(ec_key)
    data = secret.build_tls_secret_data(chain_pem=chain, key_pem=b"k", ca_pem=chain)
    assert base64.b64decode(data["ca.crt"]) == chain


def test_string_data_is_honoured(ec_key):
    chain = _leaf(ec_key).decode()
    key_pem = keys.encode_private_key(ec_key, encoding="PKCS8").decode()
    contents = secret.read_tls_secret({"stringData": {"tls.crt": chain, "tls.key": key_pem}})
    assert contents.chain_pem == chain.encode()


def _encoded(value: bytes) -> str:
    return base64.b64encode(value).decode()


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        ({}, "tls.crt is missing"),
        ({"tls.crt": ""}, "tls.crt is empty"),
        ({"tls.crt": "%%%"}, "tls.crt is not valid base64"),
        ({"tls.crt": _encoded(b"junk"), "tls.key": _encoded(b"junk")}, "tls.crt does not parse"),
    ],
)
def test_unreadable_secret_gives_a_reason(data, reason):
    with pytest.raises(secret.SecretInvalid) as info:
        secret.read_tls_secret(_secret(data))
    assert info.value.reason.startswith(reason)


def test_missing_key_is_reported(ec_key):
    with pytest.raises(secret.SecretInvalid, match=r"tls\.key is missing"):
        secret.read_tls_secret(_secret({"tls.crt": _encoded(_leaf(ec_key))}))


def test_bad_key_reason_never_contains_key_bytes(ec_key):
    key_pem = keys.encode_private_key(ec_key, encoding="PKCS8")
    broken = key_pem[:40] + key_pem[60:]
    with pytest.raises(secret.SecretInvalid) as info:
        secret.read_tls_secret(
            _secret({"tls.crt": _encoded(_leaf(ec_key)), "tls.key": _encoded(broken)})
        )
    assert info.value.reason.startswith("tls.key does not parse")
    body = b"".join(key_pem.splitlines()[1:-1]).decode()
    assert body[:16] not in str(info.value)


def test_bad_ca_crt_is_reported(ec_key):
    data = secret.build_tls_secret_data(
        chain_pem=_leaf(ec_key),
        key_pem=keys.encode_private_key(ec_key, encoding="PKCS8"),
        ca_pem=b"nope",
    )
    with pytest.raises(secret.SecretInvalid, match=r"ca\.crt does not parse"):
        secret.read_tls_secret(_secret(data))


# --- renewal ------------------------------------------------------------------------------------


def _renewal(
    lifetime: datetime.timedelta,
    *,
    renew_before: datetime.timedelta | None = None,
    percentage: int | None = None,
) -> datetime.datetime:
    return renewal.renewal_time(
        not_before=NOW,
        not_after=NOW + lifetime,
        renew_before=renew_before,
        renew_before_percentage=percentage,
    )


def test_default_renewal_is_two_thirds_through():
    assert _renewal(90 * DAY) == NOW + 60 * DAY


def test_renew_before_is_honoured():
    assert _renewal(90 * DAY, renew_before=15 * DAY) == NOW + 75 * DAY


def test_renew_before_not_shorter_than_lifetime_falls_back_to_two_thirds():
    assert _renewal(30 * DAY, renew_before=30 * DAY) == NOW + 20 * DAY
    assert _renewal(30 * DAY, renew_before=40 * DAY) == NOW + 20 * DAY


def test_renew_before_percentage_renews_that_share_before_expiry():
    assert _renewal(datetime.timedelta(minutes=60), percentage=25) == NOW + datetime.timedelta(
        minutes=45
    )


@pytest.mark.parametrize("percentage", [0, 100])
def test_out_of_range_percentage_falls_back_to_default(percentage):
    assert _renewal(90 * DAY, percentage=percentage) == NOW + 60 * DAY


def test_renewal_time_is_truncated_to_seconds():
    # 100 s lifetime: a third is 33.33 s before expiry, i.e. 66.67 s in; truncated to 66 s.
    result = _renewal(datetime.timedelta(seconds=100))
    assert result == NOW + datetime.timedelta(seconds=66)
    assert result.microsecond == 0


# --- signing ---------------------------------------------------------------------------


def test_self_signed_leaf_is_not_a_ca(rsa_key):
    cert = x509.load_pem_x509_certificate(_leaf(rsa_key))
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    key_usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert key_usage.digital_signature and key_usage.key_encipherment
    assert cert.issuer == cert.subject


def test_self_signed_ca_can_sign(ec_key):
    ca_pem = selfsigned.self_signed_certificate(
        key=ec_key,
        dns_names=[],
        common_name="Test CA",
        not_before=NOW,
        not_after=NOW + 365 * DAY,
        is_ca=True,
    )
    ca_cert = x509.load_pem_x509_certificate(ca_pem)
    assert ca_cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    assert ca_cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign


def test_not_after_must_follow_not_before(ec_key):
    with pytest.raises(ValueError, match="later than not_before"):
        selfsigned.self_signed_certificate(
            key=ec_key, dns_names=["a.test"], common_name=None, not_before=NOW, not_after=NOW
        )


@pytest.fixture(scope="module")
def ca(ec_key):
    ca_key = keys.generate_private_key(resources.PrivateKeySpec(algorithm="ECDSA", size=384))
    pem = selfsigned.self_signed_certificate(
        key=ca_key,
        dns_names=[],
        common_name="Test CA",
        not_before=NOW,
        not_after=NOW + 365 * DAY,
        is_ca=True,
    )
    return ca_key, x509.load_pem_x509_certificate(pem)


@pytest.mark.parametrize("algorithm", ["RSA", "ECDSA", "Ed25519"])
def test_ca_signs_csr_with_its_names_and_chain_verifies(ca, algorithm):
    ca_key, ca_cert = ca
    leaf_key = keys.generate_private_key(resources.PrivateKeySpec(algorithm=algorithm))
    request = csr.build_csr(
        key=leaf_key,
        dns_names=["web.example.test"],
        ip_addresses=[],
        common_name=None,
        usages=["server auth"],
    )
    leaf_pem = selfsigned.sign_certificate(
        csr_pem=request, ca_cert=ca_cert, ca_key=ca_key, not_before=NOW, not_after=NOW + 30 * DAY
    )
    leaf = x509.load_pem_x509_certificate(leaf_pem)
    leaf.verify_directly_issued_by(ca_cert)
    info = inspect.certificate_info(leaf)
    assert info.dns_names == ("web.example.test",)
    assert info.issuer_common_name == "Test CA"
    assert info.key_algorithm == algorithm
    assert inspect.key_matches_certificate(leaf_key, leaf)
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]


def test_signed_leaf_does_not_outlive_ca(ca, ec_key):
    ca_key, ca_cert = ca
    request = csr.build_csr(
        key=ec_key, dns_names=["a.test"], ip_addresses=[], common_name=None, usages=[]
    )
    leaf_pem = selfsigned.sign_certificate(
        csr_pem=request, ca_cert=ca_cert, ca_key=ca_key, not_before=NOW, not_after=NOW + 1000 * DAY
    )
    assert inspect.inspect_certificate(leaf_pem).not_after == ca_cert.not_valid_after_utc
    leaf = x509.load_pem_x509_certificate(leaf_pem)
    assert leaf.extensions.get_extension_for_class(x509.KeyUsage).value.digital_signature


def test_signing_with_wrong_ca_key_is_refused(ca, ec_key):
    _, ca_cert = ca
    request = csr.build_csr(
        key=ec_key, dns_names=["a.test"], ip_addresses=[], common_name=None, usages=[]
    )
    with pytest.raises(ValueError, match="does not belong"):
        selfsigned.sign_certificate(
            csr_pem=request, ca_cert=ca_cert, ca_key=ec_key, not_before=NOW, not_after=NOW + DAY
        )


def test_describe_key_accepts_public_keys(ec_key, rsa_key):
    ed = keys.generate_private_key(resources.PrivateKeySpec(algorithm="Ed25519"))
    assert isinstance(ed, ed25519.Ed25519PrivateKey)
    assert isinstance(rsa_key, rsa.RSAPrivateKey)
    assert isinstance(ec_key, ec.EllipticCurvePrivateKey)
    assert keys.describe_key(rsa_key.public_key()) == ("RSA", 2048)
    assert keys.describe_key(ed.public_key()) == ("Ed25519", 256)
