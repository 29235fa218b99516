/*
 * blkif request decoding and validation: every rule, in every ABI.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "blkif-test.h"

static const enum vd_blkif_abi abis[] = { VD_BLKIF_ABI_NATIVE, VD_BLKIF_ABI_X86_32,
					  VD_BLKIF_ABI_X86_64 };
#define FOR_EACH_ABI(a) for (size_t ai_ = 0; ai_ < 3 && ((a) = abis[ai_], 1); ai_++)

static _Alignas(4096) uint8_t g_page[4096];
static struct vd_blkif_req g_req;

#define SIZE_BYTES (1024ull * 1024 * 1024) /* 1 GiB = 2097152 sectors */

static struct vd_blkif_limits lim_all(void)
{
	struct vd_blkif_limits l = {
		.size_bytes = SIZE_BYTES,
		.sector_bytes = 512,
		.readonly = false,
		.flush = true,
		.barrier = true,
		.discard = true,
		.discard_secure = true,
		.max_indirect_segs = 256,
	};
	return l;
}

/* Put w on a fresh ring as the frontend, and take it off as the backend. */
static struct vd_blkif_req *get(enum vd_blkif_abi abi, const struct wreq *w)
{
	struct vd_blkif_ring r;
	struct blkif_sring *s = (struct blkif_sring *)g_page;

	memset(g_page, 0, sizeof(g_page));
	memset(&g_req, 0xa5, sizeof(g_req)); /* stale data must not leak through */
	test_encode(abi, g_page, 32, 0, w);
	s->req_prod = 1;
	assert_int_equal(vd_blkif_ring_init(&r, abi, g_page, 1), 0);
	assert_int_equal(vd_blkif_ring_pending(&r), 1);
	vd_blkif_ring_get(&r, &g_req);
	return &g_req;
}

static int check(enum vd_blkif_abi abi, const struct wreq *w, const struct vd_blkif_limits *l,
		 const char **why)
{
	struct vd_blkif_req *req = get(abi, w);
	int rc;

	*why = NULL;
	rc = vd_blkif_req_validate(req, l, why);
	if (rc != BLKIF_RSP_OKAY) {
		assert_non_null(*why);
		assert_true(strlen(*why) > 0);
	}
	return rc;
}

static struct wreq rw(uint8_t op, uint8_t nr, uint64_t sector)
{
	struct wreq w;

	memset(&w, 0, sizeof(w));
	w.op = op;
	w.nr = nr;
	w.id = 0x1122334455667788ull;
	w.sector = sector;
	for (unsigned int i = 0; i < BLKIF_MAX_SEGMENTS_PER_REQUEST; i++) {
		w.seg[i].gref = 100 + i;
		w.seg[i].first_sect = 0;
		w.seg[i].last_sect = 7;
	}
	return w;
}

static void test_read_write_ok(void **state)
{
	enum vd_blkif_abi abi;
	struct vd_blkif_limits l = lim_all();
	const char *why;

	FOR_EACH_ABI(abi)
	{
		struct wreq w = rw(BLKIF_OP_READ, 3, 16);
		struct vd_blkif_req *req;

		w.seg[1].first_sect = 2;
		w.seg[1].last_sect = 2; /* 1 sector */
		req = get(abi, &w);
		assert_int_equal(req->op, BLKIF_OP_READ);
		assert_int_equal(req->wire_op, BLKIF_OP_READ);
		assert_false(req->indirect);
		assert_int_equal(req->nr_segs, 3);
		assert_int_equal(req->id, 0x1122334455667788ull);
		assert_int_equal(req->sector_number, 16);
		assert_int_equal(req->seg[0].gref, 100);
		assert_int_equal(req->seg[2].gref, 102);
		assert_int_equal(req->seg[1].first_sect, 2);
		assert_int_equal(vd_blkif_req_validate(req, &l, &why), BLKIF_RSP_OKAY);
		assert_int_equal(req->offset_bytes, 16 * 512);
		assert_int_equal(req->len_bytes, (8 + 1 + 8) * 512);

		w = rw(BLKIF_OP_WRITE, 11, 0);
		assert_int_equal(check(abi, &w, &l, &why), BLKIF_RSP_OKAY);
		assert_int_equal(g_req.len_bytes, 11 * 4096);
		assert_int_equal(g_req.op, BLKIF_OP_WRITE);
	}
}

