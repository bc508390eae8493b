#!/usr/bin/env bash
# The half of the VM test tier that runs inside the VM, as root (vagrant/test.sh copies it
# to /usr/local/sbin/imds-vmtest and calls its subcommands over SSH). Times are the VM's
# uptime in seconds (the clock a container reads in /proc/uptime too), so "boot to X" is
# X itself.
#
#   setup-standin DEB   the stand-in cloud at 169.254.169.254 (a namespace, started at boot
#                       before the network and the daemon, logging every connection), and
#                       the daemon pointed at it as at a real cloud
#   positive-control    before the package: a container does reach the stand-in
#   direct              how many connections the stand-in saw from containers
#   upstream            how many it saw from the VM itself (the daemon, the probes)
#   hammers-start       two --restart=always containers asking for a token in a loop
#   step NAME           restart | kill | sigstop | stop | docker-restart | upgrade DEB
#   boot-report         after a reboot: boot to interception live, to first answer, order
#   verify              systemd-analyze verify of the unit
#   now                 boot id and uptime
set -euo pipefail

state=/var/lib/imds-vmtest
standin=/var/lib/imds-standin
image=imds-proxy-vmtest
hammers=(hammer-bridge hammer-net)
unit=imds-proxy.service

uptime_s() { cut -d' ' -f1 /proc/uptime; }
boot_id() { cut -c1-8 /proc/sys/kernel/random/boot_id; }
say() { echo "$*" >&2; }
# measure KEY VALUE: a line vagrant/test.sh collects into its report.
measure() { echo "measure: $1=$2"; }
calc() { awk "BEGIN { printf \"%.2f\", $* }"; }

# The stand-in cloud: a namespace holding 169.254.169.254, reached from the VM by a /32
# route over a veth, as an instance reaches its cloud's metadata service. In it, a relay
# (standin-relay.py) logs every connection, its source and request line, and hands it to
# `imds-proxy emulate`, which answers as GCE, Azure and AWS do (a copy of the binary
# taken from the package before it is installed: upgrades and stops of the service leave
# the stand-in alone).
#
# The daemon forwards to it as to a real cloud (upstream = http://169.254.169.254): its
# requests leave the VM from 169.254.170.2, the route's source. A container's request
# that got past the daemon's tables would be forwarded and masqueraded by Docker to the
# veth's first address, 169.254.170.1 (the positive control checks it): any connection
# from a source other than .2 is a direct one.
own_src=169.254.170.2
standin_lib=/usr/local/lib/imds-standin

# setup_standin DEB: the relay must be at $standin_lib/relay.py already.
setup_standin() {
  local deb=$1
  install -d "$standin" "$standin_lib"
  [ -f "$standin_lib/relay.py" ] || { say "$standin_lib/relay.py is missing"; return 1; }
  dpkg-deb --fsys-tarfile "$deb" | tar -xO ./usr/bin/imds-proxy >"$standin_lib/imds-proxy"
  chmod 0755 "$standin_lib/imds-proxy"
  printf '%s\n' \
    '#!/bin/sh' \
    'set -e' \
    'ip netns del standin 2>/dev/null || true' \
    'ip link del standin0 2>/dev/null || true' \
    'ip netns add standin' \
    'ip link add standin0 type veth peer name eth0 netns standin' \
    '# .1 first: the address masquerading picks; .2, the route source, is the VM own.' \
    'ip addr add 169.254.170.1/32 dev standin0' \
    "ip addr add $own_src/32 dev standin0" \
    'ip link set standin0 up' \
    "ip route replace 169.254.169.254/32 dev standin0 src $own_src" \
    'ip -n standin link set lo up' \
    'ip -n standin addr add 169.254.169.254/32 dev eth0' \
    'ip -n standin link set eth0 up' \
    'ip -n standin route add 169.254.170.0/30 dev eth0' \
    "ip netns exec standin $standin_lib/imds-proxy emulate --listen 127.0.0.1:18080 &" \
    "exec ip netns exec standin python3 $standin_lib/relay.py $standin/requests.log 18080" \
    >"$standin_lib/run"
  chmod 0755 "$standin_lib/run"
  printf '%s\n' \
    '[Unit]' \
    'Description=Stand-in cloud metadata service at 169.254.169.254 (imds-proxy VM tests)' \
    'DefaultDependencies=no' \
    'After=local-fs.target' \
    'Before=network-pre.target imds-proxy.service docker.service' \
    'Wants=network-pre.target' \
    '' \
    '[Service]' \
    "ExecStart=$standin_lib/run" \
    'Restart=always' \
    'RestartSec=1s' \
    '' \
    '[Install]' \
    'WantedBy=sysinit.target' \
    >/etc/systemd/system/imds-standin.service
  # The daemon forwards to the stand-in as to a real cloud, with no start-up probe that
  # could miss it and fall back to the emulator.
  install -d /etc/systemd/system/imds-proxy.service.d
  printf '[Service]\nEnvironment=IMDS_PROXY_UPSTREAM=http://169.254.169.254\n' \
    >/etc/systemd/system/imds-proxy.service.d/vmtest.conf
  systemctl daemon-reload
  systemctl enable --now imds-standin.service
  control_probe host
  # The emulator behind the relay answers too.
  local i
  for i in $(seq 40); do
    if timeout 5 busybox wget -qO /dev/null --header 'Metadata-Flavor: Google' \
      http://169.254.169.254/computeMetadata/v1/instance/id 2>/dev/null; then
      say "the stand-in cloud answers the VM (from $own_src)"
      return 0
    fi
    sleep 0.5
  done
  say "the stand-in's emulator does not answer"
  return 1
}

