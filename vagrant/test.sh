#!/usr/bin/env bash
# The VM tier: the package installed on a real Debian 12 under a real systemd, and the
# host failing closed across reboots, a package upgrade, restarts, a killed, a hung and a
# stopped daemon and a restarted dockerd, with containers asking for credentials all the
# while. A stand-in cloud in the VM (a namespace holding 169.254.169.254) counts every
# request that reaches it: any request from a container is one the host let through.
#
# Usage: vagrant/test.sh DEB        (root; DEB defaults to $IMDS_PROXY_DEB)
# Installs what it needs (Vagrant, vagrant-libvirt, libvirt, QEMU, mmdebstrap), starts
# libvirt's daemons if none runs, builds the box from Debian's packages (cached under
# /var/cache/imds-proxy-test by a content key), brings the VM up (KVM where it works,
# QEMU's software emulation otherwise), provisions it with vagrant/provision.sh (the
# script a user's `vagrant up` runs), then runs the steps inside it (vagrant/guest.sh).
# Ends with `direct requests seen by the stand-in cloud: N` and `N passed, M failed`;
# exits non-zero if a step failed or N is not 0. Removes the VM, and the libvirt
# networks, pools, daemons and firewall chains it caused, on success and on failure.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

deb=${1:-${IMDS_PROXY_DEB:-}}
[ -n "$deb" ] && [ -f "$deb" ] || { echo "usage: $0 DEB (a package built by cargo deb)" >&2; exit 2; }
deb=$(realpath "$deb")
[ "$(id -u)" = 0 ] || { echo "the VM tier needs root (libvirt, the box build)" >&2; exit 1; }
cache=${IMDS_PROXY_TEST_CACHE:-/var/cache/imds-proxy-test}
reboots=${IMDS_PROXY_VM_REBOOTS:-3}
prefix=imds-proxy-vmtest-
domain=${prefix}default

t_start=$(date +%s)
phase_start=$t_start
work=$(mktemp -d /tmp/imds-proxy-vm.XXXXXX)
chmod 0755 "$work"
report=$work/report.txt
: >"$report"
passed=0
failed=0
direct_total=""
ssh_opts=()
started_libvirtd=""
started_virtlogd=""

# phase NAME: the wall time since the previous phase ended, into the report.
phase() {
  local now
  now=$(date +%s)
  echo "wall time: $1 $((now - phase_start)) s" | tee -a "$report"
  phase_start=$now
}
ok() { passed=$((passed + 1)); echo "ok: $1"; }
fail() { failed=$((failed + 1)); echo "FAILED: $1"; }

# --- what it needs -----------------------------------------------------------------------
install_packages() {
  local missing=""
  for c in vagrant virsh libvirtd virtlogd qemu-system-x86_64 qemu-img mmdebstrap rsync ssh dnsmasq mkfs.ext4; do
    command -v "$c" >/dev/null || missing=1
  done
  dpkg-query -W -f '${Status}' vagrant-libvirt 2>/dev/null | grep -q 'ok installed' || missing=1
  dpkg-query -W -f '${Status}' libvirt-daemon-driver-qemu 2>/dev/null | grep -q 'ok installed' || missing=1
  [ -n "$missing" ] || return 0
  export DEBIAN_FRONTEND=noninteractive
  local codename target=()
  codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
  if [ "$codename" = bookworm ]; then
    # Bookworm's QEMU conflicts with the newer qemu-utils some images carry: QEMU and
    # libvirt come from bookworm-backports, on the mirror apt already uses.
    if ! apt-get indextargets --format '$(CODENAME)' 'Identifier: Packages' | grep -qx bookworm-backports; then
      local uri
      uri=$(apt-get indextargets --format '$(REPO_URI) $(CODENAME)' 'Identifier: Packages' \
        | awk '$2 == "bookworm" { print $1; exit }')
      [ -n "$uri" ] || { echo "apt has no bookworm source to add bookworm-backports beside" >&2; return 1; }
      echo "adding bookworm-backports ($uri) to apt's sources" >&2
      printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
        "$uri" >/etc/apt/sources.list.d/bookworm-backports.sources
    fi
    target=(-t bookworm-backports)
  fi
  echo "installing: Vagrant, vagrant-libvirt, libvirt, QEMU, mmdebstrap" >&2
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends "${target[@]}" \
    vagrant vagrant-libvirt libvirt-daemon-system libvirt-daemon-driver-qemu libvirt-clients \
    qemu-system-x86 qemu-utils mmdebstrap dnsmasq-base rsync openssh-client e2fsprogs \
    iptables >/dev/null
}

