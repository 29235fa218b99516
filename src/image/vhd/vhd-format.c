/*
 * vhd-format: the on-disk structures of VHD (footer, dynamic header, parent
 * locators, geometry) and image creation.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "common/log.h"
#include "image/vhd/vhd.h"

uint16_t vhd_be16(const void *p)
{
	const uint8_t *b = p;

	return (uint16_t)((b[0] << 8) | b[1]);
}

uint32_t vhd_be32(const void *p)
{
	const uint8_t *b = p;

	return ((uint32_t)b[0] << 24) | ((uint32_t)b[1] << 16) | ((uint32_t)b[2] << 8) | b[3];
}

uint64_t vhd_be64(const void *p)
{
	const uint8_t *b = p;

	return ((uint64_t)vhd_be32(b) << 32) | vhd_be32(b + 4);
}

void vhd_put_be32(void *p, uint32_t v)
{
	uint8_t *b = p;

	b[0] = (uint8_t)(v >> 24);
	b[1] = (uint8_t)(v >> 16);
	b[2] = (uint8_t)(v >> 8);
	b[3] = (uint8_t)v;
}

static void put_be16(void *p, uint16_t v)
{
	uint8_t *b = p;

	b[0] = (uint8_t)(v >> 8);
	b[1] = (uint8_t)v;
}

static void put_be64(void *p, uint64_t v)
{
	vhd_put_be32(p, (uint32_t)(v >> 32));
	vhd_put_be32((uint8_t *)p + 4, (uint32_t)v);
}

/* One's complement of the byte sum, the 4 checksum bytes counted as zero. */
uint32_t vhd_checksum(const void *buf, size_t len, size_t csum_off)
{
	const uint8_t *b = buf;
	uint32_t sum = 0;
	size_t i;

	for (i = 0; i < len; i++) {
		if (i >= csum_off && i < csum_off + 4) {
			continue;
		}
		sum += b[i];
	}
	return ~sum;
}

#define FOFF(field) offsetof(struct vhd_footer_disk, field)
#define HOFF(field) offsetof(struct vhd_header_disk, field)

int vhd_footer_decode(const void *buf512, struct vhd_footer *f)
{
	const uint8_t *b = buf512;

	if (memcmp(b, "conectix", 8) != 0) {
		return -EINVAL;
	}
	memset(f, 0, sizeof(*f));
	f->features = vhd_be32(b + FOFF(features));
	f->version = vhd_be32(b + FOFF(version));
	f->data_offset = vhd_be64(b + FOFF(data_offset));
	f->timestamp = vhd_be32(b + FOFF(timestamp));
	memcpy(f->creator_app, b + FOFF(creator_app), 4);
	f->creator_ver = vhd_be32(b + FOFF(creator_ver));
	f->creator_os = vhd_be32(b + FOFF(creator_os));
	f->orig_size = vhd_be64(b + FOFF(orig_size));
	f->current_size = vhd_be64(b + FOFF(current_size));
	f->cyls = vhd_be16(b + FOFF(cyls));
	f->heads = b[FOFF(heads)];
	f->secs = b[FOFF(secs)];
	f->type = vhd_be32(b + FOFF(type));
	f->checksum = vhd_be32(b + FOFF(checksum));
	memcpy(f->uuid, b + FOFF(uuid), 16);
	f->saved_state = b[FOFF(saved_state)];
	if (f->checksum != vhd_checksum(b, 512, FOFF(checksum))) {
		return -EILSEQ;
	}
	return 0;
}

