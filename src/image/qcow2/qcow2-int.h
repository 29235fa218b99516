/*
 * qcow2: private definitions shared by the files of the driver (QEMU qcow2.h).
 *
 * Files:
 *   qcow2.c           open (header, feature bits, extensions, snapshots),
 *                     close, info, create, resize, queue setup, the vtable
 *   qcow2-l2.c        L1/L2 entry decoding, the L2 slice cache, block status
 *   qcow2-refcount.c  refcounts in memory, cluster allocation, deferred
 *                     frees, metadata write-back
 *   qcow2-check.c     check and repair (the rules of qemu-img check)
 *   qcow2-io.c        the request path (read, write, discard, flush) and the
 *                     cross-queue forwarding to the metadata owner
 *   qcow2-flush.c     the asynchronous metadata write-back of the owner
 *
 * Threads and ownership. All mutable metadata (L1, L2 cache, refcounts,
 * in-flight allocations) has one owner: the ioctx of the first image queue
 * created (queue 0, which the worker stops last). Every request is mapped by
 * the owner: a request submitted on another queue is forwarded to the
 * owner with vd_ioctx_send_msg(), and its completion comes back the same
 * way. The data I/O of a request is issued on the owner's ioctx. This keeps
 * the metadata lock-free and single-threaded (correctness first); serving
 * reads of allocated clusters from per-queue caches is future work.
 *
 * Metadata is written back (QEMU's writeback qcow2 cache) at guest FLUSH, on
 * eviction of a dirty L2 slice, on close, and when too many frees are
 * pending, always in this order, each step followed by fdatasync:
 *   1. refcount blocks (and, when a block was added, then the refcount table),
 *   2. L2 slices,
 *   3. L1 entries.
 * The L2 entry of a newly allocated cluster is set in memory only after its
 * data write completed, so step 1's fdatasync makes the data durable before
 * any L2 entry points at it. Clusters freed by discard or COW are not
 * reusable until the L2 change that freed them is durable (frees are
 * deferred until after step 3), so a crash at any point leaves, at worst,
 * leaked clusters.
 *
 * While serving, the write-back is asynchronous (qcow2-flush.c): one job at a
 * time on the owner's ioctx. It starts by taking a snapshot: the list of
 * dirty refcount blocks (written from the live blocks: between two jobs a
 * refcount only goes from 0 to 1, which at worst leaks), a copy of every
 * dirty L2 slice and of the dirty L1 chunks, and the number of pending frees.
 * Everything in the snapshot was changed before it, so its data writes had
 * completed and its refcounts were set: the steps above, on the snapshot,
 * keep the order. Changes made while the job runs dirty the metadata again
 * and go to the next job. Slices being written stay out of the LRU (never
 * evicted, never re-read from the disk until written). A guest FLUSH waits
 * for a job that started after it arrived. Control-thread paths (open,
 * close, resize, check) use the synchronous vd_qcow2_metadata_flush.
 *
 * Failures (ENOSPC, EIO) roll back. A cluster belongs to its request from
 * vd_qcow2_alloc_cluster until its L2 entry is set; if the request fails
 * first (data write, COW read, its L2 table, the slice), the cluster is
 * released: refcount back to 0 and the cursor back to it, so a full disk
 * makes every retry reuse the same clusters instead of walking the file.
 * Releasing is safe at any time: no L2 entry (on disk or in memory) ever
 * pointed at it, so a refcount of 1 that reached the disk is a leak the
 * next write-back repairs. The cluster may hold part of the failed write:
 * it is no longer fresh (written_end_bytes never moves back). A new L2
 * table is written before the L1 entry points at it, a new refcount table
 * before the header does: when that write fails, the allocation of the
 * table (and its clusters, and the end of the file) is undone. A failed
 * write-back job marks its snapshot dirty again and fails its waiters (the
 * guest's FLUSH); the on-disk order above still holds, so the image is
 * consistent (at worst leaks) and the next job rewrites it all.
 */
#ifndef VD_QCOW2_INT_H
#define VD_QCOW2_INT_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/queue.h>

#include "common/compiler.h"
#include "image/image-driver.h"

#define QCOW2_MAGIC 0x514649fbu

/* How far ahead of the allocator the file is grown (fallocate) */
#define VD_QCOW2_PREALLOC_BYTES (4u << 20)

