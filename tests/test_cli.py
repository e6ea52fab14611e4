"""Command-line values are checked before anything starts."""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
from pathlib import Path

import pytest

from certctl import cli
from certctl.api.resources import ObjectKey
from certctl.controllers.order_budget import Budget
from certctl.runtime import dataplane_feed
from certctl.store.local import LocalStore
from tests.testca import TestCA


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


@pytest.mark.parametrize("option", ["--tls-context-cache", "--max-connections"])
@pytest.mark.parametrize("value", ["0", "-3", "many"])
def test_serve_refuses_a_bad_count_naming_the_option(
    option: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        cli.main(["serve", "--manifests", ".", "--state-dir", "/tmp/x", option, value])
    assert option in capsys.readouterr().err


def test_tls_context_cache_bounds_the_data_planes_built_contexts(tmp_path: Path) -> None:
    ca = TestCA()
    edge = dataplane_feed.FedDataPlane(
        store=LocalStore(manifests_dir=None, state_dir=tmp_path),
        listening=dataplane_feed.Listening(
            address="127.0.0.1", http_port=0, https_port=0, ingress_class="certctl",
            tls_context_cache=2),
    )
    for name in ("one", "two", "three"):
        cert = ca.issue(f"{name}.test")
        edge.certificate_index.set_certificate(
            source=ObjectKey(kind="Secret", namespace="default", name=name),
            chain_pem=cert.chain_pem, key_pem=cert.key_pem)
        edge.certificate_index.select(f"{name}.test")
    assert edge.certificate_index.built_count == 2


def test_max_connections_reaches_the_data_plane(tmp_path: Path) -> None:
    edge = dataplane_feed.FedDataPlane(
        store=LocalStore(manifests_dir=None, state_dir=tmp_path),
        listening=dataplane_feed.Listening(
            address="127.0.0.1", http_port=0, https_port=0, ingress_class="certctl",
            max_connections=7),
    )
    assert edge.server.max_connections == 7


def test_version_names_the_installed_package(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"certctl {importlib.metadata.version('certctl')}"
