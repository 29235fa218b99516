/*
 * The frontend's half of a blkif ring (xen/io/ring.h FRONT_RING macros):
 * ring pages, the event channel and the request slots (Linux blkfront's
 * shadow). A request's id is its slot index; a response whose id does not
 * name a busy slot is counted, never trusted.
 */
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/log.h"
#include "sim/guest/guest-int.h"

union vd_wire_req {
	struct blkif_request rw;
	struct blkif_request_indirect ind;
	struct blkif_request_discard discard;
};

_Static_assert(sizeof(union vd_wire_req) == sizeof(struct blkif_request),
	       "every request kind fits a ring slot");

unsigned int vd_fq_ring_size(const struct vd_fq *q)
{
	return RING_SIZE(&q->ring);
}

static int ring_setup(struct vd_fq *q)
{
	struct vd_front *f = q->f;
	int rc;

	q->nr_ring_pages = 1u << f->ring_order;
	rc = vd_gmem_alloc_pages(&f->gmem, q->nr_ring_pages, &q->ring_page);
	if (rc < 0) {
		return rc;
	}
	q->sring = vd_gmem_page(&f->gmem, q->ring_page);
	memset(q->sring, 0, (size_t)q->nr_ring_pages * VD_PAGE_SIZE);
	SHARED_RING_INIT(q->sring);
	FRONT_RING_INIT(&q->ring, q->sring, (size_t)q->nr_ring_pages * VD_PAGE_SIZE);
	for (unsigned int i = 0; i < q->nr_ring_pages; i++) {
		rc = vd_gmem_grant(&f->gmem, f->be_domid, q->ring_page + i, false,
				   &q->ring_refs[i]);
		if (rc < 0) {
			return rc;
		}
	}
	return 0;
}

/*
 * Persistent grants (blkfront's persistent_gnts): grant the slot's data and
 * indirect pages read-write once; requests reuse them and the data is
 * copied in and out of a private buffer, as blkfront copies bio pages.
 */
static int persistent_setup(struct vd_fq *q, struct vd_slot *s)
{
	struct vd_front *f = q->f;
	unsigned int n = f->io_pages + s->nr_ind_pages;

	s->pgrefs = calloc(n, sizeof(*s->pgrefs));
	s->buf = aligned_alloc(VD_PAGE_SIZE, (size_t)f->io_pages * VD_PAGE_SIZE);
	if (s->pgrefs == NULL || s->buf == NULL) {
		return -ENOMEM;
	}
	for (unsigned int i = 0; i < n; i++) {
		uint64_t page = i < f->io_pages ? s->buf_page + i : s->ind_page + (i - f->io_pages);
		int rc = vd_gmem_grant(&f->gmem, f->be_domid, page, false, &s->pgrefs[i]);

		if (rc < 0) {
			return rc;
		}
		s->nr_pgrefs++;
	}
	return 0;
}

static int slots_setup(struct vd_fq *q)
{
	struct vd_front *f = q->f;
	unsigned int ind_pages = 0;
	int rc;

	if (f->io_pages > BLKIF_MAX_SEGMENTS_PER_REQUEST) {
		ind_pages = VD_DIV_ROUND_UP(f->io_pages, (unsigned int)VD_SG_SEGS_PER_PAGE);
	}
	q->nr_slots = f->iodepth;
	q->slot = calloc(q->nr_slots, sizeof(*q->slot));
	q->free_slot = calloc(q->nr_slots, sizeof(*q->free_slot));
	if (q->slot == NULL || q->free_slot == NULL) {
		return -ENOMEM;
	}
	for (unsigned int i = 0; i < q->nr_slots; i++) {
		struct vd_slot *s = &q->slot[i];

		s->buf_page = UINT64_MAX;
		s->ind_page = UINT64_MAX;
		rc = vd_gmem_alloc_pages(&f->gmem, f->io_pages, &s->buf_page);
		if (rc < 0) {
			return rc;
		}
		s->gbuf = vd_gmem_page(&f->gmem, s->buf_page);
		s->buf = s->gbuf;
		if (ind_pages > 0) {
			rc = vd_gmem_alloc_pages(&f->gmem, ind_pages, &s->ind_page);
			if (rc < 0) {
				return rc;
			}
			s->nr_ind_pages = ind_pages;
		}
		if (f->persistent) {
			rc = persistent_setup(q, s);
			if (rc < 0) {
				return rc;
			}
		}
		q->free_slot[q->nr_free++] = q->nr_slots - 1 - i;
	}
	return 0;
}

