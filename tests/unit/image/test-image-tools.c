/*
 * The image API for tools, on raw: block status over holes (SEEK_DATA),
 * resize, synchronous I/O, check (-EOPNOTSUPP), create option rejections;
 * and the fault io backend under it (power cuts, injected EIO, the undo
 * limit).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cmocka.h>

#include "common/compiler.h"
#include "image/image.h"
#include "io/fault.h"

#define SIZE (8u << 20)
#define MiB  (1u << 20)

static void tmp_path(char *buf, size_t len)
{
	const char *d = getenv("VDISK_BUILD_DIR");
	static int n;

	snprintf(buf, len, "%s/vd-image-tools-%d-%d", d && *d ? d : "/var/tmp", (int)getpid(), n++);
}

static void *abuf(size_t len, int pattern)
{
	void *p = NULL;

	if (posix_memalign(&p, 4096, len) != 0) {
		abort();
	}
	memset(p, pattern, len);
	return p;
}

static struct vd_image *open_raw(const char *path, const char *backend, bool ro)
{
	struct vd_image_opts o = {
		.format = "raw", .io_backend = backend, .readonly = ro, .cache = VD_CACHE_WRITEBACK
	};
	struct vd_err err = { 0 };
	struct vd_image *img = NULL;

	assert_int_equal(vd_image_open(path, &o, &img, &err), 0);
	return img;
}

static struct vd_image_sync *sync_of(struct vd_image *img)
{
	struct vd_image_sync *s = NULL;
	struct vd_err err = { 0 };

	assert_int_equal(vd_image_sync_open(img, &s, &err), 0);
	return s;
}

static void test_block_status_holes(void **state)
{
	char path[512];
	struct vd_block_status bs;
	struct vd_image *img;
	struct vd_image_sync *s;
	void *buf = abuf(65536, 0xa5);
	struct vd_err err = { 0 };

	tmp_path(path, sizeof(path));
	assert_int_equal(vd_image_create(path, "raw", SIZE, &err), 0);
	img = open_raw(path, "uring", false);
	s = sync_of(img);
	/* freshly created: one hole, all of it */
	assert_int_equal(vd_image_block_status(img, 0, SIZE, &bs), 0);
	assert_int_equal(bs.len_bytes, SIZE);
	assert_int_equal(bs.flags, VD_BLOCK_ZERO | VD_BLOCK_ALLOCATED);
	assert_int_equal(bs.depth, 0);
	assert_int_equal(bs.host_offset_bytes, 0);
	assert_int_equal(vd_image_sync_io(s, VD_IO_WRITE, buf, 65536, MiB), 65536);
	assert_int_equal(vd_image_sync_io(s, VD_IO_FLUSH, NULL, 0, 0), 0);

	assert_int_equal(vd_image_block_status(img, 0, SIZE, &bs), 0);
	assert_int_equal(bs.flags, VD_BLOCK_ZERO | VD_BLOCK_ALLOCATED);
	assert_int_equal(bs.len_bytes, MiB);
	assert_int_equal(vd_image_block_status(img, MiB, SIZE - MiB, &bs), 0);
	assert_int_equal(bs.flags, VD_BLOCK_DATA | VD_BLOCK_ALLOCATED);
	assert_int_equal(bs.len_bytes, 65536);
	assert_int_equal(bs.host_offset_bytes, MiB);
	assert_int_equal(vd_image_block_status(img, MiB + 65536, SIZE - MiB - 65536, &bs), 0);
	assert_int_equal(bs.flags, VD_BLOCK_ZERO | VD_BLOCK_ALLOCATED);
	assert_int_equal(bs.len_bytes, SIZE - MiB - 65536);
	/* max_bytes bounds the answer; past the end is an error */
	assert_int_equal(vd_image_block_status(img, MiB, 4096, &bs), 0);
	assert_int_equal(bs.len_bytes, 4096);
	assert_int_equal(vd_image_block_status(img, SIZE, 512, &bs), -EINVAL);
	assert_null(vd_image_backing(img));

	/* a discard punches the hole back */
	assert_int_equal(vd_image_sync_io(s, VD_IO_DISCARD, NULL, 65536, MiB), 0);
	assert_int_equal(vd_image_block_status(img, 0, SIZE, &bs), 0);
	assert_int_equal(bs.len_bytes, SIZE);
	assert_int_equal(bs.flags, VD_BLOCK_ZERO | VD_BLOCK_ALLOCATED);
	vd_image_sync_close(s);
	vd_image_close(img);
	unlink(path);
	free(buf);
}

