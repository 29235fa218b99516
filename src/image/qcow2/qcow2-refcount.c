/*
 * qcow2: refcounts, cluster allocation, deferred frees, metadata write-back
 * (QEMU qcow2-refcount.c); check and repair are in qcow2-check.c.
 *
 * A writable image keeps its refcount blocks in memory (loaded at open;
 * their size is bounded by the file's). Allocation scans from free_cursor
 * for a cluster with refcount 0; a range without a refcount block gets one,
 * placed in the first free cluster of that range (it describes itself); a
 * refcount table too small is replaced by a larger one at the end of the
 * file (written, flushed, then the header switched, then the old one freed).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/log.h"
#include "image/qcow2/qcow2-int.h"

static uint64_t rc_decode(const uint8_t *blk, unsigned int order, uint64_t i)
{
	unsigned int bits = 1u << order;

	switch (order) {
	case 6:
		return qcow2_be64(blk + i * 8);
	case 5:
		return qcow2_be32(blk + i * 4);
	case 4:
		return qcow2_be16(blk + i * 2);
	case 3:
		return blk[i];
	default:
		return (blk[i * bits / 8] >> ((i * bits) % 8)) & ((1u << bits) - 1);
	}
}

void vd_qcow2_refcount_encode(uint8_t *blk, unsigned int order, uint64_t i, uint64_t v)
{
	unsigned int bits = 1u << order;

	switch (order) {
	case 6:
		qcow2_put_be64(blk + i * 8, v);
		break;
	case 5:
		qcow2_put_be32(blk + i * 4, (uint32_t)v);
		break;
	case 4:
		qcow2_put_be16(blk + i * 2, (uint16_t)v);
		break;
	case 3:
		blk[i] = (uint8_t)v;
		break;
	default: {
		uint64_t bit = i * bits;
		uint8_t mask = (uint8_t)(((1u << bits) - 1) << (bit % 8));

		blk[bit / 8] = (uint8_t)((blk[bit / 8] & ~mask) | ((v << (bit % 8)) & mask));
		break;
	}
	}
}

uint64_t vd_qcow2_file_bytes(struct qcow2_state *s)
{
	uint64_t sz = s->file->info.size_bytes;
	struct stat st;

	if (s->file->fd >= 0 && fstat(s->file->fd, &st) == 0 && S_ISREG(st.st_mode)) {
		sz = VD_MAX(sz, (uint64_t)st.st_size);
	}
	return sz;
}

void vd_qcow2_refcounts_free(struct qcow2_state *s)
{
	for (uint64_t i = 0; s->refblocks && i < s->reftable_entries; i++) {
		free(s->refblocks[i]);
	}
	free(s->refblocks);
	free(s->refblock_dirty);
	free(s->reftable);
	free(s->frees);
	s->refblocks = NULL;
	s->refblock_dirty = NULL;
	s->reftable = NULL;
	s->frees = NULL;
	s->nr_frees = s->max_frees = 0;
	s->refcounts_loaded = false;
}

int vd_qcow2_refcounts_load(struct vd_image *img, struct vd_err *err)
{
	struct qcow2_state *s = qcow2_s(img);
	uint64_t fsz = vd_qcow2_file_bytes(s), nonzero = 0;
	uint8_t *buf;
	int ret;

	s->refcount_bits = 1u << s->refcount_order;
	s->refcount_max = s->refcount_bits == 64 ? UINT64_MAX : (1ull << s->refcount_bits) - 1;
	s->refs_per_block = s->cluster_bytes * 8 / s->refcount_bits;
	s->reftable_entries = (uint64_t)s->reftable_clusters * s->cluster_bytes / 8;
	s->reftable_bad = 0;
	s->reftable = calloc(s->reftable_entries, sizeof(*s->reftable));
	s->refblocks = calloc(s->reftable_entries, sizeof(*s->refblocks));
	s->refblock_dirty = calloc(s->reftable_entries, sizeof(*s->refblock_dirty));
	buf = vd_qcow2_alloc_buf(s->reftable_entries * 8);
	if (!s->reftable || !s->refblocks || !s->refblock_dirty || !buf) {
		free(buf);
		vd_qcow2_refcounts_free(s);
		return vd_err_set(err, ENOMEM, "out of memory");
	}
	/* past the end of the file the table reads as zeroes (as in QEMU) */
	ret = vd_qcow2_pread_zfill(s, buf, s->reftable_entries * 8, s->reftable_offset);
	if (ret < 0) {
		free(buf);
		vd_qcow2_refcounts_free(s);
		return vd_err_set(err, -ret, "%s: reading the refcount table", img->path);
	}
	for (uint64_t i = 0; i < s->reftable_entries; i++) {
		uint64_t raw = qcow2_be64(buf + i * 8), off = raw & ~511ull;

		if (raw == 0) {
			continue;
		}
		if ((raw & 511) || !VD_IS_ALIGNED(off, s->cluster_bytes) || off >= fsz) {
			/*
			 * A bad entry (QEMU opens such images too): the range
			 * it covers counts as without refcounts, the image as
			 * corrupt (no writes) until check --repair rebuilds.
			 */
			s->reftable_bad++;
			continue;
		}
		if (++nonzero > fsz / s->cluster_bytes + 1) {
			free(buf);
			vd_qcow2_refcounts_free(s);
			return vd_err_set(err, EINVAL,
					  "%s: refcount block %llu at a bad offset 0x%llx (try "
					  "qemu-img check -r all)",
					  img->path, (unsigned long long)i,
					  (unsigned long long)off);
		}
		s->reftable[i] = off;
		s->refblocks[i] = vd_qcow2_alloc_buf(s->cluster_bytes);
		if (!s->refblocks[i]) {
			free(buf);
			vd_qcow2_refcounts_free(s);
			return vd_err_set(err, ENOMEM, "out of memory");
		}
		ret = vd_qcow2_pread(s, s->refblocks[i], s->cluster_bytes, off);
		if (ret < 0) {
			free(buf);
			vd_qcow2_refcounts_free(s);
			return vd_err_set(err, -ret, "%s: reading refcount block %llu", img->path,
					  (unsigned long long)i);
		}
	}
	free(buf);
	s->free_cursor = 1;
	s->file_end_bytes = VD_ALIGN_UP(fsz, s->cluster_bytes);
	s->written_end_bytes = s->file_end_bytes;
	s->prealloc_end_bytes = fsz;
	s->prealloc = !img->readonly && !s->file->info.is_blockdev;
	s->refcounts_loaded = true;
	return 0;
}