static void test_nr_segments(void **state)
{
	enum vd_blkif_abi abi;
	struct vd_blkif_limits l = lim_all();
	const char *why;

	FOR_EACH_ABI(abi)
	{
		struct wreq w = rw(BLKIF_OP_READ, 0, 0);

		assert_int_equal(check(abi, &w, &l, &why), BLKIF_RSP_ERROR);
		w.op = BLKIF_OP_WRITE;
		assert_int_equal(check(abi, &w, &l, &why), BLKIF_RSP_ERROR);
		w.nr = 12;
		assert_int_equal(check(abi, &w, &l, &why), BLKIF_RSP_ERROR);
		assert_string_equal(why, "bad number of segments");
		w.nr = 255;
		w.op = BLKIF_OP_READ;
		assert_int_equal(check(abi, &w, &l, &why), BLKIF_RSP_ERROR);
		w.nr = 1;
		assert_int_equal(check(abi, &w, &l, &why), BLKIF_RSP_OKAY);
	}
}

static void test_segment_sectors(void **state)
{
	enum vd_blkif_abi abi;
	struct vd_blkif_limits l = lim_all();
	const char *why;

	FOR_EACH_ABI(abi)
	{
		struct wreq w = rw(BLKIF_OP_READ, 2, 0);

		w.seg[1].first_sect = 5;
		w.seg[1].last_sect = 4;
		assert_int_equal(check(abi, &w, &l, &why), BLKIF_RSP_ERROR);
		assert_string_equal(why, "bad segment sectors");
		w.seg[1].first_sect = 0;
		w.seg[1].last_sect = 8;
		assert_int_equal(check(abi, &w, &l, &why), BLKIF_RSP_ERROR);
		w.seg[1].first_sect = 8;
		w.seg[1].last_sect = 8;
		assert_int_equal(check(abi, &w, &l, &why), BLKIF_RSP_ERROR);
		w.seg[1].first_sect = 7;
		w.seg[1].last_sect = 7;
		assert_int_equal(check(abi, &w, &l, &why), BLKIF_RSP_OKAY);
		assert_int_equal(g_req.len_bytes, 4096 + 512);
		w.seg[1].first_sect = 255;
		w.seg[1].last_sect = 255;
		assert_int_equal(check(abi, &w, &l, &why), BLKIF_RSP_ERROR);
	}
}

static void test_4k_sectors(void **state)
{
	enum vd_blkif_abi abi;
	struct vd_blkif_limits l = lim_all();
	const char *why;

	l.sector_bytes = 4096;
	FOR_EACH_ABI(abi)
	{
		struct wreq w = rw(BLKIF_OP_WRITE, 2, 8);

		assert_int_equal(check(abi, &w, &l, &why), BLKIF_RSP_OKAY);
		w.sector = 9;
		assert_int_equal(check(abi, &w, &l, &why), BLKIF_RSP_ERROR);
		assert_string_equal(why, "sector number not aligned to sector-size");
		w.sector = 8;
		w.seg[1].first_sect = 1;
		assert_int_equal(check(abi, &w, &l, &why), BLKIF_RSP_ERROR);
		assert_string_equal(why, "segment not aligned to sector-size");
		w.seg[1].first_sect = 0;
		w.seg[1].last_sect = 3;
		assert_int_equal(check(abi, &w, &l, &why), BLKIF_RSP_ERROR);
		/* The same request is fine with 512-byte sectors. */
		l.sector_bytes = 512;
		assert_int_equal(check(abi, &w, &l, &why), BLKIF_RSP_OKAY);
		l.sector_bytes = 4096;
	}
}