static void test_sync_io_resize(void **state)
{
	char path[512];
	struct vd_image_info info;
	struct vd_image *img;
	struct vd_image_sync *s;
	unsigned char *w = abuf(8192, 0x3c), *r = abuf(8192, 0);
	struct vd_err err = { 0 };

	tmp_path(path, sizeof(path));
	assert_int_equal(vd_image_create(path, "raw", SIZE, &err), 0);
	img = open_raw(path, "sync", false);
	s = sync_of(img);
	assert_int_equal(vd_image_sync_io(s, VD_IO_WRITE, w, 8192, SIZE - 8192), 8192);
	assert_int_equal(vd_image_sync_io(s, VD_IO_READ, r, 8192, SIZE - 8192), 8192);
	assert_memory_equal(r, w, 8192);
	/* the core's checks apply: beyond the end, misaligned */
	assert_int_equal(vd_image_sync_io(s, VD_IO_WRITE, w, 8192, SIZE - 4096), -ENOSPC);
	assert_int_equal(vd_image_sync_io(s, VD_IO_READ, r, 100, 0), -EINVAL);
	vd_image_sync_close(s);

	/* grow: the old data stays, the new part reads as zeroes */
	assert_int_equal(vd_image_resize(img, 2 * SIZE, &err), 0);
	assert_int_equal(vd_image_get_info(img, &info), 0);
	assert_int_equal(info.size_bytes, 2 * SIZE);
	s = sync_of(img);
	assert_int_equal(vd_image_sync_io(s, VD_IO_READ, r, 8192, SIZE - 8192), 8192);
	assert_memory_equal(r, w, 8192);
	memset(r, 0xff, 8192);
	assert_int_equal(vd_image_sync_io(s, VD_IO_READ, r, 8192, 2 * SIZE - 8192), 8192);
	assert_true(r[0] == 0 && memcmp(r, r + 1, 8191) == 0);
	assert_int_equal(vd_image_sync_io(s, VD_IO_WRITE, w, 8192, 2 * SIZE - 8192), 8192);
	vd_image_sync_close(s);
	/* bad sizes */
	assert_int_equal(vd_image_resize(img, 1000, &err), -EINVAL);
	assert_int_equal(vd_image_resize(img, 0, NULL), -EINVAL);
	vd_image_close(img);

	/* read-only: no resize */
	img = open_raw(path, "sync", true);
	memset(&err, 0, sizeof(err));
	assert_int_equal(vd_image_resize(img, 3 * SIZE, &err), -EROFS);
	vd_image_close(img);
	unlink(path);
	free(w);
	free(r);
}

static void test_check_raw(void **state)
{
	char path[512];
	struct vd_check_result res;
	struct vd_image *img;
	struct vd_err err = { 0 };

	tmp_path(path, sizeof(path));
	assert_int_equal(vd_image_create(path, "raw", SIZE, &err), 0);
	img = open_raw(path, "sync", true);
	res.corruptions = 99;
	assert_int_equal(vd_image_check(img, false, &res, &err), -EOPNOTSUPP);
	assert_int_equal(err.errnum, EOPNOTSUPP);
	assert_int_equal(res.corruptions, 0); /* cleared even when unsupported */
	assert_non_null(strstr(vd_err_msg(&err), "raw"));
	vd_image_close(img);
	unlink(path);
}

static void test_create_opts_rejects(void **state)
{
	char path[512];
	struct vd_err err = { 0 };
	struct vd_image_create_opts o = { .size_bytes = SIZE };
	struct stat st;

	tmp_path(path, sizeof(path));
	o.backing_file = "/nonexistent";
	assert_int_equal(vd_image_create_opts(path, "raw", &o, &err), -EINVAL);
	assert_int_equal(stat(path, &st), -1);
	o.backing_file = NULL;
	o.preallocation = "full";
	memset(&err, 0, sizeof(err));
	assert_int_equal(vd_image_create_opts(path, "raw", &o, &err), -EINVAL);
	o.preallocation = NULL;
	o.size_bytes = 1000;
	assert_int_equal(vd_image_create_opts(path, "raw", &o, NULL), -EINVAL);
	o.size_bytes = 0;
	assert_int_equal(vd_image_create_opts(path, "raw", &o, NULL), -EINVAL);
	o.size_bytes = SIZE;
	o.flags = 0x80;
	assert_int_equal(vd_image_create_opts(path, "raw", &o, NULL), -EINVAL);
	o.flags = 0;
	assert_int_equal(vd_image_create_opts(path, "nosuchformat", &o, NULL), -EINVAL);
	assert_int_equal(vd_image_create_opts("", "raw", &o, NULL), -EINVAL);
	assert_int_equal(stat(path, &st), -1);
	/* and then it works, once */
	assert_int_equal(vd_image_create_opts(path, "raw", &o, NULL), 0);
	assert_int_equal(vd_image_create_opts(path, "raw", &o, NULL), -EEXIST);
	o.flags = VD_IMAGE_CREATE_OVERWRITE;
	assert_int_equal(vd_image_create_opts(path, "raw", &o, NULL), 0);
	unlink(path);
}

