#!/bin/bash
# End to end: a QEMU guest (TCG) uses a vhost-user-blk disk served by sluiced,
# with guest memory from a memfd and from hugetlbfs. Checked: host->guest and
# guest->host data with O_DIRECT, FLUSH reaching the device, discard, two
# queues both carrying requests, a clean daemon exit on SIGTERM.
# Usage: blk_guest.sh SLUICED SLUICECTL WORKDIR [memfd|hugetlbfs ...]
# Exit 77 (meson's "skipped") when QEMU or the guest cannot be prepared.
set -uo pipefail
SLUICED=$1 SLUICECTL=$2 WORK=$3; shift 3
KINDS=${*:-memfd hugetlbfs}
HERE=$(cd "$(dirname "$0")" && pwd)
GUEST=$WORK/guest
mkdir -p "$WORK"
bash "$HERE/setup-guest.sh" "$GUEST" || exit $?

fail=0
note() { echo "blk_guest: $*"; }

run_kind() {
  local kind=$1 dir=$WORK/$1
  rm -rf "$dir"; mkdir -p "$dir"
  local img=$dir/disk.img sock=$dir/blk.sock api=$dir/api.sock
  truncate -s 64M "$img"
  # The host's pattern at 16 MiB, for the guest to read back.
  head -c $((4 << 20)) /dev/urandom > "$dir/hostpat"
  dd if="$dir/hostpat" of="$img" bs=1M seek=16 conv=notrunc status=none
  local host_md5; host_md5=$(md5sum < "$dir/hostpat" | cut -d' ' -f1)
  # Non-zero data where the guest will discard, so that zeroes prove it.
  head -c $((1 << 20)) /dev/zero | tr '\0' '\252' | dd of="$img" bs=1M seek=32 conv=notrunc status=none

  local mem
  if [ "$kind" = hugetlbfs ]; then
    local need=300
    [ "$(cat /proc/sys/vm/nr_hugepages)" -ge $need ] || echo $need > /proc/sys/vm/nr_hugepages 2>/dev/null
    if [ "$(awk '/HugePages_Free/{print $2}' /proc/meminfo)" -lt 256 ]; then
      note "hugetlbfs: SKIPPED (cannot reserve 256 free 2 MiB pages)"; return 0
    fi
    mkdir -p "$dir/huge"
    mount -t hugetlbfs -o pagesize=2M none "$dir/huge" 2>/dev/null || { note "hugetlbfs: SKIPPED (cannot mount hugetlbfs)"; return 0; }
    mem="memory-backend-file,id=mem,size=512M,mem-path=$dir/huge,share=on,prealloc=on"
  else
    mem="memory-backend-memfd,id=mem,size=512M,share=on"
  fi

  "$SLUICED" --blk "id=e2e,path=$sock,file=$img,queues=2" --api "$api" > "$dir/sluiced.log" 2>&1 &
  local pid=$!
  for _ in $(seq 1 50); do [ -S "$sock" ] && break; sleep 0.1; done
  timeout 300 qemu-system-x86_64 -accel tcg -cpu max -smp 2 -m 512M -nographic -no-reboot -nic none \
    -object "$mem" -numa node,memdev=mem \
    -chardev socket,id=c0,path="$sock" -device vhost-user-blk-pci,chardev=c0,num-queues=2 \
    -kernel "$GUEST/vmlinux" -initrd "$GUEST/initrd.cpio" \
    -append "console=ttyS0 quiet panic=-1 mitigations=off nokaslr tsc=reliable no_timer_check cryptomgr.notests sluice.test=blk" \
    > "$dir/console.log" 2>&1
  local qrc=$?
  "$SLUICECTL" --api "$api" --json stats e2e > "$dir/stats.json" 2>&1
  kill -TERM $pid; wait $pid; local drc=$?
  [ "$kind" = hugetlbfs ] && umount "$dir/huge" 2>/dev/null

  local ok=1
  check() { if eval "$2"; then note "$kind: ok   - $1"; else note "$kind: FAIL - $1"; ok=0; fi; }
  check "guest booted and ran the test" "grep -q BLK-DONE '$dir/console.log'"
  check "qemu exited cleanly (rc=$qrc)" "[ $qrc -eq 0 ]"
  check "guest sees 2 hardware queues" "grep -q 'BLK-INFO: sectors=131072 hw_queues=2' '$dir/console.log'"
  check "disk serial is the export id" "grep -q 'serial=e2e' '$dir/console.log'"
  check "host->guest: guest read the host's pattern" "grep -q 'BLK-HOST-MD5 $host_md5' '$dir/console.log'"
  local gmd5; gmd5=$(sed -n 's/.*BLK-WRITE-MD5 \([0-9a-f]*\).*/\1/p' "$dir/console.log" | head -1)
  local imd5; imd5=$(dd if="$img" bs=1M skip=8 count=4 status=none | md5sum | cut -d' ' -f1)
  check "guest->host: the image holds the guest's pattern" "[ -n '$gmd5' ] && [ '$gmd5' = '$imd5' ]"
  check "guest read its own write back" "grep -q 'BLK-READBACK-MD5 $gmd5' '$dir/console.log'"
  check "discard accepted" "grep -q BLK-DISCARD-OK '$dir/console.log'"
  local zero; zero=$(dd if="$img" bs=1M skip=32 count=1 status=none | tr -d '\0' | wc -c)
  check "discarded range reads as zeroes" "[ $zero -eq 0 ]"
  check "FLUSH reached the device" "python3 -c 'import json,sys; s=json.load(open(\"$dir/stats.json\")); sys.exit(0 if sum(q[\"flushes\"] for q in s[\"queues\"])>0 else 1)'"
  check "both queues carried requests" "python3 -c 'import json,sys; s=json.load(open(\"$dir/stats.json\")); sys.exit(0 if all(q[\"requests\"]>0 for q in s[\"queues\"]) else 1)'"
  check "no request failed" "python3 -c 'import json,sys; s=json.load(open(\"$dir/stats.json\")); sys.exit(0 if sum(q[\"errors\"] for q in s[\"queues\"])==0 else 1)'"
  check "sluiced exited 0 on SIGTERM (rc=$drc)" "[ $drc -eq 0 ]"
  if [ $ok -ne 1 ]; then
    fail=1
    echo "--- $kind console:"; tail -40 "$dir/console.log"
    echo "--- $kind sluiced log:"; tail -20 "$dir/sluiced.log"
    echo "--- $kind stats:"; cat "$dir/stats.json"
  fi
}

for k in $KINDS; do run_kind "$k"; done
exit $fail
