#!/bin/bash
# End to end: kill -9 of sluiced under a QEMU guest that is writing, then a new
# sluiced on the same socket. QEMU (chardev reconnect=1) reconnects and hands
# the inflight region back (SET_INFLIGHT_FD); the new back-end resubmits what
# was in flight. The guest must see no I/O error and the disk must hold
# exactly what the guest wrote.
# Usage: blk_reconnect.sh SLUICED WORKDIR    (exit 77: peer missing)
set -uo pipefail
SLUICED=$1 WORK=$2
HERE=$(cd "$(dirname "$0")" && pwd)
GUEST=$WORK/guest
mkdir -p "$WORK"
bash "$HERE/setup-guest.sh" "$GUEST" || exit $?
dir=$WORK/reconnect
rm -rf "$dir"; mkdir -p "$dir"
img=$dir/disk.img sock=$dir/blk.sock
truncate -s 64M "$img"
note() { echo "blk_reconnect: $*"; }

start_sluiced() {
  "$SLUICED" --no-api --blk "id=rc,path=$sock,file=$img,queues=1" >> "$dir/sluiced.log" 2>&1 &
  SPID=$!
  for _ in $(seq 1 50); do [ -S "$sock" ] && break; sleep 0.1; done
}
start_sluiced
timeout 300 qemu-system-x86_64 -accel tcg -cpu max -smp 1 -m 256M -nographic -no-reboot -nic none \
  -object memory-backend-memfd,id=mem,size=256M,share=on -numa node,memdev=mem \
  -chardev socket,id=c0,path="$sock",reconnect=1 -device vhost-user-blk-pci,chardev=c0,num-queues=1 \
  -kernel "$GUEST/vmlinux" -initrd "$GUEST/initrd.cpio" \
  -append "console=ttyS0 quiet panic=-1 mitigations=off nokaslr tsc=reliable no_timer_check cryptomgr.notests sluice.test=reconnect" \
  > "$dir/console.log" 2>&1 &
QPID=$!
for _ in $(seq 1 600); do grep -q RECONNECT-WRITING "$dir/console.log" 2>/dev/null && break; sleep 0.1; done
sleep 1
kill -9 $SPID; wait $SPID 2>/dev/null
note "killed sluiced (pid $SPID) while the guest was writing"
echo "=== restart ===" >> "$dir/sluiced.log"
sleep 0.5
start_sluiced
wait $QPID; qrc=$?
kill -TERM $SPID; wait $SPID; drc=$?

ok=1
check() { if eval "$2"; then note "ok   - $1"; else note "FAIL - $1"; ok=0; fi; }
check "guest finished its writes" "grep -q RECONNECT-DONE '$dir/console.log'"
check "the guest saw no I/O error" "grep -q 'RECONNECT-DONE fail=0' '$dir/console.log' && ! grep -q RECONNECT-IOERR '$dir/console.log'"
check "QEMU reconnected to the new sluiced" "[ \$(grep -c 'front-end connected' '$dir/sluiced.log') -ge 2 ]"
pat=$(sed -n 's/.*RECONNECT-PAT-MD5 \([0-9a-f]*\).*/\1/p' "$dir/console.log" | head -1)
check "guest read back its pattern" "[ -n '$pat' ] && grep -q 'RECONNECT-READBACK-MD5 $pat' '$dir/console.log'"
img_md5=$(dd if="$img" bs=1M count=16 status=none | md5sum | cut -d' ' -f1)
check "the image holds exactly the guest's pattern" "[ '$img_md5' = '$pat' ]"
check "qemu exited cleanly (rc=$qrc)" "[ $qrc -eq 0 ]"
check "the second sluiced exited 0 (rc=$drc)" "[ $drc -eq 0 ]"
grep -h "resubmitting" "$dir/sluiced.log" | sed 's/^/blk_reconnect: sluiced: /'
if [ $ok -ne 1 ]; then
  echo "--- console:"; tail -30 "$dir/console.log"
  echo "--- sluiced log:"; tail -30 "$dir/sluiced.log"
  exit 1
fi
exit 0
