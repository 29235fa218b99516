/*
 * qcow2: check and repair (QEMU qcow2-refcount.c qcow2_check_refcounts;
 * the rules are those of docs/interop/qcow2.txt and of what qemu-img check
 * reports, so that both tools agree on a verdict).
 *
 * Reading order: count_all() walks every structure and counts the
 * references to each host cluster (header, active and snapshot L1 tables,
 * L2 tables, data and compressed clusters, the snapshot table, the
 * refcount table, then the refcount blocks); compare() sets those counts
 * against the stored refcounts; vd_qcow2_check() runs them and, for a
 * repair, writes the fixes.
 *
 * What a repair changes, in this order (each step made durable before the
 * next, so that a crash in between leaves at worst leaked clusters):
 *   1. L1/L2 entries: reserved bits cleared (the offset and the data stay),
 *      entries that cannot be read (unaligned, an L2 table past the end of
 *      the file) dropped. This only removes references.
 *   2. Refcounts, when any is wrong or the refcount table itself is bad:
 *      a new table and new blocks computed from the counts are written past
 *      every referenced cluster, then the header is switched to them (one
 *      12-byte write), as QEMU's rebuild_refcount_structure.
 *   3. OFLAG_COPIED, against the refcounts now on disk. Setting COPIED
 *      only after the refcounts are 1 keeps a crash from leaving a shared
 *      cluster writable in place.
 * A repair never drops an entry that reads: a compressed descriptor whose
 * sector count runs past the end of the file is an upper bound (QEMU reads
 * it as long as the deflate stream ends in the file), and a reference past
 * the end is reported but kept, as qemu-img check -r all does.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "image/qcow2/qcow2-int.h"

#define CHECK_MAX_CLUSTERS (256ull << 20)
/* L1 bits 0-8 and 56-62 are reserved (bit 0 too, unlike QCOW2_L1_RESERVED) */
#define CHK_L1_RESERVED    0x7f000000000001ffull

/* Per cluster in chk.flags */
#define CHK_INPLACE 1u /* header, active L1, refcount table: written in place, never shared */
#define CHK_REFS    2u /* an old refcount table or block (replaced by a rebuild) */
/* What a cluster holds; two of them in one cluster is an overlap */
#define CHK_K_HDR   0x04u /* header or active L1 */
#define CHK_K_RT    0x08u /* refcount table or block */
#define CHK_K_L2    0x10u
#define CHK_K_DATA  0x20u /* data or compressed data */
#define CHK_K_SNAP  0x40u /* snapshot table or snapshot L1 */
#define CHK_KINDS   0x7cu

struct chk {
	struct vd_image *img;
	struct qcow2_state *s;
	struct vd_check_result *res;
	bool repair;
	bool rebuild;        /* the refcount structure must be rebuilt */
	uint32_t *counts;    /* references per host cluster */
	uint8_t *flags;      /* CHK_* per host cluster */
	uint8_t *rs;         /* references from the refcount table and blocks */
	uint8_t *seen;       /* repair: the flags of a first, read-only pass */
	uint64_t nclusters;  /* entries of counts/flags */
	uint64_t file_bytes; /* the file's size */
	uint64_t end;        /* highest referenced cluster + 1 */
	uint64_t rc_errors;  /* corruptions a rebuild fixes */
	bool bad_snap_off;   /* no snapshots, and an unaligned table offset */
	uint64_t *reftable;  /* as on disk (raw entries) */
	uint8_t *l2buf;
};

static void problem(struct chk *k, const char *fmt, ...) VD_PRINTF(2, 3);
static void problem(struct chk *k, const char *fmt, ...)
{
	va_list ap;

	if (k->res->first_problem[0]) {
		return;
	}
	va_start(ap, fmt);
	(void)vsnprintf(k->res->first_problem, sizeof(k->res->first_problem), fmt, ap);
	va_end(ap);
}

static void corruption(struct chk *k)
{
	k->res->corruptions++;
}

static void fixed(struct chk *k)
{
	k->res->corruptions_fixed++;
}

