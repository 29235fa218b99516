/*
 * Hostile mode: connect, send one kind of abuse, check what the backend
 * does, then (for non-fatal cases) check it still serves verified I/O.
 * Requests are built by hand and put on the ring raw; their ids are far
 * from the slot ids the engine uses.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <xen/io/xenbus.h>

#include "common/log.h"
#include "sim/guest/guest-int.h"

#define H_ID         0x4857000000000000ull
#define RSP_TIMEOUT  5000
#define REFUSE_WAIT  5000
#define S_OKAY       (1u << 0)
#define S_ERROR      (1u << 1)
#define S_EOPNOTSUPP (1u << 2)
#define MAX_TRACKED  64
#define STATE_BIT(s) (1u << (s))

enum { H_FAIL = 0, H_PASS = 1, H_SKIP = 2 };

struct hctx {
	struct vd_front *f;
	struct vd_model *model;
	uint64_t next_id;
	char expect[96];
	char got[192];
	uint64_t pages[MAX_TRACKED];
	unsigned int nr_pages;
	uint32_t grefs[MAX_TRACKED];
	unsigned int nr_grefs;
	uint64_t wl_seed;
};

union hreq {
	struct blkif_request rw;
	struct blkif_request_indirect ind;
	struct blkif_request_discard discard;
};

/* ---------------- helpers ---------------- */

static struct vd_fq *q0(struct hctx *h)
{
	return h->f->q[0];
}

static const char *status_name(int16_t st)
{
	switch (st) {
	case BLKIF_RSP_OKAY:
		return "OKAY";
	case BLKIF_RSP_ERROR:
		return "ERROR";
	case BLKIF_RSP_EOPNOTSUPP:
		return "EOPNOTSUPP";
	default:
		return "a bad status";
	}
}

static unsigned int status_bit(int16_t st)
{
	switch (st) {
	case BLKIF_RSP_OKAY:
		return S_OKAY;
	case BLKIF_RSP_ERROR:
		return S_ERROR;
	case BLKIF_RSP_EOPNOTSUPP:
		return S_EOPNOTSUPP;
	default:
		return 0;
	}
}

static void mask_name(unsigned int mask, char *buf, size_t len)
{
	snprintf(buf, len, "%s%s%s%s%s", (mask & S_OKAY) ? "OKAY" : "",
		 (mask & S_OKAY) && (mask & ~S_OKAY) ? " or " : "", (mask & S_ERROR) ? "ERROR" : "",
		 (mask & S_ERROR) && (mask & S_EOPNOTSUPP) ? " or " : "",
		 (mask & S_EOPNOTSUPP) ? "EOPNOTSUPP" : "");
}

/* A scratch page, freed when the case ends (the backend is done with it). */
static int h_page(struct hctx *h, uint64_t *page)
{
	int rc;

	if (h->nr_pages == MAX_TRACKED) {
		return -ENOSPC;
	}
	rc = vd_gmem_alloc_pages(&h->f->gmem, 1, page);
	if (rc < 0) {
		return rc;
	}
	memset(vd_gmem_page(&h->f->gmem, *page), 0, VD_PAGE_SIZE);
	h->pages[h->nr_pages++] = *page;
	return 0;
}

/* A ref granting page to domid (not necessarily the backend). */
static int h_grant(struct hctx *h, uint64_t page, uint16_t domid, bool readonly, uint32_t *ref)
{
	int rc;

	if (h->nr_grefs == MAX_TRACKED) {
		return -ENOSPC;
	}
	rc = vd_gmem_grant(&h->f->gmem, domid, page, readonly, ref);
	if (rc == 0) {
		h->grefs[h->nr_grefs++] = *ref;
	}
	return rc;
}

/* A ref that is free in the table: flags 0, nobody may use it. */
static int h_ungranted_ref(struct hctx *h, uint32_t *ref)
{
	int rc;

	if (h->nr_grefs == MAX_TRACKED) {
		return -ENOSPC;
	}
	rc = vd_gmem_gref_get(&h->f->gmem, ref);
	if (rc == 0) {
		h->f->gmem.gnttab[*ref].flags = 0;
		h->grefs[h->nr_grefs++] = *ref;
	}
	return rc;
}

static void h_release(struct hctx *h)
{
	for (unsigned int i = 0; i < h->nr_grefs; i++) {
		(void)vd_gmem_ungrant(&h->f->gmem, h->grefs[i]);
	}
	for (unsigned int i = 0; i < h->nr_pages; i++) {
		vd_gmem_free_pages(&h->f->gmem, h->pages[i], 1);
	}
	h->nr_grefs = 0;
	h->nr_pages = 0;
}

/* A page granted read-write to the backend, for segments that are fine. */
static int h_data_page(struct hctx *h, bool readonly, uint64_t *page, uint32_t *ref)
{
	int rc = h_page(h, page);

	return rc < 0 ? rc : h_grant(h, *page, h->f->be_domid, readonly, ref);
}

static int h_send(struct hctx *h, const union hreq *r)
{
	int rc = vd_fq_put_raw(q0(h), r, sizeof(*r));

	return rc < 0 ? rc : vd_fq_kick(q0(h));
}

/* The response to id; any other response is a failure. */
static int h_wait_rsp(struct hctx *h, uint64_t id, int16_t *status, unsigned int timeout_ms)
{
	uint64_t deadline = vd_now_ns() + (uint64_t)timeout_ms * 1000000ull;
	struct blkif_response rsp;
	int rc;

	for (;;) {
		rc = vd_fq_next_rsp(q0(h), &rsp);
		if (rc < 0) {
			return rc;
		}
		if (rc > 0 && rsp.id == id) {
			*status = rsp.status;
			return 0;
		}
		if (rc > 0) {
			snprintf(h->got, sizeof(h->got), "a response with unexpected id 0x%llx",
				 (unsigned long long)rsp.id);
			return -EPROTO;
		}
		if (vd_now_ns() >= deadline) {
			return -ETIMEDOUT;
		}
		(void)vd_fq_wait(q0(h), 100);
	}
}

