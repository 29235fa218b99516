/*
 * file: the backend registry, vd_file_* (open, request checks, synchronous
 * helper) and the fd helpers the uring and sync backends share.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sys/uio.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/uio.h>
#include <unistd.h>

#include "common/compiler.h"
#include "common/iov.h"
#include "common/log.h"
#include "io/fault.h"
#include "io/io-int.h"
#include "io/lock.h"

static const struct vd_io_backend *const backends[] = {
	&vd_uring_backend, &vd_sync_backend, &vd_null_backend, &vd_mem_backend, &vd_fault_backend,
};

const struct vd_io_backend *vd_io_backend_find(const char *name)
{
	size_t i;

	if (!name) {
		return NULL;
	}
	for (i = 0; i < VD_ARRAY_SIZE(backends); i++) {
		if (strcmp(backends[i]->name, name) == 0) {
			return backends[i];
		}
	}
	return NULL;
}

int vd_file_open(const char *backend, const char *path, const struct vd_file_opts *o,
		 struct vd_file **out, struct vd_err *err)
{
	static const struct vd_file_opts defaults = { .cache = VD_CACHE_DIRECT };
	const struct vd_io_backend *be;
	struct vd_file *f;
	int ret;

	*out = NULL;
	if (!backend) {
		backend = "uring";
	}
	if (!o) {
		o = &defaults;
	}
	be = vd_io_backend_find(backend);
	if (!be) {
		return vd_err_set(err, EINVAL, "unknown io backend '%s' (uring, sync, null, mem)",
				  backend);
	}
	f = calloc(1, sizeof(*f) + be->file_state_size);
	if (!f) {
		return vd_err_set(err, ENOMEM, "out of memory");
	}
	f->backend = be;
	f->fd = -1;
	f->path = strdup(path ? path : be->name);
	if (!f->path) {
		ret = vd_err_set(err, ENOMEM, "out of memory");
		goto err_free;
	}
	ret = be->open(f, path, o, err);
	if (ret < 0) {
		goto err_free_path;
	}
	f->info.readonly = o->readonly;
	*out = f;
	return 0;

err_free_path:
	free(f->path);
err_free:
	free(f);
	return ret;
}

void vd_file_close(struct vd_file *f)
{
	if (!f) {
		return;
	}
	f->backend->close(f);
	free(f->path);
	free(f);
}

int vd_file_lock(struct vd_file *f, unsigned int perm, unsigned int shared, struct vd_err *err)
{
	if (!f->backend->lock) {
		return 0;
	}
	return f->backend->lock(f, perm, shared, err);
}

int vd_file_resize(struct vd_file *f, uint64_t size_bytes)
{
	if (!f->backend->resize) {
		return -EOPNOTSUPP;
	}
	return f->backend->resize(f, size_bytes);
}

int vd_file_prealloc(struct vd_file *f, uint64_t offset_bytes, uint64_t len_bytes)
{
	if (!f->backend->prealloc) {
		return -EOPNOTSUPP;
	}
	return f->backend->prealloc(f, offset_bytes, len_bytes);
}

static int check_req(const struct vd_file *f, const struct vd_file_req *req)
{
	switch (req->op) {
	case VD_IO_READ:
	case VD_IO_WRITE:
		if (req->len_bytes == 0 || !vd_iov_covers(req->iov, req->iovcnt, req->len_bytes)) {
			return -EINVAL;
		}
		break;
	case VD_IO_FLUSH:
		return 0;
	case VD_IO_DISCARD:
	case VD_IO_WRITE_ZEROES:
		if (req->len_bytes == 0) {
			return -EINVAL;
		}
		break;
	default:
		return -EINVAL;
	}
	if (req->offset_bytes > (uint64_t)INT64_MAX ||
	    req->len_bytes > (uint64_t)INT64_MAX - req->offset_bytes) {
		return -EINVAL;
	}
	if (req->op != VD_IO_READ && f->info.readonly) {
		return -EROFS;
	}
	return 0;
}

void vd_file_submit(struct vd_file *f, struct vd_ioctx *ctx, struct vd_file_req *req)
{
	int ret;

	req->next_done = NULL;
	req->result = 0;
	req->file = f;
	req->done_bytes = 0;
	req->rest_iov = NULL;
	req->rest_iovcnt = 0;
	req->counted = 0;
	req->attempt = 0;
	vd_ioctx_track(ctx, req);
	ret = check_req(f, req);
	if (ret < 0) {
		vd_ioctx_complete(ctx, req, ret);
		return;
	}
	f->backend->submit(f, ctx, req);
}

/* ---- request helpers ---- */