/* ---- fault backend ---- */

static struct vd_image *open_fault(const char *path)
{
	char fpath[600];

	snprintf(fpath, sizeof(fpath), "sync:%s", path);
	return open_raw(fpath, "fault", false);
}

static void read_file(const char *path, void *buf, size_t len, off_t off)
{
	int fd = open(path, O_RDONLY);

	assert_true(fd >= 0);
	assert_int_equal(pread(fd, buf, len, off), (ssize_t)len);
	close(fd);
}

static void test_fault_cut_all(void **state)
{
	char path[512];
	struct vd_image *img;
	struct vd_image_sync *s;
	struct vd_file *f;
	unsigned char *a = abuf(8192, 0x11), *b = abuf(8192, 0x22), *r = abuf(8192, 0);
	struct vd_err err = { 0 };

	tmp_path(path, sizeof(path));
	assert_int_equal(vd_image_create(path, "raw", SIZE, &err), 0);
	img = open_fault(path);
	f = vd_fault_lookup(path);
	assert_non_null(f);
	assert_true(vd_fault_is_fault(f));
	s = sync_of(img);
	assert_int_equal(vd_image_sync_io(s, VD_IO_WRITE, a, 8192, 0), 8192);
	assert_int_equal(vd_fault_unflushed_sectors(f), 16);
	assert_int_equal(vd_image_sync_io(s, VD_IO_FLUSH, NULL, 0, 0), 0);
	assert_int_equal(vd_fault_unflushed_sectors(f), 0);
	/* unflushed: overwrite half the flushed data, and write beyond it */
	assert_int_equal(vd_image_sync_io(s, VD_IO_WRITE, b, 8192, 4096), 8192);
	assert_int_equal(vd_image_sync_io(s, VD_IO_DISCARD, NULL, 4096, 0), 0);
	/* reads see the newest data before the cut */
	assert_int_equal(vd_image_sync_io(s, VD_IO_READ, r, 8192, 4096), 8192);
	assert_memory_equal(r, b, 8192);
	assert_int_equal(vd_fault_cut_power(f, 1, VD_FAULT_CUT_ALL), 24);
	/* dead: nothing reaches the file any more */
	assert_int_equal(vd_image_sync_io(s, VD_IO_WRITE, b, 8192, 0), -EIO);
	assert_int_equal(vd_image_sync_io(s, VD_IO_READ, r, 8192, 0), -EIO);
	assert_int_equal(vd_image_sync_io(s, VD_IO_FLUSH, NULL, 0, 0), -EIO);
	vd_image_sync_close(s);
	vd_image_close(img);
	assert_null(vd_fault_lookup(path));
	/* what survived: the flushed write, nothing else */
	read_file(path, r, 8192, 0);
	assert_memory_equal(r, a, 8192);
	read_file(path, r, 4096, 8192);
	assert_true(r[0] == 0 && memcmp(r, r + 1, 4095) == 0);
	unlink(path);
	free(a);
	free(b);
	free(r);
}

static void test_fault_cut_random(void **state)
{
	char path[512];
	struct vd_image *img;
	struct vd_image_sync *s;
	struct vd_file *f;
	unsigned char *a = abuf(65536, 0x11), *r = abuf(65536, 0);
	struct vd_err err = { 0 };
	int64_t lost;
	size_t i, old = 0, new = 0;

	tmp_path(path, sizeof(path));
	assert_int_equal(vd_image_create(path, "raw", SIZE, &err), 0);
	img = open_fault(path);
	f = vd_fault_lookup(path);
	s = sync_of(img);
	assert_int_equal(vd_image_sync_io(s, VD_IO_WRITE, a, 65536, 0), 65536);
	lost = vd_fault_cut_power(f, 42, VD_FAULT_CUT_RANDOM);
	assert_true(lost > 0 && lost < 128);
	vd_image_sync_close(s);
	vd_image_close(img);
	read_file(path, r, 65536, 0);
	/* every sector is whole: all old (zero) or all new */
	for (i = 0; i < 128; i++) {
		unsigned char *p = r + i * 512;

		assert_true(memcmp(p, p + 1, 511) == 0);
		assert_true(p[0] == 0 || p[0] == 0x11);
		old += p[0] == 0;
		new += p[0] == 0x11;
	}
	assert_int_equal(old, (size_t)lost);
	assert_int_equal(new, 128 - (size_t)lost);
	unlink(path);
	free(a);
	free(r);
}

