#!/bin/sh
# Guest side of hwpoison_guest.sh: sluiced serves two disks; sluice-hostile
# poisons a page of its own guest memory (madvise MADV_HWPOISON: the kernel
# handles it as an uncorrected memory error) under its first request, and
# holds its session while the API is asked and sluice-blkbench verifies the
# other disk.
mkdir -p /run/s /tmp
sluiced --api /run/s/api.sock --workers 1 \
  --blk id=good,path=/run/s/good.sock,file=/tmp/good.img,size=32M \
  --blk id=bad,path=/run/s/bad.sock,file=/tmp/bad.img,size=32M > /tmp/sluiced.log 2>&1 &
SPID=$!
i=0; while [ ! -S /run/s/bad.sock ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
sluice-hostile --socket /run/s/bad.sock --case hwpoison --hold 120 > /tmp/h.txt 2>&1 &
HP=$!
# Its verdict comes before the hold (or it skipped, exit 77).
i=0; while [ ! -s /tmp/h.txt ] && kill -0 $HP 2>/dev/null && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
if ! kill -0 $HP 2>/dev/null; then wait $HP; echo "HWP-HOSTILE rc=$? $(tail -1 /tmp/h.txt)"; fi
echo "HWP-HOSTILE-SAYS $(tail -1 /tmp/h.txt)"
sluicectl --api /run/s/api.sock stats bad > /tmp/stats.txt 2>&1
echo "HWP-API rc=$?"
sed 's/^/HWP-STATS /' /tmp/stats.txt
sluice-blkbench --socket /run/s/good.sock --rw verify --bs 4096 --qd 8 > /tmp/good.txt 2>&1
echo "HWP-GOOD rc=$? $(tail -1 /tmp/good.txt)"
kill $HP 2>/dev/null
grep -i "poison\|fault" /tmp/sluiced.log | sed 's/^/HWP-LOG /'
kill -TERM $SPID
wait $SPID
echo "HWP-SLUICED-EXIT $?"
