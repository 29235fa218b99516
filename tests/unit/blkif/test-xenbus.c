/*
 * vd_blkif_read_fe_conf and the backend state machine, against a fake
 * xenstore: the few libxenstore calls xenbus.c makes are replaced with
 * -Wl,--wrap by an in-memory table.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <xen/io/xenbus.h>

#include "blkif/xenbus.h"

/* ---- the fake store ---- */

#define MAX_NODES 512
struct node {
	char *path;
	char *val;
};
static struct node g_nodes[MAX_NODES];
static int g_watches;    /* registered - unregistered */
static int g_txn_eagain; /* fail this many transaction ends with EAGAIN */
static int g_txn_ends;
static int g_write_fail_after = -1; /* fail writes after this many (-1: never) */
static int g_writes;

static struct node *find(const char *path)
{
	for (int i = 0; i < MAX_NODES; i++) {
		if (g_nodes[i].path != NULL && strcmp(g_nodes[i].path, path) == 0) {
			return &g_nodes[i];
		}
	}
	return NULL;
}

static void fset(const char *path, const char *val)
{
	struct node *n = find(path);

	if (n == NULL) {
		for (int i = 0; i < MAX_NODES && n == NULL; i++) {
			if (g_nodes[i].path == NULL) {
				n = &g_nodes[i];
				n->path = strdup(path);
			}
		}
	}
	assert_non_null(n);
	free(n->val);
	n->val = strdup(val);
}

static void __attribute__((format(printf, 3, 4)))
fsetf(const char *dir, const char *key, const char *fmt, ...)
{
	char path[512], val[256];
	va_list ap;

	snprintf(path, sizeof(path), "%s/%s", dir, key);
	va_start(ap, fmt);
	vsnprintf(val, sizeof(val), fmt, ap);
	va_end(ap);
	fset(path, val);
}

static const char *fget(const char *dir, const char *key)
{
	char path[512];
	struct node *n;

	snprintf(path, sizeof(path), "%s/%s", dir, key);
	n = find(path);
	return n ? n->val : NULL;
}

static void frm(const char *dir, const char *key)
{
	char path[512];
	struct node *n;

	snprintf(path, sizeof(path), "%s/%s", dir, key);
	n = find(path);
	if (n != NULL) {
		free(n->path);
		free(n->val);
		n->path = n->val = NULL;
	}
}

/* Remove dir and everything below it. */
static void frm_tree(const char *dir)
{
	size_t l = strlen(dir);

	for (int i = 0; i < MAX_NODES; i++) {
		if (g_nodes[i].path != NULL && strncmp(g_nodes[i].path, dir, l) == 0 &&
		    (g_nodes[i].path[l] == '/' || g_nodes[i].path[l] == '\0')) {
			free(g_nodes[i].path);
			free(g_nodes[i].val);
			g_nodes[i].path = g_nodes[i].val = NULL;
		}
	}
}

static void freset(void)
{
	frm_tree("");
	for (int i = 0; i < MAX_NODES; i++) {
		free(g_nodes[i].path);
		free(g_nodes[i].val);
		g_nodes[i].path = g_nodes[i].val = NULL;
	}
	g_watches = 0;
	g_txn_eagain = 0;
	g_txn_ends = 0;
	g_write_fail_after = -1;
	g_writes = 0;
}

void *__wrap_xs_read(struct xs_handle *h, xs_transaction_t t, const char *path, unsigned int *len);
bool __wrap_xs_write(struct xs_handle *h, xs_transaction_t t, const char *path, const void *data,
		     unsigned int len);
bool __wrap_xs_watch(struct xs_handle *h, const char *path, const char *token);
bool __wrap_xs_unwatch(struct xs_handle *h, const char *path, const char *token);
xs_transaction_t __wrap_xs_transaction_start(struct xs_handle *h);
bool __wrap_xs_transaction_end(struct xs_handle *h, xs_transaction_t t, bool abort_it);

void *__wrap_xs_read(struct xs_handle *h, xs_transaction_t t, const char *path, unsigned int *len)
{
	struct node *n = find(path);

	if (n == NULL) {
		errno = ENOENT;
		return NULL;
	}
	*len = (unsigned int)strlen(n->val);
	return strdup(n->val);
}

bool __wrap_xs_write(struct xs_handle *h, xs_transaction_t t, const char *path, const void *data,
		     unsigned int len)
{
	char buf[4096];

	if (g_write_fail_after >= 0 && g_writes >= g_write_fail_after) {
		errno = EACCES;
		return false;
	}
	g_writes++;
	assert_true(len < sizeof(buf));
	memcpy(buf, data, len);
	buf[len] = '\0';
	fset(path, buf);
	return true;
}

