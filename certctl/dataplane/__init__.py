"""The embedded data plane: SNI certificates, TLS, routing, HTTP/1.1 and HTTP/2, proxying.

Its per-request modules (pyproject.toml, `[tool.certctl.mypyc]`) are compiled
with mypyc, by the package build (setup.py: `pip install .`, the wheel, the
image), and for the editable install by `scripts/compile.sh`, which puts the
wheel's compiled modules beside their sources: about half the CPU per request
of the same modules interpreted (bench B4).

Python imports a compiled module in preference to its source. Importing this
package decides, once, whether the compiled modules or the sources run, so that
a compiled module that cannot be trusted never stops a command. mypyc compiles
the modules together, into one library each module's own extension loads: a
compiled module calls the others' compiled code directly, whatever Python would
import for them, so one module that cannot be trusted makes them all run from
their sources:

- `CERTCTL_PURE_PYTHON=1`: every source runs, whatever is compiled beside it.
- in a source checkout, a compiled module older than its source (the source
  was edited since) would run code that is no longer there: the sources run,
  with one warning naming the files and the fix. In an installed wheel the
  times say nothing (pip writes a module's files in whatever order), and
  nobody edits those sources.
- a module compiled only for another Python (another file name suffix), or one
  this Python cannot load (ImportError: another build, a truncated file): the
  sources run, with a warning (after a module that did not load, those of the
  modules not imported yet).

`fallbacks` lists the modules running from source although compiled, and why,
so that a test can insist that none did.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import logging
import os
import sys
from collections.abc import Sequence
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path
from types import ModuleType

# Client connections held at once, as ingress-nginx's max-worker-connections. Here, not in
# `server`, so that the command line can offer it without importing the data plane.
DEFAULT_MAX_CONNECTIONS = 16_384

PURE_PYTHON = "CERTCTL_PURE_PYTHON"
COMPILE_HINT = "run scripts/compile.sh (or reinstall certctl) to compile it again"

logger = logging.getLogger(__name__)

# Module name -> why its source runs although a compiled module is there.
fallbacks: dict[str, str] = {}


def stale_compiled_modules(directory: Path) -> list[str]:
    """The sources in `directory` changed after the module compiled from them was built."""
    stale = []
    for suffix in EXTENSION_SUFFIXES:
        for compiled in directory.glob("*" + suffix):
            source = compiled.with_name(compiled.name.removesuffix(suffix) + ".py")
            if source.exists() and source.stat().st_mtime > compiled.stat().st_mtime:
                stale.append(source.name)
    return sorted(set(stale))


def foreign_compiled_modules(directory: Path) -> list[str]:
    """The compiled files in `directory` built only for another Python: this one ignores
    them, so their sources run (mypyc's own libraries, which have no source, are left out)."""
    foreign = []
    for compiled in directory.glob("*.so"):
        stem = compiled.name.split(".", 1)[0]
        if compiled.name.removeprefix(stem) in EXTENSION_SUFFIXES:
            continue
        if (directory / f"{stem}.py").exists() and _compiled_file(directory, stem) is None:
            foreign.append(compiled.name)
    return sorted(foreign)


def _compiled_file(directory: Path, stem: str) -> Path | None:
    """The file this Python would import for module `stem`, if it is a compiled one."""
    for suffix in EXTENSION_SUFFIXES:
        if (candidate := directory / (stem + suffix)).exists():
            return candidate
    return None


class _CompiledOrSource(importlib.abc.Loader):
    """Loads a compiled module, or its source when this Python cannot load the compiled one."""

    def __init__(self, *, name: str, compiled: Path, source: Path,
                 finder: _DataPlaneFinder) -> None:
        self._finder = finder
        self._compiled = importlib.machinery.ExtensionFileLoader(name, str(compiled))
        self._source = importlib.machinery.SourceFileLoader(name, str(source))
        self._from_source = False

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        try:
            module: ModuleType | None = self._compiled.create_module(spec)
        except ImportError as err:
            reason = f"{Path(self._compiled.path).name} does not load ({err})"
            fallbacks[spec.name] = reason
            logger.warning("certctl/dataplane: %s: running the sources instead (slower); %s",
                           reason, COMPILE_HINT)
            self._finder.run_sources(reason=f"{spec.name} did not load")
            self._from_source = True
            spec.origin = self._source.path  # so that __file__ names what runs
            return None
        return module

    def exec_module(self, module: ModuleType) -> None:
        if self._from_source:
            module.__file__ = self._source.path
            self._source.exec_module(module)
        else:
            self._compiled.exec_module(module)


class _DataPlaneFinder(importlib.abc.MetaPathFinder):
    """Finds this package's compiled modules before Python's own finder does, to run the
    source of those in `sources` and to fall back to it when a compiled one fails to load."""

    def __init__(self, *, directory: Path, sources: set[str]) -> None:
        self._directory = directory
        self._sources = sources

    def run_sources(self, *, reason: str) -> None:
        """From now on the compiled modules not imported yet run from their sources."""
        self._sources |= _siblings_fall_back(self._directory, skip=self._sources, reason=reason)

    def find_spec(self, fullname: str, path: Sequence[str] | None = None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        package, _, stem = fullname.rpartition(".")
        if package != __name__:
            return None
        source = self._directory / f"{stem}.py"
        compiled = _compiled_file(self._directory, stem)
        if compiled is None or not source.exists():
            return None  # nothing compiled (or nothing to fall back to): Python's own rules
        if stem in self._sources:
            return importlib.util.spec_from_file_location(fullname, source)
        loader = _CompiledOrSource(name=fullname, compiled=compiled, source=source,
                                   finder=self)
        return importlib.util.spec_from_file_location(fullname, compiled, loader=loader)


def _siblings_fall_back(directory: Path, *, skip: set[str], reason: str) -> set[str]:
    """The modules in `directory` with a source and a compiled file this Python loads, but
    those in `skip`, listed in `fallbacks` as run from their sources for `reason` (another
    module's: they were compiled with it)."""
    stems = {path.stem for path in directory.glob("*.py")
             if path.stem not in skip and _compiled_file(directory, path.stem) is not None}
    for stem in stems:
        fallbacks.setdefault(f"{__name__}.{stem}", f"compiled with the others: {reason}")
    return stems


def _choose(directory: Path) -> set[str]:
    """The modules whose sources must run although compiled ones are there: none, or all
    when one cannot be trusted (the module docstring says why); warns once."""
    if os.environ.get(PURE_PYTHON) == "1":
        return {path.stem for path in directory.glob("*.py")}
    reasons: dict[str, str] = {}  # module stem -> why its source runs
    # The times only mean something where the sources are edited: a checkout, which has
    # the project's pyproject.toml above the package.
    if (directory.parent.parent / "pyproject.toml").exists():
        for name in stale_compiled_modules(directory):
            reasons[name.removesuffix(".py")] = f"{directory / name} changed after it was compiled"
    for name in foreign_compiled_modules(directory):
        reasons[name.split(".", 1)[0]] = f"{directory / name} was compiled for another Python"
    if not reasons:
        return set()
    logger.warning("certctl/dataplane: %s: running the sources instead (slower); %s",
                   "; ".join(sorted(reasons.values())), COMPILE_HINT)
    fallbacks.update({f"{__name__}.{stem}": reason for stem, reason in reasons.items()})
    untrusted = set(reasons)
    return untrusted | _siblings_fall_back(directory, skip=untrusted,
                                           reason=", ".join(sorted(untrusted)))


sys.meta_path.insert(0, _DataPlaneFinder(directory=Path(__file__).parent,
                                         sources=_choose(Path(__file__).parent)))
