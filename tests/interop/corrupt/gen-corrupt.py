#!/usr/bin/env python3
"""Corruption corpus for vdisk check/repair, judged against qemu-img (issue 13).

Base images are made by qemu-img/qemu-io: qcow2 v3 with a snapshot, qcow2 v2,
qcow2 with compressed clusters (qemu-img convert -c), a qcow2 overlay on a
backing file, and a dynamic VHD (vpc). Each case corrupts a copy: one bit of
one metadata field (every header field, L1/L2 entries including reserved bits,
refcount table/block entries, snapshot table, VHD footer/header fields, BAT
entries; for VHD half of them with the checksum recomputed so the corruption
gets past it), or seeded random bit flips in metadata areas. Then, with a
timeout on every command:
  vdisk info; vdisk check; qemu-img check; both read the disk back (raw);
  vdisk check --repair on a copy, a fresh vdisk check, qemu-img check and a
  vdisk read-back of the repaired copy; qemu-img check -r all on another copy.
A case FAILS on: a crash (signal, sanitizer report), a hang (timeout), a
repair that changed a 64 KiB chunk that vdisk read before the repair the same
as qemu, a "clean" verdict of check --repair that the re-check or qemu-img
check of the repaired file contradicts, and a clean vdisk check where qemu-img
check reports corruption. Exceptions are listed in EXCEPTIONS with why.

Usage: gen-corrupt.py --vdisk PATH [--cases N] [--seed S] [--dir D] [-j N]
Env: VDISK_CORRUPT_CASES (default 200), VDISK_CORRUPT_SEED (default 13),
     VDISK_TIMEOUT_SCALE (timeouts are multiplied, e.g. 3 under ASan).
Exit: 0 all passed, 1 a case failed, 77 qemu-img/qemu-io missing.
"""
import argparse
import concurrent.futures
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile

CHUNK = 65536
SIZE = 4 << 20

KEEP = False

# Known, explained disagreements: (family, predicate on the case name, why).
# None is needed today. Verdict differences that fail no assertion (-v lists
# them), with why:
#  - qemu clean, vdisk leaks: a refcount flipped on for a cluster past the end
#    of the file; qemu-img check looks at no refcount past the end, vdisk
#    counts it as leaked (allocation would skip it) and a repair drops it.
#  - qemu corrupt, vdisk error: vdisk refuses to open what it cannot trust
#    (snapshot table, L1 or refcount table offsets/sizes out of the file);
#    qemu opens and reports. Not clean, so no assertion fails.
#  - qemu clean, vdisk error: a flipped backing file name offset/size; qemu-img
#    check does not open the backing file, vdisk's open does.
#  - qemu error, vdisk corrupt: qemu refuses to open (e.g. an unaligned
#    snapshot table offset with no snapshots, a bad refcount table entry),
#    vdisk opens read-only and reports it.
EXCEPTIONS = []


def sh(args, timeout, **kw):
    """Run args; (rc, stdout+stderr). rc None on timeout, negative on signal."""
    try:
        p = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           timeout=timeout, **kw)
        return p.returncode, p.stdout.decode(errors="replace")
    except subprocess.TimeoutExpired:
        return None, "TIMEOUT"


def q(args):
    rc, out = sh(args, 60)
    if rc != 0:
        sys.exit("setup failed: %s: %s" % (" ".join(args), out))


# ---- base images ----

def qio(path, fmt, cmds):
    args = ["qemu-io", "-f", fmt]
    for c in cmds:
        args += ["-c", c]
    q(args + [path])


WRITES = ["write -P 0x11 0 64k", "write -P 0x22 128k 64k", "write -P 0x33 1M 192k",
          "write -P 0x44 3M 4k", "write -P 0x55 4032k 64k"]


