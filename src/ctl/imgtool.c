/*
 * imgtool: format-independent image commands (imgtool.h), written against
 * the image API only.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/compiler.h"
#include "ctl/ctl.h"
#include "ctl/imgtool.h"

#define CHUNK_BYTES       (2u << 20) /* copy granularity of convert/commit */
#define ZERO_DETECT_BYTES 4096u      /* convert skips zero-filled blocks of this size */

/* ---- progress ---- */

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

void vd_progress_init(struct vd_progress *p, enum vd_progress_mode mode)
{
	memset(p, 0, sizeof(*p));
	p->last_permille = -1;
	if (mode == VD_PROGRESS_AUTO && isatty(STDERR_FILENO)) {
		p->f = stderr;
	}
}

static void progress_draw(struct vd_progress *p, int permille)
{
	char bar[41];
	int fill = permille * 40 / 1000, i;

	for (i = 0; i < 40; i++) {
		bar[i] = i < fill ? '#' : ' ';
	}
	bar[40] = '\0';
	fprintf(p->f, "\r[%s] %3d.%d%%", bar, permille / 10, permille % 10);
	(void)fflush(p->f);
}

void vd_progress_update(struct vd_progress *p, uint64_t done, uint64_t total)
{
	uint64_t t;
	int permille;

	if (!p->f) {
		return;
	}
	permille = total ? (int)(VD_MIN(done, total) * 1000 / total) : 1000;
	t = now_ns();
	if (permille == p->last_permille || (p->last_ns && t - p->last_ns < 100000000ull)) {
		return;
	}
	p->last_ns = t;
	p->last_permille = permille;
	progress_draw(p, permille);
}

void vd_progress_end(struct vd_progress *p)
{
	if (!p->f) {
		return;
	}
	progress_draw(p, 1000);
	(void)fputc('\n', p->f);
	p->f = NULL;
}

/* ---- map ---- */

void vd_map_extent_from_status(struct vd_map_extent *e, uint64_t offset_bytes,
			       const struct vd_block_status *bs)
{
	memset(e, 0, sizeof(*e));
	e->start = offset_bytes;
	e->length = bs->len_bytes;
	e->depth = bs->depth;
	e->present = bs->flags & VD_BLOCK_ALLOCATED;
	e->zero = bs->flags & VD_BLOCK_ZERO;
	e->data = bs->flags & VD_BLOCK_DATA;
	e->has_offset = bs->host_offset_bytes != UINT64_MAX;
	e->offset = e->has_offset ? bs->host_offset_bytes : 0;
}

bool vd_map_extent_mergeable(const struct vd_map_extent *a, const struct vd_map_extent *b)
{
	/* qemu-img.c: entry_mergeable() */
	if (a->start + a->length != b->start) {
		return false;
	}
	if (a->depth != b->depth || a->present != b->present || a->zero != b->zero ||
	    a->data != b->data || a->has_offset != b->has_offset) {
		return false;
	}
	return !a->has_offset || a->offset + a->length == b->offset;
}

static void map_emit(struct vd_map_writer *w, const struct vd_map_extent *e)
{
	if (w->json) {
		fprintf(w->f,
			"%s{ \"start\": %" PRIu64 ", \"length\": %" PRIu64 ", \"depth\": %u, "
			"\"present\": %s, \"zero\": %s, \"data\": %s",
			w->emitted ? ",\n" : "[", e->start, e->length, e->depth,
			e->present ? "true" : "false", e->zero ? "true" : "false",
			e->data ? "true" : "false");
		if (e->has_offset) {
			fprintf(w->f, ", \"offset\": %" PRIu64, e->offset);
		}
		(void)fputc('}', w->f);
	} else {
		if (w->emitted == 0) {
			fprintf(w->f, "%-18s %-18s %-5s %-9s %s\n", "Start", "Length", "Depth",
				"Type", "Mapped to");
		}
		fprintf(w->f, "0x%-16" PRIx64 " 0x%-16" PRIx64 " %-5u %-9s", e->start, e->length,
			e->depth,
			e->data ? (e->zero ? "data,zero" : "data")
				: (e->zero ? (e->present ? "zero" : "unalloc") : "-"));
		if (e->has_offset) {
			fprintf(w->f, " 0x%" PRIx64, e->offset);
		}
		(void)fputc('\n', w->f);
	}
	w->emitted++;
}

void vd_map_writer_init(struct vd_map_writer *w, FILE *f, bool json)
{
	memset(w, 0, sizeof(*w));
	w->f = f;
	w->json = json;
}

