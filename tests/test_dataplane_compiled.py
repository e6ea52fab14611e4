"""The data plane's per-request modules run compiled (scripts/compile.sh), never stale."""

from __future__ import annotations

import importlib
import os
import re
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

import pytest

from certctl import dataplane

REPO = Path(__file__).resolve().parent.parent
COMPILED = re.search(r"MODULES=\(([^)]*)\)", (REPO / "scripts/compile.sh").read_text())
assert COMPILED is not None


@pytest.mark.skipif(os.environ.get("CERTCTL_PURE_PYTHON") == "1",
                    reason="CERTCTL_PURE_PYTHON=1: the sources run")
@pytest.mark.parametrize("module", COMPILED.group(1).split())
def test_per_request_module_is_the_compiled_one(module: str) -> None:
    loaded = importlib.import_module(f"certctl.dataplane.{module}")
    assert loaded.__file__ is not None
    assert loaded.__file__.endswith(tuple(EXTENSION_SUFFIXES)), (
        f"{loaded.__file__}: not compiled; run scripts/compile.sh (or CERTCTL_PURE_PYTHON=1)"
    )


def test_source_edited_after_compiling_is_reported(tmp_path: Path) -> None:
    suffix = EXTENSION_SUFFIXES[0]
    for name in ("fresh", "edited"):
        (tmp_path / f"{name}.py").write_text("")
        (tmp_path / f"{name}{suffix}").write_bytes(b"")
    (tmp_path / f"fresh__mypyc{suffix}").write_bytes(b"")  # mypyc's runtime: no source
    (tmp_path / "plain.py").write_text("")  # never compiled
    os.utime(tmp_path / "fresh.py", (1_000, 1_000))
    os.utime(tmp_path / "edited.py", (3_000, 3_000))
    os.utime(tmp_path / f"edited{suffix}", (2_000, 2_000))
    assert dataplane.stale_compiled_modules(tmp_path) == ["edited.py"]
