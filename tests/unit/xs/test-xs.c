/*
 * Unit tests of the simulated xenstored, driven over socketpairs with the
 * raw xs_wire protocol: tree ops, paths, permissions, transactions,
 * watches and the bounds on what a client may make the server hold.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <cmocka.h>

#include <xen/io/xs_wire.h>

#include "common/compiler.h"
#include "sim/xs/xs.h"
#include "sim/xs/xs-int.h"

#define MAX_EVENTS 64

struct client {
	int fd;
	unsigned int nevents;
	char events[MAX_EVENTS][256]; /* "path|token" */
};

struct msg {
	uint32_t type;
	uint32_t len;
	char data[XENSTORE_PAYLOAD_MAX + 1];
};

static struct vd_xs_server *g_s;

static void pump(void)
{
	for (int i = 0; i < 8; i++) {
		assert_int_equal(vd_xs_server_run(g_s), 0);
	}
}

static struct client *client_new(uint16_t domid)
{
	struct client *c = calloc(1, sizeof(*c));
	int sv[2];

	assert_non_null(c);
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	assert_int_equal(vd_xs_server_add_conn(g_s, sv[0], domid), 0);
	c->fd = sv[1];
	return c;
}

static void client_free(struct client *c)
{
	close(c->fd);
	free(c);
	pump();
}

static void send_raw(struct client *c, uint32_t type, uint32_t tx, const void *data, size_t len)
{
	struct xsd_sockmsg h = { .type = type, .req_id = 77, .tx_id = tx, .len = (uint32_t)len };

	assert_int_equal(write(c->fd, &h, sizeof(h)), (ssize_t)sizeof(h));
	if (len) {
		assert_int_equal(write(c->fd, data, len), (ssize_t)len);
	}
}

static void read_full(int fd, void *buf, size_t len)
{
	size_t got = 0;

	while (got < len) {
		ssize_t n = read(fd, (char *)buf + got, len - got);

		assert_true(n > 0);
		got += (size_t)n;
	}
}

/* Next message from the server, or false if none is queued. */
static bool recv_msg(struct client *c, struct msg *m, uint32_t *req_id)
{
	struct pollfd p = { .fd = c->fd, .events = POLLIN };
	struct xsd_sockmsg h;

	pump();
	if (poll(&p, 1, 0) != 1) {
		return false;
	}
	read_full(c->fd, &h, sizeof(h));
	assert_true(h.len <= XENSTORE_PAYLOAD_MAX);
	m->type = h.type;
	m->len = h.len;
	read_full(c->fd, m->data, h.len);
	m->data[h.len] = '\0';
	if (req_id) {
		*req_id = h.req_id;
	}
	return true;
}

static void stash_event(struct client *c, const struct msg *m)
{
	assert_true(c->nevents < MAX_EVENTS);
	snprintf(c->events[c->nevents++], sizeof(c->events[0]), "%s|%s", m->data,
		 m->data + strlen(m->data) + 1);
}

/* Send a request and return its reply; watch events met on the way are stashed. */
static void call(struct client *c, uint32_t type, uint32_t tx, const void *data, size_t len,
		 struct msg *m)
{
	uint32_t req_id;

	send_raw(c, type, tx, data, len);
	for (;;) {
		assert_true(recv_msg(c, m, &req_id));
		if (m->type != XS_WATCH_EVENT) {
			break;
		}
		stash_event(c, m);
	}
	assert_int_equal(req_id, 77);
	assert_true(m->type == type || m->type == XS_ERROR);
}

/* Convenience: returns "OK", the value, or the error name. */
static const char *op(struct client *c, uint32_t type, uint32_t tx, const char *a, const char *b)
{
	static struct msg m;
	char buf[XENSTORE_PAYLOAD_MAX];
	size_t len = strlen(a) + 1;

	memcpy(buf, a, len);
	if (b != NULL) {
		size_t bl = strlen(b) + (type == XS_WRITE ? 0 : 1);

		memcpy(buf + len, b, bl); /* NOLINT(bugprone-not-null-terminated-result) */
		len += bl;
	}
	call(c, type, tx, buf, len, &m);
	return m.data;
}