/* Send r (its id is set here) and compare the status with mask. */
static int h_expect(struct hctx *h, union hreq *r, unsigned int mask, const char *what)
{
	uint64_t id = H_ID + h->next_id++;
	int16_t st = 0;
	int rc;

	if (r->rw.operation == BLKIF_OP_INDIRECT) {
		r->ind.id = id;
	} else if (r->rw.operation == BLKIF_OP_DISCARD) {
		r->discard.id = id;
	} else {
		r->rw.id = id;
	}
	if (h->expect[0] == '\0') {
		mask_name(mask, h->expect, sizeof(h->expect)); /* the case's first request */
	}
	rc = h_send(h, r);
	if (rc == 0) {
		rc = h_wait_rsp(h, id, &st, RSP_TIMEOUT);
	}
	if (rc == -EPROTO && h->got[0] != '\0') {
		return H_FAIL;
	}
	if (rc < 0) {
		snprintf(h->got, sizeof(h->got), "%s (%s)",
			 rc == -ETIMEDOUT ? "no response" : strerror(-rc), what);
		return H_FAIL;
	}
	snprintf(h->got, sizeof(h->got), "%s (%s)", status_name(st), what);
	return (status_bit(st) & mask) ? H_PASS : H_FAIL;
}

static void rw_req(union hreq *r, uint8_t op, uint64_t sector, uint8_t nsegs, uint32_t gref,
		   uint8_t first, uint8_t last)
{
	memset(r, 0, sizeof(*r));
	r->rw.operation = op;
	r->rw.nr_segments = nsegs;
	r->rw.sector_number = sector;
	for (unsigned int i = 0; i < VD_MIN(nsegs, BLKIF_MAX_SEGMENTS_PER_REQUEST); i++) {
		r->rw.seg[i].gref = gref;
		r->rw.seg[i].first_sect = first;
		r->rw.seg[i].last_sect = last;
	}
}

/* A one-segment read of a full page at sector, into a fresh granted page. */
static int h_read_one(struct hctx *h, uint64_t sector, uint32_t gref, uint8_t first, uint8_t last,
		      unsigned int mask, const char *what)
{
	union hreq r;

	rw_req(&r, BLKIF_OP_READ, sector, 1, gref, first, last);
	return h_expect(h, &r, mask, what);
}

/* ---------------- the short verified workload ---------------- */

static int h_model(struct hctx *h)
{
	struct vd_front *f = h->f;
	uint64_t size = f->feat.sectors * VD_SECTOR_SIZE;
	uint64_t bs = VD_MAX((uint64_t)f->feat.sector_size, VD_MIN(f->opts->bs, 4096u));

	if (h->model != NULL) {
		return 0;
	}
	return vd_model_create(size, vd_wl_model_unit(bs, f->feat.sector_size, size), f->opts->seed,
			       f->opts->verify_initial, &h->model);
}

static int h_workload(struct hctx *h, uint64_t ios, struct vd_wl_result *res)
{
	struct vd_front *f = h->f;
	struct vd_wl_params p;
	int rc = h_model(h);

	if (rc < 0) {
		return rc;
	}
	vd_wl_params_from_opts(&p, f->opts);
	p.rw = VD_RW_RANDRW;
	p.rwmix = 50;
	p.bs = VD_MAX((uint64_t)f->feat.sector_size, VD_MIN(f->opts->bs, 4096u));
	p.ios = ios;
	p.runtime_ns = 0;
	p.seed = h->wl_seed++;
	p.flush_every = 0;
	p.discard_every = 0;
	rc = vd_wl_run(f, h->model, &p, res);
	if (rc < 0) {
		return rc;
	}
	if (res->st.verify_errors != 0 || res->st.io_errors != 0 || res->st.unknown_ids != 0) {
		return -EIO;
	}
	return 0;
}

/* After a non-fatal case: the backend must still serve verified I/O. */
static int h_still_serves(struct hctx *h)
{
	struct vd_wl_result res = { 0 };
	int rc = h_workload(h, 256, &res);
	size_t n;

	if (rc < 0) {
		n = strlen(h->got);
		snprintf(h->got + n, sizeof(h->got) - n,
			 "; then verified I/O failed (%" PRIu64 " verify, %" PRIu64 " I/O errors)",
			 res.st.verify_errors, res.st.io_errors + res.st.unknown_ids);
		return H_FAIL;
	}
	n = strlen(h->got);
	snprintf(h->got + n, sizeof(h->got) - n, "; verified I/O still works");
	return H_PASS;
}

/* ---------------- request cases ---------------- */

static int c_unknown_op(struct hctx *h)
{
	static const uint8_t ops[] = { BLKIF_OP_RESERVED_1, 200 };

	for (unsigned int i = 0; i < VD_ARRAY_SIZE(ops); i++) {
		union hreq r;
		char what[32];

		rw_req(&r, ops[i], 0, 0, 0, 0, 0);
		snprintf(what, sizeof(what), "op %u", ops[i]);
		if (h_expect(h, &r, S_EOPNOTSUPP, what) != H_PASS) {
			return H_FAIL;
		}
	}
	return H_PASS;
}

static int c_read_zero_segs(struct hctx *h)
{
	union hreq r;

	rw_req(&r, BLKIF_OP_READ, 0, 0, 0, 0, 0);
	return h_expect(h, &r, S_ERROR, "read, 0 segments");
}

static int c_too_many_direct_segs(struct hctx *h)
{
	static const uint8_t counts[] = { 12, 100, 255 };
	uint64_t page;
	uint32_t ref;

	if (h_data_page(h, false, &page, &ref) < 0) {
		return H_FAIL;
	}
	for (unsigned int i = 0; i < VD_ARRAY_SIZE(counts); i++) {
		union hreq r;
		char what[32];

		rw_req(&r, BLKIF_OP_READ, 0, counts[i], ref, 0, 7);
		snprintf(what, sizeof(what), "nr_segments %u", counts[i]);
		if (h_expect(h, &r, S_ERROR, what) != H_PASS) {
			return H_FAIL;
		}
	}
	return H_PASS;
}

