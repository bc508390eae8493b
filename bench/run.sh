#!/usr/bin/env bash
# The benchmark: imds-proxy measured from inside a real container, through the daemon's
# own DNAT path, against nginx on the same host, all in one run so that the ratios hold
# on a noisy machine. Prints one markdown table and saves it to bench/results/latest.md.
#
# Beside it, for assumed AWS roles, lyft's metadataproxy (bench/peers/) on the same host
# against the same STS: moto, run as a server that checks every signature.
#
# On a fresh Debian machine, as root:   ./bench/run.sh
#
# Installs what it needs (wrk, nginx-light, docker.io, busybox-static, the virtualenvs
# of scripts/sdk-venv.sh and bench/peers/metadataproxy-venv.sh, ...), starts dockerd if
# none answers, builds the daemon in release mode, and removes everything it made on
# exit, failure included: containers, network, image, the daemon and its table and link
# (`imds-proxy uninstall`), its nginx instances, moto, metadataproxy, its own link.
# Refuses to run
# while another imds-proxy holds the root namespace (the daemon under test runs there,
# because Docker's bridges live there). Never touches a system nginx or dockerd.
#
# Environment:
#   IMDS_PROXY_BENCH_SECONDS  length of each measurement (default 5; 1 s warm-up before)
#   IMDS_PROXY_BENCH_BURST    requests in the cold burst (default 1000)
#   IMDS_PROXY_BENCH_PERF     a file: `perf record -g` of the daemon during the cached
#                             64-connection run (build unstripped for symbols:
#                             CARGO_PROFILE_RELEASE_STRIP=false CARGO_PROFILE_RELEASE_DEBUG=1)
set -euo pipefail
cd "$(dirname "$0")/.."
started=$SECONDS

label=imds-proxy-bench       # on every container, network and image the run makes
seconds=${IMDS_PROXY_BENCH_SECONDS:-5}
warmup=1
burst=${IMDS_PROXY_BENCH_BURST:-1000}
per_container=63             # the daemon admits at most 64 connections per container (src/proxy/mod.rs)
workers=2                    # the daemon's tokio worker threads (src/main.rs); each nginx gets as many
addr=169.254.77.1            # where the nginx instances listen: a link-local /32 on a link of the run's own
link=ipxb$$
net=imds-proxy-bench-$$
image=imds-proxy-bench-busybox:1
token_path=/computeMetadata/v1/instance/service-accounts/default/token
meta_path=/computeMetadata/v1/instance/id
meta_value=4520031799277581759
flavor='Metadata-Flavor: Google'
account=123456789012                # moto's account
role_arn=arn:aws:iam::$account:role/reader
creds_path=/latest/meta-data/iam/security-credentials/reader

case $seconds in '' | *[!0-9]* | 0) echo "IMDS_PROXY_BENCH_SECONDS must be a whole number of seconds" >&2; exit 2 ;; esac
case $burst in '' | *[!0-9]* | 0) echo "IMDS_PROXY_BENCH_BURST must be a positive number" >&2; exit 2 ;; esac
[ "$(id -u)" = 0 ] || { echo "the benchmark needs root (nftables, links, Docker)" >&2; exit 1; }

work=$(mktemp -d /tmp/imds-proxy-bench.XXXXXX)
res=$work/results
mkdir -p "$res"
made_policy="" started_dockerd="" built_image="" made_link="" daemon_pid="" sampler_pid="" bin=""
moto_pid="" mp_pid=""

# stop_pid PID [SECONDS]: SIGTERM, then SIGKILL if it is still there after SECONDS.
stop_pid() {
  kill "$1" 2>/dev/null || return 0
  for _ in $(seq $((${2:-10} * 10))); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL "$1" 2>/dev/null || true
}

