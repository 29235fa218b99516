/*
 * vhd: private header of the VHD driver (Microsoft VHD specification 1.0,
 * as written by Virtual PC, Hyper-V, qemu's vpc and XenServer's tapdisk).
 *
 * Files, one concern each (QEMU qcow2.h style):
 *   vhd-format.c  on-disk structures: checksums, geometry, footer/header
 *                 encode/decode, parent locators, create
 *   vhd.c         open/close, chain walking, check, the driver vtable
 *   vhd-ops.c     info, block status, resize
 *   vhd-io.c      the datapath: split at block boundaries, reads through
 *                 the chain, jobs sent to the metadata owner
 *   vhd-alloc.c   the owner's allocation rounds (vhd-io-int.h is what
 *                 the two share)
 *
 * Layout of a dynamic/differencing file as vdisk writes it:
 *   0      footer copy (512)
 *   512    dynamic header (1024)
 *   1536   BAT: max_table_entries big-endian u32 sector numbers, padded to 512
 *   ...    tapdisk batmap header (512) + batmap (1 bit per block, MSB first)
 *   ...    parent locators (differencing), each padded to 512
 *   ...    blocks: sector bitmap (block_size/512 bits, padded to 512) + data
 *   end    footer (512)
 * A fixed disk is the data followed by the footer.
 *
 * Virtual size: as qemu's vpc decides it, so that both read the same disk:
 * the CHS geometry's size unless the creator is one that records the exact
 * size ("win ", "qem2", "d2v ", "CTXS", "tap\0") or the geometry is the
 * maximum one; then footer.current_size. vdisk creates images as tapdisk
 * does (creator "tap\0" version 1.3, with a batmap), so qemu, tapdisk and
 * vdisk agree on current_size. Larger than 2040 GiB is refused (as qemu).
 *
 * Concurrency: the BAT, the per-block sector bitmaps and the
 * batmap have one owner, the ioctx of the first queue (vhd-io.c). Any
 * queue reads them with atomic loads; only the owner changes them, after
 * the on-disk update has completed. Other queues send metadata jobs to
 * the owner with vd_ioctx_send_msg and get the answer the same way.
 *
 * Allocation on first write (owner, in rounds that batch every pending job):
 *   1. new blocks: WRITE_ZEROES over the data area, then the bitmap and the
 *      job's data written at the old end of data (over the old footer),
 *      and the footer at the new end; already allocated blocks with a
 *      partial bitmap: the job's data
 *   2. FLUSH
 *   3. BAT sectors (new blocks) and bitmaps (old blocks)
 *   4. in-memory BAT/bitmaps published, jobs answered
 *   5. batmap sector(s) and batmap header
 * A crash before 3 leaves an unreferenced block at the end (a leak that
 * `check --repair` truncates) and the footer copy at offset 0 describes the
 * disk; after 3 the data is referenced and was durable before the
 * reference. A lost step 5 leaves a stale batmap bit 0 (harmless: it only
 * says "look at the bitmap").
 * A round that fails (ENOSPC, EIO) before 4 is rolled back (vhd-alloc.c):
 * the old BAT sectors again if 3 ran, the footer at the old end, the file
 * truncated after it, data_end restored; so a full filesystem leaves a
 * valid file of the same size, and the next round allocates at the same
 * place once there is room.
 *
 * Sector bitmaps: honoured in dynamic disks as in differencing ones (a
 * clear bit reads as zeroes, or as the parent's data). Other writers
 * (vhd-util, Hyper-V) allocate a block with a zero bitmap and set bits as
 * they write; qemu's vpc writes all-ones bitmaps and ignores them on read.
 * vdisk gives a fresh dynamic block an all-ones bitmap over a zeroed data
 * area (the same content, and no bitmap update on later writes), so its
 * own blocks and qemu's, like batmap-full ones, share full_bitmap and take
 * the fast path: straight to the file. Only blocks with clear bits cost a
 * job for the owner on the first write to those sectors (the bits set
 * before the write is acknowledged: steps 1-4 above).
 *
 * Discard (and WRITE_ZEROES): the range is made to read as zeroes and its
 * host space is punched (fallocate) where the block is allocated. Blocks
 * are never dropped from the BAT: a VHD cannot reuse a hole in the middle
 * of the file, so releasing whole blocks would only move the leak; the
 * punched range returns the space to the filesystem instead. In a
 * differencing disk the sectors keep their bitmap bits (set if needed, so
 * that reads return zeroes rather than the parent's data). An unallocated
 * block of a dynamic disk without parent already reads as zeroes.
 */