static void test_fault_cut_truncates(void **state)
{
	char path[512];
	struct vd_file *f;
	struct vd_file_opts fo = { .cache = VD_CACHE_WRITEBACK };
	char fpath[600];
	unsigned char *a = abuf(4096, 0x5a);
	struct vd_err err = { 0 };
	struct stat st;

	tmp_path(path, sizeof(path));
	assert_int_equal(vd_image_create(path, "raw", 4096, &err), 0);
	snprintf(fpath, sizeof(fpath), "sync:%s", path);
	assert_int_equal(vd_file_open("fault", fpath, &fo, &f, &err), 0);
	/* a file that grew without a flush shrinks back */
	assert_int_equal(vd_file_rw_sync(f, VD_IO_WRITE, a, 4096, 65536), 4096);
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_size, 65536 + 4096);
	assert_int_equal(vd_fault_cut_power(f, 0, VD_FAULT_CUT_ALL), 8);
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_size, 4096);
	vd_file_close(f);
	unlink(path);
	free(a);
}

static void test_fault_eio_and_limit(void **state)
{
	char path[512];
	struct vd_image *img;
	struct vd_image_sync *s;
	struct vd_file *f;
	unsigned char *a = abuf(65536, 0x77);
	struct vd_err err = { 0 };

	tmp_path(path, sizeof(path));
	assert_int_equal(vd_image_create(path, "raw", SIZE, &err), 0);
	img = open_fault(path);
	f = vd_fault_lookup(path);
	s = sync_of(img);
	assert_int_equal(vd_fault_inject_eio(f, VD_FAULT_READ, 2), 0);
	assert_int_equal(vd_image_sync_io(s, VD_IO_READ, a, 4096, 0), 4096);
	assert_int_equal(vd_image_sync_io(s, VD_IO_READ, a, 4096, 0), -EIO);
	assert_int_equal(vd_image_sync_io(s, VD_IO_READ, a, 4096, 0), 4096); /* once */
	assert_int_equal(vd_fault_inject_eio(f, VD_FAULT_WRITE, 1), 0);
	assert_int_equal(vd_image_sync_io(s, VD_IO_WRITE, a, 4096, 0), -EIO);
	assert_int_equal(vd_fault_unflushed_sectors(f), 0); /* nothing happened */
	assert_int_equal(vd_fault_inject_eio(f, VD_FAULT_FLUSH, 1), 0);
	assert_int_equal(vd_image_sync_io(s, VD_IO_FLUSH, NULL, 0, 0), -EIO);
	assert_int_equal(vd_fault_inject_eio(f, 7, 1), -EINVAL);
	/* the undo limit bounds memory: -ENOSPC, and the write did not happen */
	assert_int_equal(vd_fault_set_limit(f, 32768), 0);
	assert_int_equal(vd_image_sync_io(s, VD_IO_WRITE, a, 32768, 0), 32768);
	assert_int_equal(vd_image_sync_io(s, VD_IO_WRITE, a, 4096, 32768), -ENOSPC);
	assert_int_equal(vd_image_sync_io(s, VD_IO_WRITE, a, 4096, 0), 4096); /* saved already */
	assert_int_equal(vd_image_sync_io(s, VD_IO_FLUSH, NULL, 0, 0), 0);
	assert_int_equal(vd_image_sync_io(s, VD_IO_WRITE, a, 32768, 32768), 32768);
	vd_image_sync_close(s);
	vd_image_close(img);
	/* not a fault file */
	img = open_raw(path, "sync", true);
	assert_null(vd_fault_lookup(path));
	vd_image_close(img);
	assert_int_equal(vd_fault_cut_power(NULL, 0, VD_FAULT_CUT_ALL), -EINVAL);
	unlink(path);
	free(a);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_block_status_holes),
		cmocka_unit_test(test_sync_io_resize),
		cmocka_unit_test(test_check_raw),
		cmocka_unit_test(test_create_opts_rejects),
		cmocka_unit_test(test_fault_cut_all),
		cmocka_unit_test(test_fault_cut_random),
		cmocka_unit_test(test_fault_cut_truncates),
		cmocka_unit_test(test_fault_eio_and_limit),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
