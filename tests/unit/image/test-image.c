/*
 * image layer: registry and probe, create, open/info, and the request checks
 * vd_image_submit makes before a driver sees a request; raw end to end.
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
#include "image/image-driver.h"

#define SIZE (8u << 20)

struct fx {
	char path[512];
	struct vd_image *img;
	struct vd_ioctx *ctx;
	struct vd_image_queue *iq;
};

static void tmp_path(char *buf, size_t len)
{
	const char *d = getenv("VDISK_BUILD_DIR");
	static int n;

	snprintf(buf, len, "%s/vd-image-test-%d-%d", d && *d ? d : "/var/tmp", (int)getpid(), n++);
}

static int setup(void **state)
{
	struct fx *fx = calloc(1, sizeof(*fx));
	struct vd_image_opts o = { .cache = VD_CACHE_DIRECT };
	struct vd_err err = { 0 };

	assert_non_null(fx);
	tmp_path(fx->path, sizeof(fx->path));
	assert_int_equal(vd_image_create(fx->path, "raw", SIZE, &err), 0);
	assert_int_equal(vd_image_open(fx->path, &o, &fx->img, &err), 0);
	assert_int_equal(vd_ioctx_create(32, &fx->ctx, &err), 0);
	assert_int_equal(vd_image_queue_create(fx->img, fx->ctx, &fx->iq), 0);
	*state = fx;
	return 0;
}

static int teardown(void **state)
{
	struct fx *fx = *state;

	assert_int_equal(vd_ioctx_inflight(fx->ctx), 0);
	vd_image_queue_destroy(fx->iq);
	vd_ioctx_destroy(fx->ctx);
	vd_image_close(fx->img);
	unlink(fx->path);
	free(fx);
	return 0;
}

struct done {
	int n;
	int64_t result;
};

static void done_cb(struct vd_io *io, int64_t result)
{
	struct done *d = io->cb_arg;

	d->n++;
	d->result = result;
}

static int64_t run(struct vd_image_queue *iq, struct vd_ioctx *ctx, enum vd_io_op op, uint64_t off,
		   uint64_t len, struct iovec *iov, int iovcnt)
{
	struct vd_io io;
	struct done d = { 0 };
	int loops = 0;

	memset(&io, 0, sizeof(io));
	io.op = op;
	io.offset_bytes = off;
	io.len_bytes = len;
	io.iov = iov;
	io.iovcnt = iovcnt;
	io.cb = done_cb;
	io.cb_arg = &d;
	vd_image_submit(iq, &io);
	assert_int_equal(d.n, 0); /* never inline, not even errors */
	while (d.n == 0) {
		assert_true(vd_ioctx_wait(ctx, 5000000000ull) >= 0);
		assert_true(++loops < 1000);
	}
	assert_int_equal(d.n, 1);
	return d.result;
}

static void *abuf(size_t len)
{
	void *p = NULL;

	if (posix_memalign(&p, 4096, len) != 0) {
		abort();
	}
	return p;
}

static void test_probe_info(void **state)
{
	struct fx *fx = *state;
	struct vd_image_info info;

	assert_int_equal(vd_image_get_info(fx->img, &info), 0);
	assert_string_equal(info.format, "raw");
	assert_int_equal(info.size_bytes, SIZE);
	assert_true(info.sector_bytes == 512 || info.sector_bytes == 4096);
	assert_true(info.physical_sector_bytes >= info.sector_bytes);
	assert_false(info.readonly);
	assert_true(info.discard);
	assert_int_equal(info.discard_granularity_bytes, 4096);
	assert_true(info.flush);
	assert_int_equal(info.allocated_bytes, 0); /* freshly created: sparse */
	assert_int_equal(vd_image_io_ctx_size(fx->img), 0);
}

static void test_rw(void **state)
{
	struct fx *fx = *state;
	unsigned char *buf = abuf(16384), *back = abuf(16384);
	struct iovec iov[2] = { { buf, 4096 }, { buf + 4096, 12288 } };
	struct iovec biov = { back, 16384 };
	struct vd_image_info info;
	size_t i;

	for (i = 0; i < 16384; i++) {
		buf[i] = (unsigned char)(i * 13 + 1);
	}
	assert_int_equal(run(fx->iq, fx->ctx, VD_IO_WRITE, SIZE - 16384, 16384, iov, 2), 16384);
	assert_int_equal(run(fx->iq, fx->ctx, VD_IO_FLUSH, 0, 0, NULL, 0), 0);
	assert_int_equal(run(fx->iq, fx->ctx, VD_IO_READ, SIZE - 16384, 16384, &biov, 1), 16384);
	assert_memory_equal(buf, back, 16384);
	assert_int_equal(vd_image_get_info(fx->img, &info), 0);
	assert_true(info.allocated_bytes >= 16384);
	assert_int_equal(run(fx->iq, fx->ctx, VD_IO_WRITE_ZEROES, SIZE - 16384, 4096, NULL, 0), 0);
	assert_int_equal(run(fx->iq, fx->ctx, VD_IO_DISCARD, SIZE - 12288, 12288, NULL, 0), 0);
	memset(back, 0xff, 16384);
	assert_int_equal(run(fx->iq, fx->ctx, VD_IO_READ, SIZE - 16384, 16384, &biov, 1), 16384);
	for (i = 0; i < 16384; i++) {
		assert_int_equal(back[i], 0);
	}
	free(buf);
	free(back);
}