#define QCOW2_INCOMPAT_DIRTY       (1ull << 0)
#define QCOW2_INCOMPAT_CORRUPT     (1ull << 1)
#define QCOW2_INCOMPAT_DATA_FILE   (1ull << 2)
#define QCOW2_INCOMPAT_COMPRESSION (1ull << 3)
#define QCOW2_INCOMPAT_EXTL2       (1ull << 4)
#define QCOW2_INCOMPAT_KNOWN                                                          \
	(QCOW2_INCOMPAT_DIRTY | QCOW2_INCOMPAT_CORRUPT | QCOW2_INCOMPAT_COMPRESSION | \
	 QCOW2_INCOMPAT_EXTL2)
#define QCOW2_COMPAT_LAZY_REFCOUNTS (1ull << 0)

#define QCOW2_EXT_END            0x00000000u
#define QCOW2_EXT_BACKING_FORMAT 0xe2792acau
#define QCOW2_EXT_FEATURE_TABLE  0x6803f857u
#define QCOW2_EXT_DATA_FILE      0x44415441u

#define QCOW2_OFLAG_COPIED     (1ull << 63)
#define QCOW2_OFLAG_COMPRESSED (1ull << 62)
#define QCOW2_OFLAG_ZERO       (1ull << 0)
#define QCOW2_OFFSET_MASK      0x00fffffffffffe00ull
#define QCOW2_L1_RESERVED      0x7f000000000001feull
#define QCOW2_L2_RESERVED      0x3f000000000001feull

#define QCOW2_MIN_CLUSTER_BITS   9
#define QCOW2_MAX_CLUSTER_BITS   21
#define QCOW2_MAX_L1_BYTES       (32u << 20) /* as QEMU */
#define QCOW2_MAX_REFTABLE_BYTES (8u << 20)
#define QCOW2_MAX_SNAPSHOTS      65536u
#define QCOW2_MAX_BACKING_NAME   1023u
#define QCOW2_MAX_CHAIN_DEPTH    32u
#define QCOW2_DEFAULT_CACHE_MAX  (32u << 20) /* QEMU's Linux default */
#define QCOW2_MAX_PENDING_FREES  4096u
#define QCOW2_SUBCLUSTERS        32u

/* What one guest cluster (or subcluster) maps to. */
enum qcow2_kind {
	QCOW2_UNALLOCATED, /* backing file or zeroes */
	QCOW2_ZERO,        /* reads as zeroes */
	QCOW2_NORMAL,      /* data at host offset */
	QCOW2_COMPRESSED,  /* zlib data at host byte offset */
};

struct qcow2_snapshot {
	uint64_t l1_offset;
	uint32_t l1_size;
	uint64_t disk_size;
	uint64_t vm_state_size;
	uint32_t date_sec;
	char *id;
	char *name;
};

/* One cached slice of an L2 table (l2_cache_entry_bytes). */
struct qcow2_slice {
	uint64_t key;  /* host offset of the slice; 0 = free */
	uint8_t *data; /* entry_bytes, big-endian as on disk */
	bool loading;  /* read in flight: requests wait on waiters */
	bool dirty;
	bool writeback; /* in a write-back job's snapshot: not evictable */
	int load_err;
	struct qcow2_req *waiters;
	struct vd_file_req freq;
	struct iovec iov;
	struct qcow2_state *s;
	TAILQ_ENTRY(qcow2_slice) lru; /* only clean, loaded slices: head = oldest */
	struct qcow2_slice *hnext;    /* hash chain */
	bool in_lru;
};
TAILQ_HEAD(qcow2_slice_list, qcow2_slice);

/* A deferred refcount decrement of a host range (discard, COW). */
struct qcow2_free {
	uint64_t offset_bytes;
	uint64_t len_bytes;
};

/* The asynchronous metadata write-back (qcow2-flush.c), owner thread. */
struct qcow2_mf_io {
	struct vd_file_req freq;
	struct iovec iov;
	struct vd_image *img;
};

struct qcow2_mflush {
	bool running;
	int phase;
	unsigned int inflight;
	int err;
	struct qcow2_req *waiters;      /* resumed when this job ends */
	struct qcow2_req *next_waiters; /* need a job that starts after them */
	bool again;                     /* start another job when this one ends */
	uint32_t frees_snap;            /* pending frees this job makes safe */
	/* the snapshot */
	uint64_t *rb; /* dirty refcount blocks (reftable indices) */
	uint32_t nr_rb;
	uint8_t *rt_buf; /* the refcount table, if a block was added */
	uint64_t rt_off, rt_bytes;
	struct qcow2_slice **wb; /* slices being written */
	uint8_t *wb_buf;         /* their copies */
	uint32_t nr_wb;
	uint8_t *l1_buf; /* dirty L1 chunks, one chunk_bytes each */
	uint64_t *l1_first;
	uint32_t nr_l1;
	struct qcow2_mf_io *io;
	uint32_t nr_io;
	struct qcow2_mf_io kick; /* starts the steps from the ioctx */
};

