/*
 * qcow2 driver: hostile headers, the request path (allocation, COW over a
 * backing file, discard, overlapping allocations, forwarding from a second
 * queue to the metadata owner), a tiny L2 cache, lazy refcounts, check and
 * repair, resize.
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
#include "image/qcow2/qcow2-int.h"

static char dir[512];

static void path_of(char *buf, size_t len, const char *name)
{
	snprintf(buf, len, "%s/%s", dir, name);
}

static int group_setup(void **state)
{
	const char *b = getenv("VDISK_BUILD_DIR");

	snprintf(dir, sizeof(dir), "%s/qcow2-unit-XXXXXX", b && *b ? b : "/var/tmp");
	if (!mkdtemp(dir)) {
		return -1;
	}
	return 0;
}

static int group_teardown(void **state)
{
	char cmd[600];

	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	return system(cmd) == 0 ? 0 : -1;
}

static void create(const char *path, uint64_t size, const struct vd_image_create_opts *extra)
{
	struct vd_image_create_opts o = { 0 };
	struct vd_err err = { 0 };

	if (extra) {
		o = *extra;
	}
	o.size_bytes = size;
	o.flags = VD_IMAGE_CREATE_OVERWRITE;
	if (vd_image_create_opts(path, "qcow2", &o, &err) < 0) {
		fail_msg("create %s: %s", path, vd_err_msg(&err));
	}
}

static struct vd_image *open_img(const char *path, const struct vd_image_opts *extra)
{
	struct vd_image_opts o = { .cache = VD_CACHE_WRITEBACK, .format = "qcow2" };
	struct vd_err err = { 0 };
	struct vd_image *img;

	if (extra) {
		o = *extra;
		o.format = "qcow2";
	}
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

static void sio(struct vd_image_sync *s, enum vd_io_op op, void *buf, uint64_t len, uint64_t off)
{
	int64_t r = vd_image_sync_io(s, op, buf, len, off);

	assert_int_equal(r, (op == VD_IO_READ || op == VD_IO_WRITE) ? (int64_t)len : 0);
}

static void expect_fill(struct vd_image_sync *s, uint64_t off, uint64_t len, int byte)
{
	uint8_t *b = xbuf(len, 0xee);

	sio(s, VD_IO_READ, b, len, off);
	for (uint64_t i = 0; i < len; i++) {
		if (b[i] != byte) {
			fail_msg("byte %llu is 0x%x, want 0x%x", (unsigned long long)(off + i),
				 b[i], byte);
		}
	}
	free(b);
}

/* vd_image_check without repair: nothing corrupt, exactly `leaks` leaked clusters. */
static void expect_clean(struct vd_image *img, uint64_t leaks)
{
	struct vd_check_result res;
	struct vd_err err = { 0 };

	assert_int_equal(vd_image_check(img, false, &res, &err), 0);
	assert_int_equal(res.corruptions, 0);
	assert_int_equal(res.leaks, leaks);
}

/* ---- hostile headers ---- */

static void put32(uint8_t *p, uint32_t v)
{
	qcow2_put_be32(p, v);
}

static void put64(uint8_t *p, uint64_t v)
{
	qcow2_put_be64(p, v);
}

/* Create a valid image, patch its first cluster, expect open to fail cleanly. */
static void hostile(const char *what, void (*patch)(uint8_t *hdr), int want_errno,
		    const char *want_msg)
{
	char path[600];
	struct vd_image_opts o = { .cache = VD_CACHE_WRITEBACK,
				   .format = "qcow2",
				   .readonly = true };
	struct vd_err err = { 0 };
	struct vd_image *img = NULL;
	uint8_t hdr[4096];
	int fd, ret;

	path_of(path, sizeof(path), "hostile.qcow2");
	create(path, 64u << 20, NULL);
	fd = open(path, O_RDWR);
	assert_true(fd >= 0);
	assert_int_equal(pread(fd, hdr, sizeof(hdr), 0), (ssize_t)sizeof(hdr));
	patch(hdr);
	assert_int_equal(pwrite(fd, hdr, sizeof(hdr), 0), (ssize_t)sizeof(hdr));
	close(fd);
	ret = vd_image_open(path, &o, &img, &err);
	if (ret == 0) {
		vd_image_close(img);
		fail_msg("%s: opened", what);
	}
	assert_int_equal(ret, -want_errno);
	if (want_msg && !strstr(vd_err_msg(&err), want_msg)) {
		fail_msg("%s: message '%s' lacks '%s'", what, vd_err_msg(&err), want_msg);
	}
}

