/*
 * Fuzz the VHD driver with hostile image files: the input is the whole
 * file (footer copy, header, BAT, batmap, parent locators, bitmaps, data,
 * footer). It is opened read-write through the sync backend; when open
 * succeeds we walk block status, read at the start, middle and end, write
 * and read back (the data must round-trip unless the image was marked
 * corrupt, when writes must fail with -EIO), and run check without repair.
 *
 * Invariants: no crash, no sanitizer report, no read outside the file
 * (the io layer would fail it), and open errors come with a message.
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

static void setup(void)
{
	const char *tmp = getenv("TMPDIR");

	snprintf(g_path, sizeof(g_path), "%s/fuzz-vhd-XXXXXX", tmp && *tmp ? tmp : "/tmp");
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
}

static void cleanup(void)
{
	if (g_fd >= 0) {
		close(g_fd);
		unlink(g_path);
	}
}

static void exercise(struct vd_image *img)
{
	struct vd_image_info info;
	struct vd_image_sync *s;
	struct vd_block_status bs;
	struct vd_check_result res;
	struct vd_err err = { 0 };
	uint64_t off = 0, size, at[3];
	int i;

	if (vd_image_get_info(img, &info) < 0) {
		abort(); /* it worked during open */
	}
	size = info.size_bytes;
	for (i = 0; i < 64 && off < size; i++) {
		if (vd_image_block_status(img, off, size - off, &bs) < 0) {
			break;
		}
		if (bs.len_bytes == 0) {
			abort();
		}
		off += bs.len_bytes;
	}
	if (vd_image_sync_open(img, &s, &err) < 0) {
		return;
	}
	at[0] = 0;
	at[1] = (size / 2) & ~(uint64_t)511;
	at[2] = size >= IOBYTES ? size - IOBYTES : 0;
	for (i = 0; i < 3; i++) {
		uint64_t len = VD_MIN((uint64_t)IOBYTES, size - at[i]);
		int64_t r;

		len &= ~(uint64_t)511;
		if (len == 0) {
			continue;
		}
		vd_image_sync_io(s, VD_IO_READ, g_buf, len, at[i]);
		memset(g_pat, 0xa5 + i, len);
		r = vd_image_sync_io(s, VD_IO_WRITE, g_pat, len, at[i]);
		if (r == (int64_t)len) {
			if (vd_image_sync_io(s, VD_IO_READ, g_buf, len, at[i]) == (int64_t)len &&
			    memcmp(g_buf, g_pat, len) != 0) {
				abort(); /* an acknowledged write did not read back */
			}
		} else if (info.corrupt && r != -EIO) {
			abort(); /* a corrupt image must refuse writes */
		}
	}
	vd_image_sync_close(s);
	vd_image_check(img, false, &res, &err);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct vd_image_opts o = { .format = "vhd",
				   .io_backend = "sync",
				   .cache = VD_CACHE_WRITEBACK };
	struct vd_err err = { 0 };
	struct vd_image *img;
	int ret;

	if (g_fd < 0) {
		setup();
		atexit(cleanup);
	}
	if (size > (4u << 20)) {
		return 0;
	}
	if (ftruncate(g_fd, 0) < 0 || (size && pwrite(g_fd, data, size, 0) != (ssize_t)size)) {
		return 0;
	}
	ret = vd_image_open(g_path, &o, &img, &err);
	if (ret < 0) {
		if (err.errnum == 0 || err.msg[0] == '\0') {
			abort(); /* every refusal explains itself */
		}
		return 0;
	}
	exercise(img);
	vd_image_close(img);
	return 0;
}
