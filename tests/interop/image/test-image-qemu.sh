#!/bin/bash
# vdisk image tools vs qemu-img. Usage: test-image-qemu.sh VDISK
# Exit 0 pass, 1 fail, 77 skip (no qemu-img). Formats whose driver is not
# built in are skipped with a message; raw always runs.
set -u
VDISK=${1:?usage: $0 VDISK}
if ! command -v qemu-img >/dev/null 2>&1; then
	echo "SKIP: qemu-img not installed (apt install qemu-utils)"
	exit 77
fi
HAVE_QEMU_IO=0
command -v qemu-io >/dev/null 2>&1 && HAVE_QEMU_IO=1
T=$(mktemp -d "${TMPDIR:-/tmp}/vdisk-interop-image.XXXXXX") || exit 1
trap 'rm -rf "$T"' EXIT
FAILS=0
fail() { echo "FAIL: $*"; FAILS=$((FAILS + 1)); }
ok() { echo "ok: $*"; }

# Compare two `map --output=json` documents: same extents, same fields.
same_map() {
	python3 - "$1" "$2" <<'PY'
import json, sys
a = json.load(open(sys.argv[1])); b = json.load(open(sys.argv[2]))
keys = ("start", "length", "depth", "present", "zero", "data", "offset")
na = [{k: e.get(k) for k in keys} for e in a]
nb = [{k: e.get(k) for k in keys} for e in b]
if na != nb:
    for i in range(max(len(na), len(nb))):
        x = na[i] if i < len(na) else None
        y = nb[i] if i < len(nb) else None
        if x != y:
            print("  first difference at extent %d:\n    vdisk:    %s\n    qemu-img: %s" % (i, x, y))
            break
    sys.exit(1)
PY
}

# A sparse raw image: data at 320K..512K, 4000K..4004K and 7M..7M+64K.
mk_sparse() {
	"$VDISK" create "$1" 8M || return 1
	dd if=/dev/urandom of="$1" bs=64k count=3 seek=5 conv=notrunc status=none &&
	dd if=/dev/urandom of="$1" bs=4k count=1 seek=1000 conv=notrunc status=none &&
	dd if=/dev/urandom of="$1" bs=64k count=1 seek=112 conv=notrunc status=none
}

alloc_kib() { du -k "$1" | cut -f1; }

# ---- raw ----
mk_sparse "$T/src.raw" || { echo "cannot make a sparse image"; exit 1; }
"$VDISK" map --json "$T/src.raw" > "$T/v.json" && qemu-img map --output=json "$T/src.raw" > "$T/q.json"
if same_map "$T/v.json" "$T/q.json"; then ok "raw: map --json equals qemu-img map"; else fail "raw: map --json differs from qemu-img map"; fi
if "$VDISK" convert -O raw "$T/src.raw" "$T/dst.raw"; then
	if qemu-img compare -q -f raw -F raw "$T/src.raw" "$T/dst.raw"; then ok "raw->raw: content identical"; else fail "raw->raw: content differs"; fi
	s=$(alloc_kib "$T/src.raw"); d=$(alloc_kib "$T/dst.raw")
	if [ "$d" -le $((s + 64)) ]; then ok "raw->raw: sparse ($d KiB allocated, source $s KiB)"; else fail "raw->raw: not sparse ($d KiB allocated, source $s KiB)"; fi
	"$VDISK" map --json "$T/dst.raw" > "$T/v2.json"
	if same_map "$T/v2.json" "$T/q.json"; then ok "raw->raw: same allocation map"; else fail "raw->raw: allocation map differs"; fi
else
	fail "vdisk convert raw->raw"
fi
out=$("$VDISK" check "$T/src.raw"); rc=$?
if [ $rc -eq 0 ] && [[ $out == *"no metadata to check"* ]]; then ok "raw: check"; else fail "raw: check rc=$rc: $out"; fi

