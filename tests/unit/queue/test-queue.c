/*
 * The queue datapath driven by hand, with no OS threads: a frontend ring,
 * guest pages and a v1 grant table live in this process, the transport's
 * grant and event-channel calls are replaced (-Wl,--wrap) by a fake that
 * makes Xen's checks, and the image is the mem backend. Each test puts
 * requests on the ring, calls vd_queue_poll() and checks the responses and
 * the data on both sides.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

/* ring.h's frontend macros need the barriers; the backend is in this process. */
#define mb()  vd_smp_mb()
#define rmb() vd_smp_rmb()
#define wmb() vd_smp_wmb()
#include "queue/queue-int.h"
#include "image/image-driver.h"

#define GUEST_PAGES 2048
#define GNT_ENTRIES 4096
#define DISK_BYTES  (64ull << 20)
#define FE_DOMID    7

/* ---- the fake guest and hypervisor ---- */

static uint8_t *g_mem; /* guest RAM */
static struct grant_entry_v1 g_gnt[GNT_ENTRIES];
static uint32_t g_next_page;    /* bump allocator over g_mem */
static uint32_t g_next_ref = 8; /* refs below 8 are reserved, as in Linux */
static int g_evfd = -1;
static unsigned int g_notifies;
static unsigned int g_halts;
static int g_halt_errnum;
static unsigned int g_maps, g_unmaps; /* single-page (persistent) maps */
static unsigned int g_efault_zc;      /* fail this many zero-copy I/Os with -EFAULT */
/* Queue options for the next setup. */
static bool g_persistent, g_zero_copy;
static uint32_t g_max_pgrants;

struct vd_gnt {
	int dummy;
};
struct vd_evtchn {
	int dummy;
};
static struct vd_gnt g_gnt_handle;
static struct vd_evtchn g_evtchn_handle;

static uint32_t guest_page(void)
{
	assert_true(g_next_page < GUEST_PAGES);
	return g_next_page++;
}

static uint32_t grant(uint32_t pfn, uint16_t domid, bool readonly)
{
	uint32_t ref = g_next_ref++;

	assert_true(ref < GNT_ENTRIES);
	g_gnt[ref].domid = domid;
	g_gnt[ref].frame = pfn;
	g_gnt[ref].flags = GTF_permit_access | (readonly ? GTF_readonly : 0);
	return ref;
}

static int check_grant(uint32_t ref, uint16_t domid, bool write, uint8_t **page)
{
	if (ref >= GNT_ENTRIES) {
		return GNTST_bad_gntref;
	}
	if ((g_gnt[ref].flags & GTF_type_mask) != GTF_permit_access || g_gnt[ref].domid != 0) {
		return GNTST_permission_denied;
	}
	if (write && (g_gnt[ref].flags & GTF_readonly)) {
		return GNTST_permission_denied;
	}
	if (domid != FE_DOMID || g_gnt[ref].frame >= GUEST_PAGES) {
		return GNTST_bad_domain;
	}
	*page = g_mem + (size_t)g_gnt[ref].frame * 4096;
	return GNTST_okay;
}

int __wrap_vd_gnt_open(struct vd_transport *t, struct vd_gnt **out);
int __wrap_vd_gnt_open(struct vd_transport *t, struct vd_gnt **out)
{
	*out = &g_gnt_handle;
	return 0;
}

void __wrap_vd_gnt_close(struct vd_gnt *g);
void __wrap_vd_gnt_close(struct vd_gnt *g)
{
}

void *__wrap_vd_gnt_map(struct vd_gnt *g, uint16_t domid, const uint32_t *refs,
			unsigned int nr_refs, bool writable, int *status);
void *__wrap_vd_gnt_map(struct vd_gnt *g, uint16_t domid, const uint32_t *refs,
			unsigned int nr_refs, bool writable, int *status)
{
	uint8_t *first = NULL;

	for (unsigned int i = 0; i < nr_refs; i++) {
		uint8_t *page;
		int st = check_grant(refs[i], domid, writable, &page);

		/* The test grants ring pages contiguously, so a plain pointer works. */
		if (st != GNTST_okay || (first && page != first + (size_t)i * 4096)) {
			*status = st != GNTST_okay ? st : GNTST_general_error;
			return NULL;
		}
		first = first ? first : page;
	}
	if (nr_refs == 1) {
		g_maps++;
	}
	return first;
}

int __wrap_vd_gnt_unmap(struct vd_gnt *g, void *addr, unsigned int nr_refs);
int __wrap_vd_gnt_unmap(struct vd_gnt *g, void *addr, unsigned int nr_refs)
{
	if (nr_refs == 1) {
		g_unmaps++;
	}
	return 0;
}

int __wrap_vd_gnt_copy(struct vd_gnt *g, struct vd_gcopy *segs, unsigned int nr_segs);
int __wrap_vd_gnt_copy(struct vd_gnt *g, struct vd_gcopy *segs, unsigned int nr_segs)
{
	for (unsigned int i = 0; i < nr_segs; i++) {
		struct vd_gcopy *s = &segs[i];
		uint8_t *page;

		s->status = (int16_t)check_grant(s->gref, s->domid, s->to_guest, &page);
		if (s->status != GNTST_okay) {
			continue;
		}
		if ((unsigned int)s->guest_offset_bytes + s->len_bytes > 4096) {
			s->status = GNTST_bad_copy_arg;
			continue;
		}
		if (s->to_guest) {
			memcpy(page + s->guest_offset_bytes, s->local, s->len_bytes);
		} else {
			memcpy(s->local, page + s->guest_offset_bytes, s->len_bytes);
		}
	}
	return 0;
}

