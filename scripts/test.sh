#!/usr/bin/env bash
# The whole test suite, on a fresh Debian machine, as root: installs its packages and a
# virtualenv with the cloud SDKs, starts dockerd if none answers, runs every tier (unit,
# loopback proxy, network namespaces with real nftables, real Docker, the real SDKs in
# containers), and cleans up after itself.
set -euo pipefail
cd "$(dirname "$0")/.."

# check_tiers LOG: for each tier, the `test result:` line of that test binary's own output
# in a `cargo test` log (between its `Running` line and the next one) must say ok., at
# least 1 passed and 0 ignored. Prints one line per tier; fails if any tier falls short.
check_tiers() {
  awk -v tiers="lib netns wholehost docker identity networks proxy cache cli nft sdk sts impersonation agents service" '
    BEGIN { n = split(tiers, order, " "); for (i = 1; i <= n; i++) want[order[i]] = 1 }
    { gsub(/\033\[[0-9;]*[A-Za-z]/, "") }            # CARGO_TERM_COLOR=always
    /^ *Running / {                                  # a new test binary starts
      cur = ""
      if ($2 == "unittests" && $3 == "src/lib.rs") cur = "lib"
      else if ($2 ~ /^tests\/[^\/]+\.rs$/) { cur = substr($2, 7, length($2) - 9) }
      if (!(cur in want)) cur = ""
      if (cur != "") ran[cur]++
      next
    }
    /^ *Doc-tests / { cur = ""; next }
    cur != "" && /^test result: / { results[cur]++; line[cur] = $0 }
    function count(s, what) {
      return match(s, "[0-9]+ " what) ? substr(s, RSTART, RLENGTH) + 0 : -1
    }
    END {
      bad = 0
      for (i = 1; i <= n; i++) {
        t = order[i]; what = (t == "lib") ? "src/lib.rs unit tests" : "tests/" t ".rs"
        if (!(t in ran)) { print "tier " t ": FAILED, " what " did not run"; bad = 1; continue }
        if (ran[t] != 1 || results[t] != 1) {
          print "tier " t ": FAILED, " (ran[t] + 0) " runs and " (results[t] + 0) " test result lines for " what
          bad = 1; continue
        }
        l = line[t]; passed = count(l, "passed"); ignored = count(l, "ignored")
        if (l !~ /^test result: ok\./ || passed < 1 || ignored != 0) {
          print "tier " t ": FAILED, " what ": " l; bad = 1; continue
        }
        print "tier " t ": " passed " passed"
      }
      exit bad
    }' "$1"
}

# sdk_venv: the virtualenv with the SDKs of tests/sdk/requirements.txt (tests/sdk.rs runs
# them in containers, through read-only mounts), built once per requirements file and
# interpreter and kept under /var/cache by scripts/sdk-venv.sh (bench/run.sh uses it
# too); exported as IMDS_PROXY_SDK_VENV.
sdk_venv() {
  IMDS_PROXY_SDK_VENV=$(scripts/sdk-venv.sh)
  export IMDS_PROXY_SDK_VENV
}

# node_sdks: the Node.js SDKs of tests/agents/package.json (tests/agents.rs runs them on
# the host and in containers, through read-only mounts). Installed once per package file
# and node version, kept under /var/cache; exported as IMDS_PROXY_NODE_MODULES.
node_sdks() {
  local key dir
  key=$({ cat tests/agents/package.json; node --version; } | sha256sum | cut -c1-16)
  dir=/var/cache/imds-proxy-test/node-sdks-$key
  if [ ! -f "$dir/.complete" ]; then
    echo "installing the Node.js SDKs into $dir" >&2
    rm -rf "$dir"
    mkdir -p "$dir"
    cp tests/agents/package.json "$dir/"
    (cd "$dir" && npm install --no-audit --no-fund --omit=dev --loglevel=error >/dev/null)
    NODE_PATH="$dir/node_modules" node -e 'for (const m of ["@aws-sdk/credential-providers", "@azure/identity", "google-auth-library", "gcp-metadata"]) require(m)'
    touch "$dir/.complete"
  fi
  export IMDS_PROXY_NODE_MODULES=$dir/node_modules
}

[ "$(id -u)" = 0 ] || { echo "the suite needs root (namespaces, nftables, Docker)" >&2; exit 1; }
scripts/install-deps.sh test
sdk_venv
# lyft's metadataproxy, the peer tests/sts.rs compares the daemon with (built and cached
# by the same script as bench/run.sh uses).
IMDS_PROXY_METADATAPROXY_VENV=$(bench/peers/metadataproxy-venv.sh)
export IMDS_PROXY_METADATAPROXY_VENV
node_sdks

work=$(mktemp -d /tmp/imds-proxy-test.XXXXXX)
export IMDS_PROXY_REQUIRE_ROOT_TESTS=1          # root and Docker tests fail, never skip
export IMDS_PROXY_MEASURE_FILE="$work/measure.txt"
export IMDS_PROXY_SKIP_FILE="$work/skipped.txt"    # every skip, whatever libtest captured
export IMDS_PROXY_DAEMON_LOG_FILE="$work/daemon.log" # every line any test's daemon logged
export IMDS_PROXY_ISSUED_FILE="$work/issued.txt"     # every credential the fake clouds issued
started_dockerd=""

cleanup() {
  status=$?
  set +e # best effort from here; the exit status stays the suite's
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

# cargo-deb builds the Debian package that tests/service.rs checks: from crates.io,
# compiled once and kept in cargo's bin directory for later runs.
if ! cargo deb --version >/dev/null 2>&1; then
  echo "installing cargo-deb (cargo install, once)" >&2
  cargo install cargo-deb --locked
fi
cargo deb --locked -q -o "$work/" >/dev/null
IMDS_PROXY_DEB=$(ls "$work"/imds-proxy_*.deb)
export IMDS_PROXY_DEB
echo "package: $IMDS_PROXY_DEB ($(du -h "$IMDS_PROXY_DEB" | cut -f1))"

cargo fmt --all -- --check
cargo clippy --locked --all-targets -q -- -D warnings
# With pipefail a failing cargo test fails the pipeline, and errexit stops the suite here.
cargo test --locked --all-targets 2>&1 | tee "$work/test.log"

# Every tier must have run all its tests: a test binary that did not run, ran no test or
# ignored some, or any skip, fails the suite.
tiers_ok=1
check_tiers "$work/test.log" || tiers_ok=""
if [ -s "$IMDS_PROXY_SKIP_FILE" ]; then
  echo "skipped:" >&2
  sed 's/^/  /' "$IMDS_PROXY_SKIP_FILE" >&2
  tiers_ok=""
fi
[ -n "$tiers_ok" ] || { echo "not every test of every tier ran" >&2; exit 1; }

# No credential any fake cloud issued during the run may appear in any daemon log.
[ -s "$IMDS_PROXY_ISSUED_FILE" ] || { echo "no test issued a credential: the log check below would prove nothing" >&2; exit 1; }
# The SDK tier's emulator file hands out fixed credentials: they were issued too.
sdk_secrets=$(sed -nE 's/^[[:space:]]*(token|secret_access_key|session_token)[[:space:]]*=[[:space:]]*"([^"]+)".*/\2/p' tests/sdk/emulator.toml)
[ "$(wc -l <<<"$sdk_secrets")" -ge 12 ] || { echo "tests/sdk/emulator.toml: expected its 12 fixed credentials, found: $sdk_secrets" >&2; exit 1; }
printf '%s\n' "$sdk_secrets" >>"$IMDS_PROXY_ISSUED_FILE"
# A credential so short that it matches any line would prove nothing either: say which
# line of the record it is (never its value) and fail.
short=$(awk 'length($0) < 12 { print "line " NR " (" length($0) " characters)" }' "$IMDS_PROXY_ISSUED_FILE")
[ -z "$short" ] || { echo "the record of issued credentials holds entries too short to look for: $short" >&2; exit 1; }
if grep -F -f "$IMDS_PROXY_ISSUED_FILE" "$IMDS_PROXY_DAEMON_LOG_FILE" >&2; then
  echo "a credential issued during the run appears in a daemon log (above)" >&2
  exit 1
fi
echo "credentials: $(wc -l < "$IMDS_PROXY_ISSUED_FILE") issued, none in $(wc -l < "$IMDS_PROXY_DAEMON_LOG_FILE") daemon log lines"

# The VM tier (vagrant/test.sh): the package just built, installed on a real Debian 12
# under a real systemd in a VM, and the host failing closed across reboots, an upgrade,
# restarts, a killed, a hung and a stopped daemon; its failure fails the suite.
vagrant/test.sh "$IMDS_PROXY_DEB"
