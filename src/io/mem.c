/*
 * mem: a RAM disk in anonymous memory (populated lazily by the kernel on
 * first touch). Requests on disjoint ranges from several threads need no
 * lock: each only touches its own bytes (DISCARD drops only whole pages
 * inside its range and zeroes the partial ones).
 */
#include <errno.h>
#include <string.h>
#include <sys/mman.h>

#include "common/compiler.h"
#include "io/io-int.h"

struct mem_state {
	unsigned char *base;
	size_t map_bytes;
};

static int mem_open(struct vd_file *f, const char *path, const struct vd_file_opts *o,
		    struct vd_err *err)
{
	struct mem_state *s = (struct mem_state *)f->state;
	void *p;

	if (o->size_bytes == 0 || o->size_bytes > (uint64_t)SIZE_MAX - VD_PAGE_SIZE ||
	    o->size_bytes > (uint64_t)INT64_MAX) {
		return vd_err_set(err, EINVAL, "the mem backend needs a size");
	}
	s->map_bytes = VD_ALIGN_UP((size_t)o->size_bytes, (size_t)VD_PAGE_SIZE);
	p = mmap(NULL, s->map_bytes, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (p == MAP_FAILED) {
		return vd_err_set(err, errno, "cannot map %llu bytes for a mem disk",
				  (unsigned long long)o->size_bytes);
	}
	s->base = p;
	f->info.size_bytes = o->size_bytes;
	f->info.logical_block_bytes = 512;
	f->info.physical_block_bytes = 4096;
	f->info.discard_granularity_bytes = 4096;
	f->info.discard = true;
	return 0;
}

static void mem_close(struct vd_file *f)
{
	struct mem_state *s = (struct mem_state *)f->state;

	if (s->base) {
		munmap(s->base, s->map_bytes);
		s->base = NULL;
	}
}

static void copy(struct vd_file *f, struct vd_file_req *req)
{
	struct mem_state *s = (struct mem_state *)f->state;
	uint64_t pos = req->offset_bytes, size = f->info.size_bytes;
	int i;

	for (i = 0; i < req->iovcnt; i++) {
		char *buf = req->iov[i].iov_base;
		uint64_t len = req->iov[i].iov_len;
		uint64_t in = pos >= size ? 0 : VD_MIN(len, size - pos);

		if (req->op == VD_IO_READ) {
			if (in) {
				memcpy(buf, s->base + pos, in);
			}
			memset(buf + in, 0, len - in);
		} else {
			memcpy(s->base + pos, buf, len);
		}
		pos += len;
	}
}

static void zero_range(struct mem_state *s, uint64_t off, uint64_t len)
{
	uint64_t end = off + len;
	uint64_t pstart = VD_ALIGN_UP(off, (uint64_t)VD_PAGE_SIZE);
	uint64_t pend = end & ~(uint64_t)(VD_PAGE_SIZE - 1);

	if (pstart >= pend) {
		memset(s->base + off, 0, len);
		return;
	}
	memset(s->base + off, 0, pstart - off);
	if (madvise(s->base + pstart, pend - pstart, MADV_DONTNEED) < 0) {
		memset(s->base + pstart, 0, pend - pstart);
	}
	memset(s->base + pend, 0, end - pend);
}

static void mem_submit(struct vd_file *f, struct vd_ioctx *ctx, struct vd_file_req *req)
{
	struct mem_state *s = (struct mem_state *)f->state;
	int64_t ret = 0;

	if (req->op != VD_IO_FLUSH && req->op != VD_IO_READ &&
	    req->offset_bytes + req->len_bytes > f->info.size_bytes) {
		ret = -ENOSPC;
	} else if (req->op == VD_IO_READ || req->op == VD_IO_WRITE) {
		copy(f, req);
		ret = (int64_t)req->len_bytes;
	} else if (req->op == VD_IO_DISCARD || req->op == VD_IO_WRITE_ZEROES) {
		zero_range(s, req->offset_bytes, req->len_bytes);
	}
	vd_ioctx_complete(ctx, req, ret);
}

const struct vd_io_backend vd_mem_backend = {
	.name = "mem",
	.file_state_size = sizeof(struct mem_state),
	.open = mem_open,
	.close = mem_close,
	.submit = mem_submit,
};
