#!/usr/bin/env bash
# Regenerate tests/fuzz/corpus/qcow2 (seeds for fuzz-qcow2): small images
# from qemu-img/qemu-io in every variant, plus hand-broken headers.
set -euo pipefail
OUT=$(cd "$(dirname "$0")" && pwd)/corpus/qcow2
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
mkdir -p "$OUT"
cd "$W"
mk() { # name size qemu-img options...
	local n=$1 s=$2
	shift 2
	qemu-img create -q -f qcow2 "$@" "$n" "$s"
	qemu-io -c 'write -P 0x5a 0 3k' -c 'write -P 0x11 40k 1k' -c 'write -z 60k 4k' "$n" >/dev/null
	cp "$n" "$OUT/seed-$n"
}
mk v2 64k -o compat=0.10,cluster_size=512
mk v3 64k -o cluster_size=512
mk rb1 64k -o cluster_size=512,refcount_bits=1
mk rb64 64k -o cluster_size=512,refcount_bits=64
mk lazy 64k -o cluster_size=512,lazy_refcounts=on
mk extl2 256k -o cluster_size=16k,extended_l2=on
mk c4k 1M -o cluster_size=4k
qemu-img create -q -f qcow2 -o cluster_size=512 src 64k
qemu-io -c 'write -P 0x5a 0 20k' src >/dev/null
qemu-img convert -c -O qcow2 -o cluster_size=512 src "$OUT/seed-compressed"
qemu-img create -q -f qcow2 -o cluster_size=512 snap 64k
qemu-io -c 'write -P 0x1 0 4k' snap >/dev/null
qemu-img snapshot -c s1 snap
qemu-io -c 'write -P 0x2 0 2k' snap >/dev/null
cp snap "$OUT/seed-snapshot"
qemu-img create -q -f qcow2 -o cluster_size=512 -u -b /nonexistent/base -F raw "$OUT/seed-backing-missing" 64k
# a dirty lazy image (as after a crash)
cp "$OUT/seed-lazy" "$OUT/seed-lazy-dirty"
printf '\x00\x00\x00\x00\x00\x00\x00\x01' | dd of="$OUT/seed-lazy-dirty" bs=1 seek=72 conv=notrunc status=none
# broken headers
cp "$OUT/seed-v3" "$OUT/seed-bad-l1"
printf '\x7f\xff\xff\xff' | dd of="$OUT/seed-bad-l1" bs=1 seek=36 conv=notrunc status=none
cp "$OUT/seed-v3" "$OUT/seed-bad-reftable"
printf '\x00\x00\x00\x00\x00\x00\x02\x00' | dd of="$OUT/seed-bad-reftable" bs=1 seek=48 conv=notrunc status=none
cp "$OUT/seed-v3" "$OUT/seed-unknown-incompat"
printf '\x00\x00\x01\x00\x00\x00\x00\x00' | dd of="$OUT/seed-unknown-incompat" bs=1 seek=72 conv=notrunc status=none
head -c 200 "$OUT/seed-v3" >"$OUT/seed-truncated"
ls -la "$OUT"
