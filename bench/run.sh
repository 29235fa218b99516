#!/usr/bin/env bash
# vdisk benchmark: one command, one machine, one backing file.
#
#   bench/run.sh                  full run (10 s per case)
#   BENCH_QUICK=1 bench/run.sh    a few seconds per case (smoke run)
#
# Systems, side by side on the same file:
#   fio    fio --ioengine=io_uring --direct=1 on the file: the ceiling (1)
#   base   vdisk, simguest with 1 queue, event mode (polling-duration 0):
#          the tapdisk3-like baseline (2)
#   prod   vdisk, simguest with J queues, adaptive polling and batching (3)
#   null-*, mem-*   the same two vdisk modes on the null and mem io backends:
#          the datapath's own cost per request, no disk
#   prod-* variants of prod, one knob changed each (4k QD32 j1 and 1M cases;
#          nopg and nozc also on the mem image, as mem-prod-*):
#          prod-nopg  the guest does not offer feature-persistent (grant copy)
#          prod-nozc  persistent grants, memcpy via bounce pages (zero-copy 0)
#          prod-nofix no io_uring registered buffers/files (io-fixed 0)
#          prod-wb    cache writeback (page cache) instead of direct
#          (prod itself: persistent grants, zero-copy, registered buffers, direct)
# Workloads: 4k randread/randwrite at QD1 and QD32 with 1 and 2 jobs (fio
# jobs = vdisk queues for prod; base keeps one queue with the summed depth),
# 1M sequential read/write at QD8, and the aggregate: 4 guests x 2 disks at
# once (8 read-only VBDs on the file, 4k randread QD32) vs fio with 8 jobs.
#
# Output: a table (stdout and table.txt), results.tsv, chart.png (gnuplot),
# raw fio/simguest output and machine details in bench/out/<date>/ (untracked);
# the table also replaces the datapath section of bench/RESULTS.md.
# Backend CPU per I/O: the worker process's getrusage (user+sys, all queue
# threads) from connect to disconnect, as it logs it, over the requests it
# served; for fio, the CPU of the fio process (getrusage of children).
#
# Knobs (environment):
#   VDISK_BUILD_DIR   build dir (default ./build; use a release build)
#   BENCH_QUICK=1     short cases (BENCH_RUNTIME default 2 instead of 10)
#   BENCH_RUNTIME     seconds per case
#   BENCH_SIZE        backing file size (default 1G, quick 512M)
#   BENCH_FILE        backing file (default: a temp file, filled with data first)
#   BENCH_CASES       regex on case names to run a subset (e.g. 'rr4k|mem')
#   BENCH_POLL_US     polling-duration for prod (default: the daemon's default)
#   BENCH_POLL_IDLE   polling-idle-threshold for prod (default: the daemon's)
#   BENCH_OUT         results dir (default bench/out/<date>)
# Needs: fio, python3, xenstore-utils; gnuplot for the chart (skipped if absent).
# Not part of any test suite: run it by hand.
set -euo pipefail
BENCH_DIR=$(cd "$(dirname "$0")" && pwd)
export VDISK_SOURCE_DIR=${VDISK_SOURCE_DIR:-$(cd "$BENCH_DIR/.." && pwd)}
# shellcheck source=../scripts/lib-sim.sh
. "$VDISK_SOURCE_DIR/scripts/lib-sim.sh"

QUICK=${BENCH_QUICK:-0}
if [ "$QUICK" = 1 ]; then
	RUNTIME=${BENCH_RUNTIME:-2}
	SIZE=${BENCH_SIZE:-512M}
else
	RUNTIME=${BENCH_RUNTIME:-10}
	SIZE=${BENCH_SIZE:-1G}
fi
CASES=${BENCH_CASES:-.}
STAMP=$(date +%Y%m%d-%H%M%S)
OUT=${BENCH_OUT:-$BENCH_DIR/out/$STAMP}
mkdir -p "$OUT/raw"
OUT=$(cd "$OUT" && pwd)
TSV=$OUT/results.tsv

