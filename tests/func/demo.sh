#!/usr/bin/env bash
# scripts/demo.sh, as the README tells users to run it, with a short runtime
# and the binaries of this build (no deps, no rebuild).
set -euo pipefail
ROOT=${VDISK_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}
command -v xenstore-read >/dev/null 2>&1 || { echo "SKIP: needs xenstore-read"; exit 77; }
out=$(mktemp)
trap 'rm -f "$out"' EXIT
rc=0
VDISK_DEMO_SKIP_BUILD=1 VDISK_DEMO_RUNTIME=${VDISK_DEMO_RUNTIME:-3} \
	timeout -k 10 240 bash "$ROOT/scripts/demo.sh" 2>&1 | tee "$out" || rc=$?
[ "$rc" -eq 0 ] || { echo "FAIL: demo.sh exited $rc"; exit 1; }
for pat in '^[[:space:]]*IOPS: [0-9]' '^[[:space:]]*MB/s: [0-9]' '^[[:space:]]*lat p50: [0-9]+ us p99: [0-9]+ us' \
	'^[[:space:]]*0 verification errors' '^demo: OK$'; do
	grep -Eq "$pat" "$out" || { echo "FAIL: demo output lacks /$pat/"; exit 1; }
done
# Nothing left behind: no process using its temp dir, and the dir is gone.
tmp=$(sed -n 's/.*temp dir \([^ ,]*\),.*/\1/p' "$out" | head -n1)
[ -n "$tmp" ] || { echo "FAIL: demo did not say which temp dir it used"; exit 1; }
sleep 0.5
leftover=$( (pgrep -f -- "$tmp" || true; grep -lsF "VDISK_SIM_DIR=$tmp" /proc/[0-9]*/environ || true) | sort -u)
[ -z "$leftover" ] || { echo "FAIL: demo left processes behind: $leftover"; exit 1; }
[ ! -e "$tmp" ] || { echo "FAIL: demo left $tmp behind"; exit 1; }
echo "PASS demo"
