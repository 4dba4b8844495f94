#!/bin/bash
# End to end: VFIO inside a QEMU guest (TCG) with an emulated VT-d
# (q35, kernel-irqchip=split, intel-iommu intremap=on caching-mode=on; guest
# kernel intel_iommu=on). QEMU's edu device is bound to vfio-pci and driven
# through Sluice's vfio/ library (tests/e2e/vfio_edu.cc), then sluice-pinbench
# runs with VFIO on edu's group.
# Last, sluiced runs in the guest with --vfio-group on edu's group and
# sluice-blkbench as its vhost-user front-end: the session's memory must be in
# the IOMMU while it lives and gone after.
# Then Sluice's userspace virtio-pci driver (tests/e2e/virtio_vfio.cc) drives
# three virtio-blk-pci devices (disable-legacy, iommu_platform) with 3, 2 and
# 0 MSI-X vectors: per-queue, shared and polled; the images are checked here.
# Last, queue offload: sluiced (blk export with vfio=,offload=on) hands a
# fourth virtio-blk-pci device the queues of sluice-blkbench's session; and
# a fifth serves an export as the backend of Sluice's workers (pass-through).
# Usage: vfio_guest.sh VFIO_EDU PINBENCH SLUICED SLUICECTL BLKBENCH VIRTIO_VFIO WORKDIR
# Exit 77 (meson's "skipped") when QEMU or the guest cannot be prepared.
# With SLUICE_VFIO_PINBENCH="ARGS" (lines; @GROUP@ = edu's group) the guest
# runs only `sluice-pinbench ARGS` per line and the tables are printed
# (bench/pin_guest.sh);
# SLUICE_VFIO_MEM / SLUICE_VFIO_HUGEPAGES size the guest (default 1G / 64).
set -uo pipefail
EDU_BIN=$1 PINBENCH=$2 SLUICED=$3 SLUICECTL=$4 BLKBENCH=$5 VIRTIO_VFIO=$6 WORK=$7
HERE=$(cd "$(dirname "$0")" && pwd)
GUEST=$WORK/guest
mkdir -p "$WORK"
bash "$HERE/setup-guest.sh" "$GUEST" || exit $?
# Static programs, except sluiced when it was built with DPDK: its shared
# libraries (and the loader) go into the initramfs with it.
for b in "$EDU_BIN" "$PINBENCH" "$SLUICECTL" "$BLKBENCH" "$VIRTIO_VFIO"; do
  if readelf -l "$b" 2>/dev/null | grep -q INTERP; then echo "vfio_guest: $b is not static"; exit 77; fi
done

# An overlay initramfs (the kernel unpacks concatenated archives in order):
# the VFIO modules, the static test programs, the module load order.
dir=$WORK/vfio
rm -rf "$dir"; mkdir -p "$dir/root/bin" "$dir/root/tests"
kv=$(ls "$GUEST/kernel/lib/modules" | head -1)
modprobe -d "$GUEST/kernel" -S "$kv" --show-depends vfio_pci vfio_iommu_type1 |
  awk '$1=="insmod"{print $2}' | awk '!seen[$0]++' > "$dir/mods.host"
