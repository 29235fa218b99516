/*
 * The toolstack side: what xl/xapi would write to give a guest a disk
 * served by vdiskd. Each change is one xenstore transaction, so the daemon
 * and the guest never see half a VBD.
 */
#include "ctl/ctl.h"
#include "ctl/ctl-int.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <xenstore.h>
#include <xen/io/xenbus.h>
#include "common/log.h"

#define TXN_MAX_TRIES 64
#define DETACH_TOKEN  "vdisk-detach"
#define ATTACH_TOKEN  "vdisk-attach"

int vd_ctl_xs_exists(struct xs_handle *xs, xs_transaction_t t, const char *path)
{
	unsigned int len;
	void *v;

	errno = 0;
	v = xs_read(xs, t, path, &len);
	if (v != NULL) {
		free(v);
		return 1;
	}
	if (errno == ENOENT) {
		return 0;
	}
	return errno > 0 ? -errno : -EIO;
}

int vd_ctl_transaction(struct xs_handle *xs, vd_ctl_txn_fn fn, void *arg, struct vd_err *err)
{
	for (int tries = 0; tries < TXN_MAX_TRIES; tries++) {
		struct vd_err e = { 0 };
		xs_transaction_t t;
		int r;

		t = xs_transaction_start(xs);
		if (t == XBT_NULL) {
			return vd_err_set(err, errno > 0 ? errno : EIO,
					  "xenstore transaction start");
		}
		r = fn(xs, t, arg, &e);
		if (r < 0) {
			xs_transaction_end(xs, t, true);
			if (r == -EAGAIN) {
				continue;
			}
			if (err != NULL && err->errnum == 0) {
				if (e.errnum != 0) {
					*err = e;
				} else {
					vd_err_set(err, -r, "xenstore");
				}
			}
			return r;
		}
		if (xs_transaction_end(xs, t, false)) {
			return 0;
		}
		if (errno != EAGAIN) {
			return vd_err_set(err, errno > 0 ? errno : EIO,
					  "xenstore transaction commit");
		}
		/* Someone else changed what we read: start again after a short pause. */
		usleep(1000u * (unsigned int)(tries < 10 ? tries : 10));
	}
	return vd_err_set(err, EAGAIN, "xenstore transaction kept conflicting");
}

static int xwrite(struct xs_handle *xs, xs_transaction_t t, const char *dir, const char *key,
		  const char *val, struct xs_permissions *perms, unsigned int nperms,
		  struct vd_err *err)
{
	char path[VD_CTL_PATH_MAX];
	int n;

	n = snprintf(path, sizeof(path), "%s/%s", dir, key);
	if (n < 0 || (size_t)n >= sizeof(path)) {
		return vd_err_set(err, ENAMETOOLONG, "xenstore path %s/%s", dir, key);
	}
	if (!xs_write(xs, t, path, val, (unsigned int)strlen(val))) {
		return vd_err_set(err, errno > 0 ? errno : EIO, "writing %s", path);
	}
	if (perms != NULL && !xs_set_permissions(xs, t, path, perms, nperms)) {
		return vd_err_set(err, errno > 0 ? errno : EIO, "setting permissions of %s", path);
	}
	return 0;
}

static int xmkdir_perms(struct xs_handle *xs, xs_transaction_t t, const char *path,
			struct xs_permissions *perms, unsigned int nperms, struct vd_err *err)
{
	if (!xs_mkdir(xs, t, path)) {
		return vd_err_set(err, errno > 0 ? errno : EIO, "creating %s", path);
	}
	if (perms != NULL && !xs_set_permissions(xs, t, path, perms, nperms)) {
		return vd_err_set(err, errno > 0 ? errno : EIO, "setting permissions of %s", path);
	}
	return 0;
}

/* Create path with perms unless it exists already (then leave it alone). */
static int ensure_dir(struct xs_handle *xs, xs_transaction_t t, const char *path,
		      struct xs_permissions *perms, unsigned int nperms, struct vd_err *err)
{
	int r = vd_ctl_xs_exists(xs, t, path);

	if (r < 0) {
		return vd_err_set(err, -r, "reading %s", path);
	}
	if (r > 0) {
		return 0;
	}
	return xmkdir_perms(xs, t, path, perms, nperms, err);
}