static void p_magic(uint8_t *h)
{
	put32(h, 0x12345678);
}
static void p_version(uint8_t *h)
{
	put32(h + 4, 4);
}
static void p_incompat(uint8_t *h)
{
	put64(h + 72, 1ull << 40);
}
static void p_datafile(uint8_t *h)
{
	put64(h + 72, 1ull << 2);
}
static void p_cbits(uint8_t *h)
{
	put32(h + 20, 30);
}
static void p_l1huge(uint8_t *h)
{
	put32(h + 36, 0x7fffffff);
}
static void p_l1off(uint8_t *h)
{
	put64(h + 40, 1ull << 50);
}
static void p_rtoff(uint8_t *h)
{
	put64(h + 48, 1ull << 50);
}
static void p_rtclusters(uint8_t *h)
{
	put32(h + 56, 0x10000000);
}
static void p_snaps(uint8_t *h)
{
	put32(h + 60, 1000000);
	put64(h + 64, 65536);
}
static void p_compress(uint8_t *h)
{
	put64(h + 72, 1ull << 3);
	h[104] = 1;
}
static void p_crypt(uint8_t *h)
{
	put32(h + 32, 1);
}
static void p_hdrlen(uint8_t *h)
{
	put32(h + 100, 0xffffff00);
}
static void p_refo(uint8_t *h)
{
	put32(h + 96, 7);
}
static void p_size(uint8_t *h)
{
	put64(h + 24, 1ull << 62);
}
static void p_ext(uint8_t *h)
{
	put32(h + 112, 0xe2792aca);
	put32(h + 116, 0xfffffff0);
}
static void p_backing(uint8_t *h)
{
	put64(h + 8, 4000);
	put32(h + 16, 5000);
}
static void p_extl2small(uint8_t *h)
{
	put64(h + 72, 1ull << 4);
	put32(h + 20, 12);
}

static void test_hostile_headers(void **state)
{
	hostile("magic", p_magic, EINVAL, "not a qcow2");
	hostile("version", p_version, ENOTSUP, "version 4");
	hostile("unknown incompatible bit", p_incompat, ENOTSUP, "incompatible");
	hostile("external data file", p_datafile, ENOTSUP, "external data");
	hostile("cluster bits", p_cbits, EINVAL, "cluster size");
	hostile("L1 size", p_l1huge, EFBIG, "L1");
	hostile("L1 offset", p_l1off, EINVAL, "L1");
	hostile("reftable offset", p_rtoff, EINVAL, "refcount table");
	hostile("reftable size", p_rtclusters, EINVAL, "refcount table");
	hostile("snapshots", p_snaps, EINVAL, "snapshot");
	hostile("compression type", p_compress, ENOTSUP, "compression");
	hostile("encryption", p_crypt, ENOTSUP, "encrypted");
	hostile("header length", p_hdrlen, EINVAL, "header length");
	hostile("refcount order", p_refo, EINVAL, "refcount order");
	hostile("virtual size", p_size, EFBIG, "too large");
	hostile("extension length", p_ext, EINVAL, "extension");
	hostile("backing name", p_backing, EINVAL, "backing");
	hostile("extended L2 with small clusters", p_extl2small, EINVAL, "extended L2");
}

/* A dirty bit refuses nothing; a corrupt bit refuses writing. */
static void test_corrupt_bit(void **state)
{
	char path[600];
	struct vd_image_opts o = { .cache = VD_CACHE_WRITEBACK, .format = "qcow2" };
	struct vd_err err = { 0 };
	struct vd_image *img;
	uint8_t b[8];
	int fd;

	path_of(path, sizeof(path), "corrupt.qcow2");
	create(path, 8u << 20, NULL);
	fd = open(path, O_RDWR);
	put64(b, QCOW2_INCOMPAT_CORRUPT);
	assert_int_equal(pwrite(fd, b, 8, 72), 8);
	close(fd);
	assert_int_equal(vd_image_open(path, &o, &img, &err), -EIO);
	assert_non_null(strstr(vd_err_msg(&err), "corrupt"));
	o.readonly = true;
	assert_int_equal(vd_image_open(path, &o, &img, &err), 0);
	assert_true(img->info.corrupt);
	vd_image_close(img);
}

/* ---- data path ---- */