uint64_t vd_qcow2_refcount_get(struct qcow2_state *s, uint64_t cluster)
{
	uint64_t b = cluster / s->refs_per_block;

	if (b >= s->reftable_entries || !s->refblocks[b]) {
		return 0;
	}
	return rc_decode(s->refblocks[b], s->refcount_order, cluster % s->refs_per_block);
}

static void refcount_set(struct qcow2_state *s, uint64_t cluster, uint64_t v)
{
	uint64_t b = cluster / s->refs_per_block;

	vd_qcow2_refcount_encode(s->refblocks[b], s->refcount_order, cluster % s->refs_per_block,
				 v);
	s->refblock_dirty[b] = true;
	s->refcounts_dirty = true;
}

static int write_refblocks(struct qcow2_state *s, bool table)
{
	for (uint64_t i = 0; i < s->reftable_entries; i++) {
		int ret;

		if (!s->refblock_dirty[i] || !s->refblocks[i]) {
			continue;
		}
		ret = vd_qcow2_pwrite(s, s->refblocks[i], s->cluster_bytes, s->reftable[i]);
		if (ret < 0) {
			return ret;
		}
		s->refblock_dirty[i] = false;
	}
	if (table) {
		uint8_t *buf = vd_qcow2_alloc_buf(s->reftable_entries * 8);
		int ret;

		if (!buf) {
			return -ENOMEM;
		}
		vd_qcow2_reftable_encode(s, buf);
		ret = vd_qcow2_pwrite(s, buf, s->reftable_entries * 8, s->reftable_offset);
		free(buf);
		if (ret < 0) {
			return ret;
		}
		s->reftable_dirty = false;
	}
	return 0;
}

