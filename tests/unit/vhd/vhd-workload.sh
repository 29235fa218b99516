#!/usr/bin/env bash
# A verified simguest workload served by vdiskd from a VHD image:
#   vhd-workload.sh dynamic|chain3|chain8 [-- guest options]
# dynamic: one dynamic disk; chainN: a differencing chain N deep whose lower
# layers hold allocated blocks of zeroes (so the guest's model, which
# expects zeroes where it never wrote, still holds) and every layer
# serves some reads. After detach, the top image must check clean.
set -euo pipefail
# shellcheck source=../../../scripts/lib-sim.sh
. "${VDISK_SOURCE_DIR:-$(dirname "$0")/../../..}/scripts/lib-sim.sh"
vd_require_tools xenstore-exists

MODE=${1:?usage: vhd-workload.sh dynamic|chainN [-- guest options]}
shift
[ "${1:-}" = -- ] && shift
vd_setup "vhd-$MODE"
TOOL=${VHD_TOOL:-$VD_BUILD/tests/unit/vhd/vhd-tool}
[ -x "$TOOL" ] || TOOL=$VD_BUILD/tests/interop/vhd/vhd-tool
[ -x "$TOOL" ] || vd_fail "vhd-tool not built"
SIZE=$((64 << 20))

case "$MODE" in
dynamic)
	"$TOOL" create "$VD_TMP/disk.vhd" $SIZE dynamic || vd_fail "create failed"
	TOP=$VD_TMP/disk.vhd
	;;
chain*)
	DEPTH=${MODE#chain}
	"$TOOL" create "$VD_TMP/l0.vhd" $SIZE dynamic 1048576 || vd_fail "create base failed"
	prev=l0.vhd
	for i in $(seq 1 "$DEPTH"); do
		# each lower layer: a few allocated ranges of zeroes at its own places
		"$TOOL" write "$VD_TMP/$prev" $(((i * 5) << 20)) $((1 << 20)) 0 ||
			vd_fail "write into $prev failed"
		"$TOOL" write "$VD_TMP/$prev" $(((i * 3) << 20 | 4096)) 8192 0 ||
			vd_fail "write into $prev failed"
		(cd "$VD_TMP" && "$TOOL" create "l$i.vhd" 0 dynamic 0 "$prev") ||
			vd_fail "create l$i failed"
		prev=l$i.vhd
	done
	TOP=$VD_TMP/$prev
	"$TOOL" info "$TOP" | grep -q "depth $DEPTH" || vd_fail "chain is not $DEPTH deep"
	;;
*) vd_fail "unknown mode $MODE" ;;
esac

DOMID=1
VDEV=51712
vd_start_all
SEED=${VD_SEED:-$((RANDOM * 32768 + RANDOM))}
echo "mode $MODE, guest options: $* (seed $SEED; replay with VD_SEED=$SEED)"
vd_guest_start guest $DOMID --seed "$SEED" --runtime 3 --queues 3 --ring-order 2 \
	--bs 16k --iodepth 16 --flush-every 20 --discard-every 25 "$@"
vd_wait_domain $DOMID
vd_attach $DOMID $VDEV "$TOP" --format vhd
vd_guest_check guest 180
vd_guest_summary guest
vd_assert_alive vdiskd hv
vd_detach $DOMID $VDEV
vd_stop vdiskd 15 || vd_fail "vdiskd did not exit 0 on SIGTERM"
vd_stop hv 10 || vd_fail "hv did not exit 0 on SIGTERM"
"$TOOL" check "$TOP" || vd_fail "check of $TOP after the workload found problems"
vd_log "vhd $MODE: workload verified, image checks clean"
