#!/usr/bin/env bash
# The xen suite: vdiskd serving the real Linux xen-blkfront of PV domUs,
# under a real Xen 4.17 booted in qemu-system-x86_64 (TCG, no KVM needed).
#
#   1. build-env.sh: Xen, the Debian kernel, dom0 rootfs and the domU
#      initramfs tree, from Debian packages, cached (seconds when cached).
#   2. A payload disk for this run: vdiskd and vdisk from the build dir,
#      dom0-init.sh, the domU initramfs with domu-init.sh as /init.
#   3. QEMU boots Xen + dom0; dom0-init.sh runs everything and prints
#      "VDISK-XEN-CHECK PASS|FAIL name detail" lines on the serial console.
#   4. We pass only if every expected check passed.
#
# Environment:
#   VDISK_BUILD_DIR / VDISK_XEN_BUILD_DIR  where vdiskd and vdisk are built
#                                (without sanitizers: dom0 has no libasan)
#   VDISK_XEN_CACHE              cache dir (default /var/cache/vdisk-xen)
#   VDISK_XEN_TIMEOUT            seconds for the boot and the tests (default 1200)
#   VDISK_XEN_LOG                serial log path (default BUILD/meson-logs/xen-serial.log)
#   VDISK_XEN_KEEP=1             keep the run directory (payload disk, images)
# Exit: 0 all passed, 1 a check failed or is missing, 77 cannot run here.
set -uo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
SRC=$(cd "$HERE/../.." && pwd)
BUILD=${VDISK_XEN_BUILD_DIR:-${VDISK_BUILD_DIR:-$SRC/build}}
CACHE=${VDISK_XEN_CACHE:-/var/cache/vdisk-xen}
TIMEOUT=${VDISK_XEN_TIMEOUT:-1200}
export VDISK_XEN_CACHE=$CACHE

log() { printf '[xen-suite] %s\n' "$*"; }
skip() {
	log "SKIP: $*"
	exit 77
}

EXPECTED=(xen-daemons vdiskd-start hotplug attach connected multi-page-ring multi-queue-xenstore
	rw-verify-buffered rw-verify-direct rw-verify-direct-end multi-queue indirect flush
	discard-guest discard-image ext4 detach-inflight detach-inflight-guest reattach-dom0
	reattach rw-verify-after-reattach victim-hotplug destroy-inflight served-after-victim vdiskd-exit
	no-bad-requests)

# ---- preconditions ----
VDISKD=$BUILD/src/daemon/vdiskd
VDISK=$BUILD/src/cli/vdisk
[ -x "$VDISKD" ] && [ -x "$VDISK" ] || skip "no vdiskd/vdisk in $BUILD (set VDISK_XEN_BUILD_DIR)"
for b in "$VDISKD" "$VDISK"; do
	if readelf -d "$b" 2>/dev/null | grep -qE 'lib(asan|ubsan|tsan)' ||
		nm -D "$b" 2>/dev/null | grep -q ' __asan_init'; then
		skip "$b is built with sanitizers; the suite runs the binaries of a build without them (e.g. the release build)"
	fi
done
[ "$(id -u)" -eq 0 ] || skip "needs root (debootstrap, chroot, loop-free ext4 images)"
if ! command -v qemu-system-x86_64 >/dev/null; then
	log "installing qemu-system-x86 on the host"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
		qemu-system-x86 </dev/null >/dev/null 2>&1 ||
		{ apt-get update -q >/dev/null 2>&1 &&
			DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
				qemu-system-x86 </dev/null >/dev/null 2>&1; }
	command -v qemu-system-x86_64 >/dev/null || skip "no qemu-system-x86_64 and it cannot be installed"
fi
MEM_KB=$(awk '/MemAvailable/ { print $2 }' /proc/meminfo)
[ "${MEM_KB:-0}" -ge $((5 * 1024 * 1024)) ] || skip "needs 5 GiB of free memory (QEMU -m 4G)"

# ---- the environment (cached) ----
T0=$SECONDS
ENVOUT=$(bash "$HERE/build-env.sh")
rc=$?
[ $rc -eq 77 ] && skip "the Xen environment cannot be built here"
[ $rc -eq 0 ] || {
	log "FAIL: build-env.sh exited $rc"
	exit 1
}
ENV=$(tail -n 1 <<<"$ENVOUT")
[ -f "$ENV/ready" ] || {
	log "FAIL: build-env.sh gave no environment ($ENV)"
	exit 1
}
log "environment $ENV ($((SECONDS - T0)) s)"

