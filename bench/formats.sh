#!/usr/bin/env bash
# vdisk format benchmark (issues 5 and 6): VHD and QCOW2 through vdiskd and
# simguest, beside `qemu-img bench` on the same kind of image and fio on a raw
# file of the same size, in one run on one machine.
#
#   bench/formats.sh                  full run (10 s per case)
#   BENCH_QUICK=1 bench/formats.sh    3 s per case
#
# Systems, per format (vhd = dynamic VHD, qemu's `vpc`; qcow2 = 64 KiB clusters):
#   vdisk     vdiskd + `vdisk sim guest --no-verify` (1 queue), attach --format vhd|qcow2,
#             cache direct (O_DIRECT), io_uring backend: the daemon's defaults
#   qemu-img  `qemu-img bench -t none -i native` (O_DIRECT, Linux AIO), one image
#   fio       fio --ioengine=io_uring --direct=1 on a raw file: the ceiling
# Workloads:
#   rw4k-alloc-qd1/qd32  4k random write into a FRESH image (every system gets
#                        its own new image; fio a new sparse raw file)
#   rr4k-qd1/qd32, rw4k-qd1/qd32   4k random read / write, fully allocated image
#   seqr1m-qd8, seqw1m-qd8         1M sequential read / write, allocated image
# The allocated images are `qemu-img convert` copies of a raw file filled by
# fio (non-zero data, so every cluster/block is allocated); fresh images come
# from `qemu-img create` (vpc: subformat=dynamic,force_size=on), the same for
# vdisk and qemu-img.
#
# qemu-img bench has no random mode and no time limit: it issues -c COUNT
# requests at offsets start, start+S, start+2S... modulo the image size. For
# "random" 4k we use the stride S = 400001 x 4 KiB (~1.5 GiB; odd and coprime
# with the number of 4k blocks, so it visits every block once before
# repeating, each request in a different cluster/block than the last): a
# scattered pattern with no locality, like simguest's uniform random offsets,
# but not the same offsets. Sequential 1M uses the default stride (= the
# request size). COUNT is calibrated by a short run (on a throwaway image for
# the allocation cases) to last about BENCH_RUNTIME seconds. qemu-img bench
# reports only the elapsed time: IOPS = COUNT / time, no latency percentiles.
#
# BENCH_ENGINE=1 adds the system "engine": vdisk's image engine alone
# (tests/unit/qcow2/qcow2-bench: one io_uring context, O_DIRECT, no rings,
# no grant copies, no simguest) with qemu-img bench's exact arguments and
# request count, on its own copy of the image: the format engines compared
# without vdisk's transport in between (qcow2 and raw; "vdisk" rows include
# the simulated guest's round trip, which qemu-img bench does not have).
#
# Variants (BENCH_VARIANTS, default "base l2all flush"; the workload name
# gets the suffix):
#   base     the daemon's and qemu-img's defaults: default L2 cache, no flush.
#            qemu-img bench never flushes, so neither does simguest here.
#   l2all    (qcow2) an L2 cache covering the whole disk on both sides:
#            `vdisk attach --l2-cache-size B` and qemu-img bench --image-opts
#            l2-cache-size=B, B = 8 bytes per cluster of the virtual disk. Both
#            defaults already cover the disk up to 32 MiB of cache (256 GiB at
#            64 KiB clusters, QEMU's Linux default), so at 4 GiB this is the
#            same configuration as base, run again; with BENCH_L2_SMALL=BYTES
#            the variant "l2small" gives both sides a smaller cache instead.
#   flushN   (write workloads) the same flush policy on both sides: a flush
#            every N writes (BENCH_FLUSH_EVERY, default 64): simguest
#            --flush-every N (the flush joins the queue), qemu-img bench
#            --flush-interval=N --no-drain (likewise, without draining), fio
#            --fdatasync=N.
# BENCH_FORMATS (default "vhd qcow2") picks the formats; VHD runs base and
# flush only. "raw" adds vdisk and qemu-img bench on the raw file itself:
# what each engine's datapath does without a format (the ceiling for its
# format rows), beside fio.
#
# Output in bench/out/<date>-formats/ (untracked; the table also replaces the
# formats section of bench/RESULTS.md): table.txt (also printed),
# results.tsv, raw/ (fio JSON, simguest JSON, qemu-img output, vdiskd log),
# machine.txt (CPU, memory, kernel, filesystem, versions, build, load).
#
# BENCH_REPEAT=N runs every case N times, the systems taking turns (vdisk,
# qemu-img, engine, then again), and reports the median of the N with the
# spread ((max - min) / median): the virtio disk under a VM moves by tens of
# percent between minutes, and a single run of each side misleads.
#
# Knobs: VDISK_BUILD_DIR (use a release build), BENCH_QUICK=1, BENCH_RUNTIME,
# BENCH_SIZE (default 4G), BENCH_CASES (regex on case names such as
# 'qcow2.*alloc'), BENCH_VARIANTS, BENCH_FORMATS, BENCH_FLUSH_EVERY,
# BENCH_L2_SMALL, BENCH_OUT, TMPDIR (where the images go: needs ~4 x SIZE).
# Needs fio, qemu-img (qemu-utils), python3, xenstore-utils.
# Not part of any test suite: run it by hand.
set -euo pipefail
BENCH_DIR=$(cd "$(dirname "$0")" && pwd)
export VDISK_SOURCE_DIR=${VDISK_SOURCE_DIR:-$(cd "$BENCH_DIR/.." && pwd)}
# shellcheck source=../scripts/lib-sim.sh
. "$VDISK_SOURCE_DIR/scripts/lib-sim.sh"

