"""bench/reporting.write_results: a script's section of RESULTS.md, and only its own; the
machine table's file system row (bench/workdir.file_system); the per-round ratios of the
B3 and B4 tables (bench/b3_peers.round_ratios); the machine table's rows for certctl
installed as users install it (bench/installed.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from bench import b3_peers, installed, reporting, workdir


def test_a_rerun_replaces_its_own_section_and_keeps_the_hand_written_text(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    results = tmp_path / "RESULTS.md"
    monkeypatch.setattr(reporting, "RESULTS_PATH", results)
    reporting.write_results(name="b1", section="first b1")
    reporting.write_results(name="b2", section="first b2")
    results.write_text(results.read_text() + "hand-written note\n")
    reporting.write_results(name="b1", section="second b1")
    text = results.read_text()
    assert "second b1" in text and "first b1" not in text
    assert text.index("first b2") < text.index("hand-written note")


def test_a_section_holding_another_ones_markers_is_left_as_it_is(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    results = tmp_path / "RESULTS.md"
    monkeypatch.setattr(reporting, "RESULTS_PATH", results)
    nested = ("# Benchmark results\n\n<!-- scale:begin -->\n<!-- peer:begin -->\npeer table\n"
              "<!-- peer:end -->\nscale table\n<!-- scale:end -->\n")
    results.write_text(nested)
    with pytest.raises(reporting.NestedSection, match="scale's section holds <!-- peer:begin"):
        reporting.write_results(name="scale", section="new scale table")
    assert results.read_text() == nested


def test_the_file_system_row_names_the_deepest_mount_holding_the_path() -> None:
    # /proc is its own mount below /: the longer mount point wins.
    assert workdir.file_system(Path("/proc/self")) == "proc on proc"
    root = workdir.file_system(Path("/"))
    assert root != "proc on proc" and " on " in root
    if root.startswith("ext4"):
        assert root.startswith(("ext4 with a journal", "ext4 without a journal"))


def test_a_rows_ratios_are_taken_round_by_round() -> None:
    # Round 1: 1.2 against 0.5, round 2: 1.0 against 1.0. Pairing the sorted values instead
    # (1.0/0.5, 1.2/1.0) would read 1.20-2.00x.
    assert b3_peers.round_ratios([1.2, 1.0], [0.5, 1.0]) == "1.00-2.40x"
    # A round without a value on either side (no connection succeeded) is left out.
    assert b3_peers.round_ratios([1.2, None, 1.5], [1.0, 1.0, None]) == "1.20-1.20x"
    assert b3_peers.round_ratios([None], [1.0]) == "-"


def test_the_machine_table_names_what_the_installed_certctl_ran_on() -> None:
    certctl = installed.Installed(
        command=("/venv/bin/certctl",), interpreter="3.11.2 (/usr/bin/python3.11)",
        openssl="OpenSSL 3.0.99", libraries="9.9.9 / 8.8.8")
    table = b3_peers.machine_table(certctl=certctl)
    assert "| Python (certctl, installed by pip) | 3.11.2 (/usr/bin/python3.11) |" in table
    assert "| OpenSSL (certctl) | OpenSSL 3.0.99 |" in table
    assert "| uvloop / httptools | 9.9.9 / 8.8.8 |" in table
    # Without an installed package, the benchmark's own interpreter ran the commands.
    assert "installed by pip" not in b3_peers.machine_table()


def test_an_interpreter_certctl_cannot_be_installed_for_is_named(tmp_path: Path) -> None:
    assert installed.missing(sys.executable) is None  # venv and ensurepip: it can
    absent = str(tmp_path / "python3")
    reason = installed.missing(absent)
    assert reason is not None and absent in reason
    # One whose ensurepip is missing, as Debian's python3 without python3-venv.
    stripped = tmp_path / "stripped"
    without_ensurepip = "import sys; sys.modules['ensurepip'] = None; exec(sys.argv[1])"
    stripped.write_text(f'#!/bin/sh\nexec {sys.executable} -c "{without_ensurepip}" "$2"\n')
    stripped.chmod(0o755)
    assert installed.missing(str(stripped)) == (
        f"{stripped} cannot make a virtualenv with pip (apt-get install -y python3-venv)")
