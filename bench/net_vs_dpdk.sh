#!/usr/bin/env bash
# Sluice's virtio-net back-end against DPDK's vhost PMD, one run, same
# front-end: dpdk-testpmd with net_virtio_user. Back-ends in turn, alternating
# (A B A B ...) within every configuration:
#   txonly   front-end txonly  -> back-end sink   (Sluice mode=sink,    DPDK rxonly)
#   rxonly   back-end source   -> front-end rxonly (Sluice mode=source, DPDK txonly)
#   loopback front-end mac fwd, `start tx_first 32` (DPDK DTS "vhost/virtio-user
#            loopback") <-> back-end reflect (Sluice mode=reflect, DPDK macswap)
# The figure is the front-end's packet rate (txonly: Tx-pps, the frames the
# back-end took; otherwise Rx-pps) over SECONDS after a warm-up. For Sluice
# the same seconds also give its worker's frames per poll (management API):
# near the burst size (32) the back-end is the limit; a few frames per poll
# means it spends most polls waiting for the front-end. And each back-end's
# own cost per frame: time in polls that moved frames over the frames
# (Sluice: its worker's busy time; DPDK: testpmd --record-core-cycles).
#
# CPUs: the back-end's polling thread on CPU 1 (sluiced --cpus 1; DPDK
# --lcores 0@0,1@1) and the front-end's forwarding lcore on CPU 0 (--lcores
# 0@1,1@0). Needs root (hugepages), dpdk-testpmd (package dpdk-dev) and a
# release build of sluiced.
#
# Usage: bench/net_vs_dpdk.sh [SLUICED] [options]
#   --rounds N       alternating rounds per configuration (default 3)
#   --seconds S      measured seconds per run (default 5)
#   --modes LIST     default "txonly rxonly loopback"
#   --sizes LIST     frame bytes, default "64 1518"
#   --rings LIST     virtio-user ring settings, default "inorder-mrg inorder plain-mrg plain"
#                    (inorder: in_order=1; mrg: mrg_rxbuf=1)
#   --out FILE       also write the table there (default build-release/net_vs_dpdk.txt)
set -uo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

SLUICED=build-release/control/sluiced
ROUNDS=3 SECONDS_=5 MODES="txonly rxonly loopback" SIZES="64 1518" RINGS="inorder-mrg inorder plain-mrg plain"
OUT=""
if [ $# -gt 0 ] && [ "${1#--}" = "$1" ]; then SLUICED=$1; shift; fi
while [ $# -gt 0 ]; do
  case $1 in
    --rounds) ROUNDS=$2; shift 2 ;;
    --seconds) SECONDS_=$2; shift 2 ;;
    --modes) MODES=$2; shift 2 ;;
    --sizes) SIZES=$2; shift 2 ;;
    --rings) RINGS=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
OUT=${OUT:-$(dirname "$SLUICED")/../net_vs_dpdk.txt}
command -v dpdk-testpmd >/dev/null || { echo "dpdk-testpmd not found (apt-get install dpdk-dev)" >&2; exit 1; }
[ -x "$SLUICED" ] || { echo "$SLUICED not built (scripts/run.sh builds build-release)" >&2; exit 1; }