static void test_rw_discard(void **state)
{
	char path[600];
	struct vd_image_sync *s;
	struct vd_image *img;
	struct vd_err err = { 0 };
	uint8_t *b = xbuf(256 << 10, 0x5a);
	struct vd_block_status bs;

	path_of(path, sizeof(path), "rw.qcow2");
	create(path, 64u << 20, NULL);
	img = open_img(path, NULL);
	assert_int_equal(vd_image_sync_open(img, &s, &err), 0);
	expect_fill(s, 0, 128 << 10, 0);
	/* across cluster boundaries, unaligned to clusters */
	sio(s, VD_IO_WRITE, b, 200 << 10, 3 * 512);
	expect_fill(s, 3 * 512, 200 << 10, 0x5a);
	expect_fill(s, 0, 3 * 512, 0);
	expect_fill(s, 3 * 512 + (200 << 10), 4096, 0);
	/* discard: whole clusters deallocate, the partial rest reads zero */
	sio(s, VD_IO_DISCARD, NULL, 128 << 10, 4096);
	expect_fill(s, 4096, 128 << 10, 0);
	expect_fill(s, 3 * 512, 4096 - 3 * 512, 0x5a);
	expect_fill(s, 4096 + (128 << 10), 16 << 10, 0x5a);
	assert_int_equal(vd_image_block_status(img, 65536, 65536, &bs), 0);
	assert_int_equal(bs.flags & VD_BLOCK_DATA, 0);
	sio(s, VD_IO_WRITE_ZEROES, NULL, 8192, 200 << 10);
	expect_fill(s, 200 << 10, 8192, 0);
	sio(s, VD_IO_FLUSH, NULL, 0, 0);
	vd_image_sync_close(s);
	vd_image_close(img);
	/* the same after reopening */
	img = open_img(path, NULL);
	assert_int_equal(vd_image_sync_open(img, &s, &err), 0);
	expect_fill(s, 4096 + (128 << 10), 16 << 10, 0x5a);
	expect_fill(s, 200 << 10, 8192, 0);
	vd_image_sync_close(s);
	expect_clean(img, 0);
	vd_image_close(img);
	free(b);
}

/* COW over a backing file, discard making zero clusters (v3) and zeroes (v2). */
static void backing_case(unsigned int compat, bool extl2)
{
	char base[600], top[600];
	struct vd_image_create_opts o = { .backing_file = "base.qcow2",
					  .compat = compat,
					  .extended_l2 = extl2 };
	struct vd_image_sync *s;
	struct vd_image *img;
	struct vd_err err = { 0 };
	uint8_t *b = xbuf(1 << 20, 0x11);

	path_of(base, sizeof(base), "base.qcow2");
	path_of(top, sizeof(top), "top.qcow2");
	create(base, 16u << 20, NULL);
	img = open_img(base, NULL);
	assert_int_equal(vd_image_sync_open(img, &s, &err), 0);
	sio(s, VD_IO_WRITE, b, 1 << 20, 0);
	vd_image_sync_close(s);
	vd_image_close(img);

	create(top, 0, &o);
	img = open_img(top, NULL);
	assert_non_null(img->backing);
	assert_int_equal(img->info.size_bytes, 16u << 20);
	assert_int_equal(vd_image_sync_open(img, &s, &err), 0);
	expect_fill(s, 0, 1 << 20, 0x11);
	memset(b, 0x22, 4096);
	sio(s, VD_IO_WRITE, b, 4096, 70000 & ~511u);
	expect_fill(s, 65536, (70000 & ~511u) - 65536, 0x11);
	expect_fill(s, 70000 & ~511u, 4096, 0x22);
	expect_fill(s, (70000 & ~511u) + 4096, 4096, 0x11);
	/* discard one whole cluster: must read zeroes, not the backing */
	sio(s, VD_IO_DISCARD, NULL, 65536, 4 * 65536);
	expect_fill(s, 4 * 65536, 65536, 0);
	expect_fill(s, 5 * 65536, 65536, 0x11);
	/* partial discard over the backing */
	sio(s, VD_IO_DISCARD, NULL, 1024, 6 * 65536 + 512);
	expect_fill(s, 6 * 65536, 512, 0x11);
	expect_fill(s, 6 * 65536 + 512, 1024, 0);
	expect_fill(s, 6 * 65536 + 1536, 512, 0x11);
	vd_image_sync_close(s);
	expect_clean(img, 0);
	vd_image_close(img);
	free(b);
}

static void test_backing(void **state)
{
	backing_case(3, false);
	backing_case(2, false);
	backing_case(3, true);
}

/* ---- two queues: forwarding to the owner, overlapping allocations ---- */

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

