"""cel-python's parser, built once per machine instead of once per process.

cel-python (celpy) builds its CEL parser, a Lark LALR parser, the first time
an Environment is made: 0.25-0.3 s of pure-Python grammar analysis, the
largest single cost between `certctl serve` starting and its first
certificate (bench B1). Lark can keep that analysis in a cache file and load
it in ~13 ms. celpy offers no way to pass one, but keeps its parser in the
class attribute `CELParser.CEL_PARSER` and builds one only when that is
empty: `prime` puts there a parser built with celpy's own grammar and
options plus Lark's cache. Lark checks the cache against the grammar and the
options (a hash stored in the file) and rebuilds it when they differ.

The cache is a pickle, so it is read only from a directory that this user
owns and nobody else may write to ($XDG_CACHE_HOME/certctl or
~/.cache/certctl, made 0700). Without such a directory (a container without
a home, a read-only one) nothing is cached and celpy builds its parser as
before.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import re
import stat
from pathlib import Path

import lark
from celpy import celparser

logger = logging.getLogger(__name__)


def prime() -> None:
    """Give celpy a parser loaded from (or saved to) this user's cache, when it can."""
    if celparser.CELParser.CEL_PARSER is not None:
        return
    directory = _private_cache_directory()
    if directory is None:
        return
    versions = f"lark-{lark.__version__}-celpy-{importlib.metadata.version('cel-python')}"
    celparser.CELParser.CEL_PARSER = lark.Lark(
        (Path(celparser.__file__).parent / "cel.lark").read_text(encoding="utf-8"),
        # celpy's options (celpy/celparser.py, CELParser.__init__), and the cache.
        parser="lalr",
        start="expr",
        debug=True,
        g_regex_flags=re.M,
        lexer_callbacks={"IDENT": celparser.CELParser.ambiguous_literals},
        propagate_positions=True,
        maybe_placeholders=False,
        priority="invert",
        tree_class=lark.Tree,
        cache=str(directory / f"cel-parser-{versions}.lark"),
    )


def _private_cache_directory() -> Path | None:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    directory = Path(base) / "certctl"
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        status = directory.stat()
    except (OSError, RuntimeError):  # RuntimeError: no home directory to expand
        return None
    private = (status.st_uid == os.getuid() and stat.S_ISDIR(status.st_mode)
               and not status.st_mode & (stat.S_IWGRP | stat.S_IWOTH))
    if not private or not os.access(directory, os.W_OK):
        logger.debug("not caching CEL's parser: %s is not this user's alone", directory)
        return None
    return directory
