/*
 * vhd driver: on-disk structures (checksums, geometry, locators, qemu's
 * size rule), create/open of fixed, dynamic and differencing disks, the
 * allocation path (BAT, bitmaps, batmap, footer move), multi-queue first
 * writes to one block serialised by the owner, discard, check/repair of
 * leaks and bad footers, resize limits, and hostile metadata.
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
#include "vhd-test-util.h"

/* ---- structures ---- */

static void test_checksum_and_footer(void **state)
{
	struct vhd_footer f = { 0 }, g;
	uint8_t buf[512];

	(void)state;
	memcpy(f.creator_app, "tap\0", 4);
	f.type = VHD_TYPE_DYNAMIC;
	f.current_size = 10 * MiB;
	f.data_offset = 512;
	vhd_footer_encode(&f, buf);
	assert_memory_equal(buf, "conectix", 8);
	assert_int_equal(vhd_footer_decode(buf, &g), 0);
	assert_int_equal(g.current_size, 10 * MiB);
	assert_int_equal(g.type, VHD_TYPE_DYNAMIC);
	/* checksum = ~sum of bytes, the checksum field excluded */
	assert_int_equal(vhd_be32(buf + 64), vhd_checksum(buf, 512, 64));
	buf[100] ^= 1;
	assert_int_equal(vhd_footer_decode(buf, &g), -EILSEQ);
	buf[0] = 'x';
	assert_int_equal(vhd_footer_decode(buf, &g), -EINVAL);
}

static void test_geometry_and_size_rule(void **state)
{
	struct vhd_footer f = { 0 };
	uint16_t c;
	uint8_t h, s;

	(void)state;
	/* 64 MiB: the spec algorithm gives 963/8/17 (as qemu and vhd-util) */
	vhd_chs(64ull * MiB, &c, &h, &s);
	assert_int_equal(c * h * s, 130968); /* <= 131072 sectors */
	assert_int_equal(s, 17);
	/* above the maximum geometry it saturates */
	vhd_chs(4000ull << 30, &c, &h, &s);
	assert_int_equal(c, 65535);
	assert_int_equal(h, 16);
	assert_int_equal(s, 255);
	/* qemu: CHS for "qemu"/"vpc ", current_size for "tap\0", "qem2", "win " */
	f.cyls = 963;
	f.heads = 8;
	f.secs = 17;
	f.current_size = 64ull * MiB;
	memcpy(f.creator_app, "qemu", 4);
	assert_int_equal(vhd_virtual_size(&f), 130968ull * 512);
	memcpy(f.creator_app, "tap\0", 4);
	assert_int_equal(vhd_virtual_size(&f), 64ull * MiB);
	memcpy(f.creator_app, "qem2", 4);
	assert_int_equal(vhd_virtual_size(&f), 64ull * MiB);
	memcpy(f.creator_app, "vpc ", 4);
	f.cyls = 65535;
	f.heads = 16;
	f.secs = 255;
	assert_int_equal(vhd_virtual_size(&f), 64ull * MiB); /* max geometry */
	assert_int_equal(vhd_bitmap_bytes(2 * MiB), 512);
	assert_int_equal(vhd_bitmap_bytes(512), 512);
	assert_int_equal(vhd_bitmap_bytes(32 * MiB), 8192);
}