bool __wrap_xs_watch(struct xs_handle *h, const char *path, const char *token)
{
	g_watches++;
	return true;
}

bool __wrap_xs_unwatch(struct xs_handle *h, const char *path, const char *token)
{
	g_watches--;
	return true;
}

xs_transaction_t __wrap_xs_transaction_start(struct xs_handle *h)
{
	return 42;
}

bool __wrap_xs_transaction_end(struct xs_handle *h, xs_transaction_t t, bool abort_it)
{
	assert_int_equal(t, 42);
	g_txn_ends++;
	if (!abort_it && g_txn_eagain > 0) {
		g_txn_eagain--;
		errno = EAGAIN;
		return false;
	}
	return true;
}

static struct xs_handle *const XS = (struct xs_handle *)&g_nodes; /* never dereferenced */

#define FE "/local/domain/5/device/vbd/51712"
#define BE "/local/domain/0/backend/vbd3/5/51712"

static struct vd_blkif_caps caps_all(void)
{
	struct vd_blkif_caps c = {
		.size_bytes = 1ull << 30,
		.sector_bytes = 512,
		.physical_sector_bytes = 4096,
		.readonly = false,
		.flush = true,
		.barrier = true,
		.discard = true,
		.discard_granularity_bytes = 4096,
		.discard_alignment_bytes = 0,
		.discard_secure = false,
		.persistent = true,
		.max_queues = 4,
		.max_ring_page_order = 2,
		.max_indirect_segs = 256,
	};
	return c;
}

static int setup(void **state)
{
	freset();
	return 0;
}

static int teardown(void **state)
{
	freset();
	return 0;
}

/* ---- vd_blkif_read_fe_conf ---- */

static void test_fe_single(void **state)
{
	struct vd_blkif_caps c = caps_all();
	struct vd_blkif_fe_conf conf;
	struct vd_err err = { 0 };

	fsetf(FE, "ring-ref", "8");
	fsetf(FE, "event-channel", "17");
	assert_int_equal(vd_blkif_read_fe_conf(XS, FE, &c, &conf, &err), 0);
	assert_int_equal(conf.nr_queues, 1);
	assert_int_equal(conf.ring_page_order, 0);
	assert_int_equal(conf.nr_ring_pages, 1);
	assert_int_equal(conf.queue[0].ring_refs[0], 8);
	assert_int_equal(conf.queue[0].evtchn, 17);
	assert_int_equal(conf.abi, VD_BLKIF_ABI_NATIVE);
	assert_false(conf.persistent);

	fsetf(FE, "protocol", "x86_32-abi");
	fsetf(FE, "feature-persistent", "1");
	assert_int_equal(vd_blkif_read_fe_conf(XS, FE, &c, &conf, &err), 0);
	assert_int_equal(conf.abi, VD_BLKIF_ABI_X86_32);
	assert_true(conf.persistent);
	c.persistent = false;
	assert_int_equal(vd_blkif_read_fe_conf(XS, FE, &c, &conf, &err), 0);
	assert_false(conf.persistent);
	c.persistent = true;

	fsetf(FE, "protocol", "sparc-abi");
	assert_int_equal(vd_blkif_read_fe_conf(XS, FE, &c, &conf, &err), -EINVAL);
	assert_non_null(strstr(err.msg, "protocol"));
	fsetf(FE, "protocol", "x86_64-abi");
	assert_int_equal(vd_blkif_read_fe_conf(XS, FE, &c, &conf, &err), 0);
	assert_int_equal(conf.abi, VD_BLKIF_ABI_X86_64);
}

