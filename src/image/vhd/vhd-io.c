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
#include "image/vhd/vhd-io-int.h"

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
	vhd_sub_done(r->cb_arg, result);
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
	vhd_sub_done(sub, result);
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
		vhd_job_enqueue(q->img, q, &sub->job);
		return;
	}
	ret = vd_ioctx_send_msg(owner->ioctx, msg_to_owner, sub);
	if (ret == -EAGAIN) {
		/* the owner's ring is full: try again from our next poll */
		vhd_freq_init(&sub->msgreq, VD_IO_FLUSH, 0, 0, NULL, 0, resend_cb, sub);
		vd_ioctx_complete(q->ioctx, &sub->msgreq, 0);
	} else if (ret < 0) {
		sub->job.result = ret;
		vhd_freq_init(&sub->freq, VD_IO_FLUSH, 0, 0, NULL, 0, file_cb, sub);
		vd_ioctx_complete(q->ioctx, &sub->freq, ret);
	}
}

static void msg_to_owner(void *arg)
{
	struct vhd_sub *sub = arg;
	struct vd_image *img = sub->req->q->img;
	struct vhd_queue *owner = __atomic_load_n(&vhd_st(img)->owner, __ATOMIC_ACQUIRE);

	vhd_job_enqueue(img, owner, &sub->job);
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
		if (present) {
			/* a partial bitmap (differencing, or another writer's dynamic block) */
			const uint8_t *map = __atomic_load_n(&s->bitmaps[blk], __ATOMIC_ACQUIRE);

			if (map != s->full_bitmap) {
				uint64_t sec = in / VHD_SECTOR, k, ns = n / VHD_SECTOR;

				present = vhd_bit_test(map, sec);
				for (k = 1; k < ns && vhd_bit_test(map, sec + k) == present; k++) {
				}
				n = k * VHD_SECTOR;
			}
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
		vhd_freq_init(&sub->freq, fop, sub->host_off, n, sub->iov, sub->iovcnt, file_cb,
			      sub);
		vd_file_submit(s->file, q->ioctx, &sub->freq);
		break;
	case SUB_ZERO:
	case SUB_NOP:
		if (sub->kind == SUB_ZERO) {
			zero_iov(sub->iov, sub->iovcnt);
		}
		vhd_freq_init(&sub->freq, VD_IO_FLUSH, 0, 0, NULL, 0, file_cb, sub);
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

void vhd_sub_done(struct vhd_sub *sub, int64_t result)
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
		vhd_freq_init(&sub->freq, VD_IO_FLUSH, 0, 0, NULL, 0, file_cb, sub);
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