/* Read len bytes at off; what lies past the end of the file reads as zeroes. */
int vd_qcow2_pread_zfill(struct qcow2_state *s, void *buf, uint64_t len, uint64_t off)
{
	int64_t r = vd_file_rw_sync(s->file, VD_IO_READ, buf, len, off);

	if (r < 0) {
		return (int)r;
	}
	if ((uint64_t)r < len) {
		memset((uint8_t *)buf + r, 0, len - (uint64_t)r);
	}
	return 0;
}

/*
 * Count a reference to [off, off + len). As QEMU: the last cluster may be
 * half written, so a range may end less than one cluster past the end of
 * the file; anything further is a corruption (-1, nothing counted).
 */
static int inc(struct chk *k, uint64_t off, uint64_t len, uint8_t flag)
{
	uint64_t first, last;
	int ret = 0;

	if (len == 0) {
		return 0;
	}
	first = off >> k->s->cluster_bits;
	last = (off + len - 1) >> k->s->cluster_bits;
	if (off + len < off || off + len > k->file_bytes + k->s->cluster_bytes - 1) {
		corruption(k);
		problem(k, "reference to 0x%llx (%llu bytes) beyond the end of the file",
			(unsigned long long)off, (unsigned long long)len);
		if (off >= k->file_bytes || off + len < off || last >= k->nclusters) {
			return -1;
		}
		/*
		 * It starts in the file and is kept (a compressed cluster may
		 * still read): counted, so that a rebuild places its tables
		 * after it and the file then covers it.
		 */
		ret = -1;
	}
	for (uint64_t c = first; c <= last; c++) {
		if (k->counts[c] != UINT32_MAX) {
			k->counts[c]++;
		}
		k->flags[c] |= flag;
		if ((flag & CHK_REFS) && k->rs[c] != UINT8_MAX) {
			k->rs[c]++;
		}
	}
	k->end = VD_MAX(k->end, last + 1);
	return ret;
}

/*
 * May a repair rewrite [off, off + len)? Not where the first pass saw two
 * kinds of content in one cluster (say an L2 table that is also a data
 * cluster): a fix there would change the other one, which may be data
 * that reads. Such an overlap stays, and the re-check reports it.
 */
static bool may_write(const struct chk *k, uint64_t off, uint64_t len)
{
	if (!k->seen) {
		return false;
	}
	for (uint64_t c = off >> k->s->cluster_bits;
	     len && c <= (off + len - 1) >> k->s->cluster_bits && c < k->nclusters; c++) {
		if (__builtin_popcount(k->seen[c] & CHK_KINDS) > 1) {
			return false;
		}
	}
	return true;
}

/* One L2 entry; true if it was changed (fix: a repair may rewrite it). */
static bool check_l2_entry(struct chk *k, uint8_t *p, uint64_t l1i, uint64_t e, bool fix)
{
	struct qcow2_state *s = k->s;
	uint64_t entry = qcow2_be64(p), host;
	bool changed = false;

	if (entry & QCOW2_OFLAG_COMPRESSED) {
		unsigned int x = 62 - (s->cluster_bits - 8);
		uint64_t nsec = ((entry >> x) & ((1ull << (62 - x)) - 1)) + 1;

		if (entry & QCOW2_OFLAG_COPIED) {
			corruption(k);
			problem(k, "compressed L2 entry 0x%llx with OFLAG_COPIED",
				(unsigned long long)entry);
			if (fix) {
				qcow2_put_be64(p, entry & ~QCOW2_OFLAG_COPIED);
				fixed(k);
				changed = true;
			}
		}
		/* the sector count is an upper bound: never dropped, whatever it says */
		host = entry & ((1ull << x) - 1);
		(void)inc(k, host, nsec * 512 - (host & 511), CHK_K_DATA);
		return changed;
	}
	if (entry & QCOW2_L2_RESERVED) {
		corruption(k);
		problem(k, "L2 entry %llu/%llu with reserved bits set: 0x%llx",
			(unsigned long long)l1i, (unsigned long long)e, (unsigned long long)entry);
		if (fix) {
			entry &= ~QCOW2_L2_RESERVED;
			qcow2_put_be64(p, entry);
			fixed(k);
			changed = true;
		}
	}
	host = entry & QCOW2_OFFSET_MASK;
	if (host == 0) {
		return changed;
	}
	if (!VD_IS_ALIGNED(host, s->cluster_bytes)) {
		/* unreadable (EIO, in QEMU too): dropping it loses nothing */
		corruption(k);
		problem(k, "L2 entry %llu/%llu: unaligned cluster offset 0x%llx",
			(unsigned long long)l1i, (unsigned long long)e, (unsigned long long)host);
		if (fix) {
			uint64_t z = (entry & QCOW2_OFLAG_ZERO) && s->version >= 3
					     ? QCOW2_OFLAG_ZERO
					     : 0;

			qcow2_put_be64(p, z);
			fixed(k);
			changed = true;
		}
		return changed;
	}
	(void)inc(k, host, s->cluster_bytes, CHK_K_DATA);
	return changed;
}

