#!/bin/bash
# sluice-pinbench on the host, small: every backing is either measured or
# skipped with a reason; io_uring registration and mlock of 4 KiB pages are
# measured (they need nothing but the kernel); JSON and CSV are written.
# Usage: pinbench_host.sh PINBENCH WORKDIR
set -uo pipefail
PINBENCH=$1 WORK=$2
mkdir -p "$WORK"
out=$WORK/pinbench.txt json=$WORK/pinbench.json csv=$WORK/pinbench.csv
"$PINBENCH" --size 32M --backing anon4k,thp,huge2m,huge1g --method iouring,mlock --reps 2 \
  --json "$json" --csv "$csv" > "$out" 2>&1
rc=$?
cat "$out"
fail=0
check() { if eval "$2"; then echo "pinbench_host: ok   - $1"; else echo "pinbench_host: FAIL - $1"; fail=1; fi; }
check "exit status 0" "[ $rc -eq 0 ]"
check "every backing x method has a row (8)" "[ \$(grep -cE '^(anon4k|thp|huge2m|huge1g) +(iouring|mlock) ' '$out') -eq 8 ]"
check "anon4k measured by io_uring and mlock" "[ \$(grep -cE '^anon4k +(iouring|mlock) +- +1 +[0-9.]+ ' '$out') -eq 2 ]"
check "JSON has 8 records, anon4k ones with 2 samples" "python3 -c '
import json,sys
rows=json.load(open(\"$json\"))
ok=len(rows)==8 and all(len(r[\"pin_ms\"])==2 for r in rows if r[\"backing\"]==\"anon4k\")
ok=ok and all((\"pin_ms\" in r) != (\"skipped\" in r) for r in rows)
sys.exit(0 if ok else 1)'"
check "CSV has a header and 8 rows" "[ \$(wc -l < '$csv') -eq 9 ]"
# A bad flag is a usage error, not a crash.
"$PINBENCH" --backing floppy > /dev/null 2>&1; urc=$?
check "an unknown backing is a usage error (exit 2)" "[ $urc -eq 2 ]"
exit $fail
