#!/usr/bin/env bash
# `vdisk serve-nbd` against real NBD clients (exit 77 if one is missing):
#   qemu-img convert out of and into the export, byte-exact (raw, qcow2, vpc);
#   qemu-io write/read with pattern verification;
#   nbdinfo --map against qemu-img map of the same image (raw sparse, qcow2, vpc);
#   nbdcopy round trip; fio ioengine=nbd randrw with --verify=crc32c;
#   nbdinfo --list; TLS asked for and refused (the server stays up);
#   several clients at once; SIGTERM exits 0 and removes the socket.
set -euo pipefail
BUILD=${VDISK_BUILD_DIR:-$(dirname "$0")/../../../build}
VDISK=$BUILD/src/cli/vdisk
for t in qemu-img qemu-io nbdinfo nbdcopy fio python3; do
	command -v "$t" >/dev/null || { echo "SKIP: $t not installed (qemu-utils, libnbd-bin, fio)"; exit 77; }
done
fio --enghelp 2>/dev/null | grep -qw nbd || { echo "SKIP: fio without the nbd engine"; exit 77; }
[ -x "$VDISK" ] || { echo "SKIP: $VDISK not built"; exit 77; }
T=$(mktemp -d "${TMPDIR:-/tmp}/nbd-interop.XXXXXX")
SRV=
cleanup() {
	[ -z "$SRV" ] || kill "$SRV" 2>/dev/null || true
	[ -z "$SRV" ] || wait "$SRV" 2>/dev/null || true
	rm -rf "$T"
}
trap cleanup EXIT
fail() {
	echo "FAIL: $*" >&2
	[ ! -f "$T/srv.log" ] || sed 's/^/server: /' "$T/srv.log" >&2
	exit 1
}
ok() { echo "ok: $*"; }
SOCK=$T/nbd.sock
URI="nbd+unix:///?socket=$SOCK"

serve() { # IMAGE FMT [options]
	local img=$1 fmt=$2
	shift 2
	"$VDISK" serve-nbd "$img" -f "$fmt" --socket "$SOCK" "$@" >"$T/srv.log" 2>&1 &
	SRV=$!
	for _ in $(seq 100); do
		[ -S "$SOCK" ] && return 0
		kill -0 "$SRV" 2>/dev/null || fail "serve-nbd exited early"
		sleep 0.05
	done
	fail "serve-nbd did not listen"
}
stop() {
	kill -TERM "$SRV"
	local rc=0
	wait "$SRV" || rc=$?
	SRV=
	[ "$rc" -eq 0 ] || fail "serve-nbd exited $rc on SIGTERM"
	! grep -q "ERROR: AddressSanitizer\|runtime error:\|LeakSanitizer" "$T/srv.log" ||
		fail "sanitizer report"
	[ ! -e "$SOCK" ] || fail "socket left behind"
}
# qemu-img map's data/zero booleans as NBD base:allocation flags, merged:
# "start length flags" lines (flags: 0 data, 3 hole+zero, 1 hole, 2 zero)
qmap() { # FMT IMAGE
	qemu-img map -U -f "$1" --output=json "$2" | python3 -c '
import json, sys
out = []
for e in json.load(sys.stdin):
    f = (0 if e["data"] else 1) | (2 if e["zero"] else 0)
    if out and out[-1][2] == f and out[-1][0] + out[-1][1] == e["start"]:
        out[-1][1] += e["length"]
    else:
        out.append([e["start"], e["length"], f])
for s, l, f in out:
    print(s, l, f)'
}
nmap() {
	nbdinfo --map "$URI" | awk '{print $1, $2, $3}' | python3 -c '
import sys
out = []
for line in sys.stdin:
    s, l, f = map(int, line.split())
    if out and out[-1][2] == f:
        out[-1][1] += l
    else:
        out.append([s, l, f])
for s, l, f in out:
    print(s, l, f)'
}

# Reference content: sparse, with data here and there.
qemu-img create -q -f raw "$T/ref.raw" 64M
qemu-io -f raw -c 'write -P 0xab 0 1M' -c 'write -P 0xcd 5M 64k' -c 'write -P 0x11 30M 4k' \
	-c 'write -P 0x5a 63M 1M' "$T/ref.raw" >/dev/null

