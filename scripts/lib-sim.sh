# shellcheck shell=bash
#
# Helpers to run vdisk against the simulated hypervisor from shell scripts
# (scripts/demo.sh and tests/func/*.sh). Source it, then:
#
#   vd_setup NAME            temp dir, VDISK_SIM_DIR, XENSTORED_PATH, EXIT trap
#   vd_start_hv              `vdisk sim hv`, waits for hv.sock and xenstored
#   vd_start_vdiskd          `vdiskd --transport sim --foreground`
#   vd_guest_start NAME DOMID [guest options...]    `vdisk sim guest` in the background
#   vd_wait_domain DOMID     waits for /local/domain/DOMID
#   vd_attach DOMID VDEV IMAGE [attach options...]
#   vd_guest_wait NAME [TIMEOUT]   exit status of the guest (124 on timeout)
#   vd_guest_check NAME      guest exited 0 and printed "0 verification errors"
#   vd_detach DOMID VDEV
#
# Every process runs in its own process group with its stdout/stderr in
# $VD_LOGS/NAME.{out,err}; the EXIT trap kills every group we started (and
# their descendants), prints the logs if the script failed and removes the
# temp dir (VDISK_KEEP_TMP=1 keeps it). Every wait is bounded.
#
# Binaries come from $VDISK_BUILD_DIR (set by `meson test`), else ./build.
# Exit codes follow meson: 0 pass, 1 fail, 77 skip.

VD_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# Scale every timeout (e.g. 3 under valgrind); ASan builds are slower too.
VD_TSCALE=${VDISK_TIMEOUT_SCALE:-1}

declare -A VD_PID=()
declare -A VD_GUEST_OF=()
VD_NAMES=()
VD_TMP=
VD_LOGS=
VD_FAILED=0

vd_log() {
	printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2
}

vd_fail() {
	VD_FAILED=1
	printf 'FAIL: %s\n' "$*" >&2
	exit 1
}

vd_skip() {
	printf 'SKIP: %s\n' "$*" >&2
	exit 77
}

# Skip (77) unless every named tool is installed.
vd_require_tools() {
	local t
	for t in "$@"; do
		command -v "$t" >/dev/null 2>&1 || vd_skip "needs $t (not installed)"
	done
}

vd_timeout() {
	echo $(($1 * VD_TSCALE))
}

# ---- binaries -------------------------------------------------------------

vd_find_binaries() {
	local b=${VDISK_BUILD_DIR:-$VD_ROOT/build}
	[ -d "$b" ] || vd_fail "build dir $b not found (build first: meson setup build && ninja -C build)"
	VD_BUILD=$(cd "$b" && pwd)
	VDISK=${VDISK:-$VD_BUILD/src/cli/vdisk}
	VDISKD=${VDISKD:-$VD_BUILD/src/daemon/vdiskd}
	if [ ! -x "$VDISK" ]; then
		VDISK=$(find "$VD_BUILD" -maxdepth 4 -type f -name vdisk -perm -u+x 2>/dev/null | head -n1)
	fi
	if [ ! -x "$VDISKD" ]; then
		VDISKD=$(find "$VD_BUILD" -maxdepth 4 -type f -name vdiskd -perm -u+x 2>/dev/null | head -n1)
	fi
	[ -n "$VDISK" ] && [ -x "$VDISK" ] || vd_fail "vdisk binary not found under $VD_BUILD"
	[ -n "$VDISKD" ] && [ -x "$VDISKD" ] || vd_fail "vdiskd binary not found under $VD_BUILD"
	export VDISK VDISKD
}

# ---- setup and cleanup ----------------------------------------------------

vd_setup() {
	local name=${1:-vdisk}
	VD_TMP=$(mktemp -d "${TMPDIR:-/tmp}/vd-${name:0:24}.XXXXXX")
	VD_LOGS=$VD_TMP/logs
	mkdir -p "$VD_LOGS" "$VD_TMP/sim"
	export VDISK_SIM_DIR=$VD_TMP/sim
	export XENSTORED_PATH=$VDISK_SIM_DIR/xenstored
	# Sanitizer reports go to the logs we print on failure.
	export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
	export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
	trap vd_cleanup EXIT
	trap 'exit 130' INT
	trap 'exit 143' TERM HUP
	vd_find_binaries
	vd_log "temp dir $VD_TMP, build $VD_BUILD"
}

