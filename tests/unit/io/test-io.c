/*
 * io conformance: the same checks over every backend (uring O_DIRECT on a
 * disk filesystem, uring buffered on tmpfs, sync direct and buffered, mem,
 * null), then the reactor on its own (fd watches, timeouts, SQ full).
 *
 * VD_SEED=n replays a run; the seed is printed at start.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/eventfd.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cmocka.h>

#include "common/compiler.h"
#include "common/log.h"
#include "io/io-int.h"

#define SIZE (4u << 20)

/* ---- io_uring_submit, wrapped so a test can make the SQ look stuck ---- */

int __real_io_uring_submit(struct io_uring *ring);
int __wrap_io_uring_submit(struct io_uring *ring);
static int g_submit_fail;

int __wrap_io_uring_submit(struct io_uring *ring)
{
	if (g_submit_fail > 0) {
		g_submit_fail--;
		return -EBUSY;
	}
	return __real_io_uring_submit(ring);
}

/* ---- helpers ---- */

static uint64_t g_rng;

static uint64_t rnd(void)
{
	g_rng ^= g_rng << 13;
	g_rng ^= g_rng >> 7;
	g_rng ^= g_rng << 17;
	return g_rng;
}

static uint64_t rnd_range(uint64_t lo, uint64_t hi) /* [lo, hi] */
{
	return lo + rnd() % (hi - lo + 1);
}

struct cfg {
	const char *name;
	const char *backend;
	const char *dir; /* NULL: no file (mem/null) */
	enum vd_cache_mode cache;
};

struct fixture {
	const struct cfg *cfg;
	char path[512];
	struct vd_file *f;
	struct vd_ioctx *ctx;
	unsigned char *model;
	bool null;
	uint64_t align; /* offset/length/iov-length granularity the rules need */
};

static const struct cfg *g_cfg;

static const char *disk_dir(void)
{
	const char *d = getenv("VDISK_BUILD_DIR");

	return d && *d ? d : "/var/tmp";
}

static int open_cfg(struct fixture *fx, bool readonly, struct vd_file **out)
{
	struct vd_file_opts o = {
		.readonly = readonly,
		.cache = fx->cfg->cache,
		.size_bytes = SIZE,
	};
	struct vd_err err = { 0 };
	int ret = vd_file_open(fx->cfg->backend, fx->cfg->dir ? fx->path : NULL, &o, out, &err);

	if (ret < 0) {
		fprintf(stderr, "open %s: %s\n", fx->cfg->name, vd_err_msg(&err));
	}
	return ret;
}

static int group_setup(void **state)
{
	struct fixture *fx = calloc(1, sizeof(*fx));
	struct vd_err err = { 0 };

	assert_non_null(fx);
	fx->cfg = g_cfg;
	fx->null = strcmp(g_cfg->backend, "null") == 0;
	if (g_cfg->dir) {
		int fd;

		snprintf(fx->path, sizeof(fx->path), "%s/vd-io-test-XXXXXX", g_cfg->dir);
		fd = mkstemp(fx->path);
		assert_true(fd >= 0);
		assert_int_equal(ftruncate(fd, SIZE), 0);
		close(fd);
	}
	assert_int_equal(open_cfg(fx, false, &fx->f), 0);
	assert_int_equal(fx->f->info.size_bytes, SIZE);
	assert_int_equal(vd_ioctx_create(32, &fx->ctx, &err), 0);
	fx->model = calloc(1, SIZE);
	assert_non_null(fx->model);
	fx->align = fx->f->info.direct ? fx->f->info.logical_block_bytes : 1;
	fprintf(stderr, "[%s] direct=%d lbs=%u pbs=%u\n", g_cfg->name, fx->f->info.direct,
		fx->f->info.logical_block_bytes, fx->f->info.physical_block_bytes);
	*state = fx;
	return 0;
}

static int group_teardown(void **state)
{
	struct fixture *fx = *state;

	assert_int_equal(vd_ioctx_inflight(fx->ctx), 0);
	vd_ioctx_destroy(fx->ctx);
	vd_file_close(fx->f);
	if (fx->cfg->dir) {
		unlink(fx->path);
	}
	free(fx->model);
	free(fx);
	return 0;
}

struct done {
	int n;
	int64_t result;
};

static void done_cb(struct vd_file_req *req, int64_t result)
{
	struct done *d = req->cb_arg;

	d->n++;
	d->result = result;
}

static void wait_for(struct vd_ioctx *ctx, const int *n, int target)
{
	int loops = 0;

	while (*n < target) {
		assert_true(vd_ioctx_wait(ctx, 5000000000ull) >= 0);
		assert_true(++loops < 100000);
	}
}

