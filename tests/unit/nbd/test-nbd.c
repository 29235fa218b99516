/*
 * nbd unit tests: conn.c is included to reach its statics (request
 * validation, the buffer arena). Whole sessions run over a socketpair
 * against a mem image, on this thread only: the test plays the client and
 * turns the server's reactor with vd_ioctx_poll() (no OS threads).
 */
#include "nbd/conn.c" /* NOLINT(bugprone-suspicious-include): its statics */

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <cmocka.h>
#include <fcntl.h>

#define DISK (8u << 20)

struct env {
	struct vd_image *img;
	struct vd_ioctx *ioctx;
	struct vd_image_queue *iq;
	struct vd_nbd_server *srv;
	int cfd; /* the client's end */
};

static int t_send(void *thread, void (*fn)(void *), void *arg)
{
	struct env *e = thread;

	return vd_ioctx_send_msg(e->ioctx, fn, arg);
}

static void t_bind(void *thread, struct vd_ioctx **ioctx, struct vd_image_queue **iq)
{
	struct env *e = thread;

	*ioctx = e->ioctx;
	*iq = e->iq;
}

static const struct vd_nbd_thread_ops g_ops = { .send = t_send, .bind = t_bind };

static void env_open(struct env *e, bool readonly)
{
	struct vd_image_opts o = { .format = "raw", .io_backend = "mem", .size_bytes = DISK };
	struct vd_nbd_config cfg = { .export_name = "unit",
				     .readonly = readonly,
				     .max_inflight = 4 };
	struct vd_err err = { 0 };
	int sv[2];

	memset(e, 0, sizeof(*e));
	assert_int_equal(vd_image_open("mem", &o, &e->img, &err), 0);
	assert_int_equal(vd_ioctx_create(64, &e->ioctx, &err), 0);
	assert_int_equal(vd_ioctx_msgs_enable(e->ioctx), 0);
	assert_int_equal(vd_image_queue_create(e->img, e->ioctx, &e->iq), 0);
	assert_int_equal(vd_nbd_server_create(e->img, &cfg, &e->srv, &err), 0);
	assert_int_equal(vd_nbd_server_add_thread(e->srv, &g_ops, e), 0);
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
	e->cfd = sv[0];
	e->srv->nr_conns = 1; /* as accept counts it */
	e->srv->threads[0].ioctx = e->ioctx;
	e->srv->threads[0].iq = e->iq;
	e->srv->threads[0].bound = true;
	vd_nbd_conn_start(&e->srv->threads[0], sv[1], NULL);
}

static void env_close(struct env *e)
{
	/* stop from "another thread": here, messages we run ourselves */
	e->srv->stopped = true;
	__atomic_store_n(&e->srv->stopping, true, __ATOMIC_RELEASE);
	vd_nbd_thread_kill_all(&e->srv->threads[0]);
	for (int i = 0; i < 1000 && vd_nbd_server_conns(e->srv) != 0; i++) {
		vd_ioctx_poll(e->ioctx);
	}
	assert_int_equal(vd_nbd_server_conns(e->srv), 0);
	vd_nbd_server_destroy(e->srv);
	close(e->cfd);
	vd_image_queue_destroy(e->iq);
	vd_ioctx_destroy(e->ioctx);
	vd_image_close(e->img);
}

static void pump(struct env *e)
{
	for (int i = 0; i < 20; i++) {
		vd_ioctx_poll(e->ioctx);
	}
}

static void csend(struct env *e, const void *p, size_t n)
{
	size_t off = 0;

	while (off < n) {
		ssize_t r = send(e->cfd, (const uint8_t *)p + off, n - off, MSG_NOSIGNAL);

		if (r < 0 && errno == EAGAIN) {
			pump(e);
			continue;
		}
		assert_true(r > 0);
		off += (size_t)r;
	}
	pump(e);
}

/* Read exactly n bytes (turning the server meanwhile); false on EOF. */
static bool crecv(struct env *e, void *p, size_t n)
{
	size_t off = 0;

	for (int spins = 0; off < n && spins < 100000; spins++) {
		ssize_t r = recv(e->cfd, (uint8_t *)p + off, n - off, 0);

		if (r == 0) {
			return false;
		}
		if (r < 0) {
			assert_int_equal(errno, EAGAIN);
			vd_ioctx_poll(e->ioctx);
			continue;
		}
		off += (size_t)r;
	}
	assert_int_equal(off, n);
	return true;
}

