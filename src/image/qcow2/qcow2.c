/*
 * qcow2: open (header, feature bits, extensions, snapshot table), close,
 * info, create, resize, queue setup and the driver vtable.
 * Format: QEMU docs/interop/qcow2.txt. Everything read from the file is
 * checked against the file size and fixed caps before it is used.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/log.h"
#include "image/qcow2/qcow2-int.h"
#include "image/qcow2/qcow2.h"

static __thread unsigned int open_depth; /* backing chain depth being opened */

void *vd_qcow2_alloc_buf(size_t len)
{
	void *p;

	if (len == 0) {
		len = 1;
	}
	if (posix_memalign(&p, VD_PAGE_SIZE, VD_ALIGN_UP(len, (size_t)VD_PAGE_SIZE)) != 0) {
		return NULL;
	}
	memset(p, 0, len);
	return p;
}

int vd_qcow2_pread(struct qcow2_state *s, void *buf, uint64_t len, uint64_t off)
{
	int64_t r = vd_file_rw_sync(s->file, VD_IO_READ, buf, len, off);

	if (r < 0) {
		return (int)r;
	}
	return (uint64_t)r == len ? 0 : -EIO;
}

int vd_qcow2_pwrite(struct qcow2_state *s, const void *buf, uint64_t len, uint64_t off)
{
	int64_t r = vd_file_rw_sync(s->file, VD_IO_WRITE, (void *)buf, len, off);

	if (r < 0) {
		return (int)r;
	}
	return (uint64_t)r == len ? 0 : -EIO;
}

int vd_qcow2_fsync(struct qcow2_state *s)
{
	int64_t r = vd_file_rw_sync(s->file, VD_IO_FLUSH, NULL, 0, 0);

	return r < 0 ? (int)r : 0;
}

int vd_qcow2_write_header_field(struct qcow2_state *s, uint64_t off, const void *buf, size_t len)
{
	return vd_qcow2_pwrite(s, buf, len, off);
}

/* Set or clear incompatible feature bits on disk (v3 only), durably. */
int vd_qcow2_set_incompat(struct qcow2_state *s, uint64_t bits, bool on)
{
	uint64_t v = on ? (s->incompat | bits) : (s->incompat & ~bits);
	uint8_t b[8];
	int ret;

	if (s->version < 3 || v == s->incompat) {
		return 0;
	}
	if (on) {
		/* whatever the bit protects must not reach the disk before it */
		ret = vd_qcow2_fsync(s);
		if (ret < 0) {
			return ret;
		}
	}
	qcow2_put_be64(b, v);
	ret = vd_qcow2_write_header_field(s, 72, b, 8);
	if (ret == 0) {
		ret = vd_qcow2_fsync(s);
	}
	if (ret == 0) {
		s->incompat = v;
	}
	return ret;
}

void vd_qcow2_signal_corruption(struct vd_image *img, const char *fmt, ...)
{
	struct qcow2_state *s = qcow2_s(img);
	char msg[256];
	va_list ap;

	va_start(ap, fmt);
	(void)vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	img->corrupt = true;
	if (!s->warned_corrupt) {
		s->warned_corrupt = true;
		vd_log(VD_LOG_ERR, "qcow2: %s: corrupt image, refused for writing: %s", img->path,
		       msg);
		if (!img->readonly && s->version >= 3) {
			(void)vd_qcow2_set_incompat(s, QCOW2_INCOMPAT_CORRUPT, true);
		}
	}
}

static int qcow2_probe(const void *hdr, size_t len)
{
	const uint8_t *p = hdr;

	if (len < 8 || qcow2_be32(p) != QCOW2_MAGIC) {
		return 0;
	}
	return (qcow2_be32(p + 4) == 2 || qcow2_be32(p + 4) == 3) ? 100 : 50;
}

static const char *feature_name(const uint8_t *table, uint32_t table_len, uint8_t type, uint8_t bit,
				char *buf, size_t buflen)
{
	for (uint32_t i = 0; table && i + 48 <= table_len; i += 48) {
		if (table[i] == type && table[i + 1] == bit) {
			size_t n = strnlen((const char *)table + i + 2, 46);

			snprintf(buf, buflen, "%.*s", (int)n, (const char *)table + i + 2);
			return buf;
		}
	}
	snprintf(buf, buflen, "bit %u", bit);
	return buf;
}