command -v fio >/dev/null || { echo "bench: needs fio (apt install fio)" >&2; exit 2; }
command -v python3 >/dev/null || { echo "bench: needs python3" >&2; exit 2; }
command -v xenstore-write >/dev/null || { echo "bench: needs xenstore-utils" >&2; exit 2; }

vd_setup bench
export VDISK_RUN_DIR=$VD_TMP/run   # workers' stats sockets (vdisk stats)
FILE=${BENCH_FILE:-$VD_TMP/disk.img}
SIZE_BYTES=$(numfmt --from=iec "$SIZE")
MEM_SIZE=256M

machine_details() {
	{
		echo "date: $(date -Is)"
		echo "host: $(uname -a)"
		echo "cpus: $(nproc)"
		lscpu 2>/dev/null | grep -E '^(Model name|Thread|Core|Socket|CPU MHz|L[123])' || true
		grep -E '^(MemTotal|MemAvailable)' /proc/meminfo
		echo "file: $FILE ($SIZE) on $(findmnt -no SOURCE,FSTYPE -T "$(dirname "$FILE")" | tr '\n' ' ')"
		echo "fio: $(fio --version)"
		echo "vdisk: $("$VDISK" --version 2>/dev/null || echo '?')"
		echo "build: $VD_BUILD ($(meson introspect --buildoptions "$VD_BUILD" 2>/dev/null |
			python3 -c 'import json,sys; print(" ".join(o["name"]+"="+str(o["value"]) for o in json.load(sys.stdin) if o["name"] in ("buildtype","b_sanitize","optimization")))' 2>/dev/null || echo '?'))"
		echo "git: $(git -C "$VDISK_SOURCE_DIR" rev-parse --short HEAD 2>/dev/null || echo '?')" \
			"($(git -C "$VDISK_SOURCE_DIR" status --porcelain 2>/dev/null | wc -l) uncommitted paths)"
		echo "runtime per case: ${RUNTIME}s  quick: $QUICK"
		echo "polling for prod: duration=${BENCH_POLL_US:-default} idle-threshold=${BENCH_POLL_IDLE:-default}"
		echo "loadavg: $(cat /proc/loadavg)"
	} >"$OUT/machine.txt"
}

# ---- helpers ----------------------------------------------------------------

