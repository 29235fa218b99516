/*
 * The shared blkif ring, backend side (Linux xen-blkback blkback.c
 * __do_block_io_op and make_response, with the checks of xen/io/ring.h).
 *
 * The guest may rewrite any byte of the ring at any time. Every index it
 * owns (req_prod, rsp_event) is read once per use; each request slot is
 * copied once, with one memcpy followed by a compiler barrier, and decoded
 * from that private copy only.
 */
#include <string.h>
#include <xen/io/protocols.h>

#include "blkif/abi.h"
#include "blkif/blkif.h"
#include "common/compiler.h"

/*
 * ring.h maps xen_mb() to mb() (or leaves it to the includer, depending on
 * __XEN_INTERFACE_VERSION__), and userspace has no mb(): use our own.
 * x86 orders loads with loads and stores with stores, so rmb and wmb only
 * need to stop the compiler; mb must order a store before a later load
 * (mfence or a locked instruction): a seq_cst fence gives that.
 */
#define ring_mb()                vd_smp_mb()
/*
 * The indices shared with the guest are C11 atomics: acquire when reading
 * the guest's producer index (the slots it published are read after it),
 * release when publishing ours (the responses are written before it). Also
 * what lets ThreadSanitizer check the queue tests, whose frontend is a
 * thread of the same process.
 */
#define ring_load_acquire(x)     __atomic_load_n(&(x), __ATOMIC_ACQUIRE)
#define ring_load_relaxed(x)     __atomic_load_n(&(x), __ATOMIC_RELAXED)
#define ring_store_release(x, v) __atomic_store_n(&(x), (v), __ATOMIC_RELEASE)

/* The shared header (req_prod .. rsp_event) is laid out alike in every ABI. */
static struct blkif_sring *hdr(const struct vd_blkif_ring *r)
{
	return r->sring;
}

static size_t entry_size(enum vd_blkif_abi abi)
{
	switch (abi) {
	case VD_BLKIF_ABI_X86_32:
		return sizeof(union vd_blkif_x86_32_sring_entry);
	case VD_BLKIF_ABI_X86_64:
		return sizeof(union vd_blkif_x86_64_sring_entry);
	case VD_BLKIF_ABI_NATIVE:
	default:
		return sizeof(union blkif_sring_entry);
	}
}

static size_t req_size(enum vd_blkif_abi abi)
{
	switch (abi) {
	case VD_BLKIF_ABI_X86_32:
		return sizeof(struct vd_blkif_x86_32_request);
	case VD_BLKIF_ABI_X86_64:
		return sizeof(struct vd_blkif_x86_64_request);
	case VD_BLKIF_ABI_NATIVE:
	default:
		return sizeof(struct blkif_request);
	}
}

/* Address of entry idx; idx is masked, so always inside the mapped pages. */
static void *slot(const struct vd_blkif_ring *r, RING_IDX idx)
{
	size_t i = idx & (r->nr_ents - 1);

	return (char *)r->sring + offsetof(struct blkif_sring, ring) + i * entry_size(r->abi);
}

int vd_blkif_abi_parse(const char *protocol, enum vd_blkif_abi *out)
{
	if (protocol == NULL || protocol[0] == '\0') {
		*out = VD_BLKIF_ABI_NATIVE;
	} else if (strcmp(protocol, XEN_IO_PROTO_ABI_X86_32) == 0) {
		*out = VD_BLKIF_ABI_X86_32;
	} else if (strcmp(protocol, XEN_IO_PROTO_ABI_X86_64) == 0) {
		*out = VD_BLKIF_ABI_X86_64;
	} else {
		return -EINVAL;
	}
	return 0;
}

int vd_blkif_ring_init(struct vd_blkif_ring *r, enum vd_blkif_abi abi, void *sring,
		       unsigned int nr_pages)
{
	size_t ents;
	unsigned int n = 1;

	if (sring == NULL || nr_pages == 0 || nr_pages > VD_BLKIF_MAX_RING_PAGES ||
	    (nr_pages & (nr_pages - 1)) != 0) {
		return -EINVAL;
	}
	if (abi != VD_BLKIF_ABI_NATIVE && abi != VD_BLKIF_ABI_X86_32 &&
	    abi != VD_BLKIF_ABI_X86_64) {
		return -EINVAL;
	}
	/* __CONST_RING_SIZE: as many entries as fit, rounded down to a power of 2. */
	ents = ((size_t)nr_pages * VD_PAGE_SIZE - offsetof(struct blkif_sring, ring)) /
	       entry_size(abi);
	while ((size_t)n * 2 <= ents) {
		n *= 2;
	}
	r->abi = abi;
	r->nr_ents = n;
	r->sring = sring;
	/* BACK_RING_ATTACH: continue from whatever responses are already out. */
	r->rsp_prod_pvt = ring_load_relaxed(hdr(r)->rsp_prod);
	r->req_cons = r->rsp_prod_pvt;
	r->nr_in_flight = 0;
	return 0;
}

