#!/bin/sh
# Guest side of e2e_vfio_guest: bind QEMU's edu to vfio-pci, run
# sluice-vfio-edu (DMA through the planner, unmapped DMA, MSI), then a small
# sluice-pinbench with VFIO on edu's group. Markers for the host: VFIO-*.
. /tests/vfio-lib.sh
EDU=$(find_edu)
[ -n "$EDU" ] || { echo "VFIO-FAIL no edu device"; exit 1; }
bind_vfio $EDU
drv=$(readlink /sys/bus/pci/devices/$EDU/driver)
G=$(group_of $EDU)
echo "VFIO-BIND $EDU driver=${drv##*/} group=$G"
mkdir -p /mnt/huge
mount -t hugetlbfs -o pagesize=2M none /mnt/huge || echo "VFIO-FAIL hugetlbfs mount"
/bin/sluice-vfio-edu "$EDU" /mnt/huge
echo "VFIO-EDU-EXIT $?"
echo "VFIO-PINBENCH-BEGIN"
/bin/sluice-pinbench --size 64M --backing anon4k,huge2m --method iouring,mlock,vfio:$G --reps 3 \
  --json /tmp/pinbench.json 2>/tmp/pinbench.err
echo "VFIO-PINBENCH-EXIT $?"
echo "VFIO-PINBENCH-END"
dmesg | grep -i -E 'DMAR.*fault|DMAR: \[DMA' | head -3 | sed 's/^/VFIO-DMESG /'
# The control plane's memory listener: sluiced with --vfio-group keeps a
# vhost-user session's guest memory mapped in edu's IOMMU domain while the
# session lives (sluice-blkbench is the front-end), and unmaps it after.
if [ -x /bin/sluiced ]; then
  /bin/sluiced --blk id=v,path=/tmp/v.sock,null,size=64M --vfio-group $G --api /tmp/api.sock \
    --log-level info > /tmp/sluiced.log 2>&1 &
  SPID=$!
  for i in $(seq 1 100); do [ -S /tmp/api.sock ] && [ -S /tmp/v.sock ] && break; sleep 0.1; done
  echo "VFIO-SLUICED-BEFORE $(/bin/sluicectl --api /tmp/api.sock --json vfio)"
  /bin/sluice-blkbench --socket /tmp/v.sock --rw randread --qd 8 --seconds 4 > /tmp/blkbench.log 2>&1 &
  BPID=$!
  sleep 2
  echo "VFIO-SLUICED-DURING $(/bin/sluicectl --api /tmp/api.sock --json vfio)"
  wait $BPID
  echo "VFIO-BLKBENCH-EXIT $?"
  sed 's/^/VFIO-BLKBENCH /' /tmp/blkbench.log | head -5
  sleep 0.5
  echo "VFIO-SLUICED-AFTER $(/bin/sluicectl --api /tmp/api.sock --json vfio)"
  /bin/sluicectl --api /tmp/api.sock vfio | sed 's/^/VFIO-SLUICECTL /'
  kill -TERM $SPID; wait $SPID
  echo "VFIO-SLUICED-EXIT $?"
  grep -E 'VFIO|vfio|error' /tmp/sluiced.log | head -5 | sed 's/^/VFIO-SLUICED-LOG /'
fi
# Sluice's userspace virtio-pci driver over VFIO: three virtio-blk-pci devices
# (modern only, behind the IOMMU) with 3, 2 and no MSI-X vectors.
if [ -x /bin/sluice-virtio-vfio ]; then
  args=
  i=0
  for slot in 10 11 12 15; do
    A=0000:00:$slot.0
    [ -e /sys/bus/pci/devices/$A ] || continue
    bind_vfio $A
    case $slot in 10) P=per-queue;; 11) P=shared;; 12) P=none;; 15) P=bringup;; esac
    args="$args $A:$P:$i"; i=$((i + 1))
  done
  /bin/sluice-virtio-vfio $args
  echo "VFIO-VIRTIO-EXIT $?"
