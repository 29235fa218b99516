/*
 * blkif ring ABIs, private to src/blkif.
 *
 * A 32-bit x86 guest lays a request out with 4-byte alignment for uint64_t
 * (id at offset 4, sizeof 108); a 64-bit guest uses natural alignment (id at
 * offset 8, sizeof 112). Both are spelled out here with packed structs so
 * the layout does not depend on the compiler's target, and checked with
 * static_assert (Linux drivers/block/xen-blkback/common.h does the same).
 * Native is struct blkif_request from xen/io/blkif.h; on x86_64 it is the
 * x86_64 layout, which the asserts below verify.
 *
 * Responses: the same three fields in every ABI (id at 0, operation at 8,
 * status at 10). The x86_32 response is 12 bytes and does not raise the
 * ring entry's alignment, so an x86_32 ring entry is 108 bytes.
 */
#ifndef VD_BLKIF_ABI_H
#define VD_BLKIF_ABI_H

#include <assert.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include "blkif/blkif.h"

#define VD_PACKED __attribute__((__packed__))

/* ---- x86_32 ---- */

struct vd_blkif_x86_32_request_rw {
	uint8_t nr_segments;
	uint16_t handle;
	uint64_t id;
	uint64_t sector_number;
	struct blkif_request_segment seg[BLKIF_MAX_SEGMENTS_PER_REQUEST];
} VD_PACKED;

struct vd_blkif_x86_32_request_discard {
	uint8_t flag;
	uint16_t pad1;
	uint64_t id;
	uint64_t sector_number;
	uint64_t nr_sectors;
} VD_PACKED;

struct vd_blkif_x86_32_request_other {
	uint8_t pad1;
	uint16_t pad2;
	uint64_t id;
} VD_PACKED;

struct vd_blkif_x86_32_request_indirect {
	uint8_t indirect_op;
	uint16_t nr_segments;
	uint64_t id;
	uint64_t sector_number;
	uint16_t handle;
	uint16_t pad1;
	uint32_t indirect_grefs[BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST];
	uint64_t pad2;
} VD_PACKED;

struct vd_blkif_x86_32_request {
	uint8_t operation;
	union {
		struct vd_blkif_x86_32_request_rw rw;
		struct vd_blkif_x86_32_request_discard discard;
		struct vd_blkif_x86_32_request_other other;
		struct vd_blkif_x86_32_request_indirect indirect;
	} u;
} VD_PACKED;

struct vd_blkif_x86_32_response {
	uint64_t id;
	uint8_t operation;
	uint8_t pad;
	int16_t status;
} VD_PACKED;

/* ---- x86_64 ---- */

struct vd_blkif_x86_64_request_rw {
	uint8_t nr_segments;
	uint16_t handle;
	uint32_t pad1;
	uint64_t id;
	uint64_t sector_number;
	struct blkif_request_segment seg[BLKIF_MAX_SEGMENTS_PER_REQUEST];
} VD_PACKED;

struct vd_blkif_x86_64_request_discard {
	uint8_t flag;
	uint16_t pad1;
	uint32_t pad2;
	uint64_t id;
	uint64_t sector_number;
	uint64_t nr_sectors;
} VD_PACKED;

struct vd_blkif_x86_64_request_other {
	uint8_t pad1;
	uint16_t pad2;
	uint32_t pad3;
	uint64_t id;
} VD_PACKED;

struct vd_blkif_x86_64_request_indirect {
	uint8_t indirect_op;
	uint16_t nr_segments;
	uint32_t pad1;
	uint64_t id;
	uint64_t sector_number;
	uint16_t handle;
	uint16_t pad2;
	uint32_t indirect_grefs[BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST];
	uint32_t pad3;
} VD_PACKED;

struct vd_blkif_x86_64_request {
	uint8_t operation;
	union {
		struct vd_blkif_x86_64_request_rw rw;
		struct vd_blkif_x86_64_request_discard discard;
		struct vd_blkif_x86_64_request_other other;
		struct vd_blkif_x86_64_request_indirect indirect;
	} u;
} VD_PACKED;

struct vd_blkif_x86_64_response {
	uint64_t id;
	uint8_t operation;
	uint8_t pad;
	int16_t status;
	uint32_t pad2;
};

DEFINE_RING_TYPES(vd_blkif_x86_32, struct vd_blkif_x86_32_request, struct vd_blkif_x86_32_response);
DEFINE_RING_TYPES(vd_blkif_x86_64, struct vd_blkif_x86_64_request, struct vd_blkif_x86_64_response);

/* Layout checks: the numbers are the guest ABIs', not ours to choose. */
static_assert(sizeof(struct blkif_request_segment) == 8, "segment");
static_assert(offsetof(struct vd_blkif_x86_32_request, u.rw.nr_segments) == 1, "x86_32 nr");
static_assert(offsetof(struct vd_blkif_x86_32_request, u.rw.handle) == 2, "x86_32 handle");
static_assert(offsetof(struct vd_blkif_x86_32_request, u.rw.id) == 4, "x86_32 id");
static_assert(offsetof(struct vd_blkif_x86_32_request, u.rw.sector_number) == 12, "x86_32 sector");
static_assert(offsetof(struct vd_blkif_x86_32_request, u.rw.seg) == 20, "x86_32 seg");
static_assert(offsetof(struct vd_blkif_x86_32_request, u.discard.id) == 4, "x86_32 d id");
static_assert(offsetof(struct vd_blkif_x86_32_request, u.discard.nr_sectors) == 20, "x86_32 d nr");
static_assert(offsetof(struct vd_blkif_x86_32_request, u.other.id) == 4, "x86_32 o id");
static_assert(offsetof(struct vd_blkif_x86_32_request, u.indirect.nr_segments) == 2, "x86_32 i nr");
static_assert(offsetof(struct vd_blkif_x86_32_request, u.indirect.id) == 4, "x86_32 i id");
static_assert(offsetof(struct vd_blkif_x86_32_request, u.indirect.sector_number) == 12,
	      "x86_32 i s");