void vhd_footer_encode(const struct vhd_footer *f, void *buf512)
{
	uint8_t *b = buf512;

	memset(b, 0, 512);
	memcpy(b, VHD_COOKIE_FOOTER, 8);
	vhd_put_be32(b + FOFF(features), f->features);
	vhd_put_be32(b + FOFF(version), f->version);
	put_be64(b + FOFF(data_offset), f->data_offset);
	vhd_put_be32(b + FOFF(timestamp), f->timestamp);
	memcpy(b + FOFF(creator_app), f->creator_app, 4);
	vhd_put_be32(b + FOFF(creator_ver), f->creator_ver);
	vhd_put_be32(b + FOFF(creator_os), f->creator_os);
	put_be64(b + FOFF(orig_size), f->orig_size);
	put_be64(b + FOFF(current_size), f->current_size);
	put_be16(b + FOFF(cyls), f->cyls);
	b[FOFF(heads)] = f->heads;
	b[FOFF(secs)] = f->secs;
	vhd_put_be32(b + FOFF(type), f->type);
	memcpy(b + FOFF(uuid), f->uuid, 16);
	b[FOFF(saved_state)] = f->saved_state;
	vhd_put_be32(b + FOFF(checksum), vhd_checksum(b, 512, FOFF(checksum)));
}

bool vhd_footer_equal(const struct vhd_footer *a, const struct vhd_footer *b)
{
	uint8_t x[512], y[512];

	vhd_footer_encode(a, x);
	vhd_footer_encode(b, y);
	return memcmp(x, y, sizeof(x)) == 0;
}

int vhd_header_decode(const void *buf1024, struct vhd_header *h)
{
	const uint8_t *b = buf1024;
	uint32_t csum;
	int i;

	if (memcmp(b, "cxsparse", 8) != 0) {
		return -EINVAL;
	}
	memset(h, 0, sizeof(*h));
	h->data_offset = vhd_be64(b + HOFF(data_offset));
	h->table_offset = vhd_be64(b + HOFF(table_offset));
	h->version = vhd_be32(b + HOFF(version));
	h->max_table_entries = vhd_be32(b + HOFF(max_table_entries));
	h->block_size = vhd_be32(b + HOFF(block_size));
	h->checksum = vhd_be32(b + HOFF(checksum));
	memcpy(h->parent_uuid, b + HOFF(parent_uuid), 16);
	h->parent_timestamp = vhd_be32(b + HOFF(parent_timestamp));
	memcpy(h->parent_name, b + HOFF(parent_name), 512);
	for (i = 0; i < VHD_NR_LOCATORS; i++) {
		const uint8_t *l = b + HOFF(loc) + (size_t)i * sizeof(struct vhd_locator_disk);

		h->loc[i].code = vhd_be32(l);
		h->loc[i].data_space = vhd_be32(l + 4);
		h->loc[i].data_len = vhd_be32(l + 8);
		h->loc[i].data_offset = vhd_be64(l + 16);
	}
	csum = vhd_checksum(b, 1024, HOFF(checksum));
	return csum == h->checksum ? 0 : -EILSEQ;
}

void vhd_header_encode(const struct vhd_header *h, void *buf1024)
{
	uint8_t *b = buf1024;
	int i;

	memset(b, 0, 1024);
	memcpy(b, VHD_COOKIE_HEADER, 8);
	put_be64(b + HOFF(data_offset), h->data_offset);
	put_be64(b + HOFF(table_offset), h->table_offset);
	vhd_put_be32(b + HOFF(version), h->version);
	vhd_put_be32(b + HOFF(max_table_entries), h->max_table_entries);
	vhd_put_be32(b + HOFF(block_size), h->block_size);
	memcpy(b + HOFF(parent_uuid), h->parent_uuid, 16);
	vhd_put_be32(b + HOFF(parent_timestamp), h->parent_timestamp);
	memcpy(b + HOFF(parent_name), h->parent_name, 512);
	for (i = 0; i < VHD_NR_LOCATORS; i++) {
		uint8_t *l = b + HOFF(loc) + (size_t)i * sizeof(struct vhd_locator_disk);

		vhd_put_be32(l, h->loc[i].code);
		vhd_put_be32(l + 4, h->loc[i].data_space);
		vhd_put_be32(l + 8, h->loc[i].data_len);
		put_be64(l + 16, h->loc[i].data_offset);
	}
	vhd_put_be32(b + HOFF(checksum), vhd_checksum(b, 1024, HOFF(checksum)));
}

