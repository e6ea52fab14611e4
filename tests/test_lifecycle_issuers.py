"""selfSigned and ca issuers: Ready conditions, issuance without Orders, chains openssl accepts."""

from __future__ import annotations

import base64
import datetime
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from certctl.api.resources import PrivateKeySpec
from certctl.controllers.reconciling import TransientError
from certctl.pki import keys, selfsigned
from certctl.pki import secret as tls_secret
from tests.lifecycle import TestCA, World


def _openssl_verify(tmp_path: Path, world: World, secret_name: str, *, host: str) -> None:
    """`openssl verify` of the Secret's leaf, trusting only its ca.crt, at the world's time."""
    secret = world.secret(secret_name)
    assert secret is not None
    chain = base64.b64decode(secret["data"]["tls.crt"])
    ca = base64.b64decode(secret["data"]["ca.crt"])
    leaf = chain[: chain.index(b"-----END CERTIFICATE-----") + len(b"-----END CERTIFICATE-----")]
    for name, data in (("chain.pem", chain), ("ca.pem", ca), ("leaf.pem", leaf)):
        (tmp_path / name).write_bytes(data)
    done = subprocess.run(
        ["openssl", "verify", "-CAfile", str(tmp_path / "ca.pem"),
         "-untrusted", str(tmp_path / "chain.pem"), "-purpose", "sslserver",
         "-verify_hostname", host, "-attime", str(int(world.clock.now.timestamp()) + 60),
         str(tmp_path / "leaf.pem")],
        capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.endswith("leaf.pem: OK\n"), done.stdout


def _intermediate(root: TestCA, *, now: datetime.datetime) -> tuple[bytes, bytes]:
    """An intermediate CA signed by `root`: (certificate PEM, key PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    root_cert = x509.load_pem_x509_certificate(root.pem)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "intermediate")]))
        .issuer_name(root_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            root_cert.public_key()), critical=False)  # type: ignore[arg-type]
        .sign(root.key, hashes.SHA256())
    )
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))


def test_self_signed_issuer_is_ready_and_signs_without_an_order(tmp_path: Path) -> None:
    world = World(tmp_path)
    world.add_local_issuer("self", {"selfSigned": {}})
    ready = world.issuer("self")["status"]["conditions"][0]
    assert (ready["status"], ready["reason"]) == ("True", "IsReady")

    world.add_certificate("web", issuer="self", privateKey={"algorithm": "Ed25519"},
                          duration="720h")
    result = world.reconcile("web")

    assert world.orders("web") == []
    contents = world.contents("web")
    assert contents.leaf.issuer == contents.leaf.subject
    assert contents.ca_pem == contents.chain_pem, "a self-signed certificate is its own CA"
    assert contents.leaf.not_valid_after_utc - contents.leaf.not_valid_before_utc == (
        datetime.timedelta(hours=720))
    assert world.condition("web", "Ready")["status"] == "True"
    assert result.requeue_after == pytest.approx(480 * 3600)
    _openssl_verify(tmp_path, world, "web", host="web.example.test")


def test_ca_issuer_chain_verifies_with_openssl(tmp_path: Path) -> None:
    world = World(tmp_path)
    root = TestCA(now=world.clock.now, common_name="certctl test root")
    world.store.create(obj=root.secret(namespace="certctl", name="root-ca"))
    world.add_local_issuer("ca", {"ca": {"secretName": "root-ca"}})
    ready = world.issuer("ca")["status"]["conditions"][0]
    assert (ready["status"], ready["reason"], ready["message"]) == (
        "True", "KeyPairVerified", "Signing CA verified")

    world.add_certificate("web", issuer="ca", dnsNames=["web.example.test", "www.example.test"],
                          privateKey={"algorithm": "RSA", "size": 3072})
    world.reconcile("web")

    assert world.orders("web") == []
    contents = world.contents("web")
    assert len(contents.chain) == 1, "the root goes to ca.crt, not tls.crt"
    assert contents.ca_pem == root.pem
    assert contents.leaf.issuer == x509.load_pem_x509_certificate(root.pem).subject
    _openssl_verify(tmp_path, world, "web", host="www.example.test")
    annotations = (world.secret("web") or {})["metadata"]["annotations"]
    assert annotations["cert-manager.io/issuer-name"] == "ca"


def test_ca_issuer_with_an_intermediate_sends_it_and_trusts_the_root(tmp_path: Path) -> None:
    world = World(tmp_path)
    root = TestCA(now=world.clock.now, common_name="certctl test root")
    intermediate_pem, intermediate_key = _intermediate(root, now=world.clock.now)
    world.store.create(obj={
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
        "metadata": {"name": "intermediate-ca", "namespace": "default"},
        "data": tls_secret.build_tls_secret_data(chain_pem=intermediate_pem + root.pem,
                                                 key_pem=intermediate_key, ca_pem=None),
    })
    world.add_local_issuer("ca", {"ca": {"secretName": "intermediate-ca"}}, kind="Issuer")
    world.add_certificate("web", issuer="ca", issuerRef={"name": "ca", "kind": "Issuer"})
    world.reconcile("web")

    contents = world.contents("web")
    assert [c.subject.rfc4514_string() for c in contents.chain[1:]] == ["CN=intermediate"]
    assert contents.ca_pem == root.pem
    _openssl_verify(tmp_path, world, "web", host="web.example.test")


@pytest.mark.parametrize(
    ("secret", "reason", "message"),
    [
        (None, "ErrGetKeyPair",
         "Error getting keypair for CA issuer: Secret certctl/root-ca not found"),
        ("leaf", "ErrInvalidKeyPair", "Secret certctl/root-ca: the certificate in tls.crt is "
         "not a CA (basicConstraints CA:TRUE is missing)"),
        ("wrong-key", "ErrInvalidKeyPair", "Secret certctl/root-ca: tls.key is not the key of "
         "the certificate in tls.crt"),
        ("garbage", "ErrGetKeyPair", "Error getting keypair for CA issuer: Secret "
         "certctl/root-ca: tls.crt does not parse"),
    ],
    ids=["missing", "not-a-ca", "wrong-key", "garbage"],
)
def test_ca_issuer_without_a_usable_key_pair_is_not_ready(
    tmp_path: Path, secret: str | None, reason: str, message: str
) -> None:
    world = World(tmp_path)
    root = TestCA(now=world.clock.now)
    if secret is not None:
        obj = root.secret(namespace="certctl", name="root-ca")
        if secret == "leaf":
            key = keys.generate_private_key(PrivateKeySpec())
            leaf = selfsigned.self_signed_certificate(
                key=key, dns_names=["ca.example.test"], common_name=None,
                not_before=world.clock.now, not_after=world.clock.now + datetime.timedelta(1))
            obj["data"] = tls_secret.build_tls_secret_data(
                chain_pem=leaf, key_pem=keys.encode_private_key(key, encoding="PKCS8"),
                ca_pem=None)
        elif secret == "wrong-key":
            obj["data"]["tls.key"] = base64.b64encode(keys.encode_private_key(
                keys.generate_private_key(PrivateKeySpec()), encoding="PKCS8")).decode()
        else:
            obj["data"]["tls.crt"] = base64.b64encode(b"garbage").decode()
        world.store.create(obj=obj)

    with pytest.raises(TransientError):  # retried with backoff: no event says it was fixed
        world.add_local_issuer("ca", {"ca": {"secretName": "root-ca"}})

    ready = world.issuer("ca")["status"]["conditions"][0]
    assert (ready["status"], ready["reason"]) == ("False", reason)
    assert ready["message"].startswith(message)
    world.add_certificate("web", issuer="ca")
    world.reconcile("web")
    certificate_ready = world.condition("web", "Ready")
    assert (certificate_ready["status"], certificate_ready["reason"]) == ("False",
                                                                          "IssuerNotReady")
    assert message in certificate_ready["message"]
    assert world.secret("web") is None


def test_ca_secret_that_breaks_after_the_issuer_was_ready_stops_issuance_clearly(
    tmp_path: Path,
) -> None:
    world = World(tmp_path)
    world.store.create(obj=TestCA(now=world.clock.now).secret(namespace="certctl",
                                                               name="root-ca"))
    world.add_local_issuer("ca", {"ca": {"secretName": "root-ca"}})
    world.store.delete(kind="Secret", namespace="certctl", name="root-ca")
    world.add_certificate("web", issuer="ca")

    world.reconcile("web")

    ready = world.condition("web", "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "IssuerNotReady")
    assert ready["message"] == ("ClusterIssuer ca: Error getting keypair for CA issuer: Secret "
                                "certctl/root-ca not found")


def test_a_certificate_waits_without_a_word_for_an_issuer_not_looked_at_yet(
    tmp_path: Path,
) -> None:
    """At a first start Certificates may run before their issuer's reconciler has given
    its verdict (an ACME issuer registering its account): they record nothing, neither
    a condition nor a Warning, and issue once its verdict wakes them."""
    world = World(tmp_path)
    world.store.create(obj={"apiVersion": "certctl.io/v1", "kind": "ClusterIssuer",
                            "metadata": {"name": "self"}, "spec": {"selfSigned": {}}})
    world.add_certificate("web", issuer="self")

    world.reconcile("web")

    assert world.status("web") == {}
    assert world.events("web") == []
    assert world.secret("web") is None
    world.reconcile_issuer("self")
    world.reconcile("web")
    assert world.condition("web", "Ready")["status"] == "True"
