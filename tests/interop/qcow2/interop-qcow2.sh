#!/usr/bin/env bash
# qcow2 interop with qemu-img/qemu-io (qemu-utils), both ways:
#   qemu-img images (compat 0.10/1.1, cluster sizes, lazy refcounts,
#   extended L2, refcount widths, preallocation, compressed, backing chains,
#   internal snapshots) written by qemu-io are read correctly by vdisk;
#   images vdisk writes (random writes/discards) pass `qemu-img check` and
#   `qemu-img compare` against a raw model; 16 TiB and 64 TiB images;
#   check --repair reclaims leaks.
#   interop-qcow2.sh QCOW2_TOOL [reads|writes|chains|big|repair]...
set -uo pipefail
T=${1:?usage: interop-qcow2.sh QCOW2_TOOL [parts]}
shift
PARTS=${*:-reads writes chains big repair}
for t in qemu-img qemu-io; do
	command -v $t >/dev/null 2>&1 || { echo "SKIP: needs $t (apt install qemu-utils)"; exit 77; }
done
W=$(mktemp -d "${TMPDIR:-/var/tmp}/qcow2-interop.XXXXXX")
trap 'rm -rf "$W"' EXIT
cd "$W" || exit 1
FAIL=0
N=${VD_QCOW2_INTEROP_OPS:-200}
bad() { echo "FAIL: $*"; FAIL=1; }

reads() { # qemu-img images, qemu-io data, vdisk reads; then vdisk writes on top
	local name=$1
	shift
	rm -f "$name".*
	qemu-img create -q -f qcow2 "$@" "$name.qcow2" 32M || { bad "$name: qemu-img create"; return; }
	qemu-io -c 'write -P 0x5a 1M 128k' -c 'write -P 0x11 5M 3k' -c 'write -z 7M 1M' \
		-c 'write -P 0x22 31M 1M' "$name.qcow2" >/dev/null
	$T pattern "$name.qcow2" 1M 128k 0x5a && $T pattern "$name.qcow2" 5M 3k 0x11 &&
		$T pattern "$name.qcow2" 7M 1M 0 && $T pattern "$name.qcow2" 31M 1M 0x22 &&
		$T pattern "$name.qcow2" 0 1M 0 || bad "$name: vdisk reads other data than qemu-io wrote"
	qemu-img convert -O raw "$name.qcow2" "$name.raw"
	$T dump "$name.qcow2" "$name.got" && cmp -s "$name.raw" "$name.got" || bad "$name: full read differs"
	$T random "$name.qcow2" "$name.raw" 7 "$N" || bad "$name: random I/O"
	qemu-img check -q "$name.qcow2" || { bad "$name: qemu-img check after vdisk writes"; qemu-img check "$name.qcow2" | head; }
	qemu-img compare -q -f qcow2 -F raw "$name.qcow2" "$name.raw" || bad "$name: qemu-img compare"
	echo "ok: qemu-img $name ($*)"
}

writes() { # vdisk creates and writes; qemu-img checks and compares
	local name=$1 size=$2
	shift 2
	rm -f "$name".*
	$T create "$name.qcow2" "$size" "$@" || { bad "$name: vdisk create"; return; }
	qemu-img check -q "$name.qcow2" || bad "$name: fresh image fails qemu-img check"
	if [ -n "${MODEL_FROM_IMAGE:-}" ]; then
		qemu-img convert -O raw "$name.qcow2" "$name.raw"
	else
		truncate -s "$size" "$name.raw"
	fi
	$T random "$name.qcow2" "$name.raw" 11 "$N" || bad "$name: random I/O"
	qemu-img check -q "$name.qcow2" || { bad "$name: qemu-img check"; qemu-img check "$name.qcow2" | head; }
	qemu-img compare -q -f qcow2 -F raw "$name.qcow2" "$name.raw" || bad "$name: qemu-img compare"
	$T check "$name.qcow2" >/dev/null || bad "$name: vdisk check"
	echo "ok: vdisk $name ($*)"
}

