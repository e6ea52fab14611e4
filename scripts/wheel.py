"""certctl's wheel, built once per content: the package users install, compiled.

    .venv/bin/python scripts/wheel.py            # print the wheel's path, building it if new
    .venv/bin/python scripts/wheel.py --extract  # ... and put its compiled modules in the tree

The wheel is built as the image's build stage builds it (`pip wheel` with build
isolation, setup.py compiling the data plane with mypyc, for an interpreter with none
of certctl's dependencies installed) from the files that stage copies (`CONTEXT`),
and kept outside the repository by the digest of those files, of this script and of
the interpreter it is built for (`wheel_cache_dir`): the install (scripts/compile.sh,
with --extract) and the packaging test (tests/test_packaging.py) share one build of a
given tree, which takes minutes. The benchmarks build it for the interpreter they
install it with (bench/installed.py). Extracting puts the wheel's C extensions beside
their sources, so the editable install of the checkout runs the very modules the
wheel ships.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# What the Dockerfile's build stage copies (tests/test_packaging.py holds the two equal).
CONTEXT = ("pyproject.toml", "setup.py", "README.md", "certctl", "crds")
_IGNORED = shutil.ignore_patterns("*.so", "__pycache__")


def _context_files(repo: Path) -> list[tuple[str, Path]]:
    """Every file of the build context, by its path in the context, sorted."""
    files: list[tuple[str, Path]] = []
    for source in CONTEXT:
        path = repo / source
        if not path.is_dir():
            files.append((source, path))
            continue
        for directory, names, file_names in os.walk(path, followlinks=True):
            names[:] = sorted(n for n in names if n != "__pycache__")
            for name in file_names:
                if not name.endswith(".so"):
                    full = Path(directory) / name
                    files.append((str(full.relative_to(repo)), full))
    return sorted(files)


def interpreter_identity(python: str) -> str:
    """Which interpreter `python` runs: its version, ABI and installed executable (the
    wheel's C extensions are built against its headers)."""
    return subprocess.run(
        [python, "-c", "import os, sys, sysconfig; print(sys.version, "
         "sysconfig.get_config_var('EXT_SUFFIX'), os.path.realpath(sys.executable))"],
        capture_output=True, text=True, check=True).stdout.strip()


def context_digest(repo: Path = REPO, *, python: str = sys.executable) -> str:
    """The sha256 of the build context's paths and contents, and of the interpreter
    the wheel is for (its C extensions are for that one alone)."""
    digest = hashlib.sha256(interpreter_identity(python).encode())
    digest.update(Path(__file__).read_bytes())  # how it is built: `built_wheel` below
    for name, path in _context_files(repo):
        digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def wheel_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "certctl" / "wheels"


def copy_context(repo: Path, destination: Path) -> None:
    """The build context as the Dockerfile's build stage has it: no compiled files."""
    destination.mkdir(parents=True, exist_ok=True)
    for source in CONTEXT:
        path = repo / source
        if path.is_dir():
            shutil.copytree(path, destination / source, ignore=_IGNORED)
        else:
            shutil.copy(path, destination / source)


def built_wheel(repo: Path = REPO, *, python: str = sys.executable) -> Path:
    """The wheel of `repo`'s current content for the interpreter `python` (by default
    this one): from the cache, else built and kept there. Raises CalledProcessError
    (with pip's output) when the build fails."""
    cache = wheel_cache_dir() / context_digest(repo, python=python)
    found = sorted(cache.glob("certctl-*.whl"))
    if found:
        return found[0]
    cache.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache.parent) as work:
        context = Path(work) / "context"
        copy_context(repo, context)
        dist = Path(work) / "dist"
        # Compiling whatever CERTCTL_PURE_PYTHON says: it is for running, not for building.
        environment = {k: v for k, v in os.environ.items() if k != "CERTCTL_PURE_PYTHON"}
        # pip builds for a virtualenv of the interpreter that holds nothing, so that the
        # build sees none of certctl's dependencies: as the image's build stage and
        # `pip install` into a new virtualenv build it (setup.py's mypyc run treats their
        # imports as Any), not as this virtualenv, which has them all, would.
        bare = Path(work) / "bare"
        subprocess.run([python, "-m", "venv", "--without-pip", str(bare)], check=True,
                       capture_output=True, text=True)
        subprocess.run([sys.executable, "-m", "pip", "--python", str(bare / "bin" / "python"),
                        "wheel", str(context), "-w", str(dist), "--no-deps", "-q"],
                       cwd=work, env=environment, check=True, capture_output=True, text=True)
        try:
            dist.rename(cache)  # whole or not at all: a build that stopped leaves nothing
        except OSError:
            if not cache.is_dir():  # else another process built it meanwhile
                raise
    (wheel,) = cache.glob("certctl-*.whl")
    return wheel


def extract_compiled(wheel: Path, repo: Path = REPO) -> list[str]:
    """Put the wheel's C extensions beside their sources in `repo`; their paths."""
    with zipfile.ZipFile(wheel) as archive:
        names = [name for name in archive.namelist() if name.endswith(".so")]
        for name in names:
            target = repo / name
            partial = target.with_name(target.name + ".partial")
            partial.write_bytes(archive.read(name))
            partial.chmod(0o755)
            partial.replace(target)  # a running process keeps the file it mapped
    return names


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--extract", action="store_true",
                        help="put the wheel's compiled modules beside their sources")
    options = parser.parse_args()
    try:
        wheel = built_wheel()
    except subprocess.CalledProcessError as err:
        print(f"{err.stdout[-3000:]}{err.stderr[-3000:]}\nwheel: pip wheel failed",
              file=sys.stderr)
        return 1
    if options.extract:
        for stale in (REPO / "certctl").rglob("*.so"):
            stale.unlink()
        extract_compiled(wheel)
    print(wheel)
    return 0


if __name__ == "__main__":
    sys.exit(main())
