/*
 * qcow2: L1/L2 entries and the L2 slice cache (QEMU qcow2-cache.c with
 * l2-cache-entry-size slices), block status, compressed cluster inflate.
 *
 * The cache is the owner thread's. A miss reads the slice asynchronously on
 * the owner's ioctx; requests that need the same slice meanwhile wait on
 * the slice (waiters) and are resumed when it arrives. Clean slices sit on
 * an LRU list; dirty, loading and written-back slices are never evicted (a
 * dirty slice is written back by a write-back job or vd_qcow2_metadata_flush,
 * in the crash-safe order). When every slice is dirty, a request that needs
 * one starts a write-back job and waits for it (slice_waiters).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "common/log.h"
#include "image/qcow2/qcow2-int.h"

int vd_qcow2_cache_init(struct vd_image *img, uint64_t cache_bytes, uint64_t entry_bytes,
			struct vd_err *err)
{
	struct qcow2_state *s = qcow2_s(img);
	uint64_t n, buckets = 1;
	void *mem;

	if (entry_bytes == 0) {
		entry_bytes = s->cluster_bytes;
	}
	if (entry_bytes < 512 || entry_bytes > s->cluster_bytes ||
	    (entry_bytes & (entry_bytes - 1))) {
		return vd_err_set(err, EINVAL,
				  "%s: L2 cache entry size %llu must be a power of two from 512 "
				  "to the cluster size (%llu)",
				  img->path, (unsigned long long)entry_bytes,
				  (unsigned long long)s->cluster_bytes);
	}
	n = cache_bytes / entry_bytes;
	n = VD_MAX(n, 4ull);
	if (n > (1u << 20) || n * entry_bytes > (1ull << 32)) {
		return vd_err_set(err, EINVAL, "%s: L2 cache of %llu bytes is too large", img->path,
				  (unsigned long long)cache_bytes);
	}
	while (buckets < n * 2) {
		buckets <<= 1;
	}
	s->cache_bytes = n * entry_bytes;
	s->slice_bytes = (uint32_t)entry_bytes;
	s->slice_entries = (uint32_t)(entry_bytes / s->l2_entry_bytes);
	s->nr_slices = (uint32_t)n;
	s->slices = calloc(n, sizeof(*s->slices));
	s->hash = calloc(buckets, sizeof(*s->hash)); /* NOLINT(bugprone-sizeof-expression) */
	if (!s->slices || !s->hash || posix_memalign(&mem, VD_PAGE_SIZE, n * entry_bytes) != 0) {
		free(s->slices);
		free(s->hash);
		s->slices = NULL;
		s->hash = NULL;
		return vd_err_set(err, ENOMEM, "%s: allocating the L2 cache", img->path);
	}
	s->hash_mask = (uint32_t)(buckets - 1);
	TAILQ_INIT(&s->lru);
	for (uint64_t i = 0; i < n; i++) {
		struct qcow2_slice *sl = &s->slices[i];

		sl->s = s;
		sl->data = (uint8_t *)mem + i * entry_bytes;
		TAILQ_INSERT_TAIL(&s->lru, sl, lru);
		sl->in_lru = true;
	}
	return 0;
}

void vd_qcow2_cache_fini(struct qcow2_state *s)
{
	if (s->slices) {
		free(s->slices[0].data);
	}
	free(s->slices);
	free(s->hash);
	s->slices = NULL;
	s->hash = NULL;
}

static uint32_t hash_of(const struct qcow2_state *s, uint64_t key)
{
	return (uint32_t)((key >> 9) * 0x9e3779b97f4a7c15ull >> 32) & s->hash_mask;
}

static void hash_remove(struct qcow2_state *s, struct qcow2_slice *sl)
{
	struct qcow2_slice **pp = &s->hash[hash_of(s, sl->key)];

	while (*pp && *pp != sl) {
		pp = &(*pp)->hnext;
	}
	if (*pp) {
		*pp = sl->hnext;
	}
	sl->hnext = NULL;
	sl->key = 0;
}

static struct qcow2_slice *lookup(struct qcow2_state *s, uint64_t key)
{
	struct qcow2_slice *sl = s->hash[hash_of(s, key)];

	while (sl && sl->key != key) {
		sl = sl->hnext;
	}
	return sl;
}

