"""cel-python's parser from this user's cache (certctl/api/cel_parser.py)."""

from __future__ import annotations

import os
from pathlib import Path

import celpy
import pytest
from celpy import adapter, celparser

from certctl.api import cel_parser


@pytest.fixture
def no_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    """celpy without a parser yet, as in a fresh process (restored afterwards)."""
    monkeypatch.setattr(celparser.CELParser, "CEL_PARSER", None)


def _holds(rule: str, value: dict[str, int | str]) -> bool:
    environment = celpy.Environment()
    program = environment.program(environment.compile(rule))
    return bool(program.evaluate({"self": adapter.json_to_cel(value)}))


def test_the_parser_is_saved_once_and_loaded_after(
        no_parser: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    cel_parser.prime()
    [saved] = (tmp_path / "certctl").iterdir()
    assert (tmp_path / "certctl").stat().st_mode & 0o777 == 0o700
    assert _holds("self.a == 1 && self.b.startsWith('x')", {"a": 1, "b": "xy"})
    written = saved.stat().st_mtime_ns
    monkeypatch.setattr(celparser.CELParser, "CEL_PARSER", None)
    cel_parser.prime()
    assert saved.stat().st_mtime_ns == written  # loaded, not built and saved again
    assert celparser.CELParser.CEL_PARSER is not None
    assert not _holds("self.a == 1", {"a": 2})


def test_a_directory_others_may_write_to_is_not_read(
        no_parser: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    (tmp_path / "certctl").mkdir()
    os.chmod(tmp_path / "certctl", 0o777)
    cel_parser.prime()
    assert celparser.CELParser.CEL_PARSER is None  # celpy builds its own, uncached
    assert list((tmp_path / "certctl").iterdir()) == []
    assert _holds("self.a == 1", {"a": 1})
