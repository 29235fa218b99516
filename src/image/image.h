/*
 * image: what the layers above see of a virtual disk, whatever its format.
 *
 * An image is opened once per worker (control thread) and then served by
 * several queue threads, each through its own struct vd_image_queue
 * (created on that thread, used only by it).
 *
 * Requests: struct vd_io, with byte offsets and lengths. READ/WRITE lengths
 * and offsets are multiples of the image's sector_bytes; iov buffers are
 * aligned to 512 bytes at least (4 KiB when coming from a queue's pool) and
 * may be guest-visible memory. The callback runs exactly once on the
 * queue's thread, from vd_ioctx_poll(), never inline from submit.
 * result: bytes (READ/WRITE: len_bytes; others: 0) or -errno.
 */
#ifndef VD_IMAGE_H
#define VD_IMAGE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>
#include "common/err.h"
#include "io/io.h"

struct vd_image;
struct vd_image_queue;
struct vd_io;

typedef void (*vd_io_cb)(struct vd_io *io, int64_t result);

struct vd_io {
	enum vd_io_op op; /* READ, WRITE, FLUSH, DISCARD, WRITE_ZEROES */
	uint64_t offset_bytes;
	uint64_t len_bytes;
	struct iovec *iov; /* READ/WRITE only; borrowed until the callback */
	int iovcnt;
	vd_io_cb cb;
	void *cb_arg;
	/* private to the image layer and its driver */
	struct vd_image_queue *iq;
	struct vd_file_req freq; /* for single-extent drivers such as raw */
	void *driver_ctx;        /* io_ctx_size bytes, provided by the core */
};

/*
 * Which backing files (qcow2) and parents (vhd) an image may name. The
 * image file is untrusted: without a policy it could name any host file
 * and have it served to the guest. Zero means the default:
 *   - a backing file must resolve (realpath, after symlinks) to a file in
 *     root_dir or below it, or in or below one of dirs;
 *   - root_dir is the top image's directory (realpath), and stays so down
 *     the whole chain: each layer is checked against the same tree, not
 *     against its own directory;
 *   - a raw backing file needs its format recorded in the image (qcow2
 *     backing format "raw"); a name probed as raw is refused;
 *   - a vhd parent must be a vhd whose UUID is the one the child records.
 * none: do not open backing files at all; the top layer is served alone
 * and what it does not allocate reads as zeroes (read-only use only: a
 * write would copy zeroes up where the backing had data).
 * The strings are borrowed for the duration of vd_image_open() only.
 */
struct vd_backing_policy {
	bool none;
	const char *const *dirs; /* n_dirs allow-listed directories */
	size_t n_dirs;
	const char *root_dir; /* NULL: the top image's directory (the core fills it) */
};

struct vd_image_opts {
	const char *format;     /* NULL or "auto": probe */
	const char *io_backend; /* "uring" (default), "sync", "null", "mem";
	                              * null/mem ignore the path ("null"/"mem" by convention) */
	bool readonly;
	enum vd_cache_mode cache;
	uint64_t size_bytes; /* for null/mem backends */
	/*
	 * qcow2 (0: defaults). L2 cache size in bytes (default: enough for the
	 * whole disk, at most 32 MiB, as QEMU on Linux) and the size of one
	 * cache entry (a slice of an L2 table: a power of two from 512 to the
	 * cluster size; default the cluster size): QEMU's l2-cache-size and
	 * l2-cache-entry-size.
	 */
	uint64_t l2_cache_bytes;
	uint64_t l2_cache_entry_bytes;
	const char *snapshot; /* qcow2: open this internal snapshot (id or name), read-only */
	/*
	 * Image locks (io/lock.h), taken on every file of the chain: read-write
	 * opens lock out every other writer and reader, read-only opens (and
	 * backing files) lock out writers only, as qemu. force_share (qemu-img
	 * -U; read-only opens only) shares everything with everyone.
	 * backing_force_share: the same for the chain below this image only
	 * (commit, which then opens the base for writing itself).
	 */
	bool force_share;
	bool backing_force_share;
	/*
	 * check --repair: a read-write open of an image whose metadata says it
	 * is corrupt (qcow2's corrupt bit) is allowed, for the repair only: the
	 * image stays refused for writing until the repair clears the mark.
	 */
	bool repair;
	struct vd_backing_policy backing; /* backing files this image may use */
};

struct vd_image_info {
	const char *format;
	uint64_t size_bytes;   /* virtual size */
	uint32_t sector_bytes; /* logical sector size: 512 or 4096 */
	uint32_t physical_sector_bytes;
	bool readonly;
	bool discard; /* DISCARD supported */
	uint32_t discard_granularity_bytes;
	uint32_t discard_alignment_bytes;
	bool flush;               /* FLUSH means something (false for null) */
	uint64_t allocated_bytes; /* space used on the host, if known */
	/* Format details (0 / NULL where they do not apply). */
	uint32_t cluster_bytes;   /* qcow2 cluster size, vhd block size */
	const char *subformat;    /* vhd: "fixed"/"dynamic"/"differencing"; qcow2: "v2"/"v3" */
	const char *backing_file; /* as recorded in the image (owned by the image) */
	const char *backing_format;
	bool dirty;   /* opened after an unclean shutdown (qcow2 lazy refcounts) */
	bool corrupt; /* metadata found bad: refused for writing */
};

int vd_image_open(const char *path, const struct vd_image_opts *o, struct vd_image **out,
		  struct vd_err *err);
void vd_image_close(struct vd_image *img);
int vd_image_get_info(struct vd_image *img, struct vd_image_info *info);

/*
 * Create a new image file of the given format (NULL: raw). Refuses an
 * existing path (-EEXIST) unless flags has VD_IMAGE_CREATE_OVERWRITE.
 * size_bytes: a positive multiple of 512.
 */