static int parse_snapshots(struct vd_image *img, uint64_t file_bytes, struct vd_err *err)
{
	struct qcow2_state *s = qcow2_s(img);
	uint64_t off = s->snapshots_offset;
	uint8_t h[40];
	int ret;

	if (s->nb_snapshots == 0) {
		return 0;
	}
	if (s->nb_snapshots > QCOW2_MAX_SNAPSHOTS) {
		return vd_err_set(err, EINVAL, "%s: too many snapshots (%u)", img->path,
				  s->nb_snapshots);
	}
	if (!VD_IS_ALIGNED(off, s->cluster_bytes) || off == 0 || off >= file_bytes) {
		return vd_err_set(err, EINVAL, "%s: bad snapshot table offset 0x%llx", img->path,
				  (unsigned long long)off);
	}
	s->snapshots = calloc(s->nb_snapshots, sizeof(*s->snapshots));
	if (!s->snapshots) {
		return vd_err_set(err, ENOMEM, "out of memory");
	}
	for (uint32_t i = 0; i < s->nb_snapshots; i++) {
		struct qcow2_snapshot *sn = &s->snapshots[i];
		uint32_t extra, id_len, name_len;
		uint8_t ex[24] = { 0 };

		if (off > file_bytes || file_bytes - off < 40 ||
		    off - s->snapshots_offset > (64u << 20)) {
			return vd_err_set(err, EINVAL, "%s: snapshot table past the end",
					  img->path);
		}
		ret = vd_qcow2_pread(s, h, 40, off);
		if (ret < 0) {
			return vd_err_set(err, -ret, "%s: reading the snapshot table", img->path);
		}
		sn->l1_offset = qcow2_be64(h);
		sn->l1_size = qcow2_be32(h + 8);
		id_len = qcow2_be16(h + 12);
		name_len = qcow2_be16(h + 14);
		sn->date_sec = qcow2_be32(h + 16);
		sn->vm_state_size = qcow2_be32(h + 32);
		extra = qcow2_be32(h + 36);
		sn->disk_size = s->size_bytes;
		if (extra > 1024 || (uint64_t)extra + id_len + name_len > file_bytes - off - 40) {
			return vd_err_set(err, EINVAL, "%s: snapshot %u is truncated", img->path,
					  i);
		}
		if (extra >= 8) {
			ret = vd_qcow2_pread(s, ex, VD_MIN(extra, 24u), off + 40);
			if (ret < 0) {
				return vd_err_set(err, -ret, "%s: reading snapshot %u", img->path,
						  i);
			}
			sn->vm_state_size = qcow2_be64(ex);
			if (extra >= 16) {
				sn->disk_size = qcow2_be64(ex + 8);
			}
		}
		if (sn->l1_size > QCOW2_MAX_L1_BYTES / 8 ||
		    (sn->l1_size && (!VD_IS_ALIGNED(sn->l1_offset, s->cluster_bytes) ||
				     sn->l1_offset >= file_bytes ||
				     (uint64_t)sn->l1_size * 8 > file_bytes - sn->l1_offset))) {
			return vd_err_set(err, EINVAL, "%s: snapshot %u has a bad L1 table",
					  img->path, i);
		}
		sn->id = calloc(1, id_len + 1u);
		sn->name = calloc(1, name_len + 1u);
		if (!sn->id || !sn->name) {
			return vd_err_set(err, ENOMEM, "out of memory");
		}
		if (id_len && vd_qcow2_pread(s, sn->id, id_len, off + 40 + extra) < 0) {
			return vd_err_set(err, EIO, "%s: reading snapshot %u", img->path, i);
		}
		if (name_len &&
		    vd_qcow2_pread(s, sn->name, name_len, off + 40 + extra + id_len) < 0) {
			return vd_err_set(err, EIO, "%s: reading snapshot %u", img->path, i);
		}
		off += VD_ALIGN_UP(40ull + extra + id_len + name_len, 8ull);
	}
	return 0;
}

static int parse_extensions(struct vd_image *img, const uint8_t *c0, uint64_t end, uint8_t **ftable,
			    uint32_t *ftable_len, struct vd_err *err)
{
	struct qcow2_state *s = qcow2_s(img);
	uint64_t off = s->version >= 3 ? s->header_bytes : 72;

	while (off + 8 <= end) {
		uint32_t type = qcow2_be32(c0 + off);
		uint32_t len = qcow2_be32(c0 + off + 4);

		off += 8;
		if (type == QCOW2_EXT_END) {
			return 0;
		}
		if (len > end - off) {
			return vd_err_set(err, EINVAL, "%s: header extension 0x%x is too long (%u)",
					  img->path, type, len);
		}
		switch (type) {
		case QCOW2_EXT_BACKING_FORMAT:
			if (len == 0 || len > 64) {
				return vd_err_set(err, EINVAL, "%s: bad backing format extension",
						  img->path);
			}
			free(s->backing_format);
			s->backing_format = strndup((const char *)c0 + off, len);
			if (!s->backing_format) {
				return vd_err_set(err, ENOMEM, "out of memory");
			}
			break;
		case QCOW2_EXT_FEATURE_TABLE:
			*ftable = (uint8_t *)c0 + off;
			*ftable_len = len;
			break;
		case QCOW2_EXT_DATA_FILE:
			return vd_err_set(err, ENOTSUP, "%s: external data files are not supported",
					  img->path);
		default:
			break; /* unknown extensions are ignored (they are not incompatible) */
		}
		off += VD_ALIGN_UP((uint64_t)len, 8ull);
	}
	return 0;
}

static int open_backing(struct vd_image *img, struct vd_err *err)
{
	struct qcow2_state *s = qcow2_s(img);
	char *path = NULL;
	int ret;

	if (open_depth >= QCOW2_MAX_CHAIN_DEPTH) {
		return vd_err_set(err, ELOOP, "%s: backing chain deeper than %u", img->path,
				  QCOW2_MAX_CHAIN_DEPTH);
	}
	if (s->backing_file[0] == '/') {
		path = strdup(s->backing_file);
	} else {
		char *dup = strdup(img->path);

		if (dup && asprintf(&path, "%s/%s", dirname(dup), s->backing_file) < 0) {
			path = NULL;
		}
		free(dup);
	}
	if (!path) {
		return vd_err_set(err, ENOMEM, "out of memory");
	}
	open_depth++;
	ret = vd_image_open_backing(img, s->backing_file, path, s->backing_format, &img->backing,
				    err);
	open_depth--;
	free(path);
	return ret;
}

static int load_l1(struct vd_image *img, uint64_t off, uint32_t entries, struct vd_err *err)
{
	struct qcow2_state *s = qcow2_s(img);
	uint8_t *buf;
	int ret;

	s->l1 = calloc(VD_MAX(entries, 1u), sizeof(*s->l1));
	s->l1_dirty = calloc(VD_MAX(entries, 1u), sizeof(*s->l1_dirty));
	if (!s->l1 || !s->l1_dirty) {
		return vd_err_set(err, ENOMEM, "out of memory");
	}
	if (entries == 0) {
		return 0;
	}
	buf = vd_qcow2_alloc_buf((size_t)entries * 8);
	if (!buf) {
		return vd_err_set(err, ENOMEM, "out of memory");
	}
	ret = vd_qcow2_pread(s, buf, (uint64_t)entries * 8, off);
	if (ret < 0) {
		free(buf);
		return vd_err_set(err, -ret, "%s: reading the L1 table", img->path);
	}
	for (uint32_t i = 0; i < entries; i++) {
		s->l1[i] = qcow2_be64(buf + (size_t)i * 8);
	}
	free(buf);
	return 0;
}