static void test_range(void **state)
{
	enum vd_blkif_abi abi;
	struct vd_blkif_limits l = lim_all();
	const uint64_t nsect = SIZE_BYTES / 512;
	const char *why;

	FOR_EACH_ABI(abi)
	{
		struct wreq w = rw(BLKIF_OP_READ, 1, nsect - 8);

		assert_int_equal(check(abi, &w, &l, &why), BLKIF_RSP_OKAY); /* ends at size */
		assert_int_equal(g_req.offset_bytes + g_req.len_bytes, SIZE_BYTES);
		w.sector = nsect - 7;
		assert_int_equal(check(abi, &w, &l, &why), BLKIF_RSP_ERROR);
		assert_string_equal(why, "access beyond end of device");
		w.sector = nsect;
		assert_int_equal(check(abi, &w, &l, &why), BLKIF_RSP_ERROR);
		/* sector * 512 overflows 64 bits */
		w.sector = (UINT64_MAX >> 9) + 1;
		assert_int_equal(check(abi, &w, &l, &why), BLKIF_RSP_ERROR);
		w.sector = UINT64_MAX;
		assert_int_equal(check(abi, &w, &l, &why), BLKIF_RSP_ERROR);
		/* offset fits, offset + len does not: even an enormous disk refuses it */
		l.size_bytes = UINT64_MAX;
		w.sector = UINT64_MAX >> 9;
		assert_int_equal(check(abi, &w, &l, &why), BLKIF_RSP_ERROR);
		assert_string_equal(why, "sector range overflows");
		l.size_bytes = SIZE_BYTES;
	}
}

static void test_readonly(void **state)
{
	enum vd_blkif_abi abi;
	struct vd_blkif_limits l = lim_all();
	const char *why;

	l.readonly = true;
	FOR_EACH_ABI(abi)
	{
		struct wreq w = rw(BLKIF_OP_READ, 1, 0);

		assert_int_equal(check(abi, &w, &l, &why), BLKIF_RSP_OKAY);
		w.op = BLKIF_OP_WRITE;
		assert_int_equal(check(abi, &w, &l, &why), BLKIF_RSP_ERROR);
		assert_string_equal(why, "write to a read-only device");
		w.op = BLKIF_OP_WRITE_BARRIER;
		assert_int_equal(check(abi, &w, &l, &why), BLKIF_RSP_ERROR);
		w.op = BLKIF_OP_FLUSH_DISKCACHE;
		w.nr = 0;
		assert_int_equal(check(abi, &w, &l, &why), BLKIF_RSP_ERROR);
		w = rw(BLKIF_OP_DISCARD, 0, 0);
		w.nr_sectors = 8;
		assert_int_equal(check(abi, &w, &l, &why), BLKIF_RSP_ERROR);
		assert_string_equal(why, "discard on a read-only device");
	}
}

static void test_unknown_op(void **state)
{
	enum vd_blkif_abi abi;
	struct vd_blkif_limits l = lim_all();
	const char *why;
	const uint8_t ops[] = { BLKIF_OP_RESERVED_1, 7, 0x80, 0xff };

	FOR_EACH_ABI(abi)
	{
		for (size_t i = 0; i < sizeof(ops); i++) {
			struct wreq w = rw(ops[i], 1, 0);

			assert_int_equal(check(abi, &w, &l, &why), BLKIF_RSP_EOPNOTSUPP);
			assert_string_equal(why, "unknown operation");
			/* the id is still decoded, to answer */
			assert_int_equal(g_req.id, 0x1122334455667788ull);
			assert_int_equal(g_req.wire_op, ops[i]);
		}
	}
}

