#!/bin/sh
# /init of the test domUs (busybox sh). The disk is served by vdiskd in
# dom0 through this kernel's real xen-blkfront.
#
# Roles (kernel command line vdisk_role=...):
#   main    the data checks, detach/re-attach, serving after another domU died
#   victim  I/O until dom0 destroys it (xl destroy with I/O in flight)
#
# Talking to dom0 through xenstore (our own /local/domain/D/data):
#   data/vdisk-state   written here: ready, discard-before, ...
#   data/vdisk-cmd     written by dom0: go, discard, ...
# Results go to the console (xenconsoled logs it in dom0), one line each:
#   VDISK-XEN-CHECK PASS|FAIL <name> <detail>
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
export LD_LIBRARY_PATH=/lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /tmp /mnt
mount -t tmpfs tmp /tmp

ROLE=${vdisk_role:-main}
HP=hotplug
[ "$ROLE" = victim ] && HP=victim-hotplug
DEV=xvda
NPASS=0
NFAIL=0

UP0=$(cut -d. -f1 /proc/uptime)
up() { echo "+$(($(cut -d. -f1 /proc/uptime) - UP0))s"; }
say() { echo "[domU $ROLE $(up)] $*"; }
check() { # check NAME RESULT(0=pass) DETAIL
	if [ "$2" -eq 0 ]; then
		NPASS=$((NPASS + 1))
		echo "VDISK-XEN-CHECK PASS $1 [$(up)] $3"
	else
		NFAIL=$((NFAIL + 1))
		echo "VDISK-XEN-CHECK FAIL $1 [$(up)] $3"
	fi
}
finish() {
	say "summary: $NPASS passed, $NFAIL failed"
	xenstore-write data/vdisk-result "$NPASS $NFAIL" 2>/dev/null
	xenstore-write data/vdisk-state "done" 2>/dev/null
	sync
	# Wait for dom0 to destroy us (poweroff would do, but keep the log intact).
	while :; do sleep 60; done
}
set_state() {
	xenstore-write data/vdisk-state "$1" || say "cannot write data/vdisk-state=$1"
}
# wait_cmd VALUE TIMEOUT_S: wait for dom0 to write data/vdisk-cmd = VALUE
wait_cmd() {
	i=0
	while [ "$i" -lt "$2" ]; do
		[ "$(xenstore-read data/vdisk-cmd 2>/dev/null)" = "$1" ] && return 0
		sleep 1
		i=$((i + 1))
	done
	say "timeout waiting for dom0 command '$1' (have '$(xenstore-read data/vdisk-cmd 2>&1)')"
	return 1
}
# wait_dev present|absent TIMEOUT_S
wait_dev() {
	i=0
	while [ "$i" -lt "$2" ]; do
		if [ "$1" = present ] && [ -b /dev/$DEV ] && [ -e /sys/block/$DEV/size ] &&
			[ "$(cat /sys/block/$DEV/size)" != 0 ]; then
			return 0
		fi
		if [ "$1" = absent ] && [ ! -e /sys/block/$DEV ]; then
			return 0
		fi
		sleep 1
		i=$((i + 1))
	done
	return 1
}

say "booted: $(uname -r), $(grep -c ^processor /proc/cpuinfo) vCPUs"
for m in $(cat /lib/modules/load-order); do
	case $m in
	xen-blkfront.ko) insmod /lib/modules/$m max_indirect_segments=256 max_queues=4 max_ring_page_order=2 ||
		say "insmod $m failed" ;;
	*) insmod /lib/modules/$m 2>/dev/null ;;
	esac
done
[ -e /sys/module/xen_blkfront ] || {
	check blkfront-loaded 1 "xen-blkfront did not load"
	finish
}
set_state ready

# Hot-plug: no disk at boot; dom0 runs `vdisk attach` once we are ready.
if ! wait_dev present 120; then
	check "$HP" 1 "/dev/$DEV did not appear within 120 s"
	finish
fi
check "$HP" 0 "/dev/$DEV appeared: $(cat /sys/block/$DEV/size) sectors"

