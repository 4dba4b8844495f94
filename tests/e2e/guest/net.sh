#!/bin/sh
# Guest side of the two-guest switch test. Kernel args: sluice.ip=A.B.C.D
# sluice.peer=A.B.C.D sluice.role=send|recv. Both guests ping each other at a
# modest rate (nothing may be lost), then the sender streams 8 MiB over TCP
# and both print the checksum.
arg() { sed -n "s/.*sluice\.$1=\([^ ]*\).*/\1/p" /proc/cmdline; }
IP=$(arg ip) PEER=$(arg peer) ROLE=$(arg role)
modprobe virtio_pci && modprobe virtio_net || { echo "NET-FAIL: modules"; exit 1; }
i=0
while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
ip link set lo up
ip link set eth0 up || { echo "NET-FAIL: no eth0"; exit 1; }
ip addr add "$IP/24" dev eth0
echo "NET-INFO: mac=$(cat /sys/class/net/eth0/address) mtu=$(cat /sys/class/net/eth0/mtu)"
# Wait for the peer (it boots at its own pace), then measure.
i=0
until ping -c 1 -W 1 "$PEER" >/dev/null 2>&1; do
  i=$((i + 1)); [ $i -ge 120 ] && { echo "NET-FAIL: peer never answered"; exit 1; }
done
echo "NET-PEER-UP after $i tries"
ping -c 100 -i 0.05 -s 1200 "$PEER" > /tmp/ping.txt 2>&1
sed -n 's/^\([0-9]*\) packets transmitted, \([0-9]*\) packets received.*/NET-PING tx=\1 rx=\2/p' /tmp/ping.txt
if [ "$ROLE" = recv ]; then
  nc -l -p 5001 > /tmp/got
  echo "NET-RECV-MD5 $(md5sum < /tmp/got | cut -d' ' -f1) bytes=$(wc -c < /tmp/got)"
else
  dd if=/dev/urandom of=/tmp/pat bs=1M count=8 2>/dev/null
  echo "NET-SEND-MD5 $(md5sum < /tmp/pat | cut -d' ' -f1)"
  i=0
  until nc -w 5 "$PEER" 5001 < /tmp/pat; do
    i=$((i + 1)); [ $i -ge 30 ] && { echo "NET-FAIL: cannot connect"; exit 1; }
    sleep 1
  done
fi
# Stay up until the peer is done too (its pings must still be answered).
sleep 5
echo "NET-DONE"