static void test_locators(void **state)
{
	const uint8_t w2ru[] = { '.', 0, '\\', 0, 'p', 0, '.', 0, 'v', 0 };
	const uint8_t w2ku[] = { 'C', 0, ':', 0, '\\', 0, 'a', 0, '\\', 0, 'b', 0 };
	const uint8_t bad[] = { 0x00, 0x01 };
	struct vhd_locator l = { .data_space = 1 };
	char out[64];

	(void)state;
	assert_int_equal(vhd_locator_to_path(VHD_PLAT_W2RU, w2ru, sizeof(w2ru), out, sizeof(out)),
			 0);
	assert_string_equal(out, "./p.v");
	assert_int_equal(vhd_locator_to_path(VHD_PLAT_W2KU, w2ku, sizeof(w2ku), out, sizeof(out)),
			 0);
	assert_string_equal(out, "/a/b");
	assert_int_equal(vhd_locator_to_path(VHD_PLAT_MACX, (const uint8_t *)"file://./x.vhd", 14,
					     out, sizeof(out)),
			 0);
	assert_string_equal(out, "./x.vhd");
	assert_int_equal(vhd_locator_to_path(VHD_PLAT_MACX, (const uint8_t *)"http://x", 8, out,
					     sizeof(out)),
			 -EINVAL);
	assert_int_equal(vhd_locator_to_path(VHD_PLAT_W2RU, bad, sizeof(bad), out, sizeof(out)),
			 -EINVAL);
	assert_int_equal(vhd_locator_to_path(VHD_PLAT_W2RU, w2ru, sizeof(w2ru), out, 3), -EINVAL);
	/* data_space: sectors per the spec, bytes in some writers */
	assert_int_equal(vhd_locator_bytes(&l), 512);
	l.data_space = 1024;
	assert_int_equal(vhd_locator_bytes(&l), 1024);
	l.data_space = 1000;
	assert_int_equal(vhd_locator_bytes(&l), 0);
}

/* ---- images ---- */

static void test_dynamic_alloc_layout(void **state)
{
	char p[512];
	struct vd_image *img;
	struct vhd_state *s;
	uint8_t *buf = xbuf(MiB, 0xab);
	uint64_t end0;
	struct vd_check_result r;
	struct vd_err err = { 0 };
	struct stat st;

	(void)state;
	path_of(p, sizeof(p), "dyn.vhd");
	create(p, 64ull * MiB, NULL, 0, NULL);
	img = open_img(p, false);
	s = vhd_st(img);
	assert_int_equal(s->type, VHD_TYPE_DYNAMIC);
	assert_int_equal(s->nr_blocks, 32);
	assert_true(s->has_batmap);
	assert_true(s->batmap_valid);
	end0 = s->data_end;
	assert_int_equal(vhd_bat_get(s, 1), VHD_BAT_UNUSED);
	/* a write straddling blocks 0 and 1 allocates both, in order */
	sync_rw(img, VD_IO_WRITE, buf, MiB, 2 * MiB - 512 * 1024);
	assert_int_not_equal(vhd_bat_get(s, 0), VHD_BAT_UNUSED);
	assert_int_not_equal(vhd_bat_get(s, 1), VHD_BAT_UNUSED);
	/* each block's data starts on a page: its bitmap sits just before one */
	assert_int_equal(((uint64_t)vhd_bat_get(s, 0) * 512 + 512) % 4096, 0);
	assert_int_equal(((uint64_t)vhd_bat_get(s, 1) * 512 + 512) % 4096, 0);
	assert_int_equal(s->data_end, VD_ALIGN_UP(end0 + 512, 4096ull) + 2 * MiB + 4096 + 2 * MiB);
	assert_true(vhd_bit_test(s->batmap, 0));
	assert_true(vhd_bit_test(s->batmap, 1));
	assert_false(vhd_bit_test(s->batmap, 2));
	expect_bytes(img, 2 * MiB - 512 * 1024, MiB, 0xab);
	expect_bytes(img, 0, 512 * 1024, 0);  /* rest of block 0 reads zero */
	expect_bytes(img, 40 * MiB, 4096, 0); /* unallocated */
	/* rewrite of an allocated block does not allocate */
	sync_rw(img, VD_IO_WRITE, buf, 4096, 0);
	/* each block's data starts on a page: its bitmap sits just before one */
	assert_int_equal(((uint64_t)vhd_bat_get(s, 0) * 512 + 512) % 4096, 0);
	assert_int_equal(((uint64_t)vhd_bat_get(s, 1) * 512 + 512) % 4096, 0);
	assert_int_equal(s->data_end, VD_ALIGN_UP(end0 + 512, 4096ull) + 2 * MiB + 4096 + 2 * MiB);
	/* discard of an allocated range reads zero afterwards */
	sync_rw(img, VD_IO_DISCARD, NULL, 4096, 0);
	expect_bytes(img, 0, 4096, 0);
	assert_int_equal(vd_image_check(img, false, &r, &err), 0);
	assert_int_equal(r.corruptions, 0);
	assert_int_equal(r.leaks, 0);
	assert_int_equal(r.allocated_units, 2);
	vd_image_close(img);
	/* the footer moved to the new end, and reopening sees the same */
	assert_int_equal(stat(p, &st), 0);
	assert_int_equal((uint64_t)st.st_size,
			 VD_ALIGN_UP(end0 + 512, 4096ull) + 2 * MiB + 4096 + 2 * MiB + 512);
	img = open_img(p, true);
	assert_true(vhd_st(img)->end_footer_ok);
	assert_true(vhd_st(img)->batmap_valid);
	expect_bytes(img, 2 * MiB, 512 * 1024, 0xab);
	vd_image_close(img);
	free(buf);
}

