/*
 * qcow2 check and repair (issue 13), against the rules of qemu-img check:
 * each test corrupts one structure of an image made by the driver, then
 * checks that check finds it, that a repair keeps every cluster that read
 * before it, and that the verdict of check --repair is that of a fresh
 * check of the repaired file.
 *
 * (A file of its own: test-qcow2.c is past the 900-line limit; the small
 * helpers are repeated here rather than shared through a header.)
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
#include <zlib.h>
#include <cmocka.h>

#include "common/compiler.h"
#include "ctl/imgtool.h"
#include "image/image-driver.h"
#include "image/qcow2/qcow2-int.h"

#define CB   65536u /* the driver's default cluster size */
#define SIZE (4u << 20)

static char dir[512];

static int group_setup(void **state)
{
	const char *b = getenv("VDISK_BUILD_DIR");

	snprintf(dir, sizeof(dir), "%s/qcow2-check-XXXXXX", b && *b ? b : "/var/tmp");
	return mkdtemp(dir) ? 0 : -1;
}

static int group_teardown(void **state)
{
	char cmd[600];

	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	return system(cmd) == 0 ? 0 : -1;
}

static struct vd_image *open_img(const char *path, bool ro)
{
	struct vd_image_opts o = { .cache = VD_CACHE_WRITEBACK, .format = "qcow2", .readonly = ro };
	struct vd_err err = { 0 };
	struct vd_image *img;

	if (vd_image_open(path, &o, &img, &err) < 0) {
		fail_msg("open %s: %s", path, vd_err_msg(&err));
	}
	return img;
}

static void *xbuf(size_t len, int fill)
{
	void *p = NULL;

	assert_int_equal(posix_memalign(&p, 4096, len), 0);
	memset(p, fill, len);
	return p;
}

static void rw(struct vd_image *img, enum vd_io_op op, void *buf, uint64_t len, uint64_t off)
{
	struct vd_image_sync *s;
	struct vd_err err = { 0 };

	assert_int_equal(vd_image_sync_open(img, &s, &err), 0);
	assert_int_equal(vd_image_sync_io(s, op, buf, len, off), (int64_t)len);
	vd_image_sync_close(s);
}

/* The whole disk as the driver reads it (read-only open). */
static uint8_t *dump(const char *path)
{
	struct vd_image *img = open_img(path, true);
	uint8_t *b = xbuf(SIZE, 0xee);

	rw(img, VD_IO_READ, b, SIZE, 0);
	vd_image_close(img);
	return b;
}

/* A 4 MiB image: clusters 0..3 of the disk hold 0x10, 0x11, 0x12, 0x13. */
static void make(char *path, size_t len, const char *name)
{
	struct vd_image_create_opts o = { .size_bytes = SIZE, .flags = VD_IMAGE_CREATE_OVERWRITE };
	struct vd_err err = { 0 };
	struct vd_image *img;
	uint8_t *b = xbuf(CB, 0);

	snprintf(path, len, "%s/%s", dir, name);
	if (vd_image_create_opts(path, "qcow2", &o, &err) < 0) {
		fail_msg("create %s: %s", path, vd_err_msg(&err));
	}
	img = open_img(path, false);
	for (int c = 0; c < 4; c++) {
		memset(b, 0x10 + c, CB);
		rw(img, VD_IO_WRITE, b, CB, (uint64_t)c * CB);
	}
	vd_image_close(img);
	free(b);
}

static uint64_t get64(const char *path, uint64_t off)
{
	uint8_t b[8];
	int fd = open(path, O_RDONLY);

	assert_true(fd >= 0);
	assert_int_equal(pread(fd, b, 8, (off_t)off), 8);
	close(fd);
	return qcow2_be64(b);
}

static void put64(const char *path, uint64_t off, uint64_t v)
{
	uint8_t b[8];
	int fd = open(path, O_RDWR);

	assert_true(fd >= 0);
	qcow2_put_be64(b, v);
	assert_int_equal(pwrite(fd, b, 8, (off_t)off), 8);
	close(fd);
}

static uint64_t l1_off(const char *path)
{
	return get64(path, 40);
}

static uint64_t reftable_off(const char *path)
{
	return get64(path, 48);
}

/* Host offset of the L2 entry of disk cluster gc (in the first L2 table). */
static uint64_t l2e_off(const char *path, uint64_t gc)
{
	return (get64(path, l1_off(path)) & QCOW2_OFFSET_MASK) + gc * 8;
}

/* vd_image_check without repair on a read-only open. */
static struct vd_check_result check_ro(const char *path)
{
	struct vd_image *img = open_img(path, true);
	struct vd_check_result res;
	struct vd_err err = { 0 };

