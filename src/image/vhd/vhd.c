/*
 * vhd: open (footer, header, BAT, batmap, bitmaps, parent), check/repair,
 * the vtable. Control thread: before any queue exists, or not served.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/log.h"
#include "image/vhd/vhd.h"

static __thread int g_chain_depth; /* parents being opened on this thread */

static int64_t rd(struct vhd_state *s, void *buf, uint64_t len, uint64_t off)
{
	return vd_file_rw_sync(s->file, VD_IO_READ, buf, len, off);
}

static int64_t wr(struct vhd_state *s, const void *buf, uint64_t len, uint64_t off)
{
	return vd_file_rw_sync(s->file, VD_IO_WRITE, (void *)buf, len, off);
}

static int vhd_probe(const void *hdr, size_t len)
{
	/* dynamic and differencing disks start with a footer copy */
	if (len >= 512 && memcmp(hdr, "conectix", 8) == 0) {
		return 100;
	}
	return 0;
}

/*
 * A fixed disk's only footer is at the end: 512 bytes, or 511 (old Virtual
 * PC). 100 for a fixed-disk footer with a true checksum, else 1 for the
 * cookie (raw wins the tie; resize then refuses to cut it). Dynamic and
 * differencing disks have a copy at 0: trusting one only at the end would
 * let a guest writing a raw disk's last sector choose parents we open.
 */
static int vhd_probe_tail(const void *tail, size_t len)
{
	const uint8_t *end = (const uint8_t *)tail + len;
	struct vhd_footer f;
	uint8_t buf[512];
	size_t n;

	for (n = 512; n >= 511; n--) {
		if (len < n || memcmp(end - n, VHD_COOKIE_FOOTER, 8) != 0) {
			continue;
		}
		memset(buf, 0, sizeof(buf));
		memcpy(buf, end - n, n);
		return vhd_footer_decode(buf, &f) == 0 && f.type == VHD_TYPE_FIXED ? 100 : 1;
	}
	return 0;
}

/* ---- parent ---- */

static int try_parent(const char *cdir, const char *cand, char **out)
{
	char full[PATH_MAX * 2];
	char *rp;

	if (cand[0] == '/') {
		snprintf(full, sizeof(full), "%s", cand);
	} else {
		snprintf(full, sizeof(full), "%s/%s", cdir, cand);
	}
	if (access(full, R_OK) != 0) {
		return -ENOENT;
	}
	rp = realpath(full, NULL);
	if (!rp) {
		return -errno;
	}
	*out = rp;
	return 0;
}

static int find_parent(struct vd_image *img, char **out, struct vd_err *err)
{
	struct vhd_state *s = vhd_st(img);
	char cdir[PATH_MAX], tmp[PATH_MAX], name[PATH_MAX];
	uint8_t *data = NULL;
	int i;

	snprintf(tmp, sizeof(tmp), "%s", img->path);
	snprintf(cdir, sizeof(cdir), "%s", dirname(tmp));
	data = malloc(65536);
	if (!data) {
		return vd_err_set(err, ENOMEM, "out of memory");
	}
	for (i = 0; i < VHD_NR_LOCATORS; i++) {
		const struct vhd_locator *l = &s->header.loc[i];
		uint64_t space = vhd_locator_bytes(l);

		if (l->code != VHD_PLAT_W2RU && l->code != VHD_PLAT_W2KU &&
		    l->code != VHD_PLAT_MACX) {
			continue;
		}
		if (l->data_len == 0 || l->data_len > space || l->data_len > 65536 ||
		    l->data_offset > s->file_bytes ||
		    l->data_len > s->file_bytes - l->data_offset) {
			continue;
		}
		if (rd(s, data, l->data_len, l->data_offset) != (int64_t)l->data_len) {
			continue;
		}
		if (vhd_locator_to_path(l->code, data, l->data_len, name, sizeof(name)) < 0) {
			continue;
		}
		if (try_parent(cdir, name, out) == 0) {
			free(data);
			return 0;
		}
	}
	free(data);
	/* last resort: the parent's name (UTF-16BE) next to the child */
	for (i = 0; i < 255; i++) {
		uint16_t c = (uint16_t)((s->header.parent_name[2 * (size_t)i] << 8) |
					s->header.parent_name[2 * (size_t)i + 1]);

		if (c == 0 || c >= 0x80 || c == '/') {
			break;
		}
		name[i] = (char)c;
	}
	name[i] = '\0';
	if (i > 0 && try_parent(cdir, name, out) == 0) {
		return 0;
	}
	return vd_err_set(err, ENOENT, "%s: cannot find the parent%s%s of this differencing disk",
			  img->path, i > 0 ? " " : "", i > 0 ? name : "");
}

