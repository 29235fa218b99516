/*
 * queue: one thread per blkif ring. It alone owns the ring mapping, its
 * event channel, its io_uring (vd_ioctx), its request pool and bounce pages,
 * and its image queue. The data path of one request is in queue.c:
 *
 *   ring slot --copy+validate--> vd_qreq --grant copy (WRITE)--> bounce pages
 *   --vd_image_submit--> disk --callback--> grant copy (READ) --> response
 *
 * Other threads talk to a queue only through messages (vd_queue_send_msg),
 * which run on the queue's thread.
 */
#ifndef VD_QUEUE_H
#define VD_QUEUE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "blkif/blkif.h"
#include "common/err.h"
#include "image/image.h"
#include "transport/transport.h"

struct vd_queue;

/* Called on the queue's thread when it halts the ring (protocol violation
 * or fatal error). Must only hand the news to the control thread. */
typedef void (*vd_queue_halt_cb)(void *arg, unsigned int qidx, int errnum, const char *why);

struct vd_queue_config {
	unsigned int index; /* queue number, for logs */
	char name[48];      /* "d5/51712 q0" */
	uint16_t domid;     /* frontend domain */
	enum vd_blkif_abi abi;
	const uint32_t *ring_refs;  /* copied */
	unsigned int nr_ring_pages; /* 1..VD_BLKIF_MAX_RING_PAGES */
	uint32_t remote_port;       /* frontend's event channel port */
	struct vd_blkif_limits limits;
	struct vd_transport *transport; /* borrowed */
	struct vd_image *image;         /* borrowed */
	vd_queue_halt_cb on_halt;
	void *on_halt_arg;
	uint32_t max_pool_pages; /* 0: default */
	/* Adaptive polling (see vd_queue_set_polling); both may change later. */
	uint32_t poll_us;       /* polling window after activity; 0: off */
	uint32_t poll_idle_pct; /* poll only while host idle CPU >= this % */
	/*
	 * Persistent grants: both sides offered feature-persistent (the
	 * frontend then keeps its data grants and reuses them). The queue maps
	 * each gref it meets once, writable, into a bounded LRU set of at most
	 * max_persistent_grants (0: VD_QUEUE_DEF_MAX_PGRANTS) and moves data
	 * with memcpy instead of grant copy; a gref it cannot map (read-only,
	 * not ours) or that does not fit goes through grant copy as before.
	 * Without it, grefs are never mapped (the frontend may end them).
	 */
	bool persistent;
	uint32_t max_persistent_grants;
	/*
	 * Zero-copy (needs persistent): READ/WRITE data goes straight between
	 * the image and the mapped guest pages (no bounce page, no memcpy)
	 * when every segment is persistently mapped and 4 KiB aligned.
	 */
	bool zero_copy;
	/* Do not register the bounce pool and image files with io_uring. */
	bool no_io_fixed;
};

#define VD_QUEUE_DEF_MAX_PGRANTS 1056 /* blkback's max_persistent_grants */
#define VD_QUEUE_MAX_PGRANTS     16384
/*
 * Zero-copy default for the `zero-copy` backend key, chosen by measurement
 * (bench/README.md).
 */
#define VD_QUEUE_DEF_ZERO_COPY   1

/*
 * Polling defaults, chosen by measurement (bench/run.sh, see bench/README.md):
 * a window long enough to cover a guest's think time between requests at
 * QD1 (its next request arrives within tens of microseconds), short enough
 * that an idle disk stops spinning at once.
 */
#define VD_QUEUE_DEF_POLL_US       50
#define VD_QUEUE_DEF_POLL_IDLE_PCT 50
#define VD_QUEUE_MAX_POLL_US       1000000 /* 1 s: anything longer is a busy loop */

/* Histograms: bucket i of the latency histogram holds latencies in
 * [vd_queue_lat_bucket_low(i), vd_queue_lat_bucket_low(i + 1)) microseconds
 * (log-linear: 4 buckets per power of two); batch bucket i holds batches of
 * [2^i, 2^(i+1)) requests. */
#define VD_QUEUE_LAT_BUCKETS   96
#define VD_QUEUE_BATCH_BUCKETS 12