# --- libvirt's daemons, and what they leave -----------------------------------------------
virsh() { command virsh -q -c qemu:///system "$@"; }
fw_state() {
  { iptables-save 2>/dev/null; ip6tables-save 2>/dev/null; } | grep -c 'LIBVIRT_' || true
  nft list tables 2>/dev/null | grep -c libvirt || true
}

start_libvirt() {
  if virsh version >/dev/null 2>&1; then
    echo "libvirt: using the libvirtd already running" >&2
    return 0
  fi
  fw_before=$(fw_state | tr '\n' ' ')
  virtlogd -d -p "$work/virtlogd.pid"
  started_virtlogd=1
  libvirtd -d -p "$work/libvirtd.pid"
  started_libvirtd=1
  for _ in $(seq 60); do virsh version >/dev/null 2>&1 && break; sleep 0.5; done
  virsh version >/dev/null 2>&1 || { echo "libvirtd did not answer" >&2; return 1; }
  nets_before=$(virsh net-list --all --name | sort)
  pools_before=$(virsh pool-list --all --name | sort)
}

stop_pid() {
  local pid
  pid=$(cat "$1" 2>/dev/null || true)
  [ -n "$pid" ] || return 0
  kill "$pid" 2>/dev/null || return 0
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
}

# Removes the chains libvirt's iptables backend leaves (LIBVIRT_*: the jumps to them,
# then the chains), or its nftables tables, if none was there before it started.
remove_libvirt_firewall() {
  local ipt table
  for ipt in iptables ip6tables; do
    command -v "$ipt" >/dev/null || continue
    for table in filter nat mangle; do
      "$ipt-save" -t "$table" 2>/dev/null | grep -E '^-A [A-Z]+ .*-j LIBVIRT_' | sed 's/^-A /-D /' \
        | while read -r rule; do eval "$ipt -t $table $rule" 2>/dev/null || true; done
      for chain in $("$ipt-save" -t "$table" 2>/dev/null | sed -nE 's/^:(LIBVIRT_[A-Z]+) .*/\1/p'); do
        "$ipt" -t "$table" -F "$chain" 2>/dev/null || true
        "$ipt" -t "$table" -X "$chain" 2>/dev/null || true
      done
    done
  done
  for family in ip ip6; do
    nft list table "$family" libvirt_network >/dev/null 2>&1 && nft delete table "$family" libvirt_network || true
  done
}

cleanup() {
  local status=$?
  set +e
  trap - EXIT INT TERM
  # The count first: the VM goes next.
  if [ -z "$direct_total" ] && [ "${#ssh_opts[@]}" -gt 0 ]; then
    direct_total=$(VM_TIMEOUT=30 vm imds-vmtest direct 2>/dev/null) || direct_total=""
  fi
  echo "== cleanup"
  if [ -n "${VAGRANT_DOTFILE_PATH:-}" ] && [ -d "$VAGRANT_DOTFILE_PATH" ]; then
    timeout 300 vagrant destroy -f >"$work/destroy.log" 2>&1 || tail -5 "$work/destroy.log"
  fi
  if virsh dominfo "$domain" >/dev/null 2>&1; then
    virsh destroy "$domain" >/dev/null 2>&1
    virsh undefine "$domain" --remove-all-storage >/dev/null 2>&1
  fi
  # The box's image, uploaded into libvirt's pool by vagrant-libvirt.
  for pool in $(virsh pool-list --all --name 2>/dev/null); do
    for vol in $(virsh vol-list "$pool" 2>/dev/null | awk '$1 ~ /^imds-proxy-test-/ { print $1 }'); do
      virsh vol-delete --pool "$pool" "$vol" >/dev/null 2>&1
    done
  done
  if [ -n "$started_libvirtd" ]; then
    for net in $(virsh net-list --all --name 2>/dev/null); do
      grep -qx "$net" <<<"$nets_before" && continue
      virsh net-destroy "$net" >/dev/null 2>&1
      virsh net-undefine "$net" >/dev/null 2>&1
    done
    for pool in $(virsh pool-list --all --name 2>/dev/null); do
      grep -qx "$pool" <<<"$pools_before" && continue
      virsh pool-destroy "$pool" >/dev/null 2>&1
      virsh pool-undefine "$pool" >/dev/null 2>&1
    done
    stop_pid "$work/libvirtd.pid"
  fi
  [ -n "$started_virtlogd" ] && stop_pid "$work/virtlogd.pid"
  if [ -n "$started_libvirtd" ] && [ "$fw_before" = "0 0 " ]; then
    remove_libvirt_firewall
  fi
  phase cleanup >/dev/null
  echo "wall time: total $(($(date +%s) - t_start)) s" >>"$report"
  echo
  echo "== VM tier report"
  sed 's/^measure: /  /; s/^wall time: /  wall time: /; s/^box: /  box: /' "$report"
  # The reboots side by side.
  awk -F'[=_]' '/^measure: reboot[0-9]+_boot_to_/ {
      k = $0; sub(/^measure: reboot[0-9]+_/, "", k); sub(/=.*/, "", k)
      v = $0; sub(/.*=/, "", v); all[k] = all[k] " " v; if (!(k in seen)) { seen[k] = 1; order[++n] = k } }
    END { for (i = 1; i <= n; i++) printf "  over the reboots, %s:%s\n", order[i], all[order[i]] }' "$report"
  [ -n "${IMDS_PROXY_VM_REPORT:-}" ] && cp "$report" "$IMDS_PROXY_VM_REPORT"
  rm -rf "$work"
  echo "direct requests seen by the stand-in cloud: ${direct_total:-unknown}"
  [ "$direct_total" = 0 ] || fail "the stand-in cloud's count: ${direct_total:-unknown}" >/dev/null
  if [ "$status" != 0 ] && [ "$failed" = 0 ]; then
    fail "the tier stopped early (exit $status)" >/dev/null
  fi
  echo "$passed passed, $failed failed"
  [ "$failed" = 0 ] || exit 1
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- the VM --------------------------------------------------------------------------------
# vm ARGS...: a command in the VM, as root, bounded in time.
vm() { timeout "${VM_TIMEOUT:-300}" ssh "${ssh_opts[@]}" default sudo "$@"; }

# run_step NAME CMD...: a step in the VM, then the stand-in's count. Its measurements go
# into the report; it passes if the command does and no direct request appeared.
run_step() {
  local name=$1 out rc=0 n
  shift
  echo "== $name"
  out=$(vm imds-vmtest "$@" 2> >(sed 's/^/   /' >&2)) || rc=$?
  grep '^measure: ' <<<"$out" | sed "s/^measure: /measure: /" | tee -a "$report" || true
  n=$(vm imds-vmtest direct 2> >(sed 's/^/   /' >&2)) || n=""
  if [ "$rc" = 0 ] && [ "$n" = 0 ]; then
    ok "$name"
  else
    fail "$name (exit $rc, direct requests so far: ${n:-unknown})"
  fi
}

# await_new_boot OLD SECONDS: the guest's boot id once it differs from OLD, or nothing
# if the guest has not answered with a new one within SECONDS.
await_new_boot() {
  local old=$1 until=$(($(date +%s) + $2)) new
  while [ "$(date +%s)" -lt "$until" ]; do
    sleep 3
    new=$(VM_TIMEOUT=15 vm imds-vmtest now 2>/dev/null | cut -d' ' -f1) || new=""
    if [ -n "$new" ] && [ "$new" != "$old" ]; then
      echo "$new"
      return
    fi
  done
}

reboot_vm() {
  local i=$1 old new
  echo "== reboot $i"
  old=$(vm imds-vmtest now | cut -d' ' -f1) || { fail "reboot $i: the VM does not answer"; return; }
  local t0
  t0=$(date +%s)
  # Returns at once; the reboot starts a second later.
  vm systemd-run --on-active=1 /bin/systemctl reboot >/dev/null 2>&1 || true
  new=$(await_new_boot "$old" 420)
  if [ -z "$new" ]; then
    # Under software emulation a guest now and then never comes back from a reboot
    # (no DHCP lease, as with `vagrant up` above). A hard reset is a harsher test of
    # the same thing (a power cut), so the boot is checked as any other; the report
    # says it happened, so a pattern would show.
    echo "   not back within 420 s (domain $(virsh domstate "$domain" 2>/dev/null || echo unknown)): resetting it"
    echo "measure: reboot${i}_hard_reset=1" >>"$report"
    virsh reset "$domain" >/dev/null 2>&1 || virsh start "$domain" >/dev/null 2>&1 || true
    new=$(await_new_boot "$old" 600)
  fi
  if [ -z "$new" ]; then fail "reboot $i: the VM did not come back"; return; fi
  echo "   back after $(($(date +%s) - t0)) s: $(VM_TIMEOUT=200 vm systemctl is-system-running --wait 2>/dev/null || true)"
  run_step "reboot $i: containers refused until the daemon is live, then answered" boot-report "reboot${i}_"
}

echo "== VM tier: $deb"
install_packages
phase packages

start_libvirt
phase libvirt

if ! box=$("$here/build-box.sh" "$cache" 2>"$work/box.log"); then
  tail -30 "$work/box.log"
  fail "building the box"
  exit 1
fi
grep '^box: ' "$work/box.log" | tee -a "$report"
phase box

export VAGRANT_HOME=$cache/vagrant.d # not under /root: QEMU runs as libvirt-qemu
export VAGRANT_CWD=$here
export VAGRANT_DOTFILE_PATH=$work/dot
export VAGRANT_CHECKPOINT_DISABLE=1
export VAGRANT_DEFAULT_PROVIDER=libvirt
box_name=imds-proxy-test-$(basename "$(dirname "$box")" | sed 's/^vagrant-box-//')
if [ ! -d "$VAGRANT_HOME/boxes/$box_name" ]; then
  for old in "$VAGRANT_HOME"/boxes/imds-proxy-test-*; do
    [ -d "$old" ] && timeout 120 vagrant box remove -f "$(basename "$old")" >/dev/null 2>&1
    rm -rf "$old"
  done
  timeout 300 vagrant box add --name "$box_name" "$box" >"$work/box-add.log" 2>&1 \
    || { cat "$work/box-add.log"; exit 1; }
fi
export IMDS_PROXY_VAGRANT_BOX=$box_name
export IMDS_PROXY_VAGRANT_PREFIX=$prefix
export IMDS_PROXY_VAGRANT_DEBS=$work/debs
export IMDS_PROXY_DEMO_TRUNCATE=1
mkdir -p "$work/debs"
cp "$deb" "$work/debs/"
if grep -qwE 'vmx|svm' /proc/cpuinfo && [ -w /dev/kvm ]; then
  echo "virtualization: KVM"
else
  echo "virtualization: QEMU's software emulation (no usable KVM here)"
  export IMDS_PROXY_VAGRANT_TCG=1
fi

# The upgrade: the same package with a higher version (no rebuild needed: what is tested
# is the maintainer scripts' hand-over and the new daemon adopting the tables).
version=$(dpkg-deb -f "$deb" Version)
up_version=$version+vmtest1
dpkg-deb -R "$deb" "$work/repack"
sed -i "s/^Version: .*/Version: $up_version/" "$work/repack/DEBIAN/control"
upgrade_deb=$work/imds-proxy_${up_version}_amd64.deb
dpkg-deb --root-owner-group -b "$work/repack" "$upgrade_deb" >/dev/null
rm -rf "$work/repack"
dpkg --compare-versions "$up_version" gt "$version"

# A VM left by a run that was killed would hold the name.
if virsh dominfo "$domain" >/dev/null 2>&1; then
  virsh destroy "$domain" >/dev/null 2>&1 || true
  virsh undefine "$domain" --remove-all-storage >/dev/null 2>&1 || true
fi
echo "== vagrant up ($box_name)"
# Under software emulation a guest now and then never gets going (QEMU idle, no DHCP
# lease, nothing on the serial console) where the same box boots in about 90 s
# otherwise: such a VM is destroyed and brought up once more before the tier fails.
if ! timeout 420 vagrant up --no-provision >"$work/up.log" 2>&1; then
  tail -5 "$work/up.log"
  echo "vagrant up did not finish within 420 s: destroying the VM and bringing it up once more"
  timeout 300 vagrant destroy -f >"$work/destroy.log" 2>&1 || tail -5 "$work/destroy.log"
  if virsh dominfo "$domain" >/dev/null 2>&1; then
    virsh destroy "$domain" >/dev/null 2>&1 || true
    virsh undefine "$domain" --remove-all-storage >/dev/null 2>&1 || true
  fi
  if ! timeout 900 vagrant up --no-provision >"$work/up.log" 2>&1; then
    tail -30 "$work/up.log"
    fail "vagrant up"
    exit 1
  fi
fi
phase "vagrant up"
timeout 120 vagrant ssh-config >"$work/ssh_config"
ssh_opts=(-F "$work/ssh_config" -o ConnectTimeout=10 -o ServerAliveInterval=5 -o ServerAliveCountMax=3 -o LogLevel=ERROR)
vm systemctl is-system-running --wait >/dev/null 2>&1 || true
echo "VM: $(vm uname -r), $(vm nproc) CPUs"
vm install -m 0755 /dev/stdin /usr/local/sbin/imds-vmtest <"$here/guest.sh"
vm install -D -m 0644 /dev/stdin /usr/local/lib/imds-standin/relay.py <"$here/standin-relay.py"

run_step "stand-in cloud at 169.254.169.254, answering the VM" setup-standin "/imds-proxy/debs/$(basename "$deb")"
run_step "positive control: with nothing installed a container reaches the stand-in" positive-control

echo "== vagrant provision (provision.sh: Docker, the package, the service, the demo)"
if timeout 900 vagrant provision >"$work/provision.log" 2>&1; then
  sed -n 's/^ *default: //p' "$work/provision.log" | grep -v '^Running provisioner' | sed 's/^/   /'
  n=$(vm imds-vmtest direct) || n=""
  if [ "$n" = 0 ] && vm systemctl is-active -q imds-proxy.service; then
    ok "provision.sh installs the package, the service runs, the demo container is answered"
  else
    fail "provision: service not active or direct requests: ${n:-unknown}"
  fi
else
  sed 's/^/   /' "$work/provision.log" | tail -40
  fail "provision.sh"
fi
phase provision

run_step "systemd-analyze verify imds-proxy.service" verify
run_step "containers with --restart=always asking in a loop" hammers-start
for i in $(seq "$reboots"); do reboot_vm "$i"; done
phase reboots

vm install -m 0644 /dev/stdin /tmp/upgrade.deb <"$upgrade_deb"
run_step "package upgrade $version -> $up_version while containers ask" step upgrade /tmp/upgrade.deb
run_step "systemctl restart" step restart
run_step "SIGKILL: the unit restarts it" step kill
run_step "SIGSTOP: the watchdog kills and restarts it" step sigstop
run_step "systemctl stop: containers refused while stopped, then start" step stop
run_step "systemctl restart docker" step docker-restart
phase "steps after the reboots"

direct_total=$(vm imds-vmtest direct) || direct_total=""
echo "measure: stand-in connections from the VM itself (the daemon forwarding, probes)=$(vm imds-vmtest upstream)" >>"$report"