QUICK=${BENCH_QUICK:-0}
if [ "$QUICK" = 1 ]; then
	RUNTIME=${BENCH_RUNTIME:-3}
else
	RUNTIME=${BENCH_RUNTIME:-10}
fi
SIZE=${BENCH_SIZE:-4G}
CASES=${BENCH_CASES:-.}
STAMP=$(date +%Y%m%d-%H%M)
OUT=${BENCH_OUT:-$BENCH_DIR/out/$STAMP-formats}
mkdir -p "$OUT/raw"
OUT=$(cd "$OUT" && pwd)
TSV=$OUT/results.tsv
STRIDE=$((400001 * 4096))
VARIANTS=${BENCH_VARIANTS:-base l2all flush}
FORMATS=${BENCH_FORMATS:-vhd qcow2}
FLUSH_EVERY=${BENCH_FLUSH_EVERY:-64}
L2_SMALL=${BENCH_L2_SMALL:-}
ENGINE=${BENCH_ENGINE:-0}
REPEAT=${BENCH_REPEAT:-1}
REP_TAG= # -rN on the raw files of repetition N > 1
CLUSTER=65536
# per-case extras, set by the variant loops
GUEST_EXTRA=()
ATTACH_EXTRA=()
QEMU_EXTRA=()
QEMU_L2=
FIO_EXTRA=()

for t in fio qemu-img python3 xenstore-write; do
	command -v "$t" >/dev/null || { echo "bench: needs $t" >&2; exit 2; }
done

vd_setup fmtbench
ENGINE_BIN=${VDISK_BUILD_DIR:-$VDISK_SOURCE_DIR/build}/tests/unit/qcow2/qcow2-bench
if [ "$ENGINE" = 1 ] && [ ! -x "$ENGINE_BIN" ]; then
	echo "bench: BENCH_ENGINE=1 needs $ENGINE_BIN (build it)" >&2
	exit 2
fi
export VDISK_RUN_DIR=$VD_TMP/run
SIZE_BYTES=$(numfmt --from=iec "$SIZE")
RAW=$VD_TMP/filled.raw

machine_details() {
	{
		echo "date: $(date -Is)"
		echo "host: $(uname -a)"
		echo "cpus: $(nproc)"
		lscpu 2>/dev/null | grep -E '^(Model name|Thread|Core|Socket|CPU MHz|L[123]|Hypervisor)' || true
		grep -E '^(MemTotal|MemAvailable)' /proc/meminfo
		echo "images: $VD_TMP ($SIZE) on $(findmnt -no SOURCE,FSTYPE,OPTIONS -T "$VD_TMP" | tr '\n' ' ')"
		echo "fio: $(fio --version)"
		echo "qemu-img: $(qemu-img --version | head -n1)"
		echo "vdisk: $("$VDISK" --version 2>/dev/null || echo '?')"
		echo "build: $VD_BUILD ($(meson introspect --buildoptions "$VD_BUILD" 2>/dev/null |
			python3 -c 'import json,sys; print(" ".join(o["name"]+"="+str(o["value"]) for o in json.load(sys.stdin) if o["name"] in ("buildtype","b_sanitize","optimization")))' 2>/dev/null || echo '?'))"
		echo "git: $(git -C "$VDISK_SOURCE_DIR" rev-parse --short HEAD 2>/dev/null || echo '?')" \
			"($(git -C "$VDISK_SOURCE_DIR" status --porcelain 2>/dev/null | wc -l) uncommitted paths)"
		echo "runtime per case: ${RUNTIME}s  repeat: $REPEAT  quick: $QUICK  qemu-img 4k stride: $STRIDE"
		echo "uptime at start: $(uptime)"
	} >"$OUT/machine.txt"
}

