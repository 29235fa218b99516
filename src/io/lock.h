/*
 * lock: image locking compatible with QEMU's (block/file-posix.c), so that
 * vdisk and qemu (qemu-io, qemu-img, qemu-nbd, qemu-system) see each other.
 *
 * Every opener of an image says which permissions it uses (perm) and which
 * it lets others use at the same time (shared), from QEMU's set
 * (include/block/block-common.h). It takes OFD read locks (F_OFD_SETLK,
 * F_RDLCK, one byte each) on
 *   byte VD_LOCK_PERM_BASE + bit    for every permission bit it uses,
 *   byte VD_LOCK_SHARED_BASE + bit  for every permission bit it does NOT share,
 * and then refuses to go on if a byte tells that someone else holds a
 * permission it does not share (PERM_BASE + bit held) or does not share a
 * permission it wants (SHARED_BASE + bit held). Holding is tested with an
 * F_OFD_GETLK write-lock probe, which sees every other open file
 * description's read locks but not its own. Locks first, test second (as
 * QEMU): of two racing openers at least one sees the other.
 *
 * OFD locks belong to the open file description: they go with the last fd
 * that refers to it (a killed process releases them), they are not
 * inherited across exec by a fresh open, and two opens of the same file in
 * one process do conflict, exactly as two processes would.
 *
 * Bit 0x10 (QEMU's former GRAPH_MOD) is not used: QEMU 6.2 dropped it and
 * newer QEMU neither takes nor tests its bytes.
 */
#ifndef VD_IO_LOCK_H
#define VD_IO_LOCK_H

#include "common/err.h"

#define VD_PERM_CONSISTENT_READ 0x01u
#define VD_PERM_WRITE           0x02u
#define VD_PERM_WRITE_UNCHANGED 0x04u
#define VD_PERM_RESIZE          0x08u
#define VD_PERM_ALL             0x0fu

#define VD_LOCK_PERM_BASE   100
#define VD_LOCK_SHARED_BASE 200

/*
 * What vdisk takes, matching what qemu takes on the file of a qcow2 image:
 *  WRITER  the image opened read-write (worker, serve-nbd, check --repair,
 *          resize, commit's base, convert's destination, create over an
 *          existing file): uses consistent read, write, resize; shares
 *          consistent read and write-unchanged only.
 *  READER  read-only (backing files, --readonly, info, check, map, convert's
 *          source): uses consistent read; shares all but write and resize.
 *  SHARE   force share (qemu-img -U): uses consistent read, shares all.
 */
#define VD_LOCK_WRITER_PERM   (VD_PERM_CONSISTENT_READ | VD_PERM_WRITE | VD_PERM_RESIZE)
#define VD_LOCK_WRITER_SHARED (VD_PERM_CONSISTENT_READ | VD_PERM_WRITE_UNCHANGED)
#define VD_LOCK_READER_PERM   VD_PERM_CONSISTENT_READ
#define VD_LOCK_READER_SHARED (VD_PERM_ALL & ~(VD_PERM_WRITE | VD_PERM_RESIZE))
#define VD_LOCK_SHARE_PERM    VD_PERM_CONSISTENT_READ
#define VD_LOCK_SHARE_SHARED  VD_PERM_ALL

/* QEMU's name of one permission bit ("consistent read", "write", ...). */
const char *vd_lock_perm_name(unsigned int bit);

/*
 * Take the locks for (perm, shared) on fd and test for conflicts. path
 * names the file in messages. Returns 0, or -EBUSY with err saying which
 * lock is in the way (QEMU's wording: failed to get "write" lock / failed
 * to get shared "write" lock), or another -errno. On a filesystem without
 * OFD locks (ENOLCK, EOPNOTSUPP, EINVAL) it warns once and returns 0, as
 * QEMU's locking=auto does. The locks stay until fd is closed (on failure
 * too: the caller closes fd).
 */
int vd_lock_fd(int fd, unsigned int perm, unsigned int shared, const char *path,
	       struct vd_err *err);

/*
 * Drop every lock byte (QEMU's whole range) of fd's open file description.
 * Call before close: io_uring may keep the file referenced (registered
 * files, a ring torn down asynchronously) and OFD locks live as long as
 * the description, not the fd. Errors are ignored (nothing to undo).
 */
void vd_lock_release_fd(int fd);

/*
 * Test only (no locks taken): 0 if an opener with (perm, shared) could
 * open fd's file now, else -EBUSY with err as above.
 */
int vd_lock_test_fd(int fd, unsigned int perm, unsigned int shared, const char *path,
		    struct vd_err *err);

#endif
