/*
 * nbd internals shared by server.c (control side) and conn.c (a
 * connection's state machine, on its serving thread), and their tests.
 */
#ifndef VD_NBD_INT_H
#define VD_NBD_INT_H

#include <pthread.h>
#include "nbd/nbd.h"
#include "nbd/nbd-proto.h"
#include "nbd/nbd-tls.h"

#define NBD_MAX_THREADS 64u
#define NBD_OPT_MAX     (3u * VD_NBD_MAX_NAME + 64)  /* largest option payload we keep */
#define NBD_RBUF_BYTES  (NBD_OPT_MAX + 64)           /* receive buffer */
#define NBD_OBUF_BYTES  (4u * VD_NBD_MAX_NAME + 256) /* negotiation replies */
#define NBD_MAX_EXTENTS 64u                          /* descriptors per BLOCK_STATUS reply */
#define NBD_RX_BUDGET   64u                          /* requests parsed per wakeup */
#define NBD_META_ID     1u                           /* our id for base:allocation */

/* Who a connection is from: for per-peer limits (see vd_nbd_config). */
struct nbd_peer {
	uint8_t len;     /* bytes of key used; 0: not counted */
	uint8_t key[17]; /* 'u' + uid, '4' + IPv4, '6' + IPv6 */
};

struct nbd_peer_count {
	struct nbd_peer peer;
	unsigned int conns; /* 0: free entry */
};

struct nbd_thread {
	struct vd_nbd_server *srv;
	const struct vd_nbd_thread_ops *ops;
	void *arg;
	/* Below: the serving thread's only. */
	bool bound;
	struct vd_ioctx *ioctx;
	struct vd_image_queue *iq;
	struct nbd_conn *conns; /* live connections on this thread */
	int tfd;                /* deadline sweeper (timerfd), -1 if none */
	bool timer_armed;
};

struct vd_nbd_server {
	struct vd_image *img;
	struct vd_image_info info;
	char *export_name;
	char *description;
	bool readonly;
	bool exact_status; /* block status may be asked on the serving threads */
	bool fast_zero;    /* WRITE_ZEROES is a metadata operation for this format */
	unsigned int max_conns, max_inflight;
	uint32_t max_block_bytes;
	uint32_t min_block_bytes; /* the image's sector size */
	uint64_t handshake_ns;
	uint64_t idle_ns; /* 0: never */
	unsigned int max_per_peer;
	uint16_t tx_flags;   /* transmission flags, without SEND_DF */
	struct nbd_tls *tls; /* NULL: TLS not offered */
	bool tls_required;
	size_t io_ctx_bytes;

	struct nbd_thread threads[NBD_MAX_THREADS];
	unsigned int nr_threads, next_thread;
	int listen_fd;
	char unix_path[108];

	pthread_mutex_t lock; /* protects nr_conns and the cond */
	pthread_cond_t cond;
	unsigned int nr_conns;        /* accepted and not yet freed */
	struct nbd_peer_count *peers; /* max_conns entries */
	bool stopping;                /* atomic: no new connections are served */
	bool stopped;
};

/*
 * conn.c, on the serving thread: take over fd (accepted, non-blocking),
 * counted for peer (copied; NULL or len 0: not counted per peer).
 */
void vd_nbd_conn_start(struct nbd_thread *t, int fd, const struct nbd_peer *peer);
/* conn.c, on the serving thread: close every connection of t. */
void vd_nbd_thread_kill_all(struct nbd_thread *t);
/* server.c, any thread: a connection (of peer, or NULL) was freed. */
void vd_nbd_server_conn_freed(struct vd_nbd_server *s, const struct nbd_peer *peer);

#endif