void vd_map_writer_add(struct vd_map_writer *w, const struct vd_map_extent *e)
{
	if (e->length == 0) {
		return;
	}
	if (w->have && vd_map_extent_mergeable(&w->cur, e)) {
		w->cur.length += e->length;
		return;
	}
	if (w->have) {
		map_emit(w, &w->cur);
	}
	w->cur = *e;
	w->have = true;
}

void vd_map_writer_end(struct vd_map_writer *w)
{
	if (w->have) {
		map_emit(w, &w->cur);
		w->have = false;
	}
	if (w->json) {
		(void)fputs(w->emitted ? "]\n" : "[]\n", w->f);
	}
}

/* ---- option parsing ---- */

/* Next "key=value" item of a qemu-style list; ",," is a comma. NULL at the end. */
static char *next_item(char **cursor)
{
	char *start = *cursor, *r, *w;

	if (!start || !*start) {
		return NULL;
	}
	for (r = w = start; *r; r++, w++) {
		if (*r == ',') {
			if (r[1] == ',') {
				r++;
			} else {
				*w = '\0';
				*cursor = r + 1;
				return start;
			}
		}
		*w = *r;
	}
	*w = '\0';
	*cursor = r;
	return start;
}

static int parse_bool(const char *v, bool *out)
{
	if (!strcmp(v, "on") || !strcmp(v, "true") || !strcmp(v, "yes") || !strcmp(v, "1")) {
		*out = true;
		return 0;
	}
	if (!strcmp(v, "off") || !strcmp(v, "false") || !strcmp(v, "no") || !strcmp(v, "0")) {
		*out = false;
		return 0;
	}
	return -EINVAL;
}

int vd_imgtool_parse_create_opts(char *s, struct vd_image_create_opts *o, struct vd_err *err)
{
	char *cursor = s, *item;

	while ((item = next_item(&cursor)) != NULL) {
		char *val = strchr(item, '=');
		uint64_t n;

		if (!val || val == item) {
			return vd_err_set(err, EINVAL, "option '%s' is not key=value", item);
		}
		*val++ = '\0';
		if (!strcmp(item, "size")) {
			if (vd_ctl_parse_size(val, &n) < 0 || n == 0) {
				return vd_err_set(err, EINVAL, "invalid size '%s'", val);
			}
			o->size_bytes = n;
		} else if (!strcmp(item, "cluster_size") || !strcmp(item, "block_size")) {
			if (vd_ctl_parse_size(val, &n) < 0 || n < 512 || n > UINT32_MAX ||
			    (n & (n - 1))) {
				return vd_err_set(err, EINVAL,
						  "%s '%s' is not a power of two >= 512", item,
						  val);
			}
			o->cluster_bytes = (uint32_t)n;
		} else if (!strcmp(item, "subformat")) {
			o->subformat = val;
		} else if (!strcmp(item, "max_size")) {
			if (vd_ctl_parse_size(val, &n) < 0 || n == 0) {
				return vd_err_set(err, EINVAL, "invalid max_size '%s'", val);
			}
			o->max_size_bytes = n;
		} else if (!strcmp(item, "compat")) {
			if (!strcmp(val, "0.10") || !strcmp(val, "v2") || !strcmp(val, "2")) {
				o->compat = 2;
			} else if (!strcmp(val, "1.1") || !strcmp(val, "v3") || !strcmp(val, "3")) {
				o->compat = 3;
			} else {
				return vd_err_set(err, EINVAL, "compat '%s' (0.10 or 1.1)", val);
			}
		} else if (!strcmp(item, "lazy_refcounts") || !strcmp(item, "extended_l2")) {
			bool b;

			if (parse_bool(val, &b) < 0) {
				return vd_err_set(err, EINVAL, "%s '%s' (on or off)", item, val);
			}
			if (item[0] == 'l') {
				o->lazy_refcounts = b;
			} else {
				o->extended_l2 = b;
			}
		} else if (!strcmp(item, "refcount_bits")) {
			if (vd_ctl_parse_size(val, &n) < 0 || n == 0 || n > 64 || (n & (n - 1))) {
				return vd_err_set(err, EINVAL,
						  "refcount_bits '%s' (a power of two, 1..64)",
						  val);
			}
			o->refcount_bits = (uint32_t)n;
		} else if (!strcmp(item, "preallocation")) {
			if (strcmp(val, "off") != 0 && strcmp(val, "metadata") != 0 &&
			    strcmp(val, "falloc") != 0 && strcmp(val, "full") != 0) {
				return vd_err_set(
					err, EINVAL,
					"preallocation '%s' (off, metadata, falloc, full)", val);
			}
			o->preallocation = val;
		} else if (!strcmp(item, "backing_file")) {
			if (!*val) {
				return vd_err_set(err, EINVAL, "empty backing_file");
			}
			o->backing_file = val;
		} else if (!strcmp(item, "backing_fmt")) {
			o->backing_format = val;
		} else {
			return vd_err_set(err, EINVAL, "unknown option '%s'", item);
		}
	}
	return 0;
}