int vd_fq_create(struct vd_front *f, unsigned int idx, struct vd_fq **out)
{
	struct vd_fq *q = calloc(1, sizeof(*q));
	int rc;

	if (q == NULL) {
		return -ENOMEM;
	}
	q->f = f;
	q->idx = idx;
	q->evfd = -1;
	q->ring_page = UINT64_MAX;
	rc = ring_setup(q);
	if (rc < 0) {
		goto err_destroy;
	}
	rc = vd_hvc_evtchn_alloc_unbound(f->hvc, f->be_domid, &q->port, &q->evfd);
	if (rc < 0) {
		q->evfd = -1;
		goto err_destroy;
	}
	rc = slots_setup(q);
	if (rc < 0) {
		goto err_destroy;
	}
	*out = q;
	return 0;

err_destroy:
	vd_fq_destroy(q);
	return rc;
}

static void slot_ungrant(struct vd_gmem *m, struct vd_slot *s)
{
	for (unsigned int i = 0; i < s->nr_grefs; i++) {
		(void)vd_gmem_ungrant(m, s->grefs[i]);
	}
	for (unsigned int i = 0; i < s->nr_ind_grefs; i++) {
		(void)vd_gmem_ungrant(m, s->ind_grefs[i]);
	}
	s->nr_grefs = 0;
	s->nr_ind_grefs = 0;
}

void vd_fq_destroy(struct vd_fq *q)
{
	struct vd_gmem *m;

	if (q == NULL) {
		return;
	}
	m = &q->f->gmem;
	if (q->evfd >= 0) {
		(void)vd_hvc_evtchn_close(q->f->hvc, q->port);
		close(q->evfd);
	}
	for (unsigned int i = 0; q->slot != NULL && i < q->nr_slots; i++) {
		struct vd_slot *s = &q->slot[i];

		slot_ungrant(m, s);
		for (unsigned int j = 0; j < s->nr_pgrefs; j++) {
			(void)vd_gmem_ungrant(m, s->pgrefs[j]);
		}
		free(s->pgrefs);
		if (s->buf != s->gbuf) {
			free(s->buf);
		}
		if (s->buf_page != UINT64_MAX) {
			vd_gmem_free_pages(m, s->buf_page, q->f->io_pages);
		}
		if (s->ind_page != UINT64_MAX && s->nr_ind_pages > 0) {
			vd_gmem_free_pages(m, s->ind_page, s->nr_ind_pages);
		}
	}
	if (q->ring_page != UINT64_MAX) {
		for (unsigned int i = 0; i < q->nr_ring_pages; i++) {
			if (q->ring_refs[i] != 0) {
				(void)vd_gmem_ungrant(m, q->ring_refs[i]);
			}
		}
		vd_gmem_free_pages(m, q->ring_page, q->nr_ring_pages);
	}
	free(q->slot);
	free(q->free_slot);
	free(q);
}

struct vd_slot *vd_fq_slot_get(struct vd_fq *q)
{
	struct vd_slot *s;

	if (q->nr_free == 0) {
		return NULL;
	}
	s = &q->slot[q->free_slot[--q->nr_free]];
	assert(!s->busy);
	s->busy = true;
	return s;
}

void vd_fq_slot_put(struct vd_fq *q, struct vd_slot *s)
{
	assert(s->busy);
	s->busy = false;
	q->free_slot[q->nr_free++] = (unsigned int)(s - q->slot);
}

