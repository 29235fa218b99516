/*
 * The frontend side of the xenbus handshake, as Linux xen-blkfront does it
 * (talk_to_blkback, blkfront_connect, blkfront_closing), over libxenstore.
 * Everything read from the backend directory is bounded and checked.
 */
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <xen/io/protocols.h>
#include <xen/io/xenbus.h>

#include "common/log.h"
#include "sim/guest/guest-int.h"

#define STATE_BIT(s)    (1u << (s))
#define PUBLISH_RETRIES 50

static char *xs_read_str(struct vd_front *f, const char *dir, const char *key)
{
	char path[512];
	unsigned int len;

	if (key != NULL) {
		snprintf(path, sizeof(path), "%s/%s", dir, key);
	} else {
		snprintf(path, sizeof(path), "%s", dir);
	}
	return xs_read(f->xs, XBT_NULL, path, &len);
}

/* Unsigned decimal key: -ENOENT absent, -EINVAL malformed, -ERANGE > max. */
static int read_uint(struct vd_front *f, const char *dir, const char *key, uint64_t max,
		     uint64_t *out)
{
	char *s = xs_read_str(f, dir, key);
	int rc;

	if (s == NULL) {
		return -ENOENT;
	}
	rc = vd_sg_parse_uint(s, max, out);
	free(s);
	return rc;
}

static uint64_t read_uint_default(struct vd_front *f, const char *key, uint64_t max, uint64_t dflt)
{
	uint64_t v;

	if (read_uint(f, f->be_path, key, max, &v) < 0) {
		return dflt;
	}
	return v;
}

int vd_front_read_state(struct vd_front *f, const char *dir, int *state)
{
	uint64_t v;
	int rc = read_uint(f, dir, "state", XenbusStateReconfigured, &v);

	if (rc < 0) {
		return rc;
	}
	*state = (int)v;
	return 0;
}

int vd_front_set_state(struct vd_front *f, int state)
{
	char path[256], val[16];

	snprintf(path, sizeof(path), "%s/state", f->fe_path);
	snprintf(val, sizeof(val), "%d", state);
	if (!xs_write(f->xs, XBT_NULL, path, val, (unsigned int)strlen(val))) {
		return -errno;
	}
	return 0;
}

typedef int (*cond_fn)(struct vd_front *f, void *arg);

/*
 * Watch path and re-evaluate cond on every event (and every 200 ms, in case
 * an event is lost) until it returns non-zero or timeout_ms passes.
 */
static int wait_cond(struct vd_front *f, const char *path, cond_fn cond, void *arg,
		     unsigned int timeout_ms)
{
	uint64_t deadline = vd_now_ns() + (uint64_t)timeout_ms * 1000000ull;
	const char *token = "vdsg";
	int rc;

	if (!xs_watch(f->xs, path, token)) {
		return -errno;
	}
	for (;;) {
		struct pollfd pfd = { .fd = xs_fileno(f->xs), .events = POLLIN };
		uint64_t now;
		char **ev;

		rc = cond(f, arg);
		if (rc != 0) {
			break;
		}
		now = vd_now_ns();
		if (now >= deadline) {
			rc = -ETIMEDOUT;
			break;
		}
		(void)poll(&pfd, 1, (int)VD_MIN((deadline - now) / 1000000ull + 1, 200u));
		while ((ev = xs_check_watch(f->xs)) != NULL) {
			free(ev);
		}
	}
	(void)xs_unwatch(f->xs, path, token);
	return rc;
}

static int device_exists(struct vd_front *f, void *arg)
{
	char *s = xs_read_str(f, f->fe_path, "backend");

	free(s);
	return s != NULL;
}

static int read_backend(struct vd_front *f, struct vd_err *err)
{
	char *be = xs_read_str(f, f->fe_path, "backend");
	uint64_t id;
	int rc;

	if (be == NULL) {
		return vd_err_set(err, ENOENT, "%s/backend is missing", f->fe_path);
	}
	if (be[0] != '/' || strlen(be) >= sizeof(f->be_path)) {
		free(be);
		return vd_err_set(err, EINVAL, "%s/backend is not an absolute path", f->fe_path);
	}
	snprintf(f->be_path, sizeof(f->be_path), "%s", be);
	free(be);
	rc = read_uint(f, f->fe_path, "backend-id", 0x7fef, &id);
	if (rc < 0) {
		return vd_err_set(err, -rc, "%s/backend-id is missing or bad", f->fe_path);
	}
	f->be_domid = (uint16_t)id;
	return 0;
}

