/*
 * vhd-io: the datapath. A request is cut into extents (at block
 * boundaries, and at bitmap runs in differencing disks); up to VHD_SUBS
 * extents are in flight at once, each one file request, one read of the
 * parent (on the parent's queue, same thread), a zero fill, or a metadata
 * job for the owner (first write to a block or to sectors of a
 * differencing disk). See vhd.h for the ordering of allocation.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
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

/* ---- owner rounds ---- */

struct rblk {
	uint32_t block;
	bool fresh;
	uint32_t sector; /* BAT value */
	uint8_t *bitmap; /* staging: bitmap_bytes */
	uint8_t *batsec; /* staging: 512 bytes of BAT */
	bool became_full;
	struct vd_file_req zreq, breq, treq;
	struct iovec biov, tiov;
};

struct vhd_round {
	struct vhd_job *jobs;
	struct rblk *blks;
	uint32_t nblks;
	int pending;
	int phase;
	int64_t error;
	struct vd_file_req flush;
	struct vd_file_req footer_req, bm_hdr_req, bm_req;
	uint8_t *footer; /* 512 */
	uint8_t *bm_hdr; /* 512 */
	struct iovec fiov, bmiov, bmhiov;
	bool wrote_fresh;
	struct vhd_queue *q;
};

static void sub_done(struct vhd_sub *sub, int64_t result);
static void round_start(struct vd_image *img, struct vhd_queue *q);
static void job_enqueue(struct vd_image *img, struct vhd_queue *q, struct vhd_job *job);

static struct vhd_queue *vq(struct vd_image_queue *iq)
{
	return iq->driver_state;
}

static void freq_init(struct vd_file_req *r, enum vd_io_op op, uint64_t off, uint64_t len,
		      struct iovec *iov, int iovcnt, vd_file_cb cb, void *arg)
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

/* ---- queues ---- */

int vhd_queue_init(struct vd_image *img, struct vd_image_queue *iq)
{
	struct vhd_state *s = vhd_st(img);
	struct vhd_queue *q = calloc(1, sizeof(*q));
	struct vhd_queue *none = NULL;
	size_t csz;
	int ret, i;

	if (!q) {
		return -ENOMEM;
	}
	q->img = img;
	q->iq = iq;
	q->ioctx = iq->ioctx;
	ret = vd_ioctx_msgs_enable(q->ioctx);
	if (ret < 0) {
		goto err;
	}
	if (img->backing) {
		ret = vd_image_queue_create(img->backing, q->ioctx, &q->biq);
		if (ret < 0) {
			goto err;
		}
		csz = VD_ALIGN_UP(vd_image_io_ctx_size(img->backing), (size_t)16);
		q->slots = calloc(VHD_BACKING_SLOTS, sizeof(*q->slots));
		q->slot_ctx = csz ? calloc(VHD_BACKING_SLOTS, csz) : NULL;
		if (!q->slots || (csz && !q->slot_ctx)) {
			ret = -ENOMEM;
			goto err;
		}
		for (i = 0; i < VHD_BACKING_SLOTS; i++) {
			q->slots[i].io.driver_ctx = csz ? (uint8_t *)q->slot_ctx + i * csz : NULL;
			q->slots[i].next = q->free_slots;
			q->free_slots = &q->slots[i];
		}
	}
	if (!img->readonly) {
		__atomic_compare_exchange_n(&s->owner, &none, q, false, __ATOMIC_ACQ_REL,
					    __ATOMIC_ACQUIRE);
	}
	iq->driver_state = q;
	return 0;
err:
	vd_image_queue_destroy(q->biq);
	free(q->slots);
	free(q->slot_ctx);
	free(q);
	return ret;
}

void vhd_queue_fini(struct vd_image *img, struct vd_image_queue *iq)
{
	struct vhd_state *s = vhd_st(img);
	struct vhd_queue *q = vq(iq);
	struct vhd_queue *me = q;

	if (!q) {
		return;
	}
	if (__atomic_load_n(&s->owner, __ATOMIC_ACQUIRE) == q) {
		/* finish what was asked of us before giving up ownership */
		while (s->round_running || s->jobs_head) {
			if (vd_ioctx_wait(q->ioctx, 100000000ull) < 0) {
				break;
			}
		}
		__atomic_compare_exchange_n(&s->owner, &me, NULL, false, __ATOMIC_ACQ_REL,
					    __ATOMIC_ACQUIRE);
	}
	vd_image_queue_destroy(q->biq);
	free(q->slots);
	free(q->slot_ctx);
	free(q);
	iq->driver_state = NULL;
}

