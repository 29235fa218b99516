/*
 * The simulated xenstored: the xenstore tree and the xenstored wire protocol
 * (xen/io/xs_wire.h) over UNIX stream sockets, so the real libxenstore and
 * xenstore-utils are its clients unchanged.
 *
 * Each listening socket has a domain identity: connections accepted on it
 * act as that domain (0 = privileged dom0; N = guest N, subject to node
 * permissions). The hypervisor creates one socket per domain.
 *
 * Single-threaded: every call happens on the hypervisor's loop thread. The
 * server keeps its own epoll set; the hypervisor polls vd_xs_server_fd()
 * for readability and then calls vd_xs_server_run().
 *
 * Bounded: per-connection input and output queues, watches, transactions
 * and nodes per domain have limits; a client that exceeds them gets an
 * error (or is disconnected if it violates the protocol), never unbounded
 * memory.
 */
#ifndef VD_SIM_XS_H
#define VD_SIM_XS_H

#include <stdint.h>

struct vd_xs_server;

int vd_xs_server_create(struct vd_xs_server **out);
void vd_xs_server_destroy(struct vd_xs_server *s); /* closes every socket */

/* Listen on path (unlinked first); connections act as domid. */
int vd_xs_server_listen(struct vd_xs_server *s, const char *path, uint16_t domid);
/* Stop listening on path, unlink it, and close its connections. */
void vd_xs_server_unlisten(struct vd_xs_server *s, const char *path);

/* An epoll fd: readable when vd_xs_server_run() has work. */
int vd_xs_server_fd(struct vd_xs_server *s);
/* Accept, read, execute, reply and send watch events; never blocks. */
int vd_xs_server_run(struct vd_xs_server *s);

/*
 * Domain lifecycle, as xl/xenstored do it: introduce creates
 * /local/domain/<domid> owned by the domain (with name, domid) and fires
 * @introduceDomain; release removes /local/domain/<domid>, drops the
 * domain's watches and transactions and fires @releaseDomain.
 */
int vd_xs_server_introduce_domain(struct vd_xs_server *s, uint16_t domid);
void vd_xs_server_release_domain(struct vd_xs_server *s, uint16_t domid);

#endif