static const char *xread(struct client *c, const char *path)
{
	return op(c, XS_READ, 0, path, NULL);
}

static const char *xwrite(struct client *c, const char *path, const char *val)
{
	return op(c, XS_WRITE, 0, path, val);
}

static void drain_events(struct client *c)
{
	struct msg m;

	while (recv_msg(c, &m, NULL)) {
		assert_int_equal(m.type, XS_WATCH_EVENT);
		stash_event(c, &m);
	}
}

static bool has_event(struct client *c, const char *ev)
{
	drain_events(c);
	for (unsigned int i = 0; i < c->nevents; i++) {
		if (strcmp(c->events[i], ev) == 0) {
			return true;
		}
	}
	return false;
}

static int setup(void **state)
{
	(void)state;
	return vd_xs_server_create(&g_s) == 0 ? 0 : -1;
}

static int teardown(void **state)
{
	(void)state;
	vd_xs_server_destroy(g_s);
	g_s = NULL;
	return 0;
}

static void test_tree_basic(void **state)
{
	struct client *c = client_new(0);
	struct msg m;

	(void)state;
	assert_string_equal(xwrite(c, "/a/b/c", "v1"), "OK");
	assert_string_equal(xread(c, "/a/b/c"), "v1");
	assert_string_equal(xread(c, "/a/b"), ""); /* implicit parent */
	assert_string_equal(xwrite(c, "/a/d", "v2"), "OK");
	call(c, XS_DIRECTORY, 0, "/a", 3, &m);
	assert_int_equal(m.type, XS_DIRECTORY);
	assert_int_equal(m.len, 4);
	assert_memory_equal(m.data, "b\0d\0", 4);
	assert_string_equal(op(c, XS_MKDIR, 0, "/a/e", NULL), "OK");
	assert_string_equal(op(c, XS_MKDIR, 0, "/a/e", NULL), "OK"); /* exists: fine */
	assert_string_equal(xread(c, "/a/e"), "");

	/* Binary-safe values. */
	call(c, XS_WRITE, 0, "/bin\0x\0y\0", 9, &m);
	assert_int_equal(m.type, XS_WRITE);
	call(c, XS_READ, 0, "/bin", 5, &m);
	assert_int_equal(m.len, 4);
	assert_memory_equal(m.data, "x\0y\0", 4);

	/* rm is recursive; missing node with a parent is OK, else ENOENT. */
	assert_string_equal(op(c, XS_RM, 0, "/a/b", NULL), "OK");
	assert_string_equal(xread(c, "/a/b/c"), "ENOENT");
	assert_string_equal(xread(c, "/a/b"), "ENOENT");
	assert_string_equal(op(c, XS_RM, 0, "/a/b", NULL), "OK");
	assert_string_equal(op(c, XS_RM, 0, "/a/nope/deeper", NULL), "ENOENT");
	assert_string_equal(op(c, XS_RM, 0, "/", NULL), "EINVAL");
	call(c, XS_DIRECTORY, 0, "/a", 3, &m);
	assert_int_equal(m.len, 4);
	assert_memory_equal(m.data, "d\0e\0", 4);

	/* Relative paths are below the connection's domain. */
	assert_string_equal(xwrite(c, "rel", "r"), "OK");
	assert_string_equal(xread(c, "/local/domain/0/rel"), "r");
	assert_string_equal(op(c, XS_GET_DOMAIN_PATH, 0, "7", NULL), "/local/domain/7");

	/* Unknown request types. */
	call(c, 999, 0, "", 1, &m);
	assert_int_equal(m.type, XS_ERROR);
	assert_string_equal(m.data, "ENOSYS");
	client_free(c);
}

