#!/usr/bin/env bash
# VHD interop with qemu (format vpc), both ways. Exit 77 without qemu-img/qemu-io.
#   - images made by `qemu-img create -f vpc -o subformat=dynamic|fixed` and
#     written by qemu-io read the same through vdisk as through qemu;
#   - images made and written by vdisk compare equal (qemu-img compare) to a
#     raw file of the expected content, and qemu-img check accepts them
#     (qemu 7 has no checker for vpc: exit 63 is "not supported");
#   - vdisk writes into a qemu-made image, qemu reads them.
# Differencing disks: qemu's vpc driver does not follow parents, so chains
# are checked by vdisk alone (unit and func tests).
set -euo pipefail
TOOL=${VHD_TOOL:?VHD_TOOL must point at vhd-tool}
for t in qemu-img qemu-io; do
	command -v "$t" >/dev/null || { echo "SKIP: $t not installed (apt-get install qemu-utils)"; exit 77; }
done
T=$(mktemp -d "${TMPDIR:-/tmp}/vhd-interop.XXXXXX")
trap 'rm -rf "$T"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
pass=0

# qemu-io writes on any format: the same on a vpc image and on the raw reference
qwrite() { # FMT FILE
	qemu-io -f "$1" -c 'write -P 0xab 0 1M' -c 'write -P 0xcd 5M 64k' \
		-c 'write -P 0x11 30M 4k' -c 'write -P 0x5a 63M 1M' "$2" >/dev/null
}
vwrite() { # FILE (vdisk)
	"$TOOL" write "$1" 4096 12288 1 && "$TOOL" write "$1" $((3 << 20)) $((2 << 20)) 2 &&
		"$TOOL" write "$1" $(((64 << 20) - 512)) 512 3
}

for sub in dynamic fixed; do
	# 1. qemu writes, vdisk reads
	qemu-img create -q -f vpc -o subformat=$sub "$T/q.vhd" 64M
	qwrite vpc "$T/q.vhd"
	qemu-img convert -f vpc -O raw "$T/q.vhd" "$T/q.raw"
	"$TOOL" dump "$T/q.vhd" "$T/v.raw" || fail "$sub: vdisk cannot read a qemu image"
	cmp "$T/q.raw" "$T/v.raw" || fail "$sub: vdisk reads other data than qemu"
	echo "ok: qemu-img $sub image written by qemu-io reads the same through vdisk"
	pass=$((pass + 1))

	# 2. vdisk creates and writes, qemu reads and checks
	"$TOOL" create "$T/v.vhd" $((64 << 20)) $sub || fail "$sub: create"
	vwrite "$T/v.vhd" || fail "$sub: vdisk write"
	qemu-img create -q -f raw "$T/e.raw" 64M
	qemu-io -f raw -c 'write -P 1 4096 12288' -c 'write -P 2 3M 2M' \
		-c 'write -P 3 67108352 512' "$T/e.raw" >/dev/null
	qemu-img compare -q -f vpc -F raw "$T/v.vhd" "$T/e.raw" ||
		fail "$sub: qemu-img compare of a vdisk image against the expected content"
	rc=0
	qemu-img check -q -f vpc "$T/v.vhd" >/dev/null 2>&1 || rc=$?
	[ "$rc" -eq 0 ] || [ "$rc" -eq 63 ] || fail "$sub: qemu-img check exit $rc"
	"$TOOL" check "$T/v.vhd" >/dev/null || fail "$sub: vdisk check of its own image"
	[ "$(qemu-img info --output=json "$T/v.vhd" | grep -o '"virtual-size": [0-9]*' |
		grep -o '[0-9]*$')" -ge $((64 << 20)) ] || fail "$sub: qemu sees another size"
	echo "ok: vdisk $sub image passes qemu-img compare (check exit $rc)"
	pass=$((pass + 1))

	# 3. vdisk writes into the qemu image, qemu reads both writers' data
	vwrite "$T/q.vhd" || fail "$sub: vdisk write into a qemu image"
	qwrite raw "$T/q.raw"
	qemu-io -f raw -c 'write -P 1 4096 12288' -c 'write -P 2 3M 2M' \
		-c 'write -P 3 67108352 512' "$T/q.raw" >/dev/null
	if [ $sub = dynamic ]; then
		# qemu-made dynamic disks are 64 MiB rounded up to their CHS size
		qemu-img resize -q -f raw "$T/q.raw" "$(qemu-img info --output=json "$T/q.vhd" |
			grep -o '"virtual-size": [0-9]*' | grep -o '[0-9]*$')"
	fi
	qemu-img compare -q -f vpc -F raw "$T/q.vhd" "$T/q.raw" ||
		fail "$sub: qemu reads other data after vdisk wrote into its image"
	echo "ok: vdisk writes into a qemu $sub image read back through qemu"
	pass=$((pass + 1))
	rm -f "$T"/*.vhd "$T"/*.raw
done

# 4. block sizes other than 2 MiB, written by vdisk, read by qemu
for bs in 524288 4194304; do
	"$TOOL" create "$T/b.vhd" $((16 << 20)) dynamic $bs || fail "create block $bs"
	"$TOOL" write "$T/b.vhd" $((1 << 20)) $((3 << 20)) 7 || fail "write block $bs"
	qemu-img create -q -f raw "$T/e.raw" 16M
	qemu-io -f raw -c 'write -P 7 1M 3M' "$T/e.raw" >/dev/null
	qemu-img compare -q -f vpc -F raw "$T/b.vhd" "$T/e.raw" || fail "block size $bs"
	echo "ok: block size $bs"
	pass=$((pass + 1))
	rm -f "$T/b.vhd" "$T/e.raw"
done
echo "$pass passed, 0 failed"