#ifndef VD_IMAGE_VHD_H
#define VD_IMAGE_VHD_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/uio.h>

#include "common/compiler.h"
#include "image/image-driver.h"

#define VHD_SECTOR          512u
#define VHD_FOOTER_SIZE     512u
#define VHD_HEADER_SIZE     1024u
#define VHD_TYPE_FIXED      2u
#define VHD_TYPE_DYNAMIC    3u
#define VHD_TYPE_DIFF       4u
#define VHD_BAT_UNUSED      0xFFFFFFFFu
#define VHD_DEFAULT_BLOCK   (2u << 20)
#define VHD_MIN_BLOCK       VHD_SECTOR
#define VHD_MAX_BLOCK       (256u << 20)
#define VHD_MAX_SECTORS     0xff000000ull /* 2040 GiB, as qemu */
#define VHD_MAX_GEOMETRY    (65535ull * 16 * 255)
#define VHD_MAX_BAT_ENTRIES (1u << 24) /* 64 MiB of BAT in memory at most */
#define VHD_NR_LOCATORS     8
#define VHD_TIMESTAMP_BASE  946684800u /* 2000-01-01T00:00:00Z */
#define VHD_BATMAP_VERSION  0x00010002u
#define VHD_TAP_VERSION     0x00010003u
#define VHD_MAX_CHAIN       64

/* cookies (not NUL-terminated on disk) */
static const uint8_t VHD_COOKIE_FOOTER[8] = { 'c', 'o', 'n', 'e', 'c', 't', 'i', 'x' };
static const uint8_t VHD_COOKIE_HEADER[8] = { 'c', 'x', 's', 'p', 'a', 'r', 's', 'e' };
static const uint8_t VHD_COOKIE_BATMAP[8] = { 't', 'd', 'b', 'a', 't', 'm', 'a', 'p' };

/* parent locator platform codes */
#define VHD_PLAT_NONE 0x00000000u
#define VHD_PLAT_WI2R 0x57693272u /* "Wi2r" deprecated */
#define VHD_PLAT_WI2K 0x5769326Bu /* "Wi2k" deprecated */
#define VHD_PLAT_W2RU 0x57327275u /* "W2ru" relative, UTF-16LE */
#define VHD_PLAT_W2KU 0x57326B75u /* "W2ku" absolute, UTF-16LE */
#define VHD_PLAT_MAC  0x4D616320u /* "Mac " alias blob */
#define VHD_PLAT_MACX 0x4D616358u /* "MacX" file URL, UTF-8 */

/* ---- on-disk layouts (big-endian) ---- */
struct vhd_footer_disk {
	char cookie[8]; /* "conectix" */
	uint32_t features;
	uint32_t version;
	uint64_t data_offset;
	uint32_t timestamp;
	char creator_app[4];
	uint32_t creator_ver;
	uint32_t creator_os;
	uint64_t orig_size;
	uint64_t current_size;
	uint16_t cyls;
	uint8_t heads;
	uint8_t secs;
	uint32_t type;
	uint32_t checksum;
	uint8_t uuid[16];
	uint8_t saved_state;
	uint8_t reserved[427];
} __attribute__((packed));
static_assert(sizeof(struct vhd_footer_disk) == 512, "footer");
static_assert(offsetof(struct vhd_footer_disk, checksum) == 64, "footer checksum");

