#!/usr/bin/env bash
# Safe listening defaults of `vdisk serve-nbd`:
#   no --socket/--port: a UNIX socket, mode 0600, in $VDISK_RUN_DIR (0700),
#   and nothing on TCP (the NBD port 10809 stays closed);
#   --port: TCP on 127.0.0.1 only; --bind without --port: refused;
#   --socket naming a regular file (the image!) or a live server's socket:
#   refused, the file and the other server untouched; a stale socket: replaced.
set -euo pipefail
BUILD=${VDISK_BUILD_DIR:-$(dirname "$0")/../../../build}
VDISK=$BUILD/src/cli/vdisk
for t in nbdinfo python3; do
	command -v "$t" >/dev/null || { echo "SKIP: $t not installed"; exit 77; }
done
[ -x "$VDISK" ] || { echo "SKIP: $VDISK not built"; exit 77; }
T=$(mktemp -d "${TMPDIR:-/tmp}/nbd-defaults.XXXXXX")
PIDS=()
cleanup() {
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	rm -rf "$T"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; for f in "$T"/*.log; do sed "s|^|$f: |" "$f" >&2; done; exit 1; }
ok() { echo "ok: $*"; }
wait_sock() { # PATH PID
	for _ in $(seq 100); do
		[ -S "$1" ] && return 0
		kill -0 "$2" 2>/dev/null || return 1
		sleep 0.05
	done
	return 1
}
tcp_open() { # HOST PORT: exit 0 if something accepts
	python3 -c 'import socket, sys
s = socket.socket(socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET)
s.settimeout(1)
sys.exit(0 if s.connect_ex((sys.argv[1], int(sys.argv[2]))) == 0 else 1)' "$1" "$2"
}
"$VDISK" create -f raw "$T/img.raw" 16M >/dev/null
python3 -c 'import sys; open(sys.argv[1], "r+b").write(b"\x5a" * 4096)' "$T/img.raw"

# 1. the default: a UNIX socket in the run directory
RUN=$T/run
VDISK_RUN_DIR=$RUN "$VDISK" serve-nbd "$T/img.raw" >"$T/d.log" 2>&1 &
P=$!
PIDS+=("$P")
SOCK=$RUN/serve-nbd-$P.sock
wait_sock "$SOCK" "$P" || fail "no default UNIX socket at $SOCK"
[ "$(stat -c %a "$SOCK")" = 600 ] || fail "socket mode $(stat -c %a "$SOCK"), expected 600"
[ "$(stat -c %a "$RUN")" = 700 ] || fail "run directory mode $(stat -c %a "$RUN"), expected 700"
grep -q "unix:$SOCK" "$T/d.log" || fail "the URI printed is not the socket's"
[ "$(nbdinfo --size "nbd+unix:///?socket=$SOCK")" = $((16 << 20)) ] || fail "nbdinfo on the default socket"
! tcp_open 127.0.0.1 10809 || fail "something listens on TCP 10809 without --port"
ok "default: UNIX socket $SOCK (0600, directory 0700), nothing on TCP"

# 2. a --socket that names a regular file, or a live server's socket: refused
# (img2.raw: the first server holds img.raw's write lock)
cp "$T/img.raw" "$T/img2.raw"
rc=0
"$VDISK" serve-nbd "$T/img2.raw" --socket "$T/img.raw" >"$T/f.log" 2>&1 || rc=$?
[ "$rc" -ne 0 ] || fail "serve-nbd --socket on a regular file succeeded"
[ -f "$T/img.raw" ] && [ "$(stat -c %s "$T/img.raw")" = $((16 << 20)) ] ||
	fail "serve-nbd --socket IMAGE removed the image"
grep -q "not a socket" "$T/f.log" || fail "no clear message for a non-socket path"
rc=0
"$VDISK" serve-nbd "$T/img2.raw" --socket "$SOCK" >"$T/l.log" 2>&1 || rc=$?
[ "$rc" -ne 0 ] || fail "a second server took over a live socket"
nbdinfo --size "nbd+unix:///?socket=$SOCK" >/dev/null || fail "the first server lost its socket"
ok "--socket: a regular file and a live server's socket are refused and left alone"
kill -TERM "$P"
wait "$P" || fail "serve-nbd exit $? on SIGTERM"
[ ! -e "$SOCK" ] || fail "socket left behind"

# 3. a stale socket (its server killed) is replaced
python3 -c 'import socket, sys; s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1])' "$T/stale.sock"
[ -S "$T/stale.sock" ] || fail "could not make a stale socket"
"$VDISK" serve-nbd "$T/img.raw" --socket "$T/stale.sock" >"$T/s.log" 2>&1 &
P=$!
PIDS+=("$P")
sleep 0.3
wait_sock "$T/stale.sock" "$P" && nbdinfo --size "nbd+unix:///?socket=$T/stale.sock" >/dev/null ||
	fail "a stale socket was not replaced"
kill -TERM "$P"
wait "$P" || fail "serve-nbd exit $? on SIGTERM"
ok "a stale socket is replaced"

# 4. TCP only with --port, on 127.0.0.1 unless --bind; --bind alone refused
rc=0
"$VDISK" serve-nbd "$T/img.raw" --bind 127.0.0.1 >"$T/b.log" 2>&1 || rc=$?
[ "$rc" -eq 2 ] || fail "--bind without --port: exit $rc, expected 2 (usage)"
PORT=$((20000 + RANDOM % 20000))
"$VDISK" serve-nbd "$T/img.raw" --port $PORT >"$T/t.log" 2>&1 &
P=$!
PIDS+=("$P")
for _ in $(seq 100); do
	tcp_open 127.0.0.1 $PORT && break
	sleep 0.05
done
[ "$(nbdinfo --size "nbd://127.0.0.1:$PORT/")" = $((16 << 20)) ] || fail "nbdinfo over TCP"
ADDR=$(hostname -I 2>/dev/null | awk '{print $1}')
if [ -n "$ADDR" ] && [ "${ADDR#127.}" = "$ADDR" ]; then
	! tcp_open "$ADDR" $PORT || fail "--port without --bind listens on $ADDR"
	ok "--port: TCP on 127.0.0.1:$PORT only (not on $ADDR)"
else
	ok "--port: TCP on 127.0.0.1:$PORT (no other address to check)"
fi
kill -TERM "$P"
wait "$P" || fail "serve-nbd exit $? on SIGTERM"