char *vd_ctl_xs_read(struct xs_handle *xs, xs_transaction_t t, const char *dir, const char *key,
		     size_t max_len)
{
	char path[VD_CTL_PATH_MAX];
	unsigned int len;
	char *v;
	int n;

	n = snprintf(path, sizeof(path), "%s/%s", dir, key);
	if (n < 0 || (size_t)n >= sizeof(path)) {
		errno = ENAMETOOLONG;
		return NULL;
	}
	errno = 0;
	v = xs_read(xs, t, path, &len);
	if (v == NULL) {
		if (errno == 0) {
			errno = EIO;
		}
		return NULL;
	}
	/* A value may hold NUL bytes: what we use is the C string, checked. */
	if (len > max_len || strlen(v) != len) {
		free(v);
		errno = len > max_len ? E2BIG : EINVAL;
		return NULL;
	}
	return v;
}

static char *xread(struct xs_handle *xs, xs_transaction_t t, const char *dir, const char *key)
{
	return vd_ctl_xs_read(xs, t, dir, key, 4096);
}

/* Read a xenbus state: -ENOENT if absent, -EINVAL if malformed. */
static int read_state(struct xs_handle *xs, xs_transaction_t t, const char *dir, int *state)
{
	char *v = xread(xs, t, dir, "state");
	uint64_t s;
	int r;

	if (v == NULL) {
		return errno == ENOENT ? -ENOENT : -(errno > 0 ? errno : EIO);
	}
	r = vd_ctl_parse_u64(v, 255, &s);
	free(v);
	if (r < 0) {
		return -EINVAL;
	}
	*state = (int)s;
	return 0;
}

struct vbd_paths {
	char dom[VD_CTL_PATH_MAX];       /* /local/domain/DOMID */
	char be_parent[VD_CTL_PATH_MAX]; /* backend/vbd3/DOMID */
	char be[VD_CTL_PATH_MAX];
	char fe_device[VD_CTL_PATH_MAX]; /* /local/domain/DOMID/device */
	char fe_parent[VD_CTL_PATH_MAX]; /* .../device/vbd */
	char fe[VD_CTL_PATH_MAX];
};

static void make_paths(struct vbd_paths *p, uint16_t domid, uint32_t vdev)
{
	/* Bounded inputs: these always fit. */
	snprintf(p->dom, sizeof(p->dom), "/local/domain/%u", domid);
	snprintf(p->be_parent, sizeof(p->be_parent), "%s/%u", VD_CTL_BACKEND_ROOT, domid);
	snprintf(p->be, sizeof(p->be), "%s/%u", p->be_parent, vdev);
	snprintf(p->fe_device, sizeof(p->fe_device), "%s/device", p->dom);
	snprintf(p->fe_parent, sizeof(p->fe_parent), "%s/vbd", p->fe_device);
	snprintf(p->fe, sizeof(p->fe), "%s/%u", p->fe_parent, vdev);
}

struct attach_ctx {
	const struct vd_attach_opts *o;
	struct vbd_paths p;
};

/* The queues' knobs the worker reads at connect (worker.c read_tunable). */
static int write_tunables(struct xs_handle *xs, xs_transaction_t t, const char *be,
			  const struct vd_attach_opts *o, struct xs_permissions *perms,
			  struct vd_err *err)
{
	char buf[24];
	int r;

	if (o->have_polling_us) {
		snprintf(buf, sizeof(buf), "%" PRIu32, o->polling_us);
		if ((r = xwrite(xs, t, be, "polling-duration", buf, perms, 2, err)) < 0) {
			return r;
		}
	}
	if (o->have_poll_idle_pct) {
		snprintf(buf, sizeof(buf), "%" PRIu32, o->poll_idle_pct);
		if ((r = xwrite(xs, t, be, "polling-idle-threshold", buf, perms, 2, err)) < 0) {
			return r;
		}
	}
	if (o->have_zero_copy &&
	    (r = xwrite(xs, t, be, "zero-copy", o->zero_copy ? "1" : "0", perms, 2, err)) < 0) {
		return r;
	}
	if (o->have_io_fixed &&
	    (r = xwrite(xs, t, be, "io-fixed", o->io_fixed ? "1" : "0", perms, 2, err)) < 0) {
		return r;
	}
	return 0;
}

/*
 * The backing-file policy the worker reads (vbd.c read_backing): the
 * directories resolved here, since the worker does not share our cwd.
 */
