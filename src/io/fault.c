/*
 * fault: a wrapper backend that models power cuts and I/O errors (fault.h).
 *
 * Write-through with per-sector undo data: the inner file always holds the
 * newest data, so reads need no overlay lookup; a power cut writes back
 * the saved old content of the sectors it "loses". Requests run
 * synchronously on the submitting thread (a test tool, not a datapath).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/compiler.h"
#include "common/log.h"
#include "io/fault.h"
#include "io/io-int.h"

#define SECTOR 512u

struct fault_state {
	pthread_mutex_t lock;
	struct vd_file *inner;
	char *inner_path;
	bool dead;      /* power was cut: everything fails */
	bool real_sync; /* $VD_FAULT_SYNC=1: FLUSH also fdatasyncs the inner file */
	uint64_t limit_bytes;
	uint64_t full_bytes; /* disk full past this file size (0: never) */
	/* undo data: sector numbers, their old content, and an index */
	uint64_t *sec;
	unsigned char *old;
	size_t n, cap;
	uint64_t *tab_key; /* sector + 1; 0 = empty */
	uint32_t *tab_idx;
	size_t tab_cap;            /* power of two or 0 */
	uint64_t epoch_size_bytes; /* inner size when the first unflushed write came */
	/* injected errors: countdown per op kind, 0 = disarmed */
	uint64_t eio_in[3];
	struct fault_state *next; /* registry */
	struct vd_file *self;
};

static pthread_mutex_t g_reg_lock = PTHREAD_MUTEX_INITIALIZER;
static struct fault_state *g_reg;

static struct fault_state *st(const struct vd_file *f)
{
	return (struct fault_state *)(void *)f->state;
}

static uint64_t hash64(uint64_t x)
{
	x ^= x >> 33;
	x *= 0xff51afd7ed558ccdull;
	x ^= x >> 33;
	x *= 0xc4ceb9fe1a85ec53ull;
	x ^= x >> 33;
	return x;
}

static uint64_t str_hash(const char *p)
{
	uint64_t h = 1469598103934665603ull; /* FNV-1a */

	while (*p) {
		h = (h ^ (unsigned char)*p++) * 1099511628211ull;
	}
	return h;
}

static uint64_t splitmix(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ull);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

/* ---- inner file access (synchronous) ---- */

static int64_t inner_size(struct fault_state *s)
{
	struct stat sb;

	if (s->inner->fd >= 0 && !s->inner->info.is_blockdev) {
		if (fstat(s->inner->fd, &sb) < 0) {
			return -errno;
		}
		return (int64_t)sb.st_size;
	}
	return (int64_t)s->inner->info.size_bytes;
}

static int64_t inner_rw(struct fault_state *s, enum vd_io_op op, void *buf, uint64_t len,
			uint64_t off)
{
	struct vd_file *in = s->inner;
	uint64_t done = 0;

	if (in->fd < 0) {
		return vd_file_rw_sync(in, op, buf, len, off);
	}
	switch (op) {
	case VD_IO_FLUSH:
		/* durability is modelled here; the real disk matters only on request */
		if (!s->real_sync) {
			return 0;
		}
		return fdatasync(in->fd) < 0 ? -errno : 0;
	case VD_IO_DISCARD:
	case VD_IO_WRITE_ZEROES:
		if (in->info.is_blockdev) {
			return vd_fd_blkdev_range(in, op, off, len);
		}
		if (fallocate(in->fd, vd_fd_falloc_mode(op, 0), (off_t)off, (off_t)len) == 0) {
			return 0;
		}
		if (op == VD_IO_WRITE_ZEROES &&
		    fallocate(in->fd, vd_fd_falloc_mode(op, 1), (off_t)off, (off_t)len) == 0) {
			return 0;
		}
		return -errno;
	default:
		break;
	}
	while (done < len) {
		ssize_t n = op == VD_IO_READ ? pread(in->fd, (char *)buf + done, len - done,
						     (off_t)(off + done))
					     : pwrite(in->fd, (char *)buf + done, len - done,
						      (off_t)(off + done));

		if (n < 0) {
			if (errno == EINTR) {
				continue;
			}
			return -errno;
		}
		if (n == 0) {
			if (op == VD_IO_WRITE) {
				return -EIO;
			}
			memset((char *)buf + done, 0, len - done);
			break;
		}
		done += (uint64_t)n;
	}
	return (int64_t)len;
}