# pid alive and not a zombie
vd_pid_alive() {
	local st
	[ -r "/proc/$1/stat" ] || return 1
	st=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
	st=${st##*) }
	st=${st%% *}
	[ -n "$st" ] && [ "$st" != Z ] && [ "$st" != X ]
}

vd_alive() {
	local pid=${VD_PID[$1]:-}
	[ -n "$pid" ] && vd_pid_alive "$pid"
}

vd_pid() {
	echo "${VD_PID[$1]:-}"
}

# pid and all its descendants, children first
vd_descendants() {
	local c
	for c in $(pgrep -P "$1" 2>/dev/null || true); do
		vd_descendants "$c"
	done
	echo "$1"
}

# Send SIG to a process, its process group and its descendants.
vd_kill_tree() {
	local pid=$1 sig=${2:-TERM} p
	for p in $(vd_descendants "$pid"); do
		kill -s "$sig" "$p" 2>/dev/null || true
	done
	kill -s "$sig" -- "-$pid" 2>/dev/null || true
}

# Run "$@" as NAME in the background, in its own process group, killed if we
# die (pdeathsig), logging to $VD_LOGS/NAME.{out,err}.
vd_spawn() {
	local name=$1
	shift
	[ -z "${VD_PID[$name]:-}" ] || vd_fail "internal: process name $name reused"
	setsid setpriv --pdeathsig KILL -- "$@" \
		>"$VD_LOGS/$name.out" 2>"$VD_LOGS/$name.err" </dev/null &
	VD_PID[$name]=$!
	VD_NAMES+=("$name")
	echo "$*" >"$VD_LOGS/$name.cmd"
	vd_log "started $name (pid ${VD_PID[$name]}): $*"
}

# Wait up to TIMEOUT seconds for NAME to exit; prints nothing, returns its exit
# status, or 124 after killing it on timeout.
vd_wait_exit() {
	local name=$1 t=${2:-60} pid rc=0 deadline
	pid=${VD_PID[$name]:-}
	[ -n "$pid" ] || vd_fail "internal: no process $name"
	if [ "$pid" = reaped ]; then
		return "$(cat "$VD_LOGS/$name.rc")"
	fi
	deadline=$((SECONDS + $(vd_timeout "$t")))
	while vd_pid_alive "$pid"; do
		if [ "$SECONDS" -ge "$deadline" ]; then
			vd_log "$name still running after ${t}s: killing it"
			vd_kill_tree "$pid" TERM
			sleep 1
			vd_kill_tree "$pid" KILL
			wait "$pid" 2>/dev/null || true
			VD_PID[$name]=reaped
			echo 124 >"$VD_LOGS/$name.rc"
			return 124
		fi
		sleep 0.1
	done
	wait "$pid" 2>/dev/null || rc=$?
	VD_PID[$name]=reaped
	echo "$rc" >"$VD_LOGS/$name.rc"
	return "$rc"
}

# Stop NAME: SIGTERM to its group, SIGKILL after TIMEOUT. Returns its status.
vd_stop() {
	local name=$1 t=${2:-10} pid rc=0 deadline
	pid=${VD_PID[$name]:-}
	if [ -z "$pid" ] || [ "$pid" = reaped ]; then
		return 0
	fi
	kill -s TERM "$pid" 2>/dev/null || true
	deadline=$((SECONDS + $(vd_timeout "$t")))
	while vd_pid_alive "$pid"; do
		if [ "$SECONDS" -ge "$deadline" ]; then
			vd_log "$name ignored SIGTERM for ${t}s: SIGKILL"
			vd_kill_tree "$pid" KILL
			break
		fi
		sleep 0.1
	done
	wait "$pid" 2>/dev/null || rc=$?
	VD_PID[$name]=reaped
	echo "$rc" >"$VD_LOGS/$name.rc"
	# Whatever it left in its group (e.g. workers) goes too.
	kill -s KILL -- "-$pid" 2>/dev/null || true
	return "$rc"
}

vd_dump_logs() {
	local f
	[ -n "$VD_LOGS" ] && [ -d "$VD_LOGS" ] && [ -n "$(ls -A "$VD_LOGS")" ] || return 0
	echo "==================== logs ($VD_LOGS) ====================" >&2
	for f in "$VD_LOGS"/*; do
		[ -f "$f" ] && [ -s "$f" ] || continue
		case "$f" in *.rc | *.cmd) continue ;; esac
		echo "---------- ${f##*/} ($(wc -l <"$f") lines, last 150) ----------" >&2
		tail -n 150 "$f" >&2
	done
	echo "=========================================================" >&2
}