static int select_snapshot(struct vd_image *img, const char *want, struct vd_err *err)
{
	struct qcow2_state *s = qcow2_s(img);

	for (uint32_t i = 0; i < s->nb_snapshots; i++) {
		struct qcow2_snapshot *sn = &s->snapshots[i];

		if (strcmp(sn->id, want) == 0 || strcmp(sn->name, want) == 0) {
			if (sn->disk_size == 0 || sn->disk_size > (uint64_t)INT64_MAX ||
			    VD_DIV_ROUND_UP(sn->disk_size, s->cluster_bytes * s->l2_entries) >
				    sn->l1_size) {
				return vd_err_set(err, EINVAL, "%s: snapshot %s has a bad size",
						  img->path, want);
			}
			s->size_bytes = VD_ALIGN_UP(sn->disk_size, 512ull);
			s->l1_offset = sn->l1_offset;
			s->l1_size = sn->l1_size;
			return 0;
		}
	}
	return vd_err_set(err, ENOENT, "%s: no snapshot '%s'", img->path, want);
}

static void qcow2_close(struct vd_image *img);

/*
 * Every metadata cluster must have a refcount, or an allocation could hand
 * it out and overwrite it (QEMU checks overlaps on every write; we check
 * once here). A mismatch marks the image corrupt in memory: reads work,
 * writes fail, and check --repair rebuilds the refcounts.
 */
static bool metadata_refcounts_ok(struct vd_image *img)
{
	struct qcow2_state *s = qcow2_s(img);
	uint64_t cb = s->cluster_bytes;

#define RC_OK(off) (vd_qcow2_refcount_get(s, (off) >> s->cluster_bits) > 0)
	if (!RC_OK(0)) {
		return false;
	}
	for (uint64_t o = 0; o < (uint64_t)s->l1_size * 8; o += cb) {
		if (!RC_OK(s->l1_offset + o)) {
			return false;
		}
	}
	for (uint64_t o = 0; o < (uint64_t)s->reftable_clusters * cb; o += cb) {
		if (!RC_OK(s->reftable_offset + o)) {
			return false;
		}
	}
	for (uint64_t i = 0; i < s->reftable_entries; i++) {
		if (s->reftable[i] && !RC_OK(s->reftable[i])) {
			return false;
		}
	}
	if (s->nb_snapshots && !RC_OK(s->snapshots_offset)) {
		return false;
	}
	for (uint32_t i = 0; i < s->nb_snapshots; i++) {
		if (s->snapshots[i].l1_size && !RC_OK(s->snapshots[i].l1_offset)) {
			return false;
		}
	}
	for (uint32_t i = 0; i < s->l1_size; i++) {
		uint64_t l2 = s->l1[i] & QCOW2_OFFSET_MASK;

		if (l2 && (!VD_IS_ALIGNED(l2, cb) || !RC_OK(l2))) {
			return false;
		}
	}
#undef RC_OK
	return true;
}

