#!/usr/bin/env bash
# Everything CI checks, in one command (.ci/run execs this):
#   deps, format check, release build + all suites, ASan+UBSan build + all
#   suites, clang-tidy, cppcheck, banned-function grep.
# Each lint/build step counts as one test; each meson test counts as one.
# The LAST line is "N passed, N failed, N skipped"; exit 1 if anything failed.
#
# Environment:
#   VDISK_TEST_SUITES="unit func"  only these meson suites (default: all)
#   VDISK_TEST_SKIP="asan tidy"    skip steps: format release asan tsan fuzz tidy cppcheck ban
#   VDISK_FUZZ_SECONDS=N            libFuzzer time per target in the fuzz step (default 20)
#   JOBS=N                          ninja -j (default 2)
set -uo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
JOBS=${JOBS:-2}
SKIP=" ${VDISK_TEST_SKIP:-} "
SUITES=${VDISK_TEST_SUITES:-}
export CI=${CI:-}

PASSED=0
FAILED=0
SKIPPED=0
SUMMARY=()
T0=$SECONDS

section() {
	printf '\n===== %s =====\n' "$*"
}

# step_result NAME RC
step_result() {
	if [ "$2" -eq 0 ]; then
		PASSED=$((PASSED + 1))
		SUMMARY+=("PASS  $1")
	else
		FAILED=$((FAILED + 1))
		SUMMARY+=("FAIL  $1")
	fi
}

skipped() {
	case "$SKIP" in *" $1 "*) return 0 ;; esac
	return 1
}

# Add a meson testlog.json to the totals; prints its counts.
count_testlog() {
	local name=$1 log=$2 out p f s
	if [ ! -s "$log" ]; then
		echo "$name: no $log (meson test did not run)"
		step_result "$name: meson test (no testlog.json)" 1
		return
	fi
	out=$(python3 - "$log" <<'EOF'
import json, sys
p = f = s = 0
bad = []
with open(sys.argv[1]) as fh:
    for line in fh:
        line = line.strip()
        if not line:
            continue
        try:
            t = json.loads(line)
        except ValueError:
            continue
        r = t.get("result", "")
        if r in ("OK", "EXPECTEDFAIL"):
            p += 1
        elif r == "SKIP":
            s += 1
        else:
            f += 1
            name = t.get("name", "?").split(" / ")[-1]
            bad.append("%s(%s)" % (name, r))
more = " +%d more" % (len(bad) - 12) if len(bad) > 12 else ""
print(p, f, s, " ".join(bad[:12]) + more)
EOF
	) || out="0 1 0 unparsable-testlog"
	read -r p f s bad <<<"$out"
	PASSED=$((PASSED + p))
	FAILED=$((FAILED + f))
	SKIPPED=$((SKIPPED + s))
	SUMMARY+=("$( [ "$f" -eq 0 ] && echo PASS || echo FAIL)  $name: $p passed, $f failed, $s skipped${bad:+ [$bad]}")
}