static void test_paths(void **state)
{
	struct client *c = client_new(0);
	char *big = malloc(XENSTORE_ABS_PATH_MAX + 2);

	(void)state;
	assert_non_null(big);
	assert_string_equal(xwrite(c, "/x//y", "v"), "EINVAL");
	assert_string_equal(xwrite(c, "/x/", "v"), "EINVAL");
	assert_string_equal(xwrite(c, "/x/a b", "v"), "EINVAL");
	assert_string_equal(xwrite(c, "/x/a.b", "v"), "EINVAL");
	assert_string_equal(xread(c, "@introduceDomain"), "EINVAL");
	assert_string_equal(xread(c, ""), "EINVAL");

	/* Absolute: XENSTORE_ABS_PATH_MAX is the limit. */
	memset(big, 'a', XENSTORE_ABS_PATH_MAX + 1);
	big[0] = '/';
	big[XENSTORE_ABS_PATH_MAX + 1] = '\0';
	assert_string_equal(op(c, XS_MKDIR, 0, big, NULL), "EINVAL");
	big[XENSTORE_ABS_PATH_MAX] = '\0';
	assert_string_equal(op(c, XS_MKDIR, 0, big, NULL), "OK");
	/* Relative: XENSTORE_REL_PATH_MAX. */
	memset(big, 'b', XENSTORE_REL_PATH_MAX + 1);
	big[XENSTORE_REL_PATH_MAX + 1] = '\0';
	assert_string_equal(op(c, XS_MKDIR, 0, big, NULL), "EINVAL");
	big[XENSTORE_REL_PATH_MAX] = '\0';
	assert_string_equal(op(c, XS_MKDIR, 0, big, NULL), "OK");

	/* A payload without its terminating NUL. */
	{
		struct msg m;

		call(c, XS_READ, 0, "/x", 2, &m);
		assert_int_equal(m.type, XS_ERROR);
		assert_string_equal(m.data, "EINVAL");
	}
	free(big);
	client_free(c);
}

static void test_perms(void **state)
{
	struct client *d0 = client_new(0), *g5 = client_new(5), *g6 = client_new(6);
	struct msg m;

	(void)state;
	assert_int_equal(vd_xs_server_introduce_domain(g_s, 5), 0);
	assert_int_equal(vd_xs_server_introduce_domain(g_s, 5), -EEXIST);
	assert_string_equal(xwrite(d0, "/p/q", "secret"), "OK");
	assert_string_equal(xread(g5, "/p/q"), "EACCES");
	/* Absent below an unreadable parent: EACCES, not ENOENT. */
	assert_string_equal(xread(g5, "/p/none"), "EACCES");
	assert_string_equal(xwrite(g5, "/p/q", "x"), "EACCES");

	call(d0, XS_SET_PERMS, 0, "/p/q\0n0\0r5\0", 11, &m);
	assert_int_equal(m.type, XS_SET_PERMS);
	assert_string_equal(xread(g5, "/p/q"), "secret");
	assert_string_equal(xread(g6, "/p/q"), "EACCES");
	assert_string_equal(xwrite(g5, "/p/q", "x"), "EACCES");
	call(g5, XS_GET_PERMS, 0, "/p/q", 5, &m);
	assert_int_equal(m.type, XS_GET_PERMS);
	assert_int_equal(m.len, 6);
	assert_memory_equal(m.data, "n0\0r5\0", 6);
	/* Only the owner (or dom0) sets permissions. */
	call(g5, XS_SET_PERMS, 0, "/p/q\0b5\0", 8, &m);
	assert_string_equal(m.data, "EACCES");
	call(d0, XS_SET_PERMS, 0, "/p/q\0x5\0", 8, &m);
	assert_string_equal(m.data, "EINVAL");

	/* A guest's home is its own; what it creates it owns. */
	assert_string_equal(xwrite(g5, "data/k", "v"), "OK");
	call(d0, XS_GET_PERMS, 0, "/local/domain/5/data/k", 23, &m);
	assert_memory_equal(m.data, "n5\0", 3);
	assert_string_equal(xread(g6, "/local/domain/5/data/k"), "EACCES");
	assert_string_equal(xread(d0, "/local/domain/5/data/k"), "v");
	/* Guests may not give their nodes away. */
	call(g5, XS_SET_PERMS, 0, "/local/domain/5/data/k\0n6\0", 26, &m);
	assert_string_equal(m.data, "EPERM");
	call(g5, XS_SET_PERMS, 0, "/local/domain/5/data/k\0n5\0r6\0", 29, &m);
	assert_string_equal(m.data, "OK");
	assert_string_equal(xread(g6, "/local/domain/5/data/k"), "v");

	/* Writable dir owned by dom0: a guest's new node is the guest's. */
	assert_string_equal(op(d0, XS_MKDIR, 0, "/shared", NULL), "OK");
	call(d0, XS_SET_PERMS, 0, "/shared\0n0\0b6\0", 14, &m);
	assert_string_equal(xwrite(g6, "/shared/n", "1"), "OK");
	call(d0, XS_GET_PERMS, 0, "/shared/n", 10, &m);
	assert_int_equal(m.len, 3);
	assert_memory_equal(m.data, "n6\0", 3);
	assert_string_equal(xwrite(g5, "/shared/m", "1"), "EACCES");

	/* Domain ops are dom0's. */
	assert_string_equal(op(g5, XS_IS_DOMAIN_INTRODUCED, 0, "5", NULL), "EACCES");
	assert_string_equal(op(d0, XS_IS_DOMAIN_INTRODUCED, 0, "5", NULL), "T");
	assert_string_equal(op(d0, XS_IS_DOMAIN_INTRODUCED, 0, "9", NULL), "F");
	assert_string_equal(op(g5, XS_RELEASE, 0, "5", NULL), "EACCES");
	client_free(d0);
	client_free(g5);
	client_free(g6);
}

