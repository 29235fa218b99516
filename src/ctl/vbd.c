/*
 * One VBD's configuration: the backend keys the toolstack wrote, checked
 * (they come from xenstore, so they are untrusted), and what we offer the
 * frontend as a result.
 */
#include "ctl/ctl-int.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define VALUE_MAX 4096

/* An optional key: 0 with *out = NULL if absent, -errno on other errors. */
static int read_opt(struct xs_handle *xs, const char *be, const char *key, size_t max_len,
		    char **out, struct vd_err *err)
{
	*out = vd_ctl_xs_read(xs, XBT_NULL, be, key, max_len);
	if (*out != NULL) {
		return 0;
	}
	if (errno == ENOENT) {
		return 0;
	}
	return vd_err_set(err, errno, "%s/%s", be, key);
}

static int read_opt_uint(struct xs_handle *xs, const char *be, const char *key, uint64_t max,
			 bool *present, uint64_t *out, struct vd_err *err)
{
	char *v;
	int r;

	r = read_opt(xs, be, key, 32, &v, err);
	if (r < 0) {
		return r;
	}
	*present = v != NULL;
	if (v == NULL) {
		return 0;
	}
	r = vd_ctl_parse_u64(v, max, out);
	if (r < 0) {
		r = vd_err_set(err, EINVAL, "%s/%s: '%.32s' is not a number <= %llu", be, key, v,
			       (unsigned long long)max);
	}
	free(v);
	return r;
}

static bool one_of(const char *v, const char *const *names)
{
	for (; *names != NULL; names++) {
		if (strcmp(v, *names) == 0) {
			return true;
		}
	}
	return false;
}

#define MAX_BACKING_DIRS 32

int vd_vbd_conf_add_backing_dirs(struct vd_vbd_conf *c, const char *const *dirs, size_t n,
				 struct vd_err *err)
{
	char **a;
	size_t i;

	if (n == 0) {
		return 0;
	}
	if (c->n_backing_dirs + n > MAX_BACKING_DIRS) {
		return vd_err_set(err, E2BIG, "more than %d backing directories", MAX_BACKING_DIRS);
	}
	a = realloc(c->backing_dirs, sizeof(*a) * (c->n_backing_dirs + n));
	if (a == NULL) {
		return vd_err_set(err, ENOMEM, "out of memory");
	}
	c->backing_dirs = a;
	for (i = 0; i < n; i++) {
		a[c->n_backing_dirs] = strdup(dirs[i]);
		if (a[c->n_backing_dirs] == NULL) {
			return vd_err_set(err, ENOMEM, "out of memory");
		}
		c->n_backing_dirs++;
	}
	return 0;
}

/* "backing-dirs" (DIR[:DIR...], each absolute) and "no-backing" (0|1). */
static int read_backing(struct xs_handle *xs, const char *be, struct vd_vbd_conf *c,
			struct vd_err *err)
{
	char *dirs, *p, *next;
	uint64_t v;
	bool present;
	int r;

	r = read_opt_uint(xs, be, "no-backing", 1, &present, &v, err);
	if (r < 0) {
		return r;
	}
	c->no_backing = present && v != 0;
	r = read_opt(xs, be, "backing-dirs", VALUE_MAX, &dirs, err);
	if (r < 0 || dirs == NULL) {
		return r;
	}
	for (p = dirs; p != NULL && r >= 0; p = next) {
		const char *one = p;

		next = strchr(p, ':');
		if (next != NULL) {
			*next++ = '\0';
		}
		if (one[0] != '/') {
			r = vd_err_set(err, EINVAL,
				       "%s/backing-dirs: '%.64s' is not an absolute path", be, one);
			break;
		}
		r = vd_vbd_conf_add_backing_dirs(c, &one, 1, err);
	}
	free(dirs);
	return r;
}

int vd_vbd_conf_read(struct xs_handle *xs, const char *be, uint16_t domid, struct vd_vbd_conf *c,
		     struct vd_err *err)
{
	static const char *const io_names[] = { "uring", "sync", "null", "mem", NULL };
	char *mode = NULL, *cache = NULL;
	uint64_t v;
	bool present;
	int r;

	memset(c, 0, sizeof(*c));
	c->max_queues = VD_CTL_DEFAULT_QUEUES;
	c->discard_enable = true;
	c->cache = VD_CACHE_DIRECT;

	r = read_opt_uint(xs, be, "frontend-id", VD_CTL_DOMID_MAX, &present, &v, err);
	if (r < 0) {
		goto err;
	}
	if (!present) {
		r = vd_err_set(err, ENOENT, "%s/frontend-id missing", be);
		goto err;
	}
	if (v != domid) {
		r = vd_err_set(err, EINVAL, "%s/frontend-id is %llu, the path says domain %u", be,
			       (unsigned long long)v, domid);
		goto err;
	}
	c->frontend_id = domid;

	if ((r = read_opt(xs, be, "params", VALUE_MAX, &c->params, err)) < 0) {
		goto err;
	}
	if (c->params == NULL || c->params[0] == '\0') {
		r = vd_err_set(err, ENOENT, "%s/params missing or empty", be);
		goto err;
	}

	if ((r = read_opt(xs, be, "mode", 8, &mode, err)) < 0) {
		goto err;
	}
	if (mode == NULL || strcmp(mode, "w") == 0 || strcmp(mode, "rw") == 0) {
		c->readonly = false;
	} else if (strcmp(mode, "r") == 0 || strcmp(mode, "ro") == 0) {
		c->readonly = true;
	} else {
		r = vd_err_set(err, EINVAL, "%s/mode '%s' is not r or w", be, mode);
		goto err;
	}