/* Walk one L1 table: count its L2 tables and their clusters. */
static int walk_l1(struct chk *k, uint64_t *l1, uint64_t l1_size, bool active, bool *l1_changed)
{
	struct qcow2_state *s = k->s;
	bool fix = k->repair && active && may_write(k, s->l1_offset, l1_size * 8);

	for (uint64_t i = 0; i < l1_size; i++) {
		uint64_t l2_off;
		bool l2_changed = false;
		int ret;

		if (l1[i] & CHK_L1_RESERVED) {
			corruption(k);
			problem(k, "L1 entry %llu with reserved bits set: 0x%llx",
				(unsigned long long)i, (unsigned long long)l1[i]);
			if (fix) {
				l1[i] &= ~CHK_L1_RESERVED;
				*l1_changed = true;
				fixed(k);
			}
		}
		l2_off = l1[i] & QCOW2_OFFSET_MASK;
		if (l2_off == 0 && (l1[i] & ~CHK_L1_RESERVED)) {
			/* QEMU's check takes it for an L2 table at 0; reads, for none */
			corruption(k);
			problem(k, "L1 entry %llu: flags without an L2 table: 0x%llx",
				(unsigned long long)i, (unsigned long long)l1[i]);
			if (fix) {
				l1[i] = 0;
				*l1_changed = true;
				fixed(k);
			}
		}
		if (l2_off == 0) {
			continue;
		}
		if (!VD_IS_ALIGNED(l2_off, s->cluster_bytes)) {
			corruption(k);
			problem(k, "L1 entry %llu: unaligned L2 table offset 0x%llx",
				(unsigned long long)i, (unsigned long long)l2_off);
		}
		if (!VD_IS_ALIGNED(l2_off, s->cluster_bytes) ||
		    inc(k, l2_off, s->cluster_bytes, CHK_K_L2) < 0) {
			/* unreadable (EIO), or past the end (zeroes): nothing is lost */
			if (fix) {
				l1[i] = 0;
				*l1_changed = true;
				fixed(k);
			}
			continue;
		}
		ret = vd_qcow2_pread_zfill(s, k->l2buf, s->cluster_bytes, l2_off);
		if (ret < 0) {
			return ret;
		}
		for (uint64_t e = 0; e < s->l2_entries; e++) {
			uint8_t *p = k->l2buf + e * s->l2_entry_bytes;

			l2_changed |= check_l2_entry(
				k, p, i, e,
				k->repair && active && may_write(k, l2_off, s->cluster_bytes));
			/* qemu-img check's "allocated": guest clusters the active table maps */
			if (active &&
			    (qcow2_be64(p) & (QCOW2_OFLAG_COMPRESSED | QCOW2_OFFSET_MASK))) {
				k->res->allocated_units++;
			}
		}
		if (l2_changed) {
			ret = vd_qcow2_pwrite(s, k->l2buf, s->cluster_bytes, l2_off);
			if (ret < 0) {
				return ret;
			}
		}
	}
	return 0;
}

