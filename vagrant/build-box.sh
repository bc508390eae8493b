#!/usr/bin/env bash
# Builds a Vagrant box for the libvirt provider from Debian's packages alone (no Vagrant
# Cloud): Debian 12 with systemd, SSH, the `vagrant` user with Vagrant's well-known
# insecure key, Docker, and the C libraries imds-proxy links, so the VM needs no network
# to install the package. The disk is a bare ext4 filesystem booted by direct kernel boot
# (no partition table, no boot loader): the box carries the kernel and initrd and a
# Vagrantfile that points vagrant-libvirt at them.
#
# Usage: vagrant/build-box.sh [CACHE_DIR]     (root; mmdebstrap, qemu-img, e2fsprogs)
# Prints the path of the .box on its last line. The box is kept under CACHE_DIR
# (default /var/cache/imds-proxy-test) by a content key, the hash of this script (which
# holds the package list): a run with an unchanged script reuses it.
set -euo pipefail

cache=${1:-/var/cache/imds-proxy-test}
suite=bookworm
# The kernel comes from bookworm-backports (6.12): Linux 6.9+ lets the daemon own its
# tables and keep them after it exits (NFT_TABLE_F_PERSIST), the path the test tier must
# prove. Bookworm's own 6.1 kernel (the public box's) gets plain tables instead.
kernel_pkg="linux-image-cloud-amd64/$suite-backports"
packages=(
  # boot, login, network
  systemd systemd-sysv udev kmod dbus openssh-server sudo iproute2 procps
  # Docker (it needs AppArmor with Debian's kernel) and what tests use in containers
  docker.io apparmor nftables busybox-static ca-certificates
  # imds-proxy's Depends besides libc, so dpkg -i needs no network
  libnftnl11 libmnl0
  # the test tier's stand-in cloud, and Vagrant's rsync synced folder
  python3 rsync
)

key=$(sha256sum "$0" | cut -c1-16)
dir=$cache/vagrant-box-$key
box=$dir/imds-proxy-$suite.box
if [ -f "$dir/.complete" ]; then
  echo "box: reusing $box" >&2
  echo "$box"
  exit 0
fi

[ "$(id -u)" = 0 ] || { echo "build-box.sh: needs root (mmdebstrap in root mode, chroot)" >&2; exit 1; }
for tool in mmdebstrap qemu-img mkfs.ext4 apt-get; do
  command -v "$tool" >/dev/null || { echo "build-box.sh: $tool is missing" >&2; exit 1; }
done
pubkey=$(ls /usr/share/rubygems-integration/all/gems/vagrant-*/keys/vagrant.pub \
  /opt/vagrant/embedded/gems/gems/vagrant-*/keys/vagrant.pub 2>/dev/null | head -1 || true)
[ -n "$pubkey" ] || { echo "build-box.sh: Vagrant's insecure public key (keys/vagrant.pub of the vagrant package) not found" >&2; exit 1; }

# The mirrors this machine's apt already uses for the suite, its updates, security and
# backports: the image installs from the same places and names them in its own sources.
mapfile -t mirrors < <(apt-get indextargets --format '$(REPO_URI) $(CODENAME)' 'Identifier: Packages' \
  | sort -u | awk -v s="$suite" '$2 == s || $2 == s "-updates" || $2 == s "-security" || $2 == s "-backports" { print "deb " $1 " " $2 " main" }')
printf '%s\n' "${mirrors[@]}" | grep -q " $suite-backports " \
  || { echo "build-box.sh: apt has no $suite-backports source (the kernel comes from it)" >&2; exit 1; }

rm -rf "$cache"/vagrant-box-* # older keys
mkdir -p "$dir"
build=$(mktemp -d "$dir/build.XXXXXX")
trap 'rm -rf "$build"' EXIT
root=$build/rootfs
start=$(date +%s)

include=$(IFS=,; echo "${packages[*]},$kernel_pkg")
mmdebstrap --mode=root --variant=minbase --include="$include" "$suite" "$root" "${mirrors[@]}" >&2

in_root() { chroot "$root" "$@"; }
echo imds-proxy-vm >"$root/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 imds-proxy-vm\n::1 localhost ip6-localhost ip6-loopback\n' >"$root/etc/hosts"
# Booted with root=/dev/vda rw: nothing to check or remount.
echo '/dev/vda / ext4 rw,errors=remount-ro 0 0' >"$root/etc/fstab"
cat >"$root/etc/systemd/network/80-dhcp.network" <<'EOF'
[Match]
Name=en* eth*

[Network]
DHCP=ipv4
EOF
in_root systemctl enable systemd-networkd.service >&2
# Every VM gets its own machine id and SSH host keys at first boot.
: >"$root/etc/machine-id"
rm -f "$root"/etc/ssh/ssh_host_*
cat >"$root/etc/systemd/system/ssh-host-keys.service" <<'EOF'
[Unit]
Description=Generate the SSH host keys this machine lacks
Before=ssh.service

# Ed25519 and ECDSA only: an RSA key takes minutes to make under software emulation.
[Service]
Type=oneshot
ExecStart=/bin/sh -c 'for t in ed25519 ecdsa; do f=/etc/ssh/ssh_host_$${t}_key; [ -f $$f ] || ssh-keygen -q -N "" -t $$t -f $$f; done'

[Install]
RequiredBy=ssh.service
EOF
in_root systemctl enable ssh-host-keys.service >&2
# The vagrant user: Vagrant's insecure key (vagrant up replaces it) and sudo without a
# password, as every Vagrant box has.
in_root useradd --create-home --shell /bin/bash --groups sudo vagrant
install -d -m 0700 -o 1000 -g 1000 "$root/home/vagrant/.ssh"
install -m 0600 -o 1000 -g 1000 "$pubkey" "$root/home/vagrant/.ssh/authorized_keys"
echo 'vagrant ALL=(ALL) NOPASSWD:ALL' >"$root/etc/sudoers.d/vagrant"
chmod 0440 "$root/etc/sudoers.d/vagrant"
printf 'UseDNS no\nHostKey /etc/ssh/ssh_host_ed25519_key\nHostKey /etc/ssh/ssh_host_ecdsa_key\n' >"$root/etc/ssh/sshd_config.d/vagrant.conf"

cp -L "$root/vmlinuz" "$build/vmlinuz"
cp -L "$root/initrd.img" "$build/initrd.img"
truncate -s 10G "$build/root.raw"
mkfs.ext4 -q -L root -d "$root" "$build/root.raw"
qemu-img convert -c -O qcow2 "$build/root.raw" "$build/box.img"
rm -f "$build/root.raw"

echo '{"provider":"libvirt","format":"qcow2","virtual_size":10}' >"$build/metadata.json"
cat >"$build/Vagrantfile" <<'EOF'
# Direct kernel boot: the disk is a bare ext4 filesystem, the kernel and initrd are
# files of this box.
Vagrant.configure("2") do |config|
  config.vm.provider :libvirt do |libvirt|
    libvirt.kernel = File.join(File.dirname(__FILE__), "vmlinuz")
    libvirt.initrd = File.join(File.dirname(__FILE__), "initrd.img")
    libvirt.cmd_line = "root=/dev/vda rw console=ttyS0"
    libvirt.disk_bus = "virtio"
  end
end
EOF
tar -C "$build" -cf "$build/box.tar" metadata.json Vagrantfile box.img vmlinuz initrd.img
mv "$build/box.tar" "$box"
touch "$dir/.complete"
echo "box: built $box ($(du -h "$box" | cut -f1)) in $(($(date +%s) - start)) s" >&2
echo "$box"