static int qcow2_open(struct vd_image *img, const struct vd_image_opts *o, struct vd_err *err)
{
	struct qcow2_state *s = qcow2_s(img);
	uint8_t *c0 = NULL, *ftable = NULL;
	uint32_t ftable_len = 0;
	uint64_t file_bytes, l1_need, bfo;
	uint32_t bfs;
	int ret;

	if (o->snapshot) {
		img->readonly = true;
	}
	ret = vd_image_open_file(img, img->path, &s->file, err);
	if (ret < 0) {
		return ret;
	}
	file_bytes = s->file->info.size_bytes;
	c0 = vd_qcow2_alloc_buf(4096);
	if (!c0) {
		ret = vd_err_set(err, ENOMEM, "out of memory");
		goto fail;
	}
	if (file_bytes < 72) {
		ret = vd_err_set(err, EINVAL, "%s: too small for a qcow2 image", img->path);
		goto fail;
	}
	ret = vd_qcow2_pread(s, c0, 512, 0);
	if (ret < 0) {
		ret = vd_err_set(err, -ret, "%s: reading the header", img->path);
		goto fail;
	}
	if (qcow2_be32(c0) != QCOW2_MAGIC) {
		ret = vd_err_set(err, EINVAL, "%s: not a qcow2 image", img->path);
		goto fail;
	}
	s->version = qcow2_be32(c0 + 4);
	if (s->version != 2 && s->version != 3) {
		ret = vd_err_set(err, ENOTSUP, "%s: qcow2 version %u is not supported", img->path,
				 s->version);
		goto fail;
	}
	bfo = qcow2_be64(c0 + 8);
	bfs = qcow2_be32(c0 + 16);
	s->cluster_bits = qcow2_be32(c0 + 20);
	s->size_bytes = qcow2_be64(c0 + 24);
	s->l1_size = qcow2_be32(c0 + 36);
	s->l1_offset = qcow2_be64(c0 + 40);
	s->reftable_offset = qcow2_be64(c0 + 48);
	s->reftable_clusters = qcow2_be32(c0 + 56);
	s->nb_snapshots = qcow2_be32(c0 + 60);
	s->snapshots_offset = qcow2_be64(c0 + 64);
	if (s->cluster_bits < QCOW2_MIN_CLUSTER_BITS || s->cluster_bits > QCOW2_MAX_CLUSTER_BITS) {
		ret = vd_err_set(err, EINVAL, "%s: unsupported cluster size 2^%u", img->path,
				 s->cluster_bits);
		goto fail;
	}
	s->cluster_bytes = 1ull << s->cluster_bits;
	if (qcow2_be32(c0 + 32) != 0) {
		ret = vd_err_set(err, ENOTSUP, "%s: encrypted images are not supported", img->path);
		goto fail;
	}
	if (s->version == 2) {
		s->header_bytes = 72;
		s->refcount_order = 4;
	} else {
		s->incompat = qcow2_be64(c0 + 72);
		s->compat = qcow2_be64(c0 + 80);
		s->autoclear = qcow2_be64(c0 + 88);
		s->refcount_order = qcow2_be32(c0 + 96);
		s->header_bytes = qcow2_be32(c0 + 100);
		if (s->header_bytes < 104 || s->header_bytes > s->cluster_bytes ||
		    s->header_bytes > 4096 - 8) {
			ret = vd_err_set(err, EINVAL, "%s: bad header length %u", img->path,
					 s->header_bytes);
			goto fail;
		}
		if (s->header_bytes > 104) {
			s->compression_type = c0[104];
		}
	}
	if (s->refcount_order > 6) {
		ret = vd_err_set(err, EINVAL, "%s: bad refcount order %u", img->path,
				 s->refcount_order);
		goto fail;
	}
	/* header extensions and the backing file name live in the first cluster */
	{
		uint64_t ext_end = VD_MIN(s->cluster_bytes, 4096ull);

		if (s->cluster_bytes > 512) {
			ret = vd_qcow2_pread(s, c0, ext_end, 0);
			if (ret < 0) {
				ret = vd_err_set(err, -ret, "%s: reading the header", img->path);
				goto fail;
			}
		}
		if (bfo && bfo < ext_end) {
			ext_end = bfo;
		}
		ret = parse_extensions(img, c0, ext_end, &ftable, &ftable_len, err);
		if (ret < 0) {
			goto fail;
		}
	}
	if (s->incompat & ~QCOW2_INCOMPAT_KNOWN) {
		char name[64];
		uint64_t unknown = s->incompat & ~QCOW2_INCOMPAT_KNOWN;
		uint8_t bit = (uint8_t)__builtin_ctzll(unknown);

		if (unknown & QCOW2_INCOMPAT_DATA_FILE) {
			ret = vd_err_set(err, ENOTSUP, "%s: external data files are not supported",
					 img->path);
			goto fail;
		}
		ret = vd_err_set(err, ENOTSUP,
				 "%s: unsupported incompatible qcow2 feature: %s (features 0x%llx)",
				 img->path,
				 feature_name(ftable, ftable_len, 0, bit, name, sizeof(name)),
				 (unsigned long long)unknown);
		goto fail;
	}
	if (s->compression_type != 0) {
		ret = vd_err_set(err, ENOTSUP,
				 "%s: compression type %u is not supported (zlib only)", img->path,
				 s->compression_type);
		goto fail;
	}
	if ((s->incompat & QCOW2_INCOMPAT_CORRUPT) && !img->readonly && !img->opts.repair) {
		ret = vd_err_set(err, EIO,
				 "%s: the image is marked corrupt; open it read-only or repair it "
				 "with vdisk check --repair",
				 img->path);
		goto fail;
	}
	if (s->incompat & QCOW2_INCOMPAT_CORRUPT) {
		img->corrupt = true;
	}
	s->ext_l2 = s->incompat & QCOW2_INCOMPAT_EXTL2;
	if (s->ext_l2 && s->cluster_bits < 14) {
		ret = vd_err_set(err, EINVAL, "%s: extended L2 needs clusters of 16 KiB or more",
				 img->path);
		goto fail;
	}
	s->l2_entry_bytes = s->ext_l2 ? 16 : 8;
	s->l2_entries = s->cluster_bytes / s->l2_entry_bytes;
	s->subcluster_bytes = s->ext_l2 ? s->cluster_bytes / QCOW2_SUBCLUSTERS : s->cluster_bytes;
	s->lazy_refcounts = s->compat & QCOW2_COMPAT_LAZY_REFCOUNTS;
	s->dirty_on_open = s->incompat & QCOW2_INCOMPAT_DIRTY;
	snprintf(s->subformat, sizeof(s->subformat), "v%u", s->version);

	/* backing file name */
	if (bfo) {
		if (bfs == 0 || bfs > QCOW2_MAX_BACKING_NAME || bfo > s->cluster_bytes ||
		    bfs > s->cluster_bytes - bfo || bfo + bfs > file_bytes) {
			ret = vd_err_set(err, EINVAL,
					 "%s: bad backing file name (offset %llu, %u bytes)",
					 img->path, (unsigned long long)bfo, bfs);
			goto fail;
		}
		s->backing_file = calloc(1, bfs + 1u);
		if (!s->backing_file) {
			ret = vd_err_set(err, ENOMEM, "out of memory");
			goto fail;
		}
		ret = vd_qcow2_pread(s, s->backing_file, bfs, bfo);
		if (ret < 0 || strlen(s->backing_file) != bfs) {
			ret = vd_err_set(err, ret < 0 ? -ret : EINVAL, "%s: bad backing file name",
					 img->path);
			goto fail;
		}
	}
	/* sizes and tables */
	if (s->size_bytes > (1ull << 62) ||
	    s->size_bytes / s->cluster_bytes / s->l2_entries > QCOW2_MAX_L1_BYTES / 8) {
		ret = vd_err_set(err, EFBIG, "%s: virtual size %llu is too large", img->path,
				 (unsigned long long)s->size_bytes);
		goto fail;
	}
	if (s->l1_size > QCOW2_MAX_L1_BYTES / 8) {
		ret = vd_err_set(err, EFBIG, "%s: L1 table too large (%u entries)", img->path,
				 s->l1_size);
		goto fail;
	}
	if (s->l1_size &&
	    (!VD_IS_ALIGNED(s->l1_offset, s->cluster_bytes) || s->l1_offset == 0 ||
	     s->l1_offset >= file_bytes || (uint64_t)s->l1_size * 8 > file_bytes - s->l1_offset)) {
		ret = vd_err_set(err, EINVAL, "%s: bad L1 table offset 0x%llx", img->path,
				 (unsigned long long)s->l1_offset);
		goto fail;
	}
	if (s->reftable_clusters == 0 ||
	    (uint64_t)s->reftable_clusters * s->cluster_bytes > QCOW2_MAX_REFTABLE_BYTES ||
	    !VD_IS_ALIGNED(s->reftable_offset, s->cluster_bytes) || s->reftable_offset == 0 ||
	    s->reftable_offset >= file_bytes) {
		ret = vd_err_set(err, EINVAL, "%s: bad refcount table (offset 0x%llx, %u clusters)",
				 img->path, (unsigned long long)s->reftable_offset,
				 s->reftable_clusters);
		goto fail;
	}
	ret = parse_snapshots(img, file_bytes, err);
	if (ret < 0) {
		goto fail;
	}
	if (o->snapshot) {
		ret = select_snapshot(img, o->snapshot, err);
		if (ret < 0) {
			goto fail;
		}
	}
	l1_need = VD_DIV_ROUND_UP(s->size_bytes, s->cluster_bytes * s->l2_entries);
	if (l1_need > s->l1_size) {
		ret = vd_err_set(err, EINVAL, "%s: L1 table too small for the virtual size",
				 img->path);
		goto fail;
	}
	if (!VD_IS_ALIGNED(s->size_bytes, 512ull)) {
		/* the layers above work in sectors: the tail is not reachable */
		s->size_bytes = VD_ALIGN_UP(s->size_bytes, 512ull) - 512;
	}
	ret = load_l1(img, s->l1_offset, s->l1_size, err);
	if (ret < 0) {
		goto fail;
	}
	{
		uint64_t cb = o->l2_cache_bytes, eb = o->l2_cache_entry_bytes;

		if (cb == 0) {
			cb = VD_MIN((uint64_t)QCOW2_DEFAULT_CACHE_MAX,
				    VD_MAX(l1_need, 1ull) * s->cluster_bytes);
		}
		ret = vd_qcow2_cache_init(img, cb, eb, err);
		if (ret < 0) {
			goto fail;
		}
	}
	if (!img->readonly) {
		ret = vd_qcow2_refcounts_load(img, err);
		if (ret < 0) {
			goto fail;
		}
		if (s->dirty_on_open) {
			struct vd_check_result res;

			vd_log(VD_LOG_NOTICE,
			       "qcow2: %s: dirty (lazy refcounts): rebuilding refcounts",
			       img->path);
			ret = vd_qcow2_check(img, true, &res, err);
			if (ret < 0) {
				goto fail;
			}
			ret = vd_qcow2_set_incompat(s, QCOW2_INCOMPAT_DIRTY, false);
			if (ret < 0) {
				ret = vd_err_set(err, -ret, "%s: clearing the dirty bit",
						 img->path);
				goto fail;
			}
		}
		if (!img->corrupt && (s->reftable_bad || !metadata_refcounts_ok(img))) {
			img->corrupt = true;
			s->warned_corrupt = true;
			vd_log(VD_LOG_ERR,
			       "qcow2: %s: metadata clusters without a refcount: refused for "
			       "writing until `vdisk check --repair`",
			       img->path);
		}
		if (s->autoclear) {
			/* we maintain none of them: clear them as QEMU does unknown ones */
			uint8_t b[8] = { 0 };

			ret = vd_qcow2_write_header_field(s, 88, b, 8);
			if (ret < 0) {
				ret = vd_err_set(err, -ret, "%s: writing the header", img->path);
				goto fail;
			}
			s->autoclear = 0;
		}
	}
	if (s->backing_file) {
		ret = open_backing(img, err);
		if (ret < 0) {
			goto fail;
		}
		s->has_backing = true;
	}
	free(c0);
	return 0;

fail:
	free(c0);
	qcow2_close(img);
	return ret;
}

