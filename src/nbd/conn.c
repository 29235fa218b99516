/*
 * nbd connection: one client's state machine, on its serving thread.
 *
 * Input. The socket is watched for POLLIN through the thread's vd_ioctx. A
 * wakeup parses what arrived (negotiation options, then requests) up to a
 * budget; whenever we stop early (budget, no free request slot, no buffer
 * space, negotiation replies not yet sent) we resume from our own code (the
 * deferred "kick" below), never relying on a new wakeup. A write payload is
 * received straight into the request's buffer.
 *
 * Output. Replies are queued in completion order and sent, batched, by one
 * sendmsg per kick: the kick is a vd_file_req completed through the ioctx,
 * so it runs after the other completions of the same reactor turn. When the
 * socket is full, an epoll fd (watched for POLLIN by the ioctx) carries the
 * socket's EPOLLOUT|EPOLLONESHOT: the ioctx only watches POLLIN.
 *
 * Memory. Per connection, at connect: max_inflight request slots (reply
 * headers inside), the image driver's per-request scratch, and a buffer
 * arena of max_block_bytes + 8 KiB (mmap: 4 KiB aligned, pages committed on
 * first use) handed out in pages, first fit. Nothing is allocated per
 * request; a request that does not fit waits (the socket is not read
 * meanwhile).
 *
 * Death. A failed socket, a protocol violation, a negotiation that outlives
 * its deadline, a connection idle too long (a per-thread timerfd sweeps
 * them, once a second while there is something to watch) or the server stopping
 * kills the connection: sockets closed at once, requests not in flight
 * released; the struct is freed when the last in-flight request, the kick
 * and the callback on the stack (busy) are done.
 */
#define _GNU_SOURCE
#include "nbd/nbd-int.h"

#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <unistd.h>
#include "common/log.h"

#define PAGE     4096u
#define HDR_MAX  (sizeof(struct nbd_chunk_hdr) + 8 + (size_t)8 * NBD_MAX_EXTENTS)
#define TX_BATCH 64 /* iovecs per sendmsg */

enum rx_state {
	RX_CFLAGS,     /* client flags, 4 bytes */
	RX_OPT_HDR,    /* option header */
	RX_OPT_DATA,   /* option payload (<= NBD_OPT_MAX) */
	RX_OPT_SKIP,   /* oversized option payload, discarded */
	RX_REQ_HDR,    /* request header */
	RX_WRITE_DATA, /* write payload into c->cur's buffer */
	RX_SKIP_DATA,  /* payload of a refused write, discarded */
	RX_TLS,        /* STARTTLS answered: the TLS handshake */
	RX_STOP,       /* nothing more is read (DISC, ABORT) */
};

struct nbd_req {
	struct nbd_conn *c;
	struct vd_io io;
	struct iovec iov;
	uint64_t cookie, offset_bytes;
	uint32_t len_bytes;
	uint16_t type, flags;
	uint32_t page, npages; /* arena pages held (npages 0: none) */
	uint32_t head_bytes;   /* READ: offset_bytes - the sector-aligned start read */
	uint32_t nbd_err;      /* reply error, 0: success */
	bool flush_after;      /* FUA: a FLUSH follows the write */
	unsigned int idx;
	struct nbd_req *next; /* free list or tx queue */
	struct iovec tx[2];
	unsigned int tx_cnt;
	_Alignas(8) uint8_t hdr[HDR_MAX];
};

struct nbd_conn {
	struct nbd_thread *t;
	struct vd_nbd_server *s;
	struct nbd_conn *next; /* t->conns */
	int fd, epfd;
	bool dead, ep_added, out_armed;
	bool transmission, structured, no_zeroes, meta_alloc;
	bool tls_on;                 /* the socket carries TLS records from now on */
	struct nbd_tls_session *tls; /* from STARTTLS on */
	uint64_t deadline_ns;        /* to be in transmission by then */
	uint64_t active_ns;          /* last byte received or sent */
	struct nbd_peer peer;        /* counted for the per-peer limit */
	bool close_after_tx;         /* ABORT answered, or DISC: close once all is sent */
	bool rx_wait;                /* input stopped for want of a resource */
	enum rx_state rx;
	uint32_t opt, opt_len;
	uint64_t skip; /* bytes still to discard */

	size_t rpos, rlen; /* unconsumed input: rbuf[rpos, rlen) */
	size_t opos, olen; /* unsent negotiation output: obuf[opos, olen) */

	struct nbd_req *reqs;
	struct nbd_req *free_reqs;
	unsigned int used;     /* slots not on the free list */
	unsigned int inflight; /* slots whose vd_io is submitted */
	struct nbd_req *tx_head, *tx_tail;
	size_t tx_off;       /* bytes of tx_head already sent */
	struct nbd_req *cur; /* write being received */
	uint32_t cur_got;

	uint8_t *arena;
	uint32_t arena_pages, next_fit;
	uint64_t *pagemap;
	uint8_t *ctx_mem;

	struct vd_file_req kick;
	bool kick_pending;
	unsigned int busy; /* callbacks on the stack: not freed before they return */

	uint8_t rbuf[NBD_RBUF_BYTES];
	uint8_t obuf[NBD_OBUF_BYTES];
};

static void conn_rx(struct nbd_conn *c);
static void tx_flush(struct nbd_conn *c);
static void conn_kill(struct nbd_conn *c, const char *why);

/* ---- arena: first fit over a page bitmap ---- */

static bool page_used(const struct nbd_conn *c, uint32_t p)
{
	return (c->pagemap[p / 64] >> (p % 64)) & 1;
}

static void pages_mark(struct nbd_conn *c, uint32_t p, uint32_t n, bool used)
{
	for (uint32_t i = p; i < p + n; i++) {
		if (used) {
			c->pagemap[i / 64] |= 1ull << (i % 64);
		} else {
			c->pagemap[i / 64] &= ~(1ull << (i % 64));
		}
	}
}

/* A run of n free pages: its first page, or UINT32_MAX. */
static uint32_t pages_find(struct nbd_conn *c, uint32_t n)
{
	uint32_t total = c->arena_pages;

	for (int pass = 0; pass < 2; pass++) {
		uint32_t p = pass == 0 ? c->next_fit : 0;
		uint32_t end = pass == 0 ? total : VD_MIN(c->next_fit + n, total);

		while (p + n <= end) {
			uint32_t run = 0;

			if (c->pagemap[p / 64] == UINT64_MAX && p % 64 == 0) {
				p += 64;
				continue;
			}
			while (run < n && !page_used(c, p + run)) {
				run++;
			}
			if (run == n) {
				return p;
			}
			p += run + 1;
		}
	}
	return UINT32_MAX;
}

