#!/bin/bash
# End to end: a QEMU guest (TCG) booted with a QMP socket, shared memory and
# no Sluice device. sluicectl attaches a blk export (chardev-add +
# device_add over QMP); the guest sees the disk and does I/O the host
# verifies; sluicectl detaches it (device_del, DEVICE_DELETED,
# chardev-remove) and the guest sees it go; attached again, the guest reads
# its own data back. Refusals on the way: a VMM whose memory is not shared,
# a socket that is not QMP, a second attach of the same export; none of them
# leaves anything behind or disturbs the daemon.
# Usage: vmm_attach.sh SLUICED SLUICECTL WORKDIR. Exit 77 when QEMU or the guest cannot be prepared.
set -uo pipefail
SLUICED=$1 SLUICECTL=$2 WORK=$3
HERE=$(cd "$(dirname "$0")" && pwd)
GUEST=$WORK/guest
mkdir -p "$WORK"
bash "$HERE/setup-guest.sh" "$GUEST" || exit $?
dir=$WORK/vmm
rm -rf "$dir"; mkdir -p "$dir"
img=$dir/disk.img api=$dir/api.sock qmp=$dir/qmp.sock log=$dir/console.log
truncate -s 64M "$img"
head -c $((4 << 20)) /dev/urandom > "$dir/hostpat"
dd if="$dir/hostpat" of="$img" bs=1M seek=16 conv=notrunc status=none
host_md5=$(md5sum < "$dir/hostpat" | cut -d' ' -f1)
ctl() { "$SLUICECTL" --api "$api" "$@"; }

"$SLUICED" --blk "id=hp,path=$dir/hp.sock,file=$img" --api "$api" > "$dir/sluiced.log" 2>&1 &
spid=$!
for _ in $(seq 1 50); do [ -S "$api" ] && break; sleep 0.1; done
qemu-system-x86_64 -accel tcg -cpu max -smp 1 -m 256M -nographic -no-reboot -nic none \
  -object memory-backend-memfd,id=mem,size=256M,share=on -machine pc,memory-backend=mem \
  -qmp "unix:$qmp,server=on,wait=off" \
  -kernel "$GUEST/vmlinux" -initrd "$GUEST/initrd.cpio" \
  -append "console=ttyS0 quiet panic=-1 mitigations=off nokaslr tsc=reliable no_timer_check cryptomgr.notests sluice.test=hotplug" \
  > "$log" 2>&1 &
qpid=$!
# A VMM with private memory (paused, never booted) for the refusal.
qemu-system-x86_64 -accel tcg -S -m 64M -nographic -nic none -qmp "unix:$dir/private.sock,server=on,wait=off" \
  > "$dir/private.log" 2>&1 &
ppid_=$!
cleanup() { kill $qpid $ppid_ 2>/dev/null; kill -TERM $spid 2>/dev/null; wait 2>/dev/null; }
trap cleanup EXIT
waitlog() {  # waitlog PATTERN SECONDS
  for _ in $(seq 1 $(($2 * 10))); do grep -q "$1" "$log" && return 0; sleep 0.1; done
  return 1
}
fail=0
check() { if eval "$2"; then echo "vmm_attach: ok   - $1"; else echo "vmm_attach: FAIL - $1"; fail=1; fi; }

waitlog HOTPLUG-READY 120
check "guest booted with no Sluice disk" "grep -q HOTPLUG-READY '$log'"
out=$(ctl attach hp --vmm "qmp:$dir/private.sock" 2>&1); rc=$?
check "refused: a VMM whose memory is not shared ($out)" "[ $rc -ne 0 ] && grep -q 'not shared' <<<\"\$out\""
out=$(ctl attach hp --vmm "qmp:$api" 2>&1); rc=$?
check "refused: a socket that is not QEMU's ($out)" "[ $rc -ne 0 ] && grep -q 'not a QMP socket' <<<\"\$out\""
check "nothing attached after the refusals" "[ \"\$(ctl --json vmm list)\" = '[]' ]"
out=$(ctl attach hp --vmm "qmp:$qmp" 2>&1); rc=$?
check "attached ($out)" "[ $rc -eq 0 ]"
out=$(ctl attach hp --vmm "qmp:$qmp" 2>&1); rc=$?
check "refused: the export is already attached ($out)" "[ $rc -ne 0 ] && grep -q 'already attached' <<<\"\$out\""
check "vmm list shows it" "ctl vmm list | grep -q 'hp.*sluice-hp'"
waitlog HOTPLUG-IO-DONE 180
check "the guest saw the disk and read the host's pattern" "grep -q 'HOTPLUG-HOST-MD5 $host_md5' '$log'"
gmd5=$(sed -n 's/.*HOTPLUG-WRITE-MD5 \([0-9a-f]*\).*/\1/p' "$log" | head -1)
imd5=$(dd if="$img" bs=1M skip=8 count=4 status=none | md5sum | cut -d' ' -f1)
check "the image holds the guest's write" "[ -n '$gmd5' ] && [ '$gmd5' = '$imd5' ]"
out=$(ctl detach hp 2>&1); rc=$?
check "detached ($out)" "[ $rc -eq 0 ]"
check "vmm list is empty again" "[ \"\$(ctl --json vmm list)\" = '[]' ]"
waitlog HOTPLUG-GONE 120
check "the guest saw the disk go" "grep -q HOTPLUG-GONE '$log'"
out=$(ctl detach hp 2>&1); rc=$?
check "refused: detaching what is not attached" "[ $rc -ne 0 ]"
out=$(ctl attach hp --vmm "qmp:$qmp" 2>&1); rc=$?
check "attached again ($out)" "[ $rc -eq 0 ]"
waitlog HOTPLUG-DONE 180
check "the guest read its own data back after re-attach" "grep -q 'HOTPLUG-REREAD-MD5 $gmd5' '$log'"
check "the daemon is still serving" "ctl list | grep -q hp"
if [ $fail -ne 0 ]; then
  echo "--- console:"; tail -30 "$log"; echo "--- sluiced:"; tail -20 "$dir/sluiced.log"
fi
exit $fail