cleanup() {
  status=$?
  set +e # best effort from here; the exit status stays the run's
  [ -n "$sampler_pid" ] && kill "$sampler_pid" 2>/dev/null
  # Containers go first: none may be left when the interception is removed.
  if docker version >/dev/null 2>&1; then
    docker ps -aq --filter "label=$label" | xargs -r docker rm -f >/dev/null 2>&1
    docker network ls -q --filter "label=$label" | xargs -r docker network rm >/dev/null 2>&1
    [ -n "$built_image" ] && docker image rm -f "$image" >/dev/null 2>&1
  fi
  if [ -n "$daemon_pid" ]; then
    stop_pid "$daemon_pid" 10
    wait "$daemon_pid" 2>/dev/null
    # The daemon logs "interception closed" once it holds the lock, the table and the
    # link: only then are they this run's to remove.
    if grep -q "interception closed" "$work/daemon.log" 2>/dev/null; then
      "$bin" uninstall >>"$work/daemon.log" 2>&1 || echo "bench: imds-proxy uninstall failed" >&2
    fi
    if [ "$status" != 0 ]; then
      echo "== last daemon log lines" >&2
      tail -n 15 "$work/daemon.log" >&2
    fi
  fi
  for pidfile in "$work"/nginx-*/nginx.pid; do
    [ -f "$pidfile" ] && stop_pid "$(cat "$pidfile")" 5
  done
  if [ -n "$mp_pid" ]; then
    [ "$status" != 0 ] && { echo "== last metadataproxy log lines" >&2; tail -n 15 "$work/metadataproxy.log" >&2; }
    stop_pid "$mp_pid" 10 # gunicorn's master stops its workers on SIGTERM
  fi
  [ -n "$moto_pid" ] && stop_pid "$moto_pid" 10
  [ -n "$made_link" ] && ip link del "$link" 2>/dev/null
  [ -n "$made_policy" ] && rm -f /usr/sbin/policy-rc.d
  if [ -n "$started_dockerd" ] && [ -f "$work/dockerd.pid" ]; then
    stop_pid "$(cat "$work/dockerd.pid")" 20
  fi
  rm -rf "$work"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM HUP

fail() { echo "bench: $*" >&2; exit 1; }

# --- packages -------------------------------------------------------------------------
scripts/install-deps.sh build
want=(nftables docker.io busybox-static iproute2 util-linux procps wrk)
missing=()
for p in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ] || ! command -v nginx >/dev/null; then
  echo "installing: ${missing[*]} $(command -v nginx >/dev/null || echo nginx-light)" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  [ ${#missing[@]} -eq 0 ] || apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi
if ! command -v nginx >/dev/null; then
  # Only nginx's binary is wanted. Keep the package from starting the system's nginx:
  # it would take port 80 on every address, the daemon's port.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    made_policy=1
  fi
  pkg=nginx-light # Debian's smallest nginx; later releases fold it into `nginx`
  apt-cache show "$pkg" >/dev/null 2>&1 || pkg=nginx
  apt-get install -y -q --no-install-recommends "$pkg" >/dev/null
  if [ -n "$made_policy" ]; then rm -f /usr/sbin/policy-rc.d; made_policy=""; fi
fi

if [ -n "${IMDS_PROXY_BENCH_PERF:-}" ] && ! command -v perf >/dev/null; then
  fail "IMDS_PROXY_BENCH_PERF needs perf (Debian: linux-perf)"
fi

# --- moto's and metadataproxy's virtualenvs (built once, cached) --------------------
sdk_venv=$(scripts/sdk-venv.sh)
mp_venv=$(bench/peers/metadataproxy-venv.sh)

# --- the root namespace must be free --------------------------------------------------
busy() {
  if pgrep -x imds-proxy >/dev/null; then echo "an imds-proxy process is running"
  elif nft list table ip imds_proxy >/dev/null 2>&1; then echo "the root namespace has the table ip imds_proxy"
  elif ip link show imdsproxy0 >/dev/null 2>&1; then echo "the root namespace has the link imdsproxy0"
  else return 1
  fi
}
if why=$(busy); then
  fail "$why: another imds-proxy is running here, or a previous run left its table and link (\`imds-proxy uninstall\`)"
fi
if ip -o addr show | grep -qF " inet $addr/"; then
  fail "$addr is already on a link of this host (a run killed before it could clean up? \`ip -o addr show\`)"
fi

# --- Docker ---------------------------------------------------------------------------
if ! docker version >/dev/null 2>&1; then
  setsid dockerd --pidfile "$work/dockerd.pid" >>"$work/dockerd.log" 2>&1 </dev/null &
  started_dockerd=1
  for _ in $(seq 120); do docker version >/dev/null 2>&1 && break; sleep 0.5; done
  docker version >/dev/null 2>&1 || { tail -20 "$work/dockerd.log" >&2; fail "dockerd did not start"; }
fi

# --- build ----------------------------------------------------------------------------
echo "building (release)..." >&2
cargo build --release --locked -q --bin imds-proxy --example bench
target=${CARGO_TARGET_DIR:-target}
bin=$target/release/imds-proxy
tool=$target/release/examples/bench

# --- nginx: the origin (static answers) and a keep-alive reverse proxy ---------------
taken=" "
free_port() { # a TCP port no socket of this host listens on, not handed out before
  local p
  for _ in $(seq 500); do
    p=$((20000 + RANDOM % 20000))
    if [[ $taken != *" $p "* ]] && [ -z "$(ss -Htln "sport = :$p")" ]; then
      taken+="$p "
      echo "$p"
      return 0
    fi
  done
  return 1
}
direct_port=$(free_port) # the origin, asked directly (nginx-static, direct)
up_port=$(free_port)     # the origin as the daemon's upstream: counts token requests
proxy_port=$(free_port)  # nginx-proxy
moto_port=$(free_port)   # moto, the STS of the assumed-role rows, on loopback
mp_port=$(free_port)     # metadataproxy, on the bench network's gateway address

# --- moto: STS for both proxies -------------------------------------------------------
# It checks every request's SigV4 signature against the keys it issued; setup creates
# the IAM user `instance` (the instance's role credentials, served by the origin below)
# and the role reader, whose trust policy names that user.
"$sdk_venv/bin/python" -m moto.server -H 127.0.0.1 -p "$moto_port" >"$work/moto.log" 2>&1 &
moto_pid=$!
sts=http://127.0.0.1:$moto_port
for _ in $(seq 150); do
  [ -n "$(ss -Htln "sport = :$moto_port")" ] && break
  kill -0 "$moto_pid" 2>/dev/null || fail "moto exited while starting: $(tail -3 "$work/moto.log")"
  sleep 0.2
done
[ -n "$(ss -Htln "sport = :$moto_port")" ] || fail "moto did not listen within 30 s"
"$sdk_venv/bin/python" tests/sts/moto_setup.py "$sts" >"$work/moto-keys.json" \
  || fail "tests/sts/moto_setup.py failed"
moto_key() { "$sdk_venv/bin/python" -c 'import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$work/moto-keys.json" "$1"; }
instance_key=$(moto_key access_key_id)
instance_secret=$(moto_key secret_access_key)
[ "$(moto_key account)" = "$account" ] || fail "moto's account is $(moto_key account), not $account"
moto_setup_lines=$(wc -l <"$work/moto.log") # from here on, every `POST /` is an STS call

ip link add "$link" type bridge # no dummy driver on every kernel; an empty bridge works the same
made_link=1
ip addr add "$addr/32" dev "$link"
ip link set "$link" up

# A GCE token answer as the real service gives it; the token is random per run.
token=ya29.c.bench-$(head -c 150 /dev/urandom | base64 -w0 | tr -dc 'A-Za-z0-9' | head -c 180)
token_json="{\"access_token\":\"$token\",\"expires_in\":3599,\"token_type\":\"Bearer\"}"
# EC2's answers for the instance's own role, which the daemon reads (through its IMDSv2
# session) to sign AssumeRole with: moto's user keys, no session token.
instance_json="{\"Code\":\"Success\",\"LastUpdated\":\"$(date -u +%Y-%m-%dT%H:%M:%SZ)\",\"Type\":\"AWS-HMAC\",\"AccessKeyId\":\"$instance_key\",\"SecretAccessKey\":\"$instance_secret\",\"Token\":\"\",\"Expiration\":\"$(date -u -d '+6 hours' +%Y-%m-%dT%H:%M:%SZ)\"}"

nginx_conf() { # nginx_conf DIR SERVERS...: the whole file, the servers' text appended
  local dir=$1
  shift
  mkdir -p "$dir/tmp"
  cat <<EOF
worker_processes $workers;
worker_rlimit_nofile 16384;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 8192; }
http {
    access_log off;
    server_tokens off;
    keepalive_timeout 75s;
    keepalive_requests 1000000; # as the daemon: no cap on requests per connection
    client_body_temp_path $dir/tmp/body;
    proxy_temp_path $dir/tmp/proxy;
    fastcgi_temp_path $dir/tmp/fastcgi;
    uwsgi_temp_path $dir/tmp/uwsgi;
    scgi_temp_path $dir/tmp/scgi;
$*
}
EOF
}
origin_server() { # origin_server PORT [DIRECTIVE for the token location]
  cat <<EOF
    server {
        listen $addr:$1;
        add_header Metadata-Flavor Google always;
        location = $token_path {
            ${2:-}
            default_type application/json;
            return 200 '$token_json';
        }
        location = $meta_path {
            default_type application/text;
            return 200 '$meta_value';
        }
        location = /latest/api/token {
            default_type text/plain;
            return 200 'bench-imdsv2-session';
        }
        location = /latest/meta-data/iam/security-credentials/ {
            default_type text/plain;
            return 200 'instance-role';
        }
        location = /latest/meta-data/iam/security-credentials/instance-role {
            default_type text/plain;
            return 200 '$instance_json';
        }
        location = /latest/meta-data/placement/region {
            default_type text/plain;
            return 200 'us-east-1';
        }
        location / {
            return 404;
        }
    }
EOF
}
start_nginx() { # start_nginx NAME CONFIG-TEXT
  local dir=$work/nginx-$1
  mkdir -p "$dir"
  printf '%s\n' "$2" >"$dir/nginx.conf"
  nginx -q -t -p "$dir/" -c "$dir/nginx.conf" -e "$dir/error.log" || fail "nginx $1: bad configuration"
  nginx -p "$dir/" -c "$dir/nginx.conf" -e "$dir/error.log"
  for _ in $(seq 50); do [ -s "$dir/nginx.pid" ] && return 0; sleep 0.1; done
  fail "nginx $1 did not start: $(tail -3 "$dir/error.log")"
}
start_nginx origin "$(nginx_conf "$work/nginx-origin" \
  "$(origin_server "$direct_port")" \
  "$(origin_server "$up_port" "access_log $work/token-requests.log combined buffer=32k flush=100ms;")")"
start_nginx proxy "$(nginx_conf "$work/nginx-proxy" "
    upstream origin {
        server $addr:$direct_port;
        keepalive 64;
    }
    server {
        listen $addr:$proxy_port;
        location / {
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
        }
    }")"

# --- containers -----------------------------------------------------------------------
if ! docker image inspect "$image" >/dev/null 2>&1; then
  ctx=$work/image
  mkdir -p "$ctx"
  cp /usr/bin/busybox "$ctx/busybox"
  printf 'FROM scratch\nCOPY busybox /bin/busybox\nRUN ["/bin/busybox","--install","-s","/bin"]\n' >"$ctx/Dockerfile"
  docker build -q --label "$label" -t "$image" "$ctx" >/dev/null 2>"$work/image.log" \
    || { cat "$work/image.log" >&2; fail "cannot build the image $image"; }
  built_image=1
fi
docker network create --label "$label" --driver bridge "$net" >/dev/null
ncont=$(((burst + per_container - 1) / per_container))
pids=()
for i in $(seq 0 $((ncont - 1))); do
  # Each only sleeps: the load comes from the host, in its network namespace.
  docker run -d --rm --label "$label" --name "$net-c$i" --network "$net" "$image" sleep 900 >/dev/null &
  pids+=($!)
done
# The assumed-role load comes from two more: one labelled for imds-proxy (its policy
# allows the role), one with metadataproxy's IAM_ROLE in its environment.
docker run -d --rm --label "$label" --name "$net-aws" --network "$net" \
  --label imds-proxy.policy=bench-aws --label "imds-proxy.aws.role-arn=$role_arn" \
  "$image" sleep 900 >/dev/null &
pids+=($!)
docker run -d --rm --label "$label" --name "$net-mp" --network "$net" --env IAM_ROLE=reader \
  "$image" sleep 900 >/dev/null &
pids+=($!)
for p in "${pids[@]}"; do wait "$p" || fail "a container did not start"; done
netns=()
for i in $(seq 0 $((ncont - 1))); do
  netns+=(--netns "/proc/$(docker inspect -f '{{.State.Pid}}' "$net-c$i")/ns/net")
done
cpid=$(docker inspect -f '{{.State.Pid}}' "$net-c0") # the steady-state load comes from this one
aws_pid=$(docker inspect -f '{{.State.Pid}}' "$net-aws")
mp_cpid=$(docker inspect -f '{{.State.Pid}}' "$net-mp")
gateway=$(docker network inspect -f '{{(index .IPAM.Config 0).Gateway}}' "$net")

# --- metadataproxy --------------------------------------------------------------------
# As its settings.py reads them: the caller's role from its container's IAM_ROLE, found
# through the Docker socket by source address; STS through botocore (its own AWS_REGION
# would hard-code the real STS endpoint, so only AWS_DEFAULT_REGION is set); paths other
# than credentials to the origin. gunicorn's sync workers, as many as the daemon's.
env -i PATH=/usr/bin:/bin HOME="$work" \
  METADATA_URL="http://$addr:$direct_port" DEFAULT_ACCOUNT_ID="$account" \
  AWS_ACCESS_KEY_ID="$instance_key" AWS_SECRET_ACCESS_KEY="$instance_secret" \
  AWS_DEFAULT_REGION=us-east-1 AWS_ENDPOINT_URL_STS="$sts" AWS_EC2_METADATA_DISABLED=true \
  "$mp_venv/bin/gunicorn" metadataproxy:app -b "$gateway:$mp_port" -w "$workers" \
  >"$work/metadataproxy.log" 2>&1 &
mp_pid=$!
for _ in $(seq 150); do
  [ -n "$(ss -Htln "sport = :$mp_port")" ] && break
  kill -0 "$mp_pid" 2>/dev/null || fail "metadataproxy exited while starting: $(tail -3 "$work/metadataproxy.log")"
  sleep 0.2
done
[ -n "$(ss -Htln "sport = :$mp_port")" ] || fail "metadataproxy did not listen within 30 s"

# --- the daemon -----------------------------------------------------------------------
if why=$(busy); then fail "$why (it started while this run was being set up)"; fi
# The GCE class's quota on the real service (50/s, 16 in flight) would measure the quota,
# not the proxy: the origin here is local, so the bench lifts it. The cache stays on.
cat >"$work/daemon.toml" <<TOML
[upstream_limits]
gce = "1000000/s burst 1000000"
[upstream_concurrency]
gce = 1024

# The assumed-role rows: the one role the labelled container asks for.
[policies.bench-aws]
default = "allow"
aws_roles = ["$role_arn"]
TOML
AWS_ENDPOINT_URL_STS=$sts IMDS_PROXY_LOG=info "$bin" run --config "$work/daemon.toml" \
  --upstream "http://$addr:$up_port" >"$work/daemon.log" 2>&1 &
daemon_pid=$!
for _ in $(seq 200); do
  grep -q "interception live" "$work/daemon.log" && break
  kill -0 "$daemon_pid" 2>/dev/null || fail "the daemon exited while starting"
  sleep 0.1
done
grep -q "interception live" "$work/daemon.log" || fail "the daemon did not go live in 20 s"
# Only now may a container send to 169.254.169.254.

kv() { sed -n "s/^$2=//p" "$1" | tail -n 1; } # kv FILE KEY
hdr=(-H "$flavor") # the request header of checks and loads: GCE's, but none for AWS
check() { # check NAME ADDR PATH EXPECT COUNT [NETNS...]: COUNT answers, each containing EXPECT
  local name=$1 to=$2 path=$3 expect=$4 count=$5
  shift 5
  "$tool" burst "$@" --addr "$to" --path "$path" "${hdr[@]}" --expect "$expect" --total "$count" >"$work/check.txt"
  [ "$(kv "$work/check.txt" ok)" = "$count" ] || fail "$name: $(tr '\n' ' ' <"$work/check.txt")"
}
imds=169.254.169.254:80
one=(--netns "/proc/$cpid/ns/net")
check "origin, direct" "$addr:$direct_port" "$token_path" access_token 1 "${one[@]}"
check "nginx-proxy" "$addr:$proxy_port" "$meta_path" "$meta_value" 1 "${one[@]}"
# One request from every container: the daemon knows them all before the burst (and
# the token path stays cold: nothing asks for a token before the burst).
check "imds-proxy, every container" "$imds" "$meta_path" "$meta_value" "$ncont" "${netns[@]}"
sleep 0.5
status_kib() { awk -v k="$1:" '$1 == k { print $2 }' "/proc/$daemon_pid/status"; }
{
  echo "idle_rss_kib=$(status_kib VmRSS)"
  echo "idle_hwm_kib=$(status_kib VmHWM)"
} >"$res/memory.txt"

# The daemon's resident memory, every 100 ms, for as long as the load runs; "phase"
# lines mark which load.
(
  while :; do
    while read -r k v _; do [ "$k" = VmRSS: ] && echo "$v"; done <"/proc/$daemon_pid/status"
    sleep 0.1
  done
) >>"$work/rss.txt" 2>/dev/null &
sampler_pid=$!
max_rss() { awk -v p="$1" '/^phase/ { on = ($2 == p); next } on && $1 > m { m = $1 } END { print m + 0 }' "$work/rss.txt"; }

# --- steady load with wrk, from container 0's namespace --------------------------------
load_pid=$cpid # the container whose network namespace the load comes from
measure() { # measure NAME URL CONNECTIONS [perf]: a warm-up, then the measured run
  local name=$1 url=$2 conns=$3 threads=1 perf_pid=""
  [ "$conns" -gt 1 ] && threads=$workers
  local args=(-t"$threads" -c"$conns" --timeout 5s "${hdr[@]}" -s bench/wrk-report.lua)
  sleep 0.5 # the previous run's connections are closed: the daemon counts 64 per container
  nsenter -t "$load_pid" -n wrk "${args[@]}" -d"${warmup}s" "$url" >/dev/null
  sleep 0.5
  if [ "${4:-}" = perf ] && [ -n "${IMDS_PROXY_BENCH_PERF:-}" ]; then
    perf record -q -g -p "$daemon_pid" -o "$IMDS_PROXY_BENCH_PERF" -- sleep "$seconds" 2>/dev/null &
    perf_pid=$!
  fi
  nsenter -t "$load_pid" -n wrk "${args[@]}" -d"${seconds}s" "$url" >"$res/$name.txt"
  if [ -n "$perf_pid" ]; then wait "$perf_pid" || echo "bench: perf record failed" >&2; fi
  printf '  %-18s %8.0f req/s  p50 %5s µs  p99 %6s µs  errors %s\n' "$name" \
    "$(kv "$res/$name.txt" rps)" "$(kv "$res/$name.txt" p50_us)" "$(kv "$res/$name.txt" p99_us)" \
    "$(($(kv "$res/$name.txt" errors) + $(kv "$res/$name.txt" non2xx)))" >&2
}
daemon_url=http://169.254.169.254
direct_url=http://$addr:$direct_port
proxy_url=http://$addr:$proxy_port

# 2. Pass-through first: it asks for no token (the burst stays cold) and the memory it
#    needs is not mixed with what the burst leaves behind.
echo "pass-through (${seconds} s each):" >&2
echo "phase steady" >>"$work/rss.txt"
for c in 1 64; do
  measure "pass-daemon-c$c" "$daemon_url$meta_path" "$c"
  measure "pass-proxy-c$c" "$proxy_url$meta_path" "$c"
  measure "pass-direct-c$c" "$direct_url$meta_path" "$c"
done

# 3. The cold burst: the first token requests of the run.
echo "cold burst: $burst token requests at once from $ncont containers" >&2
echo "phase burst" >>"$work/rss.txt"
"$tool" burst "${netns[@]}" --addr "$imds" --path "$token_path" -H "$flavor" \
  --expect access_token --total "$burst" >"$res/burst.txt"
sleep 0.5 # the origin writes its request log every 100 ms
{
  echo "upstream=$(cat "$work/token-requests.log" 2>/dev/null | wc -l)"
  echo "containers=$ncont"
} >>"$res/burst.txt"
echo "  answered $(kv "$res/burst.txt" ok) of $burst (sent within $(kv "$res/burst.txt" send_spread_us) µs), p50 $(kv "$res/burst.txt" p50_us) µs, p99 $(kv "$res/burst.txt" p99_us) µs; the upstream saw $(kv "$res/burst.txt" upstream) token requests" >&2

# 1. Cached tokens: the burst has asked for the token, so a cache is warm by now.
echo "cached token (${seconds} s each):" >&2
echo "phase cached" >>"$work/rss.txt"
for c in 1 64; do
  perf=""
  [ "$c" = 64 ] && perf=perf
  measure "cached-daemon-c$c" "$daemon_url$token_path" "$c" $perf
  measure "cached-static-c$c" "$direct_url$token_path" "$c"
done

# 5. Assumed AWS role credentials, cached: role reader for a container, through
#    imds-proxy (its broker holds the session) and through metadataproxy (which caches
#    the role's credentials). Both answer a plain IMDSv1 GET (metadataproxy has no
#    IMDSv2); each container's first request has been answered before the warm-up.
echo "assumed role, cached (${seconds} s each; metadataproxy with $workers sync workers):" >&2
echo "phase assumed" >>"$work/rss.txt"
hdr=()
check "imds-proxy, assumed role" "$imds" "$creds_path" AccessKeyId 1 --netns "/proc/$aws_pid/ns/net"
check "metadataproxy, assumed role" "$gateway:$mp_port" "$creds_path" AccessKeyId 1 --netns "/proc/$mp_cpid/ns/net"
for c in 1 64; do
  load_pid=$aws_pid
  measure "aws-daemon-c$c" "$daemon_url$creds_path" "$c"
  load_pid=$mp_cpid
  measure "aws-mp-c$c" "http://$gateway:$mp_port$creds_path" "$c"
done
load_pid=$cpid
hdr=(-H "$flavor")
# Who asked STS how often: the daemon logs each session it got from AssumeRole
# (`credentials fetched ... got=arn:aws:sts::<account>:assumed-role/...`); moto logs
# every call.
assumed='credentials fetched .*:assumed-role/'
{
  echo "daemon_assume=$(grep -c "$assumed" "$work/daemon.log" || true)"
  echo "sts_calls=$(tail -n +$((moto_setup_lines + 1)) "$work/moto.log" | grep -c '"POST / HTTP' || true)"
} >"$res/aws.txt"
grep "$assumed" "$work/daemon.log" | sed 's/^/  daemon: /' >&2 || true
echo "  STS calls: $(kv "$res/aws.txt" sts_calls), of them imds-proxy's AssumeRole: $(kv "$res/aws.txt" daemon_assume)" >&2

# --- 4. memory, the machine, the report ---------------------------------------------
kill "$sampler_pid" 2>/dev/null
wait "$sampler_pid" 2>/dev/null || true
sampler_pid=""
{
  echo "steady_rss_kib=$(max_rss steady)"
  echo "burst_rss_kib=$(max_rss burst)"
  echo "cached_rss_kib=$(max_rss cached)"
  echo "assumed_rss_kib=$(max_rss assumed)"
  echo "hwm_kib=$(status_kib VmHWM)"
} >>"$res/memory.txt"
{
  echo "date=$(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "nproc=$(nproc)"
  echo "kernel=$(uname -r)"
  echo "cpu=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
  echo "commit=$(git describe --always --dirty 2>/dev/null || echo unknown)"
  echo "wrk=$( (wrk -v 2>&1 || true) | awk 'NR == 1 { print $1 " " $2 }')"
  echo "nginx=$(nginx -v 2>&1 | sed 's|.*nginx/||')"
  echo "docker=$(docker version -f '{{.Server.Version}}' 2>/dev/null)"
  echo "seconds=$seconds"
  echo "warmup=$warmup"
  echo "workers=$workers"
  echo "metadataproxy=$("$mp_venv/bin/python" -c 'import importlib.metadata as m; print(m.version("metadataproxy"))')"
  echo "gunicorn=$("$mp_venv/bin/gunicorn" --version 2>&1 | awk '{ print $NF }' | tr -d '()')"
  echo "moto=$("$sdk_venv/bin/python" -c 'import moto; print(moto.__version__)')"
} >"$res/meta.txt"
warnings=$(grep -c ' WARN ' "$work/daemon.log" || true)
[ "$warnings" = 0 ] || echo "the daemon logged $warnings warnings, e.g.: $(grep -m1 ' WARN ' "$work/daemon.log")" >&2

"$tool" report "$res" >"$work/report.md"
mkdir -p bench/results
cp "$work/report.md" bench/results/latest.md
echo
cat "$work/report.md"
echo
echo "saved to bench/results/latest.md ($((SECONDS - started)) s in all)" >&2
