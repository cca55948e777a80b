#!/usr/bin/env bash
# Set up a fresh machine for nonstop: Debian packages (when missing) and the Python venv.
# Idempotent and quick when nothing changed: the venv is rebuilt only when pyproject.toml changes.
set -euo pipefail
cd "$(dirname "$0")/.."

# command -> Debian package that provides it
declare -A DEBS=(
  [nft]=nftables [ip]=iproute2 [qemu-system-x86_64]=qemu-system-x86 [qemu-img]=qemu-utils
  [haproxy]=haproxy [nginx]=nginx-light [wrk]=wrk [iperf3]=iperf3 [etcd]=etcd-server
  [busybox]=busybox-static [cpio]=cpio [chromium]=chromium [chromedriver]=chromium-driver
  [keepalived]=keepalived
)
missing=()
for cmd in "${!DEBS[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || missing+=("${DEBS[$cmd]}")
done
# The guest kernel for the built-in VM image.
ls /boot/vmlinuz-*cloud-amd64 >/dev/null 2>&1 || ls /boot/vmlinuz-* >/dev/null 2>&1 || missing+=(linux-image-cloud-amd64)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "setup: installing Debian packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "setup: not root, cannot install: ${missing[*]} (tests that need them will skip)" >&2
  fi
fi

PY=${PYTHON:-python3}
stamp=.venv/.nonstop-$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -f "$stamp" ]; then
  echo "setup: creating the virtual environment in .venv"
  rm -rf .venv
  "$PY" -m venv .venv
  # pip's own chatter goes to a log; on failure the log is shown.
  if ! { .venv/bin/pip install -q --upgrade pip && .venv/bin/pip install -q -e '.[dev]'; } >.venv/pip.log 2>&1; then
    grep -v "is ignored: it is neither" .venv/pip.log >&2; exit 1
  fi
  touch "$stamp"
fi
# The built-in VM guest image (kernel + busybox initramfs), cached under /var/cache/nonstop/images.
[ "$(id -u)" != 0 ] || .venv/bin/python -m nonstop.image build >/dev/null || echo "setup: guest image not built" >&2