/*
 * The image, with one fault added: a zero-copy READ/WRITE (its buffer is in
 * guest memory) can be made to fail with -EFAULT, as O_DIRECT does on a
 * grant mapping the kernel cannot pin.
 */
void __real_vd_image_submit(struct vd_image_queue *iq, struct vd_io *io);
void __wrap_vd_image_submit(struct vd_image_queue *iq, struct vd_io *io);
void __wrap_vd_image_submit(struct vd_image_queue *iq, struct vd_io *io)
{
	if (g_efault_zc > 0 && (io->op == VD_IO_READ || io->op == VD_IO_WRITE) &&
	    (uint8_t *)io->iov[0].iov_base >= g_mem &&
	    (uint8_t *)io->iov[0].iov_base < g_mem + (size_t)GUEST_PAGES * 4096) {
		g_efault_zc--;
		vd_image_io_fail(iq, io, -EFAULT);
		return;
	}
	__real_vd_image_submit(iq, io);
}

int __wrap_vd_evtchn_open(struct vd_transport *t, struct vd_evtchn **out);
int __wrap_vd_evtchn_open(struct vd_transport *t, struct vd_evtchn **out)
{
	*out = &g_evtchn_handle;
	return 0;
}

void __wrap_vd_evtchn_close(struct vd_evtchn *e);
void __wrap_vd_evtchn_close(struct vd_evtchn *e)
{
}

int __wrap_vd_evtchn_bind(struct vd_evtchn *e, uint16_t remote_domid, uint32_t remote_port,
			  uint32_t *local_port);
int __wrap_vd_evtchn_bind(struct vd_evtchn *e, uint16_t remote_domid, uint32_t remote_port,
			  uint32_t *local_port)
{
	*local_port = 1;
	return remote_port == 5 ? 0 : -EINVAL;
}

int __wrap_vd_evtchn_fd(struct vd_evtchn *e);
int __wrap_vd_evtchn_fd(struct vd_evtchn *e)
{
	return g_evfd;
}

int __wrap_vd_evtchn_ack(struct vd_evtchn *e);
int __wrap_vd_evtchn_ack(struct vd_evtchn *e)
{
	uint64_t v;

	return read(g_evfd, &v, sizeof(v)) < 0 ? -errno : 0;
}

int __wrap_vd_evtchn_notify(struct vd_evtchn *e);
int __wrap_vd_evtchn_notify(struct vd_evtchn *e)
{
	g_notifies++;
	return 0;
}

/* ---- the frontend ---- */

struct fixture {
	struct vd_image *img;
	struct vd_queue *q;
	blkif_front_ring_t front;
	uint32_t ring_refs[VD_BLKIF_MAX_RING_PAGES];
	unsigned int nr_ring_pages;
};

static void on_halt(void *arg, unsigned int qidx, int errnum, const char *why)
{
	g_halts++;
	g_halt_errnum = errnum;
}

static int setup_with(void **state, unsigned int order, bool readonly, uint32_t max_pool_pages)
{
	struct fixture *f = calloc(1, sizeof(*f));
	struct vd_image_opts io = {
		.io_backend = "mem", .size_bytes = DISK_BYTES, .format = "raw", .readonly = readonly
	};
	struct vd_err err = { 0 };
	struct vd_queue_config cfg = { 0 };

	g_mem = aligned_alloc(4096, (size_t)GUEST_PAGES * 4096);
	memset(g_mem, 0, (size_t)GUEST_PAGES * 4096);
	memset(g_gnt, 0, sizeof(g_gnt));
	g_next_page = 0;
	g_next_ref = 8;
	g_notifies = 0;
	g_halts = 0;
	g_maps = g_unmaps = 0;
	g_efault_zc = 0;
	g_evfd = eventfd(0, EFD_NONBLOCK);
	assert_true(g_evfd >= 0);

	f->nr_ring_pages = 1u << order;
	for (unsigned int i = 0; i < f->nr_ring_pages; i++) {
		f->ring_refs[i] = grant(guest_page(), 0, false);
	}
	blkif_sring_t *sring =
		(blkif_sring_t *)(g_mem + (size_t)g_gnt[f->ring_refs[0]].frame * 4096);
	SHARED_RING_INIT(sring);
	FRONT_RING_INIT(&f->front, sring, 4096 * f->nr_ring_pages);

	int rc = vd_image_open("mem", &io, &f->img, &err);
	if (rc < 0) {
		fail_msg("image: %s", vd_err_msg(&err));
	}
	cfg.index = 0;
	snprintf(cfg.name, sizeof(cfg.name), "test q0");
	cfg.domid = FE_DOMID;
	cfg.abi = VD_BLKIF_ABI_NATIVE;
	cfg.ring_refs = f->ring_refs;
	cfg.nr_ring_pages = f->nr_ring_pages;
	cfg.remote_port = 5;
	cfg.limits = (struct vd_blkif_limits){ .size_bytes = DISK_BYTES,
					       .sector_bytes = 512,
					       .readonly = readonly,
					       .flush = true,
					       .barrier = true,
					       .discard = true,
					       .max_indirect_segs = VD_BLKIF_MAX_INDIRECT_SEGS };
	cfg.image = f->img;
	cfg.on_halt = on_halt;
	cfg.max_pool_pages = max_pool_pages;
	cfg.persistent = g_persistent;
	cfg.zero_copy = g_zero_copy;
	cfg.max_persistent_grants = g_max_pgrants;
	g_persistent = g_zero_copy = false;
	g_max_pgrants = 0;
	rc = vd_queue_create(&cfg, &f->q, &err);
	if (rc < 0) {
		fail_msg("queue: %s", vd_err_msg(&err));
	}
	g_maps = 0; /* count data maps only (a one-page ring is a single map too) */
	*state = f;
	return 0;
}

