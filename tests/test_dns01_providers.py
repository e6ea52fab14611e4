"""Every built-in DNS-01 provider through one present/cleanup contract, against real servers.

rfc2136 talks to BIND; route53 to moto in server mode; cloudflare,
digitalocean, acme-dns and webhook to local servers speaking those APIs
(tests/dns_apis). Providers are built the way certctl builds them: by name
from the registry, from a cert-manager-shaped configuration, with
credentials read from Secrets in a real store.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from certctl.solvers.dns01 import errors, lookup, registry
from certctl.solvers.dns01.config import ProviderConfig
from certctl.solvers.dns01.credentials import SecretReader
from certctl.solvers.dns01.provider import Provider, ProviderContext, TxtRecord
from certctl.store.local import LocalStore
from tests.bind import BindServer
from tests.dns_apis.acmedns import AcmeDnsServer
from tests.dns_apis.cloudflare import CloudflareApi
from tests.dns_apis.digitalocean import DigitalOceanApi
from tests.dns_apis.records import RecordStore
from tests.dns_apis.route53 import ACCESS_KEY_ID, SECRET_ACCESS_KEY, Route53Server
from tests.dns_apis.webhook import WebhookServer

NAMESPACE = "certctl"
ZONE = "example.test"
FQDN = "_acme-challenge.www.example.test."


def txt_value(seed: str) -> str:
    """A value shaped like a real DNS-01 one: base64url(SHA-256), 43 characters."""
    return base64.urlsafe_b64encode(hashlib.sha256(seed.encode()).digest()).rstrip(b"=").decode()


APEX, WILDCARD, FOREIGN = txt_value("apex"), txt_value("wildcard"), txt_value("someone else")


def secret(name: str, **values: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": name, "namespace": NAMESPACE},
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in values.items()}}


@dataclass(kw_only=True)
class Backend:
    """One provider, its configuration as an issuer would hold it, and a view of its records."""

    name: str
    config: dict[str, Any]
    secrets: list[dict[str, Any]]
    txt_values: Callable[[str], list[str]]
    fqdn: str = FQDN
    zone: str = ZONE + "."
    dns_name: str = "www.example.test"
    api_endpoints: dict[str, str] = field(default_factory=dict)
    nameservers: tuple[lookup.Nameserver, ...] = ()
    add_foreign: Callable[[str, str], object] | None = None
    cleanup_removes: bool = True

    def record(self, value: str, *, wildcard: bool = False) -> TxtRecord:
        return TxtRecord(dns_name=self.dns_name, wildcard=wildcard, fqdn=self.fqdn,
                         zone=self.zone, value=value)


def build(backend: Backend, tmp_path: Path, *, config: dict[str, Any] | None = None) -> Provider:
    store = LocalStore(manifests_dir=None, state_dir=tmp_path / "state")
    for obj in backend.secrets:
        store.create(obj=obj)
    context = ProviderContext(
        secrets=SecretReader(store=store, namespace=NAMESPACE),
        dns=lookup.DnsLookup(nameservers=backend.nameservers, timeout=1.0),
        api_endpoints=backend.api_endpoints, timeout=5.0)
    factory = registry.find_factory(backend.name)
    return factory(config=ProviderConfig(config if config is not None else backend.config,
                                         path=f"spec.acme.solvers[0].dns01.{backend.name}"),
                   context=context)


# --- backends -------------------------------------------------------------------------


@pytest.fixture
def bind(tmp_path: Path) -> Iterator[BindServer]:
    with BindServer.start(tmp_path=tmp_path) as server:
        yield server


def rfc2136_backend(bind: BindServer) -> Backend:
    return Backend(
        name="rfc2136",
        config={"nameserver": bind.nameserver, "tsigKeyName": bind.tsig_key_name,
                "tsigAlgorithm": "HMACSHA256",
                "tsigSecretSecretRef": {"name": "tsig", "key": "secret"}},
        secrets=[secret("tsig", secret=bind.tsig_secret)],
        txt_values=lambda fqdn: sorted(bind.txt_values(fqdn)),
        add_foreign=lambda fqdn, value: bind.add_txt(zone=ZONE, fqdn=fqdn, value=value),
    )


@contextlib.contextmanager
def cloudflare_backend() -> Iterator[Backend]:
    store = RecordStore(zones=(ZONE, "other.test"))
    api = CloudflareApi(store=store, token="cf-token-123")
    try:
        yield Backend(
            name="cloudflare",
            config={"apiTokenSecretRef": {"name": "cloudflare", "key": "api-token"}},
            secrets=[secret("cloudflare", **{"api-token": api.token})],
            txt_values=store.txt_values,
            api_endpoints={"cloudflare": api.base_url},
            add_foreign=lambda fqdn, value: _add(store, fqdn, value),
        )
    finally:
        api.stop()


@contextlib.contextmanager
def digitalocean_backend() -> Iterator[Backend]:
    store = RecordStore(zones=(ZONE,))
    api = DigitalOceanApi(store=store, token="do-token-456")
    try:
        yield Backend(
            name="digitalocean",
            config={"tokenSecretRef": {"name": "digitalocean", "key": "access-token"}},
            secrets=[secret("digitalocean", **{"access-token": api.token})],
            txt_values=store.txt_values,
            api_endpoints={"digitalocean": api.base_url},
            add_foreign=lambda fqdn, value: _add(store, fqdn, value),
        )
    finally:
        api.stop()


@contextlib.contextmanager
def route53_backend() -> Iterator[Backend]:
    server = Route53Server(zone=ZONE)
    try:
        yield Backend(
            name="route53",
            config={"region": "eu-west-1", "accessKeyID": ACCESS_KEY_ID,
                    "secretAccessKeySecretRef": {"name": "route53", "key": "secret-access-key"}},
            secrets=[secret("route53", **{"secret-access-key": SECRET_ACCESS_KEY})],
            txt_values=server.txt_values,
            api_endpoints={"route53": server.base_url, "sts": server.base_url},
            add_foreign=lambda fqdn, value: server.client.change_resource_record_sets(
                HostedZoneId=server.zone_id, ChangeBatch={"Changes": [{
                    "Action": "CREATE", "ResourceRecordSet": {
                        "Name": fqdn, "Type": "TXT", "TTL": 300,
                        "ResourceRecords": [{"Value": f'"{value}"'}]}}]}),
        )
    finally:
        server.stop()


@contextlib.contextmanager
def acmedns_backend() -> Iterator[Backend]:
    server = AcmeDnsServer()
    try:
        account = requests.post(f"{server.base_url}/register", timeout=5).json()
        yield Backend(
            name="acmeDNS",
            config={"host": server.base_url,
                    "accountSecretRef": {"name": "acme-dns", "key": "acmedns.json"}},
            secrets=[secret("acme-dns", **{"acmedns.json": json.dumps(
                {"www.example.test": account})})],
            txt_values=server.store.txt_values,
            # certctl followed _acme-challenge.www.example.test's CNAME to here:
            fqdn=account["fulldomain"] + ".",
            zone=server.domain + ".",
            nameservers=(lookup.Nameserver(host="127.0.0.1", port=server.dns_port),),
            cleanup_removes=False,  # acme-dns has no delete; values age out
        )
    finally:
        server.stop()


@contextlib.contextmanager
def webhook_backend() -> Iterator[Backend]:
    store = RecordStore(zones=(ZONE,))
    server = WebhookServer(store=store, group="acme.example.test", solver="test-dns",
                           api_key="webhook-key")
    try:
        yield Backend(
            name="webhook",
            config={"groupName": server.group, "solverName": server.solver,
                    "config": {"apiKey": server.api_key}},
            secrets=[],
            txt_values=store.txt_values,
            api_endpoints={"webhook": server.base_url},
            add_foreign=lambda fqdn, value: _add(store, fqdn, value),
        )
    finally:
        server.stop()


def _add(store: RecordStore, fqdn: str, value: str) -> None:
    store.add(zone=ZONE, name=fqdn, type="TXT", content=value, ttl=60)


HTTP_BACKENDS: dict[str, Callable[[], contextlib.AbstractContextManager[Backend]]] = {
    "cloudflare": cloudflare_backend,
    "route53": route53_backend,
    "digitalocean": digitalocean_backend,
    "acmeDNS": acmedns_backend,
    "webhook": webhook_backend,
}


@pytest.fixture(params=["rfc2136", *HTTP_BACKENDS])
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    if request.param == "rfc2136":
        yield rfc2136_backend(request.getfixturevalue("bind"))
        return
    with HTTP_BACKENDS[request.param]() as found:
        yield found


# --- the contract ---------------------------------------------------------------------


def test_every_built_in_provider_is_registered_under_its_cert_manager_name():
    assert set(registry.available()) >= {"rfc2136", "cloudflare", "route53", "digitalocean",
                                         "acmeDNS", "webhook"}


def test_present_is_idempotent_values_coexist_and_cleanup_removes_only_ours(
    backend: Backend, tmp_path: Path
):
    provider = build(backend, tmp_path)
    fqdn = backend.fqdn
    if backend.add_foreign is not None:
        backend.add_foreign(fqdn, FOREIGN)
    theirs = [FOREIGN] if backend.add_foreign is not None else []

    provider.present(record=backend.record(APEX))
    assert sorted(backend.txt_values(fqdn)) == sorted([*theirs, APEX])
    provider.present(record=backend.record(APEX))
    assert sorted(backend.txt_values(fqdn)) == sorted([*theirs, APEX]), "present twice, once"

    # example.com and *.example.com of one order: two values at the same name.
    provider.present(record=backend.record(WILDCARD, wildcard=True))
    assert sorted(backend.txt_values(fqdn)) == sorted([*theirs, APEX, WILDCARD])

    provider.cleanup(record=backend.record(APEX))
    left = [*theirs, WILDCARD] if backend.cleanup_removes else [*theirs, APEX, WILDCARD]
    assert sorted(backend.txt_values(fqdn)) == sorted(left)
    provider.cleanup(record=backend.record(APEX))  # again: nothing to do, no error
    assert sorted(backend.txt_values(fqdn)) == sorted(left)

    provider.cleanup(record=backend.record(WILDCARD, wildcard=True))
    assert sorted(backend.txt_values(fqdn)) == sorted(
        theirs if backend.cleanup_removes else [*theirs, APEX, WILDCARD])


# --- credentials and configuration ----------------------------------------------------


def _rejected(backend: Backend) -> tuple[dict[str, Any], str]:
    """The backend's configuration with a wrong credential, and the wrong value."""
    wrong = "wrong-" + txt_value("wrong")[:20]
    if backend.name == "rfc2136":
        wrong = base64.b64encode(b"w" * 32).decode()
    for obj in backend.secrets:
        for key in obj["data"]:
            if backend.name == "acmeDNS":
                accounts = json.loads(base64.b64decode(obj["data"][key]))
                for account in accounts.values():
                    account["password"] = wrong
                obj["data"][key] = base64.b64encode(json.dumps(accounts).encode()).decode()
            else:
                obj["data"][key] = base64.b64encode(wrong.encode()).decode()
    return backend.config, wrong


