/*
 * blkif: the block protocol of xen/io/blkif.h, seen from the backend.
 *
 * Ring ABIs: native (x86_64 here), x86_32 (packed 32-bit layout, as 32-bit
 * PV guests write it) and x86_64. The frontend's "protocol" key picks one.
 *
 * Trust: everything in the shared ring is written by the guest at any time.
 * vd_blkif_ring_get() copies one slot once into a private struct vd_blkif_req
 * (the fields that size loops are read once); vd_blkif_req_validate() checks
 * only that private copy. Nothing here touches guest memory other than the
 * mapped ring.
 *
 * Threads: a struct vd_blkif_ring belongs to one queue thread.
 */
#ifndef VD_BLKIF_H
#define VD_BLKIF_H

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <xen/xen.h>
#include <xen/grant_table.h>
#include <xen/io/ring.h>
#include <xen/io/blkif.h>

/* Our maxima, advertised in xenstore and enforced on every request. */
#define VD_BLKIF_MAX_RING_PAGE_ORDER    4 /* 16 pages */
#define VD_BLKIF_MAX_RING_PAGES         (1u << VD_BLKIF_MAX_RING_PAGE_ORDER)
#define VD_BLKIF_MAX_QUEUES             16
#define VD_BLKIF_MAX_INDIRECT_SEGS      256 /* feature-max-indirect-segments */
#define VD_BLKIF_SEGS_PER_INDIRECT_PAGE (4096 / sizeof(struct blkif_request_segment)) /* 512 */
#define VD_BLKIF_MAX_INDIRECT_PAGES                                           \
	((VD_BLKIF_MAX_INDIRECT_SEGS + VD_BLKIF_SEGS_PER_INDIRECT_PAGE - 1) / \
	 VD_BLKIF_SEGS_PER_INDIRECT_PAGE) /* 1 */
#define VD_BLKIF_MAX_SEGS VD_BLKIF_MAX_INDIRECT_SEGS

enum vd_blkif_abi {
	VD_BLKIF_ABI_NATIVE,
	VD_BLKIF_ABI_X86_32,
	VD_BLKIF_ABI_X86_64,
};

/* "x86_32-abi" / "x86_64-abi" / absent (native). -EINVAL if unknown. */
int vd_blkif_abi_parse(const char *protocol, enum vd_blkif_abi *out);

struct vd_blkif_seg {
	uint32_t gref;
	uint8_t first_sect; /* 512-byte sectors within the page, 0..7 */
	uint8_t last_sect;
};

/*
 * One request, privately copied and (after validate) trusted.
 * For BLKIF_OP_INDIRECT, op is the inner operation and indirect is true;
 * the segments arrive later through vd_blkif_req_set_indirect_segs().
 */
struct vd_blkif_req {
	uint64_t id;     /* echoed in the response, never interpreted */
	uint8_t op;      /* BLKIF_OP_READ/WRITE/WRITE_BARRIER/FLUSH_DISKCACHE/DISCARD */
	uint8_t wire_op; /* op as on the ring (BLKIF_OP_INDIRECT for indirect) */
	bool indirect;
	bool indirect_segs_set;    /* set by vd_blkif_req_set_indirect_segs() */
	uint8_t discard_flags;     /* BLKIF_DISCARD_SECURE */
	uint16_t nr_segs;          /* as on the wire until validated */
	uint8_t nr_indirect_pages; /* ceil(nr_segs / 512) for indirect */
	uint64_t sector_number;    /* 512-byte units, as on the wire */
	uint64_t nr_sectors;       /* DISCARD only */
	uint32_t indirect_grefs[BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST];
	/* Filled by validate: the byte range on the virtual disk. */
	uint64_t offset_bytes;
	uint64_t len_bytes;
	struct vd_blkif_seg seg[VD_BLKIF_MAX_SEGS];
};

/* What this VBD accepts; from the image and our advertised features. */
struct vd_blkif_limits {
	uint64_t size_bytes;
	uint32_t sector_bytes; /* logical sector size (512 or 4096) */
	bool readonly;
	bool flush;   /* feature-flush-cache */
	bool barrier; /* feature-barrier */
	bool discard; /* feature-discard */
	bool discard_secure;
	uint16_t max_indirect_segs; /* 0: indirect not offered */
};