static int64_t run_on(struct vd_file *f, struct vd_ioctx *ctx, enum vd_io_op op, uint64_t off,
		      uint64_t len, struct iovec *iov, int iovcnt)
{
	struct vd_file_req req;
	struct done d = { 0 };

	memset(&req, 0, sizeof(req));
	req.op = op;
	req.offset_bytes = off;
	req.len_bytes = len;
	req.iov = iov;
	req.iovcnt = iovcnt;
	req.cb = done_cb;
	req.cb_arg = &d;
	vd_file_submit(f, ctx, &req);
	assert_int_equal(d.n, 0); /* never inline from submit */
	wait_for(ctx, &d.n, 1);
	assert_int_equal(d.n, 1);
	assert_int_equal(vd_ioctx_inflight(ctx), 0);
	return d.result;
}

static int64_t run(struct fixture *fx, enum vd_io_op op, uint64_t off, uint64_t len,
		   struct iovec *iov, int iovcnt)
{
	return run_on(fx->f, fx->ctx, op, off, len, iov, iovcnt);
}

/* Split [buf, buf+len) into up to max random pieces, each a multiple of align. */
static int split(unsigned char *buf, uint64_t len, uint64_t align, struct iovec *iov, int max)
{
	uint64_t units = len / align, pos = 0;
	int n = 0;

	while (pos < units) {
		uint64_t left = units - pos;
		uint64_t take = n == max - 1 ? left : rnd_range(1, left);

		iov[n].iov_base = buf + pos * align;
		iov[n].iov_len = take * align;
		pos += take;
		n++;
	}
	return n;
}

static void *abuf(size_t len)
{
	void *p = NULL;

	if (posix_memalign(&p, 4096, len) != 0) {
		abort();
	}
	return p;
}

static void check_range(struct fixture *fx, const unsigned char *got, uint64_t off, uint64_t len)
{
	uint64_t i;

	for (i = 0; i < len; i++) {
		unsigned char want = fx->null ? 0 : fx->model[off + i];

		if (got[i] != want) {
			fail_msg("[%s] byte at %llu: got 0x%x want 0x%x", fx->cfg->name,
				 (unsigned long long)(off + i), got[i], want);
		}
	}
}

static void read_check(struct fixture *fx, uint64_t off, uint64_t len)
{
	unsigned char *buf = abuf(len);
	struct iovec iov[8];
	int n;

	memset(buf, 0xA5, len);
	n = split(buf, len, fx->align == 1 ? 1 : fx->align, iov, 8);
	assert_int_equal(run(fx, VD_IO_READ, off, len, iov, n), (int64_t)len);
	check_range(fx, buf, off, len);
	free(buf);
}

static void write_pattern(struct fixture *fx, uint64_t off, uint64_t len)
{
	unsigned char *buf = abuf(len);
	struct iovec iov[8];
	uint64_t i;
	int n;

	for (i = 0; i < len; i++) {
		buf[i] = (unsigned char)rnd();
	}
	n = split(buf, len, fx->align, iov, 8);
	assert_int_equal(run(fx, VD_IO_WRITE, off, len, iov, n), (int64_t)len);
	memcpy(fx->model + off, buf, len);
	free(buf);
}

/* ---- conformance tests ---- */

static void test_rw_random(void **state)
{
	struct fixture *fx = *state;
	uint64_t a = fx->align == 1 ? 512 : fx->align;
	int i;

	for (i = 0; i < 100; i++) {
		uint64_t len = rnd_range(1, 32) * a;
		uint64_t off = rnd_range(0, (SIZE - len) / a) * a;

		write_pattern(fx, off, len);
	}
	for (i = 0; i < 100; i++) {
		uint64_t len = rnd_range(1, 64) * a;
		uint64_t off = rnd_range(0, (SIZE - len) / a) * a;

		read_check(fx, off, len);
	}
}

