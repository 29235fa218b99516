/*
 * sync: the reference backend. Blocking pread/pwrite/fdatasync/fallocate
 * on the submitting thread, completion deferred through the ioctx. Slow and
 * simple on purpose: the model tests compare the other backends with it.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#include "common/compiler.h"
#include "io/io-int.h"

static int sync_open(struct vd_file *f, const char *path, const struct vd_file_opts *o,
		     struct vd_err *err)
{
	return vd_fd_open(f, path, o, err);
}

static void sync_close(struct vd_file *f)
{
	vd_fd_close(f);
}

static int64_t do_rw(struct vd_file *f, struct vd_file_req *req)
{
	uint64_t pos = req->offset_bytes;
	int i;

	for (i = 0; i < req->iovcnt; i++) {
		char *base = req->iov[i].iov_base;
		uint64_t len = req->iov[i].iov_len, done = 0;

		while (done < len) {
			ssize_t n;

			if (req->op == VD_IO_READ) {
				n = pread(f->fd, base + done, len - done, (off_t)(pos + done));
			} else {
				n = pwrite(f->fd, base + done, len - done, (off_t)(pos + done));
			}
			if (n < 0) {
				if (errno == EINTR) {
					continue;
				}
				return -errno;
			}
			if (n == 0) {
				if (req->op == VD_IO_WRITE) {
					return -EIO;
				}
				/* end of file: the rest reads as zeroes */
				vd_req_zero_from(req, pos - req->offset_bytes + done);
				return (int64_t)req->len_bytes;
			}
			done += (uint64_t)n;
		}
		pos += len;
	}
	return (int64_t)req->len_bytes;
}

static int64_t do_falloc(struct vd_file *f, struct vd_file_req *req)
{
	if (f->info.is_blockdev) {
		return vd_fd_blkdev_range(f, req->op, req->offset_bytes, req->len_bytes);
	}
	if (fallocate(f->fd, vd_fd_falloc_mode(req->op, 0), (off_t)req->offset_bytes,
		      (off_t)req->len_bytes) == 0) {
		return 0;
	}
	if (req->op == VD_IO_WRITE_ZEROES && (errno == EOPNOTSUPP || errno == EINVAL) &&
	    fallocate(f->fd, vd_fd_falloc_mode(req->op, 1), (off_t)req->offset_bytes,
		      (off_t)req->len_bytes) == 0) {
		return 0;
	}
	return -errno;
}

static void sync_submit(struct vd_file *f, struct vd_ioctx *ctx, struct vd_file_req *req)
{
	int64_t ret;

	switch (req->op) {
	case VD_IO_READ:
	case VD_IO_WRITE:
		ret = do_rw(f, req);
		break;
	case VD_IO_FLUSH:
		ret = fdatasync(f->fd) < 0 ? -errno : 0;
		break;
	default:
		ret = do_falloc(f, req);
		break;
	}
	vd_ioctx_complete(ctx, req, ret);
}

static int sync_resize(struct vd_file *f, uint64_t size_bytes)
{
	return vd_fd_resize(f, size_bytes);
}

const struct vd_io_backend vd_sync_backend = {
	.name = "sync",
	.open = sync_open,
	.close = sync_close,
	.submit = sync_submit,
	.resize = sync_resize,
	.lock = vd_fd_lock,
	.prealloc = vd_fd_prealloc,
};
