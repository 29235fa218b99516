/*
 * Fuzz the guest boundary of blkif: the input is a ring as a hostile
 * frontend could leave it, plus the VBD limits and indirect pages.
 *
 * Input layout (all little-endian; short inputs are zero-padded):
 *   [0]      ABI (mod 3: native, x86_32, x86_64)
 *   [1]      flags: 1 readonly, 2 flush, 4 barrier, 8 discard,
 *            0x10 discard-secure, 0x20 4096-byte sectors, 0x40 two ring pages
 *   [2..3]   max_indirect_segs
 *   [4..11]  size_bytes
 *   [12..15] initial rsp_prod (the backend attaches there)
 *   [16..19] req_prod - rsp_prod (the guest may claim anything)
 *   [20..]   the ring's entries (from offset 64 of the shared ring), then
 *            the contents of the indirect pages, repeated as needed.
 *
 * Invariants checked: whatever validate accepts lies inside the disk and
 * our maxima; nothing reads or writes outside the ring or the request.
 */
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "blkif/blkif.h"
#include "common/compiler.h"
#include "fuzz.h"

#define HDR            20
#define RING_MAX_PAGES 2

static _Alignas(4096) uint8_t g_ring[RING_MAX_PAGES * 4096];
static _Alignas(4096) uint8_t g_ind[BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST][4096];
static struct vd_blkif_req g_req;

static uint64_t le(const uint8_t *p, unsigned int n)
{
	uint64_t v = 0;

	for (unsigned int i = 0; i < n; i++) {
		v |= (uint64_t)p[i] << (8 * i);
	}
	return v;
}

static void check(bool ok)
{
	if (!ok) {
		abort();
	}
}