static int setup(void **state)
{
	return setup_with(state, 0, false, 0);
}

static int setup_order4(void **state)
{
	return setup_with(state, 4, false, 0);
}

static int setup_readonly(void **state)
{
	return setup_with(state, 0, true, 0);
}

static int setup_small_pool(void **state)
{
	return setup_with(state, 2, false, VD_QUEUE_MIN_POOL_PAGES);
}

static int setup_persistent(void **state)
{
	g_persistent = true;
	return setup_with(state, 0, false, 0);
}

static int setup_zero_copy(void **state)
{
	g_persistent = true;
	g_zero_copy = true;
	return setup_with(state, 2, false, 0);
}

static int setup_small_pgrants(void **state)
{
	g_persistent = true;
	g_max_pgrants = 4;
	return setup_with(state, 0, false, 0);
}

static int teardown(void **state)
{
	struct fixture *f = *state;

	vd_queue_destroy(f->q);
	/* Every persistent mapping is undone at disconnect (and the ring). */
	assert_int_equal(g_unmaps, g_maps + (f->nr_ring_pages == 1 ? 1 : 0));
	vd_image_close(f->img);
	close(g_evfd);
	free(g_mem);
	free(f);
	return 0;
}

/* A guest buffer: n pages, each granted to dom0, filled with a pattern. */
struct gbuf {
	uint32_t pfn[VD_BLKIF_MAX_SEGS];
	uint32_t ref[VD_BLKIF_MAX_SEGS];
	unsigned int n;
};

static void gbuf_alloc(struct gbuf *b, unsigned int n, bool readonly)
{
	b->n = n;
	for (unsigned int i = 0; i < n; i++) {
		b->pfn[i] = guest_page();
		b->ref[i] = grant(b->pfn[i], 0, readonly);
	}
}

static uint8_t *gpage(const struct gbuf *b, unsigned int i)
{
	return g_mem + (size_t)b->pfn[i] * 4096;
}

static void fill(struct gbuf *b, uint8_t seed)
{
	for (unsigned int i = 0; i < b->n; i++) {
		for (unsigned int j = 0; j < 4096; j++) {
			gpage(b, i)[j] = (uint8_t)(seed + i * 31 + j * 7);
		}
	}
}

static blkif_request_t *next_slot(struct fixture *f)
{
	blkif_request_t *r = RING_GET_REQUEST(&f->front, f->front.req_prod_pvt);

	f->front.req_prod_pvt++;
	memset(r, 0, sizeof(*r));
	return r;
}

static void put_rw(struct fixture *f, uint8_t op, uint64_t id, uint64_t sector,
		   const struct gbuf *b, uint8_t first, uint8_t last)
{
	blkif_request_t *r = next_slot(f);

	r->operation = op;
	r->id = id;
	r->sector_number = sector;
	r->nr_segments = (uint8_t)b->n;
	for (unsigned int i = 0; i < b->n; i++) {
		r->seg[i].gref = b->ref[i];
		r->seg[i].first_sect = first;
		r->seg[i].last_sect = last;
	}
}

static void put_indirect(struct fixture *f, uint8_t op, uint64_t id, uint64_t sector,
			 const struct gbuf *b, uint16_t nr_segs)
{
	blkif_request_indirect_t *r = (blkif_request_indirect_t *)next_slot(f);
	uint32_t ipfn = guest_page();
	struct blkif_request_segment *segs = (void *)(g_mem + (size_t)ipfn * 4096);

	r->operation = BLKIF_OP_INDIRECT;
	r->indirect_op = op;
	r->id = id;
	r->sector_number = sector;
	r->nr_segments = nr_segs;
	r->indirect_grefs[0] = grant(ipfn, 0, true);
	for (unsigned int i = 0; i < nr_segs; i++) {
		segs[i].gref = b->ref[i];
		segs[i].first_sect = 0;
		segs[i].last_sect = 7;
	}
}

/* RING_PUSH_REQUESTS as a C11 release store, which ThreadSanitizer understands. */
static void push_requests(struct fixture *f)
{
	__atomic_store_n(&f->front.sring->req_prod, f->front.req_prod_pvt, __ATOMIC_RELEASE);
}