want() { [[ $1 =~ $CASES ]]; }

# record CASE FORMAT WORKLOAD SYSTEM KIND FILE [COUNT BS]
# KIND: fio (JSON), guest (simguest JSON line), qemu (qemu-img bench text).
record() {
	python3 - "$@" >>"$TSV" <<'EOF'
import json, re, sys
case, fmt, wl, system, kind, path = sys.argv[1:7]
iops = mbps = p50 = p99 = float("nan")
status = "ok"
try:
    if kind == "fio":
        j = json.load(open(path))["jobs"][0]
        iops = mbps = 0.0
        for d in ("read", "write"):
            s = j[d]
            if s["total_ios"]:
                iops += s["iops"]; mbps += s["bw_bytes"] / 1e6
                pc = s["lat_ns"].get("percentile") or s["clat_ns"].get("percentile")
                p50 = pc["50.000000"] / 1000; p99 = pc["99.000000"] / 1000
    elif kind == "guest":
        js = [json.loads(l) for l in open(path) if l.strip().startswith("{")]
        x = js[0]
        iops, mbps, p50, p99 = x["iops"], x["mbps"], x["lat_p50_us"], x["lat_p99_us"]
        if x["io_errors"] or x["verification_errors"]:
            status = "io_errors=%d" % x["io_errors"]
    else:
        count, bs = int(sys.argv[7]), int(sys.argv[8])
        m = re.search(r"Run completed in ([0-9.]+) seconds", open(path).read())
        secs = float(m.group(1))
        iops = count / secs; mbps = count * bs / secs / 1e6
except Exception as e:
    status = "FAILED"
def f(v, fmt="%.0f"):
    return "nan" if v != v else fmt % v
print("\t".join([case, fmt, wl, system, f(iops), f(mbps, "%.1f"), f(p50), f(p99), status]))
EOF
}

# run_fio CASE WORKLOAD FILE RW BS QD
run_fio() {
	local c=$1 wl=$2 file=$3 rw=$4 bs=$5 qd=$6 raw=$OUT/raw/$1$REP_TAG.json
	want "$c" || return 0
	vd_log "case $c"
	fio --name="$c" --filename="$file" --size="$SIZE" --rw="$rw" --bs="$bs" \
		--iodepth="$qd" --ioengine=io_uring --direct=1 --runtime="$RUNTIME" --time_based \
		--randrepeat=0 --lat_percentiles=1 --output-format=json "${FIO_EXTRA[@]}" >"$raw" 2>"$OUT/raw/$c.err" || true
	record "$c" raw "$wl" fio fio "$raw"
}

ring_order_for() { # depth -> ring order (32 slots per page)
	local d=$1 o=0
	while [ $((32 << o)) -lt "$d" ] && [ $o -lt 4 ]; do o=$((o + 1)); done
	echo $o
}

DOMID=0
# run_vdisk CASE FORMAT WORKLOAD IMAGE RW BS QD
run_vdisk() {
	local c=$1 fmt=$2 wl=$3 img=$4 rw=$5 bs=$6 qd=$7 raw=$OUT/raw/$1$REP_TAG.json rc=0
	want "$c" || return 0
	vd_log "case $c"
	DOMID=$((DOMID + 1))
	vd_guest_start "$c$REP_TAG" $DOMID --json --no-verify --queues 1 \
		--ring-order "$(ring_order_for "$qd")" --rw "$rw" --bs "$bs" --iodepth "$qd" \
		--runtime "$RUNTIME" "${GUEST_EXTRA[@]}"
	vd_wait_domain $DOMID
	vd_attach $DOMID 51712 "$img" --format "$fmt" "${ATTACH_EXTRA[@]}"
	vd_wait_exit "$c$REP_TAG" $((RUNTIME + 60)) || rc=$?
	[ "$rc" -eq 0 ] || vd_log "guest $c$REP_TAG exited $rc"
	cp "$VD_LOGS/$c$REP_TAG.out" "$raw"
	cp "$VD_LOGS/$c$REP_TAG.err" "$OUT/raw/$c$REP_TAG.err"
	vd_detach $DOMID 51712
	record "$c" "$fmt" "$wl" vdisk guest "$raw"
}