# Backend CPU of domain D's worker while connected: at disconnect the worker
# logs "served N requests; backend cpu_us=X" (getrusage over the connection,
# queue threads included). Waits up to 10 s for the line.
worker_cpu_us() {
	local d=$1 line deadline=$((SECONDS + 10))
	while :; do
		line=$(grep -a "worker d$d/51712\[.*backend cpu_us=" "$VD_LOGS/vdiskd.err" | tail -n1 || true)
		[ -z "$line" ] || break
		[ "$SECONDS" -lt "$deadline" ] || { echo 0; return; }
		sleep 0.1
	done
	line=${line##*cpu_us=}
	echo "${line%% *}"
}

ring_order_for() { # depth -> ring order (32 slots per page)
	local d=$1 o=0
	while [ $((32 << o)) -lt "$d" ] && [ $o -lt 4 ]; do o=$((o + 1)); done
	echo $o
}

record() { # case workload system json-file cpu_us
	python3 - "$@" >>"$TSV" <<'EOF'
import json, sys
case, wl, system, path, cpu_us = sys.argv[1:6]
cpu_us = float(cpu_us)
try:
    js = [json.load(open(path))]              # fio: one document
except Exception:
    try:                                      # simguests: one line each
        js = [json.loads(l) for l in open(path) if l.strip().startswith("{")]
    except Exception:
        js = []
if not js:
    print("\t".join([case, wl, system, "0", "0", "0", "0", "nan", "FAILED"]))
    sys.exit(0)
if "jobs" in js[0]:                       # fio
    j = js[0]["jobs"][0]                  # group_reporting: one merged job
    ops = iops = mbps = 0.0
    lat = None
    for d in ("read", "write"):
        s = j[d]
        if s["total_ios"]:
            ops += s["total_ios"]; iops += s["iops"]; mbps += s["bw_bytes"] / 1e6
            lat = s["lat_ns"].get("percentile") or s["clat_ns"].get("percentile")
    p50 = lat["50.000000"] / 1000 if lat else 0
    p99 = lat["99.000000"] / 1000 if lat else 0
else:                                     # one simguest JSON line per disk
    ops = sum(x["ops"] for x in js); iops = sum(x["iops"] for x in js)
    mbps = sum(x["mbps"] for x in js)
    p50 = max(x["lat_p50_us"] for x in js); p99 = max(x["lat_p99_us"] for x in js)
    bad = sum(x["io_errors"] + x["verification_errors"] for x in js)
    if bad:
        system += "!"
cpu = cpu_us / ops if ops else float("nan")
print("\t".join([case, wl, system, "%.0f" % iops, "%.1f" % mbps, "%.0f" % p50, "%.0f" % p99,
                 "%.2f" % cpu, "ok"]))
EOF
}

want() { [[ $1 =~ $CASES ]]; }

# run_fio CASE WORKLOAD RW BS QD JOBS
run_fio() {
	local c=$1 wl=$2 rw=$3 bs=$4 qd=$5 jobs=$6 raw=$OUT/raw/$1.json cpu
	want "$c" || return 0
	vd_log "case $c"
	cpu=$(python3 - "$raw" fio --name="$c" --filename="$FILE" --size="$SIZE" --rw="$rw" \
		--bs="$bs" --iodepth="$qd" --numjobs="$jobs" --thread --group_reporting \
		--ioengine=io_uring --direct=1 --runtime="$RUNTIME" --time_based --ramp_time=0 \
		--lat_percentiles=1 --output-format=json <<'EOF'
import resource, subprocess, sys
out = open(sys.argv[1], "w")
rc = subprocess.call(sys.argv[2:], stdout=out, stderr=subprocess.DEVNULL)
r = resource.getrusage(resource.RUSAGE_CHILDREN)
print("%.0f" % ((r.ru_utime + r.ru_stime) * 1e6))
EOF
)
	record "$c" "$wl" fio "$raw" "$cpu"
}

DOMID=0
# run_vdisk CASE WORKLOAD SYSTEM ATTACH-ARGS... -- GUEST-ARGS...
# SYSTEM *base: polling-duration 0; *prod: the daemon's default or BENCH_POLL_*.
# NGUESTS (default 1) guests at once, one disk each (simguest drives one VBD).
# BE_KEYS: "key=value ..." written to the backend dir right after attach (read
# by the worker when the frontend connects).
run_vdisk() {
	local c=$1 wl=$2 sys=$3
	shift 3
	local attach=() gargs=() g name raw=$OUT/raw/$c.json cpu be first names=()
	while [ "$1" != -- ]; do attach+=("$1"); shift; done
	shift
	gargs=("$@")
	want "$c" || return 0
	vd_log "case $c"
	first=$((DOMID + 1))
	for ((g = 0; g < ${NGUESTS:-1}; g++)); do
		DOMID=$((DOMID + 1))
		names+=("$c-d$DOMID")
		vd_guest_start "$c-d$DOMID" $DOMID --json --no-verify "${gargs[@]}"
	done
	for ((g = first; g <= DOMID; g++)); do
		vd_wait_domain $g
		vd_attach $g 51712 "${attach[@]}"
		# the worker applies these live, whenever they are written
		be=$(vd_be_path $g 51712)
		for kv in ${BE_KEYS:-}; do
			vd_xs write "$be/${kv%%=*}" "${kv#*=}"
		done
		case $sys in
		*base) vd_xs write "$be/polling-duration" 0 ;;
		*)
			[ -z "${BENCH_POLL_US:-}" ] || vd_xs write "$be/polling-duration" "$BENCH_POLL_US"
			[ -z "${BENCH_POLL_IDLE:-}" ] ||
				vd_xs write "$be/polling-idle-threshold" "$BENCH_POLL_IDLE"
			;;
		esac
	done
	: >"$raw"
	for name in "${names[@]}"; do
		vd_wait_exit "$name" $((RUNTIME + 60)) || vd_log "guest $name exited $?"
		cat "$VD_LOGS/$name.out" >>"$raw"
	done
	cpu=0
	for ((g = first; g <= DOMID; g++)); do
		cpu=$((cpu + $(worker_cpu_us $g)))
	done
	for ((g = first; g <= DOMID; g++)); do
		vd_detach $g 51712
	done
	record "$c" "$wl" "$sys" "$raw" "$cpu"
}