int vd_imgtool_parse_resize(const char *s, uint64_t cur_bytes, bool allow_shrink,
			    uint64_t *out_bytes)
{
	uint64_t n;
	int ret;

	if (!s) {
		return -EINVAL;
	}
	ret = vd_ctl_parse_size(s + (*s == '+' || *s == '-'), &n);
	if (ret < 0) {
		return ret;
	}
	if (*s == '+') {
		if (n > UINT64_MAX - cur_bytes) {
			return -ERANGE;
		}
		n += cur_bytes;
	} else if (*s == '-') {
		if (n > cur_bytes) {
			return -ERANGE;
		}
		n = cur_bytes - n;
	}
	if (n < cur_bytes && !allow_shrink) {
		return -EPERM;
	}
	*out_bytes = n;
	return 0;
}

int vd_imgtool_backing_path(const char *image_path, const char *backing, char *out, size_t out_len)
{
	const char *slash = strrchr(image_path, '/');
	int n;

	if (backing[0] == '/' || !slash) {
		n = snprintf(out, out_len, "%s", backing);
	} else {
		n = snprintf(out, out_len, "%.*s/%s", (int)(slash - image_path), image_path,
			     backing);
	}
	if (n < 0 || (size_t)n >= out_len) {
		return -ENAMETOOLONG;
	}
	return 0;
}

/* ---- helpers ---- */

static const struct vd_backing_policy *g_backing;

void vd_imgtool_set_backing_policy(const struct vd_backing_policy *p)
{
	g_backing = p;
}

static void set_backing(struct vd_image_opts *o)
{
	if (g_backing) {
		o->backing = *g_backing;
	}
}

/*
 * Every tool opens through here: vd_image_open takes the image locks and
 * applies the backing-file policy to the chain.
 */
static int open_image_opts(const char *path, struct vd_image_opts *o, struct vd_image **out,
			   struct vd_err *err)
{
	int ret;

	set_backing(o);
	ret = vd_image_open(path, o, out, err);
	if (ret < 0 && err && err->errnum == 0) {
		vd_err_set(err, -ret, "opening %s", path);
	}
	return ret;
}

static int open_image(const char *path, const char *format, bool readonly, struct vd_image **out,
		      struct vd_err *err)
{
	struct vd_image_opts o = {
		.format = format,
		.io_backend = "uring",
		.readonly = readonly,
		.cache = VD_CACHE_WRITEBACK,
	};

	return open_image_opts(path, &o, out, err);
}

/*
 * A tool never writes into its own input: DST must be no file of SRC's
 * chain, whatever the spelling (./X, a symlink, a hard link).
 */
static int refuse_own_input(struct vd_image *src, const char *dst, struct vd_err *err)
{
	struct vd_image *hit = NULL;
	int ret = vd_image_chain_find_file(src, dst, &hit);

	if (ret < 0) {
		return vd_err_set(err, -ret, "%s", dst);
	}
	if (ret > 0) {
		return vd_err_set(
			err, EINVAL,
			"%s is %s%s, which the conversion reads: refusing to overwrite it", dst,
			hit == src ? "the source " : "the backing file ", vd_image_path(hit));
	}
	return 0;
}

static void *alloc_buf(size_t len)
{
	void *p = NULL;

	if (posix_memalign(&p, 4096, len) != 0) {
		return NULL;
	}
	return p;
}

static bool all_zero(const unsigned char *p, size_t len)
{
	static const unsigned char zero[256];

	while (len >= sizeof(zero)) {
		if (memcmp(p, zero, sizeof(zero)) != 0) {
			return false;
		}
		p += sizeof(zero);
		len -= sizeof(zero);
	}
	return len == 0 || memcmp(p, zero, len) == 0;
}

/* ---- check ---- */

