#!/bin/sh
# nonstop built-in guest: ACPI power button (QMP system_powerdown) -> clean power-off.
# busybox acpid runs this as /etc/acpi/PWRF/00000080; init runs ::shutdown then powers off.
echo "nonstop-guest: power button, shutting down" >/dev/console
exec /bin/poweroff