int vd_blkif_ring_pending(struct vd_blkif_ring *r)
{
	/* Read once; the slots up to prod are read after it (acquire). */
	RING_IDX prod = ring_load_acquire(hdr(r)->req_prod);

	/* RING_REQUEST_PROD_OVERFLOW, and req_prod moving backwards. */
	if (prod - r->rsp_prod_pvt > r->nr_ents || prod - r->req_cons > r->nr_ents) {
		return -EPROTO;
	}
	return (int)(prod - r->req_cons);
}

static void decode_segs(struct vd_blkif_req *req, const struct blkif_request_segment *src,
			unsigned int nr)
{
	unsigned int i;

	/* The wire count is clamped before the loop; validate rejects > 11. */
	if (nr > BLKIF_MAX_SEGMENTS_PER_REQUEST) {
		nr = BLKIF_MAX_SEGMENTS_PER_REQUEST;
	}
	for (i = 0; i < nr; i++) {
		req->seg[i].gref = src[i].gref;
		req->seg[i].first_sect = src[i].first_sect;
		req->seg[i].last_sect = src[i].last_sect;
	}
}

static void decode_common(struct vd_blkif_req *req, uint8_t wire_op)
{
	req->op = wire_op;
	req->wire_op = wire_op;
	req->indirect = false;
	req->indirect_segs_set = false;
	req->discard_flags = 0;
	req->nr_segs = 0;
	req->nr_indirect_pages = 0;
	req->sector_number = 0;
	req->nr_sectors = 0;
	req->offset_bytes = 0;
	req->len_bytes = 0;
	memset(req->indirect_grefs, 0, sizeof(req->indirect_grefs));
}

static void decode_indirect_hdr(struct vd_blkif_req *req, uint8_t indirect_op, uint16_t nr,
				uint64_t sector, const uint32_t *grefs)
{
	unsigned int pages = VD_DIV_ROUND_UP((unsigned int)nr, VD_BLKIF_SEGS_PER_INDIRECT_PAGE);

	req->op = indirect_op;
	req->indirect = true;
	req->nr_segs = nr;
	/* ceil(65535 / 512) = 128 fits; validate bounds it by our maximum. */
	req->nr_indirect_pages = (uint8_t)pages;
	req->sector_number = sector;
	memcpy(req->indirect_grefs, grefs, sizeof(req->indirect_grefs));
}

void vd_blkif_decode_native(const union vd_blkif_native_slot *s, struct vd_blkif_req *req)
{
	decode_common(req, s->rw.operation);
	switch (s->rw.operation) {
	case BLKIF_OP_READ:
	case BLKIF_OP_WRITE:
	case BLKIF_OP_WRITE_BARRIER:
	case BLKIF_OP_FLUSH_DISKCACHE:
		req->id = s->rw.id;
		req->nr_segs = s->rw.nr_segments;
		req->sector_number = s->rw.sector_number;
		decode_segs(req, s->rw.seg, s->rw.nr_segments);
		break;
	case BLKIF_OP_DISCARD:
		req->id = s->discard.id;
		req->discard_flags = s->discard.flag;
		req->sector_number = s->discard.sector_number;
		req->nr_sectors = s->discard.nr_sectors;
		break;
	case BLKIF_OP_INDIRECT:
		req->id = s->indirect.id;
		decode_indirect_hdr(req, s->indirect.indirect_op, s->indirect.nr_segments,
				    s->indirect.sector_number, s->indirect.indirect_grefs);
		break;
	default:
		/* Unknown: only the id, to answer EOPNOTSUPP. */
		req->id = s->rw.id;
		break;
	}
}

/* The two explicit ABIs have the same fields at different offsets. */
#define DECODE_EXPLICIT(s, req)                                                             \
	do {                                                                                \
		decode_common(req, (s)->operation);                                         \
		switch ((s)->operation) {                                                   \
		case BLKIF_OP_READ:                                                         \
		case BLKIF_OP_WRITE:                                                        \
		case BLKIF_OP_WRITE_BARRIER:                                                \
		case BLKIF_OP_FLUSH_DISKCACHE: {                                            \
			struct blkif_request_segment segs_[BLKIF_MAX_SEGMENTS_PER_REQUEST]; \
			(req)->id = (s)->u.rw.id;                                           \
			(req)->nr_segs = (s)->u.rw.nr_segments;                             \
			(req)->sector_number = (s)->u.rw.sector_number;                     \
			memcpy(segs_, (s)->u.rw.seg, sizeof(segs_));                        \
			decode_segs(req, segs_, (s)->u.rw.nr_segments);                     \
			break;                                                              \
		}                                                                           \
		case BLKIF_OP_DISCARD:                                                      \
			(req)->id = (s)->u.discard.id;                                      \
			(req)->discard_flags = (s)->u.discard.flag;                         \
			(req)->sector_number = (s)->u.discard.sector_number;                \
			(req)->nr_sectors = (s)->u.discard.nr_sectors;                      \
			break;                                                              \
		case BLKIF_OP_INDIRECT: {                                                   \
			uint32_t grefs_[BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST];              \
			(req)->id = (s)->u.indirect.id;                                     \
			memcpy(grefs_, (s)->u.indirect.indirect_grefs, sizeof(grefs_));     \
			decode_indirect_hdr(req, (s)->u.indirect.indirect_op,               \
					    (s)->u.indirect.nr_segments,                    \
					    (s)->u.indirect.sector_number, grefs_);         \
			break;                                                              \
		}                                                                           \
		default:                                                                    \
			(req)->id = (s)->u.other.id;                                        \
			break;                                                              \
		}                                                                           \
	} while (0)