@pytest.mark.parametrize("name", ["rfc2136", "cloudflare", "digitalocean", "acmeDNS"])
def test_refused_credentials_fail_for_good_with_a_message_that_says_so(
    name: str, request: pytest.FixtureRequest, tmp_path: Path
):
    bind = request.getfixturevalue("bind") if name == "rfc2136" else None
    with (contextlib.nullcontext(rfc2136_backend(bind)) if bind is not None
          else HTTP_BACKENDS[name]()) as backend:
        config, wrong = _rejected(backend)
        provider = build(backend, tmp_path, config=config)
        with pytest.raises(errors.CredentialsRejected) as raised:
            provider.present(record=backend.record(APEX))
        assert raised.value.permanent
        assert wrong not in str(raised.value), "secrets never appear in messages"
        assert backend.txt_values(backend.fqdn) == [], "a refused present leaves nothing"
    if name == "rfc2136":
        assert "(BADSIG)" in str(raised.value)
        assert "the secret in Secret certctl/tsig key 'secret' does not match" in str(
            raised.value)
        assert bind is not None and bind.nameserver in str(raised.value)
    else:
        assert "(the credentials were refused)" in str(raised.value)


def test_an_unknown_tsig_key_name_is_named_in_the_error(bind: BindServer, tmp_path: Path):
    backend = rfc2136_backend(bind)
    provider = build(backend, tmp_path, config={**backend.config, "tsigKeyName": "nobody"})
    with pytest.raises(errors.CredentialsRejected, match=r"does not know TSIG key 'nobody'.*"
                                                         r"\(BADKEY\)"):
        provider.present(record=backend.record(APEX))


