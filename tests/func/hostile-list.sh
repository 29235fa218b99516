#!/usr/bin/env bash
# The hostile cases registered in tests/func/meson.build are exactly the ones
# `vdisk sim guest --hostile list` prints (so none is silently untested).
#   hostile-list.sh CASE...
set -euo pipefail
# shellcheck source=../../scripts/lib-sim.sh
. "${VDISK_SOURCE_DIR:-$(dirname "$0")/../..}/scripts/lib-sim.sh"
vd_find_binaries

got=$(timeout 10 "$VDISK" sim guest --hostile list | awk 'NF { print $1 }' | sort)
want=$(printf '%s\n' "$@" | sort)
echo "vdisk sim guest --hostile list: $(echo "$got" | wc -l) cases; meson.build: $# cases"
if [ "$got" != "$want" ]; then
	echo "only in the guest (add to tests/func/meson.build):"
	comm -23 <(echo "$got") <(echo "$want") | sed 's/^/  /'
	echo "only in tests/func/meson.build (remove):"
	comm -13 <(echo "$got") <(echo "$want") | sed 's/^/  /'
	exit 1
fi
echo "PASS: lists match"
