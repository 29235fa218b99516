#!/usr/bin/env bash
# A fixed VHD (footer at the end only) made by qemu-img is probed as vhd,
# so `vdisk resize` without -f grows it as a VHD (the footer moves to the
# new end; qemu-img -f vpc reads the data and the new size). A fixed VHD
# whose footer is damaged is guessed raw, and resize refuses to cut the
# footer unless -f says what it is. Exit 77 without qemu-img/qemu-io.
set -euo pipefail
VDISK=${VDISK_BUILD_DIR:?}/src/cli/vdisk
for t in qemu-img qemu-io; do
	command -v "$t" >/dev/null || { echo "SKIP: $t not installed"; exit 77; }
done
[ -x "$VDISK" ] || { echo "SKIP: vdisk CLI not built"; exit 77; }
T=$(mktemp -d "${TMPDIR:-/tmp}/vhd-fixed.XXXXXX")
trap 'rm -rf "$T"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
vsize() { qemu-img info -f vpc --output=json "$1" | grep -o '"virtual-size": [0-9]*' | grep -o '[0-9]*$'; }
F=$T/f.vhd

qemu-img create -q -f vpc -o subformat=fixed "$F" 64M
qemu-io -f vpc -c 'write -P 0x42 60M 1M' "$F" >/dev/null
old=$(vsize "$F")
"$VDISK" info "$F" | grep -q '^format: vhd' || fail "a fixed VHD is not probed as vhd"
"$VDISK" resize "$F" +8M >/dev/null || fail "vdisk resize without -f"
[ "$(vsize "$F")" = $((old + 8 * 1048576)) ] || fail "qemu-img sees $(vsize "$F"), not old+8M"
[ "$(stat -c %s "$F")" = $((old + 8 * 1048576 + 512)) ] || fail "file size after resize"
[ "$(tail -c 512 "$F" | head -c 8)" = conectix ] || fail "no footer at the new end"
out=$(qemu-io -f vpc -c 'read -P 0x42 60M 1M' -c "read -P 0 $old 8M" "$F" 2>&1)
echo "$out" | grep -qi "verification failed" && fail "qemu reads other data: $out"
rc=0
qemu-img check -q -f vpc "$F" >/dev/null 2>&1 || rc=$?
[ "$rc" -eq 0 ] || [ "$rc" -eq 63 ] || fail "qemu-img check exit $rc"
echo "ok: a qemu-img fixed VHD is probed as vhd and resized as one"

# damage the footer's checksum: guessed raw, resize refused without -f
size=$(stat -c %s "$F")
printf '\x55' | dd of="$F" bs=1 seek=$((size - 512 + 24)) conv=notrunc status=none
"$VDISK" info "$F" | grep -q '^format: raw' || fail "a damaged footer is not guessed raw"
if "$VDISK" resize "$F" +1M 2>"$T/err"; then
	fail "resize of a guessed-raw file with a VHD footer at its end succeeded"
fi
grep -q -- "-f vhd" "$T/err" || fail "the refusal does not say to pass -f: $(cat "$T/err")"
[ "$(stat -c %s "$F")" = "$size" ] || fail "the refused resize changed the file"
"$VDISK" resize -f raw "$F" $((size + 1048576)) >/dev/null || fail "resize -f raw"
echo "ok: a damaged fixed VHD guessed raw is not resized without -f"
