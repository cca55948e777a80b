#!/bin/sh
# nonstop built-in guest: a block-device workload for disk tests (docs/components.md).
# GET /cgi-bin/disk.cgi?dev=vdb&op=write&block=N  writes 64 KiB of fresh random data at 64 KiB
#   block N of /dev/DEV with fsync and answers "ok <sha256 of what was written>";
# op=read&block=N  drops the page cache, reads block N back from the device: "ok <sha256>";
# op=errors  the number of kernel I/O error lines so far: "ok <count>".
# Any failing step answers "error <step>". Only vd[a-z] devices, numeric blocks.
echo "Content-Type: text/plain"
echo ""
dev=""; op=""; block=""
IFS='&'
for kv in $QUERY_STRING; do
  case "$kv" in
    dev=*) dev=${kv#dev=} ;;
    op=*) op=${kv#op=} ;;
    block=*) block=${kv#block=} ;;
  esac
done
unset IFS
case "$dev" in vd[a-z]) ;; *) echo "error dev"; exit 0 ;; esac
case "$block" in ''|*[!0-9]*) [ "$op" = errors ] || { echo "error block"; exit 0; } ;; esac
tmp=/tmp/disk.$$
case "$op" in
  write)
    dd if=/dev/urandom of=$tmp bs=65536 count=1 2>/dev/null || { echo "error random"; exit 0; }
    dd if=$tmp of=/dev/$dev bs=65536 seek="$block" count=1 conv=fsync,notrunc 2>/dev/null || { rm -f $tmp; echo "error write"; exit 0; }
    ;;
  read)
    echo 1 >/proc/sys/vm/drop_caches
    dd if=/dev/$dev of=$tmp bs=65536 skip="$block" count=1 2>/dev/null || { rm -f $tmp; echo "error read"; exit 0; }
    ;;
  errors)
    echo "ok $(dmesg | grep -c -i 'I/O error')"; exit 0 ;;
  *) echo "error op"; exit 0 ;;
esac
set -- $(sha256sum $tmp)
rm -f $tmp
echo "ok $1"
