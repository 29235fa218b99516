#!/bin/sh
# PID 1 of the test dom0 (exec'd by /sbin/vdisk-xen-init from the payload
# disk, mounted on /payload). Starts the Xen daemons and vdiskd, runs the
# PV domUs, plays the toolstack (`vdisk attach/detach`, `xl create/destroy`)
# and prints every result on the console (the serial log on the host):
#   VDISK-XEN-CHECK PASS|FAIL <name> <detail>     (domU lines: "[d1] ...")
#   VDISK-XEN-DONE                                 the end
P=/payload
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$P/bin
VDISK=$P/bin/vdisk
VDISKD=$P/bin/vdiskd
NPASS=0
NFAIL=0
T0=$(cut -d. -f1 /proc/uptime)

say() { echo "[dom0 +$(($(cut -d. -f1 /proc/uptime) - T0))s] $*"; }
check() { # check NAME RESULT(0=pass) DETAIL
	if [ "$2" -eq 0 ]; then
		NPASS=$((NPASS + 1))
		echo "VDISK-XEN-CHECK PASS $1 $3"
	else
		NFAIL=$((NFAIL + 1))
		echo "VDISK-XEN-CHECK FAIL $1 $3"
	fi
}
shutdown_now() {
	say "dom0 checks: $NPASS passed, $NFAIL failed"
	echo "VDISK-XEN-DONE"
	sync
	sleep 1
	echo o >/proc/sysrq-trigger
	sleep 30
}
fatal() {
	check "$1" 1 "$2"
	shutdown_now
}

mount -t tmpfs run /run
mkdir -p /run/lock /tmp /var/log/xen/console /var/lib/xen /run/xen
mount -t tmpfs tmp /tmp
mount -t devpts devpts /dev/pts 2>/dev/null
hostname vdisk-dom0 2>/dev/null
echo 1 >/proc/sys/kernel/panic_on_oops 2>/dev/null
say "dom0 up: $(uname -r), $(grep -c ^processor /proc/cpuinfo) vCPUs"

for m in xenfs xen-evtchn xen-gntdev xen-gntalloc xen-privcmd; do
	modprobe "$m" || say "modprobe $m failed"
done
[ -e /proc/xen/capabilities ] || mount -t xenfs xenfs /proc/xen
export XENCONSOLED_ARGS="--log=guest --log-dir=/var/log/xen/console"
/etc/init.d/xen start
xenstore-read -s / >/dev/null 2>&1 || fatal xen-daemons "xenstored is not answering"
pidof xenconsoled >/dev/null || fatal xen-daemons "xenconsoled is not running"
check xen-daemons 0 "$(xl info | awk '/^xen_version/ { print "xen " $3 }'), $(pidof oxenstored >/dev/null && echo oxenstored || echo xenstored), xenconsoled"

# vdiskd, as an operator would start it (foreground here, logged to the console)
VDLOG=/run/vdiskd.log
$VDISKD --transport xen --foreground --log-level info >$VDLOG 2>&1 &
VDPID=$!
tail -F $VDLOG 2>/dev/null | while IFS= read -r l; do
	echo "[vdiskd +$(($(cut -d. -f1 /proc/uptime) - T0))s] $l"
done &
sleep 1
kill -0 $VDPID 2>/dev/null || fatal vdiskd-start "vdiskd exited: $(cat $VDLOG)"
check vdiskd-start 0 "pid $VDPID, transport xen"

IMG1=$P/d1.img
IMG2=$P/d2.img
rm -f $IMG1 $IMG2
truncate -s 512M $IMG1
truncate -s 256M $IMG2

# ---- helpers ----
xs_data() { xenstore-read "/local/domain/$1/data/$2" 2>/dev/null; }
cmd() { xenstore-write "/local/domain/$1/data/vdisk-cmd" "$2"; }
# wait_state DOMID VALUE TIMEOUT_S
wait_state() {
	i=0
	while [ $i -lt "$3" ]; do
		[ "$(xs_data "$1" vdisk-state)" = "$2" ] && return 0
		[ "$(xs_data "$1" vdisk-state)" = "done" ] && return 1
		sleep 1
		i=$((i + 1))
	done
	say "timeout: domain $1 state '$(xs_data "$1" vdisk-state)', wanted '$2'"
	return 1
}
# wait_xs_state PATH STATE TIMEOUT_S
wait_xs_state() {
	i=0
	while [ $i -lt "$3" ]; do
		[ "$(xenstore-read "$1/state" 2>/dev/null)" = "$2" ] && return 0
		sleep 1
		i=$((i + 1))
	done
	return 1
}
alloc_kb() { du -k "$1" | cut -f1; }
show_dirs() { # show_dirs DOMID: both xenstore directories, with permissions
	say "xenstore-ls -fp /local/domain/0/backend/vbd3/$1/51712"
	xenstore-ls -fp "/local/domain/0/backend/vbd3/$1/51712" 2>&1 | sed 's/^/    /'
	say "xenstore-ls -fp /local/domain/$1/device/vbd/51712"
	xenstore-ls -fp "/local/domain/$1/device/vbd/51712" 2>&1 | sed 's/^/    /'
}
mkcfg() { # mkcfg NAME ROLE VCPUS
	cat >/run/$1.cfg <<EOF
name = "$1"
type = "pv"
kernel = "$P/vmlinux"
ramdisk = "$P/domu.cpio.gz"
extra = "console=hvc0 loglevel=4 vdisk_role=$2"
memory = 640
vcpus = $3
on_crash = "preserve"
EOF
}
start_domu() { # start_domu NAME ROLE VCPUS: sets DOMID
	DOMID=
	mkcfg "$1" "$2" "$3"
	xl create /run/$1.cfg >/run/$1.create.log 2>&1 || {
		sed 's/^/    /' /run/$1.create.log
		return 1
	}
	tail -F /var/log/xen/console/guest-$1.log 2>/dev/null | sed -u "s/^/[$1] /" &
	DOMID=$(xl domid "$1")
	[ -n "$DOMID" ]
}
vbd_connected() { # vbd_connected DOMID: both ends Connected (4)
	wait_xs_state "/local/domain/0/backend/vbd3/$1/51712" 4 60 &&
		wait_xs_state "/local/domain/$1/device/vbd/51712" 4 60
}

