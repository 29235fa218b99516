/*
 * The backend xenbus state machine for one VBD (Linux xen-blkback xenbus.c:
 * xen_blkbk_probe, frontend_changed, connect_ring, read_per_ring_refs).
 *
 * Everything read from xenstore is untrusted: the frontend directory is the
 * guest's, and even the backend directory is only as good as the toolstack.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xen/io/xenbus.h>

#include "blkif/xenbus.h"
#include "common/log.h"

#define PATH_MAX_BYTES  1024 /* our bound on any xenstore path we build */
#define VALUE_MAX_BYTES 256  /* and on any value we write */
#define TXN_RETRIES     32
#define DOMID_MAX       0x7fefu /* DOMID_FIRST_RESERVED - 1 */

struct vd_xenbus_backend {
	struct xs_handle *xs;
	char *be_path;
	char *fe_path;
	char *fe_state_path;
	uint16_t fe_domid;
	struct vd_blkif_caps caps;
	const struct vd_xenbus_backend_ops *ops;
	void *arg;
	int state;      /* what we last wrote to be_path/state */
	bool connected; /* ops->connect succeeded, no disconnect since */
	bool finished;
	bool watch_be;
	bool watch_fe;
};

/* ---- helpers ---- */

/* -errno after a failed libxenstore call; never 0 or positive. */
static int neg_errno(void)
{
	return errno > 0 ? -errno : -EIO;
}

static int join(char *buf, size_t size, const char *dir, const char *key)
{
	int n = snprintf(buf, size, "%s/%s", dir, key);

	if (n < 0 || (size_t)n >= size) {
		return -ENAMETOOLONG;
	}
	return 0;
}

/* xs_read of dir/key; NULL with *rc = -errno if absent or failed. */
static char *read_str(struct xs_handle *xs, xs_transaction_t t, const char *dir, const char *key,
		      int *rc)
{
	char path[PATH_MAX_BYTES];
	unsigned int len = 0;
	char *v;

	*rc = join(path, sizeof(path), dir, key);
	if (*rc < 0) {
		return NULL;
	}
	errno = 0;
	v = xs_read(xs, t, path, &len);
	if (v == NULL) {
		*rc = neg_errno();
		return NULL;
	}
	/* libxenstore NUL-terminates; a value with an embedded NUL is malformed. */
	if (strlen(v) != len) {
		free(v);
		*rc = -EINVAL;
		return NULL;
	}
	*rc = 0;
	return v;
}

static int parse_uint(const char *s, uint64_t max, uint64_t *out)
{
	const char *p;
	char *end;
	unsigned long long v;

	if (s[0] == '\0' || strlen(s) > 20) {
		return -EINVAL;
	}
	for (p = s; *p != '\0'; p++) {
		if (*p < '0' || *p > '9') {
			return -EINVAL;
		}
	}
	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno != 0 || *end != '\0' || v > max) {
		return -EINVAL;
	}
	*out = v;
	return 0;
}

int vd_xs_read_uint(struct xs_handle *xs, const char *dir, const char *key, uint64_t max,
		    uint64_t *out)
{
	int rc;
	char *v = read_str(xs, XBT_NULL, dir, key, &rc);

	if (v == NULL) {
		return rc;
	}
	rc = parse_uint(v, max, out);
	free(v);
	return rc;
}

int vd_xs_printf(struct xs_handle *xs, xs_transaction_t t, const char *dir, const char *key,
		 const char *fmt, ...)
{
	char path[PATH_MAX_BYTES];
	char val[VALUE_MAX_BYTES];
	va_list ap;
	int n, rc;

	va_start(ap, fmt);
	n = vsnprintf(val, sizeof(val), fmt, ap); /* NOLINT(clang-analyzer-valist.Uninitialized) */
	va_end(ap);
	if (n < 0 || (size_t)n >= sizeof(val)) {
		return -E2BIG;
	}
	rc = join(path, sizeof(path), dir, key);
	if (rc < 0) {
		return rc;
	}
	errno = 0;
	if (!xs_write(xs, t, path, val, (unsigned int)n)) {
		return neg_errno();
	}
	return 0;
}