def test_rfc2136_signs_with_hmac_sha512_over_tcp(tmp_path: Path):
    with BindServer.start(tmp_path=tmp_path, tsig_algorithm="hmac-sha512") as bind:
        backend = rfc2136_backend(bind)
        provider = build(backend, tmp_path, config={
            **backend.config, "tsigAlgorithm": "HMACSHA512", "protocol": "TCP"})
        provider.present(record=backend.record(APEX))
        assert bind.txt_values(FQDN) == {APEX}
        provider.cleanup(record=backend.record(APEX))
        assert bind.txt_values(FQDN) == set()


@pytest.mark.parametrize(("config", "message"), [
    ({"tsigKeyName": "k", "tsigSecretSecretRef": {"name": "tsig", "key": "secret"}},
     "spec.acme.solvers[0].dns01.rfc2136.nameserver: is required"),
    ({"nameserver": "[::1", "tsigKeyName": "k"},
     "spec.acme.solvers[0].dns01.rfc2136.nameserver: '[::1': write an IPv6 address as"),
    ({"nameserver": "127.0.0.1:53", "tsigKeyName": "k"},
     "spec.acme.solvers[0].dns01.rfc2136.tsigSecretSecretRef: is required when tsigKeyName"),
    ({"nameserver": "127.0.0.1", "tsigKeyName": "k", "tsigAlgorithm": "HMACSHA3",
      "tsigSecretSecretRef": {"name": "tsig", "key": "secret"}},
     "tsigAlgorithm: 'HMACSHA3' is not supported; use one of HMACMD5, HMACSHA1"),
    ({"nameserver": "127.0.0.1", "tsigKeyName": "k",
      "tsigSecretSecretRef": {"name": "absent", "key": "secret"}},
     "dns01.rfc2136.tsigSecretSecretRef: Secret certctl/absent not found"),
    ({"nameserver": "127.0.0.1", "tsigKeyName": "k",
      "tsigSecretSecretRef": {"name": "tsig", "key": "other"}},
     "dns01.rfc2136.tsigSecretSecretRef: Secret certctl/tsig has no key 'other'"),
    ({"nameserver": "127.0.0.1", "tsigKeyNam": "k"},
     "dns01.rfc2136.tsigKeyNam: unknown field; did you mean 'tsigKeyName'?"),
])
def test_rfc2136_configuration_errors_name_the_field(
    config: dict[str, Any], message: str, bind: BindServer, tmp_path: Path
):
    with pytest.raises(errors.ConfigError) as raised:
        build(rfc2136_backend(bind), tmp_path, config=config)
    assert message in str(raised.value)


