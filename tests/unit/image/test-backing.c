/*
 * The backing-file policy (image.h struct vd_backing_policy): qcow2 backing
 * files outside the top image's tree (absolute, ../, through a symlink),
 * the allow-list, raw backing files without a recorded format, no-backing,
 * the root staying the top's directory down a chain; vhd parents that are
 * raw files or VHDs with another UUID; a raw file whose size is not a
 * multiple of 512 (zero-padded, as qemu).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cmocka.h>

#include "common/compiler.h"
#include "image/image.h"

#define SIZE (1u << 20)

static char g_top[400]; /* the top images' directory */
static char g_out[400]; /* a directory beside it: outside the top's tree */
static char g_sub[450]; /* g_top/sub */
static char g_root[300];

static void pathf(char *buf, size_t len, const char *dir, const char *name)
{
	snprintf(buf, len, "%s/%s", dir, name);
}

static int group_setup(void **state)
{
	const char *b = getenv("VDISK_BUILD_DIR");

	snprintf(g_root, sizeof(g_root), "%s/vd-backing-XXXXXX", b && *b ? b : "/var/tmp");
	if (!mkdtemp(g_root)) {
		return -1;
	}
	pathf(g_top, sizeof(g_top), g_root, "top");
	pathf(g_out, sizeof(g_out), g_root, "out");
	pathf(g_sub, sizeof(g_sub), g_top, "sub");
	if (mkdir(g_top, 0700) < 0 || mkdir(g_out, 0700) < 0 || mkdir(g_sub, 0700) < 0) {
		return -1;
	}
	return 0;
}

static int group_teardown(void **state)
{
	char cmd[400];

	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", g_root);
	return system(cmd) == 0 ? 0 : -1;
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

/* A raw file of len bytes filled with pattern. */
static void make_raw(const char *path, size_t len, int pattern)
{
	void *buf = abuf(len ? len : 1, pattern);
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);

	assert_true(fd >= 0);
	assert_int_equal(write(fd, buf, len), (ssize_t)len);
	assert_int_equal(close(fd), 0);
	free(buf);
}

static void make_overlay(const char *path, const char *fmt, const char *backing,
			 const char *backing_fmt, uint64_t size)
{
	struct vd_image_create_opts o = { .size_bytes = size,
					  .backing_file = backing,
					  .backing_format = backing_fmt,
					  .flags = VD_IMAGE_CREATE_OVERWRITE };
	struct vd_err err = { 0 };

	if (vd_image_create_opts(path, fmt, &o, &err) < 0) {
		fail_msg("create %s: %s", path, vd_err_msg(&err));
	}
}

static int try_open(const char *path, const struct vd_backing_policy *p, bool ro,
		    struct vd_image **out, struct vd_err *err)
{
	struct vd_image_opts o = { .readonly = ro,
				   .cache = VD_CACHE_WRITEBACK,
				   .io_backend = "sync" };

	if (p) {
		o.backing = *p;
	}
	memset(err, 0, sizeof(*err));
	return vd_image_open(path, &o, out, err);
}

static void expect_refused(const char *path, const struct vd_backing_policy *p, int errnum,
			   const char *needle)
{
	struct vd_image *img = NULL;
	struct vd_err err;

	assert_int_equal(try_open(path, p, true, &img, &err), -errnum);
	assert_null(img);
	if (!strstr(vd_err_msg(&err), needle)) {
		fail_msg("%s: '%s' does not say '%s'", path, vd_err_msg(&err), needle);
	}
}

/* Opens path (read-only) and checks the byte at each offset. */
static void expect_bytes(const char *path, const struct vd_backing_policy *p, uint64_t off,
			 size_t len, int pattern)
{
	struct vd_image_sync *s = NULL;
	struct vd_image *img = NULL;
	uint8_t *buf = abuf(len, 0x77);
	struct vd_err err;
	size_t i;

	if (try_open(path, p, true, &img, &err) < 0) {
		fail_msg("open %s: %s", path, vd_err_msg(&err));
	}
	assert_int_equal(vd_image_sync_open(img, &s, &err), 0);
	assert_int_equal(vd_image_sync_io(s, VD_IO_READ, buf, len, off), (int64_t)len);
	for (i = 0; i < len; i++) {
		if (buf[i] != (uint8_t)pattern) {
			fail_msg("%s: byte %llu is 0x%x, not 0x%x", path,
				 (unsigned long long)(off + i), buf[i], pattern);
		}
	}
	vd_image_sync_close(s);
	vd_image_close(img);
	free(buf);
}