/* Push, kick, and poll until `want` responses are there; returns them in order. */
static void run(struct fixture *f, unsigned int want, int16_t *status, uint64_t *ids)
{
	uint64_t one = 1;
	unsigned int got = 0;

	push_requests(f);
	assert_int_equal(write(g_evfd, &one, sizeof(one)), sizeof(one));
	for (int spins = 0; spins < 100000 && got < want; spins++) {
		if (!vd_queue_poll(f->q)) {
			vd_ioctx_wait(f->q->ioctx, 1000000);
		}
		while (RING_HAS_UNCONSUMED_RESPONSES(&f->front)) {
			blkif_response_t *rsp = RING_GET_RESPONSE(&f->front, f->front.rsp_cons);

			f->front.rsp_cons++;
			assert_true(got < want);
			status[got] = rsp->status;
			ids[got] = rsp->id;
			got++;
		}
	}
	assert_int_equal(got, want);
}

static int16_t run1(struct fixture *f, uint64_t id)
{
	int16_t st;
	uint64_t got_id;

	run(f, 1, &st, &got_id);
	assert_int_equal(got_id, id);
	return st;
}

static void test_write_read_roundtrip(void **state)
{
	struct fixture *f = *state;
	struct gbuf w, r;

	gbuf_alloc(&w, 11, true);
	gbuf_alloc(&r, 11, false);
	fill(&w, 1);
	put_rw(f, BLKIF_OP_WRITE, 100, 2048, &w, 0, 7);
	assert_int_equal(run1(f, 100), BLKIF_RSP_OKAY);
	put_rw(f, BLKIF_OP_READ, 101, 2048, &r, 0, 7);
	assert_int_equal(run1(f, 101), BLKIF_RSP_OKAY);
	for (unsigned int i = 0; i < 11; i++) {
		assert_memory_equal(gpage(&w, i), gpage(&r, i), 4096);
	}
	assert_true(g_notifies > 0);
}

/* Segments of 3 sectors at offset 2: data packs across bounce-page edges. */
static void test_partial_segments(void **state)
{
	struct fixture *f = *state;
	struct gbuf w, r;

	gbuf_alloc(&w, 5, true);
	gbuf_alloc(&r, 5, false);
	fill(&w, 9);
	put_rw(f, BLKIF_OP_WRITE, 1, 77, &w, 2, 4);
	assert_int_equal(run1(f, 1), BLKIF_RSP_OKAY);
	put_rw(f, BLKIF_OP_READ, 2, 77, &r, 2, 4);
	assert_int_equal(run1(f, 2), BLKIF_RSP_OKAY);
	for (unsigned int i = 0; i < 5; i++) {
		assert_memory_equal(gpage(&w, i) + 1024, gpage(&r, i) + 1024, 1536);
		/* Outside the segment the read buffer is untouched. */
		assert_int_equal(gpage(&r, i)[0], 0);
		assert_int_equal(gpage(&r, i)[2560], 0);
	}
}

static void test_indirect_roundtrip(void **state)
{
	struct fixture *f = *state;
	struct gbuf w, r;

	gbuf_alloc(&w, 256, true);
	gbuf_alloc(&r, 256, false);
	fill(&w, 3);
	put_indirect(f, BLKIF_OP_WRITE, 7, 8, &w, 256);
	assert_int_equal(run1(f, 7), BLKIF_RSP_OKAY);
	put_indirect(f, BLKIF_OP_READ, 8, 8, &r, 256);
	assert_int_equal(run1(f, 8), BLKIF_RSP_OKAY);
	for (unsigned int i = 0; i < 256; i++) {
		assert_memory_equal(gpage(&w, i), gpage(&r, i), 4096);
	}
}

static void test_bad_requests_answered(void **state)
{
	struct fixture *f = *state;
	struct gbuf b;
	int16_t st[4];
	uint64_t ids[4];
	blkif_request_t *r;

	gbuf_alloc(&b, 1, false);
	r = next_slot(f);
	r->operation = 99;
	r->id = 1;
	put_rw(f, BLKIF_OP_READ, 2, DISK_BYTES / 512, &b, 0, 7); /* past the end */
	put_rw(f, BLKIF_OP_READ, 3, 0, &b, 5, 2);                /* first > last */
	put_rw(f, BLKIF_OP_READ, 4, 0, &b, 0, 7);                /* fine */
	run(f, 4, st, ids);
	assert_int_equal(ids[0], 1);
	assert_int_equal(st[0], BLKIF_RSP_EOPNOTSUPP);
	assert_int_equal(st[1], BLKIF_RSP_ERROR);
	assert_int_equal(st[2], BLKIF_RSP_ERROR);
	assert_int_equal(ids[3], 4);
	assert_int_equal(st[3], BLKIF_RSP_OKAY);
	assert_int_equal(f->q->stats.invalid, 3);
}