# qbench FMT IMAGE ARGS...: qemu-img bench (O_DIRECT, Linux AIO) on IMAGE,
# with the variant's L2 cache size (QEMU_L2) and flush options (QEMU_EXTRA).
qbench() {
	local fmt=$1 img=$2
	shift 2
	if [ -n "$QEMU_L2" ]; then
		qemu-img bench --image-opts -t none -i native "${QEMU_EXTRA[@]}" "$@" \
			"driver=$fmt,file.filename=$img,l2-cache-size=$QEMU_L2"
	else
		qemu-img bench -f "$fmt" -t none -i native "${QEMU_EXTRA[@]}" "$@" "$img"
	fi
}

# qemu_count FMT IMAGE ARGS...: a request count lasting ~RUNTIME seconds.
qemu_count() {
	local fmt=$1 img=$2 n=256 t
	shift 2
	while :; do
		t=$(qbench "$fmt" "$img" -c "$n" "$@" 2>&1 |
			sed -n 's/^Run completed in \([0-9.]*\) seconds.*/\1/p')
		[ -n "$t" ] || { echo 0; return; }
		if awk -v t="$t" 'BEGIN { exit !(t >= 0.3) }' || [ "$n" -ge 4000000 ]; then
			break
		fi
		n=$((n * 4))
	done
	awk -v n="$n" -v t="$t" -v r="$RUNTIME" 'BEGIN { c = int(n / t * r); if (c < 1) c = 1; print c }'
}

declare -A COUNTS
# run_qemu CASE FORMAT WORKLOAD IMAGE FRESH(0|1) BS QD ARGS...
run_qemu() {
	local c=$1 fmt=$2 wl=$3 img=$4 fresh=$5 bs=$6 qd=$7 raw=$OUT/raw/$1$REP_TAG.txt qfmt count cal
	shift 7
	want "$c" || return 0
	vd_log "case $c"
	qfmt=$fmt
	[ "$fmt" = vhd ] && qfmt=vpc
	# one calibration per case: every repetition sends the same count
	count=${COUNTS[$c]:-}
	if [ -z "$count" ]; then
		cal=$img
		if [ "$fresh" = 1 ]; then
			cal=$VD_TMP/cal.$fmt
			new_image "$fmt" "$cal"
		fi
		count=$(qemu_count "$qfmt" "$cal" -d "$qd" -s "$bs" "$@")
		COUNTS[$c]=$count
		[ "$fresh" = 1 ] && rm -f "$cal"
	fi
	{
		echo "+ qemu-img bench (L2 cache ${QEMU_L2:-default}) ${QEMU_EXTRA[*]} -c $count -d $qd -s $bs $* $img"
		qbench "$qfmt" "$img" -c "$count" -d "$qd" -s "$bs" "$@" 2>&1
	} >"$raw" || true
	record "$c" "$fmt" "$wl" qemu-img qemu "$raw" "$count" "$(numfmt --from=iec "${bs^^}")"
	run_engine "${c%-qemu-img}-engine" "$fmt" "$wl" "$img" "$fresh" "$bs" "$qd" "$count" "$@"
}