static void test_two_queues_overlap(void **state)
{
	char path[600];
	struct vd_ioctx *c0, *c1;
	struct vd_image_queue *q0, *q1;
	struct vd_image *img;
	struct vd_err err = { 0 };
	struct vd_io io[4];
	struct iovec iov[4];
	struct done d[4];
	void *ctx[4];
	uint8_t *buf[4];
	struct vd_image_sync *s;

	path_of(path, sizeof(path), "mq.qcow2");
	create(path, 32u << 20, NULL);
	img = open_img(path, NULL);
	assert_int_equal(vd_ioctx_create(32, &c0, &err), 0);
	assert_int_equal(vd_ioctx_create(32, &c1, &err), 0);
	assert_int_equal(vd_image_queue_create(img, c0, &q0), 0); /* the owner */
	assert_int_equal(vd_image_queue_create(img, c1, &q1), 0);
	assert_int_equal(vd_ioctx_msgs_enable(c0), 0);
	assert_int_equal(vd_ioctx_msgs_enable(c1), 0);
	/* four writes into the same unallocated cluster, from both queues */
	for (int i = 0; i < 4; i++) {
		buf[i] = xbuf(4096, 0x30 + i);
		ctx[i] = calloc(1, vd_image_io_ctx_size(img));
		iov[i].iov_base = buf[i];
		iov[i].iov_len = 4096;
		memset(&io[i], 0, sizeof(io[i]));
		io[i].op = VD_IO_WRITE;
		io[i].offset_bytes = (1 << 20) + (uint64_t)i * 8192;
		io[i].len_bytes = 4096;
		io[i].iov = &iov[i];
		io[i].iovcnt = 1;
		io[i].cb = done_cb;
		io[i].cb_arg = &d[i];
		io[i].driver_ctx = ctx[i];
		d[i].n = 0;
		vd_image_submit(i % 2 ? q1 : q0, &io[i]);
	}
	for (int spins = 0; spins < 100000; spins++) {
		int all = 1;

		vd_ioctx_poll(c0);
		vd_ioctx_poll(c1);
		for (int i = 0; i < 4; i++) {
			all &= d[i].n == 1;
		}
		if (all) {
			break;
		}
		usleep(10);
	}
	for (int i = 0; i < 4; i++) {
		assert_int_equal(d[i].n, 1);
		assert_int_equal(d[i].result, 4096);
		free(ctx[i]);
		free(buf[i]);
	}
	vd_image_queue_destroy(q1);
	vd_image_queue_destroy(q0);
	vd_ioctx_destroy(c1);
	vd_ioctx_destroy(c0);
	assert_int_equal(vd_image_sync_open(img, &s, &err), 0);
	for (int i = 0; i < 4; i++) {
		expect_fill(s, (1 << 20) + (uint64_t)i * 8192, 4096, 0x30 + i);
		expect_fill(s, (1 << 20) + (uint64_t)i * 8192 + 4096, 4096, 0);
	}
	vd_image_sync_close(s);
	vd_image_close(img);
}

/* ---- a tiny L2 cache with 512-byte slices ---- */

static void test_small_cache(void **state)
{
	char path[600];
	struct vd_image_create_opts co = { .cluster_bytes = 4096 };
	struct vd_image_opts o = { .cache = VD_CACHE_WRITEBACK,
				   .l2_cache_bytes = 2048,
				   .l2_cache_entry_bytes = 512 };
	struct vd_image_sync *s;
	struct vd_image *img;
	struct vd_err err = { 0 };
	uint8_t *b = xbuf(4096, 0);

	path_of(path, sizeof(path), "cache.qcow2");
	create(path, 64u << 20, &co);
	img = open_img(path, &o);
	assert_int_equal(qcow2_s(img)->slice_bytes, 512);
	assert_int_equal(qcow2_s(img)->nr_slices, 4);
	assert_int_equal(vd_image_sync_open(img, &s, &err), 0);
	for (uint64_t i = 0; i < 64; i++) {
		memset(b, (int)(i + 1), 4096);
		sio(s, VD_IO_WRITE, b, 4096, i * (1 << 20));
	}
	for (uint64_t i = 0; i < 64; i++) {
		expect_fill(s, i * (1 << 20), 4096, (int)(i + 1));
	}
	vd_image_sync_close(s);
	vd_image_close(img);
	o.l2_cache_entry_bytes = 8192; /* larger than a cluster: refused */
	{
		struct vd_image *bad;

		o.format = "qcow2";
		assert_int_equal(vd_image_open(path, &o, &bad, &err), -EINVAL);
	}
	free(b);
}

/* ---- allocation without a full-cluster COW ---- */

static uint64_t host_of(struct vd_image *img, uint64_t off)
{
	struct vd_block_status bs;

	assert_int_equal(vd_image_block_status(img, off, 4096, &bs), 0);
	assert_true(bs.flags & VD_BLOCK_DATA);
	return bs.host_offset_bytes;
}

/*
 * Allocating writes without a bounce buffer: a partial write pads the
 * cluster with zeroes, a whole-cluster write goes straight from the
 * request; a cluster freed by discard and allocated again holds old data,
 * so a partial write there must still write the zeroes.
 */