def make_bases(d):
    b = {}
    b["q3"] = os.path.join(d, "q3.qcow2")
    q(["qemu-img", "create", "-q", "-f", "qcow2", b["q3"], str(SIZE)])
    qio(b["q3"], "qcow2", WRITES[:3])
    q(["qemu-img", "snapshot", "-c", "s1", b["q3"]])
    qio(b["q3"], "qcow2", ["write -P 0x66 0 32k", "write -P 0x77 2M 64k"] + WRITES[3:])
    b["q2"] = os.path.join(d, "q2.qcow2")
    q(["qemu-img", "create", "-q", "-f", "qcow2", "-o", "compat=0.10,cluster_size=4096",
       b["q2"], str(SIZE)])
    qio(b["q2"], "qcow2", WRITES)
    raw = os.path.join(d, "src.raw")
    q(["qemu-img", "create", "-q", "-f", "raw", raw, str(SIZE)])
    qio(raw, "raw", WRITES + ["write -P 0x88 2M 256k"])
    b["qz"] = os.path.join(d, "qz.qcow2")
    q(["qemu-img", "convert", "-c", "-f", "raw", "-O", "qcow2", raw, b["qz"]])
    base = os.path.join(d, "base.qcow2")
    q(["qemu-img", "create", "-q", "-f", "qcow2", base, str(SIZE)])
    qio(base, "qcow2", WRITES)
    b["qb"] = os.path.join(d, "qb.qcow2")
    q(["qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", b["qb"]])
    qio(b["qb"], "qcow2", ["write -P 0x99 64k 128k", "write -P 0xaa 3M 8k"])
    b["vhd"] = os.path.join(d, "v.vhd")
    q(["qemu-img", "create", "-q", "-f", "vpc", "-o", "subformat=dynamic", b["vhd"],
       str(SIZE)])
    qio(b["vhd"], "vpc", WRITES)
    return b


# ---- where the metadata is ----

def be(data, off, n):
    return int.from_bytes(data[off:off + n], "big")


QCOW2_FIELDS = [("magic", 0, 4), ("version", 4, 4), ("backing_off", 8, 8),
                ("backing_size", 16, 4), ("cluster_bits", 20, 4), ("size", 24, 8),
                ("crypt", 32, 4), ("l1_size", 36, 4), ("l1_off", 40, 8), ("rt_off", 48, 8),
                ("rt_clusters", 56, 4), ("nb_snapshots", 60, 4), ("snap_off", 64, 8)]
QCOW2_V3_FIELDS = [("incompat", 72, 8), ("compat", 80, 8), ("autoclear", 88, 8),
                   ("refcount_order", 96, 4), ("header_len", 100, 4)]


