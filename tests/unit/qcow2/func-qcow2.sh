#!/usr/bin/env bash
# qcow2 through vdiskd to simguest: verified workloads (several queues, flush,
# discard; the second with a tiny L2 cache) on a fresh qcow2 image ("single") and on the top of a 2-deep
# overlay chain raw <- qcow2 <- qcow2 ("chain"); afterwards the images pass
# `vdisk`'s check (qcow2-tool) and `qemu-img check` when qemu-img is there.
#   func-qcow2.sh QCOW2_TOOL single|chain
set -euo pipefail
# shellcheck source=../../../scripts/lib-sim.sh
. "${VDISK_SOURCE_DIR:-$(dirname "$0")/../../..}/scripts/lib-sim.sh"
vd_require_tools xenstore-exists
TOOL=${1:?usage: func-qcow2.sh QCOW2_TOOL single|chain}
KIND=${2:-single}
vd_setup "qcow2-$KIND"
DOMID=1
VDEV=51712
vd_start_all
IMG=$VD_TMP/disk.qcow2
case "$KIND" in
single)
	"$TOOL" create "$IMG" 64M || vd_fail "qcow2-tool create"
	;;
chain)
	truncate -s 64M "$VD_TMP/base.raw"
	"$TOOL" create "$VD_TMP/mid.qcow2" 0 backing=base.raw backing_fmt=raw extl2 ||
		vd_fail "create mid"
	"$TOOL" write "$VD_TMP/mid.qcow2" 1M 8M 0x5a || vd_fail "write mid"
	"$TOOL" create "$IMG" 0 backing=mid.qcow2 backing_fmt=qcow2 || vd_fail "create top"
	"$TOOL" write "$IMG" 4M 64k 0x6b || vd_fail "write top"
	;;
*) vd_fail "unknown kind $KIND" ;;
esac
SEED=${VD_SEED:-$((RANDOM * 32768 + RANDOM))}
# the chain shows its backing files' data where the guest never wrote
INITIAL=()
[ "$KIND" = chain ] && INITIAL=(--no-verify-initial)
ATTACH=()
run_guest() { # name, guest options...
	local name=$1
	shift
	echo "guest $name: $* (seed $SEED; replay with VD_SEED=$SEED)"
	vd_guest_start "$name" $DOMID --seed "$SEED" "${INITIAL[@]}" "$@"
	vd_wait_domain $DOMID
	vd_attach $DOMID $VDEV "$IMG" --format qcow2 "${ATTACH[@]}"
	vd_guest_check "$name" 180
	vd_guest_summary "$name"
	vd_assert_alive vdiskd hv
	vd_detach $DOMID $VDEV
}
run_guest g1 --queues 2 --ring-order 2 --iodepth 16 --bs 4k --rw randrw --runtime 2 \
	--flush-every 16 --discard-every 24
DOMID=2
# a tiny L2 cache (four 512-byte slices, 16 needed): every slice dirty, the
# metadata written back while requests wait for a free slice
ATTACH=(--l2-cache-size 2048 --l2-cache-entry-size 512)
run_guest g2 --queues 3 --ring-order 1 --iodepth 8 --bs 64k --rw randwrite --runtime 2 \
	--flush-every 8 --discard-every 10
vd_stop vdiskd 15 || vd_fail "vdiskd did not exit 0 on SIGTERM"
vd_stop hv 10 || vd_fail "hv did not exit 0 on SIGTERM"
"$TOOL" check "$IMG" || vd_fail "vdisk check reports problems after the workloads"
if command -v qemu-img >/dev/null 2>&1; then
	qemu-img check "$IMG" || vd_fail "qemu-img check fails after the workloads"
fi
if [ "$KIND" = chain ]; then
	"$TOOL" check "$VD_TMP/mid.qcow2" || vd_fail "the backing image changed"
	"$TOOL" pattern "$VD_TMP/mid.qcow2" 1M 8M 0x5a || vd_fail "the backing image's data changed"
fi
echo "qcow2 $KIND: ok"
