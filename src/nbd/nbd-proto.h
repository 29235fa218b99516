/*
 * NBD wire protocol: the constants and layouts of the NBD project's
 * doc/proto.md (fixed newstyle negotiation, simple and structured replies,
 * base:allocation block status). Everything on the wire is big-endian;
 * the structs below are the exact wire layouts (packed, sizes asserted)
 * and are filled/read through the be helpers only.
 */
#ifndef VD_NBD_PROTO_H
#define VD_NBD_PROTO_H

#include <assert.h>
#include <endian.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* ---- magics ---- */
#define NBD_MAGIC_INIT         0x4e42444d41474943ull /* "NBDMAGIC" */
#define NBD_MAGIC_OPTS         0x49484156454f5054ull /* "IHAVEOPT" */
#define NBD_MAGIC_OLDSTYLE     0x00420281861253ull
#define NBD_MAGIC_OPT_REPLY    0x0003e889045565a9ull
#define NBD_MAGIC_REQUEST      0x25609513u
#define NBD_MAGIC_SIMPLE_REPLY 0x67446698u
#define NBD_MAGIC_STRUCT_REPLY 0x668e33efu

/* ---- handshake flags (server, 16 bits) and client flags (32 bits) ---- */
#define NBD_FLAG_FIXED_NEWSTYLE   (1u << 0)
#define NBD_FLAG_NO_ZEROES        (1u << 1)
#define NBD_FLAG_C_FIXED_NEWSTYLE (1u << 0)
#define NBD_FLAG_C_NO_ZEROES      (1u << 1)

/* ---- transmission flags (16 bits) ---- */
#define NBD_FLAG_HAS_FLAGS         (1u << 0)
#define NBD_FLAG_READ_ONLY         (1u << 1)
#define NBD_FLAG_SEND_FLUSH        (1u << 2)
#define NBD_FLAG_SEND_FUA          (1u << 3)
#define NBD_FLAG_ROTATIONAL        (1u << 4)
#define NBD_FLAG_SEND_TRIM         (1u << 5)
#define NBD_FLAG_SEND_WRITE_ZEROES (1u << 6)
#define NBD_FLAG_SEND_DF           (1u << 7)
#define NBD_FLAG_CAN_MULTI_CONN    (1u << 8)
#define NBD_FLAG_SEND_RESIZE       (1u << 9)
#define NBD_FLAG_SEND_CACHE        (1u << 10)
#define NBD_FLAG_SEND_FAST_ZERO    (1u << 11)

/* ---- options ---- */
#define NBD_OPT_EXPORT_NAME       1u
#define NBD_OPT_ABORT             2u
#define NBD_OPT_LIST              3u
#define NBD_OPT_STARTTLS          5u
#define NBD_OPT_INFO              6u
#define NBD_OPT_GO                7u
#define NBD_OPT_STRUCTURED_REPLY  8u
#define NBD_OPT_LIST_META_CONTEXT 9u
#define NBD_OPT_SET_META_CONTEXT  10u
#define NBD_OPT_EXTENDED_HEADERS  11u

/* ---- option replies ---- */
#define NBD_REP_ACK                 1u
#define NBD_REP_SERVER              2u
#define NBD_REP_INFO                3u
#define NBD_REP_META_CONTEXT        4u
#define NBD_REP_ERR(v)              ((1u << 31) | (v))
#define NBD_REP_ERR_UNSUP           NBD_REP_ERR(1)
#define NBD_REP_ERR_POLICY          NBD_REP_ERR(2)
#define NBD_REP_ERR_INVALID         NBD_REP_ERR(3)
#define NBD_REP_ERR_PLATFORM        NBD_REP_ERR(4)
#define NBD_REP_ERR_TLS_REQD        NBD_REP_ERR(5)
#define NBD_REP_ERR_UNKNOWN         NBD_REP_ERR(6)
#define NBD_REP_ERR_SHUTDOWN        NBD_REP_ERR(7)
#define NBD_REP_ERR_BLOCK_SIZE_REQD NBD_REP_ERR(8)
#define NBD_REP_ERR_TOO_BIG         NBD_REP_ERR(9)

/* ---- NBD_REP_INFO types ---- */
#define NBD_INFO_EXPORT      0u
#define NBD_INFO_NAME        1u
#define NBD_INFO_DESCRIPTION 2u
#define NBD_INFO_BLOCK_SIZE  3u

/* ---- commands and command flags ---- */
#define NBD_CMD_READ         0u
#define NBD_CMD_WRITE        1u
#define NBD_CMD_DISC         2u
#define NBD_CMD_FLUSH        3u
#define NBD_CMD_TRIM         4u
#define NBD_CMD_CACHE        5u
#define NBD_CMD_WRITE_ZEROES 6u
#define NBD_CMD_BLOCK_STATUS 7u