/* ---- undo map ---- */

static size_t tab_find(const struct fault_state *s, uint64_t sector)
{
	size_t mask = s->tab_cap - 1, i = (size_t)hash64(sector) & mask;

	while (s->tab_key[i] != 0 && s->tab_key[i] != sector + 1) {
		i = (i + 1) & mask;
	}
	return i;
}

static bool undo_has(const struct fault_state *s, uint64_t sector)
{
	return s->tab_cap && s->tab_key[tab_find(s, sector)] != 0;
}

static int tab_grow(struct fault_state *s)
{
	size_t ncap = s->tab_cap ? s->tab_cap * 2 : 1024, i;
	uint64_t *okey = s->tab_key;
	uint32_t *oidx = s->tab_idx;
	size_t ocap = s->tab_cap;

	s->tab_key = calloc(ncap, sizeof(*s->tab_key));
	s->tab_idx = calloc(ncap, sizeof(*s->tab_idx));
	if (!s->tab_key || !s->tab_idx) {
		free(s->tab_key);
		free(s->tab_idx);
		s->tab_key = okey;
		s->tab_idx = oidx;
		return -ENOMEM;
	}
	s->tab_cap = ncap;
	for (i = 0; i < ocap; i++) {
		if (okey[i]) {
			size_t j = tab_find(s, okey[i] - 1);

			s->tab_key[j] = okey[i];
			s->tab_idx[j] = oidx[i];
		}
	}
	free(okey);
	free(oidx);
	return 0;
}

static int undo_reserve(struct fault_state *s, size_t want)
{
	if (want > s->cap) {
		size_t ncap = VD_MAX(want, s->cap ? s->cap * 2 : 256);
		uint64_t *nsec = realloc(s->sec, ncap * sizeof(*nsec));
		unsigned char *nold;

		if (!nsec) {
			return -ENOMEM;
		}
		s->sec = nsec;
		nold = realloc(s->old, ncap * SECTOR);
		if (!nold) {
			return -ENOMEM;
		}
		s->old = nold;
		s->cap = ncap;
	}
	while (want * 2 > s->tab_cap) {
		int ret = tab_grow(s);

		if (ret < 0) {
			return ret;
		}
	}
	return 0;
}

static void undo_clear(struct fault_state *s)
{
	s->n = 0;
	if (s->tab_cap) {
		memset(s->tab_key, 0, s->tab_cap * sizeof(*s->tab_key));
	}
}

/* Save the old content of every sector of [off, off+len) not saved yet. */
static int save_undo(struct fault_state *s, uint64_t off, uint64_t len)
{
	uint64_t first = off / SECTOR, last = (off + len - 1) / SECTOR, sector, missing = 0;
	int ret;

	for (sector = first; sector <= last; sector++) {
		missing += !undo_has(s, sector);
	}
	if (missing == 0) {
		return 0;
	}
	if ((s->n + missing) * SECTOR > s->limit_bytes || s->n + missing > UINT32_MAX) {
		return -ENOSPC;
	}
	if (s->n == 0) {
		int64_t sz = inner_size(s);

		if (sz < 0) {
			return (int)sz;
		}
		s->epoch_size_bytes = (uint64_t)sz;
	}
	ret = undo_reserve(s, s->n + missing);
	if (ret < 0) {
		return ret;
	}
	sector = first;
	while (sector <= last) {
		uint64_t run = 0, k;
		int64_t got;

		/* a run of sectors without undo data, read in one go */
		while (sector + run <= last && run < 2048 && !undo_has(s, sector + run)) {
			run++;
		}
		if (run == 0) {
			sector++;
			continue;
		}
		if (sector * SECTOR >= s->epoch_size_bytes) {
			memset(s->old + s->n * SECTOR, 0, run * SECTOR);
		} else {
			got = inner_rw(s, VD_IO_READ, s->old + s->n * SECTOR, run * SECTOR,
				       sector * SECTOR);
			if (got < 0) {
				return (int)got;
			}
		}
		for (k = 0; k < run; k++) {
			size_t slot = tab_find(s, sector + k);

			s->sec[s->n] = sector + k;
			s->tab_key[slot] = sector + k + 1;
			s->tab_idx[slot] = (uint32_t)s->n;
			s->n++;
		}
		sector += run;
	}
	return 0;
}

