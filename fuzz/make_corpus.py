#!/usr/bin/env python3
"""Writes the seed corpus of the three fuzz targets to fuzz/corpus/<target>/ (a few KB).

decode: one raw request per file (in-header first). dispatch: a sequence of framed requests
(see fuzz/src/lib.rs `records`) against the tree of fuzz/src/tree.rs, where the root is node 1
and later nodes are numbered in lookup order from 2; handles from 1. dax: op bytes for
fuzz_targets/dax.rs `step`. Run: python3 fuzz/make_corpus.py
"""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))

OP = dict(LOOKUP=1, FORGET=2, GETATTR=3, SETATTR=4, READLINK=5, SYMLINK=6, MKNOD=8, MKDIR=9,
          UNLINK=10, RMDIR=11, RENAME=12, LINK=13, OPEN=14, READ=15, WRITE=16, STATFS=17,
          RELEASE=18, FSYNC=20, GETXATTR=22, FLUSH=25, INIT=26, OPENDIR=27, READDIR=28,
          RELEASEDIR=29, GETLK=31, SETLK=32, SETLKW=33, ACCESS=34, CREATE=35, INTERRUPT=36,
          DESTROY=38, BATCH_FORGET=42, FALLOCATE=43, READDIRPLUS=44, RENAME2=45, LSEEK=46,
          COPY_FILE_RANGE=47, SETUPMAPPING=48, REMOVEMAPPING=49, SYNCFS=50, TMPFILE=51, STATX=52)


def req(op, nodeid=1, body=b"", unique=None, extlen=0, uid=0, gid=0):
    unique = unique if unique is not None else 100 + OP[op]
    hdr = struct.pack("<IIQQIIIHH", 40 + len(body), OP[op], unique, nodeid, uid, gid, 42, extlen, 0)
    return hdr + body


def init():
    return req("INIT", 0, struct.pack("<IIII", 7, 41, 1 << 17, 0xFFFFFFFF) + struct.pack("<I", 0xFFFFFFFF) + bytes(44))


def name(s):
    return s.encode() + b"\0"


def read_in(fh, off, size):
    return struct.pack("<QQIIQII", fh, off, size, 0, 0, 0, 0)


def write_in(fh, off, data):
    return struct.pack("<QQIIQII", fh, off, len(data), 0, 0, 0, 0) + data


def lk_in(fh, owner, start, end, typ):
    return struct.pack("<QQQQIIII", fh, owner, start, end, typ, 0, 0, 0)


def frame(request, shape=0, reply=16):
    """shape: bits 0-1 readable-1, bits 2-3 writable-1; reply buffer = reply * 256 bytes."""
    return struct.pack("<HBB", len(request), shape, reply) + request


def groups_ext(gids):
    payload = struct.pack("<I", len(gids)) + b"".join(struct.pack("<I", g) for g in gids)
    payload += bytes((-len(payload)) % 8)
    return struct.pack("<II", 8 + len(payload), 1) + payload


DECODE = {
    "init": init(),
    "init_old_minor": req("INIT", 0, struct.pack("<IIII", 7, 26, 0, 0)),
    "lookup": req("LOOKUP", 1, name("a")),
    "lookup_no_nul": req("LOOKUP", 1, b"abc"),
    "getattr_fh": req("GETATTR", 2, struct.pack("<IIQ", 1, 0, 1)),
    "setattr": req("SETATTR", 2, struct.pack("<IIQQQQQQIIIIIIII", 0x1F, 0, 1, 4096, 0, 1, 2, 3, 0, 0, 0, 0o644, 0, 0, 0, 0)),
    "open": req("OPEN", 2, struct.pack("<II", 2, 0)),
    "read": req("READ", 2, read_in(1, 0, 4096)),
    "write": req("WRITE", 2, write_in(1, 10, b"hello")),
    "write_short": req("WRITE", 2, struct.pack("<QQIIQII", 1, 0, 999, 0, 0, 0, 0)),
    "readdirplus": req("READDIRPLUS", 1, read_in(1, 0, 4096)),
    "create_groups": req("CREATE", 1, struct.pack("<IIII", 0o102, 0o644, 0o22, 0) + name("new") + bytes(4) + groups_ext([5, 6]), extlen=3),
    "rename2": req("RENAME2", 1, struct.pack("<QII", 1, 1, 0) + name("a") + name("b")),
    "symlink": req("SYMLINK", 1, name("s") + name("a")),
    "batch_forget": req("BATCH_FORGET", 0, struct.pack("<II", 2, 0) + struct.pack("<QQ", 2, 1) + struct.pack("<QQ", 3, 1)),
    "setupmapping": req("SETUPMAPPING", 2, struct.pack("<QQQQQ", 2**64 - 1, 0, 2 << 20, 3, 0)),
    "removemapping": req("REMOVEMAPPING", 0, struct.pack("<I", 2) + struct.pack("<QQ", 0, 2 << 20) + struct.pack("<QQ", 2 << 20, 2 << 20)),
    "setlk": req("SETLK", 2, lk_in(1, 7, 0, 99, 1)),
    "short_header": req("GETATTR", 1)[:20],
    "unknown_opcode": struct.pack("<IIQQIIIHH", 40, 9999, 1, 1, 0, 0, 0, 0, 0),
}

