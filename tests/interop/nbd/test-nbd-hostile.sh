#!/usr/bin/env bash
# Hostile raw-socket clients (nbd-hostile.py) against `vdisk serve-nbd`: bad
# magics, oversized options and names, requests past the end, oversized
# writes, unknown commands, clients vanishing with I/O in flight, a client
# that never reads, too many connections, clients idle in negotiation. The
# server must answer each as the protocol says, stay up, serve a good client
# afterwards, and exit 0 on SIGTERM (under ASan: with no error and no leak).
set -euo pipefail
BUILD=${VDISK_BUILD_DIR:-$(dirname "$0")/../../../build}
VDISK=$BUILD/src/cli/vdisk
command -v python3 >/dev/null || { echo "SKIP: python3 not installed"; exit 77; }
[ -x "$VDISK" ] || { echo "SKIP: $VDISK not built"; exit 77; }
T=$(mktemp -d "${TMPDIR:-/tmp}/nbd-hostile.XXXXXX")
SRV=
trap '[ -z "$SRV" ] || kill -9 "$SRV" 2>/dev/null || true; rm -rf "$T"' EXIT
SOCK=$T/nbd.sock
SIZE=$((128 << 20))
"$VDISK" create -f qcow2 "$T/img.qcow2" $SIZE >/dev/null
"$VDISK" serve-nbd "$T/img.qcow2" --socket "$SOCK" --handshake-timeout 2 >"$T/srv.log" 2>&1 &
SRV=$!
for _ in $(seq 100); do
	[ -S "$SOCK" ] && break
	sleep 0.05
done
[ -S "$SOCK" ] || { cat "$T/srv.log"; echo "FAIL: no socket"; exit 1; }
rc=0
python3 "$(dirname "$0")/nbd-hostile.py" "$SOCK" $SIZE || rc=1
kill -0 "$SRV" 2>/dev/null || { echo "FAIL: the server died"; rc=1; }
kill -TERM "$SRV" 2>/dev/null || true
src=0
wait "$SRV" || src=$?
SRV=
if [ "$src" -ne 0 ] || grep -q "ERROR: AddressSanitizer\|runtime error:\|LeakSanitizer" "$T/srv.log"; then
	echo "FAIL: server exit $src"
	rc=1
fi
[ "$rc" -eq 0 ] || sed 's/^/server: /' "$T/srv.log" | head -60
[ "$rc" -eq 0 ] && echo "ok: server exited 0 on SIGTERM"
exit $rc