/* Per-image owner-side state of a queue (only the owner has one). */
struct qcow2_queue {
	struct vd_image_queue *iq;
	struct vd_image_queue *backing_iq; /* on the same ioctx */
	bool owner;
};

struct qcow2_state {
	struct vd_file *file;
	/* header */
	uint32_t version;
	uint32_t cluster_bits;
	uint64_t cluster_bytes;
	uint64_t size_bytes;
	uint64_t l1_offset;
	uint32_t l1_size;
	uint64_t reftable_offset;
	uint32_t reftable_clusters;
	uint32_t nb_snapshots;
	uint64_t snapshots_offset;
	uint64_t incompat, compat, autoclear;
	uint32_t refcount_order;
	uint32_t header_bytes;
	uint8_t compression_type;
	char *backing_file;
	char *backing_format;
	bool ext_l2;
	uint32_t l2_entry_bytes;   /* 8 or 16 */
	uint64_t l2_entries;       /* per table */
	uint64_t subcluster_bytes; /* cluster_bytes / 32 with ext_l2, else cluster_bytes */
	bool lazy_refcounts;
	bool dirty_on_open;
	bool dirty_set; /* the dirty bit is on disk now */
	struct qcow2_snapshot *snapshots;
	char subformat[8];

	/* L1 (active), host byte order */
	uint64_t *l1;
	bool *l1_dirty; /* per L1 entry */
	bool l1_any_dirty;

	/* L2 cache */
	uint64_t cache_bytes;
	uint32_t slice_bytes;
	uint32_t slice_entries;
	uint32_t nr_slices;
	struct qcow2_slice *slices;
	struct qcow2_slice **hash;
	uint32_t hash_mask;
	struct qcow2_slice_list lru;
	uint32_t nr_dirty_slices;
	struct qcow2_req *slice_waiters; /* waiting for any slice to become free */

	/* refcounts (loaded for writable images) */
	bool refcounts_loaded;
	uint32_t refcount_bits;
	uint64_t refcount_max;
	uint64_t refs_per_block;
	uint64_t reftable_entries;
	uint64_t *reftable;    /* host offsets of refcount blocks */
	uint64_t reftable_bad; /* entries ignored at load: invalid offsets */
	uint8_t **refblocks;   /* loaded blocks or NULL */
	bool *refblock_dirty;
	bool refcounts_dirty;
	bool reftable_dirty;     /* a refcount block was added since the table was written */
	uint64_t free_cursor;    /* lowest cluster index that may be free */
	uint64_t file_end_bytes; /* end of the highest allocated cluster (>= file size) */
	/*
	 * Past this the file reads as zeroes (the file at open, then every
	 * cluster allocated since, even if released): only grows.
	 */
	uint64_t written_end_bytes;
	/*
	 * The file is extended by fallocate ahead of the allocator, so that
	 * allocating O_DIRECT writes land inside the file (an extending
	 * O_DIRECT write serialises on the inode in ext4/xfs): the file's
	 * size as we last made it, and false once fallocate is refused.
	 */
	uint64_t prealloc_end_bytes;
	bool prealloc;
	struct qcow2_free *frees;
	uint32_t nr_frees, max_frees;

	/* in-flight allocations (owner) */
	struct qcow2_req *allocs;

	/* asynchronous metadata write-back (owner) */
	struct qcow2_mflush mf;

	/* owner */
	struct vd_ioctx *owner_ctx;
	struct qcow2_queue *owner_q;
	unsigned int nr_queues;

	bool has_backing;
	bool warned_corrupt;
};

/* Per request (io_ctx_size): the state machine of qcow2-io.c. */
struct qcow2_req {
	struct vd_io *io;
	struct vd_image *img;
	struct vd_image_queue *origin;
	struct qcow2_req *next;       /* on a wait list */
	struct qcow2_req *alloc_next; /* on s->allocs */
	int state;
	int64_t result;
	uint64_t pos, end; /* guest bytes still to do */
	int iov_idx;
	size_t iov_off;
	/* current chunk */
	uint64_t chunk_bytes;
	uint64_t alloc_cluster; /* guest cluster index being allocated */
	uint64_t host_cluster;  /* new or existing host cluster */
	uint64_t old_entry, old_bitmap;
	uint64_t region_start, region_end; /* in-cluster byte range written */
	bool new_host;
	bool host_owned; /* host_cluster allocated here, not in an L2 entry yet */
	bool fresh;      /* host_cluster reads as zeroes: no need to write them */
	bool zeroes;     /* DISCARD/WRITE_ZEROES writing zeroes */
	uint8_t *bounce;
	uint8_t *cbuf; /* compressed bytes */
	struct qcow2_req *alloc_waiters;
	struct vd_file_req freq;
	struct vd_io *bio; /* backing read (heap) */
	int niov;
	struct iovec iov[16];
	struct iovec *iov_heap;
	int iov_heap_cnt;
};

