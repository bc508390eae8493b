#!/usr/bin/env bash
# Prints the path of the virtualenv with the SDKs and moto of tests/sdk/requirements.txt
# (tests/sdk.rs and tests/sts.rs run them; bench/run.sh runs its moto), building it
# first if needed. Built once per requirements file and interpreter, kept under
# /var/cache/imds-proxy-test with a .complete marker. Progress goes to stderr; stdout
# is the path alone. Installs python3-venv if missing (Debian, as root).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
  [ "$(id -u)" = 0 ] || { echo "sdk-venv: python3 with venv is missing (Debian: python3-venv)" >&2; exit 1; }
  echo "installing: python3 python3-venv" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends python3 python3-venv >/dev/null
fi
key=$({ cat tests/sdk/requirements.txt; python3 -c 'import sys; print(sys.version, sys.base_prefix)'; } \
  | sha256sum | cut -c1-16)
venv=/var/cache/imds-proxy-test/sdk-venv-$key
mkdir -p "$(dirname "$venv")"
# One builder at a time (the suite and a bench run may start together).
exec 9>"$(dirname "$venv")/.sdk-venv.lock"
flock 9
if [ ! -f "$venv/.complete" ]; then
  echo "creating the SDK virtualenv $venv" >&2
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -r tests/sdk/requirements.txt >&2
  "$venv/bin/python" -c 'import google.auth, azure.identity, boto3, cryptography, moto.server, prometheus_client'
  touch "$venv/.complete"
fi
echo "$venv"