/* ---- extents ---- */

/* iov slice [off, off+len) of io into out (at most cap entries); count or -1 */
static int slice_iov(const struct vd_io *io, uint64_t off, uint64_t len, struct iovec *out, int cap)
{
	uint64_t pos = 0;
	int i, n = 0;

	for (i = 0; i < io->iovcnt && len > 0; i++) {
		uint64_t l = io->iov[i].iov_len;

		if (pos + l > off) {
			uint64_t skip = off > pos ? off - pos : 0;
			uint64_t take = VD_MIN(l - skip, len);

			if (n >= cap) {
				return -1;
			}
			out[n].iov_base = (uint8_t *)io->iov[i].iov_base + skip;
			out[n].iov_len = take;
			n++;
			len -= take;
			off += take;
		}
		pos += l;
	}
	return n;
}

static void file_cb(struct vd_file_req *r, int64_t result)
{
	sub_done(r->cb_arg, result);
}

static void slot_start(struct vhd_queue *q, struct vhd_sub *sub, struct bslot *slot);

static void backing_cb(struct vd_io *io, int64_t result)
{
	struct bslot *slot = io->cb_arg;
	struct vhd_sub *sub = slot->sub;
	struct vhd_queue *q = sub->req->q;

	slot->sub = NULL;
	if (q->wait_head) {
		struct vhd_sub *w = q->wait_head;

		q->wait_head = w->next_wait;
		if (!q->wait_head) {
			q->wait_tail = NULL;
		}
		slot_start(q, w, slot);
	} else {
		slot->next = q->free_slots;
		q->free_slots = slot;
	}
	sub_done(sub, result);
}

static void slot_start(struct vhd_queue *q, struct vhd_sub *sub, struct bslot *slot)
{
	void *ctx = slot->io.driver_ctx;

	memset(&slot->io, 0, sizeof(slot->io));
	slot->io.op = VD_IO_READ;
	slot->io.offset_bytes = sub->voff;
	slot->io.len_bytes = sub->len;
	slot->io.iov = sub->iov;
	slot->io.iovcnt = sub->iovcnt;
	slot->io.cb = backing_cb;
	slot->io.cb_arg = slot;
	slot->io.driver_ctx = ctx;
	slot->sub = sub;
	vd_image_submit(q->biq, &slot->io);
}

static void zero_iov(struct iovec *iov, int iovcnt)
{
	int i;

	for (i = 0; i < iovcnt; i++) {
		memset(iov[i].iov_base, 0, iov[i].iov_len);
	}
}

static void msg_to_owner(void *arg);

static void send_job(struct vhd_sub *sub);

static void resend_cb(struct vd_file_req *r, int64_t result)
{
	struct vhd_sub *sub = r->cb_arg;

	(void)result;
	send_job(sub);
}

static void send_job(struct vhd_sub *sub)
{
	struct vhd_queue *q = sub->req->q;
	struct vhd_state *s = vhd_st(q->img);
	struct vhd_queue *owner = __atomic_load_n(&s->owner, __ATOMIC_ACQUIRE);
	int ret;

	if (!owner) {
		struct vhd_queue *none = NULL;

		__atomic_compare_exchange_n(&s->owner, &none, q, false, __ATOMIC_ACQ_REL,
					    __ATOMIC_ACQUIRE);
		owner = __atomic_load_n(&s->owner, __ATOMIC_ACQUIRE);
	}
	if (owner == q) {
		job_enqueue(q->img, q, &sub->job);
		return;
	}
	ret = vd_ioctx_send_msg(owner->ioctx, msg_to_owner, sub);
	if (ret == -EAGAIN) {
		/* the owner's ring is full: try again from our next poll */
		freq_init(&sub->msgreq, VD_IO_FLUSH, 0, 0, NULL, 0, resend_cb, sub);
		vd_ioctx_complete(q->ioctx, &sub->msgreq, 0);
	} else if (ret < 0) {
		sub->job.result = ret;
		freq_init(&sub->freq, VD_IO_FLUSH, 0, 0, NULL, 0, file_cb, sub);
		vd_ioctx_complete(q->ioctx, &sub->freq, ret);
	}
}

