/*
 * simguest internals: one header indexes the prototypes of each file.
 *
 *   gmem.c          page allocator over guest RAM, grant-reference allocator
 *   opts.c          command line
 *   hist.c          latency histogram (log-linear, microseconds)
 *   verify.c        sector pattern and the model of the disk
 *   xenbus-front.c  frontend side of the xenbus handshake
 *   ring-front.c    shared rings, request slots (shadow), requests/responses
 *   workload.c      the I/O engine: one thread per queue
 *   hostile.c       malformed requests and ring/xenstore abuse
 *   main.c          vd_simguest_main()
 *
 * Threads: the main thread does xenstore; each queue's thread alone touches
 * its ring, slots and event channel; gmem and the workload's shared state
 * are protected by mutexes.
 */
#ifndef VD_SIM_GUEST_INT_H
#define VD_SIM_GUEST_INT_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include "common/compiler.h"

/*
 * ring.h's barriers (xen_mb() is mb() for old interface versions): the
 * peer is another process on this machine.
 */
#ifndef mb
#define mb()  vd_smp_mb()
#define rmb() vd_smp_rmb()
#define wmb() vd_smp_wmb()
#endif
#include <xen/xen.h>
#include <xen/grant_table.h>
#include <xen/io/ring.h>
#include <xen/io/blkif.h>
#include <xenstore.h>

#include "common/compiler.h"
#include "common/err.h"
#include "transport/sim/hvc.h"

#define VD_SG_MAX_QUEUES        16
#define VD_SG_MAX_RING_ORDER    4
#define VD_SG_MAX_RING_PAGES    (1u << VD_SG_MAX_RING_ORDER)
#define VD_SG_MAX_SEGS          (BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST * VD_SG_SEGS_PER_PAGE)
#define VD_SG_SEGS_PER_PAGE     ((unsigned int)(VD_PAGE_SIZE / sizeof(struct blkif_request_segment)))
#define VD_SG_MAX_IODEPTH       1024
#define VD_SG_NR_RESERVED_GREFS 8 /* as Linux GNTTAB_NR_RESERVED_ENTRIES */

/* ---------------- gmem.c ---------------- */

struct vd_gmem {
	pthread_mutex_t lock;
	uint8_t *mem;
	uint64_t nr_pages;
	struct grant_entry_v1 *gnttab;
	uint32_t nr_grefs;
	uint64_t *page_used; /* bitmap, 1 = allocated */
	uint32_t *gref_fifo; /* free refs; released refs go to the tail */
	uint32_t fifo_head;
	uint32_t fifo_count;
	uint32_t fifo_cap;
	uint64_t leaked_grefs; /* refs the backend still used when ended */
};

int vd_gmem_init(struct vd_gmem *m, void *mem, uint64_t nr_pages, struct grant_entry_v1 *gnttab,
		 uint32_t nr_grefs);
void vd_gmem_fini(struct vd_gmem *m);
/* n contiguous pages, first fit; -ENOMEM. */
int vd_gmem_alloc_pages(struct vd_gmem *m, uint64_t n, uint64_t *first);
void vd_gmem_free_pages(struct vd_gmem *m, uint64_t first, uint64_t n);
void *vd_gmem_page(const struct vd_gmem *m, uint64_t page);
uint64_t vd_gmem_free_page_count(struct vd_gmem *m);
/* A free ref, not granted (for hostile use too). -ENOSPC. */
int vd_gmem_gref_get(struct vd_gmem *m, uint32_t *ref);
void vd_gmem_gref_put(struct vd_gmem *m, uint32_t ref);
/* Fill entry ref: domid, frame = page; then (after a write barrier) flags. */
void vd_gmem_grant_set(struct vd_gmem *m, uint32_t ref, uint16_t domid, uint64_t page,
		       bool readonly);
/* gref_get + grant_set. */
int vd_gmem_grant(struct vd_gmem *m, uint16_t domid, uint64_t page, bool readonly, uint32_t *ref);
/*
 * End foreign access (Linux gnttab_end_foreign_access_ref): clear flags
 * unless the peer is reading/writing it. On success the ref is freed; if
 * busy it is leaked (never reused) and -EBUSY is returned.
 */
int vd_gmem_ungrant(struct vd_gmem *m, uint32_t ref);

/* ---------------- opts.c ---------------- */

enum vd_sg_rw { VD_RW_RANDRW, VD_RW_RANDREAD, VD_RW_RANDWRITE, VD_RW_READ, VD_RW_WRITE };

