#!/bin/sh
# Guest side of bench/pin_guest.sh: edu bound to vfio-pci, then only
# sluice-pinbench, once per line of /tests/pinbench.args (@GROUP@ becomes
# edu's IOMMU group).
for m in $(cat /tests/vfio-modules.txt 2>/dev/null); do insmod "$m" 2>/dev/null; done
EDU=
for d in /sys/bus/pci/devices/*; do
  [ "$(cat $d/vendor):$(cat $d/device)" = "0x1234:0x11e8" ] && EDU=$(basename $d)
done
[ -e /sys/bus/pci/devices/$EDU/driver ] && echo $EDU > /sys/bus/pci/devices/$EDU/driver/unbind
echo vfio-pci > /sys/bus/pci/devices/$EDU/driver_override
echo $EDU > /sys/bus/pci/drivers_probe
G=$(readlink /sys/bus/pci/devices/$EDU/iommu_group); G=${G##*/}
echo "VFIO-PINBENCH-BEGIN"
rc=0
while read -r args; do
  [ -n "$args" ] || continue
  /bin/sluice-pinbench $(echo "$args" | sed "s/@GROUP@/$G/g") 2>/tmp/pinbench.err || { rc=1; tail -5 /tmp/pinbench.err; }
done < /tests/pinbench.args
echo "VFIO-PINBENCH-EXIT $rc"
echo "VFIO-PINBENCH-END"
