"""Command-line values are checked before anything starts."""

from __future__ import annotations

import argparse
import datetime

import pytest

from certctl import cli
from certctl.controllers.order_budget import Budget


def test_order_budget_reads_count_and_window_or_off() -> None:
    assert cli._order_budget("3/24h") == Budget(orders=3, window=datetime.timedelta(hours=24))
    assert cli._order_budget("5/168h") == Budget(orders=5, window=datetime.timedelta(days=7))
    assert cli._order_budget("off") is None


@pytest.mark.parametrize("text", ["five/168h", "0/1h", "3/soon"])
def test_order_budget_refuses_what_it_cannot_read(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        cli._order_budget(text)


def test_serve_refuses_a_bad_order_budget_naming_the_option(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        cli.main(["serve", "--manifests", ".", "--state-dir", "/tmp/x", "--order-budget", "x/1h"])
    assert "--order-budget" in capsys.readouterr().err
