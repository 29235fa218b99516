/*
 * nbd-tls over GnuTLS: credentials (X.509 from a qemu tls-creds-x509 style
 * directory, or a psktool key file) and non-blocking server sessions.
 * See nbd-tls.h for how this fits conn.c's reactor.
 */
#define _GNU_SOURCE
#include "nbd/nbd-tls.h"

#include <errno.h>
#include <gnutls/gnutls.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include "common/log.h"

#define TLS_RECORD_BYTES 16384u
/* PSK suites are not in NORMAL; TLS 1.3 PSK needs the (EC)DHE-PSK ones. */
#define PSK_PRIORITY     "NORMAL:+ECDHE-PSK:+DHE-PSK:+PSK"

struct nbd_tls {
	enum vd_nbd_tls_mode mode;
	gnutls_certificate_credentials_t x509;
	gnutls_psk_server_credentials_t psk;
	gnutls_priority_t prio;
};

struct nbd_tls_session {
	gnutls_session_t s;
	int fd;
	size_t pending_bytes; /* a record sent with -EAGAIN, waiting in GnuTLS */
	uint8_t stage[TLS_RECORD_BYTES];
};

static int load_x509(struct nbd_tls *t, const char *dir, struct vd_err *err)
{
	char cert[PATH_MAX], key[PATH_MAX];
	int r;

	if (dir == NULL) {
		return vd_err_set(err, EINVAL, "TLS x509: no certificate directory");
	}
	if ((size_t)snprintf(cert, sizeof(cert), "%s/server-cert.pem", dir) >= sizeof(cert) ||
	    (size_t)snprintf(key, sizeof(key), "%s/server-key.pem", dir) >= sizeof(key)) {
		return vd_err_set(err, ENAMETOOLONG, "TLS x509: %s: name too long", dir);
	}
	r = gnutls_certificate_allocate_credentials(&t->x509);
	if (r < 0) {
		return vd_err_set(err, ENOMEM, "TLS: %s", gnutls_strerror(r));
	}
	r = gnutls_certificate_set_x509_key_file(t->x509, cert, key, GNUTLS_X509_FMT_PEM);
	if (r < 0) {
		return vd_err_set(err, EINVAL, "TLS x509: %s, %s: %s", cert, key,
				  gnutls_strerror(r));
	}
	(void)gnutls_certificate_set_known_dh_params(t->x509, GNUTLS_SEC_PARAM_MEDIUM);
	return 0;
}

static int load_psk(struct nbd_tls *t, const char *file, struct vd_err *err)
{
	int r;

	if (file == NULL) {
		return vd_err_set(err, EINVAL, "TLS psk: no key file");
	}
	if (access(file, R_OK) < 0) {
		return vd_err_set(err, errno, "TLS psk: %s", file);
	}
	r = gnutls_psk_allocate_server_credentials(&t->psk);
	if (r < 0) {
		return vd_err_set(err, ENOMEM, "TLS: %s", gnutls_strerror(r));
	}
	/* psktool's format, username:hexkey per line, read by GnuTLS itself */
	r = gnutls_psk_set_server_credentials_file(t->psk, file);
	if (r < 0) {
		return vd_err_set(err, EINVAL, "TLS psk: %s: %s", file, gnutls_strerror(r));
	}
	(void)gnutls_psk_set_server_known_dh_params(t->psk, GNUTLS_SEC_PARAM_MEDIUM);
	return 0;
}

int nbd_tls_create(const struct vd_nbd_config *cfg, struct nbd_tls **out, struct vd_err *err)
{
	struct nbd_tls *t;
	int r;

	*out = NULL;
	t = calloc(1, sizeof(*t));
	if (t == NULL) {
		return vd_err_set(err, ENOMEM, "TLS");
	}
	t->mode = cfg->tls;
	if (cfg->tls == VD_NBD_TLS_X509) {
		r = load_x509(t, cfg->tls_certs_dir, err);
	} else if (cfg->tls == VD_NBD_TLS_PSK) {
		r = load_psk(t, cfg->tls_psk_file, err);
	} else {
		r = vd_err_set(err, EINVAL, "TLS: unknown mode");
	}
	if (r == 0) {
		r = gnutls_priority_init(&t->prio, cfg->tls == VD_NBD_TLS_PSK ? PSK_PRIORITY : NULL,
					 NULL);
		if (r < 0) {
			t->prio = NULL;
			r = vd_err_set(err, EINVAL, "TLS priority: %s", gnutls_strerror(r));
		}
	}
	if (r < 0) {
		nbd_tls_destroy(t);
		return r;
	}
	*out = t;
	return 0;
}

void nbd_tls_destroy(struct nbd_tls *t)
{
	if (t == NULL) {
		return;
	}
	if (t->prio != NULL) {
		gnutls_priority_deinit(t->prio);
	}
	if (t->x509 != NULL) {
		gnutls_certificate_free_credentials(t->x509);
	}
	if (t->psk != NULL) {
		gnutls_psk_free_server_credentials(t->psk);
	}
	free(t);
}

