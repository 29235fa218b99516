# A small ext4 on a loop device for the full-filesystem (ENOSPC) tests.
# Source it, then:
#   loopfs_require TOOL...   exit 77 unless root, a free loop device and TOOLs
#   loopfs_mount SIZE MNT    make SIZE of ext4 in MNT.fs and mount it on MNT
#                            (exit 77 if the mount fails)
#   loopfs_umount            unmount it (idempotent; call from the EXIT trap)
LOOPFS_MNT=

loopfs_require() {
	local t
	[ "$(id -u)" -eq 0 ] || { echo "SKIP: needs root (loop mount)"; exit 77; }
	for t in mkfs.ext4 losetup mount umount "$@"; do
		command -v "$t" >/dev/null || { echo "SKIP: $t not installed"; exit 77; }
	done
	losetup -f >/dev/null 2>&1 || { echo "SKIP: no free loop device"; exit 77; }
}

loopfs_mount() {
	mkdir -p "$2"
	truncate -s "$1" "$2.fs"
	mkfs.ext4 -q -F -m 0 "$2.fs" >/dev/null 2>&1 || { echo "SKIP: mkfs.ext4 failed"; exit 77; }
	mount -o loop "$2.fs" "$2" || { echo "SKIP: cannot loop-mount"; exit 77; }
	LOOPFS_MNT=$2
}

loopfs_umount() {
	[ -z "$LOOPFS_MNT" ] || umount "$LOOPFS_MNT" || umount -l "$LOOPFS_MNT" || true
	LOOPFS_MNT=
}
