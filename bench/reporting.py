"""What every benchmark script reports with: its section of RESULTS.md and the machine."""

from __future__ import annotations

import platform
import re
import shlex
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_PATH = Path(__file__).resolve().parent / "RESULTS.md"
RESULTS_HEADER = (
    "# Benchmark results\n\nOne section per benchmark script, written by the script "
    "itself (`--write-results`) between its `<!-- name:begin/end -->` markers; text "
    "outside the markers is hand-written and survives reruns.\n"
)


def command_output(argv: Sequence[str]) -> str:
    """The first line a command prints, or why it could not run."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"({err})"
    lines = (done.stdout or done.stderr).strip().splitlines()
    return lines[0] if lines else "?"


def command_line(*, module: str, argv: Sequence[str] | None) -> str:
    """How a benchmark was run (from the repo root), for its section of RESULTS.md;
    `argv` None means this process's own arguments."""
    arguments = sys.argv[1:] if argv is None else list(argv)
    return shlex.join([sys.executable, "-m", module, *arguments])


def git_describe() -> str:
    """The commit measured, "-dirty" when a tracked file other than RESULTS.md differs
    from it: the benchmarks write RESULTS.md themselves, so a run after another one's
    section was written measured the commit's code all the same."""
    commit = command_output(["git", "-C", str(REPO_ROOT), "describe", "--always"])
    try:
        status = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no",
             "--", ".", f":!{RESULTS_PATH.relative_to(REPO_ROOT)}"],
            capture_output=True, text=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError):
        return commit
    return f"{commit}-dirty" if status.stdout.strip() else commit


def machine_rows(*, extra: Sequence[tuple[str, str]] = ()) -> list[tuple[str, str]]:
    """The machine every result depends on, then what the benchmark adds (its peers)."""
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
    mem = re.search(r"^MemTotal:\s*(\d+) kB", Path("/proc/meminfo").read_text(), re.MULTILINE)
    return [
        ("nproc", command_output(["nproc"])),
        ("CPU", model.group(1).strip() if model else "?"),
        ("RAM", f"{int(mem.group(1)) / 1024 / 1024:.1f} GiB" if mem else "?"),
        ("kernel", platform.release()),
        ("Python", platform.python_version()),
        *extra,
    ]


def machine_table(rows: Sequence[tuple[str, str]]) -> str:
    return "| | |\n|---|---|\n" + "".join(f"| {name} | {value} |\n" for name, value in rows)


class NestedSection(Exception):
    """A section of RESULTS.md holds another's markers: replacing it would erase that one."""


def write_results(*, name: str, section: str) -> None:
    """Replace the script's section of RESULTS.md between its own markers (read now:
    other scripts write theirs too); a first run appends it. NestedSection, writing
    nothing, when the section found holds another script's markers (one was once
    written inside another's, and the outer one's next run took it away)."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    block = f"{begin}\n{section.rstrip()}\n{end}\n"
    text = RESULTS_PATH.read_text() if RESULTS_PATH.exists() else RESULTS_HEADER
    pattern = re.compile(re.escape(begin) + r"(.*?)" + re.escape(end) + r"\n?", re.DOTALL)
    found = pattern.search(text)
    if found is None:
        text = text.rstrip("\n") + "\n\n" + block
    else:
        inner = re.search(r"<!-- [\w-]+:(?:begin|end) -->", found.group(1))
        if inner is not None:
            raise NestedSection(f"{RESULTS_PATH}: {name}'s section holds {inner.group(0)}; "
                                "move that section out of it first")
        text = text[:found.start()] + block + text[found.end():]
    RESULTS_PATH.write_text(text)