struct vd_queue_stats {
	uint64_t reqs; /* requests answered */
	uint64_t reqs_read, reqs_write, reqs_flush, reqs_discard;
	uint64_t bytes_read, bytes_written;
	uint64_t errors;   /* responses other than OKAY */
	uint64_t invalid;  /* rejected by validation */
	uint64_t wakeups;  /* loop iterations that found work */
	uint64_t notifies; /* event channel kicks sent */
	uint64_t grant_copy_calls, grant_copy_segs;
	uint64_t pool_stalls; /* ring left unconsumed for lack of bounce pages */
	/* The loop: each turn either found work (wakeups) or not. */
	uint64_t polls_empty;     /* turns while polling that found nothing */
	uint64_t poll_windows;    /* polling windows opened (after activity) */
	uint64_t poll_idle_stops; /* windows cut short: host idle CPU too low */
	uint64_t sleeps;          /* times the thread blocked for an event */
	uint64_t evtchn_kicks;    /* event channel notifications received */
	uint64_t batches;         /* ring reads that found requests */
	uint64_t batch_reqs;      /* requests taken in those reads */
	uint64_t batch_hist[VD_QUEUE_BATCH_BUCKETS];
	uint64_t lat_hist[VD_QUEUE_LAT_BUCKETS]; /* ring slot read -> response, us */
	/* Persistent grants (segments and indirect pages) and zero-copy. */
	uint64_t pgrant_hits;      /* gref found mapped */
	uint64_t pgrant_maps;      /* grefs mapped (first use, or after eviction) */
	uint64_t pgrant_map_fails; /* map refused (read-only, not granted): copied */
	uint64_t pgrant_full;      /* set full of recently used grants: copied */
	uint64_t pgrant_evictions; /* idle grants unmapped to make room */
	uint64_t zero_copy_reqs;   /* requests served without bounce pages */
};

/*
 * Stats as text, for the worker's control socket and `vdisk stats`: lines
 * "name value" (histograms: "name v0 v1 ..."), starting with "queue IDX".
 * format returns the length written (without the NUL) or -ENOSPC;
 * parse_line takes one such line (without "queue") into st: 0, or -EINVAL
 * for a line it does not know or a malformed number (a newer peer: skip it).
 */
int vd_queue_stats_format(const struct vd_queue_stats *st, unsigned int idx, char *buf, size_t len);
int vd_queue_stats_parse_line(struct vd_queue_stats *st, const char *line);

/* Bucket helpers for the histograms above (any thread). */
unsigned int vd_queue_lat_bucket(uint64_t us);
uint64_t vd_queue_lat_bucket_low(unsigned int idx);
/* Latency in us at percentile pct (0..100) of hist: its bucket's midpoint;
 * 0 if empty. */
uint64_t vd_queue_lat_percentile(const uint64_t hist[VD_QUEUE_LAT_BUCKETS], double pct);

/*
 * Map the ring, bind the event channel and allocate the pool (on the
 * calling control thread); nothing runs until vd_queue_start().
 */
int vd_queue_create(const struct vd_queue_config *cfg, struct vd_queue **out, struct vd_err *err);
/* Start the queue's thread. */
int vd_queue_start(struct vd_queue *q, struct vd_err *err);
/*
 * Stop consuming the ring, let in-flight requests finish and be answered,
 * then stop the thread. Blocks until it is done.
 */
void vd_queue_stop(struct vd_queue *q);
/* Unmap, unbind and free. The queue must be stopped (or never started). */
void vd_queue_destroy(struct vd_queue *q);

/* Counters, read from another thread (relaxed atomics; a snapshot). */
void vd_queue_get_stats(struct vd_queue *q, struct vd_queue_stats *out);

/*
 * Adaptive polling, any thread, any time (taken at the queue's next turn):
 * after activity the queue keeps polling the ring and the io completions for
 * poll_us microseconds (re-armed by every request found) without re-arming
 * req_event, so the guest stops kicking; it polls only while the host's idle
 * CPU (from /proc/stat, sampled every 10 ms at most, the queue's own empty
 * polling counted as idle) is at least idle_pct %. poll_us 0: event mode.
 * poll_us is capped at VD_QUEUE_MAX_POLL_US, idle_pct at 100.
 */
void vd_queue_set_polling(struct vd_queue *q, uint32_t poll_us, uint32_t idle_pct);

/* Run fn(arg) on the queue's thread (vd_ioctx_send_msg). -EAGAIN if full. */
typedef void (*vd_queue_msg_fn)(void *arg);
int vd_queue_send_msg(struct vd_queue *q, vd_queue_msg_fn fn, void *arg);

/*
 * For services that share the queue's thread, such as the NBD export of a
 * VBD: the queue's reactor and its image queue. Call only on the queue's
 * thread (from a function sent with vd_queue_send_msg); both stay valid
 * until vd_queue_stop returns. Whatever a service submits through them it
 * must have finished (or abandoned: callbacks never run after stop) before
 * it asks the queue to stop.
 */
struct vd_ioctx *vd_queue_ioctx(struct vd_queue *q);
struct vd_image_queue *vd_queue_image_queue(struct vd_queue *q);

/*
 * One turn of the loop without blocking (tests call it directly, with no
 * OS thread): messages, ring, completions. Returns true if it did work.
 */
bool vd_queue_poll(struct vd_queue *q);

#endif