static void test_unaligned_iov(void **state)
{
	struct fixture *fx = *state;
	static const size_t sizes_any[] = { 1, 7, 511, 4096, 3, 1000 };
	static const size_t sizes_direct[] = { 512, 1536, 2048, 512 };
	const size_t *sizes = fx->align == 1 ? sizes_any : sizes_direct;
	size_t nsizes = fx->align == 1 ? VD_ARRAY_SIZE(sizes_any) : VD_ARRAY_SIZE(sizes_direct);
	uint64_t off = fx->align == 1 ? 12345 : 8 * fx->align;
	struct iovec iov[8];
	unsigned char *buf;
	uint64_t len = 0, i;
	size_t k;

	if (fx->align > 512) {
		skip(); /* the direct sizes above assume 512-byte blocks */
	}
	for (k = 0; k < nsizes; k++) {
		len += sizes[k];
	}
	buf = abuf(len);
	for (i = 0; i < len; i++) {
		buf[i] = (unsigned char)(i * 31 + 7);
	}
	for (k = 0, i = 0; k < nsizes; k++) {
		iov[k].iov_base = buf + i;
		iov[k].iov_len = sizes[k];
		i += sizes[k];
	}
	assert_int_equal(run(fx, VD_IO_WRITE, off, len, iov, (int)nsizes), (int64_t)len);
	memcpy(fx->model + off, buf, len);
	memset(buf, 0, len);
	assert_int_equal(run(fx, VD_IO_READ, off, len, iov, (int)nsizes), (int64_t)len);
	check_range(fx, buf, off, len);
	free(buf);
	if (fx->f->info.direct) {
		/* the rule is the kernel's: a misaligned offset fails, it is not bounced */
		unsigned char *b = abuf(4096);
		struct iovec one = { b, 4096 };

		assert_int_equal(run(fx, VD_IO_READ, 100, 4096, &one, 1), -EINVAL);
		free(b);
	}
}

static void test_eof(void **state)
{
	struct fixture *fx = *state;
	unsigned char *buf = abuf(8192);
	struct iovec iov[2] = { { buf, 4096 }, { buf + 4096, 4096 } };
	uint64_t i;

	write_pattern(fx, SIZE - 4096, 4096);
	memset(buf, 0xEE, 8192);
	assert_int_equal(run(fx, VD_IO_READ, SIZE - 4096, 8192, iov, 2), 8192);
	check_range(fx, buf, SIZE - 4096, 4096);
	for (i = 4096; i < 8192; i++) {
		assert_int_equal(buf[i], 0);
	}
	/* entirely past the end */
	memset(buf, 0xEE, 8192);
	assert_int_equal(run(fx, VD_IO_READ, SIZE + 65536, 8192, iov, 2), 8192);
	for (i = 0; i < 8192; i++) {
		assert_int_equal(buf[i], 0);
	}
	free(buf);
}

static void test_eof_unaligned_file(void **state)
{
	struct fixture *fx = *state;
	struct vd_file_opts o = { .cache = fx->cfg->cache };
	unsigned char *buf;
	struct vd_file *f;
	unsigned char pat[1000];
	char path[600];
	struct iovec iov;
	int fd, i;

	if (!fx->cfg->dir) {
		skip();
	}
	/* a file whose size is not a block multiple: O_DIRECT reads end short */
	snprintf(path, sizeof(path), "%s.odd", fx->path);
	fd = open(path, O_CREAT | O_TRUNC | O_WRONLY, 0600);
	assert_true(fd >= 0);
	memset(pat, 0x5A, sizeof(pat));
	assert_int_equal(write(fd, pat, sizeof(pat)), 1000);
	buf = abuf(8192);
	close(fd);
	assert_int_equal(vd_file_open(fx->cfg->backend, path, &o, &f, NULL), 0);
	memset(buf, 0xEE, 8192);
	iov.iov_base = buf;
	iov.iov_len = 8192;
	assert_int_equal(run_on(f, fx->ctx, VD_IO_READ, 0, 8192, &iov, 1), 8192);
	for (i = 0; i < 8192; i++) {
		assert_int_equal(buf[i], i < 1000 ? 0x5A : 0);
	}
	/* the synchronous helper: unaligned everything */
	memset(buf, 0, 100);
	assert_int_equal(vd_file_rw_sync(f, VD_IO_READ, buf + 1, 100, 950), 100);
	for (i = 0; i < 100; i++) {
		assert_int_equal(buf[1 + i], i < 50 ? 0x5A : 0);
	}
	vd_file_close(f);
	unlink(path);
	free(buf);
}

static void test_rw_sync_helper(void **state)
{
	struct fixture *fx = *state;
	unsigned char data[777], back[777];
	size_t i;

	for (i = 0; i < sizeof(data); i++) {
		data[i] = (unsigned char)(i ^ 0x3c);
	}
	/* unaligned buffer, offset and length, even for O_DIRECT */
	assert_int_equal(vd_file_rw_sync(fx->f, VD_IO_WRITE, data, sizeof(data), 100003),
			 (int64_t)sizeof(data));
	memcpy(fx->model + 100003, data, sizeof(data));
	assert_int_equal(vd_file_rw_sync(fx->f, VD_IO_READ, back, sizeof(back), 100003),
			 (int64_t)sizeof(back));
	check_range(fx, back, 100003, sizeof(back));
	read_check(fx, 98304, 8192);
	assert_int_equal(vd_file_rw_sync(fx->f, VD_IO_FLUSH, NULL, 0, 0), 0);
}