static int walk_snapshots(struct chk *k)
{
	struct qcow2_state *s = k->s;
	uint64_t len = 0;
	int ret = 0;

	for (uint32_t i = 0; i < s->nb_snapshots && ret == 0; i++) {
		struct qcow2_snapshot *sn = &s->snapshots[i];
		uint64_t *l1 = calloc(VD_MAX(sn->l1_size, 1u), sizeof(*l1));
		uint8_t *b = vd_qcow2_alloc_buf((uint64_t)sn->l1_size * 8);
		bool dummy = false;
		uint8_t h[40];

		if (!l1 || !b) {
			free(l1);
			free(b);
			return -ENOMEM;
		}
		if (!VD_IS_ALIGNED(sn->l1_offset, s->cluster_bytes)) {
			corruption(k);
			problem(k, "snapshot %u: unaligned L1 table offset 0x%llx", i,
				(unsigned long long)sn->l1_offset);
		} else if (inc(k, sn->l1_offset, (uint64_t)sn->l1_size * 8, CHK_K_SNAP) == 0) {
			ret = vd_qcow2_pread_zfill(s, b, (uint64_t)sn->l1_size * 8, sn->l1_offset);
			for (uint32_t j = 0; ret == 0 && j < sn->l1_size; j++) {
				l1[j] = qcow2_be64(b + (size_t)j * 8);
			}
			if (ret == 0) {
				ret = walk_l1(k, l1, sn->l1_size, false, &dummy);
			}
		}
		free(l1);
		free(b);
		/* the entry's exact length (open checked that it lies in the file) */
		if (ret == 0) {
			ret = vd_qcow2_pread(s, h, 40, s->snapshots_offset + len);
		}
		if (ret == 0 && s->version >= 3 && qcow2_be32(h + 36) < 16) {
			/* v3 entries carry the large VM state size and the disk size */
			corruption(k);
			problem(k, "snapshot table entry %u is incomplete", i);
		}
		if (ret == 0) {
			len += VD_ALIGN_UP(40ull + qcow2_be32(h + 36) + qcow2_be16(h + 12) +
						   qcow2_be16(h + 14),
					   8ull);
		}
	}
	if (ret == 0 && s->nb_snapshots) {
		(void)inc(k, s->snapshots_offset, len, CHK_K_SNAP);
	}
	return ret;
}

/* The refcount table's entries, then (last, as QEMU) the blocks they name. */
static int count_refblocks(struct chk *k)
{
	struct qcow2_state *s = k->s;
	uint64_t n = (uint64_t)s->reftable_clusters * s->cluster_bytes / 8;
	uint8_t *buf = vd_qcow2_alloc_buf(n * 8);
	int ret;

	k->reftable = calloc(n, sizeof(*k->reftable));
	if (!buf || !k->reftable) {
		free(buf);
		return -ENOMEM;
	}
	ret = vd_qcow2_pread_zfill(s, buf, n * 8, s->reftable_offset);
	for (uint64_t i = 0; ret == 0 && i < n; i++) {
		uint64_t raw = qcow2_be64(buf + i * 8), off = raw & ~511ull;

		k->reftable[i] = raw;
		if (raw & 511) {
			corruption(k);
			k->rc_errors++;
			k->rebuild = true;
			problem(k, "refcount table entry %llu has reserved bits set",
				(unsigned long long)i);
			continue;
		}
		if (off == 0) {
			continue;
		}
		if (!VD_IS_ALIGNED(off, s->cluster_bytes) || off >= k->file_bytes) {
			corruption(k);
			k->rc_errors++;
			k->rebuild = true;
			problem(k, "refcount block %llu at a bad offset 0x%llx",
				(unsigned long long)i, (unsigned long long)off);
			continue;
		}
		(void)inc(k, off, s->cluster_bytes, CHK_REFS | CHK_K_RT);
		if (k->counts[off >> s->cluster_bits] != 1) {
			corruption(k);
			k->rc_errors++;
			k->rebuild = true;
			problem(k, "refcount block %llu refcount=%u (overlaps other data)",
				(unsigned long long)i, k->counts[off >> s->cluster_bits]);
		}
	}
	free(buf);
	return ret;
}