static void test_fe_multipage(void **state)
{
	struct vd_blkif_caps c = caps_all();
	struct vd_blkif_fe_conf conf;
	struct vd_err err = { 0 };

	fsetf(FE, "ring-page-order", "2");
	for (int i = 0; i < 4; i++) {
		char key[16];

		snprintf(key, sizeof(key), "ring-ref%d", i);
		fsetf(FE, key, "%u", 4294967295u - (unsigned int)i);
	}
	fsetf(FE, "event-channel", "3");
	assert_int_equal(vd_blkif_read_fe_conf(XS, FE, &c, &conf, &err), 0);
	assert_int_equal(conf.ring_page_order, 2);
	assert_int_equal(conf.nr_ring_pages, 4);
	assert_int_equal(conf.queue[0].ring_refs[0], 4294967295u);
	assert_int_equal(conf.queue[0].ring_refs[3], 4294967292u);

	frm(FE, "ring-ref2");
	assert_int_equal(vd_blkif_read_fe_conf(XS, FE, &c, &conf, &err), -ENOENT);
	assert_non_null(strstr(err.msg, "ring-ref2 missing"));
	fsetf(FE, "ring-ref2", "5");

	fsetf(FE, "ring-page-order", "3"); /* above caps (2) */
	memset(&err, 0, sizeof(err));
	assert_int_equal(vd_blkif_read_fe_conf(XS, FE, &c, &conf, &err), -EINVAL);
	assert_non_null(strstr(err.msg, "ring-page-order"));
	c.max_ring_page_order = 9; /* caps above our maximum are clamped */
	fsetf(FE, "ring-page-order", "5");
	assert_int_equal(vd_blkif_read_fe_conf(XS, FE, &c, &conf, &err), -EINVAL);
	c = caps_all();
	fsetf(FE, "ring-page-order", "-1");
	assert_int_equal(vd_blkif_read_fe_conf(XS, FE, &c, &conf, &err), -EINVAL);
	fsetf(FE, "ring-page-order", "99999999999999999999999");
	assert_int_equal(vd_blkif_read_fe_conf(XS, FE, &c, &conf, &err), -EINVAL);
	fsetf(FE, "ring-page-order", "0");
	/* order 0 with ring-page-order present: ring-ref0 */
	assert_int_equal(vd_blkif_read_fe_conf(XS, FE, &c, &conf, &err), 0);
	assert_int_equal(conf.queue[0].ring_refs[0], 4294967295u);
}

static void test_fe_malformed(void **state)
{
	static const char *const bad[] = { "",     "12a",        "-1",
					   "+5",   " 5",         "5 ",
					   "0x10", "4294967296", "99999999999999999999999" };
	struct vd_blkif_caps c = caps_all();
	struct vd_blkif_fe_conf conf;

	fsetf(FE, "event-channel", "17");
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct vd_err err = { 0 };

		fsetf(FE, "ring-ref", "%s", bad[i]);
		assert_int_equal(vd_blkif_read_fe_conf(XS, FE, &c, &conf, &err), -EINVAL);
		assert_non_null(strstr(err.msg, "ring-ref invalid"));
		fsetf(FE, "ring-ref", "1");
		fsetf(FE, "event-channel", "%s", bad[i]);
		assert_int_equal(vd_blkif_read_fe_conf(XS, FE, &c, &conf, &err), -EINVAL);
		fsetf(FE, "event-channel", "17");
	}
	{
		struct vd_err err = { 0 };

		frm(FE, "event-channel");
		assert_int_equal(vd_blkif_read_fe_conf(XS, FE, &c, &conf, &err), -ENOENT);
		assert_non_null(strstr(err.msg, "event-channel missing"));
		fsetf(FE, "event-channel", "00017"); /* leading zeros are still decimal */
		assert_int_equal(vd_blkif_read_fe_conf(XS, FE, &c, &conf, NULL), 0);
		assert_int_equal(conf.queue[0].evtchn, 17);
		fsetf(FE, "feature-persistent", "yes");
		assert_int_equal(vd_blkif_read_fe_conf(XS, FE, &c, &conf, NULL), -EINVAL);
	}
}