struct vhd_locator_disk {
	uint32_t code;
	uint32_t data_space;
	uint32_t data_len;
	uint32_t reserved;
	uint64_t data_offset;
} __attribute__((packed));
static_assert(sizeof(struct vhd_locator_disk) == 24, "locator");

struct vhd_header_disk {
	char cookie[8]; /* "cxsparse" */
	uint64_t data_offset;
	uint64_t table_offset;
	uint32_t version;
	uint32_t max_table_entries;
	uint32_t block_size;
	uint32_t checksum;
	uint8_t parent_uuid[16];
	uint32_t parent_timestamp;
	uint32_t reserved1;
	uint8_t parent_name[512]; /* UTF-16BE */
	struct vhd_locator_disk loc[VHD_NR_LOCATORS];
	uint8_t reserved2[256];
} __attribute__((packed));
static_assert(sizeof(struct vhd_header_disk) == 1024, "header");
static_assert(offsetof(struct vhd_header_disk, checksum) == 36, "header checksum");
static_assert(offsetof(struct vhd_header_disk, loc) == 576, "header locators");

struct vhd_batmap_disk {
	char cookie[8]; /* "tdbatmap" */
	uint64_t batmap_offset;
	uint32_t batmap_size; /* sectors */
	uint32_t batmap_version;
	uint32_t checksum; /* one's complement of the byte sum of the map */
	uint8_t marker;
	uint8_t reserved[483];
} __attribute__((packed));
static_assert(sizeof(struct vhd_batmap_disk) == 512, "batmap header");

/* ---- decoded (host order) ---- */
struct vhd_footer {
	uint32_t features, version, timestamp, creator_ver, creator_os, type, checksum;
	uint64_t data_offset, orig_size, current_size;
	char creator_app[4];
	uint16_t cyls;
	uint8_t heads, secs;
	uint8_t uuid[16];
	uint8_t saved_state;
};

struct vhd_locator {
	uint32_t code, data_space, data_len;
	uint64_t data_offset;
};

struct vhd_header {
	uint64_t data_offset, table_offset;
	uint32_t version, max_table_entries, block_size, checksum, parent_timestamp;
	uint8_t parent_uuid[16];
	uint8_t parent_name[512];
	struct vhd_locator loc[VHD_NR_LOCATORS];
};

/* ---- vhd-format.c ---- */
uint32_t vhd_checksum(const void *buf, size_t len, size_t csum_off);
uint16_t vhd_be16(const void *p);
uint32_t vhd_be32(const void *p);
uint64_t vhd_be64(const void *p);
void vhd_put_be32(void *p, uint32_t v);
/* 0 ok, -EINVAL bad cookie, -EILSEQ bad checksum. */
int vhd_footer_decode(const void *buf512, struct vhd_footer *f);
void vhd_footer_encode(const struct vhd_footer *f, void *buf512); /* fills checksum */
bool vhd_footer_equal(const struct vhd_footer *a, const struct vhd_footer *b);
int vhd_header_decode(const void *buf1024, struct vhd_header *h);
void vhd_header_encode(const struct vhd_header *h, void *buf1024);
/* Spec CHS for a size in bytes (caps at the maximum geometry). */
void vhd_chs(uint64_t size_bytes, uint16_t *cyls, uint8_t *heads, uint8_t *secs);
/* The virtual size qemu's vpc reads from this footer, in bytes. */
uint64_t vhd_virtual_size(const struct vhd_footer *f);
/* Bytes of a locator's data space (sectors per spec, bytes in some files); 0: bad. */
uint64_t vhd_locator_bytes(const struct vhd_locator *l);
/*
 * Decode a locator's data (len bytes) to a POSIX path in out (NUL-ended):
 * UTF-16LE for W2ru/W2ku, "file://" UTF-8 for MacX; ASCII-only. -EINVAL.
 */
