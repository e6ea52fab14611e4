"""Secrets stay secret: no key or Secret value in logs, other files, objects or messages.

Real issuances run with the root logger at DEBUG, as `--log-level debug`
sets it, so every library's debug output is captured (acme's JWS bodies,
urllib3, botocore...): `certctl serve` in process with Pebble over
HTTP-01 and an external account binding, a ca issuer, broken Secrets and an
order left pending (umask 0, so file modes are certctl's own doing); DNS-01
through BIND with a right and a wrong TSIG secret; Route 53 with an assumed
role; `certctl controller` against the API emulator; and `certctl
--log-level debug serve` as a process, stdout and stderr. Then whatever
certctl said or wrote is searched for every secret it handled, in every
encoding a slip would produce: the value, its base64 (a Secret's data),
base64/base64url/hex of keys' private numbers at any byte alignment, PEM
lines holding them, with line breaks removed so reprs with `\\n` match too.
Key authorizations, CSRs, certificates and signatures are public.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import logging
import os
import re
import secrets as random_secrets
import signal
import stat
import subprocess
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import kubernetes.client
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from certctl.api import kinds
from certctl.solvers.dns01 import lookup, registry
from certctl.solvers.dns01 import solver as dns01_solver
from certctl.solvers.dns01.config import ProviderConfig
from certctl.solvers.dns01.credentials import SecretReader
from certctl.solvers.dns01.provider import ProviderContext, TxtRecord
from certctl.store.local import LocalStore
from tests.bind import BindServer
from tests.dns_apis.route53 import Route53Server
from tests.kube import Cluster, Deployment
from tests.pebble import PebbleServer, free_port
from tests.serving import (
    Serving,
    cluster_issuer,
    dns_names,
    eventually,
    ingress,
    served_certificate,
    write_yaml,
)
from tests.testca import TestCA

PUBLIC_FIELDS = ("tls.crt", "ca.crt")  # certificates: public by design
MIN_FORM = 16  # shorter strings could occur by chance


# --- what counts as a leak ---------------------------------------------------------


def _b64_cores(data: bytes) -> set[str]:
    """Text that any base64 or base64url encoding of something containing `data` contains.

    `data` may start at any byte offset of what was encoded: for each of the
    three alignments, the 4-character groups mixing in unknown neighbouring
    bytes are dropped.
    """
    forms = set()
    for shift in range(3):
        padded = bytes(shift) + data
        end = 4 * (len(padded) // 3)
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            core = encode(padded).decode()[4 if shift else 0:end]
            if len(core) >= MIN_FORM:
                forms.add(core)
    return forms


def _bytes_forms(data: bytes) -> set[str]:
    forms = _b64_cores(data)
    if len(data) <= 128:
        forms |= {data.hex(), data.hex().upper()}
    return {form for form in forms if len(form) >= MIN_FORM}


def _private_numbers(key: Any) -> list[bytes]:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        size = (key.curve.key_size + 7) // 8
        return [key.private_numbers().private_value.to_bytes(size, "big")]
    if isinstance(key, rsa.RSAPrivateKey):
        numbers = key.private_numbers()
        values = (numbers.d, numbers.p, numbers.q, numbers.dmp1, numbers.dmq1, numbers.iqmp)
        return [value.to_bytes((value.bit_length() + 7) // 8, "big") for value in values]
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return [key.private_bytes_raw()]
    raise AssertionError(f"no private numbers for {type(key).__name__}")


def _pem_blocks(text: str) -> list[bytes]:
    blocks = re.findall(r"-----BEGIN [A-Z ]+-----(.*?)-----END [A-Z ]+-----", text, re.S)
    found = []
    for body in blocks:
        try:
            found.append(base64.b64decode(re.sub(r"\s", "", body), validate=True))
        except binascii.Error:
            continue
    return found


def secret_forms(value: bytes) -> set[str]:
    """Every string whose presence in a log or file would give `value` (or its key) away."""
    forms = _bytes_forms(value)
    try:
        text = value.decode("ascii")
    except UnicodeDecodeError:
        return forms
    compact = re.sub(r"\s", "", text)
    if len(compact) >= MIN_FORM:
        forms.add(compact)
    for decode in (base64.b64decode, base64.urlsafe_b64decode):  # TSIG and EAB keys
        with contextlib.suppress(binascii.Error, ValueError):
            forms |= _bytes_forms(decode(compact + "=" * (-len(compact) % 4)))
    for der in _pem_blocks(text):
        forms |= _bytes_forms(der)
        try:
            key = serialization.load_der_private_key(der, password=None)
        except (ValueError, TypeError):
            continue
        body = base64.b64encode(der).decode()
        for number in _private_numbers(key):
            forms |= _bytes_forms(number)
            # A PEM line holding any of its bytes, as a log cut at a line break shows it.
            start = der.find(number)
            for first in range(start - start % 48, start + len(number), 48) if start >= 0 else ():
                forms.add(body[first // 3 * 4:(first + 48) // 3 * 4])
    return {form for form in forms if len(form) >= MIN_FORM}


@dataclass(frozen=True)
class Secret:
    label: str  # e.g. "Secret certctl/eab key 'secret'", never the value
    forms: frozenset[str]


def secrets_of(objects: Iterable[Mapping[str, Any]]) -> list[Secret]:
    """The secret values of Secret objects: `data` and `stringData`, certificates excepted."""
    found = []
    for obj in objects:
        metadata = obj.get("metadata") or {}
        where = f"Secret {metadata.get('namespace')}/{metadata.get('name')}"
        for field, encoded in (obj.get("data") or {}).items():
            if field not in PUBLIC_FIELDS and encoded:
                found.append(Secret(f"{where} key {field!r}",
                                    frozenset(secret_forms(base64.b64decode(encoded)))))
        for field, text in (obj.get("stringData") or {}).items():
            if field not in PUBLIC_FIELDS and text:
                found.append(Secret(f"{where} key {field!r}",
                                    frozenset(secret_forms(text.encode()))))
    return found


def _haystacks(text: str) -> tuple[str, str]:
    # Without whitespace and escaped line breaks, PEM lines and reprs read as one string.
    return text, re.sub(r"\s+|\\n|\\r", "", text)


def leaks(text: str, found_in: Iterable[Secret]) -> list[str]:
    """The labels of the secrets that `text` gives away, with where."""
    haystacks = _haystacks(text)
    reported = []
    for secret in found_in:
        for form in secret.forms:
            if any(form in haystack for haystack in haystacks):
                line = next((line for line in text.splitlines() if form in line), "")
                reported.append(f"{secret.label} (as {form[:12]}...): {line[:200]}")
                break
    return reported


def quoted_part(text: str, value: str, *, size: int = 16) -> str | None:
    """The first `size`-character piece of `value` that `text` quotes, if any."""
    for start in range(len(value) - size + 1):
        if value[start:start + size] in text:
            return value[start:start + size]
    return None


def _pem_of(key: Any) -> bytes:
    return bytes(key.private_bytes(serialization.Encoding.PEM,
                                   serialization.PrivateFormat.TraditionalOpenSSL,
                                   serialization.NoEncryption()))


def test_the_leak_search_finds_a_key_in_every_encoding_a_slip_would_produce():
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = _pem_of(key)
    secret = secrets_of([{"metadata": {"namespace": "default", "name": "web-tls"},
                          "data": {"tls.key": base64.b64encode(pem).decode()}}])
    der = _pem_blocks(pem.decode())[0]
    d_bytes = _private_numbers(key)[0]
    slips = [
        pem.decode(),  # the PEM as is
        repr(pem),  # a repr, line breaks escaped
        "data: {tls.key: " + base64.b64encode(pem).decode() + "}",  # the Secret's data value
        pem.decode().splitlines()[10],  # one line of the PEM body (within d)
        "JWK d=" + base64.urlsafe_b64encode(d_bytes).decode().rstrip("="),  # a JWK's "d"
        "x" + base64.b64encode(b"\x01" + der).decode(),  # embedded at another alignment
        hex(key.private_numbers().p),
    ]
    for slip in slips:
        assert leaks(f"DEBUG something: {slip} done", secret), slip
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    assert leaks(public.decode(), secret) == []

    tsig = base64.b64encode(random_secrets.token_bytes(32)).decode()
    tsig_secret = secrets_of([{"metadata": {"namespace": "certctl", "name": "tsig"},
                               "stringData": {"secret": tsig}}])
    assert leaks(f"key secret {tsig}", tsig_secret)
    assert leaks(base64.b64decode(tsig).hex(), tsig_secret)


# --- capturing everything ------------------------------------------------------------


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.NOTSET)
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        self.records: list[tuple[str, str]] = []  # (logger name, formatted record)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:  # a bad format string still shows what it carried
            line = f"{record.msg!r} {record.args!r}"
        self.records.append((record.name, line))

    @property
    def loggers(self) -> set[str]:
        return {name for name, _ in self.records}

    @property
    def text(self) -> str:
        """Every record, the test's own servers' (moto, the API emulator) included."""
        return "\n".join(line for _, line in self.records)


@contextlib.contextmanager
def debug_logs() -> Iterator[_Capture]:
    """Every record of every logger, as `certctl --log-level debug` configures logging.

    Only the root level is set: a logger certctl deliberately quietens stays
    quiet, as it would in production.
    """
    root = logging.getLogger()
    capture = _Capture()
    level = root.level
    root.addHandler(capture)
    root.setLevel(logging.DEBUG)
    logging.captureWarnings(True)
    try:
        yield capture
    finally:
        logging.captureWarnings(False)
        root.setLevel(level)
        root.removeHandler(capture)


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def _next_key_kept(secrets: Iterable[Mapping[str, Any]], certificate: str) -> bool:
    """Whether one of `secrets` (an order ledger) keeps the next private key of
    Certificate default/`certificate`."""
    return any(f"next-private-key.default.{certificate}" in (secret.get("data") or {})
               for secret in secrets)


def state_files(state_dir: Path) -> list[Path]:
    return sorted(path for path in state_dir.rglob("*") if path.is_file())


def secrets_in_state(state_dir: Path) -> dict[Path, list[Secret]]:
    """Each Secret file of the state dir, with the secret values it holds."""
    held = {}
    for path in (state_dir / "objects" / "Secret").rglob("*.yaml"):
        held[path] = secrets_of([yaml.safe_load(path.read_text())])
    return held


def secrets_in_manifests(manifests: Path) -> list[Secret]:
    documents = []
    for path in sorted(manifests.rglob("*.yaml")):
        with contextlib.suppress(yaml.YAMLError):  # a broken file on purpose
            documents += list(yaml.safe_load_all(path.read_text()))
    return secrets_of(document for document in documents
                      if document and document.get("kind") == "Secret")


def assert_private_modes(state_dir: Path) -> None:
    wrong = []
    for path in [state_dir, *state_dir.rglob("*")]:
        mode = stat.S_IMODE(path.lstat().st_mode)
        wanted = 0o700 if path.is_dir() else 0o600
        if mode != wanted or path.is_symlink():
            wrong.append(f"{path.relative_to(state_dir.parent)}: {oct(mode)}")
    assert wrong == [], "state dir entries not private (umask 0):\n" + "\n".join(wrong)


def assert_secrets_stay_in_their_files(state_dir: Path, manifest_secrets: list[Secret]) -> None:
    """A secret value may be in a file of a Secret that holds it, and in no other file."""
    held = secrets_in_state(state_dir)
    every = [secret for secrets in held.values() for secret in secrets] + manifest_secrets
    problems = []
    for path in state_files(state_dir):
        own_forms = {form for secret in held.get(path, []) for form in secret.forms}
        foreign = [secret for secret in every if not secret.forms & own_forms]
        problems += [f"{path.relative_to(state_dir)}: {leak}"
                     for leak in leaks(path.read_text(errors="replace"), foreign)]
    assert problems == [], "\n".join(problems)


def assert_objects_hold_no_secret(
    store: Any, secrets: list[Secret], *, also: tuple[str, ...] = ()
) -> None:
    """No Issuer status, Order, Challenge, Certificate, Ingress... carries a secret."""
    problems = []
    for kind in (*kinds.BY_KIND, *also):
        if kind == "Secret":
            continue
        for obj in store.list(kind=kind):
            name = f"{kind} {obj['metadata'].get('namespace')}/{obj['metadata']['name']}"
            problems += [f"{name}: {leak}" for leak in leaks(yaml.safe_dump(obj), secrets)]
    assert problems == [], "\n".join(problems)


# --- issuers and Secrets ---------------------------------------------------------------


def _random_b64url(size: int = 32) -> str:
    return base64.urlsafe_b64encode(random_secrets.token_bytes(size)).decode().rstrip("=")


def _opaque(namespace: str, name: str, **data: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": name, "namespace": namespace},
            "data": {field: base64.b64encode(value.encode()).decode()
                     for field, value in data.items()}}


def _tls_secret(namespace: str, name: str, *, crt: bytes, key: bytes) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": {"name": name, "namespace": namespace},
            "data": {"tls.crt": base64.b64encode(crt).decode(),
                     "tls.key": base64.b64encode(key).decode()}}


def _eab_issuer(pebble: PebbleServer, *, name: str, key_id: str) -> dict[str, Any]:
    issuer = cluster_issuer(pebble, name=name)
    issuer["spec"]["acme"]["externalAccountBinding"] = {
        "keyID": key_id, "keySecretRef": {"name": "eab", "key": "secret"}}
    return issuer


def _ca_issuer(
    name: str, secret_name: str, *, api_version: str = "cert-manager.io/v1"
) -> dict[str, Any]:
    return {"apiVersion": api_version, "kind": "ClusterIssuer",
            "metadata": {"name": name}, "spec": {"ca": {"secretName": secret_name}}}


def _certificate(name: str, issuer: str, *names: str, api_version: str = "cert-manager.io/v1",
                 **spec: Any) -> dict[str, Any]:
    return {"apiVersion": api_version, "kind": "Certificate",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"secretName": f"{name}-tls", "dnsNames": list(names),
                     "issuerRef": {"name": issuer, "kind": "ClusterIssuer"}, **spec}}


def _garbage_key_pem() -> bytes:
    body = base64.b64encode(random_secrets.token_bytes(96)).decode()
    return f"-----BEGIN EC PRIVATE KEY-----\n{body}\n-----END EC PRIVATE KEY-----\n".encode()


def _rfc2136_issuer(
    pebble: PebbleServer, *, name: str, nameserver: str, key_name: str, secret_name: str,
    eab_key_id: str | None = None,
) -> dict[str, Any]:
    issuer = (cluster_issuer(pebble, name=name) if eab_key_id is None
              else _eab_issuer(pebble, name=name, key_id=eab_key_id))
    issuer["spec"]["acme"]["solvers"] = [{"dns01": {"rfc2136": {
        "nameserver": nameserver, "tsigKeyName": key_name, "tsigAlgorithm": "HMACSHA256",
        "tsigSecretSecretRef": {"name": secret_name, "key": "secret"}}}}]
    return issuer


def _ready(store: Any, kind: str, name: str, namespace: str | None) -> dict[str, Any]:
    obj = store.get(kind=kind, namespace=namespace, name=name) or {}
    for condition in (obj.get("status") or {}).get("conditions") or []:
        if condition["type"] == "Ready":
            found: dict[str, Any] = condition
            return found
    return {}


def _ready_is(store: Any, kind: str, name: str, namespace: str | None, status: str) -> bool:
    return _ready(store, kind, name, namespace).get("status") == status


def _pebble_with_eab(tmp_path: Path, hmac_key: str) -> PebbleServer:
    return PebbleServer.start(tmp_path=tmp_path, http_port=free_port(), config={
        "externalAccountBindingRequired": True,
        "externalAccountMACKeys": {"kid-1": hmac_key},
    })


def _http01_manifests(manifests: Path, pebble: PebbleServer, *, hmac_key: str) -> str:
    """HTTP-01 + EAB, a ca issuer (RSA leaf), garbage keys, an order that stays pending.

    Also a Secret manifest with a YAML error on the line of its value, which
    is returned: the error about that file must not quote it.
    """
    broken = _random_b64url(60)
    (manifests / "broken.yaml").write_text(
        "apiVersion: v1\nkind: Secret\nmetadata: {name: broken, namespace: certctl}\n"
        f"stringData:\n  token: {broken}: [\n")
    ca = TestCA(common_name="certctl security test CA")
    write_yaml(
        manifests / "all.yaml",
        _eab_issuer(pebble, name="pebble", key_id="kid-1"),
        _opaque("certctl", "eab", secret=hmac_key),
        ingress("web", hosts=["web.example.test"], secret_name="web-tls"),
        _tls_secret("certctl", "ca-key-pair", crt=ca.pem, key=_pem_of(ca.key)),
        _ca_issuer("ca", "ca-key-pair"),
        _certificate("internal", "ca", "internal.example.test",
                     privateKey={"algorithm": "RSA", "size": 2048}),
        _tls_secret("certctl", "broken-ca-key-pair", crt=ca.pem, key=_garbage_key_pem()),
        _ca_issuer("broken-ca", "broken-ca-key-pair"),
        # DNS-01 to a port nothing listens on: the order is placed and never completes,
        # so the pending private key stays in its Secret.
        _rfc2136_issuer(pebble, name="stuck", nameserver=f"127.0.0.1:{free_port()}",
                        key_name="stuck-key", secret_name="stuck-tsig", eab_key_id="kid-1"),
        _opaque("certctl", "stuck-tsig", secret=base64.b64encode(
            random_secrets.token_bytes(32)).decode()),
        _certificate("pending", "stuck", "pending.example.test"),
        # An account key Secret someone filled with garbage.
        _eab_issuer(pebble, name="garbage-account", key_id="kid-1"),
        _tls_secret("certctl", "garbage-account-account", crt=ca.pem, key=_garbage_key_pem()),
    )
    return broken


# --- in process, every logger at DEBUG --------------------------------------------------


@dataclass
class Run:
    state_dir: Path
    manifests: Path
    log: _Capture
    store: Any
    broken_manifest_value: str


@pytest.fixture(scope="module")
def http01_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    """One `certctl serve` run in process under umask 0 and DEBUG logging, then stopped."""
    tmp_path = tmp_path_factory.mktemp("http01")
    hmac_key = _random_b64url()
    pebble = _pebble_with_eab(tmp_path, hmac_key)
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    state_dir = tmp_path / "state"
    try:
        broken = _http01_manifests(manifests, pebble, hmac_key=hmac_key)
        with umask(0), debug_logs() as log:
            run = Serving(manifests=manifests, state_dir=state_dir, pebble=pebble).start()
            try:
                store = run.store
                for name in ("web-tls", "internal"):
                    eventually(partial(_ready_is, store, "Certificate", name, "default", "True"),
                               timeout=60, what=f"Certificate {name} Ready")
                eventually(lambda: _next_key_kept(store.list(kind="Secret",
                                                             namespace="certctl"), "pending")
                           and store.list(kind="Order", namespace="default"),
                           timeout=60, what="the pending order and its private key")
                for issuer in ("broken-ca", "garbage-account"):
                    eventually(partial(_ready_is, store, "ClusterIssuer", issuer, None, "False"),
                               timeout=60, what=f"issuer {issuer} not Ready")
                roots = pebble.issuance_roots_pem()
                eventually(lambda: dns_names(served_certificate(
                    port=run.https_port, server_name="web.example.test", roots_pem=roots))
                    == ["web.example.test"], timeout=60, what="the certificate served")
            finally:
                run.stop()
        yield Run(state_dir=state_dir, manifests=manifests, log=log, store=store,
                  broken_manifest_value=broken)
    finally:
        pebble.stop()


def test_debug_logs_of_an_http01_eab_and_ca_issuance_hold_no_key_or_secret_value(
    http01_run: Run,
):
    log = http01_run.log
    # The capture saw the libraries' DEBUG output, JWS bodies included.
    assert {"acme.client", "urllib3.connectionpool"} <= log.loggers, sorted(log.loggers)
    assert "JWS payload" in log.text
    held = secrets_in_state(http01_run.state_dir)
    labels = {secret.label for secrets in held.values() for secret in secrets}
    # What must be searched for really was there: the account, tls, pending and kept keys.
    assert {"Secret certctl/pebble-account key 'tls.key'",
            "Secret default/web-tls key 'tls.key'", "Secret default/internal-tls key 'tls.key'",
            } <= labels, sorted(labels)
    assert any(label.startswith("Secret certctl/certctl-kept-") for label in labels)
    assert any(label.startswith("Secret certctl/certctl-orders-")
               and label.endswith(" key 'next-private-key.default.pending'")
               for label in labels), sorted(labels)
    every = [secret for secrets in held.values() for secret in secrets]
    every += secrets_in_manifests(http01_run.manifests)  # EAB, TSIG, CA key, garbage key
    assert leaks(log.text, every) == []
    # The manifest that does not parse is reported, without the line it stopped at.
    assert "broken.yaml: invalid YAML at line 5" in log.text
    assert quoted_part(log.text, http01_run.broken_manifest_value) is None


def test_key_files_are_0600_in_0700_folders_whatever_the_umask(http01_run: Run):
    # The run above used umask 0 and left an issued key, a kept copy, the account
    # key and a pending key behind.
    assert_private_modes(http01_run.state_dir)


def test_the_acme_account_key_is_in_its_secret_file_and_nowhere_else(http01_run: Run):
    state_dir = http01_run.state_dir
    account_file = state_dir / "objects" / "Secret" / "certctl" / "pebble-account.yaml"
    account_key = secrets_in_state(state_dir)[account_file]
    assert [secret.label for secret in account_key] == [
        "Secret certctl/pebble-account key 'tls.key'"]
    found_in = [path for path in state_files(state_dir)
                if leaks(path.read_text(errors="replace"), account_key)]
    assert found_in == [account_file]
    assert_objects_hold_no_secret(http01_run.store, account_key)


def test_no_secret_value_is_in_another_object_or_file_of_the_state_dir(http01_run: Run):
    manifest_secrets = secrets_in_manifests(http01_run.manifests)
    assert_secrets_stay_in_their_files(http01_run.state_dir, manifest_secrets)
    held = secrets_in_state(http01_run.state_dir)
    every = [secret for secrets in held.values() for secret in secrets] + manifest_secrets
    assert_objects_hold_no_secret(http01_run.store, every)


def test_a_garbage_ca_key_is_reported_by_secret_and_field_without_echoing_it(http01_run: Run):
    ready = _ready(http01_run.store, "ClusterIssuer", "broken-ca", None)
    assert ready["reason"] == "ErrGetKeyPair", ready
    assert "Secret certctl/broken-ca-key-pair: tls.key does not parse" in ready["message"]
    garbage = [secret for secret in secrets_in_manifests(http01_run.manifests)
               if secret.label == "Secret certctl/broken-ca-key-pair key 'tls.key'"]
    assert leaks(ready["message"], garbage) == []


def test_a_garbage_account_key_is_reported_by_secret_and_field_without_echoing_it(
    http01_run: Run,
):
    ready = _ready(http01_run.store, "ClusterIssuer", "garbage-account", None)
    assert (ready["status"], ready["reason"]) == ("False", "ErrRegisterACMEAccount"), ready
    assert ready["message"] == (
        "Failed to register ACME account: Secret certctl/garbage-account-account key"
        " 'tls.key': the private key is not a PEM-encoded key that can be read")
    # A condition and retries, not a crash: no traceback about it.
    assert not [line for _, line in http01_run.log.records
                if "garbage-account" in line and "Traceback" in line]


def test_an_unreadable_state_secret_is_reported_by_file_without_quoting_its_line(
    tmp_path: Path,
):
    # A Secret file cut short or hand-edited badly: YAML's own message would quote
    # the line it stopped at, here the key material.
    state_dir = tmp_path / "state"
    value = base64.b64encode(random_secrets.token_bytes(60)).decode()
    broken = {
        state_dir / "objects" / "Secret" / "default" / "web-tls.yaml":
            "apiVersion: v1\nkind: Secret\nmetadata: {name: web-tls, namespace: default}\n"
            f"data:\n  tls.key: {value}: [\n",
        state_dir / "status" / "Certificate" / "default" / "web-tls.yaml":
            f"conditions:\n- {{type: Ready, message: {value}\n",
    }
    for path, text in broken.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    with debug_logs() as log:
        store = LocalStore(manifests_dir=None, state_dir=state_dir)
    assert store.get(kind="Secret", namespace="default", name="web-tls") is None
    for path in broken:
        assert f"{path}: invalid YAML at line " in log.text, log.text
    assert quoted_part(log.text, value) is None, log.text


# --- DNS-01 with TSIG -----------------------------------------------------------------


@pytest.fixture
def bind(tmp_path: Path) -> Iterator[BindServer]:
    with BindServer.start(tmp_path=tmp_path) as server:
        yield server


def test_dns01_with_tsig_logs_neither_the_tsig_secret_nor_keys_and_a_wrong_one_is_named_only(
    tmp_path: Path, bind: BindServer
):
    pebble = PebbleServer.start(tmp_path=tmp_path, http_port=free_port(),
                                dns_server=bind.nameserver)
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    wrong = base64.b64encode(random_secrets.token_bytes(32)).decode()
    write_yaml(
        manifests / "all.yaml",
        _rfc2136_issuer(pebble, name="dns", nameserver=bind.nameserver,
                        key_name=bind.tsig_key_name, secret_name="tsig"),
        {**_opaque("certctl", "tsig"), "stringData": {"secret": bind.tsig_secret}},
        _rfc2136_issuer(pebble, name="dns-wrong", nameserver=bind.nameserver,
                        key_name=bind.tsig_key_name, secret_name="wrong-tsig"),
        _opaque("certctl", "wrong-tsig", secret=wrong),
        _rfc2136_issuer(pebble, name="dns-garbage", nameserver=bind.nameserver,
                        key_name=bind.tsig_key_name, secret_name="garbage-tsig"),
        _opaque("certctl", "garbage-tsig", secret=f"not base64: {_random_b64url()}!"),
        _certificate("wild", "dns", "example.test", "*.example.test"),
        _certificate("bad", "dns-wrong", "bad.example.test"),
        _certificate("garbage", "dns-garbage", "garbage.example.test"),
    )
    state_dir = tmp_path / "state"
    try:
        with umask(0), debug_logs() as log:
            run = Serving(manifests=manifests, state_dir=state_dir, pebble=pebble,
                          dns01=dns01_solver.Options(
                              recursive_nameservers=(lookup.parse_nameserver(bind.nameserver),),
                              recursive_nameservers_only=True)).start()
            try:
                eventually(lambda: run.condition("wild", "Ready").get("status") == "True",
                           timeout=60, what="the wildcard certificate")
                failed = eventually(lambda: run.condition("bad", "Issuing").get("reason")
                                    == "Failed" and run.condition("bad", "Issuing"),
                                    timeout=60, what="the wrong TSIG secret to fail")
                garbage = eventually(lambda: run.condition("garbage", "Issuing").get("reason")
                                     == "Failed" and run.condition("garbage", "Issuing"),
                                     timeout=60, what="the garbage TSIG secret to fail")
            finally:
                run.stop()
    finally:
        pebble.stop()
    assert "acme.client" in log.loggers
    assert ("the secret in Secret certctl/wrong-tsig key 'secret' does not match"
            in failed["message"]), failed["message"]
    assert ("Secret certctl/garbage-tsig key 'secret' is not a base64 TSIG secret"
            in garbage["message"]), garbage["message"]
    manifest_secrets = secrets_in_manifests(manifests)
    assert {secret.label for secret in manifest_secrets} == {
        "Secret certctl/tsig key 'secret'", "Secret certctl/wrong-tsig key 'secret'",
        "Secret certctl/garbage-tsig key 'secret'"}
    held = secrets_in_state(state_dir)
    every = [secret for secrets in held.values() for secret in secrets] + manifest_secrets
    assert leaks(failed["message"] + garbage["message"], every) == []
    assert leaks(log.text, every) == []
    assert_objects_hold_no_secret(run.store, every)
    assert_secrets_stay_in_their_files(state_dir, manifest_secrets)
    assert_private_modes(state_dir)


# --- DNS provider APIs -------------------------------------------------------------------


def test_route53_keys_and_the_assumed_role_credentials_stay_out_of_debug_logs(tmp_path: Path):
    # botocore logs requests (Authorization: ... Credential=<access key ID>) and responses
    # (STS: the role's SecretAccessKey and SessionToken) at DEBUG, unless certctl quietens it.
    access_key_id = "AKID" + random_secrets.token_hex(8).upper()
    secret_access_key = _random_b64url(30)
    server = Route53Server(zone="example.test")
    try:
        with debug_logs() as log:
            store = LocalStore(manifests_dir=None, state_dir=tmp_path / "state")
            store.create(obj=_opaque("certctl", "route53", **{
                "access-key-id": access_key_id, "secret-access-key": secret_access_key}))
            provider = registry.find_factory("route53")(
                config=ProviderConfig({
                    "region": "eu-west-1", "role": "arn:aws:iam::123456789012:role/dns01",
                    "accessKeyIDSecretRef": {"name": "route53", "key": "access-key-id"},
                    "secretAccessKeySecretRef": {"name": "route53", "key": "secret-access-key"},
                }, path="spec.acme.solvers[0].dns01.route53"),
                context=ProviderContext(
                    secrets=SecretReader(store=store, namespace="certctl"),
                    dns=lookup.DnsLookup(nameservers=(), timeout=1.0),
                    api_endpoints={"route53": server.base_url, "sts": server.base_url}))
            record = TxtRecord(dns_name="www.example.test", wildcard=False,
                               fqdn="_acme-challenge.www.example.test.", zone="example.test.",
                               value=_random_b64url())
            provider.present(record=record)
            provider.cleanup(record=record)
    finally:
        server.stop()
    assert "urllib3.connectionpool" in log.loggers  # DEBUG was on for the requests made
    assert "<SecretAccessKey>" not in log.text and "<SessionToken>" not in log.text
    assert leaks(log.text, secrets_of(store.list(kind="Secret"))) == []
    assert access_key_id not in log.text


# --- `certctl --log-level debug serve` as a process -------------------------------------


def test_certctl_serve_at_its_most_verbose_prints_no_key_or_secret_value(tmp_path: Path):
    hmac_key = _random_b64url()
    pebble = _pebble_with_eab(tmp_path, hmac_key)
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    state_dir = tmp_path / "state"
    https_port = free_port()
    stdout, stderr = tmp_path / "stdout", tmp_path / "stderr"
    try:
        broken = _http01_manifests(manifests, pebble, hmac_key=hmac_key)
        with stdout.open("wb") as out, stderr.open("wb") as err, umask(0):
            proc = subprocess.Popen(
                [sys.executable, "-m", "certctl", "--log-level", "debug", "serve",
                 "--manifests", str(manifests), "--state-dir", str(state_dir),
                 "--listen-address", "127.0.0.1", "--http-port", str(pebble.http_port),
                 "--https-port", str(https_port), "--self-check-address", "127.0.0.1",
                 "--backoff-base", "1"],
                stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            roots = pebble.issuance_roots_pem()
            eventually(lambda: "web.example.test" in dns_names(served_certificate(
                port=https_port, server_name="web.example.test", roots_pem=roots)),
                timeout=60, what="the certificate served")
            path = state_dir / "objects" / "Secret" / "default" / "internal-tls.yaml"
            eventually(path.exists, timeout=60, what="Secret internal-tls")
            eventually(lambda: _next_key_kept(
                [yaml.safe_load(path.read_text()) for path in
                 (state_dir / "objects" / "Secret" / "certctl").glob("*.yaml")], "pending"),
                timeout=60, what="the pending order's private key")
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(20) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    finally:
        pebble.stop()
    printed = stdout.read_text(errors="replace") + stderr.read_text(errors="replace")
    assert "DEBUG acme.client: " in printed and "DEBUG urllib3.connectionpool: " in printed
    held = secrets_in_state(state_dir)
    every = [secret for secrets in held.values() for secret in secrets]
    assert any(secret.label == "Secret certctl/pebble-account key 'tls.key'" for secret in every)
    every += secrets_in_manifests(manifests)
    assert leaks(printed, every) == []
    assert "broken.yaml: invalid YAML at line 5" in printed
    assert quoted_part(printed, broken) is None
    assert_private_modes(state_dir)


# --- `certctl controller` against the API emulator -----------------------------------------


class _ClusterWithToken(Cluster):
    """The emulator, reached with a bearer token of our choosing, to search the logs for."""

    def __init__(self, *, token: str) -> None:
        super().__init__()
        self.token = token

    def configuration(self) -> kubernetes.client.Configuration:
        configuration = super().configuration()
        configuration.api_key = {"authorization": f"Bearer {self.token}"}
        return configuration


def test_controller_debug_logs_hold_no_key_secret_value_or_api_token(pebble: PebbleServer):
    cluster = _ClusterWithToken(token=_random_b64url())
    cluster.start()
    api = cluster.store()
    ca = TestCA(common_name="certctl security test CA")
    try:
        with debug_logs() as log:
            deployment = Deployment(cluster=cluster, pebble=pebble).start()
            try:
                for obj in (
                    cluster_issuer(pebble, api_version="certctl.io/v1"),
                    ingress("web", hosts=["web.example.test"], secret_name="web-tls"),
                    _tls_secret("certctl", "ca-key-pair", crt=ca.pem, key=_pem_of(ca.key)),
                    _ca_issuer("ca", "ca-key-pair", api_version="certctl.io/v1"),
                    _certificate("internal", "ca", "internal.example.test",
                                 api_version="certctl.io/v1"),
                ):
                    api.create(obj=obj)
                for name in ("web-tls", "internal"):
                    eventually(partial(_ready_is, api, "Certificate", name, "default", "True"),
                               timeout=60, what=f"Certificate {name} Ready")
            finally:
                deployment.stop()
        found = secrets_of(obj for obj in cluster.objects("Secret"))
        labels = {secret.label for secret in found}
        assert {"Secret certctl/pebble-account key 'tls.key'",
                "Secret default/web-tls key 'tls.key'",
                "Secret default/internal-tls key 'tls.key'",
                "Secret certctl/ca-key-pair key 'tls.key'"} <= labels, sorted(labels)
        token = Secret("the API bearer token", frozenset(secret_forms(cluster.token.encode())))
        assert {"acme.client", "urllib3.connectionpool"} <= log.loggers
        assert leaks(log.text, [*found, token]) == []
        assert_objects_hold_no_secret(api, found, also=("Event", "Lease"))
    finally:
        api.close()
        cluster.stop()