int vd_front_wait_device(struct vd_front *f, unsigned int timeout_s, struct vd_err *err)
{
	int rc;

	snprintf(f->fe_path, sizeof(f->fe_path), "/local/domain/%u/device/vbd/%u", f->domid,
		 f->opts->vdev);
	rc = wait_cond(f, f->fe_path, device_exists, NULL, timeout_s * 1000u);
	if (rc < 0) {
		return vd_err_set(err, -rc, "no %s after %u s (is the VBD attached?)", f->fe_path,
				  timeout_s);
	}
	return read_backend(f, err);
}

struct state_wait {
	unsigned int mask;
	int state;
};

static int be_state_in(struct vd_front *f, void *arg)
{
	struct state_wait *w = arg;
	char *s = xs_read_str(f, f->be_path, NULL);
	int state;

	if (s == NULL) {
		return -ENOENT; /* the backend directory is gone */
	}
	free(s);
	if (vd_front_read_state(f, f->be_path, &state) < 0) {
		return 0;
	}
	w->state = state;
	return (w->mask & STATE_BIT(state)) ? 1 : 0;
}

int vd_front_wait_be_state(struct vd_front *f, unsigned int mask, unsigned int timeout_ms)
{
	struct state_wait w = { .mask = mask, .state = -1 };
	char path[300];
	int rc;

	snprintf(path, sizeof(path), "%s/state", f->be_path);
	rc = wait_cond(f, path, be_state_in, &w, timeout_ms);
	return rc < 0 ? rc : w.state;
}

bool vd_front_be_has_error(struct vd_front *f)
{
	char *s = xs_read_str(f, f->be_path, "error");

	free(s);
	return s != NULL;
}

int vd_front_read_features(struct vd_front *f, struct vd_err *err)
{
	struct vd_be_features *b = &f->feat;
	char *mode;
	int rc;

	memset(b, 0, sizeof(*b));
	rc = read_uint(f, f->be_path, "sectors", UINT64_MAX / 512, &b->sectors);
	if (rc < 0 || b->sectors == 0) {
		return vd_err_set(err, EINVAL, "%s/sectors is missing or bad", f->be_path);
	}
	b->sector_size = (uint32_t)read_uint_default(f, "sector-size", 1u << 16, 512);
	if (b->sector_size < 512 || (b->sector_size & (b->sector_size - 1)) != 0) {
		return vd_err_set(err, EINVAL, "sector-size %u is not a power of two >= 512",
				  b->sector_size);
	}
	b->info = (uint32_t)read_uint_default(f, "info", UINT32_MAX, 0);
	mode = xs_read_str(f, f->be_path, "mode");
	b->readonly = (b->info & VDISK_READONLY) || (mode != NULL && strcmp(mode, "r") == 0);
	free(mode);
	b->flush = read_uint_default(f, "feature-flush-cache", 1, 0) == 1;
	b->barrier = read_uint_default(f, "feature-barrier", 1, 0) == 1;
	b->discard = read_uint_default(f, "feature-discard", 1, 0) == 1;
	b->discard_granularity =
		(uint32_t)read_uint_default(f, "discard-granularity", 1u << 30, 512);
	b->discard_alignment = (uint32_t)read_uint_default(f, "discard-alignment", 1u << 30, 0);
	b->max_indirect =
		(uint32_t)read_uint_default(f, "feature-max-indirect-segments", UINT32_MAX, 0);
	b->max_queues = (uint32_t)read_uint_default(f, "multi-queue-max-queues", UINT32_MAX, 1);
	b->max_ring_order = (uint32_t)read_uint_default(f, "max-ring-page-order", UINT32_MAX, 0);
	b->persistent = read_uint_default(f, "feature-persistent", 1, 0) == 1;
	return 0;
}

void vd_front_negotiate(struct vd_front *f)
{
	const struct vd_sg_opts *o = f->opts;
	unsigned int ring_size, segs;

	f->nr_queues = VD_MIN(o->queues, VD_MAX(f->feat.max_queues, 1u));
	f->ring_order = VD_MIN(o->ring_order, f->feat.max_ring_order);
	ring_size = __CONST_RING_SIZE(blkif, VD_PAGE_SIZE << f->ring_order);
	f->iodepth = VD_MIN(o->iodepth, ring_size);
	segs = BLKIF_MAX_SEGMENTS_PER_REQUEST;
	if (!o->no_indirect && f->feat.max_indirect > BLKIF_MAX_SEGMENTS_PER_REQUEST) {
		segs = VD_MIN(f->feat.max_indirect, (uint32_t)VD_SG_MAX_SEGS);
		if (o->max_indirect != 0) {
			segs = VD_MIN(segs, VD_MAX(o->max_indirect,
						   (unsigned int)BLKIF_MAX_SEGMENTS_PER_REQUEST));
		}
	}
	f->max_segs = segs;
	/* blkfront: persistent grants when both offer them */
	f->persistent = !o->no_persistent && f->feat.persistent;
	f->io_pages = (unsigned int)VD_MAX(VD_DIV_ROUND_UP(o->bs, VD_PAGE_SIZE), 1u);
	f->io_pages = VD_MIN(f->io_pages, f->max_segs);
}