[ -s "$dir/mods.host" ] || { echo "vfio_guest: no vfio modules in $kv"; exit 77; }
while read -r f; do
  rel=${f#$GUEST/kernel}
  mkdir -p "$dir/root/$(dirname "$rel")"
  cp "$f" "$dir/root/$rel"
  echo "$rel"
done < "$dir/mods.host" > "$dir/root/tests/vfio-modules.txt"
cp "$EDU_BIN" "$dir/root/bin/sluice-vfio-edu"
cp "$PINBENCH" "$dir/root/bin/sluice-pinbench"
cp "$SLUICED" "$dir/root/bin/sluiced"
if readelf -l "$SLUICED" | grep -q INTERP; then
  ldd "$SLUICED" | awk '/=> \//{print $3} /^\t\/.*ld-linux/{print $1}' | while read -r lib; do
    mkdir -p "$dir/root$(dirname "$lib")"
    cp -L "$lib" "$dir/root$lib"
  done
fi
cp "$SLUICECTL" "$dir/root/bin/sluicectl"
cp "$BLKBENCH" "$dir/root/bin/sluice-blkbench"
cp "$VIRTIO_VFIO" "$dir/root/bin/sluice-virtio-vfio"
# Three disks for the virtio-pci driver: the host's pattern in the first 64 KiB.
for i in 3 4; do
  python3 -c "import sys; sys.stdout.buffer.write(bytes(4096))" > "$dir/vd$i.img"; truncate -s 64M "$dir/vd$i.img"
done
for i in 0 1 2; do
  python3 -c "import sys; sys.stdout.buffer.write(bytes((k*31+7+$i)&255 for k in range(65536)))" > "$dir/vd$i.img"
  truncate -s 16M "$dir/vd$i.img"
done
test_name=vfio
if [ -n "${SLUICE_VFIO_PINBENCH:-}" ]; then
  test_name=vfio-pinbench
  printf '%s\n' "$SLUICE_VFIO_PINBENCH" > "$dir/root/tests/pinbench.args"
fi
mem=${SLUICE_VFIO_MEM:-1G} hugepages=${SLUICE_VFIO_HUGEPAGES:-64}
(cd "$dir/root" && find . -print0 | cpio --null -o -H newc --quiet) > "$dir/overlay.cpio"
cat "$GUEST/initrd.cpio" "$dir/overlay.cpio" > "$dir/initrd.cpio"

start=$(date +%s)
timeout ${SLUICE_VFIO_TIMEOUT:-600} qemu-system-x86_64 -accel tcg -cpu max -smp 2 -m "$mem" -nographic -no-reboot -nic none \
  -machine q35,kernel-irqchip=split -device intel-iommu,intremap=on,caching-mode=on \
  -device edu \
  -drive if=none,id=vd0,file="$dir/vd0.img",format=raw,cache=unsafe \
  -device virtio-blk-pci,drive=vd0,addr=0x10,disable-legacy=on,iommu_platform=on,num-queues=2 \
  -drive if=none,id=vd1,file="$dir/vd1.img",format=raw,cache=unsafe \
  -device virtio-blk-pci,drive=vd1,addr=0x11,disable-legacy=on,iommu_platform=on,num-queues=2,vectors=2 \
  -drive if=none,id=vd2,file="$dir/vd2.img",format=raw,cache=unsafe \
  -device virtio-blk-pci,drive=vd2,addr=0x12,disable-legacy=on,iommu_platform=on,num-queues=1,vectors=0 \
  -drive if=none,id=vd3,file="$dir/vd3.img",format=raw,cache=unsafe \
  -device virtio-blk-pci,drive=vd3,addr=0x13,disable-legacy=on,iommu_platform=on,num-queues=1 \
  -drive if=none,id=vd4,file="$dir/vd4.img",format=raw,cache=unsafe \
  -device virtio-blk-pci,drive=vd4,addr=0x14,disable-legacy=on,iommu_platform=on,num-queues=2 \
  -netdev hubport,id=n0,hubid=0 \
  -device virtio-net-pci,netdev=n0,addr=0x15,disable-legacy=on,iommu_platform=on,mq=on,vectors=4 \
  -kernel "$GUEST/vmlinux" -initrd "$dir/initrd.cpio" \
  -append "console=ttyS0 quiet panic=-1 mitigations=off nokaslr tsc=reliable no_timer_check cryptomgr.notests intel_iommu=on hugepages=$hugepages sluice.test=$test_name" \
  > "$dir/console.log" 2>&1
qrc=$?
echo "vfio_guest: guest ran for $(( $(date +%s) - start )) s (qemu rc=$qrc)"

if [ "$test_name" = vfio-pinbench ]; then
  sed -n '/VFIO-PINBENCH-BEGIN/,/VFIO-PINBENCH-END/p' "$dir/console.log" | grep -v '^VFIO-PINBENCH-'
  grep -q 'VFIO-PINBENCH-EXIT 0' "$dir/console.log" || { tail -30 "$dir/console.log"; exit 1; }
  exit 0
fi

fail=0
check() { if eval "$2"; then echo "vfio_guest: ok   - $1"; else echo "vfio_guest: FAIL - $1"; fail=1; fi; }
log=$dir/console.log
check "guest ran the test" "grep -q 'SLUICE-GUEST: test vfio exit=' '$log'"
check "qemu exited cleanly" "[ $qrc -eq 0 ]"
check "edu bound to vfio-pci" "grep -q 'VFIO-BIND .* driver=vfio-pci' '$log'"
grep -E '^EDU-(OK|FAIL|INFO)' "$log" | sed 's/^/  /'
check "every edu check passed" "grep -q 'EDU-DONE fails=0' '$log' && ! grep -q '^EDU-FAIL' '$log'"
check "the unmapped DMA faulted in the IOMMU (DMAR fault logged)" "grep -q 'VFIO-DMESG' '$log'"
sed -n '/VFIO-PINBENCH-BEGIN/,/VFIO-PINBENCH-END/p' "$log" | sed 's/^/  /'
check "pinbench ran" "grep -q 'VFIO-PINBENCH-EXIT 0' '$log'"
check "pinbench mapped through VFIO (planned and raw rows measured)" \
  "sed -n '/VFIO-PINBENCH-BEGIN/,/VFIO-PINBENCH-END/p' '$log' | grep -E '^huge2m +vfio:[0-9]+ +planned +1 ' >/dev/null && sed -n '/VFIO-PINBENCH-BEGIN/,/VFIO-PINBENCH-END/p' '$log' | grep -E '^huge2m +vfio:[0-9]+ +raw +1 ' >/dev/null"
check "pinbench io_uring and mlock rows measured" \
  "sed -n '/VFIO-PINBENCH-BEGIN/,/VFIO-PINBENCH-END/p' '$log' | grep -E '^anon4k +(iouring|mlock) +- +1 ' | wc -l | grep -q 2"
grep -E '^VFIO-(SLUICED|BLKBENCH|SLUICECTL)' "$log" | sed 's/^/  /'
mappings() {  # kernel_mappings of the first container in a VFIO-SLUICED-<when> line
  sed -n "s/^VFIO-SLUICED-$1 //p" "$log" | head -1 |
    python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["kernel_mappings"])' 2>/dev/null
}
check "sluiced opened edu's group (no mappings before a session)" "[ '$(mappings BEFORE)' = 0 ]"
check "the session's guest memory was mapped while it lived" "[ '$(mappings DURING)' -gt 0 ] 2>/dev/null"
check "blkbench did I/O through sluiced meanwhile" "grep -q 'VFIO-BLKBENCH-EXIT 0' '$log' && grep -qi 'iops' '$log'"
check "all of it unmapped when the session ended" "[ '$(mappings AFTER)' = 0 ]"
check "sluiced exited 0" "grep -q 'VFIO-SLUICED-EXIT 0' '$log'"
grep -E '^VV-' "$log" | sed 's/^/  /'
check "virtio-pci driver: every check passed on all three devices" \
  "grep -q 'VV-DONE fails=0' '$log' && [ \$(grep -c '^VV-OK' '$log') -ge 24 ] && ! grep -q '^VV-FAIL' '$log'"