int vd_fq_put_raw(struct vd_fq *q, const void *req, size_t len)
{
	void *slot;

	if (RING_FULL(&q->ring)) {
		return -EBUSY;
	}
	slot = RING_GET_REQUEST(&q->ring, q->ring.req_prod_pvt);
	memset(slot, 0, sizeof(struct blkif_request));
	memcpy(slot, req, VD_MIN(len, sizeof(struct blkif_request)));
	q->ring.req_prod_pvt++;
	return 0;
}

/* Grant the data pages of a read/write and describe them as segments. */
static int grant_segments(struct vd_fq *q, struct vd_slot *s, struct blkif_request_segment *seg,
			  unsigned int nsegs)
{
	struct vd_front *f = q->f;
	bool readonly = s->io.op == BLKIF_OP_WRITE; /* the backend only reads it */
	uint64_t sectors = s->io.len_bytes / VD_SECTOR_SIZE;

	for (unsigned int i = 0; i < nsegs; i++) {
		uint64_t left = sectors - (uint64_t)i * 8;

		if (f->persistent) {
			seg[i].gref = s->pgrefs[i];
		} else {
			int rc = vd_gmem_grant(&f->gmem, f->be_domid, s->buf_page + i, readonly,
					       &s->grefs[i]);

			if (rc < 0) {
				return rc;
			}
			s->nr_grefs++;
			seg[i].gref = s->grefs[i];
		}
		seg[i].first_sect = 0;
		seg[i].last_sect = (uint8_t)(VD_MIN(left, 8u) - 1);
	}
	return 0;
}

static int build_rw(struct vd_fq *q, struct vd_slot *s, uint64_t id, union vd_wire_req *u)
{
	struct vd_front *f = q->f;
	unsigned int nsegs = (unsigned int)VD_DIV_ROUND_UP(s->io.len_bytes, VD_PAGE_SIZE);
	struct blkif_request_segment *ind;
	unsigned int nind;
	int rc;

	if (nsegs == 0 || nsegs > f->max_segs || nsegs > f->io_pages) {
		return -EINVAL;
	}
	if (nsegs <= BLKIF_MAX_SEGMENTS_PER_REQUEST) {
		u->rw.operation = s->io.op;
		u->rw.nr_segments = (uint8_t)nsegs;
		u->rw.id = id;
		u->rw.sector_number = s->io.off_bytes / VD_SECTOR_SIZE;
		return grant_segments(q, s, u->rw.seg, nsegs);
	}
	nind = VD_DIV_ROUND_UP(nsegs, (unsigned int)VD_SG_SEGS_PER_PAGE);
	assert(nind <= s->nr_ind_pages);
	ind = vd_gmem_page(&f->gmem, s->ind_page);
	memset(ind, 0, (size_t)nind * VD_PAGE_SIZE);
	rc = grant_segments(q, s, ind, nsegs);
	if (rc < 0) {
		return rc;
	}
	u->ind.operation = BLKIF_OP_INDIRECT;
	u->ind.indirect_op = s->io.op;
	u->ind.nr_segments = (uint16_t)nsegs;
	u->ind.id = id;
	u->ind.sector_number = s->io.off_bytes / VD_SECTOR_SIZE;
	for (unsigned int i = 0; i < nind; i++) {
		if (f->persistent) {
			u->ind.indirect_grefs[i] = s->pgrefs[f->io_pages + i];
			continue;
		}
		rc = vd_gmem_grant(&f->gmem, f->be_domid, s->ind_page + i, true, &s->ind_grefs[i]);
		if (rc < 0) {
			return rc;
		}
		s->nr_ind_grefs++;
		u->ind.indirect_grefs[i] = s->ind_grefs[i];
	}
	return 0;
}