part_reads() {
	reads v2 -o compat=0.10
	reads v3 -o compat=1.1
	reads c512 -o cluster_size=512
	reads c64k -o cluster_size=64k
	reads c2m -o cluster_size=2M
	reads lazy -o lazy_refcounts=on
	reads extl2 -o extended_l2=on
	reads extl2-2m -o extended_l2=on,cluster_size=2M
	reads rb1 -o refcount_bits=1
	reads rb64 -o refcount_bits=64
	reads prealloc -o preallocation=metadata
	# compressed
	rm -f comp.*
	qemu-img create -q -f qcow2 comp-src.qcow2 32M
	qemu-io -c 'write -P 0x5a 0 5M' -c 'write -P 0x6b 9M 700k' comp-src.qcow2 >/dev/null
	qemu-img convert -c -O qcow2 comp-src.qcow2 comp.qcow2
	qemu-img convert -O raw comp-src.qcow2 comp.raw
	$T dump comp.qcow2 comp.got && cmp -s comp.raw comp.got || bad "compressed: read differs"
	$T random comp.qcow2 comp.raw 5 "$N" || bad "compressed: random I/O"
	qemu-img check -q comp.qcow2 || bad "compressed: qemu-img check"
	qemu-img compare -q -F raw comp.qcow2 comp.raw || bad "compressed: compare"
	echo "ok: compressed"
	# internal snapshots: listed, readable, untouched by writes
	rm -f snap.*
	qemu-img create -q -f qcow2 snap.qcow2 32M
	qemu-io -c 'write -P 0x0a 0 8M' snap.qcow2 >/dev/null
	qemu-img snapshot -c first snap.qcow2
	qemu-io -c 'write -P 0x0b 2M 1M' snap.qcow2 >/dev/null
	$T snapshots snap.qcow2 | grep -q "^1 first " || bad "snapshot not listed"
	qemu-img convert -O raw -l snapshot.name=first snap.qcow2 snap.want
	$T readsnap snap.qcow2 first snap.got && cmp -s snap.want snap.got || bad "snapshot read differs"
	qemu-img convert -O raw snap.qcow2 snap.raw
	$T random snap.qcow2 snap.raw 9 "$N" || bad "snapshot image: random I/O"
	qemu-img check -q snap.qcow2 || bad "snapshot image: qemu-img check"
	qemu-img compare -q -F raw snap.qcow2 snap.raw || bad "snapshot image: compare"
	qemu-img convert -O raw -l snapshot.name=first snap.qcow2 snap.after
	cmp -s snap.want snap.after || bad "writes changed the snapshot"
	echo "ok: snapshots"
}

part_writes() {
	writes w-v2 32M compat=2
	writes w-v3 32M
	writes w-c512 16M cluster=512
	writes w-c2m 64M cluster=2M
	writes w-extl2 32M extl2
	writes w-lazy 32M lazy
	writes w-rb1 32M refbits=1
	writes w-rb8 32M refbits=8
	writes w-rb64 32M refbits=64
	writes w-pre 32M prealloc
	writes w-pre-extl2 32M prealloc extl2
}