void vd_qcow2_reftable_encode(struct qcow2_state *s, uint8_t *buf)
{
	for (uint64_t i = 0; i < s->reftable_entries; i++) {
		qcow2_put_be64(buf + i * 8, s->reftable[i]);
	}
}

/* The saved arrays of the refcount table while grow_reftable replaces it. */
struct rt_old {
	uint64_t *table;
	uint8_t **blocks;
	bool *dirty;
	uint64_t entries, offset_bytes, end_bytes;
	uint32_t clusters;
	bool table_dirty;
};

/*
 * The new table could not be written (before the header pointed at it):
 * back to the old one. Blocks that were there keep their other counts
 * (and get written again); the ones made for the new table go.
 */
static void grow_undo(struct qcow2_state *s, struct rt_old *o, uint64_t first, uint64_t n)
{
	for (uint64_t c = first; c < first + n; c++) {
		uint64_t b = c / s->refs_per_block;

		if (b < o->entries && o->blocks[b]) {
			vd_qcow2_refcount_encode(o->blocks[b], s->refcount_order,
						 c % s->refs_per_block, 0);
			o->dirty[b] = true;
		}
	}
	for (uint64_t b = 0; b < s->reftable_entries; b++) {
		if (s->refblocks[b] && (b >= o->entries || !o->blocks[b])) {
			free(s->refblocks[b]);
		}
	}
	free(s->reftable);
	free(s->refblocks);
	free(s->refblock_dirty);
	s->reftable = o->table;
	s->refblocks = o->blocks;
	s->refblock_dirty = o->dirty;
	s->reftable_entries = o->entries;
	s->reftable_offset = o->offset_bytes;
	s->reftable_clusters = o->clusters;
	s->file_end_bytes = o->end_bytes;
	s->reftable_dirty = o->table_dirty;
	s->refcounts_dirty = true;
}

/* Entries of a new table placed at cluster e; *T its clusters, *K new blocks. */
static int grow_size(struct qcow2_state *s, uint64_t min_entries, uint64_t e, uint64_t *entries_out,
		     uint64_t *T_out, uint64_t *K_out)
{
	uint64_t per_cluster = s->cluster_bytes / 8;
	uint64_t entries = VD_MAX(min_entries, s->reftable_entries * 2), T, K = 0;

	for (;;) {
		uint64_t last;

		entries = VD_ALIGN_UP(entries, per_cluster);
		T = entries / per_cluster;
		if (T * s->cluster_bytes > QCOW2_MAX_REFTABLE_BYTES) {
			return -EFBIG;
		}
		for (;;) {
			uint64_t k = 0;

			last = (e + T + K - 1) / s->refs_per_block;
			for (uint64_t b = e / s->refs_per_block; b <= last; b++) {
				if (b >= s->reftable_entries || !s->refblocks[b]) {
					k++;
				}
			}
			if (k == K) {
				break;
			}
			K = k;
		}
		if (last + 1 <= entries) {
			break;
		}
		entries = last + 1;
	}
	*entries_out = entries;
	*T_out = T;
	*K_out = K;
	return 0;
}