void vd_req_zero_from(struct vd_file_req *req, uint64_t from_bytes)
{
	uint64_t pos = 0;
	int i;

	for (i = 0; i < req->iovcnt; i++) {
		uint64_t len = req->iov[i].iov_len;

		if (pos + len > from_bytes) {
			uint64_t skip = from_bytes > pos ? from_bytes - pos : 0;

			memset((char *)req->iov[i].iov_base + skip, 0, len - skip);
		}
		pos += len;
	}
}

int vd_req_rest(struct vd_file_req *req, struct iovec **iov, int *iovcnt)
{
	uint64_t pos = 0;
	int i, j;

	if (req->done_bytes == 0) {
		*iov = req->iov;
		*iovcnt = req->iovcnt;
		return 0;
	}
	free(req->rest_iov);
	req->rest_iov = malloc(sizeof(struct iovec) * (size_t)req->iovcnt);
	if (!req->rest_iov) {
		return -ENOMEM;
	}
	for (i = 0, j = 0; i < req->iovcnt; i++) {
		uint64_t len = req->iov[i].iov_len;

		if (pos + len > req->done_bytes) {
			uint64_t skip = req->done_bytes > pos ? req->done_bytes - pos : 0;

			req->rest_iov[j].iov_base = (char *)req->iov[i].iov_base + skip;
			req->rest_iov[j].iov_len = len - skip;
			j++;
		}
		pos += len;
	}
	req->rest_iovcnt = j;
	*iov = req->rest_iov;
	*iovcnt = j;
	return 0;
}

/* ---- fd helpers ---- */

static atomic_bool g_direct_warned;

static uint32_t read_sysfs_u32(dev_t rdev, const char *attr, uint32_t dflt)
{
	char path[128], buf[32];
	unsigned long long v;
	char *end;
	FILE *fp;

	snprintf(path, sizeof(path), "/sys/dev/block/%u:%u/queue/%s", major(rdev), minor(rdev),
		 attr);
	fp = fopen(path, "re");
	if (!fp) {
		return dflt;
	}
	if (!fgets(buf, sizeof(buf), fp)) {
		(void)fclose(fp);
		return dflt;
	}
	(void)fclose(fp);
	errno = 0;
	v = strtoull(buf, &end, 10);
	if (errno || end == buf || v > UINT32_MAX) {
		return dflt;
	}
	return (uint32_t)v;
}

static uint32_t dio_align(int fd)
{
#ifdef STATX_DIOALIGN
	struct statx stx;

	if (statx(fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &stx) == 0 &&
	    (stx.stx_mask & STATX_DIOALIGN) && stx.stx_dio_offset_align > 512 &&
	    stx.stx_dio_offset_align <= 65536) {
		return stx.stx_dio_offset_align;
	}
#else
	(void)fd;
#endif
	return 512;
}

int vd_fd_open(struct vd_file *f, const char *path, const struct vd_file_opts *o,
	       struct vd_err *err)
{
	int flags = (o->readonly ? O_RDONLY : O_RDWR) | O_CLOEXEC;
	bool direct = o->cache == VD_CACHE_DIRECT;
	struct stat st;
	int fd, ret;

	if (!path || !*path) {
		return vd_err_set(err, EINVAL, "no path given");
	}
	fd = open(path, flags | (direct ? O_DIRECT : 0));
	if (fd < 0 && direct && errno == EINVAL) {
		direct = false;
		fd = open(path, flags);
		if (fd >= 0 && !atomic_exchange(&g_direct_warned, true)) {
			vd_log(VD_LOG_WARN,
			       "io: %s: the filesystem refuses O_DIRECT, using the page cache",
			       path);
		}
	}
	if (fd < 0) {
		ret = errno;
		return vd_err_set(err, ret, "cannot open %s", path);
	}
	if (fstat(fd, &st) < 0) {
		ret = vd_err_set(err, errno, "cannot stat %s", path);
		goto err_close;
	}
	f->info.direct = direct;
	if (S_ISBLK(st.st_mode)) {
		uint64_t size = 0;
		int lbs = 512;
		unsigned int pbs = 4096;

		if (ioctl(fd, BLKGETSIZE64, &size) < 0) {
			ret = vd_err_set(err, errno, "%s: BLKGETSIZE64", path);
			goto err_close;
		}
		if (ioctl(fd, BLKSSZGET, &lbs) < 0 || lbs < 512 || lbs > 65536) {
			lbs = 512;
		}
		if (ioctl(fd, BLKPBSZGET, &pbs) < 0 || pbs < (unsigned int)lbs || pbs > 65536) {
			pbs = (unsigned int)lbs;
		}
		f->info.is_blockdev = true;
		f->info.size_bytes = size;
		f->info.logical_block_bytes = (uint32_t)lbs;
		f->info.physical_block_bytes = pbs;
		f->info.discard = read_sysfs_u32(st.st_rdev, "discard_max_bytes", 0) > 0;
		f->info.discard_granularity_bytes =
			read_sysfs_u32(st.st_rdev, "discard_granularity", (uint32_t)lbs);
		if (f->info.discard_granularity_bytes == 0) {
			f->info.discard_granularity_bytes = (uint32_t)lbs;
		}
	} else if (S_ISREG(st.st_mode)) {
		f->info.size_bytes = (uint64_t)st.st_size;
		f->info.logical_block_bytes = direct ? dio_align(fd) : 512;
		f->info.physical_block_bytes = VD_MAX(4096u, f->info.logical_block_bytes);
		f->info.discard = true;
		f->info.discard_granularity_bytes = 4096;
	} else {
		ret = vd_err_set(err, EINVAL, "%s is neither a regular file nor a block device",
				 path);
		goto err_close;
	}
	f->fd = fd;
	return 0;

err_close:
	close(fd);
	return ret;
}

