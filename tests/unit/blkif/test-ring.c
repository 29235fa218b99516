/*
 * The backend ring against a frontend in plain memory that uses
 * xen/io/ring.h's FRONT_RING macros.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "common/compiler.h"
/* ring.h's FRONT macros use xen_mb(), which is mb() for the default
 * interface version: the frontend's barriers. */
#define mb()  vd_smp_mb()
#define rmb() vd_smp_rmb()
#define wmb() vd_smp_wmb()
#include "blkif-test.h"

#define MAX_PAGES VD_BLKIF_MAX_RING_PAGES
static _Alignas(4096) uint8_t g_mem[MAX_PAGES * 4096];

static void test_init(void **state)
{
	static const enum vd_blkif_abi abis[] = { VD_BLKIF_ABI_NATIVE, VD_BLKIF_ABI_X86_32,
						  VD_BLKIF_ABI_X86_64 };
	struct vd_blkif_ring r;

	memset(g_mem, 0, sizeof(g_mem));
	for (size_t i = 0; i < 3; i++) {
		assert_int_equal(vd_blkif_ring_init(&r, abis[i], g_mem, 1), 0);
		assert_int_equal(r.nr_ents, 32);
		assert_int_equal(vd_blkif_ring_init(&r, abis[i], g_mem, 2), 0);
		assert_int_equal(r.nr_ents, 64);
		assert_int_equal(vd_blkif_ring_init(&r, abis[i], g_mem, 16), 0);
		assert_int_equal(r.nr_ents, 512);
		assert_int_equal(r.req_cons, 0);
		assert_int_equal(r.rsp_prod_pvt, 0);
		assert_int_equal(r.nr_in_flight, 0);
		assert_int_equal(vd_blkif_ring_init(&r, abis[i], g_mem, 0), -EINVAL);
		assert_int_equal(vd_blkif_ring_init(&r, abis[i], g_mem, 3), -EINVAL);
		assert_int_equal(vd_blkif_ring_init(&r, abis[i], g_mem, 32), -EINVAL);
		assert_int_equal(vd_blkif_ring_init(&r, abis[i], NULL, 1), -EINVAL);
	}
	assert_int_equal(vd_blkif_ring_init(&r, (enum vd_blkif_abi)7, g_mem, 1), -EINVAL);

	/* Same sizes as the ring.h macros compute. */
	assert_int_equal(__CONST_RING_SIZE(blkif, 4096), 32);
	assert_int_equal(__CONST_RING_SIZE(vd_blkif_x86_32, 4096 * 16), 512);
}

/* Frontend pushes n native read requests with ids base..base+n-1. */
static bool front_push(struct blkif_front_ring *f, unsigned int n, uint64_t base)
{
	bool notify;

	for (unsigned int i = 0; i < n; i++) {
		struct blkif_request *req = RING_GET_REQUEST(f, f->req_prod_pvt);

		memset(req, 0, sizeof(*req));
		req->operation = BLKIF_OP_READ;
		req->nr_segments = 1;
		req->id = base + i;
		req->sector_number = base + i;
		req->seg[0].gref = 7;
		req->seg[0].last_sect = 7;
		f->req_prod_pvt++;
	}
	RING_PUSH_REQUESTS_AND_CHECK_NOTIFY(f, notify);
	return notify;
}