static uint32_t tx_start(struct client *c)
{
	struct msg m;
	char *end;
	unsigned long id;

	call(c, XS_TRANSACTION_START, 0, "", 1, &m);
	assert_int_equal(m.type, XS_TRANSACTION_START);
	id = strtoul(m.data, &end, 10);
	assert_true(*end == '\0' && id != 0);
	return (uint32_t)id;
}

static void test_transactions(void **state)
{
	struct client *a = client_new(0), *b = client_new(0);
	uint32_t t, t2, ids[VD_XS_MAX_TRANSACTIONS];
	struct msg m;

	(void)state;
	assert_string_equal(xwrite(a, "/t/x", "0"), "OK");

	/* Isolation, then commit. */
	t = tx_start(a);
	assert_string_equal(op(a, XS_WRITE, t, "/t/y", "in-tx"), "OK");
	assert_string_equal(op(a, XS_READ, t, "/t/y", NULL), "in-tx");
	assert_string_equal(xread(b, "/t/y"), "ENOENT");
	assert_string_equal(op(a, XS_TRANSACTION_END, t, "T", NULL), "OK");
	assert_string_equal(xread(b, "/t/y"), "in-tx");

	/* Conflict: read-modify-write raced by another writer -> EAGAIN. */
	t = tx_start(a);
	assert_string_equal(op(a, XS_READ, t, "/t/x", NULL), "0");
	assert_string_equal(xwrite(b, "/t/x", "b"), "OK");
	assert_string_equal(op(a, XS_WRITE, t, "/t/x", "a"), "OK");
	assert_string_equal(op(a, XS_TRANSACTION_END, t, "T", NULL), "EAGAIN");
	assert_string_equal(xread(b, "/t/x"), "b");
	/* The transaction is gone after END either way. */
	assert_string_equal(op(a, XS_READ, t, "/t/x", NULL), "ENOENT");

	/* Creating a child the transaction listed conflicts too. */
	t = tx_start(a);
	call(a, XS_DIRECTORY, t, "/t", 3, &m);
	assert_string_equal(xwrite(b, "/t/new", "1"), "OK");
	assert_string_equal(op(a, XS_WRITE, t, "/t/other", "1"), "OK");
	assert_string_equal(op(a, XS_TRANSACTION_END, t, "T", NULL), "EAGAIN");
	assert_string_equal(xread(b, "/t/other"), "ENOENT");

	/* Unrelated concurrent changes do not conflict. */
	t = tx_start(a);
	assert_string_equal(op(a, XS_WRITE, t, "/t/x", "a2"), "OK");
	assert_string_equal(xwrite(b, "/u/z", "1"), "OK");
	assert_string_equal(op(a, XS_TRANSACTION_END, t, "T", NULL), "OK");
	assert_string_equal(xread(b, "/t/x"), "a2");

	/* Abort discards; rm inside a transaction. */
	t = tx_start(a);
	assert_string_equal(op(a, XS_RM, t, "/t", NULL), "OK");
	assert_string_equal(op(a, XS_READ, t, "/t/x", NULL), "ENOENT");
	assert_string_equal(op(a, XS_TRANSACTION_END, t, "F", NULL), "OK");
	assert_string_equal(xread(b, "/t/x"), "a2");
	t = tx_start(a);
	assert_string_equal(op(a, XS_RM, t, "/t", NULL), "OK");
	assert_string_equal(op(a, XS_TRANSACTION_END, t, "T", NULL), "OK");
	assert_string_equal(xread(b, "/t/x"), "ENOENT");
	assert_string_equal(xread(b, "/t"), "ENOENT");

	/* Bad ids, nesting, bad END argument, limit per connection. */
	assert_string_equal(op(a, XS_READ, 12345, "/u/z", NULL), "ENOENT");
	assert_string_equal(op(a, XS_TRANSACTION_END, 12345, "T", NULL), "ENOENT");
	t = tx_start(a);
	assert_string_equal(op(a, XS_TRANSACTION_END, t, "X", NULL), "EINVAL");
	call(a, XS_TRANSACTION_START, t, "", 1, &m);
	assert_string_equal(m.data, "EBUSY");
	assert_string_equal(op(b, XS_READ, t, "/u/z", NULL), "ENOENT"); /* not b's */
	assert_string_equal(op(a, XS_TRANSACTION_END, t, "F", NULL), "OK");
	for (int i = 0; i < VD_XS_MAX_TRANSACTIONS; i++) {
		ids[i] = tx_start(a);
	}
	call(a, XS_TRANSACTION_START, 0, "", 1, &m);
	assert_string_equal(m.data, "ENOSPC");
	for (int i = 0; i < VD_XS_MAX_TRANSACTIONS; i++) {
		assert_string_equal(op(a, XS_TRANSACTION_END, ids[i], "F", NULL), "OK");
	}
	t2 = tx_start(a);
	assert_string_equal(op(a, XS_TRANSACTION_END, t2, "F", NULL), "OK");
	client_free(a);
	client_free(b);
}

