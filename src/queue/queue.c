/*
 * One blkif ring served by one thread. Reading top to bottom follows a
 * request: consume_ring() copies and validates slots, start_waiting() gives
 * them bounce pages and pulls WRITE data in with one grant copy per batch,
 * submit_io() hands them to the image, io_done() collects completions, and
 * finish_done() pushes READ data out with one grant copy and answers.
 */
#include "queue/queue-int.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "common/log.h"

#define QLOG(q, level, fmt, ...) vd_log(level, "[%s] " fmt, (q)->cfg.name, ##__VA_ARGS__)
#define QLOG_RL(q, level, fmt, ...) \
	vd_log_ratelimited(level, "[%s] " fmt, (q)->cfg.name, ##__VA_ARGS__)

/* ---- bounce pages ---- */

static inline void *page_addr(struct vd_queue *q, uint32_t idx)
{
	return q->pool + (size_t)idx * VD_PAGE_SIZE;
}

static unsigned int pages_needed(const struct vd_qreq *qr)
{
	switch (qr->breq.op) {
	case BLKIF_OP_READ:
	case BLKIF_OP_WRITE:
	case BLKIF_OP_WRITE_BARRIER:
		return (unsigned int)VD_DIV_ROUND_UP(qr->breq.len_bytes, VD_PAGE_SIZE);
	default:
		return 0;
	}
}

/* Take n pages and describe them as the request's iovec. */
static void pages_get(struct vd_queue *q, struct vd_qreq *qr, unsigned int n)
{
	uint64_t left = qr->breq.len_bytes;

	assert(n <= q->nr_free_pages);
	qr->nr_pages = n;
	qr->io.iovcnt = 0;
	for (unsigned int i = 0; i < n; i++) {
		uint32_t idx = q->free_pages[--q->nr_free_pages];
		size_t len = (size_t)VD_MIN(left, (uint64_t)VD_PAGE_SIZE);
		struct iovec *last = qr->io.iovcnt ? &qr->iov[qr->io.iovcnt - 1] : NULL;

		qr->pages[i] = idx;
		left -= len;
		/* Adjacent pool pages make one iovec entry. */
		if (last && (uint8_t *)last->iov_base + last->iov_len == page_addr(q, idx) &&
		    last->iov_len % VD_PAGE_SIZE == 0) {
			last->iov_len += len;
		} else {
			qr->iov[qr->io.iovcnt].iov_base = page_addr(q, idx);
			qr->iov[qr->io.iovcnt].iov_len = len;
			qr->io.iovcnt++;
		}
	}
	qr->io.iov = qr->iov;
}

static void pages_put(struct vd_queue *q, struct vd_qreq *qr)
{
	for (unsigned int i = 0; i < qr->nr_pages; i++) {
		q->free_pages[q->nr_free_pages++] = qr->pages[i];
	}
	qr->nr_pages = 0;
}

/* ---- grant copy batches ---- */

static void gbatch_flush(struct vd_queue *q)
{
	struct vd_gbatch *b = q->gbatch;

	if (b->n == 0) {
		return;
	}
	int rc = vd_gnt_copy(q->gnt, b->ops, b->n);
	VD_STAT_ADD(q, grant_copy_calls, 1);
	VD_STAT_ADD(q, grant_copy_segs, b->n);
	for (unsigned int i = 0; i < b->n; i++) {
		if (rc < 0 || b->ops[i].status != GNTST_okay) {
			if (!b->owner[i]->grant_failed) {
				QLOG_RL(q, VD_LOG_WARN, "grant copy of ref %" PRIu32 " failed: %d",
					b->ops[i].gref, rc < 0 ? rc : b->ops[i].status);
			}
			b->owner[i]->grant_failed = true;
		}
	}
	b->n = 0;
}

static void gbatch_add(struct vd_queue *q, struct vd_qreq *qr, uint32_t gref,
		       uint16_t guest_offset_bytes, uint16_t len_bytes, void *local, bool to_guest)
{
	struct vd_gbatch *b = q->gbatch;

	if (b->n == VD_QUEUE_GCOPY_BATCH) {
		gbatch_flush(q);
	}
	b->ops[b->n] = (struct vd_gcopy){
		.local = local,
		.gref = gref,
		.domid = q->cfg.domid,
		.guest_offset_bytes = guest_offset_bytes,
		.len_bytes = len_bytes,
		.to_guest = to_guest,
	};
	b->owner[b->n] = qr;
	b->n++;
}

/*
 * The request's data is the concatenation of its segments; in the bounce
 * pages it is packed from byte 0, so a segment may straddle two pages.
 */
static void gbatch_add_data(struct vd_queue *q, struct vd_qreq *qr, bool to_guest)
{
	uint64_t pos = 0;

	for (unsigned int i = 0; i < qr->breq.nr_segs; i++) {
		const struct vd_blkif_seg *seg = &qr->breq.seg[i];
		uint32_t goff = (uint32_t)seg->first_sect * VD_SECTOR_SIZE;
		uint32_t len = ((uint32_t)seg->last_sect - seg->first_sect + 1) * VD_SECTOR_SIZE;

		while (len > 0) {
			uint32_t poff = (uint32_t)(pos % VD_PAGE_SIZE);
			uint32_t chunk = VD_MIN(len, VD_PAGE_SIZE - poff);
			void *local = (uint8_t *)page_addr(q, qr->pages[pos / VD_PAGE_SIZE]) + poff;

			gbatch_add(q, qr, seg->gref, (uint16_t)goff, (uint16_t)chunk, local,
				   to_guest);
			pos += chunk;
			goff += chunk;
			len -= chunk;
		}
	}
}

/* ---- responses ---- */

static void respond(struct vd_queue *q, struct vd_qreq *qr, int16_t status)
{
	vd_blkif_ring_put_rsp(&q->ring, qr->breq.id, qr->breq.op, status);
	VD_STAT_ADD(q, reqs, 1);
	if (status != BLKIF_RSP_OKAY) {
		VD_STAT_ADD(q, errors, 1);
	}
	pages_put(q, qr);
	qr->stage = QREQ_FREE;
	TAILQ_INSERT_HEAD(&q->free_reqs, qr, link);
	q->need_notify = true;
}

static void push_responses(struct vd_queue *q)
{
	if (!q->need_notify) {
		return;
	}
	q->need_notify = false;
	if (vd_blkif_ring_push_rsps(&q->ring)) {
		vd_evtchn_notify(q->evtchn);
		VD_STAT_ADD(q, notifies, 1);
	}
}

static void halt(struct vd_queue *q, int errnum, const char *why)
{
	if (q->halted) {
		return;
	}
	q->halted = true;
	QLOG(q, VD_LOG_ERR, "ring halted: %s", why);
	if (q->cfg.on_halt) {
		q->cfg.on_halt(q->cfg.on_halt_arg, q->cfg.index, errnum, why);
	}
}

/* ---- I/O ---- */

static void io_done(struct vd_io *io, int64_t result);

static void submit_stage(struct vd_queue *q, struct vd_qreq *qr, enum vd_io_op op)
{
	qr->io.op = op;
	if (op == VD_IO_FLUSH) {
		/* iov stays: a barrier's write stage follows its first flush. */
		qr->io.len_bytes = 0;
	} else {
		qr->io.offset_bytes = qr->breq.offset_bytes;
		qr->io.len_bytes = qr->breq.len_bytes;
	}
	vd_image_submit(q->iq, &qr->io);
}

static void submit_io(struct vd_queue *q, struct vd_qreq *qr)
{
	qr->stage = QREQ_IO;
	qr->io.cb = io_done;
	qr->io.cb_arg = q;
	q->nr_io++;
	switch (qr->breq.op) {
	case BLKIF_OP_READ:
		submit_stage(q, qr, VD_IO_READ);
		break;
	case BLKIF_OP_WRITE:
		submit_stage(q, qr, VD_IO_WRITE);
		break;
	case BLKIF_OP_FLUSH_DISKCACHE:
		submit_stage(q, qr, VD_IO_FLUSH);
		break;
	case BLKIF_OP_DISCARD:
		submit_stage(q, qr, VD_IO_DISCARD);
		break;
	case BLKIF_OP_WRITE_BARRIER:
		/* Everything before it has completed (start_waiting drained). */
		qr->barrier_step = 0;
		submit_stage(q, qr, VD_IO_FLUSH);
		break;
	default:
		assert(0 && "validated op");
	}
}

/* Image callback, from vd_ioctx_poll() on this thread. */
static void io_done(struct vd_io *io, int64_t result)
{
	struct vd_qreq *qr = vd_container_of(io, struct vd_qreq, io);
	struct vd_queue *q = io->cb_arg;

	/* A barrier is flush, write (if it carries data), flush: like FUA. */
	if (qr->breq.op == BLKIF_OP_WRITE_BARRIER && result >= 0 && qr->barrier_step < 2) {
		qr->barrier_step++;
		if (qr->barrier_step == 1 && qr->breq.nr_segs > 0) {
			submit_stage(q, qr, VD_IO_WRITE);
		} else {
			qr->barrier_step = 2;
			submit_stage(q, qr, VD_IO_FLUSH);
		}
		return;
	}
	q->nr_io--;
	qr->result = result;
	qr->stage = QREQ_DONE;
	if (qr->breq.op == BLKIF_OP_READ && result >= 0) {
		gbatch_add_data(q, qr, true);
	}
	TAILQ_INSERT_TAIL(&q->done, qr, link);
}

static void count_done(struct vd_queue *q, const struct vd_qreq *qr)
{
	switch (qr->breq.op) {
	case BLKIF_OP_READ:
		VD_STAT_ADD(q, reqs_read, 1);
		VD_STAT_ADD(q, bytes_read, qr->breq.len_bytes);
		break;
	case BLKIF_OP_WRITE:
	case BLKIF_OP_WRITE_BARRIER:
		VD_STAT_ADD(q, reqs_write, 1);
		VD_STAT_ADD(q, bytes_written, qr->breq.len_bytes);
		break;
	case BLKIF_OP_FLUSH_DISKCACHE:
		VD_STAT_ADD(q, reqs_flush, 1);
		break;
	case BLKIF_OP_DISCARD:
		VD_STAT_ADD(q, reqs_discard, 1);
		break;
	default:
		break;
	}
}

/* Push READ data to the guest in one grant copy, then answer everything. */
static bool finish_done(struct vd_queue *q)
{
	struct vd_qreq *qr;

	if (TAILQ_EMPTY(&q->done)) {
		return false;
	}
	gbatch_flush(q);
	while ((qr = TAILQ_FIRST(&q->done)) != NULL) {
		int16_t status;

		TAILQ_REMOVE(&q->done, qr, link);
		if (qr == q->barrier) {
			q->barrier = NULL;
		}
		if (qr->result < 0) {
			QLOG_RL(q, VD_LOG_WARN, "op %u at %" PRIu64 "+%" PRIu64 " failed: %s",
				qr->breq.op, qr->breq.offset_bytes, qr->breq.len_bytes,
				strerror((int)-qr->result));
		}
		status = qr->grant_failed ? BLKIF_RSP_ERROR
					  : vd_blkif_status_from_errno(qr->result);
		if (status == BLKIF_RSP_OKAY) {
			count_done(q, qr);
		}
		respond(q, qr, status);
	}
	return true;
}

/*
 * Give waiting requests their pages in arrival order, pull WRITE data in
 * with one grant copy, and submit. A WRITE_BARRIER waits for everything
 * before it to finish and holds back everything after it.
 */
static bool start_waiting(struct vd_queue *q)
{
	struct vd_qreq_list ready = TAILQ_HEAD_INITIALIZER(ready);
	struct vd_qreq *qr;
	bool any = false;

	while ((qr = TAILQ_FIRST(&q->waiting)) != NULL) {
		unsigned int n = pages_needed(qr);

		if (q->barrier != NULL) {
			break;
		}
		if (qr->breq.op == BLKIF_OP_WRITE_BARRIER) {
			if (q->nr_io > 0 || !TAILQ_EMPTY(&ready)) {
				break;
			}
			q->barrier = qr;
		}
		if (n > q->nr_free_pages) {
			VD_STAT_ADD(q, pool_stalls, 1);
			if (q->barrier == qr) {
				q->barrier = NULL;
			}
			break;
		}
		TAILQ_REMOVE(&q->waiting, qr, link);
		pages_get(q, qr, n);
		if (qr->breq.op == BLKIF_OP_WRITE || qr->breq.op == BLKIF_OP_WRITE_BARRIER) {
			gbatch_add_data(q, qr, false);
		}
		TAILQ_INSERT_TAIL(&ready, qr, link);
		any = true;
	}
	gbatch_flush(q);
	while ((qr = TAILQ_FIRST(&ready)) != NULL) {
		TAILQ_REMOVE(&ready, qr, link);
		if (qr->grant_failed) {
			if (qr == q->barrier) {
				q->barrier = NULL;
			}
			respond(q, qr, BLKIF_RSP_ERROR);
			continue;
		}
		submit_io(q, qr);
	}
	return any;
}

/* ---- the ring ---- */

static bool reject(struct vd_queue *q, struct vd_qreq *qr, int status, const char *why)
{
	if (status == BLKIF_RSP_OKAY) {
		return false;
	}
	VD_STAT_ADD(q, invalid, 1);
	QLOG_RL(q, VD_LOG_WARN, "bad request (op %u id 0x%" PRIx64 "): %s", qr->breq.wire_op,
		qr->breq.id, why);
	respond(q, qr, (int16_t)status);
	return true;
}

/*
 * Copy and validate every new slot; fetch indirect segment pages for the
 * whole batch in one grant copy; queue the valid requests.
 */
static bool consume_ring(struct vd_queue *q)
{
	struct vd_qreq_list fetched = TAILQ_HEAD_INITIALIZER(fetched);
	struct vd_qreq *qr;
	const char *why = NULL;
	int pending;
	int status;

	if (q->halted || q->stopping) {
		return false;
	}
	pending = vd_blkif_ring_pending(&q->ring);
	if (pending < 0) {
		halt(q, EPROTO, "request producer index beyond the ring size");
		return false;
	}
	if (pending == 0) {
		return false;
	}
	while (pending-- > 0 && (qr = TAILQ_FIRST(&q->free_reqs)) != NULL) {
		TAILQ_REMOVE(&q->free_reqs, qr, link);
		qr->grant_failed = false;
		qr->nr_pages = 0;
		qr->start_ns = 0;
		vd_blkif_ring_get(&q->ring, &qr->breq);
		status = vd_blkif_req_validate(&qr->breq, &q->cfg.limits, &why);
		if (reject(q, qr, status, why)) {
			continue;
		}
		if (qr->breq.indirect) {
			for (unsigned int i = 0; i < qr->breq.nr_indirect_pages; i++) {
				gbatch_add(q, qr, qr->breq.indirect_grefs[i], 0, VD_PAGE_SIZE,
					   (uint8_t *)qr->indirect_page + (size_t)i * VD_PAGE_SIZE,
					   false);
			}
		}
		TAILQ_INSERT_TAIL(&fetched, qr, link);
	}
	gbatch_flush(q);
	while ((qr = TAILQ_FIRST(&fetched)) != NULL) {
		TAILQ_REMOVE(&fetched, qr, link);
		if (qr->breq.indirect) {
			const void *pages[VD_BLKIF_MAX_INDIRECT_PAGES];

			if (qr->grant_failed) {
				reject(q, qr, BLKIF_RSP_ERROR, "indirect page grant copy failed");
				continue;
			}
			for (unsigned int i = 0; i < VD_BLKIF_MAX_INDIRECT_PAGES; i++) {
				pages[i] = (uint8_t *)qr->indirect_page + (size_t)i * VD_PAGE_SIZE;
			}
			vd_blkif_req_set_indirect_segs(&qr->breq, pages);
			status = vd_blkif_req_validate(&qr->breq, &q->cfg.limits, &why);
			if (reject(q, qr, status, why)) {
				continue;
			}
		}
		qr->stage = QREQ_WAITING;
		TAILQ_INSERT_TAIL(&q->waiting, qr, link);
	}
	return true;
}

/* ---- messages ---- */

int vd_queue_send_msg(struct vd_queue *q, vd_queue_msg_fn fn, void *arg)
{
	return vd_ioctx_send_msg(q->ioctx, fn, arg);
}

static void on_evtchn(void *arg, int revents)
{
	struct vd_queue *q = arg;

	/* Unmask now: the ring is read after this, and re-checked before sleep. */
	vd_evtchn_ack(q->evtchn);
}

static void msg_stop(void *arg)
{
	struct vd_queue *q = arg;

	q->stopping = true;
}

/* ---- the loop ---- */

bool vd_queue_poll(struct vd_queue *q)
{
	bool work = vd_ioctx_poll(q->ioctx) > 0;

	work |= finish_done(q);
	work |= consume_ring(q);
	work |= start_waiting(q);
	push_responses(q);
	if (work) {
		VD_STAT_ADD(q, wakeups, 1);
	}
	return work;
}

static bool drained(const struct vd_queue *q)
{
	return q->nr_io == 0 && TAILQ_EMPTY(&q->waiting) && TAILQ_EMPTY(&q->done);
}

static void *queue_thread(void *arg)
{
	struct vd_queue *q = arg;

	for (;;) {
		if (vd_queue_poll(q)) {
			continue;
		}
		if (q->stopping && drained(q)) {
			break;
		}
		if (!q->halted && !q->stopping) {
			int r = vd_blkif_ring_final_check(&q->ring);

			if (r > 0) {
				continue;
			}
			if (r < 0) {
				halt(q, EPROTO, "request producer index beyond the ring size");
			}
		}
		vd_ioctx_wait(q->ioctx, 0);
	}
	push_responses(q);
	return NULL;
}

/* ---- lifecycle ---- */

static void *alloc_pages(size_t nr_pages)
{
	void *p = mmap(NULL, nr_pages * VD_PAGE_SIZE, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	return p == MAP_FAILED ? NULL : p;
}

static void free_pages(void *p, size_t nr_pages)
{
	if (p != NULL) {
		munmap(p, nr_pages * VD_PAGE_SIZE);
	}
}

static int alloc_reqs(struct vd_queue *q, struct vd_err *err)
{
	size_t ctx_size = VD_ALIGN_UP(vd_image_io_ctx_size(q->cfg.image), (size_t)16);
	uint32_t want = q->cfg.max_pool_pages ? q->cfg.max_pool_pages : VD_QUEUE_DEF_POOL_PAGES;

	q->nr_reqs = q->ring.nr_ents;
	q->reqs = calloc(q->nr_reqs, sizeof(*q->reqs));
	q->indirect_pages = alloc_pages((size_t)q->nr_reqs * VD_BLKIF_MAX_INDIRECT_PAGES);
	q->driver_ctx = ctx_size ? calloc(q->nr_reqs, ctx_size) : NULL;
	/* Enough for every slot at the direct maximum, within [MIN, want]. */
	q->nr_pool_pages = VD_MAX((uint32_t)VD_QUEUE_MIN_POOL_PAGES,
				  VD_MIN(want, q->nr_reqs * BLKIF_MAX_SEGMENTS_PER_REQUEST));
	q->pool = alloc_pages(q->nr_pool_pages);
	q->free_pages = calloc(q->nr_pool_pages, sizeof(*q->free_pages));
	q->gbatch = calloc(1, sizeof(*q->gbatch));
	if (!q->reqs || !q->indirect_pages || (ctx_size && !q->driver_ctx) || !q->pool ||
	    !q->free_pages || !q->gbatch) {
		return vd_err_set(err, ENOMEM, "queue %u: allocating the request pool", q->cfg.index);
	}
	for (uint32_t i = 0; i < q->nr_pool_pages; i++) {
		q->free_pages[i] = q->nr_pool_pages - 1 - i;
	}
	q->nr_free_pages = q->nr_pool_pages;
	for (unsigned int i = 0; i < q->nr_reqs; i++) {
		struct vd_qreq *qr = &q->reqs[i];

		qr->pages = calloc(VD_BLKIF_MAX_SEGS, sizeof(*qr->pages));
		qr->iov = calloc(VD_BLKIF_MAX_SEGS, sizeof(*qr->iov));
		if (!qr->pages || !qr->iov) {
			return vd_err_set(err, ENOMEM, "queue %u: allocating requests",
					  q->cfg.index);
		}
		qr->indirect_page = (uint8_t *)q->indirect_pages +
				    (size_t)i * VD_BLKIF_MAX_INDIRECT_PAGES * VD_PAGE_SIZE;
		qr->io.driver_ctx = ctx_size ? (uint8_t *)q->driver_ctx + i * ctx_size : NULL;
		TAILQ_INSERT_TAIL(&q->free_reqs, qr, link);
	}
	return 0;
}

static int map_ring(struct vd_queue *q, struct vd_err *err)
{
	int status = GNTST_okay;
	int rc;

	q->sring = vd_gnt_map(q->gnt, q->cfg.domid, q->ring_refs, q->cfg.nr_ring_pages, true,
			      &status);
	if (q->sring == NULL) {
		return vd_err_set(err, EFAULT, "queue %u: mapping %u ring page(s) (grant status %d)",
				  q->cfg.index, q->cfg.nr_ring_pages, status);
	}
	rc = vd_blkif_ring_init(&q->ring, q->cfg.abi, q->sring, q->cfg.nr_ring_pages);
	if (rc < 0) {
		return vd_err_set(err, -rc, "queue %u: ring init", q->cfg.index);
	}
	return 0;
}

static int bind_evtchn(struct vd_queue *q, struct vd_err *err)
{
	uint32_t local_port;
	int rc = vd_evtchn_open(q->cfg.transport, &q->evtchn);

	if (rc < 0) {
		return vd_err_set(err, -rc, "queue %u: opening the event channel", q->cfg.index);
	}
	rc = vd_evtchn_bind(q->evtchn, q->cfg.domid, q->cfg.remote_port, &local_port);
	if (rc < 0) {
		return vd_err_set(err, -rc, "queue %u: binding event channel %" PRIu32 " of d%u",
				  q->cfg.index, q->cfg.remote_port, q->cfg.domid);
	}
	return 0;
}

static int setup_reactor(struct vd_queue *q, struct vd_err *err)
{
	int rc = vd_ioctx_create(VD_MAX(q->ring.nr_ents * 2, 64u), &q->ioctx, err);

	if (rc < 0) {
		return rc;
	}
	/* Created here, used only by the queue thread once it starts. */
	rc = vd_image_queue_create(q->cfg.image, q->ioctx, &q->iq);
	if (rc < 0) {
		return vd_err_set(err, -rc, "queue %u: image queue", q->cfg.index);
	}
	rc = vd_ioctx_msgs_enable(q->ioctx);
	if (rc == 0) {
		rc = vd_ioctx_watch_fd(q->ioctx, vd_evtchn_fd(q->evtchn), on_evtchn, q);
	}
	if (rc < 0) {
		return vd_err_set(err, -rc, "queue %u: watching fds", q->cfg.index);
	}
	return 0;
}

int vd_queue_create(const struct vd_queue_config *cfg, struct vd_queue **out,
		    struct vd_err *err)
{
	struct vd_queue *q;
	int rc;

	if (cfg->nr_ring_pages == 0 || cfg->nr_ring_pages > VD_BLKIF_MAX_RING_PAGES ||
	    (cfg->nr_ring_pages & (cfg->nr_ring_pages - 1)) != 0) {
		return vd_err_set(err, EINVAL, "queue %u: %u ring pages", cfg->index,
				  cfg->nr_ring_pages);
	}
	q = calloc(1, sizeof(*q));
	if (q == NULL) {
		return vd_err_set(err, ENOMEM, "queue %u", cfg->index);
	}
	q->cfg = *cfg;
	memcpy(q->ring_refs, cfg->ring_refs, cfg->nr_ring_pages * sizeof(q->ring_refs[0]));
	q->cfg.ring_refs = q->ring_refs;
	TAILQ_INIT(&q->free_reqs);
	TAILQ_INIT(&q->waiting);
	TAILQ_INIT(&q->done);

	rc = vd_gnt_open(cfg->transport, &q->gnt);
	if (rc < 0) {
		vd_err_set(err, -rc, "queue %u: opening grant handle", cfg->index);
		goto err_destroy;
	}
	rc = map_ring(q, err);
	if (rc == 0) {
		rc = bind_evtchn(q, err);
	}
	if (rc == 0) {
		rc = alloc_reqs(q, err);
	}
	if (rc == 0) {
		rc = setup_reactor(q, err);
	}
	if (rc < 0) {
		goto err_destroy;
	}
	*out = q;
	return 0;

err_destroy:
	vd_queue_destroy(q);
	return rc;
}

int vd_queue_start(struct vd_queue *q, struct vd_err *err)
{
	int rc = pthread_create(&q->thread, NULL, queue_thread, q);

	if (rc != 0) {
		return vd_err_set(err, rc, "queue %u: starting its thread", q->cfg.index);
	}
	q->thread_started = true;
	return 0;
}

void vd_queue_stop(struct vd_queue *q)
{
	if (!q->thread_started) {
		return;
	}
	while (vd_queue_send_msg(q, msg_stop, q) == -EAGAIN) {
		usleep(1000);
	}
	pthread_join(q->thread, NULL);
	q->thread_started = false;
}

void vd_queue_destroy(struct vd_queue *q)
{
	if (q == NULL) {
		return;
	}
	assert(!q->thread_started);
	if (q->ioctx != NULL) {
		/* Answer nothing more, but let the image finish what it has. */
		while (q->nr_io > 0 && vd_ioctx_wait(q->ioctx, 100000000ull) >= 0) {
			finish_done(q);
		}
	}
	if (q->iq != NULL) {
		vd_image_queue_destroy(q->iq);
	}
	if (q->ioctx != NULL) {
		vd_ioctx_destroy(q->ioctx);
	}
	if (q->evtchn != NULL) {
		vd_evtchn_close(q->evtchn);
	}
	if (q->sring != NULL) {
		vd_gnt_unmap(q->gnt, q->sring, q->cfg.nr_ring_pages);
	}
	if (q->gnt != NULL) {
		vd_gnt_close(q->gnt);
	}
	if (q->reqs != NULL) {
		for (unsigned int i = 0; i < q->nr_reqs; i++) {
			free(q->reqs[i].pages);
			free(q->reqs[i].iov);
		}
	}
	free(q->reqs);
	free_pages(q->indirect_pages, (size_t)q->nr_reqs * VD_BLKIF_MAX_INDIRECT_PAGES);
	free_pages(q->pool, q->nr_pool_pages);
	free(q->free_pages);
	free(q->driver_ctx);
	free(q->gbatch);
	free(q);
}

void vd_queue_get_stats(struct vd_queue *q, struct vd_queue_stats *out)
{
	const uint64_t *src = (const uint64_t *)&q->stats;
	uint64_t *dst = (uint64_t *)out;

	static_assert(sizeof(*out) % sizeof(uint64_t) == 0, "stats are u64 counters");
	for (size_t i = 0; i < sizeof(*out) / sizeof(uint64_t); i++) {
		dst[i] = __atomic_load_n(&src[i], __ATOMIC_RELAXED);
	}
}