static_assert(offsetof(struct vd_blkif_x86_32_request, u.indirect.indirect_grefs) == 24,
	      "x86_32 g");
static_assert(sizeof(struct vd_blkif_x86_32_request_indirect) + 1 == 64, "x86_32 indirect size");
static_assert(sizeof(struct vd_blkif_x86_32_request) == 108, "x86_32 request size");
static_assert(sizeof(struct vd_blkif_x86_32_response) == 12, "x86_32 response size");
static_assert(offsetof(struct vd_blkif_x86_32_response, status) == 10, "x86_32 status");
static_assert(sizeof(union vd_blkif_x86_32_sring_entry) == 108, "x86_32 entry");

static_assert(offsetof(struct vd_blkif_x86_64_request, u.rw.nr_segments) == 1, "x86_64 nr");
static_assert(offsetof(struct vd_blkif_x86_64_request, u.rw.handle) == 2, "x86_64 handle");
static_assert(offsetof(struct vd_blkif_x86_64_request, u.rw.id) == 8, "x86_64 id");
static_assert(offsetof(struct vd_blkif_x86_64_request, u.rw.sector_number) == 16, "x86_64 sector");
static_assert(offsetof(struct vd_blkif_x86_64_request, u.rw.seg) == 24, "x86_64 seg");
static_assert(offsetof(struct vd_blkif_x86_64_request, u.discard.id) == 8, "x86_64 d id");
static_assert(offsetof(struct vd_blkif_x86_64_request, u.discard.nr_sectors) == 24, "x86_64 d nr");
static_assert(offsetof(struct vd_blkif_x86_64_request, u.other.id) == 8, "x86_64 o id");
static_assert(offsetof(struct vd_blkif_x86_64_request, u.indirect.nr_segments) == 2, "x86_64 i nr");
static_assert(offsetof(struct vd_blkif_x86_64_request, u.indirect.id) == 8, "x86_64 i id");
static_assert(offsetof(struct vd_blkif_x86_64_request, u.indirect.sector_number) == 16,
	      "x86_64 i s");
static_assert(offsetof(struct vd_blkif_x86_64_request, u.indirect.indirect_grefs) == 28,
	      "x86_64 g");
static_assert(sizeof(struct vd_blkif_x86_64_request_indirect) + 1 == 64, "x86_64 indirect size");
static_assert(sizeof(struct vd_blkif_x86_64_request) == 112, "x86_64 request size");
static_assert(sizeof(struct vd_blkif_x86_64_response) == 16, "x86_64 response size");
static_assert(offsetof(struct vd_blkif_x86_64_response, status) == 10, "x86_64 status");
static_assert(sizeof(union vd_blkif_x86_64_sring_entry) == 112, "x86_64 entry");

/* The shared ring header is the same for every ABI. */
static_assert(offsetof(struct blkif_sring, ring) == 64, "sring header");
static_assert(offsetof(struct vd_blkif_x86_32_sring, ring) == 64, "x86_32 sring header");
static_assert(offsetof(struct vd_blkif_x86_64_sring, ring) == 64, "x86_64 sring header");

#if defined(__x86_64__)
/* Native is x86_64 here: same bytes on the ring. */
static_assert(sizeof(struct blkif_request) == sizeof(struct vd_blkif_x86_64_request), "native");
static_assert(offsetof(struct blkif_request, id) == 8, "native id");
static_assert(offsetof(struct blkif_request, sector_number) == 16, "native sector");
static_assert(offsetof(struct blkif_request, seg) == 24, "native seg");
static_assert(offsetof(struct blkif_request_discard, nr_sectors) == 24, "native discard");
static_assert(offsetof(struct blkif_request_indirect, indirect_grefs) == 28, "native grefs");
static_assert(sizeof(union blkif_sring_entry) == 112, "native entry");
static_assert(offsetof(struct blkif_response, status) == 10, "native status");
#endif

/* Native: a private copy of one slot, viewed through each request type. */
union vd_blkif_native_slot {
	struct blkif_request rw;
	struct blkif_request_discard discard;
	struct blkif_request_indirect indirect;
};
static_assert(sizeof(union vd_blkif_native_slot) == sizeof(struct blkif_request),
	      "native slot union");

/* Decode one private copy into req (ring.c). Exposed for unit tests. */
void vd_blkif_decode_native(const union vd_blkif_native_slot *s, struct vd_blkif_req *req);
void vd_blkif_decode_x86_32(const struct vd_blkif_x86_32_request *s, struct vd_blkif_req *req);
void vd_blkif_decode_x86_64(const struct vd_blkif_x86_64_request *s, struct vd_blkif_req *req);

#endif