static void msg_to_owner(void *arg)
{
	struct vhd_sub *sub = arg;
	struct vd_image *img = sub->req->q->img;
	struct vhd_queue *owner = __atomic_load_n(&vhd_st(img)->owner, __ATOMIC_ACQUIRE);

	job_enqueue(img, owner, &sub->job);
}

/* Start the extent of req at its cursor in sub. */
static void start_extent(struct vhd_req *req, struct vhd_sub *sub)
{
	struct vd_io *io = req->io;
	struct vhd_queue *q = req->q;
	struct vd_image *img = q->img;
	struct vhd_state *s = vhd_st(img);
	uint64_t v = io->offset_bytes + req->cursor;
	uint64_t r = io->len_bytes - req->cursor;
	bool data = io->op == VD_IO_READ || io->op == VD_IO_WRITE;
	enum vd_io_op fop = io->op;
	uint64_t n = r;
	int idx = (int)(sub - req->subs);

	memset(&sub->job, 0, sizeof(sub->job));
	sub->req = req;
	sub->voff = v;
	sub->host_off = v;
	sub->kind = SUB_FILE;
	if (s->type != VHD_TYPE_FIXED) {
		uint64_t bs = s->block_size;
		uint32_t blk = (uint32_t)(v / bs);
		uint64_t in = v % bs;
		uint32_t e = vhd_bat_get(s, blk);
		bool present = e != VHD_BAT_UNUSED;

		n = VD_MIN(r, bs - in);
		if (present && s->type == VHD_TYPE_DIFF) {
			const uint8_t *map = __atomic_load_n(&s->bitmaps[blk], __ATOMIC_ACQUIRE);
			uint64_t sec = in / VHD_SECTOR, k, ns = n / VHD_SECTOR;

			present = vhd_bit_test(map, sec);
			for (k = 1; k < ns && vhd_bit_test(map, sec + k) == present; k++) {
			}
			n = k * VHD_SECTOR;
		}
		sub->host_off = (uint64_t)e * VHD_SECTOR + s->bitmap_bytes + in;
		if (!present) {
			if (io->op == VD_IO_READ) {
				if (img->backing && v < img->backing->info.size_bytes) {
					n = VD_MIN(n, img->backing->info.size_bytes - v);
					sub->kind = SUB_BACKING;
				} else {
					sub->kind = SUB_ZERO;
				}
			} else if (io->op != VD_IO_WRITE && s->type == VHD_TYPE_DYNAMIC) {
				sub->kind = SUB_NOP; /* reads as zeroes already */
			} else {
				sub->kind = SUB_META;
				sub->job.block = blk;
				sub->job.sec = (uint32_t)(in / VHD_SECTOR);
				sub->job.nsec = (uint32_t)(n / VHD_SECTOR);
				sub->job.zero = !data;
				sub->job.sub = sub;
			}
		}
	}
	sub->len = n;
	sub->iov = NULL;
	sub->iovcnt = 0;
	if (data) {
		if (req->cursor == 0 && n == io->len_bytes) {
			sub->iov = io->iov;
			sub->iovcnt = io->iovcnt;
		} else {
			sub->iov = req->iovs + (ptrdiff_t)idx * req->per_sub;
			sub->iovcnt = slice_iov(io, req->cursor, n, sub->iov, req->per_sub);
			assert(sub->iovcnt > 0);
		}
	}
	req->cursor += n;
	req->inflight++;
	switch (sub->kind) {
	case SUB_FILE:
		freq_init(&sub->freq, fop, sub->host_off, n, sub->iov, sub->iovcnt, file_cb, sub);
		vd_file_submit(s->file, q->ioctx, &sub->freq);
		break;
	case SUB_ZERO:
	case SUB_NOP:
		if (sub->kind == SUB_ZERO) {
			zero_iov(sub->iov, sub->iovcnt);
		}
		freq_init(&sub->freq, VD_IO_FLUSH, 0, 0, NULL, 0, file_cb, sub);
		vd_ioctx_complete(q->ioctx, &sub->freq, data ? (int64_t)n : 0);
		break;
	case SUB_BACKING:
		if (q->free_slots) {
			struct bslot *slot = q->free_slots;

			q->free_slots = slot->next;
			slot_start(q, sub, slot);
		} else {
			sub->next_wait = NULL;
			if (q->wait_tail) {
				q->wait_tail->next_wait = sub;
			} else {
				q->wait_head = sub;
			}
			q->wait_tail = sub;
		}
		break;
	case SUB_META:
		send_job(sub);
		break;
	}
}