static void test_flush_barrier(void **state)
{
	enum vd_blkif_abi abi;
	struct vd_blkif_limits l = lim_all();
	const char *why;

	FOR_EACH_ABI(abi)
	{
		struct wreq w = rw(BLKIF_OP_FLUSH_DISKCACHE, 0, 0);

		assert_int_equal(check(abi, &w, &l, &why), BLKIF_RSP_OKAY);
		assert_int_equal(g_req.len_bytes, 0);
		w.nr = 2; /* flush with data */
		w.sector = 8;
		assert_int_equal(check(abi, &w, &l, &why), BLKIF_RSP_OKAY);
		assert_int_equal(g_req.offset_bytes, 4096);
		assert_int_equal(g_req.len_bytes, 8192);
		w.nr = 12;
		assert_int_equal(check(abi, &w, &l, &why), BLKIF_RSP_ERROR);
		w.nr = 1;
		w.seg[0].first_sect = 3;
		w.seg[0].last_sect = 1;
		assert_int_equal(check(abi, &w, &l, &why), BLKIF_RSP_ERROR);
		/*
		 * An empty flush as Linux blkfront sends it: sector (sector_t)-1,
		 * also with 4 KiB sectors; the same sector with data is refused.
		 */
		w = rw(BLKIF_OP_FLUSH_DISKCACHE, 0, UINT64_MAX);
		assert_int_equal(check(abi, &w, &l, &why), BLKIF_RSP_OKAY);
		assert_int_equal(g_req.offset_bytes, 0);
		assert_int_equal(g_req.len_bytes, 0);
		l.sector_bytes = 4096;
		assert_int_equal(check(abi, &w, &l, &why), BLKIF_RSP_OKAY);
		l.sector_bytes = 512;
		w = rw(BLKIF_OP_WRITE_BARRIER, 0, UINT64_MAX);
		assert_int_equal(check(abi, &w, &l, &why), BLKIF_RSP_OKAY);
		assert_int_equal(g_req.len_bytes, 0);
		w = rw(BLKIF_OP_FLUSH_DISKCACHE, 1, UINT64_MAX);
		assert_int_equal(check(abi, &w, &l, &why), BLKIF_RSP_ERROR);
		assert_string_equal(why, "sector number overflows");
		w = rw(BLKIF_OP_FLUSH_DISKCACHE, 1, SIZE_BYTES / 512);
		assert_int_equal(check(abi, &w, &l, &why), BLKIF_RSP_ERROR);
		assert_string_equal(why, "access beyond end of device");

		l.flush = false;
		w = rw(BLKIF_OP_FLUSH_DISKCACHE, 0, 0);
		assert_int_equal(check(abi, &w, &l, &why), BLKIF_RSP_EOPNOTSUPP);
		assert_string_equal(why, "flush not offered");
		l.flush = true;

		w = rw(BLKIF_OP_WRITE_BARRIER, 0, 0);
		assert_int_equal(check(abi, &w, &l, &why), BLKIF_RSP_OKAY);
		w.nr = 11;
		assert_int_equal(check(abi, &w, &l, &why), BLKIF_RSP_OKAY);
		assert_int_equal(g_req.len_bytes, 11 * 4096);
		w.sector = SIZE_BYTES / 512 - 1;
		assert_int_equal(check(abi, &w, &l, &why), BLKIF_RSP_ERROR);
		l.barrier = false;
		assert_int_equal(check(abi, &w, &l, &why), BLKIF_RSP_EOPNOTSUPP);
		assert_string_equal(why, "barrier not offered");
		l.barrier = true;
	}
}