static void test_roundtrip_native(void **state)
{
	struct blkif_sring *s = (struct blkif_sring *)g_mem;
	struct blkif_front_ring f;
	struct vd_blkif_ring r;
	struct vd_blkif_req req;
	int more;

	memset(g_mem, 0, 4096);
	SHARED_RING_INIT(s);
	FRONT_RING_INIT(&f, s, 4096);
	assert_int_equal(vd_blkif_ring_init(&r, VD_BLKIF_ABI_NATIVE, s, 1), 0);

	assert_int_equal(vd_blkif_ring_pending(&r), 0);
	/* idle: final check arms req_event, and the frontend will then notify */
	assert_int_equal(vd_blkif_ring_final_check(&r), 0);
	assert_int_equal(s->req_event, 1);
	assert_true(front_push(&f, 3, 100));
	assert_int_equal(vd_blkif_ring_pending(&r), 3);
	/* req_event not re-armed: the frontend does not notify again */
	assert_false(front_push(&f, 1, 103));
	assert_int_equal(vd_blkif_ring_final_check(&r), 4);

	for (unsigned int i = 0; i < 4; i++) {
		vd_blkif_ring_get(&r, &req);
		assert_int_equal(req.id, 100 + i);
		assert_int_equal(req.sector_number, 100 + i);
		assert_int_equal(req.nr_segs, 1);
	}
	assert_int_equal(r.nr_in_flight, 4);
	assert_int_equal(vd_blkif_ring_pending(&r), 0);

	/* The frontend waits for responses: rsp_event = rsp_cons + 1. */
	RING_FINAL_CHECK_FOR_RESPONSES(&f, more);
	assert_int_equal(more, 0);
	/* Answer out of order: ids are echoed, not positions. */
	vd_blkif_ring_put_rsp(&r, 102, BLKIF_OP_READ, BLKIF_RSP_OKAY);
	vd_blkif_ring_put_rsp(&r, 100, BLKIF_OP_READ, BLKIF_RSP_ERROR);
	assert_int_equal(r.nr_in_flight, 2);
	/* not visible before push */
	assert_int_equal(s->rsp_prod, 0);
	assert_true(vd_blkif_ring_push_rsps(&r));
	assert_int_equal(s->rsp_prod, 2);
	/* The frontend has not consumed: no new rsp_event, no notify. */
	vd_blkif_ring_put_rsp(&r, 101, BLKIF_OP_READ, BLKIF_RSP_EOPNOTSUPP);
	assert_false(vd_blkif_ring_push_rsps(&r));

	assert_true(RING_HAS_UNCONSUMED_RESPONSES(&f));
	{
		struct blkif_response *p = RING_GET_RESPONSE(&f, f.rsp_cons);

		assert_int_equal(p->id, 102);
		assert_int_equal(p->operation, BLKIF_OP_READ);
		assert_int_equal(p->status, BLKIF_RSP_OKAY);
		p = RING_GET_RESPONSE(&f, f.rsp_cons + 1);
		assert_int_equal(p->id, 100);
		assert_int_equal(p->status, BLKIF_RSP_ERROR);
		p = RING_GET_RESPONSE(&f, f.rsp_cons + 2);
		assert_int_equal(p->id, 101);
		assert_int_equal(p->status, BLKIF_RSP_EOPNOTSUPP);
		f.rsp_cons += 3;
	}
	RING_FINAL_CHECK_FOR_RESPONSES(&f, more);
	assert_int_equal(more, 0);
	vd_blkif_ring_put_rsp(&r, 103, BLKIF_OP_READ, BLKIF_RSP_OKAY);
	assert_true(vd_blkif_ring_push_rsps(&r));
	assert_int_equal(r.nr_in_flight, 0);
}

static void test_full_and_overflow(void **state)
{
	struct blkif_sring *s = (struct blkif_sring *)g_mem;
	struct blkif_front_ring f;
	struct vd_blkif_ring r;
	struct vd_blkif_req req;

	memset(g_mem, 0, 4096);
	SHARED_RING_INIT(s);
	FRONT_RING_INIT(&f, s, 4096);
	assert_int_equal(vd_blkif_ring_init(&r, VD_BLKIF_ABI_NATIVE, s, 1), 0);

	front_push(&f, 32, 0);
	assert_true(RING_FULL(&f));
	assert_int_equal(vd_blkif_ring_pending(&r), 32);
	for (unsigned int i = 0; i < 32; i++) {
		vd_blkif_ring_get(&r, &req);
	}
	assert_int_equal(vd_blkif_ring_pending(&r), 0);
	/* A hostile frontend produces one more while all 32 are in flight. */
	s->req_prod = 33;
	assert_int_equal(vd_blkif_ring_pending(&r), -EPROTO);
	assert_int_equal(vd_blkif_ring_final_check(&r), -EPROTO);
	/* After one response there is room for exactly one. */
	vd_blkif_ring_put_rsp(&r, 0, BLKIF_OP_READ, 0);
	assert_int_equal(vd_blkif_ring_pending(&r), 1);
	/* req_prod moving backwards */
	s->req_prod = 31;
	assert_int_equal(vd_blkif_ring_pending(&r), -EPROTO);
	/* wildly out */
	s->req_prod = 0x80000000u;
	assert_int_equal(vd_blkif_ring_pending(&r), -EPROTO);
	s->req_prod = 33;
	assert_int_equal(vd_blkif_ring_pending(&r), 1);
}

/* Indices near 2^32 wrap; everything is modular. */
static void test_wrap(void **state)
{
	struct blkif_sring *s = (struct blkif_sring *)g_mem;
	struct blkif_front_ring f;
	struct vd_blkif_ring r;
	struct vd_blkif_req req;
	const RING_IDX start = 0xfffffff0u;
	uint64_t next_id = 0;

	memset(g_mem, 0, 4096);
	SHARED_RING_INIT(s);
	s->req_prod = s->rsp_prod = start;
	s->req_event = s->rsp_event = start + 1;
	FRONT_RING_ATTACH(&f, s, start, 4096);
	assert_int_equal(vd_blkif_ring_init(&r, VD_BLKIF_ABI_NATIVE, s, 1), 0);
	assert_int_equal(r.req_cons, start);

	for (unsigned int round = 0; round < 5; round++) {
		int n;

		front_push(&f, 20, round * 20);
		n = vd_blkif_ring_pending(&r);
		assert_int_equal(n, 20);
		for (int i = 0; i < n; i++) {
			vd_blkif_ring_get(&r, &req);
			assert_int_equal(req.id, next_id);
			next_id++;
			vd_blkif_ring_put_rsp(&r, req.id, req.wire_op, 0);
		}
		vd_blkif_ring_push_rsps(&r);
		for (int i = 0; i < n; i++) {
			struct blkif_response *p = RING_GET_RESPONSE(&f, f.rsp_cons);

			assert_int_equal(p->id, round * 20 + i);
			f.rsp_cons++;
		}
	}
	assert_true(r.req_cons < start); /* wrapped */
	assert_int_equal(vd_blkif_ring_final_check(&r), 0);
	assert_int_equal(s->req_event, r.req_cons + 1);
}