static int c_first_gt_last(struct hctx *h)
{
	uint64_t page;
	uint32_t ref;

	if (h_data_page(h, false, &page, &ref) < 0) {
		return H_FAIL;
	}
	return h_read_one(h, 0, ref, 3, 2, S_ERROR, "first_sect 3 > last_sect 2");
}

static int c_last_sect_8(struct hctx *h)
{
	uint64_t page;
	uint32_t ref;

	if (h_data_page(h, false, &page, &ref) < 0) {
		return H_FAIL;
	}
	return h_read_one(h, 0, ref, 0, 8, S_ERROR, "last_sect 8");
}

static int c_sector_past_end(struct hctx *h)
{
	uint64_t sectors = h->f->feat.sectors, page;
	uint32_t ref;

	if (h_data_page(h, false, &page, &ref) < 0) {
		return H_FAIL;
	}
	if (h_read_one(h, sectors, ref, 0, 7, S_ERROR, "sector = disk end") != H_PASS) {
		return H_FAIL;
	}
	if (sectors >= 4) {
		return h_read_one(h, sectors - 4, ref, 0, 7, S_ERROR, "straddles the end");
	}
	return H_PASS;
}

static int c_sector_overflow(struct hctx *h)
{
	uint64_t page;
	uint32_t ref;

	if (h_data_page(h, false, &page, &ref) < 0) {
		return H_FAIL;
	}
	if (h_read_one(h, UINT64_MAX - 3, ref, 0, 7, S_ERROR, "sector 2^64-4") != H_PASS) {
		return H_FAIL;
	}
	return h_read_one(h, UINT64_MAX / 512 + 1, ref, 0, 7, S_ERROR, "byte offset overflows");
}

static int c_write_readonly(struct hctx *h)
{
	uint64_t before_pg, wr_pg, after_pg;
	uint32_t before_ref, wr_ref, after_ref;
	union hreq r;

	snprintf(h->expect, sizeof(h->expect), "ERROR, content unchanged");
	if (!h->f->feat.readonly) {
		snprintf(h->got, sizeof(h->got), "a writable VBD (attach it --readonly)");
		return H_SKIP;
	}
	if (h_data_page(h, false, &before_pg, &before_ref) < 0 ||
	    h_data_page(h, true, &wr_pg, &wr_ref) < 0 ||
	    h_data_page(h, false, &after_pg, &after_ref) < 0) {
		return H_FAIL;
	}
	if (h_read_one(h, 0, before_ref, 0, 7, S_OKAY, "read before") != H_PASS) {
		return H_FAIL;
	}
	vd_model_fill(h->model, vd_gmem_page(&h->f->gmem, wr_pg), 0, VD_PAGE_SIZE, 12345);
	rw_req(&r, BLKIF_OP_WRITE, 0, 1, wr_ref, 0, 7);
	if (h_expect(h, &r, S_ERROR, "write to a read-only VBD") != H_PASS) {
		return H_FAIL;
	}
	if (h_read_one(h, 0, after_ref, 0, 7, S_OKAY, "read after") != H_PASS) {
		return H_FAIL;
	}
	if (memcmp(vd_gmem_page(&h->f->gmem, before_pg), vd_gmem_page(&h->f->gmem, after_pg),
		   VD_PAGE_SIZE) != 0) {
		snprintf(h->got, sizeof(h->got), "the disk content changed");
		return H_FAIL;
	}
	snprintf(h->got, sizeof(h->got), "ERROR (content unchanged)");
	return H_PASS;
}

static int c_gref_out_of_range(struct hctx *h)
{
	uint32_t refs[] = { h->f->gmem.nr_grefs, h->f->gmem.nr_grefs + 1000, UINT32_MAX };

	for (unsigned int i = 0; i < VD_ARRAY_SIZE(refs); i++) {
		char what[48];

		snprintf(what, sizeof(what), "gref %u", refs[i]);
		if (h_read_one(h, 0, refs[i], 0, 7, S_ERROR, what) != H_PASS) {
			return H_FAIL;
		}
	}
	return H_PASS;
}

static int c_gref_not_granted(struct hctx *h)
{
	uint32_t ref;

	if (h_ungranted_ref(h, &ref) < 0) {
		return H_FAIL;
	}
	if (h_read_one(h, 0, ref, 0, 7, S_ERROR, "read into an ungranted ref") != H_PASS) {
		return H_FAIL;
	}
	/* reserved refs are never granted either */
	return h_read_one(h, 0, 0, 0, 7, S_ERROR, "gref 0");
}

static int c_gref_other_domain(struct hctx *h)
{
	uint16_t other = h->f->be_domid == 7 ? 8 : 7;
	uint64_t page;
	uint32_t ref;

	if (h_page(h, &page) < 0 || h_grant(h, page, other, false, &ref) < 0) {
		return H_FAIL;
	}
	return h_read_one(h, 0, ref, 0, 7, S_ERROR, "ref granted to another domain");
}

static int c_gref_readonly_for_read(struct hctx *h)
{
	uint64_t page;
	uint32_t ref;
	uint8_t *p;

	if (h_data_page(h, true, &page, &ref) < 0) {
		return H_FAIL;
	}
	p = vd_gmem_page(&h->f->gmem, page);
	memset(p, 0xab, VD_PAGE_SIZE);
	if (h_read_one(h, 0, ref, 0, 7, S_ERROR, "read into a read-only grant") != H_PASS) {
		return H_FAIL;
	}
	for (unsigned int i = 0; i < VD_PAGE_SIZE; i++) {
		if (p[i] != 0xab) {
			snprintf(h->got, sizeof(h->got), "the read-only page was written");
			return H_FAIL;
		}
	}
	return H_PASS;
}

/*
 * Persistent grants. A read-only grant cannot be mapped writable (as Xen
 * refuses): the backend must copy from it for a WRITE and refuse a READ
 * into it. A grant revoked after the backend used it: the backend may keep
 * a mapping made while it was granted (Xen will not let a guest end a
 * mapped grant), so OKAY or ERROR; it must not crash, and a ref it never
 * used that is revoked fails.
 */