# control_probe WHO: from the VM itself (the host keeps its direct path), a request with a
# path of its own: it proves the stand-in answers.
control_probe() {
  local i
  for i in $(seq 40); do
    if [ "$(timeout 5 busybox wget -qO- "http://169.254.169.254/control/$1" 2>/dev/null)" = "stand-in cloud" ]; then
      return 0
    fi
    sleep 0.5
  done
  say "the stand-in cloud does not answer the VM"
  return 1
}

build_image() {
  docker image inspect "$image" >/dev/null 2>&1 && return 0
  local ctx
  ctx=$(mktemp -d)
  cp /bin/busybox "$ctx/busybox"
  printf 'FROM scratch\nCOPY busybox /bin/busybox\nRUN ["/bin/busybox","--install","-s","/bin"]\n' >"$ctx/Dockerfile"
  docker build -q -t "$image" "$ctx" >/dev/null
  rm -rf "$ctx"
}

positive_control() {
  if nft list tables 2>/dev/null | grep -q imds; then
    say "imds-proxy tables already present: the positive control needs the open path"
    return 1
  fi
  build_image
  local out src
  out=$(docker run --rm "$image" timeout 8 wget -qO- http://169.254.169.254/control/container 2>&1 || true)
  if [ "$out" != "stand-in cloud" ]; then
    say "a container did not reach the stand-in cloud with the path open: $out"
    return 1
  fi
  src=$(awk '$2 == "conn" && $5 == "/control/container" { s = $3 } END { print s }' "$standin/requests.log")
  if [ -z "$src" ] || [ "$src" = "$own_src" ]; then
    say "a container's request came from '$src', which the count cannot tell from the VM's own"
    return 1
  fi
  say "positive control: with nothing intercepting, a container reaches the stand-in (from $src)"
}

# direct: connections the stand-in saw from any source but the VM's own (the daemon
# forwarding, the VM's probes), less the positive control's.
direct() {
  local log=$standin/requests.log
  [ -f "$log" ] || { echo 0; return; }
  awk -v own="$own_src" '
    $2 != "conn" || $3 == own || $5 == "/control/container" { next }
    { n++; print "direct request: " $0 > "/dev/stderr" }
    END { print n + 0 }' "$log"
}

# upstream: connections the stand-in saw from the VM itself (the daemon forwarding, the
# VM's probes).
upstream() {
  awk -v own="$own_src" '$2 == "conn" && $3 == own { n++ } END { print n + 0 }' \
    "$standin/requests.log" 2>/dev/null || echo 0
}

hammers_start() {
  build_image
  install -d "$state"
  cat >"$state/hammer.sh" <<'EOF'
#!/bin/sh
# Asks for a GCE token through 169.254.169.254 from this container's first instant, in
# a loop: boot id, start and end uptime, ok or fail, one line an attempt.
b=$(cut -c1-8 /proc/sys/kernel/random/boot_id)
while :; do
  t0=$(cut -d' ' -f1 /proc/uptime)
  if timeout 3 wget -qO /dev/null --header 'Metadata-Flavor: Google' \
    http://169.254.169.254/computeMetadata/v1/instance/service-accounts/default/token 2>/dev/null; then
    r=ok
  else
    r=fail
  fi
  t1=$(cut -d' ' -f1 /proc/uptime)
  echo "$b $t0 $t1 $r" >>"/out/$1.log"
  sleep 0.2
done
EOF
  docker network inspect imdsvmtest >/dev/null 2>&1 || docker network create imdsvmtest >/dev/null
  docker rm -f "${hammers[@]}" >/dev/null 2>&1 || true
  docker run -d --name hammer-bridge --restart=always -v "$state:/out" "$image" sh /out/hammer.sh hammer-bridge >/dev/null
  docker run -d --name hammer-net --network imdsvmtest --restart=always -v "$state:/out" "$image" sh /out/hammer.sh hammer-net >/dev/null
  local t
  t=$(uptime_s)
  wait_answered "$(boot_id)" "$t" 120 >/dev/null
}

# first_ok NAME BOOT T: end time of the first answered attempt of this boot that started
# after T, or nothing.
first_ok() {
  awk -v b="$2" -v t="$3" '$1 == b && $2 + 0 > t + 0 && $4 == "ok" { print $3; exit }' "$state/$1.log" 2>/dev/null || true
}

# wait_answered BOOT T TIMEOUT: waits until every hammer was answered by an attempt
# started after T; prints the latest of their first answers' end times.
wait_answered() {
  local deadline latest h f
  deadline=$(calc "$(uptime_s) + $3")
  while :; do
    latest=0
    for h in "${hammers[@]}"; do
      f=$(first_ok "$h" "$1" "$2")
      if [ -z "$f" ]; then latest=""; break; fi
      latest=$(awk -v a="$latest" -v b="$f" 'BEGIN { print (b > a) ? b : a }')
    done
    if [ -n "$latest" ]; then echo "$latest"; return 0; fi
    if awk -v n="$(uptime_s)" -v d="$deadline" 'BEGIN { exit !(n > d) }'; then
      say "not every container was answered within $3 s after $2"
      for h in "${hammers[@]}"; do say "$h: $(tail -2 "$state/$h.log" 2>/dev/null | tr '\n' ' ')"; done
      return 1
    fi
    sleep 0.3
  done
}

# window BOOT T0 T1: per hammer, the attempts started in [T0, T1]: answered, refused,
# and the longest time between two answers (the last answer before T0 included).
window() {
  local h
  for h in "${hammers[@]}"; do
    awk -v b="$1" -v t0="$2" -v t1="$3" -v h="$h" '
      $1 != b { next }
      $2 + 0 < t0 + 0 && $4 == "ok" { last = $3 }
      $2 + 0 >= t0 + 0 && $2 + 0 <= t1 + 0 {
        if ($4 == "ok") { ok++; if (last != "" && $3 - last > gap) gap = $3 - last; last = $3 }
        else fail++
      }
      END { printf "%s: %d answered, %d refused, longest time without an answer %.2f s\n", h, ok, fail, gap }' \
      "$state/$h.log"
  done
}

# max_gap BOOT T0 T1: the longest time without an answer over both hammers.
max_gap() {
  window "$@" | sed -E 's/.*answer ([0-9.]+) s$/\1/' | sort -n | tail -1
}

main_pid() { systemctl show -p MainPID --value "$unit"; }

# answered_again NAME T0 T1: waits until containers are answered by an attempt started
# after T1 (the action done); reports the time from T0 (the action's start) to that
# answer, and the longest time without an answer in between.
answered_again() {
  local b first
  b=$(boot_id)
  first=$(wait_answered "$b" "$3" 120) || return 1
  measure "$1_answered_again_s" "$(calc "$first - $2")"
  measure "$1_longest_unanswered_s" "$(max_gap "$b" "$2" "$first")"
  window "$b" "$2" "$first" >&2
}

step() {
  local name=$1 t0 t1 pid newpid b
  b=$(boot_id)
  pid=$(main_pid)
  t0=$(uptime_s)
  case "$name" in
    restart)
      systemctl restart "$unit"
      ;;
    kill)
      kill -KILL "$pid"
      ;;
    sigstop)
      # A hung daemon: it stops feeding the watchdog (WatchdogSec=30s); systemd must kill
      # and restart it while its tables keep refusing containers.
      kill -STOP "$pid"
      ;;
    stop)
      systemctl stop "$unit"
      t1=$(uptime_s)
      sleep 10
      local answered
      answered=$(awk -v b="$b" -v t="$t1" '$1 == b && $2 + 0 > t + 0 && $4 == "ok"' "$state"/hammer-*.log | wc -l)
      window "$b" "$t1" "$(uptime_s)" >&2
      if [ "$answered" != 0 ]; then
        say "containers were answered while the service was stopped"
        return 1
      fi
      systemctl is-active -q "$unit" && { say "the service is active after stop"; return 1; }
      say "stopped 10 s: containers refused throughout"
      t0=$(uptime_s)
      systemctl start "$unit"
      ;;
    docker-restart)
      systemctl restart docker.service
      ;;
    upgrade)
      local before after
      before=$(dpkg-query -W -f '${Version}' imds-proxy)
      dpkg -i "$2" >&2
      after=$(dpkg-query -W -f '${Version}' imds-proxy)
      measure upgrade_dpkg_s "$(calc "$(uptime_s) - $t0")"
      say "upgraded $before -> $after"
      [ "$before" != "$after" ] || { say "the version did not change"; return 1; }
      ;;
    *)
      say "unknown step $name"
      return 2
      ;;
  esac
  t1=$(uptime_s)
  answered_again "$name" "$t0" "$t1" || return 1
  newpid=$(main_pid)
  if [ "$name" != docker-restart ] && [ "$newpid" = "$pid" ]; then
    say "the daemon was not replaced (pid $pid)"
    return 1
  fi
  if [ "$name" = sigstop ]; then
    local journal timeout_at
    journal=$(journalctl -u "$unit" -b --no-pager -o short-monotonic)
    grep -i watchdog <<<"$journal" | tail -3 >&2 || true
    # The last watchdog timeout of this boot: the one this step caused.
    timeout_at=$(grep -i 'watchdog timeout' <<<"$journal" | tail -1 | sed -E 's/^\[ *([0-9.]+)\].*/\1/')
    [ -n "$timeout_at" ] || { say "no watchdog timeout in the journal"; return 1; }
    awk -v a="$timeout_at" -v t="$t0" 'BEGIN { exit !(a + 0 > t + 0) }' \
      || { say "the last watchdog timeout ($timeout_at) came before the SIGSTOP ($t0)"; return 1; }
    measure sigstop_to_watchdog_timeout_s "$(calc "$timeout_at - $t0")"
  fi
  systemctl is-active -q "$unit" || { say "the service is not active"; return 1; }
}

