"""What ships is what bench/ measures: the package build compiles the data plane, the
image builds that package, the manifests run that image, and every command runs on
uvloop.

The wheel test takes the package as `pip wheel .` builds it from the files the
Dockerfile's build stage copies, with build isolation (setuptools and mypy come
from the package index or pip's cache), and installs it in a new virtualenv. The
build takes minutes on two cores, so it is made once per content of those files
(scripts/wheel.py): scripts/install.sh made it already, for the checkout's compiled
modules, unless the tree changed since. The test runs in the compiled run of
scripts/test.sh only. There is no container engine on the test machines: the Dockerfile is read,
not built, and what its build stage runs is what the wheel test runs.
"""

from __future__ import annotations

import ast
import contextlib
import importlib.metadata
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import tomllib
import zipfile
from dataclasses import dataclass, field
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import requests
import yaml

from scripts import wheel as wheel_build
from tests.pebble import free_port

if TYPE_CHECKING:
    from tests.controlplane import ControlPlane

pytest_plugins = ["tests.controlplane"]

REPO = Path(__file__).resolve().parent.parent
with (REPO / "pyproject.toml").open("rb") as _file:
    PYPROJECT = tomllib.load(_file)
COMPILED = PYPROJECT["tool"]["certctl"]["mypyc"]["modules"]
# The library mypyc compiles them into (setup.py), its path without the file's suffix.
GROUP_LIBRARY = PYPROJECT["tool"]["certctl"]["mypyc"]["group"].replace(".", "/") + "__mypyc"
PURE = os.environ.get("CERTCTL_PURE_PYTHON") == "1"
CERTCTL = Path(sys.executable).parent / "certctl"


# --- the Dockerfile, read -------------------------------------------------------------


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [argument for word, argument in self.instructions if word == keyword]


def _dockerfile() -> tuple[dict[str, str], list[Stage]]:
    """The Dockerfile's global ARG defaults and its stages, instructions with their
    continuation lines joined, as the builder reads them."""
    text = (REPO / "Dockerfile").read_text()
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", "", "\n".join(lines))
    arguments: dict[str, str] = {}
    stages: list[Stage] = []
    for line in joined.splitlines():
        if not line.strip():
            continue
        keyword, _, argument = line.strip().partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            base, _, name = argument.partition(" AS ")
            stages.append(Stage(base=base.strip(), name=name.strip() or None))
        elif not stages and keyword == "ARG":
            key, _, default = argument.partition("=")
            arguments[key] = default
        else:
            stages[-1].instructions.append((keyword, argument.strip()))
    return arguments, stages


def test_dockerfile_compiles_in_a_build_stage_and_runs_unprivileged_without_compiler():
    arguments, (build, final) = _dockerfile()
    # One Python image for both: the compiled modules are for exactly its interpreter.
    assert build.base == final.base == "${PYTHON_IMAGE}"
    assert re.fullmatch(r"python:3\.1[1-9]-slim", arguments["PYTHON_IMAGE"])
    assert build.name == "build"

    build_commands = " && ".join(build.all("RUN"))
    assert "gcc" in build_commands and "libc6-dev" in build_commands
    # The built-in DNS providers' optional libraries (boto3 for route53) ship in the image.
    assert "pip wheel --no-cache-dir --wheel-dir /wheels '.[route53]'" in build_commands
    assert "not compiled" in build_commands  # the build stops when setup.py fell back
    copied = [word for argument in build.all("COPY") for word in argument.split()[:-1]]
    assert sorted(copied) == ["README.md", "certctl", "crds", "pyproject.toml", "setup.py"]

    final_commands = " && ".join(final.all("RUN"))
    assert "--mount=type=bind,from=build,source=/wheels" in final_commands
    assert ("pip install --no-cache-dir --no-index --find-links /wheels 'certctl[route53]'"
            in final_commands)
    assert "gcc" not in final_commands and not final.all("COPY")
    # ... and stops when a compiled module does not load there, without the build tools.
    assert "certctl --help" in final_commands and "d.fallbacks == {}" in final_commands
    (user,) = final.all("USER")
    assert user == "65532:65532"
    deployments = [document for manifest in ("controller.yaml", "dataplane.yaml")
                   for document in yaml.safe_load_all((REPO / "manifests" / manifest).read_text())
                   if document and document["kind"] == "Deployment"]
    assert len(deployments) == 2
    for deployment in deployments:
        security = deployment["spec"]["template"]["spec"]["securityContext"]
        assert (security["runAsUser"], security["runAsGroup"]) == (65532, 65532)


