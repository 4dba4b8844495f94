#!/bin/sh
# Sourced by the VFIO guest tests: module loading, finding edu, binding a
# PCI device to vfio-pci.
for m in $(cat /tests/vfio-modules.txt 2>/dev/null); do insmod "$m" 2>/dev/null; done
find_edu() {
  for d in /sys/bus/pci/devices/*; do
    [ "$(cat $d/vendor):$(cat $d/device)" = "0x1234:0x11e8" ] && basename $d
  done
}
bind_vfio() {  # bind_vfio ADDR
  [ -e /sys/bus/pci/devices/$1/driver ] && echo $1 > /sys/bus/pci/devices/$1/driver/unbind
  echo vfio-pci > /sys/bus/pci/devices/$1/driver_override
  echo $1 > /sys/bus/pci/drivers_probe
}
group_of() { g=$(readlink /sys/bus/pci/devices/$1/iommu_group); echo ${g##*/}; }
