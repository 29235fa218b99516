/*
 * uring: files and block devices through io_uring (READV/WRITEV, FSYNC,
 * FALLOCATE); BLKDISCARD/BLKZEROOUT synchronously for block devices.
 * Short transfers resume from req->done_bytes; a read that meets the end of
 * the file reads the rest as zeroes.
 */
#include <errno.h>
#include <sys/stat.h>

#include "common/compiler.h"
#include "io/io-int.h"

#define MAX_RETRIES 16

struct uring_file {
	uint64_t id; /* for the fixed-file tables of the ioctxs (vd_ioctx_fixed_file) */
};

static struct uring_file *uf(struct vd_file *f)
{
	return (struct uring_file *)f->state;
}

static int uring_open(struct vd_file *f, const char *path, const struct vd_file_opts *o,
		      struct vd_err *err)
{
	uf(f)->id = vd_io_new_file_id();
	return vd_fd_open(f, path, o, err);
}

static void uring_close(struct vd_file *f)
{
	vd_fd_close(f);
}

static void uring_submit(struct vd_file *f, struct vd_ioctx *ctx, struct vd_file_req *req)
{
	struct io_uring_sqe *sqe;
	struct iovec *iov = NULL;
	int iovcnt = 0;
	int buf_idx, file_idx;
	int ret;

	if (req->op == VD_IO_READ || req->op == VD_IO_WRITE) {
		ret = vd_req_rest(req, &iov, &iovcnt);
		if (ret < 0) {
			vd_ioctx_complete(ctx, req, ret);
			return;
		}
	} else if ((req->op == VD_IO_DISCARD || req->op == VD_IO_WRITE_ZEROES) &&
		   f->info.is_blockdev) {
		/* no io_uring op for these ioctls: do them here, complete later */
		ret = vd_fd_blkdev_range(f, req->op, req->offset_bytes, req->len_bytes);
		vd_ioctx_complete(ctx, req, ret);
		return;
	}
	sqe = vd_ioctx_get_sqe(ctx);
	if (!sqe) {
		vd_ioctx_backlog(ctx, req);
		return;
	}
	/* One buffer inside the registered region: the FIXED variants. */
	buf_idx = iovcnt == 1 ? vd_ioctx_fixed_buf(ctx, iov[0].iov_base, iov[0].iov_len) : -1;
	switch (req->op) {
	case VD_IO_READ:
		if (buf_idx >= 0) {
			io_uring_prep_read_fixed(sqe, f->fd, iov[0].iov_base,
						 (unsigned int)iov[0].iov_len,
						 req->offset_bytes + req->done_bytes, buf_idx);
		} else {
			io_uring_prep_readv(sqe, f->fd, iov, (unsigned int)iovcnt,
					    req->offset_bytes + req->done_bytes);
		}
		break;
	case VD_IO_WRITE:
		if (buf_idx >= 0) {
			io_uring_prep_write_fixed(sqe, f->fd, iov[0].iov_base,
						  (unsigned int)iov[0].iov_len,
						  req->offset_bytes + req->done_bytes, buf_idx);
		} else {
			io_uring_prep_writev(sqe, f->fd, iov, (unsigned int)iovcnt,
					     req->offset_bytes + req->done_bytes);
		}
		break;
	case VD_IO_FLUSH:
		io_uring_prep_fsync(sqe, f->fd, IORING_FSYNC_DATASYNC);
		break;
	default:
		io_uring_prep_fallocate(sqe, f->fd,
					vd_fd_falloc_mode(req->op, req->attempt ? 1 : 0),
					(off_t)req->offset_bytes, (off_t)req->len_bytes);
		break;
	}
	file_idx = vd_ioctx_fixed_file(ctx, uf(f)->id, f->fd);
	if (file_idx >= 0) {
		sqe->fd = file_idx;
		sqe->flags |= IOSQE_FIXED_FILE;
	}
	vd_ioctx_sqe_set_req(sqe, req);
}

/* True if a READ that came up short has reached the end of the file. */
static bool at_eof(struct vd_file *f, struct vd_file_req *req)
{
	uint64_t pos = req->offset_bytes + req->done_bytes;
	struct stat st;

	if (f->info.is_blockdev) {
		return pos >= f->info.size_bytes;
	}
	if (fstat(f->fd, &st) < 0) {
		return false;
	}
	return pos >= (uint64_t)st.st_size;
}

static void retry(struct vd_file *f, struct vd_ioctx *ctx, struct vd_file_req *req, int64_t err)
{
	if (++req->attempt > MAX_RETRIES) {
		vd_ioctx_complete(ctx, req, err);
		return;
	}
	uring_submit(f, ctx, req);
}

static void uring_cqe(struct vd_file *f, struct vd_ioctx *ctx, struct vd_file_req *req, int32_t res)
{
	switch (req->op) {
	case VD_IO_READ:
	case VD_IO_WRITE:
		if (res == -EAGAIN || res == -EINTR) {
			retry(f, ctx, req, res);
			return;
		}
		if (res < 0) {
			vd_ioctx_complete(ctx, req, res);
			return;
		}
		req->done_bytes += (uint64_t)res;
		if (req->done_bytes >= req->len_bytes) {
			vd_ioctx_complete(ctx, req, (int64_t)req->len_bytes);
			return;
		}
		if (req->op == VD_IO_READ && (res == 0 || at_eof(f, req))) {
			vd_req_zero_from(req, req->done_bytes);
			vd_ioctx_complete(ctx, req, (int64_t)req->len_bytes);
			return;
		}
		if (res == 0) {
			vd_ioctx_complete(ctx, req, -EIO);
			return;
		}
		/* short transfer: resubmit the remainder */
		uring_submit(f, ctx, req);
		return;
	case VD_IO_WRITE_ZEROES:
		if ((res == -EOPNOTSUPP || res == -EINVAL) && req->attempt == 0) {
			/* no FALLOC_FL_ZERO_RANGE here (tmpfs): punch a hole instead */
			req->attempt = 1;
			uring_submit(f, ctx, req);
			return;
		}
		vd_ioctx_complete(ctx, req, res);
		return;
	default:
		vd_ioctx_complete(ctx, req, res);
		return;
	}
}

static int uring_resize(struct vd_file *f, uint64_t size_bytes)
{
	return vd_fd_resize(f, size_bytes);
}

const struct vd_io_backend vd_uring_backend = {
	.name = "uring",
	.file_state_size = sizeof(struct uring_file),
	.open = uring_open,
	.close = uring_close,
	.submit = uring_submit,
	.resize = uring_resize,
	.lock = vd_fd_lock,
	.prealloc = vd_fd_prealloc,
	.cqe = uring_cqe,
};
