/*
 * One blkif ring served by one thread. Reading top to bottom follows a
 * request: consume_ring() copies and validates slots, start_waiting() gives
 * them bounce pages and pulls WRITE data in with one grant copy per batch,
 * submit_io() hands them to the image, io_done() collects completions, and
 * finish_done() pushes READ data out with one grant copy and answers.
 * queue_thread() at the bottom decides between another turn, polling and
 * sleeping (adaptive polling, as tapdisk3 does it).
 */
#include "queue/queue-int.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
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
	case BLKIF_OP_FLUSH_DISKCACHE: /* a flush may carry data: len_bytes 0 if not */
		return (unsigned int)VD_DIV_ROUND_UP(qr->breq.len_bytes, VD_PAGE_SIZE);
	default:
		return 0;
	}
}

/* Requests whose data goes to the disk. */
static bool writes_data(const struct vd_qreq *qr)
{
	return qr->breq.op != BLKIF_OP_READ && qr->breq.op != BLKIF_OP_DISCARD &&
	       qr->breq.len_bytes > 0;
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

/* ---- persistent grants ---- */

static inline uint32_t pg_bucket(const struct vd_queue *q, uint32_t gref)
{
	return (gref * 2654435761u) & q->pg_mask;
}

static struct vd_pgrant *pg_find(struct vd_queue *q, uint32_t gref)
{
	struct vd_pgrant *pg = q->pg_hash[pg_bucket(q, gref)];

	while (pg != NULL && pg->gref != gref) {
		pg = pg->hnext;
	}
	return pg;
}

static void pg_unhash(struct vd_queue *q, struct vd_pgrant *pg)
{
	struct vd_pgrant **pp = &q->pg_hash[pg_bucket(q, pg->gref)];

	while (*pp != pg) {
		pp = &(*pp)->hnext;
	}
	*pp = pg->hnext;
	pg->hnext = NULL;
}

/*
 * A free entry: an unmapped one, or the least recently used unused mapping
 * if it has been idle long enough (so that a working set larger than the
 * set does not turn every request into a map and an unmap; the excess is
 * copied instead, as blkback does).
 */
static struct vd_pgrant *pg_alloc(struct vd_queue *q)
{
	struct vd_pgrant *pg = TAILQ_FIRST(&q->pg_free);

	if (pg != NULL) {
		TAILQ_REMOVE(&q->pg_free, pg, lru);
		return pg;
	}
	pg = TAILQ_FIRST(&q->pg_lru);
	if (pg == NULL || pg->last_ns + VD_QUEUE_PGRANT_IDLE_NS > q->now_ns) {
		VD_STAT_ADD(q, pgrant_full, 1);
		return NULL;
	}
	TAILQ_REMOVE(&q->pg_lru, pg, lru);
	pg_unhash(q, pg);
	(void)vd_gnt_unmap(q->gnt, pg->addr, 1);
	pg->addr = NULL;
	VD_STAT_ADD(q, pgrant_evictions, 1);
	return pg;
}

/*
 * The persistent mapping of gref, held for the caller (pg_put releases it),
 * or NULL: not negotiated, the set is full, or the map was refused (a
 * read-only grant, not granted to us): the caller copies instead.
 */
static struct vd_pgrant *pg_get(struct vd_queue *q, uint32_t gref)
{
	struct vd_pgrant *pg;
	int status = GNTST_okay;

	if (q->nr_pgrants == 0) {
		return NULL;
	}
	pg = pg_find(q, gref);
	if (pg != NULL) {
		if (pg->users++ == 0) {
			TAILQ_REMOVE(&q->pg_lru, pg, lru);
		}
		pg->last_ns = q->now_ns;
		VD_STAT_ADD(q, pgrant_hits, 1);
		return pg;
	}
	pg = pg_alloc(q);
	if (pg == NULL) {
		return NULL;
	}
	/* Writable, as blkback maps persistent grants: reads land in them. */
	pg->addr = vd_gnt_map(q->gnt, q->cfg.domid, &gref, 1, true, &status);
	if (pg->addr == NULL) {
		TAILQ_INSERT_HEAD(&q->pg_free, pg, lru);
		VD_STAT_ADD(q, pgrant_map_fails, 1);
		QLOG_RL(q, VD_LOG_WARN, "persistent map of ref %" PRIu32 " refused (%d): copying",
			gref, status);
		return NULL;
	}
	VD_STAT_ADD(q, pgrant_maps, 1);
	pg->gref = gref;
	pg->users = 1;
	pg->last_ns = q->now_ns;
	pg->hnext = q->pg_hash[pg_bucket(q, gref)];
	q->pg_hash[pg_bucket(q, gref)] = pg;
	return pg;
}

static void pg_put(struct vd_queue *q, struct vd_pgrant *pg)
{
	assert(pg->users > 0);
	if (--pg->users == 0) {
		TAILQ_INSERT_TAIL(&q->pg_lru, pg, lru);
	}
}

/* Take the persistent grants of every data segment (NULL where none). */
static void pg_get_segs(struct vd_queue *q, struct vd_qreq *qr)
{
	for (unsigned int i = 0; i < qr->breq.nr_segs; i++) {
		qr->pg[i] = pg_get(q, qr->breq.seg[i].gref);
	}
	qr->nr_pg = qr->breq.nr_segs;
}

static void pg_put_segs(struct vd_queue *q, struct vd_qreq *qr)
{
	for (unsigned int i = 0; i < qr->nr_pg; i++) {
		if (qr->pg[i] != NULL) {
			pg_put(q, qr->pg[i]);
			qr->pg[i] = NULL;
		}
	}
	qr->nr_pg = 0;
}

/*
 * Zero-copy: every segment is mapped and whole 4 KiB-aligned pieces (what
 * O_DIRECT needs on any file; blkfront sends whole pages). The iov then
 * points into the guest's pages: READ data lands there, WRITE data leaves
 * from there (the guest may change it in flight and only hurts itself, as
 * with blkback; nothing we check depends on it).
 */
static bool zero_copy_ok(const struct vd_qreq *qr)
{
	for (unsigned int i = 0; i < qr->breq.nr_segs; i++) {
		const struct vd_blkif_seg *seg = &qr->breq.seg[i];

		if (qr->pg[i] == NULL || seg->first_sect != 0 || seg->last_sect != 7) {
			return false;
		}
	}
	return qr->breq.nr_segs > 0;
}

static void zero_copy_iov(struct vd_qreq *qr)
{
	qr->io.iovcnt = 0;
	for (unsigned int i = 0; i < qr->breq.nr_segs; i++) {
		uint8_t *p = qr->pg[i]->addr;
		struct iovec *last = qr->io.iovcnt ? &qr->iov[qr->io.iovcnt - 1] : NULL;

		if (last && (uint8_t *)last->iov_base + last->iov_len == p) {
			last->iov_len += VD_PAGE_SIZE;
		} else {
			qr->iov[qr->io.iovcnt].iov_base = p;
			qr->iov[qr->io.iovcnt].iov_len = VD_PAGE_SIZE;
			qr->io.iovcnt++;
		}
	}
	qr->io.iov = qr->iov;
	qr->zero_copy = true;
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
 * Move the request's data between the guest and the bounce pages: memcpy
 * for persistently mapped segments, the batched grant copy for the rest.
 * The data is the concatenation of the segments; in the bounce pages it is
 * packed from byte 0, so a segment may straddle two pages.
 */
static void move_data(struct vd_queue *q, struct vd_qreq *qr, bool to_guest)
{
	uint64_t pos = 0;

	for (unsigned int i = 0; i < qr->breq.nr_segs; i++) {
		const struct vd_blkif_seg *seg = &qr->breq.seg[i];
		const struct vd_pgrant *pg = i < qr->nr_pg ? qr->pg[i] : NULL;
		uint32_t goff = (uint32_t)seg->first_sect * VD_SECTOR_SIZE;
		uint32_t len = ((uint32_t)seg->last_sect - seg->first_sect + 1) * VD_SECTOR_SIZE;

		while (len > 0) {
			uint32_t poff = (uint32_t)(pos % VD_PAGE_SIZE);
			uint32_t chunk = VD_MIN(len, VD_PAGE_SIZE - poff);
			uint8_t *local =
				(uint8_t *)page_addr(q, qr->pages[pos / VD_PAGE_SIZE]) + poff;

			if (pg != NULL && to_guest) {
				memcpy((uint8_t *)pg->addr + goff, local, chunk);
			} else if (pg != NULL) {
				memcpy(local, (const uint8_t *)pg->addr + goff, chunk);
			} else {
				gbatch_add(q, qr, seg->gref, (uint16_t)goff, (uint16_t)chunk, local,
					   to_guest);
			}
			pos += chunk;
			goff += chunk;
			len -= chunk;
		}
	}
}

/* ---- responses ---- */

static void respond(struct vd_queue *q, struct vd_qreq *qr, int16_t status)
{
	unsigned int lat = vd_queue_lat_bucket((q->now_ns - qr->start_ns) / 1000u);

	vd_blkif_ring_put_rsp(&q->ring, qr->breq.id, qr->breq.op, status);
	VD_STAT_ADD(q, reqs, 1);
	VD_STAT_ADD(q, lat_hist[lat], 1);
	if (status != BLKIF_RSP_OKAY) {
		VD_STAT_ADD(q, errors, 1);
	}
	pages_put(q, qr);
	pg_put_segs(q, qr);
	qr->zero_copy = false;
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
	case BLKIF_OP_DISCARD:
		submit_stage(q, qr, VD_IO_DISCARD);
		break;
	case BLKIF_OP_FLUSH_DISKCACHE:
	case BLKIF_OP_WRITE_BARRIER:
		/* A barrier: everything before it has completed (start_waiting drained). */
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

	/*
	 * A barrier, and a flush that carries data (blkback: a write with
	 * REQ_PREFLUSH; blkfront sends FUA writes so), are flush, write, flush.
	 * A flush without data is one flush.
	 */
	if (qr->breq.op == BLKIF_OP_WRITE_BARRIER ||
	    (qr->breq.op == BLKIF_OP_FLUSH_DISKCACHE && qr->breq.len_bytes > 0)) {
		if (result >= 0 && qr->barrier_step < 2) {
			qr->barrier_step++;
			if (qr->barrier_step == 1 && qr->breq.len_bytes > 0) {
				submit_stage(q, qr, VD_IO_WRITE);
			} else {
				qr->barrier_step = 2;
				submit_stage(q, qr, VD_IO_FLUSH);
			}
			return;
		}
	}
	q->nr_io--;
	if (qr->zero_copy && result == -EFAULT) {
		/*
		 * The kernel could not reach the mapped guest pages for O_DIRECT
		 * (a grant mapping it cannot pin): go through the bounce pages,
		 * now and from now on.
		 */
		if (q->zero_copy) {
			QLOG(q, VD_LOG_WARN, "zero-copy I/O faulted: using bounce pages");
		}
		q->zero_copy = false;
		qr->zero_copy = false;
		pg_put_segs(q, qr);
		if (qr == q->barrier) {
			q->barrier = NULL;
		}
		qr->stage = QREQ_WAITING;
		TAILQ_INSERT_HEAD(&q->waiting, qr, link);
		return;
	}
	qr->result = result;
	qr->stage = QREQ_DONE;
	if (qr->breq.op == BLKIF_OP_READ && result >= 0 && !qr->zero_copy) {
		move_data(q, qr, true);
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
		VD_STAT_ADD(q, bytes_written, qr->breq.len_bytes);
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
		status = (int16_t)(qr->grant_failed ? BLKIF_RSP_ERROR
						    : vd_blkif_status_from_errno(qr->result));
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
		if (n > 0 && q->nr_pgrants > 0) {
			pg_get_segs(q, qr);
			if (q->zero_copy && zero_copy_ok(qr)) {
				n = 0;
				zero_copy_iov(qr);
				VD_STAT_ADD(q, zero_copy_reqs, 1);
			}
		}
		if (n > q->nr_free_pages) {
			VD_STAT_ADD(q, pool_stalls, 1);
			pg_put_segs(q, qr);
			if (q->barrier == qr) {
				q->barrier = NULL;
			}
			break;
		}
		TAILQ_REMOVE(&q->waiting, qr, link);
		if (!qr->zero_copy) {
			pages_get(q, qr, n);
			if (writes_data(qr)) {
				move_data(q, qr, false);
			}
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

static void count_batch(struct vd_queue *q, unsigned int n)
{
	unsigned int b = 0;

	while ((n >> (b + 1)) != 0 && b + 1 < VD_QUEUE_BATCH_BUCKETS) {
		b++;
	}
	VD_STAT_ADD(q, batches, 1);
	VD_STAT_ADD(q, batch_reqs, n);
	VD_STAT_ADD(q, batch_hist[b], 1);
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
	count_batch(q, (unsigned int)pending);
	while (pending-- > 0 && (qr = TAILQ_FIRST(&q->free_reqs)) != NULL) {
		TAILQ_REMOVE(&q->free_reqs, qr, link);
		qr->grant_failed = false;
		qr->zero_copy = false;
		qr->nr_pages = 0;
		qr->nr_pg = 0;
		qr->start_ns = q->now_ns;
		vd_blkif_ring_get(&q->ring, &qr->breq);
		status = vd_blkif_req_validate(&qr->breq, &q->cfg.limits, &why);
		if (reject(q, qr, status, why)) {
			continue;
		}
		for (unsigned int i = 0; qr->breq.indirect && i < qr->breq.nr_indirect_pages; i++) {
			/* blkfront grants indirect pages persistently too */
			uint8_t *local = (uint8_t *)qr->indirect_page + (size_t)i * VD_PAGE_SIZE;
			struct vd_pgrant *pg = pg_get(q, qr->breq.indirect_grefs[i]);

			if (pg != NULL) {
				memcpy(local, pg->addr, VD_PAGE_SIZE);
				pg_put(q, pg);
			} else {
				gbatch_add(q, qr, qr->breq.indirect_grefs[i], 0, VD_PAGE_SIZE,
					   local, false);
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

struct vd_ioctx *vd_queue_ioctx(struct vd_queue *q)
{
	return q->ioctx;
}

struct vd_image_queue *vd_queue_image_queue(struct vd_queue *q)
{
	return q->iq;
}

static void on_evtchn(void *arg, int revents)
{
	struct vd_queue *q = arg;

	/* Unmask now: the ring is read after this, and re-checked before sleep. */
	vd_evtchn_ack(q->evtchn);
	VD_STAT_ADD(q, evtchn_kicks, 1);
}

static void msg_stop(void *arg)
{
	struct vd_queue *q = arg;

	q->stopping = true;
}

/* ---- the loop ---- */

bool vd_queue_poll(struct vd_queue *q)
{
	bool work;

	q->now_ns = vd_now_ns();
	work = vd_ioctx_poll(q->ioctx) > 0;
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

/* ---- adaptive polling ---- */

static inline void cpu_relax(void)
{
	vd_barrier();
}

/* Read the "cpu" line of /proc/stat: idle (idle + iowait) and total ticks. */
static bool read_cpu_ticks(int fd, uint64_t *idle, uint64_t *total)
{
	char buf[256];
	uint64_t v[8] = { 0 };
	char *p = buf, *end;
	ssize_t n = pread(fd, buf, sizeof(buf) - 1, 0);

	if (n <= 4 || strncmp(buf, "cpu ", 4) != 0) {
		return false;
	}
	buf[n] = '\0';
	p += 4;
	*total = 0;
	for (unsigned int i = 0; i < VD_ARRAY_SIZE(v); i++) {
		v[i] = strtoull(p, &end, 10);
		if (end == p) {
			break;
		}
		*total += v[i];
		p = end;
	}
	*idle = v[3] + v[4];
	return *total != 0;
}

/*
 * Is the host idle enough to poll? Sampled every 10 ms at most. The time
 * this queue spent in empty polls counts as idle: it would be idle otherwise,
 * and counting it as busy would switch polling off because of itself.
 */
static bool host_idle_ok(struct vd_queue *q, uint32_t idle_pct)
{
	struct vd_qpoll *p = &q->poll;
	uint64_t idle, total, wall;

	if (idle_pct == 0 || p->stat_fd < 0) {
		return true;
	}
	wall = q->now_ns - p->sample_ns;
	if (wall < 10000000ull) {
		return p->idle_ok;
	}
	if (!read_cpu_ticks(p->stat_fd, &idle, &total)) {
		return p->idle_ok; /* keep the last verdict; never store garbage */
	}
	if (total > p->total_ticks && p->sample_ns != 0) {
		double frac = (double)(idle - p->idle_ticks) / (double)(total - p->total_ticks);

		frac += (double)p->spin_ns / ((double)wall * p->nr_cpus);
		p->idle_ok = frac * 100.0 >= (double)idle_pct;
	}
	p->idle_ticks = idle;
	p->total_ticks = total;
	p->sample_ns = q->now_ns;
	p->spin_ns = 0;
	return p->idle_ok;
}

/*
 * After a turn that found nothing: keep polling? Only inside the window
 * that the last activity opened, and while the host has idle CPU. While we
 * poll, req_event stays where it was, so the guest does not kick us.
 */
static bool keep_polling(struct vd_queue *q)
{
	struct vd_qpoll *p = &q->poll;
	uint32_t idle_pct = __atomic_load_n(&q->poll_idle_pct_set, __ATOMIC_RELAXED);

	if (p->window_end_ns == 0 || q->now_ns >= p->window_end_ns || q->halted || q->stopping) {
		p->window_end_ns = 0;
		return false;
	}
	if (!host_idle_ok(q, idle_pct)) {
		VD_STAT_ADD(q, poll_idle_stops, 1);
		p->window_end_ns = 0;
		return false;
	}
	VD_STAT_ADD(q, polls_empty, 1);
	if (p->last_turn_ns != 0) {
		p->spin_ns += q->now_ns - p->last_turn_ns;
	}
	p->last_turn_ns = q->now_ns;
	cpu_relax();
	return true;
}

/* Activity: (re)open the polling window, if polling is on. */
static void poll_rearm(struct vd_queue *q)
{
	uint32_t us = __atomic_load_n(&q->poll_us_set, __ATOMIC_RELAXED);

	if (us == 0) {
		q->poll.window_end_ns = 0;
		return;
	}
	if (q->poll.window_end_ns == 0) {
		VD_STAT_ADD(q, poll_windows, 1);
	}
	q->poll.window_end_ns = q->now_ns + (uint64_t)us * 1000u;
	q->poll.last_turn_ns = 0;
}

void vd_queue_set_polling(struct vd_queue *q, uint32_t poll_us, uint32_t idle_pct)
{
	__atomic_store_n(&q->poll_us_set, VD_MIN(poll_us, (uint32_t)VD_QUEUE_MAX_POLL_US),
			 __ATOMIC_RELAXED);
	__atomic_store_n(&q->poll_idle_pct_set, VD_MIN(idle_pct, 100u), __ATOMIC_RELAXED);
}

/* ---- the loop ---- */

static void *queue_thread(void *arg)
{
	struct vd_queue *q = arg;

	for (;;) {
		if (vd_queue_poll(q)) {
			poll_rearm(q);
			continue;
		}
		if (q->stopping && drained(q)) {
			break;
		}
		if (keep_polling(q)) {
			continue;
		}
		/* Going to sleep: re-arm req_event, then look at the ring once more. */
		if (!q->halted && !q->stopping) {
			int r = vd_blkif_ring_final_check(&q->ring);

			if (r > 0) {
				continue;
			}
			if (r < 0) {
				halt(q, EPROTO, "request producer index beyond the ring size");
			}
		}
		VD_STAT_ADD(q, sleeps, 1);
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
		return vd_err_set(err, ENOMEM, "queue %u: allocating the request pool",
				  q->cfg.index);
	}
	for (uint32_t i = 0; i < q->nr_pool_pages; i++) {
		q->free_pages[i] = q->nr_pool_pages - 1 - i;
	}
	q->nr_free_pages = q->nr_pool_pages;
	for (unsigned int i = 0; i < q->nr_reqs; i++) {
		struct vd_qreq *qr = &q->reqs[i];

		qr->pages = calloc(VD_BLKIF_MAX_SEGS, sizeof(*qr->pages));
		qr->iov = calloc(VD_BLKIF_MAX_SEGS, sizeof(*qr->iov));
		/* an array of pointers, as meant */
		qr->pg = calloc(VD_BLKIF_MAX_SEGS,
				sizeof(*qr->pg)); /* NOLINT(bugprone-sizeof-expression) */
		if (!qr->pages || !qr->iov || !qr->pg) {
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

/* The persistent grant set, sized once: no allocation per request. */
static int alloc_pgrants(struct vd_queue *q, struct vd_err *err)
{
	uint32_t n = q->cfg.max_persistent_grants ? q->cfg.max_persistent_grants
						  : VD_QUEUE_DEF_MAX_PGRANTS;
	uint32_t buckets = 1;

	TAILQ_INIT(&q->pg_free);
	TAILQ_INIT(&q->pg_lru);
	if (!q->cfg.persistent) {
		return 0;
	}
	n = VD_MIN(n, (uint32_t)VD_QUEUE_MAX_PGRANTS);
	while (buckets < 2 * n) {
		buckets <<= 1;
	}
	q->pgrants = calloc(n, sizeof(*q->pgrants));
	/* chain heads: an array of pointers, as meant */
	q->pg_hash = calloc(buckets, sizeof(*q->pg_hash)); /* NOLINT(bugprone-sizeof-expression) */
	if (q->pgrants == NULL || q->pg_hash == NULL) {
		return vd_err_set(err, ENOMEM, "queue %u: %" PRIu32 " persistent grants",
				  q->cfg.index, n);
	}
	q->nr_pgrants = n;
	q->pg_mask = buckets - 1;
	for (uint32_t i = 0; i < n; i++) {
		TAILQ_INSERT_TAIL(&q->pg_free, &q->pgrants[i], lru);
	}
	q->zero_copy = q->cfg.zero_copy;
	return 0;
}

/* Unmap every persistent grant (disconnect: no request holds one). */
static void free_pgrants(struct vd_queue *q)
{
	for (uint32_t i = 0; i < q->nr_pgrants; i++) {
		if (q->pgrants[i].addr != NULL) {
			(void)vd_gnt_unmap(q->gnt, q->pgrants[i].addr, 1);
			q->pgrants[i].addr = NULL;
		}
	}
	q->nr_pgrants = 0;
	free(q->pgrants);
	free(q->pg_hash);
	q->pgrants = NULL;
	q->pg_hash = NULL;
}

static int map_ring(struct vd_queue *q, struct vd_err *err)
{
	int status = GNTST_okay;
	int rc;

	q->sring =
		vd_gnt_map(q->gnt, q->cfg.domid, q->ring_refs, q->cfg.nr_ring_pages, true, &status);
	if (q->sring == NULL) {
		return vd_err_set(err, EFAULT,
				  "queue %u: mapping %u ring page(s) (grant status %d)",
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
	if (!q->cfg.no_io_fixed) {
		/*
		 * READ_FIXED/WRITE_FIXED for bounce-page I/O, fixed files for the
		 * image's files: saves pinning pages and a file lookup per I/O.
		 * Optional: without them (memlock limit, old kernel) plain I/O.
		 */
		rc = vd_ioctx_register_buffers(q->ioctx, q->pool,
					       (size_t)q->nr_pool_pages * VD_PAGE_SIZE);
		if (rc < 0) {
			QLOG(q, VD_LOG_INFO, "io_uring registered buffers unavailable: %s",
			     strerror(-rc));
		}
		rc = vd_ioctx_register_files(q->ioctx, VD_QUEUE_FIXED_FILES);
		if (rc < 0) {
			QLOG(q, VD_LOG_INFO, "io_uring registered files unavailable: %s",
			     strerror(-rc));
		}
	}
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

int vd_queue_create(const struct vd_queue_config *cfg, struct vd_queue **out, struct vd_err *err)
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
	vd_queue_set_polling(q, cfg->poll_us, cfg->poll_idle_pct);
	q->poll.stat_fd = open("/proc/stat", O_RDONLY | O_CLOEXEC);
	q->poll.nr_cpus = (unsigned int)VD_MAX(sysconf(_SC_NPROCESSORS_ONLN), 1L);
	q->poll.idle_ok = true;
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
		rc = alloc_pgrants(q, err);
	}
	if (rc == 0) {
		rc = setup_reactor(q, err);
	}
	if (rc < 0) {
		goto err_destroy;
	}
	if (cfg->index == 0) {
		QLOG(q, VD_LOG_INFO,
		     "persistent grants %s (up to %" PRIu32 "), zero-copy %s, io fixed %s",
		     q->nr_pgrants ? "on" : "off", q->nr_pgrants, q->zero_copy ? "on" : "off",
		     cfg->no_io_fixed ? "off" : "on");
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
	free_pgrants(q);
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
			free(q->reqs[i].pg);
		}
	}
	free(q->reqs);
	free_pages(q->indirect_pages, (size_t)q->nr_reqs * VD_BLKIF_MAX_INDIRECT_PAGES);
	free_pages(q->pool, q->nr_pool_pages);
	free(q->free_pages);
	free(q->driver_ctx);
	free(q->gbatch);
	if (q->poll.stat_fd >= 0) {
		close(q->poll.stat_fd);
	}
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

/* ---- histograms ---- */

unsigned int vd_queue_lat_bucket(uint64_t us)
{
	unsigned int e = 63 - (unsigned int)__builtin_clzll(us | 1);
	unsigned int idx;

	if (us < 4) {
		return (unsigned int)us;
	}
	idx = 4 + (e - 2) * 4 + (unsigned int)((us >> (e - 2)) & 3);
	return VD_MIN(idx, VD_QUEUE_LAT_BUCKETS - 1u);
}

uint64_t vd_queue_lat_bucket_low(unsigned int idx)
{
	if (idx < 4) {
		return idx;
	}
	return (uint64_t)(4 + (idx - 4) % 4) << ((idx - 4) / 4);
}

uint64_t vd_queue_lat_percentile(const uint64_t hist[VD_QUEUE_LAT_BUCKETS], double pct)
{
	uint64_t total = 0, seen = 0, want;

	for (unsigned int i = 0; i < VD_QUEUE_LAT_BUCKETS; i++) {
		total += hist[i];
	}
	if (total == 0) {
		return 0;
	}
	want = (uint64_t)((double)total * pct / 100.0 + 0.5);
	want = VD_MAX(want, 1ull);
	for (unsigned int i = 0; i < VD_QUEUE_LAT_BUCKETS; i++) {
		seen += hist[i];
		if (seen >= want) {
			if (i + 1 == VD_QUEUE_LAT_BUCKETS) {
				return vd_queue_lat_bucket_low(i);
			}
			return (vd_queue_lat_bucket_low(i) + vd_queue_lat_bucket_low(i + 1)) / 2;
		}
	}
	return vd_queue_lat_bucket_low(VD_QUEUE_LAT_BUCKETS - 1);
}

/* ---- stats as text ---- */

#define STAT_FIELD(f)                                  \
	{                                              \
#f, offsetof(struct vd_queue_stats, f) \
	}
static const struct {
	const char *name;
	size_t off;
} g_stat_fields[] = {
	STAT_FIELD(reqs),
	STAT_FIELD(reqs_read),
	STAT_FIELD(reqs_write),
	STAT_FIELD(reqs_flush),
	STAT_FIELD(reqs_discard),
	STAT_FIELD(bytes_read),
	STAT_FIELD(bytes_written),
	STAT_FIELD(errors),
	STAT_FIELD(invalid),
	STAT_FIELD(wakeups),
	STAT_FIELD(notifies),
	STAT_FIELD(grant_copy_calls),
	STAT_FIELD(grant_copy_segs),
	STAT_FIELD(pool_stalls),
	STAT_FIELD(polls_empty),
	STAT_FIELD(poll_windows),
	STAT_FIELD(poll_idle_stops),
	STAT_FIELD(sleeps),
	STAT_FIELD(evtchn_kicks),
	STAT_FIELD(batches),
	STAT_FIELD(batch_reqs),
	STAT_FIELD(pgrant_hits),
	STAT_FIELD(pgrant_maps),
	STAT_FIELD(pgrant_map_fails),
	STAT_FIELD(pgrant_full),
	STAT_FIELD(pgrant_evictions),
	STAT_FIELD(zero_copy_reqs),
};

static int put_hist(char *buf, size_t len, size_t *pos, const char *name, const uint64_t *h,
		    unsigned int n)
{
	int r = snprintf(buf + *pos, len - *pos, "%s", name);

	for (unsigned int i = 0; r >= 0 && (size_t)r < len - *pos && i < n; i++) {
		*pos += (size_t)r;
		r = snprintf(buf + *pos, len - *pos, " %" PRIu64, h[i]);
	}
	if (r < 0 || (size_t)r + 1 >= len - *pos) {
		return -ENOSPC;
	}
	*pos += (size_t)r;
	buf[(*pos)++] = '\n';
	buf[*pos] = '\0';
	return 0;
}

int vd_queue_stats_format(const struct vd_queue_stats *st, unsigned int idx, char *buf, size_t len)
{
	size_t pos = 0;
	int r;

	if (len == 0) {
		return -ENOSPC;
	}
	r = snprintf(buf, len, "queue %u\n", idx);
	for (size_t i = 0; r >= 0 && (size_t)r < len - pos && i < VD_ARRAY_SIZE(g_stat_fields);
	     i++) {
		pos += (size_t)r;
		r = snprintf(buf + pos, len - pos, "%s %" PRIu64 "\n", g_stat_fields[i].name,
			     *(const uint64_t *)((const char *)st + g_stat_fields[i].off));
	}
	if (r < 0 || (size_t)r >= len - pos) {
		return -ENOSPC;
	}
	pos += (size_t)r;
	if (put_hist(buf, len, &pos, "batch_hist", st->batch_hist, VD_QUEUE_BATCH_BUCKETS) < 0 ||
	    put_hist(buf, len, &pos, "lat_hist", st->lat_hist, VD_QUEUE_LAT_BUCKETS) < 0) {
		return -ENOSPC;
	}
	return (int)pos;
}

static int parse_u64(const char **p, uint64_t *out)
{
	char *end;

	while (**p == ' ') {
		(*p)++;
	}
	if (**p < '0' || **p > '9') {
		return -EINVAL;
	}
	errno = 0;
	*out = strtoull(*p, &end, 10);
	if (errno != 0) {
		return -EINVAL;
	}
	*p = end;
	return 0;
}

static int parse_hist(const char *p, uint64_t *h, unsigned int n)
{
	for (unsigned int i = 0; i < n; i++) {
		if (parse_u64(&p, &h[i]) < 0) {
			return -EINVAL;
		}
	}
	return *p == '\0' || *p == '\n' ? 0 : -EINVAL;
}

int vd_queue_stats_parse_line(struct vd_queue_stats *st, const char *line)
{
	size_t n = strcspn(line, " ");
	const char *p = line + n;
	uint64_t v;

	if (n == strlen("batch_hist") && strncmp(line, "batch_hist", n) == 0) {
		return parse_hist(p, st->batch_hist, VD_QUEUE_BATCH_BUCKETS);
	}
	if (n == strlen("lat_hist") && strncmp(line, "lat_hist", n) == 0) {
		return parse_hist(p, st->lat_hist, VD_QUEUE_LAT_BUCKETS);
	}
	for (size_t i = 0; i < VD_ARRAY_SIZE(g_stat_fields); i++) {
		if (strlen(g_stat_fields[i].name) == n &&
		    strncmp(line, g_stat_fields[i].name, n) == 0) {
			if (parse_u64(&p, &v) < 0 || (*p != '\0' && *p != '\n')) {
				return -EINVAL;
			}
			*(uint64_t *)((char *)st + g_stat_fields[i].off) = v;
			return 0;
		}
	}
	return -EINVAL;
}