static void qcow2_close(struct vd_image *img)
{
	struct qcow2_state *s = qcow2_s(img);

	if (s->file && !img->readonly && !img->corrupt && s->refcounts_loaded) {
		int ret = vd_qcow2_metadata_flush(img);

		if (ret == 0 && s->lazy_refcounts && s->dirty_set) {
			s->lazy_refcounts = false; /* write the refcounts this time */
			s->refcounts_dirty = true;
			for (uint64_t i = 0; i < s->reftable_entries; i++) {
				if (s->refblocks[i]) {
					s->refblock_dirty[i] = true;
				}
			}
			ret = vd_qcow2_metadata_flush(img);
			if (ret == 0) {
				ret = vd_qcow2_set_incompat(s, QCOW2_INCOMPAT_DIRTY, false);
			}
		}
		if (ret < 0) {
			vd_log(VD_LOG_ERR, "qcow2: %s: writing metadata back on close: %s",
			       img->path, strerror(-ret));
		} else if (s->prealloc_end_bytes > s->file_end_bytes) {
			/* trim what fallocate grew ahead of the allocator, unused */
			(void)vd_file_resize(s->file, s->file_end_bytes);
		}
	}
	vd_image_close(img->backing);
	img->backing = NULL;
	vd_qcow2_cache_fini(s);
	vd_qcow2_refcounts_free(s);
	vd_file_close(s->file);
	s->file = NULL;
	free(s->l1);
	s->l1 = NULL;
	free(s->l1_dirty);
	s->l1_dirty = NULL;
	for (uint32_t i = 0; s->snapshots && i < s->nb_snapshots; i++) {
		free(s->snapshots[i].id);
		free(s->snapshots[i].name);
	}
	free(s->snapshots);
	s->snapshots = NULL;
	free(s->backing_file);
	s->backing_file = NULL;
	free(s->backing_format);
	s->backing_format = NULL;
}

static int qcow2_get_info(struct vd_image *img, struct vd_image_info *info)
{
	struct qcow2_state *s = qcow2_s(img);
	struct stat st;

	info->size_bytes = s->size_bytes;
	info->sector_bytes = VD_MAX(512u, s->file->info.logical_block_bytes);
	info->physical_sector_bytes =
		VD_MAX(info->sector_bytes, s->file->info.physical_block_bytes);
	info->readonly = img->readonly;
	info->discard = true;
	info->discard_granularity_bytes = (uint32_t)s->cluster_bytes;
	info->discard_alignment_bytes = 0;
	info->flush = true;
	if (s->file->fd >= 0 && fstat(s->file->fd, &st) == 0) {
		info->allocated_bytes = (uint64_t)st.st_blocks * 512u;
	}
	info->cluster_bytes = (uint32_t)s->cluster_bytes;
	info->subformat = s->subformat;
	info->backing_file = s->backing_file;
	info->backing_format = s->backing_format;
	info->dirty = s->dirty_on_open;
	info->corrupt = img->corrupt;
	return 0;
}

/* ---- snapshots (public, qcow2.h) ---- */

int vd_qcow2_snapshot_count(struct vd_image *img)
{
	if (!img || img->driver != &vd_qcow2_driver) {
		return -EINVAL;
	}
	return (int)qcow2_s(img)->nb_snapshots;
}

int vd_qcow2_snapshot_get(struct vd_image *img, unsigned int i, struct vd_qcow2_snapshot_info *out)
{
	struct qcow2_state *s;

	if (!img || img->driver != &vd_qcow2_driver) {
		return -EINVAL;
	}
	s = qcow2_s(img);
	if (i >= s->nb_snapshots) {
		return -ENOENT;
	}
	out->id = s->snapshots[i].id;
	out->name = s->snapshots[i].name;
	out->size_bytes = s->snapshots[i].disk_size;
	out->vm_state_bytes = s->snapshots[i].vm_state_size;
	out->date_sec = s->snapshots[i].date_sec;
	return 0;
}

