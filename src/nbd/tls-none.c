/*
 * nbd-tls without GnuTLS: the server refuses TLS configurations at create
 * time, so no session is ever made; the rest only satisfies the linker.
 */
#include "nbd/nbd-tls.h"

#include <errno.h>

int nbd_tls_create(const struct vd_nbd_config *cfg, struct nbd_tls **out, struct vd_err *err)
{
	(void)cfg;
	*out = NULL;
	return vd_err_set(err, EOPNOTSUPP, "built without TLS (GnuTLS)");
}

void nbd_tls_destroy(struct nbd_tls *t)
{
	(void)t;
}

int nbd_tls_session_create(struct nbd_tls *t, int fd, struct nbd_tls_session **out)
{
	(void)t;
	(void)fd;
	*out = NULL;
	return -EOPNOTSUPP;
}

void nbd_tls_session_destroy(struct nbd_tls_session *ts)
{
	(void)ts;
}

int nbd_tls_handshake(struct nbd_tls_session *ts, bool *want_write)
{
	(void)ts;
	*want_write = false;
	return -EOPNOTSUPP;
}

ssize_t nbd_tls_recv(struct nbd_tls_session *ts, void *buf, size_t len)
{
	(void)ts;
	(void)buf;
	(void)len;
	return -EOPNOTSUPP;
}

ssize_t nbd_tls_sendv(struct nbd_tls_session *ts, const struct iovec *iov, int cnt)
{
	(void)ts;
	(void)iov;
	(void)cnt;
	return -EOPNOTSUPP;
}

void nbd_tls_bye(struct nbd_tls_session *ts)
{
	(void)ts;
}
