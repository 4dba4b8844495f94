#!/bin/sh
# Guest side of the VMM-attach test: no disk at boot. The host attaches a
# Sluice export over QMP; we read the host's pattern, write our own, then the
# host detaches (we see the disk go) and attaches again (we read ours back).
modprobe virtio_pci && modprobe virtio_blk || { echo "HOTPLUG-FAIL: modules"; exit 1; }
waitfor() {  # waitfor present|absent SECONDS
  i=0
  while [ $i -lt $(($2 * 10)) ]; do
    if [ "$1" = present ]; then [ -b /dev/vda ] && return 0; else [ -b /dev/vda ] || return 0; fi
    sleep 0.1; i=$((i + 1))
  done
  return 1
}
[ -b /dev/vda ] && { echo "HOTPLUG-FAIL: a disk before any attach"; exit 1; }
echo "HOTPLUG-READY"
waitfor present 180 || { echo "HOTPLUG-FAIL: the disk never appeared"; dmesg | tail -20; exit 1; }
echo "HOTPLUG-SEEN sectors=$(cat /sys/block/vda/size)"
echo "HOTPLUG-HOST-MD5 $(dd if=/dev/vda bs=1M skip=16 count=4 iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1)"
dd if=/dev/urandom of=/tmp/pat bs=1M count=4 2>/dev/null
dd if=/tmp/pat of=/dev/vda bs=1M seek=8 count=4 oflag=direct conv=fsync 2>/dev/null || echo "HOTPLUG-FAIL: write"
echo "HOTPLUG-WRITE-MD5 $(md5sum /tmp/pat | cut -d' ' -f1)"
echo "HOTPLUG-IO-DONE"
waitfor absent 180 || { echo "HOTPLUG-FAIL: the disk never went away"; exit 1; }
echo "HOTPLUG-GONE"
waitfor present 180 || { echo "HOTPLUG-FAIL: the disk never came back"; exit 1; }
echo "HOTPLUG-REREAD-MD5 $(dd if=/dev/vda bs=1M skip=8 count=4 iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1)"
echo "HOTPLUG-DONE"