static int c_persistent_readonly(struct hctx *h)
{
	uint64_t ro_pg, rd_pg, off = 8ull * VD_PAGE_SIZE;
	uint32_t ro_ref, rd_ref, gen = 1000;
	union hreq r;
	uint8_t *p;

	snprintf(h->expect, sizeof(h->expect), "OKAY (write), ERROR (read into it)");
	if (!h->f->persistent) {
		snprintf(h->got, sizeof(h->got), "feature-persistent not negotiated");
		return H_SKIP;
	}
	if (h_model(h) < 0 || h_data_page(h, true, &ro_pg, &ro_ref) < 0 ||
	    h_data_page(h, false, &rd_pg, &rd_ref) < 0) {
		return H_FAIL;
	}
	p = vd_gmem_page(&h->f->gmem, ro_pg);
	vd_model_fill(h->model, p, off, VD_PAGE_SIZE, gen);
	rw_req(&r, BLKIF_OP_WRITE, off / VD_SECTOR_SIZE, 1, ro_ref, 0, 7);
	if (h_expect(h, &r, S_OKAY, "write from a read-only grant") != H_PASS) {
		return H_FAIL;
	}
	vd_model_set(h->model, off, VD_PAGE_SIZE, gen);
	memset(p, 0xab, VD_PAGE_SIZE);
	if (h_read_one(h, off / VD_SECTOR_SIZE, ro_ref, 0, 7, S_ERROR, "read into it") != H_PASS) {
		return H_FAIL;
	}
	for (unsigned int i = 0; i < VD_PAGE_SIZE; i++) {
		if (p[i] != 0xab) {
			snprintf(h->got, sizeof(h->got), "the read-only page was written");
			return H_FAIL;
		}
	}
	if (h_read_one(h, off / VD_SECTOR_SIZE, rd_ref, 0, 7, S_OKAY, "read back") != H_PASS) {
		return H_FAIL;
	}
	if (vd_model_verify(h->model, vd_gmem_page(&h->f->gmem, rd_pg), off, VD_PAGE_SIZE) != 0) {
		snprintf(h->got, sizeof(h->got),
			 "the data written from the read-only grant is wrong");
		return H_FAIL;
	}
	snprintf(h->got, sizeof(h->got), "OKAY, ERROR (page untouched), data read back");
	return H_PASS;
}

static int c_persistent_revoked(struct hctx *h)
{
	uint64_t pg, pg2;
	uint32_t ref, ref2;

	snprintf(h->expect, sizeof(h->expect), "OKAY or ERROR after revoking a used grant");
	if (!h->f->persistent) {
		snprintf(h->got, sizeof(h->got), "feature-persistent not negotiated");
		return H_SKIP;
	}
	if (h_data_page(h, false, &pg, &ref) < 0 || h_data_page(h, false, &pg2, &ref2) < 0) {
		return H_FAIL;
	}
	if (h_read_one(h, 0, ref, 0, 7, S_OKAY, "read, granted") != H_PASS) {
		return H_FAIL;
	}
	/* Revoke both: ref was used (maybe mapped), ref2 never. */
	__atomic_store_n(&h->f->gmem.gnttab[ref].flags, 0, __ATOMIC_RELEASE);
	__atomic_store_n(&h->f->gmem.gnttab[ref2].flags, 0, __ATOMIC_RELEASE);
	if (h_read_one(h, 0, ref, 0, 7, S_OKAY | S_ERROR, "read after revoking") != H_PASS) {
		return H_FAIL;
	}
	if (h_read_one(h, 0, ref2, 0, 7, S_ERROR, "read, never used, revoked") != H_PASS) {
		return H_FAIL;
	}
	/* Granted again (same page): served again. */
	vd_gmem_grant_set(&h->f->gmem, ref, h->f->be_domid, pg, false);
	return h_read_one(h, 0, ref, 0, 7, S_OKAY, "read, granted again");
}

/* ---------------- indirect cases ---------------- */

static bool need_indirect(struct hctx *h)
{
	if (h->f->feat.max_indirect == 0) {
		snprintf(h->expect, sizeof(h->expect), "ERROR");
		snprintf(h->got, sizeof(h->got), "no feature-max-indirect-segments");
		return false;
	}
	return true;
}

/*
 * An indirect read of nsegs segments, all pointing at one good page, in
 * nind indirect pages granted read-only (bad_ind: the first is not granted).
 */
static int h_indirect(struct hctx *h, uint8_t inner_op, unsigned int nsegs, bool bad_ind,
		      const char *what)
{
	unsigned int nind = VD_MAX(VD_DIV_ROUND_UP(nsegs, (unsigned int)VD_SG_SEGS_PER_PAGE), 1u);
	uint64_t data_pg;
	uint32_t data_ref;
	union hreq r;

	nind = VD_MIN(nind, (unsigned int)BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST);
	if (h_data_page(h, false, &data_pg, &data_ref) < 0) {
		return H_FAIL;
	}
	memset(&r, 0, sizeof(r));
	r.ind.operation = BLKIF_OP_INDIRECT;
	r.ind.indirect_op = inner_op;
	r.ind.nr_segments = (uint16_t)nsegs;
	for (unsigned int i = 0; i < nind; i++) {
		struct blkif_request_segment *seg;
		uint64_t pg;
		uint32_t ref;

		if (h_page(h, &pg) < 0) {
			return H_FAIL;
		}
		seg = vd_gmem_page(&h->f->gmem, pg);
		for (unsigned int s = 0; s < VD_SG_SEGS_PER_PAGE; s++) {
			seg[s] = (struct blkif_request_segment){ .gref = data_ref, .last_sect = 7 };
		}
		if (bad_ind && i == 0) {
			if (h_ungranted_ref(h, &ref) < 0) {
				return H_FAIL;
			}
		} else if (h_grant(h, pg, h->f->be_domid, true, &ref) < 0) {
			return H_FAIL;
		}
		r.ind.indirect_grefs[i] = ref;
	}
	return h_expect(h, &r, S_ERROR, what);
}