struct vd_sg_opts {
	const char *dir;    /* NULL: vd_hvc_sim_dir() */
	unsigned int domid; /* 0: the hypervisor picks */
	unsigned int vdev;
	unsigned int wait_s;
	unsigned int queues;
	unsigned int ring_order;
	bool no_indirect;
	unsigned int max_indirect; /* 0: what the backend offers */
	enum vd_sg_rw rw;
	unsigned int rwmix; /* percent reads for randrw */
	uint64_t bs;
	unsigned int iodepth;
	uint64_t runtime_s;
	uint64_t ios;
	uint64_t flush_every;
	uint64_t discard_every;
	uint64_t seed;
	bool seed_set;
	bool json;
	bool verify_initial;
	bool no_verify;     /* benchmarks: no model, writes carry no pattern */
	bool no_persistent; /* do not offer feature-persistent */
	bool help;
	const char *hostile;
};

/* Defaults, then argv. -EINVAL with a message in err on a bad option. */
int vd_sg_opts_parse(struct vd_sg_opts *o, int argc, char **argv, struct vd_err *err);
/* "4096", "4k", "1m", "1g"; -EINVAL / -ERANGE. */
int vd_sg_parse_size(const char *s, uint64_t *out);
int vd_sg_parse_uint(const char *s, uint64_t max, uint64_t *out);
const char *vd_sg_rw_name(enum vd_sg_rw rw);
void vd_sg_usage(FILE *f);

/* ---------------- hist.c ---------------- */

#define VD_HIST_SUB_BITS 4
#define VD_HIST_SUB      (1u << VD_HIST_SUB_BITS)
#define VD_HIST_MAX_BITS 40
#define VD_HIST_BUCKETS  ((VD_HIST_MAX_BITS - VD_HIST_SUB_BITS + 1) * VD_HIST_SUB)

struct vd_hist {
	uint64_t count;
	uint64_t bucket[VD_HIST_BUCKETS];
};

unsigned int vd_hist_index(uint64_t v);
uint64_t vd_hist_bucket_low(unsigned int idx);
uint64_t vd_hist_bucket_high(unsigned int idx);
void vd_hist_add(struct vd_hist *h, uint64_t us);
void vd_hist_merge(struct vd_hist *dst, const struct vd_hist *src);
/* The value at percentile pct (0..100): the middle of its bucket; 0 if empty. */
uint64_t vd_hist_percentile(const struct vd_hist *h, double pct);

/* ---------------- verify.c ---------------- */

#define VD_GEN_NEVER       0u /* never written: zero (or initial content) */
#define VD_GEN_DISCARDED   1u /* discarded: zero */
#define VD_GEN_FIRST       2u
#define VD_GEN_UNKNOWN     UINT32_MAX            /* a failed write: anything goes */
#define VD_MODEL_MAX_UNITS (64u << 20)           /* 256 MiB of model at most */
#define VD_SECTOR_MAGIC    0x7664736b73696d31ull /* "vdsksim1" */

struct vd_sector_hdr {
	uint64_t magic;
	uint64_t offset_bytes;
	uint64_t seed;
	uint32_t gen;
	uint32_t crc_pad;
};

struct vd_model {
	uint64_t size_bytes;
	uint32_t unit_bytes; /* 512 or 4096 */
	uint64_t nr_units;
	uint32_t *gen;
	uint64_t seed;
	bool verify_initial;
	uint64_t reported; /* mismatches logged so far */
};

int vd_model_create(uint64_t size_bytes, uint32_t unit_bytes, uint64_t seed, bool verify_initial,
		    struct vd_model **out);
void vd_model_destroy(struct vd_model *m);
void vd_model_set(struct vd_model *m, uint64_t off_bytes, uint64_t len_bytes, uint32_t gen);
uint32_t vd_model_get(const struct vd_model *m, uint64_t off_bytes);
/* One 512-byte sector's expected content for gen (gen >= VD_GEN_FIRST). */
void vd_sector_fill(void *buf, uint64_t off_bytes, uint32_t gen, uint64_t seed);
/* Fill len_bytes of buf for a write of gen at off_bytes. */
void vd_model_fill(const struct vd_model *m, void *buf, uint64_t off_bytes, uint64_t len_bytes,
		   uint32_t gen);