static void test_flush(void **state)
{
	struct fixture *fx = *state;

	write_pattern(fx, 0, 4096);
	assert_int_equal(run(fx, VD_IO_FLUSH, 0, 0, NULL, 0), 0);
}

static uint64_t blocks(struct fixture *fx)
{
	struct stat st;

	assert_int_equal(stat(fx->path, &st), 0);
	return (uint64_t)st.st_blocks;
}

static void test_discard(void **state)
{
	struct fixture *fx = *state;
	uint64_t off = 1u << 20, len = 1u << 20, before = 0, after;

	assert_true(fx->f->info.discard);
	write_pattern(fx, off, len);
	assert_int_equal(run(fx, VD_IO_FLUSH, 0, 0, NULL, 0), 0);
	if (fx->cfg->dir) {
		before = blocks(fx);
	}
	assert_int_equal(run(fx, VD_IO_DISCARD, off, len, NULL, 0), 0);
	memset(fx->model + off, 0, len);
	if (fx->cfg->dir) {
		after = blocks(fx);
		/* 1 MiB is 2048 sectors of 512 bytes */
		assert_true(after + 2048 <= before);
	}
	read_check(fx, off - 4096, len + 8192);
}

static void test_write_zeroes(void **state)
{
	struct fixture *fx = *state;
	uint64_t off = 2u << 20;

	write_pattern(fx, off, 256 * 1024);
	assert_int_equal(run(fx, VD_IO_WRITE_ZEROES, off + 65536, 65536, NULL, 0), 0);
	memset(fx->model + off + 65536, 0, 65536);
	read_check(fx, off, 256 * 1024);
}

static void test_readonly(void **state)
{
	struct fixture *fx = *state;
	unsigned char *buf = abuf(4096);
	struct iovec iov = { buf, 4096 };
	struct vd_file *ro;

	assert_int_equal(open_cfg(fx, true, &ro), 0);
	assert_true(ro->info.readonly);
	assert_int_equal(run_on(ro, fx->ctx, VD_IO_WRITE, 0, 4096, &iov, 1), -EROFS);
	assert_int_equal(run_on(ro, fx->ctx, VD_IO_DISCARD, 0, 4096, NULL, 0), -EROFS);
	assert_int_equal(run_on(ro, fx->ctx, VD_IO_WRITE_ZEROES, 0, 4096, NULL, 0), -EROFS);
	assert_int_equal(run_on(ro, fx->ctx, VD_IO_READ, 0, 4096, &iov, 1), 4096);
	if (fx->cfg->dir) {
		check_range(fx, buf, 0, 4096);
	}
	assert_int_equal(run_on(ro, fx->ctx, VD_IO_FLUSH, 0, 0, NULL, 0), 0);
	vd_file_close(ro);
	free(buf);
}

static void test_bad_requests(void **state)
{
	struct fixture *fx = *state;
	unsigned char *buf = abuf(4096);
	struct iovec iov = { buf, 4096 };

	assert_int_equal(run(fx, VD_IO_READ, 0, 8192, &iov, 1), -EINVAL); /* len != iov sum */
	assert_int_equal(run(fx, VD_IO_WRITE, 0, 4096, NULL, 0), -EINVAL);
	assert_int_equal(run(fx, VD_IO_WRITE, UINT64_MAX - 100, 4096, &iov, 1), -EINVAL);
	assert_int_equal(run(fx, (enum vd_io_op)77, 0, 4096, &iov, 1), -EINVAL);
	if (!fx->cfg->dir) {
		/* fixed-size targets: no writing past the end */
		assert_int_equal(run(fx, VD_IO_WRITE, SIZE, 4096, &iov, 1), -ENOSPC);
	}
	free(buf);
}

#define QD 128