static inline struct qcow2_state *qcow2_s(struct vd_image *img)
{
	return (struct qcow2_state *)img->state;
}

static inline uint64_t qcow2_be64(const uint8_t *p)
{
	return ((uint64_t)p[0] << 56) | ((uint64_t)p[1] << 48) | ((uint64_t)p[2] << 40) |
	       ((uint64_t)p[3] << 32) | ((uint64_t)p[4] << 24) | ((uint64_t)p[5] << 16) |
	       ((uint64_t)p[6] << 8) | p[7];
}

static inline uint32_t qcow2_be32(const uint8_t *p)
{
	return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static inline uint16_t qcow2_be16(const uint8_t *p)
{
	return (uint16_t)((p[0] << 8) | p[1]);
}

static inline void qcow2_put_be64(uint8_t *p, uint64_t v)
{
	for (int i = 7; i >= 0; i--) {
		p[i] = (uint8_t)v;
		v >>= 8;
	}
}

static inline void qcow2_put_be32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)(v >> 24);
	p[1] = (uint8_t)(v >> 16);
	p[2] = (uint8_t)(v >> 8);
	p[3] = (uint8_t)v;
}

static inline void qcow2_put_be16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)(v >> 8);
	p[1] = (uint8_t)v;
}

/* qcow2.c */
void vd_qcow2_signal_corruption(struct vd_image *img, const char *fmt, ...) VD_PRINTF(2, 3);
int vd_qcow2_write_header_field(struct qcow2_state *s, uint64_t off, const void *buf, size_t len);
int vd_qcow2_set_incompat(struct qcow2_state *s, uint64_t bits, bool on);
void *vd_qcow2_alloc_buf(size_t len); /* page-aligned, zeroed */
int vd_qcow2_pread(struct qcow2_state *s, void *buf, uint64_t len, uint64_t off);
int vd_qcow2_pwrite(struct qcow2_state *s, const void *buf, uint64_t len, uint64_t off);
int vd_qcow2_fsync(struct qcow2_state *s);

/* qcow2-l2.c */
int vd_qcow2_cache_init(struct vd_image *img, uint64_t cache_bytes, uint64_t entry_bytes,
			struct vd_err *err);
void vd_qcow2_cache_fini(struct qcow2_state *s);
/*
 * Owner thread. The slice holding the L2 entry of guest cluster gc whose
 * table is at l2_off. Returns the slice, or NULL with *ret = 0 when req was
 * queued to wait (its run() is called again later), or *ret < 0 on error.
 * req NULL: load synchronously (control thread).
 */
struct qcow2_slice *vd_qcow2_slice_get(struct vd_image *img, uint64_t l2_off, uint64_t gc,
				       struct qcow2_req *req, int *ret);
/* A new L2 table: a zeroed slice without reading the disk. */
struct qcow2_slice *vd_qcow2_slice_new(struct vd_image *img, uint64_t l2_off, uint64_t gc,
				       int *ret);
void vd_qcow2_slice_mark_dirty(struct qcow2_state *s, struct qcow2_slice *sl);
int vd_qcow2_cache_writeback(struct qcow2_state *s);
/*
 * Owner thread, write-back jobs. Snapshot: copy every dirty slice into
 * buf (nr_dirty_slices x slice_bytes), mark it clean and in write-back,
 * list it in out; returns the count. Release: the job is over; failed
 * marks them dirty again.
 */
uint32_t vd_qcow2_cache_snapshot(struct qcow2_state *s, struct qcow2_slice **out, uint8_t *buf);
void vd_qcow2_cache_release(struct qcow2_state *s, struct qcow2_slice **sl, uint32_t n,
			    bool failed);
/* Copy the cached slices of the L2 table at l2_off over buf (cluster_bytes). */
void vd_qcow2_cache_overlay(struct qcow2_state *s, uint64_t l2_off, uint8_t *buf);
void vd_qcow2_entry_get(struct qcow2_state *s, const struct qcow2_slice *sl, uint64_t gc,
			uint64_t *entry, uint64_t *bitmap);
