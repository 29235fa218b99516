/*
 * imgtool: map extent merging and its qemu-img JSON, -o parsing, resize
 * arguments, backing paths, progress off outside a terminal.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "ctl/imgtool.h"

static struct vd_map_extent ext(uint64_t start, uint64_t len, unsigned int depth, bool present,
				bool zero, bool data, int64_t off)
{
	struct vd_map_extent e = {
		.start = start,
		.length = len,
		.depth = depth,
		.present = present,
		.zero = zero,
		.data = data,
		.has_offset = off >= 0,
		.offset = off >= 0 ? (uint64_t)off : 0,
	};
	return e;
}

static char *run_map(const struct vd_map_extent *v, size_t n, bool json)
{
	struct vd_map_writer w;
	char *out = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&out, &len);
	size_t i;

	assert_non_null(f);
	vd_map_writer_init(&w, f, json);
	for (i = 0; i < n; i++) {
		vd_map_writer_add(&w, &v[i]);
	}
	vd_map_writer_end(&w);
	fclose(f);
	return out;
}

static void test_map_merge_json(void **state)
{
	/* two contiguous data runs merge; a zero run with offsets; a different depth does not */
	struct vd_map_extent v[] = {
		ext(0, 4096, 0, true, false, true, 8192),
		ext(4096, 4096, 0, true, false, true, 12288),
		ext(8192, 8192, 0, true, true, false, -1),
		ext(16384, 8192, 0, true, true, false, -1),
		ext(24576, 4096, 1, true, false, true, 0),
		ext(28672, 4096, 0, false, true, false, -1),
	};
	char *out = run_map(v, VD_ARRAY_SIZE(v), true);

	assert_string_equal(
		out, "[{ \"start\": 0, \"length\": 8192, \"depth\": 0, \"present\": true, "
		     "\"zero\": false, \"data\": true, \"offset\": 8192},\n"
		     "{ \"start\": 8192, \"length\": 16384, \"depth\": 0, \"present\": true, "
		     "\"zero\": true, \"data\": false},\n"
		     "{ \"start\": 24576, \"length\": 4096, \"depth\": 1, \"present\": true, "
		     "\"zero\": false, \"data\": true, \"offset\": 0},\n"
		     "{ \"start\": 28672, \"length\": 4096, \"depth\": 0, \"present\": false, "
		     "\"zero\": true, \"data\": false}]\n");
	free(out);
}

static void test_map_no_merge(void **state)
{
	struct vd_map_extent a = ext(0, 4096, 0, true, false, true, 0);
	struct vd_map_extent b;

	b = ext(4096, 4096, 0, true, false, true, 8192); /* host offsets not contiguous */
	assert_false(vd_map_extent_mergeable(&a, &b));
	b = ext(4096, 4096, 0, true, false, true, 4096);
	assert_true(vd_map_extent_mergeable(&a, &b));
	b = ext(4096, 4096, 0, true, false, true, -1); /* one with, one without offset */
	assert_false(vd_map_extent_mergeable(&a, &b));
	b = ext(8192, 4096, 0, true, false, true, 8192); /* gap */
	assert_false(vd_map_extent_mergeable(&a, &b));
	b = ext(4096, 4096, 0, true, true, true, 4096); /* flags */
	assert_false(vd_map_extent_mergeable(&a, &b));
	b = ext(4096, 4096, 0, false, false, true, 4096);
	assert_false(vd_map_extent_mergeable(&a, &b));
}

static void test_map_empty_and_human(void **state)
{
	struct vd_map_extent v[] = { ext(0, 65536, 0, true, false, true, 0) };
	char *out = run_map(NULL, 0, true);

	assert_string_equal(out, "[]\n");
	free(out);
	out = run_map(v, 1, false);
	assert_non_null(strstr(out, "Start"));
	assert_non_null(strstr(out, "0x10000"));
	assert_non_null(strstr(out, "data"));
	free(out);
}

static void test_map_from_status(void **state)
{
	struct vd_block_status bs = { .len_bytes = 512,
				      .flags = VD_BLOCK_ZERO | VD_BLOCK_ALLOCATED,
				      .depth = 2,
				      .host_offset_bytes = UINT64_MAX };
	struct vd_map_extent e;

	vd_map_extent_from_status(&e, 1024, &bs);
	assert_int_equal(e.start, 1024);
	assert_int_equal(e.length, 512);
	assert_int_equal(e.depth, 2);
	assert_true(e.present);
	assert_true(e.zero);
	assert_false(e.data);
	assert_false(e.has_offset);
	bs.flags = VD_BLOCK_DATA;
	bs.host_offset_bytes = 4096;
	vd_map_extent_from_status(&e, 0, &bs);
	assert_false(e.present);
	assert_true(e.data);
	assert_true(e.has_offset);
	assert_int_equal(e.offset, 4096);
}