static void test_fe_multiqueue(void **state)
{
	struct vd_blkif_caps c = caps_all();
	struct vd_blkif_fe_conf conf;
	struct vd_err err = { 0 };
	char dir[128];

	fsetf(FE, "multi-queue-num-queues", "4");
	fsetf(FE, "ring-page-order", "1");
	for (int q = 0; q < 4; q++) {
		snprintf(dir, sizeof(dir), FE "/queue-%d", q);
		fsetf(dir, "ring-ref0", "%d", 100 + 2 * q);
		fsetf(dir, "ring-ref1", "%d", 101 + 2 * q);
		fsetf(dir, "event-channel", "%d", 10 + q);
	}
	assert_int_equal(vd_blkif_read_fe_conf(XS, FE, &c, &conf, &err), 0);
	assert_int_equal(conf.nr_queues, 4);
	assert_int_equal(conf.nr_ring_pages, 2);
	for (int q = 0; q < 4; q++) {
		assert_int_equal(conf.queue[q].ring_refs[0], 100 + 2 * q);
		assert_int_equal(conf.queue[q].ring_refs[1], 101 + 2 * q);
		assert_int_equal(conf.queue[q].evtchn, 10 + q);
	}
	fsetf(FE, "multi-queue-num-queues", "5");
	assert_int_equal(vd_blkif_read_fe_conf(XS, FE, &c, &conf, &err), -EINVAL);
	fsetf(FE, "multi-queue-num-queues", "0");
	assert_int_equal(vd_blkif_read_fe_conf(XS, FE, &c, &conf, &err), -EINVAL);
	c.max_queues = 64; /* clamped to VD_BLKIF_MAX_QUEUES */
	fsetf(FE, "multi-queue-num-queues", "17");
	assert_int_equal(vd_blkif_read_fe_conf(XS, FE, &c, &conf, &err), -EINVAL);
	c = caps_all();
	fsetf(FE, "multi-queue-num-queues", "4");
	frm(FE "/queue-3", "event-channel");
	memset(&err, 0, sizeof(err));
	assert_int_equal(vd_blkif_read_fe_conf(XS, FE, &c, &conf, &err), -ENOENT);
	assert_non_null(strstr(err.msg, "queue-3/event-channel missing"));
	/* one queue: keys in the frontend dir itself */
	fsetf(FE, "multi-queue-num-queues", "1");
	assert_int_equal(vd_blkif_read_fe_conf(XS, FE, &c, &conf, &err), -ENOENT);
	fsetf(FE, "ring-ref0", "7");
	fsetf(FE, "ring-ref1", "8");
	fsetf(FE, "event-channel", "9");
	assert_int_equal(vd_blkif_read_fe_conf(XS, FE, &c, &conf, &err), 0);
	assert_int_equal(conf.nr_queues, 1);
	assert_int_equal(conf.queue[0].ring_refs[1], 8);
}

/* ---- the state machine ---- */

struct ops_rec {
	int connects;
	int disconnects;
	int connect_rc;
	struct vd_blkif_fe_conf last;
	bool up;
};

static int rec_connect(void *arg, const struct vd_blkif_fe_conf *conf, struct vd_err *err)
{
	struct ops_rec *o = arg;

	assert_false(o->up); /* never connect twice */
	o->connects++;
	o->last = *conf;
	if (o->connect_rc < 0) {
		return vd_err_set(err, -o->connect_rc, "cannot map ring");
	}
	o->up = true;
	return 0;
}

static void rec_disconnect(void *arg)
{
	struct ops_rec *o = arg;

	assert_true(o->up); /* only what was connected */
	o->disconnects++;
	o->up = false;
}

static const struct vd_xenbus_backend_ops rec_ops = {
	.connect = rec_connect,
	.disconnect = rec_disconnect,
};

static int state_of(const char *dir)
{
	const char *v = fget(dir, "state");

	return v ? (int)strtol(v, NULL, 10) : -1; /* test code: our own values */
}

static void toolstack(void)
{
	fsetf(BE, "frontend", FE);
	fsetf(BE, "frontend-id", "5");
	fsetf(BE, "online", "1");
	fsetf(BE, "state", "1");
	fsetf(FE, "state", "1");
	fsetf(FE, "backend", BE);
}

static void frontend_rings(void)
{
	fsetf(FE, "ring-ref", "33");
	fsetf(FE, "event-channel", "4");
	fsetf(FE, "protocol", "x86_64-abi");
}

static int fe(struct vd_xenbus_backend *b, int state)
{
	fsetf(FE, "state", "%d", state);
	return vd_xenbus_backend_handle_watch(b, FE "/state", "fe");
}

static struct vd_xenbus_backend *create(struct ops_rec *o)
{
	struct vd_blkif_caps c = caps_all();
	struct vd_xenbus_backend *b = NULL;
	struct vd_err err = { 0 };

	assert_int_equal(vd_xenbus_backend_create(XS, BE, &c, &rec_ops, o, &b, &err), 0);
	assert_non_null(b);
	return b;
}

