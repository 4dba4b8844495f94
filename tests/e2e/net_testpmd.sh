#!/usr/bin/env bash
# virtio-net ports against DPDK's virtio-user PMD (dpdk-testpmd), with known
# frames: testpmd reads them from a pcap file (net_pcap), sends them through
# virtio-user into sluiced, and writes what comes back to another pcap file,
# which must hold the same frames in the same order, byte for byte.
#   reflect port: in_order=1 mrg_rxbuf=1 / in_order=1 mrg_rxbuf=0 /
#                 in_order=0 mrg_rxbuf=1, then queues=2 (each pair's frames
#                 come back on that pair)
#   switch: two testpmd front-ends on two ports of one switch send to each
#           other at once (both ways through the switch)
#   uplink: a DPDK net_tap uplink on a switch with one port: frames injected
#           into the tap reach the port's testpmd, the port's frames reach the
#           tap (when sluiced was built with DPDK)
# Every run is also checked against the ports' counters.
#
# Usage: net_testpmd.sh SLUICED SLUICECTL WORKDIR     (exit 77: skipped)
set -uo pipefail
SLUICED=$1 CTL=$2 WORK=$3
HERE=$(cd "$(dirname "$0")" && pwd)
command -v dpdk-testpmd >/dev/null || { echo "SKIP: dpdk-testpmd not installed (dpdk-dev)"; exit 77; }
[ "$(id -u)" -eq 0 ] || { echo "SKIP: needs root (hugepages)"; exit 77; }
mkdir -p "$WORK"
D=$(mktemp -d "$WORK/net.XXXXXX")
N=500
fail=0
note() { echo "net_testpmd: $*"; }
bad() { echo "net_testpmd: FAIL: $*"; fail=1; }

[ "$(cat /proc/sys/vm/nr_hugepages)" -ge 1024 ] || echo 1024 > /proc/sys/vm/nr_hugepages
mkdir -p "$D/huge"
mount -t hugetlbfs -o pagesize=2M nodev "$D/huge" || { echo "SKIP: cannot mount hugetlbfs"; exit 77; }
SPID=""
cleanup() {
  pkill -INT -f "file-prefix=sltp" 2>/dev/null
  [ -n "$SPID" ] && kill "$SPID" 2>/dev/null && wait "$SPID" 2>/dev/null
  umount "$D/huge" 2>/dev/null
  rm -rf "$D"
}
trap cleanup EXIT

CPUS=$(nproc)
WCPU=$((CPUS > 1 ? 1 : 0))
"$SLUICED" --api "$D/api.sock" --cpus $WCPU --log-level warn \
  --net "id=r,path=$D/r.sock,switch=refl,mode=reflect" \
  --net "id=r2,path=$D/r2.sock,switch=refl2,mode=reflect,queues=2" \
  --net "id=a,path=$D/a.sock,switch=sw0,mac=52:54:00:30:00:0a" \
  --net "id=b,path=$D/b.sock,switch=sw0,mac=52:54:00:30:00:0b" \
  --net "id=u,path=$D/u.sock,switch=up,mac=52:54:00:40:00:01" > "$D/sluiced.log" 2>&1 &
SPID=$!
for _ in $(seq 50); do [ -S "$D/api.sock" ] && break; sleep 0.1; done
[ -S "$D/api.sock" ] || { cat "$D/sluiced.log"; echo "FAIL: sluiced did not start"; exit 1; }

ctl() { "$CTL" --api "$D/api.sock" "$@"; }
counter() {  # counter PORT FIELD
  ctl --json stats "$1" | python3 -c "import json,sys; print(json.load(sys.stdin)['$2'])"
}
gen() { python3 "$HERE/net_pcap.py" gen "$@"; }
cmpcap() { python3 "$HERE/net_pcap.py" cmp "$@"; }

# testpmd PREFIX SECONDS "APP ARGS" VDEVS... -- runs a front-end that starts forwarding
# after 3 s (both ends connected by then), forwards io for SECONDS, and quits.
# A full ring is retried, not dropped: the pcap port reads faster than a
# back-end woken from sleep drains the first burst. Rings of 1024 hold every
# frame of a run, so a front-end busy retrying a transmit never finds its
# receive ring overflowed (a back-end drops, counted, when it is).
testpmd() {
  local prefix=$1 secs=$2 app=$3; shift 3
  ( sleep 3; echo "set fwd io retry"; echo "set burst tx delay 100 retry 100000"; echo start; sleep "$secs"
    echo stop; echo quit ) |
    timeout -s INT $((secs + 30)) dpdk-testpmd --lcores '0@0,1@0' --no-pci --file-prefix="sltp-$prefix" \
      --huge-dir "$D/huge" --single-file-segments "$@" -- -i --no-flush-rx $app \
      --nb-cores=1 --total-num-mbufs=8192 > "$D/testpmd-$prefix.log" 2>&1
}

gen "$D/in.pcap" $N 52:54:00:10:00:01 52:54:00:10:00:02 1
for ring in "in_order=1,mrg_rxbuf=1" "in_order=1,mrg_rxbuf=0" "in_order=0,mrg_rxbuf=1"; do
  before=$(counter r tx_packets)
  rm -f "$D/out.pcap"
  testpmd r 3 "" --vdev "net_pcap0,rx_pcap=$D/in.pcap,tx_pcap=$D/out.pcap" \
    --vdev "net_virtio_user0,path=$D/r.sock,queues=1,queue_size=1024,$ring"
  if cmpcap "$D/in.pcap" "$D/out.pcap" swap; then note "reflect $ring: $N frames back intact"; else bad "reflect $ring"; tail -20 "$D/testpmd-r.log"; fi
  after=$(counter r tx_packets)
  [ $((after - before)) -eq $N ] || bad "reflect $ring: port counted $((after - before)) frames, sent $N"