vd_cleanup() {
	local rc=$? i name pid
	trap - EXIT INT TERM HUP
	set +e
	for ((i = ${#VD_NAMES[@]} - 1; i >= 0; i--)); do
		name=${VD_NAMES[$i]}
		pid=${VD_PID[$name]}
		[ "$pid" = reaped ] && continue
		vd_kill_tree "$pid" TERM
	done
	for ((i = ${#VD_NAMES[@]} - 1; i >= 0; i--)); do
		name=${VD_NAMES[$i]}
		pid=${VD_PID[$name]}
		[ "$pid" = reaped ] && continue
		for _ in $(seq 30); do
			vd_pid_alive "$pid" || break
			sleep 0.1
		done
		vd_kill_tree "$pid" KILL
		wait "$pid" 2>/dev/null
	done
	if [ "$rc" -ne 0 ] && [ "$rc" -ne 77 ]; then
		vd_dump_logs
	fi
	if [ -n "$VD_TMP" ] && [ -d "$VD_TMP" ]; then
		if [ "${VDISK_KEEP_TMP:-0}" = 1 ]; then
			echo "kept $VD_TMP" >&2
		else
			rm -rf "$VD_TMP"
		fi
	fi
	exit "$rc"
}

# ---- xenstore -------------------------------------------------------------

# xenstore-CMD against the sim (as dom0), bounded.
vd_xs() {
	local cmd=$1
	shift
	timeout -k 2 "$(vd_timeout 10)" "xenstore-$cmd" "$@"
}

# Wait up to TIMEOUT for a xenstore path to exist.
vd_wait_xs_path() {
	local path=$1 t=${2:-30} deadline
	deadline=$((SECONDS + $(vd_timeout "$t")))
	until vd_xs exists "$path" >/dev/null 2>&1; do
		[ "$SECONDS" -lt "$deadline" ] || return 1
		sleep 0.1
	done
}

# Wait up to TIMEOUT for a xenstore node to read VALUE.
vd_wait_xs_value() {
	local path=$1 want=$2 t=${3:-30} deadline v
	deadline=$((SECONDS + $(vd_timeout "$t")))
	while :; do
		v=$(vd_xs read "$path" 2>/dev/null || true)
		[ "$v" = "$want" ] && return 0
		[ "$SECONDS" -lt "$deadline" ] || {
			vd_log "$path is '$v', wanted '$want'"
			return 1
		}
		sleep 0.1
	done
}

vd_be_path() {
	echo "/local/domain/0/backend/vbd3/$1/$2"
}

vd_fe_path() {
	echo "/local/domain/$1/device/vbd/$2"
}

# ---- components -----------------------------------------------------------

vd_start_hv() {
	local deadline
	vd_spawn hv "$VDISK" sim hv --dir "$VDISK_SIM_DIR"
	deadline=$((SECONDS + $(vd_timeout 15)))
	until [ -S "$VDISK_SIM_DIR/hv.sock" ] && [ -S "$VDISK_SIM_DIR/xenstored" ]; do
		vd_alive hv || vd_fail "vdisk sim hv exited during startup"
		[ "$SECONDS" -lt "$deadline" ] || vd_fail "hv.sock/xenstored not created in 15s"
		sleep 0.05
	done
	# The socket exists before the server answers: wait for a real reply.
	vd_wait_xs_path / 10 || vd_fail "simulated xenstored does not answer"
}

vd_start_vdiskd() {
	vd_spawn vdiskd "$VDISKD" --transport sim --foreground "$@"
	# Nothing to poll for yet (vdiskd only watches); give it a moment to fail.
	sleep 0.3
	vd_alive vdiskd || vd_fail "vdiskd exited during startup"
}

vd_start_all() {
	vd_start_hv
	vd_start_vdiskd "$@"
}

vd_assert_alive() {
	local n
	for n in "$@"; do
		vd_alive "$n" || vd_fail "$n is not running any more"
	done
}

# vd_guest_start NAME DOMID [options...]
vd_guest_start() {
	local name=$1 domid=$2
	shift 2
	vd_spawn "$name" "$VDISK" sim guest --dir "$VDISK_SIM_DIR" --domid "$domid" "$@"
	VD_GUEST_OF[$domid]=$name
}

# Wait for /local/domain/DOMID (the guest's domain); fail early if the guest
# started for DOMID exits first.
vd_wait_domain() {
	local domid=$1 t=${2:-30} g deadline
	g=${VD_GUEST_OF[$domid]:-}
	deadline=$((SECONDS + $(vd_timeout "$t")))
	until vd_xs exists "/local/domain/$domid" >/dev/null 2>&1; do
		if [ -n "$g" ] && ! vd_alive "$g"; then
			vd_fail "guest $g exited before /local/domain/$domid appeared"
		fi
		[ "$SECONDS" -lt "$deadline" ] ||
			vd_fail "/local/domain/$domid did not appear in ${t}s"
		sleep 0.1
	done
}

# Run a CLI command, bounded, logged to $VD_LOGS/cli.log.
vd_cli() {
	local rc=0
	echo "+ vdisk $*" >>"$VD_LOGS/cli.log"
	timeout -k 5 "$(vd_timeout 60)" "$VDISK" "$@" >>"$VD_LOGS/cli.log" 2>&1 || rc=$?
	[ "$rc" -eq 0 ] || echo "(exit $rc)" >>"$VD_LOGS/cli.log"
	return "$rc"
}

# vd_create_raw PATH SIZE
vd_create_raw() {
	vd_cli create -f raw "$1" "$2" || vd_fail "vdisk create -f raw $1 $2 failed"
	[ -f "$1" ] || vd_fail "vdisk create did not create $1"
}

vd_attach() {
	vd_cli attach "$@" || vd_fail "vdisk attach $* failed"
}

vd_detach() {
	vd_cli detach "$@" || vd_fail "vdisk detach $* failed"
}

# vd_guest_wait NAME [TIMEOUT]: echo nothing, return the guest's status.
vd_guest_wait() {
	local rc=0
	vd_wait_exit "$1" "${2:-120}" || rc=$?
	return "$rc"
}

# The guest exited 0 and reported zero verification errors.
vd_guest_check() {
	local name=$1 rc=0
	vd_wait_exit "$name" "${2:-120}" || rc=$?
	[ "$rc" -ne 124 ] || vd_fail "guest $name timed out"
	grep -Eq '^[[:space:]]*0 verification errors' "$VD_LOGS/$name.out" ||
		vd_fail "guest $name: no '0 verification errors' line (exit $rc)"
	[ "$rc" -eq 0 ] || vd_fail "guest $name exited $rc"
	vd_log "guest $name: $(vd_guest_summary "$name" | tr '\n' ';')"
}

# The summary lines a guest printed.
vd_guest_summary() {
	grep -E '^[[:space:]]*(IOPS:|MB/s:|lat p50:|[0-9]+ verification errors)' \
		"$VD_LOGS/$1.out" || true
}

# Print a file with a header (for what a test "saw").
vd_show() {
	echo "---- $1 ----"
	cat "$2"
}
