/*
 * raw: the image is the file (or device); one vd_io is one vd_file_req.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/compiler.h"
#include "image/image-driver.h"

struct raw_state {
	struct vd_file *file;
};

static struct raw_state *raw(struct vd_image *img)
{
	return (struct raw_state *)img->state;
}

static int raw_probe(const void *hdr, size_t len)
{
	return 1; /* anything is a raw image; every real format scores higher */
}

static int raw_open(struct vd_image *img, const struct vd_image_opts *o, struct vd_err *err)
{
	return vd_image_open_file(img, img->path, &raw(img)->file, err);
}

static void raw_close(struct vd_image *img)
{
	vd_file_close(raw(img)->file);
	raw(img)->file = NULL;
}

static void raw_done(struct vd_file_req *req, int64_t result)
{
	vd_image_io_done(req->cb_arg, result);
}

static void raw_submit(struct vd_image *img, struct vd_image_queue *iq, struct vd_io *io)
{
	struct vd_file_req *req = &io->freq;

	req->op = io->op;
	req->offset_bytes = io->offset_bytes;
	req->len_bytes = io->len_bytes;
	req->iov = io->iov;
	req->iovcnt = io->iovcnt;
	req->cb = raw_done;
	req->cb_arg = io;
	vd_file_submit(raw(img)->file, iq->ioctx, req);
}

static int raw_get_info(struct vd_image *img, struct vd_image_info *info)
{
	struct vd_file *f = raw(img)->file;
	struct stat st;

	/*
	 * A file whose size is not a multiple of 512 has its last sector padded
	 * with zeroes, as qemu does: reads past the end of the file return
	 * zeroes (io.h), so the tail is usable, by a guest or as a backing file.
	 */
	info->size_bytes = f->info.size_bytes;
	if (f->fd >= 0 && !f->info.is_blockdev) {
		info->size_bytes = VD_ALIGN_UP(info->size_bytes, (uint64_t)VD_SECTOR_SIZE);
	}
	info->sector_bytes = f->info.logical_block_bytes;
	info->physical_sector_bytes = f->info.physical_block_bytes;
	info->readonly = f->info.readonly;
	info->discard = f->info.discard;
	info->discard_granularity_bytes =
		f->info.discard_granularity_bytes ? f->info.discard_granularity_bytes : 4096;
	info->discard_alignment_bytes = 0;
	info->flush = strcmp(f->backend->name, "null") != 0;
	if (f->fd >= 0 && !f->info.is_blockdev && fstat(f->fd, &st) == 0) {
		info->allocated_bytes = (uint64_t)st.st_blocks * 512u;
	} else if (f->info.is_blockdev) {
		info->allocated_bytes = f->info.size_bytes;
	}
	return 0;
}

static int raw_create(const char *path, const struct vd_image_create_opts *o, struct vd_err *err)
{
	bool overwrite = o->flags & VD_IMAGE_CREATE_OVERWRITE;
	uint64_t size_bytes = o->size_bytes;
	struct stat st;
	int fd, ret;

	if (o->backing_file) {
		return vd_err_set(err, EINVAL, "raw images cannot have a backing file");
	}
	if (o->preallocation && strcmp(o->preallocation, "off") != 0) {
		return vd_err_set(err, EINVAL, "raw: preallocation '%s' is not supported",
				  o->preallocation);
	}
	fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC | (overwrite ? 0 : O_EXCL), 0600);
	if (fd < 0) {
		ret = errno;
		if (ret == EEXIST) {
			return vd_err_set(err, ret, "%s already exists", path);
		}
		return vd_err_set(err, ret, "cannot create %s", path);
	}
	if (fstat(fd, &st) < 0) {
		ret = vd_err_set(err, errno, "cannot stat %s", path);
		goto err_close;
	}
	if (!S_ISREG(st.st_mode)) {
		ret = vd_err_set(err, EINVAL, "%s is not a regular file", path);
		goto err_close;
	}
	/* truncate to 0 first so that an overwritten image reads as zeroes */
	if (ftruncate(fd, 0) < 0 || ftruncate(fd, (off_t)size_bytes) < 0) {
		ret = vd_err_set(err, errno, "cannot size %s", path);
		if (!overwrite) {
			unlink(path);
		}
		goto err_close;
	}
	if (close(fd) < 0) {
		return vd_err_set(err, errno, "closing %s", path);
	}
	return 0;

err_close:
	close(fd);
	return ret;
}

/* A raw file's holes read as zeroes: SEEK_DATA / SEEK_HOLE tell them apart. */
static int raw_block_status(struct vd_image *img, uint64_t offset_bytes, uint64_t max_bytes,
			    struct vd_block_status *out)
{
	struct vd_file *f = raw(img)->file;
	off_t data, hole;

	out->flags = VD_BLOCK_DATA | VD_BLOCK_ALLOCATED;
	out->len_bytes = max_bytes;
	out->host_offset_bytes = offset_bytes;
	if (f->fd < 0 || f->info.is_blockdev) {
		return 0;
	}
	data = lseek(f->fd, (off_t)offset_bytes, SEEK_DATA);
	if (data < 0 && errno == ENXIO) {
		data = (off_t)(offset_bytes + max_bytes); /* a hole up to the end */
	} else if (data < 0) {
		return 0; /* no SEEK_DATA here: call it all data */
	}
	if ((uint64_t)data > offset_bytes) {
		out->flags = VD_BLOCK_ZERO | VD_BLOCK_ALLOCATED;
		out->len_bytes = VD_MIN((uint64_t)data - offset_bytes, max_bytes);
		return 0;
	}
	hole = lseek(f->fd, (off_t)offset_bytes, SEEK_HOLE);
	if (hole > (off_t)offset_bytes) {
		out->len_bytes = VD_MIN((uint64_t)hole - offset_bytes, max_bytes);
	}
	return 0;
}

static int raw_resize(struct vd_image *img, uint64_t size_bytes, struct vd_err *err)
{
	struct vd_file *f = raw(img)->file;
	int ret = vd_file_resize(f, size_bytes);

	if (ret < 0) {
		return vd_err_set(err, -ret, "%s: cannot resize to %llu bytes", img->path,
				  (unsigned long long)size_bytes);
	}
	return 0;
}

const struct vd_image_driver vd_raw_driver = {
	.name = "raw",
	.image_state_size = sizeof(struct raw_state),
	.io_ctx_size = 0,
	.probe = raw_probe,
	.open = raw_open,
	.close = raw_close,
	.submit = raw_submit,
	.get_info = raw_get_info,
	.create = raw_create,
	.block_status = raw_block_status,
	.resize = raw_resize,
};