@pytest.mark.parametrize(("name", "config", "message"), [
    ("cloudflare", {"email": "me@example.test"},
     "dns01.cloudflare: exactly one of apiTokenSecretRef or apiKeySecretRef must be set"),
    ("cloudflare", {"apiKeySecretRef": {"name": "cloudflare", "key": "api-token"}},
     "dns01.cloudflare.email: is required with apiKeySecretRef"),
    ("digitalocean", {}, "dns01.digitalocean.tokenSecretRef: is required"),
    ("route53", {"region": "eu-west-1"}, "dns01.route53: no credentials: set accessKeyID"),
    ("route53", {"accessKeyID": "AKID", "auth": {"kubernetes": {}}},
     "dns01.route53.auth: is a cert-manager field certctl does not support"),
    ("webhook", {"groupName": "acme.example.test"}, "dns01.webhook.solverName: is required"),
    ("acmeDNS", {"host": "auth.example.test", "accountSecretRef": {"name": "a", "key": "b"}},
     "dns01.acmeDNS.host: 'auth.example.test' must be a URL"),
])
def test_provider_configuration_errors_name_the_field(
    name: str, config: dict[str, Any], message: str, tmp_path: Path
):
    backend = Backend(name=name, config=config, secrets=[], txt_values=lambda fqdn: [])
    with pytest.raises(errors.ConfigError) as raised:
        build(backend, tmp_path)
    assert message in str(raised.value)