void vd_qcow2_entry_set(struct qcow2_state *s, struct qcow2_slice *sl, uint64_t gc, uint64_t entry,
			uint64_t bitmap);
/*
 * Decode an L2 entry for the subcluster sc: kind, host byte offset of the
 * cluster (NORMAL) or of the compressed data, and its length (COMPRESSED).
 * -EIO when the entry is invalid (the caller signals corruption).
 */
int vd_qcow2_decode(struct qcow2_state *s, uint64_t entry, uint64_t bitmap, unsigned int sc,
		    enum qcow2_kind *kind, uint64_t *host, uint64_t *clen);
int vd_qcow2_l1_check(struct qcow2_state *s, uint64_t l1e, uint64_t *l2_off);
int vd_qcow2_block_status(struct vd_image *img, uint64_t offset_bytes, uint64_t max_bytes,
			  struct vd_block_status *out);
int vd_qcow2_inflate(struct qcow2_state *s, const uint8_t *src, size_t src_len, uint8_t *dst);
int vd_qcow2_l1_writeback(struct qcow2_state *s);

/* qcow2-refcount.c */
/* The file's size: the larger of the io layer's view and fstat's (a regular file). */
uint64_t vd_qcow2_file_bytes(struct qcow2_state *s);
int vd_qcow2_refcounts_load(struct vd_image *img, struct vd_err *err);
void vd_qcow2_refcounts_free(struct qcow2_state *s);
uint64_t vd_qcow2_refcount_get(struct qcow2_state *s, uint64_t cluster);
/* Store refcount v as entry i of a refcount block (2^order bits per entry). */
void vd_qcow2_refcount_encode(uint8_t *blk, unsigned int order, uint64_t i, uint64_t v);
/*
 * Allocate one cluster (refcount 1); returns its byte offset or -errno.
 * *fresh (may be NULL) tells whether the cluster lies past everything the
 * file held at open and every cluster allocated since: never written, it
 * reads as zeroes (a hole or fallocated space).
 */
int64_t vd_qcow2_alloc_cluster(struct vd_image *img, bool *fresh);
/*
 * Undo vd_qcow2_alloc_cluster of a cluster that nothing references (its
 * write or the L2 update failed): refcount 0, reusable at once.
 */
void vd_qcow2_release_cluster(struct vd_image *img, uint64_t offset_bytes);
/* Decrement later, once the L2/L1 change that frees it is durable. */
int vd_qcow2_free_later(struct vd_image *img, uint64_t offset_bytes, uint64_t len_bytes);
/*
 * Write back all dirty metadata in the crash-safe order; then apply frees.
 * Synchronous: control thread, or the owner when no write-back job runs.
 */
int vd_qcow2_metadata_flush(struct vd_image *img);
/* Apply the first n pending frees (their L2/L1 change is durable). */
void vd_qcow2_apply_frees(struct vd_image *img, uint32_t n);
/* Write the refcount table (a block was added): buf (reftable_entries x 8). */
void vd_qcow2_reftable_encode(struct qcow2_state *s, uint8_t *buf);
bool vd_qcow2_metadata_dirty(struct qcow2_state *s);
/* qcow2-check.c */
/* Read len bytes at off; what lies past the end of the file reads as zeroes. */
int vd_qcow2_pread_zfill(struct qcow2_state *s, void *buf, uint64_t len, uint64_t off);
int vd_qcow2_check(struct vd_image *img, bool repair, struct vd_check_result *res,
		   struct vd_err *err);

/* qcow2-flush.c (owner thread) */
/*
 * Write back the metadata asynchronously. req (may be NULL) is resumed
 * with vd_qcow2_run() once a job that started after this call has ended
 * (req->result < 0 if it failed). < 0: no job could start (corrupt image,
 * no memory): req is not queued.
 */
int vd_qcow2_mflush(struct vd_image *img, struct qcow2_req *req);
/* Wait (polling the owner's ioctx) until no job runs. */
void vd_qcow2_mflush_drain(struct vd_image *img);
/* L1 entries per write-back chunk. */
uint64_t vd_qcow2_l1_chunk(const struct qcow2_state *s);

/* qcow2-io.c */
extern const size_t vd_qcow2_io_ctx_size;
void vd_qcow2_submit(struct vd_image *img, struct vd_image_queue *iq, struct vd_io *io);
void vd_qcow2_run(struct qcow2_req *req); /* resume a waiting request */
/* Resume every request of a waiters list (linked by next); err < 0 fails them first. */
void vd_qcow2_wake(struct qcow2_req *list, int err);

#endif