static void test_block_sizes(void **state)
{
	static const uint32_t sizes[] = { 4096, 512 * 1024, 8 * MiB };
	uint8_t *buf = xbuf(64 * 1024, 0x3c);
	char p[512];
	size_t i;

	(void)state;
	for (i = 0; i < VD_ARRAY_SIZE(sizes); i++) {
		struct vd_image *img;

		snprintf(p, sizeof(p), "%s/bs%zu.vhd", g_dir, i);
		create(p, 32ull * MiB, "dynamic", sizes[i], NULL);
		img = open_img(p, false);
		assert_int_equal(vhd_st(img)->block_size, sizes[i]);
		/* crosses block boundaries for the small sizes */
		sync_rw(img, VD_IO_WRITE, buf, 64 * 1024, 3 * MiB - 8192);
		vd_image_close(img);
		img = open_img(p, true);
		expect_bytes(img, 3 * MiB - 8192, 64 * 1024, 0x3c);
		expect_bytes(img, 3 * MiB - 16384, 8192, 0);
		vd_image_close(img);
	}
	free(buf);
}

static void test_fixed(void **state)
{
	char p[512];
	struct vd_image *img;
	uint8_t *buf = xbuf(8192, 0x77);
	struct vd_err err = { 0 };

	(void)state;
	path_of(p, sizeof(p), "fixed.vhd");
	create(p, 8ull * MiB, "fixed", 0, NULL);
	img = open_img(p, false);
	assert_int_equal(img->info.size_bytes, 8ull * MiB);
	sync_rw(img, VD_IO_WRITE, buf, 8192, 8 * MiB - 8192);
	assert_int_equal(vd_image_resize(img, 12ull * MiB, &err), 0);
	vd_image_close(img);
	img = open_img(p, true);
	assert_int_equal(img->info.size_bytes, 12ull * MiB);
	expect_bytes(img, 8 * MiB - 8192, 8192, 0x77);
	expect_bytes(img, 8 * MiB, 4 * MiB, 0); /* the old footer was cleared */
	vd_image_close(img);
	free(buf);
}