static int count_all(struct chk *k, bool *l1_changed)
{
	struct qcow2_state *s = k->s;
	uint64_t rt_bytes = (uint64_t)s->reftable_clusters * s->cluster_bytes;
	int ret;

	(void)inc(k, 0, s->cluster_bytes, CHK_INPLACE | CHK_K_HDR);
	(void)inc(k, s->l1_offset, (uint64_t)s->l1_size * 8, CHK_INPLACE | CHK_K_HDR);
	ret = walk_l1(k, s->l1, s->l1_size, true, l1_changed);
	if (s->autoclear & 2 && !(s->incompat & QCOW2_INCOMPAT_DATA_FILE)) {
		/* raw external data without a data file: QEMU refuses the image */
		corruption(k);
		problem(k, "autoclear bit 1 (data-file-raw) without a data file");
	}
	if (s->nb_snapshots == 0 && (!VD_IS_ALIGNED(s->snapshots_offset, s->cluster_bytes) ||
				     s->snapshots_offset > (uint64_t)INT64_MAX)) {
		/* unused, but QEMU refuses to open the image */
		corruption(k);
		problem(k, "bad snapshot table offset 0x%llx",
			(unsigned long long)s->snapshots_offset);
		k->bad_snap_off = true;
	}
	if (ret == 0) {
		ret = walk_snapshots(k);
	}
	if (ret < 0) {
		return ret;
	}
	if (inc(k, s->reftable_offset, rt_bytes, CHK_INPLACE | CHK_REFS | CHK_K_RT) < 0) {
		k->rebuild = true;
		k->rc_errors++;
	}
	/* metadata written in place shares its clusters with nothing */
	for (uint64_t c = 0; c < k->nclusters; c++) {
		if ((k->flags[c] & CHK_INPLACE) && k->counts[c] > 1) {
			corruption(k);
			problem(k, "cluster %llu: metadata overlaps other metadata or data",
				(unsigned long long)c);
			if (k->flags[c] & CHK_REFS) {
				/* the refcount table: a rebuild moves it */
				k->rc_errors++;
				k->rebuild = true;
			}
		}
	}
	return count_refblocks(k);
}

/* The counts against the stored refcounts. */
static void compare(struct chk *k)
{
	struct qcow2_state *s = k->s;
	struct vd_check_result *res = k->res;
	uint64_t limit = s->reftable_entries * s->refs_per_block;

	for (uint64_t c = 0; c < VD_MAX(k->nclusters, limit); c++) {
		uint64_t r, n = c < k->nclusters ? k->counts[c] : 0;

		if (c >= k->nclusters && !s->refblocks[c / s->refs_per_block]) {
			c = (c / s->refs_per_block + 1) * s->refs_per_block - 1;
			continue;
		}
		r = vd_qcow2_refcount_get(s, c);
		if (r == n) {
			continue;
		}
		k->rebuild = true;
		if (r > n) {
			res->leaks++;
			problem(k, "leaked cluster %llu refcount=%llu reference=%llu",
				(unsigned long long)c, (unsigned long long)r,
				(unsigned long long)n);
		} else {
			corruption(k);
			k->rc_errors++;
			problem(k, "cluster %llu refcount=%llu reference=%llu",
				(unsigned long long)c, (unsigned long long)r,
				(unsigned long long)n);
		}
	}
}

/* References to c but those of the refcount structure (which a rebuild replaces). */
static uint64_t base_count(const struct chk *k, uint64_t c)
{
	if (c >= k->nclusters) {
		return 0;
	}
	return VD_MIN((uint64_t)(k->counts[c] - VD_MIN(k->counts[c], (uint32_t)k->rs[c])),
		      k->s->refcount_max);
}