/* res: the final check; rep: what a repair fixed (NULL: no repair). */
static void print_check(FILE *out, const char *path, const char *format,
			const struct vd_check_result *res, const struct vd_check_result *rep,
			bool json)
{
	uint64_t corrupt = res->corruptions, leaks = res->leaks;
	uint64_t cfix = rep ? rep->corruptions_fixed : 0, lfix = rep ? rep->leaks_fixed : 0;

	if (json) {
		(void)fputs("{\"filename\": ", out);
		vd_ctl_json_string(out, path);
		(void)fputs(", \"format\": ", out);
		vd_ctl_json_string(out, format);
		fprintf(out,
			", \"check-errors\": 0, \"corruptions\": %" PRIu64 ", \"leaks\": %" PRIu64
			", \"corruptions-fixed\": %" PRIu64 ", \"leaks-fixed\": %" PRIu64
			", \"allocated-clusters\": %" PRIu64 ", \"total-clusters\": %" PRIu64,
			corrupt, leaks, cfix, lfix, res->allocated_units, res->total_units);
		if (res->first_problem[0]) {
			(void)fputs(", \"first-problem\": ", out);
			vd_ctl_json_string(out, res->first_problem);
		}
		(void)fputs("}\n", out);
		return;
	}
	if (rep && rep->first_problem[0]) {
		fprintf(out, "%s\n", rep->first_problem);
	}
	if (cfix || lfix) {
		fprintf(out,
			"The following inconsistencies were found and repaired:\n\n"
			"    %" PRIu64 " leaked clusters\n    %" PRIu64 " corruptions\n\n",
			lfix, cfix);
	}
	if (rep) {
		fprintf(out, "Double checking the fixed image now...\n");
	}
	if (res->first_problem[0]) {
		fprintf(out, "%s\n", res->first_problem);
	}
	if (corrupt == 0 && leaks == 0) {
		fprintf(out, "No errors were found on the image.\n");
	}
	if (corrupt) {
		fprintf(out,
			"\n%" PRIu64 " errors were found on the image.\n"
			"Data may be corrupted, or further writes to the image may corrupt it.\n",
			corrupt);
	}
	if (leaks) {
		fprintf(out,
			"\n%" PRIu64 " leaked clusters were found on the image.\n"
			"This means waste of disk space, but no harm to data.\n",
			leaks);
	}
	if (res->total_units) {
		fprintf(out, "%" PRIu64 "/%" PRIu64 " = %.2f%% allocated\n", res->allocated_units,
			res->total_units,
			100.0 * (double)res->allocated_units / (double)res->total_units);
	}
}

/*
 * check [--repair]. The verdict of a repair is that of a fresh check of
 * the repaired image, opened again from the file (as qemu-img's "Double
 * checking the fixed image now"), never the repair's own count.
 */
int vd_imgtool_check(const char *path, const char *format, bool repair, bool json, FILE *out,
		     struct vd_err *err)
{
	struct vd_check_result res, rep;
	struct vd_image_info info;
	struct vd_err cerr = { 0 };
	struct vd_image *img;
	char fmt[16];
	int ret;

	struct vd_image_opts o = {
		.format = format,
		.io_backend = "uring",
		.readonly = !repair,
		.repair = repair,
		.cache = VD_CACHE_WRITEBACK,
	};

	ret = open_image_opts(path, &o, &img, err);
	if (ret < 0) {
		return ret;
	}
	vd_image_get_info(img, &info);
	snprintf(fmt, sizeof(fmt), "%s", info.format);
	ret = vd_image_check(img, repair, &res, &cerr);
	if (ret == -EOPNOTSUPP) {
		if (json) {
			(void)fputs("{\"filename\": ", out);
			vd_ctl_json_string(out, path);
			(void)fputs(", \"format\": ", out);
			vd_ctl_json_string(out, fmt);
			(void)fputs(", \"check-errors\": 0, \"corruptions\": 0, \"leaks\": 0, "
				    "\"metadata\": false}\n",
				    out);
		} else {
			fprintf(out, "%s: %s image, no metadata to check\n", path, fmt);
		}
		vd_image_close(img);
		return VD_CHECK_CLEAN;
	}
	vd_image_close(img);
	if (ret < 0) {
		*err = cerr;
		return ret;
	}
	if (repair) {
		rep = res;
		ret = open_image(path, fmt, true, &img, err);
		if (ret < 0) {
			return ret;
		}
		ret = vd_image_check(img, false, &res, &cerr);
		vd_image_close(img);
		if (ret < 0) {
			*err = cerr;
			return ret;
		}
	}
	print_check(out, path, fmt, &res, repair ? &rep : NULL, json);
	return res.corruptions ? VD_CHECK_CORRUPT : res.leaks ? VD_CHECK_LEAKS : VD_CHECK_CLEAN;
}

