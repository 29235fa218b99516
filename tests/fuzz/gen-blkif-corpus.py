#!/usr/bin/env python3
"""Write the seed corpus of fuzz-blkif (input layout: see fuzz-blkif.c).

Usage: gen-blkif-corpus.py OUTDIR
Valid and invalid requests in each ABI, overflowing rings, indirect
requests with their pages. Deterministic: rerunning gives the same files.
"""
import os
import struct
import sys

NATIVE, X86_32, X86_64 = 0, 1, 2
RO, FLUSH, BARRIER, DISCARD, SECURE, SECT4K, TWOPAGES = 1, 2, 4, 8, 0x10, 0x20, 0x40
ALL = FLUSH | BARRIER | DISCARD | SECURE
READ, WRITE, BARRIER_OP, FLUSH_OP, RESERVED, DISCARD_OP, INDIRECT = range(7)
SIZE = 1 << 30
ENTRY = {NATIVE: 112, X86_32: 108, X86_64: 112}
# offset of id, sector, segments (rw); the 32-bit ABI has no padding before id
ID_OFF = {NATIVE: 8, X86_32: 4, X86_64: 8}


def seg(gref, first=0, last=7):
    return struct.pack('<IBBxx', gref, first, last)


def rw(abi, op, nr, sector, segs=None, rid=0x1234):
    if segs is None:
        segs = [seg(100 + i) for i in range(min(nr, 11))]
    b = struct.pack('<BB', op, nr) + struct.pack('<H', 0)
    if abi != X86_32:
        b += b'\0' * 4
    b += struct.pack('<QQ', rid, sector) + b''.join(segs)
    return b.ljust(ENTRY[abi], b'\0')


def discard(abi, sector, nr_sectors, flag=0, rid=0x5678):
    b = struct.pack('<BBH', DISCARD_OP, flag, 0)
    if abi != X86_32:
        b += b'\0' * 4
    b += struct.pack('<QQQ', rid, sector, nr_sectors)
    return b.ljust(ENTRY[abi], b'\0')


def indirect(abi, inner, nr, sector, grefs=(900,), rid=0x9abc):
    b = struct.pack('<BBH', INDIRECT, inner, nr)
    if abi != X86_32:
        b += b'\0' * 4
    b += struct.pack('<QQ', rid, sector) + struct.pack('<HH', 0, 0)
    b += b''.join(struct.pack('<I', g) for g in grefs)
    return b.ljust(ENTRY[abi], b'\0')


def inp(abi, flags, entries, max_ind=256, size=SIZE, rsp_prod=0, nreq=None,
        ind_pages=b''):
    if nreq is None:
        nreq = len(entries)
    hdr = struct.pack('<BBHQII', abi, flags, max_ind, size, rsp_prod & 0xffffffff,
                      nreq & 0xffffffff)
    ring = b''.join(entries)
    if ind_pages:
        ring_bytes = (2 if flags & TWOPAGES else 1) * 4096 - 64
        ring = ring.ljust(ring_bytes, b'\0')
    return hdr + ring + ind_pages


def ind_segs(n, first=0, last=7):
    return b''.join(seg(5000 + i, first, last) for i in range(n))