	if (vd_image_check(img, false, &res, &err) < 0) {
		fail_msg("check %s: %s", path, vd_err_msg(&err));
	}
	vd_image_close(img);
	return res;
}

static int tool_check(const char *path, bool repair)
{
	struct vd_err err = { 0 };
	FILE *out = fopen("/dev/null", "w");
	int ret;

	assert_non_null(out);
	ret = vd_imgtool_check(path, "qcow2", repair, false, out, &err);
	(void)fclose(out);
	if (ret < 0) {
		fail_msg("check%s %s: %s", repair ? " --repair" : "", path, vd_err_msg(&err));
	}
	return ret;
}

/*
 * check finds corruption; check --repair and a fresh check agree on
 * want_after; the repair keeps every byte that read before it.
 */
static void expect_repair(const char *path, int want_after)
{
	uint8_t *before = dump(path), *after;
	struct vd_check_result res = check_ro(path);

	if (res.corruptions == 0) {
		fail_msg("%s: check found no corruption", path);
	}
	assert_int_equal(tool_check(path, false), VD_CHECK_CORRUPT);
	assert_int_equal(tool_check(path, true), want_after);
	assert_int_equal(tool_check(path, false), want_after);
	after = dump(path);
	for (uint64_t i = 0; i < SIZE; i++) {
		if (before[i] != after[i]) {
			fail_msg("%s: byte %llu was 0x%x, is 0x%x after the repair", path,
				 (unsigned long long)i, before[i], after[i]);
		}
	}
	free(before);
	free(after);
}

/* ---- 1. a compressed cluster whose sector count runs past the end ---- */

static void test_compressed_past_eof(void **state)
{
	char path[600];
	uint8_t *plain = xbuf(CB, 0x5a), *z = xbuf(2 * CB, 0);
	unsigned int x = 62 - (16 - 8);
	z_stream zs;
	struct stat st;
	uint64_t host, *want;
	int fd;

	make(path, sizeof(path), "compressed.qcow2");
	memset(&zs, 0, sizeof(zs));
	assert_int_equal(deflateInit2(&zs, 6, Z_DEFLATED, -12, 9, Z_DEFAULT_STRATEGY), Z_OK);
	zs.next_in = plain;
	zs.avail_in = CB;
	zs.next_out = z;
	zs.avail_out = 2 * CB;
	assert_int_equal(deflate(&zs, Z_FINISH), Z_STREAM_END);
	/* the stream at the end of the file, the entry claiming every sector */
	assert_int_equal(stat(path, &st), 0);
	host = VD_ALIGN_UP((uint64_t)st.st_size, 512ull) + 100;
	fd = open(path, O_RDWR);
	assert_int_equal(pwrite(fd, z, zs.total_out, (off_t)host), (ssize_t)zs.total_out);
	close(fd);
	assert_true(zs.total_out < 4096);
	(void)deflateEnd(&zs);
	put64(path, l2e_off(path, 5), QCOW2_OFLAG_COMPRESSED | (255ull << x) | host);
	want = (uint64_t *)dump(path);
	assert_memory_equal((uint8_t *)want + 5 * CB, plain, CB);
	free(want);
	/* referenced without a refcount: corrupt, and a repair fixes it all */
	expect_repair(path, VD_CHECK_CLEAN);
	free(plain);
	free(z);
}

/* ---- 2. the verdict of check --repair is that of a re-check ---- */

static void test_l2_into_reftable(void **state)
{
	char path[600];

	make(path, sizeof(path), "l2-reftable.qcow2");
	put64(path, l2e_off(path, 2), QCOW2_OFLAG_COPIED | reftable_off(path));
	expect_repair(path, VD_CHECK_CLEAN);
}

static void test_l2_into_l1(void **state)
{
	char path[600];

	/* data over the active L1 table: nothing can fix it, and nobody says so */
	make(path, sizeof(path), "l2-l1.qcow2");
	put64(path, l2e_off(path, 2), QCOW2_OFLAG_COPIED | l1_off(path));
	expect_repair(path, VD_CHECK_CORRUPT);
}

/* ---- 3. what qemu-img check flags ---- */

static void test_reserved_bits(void **state)
{
	char path[600];

	make(path, sizeof(path), "l1-reserved.qcow2");
	put64(path, l1_off(path), get64(path, l1_off(path)) | (1ull << 1));
	expect_repair(path, VD_CHECK_CLEAN);

	make(path, sizeof(path), "l1-reserved-high.qcow2");
	put64(path, l1_off(path), get64(path, l1_off(path)) | (1ull << 57));
	expect_repair(path, VD_CHECK_CLEAN);

	make(path, sizeof(path), "l2-reserved.qcow2");
	put64(path, l2e_off(path, 1), get64(path, l2e_off(path, 1)) | (1ull << 57));
	expect_repair(path, VD_CHECK_CLEAN);

	make(path, sizeof(path), "reftable-reserved.qcow2");
	put64(path, reftable_off(path), get64(path, reftable_off(path)) | (1ull << 2));
	expect_repair(path, VD_CHECK_CLEAN);
}