static void test_grant_faults(void **state)
{
	struct fixture *f = *state;
	struct gbuf good, ungranted, other, ro;

	gbuf_alloc(&good, 1, true);
	fill(&good, 5);
	put_rw(f, BLKIF_OP_WRITE, 1, 0, &good, 0, 7);
	assert_int_equal(run1(f, 1), BLKIF_RSP_OKAY);

	/* A write whose second page is not granted is refused and writes nothing. */
	gbuf_alloc(&ungranted, 2, true);
	fill(&ungranted, 77);
	g_gnt[ungranted.ref[1]].flags = 0;
	put_rw(f, BLKIF_OP_WRITE, 2, 0, &ungranted, 0, 7);
	assert_int_equal(run1(f, 2), BLKIF_RSP_ERROR);

	/* Granted to another domain. */
	gbuf_alloc(&other, 1, false);
	g_gnt[other.ref[0]].domid = 3;
	put_rw(f, BLKIF_OP_READ, 3, 0, &other, 0, 7);
	assert_int_equal(run1(f, 3), BLKIF_RSP_ERROR);

	/* A read into a read-only grant. */
	gbuf_alloc(&ro, 1, true);
	put_rw(f, BLKIF_OP_READ, 4, 0, &ro, 0, 7);
	assert_int_equal(run1(f, 4), BLKIF_RSP_ERROR);
	for (unsigned int j = 0; j < 4096; j++) {
		assert_int_equal(gpage(&ro, 0)[j], 0);
	}

	/* A ref beyond the table. */
	struct gbuf bad = { .n = 1, .ref = { GNT_ENTRIES + 10 } };
	put_rw(f, BLKIF_OP_READ, 5, 0, &bad, 0, 7);
	assert_int_equal(run1(f, 5), BLKIF_RSP_ERROR);

	/* The disk still holds the first write. */
	struct gbuf rd;
	gbuf_alloc(&rd, 1, false);
	put_rw(f, BLKIF_OP_READ, 6, 0, &rd, 0, 7);
	assert_int_equal(run1(f, 6), BLKIF_RSP_OKAY);
	assert_memory_equal(gpage(&rd, 0), gpage(&good, 0), 4096);
}

static void test_flush_discard_barrier(void **state)
{
	struct fixture *f = *state;
	struct gbuf w, r;
	blkif_request_t *req;
	int16_t st[3];
	uint64_t ids[3];

	gbuf_alloc(&w, 2, true);
	gbuf_alloc(&r, 2, false);
	fill(&w, 11);
	put_rw(f, BLKIF_OP_WRITE, 1, 4096, &w, 0, 7);
	req = next_slot(f);
	req->operation = BLKIF_OP_FLUSH_DISKCACHE;
	req->id = 2;
	put_rw(f, BLKIF_OP_WRITE_BARRIER, 3, 8192, &w, 0, 7);
	run(f, 3, st, ids);
	for (int i = 0; i < 3; i++) {
		assert_int_equal(st[i], BLKIF_RSP_OKAY);
	}

	blkif_request_discard_t *d = (blkif_request_discard_t *)next_slot(f);
	d->operation = BLKIF_OP_DISCARD;
	d->id = 4;
	d->sector_number = 4096;
	d->nr_sectors = 16;
	assert_int_equal(run1(f, 4), BLKIF_RSP_OKAY);
	fill(&r, 200);
	put_rw(f, BLKIF_OP_READ, 5, 4096, &r, 0, 7);
	assert_int_equal(run1(f, 5), BLKIF_RSP_OKAY);
	for (unsigned int i = 0; i < 2; i++) {
		for (unsigned int j = 0; j < 4096; j++) {
			assert_int_equal(gpage(&r, i)[j], 0);
		}
	}
	put_rw(f, BLKIF_OP_READ, 6, 8192, &r, 0, 7);
	assert_int_equal(run1(f, 6), BLKIF_RSP_OKAY);
	assert_memory_equal(gpage(&r, 0), gpage(&w, 0), 4096);
	assert_int_equal(f->q->stats.reqs_flush, 1);
	assert_int_equal(f->q->stats.reqs_discard, 1);
}

static void test_readonly_refuses_writes(void **state)
{
	struct fixture *f = *state;
	struct gbuf w;

	gbuf_alloc(&w, 1, true);
	put_rw(f, BLKIF_OP_WRITE, 1, 0, &w, 0, 7);
	assert_int_equal(run1(f, 1), BLKIF_RSP_ERROR);
}

static void test_prod_overflow_halts(void **state)
{
	struct fixture *f = *state;
	uint64_t one = 1;

	f->front.req_prod_pvt += RING_SIZE(&f->front) + 5;
	push_requests(f);
	assert_int_equal(write(g_evfd, &one, sizeof(one)), sizeof(one));
	for (int i = 0; i < 10; i++) {
		vd_queue_poll(f->q);
	}
	assert_int_equal(g_halts, 1);
	assert_int_equal(g_halt_errnum, EPROTO);
	assert_false(RING_HAS_UNCONSUMED_RESPONSES(&f->front));
	assert_int_equal(f->q->stats.reqs, 0);
}