/*
 * A parent must be a vhd (opened as one, never probed: a raw file is no
 * parent) whose UUID is the one this child records, under the image's
 * backing-file policy (backing.c).
 */
static int open_parent(struct vd_image *img, struct vd_err *err)
{
	struct vhd_state *s = vhd_st(img);
	struct vd_image *parent;
	struct vd_err perr = { 0 };
	int ret;

	if (g_chain_depth >= VHD_MAX_CHAIN) {
		return vd_err_set(err, ELOOP, "%s: parent chain deeper than %d (a loop?)",
				  img->path, VHD_MAX_CHAIN);
	}
	if (img->opts.backing.none) {
		return vd_image_open_backing(img, "(its parent)", "", "vhd", &img->backing, err);
	}
	ret = find_parent(img, &s->parent_path, err);
	if (ret < 0) {
		return ret;
	}
	g_chain_depth++;
	ret = vd_image_open_backing(img, s->parent_path, s->parent_path, "vhd", &parent, &perr);
	g_chain_depth--;
	if (ret < 0) {
		/* perr.msg ends with strerror already: copy it, do not wrap it twice */
		if (err && !err->errnum) {
			bool policy = perr.errnum == EACCES || perr.errnum == ELOOP;
			int n = snprintf(err->msg, sizeof(err->msg), "%s%s%s%s%s",
					 policy ? "" : img->path, policy ? "" : ": parent ",
					 policy ? "" : s->parent_path,
					 policy ? "" : " is not a usable VHD: ", vd_err_msg(&perr));

			(void)n; /* truncated: still the start of the story */
			err->errnum = -ret;
		}
		return ret;
	}
	if (!parent) {
		return 0; /* no-backing: the child alone */
	}
	if (memcmp(s->header.parent_uuid, vhd_st(parent)->footer.uuid, 16) != 0) {
		vd_image_close(parent);
		return vd_err_set(err, EINVAL,
				  "%s: parent %s has another UUID than the one this differencing "
				  "disk records: refused",
				  img->path, s->parent_path);
	}
	img->backing = parent;
	return 0;
}

/* ---- open ---- */

static int read_footer(struct vd_image *img, uint8_t *buf, struct vd_err *err)
{
	struct vhd_state *s = vhd_st(img);
	struct vhd_footer end, copy;
	int ret_end, ret_copy;

	if (rd(s, buf, 512, s->file_bytes - 512) != 512) {
		return vd_err_set(err, EIO, "%s: cannot read the footer", img->path);
	}
	ret_end = vhd_footer_decode(buf, &end);
	s->footer_bytes = 512;
	if (ret_end == -EINVAL && s->file_bytes % VHD_SECTOR == 511) {
		/* a 511-byte footer (old Virtual PC fixed disks) */
		memset(buf, 0, 512);
		if (rd(s, buf, 511, s->file_bytes - 511) != 511) {
			return vd_err_set(err, EIO, "%s: cannot read the footer", img->path);
		}
		ret_end = vhd_footer_decode(buf, &end);
		s->footer_bytes = 511;
	}
	if (rd(s, buf, 512, 0) != 512) {
		return vd_err_set(err, EIO, "%s: cannot read the footer copy", img->path);
	}
	ret_copy = vhd_footer_decode(buf, &copy);
	s->end_footer_ok = ret_end == 0;
	if (ret_copy == 0 && (copy.type == VHD_TYPE_DYNAMIC || copy.type == VHD_TYPE_DIFF)) {
		/* dynamic: the copy at 0 is authoritative (as qemu; the end moves) */
		s->footer = copy;
		if (ret_end == 0 && !vhd_footer_equal(&end, &copy)) {
			s->end_footer_ok = false;
		}
		return 0;
	}
	if (ret_end == 0) {
		s->footer = end;
		return 0;
	}
	if (ret_end == -EILSEQ || ret_copy == -EILSEQ) {
		return vd_err_set(err, EINVAL, "%s: VHD footer checksum mismatch", img->path);
	}
	return vd_err_set(err, EINVAL, "%s: not a VHD file (no \"conectix\" footer)", img->path);
}