static void test_qcow2_outside_tree(void **state)
{
	char base[500], top[500], rel[500], link[500], lnk[500];
	const char *dirs[] = { g_out };
	struct vd_backing_policy allow = { .dirs = dirs, .n_dirs = 1 };

	pathf(base, sizeof(base), g_out, "base.raw");
	make_raw(base, SIZE, 0x5a);
	/* an absolute name outside the tree */
	pathf(top, sizeof(top), g_top, "abs.qcow2");
	make_overlay(top, "qcow2", base, "raw", SIZE);
	expect_refused(top, NULL, EACCES, "outside");
	expect_refused(top, NULL, EACCES, "--backing-dir");
	expect_bytes(top, &allow, 0, 4096, 0x5a);
	/* ../out/base.raw */
	pathf(rel, sizeof(rel), g_top, "rel.qcow2");
	make_overlay(rel, "qcow2", "../out/base.raw", "raw", SIZE);
	expect_refused(rel, NULL, EACCES, "outside");
	expect_bytes(rel, &allow, 0, 4096, 0x5a);
	/* a symlink inside the tree pointing out of it */
	pathf(lnk, sizeof(lnk), g_top, "base-link.raw");
	assert_int_equal(symlink(base, lnk), 0);
	pathf(link, sizeof(link), g_top, "link.qcow2");
	make_overlay(link, "qcow2", "base-link.raw", "raw", SIZE);
	expect_refused(link, NULL, EACCES, "outside");
	expect_bytes(link, &allow, 0, 4096, 0x5a);
	/* a host file such as /etc/passwd */
	pathf(top, sizeof(top), g_top, "passwd.qcow2");
	make_overlay(top, "qcow2", "/etc/passwd", "raw", SIZE);
	expect_refused(top, NULL, EACCES, "outside");
}

static void test_qcow2_inside_tree(void **state)
{
	char base[500], top[500];

	pathf(base, sizeof(base), g_top, "in.raw");
	make_raw(base, SIZE, 0x11);
	pathf(top, sizeof(top), g_top, "in.qcow2");
	make_overlay(top, "qcow2", "in.raw", "raw", SIZE);
	expect_bytes(top, NULL, 65536, 4096, 0x11);
	/* absolute, and in a subdirectory: the same tree */
	pathf(base, sizeof(base), g_sub, "in-sub.raw");
	make_raw(base, SIZE, 0x12);
	make_overlay(top, "qcow2", base, "raw", SIZE);
	expect_bytes(top, NULL, 0, 4096, 0x12);
}

/*
 * The qcow2 "backing format" header extension removed (its type becomes
 * "end of extensions"), as an image from an old qemu-img without -F.
 */
static void drop_backing_format(const char *path)
{
	static const uint8_t bfmt[4] = { 0xe2, 0x79, 0x2a, 0xca };
	uint8_t b[4];
	int fd = open(path, O_RDWR);

	assert_true(fd >= 0);
	assert_int_equal(pread(fd, b, 4, 112), 4);
	assert_memory_equal(b, bfmt, 4);
	memset(b, 0, 4);
	assert_int_equal(pwrite(fd, b, 4, 112), 4);
	assert_int_equal(close(fd), 0);
}