static int write_backing(struct xs_handle *xs, xs_transaction_t t, const char *be,
			 const struct vd_attach_opts *o, struct xs_permissions *perms,
			 struct vd_err *err)
{
	char val[4096], dir[PATH_MAX];
	size_t used = 0, i;
	int r;

	if (o->no_backing && (r = xwrite(xs, t, be, "no-backing", "1", perms, 2, err)) < 0) {
		return r;
	}
	if (o->n_backing_dirs == 0) {
		return 0;
	}
	for (i = 0; i < o->n_backing_dirs; i++) {
		size_t n;

		if (realpath(o->backing_dirs[i], dir) == NULL) {
			return vd_err_set(err, errno, "backing directory %s", o->backing_dirs[i]);
		}
		n = strlen(dir);
		if (strchr(dir, ':') != NULL || used + n + 2 > sizeof(val)) {
			return vd_err_set(err, EINVAL,
					  "backing directory %s: has a ':' or is too long", dir);
		}
		if (used > 0) {
			val[used++] = ':';
		}
		memcpy(val + used, dir, n + 1);
		used += n;
	}
	return xwrite(xs, t, be, "backing-dirs", val, perms, 2, err);
}

static int attach_txn(struct xs_handle *xs, xs_transaction_t t, void *arg, struct vd_err *err)
{
	struct attach_ctx *c = arg;
	const struct vd_attach_opts *o = c->o;
	struct xs_permissions be_perms[2] = {
		{ .id = 0, .perms = XS_PERM_NONE },
		{ .id = o->domid, .perms = XS_PERM_READ },
	};
	struct xs_permissions fe_perms[2] = {
		{ .id = o->domid, .perms = XS_PERM_NONE },
		{ .id = 0, .perms = XS_PERM_READ },
	};
	char buf[64];
	int r;

	r = vd_ctl_xs_exists(xs, t, c->p.dom);
	if (r < 0) {
		return vd_err_set(err, -r, "reading %s", c->p.dom);
	}
	if (r == 0) {
		return vd_err_set(err, ENOENT, "domain %u does not exist (no %s)", o->domid,
				  c->p.dom);
	}
	r = vd_ctl_xs_exists(xs, t, c->p.be);
	if (r != 0) {
		return r < 0 ? vd_err_set(err, -r, "reading %s", c->p.be)
			     : vd_err_set(err, EEXIST, "VBD %u/%u already exists (%s)", o->domid,
					  o->vdev, c->p.be);
	}
	r = vd_ctl_xs_exists(xs, t, c->p.fe);
	if (r != 0) {
		return r < 0 ? vd_err_set(err, -r, "reading %s", c->p.fe)
			     : vd_err_set(err, EEXIST, "frontend %s already exists", c->p.fe);
	}

	/* Backend side: dom0 owns it, the guest may read it. */
	if ((r = ensure_dir(xs, t, VD_CTL_BACKEND_ROOT, NULL, 0, err)) < 0 ||
	    (r = ensure_dir(xs, t, c->p.be_parent, be_perms, 2, err)) < 0 ||
	    (r = xmkdir_perms(xs, t, c->p.be, be_perms, 2, err)) < 0) {
		return r;
	}
	const char *format = o->format != NULL ? o->format : "raw";
	const char *io = o->io_backend != NULL ? o->io_backend : "uring";
	char vdev_num[16];
	snprintf(vdev_num, sizeof(vdev_num), "%u", o->vdev);
	const char *dev = o->vdev_name != NULL ? o->vdev_name : vdev_num;

	snprintf(buf, sizeof(buf), "%u", o->domid);
	if ((r = xwrite(xs, t, c->p.be, "frontend", c->p.fe, be_perms, 2, err)) < 0 ||
	    (r = xwrite(xs, t, c->p.be, "frontend-id", buf, be_perms, 2, err)) < 0 ||
	    (r = xwrite(xs, t, c->p.be, "online", "1", be_perms, 2, err)) < 0 ||
	    (r = xwrite(xs, t, c->p.be, "state", "1", be_perms, 2, err)) < 0 ||
	    (r = xwrite(xs, t, c->p.be, "params", o->image, be_perms, 2, err)) < 0 ||
	    (r = xwrite(xs, t, c->p.be, "mode", o->readonly ? "r" : "w", be_perms, 2, err)) < 0 ||
	    (r = xwrite(xs, t, c->p.be, "type", format, be_perms, 2, err)) < 0 ||
	    (r = xwrite(xs, t, c->p.be, "dev", dev, be_perms, 2, err)) < 0 ||
	    (r = xwrite(xs, t, c->p.be, "device-type", "disk", be_perms, 2, err)) < 0 ||
	    (r = xwrite(xs, t, c->p.be, "discard-enable", "1", be_perms, 2, err)) < 0 ||
	    (r = xwrite(xs, t, c->p.be, "format", format, be_perms, 2, err)) < 0 ||
	    (r = xwrite(xs, t, c->p.be, "io-backend", io, be_perms, 2, err)) < 0) {
		return r;
	}
	if (o->have_size) {
		snprintf(buf, sizeof(buf), "%" PRIu64, o->size_bytes);
		if ((r = xwrite(xs, t, c->p.be, "size", buf, be_perms, 2, err)) < 0) {
			return r;
		}
	}
	if (o->cache != NULL &&
	    (r = xwrite(xs, t, c->p.be, "cache", o->cache, be_perms, 2, err)) < 0) {
		return r;
	}
	if (o->max_queues != 0) {
		snprintf(buf, sizeof(buf), "%u", o->max_queues);
		if ((r = xwrite(xs, t, c->p.be, "max-queues", buf, be_perms, 2, err)) < 0) {
			return r;
		}
	}
	if (o->l2_cache_bytes != 0) {
		snprintf(buf, sizeof(buf), "%" PRIu64, o->l2_cache_bytes);
		if ((r = xwrite(xs, t, c->p.be, "l2-cache-size", buf, be_perms, 2, err)) < 0) {
			return r;
		}
	}
	if (o->l2_cache_entry_bytes != 0) {
		snprintf(buf, sizeof(buf), "%" PRIu64, o->l2_cache_entry_bytes);
		if ((r = xwrite(xs, t, c->p.be, "l2-cache-entry-size", buf, be_perms, 2, err)) <
		    0) {
			return r;
		}
	}

	if ((r = write_tunables(xs, t, c->p.be, o, be_perms, err)) < 0 ||
	    (r = write_backing(xs, t, c->p.be, o, be_perms, err)) < 0) {
		return r;
	}

	/* Frontend side: the guest owns it, dom0 may read it. */
	if ((r = ensure_dir(xs, t, c->p.fe_device, fe_perms, 2, err)) < 0 ||
	    (r = ensure_dir(xs, t, c->p.fe_parent, fe_perms, 2, err)) < 0 ||
	    (r = xmkdir_perms(xs, t, c->p.fe, fe_perms, 2, err)) < 0 ||
	    (r = xwrite(xs, t, c->p.fe, "backend", c->p.be, fe_perms, 2, err)) < 0 ||
	    (r = xwrite(xs, t, c->p.fe, "backend-id", "0", fe_perms, 2, err)) < 0 ||
	    (r = xwrite(xs, t, c->p.fe, "state", "1", fe_perms, 2, err)) < 0 ||
	    (r = xwrite(xs, t, c->p.fe, "virtual-device", vdev_num, fe_perms, 2, err)) < 0 ||
	    (r = xwrite(xs, t, c->p.fe, "device-type", "disk", fe_perms, 2, err)) < 0) {
		return r;
	}
	return 0;
}