# run_engine CASE FORMAT WORKLOAD IMAGE FRESH BS QD COUNT QEMU-ARGS...: the
# engine alone (BENCH_ENGINE=1), with qemu-img bench's arguments and count,
# on a fresh image of its own (FRESH=1) or the same allocated image.
run_engine() {
	local c=$1 fmt=$2 wl=$3 img=$4 fresh=$5 bs=$6 qd=$7 count=$8 raw=$OUT/raw/$1$REP_TAG.txt a
	local args=()
	shift 8
	[ "$ENGINE" = 1 ] && [ "$fmt" != vhd ] && want "$c" || return 0
	vd_log "case $c"
	for a in "$@"; do
		[ "$a" = --no-drain ] || args+=("$a") # the harness never drains
	done
	[ -n "$QEMU_L2" ] && args+=(--l2-cache-size "$QEMU_L2")
	for a in "${QEMU_EXTRA[@]}"; do
		[ "$a" = --no-drain ] || args+=("$a")
	done
	if [ "$fresh" = 1 ]; then
		new_image "$fmt" "$img"
	fi
	{
		echo "+ qcow2-bench -c $count -d $qd -s $bs ${args[*]} $img"
		"$ENGINE_BIN" -c "$count" -d "$qd" -s "$bs" "${args[@]}" "$img" 2>&1
	} >"$raw" || true
	record "$c" "$fmt" "$wl" engine qemu "$raw" "$count" "$(numfmt --from=iec "${bs^^}")"
}

# new_image FMT PATH: a fresh, empty image of SIZE.
new_image() {
	rm -f "$2"
	case $1 in
	vhd) qemu-img create -q -f vpc -o subformat=dynamic,force_size=on "$2" "$SIZE_BYTES" ;;
	qcow2) qemu-img create -q -f qcow2 -o cluster_size=65536 "$2" "$SIZE_BYTES" ;;
	raw) truncate -s "$SIZE_BYTES" "$2" ;;
	esac
}

# ---- run ----------------------------------------------------------------------

machine_details
read -r LOAD1 _ </proc/loadavg
if awk -v l="$LOAD1" -v n="$(nproc)" 'BEGIN { exit !(l > n / 2) }'; then
	vd_log "WARNING: load average $LOAD1 on $(nproc) CPUs: other work is running," \
		"the numbers will be noisy (recorded in machine.txt)"
fi
printf 'case\tformat\tworkload\tsystem\tiops\tmbps\tp50_us\tp99_us\tstatus\n' >"$TSV"

vd_log "filling $RAW ($SIZE) and converting it to allocated vhd and qcow2 images"
fio --name=fill --filename="$RAW" --size="$SIZE" --rw=write --bs=1M --direct=1 \
	--ioengine=io_uring --iodepth=8 --output="$OUT/raw/fill.txt" >/dev/null
for fmt in $FORMATS; do
	case $fmt in
	raw) ln -sf "$RAW" "$VD_TMP/full.raw" ;;
	vhd) qemu-img convert -f raw -O vpc -o subformat=dynamic,force_size=on "$RAW" "$VD_TMP/full.vhd" ;;
	qcow2) qemu-img convert -f raw -O qcow2 -o cluster_size=$CLUSTER "$RAW" "$VD_TMP/full.qcow2" ;;
	*) vd_fail "BENCH_FORMATS: unknown format $fmt" ;;
	esac
	qemu-img info "$VD_TMP/full.$fmt" >>"$OUT/raw/images.txt"
done
echo "variants: $VARIANTS  formats: $FORMATS  flush every: $FLUSH_EVERY" >>"$OUT/machine.txt"
vd_start_all

# set_variant VARIANT FORMAT: the per-case extras; returns 1 if the variant
# does not apply to the format. Sets SUFFIX.
set_variant() {
	GUEST_EXTRA=()
	ATTACH_EXTRA=()
	QEMU_EXTRA=()
	QEMU_L2=
	FIO_EXTRA=()
	SUFFIX=
	case $1 in
	base) ;;
	l2all | l2small)
		[ "$2" = qcow2 ] || return 1
		local b=$(((SIZE_BYTES + CLUSTER - 1) / CLUSTER * 8))
		SUFFIX=-l2all
		if [ "$1" = l2small ]; then
			[ -n "$L2_SMALL" ] || return 1
			b=$L2_SMALL
			SUFFIX=-l2small
		fi
		ATTACH_EXTRA=(--l2-cache-size "$b")
		QEMU_L2=$b
		;;
	flush)
		SUFFIX=-flush$FLUSH_EVERY
		GUEST_EXTRA=(--flush-every "$FLUSH_EVERY")
		QEMU_EXTRA=(--flush-interval="$FLUSH_EVERY" --no-drain)
		FIO_EXTRA=(--fdatasync="$FLUSH_EVERY")
		;;
	*) return 1 ;;
	esac
	return 0
}

