/*
 * Private to src/queue/: the per-queue state and the per-request state.
 * Everything here is owned by the queue's thread once it has started.
 */
#ifndef VD_QUEUE_INT_H
#define VD_QUEUE_INT_H

#include <pthread.h>
#include <sys/queue.h>
#include "queue/queue.h"

#define VD_QUEUE_GCOPY_BATCH    1024 /* grant-copy segments per hypercall */
#define VD_QUEUE_MIN_POOL_PAGES 512  /* >= one max indirect request (256) twice */
#define VD_QUEUE_DEF_POOL_PAGES 4096 /* 16 MiB of bounce pages per queue at most */
#define VD_QUEUE_FIXED_FILES    16   /* io_uring fixed-file slots (image chain) */

#define VD_QUEUE_PGRANT_IDLE_NS 1000000000ull /* an unused grant this old may be evicted */

/*
 * One persistently mapped guest page (blkback's persistent_gnt). Mapped
 * writable on first use of its gref; found again through a hash on gref.
 * users counts the requests holding it: while non-zero it is not on the
 * LRU and cannot be evicted (zero-copy I/O may be in flight on it).
 */
struct vd_pgrant {
	uint32_t gref;
	uint32_t users;
	void *addr; /* the mapping; NULL while on the free list */
	uint64_t last_ns;
	struct vd_pgrant *hnext;    /* hash chain */
	TAILQ_ENTRY(vd_pgrant) lru; /* unused mapped (LRU order) or free */
};
TAILQ_HEAD(vd_pgrant_list, vd_pgrant);

enum qreq_stage {
	QREQ_FREE,
	QREQ_WAITING, /* parsed, waiting for bounce pages or a barrier */
	QREQ_IO,      /* submitted to the image */
	QREQ_DONE,    /* I/O finished, response pending */
};

/* One ring request from slot copy to response. */
struct vd_qreq {
	struct vd_blkif_req breq; /* the private copy, validated */
	struct vd_io io;
	enum qreq_stage stage;
	bool grant_failed;    /* some grant-copy segment failed */
	bool zero_copy;       /* iov points into mapped guest pages */
	uint8_t barrier_step; /* WRITE_BARRIER, FLUSH with data: 0 flush, 1 write, 2 flush */
	int64_t result;       /* from the image: bytes or -errno */
	uint64_t start_ns;
	unsigned int nr_pages;
	uint32_t *pages;           /* pool page indices, VD_BLKIF_MAX_SEGS */
	struct iovec *iov;         /* one per page, VD_BLKIF_MAX_SEGS */
	struct vd_pgrant **pg;     /* per segment: its persistent grant or NULL */
	unsigned int nr_pg;        /* entries of pg in use (0 or nr_segs) */
	void *indirect_page;       /* private copy of the indirect segment page */
	TAILQ_ENTRY(vd_qreq) link; /* free list, wait list or done list */
};
TAILQ_HEAD(vd_qreq_list, vd_qreq);

/* Grant copies gathered for one hypercall; owner[i] is told if ops[i] fails. */
struct vd_gbatch {
	unsigned int n;
	struct vd_gcopy ops[VD_QUEUE_GCOPY_BATCH];
	struct vd_qreq *owner[VD_QUEUE_GCOPY_BATCH];
};

struct vd_queue {
	struct vd_queue_config cfg;
	uint32_t ring_refs[VD_BLKIF_MAX_RING_PAGES];

	/* Transport, ring and reactor: the queue thread's alone. */
	struct vd_gnt *gnt;
	struct vd_evtchn *evtchn;
	void *sring;
	struct vd_blkif_ring ring;
	struct vd_ioctx *ioctx;
	struct vd_image_queue *iq;

	/* Requests: a pool sized by the ring, and three lists. */
	struct vd_qreq *reqs;
	unsigned int nr_reqs;
	struct vd_qreq_list free_reqs;
	struct vd_qreq_list waiting; /* FIFO: parsed, not yet submitted */
	struct vd_qreq_list done;    /* I/O finished, not yet answered */
	unsigned int nr_io;          /* requests at the image */
	struct vd_qreq *barrier;     /* the running WRITE_BARRIER, if any */

	/* Bounce pages: one aligned region, a stack of free page indices. */
	uint8_t *pool;
	uint32_t nr_pool_pages;
	uint32_t *free_pages;
	uint32_t nr_free_pages;
	void *indirect_pages; /* nr_reqs * VD_BLKIF_MAX_INDIRECT_PAGES pages */
	void *driver_ctx;     /* nr_reqs * io_ctx_size */

	struct vd_gbatch *gbatch; /* reused for each hypercall */

	/* Persistent grants: a preallocated set, a hash on gref, an LRU. */
	struct vd_pgrant *pgrants; /* nr_pgrants entries */
	uint32_t nr_pgrants;
	struct vd_pgrant **pg_hash; /* pg_mask + 1 chains */
	uint32_t pg_mask;
	struct vd_pgrant_list pg_free; /* unmapped entries */
	struct vd_pgrant_list pg_lru;  /* mapped, unused: least recently used first */
	bool zero_copy;                /* cfg.zero_copy, off after a fault */

	uint64_t now_ns;  /* read once per turn of the loop */
	bool need_notify; /* responses pushed, kick pending */
	bool halted;      /* protocol violation: ring no longer read */
	bool stopping;    /* draining for vd_queue_stop */
	bool exit;        /* thread loop ends */

	/* Adaptive polling: settings from any thread, state the thread's alone. */
	uint32_t poll_us_set;       /* atomic: vd_queue_set_polling */
	uint32_t poll_idle_pct_set; /* atomic */
	struct vd_qpoll {
		uint64_t window_end_ns;           /* keep polling until then; 0: not polling */
		uint64_t last_turn_ns;            /* when the previous empty turn ended */
		bool idle_ok;                     /* host idle CPU >= threshold at last sample */
		int stat_fd;                      /* /proc/stat, -1 if unreadable (then: poll) */
		uint64_t sample_ns;               /* when /proc/stat was last read */
		uint64_t idle_ticks, total_ticks; /* at that sample */
		uint64_t spin_ns;                 /* empty polling since that sample */
		unsigned int nr_cpus;
	} poll;

	pthread_t thread;
	bool thread_started;

	struct vd_queue_stats stats; /* written by the queue thread only */
};

/* Single-writer counters read by other threads: relaxed atomics. */
#define VD_STAT_ADD(q, field, n) \
	__atomic_store_n(&(q)->stats.field, (q)->stats.field + (n), __ATOMIC_RELAXED)

#endif
