#!/usr/bin/env bash
# The whole test suite, on a fresh Debian machine, as root: installs its packages,
# starts dockerd if none answers, runs every tier (unit, loopback proxy, network
# namespaces with real nftables, real Docker), and cleans up after itself.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "the suite needs root (namespaces, nftables, Docker)" >&2; exit 1; }
scripts/install-deps.sh test

work=$(mktemp -d /tmp/imds-proxy-test.XXXXXX)
export IMDS_PROXY_REQUIRE_ROOT_TESTS=1          # root and Docker tests fail, never skip
export IMDS_PROXY_MEASURE_FILE="$work/measure.txt"
started_dockerd=""

cleanup() {
  status=$?
  # Containers and networks the Docker test made carry its label; remove any left over.
  if docker version >/dev/null 2>&1; then
    docker ps -aq --filter label=imds-proxy-test | xargs -r docker rm -f >/dev/null 2>&1 || true
    docker network ls -q --filter label=imds-proxy-test | xargs -r docker network rm >/dev/null 2>&1 || true
  fi
  if [ -n "$started_dockerd" ] && [ -f "$IMDS_PROXY_TEST_DOCKERD_PIDFILE" ]; then
    pid=$(cat "$IMDS_PROXY_TEST_DOCKERD_PIDFILE" 2>/dev/null || true)
    if [ -n "$pid" ] && kill "$pid" 2>/dev/null; then
      for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
  fi
  # Namespaces of this suite are named ipx<pid>-...; a crashed test may leave some.
  ip netns list 2>/dev/null | awk '/^ipx[0-9]+-/{print $1}' | xargs -r -n1 ip netns del 2>/dev/null || true
  [ -s "$IMDS_PROXY_MEASURE_FILE" ] && { echo "== measurements"; cat "$IMDS_PROXY_MEASURE_FILE"; }
  rm -rf "$work"
  exit $status
}
trap cleanup EXIT

if ! docker version >/dev/null 2>&1; then
  export IMDS_PROXY_TEST_DOCKERD_PIDFILE="$work/dockerd.pid"
  export IMDS_PROXY_TEST_DOCKERD_LOG="$work/dockerd.log"
  setsid dockerd --pidfile "$IMDS_PROXY_TEST_DOCKERD_PIDFILE" >>"$IMDS_PROXY_TEST_DOCKERD_LOG" 2>&1 < /dev/null &
  started_dockerd=1
  for _ in $(seq 120); do docker version >/dev/null 2>&1 && break; sleep 0.5; done
  docker version >/dev/null 2>&1 || { echo "dockerd did not start:"; tail -20 "$IMDS_PROXY_TEST_DOCKERD_LOG"; exit 1; }
fi

cargo fmt --all -- --check
cargo clippy --locked --all-targets -q -- -D warnings
cargo test --locked --all-targets 2>&1 | tee "$work/test.log"
# Every tier must have run: a binary that ran no test, or a skipped root test, fails the suite.
for t in netns docker proxy cli; do
  grep -A200 "Running tests/$t.rs" "$work/test.log" | grep -m1 -E "^test result: ok\. [1-9][0-9]* passed" >/dev/null \
    || { echo "tests/$t.rs ran no test" >&2; exit 1; }
done
if grep -q "^SKIPPED" "$work/test.log"; then echo "some tests were skipped" >&2; exit 1; fi
