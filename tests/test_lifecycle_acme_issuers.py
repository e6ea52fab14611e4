"""ACME issuer options against a real Pebble: externalAccountBinding, profile, preferredChain.

Each runs against Debian's Pebble 2.4 and the current release, but for the
profile a CA offers: only the current Pebble has profiles.
"""

from __future__ import annotations

import base64
import datetime
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from certctl.controllers.reconciling import TransientError
from tests.lifecycle import World
from tests.pebble import PebbleBuild, PebbleProfile, PebbleServer, free_port
from tests.serving import (
    cluster_issuer,
    eventually,
    ingress,
    served_certificate,
    serving,
    write_yaml,
)

# Pebble's own example key (base64url): what a CA hands out as "EAB HMAC key".
HMAC_KEY = "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W"


@pytest.fixture
def eab_pebble(tmp_path: Path, pebble_build: PebbleBuild) -> Iterator[PebbleServer]:
    server = PebbleServer.start(tmp_path=tmp_path, http_port=free_port(), build=pebble_build,
                                config={"externalAccountBindingRequired": True,
                                        "externalAccountMACKeys": {"kid-1": HMAC_KEY}})
    try:
        yield server
    finally:
        server.stop()


def _acme_issuer(pebble: PebbleServer, **acme: Any) -> dict[str, Any]:
    issuer = cluster_issuer(pebble, name="pebble", api_version="certctl.io/v1")
    issuer["spec"]["acme"].update(acme)
    return issuer


def _ready(world: World) -> dict[str, Any]:
    condition: dict[str, Any] = world.issuer("pebble")["status"]["conditions"][0]
    return condition


def _hmac_secret(value: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": "eab", "namespace": "certctl"},
            "data": {"secret": base64.b64encode(value.encode()).decode()}}


def test_external_account_binding_registers_with_a_ca_that_requires_it(
    tmp_path: Path, eab_pebble: PebbleServer
) -> None:
    world = World(tmp_path)
    world.store.create(obj=_hmac_secret(HMAC_KEY))
    world.store.create(obj=_acme_issuer(eab_pebble, externalAccountBinding={
        "keyID": "kid-1", "keySecretRef": {"name": "eab", "key": "secret"}}))

    world.reconcile_issuer("pebble")

    ready = _ready(world)
    assert (ready["status"], ready["reason"]) == ("True", "ACMEAccountRegistered")
    assert world.issuer("pebble")["status"]["acme"]["uri"].startswith(
        f"https://127.0.0.1:{eab_pebble.acme_port}/")


@pytest.mark.parametrize(
    ("binding", "secret", "message"),
    [
        (None, None, "externalAccountRequired"),
        ({"keyID": "kid-1", "keySecretRef": {"name": "eab", "key": "secret"}},
         HMAC_KEY[::-1], "external account binding JWS verification error"),
        ({"keyID": "kid-1", "keySecretRef": {"name": "eab", "key": "secret"}}, None,
         "spec.acme.externalAccountBinding.keySecretRef: Secret certctl/eab not found"),
        ({"keyID": "kid-1", "keySecretRef": {"name": "eab"}}, HMAC_KEY,
         "keySecretRef.key is required"),
        ({"keyID": "kid-1", "keySecretRef": {"name": "eab", "key": "secret"}}, "abcde",
         "the HMAC key of external account 'kid-1' is not base64url-encoded"),
    ],
    ids=["no-binding", "wrong-hmac-key", "missing-secret", "no-key-field", "not-base64url"],
)
def test_registration_without_a_good_binding_is_not_ready_and_says_why(
    tmp_path: Path, eab_pebble: PebbleServer, binding: dict[str, Any] | None,
    secret: str | None, message: str,
) -> None:
    world = World(tmp_path)
    if secret is not None:
        world.store.create(obj=_hmac_secret(secret))
    world.store.create(obj=_acme_issuer(eab_pebble, **(
        {"externalAccountBinding": binding} if binding else {})))

    with pytest.raises(TransientError):
        world.reconcile_issuer("pebble")

    ready = _ready(world)
    assert (ready["status"], ready["reason"]) == ("False", "ErrRegisterACMEAccount")
    assert message in ready["message"]
    assert HMAC_KEY not in ready["message"]