/* True if the sector at off_bytes holds what gen says. */
bool vd_sector_matches(const struct vd_model *m, const void *buf, uint64_t off_bytes, uint32_t gen);
/* Check a read; returns the number of bad sectors (logs the first few). */
uint64_t vd_model_verify(struct vd_model *m, const void *buf, uint64_t off_bytes,
			 uint64_t len_bytes);

/* ---------------- xenbus-front.c ---------------- */

struct vd_be_features {
	uint64_t sectors; /* 512-byte units */
	uint32_t sector_size;
	uint32_t info;
	bool readonly;
	bool flush;
	bool barrier;
	bool discard;
	uint32_t discard_granularity;
	uint32_t discard_alignment;
	uint32_t max_indirect; /* 0: none */
	uint32_t max_queues;
	uint32_t max_ring_order;
	bool persistent; /* feature-persistent */
};

struct vd_front;

/* Called inside the publish transaction after the normal keys (hostile). */
typedef void (*vd_publish_tweak_fn)(struct vd_front *f, xs_transaction_t t, void *arg);

struct vd_fq;

struct vd_front {
	const struct vd_sg_opts *opts;
	struct vd_hvc *hvc;
	struct vd_simdom dom;
	bool dom_mapped;
	struct vd_gmem gmem;
	struct xs_handle *xs;
	uint16_t domid;
	uint16_t be_domid;
	char fe_path[128];
	char be_path[256];
	struct vd_be_features feat;
	unsigned int nr_queues;
	unsigned int ring_order;
	unsigned int iodepth;  /* slots per queue */
	unsigned int io_pages; /* data pages per slot */
	unsigned int max_segs; /* per request, 11 or the indirect maximum */
	bool persistent;       /* both sides offered feature-persistent */
	struct vd_fq *q[VD_SG_MAX_QUEUES];
	vd_publish_tweak_fn tweak;
	void *tweak_arg;
};

/* Wait (watching) until fe_path exists, read backend / backend-id. */
int vd_front_wait_device(struct vd_front *f, unsigned int timeout_s, struct vd_err *err);
int vd_front_read_state(struct vd_front *f, const char *dir, int *state);
int vd_front_set_state(struct vd_front *f, int state);
/*
 * Wait until the backend's state is one in mask (bit per XenbusState).
 * Returns the state, -ETIMEDOUT, or -ENOENT if the backend dir vanished.
 */
int vd_front_wait_be_state(struct vd_front *f, unsigned int mask, unsigned int timeout_ms);
int vd_front_read_features(struct vd_front *f, struct vd_err *err);
/* Pick nr_queues/ring_order/iodepth/max_segs from opts and features. */
void vd_front_negotiate(struct vd_front *f);
/* Write the ring configuration in one transaction (retrying on EAGAIN). */
int vd_front_publish(struct vd_front *f, struct vd_err *err);
/* InitWait .. publish .. Initialised .. Connected. Allocates the queues. */
int vd_front_connect(struct vd_front *f, struct vd_err *err);
/* Closing, wait backend Closing/Closed, Closed, wait Closed; frees the queues. */
int vd_front_disconnect(struct vd_front *f, struct vd_err *err);
/* After a disconnect (or a failed connect): Initialising, InitWait, connect. */
int vd_front_reconnect(struct vd_front *f, struct vd_err *err);
bool vd_front_be_has_error(struct vd_front *f);
void vd_front_free_queues(struct vd_front *f);

/* ---------------- ring-front.c ---------------- */

/* One request as the engine sees it. */
struct vd_gio {
	uint8_t op; /* BLKIF_OP_READ/WRITE/FLUSH_DISKCACHE/WRITE_BARRIER/DISCARD */
	uint64_t off_bytes;
	uint64_t len_bytes; /* 0 for flush */
	uint32_t gen;       /* write/discard: the model generation */
	uint64_t submit_ns;
	int16_t status;
	int lock_idx; /* workload range lock, -1 for none */
};

/*
 * With persistent grants (as Linux blkfront) the slot's guest pages and its
 * indirect pages are granted read-write once, at connect, and reused for
 * every request; the data is copied between buf (the "bio") and the granted
 * pages at submit (WRITE) and completion (READ). Without, buf is the guest
 * pages themselves, granted per request (read-only for a WRITE).
 */