/* More 1 MiB requests than the bounce pool holds at once: all complete. */
static void test_pool_backpressure(void **state)
{
	struct fixture *f = *state;
	enum { N = 12 };
	struct gbuf w[N];
	int16_t st[N];
	uint64_t ids[N];

	for (unsigned int i = 0; i < N; i++) {
		gbuf_alloc(&w[i], 128, true);
		fill(&w[i], (uint8_t)i);
		put_indirect(f, BLKIF_OP_WRITE, i, (uint64_t)i * 1024, &w[i], 128);
	}
	run(f, N, st, ids);
	for (unsigned int i = 0; i < N; i++) {
		assert_int_equal(st[i], BLKIF_RSP_OKAY);
	}
	assert_true(f->q->stats.pool_stalls > 0);
	assert_int_equal(f->q->nr_free_pages, f->q->nr_pool_pages);
}

/* The real thread: start, serve, stop with requests in flight. */
static void test_thread_stop_drains(void **state)
{
	struct fixture *f = *state;
	struct vd_err err = { 0 };
	struct gbuf w;
	uint64_t one = 1;
	struct vd_queue_stats st;

	gbuf_alloc(&w, 8, true);
	fill(&w, 42);
	for (unsigned int i = 0; i < 20; i++) {
		put_rw(f, BLKIF_OP_WRITE, i, (uint64_t)i * 64, &w, 0, 7);
	}
	assert_int_equal(vd_queue_start(f->q, &err), 0);
	push_requests(f);
	assert_int_equal(write(g_evfd, &one, sizeof(one)), sizeof(one));
	for (int i = 0; i < 2000; i++) {
		vd_queue_get_stats(f->q, &st);
		if (st.reqs == 20) {
			break;
		}
		usleep(1000);
	}
	vd_queue_stop(f->q);
	vd_queue_get_stats(f->q, &st);
	assert_int_equal(st.reqs, 20);
	assert_int_equal(st.reqs_write, 20);
	assert_int_equal(st.bytes_written, 20 * 8 * 4096);
}

/* A flush that carries data writes it (blkback: a write with REQ_PREFLUSH). */
static void test_flush_with_data(void **state)
{
	struct fixture *f = *state;
	struct gbuf w, r;

	gbuf_alloc(&w, 3, true);
	gbuf_alloc(&r, 3, false);
	fill(&w, 21);
	put_rw(f, BLKIF_OP_FLUSH_DISKCACHE, 1, 320, &w, 0, 7);
	assert_int_equal(run1(f, 1), BLKIF_RSP_OKAY);
	put_rw(f, BLKIF_OP_READ, 2, 320, &r, 0, 7);
	assert_int_equal(run1(f, 2), BLKIF_RSP_OKAY);
	for (unsigned int i = 0; i < 3; i++) {
		assert_memory_equal(gpage(&w, i), gpage(&r, i), 4096);
	}
	assert_int_equal(f->q->stats.reqs_flush, 1);
	assert_int_equal(f->q->stats.bytes_written, 3 * 4096);
}

/* Persistent grants: mapped once, then reused; no grant copy for data. */
static void test_persistent_reuse(void **state)
{
	struct fixture *f = *state;
	struct gbuf w, r;
	uint64_t segs;

	gbuf_alloc(&w, 11, false); /* blkfront grants persistent pages read-write */
	gbuf_alloc(&r, 11, false);
	fill(&w, 4);
	put_rw(f, BLKIF_OP_WRITE, 1, 64, &w, 0, 7);
	assert_int_equal(run1(f, 1), BLKIF_RSP_OKAY);
	put_rw(f, BLKIF_OP_READ, 2, 64, &r, 0, 7);
	assert_int_equal(run1(f, 2), BLKIF_RSP_OKAY);
	for (unsigned int i = 0; i < 11; i++) {
		assert_memory_equal(gpage(&w, i), gpage(&r, i), 4096);
	}
	assert_int_equal(f->q->stats.pgrant_maps, 22);
	assert_int_equal(g_maps, 22);
	assert_int_equal(f->q->stats.grant_copy_segs, 0);
	assert_int_equal(f->q->stats.zero_copy_reqs, 0);

	/* Same pages again, new data, partial segments: hits, still no copy. */
	fill(&w, 99);
	memset(gpage(&r, 0), 0, 4096);
	put_rw(f, BLKIF_OP_WRITE, 3, 64, &w, 1, 6);
	assert_int_equal(run1(f, 3), BLKIF_RSP_OKAY);
	put_rw(f, BLKIF_OP_READ, 4, 64, &r, 1, 6);
	assert_int_equal(run1(f, 4), BLKIF_RSP_OKAY);
	for (unsigned int i = 0; i < 11; i++) {
		assert_memory_equal(gpage(&w, i) + 512, gpage(&r, i) + 512, 3072);
	}
	assert_int_equal(gpage(&r, 0)[0], 0);
	assert_int_equal(f->q->stats.pgrant_maps, 22);
	assert_int_equal(f->q->stats.pgrant_hits, 22);
	segs = f->q->stats.grant_copy_segs;
	assert_int_equal(segs, 0);
}