static void test_raw_needs_format(void **state)
{
	char base[500], top[500], q[500], qtop[500];
	struct vd_image *img;
	struct vd_image_info info;
	struct vd_err err;

	pathf(base, sizeof(base), g_top, "fmt.raw");
	make_raw(base, SIZE, 0x21);
	pathf(top, sizeof(top), g_top, "fmt.qcow2");
	/* create probes the backing and records "raw" (as qemu-img -F raw) */
	make_overlay(top, "qcow2", "fmt.raw", NULL, 0);
	assert_int_equal(try_open(top, NULL, true, &img, &err), 0);
	assert_int_equal(vd_image_get_info(img, &info), 0);
	assert_string_equal(info.backing_format, "raw");
	vd_image_close(img);
	expect_bytes(top, NULL, 0, 4096, 0x21);
	drop_backing_format(top);
	expect_refused(top, NULL, EACCES, "no recorded format");
	/* a qcow2 backing file may be probed: it cannot be mistaken for raw */
	pathf(q, sizeof(q), g_top, "fmt-base.qcow2");
	make_overlay(q, "qcow2", "fmt.raw", "raw", SIZE);
	pathf(qtop, sizeof(qtop), g_top, "fmt-top.qcow2");
	make_overlay(qtop, "qcow2", "fmt-base.qcow2", "qcow2", SIZE);
	drop_backing_format(qtop);
	expect_bytes(qtop, NULL, 0, 4096, 0x21);
}

static void test_no_backing(void **state)
{
	const struct vd_backing_policy none = { .none = true };
	char base[500], top[500];
	struct vd_image *img = NULL;
	struct vd_err err;

	pathf(base, sizeof(base), g_out, "nb.raw");
	make_raw(base, SIZE, 0x31);
	pathf(top, sizeof(top), g_top, "nb.qcow2");
	make_overlay(top, "qcow2", base, "raw", SIZE);
	/* outside the tree, but never opened: the top alone reads zeroes */
	expect_bytes(top, &none, 0, 65536, 0);
	assert_int_equal(try_open(top, &none, true, &img, &err), 0);
	assert_null(vd_image_backing(img));
	vd_image_close(img);
	/* writing without the backing would copy zeroes up: refused */
	assert_int_equal(try_open(top, &none, false, &img, &err), -EROFS);
	assert_non_null(strstr(vd_err_msg(&err), "read-only"));
	/* the backing file may even be gone */
	assert_int_equal(unlink(base), 0);
	expect_bytes(top, &none, 0, 4096, 0);
}

/* The root of the tree is the top image's directory for every layer. */
static void test_chain_root(void **state)
{
	char base[500], mid[500], top[500];
	const char *dirs[] = { g_out };
	struct vd_backing_policy allow = { .dirs = dirs, .n_dirs = 1 };

	/* top/sub/mid -> ../base (top/base): inside the top's tree */
	pathf(base, sizeof(base), g_top, "chain-base.raw");
	make_raw(base, SIZE, 0x41);
	pathf(mid, sizeof(mid), g_sub, "chain-mid.qcow2");
	make_overlay(mid, "qcow2", "../chain-base.raw", "raw", SIZE);
	pathf(top, sizeof(top), g_top, "chain-top.qcow2");
	make_overlay(top, "qcow2", "sub/chain-mid.qcow2", "qcow2", SIZE);
	expect_bytes(top, NULL, 0, 4096, 0x41);
	/* opened alone, mid's root is top/sub: its ../ backing is outside */
	expect_refused(mid, NULL, EACCES, "outside");

	/* top -> out/mid (allowed) -> out/../top/x is inside the top's tree */
	pathf(mid, sizeof(mid), g_out, "chain-mid2.qcow2");
	make_overlay(mid, "qcow2", "../top/chain-base.raw", "raw", SIZE);
	pathf(top, sizeof(top), g_top, "chain-top2.qcow2");
	make_overlay(top, "qcow2", mid, "qcow2", SIZE);
	expect_refused(top, NULL, EACCES, "outside");
	expect_bytes(top, &allow, 0, 4096, 0x41);

	/* top -> out/mid (allowed) -> root/escape.raw: in neither tree */
	pathf(base, sizeof(base), g_root, "escape.raw");
	make_raw(base, SIZE, 0x42);
	make_overlay(mid, "qcow2", "../escape.raw", "raw", SIZE);
	expect_refused(top, &allow, EACCES, "escape.raw");
}