static int c_indirect_zero_segs(struct hctx *h)
{
	if (!need_indirect(h)) {
		return H_SKIP;
	}
	return h_indirect(h, BLKIF_OP_READ, 0, false, "indirect, 0 segments");
}

static int c_indirect_too_many_segs(struct hctx *h)
{
	uint32_t max = h->f->feat.max_indirect;

	if (!need_indirect(h)) {
		return H_SKIP;
	}
	if (max >= UINT16_MAX) {
		snprintf(h->got, sizeof(h->got), "max %u leaves no room above it", max);
		return H_SKIP;
	}
	return h_indirect(h, BLKIF_OP_READ, max + 1, false, "max + 1 segments");
}

static int c_indirect_bad_op(struct hctx *h)
{
	static const uint8_t ops[] = { BLKIF_OP_DISCARD, BLKIF_OP_INDIRECT,
				       BLKIF_OP_FLUSH_DISKCACHE };

	if (!need_indirect(h)) {
		return H_SKIP;
	}
	for (unsigned int i = 0; i < VD_ARRAY_SIZE(ops); i++) {
		char what[32];

		snprintf(what, sizeof(what), "indirect_op %u", ops[i]);
		if (h_indirect(h, ops[i], 1, false, what) != H_PASS) {
			return H_FAIL;
		}
	}
	return H_PASS;
}

static int c_indirect_page_not_granted(struct hctx *h)
{
	if (!need_indirect(h)) {
		return H_SKIP;
	}
	return h_indirect(h, BLKIF_OP_READ, 12, true, "ungranted indirect page");
}

/* ---------------- discard, flush, barrier ---------------- */

static int c_discard_past_end(struct hctx *h)
{
	const struct vd_be_features *b = &h->f->feat;
	unsigned int mask = b->discard ? S_ERROR : S_EOPNOTSUPP;
	union hreq r;

	if (b->readonly) {
		mask |= S_ERROR;
	}
	memset(&r, 0, sizeof(r));
	r.discard.operation = BLKIF_OP_DISCARD;
	r.discard.sector_number = b->sectors - 1;
	r.discard.nr_sectors = 16;
	if (h_expect(h, &r, mask, "discard across the end") != H_PASS) {
		return H_FAIL;
	}
	r.discard.sector_number = UINT64_MAX - 7;
	return h_expect(h, &r, mask, "discard range overflows");
}

static int c_flush_if_unsupported(struct hctx *h)
{
	const struct vd_be_features *b = &h->f->feat;
	unsigned int mask = b->flush ? S_OKAY : S_EOPNOTSUPP;
	union hreq r;

	if (b->flush && b->readonly) {
		mask |= S_ERROR;
	}
	rw_req(&r, BLKIF_OP_FLUSH_DISKCACHE, 0, 0, 0, 0, 0);
	return h_expect(h, &r, mask, b->flush ? "flush offered" : "flush not offered");
}

static int c_barrier_with_bad_seg(struct hctx *h)
{
	unsigned int mask = h->f->feat.barrier ? S_ERROR : (S_EOPNOTSUPP | S_ERROR);
	union hreq r;
	uint32_t ref;

	if (h_ungranted_ref(h, &ref) < 0) {
		return H_FAIL;
	}
	rw_req(&r, BLKIF_OP_WRITE_BARRIER, 0, 1, ref, 0, 7);
	return h_expect(h, &r, mask, "barrier, ungranted segment");
}

/*
 * A flush that carries data is a write then a flush (blkback: REQ_PREFLUSH
 * write; other frontends than Linux's send it). The page must land: read
 * it back, then put the old contents back for the verified workload.
 */
static int c_flush_with_data(struct hctx *h)
{
	const struct vd_be_features *b = &h->f->feat;
	const uint64_t sector = 8;
	uint64_t old_pg, new_pg, chk_pg;
	uint32_t old_ref, new_ref, chk_ref;
	uint8_t *pat, *chk;
	union hreq r;

	if (!b->flush || b->readonly) {
		return c_flush_if_unsupported(h);
	}
	if (h_data_page(h, false, &old_pg, &old_ref) < 0 ||
	    h_data_page(h, true, &new_pg, &new_ref) < 0 ||
	    h_data_page(h, false, &chk_pg, &chk_ref) < 0) {
		return H_FAIL;
	}
	pat = vd_gmem_page(&h->f->gmem, new_pg);
	chk = vd_gmem_page(&h->f->gmem, chk_pg);
	for (unsigned int i = 0; i < VD_PAGE_SIZE; i++) {
		pat[i] = (uint8_t)(0x5a ^ (i * 7u));
	}
	if (h_read_one(h, sector, old_ref, 0, 7, S_OKAY, "read the old page") != H_PASS) {
		return H_FAIL;
	}
	rw_req(&r, BLKIF_OP_FLUSH_DISKCACHE, sector, 1, new_ref, 0, 7);
	if (h_expect(h, &r, S_OKAY, "flush with one data page") != H_PASS) {
		return H_FAIL;
	}
	if (h_read_one(h, sector, chk_ref, 0, 7, S_OKAY, "read it back") != H_PASS) {
		return H_FAIL;
	}
	if (memcmp(chk, pat, VD_PAGE_SIZE) != 0) {
		snprintf(h->got, sizeof(h->got), "OKAY, but the flush's data was not written");
		return H_FAIL;
	}
	rw_req(&r, BLKIF_OP_WRITE, sector, 1, old_ref, 0, 7);
	return h_expect(h, &r, S_OKAY, "flush's data written; old page restored");
}

/* ---------------- ring abuse ---------------- */

