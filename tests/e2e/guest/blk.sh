#!/bin/sh
# Guest side of the vhost-user-blk test. The host wrote a pattern at 16 MiB
# and prints its md5; we read it back with O_DIRECT. We write our own pattern
# at 8 MiB with O_DIRECT and fsync (a virtio-blk FLUSH), print its md5 for the
# host to check in the image, then discard 1 MiB at 32 MiB.
modprobe virtio_pci && modprobe virtio_blk || { echo "BLK-FAIL: modules"; exit 1; }
i=0; while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
[ -b /dev/vda ] || { echo "BLK-FAIL: no /dev/vda"; dmesg | tail -20; exit 1; }
echo "BLK-INFO: sectors=$(cat /sys/block/vda/size) hw_queues=$(ls /sys/block/vda/mq | wc -l) serial=$(cat /sys/block/vda/serial 2>/dev/null)"
echo "BLK-HOST-MD5 $(dd if=/dev/vda bs=1M skip=16 count=4 iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1)"
dd if=/dev/urandom of=/tmp/pat bs=1M count=4 2>/dev/null
dd if=/tmp/pat of=/dev/vda bs=1M seek=8 count=4 oflag=direct conv=fsync 2>/dev/null || echo "BLK-FAIL: write"
echo "BLK-WRITE-MD5 $(md5sum /tmp/pat | cut -d' ' -f1)"
echo "BLK-READBACK-MD5 $(dd if=/dev/vda bs=1M skip=8 count=4 iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1)"
# 4 KiB writes from both CPUs so that both queues carry requests.
for cpu in 0 1; do
  taskset -c $cpu dd if=/dev/urandom of=/dev/vda bs=4k seek=$((12288 + cpu * 256)) count=256 oflag=direct 2>/dev/null &
done
wait
blkdiscard -o $((32 << 20)) -l $((1 << 20)) /dev/vda && echo "BLK-DISCARD-OK" || echo "BLK-DISCARD-FAIL"
sync
echo "BLK-DONE"
