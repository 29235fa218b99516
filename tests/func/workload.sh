#!/usr/bin/env bash
# One verified workload: a simulated guest with the given options against a
# raw file image (uring) or the mem backend; zero verification errors.
#   workload.sh raw|mem|sync [SIZE] -- [vdisk sim guest options...]
set -euo pipefail
# shellcheck source=../../scripts/lib-sim.sh
. "${VDISK_SOURCE_DIR:-$(dirname "$0")/../..}/scripts/lib-sim.sh"
vd_require_tools xenstore-exists

BACKEND=${1:?usage: workload.sh raw|mem|sync [SIZE] -- guest options}
shift
SIZE=64M
if [ $# -gt 0 ] && [ "$1" != -- ]; then
	SIZE=$1
	shift
fi
[ "${1:-}" = -- ] && shift
vd_setup "wl-$BACKEND"

DOMID=1
VDEV=51712
vd_start_all
case "$BACKEND" in
raw)
	vd_create_raw "$VD_TMP/disk.img" "$SIZE"
	ATTACH=("$VD_TMP/disk.img" --format raw)
	;;
sync)
	vd_create_raw "$VD_TMP/disk.img" "$SIZE"
	ATTACH=("$VD_TMP/disk.img" --format raw --io sync)
	;;
mem)
	ATTACH=(mem --format raw --io mem --size "$SIZE")
	;;
*) vd_fail "unknown backend $BACKEND" ;;
esac

SEED=${VD_SEED:-$((RANDOM * 32768 + RANDOM))}
echo "guest options: $* (seed $SEED; replay with VD_SEED=$SEED)"
vd_guest_start guest $DOMID --seed "$SEED" "$@"
vd_wait_domain $DOMID
vd_attach $DOMID $VDEV "${ATTACH[@]}"
vd_guest_check guest 180
vd_guest_summary guest
vd_assert_alive vdiskd hv
vd_detach $DOMID $VDEV
vd_stop vdiskd 15 || vd_fail "vdiskd did not exit 0 on SIGTERM"
vd_stop hv 10 || vd_fail "hv did not exit 0 on SIGTERM"