# build_and_test NAME DIR [meson setup options...]
build_and_test() {
	local name=$1 dir=$2 rc
	shift 2
	section "$name: configure + build ($dir)"
	rc=1
	if [ -f "$dir/build.ninja" ]; then
		meson configure "$dir" "$@" >/dev/null
		rc=$?
	fi
	if [ "$rc" -ne 0 ]; then
		rm -rf "$dir"
		meson setup "$dir" "$@"
		rc=$?
	fi
	if [ "$rc" -eq 0 ]; then
		ninja -C "$dir" -j "$JOBS" -k 0
		rc=$?
	fi
	step_result "$name: build" "$rc"
	[ -f "$dir/build.ninja" ] || {
		step_result "$name: meson test (not configured)" 1
		return
	}

	section "$name: meson test"
	rm -f "$dir/meson-logs/testlog.json"
	local targs=(--no-rebuild --print-errorlogs -C "$dir" --num-processes "$JOBS")
	if [ "$name" = asan ]; then
		targs+=(--timeout-multiplier 3)
	fi
	local s
	for s in $SUITES; do
		targs+=(--suite "$s")
	done
	# After a partial build, run the tests whose programs exist (meson test
	# refuses to start if any is missing) and count the others as failed.
	local runnable=() missing=() line
	while IFS= read -r line; do
		case "$line" in
		run\ *) runnable+=("${line#run }") ;;
		missing\ *) missing+=("${line#missing }") ;;
		esac
	done < <(meson introspect --tests "$dir" | python3 -c '
import json, os, sys
suites = sys.argv[1].split()
for t in json.load(sys.stdin):
    if suites and not any(s in suites or s.endswith(":" + x) for s in t["suite"] for x in suites):
        continue
    state = "run" if os.path.exists(t["cmd"][0]) else "missing"
    print(state, t["name"])
' "$SUITES")
	if [ "${#missing[@]}" -gt 0 ]; then
		echo "not built, counted as failed: ${missing[*]}"
		FAILED=$((FAILED + ${#missing[@]}))
		SUMMARY+=("FAIL  $name: ${#missing[@]} tests not built")
		[ "${#runnable[@]}" -gt 0 ] || return
		targs+=("${runnable[@]}")
	fi
	VDISK_TIMEOUT_SCALE=$([ "$name" = asan ] && echo 3 || echo 1) \
		meson test "${targs[@]}"
	count_testlog "$name" "$dir/meson-logs/testlog.json"
}

C_DIRS=(src sim tests bench)

c_files() {
	local d
	for d in "$@"; do
		[ -d "$d" ] && find "$d" -type f \( -name '*.c' -o -name '*.h' \)
	done | sort
}

# ---------------------------------------------------------------------------
section "deps"
if ! bash ./scripts/deps.sh; then
	step_result "deps" 1
fi

if ! skipped format; then
	section "format (clang-format --dry-run -Werror)"
	mapfile -t files < <(c_files "${C_DIRS[@]}")
	rc=0
	if [ "${#files[@]}" -gt 0 ]; then
		clang-format --dry-run -Werror "${files[@]}" 2>"/tmp/vdisk-format.$$" || rc=$?
		if [ "$rc" -ne 0 ]; then
			bad=$(grep -oE '^[^:]+\.[ch]:[0-9]+' "/tmp/vdisk-format.$$" | cut -d: -f1 | sort | uniq -c)
			echo "files not formatted (count of places):"
			echo "$bad"
			head -n 60 "/tmp/vdisk-format.$$"
			echo "(fix: clang-format -i FILE)"
		fi
		rm -f "/tmp/vdisk-format.$$"
	fi
	echo "format: ${#files[@]} files, $([ "$rc" -eq 0 ] && echo clean || echo NOT clean)"
	step_result "format" "$rc"
fi

if ! skipped release; then
	build_and_test release build --buildtype=release
fi

if ! skipped asan; then
	build_and_test asan build-asan -Db_sanitize=address,undefined -Db_lundef=false
fi

# The threaded tests (queue thread, cross-thread messages, reactor) under
# ThreadSanitizer, as STYLE.md asks: clang, only what has threads.
if ! skipped tsan; then
	section "tsan: queue and io tests (clang -fsanitize=thread)"
	rc=0
	if [ ! -f build-tsan/build.ninja ]; then
		rm -rf build-tsan
		CC=clang meson setup build-tsan -Db_sanitize=thread -Db_lundef=false >/dev/null || rc=$?
	fi
	if [ "$rc" -eq 0 ]; then
		ninja -C build-tsan -j "$JOBS" tests/unit/queue/test-queue tests/unit/io/test-io || rc=$?
	fi
	step_result "tsan: build" "$rc"
	if [ "$rc" -eq 0 ]; then
		rm -f build-tsan/meson-logs/testlog.json
		TSAN_OPTIONS=halt_on_error=1 meson test -C build-tsan --no-rebuild --print-errorlogs \
			queue-datapath io-conformance
		count_testlog tsan build-tsan/meson-logs/testlog.json
	fi
fi

# Each libFuzzer target (clang, ASan+UBSan) fuzzes for a while from its
# committed corpus: the replays in the 'fuzz' suite only re-run known
# inputs. A crash fails the step and leaves the input in build-fuzz/crashes/;
# add it to tests/fuzz/corpus/<target>/ with the fix.
if ! skipped fuzz; then
	section "fuzz: libFuzzer, ${VDISK_FUZZ_SECONDS:-20}s per target (clang -fsanitize=fuzzer,address,undefined)"
	rc=0
	if [ ! -f build-fuzz/build.ninja ]; then
		rm -rf build-fuzz
		CC=clang meson setup build-fuzz -Dfuzz=true -Db_sanitize=address,undefined \
			-Db_lundef=false >/dev/null || rc=$?
	fi
	fuzzers=()
	if [ "$rc" -eq 0 ]; then
		mapfile -t fuzzers < <(meson introspect --targets build-fuzz | python3 -c '
import json, sys
for t in json.load(sys.stdin):
    n = t["name"]
    if n.startswith("fuzz-") and not n.endswith("-replay"):
        print(n[len("fuzz-"):])
')
		targets=()
		for t in "${fuzzers[@]}"; do
			targets+=("tests/fuzz/fuzz-$t")
		done
		[ "${#targets[@]}" -gt 0 ] || rc=1
		[ "$rc" -ne 0 ] || ninja -C build-fuzz -j "$JOBS" "${targets[@]}" || rc=$?
	fi
	step_result "fuzz: build" "$rc"
	if [ "$rc" -eq 0 ]; then
		mkdir -p build-fuzz/crashes
		for t in "${fuzzers[@]}"; do
			work=$(mktemp -d)
			cp -r "tests/fuzz/corpus/$t/." "$work/"
			dict=()
			[ -f "tests/fuzz/$t.dict" ] && dict=(-dict="tests/fuzz/$t.dict")
			trc=0
			UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 ASAN_OPTIONS=detect_leaks=1 \
				timeout $(( ${VDISK_FUZZ_SECONDS:-20} * 3 + 60 )) \
				"build-fuzz/tests/fuzz/fuzz-$t" -max_total_time="${VDISK_FUZZ_SECONDS:-20}" \
				-timeout=10 -rss_limit_mb=4096 -print_final_stats=1 "${dict[@]}" \
				-artifact_prefix="build-fuzz/crashes/$t-" "$work" >"build-fuzz/fuzz-$t.log" 2>&1 ||
				trc=$?
			rm -rf "$work"
			echo "fuzz-$t: rc $trc, $(grep -m1 -oE 'stat::number_of_executed_units: *[0-9]+' \
				"build-fuzz/fuzz-$t.log" | grep -oE '[0-9]+$') runs"
			if [ "$trc" -ne 0 ]; then
				grep -E -m 20 'ERROR|SUMMARY|Test unit written|==[0-9]+==' "build-fuzz/fuzz-$t.log"
			fi
			step_result "fuzz: $t" "$trc"
		done
	fi
fi

if ! skipped tidy; then
	section "clang-tidy (src sim)"
	rc=0
	if [ ! -f build/compile_commands.json ]; then
		echo "no build/compile_commands.json"
		rc=1
	else
		mapfile -t tfiles < <(python3 - "$ROOT" <<'EOF'
import json, os, sys
root = sys.argv[1]
seen = set()
for e in json.load(open(os.path.join(root, "build", "compile_commands.json"))):
    f = os.path.normpath(os.path.join(e["directory"], e["file"]))
    rel = os.path.relpath(f, root)
    if rel.startswith(("src/", "sim/")) and rel.endswith(".c") and rel not in seen:
        seen.add(rel)
        print(rel)
EOF
		)
		echo "${#tfiles[@]} files"
		if [ "${#tfiles[@]}" -gt 0 ]; then
			tlog=$(mktemp)
			printf '%s\n' "${tfiles[@]}" |
				xargs -P "$JOBS" -n 4 clang-tidy -p build --quiet \
					--extra-arg=-Wno-unknown-warning-option --extra-arg=-Wno-error \
					>"$tlog" 2>&1
			rc=$?
			grep -v -E '^[0-9]+ warnings? (and [0-9]+ errors? )?generated\.?$' "$tlog" |
				grep -v -E '^(Suppressed |Use -header-filter|Use -system-headers)' || true
			rm -f "$tlog"
		fi
	fi
	step_result "clang-tidy" "$rc"
fi

if ! skipped cppcheck; then
	section "cppcheck"
	rc=0
	cppcheck --enable=warning,portability,performance --error-exitcode=1 --quiet \
		--inline-suppr -j "$JOBS" --std=c11 -I src -I . -I include \
		-D__GNUC__ -D__linux__ src sim || rc=$?
	step_result "cppcheck" "$rc"
fi

if ! skipped ban; then
	section "banned functions (atoi strcpy strncpy strcat sprintf vsprintf strtok)"
	rc=0
	mapfile -t files < <(c_files src sim tests)
	if [ "${#files[@]}" -gt 0 ] &&
		grep -nwE '(atoi|strcpy|strncpy|strcat|sprintf|vsprintf|strtok)[[:space:]]*\(' "${files[@]}"; then
		echo "banned functions used (use strtoul + checks, snprintf, memcpy with bounds)"
		rc=1
	fi
	step_result "banned functions" "$rc"
fi

section "summary ($((SECONDS - T0))s)"
printf '%s\n' "${SUMMARY[@]}"
if [ "$SKIPPED" -gt 0 ]; then
	echo "$PASSED passed, $FAILED failed, $SKIPPED skipped"
else
	echo "$PASSED passed, $FAILED failed, 0 skipped"
fi
[ "$FAILED" -eq 0 ]