static bool is_memory_backend(const char *io)
{
	return io != NULL && (strcmp(io, "null") == 0 || strcmp(io, "mem") == 0);
}

int vd_ctl_attach(struct xs_handle *xs, const struct vd_attach_opts *o, struct vd_err *err)
{
	struct attach_ctx c = { .o = o };

	if (o->domid == 0 || o->domid > VD_CTL_DOMID_MAX) {
		return vd_err_set(err, EINVAL, "domid %u out of range 1..%u", o->domid,
				  VD_CTL_DOMID_MAX);
	}
	if (o->vdev > VD_CTL_DEVID_MAX) {
		return vd_err_set(err, EINVAL, "vdev %u out of range", o->vdev);
	}
	if (o->image == NULL || o->image[0] == '\0' || strlen(o->image) > 1024) {
		return vd_err_set(err, EINVAL, "image path empty or too long");
	}
	if (o->io_backend != NULL && strcmp(o->io_backend, "uring") != 0 &&
	    strcmp(o->io_backend, "sync") != 0 && !is_memory_backend(o->io_backend)) {
		return vd_err_set(err, EINVAL, "unknown io backend '%s' (uring, sync, null, mem)",
				  o->io_backend);
	}
	if (o->cache != NULL && strcmp(o->cache, "direct") != 0 &&
	    strcmp(o->cache, "writeback") != 0) {
		return vd_err_set(err, EINVAL, "unknown cache mode '%s' (direct, writeback)",
				  o->cache);
	}
	if (o->have_polling_us && o->polling_us > VD_CTL_POLL_US_MAX) {
		return vd_err_set(err, EINVAL, "polling-duration %u us above %u", o->polling_us,
				  VD_CTL_POLL_US_MAX);
	}
	if (o->have_poll_idle_pct && o->poll_idle_pct > 100) {
		return vd_err_set(err, EINVAL, "polling-idle-threshold %u%% above 100",
				  o->poll_idle_pct);
	}
	if (o->max_queues > 16) {
		return vd_err_set(err, EINVAL, "max-queues %u above 16", o->max_queues);
	}
	if (o->vdev_name != NULL && strlen(o->vdev_name) > 32) {
		return vd_err_set(err, EINVAL, "vdev name too long");
	}
	if (o->check_image && !is_memory_backend(o->io_backend) &&
	    access(o->image, o->readonly ? R_OK : R_OK | W_OK) != 0) {
		return vd_err_set(err, errno, "%s", o->image);
	}
	make_paths(&c.p, o->domid, o->vdev);
	return vd_ctl_transaction(xs, attach_txn, &c, err);
}

