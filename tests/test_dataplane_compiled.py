"""The data plane's per-request modules run compiled, never stale; when one cannot be
trusted (stale, built for another Python, not loadable) they all run from their sources
instead (compiled together, a compiled module calls the others' compiled code), with a
warning, and never stop a command; CERTCTL_PURE_PYTHON=1 runs the sources.

scripts/test.sh runs the data-plane suites twice: compiled, where every listed
module must be the compiled one and none may have fallen back, and with
CERTCTL_PURE_PYTHON=1, where every one must be its source.
"""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
import tomllib
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

import pytest

from certctl import dataplane

REPO = Path(__file__).resolve().parent.parent
with (REPO / "pyproject.toml").open("rb") as _file:
    COMPILED = [Path(path).stem for path in
                tomllib.load(_file)["tool"]["certctl"]["mypyc"]["modules"]]
PURE = os.environ.get(dataplane.PURE_PYTHON) == "1"
SUFFIX = EXTENSION_SUFFIXES[0]

# What a command does first: import the data plane, then (here) one compiled module.
SHOW_ROUTING = ("import certctl.dataplane as d, certctl.dataplane.routing as r; "
                "print(r.__file__); print(','.join(sorted(d.fallbacks)))")
HELP = "import sys; from certctl.cli import main; sys.exit(main(['--help']))"


@pytest.mark.skipif(PURE, reason="CERTCTL_PURE_PYTHON=1: the sources run")
@pytest.mark.parametrize("module", COMPILED)
def test_per_request_module_is_the_compiled_one(module: str) -> None:
    name = f"certctl.dataplane.{module}"
    loaded = importlib.import_module(name)
    assert name not in dataplane.fallbacks, (
        f"{dataplane.fallbacks[name]}: run scripts/compile.sh")
    assert loaded.__file__ is not None
    assert loaded.__file__.endswith(tuple(EXTENSION_SUFFIXES)), (
        f"{loaded.__file__}: not compiled; run scripts/compile.sh (or CERTCTL_PURE_PYTHON=1)"
    )


@pytest.mark.skipif(not PURE, reason="the compiled modules run")
@pytest.mark.parametrize("module", COMPILED)
def test_pure_python_run_imports_the_sources(module: str) -> None:
    loaded = importlib.import_module(f"certctl.dataplane.{module}")
    assert loaded.__file__ is not None
    assert loaded.__file__.endswith(f"{module}.py")


def test_source_edited_after_compiling_is_reported(tmp_path: Path) -> None:
    for name in ("fresh", "edited"):
        (tmp_path / f"{name}.py").write_text("")
        (tmp_path / f"{name}{SUFFIX}").write_bytes(b"")
    (tmp_path / f"fresh__mypyc{SUFFIX}").write_bytes(b"")  # mypyc's runtime: no source
    (tmp_path / "plain.py").write_text("")  # never compiled
    os.utime(tmp_path / "fresh.py", (1_000, 1_000))
    os.utime(tmp_path / "edited.py", (3_000, 3_000))
    os.utime(tmp_path / f"edited{SUFFIX}", (2_000, 2_000))
    assert dataplane.stale_compiled_modules(tmp_path) == ["edited.py"]


# --- a checkout of our own in tmp_path: the repository's compiled files are left alone ---


