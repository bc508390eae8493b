#!/usr/bin/env bash
# Checks the Rust toolchain, then installs the Debian packages imds-proxy needs, only
# those missing.
#   install-deps.sh build   C libraries the nftables bindings link against
#   install-deps.sh test    build + what the test suite drives (nft, Docker, busybox,
#                           conntrack, cloud-init, openssl, systemd-analyze,
#                           dpkg-shlibdeps); also requires
#                           rustfmt and clippy, and node 20+ with npm on PATH
set -euo pipefail
mode=${1:-build}
case $mode in
  build | test) ;;
  *) echo "usage: $0 [build|test]" >&2; exit 2 ;;
esac

# The toolchain is not installed from here: it must already be on PATH.
min_rust=1.85 # Cargo.toml's rust-version
toolchain_fail() { # toolchain_fail WHAT [HINT]
  echo "$1" >&2
  echo "${2:-imds-proxy needs a Rust toolchain $min_rust or newer on PATH (rustup puts it in ~/.cargo/bin; under sudo, PATH may lack it)}" >&2
  exit 1
}
command -v cargo >/dev/null || toolchain_fail "cargo not found"
command -v rustc >/dev/null || toolchain_fail "rustc not found"
rustc_version=$(rustc --version 2>&1) || toolchain_fail "\`rustc --version\` failed: $rustc_version"
# "rustc 1.85.0 (4d91de4e4 2025-02-17)" -> 1 85
read -r major minor < <(sed -nE 's/^rustc ([0-9]+)\.([0-9]+)\..*/\1 \2/p' <<<"$rustc_version") \
  || toolchain_fail "cannot read a version from \`rustc --version\`: $rustc_version"
if [ "$major" -lt "${min_rust%%.*}" ] || { [ "$major" -eq "${min_rust%%.*}" ] && [ "$minor" -lt "${min_rust#*.}" ]; }; then
  toolchain_fail "rustc is too old: $rustc_version"
fi
if [ "$mode" = test ]; then
  # Separate components of a toolchain: the suite runs both.
  out=$(cargo fmt --version 2>&1) \
    || toolchain_fail "\`cargo fmt --version\` failed: $out" "the test suite needs the rustfmt component (rustup component add rustfmt)"
  out=$(cargo clippy --version 2>&1) \
    || toolchain_fail "\`cargo clippy --version\` failed: $out" "the test suite needs the clippy component (rustup component add clippy)"
fi

build=(pkg-config gcc libc6-dev libnftnl-dev libmnl-dev)
# cloud-init and openssl: judges of tests/agents.rs (cloud-init's datasources, the
# signed documents' checks). systemd: systemd-analyze verifies the unit; dpkg-dev:
# dpkg-shlibdeps, which cargo deb asks for the package's Depends (tests/service.rs).
test=(nftables docker.io busybox-static iproute2 conntrack util-linux procps cloud-init openssl systemd dpkg-dev)
want=("${build[@]}")
[ "$mode" = test ] && want+=("${test[@]}")
# Node.js is not installed from here: the SDKs the judges run
# (@aws-sdk/credential-providers and @azure/identity, tests/agents/package.json) need
# node 20 or newer, and Debian's nodejs is older (18 on bookworm). It must be on PATH
# already, with npm (NodeSource's nodejs package, nvm or nodejs.org's tarball).
min_node=20
node_fail() {
  echo "$1" >&2
  echo "the test suite needs node $min_node or newer, with npm, first on PATH: tests/agents.rs runs the Node.js SDKs of tests/agents/package.json, and @aws-sdk/credential-providers and @azure/identity need node $min_node+. Debian's nodejs package is older (18 on bookworm) and will not do: install Node.js $min_node+ from NodeSource (its nodejs package), nvm or nodejs.org, then rerun" >&2
  exit 1
}
if [ "$mode" = test ]; then
  command -v node >/dev/null || node_fail "node not found on PATH"
  node_version=$(node --version 2>&1) || node_fail "\`node --version\` failed: $node_version"
  node_major=$(sed -nE 's/^v([0-9]+)\..*/\1/p' <<<"$node_version")
  [ -n "$node_major" ] || node_fail "cannot read a version from \`node --version\`: $node_version"
  [ "$node_major" -ge "$min_node" ] || node_fail "node is too old: $(command -v node) is $node_version"
  command -v npm >/dev/null || node_fail "npm not found on PATH (node is $(command -v node), $node_version)"
fi
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
