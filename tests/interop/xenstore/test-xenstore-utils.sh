#!/bin/bash
# The real xenstore-utils against vd-xenstored, as dom0 and as guest 5.
# Usage: test-xenstore-utils.sh PATH-TO-vd-xenstored
# Exit 0 pass, 1 fail, 77 skip (xenstore-utils not installed).
set -u

XSD=${1:?usage: $0 vd-xenstored}
for t in xenstore-read xenstore-write xenstore-ls xenstore-list xenstore-rm \
	xenstore-exists xenstore-chmod xenstore-watch; do
	command -v "$t" >/dev/null 2>&1 || { echo "SKIP: $t not installed"; exit 77; }
done

dir=$(mktemp -d /tmp/vd-xs-interop.XXXXXX)
pid=
cleanup() {
	if [ -n "$pid" ]; then
		kill "$pid" 2>/dev/null
		wait "$pid" 2>/dev/null
	fi
	rm -rf "$dir"
}
trap cleanup EXIT

"$XSD" --socket "$dir/s0" --guest-socket "$dir/s5" 5 --introduce 5 &
pid=$!
for _ in $(seq 50); do
	[ -S "$dir/s0" ] && [ -S "$dir/s5" ] && break
	sleep 0.1
done
[ -S "$dir/s0" ] || { echo "FAIL: vd-xenstored did not start"; exit 1; }

fails=0
dom0() { XENSTORED_PATH="$dir/s0" timeout 10 "$@"; }
guest() { XENSTORED_PATH="$dir/s5" timeout 10 "$@"; }
check() { # check DESCRIPTION EXPECTED ACTUAL
	if [ "$2" == "$3" ]; then
		echo "ok: $1"
	else
		echo "FAIL: $1: expected [$2] got [$3]"
		fails=$((fails + 1))
	fi
}
ok() { # ok DESCRIPTION CMD...
	local d=$1; shift
	if "$@"; then echo "ok: $d"; else echo "FAIL: $d"; fails=$((fails + 1)); fi
}
fails_() { # fails_ DESCRIPTION CMD...
	local d=$1; shift
	if "$@" 2>/dev/null; then echo "FAIL: $d (succeeded)"; fails=$((fails + 1)); else echo "ok: $d"; fi
}

# dom0: write / read / list / ls / exists / rm
ok "write" dom0 xenstore-write /vd/a 1 /vd/b two /vd/c/d deep
check "read" "two" "$(dom0 xenstore-read /vd/b)"
check "list" "a b c" "$(dom0 xenstore-list /vd | tr '\n' ' ' | sed 's/ $//')"
check "ls" 'a = "1"|b = "two"|c = ""| d = "deep"' "$(dom0 xenstore-ls /vd | tr '\n' '|' | sed 's/|$//')"
check "ls -p shows perms" "1" "$(dom0 xenstore-ls -p /vd | grep -c '^a = "1" .*(n0)$')"
ok "exists" dom0 xenstore-exists /vd/c/d
fails_ "exists missing" dom0 xenstore-exists /vd/nothing
ok "rm" dom0 xenstore-rm /vd/c
fails_ "read after rm" dom0 xenstore-read /vd/c/d
ok "rm missing node with parent" dom0 xenstore-rm /vd/c
check "domain introduced" "5" "$(dom0 xenstore-read /local/domain/5/domid)"

# guest 5: no access to dom0's node until chmod grants it
fails_ "guest cannot read n0 node" guest xenstore-read /vd/a
fails_ "guest cannot write n0 node" guest xenstore-write /vd/a x
ok "chmod r5" dom0 xenstore-chmod /vd/a n0 r5
check "guest reads after chmod" "1" "$(guest xenstore-read /vd/a)"
fails_ "guest still cannot write" guest xenstore-write /vd/a x
check "perms after chmod" "1" "$(dom0 xenstore-ls -p /vd | grep -c '^a = "1" .*(n0,r5)$')"
ok "guest writes its home (relative)" guest xenstore-write data/x hello
check "dom0 reads guest node" "hello" "$(dom0 xenstore-read /local/domain/5/data/x)"
check "guest owns its node" "1" "$(dom0 xenstore-ls -p /local/domain/5/data | grep -c '(n5)$')"
check "guest lists its home" "name domid data" "$(guest xenstore-list /local/domain/5 | tr '\n' ' ' | sed 's/ $//')"
fails_ "guest cannot rm dom0 node" guest xenstore-rm /vd/b

# xenstore-watch: the initial event and one change
dom0 xenstore-watch -n 2 /vd/w >"$dir/watch.out" 2>&1 &
wpid=$!
for _ in $(seq 50); do
	[ -s "$dir/watch.out" ] && break
	sleep 0.1
done
ok "watch change write" dom0 xenstore-write /vd/w/k v
wait "$wpid"
wrc=$?
check "xenstore-watch exit" "0" "$wrc"
check "xenstore-watch events" "/vd/w|/vd/w/k" "$(tr '\n' '|' <"$dir/watch.out" | sed 's/|$//')"

# a guest watch does not see what it cannot read, then does after chmod
guest xenstore-watch -n 2 /vd >"$dir/gwatch.out" 2>&1 &
wpid=$!
for _ in $(seq 50); do
	[ -s "$dir/gwatch.out" ] && break
	sleep 0.1
done
ok "hidden write" dom0 xenstore-write /vd/hidden h
ok "visible write" dom0 xenstore-write /vd/a 2
wait "$wpid"
check "guest watch events" "/vd|/vd/a" "$(tr '\n' '|' <"$dir/gwatch.out" | sed 's/|$//')"

kill "$pid"
wait "$pid"
check "vd-xenstored exits 0 on SIGTERM" "0" "$?"
pid=
[ -e "$dir/s0" ] && { echo "FAIL: socket left behind"; fails=$((fails + 1)); }

if [ "$fails" -ne 0 ]; then
	echo "$fails failure(s)"
	exit 1
fi
echo "all passed"
exit 0