static void test_chain_depth3(void **state)
{
	char b[512], c1[512], c2[512], c3[512];
	struct vd_image *img;
	uint8_t *buf = xbuf(2 * MiB, 0);
	struct vd_check_result r;
	struct vd_err err = { 0 };

	(void)state;
	path_of(b, sizeof(b), "base.vhd");
	path_of(c1, sizeof(c1), "c1.vhd");
	path_of(c2, sizeof(c2), "c2.vhd");
	path_of(c3, sizeof(c3), "c3.vhd");
	create(b, 16ull * MiB, NULL, 0, NULL);
	img = open_img(b, false);
	memset(buf, 0x11, 2 * MiB);
	sync_rw(img, VD_IO_WRITE, buf, 2 * MiB, 0);
	vd_image_close(img);
	create(c1, 0, NULL, 0, "base.vhd"); /* relative to the child's directory */
	img = open_img(c1, false);
	memset(buf, 0x22, 4096);
	sync_rw(img, VD_IO_WRITE, buf, 4096, 4096);
	vd_image_close(img);
	create(c2, 0, NULL, 0, c1);
	img = open_img(c2, false);
	memset(buf, 0x33, 512);
	sync_rw(img, VD_IO_WRITE, buf, 512, 8192 + 512);
	/* bits are set only for what was written */
	assert_true(vhd_bit_test(vhd_st(img)->bitmaps[0], 17));
	assert_false(vhd_bit_test(vhd_st(img)->bitmaps[0], 16));
	vd_image_close(img);
	create(c3, 0, NULL, 0, c2);
	img = open_img(c3, false);
	assert_non_null(vd_image_backing(img));
	assert_non_null(vd_image_backing(vd_image_backing(img)));
	assert_non_null(vd_image_backing(vd_image_backing(vd_image_backing(img))));
	/* a discard in a child reads zero, not the parent's data */
	sync_rw(img, VD_IO_DISCARD, NULL, 4096, 12288);
	/* one read spanning all layers */
	sync_rw(img, VD_IO_READ, buf, 16384, 0);
	for (int i = 0; i < 16384; i++) {
		int want = i < 4096                  ? 0x11
			   : i < 8192                ? 0x22
			   : (i >= 8704 && i < 9216) ? 0x33
			   : i < 12288               ? 0x11
						     : 0;

		if (buf[i] != want) {
			fail_msg("byte %d: 0x%x, want 0x%x", i, buf[i], want);
		}
	}
	expect_bytes(img, 4 * MiB, 4096, 0); /* beyond everything written */
	assert_int_equal(vd_image_check(img, false, &r, &err), 0);
	assert_int_equal(r.corruptions + r.leaks, 0);
	vd_image_close(img);
	free(buf);
}

/* Two queues on two ioctxs (one thread) write the same unallocated block. */
struct done {
	int n;
	int64_t res;
};

static void done_cb(struct vd_io *io, int64_t result)
{
	struct done *d = io->cb_arg;

	d->n++;
	d->res = result;
}

static void test_multiqueue_first_writes(void **state)
{
	char p[512];
	struct vd_image *img;
	struct vd_ioctx *ctx[3];
	struct vd_image_queue *iq[3];
	struct vd_err err = { 0 };
	struct vd_io io[3][4];
	struct iovec iov[3][4];
	struct done d[3][4];
	void *ctxmem[3][4];
	uint8_t *bufs[3][4];
	int q, k, total = 0;

	(void)state;
	path_of(p, sizeof(p), "mq.vhd");
	create(p, 32ull * MiB, NULL, 0, NULL);
	img = open_img(p, false);
	for (q = 0; q < 3; q++) {
		assert_int_equal(vd_ioctx_create(32, &ctx[q], &err), 0);
		assert_int_equal(vd_image_queue_create(img, ctx[q], &iq[q]), 0);
	}
	memset(d, 0, sizeof(d));
	for (q = 0; q < 3; q++) {
		for (k = 0; k < 4; k++) {
			bufs[q][k] = xbuf(4096, 0x40 + q * 4 + k);
			ctxmem[q][k] = calloc(1, vd_image_io_ctx_size(img));
			iov[q][k] = (struct iovec){ bufs[q][k], 4096 };
			io[q][k] = (struct vd_io){ .op = VD_IO_WRITE,
						   .offset_bytes = (uint64_t)(q * 4 + k) * 8192 +
								   (k == 3 ? 4 * MiB : 0),
						   .len_bytes = 4096,
						   .iov = &iov[q][k],
						   .iovcnt = 1,
						   .cb = done_cb,
						   .cb_arg = &d[q][k],
						   .driver_ctx = ctxmem[q][k] };
			vd_image_submit(iq[q], &io[q][k]);
		}
	}
	for (int spin = 0; spin < 100000 && total < 12; spin++) {
		total = 0;
		for (q = 0; q < 3; q++) {
			vd_ioctx_poll(ctx[q]);
			for (k = 0; k < 4; k++) {
				total += d[q][k].n;
			}
		}
		if (total < 12) {
			usleep(50);
		}
	}
	assert_int_equal(total, 12);
	for (q = 0; q < 3; q++) {
		for (k = 0; k < 4; k++) {
			assert_int_equal(d[q][k].res, 4096);
		}
	}
	/* one block 0 and one block 2 allocated, whatever the interleaving */
	assert_int_equal(vhd_st(img)->data_end, VD_ALIGN_UP(vhd_st(img)->meta_end + 512, 4096ull) +
							2 * MiB + 4096 + 2 * MiB);
	for (q = 0; q < 3; q++) {
		vd_image_queue_destroy(iq[q]);
		vd_ioctx_destroy(ctx[q]);
		for (k = 0; k < 4; k++) {
			expect_bytes(img, io[q][k].offset_bytes, 4096, 0x40 + q * 4 + k);
			free(bufs[q][k]);
			free(ctxmem[q][k]);
		}
	}
	vd_image_close(img);
}