# rep_tag N: the raw-file suffix of repetition N
rep_tag() {
	REP_TAG=
	[ "$1" -gt 1 ] && REP_TAG=-r$1
	return 0
}

# 4k random write into fresh images: allocation.
for variant in $VARIANTS; do
	for qd in 1 32; do
	for rep in $(seq "$REPEAT"); do
		rep_tag "$rep"
		if set_variant "$variant" raw && [ "$variant" != l2all ]; then
			wl=rw4k-alloc-qd$qd$SUFFIX
			if want "$wl-raw-fio"; then
				new_image raw "$VD_TMP/fresh.raw"
				run_fio "$wl-raw-fio" "$wl" "$VD_TMP/fresh.raw" randwrite 4k $qd
				rm -f "$VD_TMP/fresh.raw"
			fi
		fi
		for fmt in $FORMATS; do
			set_variant "$variant" "$fmt" || continue
			wl=rw4k-alloc-qd$qd$SUFFIX
			if want "$wl-$fmt-vdisk"; then
				new_image $fmt "$VD_TMP/fresh.$fmt"
				run_vdisk "$wl-$fmt-vdisk" $fmt "$wl" "$VD_TMP/fresh.$fmt" randwrite 4k $qd
				# the image vdisk wrote must check clean (qemu-img check has no vpc support)
				if [ $fmt = raw ]; then
					:
				elif [ $fmt = vhd ]; then
					"$VDISK" check "$VD_TMP/fresh.$fmt" >"$OUT/raw/$wl-$fmt-vdisk$REP_TAG.check.txt" 2>&1 ||
						vd_log "vdisk check after $wl-$fmt-vdisk: exit $? (see raw/)"
				else
					qemu-img check -f qcow2 "$VD_TMP/fresh.$fmt" \
						>"$OUT/raw/$wl-$fmt-vdisk$REP_TAG.check.txt" 2>&1 ||
						vd_log "qemu-img check after $wl-$fmt-vdisk: exit $? (see raw/)"
				fi
			fi
			if want "$wl-$fmt-qemu-img"; then
				new_image $fmt "$VD_TMP/fresh.$fmt"
				run_qemu "$wl-$fmt-qemu-img" $fmt "$wl" "$VD_TMP/fresh.$fmt" 1 4k $qd -w -S "$STRIDE"
			fi
			rm -f "$VD_TMP/fresh.$fmt"
		done
	done
	done
done
REP_TAG=

# Fully allocated images: 4k random read/write, 1M sequential.
# WORKLOAD RW(fio/simguest) BS QD QEMU-ARGS...
alloc_case() {
	local wl=$1 rw=$2 bs=$3 qd=$4 fmt variant rep
	shift 4
	for variant in $VARIANTS; do
		# flushes only where there are writes
		[ "$variant" = flush ] && [[ $rw != *write* ]] && continue
		for rep in $(seq "$REPEAT"); do
			rep_tag "$rep"
			if set_variant "$variant" raw && [ "$variant" != l2all ]; then
				run_fio "$wl$SUFFIX-raw-fio" "$wl$SUFFIX" "$RAW" "$rw" "$bs" "$qd"
			fi
			for fmt in $FORMATS; do
				set_variant "$variant" "$fmt" || continue
				run_vdisk "$wl$SUFFIX-$fmt-vdisk" $fmt "$wl$SUFFIX" "$VD_TMP/full.$fmt" \
					"$rw" "$bs" "$qd"
				run_qemu "$wl$SUFFIX-$fmt-qemu-img" $fmt "$wl$SUFFIX" "$VD_TMP/full.$fmt" 0 \
					"$bs" "$qd" "$@"
			done
		done
	done
	REP_TAG=
}
for qd in 1 32; do
	alloc_case rr4k-qd$qd randread 4k $qd -S "$STRIDE"
	alloc_case rw4k-qd$qd randwrite 4k $qd -w -S "$STRIDE"
done
alloc_case seqr1m-qd8 read 1M 8
alloc_case seqw1m-qd8 write 1M 8 -w
set_variant base raw