/* A read-only grant cannot be mapped writable: it is copied instead. */
static void test_persistent_readonly_grant(void **state)
{
	struct fixture *f = *state;
	struct gbuf w, r;

	gbuf_alloc(&w, 2, true);
	fill(&w, 8);
	put_rw(f, BLKIF_OP_WRITE, 1, 0, &w, 0, 7);
	assert_int_equal(run1(f, 1), BLKIF_RSP_OKAY);
	assert_int_equal(f->q->stats.pgrant_map_fails, 2);
	assert_int_equal(f->q->stats.grant_copy_segs, 2);
	assert_int_equal(g_maps, 0);
	/* Reading into it fails as with grant copy, and leaves it untouched. */
	put_rw(f, BLKIF_OP_READ, 2, 0, &w, 0, 7);
	assert_int_equal(run1(f, 2), BLKIF_RSP_ERROR);
	/* A writable page reads the data back, mapped. */
	gbuf_alloc(&r, 2, false);
	put_rw(f, BLKIF_OP_READ, 3, 0, &r, 0, 7);
	assert_int_equal(run1(f, 3), BLKIF_RSP_OKAY);
	assert_memory_equal(gpage(&w, 0), gpage(&r, 0), 4096);
	assert_memory_equal(gpage(&w, 1), gpage(&r, 1), 4096);
	assert_int_equal(g_maps, 2);
	/* A ref revoked after it was mapped keeps its mapping (Xen refuses to end a mapped grant). */
	g_gnt[r.ref[0]].flags = 0;
	put_rw(f, BLKIF_OP_READ, 4, 0, &r, 0, 7);
	assert_int_equal(run1(f, 4), BLKIF_RSP_OKAY);
	/* An unmapped ref that is not granted fails. */
	struct gbuf bad;
	gbuf_alloc(&bad, 1, false);
	g_gnt[bad.ref[0]].flags = 0;
	put_rw(f, BLKIF_OP_READ, 5, 0, &bad, 0, 7);
	assert_int_equal(run1(f, 5), BLKIF_RSP_ERROR);
}

static bool is_mapped(const struct vd_queue *q, uint32_t gref)
{
	for (uint32_t i = 0; i < q->nr_pgrants; i++) {
		if (q->pgrants[i].addr != NULL && q->pgrants[i].gref == gref) {
			return true;
		}
	}
	return false;
}

/* A full set copies the excess; idle grants are evicted for new ones. */
static void test_persistent_full_and_evict(void **state)
{
	struct fixture *f = *state;
	struct gbuf w, r, w2;

	gbuf_alloc(&w, 11, false);
	gbuf_alloc(&r, 11, false);
	fill(&w, 6);
	put_rw(f, BLKIF_OP_WRITE, 1, 0, &w, 0, 7);
	assert_int_equal(run1(f, 1), BLKIF_RSP_OKAY);
	assert_int_equal(g_maps, 4);
	assert_int_equal(f->q->stats.grant_copy_segs, 7);
	assert_true(f->q->stats.pgrant_full >= 7);
	put_rw(f, BLKIF_OP_READ, 2, 0, &r, 0, 7);
	assert_int_equal(run1(f, 2), BLKIF_RSP_OKAY);
	for (unsigned int i = 0; i < 11; i++) {
		assert_memory_equal(gpage(&w, i), gpage(&r, i), 4096);
	}
	assert_int_equal(f->q->stats.pgrant_evictions, 0);
	/* Age the set: new refs now replace the least recently used. */
	for (uint32_t i = 0; i < f->q->nr_pgrants; i++) {
		f->q->pgrants[i].last_ns = 0;
	}
	gbuf_alloc(&w2, 2, false);
	fill(&w2, 7);
	put_rw(f, BLKIF_OP_WRITE, 3, 800, &w2, 0, 7);
	assert_int_equal(run1(f, 3), BLKIF_RSP_OKAY);
	assert_int_equal(f->q->stats.pgrant_evictions, 2);
	assert_int_equal(g_unmaps, 2);
	assert_true(is_mapped(f->q, w2.ref[0]));
	assert_true(is_mapped(f->q, w2.ref[1]));
	put_rw(f, BLKIF_OP_READ, 4, 800, &r, 0, 7);
	assert_int_equal(run1(f, 4), BLKIF_RSP_OKAY);
	assert_memory_equal(gpage(&w2, 0), gpage(&r, 0), 4096);
}