# prod with one knob changed: PREFIX WORKLOAD ATTACH-ARGS... -- GUEST-ARGS...
# (PREFIX "mem-": the mem image, where only the grant knobs mean anything)
variants() {
	local pre=$1 wl=$2 attach=() gargs=()
	shift 2
	while [ "$1" != -- ]; do attach+=("$1"); shift; done
	shift
	gargs=("$@")
	run_vdisk "$wl-${pre}prod-nopg" "$wl" "${pre}prod-nopg" "${attach[@]}" -- "${gargs[@]}" \
		--no-persistent
	BE_KEYS="zero-copy=0" run_vdisk "$wl-${pre}prod-nozc" "$wl" "${pre}prod-nozc" \
		"${attach[@]}" -- "${gargs[@]}"
	[ -z "$pre" ] || return 0
	BE_KEYS="io-fixed=0" run_vdisk "$wl-prod-nofix" "$wl" prod-nofix "${attach[@]}" -- \
		"${gargs[@]}"
	run_vdisk "$wl-prod-wb" "$wl" prod-wb "${attach[@]}" --cache writeback -- "${gargs[@]}"
}

# 4k random: WORKLOAD rw qd jobs
rand_case() {
	local wl=$1 rw=$2 qd=$3 j=$4 dep img pre att
	dep=$((qd * j))
	run_fio "$wl-fio" "$wl" "$rw" 4k "$qd" "$j"
	for img in raw null mem; do
		case $img in
		raw) pre=; att=("$FILE" --format raw) ;;
		null) pre=null-; att=(null --format raw --io null --size "$SIZE") ;;
		mem) pre=mem-; att=(mem --format raw --io mem --size "$MEM_SIZE") ;;
		esac
		run_vdisk "$wl-${pre}base" "$wl" "${pre}base" "${att[@]}" -- \
			--queues 1 --ring-order "$(ring_order_for "$dep")" --iodepth "$dep" \
			--rw "$rw" --bs 4k --runtime "$RUNTIME"
		run_vdisk "$wl-${pre}prod" "$wl" "${pre}prod" "${att[@]}" -- \
			--queues "$j" --ring-order "$(ring_order_for "$qd")" --iodepth "$qd" \
			--rw "$rw" --bs 4k --runtime "$RUNTIME"
	done
	if [ "$qd" = 32 ] && [ "$j" = 1 ]; then
		variants "" "$wl" "$FILE" --format raw -- --queues 1 --ring-order 0 --iodepth 32 \
			--rw "$rw" --bs 4k --runtime "$RUNTIME"
		variants mem- "$wl" mem --format raw --io mem --size "$MEM_SIZE" -- --queues 1 \
			--ring-order 0 --iodepth 32 --rw "$rw" --bs 4k --runtime "$RUNTIME"
	fi
}

