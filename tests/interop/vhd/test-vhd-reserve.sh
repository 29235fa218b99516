#!/usr/bin/env bash
# `vdisk create -f vhd -o max_size=` reserves BAT entries beyond the size
# (vhd-util create -S): `vdisk resize` grows the disk within the reserve
# without moving data; qemu-img info/check and qemu-io -f vpc agree on the
# result; growing past the reserve is refused. Exit 77 without qemu-img/qemu-io.
set -euo pipefail
VDISK=${VDISK_BUILD_DIR:?}/src/cli/vdisk
PY="python3 $(dirname "$0")/vhd-py.py"
for t in qemu-img qemu-io python3; do
	command -v "$t" >/dev/null || { echo "SKIP: $t not installed"; exit 77; }
done
[ -x "$VDISK" ] || { echo "SKIP: vdisk CLI not built"; exit 77; }
T=$(mktemp -d "${TMPDIR:-/tmp}/vhd-reserve.XXXXXX")
trap 'rm -rf "$T"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
vsize() { qemu-img info -f vpc --output=json "$1" | grep -o '"virtual-size": [0-9]*' | grep -o '[0-9]*$'; }
F=$T/r.vhd
G=$((1 << 30))

"$VDISK" create -f vhd -o max_size=4G "$F" 1G >/dev/null
[ "$($PY info "$F")" = "3 $G 2097152 2048" ] || fail "BAT not reserved: $($PY info "$F")"
[ "$(vsize "$F")" = $G ] || fail "qemu-img size before resize: $(vsize "$F")"
qemu-io -f vpc -c 'write -P 0x21 1000M 1M' "$F" >/dev/null
bat_before=$(dd if="$F" bs=512 skip=3 count=16 status=none | md5sum)
"$VDISK" resize "$F" 4G >/dev/null || fail "resize within the reserve"
[ "$(vsize "$F")" = $((4 * G)) ] || fail "qemu-img size after resize: $(vsize "$F")"
[ "$(dd if="$F" bs=512 skip=3 count=16 status=none | md5sum)" = "$bat_before" ] ||
	fail "the BAT moved or changed"
qemu-io -f vpc -c "write -P 0x43 $((4 * G - 1048576)) 1M" "$F" >/dev/null
out=$(qemu-io -f vpc -c 'read -P 0x21 1000M 1M' -c "read -P 0x43 $((4 * G - 1048576)) 1M" \
	-c 'read -P 0 2G 1M' "$F" 2>&1)
echo "$out" | grep -qi "verification failed" && fail "qemu reads other data: $out"
rc=0
qemu-img check -q -f vpc "$F" >/dev/null 2>&1 || rc=$?
[ "$rc" -eq 0 ] || [ "$rc" -eq 63 ] || fail "qemu-img check exit $rc"
"$VDISK" check "$F" >/dev/null || fail "vdisk check after the resize"
if "$VDISK" resize "$F" +2M 2>/dev/null; then
	fail "resize past the reserve succeeded"
fi
[ "$(vsize "$F")" = $((4 * G)) ] || fail "a refused resize changed the size"
echo "ok: max_size reserves the BAT; resize within it keeps the data; qemu agrees"