static int tx_printf(struct vd_front *f, xs_transaction_t t, const char *dir, const char *key,
		     const char *fmt, ...) VD_PRINTF(5, 6);

static int tx_printf(struct vd_front *f, xs_transaction_t t, const char *dir, const char *key,
		     const char *fmt, ...)
{
	char path[512], val[128];
	va_list ap;

	snprintf(path, sizeof(path), "%s/%s", dir, key);
	va_start(ap, fmt);
	(void)vsnprintf(val, sizeof(val), fmt,
			ap); /* NOLINT(clang-analyzer-valist.Uninitialized) */
	va_end(ap);
	if (!xs_write(f->xs, t, path, val, (unsigned int)strlen(val))) {
		return -errno;
	}
	return 0;
}

static int write_queue(struct vd_front *f, xs_transaction_t t, const char *dir, struct vd_fq *q)
{
	int rc;

	if (f->ring_order == 0) {
		rc = tx_printf(f, t, dir, "ring-ref", "%u", q->ring_refs[0]);
	} else {
		rc = 0;
		for (unsigned int i = 0; rc == 0 && i < q->nr_ring_pages; i++) {
			char key[16];

			snprintf(key, sizeof(key), "ring-ref%u", i);
			rc = tx_printf(f, t, dir, key, "%u", q->ring_refs[i]);
		}
	}
	if (rc == 0) {
		rc = tx_printf(f, t, dir, "event-channel", "%u", q->port);
	}
	return rc;
}

/* Remove what an earlier connection (or a hostile case) left behind. */
static void remove_stale_config(struct vd_front *f, xs_transaction_t t)
{
	static const char *const keys[] = { "ring-ref",      "ring-page-order",
					    "event-channel", "multi-queue-num-queues",
					    "protocol",      "feature-persistent" };
	char path[512];

	for (unsigned int i = 0; i < VD_ARRAY_SIZE(keys); i++) {
		snprintf(path, sizeof(path), "%s/%s", f->fe_path, keys[i]);
		(void)xs_rm(f->xs, t, path);
	}
	for (unsigned int i = 0; i < VD_SG_MAX_RING_PAGES; i++) {
		snprintf(path, sizeof(path), "%s/ring-ref%u", f->fe_path, i);
		(void)xs_rm(f->xs, t, path);
	}
	for (unsigned int i = 0; i < VD_SG_MAX_QUEUES; i++) {
		snprintf(path, sizeof(path), "%s/queue-%u", f->fe_path, i);
		(void)xs_rm(f->xs, t, path);
	}
}

static int write_config(struct vd_front *f, xs_transaction_t t)
{
	const char *d = f->fe_path;
	int rc = 0;

	remove_stale_config(f, t);

	if (f->ring_order > 0) {
		rc = tx_printf(f, t, d, "ring-page-order", "%u", f->ring_order);
	}
	if (rc == 0 && f->nr_queues == 1) {
		rc = write_queue(f, t, d, f->q[0]);
	} else if (rc == 0) {
		rc = tx_printf(f, t, d, "multi-queue-num-queues", "%u", f->nr_queues);
		for (unsigned int i = 0; rc == 0 && i < f->nr_queues; i++) {
			char qdir[200];

			snprintf(qdir, sizeof(qdir), "%s/queue-%u", d, i);
			rc = write_queue(f, t, qdir, f->q[i]);
		}
	}
	if (rc == 0) {
		rc = tx_printf(f, t, d, "protocol", "%s", XEN_IO_PROTO_ABI_X86_64);
	}
	if (rc == 0) {
		rc = tx_printf(f, t, d, "feature-persistent", "%u",
			       f->opts->no_persistent ? 0u : 1u);
	}
	if (rc == 0 && f->tweak != NULL) {
		f->tweak(f, t, f->tweak_arg);
	}
	return rc;
}

