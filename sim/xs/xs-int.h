/*
 * Internals of the simulated xenstored shared with its unit tests: the
 * limits every connection and domain is held to, and a way to hand the
 * server an already connected socket (a socketpair end in tests).
 */
#ifndef VD_SIM_XS_INT_H
#define VD_SIM_XS_INT_H

#include <stddef.h>
#include <stdint.h>

#include "sim/xs/xs.h"

#define VD_XS_MAX_CONNS        256                  /* connections, all sockets together */
#define VD_XS_MAX_WATCHES      128                  /* per connection (E2BIG past it) */
#define VD_XS_MAX_TRANSACTIONS 16                   /* open per connection (ENOSPC past it) */
#define VD_XS_MAX_TX_NODES     2048                 /* nodes one transaction may touch (ENOSPC) */
#define VD_XS_NODE_QUOTA       1000                 /* nodes a guest domain may own (ENOSPC) */
#define VD_XS_MAX_PERMS        32                   /* ACL entries per node (ENOSPC) */
#define VD_XS_OUT_SOFT_BYTES   ((size_t)64 * 1024)  /* queued output: stop reading requests */
#define VD_XS_OUT_MAX_BYTES    ((size_t)256 * 1024) /* queued output: disconnect the reader */

/*
 * Adopt a connected stream socket (made non-blocking here) acting as
 * domid. Takes ownership of fd, also on failure. Returns 0 or -errno.
 */
int vd_xs_server_add_conn(struct vd_xs_server *s, int fd, uint16_t domid);

/* Nodes currently owned by domid in the committed tree (quota accounting). */
unsigned int vd_xs_server_nodes_owned(const struct vd_xs_server *s, uint16_t domid);

/* Live connections (not counting those disconnected but not yet reaped). */
unsigned int vd_xs_server_nconns(const struct vd_xs_server *s);

#endif