static int c_prod_overflow(struct hctx *h)
{
	struct vd_fq *q = q0(h);
	RING_IDX bogus = q->ring.req_prod_pvt + vd_fq_ring_size(q) + 5;
	uint64_t deadline;
	struct blkif_response rsp;
	int state;

	snprintf(h->expect, sizeof(h->expect), "no response and backend Closing");
	__atomic_store_n(&q->sring->req_prod, bogus, __ATOMIC_RELEASE);
	(void)vd_hvc_evtchn_notify(h->f->hvc, q->port);
	deadline = vd_now_ns() + 2000000000ull;
	while (vd_now_ns() < deadline) {
		if (vd_fq_next_rsp(q, &rsp) > 0) {
			snprintf(h->got, sizeof(h->got), "a response (id 0x%llx)",
				 (unsigned long long)rsp.id);
			return H_FAIL;
		}
		(void)vd_fq_wait(q, 100);
	}
	state = vd_front_wait_be_state(
		h->f, STATE_BIT(XenbusStateClosing) | STATE_BIT(XenbusStateClosed), 5000);
	if (state < 0) {
		snprintf(h->got, sizeof(h->got), "no response, but the backend stayed connected");
		return H_FAIL;
	}
	snprintf(h->got, sizeof(h->got), "no response, backend state %d%s", state,
		 vd_front_be_has_error(h->f) ? " with an error node" : "");
	return H_PASS;
}

static int c_request_storm(struct hctx *h)
{
	struct vd_wl_result res;
	uint64_t ops;
	int rc;

	snprintf(h->expect, sizeof(h->expect), "100000 responses, all OKAY and verified");
	rc = h_workload(h, 100000, &res);
	ops = res.st.reads + res.st.writes;
	snprintf(h->got, sizeof(h->got),
		 "%" PRIu64 " responses, %" PRIu64 " I/O errors, %" PRIu64 " unknown ids, %" PRIu64
		 " verify errors, %" PRIu64 " IOPS",
		 ops, res.st.io_errors, res.st.unknown_ids, res.st.verify_errors,
		 res.elapsed_ns ? ops * UINT64_C(1000000000) / res.elapsed_ns : 0);
	return rc == 0 && ops == 100000 ? H_PASS : H_FAIL;
}

/* ---------------- handshake abuse ---------------- */

/*
 * Publish a configuration spoiled by tweak and check that the backend
 * refuses it (error node or Closing, never Connected), then close, and
 * check that the backend reaches Closed (it is still alive).
 */
static int h_refused_connect(struct hctx *h, vd_publish_tweak_fn tweak, void *arg, const char *what)
{
	struct vd_front *f = h->f;
	struct vd_err err = { 0 };
	int state, rc;

	snprintf(h->expect, sizeof(h->expect), "refused (error node or Closing), then Closed");
	(void)vd_front_set_state(f, XenbusStateInitialising);
	state = vd_front_wait_be_state(f, STATE_BIT(XenbusStateInitWait), 10000);
	if (state < 0 || vd_front_read_features(f, &err) < 0) {
		snprintf(h->got, sizeof(h->got), "backend not in InitWait (%s)", what);
		return H_FAIL;
	}
	vd_front_negotiate(f);
	for (unsigned int i = 0; i < f->nr_queues; i++) {
		if (vd_fq_create(f, i, &f->q[i]) < 0) {
			snprintf(h->got, sizeof(h->got), "guest setup failed");
			return H_FAIL;
		}
	}
	f->tweak = tweak;
	f->tweak_arg = arg;
	rc = vd_front_publish(f, &err);
	f->tweak = NULL;
	if (rc < 0 || vd_front_set_state(f, XenbusStateInitialised) < 0) {
		snprintf(h->got, sizeof(h->got), "publishing failed: %s", vd_err_msg(&err));
		return H_FAIL;
	}
	state = vd_front_wait_be_state(f,
				       STATE_BIT(XenbusStateConnected) |
					       STATE_BIT(XenbusStateClosing) |
					       STATE_BIT(XenbusStateClosed),
				       REFUSE_WAIT);
	if (state == XenbusStateConnected) {
		snprintf(h->got, sizeof(h->got), "Connected (%s)", what);
		return H_FAIL;
	}
	if (state < 0 && !vd_front_be_has_error(f)) {
		snprintf(h->got, sizeof(h->got), "neither an error node nor Closing (%s)", what);
		return H_FAIL;
	}
	if (vd_front_disconnect(f, &err) < 0) {
		snprintf(h->got, sizeof(h->got), "refused, but then not Closed (%s): %s", what,
			 vd_err_msg(&err));
		return H_FAIL;
	}
	snprintf(h->got, sizeof(h->got), "refused (%s), then Closed", what);
	return H_PASS;
}

/* After the refusals: a normal connect and verified I/O. */
static int h_reconnect_serves(struct hctx *h)
{
	struct vd_err err = { 0 };
	size_t n = strlen(h->got);

	if (vd_front_reconnect(h->f, &err) < 0) {
		snprintf(h->got + n, sizeof(h->got) - n, "; reconnect failed: %s",
			 vd_err_msg(&err));
		return H_FAIL;
	}
	return h_still_serves(h);
}

static void tw_write(struct vd_front *f, xs_transaction_t t, const char *key, const char *val)
{
	char path[512];

	snprintf(path, sizeof(path), "%s/%s", f->fe_path, key);
	(void)xs_write(f->xs, t, path, val, (unsigned int)strlen(val));
}

struct tw_kv {
	const char *key;
	const char *val;
};

static void tw_kv(struct vd_front *f, xs_transaction_t t, void *arg)
{
	for (const struct tw_kv *kv = arg; kv->key != NULL; kv++) {
		tw_write(f, t, kv->key, kv->val);
	}
}

static int c_bad_ring_ref(struct hctx *h)
{
	struct tw_kv kv[3] = { { NULL, NULL } };
	char val[16];
	uint32_t ref;

	if (h_ungranted_ref(h, &ref) < 0) {
		return H_FAIL;
	}
	snprintf(val, sizeof(val), "%u", ref);
	kv[0] = (struct tw_kv){ "ring-ref", val };
	if (h_refused_connect(h, tw_kv, kv, "ring-ref not granted") != H_PASS) {
		return H_FAIL;
	}
	return h_reconnect_serves(h);
}