/* The algorithm of the VHD specification, appendix "CHS calculation". */
void vhd_chs(uint64_t size_bytes, uint16_t *cyls, uint8_t *heads, uint8_t *secs)
{
	uint64_t total = size_bytes / VHD_SECTOR;
	uint64_t cth, spt, hd;

	if (total > VHD_MAX_GEOMETRY) {
		total = VHD_MAX_GEOMETRY;
	}
	if (total >= 65535ull * 16 * 63) {
		spt = 255;
		hd = 16;
		cth = total / spt;
	} else {
		spt = 17;
		cth = total / spt;
		hd = (cth + 1023) / 1024;
		if (hd < 4) {
			hd = 4;
		}
		if (cth >= hd * 1024 || hd > 16) {
			spt = 31;
			hd = 16;
			cth = total / spt;
		}
		if (cth >= hd * 1024) {
			spt = 63;
			hd = 16;
			cth = total / spt;
		}
	}
	*cyls = (uint16_t)VD_MIN(cth / hd, 65535u);
	*heads = (uint8_t)hd;
	*secs = (uint8_t)spt;
}

uint64_t vhd_virtual_size(const struct vhd_footer *f)
{
	uint64_t chs = (uint64_t)f->cyls * f->heads * f->secs;
	bool use_chs =
		memcmp(f->creator_app, "win ", 4) != 0 && memcmp(f->creator_app, "qem2", 4) != 0 &&
		memcmp(f->creator_app, "d2v ", 4) != 0 && memcmp(f->creator_app, "CTXS", 4) != 0 &&
		memcmp(f->creator_app, "tap\0", 4) != 0;

	if (!use_chs || chs == VHD_MAX_GEOMETRY) {
		return f->current_size & ~(uint64_t)(VHD_SECTOR - 1);
	}
	return chs * VHD_SECTOR;
}

uint64_t vhd_locator_bytes(const struct vhd_locator *l)
{
	/* data_space is in sectors per the spec; some writers put bytes there */
	if (l->data_space < VHD_SECTOR) {
		return (uint64_t)l->data_space * VHD_SECTOR;
	}
	if (l->data_space % VHD_SECTOR == 0) {
		return l->data_space;
	}
	return 0;
}

int vhd_locator_to_path(uint32_t code, const uint8_t *data, size_t len, char *out, size_t out_len)
{
	size_t i, n = 0;
	const char *p;

	if (out_len == 0) {
		return -EINVAL;
	}
	switch (code) {
	case VHD_PLAT_W2RU:
	case VHD_PLAT_W2KU:
		if (len % 2) {
			return -EINVAL;
		}
		for (i = 0; i + 1 < len; i += 2) {
			uint16_t c = (uint16_t)(data[i] | (data[i + 1] << 8));

			if (c == 0) {
				break;
			}
			if (c >= 0x80 || n + 1 >= out_len) {
				return -EINVAL;
			}
			out[n++] = (char)(c == '\\' ? '/' : c);
		}
		out[n] = '\0';
		p = out;
		/* "C:\dir\file" -> "/dir/file"; ".\file" -> "./file" */
		if (n >= 2 && out[1] == ':') {
			memmove(out, out + 2, n - 1);
			n -= 2;
		}
		break;
	case VHD_PLAT_MACX:
		for (i = 0; i < len && data[i]; i++) {
			if (data[i] >= 0x80 || n + 1 >= out_len) {
				return -EINVAL;
			}
			out[n++] = (char)data[i];
		}
		out[n] = '\0';
		if (strncmp(out, "file://", 7) != 0) {
			return -EINVAL;
		}
		memmove(out, out + 7, n - 7 + 1);
		n -= 7;
		break;
	default:
		return -EINVAL;
	}
	(void)p;
	if (n == 0 || memchr(out, '\0', n) != NULL) {
		return -EINVAL;
	}
	return 0;
}

uint32_t vhd_time_now(void)
{
	time_t t = time(NULL);

	return t > (time_t)VHD_TIMESTAMP_BASE ? (uint32_t)(t - VHD_TIMESTAMP_BASE) : 0;
}

