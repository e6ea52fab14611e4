"""DNS-01 provider plugins are found through the `certctl.dns01` entry-point group.

Each test installs a tiny distribution (a package and its `.dist-info` with
`entry_points.txt`) into a temporary folder put on sys.path: the same
metadata pip writes, read by the real `importlib.metadata`, nothing patched.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from certctl.solvers.dns01 import errors, lookup, registry
from certctl.solvers.dns01.config import ProviderConfig
from certctl.solvers.dns01.credentials import SecretReader
from certctl.solvers.dns01.provider import ProviderContext, TxtRecord
from certctl.solvers.dns01.providers import rfc2136
from certctl.store.local import LocalStore

# A provider keeping TXT values in a JSON file: everything a plugin needs to do,
# reading its config and a Secret through the context it is given.
PLUGIN_SOURCE = '''
import json
import subprocess
from pathlib import Path

from certctl.solvers.dns01 import errors


class FileProvider:
    def __init__(self, path, token):
        self.path = Path(path)
        self.token = token

    def _load(self):
        return json.loads(self.path.read_text()) if self.path.exists() else {}

    def present(self, *, record):
        records = self._load()
        values = records.setdefault(record.fqdn, [])
        if record.value not in values:
            values.append(record.value)
        self.path.write_text(json.dumps(records))

    def cleanup(self, *, record):
        records = self._load()
        records[record.fqdn] = [v for v in records.get(record.fqdn, []) if v != record.value]
        self.path.write_text(json.dumps(records))


def build(*, config, context):
    config.check_fields(known=("path", "tokenSecretRef"))
    token = context.secrets.read(config.required_secret_ref("tokenSecretRef"),
                                 field=config.field("tokenSecretRef"))
    return FileProvider(config.required_str("path"), token)
'''


def install_plugin(
    site: Path, *, distribution: str, providers: dict[str, str], source: str = PLUGIN_SOURCE
) -> str:
    """Write package `<distribution>` and its metadata into `site`; returns the module name.

    `providers` maps provider names to attributes of the package (`build`).
    """
    module = distribution.replace("-", "_")
    (site / module).mkdir(parents=True)
    (site / module / "__init__.py").write_text(source)
    dist_info = site / f"{module}-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {distribution}\nVersion: 1.0\n")
    lines = "\n".join(f"{name} = {module}:{attribute}" for name, attribute in providers.items())
    (dist_info / "entry_points.txt").write_text(f"[certctl.dns01]\n{lines}\n")
    return module


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "site-packages"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    return folder


def unique(prefix: str) -> str:
    """Provider names are remembered per process: each test gets names of its own."""
    return f"{prefix}{uuid.uuid4().hex[:8]}"


def test_built_in_providers_work_without_any_installed_metadata():
    assert registry.find_factory("rfc2136") is rfc2136.build
    assert registry.available()[:6] == ["rfc2136", "cloudflare", "route53", "digitalocean",
                                        "acmeDNS", "webhook"]


def test_a_provider_from_another_package_is_found_and_works(site: Path, tmp_path: Path):
    name = unique("file")
    module = install_plugin(site, distribution=unique("certctl-dns-file-"),
                            providers={name: "build"})

    assert name in registry.available()
    factory = registry.find_factory(name)
    assert sys.modules[module].__file__ == str(site / module / "__init__.py")
    store = LocalStore(manifests_dir=None, state_dir=tmp_path / "state")
    store.create(obj={"apiVersion": "v1", "kind": "Secret", "metadata": {
        "name": "file-token", "namespace": "certctl"},
        "data": {"token": base64.b64encode(b"t0ken").decode()}})
    records_file = tmp_path / "records.json"
    provider = factory(
        config=ProviderConfig({"path": str(records_file),
                               "tokenSecretRef": {"name": "file-token", "key": "token"}},
                              path=f"spec.acme.solvers[0].dns01.{name}"),
        context=ProviderContext(secrets=SecretReader(store=store, namespace="certctl"),
                                dns=lookup.DnsLookup()))
    record = TxtRecord(dns_name="example.test", wildcard=False,
                       fqdn="_acme-challenge.example.test.", zone="example.test.", value="v")
    provider.present(record=record)
    assert json.loads(records_file.read_text()) == {"_acme-challenge.example.test.": ["v"]}
    provider.cleanup(record=record)
    assert json.loads(records_file.read_text()) == {"_acme-challenge.example.test.": []}


def test_an_unknown_provider_name_lists_the_available_ones(site: Path):
    name = unique("listed")
    install_plugin(site, distribution=unique("certctl-dns-listed-"), providers={name: "build"})
    with pytest.raises(errors.ConfigError) as raised:
        registry.find_factory("nosuchprovider")
    message = str(raised.value)
    assert message.startswith("no DNS-01 provider named 'nosuchprovider'; available: rfc2136, "
                              "cloudflare, route53, digitalocean, acmeDNS, webhook")
    assert name in message
    assert "'certctl.dns01' entry-point group" in message


def test_a_package_cannot_take_over_a_built_in_provider_name(site: Path):
    install_plugin(site, distribution=unique("certctl-dns-evil-"), providers={"rfc2136": "build"})
    assert registry.find_factory("rfc2136") is rfc2136.build


def test_two_packages_claiming_one_name_is_an_error_naming_both(site: Path):
    name = unique("twice")
    first = unique("certctl-dns-one-")
    second = unique("certctl-dns-two-")
    install_plugin(site, distribution=first, providers={name: "build"})
    install_plugin(site, distribution=second, providers={name: "build"})
    with pytest.raises(errors.ConfigError) as raised:
        registry.find_factory(name)
    assert f"DNS-01 provider {name!r} is registered by several packages" in str(raised.value)
    assert f"{first} 1.0" in str(raised.value)
    assert f"{second} 1.0" in str(raised.value)


def test_a_plugin_that_fails_to_import_is_reported_not_raised(site: Path):
    name = unique("broken")
    install_plugin(site, distribution=unique("certctl-dns-broken-"), providers={name: "build"},
                   source="raise ImportError('needs libfoo')\n")
    with pytest.raises(errors.ConfigError,
                       match=f"DNS-01 provider '{name}' .* failed to load: ImportError: "
                             "needs libfoo"):
        registry.find_factory(name)


def test_route53_without_its_extra_says_which_extra_to_install():
    # A fresh interpreter where boto3 cannot be imported (None in sys.modules is how
    # Python marks a module as unimportable): what `pip install certctl` without the
    # route53 extra gives.
    script = (
        "import sys\n"
        "sys.modules['boto3'] = None\n"
        "from certctl.solvers.dns01 import errors, registry\n"
        "try:\n"
        "    registry.find_factory('route53')\n"
        "except errors.ConfigError as err:\n"
        "    print(err)\n"
        "print(registry.find_factory('rfc2136').__module__)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, check=True)
    lines = done.stdout.splitlines()
    assert "pip install 'certctl[route53]'" in lines[0]
    assert "'route53' needs boto3" in lines[0]
    assert lines[1] == "certctl.solvers.dns01.providers.rfc2136"
