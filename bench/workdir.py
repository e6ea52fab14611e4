"""Where a benchmark run keeps its files: a fresh temporary folder, gone afterwards unless kept."""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path


def create(*, prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix))


def remove_unless_kept(path: Path, *, keep: bool) -> None:
    """Delete the run's folder, or with `keep` say where it is (its logs are worth reading)."""
    if keep:
        print(f"work dir kept: {path}", file=sys.stderr)
    else:
        shutil.rmtree(path, ignore_errors=True)
