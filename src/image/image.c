/*
 * image: the driver registry, format probing, and the checks every request
 * passes before a driver sees it.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/compiler.h"
#include "common/iov.h"
#include "common/log.h"
#include "image/image-driver.h"
#include "io/lock.h"

#define PROBE_BYTES      4096
#define PROBE_TAIL_BYTES 1024

static const struct vd_image_driver *const drivers[] = {
	&vd_raw_driver,
#ifdef VD_HAVE_VHD
	&vd_vhd_driver,
#endif
#ifdef VD_HAVE_QCOW2
	&vd_qcow2_driver,
#endif
};

static const struct vd_image_driver *find_driver(const char *name)
{
	size_t i;

	for (i = 0; i < VD_ARRAY_SIZE(drivers); i++) {
		if (strcmp(drivers[i]->name, name) == 0) {
			return drivers[i];
		}
	}
	return NULL;
}

int vd_image_open_file_opts(struct vd_image *img, const char *path, const struct vd_file_opts *o,
			    struct vd_file **out, struct vd_err *err)
{
	unsigned int perm = VD_LOCK_WRITER_PERM, shared = VD_LOCK_WRITER_SHARED;
	int ret;

	ret = vd_file_open(img->opts.io_backend, path, o, out, err);
	if (ret < 0) {
		return ret;
	}
	if (o->readonly && img->force_share) {
		perm = VD_LOCK_SHARE_PERM;
		shared = VD_LOCK_SHARE_SHARED;
	} else if (o->readonly) {
		perm = VD_LOCK_READER_PERM;
		shared = VD_LOCK_READER_SHARED;
	}
	ret = vd_file_lock(*out, perm, shared, err);
	if (ret < 0) {
		vd_file_close(*out);
		*out = NULL;
	}
	return ret;
}

int vd_image_open_file(struct vd_image *img, const char *path, struct vd_file **out,
		       struct vd_err *err)
{
	struct vd_file_opts fo = {
		.readonly = img->readonly,
		.cache = img->opts.cache,
		.size_bytes = img->opts.size_bytes,
	};

	return vd_image_open_file_opts(img, path, &fo, out, err);
}

/* The driver whose probe_tail scores the end of f best (*score > 0), or NULL. */
static const struct vd_image_driver *probe_tail(struct vd_file *f, int *score)
{
	uint64_t size = f->info.size_bytes;
	size_t len = (size_t)VD_MIN(size, (uint64_t)PROBE_TAIL_BYTES);
	const struct vd_image_driver *best = NULL;
	void *buf;
	size_t i;

	*score = 0;
	if (len < 512 || posix_memalign(&buf, VD_PAGE_SIZE, PROBE_TAIL_BYTES) != 0) {
		return NULL;
	}
	if (vd_file_rw_sync(f, VD_IO_READ, buf, len, size - len) == (int64_t)len) {
		for (i = 0; i < VD_ARRAY_SIZE(drivers); i++) {
			int s = drivers[i]->probe_tail ? drivers[i]->probe_tail(buf, len) : 0;

			if (s > *score) {
				*score = s;
				best = drivers[i];
			}
		}
	}
	free(buf);
	return best;
}

static int probe(const char *path, const struct vd_image_opts *o,
		 const struct vd_image_driver **out, struct vd_err *err)
{
	struct vd_file_opts fo = {
		.readonly = true,
		.cache = VD_CACHE_WRITEBACK,
		.size_bytes = o->size_bytes,
	};
	const struct vd_image_driver *best = NULL, *tail;
	int best_score = 0, tail_score;
	struct vd_file *f;
	int64_t got;
	void *buf;
	size_t i;
	int ret;

	ret = vd_file_open(o->io_backend, path, &fo, &f, err);
	if (ret < 0) {
		return ret;
	}
	if (posix_memalign(&buf, VD_PAGE_SIZE, PROBE_BYTES) != 0) {
		vd_file_close(f);
		return vd_err_set(err, ENOMEM, "out of memory");
	}
	/* past the end of a small file reads as zeroes */
	got = vd_file_rw_sync(f, VD_IO_READ, buf, PROBE_BYTES, 0);
	tail = got >= 0 ? probe_tail(f, &tail_score) : NULL;
	vd_file_close(f);
	if (got < 0) {
		free(buf);
		return vd_err_set(err, (int)-got, "%s: cannot read the header", path);
	}
	for (i = 0; i < VD_ARRAY_SIZE(drivers); i++) {
		int score = drivers[i]->probe ? drivers[i]->probe(buf, PROBE_BYTES) : 0;

		if (score > best_score) {
			best_score = score;
			best = drivers[i];
		}
	}
	if (tail && tail_score > best_score) {
		best = tail;
	}
	free(buf);
	if (!best) {
		return vd_err_set(err, EINVAL, "%s: unknown image format", path);
	}
	*out = best;
	return 0;
}

