#!/usr/bin/env bash
# While a guest is connected, Debian's xenstore-ls / xenstore-read (the real
# libxenstore, XENSTORED_PATH=$DIR/xenstored) see the backend's and the
# frontend's nodes, both in state 4 (Connected).
set -euo pipefail
# shellcheck source=../../scripts/lib-sim.sh
. "${VDISK_SOURCE_DIR:-$(dirname "$0")/../..}/scripts/lib-sim.sh"
vd_require_tools xenstore-ls xenstore-read xenstore-exists
vd_setup xsview

DOMID=1
VDEV=51712
SIZE=$((64 << 20))
BE=$(vd_be_path $DOMID $VDEV)
FE=$(vd_fe_path $DOMID $VDEV)

vd_start_all
vd_create_raw "$VD_TMP/disk.img" $SIZE
vd_guest_start guest $DOMID --queues 2 --ring-order 1 --iodepth 8 --runtime 6
vd_wait_domain $DOMID
vd_attach $DOMID $VDEV "$VD_TMP/disk.img"

vd_wait_xs_value "$BE/state" 4 30 || vd_fail "backend did not reach state 4"
vd_wait_xs_value "$FE/state" 4 30 || vd_fail "frontend did not reach state 4"

vd_xs ls -f "$BE" >"$VD_TMP/be.txt" || vd_fail "xenstore-ls $BE failed"
vd_xs ls -f "$FE" >"$VD_TMP/fe.txt" || vd_fail "xenstore-ls $FE failed"
vd_xs ls -p "$BE" >"$VD_TMP/be-perms.txt" || true
vd_show "xenstore-ls -f $BE" "$VD_TMP/be.txt"
vd_show "xenstore-ls -f $FE" "$VD_TMP/fe.txt"
vd_show "xenstore-ls -p $BE" "$VD_TMP/be-perms.txt"

# node = "value" lines, as xenstore-ls -f prints them
has() {
	grep -Eq "^$1/$2 = \"$3\"" "$4" || vd_fail "$1/$2 is not \"$3\" (see the listing above)"
}
has_node() {
	grep -Eq "^$1/$2 = " "$3" || vd_fail "no $1/$2 (see the listing above)"
}

# The backend: features, size, state.
for k in feature-flush-cache feature-barrier feature-discard feature-persistent \
	multi-queue-max-queues max-ring-page-order sector-size info; do
	has_node "$BE" "$k" "$VD_TMP/be.txt"
done
has "$BE" sectors $((SIZE / 512)) "$VD_TMP/be.txt"
has "$BE" state 4 "$VD_TMP/be.txt"
has "$BE" frontend-id $DOMID "$VD_TMP/be.txt"
[ "$(vd_xs read "$BE/frontend")" = "$FE" ] || vd_fail "$BE/frontend is not $FE"
nfeat=$(grep -c "^$BE/feature-" "$VD_TMP/be.txt" || true)
echo "backend advertises $nfeat feature-* nodes"

# The frontend: its rings (single- or multi-queue layout), event channels, state.
grep -Eq "^$FE/(ring-ref|ring-ref0|queue-0/ring-ref|queue-0/ring-ref0) = \"[0-9]+\"" "$VD_TMP/fe.txt" ||
	vd_fail "no ring-ref or queue-0/ring-ref in the frontend dir"
grep -Eq "^$FE/(event-channel|queue-0/event-channel) = \"[0-9]+\"" "$VD_TMP/fe.txt" ||
	vd_fail "no event-channel in the frontend dir"
grep -Eq "^$FE/queue-1/(event-channel|ring-ref)" "$VD_TMP/fe.txt" ||
	vd_fail "2 queues asked, no queue-1 in the frontend dir"
has "$FE" state 4 "$VD_TMP/fe.txt"
[ "$(vd_xs read "$FE/backend")" = "$BE" ] || vd_fail "$FE/backend is not $BE"

# xenstore-read, single nodes.
for n in "$BE/state" "$FE/state" "$BE/sectors" "$BE/sector-size" "$BE/feature-flush-cache"; do
	printf 'xenstore-read %s = %s\n' "$n" "$(vd_xs read "$n")"
done
[ "$(vd_xs read "$BE/state")" = 4 ] || vd_fail "xenstore-read $BE/state is not 4"
[ "$(vd_xs read "$FE/state")" = 4 ] || vd_fail "xenstore-read $FE/state is not 4"
[ "$(vd_xs read "$BE/sectors")" = $((SIZE / 512)) ] || vd_fail "xenstore-read sectors is wrong"

# The guest, through its own socket, may read the backend dir (permissions).
XENSTORED_PATH=$VDISK_SIM_DIR/xenstored.d$DOMID vd_xs read "$BE/state" >/dev/null ||
	vd_fail "domain $DOMID cannot read its backend's state"

vd_guest_check guest 60
vd_detach $DOMID $VDEV
vd_assert_alive vdiskd hv
vd_stop vdiskd 15 || vd_fail "vdiskd did not exit 0 on SIGTERM"
vd_stop hv 10 || vd_fail "hv did not exit 0 on SIGTERM"
echo "PASS connect-xenstore-view"