static void test_many_inflight(void **state)
{
	struct fixture *fx = *state;
	struct vd_file_req *reqs = calloc(QD, sizeof(*reqs));
	struct iovec *iov = calloc(QD, sizeof(*iov));
	unsigned char *buf = abuf((size_t)QD * 4096);
	struct vd_ioctx *ctx;
	struct done d = { 0 };
	int i, pass;

	assert_non_null(reqs);
	assert_non_null(iov);
	/* SQ of 8, CQ of 16: 128 requests overflow both */
	assert_int_equal(vd_ioctx_create(8, &ctx, NULL), 0);
	for (pass = 0; pass < 2; pass++) {
		enum vd_io_op op = pass == 0 ? VD_IO_WRITE : VD_IO_READ;

		if (op == VD_IO_WRITE) {
			for (i = 0; i < QD * 4096; i++) {
				buf[i] = (unsigned char)rnd();
			}
		} else {
			memset(buf, 0, (size_t)QD * 4096);
		}
		d.n = 0;
		for (i = 0; i < QD; i++) {
			/* every other block, descending: not one sequential stream */
			uint64_t off = (uint64_t)(QD - 1 - i) * 8192;

			iov[i].iov_base = buf + (size_t)i * 4096;
			iov[i].iov_len = 4096;
			memset(&reqs[i], 0, sizeof(reqs[i]));
			reqs[i].op = op;
			reqs[i].offset_bytes = off;
			reqs[i].len_bytes = 4096;
			reqs[i].iov = &iov[i];
			reqs[i].iovcnt = 1;
			reqs[i].cb = done_cb;
			reqs[i].cb_arg = &d;
			vd_file_submit(fx->f, ctx, &reqs[i]);
		}
		assert_int_equal(d.n, 0);
		assert_int_equal(vd_ioctx_inflight(ctx), QD);
		wait_for(ctx, &d.n, QD);
		assert_int_equal(d.n, QD);
		assert_int_equal(vd_ioctx_inflight(ctx), 0);
		for (i = 0; i < QD; i++) {
			uint64_t off = (uint64_t)(QD - 1 - i) * 8192;

			assert_int_equal(reqs[i].result, 4096);
			if (op == VD_IO_WRITE) {
				memcpy(fx->model + off, buf + (size_t)i * 4096, 4096);
			} else {
				check_range(fx, buf + (size_t)i * 4096, off, 4096);
			}
		}
	}
	vd_ioctx_destroy(ctx);
	free(buf);
	free(iov);
	free(reqs);
}

/* The SQ stays full (submit fails): requests wait on the backlog, none is lost. */
static void test_sq_stuck(void **state)
{
	struct fixture *fx = *state;
	struct vd_file_req reqs[40];
	struct iovec iov[40];
	unsigned char *buf = abuf(40 * 4096);
	struct vd_ioctx *ctx;
	struct done d = { 0 };
	int i;

	assert_int_equal(vd_ioctx_create(4, &ctx, NULL), 0);
	g_submit_fail = 1000;
	for (i = 0; i < 40; i++) {
		iov[i].iov_base = buf + i * 4096;
		iov[i].iov_len = 4096;
		memset(&reqs[i], 0, sizeof(reqs[i]));
		reqs[i].op = VD_IO_READ;
		reqs[i].offset_bytes = (uint64_t)i * 4096;
		reqs[i].len_bytes = 4096;
		reqs[i].iov = &iov[i];
		reqs[i].iovcnt = 1;
		reqs[i].cb = done_cb;
		reqs[i].cb_arg = &d;
		vd_file_submit(fx->f, ctx, &reqs[i]);
	}
	assert_int_equal(vd_ioctx_inflight(ctx), 40);
	assert_int_equal(d.n, 0);
	if (strcmp(fx->cfg->backend, "uring") == 0) {
		/* 4 fit in the SQ; each of the other 36 tried a submit, then went to the backlog */
		assert_true(g_submit_fail <= 1000 - 36);
	}
	(void)vd_ioctx_poll(ctx); /* still stuck: nothing may be lost or failed */
	g_submit_fail = 0;
	wait_for(ctx, &d.n, 40);
	assert_int_equal(d.n, 40);
	for (i = 0; i < 40; i++) {
		assert_int_equal(reqs[i].result, 4096);
		check_range(fx, buf + i * 4096, (uint64_t)i * 4096, 4096);
	}
	vd_ioctx_destroy(ctx);
	free(buf);
}

/* ---- the reactor alone ---- */

struct wstate {
	struct vd_ioctx *ctx;
	int fd;
	int calls;
	int last_revents;
	bool drain;
	bool unwatch_self;
};

static void watch_cb(void *arg, int revents)
{
	struct wstate *w = arg;
	uint64_t v;

	w->calls++;
	w->last_revents = revents;
	if (w->drain) {
		assert_int_equal(read(w->fd, &v, sizeof(v)), (ssize_t)sizeof(v));
	}
	if (w->unwatch_self) {
		vd_ioctx_unwatch_fd(w->ctx, w->fd);
	}
}

static void kick(int fd)
{
	uint64_t one = 1;

	assert_int_equal(write(fd, &one, sizeof(one)), (ssize_t)sizeof(one));
}