/*
 * 1 while the backend has not decided, 0 once it serves (state InitWait or
 * later: the worker opened and locked the image), -EIO with its
 * vdisk-error once it refused.
 */
static int backend_answer(struct xs_handle *xs, const char *be, struct vd_err *err)
{
	char *why = vd_ctl_xs_read(xs, XBT_NULL, be, "vdisk-error", 1024);
	int state = -1, r;

	if (why != NULL) {
		/* the worker's message already ends with its strerror */
		if (err != NULL && err->errnum == 0) {
			err->errnum = EIO;
			snprintf(err->msg, sizeof(err->msg), "the backend refused %s: %s", be, why);
		}
		free(why);
		return -EIO;
	}
	r = read_state(xs, XBT_NULL, be, &state);
	if (r == -ENOENT) {
		return vd_err_set(err, ENOENT, "%s went away while attaching", be);
	}
	if (r < 0 && r != -EINVAL) {
		return vd_err_set(err, -r, "reading %s/state", be);
	}
	return state >= XenbusStateInitWait && state <= XenbusStateConnected ? 0 : 1;
}

int vd_ctl_attach_wait(struct xs_handle *xs, uint16_t domid, uint32_t vdev, unsigned int timeout_ms,
		       struct vd_err *err)
{
	uint64_t deadline = vd_now_ns() + (uint64_t)timeout_ms * 1000000ull;
	struct vbd_paths p = { 0 };
	int fd = xs_fileno(xs);
	int r;

	make_paths(&p, domid, vdev);
	if (fd < 0) {
		return vd_err_set(err, errno > 0 ? errno : EIO, "xenstore watch fd");
	}
	if (!xs_watch(xs, p.be, ATTACH_TOKEN)) {
		return vd_err_set(err, errno > 0 ? errno : EIO, "watching %s", p.be);
	}
	for (;;) {
		struct pollfd pfd = { .fd = fd, .events = POLLIN };
		uint64_t now, left_ms;
		char **ev;

		while ((ev = xs_check_watch(xs)) != NULL) {
			free(ev);
		}
		r = backend_answer(xs, p.be, err);
		if (r <= 0) {
			break;
		}
		now = vd_now_ns();
		if (now >= deadline) {
			break; /* r == 1: nobody answered */
		}
		left_ms = (deadline - now + 999999) / 1000000;
		if (poll(&pfd, 1, (int)VD_MIN(left_ms, 1000000u)) < 0 && errno != EINTR) {
			r = vd_err_set(err, errno, "poll");
			break;
		}
	}
	xs_unwatch(xs, p.be, ATTACH_TOKEN);
	return r;
}

/* ---- detach ---- */

struct detach_ctx {
	struct vbd_paths p;
	uint16_t domid;
	uint32_t vdev;
	bool need_wait; /* out of txn 1: a backend may be serving it */
};

