"""The embedded data plane: SNI certificates, TLS, routing, HTTP/1.1 and HTTP/2, proxying.

Its per-request modules are compiled with mypyc by `scripts/compile.sh` (part of
`scripts/install.sh`): about half the CPU per request of the same modules
interpreted (bench B4). Python imports a compiled module in preference to its
source, so a source edited after it was compiled would silently not run:
importing this package refuses that instead.
"""

from __future__ import annotations

from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

# Client connections held at once, as ingress-nginx's max-worker-connections. Here, not in
# `server`, so that the command line can offer it without importing the data plane.
DEFAULT_MAX_CONNECTIONS = 16_384


def stale_compiled_modules(directory: Path) -> list[str]:
    """The sources in `directory` changed after the module compiled from them was built."""
    stale = []
    for suffix in EXTENSION_SUFFIXES:
        for compiled in directory.glob("*" + suffix):
            source = compiled.with_name(compiled.name.removesuffix(suffix) + ".py")
            if source.exists() and source.stat().st_mtime > compiled.stat().st_mtime:
                stale.append(source.name)
    return sorted(set(stale))


if _stale := stale_compiled_modules(Path(__file__).parent):
    raise ImportError(
        f"certctl/dataplane: {', '.join(_stale)} changed after it was compiled: run "
        "scripts/compile.sh, or delete certctl/dataplane/*.so to run the sources"
    )