#define NBD_CMD_FLAG_FUA       (1u << 0)
#define NBD_CMD_FLAG_NO_HOLE   (1u << 1)
#define NBD_CMD_FLAG_DF        (1u << 2)
#define NBD_CMD_FLAG_REQ_ONE   (1u << 3)
#define NBD_CMD_FLAG_FAST_ZERO (1u << 4)

/* ---- structured replies ---- */
#define NBD_REPLY_FLAG_DONE         (1u << 0)
#define NBD_REPLY_TYPE_NONE         0u
#define NBD_REPLY_TYPE_OFFSET_DATA  1u
#define NBD_REPLY_TYPE_OFFSET_HOLE  2u
#define NBD_REPLY_TYPE_BLOCK_STATUS 5u
#define NBD_REPLY_TYPE_ERROR        ((1u << 15) + 1)
#define NBD_REPLY_TYPE_ERROR_OFFSET ((1u << 15) + 2)

/* base:allocation status flags */
#define NBD_STATE_HOLE (1u << 0)
#define NBD_STATE_ZERO (1u << 1)

/* ---- error values on the wire (not the host's errno numbering) ---- */
#define NBD_EPERM     1u
#define NBD_EIO       5u
#define NBD_ENOMEM    12u
#define NBD_EINVAL    22u
#define NBD_ENOSPC    28u
#define NBD_EOVERFLOW 75u
#define NBD_ENOTSUP   95u
#define NBD_ESHUTDOWN 108u

/* ---- wire layouts ---- */
struct nbd_opt_hdr {     /* client -> server, option haggling */
	uint64_t magic;  /* NBD_MAGIC_OPTS */
	uint32_t option; /* NBD_OPT_* */
	uint32_t len;    /* bytes of data that follow */
} __attribute__((packed));
static_assert(sizeof(struct nbd_opt_hdr) == 16, "nbd option header");

struct nbd_opt_reply {   /* server -> client */
	uint64_t magic;  /* NBD_MAGIC_OPT_REPLY */
	uint32_t option; /* echoed */
	uint32_t type;   /* NBD_REP_* */
	uint32_t len;
} __attribute__((packed));
static_assert(sizeof(struct nbd_opt_reply) == 20, "nbd option reply");

struct nbd_request {
	uint32_t magic; /* NBD_MAGIC_REQUEST */
	uint16_t flags; /* NBD_CMD_FLAG_* */
	uint16_t type;  /* NBD_CMD_* */
	uint64_t cookie;
	uint64_t offset;
	uint32_t len;
} __attribute__((packed));
static_assert(sizeof(struct nbd_request) == 28, "nbd request");
static_assert(offsetof(struct nbd_request, cookie) == 8, "nbd request cookie");
static_assert(offsetof(struct nbd_request, len) == 24, "nbd request length");

struct nbd_simple_reply {
	uint32_t magic; /* NBD_MAGIC_SIMPLE_REPLY */
	uint32_t error; /* NBD_E* or 0 */
	uint64_t cookie;
} __attribute__((packed));
static_assert(sizeof(struct nbd_simple_reply) == 16, "nbd simple reply");

struct nbd_chunk_hdr {
	uint32_t magic; /* NBD_MAGIC_STRUCT_REPLY */
	uint16_t flags; /* NBD_REPLY_FLAG_* */
	uint16_t type;  /* NBD_REPLY_TYPE_* */
	uint64_t cookie;
	uint32_t len; /* payload bytes that follow */
} __attribute__((packed));
static_assert(sizeof(struct nbd_chunk_hdr) == 20, "nbd structured reply chunk");

/* The 18 bytes the server sends first, and what EXPORT_NAME answers. */
#define NBD_GREETING_BYTES     18u
#define NBD_EXPORT_NAME_ZEROES 124u

/* ---- big-endian helpers on byte buffers ---- */
static inline void nbd_put16(uint8_t *p, uint16_t v)
{
	v = htobe16(v);
	memcpy(p, &v, 2);
}

static inline void nbd_put32(uint8_t *p, uint32_t v)
{
	v = htobe32(v);
	memcpy(p, &v, 4);
}

static inline void nbd_put64(uint8_t *p, uint64_t v)
{
	v = htobe64(v);
	memcpy(p, &v, 8);
}

static inline uint16_t nbd_get16(const uint8_t *p)
{
	uint16_t v;

	memcpy(&v, p, 2);
	return be16toh(v);
}

static inline uint32_t nbd_get32(const uint8_t *p)
{
	uint32_t v;

	memcpy(&v, p, 4);
	return be32toh(v);
}

static inline uint64_t nbd_get64(const uint8_t *p)
{
	uint64_t v;

	memcpy(&v, p, 8);
	return be64toh(v);
}

#endif
