/*
 * Image locks (io/lock.h) as every open sees them: the QEMU byte layout,
 * who may join whom (writer, reader, force share), backing files, create
 * over an image in use, the tools refusing an image in use, and convert
 * refusing to write into its own input under any spelling.
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

#include "ctl/imgtool.h"
#include "image/image.h"
#include "io/lock.h"

struct fx {
	char dir[64];
	char raw[128];
	char base[128];
	char top[128];
};

static int setup(void **state)
{
	struct fx *fx = calloc(1, sizeof(*fx));
	struct vd_image_create_opts co = { .size_bytes = 4 << 20 };
	struct vd_err err = { 0 };

	assert_non_null(fx);
	snprintf(fx->dir, sizeof(fx->dir), "/tmp/vd-lock-XXXXXX");
	assert_non_null(mkdtemp(fx->dir));
	snprintf(fx->raw, sizeof(fx->raw), "%s/a.raw", fx->dir);
	snprintf(fx->base, sizeof(fx->base), "%s/base.qcow2", fx->dir);
	snprintf(fx->top, sizeof(fx->top), "%s/top.qcow2", fx->dir);
	assert_int_equal(vd_image_create(fx->raw, "raw", 4 << 20, &err), 0);
	assert_int_equal(vd_image_create_opts(fx->base, "qcow2", &co, &err), 0);
	co.size_bytes = 0;
	co.backing_file = fx->base;
	co.backing_format = "qcow2";
	assert_int_equal(vd_image_create_opts(fx->top, "qcow2", &co, &err), 0);
	*state = fx;
	return 0;
}

static int teardown(void **state)
{
	struct fx *fx = *state;
	char cmd[128];

	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", fx->dir);
	assert_int_equal(system(cmd), 0);
	free(fx);
	return 0;
}

static int open_img(const char *path, bool ro, bool share, struct vd_image **out,
		    struct vd_err *err)
{
	struct vd_image_opts o = {
		.io_backend = "sync",
		.cache = VD_CACHE_WRITEBACK,
		.readonly = ro,
		.force_share = share,
	};

	memset(err, 0, sizeof(*err));
	return vd_image_open(path, &o, out, err);
}

/* Is byte off of path locked by anyone (probing from a fresh open file description)? */
static bool held(const char *path, int off)
{
	struct flock fl = { .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = off, .l_len = 1 };
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	assert_true(fd >= 0);
	assert_int_equal(fcntl(fd, F_OFD_GETLK, &fl), 0);
	close(fd);
	return fl.l_type != F_UNLCK;
}

static void test_bytes(void **state)
{
	struct fx *fx = *state;
	struct vd_image *img;
	struct vd_err err;

	/* writer: perm CR|W|RESIZE at 100+bit, does not share W|RESIZE at 200+bit */
	assert_int_equal(open_img(fx->raw, false, false, &img, &err), 0);
	assert_true(held(fx->raw, 100) && held(fx->raw, 101) && held(fx->raw, 103));
	assert_false(held(fx->raw, 102) || held(fx->raw, 104));
	assert_true(held(fx->raw, 201) && held(fx->raw, 203));
	assert_false(held(fx->raw, 200) || held(fx->raw, 202) || held(fx->raw, 204));
	vd_image_close(img);
	/* closing drops them all */
	for (int off = 100; off < 205; off++) {
		assert_false(held(fx->raw, off));
	}
	/* reader: perm CR, does not share W|RESIZE */
	assert_int_equal(open_img(fx->raw, true, false, &img, &err), 0);
	assert_true(held(fx->raw, 100) && held(fx->raw, 201) && held(fx->raw, 203));
	assert_false(held(fx->raw, 101) || held(fx->raw, 103) || held(fx->raw, 200));
	vd_image_close(img);
	/* force share: perm CR only */
	assert_int_equal(open_img(fx->raw, true, true, &img, &err), 0);
	assert_true(held(fx->raw, 100));
	assert_false(held(fx->raw, 201) || held(fx->raw, 203));
	vd_image_close(img);
}

static void test_matrix(void **state)
{
	struct fx *fx = *state;
	struct vd_image *a, *b;
	struct vd_err err;

	/* writer + writer */
	assert_int_equal(open_img(fx->raw, false, false, &a, &err), 0);
	assert_int_equal(open_img(fx->raw, false, false, &b, &err), -EBUSY);
	assert_non_null(strstr(err.msg, "failed to get \"write\" lock"));
	/* writer + reader */
	assert_int_equal(open_img(fx->raw, true, false, &b, &err), -EBUSY);
	assert_non_null(strstr(err.msg, "failed to get shared \"write\" lock"));
	/* writer + force-share reader */
	assert_int_equal(open_img(fx->raw, true, true, &b, &err), 0);
	vd_image_close(b);
	vd_image_close(a);
	/* reader + reader, then a writer is refused until both are gone */
	assert_int_equal(open_img(fx->raw, true, false, &a, &err), 0);
	assert_int_equal(open_img(fx->raw, true, false, &b, &err), 0);
	{
		struct vd_image *c;

		assert_int_equal(open_img(fx->raw, false, false, &c, &err), -EBUSY);
	}
	vd_image_close(b);
	assert_int_equal(open_img(fx->raw, false, false, &b, &err), -EBUSY);
	vd_image_close(a);
	assert_int_equal(open_img(fx->raw, false, false, &a, &err), 0);
	vd_image_close(a);
	/* force share is for readers only */
	assert_int_equal(open_img(fx->raw, false, true, &a, &err), -EINVAL);
}