static int detach_begin_txn(struct xs_handle *xs, xs_transaction_t t, void *arg, struct vd_err *err)
{
	struct detach_ctx *c = arg;
	int be, fe, state = -1, r;

	c->need_wait = false;
	be = vd_ctl_xs_exists(xs, t, c->p.be);
	if (be < 0) {
		return vd_err_set(err, -be, "reading %s", c->p.be);
	}
	fe = vd_ctl_xs_exists(xs, t, c->p.fe);
	if (fe < 0) {
		return vd_err_set(err, -fe, "reading %s", c->p.fe);
	}
	if (!be) {
		if (!fe) {
			return vd_err_set(err, ENOENT, "no VBD %u/%u", c->domid, c->vdev);
		}
		return 0; /* a stale frontend: just remove it */
	}
	r = read_state(xs, t, c->p.be, &state);
	if (r < 0 && r != -ENOENT && r != -EINVAL) {
		return vd_err_set(err, -r, "reading %s/state", c->p.be);
	}
	if ((r = xwrite(xs, t, c->p.be, "online", "0", NULL, 0, err)) < 0) {
		return r;
	}
	/*
	 * Initialising (or no state): no backend ever took it, nothing is
	 * mapped. Closed: already done. Otherwise ask it to close and wait.
	 */
	if (state >= XenbusStateInitWait && state <= XenbusStateClosing) {
		char s[8];

		snprintf(s, sizeof(s), "%d", XenbusStateClosing);
		if ((r = xwrite(xs, t, c->p.be, "state", s, NULL, 0, err)) < 0) {
			return r;
		}
		c->need_wait = true;
	}
	return 0;
}

static int detach_remove_txn(struct xs_handle *xs, xs_transaction_t t, void *arg,
			     struct vd_err *err)
{
	struct detach_ctx *c = arg;
	unsigned int n = 0;
	char **d;

	if (!xs_rm(xs, t, c->p.be) && errno != ENOENT) {
		return vd_err_set(err, errno > 0 ? errno : EIO, "removing %s", c->p.be);
	}
	if (!xs_rm(xs, t, c->p.fe) && errno != ENOENT) {
		return vd_err_set(err, errno > 0 ? errno : EIO, "removing %s", c->p.fe);
	}
	/* Tidy up backend/vbd3/DOMID when it held the last VBD of the domain. */
	d = xs_directory(xs, t, c->p.be_parent, &n);
	if (d != NULL) {
		free(d);
		if (n == 0 && !xs_rm(xs, t, c->p.be_parent) && errno != ENOENT) {
			return vd_err_set(err, errno > 0 ? errno : EIO, "removing %s",
					  c->p.be_parent);
		}
	}
	return 0;
}

/* 1: the backend is Closed or gone; 0: not yet; -errno on xenstore errors. */
static int backend_done(struct xs_handle *xs, const char *be)
{
	int state = -1, r;

	r = vd_ctl_xs_exists(xs, XBT_NULL, be);
	if (r <= 0) {
		return r == 0 ? 1 : r;
	}
	r = read_state(xs, XBT_NULL, be, &state);
	if (r == -ENOENT || r == -EINVAL) {
		return 0;
	}
	if (r < 0) {
		return r;
	}
	return state == XenbusStateClosed;
}

static int wait_closed(struct xs_handle *xs, const char *be, unsigned int timeout_ms,
		       struct vd_err *err)
{
	uint64_t deadline = vd_now_ns() + (uint64_t)timeout_ms * 1000000ull;
	int fd = xs_fileno(xs);
	int r;

	if (fd < 0) {
		return vd_err_set(err, errno > 0 ? errno : EIO, "xenstore watch fd");
	}
	if (!xs_watch(xs, be, DETACH_TOKEN)) {
		return vd_err_set(err, errno > 0 ? errno : EIO, "watching %s", be);
	}
	for (;;) {
		char **ev;

		while ((ev = xs_check_watch(xs)) != NULL) {
			free(ev);
		}
		r = backend_done(xs, be);
		if (r != 0) {
			break;
		}
		uint64_t now = vd_now_ns();
		if (now >= deadline) {
			r = vd_err_set(err, ETIMEDOUT, "backend %s did not close within %u ms", be,
				       timeout_ms);
			break;
		}
		uint64_t left_ms = (deadline - now + 999999) / 1000000;
		struct pollfd pfd = { .fd = fd, .events = POLLIN };
		if (poll(&pfd, 1, (int)VD_MIN(left_ms, 1000000u)) < 0 && errno != EINTR) {
			r = vd_err_set(err, errno, "poll");
			break;
		}
	}
	xs_unwatch(xs, be, DETACH_TOKEN);
	if (r < 0 && err != NULL && err->errnum == 0) {
		vd_err_set(err, -r, "reading %s", be);
	}
	return r < 0 ? r : 0;
}