static void test_discard(void **state)
{
	enum vd_blkif_abi abi;
	struct vd_blkif_limits l = lim_all();
	const char *why;

	FOR_EACH_ABI(abi)
	{
		struct wreq w = rw(BLKIF_OP_DISCARD, 0, 64);
		struct vd_blkif_req *req;

		w.nr_sectors = 128;
		w.flag = BLKIF_DISCARD_SECURE;
		req = get(abi, &w);
		assert_int_equal(req->op, BLKIF_OP_DISCARD);
		assert_int_equal(req->id, 0x1122334455667788ull);
		assert_int_equal(req->sector_number, 64);
		assert_int_equal(req->nr_sectors, 128);
		assert_int_equal(req->discard_flags, BLKIF_DISCARD_SECURE);
		assert_int_equal(vd_blkif_req_validate(req, &l, &why), BLKIF_RSP_OKAY);
		assert_int_equal(req->offset_bytes, 64 * 512);
		assert_int_equal(req->len_bytes, 128 * 512);

		l.discard_secure = false;
		assert_int_equal(check(abi, &w, &l, &why), BLKIF_RSP_EOPNOTSUPP);
		w.flag = 0;
		assert_int_equal(check(abi, &w, &l, &why), BLKIF_RSP_OKAY);
		l.discard = false;
		assert_int_equal(check(abi, &w, &l, &why), BLKIF_RSP_EOPNOTSUPP);
		assert_string_equal(why, "discard not offered");
		l = lim_all();

		w.nr_sectors = 0;
		assert_int_equal(check(abi, &w, &l, &why), BLKIF_RSP_ERROR);
		w.sector = 0;
		w.nr_sectors = SIZE_BYTES / 512;
		assert_int_equal(check(abi, &w, &l, &why), BLKIF_RSP_OKAY);
		w.nr_sectors++;
		assert_int_equal(check(abi, &w, &l, &why), BLKIF_RSP_ERROR);
		w.nr_sectors = UINT64_MAX;
		assert_int_equal(check(abi, &w, &l, &why), BLKIF_RSP_ERROR);
		w.sector = UINT64_MAX - 2;
		w.nr_sectors = 8;
		assert_int_equal(check(abi, &w, &l, &why), BLKIF_RSP_ERROR);
		l.size_bytes = UINT64_MAX;
		w.sector = (UINT64_MAX >> 9) - 2;
		w.nr_sectors = 8;
		assert_int_equal(check(abi, &w, &l, &why), BLKIF_RSP_ERROR);
		l = lim_all();

		l.sector_bytes = 4096;
		w.sector = 8;
		w.nr_sectors = 16;
		assert_int_equal(check(abi, &w, &l, &why), BLKIF_RSP_OKAY);
		w.nr_sectors = 12;
		assert_int_equal(check(abi, &w, &l, &why), BLKIF_RSP_ERROR);
		w.sector = 4;
		w.nr_sectors = 16;
		assert_int_equal(check(abi, &w, &l, &why), BLKIF_RSP_ERROR);
		assert_string_equal(why, "discard not aligned to sector-size");
		l = lim_all();
	}
}

static struct wreq ind(uint8_t inner, uint16_t nr, uint64_t sector)
{
	struct wreq w;

	memset(&w, 0, sizeof(w));
	w.op = BLKIF_OP_INDIRECT;
	w.indirect_op = inner;
	w.nr16 = nr;
	w.id = 0xdeadbeefcafef00dull;
	w.sector = sector;
	for (unsigned int i = 0; i < BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST; i++) {
		w.grefs[i] = 1000 + i;
	}
	return w;
}

static _Alignas(4096) uint8_t g_ipages[BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST][4096];

static void fill_ipages(unsigned int nr)
{
	memset(g_ipages, 0, sizeof(g_ipages));
	for (unsigned int i = 0; i < nr; i++) {
		struct blkif_request_segment s = { .gref = 5000 + i,
						   .first_sect = 0,
						   .last_sect = 7 };

		memcpy(&g_ipages[i / 512][(i % 512) * sizeof(s)], &s, sizeof(s));
	}
}

static const void *const g_ipage_ptrs[BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST] = {
	g_ipages[0], g_ipages[1], g_ipages[2], g_ipages[3],
	g_ipages[4], g_ipages[5], g_ipages[6], g_ipages[7],
};