static ssize_t pull(gnutls_transport_ptr_t p, void *buf, size_t len)
{
	struct nbd_tls_session *ts = p;
	ssize_t n;

	do {
		n = recv(ts->fd, buf, len, MSG_DONTWAIT);
	} while (n < 0 && errno == EINTR);
	if (n < 0) {
		gnutls_transport_set_errno(ts->s, errno);
	}
	return n;
}

static ssize_t push(gnutls_transport_ptr_t p, const void *buf, size_t len)
{
	struct nbd_tls_session *ts = p;
	ssize_t n;

	do {
		n = send(ts->fd, buf, len, MSG_DONTWAIT | MSG_NOSIGNAL);
	} while (n < 0 && errno == EINTR);
	if (n < 0) {
		gnutls_transport_set_errno(ts->s, errno);
	}
	return n;
}

int nbd_tls_session_create(struct nbd_tls *t, int fd, struct nbd_tls_session **out)
{
	struct nbd_tls_session *ts = calloc(1, sizeof(*ts));
	int r;

	*out = NULL;
	if (ts == NULL) {
		return -ENOMEM;
	}
	ts->fd = fd;
	r = gnutls_init(&ts->s, GNUTLS_SERVER | GNUTLS_NONBLOCK);
	if (r < 0) {
		free(ts);
		return -ENOMEM;
	}
	r = gnutls_priority_set(ts->s, t->prio);
	if (r == 0) {
		r = t->mode == VD_NBD_TLS_PSK
			    ? gnutls_credentials_set(ts->s, GNUTLS_CRD_PSK, t->psk)
			    : gnutls_credentials_set(ts->s, GNUTLS_CRD_CERTIFICATE, t->x509);
	}
	if (r < 0) {
		nbd_tls_session_destroy(ts);
		return -EINVAL;
	}
	/* client certificates are not asked for (nbdkit without --tls-verify-peer) */
	gnutls_certificate_server_set_request(ts->s, GNUTLS_CERT_IGNORE);
	gnutls_transport_set_ptr(ts->s, ts);
	gnutls_transport_set_pull_function(ts->s, pull);
	gnutls_transport_set_push_function(ts->s, push);
	gnutls_handshake_set_timeout(ts->s, 0); /* ours: the negotiation deadline */
	*out = ts;
	return 0;
}

void nbd_tls_session_destroy(struct nbd_tls_session *ts)
{
	if (ts == NULL) {
		return;
	}
	gnutls_deinit(ts->s);
	free(ts);
}

int nbd_tls_handshake(struct nbd_tls_session *ts, bool *want_write)
{
	int r;

	do {
		r = gnutls_handshake(ts->s);
	} while (r == GNUTLS_E_INTERRUPTED);
	if (r == 0) {
		return 0;
	}
	if (r == GNUTLS_E_AGAIN) {
		*want_write = gnutls_record_get_direction(ts->s) == 1;
		return -EAGAIN;
	}
	vd_log_ratelimited(VD_LOG_INFO, "nbd: TLS handshake: %s", gnutls_strerror(r));
	return -EPROTO;
}

ssize_t nbd_tls_recv(struct nbd_tls_session *ts, void *buf, size_t len)
{
	ssize_t n;

	do {
		n = gnutls_record_recv(ts->s, buf, len);
	} while (n == GNUTLS_E_INTERRUPTED);
	if (n >= 0) {
		return n;
	}
	if (n == GNUTLS_E_AGAIN) {
		return -EAGAIN;
	}
	if (n == GNUTLS_E_PREMATURE_TERMINATION) {
		return 0; /* closed without close_notify: gone all the same */
	}
	vd_log_ratelimited(VD_LOG_INFO, "nbd: TLS: %s", gnutls_strerror((int)n));
	return -EPROTO;
}

ssize_t nbd_tls_sendv(struct nbd_tls_session *ts, const struct iovec *iov, int cnt)
{
	const void *data = NULL;
	size_t len = 0;
	ssize_t n;

	if (ts->pending_bytes == 0) {
		for (int i = 0; i < cnt && len < sizeof(ts->stage); i++) {
			size_t take = VD_MIN(iov[i].iov_len, sizeof(ts->stage) - len);

			memcpy(ts->stage + len, iov[i].iov_base, take);
			len += take;
		}
		if (len == 0) {
			return 0;
		}
		data = ts->stage;
	}
	/* after GNUTLS_E_AGAIN: (NULL, 0) sends the record already made */
	do {
		n = gnutls_record_send(ts->s, data, len);
	} while (n == GNUTLS_E_INTERRUPTED);
	if (n == GNUTLS_E_AGAIN) {
		if (ts->pending_bytes == 0) {
			ts->pending_bytes = len;
		}
		return -EAGAIN;
	}
	ts->pending_bytes = 0;
	if (n < 0) {
		return n == GNUTLS_E_PUSH_ERROR ? -EPIPE : -EPROTO;
	}
	return n;
}

void nbd_tls_bye(struct nbd_tls_session *ts)
{
	if (ts != NULL) {
		(void)gnutls_bye(ts->s, GNUTLS_SHUT_WR);
	}
}