static void watch_cycle(bool multishot)
{
	struct wstate w = { .drain = true };
	int i, loops;

	assert_int_equal(vd_ioctx_create(8, &w.ctx, NULL), 0);
	vd_ioctx_set_multishot(w.ctx, multishot && vd_ioctx_multishot(w.ctx));
	w.fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	assert_true(w.fd >= 0);
	assert_int_equal(vd_ioctx_watch_fd(w.ctx, w.fd, watch_cb, &w), 0);
	assert_int_equal(vd_ioctx_watch_fd(w.ctx, w.fd, watch_cb, &w), -EEXIST);
	/* quiet fd: the wait times out */
	assert_int_equal(vd_ioctx_wait(w.ctx, 20000000), 0);
	assert_int_equal(w.calls, 0);
	for (i = 1; i <= 5; i++) {
		kick(w.fd);
		for (loops = 0; w.calls < i && loops < 100; loops++) {
			assert_true(vd_ioctx_wait(w.ctx, 1000000000ull) >= 0);
		}
		assert_int_equal(w.calls, i);
		assert_true(w.last_revents & POLLIN);
	}
	vd_ioctx_unwatch_fd(w.ctx, w.fd);
	kick(w.fd);
	(void)vd_ioctx_wait(w.ctx, 50000000);
	(void)vd_ioctx_wait(w.ctx, 10000000);
	assert_int_equal(w.calls, 5);
	/* watch again after unwatching */
	assert_int_equal(vd_ioctx_watch_fd(w.ctx, w.fd, watch_cb, &w), 0);
	w.unwatch_self = true;
	for (loops = 0; w.calls < 6 && loops < 100; loops++) {
		assert_true(vd_ioctx_wait(w.ctx, 1000000000ull) >= 0);
	}
	assert_int_equal(w.calls, 6);
	kick(w.fd);
	(void)vd_ioctx_wait(w.ctx, 30000000);
	assert_int_equal(w.calls, 6);
	vd_ioctx_destroy(w.ctx);
	close(w.fd);
}

static void test_watch_multishot(void **state)
{
	watch_cycle(true);
}

static void test_watch_singleshot(void **state)
{
	watch_cycle(false);
}

static void test_watch_destroy_armed(void **state)
{
	struct wstate w = { .drain = true };

	/* destroying with a live watch and an unreaped event must not leak or crash */
	assert_int_equal(vd_ioctx_create(8, &w.ctx, NULL), 0);
	w.fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	assert_int_equal(vd_ioctx_watch_fd(w.ctx, w.fd, watch_cb, &w), 0);
	assert_int_equal(vd_ioctx_poll(w.ctx), 0);
	kick(w.fd);
	vd_ioctx_destroy(w.ctx);
	close(w.fd);
	assert_int_equal(w.calls, 0);
}

static void test_wait_timeout(void **state)
{
	struct vd_ioctx *ctx;
	uint64_t t0, dt;
	int efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	struct wstate w = { 0 };

	assert_int_equal(vd_ioctx_create(8, &ctx, NULL), 0);
	/* nothing pending, no timeout: returns at once instead of sleeping forever */
	assert_int_equal(vd_ioctx_wait(ctx, 0), 0);
	w.ctx = ctx;
	w.fd = efd;
	assert_int_equal(vd_ioctx_watch_fd(ctx, efd, watch_cb, &w), 0);
	t0 = vd_now_ns();
	assert_int_equal(vd_ioctx_wait(ctx, 100000000), 0);
	dt = vd_now_ns() - t0;
	assert_true(dt >= 90000000);
	assert_true(dt < 2000000000ull);
	vd_ioctx_destroy(ctx);
	close(efd);
}

static void test_backend_find(void **state)
{
	struct vd_err err = { 0 };
	struct vd_file *f;

	assert_non_null(vd_io_backend_find("uring"));
	assert_non_null(vd_io_backend_find("sync"));
	assert_non_null(vd_io_backend_find("null"));
	assert_non_null(vd_io_backend_find("mem"));
	assert_null(vd_io_backend_find("nbd"));
	assert_null(vd_io_backend_find(NULL));
	assert_int_equal(vd_file_open("bogus", "x", NULL, &f, &err), -EINVAL);
	assert_non_null(strstr(vd_err_msg(&err), "bogus"));
	memset(&err, 0, sizeof(err));
	assert_int_equal(vd_file_open("mem", NULL, NULL, &f, &err), -EINVAL);
	memset(&err, 0, sizeof(err));
	assert_true(vd_file_open("uring", "/nonexistent/vd", NULL, &f, &err) == -ENOENT);
	assert_non_null(strstr(vd_err_msg(&err), "/nonexistent/vd"));
	vd_file_close(NULL);
	vd_ioctx_destroy(NULL);
}