int vd_image_open(const char *path, const struct vd_image_opts *o, struct vd_image **out,
		  struct vd_err *err)
{
	static const struct vd_image_opts defaults = { .cache = VD_CACHE_DIRECT };
	const struct vd_image_driver *drv = NULL;
	const struct vd_io_backend *be;
	struct vd_image_opts opts;
	struct vd_image *img;
	int ret;

	*out = NULL;
	opts = o ? *o : defaults;
	if (!opts.io_backend) {
		opts.io_backend = "uring";
	}
	be = vd_io_backend_find(opts.io_backend);
	if (!be) {
		return vd_err_set(err, EINVAL, "unknown io backend '%s'", opts.io_backend);
	}
	opts.io_backend = be->name; /* static storage: the caller's string may go */
	if (!path) {
		path = be->name;
	}
	if (!opts.format || strcmp(opts.format, "auto") == 0) {
		ret = probe(path, &opts, &drv, err);
		if (ret < 0 || !drv) {
			return ret < 0 ? ret : -EINVAL;
		}
	} else {
		drv = find_driver(opts.format);
		if (!drv) {
			return vd_err_set(err, EINVAL, "unknown image format '%s'", opts.format);
		}
	}
	if (opts.force_share && !opts.readonly) {
		return vd_err_set(err, EINVAL, "%s: force share (-U) needs a read-only open", path);
	}
	img = calloc(1, sizeof(*img) + drv->image_state_size);
	if (!img) {
		return vd_err_set(err, ENOMEM, "out of memory");
	}
	img->format_probed = !opts.format || strcmp(opts.format, "auto") == 0;
	opts.format = drv->name;
	img->driver = drv;
	img->opts = opts;
	img->readonly = opts.readonly;
	img->force_share = opts.force_share;
	/* the drivers open backing files with (a copy of) img->opts */
	img->opts.force_share = opts.force_share || opts.backing_force_share;
	img->path = strdup(path);
	if (!img->path) {
		ret = vd_err_set(err, ENOMEM, "out of memory");
		goto err_free;
	}
	if (!img->opts.backing.root_dir) {
		/* the top of a chain: its directory is the root for every layer */
		img->backing_root = vd_image_backing_root(path);
		img->opts.backing.root_dir = img->backing_root;
	}
	ret = drv->open(img, &img->opts, err);
	/* the allow-list was borrowed for the open only */
	img->opts.backing.dirs = NULL;
	img->opts.backing.n_dirs = 0;
	if (ret < 0) {
		goto err_free_path;
	}
	ret = vd_image_get_info(img, &img->info);
	if (ret < 0) {
		vd_err_set(err, -ret, "%s: cannot read image information", path);
		goto err_close;
	}
	if (img->info.sector_bytes < 512 || img->info.sector_bytes > 65536 ||
	    (img->info.sector_bytes & (img->info.sector_bytes - 1))) {
		ret = vd_err_set(err, EINVAL, "%s: unusable sector size %u", path,
				 img->info.sector_bytes);
		goto err_close;
	}
	*out = img;
	return 0;

err_close:
	drv->close(img);
err_free_path:
	free(img->backing_root);
	free(img->path);
err_free:
	free(img);
	return ret;
}

void vd_image_close(struct vd_image *img)
{
	if (!img) {
		return;
	}
	img->driver->close(img);
	free(img->backing_root);
	free(img->path);
	free(img);
}

int vd_image_get_info(struct vd_image *img, struct vd_image_info *info)
{
	int ret;

	memset(info, 0, sizeof(*info));
	ret = img->driver->get_info(img, info);
	if (ret < 0) {
		return ret;
	}
	info->format = img->driver->name;
	info->readonly = info->readonly || img->readonly;
	return 0;
}

/*
 * Creating over an existing file destroys it: first take a writer's locks
 * on it (as qemu-img create does), so that an image in use by anyone (vdisk
 * or qemu) is refused, and hold them while the driver rewrites the file.
 */