WORK=$(mktemp -d /tmp/sluice-netbench.XXXXXX)
HUGE=$WORK/huge
mkdir -p "$HUGE"
[ "$(cat /proc/sys/vm/nr_hugepages)" -ge 1024 ] || echo 1024 > /proc/sys/vm/nr_hugepages
mount -t hugetlbfs -o pagesize=2M nodev "$HUGE" || { echo "cannot mount hugetlbfs" >&2; exit 1; }
cleanup() {
  pkill -INT -f "file-prefix=slb" 2>/dev/null
  [ -n "${BACK_PID:-}" ] && kill "$BACK_PID" 2>/dev/null
  sleep 1
  umount "$HUGE" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT

SOCK=$WORK/net.sock
API=$WORK/api.sock
SLUICECTL=$(dirname "$SLUICED")/sluicectl

# sample: "polls frames busy_ns" of Sluice's worker now, through the management API
# (frames: per port the larger of its tx and rx packets, so that a reflected
# frame counts once).
sample() {
  local w p
  w=$("$SLUICECTL" --api "$API" --json workers 2>/dev/null) || return 0
  p=$("$SLUICECTL" --api "$API" --json switch list 2>/dev/null) || return 0
  python3 -c 'import json,sys
w=json.loads(sys.argv[1]); s=json.loads(sys.argv[2])
c=[q["counters"] for x in s for q in x["ports"]]
print(sum(x["polls"] for x in w), sum(max(x["tx_packets"], x["rx_packets"]) for x in c),
      sum(x["busy_ns"] for x in w))' "$w" "$p"
}

# back_start IMPL MODE SIZE: starts a back-end listening on $SOCK.
back_start() {
  local impl=$1 mode=$2 size=$3
  rm -f "$SOCK"
  if [ "$impl" = sluice ]; then
    local m=sink extra=""
    [ "$mode" = rxonly ] && m=source && extra=",frame=$size"
    [ "$mode" = loopback ] && m=reflect
    "$SLUICED" --api "$API" --busy-time --cpus 1 --log-level warn \
      --net "id=bench,path=$SOCK,mtu=9000,mode=$m$extra" > "$WORK/back.log" 2>&1 &
  else
    local f=rxonly
    [ "$mode" = rxonly ] && f=txonly
    [ "$mode" = loopback ] && f=macswap
    dpdk-testpmd --lcores '0@0,1@1' --no-pci --file-prefix=slb-vh --huge-dir "$HUGE" \
      --vdev "net_vhost0,iface=$SOCK,queues=1" -- --forward-mode=$f --txpkts=$size \
      --record-core-cycles --stats-period 1 --auto-start --nb-cores=1 --total-num-mbufs=32768 > "$WORK/back.log" 2>&1 &
  fi
  BACK_PID=$!
  wait_socket "$SOCK" || { echo "back-end $impl did not create its socket:" >&2; cat "$WORK/back.log" >&2; return 1; }
}

back_stop() {
  kill -INT "$BACK_PID" 2>/dev/null
  for _ in $(seq 1 50); do kill -0 "$BACK_PID" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$BACK_PID" 2>/dev/null
  wait "$BACK_PID" 2>/dev/null
  BACK_PID=""
}

# front MODE SIZE RING -> prints Mpps
front() {
  local mode=$1 size=$2 ring=$3
  local io=0 mrg=0
  case $ring in *inorder*) io=1 ;; esac
  case $ring in *mrg*) mrg=1 ;; esac
  local fwd=txonly start=start field=Tx-pps
  [ "$mode" = rxonly ] && fwd=rxonly && field=Rx-pps
  [ "$mode" = loopback ] && fwd=mac && start="start tx_first 32" && field=Rx-pps
  local out
  rm -f "$WORK/cost"
  # The first sample is taken before the window opens (testpmd's rate is
  # over the time between two "show port stats"), so that the sampler's own
  # CPU time (sluicectl, python) is not charged to the measured seconds.
  out=$( ( sleep 3; echo "$start"; sleep 2
           [ "${SAMPLE:-0}" = 1 ] && sample > "$WORK/cost.0"
           echo "show port stats all"
           sleep "$SECONDS_"; echo "show port stats all"
           [ "${SAMPLE:-0}" = 1 ] && sample > "$WORK/cost.1"
           echo stop; echo quit ) | \
    timeout -s INT $((SECONDS_ + 20)) dpdk-testpmd --lcores '0@1,1@0' --no-pci --file-prefix=slb-vu --huge-dir "$HUGE" \
      --single-file-segments --vdev "net_virtio_user0,path=$SOCK,queues=1,in_order=$io,mrg_rxbuf=$mrg" -- \
      -i --forward-mode=$fwd --txpkts=$size --nb-cores=1 --total-num-mbufs=32768 2>&1)
  echo "$out" | grep -E "$field" | tail -1 | awk -v f="$field:" '{for(i=1;i<=NF;i++) if($i==f) {printf "%.3f\n", $(i+1)/1e6; exit}}'
  # Sluice's frames per poll and busy ns per frame over the measured seconds
  # (see the top of this file).
  if [ -s "$WORK/cost.0" ] && [ -s "$WORK/cost.1" ]; then
    read -r p0 f0 b0 < "$WORK/cost.0"; read -r p1 f1 b1 < "$WORK/cost.1"
    awk -v p=$((p1 - p0)) -v f=$((f1 - f0)) -v b=$((b1 - b0)) \
      'BEGIN{printf "%.1f %.1f\n", (p > 0 ? f / p : 0), (f > 0 ? b / f : 0)}' > "$WORK/cost"
  fi
  rm -f "$WORK/cost.0" "$WORK/cost.1"
}

printf "%-9s %-5s %-12s %10s %10s %8s %s\n" MODE SIZE RING "SLUICE" "DPDK" RATIO \
  "(Mpps, medians of $ROUNDS alternating rounds; per-round ratios; fpp: frames per poll of Sluice's worker; busy-ns/frame: Sluice/DPDK back-end time per frame in polls that moved frames; medians)" | tee "$OUT"
for mode in $MODES; do
  for size in $SIZES; do
    for ring in $RINGS; do
      s_all="" d_all="" r_all="" fpp_all="" sns_all="" dns_all=""
      for r in $(seq 1 "$ROUNDS"); do
        back_start sluice "$mode" "$size" || exit 1
        s=$(SAMPLE=1 front "$mode" "$size" "$ring"); back_stop
        read -r fpp sns < "$WORK/cost" 2>/dev/null || { fpp=0; sns=0; }
        fpp_all="$fpp_all $fpp" sns_all="$sns_all $sns"
        back_start dpdk "$mode" "$size" || exit 1
        d=$(front "$mode" "$size" "$ring"); back_stop
        # testpmd --record-core-cycles: "CPU cycles/packet=C (...) at M MHz Clock",
        # counted over bursts that moved packets.
        dns=$(grep -o 'CPU cycles/packet=[0-9.]* .* at [0-9]* MHz' "$WORK/back.log" | tail -1 |
              sed -E 's/CPU cycles\/packet=([0-9.]+) .* at ([0-9]+) MHz/\1 \2/' | awk '{printf "%.1f\n", ($2 > 0 ? $1 * 1000 / $2 : 0)}')
        dns_all="$dns_all ${dns:-0}"
        s=${s:-0} d=${d:-0}
        s_all="$s_all $s" d_all="$d_all $d" r_all="$r_all $(ratio "$s" "$d")"
      done
      sm=$(echo "$s_all" | median) dm=$(echo "$d_all" | median)
      printf "%-9s %-5s %-12s %10.2f %10.2f %7.2fx  s:[%s] d:[%s] r:[%s] fpp:%s busy-ns/frame:%s/%s\n" "$mode" "$size" "$ring" "$sm" "$dm" \
        "$(ratio "$sm" "$dm")" "${s_all# }" "${d_all# }" "$(echo "$r_all" | xargs -n1 printf '%.2f ' | sed 's/ $//')" \
        "$(echo "$fpp_all" | median)" "$(echo "$sns_all" | median)" "$(echo "$dns_all" | median)" | tee -a "$OUT"
    done
  done
done
echo "front-end: dpdk-testpmd net_virtio_user (forwarding lcore on CPU 0); back-ends polling on CPU 1; $(date -u +%F)" | tee -a "$OUT"