uint32_t vhd_bitmap_bytes(uint32_t block_size)
{
	uint32_t bits = block_size / VHD_SECTOR;

	return VD_ALIGN_UP(VD_DIV_ROUND_UP(bits, 8u), VHD_SECTOR);
}

/* ---- create ---- */

struct loc_data {
	uint32_t code;
	uint8_t buf[2048];
	size_t len;
};

static int encode_utf16le(const char *s, bool backslash, const char *prefix, struct loc_data *l)
{
	char tmp[PATH_MAX + 8];
	size_t i;

	if ((size_t)snprintf(tmp, sizeof(tmp), "%s%s", prefix, s) >= sizeof(tmp)) {
		return -ENAMETOOLONG;
	}
	l->len = 0;
	for (i = 0; tmp[i]; i++) {
		unsigned char c = (unsigned char)tmp[i];

		if (c >= 0x80) {
			return -EINVAL;
		}
		if (l->len + 2 > sizeof(l->buf)) {
			return -ENAMETOOLONG;
		}
		if (backslash && c == '/') {
			c = '\\';
		}
		l->buf[l->len++] = c;
		l->buf[l->len++] = 0;
	}
	return 0;
}

/*
 * Relative path from directory `from` to file `to` (both absolute and
 * canonical): "../" for each component of `from` below the common prefix,
 * then the rest of `to`.
 */
static int relative_path(const char *from, const char *to, char *out, size_t out_len)
{
	size_t common = 0, i = 0, n = 0;
	const char *rest;

	/* longest common prefix that ends at a component boundary */
	while (from[i] && from[i] == to[i]) {
		i++;
		if ((from[i] == '/' || from[i] == '\0') && to[i] == '/') {
			common = i;
		}
	}
	rest = to + common + 1;
	for (i = common; from[i]; i++) {
		if (from[i] == '/' && from[i + 1] != '\0') {
			if (n + 4 > out_len) {
				return -ENAMETOOLONG;
			}
			out[n] = '.';
			out[n + 1] = '.';
			out[n + 2] = '/';
			n += 3;
		}
	}
	if (n + strlen(rest) + 1 > out_len) {
		return -ENAMETOOLONG;
	}
	memcpy(out + n, rest, strlen(rest) + 1);
	return 0;
}

static int parent_info(const char *child, const struct vd_image_create_opts *o, char *parent_abs,
		       char *parent_rel, uint64_t *size, uint8_t uuid[16], uint32_t *ts,
		       uint32_t *block, struct vd_err *err)
{
	struct vd_image_opts po = { .format = o->backing_format,
				    .readonly = true,
				    .io_backend = "sync",
				    .cache = VD_CACHE_WRITEBACK };
	char dirbuf[PATH_MAX], cdir[PATH_MAX], cand[PATH_MAX * 2];
	struct vd_image *parent;
	struct stat st;
	int ret;

	parent_abs[0] = parent_rel[0] = '\0'; /* defined on every error path */
	if (snprintf(dirbuf, sizeof(dirbuf), "%s", child) >= (int)sizeof(dirbuf)) {
		return vd_err_set(err, ENAMETOOLONG, "path too long");
	}
	if (!realpath(dirname(dirbuf), cdir)) {
		return vd_err_set(err, errno, "cannot resolve the directory of %s", child);
	}
	/* a relative parent is relative to the child's directory (as qemu), else the cwd */
	snprintf(cand, sizeof(cand), "%s/%s", cdir, o->backing_file);
	if (o->backing_file[0] == '/' || access(cand, F_OK) != 0) {
		snprintf(cand, sizeof(cand), "%s", o->backing_file);
	}
	if (!realpath(cand, parent_abs)) {
		return vd_err_set(err, errno, "cannot find the parent %s", o->backing_file);
	}
	if (stat(parent_abs, &st) < 0) {
		return vd_err_set(err, errno, "cannot stat %s", parent_abs);
	}
	ret = relative_path(cdir, parent_abs, parent_rel, PATH_MAX);
	if (ret < 0) {
		return vd_err_set(err, -ret, "parent path too long");
	}
	ret = vd_image_open(parent_abs, &po, &parent, err);
	if (ret < 0) {
		return ret;
	}
	if (parent->driver != &vd_vhd_driver) {
		/* it would be refused at open: a parent must be a VHD with a UUID */
		const char *fmt = parent->driver->name; /* static storage */

		vd_image_close(parent);
		return vd_err_set(err, EINVAL,
				  "vhd: the parent %s is %s, not a VHD: a differencing disk's "
				  "parent must be a VHD",
				  parent_abs, fmt);
	}
	*size = parent->info.size_bytes;
	memcpy(uuid, vhd_st(parent)->footer.uuid, 16);
	if (!o->cluster_bytes && vhd_st(parent)->block_size) {
		*block = vhd_st(parent)->block_size; /* as vhd-util snapshot */
	}
	vd_image_close(parent);
	*ts = st.st_mtime > (time_t)VHD_TIMESTAMP_BASE
		      ? (uint32_t)(st.st_mtime - VHD_TIMESTAMP_BASE)
		      : 0;
	return 0;
}