static void test_bounds(void **state)
{
	struct fx *fx = *state;
	unsigned char *buf = abuf(8192);
	struct iovec iov = { buf, 4096 };
	struct iovec iov2 = { buf, 8192 };

	/* past the end, straddling the end, wrapping */
	assert_int_equal(run(fx->iq, fx->ctx, VD_IO_READ, SIZE, 4096, &iov, 1), -ENOSPC);
	assert_int_equal(run(fx->iq, fx->ctx, VD_IO_WRITE, SIZE - 4096, 8192, &iov2, 1), -ENOSPC);
	assert_int_equal(run(fx->iq, fx->ctx, VD_IO_DISCARD, SIZE - 4096, 8192, NULL, 0), -ENOSPC);
	assert_int_equal(run(fx->iq, fx->ctx, VD_IO_READ, UINT64_MAX - 4095, 4096, &iov, 1),
			 -EINVAL);
	/* misaligned */
	assert_int_equal(run(fx->iq, fx->ctx, VD_IO_READ, 100, 4096, &iov, 1), -EINVAL);
	iov.iov_len = 100;
	assert_int_equal(run(fx->iq, fx->ctx, VD_IO_READ, 0, 100, &iov, 1), -EINVAL);
	assert_int_equal(run(fx->iq, fx->ctx, VD_IO_DISCARD, 0, 100, NULL, 0), -EINVAL);
	/* iov does not add up, none, zero length, unknown op */
	iov.iov_len = 4096;
	assert_int_equal(run(fx->iq, fx->ctx, VD_IO_READ, 0, 8192, &iov, 1), -EINVAL);
	assert_int_equal(run(fx->iq, fx->ctx, VD_IO_WRITE, 0, 4096, NULL, 0), -EINVAL);
	assert_int_equal(run(fx->iq, fx->ctx, VD_IO_READ, 0, 0, &iov, 1), -EINVAL);
	assert_int_equal(run(fx->iq, fx->ctx, (enum vd_io_op)99, 0, 4096, &iov, 1), -EINVAL);
	/* corrupt image: writes refused, reads still served */
	fx->img->corrupt = true;
	assert_int_equal(run(fx->iq, fx->ctx, VD_IO_WRITE, 0, 4096, &iov, 1), -EIO);
	assert_int_equal(run(fx->iq, fx->ctx, VD_IO_DISCARD, 0, 4096, NULL, 0), -EIO);
	assert_int_equal(run(fx->iq, fx->ctx, VD_IO_READ, 0, 4096, &iov, 1), 4096);
	fx->img->corrupt = false;
	assert_int_equal(run(fx->iq, fx->ctx, VD_IO_WRITE, 0, 4096, &iov, 1), 4096);
	free(buf);
}

static void test_readonly(void **state)
{
	struct fx *fx = *state;
	/* fx->img has it open for writing: only a force-share reader may join */
	struct vd_image_opts o = {
		.format = "auto", .io_backend = "sync", .readonly = true, .force_share = true
	};
	unsigned char *buf = abuf(4096);
	struct iovec iov = { buf, 4096 };
	struct vd_image_queue *iq;
	struct vd_image_info info;
	struct vd_image *ro;

	assert_int_equal(vd_image_open(fx->path, &o, &ro, NULL), 0);
	assert_int_equal(vd_image_get_info(ro, &info), 0);
	assert_true(info.readonly);
	assert_int_equal(vd_image_queue_create(ro, fx->ctx, &iq), 0);
	assert_int_equal(run(iq, fx->ctx, VD_IO_WRITE, 0, 4096, &iov, 1), -EROFS);
	assert_int_equal(run(iq, fx->ctx, VD_IO_WRITE_ZEROES, 0, 4096, NULL, 0), -EROFS);
	assert_int_equal(run(iq, fx->ctx, VD_IO_DISCARD, 0, 4096, NULL, 0), -EROFS);
	assert_int_equal(run(iq, fx->ctx, VD_IO_READ, 0, 4096, &iov, 1), 4096);
	vd_image_queue_destroy(iq);
	vd_image_close(ro);
	free(buf);
}

