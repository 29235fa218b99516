#!/usr/bin/env bash
# Sector bitmaps in dynamic VHDs as other writers leave them: a block with
# clear bits reads zeroes there through vdisk (the oracle is vhd-py.py, an
# independent reader that honours bitmaps; qemu's vpc driver ignores them
# and is checked only for what it does see: the data vdisk wrote, info and
# check). vdisk's writes set the bits. Exit 77 without qemu-img/qemu-io.
set -euo pipefail
TOOL=${VHD_TOOL:?VHD_TOOL must point at vhd-tool}
PY="python3 $(dirname "$0")/vhd-py.py"
for t in qemu-img qemu-io python3; do
	command -v "$t" >/dev/null || { echo "SKIP: $t not installed"; exit 77; }
done
T=$(mktemp -d "${TMPDIR:-/tmp}/vhd-bitmap.XXXXXX")
trap 'rm -rf "$T"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
K=1024 M=$((1 << 20))

qemu-img create -q -f vpc -o subformat=dynamic "$T/q.vhd" 64M
qemu-io -f vpc -c 'write -P 0xab 0 4M' -c 'write -P 0xcd 10M 64k' "$T/q.vhd" >/dev/null
[ "$($PY bits "$T/q.vhd" 0)" = 4096 ] || fail "qemu no longer writes all-ones bitmaps"
# another writer's partial blocks: block 0 written at [0, 8k) and [1M, 2M),
# block 1 allocated with no sector written
$PY clear "$T/q.vhd" 0 16 2032
$PY clear "$T/q.vhd" 1 0 4096
$PY dump "$T/q.vhd" "$T/want.raw"
"$TOOL" dump "$T/q.vhd" "$T/got.raw" || fail "vdisk cannot read the image"
cmp "$T/want.raw" "$T/got.raw" || fail "vdisk reads other data than the bitmaps say"
echo "ok: vdisk reads clear bitmap bits of a dynamic disk as zeroes"

"$TOOL" write "$T/q.vhd" $((512 * K)) 4096 5 || fail "vdisk write into clear sectors"
"$TOOL" write "$T/q.vhd" $((3 * M)) 8192 6 || fail "vdisk write into a clear block"
[ "$($PY bits "$T/q.vhd" 0)" = $((16 + 2048 + 8)) ] || fail "block 0: bits not set by the write"
[ "$($PY bits "$T/q.vhd" 1)" = 16 ] || fail "block 1: bits not set by the write"
$PY dump "$T/q.vhd" "$T/want.raw"
"$TOOL" dump "$T/q.vhd" "$T/got.raw"
cmp "$T/want.raw" "$T/got.raw" || fail "after vdisk writes, vdisk and the oracle differ"
cmp -s -n 4096 -i $((512 * K)):0 "$T/want.raw" <(head -c 4096 /dev/zero | tr '\0' '\005') ||
	fail "oracle does not see vdisk's write"
out=$(qemu-io -f vpc -c "read -P 5 512k 4k" -c "read -P 6 3M 8k" -c "read -P 0xcd 10M 64k" \
	"$T/q.vhd" 2>&1)
if ! echo "$out" | grep -q "read 8192" || echo "$out" | grep -qi "verification failed"; then
	fail "qemu does not read vdisk's writes: $out"
fi
qemu-img info -f vpc "$T/q.vhd" >/dev/null || fail "qemu-img info"
rc=0
qemu-img check -q -f vpc "$T/q.vhd" >/dev/null 2>&1 || rc=$?
[ "$rc" -eq 0 ] || [ "$rc" -eq 63 ] || fail "qemu-img check exit $rc"
"$TOOL" check "$T/q.vhd" >/dev/null || fail "vhd-tool check"
echo "ok: vdisk writes set the bits; the oracle, qemu-io and the checkers agree"

# a vdisk-made dynamic disk: fresh blocks get all-ones bitmaps (the fast path)
"$TOOL" create "$T/v.vhd" $((64 * M)) dynamic >/dev/null
"$TOOL" write "$T/v.vhd" $((5 * M)) 4096 7
[ "$($PY bits "$T/v.vhd" 2)" = 4096 ] || fail "vdisk's fresh block is not all ones"
$PY dump "$T/v.vhd" "$T/want.raw"
qemu-img convert -f vpc -O raw "$T/v.vhd" "$T/q.raw"
cmp "$T/want.raw" "$T/q.raw" || fail "qemu and the oracle differ on a vdisk image"
echo "ok: vdisk's own blocks are all ones; qemu and the oracle agree"