check "virtio-net-pci brought up by the same transport (vectors read back, DRIVER_OK)" \
  "grep -q 'VV-OK 0000:00:15.0 device accepted DRIVER_OK' '$log' && grep -q 'VV-OK 0000:00:15.0 every queue vector read back' '$log'"
for i in 0 1 2; do
  nq=2; [ $i -eq 2 ] && nq=1
  check "vd$i: the guest's per-queue patterns reached the image" "python3 -c '
import sys
d=open(\"$dir/vd$i.img\",\"rb\").read()
ok=all(d[(2048+128*q)*512:(2048+128*q)*512+65536]==bytes((k*17+3+q+16*$i)&255 for k in range(65536)) for q in range($nq))
sys.exit(0 if ok else 1)'"
done
# sluice-blkbench --rw verify's pattern in the first MiB of an image.
has_verify_pattern() {
  python3 -c '
import struct,sys
d=open(sys.argv[1],"rb").read(1<<20)
for i in range(0,len(d),8):
    s=i//512; v=((s*0x9e3779b97f4a7c15)&0xffffffffffffffff)^(i%512)
    if struct.unpack_from("<Q",d,i)[0]!=v: sys.exit(1)' "$1"
}
grep -E '^VFIO-OFFLOAD' "$log" | sed 's/^/  /'
check "offload: export listed with its device" "grep -q 'VFIO-OFFLOAD-LIST .*\"offload\":{\"device\":\"0000:00:13.0\"' '$log'"
check "offload: every block written and read back intact through the device" \
  "grep -q 'VFIO-OFFLOAD-VERIFY-EXIT 0' '$log' && grep -q 'VFIO-OFFLOAD-BENCH verify: 16384 blocks of 4096 bytes written and read back, 0 mismatches' '$log'"
check "offload: the device signalled the front-end's call eventfd" \
  "[ \$(sed -n 's/^VFIO-OFFLOAD-BENCH call-signals //p' '$log' | tr -d '\r' | head -1) -gt 0 ] 2>/dev/null"
check "offload: queue 0 offloaded and running, its vector bound to the front-end's call fd" \
  "sed -n 's/^VFIO-OFFLOAD-STATS //p' '$log' | python3 -c 'import json,sys; q=json.load(sys.stdin)[\"queues\"][0]; sys.exit(0 if q[\"offloaded\"] and q[\"running\"] and q[\"vector\"]==1 and q[\"call_fd\"]>=0 else 1)'"
check "offload: sluicectl irq shows queue 0 as a device vector bound to the call fd (bypass-eligible)" \
  "sed -n 's/^VFIO-OFFLOAD-IRQ //p' '$log' | python3 -c 'import json,sys; v=json.load(sys.stdin)[\"vectors\"][0]; sys.exit(0 if v[\"kind\"]==\"device-vector\" and v[\"bypass_eligible\"] and v[\"vector\"]==1 and v[\"device\"]==\"0000:00:13.0\" else 1)'"
check "offload: random reads ran" "grep -q 'VFIO-OFFLOAD-READ-EXIT 0' '$log'"
check "offload: the workers slept through it (under 100 poll rounds)" "python3 -c '
import json,re,sys
t=open(\"$log\").read()
b=json.loads(re.search(r\"VFIO-OFFLOAD-WORKERS-BEFORE (.*)\",t).group(1)); a=json.loads(re.search(r\"VFIO-OFFLOAD-WORKERS-AFTER (.*)\",t).group(1))
sys.exit(0 if sum(x[\"polls\"] for x in a)-sum(x[\"polls\"] for x in b) < 100 else 1)'"
check "offload: the image holds the front-end's pattern" "has_verify_pattern '$dir/vd3.img'"
check "offload: sluiced exited 0" "grep -q 'VFIO-OFFLOAD-SLUICED-EXIT 0' '$log'"
grep -E '^VFIO-PT' "$log" | sed 's/^/  /'
check "pass-through: export served by the workers on the device, 2 queues" \
  "sed -n 's/^VFIO-PT-LIST //p' '$log' | python3 -c 'import json,sys; e=json.load(sys.stdin)[0]; sys.exit(0 if e[\"vfio_backend\"][\"device\"]==\"0000:00:14.0\" and e[\"queues\"]==2 else 1)'"
check "pass-through: every block written and read back intact (2 queues)" \
  "grep -q 'VFIO-PT-VERIFY-EXIT 0' '$log' && grep -q 'VFIO-PT-BENCH verify: 16384 blocks of 4096 bytes written and read back, 0 mismatches' '$log'"
check "pass-through: random reads ran" "grep -q 'VFIO-PT-READ-EXIT 0' '$log'"
check "pass-through: both queues carried requests, no errors, the device interrupted the workers" \
  "sed -n 's/^VFIO-PT-STATS //p' '$log' | python3 -c 'import json,sys; q=json.load(sys.stdin)[\"queues\"]; sys.exit(0 if all(x[\"requests\"]>0 and x[\"errors\"]==0 and x[\"device_interrupts\"]>0 for x in q) else 1)'"
check "pass-through: the image holds the front-end's pattern" "has_verify_pattern '$dir/vd4.img'"
check "pass-through: sluiced exited 0" "grep -q 'VFIO-PT-SLUICED-EXIT 0' '$log'"
if [ $fail -ne 0 ]; then echo "--- console (tail):"; tail -60 "$log"; fi
exit $fail
