#!/bin/bash
# Soak: N tenants do verified I/O against one sluiced for MINUTES while a
# hostile front-end cycles through the whole catalogue of tests/e2e (memory
# cut under the rings and the buffers, private guest_memfd pages, a saturated
# call counter, a cut inflight region, a new inflight region under a running
# ring, a 2 TiB memory table, a message split over seconds, back-to-back
# reconnects). Not part of the test suite (it runs for minutes).
#
#   bench/soak.sh [--minutes 10] [--tenants 3] [--build build]
#
# Reports: hostile cases run (and how many the front-end saw contained),
# tenant verify passes and blocks written and read back, errors the good
# tenants saw (must be 0), and sluiced's RSS and fd count every 30 s.
# Exit 0 when no good tenant saw an error, sluiced lived, and the fd count
# ended where it started.
set -uo pipefail
MINUTES=10 TENANTS=3 BUILD=build
while [ $# -gt 0 ]; do
  case $1 in
    --minutes) MINUTES=$2; shift 2 ;;
    --tenants) TENANTS=$2; shift 2 ;;
    --build) BUILD=$2; shift 2 ;;
    *) echo "usage: $0 [--minutes N] [--tenants N] [--build DIR]"; exit 2 ;;
  esac
done
HERE=$(cd "$(dirname "$0")/.." && pwd)
SLUICED=$HERE/$BUILD/control/sluiced CTL=$HERE/$BUILD/control/sluicectl
BENCH=$HERE/$BUILD/bench/sluice-blkbench HOSTILE=$HERE/$BUILD/tests/e2e/sluice-hostile
for b in "$SLUICED" "$CTL" "$BENCH" "$HOSTILE"; do
  [ -x "$b" ] || { echo "soak: $b missing (meson setup $BUILD -Dbench=true; ninja -C $BUILD)"; exit 2; }
done
D=$(mktemp -d /tmp/sluice-soak-XXXXXX)
api=$D/api.sock
blks=()
for t in $(seq 1 "$TENANTS"); do blks+=(--blk "id=t$t,path=$D/t$t.sock,file=$D/t$t.img,size=32M"); done
"$SLUICED" --api "$api" --workers 1 --stop-timeout 1000 "${blks[@]}" \
  --blk "id=bad,path=$D/bad.sock,file=$D/bad.img,size=32M" > "$D/sluiced.log" 2>&1 &
SPID=$!
cleanup() { kill $SPID 2>/dev/null; wait $SPID 2>/dev/null; jobs -p | xargs -r kill 2>/dev/null; }
trap cleanup EXIT
for _ in $(seq 1 50); do [ -S "$api" ] && break; sleep 0.1; done
fds() { ls /proc/$SPID/fd 2>/dev/null | wc -l; }
rss_kb() { awk '/^VmRSS/ {print $2}' /proc/$SPID/status 2>/dev/null; }
# One verify pass per tenant first, so lazily made state is in the baseline.
for t in $(seq 1 "$TENANTS"); do "$BENCH" --socket "$D/t$t.sock" --rw verify --bs 4096 --qd 8 > /dev/null 2>&1; done
fd0=$(fds) rss0=$(rss_kb)
end=$(( $(date +%s) + MINUTES * 60 ))
echo "soak: $TENANTS tenants, $MINUTES min, sluiced pid $SPID; fds $fd0, RSS $rss0 KiB at start"