int vd_ctl_detach(struct xs_handle *xs, uint16_t domid, uint32_t vdev, unsigned int timeout_ms,
		  bool force, struct vd_err *err)
{
	struct detach_ctx c = { .domid = domid, .vdev = vdev };
	int r;

	if (domid == 0 || domid > VD_CTL_DOMID_MAX || vdev > VD_CTL_DEVID_MAX) {
		return vd_err_set(err, EINVAL, "VBD %u/%u out of range", domid, vdev);
	}
	make_paths(&c.p, domid, vdev);
	r = vd_ctl_transaction(xs, detach_begin_txn, &c, err);
	if (r < 0) {
		return r;
	}
	if (c.need_wait) {
		struct vd_err werr = { 0 };

		r = wait_closed(xs, c.p.be, timeout_ms, &werr);
		if (r < 0) {
			if (!force) {
				if (err != NULL && err->errnum == 0) {
					*err = werr;
				}
				return r;
			}
			vd_log(VD_LOG_WARN, "%s; removing it anyway (--force)", vd_err_msg(&werr));
		}
	}
	return vd_ctl_transaction(xs, detach_remove_txn, &c, err);
}

/* ---- list ---- */

struct list_ent {
	uint16_t domid;
	uint32_t vdev;
	int state;    /* -1: absent or malformed */
	char *params; /* NULL: absent */
	char *error;  /* vdisk-error, NULL: absent */
};

static int ent_cmp(const void *a, const void *b)
{
	const struct list_ent *x = a, *y = b;

	if (x->domid != y->domid) {
		return x->domid < y->domid ? -1 : 1;
	}
	return x->vdev < y->vdev ? -1 : x->vdev > y->vdev;
}

static int collect(struct xs_handle *xs, struct list_ent **out, size_t *nout, struct vd_err *err)
{
	struct list_ent *ents = NULL;
	size_t n = 0, cap = 0;
	unsigned int nd = 0;
	char **doms;
	int r = 0;

	doms = xs_directory(xs, XBT_NULL, VD_CTL_BACKEND_ROOT, &nd);
	if (doms == NULL) {
		if (errno == ENOENT) {
			*out = NULL;
			*nout = 0;
			return 0;
		}
		return vd_err_set(err, errno > 0 ? errno : EIO, "listing %s", VD_CTL_BACKEND_ROOT);
	}
	for (unsigned int i = 0; i < nd && r == 0; i++) {
		char dpath[VD_CTL_PATH_MAX];
		unsigned int nv = 0;
		char **devs;
		uint16_t domid;
		uint32_t vdev;

		if (vd_ctl_parse_vbd_names(doms[i], "0", &domid, &vdev) < 0) {
			continue;
		}
		snprintf(dpath, sizeof(dpath), "%s/%s", VD_CTL_BACKEND_ROOT, doms[i]);
		devs = xs_directory(xs, XBT_NULL, dpath, &nv);
		if (devs == NULL) {
			continue; /* removed meanwhile */
		}
		for (unsigned int j = 0; j < nv; j++) {
			char be[VD_CTL_PATH_MAX];

			if (vd_ctl_parse_vbd_names(doms[i], devs[j], &domid, &vdev) < 0) {
				continue;
			}
			if (n == VD_CTL_MAX_VBDS) {
				r = vd_err_set(err, E2BIG, "more than %d VBDs", VD_CTL_MAX_VBDS);
				break;
			}
			if (n == cap) {
				size_t ncap = cap ? cap * 2 : 16;
				struct list_ent *ne = realloc(ents, ncap * sizeof(*ne));
				if (ne == NULL) {
					r = vd_err_set(err, ENOMEM, "listing VBDs");
					break;
				}
				ents = ne;
				cap = ncap;
			}
			snprintf(be, sizeof(be), "%s/%u", dpath, vdev);
			struct list_ent *e = &ents[n++];
			e->domid = domid;
			e->vdev = vdev;
			if (read_state(xs, XBT_NULL, be, &e->state) < 0) {
				e->state = -1;
			}
			e->params = xread(xs, XBT_NULL, be, "params");
			e->error = xread(xs, XBT_NULL, be, "vdisk-error");
		}
		free(devs);
	}
	free(doms);
	if (r < 0) {
		for (size_t k = 0; k < n; k++) {
			free(ents[k].params);
			free(ents[k].error);
		}
		free(ents);
		return r;
	}
	if (n > 1) {
		qsort(ents, n, sizeof(*ents), ent_cmp);
	}
	*out = ents;
	*nout = n;
	return 0;
}