def test_image_serves_http01_where_the_published_port_leads():
    _, (_, final) = _dockerfile()
    assert final.all("EXPOSE") == ["8080 8443"]
    assert final.all("ENTRYPOINT") == ['["certctl"]']
    (cmd,) = final.all("CMD")
    command = yaml.safe_load(cmd)  # a JSON array
    options = dict(zip(command[1::2], command[2::2], strict=True))
    assert command[0] == "serve"
    assert options["--http-port"] == "8080"
    # The CA (and so the self-check) comes to port 80, which -p 80:8080 leads to 8080.
    assert options["--self-check-port"] == "80"
    container = _readme_section("Container")
    assert "-p 80:8080 -p 443:8443" in container
    # The demo's Pebble on the host's loopback is out of a container's reach.
    assert "$PWD/examples:" not in container
    assert "acme-staging-v02.api.letsencrypt.org" in (
        REPO / "examples/cluster/letsencrypt-staging.yaml").read_text()
    assert "examples/cluster/letsencrypt-staging.yaml" in container


def test_manifests_run_the_image_the_build_instructions_name():
    images = set()
    for manifest in sorted((REPO / "manifests").glob("*.yaml")):
        for document in yaml.safe_load_all(manifest.read_text()):
            pod = (document or {}).get("spec", {}).get("template", {}).get("spec", {})
            images |= {container["image"] for container in pod.get("containers", [])}
    (image,) = images
    assert image.rpartition(":")[2] == PYPROJECT["project"]["version"]
    assert f"docker build -t {image} ." in _readme_section("Container")
    assert f"docker build -t {image} ." in (REPO / "Dockerfile").read_text()


def _readme_section(title: str) -> str:
    readme = (REPO / "README.md").read_text()
    match = re.search(rf"^## {title}\n(.*?)(?=^## |\Z)", readme, re.MULTILINE | re.DOTALL)
    assert match is not None, title
    return match.group(1)


def test_image_build_stops_when_a_module_was_left_uncompiled(tmp_path: Path):
    stems = [module.removesuffix(".py") for module in COMPILED]
    for left_out in (stems[-1], GROUP_LIBRARY):  # as without a compiler, or a failed link
        wheel_path = tmp_path / left_out.replace("/", "_") / "certctl-0.1.0-cp311-cp311.whl"
        wheel_path.parent.mkdir()
        with zipfile.ZipFile(wheel_path, "w") as wheel:
            for stem in stems:
                wheel.writestr(f"{stem}.py", "")
            for stem in (*stems, GROUP_LIBRARY):
                if stem != left_out:
                    wheel.writestr(f"{stem}{EXTENSION_SUFFIXES[0]}", "")
        checked = subprocess.run(
            [sys.executable, "-c", _dockerfile_wheel_check(wheels=wheel_path.parent)],
            cwd=REPO, capture_output=True, text=True, check=False)
        assert checked.returncode != 0
        assert checked.stderr.strip() == f"not compiled: {[left_out]}"


# --- the wheel, built and installed -----------------------------------------------------


def _build_context(tmp_path: Path) -> Path:
    """The files the Dockerfile's build stage copies, as scripts/wheel.py copies them."""
    _, (build, _) = _dockerfile()
    copied = [word for argument in build.all("COPY") for word in argument.split()[:-1]]
    assert sorted(copied) == sorted(wheel_build.CONTEXT)  # the image's wheel is the tested one
    context = tmp_path / "context"
    wheel_build.copy_context(REPO, context)
    return context


def _dockerfile_wheel_check(*, wheels: Path) -> str:
    """The Python program the build stage runs on its wheels, reading them in `wheels`."""
    _, (build, _) = _dockerfile()
    (command,) = [run for run in build.all("RUN") if "pip wheel" in run]
    program = shlex.split(command.split("&& python -c ", 1)[1])[0]
    assert "/wheels" in program
    return program.replace("'/wheels'", repr(str(wheels)))


