#!/usr/bin/env bash
# Builds imds-proxy (release) and runs the daemon in the foreground, as root.
# Arguments go to `imds-proxy run`, e.g.: scripts/run.sh --upstream http://169.254.169.254
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "imds-proxy changes nftables and network links: run as root" >&2; exit 1; }
scripts/install-deps.sh build
cargo build --release --locked -q
exec target/release/imds-proxy run "$@"