/* ---- map ---- */

int vd_imgtool_map(const char *path, const char *format, bool json, FILE *out, struct vd_err *err)
{
	struct vd_map_writer w;
	struct vd_image_info info;
	struct vd_image *img;
	uint64_t off = 0;
	int ret;

	ret = open_image(path, format, true, &img, err);
	if (ret < 0) {
		return ret;
	}
	vd_image_get_info(img, &info);
	vd_map_writer_init(&w, out, json);
	while (off < info.size_bytes) {
		struct vd_block_status bs;
		struct vd_map_extent e;

		ret = vd_image_block_status(img, off, info.size_bytes - off, &bs);
		if (ret < 0) {
			vd_map_writer_end(&w);
			vd_image_close(img);
			return vd_err_set(err, -ret, "%s: block status at %" PRIu64, path, off);
		}
		vd_map_extent_from_status(&e, off, &bs);
		vd_map_writer_add(&w, &e);
		off += bs.len_bytes;
	}
	vd_map_writer_end(&w);
	vd_image_close(img);
	return 0;
}

/* ---- convert ---- */

struct copier {
	struct vd_image_sync *src;
	struct vd_image_sync *dst;
	unsigned char *buf;
	uint64_t align;   /* common sector size */
	bool skip_zeroes; /* the destination reads zeroes where nothing is written */
};

/* Write buf[0..len) at off, skipping zero-filled blocks if allowed. */
static int64_t write_sparse(struct copier *c, uint64_t off, uint64_t len)
{
	uint64_t gran = VD_MAX((uint64_t)ZERO_DETECT_BYTES, c->align), pos = 0;

	if (!c->skip_zeroes) {
		return vd_image_sync_io(c->dst, VD_IO_WRITE, c->buf, len, off);
	}
	while (pos < len) {
		uint64_t run_start, n;
		bool zero;

		/* blocks end on absolute multiples of gran, so runs stay aligned */
		n = VD_MIN(gran - (off + pos) % gran, len - pos);
		zero = all_zero(c->buf + pos, n);
		run_start = pos;
		pos += n;
		while (pos < len) {
			n = VD_MIN(gran, len - pos);
			if (all_zero(c->buf + pos, n) != zero) {
				break;
			}
			pos += n;
		}
		if (!zero) {
			int64_t r = vd_image_sync_io(c->dst, VD_IO_WRITE, c->buf + run_start,
						     pos - run_start, off + run_start);

			if (r < 0) {
				return r;
			}
		}
	}
	return (int64_t)len;
}

static int copy_data(struct copier *c, uint64_t off, uint64_t len)
{
	while (len) {
		uint64_t n = VD_MIN(len, (uint64_t)CHUNK_BYTES);
		int64_t r = vd_image_sync_io(c->src, VD_IO_READ, c->buf, n, off);

		if (r < 0) {
			return (int)r;
		}
		r = write_sparse(c, off, n);
		if (r < 0) {
			return (int)r;
		}
		off += n;
		len -= n;
	}
	return 0;
}

