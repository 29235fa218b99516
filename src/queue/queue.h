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
	unsigned int index;              /* queue number, for logs */
	char name[48];                   /* "d5/51712 q0" */
	uint16_t domid;                  /* frontend domain */
	enum vd_blkif_abi abi;
	const uint32_t *ring_refs;       /* copied */
	unsigned int nr_ring_pages;      /* 1..VD_BLKIF_MAX_RING_PAGES */
	uint32_t remote_port;            /* frontend's event channel port */
	struct vd_blkif_limits limits;
	struct vd_transport *transport;  /* borrowed */
	struct vd_image *image;          /* borrowed */
	vd_queue_halt_cb on_halt;
	void *on_halt_arg;
	uint32_t max_pool_pages;         /* 0: default */
};

struct vd_queue_stats {
	uint64_t reqs;                   /* requests answered */
	uint64_t reqs_read, reqs_write, reqs_flush, reqs_discard;
	uint64_t bytes_read, bytes_written;
	uint64_t errors;                 /* responses other than OKAY */
	uint64_t invalid;                /* rejected by validation */
	uint64_t wakeups;                /* loop iterations that found work */
	uint64_t notifies;               /* event channel kicks sent */
	uint64_t grant_copy_calls, grant_copy_segs;
	uint64_t pool_stalls;            /* ring left unconsumed for lack of bounce pages */
};

/*
 * Map the ring, bind the event channel and allocate the pool (on the
 * calling control thread); nothing runs until vd_queue_start().
 */
int vd_queue_create(const struct vd_queue_config *cfg, struct vd_queue **out,
		    struct vd_err *err);
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

/* Run fn(arg) on the queue's thread (vd_ioctx_send_msg). -EAGAIN if full. */
typedef void (*vd_queue_msg_fn)(void *arg);
int vd_queue_send_msg(struct vd_queue *q, vd_queue_msg_fn fn, void *arg);

/*
 * One turn of the loop without blocking (tests call it directly, with no
 * OS thread): messages, ring, completions. Returns true if it did work.
 */
bool vd_queue_poll(struct vd_queue *q);

#endif
