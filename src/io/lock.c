/*
 * lock: QEMU-compatible OFD byte-range image locks (see lock.h for the
 * scheme and why it is built this way).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <string.h>

#include "common/log.h"
#include "io/lock.h"

#define NR_PERMS 4

static atomic_bool g_unsupported_warned;

const char *vd_lock_perm_name(unsigned int bit)
{
	switch (bit) {
	case VD_PERM_CONSISTENT_READ:
		return "consistent read";
	case VD_PERM_WRITE:
		return "write";
	case VD_PERM_WRITE_UNCHANGED:
		return "write unchanged";
	case VD_PERM_RESIZE:
		return "resize";
	default:
		return "unknown";
	}
}

static bool unsupported(int e)
{
	return e == ENOLCK || e == EOPNOTSUPP || e == EINVAL || e == ENOSYS;
}

/* F_OFD_SETLK one byte for reading: 0 or -errno. */
static int lock_byte(int fd, int off)
{
	struct flock fl = {
		.l_type = F_RDLCK,
		.l_whence = SEEK_SET,
		.l_start = off,
		.l_len = 1,
	};

	return fcntl(fd, F_OFD_SETLK, &fl) < 0 ? -errno : 0;
}

/* 1 if another open file description holds a lock on the byte, 0 if not, -errno. */
static int byte_held(int fd, int off)
{
	struct flock fl = {
		.l_type = F_WRLCK,
		.l_whence = SEEK_SET,
		.l_start = off,
		.l_len = 1,
	};

	if (fcntl(fd, F_OFD_GETLK, &fl) < 0) {
		return -errno;
	}
	return fl.l_type != F_UNLCK;
}

static int warn_unsupported(const char *path, int e)
{
	if (!atomic_exchange(&g_unsupported_warned, true)) {
		vd_log(VD_LOG_WARN, "lock: %s: no OFD locks on this filesystem (%s): not locking",
		       path, strerror(e));
	}
	return 0;
}

/*
 * Fail with qemu's words if anyone holds a byte base + i for a bit i of
 * mask: the lock another process would need us not to take ("shared "
 * names the refusal of a permission somebody uses and we do not share).
 */
static int refuse_if_held(int fd, unsigned int base, unsigned int mask, const char *shared,
			  const char *path, struct vd_err *err)
{
	for (unsigned int i = 0; i < NR_PERMS; i++) {
		unsigned int bit = 1u << i;
		int r;

		if (!(mask & bit)) {
			continue;
		}
		r = byte_held(fd, (int)(base + i));
		if (r < 0) {
			return unsupported(-r) ? warn_unsupported(path, -r)
					       : vd_err_set(err, -r, "%s: testing lock byte %u",
							    path, base + i);
		}
		if (r) {
			return vd_err_set(err, EBUSY,
					  "%s: failed to get %s\"%s\" lock (is another process "
					  "using the image?)",
					  path, shared, vd_lock_perm_name(bit));
		}
	}
	return 0;
}

int vd_lock_test_fd(int fd, unsigned int perm, unsigned int shared, const char *path,
		    struct vd_err *err)
{
	/* What we want to use, nobody may refuse to share... */
	int r = refuse_if_held(fd, VD_LOCK_SHARED_BASE, perm, "", path, err);

	/* ...and what we do not share, nobody may be using. */
	if (r == 0) {
		r = refuse_if_held(fd, VD_LOCK_PERM_BASE, ~shared, "shared ", path, err);
	}
	return r;
}

int vd_lock_fd(int fd, unsigned int perm, unsigned int shared, const char *path, struct vd_err *err)
{
	unsigned int i;
	int r;

	for (i = 0; i < 2 * NR_PERMS; i++) {
		unsigned int bit = 1u << (i % NR_PERMS);
		bool want = i < NR_PERMS ? (perm & bit) != 0 : !(shared & bit);
		int off = (i < NR_PERMS ? VD_LOCK_PERM_BASE : VD_LOCK_SHARED_BASE) +
			  (int)(i % NR_PERMS);

		if (!want) {
			continue;
		}
		r = lock_byte(fd, off);
		if (r == -EAGAIN || r == -EACCES) {
			/* a write lock: not QEMU's, but in the way all the same */
			return vd_err_set(err, EBUSY,
					  "%s: failed to lock byte %d (is another process "
					  "using the image?)",
					  path, off);
		}
		if (r < 0) {
			return unsupported(-r) ? warn_unsupported(path, -r)
					       : vd_err_set(err, -r, "%s: failed to lock byte %d",
							    path, off);
		}
	}
	return vd_lock_test_fd(fd, perm, shared, path, err);
}

void vd_lock_release_fd(int fd)
{
	struct flock fl = {
		.l_type = F_UNLCK,
		.l_whence = SEEK_SET,
		.l_start = VD_LOCK_PERM_BASE,
		.l_len = VD_LOCK_SHARED_BASE + 100 - VD_LOCK_PERM_BASE,
	};

	(void)fcntl(fd, F_OFD_SETLK, &fl);
}
