/*
 * qcow2 driver on a full disk (issue 13): the fault backend's disk-full cap
 * (vd_fault_set_full) and injected EIO make allocating writes, new L2
 * tables, new refcount blocks and tables, fallocate-ahead and the
 * metadata write-back fail; each test then checks that the failure left
 * nothing behind (no leak in memory, the cursor back), that the image is
 * consistent, and that once space returns the writes land and read back,
 * before and after a reopen.
 */
#define _GNU_SOURCE
#include <errno.h>
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
#include "image/qcow2/qcow2-int.h"
#include "io/fault.h"

static char dir[512];
static char path[600];

static int group_setup(void **state)
{
	const char *b = getenv("VDISK_BUILD_DIR");

	(void)state;
	snprintf(dir, sizeof(dir), "%s/qcow2-enospc-XXXXXX", b && *b ? b : "/var/tmp");
	if (!mkdtemp(dir)) {
		return -1;
	}
	snprintf(path, sizeof(path), "%s/full.qcow2", dir);
	return 0;
}

static int group_teardown(void **state)
{
	char cmd[600];

	(void)state;
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	return system(cmd) == 0 ? 0 : -1;
}

static void create(uint64_t size, uint32_t cluster_bytes)
{
	struct vd_image_create_opts o = { .size_bytes = size,
					  .cluster_bytes = cluster_bytes,
					  .flags = VD_IMAGE_CREATE_OVERWRITE };
	struct vd_err err = { 0 };

	if (vd_image_create_opts(path, "qcow2", &o, &err) < 0) {
		fail_msg("create %s: %s", path, vd_err_msg(&err));
	}
}

/* The image through the fault backend; *f its fault file. */
static struct vd_image *open_fault(struct vd_file **f, struct vd_image_sync **s)
{
	struct vd_image_opts o = { .cache = VD_CACHE_WRITEBACK,
				   .format = "qcow2",
				   .io_backend = "fault" };
	struct vd_err err = { 0 };
	struct vd_image *img;
	char fpath[620];

	snprintf(fpath, sizeof(fpath), "sync:%s", path);
	if (vd_image_open(fpath, &o, &img, &err) < 0) {
		fail_msg("open %s: %s", fpath, vd_err_msg(&err));
	}
	*f = vd_fault_lookup(path);
	assert_non_null(*f);
	assert_int_equal(vd_image_sync_open(img, s, &err), 0);
	return img;
}

static void close_img(struct vd_image *img, struct vd_image_sync *s)
{
	vd_image_sync_close(s);
	vd_image_close(img);
}

static uint8_t *pattern(uint64_t len, uint64_t seed)
{
	uint8_t *p = NULL;

	assert_int_equal(posix_memalign((void **)&p, 4096, len), 0);
	for (uint64_t i = 0; i < len; i++) {
		p[i] = (uint8_t)(seed * 131 + i / 512);
	}
	return p;
}

static int64_t wr(struct vd_image_sync *s, uint64_t off, uint64_t len, uint64_t seed)
{
	uint8_t *p = pattern(len, seed);
	int64_t r = vd_image_sync_io(s, VD_IO_WRITE, p, len, off);

	free(p);
	return r;
}

static void expect_data(struct vd_image_sync *s, uint64_t off, uint64_t len, uint64_t seed)
{
	uint8_t *want = pattern(len, seed), *got = pattern(len, seed + 7);

	assert_int_equal(vd_image_sync_io(s, VD_IO_READ, got, len, off), (int64_t)len);
	if (memcmp(want, got, len) != 0) {
		fail_msg("data at %llu (seed %llu) does not read back", (unsigned long long)off,
			 (unsigned long long)seed);
	}
	free(want);
	free(got);
}

/* Nothing corrupt, exactly `leaks` leaked clusters, the image not marked corrupt. */
static void expect_clean(struct vd_image *img, uint64_t leaks)
{
	struct vd_check_result res;
	struct vd_err err = { 0 };

	assert_false(img->corrupt);
	assert_int_equal(vd_image_check(img, false, &res, &err), 0);
	if (res.corruptions || res.leaks != leaks) {
		fail_msg("check: %llu corruptions, %llu leaks (want %llu): %s",
			 (unsigned long long)res.corruptions, (unsigned long long)res.leaks,
			 (unsigned long long)leaks, res.first_problem);
	}
}

static uint64_t file_bytes(void)
{
	struct stat st;

	assert_int_equal(stat(path, &st), 0);
	return (uint64_t)st.st_size;
}

static void flush_ok(struct vd_image_sync *s)
{
	assert_int_equal(vd_image_sync_io(s, VD_IO_FLUSH, NULL, 0, 0), 0);
}

