/*
 * vhd driver: VHD as other implementations write it, and VHD on a full
 * filesystem: fixed disks found by their footer (also the 511-byte one),
 * a guessed raw file with a VHD footer not resized, partial sector bitmaps
 * in dynamic disks (read as zeroes, set by writes), the BAT reserve of
 * create -o max_size, and the rollback of a block allocation that fails.
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

#include "image/vhd/vhd.h"
#include "io/fault.h"
#include "vhd-test-util.h"

/* ---- probing a fixed disk (footer at the end only) ---- */

static struct vd_image *open_probed(const char *path, struct vd_err *err)
{
	struct vd_image_opts o = { .io_backend = "uring", .cache = VD_CACHE_WRITEBACK };
	struct vd_image *img = NULL;

	assert_int_equal(vd_image_open(path, &o, &img, err), 0);
	return img;
}

static void test_fixed_probe(void **state)
{
	char p[512];
	struct vd_image *img;
	uint8_t *buf = xbuf(4096, 0x6f), b, foot[512];
	struct vd_err err = { 0 };
	struct stat st;
	char q[512];
	int fd;

	(void)state;
	path_of(p, sizeof(p), "probe-fixed.vhd");
	create(p, 8ull * MiB, "fixed", 0, NULL);
	img = open_probed(p, &err);
	assert_string_equal(img->driver->name, "vhd");
	assert_int_equal(img->info.size_bytes, 8ull * MiB);
	sync_rw(img, VD_IO_WRITE, buf, 4096, 8 * MiB - 4096);
	/* resize without a format: as a VHD (the footer moves to the new end) */
	assert_int_equal(vd_image_resize(img, 9ull * MiB, &err), 0);
	vd_image_close(img);
	assert_int_equal(stat(p, &st), 0);
	assert_int_equal((uint64_t)st.st_size, 9ull * MiB + 512);
	img = open_probed(p, &err);
	assert_string_equal(img->driver->name, "vhd");
	assert_int_equal(img->info.size_bytes, 9ull * MiB);
	expect_bytes(img, 8 * MiB - 4096, 4096, 0x6f);
	expect_bytes(img, 8 * MiB, MiB, 0);
	vd_image_close(img);

	/* a 511-byte footer (old Virtual PC): the reserved last byte left out */
	assert_int_equal(truncate(p, (off_t)(9ull * MiB + 511)), 0);
	img = open_probed(p, &err);
	assert_string_equal(img->driver->name, "vhd");
	assert_int_equal(img->info.size_bytes, 9ull * MiB);
	expect_bytes(img, 8 * MiB - 4096, 4096, 0x6f);
	vd_image_close(img);
	assert_int_equal(truncate(p, (off_t)(9ull * MiB + 512)), 0);

	/* a damaged footer: guessed raw, and resize refuses to cut it */
	fd = open(p, O_RDWR);
	assert_true(fd >= 0);
	assert_int_equal(pread(fd, &b, 1, (off_t)(9ull * MiB + 24)), 1);
	b ^= 0x5a;
	assert_int_equal(pwrite(fd, &b, 1, (off_t)(9ull * MiB + 24)), 1);
	close(fd);
	img = open_probed(p, &err);
	assert_string_equal(img->driver->name, "raw");
	assert_int_equal(vd_image_resize(img, 16ull * MiB, &err), -EINVAL);
	assert_non_null(strstr(vd_err_msg(&err), "-f vhd"));
	vd_image_close(img);
	assert_int_equal(stat(p, &st), 0);
	assert_int_equal((uint64_t)st.st_size, 9ull * MiB + 512);

	/*
	 * A raw disk whose guest wrote a dynamic disk's footer in its last
	 * sector stays raw: only a fixed disk is found by its end.
	 */
	path_of(q, sizeof(q), "probe-dyn.vhd");
	create(q, 8ull * MiB, NULL, 0, NULL);
	fd = open(q, O_RDONLY);
	assert_true(fd >= 0);
	assert_int_equal(pread(fd, foot, 512, 0), 512);
	close(fd);
	fd = open(p, O_RDWR);
	assert_true(fd >= 0);
	assert_int_equal(pwrite(fd, foot, 512, (off_t)(9ull * MiB)), 512);
	close(fd);
	img = open_probed(p, &err);
	assert_string_equal(img->driver->name, "raw");
	vd_image_close(img);
	free(buf);
}

/* ---- sector bitmaps in dynamic disks (as other writers leave them) ---- */

/*
 * Clear the bits [first, first + n) of block blk's bitmap in the file and
 * its batmap bit (with a true checksum): what vhd-util leaves after writing
 * part of a block.
 */
