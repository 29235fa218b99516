#!/usr/bin/env bash
# A full filesystem under a served image (issue 13), for FORMAT (qcow2 or
# raw): a 64 MiB ext4 on a loop device holds a 1 GiB image and a filler
# file. `vdisk serve-nbd` serves the image; qemu-io writes 1 MiB chunks
# (pattern per chunk) until the disk is full, keeps writing (every write
# must fail with ENOSPC, as a guest retrying would; then 64 at once), the filler is removed
# (space returns), more chunks are written; then every acknowledged chunk
# reads back, the server exits cleanly, and `qemu-img check` finds no
# corruption and no more leaked clusters than one write in flight holds.
# Prints "leaks=N max_offset=BYTES" for the record (ENOSPC_SHOW_CHECK=1:
# and the end of qemu-img check's own report).
# Exit 77 if not root, no loop device, or a tool is missing.
set -euo pipefail
FMT=${1:-qcow2}
BUILD=${VDISK_BUILD_DIR:-$(dirname "$0")/../../../build}
VDISK=${VDISK:-$BUILD/src/cli/vdisk}
skip() {
	echo "SKIP: $*"
	exit 77
}
. "$(dirname "$0")/../lib-loopfs.sh"
loopfs_require qemu-io qemu-img python3
[ -x "$VDISK" ] || skip "$VDISK not built"

T=$(mktemp -d "${TMPDIR:-/tmp}/enospc.XXXXXX")
MNT=$T/mnt
SRV=
cleanup() {
	if [ -n "$SRV" ]; then
		kill "$SRV" 2>/dev/null || true
		wait "$SRV" 2>/dev/null || true
	fi
	loopfs_umount
	rm -rf "$T"
}
trap cleanup EXIT
fail() {
	echo "FAIL: $*" >&2
	[ ! -f "$T/srv.log" ] || sed 's/^/server: /' "$T/srv.log" | tail -20 >&2
	exit 1
}
SOCK=$T/nbd.sock
URI="nbd+unix:///?socket=$SOCK"
MB=$((1 << 20))

loopfs_mount 64M "$MNT"
IMG=$MNT/disk.$FMT
case $FMT in
qcow2) qemu-img create -q -f qcow2 -o cluster_size=65536 "$IMG" 1G ;;
raw) truncate -s 1G "$IMG" ;;
*) fail "unknown format $FMT" ;;
esac
# the filler takes 16 MiB that come back later
fallocate -l 16M "$MNT/filler"

"$VDISK" serve-nbd "$IMG" -f "$FMT" --socket "$SOCK" >"$T/srv.log" 2>&1 &
SRV=$!
for _ in $(seq 100); do
	[ -S "$SOCK" ] && break
	kill -0 "$SRV" 2>/dev/null || fail "serve-nbd exited early"
	sleep 0.05
done
[ -S "$SOCK" ] || fail "serve-nbd did not listen"

# chunk i holds pattern (i % 250) + 1 at offset i MiB; one qemu-io per write
wchunk() { # I -> 0 written, 1 failed with ENOSPC
	local out
	out=$(qemu-io -f raw -c "write -P $(($1 % 250 + 1)) $(($1 * MB)) 1M" "$URI" 2>&1) || true
	case $out in
	*"wrote "*) return 0 ;;
	*"No space left"*) return 1 ;;
	*) fail "chunk $1: unexpected: $out" ;;
	esac
}
acked=()
i=0
while wchunk $i; do
	acked+=("$i")
	i=$((i + 1))
	[ $i -lt 200 ] || fail "the disk never filled"
done
full_at=$i
# the guest keeps trying (new chunks and the same one): all must fail
for j in $(seq 0 199); do
	! wchunk $((full_at + j % 50)) || fail "a write succeeded on a full disk"
done
# and 64 at once (two per cluster), beside a flush
args=()
for j in $(seq 0 63); do
	args+=(-c "aio_write -P 7 $(((full_at + 60) * MB + (j / 2) * 65536 + (j % 2) * 4096)) 4k")
done
out=$(qemu-io -f raw "${args[@]}" -c aio_flush "$URI" 2>&1) || true
[ "$(grep -c "No space left" <<<"$out")" -ge 64 ] ||
	fail "parallel writes on a full disk: $(grep -v "No space left" <<<"$out" | head -3)"
echo "ok: $FMT: ${#acked[@]} MiB acknowledged, then 200 + 64 parallel writes failed with ENOSPC"
rm -f "$MNT/filler"
sync -f "$MNT" 2>/dev/null || sync
for k in $(seq 0 7); do
	c=$((full_at + k))
	wchunk $c || fail "chunk $c: ENOSPC after space returned"
	acked+=("$c")
done
echo "ok: $FMT: 8 MiB written after space returned"
verify() {
	local c
	for c in "${acked[@]}"; do
		qemu-io -f raw -c "read -P $((c % 250 + 1)) $((c * MB)) 1M" "$URI" 2>&1 |
			grep -q "read " || fail "chunk $c does not read back"
	done
}
verify
kill -TERM "$SRV"
rc=0
wait "$SRV" || rc=$?
SRV=
[ "$rc" -eq 0 ] || fail "serve-nbd exited $rc on SIGTERM"
! grep -q "AddressSanitizer\|runtime error:" "$T/srv.log" || fail "sanitizer report"
echo "ok: $FMT: every acknowledged chunk read back"

if [ "$FMT" = qcow2 ]; then
	rc=0
	qemu-img check -f qcow2 --output=json "$IMG" >"$T/check.json" 2>"$T/check.err" || rc=$?
	read -r leaks corrupt < <(python3 -c '
import json, sys
j = json.load(open(sys.argv[1]))
print(j.get("leaks", 0), j.get("corruptions", 0) + j.get("check-errors", 0))' "$T/check.json")
	max_off=$(qemu-img map -f qcow2 --output=json "$IMG" | python3 -c '
import json, sys
print(max([e["offset"] + e["length"] for e in json.load(sys.stdin) if "offset" in e] + [0]))')
	echo "leaks=$leaks max_offset=$max_off file_bytes=$(stat -c %s "$IMG")"
	[ -z "${ENOSPC_SHOW_CHECK:-}" ] || qemu-img check -f qcow2 "$IMG" 2>&1 | tail -4 || true
	[ "$corrupt" -eq 0 ] || fail "qemu-img check: corruption ($(cat "$T/check.json"))"
	# at most the clusters of one 1 MiB write in flight (qemu-io: depth 1)
	[ "$leaks" -le 16 ] || fail "qemu-img check: $leaks leaked clusters"
	[ "$max_off" -le $((64 * MB)) ] || fail "data at $max_off, past the 64 MiB filesystem"
	# and the image reopens for the same reads (through qemu, not us)
	for c in "${acked[@]}"; do
		qemu-io -f qcow2 -r -c "read -P $((c % 250 + 1)) $((c * MB)) 1M" "$IMG" 2>&1 |
			grep -q "read " || fail "qemu: chunk $c does not read back"
	done
	echo "ok: qcow2: qemu-img check clean (leaks=$leaks), qemu reads every chunk"
fi
echo "PASS: $FMT"