static int write_all(int fd, const void *buf, size_t len, uint64_t off)
{
	const uint8_t *p = buf;

	while (len > 0) {
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

int vhd_create(const char *path, const struct vd_image_create_opts *o, struct vd_err *err)
{
	bool overwrite = o->flags & VD_IMAGE_CREATE_OVERWRITE;
	uint32_t type = VHD_TYPE_DYNAMIC;
	uint32_t block = o->cluster_bytes ? o->cluster_bytes : VHD_DEFAULT_BLOCK;
	char parent_abs[PATH_MAX], parent_rel[PATH_MAX];
	struct loc_data *locs = NULL;
	int nlocs = 0;
	uint8_t parent_uuid[16] = { 0 };
	uint32_t parent_ts = 0;
	uint64_t size = o->size_bytes;
	struct vhd_footer f = { 0 };
	struct vhd_header h = { 0 };
	uint8_t *meta = NULL;
	uint8_t fbuf[512];
	uint64_t meta_len, off;
	uint32_t entries, bat_bytes, batmap_sectors;
	struct stat st;
	int fd, ret, i;

	if (o->subformat && strcmp(o->subformat, "fixed") == 0) {
		type = VHD_TYPE_FIXED;
	} else if (o->subformat && strcmp(o->subformat, "dynamic") != 0 &&
		   strcmp(o->subformat, "differencing") != 0) {
		return vd_err_set(err, EINVAL, "vhd: unknown subformat '%s' (fixed, dynamic)",
				  o->subformat);
	}
	if (o->preallocation && strcmp(o->preallocation, "off") != 0) {
		return vd_err_set(err, EINVAL, "vhd: preallocation '%s' is not supported",
				  o->preallocation);
	}
	if (o->backing_file) {
		if (type == VHD_TYPE_FIXED) {
			return vd_err_set(err, EINVAL, "vhd: a fixed disk cannot have a parent");
		}
		type = VHD_TYPE_DIFF;
		locs = calloc(3, sizeof(*locs));
		if (!locs) {
			return vd_err_set(err, ENOMEM, "out of memory");
		}
		ret = parent_info(path, o, parent_abs, parent_rel, &size, parent_uuid, &parent_ts,
				  &block, err);
		if (ret < 0) {
			goto err_free;
		}
		if (o->size_bytes) {
			size = o->size_bytes;
		}
	} else if (o->subformat && strcmp(o->subformat, "differencing") == 0) {
		return vd_err_set(err, EINVAL, "vhd: a differencing disk needs a parent");
	}
	if (size == 0 || size % VHD_SECTOR) {
		ret = vd_err_set(err, EINVAL, "vhd: size %llu is not a positive multiple of 512",
				 (unsigned long long)size);
		goto err_free;
	}
	if (size / VHD_SECTOR > VHD_MAX_SECTORS) {
		ret = vd_err_set(err, EFBIG,
				 "vhd: disk size %llu is too large, max size is 2040 GiB",
				 (unsigned long long)size);
		goto err_free;
	}
	if (block < VHD_MIN_BLOCK || block > VHD_MAX_BLOCK || (block & (block - 1))) {
		ret = vd_err_set(err, EINVAL,
				 "vhd: block size %u is not a power of two from 512 to 256 MiB",
				 block);
		goto err_free;
	}
	if (o->max_size_bytes && type == VHD_TYPE_FIXED) {
		ret = vd_err_set(err, EINVAL, "vhd: max_size is for dynamic disks (a BAT reserve)");
		goto err_free;
	}
	if (o->max_size_bytes && (o->max_size_bytes < size || o->max_size_bytes % VHD_SECTOR ||
				  o->max_size_bytes / VHD_SECTOR > VHD_MAX_SECTORS)) {
		ret = vd_err_set(err, EINVAL,
				 "vhd: max_size %llu must be a multiple of 512 from the disk size "
				 "to 2040 GiB",
				 (unsigned long long)o->max_size_bytes);
		goto err_free;
	}
	/* BAT entries for the largest size the disk may grow to (vhd-util create -S) */
	entries = (uint32_t)VD_DIV_ROUND_UP(VD_MAX(size, o->max_size_bytes), (uint64_t)block);
	if (type != VHD_TYPE_FIXED && entries > VHD_MAX_BAT_ENTRIES) {
		ret = vd_err_set(err, EINVAL, "vhd: %u blocks of %u bytes are too many (max %u)",
				 entries, block, VHD_MAX_BAT_ENTRIES);
		goto err_free;
	}

	memcpy(f.creator_app, "tap\0", 4);
	f.features = 2;
	f.version = 0x00010000;
	f.data_offset = type == VHD_TYPE_FIXED ? UINT64_MAX : VHD_FOOTER_SIZE;
	f.timestamp = vhd_time_now();
	f.creator_ver = VHD_TAP_VERSION;
	f.creator_os = 0x4c6e7578; /* "Lnux" */
	f.orig_size = size;
	f.current_size = size;
	vhd_chs(size, &f.cyls, &f.heads, &f.secs);
	f.type = type;
	if (getrandom(f.uuid, sizeof(f.uuid), 0) != (ssize_t)sizeof(f.uuid)) {
		ret = vd_err_set(err, EIO, "vhd: no random bytes for the UUID");
		goto err_free;
	}
	f.uuid[6] = (uint8_t)((f.uuid[6] & 0x0f) | 0x40); /* v4 */
	f.uuid[8] = (uint8_t)((f.uuid[8] & 0x3f) | 0x80);

	fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | (overwrite ? 0 : O_EXCL), 0600);
	if (fd < 0) {
		ret = errno;
		ret = vd_err_set(err, ret, ret == EEXIST ? "%s already exists" : "cannot create %s",
				 path);
		goto err_free;
	}
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || ftruncate(fd, 0) < 0) {
		ret = vd_err_set(err, errno ? errno : EINVAL, "%s: not a usable regular file",
				 path);
		goto err_close;
	}
	if (type == VHD_TYPE_FIXED) {
		vhd_footer_encode(&f, fbuf);
		ret = write_all(fd, fbuf, sizeof(fbuf), size);
		if (ret < 0) {
			vd_err_set(err, -ret, "%s: writing the footer", path);
			goto err_unlink;
		}
		goto done;
	}

	bat_bytes = VD_ALIGN_UP(entries * 4u, VHD_SECTOR);
	batmap_sectors = VD_DIV_ROUND_UP(VD_DIV_ROUND_UP(entries, 8u), VHD_SECTOR);
	h.data_offset = UINT64_MAX;
	h.table_offset = VHD_FOOTER_SIZE + VHD_HEADER_SIZE;
	h.version = 0x00010000;
	h.max_table_entries = entries;
	h.block_size = block;
	off = h.table_offset + bat_bytes + VHD_SECTOR + (uint64_t)batmap_sectors * VHD_SECTOR;
	if (type == VHD_TYPE_DIFF) {
		const char *base =
			strrchr(parent_abs, '/') ? strrchr(parent_abs, '/') + 1 : parent_abs;
		char url[sizeof(locs[2].buf) + 16];
		size_t k;

		memcpy(h.parent_uuid, parent_uuid, 16);
		h.parent_timestamp = parent_ts;
		for (k = 0; k < 255 && base[k]; k++) {
			h.parent_name[2 * k + 1] = (uint8_t)base[k]; /* UTF-16BE, ASCII */
		}
		ret = encode_utf16le(parent_rel, true,
				     strncmp(parent_rel, "../", 3) == 0 ? "" : "./", &locs[0]);
		if (ret == 0) {
			ret = encode_utf16le(parent_abs, true, "", &locs[1]);
		}
		if (ret < 0) {
			ret = vd_err_set(err, -ret, "vhd: parent path %s must be ASCII and short",
					 parent_abs);
			goto err_unlink;
		}
		locs[0].code = VHD_PLAT_W2RU;
		locs[1].code = VHD_PLAT_W2KU;
		ret = snprintf(url, sizeof(url), "file://%s%s",
			       strncmp(parent_rel, "../", 3) == 0 ? "" : "./", parent_rel);
		if (ret < 0 || (size_t)ret >= sizeof(locs[2].buf)) {
			ret = vd_err_set(err, ENAMETOOLONG, "vhd: parent path %s is too long",
					 parent_abs);
			goto err_unlink;
		}
		locs[2].code = VHD_PLAT_MACX;
		locs[2].len = strlen(url);
		memcpy(locs[2].buf, url, locs[2].len);
		nlocs = 3;
		for (i = 0; i < nlocs; i++) {
			uint32_t space = VD_ALIGN_UP((uint32_t)locs[i].len, VHD_SECTOR);

			h.loc[i].code = locs[i].code;
			h.loc[i].data_space = space / VHD_SECTOR;
			h.loc[i].data_len = (uint32_t)locs[i].len;
			h.loc[i].data_offset = off;
			off += space;
		}
	}
	meta_len = off;
	meta = calloc(1, meta_len);
	if (!meta) {
		ret = vd_err_set(err, ENOMEM, "out of memory");
		goto err_unlink;
	}
	vhd_footer_encode(&f, meta);
	vhd_header_encode(&h, meta + VHD_FOOTER_SIZE);
	memset(meta + h.table_offset, 0xff, bat_bytes);
	{
		uint8_t *bh = meta + h.table_offset + bat_bytes;
		uint64_t map_off = h.table_offset + bat_bytes + VHD_SECTOR;

		memcpy(bh, VHD_COOKIE_BATMAP, 8);
		put_be64(bh + offsetof(struct vhd_batmap_disk, batmap_offset), map_off);
		vhd_put_be32(bh + offsetof(struct vhd_batmap_disk, batmap_size), batmap_sectors);
		vhd_put_be32(bh + offsetof(struct vhd_batmap_disk, batmap_version),
			     VHD_BATMAP_VERSION);
		/* an all-zero map sums to 0 */
		vhd_put_be32(bh + offsetof(struct vhd_batmap_disk, checksum), ~0u);
	}
	for (i = 0; i < nlocs; i++) {
		memcpy(meta + h.loc[i].data_offset, locs[i].buf, locs[i].len);
	}
	ret = write_all(fd, meta, meta_len, 0);
	if (ret == 0) {
		vhd_footer_encode(&f, fbuf);
		ret = write_all(fd, fbuf, sizeof(fbuf), meta_len);
	}
	if (ret < 0) {
		vd_err_set(err, -ret, "%s: writing the metadata", path);
		goto err_unlink;
	}
done:
	if (fsync(fd) < 0) {
		ret = vd_err_set(err, errno, "%s: fsync", path);
		goto err_unlink;
	}
	free(meta);
	free(locs);
	if (close(fd) < 0) {
		return vd_err_set(err, errno, "closing %s", path);
	}
	return 0;

err_unlink:
	if (!overwrite) {
		unlink(path);
	}
err_close:
	close(fd);
err_free:
	free(meta);
	free(locs);
	return ret;
}