/* Replace the refcount table by one of at least min_entries, at the end. */
static int grow_reftable(struct vd_image *img, uint64_t min_entries)
{
	struct qcow2_state *s = qcow2_s(img);
	uint64_t e = s->file_end_bytes / s->cluster_bytes, entries, T, K;
	struct rt_old o = {
		.table = s->reftable,
		.blocks = s->refblocks,
		.dirty = s->refblock_dirty,
		.entries = s->reftable_entries,
		.offset_bytes = s->reftable_offset,
		.end_bytes = s->file_end_bytes,
		.clusters = s->reftable_clusters,
		.table_dirty = s->reftable_dirty,
	};
	uint64_t old_len = s->reftable_entries * 8, last;
	uint8_t h[12];
	uint64_t *nt;
	uint8_t **nb;
	bool *nd;
	int ret = grow_size(s, min_entries, e, &entries, &T, &K);

	if (ret < 0) {
		return ret;
	}
	nt = calloc(entries, sizeof(*nt));
	nb = calloc(entries, sizeof(*nb));
	nd = calloc(entries, sizeof(*nd));
	if (!nt || !nb || !nd) {
		free(nt);
		free(nb);
		free(nd);
		return -ENOMEM;
	}
	memcpy(nt, s->reftable, s->reftable_entries * sizeof(*nt));
	memcpy(nb, s->refblocks, s->reftable_entries * sizeof(*nb));
	memcpy(nd, s->refblock_dirty, s->reftable_entries * sizeof(*nd));
	/* the old arrays stay in o until the header points at the new table */
	s->reftable = nt;
	s->refblocks = nb;
	s->refblock_dirty = nd;
	s->reftable_entries = entries;
	last = (e + T + K - 1) / s->refs_per_block;
	for (uint64_t b = e / s->refs_per_block, j = 0; b <= last; b++) {
		if (!nb[b]) {
			nb[b] = vd_qcow2_alloc_buf(s->cluster_bytes);
			if (!nb[b]) {
				grow_undo(s, &o, e, 0);
				return -ENOMEM;
			}
			nt[b] = (e + T + j++) * s->cluster_bytes;
			nd[b] = true;
		}
	}
	for (uint64_t c = e; c < e + T + K; c++) {
		refcount_set(s, c, 1);
	}
	s->file_end_bytes = (e + T + K) * s->cluster_bytes;
	s->written_end_bytes = VD_MAX(s->written_end_bytes, s->file_end_bytes);
	s->reftable_offset = e * s->cluster_bytes;
	s->reftable_clusters = (uint32_t)T;
	/* blocks and new table, flush, then the header points at them */
	ret = write_refblocks(s, true);
	if (ret == 0) {
		ret = vd_qcow2_fsync(s);
	}
	if (ret == 0) {
		qcow2_put_be64(h, s->reftable_offset);
		qcow2_put_be32(h + 8, s->reftable_clusters);
		ret = vd_qcow2_write_header_field(s, 48, h, 12);
	}
	if (ret < 0) {
		/* e.g. ENOSPC: the header still names the old table, all of it valid */
		grow_undo(s, &o, e, T + K);
		return ret;
	}
	free(o.table);
	free(o.blocks);
	free(o.dirty);
	ret = vd_qcow2_fsync(s);
	if (ret < 0) {
		/* either header is consistent; the old table is freed after a later sync */
		vd_log_ratelimited(VD_LOG_ERR, "qcow2: %s: syncing the new refcount table: %s",
				   img->path, strerror(-ret));
	}
	(void)vd_qcow2_free_later(img, o.offset_bytes, VD_ALIGN_UP(old_len, s->cluster_bytes));
	return ret;
}

/*
 * Grow the file with fallocate (vd_file_prealloc: allocates, extends,
 * never touches data) in steps of VD_QCOW2_PREALLOC_BYTES ahead of a new
 * cluster that ends past it. Best effort: the cluster's write extends the
 * file anyway if this fails, so a refusal only switches it off; a full
 * filesystem (ENOSPC) only skips this step, space may come back. A crash
 * leaves the unreferenced tail, which no check counts as a leak; close
 * trims it.
 */