static void test_watches(void **state)
{
	struct client *d0 = client_new(0), *w0 = client_new(0), *g5 = client_new(5);
	uint32_t t;

	(void)state;
	assert_int_equal(vd_xs_server_introduce_domain(g_s, 5), 0);
	assert_string_equal(xwrite(d0, "/w/a", "1"), "OK");

	/* Initial event on registration. */
	assert_string_equal(op(w0, XS_WATCH, 0, "/w", "tok"), "OK");
	assert_true(has_event(w0, "/w|tok"));
	assert_string_equal(op(w0, XS_WATCH, 0, "/w", "tok"), "EEXIST");

	/* Fires for the node and descendants, not for siblings. */
	w0->nevents = 0;
	assert_string_equal(xwrite(d0, "/w/a/deep", "2"), "OK");
	assert_true(has_event(w0, "/w/a/deep|tok"));
	assert_string_equal(xwrite(d0, "/wx", "2"), "OK");
	assert_false(has_event(w0, "/wx|tok"));

	/* rm of an ancestor fires watches below it with their own path. */
	assert_string_equal(op(w0, XS_WATCH, 0, "/w/a/deep", "d"), "OK");
	w0->nevents = 0;
	assert_string_equal(op(d0, XS_RM, 0, "/w/a", NULL), "OK");
	assert_true(has_event(w0, "/w/a/deep|d"));
	assert_true(has_event(w0, "/w/a|tok"));

	/* Not delivered to a domain that cannot read the node. */
	assert_string_equal(op(g5, XS_WATCH, 0, "/w", "g"), "OK");
	assert_true(has_event(g5, "/w|g")); /* the initial event always comes */
	g5->nevents = 0;
	assert_string_equal(xwrite(d0, "/w/hidden", "1"), "OK");
	assert_false(has_event(g5, "/w/hidden|g"));
	{
		struct msg m;

		call(d0, XS_SET_PERMS, 0, "/w/vis\0n0\0r5\0", 13, &m);
		assert_string_equal(m.data, "ENOENT");
		assert_string_equal(xwrite(d0, "/w/vis", "1"), "OK");
		call(d0, XS_SET_PERMS, 0, "/w/vis\0n0\0r5\0", 13, &m);
		assert_string_equal(m.data, "OK");
	}
	assert_true(has_event(g5, "/w/vis|g"));
	g5->nevents = 0;
	assert_string_equal(xwrite(d0, "/w/vis", "2"), "OK");
	assert_true(has_event(g5, "/w/vis|g"));

	/* A relative watch gets relative paths. */
	assert_string_equal(op(g5, XS_WATCH, 0, "device", "rel"), "OK");
	assert_true(has_event(g5, "device|rel"));
	assert_string_equal(xwrite(d0, "/local/domain/5/device/vbd", "x"), "OK");
	assert_true(has_event(g5, "device/vbd|rel"));

	/* Special watches. */
	assert_string_equal(op(w0, XS_WATCH, 0, "@introduceDomain", "i"), "OK");
	assert_string_equal(op(g5, XS_WATCH, 0, "@releaseDomain", "r"), "OK");
	assert_int_equal(vd_xs_server_introduce_domain(g_s, 9), 0);
	assert_true(has_event(w0, "@introduceDomain|i"));
	vd_xs_server_release_domain(g_s, 9);
	assert_true(has_event(g5, "@releaseDomain|r"));

	/* Transactions queue their events until commit. */
	w0->nevents = 0;
	t = tx_start(d0);
	assert_string_equal(op(d0, XS_WRITE, t, "/w/txn", "1"), "OK");
	assert_false(has_event(w0, "/w/txn|tok"));
	assert_string_equal(op(d0, XS_TRANSACTION_END, t, "T", NULL), "OK");
	assert_true(has_event(w0, "/w/txn|tok"));

	/* Unwatch stops them. */
	assert_string_equal(op(w0, XS_UNWATCH, 0, "/w", "tok"), "OK");
	assert_string_equal(op(w0, XS_UNWATCH, 0, "/w", "tok"), "ENOENT");
	w0->nevents = 0;
	assert_string_equal(xwrite(d0, "/w/after", "1"), "OK");
	assert_false(has_event(w0, "/w/after|tok"));

	/* Watch limit per connection; reset_watches clears them. */
	{
		struct client *c = client_new(0);
		char tok[16];

		for (int i = 1; i < VD_XS_MAX_WATCHES; i++) {
			snprintf(tok, sizeof(tok), "t%d", i);
			assert_string_equal(op(c, XS_WATCH, 0, "/lim", tok), "OK");
			c->nevents = 0;
		}
		assert_string_equal(op(c, XS_WATCH, 0, "/lim", "last"), "OK");
		assert_string_equal(op(c, XS_WATCH, 0, "/lim", "over"), "E2BIG");
		call(c, XS_RESET_WATCHES, 0, "", 1, &(struct msg){ 0 });
		c->nevents = 0;
		assert_string_equal(op(c, XS_WATCH, 0, "/lim", "again"), "OK");
		client_free(c);
	}
	client_free(d0);
	client_free(w0);
	client_free(g5);
}

