/*
 * The wire protocol of the simulated hypervisor's socket (hv.sock,
 * AF_UNIX SOCK_SEQPACKET). Shared by the client (src/transport/sim/hvc.c)
 * and the server (sim/hv/). Private to those two: nobody else includes it.
 *
 * One request datagram (struct vd_hvc_req, exactly its size) gets one
 * response datagram (struct vd_hvc_rsp, exactly its size) carrying rsp.nr_fds
 * file descriptors as SCM_RIGHTS. A client has at most one request in
 * flight. The server validates every field; a datagram of the wrong size or
 * version gets ret = -EPROTO, an unknown op -EOPNOTSUPP, and any fds a client
 * sends are closed unread.
 *
 * Identity: a connection that created a domain acts as that domain (and the
 * domain dies when the connection closes); any other connection acts as
 * dom0 (privileged: it may map any domain).
 *
 * Ops (request fields used -> response fields and fds):
 *   DOMAIN_CREATE  domid (0 = auto), mem_bytes, nr_grant_entries
 *                  -> domid, mem_bytes, nr_grant_entries; fds [ram, gnttab]
 *   DOMAIN_MAP     domid (dom0 only)
 *                  -> domid, mem_bytes, nr_grant_entries; fds [ram, gnttab]
 *   EVTCHN_ALLOC_UNBOUND  domid = remote domid -> port; fds [eventfd]
 *   EVTCHN_BIND_INTERDOMAIN  domid = remote domid, port = remote port
 *                  -> port (local); fds [eventfd]
 *   EVTCHN_PEER_FD port (local, bound) -> fds [the peer port's eventfd]
 *   EVTCHN_CLOSE   port (local)
 * The memfds are sealed against shrinking and growing, so mapping them can
 * never SIGBUS. Event-channel eventfds are non-blocking.
 */
#ifndef VD_TRANSPORT_SIM_HVC_PROTO_H
#define VD_TRANSPORT_SIM_HVC_PROTO_H

#include <stdint.h>
#include "common/compiler.h"

#define VD_HVC_VERSION 1u

/* Limits enforced by the hypervisor. */
#define VD_HVC_MAX_DOMAINS       64u          /* guest domains alive at once */
#define VD_HVC_MAX_MEM_BYTES     (4ull << 30) /* RAM per domain */
#define VD_HVC_MAX_GRANT_ENTRIES 65536u
#define VD_HVC_MAX_PORTS         1024u   /* ports 1..1023 per domain */
#define VD_HVC_MAX_DOMID         0x7fefu /* DOMID_FIRST_RESERVED - 1 */
#define VD_HVC_MAX_CONNS         256u

enum vd_hvc_op {
	VD_HVC_OP_DOMAIN_CREATE = 1,
	VD_HVC_OP_DOMAIN_MAP = 2,
	VD_HVC_OP_EVTCHN_ALLOC_UNBOUND = 3,
	VD_HVC_OP_EVTCHN_BIND_INTERDOMAIN = 4,
	VD_HVC_OP_EVTCHN_PEER_FD = 5,
	VD_HVC_OP_EVTCHN_CLOSE = 6,
};

struct vd_hvc_req {
	uint16_t version; /* VD_HVC_VERSION */
	uint16_t op;      /* enum vd_hvc_op */
	uint32_t seq;     /* echoed in the response */
	uint32_t domid;
	uint32_t port;
	uint64_t mem_bytes;
	uint32_t nr_grant_entries;
	uint32_t reserved; /* 0 */
};

struct vd_hvc_rsp {
	uint16_t version;
	uint16_t op;
	uint32_t seq;
	int32_t ret; /* 0 or -errno */
	uint32_t domid;
	uint32_t port;
	uint32_t nr_grant_entries;
	uint64_t mem_bytes;
	uint32_t nr_fds; /* fds attached as SCM_RIGHTS */
	uint32_t reserved;
};

#define VD_HVC_MAX_FDS 2u

static_assert(sizeof(struct vd_hvc_req) == 32, "vd_hvc_req layout");
static_assert(sizeof(struct vd_hvc_rsp) == 40, "vd_hvc_rsp layout");

#endif