def test_webhook_without_an_api_url_says_which_setting_is_missing(tmp_path: Path):
    backend = Backend(name="webhook", config={"groupName": "acme.example.test",
                                              "solverName": "x"},
                      secrets=[], txt_values=lambda fqdn: [])
    with pytest.raises(errors.ConfigError, match="--dns01-webhook-url"):
        build(backend, tmp_path)


def test_webhook_failure_reason_is_passed_on(tmp_path: Path):
    with webhook_backend() as backend:
        provider = build(backend, tmp_path, config={**backend.config,
                                                    "config": {"apiKey": "wrong"}})
        with pytest.raises(errors.TemporaryError,
                           match="webhook acme.example.test/test-dns failed to present TXT "
                                 r"_acme-challenge.www.example.test.: invalid apiKey"):
            provider.present(record=backend.record(APEX))


def test_acme_dns_refuses_a_name_whose_cname_is_missing(tmp_path: Path):
    with acmedns_backend() as backend:
        provider = build(backend, tmp_path)
        record = TxtRecord(dns_name="www.example.test", wildcard=False, fqdn=FQDN,
                           zone=ZONE + ".", value=APEX)
        with pytest.raises(errors.ConfigError,
                           match=r"_acme-challenge.www.example.test. must be a CNAME to "
                                 r"[0-9a-f-]+.auth.acme-dns.test."):
            provider.present(record=record)
        unknown = TxtRecord(dns_name="other.example.test", wildcard=False, fqdn=backend.fqdn,
                            zone=backend.zone, value=APEX)
        with pytest.raises(errors.ConfigError, match=r"has no account for other\.example\.test"):
            provider.present(record=unknown)


def test_route53_assumes_the_configured_role(tmp_path: Path):
    with route53_backend() as backend:
        provider = build(backend, tmp_path, config={
            **backend.config, "role": "arn:aws:iam::123456789012:role/dns01"})
        provider.present(record=backend.record(APEX))
        assert backend.txt_values(FQDN) == [APEX]
        provider.cleanup(record=backend.record(APEX))
        assert backend.txt_values(FQDN) == []


def test_cloudflare_finds_the_account_zone_above_a_delegated_soa_zone(tmp_path: Path):
    """The SOA walk may stop at a sub-zone Cloudflare does not host separately."""
    with cloudflare_backend() as backend:
        provider = build(backend, tmp_path)
        record = TxtRecord(dns_name="www.example.test", wildcard=False, fqdn=FQDN,
                           zone="www.example.test.", value=APEX)
        provider.present(record=record)
        assert backend.txt_values(FQDN) == [APEX]