# ---- domU 1: the data checks ----
start_domu d1 main 2 || fatal domu-create "xl create d1 failed"
D1=$DOMID
say "d1 is domain $D1"
wait_state "$D1" ready 180 || fatal domu-boot "d1 did not boot to its /init"

# Hot-plug: the guest is running, with no disk; vdisk attach writes both dirs.
$VDISK attach "$D1" xvda $IMG1 >/run/attach.log 2>&1
check attach $? "vdisk attach $D1 xvda $IMG1: $(tr '\n' ' ' </run/attach.log)"
if vbd_connected "$D1"; then
	check connected 0 "backend and frontend both in state 4 (Connected)"
else
	check connected 1 "be state $(xenstore-read /local/domain/0/backend/vbd3/$D1/51712/state 2>&1), fe state $(xenstore-read /local/domain/$D1/device/vbd/51712/state 2>&1)"
fi
show_dirs "$D1"
FE1=/local/domain/$D1/device/vbd/51712
BE1=/local/domain/0/backend/vbd3/$D1/51712
say "frontend protocol='$(xenstore-read $FE1/protocol 2>&1)' queues='$(xenstore-read $FE1/multi-queue-num-queues 2>&1)' ring-page-order='$(xenstore-read $FE1/ring-page-order 2>&1)' persistent='$(xenstore-read $FE1/feature-persistent 2>&1)'"
RO=$(xenstore-read $FE1/ring-page-order 2>/dev/null)
rc=1
[ "$RO" = 2 ] && xenstore-exists $FE1/queue-1/ring-ref3 && grep -q 'ring order 2' $VDLOG && rc=0
check multi-page-ring $rc "frontend ring-page-order=$RO (backend offers $(xenstore-read $BE1/max-ring-page-order 2>&1)), ring-ref0..3 in each queue-N, vdiskd: $(grep -o 'connected: .*' $VDLOG | tail -n 1)"
NQ=$(xenstore-read $FE1/multi-queue-num-queues 2>/dev/null)
check multi-queue-xenstore "$([ "$NQ" = 2 ] && [ -n "$(xenstore-read $FE1/queue-1/event-channel 2>/dev/null)" ] && echo 0 || echo 1)" \
	"frontend multi-queue-num-queues=$NQ (backend offers $(xenstore-read $BE1/multi-queue-max-queues 2>&1)), queue-0 and queue-1 have their rings"
$VDISK list 2>&1 | sed 's/^/    /'
cmd "$D1" go

# Discard: the raw file's allocated size shrinks.
if wait_state "$D1" discard-before 300; then
	sync
	A0=$(alloc_kb $IMG1)
	cmd "$D1" discard
	wait_state "$D1" discard-after 120
	sync
	A1=$(alloc_kb $IMG1)
	check discard-image "$([ $((A0 - A1)) -ge 20480 ] && echo 0 || echo 1)" \
		"allocated size of $IMG1 went from $A0 KiB to $A1 KiB after blkdiscard of 24 MiB"
	cmd "$D1" discard-checked
else
	check discard-image 1 "d1 never reached discard-before"
fi

# Hot detach with I/O in flight, then re-attach.
if wait_state "$D1" inflight 300; then
	S=$(cut -d. -f1 /proc/uptime)
	timeout 60 $VDISK detach "$D1" xvda >/run/detach.log 2>&1
	rc=$?
	E=$(($(cut -d. -f1 /proc/uptime) - S))
	xenstore-exists $BE1 2>/dev/null && rc=1
	xenstore-exists $FE1 2>/dev/null && rc=1
	kill -0 $VDPID 2>/dev/null || rc=1
	check detach-inflight "$rc" "vdisk detach with I/O in flight: rc=$rc in ${E}s, both dirs removed, vdiskd alive $(tr '\n' ' ' </run/detach.log)"
	cmd "$D1" detached
	wait_state "$D1" detached 120
	$VDISK attach "$D1" xvda $IMG1 >/run/attach.log 2>&1
	rc=$?
	vbd_connected "$D1" || rc=1
	check reattach-dom0 $rc "vdisk attach again: both ends Connected $(tr '\n' ' ' </run/attach.log)"
	show_dirs "$D1"
	cmd "$D1" reattached
