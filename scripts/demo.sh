#!/usr/bin/env bash
# The main job, end to end, on any Debian 12 box (no Xen needed):
# install deps, build (release), then serve a 1 GiB raw image from vdiskd to a
# simulated guest running a verified random read/write workload, print its
# results, detach and stop everything.
#
# Environment:
#   VDISK_DEMO_RUNTIME=SECONDS   guest runtime (default 10)
#   VDISK_DEMO_SKIP_BUILD=1      use $VDISK_BUILD_DIR (or ./build) as it is:
#                                no deps, no build (the func test does this)
#   VDISK_KEEP_TMP=1             keep the temp dir (logs, image)
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
RUNTIME=${VDISK_DEMO_RUNTIME:-10}
case "$RUNTIME" in
'' | *[!0-9]*) echo "VDISK_DEMO_RUNTIME must be a number of seconds" >&2; exit 2 ;;
esac

if [ "${VDISK_DEMO_SKIP_BUILD:-0}" != 1 ]; then
	bash ./scripts/deps.sh
	export VDISK_BUILD_DIR=$ROOT/build
	if [ -f build/build.ninja ]; then
		meson configure build -Dbuildtype=release >/dev/null
	else
		meson setup build --buildtype=release
	fi
	ninja -C build -j2
fi

# shellcheck source=scripts/lib-sim.sh
. "$ROOT/scripts/lib-sim.sh"
vd_setup demo
vd_require_tools xenstore-read

DOMID=1
VDEV=51712 # xvda
IMG=$VD_TMP/disk.img

echo "== starting the simulated hypervisor and vdiskd (sim dir $VDISK_SIM_DIR)"
vd_start_hv
vd_start_vdiskd

echo "== creating a 1 GiB raw image"
vd_create_raw "$IMG" 1G

echo "== starting the guest (domid $DOMID, 2 queues, randrw 4k, iodepth 32, ${RUNTIME}s)"
vd_guest_start guest "$DOMID" --queues 2 --rw randrw --bs 4k --iodepth 32 --runtime "$RUNTIME"
vd_wait_domain "$DOMID" 30

echo "== vdisk attach $DOMID $VDEV $IMG"
vd_attach "$DOMID" "$VDEV" "$IMG"
timeout -k 2 10 "$VDISK" list || echo "(vdisk list failed)"

echo "== waiting for the guest"
rc=0
vd_guest_wait guest $((RUNTIME + 60)) || rc=$?
echo "-- guest results --"
cat "$VD_LOGS/guest.out"
[ "$rc" -ne 124 ] || vd_fail "the guest did not finish in $((RUNTIME + 60))s"
[ "$rc" -eq 0 ] || vd_fail "the guest exited $rc"
grep -Eq '^[[:space:]]*0 verification errors' "$VD_LOGS/guest.out" ||
	vd_fail "the guest did not report 0 verification errors"
vd_assert_alive vdiskd hv

echo "== vdisk detach $DOMID $VDEV"
vd_detach "$DOMID" "$VDEV"

echo "== stopping vdiskd and the hypervisor"
vd_stop vdiskd 15 || vd_fail "vdiskd did not exit cleanly on SIGTERM"
vd_stop hv 10 || vd_fail "vdisk sim hv did not exit cleanly on SIGTERM"
echo "demo: OK"