static void check_accepted(const struct vd_blkif_req *req, const struct vd_blkif_limits *lim)
{
	check(req->offset_bytes <= lim->size_bytes);
	check(req->len_bytes <= lim->size_bytes - req->offset_bytes);
	check(req->offset_bytes % 512 == 0 && req->len_bytes % 512 == 0);
	if (lim->sector_bytes == 4096) {
		check(req->offset_bytes % 4096 == 0 && req->len_bytes % 4096 == 0);
	}
	if (req->indirect) {
		check(req->op == BLKIF_OP_READ || req->op == BLKIF_OP_WRITE);
		check(req->nr_segs >= 1 && req->nr_segs <= VD_BLKIF_MAX_INDIRECT_SEGS);
		check(req->nr_segs <= lim->max_indirect_segs);
		check(req->nr_indirect_pages <= VD_BLKIF_MAX_INDIRECT_PAGES);
	} else if (req->op == BLKIF_OP_READ || req->op == BLKIF_OP_WRITE) {
		check(req->nr_segs >= 1 && req->nr_segs <= BLKIF_MAX_SEGMENTS_PER_REQUEST);
	} else if (req->op == BLKIF_OP_DISCARD) {
		check(lim->discard && !lim->readonly && req->len_bytes > 0);
	} else {
		check(req->op == BLKIF_OP_FLUSH_DISKCACHE || req->op == BLKIF_OP_WRITE_BARRIER);
		check(req->nr_segs <= BLKIF_MAX_SEGMENTS_PER_REQUEST);
	}
	if (lim->readonly) {
		check(req->op == BLKIF_OP_READ);
	}
	if (req->op != BLKIF_OP_DISCARD && (!req->indirect || req->indirect_segs_set)) {
		uint64_t sectors = 0;

		for (unsigned int i = 0; i < req->nr_segs; i++) {
			check(req->seg[i].first_sect <= req->seg[i].last_sect);
			check(req->seg[i].last_sect < 8);
			sectors += (uint64_t)req->seg[i].last_sect - req->seg[i].first_sect + 1;
		}
		check(sectors * 512 == req->len_bytes);
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	uint8_t hdr[HDR];
	struct vd_blkif_limits lim;
	struct vd_blkif_ring r;
	const void *pages[BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST];
	enum vd_blkif_abi abi;
	unsigned int nr_pages;
	size_t ring_bytes, body_len, ind_len;
	const uint8_t *body;
	uint32_t rsp_prod, req_prod;
	int n, guard;

	memset(hdr, 0, sizeof(hdr));
	memcpy(hdr, data, VD_MIN(size, sizeof(hdr)));
	body = size > HDR ? data + HDR : NULL;
	body_len = size > HDR ? size - HDR : 0;

	abi = (enum vd_blkif_abi)(hdr[0] % 3);
	memset(&lim, 0, sizeof(lim));
	lim.readonly = hdr[1] & 0x01;
	lim.flush = hdr[1] & 0x02;
	lim.barrier = hdr[1] & 0x04;
	lim.discard = hdr[1] & 0x08;
	lim.discard_secure = hdr[1] & 0x10;
	lim.sector_bytes = (hdr[1] & 0x20) ? 4096 : 512;
	nr_pages = (hdr[1] & 0x40) ? 2 : 1;
	lim.max_indirect_segs = (uint16_t)le(&hdr[2], 2);
	lim.size_bytes = le(&hdr[4], 8);
	rsp_prod = (uint32_t)le(&hdr[12], 4);
	req_prod = rsp_prod + (uint32_t)le(&hdr[16], 4);

	/* The shared ring: indices in the header, entries from the input. */
	memset(g_ring, 0, sizeof(g_ring));
	ring_bytes = nr_pages * 4096 - 64;
	if (body_len > 0) {
		memcpy(g_ring + 64, body, VD_MIN(body_len, ring_bytes));
	}
	/* Indirect pages: whatever follows, repeated; zeros if nothing does. */
	memset(g_ind, 0, sizeof(g_ind));
	ind_len = body_len > ring_bytes ? body_len - ring_bytes : 0;
	if (ind_len > 0) {
		for (size_t off = 0; off < sizeof(g_ind); off += ind_len) {
			memcpy((uint8_t *)g_ind + off, body + ring_bytes,
			       VD_MIN(ind_len, sizeof(g_ind) - off));
		}
	}
	for (unsigned int i = 0; i < BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST; i++) {
		pages[i] = g_ind[i];
	}

	{
		struct blkif_sring *s = (struct blkif_sring *)g_ring;

		s->rsp_prod = rsp_prod;
		s->req_prod = req_prod;
		s->rsp_event = rsp_prod + 1;
	}
	check(vd_blkif_ring_init(&r, abi, g_ring, nr_pages) == 0);
	check(r.nr_ents == 32 * nr_pages);

	/* A bounded number of passes: the guest cannot make us spin. */
	for (guard = 0; guard < 4; guard++) {
		n = vd_blkif_ring_pending(&r);
		if (n < 0) {
			/* Overflow: the ring must be halted, and it really is bad. */
			check(req_prod - r.rsp_prod_pvt > r.nr_ents ||
			      req_prod - r.req_cons > r.nr_ents);
			break;
		}
		check((unsigned int)n <= r.nr_ents);
		check(r.nr_in_flight + (unsigned int)n <= r.nr_ents);
		for (int i = 0; i < n; i++) {
			const char *why = NULL;
			int st;

			vd_blkif_ring_get(&r, &g_req);
			st = vd_blkif_req_validate(&g_req, &lim, &why);
			if (st == BLKIF_RSP_OKAY && g_req.indirect) {
				check(g_req.len_bytes == 0);
				vd_blkif_req_set_indirect_segs(&g_req, pages);
				st = vd_blkif_req_validate(&g_req, &lim, &why);
			}
			if (st == BLKIF_RSP_OKAY) {
				check(why == NULL);
				check_accepted(&g_req, &lim);
			} else {
				check(st == BLKIF_RSP_ERROR || st == BLKIF_RSP_EOPNOTSUPP);
				check(why != NULL && why[0] != '\0');
			}
			vd_blkif_ring_put_rsp(&r, g_req.id, g_req.wire_op, (int16_t)st);
		}
		(void)vd_blkif_ring_push_rsps(&r);
		check(r.nr_in_flight == 0);
		if (vd_blkif_ring_final_check(&r) == 0) {
			break;
		}
	}
	return 0;
}
