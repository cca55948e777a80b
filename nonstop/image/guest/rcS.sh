#!/bin/sh
# nonstop built-in guest: the one-shot start-up script busybox init runs first (::sysinit).
# Mounts the pseudo file systems, loads the drivers, applies the kernel command line
# (guest name, host name, static addresses), then lets init start httpd, acpid and the
# hot-plug listener (see /etc/inittab). Must stay fast: every fork costs ~1 ms under TCG.
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /run/nonstop /tmp /var/log
echo "nonstop-guest: init"
while read -r module; do insmod "/lib/modules/$module" 2>/dev/null; done </etc/modules
# CPUs and memory present at boot but offline (none with our command line, but cheap to check).
/etc/hotplug.sh coldplug
echo unknown >/run/nonstop/guest
echo unknown >/run/nonstop/host
ip link set lo up
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    nonstop.guest=*) echo "${arg#*=}" >/run/nonstop/guest ;;
    nonstop.host=*) echo "${arg#*=}" >/run/nonstop/host ;;
    nonstop.ip=*)
      # nonstop.ip=IFACE:ADDRESS/PREFIX[:GATEWAY]
      spec=${arg#*=}
      iface=${spec%%:*}
      rest=${spec#*:}
      addr=${rest%%:*}
      gw=""
      [ "$rest" != "$addr" ] && gw=${rest#*:}
      ip link set "$iface" up
      ip addr add "$addr" dev "$iface"
      [ -n "$gw" ] && ip route add default via "$gw" dev "$iface"
      # Unsolicited ARP: neighbours that cached this address with another MAC (a previous
      # guest) update at once instead of after their entry goes stale (~30 s).
      arping -q -U -c 2 -I "$iface" "${addr%/*}" >/dev/null 2>&1 &
      echo "$iface $addr $gw" >>/run/nonstop/addresses
      ;;
  esac
done
hostname "$(cat /run/nonstop/guest)"
# The serial console shows this line; the driver's readiness probe looks for it.
echo "nonstop-guest: ready $(cat /proc/sys/kernel/random/boot_id)"
