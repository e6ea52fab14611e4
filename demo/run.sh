#!/usr/bin/env bash
# The demo in one command: install what is missing, then let Pebble issue a
# certificate that `certctl serve` obtains for examples/ and serves.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec .venv/bin/python demo/run.py "$@"