static void test_fresh_and_reused(void **state)
{
	char path[600];
	struct vd_image_sync *s;
	struct vd_image *img;
	struct vd_err err = { 0 };
	uint8_t *b = xbuf(65536, 0x77);
	uint64_t h1, h2;

	path_of(path, sizeof(path), "fresh.qcow2");
	create(path, 64u << 20, NULL);
	img = open_img(path, NULL);
	assert_int_equal(vd_image_sync_open(img, &s, &err), 0);
	/* partial, in fresh file space */
	sio(s, VD_IO_WRITE, b, 4096, 8192);
	expect_fill(s, 0, 8192, 0);
	expect_fill(s, 8192, 4096, 0x77);
	expect_fill(s, 12288, 65536 - 12288, 0);
	/* a whole cluster, written straight from the request */
	sio(s, VD_IO_WRITE, b, 65536, 65536);
	h1 = host_of(img, 65536);
	expect_fill(s, 65536, 65536, 0x77);
	/* free it (durably), then allocate again with a partial write */
	sio(s, VD_IO_DISCARD, NULL, 65536, 65536);
	sio(s, VD_IO_FLUSH, NULL, 0, 0);
	memset(b, 0x11, 4096);
	sio(s, VD_IO_WRITE, b, 4096, (2 << 20) + 4096);
	h2 = host_of(img, 2 << 20);
	assert_int_equal(h2, h1); /* the freed cluster was reused */
	expect_fill(s, 2 << 20, 4096, 0);
	expect_fill(s, (2 << 20) + 4096, 4096, 0x11);
	expect_fill(s, (2 << 20) + 8192, 65536 - 8192, 0);
	sio(s, VD_IO_FLUSH, NULL, 0, 0);
	vd_image_sync_close(s);
	vd_image_close(img);
	img = open_img(path, NULL);
	assert_int_equal(vd_image_sync_open(img, &s, &err), 0);
	expect_fill(s, 0, 8192, 0);
	expect_fill(s, 8192, 4096, 0x77);
	expect_fill(s, 12288, 65536 - 12288, 0);
	expect_fill(s, 65536, 65536, 0);
	expect_fill(s, 2 << 20, 4096, 0);
	expect_fill(s, (2 << 20) + 4096, 4096, 0x11);
	expect_fill(s, (2 << 20) + 8192, 65536 - 8192, 0);
	vd_image_sync_close(s);
	expect_clean(img, 0);
	vd_image_close(img);
	free(b);
}

/*
 * Fresh clusters (past everything the file held at open and everything
 * allocated since) read as zeroes and get the data alone; anything below
 * that line may hold old bytes, here the garbage a crashed writer left
 * past the last referenced cluster, and gets the zeroes written.
 */
static void test_fresh_space(void **state)
{
	char path[600];
	struct vd_image_sync *s;
	struct vd_image *img;
	struct vd_err err = { 0 };
	uint8_t *b = xbuf(65536, 0x33), *junk = xbuf(4 * 65536, 0xe7);
	struct qcow2_state *qs;
	uint64_t end, h, taken;
	bool fresh = false;
	struct stat st;
	int fd;

	(void)state;
	path_of(path, sizeof(path), "freshspace.qcow2");
	create(path, 64u << 20, NULL);
	img = open_img(path, NULL);
	qs = qcow2_s(img);
	assert_false(qs->file->info.is_blockdev); /* a file: past its end is fresh */
	assert_int_equal(vd_image_sync_open(img, &s, &err), 0);
	end = qs->file_end_bytes;
	sio(s, VD_IO_WRITE, b, 4096, 65536 + 4096);
	h = host_of(img, 65536);
	assert_true(h >= end);
	expect_fill(s, 65536, 4096, 0);
	expect_fill(s, 65536 + 4096, 4096, 0x33);
	expect_fill(s, 65536 + 8192, 65536 - 8192, 0);
	sio(s, VD_IO_FLUSH, NULL, 0, 0);
	vd_image_sync_close(s);
	vd_image_close(img);

	/* leave four clusters of garbage past the end, unreferenced */
	assert_int_equal(stat(path, &st), 0);
	fd = open(path, O_WRONLY);
	assert_true(fd >= 0);
	assert_int_equal(pwrite(fd, junk, 4 * 65536, VD_ALIGN_UP((uint64_t)st.st_size, 65536)),
			 4 * 65536);
	assert_int_equal(close(fd), 0);
	end = VD_ALIGN_UP((uint64_t)st.st_size, 65536) + 4 * 65536;

	img = open_img(path, NULL);
	qs = qcow2_s(img);
	assert_int_equal(qs->file_end_bytes, end);
	assert_int_equal(vd_image_sync_open(img, &s, &err), 0);
	/* allocations land in the garbage first: zeroes written around the data */
	for (uint64_t i = 0; i < 4; i++) {
		uint64_t g = (8ull << 20) + i * (1ull << 20);

		sio(s, VD_IO_WRITE, b, 4096, g + 8192);
		h = host_of(img, g);
		assert_true(h < end);
		expect_fill(s, g, 8192, 0);
		expect_fill(s, g + 8192, 4096, 0x33);
		expect_fill(s, g + 12288, 65536 - 12288, 0);
	}
	/* then past it: fresh again */
	sio(s, VD_IO_WRITE, b, 4096, (20ull << 20) + 16384);
	assert_true(host_of(img, 20ull << 20) >= end);
	expect_fill(s, 20ull << 20, 16384, 0);
	expect_fill(s, (20ull << 20) + 16384, 4096, 0x33);
	expect_fill(s, (20ull << 20) + 20480, 65536 - 20480, 0);
	sio(s, VD_IO_FLUSH, NULL, 0, 0);
	/* the line only rises: freed clusters below it are not fresh */
	sio(s, VD_IO_DISCARD, NULL, 65536, 8ull << 20);
	sio(s, VD_IO_FLUSH, NULL, 0, 0);
	h = (uint64_t)vd_qcow2_alloc_cluster(img, &fresh);
	taken = 1;
	assert_true(h < end);
	assert_false(fresh);
	end = qs->file_end_bytes;
	for (;;) {
		h = (uint64_t)vd_qcow2_alloc_cluster(img, &fresh);
		taken++;
		if (h >= end) {
			break;
		}
		assert_false(fresh);
	}
	assert_true(fresh);
	vd_image_sync_close(s);
	/* the clusters taken by hand are the leaks */
	expect_clean(img, taken);
	vd_image_close(img);
	free(b);
	free(junk);
}