static void test_create_opts(void **state)
{
	struct vd_image_create_opts o = { 0 };
	struct vd_err err = { 0 };
	char s1[] = "cluster_size=64K,compat=0.10,lazy_refcounts=on,refcount_bits=8,"
		    "backing_file=/a,,b.img,backing_fmt=raw,preallocation=metadata";
	char s2[] = "subformat=fixed,extended_l2=off,size=1M,compat=1.1";

	assert_int_equal(vd_imgtool_parse_create_opts(s1, &o, &err), 0);
	assert_int_equal(o.cluster_bytes, 65536);
	assert_int_equal(o.compat, 2);
	assert_true(o.lazy_refcounts);
	assert_int_equal(o.refcount_bits, 8);
	assert_string_equal(o.backing_file, "/a,b.img");
	assert_string_equal(o.backing_format, "raw");
	assert_string_equal(o.preallocation, "metadata");
	/* a second -o adds to the first */
	assert_int_equal(vd_imgtool_parse_create_opts(s2, &o, &err), 0);
	assert_string_equal(o.subformat, "fixed");
	assert_false(o.extended_l2);
	assert_int_equal(o.size_bytes, 1 << 20);
	assert_int_equal(o.compat, 3);
	assert_int_equal(o.cluster_bytes, 65536);
}

static void test_create_opts_rejects(void **state)
{
	static const char *const bad[] = {
		"cluster_size=3000",
		"cluster_size=256",
		"cluster_size=x",
		"compat=4",
		"lazy_refcounts=maybe",
		"refcount_bits=3",
		"refcount_bits=128",
		"preallocation=some",
		"nosuchkey=1",
		"cluster_size",
		"=1",
		"backing_file=",
		"size=0",
	};
	size_t i;

	for (i = 0; i < VD_ARRAY_SIZE(bad); i++) {
		struct vd_image_create_opts o = { 0 };
		struct vd_err err = { 0 };
		char *s = strdup(bad[i]);

		assert_non_null(s);
		assert_int_equal(vd_imgtool_parse_create_opts(s, &o, &err), -EINVAL);
		assert_int_equal(err.errnum, EINVAL);
		assert_true(strlen(vd_err_msg(&err)) > 0);
		free(s);
	}
}

static void test_resize_arg(void **state)
{
	uint64_t n = 0;

	assert_int_equal(vd_imgtool_parse_resize("2M", 1 << 20, false, &n), 0);
	assert_int_equal(n, 2 << 20);
	assert_int_equal(vd_imgtool_parse_resize("+1M", 1 << 20, false, &n), 0);
	assert_int_equal(n, 2 << 20);
	assert_int_equal(vd_imgtool_parse_resize("-512K", 1 << 20, true, &n), 0);
	assert_int_equal(n, 512 << 10);
	assert_int_equal(vd_imgtool_parse_resize("-512K", 1 << 20, false, &n), -EPERM);
	assert_int_equal(vd_imgtool_parse_resize("512K", 1 << 20, false, &n), -EPERM);
	assert_int_equal(vd_imgtool_parse_resize("-2M", 1 << 20, true, &n), -ERANGE);
	assert_int_equal(vd_imgtool_parse_resize("+16T", UINT64_MAX - 5, false, &n), -ERANGE);
	assert_int_equal(vd_imgtool_parse_resize("abc", 0, false, &n), -EINVAL);
	assert_int_equal(vd_imgtool_parse_resize("+", 0, false, &n), -EINVAL);
	assert_int_equal(vd_imgtool_parse_resize(NULL, 0, false, &n), -EINVAL);
}

static void test_backing_path(void **state)
{
	char out[64];

	assert_int_equal(vd_imgtool_backing_path("/d/e/top.qcow2", "base.raw", out, sizeof(out)),
			 0);
	assert_string_equal(out, "/d/e/base.raw");
	assert_int_equal(vd_imgtool_backing_path("/d/e/top.qcow2", "/x/base", out, sizeof(out)), 0);
	assert_string_equal(out, "/x/base");
	assert_int_equal(vd_imgtool_backing_path("top.vhd", "base.vhd", out, sizeof(out)), 0);
	assert_string_equal(out, "base.vhd");
	assert_int_equal(vd_imgtool_backing_path("/a/top",
						 "0123456789012345678901234567890123456"
						 "789012345678901234567890123456789",
						 out, sizeof(out)),
			 -ENAMETOOLONG);
}

static void test_progress_off(void **state)
{
	struct vd_progress p;

	vd_progress_init(&p, VD_PROGRESS_NEVER);
	assert_null(p.f);
	vd_progress_update(&p, 1, 2);
	vd_progress_end(&p);
	/* under meson stderr is a file or pipe: AUTO stays quiet */
	if (!isatty(2)) {
		vd_progress_init(&p, VD_PROGRESS_AUTO);
		assert_null(p.f);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_map_merge_json),
		cmocka_unit_test(test_map_no_merge),
		cmocka_unit_test(test_map_empty_and_human),
		cmocka_unit_test(test_map_from_status),
		cmocka_unit_test(test_create_opts),
		cmocka_unit_test(test_create_opts_rejects),
		cmocka_unit_test(test_resize_arg),
		cmocka_unit_test(test_backing_path),
		cmocka_unit_test(test_progress_off),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
