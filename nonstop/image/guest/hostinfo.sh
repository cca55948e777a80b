#!/bin/sh
# nonstop built-in guest: the org.nonstop.host virtio-serial port, one line per message, each
# answered "ack" (or "nak REASON"):
#   host=NAME                       the host the guest runs on now (after a live migration the
#                                   new host says so); the identity page reads /run/nonstop/host
#   addr=MAC,ADDRESS/PREFIX[,GW]    a hot-added vNIC's address from nonstop's IPAM: configured on
#                                   the interface with that MAC (it may appear a moment later)
# Reading returns at once (EOF) while no host end is connected, so the loop sleeps between attempts.
port=""
for name in /sys/class/virtio-ports/*/name; do
  dir=${name%/name}
  [ "$(cat "$name" 2>/dev/null)" = org.nonstop.host ] && port=/dev/${dir##*/}
done
[ -n "$port" ] || exec sleep 2147483647
while :; do
  if read -r line <"$port"; then
    case "$line" in
      host=*)
        echo "${line#host=}" >/run/nonstop/host.new && mv /run/nonstop/host.new /run/nonstop/host
        echo ack >"$port"
        ;;
      addr=*)
        spec=${line#addr=}
        mac=${spec%%,*}
        rest=${spec#*,}
        address=${rest%%,*}
        gw=""
        [ "$rest" != "$address" ] && gw=${rest#*,}
        iface=""
        tries=0
        while [ -z "$iface" ] && [ "$tries" -lt 30 ]; do
          for dev in /sys/class/net/*; do
            [ "$(cat "$dev/address" 2>/dev/null)" = "$mac" ] && iface=${dev##*/}
          done
          [ -n "$iface" ] || { sleep 0.1; tries=$((tries + 1)); }
        done
        if [ -z "$iface" ]; then
          echo "nak no interface with MAC $mac" >"$port"
          continue
        fi
        ip link set "$iface" up
        ip addr add "$address" dev "$iface" 2>/dev/null
        [ -n "$gw" ] && ip route add default via "$gw" dev "$iface" 2>/dev/null
        arping -q -U -c 2 -I "$iface" "${address%/*}" >/dev/null 2>&1 &
        echo "$iface $address $gw" >>/run/nonstop/addresses
        echo ack >"$port"
        ;;
    esac
  else
    sleep 0.5
  fi
done