def qcow2_layout(data):
    """Metadata regions and entries of a qcow2 file (bytes)."""
    cb = 1 << be(data, 20, 4)
    ver = be(data, 4, 4)
    l1_size, l1_off = be(data, 36, 4), be(data, 40, 8)
    rt_off, rt_cl = be(data, 48, 8), be(data, 56, 4)
    nsnap, snap_off = be(data, 60, 4), be(data, 64, 8)
    lay = {"cb": cb, "fields": QCOW2_FIELDS + (QCOW2_V3_FIELDS if ver >= 3 else []),
           "hdr_len": be(data, 100, 4) if ver >= 3 else 72}
    lay["l1"] = [l1_off + 8 * i for i in range(l1_size)]
    l2s = sorted({be(data, o, 8) & 0x00fffffffffffe00 for o in lay["l1"]} - {0})
    lay["l2"] = []
    for t in l2s:
        ents = [t + 8 * i for i in range(cb // 8)]
        used = [o for o in ents if be(data, o, 8)]
        lay["l2"] += used[:6] + [o for o in ents if not be(data, o, 8)][:1]
    rt = [rt_off + 8 * i for i in range(rt_cl * cb // 8)]
    lay["rt"] = rt[:3]
    rbs = [be(data, o, 8) for o in rt if be(data, o, 8)]
    order = be(data, 96, 4) if ver >= 3 else 4
    lay["rb"] = []
    if rbs:
        nbytes = max(1, (1 << order) // 8)
        lay["rb"] = [rbs[0] + nbytes * i for i in range(6)]
    lay["snap"] = []
    if nsnap:
        lay["snap"] = [("snap_l1_off", snap_off, 8), ("snap_l1_size", snap_off + 8, 4),
                       ("snap_id_len", snap_off + 12, 2), ("snap_extra", snap_off + 36, 4)]
    lay["regions"] = [(0, lay["hdr_len"]), (l1_off, l1_size * 8), (rt_off, rt_cl * cb)]
    lay["regions"] += [(t, cb) for t in l2s] + [(r, cb) for r in rbs]
    if nsnap:
        lay["regions"].append((snap_off, 256))
    return lay


VHD_FOOTER = [("cookie", 0, 8), ("features", 8, 4), ("version", 12, 4), ("data_off", 16, 8),
              ("timestamp", 24, 4), ("creator", 28, 4), ("orig_size", 40, 8),
              ("cur_size", 48, 8), ("geometry", 56, 4), ("disk_type", 60, 4),
              ("checksum", 64, 4), ("uuid", 68, 16), ("saved", 84, 1)]
VHD_HEADER = [("cookie", 0, 8), ("data_off", 8, 8), ("table_off", 16, 8),
              ("version", 24, 4), ("max_entries", 28, 4), ("block_size", 32, 4),
              ("checksum", 36, 4), ("parent_uuid", 40, 16), ("parent_ts", 56, 4),
              ("loc0_code", 576, 4), ("loc0_len", 584, 4), ("loc0_off", 592, 8)]


def vhd_checksum(data, off, length, csum_off):
    s = sum(b for i, b in enumerate(data[off:off + length]) if not
            csum_off <= i < csum_off + 4)
    data[off + csum_off:off + csum_off + 4] = struct.pack(">I", (~s) & 0xffffffff)


def vhd_layout(data):
    foot = len(data) - 512
    hdr = be(data, foot + 16, 8)
    bat = be(data, hdr + 16, 8)
    n = be(data, hdr + 28, 4)
    used = [bat + 4 * i for i in range(n) if be(data, bat + 4 * i, 4) != 0xffffffff]
    unused = [bat + 4 * i for i in range(n) if be(data, bat + 4 * i, 4) == 0xffffffff]
    return {"foot": foot, "hdr": hdr, "bat": used[:5] + unused[:2],
            "regions": [(foot, 512), (0, 512), (hdr, 1024), (bat, 4 * n)]}


# ---- the cases ----

def flip(data, off, bit):
    data[off + bit // 8] ^= 1 << (bit % 8)


def field_flip(off, size, bit):
    """A flip of bit `bit` (0 = LSB) of a big-endian field."""
    bit %= size * 8
    return (off + size - 1 - bit // 8, bit % 8)


def qcow2_cases(name, data):
    lay = qcow2_layout(data)
    out = []
    for f, off, size in lay["fields"] + lay["snap"]:
        for bit in sorted({0, 1, 5, 8 * size // 2, 8 * size - 1}):
            out.append(("%s:hdr.%s.b%d" % (name, f, bit), [field_flip(off, size, bit)]))
    for kind, bits in (("l1", [0, 1, 9, 17, 40, 56, 62, 63]),
                       ("l2", [0, 1, 9, 16, 30, 56, 61, 62, 63]),
                       ("rt", [2, 9, 12, 17, 40, 63]), ("rb", [0, 1, 3])):
        for i, off in enumerate(lay[kind]):
            for bit in bits:
                size = 8 if kind != "rb" else 1
                out.append(("%s:%s[%d].b%d" % (name, kind, i, bit),
                            [field_flip(off, size, bit)]))
    return out, lay["regions"]


def vhd_cases(name, data):
    lay = vhd_layout(data)
    out = []
    for where, base, fields, length, csum in (("foot", lay["foot"], VHD_FOOTER, 512, 64),
                                              ("copy", 0, VHD_FOOTER[:4], 512, 64),
                                              ("dynh", lay["hdr"], VHD_HEADER, 1024, 36)):
        for f, off, size in fields:
            for j, bit in enumerate(sorted({0, 3, 8 * size - 1})):
                fix = (base, length, csum) if j % 2 == 0 and f != "checksum" else None
                out.append(("%s:%s.%s.b%d%s" % (name, where, f, bit, ".csum" if fix else ""),
                            [field_flip(base + off, size, bit)], fix))
    for i, off in enumerate(lay["bat"]):
        for bit in (0, 3, 12, 20, 31):
            out.append(("%s:bat[%d].b%d" % (name, i, bit), [field_flip(off, 4, bit)], None))
    return out, lay["regions"]


def random_cases(name, regions, n, rng, vhd):
    out = []
    for k in range(n):
        flips = []
        for _ in range(rng.choice((1, 1, 2, 3))):
            start, length = rng.choice(regions)
            flips.append((start + rng.randrange(max(1, length)), rng.randrange(8)))
        fix = None
        if vhd and rng.random() < 0.5:
            fix = "all"
        out.append(("%s:random%d" % (name, k), flips, fix))
    return out


def build_cases(bases, total, rng):
    enumerated, randoms = [], []
    for name, path in bases.items():
        data = open(path, "rb").read()
        if name == "vhd":
            cases, regions = vhd_cases(name, data)
        else:
            cases, regions = qcow2_cases(name, data)
            cases = [(c[0], c[1], None) for c in cases]
        enumerated += [(name,) + c for c in cases]
        randoms += [(name,) + c for c in random_cases(name, regions, total, rng,
                                                        name == "vhd")]
    n_enum = min(len(enumerated), total * 3 // 4)
    chosen = rng.sample(enumerated, n_enum) if n_enum < len(enumerated) else enumerated
    chosen += rng.sample(randoms, min(len(randoms), total - len(chosen)))
    return chosen, len(enumerated)


def apply_case(src, dst, flips, fix):
    data = bytearray(open(src, "rb").read())
    for off, bit in flips:
        if off < len(data):
            data[off] ^= 1 << bit
    if fix == "all":
        foot = len(data) - 512
        vhd_checksum(data, foot, 512, 64)
        vhd_checksum(data, 0, 512, 64)
        hdr = be(data, foot + 16, 8)
        if hdr + 1024 <= len(data):
            vhd_checksum(data, hdr, 1024, 36)
    elif fix:
        base, length, csum = fix
        vhd_checksum(data, base, length, csum)
    open(dst, "wb").write(bytes(data))


# ---- running one case ----

SANITIZER = ("AddressSanitizer", "runtime error:", "LeakSanitizer", "UndefinedBehavior")


def verdict(rc):
    return {0: "clean", 2: "corrupt", 3: "leaks"}.get(rc, "error" if rc is not None else "hang")


class Case:
    def __init__(self, base_name, name, flips, fix):
        self.base, self.name, self.flips, self.fix = base_name, name, flips, fix
        self.fail = []
        self.notes = []


def chunks_equal(a, b, i):
    return a[i * CHUNK:(i + 1) * CHUNK] == b[i * CHUNK:(i + 1) * CHUNK]


def run_case(c, bases, vdisk, work, scale):
    d = os.path.join(work, c.name.replace(":", "_").replace("[", "").replace("]", ""))
    os.makedirs(d, exist_ok=True)
    fmt = "vpc" if c.base == "vhd" else "qcow2"
    ext = ".vhd" if fmt == "vpc" else ".qcow2"
    vfmt = "vhd" if fmt == "vpc" else "qcow2"  # the format is given, as to qemu-img
    img, rep, qrep = (os.path.join(d, n + ext) for n in ("img", "rep", "qrep"))
    if c.base == "qb":
        shutil.copy(os.path.join(os.path.dirname(bases["qb"]), "base.qcow2"), d)
    apply_case(bases[c.base], img, c.flips, c.fix)
    shutil.copy(img, rep)
    shutil.copy(img, qrep)
    t = 20 * scale

    def vd(*args):
        rc, out = sh([vdisk] + list(args), t, cwd=d)
        if rc is None:
            c.fail.append("hang: vdisk " + " ".join(args))
        elif rc < 0 or rc >= 128 or any(s in out for s in SANITIZER):
            c.fail.append("crash (rc %s): vdisk %s: %s" % (rc, " ".join(args),
                                                          out.strip()[-300:]))
        return rc, out

    def dump(cmd, path):
        out = os.path.join(d, os.path.basename(path) + "." + cmd[0] + ".raw")
        if cmd[0] == "vdisk":
            rc, _ = vd("convert", "-f", vfmt, "-O", "raw", path, out)
        else:
            rc, _ = sh(["qemu-img", "convert", "-f", fmt, "-O", "raw", path, out], t, cwd=d)
        if rc == 0 and os.path.exists(out) and os.path.getsize(out) == SIZE:
            return open(out, "rb").read()
        return None

    vd("info", img)
    c.vcheck, _ = vd("check", "-f", vfmt, img)
    c.qcheck, _ = sh(["qemu-img", "check", "-f", fmt, img], t, cwd=d)
    vbefore, qbefore = dump(["vdisk"], img), dump(["qemu"], img)
    c.vrepair, rep_out = vd("check", "-f", vfmt, "--repair", rep)
    c.vrecheck, _ = vd("check", "-f", vfmt, rep)
    c.qafter, _ = sh(["qemu-img", "check", "-f", fmt, rep], t, cwd=d)
    vafter = dump(["vdisk"], rep)
    c.qrepair, _ = sh(["qemu-img", "check", "-r", "all", "-f", fmt, qrep], t, cwd=d)
    # a repair keeps what read before it (where qemu read the same)
    if vbefore is not None and qbefore is not None and c.vrepair in (0, 2, 3):
        agree = [i for i in range(SIZE // CHUNK) if chunks_equal(vbefore, qbefore, i)]
        if vafter is None and agree:
            c.fail.append("data: the repaired image no longer reads")
        elif vafter is not None:
            lost = [i for i in agree if not chunks_equal(vbefore, vafter, i)]
            if lost:
                c.fail.append("data: repair changed chunks %s that read the same in "
                              "vdisk and qemu before" % lost[:8])
    if c.vrepair == 0:
        if c.vrecheck != 0:
            c.fail.append("repair said clean, re-check says %s" % verdict(c.vrecheck))
        if fmt == "qcow2" and c.qafter == 2:
            c.fail.append("repair said clean, qemu-img check of the repaired file says "
                          "corrupt")
    if c.vcheck == 0 and vbefore is not None and qbefore is not None:
        # clean, yet another disk than qemu's: worth a look (qemu has no vpc check)
        diff = [i for i in range(SIZE // CHUNK) if not chunks_equal(vbefore, qbefore, i)]
        if diff:
            c.notes.append("clean but reads differently from qemu in chunks %s" % diff[:8])
    if fmt == "qcow2" and c.qcheck == 2 and c.vcheck == 0:
        c.fail.append("qemu-img check says corrupt, vdisk check says clean")
    for fam, pred, why in EXCEPTIONS:
        if c.fail and fam == c.base and pred(c.name):
            c.notes.append("exception: " + why)
            c.fail = []
    if not c.fail and not KEEP:
        shutil.rmtree(d, ignore_errors=True)
    return c


def family(c):
    part = c.name.split(":", 1)[1].split(".")[0].split("[")[0]
    return c.base + ":" + ("random" if part.startswith("random") else part)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--vdisk", required=True)
    ap.add_argument("--cases", type=int, default=int(os.environ.get("VDISK_CORRUPT_CASES",
                                                                    "200")))
    ap.add_argument("--seed", type=int, default=int(os.environ.get("VDISK_CORRUPT_SEED",
                                                                   "13")))
    ap.add_argument("--dir", default=None)
    ap.add_argument("-j", type=int, default=2)
    ap.add_argument("--only", default=None, help="run the cases whose name contains this")
    ap.add_argument("--keep", action="store_true", help="keep every case's files")
    ap.add_argument("-v", "--verbose", action="store_true", help="list verdict differences")
    a = ap.parse_args()
    a.vdisk = os.path.abspath(a.vdisk)
    for tool in ("qemu-img", "qemu-io"):
        if not shutil.which(tool):
            print("SKIP: %s not installed" % tool)
            return 77
    scale = float(os.environ.get("VDISK_TIMEOUT_SCALE", "1") or 1)
    work = tempfile.mkdtemp(prefix="vdisk-corrupt.", dir=a.dir)
    rng = random.Random(a.seed)
    bases = make_bases(work)
    cases, n_enum = build_cases(bases, a.cases, rng)
    if a.only:
        cases = [c for c in cases if a.only in c[1]]
    global KEEP
    KEEP = a.keep
    print("seed %d: %d cases (%d enumerated field flips available), work dir %s" %
          (a.seed, len(cases), n_enum, work))
    done = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=a.j) as ex:
        futs = [ex.submit(run_case, Case(*c), bases, a.vdisk, work, scale) for c in cases]
        for f in futs:
            done.append(f.result())
    report(done)
    failed = [c for c in done if c.fail]
    for c in failed:
        print("FAIL %s flips=%s%s" % (c.name, c.flips, " csum" if c.fix else ""))
        for m in c.fail:
            print("     " + m)
    for c in done:
        if a.verbose and c.base != "vhd" and verdict(c.qcheck) != verdict(c.vcheck):
            print("DIFF %s: qemu-img check %s, vdisk check %s" % (c.name, verdict(c.qcheck),
                                                                verdict(c.vcheck)))
        for n in c.notes:
            print("NOTE %s: %s" % (c.name, n))
    if not failed and not KEEP:
        shutil.rmtree(work, ignore_errors=True)
    print("%d cases, %d failed (replay: VDISK_CORRUPT_SEED=%d VDISK_CORRUPT_CASES=%d)" %
          (len(done), len(failed), a.seed, a.cases))
    return 1 if failed else 0


def report(done):
    fams = {}
    for c in done:
        fams.setdefault(family(c), []).append(c)
    print("\n%-16s %5s %5s %5s %5s %5s %7s %5s" % ("family", "cases", "agree", "vclean",
                                                  "qcorr", "fixed", "r-clean", "FAIL"))
    tot = [0] * 7
    for f in sorted(fams):
        cs = fams[f]
        qc = [c for c in cs if c.base != "vhd"]
        row = [len(cs),
               sum(1 for c in qc if verdict(c.vcheck) == verdict(c.qcheck)),
               sum(1 for c in cs if c.vcheck == 0),
               sum(1 for c in qc if c.qcheck == 2),
               sum(1 for c in cs if c.vcheck in (2, 3) and c.vrepair == 0),
               sum(1 for c in qc if c.qafter == 0 and c.vrepair == 0),
               sum(1 for c in cs if c.fail)]
        tot = [x + y for x, y in zip(tot, row)]
        cells = ["%d" % v for v in row]
        if not qc:  # VHD: qemu-img has no vpc checker
            cells[1] = cells[3] = cells[5] = "-"
        print("%-16s %5s %5s %5s %5s %5s %7s %5s" % ((f,) + tuple(cells)))
    print("%-16s %5d %5d %5d %5d %5d %7d %5d" % (("total",) + tuple(tot)))
    qc = [c for c in done if c.base != "vhd"]
    grid = {}
    for c in qc:
        k = (verdict(c.qcheck), verdict(c.vcheck))
        grid[k] = grid.get(k, 0) + 1
    print("\nqcow2 verdicts (qemu-img check -> vdisk check): " +
          ", ".join("%s->%s %d" % (k[0], k[1], v) for k, v in sorted(grid.items())))
    print("columns: agree = same verdict as qemu-img check (qcow2); vclean = vdisk check "
          "clean; qcorr = qemu says corrupt;\n  fixed = vdisk found a problem and its "
          "repair ended clean; r-clean = qemu-img check also clean after vdisk's repair")


if __name__ == "__main__":
    sys.exit(main())