static void test_create(void **state)
{
	struct vd_err err = { 0 };
	char path[512];
	struct stat st;
	int fd;

	tmp_path(path, sizeof(path));
	assert_int_equal(vd_image_create(path, NULL, 1u << 20, &err), 0);
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_size, 1u << 20);
	assert_int_equal(st.st_blocks, 0);
	/* write something, then refuse to clobber it */
	fd = open(path, O_WRONLY);
	assert_true(fd >= 0);
	assert_int_equal(pwrite(fd, "data", 4, 0), 4);
	close(fd);
	assert_int_equal(vd_image_create(path, "raw", 2u << 20, &err), -EEXIST);
	assert_non_null(strstr(vd_err_msg(&err), "exists"));
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_size, 1u << 20);
	/* unless asked: then it is a fresh, zeroed image of the new size */
	memset(&err, 0, sizeof(err));
	assert_int_equal(vd_image_create_ex(path, "raw", 2u << 20, VD_IMAGE_CREATE_OVERWRITE, &err),
			 0);
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_size, 2u << 20);
	assert_int_equal(st.st_blocks, 0);
	unlink(path);
	/* bad arguments */
	assert_int_equal(vd_image_create(path, "raw", 1000, NULL), -EINVAL);
	assert_int_equal(vd_image_create(path, "raw", 0, NULL), -EINVAL);
	assert_int_equal(vd_image_create(path, "qcow9", 4096, NULL), -EINVAL);
	assert_int_equal(vd_image_create("/nonexistent-dir/x", "raw", 4096, NULL), -ENOENT);
	assert_int_equal(access(path, F_OK), -1);
}

static void test_open_errors(void **state)
{
	struct vd_image_opts o = { .format = "vmdk" };
	struct vd_err err = { 0 };
	struct vd_image *img;

	assert_int_equal(vd_image_open("/nonexistent/img", NULL, &img, &err), -ENOENT);
	assert_null(img);
	assert_non_null(strstr(vd_err_msg(&err), "/nonexistent/img"));
	memset(&err, 0, sizeof(err));
	assert_int_equal(vd_image_open("/dev/null", &o, &img, &err), -EINVAL);
	assert_non_null(strstr(vd_err_msg(&err), "vmdk"));
	o.format = NULL;
	o.io_backend = "floppy";
	assert_int_equal(vd_image_open("x", &o, &img, NULL), -EINVAL);
	/* mem backend without a size */
	o.io_backend = "mem";
	assert_int_equal(vd_image_open("mem", &o, &img, NULL), -EINVAL);
	vd_image_close(NULL);
	vd_image_queue_destroy(NULL);
}

static void test_mem_and_null(void **state)
{
	static const char *const backends[] = { "mem", "null" };
	unsigned char *buf = abuf(8192);
	struct iovec iov = { buf, 8192 };
	struct vd_ioctx *ctx;
	size_t b, i;

	assert_int_equal(vd_ioctx_create(8, &ctx, NULL), 0);
	for (b = 0; b < 2; b++) {
		struct vd_image_opts o = { .io_backend = backends[b], .size_bytes = 1u << 20 };
		struct vd_image_queue *iq;
		struct vd_image_info info;
		struct vd_image *img;

		assert_int_equal(vd_image_open(backends[b], &o, &img, NULL), 0);
		assert_int_equal(vd_image_get_info(img, &info), 0);
		assert_string_equal(info.format, "raw");
		assert_int_equal(info.size_bytes, 1u << 20);
		assert_int_equal(info.flush, b == 0);
		assert_int_equal(vd_image_queue_create(img, ctx, &iq), 0);
		memset(buf, 0x77, 8192);
		assert_int_equal(run(iq, ctx, VD_IO_WRITE, 65536, 8192, &iov, 1), 8192);
		memset(buf, 0, 8192);
		assert_int_equal(run(iq, ctx, VD_IO_READ, 65536, 8192, &iov, 1), 8192);
		for (i = 0; i < 8192; i++) {
			assert_int_equal(buf[i], b == 0 ? 0x77 : 0);
		}
		assert_int_equal(run(iq, ctx, VD_IO_READ, 1u << 20, 8192, &iov, 1), -ENOSPC);
		vd_image_queue_destroy(iq);
		vd_image_close(img);
	}
	vd_ioctx_destroy(ctx);
	free(buf);
}

static void test_probe_scores(void **state)
{
	unsigned char hdr[4096] = { 0 };

	assert_int_equal(vd_raw_driver.probe(hdr, sizeof(hdr)), 1);
	memcpy(hdr, "QFI\xfb", 4);
	assert_int_equal(vd_raw_driver.probe(hdr, sizeof(hdr)), 1);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_probe_info, setup, teardown),
		cmocka_unit_test_setup_teardown(test_rw, setup, teardown),
		cmocka_unit_test_setup_teardown(test_bounds, setup, teardown),
		cmocka_unit_test_setup_teardown(test_readonly, setup, teardown),
		cmocka_unit_test(test_create),
		cmocka_unit_test(test_open_errors),
		cmocka_unit_test(test_mem_and_null),
		cmocka_unit_test(test_probe_scores),
	};
	struct vd_ioctx *probe;
	struct vd_err err = { 0 };

	if (vd_ioctx_create(4, &probe, &err) < 0) {
		fprintf(stderr, "skip: %s\n", vd_err_msg(&err));
		return 77;
	}
	vd_ioctx_destroy(probe);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
