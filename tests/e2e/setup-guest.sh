#!/bin/bash
# Prepares what the end-to-end tests boot: Debian 12's kernel (downloaded and
# unpacked, never installed), an uncompressed vmlinux for QEMU's PVH boot, and
# a busybox initramfs with virtio modules, /init and the guest-side tests.
# Idempotent: a prepared directory is reused. Usage: setup-guest.sh DIR
# Exit 77 (skip) when the tools cannot be had.
set -euo pipefail
DIR=$(realpath -m "${1:?usage: setup-guest.sh DIR}")
HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$DIR"
for tool in qemu-system-x86_64 busybox cpio depmod modprobe xz; do
  command -v $tool >/dev/null || { echo "setup-guest: $tool missing (scripts/deps.sh installs it)"; exit 77; }
done

if [ ! -s "$DIR/vmlinux" ] || [ ! -d "$DIR/kernel/lib/modules" ]; then
  rm -rf "$DIR/kernel" "$DIR/debs"; mkdir -p "$DIR/kernel" "$DIR/debs"
  pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
  if [ -z "$pkg" ]; then
    apt-get update -qq >/dev/null 2>&1 || true
    pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
  fi
  [ -n "$pkg" ] || { echo "setup-guest: cannot find Debian's kernel package"; exit 77; }
  (cd "$DIR/debs" && apt-get download "$pkg" >/dev/null 2>&1) || { echo "setup-guest: cannot download $pkg"; exit 77; }
  dpkg -x "$DIR"/debs/"$pkg"_*.deb "$DIR/kernel"
  kv=$(ls "$DIR/kernel/lib/modules" | head -1)
  depmod -b "$DIR/kernel" "$kv"   # the .deb ships no modules.dep
  # The ELF vmlinux inside vmlinuz boots directly through PVH: no decompressor,
  # about twice as fast under TCG.
  kz="$DIR/kernel/boot/vmlinuz-$kv"
  off=$(grep -abo $'\xfd7zXZ\x00' "$kz" | head -1 | cut -d: -f1)
  tail -c +$((off + 1)) "$kz" | xz -dc --single-stream > "$DIR/vmlinux.tmp" 2>/dev/null || true
  [ -s "$DIR/vmlinux.tmp" ] || { echo "setup-guest: cannot extract vmlinux"; exit 1; }
  mv "$DIR/vmlinux.tmp" "$DIR/vmlinux"
  rm -rf "$DIR/debs"
fi

# The initramfs is rebuilt whenever a guest-side file changed.
stamp=$(cat "$0" "$HERE"/guest/* "$HERE"/guest-src/* | md5sum | cut -d' ' -f1)
if [ ! -s "$DIR/initrd.cpio" ] || [ "$(cat "$DIR/initrd.stamp" 2>/dev/null)" != "$stamp" ]; then
  kv=$(ls "$DIR/kernel/lib/modules" | head -1)
  root=$(mktemp -d "$DIR/initrd.XXXXXX")
  trap 'rm -rf "$root"' EXIT
  mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,tmp,run,mnt,etc,tests,lib/modules/$kv}
  cp "$(command -v busybox)" "$root/bin/busybox"
  ln -s busybox "$root/bin/sh"
  for m in virtio_pci virtio_blk virtio_net; do
    modprobe -d "$DIR/kernel" -S "$kv" --show-depends $m | awk '$1=="insmod"{print $2}'
  done | sort -u | while read -r f; do
    rel=${f#$DIR/kernel/}
    mkdir -p "$root/$(dirname "$rel")"
    cp "$f" "$root/$rel"
  done
  cp "$DIR/kernel/lib/modules/$kv"/modules.{order,builtin,builtin.modinfo} "$root/lib/modules/$kv/"
  depmod -b "$root" "$kv"
  cp "$HERE/guest/init" "$root/init"
  for t in "$HERE"/guest/*.sh; do cp "$t" "$root/tests/"; done
  # The benchmark's load generator: static, so it needs nothing in the guest.
  if command -v gcc >/dev/null; then
    gcc -O2 -static -pthread -o "$root/bin/loadgen" "$HERE/guest-src/loadgen.c"
  fi
  chmod +x "$root/init" "$root"/tests/*.sh
  (cd "$root" && find . -print0 | cpio --null -o -H newc --quiet) > "$DIR/initrd.cpio"
  echo "$stamp" > "$DIR/initrd.stamp"
fi
echo "setup-guest: ready in $DIR"
