#!/bin/bash
# End to end, inside a TCG guest (Debian's kernel: CONFIG_MEMORY_FAILURE):
# sluiced serves an in-guest front-end one of whose memory pages is poisoned
# with madvise(MADV_HWPOISON), which the kernel handles as an uncorrected
# memory error (SIGBUS BUS_MCEERR_AR on the next access). Poisoning takes the
# page out of service for good, which is why this runs in a guest and not on
# the host. Checked: the request touching the page fails (IOERR), the others
# are served, the page's guest address is reported (API, log) with the cause
# hardware-poison, another tenant's verified I/O sees no error, and sluiced
# exits 0 on SIGTERM.
# Usage: hwpoison_guest.sh SLUICED SLUICECTL BLKBENCH HOSTILE WORKDIR
# Exit 77 (meson's "skipped") when QEMU or the guest cannot be prepared.
set -uo pipefail
SLUICED=$1 SLUICECTL=$2 BLKBENCH=$3 HOSTILE=$4 WORK=$5
HERE=$(cd "$(dirname "$0")" && pwd)
GUEST=$WORK/guest
mkdir -p "$WORK"
bash "$HERE/setup-guest.sh" "$GUEST" || exit $?
for b in "$SLUICECTL" "$BLKBENCH" "$HOSTILE"; do
  if readelf -l "$b" 2>/dev/null | grep -q INTERP; then echo "hwpoison_guest: $b is not static"; exit 77; fi
done
dir=$WORK/hwpoison
rm -rf "$dir"; mkdir -p "$dir/root/bin" "$dir/root/tests"
cp "$SLUICED" "$dir/root/bin/sluiced"
if readelf -l "$SLUICED" | grep -q INTERP; then
  # Built with DPDK: its shared libraries (and the loader) go along.
  ldd "$SLUICED" | awk '/=> \//{print $3} /^\t\/.*ld-linux/{print $1}' | while read -r lib; do
    mkdir -p "$dir/root$(dirname "$lib")"
    cp -L "$lib" "$dir/root$lib"
  done
fi
cp "$SLUICECTL" "$dir/root/bin/sluicectl"
cp "$BLKBENCH" "$dir/root/bin/sluice-blkbench"
cp "$HOSTILE" "$dir/root/bin/sluice-hostile"
(cd "$dir/root" && find . -print0 | cpio --null -o -H newc --quiet) > "$dir/overlay.cpio"
cat "$GUEST/initrd.cpio" "$dir/overlay.cpio" > "$dir/initrd.cpio"

start=$(date +%s)
timeout ${SLUICE_HWPOISON_TIMEOUT:-300} qemu-system-x86_64 -accel tcg -cpu max -smp 2 -m 1G -nographic -no-reboot \
  -nic none -kernel "$GUEST/vmlinux" -initrd "$dir/initrd.cpio" \
  -append "console=ttyS0 quiet panic=-1 mitigations=off nokaslr tsc=reliable no_timer_check cryptomgr.notests sluice.test=hwpoison" \
  > "$dir/console.log" 2>&1
qrc=$?
echo "hwpoison_guest: guest ran for $(( $(date +%s) - start )) s (qemu rc=$qrc)"
log=$dir/console.log
grep -E '^HWP-' "$log" | sed 's/^/  /'
if grep -q '^HWP-HOSTILE rc=77' "$log"; then
  echo "hwpoison_guest: SKIPPED ($(sed -n 's/^HWP-HOSTILE rc=77 //p' "$log"))"; exit 77
fi
fail=0
check() { if eval "$2"; then echo "hwpoison_guest: ok   - $1"; else echo "hwpoison_guest: FAIL - $1"; fail=1; fi; }
check "guest ran the test" "grep -q 'SLUICE-GUEST: test hwpoison exit=' '$log'"
check "the poisoned page's request failed, the other seven were served" \
  "grep -q '^HWP-HOSTILE-SAYS hostile hwpoison: 8 of 8 answered, 1 with IOERR (the poisoned page.s: yes), 7 OK' '$log'"
check "the page is reported with its guest address and cause" \
  "grep -q '^HWP-STATS .*poisoned guest page: gpa 0x8000000, 4096 bytes (hardware-poison)' '$log'"
check "one log line names it" "grep -q '^HWP-LOG .*gpa 0x8000000.*hardware-poison' '$log'"
check "the other tenant verified its disk without an error" "grep -q '^HWP-GOOD rc=0 .*errors 0' '$log'"
check "the API answered" "grep -q '^HWP-API rc=0' '$log'"
check "sluiced exited 0 on SIGTERM" "grep -q '^HWP-SLUICED-EXIT 0' '$log'"
[ $fail -eq 0 ] || tail -40 "$log"
exit $fail