else
	check detach-inflight 1 "d1 never reached inflight"
fi

# Another domU destroyed with I/O in flight: vdiskd goes on serving d1.
if wait_state "$D1" victim-phase 300; then
	start_domu d2 victim 1
	D2=$DOMID
	if [ -n "$D2" ] && wait_state "$D2" ready 180; then
		$VDISK attach "$D2" xvda $IMG2 >/run/attach2.log 2>&1
		vbd_connected "$D2" || say "d2's VBD did not connect"
		show_dirs "$D2"
		if wait_state "$D2" io-running 120; then
			sleep 3
			xl destroy d2
			rc=$?
			sleep 5
			kill -0 $VDPID 2>/dev/null || rc=1
			[ "$(xenstore-read $BE1/state 2>/dev/null)" = 4 ] || rc=1
			say "after destroy: d2 backend state '$(xenstore-read /local/domain/0/backend/vbd3/$D2/51712/state 2>&1)', vdisk-error '$(xenstore-read /local/domain/0/backend/vbd3/$D2/51712/vdisk-error 2>&1)'"
			ps -eo pid,args | grep -E 'vdisk' | grep -v grep | sed 's/^/    /'
			timeout 60 $VDISK detach "$D2" xvda >/run/detach2.log 2>&1 ||
				timeout 60 $VDISK detach --force "$D2" xvda >>/run/detach2.log 2>&1 || rc=1
			check destroy-inflight "$rc" "xl destroy d2 (domain $D2) with I/O in flight: vdiskd pid $VDPID alive, d1 still Connected, d2's VBD cleaned up $(tr '\n' ' ' </run/detach2.log)"
		else
			check destroy-inflight 1 "d2 never started its I/O"
		fi
	else
		check destroy-inflight 1 "d2 did not boot"
	fi
	cmd "$D1" victim-done
else
	check destroy-inflight 1 "d1 never reached victim-phase"
fi

# Other image formats, as a second disk of d1 (those this build can create).
if wait_state "$D1" formats 300; then
	for F in vhd qcow2; do
		IMG=$P/f.$F
		if ! $VDISK create -f $F $IMG 256M >/run/create.log 2>&1; then
			say "format $F: not available in this build ($(head -c 200 /run/create.log))"
			continue
		fi
		$VDISK attach "$D1" xvdb $IMG --format $F >/run/attach.log 2>&1
		rc=$?
		vbd_connected_dev() { # DOMID DEVID
			wait_xs_state "/local/domain/0/backend/vbd3/$1/$2" 4 60 &&
				wait_xs_state "/local/domain/$1/device/vbd/$2" 4 60
		}
		vbd_connected_dev "$D1" 51728 || rc=1
		check "fmt-$F-attach" $rc "vdisk attach $D1 xvdb $IMG --format $F: Connected $(tr '\n' ' ' </run/attach.log)"
		cmd "$D1" "fmt:$F"
		wait_state "$D1" "fmt:$F-done" 300
		timeout 60 $VDISK detach "$D1" xvdb >/run/detach.log 2>&1
		rc=$?
		$VDISK check -f $F $IMG >/run/check.log 2>&1 || rc=1
		check "fmt-$F-detach-check" $rc "vdisk detach, then vdisk check -f $F: $(tail -n 2 /run/check.log | tr '\n' ' ' | head -c 200) $(tr '\n' ' ' </run/detach.log)"
	done
	cmd "$D1" fmt-end
fi
wait_state "$D1" "done" 300
R=$(xs_data "$D1" vdisk-result)
say "d1 reports: ${R:-nothing} (passed failed)"
sleep 1
$VDISK detach "$D1" xvda >/dev/null 2>&1
xl destroy d1
kill -TERM $VDPID
i=0
while kill -0 $VDPID 2>/dev/null && [ $i -lt 20 ]; do
	sleep 1
	i=$((i + 1))
done
kill -0 $VDPID 2>/dev/null
check vdiskd-exit "$([ $? -ne 0 ] && echo 0 || echo 1)" "vdiskd exited after SIGTERM"
# The real blkfront never sends a request a correct backend refuses.
NBAD=$(grep -c 'bad request' $VDLOG)
check no-bad-requests "$([ "$NBAD" = 0 ] && echo 0 || echo 1)" "$NBAD requests refused by vdiskd over the whole run $(grep -m 3 'bad request' $VDLOG | tr '\n' ' ')"
sleep 1
shutdown_now