/*
 * The file grows by fallocate in VD_QCOW2_PREALLOC_BYTES steps ahead of
 * the allocator (allocating writes then land inside the file); data and
 * checks are unchanged, and close trims the unused tail.
 */
static void test_prealloc_ahead(void **state)
{
	char path[600];
	struct vd_image_sync *s;
	struct vd_image *img;
	struct vd_err err = { 0 };
	struct qcow2_state *qs;
	uint8_t *b = xbuf(4096, 0x5c);
	struct stat st;
	uint64_t used;

	(void)state;
	path_of(path, sizeof(path), "prealloc.qcow2");
	create(path, 1ull << 30, NULL);
	img = open_img(path, NULL);
	qs = qcow2_s(img);
	assert_true(qs->prealloc);
	assert_int_equal(vd_image_sync_open(img, &s, &err), 0);
	/* 40 clusters, scattered: every write allocates a data cluster */
	for (uint64_t i = 0; i < 40; i++) {
		sio(s, VD_IO_WRITE, b, 4096, i * (24ull << 20) + 8192);
	}
	assert_int_equal(stat(path, &st), 0);
	assert_true(qs->prealloc_end_bytes % VD_QCOW2_PREALLOC_BYTES == 0);
	assert_int_equal((uint64_t)st.st_size, qs->prealloc_end_bytes);
	assert_true(qs->prealloc_end_bytes > qs->file_end_bytes);
	used = qs->file_end_bytes;
	for (uint64_t i = 0; i < 40; i++) {
		expect_fill(s, i * (24ull << 20), 8192, 0);
		expect_fill(s, i * (24ull << 20) + 8192, 4096, 0x5c);
		expect_fill(s, i * (24ull << 20) + 12288, 65536 - 12288, 0);
	}
	sio(s, VD_IO_FLUSH, NULL, 0, 0);
	vd_image_sync_close(s);
	vd_image_close(img);
	/* closed: the tail is gone, everything else intact */
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal((uint64_t)st.st_size, used);
	img = open_img(path, NULL);
	assert_int_equal(vd_image_sync_open(img, &s, &err), 0);
	for (uint64_t i = 0; i < 40; i++) {
		expect_fill(s, i * (24ull << 20) + 8192, 4096, 0x5c);
	}
	vd_image_sync_close(s);
	expect_clean(img, 0);
	vd_image_close(img);
	free(b);
}

/* ---- asynchronous metadata write-back ---- */

#define NW 48

struct wio {
	struct vd_io io;
	struct iovec iov;
	struct done d;
	void *ctx;
	uint8_t *buf;
};

static void wio_submit(struct vd_image *img, struct vd_image_queue *q, struct wio *w,
		       enum vd_io_op op, uint64_t off, int fill)
{
	memset(&w->io, 0, sizeof(w->io));
	if (!w->ctx) {
		w->ctx = calloc(1, vd_image_io_ctx_size(img));
		w->buf = xbuf(4096, 0);
	}
	memset(w->buf, fill, 4096);
	w->iov.iov_base = w->buf;
	w->iov.iov_len = 4096;
	w->io.op = op;
	if (op == VD_IO_WRITE) {
		w->io.offset_bytes = off;
		w->io.len_bytes = 4096;
		w->io.iov = &w->iov;
		w->io.iovcnt = 1;
	}
	w->io.cb = done_cb;
	w->io.cb_arg = &w->d;
	w->io.driver_ctx = w->ctx;
	w->d.n = 0;
	w->d.result = -1;
	vd_image_submit(q, &w->io);
}