int vhd_locator_to_path(uint32_t code, const uint8_t *data, size_t len, char *out, size_t out_len);
uint32_t vhd_time_now(void);
uint32_t vhd_bitmap_bytes(uint32_t block_size); /* sector bitmap, padded to 512 */
int vhd_create(const char *path, const struct vd_image_create_opts *o, struct vd_err *err);

static inline bool vhd_bit_test(const uint8_t *map, uint64_t nr)
{
	return (__atomic_load_n(&map[nr >> 3], __ATOMIC_RELAXED) >> (7 - (nr & 7))) & 1;
}

/* ---- state (img->state) ---- */
struct vhd_queue;
struct vhd_job;
struct vhd_round;

struct vhd_state {
	struct vd_file *file;
	struct vhd_footer footer;
	struct vhd_header header;
	uint32_t type;
	uint64_t size_bytes;   /* virtual */
	uint32_t block_size;   /* bytes */
	uint32_t bitmap_bytes; /* per block, padded */
	uint32_t sectors_per_block;
	uint32_t nr_blocks;   /* BAT entries in use: ceil(size / block) */
	uint32_t *bat;        /* host order, max_table_entries; atomics */
	uint8_t **bitmaps;    /* per block, NULL = not allocated; full_bitmap = all set */
	uint8_t *full_bitmap; /* shared all-ones bitmap for full blocks */
	bool has_batmap;
	bool batmap_valid;
	uint64_t batmap_hdr_off;
	uint64_t batmap_off;
	uint32_t batmap_sectors;
	uint8_t *batmap;       /* batmap_sectors * 512 */
	uint64_t meta_end;     /* first byte after headers, BAT, batmap, locators */
	uint64_t data_end;     /* end of the last block (owner) */
	uint64_t file_bytes;   /* file length as last known (owner) */
	uint32_t footer_bytes; /* of the end footer: 512, or 511 (old fixed disks) */
	bool end_footer_ok;    /* the footer at the end of the file is valid */
	char *parent_path;     /* resolved path of the parent (differencing) */
	/* metadata owner (vhd-io.c) */
	struct vhd_queue *owner;               /* atomic */
	struct vhd_job *jobs_head, *jobs_tail; /* owner only: waiting for a round */
	bool round_running;
	struct vhd_round *round;
	void *zero_sector; /* 4 KiB of zeroes, aligned */
};

static inline bool vhd_is_dynamic(const struct vhd_state *s)
{
	return s->type == VHD_TYPE_DYNAMIC || s->type == VHD_TYPE_DIFF;
}

static inline struct vhd_state *vhd_st(struct vd_image *img)
{
	return (struct vhd_state *)img->state;
}

static inline uint32_t vhd_bat_get(const struct vhd_state *s, uint32_t blk)
{
	return __atomic_load_n(&s->bat[blk], __ATOMIC_ACQUIRE);
}

/* ---- vhd.c ---- */
/* Encode s->footer into buf (512, aligned) and write it at off. 0 or -EIO. */
int vhd_write_footer_at(struct vhd_state *s, uint8_t *buf, uint64_t off);
/* Block blk's sector bitmap from the file into s->bitmaps[blk] (full_bitmap if all ones). */
int vhd_load_bitmap(struct vhd_state *s, uint32_t blk);

/* ---- vhd-ops.c (control thread) ---- */
int vhd_get_info(struct vd_image *img, struct vd_image_info *info);
int vhd_block_status(struct vd_image *img, uint64_t offset_bytes, uint64_t max_bytes,
		     struct vd_block_status *out);
int vhd_resize(struct vd_image *img, uint64_t size_bytes, struct vd_err *err);

/* ---- vhd-io.c ---- */
#define VHD_IO_CTX_SIZE 2048u /* >= sizeof(struct vhd_req), asserted in vhd-io.c */
int vhd_queue_init(struct vd_image *img, struct vd_image_queue *iq);
void vhd_queue_fini(struct vd_image *img, struct vd_image_queue *iq);
void vhd_submit(struct vd_image *img, struct vd_image_queue *iq, struct vd_io *io);

#endif