	if ((r = read_opt(xs, be, "format", 32, &c->format, err)) < 0) {
		goto err;
	}
	if (c->format != NULL && (c->format[0] == '\0' || strcmp(c->format, "auto") == 0)) {
		free(c->format);
		c->format = NULL;
	}

	if ((r = read_opt(xs, be, "io-backend", 16, &c->io_backend, err)) < 0) {
		goto err;
	}
	if (c->io_backend != NULL && !one_of(c->io_backend, io_names)) {
		r = vd_err_set(err, EINVAL, "%s/io-backend '%s' unknown", be, c->io_backend);
		goto err;
	}

	if ((r = read_opt(xs, be, "cache", 16, &cache, err)) < 0) {
		goto err;
	}
	if (cache != NULL) {
		if (strcmp(cache, "direct") == 0) {
			c->cache = VD_CACHE_DIRECT;
		} else if (strcmp(cache, "writeback") == 0) {
			c->cache = VD_CACHE_WRITEBACK;
		} else {
			r = vd_err_set(err, EINVAL, "%s/cache '%s' unknown", be, cache);
			goto err;
		}
	}

	r = read_opt_uint(xs, be, "size", UINT64_MAX, &present, &c->size_bytes, err);
	if (r < 0) {
		goto err;
	}
	r = read_opt_uint(xs, be, "max-queues", VD_BLKIF_MAX_QUEUES, &present, &v, err);
	if (r < 0) {
		goto err;
	}
	if (present) {
		if (v == 0) {
			r = vd_err_set(err, EINVAL, "%s/max-queues is 0", be);
			goto err;
		}
		c->max_queues = (unsigned int)v;
	}
	/* The driver checks the values against the image (QEMU's rules). */
	r = read_opt_uint(xs, be, "l2-cache-size", UINT64_MAX, &present, &c->l2_cache_bytes, err);
	if (r < 0) {
		goto err;
	}
	r = read_opt_uint(xs, be, "l2-cache-entry-size", UINT32_MAX, &present,
			  &c->l2_cache_entry_bytes, err);
	if (r < 0) {
		goto err;
	}
	r = read_opt_uint(xs, be, "discard-enable", 1, &present, &v, err);
	if (r < 0) {
		goto err;
	}
	if (present) {
		c->discard_enable = v != 0;
	}
	r = read_backing(xs, be, c, err);
	if (r < 0) {
		goto err;
	}
	free(mode);
	free(cache);
	return 0;
err:
	free(mode);
	free(cache);
	vd_vbd_conf_fini(c);
	return r;
}

void vd_vbd_conf_fini(struct vd_vbd_conf *c)
{
	free(c->params);
	free(c->format);
	free(c->io_backend);
	c->params = c->format = c->io_backend = NULL;
	for (size_t i = 0; i < c->n_backing_dirs; i++) {
		free(c->backing_dirs[i]);
	}
	free(c->backing_dirs);
	c->backing_dirs = NULL;
	c->n_backing_dirs = 0;
}

void vd_vbd_image_opts(const struct vd_vbd_conf *c, struct vd_image_opts *o)
{
	memset(o, 0, sizeof(*o));
	o->format = c->format;
	o->io_backend = c->io_backend;
	o->readonly = c->readonly;
	o->cache = c->cache;
	o->size_bytes = c->size_bytes;
	o->l2_cache_bytes = c->l2_cache_bytes;
	o->l2_cache_entry_bytes = c->l2_cache_entry_bytes;
	o->backing.none = c->no_backing;
	o->backing.dirs = (const char *const *)c->backing_dirs;
	o->backing.n_dirs = c->n_backing_dirs;
}

void vd_vbd_make_caps(const struct vd_vbd_conf *c, const struct vd_image_info *info,
		      struct vd_blkif_caps *caps)
{
	memset(caps, 0, sizeof(*caps));
	caps->size_bytes = info->size_bytes;
	caps->sector_bytes = info->sector_bytes != 0 ? info->sector_bytes : VD_SECTOR_SIZE;
	caps->physical_sector_bytes = info->physical_sector_bytes >= caps->sector_bytes
					      ? info->physical_sector_bytes
					      : caps->sector_bytes;
	caps->readonly = c->readonly || info->readonly;
	caps->flush = true;
	caps->barrier = true;
	caps->discard = info->discard && c->discard_enable && !caps->readonly;
	if (caps->discard) {
		caps->discard_granularity_bytes = info->discard_granularity_bytes != 0
							  ? info->discard_granularity_bytes
							  : caps->sector_bytes;
		caps->discard_alignment_bytes = info->discard_alignment_bytes;
	}
	caps->discard_secure = false;
	caps->persistent = true; /* the queue maps them if the frontend agrees */
	caps->max_queues = VD_MIN(VD_MAX(c->max_queues, 1u), (unsigned int)VD_BLKIF_MAX_QUEUES);
	caps->max_ring_page_order = VD_BLKIF_MAX_RING_PAGE_ORDER;
	caps->max_indirect_segs = VD_BLKIF_MAX_INDIRECT_SEGS;
}

void vd_vbd_make_limits(const struct vd_blkif_caps *caps, struct vd_blkif_limits *lim)
{
	memset(lim, 0, sizeof(*lim));
	lim->size_bytes = caps->size_bytes;
	lim->sector_bytes = caps->sector_bytes;
	lim->readonly = caps->readonly;
	lim->flush = caps->flush;
	lim->barrier = caps->barrier;
	lim->discard = caps->discard;
	lim->discard_secure = caps->discard_secure;
	lim->max_indirect_segs = (uint16_t)caps->max_indirect_segs;
}
