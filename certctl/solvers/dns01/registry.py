"""DNS providers by name: the built-in ones, and plugins from the `certctl.dns01` entry points.

A third-party provider is a separate distribution declaring, in its
pyproject.toml,

    [project.entry-points."certctl.dns01"]
    myprovider = "certctl_myprovider:build"

after which `dns01: {myprovider: {...}}` in an issuer uses it, with no
change to certctl. The names of the built-in providers (cert-manager's
spelling: `rfc2136`, `cloudflare`, `route53`, `digitalocean`, `acmeDNS`,
`webhook`) always mean the built-in ones: an installed package cannot
silently take over where credentials go. certctl lists its own providers as
entry points too, so the group shows every provider; they resolve to the
same objects, and the built-ins work even when certctl's own metadata is
not installed (running from a source tree).
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import logging
from typing import Final, cast

from certctl.solvers.dns01 import errors
from certctl.solvers.dns01.provider import ProviderFactory

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP: Final = "certctl.dns01"
BUILT_IN: Final = {
    "rfc2136": "certctl.solvers.dns01.providers.rfc2136:build",
    "cloudflare": "certctl.solvers.dns01.providers.cloudflare:build",
    "route53": "certctl.solvers.dns01.providers.route53:build",
    "digitalocean": "certctl.solvers.dns01.providers.digitalocean:build",
    "acmeDNS": "certctl.solvers.dns01.providers.acmedns:build",
    "webhook": "certctl.solvers.dns01.providers.webhook:build",
}
# Built-in providers whose client library is an optional extra of the package
# (`pip install 'certctl[route53]'`): most installations never talk to AWS.
EXTRA_OF: Final = {"route53": ("route53", "boto3")}


def find_factory(name: str) -> ProviderFactory:
    """The factory registered as `name`; ConfigError naming the known ones if there is none.

    Found factories are remembered for the life of the process: entry points
    are read from the installed distributions' metadata, which costs a scan
    of sys.path, and installing a plugin means restarting anyway.
    """
    built_in = BUILT_IN.get(name)
    if built_in is None:
        return _plugin(name)
    try:
        return _load(built_in)
    except ModuleNotFoundError as err:
        extra = EXTRA_OF.get(name)
        if extra is None or err.name != extra[1]:
            raise
        raise errors.ConfigError(
            f"the DNS-01 provider {name!r} needs {extra[1]}, which is not installed:"
            f" pip install 'certctl[{extra[0]}]' (the image has it)") from err


def available() -> list[str]:
    """Every provider name that `find_factory` accepts, built-in first."""
    plugins = sorted({ep.name for ep in _entry_points()} - set(BUILT_IN))
    return [*BUILT_IN, *plugins]


@functools.cache
def _load(target: str) -> ProviderFactory:
    module_name, _, attribute = target.partition(":")
    module = importlib.import_module(module_name)
    return cast(ProviderFactory, getattr(module, attribute))


@functools.cache
def _plugin(name: str) -> ProviderFactory:
    found = [ep for ep in _entry_points() if ep.name == name]
    if not found:
        raise errors.ConfigError(
            f"no DNS-01 provider named {name!r}; available: {', '.join(available())}"
            f" (plugins register in the {ENTRY_POINT_GROUP!r} entry-point group)")
    targets = {ep.value for ep in found}
    if len(targets) > 1:
        owners = sorted(_distribution_of(ep) for ep in found)
        raise errors.ConfigError(
            f"DNS-01 provider {name!r} is registered by several packages"
            f" ({', '.join(owners)}); uninstall all but one")
    try:
        loaded = found[0].load()
    except Exception as err:  # a broken plugin must not take the controller down
        raise errors.ConfigError(
            f"DNS-01 provider {name!r} ({found[0].value}, from {_distribution_of(found[0])})"
            f" failed to load: {type(err).__name__}: {err}") from err
    if not callable(loaded):
        raise errors.ConfigError(
            f"DNS-01 provider {name!r} ({found[0].value}) is not callable; the entry point"
            " must name a factory taking config= and context=")
    return cast(ProviderFactory, loaded)


def _entry_points() -> list[importlib.metadata.EntryPoint]:
    return list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))


def _distribution_of(entry_point: importlib.metadata.EntryPoint) -> str:
    dist = entry_point.dist
    return f"{dist.name} {dist.version}" if dist is not None else entry_point.value
