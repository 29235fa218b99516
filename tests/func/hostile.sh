#!/usr/bin/env bash
# One hostile case: guest A (domid 2) runs `--hostile CASE` against its own
# VBD while guest B (domid 3) runs a verified workload on another VBD.
# The case must PASS (the backend behaved as the case expects), vdiskd must
# survive, and guest B must see zero verification errors.
#   hostile.sh CASE
set -euo pipefail
# shellcheck source=../../scripts/lib-sim.sh
. "${VDISK_SOURCE_DIR:-$(dirname "$0")/../..}/scripts/lib-sim.sh"
vd_require_tools xenstore-exists

CASE=${1:?usage: hostile.sh CASE}
vd_setup "hostile-$CASE"

A=2
B=3
VDEV=51712
RO=()
case "$CASE" in
write-readonly) RO=(--readonly) ;;
esac

vd_start_all
vd_create_raw "$VD_TMP/a.img" 64M
vd_create_raw "$VD_TMP/b.img" 64M

# B first, so that its I/O is in flight while A misbehaves.
vd_guest_start guestB $B --queues 2 --iodepth 16 --flush-every 64 --discard-every 128 \
	--runtime 4
vd_wait_domain $B
vd_attach $B $VDEV "$VD_TMP/b.img"

vd_guest_start hostile $A --hostile "$CASE"
vd_wait_domain $A
vd_attach $A $VDEV "$VD_TMP/a.img" "${RO[@]}"

rc=0
vd_wait_exit hostile 120 || rc=$?
echo "---- hostile guest ($CASE${RO:+, readonly}), exit $rc ----"
cat "$VD_LOGS/hostile.out"
tail -n 20 "$VD_LOGS/hostile.err"
case "$rc" in
0) ;;
77) vd_skip "hostile case $CASE cannot run in this setup" ;;
124) vd_fail "hostile case $CASE hung" ;;
*) vd_fail "hostile case $CASE failed (exit $rc)" ;;
esac
grep -Eq "^hostile $CASE: .*: PASS\$" "$VD_LOGS/hostile.out" ||
	vd_fail "hostile case $CASE did not print its PASS line"
vd_assert_alive vdiskd hv

vd_guest_check guestB 120
vd_assert_alive vdiskd hv

# A's VBD may be halted by now; its detach only has to finish.
vd_cli detach $A $VDEV || vd_log "detach of the hostile VBD failed (see cli.log)"
vd_detach $B $VDEV
vd_assert_alive vdiskd hv
vd_stop vdiskd 15 || vd_fail "vdiskd did not exit 0 on SIGTERM"
vd_stop hv 10 || vd_fail "hv did not exit 0 on SIGTERM"
echo "PASS hostile $CASE"
