#!/usr/bin/env bash
# TLS (NBD_OPT_STARTTLS, GnuTLS) in `vdisk serve-nbd`, against real clients,
# with certificates and keys made here (certtool, psktool):
#   x509, --tls-required, TCP: qemu-io write/read -P, nbdcopy of random data
#   in and out (compared, and against the image file after the server
#   stops), nbdinfo; plain clients (nbdinfo, qemu-img, raw option requests)
#   refused with NBD_REP_ERR_TLS_REQD / closed; a client trusting another CA
#   refused;
#   x509 offered, not required, UNIX socket: plain and TLS clients both served;
#   psk, --tls-required: qemu-io (tls-creds-psk) and nbdinfo (tls-psk-file)
#   write/read; a wrong key refused.
set -euo pipefail
BUILD=${VDISK_BUILD_DIR:-$(dirname "$0")/../../../build}
VDISK=$BUILD/src/cli/vdisk
for t in certtool psktool qemu-io qemu-img nbdinfo nbdcopy python3; do
	command -v "$t" >/dev/null || { echo "SKIP: $t not installed (gnutls-bin, qemu-utils, libnbd-bin)"; exit 77; }
done
[ -x "$VDISK" ] || { echo "SKIP: $VDISK not built"; exit 77; }
# without GnuTLS the build has no TLS (tls-none.c): then, and only then, skip
pkg-config --exists gnutls 2>/dev/null || { echo "SKIP: no GnuTLS (libgnutls28-dev): built without TLS"; exit 77; }
T=$(mktemp -d "${TMPDIR:-/tmp}/nbd-tls.XXXXXX")
SRV=
cleanup() {
	[ -z "$SRV" ] || kill "$SRV" 2>/dev/null || true
	rm -rf "$T"
}
trap cleanup EXIT
fail() {
	echo "FAIL: $*" >&2
	[ ! -f "$T/srv.log" ] || sed 's/^/server: /' "$T/srv.log" | tail -30 >&2
	exit 1
}
ok() { echo "ok: $*"; }

# ---- credentials ----
mkcerts() { # DIR CA_NAME
	local d=$1
	mkdir -p "$d"
	certtool --generate-privkey --outfile "$d/ca-key.pem" >/dev/null 2>&1
	printf 'cn = %s\nca\ncert_signing_key\nexpiration_days = 2\n' "$2" >"$d/ca.info"
	certtool --generate-self-signed --load-privkey "$d/ca-key.pem" --template "$d/ca.info" \
		--outfile "$d/ca-cert.pem" >/dev/null 2>&1
	certtool --generate-privkey --outfile "$d/server-key.pem" >/dev/null 2>&1
	printf 'organization = vdisk test\ncn = localhost\ndns_name = localhost\nip_address = 127.0.0.1\ntls_www_server\nencryption_key\nsigning_key\nexpiration_days = 2\n' \
		>"$d/server.info"
	certtool --generate-certificate --load-ca-certificate "$d/ca-cert.pem" \
		--load-ca-privkey "$d/ca-key.pem" --load-privkey "$d/server-key.pem" \
		--template "$d/server.info" --outfile "$d/server-cert.pem" >/dev/null 2>&1
}
mkcerts "$T/pki" "vdisk test CA"
mkcerts "$T/other" "another CA"
mkdir -p "$T/client" "$T/otherclient"
cp "$T/pki/ca-cert.pem" "$T/client/"
cp "$T/other/ca-cert.pem" "$T/otherclient/"
mkdir -p "$T/psk" "$T/badpsk"
psktool -u alice -p "$T/psk/keys.psk" >/dev/null 2>&1
psktool -u alice -p "$T/badpsk/keys.psk" >/dev/null 2>&1
[ -s "$T/pki/server-cert.pem" ] && [ -s "$T/psk/keys.psk" ] || fail "could not make credentials"

"$VDISK" create -f qcow2 "$T/img.qcow2" 64M >/dev/null
PORT=$((20000 + RANDOM % 20000))
serve() { # args...
	"$VDISK" serve-nbd "$T/img.qcow2" "$@" >"$T/srv.log" 2>&1 &
	SRV=$!
	for _ in $(seq 100); do
		grep -q "^serving" "$T/srv.log" && return 0
		kill -0 "$SRV" 2>/dev/null || fail "serve-nbd exited early"
		sleep 0.05
	done
	fail "serve-nbd did not start"
}
stop() {
	kill -TERM "$SRV"
	local rc=0
	wait "$SRV" || rc=$?
	SRV=
	[ "$rc" -eq 0 ] || fail "serve-nbd exit $rc on SIGTERM"
	! grep -q "ERROR: AddressSanitizer\|runtime error:\|LeakSanitizer" "$T/srv.log" ||
		fail "sanitizer report"
}
X509=tls-creds-x509,id=tls0,endpoint=client,dir=$T/client
TCPOPTS=driver=nbd,server.type=inet,server.host=localhost,server.port=$PORT,tls-creds=tls0

# ---- 1. x509, required, TCP ----
serve --port $PORT --tls x509 --tls-certs "$T/pki" --tls-required
qemu-io --object "$X509" --image-opts "$TCPOPTS" -c 'write -P 0x3c 0 1M' -c 'read -P 0x3c 0 1M' \
	-c 'write -P 0x5a 8M 64k' -c flush >"$T/qio" 2>&1 || { cat "$T/qio"; fail "qemu-io over TLS"; }