int vd_ctl_list(struct xs_handle *xs, FILE *out, bool json, struct vd_err *err)
{
	struct list_ent *ents = NULL;
	size_t n = 0;
	int r;

	r = collect(xs, &ents, &n, err);
	if (r < 0) {
		return r;
	}
	if (json) {
		(void)fputc('[', out);
		for (size_t i = 0; i < n; i++) {
			fprintf(out, "%s\n  {\"domid\": %u, \"vdev\": %u, \"state\": %d, ",
				i ? "," : "", ents[i].domid, ents[i].vdev, ents[i].state);
			(void)fputs("\"state_name\": ", out);
			vd_ctl_json_string(
				out, ents[i].state < 0 ? "-" : vd_ctl_state_name(ents[i].state));
			(void)fputs(", \"params\": ", out);
			if (ents[i].params != NULL) {
				vd_ctl_json_string(out, ents[i].params);
			} else {
				(void)fputs("null", out);
			}
			(void)fputs(", \"error\": ", out);
			if (ents[i].error != NULL) {
				vd_ctl_json_string(out, ents[i].error);
			} else {
				(void)fputs("null", out);
			}
			(void)fputc('}', out);
		}
		(void)fputs(n ? "\n]\n" : "]\n", out);
	} else {
		fprintf(out, "%-6s %-10s %-14s %s\n", "DOMID", "VDEV", "STATE", "PARAMS");
		for (size_t i = 0; i < n; i++) {
			char st[24];

			if (ents[i].state < 0) {
				snprintf(st, sizeof(st), "-");
			} else {
				snprintf(st, sizeof(st), "%d:%s", ents[i].state,
					 vd_ctl_state_name(ents[i].state));
			}
			fprintf(out, "%-6u %-10u %-14s %s%s%s\n", ents[i].domid, ents[i].vdev, st,
				ents[i].params != NULL ? ents[i].params : "-",
				ents[i].error != NULL ? "  error: " : "",
				ents[i].error != NULL ? ents[i].error : "");
		}
	}
	for (size_t i = 0; i < n; i++) {
		free(ents[i].params);
		free(ents[i].error);
	}
	free(ents);
	return 0;
}

/* ---- shared with the daemon and the worker ---- */

struct report_ctx {
	const char *be;
	const char *why;
};

static int report_txn(struct xs_handle *xs, xs_transaction_t t, void *arg, struct vd_err *err)
{
	struct report_ctx *c = arg;
	char s[8];
	int r;

	r = vd_ctl_xs_exists(xs, t, c->be);
	if (r <= 0) {
		return r == 0 ? -ENOENT : r;
	}
	snprintf(s, sizeof(s), "%d", XenbusStateClosing);
	if ((r = xwrite(xs, t, c->be, "vdisk-error", c->why, NULL, 0, err)) < 0 ||
	    (r = xwrite(xs, t, c->be, "state", s, NULL, 0, err)) < 0) {
		return r;
	}
	return 0;
}

int vd_ctl_report_error(struct xs_handle *xs, const char *be_path, const char *why)
{
	struct report_ctx c = { .be = be_path, .why = why };

	return vd_ctl_transaction(xs, report_txn, &c, NULL);
}

static int closed_txn(struct xs_handle *xs, xs_transaction_t t, void *arg, struct vd_err *err)
{
	const char *be = arg;
	char s[8];
	int r;

	r = vd_ctl_xs_exists(xs, t, be);
	if (r <= 0) {
		return r == 0 ? -ENOENT : r;
	}
	snprintf(s, sizeof(s), "%d", XenbusStateClosed);
	return xwrite(xs, t, be, "state", s, NULL, 0, err);
}

int vd_ctl_mark_closed(struct xs_handle *xs, const char *be_path)
{
	return vd_ctl_transaction(xs, closed_txn, (void *)be_path, NULL);
}
