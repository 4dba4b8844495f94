#!/bin/sh
# Guest side of the reconnect test: four writers keep writing known patterns
# with O_DIRECT and fsync to disjoint 4 MiB areas (so requests are in flight
# together and can complete out of order) while the host kills the back-end
# (kill -9) and starts a new one. No write may fail, and the disk must end up
# holding the patterns.
modprobe virtio_pci && modprobe virtio_blk || { echo "RECONNECT-FAIL: modules"; exit 1; }
i=0; while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
[ -b /dev/vda ] || { echo "RECONNECT-FAIL: no /dev/vda"; exit 1; }
dd if=/dev/urandom of=/tmp/pat bs=1M count=16 2>/dev/null
echo "RECONNECT-WRITING"
writer() {  # writer N: area N (4 MiB at N*4 MiB), 25 passes
  n=0
  while [ $n -lt 25 ]; do
    dd if=/tmp/pat of=/dev/vda bs=16k skip=$(($1 * 256)) seek=$(($1 * 256)) count=256 \
      oflag=direct conv=fsync,notrunc 2>/tmp/err$1 || { echo "RECONNECT-IOERR writer $1 pass $n: $(cat /tmp/err$1)"; }
    n=$((n+1))
  done
}
for w in 0 1 2 3; do writer $w & done
wait
fail=0
grep -q . /tmp/err* 2>/dev/null && grep -l -i error /tmp/err* >/dev/null 2>&1 && fail=1
echo "RECONNECT-PAT-MD5 $(md5sum /tmp/pat | cut -d' ' -f1)"
echo "RECONNECT-READBACK-MD5 $(dd if=/dev/vda bs=1M count=16 iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1)"
if dmesg | grep -i -E 'I/O error|blk_update_request|Buffer I/O'; then fail=1; fi
echo "RECONNECT-DONE fail=$fail"