void vd_fd_close(struct vd_file *f)
{
	if (f->fd >= 0) {
		vd_lock_release_fd(f->fd);
		close(f->fd);
		f->fd = -1;
	}
}

int vd_fd_resize(struct vd_file *f, uint64_t size_bytes)
{
	if (f->info.is_blockdev) {
		return -EOPNOTSUPP;
	}
	if (f->info.readonly) {
		return -EROFS;
	}
	if (size_bytes > (uint64_t)INT64_MAX) {
		return -EINVAL;
	}
	if (ftruncate(f->fd, (off_t)size_bytes) < 0) {
		return -errno;
	}
	f->info.size_bytes = size_bytes;
	return 0;
}

int vd_fd_lock(struct vd_file *f, unsigned int perm, unsigned int shared, struct vd_err *err)
{
	return vd_lock_fd(f->fd, perm, shared, f->path, err);
}

int vd_fd_prealloc(struct vd_file *f, uint64_t offset_bytes, uint64_t len_bytes)
{
	if (f->info.is_blockdev) {
		return -EOPNOTSUPP;
	}
	if (f->info.readonly) {
		return -EROFS;
	}
	if (offset_bytes > (uint64_t)INT64_MAX || len_bytes > (uint64_t)INT64_MAX - offset_bytes) {
		return -EINVAL;
	}
	if (fallocate(f->fd, 0, (off_t)offset_bytes, (off_t)len_bytes) < 0) {
		return -errno;
	}
	return 0;
}

int vd_fd_blkdev_range(struct vd_file *f, enum vd_io_op op, uint64_t offset_bytes,
		       uint64_t len_bytes)
{
	uint64_t range[2] = { offset_bytes, len_bytes };

	if (ioctl(f->fd, op == VD_IO_DISCARD ? BLKDISCARD : BLKZEROOUT, range) < 0) {
		return -errno;
	}
	return 0;
}

int vd_fd_falloc_mode(enum vd_io_op op, unsigned int attempt)
{
	if (op == VD_IO_WRITE_ZEROES && attempt == 0) {
		return FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE;
	}
	return FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE;
}

/* ---- synchronous helper ---- */

struct sync_wait {
	bool done;
	int64_t result;
};

static void sync_cb(struct vd_file_req *req, int64_t result)
{
	struct sync_wait *w = req->cb_arg;

	w->done = true;
	w->result = result;
}

static int64_t plain_rw(struct vd_file *f, enum vd_io_op op, void *buf, uint64_t len, uint64_t off)
{
	uint64_t done = 0;

	while (done < len) {
		ssize_t n = op == VD_IO_READ ? pread(f->fd, (char *)buf + done, len - done,
						     (off_t)(off + done))
					     : pwrite(f->fd, (char *)buf + done, len - done,
						      (off_t)(off + done));

		if (n < 0) {
			if (errno == EINTR) {
				continue;
			}
			return -errno;
		}
		if (n == 0) {
			if (op == VD_IO_WRITE) {
				return -EIO;
			}
			memset((char *)buf + done, 0, len - done);
			break;
		}
		done += (uint64_t)n;
	}
	return (int64_t)len;
}

