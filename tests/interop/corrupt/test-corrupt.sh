#!/usr/bin/env bash
# The corruption corpus (gen-corrupt.py): vdisk check/repair against qemu-img
# on ~200 corrupted qcow2 and VHD images. Exit 77 without qemu-img/qemu-io.
#   VDISK_CORRUPT_CASES=N  more (or fewer) cases;  VDISK_CORRUPT_SEED=S  another seed
set -euo pipefail
VDISK=${VDISK:-${VDISK_BUILD_DIR:?VDISK_BUILD_DIR must be set}/src/cli/vdisk}
for t in qemu-img qemu-io python3; do
	command -v "$t" >/dev/null || { echo "SKIP: $t not installed"; exit 77; }
done
[ -x "$VDISK" ] || { echo "FAIL: no $VDISK"; exit 1; }
# ASan builds: a sanitizer report must fail the case, leaks included
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1}
exec python3 "$(dirname "$0")/gen-corrupt.py" --vdisk "$VDISK" --dir "${VDISK_BUILD_DIR:-/tmp}" -j 2