def cases():
    for abi, name in ((NATIVE, 'native'), (X86_32, 'x86_32'), (X86_64, 'x86_64')):
        yield name + '-read-ok', inp(abi, ALL, [rw(abi, READ, 3, 16)])
        yield name + '-write-11', inp(abi, ALL, [rw(abi, WRITE, 11, 0)])
        yield name + '-write-0seg', inp(abi, ALL, [rw(abi, WRITE, 0, 0)])
        yield name + '-read-12seg', inp(abi, ALL, [rw(abi, READ, 12, 0)])
        yield name + '-read-255seg', inp(abi, ALL, [rw(abi, READ, 255, 0)])
        yield name + '-bad-sectors', inp(abi, ALL, [rw(abi, READ, 1, 0, [seg(1, 5, 4)])])
        yield name + '-last-sect-8', inp(abi, ALL, [rw(abi, READ, 1, 0, [seg(1, 0, 8)])])
        yield name + '-past-end', inp(abi, ALL, [rw(abi, READ, 1, SIZE // 512 - 7)])
        yield name + '-at-end', inp(abi, ALL, [rw(abi, READ, 1, SIZE // 512 - 8)])
        yield name + '-sector-overflow', inp(abi, ALL, [rw(abi, WRITE, 2, (1 << 64) - 1)],
                                             size=(1 << 64) - 1)
        yield name + '-readonly-write', inp(abi, ALL | RO, [rw(abi, WRITE, 1, 0)])
        yield name + '-4k-misaligned', inp(abi, ALL | SECT4K,
                                           [rw(abi, READ, 1, 8, [seg(1, 1, 7)])])
        yield name + '-flush', inp(abi, ALL, [rw(abi, FLUSH_OP, 0, 0)])
        yield name + '-flush-off', inp(abi, 0, [rw(abi, FLUSH_OP, 0, 0)])
        yield name + '-barrier-data', inp(abi, ALL, [rw(abi, BARRIER_OP, 2, 8)])
        yield name + '-unknown-op', inp(abi, ALL, [rw(abi, RESERVED, 1, 0), rw(abi, 0xee, 1, 0)])
        yield name + '-discard', inp(abi, ALL, [discard(abi, 64, 128, 1)])
        yield name + '-discard-0', inp(abi, ALL, [discard(abi, 64, 0)])
        yield name + '-discard-huge', inp(abi, ALL, [discard(abi, 1, (1 << 64) - 1)])
        yield name + '-discard-off', inp(abi, FLUSH, [discard(abi, 0, 8, 1)])
        yield name + '-indirect-ok', inp(abi, ALL, [indirect(abi, WRITE, 256, 32)],
                                         ind_pages=ind_segs(256))
        yield name + '-indirect-badseg', inp(abi, ALL, [indirect(abi, READ, 16, 0)],
                                             ind_pages=ind_segs(16, 3, 2))
        yield name + '-indirect-toomany', inp(abi, ALL, [indirect(abi, READ, 4096, 0,
                                                                  grefs=range(8))])
        yield name + '-indirect-flushop', inp(abi, ALL, [indirect(abi, FLUSH_OP, 8, 0)])
        yield name + '-indirect-off', inp(abi, ALL, [indirect(abi, READ, 8, 0)], max_ind=0)
        yield name + '-ring-overflow', inp(abi, ALL, [rw(abi, READ, 1, 0)] * 4, nreq=33)
        yield name + '-ring-backwards', inp(abi, ALL, [rw(abi, READ, 1, 0)], nreq=-1)
        yield name + '-ring-wrap', inp(abi, ALL, [rw(abi, READ, 1, i, rid=i) for i in range(32)],
                                       rsp_prod=0xfffffff0)
        yield name + '-two-pages-full', inp(abi, ALL | TWOPAGES,
                                            [rw(abi, WRITE, 1, i * 8, rid=i) for i in range(64)])
        yield name + '-mixed', inp(abi, ALL | SECT4K,
                                   [rw(abi, READ, 2, 8), discard(abi, 8, 16),
                                    rw(abi, FLUSH_OP, 0, 0), rw(abi, WRITE, 1, 3),
                                    indirect(abi, READ, 20, 16)],
                                   ind_pages=ind_segs(20))
    yield 'empty', b''
    yield 'header-only', struct.pack('<BBHQII', 0, 0xff, 0xffff, 0, 0, 1)


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        os.path.dirname(os.path.abspath(__file__)), 'corpus', 'blkif')
    os.makedirs(out, exist_ok=True)
    n = 0
    for name, data in cases():
        with open(os.path.join(out, 'seed-' + name), 'wb') as f:
            f.write(data)
        n += 1
    print('wrote %d seeds to %s' % (n, out))


if __name__ == '__main__':
    main()