static bool disconnected(struct client *c)
{
	char buf[4096];
	ssize_t n;

	pump();
	while ((n = recv(c->fd, buf, sizeof(buf), MSG_DONTWAIT)) > 0) {
	}
	return n == 0;
}

static void test_bounds(void **state)
{
	struct client *d0 = client_new(0), *g5 = client_new(5), *bad = client_new(0);
	char *val = malloc(XENSTORE_PAYLOAD_MAX);
	char path[64];
	struct msg m;
	unsigned int before;

	(void)state;
	assert_non_null(val);
	assert_int_equal(vd_xs_server_introduce_domain(g_s, 5), 0);

	/* Largest write that fits the payload. */
	memcpy(val, "/big", 5);
	memset(val + 5, 'v', XENSTORE_PAYLOAD_MAX - 5);
	call(d0, XS_WRITE, 0, val, XENSTORE_PAYLOAD_MAX, &m);
	assert_string_equal(m.data, "OK");
	call(d0, XS_READ, 0, "/big", 5, &m);
	assert_int_equal(m.len, XENSTORE_PAYLOAD_MAX - 5);

	/* A header announcing more than XENSTORE_PAYLOAD_MAX: disconnected. */
	{
		struct xsd_sockmsg h = { .type = XS_WRITE, .len = XENSTORE_PAYLOAD_MAX + 1 };

		before = vd_xs_server_nconns(g_s);
		assert_int_equal(write(bad->fd, &h, sizeof(h)), (ssize_t)sizeof(h));
		assert_true(disconnected(bad));
		assert_int_equal(vd_xs_server_nconns(g_s), before - 1);
		client_free(bad);
	}

	/* Node quota of a guest. */
	assert_string_equal(op(g5, XS_MKDIR, 0, "q", NULL), "OK");
	before = vd_xs_server_nodes_owned(g_s, 5);
	for (unsigned int i = before; i < VD_XS_NODE_QUOTA; i++) {
		snprintf(path, sizeof(path), "q/n%u", i);
		assert_string_equal(xwrite(g5, path, ""), "OK");
	}
	assert_int_equal(vd_xs_server_nodes_owned(g_s, 5), VD_XS_NODE_QUOTA);
	assert_string_equal(xwrite(g5, "q/one-more", ""), "ENOSPC");
	assert_string_equal(op(g5, XS_RM, 0, "q", NULL), "OK");
	assert_string_equal(xwrite(g5, "q/one-more", ""), "OK");

	/* Large directories: E2BIG, and XS_DIRECTORY_PART pages through them. */
	for (unsigned int i = 0; i < 600; i++) {
		snprintf(path, sizeof(path), "/dir/child-%04u", i);
		assert_string_equal(op(d0, XS_MKDIR, 0, path, NULL), "OK");
	}
	call(d0, XS_DIRECTORY, 0, "/dir", 5, &m);
	assert_string_equal(m.data, "E2BIG");
	{
		unsigned int off = 0, names = 0, pages = 0;
		char req[32];
		bool done = false;

		while (!done) {
			size_t gl;

			int rl = snprintf(req, sizeof(req), "/dir%c%u", 0, off) + 1;

			call(d0, XS_DIRECTORY_PART, 0, req, (size_t)rl, &m);
			assert_int_equal(m.type, XS_DIRECTORY_PART);
			gl = strlen(m.data) + 1;
			pages++;
			for (size_t p = gl; p < m.len;) {
				size_t l = strlen(m.data + p);

				if (l == 0) {
					done = true;
					break;
				}
				snprintf(path, sizeof(path), "child-%04u", names);
				assert_string_equal(m.data + p, path);
				names++;
				off += (unsigned int)l + 1;
				p += l + 1;
			}
		}
		assert_int_equal(names, 600);
		assert_true(pages >= 2);
	}

	/* A watcher that never reads is cut off, and the server goes on. */
	{
		struct client *slow = client_new(0);
		char tok[3000];

		memset(tok, 't', sizeof(tok) - 1);
		tok[sizeof(tok) - 1] = '\0';
		assert_string_equal(op(slow, XS_WATCH, 0, "/flood", tok), "OK");
		before = vd_xs_server_nconns(g_s);
		for (int i = 0; i < 2000 && vd_xs_server_nconns(g_s) == before; i++) {
			assert_string_equal(xwrite(d0, "/flood/x", "1"), "OK");
		}
		assert_int_equal(vd_xs_server_nconns(g_s), before - 1);
		assert_string_equal(xread(d0, "/flood/x"), "1");
		client_free(slow);
	}
	free(val);
	client_free(d0);
	client_free(g5);
}