int vd_front_publish(struct vd_front *f, struct vd_err *err)
{
	for (int attempt = 0; attempt < PUBLISH_RETRIES; attempt++) {
		xs_transaction_t t = xs_transaction_start(f->xs);
		int rc;

		if (t == XBT_NULL) {
			return vd_err_set(err, errno, "xs_transaction_start failed");
		}
		rc = write_config(f, t);
		if (rc < 0) {
			(void)xs_transaction_end(f->xs, t, true);
			return vd_err_set(err, -rc, "writing the ring configuration failed");
		}
		if (xs_transaction_end(f->xs, t, false)) {
			return 0;
		}
		if (errno != EAGAIN) {
			return vd_err_set(err, errno, "committing the ring configuration failed");
		}
	}
	return vd_err_set(err, EAGAIN, "transaction kept conflicting");
}

void vd_front_free_queues(struct vd_front *f)
{
	for (unsigned int i = 0; i < VD_SG_MAX_QUEUES; i++) {
		vd_fq_destroy(f->q[i]);
		f->q[i] = NULL;
	}
}

static int create_queues(struct vd_front *f, struct vd_err *err)
{
	for (unsigned int i = 0; i < f->nr_queues; i++) {
		int rc = vd_fq_create(f, i, &f->q[i]);

		if (rc < 0) {
			vd_front_free_queues(f);
			return vd_err_set(err, -rc,
					  "queue %u: ring/slot setup failed "
					  "(guest memory or grant table too small?)",
					  i);
		}
	}
	return 0;
}

int vd_front_connect(struct vd_front *f, struct vd_err *err)
{
	int rc;

	rc = vd_front_wait_be_state(f, STATE_BIT(XenbusStateInitWait), 30000);
	if (rc < 0) {
		return vd_err_set(err, -rc, "backend %s did not reach InitWait", f->be_path);
	}
	rc = vd_front_read_features(f, err);
	if (rc < 0) {
		return rc;
	}
	vd_front_negotiate(f);
	rc = create_queues(f, err);
	if (rc < 0) {
		return rc;
	}
	rc = vd_front_publish(f, err);
	if (rc < 0) {
		return rc;
	}
	rc = vd_front_set_state(f, XenbusStateInitialised);
	if (rc < 0) {
		return vd_err_set(err, -rc, "writing state Initialised failed");
	}
	rc = vd_front_wait_be_state(f,
				    STATE_BIT(XenbusStateConnected) |
					    STATE_BIT(XenbusStateClosing) |
					    STATE_BIT(XenbusStateClosed),
				    30000);
	if (rc != XenbusStateConnected) {
		return vd_err_set(err, rc < 0 ? -rc : EPROTO, "backend did not connect (state %d)",
				  rc);
	}
	rc = vd_front_set_state(f, XenbusStateConnected);
	if (rc < 0) {
		return vd_err_set(err, -rc, "writing state Connected failed");
	}
	VD_DEBUG("simguest", "connected: %u queue(s), ring order %u, depth %u, %u segs",
		 f->nr_queues, f->ring_order, f->iodepth, f->max_segs);
	return 0;
}

int vd_front_disconnect(struct vd_front *f, struct vd_err *err)
{
	int rc;

	rc = vd_front_set_state(f, XenbusStateClosing);
	if (rc < 0) {
		return vd_err_set(err, -rc, "writing state Closing failed");
	}
	rc = vd_front_wait_be_state(f, STATE_BIT(XenbusStateClosing) | STATE_BIT(XenbusStateClosed),
				    10000);
	if (rc < 0 && rc != -ENOENT) {
		return vd_err_set(err, -rc, "backend did not reach Closing");
	}
	rc = vd_front_set_state(f, XenbusStateClosed);
	if (rc < 0) {
		return vd_err_set(err, -rc, "writing state Closed failed");
	}
	rc = vd_front_wait_be_state(
		f, STATE_BIT(XenbusStateClosed) | STATE_BIT(XenbusStateInitWait), 10000);
	if (rc < 0 && rc != -ENOENT) {
		/* The backend may still use the rings: keep them granted. */
		return vd_err_set(err, -rc, "backend did not reach Closed");
	}
	vd_front_free_queues(f);
	return 0;
}

int vd_front_reconnect(struct vd_front *f, struct vd_err *err)
{
	int rc = vd_front_set_state(f, XenbusStateInitialising);

	if (rc < 0) {
		return vd_err_set(err, -rc, "writing state Initialising failed");
	}
	return vd_front_connect(f, err);
}