/*
 * Data clusters: with the disk full every allocating write fails, many
 * times over; the cursor stays put, nothing leaks, a FLUSH works (the
 * refcount blocks are in place), and once space returns new writes land.
 */
static void test_data_full(void **state)
{
	struct vd_image_sync *s;
	struct vd_image *img;
	struct qcow2_state *qs;
	struct vd_file *f;
	uint64_t end, cursor;

	(void)state;
	create(1ull << 30, 65536);
	img = open_fault(&f, &s);
	qs = qcow2_s(img);
	for (uint64_t i = 0; i < 8; i++) {
		assert_int_equal(wr(s, i << 20, 4096, i), 4096);
	}
	flush_ok(s);
	end = qs->file_end_bytes;
	cursor = qs->free_cursor;
	assert_int_equal(vd_fault_set_full(f, end), 0);
	for (uint64_t i = 8; i < 300; i++) {
		assert_int_equal(wr(s, i << 20, 4096, i), -ENOSPC);
	}
	/* every retry reused the same cluster: nothing walked the file */
	assert_int_equal(qs->free_cursor, cursor);
	assert_true(qs->file_end_bytes <= end + 65536);
	/* overwrites of allocated clusters still work */
	assert_int_equal(wr(s, 0, 4096, 100), 4096);
	flush_ok(s);
	expect_clean(img, 0);
	/* space returns */
	assert_int_equal(vd_fault_set_full(f, 0), 0);
	for (uint64_t i = 8; i < 40; i++) {
		assert_int_equal(wr(s, i << 20, 8192, i), 8192);
	}
	flush_ok(s);
	expect_clean(img, 0);
	close_img(img, s);
	assert_true(file_bytes() < end + 64 * 65536);
	img = open_fault(&f, &s);
	expect_data(s, 0, 4096, 100);
	for (uint64_t i = 1; i < 8; i++) {
		expect_data(s, i << 20, 4096, i);
	}
	for (uint64_t i = 8; i < 40; i++) {
		expect_data(s, i << 20, 8192, i);
	}
	expect_clean(img, 0);
	close_img(img, s);
}

/*
 * A write that needs a new L2 table: the data cluster fits, the table
 * does not. Both go back; the L1 entry never points at the table.
 */
static void test_l2_full(void **state)
{
	struct vd_image_sync *s;
	struct vd_image *img;
	struct qcow2_state *qs;
	struct vd_file *f;
	uint64_t end, cursor, gib = 1ull << 30;

	(void)state;
	create(2ull << 30, 65536);
	img = open_fault(&f, &s);
	qs = qcow2_s(img);
	assert_int_equal(wr(s, 0, 65536, 1), 65536);
	flush_ok(s);
	end = qs->file_end_bytes;
	cursor = qs->free_cursor;
	/* room for the data cluster, not for its L2 table */
	assert_int_equal(vd_fault_set_full(f, end + 65536), 0);
	for (int i = 0; i < 50; i++) {
		assert_int_equal(wr(s, gib + (uint64_t)i * 65536, 65536, 2), -ENOSPC);
	}
	assert_int_equal(qs->free_cursor, cursor);
	assert_int_equal(qs->l1[gib / (qs->l2_entries * qs->cluster_bytes)], 0);
	flush_ok(s);
	expect_clean(img, 0);
	assert_int_equal(vd_fault_set_full(f, 0), 0);
	assert_int_equal(wr(s, gib, 65536, 3), 65536);
	flush_ok(s);
	close_img(img, s);
	img = open_fault(&f, &s);
	expect_data(s, 0, 65536, 1);
	expect_data(s, gib, 65536, 3);
	expect_clean(img, 0);
	close_img(img, s);
}

/*
 * 512-byte clusters: a refcount block covers 128 KiB and the first table
 * 8 MiB, so filling past 8 MiB with the disk full on the way exercises new
 * refcount blocks (written by the write-back: the FLUSH fails, then
 * retries) and the growth of the refcount table (written before the
 * header names it: undone when it cannot be). The image is never marked
 * corrupt and the data acknowledged reads back.
 */
