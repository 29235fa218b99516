#!/usr/bin/env bash
# Image locks against qemu, both ways (exit 77 without qemu-io/qemu-img):
#   qemu-io holding an image for writing makes vdisk serve-nbd, check
#   --repair, resize, info and convert fail (info -U works); a read-only
#   qemu-io lets vdisk read (serve-nbd --readonly, info) but not write;
#   vdisk serve-nbd holding an image makes qemu-io write, qemu-img resize
#   and qemu-img info fail with qemu's "Failed to get ... lock" (info -U
#   works); serve-nbd --readonly lets qemu read but not write; kill -9
#   of the holder releases everything.
set -uo pipefail
BUILD=${VDISK_BUILD_DIR:-$(dirname "$0")/../../../build}
VDISK=$(realpath -m "$BUILD/src/cli/vdisk")
for t in qemu-img qemu-io; do
	command -v $t >/dev/null 2>&1 || { echo "SKIP: needs $t (apt install qemu-utils)"; exit 77; }
done
[ -x "$VDISK" ] || { echo "SKIP: $VDISK not built"; exit 77; }
T=$(mktemp -d "${TMPDIR:-/tmp}/lock-interop.XXXXXX")
QPID= SRV=
cleanup() {
	[ -z "$QPID" ] || kill -9 "$QPID" 2>/dev/null
	[ -z "$SRV" ] || kill -9 "$SRV" 2>/dev/null
	wait 2>/dev/null
	rm -rf "$T"
}
trap cleanup EXIT
cd "$T" || exit 1
FAIL=0
bad() { echo "FAIL: $*"; FAIL=1; }
ok() { echo "ok: $*"; }

# Is any lock byte of FILE held (by anyone)? The holders' OFD locks show in /proc/locks.
locked() { grep -q ":$(stat -c %i "$1") " /proc/locks; }
wait_locked() {
	for _ in $(seq 200); do locked "$1" && return 0; sleep 0.05; done
	return 1
}
wait_unlocked() {
	for _ in $(seq 200); do locked "$1" || return 0; sleep 0.05; done
	return 1
}

# qemu-io FILE [options]: an interactive qemu-io holding FILE, fed by a fifo.
qemu_hold() {
	rm -f q.fifo
	mkfifo q.fifo
	qemu-io "$@" <q.fifo >q.log 2>&1 &
	QPID=$!
	exec 3>q.fifo
	wait_locked "${@: -1}" || { bad "qemu-io $* did not take its locks"; cat q.log; }
}
qemu_release() {
	echo quit >&3
	exec 3>&-
	wait "$QPID" 2>/dev/null
	QPID=
}

# expect_fail WHAT PATTERN CMD...: CMD exits non-zero and prints PATTERN.
expect_fail() {
	local what=$1 pat=$2 out rc
	shift 2
	# bounded: without locks a serve-nbd would serve for ever
	out=$(timeout -k 2 10 "$@" 2>&1 </dev/null)
	rc=$?
	if [ $rc -eq 0 ] || [ $rc -eq 124 ]; then
		bad "$what: succeeded on an image in use ($*)"
	elif ! grep -q -- "$pat" <<<"$out"; then
		bad "$what: exit $rc without '$pat': $out"
	else
		ok "$what refused: $(head -n1 <<<"$out")"
	fi
}
expect_ok() {
	local what=$1 out
	shift
	out=$(timeout -k 2 30 "$@" 2>&1 </dev/null) && ok "$what" || bad "$what: $out"
}

serve() { # IMAGE [options]: vdisk serve-nbd holding IMAGE
	local img=$1
	shift
	rm -f nbd.sock
	"$VDISK" serve-nbd "$img" --socket "$T/nbd.sock" "$@" >srv.log 2>&1 &
	SRV=$!
	for _ in $(seq 200); do
		[ -S nbd.sock ] && return 0
		kill -0 "$SRV" 2>/dev/null || { bad "serve-nbd $img exited: $(cat srv.log)"; SRV=; return 1; }
		sleep 0.05
	done
	bad "serve-nbd did not listen"
}
unserve() { # [SIGNAL]
	kill "-${1:-TERM}" "$SRV" 2>/dev/null
	wait "$SRV" 2>/dev/null
	SRV=
}