# ---- the payload disk of this run ----
# Leftovers of runs that were killed (SIGKILL leaves no trap).
find "$CACHE" -maxdepth 1 -name 'run.*' -mmin +240 -exec rm -rf {} + 2>/dev/null
RUN=$(mktemp -d "$CACHE/run.XXXXXX")
QPID=
cleanup() {
	[ -n "$QPID" ] && kill "$QPID" 2>/dev/null
	if [ "${VDISK_XEN_KEEP:-0}" = 1 ]; then
		log "kept $RUN"
	else
		rm -rf "$RUN"
	fi
}
trap cleanup EXIT
trap 'exit 1' INT TERM
PAY=$RUN/payload
mkdir -p "$PAY/bin" "$RUN/init"
cp "$VDISKD" "$VDISK" "$PAY/bin/"
cp "$HERE/dom0-init.sh" "$PAY/dom0-init.sh"
chmod 755 "$PAY/dom0-init.sh" "$PAY/bin/"*
cp "$ENV/vmlinux" "$PAY/vmlinux"
cp "$HERE/domu-init.sh" "$RUN/init/init"
chmod 755 "$RUN/init/init"
# Two concatenated newc archives: the cached tree, then /init.
{
	(cd "$ENV/domu" && find . | cpio -o -H newc --quiet)
	(cd "$RUN/init" && echo ./init | cpio -o -H newc --quiet)
} | gzip -1 >"$PAY/domu.cpio.gz"
mkfs.ext4 -q -F -L vdisk-payload -d "$PAY" "$RUN/payload.img" 2G >/dev/null || {
	log "FAIL: cannot make the payload disk"
	exit 1
}
rm -rf "$PAY"

# ---- boot ----
SERIAL=${VDISK_XEN_LOG:-$BUILD/meson-logs/xen-serial.log}
mkdir -p "$(dirname "$SERIAL")"
: >"$SERIAL"
log "booting Xen + dom0 under QEMU (TCG); serial log: $SERIAL"
qemu-system-x86_64 -accel tcg,thread=multi,tb-size=256 -cpu qemu64,+svm -smp 2 -m 4G \
	-display none -no-reboot -monitor none -serial "file:$SERIAL" -vga none -net none \
	-drive "file=$ENV/dom0.img,if=virtio,format=raw,cache=unsafe,snapshot=on" \
	-drive "file=$RUN/payload.img,if=virtio,format=raw,cache=unsafe" \
	-kernel "$ENV/xen.elf" \
	-append "console=com1 com1=115200,8n1 loglvl=all guest_loglvl=all noreboot dom0_mem=1024M,max:1024M dom0_max_vcpus=2" \
	-initrd "$ENV/vmlinux root=/dev/vda ro console=hvc0 earlyprintk=xen init=/sbin/vdisk-xen-init,$ENV/initrd.img" \
	</dev/null >"$RUN/qemu.out" 2>&1 &
QPID=$!

B0=$SECONDS
VERDICT=""
while :; do
	if grep -q 'VDISK-XEN-DONE' "$SERIAL" 2>/dev/null; then
		VERDICT="done"
		break
	fi
	if grep -qE 'Kernel panic|Dom0 crashed|\(XEN\) Panic|\*\*\*\* Panic' "$SERIAL" 2>/dev/null; then
		VERDICT=crash
		break
	fi
	if ! kill -0 "$QPID" 2>/dev/null; then
		VERDICT=exited
		break
	fi
	if [ $((SECONDS - B0)) -ge "$TIMEOUT" ]; then
		VERDICT=timeout
		break
	fi
	sleep 2
done
# dom0 powers off after DONE; give it a moment, then make sure.
for _ in 1 2 3 4 5 6 7 8 9 10; do
	kill -0 "$QPID" 2>/dev/null || break
	sleep 1
done
if kill -0 "$QPID" 2>/dev/null; then
	kill "$QPID" 2>/dev/null
	sleep 1
	kill -9 "$QPID" 2>/dev/null
fi
wait "$QPID" 2>/dev/null
QPID=
log "QEMU ran $((SECONDS - B0)) s: $VERDICT"

# ---- the verdict ----
# The log of the tests: everything from dom0's first line on.
tr -d '\r' <"$SERIAL" | sed -n '/\[dom0 +/,$p' >"$RUN/tests.log"
if [ ! -s "$RUN/tests.log" ]; then
	log "dom0 never started its tests; last 60 lines of the serial log:"
	tr -d '\r' <"$SERIAL" | tail -n 60
fi
cat "$RUN/tests.log"
[ -s "$RUN/qemu.out" ] && {
	log "qemu said:"
	cat "$RUN/qemu.out"
}
if [ "$VERDICT" != "done" ]; then
	log "last 40 lines of the serial log:"
	tr -d '\r' <"$SERIAL" | tail -n 40
fi

echo
log "==== summary ===="
grep -oE 'VDISK-XEN-CHECK (PASS|FAIL) [^ ]+' "$RUN/tests.log" | sed 's/VDISK-XEN-CHECK //' >"$RUN/results"
NP=$(grep -c '^PASS' "$RUN/results")
NF=$(grep -c '^FAIL' "$RUN/results")
MISSING=()
for c in "${EXPECTED[@]}"; do
	grep -q "^PASS $c\$" "$RUN/results" || grep -q "^FAIL $c\$" "$RUN/results" || MISSING+=("$c")
done
while read -r r n; do
	printf '  %-4s %s\n' "$r" "$n"
done <"$RUN/results"
for c in "${MISSING[@]}"; do
	printf '  %-4s %s\n' "MISS" "$c"
done
log "$NP passed, $NF failed, ${#MISSING[@]} missing (QEMU: $VERDICT, total $((SECONDS - T0)) s)"
if [ "$NF" -eq 0 ] && [ "${#MISSING[@]}" -eq 0 ] && [ "$VERDICT" = "done" ]; then
	log "PASS"
	exit 0
fi
log "FAIL"
exit 1