static void lru_remove(struct qcow2_state *s, struct qcow2_slice *sl)
{
	if (sl->in_lru) {
		TAILQ_REMOVE(&s->lru, sl, lru);
		sl->in_lru = false;
	}
}

static void lru_add(struct qcow2_state *s, struct qcow2_slice *sl, bool head)
{
	if (!sl->in_lru) {
		if (head) {
			TAILQ_INSERT_HEAD(&s->lru, sl, lru);
		} else {
			TAILQ_INSERT_TAIL(&s->lru, sl, lru);
		}
		sl->in_lru = true;
	}
}

enum victim_mode {
	V_SYNC,  /* control thread: may write back synchronously */
	V_ASYNC, /* owner with a request to park: start a write-back job */
	V_NONE,  /* owner without a request: fail (*ret 0) */
};

/* A slice to (re)use for key: the oldest clean one; NULL if none. */
static struct qcow2_slice *victim(struct vd_image *img, uint64_t key, int *ret,
				  enum victim_mode mode)
{
	struct qcow2_state *s = qcow2_s(img);
	struct qcow2_slice *sl = TAILQ_FIRST(&s->lru);

	*ret = 0;
	if (!sl && s->nr_dirty_slices) {
		if (mode == V_ASYNC) {
			if (!s->mf.running) {
				*ret = vd_qcow2_mflush(img, NULL);
			}
			return NULL;
		}
		if (mode == V_NONE || s->mf.running) {
			return NULL;
		}
		*ret = vd_qcow2_metadata_flush(img);
		if (*ret < 0) {
			return NULL;
		}
		sl = TAILQ_FIRST(&s->lru);
	}
	if (!sl) {
		return NULL;
	}
	lru_remove(s, sl);
	if (sl->key) {
		hash_remove(s, sl);
	}
	sl->key = key;
	sl->hnext = s->hash[hash_of(s, key)];
	s->hash[hash_of(s, key)] = sl;
	sl->dirty = false;
	sl->loading = false;
	sl->load_err = 0;
	return sl;
}

static void slice_loaded(struct vd_file_req *freq, int64_t result)
{
	struct qcow2_slice *sl = freq->cb_arg;
	struct qcow2_state *s = sl->s;
	struct qcow2_req *w = sl->waiters, *any = s->slice_waiters;
	int err = 0;

	sl->waiters = NULL;
	s->slice_waiters = NULL;
	sl->loading = false;
	if (result < 0 || (uint64_t)result != s->slice_bytes) {
		err = result < 0 ? (int)result : -EIO;
		hash_remove(s, sl);
		lru_add(s, sl, true);
	} else {
		lru_add(s, sl, false);
	}
	vd_qcow2_wake(w, err);
	vd_qcow2_wake(any, 0);
}

static uint64_t slice_key(const struct qcow2_state *s, uint64_t l2_off, uint64_t gc)
{
	uint64_t idx = gc % s->l2_entries;

	return l2_off + (idx / s->slice_entries) * s->slice_bytes;
}

struct qcow2_slice *vd_qcow2_slice_get(struct vd_image *img, uint64_t l2_off, uint64_t gc,
				       struct qcow2_req *req, int *ret)
{
	struct qcow2_state *s = qcow2_s(img);
	uint64_t key = slice_key(s, l2_off, gc);
	struct qcow2_slice *sl = lookup(s, key);

	*ret = 0;
	if (sl) {
		if (sl->loading) {
			if (!req) {
				*ret = -EBUSY;
				return NULL;
			}
			req->next = sl->waiters;
			sl->waiters = req;
			return NULL;
		}
		if (sl->in_lru) {
			TAILQ_REMOVE(&s->lru, sl, lru);
			TAILQ_INSERT_TAIL(&s->lru, sl, lru);
		}
		return sl;
	}
	sl = victim(img, key, ret, req ? V_ASYNC : V_SYNC);
	if (!sl) {
		if (*ret < 0) {
			return NULL;
		}
		if (!req) {
			*ret = -EBUSY;
			return NULL;
		}
		req->next = s->slice_waiters;
		s->slice_waiters = req;
		return NULL;
	}
	if (!req) {
		*ret = vd_qcow2_pread(s, sl->data, s->slice_bytes, key);
		if (*ret < 0) {
			hash_remove(s, sl);
			lru_add(s, sl, true);
			return NULL;
		}
		lru_add(s, sl, false);
		return sl;
	}
	sl->loading = true;
	sl->waiters = req;
	req->next = NULL;
	memset(&sl->freq, 0, sizeof(sl->freq));
	sl->iov.iov_base = sl->data;
	sl->iov.iov_len = s->slice_bytes;
	sl->freq.op = VD_IO_READ;
	sl->freq.offset_bytes = key;
	sl->freq.len_bytes = s->slice_bytes;
	sl->freq.iov = &sl->iov;
	sl->freq.iovcnt = 1;
	sl->freq.cb = slice_loaded;
	sl->freq.cb_arg = sl;
	vd_file_submit(s->file, s->owner_ctx, &sl->freq);
	return NULL;
}

