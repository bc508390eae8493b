#!/usr/bin/env bash
# Start burst: many containers started at once on a host already running many others,
# each asking for metadata from its very first instant. What a user would see: how many
# were answered 503 (not identified in time) or as another container, how long the
# daemon took to identify each first request (its own `identify_us`, p50 and p99), and
# how many Docker API calls the daemon made per container start.
#
# On a fresh Debian machine, as root:   ./bench/start-burst.sh
#
# The daemon runs in the root namespace (Docker's bridges are there) on its built-in
# emulator, so no cloud is needed. Refuses to run while another imds-proxy holds the
# root namespace. Removes everything it made on exit, failure included.
#
# Environment:
#   IMDS_PROXY_BURST_IDLE   containers already running (default 200)
#   IMDS_PROXY_BURST_START  containers started at once (default 40)
#   IMDS_PROXY_BURST_LOG    a file to keep the daemon's log in
#   IMDS_PROXY_BURST_NICE   the daemon's nice value (default 0, as any other process;
#                           a negative one shows how much of the tail is waiting for CPU)
set -euo pipefail
cd "$(dirname "$0")/.."

label=imds-proxy-burst
idle=${IMDS_PROXY_BURST_IDLE:-200}
burst=${IMDS_PROXY_BURST_START:-40}
nice=${IMDS_PROXY_BURST_NICE:-0}
image=imds-proxy-burst-busybox:1
path=/latest/meta-data/instance-id
case $idle$burst in *[!0-9]*) echo "IMDS_PROXY_BURST_IDLE and _START are numbers" >&2; exit 2 ;; esac
[ "$(id -u)" = 0 ] || { echo "the start burst needs root (nftables, Docker)" >&2; exit 1; }

work=$(mktemp -d /tmp/imds-proxy-burst.XXXXXX)
daemon_pid="" started_dockerd="" bin=""

cleanup() {
  status=$?
  set +e
  if docker version >/dev/null 2>&1; then
    docker ps -aq --filter "label=$label" | xargs -r docker rm -f >/dev/null 2>&1
    docker image rm -f "$image" >/dev/null 2>&1
  fi
  if [ -n "$daemon_pid" ]; then
    kill "$daemon_pid" 2>/dev/null
    wait "$daemon_pid" 2>/dev/null
    grep -q "interception closed" "$work/daemon.log" 2>/dev/null && "$bin" uninstall >/dev/null 2>&1
    [ "$status" != 0 ] && tail -n 15 "$work/daemon.log" >&2
  fi
  if [ -n "$started_dockerd" ] && [ -f "$work/dockerd.pid" ]; then
    kill "$(cat "$work/dockerd.pid")" 2>/dev/null
  fi
  [ -n "${IMDS_PROXY_BURST_LOG:-}" ] && cp "$work/daemon.log" "$IMDS_PROXY_BURST_LOG"
  rm -rf "$work"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM HUP

scripts/install-deps.sh test >/dev/null
if ! docker version >/dev/null 2>&1; then
  setsid dockerd --pidfile "$work/dockerd.pid" >"$work/dockerd.log" 2>&1 </dev/null &
  started_dockerd=1
  for _ in $(seq 120); do docker version >/dev/null 2>&1 && break; sleep 0.5; done
  docker version >/dev/null 2>&1 || { echo "dockerd did not start" >&2; exit 1; }
fi
if nft list table ip imds_proxy >/dev/null 2>&1 || ip link show imdsproxy0 >/dev/null 2>&1; then
  echo "another imds-proxy runs in this namespace (table ip imds_proxy or link imdsproxy0)" >&2
  exit 1
fi
cargo build --release --locked -q
bin=$PWD/target/release/imds-proxy

mkdir -p "$work/img"
cp /usr/bin/busybox "$work/img/busybox"
printf 'FROM scratch\nCOPY busybox /bin/busybox\nRUN ["/bin/busybox","--install","-s","/bin"]\n' >"$work/img/Dockerfile"
docker build -q -t "$image" --label "$label" "$work/img" >/dev/null

IMDS_PROXY_LOG=info,imds_proxy::docker=debug NO_COLOR=1 nice -n "$nice" "$bin" run >"$work/daemon.log" 2>&1 &
daemon_pid=$!
for _ in $(seq 150); do grep -q "interception live" "$work/daemon.log" && break; sleep 0.1; done
grep -q "interception live" "$work/daemon.log" || { echo "the daemon did not start" >&2; exit 1; }

echo "starting $idle idle containers..." >&2
for i in $(seq "$idle"); do
  echo "docker run -d --label $label --network bridge $image sleep 3600"
done | xargs -P 4 -I{} sh -c '{} >/dev/null'
sleep 2 # let the inventory settle

calls_before=$(grep -c "docker api call" "$work/daemon.log" || true)
log_before=$(wc -l <"$work/daemon.log")
echo "starting $burst containers at once..." >&2
# Half ask as `allow`, half as `deny`: an answer of the wrong kind is a wrong identity.
script="wget -S -q -O - http://169.254.169.254$path 2>&1; echo; echo RC=\$?; sleep 3600"
for i in $(seq "$burst"); do
  policy=allow; [ $((i % 2)) = 0 ] && policy=deny
  echo "$i $policy"
done | xargs -P "$burst" -L 1 sh -c \
  "docker run -d --label $label --label imds-proxy.policy=\$1 --name ipxburst-\$0-\$1 $image sh -c '$script' >/dev/null"

for _ in $(seq 120); do
  done_n=0
  for c in $(docker ps -q --filter "name=ipxburst-"); do
    docker logs "$c" 2>&1 | grep -q "RC=" && done_n=$((done_n + 1))
  done
  [ "$done_n" -ge "$burst" ] && break
  sleep 1
done
sleep 1
calls_after=$(grep -c "docker api call" "$work/daemon.log" || true)

ok=0 unavailable=0 wrong=0 other=0
for i in $(seq "$burst"); do
  policy=allow; [ $((i % 2)) = 0 ] && policy=deny
  out=$(docker logs "ipxburst-$i-$policy" 2>&1)
  if grep -q " 503 " <<<"$out"; then unavailable=$((unavailable + 1))
  elif [ $policy = allow ] && grep -q " 200 OK" <<<"$out"; then ok=$((ok + 1))
  elif [ $policy = deny ] && grep -q " 403 " <<<"$out"; then ok=$((ok + 1))
  elif grep -q " 200 OK\| 403 " <<<"$out"; then wrong=$((wrong + 1))
  else other=$((other + 1)); fi
done
# The daemon's identification time of each burst container's request.
tail -n +"$((log_before + 1))" "$work/daemon.log" | grep " request client=" | grep "container=ipxburst-" |
  sed -nE 's/.* identify_us=([0-9]+).*/\1/p' | sort -n >"$work/identify.txt"
n=$(wc -l <"$work/identify.txt")
pct() { [ "$n" -gt 0 ] && sed -n "$(( (n * $1 + 99) / 100 ))p" "$work/identify.txt" || echo -; }
calls=$((calls_after - calls_before))
cat <<EOF
| daemon's nice | containers already running | started at once | answered right | 503 | wrong identity | other | identification p50 | p99 | Docker API calls per start |
|---|---|---|---|---|---|---|---|---|---|
| $nice | $idle | $burst | $ok | $unavailable | $wrong | $other | $(pct 50) µs | $(pct 99) µs | $(awk -v c="$calls" -v b="$burst" 'BEGIN { printf "%.2f", c / b }') |
EOF
