/*
 * Helpers shared by the VHD driver's unit tests (test-vhd.c,
 * test-vhd-foreign.c): a scratch directory per run, create/open, and
 * synchronous I/O with content checks. Included once per test program.
 */
#ifndef VD_TESTS_VHD_TEST_UTIL_H
#define VD_TESTS_VHD_TEST_UTIL_H

#define MiB (1u << 20)

static char g_dir[256];

static void path_of(char *buf, size_t len, const char *name)
{
	snprintf(buf, len, "%s/%s", g_dir, name);
}

static int group_setup(void **state)
{
	const char *d = getenv("VDISK_BUILD_DIR");

	(void)state;
	snprintf(g_dir, sizeof(g_dir), "%s/vhd-unit-XXXXXX", d && *d ? d : "/var/tmp");
	return mkdtemp(g_dir) ? 0 : -1;
}

static int group_teardown(void **state)
{
	char cmd[512];

	(void)state;
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", g_dir);
	return system(cmd) == 0 ? 0 : -1;
}

static struct vd_image *open_img(const char *path, bool ro)
{
	struct vd_image_opts o = {
		.format = "vhd", .readonly = ro, .io_backend = "uring", .cache = VD_CACHE_DIRECT
	};
	struct vd_err err = { 0 };
	struct vd_image *img = NULL;
	int ret = vd_image_open(path, &o, &img, &err);

	if (ret < 0) {
		print_message("open %s: %s\n", path, vd_err_msg(&err));
	}
	assert_int_equal(ret, 0);
	return img;
}

static void create(const char *path, uint64_t size, const char *sub, uint32_t block,
		   const char *parent)
{
	struct vd_image_create_opts o = {
		.size_bytes = size, .subformat = sub, .cluster_bytes = block, .backing_file = parent
	};
	struct vd_err err = { 0 };
	int ret = vd_image_create_opts(path, "vhd", &o, &err);

	if (ret < 0) {
		print_message("create %s: %s\n", path, vd_err_msg(&err));
	}
	assert_int_equal(ret, 0);
}

static void *xbuf(size_t len, int c)
{
	void *p = NULL;

	assert_int_equal(posix_memalign(&p, 4096, len), 0);
	memset(p, c, len);
	return p;
}

static void sync_rw(struct vd_image *img, enum vd_io_op op, void *buf, uint64_t len, uint64_t off)
{
	struct vd_image_sync *s;
	struct vd_err err = { 0 };

	assert_int_equal(vd_image_sync_open(img, &s, &err), 0);
	assert_int_equal(vd_image_sync_io(s, op, buf, len, off),
			 op == VD_IO_READ || op == VD_IO_WRITE ? (int64_t)len : 0);
	vd_image_sync_close(s);
}

static void expect_bytes(struct vd_image *img, uint64_t off, uint64_t len, int c)
{
	uint8_t *b = xbuf(len, 0x5a);
	uint64_t i;

	sync_rw(img, VD_IO_READ, b, len, off);
	for (i = 0; i < len; i++) {
		if (b[i] != (uint8_t)c) {
			fail_msg("byte at %llu is 0x%x, expected 0x%x",
				 (unsigned long long)(off + i), b[i], c);
		}
	}
	free(b);
}

#endif