qemu-img create -q -f qcow2 img.qcow2 64M
qemu-img create -q -f raw img.raw 64M
qemu-io -c 'write -P 0x5a 0 64k' img.qcow2 >/dev/null || bad "qemu-io write on a free image"

echo "== qemu-io holds img.qcow2 for writing"
qemu_hold -f qcow2 img.qcow2
expect_fail "vdisk serve-nbd" 'failed to get "write" lock' \
	"$VDISK" serve-nbd img.qcow2 --socket "$T/x.sock"
expect_fail "vdisk serve-nbd --readonly" 'failed to get shared "write" lock' \
	"$VDISK" serve-nbd img.qcow2 --readonly --socket "$T/x.sock"
expect_fail "vdisk check --repair" 'failed to get "write" lock' "$VDISK" check --repair img.qcow2
expect_fail "vdisk resize" 'failed to get "write" lock' "$VDISK" resize img.qcow2 +1M
expect_fail "vdisk info" 'failed to get shared "write" lock' "$VDISK" info img.qcow2
expect_fail "vdisk convert" 'failed to get shared "write" lock' "$VDISK" convert -O raw img.qcow2 out.raw
expect_ok "vdisk info -U while qemu-io writes" "$VDISK" info -U img.qcow2
qemu_release

echo "== qemu-io -r holds img.qcow2 read-only"
qemu_hold -r -f qcow2 img.qcow2
expect_fail "vdisk serve-nbd (rw) next to a qemu reader" 'failed to get "write" lock' \
	"$VDISK" serve-nbd img.qcow2 --socket "$T/x.sock"
expect_ok "vdisk info next to a qemu reader" "$VDISK" info img.qcow2
expect_ok "vdisk convert out of an image qemu reads" "$VDISK" convert -O raw img.qcow2 out.raw
serve img.qcow2 --readonly && ok "vdisk serve-nbd --readonly next to a qemu reader"
unserve
qemu_release

echo "== qemu-io holds img.raw for writing (qemu shares writes on raw; vdisk does not)"
qemu_hold -f raw img.raw
expect_fail "vdisk serve-nbd on raw" 'failed to get shared "write" lock' \
	"$VDISK" serve-nbd img.raw -f raw --socket "$T/x.sock"
qemu_release

echo "== vdisk serve-nbd holds img.qcow2 for writing"
serve img.qcow2
expect_fail "qemu-io write" 'Failed to get "write" lock' qemu-io -c 'write 0 4k' img.qcow2
expect_fail "qemu-io -r read" 'Failed to get shared "write" lock' qemu-io -r -c 'read 0 4k' img.qcow2
expect_fail "qemu-img resize" 'Failed to get "write" lock' qemu-img resize img.qcow2 +1M
expect_fail "qemu-img info" 'Failed to get shared "write" lock' qemu-img info img.qcow2
expect_ok "qemu-img info -U while vdisk writes" qemu-img info -U img.qcow2
expect_ok "qemu-io through the NBD export" \
	qemu-io -f raw -c 'write -P 0x33 4k 4k' "nbd+unix:///?socket=$T/nbd.sock"
echo "kill -9 serve-nbd"
unserve KILL
wait_unlocked img.qcow2 || bad "locks outlived the killed serve-nbd"
expect_ok "qemu-io write after vdisk was killed" qemu-io -c 'read -P 0x33 4k 4k' -c 'write 0 4k' img.qcow2

echo "== vdisk serve-nbd --readonly holds img.qcow2"
serve img.qcow2 --readonly
expect_ok "qemu-io -r read next to a vdisk reader" qemu-io -r -c 'read -P 0x5a 8k 4k' img.qcow2
expect_ok "qemu-img info next to a vdisk reader" qemu-img info img.qcow2
expect_fail "qemu-io write next to a vdisk reader" 'Failed to get "write" lock' \
	qemu-io -c 'write 0 4k' img.qcow2
expect_ok "a second vdisk reader (info)" "$VDISK" info img.qcow2
unserve
expect_ok "qemu-io write after vdisk exited" qemu-io -c 'write 0 4k' img.qcow2

[ $FAIL -eq 0 ] && echo "PASS" || echo "FAILED"
exit $FAIL