def _checkout(tmp_path: Path) -> Path:
    """The package's sources with pyproject.toml above them, as in a checkout; nothing
    compiled (each test puts in the compiled files it is about)."""
    shutil.copytree(REPO / "certctl", tmp_path / "certctl",
                    ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path / "certctl" / "dataplane"


def _compiled(directory: Path, module: str, *, age: str, suffix: str = SUFFIX) -> Path:
    """A file where Python looks for `module` compiled, which no Python can load (as a
    module built for another interpreter), `age` "older" or "newer" than its source."""
    compiled = directory / f"{module}{suffix}"
    compiled.write_bytes(b"\x7fELF not a shared object")
    source_time, compiled_time = (3_000, 2_000) if age == "older" else (1_000, 2_000)
    os.utime(directory / f"{module}.py", (source_time, source_time))
    os.utime(compiled, (compiled_time, compiled_time))
    return compiled


def _python(checkout: Path, code: str, *, pure: bool = False) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key != dataplane.PURE_PYTHON}
    if pure:
        env[dataplane.PURE_PYTHON] = "1"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    # cwd first on sys.path: the copy, not the repository's package, is imported.
    return subprocess.run([sys.executable, "-c", code], cwd=checkout.parent.parent, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def test_stale_compiled_modules_run_their_sources_with_one_warning(tmp_path: Path) -> None:
    directory = _checkout(tmp_path)
    _compiled(directory, "routing", age="older")
    _compiled(directory, "tls", age="older")

    shown = _python(directory, SHOW_ROUTING)
    assert shown.returncode == 0, shown.stderr
    file, fallbacks = shown.stdout.splitlines()
    assert file == str(directory / "routing.py")
    assert fallbacks == "certctl.dataplane.routing,certctl.dataplane.tls"
    warnings = [line for line in shown.stderr.splitlines() if "certctl/dataplane" in line]
    assert len(warnings) == 1, shown.stderr
    assert f"{directory / 'routing.py'} changed after it was compiled" in warnings[0]
    assert f"{directory / 'tls.py'} changed after it was compiled" in warnings[0]
    assert "run scripts/compile.sh" in warnings[0]

    helped = _python(directory, HELP)
    assert helped.returncode == 0, helped.stderr
    assert helped.stdout.startswith("usage: certctl")


def test_compiled_module_that_does_not_load_runs_its_source(tmp_path: Path) -> None:
    directory = _checkout(tmp_path)
    compiled = _compiled(directory, "routing", age="newer")
    shown = _python(directory, SHOW_ROUTING)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines() == [str(directory / "routing.py"),
                                         "certctl.dataplane.routing"]
    assert f"{compiled.name} does not load" in shown.stderr
    assert "run scripts/compile.sh" in shown.stderr


def test_module_compiled_only_for_another_python_runs_its_source(tmp_path: Path) -> None:
    directory = _checkout(tmp_path)
    other = ".cpython-399-x86_64-linux-gnu.so"
    assert other not in EXTENSION_SUFFIXES
    compiled = _compiled(directory, "routing", age="newer", suffix=other)
    shown = _python(directory, SHOW_ROUTING)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines() == [str(directory / "routing.py"),
                                         "certctl.dataplane.routing"]
    assert f"{compiled} was compiled for another Python" in shown.stderr


def _with_compiled_modules(directory: Path) -> list[Path]:
    """The checkout's compiled files (every module's and their library) copied in."""
    built = sorted((REPO / "certctl" / "dataplane").glob(f"*{SUFFIX}"))
    if not any("__mypyc" in path.name for path in built):
        pytest.skip("nothing compiled in this checkout (scripts/compile.sh)")
    for path in built:
        shutil.copy2(path, directory / path.name)
    return [directory / path.name for path in built]


# What a command that proxies imports, and then which modules run from their sources.
SHOW_PROXYING = ("import certctl.dataplane as d, certctl.dataplane.connection as c, "
                 "certctl.dataplane.upstream as u; print(c.__file__); print(u.__file__); "
                 "print(','.join(sorted(d.fallbacks)))")


def _shown_from_sources(directory: Path) -> str:
    """SHOW_PROXYING in `directory`, where every compiled module must have fallen back to
    its source; what it wrote on stderr."""
    shown = _python(directory, SHOW_PROXYING)
    assert shown.returncode == 0, shown.stderr
    connection, upstream, fallbacks = shown.stdout.splitlines()
    assert (connection, upstream) == (str(directory / "connection.py"),
                                      str(directory / "upstream.py"))
    assert fallbacks == ",".join(f"certctl.dataplane.{module}" for module in sorted(COMPILED))
    return shown.stderr


def test_one_stale_module_runs_every_module_from_its_source(tmp_path: Path) -> None:
    # The modules are compiled into one library, where connection calls upstream's
    # compiled code whatever Python imports for upstream: routing's edited source could
    # not run beside the others compiled.
    directory = _checkout(tmp_path)
    _with_compiled_modules(directory)
    os.utime(directory / "routing.py")  # edited since

    stderr = _shown_from_sources(directory)
    warnings = [line for line in stderr.splitlines() if "certctl/dataplane" in line]
    assert len(warnings) == 1, stderr
    assert f"{directory / 'routing.py'} changed after it was compiled" in warnings[0]

    # Compiled anew: the compiled modules run, all of them.
    for compiled in _with_compiled_modules(directory):
        os.utime(compiled)
    shown = _python(directory, SHOW_PROXYING)
    assert shown.returncode == 0, shown.stderr
    connection, upstream, fallbacks = shown.stdout.splitlines()
    assert connection.endswith(SUFFIX) and upstream.endswith(SUFFIX), shown.stdout
    assert fallbacks == ""
    assert shown.stderr == ""


def test_library_that_does_not_load_runs_every_module_from_its_source(tmp_path: Path) -> None:
    directory = _checkout(tmp_path)
    (library,) = [path for path in _with_compiled_modules(directory) if "__mypyc" in path.name]
    library.write_bytes(b"\x7fELF truncated")
    assert f"connection{SUFFIX} does not load ({library}" in _shown_from_sources(directory)

    helped = _python(directory, HELP)
    assert helped.returncode == 0, helped.stderr


def test_pure_python_runs_the_sources_beside_stale_and_fresh_compiled_ones(
        tmp_path: Path) -> None:
    directory = _checkout(tmp_path)
    _compiled(directory, "routing", age="older")
    _compiled(directory, "tls", age="newer")
    shown = _python(directory, SHOW_ROUTING + "; import certctl.dataplane.tls as t; "
                    "print(t.__file__)", pure=True)
    assert shown.returncode == 0, shown.stderr
    # Asked for, so nothing fell back and there is nothing to warn about.
    assert shown.stdout.splitlines() == [str(directory / "routing.py"), "",
                                         str(directory / "tls.py")]
    assert shown.stderr == ""
