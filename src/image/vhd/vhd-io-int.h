/*
 * vhd-io-int: what the datapath (vhd-io.c) and the metadata owner's
 * allocation rounds (vhd-alloc.c) share: the per-request extents (subs),
 * the jobs they send to the owner, and the per-queue state.
 */
#ifndef VD_IMAGE_VHD_IO_INT_H
#define VD_IMAGE_VHD_IO_INT_H

#include <string.h>

#include "image/vhd/vhd.h"

#define VHD_SUBS          4
#define VHD_INLINE_IOVS   24
#define VHD_BACKING_SLOTS 64

enum sub_kind { SUB_FILE, SUB_BACKING, SUB_ZERO, SUB_NOP, SUB_META };

struct vhd_sub;
struct vhd_queue;

struct vhd_job {
	struct vhd_job *next;
	struct vhd_sub *sub;
	uint32_t block;
	uint32_t sec; /* first sector in the block */
	uint32_t nsec;
	bool zero; /* discard / write-zeroes: no data */
	int64_t result;
};

struct vhd_req;

struct vhd_sub {
	struct vd_file_req freq;
	struct vd_file_req msgreq; /* deferred resend of a message */
	struct vhd_job job;
	struct vhd_req *req;
	struct vhd_sub *next_wait;
	struct iovec *iov;
	int iovcnt;
	uint64_t voff;
	uint64_t len;
	uint64_t host_off;
	enum sub_kind kind;
	bool to_owner; /* msgreq resends the job (else the answer) */
};

struct vhd_req {
	struct vd_io *io;
	struct vhd_queue *q;
	uint64_t cursor;
	int64_t error;
	int inflight;
	int per_sub; /* iovecs per sub in iovs */
	struct iovec *iovs;
	bool heap;
	struct vhd_sub subs[VHD_SUBS];
	struct iovec inline_iov[VHD_INLINE_IOVS];
};
static_assert(sizeof(struct vhd_req) <= VHD_IO_CTX_SIZE, "VHD_IO_CTX_SIZE too small");

struct bslot {
	struct vd_io io;
	struct bslot *next;
	struct vhd_sub *sub;
};

struct vhd_queue {
	struct vd_image *img;
	struct vd_image_queue *iq;
	struct vd_ioctx *ioctx;
	struct vd_image_queue *biq; /* the parent's queue on this thread */
	struct bslot *slots;
	struct bslot *free_slots;
	void *slot_ctx;
	struct vhd_sub *wait_head, *wait_tail; /* waiting for a slot */
};

static inline struct vhd_queue *vq(struct vd_image_queue *iq)
{
	return iq->driver_state;
}

static inline void vhd_freq_init(struct vd_file_req *r, enum vd_io_op op, uint64_t off,
				 uint64_t len, struct iovec *iov, int iovcnt, vd_file_cb cb,
				 void *arg)
{
	memset(r, 0, sizeof(*r));
	r->op = op;
	r->offset_bytes = off;
	r->len_bytes = len;
	r->iov = iov;
	r->iovcnt = iovcnt;
	r->cb = cb;
	r->cb_arg = arg;
}

/* vhd-io.c: an extent finished (a job's answer included); completes the request when last. */
void vhd_sub_done(struct vhd_sub *sub, int64_t result);
/* vhd-alloc.c (owner only): queue a job, start a round if none runs. */
void vhd_job_enqueue(struct vd_image *img, struct vhd_queue *q, struct vhd_job *job);

#endif
