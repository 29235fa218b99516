/*
 * Request validation on the private copy (Linux xen-blkback
 * dispatch_rw_block_io, xen_vbd_translate, dispatch_discard_io).
 * The 512-byte blkif sector becomes bytes here and nowhere else.
 */
#include <string.h>

#include "blkif/blkif.h"
#include "common/compiler.h"

#define SECTOR_SHIFT     9
#define SECTORS_PER_PAGE (VD_PAGE_SIZE >> SECTOR_SHIFT)

static int reject(const char **why, const char *reason, int status)
{
	*why = reason;
	return status;
}

/* Logical sector size in 512-byte units (1 or 8); bad values behave as 512. */
static uint64_t sectors_per_block(const struct vd_blkif_limits *lim)
{
	uint32_t b = lim->sector_bytes;

	if (b < 512 || b > VD_PAGE_SIZE || (b & (b - 1)) != 0) {
		return 1;
	}
	return b >> SECTOR_SHIFT;
}

static unsigned int max_indirect(const struct vd_blkif_limits *lim)
{
	return VD_MIN((unsigned int)lim->max_indirect_segs,
		      (unsigned int)VD_BLKIF_MAX_INDIRECT_SEGS);
}

/* Range [sector_number, +nr_sectors) in bytes; -1 if it overflows or passes the end. */
static int check_range(uint64_t sector_number, uint64_t nr_sectors,
		       const struct vd_blkif_limits *lim, uint64_t *off, uint64_t *len,
		       const char **why)
{
	if (sector_number > (UINT64_MAX >> SECTOR_SHIFT) ||
	    nr_sectors > (UINT64_MAX >> SECTOR_SHIFT)) {
		*why = "sector number overflows";
		return -1;
	}
	*off = sector_number << SECTOR_SHIFT;
	*len = nr_sectors << SECTOR_SHIFT;
	if (*off + *len < *off) {
		*why = "sector range overflows";
		return -1;
	}
	if (*off + *len > lim->size_bytes) {
		*why = "access beyond end of device";
		return -1;
	}
	return 0;
}

static int validate_data(struct vd_blkif_req *req, const struct vd_blkif_limits *lim,
			 const char **why)
{
	uint64_t spb = sectors_per_block(lim);
	uint64_t nr_sectors = 0;
	unsigned int i;

	if ((req->sector_number & (spb - 1)) != 0) {
		return reject(why, "sector number not aligned to sector-size", BLKIF_RSP_ERROR);
	}
	/* nr_segs is bounded (<= 11 or <= max_indirect) by the caller. */
	for (i = 0; i < req->nr_segs; i++) {
		const struct vd_blkif_seg *s = &req->seg[i];
		unsigned int nsec;

		if (s->last_sect >= SECTORS_PER_PAGE || s->first_sect > s->last_sect) {
			return reject(why, "bad segment sectors", BLKIF_RSP_ERROR);
		}
		nsec = (unsigned int)s->last_sect - s->first_sect + 1;
		if ((s->first_sect & (spb - 1)) != 0 || (nsec & (spb - 1)) != 0) {
			return reject(why, "segment not aligned to sector-size", BLKIF_RSP_ERROR);
		}
		nr_sectors += nsec;
	}
	if (check_range(req->sector_number, nr_sectors, lim, &req->offset_bytes, &req->len_bytes,
			why) < 0) {
		return BLKIF_RSP_ERROR;
	}
	return BLKIF_RSP_OKAY;
}

static int validate_indirect(struct vd_blkif_req *req, const struct vd_blkif_limits *lim,
			     const char **why)
{
	uint64_t spb = sectors_per_block(lim);

	if (max_indirect(lim) == 0) {
		return reject(why, "indirect descriptors not offered", BLKIF_RSP_EOPNOTSUPP);
	}
	if (req->op != BLKIF_OP_READ && req->op != BLKIF_OP_WRITE) {
		return reject(why, "indirect operation not read or write", BLKIF_RSP_ERROR);
	}
	if (req->nr_segs == 0 || req->nr_segs > max_indirect(lim)) {
		return reject(why, "bad number of indirect segments", BLKIF_RSP_ERROR);
	}
	if (req->nr_indirect_pages > BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST ||
	    req->nr_indirect_pages > VD_BLKIF_MAX_INDIRECT_PAGES ||
	    req->nr_indirect_pages !=
		    VD_DIV_ROUND_UP((unsigned int)req->nr_segs, VD_BLKIF_SEGS_PER_INDIRECT_PAGE)) {
		return reject(why, "too many indirect pages", BLKIF_RSP_ERROR);
	}
	if (req->op == BLKIF_OP_WRITE && lim->readonly) {
		return reject(why, "write to a read-only device", BLKIF_RSP_ERROR);
	}
	if (!req->indirect_segs_set) {
		/* Header only: the start must be sane before we fetch the pages. */
		uint64_t off, len;

		req->offset_bytes = 0;
		req->len_bytes = 0;
		if ((req->sector_number & (spb - 1)) != 0) {
			return reject(why, "sector number not aligned to sector-size",
				      BLKIF_RSP_ERROR);
		}
		if (check_range(req->sector_number, 0, lim, &off, &len, why) < 0) {
			return BLKIF_RSP_ERROR;
		}
		req->offset_bytes = off;
		return BLKIF_RSP_OKAY;
	}
	return validate_data(req, lim, why);
}