int vd_xenbus_read_state(struct xs_handle *xs, const char *dir, int *state)
{
	uint64_t v = 0;
	int rc = vd_xs_read_uint(xs, dir, "state", 255, &v);

	if (rc < 0) {
		return rc;
	}
	*state = (int)v;
	return 0;
}

int vd_xenbus_write_state(struct xs_handle *xs, const char *dir, int state)
{
	return vd_xs_printf(xs, XBT_NULL, dir, "state", "%d", state);
}

/* ---- the frontend's configuration ---- */

static int read_queue(struct xs_handle *xs, const char *dir, unsigned int nr_pages,
		      struct vd_blkif_fe_queue *q, bool single_ref, struct vd_err *err)
{
	uint64_t v = 0;
	unsigned int i;
	int rc;

	rc = vd_xs_read_uint(xs, dir, "event-channel", UINT32_MAX, &v);
	if (rc < 0) {
		return vd_err_set(err, -rc, "%s/event-channel %s", dir,
				  rc == -ENOENT ? "missing" : "invalid");
	}
	q->evtchn = (uint32_t)v;

	if (single_ref) {
		rc = vd_xs_read_uint(xs, dir, "ring-ref", UINT32_MAX, &v);
		if (rc < 0) {
			return vd_err_set(err, -rc, "%s/ring-ref %s", dir,
					  rc == -ENOENT ? "missing" : "invalid");
		}
		q->ring_refs[0] = (uint32_t)v;
		return 0;
	}
	for (i = 0; i < nr_pages; i++) {
		char key[16];

		snprintf(key, sizeof(key), "ring-ref%u", i);
		rc = vd_xs_read_uint(xs, dir, key, UINT32_MAX, &v);
		if (rc < 0) {
			return vd_err_set(err, -rc, "%s/%s %s", dir, key,
					  rc == -ENOENT ? "missing" : "invalid");
		}
		q->ring_refs[i] = (uint32_t)v;
	}
	return 0;
}

int vd_blkif_read_fe_conf(struct xs_handle *xs, const char *fe_path,
			  const struct vd_blkif_caps *caps, struct vd_blkif_fe_conf *conf,
			  struct vd_err *err)
{
	unsigned int max_queues = VD_MIN(caps->max_queues, (unsigned int)VD_BLKIF_MAX_QUEUES);
	unsigned int max_order =
		VD_MIN(caps->max_ring_page_order, (unsigned int)VD_BLKIF_MAX_RING_PAGE_ORDER);
	bool has_order;
	uint64_t v = 0;
	unsigned int q;
	char *proto;
	int rc;

	memset(conf, 0, sizeof(*conf));
	if (max_queues == 0) {
		max_queues = 1;
	}

	/* protocol: absent means native (xen/io/blkif.h). */
	proto = read_str(xs, XBT_NULL, fe_path, "protocol", &rc);
	if (proto == NULL && rc != -ENOENT) {
		return vd_err_set(err, -rc, "%s/protocol unreadable", fe_path);
	}
	rc = vd_blkif_abi_parse(proto, &conf->abi);
	if (rc < 0) {
		/* Do not echo a guest string of any length into the message. */
		vd_err_set(err, EINVAL, "%s/protocol: unknown ABI \"%.32s\"", fe_path, proto);
		free(proto);
		return rc;
	}
	free(proto);

	rc = vd_xs_read_uint(xs, fe_path, "multi-queue-num-queues", UINT32_MAX, &v);
	if (rc == -ENOENT) {
		v = 1;
	} else if (rc < 0) {
		return vd_err_set(err, -rc, "%s/multi-queue-num-queues malformed", fe_path);
	}
	if (v < 1 || v > max_queues) {
		return vd_err_set(err, EINVAL,
				  "%s/multi-queue-num-queues %" PRIu64 " out of range 1..%u",
				  fe_path, v, max_queues);
	}
	conf->nr_queues = (unsigned int)v;

