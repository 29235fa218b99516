#!/usr/bin/env bash
# `vdisk attach` tunables reach the queues and `vdisk stats` shows them:
#  1. polling 77 us, persistent grants and zero-copy on: the stats report
#     polling_duration_us 77, persistent-grant hits and zero-copy requests;
#  2. polling off, zero-copy off, a guest without feature-persistent: no
#     persistent-grant lookups and no zero-copy requests, only grant copies.
# Both guests verify their data (0 verification errors).
set -euo pipefail
# shellcheck source=../../scripts/lib-sim.sh
. "${VDISK_SOURCE_DIR:-$(dirname "$0")/../..}/scripts/lib-sim.sh"
vd_require_tools xenstore-exists python3
vd_setup stats-tunables
vd_start_all
VDEV=51712

# stats_json DOMID FILE: one interval of `vdisk stats --json`, while the guest runs.
stats_json() {
	timeout -k 5 "$(vd_timeout 30)" "$VDISK" stats "$1" $VDEV --interval 1 --json >"$2" ||
		vd_fail "vdisk stats $1 $VDEV failed"
	vd_show "stats d$1" "$2"
}

# check_stats FILE PYTHON-CONDITION...: each condition over s (the JSON) and
# q (its queues summed), e.g. 'q["pgrant_hits"] > 0'.
check_stats() {
	local f=$1
	shift
	python3 - "$f" "$@" <<'EOF' || vd_fail "stats check failed: $*"
import json, sys
s = json.load(open(sys.argv[1]))
q = {}
for qu in s["queues"]:
    for k, v in qu.items():
        q[k] = q.get(k, 0) + v
for cond in sys.argv[2:]:
    if not eval(cond):
        print("FAILED:", cond, "with", {k: q[k] for k in q if not k.startswith("lat")},
              "polling", s["polling_duration_us"], s["polling_idle_threshold"])
        sys.exit(1)
    print("ok:", cond)
EOF
}

for d in 1 2; do
	vd_create_raw "$VD_TMP/disk$d.img" 64M
done

# 1: polling on, persistent grants, zero-copy.
vd_guest_start g1 1 --runtime 5 --rw randrw --bs 4k --iodepth 16 --queues 2 --persistent
vd_wait_domain 1
vd_attach 1 $VDEV "$VD_TMP/disk1.img" --polling-duration 77 --polling-idle-threshold 0 \
	--zero-copy 1 --io-fixed 1
[ "$(vd_xs read "$(vd_be_path 1 $VDEV)/polling-duration")" = 77 ] ||
	vd_fail "polling-duration not written"
vd_wait_xs_value "$(vd_be_path 1 $VDEV)/state" 4 30 || vd_fail "VBD 1 did not connect"
sleep 1
stats_json 1 "$VD_TMP/s1.json"
check_stats "$VD_TMP/s1.json" 's["polling_duration_us"] == 77' 's["polling_idle_threshold"] == 0' \
	'len(s["queues"]) == 2' 'q["reqs"] > 100' 'q["iops"] > 0' 'q["pgrant_hits"] > 0' \
	'q["zero_copy_reqs"] > 0' 'q["errors"] == 0' 'q["invalid"] == 0'
# The table form carries the same columns.
timeout -k 5 "$(vd_timeout 30)" "$VDISK" stats 1 $VDEV --interval 0 >"$VD_TMP/s1.txt" ||
	vd_fail "vdisk stats (table) failed"
vd_show "stats d1 (table)" "$VD_TMP/s1.txt"
grep -q 'polling 77 us' "$VD_TMP/s1.txt" || vd_fail "table: no 'polling 77 us'"
grep -q 'pgrnt%' "$VD_TMP/s1.txt" || vd_fail "table: no persistent-grant column"
vd_guest_check g1 60

# 2: polling off, zero-copy off, no persistent grants from the guest.
vd_guest_start g2 2 --runtime 4 --rw randrw --bs 4k --iodepth 16 --no-persistent
vd_wait_domain 2
vd_attach 2 $VDEV "$VD_TMP/disk2.img" --polling-duration 0 --zero-copy 0 --io-fixed 0
vd_wait_xs_value "$(vd_be_path 2 $VDEV)/state" 4 30 || vd_fail "VBD 2 did not connect"
sleep 1
stats_json 2 "$VD_TMP/s2.json"
check_stats "$VD_TMP/s2.json" 's["polling_duration_us"] == 0' 'q["reqs"] > 100' \
	'q["pgrant_hits"] + q["pgrant_maps"] == 0' 'q["zero_copy_reqs"] == 0' \
	'q["grant_copy_calls"] > 0' 'q["poll_windows"] == 0'
vd_guest_check g2 60

# Bad values are usage errors (exit 2), before xenstore is touched.
for bad in "--polling-duration 2000000" "--polling-idle-threshold 101" "--zero-copy 2" \
	"--io-fixed yes"; do
	rc=0
	# shellcheck disable=SC2086
	vd_cli attach 2 51728 "$VD_TMP/disk2.img" $bad || rc=$?
	[ "$rc" -eq 2 ] || vd_fail "attach $bad: exit $rc, wanted 2 (usage)"
	vd_xs exists "$(vd_be_path 2 51728)" 2>/dev/null && vd_fail "attach $bad wrote the VBD"
done
vd_assert_alive vdiskd hv
vd_detach 1 $VDEV
vd_detach 2 $VDEV
vd_stop vdiskd 15 || vd_fail "vdiskd did not exit 0 on SIGTERM"
vd_stop hv 10 || vd_fail "hv did not exit 0 on SIGTERM"
echo "stats-tunables: OK"