struct vd_slot {
	bool busy;
	struct vd_gio io;
	uint8_t *buf;  /* the data: io_pages bytes (gbuf, or private with persistent) */
	uint8_t *gbuf; /* io_pages contiguous guest pages */
	uint64_t buf_page;
	uint64_t ind_page; /* indirect pages */
	unsigned int nr_ind_pages;
	uint32_t grefs[VD_SG_MAX_SEGS];
	unsigned int nr_grefs;
	uint32_t ind_grefs[BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST];
	unsigned int nr_ind_grefs;
	uint32_t *pgrefs; /* persistent: io_pages refs of the data pages, then the indirect */
	unsigned int nr_pgrefs;
};

struct vd_fq {
	struct vd_front *f;
	unsigned int idx;
	blkif_front_ring_t ring;
	blkif_sring_t *sring;
	uint64_t ring_page;
	unsigned int nr_ring_pages;
	uint32_t ring_refs[VD_SG_MAX_RING_PAGES];
	uint32_t port;
	int evfd;
	struct vd_slot *slot;
	unsigned int nr_slots;
	unsigned int *free_slot;
	unsigned int nr_free;
	uint64_t unknown_ids; /* responses we did not expect */
	bool halted;          /* the backend broke the ring protocol */
};

int vd_fq_create(struct vd_front *f, unsigned int idx, struct vd_fq **out);
/* Ungrants and frees; the backend must have let go of the ring. */
void vd_fq_destroy(struct vd_fq *q);
unsigned int vd_fq_ring_size(const struct vd_fq *q);
struct vd_slot *vd_fq_slot_get(struct vd_fq *q);
void vd_fq_slot_put(struct vd_fq *q, struct vd_slot *s);
/* Grant the slot's pages and put its request on the ring (not pushed). */
int vd_fq_submit(struct vd_fq *q, struct vd_slot *s);
/* Put raw bytes as the next request (hostile); -EBUSY if full. */
int vd_fq_put_raw(struct vd_fq *q, const void *req, size_t len);
/* Publish requests; notify the backend if it asked. */
int vd_fq_kick(struct vd_fq *q);
/* Next response, 1 if one, 0 if none (after the final check), -EPROTO. */
int vd_fq_next_rsp(struct vd_fq *q, struct blkif_response *rsp);
/* Wait for the event channel, up to timeout_ms. 1 event, 0 timeout. */
int vd_fq_wait(struct vd_fq *q, int timeout_ms);
/*
 * Collect responses for slots: ungrant, set io.status, call done (which
 * must vd_fq_slot_put it). Returns the number completed; unknown ids are
 * counted in q->unknown_ids.
 */
typedef void (*vd_slot_done_fn)(void *arg, struct vd_fq *q, struct vd_slot *s);
int vd_fq_reap(struct vd_fq *q, vd_slot_done_fn done, void *arg);

/* ---------------- workload.c ---------------- */

struct vd_wl_stats {
	uint64_t reads, writes, flushes, discards;
	uint64_t bytes;
	uint64_t io_errors;
	uint64_t verify_errors;
	uint64_t unknown_ids;
	struct vd_hist lat;
};

struct vd_wl_result {
	struct vd_wl_stats st;
	uint64_t elapsed_ns;
	bool unplugged; /* the backend started closing: stopped early */
};

struct vd_wl_params {
	enum vd_sg_rw rw;
	unsigned int rwmix;
	uint64_t bs;
	uint64_t ios; /* read/write I/Os to issue; 0: runtime */
	uint64_t runtime_ns;
	uint64_t flush_every;
	uint64_t discard_every;
	uint64_t seed;
	unsigned int iodepth;
};

void vd_wl_params_from_opts(struct vd_wl_params *p, const struct vd_sg_opts *o);
/* Model unit for a disk/bs: 4096 when both allow it, else 512. */
uint32_t vd_wl_model_unit(uint64_t bs, uint32_t sector_size, uint64_t size_bytes);
/* Run p over every queue of f, verifying against model (may be NULL). */
int vd_wl_run(struct vd_front *f, struct vd_model *model, const struct vd_wl_params *p,
	      struct vd_wl_result *res);
void vd_wl_print(const struct vd_wl_result *r, const struct vd_wl_params *p, bool json);

/* ---------------- hostile.c ---------------- */

void vd_hostile_list(FILE *f);
bool vd_hostile_exists(const char *name);
/*
 * Run one case. f has found its device (vd_front_wait_device) but is not
 * connected; the case connects as it needs. Prints the verdict line and
 * returns the exit status (0 pass, 1 fail, 77 cannot run here).
 */
int vd_hostile_run(struct vd_front *f, const char *name);

#endif