int vd_imgtool_convert(const struct vd_convert_opts *o, struct vd_err *err)
{
	struct vd_image_create_opts co = o->create;
	struct vd_image_info si, di;
	struct vd_image *src = NULL, *dst = NULL;
	struct copier c = { 0 };
	struct vd_progress prog;
	uint64_t off = 0;
	int ret;

	ret = open_image(o->src, o->src_format, true, &src, err);
	if (ret < 0) {
		return ret;
	}
	ret = refuse_own_input(src, o->dst, err);
	if (ret < 0) {
		goto out;
	}
	vd_image_get_info(src, &si);
	if (co.size_bytes == 0) {
		co.size_bytes = si.size_bytes;
	}
	if (co.size_bytes < si.size_bytes) {
		ret = vd_err_set(err, EINVAL, "the target size is smaller than %s", o->src);
		goto out;
	}
	co.flags |= VD_IMAGE_CREATE_OVERWRITE;
	ret = vd_image_create_opts(o->dst, o->dst_format, &co, err);
	if (ret < 0) {
		goto out;
	}
	ret = open_image(o->dst, o->dst_format ? o->dst_format : "raw", false, &dst, err);
	if (ret < 0) {
		goto out;
	}
	vd_image_get_info(dst, &di);
	if (di.size_bytes < si.size_bytes) {
		ret = vd_err_set(err, EINVAL, "%s came out smaller than %s", o->dst, o->src);
		goto out;
	}
	c.align = VD_MAX(si.sector_bytes, di.sector_bytes);
	c.skip_zeroes = co.backing_file == NULL &&
			(!co.preallocation || strcmp(co.preallocation, "off") == 0 ||
			 strcmp(co.preallocation, "metadata") == 0);
	c.buf = alloc_buf(CHUNK_BYTES);
	if (!c.buf) {
		ret = vd_err_set(err, ENOMEM, "out of memory");
		goto out;
	}
	ret = vd_image_sync_open(src, &c.src, err);
	if (ret < 0) {
		goto out;
	}
	ret = vd_image_sync_open(dst, &c.dst, err);
	if (ret < 0) {
		goto out;
	}
	vd_progress_init(&prog, o->progress);
	while (off < si.size_bytes) {
		struct vd_block_status bs;

		ret = vd_image_block_status(src, off, si.size_bytes - off, &bs);
		if (ret < 0) {
			vd_err_set(err, -ret, "%s: block status at %" PRIu64, o->src, off);
			break;
		}
		if (!VD_IS_ALIGNED(bs.len_bytes, c.align) && off + bs.len_bytes < si.size_bytes) {
			/* round a sub-sector extent up: copying a little more is harmless */
			bs.len_bytes =
				VD_MIN(VD_ALIGN_UP(bs.len_bytes, c.align), si.size_bytes - off);
			bs.flags = VD_BLOCK_DATA;
		}
		if (bs.flags & VD_BLOCK_ZERO) {
			if (!c.skip_zeroes) {
				ret = (int)vd_image_sync_io(c.dst, VD_IO_WRITE_ZEROES, NULL,
							    bs.len_bytes, off);
			}
		} else {
			ret = copy_data(&c, off, bs.len_bytes);
		}
		if (ret < 0) {
			/* the source is read-only here; say what the failure left */
			vd_err_set(err, -ret,
				   "copying %s to %s at offset %" PRIu64 " (%s left incomplete)",
				   o->src, o->dst, off, o->dst);
			break;
		}
		off += bs.len_bytes;
		vd_progress_update(&prog, off, si.size_bytes);
	}
	if (ret >= 0) {
		ret = (int)vd_image_sync_io(c.dst, VD_IO_FLUSH, NULL, 0, 0);
		if (ret < 0) {
			vd_err_set(err, -ret, "flushing %s", o->dst);
		}
	}
	if (ret >= 0) {
		vd_progress_end(&prog);
	} else if (prog.f) {
		(void)fputc('\n', prog.f);
	}
out:
	vd_image_sync_close(c.src);
	vd_image_sync_close(c.dst);
	free(c.buf);
	vd_image_close(dst);
	vd_image_close(src);
	return ret < 0 ? ret : 0;
}

/* ---- snapshot ---- */

int vd_imgtool_snapshot(const char *path, const char *format, const char *new_path,
			const char *new_format, struct vd_err *err)
{
	struct vd_image_create_opts co = { 0 };
	struct vd_image_info info;
	struct vd_image *img;
	char *abs;
	int ret;

	ret = open_image(path, format, true, &img, err);
	if (ret < 0) {
		return ret;
	}
	vd_image_get_info(img, &info);
	vd_image_close(img);
	if (!new_format) {
		new_format = info.format;
	}
	if (strcmp(new_format, "raw") == 0) {
		return vd_err_set(err, EINVAL,
				  "raw images cannot be snapshotted (no overlays): convert %s to "
				  "vhd or qcow2, or give -F vhd|qcow2",
				  path);
	}
	abs = realpath(path, NULL);
	if (!abs) {
		return vd_err_set(err, errno, "resolving %s", path);
	}
	co.size_bytes = info.size_bytes;
	co.backing_file = abs;
	co.backing_format = info.format;
	ret = vd_image_create_opts(new_path, new_format, &co, err);
	free(abs);
	return ret;
}

/* ---- commit ---- */

/*
 * commit's top, read-only, with the chain below it opened sharing
 * everything: this process itself opens the base for writing next, and
 * the base's writer lock keeps everyone else out.
 */
static int open_commit_top(const char *path, const char *format, struct vd_image **out,
			   struct vd_err *err)
{
	struct vd_image_opts o = {
		.format = format,
		.io_backend = "uring",
		.readonly = true,
		.cache = VD_CACHE_WRITEBACK,
		.backing_force_share = true,
	};

	return open_image_opts(path, &o, out, err);
}