/*
 * Check a request. Returns BLKIF_RSP_OKAY and fills offset_bytes/len_bytes,
 * or BLKIF_RSP_ERROR / BLKIF_RSP_EOPNOTSUPP with *why set to a static
 * string for a (rate-limited) log line. For an indirect request this checks
 * the header; call it again after vd_blkif_req_set_indirect_segs() for the
 * segments (the second call sees nr_segs' segments filled in).
 *
 * The rules are xen-blkback's (dispatch_rw_block_io, xen_vbd_translate,
 * dispatch_discard_io):
 *  - unknown op, or flush/barrier/discard/indirect not offered: EOPNOTSUPP
 *    (also a secure discard when discard_secure is off);
 *  - READ/WRITE: 1..11 segments (indirect: 1..max_indirect_segs, in at most
 *    VD_BLKIF_MAX_INDIRECT_PAGES pages, inner op READ or WRITE);
 *    FLUSH_DISKCACHE and WRITE_BARRIER may carry 0..11 segments of data
 *    (the queue layer does flush, write, flush);
 *  - each segment first_sect <= last_sect <= 7; with sector_bytes 4096,
 *    sector_number and every segment must be whole 4 KiB sectors;
 *  - the byte range must not overflow and must end within size_bytes;
 *  - anything but READ on a readonly VBD: ERROR;
 *  - DISCARD: nr_sectors >= 1, aligned to sector_bytes, within size_bytes.
 * offset_bytes = sector_number * 512, len_bytes = the data (or discard)
 * length; for flush without data len_bytes is 0.
 */
int vd_blkif_req_validate(struct vd_blkif_req *req, const struct vd_blkif_limits *lim,
			  const char **why);

/*
 * Copy the segments of an indirect request out of its indirect pages
 * (already copied into private memory: pages[i] is 4096 bytes for
 * i < req->nr_indirect_pages).
 */
void vd_blkif_req_set_indirect_segs(struct vd_blkif_req *req, const void *const *pages);

/* ---- the shared ring, backend side ---- */

struct vd_blkif_ring {
	enum vd_blkif_abi abi;
	unsigned int nr_ents;  /* ring size in requests (power of two) */
	void *sring;           /* mapped shared page(s) */
	RING_IDX req_cons;     /* private */
	RING_IDX rsp_prod_pvt; /* private */
	RING_IDX nr_in_flight; /* consumed requests not yet answered (get ++,
				      * put_rsp --); put_rsp with none is a bug */
};

/*
 * sring: nr_pages mapped pages (a power of two, 1..VD_BLKIF_MAX_RING_PAGES);
 * initialises the private indices from the ring's rsp_prod (BACK_RING_ATTACH).
 * nr_ents: 32 per page for every ABI (entries of 112 or 108 bytes).
 * -EINVAL on a bad nr_pages or abi.
 */
int vd_blkif_ring_init(struct vd_blkif_ring *r, enum vd_blkif_abi abi, void *sring,
		       unsigned int nr_pages);

/*
 * Requests available to consume, or -EPROTO if the guest's req_prod is
 * beyond what the ring can hold (req_prod - rsp_prod_pvt > nr_ents, or
 * req_prod - req_cons > nr_ents: the ring must then be halted).
 */
int vd_blkif_ring_pending(struct vd_blkif_ring *r);

/* Copy the next request into req and advance req_cons. Call only while
 * vd_blkif_ring_pending() > 0. */
void vd_blkif_ring_get(struct vd_blkif_ring *r, struct vd_blkif_req *req);

/* Queue one response (status BLKIF_RSP_*); not visible until push. */
void vd_blkif_ring_put_rsp(struct vd_blkif_ring *r, uint64_t id, uint8_t wire_op, int16_t status);

/* Publish queued responses; returns true if the guest must be notified. */
bool vd_blkif_ring_push_rsps(struct vd_blkif_ring *r);

/*
 * Before sleeping: re-arm req_event and report whether requests arrived
 * meanwhile (RING_FINAL_CHECK_FOR_REQUESTS). Returns >0 if there is work,
 * 0 if the ring is idle, -EPROTO on overflow.
 */
int vd_blkif_ring_final_check(struct vd_blkif_ring *r);

/* Convert -errno from the layers below into a BLKIF_RSP_* status. */
static inline int16_t vd_blkif_status_from_errno(int64_t rc)
{
	if (rc >= 0) {
		return BLKIF_RSP_OKAY;
	}
	return rc == -EOPNOTSUPP ? BLKIF_RSP_EOPNOTSUPP : BLKIF_RSP_ERROR;
}

#endif