struct qcow2_slice *vd_qcow2_slice_new(struct vd_image *img, uint64_t l2_off, uint64_t gc, int *ret)
{
	struct qcow2_state *s = qcow2_s(img);
	uint64_t key = slice_key(s, l2_off, gc);
	struct qcow2_slice *sl = lookup(s, key);

	*ret = 0;
	if (sl && sl->loading) {
		*ret = -EBUSY; /* cannot happen: the table was just allocated */
		return NULL;
	}
	if (!sl) {
		sl = victim(img, key, ret, V_NONE);
		if (!sl) {
			if (*ret == 0) {
				*ret = -EBUSY;
			}
			return NULL;
		}
	}
	memset(sl->data, 0, s->slice_bytes);
	vd_qcow2_slice_mark_dirty(s, sl);
	return sl;
}

void vd_qcow2_slice_mark_dirty(struct qcow2_state *s, struct qcow2_slice *sl)
{
	lru_remove(s, sl);
	if (!sl->dirty) {
		sl->dirty = true;
		s->nr_dirty_slices++;
	}
}

int vd_qcow2_cache_writeback(struct qcow2_state *s)
{
	for (uint32_t i = 0; i < s->nr_slices; i++) {
		struct qcow2_slice *sl = &s->slices[i];
		int ret;

		if (!sl->dirty) {
			continue;
		}
		ret = vd_qcow2_pwrite(s, sl->data, s->slice_bytes, sl->key);
		if (ret < 0) {
			return ret;
		}
		sl->dirty = false;
		s->nr_dirty_slices--;
		lru_add(s, sl, false);
	}
	return 0;
}

uint32_t vd_qcow2_cache_snapshot(struct qcow2_state *s, struct qcow2_slice **out, uint8_t *buf)
{
	uint32_t n = 0;

	for (uint32_t i = 0; i < s->nr_slices && s->nr_dirty_slices; i++) {
		struct qcow2_slice *sl = &s->slices[i];

		if (!sl->dirty || sl->writeback) {
			continue;
		}
		memcpy(buf + (size_t)n * s->slice_bytes, sl->data, s->slice_bytes);
		sl->dirty = false;
		sl->writeback = true;
		s->nr_dirty_slices--;
		out[n++] = sl;
	}
	return n;
}

void vd_qcow2_cache_release(struct qcow2_state *s, struct qcow2_slice **sl, uint32_t n, bool failed)
{
	for (uint32_t i = 0; i < n; i++) {
		sl[i]->writeback = false;
		if (failed) {
			vd_qcow2_slice_mark_dirty(s, sl[i]);
		} else if (!sl[i]->dirty) {
			lru_add(s, sl[i], false);
		}
	}
}

void vd_qcow2_cache_overlay(struct qcow2_state *s, uint64_t l2_off, uint8_t *buf)
{
	for (uint64_t off = 0; off < s->cluster_bytes; off += s->slice_bytes) {
		struct qcow2_slice *sl = lookup(s, l2_off + off);

		if (sl && !sl->loading) {
			memcpy(buf + off, sl->data, s->slice_bytes);
		}
	}
}

void vd_qcow2_entry_get(struct qcow2_state *s, const struct qcow2_slice *sl, uint64_t gc,
			uint64_t *entry, uint64_t *bitmap)
{
	const uint8_t *p = sl->data + ((gc % s->l2_entries) % s->slice_entries) * s->l2_entry_bytes;

	*entry = qcow2_be64(p);
	*bitmap = s->ext_l2 ? qcow2_be64(p + 8) : 0;
}

