#!/usr/bin/env bash
# Installs the Debian 12 packages Sluice builds and tests with. Idempotent:
# packages already present are not touched, and apt is not run at all when
# nothing is missing.
set -euo pipefail

PKGS=(
  meson ninja-build pkg-config g++
  liburing-dev
  # Boost.JSON arrived in Boost 1.75: Debian 12's libboost-dev is 1.74, so the
  # 1.81 headers (Asio, Beast) and Boost.JSON come from these two instead.
  libboost1.81-dev libboost-json1.81-dev
  libgtest-dev libbenchmark-dev
  clang libclang-rt-14-dev   # libFuzzer + sanitizers for the fuzz target
  # peers for the end-to-end tests: QEMU guests under TCG, a busybox initramfs
  qemu-system-x86 qemu-system-common qemu-utils busybox-static kmod cpio xz-utils python3
  # DPDK: ethdev uplinks (build) and dpdk-testpmd, the virtio-user front-end
  # of the net tests and the vhost PMD the benchmark compares against
  libdpdk-dev dpdk-dev
)

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "sluice: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