static void wio_wait(struct vd_ioctx *c, struct wio *w, int n)
{
	for (int spins = 0; spins < 200000; spins++) {
		int all = 1;

		for (int i = 0; i < n; i++) {
			all &= w[i].d.n == 1;
		}
		if (all) {
			return;
		}
		if (vd_ioctx_wait(c, 1000000) < 0) {
			break;
		}
	}
	fail_msg("requests did not complete");
}

/*
 * Many allocating writes in flight through a cache of four 512-byte slices
 * (every slice dirty: requests wait for write-back jobs), flushes among
 * them; once a flush completes, a second open of the file sees every write
 * completed before it.
 */
static void test_async_writeback(void **state)
{
	char path[600];
	struct vd_image_create_opts co = { .cluster_bytes = 4096 };
	struct vd_image_opts o = { .cache = VD_CACHE_WRITEBACK,
				   .l2_cache_bytes = 2048,
				   .l2_cache_entry_bytes = 512 };
	struct vd_image_opts ro = { .cache = VD_CACHE_WRITEBACK,
				    .readonly = true,
				    .force_share = true /* the writer still has it */ };
	struct vd_image *img, *img2;
	struct vd_image_queue *q;
	struct vd_image_sync *s;
	struct vd_ioctx *c;
	struct vd_err err = { 0 };
	struct wio *w = calloc(2 * NW + 2, sizeof(*w));

	path_of(path, sizeof(path), "async.qcow2");
	create(path, 128u << 20, &co);
	img = open_img(path, &o);
	assert_int_equal(vd_ioctx_create(64, &c, &err), 0);
	assert_int_equal(vd_image_queue_create(img, c, &q), 0);
	/* round 1: NW writes in distinct slices, then a flush */
	for (int i = 0; i < NW; i++) {
		wio_submit(img, q, &w[i], VD_IO_WRITE, (uint64_t)i * (1 << 20) + 4096, i + 1);
	}
	wio_wait(c, w, NW);
	for (int i = 0; i < NW; i++) {
		assert_int_equal(w[i].d.result, 4096);
	}
	/* round 2 in flight with the flush */
	wio_submit(img, q, &w[NW], VD_IO_FLUSH, 0, 0);
	for (int i = NW + 1; i < 2 * NW + 1; i++) {
		wio_submit(img, q, &w[i], VD_IO_WRITE,
			   (uint64_t)(i - NW - 1) * (1 << 20) + (512 << 10), i);
	}
	wio_submit(img, q, &w[2 * NW + 1], VD_IO_FLUSH, 0, 0);
	wio_wait(c, &w[NW], 1);
	assert_int_equal(w[NW].d.result, 0);
	/* what the first flush covers is on disk, in a consistent image */
	ro.format = "qcow2";
	assert_int_equal(vd_image_open(path, &ro, &img2, &err), 0);
	assert_int_equal(vd_image_sync_open(img2, &s, &err), 0);
	for (int i = 0; i < NW; i++) {
		expect_fill(s, (uint64_t)i * (1 << 20) + 4096, 4096, i + 1);
		expect_fill(s, (uint64_t)i * (1 << 20), 4096, 0);
	}
	vd_image_sync_close(s);
	vd_image_close(img2);
	wio_wait(c, w, 2 * NW + 2);
	for (int i = NW + 1; i < 2 * NW + 2; i++) {
		assert_int_equal(w[i].d.result, i == 2 * NW + 1 ? 0 : 4096);
	}
	assert_false(qcow2_s(img)->mf.running);
	vd_image_queue_destroy(q);
	vd_ioctx_destroy(c);
	vd_image_close(img);
	img = open_img(path, NULL);
	assert_int_equal(vd_image_sync_open(img, &s, &err), 0);
	for (int i = 0; i < NW; i++) {
		expect_fill(s, (uint64_t)i * (1 << 20) + 4096, 4096, i + 1);
		expect_fill(s, (uint64_t)i * (1 << 20) + (512 << 10), 4096, i + NW + 1);
	}
	vd_image_sync_close(s);
	expect_clean(img, 0);
	vd_image_close(img);
	for (int i = 0; i < 2 * NW + 2; i++) {
		free(w[i].ctx);
		free(w[i].buf);
	}
	free(w);
}

/* ---- lazy refcounts: the dirty bit ---- */

static uint64_t incompat_of(const char *path)
{
	uint8_t b[8];
	int fd = open(path, O_RDONLY);

	assert_int_equal(pread(fd, b, 8, 72), 8);
	close(fd);
	return qcow2_be64(b);
}