void vd_qcow2_entry_set(struct qcow2_state *s, struct qcow2_slice *sl, uint64_t gc, uint64_t entry,
			uint64_t bitmap)
{
	uint8_t *p = sl->data + ((gc % s->l2_entries) % s->slice_entries) * s->l2_entry_bytes;

	qcow2_put_be64(p, entry);
	if (s->ext_l2) {
		qcow2_put_be64(p + 8, bitmap);
	}
	vd_qcow2_slice_mark_dirty(s, sl);
}

int vd_qcow2_decode(struct qcow2_state *s, uint64_t entry, uint64_t bitmap, unsigned int sc,
		    enum qcow2_kind *kind, uint64_t *host, uint64_t *clen)
{
	*host = 0;
	*clen = 0;
	if (entry & QCOW2_OFLAG_COMPRESSED) {
		unsigned int x = 62 - (s->cluster_bits - 8);
		uint64_t nsec = (entry >> x) & ((1ull << (62 - x)) - 1);

		if (s->ext_l2 && bitmap) {
			return -EIO;
		}
		*host = entry & ((1ull << x) - 1);
		*clen = (nsec + 1) * 512 - (*host & 511);
		*kind = QCOW2_COMPRESSED;
		return 0;
	}
	*host = entry & QCOW2_OFFSET_MASK;
	if (!VD_IS_ALIGNED(*host, s->cluster_bytes)) {
		return -EIO;
	}
	if (s->ext_l2) {
		bool alloc = bitmap & (1ull << sc), zero = bitmap & (1ull << (32 + sc));

		if (alloc && zero) {
			return -EIO;
		}
		if (alloc) {
			if (*host == 0) {
				return -EIO;
			}
			*kind = QCOW2_NORMAL;
			*host += (uint64_t)sc * s->subcluster_bytes;
		} else {
			*kind = zero ? QCOW2_ZERO : QCOW2_UNALLOCATED;
		}
		return 0;
	}
	if (entry & QCOW2_OFLAG_ZERO) {
		*kind = QCOW2_ZERO;
	} else if (*host == 0) {
		*kind = QCOW2_UNALLOCATED;
	} else {
		*kind = QCOW2_NORMAL;
	}
	return 0;
}

int vd_qcow2_l1_check(struct qcow2_state *s, uint64_t l1e, uint64_t *l2_off)
{
	*l2_off = l1e & QCOW2_OFFSET_MASK;
	if (!VD_IS_ALIGNED(*l2_off, s->cluster_bytes)) {
		return -EIO;
	}
	return 0;
}

int vd_qcow2_inflate(struct qcow2_state *s, const uint8_t *src, size_t src_len, uint8_t *dst)
{
	z_stream z;
	int ret;

	memset(&z, 0, sizeof(z));
	if (inflateInit2(&z, -12) != Z_OK) {
		return -ENOMEM;
	}
	z.next_in = (Bytef *)src;
	z.avail_in = (uInt)src_len;
	z.next_out = dst;
	z.avail_out = (uInt)s->cluster_bytes;
	ret = inflate(&z, Z_FINISH);
	inflateEnd(&z);
	if ((ret == Z_STREAM_END || ret == Z_BUF_ERROR) && z.avail_out == 0) {
		return 0;
	}
	return -EIO;
}

uint64_t vd_qcow2_l1_chunk(const struct qcow2_state *s)
{
	return VD_MIN(4096ull, s->cluster_bytes) / 8;
}

int vd_qcow2_l1_writeback(struct qcow2_state *s)
{
	uint64_t chunk = vd_qcow2_l1_chunk(s); /* entries per write */
	uint8_t *buf;

	if (!s->l1_any_dirty) {
		return 0;
	}
	buf = vd_qcow2_alloc_buf(chunk * 8);
	if (!buf) {
		return -ENOMEM;
	}
	for (uint64_t first = 0; first < s->l1_size; first += chunk) {
		uint64_t n = VD_MIN(chunk, s->l1_size - first);
		bool dirty = false;
		int ret;

		for (uint64_t i = first; i < first + n; i++) {
			dirty |= s->l1_dirty[i];
		}
		if (!dirty) {
			continue;
		}
		memset(buf, 0, chunk * 8);
		for (uint64_t i = 0; i < n; i++) {
			qcow2_put_be64(buf + i * 8, s->l1[first + i]);
		}
		/* whole sectors: the entries past l1_size in the last one are zero */
		ret = vd_qcow2_pwrite(s, buf, VD_ALIGN_UP(n * 8, 512ull), s->l1_offset + first * 8);
		if (ret < 0) {
			free(buf);
			return ret;
		}
		for (uint64_t i = first; i < first + n; i++) {
			s->l1_dirty[i] = false;
		}
	}
	free(buf);
	s->l1_any_dirty = false;
	return 0;
}