static void test_check_repair_leak(void **state)
{
	char p[512];
	struct vd_image *img;
	struct vd_check_result r;
	struct vd_err err = { 0 };
	uint8_t junk[4096];
	uint8_t *nine = xbuf(4096, 9);
	struct stat st;
	int fd;

	(void)state;
	path_of(p, sizeof(p), "leak.vhd");
	create(p, 16ull * MiB, NULL, 0, NULL);
	img = open_img(p, false);
	sync_rw(img, VD_IO_WRITE, nine, 4096, 0);
	free(nine);
	vd_image_close(img);
	/* a crash after the block was appended, before its BAT entry: junk at the end */
	assert_int_equal(stat(p, &st), 0);
	memset(junk, 0xee, sizeof(junk));
	fd = open(p, O_WRONLY);
	assert_true(fd >= 0);
	assert_int_equal(pwrite(fd, junk, sizeof(junk), st.st_size - 512), (ssize_t)sizeof(junk));
	close(fd);
	img = open_img(p, false);
	assert_false(vhd_st(img)->end_footer_ok);
	expect_bytes(img, 0, 4096, 9);
	assert_int_equal(vd_image_check(img, false, &r, &err), 0);
	assert_true(r.leaks > 0);
	assert_true(r.corruptions > 0); /* no footer at the end */
	assert_int_equal(vd_image_check(img, true, &r, &err), 0);
	assert_int_equal(r.leaks_fixed, r.leaks);
	assert_int_equal(r.corruptions_fixed, r.corruptions);
	assert_int_equal(vd_image_check(img, false, &r, &err), 0);
	assert_int_equal(r.leaks + r.corruptions, 0);
	vd_image_close(img);
	assert_int_equal(stat(p, &st), 0);
	img = open_img(p, false);
	assert_true(vhd_st(img)->end_footer_ok);
	/* allocating after a leak zeroes the reused space */
	vd_image_close(img);
}

static void test_resize_limits(void **state)
{
	char p[512];
	struct vd_image *img;
	struct vd_err err = { 0 };
	struct vd_image_create_opts o = { .size_bytes = 2041ull << 30 };

	(void)state;
	path_of(p, sizeof(p), "rs.vhd");
	create(p, 3ull * MiB, NULL, 0, NULL); /* 2 BAT entries: room for 4 MiB */
	img = open_img(p, false);
	assert_int_equal(vd_image_resize(img, 4ull * MiB, &err), 0);
	assert_int_equal(img->info.size_bytes, 4ull * MiB);
	assert_int_equal(vd_image_resize(img, 6ull * MiB, &err), -ENOSPC);
	assert_non_null(strstr(vd_err_msg(&err), "BAT"));
	vd_image_close(img);
	img = open_img(p, true);
	assert_int_equal(img->info.size_bytes, 4ull * MiB);
	vd_image_close(img);
	path_of(p, sizeof(p), "big.vhd");
	memset(&err, 0, sizeof(err));
	assert_int_equal(vd_image_create_opts(p, "vhd", &o, &err), -EFBIG);
	assert_non_null(strstr(vd_err_msg(&err), "2040 GiB"));
}