/* io_uring blocked as a container's seccomp profile does: a clear error, and rw_sync still works */
static int child_without_uring(const char *path)
{
	struct sock_filter filt[] = {
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_io_uring_setup, 0, 1),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | ENOSYS),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
	};
	struct sock_fprog prog = { .len = VD_ARRAY_SIZE(filt), .filter = filt };
	struct vd_file_opts o = { .cache = VD_CACHE_DIRECT };
	struct vd_err err = { 0 };
	struct vd_ioctx *ctx;
	struct vd_file *f;
	char buf[10] = "0123456789", back[10];

	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 ||
	    prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) < 0) {
		return 77;
	}
	if (vd_ioctx_create(8, &ctx, &err) != -ENOSYS || !strstr(vd_err_msg(&err), "seccomp")) {
		return 2;
	}
	if (vd_file_open("uring", path, &o, &f, NULL) < 0) {
		return 3;
	}
	if (vd_file_rw_sync(f, VD_IO_WRITE, buf, 10, 7) != 10 ||
	    vd_file_rw_sync(f, VD_IO_READ, back, 10, 7) != 10 || memcmp(buf, back, 10) != 0 ||
	    vd_file_rw_sync(f, VD_IO_FLUSH, NULL, 0, 0) != 0) {
		vd_file_close(f);
		return 4;
	}
	vd_file_close(f);
	return 0;
}

static void test_no_io_uring(void **state)
{
	char path[512];
	int fd, status;
	pid_t pid;

	snprintf(path, sizeof(path), "%s/vd-io-nouring-XXXXXX", disk_dir());
	fd = mkstemp(path);
	assert_true(fd >= 0);
	assert_int_equal(ftruncate(fd, 65536), 0);
	close(fd);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		_exit(child_without_uring(path));
	}
	assert_int_equal(waitpid(pid, &status, 0), pid);
	unlink(path);
	assert_true(WIFEXITED(status));
	if (WEXITSTATUS(status) == 77) {
		skip();
	}
	assert_int_equal(WEXITSTATUS(status), 0);
}

/*
 * Registered buffers and files: a second ctx with the region and a
 * fixed-file table; single-buffer I/O inside the region takes the FIXED
 * path (uring), everything else the plain one; the data is the same.
 */
static void test_fixed(void **state)
{
	struct fixture *fx = *state;
	const size_t region = 64 * 4096;
	unsigned char *buf = abuf(region), *out = abuf(region);
	struct vd_err err = { 0 };
	struct vd_ioctx *ctx;
	struct iovec iov[2];
	int ret, files;

	assert_int_equal(vd_ioctx_create(16, &ctx, &err), 0);
	ret = vd_ioctx_register_buffers(ctx, buf, region);
	if (ret < 0) {
		/* e.g. RLIMIT_MEMLOCK for an unprivileged run: plain I/O only */
		fprintf(stderr, "[%s] registered buffers unavailable: %s\n", fx->cfg->name,
			strerror(-ret));
	} else {
		assert_int_equal(vd_ioctx_fixed_buf(ctx, buf, region), 0);
		assert_int_equal(vd_ioctx_fixed_buf(ctx, buf + 4096, 8192), 0);
		assert_int_equal(vd_ioctx_fixed_buf(ctx, buf + region - 4096, 8192), -1);
		assert_int_equal(vd_ioctx_fixed_buf(ctx, out, 4096), -1);
	}
	assert_int_equal(vd_ioctx_register_buffers(ctx, NULL, 4096), -EINVAL);
	files = vd_ioctx_register_files(ctx, 3);
	for (size_t i = 0; i < region; i++) {
		buf[i] = (unsigned char)(rnd() & 0xff);
	}
	/* inside the region, one buffer: WRITE_FIXED / READ_FIXED */
	iov[0] = (struct iovec){ buf, region };
	assert_int_equal(run_on(fx->f, ctx, VD_IO_WRITE, 8192, region, iov, 1), (int64_t)region);
	memcpy(fx->model + 8192, buf, region);
	memset(buf, 0, region);
	iov[0] = (struct iovec){ buf + 4096, region - 4096 };
	assert_int_equal(run_on(fx->f, ctx, VD_IO_READ, 8192, region - 4096, iov, 1),
			 (int64_t)(region - 4096));
	if (!fx->null) {
		assert_memory_equal(buf + 4096, fx->model + 8192, region - 4096);
	}
	/* two buffers, or outside the region: READV/WRITEV */
	iov[0] = (struct iovec){ buf, 4096 };
	iov[1] = (struct iovec){ out, 4096 };
	assert_int_equal(run_on(fx->f, ctx, VD_IO_READ, 8192, 8192, iov, 2), 8192);
	if (!fx->null) {
		assert_memory_equal(buf, fx->model + 8192, 4096);
		assert_memory_equal(out, fx->model + 8192 + 4096, 4096);
	}
	assert_int_equal(run_on(fx->f, ctx, VD_IO_FLUSH, 0, 0, NULL, 0), 0);
	if (files == 0) {
		/* the uring file took slot 0 at its first request */
		int used = strcmp(fx->cfg->backend, "uring") == 0 ? 1 : 0;
		uint64_t a = vd_io_new_file_id(), b = vd_io_new_file_id(), c = vd_io_new_file_id();
		int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);

		assert_true(fd >= 0);
		assert_int_equal(vd_ioctx_register_files(ctx, 2), -EBUSY);
		assert_int_equal(vd_ioctx_fixed_file(ctx, a, fd), used);
		assert_int_equal(vd_ioctx_fixed_file(ctx, b, fd), used + 1);
		assert_int_equal(vd_ioctx_fixed_file(ctx, a, fd), used);
		if (used == 0) {
			assert_int_equal(vd_ioctx_fixed_file(ctx, c, fd), 2);
		}
		assert_int_equal(vd_ioctx_fixed_file(ctx, vd_io_new_file_id(), fd), -1); /* full */
		assert_int_equal(vd_ioctx_fixed_file(ctx, 0, fd), -1);
		close(fd);
		/* a full table: files go by fd, and still work */
		iov[0] = (struct iovec){ buf, 4096 };
		assert_int_equal(run_on(fx->f, ctx, VD_IO_READ, 8192, 4096, iov, 1), 4096);
	} else {
		fprintf(stderr, "[%s] registered files unavailable: %s\n", fx->cfg->name,
			strerror(-files));
	}
	vd_ioctx_destroy(ctx);
	free(buf);
	free(out);
}

