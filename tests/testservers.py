"""Where the servers built from Go modules live (scripts/testservers/build.sh).

The build script caches each server per version outside the repo and prints
`name=directory` for each one; asking it again is instant once built. Tests and
benchmarks ask here rather than hard-coding a path, so a version bump in the
script is the only change needed. Nothing here depends on pytest.
"""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

BUILD_SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "testservers" / "build.sh"


@functools.cache
def directory(name: str) -> Path:
    """The cache directory of one server (`kubernetes`, `etcd`, `pebble`, `gateway-api`,
    `helm`, `h2spec`),
    built first if this machine has not built that version yet."""
    result = subprocess.run(["bash", str(BUILD_SCRIPT), name], check=True,
                            capture_output=True, text=True)
    for line in result.stdout.splitlines():
        key, _, value = line.partition("=")
        if key == name:
            return Path(value)
    raise RuntimeError(f"{BUILD_SCRIPT} printed no directory for {name}: {result.stdout!r}")


def binary(name: str, program: str) -> Path:
    """A program of a built server, e.g. `binary("kubernetes", "kube-apiserver")`."""
    return directory(name) / "bin" / program