/* ---- the backend ---- */

static int fault_open(struct vd_file *f, const char *path, const struct vd_file_opts *o,
		      struct vd_err *err)
{
	struct fault_state *s = st(f);
	struct vd_file_opts io = *o;
	const char *inner = getenv("VD_FAULT_INNER");
	const char *colon = path ? strchr(path, ':') : NULL;
	const char *limit = getenv("VD_FAULT_LIMIT");
	char name[32];
	int ret;

	if (!path || !*path) {
		return vd_err_set(err, EINVAL, "fault: no path given");
	}
	if (colon && (size_t)(colon - path) < sizeof(name)) {
		memcpy(name, path, (size_t)(colon - path));
		name[colon - path] = '\0';
		if (vd_io_backend_find(name)) {
			inner = name;
			path = colon + 1;
		}
	}
	if (!inner || !*inner) {
		inner = "sync";
	}
	if (strcmp(inner, "fault") == 0) {
		return vd_err_set(err, EINVAL, "fault: cannot wrap itself");
	}
	s->limit_bytes = VD_FAULT_DEFAULT_LIMIT_BYTES;
	if (limit && *limit) {
		char *end;
		unsigned long long v;

		errno = 0;
		v = strtoull(limit, &end, 10);
		if (errno || *end || v == 0) {
			return vd_err_set(err, EINVAL, "fault: bad VD_FAULT_LIMIT '%s'", limit);
		}
		s->limit_bytes = v;
	}
	const char *sync_env = getenv("VD_FAULT_SYNC");

	s->real_sync = sync_env != NULL && strcmp(sync_env, "1") == 0;
	io.cache = VD_CACHE_WRITEBACK;
	s->inner_path = strdup(path);
	if (!s->inner_path) {
		return vd_err_set(err, ENOMEM, "out of memory");
	}
	ret = vd_file_open(inner, path, &io, &s->inner, err);
	if (ret < 0) {
		free(s->inner_path);
		s->inner_path = NULL;
		return ret;
	}
	pthread_mutex_init(&s->lock, NULL);
	f->info = s->inner->info;
	f->info.direct = false;
	f->info.logical_block_bytes = 512;
	s->self = f;
	pthread_mutex_lock(&g_reg_lock);
	s->next = g_reg;
	g_reg = s;
	pthread_mutex_unlock(&g_reg_lock);
	return 0;
}

static void fault_close(struct vd_file *f)
{
	struct fault_state *s = st(f), **pp;

	if (!s->inner) {
		return;
	}
	pthread_mutex_lock(&g_reg_lock);
	for (pp = &g_reg; *pp; pp = &(*pp)->next) {
		if (*pp == s) {
			*pp = s->next;
			break;
		}
	}
	pthread_mutex_unlock(&g_reg_lock);
	vd_file_close(s->inner);
	s->inner = NULL;
	pthread_mutex_destroy(&s->lock);
	free(s->inner_path);
	free(s->sec);
	free(s->old);
	free(s->tab_key);
	free(s->tab_idx);
}

static bool eio_fires(struct fault_state *s, enum vd_fault_op k)
{
	if (s->eio_in[k] == 0) {
		return false;
	}
	return --s->eio_in[k] == 0;
}

static int64_t do_req(struct fault_state *s, struct vd_file_req *req)
{
	uint64_t pos = req->offset_bytes;
	int64_t ret;
	int i;

	if (s->dead) {
		return -EIO;
	}
	switch (req->op) {
	case VD_IO_READ:
		if (eio_fires(s, VD_FAULT_READ)) {
			return -EIO;
		}
		for (i = 0; i < req->iovcnt; i++) {
			ret = inner_rw(s, VD_IO_READ, req->iov[i].iov_base, req->iov[i].iov_len,
				       pos);
			if (ret < 0) {
				return ret;
			}
			pos += req->iov[i].iov_len;
		}
		return (int64_t)req->len_bytes;
	case VD_IO_FLUSH:
		if (eio_fires(s, VD_FAULT_FLUSH)) {
			return -EIO;
		}
		ret = inner_rw(s, VD_IO_FLUSH, NULL, 0, 0);
		if (ret == 0) {
			undo_clear(s);
		}
		return ret;
	default:
		break;
	}
	/* WRITE, DISCARD, WRITE_ZEROES */
	if (eio_fires(s, VD_FAULT_WRITE)) {
		return -EIO;
	}
	if (s->inner->fd < 0 && req->offset_bytes + req->len_bytes > s->inner->info.size_bytes) {
		return -ENOSPC;
	}
	if (s->full_bytes && req->offset_bytes + req->len_bytes > s->full_bytes &&
	    req->op != VD_IO_DISCARD) {
		return -ENOSPC;
	}
	ret = save_undo(s, req->offset_bytes, req->len_bytes);
	if (ret < 0) {
		return ret;
	}
	if (req->op != VD_IO_WRITE) {
		return inner_rw(s, req->op, NULL, req->len_bytes, req->offset_bytes);
	}
	for (i = 0; i < req->iovcnt; i++) {
		ret = inner_rw(s, VD_IO_WRITE, req->iov[i].iov_base, req->iov[i].iov_len, pos);
		if (ret < 0) {
			return ret;
		}
		pos += req->iov[i].iov_len;
	}
	return (int64_t)req->len_bytes;
}

