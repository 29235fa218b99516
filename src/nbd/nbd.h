/*
 * nbd: an NBD server (fixed newstyle, structured replies, base:allocation
 * block status) over one opened vd_image.
 *
 * Threads. The server is driven from two sides:
 *  - the control thread owns the server object: it creates it, adds the
 *    serving threads, listens, calls vd_nbd_server_accept() whenever the
 *    listening fd is readable, and finally stops and destroys it;
 *  - each connection lives on one serving thread (round-robin at accept)
 *    and is a state machine driven by that thread's vd_ioctx: socket
 *    watches, image completions. Its I/O goes through that thread's
 *    vd_image_queue. No locks on the data path.
 * A serving thread is reached through vd_nbd_thread_ops: `send` runs a
 * function on it (vd_ioctx_send_msg, or vd_queue_send_msg for a VBD's queue
 * threads) and `bind`, called on it, yields its ioctx and image queue.
 *
 * Untrusted clients: every length is bounded (options, names, requests,
 * write payloads), connections are bounded (max_conns, max_per_peer, and
 * the negotiation and idle timeouts free the slots), and so are the
 * requests in flight per connection (the socket is not read while a
 * connection is at its limit). A client vanishing mid-request leaves its
 * I/O to complete into the dead connection, freed with its last request.
 */
#ifndef VD_NBD_H
#define VD_NBD_H

#include <stdbool.h>
#include <stdint.h>
#include "common/err.h"
#include "image/image.h"
#include "io/io.h"

#define VD_NBD_DEF_MAX_CONNS    64u
#define VD_NBD_DEF_MAX_INFLIGHT 64u                 /* requests per connection */
#define VD_NBD_DEF_MAX_BLOCK    (32u * 1024 * 1024) /* largest READ/WRITE */
#define VD_NBD_PREF_BLOCK       4096u
#define VD_NBD_MAX_NAME         4096u  /* export names, descriptions, queries */
#define VD_NBD_DEF_HANDSHAKE_MS 10000u /* to reach the transmission phase */
#define VD_NBD_DEF_IDLE_MS      60000u /* in transmission, with nothing happening */
#define VD_NBD_IDLE_NEVER       UINT32_MAX
#define VD_NBD_DEF_MAX_PER_PEER 16u

struct vd_nbd_server;

enum vd_nbd_tls_mode {
	VD_NBD_TLS_OFF,
	VD_NBD_TLS_X509, /* tls_certs_dir: server-cert.pem, server-key.pem (qemu's layout) */
	VD_NBD_TLS_PSK,  /* tls_psk_file: psktool's username:hexkey lines */
};

struct vd_nbd_config {
	const char *export_name; /* NULL: "" (the default export) */
	const char *description; /* NULL: none */
	bool readonly;           /* also when the image is read-only */
	unsigned int max_conns;  /* 0: VD_NBD_DEF_MAX_CONNS */
	unsigned int max_inflight;
	uint32_t max_block_bytes; /* 0: VD_NBD_DEF_MAX_BLOCK; a power of two >= 64 KiB */
	/*
	 * A connection still negotiating after this long is closed, so idle
	 * clients cannot hold every connection slot. 0: VD_NBD_DEF_HANDSHAKE_MS.
	 * Checked about once a second (a timerfd on each serving thread, armed
	 * only while some connection negotiates).
	 */
	uint32_t handshake_ms;
	/*
	 * A connection in transmission with no request in flight that has
	 * received and sent nothing for this long is closed (a client that
	 * stopped reading its replies included). 0: VD_NBD_DEF_IDLE_MS;
	 * VD_NBD_IDLE_NEVER: never (the kernel client, nbdfuse).
	 */
	uint32_t idle_ms;
	/*
	 * Connections one peer may hold: a UNIX socket's peer is its uid
	 * (SO_PEERCRED), a TCP peer its IP address. Beyond it, the new
	 * connection is closed at accept, so one peer cannot take every slot.
	 * 0: VD_NBD_DEF_MAX_PER_PEER (at most max_conns).
	 */
	unsigned int max_per_peer;
	/*
	 * TLS (NBD_OPT_STARTTLS): offered when not OFF; with tls_required,
	 * every option but STARTTLS and ABORT is refused with
	 * NBD_REP_ERR_TLS_REQD until TLS is up (EXPORT_NAME: closed), as
	 * nbdkit --tls=require. Paths are read at create, not kept.
	 */
	enum vd_nbd_tls_mode tls;
	const char *tls_certs_dir;
	const char *tls_psk_file;
	bool tls_required;
};

struct vd_nbd_thread_ops {
	/* Any thread: run fn(arg) on the serving thread. 0, -EAGAIN (retry), -errno. */
	int (*send)(void *thread, void (*fn)(void *), void *arg);
	/* On the serving thread: its reactor and its image queue (borrowed). */
	void (*bind)(void *thread, struct vd_ioctx **ioctx, struct vd_image_queue **iq);
};

/* Control thread. img is borrowed and must outlive the server. */
int vd_nbd_server_create(struct vd_image *img, const struct vd_nbd_config *cfg,
			 struct vd_nbd_server **out, struct vd_err *err);
/* Before the first accept; up to 64 threads. thread is borrowed. */
int vd_nbd_server_add_thread(struct vd_nbd_server *s, const struct vd_nbd_thread_ops *ops,
			     void *thread);
/*
 * Listen on a UNIX socket (mode 0600; an existing path is replaced only if
 * it is a socket nobody listens on: else -EEXIST or -EADDRINUSE) or on TCP.
 */
int vd_nbd_server_listen_unix(struct vd_nbd_server *s, const char *path, struct vd_err *err);
int vd_nbd_server_listen_tcp(struct vd_nbd_server *s, const char *addr, uint16_t port,
			     struct vd_err *err);
/* The listening fd (non-blocking) to poll for POLLIN; -1 if not listening. */
int vd_nbd_server_fd(const struct vd_nbd_server *s);
/* Accept every pending connection and hand each to a serving thread. */
void vd_nbd_server_accept(struct vd_nbd_server *s);
/* Connections currently open (any thread; a snapshot). */
unsigned int vd_nbd_server_conns(struct vd_nbd_server *s);
/*
 * Stop listening (removing the UNIX socket), close every connection and
 * wait until their in-flight I/O has completed and they are freed. The
 * serving threads must keep running their reactors meanwhile. Idempotent.
 */
void vd_nbd_server_stop(struct vd_nbd_server *s);
/* Stops it if needed, then frees. NULL is a no-op. */
void vd_nbd_server_destroy(struct vd_nbd_server *s);

#endif