! grep -q "verification failed" "$T/qio" || fail "qemu-io over TLS: pattern mismatch"
ok "x509: qemu-io write -P / read -P over TLS (tls-creds-x509)"
TURI="nbds://localhost:$PORT/?tls-certificates=$T/client"
[ "$(nbdinfo --size "$TURI")" = $((64 << 20)) ] || fail "nbdinfo over TLS"
head -c $((4 << 20)) /dev/urandom >"$T/rand"
nbdcopy "$T/rand" "$TURI" || fail "nbdcopy into the export over TLS"
nbdcopy "$TURI" "$T/back" || fail "nbdcopy out of the export over TLS"
cmp -n $((4 << 20)) "$T/rand" "$T/back" || fail "data written over TLS reads back different"
ok "x509: nbdinfo, nbdcopy 4 MiB in and out over TLS: identical"
# plain clients refused
if nbdinfo --size "nbd://127.0.0.1:$PORT/" >/dev/null 2>&1; then fail "plain nbdinfo served"; fi
if qemu-img info -f raw "nbd://127.0.0.1:$PORT/" >/dev/null 2>&1; then fail "plain qemu-img served"; fi
python3 - "$PORT" <<'PY' || fail "raw plain options with TLS required"
import socket, struct, sys
IHAVEOPT, ERR_TLS_REQD = 0x49484156454F5054, (1 << 31) + 5
def recvn(s, n):
    b = b""
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c:
            raise EOFError
        b += c
    return b
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5)
recvn(s, 18)
s.sendall(struct.pack(">I", 3))
for opt, data in ((7, struct.pack(">IH", 0, 0)), (3, b""), (8, b""), (6, struct.pack(">IH", 0, 0))):
    s.sendall(struct.pack(">QII", IHAVEOPT, opt, len(data)) + data)
    _, o, typ, ln = struct.unpack(">QIII", recvn(s, 20))
    recvn(s, ln)
    assert typ == ERR_TLS_REQD and o == opt, (opt, hex(typ))
s.sendall(struct.pack(">QII", IHAVEOPT, 1, 0))  # EXPORT_NAME before TLS: closed
s.settimeout(5)
assert s.recv(1) == b"", "EXPORT_NAME before TLS was not closed"
print("ok: GO, LIST, STRUCTURED_REPLY, INFO before STARTTLS: NBD_REP_ERR_TLS_REQD; EXPORT_NAME: closed")
PY
ok "x509 required: plain nbdinfo and qemu-img refused"
if nbdinfo --size "nbds://localhost:$PORT/?tls-certificates=$T/otherclient" >/dev/null 2>&1; then
	fail "a client trusting another CA was served"
fi
ok "x509: a client trusting another CA is refused"
kill -0 "$SRV" || fail "server died"
stop
# the data landed in the image
qemu-img convert -f qcow2 -O raw "$T/img.qcow2" "$T/img.raw"
cmp -n $((4 << 20)) "$T/rand" "$T/img.raw" || fail "the image does not hold the data written over TLS"
qemu-io -f raw -c 'read -P 0x5a 8M 64k' "$T/img.raw" | grep -q "verification failed" &&
	fail "qemu-io's TLS write is not in the image"
ok "x509: the image holds what was written over TLS (qemu-img convert, cmp)"

# ---- 2. x509 offered, not required, UNIX socket ----
SOCK=$T/nbd.sock
serve --socket "$SOCK" --tls x509 --tls-certs "$T/pki"
[ "$(nbdinfo --size "nbd+unix:///?socket=$SOCK")" = $((64 << 20)) ] || fail "plain client, TLS optional"
cmp -n 4096 <(nbdcopy "nbds+unix:///?socket=$SOCK&tls-certificates=$T/client&tls-hostname=localhost" - | head -c 4096) \
	<(head -c 4096 "$T/rand") || fail "TLS client over UNIX, TLS optional"
ok "x509 offered: plain and TLS clients both served on a UNIX socket"
stop

# ---- 3. psk, required ----
serve --socket "$SOCK" --tls psk --tls-psk "$T/psk/keys.psk" --tls-required
PSK=tls-creds-psk,id=tls0,endpoint=client,dir=$T/psk,username=alice
qemu-io --object "$PSK" --image-opts "driver=nbd,server.type=unix,server.path=$SOCK,tls-creds=tls0" \
	-c 'write -P 0x77 16M 1M' -c 'read -P 0x77 16M 1M' >"$T/qio" 2>&1 ||
	{ cat "$T/qio"; fail "qemu-io over TLS-PSK"; }
! grep -q "verification failed" "$T/qio" || fail "qemu-io over TLS-PSK: pattern mismatch"
nbdcopy "nbds+unix://alice@/?socket=$SOCK&tls-psk-file=$T/psk/keys.psk" "$T/back2" ||
	fail "nbdcopy over TLS-PSK"
cmp -n $((4 << 20)) "$T/rand" "$T/back2" || fail "TLS-PSK read differs"
cmp -i $((16 << 20)):0 -n $((1 << 20)) "$T/back2" <(head -c $((1 << 20)) /dev/zero | tr '\0' '\167') ||
	fail "qemu-io's PSK write reads back different"
ok "psk: qemu-io (tls-creds-psk) write/read, nbdcopy (tls-psk-file) reads it back"
if nbdinfo --size "nbds+unix://alice@/?socket=$SOCK&tls-psk-file=$T/badpsk/keys.psk" >/dev/null 2>&1; then
	fail "a wrong PSK was accepted"
fi
if nbdinfo --size "nbd+unix:///?socket=$SOCK" >/dev/null 2>&1; then fail "plain client served"; fi
ok "psk: a wrong key and a plain client are refused"
stop