static void test_memory_backends(void **state)
{
	struct vd_image_opts o = { .io_backend = "mem", .size_bytes = 1 << 20, .format = "raw" };
	struct vd_image *a, *b;

	(void)state;
	assert_int_equal(vd_image_open("mem", &o, &a, NULL), 0);
	assert_int_equal(vd_image_open("mem", &o, &b, NULL), 0);
	vd_image_close(b);
	vd_image_close(a);
}

static void test_backing(void **state)
{
	struct fx *fx = *state;
	struct vd_image *top, *b;
	struct vd_err err;

	/* the overlay's writer holds its backing file as a reader */
	assert_int_equal(open_img(fx->top, false, false, &top, &err), 0);
	assert_true(held(fx->base, 100) && held(fx->base, 201));
	assert_false(held(fx->base, 101));
	assert_int_equal(open_img(fx->base, false, false, &b, &err), -EBUSY);
	assert_int_equal(open_img(fx->base, true, false, &b, &err), 0);
	vd_image_close(b);
	/* creating over the file in use is refused, before it is touched */
	assert_int_equal(
		vd_image_create_ex(fx->base, "raw", 1 << 20, VD_IMAGE_CREATE_OVERWRITE, &err),
		-EBUSY);
	vd_image_close(top);
	assert_int_equal(open_img(fx->base, false, false, &b, &err), 0);
	vd_image_close(b);
}

static void test_tools_in_use(void **state)
{
	struct fx *fx = *state;
	FILE *null = fopen("/dev/null", "w");
	struct vd_image *img;
	struct vd_err err;

	assert_non_null(null);
	assert_int_equal(open_img(fx->top, false, false, &img, &err), 0);
	memset(&err, 0, sizeof(err));
	assert_int_equal(vd_imgtool_resize(fx->top, NULL, "+1M", false, NULL, &err), -EBUSY);
	memset(&err, 0, sizeof(err));
	assert_int_equal(vd_imgtool_check(fx->top, NULL, true, false, null, &err), -EBUSY);
	memset(&err, 0, sizeof(err));
	assert_int_equal(vd_imgtool_commit(fx->top, NULL, VD_PROGRESS_NEVER, NULL, &err), -EBUSY);
	memset(&err, 0, sizeof(err));
	assert_int_equal(vd_imgtool_info(fx->top, NULL, false, false, null, &err), -EBUSY);
	memset(&err, 0, sizeof(err));
	assert_int_equal(vd_imgtool_info(fx->top, NULL, false, true, null, &err), 0);
	vd_image_close(img);
	(void)fclose(null);
	/* commit itself holds the chain while it writes the base */
	memset(&err, 0, sizeof(err));
	assert_int_equal(vd_imgtool_commit(fx->top, NULL, VD_PROGRESS_NEVER, NULL, &err), 0);
}

static char *slurp(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	char *buf = NULL;
	size_t cap = 0;

	assert_non_null(f);
	*len = 0;
	for (;;) {
		size_t n;

		if (*len == cap) {
			cap = cap ? 2 * cap : 1 << 16;
			buf = realloc(buf, cap);
			assert_non_null(buf);
		}
		n = fread(buf + *len, 1, cap - *len, f);
		if (n == 0) {
			break;
		}
		*len += n;
	}
	(void)fclose(f);
	return buf;
}

static void expect_refused(const char *src, const char *dst, const char *victim)
{
	struct vd_convert_opts o = { .src = src, .dst = dst, .dst_format = "qcow2" };
	struct vd_err err = { 0 };
	size_t len0, len1;
	char *before = slurp(victim, &len0), *after;

	assert_int_equal(vd_imgtool_convert(&o, &err), -EINVAL);
	assert_non_null(strstr(err.msg, "refusing to overwrite"));
	after = slurp(victim, &len1);
	assert_int_equal(len0, len1);
	assert_memory_equal(before, after, len0);
	free(before);
	free(after);
}

static void test_convert_own_input(void **state)
{
	struct fx *fx = *state;
	struct vd_convert_opts o = { .dst_format = "qcow2" };
	struct vd_err err = { 0 };
	char dot[160], sym[160], hard[160], copy[160], cwd[256];

	snprintf(sym, sizeof(sym), "%s/sym.qcow2", fx->dir);
	snprintf(hard, sizeof(hard), "%s/hard.qcow2", fx->dir);
	snprintf(copy, sizeof(copy), "%s/copy.qcow2", fx->dir);
	assert_int_equal(symlink(fx->top, sym), 0);
	assert_int_equal(link(fx->top, hard), 0);
	expect_refused(fx->top, fx->top, fx->top);
	expect_refused(fx->top, sym, fx->top);
	expect_refused(fx->top, hard, fx->top);
	expect_refused(fx->top, fx->base, fx->base); /* into its backing file */
	expect_refused(sym, fx->base, fx->base);
	assert_non_null(getcwd(cwd, sizeof(cwd)));
	assert_int_equal(chdir(fx->dir), 0);
	snprintf(dot, sizeof(dot), "./%s", "top.qcow2");
	expect_refused("top.qcow2", dot, "top.qcow2");
	assert_int_equal(chdir(cwd), 0);
	/* a new file is fine */
	o.src = fx->top;
	o.dst = copy;
	assert_int_equal(vd_imgtool_convert(&o, &err), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_bytes, setup, teardown),
		cmocka_unit_test_setup_teardown(test_matrix, setup, teardown),
		cmocka_unit_test(test_memory_backends),
		cmocka_unit_test_setup_teardown(test_backing, setup, teardown),
		cmocka_unit_test_setup_teardown(test_tools_in_use, setup, teardown),
		cmocka_unit_test_setup_teardown(test_convert_own_input, setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
