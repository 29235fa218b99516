#!/usr/bin/env bash
# Idle connections cannot lock good clients out of `vdisk serve-nbd`:
#   per-peer limit: a peer (127.0.0.2) holding 64 connections idle in
#   transmission keeps only --max-per-peer of them, and a good client
#   (nbdinfo, qemu-img, from 127.0.0.1) is served every time (20/20);
#   idle timeout: connections idle in transmission are closed after
#   --idle-timeout, a busy one is not; on a UNIX socket, where the holder
#   and the good client are one uid, 64 idle holders are closed after the
#   timeout and the good client is served 20/20.
set -euo pipefail
BUILD=${VDISK_BUILD_DIR:-$(dirname "$0")/../../../build}
VDISK=$BUILD/src/cli/vdisk
HOLD=$(dirname "$0")/nbd-hold.py
for t in nbdinfo qemu-img python3; do
	command -v "$t" >/dev/null || { echo "SKIP: $t not installed"; exit 77; }
done
[ -x "$VDISK" ] || { echo "SKIP: $VDISK not built"; exit 77; }
T=$(mktemp -d "${TMPDIR:-/tmp}/nbd-limits.XXXXXX")
PIDS=()
cleanup() {
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	rm -rf "$T"
}
trap cleanup EXIT
fail() {
	echo "FAIL: $*" >&2
	for f in "$T"/*.log; do sed "s|^|$(basename "$f"): |" "$f" | tail -20 >&2; done
	exit 1
}
ok() { echo "ok: $*"; }
"$VDISK" create -f raw "$T/img.raw" 16M >/dev/null
python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.2", 0))' 2>/dev/null ||
	{ echo "SKIP: cannot bind 127.0.0.2"; exit 77; }

start() { # LOG ARGS...: serve-nbd in the background, SRV=pid
	local log=$1
	shift
	"$VDISK" serve-nbd "$T/img.raw" "$@" >"$T/$log" 2>&1 &
	SRV=$!
	PIDS+=("$SRV")
}
stop() {
	kill -TERM "$SRV"
	wait "$SRV" || fail "serve-nbd exit $? on SIGTERM"
	! grep -q "ERROR: AddressSanitizer\|runtime error:\|LeakSanitizer" "$T"/*.log ||
		fail "sanitizer report"
}
good_clients() { # URI N: how many of N good clients were served
	local i n=0
	for i in $(seq "$2"); do
		if [ $((i % 2)) -eq 0 ]; then
			qemu-img info -f raw "$1" >/dev/null 2>&1 && n=$((n + 1))
		else
			[ "$(timeout 10 nbdinfo --size "$1" 2>/dev/null)" = $((16 << 20)) ] && n=$((n + 1))
		fi
	done
	echo "$n"
}
hold() { # TARGET N: start a holder, wait until it holds; HOLDER=pid, HELD=count
	rm -f "$T/ready" "$T/done"
	python3 "$HOLD" hold "$1" "$2" "$T/ready" "$T/done" >"$T/holder.log" 2>&1 &
	HOLDER=$!
	PIDS+=("$HOLDER")
	for _ in $(seq 300); do
		[ -f "$T/ready" ] && break
		sleep 0.05
	done
	[ -f "$T/ready" ] || fail "the holder did not get going"
	HELD=$(awk '{print $2}' "$T/ready")
}
unhold() {
	touch "$T/done"
	wait "$HOLDER" || true
}

# 1. per-peer limit over TCP: 64 idle connections from 127.0.0.2
PORT=$((20000 + RANDOM % 20000))
start tcp.log --port $PORT --max-per-peer 8 --idle-timeout 60
sleep 0.3
hold "tcp:127.0.0.1:$PORT:127.0.0.2" 64
[ "$HELD" -eq 8 ] || fail "the holder kept $HELD connections, expected 8 (--max-per-peer 8)"
served=$(good_clients "nbd://127.0.0.1:$PORT/" 20)
unhold
[ "$served" -eq 20 ] || fail "good client served $served/20 with 64 idle holders"
ok "good client served $served/20 while a peer tried to hold 64 idle connections (it kept $HELD)"
stop

# 2. idle timeout: idle connections closed, a busy one kept
start idle.log --port $PORT --idle-timeout 2
sleep 0.3
python3 "$HOLD" idle "tcp:127.0.0.1:$PORT:127.0.0.2" 2 || fail "idle timeout"
stop

# 3. UNIX socket, one uid for all (the per-peer limit cannot tell the holder
# from the good client): the holder takes all 64 slots; once its idle
# connections time out the good client is served
SOCK=$T/nbd.sock
start unix.log --socket "$SOCK" --max-per-peer 64 --idle-timeout 2
for _ in $(seq 100); do [ -S "$SOCK" ] && break; sleep 0.05; done
URI="nbd+unix:///?socket=$SOCK"
hold "unix:$SOCK" 64
[ "$HELD" -eq 64 ] || fail "the holder kept $HELD connections, expected 64"
sleep 3.5 # > the idle timeout plus the 1 s sweep
served=$(good_clients "$URI" 20)
unhold
[ "$served" -eq 20 ] || fail "good client served $served/20 after the idle holders timed out"
grep -q "still open at the end" "$T/holder.log" && ! grep -q "^holder: [1-9]" "$T/holder.log" ||
	fail "idle held connections were not closed: $(cat "$T/holder.log")"
ok "UNIX socket: 64 idle holders closed after --idle-timeout 2; good client served $served/20"
stop