void vd_blkif_decode_x86_32(const struct vd_blkif_x86_32_request *s, struct vd_blkif_req *req)
{
	DECODE_EXPLICIT(s, req);
}

void vd_blkif_decode_x86_64(const struct vd_blkif_x86_64_request *s, struct vd_blkif_req *req)
{
	DECODE_EXPLICIT(s, req);
}

void vd_blkif_ring_get(struct vd_blkif_ring *r, struct vd_blkif_req *req)
{
	union {
		union vd_blkif_native_slot native;
		struct vd_blkif_x86_32_request x86_32;
		struct vd_blkif_x86_64_request x86_64;
	} copy;

	/* One copy of the slot; after the barrier the compiler may not go back
	 * to the shared memory for any field (blkback RING_COPY_REQUEST). */
	memcpy(&copy, slot(r, r->req_cons), req_size(r->abi));
	vd_barrier();
	r->req_cons++;
	r->nr_in_flight++;

	switch (r->abi) {
	case VD_BLKIF_ABI_X86_32:
		vd_blkif_decode_x86_32(&copy.x86_32, req);
		break;
	case VD_BLKIF_ABI_X86_64:
		vd_blkif_decode_x86_64(&copy.x86_64, req);
		break;
	case VD_BLKIF_ABI_NATIVE:
	default:
		vd_blkif_decode_native(&copy.native, req);
		break;
	}
}

void vd_blkif_ring_put_rsp(struct vd_blkif_ring *r, uint64_t id, uint8_t wire_op, int16_t status)
{
	void *dst = slot(r, r->rsp_prod_pvt);

	/* More responses than consumed requests would overwrite unread requests. */
	assert(r->nr_in_flight > 0);
	switch (r->abi) {
	case VD_BLKIF_ABI_X86_32: {
		struct vd_blkif_x86_32_response rsp = { .id = id,
							.operation = wire_op,
							.status = status };
		memcpy(dst, &rsp, sizeof(rsp));
		break;
	}
	case VD_BLKIF_ABI_X86_64: {
		struct vd_blkif_x86_64_response rsp = { .id = id,
							.operation = wire_op,
							.status = status };
		memcpy(dst, &rsp, sizeof(rsp));
		break;
	}
	case VD_BLKIF_ABI_NATIVE:
	default: {
		struct blkif_response rsp;

		memset(&rsp, 0, sizeof(rsp));
		rsp.id = id;
		rsp.operation = wire_op;
		rsp.status = status;
		memcpy(dst, &rsp, sizeof(rsp));
		break;
	}
	}
	r->rsp_prod_pvt++;
	r->nr_in_flight--;
}

bool vd_blkif_ring_push_rsps(struct vd_blkif_ring *r)
{
	/* RING_PUSH_RESPONSES_AND_CHECK_NOTIFY */
	RING_IDX old = ring_load_relaxed(hdr(r)->rsp_prod);
	RING_IDX new = r->rsp_prod_pvt;
	RING_IDX event;

	/* The guest sees the responses before the producer index (release). */
	ring_store_release(hdr(r)->rsp_prod, new);
	ring_mb(); /* the guest sees the new index before we read rsp_event */
	event = ring_load_relaxed(hdr(r)->rsp_event);
	return (RING_IDX)(new - event) < (RING_IDX)(new - old);
}

int vd_blkif_ring_final_check(struct vd_blkif_ring *r)
{
	/* RING_FINAL_CHECK_FOR_REQUESTS */
	int n = vd_blkif_ring_pending(r);

	if (n != 0) {
		return n;
	}
	__atomic_store_n(&hdr(r)->req_event, r->req_cons + 1, __ATOMIC_RELAXED);
	ring_mb(); /* req_event is visible before we look at req_prod again */
	return vd_blkif_ring_pending(r);
}
