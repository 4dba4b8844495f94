#!/bin/sh
# Guest side of the guest-driven benchmark: runs the load generator on
# /dev/vda for each configuration named on the kernel command line.
modprobe virtio_pci && modprobe virtio_blk || exit 1
i=0; while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
SECS=$(sed -n 's/.*sluice\.secs=\([0-9]*\).*/\1/p' /proc/cmdline)
for cfg in "randread 4096 1" "randread 4096 32" "read 1048576 4"; do
  /bin/loadgen /dev/vda $cfg ${SECS:-3}
done