static void advance(struct vhd_req *req)
{
	int i;

	for (i = 0; i < VHD_SUBS && req->error == 0 && req->cursor < req->io->len_bytes; i++) {
		if (req->subs[i].req == NULL) {
			start_extent(req, &req->subs[i]);
		}
	}
}

static void sub_done(struct vhd_sub *sub, int64_t result)
{
	struct vhd_req *req = sub->req;
	struct vd_io *io = req->io;
	bool data = io->op == VD_IO_READ || io->op == VD_IO_WRITE;

	if (sub->kind == SUB_META) {
		result = sub->job.result < 0 ? sub->job.result : (data ? (int64_t)sub->len : 0);
	}
	if (result < 0) {
		req->error = result;
	} else if (data && (uint64_t)result != sub->len) {
		req->error = -EIO;
	}
	sub->req = NULL;
	req->inflight--;
	advance(req);
	if (req->inflight == 0 && (req->error || req->cursor == io->len_bytes)) {
		int64_t res = req->error ? req->error : (data ? (int64_t)io->len_bytes : 0);

		if (req->heap) {
			free(req->iovs);
		}
		vd_image_io_done(io, res);
	}
}

void vhd_submit(struct vd_image *img, struct vd_image_queue *iq, struct vd_io *io)
{
	struct vhd_req *req = io->driver_ctx;
	struct vhd_state *s = vhd_st(img);
	int i;

	memset(req, 0, offsetof(struct vhd_req, inline_iov));
	req->io = io;
	req->q = vq(iq);
	if (io->op == VD_IO_FLUSH) {
		struct vhd_sub *sub = &req->subs[0];

		sub->req = req;
		sub->kind = SUB_FILE;
		sub->len = 0;
		req->inflight = 1;
		req->cursor = io->len_bytes;
		freq_init(&sub->freq, VD_IO_FLUSH, 0, 0, NULL, 0, file_cb, sub);
		vd_file_submit(s->file, iq->ioctx, &sub->freq);
		return;
	}
	if (io->op == VD_IO_READ || io->op == VD_IO_WRITE) {
		int need = io->iovcnt + 1;

		if (need * VHD_SUBS <= VHD_INLINE_IOVS) {
			req->iovs = req->inline_iov;
			req->per_sub = VHD_INLINE_IOVS / VHD_SUBS;
		} else {
			/* rare: a request with many segments that crosses blocks */
			req->iovs = malloc(sizeof(struct iovec) * (size_t)need * VHD_SUBS);
			if (!req->iovs) {
				vd_image_io_fail(iq, io, -ENOMEM);
				return;
			}
			req->heap = true;
			req->per_sub = need;
		}
	}
	for (i = 0; i < VHD_SUBS; i++) {
		req->subs[i].req = NULL;
	}
	advance(req);
}

/* ---- the owner: allocation rounds ---- */

static void msg_answer(void *arg)
{
	struct vhd_sub *sub = arg;

	sub_done(sub, sub->job.result);
}

static void answer_resend_cb(struct vd_file_req *r, int64_t result);

static void answer(struct vhd_queue *owner, struct vhd_job *job)
{
	struct vhd_sub *sub = job->sub;
	struct vhd_queue *origin = sub->req->q;
	int ret;

	if (origin == owner) {
		sub_done(sub, job->result);
		return;
	}
	ret = vd_ioctx_send_msg(origin->ioctx, msg_answer, sub);
	if (ret == -EAGAIN) {
		freq_init(&sub->msgreq, VD_IO_FLUSH, 0, 0, NULL, 0, answer_resend_cb, sub);
		vd_ioctx_complete(owner->ioctx, &sub->msgreq, 0);
	}
}

