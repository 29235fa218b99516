#!/usr/bin/env bash
# Build (or reuse) the Xen-under-QEMU environment of the xen suite, from
# Debian 12 packages only, without installing any of them on the host:
#
#   CACHE/env-KEY/xen.elf        Xen 4.17 (xen-hypervisor-4.17-amd64, uncompressed)
#   CACHE/env-KEY/vmlinux        the Debian kernel as an ELF (dom0 and domU)
#   CACHE/env-KEY/initrd.img     dom0 initramfs (initramfs-tools, MODULES=list)
#   CACHE/env-KEY/dom0.img       dom0 root filesystem (ext4): debootstrap
#                                --variant=minbase bookworm + xen-utils-4.17,
#                                upgraded from bookworm-updates/-security
#   CACHE/env-KEY/domu/          tree of the domU initramfs without /init:
#                                static busybox, xen-blkfront and ext4 modules,
#                                e2fsprogs, coreutils dd, xenstore tools
#   CACHE/env-KEY/env.sh         KVER=..., the versions the key was made from
#
# KEY hashes the candidate versions of the packages (host apt lists) and
# this script, so a new Xen or kernel in bookworm-security, or a change
# here, builds a new environment; anything else reuses it (seconds).
# The vdisk binaries are NOT in it: run.sh puts them on a second disk on
# each run.
#
# Usage: build-env.sh [--print-dir]     prints the env dir on its last line
# Environment: VDISK_XEN_CACHE (default /var/cache/vdisk-xen)
#              VDISK_XEN_MIRROR (default http://deb.debian.org/debian)
# Exit: 0 ready, 1 failed, 77 cannot be built here (no root/network/tools).
set -euo pipefail

