#!/bin/bash
# Untrusted backing files (image.h struct vd_backing_policy), with images
# made by qemu-img and contents compared with qemu's view of them.
# Usage: test-backing-qemu.sh VDISK. Exit 0 pass, 1 fail, 77 skip.
#  - a qcow2 whose backing file is /etc/passwd, or ../ outside the tree:
#    refused by `vdisk info`, `convert` and `serve-nbd`, with a clear error;
#    allowed with --backing-dir (a temp dir), content = qemu-img convert;
#  - a raw backing file without a recorded format refused, with -F raw read;
#  - a VHD whose parent is a raw file, or a VHD with another UUID: refused;
#  - --no-backing: the overlay alone = qemu-img convert with backing null;
#  - a raw backing file of 1000 bytes: its bytes, then zeroes = qemu's view.
set -u
VDISK=$(realpath "${1:?usage: $0 VDISK}")
if ! command -v qemu-img >/dev/null 2>&1 || ! command -v qemu-io >/dev/null 2>&1; then
	echo "SKIP: qemu-img/qemu-io not installed (apt install qemu-utils)"
	exit 77
fi
T=$(mktemp -d "${TMPDIR:-/tmp}/vdisk-backing.XXXXXX") || exit 1
SRV=
cleanup() {
	[ -z "$SRV" ] || kill "$SRV" 2>/dev/null
	[ -z "$SRV" ] || wait "$SRV" 2>/dev/null
	rm -rf "$T"
}
trap cleanup EXIT
FAILS=0
fail() { echo "FAIL: $*"; FAILS=$((FAILS + 1)); }
ok() { echo "ok: $*"; }
mkdir -p "$T/top" "$T/allowed" "$T/top/sub"
cd "$T" || exit 1

# refused WHAT NEEDLE CMD...: CMD exits 1 and says NEEDLE on stderr.
refused() {
	local what=$1 needle=$2 rc=0
	shift 2
	timeout -k 2 20 "$@" >"$T/out" 2>"$T/err" || rc=$?
	if [ "$rc" -ne 1 ]; then
		fail "$what: exit $rc, not 1 ($(head -c 300 "$T/err"))"
	elif ! grep -q -- "$needle" "$T/err"; then
		fail "$what: the error does not say '$needle': $(cat "$T/err")"
	else
		ok "$what: $(head -c 200 "$T/err")"
	fi
}

# same_as_qemu WHAT QEMU-SPEC [vdisk options] IMAGE: vdisk convert = qemu-img convert.
same_as_qemu() {
	local what=$1 spec=$2
	shift 2
	rm -f "$T/v.raw" "$T/q.raw"
	if ! "$VDISK" convert -q -O raw "$@" "$T/v.raw" 2>"$T/err"; then
		fail "$what: vdisk convert: $(cat "$T/err")"
		return
	fi
	qemu-img convert -O raw "$spec" "$T/q.raw" || {
		fail "$what: qemu-img convert"
		return
	}
	if cmp -s "$T/v.raw" "$T/q.raw"; then ok "$what: same content as qemu-img"; else fail "$what: content differs from qemu-img"; fi
}

# ---- qcow2 backing files outside the tree ----
qemu-img create -q -f qcow2 -b /etc/passwd -F raw top/passwd.qcow2 1M
refused "info, backing /etc/passwd" "refused" "$VDISK" info top/passwd.qcow2
refused "info, backing /etc/passwd: the remedy" "--backing-dir" "$VDISK" info top/passwd.qcow2
refused "convert, backing /etc/passwd" "outside" "$VDISK" convert -q -O raw top/passwd.qcow2 "$T/x.raw"
if "$VDISK" serve-nbd --help >/dev/null 2>&1; then
	refused "serve-nbd, backing /etc/passwd" "refused" "$VDISK" serve-nbd top/passwd.qcow2 --socket "$T/nbd.sock"
	[ ! -e "$T/nbd.sock" ] || fail "serve-nbd left a socket after refusing"
fi

qemu-img create -q -f raw allowed/base.raw 1M
qemu-io -f raw -c "write -P 0xab 0 1M" allowed/base.raw >/dev/null
qemu-img create -q -f qcow2 -b ../allowed/base.raw -F raw top/rel.qcow2 1M
qemu-io -f qcow2 -c "write -P 0xcd 64k 64k" top/rel.qcow2 >/dev/null
refused "info, backing ../allowed/base.raw" "outside" "$VDISK" info top/rel.qcow2
same_as_qemu "--backing-dir allowed" top/rel.qcow2 --backing-dir "$T/allowed" top/rel.qcow2
same_as_qemu "--backing-dir=allowed (relative)" top/rel.qcow2 --backing-dir=allowed top/rel.qcow2
# through a symlink inside the tree
ln -s "$T/allowed/base.raw" top/link.raw
qemu-img create -q -f qcow2 -b link.raw -F raw top/link.qcow2 1M
refused "info, backing a symlink out of the tree" "outside" "$VDISK" info top/link.qcow2
# inside the tree (the same directory, a subdirectory): allowed by default
cp allowed/base.raw top/sub/base.raw
qemu-img create -q -f qcow2 -b sub/base.raw -F raw top/in.qcow2 1M
same_as_qemu "backing in a subdirectory" top/in.qcow2 top/in.qcow2
if "$VDISK" serve-nbd --help >/dev/null 2>&1; then
	"$VDISK" serve-nbd top/rel.qcow2 --readonly --backing-dir "$T/allowed" --socket "$T/nbd.sock" \
		>"$T/srv.log" 2>&1 &
	SRV=$!
	for _ in $(seq 100); do [ -S "$T/nbd.sock" ] && break; sleep 0.1; done
	if [ -S "$T/nbd.sock" ] &&
		qemu-img compare -q -f raw -F qcow2 "nbd+unix:///?socket=$T/nbd.sock" top/rel.qcow2; then
		ok "serve-nbd --backing-dir: qemu-img compare over NBD"
	else
		fail "serve-nbd --backing-dir: $(cat "$T/srv.log")"
	fi
	kill "$SRV" 2>/dev/null
	wait "$SRV" 2>/dev/null
	SRV=