/* The refcount of cluster c once the repair is done (or now, for a check). */
static uint64_t final_refcount(struct chk *k, uint64_t c)
{
	if (!k->repair || !k->rebuild) {
		return vd_qcow2_refcount_get(k->s, c);
	}
	return base_count(k, c);
}

/* COPIED must be set exactly where the refcount is 1 (active tables). */
static int check_copied(struct chk *k, bool *l1_changed)
{
	struct qcow2_state *s = k->s;

	for (uint64_t i = 0; i < s->l1_size; i++) {
		uint64_t l2_off = s->l1[i] & QCOW2_OFFSET_MASK;
		bool l2_changed = false, want;
		int ret;

		if (l2_off == 0 || !VD_IS_ALIGNED(l2_off, s->cluster_bytes) ||
		    (l2_off >> s->cluster_bits) >= k->nclusters) {
			continue;
		}
		want = final_refcount(k, l2_off >> s->cluster_bits) == 1;
		if (want != !!(s->l1[i] & QCOW2_OFLAG_COPIED)) {
			corruption(k);
			problem(k, "OFLAG_COPIED L2 cluster: l1_index=%llu", (unsigned long long)i);
			if (k->repair && may_write(k, s->l1_offset, (uint64_t)s->l1_size * 8)) {
				s->l1[i] ^= QCOW2_OFLAG_COPIED;
				*l1_changed = true;
				fixed(k);
			}
		}
		ret = vd_qcow2_pread_zfill(s, k->l2buf, s->cluster_bytes, l2_off);
		if (ret < 0) {
			return ret;
		}
		for (uint64_t e = 0; e < s->l2_entries; e++) {
			uint8_t *p = k->l2buf + e * s->l2_entry_bytes;
			uint64_t entry = qcow2_be64(p), host = entry & QCOW2_OFFSET_MASK;

			if ((entry & QCOW2_OFLAG_COMPRESSED) || host == 0 ||
			    !VD_IS_ALIGNED(host, s->cluster_bytes) ||
			    (host >> s->cluster_bits) >= k->nclusters) {
				continue;
			}
			want = final_refcount(k, host >> s->cluster_bits) == 1;
			if (want != !!(entry & QCOW2_OFLAG_COPIED)) {
				corruption(k);
				problem(k, "OFLAG_COPIED data cluster: l2_entry=0x%llx",
					(unsigned long long)entry);
				if (k->repair && may_write(k, l2_off, s->cluster_bytes)) {
					qcow2_put_be64(p, entry ^ QCOW2_OFLAG_COPIED);
					l2_changed = true;
					fixed(k);
				}
			}
		}
		if (l2_changed) {
			ret = vd_qcow2_pwrite(s, k->l2buf, s->cluster_bytes, l2_off);
			if (ret < 0) {
				return ret;
			}
		}
	}
	return 0;
}

/*
 * A new refcount table and blocks from the counts, past every referenced
 * cluster (free space), then the header switched to them: until that one
 * write the old structure is in force, after it the new one.
 */