# Node ids: 2 = "a" after the first LOOKUP; handle 1 = the first OPEN/OPENDIR/CREATE.
DISPATCH = {
    "lookup_open_read": [req("LOOKUP", 1, name("a")), req("OPEN", 2, struct.pack("<II", 0, 0)),
                         req("READ", 2, read_in(1, 4000, 8192)), req("FLUSH", 2, struct.pack("<QIIQ", 1, 0, 0, 0)),
                         req("RELEASE", 2, struct.pack("<QIIQ", 1, 0, 0, 0)), req("FORGET", 2, struct.pack("<Q", 1))],
    "readdirplus": [req("OPENDIR", 1, struct.pack("<II", 0, 0)), req("READDIRPLUS", 1, read_in(1, 0, 4096)),
                    req("READDIR", 1, read_in(1, 2, 512)), req("RELEASEDIR", 1, struct.pack("<QIIQ", 1, 0, 0, 0))],
    "create_write_read": [req("CREATE", 1, struct.pack("<IIII", 0o102, 0o644, 0o22, 0) + name("n")),
                          req("WRITE", 2, write_in(1, 5, b"0123456789")),
                          req("SETATTR", 2, struct.pack("<IIQQQQQQIIIIIIII", 0x8 | 0x40, 0, 1, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)),
                          req("READ", 2, read_in(1, 0, 64)), req("LSEEK", 2, struct.pack("<QQII", 1, 0, 3, 0)),
                          req("FSYNC", 2, struct.pack("<QII", 1, 1, 0))],
    "namespace": [req("MKDIR", 1, struct.pack("<II", 0o755, 0o22) + name("x")),
                  req("SYMLINK", 2, name("s") + name("../a")),
                  req("RENAME", 1, struct.pack("<Q", 2) + name("a") + name("moved")),
                  req("LINK", 1, struct.pack("<Q", 3) + name("s2")), req("UNLINK", 1, name("s2")),
                  req("RMDIR", 1, name("x")), req("MKNOD", 1, struct.pack("<IIII", 0o10644, 0, 0o22, 0) + name("f"))],
    "symlinks_and_fifo": [req("LOOKUP", 1, name("l")), req("READLINK", 2), req("LOOKUP", 1, name("up")),
                          req("LOOKUP", 1, name("p")), req("OPEN", 4, struct.pack("<II", 2, 0)),
                          req("LOOKUP", 1, name("..")), req("STATFS", 1)],
    "dir_b": [req("LOOKUP", 1, name("d")), req("LOOKUP", 2, name("b")), req("OPEN", 3, struct.pack("<II", 2, 0)),
              req("COPY_FILE_RANGE", 3, struct.pack("<QQQQQQQ", 1, 0, 3, 1, 50, 40, 0)),
              req("FALLOCATE", 3, struct.pack("<QQQII", 1, 0, 8192, 0, 0)), req("READ", 3, read_in(1, 0, 200), 0),
              req("STATX", 3, struct.pack("<IIQII", 1, 0, 1, 0, 0x7FF))],
    "locks": [req("LOOKUP", 1, name("a")), req("OPEN", 2, struct.pack("<II", 2, 0)), req("OPEN", 2, struct.pack("<II", 2, 0)),
              req("SETLK", 2, lk_in(1, 7, 0, 99, 1)), req("GETLK", 2, lk_in(2, 8, 0, 99, 1)),
              req("SETLKW", 2, lk_in(2, 8, 0, 99, 1)), req("RELEASE", 2, struct.pack("<QIIQ", 1, 0, 2, 7))],
    "tmpfile_access_getxattr": [req("TMPFILE", 1, struct.pack("<IIII", 2, 0o600, 0, 0)),
                                req("ACCESS", 1, struct.pack("<II", 7, 0)), req("GETXATTR", 1, struct.pack("<II", 64, 0) + name("user.x")),
                                req("ACCESS", 1, struct.pack("<II", 4, 0), uid=1000, gid=1000), req("SYNCFS", 1, bytes(8)),
                                req("DESTROY", 0), req("LOOKUP", 1, name("a"))],
}

# dax ops: tag & 15 selects (0 setup, 2 remove, 4 shrink, 5 grow, 6 unmap_all, 7 reset, 8
# reconnect, 9 fail next call); bits 4-5 pick the file; bit 6 asks for a writable mapping.
def setup(f, page, npages, fpage, w=False):
    return bytes([(f << 4) | (0x40 if w else 0)]) + struct.pack("<HBH", page, npages - 1, fpage)


def remove(page, npages):
    return bytes([2]) + struct.pack("<HB", page, npages)


DAX = {
    "setup_remove": setup(0, 0, 256, 0) + setup(1, 512, 256, 0, True) + remove(0, 255) + remove(512, 1),
    "shrink_grow": setup(1, 0, 256, 0, True) + bytes([0x14]) + struct.pack("<H", 100) + bytes([0x15]) + struct.pack("<H", 40000),
    "overlap_replace": setup(0, 10, 8, 0) + setup(1, 12, 8, 2) + setup(2, 10, 1, 0) + setup(3, 0, 4, 0),
    "resets": setup(0, 0, 4, 0) + bytes([6]) + setup(1, 0, 4, 0) + bytes([7]) + setup(0, 0, 4, 0) + bytes([8]) + setup(0, 0, 4, 0),
    "failures": setup(1, 0, 16, 0) + bytes([9, 0]) + setup(1, 0, 16, 0) + bytes([9, 1]) + bytes([0x14]) + struct.pack("<H", 1),
}


def write(target, files):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    for n, data in files.items():
        with open(os.path.join(d, n), "wb") as f:
            f.write(data)


write("decode", DECODE)
write("dispatch", {n: b"".join(frame(r, shape=i % 16, reply=16 if i % 5 else 255) for i, r in enumerate(rs)) for n, rs in DISPATCH.items()})
write("dax", DAX)
