/*
 * null: no storage. Reads return zeroes, writes are dropped; the size comes
 * from opts.size_bytes. For benchmarking the layers above the disk.
 */
#include <errno.h>

#include "common/compiler.h"
#include "io/io-int.h"

static int null_open(struct vd_file *f, const char *path, const struct vd_file_opts *o,
		     struct vd_err *err)
{
	if (o->size_bytes == 0 || o->size_bytes > (uint64_t)INT64_MAX) {
		return vd_err_set(err, EINVAL, "the null backend needs a size");
	}
	f->info.size_bytes = o->size_bytes;
	f->info.logical_block_bytes = 512;
	f->info.physical_block_bytes = 4096;
	f->info.discard_granularity_bytes = 4096;
	f->info.discard = true;
	return 0;
}

static void null_close(struct vd_file *f)
{
}

static void null_submit(struct vd_file *f, struct vd_ioctx *ctx, struct vd_file_req *req)
{
	int64_t ret = 0;

	if (req->op != VD_IO_FLUSH && req->op != VD_IO_READ &&
	    req->offset_bytes + req->len_bytes > f->info.size_bytes) {
		ret = -ENOSPC;
	} else if (req->op == VD_IO_READ) {
		vd_req_zero_from(req, 0);
		ret = (int64_t)req->len_bytes;
	} else if (req->op == VD_IO_WRITE) {
		ret = (int64_t)req->len_bytes;
	}
	vd_ioctx_complete(ctx, req, ret);
}

const struct vd_io_backend vd_null_backend = {
	.name = "null",
	.open = null_open,
	.close = null_close,
	.submit = null_submit,
};
