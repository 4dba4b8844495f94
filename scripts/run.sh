#!/usr/bin/env bash
# README command 1: install what is needed, build, and run the main job on its
# built-in default. Until the daemon lands that job is the virtqueue
# benchmark (plain vs in-order, alternating rounds, medians at the end).
# Extra arguments go to sluice-bench (e.g. --rounds=9 --benchmark_filter=batch:32).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
if [ ! -f build-release/build.ninja ]; then
  meson setup build-release --buildtype=release -Dtests=false >/dev/null
fi
ninja -C build-release bench/sluice-bench
exec build-release/bench/sluice-bench --benchmark_min_time=0.2 "$@"