def _environment() -> dict[str, str]:
    """This process's environment without the switch to the sources: the build compiles."""
    return {key: value for key, value in os.environ.items() if key != "CERTCTL_PURE_PYTHON"}


@pytest.mark.skipif(PURE, reason="built once, in the compiled run")
@pytest.mark.timeout(900)
def test_the_build_has_every_library_the_compiled_modules_import():
    # A library missing from the build is Any to mypyc, and a compiled class on one of its
    # classes crashes the process (upstream_h2._Client, an h2 H2Connection). Its
    # requirement must be the project's own, so the build and the install agree.
    def name(requirement: str) -> str:
        return re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].lower()

    build = PYPROJECT["build-system"]["requires"]
    provided = {name(requirement) for requirement in build}
    for requirement in build:  # and what those bring (h2: hpack, hyperframe)
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            provided |= {name(r) for r in importlib.metadata.requires(name(requirement)) or ()}
    distributions = importlib.metadata.packages_distributions()
    imported = set()
    for module in COMPILED:
        for node in ast.walk(ast.parse((REPO / module).read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    third_party = {top for top in imported
                   if top not in sys.stdlib_module_names and top != "certctl"}
    assert third_party, imported
    for top in sorted(third_party):
        (distribution,) = distributions[top]
        assert distribution.lower() in provided, f"{top} ({distribution}) is not in the build"
    project = {name(r): r for r in PYPROJECT["project"]["dependencies"]}
    for requirement in build:
        if name(requirement) in project:
            assert requirement == project[name(requirement)]


def test_a_wheel_is_built_for_the_interpreter_it_is_installed_with(tmp_path: Path):
    # A virtualenv runs its base interpreter: the checkout's, the packaging test's and a
    # benchmark's virtualenvs of one interpreter share one build (scripts/wheel.py).
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    own = wheel_build.context_digest(REPO)
    assert wheel_build.context_digest(REPO, python=str(venv / "bin" / "python")) == own
    # Another interpreter (the benchmarks' default, bench/installed.py) has its own.
    other = shutil.which("python3.11", path="/usr/bin")
    if other is None or (wheel_build.interpreter_identity(other)
                         == wheel_build.interpreter_identity(sys.executable)):
        pytest.skip("no other Python 3.11 in /usr/bin")
    assert wheel_build.context_digest(REPO, python=other) != own


def test_wheel_installs_the_compiled_data_plane_and_runs(tmp_path: Path):
    context = _build_context(tmp_path)
    # Built by `pip wheel` from the build context; once per content (scripts/wheel.py): the
    # install built it already when the tree has not changed since, and extracted its
    # compiled modules for the checkout.
    try:
        wheel = wheel_build.built_wheel(REPO)
    except subprocess.CalledProcessError as err:
        pytest.fail(f"pip wheel failed: {err.stdout[-3000:]}{err.stderr[-3000:]}")
    dist = tmp_path / "dist"
    dist.mkdir()
    shutil.copy(wheel, dist / wheel.name)
    # C extensions in it: a wheel for this Python and platform, not py3-none-any.
    assert re.search(r"-cp3\d+-cp3\d+-linux_x86_64\.whl$", wheel.name), wheel.name
    names = zipfile.ZipFile(wheel).namelist()
    for module in COMPILED:
        stem = module.removesuffix(".py")
        assert f"{stem}{EXTENSION_SUFFIXES[0]}" in names, module
        assert module in names  # the source too: the fallback
    assert f"{GROUP_LIBRARY}{EXTENSION_SUFFIXES[0]}" in names  # the code they load
    for page in ("index.html", "dashboard.js", "dashboard.css"):  # package data
        assert f"certctl/admin/static/{page}" in names, page
    for crd in ("certificates", "issuers", "clusterissuers", "challenges", "orders"):
        assert f"certctl/api/crds/{crd}.yaml" in names, crd  # what api/schema.py validates with

    # The image's build stage runs the same check, and stops when it fails.
    checked = subprocess.run([sys.executable, "-c", _dockerfile_wheel_check(wheels=dist)],
                             cwd=context, capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stderr

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
         "--no-index", str(wheel)], env=_environment(), capture_output=True, text=True,
        check=False)
    assert installed.returncode == 0, installed.stderr
    site = Path(subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True).stdout.strip())
    # The dependencies come from this virtualenv (installing them again would take
    # minutes and test pip): a path line, not a site directory, so its .pth files
    # (the editable install of the checkout among them) are not run, and certctl
    # comes from the wheel, earlier on the path.
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    helped = subprocess.run([venv / "bin" / "certctl", "--help"], env=_environment(),
                            capture_output=True, text=True, timeout=120, check=False)
    assert helped.returncode == 0, helped.stderr
    assert helped.stdout.startswith("usage: certctl")
    assert helped.stderr == ""

    modules = ", ".join(module.removesuffix(".py").replace("/", ".") for module in COMPILED)
    shown = subprocess.run(
        [python, "-c", f"import certctl.dataplane, {modules}; import sys; "
         f"print(certctl.dataplane.fallbacks); "
         f"print('\\n'.join(sys.modules[m].__file__ for m in {modules.split(', ')!r}))"],
        cwd=tmp_path, env=_environment(), capture_output=True, text=True, timeout=120,
        check=False)
    assert shown.returncode == 0, shown.stderr
    fallbacks, *files = shown.stdout.splitlines()
    assert fallbacks == "{}"
    # pip writes a module's source after its compiled file: installed, that is no sign
    # of a stale build, and no warning.
    assert shown.stderr == ""
    for file in files:
        assert file.startswith(str(site / "certctl" / "dataplane")), file
        assert file.endswith(EXTENSION_SUFFIXES[0]), file

    # What the image's last stage checks once it has installed the wheel.
    _, (_, final) = _dockerfile()
    (install,) = final.all("RUN")
    program = shlex.split(install.split("&& python -c ", 1)[1])[0]
    checked = subprocess.run([python, "-c", program], cwd=tmp_path, env=_environment(),
                             capture_output=True, text=True, timeout=120, check=False)
    assert checked.returncode == 0, checked.stderr