CACHE=${VDISK_XEN_CACHE:-/var/cache/vdisk-xen}
MIRROR=${VDISK_XEN_MIRROR:-http://deb.debian.org/debian}
SECURITY=${VDISK_XEN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
HERE=$(cd "$(dirname "$0")" && pwd)
SELF="$HERE/build-env.sh"

log() { printf '[build-env] %s\n' "$*" >&2; }
skip() {
	log "SKIP: $*"
	exit 77
}
die() {
	log "ERROR: $*"
	exit 1
}

[ "$(id -u)" -eq 0 ] || skip "needs root (debootstrap, chroot)"

# Host tools (installed on the host only if missing: they are the tools,
# not the environment).
need_host_pkgs=()
command -v debootstrap >/dev/null || need_host_pkgs+=(debootstrap)
command -v mkfs.ext4 >/dev/null || need_host_pkgs+=(e2fsprogs)
command -v xz >/dev/null || need_host_pkgs+=(xz-utils)
command -v cpio >/dev/null || need_host_pkgs+=(cpio)
if [ "${#need_host_pkgs[@]}" -gt 0 ]; then
	log "installing host tools: ${need_host_pkgs[*]}"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
		"${need_host_pkgs[@]}" </dev/null >&2 ||
		skip "cannot install ${need_host_pkgs[*]}"
fi

# ---- the key: candidate versions from the host's apt lists ----
KEY_PKGS=(xen-hypervisor-4.17-amd64 xen-utils-4.17 linux-image-amd64 busybox-static liburing2
	libxenstore4 e2fsprogs)
versions() {
	local out p v
	# One apt-cache call (each one loads the whole cache: about a second).
	out=$(apt-cache policy "${KEY_PKGS[@]}" 2>/dev/null |
		awk '/^[^ ].*:$/ { sub(/:$/, ""); p = $0 } /^  Candidate:/ { print p "=" $2 }')
	for p in "${KEY_PKGS[@]}"; do
		v=$(awk -F= -v p="$p" '$1 == p { print $2 }' <<<"$out")
		printf '%s=%s\n' "$p" "${v:-none}"
	done
	# The kernel ABI package the metapackage points at.
	apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ { print $2 }'
}
VERSIONS=$(versions)
if grep -q '=none$' <<<"$VERSIONS" || grep -q '=(none)$' <<<"$VERSIONS"; then
	log "apt lists lack some packages; running apt-get update"
	apt-get update -q >&2 || skip "apt-get update failed (no network?)"
	VERSIONS=$(versions)
	if grep -qE '=(none|\(none\))$' <<<"$VERSIONS"; then
		skip "packages not available from apt: $(grep -E '=(none|\(none\))$' <<<"$VERSIONS" | tr '\n' ' ')"
	fi
fi
# Bump when the rootfs recipe (stage 1 below) changes; stage 2 is keyed by
# this whole file.
ROOTFS_RECIPE=1
INCLUDE=xen-utils-4.17,xenstore-utils,initramfs-tools,busybox,kmod,procps,e2fsprogs,util-linux
INCLUDE+=,liburing2,libxenstore4,libxengnttab1,libxenevtchn1,libxentoolcore1,coreutils
KEY1=$(printf '%s\n' "$VERSIONS" "$INCLUDE" "$ROOTFS_RECIPE" | sha256sum | cut -c1-16)
KEY=$( (
	echo "$KEY1"
	cat "$SELF"
) | sha256sum | cut -c1-16)
ENV="$CACHE/env-$KEY"
ROOTFS="$CACHE/rootfs-$KEY1"

if [ -f "$ENV/ready" ]; then
	log "cached environment $ENV"
	echo "$ENV"
	exit 0
fi
# One builder at a time (two test runs may start together); re-check after.
mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock 9
if [ -f "$ENV/ready" ]; then
	log "cached environment $ENV (built by another run)"
	echo "$ENV"
	exit 0
fi

log "building environment $ENV"
log "versions: $(echo "$VERSIONS" | tr '\n' ' ')"
mkdir -p "$CACHE"
WORK="$CACHE/tmp-$KEY.$$"
rm -rf "$WORK"
mkdir -p "$WORK"

MOUNTED=""
cleanup() {
	local m
	for m in $MOUNTED; do
		umount -l "$m" 2>/dev/null || true
	done
	rm -rf "$WORK"
}
trap cleanup EXIT

mount_chroot() {
	local r=$1
	mount -t proc proc "$r/proc" && MOUNTED="$r/proc $MOUNTED"
	mount -t sysfs sys "$r/sys" && MOUNTED="$r/sys $MOUNTED"
	mount --bind /dev "$r/dev" && MOUNTED="$r/dev $MOUNTED"
}
umount_chroot() {
	local r=$1
	umount "$r/dev" "$r/sys" "$r/proc"
	MOUNTED=""
}

# ---- host-side downloads (never installed) ----
mkdir -p "$WORK/debs" "$WORK/x"
(cd "$WORK/debs" && apt-get download -q -o APT::Sandbox::User=root \
	xen-hypervisor-4.17-amd64 busybox-static >&2) ||
	skip "apt-get download failed (no network?)"
for d in "$WORK"/debs/*.deb; do
	dpkg -x "$d" "$WORK/x"
done
zcat "$WORK"/x/boot/xen-4.17-amd64.gz >"$WORK/xen.elf"
[ "$(head -c 4 "$WORK/xen.elf" | od -An -c | tr -d ' ')" = '177ELF' ] || die "xen.elf is not an ELF"
cp "$WORK/x/bin/busybox" "$WORK/busybox"
XENHV=$(dpkg-deb -f "$WORK"/debs/xen-hypervisor-4.17-amd64_*.deb Version)

# ---- stage 1: the dom0 root filesystem (the slow part, minutes) ----
# The kernel comes after initramfs-tools is configured (MODULES=list), so
# that its postinst builds the small initramfs once.
if [ ! -f "$ROOTFS/.ready" ]; then
	R="$WORK/rootfs"
	[ -n "$WORK" ] && [ "$R" != "/rootfs" ] || die "internal: empty work dir"
	log "stage 1: debootstrap --variant=minbase bookworm (about 4 minutes)"
	debootstrap --variant=minbase --include="$INCLUDE" bookworm "$R" "$MIRROR" \
		>"$WORK/debootstrap.log" 2>&1 || {
		tail -n 30 "$WORK/debootstrap.log" >&2
		die "debootstrap failed (log above)"
	}
	printf 'deb %s bookworm main\ndeb %s bookworm-updates main\ndeb %s bookworm-security main\n' \
		"$MIRROR" "$MIRROR" "$SECURITY" >"$R/etc/apt/sources.list"
	# No daemon starts inside the chroot.
	printf '#!/bin/sh\nexit 101\n' >"$R/usr/sbin/policy-rc.d"
	chmod 755 "$R/usr/sbin/policy-rc.d"
	printf 'virtio_pci\nvirtio_blk\next4\n' >"$R/etc/initramfs-tools/modules"
	sed -i 's/^MODULES=.*/MODULES=list/; s/^COMPRESS=.*/COMPRESS=gzip/' \
		"$R/etc/initramfs-tools/initramfs.conf"
	mount_chroot "$R"
	log "stage 1: upgrade from bookworm-updates/-security, install the kernel"
	{
		chroot "$R" env DEBIAN_FRONTEND=noninteractive LC_ALL=C apt-get update -q &&
			chroot "$R" env DEBIAN_FRONTEND=noninteractive LC_ALL=C apt-get -y -q \
				-o Dpkg::Options::=--force-confold dist-upgrade &&
			chroot "$R" env DEBIAN_FRONTEND=noninteractive LC_ALL=C apt-get -y -q \
				--no-install-recommends -o Dpkg::Options::=--force-confold \
				install linux-image-amd64 &&
			chroot "$R" apt-get clean
	} >"$WORK/chroot.log" 2>&1 || {
		tail -n 30 "$WORK/chroot.log" >&2
		die "upgrade/kernel install in the chroot failed (log above)"
	}
	umount_chroot "$R"
	find "$R/var/lib/apt/lists" -maxdepth 1 -type f -name '*_Packages*' -delete
	rm -rf "$ROOTFS"
	mv "$R" "$ROOTFS"
	touch "$ROOTFS/.ready"
else
	log "stage 1: cached rootfs $ROOTFS"
fi
ROOT=$ROOTFS
in_root() { chroot "$ROOT" env LC_ALL=C "$@"; }

# ---- stage 2: everything derived from the rootfs (about a minute) ----
KVER=$(basename "$(ls -d "$ROOT"/lib/modules/*-amd64 | sort -V | tail -n 1)")
[ -n "$KVER" ] && [ -f "$ROOT/boot/vmlinuz-$KVER" ] || die "no kernel in the rootfs"
[ -f "$ROOT/boot/initrd.img-$KVER" ] || die "no initrd for $KVER"
XENV=$(in_root dpkg-query -W -f='${Version}' xen-utils-4.17)
log "kernel $KVER, xen-utils $XENV, hypervisor $XENHV"
[ "$XENV" = "$XENHV" ] || log "WARNING: xen-utils $XENV differs from the hypervisor $XENHV"

# The uncompressed kernel: find the XZ (or gzip/zstd) stream in the bzImage.
extract_vmlinux() {
	local img=$1 out=$2 off magic m tool
	for magic in '\xfd7zXZ\x00:xz' '\x1f\x8b\x08:gzip' '\x28\xb5\x2f\xfd:zstd'; do
		m=${magic%:*}
		tool=${magic##*:}
		for off in $(LC_ALL=C grep -obUaP "$m" "$img" | cut -d: -f1 | head -n 5); do
			case $tool in
			xz) tail -c +$((off + 1)) "$img" | xz -dc --single-stream >"$out" 2>/dev/null || true ;;
			gzip) tail -c +$((off + 1)) "$img" | zcat >"$out" 2>/dev/null || true ;;
			zstd) tail -c +$((off + 1)) "$img" | zstd -dc >"$out" 2>/dev/null || true ;;
			esac
			if [ "$(head -c 4 "$out" | od -An -c | tr -d ' ')" = '177ELF' ]; then
				return 0
			fi
		done
	done
	return 1
}
extract_vmlinux "$ROOT/boot/vmlinuz-$KVER" "$WORK/vmlinux" || die "cannot extract vmlinux"