show_view() {
	say "---- the domU's view of /dev/$DEV ----"
	say "mq: $(ls /sys/block/$DEV/mq/ | tr '\n' ' ')"
	for q in /sys/block/$DEV/mq/*; do
		say "  $(basename $q): cpu_list=$(cat $q/cpu_list 2>/dev/null) nr_tags=$(cat $q/nr_tags 2>/dev/null)"
	done
	for a in max_hw_sectors_kb max_sectors_kb max_segments logical_block_size \
		physical_block_size write_cache discard_max_bytes discard_granularity; do
		say "queue/$a = $(cat /sys/block/$DEV/queue/$a)"
	done
	dmesg | grep -i -E 'blkfront|xvd|vbd' | while read -r l; do say "dmesg: $l"; done
	FE=$(xenstore-read device/vbd/51712/backend 2>/dev/null)
	say "frontend device/vbd/51712 -> backend $FE"
	xenstore-ls -f device/vbd/51712 2>&1 | while read -r l; do say "xs fe: $l"; done
	[ -n "$FE" ] && xenstore-ls -f "$FE" 2>&1 | while read -r l; do say "xs be: $l"; done
}

# ---------------------------------------------------------------- victim
if [ "$ROLE" = victim ]; then
	show_view
	# Writers and readers with deep queues until dom0 destroys us.
	dd if=/dev/urandom of=/tmp/pat bs=1M count=4 2>/dev/null
	(while :; do dd if=/tmp/pat of=/dev/$DEV bs=1M oflag=direct 2>/dev/null; done) &
	(while :; do dd if=/dev/$DEV of=/dev/null bs=64k iflag=direct count=1024 2>/dev/null; done) &
	(while :; do dd if=/dev/$DEV of=/dev/null bs=1M iflag=direct skip=16 count=16 2>/dev/null; done) &
	sleep 2
	set_state io-running
	say "I/O running; waiting to be destroyed"
	while :; do sleep 60; done
fi

# ---------------------------------------------------------------- main
if ! wait_cmd go 60; then
	check dom0-go 1 "no go from dom0"
	finish
fi
show_view

# 1. read/write/verify with a pattern (buffered and O_DIRECT, start and end)
SIZE_SECT=$(cat /sys/block/$DEV/size)
# One 4 MiB random pattern, generated once: TCG makes every CPU cycle dear.
dd if=/dev/urandom of=/tmp/pat bs=1M count=4 2>/dev/null
rw_verify() { # rw_verify NAME OFFSET_MB FLAGS
	rc=0
	dd if=/tmp/pat of=/dev/$DEV bs=1M seek="$2" $3 conv=notrunc 2>/tmp/err || rc=1
	[ "$3" = "" ] && echo 3 >/proc/sys/vm/drop_caches
	# shellcheck disable=SC2046 # no flag at all for the buffered case
	dd if=/dev/$DEV of=/tmp/back bs=1M skip="$2" count=4 $(echo "$3" | sed 's/oflag/iflag/') \
		2>>/tmp/err || rc=1
	cmp /tmp/pat /tmp/back >>/tmp/err 2>&1 || rc=1
	check "$1" $rc "4 MiB at ${2} MiB ($3) $(sha256sum </tmp/back | cut -c1-16) $(grep -v records </tmp/err | tr '\n' ' ' | head -c 300)"
}
LAST_MB=$((SIZE_SECT / 2048 - 4))
sync
rw_verify rw-verify-buffered 0 ""
rw_verify rw-verify-direct 32 "oflag=direct"
rw_verify rw-verify-direct-end "$LAST_MB" "oflag=direct"

# 2. multi-queue: 2 vCPUs, the backend offers more: blkfront uses 2
NQ=$(ls -d /sys/block/$DEV/mq/* | wc -l)
FNQ=$(xenstore-read device/vbd/51712/multi-queue-num-queues 2>/dev/null)
check multi-queue "$([ "$NQ" = 2 ] && [ "$FNQ" = 2 ] && echo 0 || echo 1)" \
	"/sys/block/$DEV/mq has $NQ queues, frontend multi-queue-num-queues=$FNQ"

# 3. indirect segments: blkfront takes min(backend's maximum, module's 256)
FE=$(xenstore-read device/vbd/51712/backend)
BIND=$(xenstore-read "$FE/feature-max-indirect-segments" 2>/dev/null)
HWKB=$(cat /sys/block/$DEV/queue/max_hw_sectors_kb)
MSEG=$(cat /sys/block/$DEV/queue/max_segments)
WANT=256
[ -n "$BIND" ] && [ "$BIND" -lt "$WANT" ] && WANT=$BIND
rc=1
[ -n "$BIND" ] && [ "$HWKB" -eq $((WANT * 4)) ] && [ "$HWKB" -gt 44 ] && rc=0
# 4 MiB O_DIRECT requests: each splits into max_hw_sectors_kb pieces, i.e.
# requests of $WANT segments, which only indirect descriptors can carry.
cat /tmp/pat /tmp/pat >/tmp/big
dd if=/tmp/big of=/dev/$DEV bs=4M seek=48 oflag=direct conv=notrunc 2>/tmp/err || rc=1
dd if=/dev/$DEV of=/tmp/big2 bs=4M skip=48 count=2 iflag=direct 2>>/tmp/err || rc=1
cmp /tmp/big /tmp/big2 >>/tmp/err 2>&1 || rc=1
check indirect $rc "backend feature-max-indirect-segments=$BIND max_hw_sectors_kb=$HWKB max_segments=$MSEG (11 segments without indirect = 44 KiB); 8 MiB in 4 MiB O_DIRECT I/Os verified $(grep -v records </tmp/err | tr '\n' ' ' | head -c 200)"
rm -f /tmp/big /tmp/big2

# 4. flush: O_DIRECT writes then fsync reach the backend as flushes. A
# flush the backend fails makes blkfront turn its write cache off for good
# ("empty flush op failed"): the cache must still be on after two.
WC0=$(cat /sys/block/$DEV/queue/write_cache)
F0=$(awk '{ print $16 }' /sys/block/$DEV/stat)
rc=0
dd if=/tmp/pat of=/dev/$DEV bs=1M seek=96 oflag=direct conv=fsync,notrunc 2>/tmp/err || rc=1
dd if=/tmp/pat of=/dev/$DEV bs=1M seek=96 oflag=direct conv=fsync,notrunc 2>>/tmp/err || rc=1
F1=$(awk '{ print $16 }' /sys/block/$DEV/stat)
WC1=$(cat /sys/block/$DEV/queue/write_cache)
FAILED=$(dmesg | grep -c 'op failed')
[ "$WC0" = "write back" ] && [ "$WC1" = "write back" ] && [ "$FAILED" = 0 ] || rc=1
[ -n "$F1" ] && [ "$F1" -ge $((F0 + 2)) ] || rc=1
check flush $rc "write_cache '$WC0' -> '$WC1', completed flushes $F0 -> $F1 after 2 x (O_DIRECT writes + fsync), $FAILED 'op failed' in dmesg $(grep -v records </tmp/err | tr '\n' ' ' | head -c 200)"

# 5. discard: fill 64 MiB, dom0 measures the image, discard it, dom0 measures again
DMAX=$(cat /sys/block/$DEV/queue/discard_max_bytes)
rc=0
for i in 0 1 2 3 4 5; do
	dd if=/tmp/pat of=/dev/$DEV bs=1M seek=$((128 + i * 4)) oflag=direct conv=notrunc 2>/dev/null || rc=1
done
sync
set_state discard-before
wait_cmd discard 60 || rc=1
blkdiscard -o $((128 * 1048576)) -l $((24 * 1048576)) /dev/$DEV 2>/tmp/err || rc=1
sync
check discard-guest $rc "discard_max_bytes=$DMAX, blkdiscard of 24 MiB at 128 MiB $(grep -v records </tmp/err | tr '\n' ' ' | head -c 200)"
set_state discard-after
wait_cmd discard-checked 60

# 6. ext4 in the first 96 MiB: mkfs, mount, files, umount, fsck -f
rc=0
mkfs.ext4 -q -F /dev/$DEV 96M >/tmp/err 2>&1 || rc=1
mount -t ext4 /dev/$DEV /mnt 2>>/tmp/err || rc=1
if [ $rc -eq 0 ]; then
	for i in $(seq 1 20); do
		dd if=/tmp/pat of=/mnt/f$i bs=16k count=$i 2>/dev/null || rc=1
	done
	mkdir -p /mnt/dir/sub && echo hello >/mnt/dir/sub/file || rc=1
	(cd /mnt && sha256sum f* dir/sub/file >/tmp/sums) || rc=1
	umount /mnt 2>>/tmp/err || rc=1
fi
e2fsck -f -n /dev/$DEV >>/tmp/err 2>&1 || rc=1
mount -t ext4 -o ro /dev/$DEV /mnt 2>>/tmp/err && (cd /mnt && sha256sum -c -s /tmp/sums) || rc=1
umount /mnt 2>/dev/null
check ext4 $rc "mkfs.ext4 + mount + 21 files + umount + e2fsck -f clean + checksums $(grep -c . /tmp/sums) files $(tail -n 3 /tmp/err | tr '\n' ' ' | head -c 300)"

# 7. hot detach with I/O in flight, then re-attach the same image
(while :; do dd if=/dev/$DEV of=/dev/null bs=1M iflag=direct skip=256 count=16 2>/dev/null || break; done) &
R1=$!
(while :; do dd if=/tmp/pat of=/dev/$DEV bs=1M seek=320 oflag=direct conv=notrunc 2>/dev/null || break; done) &
W1=$!
sleep 2
# Requests the guest has outstanding (reads writes), sampled before dom0 detaches.
INF=$(for i in 1 2 3 4 5; do tr -s ' ' </sys/block/$DEV/inflight | sed 's/^ //; s/ /+/'; done | tr '\n' ' ')
set_state inflight
say "I/O in flight (reads+writes outstanding, 5 samples: $INF); dom0 detaches"
rc=0
wait_dev absent 90 || rc=1
# The I/O loops end with errors once the disk is gone.
i=0
while [ $i -lt 60 ] && { kill -0 $R1 2>/dev/null || kill -0 $W1 2>/dev/null; }; do
	sleep 1
	i=$((i + 1))
done
kill -0 $R1 2>/dev/null && rc=1
kill -0 $W1 2>/dev/null && rc=1
check detach-inflight-guest $rc "/dev/$DEV removed while I/O was in flight (outstanding reads+writes sampled: $INF); I/O loops ended after ${i} s"
kill $R1 $W1 2>/dev/null
set_state detached
wait_cmd reattached 90
rc=0
wait_dev present 90 || rc=1
e2fsck -f -n /dev/$DEV >/tmp/err 2>&1 || rc=1
mount -t ext4 -o ro /dev/$DEV /mnt 2>>/tmp/err && (cd /mnt && sha256sum -c -s /tmp/sums) || rc=1
umount /mnt 2>/dev/null
rw_verify rw-verify-after-reattach 352 "oflag=direct"
check reattach $rc "/dev/$DEV back after re-attach; e2fsck -f clean, $(grep -c . /tmp/sums) file checksums verified $(grep -v records /tmp/err | tail -n 2 | tr '\n' ' ' | head -c 200)"
say "mq after re-attach: $(ls /sys/block/$DEV/mq/ | tr '\n' ' ')"

# 8. another domU is destroyed with I/O in flight: we keep being served
(while :; do dd if=/tmp/pat of=/dev/$DEV bs=1M seek=384 oflag=direct conv=notrunc 2>/dev/null || break; done) &
W2=$!
set_state victim-phase
wait_cmd victim-done 240
kill $W2 2>/dev/null
wait $W2 2>/dev/null
rw_verify served-after-victim 448 "oflag=direct"

# 9. other image formats, each as a second disk xvdb (dom0 skips the
# formats this build cannot create): data and a file system through them.
set_state formats
LASTC=
while :; do
	i=0
	C=
	while [ $i -lt 300 ]; do
		C=$(xenstore-read data/vdisk-cmd 2>/dev/null)
		if [ "$C" != "$LASTC" ]; then
			case $C in fmt:* | fmt-end) break ;; esac
		fi
		sleep 1
		i=$((i + 1))
	done
	LASTC=$C
	case $C in fmt:*) ;; *) break ;; esac
	F=${C#fmt:}
	DEV=xvdb
	if wait_dev present 90; then
		LAST_MB=$(($(cat /sys/block/$DEV/size) / 2048 - 4))
		rw_verify "fmt-$F-rw" 8 "oflag=direct"
		rw_verify "fmt-$F-rw-end" "$LAST_MB" "oflag=direct"
		rc=0
		mkfs.ext4 -q -F /dev/$DEV 64M >/tmp/err 2>&1 || rc=1
		mount -t ext4 /dev/$DEV /mnt 2>>/tmp/err || rc=1
		if [ $rc -eq 0 ]; then
			for i in $(seq 1 10); do
				dd if=/tmp/pat of=/mnt/f$i bs=16k count=$i 2>/dev/null || rc=1
			done
			(cd /mnt && sha256sum f* >/tmp/sums) || rc=1
			umount /mnt 2>>/tmp/err || rc=1
		fi
		e2fsck -f -n /dev/$DEV >>/tmp/err 2>&1 || rc=1
		mount -t ext4 -o ro /dev/$DEV /mnt 2>>/tmp/err && (cd /mnt && sha256sum -c -s /tmp/sums) || rc=1
		umount /mnt 2>/dev/null
		check "fmt-$F-ext4" $rc "$F image: mkfs.ext4 + 10 files + umount + e2fsck -f clean + checksums $(grep -v records /tmp/err | tail -n 2 | tr '\n' ' ' | head -c 200)"
	else
		check "fmt-$F-hotplug" 1 "/dev/$DEV did not appear"
	fi
	set_state "fmt:$F-done"
	wait_dev absent 90
done
DEV=xvda
finish