static int rebuild(struct chk *k)
{
	struct qcow2_state *s = k->s;
	uint64_t rpb = s->refs_per_block, per = s->cluster_bytes / 8;
	uint64_t E = VD_MAX(k->end, VD_DIV_ROUND_UP(k->file_bytes, s->cluster_bytes));
	uint64_t nb = 1, nt = 1;
	uint8_t *buf, h[12];
	int ret = 0;

	for (int it = 0; it < 64; it++) {
		uint64_t nb2 = VD_DIV_ROUND_UP(E + nb + nt, rpb);
		uint64_t nt2 = VD_DIV_ROUND_UP(nb2, per);

		if (nb2 == nb && nt2 == nt) {
			break;
		}
		nb = VD_MAX(nb, nb2);
		nt = VD_MAX(nt, nt2);
	}
	if (nt * s->cluster_bytes > QCOW2_MAX_REFTABLE_BYTES) {
		return -EFBIG;
	}
	buf = vd_qcow2_alloc_buf(s->cluster_bytes);
	if (!buf) {
		return -ENOMEM;
	}
	for (uint64_t b = 0; b < nb && ret == 0; b++) {
		memset(buf, 0, s->cluster_bytes);
		for (uint64_t i = 0; i < rpb; i++) {
			uint64_t c = b * rpb + i;
			uint64_t v = c < E ? base_count(k, c) : c < E + nb + nt ? 1 : 0;

			if (v) {
				vd_qcow2_refcount_encode(buf, s->refcount_order, i, v);
			}
		}
		ret = vd_qcow2_pwrite(s, buf, s->cluster_bytes, (E + b) * s->cluster_bytes);
	}
	for (uint64_t t = 0; t < nt && ret == 0; t++) {
		memset(buf, 0, s->cluster_bytes);
		for (uint64_t i = 0; i < per && t * per + i < nb; i++) {
			qcow2_put_be64(buf + i * 8, (E + t * per + i) * s->cluster_bytes);
		}
		ret = vd_qcow2_pwrite(s, buf, s->cluster_bytes, (E + nb + t) * s->cluster_bytes);
	}
	free(buf);
	if (ret == 0) {
		ret = vd_qcow2_fsync(s);
	}
	if (ret == 0) {
		qcow2_put_be64(h, (E + nb) * s->cluster_bytes);
		qcow2_put_be32(h + 8, (uint32_t)nt);
		ret = vd_qcow2_write_header_field(s, 48, h, 12);
	}
	if (ret == 0) {
		ret = vd_qcow2_fsync(s);
	}
	if (ret == 0) {
		s->reftable_offset = (E + nb) * s->cluster_bytes;
		s->reftable_clusters = (uint32_t)nt;
	}
	return ret;
}

static void cache_drop(struct qcow2_state *s)
{
	/* nothing is dirty or loading here: forget every slice */
	memset(s->hash, 0, ((size_t)s->hash_mask + 1) * sizeof(*s->hash)); /* NOLINT */
	for (uint32_t i = 0; i < s->nr_slices; i++) {
		s->slices[i].key = 0;
		s->slices[i].hnext = NULL;
	}
}

static int write_l1(struct qcow2_state *s)
{
	int ret;

	for (uint32_t i = 0; i < s->l1_size; i++) {
		s->l1_dirty[i] = true;
	}
	s->l1_any_dirty = true;
	ret = vd_qcow2_l1_writeback(s);
	return ret < 0 ? ret : vd_qcow2_fsync(s);
}

/* Steps 2 and 3 of a repair (step 1 was written by the walk). */
static int repair(struct chk *k, bool l1_changed)
{
	struct qcow2_state *s = k->s;
	int ret = 0;

	if (l1_changed) {
		ret = write_l1(s);
	}
	if (ret == 0 && k->bad_snap_off && may_write(k, 0, 72)) {
		uint8_t z[8] = { 0 };

		ret = vd_qcow2_write_header_field(s, 64, z, 8);
		if (ret == 0) {
			s->snapshots_offset = 0;
			fixed(k);
		}
	}
	if (ret == 0 && k->rebuild) {
		ret = rebuild(k);
		if (ret == 0) {
			k->res->leaks_fixed = k->res->leaks;
			k->res->corruptions_fixed += k->rc_errors;
		}
	}
	l1_changed = false;
	if (ret == 0) {
		ret = check_copied(k, &l1_changed);
	}
	if (ret == 0 && l1_changed) {
		ret = write_l1(s);
	}
	return ret;
}

