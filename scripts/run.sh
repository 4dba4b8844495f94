#!/usr/bin/env bash
# README command 1: install what is needed, build, start sluiced on its
# built-in default export (a 1 GiB sparse image served as vhost-user-blk),
# boot a small demo guest (QEMU, emulated CPU) that sluicectl attaches to it
# over QMP, let the guest write and read the disk, print what happened, and
# keep sluiced serving until Ctrl-C.
# With arguments, they go to sluiced instead and no demo runs (e.g.
# scripts/run.sh --blk path=...,file=...; see sluiced --help).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
if [ ! -f build-release/build.ninja ]; then
  meson setup build-release --buildtype=release -Dtests=false >/dev/null
fi
ninja -C build-release control/sluiced control/sluicectl bench/sluice-bench bench/sluice-blkbench bench/sluice-pinbench
[ $# -gt 0 ] && exec build-release/control/sluiced "$@"

demo=build-release/demo
mkdir -p "$demo"
export SLUICE_RUN_DIR=${SLUICE_RUN_DIR:-$PWD/$demo/run}
api=$SLUICE_RUN_DIR/api.sock
build-release/control/sluiced > "$demo/sluiced.log" 2>&1 &
spid=$!
trap 'kill -TERM $spid 2>/dev/null; wait $spid 2>/dev/null' EXIT INT TERM
for _ in $(seq 1 100); do [ -S "$api" ] && break; sleep 0.1; done
[ -S "$api" ] || { cat "$demo/sluiced.log"; echo "run.sh: sluiced did not start"; exit 1; }
echo "== sluiced is serving its default export (log: $demo/sluiced.log)"
build-release/control/sluicectl --api "$api" list
echo "== preparing a demo guest (Debian's kernel, a busybox initramfs; downloaded once)"
bash tests/e2e/setup-guest.sh "$demo/guest" >/dev/null
echo "== booting it (QEMU, TCG), attaching the export over QMP"
build-release/control/sluicectl --api "$api" run-guest --kernel "$demo/guest/vmlinux" \
  --initrd "$demo/guest/initrd.cpio" --mem 512M --attach default --console "$demo/console.log" --wait \
  --append "console=ttyS0 quiet panic=-1 mitigations=off nokaslr tsc=reliable no_timer_check cryptomgr.notests sluice.test=demo"
echo "== what happened"
grep -E '^DEMO' "$demo/console.log" | sed 's/^DEMO-*[A-Z]* */  guest: /' || true
build-release/control/sluicectl --api "$api" stats default | sed 's/^/  sluiced: /'
if ! grep -q '^DEMO-OK' "$demo/console.log"; then
  echo "run.sh: the demo did not complete; the guest console is in $demo/console.log"
  exit 1
fi
echo "== the guest is gone; sluiced keeps serving the export on $SLUICE_RUN_DIR/default.sock"
echo "   (attach your own QEMU: see docs/OPERATIONS.md; Ctrl-C stops sluiced)"
wait $spid