static void test_referenced_twice(void **state)
{
	char path[600];

	make(path, sizeof(path), "twice.qcow2");
	put64(path, l2e_off(path, 3), get64(path, l2e_off(path, 1)));
	expect_repair(path, VD_CHECK_CLEAN);
}

static void test_reftable_over_data(void **state)
{
	char path[600];

	/* the refcount table moved onto a data cluster */
	make(path, sizeof(path), "reftable-data.qcow2");
	put64(path, 48, get64(path, l2e_off(path, 0)) & QCOW2_OFFSET_MASK);
	assert_true(check_ro(path).corruptions > 0);
}

static void test_header_qemu_refuses(void **state)
{
	char path[600];

	/* no snapshots, but a snapshot table offset QEMU will not open */
	make(path, sizeof(path), "snap-off.qcow2");
	put64(path, 64, 0x1234);
	expect_repair(path, VD_CHECK_CLEAN);
	make(path, sizeof(path), "snap-off-high.qcow2");
	put64(path, 64, 1ull << 63);
	expect_repair(path, VD_CHECK_CLEAN);
	/* autoclear data-file-raw without a data file */
	make(path, sizeof(path), "autoclear.qcow2");
	put64(path, 88, 2);
	expect_repair(path, VD_CHECK_CLEAN);
}

/* ---- 4. a flipped bit in an unused refcount-table entry ---- */

static void test_unused_reftable_entry(void **state)
{
	char path[600];
	uint8_t *b = xbuf(CB, 0x77);
	struct vd_image *img;

	for (int bit = 40; bit >= 17; bit -= 23) {
		make(path, sizeof(path), "reftable-unused.qcow2");
		put64(path, reftable_off(path) + 8, 1ull << bit);
		/* opens (past the end: writes refused until repaired), read-only too */
		img = open_img(path, false);
		assert_true(img->corrupt || bit != 40);
		vd_image_close(img);
		expect_repair(path, VD_CHECK_CLEAN);
		/* writable again, and still clean after a write */
		img = open_img(path, false);
		assert_false(img->corrupt);
		rw(img, VD_IO_WRITE, b, CB, 9 * CB);
		vd_image_close(img);
		assert_int_equal(tool_check(path, false), VD_CHECK_CLEAN);
	}
	free(b);
}

/* ---- the on-disk corrupt mark: check --repair clears it (as qemu-img check -r) ---- */

static void test_corrupt_mark_repaired(void **state)
{
	struct vd_image_opts o = { .cache = VD_CACHE_WRITEBACK, .format = "qcow2" };
	struct vd_err err = { 0 };
	uint8_t *before, *after;
	struct vd_image *img;
	char path[600];

	make(path, sizeof(path), "corrupt-mark.qcow2");
	put64(path, 72, get64(path, 72) | QCOW2_INCOMPAT_CORRUPT);
	/* refused for writing, readable */
	assert_int_equal(vd_image_open(path, &o, &img, &err), -EIO);
	before = dump(path);
	assert_int_equal(tool_check(path, true), VD_CHECK_CLEAN);
	assert_int_equal(get64(path, 72) & QCOW2_INCOMPAT_CORRUPT, 0);
	img = open_img(path, false);
	assert_false(img->corrupt);
	vd_image_close(img);
	after = dump(path);
	assert_memory_equal(before, after, SIZE);
	free(before);
	free(after);

	/* an unfixable image keeps its mark */
	make(path, sizeof(path), "corrupt-mark-l1.qcow2");
	put64(path, 72, get64(path, 72) | QCOW2_INCOMPAT_CORRUPT);
	put64(path, l1_off(path), (1ull << 63) | reftable_off(path));
	/* the mark stays exactly while a fresh check still finds corruption */
	(void)tool_check(path, true);
	assert_int_equal(check_ro(path).corruptions != 0,
			 (get64(path, 72) & QCOW2_INCOMPAT_CORRUPT) != 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_compressed_past_eof),
		cmocka_unit_test(test_l2_into_reftable),
		cmocka_unit_test(test_l2_into_l1),
		cmocka_unit_test(test_reserved_bits),
		cmocka_unit_test(test_referenced_twice),
		cmocka_unit_test(test_reftable_over_data),
		cmocka_unit_test(test_header_qemu_refuses),
		cmocka_unit_test(test_unused_reftable_entry),
		cmocka_unit_test(test_corrupt_mark_repaired),
	};

	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
