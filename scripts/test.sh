#!/usr/bin/env bash
# README command 2: the whole test suite.
#  1. unit tests, -Werror build (gcc)
#  2. the same tests under AddressSanitizer + UndefinedBehaviorSanitizer
#  3. the libFuzzer targets (clang), each for a bounded time
# Ends with one line: "N passed, N failed, N skipped".
set -uo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh || exit 1

FUZZ_SECONDS=${SLUICE_FUZZ_SECONDS:-45}
JOBS=${SLUICE_JOBS:-2}
passed=0 failed=0 skipped=0

setup() {  # setup DIR [meson args...]: configure once, reconfigure cheaply after
  local dir=$1; shift
  if [ -f "$dir/build.ninja" ]; then
    meson configure "$dir" "$@" >/dev/null
  else
    meson setup "$dir" "$@" >/dev/null
  fi
}

# Adds one meson test run's results to the totals, counting GoogleTest cases
# (a test program that crashed or timed out counts as one failure).
count_meson() {
  local log=$1/meson-logs/testlog.json
  [ -f "$log" ] || { failed=$((failed + 1)); return; }
  local p f s
  read -r p f s < <(python3 - "$log" <<'PY'
import json, re, sys
p = f = s = 0
for line in open(sys.argv[1]):
    t = json.loads(line)
    out = t.get("stdout") or ""
    m = re.search(r"\[  PASSED  \] (\d+) test", out)
    k = re.search(r"\[  SKIPPED \] (\d+) test", out)
    x = re.search(r"\[  FAILED  \] (\d+) test", out)
    if m: p += int(m.group(1))
    if k: s += int(k.group(1))
    if x: f += int(x.group(1))
    if t["result"] not in ("OK", "SKIP", "EXPECTEDFAIL") and not x: f += 1
    if not (m or k or x) and t["result"] == "OK": p += 1
    if not (m or k or x) and t["result"] == "SKIP": s += 1
print(p, f, s)
PY
)
  passed=$((passed + p)); failed=$((failed + f)); skipped=$((skipped + s))
}

run_suite() {  # run_suite NAME DIR [meson args...]
  local name=$1 dir=$2; shift 2
  echo "== $name =="
  if ! setup "$dir" "$@" || ! ninja -C "$dir" -j "$JOBS" >"$dir.build.log" 2>&1; then
    echo "$name: build failed (log: $dir.build.log)"; tail -30 "$dir.build.log"
    failed=$((failed + 1)); return
  fi
  rm -f "$dir/meson-logs/testlog.json"
  meson test -C "$dir" --print-errorlogs --num-processes "$JOBS" | grep -vE '^(Ok|Expected Fail|Fail|Unexpected Pass|Skipped|Timeout):'
  count_meson "$dir"
}

run_suite "unit tests (gcc, -Werror)" build -Dwerror=true -Dbench=true
UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
ASAN_OPTIONS=detect_leaks=1 \
run_suite "unit tests under ASan+UBSan" build-asan -Dwerror=true -Dbench=false \
  -Db_sanitize=address,undefined -Db_lundef=false -Ddpdk=disabled

# The tests where threads meet (worker <-> control thread) under TSan.
echo "== worker and device tests under ThreadSanitizer =="
if setup build-tsan -Db_sanitize=thread -Db_lundef=false -Dbench=false -Ddaemon=false -Ddpdk=disabled -Dwerror=true \
     -Dcpp_args=-Wno-tsan &&
   ninja -C build-tsan -j "$JOBS" tests/unit/blk_device_test tests/unit/vhost_test tests/unit/virtio_pci_test tests/unit/net_test \
     tests/unit/worker_test \
     >build-tsan.build.log 2>&1; then
  for t in blk_device_test vhost_test virtio_pci_test net_test worker_test; do
    out=$(TSAN_OPTIONS=halt_on_error=1 build-tsan/tests/unit/$t 2>&1); rc=$?
    p=$(sed -n 's/^\[  PASSED  \] \([0-9]*\) test.*/\1/p' <<<"$out")
    f=$(sed -n 's/^\[  FAILED  \] \([0-9]*\) test.*/\1/p' <<<"$out")
    if [ $rc -eq 0 ]; then
      echo "$t: ok (${p:-0} tests)"; passed=$((passed + ${p:-0}))
    else
      echo "$t: FAILED under TSan"; grep -A30 -E 'ThreadSanitizer|Failure' <<<"$out" | head -60
      failed=$((failed + ${f:-1}))
    fi
  done
else
  echo "tsan build failed"; tail -30 build-tsan.build.log; failed=$((failed + 1))
fi

echo "== fuzzing (libFuzzer, ${FUZZ_SECONDS}s per target) =="
if CXX=clang++ setup build-fuzz -Dfuzz=true -Dtests=false -Dbench=false -Ddpdk=disabled -Dwerror=true \
     -Db_sanitize=address,undefined -Db_lundef=false &&
   ninja -C build-fuzz -j "$JOBS" >build-fuzz.build.log 2>&1; then
  for target in build-fuzz/tests/fuzz/fuzz_*; do
    [ -f "$target" ] && [ -x "$target" ] || continue
    name=$(basename "$target")
    corpus=build-fuzz/corpus-$name
    mkdir -p "$corpus"
    seeds=tests/fuzz/seeds-${name#fuzz_}
    [ -d "$seeds" ] || seeds=""
    if "$target" -max_total_time="$FUZZ_SECONDS" -max_len=8192 -artifact_prefix=build-fuzz/ \
         -print_final_stats=1 "$corpus" $seeds 2>build-fuzz/$name.log >/dev/null; then
      echo "$name: ok ($(grep -m1 -o 'stat::number_of_executed_units: *[0-9]*' build-fuzz/$name.log | grep -o '[0-9]*$') inputs)"
      passed=$((passed + 1))
    else
      echo "$name: FAILED"; tail -40 build-fuzz/$name.log
      failed=$((failed + 1))
    fi
  done
else
  echo "fuzz build failed"; tail -30 build-fuzz.build.log; failed=$((failed + 1))
fi

echo
echo "$passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