# ---- formats with metadata: vhd (qemu's vpc) and qcow2 ----
for fmt in vhd qcow2; do
	qfmt=$fmt; qopts=""
	[ "$fmt" = vhd ] && { qfmt=vpc; qopts="-o subformat=dynamic,force_size=on"; }
	if ! err=$("$VDISK" create -f "$fmt" "$T/probe.$fmt" 8M 2>&1); then
		echo "SKIP $fmt: vdisk has no $fmt driver in this build ($err)"
		continue
	fi
	# an image made by qemu-img, read by vdisk
	# shellcheck disable=SC2086
	qemu-img convert -f raw -O $qfmt $qopts "$T/src.raw" "$T/q.$fmt" || { fail "$fmt: qemu-img convert"; continue; }
	"$VDISK" map --json "$T/q.$fmt" > "$T/v.json" && qemu-img map -f $qfmt --output=json "$T/q.$fmt" > "$T/q.json"
	if same_map "$T/v.json" "$T/q.json"; then ok "$fmt: map --json equals qemu-img map"; else fail "$fmt: map --json differs from qemu-img map"; fi
	out=$("$VDISK" check "$T/q.$fmt"); rc=$?
	if [ $rc -eq 0 ]; then ok "$fmt: check of a qemu-img image"; else fail "$fmt: check rc=$rc: $out"; fi
	if "$VDISK" convert -O raw "$T/q.$fmt" "$T/back.raw" && qemu-img compare -q -F raw "$T/src.raw" "$T/back.raw"; then
		ok "$fmt->raw: content identical"
	else
		fail "$fmt->raw"
	fi
	# an image made by vdisk, read by qemu-img
	if "$VDISK" convert -O "$fmt" "$T/src.raw" "$T/v.$fmt"; then
		if qemu-img compare -q -f raw -F $qfmt "$T/src.raw" "$T/v.$fmt"; then ok "raw->$fmt: qemu-img reads the same content"; else fail "raw->$fmt: content differs for qemu-img"; fi
		if qemu-img check -q -f $qfmt "$T/v.$fmt" >/dev/null 2>&1 || [ "$fmt" = vhd ]; then ok "raw->$fmt: qemu-img check"; else fail "raw->$fmt: qemu-img check"; fi
		"$VDISK" map --json "$T/v.$fmt" > "$T/v.json" && qemu-img map -f $qfmt --output=json "$T/v.$fmt" > "$T/q.json"
		if same_map "$T/v.json" "$T/q.json"; then ok "raw->$fmt: map equals qemu-img map"; else fail "raw->$fmt: map differs from qemu-img map"; fi
	else
		fail "vdisk convert raw->$fmt"
	fi
	# snapshot + a write through qemu-io + commit (qemu's vpc driver has no
	# differencing VHDs: it would ignore the parent and corrupt the child)
	if [ "$fmt" = vhd ]; then
		echo "SKIP vhd overlay: qemu-img/qemu-io cannot read differencing VHDs"
	elif [ $HAVE_QEMU_IO = 1 ] && "$VDISK" snapshot "$T/v.$fmt" "$T/top.$fmt"; then
		cp "$T/src.raw" "$T/expect.raw"
		qemu-io -f $qfmt -c 'write -P 0x5a 1M 64k' "$T/top.$fmt" >/dev/null &&
		qemu-io -f raw -c 'write -P 0x5a 1M 64k' "$T/expect.raw" >/dev/null
		"$VDISK" map --json "$T/top.$fmt" > "$T/v.json" && qemu-img map -f $qfmt --output=json "$T/top.$fmt" > "$T/q.json"
		if same_map "$T/v.json" "$T/q.json"; then ok "$fmt overlay: map equals qemu-img map"; else fail "$fmt overlay: map differs"; fi
		if "$VDISK" commit "$T/top.$fmt" >/dev/null && qemu-img compare -q -f raw -F $qfmt "$T/expect.raw" "$T/v.$fmt"; then
			ok "$fmt: snapshot + commit"
		else
			fail "$fmt: snapshot + commit"
		fi
	elif [ $HAVE_QEMU_IO = 1 ]; then
		fail "$fmt: vdisk snapshot"
	else
		echo "SKIP $fmt overlay: no qemu-io"
	fi
done

if [ $FAILS -ne 0 ]; then
	echo "$FAILS failure(s)"
	exit 1
fi
exit 0