#define VD_IMAGE_CREATE_OVERWRITE 0x1u
int vd_image_create(const char *path, const char *format, uint64_t size_bytes, struct vd_err *err);
int vd_image_create_ex(const char *path, const char *format, uint64_t size_bytes,
		       unsigned int flags, struct vd_err *err);

/* Everything `vdisk create` can ask of a format; zero means the default. */
struct vd_image_create_opts {
	uint64_t size_bytes;        /* virtual size; 0 with a backing file: the backing's */
	const char *backing_file;   /* differencing child / overlay of this file */
	const char *backing_format; /* NULL: probe the backing file */
	const char *subformat;      /* vhd: "dynamic" (default) or "fixed" */
	uint32_t cluster_bytes;     /* qcow2 cluster size; vhd block size */
	unsigned int compat;        /* qcow2: 2 (0.10) or 3 (1.1, default) */
	bool lazy_refcounts;        /* qcow2 */
	bool extended_l2;           /* qcow2: subclusters */
	uint32_t refcount_bits;     /* qcow2: 1..64, default 16 */
	const char *preallocation;  /* "off" (default), "metadata", "falloc", "full" */
	uint64_t max_size_bytes;    /* vhd: BAT entries up to this size, so that resize can
				     * grow a dynamic disk without moving data (vhd-util -S) */
	unsigned int flags;         /* VD_IMAGE_CREATE_* */
};
int vd_image_create_opts(const char *path, const char *format, const struct vd_image_create_opts *o,
			 struct vd_err *err);

/*
 * Allocation of the virtual range starting at offset_bytes, for `vdisk map`,
 * convert and commit (control thread; not while queues write the image).
 * Describes the longest run of at most max_bytes with the same status:
 *   DATA       reads return data from some layer (else they return zeroes)
 *   ZERO       reads return zeroes
 *   ALLOCATED  the layer `depth` (0 = this image, 1 = its backing, ...)
 *              decides the content; without it nothing in the chain does
 * host_offset_bytes is where the data lies in that layer's file, or
 * UINT64_MAX when it is not one contiguous extent or not known.
 */
#define VD_BLOCK_DATA      0x1u
#define VD_BLOCK_ZERO      0x2u
#define VD_BLOCK_ALLOCATED 0x4u
struct vd_block_status {
	uint64_t len_bytes;
	unsigned int flags;
	unsigned int depth;
	uint64_t host_offset_bytes;
};
int vd_image_block_status(struct vd_image *img, uint64_t offset_bytes, uint64_t max_bytes,
			  struct vd_block_status *out);

/* Consistency check (and repair) of an image's metadata. */
struct vd_check_result {
	uint64_t corruptions; /* found */
	uint64_t leaks;       /* clusters/blocks allocated but unused */
	uint64_t corruptions_fixed;
	uint64_t leaks_fixed;
	uint64_t allocated_units; /* clusters or blocks in use */
	uint64_t total_units;
	char first_problem[256]; /* human-readable, "" if none */
};
/* -EOPNOTSUPP for formats without metadata (raw: always clean). */
int vd_image_check(struct vd_image *img, bool repair, struct vd_check_result *res,
		   struct vd_err *err);

/* Change the virtual size (grow; shrink only where the format allows). */
int vd_image_resize(struct vd_image *img, uint64_t size_bytes, struct vd_err *err);

/* The backing image opened by the driver, or NULL (borrowed). */
struct vd_image *vd_image_backing(struct vd_image *img);
/* The path the image was opened from (for the backing: as resolved). Borrowed. */
const char *vd_image_path(const struct vd_image *img);
/*
 * Is path (if it exists) one of the files of img's chain, by device and
 * inode (so ./X, symlinks and hard links count)? 1 with *hit the layer,
 * 0 if not (or path does not exist), -errno if path cannot be examined.
 */
int vd_image_chain_find_file(struct vd_image *img, const char *path, struct vd_image **hit);

/*
 * Synchronous access for control-plane tools (convert, commit, check
 * helpers, tests): a private ioctx and image queue on the calling thread.
 * Lengths and offsets as for vd_image_submit; buf needs 4 KiB alignment
 * for O_DIRECT images. Returns bytes (READ/WRITE), 0, or -errno.
 */
struct vd_image_sync;
int vd_image_sync_open(struct vd_image *img, struct vd_image_sync **out, struct vd_err *err);
void vd_image_sync_close(struct vd_image_sync *s);
int64_t vd_image_sync_io(struct vd_image_sync *s, enum vd_io_op op, void *buf, uint64_t len_bytes,
			 uint64_t offset_bytes);

/* On the queue thread that will use it; ioctx is that thread's reactor. */
int vd_image_queue_create(struct vd_image *img, struct vd_ioctx *ioctx,
			  struct vd_image_queue **out);
void vd_image_queue_destroy(struct vd_image_queue *iq);

/*
 * Per-request scratch the driver needs (io_ctx_size). The caller provides
 * that many bytes at io->driver_ctx (a queue sizes its pool with it).
 */
size_t vd_image_io_ctx_size(const struct vd_image *img);

/*
 * Submit; io->cb runs once, later, on this queue's thread. The core checks
 * every request as a last line of defence (the queue validates first):
 * unknown op, misaligned offset/length (sector_bytes), overflow, bad iov
 * -> -EINVAL; beyond the end -> -ENOSPC; write/discard/write-zeroes on a
 * read-only image -> -EROFS, on a corrupt image -> -EIO; DISCARD without
 * support -> -EOPNOTSUPP. io->freq and io->iq are overwritten.
 */
void vd_image_submit(struct vd_image_queue *iq, struct vd_io *io);

#endif