	rc = vd_xs_read_uint(xs, fe_path, "ring-page-order", UINT32_MAX, &v);
	has_order = rc != -ENOENT;
	if (rc == -ENOENT) {
		v = 0;
	} else if (rc < 0) {
		return vd_err_set(err, -rc, "%s/ring-page-order malformed", fe_path);
	}
	if (v > max_order) {
		return vd_err_set(err, EINVAL, "%s/ring-page-order %" PRIu64 " above maximum %u",
				  fe_path, v, max_order);
	}
	conf->ring_page_order = (unsigned int)v;
	conf->nr_ring_pages = 1u << conf->ring_page_order;

	if (conf->nr_queues == 1) {
		/* One queue: keys directly in the frontend dir (blkback). */
		rc = read_queue(xs, fe_path, conf->nr_ring_pages, &conf->queue[0], !has_order, err);
		if (rc < 0) {
			return rc;
		}
	} else {
		for (q = 0; q < conf->nr_queues; q++) {
			char dir[PATH_MAX_BYTES];
			int n = snprintf(dir, sizeof(dir), "%s/queue-%u", fe_path, q);

			if (n < 0 || (size_t)n >= sizeof(dir)) {
				return vd_err_set(err, ENAMETOOLONG, "frontend path too long");
			}
			rc = read_queue(xs, dir, conf->nr_ring_pages, &conf->queue[q], !has_order,
					err);
			if (rc < 0) {
				return rc;
			}
		}
	}

	rc = vd_xs_read_uint(xs, fe_path, "feature-persistent", UINT32_MAX, &v);
	if (rc == -ENOENT) {
		v = 0;
	} else if (rc < 0) {
		return vd_err_set(err, -rc, "%s/feature-persistent malformed", fe_path);
	}
	conf->persistent = caps->persistent && v != 0;
	return 0;
}

/* ---- the state machine ---- */

static int set_state(struct vd_xenbus_backend *b, int state)
{
	int rc;

	if (b->state == state) {
		return 0;
	}
	rc = vd_xenbus_write_state(b->xs, b->be_path, state);
	if (rc < 0) {
		vd_log(VD_LOG_ERR, "%s: cannot write state %d: %s", b->be_path, state,
		       strerror(-rc));
		return rc;
	}
	/* Set even on our own echo: the watch that follows compares against it. */
	b->state = state;
	return 0;
}

static void do_disconnect(struct vd_xenbus_backend *b)
{
	if (b->connected) {
		b->connected = false;
		b->ops->disconnect(b->arg);
	}
}

static int write_caps(struct vd_xenbus_backend *b, xs_transaction_t t)
{
	const struct vd_blkif_caps *c = &b->caps;
	const char *d = b->be_path;
	int rc = 0;

	rc = rc ?: vd_xs_printf(b->xs, t, d, "feature-flush-cache", "%d", c->flush ? 1 : 0);
	rc = rc ?: vd_xs_printf(b->xs, t, d, "feature-barrier", "%d", c->barrier ? 1 : 0);
	rc = rc ?: vd_xs_printf(b->xs, t, d, "feature-discard", "%d", c->discard ? 1 : 0);
	if (c->discard) {
		rc = rc
			     ?: vd_xs_printf(b->xs, t, d, "discard-granularity", "%u",
					     c->discard_granularity_bytes);
		rc = rc
			     ?: vd_xs_printf(b->xs, t, d, "discard-alignment", "%u",
					     c->discard_alignment_bytes);
		rc = rc
			     ?: vd_xs_printf(b->xs, t, d, "discard-secure", "%d",
					     c->discard_secure ? 1 : 0);
	}
	rc = rc ?: vd_xs_printf(b->xs, t, d, "feature-persistent", "%d", c->persistent ? 1 : 0);
	if (c->max_indirect_segs > 0) {
		rc = rc
			     ?: vd_xs_printf(b->xs, t, d, "feature-max-indirect-segments", "%u",
					     c->max_indirect_segs);
	}
	rc = rc ?: vd_xs_printf(b->xs, t, d, "multi-queue-max-queues", "%u", c->max_queues);
	rc = rc ?: vd_xs_printf(b->xs, t, d, "max-ring-page-order", "%u", c->max_ring_page_order);
	rc = rc ?: vd_xs_printf(b->xs, t, d, "sectors", "%" PRIu64, c->size_bytes / 512);
	rc = rc ?: vd_xs_printf(b->xs, t, d, "info", "%u", c->readonly ? VDISK_READONLY : 0u);
	rc = rc ?: vd_xs_printf(b->xs, t, d, "sector-size", "%u", c->sector_bytes);
	rc = rc
		     ?: vd_xs_printf(b->xs, t, d, "physical-sector-size", "%u",
				     c->physical_sector_bytes);
	return rc;
}

