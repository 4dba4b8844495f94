#!/bin/sh
# The README demo's guest side: use the Sluice disk and say what happened.
modprobe virtio_pci && modprobe virtio_blk || { echo "DEMO-FAIL could not load the virtio drivers"; exit 1; }
i=0; while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
[ -b /dev/vda ] || { echo "DEMO-FAIL the guest sees no Sluice disk"; exit 1; }
mb=$(( $(cat /sys/block/vda/size) / 2048 ))
echo "DEMO the guest sees /dev/vda: ${mb} MiB, serial '$(cat /sys/block/vda/serial 2>/dev/null)', $(ls /sys/block/vda/mq | wc -l) queue(s)"
dd if=/dev/urandom of=/tmp/pat bs=1M count=32 2>/dev/null
t0=$(cut -d' ' -f1 /proc/uptime)
dd if=/tmp/pat of=/dev/vda bs=1M seek=64 count=32 oflag=direct conv=fsync 2>/dev/null || { echo "DEMO-FAIL write"; exit 1; }
t1=$(cut -d' ' -f1 /proc/uptime)
back=$(dd if=/dev/vda bs=1M skip=64 count=32 iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1)
t2=$(cut -d' ' -f1 /proc/uptime)
echo "DEMO wrote 32 MiB in $(awk "BEGIN{print $t1-$t0}") s and read it back in $(awk "BEGIN{print $t2-$t1}") s (an emulated CPU: slow by design)"
if [ "$back" = "$(md5sum /tmp/pat | cut -d' ' -f1)" ]; then
  echo "DEMO-OK the data read back is the data written (md5 $back)"
else
  echo "DEMO-FAIL the data read back differs"
fi