static int c_bogus_evtchn(struct hctx *h)
{
	struct tw_kv kv[] = { { "event-channel", "9999" }, { NULL, NULL } };

	if (h_refused_connect(h, tw_kv, kv, "event-channel 9999") != H_PASS) {
		return H_FAIL;
	}
	return h_reconnect_serves(h);
}

static int c_garbage_xenstore(struct hctx *h)
{
	static const struct tw_kv cases[][3] = {
		{ { "ring-ref", "abc" }, { NULL, NULL } },
		{ { "ring-ref", "99999999999999999999999" }, { NULL, NULL } },
		{ { "ring-page-order", "4096" }, { "ring-ref0", "8" }, { NULL, NULL } },
		{ { "multi-queue-num-queues", "0" }, { NULL, NULL } },
		{ { "multi-queue-num-queues", "1000" }, { NULL, NULL } },
		{ { "event-channel", "-1" }, { NULL, NULL } },
		{ { "protocol", "x86_128-abi" }, { NULL, NULL } },
	};

	for (unsigned int i = 0; i < VD_ARRAY_SIZE(cases); i++) {
		char what[96];

		snprintf(what, sizeof(what), "%s=%s%s%s", cases[i][0].key, cases[i][0].val,
			 cases[i][1].key ? " " : "", cases[i][1].key ? cases[i][1].key : "");
		if (h_refused_connect(h, tw_kv, (void *)cases[i], what) != H_PASS) {
			return H_FAIL;
		}
	}
	snprintf(h->got, sizeof(h->got), "%zu garbage configurations refused, backend alive",
		 VD_ARRAY_SIZE(cases));
	return h_reconnect_serves(h);
}

static void flap_sleep(void)
{
	usleep(10000);
}

static int c_state_flap(struct hctx *h)
{
	static const int seq[] = { XenbusStateInitialised, XenbusStateInitialising,
				   XenbusStateInitialised, XenbusStateClosing };
	struct vd_front *f = h->f;
	struct vd_err err = { 0 };

	snprintf(h->expect, sizeof(h->expect), "backend survives, then connects and serves");
	if (vd_front_wait_be_state(f, STATE_BIT(XenbusStateInitWait), 10000) < 0 ||
	    vd_front_read_features(f, &err) < 0) {
		snprintf(h->got, sizeof(h->got), "backend not in InitWait");
		return H_FAIL;
	}
	vd_front_negotiate(f);
	for (unsigned int i = 0; i < f->nr_queues; i++) {
		if (vd_fq_create(f, i, &f->q[i]) < 0) {
			return H_FAIL;
		}
	}
	if (vd_front_publish(f, &err) < 0) {
		return H_FAIL;
	}
	for (unsigned int round = 0; round < 20; round++) {
		for (unsigned int i = 0; i < VD_ARRAY_SIZE(seq); i++) {
			(void)vd_front_set_state(f, seq[i]);
			flap_sleep();
		}
	}
	(void)vd_front_set_state(f, XenbusStateInitialised);
	flap_sleep();
	if (vd_front_disconnect(f, &err) < 0) {
		snprintf(h->got, sizeof(h->got), "after 20 flaps, close failed: %s",
			 vd_err_msg(&err));
		return H_FAIL;
	}
	snprintf(h->got, sizeof(h->got), "20 flaps survived");
	return h_reconnect_serves(h);
}

/* Per sector: old or new content; the model learns which. */
static int check_old_or_new(struct hctx *h, const uint8_t *buf, uint64_t off, uint32_t gen)
{
	struct vd_model *m = h->model;
	uint32_t unit = m->unit_bytes;
	int bad = 0;

	for (uint64_t u = 0; u < VD_PAGE_SIZE; u += unit) {
		uint32_t old = vd_model_get(m, off + u);
		unsigned int n_old = 0, n_new = 0;

		for (uint64_t s = u; s < u + unit; s += VD_SECTOR_SIZE) {
			bool is_old = vd_sector_matches(m, buf + s, off + s, old);
			bool is_new = vd_sector_matches(m, buf + s, off + s, gen);

			n_old += is_old;
			n_new += is_new && !is_old;
			bad += !is_old && !is_new;
		}
		if (n_new == unit / VD_SECTOR_SIZE) {
			vd_model_set(m, off + u, unit, gen);
		} else if (n_new > 0) {
			vd_model_set(m, off + u, unit,
				     VD_GEN_UNKNOWN); /* torn: either per sector */
		}
	}
	return bad;
}

static int c_disconnect_inflight(struct hctx *h)
{
	struct vd_front *f = h->f;
	uint64_t size = f->feat.sectors * VD_SECTOR_SIZE;
	uint64_t stride = VD_MAX(size / 32 / VD_PAGE_SIZE, 1u) * VD_PAGE_SIZE;
	unsigned int n = (unsigned int)VD_MIN(32u, size / VD_PAGE_SIZE);
	uint32_t gen0 = 0x40000000u;
	struct vd_err err = { 0 };
	unsigned int bad = 0;

	snprintf(h->expect, sizeof(h->expect),
		 "Closed, then each sector old or new, then verified I/O");
	if (h_model(h) < 0 || f->feat.readonly || n == 0) {
		snprintf(h->got, sizeof(h->got), "needs a writable disk of >= 4 KiB");
		return f->feat.readonly ? H_SKIP : H_FAIL;
	}
	for (unsigned int i = 0; i < n; i++) {
		uint64_t pg;
		uint32_t ref;
		union hreq r;

		if (h_data_page(h, true, &pg, &ref) < 0) {
			return H_FAIL;
		}
		vd_model_fill(h->model, vd_gmem_page(&f->gmem, pg), i * stride, VD_PAGE_SIZE,
			      gen0 + i);
		rw_req(&r, BLKIF_OP_WRITE, i * stride / VD_SECTOR_SIZE, 1, ref, 0, 7);
		r.rw.id = H_ID + 0x1000 + i;
		if (vd_fq_put_raw(q0(h), &r, sizeof(r)) < 0) {
			return H_FAIL;
		}
	}
	(void)vd_fq_kick(q0(h));
	if (vd_front_disconnect(f, &err) < 0) {
		snprintf(h->got, sizeof(h->got), "backend did not close: %s", vd_err_msg(&err));
		return H_FAIL;
	}
	h_release(h); /* the backend is Closed: it has let go of the grants */
	if (vd_front_reconnect(f, &err) < 0) {
		snprintf(h->got, sizeof(h->got), "Closed, but reconnect failed: %s",
			 vd_err_msg(&err));
		return H_FAIL;
	}
	for (unsigned int i = 0; i < n; i++) {
		uint64_t pg;
		uint32_t ref;

		if (h_data_page(h, false, &pg, &ref) < 0 ||
		    h_read_one(h, i * stride / VD_SECTOR_SIZE, ref, 0, 7, S_OKAY, "read back") !=
			    H_PASS) {
			return H_FAIL;
		}
		bad += (unsigned int)check_old_or_new(h, vd_gmem_page(&f->gmem, pg), i * stride,
						      gen0 + i);
	}
	snprintf(h->got, sizeof(h->got), "Closed, %u sector(s) neither old nor new", bad);
	if (bad != 0) {
		return H_FAIL;
	}
	return h_still_serves(h);
}