static int write_caps_txn(struct vd_xenbus_backend *b)
{
	int i, rc;

	for (i = 0; i < TXN_RETRIES; i++) {
		xs_transaction_t t;

		errno = 0;
		t = xs_transaction_start(b->xs);
		if (t == XBT_NULL) {
			return neg_errno();
		}
		rc = write_caps(b, t);
		if (rc < 0) {
			xs_transaction_end(b->xs, t, true);
			return rc;
		}
		errno = 0;
		if (xs_transaction_end(b->xs, t, false)) {
			return 0;
		}
		if (errno != EAGAIN) {
			return neg_errno();
		}
	}
	return -EAGAIN;
}

static int check_caps(const struct vd_blkif_caps *c, struct vd_err *err)
{
	if (c->max_queues < 1 || c->max_queues > VD_BLKIF_MAX_QUEUES) {
		return vd_err_set(err, EINVAL, "max_queues %u out of range", c->max_queues);
	}
	if (c->max_ring_page_order > VD_BLKIF_MAX_RING_PAGE_ORDER) {
		return vd_err_set(err, EINVAL, "max_ring_page_order %u out of range",
				  c->max_ring_page_order);
	}
	if (c->max_indirect_segs > VD_BLKIF_MAX_INDIRECT_SEGS) {
		return vd_err_set(err, EINVAL, "max_indirect_segs %u out of range",
				  c->max_indirect_segs);
	}
	if (c->sector_bytes < 512 || c->sector_bytes > 4096 ||
	    (c->sector_bytes & (c->sector_bytes - 1)) != 0) {
		return vd_err_set(err, EINVAL, "sector size %u unsupported", c->sector_bytes);
	}
	return 0;
}

int vd_xenbus_backend_create(struct xs_handle *xs, const char *be_path,
			     const struct vd_blkif_caps *caps,
			     const struct vd_xenbus_backend_ops *ops, void *arg,
			     struct vd_xenbus_backend **out, struct vd_err *err)
{
	struct vd_xenbus_backend *b;
	char path[PATH_MAX_BYTES];
	uint64_t v = 0;
	int rc;

	*out = NULL;
	rc = check_caps(caps, err);
	if (rc < 0) {
		return rc;
	}
	if (be_path == NULL || be_path[0] != '/' || strlen(be_path) >= PATH_MAX_BYTES / 2) {
		return vd_err_set(err, EINVAL, "bad backend path");
	}
	b = calloc(1, sizeof(*b));
	if (b == NULL) {
		return vd_err_set(err, ENOMEM, "backend");
	}
	b->xs = xs;
	b->caps = *caps;
	b->ops = ops;
	b->arg = arg;
	b->state = -1;
	b->be_path = strdup(be_path);
	if (b->be_path == NULL) {
		rc = vd_err_set(err, ENOMEM, "backend");
		goto err_free;
	}