static void corrupt_at(const char *p, uint64_t off, const void *bytes, size_t len)
{
	int fd = open(p, O_WRONLY);

	assert_true(fd >= 0);
	assert_int_equal(pwrite(fd, bytes, len, (off_t)off), (ssize_t)len);
	close(fd);
}

static void test_hostile(void **state)
{
	char p[512];
	struct vd_image_opts o = { .format = "vhd", .io_backend = "sync" };
	struct vd_err err = { 0 };
	struct vd_image *img;
	uint8_t buf[1024];
	struct vhd_header h;
	struct vhd_footer f;
	int fd;

	(void)state;
	path_of(p, sizeof(p), "bad.vhd");
	/* header checksum */
	create(p, 8ull * MiB, NULL, 0, NULL);
	corrupt_at(p, 512 + 100, "x", 1);
	assert_int_equal(vd_image_open(p, &o, &img, &err), -EINVAL);
	assert_non_null(strstr(vd_err_msg(&err), "checksum"));
	unlink(p);
	/* a BAT entry pointing outside the file: opens, reads stay in, writes refused */
	create(p, 8ull * MiB, NULL, 0, NULL);
	corrupt_at(p, 1536, "\x7f\xff\xff\x00", 4);
	assert_int_equal(vd_image_open(p, &o, &img, &err), 0);
	assert_true(img->corrupt);
	expect_bytes(img, 0, 4096, 0);
	vd_image_close(img);
	unlink(p);
	/* a huge max_table_entries is refused before any allocation */
	create(p, 8ull * MiB, NULL, 0, NULL);
	fd = open(p, O_RDWR);
	assert_int_equal(pread(fd, buf, 1024, 512), 1024);
	assert_int_equal(vhd_header_decode(buf, &h), 0);
	h.max_table_entries = 0xfffffff0u;
	vhd_header_encode(&h, buf);
	assert_int_equal(pwrite(fd, buf, 1024, 512), 1024);
	close(fd);
	assert_true(vd_image_open(p, &o, &img, &err) < 0);
	unlink(p);
	/* larger than 2040 GiB */
	create(p, 8ull * MiB, NULL, 0, NULL);
	fd = open(p, O_RDWR);
	assert_int_equal(pread(fd, buf, 512, 0), 512);
	assert_int_equal(vhd_footer_decode(buf, &f), 0);
	f.current_size = 3000ull << 30;
	vhd_footer_encode(&f, buf);
	assert_int_equal(pwrite(fd, buf, 512, 0), 512);
	close(fd);
	memset(&err, 0, sizeof(err));
	assert_int_equal(vd_image_open(p, &o, &img, &err), -EFBIG);
	assert_non_null(strstr(vd_err_msg(&err), "2040 GiB"));
	unlink(p);
	/* a differencing disk whose parent is gone */
	{
		char par[512], ch[512];

		path_of(par, sizeof(par), "gone-parent.vhd");
		path_of(ch, sizeof(ch), "orphan.vhd");
		create(par, 4ull * MiB, NULL, 0, NULL);
		create(ch, 0, NULL, 0, par);
		unlink(par);
		memset(&err, 0, sizeof(err));
		assert_int_equal(vd_image_open(ch, &o, &img, &err), -ENOENT);
		assert_non_null(strstr(vd_err_msg(&err), "parent"));
		unlink(ch);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_checksum_and_footer),
		cmocka_unit_test(test_geometry_and_size_rule),
		cmocka_unit_test(test_locators),
		cmocka_unit_test(test_dynamic_alloc_layout),
		cmocka_unit_test(test_block_sizes),
		cmocka_unit_test(test_fixed),
		cmocka_unit_test(test_chain_depth3),
		cmocka_unit_test(test_multiqueue_first_writes),
		cmocka_unit_test(test_check_repair_leak),
		cmocka_unit_test(test_resize_limits),
		cmocka_unit_test(test_hostile),
	};

	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