int vd_blkif_req_validate(struct vd_blkif_req *req, const struct vd_blkif_limits *lim,
			  const char **why)
{
	req->offset_bytes = 0;
	req->len_bytes = 0;
	*why = NULL;

	if (req->indirect) {
		return validate_indirect(req, lim, why);
	}

	switch (req->op) {
	case BLKIF_OP_READ:
	case BLKIF_OP_WRITE:
		if (req->nr_segs == 0 || req->nr_segs > BLKIF_MAX_SEGMENTS_PER_REQUEST) {
			return reject(why, "bad number of segments", BLKIF_RSP_ERROR);
		}
		if (req->op == BLKIF_OP_WRITE && lim->readonly) {
			return reject(why, "write to a read-only device", BLKIF_RSP_ERROR);
		}
		return validate_data(req, lim, why);

	case BLKIF_OP_WRITE_BARRIER:
	case BLKIF_OP_FLUSH_DISKCACHE:
		if (req->op == BLKIF_OP_WRITE_BARRIER ? !lim->barrier : !lim->flush) {
			return reject(why,
				      req->op == BLKIF_OP_WRITE_BARRIER ? "barrier not offered"
									: "flush not offered",
				      BLKIF_RSP_EOPNOTSUPP);
		}
		if (req->nr_segs > BLKIF_MAX_SEGMENTS_PER_REQUEST) {
			return reject(why, "bad number of segments", BLKIF_RSP_ERROR);
		}
		/* blkback: flush and barrier are writes (REQ_PREFLUSH). */
		if (lim->readonly) {
			return reject(why, "flush/barrier on a read-only device", BLKIF_RSP_ERROR);
		}
		/*
		 * Without data the sector means nothing: Linux blkfront sends
		 * (sector_t)-1 there (the __sector blk_rq_init() gives a flush
		 * request), and blkback checks the range only when there are
		 * sectors (xen_vbd_translate). Rejecting it makes blkfront
		 * switch its write cache off for good ("empty flush op failed").
		 */
		if (req->nr_segs == 0) {
			return BLKIF_RSP_OKAY;
		}
		return validate_data(req, lim, why);

	case BLKIF_OP_DISCARD: {
		uint64_t spb = sectors_per_block(lim);

		if (!lim->discard) {
			return reject(why, "discard not offered", BLKIF_RSP_EOPNOTSUPP);
		}
		if ((req->discard_flags & BLKIF_DISCARD_SECURE) && !lim->discard_secure) {
			return reject(why, "secure discard not offered", BLKIF_RSP_EOPNOTSUPP);
		}
		if (lim->readonly) {
			return reject(why, "discard on a read-only device", BLKIF_RSP_ERROR);
		}
		if (req->nr_sectors == 0) {
			return reject(why, "discard of zero sectors", BLKIF_RSP_ERROR);
		}
		if ((req->sector_number & (spb - 1)) != 0 || (req->nr_sectors & (spb - 1)) != 0) {
			return reject(why, "discard not aligned to sector-size", BLKIF_RSP_ERROR);
		}
		if (check_range(req->sector_number, req->nr_sectors, lim, &req->offset_bytes,
				&req->len_bytes, why) < 0) {
			req->offset_bytes = 0;
			req->len_bytes = 0;
			return BLKIF_RSP_ERROR;
		}
		return BLKIF_RSP_OKAY;
	}

	default:
		return reject(why, "unknown operation", BLKIF_RSP_EOPNOTSUPP);
	}
}

void vd_blkif_req_set_indirect_segs(struct vd_blkif_req *req, const void *const *pages)
{
	unsigned int nr = req->nr_segs;
	unsigned int npages = VD_MIN((unsigned int)req->nr_indirect_pages,
				     (unsigned int)BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST);
	unsigned int i;

	/* Never trust nr_segs here: validate may not have run. */
	nr = VD_MIN(nr, (unsigned int)VD_BLKIF_MAX_SEGS);
	nr = VD_MIN(nr, npages * (unsigned int)VD_BLKIF_SEGS_PER_INDIRECT_PAGE);
	for (i = 0; i < nr; i++) {
		struct blkif_request_segment s;
		const char *page = pages[i / VD_BLKIF_SEGS_PER_INDIRECT_PAGE];

		memcpy(&s, page + (i % VD_BLKIF_SEGS_PER_INDIRECT_PAGE) * sizeof(s), sizeof(s));
		req->seg[i].gref = s.gref;
		req->seg[i].first_sect = s.first_sect;
		req->seg[i].last_sect = s.last_sect;
	}
	/* If nr < nr_segs, nr_segs > VD_BLKIF_MAX_SEGS: validate rejects it
	 * before looking at any segment. */
	req->indirect_segs_set = true;
}
