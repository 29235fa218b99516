/*
 * Fuzz the qcow2 driver with hostile image files: the input is the whole
 * file (header, extensions, backing name, L1/L2 tables, refcount table and
 * blocks, snapshot table, compressed data). It is opened read-only: info,
 * block status over the disk, reads at the start, middle and end, check
 * without repair (small files); then read-write: a write, a discard, a
 * flush, read back (unless the image turned out corrupt, when writes must
 * fail with -EIO), and close (which writes the metadata back).
 *
 * Invariants: no crash, no sanitizer report, no unbounded allocation, and
 * open errors come with a message.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/compiler.h"
#include "common/log.h"
#include "image/image.h"
#include "fuzz.h"

#define IOBYTES (64u * 1024)

static char g_path[64];
static int g_fd = -1;
static uint8_t *g_buf;
static uint8_t *g_pat;

static void cleanup(void)
{
	if (g_fd >= 0) {
		close(g_fd);
		unlink(g_path);
	}
}

static void setup(void)
{
	const char *tmp = getenv("TMPDIR");

	snprintf(g_path, sizeof(g_path), "%s/fuzz-qcow2-XXXXXX", tmp && *tmp ? tmp : "/tmp");
	g_fd = mkstemp(g_path);
	if (g_fd < 0) {
		abort();
	}
	g_buf = aligned_alloc(4096, IOBYTES);
	g_pat = aligned_alloc(4096, IOBYTES);
	if (!g_buf || !g_pat) {
		abort();
	}
	vd_log_set_level(VD_LOG_ERR);
	atexit(cleanup);
}

static int open_it(bool ro, struct vd_image **img)
{
	struct vd_image_opts o = { .format = "qcow2",
				   .io_backend = "sync",
				   .readonly = ro,
				   .cache = VD_CACHE_WRITEBACK,
				   .l2_cache_bytes = 4096,
				   .l2_cache_entry_bytes = 512 };
	struct vd_err err = { 0 };
	int ret = vd_image_open(g_path, &o, img, &err);

	if (ret < 0 && (err.errnum == 0 || vd_err_msg(&err)[0] == '\0')) {
		abort(); /* an error without a message */
	}
	return ret;
}

static void read_some(struct vd_image_sync *s, uint64_t size, uint64_t off)
{
	uint64_t n = VD_MIN((uint64_t)IOBYTES, size - off);

	if (off < size && n) {
		(void)vd_image_sync_io(s, VD_IO_READ, g_buf, n & ~511ull, off);
	}
}

static void read_only_pass(size_t file_bytes)
{
	struct vd_image_info info;
	struct vd_image_sync *s;
	struct vd_image *img;
	struct vd_err err = { 0 };
	uint64_t size, off = 0;

	if (open_it(true, &img) < 0) {
		return;
	}
	vd_image_get_info(img, &info);
	size = info.size_bytes;
	for (int i = 0; i < 64 && off < size; i++) {
		struct vd_block_status bs;

		if (vd_image_block_status(img, off, size - off, &bs) < 0) {
			break;
		}
		off += bs.len_bytes;
	}
	if (vd_image_sync_open(img, &s, &err) == 0) {
		read_some(s, size, 0);
		read_some(s, size, (size / 2) & ~511ull);
		read_some(s, size, size > IOBYTES ? size - IOBYTES : 0);
		vd_image_sync_close(s);
	}
	if (file_bytes <= (256u << 10)) {
		struct vd_check_result res;

		(void)vd_image_check(img, false, &res, &err);
	}
	vd_image_close(img);
}

static void read_write_pass(void)
{
	struct vd_image_info info;
	struct vd_image_sync *s;
	struct vd_image *img;
	struct vd_err err = { 0 };
	int64_t r;

	if (open_it(false, &img) < 0) {
		return;
	}
	vd_image_get_info(img, &info);
	if (info.size_bytes >= 8192 && vd_image_sync_open(img, &s, &err) == 0) {
		uint64_t off = (info.size_bytes / 3) & ~511ull;
		uint64_t n = VD_MIN((uint64_t)IOBYTES, info.size_bytes - off) & ~511ull;

		memset(g_pat, 0xa5, IOBYTES);
		r = vd_image_sync_io(s, VD_IO_WRITE, g_pat, n, off);
		if (info.corrupt && r != -EIO) {
			abort(); /* a corrupt image refuses writes */
		}
		/*
		 * No round-trip check: data clusters shared by hostile L2 tables
		 * or with a zero refcount are garbage in, garbage out (as with
		 * QEMU); metadata is protected (see metadata_refcounts_ok).
		 */
		(void)vd_image_sync_io(s, VD_IO_READ, g_buf, n, off);
		(void)vd_image_sync_io(s, VD_IO_DISCARD, NULL, 4096, 0);
		(void)vd_image_sync_io(s, VD_IO_FLUSH, NULL, 0, 0);
		vd_image_sync_close(s);
	}
	vd_image_close(img);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (g_fd < 0) {
		setup();
	}
	if (ftruncate(g_fd, 0) < 0 || pwrite(g_fd, data, size, 0) != (ssize_t)size) {
		return 0;
	}
	read_only_pass(size);
	/* the file may have changed size: rewrite it for the read-write pass */
	if (ftruncate(g_fd, 0) < 0 || pwrite(g_fd, data, size, 0) != (ssize_t)size) {
		return 0;
	}
	read_write_pass();
	return 0;
}