# The domU initramfs tree (without /init: run.sh adds it on each run).
D="$WORK/domu"
mkdir -p "$D"/{bin,sbin,dev,proc,sys,tmp,mnt,lib/modules,etc,usr/bin,usr/sbin}
cp "$WORK/busybox" "$D/bin/busybox"
# Modules in load order (modprobe resolves dependencies in the chroot).
: >"$D/lib/modules/load-order"
for m in xen-blkfront crc32c_generic ext4; do
	in_root modprobe -S "$KVER" --show-depends "$m" | awk '$1 == "insmod" { print $2 }'
done | awk '!seen[$0]++' | while read -r ko; do
	b=$(basename "$ko")
	case $b in
	*.ko.xz)
		xz -dc "$ROOT$ko" >"$D/lib/modules/${b%.xz}"
		b=${b%.xz}
		;;
	*.ko.zst)
		zstd -dc "$ROOT$ko" >"$D/lib/modules/${b%.zst}"
		b=${b%.zst}
		;;
	*) cp "$ROOT$ko" "$D/lib/modules/$b" ;;
	esac
	echo "$b" >>"$D/lib/modules/load-order"
done
grep -q '^xen-blkfront.ko$' "$D/lib/modules/load-order" || die "xen-blkfront.ko not found"
# Dynamic tools from the rootfs, with their libraries.
DYN=(/sbin/mke2fs /sbin/e2fsck /bin/dd /usr/bin/xenstore-read /usr/bin/xenstore-write
	/usr/bin/xenstore-ls /usr/bin/xenstore-exists /sbin/blkdiscard)