static void answer_resend_cb(struct vd_file_req *r, int64_t result)
{
	struct vhd_sub *sub = r->cb_arg;
	struct vhd_state *s = vhd_st(sub->req->q->img);

	(void)result;
	answer(__atomic_load_n(&s->owner, __ATOMIC_ACQUIRE), &sub->job);
}

static void job_enqueue(struct vd_image *img, struct vhd_queue *q, struct vhd_job *job)
{
	struct vhd_state *s = vhd_st(img);

	job->next = NULL;
	if (s->jobs_tail) {
		s->jobs_tail->next = job;
	} else {
		s->jobs_head = job;
	}
	s->jobs_tail = job;
	if (!s->round_running) {
		round_start(img, q);
	}
}

static void set_bits(uint8_t *map, uint32_t sec, uint32_t nsec)
{
	uint32_t i;

	for (i = sec; i < sec + nsec; i++) {
		map[i >> 3] |= (uint8_t)(0x80 >> (i & 7));
	}
}

static bool all_bits(const uint8_t *map, uint32_t n)
{
	uint32_t i;

	for (i = 0; i < n; i++) {
		if (!vhd_bit_test(map, i)) {
			return false;
		}
	}
	return true;
}

static void round_step(struct vhd_round *rd);
static void answer(struct vhd_queue *owner, struct vhd_job *job);

static void round_one_done(struct vhd_round *rd, int64_t result)
{
	if (result < 0 && rd->error == 0) {
		rd->error = result;
	}
	if (--rd->pending == 0) {
		round_step(rd);
	}
}

static void round_io_cb(struct vd_file_req *r, int64_t result)
{
	round_one_done(r->cb_arg, result);
}

static void job_io_cb(struct vd_file_req *r, int64_t result)
{
	struct vhd_sub *sub = r->cb_arg;
	round_one_done(vhd_st(sub->req->q->img)->round, result);
}

static void rsubmit(struct vhd_round *rd, struct vd_file_req *r, enum vd_io_op op, uint64_t off,
		    uint64_t len, void *buf, struct iovec *iov)
{
	struct vhd_state *s = vhd_st(rd->q->img);

	if (buf) {
		iov->iov_base = buf;
		iov->iov_len = len;
	}
	freq_init(r, op, off, len, buf ? iov : NULL, buf ? 1 : 0, round_io_cb, rd);
	rd->pending++;
	vd_file_submit(s->file, rd->q->ioctx, r);
}

static struct rblk *find_blk(struct vhd_round *rd, uint32_t block)
{
	uint32_t i;

	for (i = 0; i < rd->nblks; i++) {
		if (rd->blks[i].block == block) {
			return &rd->blks[i];
		}
	}
	return NULL;
}

static void round_free(struct vhd_round *rd)
{
	uint32_t i;

	for (i = 0; i < rd->nblks; i++) {
		free(rd->blks[i].bitmap);
		free(rd->blks[i].batsec);
	}
	free(rd->blks);
	free(rd->footer);
	free(rd->bm_hdr);
	free(rd);
}

static void answer_later_cb(struct vd_file_req *r, int64_t result)
{
	struct vhd_sub *sub = r->cb_arg;
	struct vhd_state *s = vhd_st(sub->req->q->img);

	(void)result;
	answer(__atomic_load_n(&s->owner, __ATOMIC_ACQUIRE), &sub->job);
}

/* Fail every job, each answered from the owner's next poll (never inline). */
static void fail_jobs_later(struct vhd_queue *owner, struct vhd_job *jobs, int64_t err)
{
	struct vhd_job *j, *next;

	for (j = jobs; j; j = next) {
		next = j->next;
		j->result = err;
		freq_init(&j->sub->msgreq, VD_IO_FLUSH, 0, 0, NULL, 0, answer_later_cb, j->sub);
		vd_ioctx_complete(owner->ioctx, &j->sub->msgreq, 0);
	}
}