static void clear_bits(const char *p, uint32_t blk, uint32_t first, uint32_t n)
{
	struct vd_image *img = open_img(p, true);
	struct vhd_state *s = vhd_st(img);
	uint64_t boff = (uint64_t)vhd_bat_get(s, blk) * 512;
	uint64_t len = (uint64_t)s->batmap_sectors * 512, k;
	uint8_t *map = malloc(s->bitmap_bytes), *bm = malloc(len), hdr[512];
	uint64_t bm_off = s->batmap_off, hdr_off = s->batmap_hdr_off;
	uint32_t i, sum = 0, bytes = s->bitmap_bytes;
	int fd;

	vd_image_close(img);
	fd = open(p, O_RDWR);
	assert_true(fd >= 0 && map && bm);
	assert_int_equal(pread(fd, map, bytes, (off_t)boff), (ssize_t)bytes);
	for (i = first; i < first + n; i++) {
		map[i >> 3] &= (uint8_t) ~(0x80 >> (i & 7));
	}
	assert_int_equal(pwrite(fd, map, bytes, (off_t)boff), (ssize_t)bytes);
	assert_int_equal(pread(fd, bm, len, (off_t)bm_off), (ssize_t)len);
	bm[blk >> 3] &= (uint8_t) ~(0x80 >> (blk & 7));
	for (k = 0; k < len; k++) {
		sum += bm[k];
	}
	assert_int_equal(pwrite(fd, bm, len, (off_t)bm_off), (ssize_t)len);
	assert_int_equal(pread(fd, hdr, 512, (off_t)hdr_off), 512);
	vhd_put_be32(hdr + 24, ~sum);
	assert_int_equal(pwrite(fd, hdr, 512, (off_t)hdr_off), 512);
	close(fd);
	free(map);
	free(bm);
}

static bool file_bit(const char *p, struct vhd_state *s, uint32_t blk, uint32_t sec)
{
	uint8_t b;
	int fd = open(p, O_RDONLY);

	assert_true(fd >= 0);
	assert_int_equal(pread(fd, &b, 1, (off_t)((uint64_t)vhd_bat_get(s, blk) * 512 + sec / 8)),
			 1);
	close(fd);
	return (b >> (7 - (sec & 7))) & 1;
}

static void test_dynamic_partial_bitmap(void **state)
{
	char p[512];
	struct vd_image *img;
	struct vhd_state *s;
	uint8_t *ones = xbuf(2 * MiB, 0x11), *w = xbuf(64 * 1024, 0x22);
	struct vd_block_status bs;
	struct vd_check_result r;
	struct vd_err err = { 0 };
	uint64_t b1 = 2 * MiB;

	(void)state;
	path_of(p, sizeof(p), "partial.vhd");
	create(p, 16ull * MiB, NULL, 0, NULL);
	img = open_img(p, false);
	sync_rw(img, VD_IO_WRITE, ones, 2 * MiB, b1); /* block 1, all ones */
	vd_image_close(img);
	/* another writer's block 1: sectors 8..15 and 256..4095 never written */
	clear_bits(p, 1, 8, 8);
	clear_bits(p, 1, 256, 4096 - 256);
	img = open_img(p, false);
	s = vhd_st(img);
	expect_bytes(img, b1, 4096, 0x11);
	expect_bytes(img, b1 + 4096, 4096, 0);
	expect_bytes(img, b1 + 8192, 128 * 1024 - 8192, 0x11);
	expect_bytes(img, b1 + 128 * 1024, 2 * MiB - 128 * 1024, 0);
	/* block status: clear bits are zeroes this layer decides */
	assert_int_equal(vd_image_block_status(img, b1, 2 * MiB, &bs), 0);
	assert_int_equal(bs.len_bytes, 4096);
	assert_int_equal(bs.flags, VD_BLOCK_DATA | VD_BLOCK_ALLOCATED);
	assert_int_equal(vd_image_block_status(img, b1 + 4096, 2 * MiB - 4096, &bs), 0);
	assert_int_equal(bs.len_bytes, 4096);
	assert_int_equal(bs.flags, VD_BLOCK_ZERO | VD_BLOCK_ALLOCATED);
	assert_int_equal(vd_image_check(img, false, &r, &err), 0);
	assert_int_equal(r.corruptions + r.leaks, 0);
	/* a write over set and clear sectors sets the clear ones' bits */
	sync_rw(img, VD_IO_WRITE, w, 8192, b1 + 2048);
	assert_true(file_bit(p, s, 1, 8));
	assert_true(file_bit(p, s, 1, 15));
	assert_false(file_bit(p, s, 1, 256));
	expect_bytes(img, b1 + 2048, 8192, 0x22);
	/* a discard of clear sectors leaves them clear and zero */
	sync_rw(img, VD_IO_DISCARD, NULL, 4096, b1 + 512 * 1024);
	assert_false(file_bit(p, s, 1, 1024));
	vd_image_close(img);
	img = open_img(p, false);
	s = vhd_st(img);
	expect_bytes(img, b1, 2048, 0x11);
	expect_bytes(img, b1 + 2048, 8192, 0x22);
	expect_bytes(img, b1 + 10240, 128 * 1024 - 10240, 0x11);
	expect_bytes(img, b1 + 128 * 1024, 2 * MiB - 128 * 1024, 0);
	assert_false(vhd_bit_test(s->batmap, 1));
	/* filling the rest makes the block full: the batmap says so again */
	sync_rw(img, VD_IO_WRITE, ones, 2 * MiB - 128 * 1024, b1 + 128 * 1024);
	assert_true(vhd_bit_test(s->batmap, 1));
	assert_true(file_bit(p, s, 1, 4095));
	assert_int_equal(vd_image_check(img, false, &r, &err), 0);
	assert_int_equal(r.corruptions + r.leaks, 0);
	vd_image_close(img);
	img = open_img(p, true);
	assert_ptr_equal(vhd_st(img)->bitmaps[1], vhd_st(img)->full_bitmap);
	expect_bytes(img, b1 + 128 * 1024, 2 * MiB - 128 * 1024, 0x11);
	vd_image_close(img);
	free(ones);
	free(w);
}