static void test_indirect(void **state)
{
	enum vd_blkif_abi abi;
	struct vd_blkif_limits l = lim_all();
	const char *why;

	FOR_EACH_ABI(abi)
	{
		struct wreq w = ind(BLKIF_OP_WRITE, 256, 32);
		struct vd_blkif_req *req = get(abi, &w);

		assert_true(req->indirect);
		assert_int_equal(req->wire_op, BLKIF_OP_INDIRECT);
		assert_int_equal(req->op, BLKIF_OP_WRITE);
		assert_int_equal(req->nr_segs, 256);
		assert_int_equal(req->nr_indirect_pages, 1);
		assert_int_equal(req->id, 0xdeadbeefcafef00dull);
		assert_int_equal(req->sector_number, 32);
		assert_int_equal(req->indirect_grefs[0], 1000);
		assert_int_equal(req->indirect_grefs[7], 1007);
		/* header pass */
		assert_int_equal(vd_blkif_req_validate(req, &l, &why), BLKIF_RSP_OKAY);
		assert_int_equal(req->len_bytes, 0);
		assert_int_equal(req->offset_bytes, 32 * 512);
		/* segments pass */
		fill_ipages(256);
		vd_blkif_req_set_indirect_segs(req, g_ipage_ptrs);
		assert_int_equal(req->seg[0].gref, 5000);
		assert_int_equal(req->seg[255].gref, 5255);
		assert_int_equal(vd_blkif_req_validate(req, &l, &why), BLKIF_RSP_OKAY);
		assert_int_equal(req->len_bytes, 256 * 4096);
		/* a bad segment deep in the page */
		memcpy(&g_ipages[0][200 * 8 + 5], &(uint8_t){ 8 }, 1); /* last_sect = 8 */
		vd_blkif_req_set_indirect_segs(req, g_ipage_ptrs);
		assert_int_equal(vd_blkif_req_validate(req, &l, &why), BLKIF_RSP_ERROR);
		assert_string_equal(why, "bad segment sectors");
		/* beyond the end, found with the segments */
		w = ind(BLKIF_OP_READ, 256, SIZE_BYTES / 512 - 8);
		req = get(abi, &w);
		assert_int_equal(vd_blkif_req_validate(req, &l, &why), BLKIF_RSP_OKAY);
		fill_ipages(256);
		vd_blkif_req_set_indirect_segs(req, g_ipage_ptrs);
		assert_int_equal(vd_blkif_req_validate(req, &l, &why), BLKIF_RSP_ERROR);
		assert_string_equal(why, "access beyond end of device");
		/* start beyond the end: caught by the header pass */
		w.sector = SIZE_BYTES / 512 + 8;
		assert_int_equal(check(abi, &w, &l, &why), BLKIF_RSP_ERROR);

		w = ind(BLKIF_OP_READ, 0, 0);
		assert_int_equal(check(abi, &w, &l, &why), BLKIF_RSP_ERROR);
		w.nr16 = 257;
		assert_int_equal(check(abi, &w, &l, &why), BLKIF_RSP_ERROR);
		assert_string_equal(why, "bad number of indirect segments");
		w.nr16 = 4096; /* 8 pages: the most the wire can name, beyond our max */
		assert_int_equal(check(abi, &w, &l, &why), BLKIF_RSP_ERROR);
		w.nr16 = UINT16_MAX;
		assert_int_equal(check(abi, &w, &l, &why), BLKIF_RSP_ERROR);
		/* a limit above our compile-time maximum is clamped */
		l.max_indirect_segs = 1000;
		w.nr16 = 300;
		assert_int_equal(check(abi, &w, &l, &why), BLKIF_RSP_ERROR);
		l = lim_all();
		l.max_indirect_segs = 32;
		w.nr16 = 33;
		assert_int_equal(check(abi, &w, &l, &why), BLKIF_RSP_ERROR);
		w.nr16 = 32;
		assert_int_equal(check(abi, &w, &l, &why), BLKIF_RSP_OKAY);
		l.max_indirect_segs = 0;
		assert_int_equal(check(abi, &w, &l, &why), BLKIF_RSP_EOPNOTSUPP);
		l = lim_all();

		const uint8_t bad_inner[] = { BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_WRITE_BARRIER,
					      BLKIF_OP_DISCARD, BLKIF_OP_INDIRECT, 99 };
		for (size_t i = 0; i < sizeof(bad_inner); i++) {
			w = ind(bad_inner[i], 8, 0);
			assert_int_equal(check(abi, &w, &l, &why), BLKIF_RSP_ERROR);
			assert_string_equal(why, "indirect operation not read or write");
		}
		l.readonly = true;
		w = ind(BLKIF_OP_WRITE, 8, 0);
		assert_int_equal(check(abi, &w, &l, &why), BLKIF_RSP_ERROR);
		w.indirect_op = BLKIF_OP_READ;
		assert_int_equal(check(abi, &w, &l, &why), BLKIF_RSP_OKAY);
		l = lim_all();

		/* 4K sectors: segments checked after the pages arrive */
		l.sector_bytes = 4096;
		w = ind(BLKIF_OP_READ, 16, 8);
		req = get(abi, &w);
		assert_int_equal(vd_blkif_req_validate(req, &l, &why), BLKIF_RSP_OKAY);
		fill_ipages(16);
		memcpy(&g_ipages[0][3 * 8 + 4], &(uint8_t){ 1 }, 1); /* first_sect = 1 */
		vd_blkif_req_set_indirect_segs(req, g_ipage_ptrs);
		assert_int_equal(vd_blkif_req_validate(req, &l, &why), BLKIF_RSP_ERROR);
		w.sector = 9;
		assert_int_equal(check(abi, &w, &l, &why), BLKIF_RSP_ERROR);
		l = lim_all();
	}
}