done

# Two queue pairs: each pair's frames come back on that pair.
gen "$D/q0.pcap" $N 52:54:00:20:00:01 52:54:00:20:00:02 2
gen "$D/q1.pcap" $N 52:54:00:21:00:01 52:54:00:21:00:02 3
rm -f "$D/o0.pcap" "$D/o1.pcap"
testpmd r2 3 "--rxq=2 --txq=2" --vdev "net_pcap0,rx_pcap=$D/q0.pcap,rx_pcap=$D/q1.pcap,tx_pcap=$D/o0.pcap,tx_pcap=$D/o1.pcap" \
  --vdev "net_virtio_user0,path=$D/r2.sock,queues=2,queue_size=1024"
cmpcap "$D/q0.pcap" "$D/o0.pcap" swap && cmpcap "$D/q1.pcap" "$D/o1.pcap" swap && note "queues=2: both pairs intact" ||
  { bad "queues=2"; tail -30 "$D/testpmd-r2.log"; }
[ "$(counter r2 rx_packets)" -eq $((2 * N)) ] || bad "queues=2: port r2 delivered $(counter r2 rx_packets), want $((2 * N))"

# Both ways through the switch at once.
gen "$D/ina.pcap" $N 52:54:00:30:00:0a 52:54:00:30:00:0b 4
gen "$D/inb.pcap" $N 52:54:00:30:00:0b 52:54:00:30:00:0a 5
rm -f "$D/outa.pcap" "$D/outb.pcap"
testpmd a 4 "" --vdev "net_pcap0,rx_pcap=$D/ina.pcap,tx_pcap=$D/outa.pcap" --vdev "net_virtio_user0,path=$D/a.sock,queue_size=1024" &
PA=$!
testpmd b 4 "" --vdev "net_pcap0,rx_pcap=$D/inb.pcap,tx_pcap=$D/outb.pcap" --vdev "net_virtio_user0,path=$D/b.sock,queue_size=1024" &
PB=$!
wait $PA $PB
cmpcap "$D/ina.pcap" "$D/outb.pcap" && note "switch a->b: $N frames intact" || bad "switch a->b"
cmpcap "$D/inb.pcap" "$D/outa.pcap" && note "switch b->a: $N frames intact" || bad "switch b->a"
for p in a b; do
  for f in tx_packets rx_packets; do
    v=$(counter $p $f)
    [ "$v" -eq $N ] || bad "port $p $f = $v, want $N"
  done
done
ctl switch macs sw0
ctl switch list | head -5

# Port security: b's front-end sends with a's MAC (b is locked to its own):
# every frame refused and counted at b, none reaches a.
drops() {
  ctl --json stats "$1" | python3 -c "import json,sys; print(json.load(sys.stdin)['drops']['$2'])"
}
rx_a=$(counter a rx_packets)
rm -f "$D/outs.pcap"
testpmd b 3 "" --vdev "net_pcap0,rx_pcap=$D/ina.pcap,tx_pcap=$D/outs.pcap" --vdev "net_virtio_user0,path=$D/b.sock,queue_size=1024"
spoofed=$(drops b src_mac_locked)
if [ "$spoofed" -eq $N ] && [ "$(counter a rx_packets)" -eq "$rx_a" ]; then
  note "mac lock: $N frames with another port's source MAC refused (src_mac_locked), none delivered"
else
  bad "mac lock: b counted $spoofed src_mac_locked drops (want $N); a received $(($(counter a rx_packets) - rx_a))"
fi

# A DPDK uplink (net_tap) on switch "up", added at run time through the API.
TAP=sltap$$
if ctl add-uplink "switch=up,dpdk=net_tap_t$$,iface=$TAP" > "$D/uplink.txt" 2>&1; then
  sysctl -qw "net.ipv6.conf.$TAP.disable_ipv6=1" 2>/dev/null
  ip link set "$TAP" up
  gen "$D/toup.pcap" $N 52:54:00:40:00:01 52:54:00:40:00:02 6
  gen "$D/fromup.pcap" $N 52:54:00:40:00:02 52:54:00:40:00:01 7
  python3 "$HERE/net_pcap.py" sniff "$TAP" "$D/tapgot.pcap" 9 &
  SN=$!
  rm -f "$D/outu.pcap"
  testpmd u 5 "" --vdev "net_pcap0,rx_pcap=$D/toup.pcap,tx_pcap=$D/outu.pcap" \
    --vdev "net_virtio_user0,path=$D/u.sock,queue_size=1024" &
  PU=$!
  sleep 4.5
  python3 "$HERE/net_pcap.py" inject "$TAP" "$D/fromup.pcap"
  wait $PU $SN
  cmpcap "$D/toup.pcap" "$D/tapgot.pcap" && note "uplink: port -> tap, $N frames intact" || bad "uplink: port -> tap"
  cmpcap "$D/fromup.pcap" "$D/outu.pcap" && note "uplink: tap -> port, $N frames intact" || bad "uplink: tap -> port"
  ctl switch list | grep -A3 "switch up"
  ctl remove-uplink "net_tap_t$$" || bad "remove-uplink"
  ip link show "$TAP" >/dev/null 2>&1 && bad "the tap interface outlived its uplink"
elif grep -q "without DPDK" "$D/uplink.txt"; then
  note "uplink: SKIPPED (sluiced built without DPDK)"
else
  cat "$D/uplink.txt"; bad "add-uplink"
fi

# The daemon kept serving throughout and reports no refused messages.
kill -0 $SPID || bad "sluiced died"
[ $fail -eq 0 ] && note "all passed"
exit $fail