static void opt(struct env *e, uint32_t option, const void *data, uint32_t len)
{
	uint8_t h[16];

	nbd_put64(h, NBD_MAGIC_OPTS);
	nbd_put32(h + 8, option);
	nbd_put32(h + 12, len);
	csend(e, h, 16);
	if (len) {
		csend(e, data, len);
	}
}

/* One option reply: returns its type, payload into buf (up to cap). */
static uint32_t rep(struct env *e, uint8_t *buf, size_t cap, uint32_t *len)
{
	uint8_t h[20];

	assert_true(crecv(e, h, 20));
	assert_true(nbd_get64(h) == NBD_MAGIC_OPT_REPLY);
	*len = nbd_get32(h + 16);
	assert_true(*len <= cap);
	if (*len) {
		assert_true(crecv(e, buf, *len));
	}
	return nbd_get32(h + 12);
}

static void handshake(struct env *e, bool structured)
{
	uint8_t g[18], cf[4], buf[256], go[4 + 4 + 2];
	uint32_t len, type;
	bool saw_export = false, saw_bs = false;

	assert_true(crecv(e, g, 18));
	assert_true(nbd_get64(g) == NBD_MAGIC_INIT);
	assert_true(nbd_get64(g + 8) == NBD_MAGIC_OPTS);
	assert_int_equal(nbd_get16(g + 16), NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
	nbd_put32(cf, NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
	csend(e, cf, 4);
	if (structured) {
		opt(e, NBD_OPT_STRUCTURED_REPLY, NULL, 0);
		assert_int_equal(rep(e, buf, sizeof(buf), &len), NBD_REP_ACK);
		{
			static const char q[] = "base:allocation";
			uint8_t m[4 + 4 + 4 + 4 + sizeof(q) - 1];

			nbd_put32(m, 4);
			memcpy(m + 4, "unit", 4); /* NOLINT(bugprone-not-null-terminated-result) */
			nbd_put32(m + 8, 1);
			nbd_put32(m + 12, sizeof(q) - 1);
			memcpy(m + 16, q, sizeof(q) - 1);
			opt(e, NBD_OPT_SET_META_CONTEXT, m, sizeof(m));
			assert_int_equal(rep(e, buf, sizeof(buf), &len), NBD_REP_META_CONTEXT);
			assert_int_equal(nbd_get32(buf), NBD_META_ID);
			assert_int_equal(rep(e, buf, sizeof(buf), &len), NBD_REP_ACK);
		}
	}
	nbd_put32(go, 4);
	memcpy(go + 4, "unit", 4); /* NOLINT(bugprone-not-null-terminated-result) */
	nbd_put16(go + 8, 0);
	opt(e, NBD_OPT_GO, go, sizeof(go));
	while ((type = rep(e, buf, sizeof(buf), &len)) == NBD_REP_INFO) {
		if (nbd_get16(buf) == NBD_INFO_EXPORT) {
			assert_int_equal(len, 12);
			assert_true(nbd_get64(buf + 2) == DISK);
			assert_true(nbd_get16(buf + 10) & NBD_FLAG_HAS_FLAGS);
			assert_true(nbd_get16(buf + 10) & NBD_FLAG_CAN_MULTI_CONN);
			saw_export = true;
		} else if (nbd_get16(buf) == NBD_INFO_BLOCK_SIZE) {
			assert_int_equal(nbd_get32(buf + 2), 512);
			assert_int_equal(nbd_get32(buf + 6), 4096);
			assert_int_equal(nbd_get32(buf + 10), VD_NBD_DEF_MAX_BLOCK);
			saw_bs = true;
		}
	}
	assert_int_equal(type, NBD_REP_ACK);
	assert_true(saw_export && saw_bs);
}

static void request(struct env *e, uint16_t type, uint16_t flags, uint64_t cookie, uint64_t off,
		    uint32_t len)
{
	uint8_t h[28];

	nbd_put32(h, NBD_MAGIC_REQUEST);
	nbd_put16(h + 4, flags);
	nbd_put16(h + 6, type);
	nbd_put64(h + 8, cookie);
	nbd_put64(h + 16, off);
	nbd_put32(h + 24, len);
	csend(e, h, 28);
}

static uint32_t simple(struct env *e, uint64_t cookie)
{
	uint8_t h[16];

	assert_true(crecv(e, h, 16));
	assert_int_equal(nbd_get32(h), NBD_MAGIC_SIMPLE_REPLY);
	assert_true(nbd_get64(h + 8) == cookie);
	return nbd_get32(h + 4);
}

static void test_session_simple(void **state)
{
	struct env e;
	static uint8_t buf[65536], back[65536];

	(void)state;
	env_open(&e, false);
	handshake(&e, false);
	for (size_t i = 0; i < sizeof(buf); i++) {
		buf[i] = (uint8_t)(i * 7 + 1);
	}
	request(&e, NBD_CMD_WRITE, NBD_CMD_FLAG_FUA, 1, 4096, sizeof(buf));
	csend(&e, buf, sizeof(buf));
	assert_int_equal(simple(&e, 1), 0);
	request(&e, NBD_CMD_READ, 0, 2, 4096, sizeof(back));
	assert_int_equal(simple(&e, 2), 0);
	assert_true(crecv(&e, back, sizeof(back)));
	assert_memory_equal(buf, back, sizeof(buf));
	/* a read at no particular alignment */
	request(&e, NBD_CMD_READ, 0, 20, 4096 + 3, 1000);
	assert_int_equal(simple(&e, 20), 0);
	assert_true(crecv(&e, back, 1000));
	assert_memory_equal(buf + 3, back, 1000);
	/* errors that keep the connection */
	request(&e, NBD_CMD_READ, 0, 3, DISK - 512, 1024);
	assert_int_equal(simple(&e, 3), NBD_EINVAL);
	request(&e, NBD_CMD_WRITE, 0, 4, DISK, 512);
	csend(&e, buf, 512);
	assert_int_equal(simple(&e, 4), NBD_ENOSPC);
	request(&e, 42, 0, 5, 0, 0);
	assert_int_equal(simple(&e, 5), NBD_EINVAL);
	request(&e, NBD_CMD_WRITE_ZEROES, 0, 6, 4096, 4096);
	assert_int_equal(simple(&e, 6), 0);
	request(&e, NBD_CMD_READ, 0, 7, 4096, 4096);
	assert_int_equal(simple(&e, 7), 0);
	assert_true(crecv(&e, back, 4096));
	for (int i = 0; i < 4096; i++) {
		assert_int_equal(back[i], 0);
	}
	request(&e, NBD_CMD_FLUSH, 0, 8, 0, 0);
	assert_int_equal(simple(&e, 8), 0);
	request(&e, NBD_CMD_DISC, 0, 9, 0, 0);
	pump(&e);
	assert_false(crecv(&e, back, 1)); /* closed after DISC */
	env_close(&e);
}

static void test_session_structured(void **state)
{
	struct env e;
	uint8_t h[20], p[8 + 8 * NBD_MAX_EXTENTS];
	static uint8_t data[8192];

	(void)state;
	env_open(&e, true);
	handshake(&e, true);
	request(&e, NBD_CMD_READ, 0, 11, 0, sizeof(data));
	assert_true(crecv(&e, h, 20));
	assert_int_equal(nbd_get32(h), NBD_MAGIC_STRUCT_REPLY);
	assert_int_equal(nbd_get16(h + 4), NBD_REPLY_FLAG_DONE);
	assert_int_equal(nbd_get16(h + 6), NBD_REPLY_TYPE_OFFSET_DATA);
	assert_int_equal(nbd_get32(h + 16), 8 + sizeof(data));
	assert_true(crecv(&e, p, 8));
	assert_true(nbd_get64(p) == 0);
	assert_true(crecv(&e, data, sizeof(data)));
	/* read-only: writes refused with EPERM */
	request(&e, NBD_CMD_WRITE, 0, 12, 0, 512);
	csend(&e, data, 512);
	assert_int_equal(simple(&e, 12), NBD_EPERM);
	/* block status over the whole disk */
	request(&e, NBD_CMD_BLOCK_STATUS, 0, 13, 0, DISK);
	assert_true(crecv(&e, h, 20));
	assert_int_equal(nbd_get16(h + 6), NBD_REPLY_TYPE_BLOCK_STATUS);
	assert_true(nbd_get32(h + 16) >= 12 && (nbd_get32(h + 16) - 4) % 8 == 0);
	assert_true(crecv(&e, p, nbd_get32(h + 16)));
	assert_int_equal(nbd_get32(p), NBD_META_ID);
	{
		uint64_t sum = 0;

		for (uint32_t i = 0; i < (nbd_get32(h + 16) - 4) / 8; i++) {
			sum += nbd_get32(p + 4 + (size_t)8 * i);
		}
		assert_true(sum == DISK);
	}
	/* a read error chunk: past the end */
	request(&e, NBD_CMD_READ, 0, 14, DISK, 512);
	assert_true(crecv(&e, h, 20));
	assert_int_equal(nbd_get16(h + 6), NBD_REPLY_TYPE_ERROR);
	assert_true(crecv(&e, p, nbd_get32(h + 16)));
	assert_int_equal(nbd_get32(p), NBD_EINVAL);
	env_close(&e);
}

static void test_hostile_negotiation(void **state)
{
	struct env e;
	uint8_t g[18], cf[4], buf[64];
	uint32_t len;
	static uint8_t junk[NBD_OPT_MAX + 100];

	(void)state;
	env_open(&e, false);
	assert_true(crecv(&e, g, 18));
	nbd_put32(cf, 1);
	csend(&e, cf, 4);
	opt(&e, NBD_OPT_INFO, junk, sizeof(junk)); /* too big: skipped */
	assert_int_equal(rep(&e, buf, sizeof(buf), &len), NBD_REP_ERR_TOO_BIG);
	opt(&e, NBD_OPT_STARTTLS, NULL, 0);
	assert_int_equal(rep(&e, buf, sizeof(buf), &len), NBD_REP_ERR_POLICY);
	opt(&e, NBD_OPT_LIST_META_CONTEXT, NULL, 0);
	assert_int_equal(rep(&e, buf, sizeof(buf), &len), NBD_REP_ERR_INVALID);
	opt(&e, 0x777, NULL, 0);
	assert_int_equal(rep(&e, buf, sizeof(buf), &len), NBD_REP_ERR_UNSUP);
	nbd_put32(buf, 0x7fffffff); /* a name longer than the option */
	nbd_put16(buf + 4, 0);
	opt(&e, NBD_OPT_GO, buf, 6);
	assert_int_equal(rep(&e, buf, sizeof(buf), &len), NBD_REP_ERR_INVALID);
	/* bad magic: closed */
	memset(buf, 0xee, 16);
	csend(&e, buf, 16);
	pump(&e);
	assert_false(crecv(&e, buf, 1));
	env_close(&e);
}

/*
 * Zero-length requests succeed with no data, as qemu-nbd answers them; a
 * zero-length WRITE used to drop the connection without a reply (recv of
 * 0 bytes taken for EOF) after a memcpy to a NULL buffer.
 */
static void test_zero_length(void **state)
{
	static const uint16_t types[] = { NBD_CMD_WRITE, NBD_CMD_READ, NBD_CMD_TRIM,
					  NBD_CMD_WRITE_ZEROES, NBD_CMD_WRITE };
	struct env e;
	uint8_t h[20], back[512];

	(void)state;
	env_open(&e, false);
	handshake(&e, false);
	for (unsigned int i = 0; i < VD_ARRAY_SIZE(types); i++) {
		request(&e, types[i], i == 4 ? NBD_CMD_FLAG_FUA : 0, 100 + i, 4096, 0);
		assert_int_equal(simple(&e, 100 + i), 0);
	}
	/* past the end, even with no data: an error, the connection lives */
	request(&e, NBD_CMD_WRITE, 0, 110, DISK + 4096, 0);
	assert_int_equal(simple(&e, 110), NBD_ENOSPC);
	request(&e, NBD_CMD_READ, 0, 111, 0, sizeof(back));
	assert_int_equal(simple(&e, 111), 0);
	assert_true(crecv(&e, back, sizeof(back)));
	env_close(&e);

	/* structured: a zero-length READ is one NONE chunk */
	env_open(&e, false);
	handshake(&e, true);
	request(&e, NBD_CMD_WRITE, 0, 120, 0, 0);
	assert_int_equal(simple(&e, 120), 0);
	request(&e, NBD_CMD_READ, 0, 121, 0, 0);
	assert_true(crecv(&e, h, 20));
	assert_int_equal(nbd_get32(h), NBD_MAGIC_STRUCT_REPLY);
	assert_int_equal(nbd_get16(h + 4), NBD_REPLY_FLAG_DONE);
	assert_int_equal(nbd_get16(h + 6), NBD_REPLY_TYPE_NONE);
	assert_int_equal(nbd_get32(h + 16), 0);
	env_close(&e);
}

/* --tls-required: options before STARTTLS refused, EXPORT_NAME closes. */
static void test_tls_required(void **state)
{
	struct env e;
	uint8_t g[18], cf[4], buf[256], go[4 + 2] = { 0 };
	uint32_t len;

	(void)state;
	env_open(&e, false);
	e.srv->tls_required = true; /* no credentials: STARTTLS is refused too */
	assert_true(crecv(&e, g, 18));
	nbd_put32(cf, NBD_FLAG_C_FIXED_NEWSTYLE);
	csend(&e, cf, 4);
	opt(&e, NBD_OPT_GO, go, sizeof(go));
	assert_int_equal(rep(&e, buf, sizeof(buf), &len), NBD_REP_ERR_TLS_REQD);
	opt(&e, NBD_OPT_LIST, NULL, 0);
	assert_int_equal(rep(&e, buf, sizeof(buf), &len), NBD_REP_ERR_TLS_REQD);
	opt(&e, NBD_OPT_STRUCTURED_REPLY, NULL, 0);
	assert_int_equal(rep(&e, buf, sizeof(buf), &len), NBD_REP_ERR_TLS_REQD);
	opt(&e, NBD_OPT_STARTTLS, NULL, 0);
	assert_int_equal(rep(&e, buf, sizeof(buf), &len), NBD_REP_ERR_POLICY);
	opt(&e, NBD_OPT_EXPORT_NAME, NULL, 0);
	pump(&e);
	assert_false(crecv(&e, buf, 1));
	env_close(&e);
}

/* The sweeper closes a connection idle in transmission, not a busy one. */
static void test_idle_timeout(void **state)
{
	struct env e;
	struct nbd_thread *t;
	uint8_t back[512];

	(void)state;
	env_open(&e, false);
	handshake(&e, false);
	t = &e.srv->threads[0];
	assert_true(t->conns != NULL && t->conns->transmission && t->tfd >= 0);
	e.srv->idle_ns = 1000000000ull;
	on_timer(t, 0); /* active just now: kept */
	assert_false(t->conns->dead);
	request(&e, NBD_CMD_READ, 0, 1, 0, sizeof(back));
	assert_int_equal(simple(&e, 1), 0);
	assert_true(crecv(&e, back, sizeof(back)));
	t->conns->active_ns -= 2000000000ull; /* as if 2 s had passed */
	on_timer(t, 0);
	pump(&e);
	assert_false(crecv(&e, back, 1)); /* closed */
	env_close(&e);
}

/* The client vanishes with writes in flight: no leak, no crash (ASan). */
static void test_vanish_in_flight(void **state)
{
	struct env e;
	static uint8_t buf[16384];

	(void)state;
	env_open(&e, false);
	handshake(&e, true);
	for (int i = 0; i < 4; i++) {
		uint8_t h[28];

		nbd_put32(h, NBD_MAGIC_REQUEST);
		nbd_put16(h + 4, NBD_CMD_FLAG_FUA);
		nbd_put16(h + 6, NBD_CMD_WRITE);
		nbd_put64(h + 8, (uint64_t)i);
		nbd_put64(h + 16, (uint64_t)i * sizeof(buf));
		nbd_put32(h + 24, sizeof(buf));
		assert_int_equal(send(e.cfd, h, 28, 0), 28);
		assert_int_equal(send(e.cfd, buf, sizeof(buf), 0), (ssize_t)sizeof(buf));
	}
	vd_ioctx_poll(e.ioctx); /* requests start */
	shutdown(e.cfd, SHUT_RDWR);
	env_close(&e);
}

static void test_check_req(void **state)
{
	struct vd_nbd_server s = { 0 };
	struct nbd_conn c = { 0 };
	struct nbd_req r = { 0 };

	(void)state;
	s.info.size_bytes = 1 << 20;
	s.min_block_bytes = 512;
	s.max_block_bytes = 65536;
	s.fast_zero = false;
	c.s = &s;
	c.structured = true;
	c.meta_alloc = true;
	r.type = NBD_CMD_READ;
	r.offset_bytes = 0;
	r.len_bytes = 65536;
	assert_int_equal(check_req(&c, &r), 0);
	r.len_bytes = 65536 + 512;
	assert_int_equal(check_req(&c, &r), NBD_EINVAL);
	r.len_bytes = 512;
	r.offset_bytes = (1 << 20) - 512;
	assert_int_equal(check_req(&c, &r), 0);
	r.offset_bytes = UINT64_MAX - 100;
	assert_int_equal(check_req(&c, &r), NBD_EINVAL);
	r.offset_bytes = 100; /* reads: any alignment */
	assert_int_equal(check_req(&c, &r), 0);
	r.type = NBD_CMD_WRITE;
	assert_int_equal(check_req(&c, &r), NBD_EINVAL); /* writes: sectors */
	r.type = NBD_CMD_READ;
	r.offset_bytes = 0;
	r.flags = 0x100;
	assert_int_equal(check_req(&c, &r), NBD_EINVAL);
	r.flags = NBD_CMD_FLAG_DF;
	assert_int_equal(check_req(&c, &r), 0);
	r.type = NBD_CMD_WRITE;
	assert_int_equal(check_req(&c, &r), NBD_EINVAL); /* DF on a write */
	r.flags = 0;
	r.offset_bytes = 1 << 20;
	assert_int_equal(check_req(&c, &r), NBD_ENOSPC);
	r.type = NBD_CMD_WRITE_ZEROES;
	r.offset_bytes = 0;
	r.len_bytes = 1 << 20;
	r.flags = NBD_CMD_FLAG_FAST_ZERO;
	assert_int_equal(check_req(&c, &r), NBD_ENOTSUP);
	s.fast_zero = true;
	assert_int_equal(check_req(&c, &r), 0);
	r.type = NBD_CMD_BLOCK_STATUS;
	r.flags = 0;
	assert_int_equal(check_req(&c, &r), 0);
	c.meta_alloc = false;
	assert_int_equal(check_req(&c, &r), NBD_EINVAL);
	s.readonly = true;
	r.type = NBD_CMD_TRIM;
	assert_int_equal(check_req(&c, &r), NBD_EPERM);
	r.type = NBD_CMD_CACHE;
	assert_int_equal(check_req(&c, &r), NBD_EINVAL);
}

static void test_arena(void **state)
{
	struct nbd_conn c = { 0 };
	uint64_t map[2] = { 0 };
	struct nbd_req a = { 0 }, b = { 0 }, d = { 0 };
	static _Alignas(4096) uint8_t arena[128 * 4096];

	(void)state;
	c.pagemap = map;
	c.arena_pages = 128;
	c.arena = arena;
	assert_true(req_get_buffer(&c, &a, 100 * 4096));
	assert_int_equal(a.page, 0);
	assert_int_equal(a.npages, 100);
	assert_false(req_get_buffer(&c, &b, 29 * 4096));
	assert_true(req_get_buffer(&c, &b, 28 * 4096 - 1));
	assert_int_equal(b.page, 100);
	assert_false(req_get_buffer(&c, &d, 4096));
	pages_mark(&c, a.page, a.npages, false);
	assert_true(req_get_buffer(&c, &d, 64 * 4096));
	assert_int_equal(d.page, 0);
	assert_true(((uintptr_t)d.iov.iov_base & 4095) == 0);
	pages_mark(&c, b.page, b.npages, false);
	pages_mark(&c, d.page, d.npages, false);
	assert_true(req_get_buffer(&c, &a, 128 * 4096));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_check_req),
		cmocka_unit_test(test_arena),
		cmocka_unit_test(test_session_simple),
		cmocka_unit_test(test_session_structured),
		cmocka_unit_test(test_hostile_negotiation),
		cmocka_unit_test(test_vanish_in_flight),
		cmocka_unit_test(test_zero_length),
		cmocka_unit_test(test_tls_required),
		cmocka_unit_test(test_idle_timeout),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