static bool req_get_buffer(struct nbd_conn *c, struct nbd_req *r, uint32_t bytes)
{
	uint32_t n = VD_DIV_ROUND_UP(bytes, PAGE);
	uint32_t p;

	r->npages = 0;
	r->iov.iov_base = NULL;
	r->iov.iov_len = 0;
	if (n == 0) {
		return true;
	}
	p = pages_find(c, n);
	if (p == UINT32_MAX) {
		return false;
	}
	pages_mark(c, p, n, true);
	c->next_fit = p + n < c->arena_pages ? p + n : 0;
	r->page = p;
	r->npages = n;
	r->iov.iov_base = c->arena + (size_t)p * PAGE;
	r->iov.iov_len = bytes;
	return true;
}

/* ---- deferred kick: flush output, resume input ---- */

static void maybe_free(struct nbd_conn *c);

/* Every entry from the reactor holds the connection while it runs. */
static void enter(struct nbd_conn *c)
{
	c->busy++;
}

static void leave(struct nbd_conn *c)
{
	if (--c->busy == 0) {
		maybe_free(c);
	}
}

static void kick_cb(struct vd_file_req *req, int64_t result)
{
	struct nbd_conn *c = req->cb_arg;

	(void)result;
	enter(c);
	c->kick_pending = false;
	if (!c->dead) {
		tx_flush(c);
	}
	if (!c->dead && !c->rx_wait) {
		conn_rx(c);
	}
	leave(c);
}

static void kick(struct nbd_conn *c)
{
	if (c->kick_pending || c->dead) {
		return;
	}
	c->kick_pending = true;
	memset(&c->kick, 0, sizeof(c->kick));
	c->kick.cb = kick_cb;
	c->kick.cb_arg = c;
	vd_ioctx_complete(c->t->ioctx, &c->kick, 0);
}

/* ---- request slots ---- */

static void req_release(struct nbd_req *r)
{
	struct nbd_conn *c = r->c;

	if (r->npages != 0) {
		pages_mark(c, r->page, r->npages, false);
		r->npages = 0;
	}
	r->next = c->free_reqs;
	c->free_reqs = r;
	c->used--;
	if (c->rx_wait) {
		c->rx_wait = false;
		kick(c);
	}
}

static struct nbd_req *req_get(struct nbd_conn *c)
{
	struct nbd_req *r = c->free_reqs;

	if (r != NULL) {
		c->free_reqs = r->next;
		r->next = NULL;
		c->used++;
	}
	return r;
}

/* ---- freeing ---- */

static void maybe_free(struct nbd_conn *c)
{
	struct vd_nbd_server *s = c->s;
	struct nbd_peer peer = c->peer;
	struct nbd_conn **pc;

	if (!c->dead || c->inflight != 0 || c->kick_pending || c->busy != 0) {
		return;
	}
	for (pc = &c->t->conns; *pc != NULL; pc = &(*pc)->next) {
		if (*pc == c) {
			*pc = c->next;
			break;
		}
	}
	if (c->arena != NULL) {
		munmap(c->arena, (size_t)c->arena_pages * PAGE);
	}
	nbd_tls_session_destroy(c->tls);
	free(c->pagemap);
	free(c->ctx_mem);
	free(c->reqs);
	free(c);
	vd_nbd_server_conn_freed(s, &peer);
}

static void conn_kill(struct nbd_conn *c, const char *why)
{
	struct nbd_req *r;

	if (c->dead) {
		return;
	}
	if (why != NULL) {
		vd_log_ratelimited(VD_LOG_INFO, "nbd: closing a connection: %s", why);
	}
	c->dead = true;
	if (c->tls_on) {
		nbd_tls_bye(c->tls);
	}
	vd_ioctx_unwatch_fd(c->t->ioctx, c->fd);
	/*
	 * The io_uring poll on the socket holds its own file reference until
	 * the cancel above has been reaped: close() alone may leave the client
	 * waiting for EOF until this thread's next wake-up. shutdown() ends the
	 * connection now, whoever still holds the file.
	 */
	(void)shutdown(c->fd, SHUT_RDWR);
	close(c->fd);
	c->fd = -1;
	if (c->epfd >= 0) {
		vd_ioctx_unwatch_fd(c->t->ioctx, c->epfd);
		close(c->epfd);
		c->epfd = -1;
	}
	/* Replies never to be sent, a write never to be finished. */
	while ((r = c->tx_head) != NULL) {
		c->tx_head = r->next;
		req_release(r);
	}
	c->tx_tail = NULL;
	if (c->cur != NULL) {
		req_release(c->cur);
		c->cur = NULL;
	}
	maybe_free(c);
}

/* ---- output ---- */

static void arm_out(struct nbd_conn *c)
{
	struct epoll_event ev = { .events = EPOLLOUT | EPOLLONESHOT, .data.ptr = c };

	if (c->out_armed) {
		return;
	}
	if (epoll_ctl(c->epfd, c->ep_added ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, c->fd, &ev) < 0) {
		conn_kill(c, "epoll_ctl");
		return;
	}
	c->ep_added = true;
	c->out_armed = true;
}

static void on_writable(void *arg, int revents)
{
	struct nbd_conn *c = arg;
	struct epoll_event ev;

	(void)revents;
	enter(c);
	while (epoll_wait(c->epfd, &ev, 1, 0) > 0) {
	}
	c->out_armed = false;
	tx_flush(c);
	if (!c->dead && !c->rx_wait) {
		conn_rx(c);
	}
	leave(c);
}

static bool tx_empty(const struct nbd_conn *c)
{
	return c->opos == c->olen && c->tx_head == NULL;
}

static void tx_done_check(struct nbd_conn *c)
{
	if (c->close_after_tx && tx_empty(c) && c->inflight == 0 && c->cur == NULL) {
		conn_kill(c, NULL);
	}
}