/* set_indirect_segs before (or without) validate must stay in bounds. */
static void test_indirect_unvalidated(void **state)
{
	struct wreq w = ind(BLKIF_OP_READ, UINT16_MAX, 0);
	struct vd_blkif_req *req = get(VD_BLKIF_ABI_NATIVE, &w);
	struct vd_blkif_limits l = lim_all();
	const char *why;

	assert_int_equal(req->nr_indirect_pages, 128);
	fill_ipages(0);
	vd_blkif_req_set_indirect_segs(req, g_ipage_ptrs);
	assert_int_equal(vd_blkif_req_validate(req, &l, &why), BLKIF_RSP_ERROR);
}

/* x86_32 layout from raw bytes, not through our structs. */
static void test_x86_32_bytes(void **state)
{
	uint8_t b[108];
	struct vd_blkif_x86_32_request src;
	struct vd_blkif_req req;
	uint64_t id = 0x0102030405060708ull, sector = 0x1112131415161718ull;
	uint32_t gref = 0xa1b2c3d4;

	static_assert(sizeof(src) == sizeof(b), "x86_32 size");
	memset(b, 0, sizeof(b));
	b[0] = BLKIF_OP_WRITE;
	b[1] = 2;
	memcpy(&b[4], &id, 8);
	memcpy(&b[12], &sector, 8);
	memcpy(&b[20], &gref, 4);
	b[24] = 1;
	b[25] = 6;
	memcpy(&b[28], &(uint32_t){ 77 }, 4);
	b[32] = 0;
	b[33] = 7;
	memcpy(&src, b, sizeof(b));
	vd_blkif_decode_x86_32(&src, &req);
	assert_int_equal(req.op, BLKIF_OP_WRITE);
	assert_int_equal(req.nr_segs, 2);
	assert_int_equal(req.id, id);
	assert_int_equal(req.sector_number, sector);
	assert_int_equal(req.seg[0].gref, gref);
	assert_int_equal(req.seg[0].first_sect, 1);
	assert_int_equal(req.seg[0].last_sect, 6);
	assert_int_equal(req.seg[1].gref, 77);
	assert_int_equal(req.seg[1].last_sect, 7);

	/* discard: nr_sectors at 20 */
	memset(b, 0, sizeof(b));
	b[0] = BLKIF_OP_DISCARD;
	b[1] = BLKIF_DISCARD_SECURE;
	memcpy(&b[4], &id, 8);
	memcpy(&b[12], &sector, 8);
	memcpy(&b[20], &(uint64_t){ 4242 }, 8);
	memcpy(&src, b, sizeof(b));
	vd_blkif_decode_x86_32(&src, &req);
	assert_int_equal(req.id, id);
	assert_int_equal(req.sector_number, sector);
	assert_int_equal(req.nr_sectors, 4242);
	assert_int_equal(req.discard_flags, BLKIF_DISCARD_SECURE);

	/* indirect: nr_segments at 2, grefs at 24 */
	memset(b, 0, sizeof(b));
	b[0] = BLKIF_OP_INDIRECT;
	b[1] = BLKIF_OP_READ;
	memcpy(&b[2], &(uint16_t){ 513 }, 2);
	memcpy(&b[4], &id, 8);
	memcpy(&b[12], &sector, 8);
	memcpy(&b[24], &(uint32_t){ 9 }, 4);
	memcpy(&b[28], &(uint32_t){ 10 }, 4);
	memcpy(&src, b, sizeof(b));
	vd_blkif_decode_x86_32(&src, &req);
	assert_true(req.indirect);
	assert_int_equal(req.op, BLKIF_OP_READ);
	assert_int_equal(req.nr_segs, 513);
	assert_int_equal(req.nr_indirect_pages, 2);
	assert_int_equal(req.id, id);
	assert_int_equal(req.indirect_grefs[0], 9);
	assert_int_equal(req.indirect_grefs[1], 10);

	/* unknown op: id still at 4 */
	b[0] = 42;
	memcpy(&src, b, sizeof(b));
	vd_blkif_decode_x86_32(&src, &req);
	assert_int_equal(req.id, id);
}