/* Without io_uring: only fd-backed files, and blocking. */
static int64_t rw_sync_fallback(struct vd_file *f, enum vd_io_op op, void *buf, uint64_t len,
				uint64_t off)
{
	if (f->fd < 0) {
		return -ENOSYS;
	}
	if (op != VD_IO_READ && f->info.readonly) {
		return -EROFS;
	}
	switch (op) {
	case VD_IO_FLUSH:
		return fdatasync(f->fd) < 0 ? -errno : 0;
	case VD_IO_DISCARD:
	case VD_IO_WRITE_ZEROES:
		if (f->info.is_blockdev) {
			return vd_fd_blkdev_range(f, op, off, len);
		}
		if (fallocate(f->fd, vd_fd_falloc_mode(op, 0), (off_t)off, (off_t)len) == 0) {
			return 0;
		}
		if (op == VD_IO_WRITE_ZEROES && errno == EOPNOTSUPP &&
		    fallocate(f->fd, vd_fd_falloc_mode(op, 1), (off_t)off, (off_t)len) == 0) {
			return 0;
		}
		return -errno;
	default:
		break;
	}
	/* the caller already bounced for O_DIRECT alignment */
	return plain_rw(f, op, buf, len, off);
}

static int64_t rw_once(struct vd_file *f, enum vd_io_op op, void *buf, uint64_t len, uint64_t off)
{
	struct sync_wait w = { 0 };
	struct vd_file_req req;
	struct vd_ioctx *ctx;
	struct iovec iov = { .iov_base = buf, .iov_len = len };
	int ret;

	ret = vd_ioctx_create(8, &ctx, NULL);
	if (ret < 0) {
		return rw_sync_fallback(f, op, buf, len, off);
	}
	memset(&req, 0, sizeof(req));
	req.op = op;
	req.offset_bytes = off;
	req.len_bytes = len;
	if (op == VD_IO_READ || op == VD_IO_WRITE) {
		req.iov = &iov;
		req.iovcnt = 1;
	}
	req.cb = sync_cb;
	req.cb_arg = &w;
	vd_file_submit(f, ctx, &req);
	while (!w.done) {
		ret = vd_ioctx_wait(ctx, 0);
		if (ret < 0) {
			/* cannot happen with a request in flight, unless the ring broke */
			vd_log(VD_LOG_ERR, "io: waiting for a synchronous request: %s",
			       strerror(-ret));
		}
	}
	vd_ioctx_destroy(ctx);
	return w.result;
}

int64_t vd_file_rw_sync(struct vd_file *f, enum vd_io_op op, void *buf, uint64_t len_bytes,
			uint64_t offset_bytes)
{
	uint64_t align, start, end;
	int64_t ret;
	void *bounce;

	if ((op == VD_IO_READ || op == VD_IO_WRITE) && len_bytes == 0) {
		return 0;
	}
	align = f->info.direct ? f->info.logical_block_bytes : 1;
	if (op == VD_IO_FLUSH || op == VD_IO_DISCARD || op == VD_IO_WRITE_ZEROES ||
	    !f->info.direct ||
	    (VD_IS_ALIGNED((uint64_t)(uintptr_t)buf, 512) && VD_IS_ALIGNED(len_bytes, align) &&
	     VD_IS_ALIGNED(offset_bytes, align))) {
		return rw_once(f, op, buf, len_bytes, offset_bytes);
	}
	if (op != VD_IO_READ && op != VD_IO_WRITE) {
		return -EINVAL;
	}
	if (offset_bytes > (uint64_t)INT64_MAX || len_bytes > (uint64_t)INT64_MAX - offset_bytes ||
	    len_bytes > (1ull << 30)) {
		return -EINVAL;
	}
	/* O_DIRECT with an unaligned buffer, length or offset: bounce */
	start = offset_bytes & ~(align - 1);
	end = VD_ALIGN_UP(offset_bytes + len_bytes, align);
	if (posix_memalign(&bounce, VD_MAX(align, 4096u), end - start) != 0) {
		return -ENOMEM;
	}
	if (op == VD_IO_WRITE && f->info.readonly) {
		ret = -EROFS;
		goto out;
	}
	ret = rw_once(f, VD_IO_READ, bounce, end - start, start);
	if (ret < 0) {
		goto out;
	}
	if (op == VD_IO_READ) {
		memcpy(buf, (char *)bounce + (offset_bytes - start), len_bytes);
	} else {
		memcpy((char *)bounce + (offset_bytes - start), buf, len_bytes);
		ret = rw_once(f, VD_IO_WRITE, bounce, end - start, start);
		if (ret < 0) {
			goto out;
		}
	}
	ret = (int64_t)len_bytes;
out:
	free(bounce);
	return ret;
}