/* sendmsg, or one TLS record: bytes taken, or -1 with errno. */
static ssize_t send_raw(struct nbd_conn *c, struct iovec *iov, int cnt)
{
	struct msghdr mh = { .msg_iov = iov, .msg_iovlen = (size_t)cnt };
	ssize_t n;

	if (c->tls_on) {
		n = nbd_tls_sendv(c->tls, iov, cnt);
		if (n < 0) {
			errno = (int)-n;
			return -1;
		}
		return n;
	}
	do {
		n = sendmsg(c->fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
	} while (n < 0 && errno == EINTR);
	return n;
}

/* Returns false when the connection died or the socket is full. */
static bool send_bytes(struct nbd_conn *c, struct iovec *iov, int cnt, size_t *sent)
{
	ssize_t n = send_raw(c, iov, cnt);

	if (n < 0) {
		if (errno == EAGAIN || errno == EWOULDBLOCK) {
			*sent = 0;
			arm_out(c);
			return false;
		}
		if (errno != EPIPE && errno != ECONNRESET) {
			vd_log_ratelimited(VD_LOG_WARN, "nbd: send: %s", strerror(errno));
		}
		conn_kill(c, NULL);
		return false;
	}
	*sent = (size_t)n;
	if (n > 0) {
		c->active_ns = vd_now_ns();
	}
	return true;
}

static void tx_flush(struct nbd_conn *c)
{
	size_t sent;

	if (c->dead) {
		return;
	}
	while (c->opos < c->olen) {
		struct iovec iov = { c->obuf + c->opos, c->olen - c->opos };

		if (!send_bytes(c, &iov, 1, &sent)) {
			return;
		}
		c->opos += sent;
	}
	c->opos = c->olen = 0;
	while (c->tx_head != NULL) {
		struct iovec iov[TX_BATCH];
		int cnt = 0;
		size_t skip = c->tx_off;

		for (struct nbd_req *r = c->tx_head; r != NULL && cnt + 2 <= TX_BATCH;
		     r = r->next) {
			for (unsigned int i = 0; i < r->tx_cnt; i++) {
				struct iovec v = r->tx[i];

				if (skip >= v.iov_len) {
					skip -= v.iov_len;
					continue;
				}
				v.iov_base = (uint8_t *)v.iov_base + skip;
				v.iov_len -= skip;
				skip = 0;
				iov[cnt++] = v;
			}
		}
		if (!send_bytes(c, iov, cnt, &sent)) {
			return;
		}
		sent += c->tx_off;
		while (c->tx_head != NULL) {
			struct nbd_req *r = c->tx_head;
			size_t len = 0;

			for (unsigned int i = 0; i < r->tx_cnt; i++) {
				len += r->tx[i].iov_len;
			}
			if (sent < len) {
				break;
			}
			sent -= len;
			c->tx_head = r->next;
			if (c->tx_head == NULL) {
				c->tx_tail = NULL;
			}
			req_release(r);
		}
		c->tx_off = sent; /* into the new head; a short send retries (or arms EPOLLOUT) */
	}
	c->tx_off = 0;
	tx_done_check(c);
}

/* Negotiation output goes through obuf; false (connection killed) if full. */
static bool obuf_put(struct nbd_conn *c, const void *p, size_t len)
{
	if (len > sizeof(c->obuf) - c->olen) {
		conn_kill(c, "negotiation output overflow");
		return false;
	}
	memcpy(c->obuf + c->olen, p, len);
	c->olen += len;
	return true;
}

static bool opt_reply(struct nbd_conn *c, uint32_t type, const void *data, uint32_t len)
{
	uint8_t h[sizeof(struct nbd_opt_reply)];

	nbd_put64(h + offsetof(struct nbd_opt_reply, magic), NBD_MAGIC_OPT_REPLY);
	nbd_put32(h + offsetof(struct nbd_opt_reply, option), c->opt);
	nbd_put32(h + offsetof(struct nbd_opt_reply, type), type);
	nbd_put32(h + offsetof(struct nbd_opt_reply, len), len);
	return obuf_put(c, h, sizeof(h)) && (len == 0 || obuf_put(c, data, len));
}

static bool opt_error(struct nbd_conn *c, uint32_t type, const char *msg)
{
	return opt_reply(c, type, msg, (uint32_t)strlen(msg));
}

/* ---- replies ---- */

static uint32_t nbd_errno(int64_t e)
{
	switch (-e) {
	case EPERM:
	case EROFS:
		return NBD_EPERM;
	case ENOMEM:
		return NBD_ENOMEM;
	case EINVAL:
		return NBD_EINVAL;
	case ENOSPC:
	case EDQUOT:
	case EFBIG:
		return NBD_ENOSPC;
	case EOVERFLOW:
		return NBD_EOVERFLOW;
	case EOPNOTSUPP:
		return NBD_ENOTSUP;
	case ESHUTDOWN:
		return NBD_ESHUTDOWN;
	default:
		return NBD_EIO;
	}
}

static void simple_hdr(struct nbd_req *r)
{
	nbd_put32(r->hdr + offsetof(struct nbd_simple_reply, magic), NBD_MAGIC_SIMPLE_REPLY);
	nbd_put32(r->hdr + offsetof(struct nbd_simple_reply, error), r->nbd_err);
	nbd_put64(r->hdr + offsetof(struct nbd_simple_reply, cookie), r->cookie);
	r->tx[0].iov_base = r->hdr;
	r->tx[0].iov_len = sizeof(struct nbd_simple_reply);
	r->tx_cnt = 1;
}

static void chunk_hdr(struct nbd_req *r, uint16_t flags, uint16_t type, uint32_t len)
{
	nbd_put32(r->hdr + offsetof(struct nbd_chunk_hdr, magic), NBD_MAGIC_STRUCT_REPLY);
	nbd_put16(r->hdr + offsetof(struct nbd_chunk_hdr, flags), flags);
	nbd_put16(r->hdr + offsetof(struct nbd_chunk_hdr, type), type);
	nbd_put64(r->hdr + offsetof(struct nbd_chunk_hdr, cookie), r->cookie);
	nbd_put32(r->hdr + offsetof(struct nbd_chunk_hdr, len), len);
}

/* Build r's reply (BLOCK_STATUS success: already built) and queue it. */
static void reply(struct nbd_req *r)
{
	struct nbd_conn *c = r->c;
	const size_t ch = sizeof(struct nbd_chunk_hdr);

	if (c->structured && (r->type == NBD_CMD_READ || r->type == NBD_CMD_BLOCK_STATUS)) {
		if (r->nbd_err != 0) {
			chunk_hdr(r, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_ERROR, 6);
			nbd_put32(r->hdr + ch, r->nbd_err);
			nbd_put16(r->hdr + ch + 4, 0);
			r->tx[0].iov_base = r->hdr;
			r->tx[0].iov_len = ch + 6;
			r->tx_cnt = 1;
		} else if (r->type == NBD_CMD_BLOCK_STATUS) {
			/* built by block_status() */
		} else if (r->len_bytes == 0) {
			chunk_hdr(r, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_NONE, 0);
			r->tx[0].iov_base = r->hdr;
			r->tx[0].iov_len = ch;
			r->tx_cnt = 1;
		} else {
			/* one content chunk: also what NBD_CMD_FLAG_DF asks for */
			chunk_hdr(r, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_OFFSET_DATA,
				  r->len_bytes + 8);
			nbd_put64(r->hdr + ch, r->offset_bytes);
			r->tx[0].iov_base = r->hdr;
			r->tx[0].iov_len = ch + 8;
			r->tx[1].iov_base = (uint8_t *)r->iov.iov_base + r->head_bytes;
			r->tx[1].iov_len = r->len_bytes;
			r->tx_cnt = 2;
		}
	} else {
		simple_hdr(r);
		if (r->type == NBD_CMD_READ && r->nbd_err == 0 && r->len_bytes != 0) {
			r->tx[1].iov_base = (uint8_t *)r->iov.iov_base + r->head_bytes;
			r->tx[1].iov_len = r->len_bytes;
			r->tx_cnt = 2;
		}
	}
	r->next = NULL;
	if (c->tx_tail != NULL) {
		c->tx_tail->next = r;
	} else {
		c->tx_head = r;
	}
	c->tx_tail = r;
	kick(c);
}

static void reply_err(struct nbd_req *r, uint32_t err)
{
	r->nbd_err = err;
	reply(r);
}

/* ---- transmission: submitting ---- */

static size_t ctx_stride(const struct vd_nbd_server *s)
{
	return VD_ALIGN_UP(s->io_ctx_bytes, (size_t)64);
}

static void io_done(struct vd_io *io, int64_t result);

static void submit(struct nbd_req *r, enum vd_io_op op, uint64_t off, uint64_t len)
{
	struct nbd_conn *c = r->c;

	r->io.op = op;
	r->io.offset_bytes = off;
	r->io.len_bytes = len;
	if (op == VD_IO_READ || op == VD_IO_WRITE) {
		r->io.iov = &r->iov;
		r->io.iovcnt = 1;
	} else {
		r->io.iov = NULL;
		r->io.iovcnt = 0;
	}
	r->io.cb = io_done;
	r->io.cb_arg = r;
	r->io.driver_ctx = c->ctx_mem != NULL ? c->ctx_mem + r->idx * ctx_stride(c->s) : NULL;
	c->inflight++;
	vd_image_submit(c->t->iq, &r->io);
}

static void io_done(struct vd_io *io, int64_t result)
{
	struct nbd_req *r = io->cb_arg;
	struct nbd_conn *c = r->c;

	enter(c);
	c->inflight--;
	if (c->dead) {
		req_release(r);
	} else if (result >= 0 && r->flush_after) {
		r->flush_after = false;
		submit(r, VD_IO_FLUSH, 0, 0);
	} else {
		if (result < 0) {
			r->nbd_err = nbd_errno(result);
		}
		reply(r);
	}
	leave(c);
}

/* base:allocation extents of [offset, offset + len) into r's reply. */
static void block_status(struct nbd_conn *c, struct nbd_req *r)
{
	const size_t ch = sizeof(struct nbd_chunk_hdr);
	unsigned int max = (r->flags & NBD_CMD_FLAG_REQ_ONE) ? 1 : NBD_MAX_EXTENTS;
	uint64_t pos = r->offset_bytes, end = r->offset_bytes + r->len_bytes;
	uint32_t lens[NBD_MAX_EXTENTS], flags[NBD_MAX_EXTENTS];
	unsigned int n = 0;

	while (pos < end && n < max) {
		struct vd_block_status st = { 0 };
		uint32_t f = 0;
		int ret = -EOPNOTSUPP;

		if (c->s->exact_status) {
			ret = vd_image_block_status(c->s->img, pos, end - pos, &st);
		}
		if (ret < 0 || st.len_bytes == 0 || st.len_bytes > end - pos) {
			if (n == 0 && ret < 0 && ret != -EOPNOTSUPP && ret != -EBUSY) {
				reply_err(r, nbd_errno(ret));
				return;
			}
			/* not known: allocated, not known zero, for the rest */
			st.len_bytes = end - pos;
			st.flags = VD_BLOCK_DATA;
		}
		if (!(st.flags & VD_BLOCK_DATA)) {
			f |= NBD_STATE_HOLE;
		}
		if (st.flags & VD_BLOCK_ZERO) {
			f |= NBD_STATE_ZERO;
		}
		if (n > 0 && flags[n - 1] == f) {
			lens[n - 1] += (uint32_t)st.len_bytes;
		} else {
			lens[n] = (uint32_t)st.len_bytes;
			flags[n] = f;
			n++;
		}
		pos += st.len_bytes;
	}
	chunk_hdr(r, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_BLOCK_STATUS, 4 + 8 * n);
	nbd_put32(r->hdr + ch, NBD_META_ID);
	for (unsigned int i = 0; i < n; i++) {
		nbd_put32(r->hdr + ch + 4 + (size_t)8 * i, lens[i]);
		nbd_put32(r->hdr + ch + 8 + (size_t)8 * i, flags[i]);
	}
	r->tx[0].iov_base = r->hdr;
	r->tx[0].iov_len = ch + 4 + (size_t)8 * n;
	r->tx_cnt = 1;
	reply(r);
}

/*
 * Validate a request header's copy. Returns 0 or the NBD error to answer.
 * Exposed to the unit tests and the fuzzer through conn.c's inclusion.
 */
static uint32_t check_req(const struct nbd_conn *c, const struct nbd_req *r)
{
	const struct vd_nbd_server *s = c->s;
	const uint16_t known = NBD_CMD_FLAG_FUA | NBD_CMD_FLAG_NO_HOLE | NBD_CMD_FLAG_DF |
			       NBD_CMD_FLAG_REQ_ONE | NBD_CMD_FLAG_FAST_ZERO;
	uint64_t size = s->info.size_bytes;
	bool past_end = r->offset_bytes > size || r->len_bytes > size - r->offset_bytes;
	bool aligned = VD_IS_ALIGNED(r->offset_bytes, (uint64_t)s->min_block_bytes) &&
		       VD_IS_ALIGNED((uint64_t)r->len_bytes, (uint64_t)s->min_block_bytes);

	if (r->flags & ~known) {
		return NBD_EINVAL;
	}
	if ((r->flags & NBD_CMD_FLAG_DF) && (!c->structured || r->type != NBD_CMD_READ)) {
		return NBD_EINVAL;
	}
	if ((r->flags & NBD_CMD_FLAG_FAST_ZERO) && r->type != NBD_CMD_WRITE_ZEROES) {
		return NBD_EINVAL;
	}
	switch (r->type) {
	case NBD_CMD_READ:
		/* any alignment: we read the covering sectors into our own buffer */
		if (r->len_bytes > s->max_block_bytes || past_end) {
			return NBD_EINVAL;
		}
		return 0;
	case NBD_CMD_WRITE:
		if (s->readonly) {
			return NBD_EPERM;
		}
		if (r->len_bytes > s->max_block_bytes || !aligned) {
			return NBD_EINVAL;
		}
		return past_end ? NBD_ENOSPC : 0;
	case NBD_CMD_FLUSH:
		return 0;
	case NBD_CMD_TRIM:
		if (s->readonly) {
			return NBD_EPERM;
		}
		return past_end ? NBD_EINVAL : 0;
	case NBD_CMD_WRITE_ZEROES:
		if (s->readonly) {
			return NBD_EPERM;
		}
		if (past_end) {
			return NBD_ENOSPC;
		}
		if (!aligned) {
			return NBD_EINVAL;
		}
		if ((r->flags & NBD_CMD_FLAG_FAST_ZERO) && !s->fast_zero) {
			return NBD_ENOTSUP;
		}
		return 0;
	case NBD_CMD_BLOCK_STATUS:
		if (!c->structured || !c->meta_alloc || r->len_bytes == 0 || past_end) {
			return NBD_EINVAL;
		}
		return 0;
	default:
		return NBD_EINVAL;
	}
}

/* Start a request whose header (and write payload) is in; r->nbd_err is 0. */
static void dispatch(struct nbd_conn *c, struct nbd_req *r)
{
	uint64_t sec = c->s->min_block_bytes;

	r->flush_after = (r->flags & NBD_CMD_FLAG_FUA) != 0 && !c->s->readonly;
	switch (r->type) {
	case NBD_CMD_READ:
		r->flush_after = false;
		if (r->len_bytes == 0) {
			reply(r);
			return;
		}
		submit(r, VD_IO_READ, r->offset_bytes - r->head_bytes, r->iov.iov_len);
		return;
	case NBD_CMD_WRITE:
		if (r->len_bytes == 0) {
			reply(r);
			return;
		}
		submit(r, VD_IO_WRITE, r->offset_bytes, r->len_bytes);
		return;
	case NBD_CMD_FLUSH:
		r->flush_after = false;
		submit(r, VD_IO_FLUSH, 0, 0);
		return;
	case NBD_CMD_TRIM: {
		/* advisory: only the whole sectors inside the range */
		uint64_t start = VD_ALIGN_UP(r->offset_bytes, sec);
		uint64_t end = (r->offset_bytes + r->len_bytes) & ~(sec - 1);

		if (start >= end || !c->s->info.discard) {
			if (r->flush_after) {
				r->flush_after = false;
				submit(r, VD_IO_FLUSH, 0, 0);
			} else {
				reply(r);
			}
			return;
		}
		submit(r, VD_IO_DISCARD, start, end - start);
		return;
	}
	case NBD_CMD_WRITE_ZEROES:
		if (r->len_bytes == 0) {
			reply(r);
			return;
		}
		/*
		 * NO_HOLE is a hint: raw's write-zeroes keeps the allocation
		 * (FALLOC_FL_ZERO_RANGE); qcow2 may make zero clusters.
		 */
		submit(r, VD_IO_WRITE_ZEROES, r->offset_bytes, r->len_bytes);
		return;
	case NBD_CMD_BLOCK_STATUS:
		block_status(c, r);
		return;
	default:
		reply_err(r, NBD_EINVAL);
		return;
	}
}

/* ---- transmission: parsing ---- */

/*
 * Bytes of buffer (and of image I/O) a READ/WRITE needs: a READ that is not
 * sector-aligned reads the covering sectors (head_bytes before it).
 */
static uint32_t io_bytes(const struct nbd_conn *c, struct nbd_req *r)
{
	uint64_t sec = c->s->min_block_bytes;
	uint64_t start, end;

	if (r->type != NBD_CMD_READ || r->len_bytes == 0) {
		return r->len_bytes;
	}
	start = r->offset_bytes & ~(sec - 1);
	end = VD_ALIGN_UP(r->offset_bytes + r->len_bytes, sec);
	r->head_bytes = (uint32_t)(r->offset_bytes - start);
	return (uint32_t)(end - start); /* <= max_block_bytes + 2 sectors: the arena has room */
}

/* Take one request header from rbuf. Returns false to stop reading. */
static bool take_request(struct nbd_conn *c)
{
	const uint8_t *p = c->rbuf + c->rpos;
	struct nbd_req *r;
	uint32_t err;

	if (nbd_get32(p + offsetof(struct nbd_request, magic)) != NBD_MAGIC_REQUEST) {
		conn_kill(c, "bad request magic");
		return false;
	}
	if (nbd_get16(p + offsetof(struct nbd_request, type)) == NBD_CMD_DISC) {
		c->rpos += sizeof(struct nbd_request);
		c->rx = RX_STOP;
		c->close_after_tx = true;
		tx_done_check(c);
		return false;
	}
	r = req_get(c);
	if (r == NULL) {
		c->rx_wait = true; /* released slots resume us */
		return false;
	}
	r->flags = nbd_get16(p + offsetof(struct nbd_request, flags));
	r->type = nbd_get16(p + offsetof(struct nbd_request, type));
	r->cookie = nbd_get64(p + offsetof(struct nbd_request, cookie));
	r->offset_bytes = nbd_get64(p + offsetof(struct nbd_request, offset));
	r->len_bytes = nbd_get32(p + offsetof(struct nbd_request, len));
	r->nbd_err = 0;
	r->npages = 0;
	r->tx_cnt = 0;
	r->head_bytes = 0;
	err = check_req(c, r);
	if (err == 0 && (r->type == NBD_CMD_READ || r->type == NBD_CMD_WRITE) &&
	    !req_get_buffer(c, r, io_bytes(c, r))) {
		/* no room in the arena: wait for replies to go out */
		r->next = c->free_reqs;
		c->free_reqs = r;
		c->used--;
		c->rx_wait = true;
		return false;
	}
	c->rpos += sizeof(struct nbd_request);
	if (r->type == NBD_CMD_WRITE) {
		if (err != 0) {
			c->skip = r->len_bytes;
			c->rx = c->skip != 0 ? RX_SKIP_DATA : RX_REQ_HDR;
			reply_err(r, err);
			return true;
		}
		if (r->len_bytes == 0) {
			/*
			 * No payload to receive: answer at once, as qemu-nbd does
			 * (success, nothing written). RX_WRITE_DATA would ask recv()
			 * for 0 bytes, read that as EOF and drop the connection.
			 */
			dispatch(c, r);
			return true;
		}
		c->cur = r;
		c->cur_got = 0;
		c->rx = RX_WRITE_DATA;
		return true;
	}
	if (err != 0) {
		reply_err(r, err);
		return true;
	}
	dispatch(c, r);
	return true;
}

/* ---- negotiation ---- */

static bool name_matches(const struct nbd_conn *c, const uint8_t *name, uint32_t len)
{
	const char *e = c->s->export_name;

	return len == 0 || (len == strlen(e) && memcmp(name, e, len) == 0);
}

static uint16_t tx_flags(const struct nbd_conn *c)
{
	return (uint16_t)(c->s->tx_flags | (c->structured ? NBD_FLAG_SEND_DF : 0));
}

static void enter_transmission(struct nbd_conn *c)
{
	c->transmission = true;
	c->rx = RX_REQ_HDR;
}

static bool info_reply(struct nbd_conn *c, uint16_t type)
{
	struct vd_nbd_server *s = c->s;
	uint8_t b[2 + VD_NBD_MAX_NAME + 16];
	size_t len = 2;

	nbd_put16(b, type);
	switch (type) {
	case NBD_INFO_EXPORT:
		nbd_put64(b + 2, s->info.size_bytes);
		nbd_put16(b + 10, tx_flags(c));
		len = 12;
		break;
	case NBD_INFO_NAME:
		len += strlen(s->export_name);
		memcpy(b + 2, s->export_name, len - 2);
		break;
	case NBD_INFO_DESCRIPTION:
		if (s->description == NULL) {
			return true;
		}
		len += strlen(s->description);
		memcpy(b + 2, s->description, len - 2);
		break;
	case NBD_INFO_BLOCK_SIZE:
		nbd_put32(b + 2, s->min_block_bytes);
		nbd_put32(b + 6, VD_MAX(VD_NBD_PREF_BLOCK, s->min_block_bytes));
		nbd_put32(b + 10, s->max_block_bytes);
		len = 14;
		break;
	default:
		return true; /* unknown info types are ignored */
	}
	return opt_reply(c, NBD_REP_INFO, b, (uint32_t)len);
}

static bool opt_info_go(struct nbd_conn *c, const uint8_t *d, uint32_t len)
{
	uint32_t namelen;
	uint16_t nreq;
	bool sent_name = false, sent_desc = false;

	if (len < 6 || (namelen = nbd_get32(d)) > len - 6) {
		return opt_error(c, NBD_REP_ERR_INVALID, "malformed INFO/GO");
	}
	nreq = nbd_get16(d + 4 + namelen);
	if ((uint64_t)4 + namelen + 2 + 2ull * nreq != len) {
		return opt_error(c, NBD_REP_ERR_INVALID, "malformed INFO/GO");
	}
	if (!name_matches(c, d + 4, namelen)) {
		return opt_error(c, NBD_REP_ERR_UNKNOWN, "no such export");
	}
	if (!info_reply(c, NBD_INFO_EXPORT) || !info_reply(c, NBD_INFO_BLOCK_SIZE)) {
		return false;
	}
	for (uint16_t i = 0; i < nreq; i++) {
		uint16_t type = nbd_get16(d + 4 + namelen + 2 + (size_t)2 * i);

		if (type == NBD_INFO_NAME && !sent_name) {
			sent_name = true;
			if (!info_reply(c, type)) {
				return false;
			}
		} else if (type == NBD_INFO_DESCRIPTION && !sent_desc) {
			sent_desc = true;
			if (!info_reply(c, type)) {
				return false;
			}
		}
	}
	if (!opt_reply(c, NBD_REP_ACK, NULL, 0)) {
		return false;
	}
	if (c->opt == NBD_OPT_GO) {
		enter_transmission(c);
	}
	return true;
}

static bool opt_meta(struct nbd_conn *c, const uint8_t *d, uint32_t len)
{
	static const char ctx[] = "base:allocation";
	bool set = c->opt == NBD_OPT_SET_META_CONTEXT;
	uint32_t namelen, nq, pos;
	bool match = false;

	if (!c->structured) {
		return opt_error(c, NBD_REP_ERR_INVALID, "structured replies first");
	}
	if (len < 8 || (namelen = nbd_get32(d)) > len - 8) {
		return opt_error(c, NBD_REP_ERR_INVALID, "malformed meta context option");
	}
	pos = 4 + namelen;
	nq = nbd_get32(d + pos);
	pos += 4;
	for (uint32_t i = 0; i < nq; i++) {
		uint32_t ql;

		if (len - pos < 4 || (ql = nbd_get32(d + pos)) > len - pos - 4) {
			return opt_error(c, NBD_REP_ERR_INVALID, "malformed meta context query");
		}
		pos += 4;
		if ((ql == sizeof(ctx) - 1 && memcmp(d + pos, ctx, ql) == 0) ||
		    (!set && ql == 5 && memcmp(d + pos, "base:", 5) == 0)) {
			match = true;
		}
		pos += ql;
	}
	if (pos != len) {
		return opt_error(c, NBD_REP_ERR_INVALID, "malformed meta context option");
	}
	if (!name_matches(c, d + 4, namelen)) {
		return opt_error(c, NBD_REP_ERR_UNKNOWN, "no such export");
	}
	if (!set && nq == 0) {
		match = true; /* list everything */
	}
	if (set) {
		c->meta_alloc = match;
	}
	if (match) {
		uint8_t b[4 + sizeof(ctx) - 1];

		nbd_put32(b, set ? NBD_META_ID : 0);
		memcpy(b + 4, ctx, sizeof(ctx) - 1);
		if (!opt_reply(c, NBD_REP_META_CONTEXT, b, sizeof(b))) {
			return false;
		}
	}
	return opt_reply(c, NBD_REP_ACK, NULL, 0);
}

/*
 * STARTTLS: ACK in the clear, then the handshake (RX_TLS). What was
 * negotiated before is forgotten, as the protocol requires.
 */
static bool opt_starttls(struct nbd_conn *c, uint32_t len)
{
	if (len != 0) {
		return opt_error(c, NBD_REP_ERR_INVALID, "STARTTLS takes no data");
	}
	if (c->s->tls == NULL) {
		return opt_error(c, NBD_REP_ERR_POLICY, "TLS is not configured on this server");
	}
	if (c->tls_on) {
		return opt_error(c, NBD_REP_ERR_INVALID, "TLS is already on");
	}
	if (nbd_tls_session_create(c->s->tls, c->fd, &c->tls) < 0) {
		conn_kill(c, "TLS session");
		return false;
	}
	c->structured = false;
	c->meta_alloc = false;
	c->rx = RX_TLS;
	return opt_reply(c, NBD_REP_ACK, NULL, 0);
}

/* The TLS handshake, once the ACK is out. false: stop (killed, waiting). */
static bool tls_step(struct nbd_conn *c)
{
	bool want_write = false;
	int r;

	if (c->olen != c->opos) {
		return false; /* the ACK first: on_writable resumes us */
	}
	if (c->rlen != c->rpos) {
		conn_kill(c, "data after STARTTLS before the handshake");
		return false;
	}
	r = nbd_tls_handshake(c->tls, &want_write);
	if (r == -EAGAIN) {
		if (want_write) {
			arm_out(c);
		}
		return false;
	}
	if (r < 0) {
		conn_kill(c, "TLS handshake failed");
		return false;
	}
	c->tls_on = true;
	c->active_ns = vd_now_ns();
	c->rpos = c->rlen = 0;
	c->rx = RX_OPT_HDR;
	return true;
}

/* One whole option (payload in d). Returns false if the connection died. */
static bool handle_option(struct nbd_conn *c, const uint8_t *d, uint32_t len)
{
	struct vd_nbd_server *s = c->s;

	if (s->tls_required && !c->tls_on && c->opt != NBD_OPT_STARTTLS &&
	    c->opt != NBD_OPT_ABORT) {
		if (c->opt == NBD_OPT_EXPORT_NAME) {
			conn_kill(c, "EXPORT_NAME before TLS");
			return false;
		}
		return opt_error(c, NBD_REP_ERR_TLS_REQD,
				 "TLS is required: NBD_OPT_STARTTLS first");
	}
	switch (c->opt) {
	case NBD_OPT_EXPORT_NAME: {
		uint8_t b[8 + 2 + NBD_EXPORT_NAME_ZEROES] = { 0 };

		if (!name_matches(c, d, len)) {
			conn_kill(c, "EXPORT_NAME: no such export");
			return false;
		}
		nbd_put64(b, s->info.size_bytes);
		nbd_put16(b + 8, tx_flags(c));
		if (!obuf_put(c, b, c->no_zeroes ? 10 : sizeof(b))) {
			return false;
		}
		enter_transmission(c);
		return true;
	}
	case NBD_OPT_ABORT:
		c->rx = RX_STOP;
		c->close_after_tx = true;
		return opt_reply(c, NBD_REP_ACK, NULL, 0);
	case NBD_OPT_LIST: {
		/* the name, then (free-form, for humans) the description */
		uint8_t b[4 + 2 * VD_NBD_MAX_NAME];
		size_t nl = strlen(s->export_name);
		size_t dl = s->description != NULL ? strlen(s->description) : 0;

		if (len != 0) {
			return opt_error(c, NBD_REP_ERR_INVALID, "LIST takes no data");
		}
		nbd_put32(b, (uint32_t)nl);
		memcpy(b + 4, s->export_name, nl);
		if (dl != 0) {
			memcpy(b + 4 + nl, s->description, dl);
		}
		return opt_reply(c, NBD_REP_SERVER, b, (uint32_t)(4 + nl + dl)) &&
		       opt_reply(c, NBD_REP_ACK, NULL, 0);
	}
	case NBD_OPT_STARTTLS:
		return opt_starttls(c, len);
	case NBD_OPT_INFO:
	case NBD_OPT_GO:
		return opt_info_go(c, d, len);
	case NBD_OPT_STRUCTURED_REPLY:
		if (len != 0) {
			return opt_error(c, NBD_REP_ERR_INVALID, "STRUCTURED_REPLY takes no data");
		}
		c->structured = true;
		return opt_reply(c, NBD_REP_ACK, NULL, 0);
	case NBD_OPT_LIST_META_CONTEXT:
	case NBD_OPT_SET_META_CONTEXT:
		return opt_meta(c, d, len);
	default:
		return opt_error(c, NBD_REP_ERR_UNSUP, "unsupported option");
	}
}

/* ---- input ---- */

/* Can the current state make progress with what rbuf holds? */
static bool rx_ready(const struct nbd_conn *c)
{
	size_t avail = c->rlen - c->rpos;

	switch (c->rx) {
	case RX_CFLAGS:
		return avail >= 4;
	case RX_OPT_HDR:
		return avail >= sizeof(struct nbd_opt_hdr);
	case RX_OPT_DATA:
		return avail >= c->opt_len;
	case RX_REQ_HDR:
		return avail >= sizeof(struct nbd_request);
	case RX_TLS:
		return true; /* the session reads the socket itself */
	default:
		return avail != 0; /* payloads: whatever there is */
	}
}

/* Run the state machine over rbuf. false: stop (killed, waiting, or done). */
static bool rx_step(struct nbd_conn *c)
{
	size_t avail = c->rlen - c->rpos;
	const uint8_t *p = c->rbuf + c->rpos;

	switch (c->rx) {
	case RX_CFLAGS: {
		uint32_t f = nbd_get32(p);

		c->rpos += 4;
		if (f & ~(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES)) {
			conn_kill(c, "unknown client flags");
			return false;
		}
		c->no_zeroes = (f & NBD_FLAG_C_NO_ZEROES) != 0;
		c->rx = RX_OPT_HDR;
		return true;
	}
	case RX_OPT_HDR:
		if (c->olen != c->opos) {
			/* one option at a time: earlier replies must be out first */
			c->rx_wait = false;
			return false;
		}
		if (nbd_get64(p) != NBD_MAGIC_OPTS) {
			conn_kill(c, "bad option magic");
			return false;
		}
		c->opt = nbd_get32(p + 8);
		c->opt_len = nbd_get32(p + 12);
		c->rpos += sizeof(struct nbd_opt_hdr);
		if (c->opt_len > NBD_OPT_MAX) {
			if (c->opt == NBD_OPT_EXPORT_NAME) {
				conn_kill(c, "export name too long");
				return false;
			}
			c->skip = c->opt_len;
			c->rx = RX_OPT_SKIP;
			return opt_error(c, NBD_REP_ERR_TOO_BIG, "option too long");
		}
		c->rx = RX_OPT_DATA;
		return true;
	case RX_OPT_DATA:
		c->rpos += c->opt_len;
		c->rx = RX_OPT_HDR;
		if (!handle_option(c, p, c->opt_len)) {
			return false;
		}
		tx_flush(c);
		return !c->dead;
	case RX_OPT_SKIP:
	case RX_SKIP_DATA: {
		size_t n = (size_t)VD_MIN((uint64_t)avail, c->skip);

		c->rpos += n;
		c->skip -= n;
		if (c->skip == 0) {
			c->rx = c->rx == RX_OPT_SKIP ? RX_OPT_HDR : RX_REQ_HDR;
			if (c->rx == RX_OPT_HDR) {
				tx_flush(c);
			}
			return !c->dead;
		}
		return n != 0;
	}
	case RX_REQ_HDR:
		return take_request(c);
	case RX_TLS:
		return tls_step(c);
	case RX_WRITE_DATA: {
		struct nbd_req *r = c->cur;
		size_t n = VD_MIN(avail, (size_t)(r->len_bytes - c->cur_got));

		memcpy((uint8_t *)r->iov.iov_base + c->cur_got, p, n);
		c->rpos += n;
		c->cur_got += (uint32_t)n;
		if (c->cur_got == r->len_bytes) {
			c->cur = NULL;
			c->rx = RX_REQ_HDR;
			dispatch(c, r);
		}
		return n != 0 || c->cur_got == r->len_bytes;
	}
	case RX_STOP:
	default:
		c->rpos = c->rlen; /* ignore anything after DISC/ABORT */
		return false;
	}
}

/* recv into dst; returns bytes, 0 for "nothing now", -1 when the connection died. */
static ssize_t rx_recv(struct nbd_conn *c, void *dst, size_t len)
{
	ssize_t n;

	if (c->tls_on) {
		n = nbd_tls_recv(c->tls, dst, len);
		if (n < 0) {
			errno = (int)-n;
			n = -1;
		}
	} else {
		do {
			n = recv(c->fd, dst, len, MSG_DONTWAIT);
		} while (n < 0 && errno == EINTR);
	}
	if (n > 0) {
		c->active_ns = vd_now_ns();
		return n;
	}
	if (n == 0) {
		conn_kill(c, NULL); /* the client went away */
		return -1;
	}
	if (errno == EAGAIN || errno == EWOULDBLOCK) {
		return 0;
	}
	conn_kill(c, "recv failed");
	return -1;
}

static void conn_rx(struct nbd_conn *c)
{
	unsigned int budget = NBD_RX_BUDGET;

	while (!c->dead && !c->rx_wait && c->rx != RX_STOP) {
		size_t avail = c->rlen - c->rpos;
		ssize_t n;

		if (budget-- == 0) {
			kick(c); /* let the other connections of this thread run */
			return;
		}
		if (c->rx == RX_WRITE_DATA && avail == 0) {
			/* big payloads: straight into the request's buffer */
			struct nbd_req *r = c->cur;

			n = rx_recv(c, (uint8_t *)r->iov.iov_base + c->cur_got,
				    r->len_bytes - c->cur_got);
			if (n <= 0) {
				return;
			}
			c->cur_got += (uint32_t)n;
			if (c->cur_got == r->len_bytes) {
				c->cur = NULL;
				c->rx = RX_REQ_HDR;
				dispatch(c, r);
			}
			continue;
		}
		if (rx_ready(c)) {
			if (!rx_step(c)) {
				return; /* dead, waiting, or negotiation output pending */
			}
			continue;
		}
		/* need more input */
		if (c->rpos != 0) {
			memmove(c->rbuf, c->rbuf + c->rpos, avail);
			c->rlen = avail;
			c->rpos = 0;
		}
		n = rx_recv(c, c->rbuf + c->rlen, sizeof(c->rbuf) - c->rlen);
		if (n <= 0) {
			return;
		}
		c->rlen += (size_t)n;
	}
}

static void on_readable(void *arg, int revents)
{
	struct nbd_conn *c = arg;

	(void)revents;
	enter(c);
	if (!c->dead && !c->rx_wait) {
		conn_rx(c);
	}
	if (!c->dead && c->rx == RX_STOP && c->close_after_tx) {
		tx_done_check(c);
	}
	leave(c);
}

/* ---- deadlines: negotiation, idleness ---- */

static void timer_set(struct nbd_thread *t, bool on)
{
	struct itimerspec its = { 0 };

	if (t->tfd < 0 || t->timer_armed == on) {
		return;
	}
	if (on) {
		its.it_value.tv_sec = 1;
		its.it_interval.tv_sec = 1;
	}
	if (timerfd_settime(t->tfd, 0, &its, NULL) == 0) {
		t->timer_armed = on;
	}
}

static void on_timer(void *arg, int revents)
{
	struct nbd_thread *t = arg;
	uint64_t now = vd_now_ns(), ticks;
	uint64_t idle_ns = t->srv->idle_ns;
	struct nbd_conn *c, *next;
	bool watching = false;

	(void)revents;
	while (read(t->tfd, &ticks, sizeof(ticks)) == (ssize_t)sizeof(ticks)) {
	}
	for (c = t->conns; c != NULL; c = next) {
		next = c->next; /* conn_kill may free c */
		if (c->dead) {
			continue;
		}
		if (!c->transmission) {
			if (now >= c->deadline_ns) {
				conn_kill(c, "negotiation timeout");
				continue;
			}
		} else if (idle_ns == 0) {
			continue;
		} else if (c->inflight == 0 && now - c->active_ns >= idle_ns) {
			/* nothing in flight, nothing received or sent: idle or not reading */
			conn_kill(c, "idle timeout");
			continue;
		}
		watching = true;
	}
	timer_set(t, watching);
}

/* On the serving thread, at its first connection. Without it: no deadline. */
static void timer_init(struct nbd_thread *t)
{
	if (t->tfd >= 0) {
		return;
	}
	t->tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
	if (t->tfd >= 0 && vd_ioctx_watch_fd(t->ioctx, t->tfd, on_timer, t) < 0) {
		close(t->tfd);
		t->tfd = -1;
	}
	t->timer_armed = false;
}

/* ---- lifecycle ---- */

void vd_nbd_conn_start(struct nbd_thread *t, int fd, const struct nbd_peer *peer)
{
	struct vd_nbd_server *s = t->srv;
	struct nbd_conn *c = calloc(1, sizeof(*c));
	uint8_t g[NBD_GREETING_BYTES];
	size_t pm_words;

	if (c == NULL) {
		goto err_close;
	}
	c->t = t;
	c->s = s;
	c->fd = fd;
	c->epfd = -1;
	if (peer != NULL) {
		c->peer = *peer;
	}
	/* the largest request, plus the sectors around an unaligned READ */
	c->arena_pages = s->max_block_bytes / PAGE + 2;
	pm_words = VD_DIV_ROUND_UP(c->arena_pages, 64u);
	c->pagemap = calloc(pm_words, sizeof(uint64_t));
	c->reqs = calloc(s->max_inflight, sizeof(struct nbd_req));
	if (s->io_ctx_bytes != 0) {
		/* zeroed: drivers expect fresh scratch to start clean */
		c->ctx_mem = aligned_alloc(64, ctx_stride(s) * s->max_inflight);
		if (c->ctx_mem != NULL) {
			memset(c->ctx_mem, 0, ctx_stride(s) * s->max_inflight);
		}
	}
	c->arena = mmap(NULL, (size_t)c->arena_pages * PAGE, PROT_READ | PROT_WRITE,
			MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (c->arena == MAP_FAILED) {
		c->arena = NULL;
	}
	c->epfd = epoll_create1(EPOLL_CLOEXEC);
	if (c->pagemap == NULL || c->reqs == NULL || c->arena == NULL || c->epfd < 0 ||
	    (s->io_ctx_bytes != 0 && c->ctx_mem == NULL)) {
		goto err_free;
	}
	for (unsigned int i = s->max_inflight; i-- > 0;) {
		struct nbd_req *r = &c->reqs[i];

		r->c = c;
		r->idx = i;
		r->next = c->free_reqs;
		c->free_reqs = r;
	}
	c->used = 0;
	if (vd_ioctx_watch_fd(t->ioctx, fd, on_readable, c) < 0) {
		goto err_free;
	}
	if (vd_ioctx_watch_fd(t->ioctx, c->epfd, on_writable, c) < 0) {
		vd_ioctx_unwatch_fd(t->ioctx, fd);
		goto err_free;
	}
	c->next = t->conns;
	t->conns = c;
	c->active_ns = vd_now_ns();
	c->deadline_ns = c->active_ns + s->handshake_ns;
	timer_init(t);
	timer_set(t, true);
	nbd_put64(g, NBD_MAGIC_INIT);
	nbd_put64(g + 8, NBD_MAGIC_OPTS);
	nbd_put16(g + 16, NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
	c->rx = RX_CFLAGS;
	/* last: a failed send frees c */
	if (obuf_put(c, g, sizeof(g))) {
		tx_flush(c);
	}
	return;

err_free:
	if (c->epfd >= 0) {
		close(c->epfd);
	}
	if (c->arena != NULL) {
		munmap(c->arena, (size_t)c->arena_pages * PAGE);
	}
	free(c->ctx_mem);
	free(c->reqs);
	free(c->pagemap);
	free(c);
err_close:
	vd_log_ratelimited(VD_LOG_WARN, "nbd: out of memory for a new connection");
	close(fd);
	vd_nbd_server_conn_freed(s, peer);
}

void vd_nbd_thread_kill_all(struct nbd_thread *t)
{
	struct nbd_conn *c = t->conns;

	while (c != NULL) {
		struct nbd_conn *next = c->next;

		/* may free c (and unlink it) when nothing is in flight */
		conn_kill(c, NULL);
		c = next;
	}
	if (t->tfd >= 0) {
		vd_ioctx_unwatch_fd(t->ioctx, t->tfd);
		close(t->tfd);
		t->tfd = -1;
		t->timer_armed = false;
	}
}