static void prealloc_ahead(struct qcow2_state *s, uint64_t end_bytes)
{
	uint64_t step = VD_MAX((uint64_t)VD_QCOW2_PREALLOC_BYTES, s->cluster_bytes);
	uint64_t to;
	int ret;

	if (!s->prealloc || end_bytes <= s->prealloc_end_bytes) {
		return;
	}
	to = VD_ALIGN_UP(end_bytes, step);
	ret = vd_file_prealloc(s->file, s->prealloc_end_bytes, to - s->prealloc_end_bytes);
	if (ret == -ENOSPC) {
		return;
	}
	if (ret < 0) {
		s->prealloc = false;
		return;
	}
	s->prealloc_end_bytes = to;
}

int64_t vd_qcow2_alloc_cluster(struct vd_image *img, bool *fresh)
{
	struct qcow2_state *s = qcow2_s(img);
	uint64_t c = VD_MAX(s->free_cursor, 1ull);

	if (!s->refcounts_loaded) {
		return -EROFS;
	}
	for (;; c++) {
		uint64_t b = c / s->refs_per_block;

		if (c >= (1ull << 56) >> s->cluster_bits) {
			return -ENOSPC;
		}
		if (b >= s->reftable_entries) {
			int ret = grow_reftable(img, b + 1);

			if (ret < 0) {
				return ret;
			}
			/* the new table and blocks took clusters: rescan from here */
			c--;
			continue;
		}
		if (!s->refblocks[b]) {
			s->refblocks[b] = vd_qcow2_alloc_buf(s->cluster_bytes);
			if (!s->refblocks[b]) {
				return -ENOMEM;
			}
			s->reftable[b] = c * s->cluster_bytes;
			s->reftable_dirty = true;
			refcount_set(s, c, 1); /* the block describes itself */
			s->file_end_bytes = VD_MAX(s->file_end_bytes, (c + 1) * s->cluster_bytes);
			s->written_end_bytes = VD_MAX(s->written_end_bytes, s->file_end_bytes);
			/* the table entry is written with the blocks (write_refblocks) */
			s->free_cursor = c + 1;
			continue;
		}
		if (vd_qcow2_refcount_get(s, c) == 0) {
			if (fresh) {
				/*
				 * written_end_bytes only grows (the file at open, then
				 * each allocation); past it a file has holes or
				 * fallocated space, a device stale blocks
				 */
				*fresh = !s->file->info.is_blockdev &&
					 c * s->cluster_bytes >= s->written_end_bytes;
			}
			refcount_set(s, c, 1);
			s->free_cursor = c + 1;
			s->file_end_bytes = VD_MAX(s->file_end_bytes, (c + 1) * s->cluster_bytes);
			s->written_end_bytes = VD_MAX(s->written_end_bytes, s->file_end_bytes);
			prealloc_ahead(s, (c + 1) * s->cluster_bytes);
			return (int64_t)(c * s->cluster_bytes);
		}
	}
}

void vd_qcow2_release_cluster(struct vd_image *img, uint64_t offset_bytes)
{
	struct qcow2_state *s = qcow2_s(img);
	uint64_t c = offset_bytes >> s->cluster_bits;

	if (!s->refcounts_loaded || vd_qcow2_refcount_get(s, c) != 1) {
		return; /* not ours to release: leave it (at worst a leak) */
	}
	refcount_set(s, c, 0);
	if (c < s->free_cursor) {
		s->free_cursor = c;
	}
}