static void test_bat_reserve(void **state)
{
	char p[512];
	struct vd_image *img;
	struct vd_image_create_opts o = { .size_bytes = 8ull * MiB, .max_size_bytes = 64ull * MiB };
	uint8_t *buf = xbuf(MiB, 0x3d);
	struct vd_check_result r;
	struct vd_err err = { 0 };
	uint64_t end;

	(void)state;
	path_of(p, sizeof(p), "reserve.vhd");
	assert_int_equal(vd_image_create_opts(p, "vhd", &o, &err), 0);
	img = open_img(p, false);
	assert_int_equal(img->info.size_bytes, 8ull * MiB);
	assert_int_equal(vhd_st(img)->header.max_table_entries, 32);
	assert_int_equal(vhd_st(img)->nr_blocks, 4);
	sync_rw(img, VD_IO_WRITE, buf, MiB, 7 * MiB);
	end = vhd_st(img)->data_end;
	/* grows within the reserve: no data moves, the new range is writable */
	assert_int_equal(vd_image_resize(img, 64ull * MiB, &err), 0);
	assert_int_equal(vhd_st(img)->nr_blocks, 32);
	assert_int_equal(vhd_st(img)->data_end, end);
	sync_rw(img, VD_IO_WRITE, buf, MiB, 63 * MiB);
	assert_int_equal(vd_image_resize(img, 64ull * MiB + 2 * MiB, &err), -ENOSPC);
	assert_int_equal(vd_image_check(img, false, &r, &err), 0);
	assert_int_equal(r.corruptions + r.leaks, 0);
	vd_image_close(img);
	img = open_img(p, true);
	assert_int_equal(img->info.size_bytes, 64ull * MiB);
	expect_bytes(img, 7 * MiB, MiB, 0x3d);
	expect_bytes(img, 8 * MiB, 55 * MiB, 0);
	expect_bytes(img, 63 * MiB, MiB, 0x3d);
	vd_image_close(img);
	/* a reserve below the size, or on a fixed disk, is refused */
	o.max_size_bytes = 4ull * MiB;
	err.errnum = 0;
	assert_int_equal(vd_image_create_opts(p, "vhd", &o, &err), -EINVAL);
	o.max_size_bytes = 64ull * MiB;
	o.subformat = "fixed";
	err.errnum = 0;
	assert_int_equal(vd_image_create_opts(p, "vhd", &o, &err), -EINVAL);
	free(buf);
}

/* ---- a full filesystem ---- */

static struct vd_image *open_fault_img(const char *path)
{
	struct vd_image_opts o = { .format = "vhd", .io_backend = "fault" };
	struct vd_err err = { 0 };
	struct vd_image *img = NULL;

	assert_int_equal(vd_image_open(path, &o, &img, &err), 0);
	return img;
}