/* ---- create ---- */

struct layout {
	uint64_t cb;  /* cluster bytes */
	uint64_t rpb; /* refcounts per block */
	uint64_t l1_entries, l1_clusters;
	uint64_t nl2, ndata; /* preallocated */
	uint64_t rt_clusters, nrb;
	uint64_t total;                               /* clusters */
	uint64_t rt_at, rb_at, l1_at, l2_at, data_at; /* cluster indexes */
};

static void plan(struct layout *l)
{
	uint64_t rt = 1, nrb = 1;

	for (int iter = 0; iter < 64; iter++) {
		uint64_t total = 1 + rt + nrb + l->l1_clusters + l->nl2 + l->ndata;
		uint64_t nrb2 = VD_DIV_ROUND_UP(total, l->rpb);
		uint64_t rt2 = VD_MAX(1ull, VD_DIV_ROUND_UP(nrb2 * 8, l->cb));

		if (nrb2 == nrb && rt2 == rt) {
			break;
		}
		nrb = VD_MAX(nrb, nrb2);
		rt = VD_MAX(rt, rt2);
	}
	l->rt_clusters = rt;
	l->nrb = nrb;
	l->rt_at = 1;
	l->rb_at = 1 + rt;
	l->l1_at = l->rb_at + nrb;
	l->l2_at = l->l1_at + l->l1_clusters;
	l->data_at = l->l2_at + l->nl2;
	l->total = l->data_at + l->ndata;
}

static int write_all(int fd, const void *buf, size_t len, uint64_t off)
{
	const uint8_t *p = buf;

	while (len) {
		ssize_t n = pwrite(fd, p, len, (off_t)off);

		if (n < 0) {
			if (errno == EINTR) {
				continue;
			}
			return -errno;
		}
		p += n;
		len -= (size_t)n;
		off += (uint64_t)n;
	}
	return 0;
}