static void test_refcounts_full(void **state)
{
	struct vd_image_sync *s;
	struct vd_image *img;
	struct qcow2_state *qs;
	struct vd_file *f;
	uint64_t acked = 0, failed = 0, flush_failed = 0, n = 0;
	uint64_t cap_step = 64 << 10, entries0;

	(void)state;
	create(64ull << 20, 512);
	img = open_fault(&f, &s);
	qs = qcow2_s(img);
	entries0 = qs->reftable_entries;
	/* grow in steps: each step's cap is hit, then lifted a little */
	for (uint64_t cap = file_bytes() + cap_step;
	     qs->reftable_entries == entries0 || n < (20ull << 20) / 4096; cap += cap_step) {
		int64_t r;

		assert_int_equal(vd_fault_set_full(f, cap), 0);
		do {
			r = wr(s, n * 4096, 4096, n);
			if (r == 4096) {
				acked = ++n;
			} else {
				assert_int_equal(r, -ENOSPC);
				failed++;
			}
		} while (r == 4096);
		if (vd_image_sync_io(s, VD_IO_FLUSH, NULL, 0, 0) < 0) {
			flush_failed++;
		}
		assert_false(img->corrupt);
		assert_true(n < (40ull << 20) / 4096);
	}
	assert_true(qs->reftable_entries > entries0);
	assert_true(failed > 0);
	print_message("refcounts: %llu writes acknowledged, %llu ENOSPC, %llu flushes failed\n",
		      (unsigned long long)acked, (unsigned long long)failed,
		      (unsigned long long)flush_failed);
	assert_int_equal(vd_fault_set_full(f, 0), 0);
	flush_ok(s);
	expect_clean(img, 0);
	close_img(img, s);
	img = open_fault(&f, &s);
	for (uint64_t i = 0; i < acked; i++) {
		expect_data(s, i * 4096, 4096, i);
	}
	expect_clean(img, 0);
	close_img(img, s);
}

/*
 * fallocate-ahead refused for lack of space: the allocation goes on
 * (the write itself fits), preallocation stays on and resumes once space
 * returns.
 */
static void test_prealloc_full(void **state)
{
	struct vd_image_sync *s;
	struct vd_image *img;
	struct qcow2_state *qs;
	struct vd_file *f;
	uint64_t end;

	(void)state;
	create(1ull << 30, 65536);
	img = open_fault(&f, &s);
	qs = qcow2_s(img);
	assert_true(qs->prealloc);
	end = qs->prealloc_end_bytes;
	/* room for a few clusters, not for the 4 MiB step */
	assert_int_equal(vd_fault_set_full(f, end + 4 * 65536), 0);
	assert_int_equal(wr(s, 0, 4096, 1), 4096);
	assert_true(qs->prealloc);
	assert_int_equal(qs->prealloc_end_bytes, end);
	assert_int_equal(vd_fault_set_full(f, 0), 0);
	assert_int_equal(wr(s, 1 << 20, 4096, 2), 4096);
	assert_true(qs->prealloc_end_bytes > end);
	flush_ok(s);
	expect_clean(img, 0);
	close_img(img, s);
	img = open_fault(&f, &s);
	expect_data(s, 0, 4096, 1);
	expect_data(s, 1 << 20, 4096, 2);
	expect_clean(img, 0);
	close_img(img, s);
}

/*
 * The metadata write-back fails (EIO on one of its writes, or on its first
 * fdatasync): the FLUSH reports it and the image is not marked corrupt.
 * Either the next FLUSH writes it all (then a reopen sees everything), or
 * the power is cut right after the failure (then a reopen sees a
 * consistent image: at worst leaks).
 */
static void test_writeback_eio(void **state)
{
	static const enum vd_fault_op ops[] = { VD_FAULT_WRITE, VD_FAULT_FLUSH };

	(void)state;
	for (unsigned int k = 0; k < 2 * VD_ARRAY_SIZE(ops); k++) {
		bool cut = k & 1;
		struct vd_image_sync *s;
		struct vd_image *img;
		struct vd_file *f;
		struct vd_check_result res;
		struct vd_err err = { 0 };

		create(1ull << 30, 65536);
		img = open_fault(&f, &s);
		for (uint64_t i = 0; i < 16; i++) {
			assert_int_equal(wr(s, i << 22, 4096, i + k), 4096);
		}
		assert_int_equal(vd_fault_inject_eio(f, ops[k / 2], 1), 0);
		assert_int_equal(vd_image_sync_io(s, VD_IO_FLUSH, NULL, 0, 0), -EIO);
		assert_false(img->corrupt);
		if (cut) {
			assert_true(vd_fault_cut_power(f, k, VD_FAULT_CUT_RANDOM) >= 0);
		} else {
			flush_ok(s);
		}
		close_img(img, s);
		img = open_fault(&f, &s);
		assert_int_equal(vd_image_check(img, false, &res, &err), 0);
		assert_int_equal(res.corruptions, 0);
		if (!cut) {
			assert_int_equal(res.leaks, 0);
			for (uint64_t i = 0; i < 16; i++) {
				expect_data(s, i << 22, 4096, i + k);
			}
		}
		close_img(img, s);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_data_full),      cmocka_unit_test(test_l2_full),
		cmocka_unit_test(test_refcounts_full), cmocka_unit_test(test_prealloc_full),
		cmocka_unit_test(test_writeback_eio),
	};

	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