vd_stop vdiskd 15 || true
vd_stop hv 10 || true
cp "$VD_LOGS/vdiskd.err" "$OUT/raw/vdiskd.err" 2>/dev/null || true
grep -aiE 'error|fail|corrupt|abort' "$VD_LOGS/vdiskd.err" >"$OUT/raw/vdiskd-errors.txt" 2>/dev/null || true
[ -s "$OUT/raw/vdiskd-errors.txt" ] &&
	vd_log "vdiskd logged $(wc -l <"$OUT/raw/vdiskd-errors.txt") error lines: see raw/vdiskd-errors.txt"
echo "uptime at end: $(uptime)" >>"$OUT/machine.txt"

python3 - "$TSV" <<'EOF' | tee "$OUT/table.txt"
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
def num(v):
    try:
        return float(v)
    except ValueError:
        return float("nan")
# repetitions (BENCH_REPEAT) share a key: keep the median of each column
# and the spread of the main figure, (max - min) / median
groups = {}
for r in rows:
    groups.setdefault((r["format"], r["workload"], r["system"]), []).append(r)
def med(rs, k):
    v = [num(r[k]) for r in rs if num(r[k]) == num(r[k])]
    return statistics.median(v) if v else float("nan")
def fmt0(v, f="%.0f"):
    return "nan" if v != v else f % v
by = {}
for key, rs in groups.items():
    main = "mbps" if "1m" in key[1] else "iops"
    ok = [r for r in rs if r["status"] == "ok"] or rs
    v = [num(r[main]) for r in ok if num(r[main]) == num(r[main])]
    m = statistics.median(v) if v else float("nan")
    spread = (max(v) - min(v)) / m * 100 if len(v) > 1 and m else float("nan")
    by[key] = {"iops": fmt0(med(ok, "iops")), "mbps": fmt0(med(ok, "mbps"), "%.1f"),
               "p50_us": fmt0(med(ok, "p50_us")), "p99_us": fmt0(med(ok, "p99_us")),
               "status": ",".join(sorted({r["status"] for r in rs})),
               "n": str(len(rs)), "spread": fmt0(spread)}
wls = []
for r in rows:
    if r["workload"] not in wls:
        wls.append(r["workload"])
hdr = "%-7s %-16s %-9s %9s %9s %8s %8s %3s %7s  %s"
print(hdr % ("format", "workload", "system", "IOPS", "MB/s", "p50 us", "p99 us", "n",
             "spread%", "status"))
for wl in wls:
    for fmt, system in (("raw", "fio"), ("raw", "vdisk"), ("raw", "qemu-img"),
                        ("vhd", "vdisk"), ("vhd", "qemu-img"),
                        ("raw", "engine"), ("qcow2", "vdisk"), ("qcow2", "qemu-img"),
                        ("qcow2", "engine")):
        r = by.get((fmt, wl, system))
        if r:
            print(hdr % (fmt, wl, system, r["iops"], r["mbps"], r["p50_us"].replace("nan", "-"),
                         r["p99_us"].replace("nan", "-"), r["n"],
                         r["spread"].replace("nan", "-"), r["status"]))
    print()
print("ratios: IOPS (MB/s for 1M): vdisk / qemu-img bench, vdisk / fio on raw,")
print("engine alone (BENCH_ENGINE=1) / qemu-img bench")
print("%-7s %-16s %14s %12s %15s" % ("format", "workload", "vdisk/qemu-img", "vdisk/fio",
                                      "engine/qemu-img"))
for fmt in ("raw", "vhd", "qcow2"):
    for wl in wls:
        if (fmt, wl, "vdisk") not in by:
            continue
        k = "mbps" if "1m" in wl else "iops"
        g = lambda f, s: num(by[(f, wl, s)][k]) if (f, wl, s) in by else float("nan")
        v, q, f = g(fmt, "vdisk"), g(fmt, "qemu-img"), g("raw", "fio")
        rq = v / q if q and q == q and v == v else float("nan")
        rf = v / f if f and f == f and v == v else float("nan")
        e = g(fmt, "engine")
        re_ = e / q if q and q == q and e == e else float("nan")
        print("%-7s %-16s %14.2f %12.2f %15.2f" % (fmt, wl, rq, rf, re_))
EOF
vd_log "results in $OUT"
python3 "$BENCH_DIR/record.py" "$BENCH_DIR/RESULTS.md" formats "$OUT/table.txt" \
	"bench/formats.sh (BENCH_FORMATS=${BENCH_FORMATS:-all}), raw outputs in $OUT"