static void test_create_writes_features(void **state)
{
	struct ops_rec o = { 0 };
	struct vd_xenbus_backend *b;

	toolstack();
	g_txn_eagain = 2; /* retried */
	b = create(&o);
	assert_int_equal(g_txn_ends, 3);
	assert_int_equal(state_of(BE), XenbusStateInitWait);
	assert_string_equal(fget(BE, "feature-flush-cache"), "1");
	assert_string_equal(fget(BE, "feature-barrier"), "1");
	assert_string_equal(fget(BE, "feature-discard"), "1");
	assert_string_equal(fget(BE, "discard-granularity"), "4096");
	assert_string_equal(fget(BE, "discard-alignment"), "0");
	assert_string_equal(fget(BE, "discard-secure"), "0");
	assert_string_equal(fget(BE, "feature-persistent"), "1");
	assert_string_equal(fget(BE, "feature-max-indirect-segments"), "256");
	assert_string_equal(fget(BE, "multi-queue-max-queues"), "4");
	assert_string_equal(fget(BE, "max-ring-page-order"), "2");
	assert_string_equal(fget(BE, "sectors"), "2097152");
	assert_string_equal(fget(BE, "info"), "0");
	assert_string_equal(fget(BE, "sector-size"), "512");
	assert_string_equal(fget(BE, "physical-sector-size"), "4096");
	assert_int_equal(g_watches, 2);
	vd_xenbus_backend_destroy(b);
	assert_int_equal(g_watches, 0);
	assert_int_equal(o.connects, 0);
	vd_xenbus_backend_destroy(NULL);
}

static void test_create_readonly_caps(void **state)
{
	struct vd_blkif_caps c = caps_all();
	struct ops_rec o = { 0 };
	struct vd_xenbus_backend *b = NULL;

	toolstack();
	c.readonly = true;
	c.discard = false;
	c.max_indirect_segs = 0;
	assert_int_equal(vd_xenbus_backend_create(XS, BE, &c, &rec_ops, &o, &b, NULL), 0);
	assert_string_equal(fget(BE, "info"), "4");
	assert_string_equal(fget(BE, "feature-discard"), "0");
	assert_null(fget(BE, "discard-granularity"));
	assert_null(fget(BE, "feature-max-indirect-segments"));
	vd_xenbus_backend_destroy(b);
}

static void test_create_errors(void **state)
{
	struct vd_blkif_caps c = caps_all();
	struct ops_rec o = { 0 };
	struct vd_xenbus_backend *b = NULL;
	struct vd_err err = { 0 };

	/* no frontend key */
	assert_int_equal(vd_xenbus_backend_create(XS, BE, &c, &rec_ops, &o, &b, &err), -ENOENT);
	assert_null(b);
	assert_non_null(strstr(err.msg, "frontend"));
	toolstack();
	fsetf(BE, "frontend-id", "70000");
	assert_int_equal(vd_xenbus_backend_create(XS, BE, &c, &rec_ops, &o, &b, NULL), -EINVAL);
	fsetf(BE, "frontend-id", "5");
	fsetf(BE, "frontend", "relative/path");
	assert_int_equal(vd_xenbus_backend_create(XS, BE, &c, &rec_ops, &o, &b, NULL), -EINVAL);
	fsetf(BE, "frontend", FE);
	c.max_queues = 0;
	assert_int_equal(vd_xenbus_backend_create(XS, BE, &c, &rec_ops, &o, &b, NULL), -EINVAL);
	c = caps_all();
	c.max_ring_page_order = 5;
	assert_int_equal(vd_xenbus_backend_create(XS, BE, &c, &rec_ops, &o, &b, NULL), -EINVAL);
	c = caps_all();
	c.sector_bytes = 1000;
	assert_int_equal(vd_xenbus_backend_create(XS, BE, &c, &rec_ops, &o, &b, NULL), -EINVAL);
	c = caps_all();
	g_write_fail_after = 3; /* xenstore refuses a feature write */
	assert_int_equal(vd_xenbus_backend_create(XS, BE, &c, &rec_ops, &o, &b, NULL), -EACCES);
	assert_null(b);
	assert_int_equal(g_watches, 0);
}