/* x86_64 layout from raw bytes. */
static void test_x86_64_bytes(void **state)
{
	uint8_t b[112];
	struct vd_blkif_x86_64_request src;
	struct vd_blkif_req req;
	uint64_t id = 0x0102030405060708ull;

	memset(b, 0, sizeof(b));
	b[0] = BLKIF_OP_READ;
	b[1] = 1;
	memcpy(&b[8], &id, 8);
	memcpy(&b[16], &(uint64_t){ 99 }, 8);
	memcpy(&b[24], &(uint32_t){ 5 }, 4);
	b[29] = 7;
	memcpy(&src, b, sizeof(b));
	vd_blkif_decode_x86_64(&src, &req);
	assert_int_equal(req.id, id);
	assert_int_equal(req.sector_number, 99);
	assert_int_equal(req.seg[0].gref, 5);
	assert_int_equal(req.seg[0].last_sect, 7);

	memset(b, 0, sizeof(b));
	b[0] = BLKIF_OP_INDIRECT;
	b[1] = BLKIF_OP_WRITE;
	memcpy(&b[2], &(uint16_t){ 3 }, 2);
	memcpy(&b[8], &id, 8);
	memcpy(&b[28], &(uint32_t){ 31 }, 4);
	memcpy(&src, b, sizeof(b));
	vd_blkif_decode_x86_64(&src, &req);
	assert_int_equal(req.nr_segs, 3);
	assert_int_equal(req.indirect_grefs[0], 31);
	assert_int_equal(req.id, id);
}

static void test_abi_parse(void **state)
{
	enum vd_blkif_abi abi = VD_BLKIF_ABI_X86_32;

	assert_int_equal(vd_blkif_abi_parse(NULL, &abi), 0);
	assert_int_equal(abi, VD_BLKIF_ABI_NATIVE);
	assert_int_equal(vd_blkif_abi_parse("x86_32-abi", &abi), 0);
	assert_int_equal(abi, VD_BLKIF_ABI_X86_32);
	assert_int_equal(vd_blkif_abi_parse("x86_64-abi", &abi), 0);
	assert_int_equal(abi, VD_BLKIF_ABI_X86_64);
	assert_int_equal(vd_blkif_abi_parse("", &abi), 0);
	assert_int_equal(abi, VD_BLKIF_ABI_NATIVE);
	assert_int_equal(vd_blkif_abi_parse("arm-abi", &abi), -EINVAL);
	assert_int_equal(vd_blkif_abi_parse("x86_32-abi ", &abi), -EINVAL);
}

static void test_status_from_errno(void **state)
{
	assert_int_equal(vd_blkif_status_from_errno(4096), BLKIF_RSP_OKAY);
	assert_int_equal(vd_blkif_status_from_errno(0), BLKIF_RSP_OKAY);
	assert_int_equal(vd_blkif_status_from_errno(-EIO), BLKIF_RSP_ERROR);
	assert_int_equal(vd_blkif_status_from_errno(-EOPNOTSUPP), BLKIF_RSP_EOPNOTSUPP);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_read_write_ok),
		cmocka_unit_test(test_nr_segments),
		cmocka_unit_test(test_segment_sectors),
		cmocka_unit_test(test_4k_sectors),
		cmocka_unit_test(test_range),
		cmocka_unit_test(test_readonly),
		cmocka_unit_test(test_unknown_op),
		cmocka_unit_test(test_flush_barrier),
		cmocka_unit_test(test_discard),
		cmocka_unit_test(test_indirect),
		cmocka_unit_test(test_indirect_unvalidated),
		cmocka_unit_test(test_x86_32_bytes),
		cmocka_unit_test(test_x86_64_bytes),
		cmocka_unit_test(test_abi_parse),
		cmocka_unit_test(test_status_from_errno),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
