#!/usr/bin/env bash
# The backing-file policy in vdiskd's workers (image.h struct
# vd_backing_policy; the backend keys backing-dirs and no-backing, vdiskd
# --backing-dir):
#  1. a qcow2 whose backing file is /etc/passwd: the VBD is refused (state 5)
#     and vdisk-error says why;
#  2. its backing file in another directory: refused, then served with
#     `vdisk attach --backing-dir DIR` (which writes backing-dirs);
#  3. a backing file in vdiskd's --backing-dir: served;
#  4. --no-backing --readonly: served without opening the backing file;
#  5. a raw backing file without a recorded format (probed): refused.
set -euo pipefail
# shellcheck source=../../scripts/lib-sim.sh
. "${VDISK_SOURCE_DIR:-$(dirname "$0")/../..}/scripts/lib-sim.sh"
vd_require_tools xenstore-exists xenstore-read
vd_setup backing
VDEV=51712
mkdir -p "$VD_TMP/vm" "$VD_TMP/base" "$VD_TMP/daemon-base"
vd_start_all --backing-dir "$VD_TMP/daemon-base"

vd_create_raw "$VD_TMP/base/base.raw" 16M
vd_create_raw "$VD_TMP/daemon-base/base.raw" 16M
vd_cli create -f qcow2 -b /etc/passwd -F raw "$VD_TMP/vm/passwd.qcow2" 16M || vd_fail "create passwd.qcow2"
vd_cli create -f qcow2 -b ../base/base.raw -F raw "$VD_TMP/vm/other.qcow2" 16M || vd_fail "create other.qcow2"
vd_cli create -f qcow2 -b ../daemon-base/base.raw -F raw "$VD_TMP/vm/daemon.qcow2" 16M ||
	vd_fail "create daemon.qcow2"

# refused DOMID NEEDLE: the VBD of DOMID fails with NEEDLE in vdisk-error.
refused() {
	local be
	be=$(vd_be_path "$1" $VDEV)
	vd_wait_xs_value "$be/state" 5 30 || vd_fail "VBD $1 was not refused"
	err=$(vd_xs read "$be/vdisk-error" 2>/dev/null) || vd_fail "no $be/vdisk-error"
	echo "$be/vdisk-error = $err"
	echo "$err" | grep -q "$2" || vd_fail "VBD $1: vdisk-error does not say '$2'"
}

# attach_refused ARGS...: `vdisk attach` waits for the worker's verdict and
# exits non-zero with it.
attach_refused() {
	local out rc=0
	out=$(vd_cli attach "$@" 2>&1) || rc=$?
	echo "$out"
	[ "$rc" -ne 0 ] || vd_fail "vdisk attach $* exited 0 for a refused image"
}

connected() {
	vd_wait_xs_value "$(vd_be_path "$1" $VDEV)/state" 4 30 || vd_fail "VBD $1 did not connect"
	echo "VBD $1 connected"
}

n=0
guest() {
	n=$((n + 1))
	vd_guest_start "g$n" "$n" --runtime 1 --rw read --bs 4k
	vd_wait_domain "$n"
}

guest
attach_refused $n $VDEV "$VD_TMP/vm/passwd.qcow2" --format qcow2
refused $n "refused"

guest
attach_refused $n $VDEV "$VD_TMP/vm/other.qcow2" --format qcow2
refused $n "outside"

guest
vd_attach $n $VDEV "$VD_TMP/vm/other.qcow2" --format qcow2 --backing-dir "$VD_TMP/base"
[ "$(vd_xs read "$(vd_be_path $n $VDEV)/backing-dirs")" = "$(realpath "$VD_TMP/base")" ] ||
	vd_fail "backing-dirs not written"
connected $n

guest
vd_attach $n $VDEV "$VD_TMP/vm/daemon.qcow2" --format qcow2
connected $n

guest
vd_attach $n $VDEV "$VD_TMP/vm/passwd.qcow2" --format qcow2 --no-backing --readonly
[ "$(vd_xs read "$(vd_be_path $n $VDEV)/no-backing")" = 1 ] || vd_fail "no-backing not written"
connected $n

# a raw backing file without a recorded format: strip the header extension
cp "$VD_TMP/base/base.raw" "$VD_TMP/vm/base.raw"
vd_cli create -f qcow2 -b base.raw -F raw "$VD_TMP/vm/nofmt.qcow2" 16M || vd_fail "create nofmt.qcow2"
python3 - "$VD_TMP/vm/nofmt.qcow2" <<'PY' || vd_fail "could not drop the backing format"
import sys
f = open(sys.argv[1], "r+b"); h = f.read(65536)
i = h.find(bytes.fromhex("e2792aca"), 72)
assert i > 0
f.seek(i); f.write(bytes.fromhex("0badf00d"))
PY
guest
attach_refused $n $VDEV "$VD_TMP/vm/nofmt.qcow2" --format qcow2
refused $n "no recorded format"
vd_assert_alive vdiskd
echo "backing policy: all cases as expected"
