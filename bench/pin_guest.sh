#!/bin/bash
# VFIO DMA mapping of hugetlbfs memory, in a TCG guest with an emulated VT-d
# (the only IOMMU these machines have): for each size, sluice-pinbench maps
# 2 MiB hugetlbfs pages per 4 KiB page, per folio (2 MiB), in the planner's
# calls, and as one raw MAP_DMA; medians of REPS repetitions.
# Usage: bench/pin_guest.sh BUILD [REPS] [SIZE...]   (default: 5, 256M 1G 4G 8G)
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:?usage: bench/pin_guest.sh BUILD [REPS] [SIZE...]}; shift
REPS=${1:-5}; [ $# -gt 0 ] && shift
SIZES=${*:-256M 1G 4G 8G}
to_mib() { case $1 in *G) echo $(( ${1%G} * 1024 ));; *M) echo ${1%M};; esac; }
max=0; args=""
for s in $SIZES; do
  m=$(to_mib "$s"); [ "$m" -gt "$max" ] && max=$m
  args+="--size $s --backing huge2m --method vfio:@GROUP@ --reps $REPS"$'\n'
done
hp=$(( max / 2 + 16 ))
echo "pin_guest: sizes $SIZES, $REPS reps; guest with $((max + 768)) MiB, $hp huge pages; $(date -u +%F)"
SLUICE_VFIO_PINBENCH="$args" SLUICE_VFIO_MEM="$((max + 768))M" SLUICE_VFIO_HUGEPAGES=$hp \
SLUICE_VFIO_TIMEOUT=3000 \
  tests/e2e/vfio_guest.sh "$BUILD/tests/e2e/sluice-vfio-edu" "$BUILD/bench/sluice-pinbench" \
    "$BUILD/control/sluiced" "$BUILD/control/sluicectl" "$BUILD/bench/sluice-blkbench" \
    "$BUILD/tests/e2e/sluice-virtio-vfio" "$BUILD/tests/e2e/work"