static int create_over(const char *path, const struct vd_image_driver *drv,
		       const struct vd_image_create_opts *o, struct vd_err *err)
{
	struct vd_file_opts fo = { .readonly = false, .cache = VD_CACHE_WRITEBACK };
	struct vd_file *f = NULL;
	int ret;

	ret = vd_file_open("sync", path, &fo, &f, NULL);
	if (ret == 0) {
		ret = vd_file_lock(f, VD_LOCK_WRITER_PERM, VD_LOCK_WRITER_SHARED, err);
		if (ret < 0) {
			vd_file_close(f);
			return ret;
		}
	}
	/* not there, or not openable: the driver's create says why */
	ret = drv->create(path, o, err);
	vd_file_close(f);
	return ret;
}

int vd_image_create_opts(const char *path, const char *format, const struct vd_image_create_opts *o,
			 struct vd_err *err)
{
	const struct vd_image_driver *drv;

	if (!format) {
		format = "raw";
	}
	drv = find_driver(format);
	if (!drv) {
		return vd_err_set(err, EINVAL, "unknown image format '%s'", format);
	}
	if (!drv->create) {
		return vd_err_set(err, EOPNOTSUPP, "cannot create %s images", format);
	}
	if (!path || !*path) {
		return vd_err_set(err, EINVAL, "no path given");
	}
	if ((o->size_bytes == 0 && !o->backing_file) ||
	    !VD_IS_ALIGNED(o->size_bytes, (uint64_t)VD_SECTOR_SIZE) ||
	    o->size_bytes > (uint64_t)INT64_MAX) {
		return vd_err_set(err, EINVAL, "size %llu is not a positive multiple of 512",
				  (unsigned long long)o->size_bytes);
	}
	if (o->flags & ~VD_IMAGE_CREATE_OVERWRITE) {
		return vd_err_set(err, EINVAL, "unknown create flags 0x%x", o->flags);
	}
	if (o->flags & VD_IMAGE_CREATE_OVERWRITE) {
		return create_over(path, drv, o, err);
	}
	return drv->create(path, o, err);
}

int vd_image_create_ex(const char *path, const char *format, uint64_t size_bytes,
		       unsigned int flags, struct vd_err *err)
{
	struct vd_image_create_opts o = { .size_bytes = size_bytes, .flags = flags };

	return vd_image_create_opts(path, format, &o, err);
}

int vd_image_create(const char *path, const char *format, uint64_t size_bytes, struct vd_err *err)
{
	return vd_image_create_ex(path, format, size_bytes, 0, err);
}

int vd_image_queue_create(struct vd_image *img, struct vd_ioctx *ioctx, struct vd_image_queue **out)
{
	struct vd_image_queue *iq;
	int ret;

	*out = NULL;
	iq = calloc(1, sizeof(*iq));
	if (!iq) {
		return -ENOMEM;
	}
	iq->img = img;
	iq->ioctx = ioctx;
	if (img->driver->queue_init) {
		ret = img->driver->queue_init(img, iq);
		if (ret < 0) {
			free(iq);
			return ret;
		}
	}
	*out = iq;
	return 0;
}

void vd_image_queue_destroy(struct vd_image_queue *iq)
{
	if (!iq) {
		return;
	}
	if (iq->img->driver->queue_fini) {
		iq->img->driver->queue_fini(iq->img, iq);
	}
	free(iq);
}

size_t vd_image_io_ctx_size(const struct vd_image *img)
{
	return img->driver->io_ctx_size;
}

void vd_image_io_done(struct vd_io *io, int64_t result)
{
	io->cb(io, result);
}

static void fail_cb(struct vd_file_req *req, int64_t result)
{
	vd_image_io_done(req->cb_arg, result);
}

void vd_image_io_fail(struct vd_image_queue *iq, struct vd_io *io, int64_t result)
{
	memset(&io->freq, 0, sizeof(io->freq));
	io->freq.op = io->op;
	io->freq.cb = fail_cb;
	io->freq.cb_arg = io;
	vd_ioctx_complete(iq->ioctx, &io->freq, result);
}