/* ---- block status (control thread) ---- */

static int unit_status(struct vd_image *img, uint64_t off, enum qcow2_kind *kind, uint64_t *host,
		       uint64_t *unit_end)
{
	struct qcow2_state *s = qcow2_s(img);
	uint64_t gc = off >> s->cluster_bits;
	uint64_t l1i = gc / s->l2_entries;
	uint64_t l2_off, entry, bitmap, clen;
	struct qcow2_slice *sl;
	unsigned int sc = 0;
	int ret;

	if (l1i >= s->l1_size || s->l1[l1i] == 0 || (s->l1[l1i] & QCOW2_OFFSET_MASK) == 0) {
		*kind = QCOW2_UNALLOCATED;
		*unit_end = (l1i + 1) * s->l2_entries * s->cluster_bytes;
		return 0;
	}
	if (vd_qcow2_l1_check(s, s->l1[l1i], &l2_off) < 0) {
		vd_qcow2_signal_corruption(img, "L1 entry %llu is unaligned",
					   (unsigned long long)l1i);
		return -EIO;
	}
	sl = vd_qcow2_slice_get(img, l2_off, gc, NULL, &ret);
	if (!sl) {
		return ret < 0 ? ret : -EIO;
	}
	vd_qcow2_entry_get(s, sl, gc, &entry, &bitmap);
	if (s->ext_l2) {
		sc = (unsigned int)((off & (s->cluster_bytes - 1)) / s->subcluster_bytes);
	}
	ret = vd_qcow2_decode(s, entry, bitmap, sc, kind, host, &clen);
	if (ret < 0) {
		vd_qcow2_signal_corruption(img, "bad L2 entry 0x%llx for cluster %llu",
					   (unsigned long long)entry, (unsigned long long)gc);
		return ret;
	}
	if (*kind == QCOW2_COMPRESSED) {
		*unit_end = (gc + 1) << s->cluster_bits;
	} else {
		*unit_end = (off / s->subcluster_bytes + 1) * s->subcluster_bytes;
	}
	return 0;
}

int vd_qcow2_block_status(struct vd_image *img, uint64_t offset_bytes, uint64_t max_bytes,
			  struct vd_block_status *out)
{
	struct qcow2_state *s = qcow2_s(img);
	uint64_t end = offset_bytes + max_bytes, pos = offset_bytes, unit_end, host, h0 = 0;
	enum qcow2_kind k0, k;
	int ret;

	if (max_bytes == 0 || end > s->size_bytes || end < offset_bytes) {
		end = s->size_bytes;
	}
	ret = unit_status(img, pos, &k0, &host, &unit_end);
	if (ret < 0) {
		return ret;
	}
	if (k0 == QCOW2_NORMAL) {
		/* host is the unit's start: step to the byte */
		uint64_t unit = s->ext_l2 ? s->subcluster_bytes : s->cluster_bytes;

		h0 = host + (pos & (unit - 1));
	}
	pos = VD_MIN(unit_end, end);
	while (pos < end) {
		uint64_t expect = h0 + (pos - offset_bytes);

		ret = unit_status(img, pos, &k, &host, &unit_end);
		if (ret < 0) {
			return ret;
		}
		if (k != k0 || k == QCOW2_COMPRESSED || (k == QCOW2_NORMAL && host != expect)) {
			break;
		}
		pos = VD_MIN(unit_end, end);
	}
	out->len_bytes = pos - offset_bytes;
	out->host_offset_bytes = UINT64_MAX;
	switch (k0) {
	case QCOW2_UNALLOCATED:
		out->flags = 0;
		break;
	case QCOW2_ZERO:
		out->flags = VD_BLOCK_ALLOCATED | VD_BLOCK_ZERO;
		break;
	case QCOW2_NORMAL:
		out->flags = VD_BLOCK_ALLOCATED | VD_BLOCK_DATA;
		out->host_offset_bytes = h0;
		break;
	case QCOW2_COMPRESSED:
		out->flags = VD_BLOCK_ALLOCATED | VD_BLOCK_DATA;
		break;
	}
	return 0;
}
