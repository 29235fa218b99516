#!/usr/bin/env bash
# profile: mem image QD32 base vs prod batch sizes; null QD1 perf profile of worker + guest
set -euo pipefail
export VDISK_BUILD_DIR=/work/main/build VDISK_SOURCE_DIR=/work/main VDISK_KEEP_TMP=1
. /work/main/scripts/lib-sim.sh
vd_setup prof
export VDISK_RUN_DIR=$VD_TMP/run
vd_start_all
OUT=/tmp/prof-out; rm -rf $OUT; mkdir -p $OUT
run() { # name domid poll guest-args...
	local name=$1 d=$2 poll=$3; shift 3
	vd_guest_start $name $d --no-verify --runtime 8 "$@"
	vd_wait_domain $d
	vd_attach $d 51712 mem --format raw --io mem --size 1G --polling-duration $poll
	vd_wait_xs_value "$(vd_be_path $d 51712)/state" 4 30
	sleep 2
	"$VDISK" stats $d 51712 --interval 3 > $OUT/$name.stats
	vd_wait_exit $name 60 || true
	grep -E "IOPS|lat p50" "$VD_LOGS/$name.out" > $OUT/$name.guest || true
	vd_detach $d 51712
}
run mem-qd32-base 1 0 --queues 1 --iodepth 32 --rw randread --bs 4k
run mem-qd32-prod 2 50 --queues 1 --iodepth 32 --rw randread --bs 4k
# QD1 null with perf over the whole system (cpu-clock), 5 s mid-run
vd_guest_start nullqd1 3 --no-verify --runtime 10 --queues 1 --iodepth 1 --rw randread --bs 4k
vd_wait_domain 3
vd_attach 3 51712 null --format raw --io null --size 1G
vd_wait_xs_value "$(vd_be_path 3 51712)/state" 4 30
sleep 2
perf record -e cpu-clock -a -g -o $OUT/perf-null-qd1.data -- sleep 5 > $OUT/perf-rec.log 2>&1 || true
"$VDISK" stats 3 51712 --interval 0 > $OUT/nullqd1.stats
vd_wait_exit nullqd1 60 || true
grep -E "IOPS|lat p50" "$VD_LOGS/nullqd1.out" > $OUT/nullqd1.guest || true
vd_detach 3 51712
vd_stop vdiskd 15 || true
vd_stop hv 10 || true
echo done