static int qcow2_create(const char *path, const struct vd_image_create_opts *o, struct vd_err *err)
{
	bool overwrite = o->flags & VD_IMAGE_CREATE_OVERWRITE;
	uint64_t cb = o->cluster_bytes ? o->cluster_bytes : 65536;
	unsigned int compat = o->compat ? o->compat : 3;
	uint32_t rbits = o->refcount_bits ? o->refcount_bits : 16;
	unsigned int order = (unsigned int)__builtin_ctz(rbits);
	bool prealloc = false;
	const char *bfmt = o->backing_format;
	uint64_t size = o->size_bytes;
	struct layout l = { 0 };
	uint8_t *buf = NULL;
	uint64_t l2e, hdr_len, off;
	int fd, ret;

	if (cb < 512 || cb > (2u << 20) || (cb & (cb - 1))) {
		return vd_err_set(err, EINVAL,
				  "qcow2: cluster size %llu is not a power of two "
				  "between 512 and 2M",
				  (unsigned long long)cb);
	}
	if (compat != 2 && compat != 3) {
		return vd_err_set(err, EINVAL, "qcow2: compat must be 2 (0.10) or 3 (1.1)");
	}
	if (rbits == 0 || rbits > 64 || (rbits & (rbits - 1))) {
		return vd_err_set(err, EINVAL, "qcow2: refcount bits must be a power of two <= 64");
	}
	if (compat == 2 && (o->lazy_refcounts || o->extended_l2 || rbits != 16)) {
		return vd_err_set(err, EINVAL,
				  "qcow2: lazy refcounts, extended L2 and refcount widths other "
				  "than 16 need compat 3 (1.1)");
	}
	if (o->extended_l2 && cb < 16384) {
		return vd_err_set(err, EINVAL, "qcow2: extended L2 needs clusters of 16K or more");
	}
	if (o->preallocation && strcmp(o->preallocation, "off") != 0) {
		if (strcmp(o->preallocation, "metadata") != 0) {
			return vd_err_set(err, EINVAL, "qcow2: preallocation '%s' is not supported",
					  o->preallocation);
		}
		prealloc = true;
	}
	if (o->backing_file && prealloc) {
		return vd_err_set(err, EINVAL,
				  "qcow2: preallocation and a backing file exclude "
				  "each other");
	}
	if (o->backing_file && strlen(o->backing_file) > QCOW2_MAX_BACKING_NAME) {
		return vd_err_set(err, ENAMETOOLONG, "qcow2: backing file name too long");
	}
	if (o->backing_file && (size == 0 || !bfmt)) {
		struct vd_image_opts bo = { .format = bfmt,
					    .readonly = true,
					    .cache = VD_CACHE_WRITEBACK,
					    .io_backend = "sync" };
		struct vd_image *b;
		char *bpath = NULL;

		if (o->backing_file[0] == '/') {
			bpath = strdup(o->backing_file);
		} else {
			char *dup = strdup(path);

			if (dup && asprintf(&bpath, "%s/%s", dirname(dup), o->backing_file) < 0) {
				bpath = NULL;
			}
			free(dup);
		}
		if (!bpath) {
			return vd_err_set(err, ENOMEM, "out of memory");
		}
		ret = vd_image_open(bpath, &bo, &b, err);
		free(bpath);
		if (ret < 0) {
			return ret;
		}
		if (size == 0) {
			size = b->info.size_bytes;
		}
		bfmt = b->driver->name; /* static storage */
		vd_image_close(b);
	}
	if (size == 0 || size > (1ull << 62)) {
		return vd_err_set(err, EINVAL, "qcow2: bad virtual size");
	}
	l.cb = cb;
	l.rpb = cb * 8 / rbits;
	l2e = cb / (o->extended_l2 ? 16 : 8);
	l.l1_entries = VD_DIV_ROUND_UP(size, cb * l2e);
	if (l.l1_entries * 8 > QCOW2_MAX_L1_BYTES) {
		return vd_err_set(err, EFBIG,
				  "qcow2: %llu bytes need an L1 table over 32 MiB: use "
				  "a larger cluster size",
				  (unsigned long long)size);
	}
	l.l1_clusters = VD_MAX(1ull, VD_DIV_ROUND_UP(l.l1_entries * 8, cb));
	if (prealloc) {
		l.nl2 = l.l1_entries;
		l.ndata = VD_DIV_ROUND_UP(size, cb);
	}
	plan(&l);
	if (l.rt_clusters * cb > QCOW2_MAX_REFTABLE_BYTES) {
		return vd_err_set(err, EFBIG, "qcow2: image too large to preallocate");
	}

	fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | (overwrite ? 0 : O_EXCL), 0600);
	if (fd < 0) {
		ret = errno;
		if (ret == EEXIST) {
			return vd_err_set(err, ret, "%s already exists", path);
		}
		return vd_err_set(err, ret, "cannot create %s", path);
	}
	if (ftruncate(fd, 0) < 0) {
		ret = vd_err_set(err, errno, "cannot truncate %s", path);
		goto out_close;
	}
	buf = vd_qcow2_alloc_buf(cb);
	if (!buf) {
		ret = vd_err_set(err, ENOMEM, "out of memory");
		goto out_close;
	}
	/* header */
	qcow2_put_be32(buf, QCOW2_MAGIC);
	qcow2_put_be32(buf + 4, compat);
	qcow2_put_be32(buf + 20, (uint32_t)__builtin_ctzll(cb));
	qcow2_put_be64(buf + 24, size);
	qcow2_put_be32(buf + 36, (uint32_t)l.l1_entries);
	qcow2_put_be64(buf + 40, l.l1_at * cb);
	qcow2_put_be64(buf + 48, l.rt_at * cb);
	qcow2_put_be32(buf + 56, (uint32_t)l.rt_clusters);
	hdr_len = 72;
	if (compat == 3) {
		qcow2_put_be64(buf + 72, o->extended_l2 ? QCOW2_INCOMPAT_EXTL2 : 0);
		qcow2_put_be64(buf + 80, o->lazy_refcounts ? QCOW2_COMPAT_LAZY_REFCOUNTS : 0);
		qcow2_put_be32(buf + 96, order);
		qcow2_put_be32(buf + 100, 112);
		hdr_len = 112;
	}
	off = hdr_len;
	if (o->backing_file && bfmt) {
		size_t n = strlen(bfmt);

		qcow2_put_be32(buf + off, QCOW2_EXT_BACKING_FORMAT);
		qcow2_put_be32(buf + off + 4, (uint32_t)n);
		memcpy(buf + off + 8, bfmt, n); /* NOLINT(bugprone-not-null-terminated-result) */
		off += 8 + VD_ALIGN_UP((uint64_t)n, 8ull);
	}
	off += 8; /* end of extensions (zeroes) */
	if (o->backing_file) {
		size_t n = strlen(o->backing_file);

		if (off + n > cb) {
			ret = vd_err_set(err, ENAMETOOLONG,
					 "qcow2: backing file name does not fit "
					 "in the first cluster");
			goto out_free;
		}
		memcpy(buf + off, o->backing_file,
		       n); /* NOLINT(bugprone-not-null-terminated-result) */
		qcow2_put_be64(buf + 8, off);
		qcow2_put_be32(buf + 16, (uint32_t)n);
	}
	ret = write_all(fd, buf, cb, 0);
	/* refcount table */
	for (uint64_t c = 0; ret == 0 && c < l.rt_clusters; c++) {
		memset(buf, 0, cb);
		for (uint64_t e = 0; e < cb / 8; e++) {
			uint64_t b = c * (cb / 8) + e;

			if (b < l.nrb) {
				qcow2_put_be64(buf + e * 8, (l.rb_at + b) * cb);
			}
		}
		ret = write_all(fd, buf, cb, (l.rt_at + c) * cb);
	}
	/* refcount blocks: every cluster of the layout has refcount 1 */
	for (uint64_t b = 0; ret == 0 && b < l.nrb; b++) {
		memset(buf, 0, cb);
		for (uint64_t i = 0; i < l.rpb; i++) {
			if (b * l.rpb + i < l.total) {
				vd_qcow2_refcount_encode(buf, order, i, 1);
			}
		}
		ret = write_all(fd, buf, cb, (l.rb_at + b) * cb);
	}
	/* L1 */
	for (uint64_t c = 0; ret == 0 && c < l.l1_clusters; c++) {
		memset(buf, 0, cb);
		for (uint64_t e = 0; prealloc && e < cb / 8; e++) {
			uint64_t i = c * (cb / 8) + e;

			if (i < l.nl2) {
				qcow2_put_be64(buf + e * 8,
					       ((l.l2_at + i) * cb) | QCOW2_OFLAG_COPIED);
			}
		}
		ret = write_all(fd, buf, cb, (l.l1_at + c) * cb);
	}
	/* L2 tables of a preallocated image */
	for (uint64_t t = 0; ret == 0 && t < l.nl2; t++) {
		memset(buf, 0, cb);
		for (uint64_t e = 0; e < l2e; e++) {
			uint64_t gc = t * l2e + e;

			if (gc < l.ndata) {
				uint8_t *p = buf + e * (o->extended_l2 ? 16 : 8);

				qcow2_put_be64(p, ((l.data_at + gc) * cb) | QCOW2_OFLAG_COPIED);
				if (o->extended_l2) {
					/* allocated, all subclusters read as zeroes */
					qcow2_put_be64(p + 8, 0xffffffff00000000ull);
				} else if (compat == 3) {
					qcow2_put_be64(p, ((l.data_at + gc) * cb) |
								  QCOW2_OFLAG_COPIED |
								  QCOW2_OFLAG_ZERO);
				}
			}
		}
		ret = write_all(fd, buf, cb, (l.l2_at + t) * cb);
	}
	if (ret == 0 && ftruncate(fd, (off_t)(l.total * cb)) < 0) {
		ret = -errno;
	}
	if (ret == 0 && fsync(fd) < 0) {
		ret = -errno;
	}
	if (ret < 0) {
		ret = vd_err_set(err, -ret, "writing %s", path);
		if (!overwrite) {
			unlink(path);
		}
	}
out_free:
	free(buf);
out_close:
	close(fd);
	return ret;
}

/* ---- resize (grow) ---- */