# Good tenants: verify passes back to back until the end.
for t in $(seq 1 "$TENANTS"); do
  (
    passes=0 blocks=0 errors=0
    while [ "$(date +%s)" -lt "$end" ]; do
      out=$("$BENCH" --socket "$D/t$t.sock" --rw verify --bs 4096 --qd 8 2>&1)
      rc=$?
      n=$(sed -n 's/^verify: \([0-9]*\) blocks.*, \([0-9]*\) mismatches.*/\1 \2/p' <<< "$out")
      e=$(sed -n 's/.*errors \([0-9]*\)$/\1/p' <<< "$out" | tail -1)
      passes=$((passes + 1)) blocks=$((blocks + ${n%% *}))
      errors=$((errors + ${n##* } + ${e:-1} + (rc != 0)))
      [ $rc -ne 0 ] && echo "tenant $t pass $passes: rc $rc: $(tail -1 <<< "$out")" >> "$D/tenant-errors.txt"
    done
    echo "$passes $blocks $errors" > "$D/tenant-$t.txt"
  ) &
done

# The hostile front-end: the catalogue, round and round.
(
  cases=(shrink-memory shrink-buffers guest-memfd-private saturate-call shrink-inflight inflight-while-running huge-memory)
  run=0 contained=0 skipped=0
  while [ "$(date +%s)" -lt "$end" ]; do
    for c in "${cases[@]}" split reconnects; do
      [ "$(date +%s)" -lt "$end" ] || break
      run=$((run + 1))
      case $c in
        split)
          python3 - "$D/bad.sock" <<'PY' > /dev/null 2>&1 && contained=$((contained + 1))
import socket, struct, sys, time
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])
h = struct.pack("<III", 1, 1, 0)
s.sendall(h[:5]); time.sleep(1.5); s.sendall(h[5:] + h + h)
s.settimeout(5); got = b""
while len(got) < 60: got += s.recv(4096)
PY
          ;;
        reconnects)
          ok=1
          for _ in $(seq 1 10); do
            "$BENCH" --socket "$D/bad.sock" --rw read --bs 4096 --qd 4 --seconds 0.05 > /dev/null 2>&1 || ok=0
          done
          contained=$((contained + ok))
          ;;
        *)
          "$HOSTILE" --socket "$D/bad.sock" --case "$c" --hold 1 > "$D/h.txt" 2>&1
          case $? in 0) contained=$((contained + 1)) ;; 77) skipped=$((skipped + 1)) ;; *) echo "$c: $(cat "$D/h.txt")" >> "$D/hostile-odd.txt" ;; esac
          ;;
      esac
    done
  done
  echo "$run $contained $skipped" > "$D/hostile.txt"
) &

# RSS and fds over time.
echo "   t(s)  RSS(KiB)  fds  API(ms)"
start=$(date +%s)
while [ "$(date +%s)" -lt "$end" ]; do
  kill -0 $SPID 2>/dev/null || { echo "soak: sluiced died"; break; }
  t0=$(date +%s%N)
  timeout 5 "$CTL" --api "$api" list > /dev/null 2>&1 || echo "soak: the API did not answer"
  printf "%7d %9s %4s %8d\n" $(( $(date +%s) - start )) "$(rss_kb)" "$(fds)" $(( ($(date +%s%N) - t0) / 1000000 ))
  sleep 30
done
wait $(jobs -p | grep -v "^$SPID$") 2>/dev/null
sleep 2
fail=0
total_passes=0 total_blocks=0 total_errors=0
for t in $(seq 1 "$TENANTS"); do
  read -r p b e < "$D/tenant-$t.txt"
  total_passes=$((total_passes + p)) total_blocks=$((total_blocks + b)) total_errors=$((total_errors + e))
done
read -r hrun hcont hskip < "$D/hostile.txt"
fd1=$(fds) rss1=$(rss_kb)
echo "soak: hostile cases run $hrun ($hcont contained as the front-end expects, $hskip skipped here)"
echo "soak: good tenants: $total_passes verify passes, $total_blocks blocks written and read back, $total_errors errors"
echo "soak: sluiced fds $fd0 -> $fd1, RSS $rss0 -> $rss1 KiB"
[ -s "$D/tenant-errors.txt" ] && { echo "soak: tenant errors:"; head "$D/tenant-errors.txt"; }
[ -s "$D/hostile-odd.txt" ] && { echo "soak: hostile cases that did not end as expected:"; sort "$D/hostile-odd.txt" | uniq -c | head; }
[ "$total_errors" -eq 0 ] || fail=1
kill -0 $SPID 2>/dev/null || fail=1
[ "$fd1" = "$fd0" ] || fail=1
kill -TERM $SPID; t0=$(date +%s)
wait $SPID; rc=$?
echo "soak: SIGTERM: sluiced exited $rc after $(( $(date +%s) - t0 )) s"
[ $rc -eq 0 ] || fail=1
[ $fail -eq 0 ] && { echo "soak: PASS"; rm -rf "$D"; } || echo "soak: FAIL (logs in $D)"
exit $fail
