#!/usr/bin/env python3
"""A small independent VHD reader (dynamic and fixed), the oracle of the
interop tests: it honours sector bitmaps in dynamic disks (a clear bit
reads as zeroes), which qemu's vpc driver does not.

  vhd-py.py dump IMG OUT              the virtual disk as a raw file
  vhd-py.py clear IMG BLOCK FIRST N   clear bits [FIRST, FIRST+N) of BLOCK
  vhd-py.py bits IMG BLOCK            the number of set bits of BLOCK
  vhd-py.py info IMG                  type, size, block size, BAT entries
"""
import struct
import sys

EXACT = (b"win ", b"qem2", b"d2v ", b"CTXS", b"tap\0")


class Vhd:
    def __init__(self, path, mode="rb"):
        self.f = open(path, mode)
        self.f.seek(0, 2)
        self.file_bytes = self.f.tell()
        foot = self.read(0, 512)
        if foot[:8] != b"conectix":
            foot = self.read(self.file_bytes - 512, 512)
        if foot[:8] != b"conectix":
            raise SystemExit("not a VHD")
        self.type = struct.unpack(">I", foot[60:64])[0]
        creator = foot[28:32]
        cur = struct.unpack(">Q", foot[48:56])[0]
        cyls, heads, secs = struct.unpack(">HBB", foot[56:60])
        if creator in EXACT or (cyls, heads, secs) == (65535, 16, 255):
            self.size = cur
        else:
            self.size = cyls * heads * secs * 512
        if self.type == 2:
            return
        hoff = struct.unpack(">Q", foot[16:24])[0]
        hdr = self.read(hoff, 1024)
        assert hdr[:8] == b"cxsparse"
        self.bat_off = struct.unpack(">Q", hdr[16:24])[0]
        self.entries, self.block = struct.unpack(">II", hdr[28:36])
        raw = self.read(self.bat_off, 4 * self.entries)
        self.bat = list(struct.unpack(">%dI" % self.entries, raw))
        self.bm_bytes = (self.block // 512 + 7) // 8
        self.bm_bytes = (self.bm_bytes + 511) // 512 * 512

    def read(self, off, n):
        self.f.seek(off)
        b = self.f.read(n)
        return b + bytes(n - len(b))

    def bitmap(self, blk):
        return bytearray(self.read(self.bat[blk] * 512, self.bm_bytes))

    def dump(self, out):
        with open(out, "wb") as o:
            if self.type == 2:
                o.write(self.read(0, self.size))
                return
            spb = self.block // 512
            for blk in range((self.size + self.block - 1) // self.block):
                n = min(self.block, self.size - blk * self.block)
                if self.bat[blk] == 0xFFFFFFFF:
                    o.write(bytes(n))
                    continue
                bm = self.bitmap(blk)
                data = bytearray(self.read(self.bat[blk] * 512 + self.bm_bytes, n))
                for s in range(min(spb, n // 512)):
                    if not (bm[s >> 3] >> (7 - (s & 7))) & 1:
                        data[s * 512:(s + 1) * 512] = bytes(512)
                o.write(data)


def main(argv):
    cmd, path = argv[1], argv[2]
    if cmd == "dump":
        Vhd(path).dump(argv[3])
    elif cmd == "clear":
        v = Vhd(path, "r+b")
        blk, first, n = int(argv[3]), int(argv[4]), int(argv[5])
        bm = v.bitmap(blk)
        for s in range(first, first + n):
            bm[s >> 3] &= ~(0x80 >> (s & 7)) & 0xFF
        v.f.seek(v.bat[blk] * 512)
        v.f.write(bm)
    elif cmd == "bits":
        v = Vhd(path)
        print(sum(bin(b).count("1") for b in v.bitmap(int(argv[3]))[: v.block // 4096]))
    elif cmd == "info":
        v = Vhd(path)
        print(v.type, v.size, getattr(v, "block", 0), getattr(v, "entries", 0))
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