int vd_imgtool_commit(const char *path, const char *format, enum vd_progress_mode progress,
		      FILE *out, struct vd_err *err)
{
	struct vd_image *top = NULL, *base = NULL, *below;
	struct vd_image_sync *ts = NULL, *bs_sync = NULL;
	struct vd_image_info ti, bi;
	struct vd_progress prog;
	char base_path[PATH_MAX];
	unsigned char *buf = NULL;
	uint64_t off = 0, copied = 0;
	int ret;

	ret = open_commit_top(path, format, &top, err);
	if (ret < 0) {
		return ret;
	}
	vd_image_get_info(top, &ti);
	below = vd_image_backing(top);
	if (!below || !ti.backing_file) {
		ret = vd_err_set(err, EINVAL, "%s has no backing file to commit into", path);
		goto out;
	}
	vd_image_get_info(below, &bi);
	ret = vd_imgtool_backing_path(path, ti.backing_file, base_path, sizeof(base_path));
	if (ret < 0) {
		vd_err_set(err, -ret, "%s: backing file name too long", path);
		goto out;
	}
	ret = open_image(base_path, bi.format, false, &base, err);
	if (ret < 0) {
		goto out;
	}
	vd_image_get_info(base, &bi);
	if (bi.size_bytes < ti.size_bytes) {
		ret = vd_image_resize(base, ti.size_bytes, err);
		if (ret < 0) {
			goto out;
		}
		vd_image_get_info(base, &bi);
	}
	buf = alloc_buf(CHUNK_BYTES);
	if (!buf) {
		ret = vd_err_set(err, ENOMEM, "out of memory");
		goto out;
	}
	ret = vd_image_sync_open(top, &ts, err);
	if (ret < 0) {
		goto out;
	}
	ret = vd_image_sync_open(base, &bs_sync, err);
	if (ret < 0) {
		goto out;
	}
	vd_progress_init(&prog, progress);
	while (off < ti.size_bytes) {
		struct vd_block_status st;
		uint64_t pos, end;

		ret = vd_image_block_status(top, off, ti.size_bytes - off, &st);
		if (ret < 0) {
			vd_err_set(err, -ret, "%s: block status at %" PRIu64, path, off);
			break;
		}
		end = off + st.len_bytes;
		if (st.depth == 0 && (st.flags & VD_BLOCK_ALLOCATED)) {
			if ((st.flags & VD_BLOCK_ZERO) && !(st.flags & VD_BLOCK_DATA)) {
				int64_t r = vd_image_sync_io(bs_sync, VD_IO_WRITE_ZEROES, NULL,
							     st.len_bytes, off);

				ret = r < 0 ? (int)r : 0;
			}
			for (pos = off; ret >= 0 && (st.flags & VD_BLOCK_DATA) && pos < end;) {
				uint64_t n = VD_MIN(end - pos, (uint64_t)CHUNK_BYTES);
				int64_t r = vd_image_sync_io(ts, VD_IO_READ, buf, n, pos);

				if (r >= 0) {
					r = vd_image_sync_io(bs_sync, VD_IO_WRITE, buf, n, pos);
				}
				ret = r < 0 ? (int)r : 0;
				pos += n;
			}
			if (ret < 0) {
				vd_err_set(err, -ret,
					   "committing %s at offset %" PRIu64 " (%s is unchanged, "
					   "%s holds part of it: commit again)",
					   path, off, path, base_path);
				break;
			}
			copied += st.len_bytes;
		}
		off = end;
		vd_progress_update(&prog, off, ti.size_bytes);
	}
	if (ret >= 0) {
		ret = (int)vd_image_sync_io(bs_sync, VD_IO_FLUSH, NULL, 0, 0);
		if (ret < 0) {
			vd_err_set(err, -ret, "flushing %s", base_path);
		}
	}
	if (ret >= 0) {
		vd_progress_end(&prog);
		if (out) {
			fprintf(out, "Image committed (%" PRIu64 " bytes into %s).\n", copied,
				base_path);
		}
	} else if (prog.f) {
		(void)fputc('\n', prog.f);
	}
out:
	vd_image_sync_close(ts);
	vd_image_sync_close(bs_sync);
	free(buf);
	vd_image_close(base);
	vd_image_close(top);
	return ret < 0 ? ret : 0;
}

/* ---- resize, create, info ---- */