/* Rewrites a VHD file with a fresh one of the same name (a new UUID). */
static void test_vhd_parent(void **state)
{
	char par[500], child[500], moved[500];
	const struct vd_backing_policy none = { .none = true };
	struct vd_image_create_opts o = { .size_bytes = SIZE, .flags = VD_IMAGE_CREATE_OVERWRITE };
	struct vd_err err = { 0 };

	pathf(par, sizeof(par), g_top, "par.vhd");
	pathf(child, sizeof(child), g_top, "child.vhd");
	assert_int_equal(vd_image_create_opts(par, "vhd", &o, &err), 0);
	make_overlay(child, "vhd", "par.vhd", NULL, 0);
	expect_bytes(child, NULL, 0, 4096, 0);

	/* the same name, another VHD: another UUID */
	assert_int_equal(vd_image_create_opts(par, "vhd", &o, &err), 0);
	expect_refused(child, NULL, EINVAL, "UUID");

	/* the parent replaced by a raw file (/etc/shadow, say) */
	make_raw(par, SIZE, 0x66);
	expect_refused(child, NULL, EINVAL, "not a usable VHD");
	expect_bytes(child, &none, 0, 4096, 0);

	/* outside the tree: refused before anything is read */
	assert_int_equal(vd_image_create_opts(par, "vhd", &o, &err), 0);
	make_overlay(child, "vhd", "par.vhd", NULL, 0);
	pathf(moved, sizeof(moved), g_out, "par.vhd");
	assert_int_equal(rename(par, moved), 0);
	assert_int_equal(symlink(moved, par), 0);
	expect_refused(child, NULL, EACCES, "outside");

	/* creating a differencing disk over a raw file is refused */
	make_raw(moved, SIZE, 0x66);
	memset(&err, 0, sizeof(err));
	o.backing_file = moved;
	o.size_bytes = 0;
	assert_int_equal(vd_image_create_opts(child, "vhd", &o, &err), -EINVAL);
	assert_non_null(strstr(vd_err_msg(&err), "must be a VHD"));
}

/* A raw file of 1000 bytes: 1024 bytes, the last 24 zeroes (as qemu). */
static void test_raw_odd_size(void **state)
{
	char base[500], top[500];
	struct vd_image_sync *s = NULL;
	struct vd_image *img = NULL;
	uint8_t *buf = abuf(65536, 0x77);
	struct vd_err err;
	size_t i;

	pathf(base, sizeof(base), g_top, "odd.raw");
	make_raw(base, 1000, 0x51);
	assert_int_equal(try_open(base, NULL, true, &img, &err), 0);
	assert_int_equal(img ? 1 : 0, 1);
	{
		struct vd_image_info info;

		assert_int_equal(vd_image_get_info(img, &info), 0);
		assert_int_equal(info.size_bytes, 1024);
	}
	vd_image_close(img);
	expect_bytes(base, NULL, 0, 512, 0x51);

	pathf(top, sizeof(top), g_top, "odd.qcow2");
	make_overlay(top, "qcow2", "odd.raw", "raw", 65536);
	assert_int_equal(try_open(top, NULL, true, &img, &err), 0);
	assert_int_equal(vd_image_sync_open(img, &s, &err), 0);
	assert_int_equal(vd_image_sync_io(s, VD_IO_READ, buf, 65536, 0), 65536);
	for (i = 0; i < 65536; i++) {
		if (buf[i] != (i < 1000 ? 0x51 : 0)) {
			fail_msg("byte %zu is 0x%x", i, buf[i]);
		}
	}
	vd_image_sync_close(s);
	vd_image_close(img);
	free(buf);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_qcow2_outside_tree), cmocka_unit_test(test_qcow2_inside_tree),
		cmocka_unit_test(test_raw_needs_format),   cmocka_unit_test(test_no_backing),
		cmocka_unit_test(test_chain_root),         cmocka_unit_test(test_vhd_parent),
		cmocka_unit_test(test_raw_odd_size),
	};

	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