static void test_release(void **state)
{
	struct client *d0 = client_new(0), *g7 = client_new(7);

	(void)state;
	assert_string_equal(op(d0, XS_INTRODUCE, 0,
			       "7\0"
			       "123\0"
			       "4",
			       NULL),
			    "OK");
	assert_string_equal(xread(d0, "/local/domain/7/domid"), "7");
	assert_string_equal(xwrite(g7, "x", "1"), "OK");
	assert_string_equal(op(g7, XS_WATCH, 0, "x", "t"), "OK");
	assert_string_equal(op(d0, XS_RELEASE, 0, "7", NULL), "OK");
	assert_string_equal(xread(d0, "/local/domain/7"), "ENOENT");
	assert_string_equal(op(d0, XS_RELEASE, 0, "7", NULL), "ENOENT");
	assert_string_equal(op(d0, XS_IS_DOMAIN_INTRODUCED, 0, "7", NULL), "F");
	/* The guest's watches went with it: unwatch finds nothing. */
	assert_string_equal(op(g7, XS_UNWATCH, 0, "x", "t"), "ENOENT");
	client_free(d0);
	client_free(g7);
}

static void test_listen(void **state)
{
	char dir[] = "/tmp/vd-xs-test-XXXXXX", path[64];

	(void)state;
	assert_non_null(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/sock", dir);
	assert_int_equal(vd_xs_server_listen(g_s, path, 0), 0);
	assert_int_equal(access(path, F_OK), 0);
	vd_xs_server_unlisten(g_s, path);
	assert_int_not_equal(access(path, F_OK), 0);
	assert_int_equal(rmdir(dir), 0);
}

/* Random requests from a guest and dom0: replies or disconnects, never a crash. */
static void test_random_requests(void **state)
{
	static const char *const words[] = {
		"/",  "/a", "/a/b", "a", "a/b", "@introduceDomain", "//", "/a/", "T", "F", "n0",
		"r5", "b5", "0",    "5", "",    "/local/domain/5",  "x"
	};
	unsigned int seed = 12345;
	struct client *c[2];

	(void)state;
	c[0] = client_new(0);
	c[1] = client_new(5);
	for (int i = 0; i < 20000; i++) {
		char buf[256];
		size_t len = 0;
		int k = rand_r(&seed) % 2, nw = rand_r(&seed) % 4;
		uint32_t type = (uint32_t)(rand_r(&seed) % (XS_TYPE_COUNT + 2));
		uint32_t tx = rand_r(&seed) % 4 ? 0 : (uint32_t)(rand_r(&seed) % 8);
		struct msg m;

		for (int w = 0; w < nw; w++) {
			const char *word = words[rand_r(&seed) % VD_ARRAY_SIZE(words)];
			size_t wl = strlen(word) + (rand_r(&seed) % 8 ? 1 : 0);

			/* NOLINTNEXTLINE(bugprone-not-null-terminated-result): on purpose */
			memcpy(buf + len, word, wl);
			len += wl;
		}
		send_raw(c[k], type, tx, buf, len);
		while (recv_msg(c[k], &m, NULL)) {
		}
		if (rand_r(&seed) % 1000 == 0) {
			vd_xs_server_release_domain(g_s, 5);
			vd_xs_server_introduce_domain(g_s, 5);
		}
	}
	for (int k = 0; k < 2; k++) {
		while (recv_msg(c[k], &(struct msg){ 0 }, NULL)) {
		}
	}
	/* Still serving. */
	assert_string_equal(xwrite(c[0], "/alive", "1"), "OK");
	assert_string_equal(xread(c[0], "/alive"), "1");
	client_free(c[0]);
	client_free(c[1]);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_tree_basic, setup, teardown),
		cmocka_unit_test_setup_teardown(test_paths, setup, teardown),
		cmocka_unit_test_setup_teardown(test_perms, setup, teardown),
		cmocka_unit_test_setup_teardown(test_transactions, setup, teardown),
		cmocka_unit_test_setup_teardown(test_watches, setup, teardown),
		cmocka_unit_test_setup_teardown(test_bounds, setup, teardown),
		cmocka_unit_test_setup_teardown(test_release, setup, teardown),
		cmocka_unit_test_setup_teardown(test_listen, setup, teardown),
		cmocka_unit_test_setup_teardown(test_random_requests, setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
