#!/bin/bash
# Sluice vs qemu-storage-daemon as vhost-user-blk back-ends, driven by the same
# in-process front-end (sluice-blkbench), same backing file, in alternating
# rounds (A B A B ...). Prints each run, then the medians and their ratio.
#
# usage: bench/blk_vs_qsd.sh BUILD_DIR [ROUNDS] [SECONDS]
# Two back-ends for both daemons: a 1 GiB file of random data on tmpfs
# (/dev/shm, or SLUICE_BENCH_FILE), and a null device (Sluice's `null`,
# QEMU's null-co) that measures the data path without the copy.
# qemu-storage-daemon runs with aio=io_uring, its fastest setting here.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
B=${1:?usage: blk_vs_qsd.sh BUILD_DIR [ROUNDS] [SECONDS]}
ROUNDS=${2:-5}
SECS=${3:-3}
command -v qemu-storage-daemon >/dev/null || { echo "qemu-storage-daemon missing (apt-get install qemu-system-common)"; exit 77; }
W=$(mktemp -d /tmp/sluice-bench.XXXXXX)
IMG=${SLUICE_BENCH_FILE:-/dev/shm/sluice-bench-$$.img}
trap 'pkill -P $$ 2>/dev/null || true; rm -rf "$W"; [ -z "${SLUICE_BENCH_FILE:-}" ] && rm -f "$IMG"' EXIT
truncate -s 1G "$IMG"
dd if=/dev/urandom of="$IMG" bs=1M count=1024 conv=notrunc status=none  # real data, no holes

start_sluice() {  # start_sluice file|null QUEUES
  local b="file=$IMG"; [ "$1" = null ] && b="null,size=1G"
  "$B/control/sluiced" --no-api --log-level warn --blk "id=b,path=$W/s.sock,$b,queues=$2" &
  PID=$!
  SOCK=$W/s.sock
}
start_qsd() {
  local b="driver=file,node-name=f0,filename=$IMG,aio=io_uring"
  [ "$1" = null ] && b="driver=null-co,node-name=f0,size=1073741824"
  qemu-storage-daemon --blockdev "$b" \
    --export "type=vhost-user-blk,id=e0,addr.type=unix,addr.path=$W/q.sock,node-name=f0,writable=on,num-queues=$2" &
  PID=$!
  SOCK=$W/q.sock
}
stop() { kill -TERM $PID; wait $PID 2>/dev/null || true; rm -f "$SOCK"; }

# backend rw bs qd queues
CONFIGS=("file randread 4096 1 1" "file randread 4096 32 1" "file randwrite 4096 32 1" "file read 1048576 4 1"
         "file randread 4096 32 2" "null randread 4096 1 1" "null randread 4096 32 1" "null randread 4096 32 2")
declare -A R
for round in $(seq 1 "$ROUNDS"); do
  for cfg in "${CONFIGS[@]}"; do
    set -- $cfg
    for who in sluice qsd; do
      start_$who "$1" "$5"
      wait_socket "$SOCK" || true
      out=$("$B/bench/sluice-blkbench" --socket "$SOCK" --rw "$2" --bs "$3" --qd "$4" --queues "$5" --seconds "$SECS")
      stop
      iops=$(sed -n 's/.*: \([0-9]*\) IOPS.*/\1/p' <<<"$out")
      p50=$(sed -n 's/.*p50 \([0-9.]*\).*/\1/p' <<<"$out")
      echo "round $round  $who  $out"
      R["$cfg|$who|iops"]+="$iops "
      R["$cfg|$who|p50"]+="$p50 "
    done
  done
done

echo
echo "Medians over $ROUNDS alternating rounds, ${SECS}s each, $(date -u +%F):"
 printf "%-26s %12s %12s %8s %12s %12s\n" "backend rw bs qd queues" "sluice IOPS" "qsd IOPS" "ratio" "sluice p50us" "qsd p50us"
for cfg in "${CONFIGS[@]}"; do
  si=$(echo ${R["$cfg|sluice|iops"]} | median); qi=$(echo ${R["$cfg|qsd|iops"]} | median)
  sp=$(echo ${R["$cfg|sluice|p50"]} | median); qp=$(echo ${R["$cfg|qsd|p50"]} | median)
  printf "%-26s %12.0f %12.0f %7.2fx %12.1f %12.1f\n" "$cfg" "$si" "$qi" "$(ratio "$si" "$qi")" "$sp" "$qp"
done