static int check_io(const struct vd_image *img, const struct vd_io *io)
{
	uint64_t sector = img->info.sector_bytes;

	switch (io->op) {
	case VD_IO_READ:
	case VD_IO_WRITE:
		if (!vd_iov_covers(io->iov, io->iovcnt, io->len_bytes)) {
			return -EINVAL;
		}
		break;
	case VD_IO_FLUSH:
		return 0;
	case VD_IO_DISCARD:
	case VD_IO_WRITE_ZEROES:
		break;
	default:
		return -EINVAL;
	}
	if (io->len_bytes == 0 || !VD_IS_ALIGNED(io->offset_bytes, sector) ||
	    !VD_IS_ALIGNED(io->len_bytes, sector) ||
	    io->len_bytes > UINT64_MAX - io->offset_bytes) {
		return -EINVAL;
	}
	if (io->offset_bytes + io->len_bytes > img->info.size_bytes) {
		return -ENOSPC;
	}
	if (io->op == VD_IO_READ) {
		return 0;
	}
	if (img->readonly) {
		return -EROFS;
	}
	if (img->corrupt) {
		return -EIO;
	}
	if (io->op == VD_IO_DISCARD && !img->info.discard) {
		return -EOPNOTSUPP;
	}
	return 0;
}

void vd_image_submit(struct vd_image_queue *iq, struct vd_io *io)
{
	struct vd_image *img = iq->img;
	int ret;

	io->iq = iq;
	ret = check_io(img, io);
	if (ret < 0) {
		vd_image_io_fail(iq, io, ret);
		return;
	}
	img->driver->submit(img, iq, io);
}

/* ---- control-plane services ---- */

struct vd_image *vd_image_backing(struct vd_image *img)
{
	return img->backing;
}

const char *vd_image_path(const struct vd_image *img)
{
	return img->path;
}

int vd_image_chain_find_file(struct vd_image *img, const char *path, struct vd_image **hit)
{
	struct stat ps, is;

	*hit = NULL;
	if (stat(path, &ps) < 0) {
		return errno == ENOENT ? 0 : -errno;
	}
	for (; img; img = img->backing) {
		/* null/mem images have no file: stat fails, no match */
		if (stat(img->path, &is) == 0 && is.st_dev == ps.st_dev && is.st_ino == ps.st_ino) {
			*hit = img;
			return 1;
		}
	}
	return 0;
}

int vd_image_block_status(struct vd_image *img, uint64_t offset_bytes, uint64_t max_bytes,
			  struct vd_block_status *out)
{
	unsigned int depth = 0;

	if (offset_bytes >= img->info.size_bytes) {
		return -EINVAL;
	}
	max_bytes = VD_MIN(max_bytes, img->info.size_bytes - offset_bytes);
	for (;;) {
		int ret;

		memset(out, 0, sizeof(*out));
		out->host_offset_bytes = UINT64_MAX;
		if (!img->driver->block_status) {
			out->len_bytes = max_bytes;
			out->flags = VD_BLOCK_DATA | VD_BLOCK_ALLOCATED;
			out->depth = depth;
			return 0;
		}
		ret = img->driver->block_status(img, offset_bytes, max_bytes, out);
		if (ret < 0) {
			return ret;
		}
		if (out->len_bytes == 0 || out->len_bytes > max_bytes) {
			return -EIO; /* a driver bug; never loop on it */
		}
		out->depth = depth;
		if ((out->flags & VD_BLOCK_ALLOCATED) || !img->backing) {
			if (!(out->flags & VD_BLOCK_ALLOCATED)) {
				out->flags = VD_BLOCK_ZERO; /* nothing below: reads as zeroes */
			}
			return 0;
		}
		/* Falls through: ask the backing, within this run. */
		max_bytes = out->len_bytes;
		img = img->backing;
		depth++;
		if (offset_bytes >= img->info.size_bytes) {
			/* a shorter backing file reads as zeroes past its end */
			out->flags = VD_BLOCK_ZERO;
			return 0;
		}
		max_bytes = VD_MIN(max_bytes, img->info.size_bytes - offset_bytes);
	}
}

int vd_image_check(struct vd_image *img, bool repair, struct vd_check_result *res,
		   struct vd_err *err)
{
	memset(res, 0, sizeof(*res));
	if (!img->driver->check) {
		return vd_err_set(err, EOPNOTSUPP, "%s images have no metadata to check",
				  img->driver->name);
	}
	if (repair && img->readonly) {
		return vd_err_set(err, EROFS, "%s: opened read-only, cannot repair", img->path);
	}
	return img->driver->check(img, repair, res, err);
}

/*
 * Resizing a file guessed to be raw that ends like another format (a fixed
 * VHD with a damaged footer) would cut that trailer or leave it inside the
 * disk: refuse, and say how to choose.
 */
