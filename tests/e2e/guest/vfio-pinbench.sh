#!/bin/sh
# Guest side of bench/pin_guest.sh: edu bound to vfio-pci, then only
# sluice-pinbench, once per line of /tests/pinbench.args (@GROUP@ becomes
# edu's IOMMU group).
. /tests/vfio-lib.sh
EDU=$(find_edu)
bind_vfio $EDU
G=$(group_of $EDU)
echo "VFIO-PINBENCH-BEGIN"
rc=0
while read -r args; do
  [ -n "$args" ] || continue
  /bin/sluice-pinbench $(echo "$args" | sed "s/@GROUP@/$G/g") 2>/tmp/pinbench.err || { rc=1; tail -5 /tmp/pinbench.err; }
done < /tests/pinbench.args
echo "VFIO-PINBENCH-EXIT $rc"
echo "VFIO-PINBENCH-END"
