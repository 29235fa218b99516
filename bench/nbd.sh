#!/usr/bin/env bash
# NBD export benchmark: fio --ioengine=nbd against `vdisk serve-nbd` and
# against qemu-storage-daemon serving the same image, in the same run, for
# raw, qcow2 and vpc (VHD).
#
#   bench/nbd.sh                     5 s per case
#   BENCH_QUICK=1 bench/nbd.sh       2 s per case
#
# Cases (one fio job, one NBD connection):
#   rw4k-qd32   4k random write, QD32        rr4k-qd32  4k random read, QD32
#   rw4k-qd1    4k random write, QD1         rr4k-qd1   4k random read, QD1
#   seqr1m-qd8  1M sequential read, QD8      seqw1m-qd8 1M sequential write, QD8
# Images: one raw file of BENCH_SIZE filled with random data, converted to
# each format (fully allocated, so reads hit data and writes overwrite).
# Both servers use O_DIRECT on the image (qsd: cache.direct=on; vdisk's
# default). qsd gets its fastest engine, aio=io_uring as vdisk uses
# (QSD_AIO=threads for its default, the issue's command line).
#
# Output: a table (stdout and table.txt) with IOPS, MB/s, the server's CPU
# per I/O (user+sys of the server process over the fio run, ramp included,
# divided by IOPS x that time: the same approximation for both servers) and
# vdisk/qsd ratios, results.tsv, and the raw fio JSON in
# bench/out/<date>-nbd/ (untracked); the table also replaces the nbd section
# of bench/RESULTS.md.
# Knobs: VDISK_BUILD_DIR (default ./build; a release build), BENCH_RUNTIME,
# BENCH_SIZE (default 1G, quick 256M), BENCH_FORMATS ("raw qcow2 vpc"),
# BENCH_CASES (regex), BENCH_DIR (where the images go, default a temp dir).
# Figures on a shared machine are noisy: compare ratios within one run.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${VDISK_BUILD_DIR:-$ROOT/build}
VDISK=$BUILD/src/cli/vdisk
QUICK=${BENCH_QUICK:-0}
RUNTIME=${BENCH_RUNTIME:-$([ "$QUICK" = 1 ] && echo 2 || echo 5)}
SIZE=${BENCH_SIZE:-$([ "$QUICK" = 1 ] && echo 256M || echo 1G)}
FORMATS=${BENCH_FORMATS:-raw qcow2 vpc}
CASES_RE=${BENCH_CASES:-.}
for t in fio qemu-img qemu-storage-daemon python3; do
	command -v "$t" >/dev/null || { echo "missing $t (apt-get install fio qemu-utils qemu-system-common)"; exit 77; }
done
fio --enghelp 2>/dev/null | grep -qw nbd || { echo "fio has no nbd engine"; exit 77; }
[ -x "$VDISK" ] || { echo "no $VDISK: build first (meson setup build && ninja -C build)"; exit 1; }

STAMP=$(date -u +%Y%m%d-%H%M)
OUT=$ROOT/bench/out/$STAMP-nbd
mkdir -p "$OUT/raw"
W=$(mktemp -d "${BENCH_DIR:-${TMPDIR:-/var/tmp}}/nbd-bench.XXXXXX")
SRV=
cleanup() {
	if [ -n "$SRV" ]; then
		kill "$SRV" 2>/dev/null || true
		wait "$SRV" 2>/dev/null || true
	fi
	rm -rf "$W"
}
trap cleanup EXIT
SOCK=$W/nbd.sock
URI="nbd+unix:///?socket=$SOCK"

CASES=(
	"rw4k-qd32 randwrite 4k 32"
	"rr4k-qd32 randread 4k 32"
	"rw4k-qd1 randwrite 4k 1"
	"rr4k-qd1 randread 4k 1"
	"seqr1m-qd8 read 1M 8"
	"seqw1m-qd8 write 1M 8"
)

wait_sock() {
	for _ in $(seq 200); do
		[ -S "$SOCK" ] && return 0
		kill -0 "$SRV" 2>/dev/null || return 1
		sleep 0.05
	done
	return 1
}
start_vdisk() { # IMG FMT
	local f=$2
	[ "$f" != vpc ] || f=vhd
	"$VDISK" serve-nbd "$1" -f "$f" --socket "$SOCK" >"$OUT/raw/server-vdisk-$2.log" 2>&1 &
	SRV=$!
	wait_sock
}
start_qsd() { # IMG FMT
	qemu-storage-daemon \
		--blockdev "driver=file,filename=$1,node-name=f,cache.direct=on,aio=${QSD_AIO:-io_uring}" \
		--blockdev "driver=$2,file=f,node-name=d" \
		--nbd-server "addr.type=unix,addr.path=$SOCK" \
		--export type=nbd,id=e,node-name=d,name=,writable=on \
		>"$OUT/raw/server-qsd-$2.log" 2>&1 &
	SRV=$!
	wait_sock
}
TCK=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
stop_srv() {
	kill -TERM "$SRV" 2>/dev/null || true
	wait "$SRV" 2>/dev/null || true
	SRV=
	rm -f "$SOCK"
}

