#!/usr/bin/env python3
"""Known frames for the testpmd end-to-end test, as pcap files.

  net_pcap.py gen FILE N SRC_MAC DST_MAC SEED   N frames, 60..1514 bytes, each
                                                with its index and a pattern
  net_pcap.py cmp SENT GOT [swap]               GOT must hold SENT's frames in
                                                order (with MACs swapped: swap)
  net_pcap.py sniff IFNAME OUT SECONDS          capture 0x88b5 frames on a tap
  net_pcap.py inject IFNAME PCAP                send a pcap's frames out of it
"""
import struct
import sys


def mac(s):
    return bytes(int(x, 16) for x in s.split(":"))


def write(path, frames):
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        for i, fr in enumerate(frames):
            f.write(struct.pack("<IIII", i, 0, len(fr), len(fr)))
            f.write(fr)


def read(path):
    data = open(path, "rb").read()
    if len(data) < 24:
        return []
    magic = struct.unpack("<I", data[:4])[0]
    endian = "<" if magic in (0xA1B2C3D4, 0xA1B23C4D) else ">"
    off, out = 24, []
    while off + 16 <= len(data):
        _, _, incl, _ = struct.unpack(endian + "IIII", data[off:off + 16])
        out.append(data[off + 16:off + 16 + incl])
        off += 16 + incl
    return out


def gen(path, n, src, dst, seed):
    frames = []
    for i in range(n):
        size = 60 + (i * 97 + seed * 13) % (1514 - 60 + 1)
        body = struct.pack(">IH", i, seed) + bytes((i * 7 + j + seed) & 0xFF for j in range(size - 14 - 6))
        frames.append(mac(dst) + mac(src) + b"\x88\xb5" + body)
    write(path, frames)


def cmp(sent_path, got_path, swap):
    sent, got = read(sent_path), read(got_path)
    # Only the test's frames (EtherType 0x88b5): a tap also carries the
    # host kernel's own traffic.
    got = [f for f in got if f[12:14] == b"\x88\xb5"]
    if swap:
        sent = [f[6:12] + f[0:6] + f[12:] for f in sent]
    if len(got) != len(sent):
        print(f"{got_path}: {len(got)} frames, expected {len(sent)}")
        return 1
    for i, (a, b) in enumerate(zip(sent, got)):
        if a != b:
            print(f"{got_path}: frame {i} differs ({len(b)} bytes, expected {len(a)})")
            return 1
    print(f"{got_path}: {len(got)} frames intact ({sum(len(f) for f in got)} bytes)")
    return 0




def sniff(ifname, out_path, seconds):
    """Frames of EtherType 0x88b5 arriving at ifname (from the far side of a
    tap: DPDK's writes), for `seconds`, into a pcap file."""
    import socket
    import time
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x88B5))
    # Room for a whole burst: DPDK writes faster than Python reads.
    try:
        s.setsockopt(socket.SOL_SOCKET, 33, 16 << 20)  # SO_RCVBUFFORCE (root)
    except OSError:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 << 20)
    s.bind((ifname, 0))
    s.settimeout(0.2)
    frames, end = [], time.time() + seconds
    while time.time() < end:
        try:
            data, addr = s.recvfrom(65535)
        except socket.timeout:
            continue
        if addr[2] == socket.PACKET_OUTGOING:
            continue
        frames.append(data)
    write(out_path, frames)


def inject(ifname, pcap_path):
    """Sends a pcap file's frames out of ifname (into the tap's DPDK side)."""
    import socket
    import time
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    s.bind((ifname, 0))
    for i, f in enumerate(read(pcap_path)):
        s.send(f)
        if i % 32 == 31:
            time.sleep(0.002)


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "gen":
        gen(sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5], int(sys.argv[6]))
    elif cmd == "cmp":
        sys.exit(cmp(sys.argv[2], sys.argv[3], len(sys.argv) > 4 and sys.argv[4] == "swap"))
    elif cmd == "sniff":
        sniff(sys.argv[2], sys.argv[3], float(sys.argv[4]))
    elif cmd == "inject":
        inject(sys.argv[2], sys.argv[3])
    else:
        sys.exit("unknown command " + cmd)