static void fault_submit(struct vd_file *f, struct vd_ioctx *ctx, struct vd_file_req *req)
{
	struct fault_state *s = st(f);
	int64_t ret;

	pthread_mutex_lock(&s->lock);
	ret = do_req(s, req);
	if (ret >= 0 && req->op == VD_IO_WRITE && s->inner->fd >= 0) {
		uint64_t end = req->offset_bytes + req->len_bytes;

		if (end > f->info.size_bytes) {
			f->info.size_bytes = end;
		}
	}
	pthread_mutex_unlock(&s->lock);
	vd_ioctx_complete(ctx, req, ret);
}

static int fault_resize(struct vd_file *f, uint64_t size_bytes)
{
	struct fault_state *s = st(f);
	int ret;

	pthread_mutex_lock(&s->lock);
	if (s->dead) {
		ret = -EIO;
	} else {
		ret = vd_file_resize(s->inner, size_bytes);
		if (ret == 0) {
			f->info.size_bytes = s->inner->info.size_bytes;
			if (s->n && s->epoch_size_bytes > size_bytes) {
				s->epoch_size_bytes = size_bytes;
			}
		}
	}
	pthread_mutex_unlock(&s->lock);
	return ret;
}

/* The locks are the inner file's: the fault layer only stands in front of it. */
static int fault_lock(struct vd_file *f, unsigned int perm, unsigned int shared, struct vd_err *err)
{
	struct fault_state *s = st(f);

	return vd_file_lock(s->inner, perm, shared, err);
}

static int fault_prealloc(struct vd_file *f, uint64_t offset_bytes, uint64_t len_bytes)
{
	struct fault_state *s = st(f);
	int ret;

	pthread_mutex_lock(&s->lock);
	if (s->dead) {
		ret = -EIO;
	} else if (s->full_bytes && offset_bytes + len_bytes > s->full_bytes) {
		ret = -ENOSPC;
	} else {
		ret = vd_file_prealloc(s->inner, offset_bytes, len_bytes);
		if (ret == 0 && offset_bytes + len_bytes > f->info.size_bytes) {
			f->info.size_bytes = offset_bytes + len_bytes;
		}
	}
	pthread_mutex_unlock(&s->lock);
	return ret;
}

const struct vd_io_backend vd_fault_backend = {
	.name = "fault",
	.file_state_size = sizeof(struct fault_state),
	.open = fault_open,
	.close = fault_close,
	.submit = fault_submit,
	.resize = fault_resize,
	.lock = fault_lock,
	.prealloc = fault_prealloc,
};

/* ---- test API ---- */

bool vd_fault_is_fault(const struct vd_file *f)
{
	return f && f->backend == &vd_fault_backend;
}

struct vd_file *vd_fault_lookup(const char *path)
{
	struct vd_file *found = NULL;
	struct fault_state *s;

	pthread_mutex_lock(&g_reg_lock);
	for (s = g_reg; s; s = s->next) {
		if (strcmp(s->inner_path, path) == 0) {
			found = s->self;
			break;
		}
	}
	pthread_mutex_unlock(&g_reg_lock);
	return found;
}

