#!/usr/bin/env bash
# Install everything, then run the linters and the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
# The servers the tests run against that Debian lacks or has too old (kube-apiserver,
# kube-controller-manager, kubectl, etcd, the current Pebble, the Gateway API CRDs):
# built from Go modules once per machine, minutes the first time (progress on stderr).
bash scripts/testservers/build.sh >/dev/null
.venv/bin/ruff check .
.venv/bin/mypy
.venv/bin/pytest -q
# The data plane's suites again on its pure-Python sources, the fallback of an install
# without a compiler (or with a stale compiled module): both variants must pass.
CERTCTL_PURE_PYTHON=1 .venv/bin/pytest -q \
  tests/test_dataplane*.py tests/test_http2*.py tests/test_h2spec.py tests/test_h2_server.py \
  tests/test_routing.py
