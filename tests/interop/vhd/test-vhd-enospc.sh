#!/usr/bin/env bash
# A VHD on a full filesystem (a small loop-mounted ext4): first writes to
# new blocks fail with ENOSPC, and the file stays a valid VHD: its size does
# not run away, the footer is at its end, qemu-img info/check and
# `vhd-tool check` accept it; once space is back, the same writes land and
# qemu-img reads the expected content. Exit 77 if not root, or no loop
# device, mkfs.ext4 or qemu-img.
set -euo pipefail
TOOL=${VHD_TOOL:?VHD_TOOL must point at vhd-tool}
skip() { echo "SKIP: $*"; exit 77; }
fail() { echo "FAIL: $*" >&2; exit 1; }
. "$(dirname "$0")/../lib-loopfs.sh"
loopfs_require qemu-img
T=$(mktemp -d "${TMPDIR:-/tmp}/vhd-enospc.XXXXXX")
cleanup() {
	loopfs_umount
	rm -rf "$T"
}
trap cleanup EXIT
loopfs_mount 48M "$T/mnt"

IMG=$T/mnt/d.vhd
MiB=$((1 << 20))
"$TOOL" create "$IMG" $((1024 * MiB)) dynamic >/dev/null
"$TOOL" write "$IMG" 0 $MiB 1 || fail "first write on an empty filesystem"
# fill the filesystem to the last block
dd if=/dev/zero of="$T/mnt/fill" bs=1M 2>/dev/null || true
dd if=/dev/zero of="$T/mnt/fill2" bs=4k 2>/dev/null || true
sync
failed=0
for i in $(seq 1 12); do
	if "$TOOL" write "$IMG" $((i * 64 * MiB + 4096)) $((3 * MiB)) $((i + 1)) 2>/dev/null; then
		echo "note: write $i landed"
	else
		failed=$((failed + 1))
	fi
done
[ "$failed" -gt 0 ] || fail "no write failed on a full filesystem"
size=$(stat -c %s "$IMG")
[ "$size" -le $((48 * MiB)) ] || fail "the image grew to $size bytes on a 48 MiB filesystem"
[ "$(tail -c 512 "$IMG" | head -c 8)" = conectix ] || fail "no footer at the end of the file"
qemu-img info -f vpc "$IMG" >/dev/null || fail "qemu-img info cannot open the image"
rc=0
qemu-img check -q -f vpc "$IMG" >/dev/null 2>&1 || rc=$?
[ "$rc" -eq 0 ] || [ "$rc" -eq 63 ] || fail "qemu-img check exit $rc"
"$TOOL" check "$IMG" >/dev/null || fail "vhd-tool check finds problems after ENOSPC"
echo "ok: $failed of 12 writes failed with a full filesystem; image valid ($size bytes)"

# space is back: every write lands, and qemu reads what was written
rm -f "$T/mnt/fill" "$T/mnt/fill2"
sync
truncate -s $((1024 * MiB)) "$T/e.raw"
head -c $MiB /dev/zero | tr '\0' '\001' | dd of="$T/e.raw" conv=notrunc status=none
for i in $(seq 1 12); do
	"$TOOL" write "$IMG" $((i * 64 * MiB + 4096)) $((3 * MiB)) $((i + 1)) ||
		fail "write $i after space returned"
	head -c $((3 * MiB)) /dev/zero | tr '\0' "\\$(printf '%03o' $((i + 1)))" |
		dd of="$T/e.raw" bs=4096 seek=$(((i * 64 * MiB + 4096) / 4096)) conv=notrunc status=none
done
"$TOOL" check "$IMG" >/dev/null || fail "vhd-tool check after space returned"
[ "$(tail -c 512 "$IMG" | head -c 8)" = conectix ] || fail "no footer at the end after refill"
qemu-img compare -q -f vpc -F raw "$IMG" "$T/e.raw" || fail "qemu-img reads other data"
echo "ok: after space returned, all writes landed and qemu-img compare agrees"