{
	echo "# $(date -u) $(uname -r) $(nproc) CPUs; runtime ${RUNTIME}s; image $SIZE"
	grep -m1 "model name" /proc/cpuinfo || true
	qemu-storage-daemon --version | head -1
	fio --version
} >"$OUT/machine.txt"

echo "filling a $SIZE source image"
qemu-img create -q -f raw "$W/src.raw" "$SIZE"
fio --name=fill --filename="$W/src.raw" --rw=write --bs=1M --direct=1 --ioengine=psync \
	--size="$SIZE" --refill_buffers=1 --output=/dev/null
printf "format\tcase\tsystem\tiops\tmbps\tlat_us\tcpu_us_io\n" >"$OUT/results.tsv"
for fmt in $FORMATS; do
	img=$W/img.$fmt
	for sys in vdisk qsd; do
		rm -f "$img"
		qemu-img convert -q -f raw -O "$fmt" "$W/src.raw" "$img"
		"start_$sys" "$img" "$fmt" || { echo "$sys did not start on $fmt"; exit 1; }
		for c in "${CASES[@]}"; do
			read -r name rw bs qd <<<"$c"
			[[ "$name" =~ $CASES_RE ]] || continue
			j=$OUT/raw/$fmt-$name-$sys.json
			c0=$(cpu_ticks "$SRV")
			fio --name="$name" --ioengine=nbd --uri="$URI" --rw="$rw" --bs="$bs" \
				--iodepth="$qd" --size="$SIZE" --runtime="$RUNTIME" --time_based \
				--ramp_time=1 --randrepeat=0 --norandommap --output-format=json \
				--output="$j" >/dev/null 2>&1 || { echo "fio failed: $fmt $name $sys"; exit 1; }
			c1=$(cpu_ticks "$SRV")
			python3 - "$j" "$fmt" "$name" "$sys" $((c1 - c0)) "$TCK" $((RUNTIME + 1)) \
				>>"$OUT/results.tsv" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))["jobs"][0]
op = "write" if j["write"]["io_bytes"] > j["read"]["io_bytes"] else "read"
d = j[op]
cpu_us = int(sys.argv[5]) * 1e6 / int(sys.argv[6])
ios = max(d["iops"] * int(sys.argv[7]), 1.0)
print("%s\t%s\t%s\t%.0f\t%.1f\t%.1f\t%.1f" % (sys.argv[2], sys.argv[3], sys.argv[4], d["iops"],
      d["bw_bytes"] / 1e6, d["clat_ns"]["mean"] / 1e3, cpu_us / ios))
PY
			tail -1 "$OUT/results.tsv"
		done
		stop_srv
	done
done
python3 - "$OUT/results.tsv" <<'PY' | tee "$OUT/table.txt"
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
by = {}
for r in rows:
    by.setdefault((r["format"], r["case"]), {})[r["system"]] = r
target = {"rw4k-qd32": 1.2}
print("%-6s %-11s %10s %10s %9s %9s %7s %6s %11s" % ("format", "case", "vdisk IOPS",
      "qsd IOPS", "vdisk MB/s", "qsd MB/s", "ratio", "target", "cpu us/io"))
for (fmt, case), s in by.items():
    v, q = s.get("vdisk"), s.get("qsd")
    if not v or not q:
        continue
    ratio = float(v["iops"]) / max(float(q["iops"]), 1.0)
    t = target.get(case, 1.0)
    print("%-6s %-11s %10s %10s %9s %9s %6.2fx %5.1fx %5s/%-5s%s" % (fmt, case, v["iops"],
          q["iops"], v["mbps"], q["mbps"], ratio, t, v["cpu_us_io"], q["cpu_us_io"],
          "" if ratio >= t else "  <"))
PY
echo "results in $OUT"
python3 "$ROOT/bench/record.py" "$ROOT/bench/RESULTS.md" nbd "$OUT/table.txt" \
	"bench/nbd.sh (BENCH_QUICK=$QUICK BENCH_FORMATS=\"$FORMATS\" BENCH_CASES=\"$CASES_RE\"), raw outputs in ${OUT#"$ROOT"/}"