static void test_lazy(void **state)
{
	char path[600];
	struct vd_image_create_opts co = { .lazy_refcounts = true };
	struct vd_image_sync *s;
	struct vd_image *img;
	struct vd_err err = { 0 };
	uint8_t *b = xbuf(65536, 0x77);

	path_of(path, sizeof(path), "lazy.qcow2");
	create(path, 16u << 20, &co);
	img = open_img(path, NULL);
	assert_int_equal(vd_image_sync_open(img, &s, &err), 0);
	sio(s, VD_IO_WRITE, b, 65536, 1 << 20);
	sio(s, VD_IO_FLUSH, NULL, 0, 0);
	assert_true(incompat_of(path) & QCOW2_INCOMPAT_DIRTY);
	vd_image_sync_close(s);
	vd_image_close(img);
	assert_false(incompat_of(path) & QCOW2_INCOMPAT_DIRTY);
	free(b);
}

/* ---- check finds a leak, repair reclaims it ---- */

static void test_check_repair(void **state)
{
	char path[600];
	struct vd_check_result res;
	struct vd_image_sync *s;
	struct vd_image *img;
	struct vd_err err = { 0 };
	uint8_t *b = xbuf(1 << 20, 0x42);
	uint8_t z[8] = { 0 };
	uint64_t l1off;
	int fd;

	path_of(path, sizeof(path), "leak.qcow2");
	create(path, 16u << 20, NULL);
	img = open_img(path, NULL);
	assert_int_equal(vd_image_sync_open(img, &s, &err), 0);
	sio(s, VD_IO_WRITE, b, 1 << 20, 0);
	vd_image_sync_close(s);
	l1off = qcow2_s(img)->l1_offset;
	vd_image_close(img);
	/* drop the L1 entry: its L2 table and 16 data clusters leak */
	fd = open(path, O_RDWR);
	assert_int_equal(pwrite(fd, z, 8, (off_t)l1off), 8);
	close(fd);
	img = open_img(path, NULL);
	assert_int_equal(vd_image_check(img, false, &res, &err), 0);
	assert_int_equal(res.corruptions, 0);
	assert_int_equal(res.leaks, 17);
	assert_int_equal(vd_image_check(img, true, &res, &err), 0);
	assert_int_equal(res.leaks_fixed, 17);
	assert_int_equal(vd_image_check(img, false, &res, &err), 0);
	assert_int_equal(res.leaks, 0);
	assert_int_equal(res.corruptions, 0);
	/* still writable after the repair, and still clean */
	assert_int_equal(vd_image_sync_open(img, &s, &err), 0);
	sio(s, VD_IO_WRITE, b, 1 << 20, 4 << 20);
	vd_image_sync_close(s);
	assert_int_equal(vd_image_check(img, false, &res, &err), 0);
	assert_int_equal(res.leaks + res.corruptions, 0);
	vd_image_close(img);
	free(b);
}

/* ---- resize: grow past what the L1 table covers ---- */

static void test_resize(void **state)
{
	char path[600];
	struct vd_image_create_opts co = { .cluster_bytes = 512 };
	struct vd_check_result res;
	struct vd_image_sync *s;
	struct vd_image *img;
	struct vd_err err = { 0 };
	uint8_t *b = xbuf(4096, 0x99);

	path_of(path, sizeof(path), "resize.qcow2");
	/* 512-byte clusters: one L2 table covers 32 KiB */
	create(path, 64 << 10, &co);
	img = open_img(path, NULL);
	assert_int_equal(vd_image_sync_open(img, &s, &err), 0);
	sio(s, VD_IO_WRITE, b, 4096, 8192);
	vd_image_sync_close(s);
	assert_int_equal(vd_image_resize(img, 4 << 20, &err), 0);
	assert_int_equal(img->info.size_bytes, 4 << 20);
	assert_int_equal(vd_image_sync_open(img, &s, &err), 0);
	expect_fill(s, 8192, 4096, 0x99);
	sio(s, VD_IO_WRITE, b, 4096, (4 << 20) - 4096);
	expect_fill(s, (4 << 20) - 4096, 4096, 0x99);
	vd_image_sync_close(s);
	assert_int_equal(vd_image_resize(img, 1 << 20, &err), -ENOTSUP);
	assert_int_equal(vd_image_check(img, false, &res, &err), 0);
	assert_int_equal(res.leaks + res.corruptions, 0);
	vd_image_close(img);
	free(b);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_hostile_headers),
		cmocka_unit_test(test_corrupt_bit),
		cmocka_unit_test(test_rw_discard),
		cmocka_unit_test(test_backing),
		cmocka_unit_test(test_two_queues_overlap),
		cmocka_unit_test(test_small_cache),
		cmocka_unit_test(test_fresh_and_reused),
		cmocka_unit_test(test_fresh_space),
		cmocka_unit_test(test_prealloc_ahead),
		cmocka_unit_test(test_async_writeback),
		cmocka_unit_test(test_lazy),
		cmocka_unit_test(test_check_repair),
		cmocka_unit_test(test_resize),
	};

	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