seq_case() {
	local wl=$1 rw=$2
	run_fio "$wl-fio" "$wl" "$rw" 1M 8 1
	run_vdisk "$wl-base" "$wl" base "$FILE" --format raw -- \
		--queues 1 --iodepth 8 --rw "$rw" --bs 1M --runtime "$RUNTIME"
	run_vdisk "$wl-prod" "$wl" prod "$FILE" --format raw -- \
		--queues 1 --iodepth 8 --rw "$rw" --bs 1M --runtime "$RUNTIME"
	variants "" "$wl" "$FILE" --format raw -- --queues 1 --iodepth 8 --rw "$rw" --bs 1M \
		--runtime "$RUNTIME"
	run_vdisk "$wl-mem-prod" "$wl" mem-prod mem --format raw --io mem --size "$MEM_SIZE" -- \
		--queues 1 --iodepth 8 --rw "$rw" --bs 1M --runtime "$RUNTIME"
	variants mem- "$wl" mem --format raw --io mem --size "$MEM_SIZE" -- --queues 1 \
		--iodepth 8 --rw "$rw" --bs 1M --runtime "$RUNTIME"
}

# ---- run ----------------------------------------------------------------------

machine_details
read -r LOAD1 _ </proc/loadavg
if awk -v l="$LOAD1" -v n="$(nproc)" 'BEGIN { exit !(l > n / 2) }'; then
	vd_log "WARNING: load average $LOAD1 on $(nproc) CPUs: other work is running," \
		"the numbers will be noisy (recorded in machine.txt)"
fi
printf 'case\tworkload\tsystem\tiops\tmbps\tp50_us\tp99_us\tcpu_us_per_io\tstatus\n' >"$TSV"
if [ -z "${BENCH_FILE:-}" ] || [ ! -s "$FILE" ]; then
	vd_log "filling $FILE ($SIZE) so reads hit the disk"
	fio --name=fill --filename="$FILE" --size="$SIZE" --rw=write --bs=1M --direct=1 \
		--ioengine=io_uring --iodepth=8 --output="$OUT/raw/fill.txt" >/dev/null
fi
vd_start_all

for qd in 1 32; do
	for j in 1 2; do
		rand_case "rr4k-qd$qd-j$j" randread $qd $j
		rand_case "rw4k-qd$qd-j$j" randwrite $qd $j
	done
done
seq_case seqr1m-qd8 read
seq_case seqw1m-qd8 write

# Aggregate: 4 guests x 2 disks = 8 disks at once. simguest drives one VBD per
# process, so that is 8 single-disk guests; read-only VBDs of the one file
# (4k randread QD32 each); fio with 8 jobs at QD32.
run_fio agg8-rr4k-qd32-fio agg8-rr4k-qd32 randread 4k 32 8
for sys in base prod; do
	NGUESTS=8 run_vdisk "agg8-rr4k-qd32-$sys" agg8-rr4k-qd32 "$sys" "$FILE" --format raw --readonly -- \
		--queues "$([ "$sys" = base ] && echo 1 || echo 2)" --ring-order 1 \
		--iodepth "$([ "$sys" = base ] && echo 32 || echo 16)" --rw randread --bs 4k \
		--runtime "$RUNTIME"
done

vd_stop vdiskd 15 || true
vd_stop hv 10 || true

python3 "$BENCH_DIR/report.py" "$OUT" | tee "$OUT/table.txt"
if command -v gnuplot >/dev/null; then
	gnuplot "$OUT/chart.gp" 2>"$OUT/gnuplot.err" && vd_log "chart: $OUT/chart.png" ||
		vd_log "gnuplot failed (see $OUT/gnuplot.err)"
fi
vd_log "results in $OUT"
python3 "$BENCH_DIR/record.py" "$BENCH_DIR/RESULTS.md" datapath "$OUT/table.txt" \
	"bench/run.sh${BENCH_QUICK:+ BENCH_QUICK=$BENCH_QUICK}, raw outputs in $OUT"
