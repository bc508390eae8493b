#!/usr/bin/env bash
# Prints the path of a virtualenv holding lyft's metadataproxy 2.2.0 (the peer that
# bench/run.sh and tests/sts.rs compare imds-proxy with), building it first if needed:
# the dependencies of bench/peers/metadataproxy.txt, every one pinned, then
# metadataproxy itself with --no-deps (its own pins do not install on current Python;
# the file says why). Built once per pin file and interpreter, kept under
# /var/cache/imds-proxy-test with a .complete marker, like scripts/test.sh's SDK
# virtualenv. Progress goes to stderr; stdout is the path alone.
#
# Run it as root on Debian (it installs python3-venv if missing). Run gunicorn from
# the result: "$venv/bin/gunicorn" metadataproxy:app -b HOST:PORT -w N.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
pins=$here/metadataproxy.txt
peer=metadataproxy==2.2.0
cache=/var/cache/imds-proxy-test

[ -f "$pins" ] || { echo "metadataproxy-venv: $pins is missing" >&2; exit 1; }
if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
  [ "$(id -u)" = 0 ] || { echo "metadataproxy-venv: python3 with venv is missing (Debian: python3-venv)" >&2; exit 1; }
  echo "installing: python3 python3-venv" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends python3 python3-venv >/dev/null
fi
key=$({ cat "$pins"; echo "$peer"; python3 -c 'import sys; print(sys.version, sys.base_prefix)'; } \
  | sha256sum | cut -c1-16)
venv=$cache/metadataproxy-venv-$key
mkdir -p "$cache"
# One builder at a time (the suite and a bench run may start together).
exec 9>"$cache/.metadataproxy-venv.lock"
flock 9
if [ ! -f "$venv/.complete" ]; then
  echo "creating the metadataproxy virtualenv $venv" >&2
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$pins" >&2
  "$venv/bin/python" -m pip install -q --disable-pip-version-check --no-deps "$peer" >&2
  # Nothing beyond the pins came in, and it imports as gunicorn will load it.
  extra=$("$venv/bin/python" -m pip freeze --disable-pip-version-check --exclude-editable \
    | grep -viF -f <(sed -n 's/^\([A-Za-z0-9_.-]*\)==.*/\1==/p' "$pins"; echo "${peer%%==*}==") || true)
  [ -z "$extra" ] || { echo "metadataproxy-venv: packages beyond the pins: $extra" >&2; exit 1; }
  "$venv/bin/python" -c 'import metadataproxy, gunicorn' >&2 \
    || { echo "metadataproxy-venv: metadataproxy does not import" >&2; exit 1; }
  touch "$venv/.complete"
fi
echo "$venv"