int vd_qcow2_free_later(struct vd_image *img, uint64_t offset_bytes, uint64_t len_bytes)
{
	struct qcow2_state *s = qcow2_s(img);

	if (!s->refcounts_loaded || len_bytes == 0) {
		return 0;
	}
	if (s->nr_frees == s->max_frees) {
		uint32_t n = s->max_frees ? s->max_frees * 2 : 64;
		struct qcow2_free *f;

		if (s->nr_frees >= QCOW2_MAX_PENDING_FREES && !s->owner_ctx) {
			int ret = vd_qcow2_metadata_flush(img);

			if (ret < 0) {
				return ret; /* the clusters leak: harmless */
			}
		}
		if (s->nr_frees == s->max_frees) {
			f = realloc(s->frees, n * sizeof(*f));
			if (!f) {
				return -ENOMEM;
			}
			s->frees = f;
			s->max_frees = n;
		}
	}
	s->frees[s->nr_frees].offset_bytes = offset_bytes;
	s->frees[s->nr_frees].len_bytes = len_bytes;
	s->nr_frees++;
	if (s->nr_frees >= QCOW2_MAX_PENDING_FREES && s->owner_ctx && !s->mf.running) {
		/* serving: make them safe in the background (or at the next FLUSH) */
		(void)vd_qcow2_mflush(img, NULL);
	}
	return 0;
}

void vd_qcow2_apply_frees(struct vd_image *img, uint32_t n)
{
	struct qcow2_state *s = qcow2_s(img);

	n = VD_MIN(n, s->nr_frees);
	for (uint32_t i = 0; i < n; i++) {
		uint64_t first = s->frees[i].offset_bytes >> s->cluster_bits;
		uint64_t last =
			(s->frees[i].offset_bytes + s->frees[i].len_bytes - 1) >> s->cluster_bits;

		for (uint64_t c = first; c <= last; c++) {
			uint64_t r = vd_qcow2_refcount_get(s, c);

			if (r == 0) {
				vd_log(VD_LOG_WARN, "qcow2: %s: freeing cluster %llu twice",
				       img->path, (unsigned long long)c);
				continue;
			}
			refcount_set(s, c, r - 1);
			if (r == 1 && c < s->free_cursor) {
				s->free_cursor = c;
			}
		}
	}
	if (n && n < s->nr_frees) {
		memmove(s->frees, s->frees + n, (s->nr_frees - n) * sizeof(*s->frees));
	}
	s->nr_frees -= n;
}

bool vd_qcow2_metadata_dirty(struct qcow2_state *s)
{
	return s->refcounts_dirty || s->nr_dirty_slices || s->l1_any_dirty || s->nr_frees;
}

int vd_qcow2_metadata_flush(struct vd_image *img)
{
	struct qcow2_state *s = qcow2_s(img);
	bool l2 = s->nr_dirty_slices > 0, l1 = s->l1_any_dirty;
	int ret;

	if (!s->refcounts_loaded) {
		return 0;
	}
	if (img->corrupt) {
		return -EIO;
	}
	if (s->mf.running) {
		return -EBUSY; /* the owner's job: vd_qcow2_mflush_drain first */
	}
	if (s->lazy_refcounts && (l1 || l2) && !s->dirty_set) {
		ret = vd_qcow2_set_incompat(s, QCOW2_INCOMPAT_DIRTY, true);
		if (ret < 0) {
			return ret;
		}
		s->dirty_set = true;
	}
	if (s->refcounts_dirty && !s->lazy_refcounts) {
		ret = write_refblocks(s, true);
		if (ret < 0) {
			return ret;
		}
		s->refcounts_dirty = false;
	}
	/* data of completed writes and the refcounts before any L2 entry */
	ret = vd_qcow2_fsync(s);
	if (ret < 0) {
		return ret;
	}
	if (l2) {
		ret = vd_qcow2_cache_writeback(s);
		if (ret == 0) {
			ret = vd_qcow2_fsync(s);
		}
		if (ret < 0) {
			return ret;
		}
	}
	if (l1) {
		ret = vd_qcow2_l1_writeback(s);
		if (ret == 0) {
			ret = vd_qcow2_fsync(s);
		}
		if (ret < 0) {
			return ret;
		}
	}
	vd_qcow2_apply_frees(img, s->nr_frees);
	return 0;
}