	b->fe_path = read_str(xs, XBT_NULL, be_path, "frontend", &rc);
	if (b->fe_path == NULL) {
		rc = vd_err_set(err, -rc, "%s/frontend", be_path);
		goto err_free;
	}
	if (b->fe_path[0] != '/' || strlen(b->fe_path) >= PATH_MAX_BYTES / 2) {
		rc = vd_err_set(err, EINVAL, "%s/frontend is not a valid path", be_path);
		goto err_free;
	}
	rc = vd_xs_read_uint(xs, be_path, "frontend-id", DOMID_MAX, &v);
	if (rc < 0) {
		rc = vd_err_set(err, -rc, "%s/frontend-id %s", be_path,
				rc == -ENOENT ? "missing" : "invalid");
		goto err_free;
	}
	b->fe_domid = (uint16_t)v;
	rc = join(path, sizeof(path), b->fe_path, "state");
	if (rc < 0) {
		vd_err_set(err, -rc, "frontend path too long");
		goto err_free;
	}
	b->fe_state_path = strdup(path);
	if (b->fe_state_path == NULL) {
		rc = vd_err_set(err, ENOMEM, "backend");
		goto err_free;
	}

	rc = write_caps_txn(b);
	if (rc < 0) {
		vd_err_set(err, -rc, "%s: writing features", be_path);
		goto err_free;
	}
	rc = set_state(b, XenbusStateInitWait);
	if (rc < 0) {
		vd_err_set(err, -rc, "%s: writing state", be_path);
		goto err_free;
	}

	errno = 0;
	if (!xs_watch(xs, be_path, "be")) {
		rc = vd_err_set(err, errno ? errno : EIO, "watch %s", be_path);
		goto err_free;
	}
	b->watch_be = true;
	errno = 0;
	if (!xs_watch(xs, b->fe_state_path, "fe")) {
		rc = vd_err_set(err, errno ? errno : EIO, "watch %s", b->fe_state_path);
		goto err_unwatch;
	}
	b->watch_fe = true;
	*out = b;
	return 0;

err_unwatch:
	xs_unwatch(xs, be_path, "be");
err_free:
	free(b->fe_state_path);
	free(b->fe_path);
	free(b->be_path);
	free(b);
	return rc;
}

void vd_xenbus_backend_destroy(struct vd_xenbus_backend *b)
{
	if (b == NULL) {
		return;
	}
	if (b->watch_fe) {
		xs_unwatch(b->xs, b->fe_state_path, "fe");
	}
	if (b->watch_be) {
		xs_unwatch(b->xs, b->be_path, "be");
	}
	do_disconnect(b);
	free(b->fe_state_path);
	free(b->fe_path);
	free(b->be_path);
	free(b);
}

void vd_xenbus_backend_fatal(struct vd_xenbus_backend *b, int errnum, const char *why)
{
	if (errnum < 0) {
		errnum = -errnum;
	}
	vd_log(VD_LOG_ERR, "%s: %s (%s)", b->be_path, why, strerror(errnum));
	if (vd_xs_printf(b->xs, XBT_NULL, b->be_path, "error", "%d %s", errnum, why) < 0) {
		vd_log(VD_LOG_WARN, "%s: cannot write error node", b->be_path);
	}
	if (b->state != XenbusStateClosed) {
		set_state(b, XenbusStateClosing);
	}
}

static void do_connect(struct vd_xenbus_backend *b)
{
	struct vd_blkif_fe_conf conf;
	struct vd_err err = { 0 };
	int rc;

	rc = vd_blkif_read_fe_conf(b->xs, b->fe_path, &b->caps, &conf, &err);
	if (rc < 0) {
		vd_xenbus_backend_fatal(b, -rc, vd_err_msg(&err));
		return;
	}
	conf.domid = b->fe_domid;
	rc = b->ops->connect(b->arg, &conf, &err);
	if (rc < 0) {
		vd_xenbus_backend_fatal(b, err.errnum ? err.errnum : -rc,
					err.errnum ? vd_err_msg(&err) : "connect failed");
		return;
	}
	b->connected = true;
	if (set_state(b, XenbusStateConnected) < 0) {
		/* The frontend would wait forever: give up the connection. */
		do_disconnect(b);
		vd_xenbus_backend_fatal(b, EIO, "cannot switch to Connected");
	}
}

