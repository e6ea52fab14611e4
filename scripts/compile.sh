#!/usr/bin/env bash
# Compile the data plane's per-request modules with mypyc into C extensions beside
# their sources (Python imports those first): about half the CPU per proxied
# request (bench B4). Each module is built on its own, so no shared library has
# to be importable from outside the package. Needs a C compiler and the Python
# headers; without them, or with CERTCTL_PURE_PYTHON=1, the sources run as they are.
# Run it again after editing one of these modules: certctl refuses to import a
# compiled module older than its source.
set -euo pipefail
cd "$(dirname "$0")/.."
MODULES=(dispatch routing connection upstream tls)
PYTHON="${PYTHON:-.venv/bin/python}"

if [ "${CERTCTL_PURE_PYTHON:-}" = 1 ]; then
  rm -f certctl/dataplane/*.so
  echo "compile: CERTCTL_PURE_PYTHON=1, the data plane runs from its sources"
  exit 0
fi
suffix="$("$PYTHON" -c 'import importlib.machinery as m; print(m.EXTENSION_SUFFIXES[0])')"
fresh=1
for module in "${MODULES[@]}"; do
  [ "certctl/dataplane/$module$suffix" -nt "certctl/dataplane/$module.py" ] || fresh=0
done
if [ "$fresh" = 1 ]; then
  echo "compile: data plane modules up to date"
  exit 0
fi
rm -f certctl/dataplane/*.so
log="$(mktemp)"
trap 'rm -rf "$log" build' EXIT
for module in "${MODULES[@]}"; do
  if ! "$PYTHON" -m mypyc "certctl/dataplane/$module.py" >"$log" 2>&1; then
    tail -n 20 "$log" >&2
    rm -f certctl/dataplane/*.so
    echo "compile: mypyc failed on certctl/dataplane/$module.py; the data plane runs" \
         "from its sources (slower)" >&2
    exit 0
  fi
done
echo "compile: data plane modules compiled with mypyc: ${MODULES[*]}"
