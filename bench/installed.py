"""certctl as its users install it, for the benchmarks that measure the shipped commands.

`install` builds this checkout's wheel for the interpreter chosen (scripts/wheel.py: as
`pip install .` and the image's build stage build it, the data plane compiled by
setup.py) and installs it, with its dependencies from the package index, into a new
virtualenv of that interpreter; `certctl serve` and `certctl dataplane` then start from
that virtualenv's console script, not from the checkout.

The interpreter is part of what is measured: the data plane's per-request work is
compiled, but every call it makes into Python's objects runs the interpreter's own code.
The default is the distribution's `/usr/bin/python3`, which `pip install` users on
Debian get; Debian builds it, as the image's `python:3.11-slim` is built, with
profile-guided and link-time optimisation. A development interpreter may have
neither (pyenv builds without them by default): `--python` measures another one.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from scripts import wheel as wheel_build

DEFAULT_PYTHON: Final = "/usr/bin/python3"


class InstallError(Exception):
    """The package could not be installed as its users install it, or came out uncompiled."""


@dataclass(frozen=True)
class Installed:
    """An installed certctl, and what the machine table says it ran on."""

    command: tuple[str, ...]  # what starts `certctl`: the virtualenv's console script
    interpreter: str  # version and executable
    openssl: str  # the one the interpreter's ssl module was built with
    libraries: str  # "uvloop / httptools" versions, as pip resolved them


def missing(python: str) -> str | None:
    """Why `python` cannot make the virtualenv `install` needs, or None."""
    try:
        found = subprocess.run([python, "-c", "import ensurepip, venv"], capture_output=True,
                               text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"no interpreter {python} ({err})"
    if found.returncode:
        return f"{python} cannot make a virtualenv with pip (apt-get install -y python3-venv)"
    return None


def install(*, python: str, into: Path) -> Installed:
    """certctl's wheel for `python`, installed into a new virtualenv at `into`."""
    try:
        wheel = wheel_build.built_wheel(python=python)
        subprocess.run([python, "-m", "venv", str(into)], capture_output=True, text=True,
                       check=True)
        venv_python = str(into / "bin" / "python")
        subprocess.run([venv_python, "-m", "pip", "install", "--quiet",
                        "--disable-pip-version-check", str(wheel)],
                       capture_output=True, text=True, check=True)
        # From outside the checkout: run from its root, `import certctl` finds the sources.
        shown = subprocess.run(
            [venv_python, "-c", "import importlib.metadata as m, platform, ssl, sys; "
             "import certctl.dataplane as d; "
             "print(sorted(d.fallbacks)); print(platform.python_version()); "
             "print(sys._base_executable); print(ssl.OPENSSL_VERSION); "
             "print(m.version('uvloop'), '/', m.version('httptools'))"],
            cwd=into, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError) as err:
        output = getattr(err, "stderr", None) or ""
        raise InstallError(f"installing certctl for {python} into {into} failed: "
                           f"{err}\n{output[-3000:]}") from err
    fallbacks, version, executable, openssl, libraries = shown.stdout.splitlines()
    if fallbacks != "[]":
        raise InstallError(f"certctl installed for {python} runs these modules from their "
                           f"sources, not compiled: {fallbacks}")
    return Installed(command=(str(into / "bin" / "certctl"),),
                     interpreter=f"{version} ({os.path.realpath(executable)})",
                     openssl=openssl, libraries=libraries)