static const struct cfg cfgs[] = {
	{ "uring-direct", "uring", NULL, VD_CACHE_DIRECT },
	{ "uring-tmpfs", "uring", "/dev/shm", VD_CACHE_WRITEBACK },
	{ "sync-direct", "sync", NULL, VD_CACHE_DIRECT },
	{ "sync-buffered", "sync", NULL, VD_CACHE_WRITEBACK },
	{ "mem", "mem", NULL, VD_CACHE_DIRECT },
	{ "null", "null", NULL, VD_CACHE_DIRECT },
};

int main(void)
{
	const struct CMUnitTest conformance[] = {
		cmocka_unit_test(test_rw_random),
		cmocka_unit_test(test_unaligned_iov),
		cmocka_unit_test(test_eof),
		cmocka_unit_test(test_eof_unaligned_file),
		cmocka_unit_test(test_rw_sync_helper),
		cmocka_unit_test(test_flush),
		cmocka_unit_test(test_discard),
		cmocka_unit_test(test_write_zeroes),
		cmocka_unit_test(test_readonly),
		cmocka_unit_test(test_bad_requests),
		cmocka_unit_test(test_many_inflight),
		cmocka_unit_test(test_sq_stuck),
		cmocka_unit_test(test_fixed),
	};
	const struct CMUnitTest reactor[] = {
		cmocka_unit_test(test_watch_multishot),     cmocka_unit_test(test_watch_singleshot),
		cmocka_unit_test(test_watch_destroy_armed), cmocka_unit_test(test_wait_timeout),
		cmocka_unit_test(test_backend_find),        cmocka_unit_test(test_no_io_uring),
	};
	struct cfg local[VD_ARRAY_SIZE(cfgs)];
	const char *seed = getenv("VD_SEED");
	struct vd_ioctx *probe;
	struct vd_err err = { 0 };
	int failed = 0;
	size_t i;

	g_rng = seed ? strtoull(seed, NULL, 0) : (uint64_t)vd_now_ns();
	if (g_rng == 0) {
		g_rng = 1;
	}
	fprintf(stderr, "VD_SEED=%llu\n", (unsigned long long)g_rng);
	if (vd_ioctx_create(4, &probe, &err) < 0) {
		fprintf(stderr, "skip: %s\n", vd_err_msg(&err));
		return 77;
	}
	vd_ioctx_destroy(probe);
	memcpy(local, cfgs, sizeof(cfgs));
	for (i = 0; i < VD_ARRAY_SIZE(local); i++) {
		if (!local[i].dir && strcmp(local[i].backend, "mem") != 0 &&
		    strcmp(local[i].backend, "null") != 0) {
			local[i].dir = disk_dir();
		}
		g_cfg = &local[i];
		failed += _cmocka_run_group_tests(local[i].name, conformance,
						  VD_ARRAY_SIZE(conformance), group_setup,
						  group_teardown);
	}
	failed += cmocka_run_group_tests_name("reactor", reactor, NULL, NULL);
	return failed ? 1 : 0;
}
