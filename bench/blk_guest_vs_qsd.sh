#!/bin/bash
# The same QEMU guest (TCG) on a Sluice disk and on a qemu-storage-daemon
# disk, same backing file, alternating rounds. The guest runs a static load
# generator (tests/e2e/guest-src/loadgen.c): 4 KiB random reads at QD1 and
# QD32, 1 MiB sequential reads at QD4, O_DIRECT.
# Under TCG the guest's own CPU cost dominates; the in-process comparison
# (blk_vs_qsd.sh) shows the back-ends themselves.
# usage: bench/blk_guest_vs_qsd.sh BUILD_DIR [ROUNDS] [SECONDS]
set -euo pipefail
source "$(dirname "$0")/lib.sh"
B=${1:?usage: blk_guest_vs_qsd.sh BUILD_DIR [ROUNDS] [SECONDS]}
ROUNDS=${2:-3}
SECS=${3:-3}
HERE=$(cd "$(dirname "$0")" && pwd)
command -v qemu-storage-daemon >/dev/null || { echo "qemu-storage-daemon missing"; exit 77; }
G=$B/e2e/guest
bash "$HERE/../tests/e2e/setup-guest.sh" "$G" >/dev/null
W=$(mktemp -d /tmp/sluice-gbench.XXXXXX)
IMG=${SLUICE_BENCH_FILE:-/dev/shm/sluice-gbench-$$.img}
trap 'pkill -P $$ 2>/dev/null || true; [ -n "${KEEP:-}" ] || rm -rf "$W"; [ -z "${SLUICE_BENCH_FILE:-}" ] && rm -f "$IMG"' EXIT
truncate -s 1G "$IMG"
dd if=/dev/urandom of="$IMG" bs=1M count=1024 conv=notrunc status=none

declare -A R
for round in $(seq 1 "$ROUNDS"); do
  for who in sluice qsd; do
    rm -f "$W/sock"
    if [ $who = sluice ]; then
      "$B/control/sluiced" --no-api --log-level warn ${SLUICED_ARGS:-} --blk "id=g,path=$W/sock,file=$IMG" & PID=$!
    else
      qemu-storage-daemon --blockdev "driver=file,node-name=f0,filename=$IMG,aio=io_uring" \
        --export "type=vhost-user-blk,id=e0,addr.type=unix,addr.path=$W/sock,node-name=f0,writable=on" & PID=$!
    fi
    wait_socket "$W/sock" || true
    timeout 300 qemu-system-x86_64 -accel tcg -cpu max -smp 2 -m 512M -nographic -no-reboot -nic none \
      -object memory-backend-memfd,id=mem,size=512M,share=on -numa node,memdev=mem \
      -chardev socket,id=c0,path="$W/sock" -device vhost-user-blk-pci,chardev=c0,num-queues=1 \
      -kernel "$G/vmlinux" -initrd "$G/initrd.cpio" \
      -append "console=ttyS0 quiet panic=-1 mitigations=off nokaslr tsc=reliable no_timer_check cryptomgr.notests sluice.test=bench sluice.secs=$SECS" \
      > "$W/console.log" 2>&1 || true
    kill -TERM $PID; wait $PID 2>/dev/null || true
    while read -r line; do
      echo "round $round  $who  $line"
      key=$(awk '{print $2, $3, $4}' <<<"$line")
      R["$key|$who"]+="$(awk '{print $5}' <<<"$line") "
      R["$key|$who|lat"]+="$(awk '{print $10}' <<<"$line") "
    done < <(grep -a '^LOADGEN' "$W/console.log" | tr -d '\r')
  done
done
echo
echo "Guest (TCG, 2 vCPUs) medians over $ROUNDS alternating rounds, ${SECS}s each, $(date -u +%F):"
printf "%-28s %12s %12s %8s %14s %14s\n" "rw bs qd" "sluice IOPS" "qsd IOPS" "ratio" "sluice lat us" "qsd lat us"
for key in "randread bs=4096 qd=1:" "randread bs=4096 qd=32:" "read bs=1048576 qd=4:"; do
  si=$(echo ${R["$key|sluice"]:-0} | median); qi=$(echo ${R["$key|qsd"]:-0} | median)
  sl=$(echo ${R["$key|sluice|lat"]:-0} | median); ql=$(echo ${R["$key|qsd|lat"]:-0} | median)
  printf "%-28s %12.0f %12.0f %7.2fx %14.1f %14.1f\n" "$key" "$si" "$qi" \
    "$(ratio "$si" "$qi")" "$sl" "$ql"
done
