/*
 * The backend half of the xenbus handshake for one VBD (xen/io/blkif.h,
 * xen/io/xenbus.h), over libxenstore. Same code on real Xen and in the sim.
 *
 * The state machine owns the xenstore nodes of the backend directory
 * (be_path, e.g. /local/domain/0/backend/vbd3/5/51712) and follows the
 * frontend's state. Resources (rings, queues) are the caller's: it is told
 * to connect with the frontend's validated configuration and to disconnect.
 *
 *   backend:  InitWait (features written) -> Connected -> Closing -> Closed
 *   frontend: Initialising -> Initialised/Connected -> Closing -> Closed
 *
 * Threads: the worker's control thread only.
 */
#ifndef VD_BLKIF_XENBUS_H
#define VD_BLKIF_XENBUS_H

#include <stdbool.h>
#include <stdint.h>
#include <xenstore.h>
#include "blkif/blkif.h"
#include "common/err.h"

/* What the backend offers, written as feature-* and friends. */
struct vd_blkif_caps {
	uint64_t size_bytes;            /* "sectors" is in 512-byte units */
	uint32_t sector_bytes;          /* "sector-size" */
	uint32_t physical_sector_bytes; /* "physical-sector-size" */
	bool readonly;                  /* "info" VDISK_READONLY, and refuse writes */
	bool flush;
	bool barrier;
	bool discard;
	uint32_t discard_granularity_bytes;
	uint32_t discard_alignment_bytes;
	bool discard_secure;
	bool persistent;                  /* feature-persistent */
	unsigned int max_queues;          /* multi-queue-max-queues, 1..VD_BLKIF_MAX_QUEUES */
	unsigned int max_ring_page_order; /* max-ring-page-order, 0..4 */
	unsigned int max_indirect_segs;   /* feature-max-indirect-segments, 0 = off */
};

/* The frontend's configuration, read and validated at connect. */
struct vd_blkif_fe_queue {
	uint32_t ring_refs[VD_BLKIF_MAX_RING_PAGES];
	uint32_t evtchn;
};

struct vd_blkif_fe_conf {
	uint16_t domid; /* frontend-id */
	enum vd_blkif_abi abi;
	unsigned int nr_queues;       /* 1..caps.max_queues */
	unsigned int ring_page_order; /* 0..caps.max_ring_page_order */
	unsigned int nr_ring_pages;   /* 1 << ring_page_order */
	bool persistent;              /* both sides offered feature-persistent */
	struct vd_blkif_fe_queue queue[VD_BLKIF_MAX_QUEUES];
};

/*
 * Read ring-page-order / ring-ref / ring-refN / queue-N/..., event-channel,
 * protocol, multi-queue-num-queues and feature-persistent from fe_path.
 * Every value is untrusted: anything out of range or malformed is -EINVAL
 * with err explaining it. Supports both the single-queue layout (keys in
 * fe_path) and the multi-queue layout (fe_path/queue-N/...).
 */
int vd_blkif_read_fe_conf(struct xs_handle *xs, const char *fe_path,
			  const struct vd_blkif_caps *caps, struct vd_blkif_fe_conf *conf,
			  struct vd_err *err);

struct vd_xenbus_backend;

struct vd_xenbus_backend_ops {
	/* Map rings and start queues. On failure the backend reports it in
	 * xenstore (error node) and moves to Closing. */
	int (*connect)(void *arg, const struct vd_blkif_fe_conf *conf, struct vd_err *err);
	/* Stop queues, wait for in-flight I/O, unmap. Must not fail. */
	void (*disconnect)(void *arg);
};

/*
 * Start serving be_path: read frontend / frontend-id from it, write the
 * caps, move to InitWait, and watch the backend directory and the frontend
 * state. arg is passed to ops.
 */
int vd_xenbus_backend_create(struct xs_handle *xs, const char *be_path,
			     const struct vd_blkif_caps *caps,
			     const struct vd_xenbus_backend_ops *ops, void *arg,
			     struct vd_xenbus_backend **out, struct vd_err *err);
void vd_xenbus_backend_destroy(struct vd_xenbus_backend *b);

/*
 * Feed a watch event (from xs_read_watch) to the state machine. Returns
 * 1 when the VBD is finished (backend directory removed, or online=0 and
 * closed): the caller should destroy it; 0 otherwise.
 *
 * Tokens: "be" (watch on be_path and below) and "fe" (fe_path/state); other
 * tokens are ignored. Every event re-reads xenstore, so duplicated, merged
 * or stale events are harmless. Transitions (Linux blkback frontend_changed):
 *   fe Initialised/Connected, we InitWait, not connected: read the frontend
 *      conf, ops->connect, write Connected; any failure: error node + Closing.
 *      Never a second connect while connected, never from Closing/Closed.
 *   fe Initialising: if we are Closed (reconnect) or connected (the frontend
 *      restarted without closing): disconnect if needed, back to InitWait.
 *   fe Closing: disconnect, write Closing.
 *   fe Closed, or fe state node gone after we started: disconnect, write
 *      Closed; finished (1) if online=0.
 *   fe state unparsable, InitWait or Reconfigur*: ignored.
 *   be dir gone: disconnect, finished (nothing written).
 *   online=0, or state Closing/Closed written by someone else: disconnect,
 *      write Closed, finished.
 */
int vd_xenbus_backend_handle_watch(struct vd_xenbus_backend *b, const char *path,
				   const char *token);

/*
 * A queue halted on a protocol violation or a fatal error: write
 * be_path/error as "<errno> <why>" and move to Closing (blkback's
 * xenbus_dev_fatal). It does not call ops->disconnect: that follows when the
 * frontend closes, or at detach/destroy.
 */
void vd_xenbus_backend_fatal(struct vd_xenbus_backend *b, int errnum, const char *why);

/* Helpers */
int vd_xenbus_read_state(struct xs_handle *xs, const char *dir, int *state);
int vd_xenbus_write_state(struct xs_handle *xs, const char *dir, int state);
/* Read an unsigned decimal key; -ENOENT if absent, -EINVAL if malformed. */
int vd_xs_read_uint(struct xs_handle *xs, const char *dir, const char *key, uint64_t max,
		    uint64_t *out);
int vd_xs_printf(struct xs_handle *xs, xs_transaction_t t, const char *dir, const char *key,
		 const char *fmt, ...) __attribute__((format(printf, 5, 6)));

#endif