for f in "${DYN[@]}"; do
	real=$(in_root readlink -f "$f")
	[ -e "$ROOT$real" ] || die "$f missing in the rootfs"
	mkdir -p "$D$(dirname "$f")"
	cp -L "$ROOT$real" "$D$f"
	in_root ldd "$real" | awk '/=> \// { print $3 } /^[ \t]*\/lib/ { print $1 }' |
		while read -r lib; do
			mkdir -p "$D$(dirname "$lib")"
			cp -L "$ROOT$lib" "$D$lib"
		done
done
ln -sf mke2fs "$D/sbin/mkfs.ext4"
ln -sf e2fsck "$D/sbin/fsck.ext4"
cp "$ROOT/etc/mke2fs.conf" "$D/etc/mke2fs.conf"
for a in sh mount umount mkdir cat echo sleep ls grep sed awk cmp sha256sum head tail \
	insmod stat test tr wc seq kill ps date sync poweroff halt reboot cut uname find \
	hexdump od rm cp mknod timeout du sort uniq true false expr printf dmesg; do
	ln -sf busybox "$D/bin/$a"
done

# dom0: the PID-1 stub (the real script is on the payload disk).
printf '%s\n' \
	'#!/bin/sh' \
	'# PID 1 of the test dom0: mount the payload disk and run its script.' \
	'mount -t proc proc /proc 2>/dev/null' \
	'mount -t sysfs sys /sys 2>/dev/null' \
	'mount -t devtmpfs dev /dev 2>/dev/null' \
	'mount -o remount,rw /' \
	'mkdir -p /payload' \
	'if mount -t ext4 /dev/vdb /payload && [ -x /payload/dom0-init.sh ]; then' \
	'	exec /payload/dom0-init.sh' \
	'fi' \
	'echo "VDISK-XEN: cannot mount the payload disk /dev/vdb"' \
	'echo o >/proc/sysrq-trigger' \
	'sleep 1000' >"$ROOT/sbin/vdisk-xen-init"
chmod 755 "$ROOT/sbin/vdisk-xen-init"
echo "vdisk-dom0" >"$ROOT/etc/hostname"
cp "$ROOT/boot/initrd.img-$KVER" "$WORK/initrd.img"
log "stage 2: dom0.img (ext4, 2G)"
mkfs.ext4 -q -F -L vdisk-dom0 -d "$ROOT" "$WORK/dom0.img" 2G >/dev/null || die "mkfs.ext4 -d failed"

printf 'KVER=%s\nXEN_UTILS_VERSION=%s\nXEN_HYPERVISOR_VERSION=%s\n' "$KVER" "$XENV" "$XENHV" \
	>"$WORK/env.sh"
echo "$VERSIONS" >"$WORK/versions"

# Publish atomically.
rm -rf "$ENV"
mkdir -p "$ENV"
mv "$WORK/xen.elf" "$WORK/vmlinux" "$WORK/initrd.img" "$WORK/dom0.img" "$WORK/domu" \
	"$WORK/env.sh" "$WORK/versions" "$ENV/"
touch "$ENV/ready"
# Older environments are cheap to rebuild from their rootfs: remove them.
# Older rootfs trees (other package versions) are only listed.
for old in "$CACHE"/env-* "$CACHE"/rootfs-*; do
	case $old in
	"$ENV" | "$ROOTFS") ;;
	"$CACHE"/env-*)
		log "removing older environment $old"
		rm -rf "$old"
		;;
	*) [ -e "$old" ] && log "older rootfs (may be removed): $old" ;;
	esac
done
log "environment ready: $ENV"
echo "$ENV"
