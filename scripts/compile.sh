#!/usr/bin/env bash
# Compile the data plane's per-request modules with mypyc into C extensions beside
# their sources (Python imports those first): about half the CPU per proxied
# request (bench B4). They are compiled together, into one library inside the
# package that each module's own small extension loads. Needs a C compiler and the
# Python headers; without them, or with CERTCTL_PURE_PYTHON=1, the sources run as
# they are. Run it again after editing one of these modules: until then certctl runs
# the sources of all of them (slower), with a warning.
# The modules come out of the package's own build (setup.py, via scripts/wheel.py),
# as `pip install .`, a wheel and the image compile them. The list is pyproject.toml's
# `[tool.certctl.mypyc] modules`, the library its `group`.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
mapfile -t MODULES < <("$PYTHON" -c '
import tomllib
with open("pyproject.toml", "rb") as file:
    print("\n".join(tomllib.load(file)["tool"]["certctl"]["mypyc"]["modules"]))')
[ "${#MODULES[@]}" -gt 0 ] || { echo "compile: no modules in pyproject.toml" >&2; exit 1; }

if [ "${CERTCTL_PURE_PYTHON:-}" = 1 ]; then
  # certctl runs the sources under CERTCTL_PURE_PYTHON=1 whatever is compiled.
  echo "compile: CERTCTL_PURE_PYTHON=1, the data plane runs from its sources"
  exit 0
fi
suffix="$("$PYTHON" -c 'import importlib.machinery as m; print(m.EXTENSION_SUFFIXES[0])')"
fresh=1
for module in "${MODULES[@]}"; do
  [ "${module%.py}$suffix" -nt "$module" ] || fresh=0
done
if [ "$fresh" = 1 ]; then
  echo "compile: data plane modules up to date"
  exit 0
fi
# Built as a wheel, as `pip install .` and the image build it (scripts/wheel.py: from
# the files the image's build stage copies, with setup.py), once per content of those
# files; its C extensions are then put beside their sources. The checkout then runs the
# very modules the wheel ships, and the packaging test finds that wheel built.
if ! "$PYTHON" scripts/wheel.py --extract >/dev/null; then
  rm -f certctl/dataplane/*.so
  echo "compile: building the wheel failed; the data plane runs from its sources" \
       "(slower)" >&2
  exit 0
fi
for module in "${MODULES[@]}"; do
  if [ ! -e "${module%.py}$suffix" ]; then
    echo "compile: mypyc did not compile $module (setup.py's warning says why);" \
         "it runs from its source (slower)" >&2
  fi
done
echo "compile: data plane modules compiled with mypyc: ${MODULES[*]}"
