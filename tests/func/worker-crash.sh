#!/usr/bin/env bash
# Crash isolation: two VBDs, two workers. SIGSEGV one worker: vdiskd logs it,
# marks that VBD failed (vdisk-error, state 5) and stays up, while the other
# guest's verified workload completes with zero errors.
set -euo pipefail
# shellcheck source=../../scripts/lib-sim.sh
. "${VDISK_SOURCE_DIR:-$(dirname "$0")/../..}/scripts/lib-sim.sh"
vd_require_tools xenstore-exists xenstore-read pgrep
vd_setup crash

A=1
B=2
VDEV=51712
BE_A=$(vd_be_path $A $VDEV)
BE_B=$(vd_be_path $B $VDEV)

vd_start_all
DPID=$(vd_pid vdiskd)
vd_create_raw "$VD_TMP/a.img" 64M
vd_create_raw "$VD_TMP/b.img" 64M

# vdiskd's children (the workers), one per line
workers() {
	pgrep -P "$DPID" 2>/dev/null | sort -n || true
}

# The worker serving DOMID: by its process title if it names the VBD, else
# the one child that appeared since BEFORE.
find_worker() {
	local domid=$1 before=$2 p cmd new=()
	for p in $(workers); do
		cmd=$(tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null || true)
		if echo "$cmd" | grep -Eq "(^|[^0-9])$domid/$VDEV([^0-9]|$)|d$domid[/.:-]$VDEV"; then
			echo "$p"
			return 0
		fi
		echo "$before" | grep -qx "$p" || new+=("$p")
	done
	[ "${#new[@]}" -eq 1 ] && echo "${new[0]}"
}

wait_worker() {
	local domid=$1 before=$2 w= deadline=$((SECONDS + $(vd_timeout 20)))
	while [ -z "$w" ]; do
		[ "$SECONDS" -lt "$deadline" ] || return 1
		w=$(find_worker "$domid" "$before" || true)
		[ -n "$w" ] || sleep 0.1
	done
	echo "$w"
}

# A: long enough to still be running when its worker dies.
before=$(workers)
vd_guest_start guestA $A --queues 2 --iodepth 16 --runtime "$(vd_timeout 30)"
vd_wait_domain $A
vd_attach $A $VDEV "$VD_TMP/a.img"
vd_wait_xs_value "$BE_A/state" 4 30 || vd_fail "VBD A did not connect"
WA=$(wait_worker $A "$before") || vd_fail "no worker process for VBD A"

before=$(workers)
vd_guest_start guestB $B --queues 2 --iodepth 16 --flush-every 50 --runtime 6
vd_wait_domain $B
vd_attach $B $VDEV "$VD_TMP/b.img"
vd_wait_xs_value "$BE_B/state" 4 30 || vd_fail "VBD B did not connect"
WB=$(wait_worker $B "$before") || vd_fail "no worker process for VBD B"
[ "$WA" != "$WB" ] || vd_fail "both VBDs report the same worker $WA"
echo "vdiskd $DPID, worker A $WA ($(tr '\0' ' ' </proc/$WA/cmdline)), worker B $WB ($(tr '\0' ' ' </proc/$WB/cmdline))"

sleep 1
echo "kill -SEGV $WA"
kill -SEGV "$WA"

vd_wait_xs_value "$BE_A/state" 5 20 || vd_fail "VBD A's backend state did not become 5 after its worker crashed"
err=$(vd_xs read "$BE_A/vdisk-error" 2>/dev/null) || vd_fail "no $BE_A/vdisk-error after the crash"
echo "$BE_A/vdisk-error = $err"
[ -n "$err" ] || vd_fail "$BE_A/vdisk-error is empty"

# A line from vdiskd itself (not the worker) naming the dead worker's pid and
# what happened to it.
CRASH_RE="^vdiskd.*(\\b$WA\\b.*(crash|signal|SEGV|killed)|(crash|signal|SEGV|killed).*\\b$WA\\b)"
deadline=$((SECONDS + $(vd_timeout 10)))
until grep -Eqi "$CRASH_RE" "$VD_LOGS/vdiskd.err" "$VD_LOGS/vdiskd.out"; do
	[ "$SECONDS" -lt "$deadline" ] || vd_fail "vdiskd did not log the crash of worker $WA"
	sleep 0.2
done
echo "vdiskd logged:"
grep -Ehi "$CRASH_RE" "$VD_LOGS/vdiskd.err" "$VD_LOGS/vdiskd.out"

vd_assert_alive vdiskd hv
vd_pid_alive "$WB" || vd_fail "worker B ($WB) died with worker A"
[ "$(vd_xs read "$BE_B/state")" = 4 ] || vd_fail "VBD B is no longer connected"

vd_guest_check guestB 120
vd_assert_alive vdiskd hv

# A's guest lost its disk: it may fail or wait; stop it either way.
vd_stop guestA 10 || true
vd_cli detach $A $VDEV || vd_log "detach of the crashed VBD failed (see cli.log)"
vd_detach $B $VDEV
vd_assert_alive vdiskd hv
vd_stop vdiskd 15 || vd_fail "vdiskd did not exit 0 on SIGTERM"
vd_stop hv 10 || vd_fail "hv did not exit 0 on SIGTERM"
echo "PASS worker-crash"