def test_profile_the_server_does_not_offer_makes_the_issuer_not_ready(
    tmp_path: Path, any_pebble: PebbleServer
) -> None:
    # Debian's Pebble 2.4 advertises no profiles in its directory (no meta.profiles), the
    # current one only its "default" unless told otherwise.
    pebble = any_pebble
    offers = ", ".join(sorted(pebble.profiles())) or "none"
    world = World(tmp_path)
    world.store.create(obj=_acme_issuer(pebble, profile="shortlived"))

    world.reconcile_issuer("pebble")

    ready = _ready(world)
    assert (ready["status"], ready["reason"]) == ("False", "BadConfig")
    assert ready["message"] == (f"spec.acme.profile: ACME server {pebble.directory_url} does "
                                f"not offer profile 'shortlived' (offers: {offers})")
    world.add_certificate("web", issuer="pebble")
    world.reconcile("web")
    assert world.orders("web") == [], "no order for an issuer that is not ready"


def _top_issuer(chain_pem: bytes) -> str:
    top = x509.load_pem_x509_certificates(chain_pem)[-1]
    return str(top.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def _secret_chain(run: Any, name: str) -> bytes | None:
    secret = run.store.get(kind="Secret", namespace="default", name=name)
    return base64.b64decode(secret["data"]["tls.crt"]) if secret else None


def test_preferred_chain_selects_the_alternate_root_for_the_secret(
    tmp_path: Path, pebble_build: PebbleBuild
) -> None:
    with PebbleServer.start(tmp_path=tmp_path, http_port=free_port(), build=pebble_build,
                            env={"PEBBLE_ALTERNATE_ROOTS": "1", "PEBBLE_CHAIN_LENGTH": "2"}
                            ) as pebble:
        alternate = x509.load_pem_x509_certificate(pebble.issuance_roots_pem(index=1))
        alternate_cn = str(alternate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0]
                           .value)
        manifests = tmp_path / "manifests"
        manifests.mkdir()
        write_yaml(manifests / "all.yaml", _acme_issuer(pebble, preferredChain=alternate_cn),
                   ingress("web", hosts=["web.example.test"], secret_name="web-tls"))
        with serving(manifests=manifests, state_dir=tmp_path / "state", pebble=pebble) as run:
            chain = eventually(partial(_secret_chain, run, "web-tls"), what="the Secret")

    assert _top_issuer(chain) == alternate_cn
    assert len(x509.load_pem_x509_certificates(chain)) == 3  # leaf + 2 intermediates


def test_the_issuers_profile_shapes_the_certificate_and_a_left_out_common_name_is_no_mismatch(
    tmp_path: Path,
) -> None:
    # Current Pebble only (Debian's has no profiles), with profiles shaped after Let's
    # Encrypt's: "shortlived" certificates live 6 days and have no Common Name, even
    # when the CSR asks for one. That is no mismatch to order again for: one order, once.
    host = "web.example.test"
    profiles = {
        "classic": PebbleProfile(description="90 days, Common Name", promote_common_name=True),
        "shortlived": PebbleProfile(description="6 days, no Common Name",
                                    validity_period=6 * 24 * 3600),
    }
    with PebbleServer.start(tmp_path=tmp_path, http_port=free_port(), build="current",
                            profiles=profiles) as pebble:
        manifests = tmp_path / "manifests"
        manifests.mkdir()
        write_yaml(manifests / "all.yaml", _acme_issuer(pebble, profile="shortlived"),
                   ingress("web", hosts=[host], secret_name="web-tls", annotations={
                       "cert-manager.io/cluster-issuer": "pebble",
                       "cert-manager.io/common-name": host}))
        roots = pebble.issuance_roots_pem()
        with serving(manifests=manifests, state_dir=tmp_path / "state", pebble=pebble) as run:
            served = eventually(lambda: served_certificate(
                port=run.https_port, server_name=host, roots_pem=roots), what="the certificate")
            eventually(run.standalone.queue.idle, what="the controllers to settle")
            certificate = run.certificate("web-tls")
            ready = run.condition("web-tls", "Ready")
        issued = pebble.log_lines("Issued certificate serial")

    assert served.not_valid_after_utc - served.not_valid_before_utc == datetime.timedelta(
        days=6, seconds=-1)  # Pebble's notAfter is inclusive
    assert served.subject.get_attributes_for_oid(NameOID.COMMON_NAME) == []
    assert certificate is not None
    assert certificate["status"]["revision"] == 1
    assert ready["status"] == "True", ready
    assert len(issued) == 1, "no second order for the Common Name the profile leaves out"