static int64_t cut_locked(struct fault_state *s, uint64_t seed, enum vd_fault_cut_mode mode)
{
	uint64_t rng = seed, keep_end = 0, cur_size;
	int64_t reverted = 0, sz;
	size_t i;
	int ret = 0;

	if (s->dead) {
		return 0;
	}
	s->dead = true;
	if (s->n == 0) {
		return 0;
	}
	sz = inner_size(s);
	if (sz < 0) {
		return sz;
	}
	cur_size = (uint64_t)sz;
	for (i = 0; i < s->n; i++) {
		uint64_t off = s->sec[i] * SECTOR;
		bool revert = mode == VD_FAULT_CUT_ALL || (splitmix(&rng) & 1);

		if (!revert) {
			if (off >= s->epoch_size_bytes) {
				keep_end = VD_MAX(keep_end, VD_MIN(off + SECTOR, cur_size));
			}
			continue;
		}
		if (off >= cur_size) {
			reverted++;
			continue;
		}
		if (inner_rw(s, VD_IO_WRITE, s->old + i * SECTOR, VD_MIN(SECTOR, cur_size - off),
			     off) < 0) {
			ret = -EIO;
		}
		reverted++;
	}
	/* a file that grew keeps only the length its surviving sectors need */
	if (cur_size > s->epoch_size_bytes && s->inner->fd >= 0 && !s->inner->info.is_blockdev) {
		uint64_t new_size = VD_MAX(s->epoch_size_bytes, keep_end);

		if (ftruncate(s->inner->fd, (off_t)new_size) < 0) {
			ret = -EIO;
		}
	}
	if (inner_rw(s, VD_IO_FLUSH, NULL, 0, 0) < 0) {
		ret = -EIO;
	}
	undo_clear(s);
	return ret < 0 ? ret : reverted;
}

int64_t vd_fault_cut_power(struct vd_file *f, uint64_t seed, enum vd_fault_cut_mode mode)
{
	struct fault_state *s;
	int64_t ret;

	if (!vd_fault_is_fault(f)) {
		return -EINVAL;
	}
	s = st(f);
	pthread_mutex_lock(&s->lock);
	ret = cut_locked(s, seed, mode);
	pthread_mutex_unlock(&s->lock);
	return ret;
}

int64_t vd_fault_cut_power_all(uint64_t seed, enum vd_fault_cut_mode mode)
{
	struct fault_state *s;
	int64_t total = 0, ret;

	pthread_mutex_lock(&g_reg_lock);
	for (s = g_reg; s; s = s->next) {
		pthread_mutex_lock(&s->lock);
		ret = cut_locked(s, hash64(seed ^ str_hash(s->inner_path)), mode);
		pthread_mutex_unlock(&s->lock);
		if (ret < 0) {
			total = total >= 0 ? ret : total;
		} else if (total >= 0) {
			total += ret;
		}
	}
	pthread_mutex_unlock(&g_reg_lock);
	return total;
}

int vd_fault_inject_eio(struct vd_file *f, enum vd_fault_op op, uint64_t nth)
{
	struct fault_state *s;

	if (!vd_fault_is_fault(f) || (unsigned int)op > VD_FAULT_FLUSH) {
		return -EINVAL;
	}
	s = st(f);
	pthread_mutex_lock(&s->lock);
	s->eio_in[op] = nth;
	pthread_mutex_unlock(&s->lock);
	return 0;
}

int vd_fault_set_full(struct vd_file *f, uint64_t size_bytes)
{
	struct fault_state *s;

	if (!vd_fault_is_fault(f)) {
		return -EINVAL;
	}
	s = st(f);
	pthread_mutex_lock(&s->lock);
	s->full_bytes = size_bytes;
	pthread_mutex_unlock(&s->lock);
	return 0;
}

int vd_fault_set_limit(struct vd_file *f, uint64_t limit_bytes)
{
	struct fault_state *s;

	if (!vd_fault_is_fault(f)) {
		return -EINVAL;
	}
	s = st(f);
	pthread_mutex_lock(&s->lock);
	s->limit_bytes = limit_bytes ? limit_bytes : VD_FAULT_DEFAULT_LIMIT_BYTES;
	pthread_mutex_unlock(&s->lock);
	return 0;
}

uint64_t vd_fault_unflushed_sectors(struct vd_file *f)
{
	struct fault_state *s;
	uint64_t n;

	if (!vd_fault_is_fault(f)) {
		return 0;
	}
	s = st(f);
	pthread_mutex_lock(&s->lock);
	n = s->n;
	pthread_mutex_unlock(&s->lock);
	return n;
}