fi

# ---- raw backing files need a recorded format ----
# qemu-img 7 refuses to create one without -F: drop the extension by hand
# (its type becomes an unknown one, which readers skip).
cp allowed/base.raw top/base.raw
qemu-img create -q -f qcow2 -b base.raw -F raw top/nofmt.qcow2 1M
python3 - top/nofmt.qcow2 <<'PY' || fail "could not drop the backing format extension"
import sys
f = open(sys.argv[1], "r+b"); h = f.read(65536)
i = h.find(bytes.fromhex("e2792aca"), 72)
assert i > 0
f.seek(i); f.write(bytes.fromhex("0badf00d"))
PY
if qemu-img info top/nofmt.qcow2 2>/dev/null | grep -q "backing file format"; then
	fail "the backing format is still recorded"
fi
refused "raw backing without a format" "no recorded format" "$VDISK" info top/nofmt.qcow2
qemu-img create -q -f qcow2 -b base.raw -F raw top/fmt.qcow2 1M
same_as_qemu "raw backing with -F raw" top/fmt.qcow2 top/fmt.qcow2
# vdisk create records the format it found (as qemu-img -F raw)
"$VDISK" create -f qcow2 -b base.raw top/ours.qcow2 >/dev/null 2>&1 || fail "vdisk create -b base.raw"
if qemu-img info top/ours.qcow2 | grep -q "backing file format: raw"; then ok "vdisk create records backing format raw"; else fail "vdisk create: no backing format"; fi
same_as_qemu "vdisk create -b raw" top/ours.qcow2 top/ours.qcow2

# ---- --no-backing: the overlay alone ----
same_as_qemu "--no-backing" \
	"json:{\"driver\":\"qcow2\",\"backing\":null,\"file\":{\"driver\":\"file\",\"filename\":\"$T/top/rel.qcow2\"}}" \
	--no-backing top/rel.qcow2
od -An -tx1 -v -j 0 -N 65536 "$T/v.raw" | tr -s ' \n' '\n\n' | sort -u | grep -qv '^00$\|^$' &&
	fail "--no-backing: the backing file's data shows through"
od -An -tx1 -v -j 65536 -N 65536 "$T/v.raw" | tr -s ' \n' '\n\n' | grep -q 'cd' ||
	fail "--no-backing: the overlay's own data is missing"
refused "--no-backing for writing" "read-only" "$VDISK" resize --no-backing top/rel.qcow2 2M

# ---- a raw backing file of 1000 bytes ----
head -c 1000 /dev/urandom >top/odd.raw
qemu-img create -q -f qcow2 -b odd.raw -F raw top/odd.qcow2 64K
same_as_qemu "raw backing of 1000 bytes" top/odd.qcow2 top/odd.qcow2
cmp -s -n 1000 "$T/v.raw" top/odd.raw || fail "odd: the first 1000 bytes differ"
if [ "$(tail -c +1001 "$T/v.raw" | tr -d '\0' | wc -c)" -eq 0 ]; then ok "odd: zeroes after byte 1000"; else fail "odd: not zeroes after byte 1000"; fi
qemu-io -f qcow2 -c "read -P 0 1000 64536" top/odd.qcow2 2>&1 | grep -q "Pattern verification failed" &&
	fail "qemu-io sees no zeroes after byte 1000"
vsize=$("$VDISK" info top/odd.raw | sed -n 's/^virtual size: \([0-9]*\) bytes/\1/p')
qsize=$(qemu-img info --output=json top/odd.raw | python3 -c 'import json,sys; print(json.load(sys.stdin)["virtual-size"])')
if [ "$vsize" = "$qsize" ]; then ok "odd raw: virtual size $vsize as qemu-img"; else fail "odd raw: vdisk $vsize, qemu-img $qsize"; fi

# ---- VHD parents ----
"$VDISK" create -f vhd top/par.vhd 1M >/dev/null &&
	"$VDISK" create -f vhd -b par.vhd top/child.vhd >/dev/null || fail "vhd create"
"$VDISK" info top/child.vhd >/dev/null 2>&1 || fail "vhd child of a vhd refused"
rm -f top/par.vhd
"$VDISK" create -f vhd top/par.vhd 1M >/dev/null || fail "vhd create (another UUID)"
refused "vhd parent with another UUID" "UUID" "$VDISK" info top/child.vhd
head -c 1048576 /etc/passwd >top/par.vhd
truncate -s 1M top/par.vhd
refused "vhd parent that is a raw file" "not a usable VHD" "$VDISK" info top/child.vhd
refused "vhd create over a raw parent" "must be a VHD" "$VDISK" create -f vhd -b par.vhd top/child2.vhd

[ "$FAILS" -eq 0 ] || {
	echo "$FAILS failure(s)"
	exit 1
}
echo "all backing-file checks passed"
