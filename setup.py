"""Build hook: compile the data plane's per-request modules with mypyc.

Everything else about the package is in pyproject.toml, including the list of
modules (`[tool.certctl.mypyc] modules`), which scripts/compile.sh reads too.
`pip install .`, `pip wheel .` and the image's build stage then ship the modules
the benchmarks measure (bench B4: about half the CPU per request).

Compiling is never required. mypyc runs when `build_ext` does, not when this
file is read (pip reads it three times per build: twice for metadata only); a
module mypyc cannot translate, a missing compiler or missing Python headers
leave that module out with a warning, and its source runs instead
(certctl/dataplane/__init__.py explains the fallback). An editable install
(`pip install -e .`) compiles nothing: its sources are the tree being edited,
and scripts/compile.sh compiles them in place, again after every edit.
`CERTCTL_PURE_PYTHON=1` builds a package of sources only.
"""

from __future__ import annotations

import functools
import os
import sys
import tomllib
from pathlib import Path
from typing import Any

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


@functools.cache  # one read of pyproject.toml per build: the modules, then the group
def _mypyc_settings() -> dict[str, Any]:
    with (ROOT / "pyproject.toml").open("rb") as file:
        settings: dict[str, Any] = tomllib.load(file)["tool"]["certctl"]["mypyc"]
    return settings


def compiled_modules() -> list[str]:
    """The paths, relative to the project, of the modules to compile."""
    modules: list[str] = _mypyc_settings()["modules"]
    return modules


def module_name(path: str) -> str:
    return path.removesuffix(".py").replace("/", ".")


class MypycBuildExt(build_ext):
    """build_ext whose extensions mypyc makes when it runs, each optional.

    Not earlier: setuptools finalizes build_ext for the metadata too (egg_info lists
    the extensions' sources), and mypyc takes most of a minute."""

    has_translated = False

    def run(self) -> None:
        if self.has_translated:
            super().run()
            return
        if self._skip_reason() is not None:
            self.extensions = []  # the placeholders are not extensions to build
            return
        self.distribution.ext_modules = mypyc_extensions(self)
        # build_ext prepares its extensions when it is finalized, which was with the
        # placeholders: a new one builds the real ones, and is the one later commands
        # (bdist_wheel, install_lib) ask for the files built.
        command = self.reinitialize_command("build_ext")
        assert isinstance(command, MypycBuildExt)
        command.has_translated = True
        command.ensure_finalized()
        command.run()

    def _skip_reason(self) -> str | None:
        reason = None
        if os.environ.get("CERTCTL_PURE_PYTHON") == "1":
            reason = "CERTCTL_PURE_PYTHON=1"
        elif self.editable_mode or self.inplace:
            reason = "an editable install runs its sources; scripts/compile.sh compiles them"
        if reason is not None:
            print(f"certctl: not compiling the data plane ({reason})", file=sys.stderr)
        return reason


_translated: list[Extension] | None = None


def mypyc_extensions(command: build_ext) -> list[Extension]:
    """The C extensions mypyc makes of the modules, translated once per build (setuptools
    finalizes more than one build_ext on the way to a wheel)."""
    global _translated  # a cache for this one process
    if _translated is None:
        _translated = _translate(command)
    return _translated


def _translate(command: build_ext) -> list[Extension]:
    try:
        from mypyc.build import mypycify
    except ImportError as err:
        command.warn(f"certctl: mypyc is not installed ({err}); the data plane runs from "
                     "its sources")
        return []
    try:
        # One group: calls, attribute reads and type checks between the modules are then
        # C calls and struct reads, not Python's (bench B4: about a tenth of the CPU per
        # request, against compiling each module on its own). The group's library is
        # named in the package (certctl/dataplane/_native__mypyc...so), not at the top of
        # site-packages, where mypyc puts it by default.
        built = mypycify(
            # Type-checked with mypy's defaults, not the project's strict settings, and with
            # the imports the build environment lacks as Any (of the dependencies, only those
            # the compiled modules import are installed to build: pyproject.toml's
            # build-system requires): strictness changes which errors are reported, not the
            # code generated, and mypyc checks values from those modules when they enter
            # typed code as it does for any module it did not compile. The modules it does
            # not compile are read for their types but not judged: with their dependencies
            # Any some are wrong (certctl/pki/keys.py's union of cryptography's key classes
            # is no type then), and that must not leave the data plane uncompiled.
            ["--config-file=", "--ignore-missing-imports", "--follow-imports=silent",
             *compiled_modules()],
            opt_level="3", group_name=_mypyc_settings()["group"],
            target_dir=str(Path("build") / "mypyc"))
    except (Exception, SystemExit) as err:  # mypyc exits on a type error
        command.warn(f"certctl: mypyc could not translate the data plane ({err}); it runs "
                     "from its sources")
        return []
    for extension in built:
        # A compiler error (no compiler, no Python headers) then skips the extension with a
        # warning instead of failing the install; without the group's library no module
        # loads, and the package runs the sources (certctl/dataplane/__init__.py).
        extension.optional = True
    return built


setup(
    # Placeholders, one per compiled module: they make the wheel platform-specific (it holds
    # C extensions) before build_ext knows what mypyc will produce.
    ext_modules=[Extension(module_name(path), sources=[]) for path in compiled_modules()],
    cmdclass={"build_ext": MypycBuildExt},
)