/* x86_32 ring with its own FRONT_RING types: 108-byte entries. */
static void test_x86_32_ring(void **state)
{
	struct vd_blkif_x86_32_sring *s = (struct vd_blkif_x86_32_sring *)g_mem;
	struct vd_blkif_x86_32_front_ring f;
	struct vd_blkif_ring r;
	struct vd_blkif_req req;

	memset(g_mem, 0, 2 * 4096);
	SHARED_RING_INIT(s);
	FRONT_RING_INIT(&f, s, 2 * 4096);
	assert_int_equal(RING_SIZE(&f), 64);
	assert_int_equal(vd_blkif_ring_init(&r, VD_BLKIF_ABI_X86_32, s, 2), 0);
	assert_int_equal(r.nr_ents, 64);

	for (unsigned int i = 0; i < 3; i++) {
		struct vd_blkif_x86_32_request *q = RING_GET_REQUEST(&f, f.req_prod_pvt);

		memset(q, 0, sizeof(*q));
		q->operation = BLKIF_OP_WRITE;
		q->u.rw.nr_segments = 1;
		q->u.rw.id = 0xabc0 + i;
		q->u.rw.sector_number = 8 * i;
		q->u.rw.seg[0].gref = 40 + i;
		q->u.rw.seg[0].last_sect = 7;
		f.req_prod_pvt++;
	}
	RING_PUSH_REQUESTS(&f);
	assert_int_equal(vd_blkif_ring_pending(&r), 3);
	for (unsigned int i = 0; i < 3; i++) {
		vd_blkif_ring_get(&r, &req);
		assert_int_equal(req.op, BLKIF_OP_WRITE);
		assert_int_equal(req.id, 0xabc0 + i);
		assert_int_equal(req.sector_number, 8 * i);
		assert_int_equal(req.seg[0].gref, 40 + i);
		vd_blkif_ring_put_rsp(&r, req.id, req.wire_op, (int16_t)-i);
	}
	vd_blkif_ring_push_rsps(&r);
	assert_int_equal(s->rsp_prod, 3);
	for (unsigned int i = 0; i < 3; i++) {
		struct vd_blkif_x86_32_response *p = RING_GET_RESPONSE(&f, i);
		uint8_t *raw = g_mem + 64 + i * 108;
		int16_t st;

		assert_int_equal(p->id, 0xabc0 + i);
		assert_int_equal(p->operation, BLKIF_OP_WRITE);
		assert_int_equal(p->status, -(int)i);
		/* the wire: status at byte 10 of a 108-byte entry */
		memcpy(&st, raw + 10, 2);
		assert_int_equal(st, -(int)i);
		assert_int_equal(raw[8], BLKIF_OP_WRITE);
	}
}

/* The slot is copied once: changing it after get does not change req. */
static void test_private_copy(void **state)
{
	struct blkif_sring *s = (struct blkif_sring *)g_mem;
	struct blkif_front_ring f;
	struct vd_blkif_ring r;
	struct vd_blkif_req req;
	struct blkif_request *slot;

	memset(g_mem, 0, 4096);
	SHARED_RING_INIT(s);
	FRONT_RING_INIT(&f, s, 4096);
	assert_int_equal(vd_blkif_ring_init(&r, VD_BLKIF_ABI_X86_64, s, 1), 0);
	front_push(&f, 1, 55);
	vd_blkif_ring_get(&r, &req);
	slot = RING_GET_REQUEST(&f, 0);
	slot->nr_segments = 200;
	slot->seg[0].last_sect = 99;
	assert_int_equal(req.nr_segs, 1);
	assert_int_equal(req.seg[0].last_sect, 7);
	assert_int_equal(req.id, 55);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_init),
		cmocka_unit_test(test_roundtrip_native),
		cmocka_unit_test(test_full_and_overflow),
		cmocka_unit_test(test_wrap),
		cmocka_unit_test(test_x86_32_ring),
		cmocka_unit_test(test_private_copy),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