/* Run the round's next phase from the owner's next poll. */
static void round_kick(struct vhd_round *rd)
{
	rd->pending = 1;
	freq_init(&rd->flush, VD_IO_FLUSH, 0, 0, NULL, 0, round_io_cb, rd);
	vd_ioctx_complete(rd->q->ioctx, &rd->flush, 0);
}

static void round_start(struct vd_image *img, struct vhd_queue *q)
{
	struct vhd_state *s = vhd_st(img);
	struct vhd_round *rd;
	struct vhd_job *j;
	uint32_t n = 0, i;

	if (!s->jobs_head) {
		return;
	}
	rd = calloc(1, sizeof(*rd));
	for (j = s->jobs_head; j; j = j->next) {
		n++;
	}
	if (rd) {
		rd->blks = calloc(n, sizeof(*rd->blks));
		rd->footer = aligned_alloc(VD_PAGE_SIZE, VD_PAGE_SIZE);
		rd->bm_hdr = aligned_alloc(VD_PAGE_SIZE, VD_PAGE_SIZE);
	}
	if (!rd || !rd->blks || !rd->footer || !rd->bm_hdr) {
		/* answer everyone with ENOMEM; nothing was written */
		struct vhd_job *jobs = s->jobs_head;

		s->jobs_head = s->jobs_tail = NULL;
		if (rd) {
			round_free(rd);
		}
		fail_jobs_later(q, jobs, -ENOMEM);
		return;
	}
	rd->q = q;
	rd->jobs = s->jobs_head;
	s->jobs_head = s->jobs_tail = NULL;
	s->round = rd;
	s->round_running = true;
	if (img->corrupt) {
		fail_jobs_later(q, rd->jobs, -EIO);
		rd->jobs = NULL;
		rd->phase = 99;
		round_kick(rd);
		return;
	}
	/* group by block; place fresh blocks at the end of data */
	for (j = rd->jobs; j; j = j->next) {
		struct rblk *b = find_blk(rd, j->block);

		if (!b) {
			b = &rd->blks[rd->nblks++];
			b->block = j->block;
			b->sector = vhd_bat_get(s, j->block);
			if (b->sector == VHD_BAT_UNUSED) {
				/*
				 * The sector bitmap sits just before a page boundary so
				 * that the block's data is page-aligned: O_DIRECT on
				 * 4 KiB-sector disks needs it, and sub-block direct
				 * writes serialise on ext4/xfs.
				 */
				uint64_t off = VD_ALIGN_UP(s->data_end + s->bitmap_bytes,
							   (uint64_t)VD_PAGE_SIZE) -
					       s->bitmap_bytes;

				if (off / VHD_SECTOR >= VHD_BAT_UNUSED) {
					rd->error = -ENOSPC;
					continue;
				}
				b->fresh = true;
				b->sector = (uint32_t)(off / VHD_SECTOR);
				s->data_end = off + s->bitmap_bytes + s->block_size;
			}
			if (b->fresh || s->type == VHD_TYPE_DIFF) {
				b->bitmap = aligned_alloc(
					VD_PAGE_SIZE, VD_ALIGN_UP(s->bitmap_bytes, VD_PAGE_SIZE));
				if (!b->bitmap) {
					rd->error = -ENOMEM;
					continue;
				}
				if (b->fresh) {
					memset(b->bitmap, s->type == VHD_TYPE_DYNAMIC ? 0xff : 0,
					       s->bitmap_bytes);
				} else {
					const uint8_t *cur = s->bitmaps[b->block];

					for (i = 0; i < s->bitmap_bytes; i++) {
						b->bitmap[i] =
							__atomic_load_n(&cur[i], __ATOMIC_RELAXED);
					}
				}
			}
		}
		if (b->bitmap && s->type == VHD_TYPE_DIFF) {
			set_bits(b->bitmap, j->sec, j->nsec);
		}
	}
	if (rd->error) {
		fail_jobs_later(q, rd->jobs, rd->error);
		rd->jobs = NULL;
		rd->phase = 99;
		round_kick(rd);
		return;
	}
	rd->phase = 0;
	round_kick(rd);
}

