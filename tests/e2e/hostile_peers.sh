#!/bin/bash
# Hostile front-ends against one sluiced while another tenant's I/O goes on.
# One worker serves both exports, so the good tenant shares the worker with
# whatever the hostile one does. For each case of sluice-hostile:
#   - the good tenant (sluice-blkbench --rw verify) writes and reads back a
#     pattern the whole time: no error, no mismatch, no request slower than 1 s;
#   - the hostile export ends up as specified (its queue broken naming the
#     cause, requests failed, or the message refused), seen through the API;
#   - the API answers throughout.
# At the end: sluiced's fd count back where it was, RSS growth bounded, and
# SIGTERM ends it cleanly within 5 s.
# Usage: hostile_peers.sh SLUICED SLUICECTL BLKBENCH HOSTILE WORKDIR
set -uo pipefail
SLUICED=$1 CTL=$2 BENCH=$3 HOSTILE=$4 WORK=$5
dir=$WORK/hostile
rm -rf "$dir"; mkdir -p "$dir"
api=$dir/api.sock
fail=0
note() { echo "hostile_peers: $*"; }
bad() { note "FAIL: $*"; fail=1; }

"$SLUICED" --api "$api" --workers 1 --stop-timeout 500 \
  --blk "id=good,path=$dir/good.sock,file=$dir/good.img,size=32M" \
  --blk "id=bad,path=$dir/bad.sock,file=$dir/bad.img,size=32M" > "$dir/sluiced.log" 2>&1 &
SPID=$!
for _ in $(seq 1 50); do [ -S "$api" ] && [ -S "$dir/bad.sock" ] && break; sleep 0.1; done
ctl() { timeout 5 "$CTL" --api "$api" "$@"; }
fds() { ls /proc/$SPID/fd | wc -l; }
rss_kb() { awk '/^VmRSS/ {print $2}' /proc/$SPID/status; }
ctl list > /dev/null || { note "sluiced did not start"; cat "$dir/sluiced.log"; exit 1; }
# A first session on each export so that lazily made state (worker rings,
# mappings of the image) is in the baseline.
"$BENCH" --socket "$dir/good.sock" --rw verify --bs 4096 --qd 8 > /dev/null 2>&1
fd0=$(fds) rss0=$(rss_kb)

