#!/usr/bin/env bash
# Image locks through vdiskd: one qcow2 attached to two domains, the second
# attach fails (vdisk-error in xenstore, vdisk attach exits non-zero with
# the lock message); two --readonly attaches of one image share it, a
# read-write attach next to them fails; kill -9 of a worker releases its
# locks (a new attach of its image succeeds and serves a verified
# workload), and right after detach the image is free; a second vdiskd on
# the same run dir refuses to start.
set -euo pipefail
# shellcheck source=../../scripts/lib-sim.sh
. "${VDISK_SOURCE_DIR:-$(dirname "$0")/../..}/scripts/lib-sim.sh"
vd_require_tools xenstore-read pgrep
vd_setup lock

VDEV=51712
vd_start_all
DPID=$(vd_pid vdiskd)
IMG=$VD_TMP/disk.qcow2
RO=$VD_TMP/ro.qcow2
vd_cli create -f qcow2 "$IMG" 64M || vd_fail "create $IMG"
vd_cli create -f qcow2 "$RO" 64M || vd_fail "create $RO"

workers() { pgrep -P "$DPID" 2>/dev/null | sort -n || true; }
# attach_must_fail DOMID IMAGE [options]: non-zero exit, lock message, vdisk-error
attach_must_fail() {
	local domid=$1 img=$2 out rc=0 err
	shift 2
	out=$(timeout -k 5 "$(vd_timeout 60)" "$VDISK" attach "$domid" $VDEV "$img" -f qcow2 "$@" 2>&1) ||
		rc=$?
	echo "vdisk attach $domid $VDEV $img $*: exit $rc: $out"
	[ "$rc" -ne 0 ] || vd_fail "attach of $img to domain $domid succeeded while the image is in use"
	grep -q 'failed to get .*lock' <<<"$out" || vd_fail "attach failed without the lock message"
	err=$(vd_xs read "$(vd_be_path "$domid" $VDEV)/vdisk-error" 2>/dev/null) ||
		vd_fail "no vdisk-error for domain $domid"
	echo "  vdisk-error: $err"
	grep -q 'failed to get .*lock' <<<"$err" || vd_fail "vdisk-error does not name the lock"
	vd_cli detach "$domid" $VDEV || vd_fail "detach of the refused VBD $domid"
}

# refused() NAME DOMID: a guest whose disk will be refused (it gives up by itself)
refused() { vd_guest_start "$1" "$2" --queues 1 --wait 5; vd_wait_domain "$2"; }

echo "== one image, two domains"
before=$(workers)
vd_guest_start guest1 1 --queues 1 --iodepth 4 --runtime "$(vd_timeout 60)"
vd_wait_domain 1
vd_attach 1 $VDEV "$IMG" -f qcow2
vd_wait_xs_value "$(vd_be_path 1 $VDEV)/state" 4 30 || vd_fail "VBD 1 did not connect"
W1=
for p in $(workers); do echo "$before" | grep -qx "$p" || W1=$p; done
[ -n "$W1" ] || vd_fail "no worker for VBD 1"
refused guest2 2
attach_must_fail 2 "$IMG"
refused guest7 7
attach_must_fail 7 "$IMG" --readonly
vd_stop guest2 10 || true
vd_stop guest7 10 || true

echo "== two --readonly attaches share an image, a writer does not"
vd_guest_start guest3 3 --queues 1 --rw randread --iodepth 4 --runtime 2
vd_guest_start guest4 4 --queues 1 --rw randread --iodepth 4 --runtime 2
vd_wait_domain 3
vd_wait_domain 4
vd_attach 3 $VDEV "$RO" -f qcow2 --readonly
vd_attach 4 $VDEV "$RO" -f qcow2 --readonly
refused guest5 5
attach_must_fail 5 "$RO"
vd_guest_check guest3 60
vd_guest_check guest4 60
vd_stop guest5 10 || true
vd_detach 3 $VDEV
vd_detach 4 $VDEV

echo "== kill -9 the worker of VBD 1 ($W1): its locks go with it"
kill -KILL "$W1"
vd_wait_xs_value "$(vd_be_path 1 $VDEV)/state" 5 20 || vd_fail "VBD 1 not marked failed"
vd_stop guest1 10 || true
ino=$(stat -c %i "$IMG")
deadline=$((SECONDS + $(vd_timeout 10)))
while grep -q ":$ino " /proc/locks; do
	[ "$SECONDS" -lt "$deadline" ] || vd_fail "the locks on $IMG outlived worker $W1"
	sleep 0.1
done
echo "no lock left on $IMG (inode $ino) in /proc/locks"
vd_cli detach 1 $VDEV || vd_cli detach --force 1 $VDEV || vd_fail "detach of the dead VBD 1"
vd_guest_start guest6 6 --queues 2 --iodepth 8 --flush-every 20 --runtime 2
vd_wait_domain 6
vd_attach 6 $VDEV "$IMG" -f qcow2
vd_guest_check guest6 60
vd_detach 6 $VDEV

echo "== detach of a live VBD frees the image at once"
vd_guest_start guest8 8 --queues 2 --iodepth 8 --runtime "$(vd_timeout 60)"
vd_wait_domain 8
vd_cli create -f qcow2 "$IMG.2" 64M || vd_fail "create $IMG.2"
vd_attach 8 $VDEV "$IMG.2" -f qcow2
vd_wait_xs_value "$(vd_be_path 8 $VDEV)/state" 4 30 || vd_fail "VBD 8 did not connect"
sleep 0.5
vd_detach 8 $VDEV
# the worker lets go of the image before it says Closed: usable at once
vd_cli check --repair "$IMG.2" || vd_fail "$IMG.2 still locked right after vdisk detach"
vd_stop guest8 10 || true

echo "== a second vdiskd"
rc=0
out=$(timeout -k 5 "$(vd_timeout 20)" "$VDISKD" --transport sim --foreground 2>&1) || rc=$?
echo "second vdiskd: exit $rc: $out"
[ "$rc" -ne 0 ] && [ "$rc" -ne 124 ] || vd_fail "a second vdiskd started (exit $rc)"
grep -q "another vdiskd (pid $DPID)" <<<"$out" || vd_fail "the second vdiskd did not say why"
vd_assert_alive vdiskd hv
vd_stop vdiskd 15 || vd_fail "vdiskd did not exit 0 on SIGTERM"
vd_stop hv 10 || vd_fail "hv did not exit 0 on SIGTERM"
echo "PASS image-lock"
