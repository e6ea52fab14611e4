"""Faults survived by the standalone state dir: a full disk, a read-only one, a file
size limit.

Each write must fail whole: a clear error naming the file, the previous file
byte-identical, no temporary or half-written file left, memory still matching
the disk. CI runs as root, where chmod stops nothing, so the faults are real
ones: a small tmpfs filled up (ENOSPC), a read-only bind mount (EROFS), and
RLIMIT_FSIZE set on a running process (EFBIG after a partial write). The mount
tests skip, saying why, where mounting is not permitted.
"""

from __future__ import annotations

import base64
import errno
import os
import resource
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import yaml

from certctl.store import interface
from certctl.store.local import LocalStore, StateWriteError
from tests.pebble import PebbleServer, free_port
from tests.serving import (
    cluster_issuer,
    dns_names,
    eventually,
    ingress,
    served_certificate,
    write_yaml,
)
from tests.test_faults_acme import ServeProcess


def _mount(*args: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting needs root (CI runs as root)")
    result = subprocess.run(["mount", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        pytest.skip(f"mount {' '.join(args)} is not permitted here: {result.stderr.strip()}")


def _umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs: small enough to fill in a moment."""
    mountpoint = tmp_path / "disk"
    mountpoint.mkdir()
    _mount("-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(mountpoint))
    try:
        yield mountpoint
    finally:
        _umount(mountpoint)


@pytest.fixture
def read_only(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """(writable folder, the same folder through a read-only bind mount)."""
    source = tmp_path / "rw"
    view = tmp_path / "ro"
    source.mkdir()
    view.mkdir()
    _mount("--bind", str(source), str(view))
    try:
        _mount("-o", "remount,bind,ro", str(view))
        yield source, view
    finally:
        _umount(view)


def fill(disk: Path) -> Path:
    """Write a filler file until the file system is full; remove it to free the space."""
    filler = disk / "filler"
    with filler.open("wb", buffering=0) as handle:
        try:
            while True:
                handle.write(b"\0" * 65536)
        except OSError as err:
            assert err.errno == errno.ENOSPC
    return filler


def tls_secret(name: str, payload: bytes) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": {"name": name, "namespace": "default"},
            "data": {"tls.crt": base64.b64encode(payload).decode(),
                     "tls.key": base64.b64encode(payload[::-1]).decode()}}


def _state_file(state: Path, name: str) -> Path:
    return state / "objects" / "Secret" / "default" / f"{name}.yaml"


def _leftovers(state: Path) -> list[Path]:
    return sorted(path for path in state.rglob("*") if path.name.endswith(".tmp"))


def _lasting_leftovers(state: Path) -> list[Path]:
    """Temporary files that outlive their write, while certctl keeps writing: a write in
    flight has one for a moment (each write's name is new), a failed one must not keep it."""
    seen = _leftovers(state)
    if seen:
        time.sleep(1.0)
    return [path for path in seen if path.exists()]


def _assert_private(state: Path) -> None:
    for path in [state, *state.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o600 if path.is_file() else 0o700), (path, oct(mode))


# --- the store ----------------------------------------------------------------------------


def test_a_full_disk_fails_the_write_whole_and_the_previous_secret_stays(small_disk: Path):
    state = small_disk / "state"
    store = LocalStore(manifests_dir=None, state_dir=state)
    created = store.create(obj=tls_secret("web-tls", b"first certificate " * 20))
    path = _state_file(state, "web-tls")
    before = path.read_bytes()
    filler = fill(small_disk)

    update = dict(created, data=tls_secret("web-tls", b"second " * 4000)["data"])
    with pytest.raises(StateWriteError) as raised:
        store.replace(obj=update)
    assert str(raised.value) == f"cannot write state file {path}: No space left on device"
    assert isinstance(raised.value, interface.StoreUnavailable)
    with pytest.raises(StateWriteError, match="No space left on device"):
        store.create(obj=tls_secret("other-tls", b"x" * 200_000))

    assert path.read_bytes() == before
    assert _leftovers(state) == []
    assert not _state_file(state, "other-tls").exists()
    assert store.get(kind="Secret", namespace="default", name="web-tls") == created
    assert LocalStore(manifests_dir=None, state_dir=state).get(
        kind="Secret", namespace="default", name="web-tls") == created

    filler.unlink()
    stored = store.replace(obj=update)
    assert yaml.safe_load(path.read_text()) == stored
    assert int(stored["metadata"]["resourceVersion"]) > int(created["metadata"]["resourceVersion"])
    _assert_private(state)


def test_a_read_only_state_dir_fails_writes_and_deletes_naming_the_file(
    read_only: tuple[Path, Path]
):
    writable, view = read_only
    LocalStore(manifests_dir=None, state_dir=writable / "state").create(
        obj=tls_secret("web-tls", b"certificate"))
    state = view / "state"
    path = _state_file(state, "web-tls")
    before = path.read_bytes()
    store = LocalStore(manifests_dir=None, state_dir=state)
    current = store.get(kind="Secret", namespace="default", name="web-tls")
    assert current is not None

    with pytest.raises(StateWriteError) as raised:
        store.replace(obj=dict(current, data={"tls.crt": "bmV3"}))
    assert str(raised.value) == f"cannot write state file {path}: Read-only file system"
    with pytest.raises(StateWriteError, match=f"cannot remove state file {path}: Read-only"):
        store.delete(kind="Secret", namespace="default", name="web-tls")
    # Neither a replace nor a delete that failed on disk happened in memory.
    assert store.get(kind="Secret", namespace="default", name="web-tls") == current
    assert path.read_bytes() == before
    assert _leftovers(writable) == []


def test_serve_on_a_read_only_state_dir_says_so_and_exits(read_only: tuple[Path, Path]):
    writable, view = read_only
    manifests = writable / "manifests"
    manifests.mkdir()
    (writable / "state").mkdir(mode=0o700)
    result = subprocess.run(
        [sys.executable, "-m", "certctl", "serve", "--manifests", str(manifests),
         "--state-dir", str(view / "state"), "--listen-address", "127.0.0.1",
         "--http-port", str(free_port()), "--https-port", str(free_port())],
        capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 1
    assert f"certctl: --state-dir {view / 'state'}: Read-only file system" in result.stderr
    assert "Traceback" not in result.stderr


_WRITE_UNDER_A_SIZE_LIMIT = """
import resource, sys
from pathlib import Path
from certctl.store.local import LocalStore, StateWriteError
store = LocalStore(manifests_dir=None, state_dir=Path(sys.argv[1]))
current = store.get(kind="Secret", namespace="default", name="web-tls")
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
current["data"] = {"tls.crt": "A" * 20000}
try:
    store.replace(obj=current)
except StateWriteError as err:
    print(err)
    sys.exit(3)
"""


def test_a_file_size_limit_leaves_no_half_written_file(tmp_path: Path):
    # RLIMIT_FSIZE lets the first 4 KiB of the temporary file through, then EFBIG:
    # the one fault that really produces a half-written file, needing no root.
    state = tmp_path / "state"
    LocalStore(manifests_dir=None, state_dir=state).create(
        obj=tls_secret("web-tls", b"certificate"))
    path = _state_file(state, "web-tls")
    before = path.read_bytes()
    result = subprocess.run([sys.executable, "-c", _WRITE_UNDER_A_SIZE_LIMIT, str(state)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 3, result.stderr
    assert result.stdout.strip() == f"cannot write state file {path}: File too large"
    assert path.read_bytes() == before
    assert _leftovers(state) == []


# --- certctl serve ------------------------------------------------------------------------


def _served(port: int, host: str, roots: bytes) -> Any:
    certificate = served_certificate(port=port, server_name=host, roots_pem=roots)
    return certificate if host in dns_names(certificate) else None


def _serve_through_failing_writes(
    *, tmp_path: Path, state: Path, pebble: PebbleServer, error: str,
    fail_writes: Callable[[ServeProcess], Callable[[], object]],
) -> None:
    """Issue, make state writes fail (`fail_writes` returns how to undo that), change the
    Certificate, and check: the error names the file, the old Secret is intact and still
    served, no temp file lasts; once writes work again the new certificate arrives."""
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    write_yaml(manifests / "all.yaml", cluster_issuer(pebble),
               ingress("web", hosts=["web.example.test"], secret_name="web-tls"))
    secret_path = _state_file(state, "web-tls")
    https_port = free_port()
    roots = pebble.issuance_roots_pem()
    serve = ServeProcess(manifests=manifests, state_dir=state, pebble=pebble,
                         https_port=https_port, log_path=tmp_path / "serve.log", watch=True)
    try:
        first = eventually(partial(_served, https_port, "web.example.test", roots), timeout=60,
                           what="the first certificate")
        eventually(secret_path.exists)
        before = secret_path.read_bytes()
        restore_writes = fail_writes(serve)
        # A second name: the Certificate changes, a new order, a new Secret, all to write.
        write_yaml(manifests / "all.yaml", cluster_issuer(pebble),
                   ingress("web", hosts=["web.example.test", "www.example.test"],
                           secret_name="web-tls"))
        eventually(lambda: error in serve.log(), timeout=30, what="the write error in the log")
        log = serve.log()
        assert f"cannot write state file {state}/objects/" in log
        assert "Traceback" not in log
        assert secret_path.read_bytes() == before
        assert _lasting_leftovers(state) == []
        still = served_certificate(port=https_port, server_name="web.example.test",
                                   roots_pem=roots)
        assert still.serial_number == first.serial_number

        restore_writes()
        eventually(partial(_served, https_port, "www.example.test", roots), timeout=60,
                   what="the new certificate once writes work again")
    finally:
        assert serve.stop() == 0
    assert secret_path.read_bytes() != before
    assert _leftovers(state) == []
    _assert_private(state)


def test_serve_with_a_full_disk_keeps_serving_the_old_secret_and_recovers(
    tmp_path: Path, small_disk: Path, pebble: PebbleServer
):
    def fill_the_disk(_serve: ServeProcess) -> Callable[[], object]:
        return fill(small_disk).unlink

    _serve_through_failing_writes(tmp_path=tmp_path, state=small_disk / "state", pebble=pebble,
                                  error="No space left on device", fail_writes=fill_the_disk)


def test_serve_under_a_file_size_limit_keeps_the_old_secret_and_recovers(
    tmp_path: Path, pebble: PebbleServer
):
    """No root needed: RLIMIT_FSIZE set on the running process fails every state file
    bigger than the limit after a partial write (the Order with its chain, the Secret)."""

    def limit_file_size(serve: ServeProcess) -> Callable[[], object]:
        unlimited = resource.prlimit(serve.proc.pid, resource.RLIMIT_FSIZE)
        resource.prlimit(serve.proc.pid, resource.RLIMIT_FSIZE, (2048, unlimited[1]))
        return partial(resource.prlimit, serve.proc.pid, resource.RLIMIT_FSIZE, unlimited)

    _serve_through_failing_writes(tmp_path=tmp_path, state=tmp_path / "state", pebble=pebble,
                                  error="File too large", fail_writes=limit_file_size)
