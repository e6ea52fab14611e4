#!/usr/bin/env bash
# Install everything certctl's demo and tests need on a fresh Debian machine:
# the Debian packages (Pebble, BIND9 for DNS-01, curl) and a
# virtualenv in .venv with certctl and its test tools, the data plane's
# per-request modules compiled (scripts/compile.sh). Safe to run again; it
# only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# chromium: the dashboard's browser test (Playwright drives it; it downloads no browser).
APT_PACKAGES=(pebble bind9 bind9-utils curl ca-certificates apache2-utils iproute2 prometheus
              chromium)
missing=()
for package in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" \
    || missing+=("$package")
done
if [ "${#missing[@]}" -gt 0 ]; then
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test,compile,route53]'
bash scripts/compile.sh
# pip compiles what it installs, but not an editable install's sources, and
# PYTHONDONTWRITEBYTECODE (set on some machines) stops Python caching them:
# compile once, or every `certctl` start compiles the whole package again.
.venv/bin/python -m compileall -q certctl