static int check_guessed_raw(struct vd_image *img, struct vd_err *err)
{
	struct vd_file_opts fo = { .readonly = true, .cache = VD_CACHE_WRITEBACK };
	const struct vd_image_driver *tail;
	struct vd_file *f;
	int score;

	if (!img->format_probed || img->driver != &vd_raw_driver) {
		return 0;
	}
	fo.size_bytes = img->opts.size_bytes;
	if (vd_file_open(img->opts.io_backend, img->path, &fo, &f, NULL) < 0) {
		return 0; /* not a file we can read again: nothing to protect */
	}
	tail = probe_tail(f, &score);
	vd_file_close(f);
	if (!tail) {
		return 0;
	}
	return vd_err_set(err, EINVAL,
			  "%s: the format was guessed as raw, but the file ends like a %s "
			  "image; pass -f %s (or -f raw to resize it as raw data)",
			  img->path, tail->name, tail->name);
}

int vd_image_resize(struct vd_image *img, uint64_t size_bytes, struct vd_err *err)
{
	int ret;

	if (!img->driver->resize) {
		return vd_err_set(err, EOPNOTSUPP, "%s images cannot be resized",
				  img->driver->name);
	}
	if (img->readonly) {
		return vd_err_set(err, EROFS, "%s: opened read-only", img->path);
	}
	if (size_bytes == 0 || !VD_IS_ALIGNED(size_bytes, (uint64_t)VD_SECTOR_SIZE) ||
	    size_bytes > (uint64_t)INT64_MAX) {
		return vd_err_set(err, EINVAL, "size %llu is not a positive multiple of 512",
				  (unsigned long long)size_bytes);
	}
	ret = check_guessed_raw(img, err);
	if (ret < 0) {
		return ret;
	}
	ret = img->driver->resize(img, size_bytes, err);
	if (ret < 0) {
		return ret;
	}
	return vd_image_get_info(img, &img->info);
}

struct vd_image_sync {
	struct vd_ioctx *ctx;
	struct vd_image_queue *iq;
	void *driver_ctx;
};

int vd_image_sync_open(struct vd_image *img, struct vd_image_sync **out, struct vd_err *err)
{
	struct vd_image_sync *s = calloc(1, sizeof(*s));
	int ret;

	*out = NULL;
	if (!s) {
		return vd_err_set(err, ENOMEM, "out of memory");
	}
	ret = vd_ioctx_create(64, &s->ctx, err);
	if (ret < 0) {
		free(s);
		return ret;
	}
	ret = vd_image_queue_create(img, s->ctx, &s->iq);
	if (ret < 0) {
		vd_ioctx_destroy(s->ctx);
		free(s);
		return vd_err_set(err, -ret, "%s: image queue", img->path);
	}
	if (img->driver->io_ctx_size) {
		s->driver_ctx = calloc(1, img->driver->io_ctx_size);
		if (!s->driver_ctx) {
			vd_image_sync_close(s);
			return vd_err_set(err, ENOMEM, "out of memory");
		}
	}
	*out = s;
	return 0;
}

void vd_image_sync_close(struct vd_image_sync *s)
{
	if (!s) {
		return;
	}
	vd_image_queue_destroy(s->iq);
	vd_ioctx_destroy(s->ctx);
	free(s->driver_ctx);
	free(s);
}

struct sync_wait {
	bool done;
	int64_t result;
};

static void sync_cb(struct vd_io *io, int64_t result)
{
	struct sync_wait *w = io->cb_arg;

	w->done = true;
	w->result = result;
}

int64_t vd_image_sync_io(struct vd_image_sync *s, enum vd_io_op op, void *buf, uint64_t len_bytes,
			 uint64_t offset_bytes)
{
	struct sync_wait w = { 0 };
	struct iovec iov = { .iov_base = buf, .iov_len = len_bytes };
	struct vd_io io = {
		.op = op,
		.offset_bytes = offset_bytes,
		.len_bytes = len_bytes,
		.iov = (op == VD_IO_READ || op == VD_IO_WRITE) ? &iov : NULL,
		.iovcnt = (op == VD_IO_READ || op == VD_IO_WRITE) ? 1 : 0,
		.cb = sync_cb,
		.cb_arg = &w,
		.driver_ctx = s->driver_ctx,
	};

	vd_image_submit(s->iq, &io);
	while (!w.done) {
		int ret = vd_ioctx_wait(s->ctx, 0);

		if (ret < 0) {
			return ret;
		}
	}
	return w.result;
}