static void write_bat_sectors(struct vhd_round *rd)
{
	struct vhd_state *s = vhd_st(rd->q->img);
	uint32_t i, k;

	for (i = 0; i < rd->nblks; i++) {
		struct rblk *b = &rd->blks[i];
		uint32_t first = b->block & ~127u; /* 128 entries per sector */

		if (!b->fresh) {
			continue;
		}
		b->batsec = aligned_alloc(VD_PAGE_SIZE, VD_PAGE_SIZE);
		if (!b->batsec) {
			rd->error = -ENOMEM;
			return;
		}
		for (k = 0; k < 128; k++) {
			uint32_t e = first + k < s->header.max_table_entries
					     ? vhd_bat_get(s, first + k)
					     : VHD_BAT_UNUSED;
			struct rblk *o = find_blk(rd, first + k);

			if (o && o->fresh) {
				e = o->sector;
			}
			vhd_put_be32(b->batsec + 4 * (size_t)k, e);
		}
		rsubmit(rd, &b->treq, VD_IO_WRITE, s->header.table_offset + (uint64_t)first * 4,
			VHD_SECTOR, b->batsec, &b->tiov);
	}
}

static void publish(struct vhd_round *rd)
{
	struct vd_image *img = rd->q->img;
	struct vhd_state *s = vhd_st(img);
	uint32_t i, k;

	for (i = 0; i < rd->nblks; i++) {
		struct rblk *b = &rd->blks[i];
		bool full = true;

		if (s->type == VHD_TYPE_DIFF) {
			full = all_bits(b->bitmap, s->sectors_per_block);
			if (b->fresh) {
				/* the staging copy becomes the block's bitmap */
				uint8_t *map = full ? s->full_bitmap : b->bitmap;

				if (!full) {
					b->bitmap = NULL;
				}
				__atomic_store_n(&s->bitmaps[b->block], map, __ATOMIC_RELEASE);
			} else if (s->bitmaps[b->block] != s->full_bitmap) {
				uint8_t *cur = s->bitmaps[b->block];

				for (k = 0; k < s->bitmap_bytes; k++) {
					__atomic_fetch_or(&cur[k], b->bitmap[k], __ATOMIC_RELEASE);
				}
			}
		}
		if (b->fresh) {
			__atomic_store_n(&s->bat[b->block], b->sector, __ATOMIC_RELEASE);
			rd->wrote_fresh = true;
		}
		if (s->has_batmap && full && (b->fresh || s->type == VHD_TYPE_DIFF) &&
		    !vhd_bit_test(s->batmap, b->block)) {
			b->became_full = true;
			s->batmap[b->block >> 3] |= (uint8_t)(0x80 >> (b->block & 7));
		}
	}
}

static void write_tail(struct vhd_round *rd)
{
	struct vhd_state *s = vhd_st(rd->q->img);
	uint32_t i;
	bool bm = false;

	if (rd->wrote_fresh) {
		vhd_footer_encode(&s->footer, rd->footer);
		rsubmit(rd, &rd->footer_req, VD_IO_WRITE, s->data_end, 512, rd->footer, &rd->fiov);
		s->file_bytes = VD_MAX(s->file_bytes, s->data_end + 512);
	}
	for (i = 0; i < rd->nblks; i++) {
		if (rd->blks[i].became_full) {
			bm = true;
		}
	}
	if (bm) {
		uint64_t len = (uint64_t)s->batmap_sectors * VHD_SECTOR;
		uint32_t sum = 0;
		uint64_t k;

		/* the whole map: it is small (1 bit per block) and keeps the checksum true */
		for (k = 0; k < len; k++) {
			sum += s->batmap[k];
		}
		memset(rd->bm_hdr, 0, 512);
		memcpy(rd->bm_hdr, VHD_COOKIE_BATMAP, 8);
		for (k = 0; k < 8; k++) {
			rd->bm_hdr[8 + k] = (uint8_t)(s->batmap_off >> (56 - 8 * k));
		}
		vhd_put_be32(rd->bm_hdr + 16, s->batmap_sectors);
		vhd_put_be32(rd->bm_hdr + 20, VHD_BATMAP_VERSION);
		vhd_put_be32(rd->bm_hdr + 24, ~sum);
		rsubmit(rd, &rd->bm_req, VD_IO_WRITE, s->batmap_off, len, s->batmap, &rd->bmiov);
		rsubmit(rd, &rd->bm_hdr_req, VD_IO_WRITE, s->batmap_hdr_off, 512, rd->bm_hdr,
			&rd->bmhiov);
	}
}

