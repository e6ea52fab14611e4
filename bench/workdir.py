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


def file_system(path: Path | None = None) -> str:
    """The file system the work dirs (under `path`, by default the temporary folder) are
    on, for the machine table: its type and device, and for ext4 whether it keeps a
    journal. Without one, ext4 walks past every inode freed in the last minutes each time
    it allocates one (bench/b2_bulk_issuance.py says what that costs certctl's state
    writes), so the state writes' numbers hold for that file system only."""
    resolved = str((path or Path(tempfile.gettempdir())).resolve())
    found: tuple[str, str, str] | None = None  # mount point, type, source
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields, _, described = line.partition(" - ")
        mount_point = fields.split()[4]
        fs_type, source = described.split()[:2]
        covers = resolved == mount_point or resolved.startswith(mount_point.rstrip("/") + "/")
        if covers and (found is None or len(mount_point) >= len(found[0])):
            found = (mount_point, fs_type, source)
    if found is None:
        return "?"
    _, fs_type, source = found
    if fs_type != "ext4":
        return f"{fs_type} on {source}"
    # jbd2 runs one journal per journalled device, named after it ("vda-8").
    journalled = any(Path("/proc/fs/jbd2").glob(f"{Path(source).name}-*"))
    return f"ext4 {'with' if journalled else 'without'} a journal, on {source}"
