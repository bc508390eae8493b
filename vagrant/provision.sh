#!/usr/bin/env bash
# Provisions a Debian 12 VM (root): installs Docker if absent, installs the imds-proxy
# package, makes sure the service runs (off-cloud it serves its built-in emulator), and
# runs a demo container that gets a GCE token, an Azure token and AWS credentials through
# 169.254.169.254, unmodified.
#
# Usage: provision.sh [DEB]
#   DEB defaults to $IMDS_PROXY_DEB, else the highest version of imds-proxy_*.deb in
#   /imds-proxy/debs (the Vagrantfile's synced folder: the host's target/debian).
#   IMDS_PROXY_DEMO_TRUNCATE=1 shortens the secrets the demo prints (for logs kept).
# The same script provisions a user's VM and the VM of the test tier (vagrant/test.sh).
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

deb=${1:-${IMDS_PROXY_DEB:-}}
if [ -z "$deb" ]; then
  for f in /imds-proxy/debs/imds-proxy_*.deb; do
    [ -f "$f" ] || continue
    v=$(dpkg-deb -f "$f" Version)
    if [ -z "$deb" ] || dpkg --compare-versions "$v" gt "$(dpkg-deb -f "$deb" Version)"; then
      deb=$f
    fi
  done
fi
[ -n "$deb" ] && [ -f "$deb" ] || {
  echo "provision: no imds-proxy package: run \`cargo deb\` on the host first (it writes target/debian/), then \`vagrant provision\`" >&2
  exit 1
}

apt_updated=""
apt_install() {
  if [ -z "$apt_updated" ]; then apt-get update -q >/dev/null; apt_updated=1; fi
  apt-get install -y -q --no-install-recommends "$@" >/dev/null
}

# Docker (with AppArmor, which Debian's kernel needs for it) and a static busybox for the
# demo image: already in the test tier's box, installed from the network otherwise.
need=()
command -v dockerd >/dev/null || need+=(docker.io)
dpkg-query -W -f '${Status}' apparmor 2>/dev/null | grep -q 'ok installed' || need+=(apparmor)
[ -x /bin/busybox ] || need+=(busybox-static)
if [ "${#need[@]}" -gt 0 ]; then
  echo "provision: installing ${need[*]}"
  apt_install "${need[@]}"
fi
systemctl enable --now docker.service >/dev/null 2>&1 || systemctl start docker.service

# The package: dpkg -i; apt pulls its Depends (libnftnl11, libmnl0) if any is missing.
echo "provision: installing $(basename "$deb") ($(dpkg-deb -f "$deb" Version))"
if ! dpkg -i "$deb"; then
  echo "provision: installing the package's dependencies"
  if [ -z "$apt_updated" ]; then apt-get update -q >/dev/null; apt_updated=1; fi
  apt-get install -f -y -q --no-install-recommends >/dev/null
fi
# The package enables and starts it; a host where it was disabled by hand gets it back.
systemctl enable imds-proxy.service >/dev/null 2>&1
systemctl start imds-proxy.service
systemctl is-active -q imds-proxy.service
journalctl -u imds-proxy.service -b --no-pager -o cat | grep -E 'interception live|emulator' | tail -3 || true

# The demo image: busybox alone, built locally (no registry needed).
if ! docker image inspect imds-proxy-demo >/dev/null 2>&1; then
  ctx=$(mktemp -d)
  cp /bin/busybox "$ctx/busybox"
  printf 'FROM scratch\nCOPY busybox /bin/busybox\nRUN ["/bin/busybox","--install","-s","/bin"]\n' >"$ctx/Dockerfile"
  docker build -q -t imds-proxy-demo "$ctx" >/dev/null
  rm -rf "$ctx"
fi

# What a container sees, asking 169.254.169.254 as each cloud's SDK would.
demo='
set -e
get() { timeout 10 wget -qO- "$@"; }
echo "GCE access token:"
get --header "Metadata-Flavor: Google" \
  http://169.254.169.254/computeMetadata/v1/instance/service-accounts/default/token
echo
echo "Azure managed identity token:"
get --header "Metadata: true" \
  "http://169.254.169.254/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://management.azure.com/"
echo
echo "AWS role credentials (IMDSv2):"
token=$(printf "PUT /latest/api/token HTTP/1.0\r\nHost: 169.254.169.254\r\nX-aws-ec2-metadata-token-ttl-seconds: 300\r\n\r\n" \
  | timeout 10 nc 169.254.169.254 80 | sed "1,/^\r*$/d")
[ -n "$token" ] || { echo "no IMDSv2 token" >&2; exit 1; }
role=$(get --header "X-aws-ec2-metadata-token: $token" \
  http://169.254.169.254/latest/meta-data/iam/security-credentials/ | head -1)
echo "role: $role"
get --header "X-aws-ec2-metadata-token: $token" \
  "http://169.254.169.254/latest/meta-data/iam/security-credentials/$role"
echo
'
# The demo runs as soon as the service is up; a new container's first request may wait
# for Docker to tell who it is, so a second try is allowed.
out=""
for try in 1 2 3; do
  if out=$(docker run --rm imds-proxy-demo sh -c "$demo" 2>&1); then break; fi
  out=""
  echo "provision: demo try $try failed, retrying"
  sleep 2
done
[ -n "$out" ] || { echo "provision: the demo container got no answer" >&2; exit 1; }
for want in '"access_token"' '"AccessKeyId"' '"SecretAccessKey"'; do
  grep -q "$want" <<<"$out" || { echo "provision: the demo's answers lack $want" >&2; echo "$out" >&2; exit 1; }
done
[ "$(grep -c '"access_token"' <<<"$out")" -ge 2 ] || { echo "provision: expected a GCE and an Azure token" >&2; exit 1; }
if [ "${IMDS_PROXY_DEMO_TRUNCATE:-}" = 1 ]; then
  # Keeps 6 characters of each secret.
  out=$(sed -E 's/"(access_token|refresh_token|id_token|AccessKeyId|SecretAccessKey|Token)"( ?: ?)"([^"]{6})[^"]*"/"\1"\2"\3..."/g' <<<"$out")
fi
echo "provision: a container asked 169.254.169.254 and got:"
echo "$out"
