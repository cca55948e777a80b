#!/bin/sh
# nonstop built-in guest: the identity page (busybox httpd runs it for "/").
# One line per fact inside <pre id="nonstop"> so tools can parse it: guest, host (the host
# the guest booted on: see docs/guests-vm.md), boot id, online vCPUs, memory.
read -r guest </run/nonstop/guest
read -r host </run/nonstop/host
read -r boot_id </proc/sys/kernel/random/boot_id
vcpus=0
for cpu in /sys/devices/system/cpu/cpu[0-9]*; do
  state=1
  [ -f "$cpu/online" ] && read -r state <"$cpu/online"
  [ "$state" = 1 ] && vcpus=$((vcpus + 1))
done
while read -r key value unit; do
  [ "$key" = MemTotal: ] && mem_kib=$value && break
done </proc/meminfo
read -r block_hex </sys/devices/system/memory/block_size_bytes
blocks=0
for block in /sys/devices/system/memory/memory[0-9]*; do
  read -r state <"$block/state"
  [ "$state" = online ] && blocks=$((blocks + 1))
done
# Disks by their serial (the nonstop disk name) with size in MiB; vNICs by name.
disks=""
for dev in /sys/block/vd*; do
  [ -e "$dev/size" ] || continue
  read -r sectors <"$dev/size"
  serial=${dev##*/}
  [ -e "$dev/serial" ] && read -r serial <"$dev/serial"
  disks="$disks${disks:+,}$serial:$((sectors / 2048))M"
done
nics=""
for nic in /sys/class/net/eth*; do
  [ -e "$nic" ] && nics="$nics${nics:+,}${nic##*/}"
done
printf 'Content-Type: text/html\r\n\r\n'
cat <<PAGE
<!doctype html>
<html><head><title>$guest</title></head>
<body><h1>$guest</h1>
<pre id="nonstop">
guest=$guest
host=$host
boot_id=$boot_id
vcpus=$vcpus
memory_mib=$((mem_kib / 1024))
memory_online_mib=$((blocks * 0x$block_hex / 1048576))
disks=$disks
nics=$nics
</pre>
</body></html>
PAGE