part_chains() {
	rm -f base.raw mid.qcow2
	truncate -s 32M base.raw
	qemu-io -f raw -c 'write -P 0x01 0 32M' base.raw >/dev/null
	qemu-img create -q -f qcow2 -b base.raw -F raw mid.qcow2
	qemu-io -c 'write -P 0x02 4M 4M' -c 'write -z 12M 64k' mid.qcow2 >/dev/null
	for v in compat=1.1 compat=0.10 extended_l2=on; do
		rm -f top.*
		qemu-img create -q -f qcow2 -o $v -b mid.qcow2 -F qcow2 top.qcow2
		qemu-io -c 'write -P 0x03 6M 3k' -c 'write -P 0x04 20M 100k' top.qcow2 >/dev/null
		qemu-img convert -O raw top.qcow2 top.raw
		$T dump top.qcow2 top.got && cmp -s top.raw top.got || bad "chain $v: read differs"
		$T random top.qcow2 top.raw 3 "$N" || bad "chain $v: random I/O"
		qemu-img check -q top.qcow2 || bad "chain $v: qemu-img check"
		qemu-img compare -q -F raw top.qcow2 top.raw || bad "chain $v: compare"
		echo "ok: 2-deep chain, top $v"
	done
	# overlays vdisk creates over qemu images
	MODEL_FROM_IMAGE=1 writes w-over 0 backing=mid.qcow2 backing_fmt=qcow2
	MODEL_FROM_IMAGE=1 writes w-over-v2 0 backing=mid.qcow2 compat=2
	MODEL_FROM_IMAGE=1 writes w-over-extl2 0 backing=base.raw backing_fmt=raw extl2
}

part_big() {
	for sz in 16T 64T; do
		local bytes
		bytes=$(numfmt --from=iec $sz)
		rm -f big.qcow2
		$T create big.qcow2 $sz || { bad "$sz: create"; continue; }
		for off in 0 2T 3T $((bytes / 2)) $((bytes - 65536)); do
			$T write big.qcow2 $off 64k 0x33 || bad "$sz: write at $off"
		done
		$T pattern big.qcow2 3T 64k 0x33 && $T pattern big.qcow2 $((bytes - 65536)) 64k 0x33 &&
			$T pattern big.qcow2 $((bytes - 131072)) 64k 0 || bad "$sz: read back"
		qemu-img check -q big.qcow2 || bad "$sz: qemu-img check"
		qemu-io -c "read -P 0x33 $((bytes - 65536)) 64k" -c "read -P 0x33 $((bytes / 2)) 64k" \
			big.qcow2 | grep -c "^read 65536" | grep -q 2 || bad "$sz: qemu-io reads other data"
		[ "$(stat -c %s big.qcow2)" -lt $((64 << 20)) ] || bad "$sz: image file too large"
		echo "ok: $sz"
	done
}

part_repair() {
	rm -f leak.*
	qemu-img create -q -f qcow2 leak.qcow2 32M
	qemu-io -c 'write -P 0x5 0 2M' leak.qcow2 >/dev/null
	# drop the first L1 entry: its L2 table and data clusters leak
	l1=$(od -An -tx1 -j40 -N8 leak.qcow2 | tr -d ' \n')
	dd if=/dev/zero of=leak.qcow2 bs=1 seek=$((16#$l1)) count=8 conv=notrunc status=none
	qemu-img check -q leak.qcow2 >/dev/null 2>&1 && bad "qemu-img does not see the leak"
	$T check leak.qcow2 >/dev/null && bad "vdisk check does not see the leak"
	$T check leak.qcow2 repair >/dev/null || bad "vdisk check repair"
	qemu-img check -q leak.qcow2 || bad "leaks remain after vdisk repair"
	$T check leak.qcow2 >/dev/null || bad "vdisk check after repair"
	echo "ok: leak repair"
	# lazy refcounts: a crash after a flush leaves the dirty bit; the next open repairs
	rm -f lazy.qcow2
	$T create lazy.qcow2 32M lazy
	$T crashwrite lazy.qcow2 1M 1M 0x66
	qemu-img info lazy.qcow2 | grep -q "lazy refcounts: true" || bad "lazy refcounts not set"
	$T pattern lazy.qcow2 1M 1M 0x66 || bad "lazy: flushed data lost"
	$T write lazy.qcow2 3M 64k 0x67 || bad "lazy: write after repair"
	qemu-img check -q lazy.qcow2 || bad "lazy: qemu-img check after the repair on open"
	echo "ok: lazy refcounts crash"
}

for p in $PARTS; do
	"part_$p"
done
exit $FAIL