/* ---------------- the table ---------------- */

enum {
	F_CONNECT = 1u << 0, /* connect normally before the case */
	F_SERVES = 1u << 1,  /* then a short verified workload must pass */
};

struct hcase {
	const char *name;
	int (*run)(struct hctx *h);
	unsigned int flags;
};

static const struct hcase g_cases[] = {
	{ "unknown-op", c_unknown_op, F_CONNECT | F_SERVES },
	{ "read-zero-segs", c_read_zero_segs, F_CONNECT | F_SERVES },
	{ "too-many-direct-segs", c_too_many_direct_segs, F_CONNECT | F_SERVES },
	{ "first-gt-last", c_first_gt_last, F_CONNECT | F_SERVES },
	{ "last-sect-8", c_last_sect_8, F_CONNECT | F_SERVES },
	{ "sector-past-end", c_sector_past_end, F_CONNECT | F_SERVES },
	{ "sector-overflow", c_sector_overflow, F_CONNECT | F_SERVES },
	{ "write-readonly", c_write_readonly, F_CONNECT | F_SERVES },
	{ "gref-out-of-range", c_gref_out_of_range, F_CONNECT | F_SERVES },
	{ "gref-not-granted", c_gref_not_granted, F_CONNECT | F_SERVES },
	{ "gref-other-domain", c_gref_other_domain, F_CONNECT | F_SERVES },
	{ "gref-readonly-for-read", c_gref_readonly_for_read, F_CONNECT | F_SERVES },
	{ "persistent-readonly", c_persistent_readonly, F_CONNECT | F_SERVES },
	{ "persistent-revoked", c_persistent_revoked, F_CONNECT | F_SERVES },
	{ "indirect-zero-segs", c_indirect_zero_segs, F_CONNECT | F_SERVES },
	{ "indirect-too-many-segs", c_indirect_too_many_segs, F_CONNECT | F_SERVES },
	{ "indirect-bad-op", c_indirect_bad_op, F_CONNECT | F_SERVES },
	{ "indirect-page-not-granted", c_indirect_page_not_granted, F_CONNECT | F_SERVES },
	{ "discard-past-end", c_discard_past_end, F_CONNECT | F_SERVES },
	{ "flush-if-unsupported", c_flush_if_unsupported, F_CONNECT | F_SERVES },
	{ "barrier-with-bad-seg", c_barrier_with_bad_seg, F_CONNECT | F_SERVES },
	{ "flush-with-data", c_flush_with_data, F_CONNECT | F_SERVES },
	{ "prod-overflow", c_prod_overflow, F_CONNECT },
	{ "request-storm", c_request_storm, F_CONNECT },
	{ "bad-ring-ref", c_bad_ring_ref, 0 },
	{ "bogus-evtchn", c_bogus_evtchn, 0 },
	{ "state-flap", c_state_flap, 0 },
	{ "disconnect-inflight", c_disconnect_inflight, F_CONNECT },
	{ "garbage-xenstore", c_garbage_xenstore, 0 },
};

void vd_hostile_list(FILE *f)
{
	for (unsigned int i = 0; i < VD_ARRAY_SIZE(g_cases); i++) {
		fprintf(f, "%s\n", g_cases[i].name);
	}
}

static const struct hcase *find_case(const char *name)
{
	for (unsigned int i = 0; i < VD_ARRAY_SIZE(g_cases); i++) {
		if (strcmp(g_cases[i].name, name) == 0) {
			return &g_cases[i];
		}
	}
	return NULL;
}

bool vd_hostile_exists(const char *name)
{
	return find_case(name) != NULL;
}

int vd_hostile_run(struct vd_front *f, const char *name)
{
	const struct hcase *c = find_case(name);
	struct hctx h;
	struct vd_err err = { 0 };
	int r;

	if (c == NULL) {
		return 2;
	}
	memset(&h, 0, sizeof(h));
	h.f = f;
	h.wl_seed = f->opts->seed;
	if ((c->flags & F_CONNECT) && vd_front_connect(f, &err) < 0) {
		snprintf(h.got, sizeof(h.got), "no connection: %s", vd_err_msg(&err));
		r = H_FAIL;
	} else if ((c->flags & F_CONNECT) && h_model(&h) < 0) {
		snprintf(h.got, sizeof(h.got), "no verification model for this disk");
		r = H_FAIL;
	} else {
		r = c->run(&h);
	}
	if (r == H_PASS && (c->flags & F_SERVES)) {
		r = h_still_serves(&h);
	}
	printf("hostile %s: expected %s, got %s: %s\n", name, h.expect, h.got,
	       r == H_PASS ? "PASS" : (r == H_SKIP ? "SKIP" : "FAIL"));
	(void)fflush(stdout);
	vd_model_destroy(h.model);
	/* grants of a case that failed may still be in the backend's hands */
	if (r == H_PASS || f->q[0] == NULL) {
		h_release(&h);
	}
	return r == H_PASS ? 0 : (r == H_SKIP ? 77 : 1);
}