int vd_fq_submit(struct vd_fq *q, struct vd_slot *s)
{
	union vd_wire_req u;
	uint64_t id = (uint64_t)(s - q->slot);
	int rc = 0;

	if (RING_FULL(&q->ring)) {
		return -EBUSY;
	}
	memset(&u, 0, sizeof(u));
	s->nr_grefs = 0;
	s->nr_ind_grefs = 0;
	switch (s->io.op) {
	case BLKIF_OP_READ:
	case BLKIF_OP_WRITE:
		rc = build_rw(q, s, id, &u);
		break;
	case BLKIF_OP_FLUSH_DISKCACHE:
	case BLKIF_OP_WRITE_BARRIER:
		u.rw.operation = s->io.op;
		u.rw.id = id;
		break;
	case BLKIF_OP_DISCARD:
		u.discard.operation = BLKIF_OP_DISCARD;
		u.discard.id = id;
		u.discard.sector_number = s->io.off_bytes / VD_SECTOR_SIZE;
		u.discard.nr_sectors = s->io.len_bytes / VD_SECTOR_SIZE;
		break;
	default:
		rc = -EINVAL;
	}
	if (rc < 0) {
		slot_ungrant(&q->f->gmem, s);
		return rc;
	}
	if (s->io.op == BLKIF_OP_WRITE && s->buf != s->gbuf) {
		memcpy(s->gbuf, s->buf, s->io.len_bytes); /* into the persistent pages */
	}
	s->io.submit_ns = vd_now_ns();
	return vd_fq_put_raw(q, &u, sizeof(u));
}

int vd_fq_kick(struct vd_fq *q)
{
	int notify;

	RING_PUSH_REQUESTS_AND_CHECK_NOTIFY(&q->ring, notify);
	if (notify) {
		return vd_hvc_evtchn_notify(q->f->hvc, q->port);
	}
	return 0;
}

int vd_fq_next_rsp(struct vd_fq *q, struct blkif_response *rsp)
{
	int more;

	if (q->halted) {
		return -EPROTO;
	}
	for (;;) {
		RING_IDX rp = __atomic_load_n(&q->sring->rsp_prod, __ATOMIC_ACQUIRE);
		RING_IDX outstanding = q->ring.req_prod_pvt - q->ring.rsp_cons;

		if ((RING_IDX)(rp - q->ring.rsp_cons) > outstanding) {
			vd_log(VD_LOG_ERR, "q%u: backend rsp_prod %u is beyond our %u requests",
			       q->idx, rp, outstanding);
			q->halted = true;
			return -EPROTO;
		}
		if (rp != q->ring.rsp_cons) {
			memcpy(rsp, RING_GET_RESPONSE(&q->ring, q->ring.rsp_cons), sizeof(*rsp));
			q->ring.rsp_cons++;
			return 1;
		}
		RING_FINAL_CHECK_FOR_RESPONSES(&q->ring, more);
		if (!more) {
			return 0;
		}
	}
}

int vd_fq_wait(struct vd_fq *q, int timeout_ms)
{
	struct pollfd pfd = { .fd = q->evfd, .events = POLLIN };
	uint64_t v;
	int rc = poll(&pfd, 1, timeout_ms);

	if (rc < 0) {
		return errno == EINTR ? 0 : -errno;
	}
	if (rc == 0) {
		return 0;
	}
	if (read(q->evfd, &v, sizeof(v)) < 0 && errno != EAGAIN) {
		return -errno;
	}
	return 1;
}

int vd_fq_reap(struct vd_fq *q, vd_slot_done_fn done, void *arg)
{
	struct blkif_response rsp;
	int n = 0, rc;

	while ((rc = vd_fq_next_rsp(q, &rsp)) > 0) {
		struct vd_slot *s;

		if (rsp.id >= q->nr_slots || !q->slot[rsp.id].busy) {
			vd_log_ratelimited(VD_LOG_ERR, "q%u: response with unknown id %llu", q->idx,
					   (unsigned long long)rsp.id);
			q->unknown_ids++;
			continue;
		}
		s = &q->slot[rsp.id];
		slot_ungrant(&q->f->gmem, s);
		s->io.status = rsp.status;
		if (s->io.op == BLKIF_OP_READ && rsp.status == BLKIF_RSP_OKAY &&
		    s->buf != s->gbuf) {
			memcpy(s->buf, s->gbuf, s->io.len_bytes); /* out of the persistent pages */
		}
		n++;
		done(arg, q, s);
	}
	return rc < 0 ? rc : n;
}