# case|what the API must show for the bad export meanwhile (grep -E on
# `sluicectl stats bad` and `sluicectl --json list`)
cases=(
  "shrink-memory|broken: guest-memory-fault at gpa 0x100"
  "shrink-buffers|requests failed on guest memory that faulted|poisoned guest page: gpa 0x8000000"
  "guest-memfd-private|requests failed on guest memory that faulted|poisoned guest page: gpa 0x8000000, 4096 bytes \\(no-backing-page\\)"
  "saturate-call|^  0 +yes"
  "shrink-inflight|broken: guest-memory-fault"
  "inflight-while-running|\"refused_messages\":[1-9]"
  "huge-memory|\"id\":\"bad\"[^}]*\"connected\":true"
)
for c in "${cases[@]}"; do
  name=${c%%|*} expect=${c#*|}
  "$HOSTILE" --socket "$dir/bad.sock" --case "$name" --hold 3 > "$dir/hostile-$name.txt" 2>&1 &
  HP=$!
  sleep 0.5
  # The good tenant while the hostile one holds its connection.
  if ! "$BENCH" --socket "$dir/good.sock" --rw verify --bs 4096 --qd 8 > "$dir/good-$name.txt" 2>&1; then
    bad "$name: the good tenant saw errors: $(tail -1 "$dir/good-$name.txt")"
  fi
  max_us=$(sed -n 's/.* max \([0-9]*\),.*/\1/p' "$dir/good-$name.txt" | sort -n | tail -1)
  [ -n "$max_us" ] && [ "$max_us" -lt 1000000 ] || bad "$name: a good request took ${max_us:-?} us"
  { ctl stats bad && ctl --json list; } > "$dir/stats-$name.txt" 2>&1 || bad "$name: the API did not answer"
  wait $HP; hrc=$?
  if [ $hrc -eq 77 ]; then
    note "$name: skipped ($(cat "$dir/hostile-$name.txt"))"
    continue
  fi
  [ $hrc -eq 0 ] || bad "$name: the front-end saw: $(cat "$dir/hostile-$name.txt")"
  IFS='|' read -ra pats <<< "$expect"
  for p in "${pats[@]}"; do
    grep -qE -- "$p" "$dir/stats-$name.txt" || bad "$name: API stats lack /$p/: $(cat "$dir/stats-$name.txt")"
  done
  kill -0 $SPID 2>/dev/null || { bad "$name: sluiced died"; break; }
  note "$name: ok ($(tail -1 "$dir/hostile-$name.txt" | sed 's/^hostile [^:]*: //'); good tenant max latency ${max_us} us)"
done

# A front-end that reconnects the moment it closed is served, not taken for
# a second front-end (its previous close may not have been read yet).
for i in $(seq 1 10); do
  "$BENCH" --socket "$dir/good.sock" --rw read --bs 4096 --qd 4 --seconds 0.05 > /dev/null 2>&1 ||
    bad "back-to-back session $i was refused"
done
grep -q "refusing a second front-end" "$dir/sluiced.log" && bad "a reconnecting front-end was refused as a second one"

# A front-end that sends half a message and stalls holds nothing but its own
# session: the control thread does not wait for the rest (the API answers at
# once, a new tenant's handshake goes through), the message is assembled when
# the rest comes, and pipelined requests are answered in order.
python3 - "$dir/bad.sock" "$CTL" "$api" <<'PY' > "$dir/split.txt" 2>&1 &
import socket, struct, subprocess, sys, time
path, ctl, api = sys.argv[1:4]
GET_FEATURES, GET_PROTOCOL_FEATURES = 1, 15
hdr = lambda req: struct.pack("<III", req, 1, 0)
s = socket.socket(socket.AF_UNIX); s.connect(path)
s.sendall(hdr(GET_FEATURES)[:5])
worst = 0.0
for _ in range(6):  # 1.8 s with five bytes of a header outstanding
    t0 = time.time()
    subprocess.run([ctl, "--api", api, "list"], check=True, stdout=subprocess.DEVNULL, timeout=5)
    worst = max(worst, time.time() - t0)
    time.sleep(0.3)
s.sendall(hdr(GET_FEATURES)[5:])
s.settimeout(5)
def replies(n):
    buf, out = b"", []
    while len(out) < n:
        buf += s.recv(4096)
        while len(buf) >= 12:
            req, flags, size = struct.unpack("<III", buf[:12])
            if len(buf) < 12 + size: break
            out.append((req, flags)); buf = buf[12 + size:]
    return out
r = replies(1)
assert r[0] == (GET_FEATURES, 5), f"split message answered with {r}"
s.sendall(hdr(GET_FEATURES) + hdr(GET_PROTOCOL_FEATURES) + hdr(GET_FEATURES))
r = [q for q, _ in replies(3)]
assert r == [GET_FEATURES, GET_PROTOCOL_FEATURES, GET_FEATURES], f"pipelined answers {r}"
assert worst < 0.5, f"the API took {worst:.2f} s while a message was half sent"
print(f"a header split over 1.8 s assembled; API at most {worst*1000:.0f} ms meanwhile; 3 pipelined requests answered in order")
PY
SPLIT=$!
sleep 0.3
"$BENCH" --socket "$dir/good.sock" --rw verify --bs 4096 --qd 8 --seconds 1 > "$dir/good-split.txt" 2>&1 ||
  bad "split message: the good tenant's new session failed: $(tail -1 "$dir/good-split.txt")"
if wait $SPLIT; then note "split message: ok ($(tail -1 "$dir/split.txt"))"; else bad "split message: $(cat "$dir/split.txt")"; fi

# Storage that hangs: a disk whose backing file lies on a FUSE file system
# that never answers a read (a dead NFS server, a stuck FUSE daemon). The
# front-end goes away with reads outstanding: stopping its queue waits the
# stop deadline (--stop-timeout 500), then abandons the queue and ends the
# session; the control thread, the API and the good tenant go on.
mkdir -p "$dir/fuse"
python3 "$(dirname "$0")/hung_fuse.py" "$dir/fuse" 33554432 > "$dir/fuse.txt" 2>&1 &
FPID=$!
for _ in $(seq 1 50); do grep -q ready "$dir/fuse.txt" 2>/dev/null && break; kill -0 $FPID 2>/dev/null || break; sleep 0.1; done
if ! grep -q ready "$dir/fuse.txt"; then
  wait $FPID; note "hung storage: skipped ($(head -1 "$dir/fuse.txt"))"
else
  ctl add-blk "path=$dir/hung.sock,file=$dir/fuse/disk.img,direct=off" > /dev/null || bad "hung storage: add-blk failed"
  timeout -s KILL 2 "$BENCH" --socket "$dir/hung.sock" --rw read --bs 4096 --qd 4 --seconds 1 > /dev/null 2>&1
  sleep 1
  t0=$(date +%s%N)
  ctl --json list > "$dir/stats-hung.txt" || bad "hung storage: the API did not answer"
  api_ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  grep -qE '"id":"hung"[^}]*"abandoned_queues":1' "$dir/stats-hung.txt" ||
    bad "hung storage: no abandoned queue reported: $(cat "$dir/stats-hung.txt")"
  grep -q "abandoned" "$dir/sluiced.log" || bad "hung storage: no log line"
  "$BENCH" --socket "$dir/good.sock" --rw verify --bs 4096 --qd 8 --seconds 1 > "$dir/good-hung.txt" 2>&1 ||
    bad "hung storage: the good tenant saw errors: $(tail -1 "$dir/good-hung.txt")"
  kill $FPID; wait $FPID 2>/dev/null
  umount -l "$dir/fuse" 2>/dev/null
  ctl remove hung > /dev/null || bad "hung storage: the export could not be removed"
  note "hung storage: ok (queue abandoned after the stop deadline, session ended; API answered in ${api_ms} ms)"
fi

# fd exhaustion: a second sluiced at a low fd limit, and a client that holds
# connections until accept fails with EMFILE. The accept loop must back off
# (not spin: CPU and log lines bounded) and serve again once fds are free.
api2=$dir/api2.sock
prlimit --nofile=48:48 "$SLUICED" --api "$api2" --blk "id=lim,path=$dir/lim.sock,file=$dir/lim.img,size=8M" \
  > "$dir/sluiced-lim.log" 2>&1 &
LPID=$!
for _ in $(seq 1 50); do [ -S "$api2" ] && break; sleep 0.1; done
python3 - "$api2" "$LPID" "$dir/sluiced-lim.log" <<'PY' > "$dir/emfile.txt" 2>&1 || bad "fd exhaustion: $(cat "$dir/emfile.txt")"
import socket, sys, time
path, pid, log = sys.argv[1], sys.argv[2], sys.argv[3]
def cpu():
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / 100.0
held = []
for _ in range(80):  # more than the limit leaves free
    s = socket.socket(socket.AF_UNIX); s.connect(path); held.append(s)
time.sleep(0.5)
lines0, c0 = open(log).read().count("\n"), cpu()
time.sleep(2)
lines1, c1 = open(log).read().count("\n"), cpu()
busy = (c1 - c0) / 2
print(f"while out of fds: sluiced CPU {busy*100:.0f}%, {lines1 - lines0} log lines in 2 s")
for s in held: s.close()
time.sleep(0.5)
s = socket.socket(socket.AF_UNIX); s.connect(path)
s.sendall(b'{"jsonrpc":"2.0","id":1,"method":"list"}\n')
s.settimeout(5)
ans = s.recv(65536)
ok = busy < 0.3 and lines1 - lines0 < 10 and b'"result"' in ans
print("API answers again" if b'"result"' in ans else "API silent after the fds came back")
sys.exit(0 if ok else 1)
PY
note "fd exhaustion: $(tr '\n' ';' < "$dir/emfile.txt")"
"$BENCH" --socket "$dir/lim.sock" --rw verify --bs 4096 --qd 4 > /dev/null 2>&1 || bad "fd exhaustion: the export is not served afterwards"
kill -TERM $LPID; wait $LPID

if kill -0 $SPID 2>/dev/null; then
  sleep 0.5  # the last session's close is processed
  fd1=$(fds) rss1=$(rss_kb)
  note "sluiced fds $fd0 -> $fd1, RSS ${rss0} -> ${rss1} KiB"
  [ "$fd1" -le "$fd0" ] || bad "fd leak: $fd0 -> $fd1"
  [ $((rss1 - rss0)) -lt 65536 ] || bad "RSS grew by more than 64 MiB"
  kill -TERM $SPID
  for _ in $(seq 1 50); do kill -0 $SPID 2>/dev/null || break; sleep 0.1; done
  if kill -0 $SPID 2>/dev/null; then bad "SIGTERM did not end sluiced within 5 s"; kill -9 $SPID; fi
  wait $SPID; rc=$?
  [ $rc -eq 0 ] || bad "sluiced exited with $rc"
fi
[ $fail -eq 0 ] || { note "sluiced log:"; tail -40 "$dir/sluiced.log"; exit 1; }
note "all cases contained"