static int check_run(struct chk *k)
{
	struct qcow2_state *s = k->s;
	bool l1_changed = false;
	int ret;

	k->file_bytes = vd_qcow2_file_bytes(s);
	/* a compressed range may start in the last cluster and span two more */
	k->nclusters = VD_DIV_ROUND_UP(k->file_bytes, s->cluster_bytes) + 3;
	k->nclusters = VD_MAX(k->nclusters, s->file_end_bytes / s->cluster_bytes);
	k->file_bytes = VD_MAX(k->file_bytes, s->file_end_bytes);
	if (k->nclusters > CHECK_MAX_CLUSTERS) {
		return -EFBIG;
	}
	k->counts = calloc(k->nclusters, sizeof(*k->counts));
	k->flags = calloc(k->nclusters, 1);
	k->rs = calloc(k->nclusters, 1);
	k->l2buf = vd_qcow2_alloc_buf(s->cluster_bytes);
	if (!k->counts || !k->flags || !k->rs || !k->l2buf) {
		return -ENOMEM;
	}
	if (k->repair) {
		/* a read-only first pass: where do structures overlap? */
		k->repair = false;
		ret = count_all(k, &l1_changed);
		k->repair = true;
		k->seen = k->flags;
		k->flags = calloc(k->nclusters, 1);
		free(k->reftable);
		k->reftable = NULL;
		memset(k->counts, 0, k->nclusters * sizeof(*k->counts));
		memset(k->rs, 0, k->nclusters);
		memset(k->res, 0, sizeof(*k->res));
		k->rebuild = false;
		k->rc_errors = 0;
		k->end = 0;
		if (ret < 0 || !k->flags) {
			return ret < 0 ? ret : -ENOMEM;
		}
	}
	ret = count_all(k, &l1_changed);
	if (ret < 0) {
		return ret;
	}
	compare(k);
	k->res->total_units = VD_DIV_ROUND_UP(s->size_bytes, s->cluster_bytes);
	if (k->repair) {
		return repair(k, l1_changed);
	}
	return check_copied(k, &l1_changed);
}

int vd_qcow2_check(struct vd_image *img, bool repair, struct vd_check_result *res,
		   struct vd_err *err)
{
	struct qcow2_state *s = qcow2_s(img);
	struct chk k = { .img = img, .s = s, .res = res, .repair = repair };
	bool loaded_here = false;
	int ret;

	memset(res, 0, sizeof(*res));
	if (repair && img->readonly) {
		return vd_err_set(err, EROFS, "%s: read-only", img->path);
	}
	if (!s->refcounts_loaded) {
		ret = vd_qcow2_refcounts_load(img, err);
		if (ret < 0) {
			return ret;
		}
		loaded_here = true;
	} else if (!img->readonly && !img->corrupt) {
		ret = vd_qcow2_metadata_flush(img);
		if (ret < 0) {
			return vd_err_set(err, -ret, "%s: writing metadata back", img->path);
		}
	}
	ret = check_run(&k);
	if (ret == -EFBIG && !k.counts) {
		vd_err_set(err, EFBIG, "%s: too many clusters to check (%llu)", img->path,
			   (unsigned long long)k.nclusters);
	} else if (ret < 0) {
		vd_err_set(err, -ret, "%s: %s", img->path, repair ? "repairing" : "checking");
	}
	if (repair) {
		cache_drop(s);
		if (!loaded_here) {
			int r2;

			vd_qcow2_refcounts_free(s);
			r2 = vd_qcow2_refcounts_load(img, ret < 0 ? NULL : err);
			ret = ret < 0 ? ret : r2;
		}
		if (ret == 0 && img->corrupt && res->corruptions == res->corruptions_fixed &&
		    !s->reftable_bad) {
			/*
			 * Everything found was fixed: the on-disk mark goes, once
			 * the repair's own writes are durable (as qemu-img check -r).
			 */
			if ((s->incompat & QCOW2_INCOMPAT_CORRUPT) && img->opts.repair &&
			    vd_qcow2_fsync(s) == 0) {
				(void)vd_qcow2_set_incompat(s, QCOW2_INCOMPAT_CORRUPT, false);
			}
			img->corrupt = s->incompat & QCOW2_INCOMPAT_CORRUPT;
			s->warned_corrupt = img->corrupt;
		}
	}
	free(k.counts);
	free(k.flags);
	free(k.seen);
	free(k.rs);
	free(k.reftable);
	free(k.l2buf);
	if (loaded_here) {
		vd_qcow2_refcounts_free(s);
	}
	return ret;
}