static int64_t try_rw(struct vd_image *img, enum vd_io_op op, void *buf, uint64_t len, uint64_t off)
{
	struct vd_image_sync *s;
	struct vd_err err = { 0 };
	int64_t ret;

	assert_int_equal(vd_image_sync_open(img, &s, &err), 0);
	ret = vd_image_sync_io(s, op, buf, len, off);
	vd_image_sync_close(s);
	return ret;
}

/* The file is as before the failed allocation: footer at the end, BAT entry unused. */
static void expect_rolled_back(const char *p, struct vhd_state *s, uint64_t end0, uint32_t blk)
{
	struct vhd_footer f;
	uint8_t buf[512];
	struct stat st;
	int fd;

	assert_int_equal(s->data_end, end0);
	assert_int_equal(vhd_bat_get(s, blk), VHD_BAT_UNUSED);
	assert_int_equal(stat(p, &st), 0);
	assert_int_equal((uint64_t)st.st_size, end0 + 512);
	fd = open(p, O_RDONLY);
	assert_true(fd >= 0);
	assert_int_equal(pread(fd, buf, 512, st.st_size - 512), 512);
	assert_int_equal(vhd_footer_decode(buf, &f), 0);
	assert_int_equal(pread(fd, buf, 4, (off_t)(s->header.table_offset + 4ull * blk)), 4);
	assert_int_equal(vhd_be32(buf), VHD_BAT_UNUSED);
	close(fd);
}

static void test_enospc_rollback(void **state)
{
	char p[512];
	struct vd_image *img;
	struct vhd_state *s;
	struct vd_file *f;
	uint8_t *buf = xbuf(64 * 1024, 0x4e);
	struct vd_check_result r;
	struct vd_err err = { 0 };
	uint64_t end0;
	int i;

	(void)state;
	path_of(p, sizeof(p), "enospc.vhd");
	create(p, 64ull * MiB, NULL, 0, NULL);
	img = open_fault_img(p);
	s = vhd_st(img);
	f = vd_fault_lookup(p);
	assert_non_null(f);
	sync_rw(img, VD_IO_WRITE, buf, 4096, 0); /* block 0 allocated */
	end0 = s->data_end;
	/* room for the bitmap and part of the data only, many times over */
	assert_int_equal(vd_fault_set_full(f, end0 + 4096 + MiB), 0);
	for (i = 0; i < 20; i++) {
		assert_int_equal(try_rw(img, VD_IO_WRITE, buf, 64 * 1024, 6 * MiB + 8192), -ENOSPC);
		expect_rolled_back(p, s, end0, 3);
	}
	/* no room even for the footer at the old end's next block */
	assert_int_equal(vd_fault_set_full(f, end0 + 512), 0);
	assert_int_equal(try_rw(img, VD_IO_WRITE, buf, 4096, 6 * MiB), -ENOSPC);
	expect_rolled_back(p, s, end0, 3);
	/* the BAT write itself fails (bitmap, data, footer, then the BAT) */
	assert_int_equal(vd_fault_set_full(f, 0), 0);
	assert_int_equal(vd_fault_inject_eio(f, VD_FAULT_WRITE, 4), 0);
	assert_int_equal(try_rw(img, VD_IO_WRITE, buf, 4096, 6 * MiB), -EIO);
	expect_rolled_back(p, s, end0, 3);
	assert_int_equal(vd_image_check(img, false, &r, &err), 0);
	assert_int_equal(r.corruptions + r.leaks, 0);
	/* space is back: the write lands where the failed one would have */
	assert_int_equal(try_rw(img, VD_IO_WRITE, buf, 64 * 1024, 6 * MiB + 8192), 64 * 1024);
	assert_int_equal(vhd_bat_get(s, 3) * 512ull, VD_ALIGN_UP(end0 + 512, 4096ull) - 512);
	vd_image_close(img);
	img = open_img(p, false);
	assert_true(vhd_st(img)->end_footer_ok);
	expect_bytes(img, 6 * MiB + 8192, 64 * 1024, 0x4e);
	expect_bytes(img, 6 * MiB, 8192, 0);
	expect_bytes(img, 0, 4096, 0x4e);
	assert_int_equal(vd_image_check(img, false, &r, &err), 0);
	assert_int_equal(r.corruptions + r.leaks, 0);
	assert_int_equal(r.allocated_units, 2);
	vd_image_close(img);
	free(buf);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_fixed_probe),
		cmocka_unit_test(test_dynamic_partial_bitmap),
		cmocka_unit_test(test_bat_reserve),
		cmocka_unit_test(test_enospc_rollback),
	};

	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
