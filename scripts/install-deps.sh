#!/usr/bin/env bash
# Installs the Debian packages imds-proxy needs, only those missing.
#   install-deps.sh build   C libraries the nftables bindings link against
#   install-deps.sh test    build + what the test suite drives (nft, Docker, busybox, conntrack)
set -euo pipefail
build=(pkg-config gcc libc6-dev libnftnl-dev libmnl-dev)
test=(nftables docker.io busybox-static iproute2 conntrack util-linux procps)
want=("${build[@]}")
[ "${1:-build}" = test ] && want+=("${test[@]}")
missing=()
for p in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi
command -v cargo >/dev/null || { echo "cargo is required (a Rust toolchain, 1.85 or newer)" >&2; exit 1; }
