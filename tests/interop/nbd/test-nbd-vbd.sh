#!/usr/bin/env bash
# The NBD export of a VBD served by vdiskd (the dom0 view of a running
# guest's disk): while a simulated guest runs a verified random read/write
# workload, read the whole disk through $VDISK_SIM_DIR/run/vbd-D-V.nbd and
# find the guest's sectors (each carries a header with the magic "vdsksim1"
# and its own offset) at their offsets; qemu-io and nbdinfo work on it while
# the guest runs, and the guest still sees zero verification errors. After
# the guest disconnects the export is gone (stopped before the queues).
set -euo pipefail
# shellcheck source=../../../scripts/lib-sim.sh
. "${VDISK_SOURCE_DIR:-$(dirname "$0")/../../..}/scripts/lib-sim.sh"
vd_require_tools xenstore-exists nbdinfo nbdcopy qemu-io python3
vd_setup nbd-vbd
DOMID=1
VDEV=51712
SIZE=$((64 << 20))
vd_start_all
vd_create_raw "$VD_TMP/disk.img" 64M
SEED=${VD_SEED:-$((RANDOM * 32768 + RANDOM))}
echo "seed $SEED (replay with VD_SEED=$SEED)"
vd_guest_start guest $DOMID --seed "$SEED" --rw randrw --bs 4k --iodepth 8 --runtime 12
vd_wait_domain $DOMID
vd_attach $DOMID $VDEV "$VD_TMP/disk.img" --format raw
SOCK=$VDISK_SIM_DIR/run/vbd-$DOMID-$VDEV.nbd
URI="nbd+unix:///?socket=$SOCK"
for _ in $(seq 200); do
	[ -S "$SOCK" ] && break
	sleep 0.1
done
[ -S "$SOCK" ] || vd_fail "no NBD export at $SOCK"
size=$(nbdinfo --size "$URI") || vd_fail "nbdinfo on the VBD export"
[ "$size" -eq $SIZE ] || vd_fail "export size $size, expected $SIZE"
echo "ok: the VBD is exported at $SOCK ($size bytes)"
sleep 3 # let the guest write
nbdcopy "$URI" "$VD_TMP/view.raw" || vd_fail "nbdcopy out of the VBD export"
python3 - "$VD_TMP/view.raw" <<'PY' || vd_fail "the export does not show the guest's data"
import struct, sys
MAGIC = 0x7664736B73696D31
data = open(sys.argv[1], "rb").read()
found = misplaced = 0
for off in range(0, len(data), 512):
    magic, where = struct.unpack_from("<QQ", data, off)
    if magic == MAGIC:
        found += 1
        misplaced += where != off
print("guest sectors seen through the export: %d, misplaced: %d" % (found, misplaced))
sys.exit(0 if found > 100 and misplaced == 0 else 1)
PY
echo "ok: the guest's sectors are at their offsets in the export"
qemu-io -f raw -r "$URI" -c 'read 0 1M' -c 'read 60M 4M' >/dev/null || vd_fail "qemu-io read"
echo "ok: qemu-io reads the VBD export while the guest runs"
vd_guest_check guest 60
vd_guest_summary guest
echo "ok: the guest saw zero verification errors"
for _ in $(seq 100); do
	[ -e "$SOCK" ] || break
	sleep 0.1
done
[ ! -e "$SOCK" ] || vd_fail "the export outlived the guest's connection"
echo "ok: the export is removed when the frontend disconnects"
vd_assert_alive vdiskd hv
vd_detach $DOMID $VDEV
vd_stop vdiskd 15 || vd_fail "vdiskd did not exit 0 on SIGTERM"
vd_stop hv 10 || vd_fail "hv did not exit 0 on SIGTERM"