static int qcow2_resize(struct vd_image *img, uint64_t size_bytes, struct vd_err *err)
{
	struct qcow2_state *s = qcow2_s(img);
	uint64_t need = VD_DIV_ROUND_UP(size_bytes, s->cluster_bytes * s->l2_entries);
	uint8_t b[8];
	int ret;

	if (size_bytes < s->size_bytes) {
		return vd_err_set(err, ENOTSUP, "%s: qcow2 images can only grow", img->path);
	}
	if (s->nb_snapshots) {
		return vd_err_set(err, ENOTSUP, "%s: cannot resize an image with snapshots",
				  img->path);
	}
	if (need * 8 > QCOW2_MAX_L1_BYTES) {
		return vd_err_set(err, EFBIG, "%s: %llu bytes need an L1 table over 32 MiB",
				  img->path, (unsigned long long)size_bytes);
	}
	ret = vd_qcow2_metadata_flush(img);
	if (ret < 0) {
		return vd_err_set(err, -ret, "%s: writing metadata", img->path);
	}
	if (need > s->l1_size) {
		uint64_t nclusters = VD_DIV_ROUND_UP(need * 8, s->cluster_bytes);
		uint64_t *l1 = calloc(need, sizeof(*l1));
		bool *dirty = calloc(need, sizeof(*dirty));
		uint64_t old_off = s->l1_offset, old_len = (uint64_t)s->l1_size * 8;
		uint8_t *buf = vd_qcow2_alloc_buf(nclusters * s->cluster_bytes);
		uint64_t first = 0;

		if (!l1 || !dirty || !buf) {
			free(l1);
			free(dirty);
			free(buf);
			return vd_err_set(err, ENOMEM, "out of memory");
		}
		/* a contiguous run: allocate one by one and retry until contiguous */
		for (uint64_t i = 0; i < nclusters;) {
			int64_t c = vd_qcow2_alloc_cluster(img, NULL);

			if (c < 0) {
				free(l1);
				free(dirty);
				free(buf);
				return vd_err_set(err, (int)-c, "%s: allocating the L1 table",
						  img->path);
			}
			if (i > 0 && (uint64_t)c != first + i * s->cluster_bytes) {
				(void)vd_qcow2_free_later(img, first, i * s->cluster_bytes);
				first = (uint64_t)c;
				i = 1;
				continue;
			}
			if (i == 0) {
				first = (uint64_t)c;
			}
			i++;
		}
		memcpy(l1, s->l1, (size_t)s->l1_size * 8);
		for (uint64_t i = 0; i < need; i++) {
			qcow2_put_be64(buf + i * 8, l1[i]);
		}
		/* the new table and its refcounts first, then the header points at it */
		ret = vd_qcow2_metadata_flush(img);
		if (ret == 0) {
			ret = vd_qcow2_pwrite(s, buf, nclusters * s->cluster_bytes, first);
		}
		if (ret == 0) {
			ret = vd_qcow2_fsync(s);
		}
		if (ret == 0) {
			uint8_t h[12];

			qcow2_put_be32(h, (uint32_t)need);
			qcow2_put_be64(h + 4, first);
			ret = vd_qcow2_write_header_field(s, 36, h, 12);
		}
		free(buf);
		if (ret < 0) {
			free(l1);
			free(dirty);
			return vd_err_set(err, -ret, "%s: writing the new L1 table", img->path);
		}
		free(s->l1);
		free(s->l1_dirty);
		s->l1 = l1;
		s->l1_dirty = dirty;
		s->l1_size = (uint32_t)need;
		s->l1_offset = first;
		if (old_len) {
			(void)vd_qcow2_free_later(img, old_off,
						  VD_ALIGN_UP(old_len, s->cluster_bytes));
		}
	}
	qcow2_put_be64(b, size_bytes);
	ret = vd_qcow2_write_header_field(s, 24, b, 8);
	if (ret == 0) {
		ret = vd_qcow2_fsync(s);
	}
	if (ret == 0) {
		s->size_bytes = size_bytes;
		ret = vd_qcow2_metadata_flush(img);
	}
	if (ret < 0) {
		return vd_err_set(err, -ret, "%s: writing the header", img->path);
	}
	return 0;
}

/* ---- queues ---- */

static int qcow2_queue_init(struct vd_image *img, struct vd_image_queue *iq)
{
	struct qcow2_state *s = qcow2_s(img);
	struct qcow2_queue *q = calloc(1, sizeof(*q));
	int ret;

	if (!q) {
		return -ENOMEM;
	}
	q->iq = iq;
	if (__atomic_load_n(&s->owner_ctx, __ATOMIC_ACQUIRE) == NULL) {
		if (img->backing) {
			ret = vd_image_queue_create(img->backing, iq->ioctx, &q->backing_iq);
			if (ret < 0) {
				free(q);
				return ret;
			}
		}
		q->owner = true;
		s->owner_q = q;
		__atomic_store_n(&s->owner_ctx, iq->ioctx, __ATOMIC_RELEASE);
	}
	s->nr_queues++;
	iq->driver_state = q;
	return 0;
}

static void qcow2_queue_fini(struct vd_image *img, struct vd_image_queue *iq)
{
	struct qcow2_state *s = qcow2_s(img);
	struct qcow2_queue *q = iq->driver_state;

	if (!q) {
		return;
	}
	if (q->owner) {
		/* write back what this thread changed while it is still quiet */
		vd_qcow2_mflush_drain(img);
		if (!img->readonly && !img->corrupt && s->refcounts_loaded) {
			(void)vd_qcow2_metadata_flush(img);
		}
		vd_image_queue_destroy(q->backing_iq);
		s->owner_q = NULL;
		__atomic_store_n(&s->owner_ctx, NULL, __ATOMIC_RELEASE);
	}
	s->nr_queues--;
	free(q);
	iq->driver_state = NULL;
}

const struct vd_image_driver vd_qcow2_driver = {
	.name = "qcow2",
	.image_state_size = sizeof(struct qcow2_state),
	.io_ctx_size = sizeof(struct qcow2_req),
	.probe = qcow2_probe,
	.open = qcow2_open,
	.close = qcow2_close,
	.queue_init = qcow2_queue_init,
	.queue_fini = qcow2_queue_fini,
	.submit = vd_qcow2_submit,
	.get_info = qcow2_get_info,
	.create = qcow2_create,
	.block_status = vd_qcow2_block_status,
	.check = vd_qcow2_check,
	.resize = qcow2_resize,
};