for fmt in raw qcow2 vpc; do
	vfmt=$fmt
	[ "$fmt" != vpc ] || vfmt=vhd
	img=$T/img.$fmt
	qemu-img convert -q -f raw -O "$fmt" "$T/ref.raw" "$img"
	serve "$img" "$vfmt"
	# out of the export
	qemu-img convert -q -f raw "$URI" -O raw "$T/out.raw"
	# qemu's own reading of the image (vpc rounds the size up to a CHS geometry);
	# -U (force share) here and in qmap: serve-nbd holds the image's write lock
	qemu-img convert -U -q -f "$fmt" "$img" -O raw "$T/qref.raw"
	cmp "$T/qref.raw" "$T/out.raw" || fail "$fmt: qemu-img convert out of the export differs"
	cmp -n $((64 << 20)) "$T/ref.raw" "$T/out.raw" || fail "$fmt: export differs from the source"
	ok "$fmt: qemu-img convert out of the export is byte-exact"
	# allocation
	qmap "$fmt" "$img" >"$T/qmap"
	nmap >"$T/nmap"
	diff -u "$T/qmap" "$T/nmap" || fail "$fmt: nbdinfo --map differs from qemu-img map"
	ok "$fmt: nbdinfo --map matches qemu-img map ($(wc -l <"$T/nmap") extents)"
	# into the export
	qemu-io -f raw -c 'write -P 0x77 2M 1M' -c 'write -z 0 64k' "$T/ref.raw" >/dev/null
	qemu-img convert -q -n -f raw "$T/ref.raw" -O raw "$URI"
	stop
	qemu-img compare -q -f raw -F "$fmt" "$T/ref.raw" "$img" ||
		fail "$fmt: qemu-img convert into the export: image differs"
	ok "$fmt: qemu-img convert into the export is byte-exact (qemu-img compare)"
	# restore the reference for the next format
	qemu-io -f raw -c 'write -P 0xab 0 1M' -c 'write -z 2M 1M' "$T/ref.raw" >/dev/null
	rm -f "$img" "$T/out.raw"
done

# qemu-io pattern write/read, nbdcopy, fio, list, TLS, several clients
qemu-img create -q -f qcow2 "$T/w.qcow2" 256M
serve "$T/w.qcow2" qcow2 --export disk0 --description "interop disk"
NURI="nbd+unix:///disk0?socket=$SOCK"
qemu-io -f raw "$NURI" -c 'write -P 0xab 0 1M' -c 'read -P 0xab 0 1M' \
	-c 'write -f -P 0x3c 8M 64k' -c 'read -P 0x3c 8M 64k' -c 'flush' -c 'read -P 0 16M 1M' \
	>"$T/qio" 2>&1 || { cat "$T/qio"; fail "qemu-io pattern check"; }
! grep -q "Pattern verification failed" "$T/qio" || fail "qemu-io: pattern verification failed"
ok "qemu-io write -P / read -P through the export"

nbdinfo --list "$URI" >"$T/list" || fail "nbdinfo --list"
grep -q 'export="disk0"' "$T/list" || fail "nbdinfo --list does not show disk0"
grep -q "interop disk" "$T/list" || fail "nbdinfo --list does not show the description"
ok "nbdinfo --list shows the export and its description"

head -c $((32 << 20)) /dev/urandom >"$T/rand"
nbdcopy "$T/rand" "$NURI" || fail "nbdcopy into the export"
nbdcopy "$NURI" "$T/back" || fail "nbdcopy out of the export"
cmp -n $((32 << 20)) "$T/rand" "$T/back" || fail "nbdcopy round trip differs"
ok "nbdcopy round trip (32 MiB)"

# nbds+unix: libnbd requires TLS (sends NBD_OPT_STARTTLS, refuses to go on without)
if LIBNBD_DEBUG=1 nbdinfo "nbds+unix:///disk0?socket=$SOCK" >"$T/tls" 2>&1; then
	fail "TLS required by the client, yet nbdinfo succeeded"
fi
kill -0 "$SRV" || fail "server died after a STARTTLS"
nbdinfo --size "$NURI" >/dev/null || fail "server not serving after a refused STARTTLS"
grep -q "OPT_STARTTLS.CHECK_REPLY" "$T/tls" || fail "the client did not get an answer to STARTTLS"
ok "STARTTLS refused cleanly; server still serves"

# several clients at once, on disjoint regions
pids=()
for i in 0 1 2 3 4 5; do
	qemu-io -f raw "$NURI" -c "write -P $((0x10 + i)) $((64 + i * 4))M 4M" \
		-c "read -P $((0x10 + i)) $((64 + i * 4))M 4M" >"$T/multi.$i" 2>&1 &
	pids+=($!)
done
for i in 0 1 2 3 4 5; do
	wait "${pids[$i]}" || fail "client $i failed"
	! grep -q "verification failed" "$T/multi.$i" || fail "client $i: pattern mismatch"
done
ok "6 clients at once"

fio --name=nbdv --ioengine=nbd --uri="$NURI" --rw=randrw --bs=4k --iodepth=16 --size=64M \
	--verify=crc32c --verify_fatal=1 --do_verify=1 --verify_state_save=0 --randrepeat=1 \
	--output="$T/fio.out" >/dev/null 2>&1 || { cat "$T/fio.out"; fail "fio nbd verify"; }
grep -q "err= 0" "$T/fio.out" || { cat "$T/fio.out"; fail "fio reported errors"; }
ok "fio ioengine=nbd randrw with --verify=crc32c"
stop
ok "SIGTERM: exit 0, socket removed"
