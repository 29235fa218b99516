/*
 * nbd-tls: the TLS record layer of NBD_OPT_STARTTLS (GnuTLS), private to
 * src/nbd. server.c loads the credentials once; conn.c runs one session
 * per connection on its serving thread, over the connection's own
 * non-blocking socket, in the same reactor as plain connections:
 *  - the session reads and writes the socket itself (our push/pull
 *    functions: recv/send with MSG_DONTWAIT, MSG_NOSIGNAL);
 *  - every call is non-blocking and says -EAGAIN when the socket would
 *    block; the handshake also says whether it waits to read (the POLLIN
 *    watch resumes it) or to write (the connection's EPOLLOUT arm does);
 *  - decrypted bytes may wait inside GnuTLS without the socket being
 *    readable: conn.c reads until -EAGAIN or resumes from its own kick,
 *    never waiting for a wakeup while it has not drained the session.
 * Built without GnuTLS (tls-none.c), every call fails with -EOPNOTSUPP.
 */
#ifndef VD_NBD_TLS_H
#define VD_NBD_TLS_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>
#include <sys/uio.h>
#include "common/err.h"
#include "nbd/nbd.h"

struct nbd_tls;         /* server credentials, shared by every session */
struct nbd_tls_session; /* one connection's */

/* Control thread: load cfg's credentials (tls must not be OFF). */
int nbd_tls_create(const struct vd_nbd_config *cfg, struct nbd_tls **out, struct vd_err *err);
/* After the last session is destroyed. NULL is a no-op. */
void nbd_tls_destroy(struct nbd_tls *t);

/* Serving thread: a server session over fd (borrowed; non-blocking). */
int nbd_tls_session_create(struct nbd_tls *t, int fd, struct nbd_tls_session **out);
/* NULL is a no-op. Does not close fd. */
void nbd_tls_session_destroy(struct nbd_tls_session *ts);
/* 0: done; -EAGAIN: call again when readable (*want_write false) or writable; -EPROTO. */
int nbd_tls_handshake(struct nbd_tls_session *ts, bool *want_write);
/* Decrypted bytes (> 0), 0 at the end of the stream, -EAGAIN, or -errno. */
ssize_t nbd_tls_recv(struct nbd_tls_session *ts, void *buf, size_t len);
/*
 * Encrypt and send from iov (one record of at most 16 KiB, copied):
 * bytes taken (> 0), -EAGAIN or -errno. After -EAGAIN the record waits in
 * the session: the next call must start with the same bytes, and sends
 * that record first.
 */
ssize_t nbd_tls_sendv(struct nbd_tls_session *ts, const struct iovec *iov, int cnt);
/* Best effort, never blocks: a close_notify before the socket is closed. */
void nbd_tls_bye(struct nbd_tls_session *ts);

#endif