/* Zero-copy: whole pages go straight between guest pages and the image. */
static void test_zero_copy(void **state)
{
	struct fixture *f = *state;
	struct gbuf w, r, p;

	gbuf_alloc(&w, 256, false);
	gbuf_alloc(&r, 256, false);
	fill(&w, 12);
	put_indirect(f, BLKIF_OP_WRITE, 1, 2048, &w, 256);
	assert_int_equal(run1(f, 1), BLKIF_RSP_OKAY);
	put_indirect(f, BLKIF_OP_READ, 2, 2048, &r, 256);
	assert_int_equal(run1(f, 2), BLKIF_RSP_OKAY);
	for (unsigned int i = 0; i < 256; i++) {
		assert_memory_equal(gpage(&w, i), gpage(&r, i), 4096);
	}
	assert_int_equal(f->q->stats.zero_copy_reqs, 2);
	/* only the two indirect pages, granted read-only here: copied */
	assert_int_equal(f->q->stats.grant_copy_segs, 2);
	assert_int_equal(f->q->nr_free_pages, f->q->nr_pool_pages);
	/* Partial pages go through the bounce pages, correctly. */
	gbuf_alloc(&p, 3, false);
	fill(&p, 13);
	put_rw(f, BLKIF_OP_WRITE, 3, 9000, &p, 2, 5);
	assert_int_equal(run1(f, 3), BLKIF_RSP_OKAY);
	memset(gpage(&r, 0), 0, 4096 * 3);
	put_rw(f, BLKIF_OP_READ, 4, 9000,
	       &(struct gbuf){ .n = 3, .ref = { r.ref[0], r.ref[1], r.ref[2] } }, 2, 5);
	assert_int_equal(run1(f, 4), BLKIF_RSP_OKAY);
	for (unsigned int i = 0; i < 3; i++) {
		assert_memory_equal(gpage(&p, i) + 1024, gpage(&r, i) + 1024, 2048);
		assert_int_equal(gpage(&r, i)[0], 0);
	}
	assert_int_equal(f->q->stats.zero_copy_reqs, 2);
	/* A barrier with data, zero-copy, written. */
	fill(&w, 14);
	put_rw(f, BLKIF_OP_WRITE_BARRIER, 5, 4096,
	       &(struct gbuf){ .n = 2, .ref = { w.ref[0], w.ref[1] } }, 0, 7);
	assert_int_equal(run1(f, 5), BLKIF_RSP_OKAY);
	put_rw(f, BLKIF_OP_READ, 6, 4096, &(struct gbuf){ .n = 2, .ref = { r.ref[0], r.ref[1] } },
	       0, 7);
	assert_int_equal(run1(f, 6), BLKIF_RSP_OKAY);
	assert_memory_equal(gpage(&w, 0), gpage(&r, 0), 4096);
	assert_memory_equal(gpage(&w, 1), gpage(&r, 1), 4096);
	assert_int_equal(f->q->stats.zero_copy_reqs, 4);
}

/* Zero-copy that the kernel cannot do (EFAULT): served through bounce pages. */
static void test_zero_copy_fault_falls_back(void **state)
{
	struct fixture *f = *state;
	struct gbuf w, r;

	gbuf_alloc(&w, 4, false);
	gbuf_alloc(&r, 4, false);
	fill(&w, 31);
	put_rw(f, BLKIF_OP_WRITE, 1, 128, &w, 0, 7);
	assert_int_equal(run1(f, 1), BLKIF_RSP_OKAY);
	assert_true(f->q->zero_copy);
	g_efault_zc = 1;
	put_rw(f, BLKIF_OP_READ, 2, 128, &r, 0, 7);
	assert_int_equal(run1(f, 2), BLKIF_RSP_OKAY);
	assert_int_equal(g_efault_zc, 0);
	assert_false(f->q->zero_copy);
	for (unsigned int i = 0; i < 4; i++) {
		assert_memory_equal(gpage(&w, i), gpage(&r, i), 4096);
	}
	/* From now on through bounce pages (memcpy), still correct. */
	fill(&w, 32);
	put_rw(f, BLKIF_OP_WRITE, 3, 128, &w, 0, 7);
	assert_int_equal(run1(f, 3), BLKIF_RSP_OKAY);
	put_rw(f, BLKIF_OP_READ, 4, 128, &r, 0, 7);
	assert_int_equal(run1(f, 4), BLKIF_RSP_OKAY);
	assert_memory_equal(gpage(&w, 3), gpage(&r, 3), 4096);
	assert_int_equal(f->q->stats.zero_copy_reqs, 2);
	assert_int_equal(f->q->nr_free_pages, f->q->nr_pool_pages);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_write_read_roundtrip, setup, teardown),
		cmocka_unit_test_setup_teardown(test_partial_segments, setup, teardown),
		cmocka_unit_test_setup_teardown(test_indirect_roundtrip, setup_order4, teardown),
		cmocka_unit_test_setup_teardown(test_bad_requests_answered, setup, teardown),
		cmocka_unit_test_setup_teardown(test_grant_faults, setup, teardown),
		cmocka_unit_test_setup_teardown(test_flush_discard_barrier, setup, teardown),
		cmocka_unit_test_setup_teardown(test_readonly_refuses_writes, setup_readonly,
						teardown),
		cmocka_unit_test_setup_teardown(test_prod_overflow_halts, setup, teardown),
		cmocka_unit_test_setup_teardown(test_pool_backpressure, setup_small_pool, teardown),
		cmocka_unit_test_setup_teardown(test_thread_stop_drains, setup, teardown),
		cmocka_unit_test_setup_teardown(test_flush_with_data, setup, teardown),
		cmocka_unit_test_setup_teardown(test_persistent_reuse, setup_persistent, teardown),
		cmocka_unit_test_setup_teardown(test_persistent_readonly_grant, setup_persistent,
						teardown),
		cmocka_unit_test_setup_teardown(test_persistent_full_and_evict, setup_small_pgrants,
						teardown),
		cmocka_unit_test_setup_teardown(test_zero_copy, setup_zero_copy, teardown),
		cmocka_unit_test_setup_teardown(test_zero_copy_fault_falls_back, setup_zero_copy,
						teardown),
		cmocka_unit_test_setup_teardown(test_thread_stop_drains, setup_zero_copy, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
