#!/usr/bin/env bash
# README command 1: install what is needed, build, and run the main job on
# its built-in default: sluiced serving a 1 GiB sparse image as a
# vhost-user-blk disk (it prints the socket and a QEMU command line that
# attaches a guest). Ctrl-C stops it cleanly.
# Extra arguments go to sluiced (e.g. --blk path=...,file=...; see --help).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
if [ ! -f build-release/build.ninja ]; then
  meson setup build-release --buildtype=release -Dtests=false >/dev/null
fi
ninja -C build-release control/sluiced control/sluicectl bench/sluice-bench bench/sluice-blkbench
exec build-release/control/sluiced "$@"