static void test_connect_and_close(void **state)
{
	struct ops_rec o = { 0 };
	struct vd_xenbus_backend *b;

	toolstack();
	b = create(&o);
	/* the initial watch events are harmless */
	assert_int_equal(vd_xenbus_backend_handle_watch(b, BE, "be"), 0);
	assert_int_equal(vd_xenbus_backend_handle_watch(b, FE "/state", "fe"), 0);
	assert_int_equal(o.connects, 0);
	assert_int_equal(state_of(BE), XenbusStateInitWait);

	frontend_rings();
	assert_int_equal(fe(b, XenbusStateInitialised), 0);
	assert_int_equal(o.connects, 1);
	assert_int_equal(o.last.domid, 5);
	assert_int_equal(o.last.queue[0].ring_refs[0], 33);
	assert_int_equal(o.last.queue[0].evtchn, 4);
	assert_int_equal(o.last.abi, VD_BLKIF_ABI_X86_64);
	assert_int_equal(state_of(BE), XenbusStateConnected);
	/* our own state write echoes on the backend watch */
	assert_int_equal(vd_xenbus_backend_handle_watch(b, BE "/state", "be"), 0);
	/* Connected while connected: no second connect */
	assert_int_equal(fe(b, XenbusStateConnected), 0);
	assert_int_equal(fe(b, XenbusStateConnected), 0);
	assert_int_equal(o.connects, 1);

	assert_int_equal(fe(b, XenbusStateClosing), 0);
	assert_int_equal(o.disconnects, 1);
	assert_int_equal(state_of(BE), XenbusStateClosing);
	assert_int_equal(fe(b, XenbusStateClosed), 0); /* still online */
	assert_int_equal(state_of(BE), XenbusStateClosed);
	assert_int_equal(o.disconnects, 1);

	/* reconnect after Closed, as blkback */
	assert_int_equal(fe(b, XenbusStateInitialising), 0);
	assert_int_equal(state_of(BE), XenbusStateInitWait);
	assert_int_equal(fe(b, XenbusStateInitialised), 0);
	assert_int_equal(o.connects, 2);
	assert_int_equal(state_of(BE), XenbusStateConnected);

	/* vdisk detach: online=0, state=5 */
	fsetf(BE, "online", "0");
	fsetf(BE, "state", "5");
	/* a live disk keeps its rings until the frontend has drained and closed */
	assert_int_equal(vd_xenbus_backend_handle_watch(b, BE "/online", "be"), 0);
	assert_int_equal(vd_xenbus_backend_handle_watch(b, BE "/state", "be"), 0);
	assert_int_equal(o.disconnects, 1);
	assert_int_equal(state_of(BE), XenbusStateClosing);
	assert_int_equal(fe(b, XenbusStateClosing), 0);
	assert_int_equal(o.disconnects, 2);
	assert_int_equal(fe(b, XenbusStateClosed), 1);
	assert_int_equal(state_of(BE), XenbusStateClosed);
	assert_int_equal(vd_xenbus_backend_handle_watch(b, BE "/state", "be"), 1);
	vd_xenbus_backend_destroy(b);
	assert_int_equal(o.disconnects, 2);
	assert_int_equal(g_watches, 0);
}

static void test_flapping(void **state)
{
	struct ops_rec o = { 0 };
	struct vd_xenbus_backend *b;

	toolstack();
	frontend_rings();
	b = create(&o);
	assert_int_equal(fe(b, XenbusStateInitialised), 0);
	assert_int_equal(o.connects, 1);
	/* the frontend restarts without closing */
	assert_int_equal(fe(b, XenbusStateInitialising), 0);
	assert_int_equal(o.disconnects, 1);
	assert_int_equal(state_of(BE), XenbusStateInitWait);
	fsetf(FE, "ring-ref", "34");
	assert_int_equal(fe(b, XenbusStateInitialised), 0);
	assert_int_equal(o.connects, 2);
	assert_int_equal(o.last.queue[0].ring_refs[0], 34);
	assert_int_equal(fe(b, XenbusStateInitialised), 0);
	assert_int_equal(fe(b, XenbusStateConnected), 0);
	assert_int_equal(o.connects, 2);
	/* garbage and odd states are ignored */
	fsetf(FE, "state", "banana");
	assert_int_equal(vd_xenbus_backend_handle_watch(b, FE "/state", "fe"), 0);
	assert_int_equal(fe(b, XenbusStateInitWait), 0);
	assert_int_equal(fe(b, 7), 0);
	assert_int_equal(vd_xenbus_backend_handle_watch(b, "/x", "other"), 0);
	assert_int_equal(vd_xenbus_backend_handle_watch(b, "/x", NULL), 0);
	assert_true(o.up);
	/* destroy while connected disconnects */
	vd_xenbus_backend_destroy(b);
	assert_int_equal(o.disconnects, 2);
	assert_false(o.up);
}