static int read_batmap(struct vd_image *img, uint8_t *buf)
{
	struct vhd_state *s = vhd_st(img);
	uint64_t bat_bytes = VD_ALIGN_UP((uint64_t)s->header.max_table_entries * 4, VHD_SECTOR);
	uint32_t need, csum = 0, version;
	uint64_t i, len;

	if (memcmp(s->footer.creator_app, "tap", 3) != 0 || s->footer.creator_ver < 0x00010001) {
		return 0;
	}
	s->batmap_hdr_off = s->header.table_offset + bat_bytes;
	if (s->batmap_hdr_off + 512 > s->file_bytes || rd(s, buf, 512, s->batmap_hdr_off) != 512 ||
	    memcmp(buf, "tdbatmap", 8) != 0) {
		if (s->footer.creator_ver >= 0x00010002) {
			vd_log(VD_LOG_WARN, "vhd: %s: the batmap header is missing", img->path);
		}
		return 0;
	}
	s->batmap_off = vhd_be64(buf + 8);
	s->batmap_sectors = vhd_be32(buf + 16);
	version = vhd_be32(buf + 20);
	need = VD_DIV_ROUND_UP(VD_DIV_ROUND_UP(s->header.max_table_entries, 8u), VHD_SECTOR);
	len = (uint64_t)s->batmap_sectors * VHD_SECTOR;
	if (version > VHD_BATMAP_VERSION || s->batmap_sectors < need ||
	    s->batmap_sectors > need + 8 || s->batmap_off < s->batmap_hdr_off + 512 ||
	    s->batmap_off % VHD_SECTOR || s->batmap_off > s->file_bytes ||
	    len > s->file_bytes - s->batmap_off) {
		vd_log(VD_LOG_WARN, "vhd: %s: ignoring a batmap header that does not fit",
		       img->path);
		return 0;
	}
	s->batmap = aligned_alloc(VD_PAGE_SIZE, VD_ALIGN_UP(len, (uint64_t)VD_PAGE_SIZE));
	if (!s->batmap) {
		return -ENOMEM;
	}
	if (rd(s, s->batmap, len, s->batmap_off) != (int64_t)len) {
		return -EIO;
	}
	for (i = 0; i < len; i++) {
		csum += version == 0x00010001 ? (uint32_t)(int32_t)(int8_t)s->batmap[i]
					      : s->batmap[i];
	}
	s->has_batmap = true;
	s->batmap_valid = ~csum == vhd_be32(buf + 24);
	if (!s->batmap_valid) {
		/* a zero bit only says "look at the bitmap": always safe */
		vd_log(VD_LOG_WARN, "vhd: %s: batmap checksum mismatch, not using it", img->path);
		memset(s->batmap, 0, len);
	}
	return 0;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

/* Range and overlap checks of the BAT; the first bad entry in *bad (or UINT32_MAX). */
static uint64_t bat_problems(struct vhd_state *s, const uint32_t *bat, uint32_t *bad, char *why,
			     size_t why_len)
{
	uint64_t span = (uint64_t)s->bitmap_bytes + s->block_size;
	uint32_t n = s->header.max_table_entries, i, k = 0;
	uint64_t *offs, problems = 0;

	*bad = UINT32_MAX;
	offs = malloc(sizeof(*offs) * (n ? n : 1));
	if (!offs) {
		return 0;
	}
	for (i = 0; i < n; i++) {
		uint64_t off = (uint64_t)bat[i] * VHD_SECTOR;

		if (bat[i] == VHD_BAT_UNUSED) {
			continue;
		}
		if (off < s->meta_end || off + s->bitmap_bytes > s->file_bytes) {
			problems++;
			if (*bad == UINT32_MAX) {
				*bad = i;
				snprintf(why, why_len,
					 "BAT entry %u points at 0x%" PRIx64
					 ", outside the data area",
					 i, off);
			}
			continue;
		}
		offs[k++] = off;
	}
	qsort(offs, k, sizeof(*offs), cmp_u64);
	for (i = 1; i < k; i++) {
		if (offs[i] - offs[i - 1] < span) {
			problems++;
			if (*bad == UINT32_MAX) {
				*bad = 0;
				snprintf(why, why_len,
					 "blocks at 0x%" PRIx64 " and 0x%" PRIx64 " overlap",
					 offs[i - 1], offs[i]);
			}
		}
	}
	free(offs);
	return problems;
}

static bool bitmap_full(const struct vhd_state *s, const uint8_t *map)
{
	uint32_t i;

	for (i = 0; i < s->sectors_per_block; i++) {
		if (!vhd_bit_test(map, i)) {
			return false;
		}
	}
	return true;
}

/* Block blk's sector bitmap from the file (the shared full one if all ones). */
int vhd_load_bitmap(struct vhd_state *s, uint32_t blk)
{
	uint8_t *map = malloc(s->bitmap_bytes);

	if (!map) {
		return -ENOMEM;
	}
	if (rd(s, map, s->bitmap_bytes, (uint64_t)s->bat[blk] * VHD_SECTOR) !=
	    (int64_t)s->bitmap_bytes) {
		free(map);
		return -EIO;
	}
	if (bitmap_full(s, map)) {
		/* the common case (qemu writes all-ones bitmaps): the fast path */
		free(map);
		map = s->full_bitmap;
	}
	s->bitmaps[blk] = map;
	return 0;
}

static int load_bitmaps(struct vd_image *img)
{
	struct vhd_state *s = vhd_st(img);
	uint32_t i;
	int ret;

	s->bitmaps = calloc(s->nr_blocks ? s->nr_blocks : 1, sizeof(*s->bitmaps));
	s->full_bitmap = malloc(s->bitmap_bytes);
	if (!s->bitmaps || !s->full_bitmap) {
		return -ENOMEM;
	}
	memset(s->full_bitmap, 0xff, s->bitmap_bytes);
	for (i = 0; i < s->nr_blocks; i++) {
		uint32_t e = s->bat[i];

		if (e == VHD_BAT_UNUSED) {
			continue;
		}
		if (s->batmap_valid && vhd_bit_test(s->batmap, i)) {
			s->bitmaps[i] = s->full_bitmap;
			continue;
		}
		ret = vhd_load_bitmap(s, i);
		if (ret < 0) {
			return ret;
		}
	}
	return 0;
}

static uint64_t locators_end(const struct vhd_state *s)
{
	uint64_t end = 0;
	int i;

	if (s->type != VHD_TYPE_DIFF) {
		return 0;
	}
	for (i = 0; i < VHD_NR_LOCATORS; i++) {
		const struct vhd_locator *l = &s->header.loc[i];
		uint64_t b = vhd_locator_bytes(l);

		if (l->code == VHD_PLAT_NONE || l->data_offset >= s->file_bytes ||
		    b > s->file_bytes - l->data_offset) {
			continue;
		}
		end = VD_MAX(end, l->data_offset + b);
	}
	return end;
}

static void compute_data_end(struct vhd_state *s)
{
	uint64_t span = (uint64_t)s->bitmap_bytes + s->block_size;
	uint32_t i;

	s->data_end = s->meta_end;
	for (i = 0; i < s->header.max_table_entries; i++) {
		if (s->bat[i] != VHD_BAT_UNUSED) {
			s->data_end = VD_MAX(s->data_end, (uint64_t)s->bat[i] * VHD_SECTOR + span);
		}
	}
}

static int open_dynamic(struct vd_image *img, uint8_t *buf, struct vd_err *err)
{
	struct vhd_state *s = vhd_st(img);
	struct vhd_header *h = &s->header;
	uint64_t bat_bytes, max_size;
	uint32_t i, bad;
	char why[160];
	uint8_t *raw;
	int ret;

	if (s->footer.data_offset % VHD_SECTOR || s->footer.data_offset > s->file_bytes ||
	    s->file_bytes - s->footer.data_offset < VHD_HEADER_SIZE) {
		return vd_err_set(err, EINVAL,
				  "%s: VHD header offset 0x%" PRIx64 " is outside the file",
				  img->path, s->footer.data_offset);
	}
	if (rd(s, buf, VHD_HEADER_SIZE, s->footer.data_offset) != VHD_HEADER_SIZE) {
		return vd_err_set(err, EIO, "%s: cannot read the VHD header", img->path);
	}
	ret = vhd_header_decode(buf, h);
	if (ret == -EINVAL) {
		return vd_err_set(err, EINVAL, "%s: no \"cxsparse\" dynamic disk header",
				  img->path);
	}
	if (ret == -EILSEQ) {
		return vd_err_set(err, EINVAL, "%s: VHD header checksum mismatch", img->path);
	}
	if (h->block_size < VHD_MIN_BLOCK || h->block_size > VHD_MAX_BLOCK ||
	    (h->block_size & (h->block_size - 1))) {
		return vd_err_set(err, EINVAL, "%s: unsupported VHD block size %u", img->path,
				  h->block_size);
	}
	if (h->max_table_entries > VHD_MAX_BAT_ENTRIES) {
		return vd_err_set(err, EFBIG, "%s: VHD BAT of %u entries is too large (max %u)",
				  img->path, h->max_table_entries, VHD_MAX_BAT_ENTRIES);
	}
	bat_bytes = VD_ALIGN_UP((uint64_t)h->max_table_entries * 4, VHD_SECTOR);
	if (h->table_offset % VHD_SECTOR || h->table_offset > s->file_bytes ||
	    bat_bytes > s->file_bytes - h->table_offset) {
		return vd_err_set(err, EINVAL, "%s: the VHD BAT lies outside the file", img->path);
	}
	s->block_size = h->block_size;
	s->sectors_per_block = h->block_size / VHD_SECTOR;
	s->bitmap_bytes = vhd_bitmap_bytes(h->block_size);
	max_size = (uint64_t)h->max_table_entries * h->block_size;
	if (s->size_bytes > max_size) {
		return vd_err_set(err, EINVAL,
				  "%s: virtual size %" PRIu64
				  " exceeds the %u BAT entries of %u bytes",
				  img->path, s->size_bytes, h->max_table_entries, h->block_size);
	}
	s->nr_blocks = (uint32_t)VD_DIV_ROUND_UP(s->size_bytes, (uint64_t)h->block_size);
	raw = malloc(bat_bytes ? bat_bytes : 1);
	s->bat = malloc(sizeof(*s->bat) * (h->max_table_entries ? h->max_table_entries : 1));
	if (!raw || !s->bat) {
		free(raw);
		return vd_err_set(err, ENOMEM, "out of memory for the BAT");
	}
	if (bat_bytes && rd(s, raw, bat_bytes, h->table_offset) != (int64_t)bat_bytes) {
		free(raw);
		return vd_err_set(err, EIO, "%s: cannot read the BAT", img->path);
	}
	for (i = 0; i < h->max_table_entries; i++) {
		s->bat[i] = vhd_be32(raw + 4 * (uint64_t)i);
	}
	free(raw);
	ret = read_batmap(img, buf);
	if (ret < 0) {
		return vd_err_set(err, -ret, "%s: reading the batmap", img->path);
	}
	s->meta_end = VD_MAX(s->footer.data_offset + VHD_HEADER_SIZE, h->table_offset + bat_bytes);
	if (s->has_batmap) {
		s->meta_end = VD_MAX(s->meta_end, s->batmap_hdr_off + 512);
		s->meta_end = VD_MAX(s->meta_end,
				     s->batmap_off + (uint64_t)s->batmap_sectors * VHD_SECTOR);
	}
	s->meta_end = VD_MAX(s->meta_end, locators_end(s));
	if (bat_problems(s, s->bat, &bad, why, sizeof(why)) > 0) {
		/* reads stay inside the file: bad entries read as unallocated */
		vd_log(VD_LOG_ERR, "vhd: %s: corrupt: %s; refusing writes", img->path, why);
		img->corrupt = true;
		for (i = 0; i < h->max_table_entries; i++) {
			uint64_t off = (uint64_t)s->bat[i] * VHD_SECTOR;

			if (s->bat[i] != VHD_BAT_UNUSED &&
			    (off < s->meta_end || off + s->bitmap_bytes > s->file_bytes)) {
				s->bat[i] = VHD_BAT_UNUSED;
			}
		}
	}
	compute_data_end(s);
	/*
	 * Dynamic disks too: other writers (vhd-util, Hyper-V) leave the bits
	 * of sectors they did not write clear, and those read as zeroes.
	 */
	ret = load_bitmaps(img);
	if (ret < 0) {
		return vd_err_set(err, -ret, "%s: reading the sector bitmaps", img->path);
	}
	if (s->type == VHD_TYPE_DIFF) {
		ret = open_parent(img, err);
		if (ret < 0) {
			return ret;
		}
	}
	return 0;
}

static void vhd_close(struct vd_image *img)
{
	struct vhd_state *s = vhd_st(img);
	uint32_t i;

	if (s->bitmaps) {
		for (i = 0; i < s->nr_blocks; i++) {
			if (s->bitmaps[i] != s->full_bitmap) {
				free(s->bitmaps[i]);
			}
		}
	}
	free(s->bitmaps);
	free(s->full_bitmap);
	free(s->bat);
	free(s->batmap);
	free(s->zero_sector);
	free(s->parent_path);
	vd_image_close(img->backing);
	img->backing = NULL;
	vd_file_close(s->file);
	memset(s, 0, sizeof(*s));
}

static int vhd_open(struct vd_image *img, const struct vd_image_opts *o, struct vd_err *err)
{
	struct vhd_state *s = vhd_st(img);
	uint8_t *buf;
	int ret;

	(void)o;
	ret = vd_image_open_file(img, img->path, &s->file, err);
	if (ret < 0) {
		return ret;
	}
	if (s->file->info.direct && s->file->info.logical_block_bytes > VHD_SECTOR) {
		/* VHD metadata is 512-byte granular: use the page cache */
		struct vd_file_opts fo = { .readonly = img->readonly,
					   .cache = VD_CACHE_WRITEBACK,
					   .size_bytes = img->opts.size_bytes };

		vd_file_close(s->file);
		s->file = NULL;
		ret = vd_image_open_file_opts(img, img->path, &fo, &s->file, err);
		if (ret < 0) {
			return ret;
		}
	}
	s->file_bytes = s->file->info.size_bytes;
	if (s->file_bytes < 512) {
		ret = vd_err_set(err, EINVAL, "%s: too small to be a VHD file", img->path);
		goto err_close;
	}
	buf = aligned_alloc(VD_PAGE_SIZE, VD_PAGE_SIZE);
	if (!buf) {
		ret = vd_err_set(err, ENOMEM, "out of memory");
		goto err_close;
	}
	ret = read_footer(img, buf, err);
	if (ret < 0) {
		goto err_buf;
	}
	s->type = s->footer.type;
	if (s->type != VHD_TYPE_FIXED && s->type != VHD_TYPE_DYNAMIC && s->type != VHD_TYPE_DIFF) {
		ret = vd_err_set(err, EINVAL, "%s: unknown VHD disk type %u", img->path, s->type);
		goto err_buf;
	}
	s->size_bytes = vhd_virtual_size(&s->footer);
	if (s->size_bytes / VHD_SECTOR > VHD_MAX_SECTORS) {
		ret = vd_err_set(err, EFBIG,
				 "%s: VHD of %" PRIu64 " bytes is larger than the 2040 GiB limit",
				 img->path, s->size_bytes);
		goto err_buf;
	}
	if (s->size_bytes == 0) {
		ret = vd_err_set(err, EINVAL, "%s: VHD of size 0", img->path);
		goto err_buf;
	}
	if (s->type == VHD_TYPE_FIXED) {
		if (s->size_bytes > s->file_bytes - s->footer_bytes) {
			ret = vd_err_set(err, EINVAL,
					 "%s: fixed VHD of %" PRIu64 " bytes in a file of %" PRIu64,
					 img->path, s->size_bytes, s->file_bytes);
			goto err_buf;
		}
		s->data_end = s->file_bytes - s->footer_bytes;
	} else {
		ret = open_dynamic(img, buf, err);
		if (ret < 0) {
			goto err_buf;
		}
	}
	free(buf);
	if (!img->readonly) {
		s->zero_sector = aligned_alloc(VD_PAGE_SIZE, VD_PAGE_SIZE);
		if (!s->zero_sector) {
			ret = vd_err_set(err, ENOMEM, "out of memory");
			goto err_close;
		}
		memset(s->zero_sector, 0, VD_PAGE_SIZE);
	}
	return 0;

err_buf:
	free(buf);
err_close:
	vhd_close(img);
	return ret;
}

/* ---- check / repair ---- */

static void problem(struct vd_check_result *res, const char *fmt, ...) VD_PRINTF(2, 3);
static void problem(struct vd_check_result *res, const char *fmt, ...)
{
	va_list ap;

	if (res->first_problem[0]) {
		return;
	}
	va_start(ap, fmt);
	(void)vsnprintf(res->first_problem, sizeof(res->first_problem), fmt, ap);
	va_end(ap);
}

int vhd_write_footer_at(struct vhd_state *s, uint8_t *buf, uint64_t off)
{
	vhd_footer_encode(&s->footer, buf);
	return wr(s, buf, 512, off) == 512 ? 0 : -EIO;
}

static uint32_t batmap_sum(const struct vhd_state *s)
{
	uint64_t i, len = (uint64_t)s->batmap_sectors * VHD_SECTOR;
	uint32_t sum = 0;

	for (i = 0; i < len; i++) {
		sum += s->batmap[i];
	}
	return ~sum;
}

static int write_batmap(struct vhd_state *s, uint8_t *buf)
{
	uint64_t len = (uint64_t)s->batmap_sectors * VHD_SECTOR;

	if (wr(s, s->batmap, len, s->batmap_off) != (int64_t)len) {
		return -EIO;
	}
	if (rd(s, buf, 512, s->batmap_hdr_off) != 512) {
		return -EIO;
	}
	vhd_put_be32(buf + 20, VHD_BATMAP_VERSION);
	vhd_put_be32(buf + 24, batmap_sum(s));
	return wr(s, buf, 512, s->batmap_hdr_off) == 512 ? 0 : -EIO;
}

static int vhd_check(struct vd_image *img, bool repair, struct vd_check_result *res,
		     struct vd_err *err)
{
	struct vhd_state *s = vhd_st(img);
	uint64_t bat_bytes, file_end;
	uint8_t *buf, *raw = NULL, *map = NULL;
	struct vhd_footer tmp;
	uint32_t i, bad;
	char why[160];
	bool bat_dirty = false, batmap_dirty = false;
	int ret = 0;

	buf = aligned_alloc(VD_PAGE_SIZE, VD_PAGE_SIZE);
	if (!buf) {
		return vd_err_set(err, ENOMEM, "out of memory");
	}
	s->file_bytes = s->file->fd >= 0 ? (uint64_t)lseek(s->file->fd, 0, SEEK_END)
					 : s->file->info.size_bytes;
	res->total_units = vhd_is_dynamic(s) ? s->nr_blocks : 0;
	if (s->type == VHD_TYPE_FIXED) {
		if (rd(s, buf, 512, s->file_bytes - 512) != 512 ||
		    vhd_footer_decode(buf, &tmp) != 0) {
			res->corruptions++;
			problem(res, "the footer at the end of the file is bad");
			if (repair && vhd_write_footer_at(s, buf, s->size_bytes) == 0) {
				res->corruptions_fixed++;
			}
		}
		goto out;
	}
	/* footers */
	if (rd(s, buf, 512, 0) != 512 || vhd_footer_decode(buf, &tmp) != 0) {
		res->corruptions++;
		problem(res, "the footer copy at offset 0 is bad");
		if (repair && vhd_write_footer_at(s, buf, 0) == 0) {
			res->corruptions_fixed++;
		}
	}
	/* header checksum was checked at open; BAT from disk */
	bat_bytes = VD_ALIGN_UP((uint64_t)s->header.max_table_entries * 4, VHD_SECTOR);
	raw = malloc(bat_bytes ? bat_bytes : 1);
	if (!raw) {
		ret = vd_err_set(err, ENOMEM, "out of memory");
		goto out;
	}
	if (bat_bytes && rd(s, raw, bat_bytes, s->header.table_offset) != (int64_t)bat_bytes) {
		ret = vd_err_set(err, EIO, "%s: cannot read the BAT", img->path);
		goto out;
	}
	for (i = 0; i < s->header.max_table_entries; i++) {
		s->bat[i] = vhd_be32(raw + 4 * (uint64_t)i);
	}
	if (bat_problems(s, s->bat, &bad, why, sizeof(why)) > 0) {
		uint32_t n = 0;

		for (i = 0; i < s->header.max_table_entries; i++) {
			uint64_t off = (uint64_t)s->bat[i] * VHD_SECTOR;

			if (s->bat[i] != VHD_BAT_UNUSED &&
			    (off < s->meta_end || off + s->bitmap_bytes > s->file_bytes)) {
				s->bat[i] = VHD_BAT_UNUSED;
				vhd_put_be32(raw + 4 * (uint64_t)i, VHD_BAT_UNUSED);
				n++;
			}
		}
		res->corruptions += VD_MAX(n, 1u);
		problem(res, "%s", why);
		bat_dirty = n > 0;
		if (bat_problems(s, s->bat, &bad, why, sizeof(why)) > 0) {
			/* overlaps cannot be repaired without losing data: report only */
			repair = false;
		}
	}
	for (i = 0; i < s->nr_blocks; i++) {
		if (s->bat[i] != VHD_BAT_UNUSED) {
			res->allocated_units++;
		}
	}
	compute_data_end(s);
	/* batmap: a set bit promises an allocated, fully present block */
	if (s->has_batmap) {
		uint64_t len = (uint64_t)s->batmap_sectors * VHD_SECTOR;

		if (rd(s, s->batmap, len, s->batmap_off) != (int64_t)len ||
		    rd(s, buf, 512, s->batmap_hdr_off) != 512) {
			ret = vd_err_set(err, EIO, "%s: cannot read the batmap", img->path);
			goto out;
		}
		if (batmap_sum(s) != vhd_be32(buf + 24)) {
			res->corruptions++;
			problem(res, "batmap checksum mismatch");
			batmap_dirty = true;
		}
		map = malloc(s->bitmap_bytes);
		if (!map) {
			ret = vd_err_set(err, ENOMEM, "out of memory");
			goto out;
		}
		for (i = 0; i < s->header.max_table_entries; i++) {
			bool bit, full = false;

			if ((uint64_t)i >= len * 8) {
				break;
			}
			bit = vhd_bit_test(s->batmap, i);
			if (i < s->nr_blocks && s->bat[i] != VHD_BAT_UNUSED) {
				if (rd(s, map, s->bitmap_bytes, (uint64_t)s->bat[i] * VHD_SECTOR) ==
				    (int64_t)s->bitmap_bytes) {
					full = bitmap_full(s, map);
				}
			}
			if (bit && !full) {
				res->corruptions++;
				problem(res, "batmap marks block %u full, it is not", i);
				batmap_dirty = true;
			}
			if (batmap_dirty || (bit != full)) {
				if (full) {
					s->batmap[i >> 3] |= (uint8_t)(0x80 >> (i & 7));
				} else {
					s->batmap[i >> 3] &= (uint8_t) ~(0x80 >> (i & 7));
				}
			}
		}
	}
	/* the end: footer right after the last block, nothing behind it */
	file_end = s->data_end + 512;
	if (s->file_bytes > file_end) {
		uint64_t excess = s->file_bytes - file_end;

		res->leaks += VD_DIV_ROUND_UP(excess, (uint64_t)s->bitmap_bytes + s->block_size);
		problem(res, "%" PRIu64 " bytes after the last block are not referenced", excess);
	}
	if (s->file_bytes < file_end || rd(s, buf, 512, file_end - 512) != 512 ||
	    vhd_footer_decode(buf, &tmp) != 0 || !vhd_footer_equal(&tmp, &s->footer)) {
		res->corruptions++;
		problem(res, "no valid footer after the last block");
		if (repair) {
			if (vhd_write_footer_at(s, buf, s->data_end) == 0) {
				res->corruptions_fixed++;
				s->end_footer_ok = true;
			}
		}
	}
	if (repair && bat_dirty) {
		if (wr(s, raw, bat_bytes, s->header.table_offset) == (int64_t)bat_bytes) {
			res->corruptions_fixed +=
				res->corruptions - res->corruptions_fixed > 0 ? 1 : 0;
		}
	}
	if (repair && batmap_dirty) {
		if (write_batmap(s, buf) == 0) {
			res->corruptions_fixed++;
			s->batmap_valid = true;
		}
	}
	if (repair && s->file_bytes > file_end) {
		if (vd_file_resize(s->file, file_end) == 0) {
			res->leaks_fixed = res->leaks;
			s->file_bytes = file_end;
		}
	}
	if (repair) {
		vd_file_rw_sync(s->file, VD_IO_FLUSH, NULL, 0, 0);
		if (res->corruptions_fixed > res->corruptions) {
			res->corruptions_fixed = res->corruptions;
		}
		if (res->corruptions_fixed == res->corruptions && img->corrupt && !bat_dirty) {
			img->corrupt = false;
		}
	}
out:
	free(map);
	free(raw);
	free(buf);
	return ret;
}

static int vhd_create_drv(const char *path, const struct vd_image_create_opts *o,
			  struct vd_err *err)
{
	return vhd_create(path, o, err);
}

const struct vd_image_driver vd_vhd_driver = {
	.name = "vhd",
	.image_state_size = sizeof(struct vhd_state),
	.io_ctx_size = VHD_IO_CTX_SIZE,
	.probe = vhd_probe,
	.probe_tail = vhd_probe_tail,
	.open = vhd_open,
	.close = vhd_close,
	.queue_init = vhd_queue_init,
	.queue_fini = vhd_queue_fini,
	.submit = vhd_submit,
	.get_info = vhd_get_info,
	.create = vhd_create_drv,
	.block_status = vhd_block_status,
	.check = vhd_check,
	.resize = vhd_resize,
};
