#!/usr/bin/env bash
# `vdisk convert` and `vdisk commit` onto a full filesystem (issue 13): a
# 24 MiB loop-mounted ext4 gets the destination (convert) or the base
# (commit) while the source holds 40 MiB of data. Each must fail with a
# message naming ENOSPC and a non-zero exit, leave the source byte for
# byte as it was, leave a qcow2 base that qemu-img check finds clean or
# only leaking, and succeed once space is back, with the data right.
# Exit 77 if not root, no loop device, or a tool is missing.
set -euo pipefail
BUILD=${VDISK_BUILD_DIR:-$(dirname "$0")/../../../build}
VDISK=${VDISK:-$BUILD/src/cli/vdisk}
skip() {
	echo "SKIP: $*"
	exit 77
}
. "$(dirname "$0")/../lib-loopfs.sh"
loopfs_require qemu-io qemu-img md5sum
[ -x "$VDISK" ] || skip "$VDISK not built"

T=$(mktemp -d "${TMPDIR:-/tmp}/enospc-tool.XXXXXX")
MNT=$T/mnt
cleanup() {
	loopfs_umount
	rm -rf "$T"
}
trap cleanup EXIT
fail() {
	echo "FAIL: $*" >&2
	exit 1
}
loopfs_mount 24M "$MNT"

# expect_enospc LOG: the command failed (checked by the caller) saying so
expect_enospc() {
	grep -q "No space left on device" "$1" || fail "no ENOSPC message: $(cat "$1")"
}
# qcheck IMG: no corruption (leaks allowed); prints the leak count
qcheck() {
	local rc=0
	qemu-img check -q -f qcow2 "$1" >/dev/null 2>&1 || rc=$?
	[ "$rc" -eq 0 ] || [ "$rc" -eq 3 ] || fail "qemu-img check $1: exit $rc"
	qemu-img check -f qcow2 --output=json "$1" >"$T/check.json" 2>/dev/null || true
	python3 -c 'import json,sys; print(json.load(open(sys.argv[1])).get("leaks", 0))' \
		"$T/check.json"
}

# ---- convert: a 64 MiB qcow2 with 40 MiB of data, to qcow2 and raw ----
SRC=$T/src.qcow2
qemu-img create -q -f qcow2 "$SRC" 64M
qemu-io -f qcow2 -c "write -P 0x5a 0 20M" -c "write -P 0xa5 32M 20M" "$SRC" >/dev/null
sum0=$(md5sum <"$SRC")
for fmt in qcow2 raw; do
	rc=0
	"$VDISK" convert -O "$fmt" "$SRC" "$MNT/dst.$fmt" >"$T/convert.log" 2>&1 || rc=$?
	[ "$rc" -ne 0 ] || fail "convert to $fmt on a full disk exited 0"
	expect_enospc "$T/convert.log"
	[ "$(md5sum <"$SRC")" = "$sum0" ] || fail "convert changed the source"
	echo "ok: convert to $fmt: exit $rc: $(head -1 "$T/convert.log")"
	rm -f "$MNT/dst.$fmt"
done

# ---- commit: the base on the small disk, the top (40 MiB) elsewhere ----
BASE=$MNT/base.qcow2
TOP=$T/top.qcow2
qemu-img create -q -f qcow2 "$BASE" 64M
qemu-io -f qcow2 -c "write -P 0x11 0 2M" "$BASE" >/dev/null
qemu-img create -q -f qcow2 -b "$BASE" -F qcow2 "$TOP"
qemu-io -f qcow2 -c "write -P 0x22 4M 20M" -c "write -P 0x33 40M 20M" "$TOP" >/dev/null
tsum=$(md5sum <"$TOP")
rc=0
"$VDISK" commit "$TOP" >"$T/commit.log" 2>&1 || rc=$?
[ "$rc" -ne 0 ] || fail "commit onto a full disk exited 0"
expect_enospc "$T/commit.log"
[ "$(md5sum <"$TOP")" = "$tsum" ] || fail "commit changed the top image"
leaks=$(qcheck "$BASE")
echo "ok: commit: exit $rc: $(head -1 "$T/commit.log"); base leaks=$leaks"
# the chain still reads right (the base only got data the top has too)
qemu-io -f qcow2 -r -c "read -P 0x11 0 2M" -c "read -P 0x22 4M 20M" -c "read -P 0x33 40M 20M" \
	"$TOP" | grep -c "^read " | grep -qx 3 || fail "the chain does not read back after a failed commit"
# space returns: the base moves to a bigger place, the commit succeeds
mkdir "$T/big"
cp --sparse=always "$BASE" "$T/big/base.qcow2"
qemu-img rebase -q -u -f qcow2 -b "$T/big/base.qcow2" -F qcow2 "$TOP"
"$VDISK" commit "$TOP" >"$T/commit2.log" 2>&1 || fail "commit with space: $(cat "$T/commit2.log")"
leaks=$(qcheck "$T/big/base.qcow2")
qemu-io -f qcow2 -r -c "read -P 0x11 0 2M" -c "read -P 0x22 4M 20M" -c "read -P 0x33 40M 20M" \
	"$T/big/base.qcow2" | grep -c "^read " | grep -qx 3 || fail "the base lacks the committed data"
echo "ok: commit after space returned: base leaks=$leaks, data right"
echo PASS