static void test_bad_frontend_conf(void **state)
{
	struct ops_rec o = { 0 };
	struct vd_xenbus_backend *b;

	toolstack();
	b = create(&o);
	fsetf(FE, "event-channel", "4"); /* no ring-ref */
	assert_int_equal(fe(b, XenbusStateInitialised), 0);
	assert_int_equal(o.connects, 0);
	assert_int_equal(state_of(BE), XenbusStateClosing);
	assert_non_null(fget(BE, "error"));
	assert_true(strncmp(fget(BE, "error"), "2 ", 2) == 0); /* ENOENT */
	assert_non_null(strstr(fget(BE, "error"), "ring-ref"));
	/* no connect from Closing, even if the frontend says Connected */
	frontend_rings();
	assert_int_equal(fe(b, XenbusStateConnected), 0);
	assert_int_equal(o.connects, 0);
	/* the frontend gives up; it may start again */
	assert_int_equal(fe(b, XenbusStateClosed), 0);
	assert_int_equal(state_of(BE), XenbusStateClosed);
	assert_int_equal(fe(b, XenbusStateInitialising), 0);
	assert_int_equal(fe(b, XenbusStateInitialised), 0);
	assert_int_equal(o.connects, 1);
	vd_xenbus_backend_destroy(b);
	assert_int_equal(o.disconnects, 1);
}

static void test_connect_fails(void **state)
{
	struct ops_rec o = { .connect_rc = -ENOMEM };
	struct vd_xenbus_backend *b;

	toolstack();
	frontend_rings();
	b = create(&o);
	assert_int_equal(fe(b, XenbusStateInitialised), 0);
	assert_int_equal(o.connects, 1);
	assert_false(o.up);
	assert_int_equal(state_of(BE), XenbusStateClosing);
	assert_true(strncmp(fget(BE, "error"), "12 ", 3) == 0);
	assert_non_null(strstr(fget(BE, "error"), "cannot map ring"));
	assert_int_equal(fe(b, XenbusStateClosing), 0);
	assert_int_equal(fe(b, XenbusStateClosed), 0);
	assert_int_equal(state_of(BE), XenbusStateClosed);
	vd_xenbus_backend_destroy(b);
	assert_int_equal(o.disconnects, 0);
}

static void test_fatal(void **state)
{
	struct ops_rec o = { 0 };
	struct vd_xenbus_backend *b;

	toolstack();
	frontend_rings();
	b = create(&o);
	assert_int_equal(fe(b, XenbusStateConnected), 0);
	assert_int_equal(state_of(BE), XenbusStateConnected);
	vd_xenbus_backend_fatal(b, -EPROTO, "ring overflow on queue 0");
	assert_string_equal(fget(BE, "error"), "71 ring overflow on queue 0");
	assert_int_equal(state_of(BE), XenbusStateClosing);
	/* the echo of our own Closing is not the toolstack closing us */
	assert_int_equal(vd_xenbus_backend_handle_watch(b, BE "/state", "be"), 0);
	assert_int_equal(fe(b, XenbusStateClosing), 0);
	assert_int_equal(o.disconnects, 1);
	assert_int_equal(fe(b, XenbusStateClosed), 0);
	assert_int_equal(state_of(BE), XenbusStateClosed);
	vd_xenbus_backend_destroy(b);
	assert_int_equal(o.disconnects, 1);
}

