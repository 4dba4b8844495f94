#!/usr/bin/env python3
"""Known frames for the testpmd end-to-end test, as pcap files.

  net_pcap.py gen FILE N SRC_MAC DST_MAC SEED   N frames, 60..1514 bytes, each
                                                with its index and a pattern
  net_pcap.py cmp SENT GOT [swap]               GOT must hold SENT's frames in
                                                order (with MACs swapped: swap)
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


if __name__ == "__main__":
    if sys.argv[1] == "gen":
        gen(sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5], int(sys.argv[6]))
    elif sys.argv[1] == "cmp":
        sys.exit(cmp(sys.argv[2], sys.argv[3], len(sys.argv) > 4 and sys.argv[4] == "swap"))