# --- every command on uvloop ------------------------------------------------------------


def _wait_listening(port: int, process: subprocess.Popen[str], *, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, f"exited with {process.returncode}"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    pytest.fail(f"nothing listening on {port} after {timeout} s")


def _run_until_serving(argv: list[str], *, http_port: int, log: Path) -> str:
    """Start the command, wait until its HTTP listener answers, stop it with SIGTERM as
    Kubernetes does; its log."""
    with log.open("w") as output:
        process = subprocess.Popen(argv, stdout=output, stderr=subprocess.STDOUT, text=True,
                                   env=_environment())
    try:
        _wait_listening(http_port, process, timeout=60)
        answer = requests.get(f"http://127.0.0.1:{http_port}/", timeout=10,
                              headers={"Host": "nothing.example.test"})
        assert answer.status_code == 404  # served: no route for that host
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0, log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    return log.read_text()


def test_serve_command_runs_on_uvloop(tmp_path: Path):
    (tmp_path / "manifests").mkdir()
    http_port = free_port()
    log = _run_until_serving(
        [str(CERTCTL), "serve", "--manifests", str(tmp_path / "manifests"),
         "--state-dir", str(tmp_path / "state"), "--listen-address", "127.0.0.1",
         "--http-port", str(http_port), "--https-port", str(free_port()), "--no-watch"],
        http_port=http_port, log=tmp_path / "serve.log")
    assert "certctl.runtime.runner: event loop: uvloop.Loop" in log, log


def test_dataplane_command_runs_on_uvloop(control_plane: ControlPlane, tmp_path: Path):
    http_port = free_port()
    log = _run_until_serving(
        [str(CERTCTL), "dataplane", "--kubeconfig", str(control_plane.kubeconfig),
         "--listen-address", "127.0.0.1", "--http-port", str(http_port),
         "--https-port", str(free_port())],
        http_port=http_port, log=tmp_path / "dataplane.log")
    assert "certctl.runtime.runner: event loop: uvloop.Loop" in log, log