static void test_toolstack_close_and_removal(void **state)
{
	struct ops_rec o = { 0 };
	struct vd_xenbus_backend *b;

	/* the toolstack writes state=5 without online=0: serve until the frontend closes */
	toolstack();
	frontend_rings();
	b = create(&o);
	assert_int_equal(fe(b, XenbusStateInitialised), 0);
	fsetf(BE, "state", "5");
	assert_int_equal(vd_xenbus_backend_handle_watch(b, BE "/state", "be"), 0);
	assert_int_equal(o.disconnects, 0);
	/* a toolstack that will not wait writes Closed: disconnect now */
	fsetf(BE, "state", "6");
	assert_int_equal(vd_xenbus_backend_handle_watch(b, BE "/state", "be"), 1);
	assert_int_equal(o.disconnects, 1);
	assert_int_equal(state_of(BE), XenbusStateClosed);
	/* finished: later events change nothing */
	assert_int_equal(fe(b, XenbusStateInitialised), 1);
	assert_int_equal(o.connects, 1);
	vd_xenbus_backend_destroy(b);

	/* online=0 before any frontend connected: finish at once */
	freset();
	memset(&o, 0, sizeof(o));
	toolstack();
	b = create(&o);
	fsetf(BE, "online", "0");
	fsetf(BE, "state", "5");
	assert_int_equal(vd_xenbus_backend_handle_watch(b, BE "/online", "be"), 1);
	assert_int_equal(state_of(BE), XenbusStateClosed);
	vd_xenbus_backend_destroy(b);

	/* the backend directory disappears */
	freset();
	memset(&o, 0, sizeof(o));
	toolstack();
	frontend_rings();
	b = create(&o);
	assert_int_equal(fe(b, XenbusStateConnected), 0);
	frm_tree(BE);
	assert_int_equal(vd_xenbus_backend_handle_watch(b, BE, "be"), 1);
	assert_int_equal(o.disconnects, 1);
	assert_null(fget(BE, "state")); /* nothing recreated */
	vd_xenbus_backend_destroy(b);

	/* the frontend disappears while connected, then the toolstack sets online=0 */
	freset();
	memset(&o, 0, sizeof(o));
	toolstack();
	frontend_rings();
	b = create(&o);
	assert_int_equal(fe(b, XenbusStateConnected), 0);
	frm_tree(FE);
	assert_int_equal(vd_xenbus_backend_handle_watch(b, FE "/state", "fe"), 0);
	assert_int_equal(o.disconnects, 1);
	assert_int_equal(state_of(BE), XenbusStateClosed);
	fsetf(BE, "online", "0");
	assert_int_equal(vd_xenbus_backend_handle_watch(b, BE "/online", "be"), 1);
	vd_xenbus_backend_destroy(b);
	assert_int_equal(o.disconnects, 1);

	/* frontend Closed with online=0 finishes */
	freset();
	memset(&o, 0, sizeof(o));
	toolstack();
	frontend_rings();
	b = create(&o);
	assert_int_equal(fe(b, XenbusStateConnected), 0);
	fsetf(BE, "online", "0");
	assert_int_equal(fe(b, XenbusStateClosed), 1);
	vd_xenbus_backend_destroy(b);
	assert_int_equal(o.disconnects, 1);
}

static void test_helpers(void **state)
{
	uint64_t v = 0;
	int st = 0;

	fsetf("/a", "n", "123");
	assert_int_equal(vd_xs_read_uint(XS, "/a", "n", 200, &v), 0);
	assert_int_equal(v, 123);
	assert_int_equal(vd_xs_read_uint(XS, "/a", "n", 100, &v), -EINVAL);
	assert_int_equal(vd_xs_read_uint(XS, "/a", "missing", 100, &v), -ENOENT);
	fsetf("/a", "n", "18446744073709551615");
	assert_int_equal(vd_xs_read_uint(XS, "/a", "n", UINT64_MAX, &v), 0);
	assert_true(v == UINT64_MAX);
	fsetf("/a", "n", "18446744073709551616");
	assert_int_equal(vd_xs_read_uint(XS, "/a", "n", UINT64_MAX, &v), -EINVAL);
	assert_int_equal(vd_xenbus_write_state(XS, "/a", 4), 0);
	assert_int_equal(vd_xenbus_read_state(XS, "/a", &st), 0);
	assert_int_equal(st, 4);
	fsetf("/a", "state", "256");
	assert_int_equal(vd_xenbus_read_state(XS, "/a", &st), -EINVAL);
	{
		char big[400];

		memset(big, 'x', sizeof(big) - 1);
		big[sizeof(big) - 1] = '\0';
		assert_int_equal(vd_xs_printf(XS, XBT_NULL, "/a", "k", "%s", big), -E2BIG);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_fe_single, setup, teardown),
		cmocka_unit_test_setup_teardown(test_fe_multipage, setup, teardown),
		cmocka_unit_test_setup_teardown(test_fe_malformed, setup, teardown),
		cmocka_unit_test_setup_teardown(test_fe_multiqueue, setup, teardown),
		cmocka_unit_test_setup_teardown(test_create_writes_features, setup, teardown),
		cmocka_unit_test_setup_teardown(test_create_readonly_caps, setup, teardown),
		cmocka_unit_test_setup_teardown(test_create_errors, setup, teardown),
		cmocka_unit_test_setup_teardown(test_connect_and_close, setup, teardown),
		cmocka_unit_test_setup_teardown(test_flapping, setup, teardown),
		cmocka_unit_test_setup_teardown(test_bad_frontend_conf, setup, teardown),
		cmocka_unit_test_setup_teardown(test_connect_fails, setup, teardown),
		cmocka_unit_test_setup_teardown(test_fatal, setup, teardown),
		cmocka_unit_test_setup_teardown(test_toolstack_close_and_removal, setup, teardown),
		cmocka_unit_test_setup_teardown(test_helpers, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