fi
# Queue offload: sluiced hands a vhost-user-blk export's queues to a fourth
# virtio-blk-pci device; sluice-blkbench is the front-end. The device reads
# the front-end's rings and buffers through the IOMMU and raises its MSI-X
# straight onto the front-end's call eventfd; the workers stay asleep.
A=0000:00:13.0
if [ -x /bin/sluiced ] && [ -e /sys/bus/pci/devices/$A ]; then
  bind_vfio $A
  /bin/sluiced --blk id=o,path=/tmp/o.sock,vfio=$A,offload=on --api /tmp/api2.sock > /tmp/sluiced2.log 2>&1 &
  SPID=$!
  for i in $(seq 1 100); do [ -S /tmp/api2.sock ] && [ -S /tmp/o.sock ] && break; sleep 0.1; done
  echo "VFIO-OFFLOAD-LIST $(/bin/sluicectl --api /tmp/api2.sock --json list)"
  echo "VFIO-OFFLOAD-WORKERS-BEFORE $(/bin/sluicectl --api /tmp/api2.sock --json workers)"
  /bin/sluice-blkbench --socket /tmp/o.sock --rw verify --qd 8 --irq > /tmp/offload.log 2>&1
  echo "VFIO-OFFLOAD-VERIFY-EXIT $?"
  /bin/sluice-blkbench --socket /tmp/o.sock --rw randread --qd 8 --seconds 3 --irq >> /tmp/offload.log 2>&1 &
  BPID=$!
  sleep 1.5
  echo "VFIO-OFFLOAD-STATS $(/bin/sluicectl --api /tmp/api2.sock --json stats o)"
  echo "VFIO-OFFLOAD-IRQ $(/bin/sluicectl --api /tmp/api2.sock --json irq)"
  /bin/sluicectl --api /tmp/api2.sock irq | sed 's/^/VFIO-OFFLOAD-IRQTABLE /'
  wait $BPID
  echo "VFIO-OFFLOAD-READ-EXIT $?"
  echo "VFIO-OFFLOAD-WORKERS-AFTER $(/bin/sluicectl --api /tmp/api2.sock --json workers)"
  sed 's/^/VFIO-OFFLOAD-BENCH /' /tmp/offload.log
  kill -TERM $SPID; wait $SPID
  echo "VFIO-OFFLOAD-SLUICED-EXIT $?"
  grep -iE 'warn|error|offload' /tmp/sluiced2.log | head -8 | sed 's/^/VFIO-OFFLOAD-LOG /'
fi
# The same hardware as the backend of Sluice's software data plane: workers
# pop the front-end's requests and hand the device the guest's own
# descriptors (IOVA = guest physical address), no copy, no bounce.
A=0000:00:14.0
if [ -x /bin/sluiced ] && [ -e /sys/bus/pci/devices/$A ]; then
  bind_vfio $A
  /bin/sluiced --blk id=p,path=/tmp/p.sock,vfio=$A --api /tmp/api3.sock > /tmp/sluiced3.log 2>&1 &
  SPID=$!
  for i in $(seq 1 100); do [ -S /tmp/api3.sock ] && [ -S /tmp/p.sock ] && break; sleep 0.1; done
  echo "VFIO-PT-LIST $(/bin/sluicectl --api /tmp/api3.sock --json list)"
  /bin/sluice-blkbench --socket /tmp/p.sock --rw verify --qd 16 --queues 2 --irq > /tmp/pt.log 2>&1
  echo "VFIO-PT-VERIFY-EXIT $?"
  /bin/sluice-blkbench --socket /tmp/p.sock --rw randread --qd 16 --queues 2 --seconds 2 --irq >> /tmp/pt.log 2>&1
  echo "VFIO-PT-READ-EXIT $?"
  echo "VFIO-PT-STATS $(/bin/sluicectl --api /tmp/api3.sock --json stats p)"
  sed 's/^/VFIO-PT-BENCH /' /tmp/pt.log
  kill -TERM $SPID; wait $SPID
  echo "VFIO-PT-SLUICED-EXIT $?"
  grep -iE 'warn|error|served' /tmp/sluiced3.log | head -8 | sed 's/^/VFIO-PT-LOG /'
fi
