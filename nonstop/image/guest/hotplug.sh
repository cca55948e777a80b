#!/bin/sh
# nonstop built-in guest: bring hot-added CPUs and memory online (there is no udev).
# Run by busybox `uevent` for every kernel event (ACTION, DEVPATH in the environment),
# and once at boot with "coldplug". Memory is also onlined (movable) by memhp_default_state=online_movable
# on the kernel command line; writing "online" again is harmless.
online() {
  case "$1" in
    /sys/devices/system/cpu/cpu[0-9]*) [ -f "$1/online" ] && [ "$(cat "$1/online")" = 0 ] && echo 1 >"$1/online" ;;
    /sys/devices/system/memory/memory[0-9]*) [ "$(cat "$1/state")" = offline ] && echo online_movable >"$1/state" ;;
  esac
}
if [ "$1" = coldplug ]; then
  for dev in /sys/devices/system/cpu/cpu[0-9]* /sys/devices/system/memory/memory[0-9]*; do
    online "$dev" 2>/dev/null
  done
  exit 0
fi
[ "$ACTION" = add ] || [ "$ACTION" = online ] || exit 0
online "/sys$DEVPATH" 2>/dev/null
exit 0
