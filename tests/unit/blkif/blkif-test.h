/*
 * Test helpers: a frontend that writes requests in each ABI's wire layout
 * into a ring in plain memory.
 */
#ifndef VD_TEST_BLKIF_H
#define VD_TEST_BLKIF_H

#include <stdint.h>
#include <string.h>
#include "blkif/abi.h"
#include "blkif/blkif.h"

/* A request as a test writes it, before encoding. */
struct wreq {
	uint8_t op;
	uint8_t nr; /* direct nr_segments */
	uint8_t indirect_op;
	uint16_t nr16; /* indirect nr_segments */
	uint8_t flag;  /* discard */
	uint64_t id;
	uint64_t sector;
	uint64_t nr_sectors; /* discard */
	struct blkif_request_segment seg[BLKIF_MAX_SEGMENTS_PER_REQUEST];
	uint32_t grefs[BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST];
};

static inline size_t test_entry_size(enum vd_blkif_abi abi)
{
	return abi == VD_BLKIF_ABI_X86_32   ? sizeof(union vd_blkif_x86_32_sring_entry)
	       : abi == VD_BLKIF_ABI_X86_64 ? sizeof(union vd_blkif_x86_64_sring_entry)
					    : sizeof(union blkif_sring_entry);
}

#define ENCODE_EXPLICIT(T, w, dst)                                                            \
	do {                                                                                  \
		T r_;                                                                         \
		memset(&r_, 0, sizeof(r_));                                                   \
		r_.operation = (w)->op;                                                       \
		if ((w)->op == BLKIF_OP_DISCARD) {                                            \
			r_.u.discard.flag = (w)->flag;                                        \
			r_.u.discard.id = (w)->id;                                            \
			r_.u.discard.sector_number = (w)->sector;                             \
			r_.u.discard.nr_sectors = (w)->nr_sectors;                            \
		} else if ((w)->op == BLKIF_OP_INDIRECT) {                                    \
			r_.u.indirect.indirect_op = (w)->indirect_op;                         \
			r_.u.indirect.nr_segments = (w)->nr16;                                \
			r_.u.indirect.id = (w)->id;                                           \
			r_.u.indirect.sector_number = (w)->sector;                            \
			memcpy(r_.u.indirect.indirect_grefs, (w)->grefs, sizeof((w)->grefs)); \
		} else {                                                                      \
			r_.u.rw.nr_segments = (w)->nr;                                        \
			r_.u.rw.id = (w)->id;                                                 \
			r_.u.rw.sector_number = (w)->sector;                                  \
			memcpy(r_.u.rw.seg, (w)->seg, sizeof((w)->seg));                      \
		}                                                                             \
		memcpy(dst, &r_, sizeof(r_));                                                 \
	} while (0)

/* Write w into ring slot idx of the shared ring at sring. */
static inline void test_encode(enum vd_blkif_abi abi, void *sring, unsigned int nr_ents,
			       RING_IDX idx, const struct wreq *w)
{
	void *dst = (char *)sring + 64 + (idx & (nr_ents - 1)) * test_entry_size(abi);

	if (abi == VD_BLKIF_ABI_X86_32) {
		ENCODE_EXPLICIT(struct vd_blkif_x86_32_request, w, dst);
	} else if (abi == VD_BLKIF_ABI_X86_64) {
		ENCODE_EXPLICIT(struct vd_blkif_x86_64_request, w, dst);
	} else if (w->op == BLKIF_OP_DISCARD) {
		struct blkif_request_discard d;

		memset(&d, 0, sizeof(d));
		d.operation = w->op;
		d.flag = w->flag;
		d.id = w->id;
		d.sector_number = w->sector;
		d.nr_sectors = w->nr_sectors;
		memcpy(dst, &d, sizeof(d));
	} else if (w->op == BLKIF_OP_INDIRECT) {
		struct blkif_request_indirect d;

		memset(&d, 0, sizeof(d));
		d.operation = w->op;
		d.indirect_op = w->indirect_op;
		d.nr_segments = w->nr16;
		d.id = w->id;
		d.sector_number = w->sector;
		memcpy(d.indirect_grefs, w->grefs, sizeof(w->grefs));
		memcpy(dst, &d, sizeof(d));
	} else {
		struct blkif_request d;

		memset(&d, 0, sizeof(d));
		d.operation = w->op;
		d.nr_segments = w->nr;
		d.id = w->id;
		d.sector_number = w->sector;
		memcpy(d.seg, w->seg, sizeof(w->seg));
		memcpy(dst, &d, sizeof(d));
	}
}

#endif