int vd_imgtool_resize(const char *path, const char *format, const char *size, bool allow_shrink,
		      FILE *out, struct vd_err *err)
{
	struct vd_image_info info;
	struct vd_image *img;
	uint64_t n;
	int ret;

	ret = open_image(path, format, false, &img, err);
	if (ret < 0) {
		return ret;
	}
	vd_image_get_info(img, &info);
	ret = vd_imgtool_parse_resize(size, info.size_bytes, allow_shrink, &n);
	if (ret == -EPERM) {
		ret = vd_err_set(err, EPERM, "shrinking %s needs --shrink (data past %s is lost)",
				 path, size);
	} else if (ret < 0) {
		ret = vd_err_set(err, -ret, "invalid size '%s'", size);
	} else {
		ret = vd_image_resize(img, n, err);
	}
	vd_image_close(img);
	if (ret >= 0 && out) {
		fprintf(out, "Image resized.\n");
	}
	return ret < 0 ? ret : 0;
}

int vd_imgtool_create(const char *path, const char *format, const struct vd_image_create_opts *o,
		      struct vd_err *err)
{
	int ret = vd_image_create_opts(path, format, o, err);

	if (ret < 0 && err && err->errnum == 0) {
		vd_err_set(err, -ret, "creating %s", path);
	}
	return ret;
}

static void json_str_or_null(FILE *f, const char *s)
{
	if (s) {
		vd_ctl_json_string(f, s);
	} else {
		(void)fputs("null", f);
	}
}

int vd_imgtool_info(const char *path, const char *format, bool json, bool force_share, FILE *out,
		    struct vd_err *err)
{
	struct vd_image_opts o = {
		.format = format,
		.readonly = true,
		.force_share = force_share,
		.io_backend = "sync",
		.cache = VD_CACHE_WRITEBACK,
	};
	struct vd_image_info info;
	struct vd_image *img;
	const char *fmt;
	int ret;

	set_backing(&o);
	ret = vd_image_open(path, &o, &img, err);
	if (ret < 0) {
		if (err && err->errnum == 0) {
			vd_err_set(err, -ret, "opening %s", path);
		}
		return ret;
	}
	ret = vd_image_get_info(img, &info);
	if (ret < 0) {
		vd_image_close(img);
		return vd_err_set(err, -ret, "reading %s", path);
	}
	fmt = info.format ? info.format : "?";
	if (json) {
		(void)fputs("{\"image\": ", out);
		vd_ctl_json_string(out, path);
		(void)fputs(", \"format\": ", out);
		vd_ctl_json_string(out, fmt);
		fprintf(out,
			", \"size_bytes\": %" PRIu64 ", \"virtual_size_bytes\": %" PRIu64
			", \"sector_bytes\": %u, \"physical_sector_bytes\": %u, \"discard\": %s, "
			"\"discard_granularity_bytes\": %u, \"flush\": %s, "
			"\"allocated_bytes\": %" PRIu64 ", \"disk_size_bytes\": %" PRIu64
			", \"cluster_bytes\": %u, \"subformat\": ",
			info.size_bytes, info.size_bytes, info.sector_bytes,
			info.physical_sector_bytes, info.discard ? "true" : "false",
			info.discard_granularity_bytes, info.flush ? "true" : "false",
			info.allocated_bytes, info.allocated_bytes, info.cluster_bytes);
		json_str_or_null(out, info.subformat);
		(void)fputs(", \"backing_file\": ", out);
		json_str_or_null(out, info.backing_file);
		(void)fputs(", \"backing_format\": ", out);
		json_str_or_null(out, info.backing_format);
		fprintf(out, ", \"dirty\": %s, \"corrupt\": %s}\n", info.dirty ? "true" : "false",
			info.corrupt ? "true" : "false");
	} else {
		fprintf(out,
			"image: %s\nformat: %s\nvirtual size: %" PRIu64 " bytes\n"
			"disk size: %" PRIu64 " bytes\n",
			path, fmt, info.size_bytes, info.allocated_bytes);
		if (info.subformat) {
			fprintf(out, "subformat: %s\n", info.subformat);
		}
		if (info.cluster_bytes) {
			fprintf(out, "cluster size: %u\n", info.cluster_bytes);
		}
		if (info.backing_file) {
			fprintf(out, "backing file: %s\n", info.backing_file);
			if (info.backing_format) {
				fprintf(out, "backing file format: %s\n", info.backing_format);
			}
		}
		fprintf(out,
			"sector size: %u\nphysical sector size: %u\ndiscard: %s\n"
			"dirty: %s\ncorrupt: %s\n",
			info.sector_bytes, info.physical_sector_bytes, info.discard ? "yes" : "no",
			info.dirty ? "yes" : "no", info.corrupt ? "yes" : "no");
	}
	vd_image_close(img);
	return 0;
}
