#!/usr/bin/env python3
"""A FUSE file system with one file whose reads and writes never complete:
the backing file of a disk on storage that hangs (a dead NFS server, a stuck
FUSE daemon). It speaks the kernel's FUSE protocol on /dev/fuse directly
(no libfuse), answers what opening and stat'ing the file needs, and keeps
every READ and WRITE unanswered until it exits.

  hung_fuse.py MOUNTPOINT SIZE_BYTES

Prints "ready" once mounted; serves until killed (then the kernel fails the
outstanding requests with ENOTCONN). Exit 77: FUSE cannot be mounted here.
"""
import ctypes
import os
import struct
import sys

FUSE_LOOKUP, FUSE_FORGET, FUSE_GETATTR, FUSE_OPEN, FUSE_READ, FUSE_WRITE = 1, 2, 3, 14, 15, 16
FUSE_STATFS, FUSE_RELEASE, FUSE_FLUSH, FUSE_INIT, FUSE_INTERRUPT, FUSE_BATCH_FORGET = 17, 18, 25, 26, 36, 42
FILE_NAME = b"disk.img"
FILE_INO = 2


def attr(ino, mode, size):
    # struct fuse_attr: ino size blocks atime mtime ctime (u64), atimensec
    # mtimensec ctimensec mode nlink uid gid rdev blksize flags (u32)
    return struct.pack("<6Q10I", ino, size, (size + 511) // 512, 0, 0, 0, 0, 0, 0, mode, 1, 0, 0, 0, 4096, 0)


def main():
    mnt, size = sys.argv[1], int(sys.argv[2])
    try:
        fd = os.open("/dev/fuse", os.O_RDWR)
    except OSError as e:
        print(f"no /dev/fuse: {e}")
        sys.exit(77)
    libc = ctypes.CDLL(None, use_errno=True)
    opts = f"fd={fd},rootmode=40000,user_id=0,group_id=0,allow_other".encode()
    if libc.mount(b"sluice-hung", mnt.encode(), b"fuse", 0, opts) != 0:
        print(f"cannot mount FUSE: {os.strerror(ctypes.get_errno())}")
        sys.exit(77)
    print("ready", flush=True)
    held = []  # unanswered READ/WRITE requests: never answered
    while True:
        try:
            req = os.read(fd, (1 << 20) + 4096)
        except OSError:
            break  # unmounted
        length, opcode, unique, nodeid = struct.unpack_from("<IIQQ", req)
        body = req[40:length]

        def reply(payload=b"", error=0):
            os.write(fd, struct.pack("<IiQ", 16 + len(payload), error, unique) + payload)

        if opcode == FUSE_INIT:
            major, minor = struct.unpack_from("<II", body)
            # fuse_init_out (7.31): major minor max_readahead flags
            # max_background congestion_threshold max_write time_gran
            # max_pages map_alignment flags2 unused[7]
            reply(struct.pack("<IIIIHHIIHHI7I", 7, 31, 0, 0, 16, 12, 1 << 20, 1, 256, 0, 0, *([0] * 7)))
        elif opcode == FUSE_LOOKUP:
            if body.rstrip(b"\0") == FILE_NAME and nodeid == 1:
                # fuse_entry_out: nodeid generation entry_valid attr_valid
                # entry_valid_nsec attr_valid_nsec, then the attributes
                reply(struct.pack("<4Q2I", FILE_INO, 0, 3600, 3600, 0, 0) + attr(FILE_INO, 0o100600, size))
            else:
                reply(error=-2)  # ENOENT
        elif opcode == FUSE_GETATTR:
            a = attr(1, 0o40755, 0) if nodeid == 1 else attr(FILE_INO, 0o100600, size)
            reply(struct.pack("<QII", 3600, 0, 0) + a)
        elif opcode == FUSE_OPEN:
            reply(struct.pack("<QII", 1, 0, 0))
        elif opcode == FUSE_STATFS:
            # fuse_kstatfs: blocks bfree bavail files ffree (u64), bsize
            # namelen frsize padding spare[6] (u32)
            reply(struct.pack("<5Q4I6I", size // 4096, 0, 0, 1, 0, 4096, 255, 4096, 0, *([0] * 6)))
        elif opcode in (FUSE_READ, FUSE_WRITE):
            held.append(unique)  # the hang
        elif opcode in (FUSE_FORGET, FUSE_BATCH_FORGET, FUSE_INTERRUPT):
            pass  # no answer expected (an interrupted request stays held)
        elif opcode in (FUSE_RELEASE, FUSE_FLUSH):
            reply()
        else:
            reply(error=-38)  # ENOSYS


if __name__ == "__main__":
    main()
