#!/bin/sh
# nonstop built-in guest: bulk bytes for vNIC bandwidth tests.
# GET /cgi-bin/blob.cgi?kib=N  answers N KiB of zeros (the guest sends);
# POST /cgi-bin/blob.cgi       reads the request body and answers "ok <bytes>" (the guest receives).
echo "Content-Type: application/octet-stream"
echo ""
if [ "$REQUEST_METHOD" = POST ]; then
  n=$(head -c "${CONTENT_LENGTH:-0}" | wc -c)
  echo "ok $n"
  exit 0
fi
kib=${QUERY_STRING#kib=}
case "$kib" in ''|*[!0-9]*) kib=64 ;; esac
dd if=/dev/zero bs=1024 count="$kib" 2>/dev/null