# boot_report: after a reboot. The daemon must be live before Docker starts; reports boot
# (kernel start) to interception live and to every container answered.
boot_report() {
  local b live imds_ready docker_start first
  b=$(boot_id)
  local journal
  journal=$(journalctl -b -u "$unit" --no-pager -o short-monotonic)
  live=$(grep -m1 'interception live' <<<"$journal" | sed -E 's/^\[ *([0-9.]+)\].*/\1/' || true)
  [ -n "$live" ] || { say "no 'interception live' in this boot's journal"; return 1; }
  imds_ready=$(systemctl show -p ActiveEnterTimestampMonotonic --value "$unit")
  docker_start=$(systemctl show -p ExecMainStartTimestampMonotonic --value docker.service)
  first=$(wait_answered "$b" 0 180) || return 1
  measure "${1:-}boot_to_interception_live_s" "$(calc "$live")"
  measure "${1:-}boot_to_service_ready_s" "$(calc "$imds_ready / 1000000")"
  measure "${1:-}boot_to_dockerd_start_s" "$(calc "$docker_start / 1000000")"
  measure "${1:-}boot_to_first_answer_s" "$(calc "$first")"
  say "$(systemd-analyze time 2>/dev/null | head -1)"
  grep -m1 -E 'tables owned|persistent' <<<"$journal" >&2 || true
  if [ "$imds_ready" -gt "$docker_start" ]; then
    say "dockerd started before the service was ready"
    return 1
  fi
  local early
  early=$(awk -v b="$b" -v t="$live" '$1 == b && $2 + 0 < t + 0' "$state"/hammer-*.log | wc -l)
  [ "$early" = 0 ] || { say "$early container attempts before interception was live"; return 1; }
  systemctl is-active -q "$unit" || { say "the service is not active"; return 1; }
}

verify() {
  local out
  out=$(systemd-analyze verify "$unit" 2>&1) || { echo "$out" >&2; return 1; }
  [ -z "$out" ] || { echo "$out" >&2; return 1; }
  say "systemd-analyze verify $unit: clean"
}

case "${1:-}" in
  setup-standin) setup_standin "$2" ;;
  positive-control) positive_control ;;
  direct) direct ;;
  upstream) upstream ;;
  hammers-start) hammers_start ;;
  step) shift; step "$@" ;;
  boot-report) boot_report "${2:-}" ;;
  verify) verify ;;
  now) echo "$(boot_id) $(uptime_s)" ;;
  *) say "usage: $0 setup-standin|positive-control|direct|hammers-start|step NAME|boot-report|verify|now"; exit 2 ;;
esac