/*
 * online=0, our directory gone, or the toolstack closing us: 1 if finished.
 *
 * Unplugging a live disk (libxl writes online=0 and state=5) does not cut
 * the rings: as blkback, we go on serving until the frontend has drained
 * its requests and closed, and disconnect then (frontend_changed). A
 * toolstack that will not wait writes state=6 or removes the directory,
 * and we disconnect at once.
 */
static int backend_changed(struct vd_xenbus_backend *b)
{
	uint64_t online = 1;
	int state, rc;
	bool forced, closing;

	rc = vd_xenbus_read_state(b->xs, b->be_path, &state);
	if (rc == -ENOENT) {
		/* Directory removed: nothing left to write. */
		do_disconnect(b);
		b->finished = true;
		return 1;
	}
	if (rc < 0) {
		state = b->state; /* unreadable or garbage: not a request from the toolstack */
	}
	rc = vd_xs_read_uint(b->xs, b->be_path, "online", 1, &online);
	if (rc < 0) {
		online = 1; /* absent or malformed: keep serving */
	}
	forced = state != b->state && state == XenbusStateClosed;
	closing = online == 0 || (state != b->state && state == XenbusStateClosing);
	if (!forced && !closing) {
		return 0;
	}
	if (b->connected && !forced) {
		if (b->state != XenbusStateClosing) {
			set_state(b, XenbusStateClosing);
		}
		return 0;
	}
	do_disconnect(b);
	set_state(b, XenbusStateClosed);
	b->finished = true;
	return 1;
}

static int frontend_changed(struct vd_xenbus_backend *b)
{
	int fe_state, rc;
	uint64_t online = 1;

	rc = vd_xenbus_read_state(b->xs, b->fe_path, &fe_state);
	if (rc == -ENOENT) {
		/* Gone: treated as Closed once we had started talking. */
		fe_state = XenbusStateUnknown;
	} else if (rc < 0) {
		/* Garbage (or a read error): wait for a state we understand. */
		return 0;
	}

	switch (fe_state) {
	case XenbusStateInitialising:
		if (b->state == XenbusStateClosed || b->connected) {
			/* Reconnect (blkback), or a frontend that restarted without
			 * closing: drop the old rings and wait for the new ones. */
			do_disconnect(b);
			set_state(b, XenbusStateInitWait);
		}
		break;
	case XenbusStateInitialised:
	case XenbusStateConnected:
		/* Only from InitWait: never twice, never after a fatal error. */
		if (!b->connected && b->state == XenbusStateInitWait) {
			do_connect(b);
		}
		break;
	case XenbusStateClosing:
		do_disconnect(b);
		if (b->state != XenbusStateClosed) {
			set_state(b, XenbusStateClosing);
		}
		break;
	case XenbusStateClosed:
	case XenbusStateUnknown:
		if (fe_state == XenbusStateUnknown && b->state == XenbusStateInitWait &&
		    !b->connected) {
			/* Frontend not there (yet): nothing to undo. */
			break;
		}
		do_disconnect(b);
		set_state(b, XenbusStateClosed);
		rc = vd_xs_read_uint(b->xs, b->be_path, "online", 1, &online);
		if (rc == 0 && online == 0) {
			b->finished = true;
			return 1;
		}
		break;
	default:
		/* InitWait, Reconfiguring, Reconfigured, garbage: nothing to do. */
		break;
	}
	return 0;
}

int vd_xenbus_backend_handle_watch(struct vd_xenbus_backend *b, const char *path, const char *token)
{
	if (b->finished) {
		return 1;
	}
	if (token == NULL) {
		return 0;
	}
	if (strcmp(token, "be") == 0) {
		return backend_changed(b);
	}
	if (strcmp(token, "fe") == 0) {
		return frontend_changed(b);
	}
	return 0;
}