static void round_step(struct vhd_round *rd)
{
	struct vd_image *img = rd->q->img;
	struct vhd_state *s = vhd_st(img);
	struct vhd_job *j, *next;
	uint32_t i;

	rd->pending = 1; /* held while submitting */
	switch (rd->phase) {
	case 0: /* zero the data area of fresh blocks that lie inside the file */
		rd->phase = 1;
		for (i = 0; i < rd->nblks && rd->error == 0; i++) {
			struct rblk *b = &rd->blks[i];
			uint64_t data = (uint64_t)b->sector * VHD_SECTOR + s->bitmap_bytes;

			if (b->fresh && data < s->file_bytes) {
				rsubmit(rd, &b->zreq, VD_IO_WRITE_ZEROES, data,
					VD_MIN((uint64_t)s->block_size, s->file_bytes - data), NULL,
					NULL);
			}
		}
		break;
	case 1: /* bitmaps of fresh blocks, the jobs' data */
		rd->phase = 2;
		if (rd->error) {
			break;
		}
		for (i = 0; i < rd->nblks; i++) {
			struct rblk *b = &rd->blks[i];

			if (b->fresh) {
				rsubmit(rd, &b->breq, VD_IO_WRITE, (uint64_t)b->sector * VHD_SECTOR,
					s->bitmap_bytes, b->bitmap, &b->biov);
			}
		}
		for (j = rd->jobs; j; j = j->next) {
			struct rblk *b = find_blk(rd, j->block);
			struct vhd_sub *sub = j->sub;
			uint64_t off = (uint64_t)b->sector * VHD_SECTOR + s->bitmap_bytes +
				       (uint64_t)j->sec * VHD_SECTOR;
			uint64_t len = (uint64_t)j->nsec * VHD_SECTOR;

			if (j->zero) {
				freq_init(&sub->freq, VD_IO_WRITE_ZEROES, off, len, NULL, 0,
					  job_io_cb, sub);
			} else {
				freq_init(&sub->freq, VD_IO_WRITE, off, len, sub->iov, sub->iovcnt,
					  job_io_cb, sub);
			}
			rd->pending++;
			vd_file_submit(s->file, rd->q->ioctx, &sub->freq);
			s->file_bytes = VD_MAX(s->file_bytes, off + len);
		}
		break;
	case 2: /* data before references */
		rd->phase = 3;
		if (rd->error == 0) {
			rsubmit(rd, &rd->flush, VD_IO_FLUSH, 0, 0, NULL, NULL);
		}
		break;
	case 3: /* BAT entries of fresh blocks, bitmaps of old differencing blocks */
		rd->phase = 4;
		if (rd->error) {
			break;
		}
		write_bat_sectors(rd);
		for (i = 0; i < rd->nblks; i++) {
			struct rblk *b = &rd->blks[i];

			if (!b->fresh && s->type == VHD_TYPE_DIFF) {
				rsubmit(rd, &b->breq, VD_IO_WRITE, (uint64_t)b->sector * VHD_SECTOR,
					s->bitmap_bytes, b->bitmap, &b->biov);
			}
		}
		break;
	case 4: /* visible: publish, answer, then the footer and batmap */
		rd->phase = 5;
		if (rd->error == 0) {
			publish(rd);
		} else {
			vd_log_ratelimited(VD_LOG_ERR, "vhd: %s: allocation failed: %s", img->path,
					   strerror((int)-rd->error));
		}
		for (j = rd->jobs; j; j = next) {
			next = j->next;
			j->result = rd->error;
			answer(rd->q, j);
		}
		rd->jobs = NULL;
		if (rd->error == 0) {
			write_tail(rd);
		}
		break;
	default: /* done */
		s->round = NULL;
		s->round_running = false;
		{
			struct vhd_queue *q = rd->q;

			round_free(rd);
			if (s->jobs_head) {
				round_start(img, q);
			}
		}
		return;
	}
	round_one_done(rd, 0);
}
