/*
 * imgtool: the format-independent image commands behind `vdisk check`,
 * `map`, `convert`, `snapshot`, `commit`, `resize`, `create` and `info`
 * (qemu-img's conventions). Each uses only the image API (image/image.h),
 * so a format works here as soon as its driver registers.
 *
 * Functions return >= 0 on success (check: its exit code, see below) or
 * -errno with err filled; the caller prints "vdisk: <err>".
 */
#ifndef VD_CTL_IMGTOOL_H
#define VD_CTL_IMGTOOL_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include "common/err.h"
#include "image/image.h"

/* ---- progress bar: on stderr, \r-updated at most 10 times a second ---- */

enum vd_progress_mode {
	VD_PROGRESS_NEVER,
	VD_PROGRESS_AUTO, /* when stderr is a terminal (also what -p asks for) */
};

struct vd_progress {
	FILE *f; /* NULL: off */
	uint64_t last_ns;
	int last_permille;
};

void vd_progress_init(struct vd_progress *p, enum vd_progress_mode mode);
void vd_progress_update(struct vd_progress *p, uint64_t done, uint64_t total);
void vd_progress_end(struct vd_progress *p);

/* ---- map: extents, merged as qemu-img map merges them ---- */

struct vd_map_extent {
	uint64_t start;
	uint64_t length;
	unsigned int depth;
	bool present; /* allocated somewhere in the chain */
	bool zero;
	bool data;
	bool has_offset;
	uint64_t offset; /* host offset in the file of layer depth */
};

/*
 * A streaming writer: extents come in order; an extent that continues the
 * previous one (same depth and flags, offsets contiguous or both absent)
 * is merged into it. Output: `qemu-img map --output=json` exactly, or a
 * table for humans. Memory is constant whatever the number of extents.
 */
struct vd_map_writer {
	FILE *f;
	bool json;
	bool have;
	struct vd_map_extent cur;
	uint64_t emitted;
};

void vd_map_writer_init(struct vd_map_writer *w, FILE *f, bool json);
void vd_map_writer_add(struct vd_map_writer *w, const struct vd_map_extent *e);
void vd_map_writer_end(struct vd_map_writer *w);
bool vd_map_extent_mergeable(const struct vd_map_extent *a, const struct vd_map_extent *b);
/* The extent for one vd_block_status answer at offset_bytes. */
void vd_map_extent_from_status(struct vd_map_extent *e, uint64_t offset_bytes,
			       const struct vd_block_status *bs);

/* ---- option parsing ---- */

/*
 * qemu-img's -o list: key=value[,key=value...] (",," is a literal comma).
 * Keys: size, cluster_size, subformat, compat, lazy_refcounts, extended_l2,
 * refcount_bits, preallocation, backing_file, backing_fmt. Parses s in
 * place (the strings in o point into it); may be called once per -o.
 */
int vd_imgtool_parse_create_opts(char *s, struct vd_image_create_opts *o, struct vd_err *err);

/*
 * A resize argument: SIZE, +SIZE or -SIZE (K/M/G/T suffixes) relative to
 * cur_bytes. Shrinking needs allow_shrink (-EPERM otherwise); -ERANGE on
 * overflow or below zero; -EINVAL on junk.
 */
int vd_imgtool_parse_resize(const char *s, uint64_t cur_bytes, bool allow_shrink,
			    uint64_t *out_bytes);

/*
 * The path a backing file name recorded in an image refers to: relative
 * names are relative to the image's directory (qemu's rule).
 */
int vd_imgtool_backing_path(const char *image_path, const char *backing, char *out, size_t out_len);

/* ---- commands ---- */

/*
 * The backing-file policy every command below opens images with (image.h;
 * default: zero). p and its strings are borrowed until the last command.
 */
void vd_imgtool_set_backing_policy(const struct vd_backing_policy *p);

/* Exit codes of check (qemu-img check's). */
#define VD_CHECK_CLEAN   0
#define VD_CHECK_CORRUPT 2
#define VD_CHECK_LEAKS   3

int vd_imgtool_check(const char *path, const char *format, bool repair, bool json, FILE *out,
		     struct vd_err *err);
int vd_imgtool_map(const char *path, const char *format, bool json, FILE *out, struct vd_err *err);

struct vd_convert_opts {
	const char *src;
	const char *src_format; /* NULL: probe */
	const char *dst;
	const char *dst_format;             /* NULL: raw */
	struct vd_image_create_opts create; /* size_bytes 0: the source's */
	enum vd_progress_mode progress;
};
int vd_imgtool_convert(const struct vd_convert_opts *o, struct vd_err *err);

/* NEW becomes an overlay of IMAGE (new_format NULL: IMAGE's format). */
int vd_imgtool_snapshot(const char *path, const char *format, const char *new_path,
			const char *new_format, struct vd_err *err);
/* Copy what IMAGE's top layer holds into its backing image. */
int vd_imgtool_commit(const char *path, const char *format, enum vd_progress_mode progress,
		      FILE *out, struct vd_err *err);
int vd_imgtool_resize(const char *path, const char *format, const char *size, bool allow_shrink,
		      FILE *out, struct vd_err *err);
int vd_imgtool_create(const char *path, const char *format, const struct vd_image_create_opts *o,
		      struct vd_err *err);
/* force_share: as qemu-img info -U, read an image even while a writer holds it. */
int vd_imgtool_info(const char *path, const char *format, bool json, bool force_share, FILE *out,
		    struct vd_err *err);

#endif
