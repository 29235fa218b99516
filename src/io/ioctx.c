/*
 * ioctx: one thread's reactor. An io_uring carries file I/O and POLL_ADD
 * watches; a FIFO of deferred completions lets backends that finish
 * synchronously (sync, null, mem, errors) complete later, so callbacks never
 * run inline from submit. A backlog holds requests that found the SQ full
 * even after a submit (the CQ was overflowing): they are resubmitted from
 * vd_ioctx_poll(), so no request is ever lost.
 *
 * user_data is a tagged pointer: the low 3 bits say what the high bits
 * point to (requests and watches are at least 8-byte aligned).
 */
#include <errno.h>
#include <poll.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/eventfd.h>
#include <unistd.h>
#include <stdlib.h>
#include <string.h>
#include <liburing.h>

#include "common/compiler.h"
#include "common/log.h"
#include "io/io-int.h"

#define TAG_REQ    0x0ull
#define TAG_WATCH  0x1ull
#define TAG_IGNORE 0x2ull
#define TAG_MASK   0x7ull

#define REAP_BATCH 64

struct watch {
	int fd;
	vd_poll_cb cb;
	void *arg;
	bool armed;       /* a poll is outstanding: its final CQE is still to come */
	bool dying;       /* unwatched: no more callbacks, freed after the final CQE */
	bool need_arm;    /* arming found the SQ full: retry from poll */
	bool need_remove; /* cancelling found the SQ full: retry from poll */
	bool in_cb;
	bool multishot;
	struct watch *next;
};

struct vd_ioctx {
	struct io_uring ring;
	unsigned int cq_entries;
	unsigned int inflight;
	bool multishot;
	unsigned int fixups; /* watches with need_arm/need_remove */
	struct vd_file_req *done_head, *done_tail;
	struct vd_file_req *backlog_head, *backlog_tail;
	struct watch *watches; /* live */
	struct watch *dying;   /* unwatched, waiting for their final CQE */
	struct msg_ring *msgs; /* NULL until vd_ioctx_msgs_enable */
	/* registered resources */
	uint8_t *fixed_base; /* fixed buffer 0, NULL if none */
	size_t fixed_len;
	uint64_t *fixed_files; /* slot -> file id (0: free); NULL if none */
	unsigned int nr_fixed_files;
	unsigned int fixed_files_used;
};

static_assert(_Alignof(struct vd_file_req) >= 8, "tag bits need 8-byte alignment");

/*
 * Cross-thread messages: a bounded multi-producer single-consumer ring
 * (each cell carries a sequence number, Vyukov's design), so senders never
 * take a lock and the owner drains it without one; an eventfd wakes it.
 */
#define MSG_CELLS 1024

struct msg_cell {
	atomic_size_t seq;
	vd_ioctx_msg_fn fn;
	void *arg;
};

/* The padding is the point: producers' head and the owner's tail on separate lines. */
struct msg_ring { /* NOLINT(clang-analyzer-optin.performance.Padding) */
	int efd;
	_Alignas(64) atomic_size_t head; /* next cell to fill (producers) */
	_Alignas(64) size_t tail;        /* next cell to run (owner) */
	struct msg_cell cells[MSG_CELLS];
};

int vd_ioctx_create(unsigned int entries, struct vd_ioctx **out, struct vd_err *err)
{
	struct io_uring_params p;
	struct vd_ioctx *ctx;
	int ret;

	*out = NULL;
	if (entries == 0) {
		entries = 1;
	}
	if (entries > 4096) {
		entries = 4096;
	}
	ctx = calloc(1, sizeof(*ctx));
	if (!ctx) {
		return vd_err_set(err, ENOMEM, "out of memory for an io context");
	}
	memset(&p, 0, sizeof(p));
	p.flags = IORING_SETUP_SUBMIT_ALL;
	ret = io_uring_queue_init_params(entries, &ctx->ring, &p);
	if (ret == -EINVAL) {
		/* kernels before 5.18 refuse flags they do not know */
		memset(&p, 0, sizeof(p));
		ret = io_uring_queue_init_params(entries, &ctx->ring, &p);
	}
	if (ret < 0) {
		free(ctx);
		if (ret == -ENOSYS || ret == -EPERM || ret == -EACCES) {
			return vd_err_set(
				err, -ret,
				"io_uring is unavailable (%s): the kernel lacks it, "
				"sysctl kernel.io_uring_disabled forbids it, or a seccomp "
				"filter (container runtime) blocks io_uring_setup",
				strerror(-ret));
		}
		return vd_err_set(err, -ret, "io_uring_queue_init(%u entries)", entries);
	}
	ctx->cq_entries = p.cq_entries;
	/* multishot POLL_ADD arrived in 5.13, with IORING_FEAT_RSRC_TAGS */
	ctx->multishot = (p.features & IORING_FEAT_RSRC_TAGS) != 0;
	*out = ctx;
	return 0;
}

static void free_list(struct watch *w)
{
	while (w) {
		struct watch *next = w->next;
		free(w);
		w = next;
	}
}

static void msgs_wake(void *arg, int revents)
{
	struct msg_ring *m = arg;
	uint64_t v;

	/* The ring itself is drained by vd_ioctx_poll; this only resets the fd. */
	if (read(m->efd, &v, sizeof(v)) < 0 && errno != EAGAIN) {
		vd_log_ratelimited(VD_LOG_WARN, "message eventfd: %s", strerror(errno));
	}
}

int vd_ioctx_msgs_enable(struct vd_ioctx *ctx)
{
	struct msg_ring *m;
	int rc;

	if (ctx->msgs) {
		return 0;
	}
	m = calloc(1, sizeof(*m));
	if (!m) {
		return -ENOMEM;
	}
	for (size_t i = 0; i < MSG_CELLS; i++) {
		atomic_init(&m->cells[i].seq, i);
	}
	atomic_init(&m->head, 0);
	m->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (m->efd < 0) {
		rc = -errno;
		free(m);
		return rc;
	}
	rc = vd_ioctx_watch_fd(ctx, m->efd, msgs_wake, m);
	if (rc < 0) {
		close(m->efd);
		free(m);
		return rc;
	}
	/* Published before any other thread learns of ctx (by the caller). */
	ctx->msgs = m;
	return 0;
}

int vd_ioctx_send_msg(struct vd_ioctx *ctx, vd_ioctx_msg_fn fn, void *arg)
{
	struct msg_ring *m = ctx->msgs;
	struct msg_cell *c;
	size_t pos;
	uint64_t one = 1;

	if (!m) {
		return -ENOTCONN;
	}
	pos = atomic_load_explicit(&m->head, memory_order_relaxed);
	for (;;) {
		c = &m->cells[pos % MSG_CELLS];
		size_t seq = atomic_load_explicit(&c->seq, memory_order_acquire);
		intptr_t diff = (intptr_t)seq - (intptr_t)pos;

		if (diff == 0) {
			if (atomic_compare_exchange_weak_explicit(&m->head, &pos, pos + 1,
								  memory_order_relaxed,
								  memory_order_relaxed)) {
				break;
			}
		} else if (diff < 0) {
			return -EAGAIN; /* full */
		} else {
			pos = atomic_load_explicit(&m->head, memory_order_relaxed);
		}
	}
	c->fn = fn;
	c->arg = arg;
	atomic_store_explicit(&c->seq, pos + 1, memory_order_release);
	if (write(m->efd, &one, sizeof(one)) != sizeof(one)) {
		return -errno; /* queued all the same; the next poll runs it */
	}
	return 0;
}

static int run_msgs(struct vd_ioctx *ctx)
{
	struct msg_ring *m = ctx->msgs;
	int ran = 0;

	while (m) {
		struct msg_cell *c = &m->cells[m->tail % MSG_CELLS];
		size_t seq = atomic_load_explicit(&c->seq, memory_order_acquire);
		vd_ioctx_msg_fn fn;
		void *arg;

		if (seq != m->tail + 1) {
			break; /* empty, or a producer is still filling it */
		}
		fn = c->fn;
		arg = c->arg;
		atomic_store_explicit(&c->seq, m->tail + MSG_CELLS, memory_order_release);
		m->tail++;
		fn(arg);
		ran++;
	}
	return ran;
}

void vd_ioctx_destroy(struct vd_ioctx *ctx)
{
	struct vd_file_req *r;

	if (!ctx) {
		return;
	}
	/* exiting the ring cancels every outstanding SQE: nothing touches our memory after */
	io_uring_queue_exit(&ctx->ring);
	free_list(ctx->watches);
	free_list(ctx->dying);
	free(ctx->fixed_files);
	for (r = ctx->done_head; r; r = r->next_done) {
		free(r->rest_iov);
		r->rest_iov = NULL;
	}
	for (r = ctx->backlog_head; r; r = r->next_done) {
		free(r->rest_iov);
		r->rest_iov = NULL;
	}
	if (ctx->msgs) {
		close(ctx->msgs->efd);
		free(ctx->msgs);
	}
	free(ctx);
}

/* ---- registered buffers and files ---- */

int vd_ioctx_register_buffers(struct vd_ioctx *ctx, void *base, size_t len_bytes)
{
	struct iovec iov = { .iov_base = base, .iov_len = len_bytes };
	int ret;

	if (!base || len_bytes == 0 || len_bytes > (1ull << 30)) {
		return -EINVAL;
	}
	if (ctx->fixed_base) {
		(void)io_uring_unregister_buffers(&ctx->ring);
		ctx->fixed_base = NULL;
		ctx->fixed_len = 0;
	}
	ret = io_uring_register_buffers(&ctx->ring, &iov, 1);
	if (ret < 0) {
		return ret;
	}
	ctx->fixed_base = base;
	ctx->fixed_len = len_bytes;
	return 0;
}

int vd_ioctx_fixed_buf(const struct vd_ioctx *ctx, const void *base, size_t len)
{
	const uint8_t *p = base;

	if (ctx->fixed_base && p >= ctx->fixed_base && len <= ctx->fixed_len &&
	    (size_t)(p - ctx->fixed_base) <= ctx->fixed_len - len) {
		return 0;
	}
	return -1;
}

int vd_ioctx_register_files(struct vd_ioctx *ctx, unsigned int nr_slots)
{
	int ret;

	if (nr_slots == 0 || nr_slots > 1024) {
		return -EINVAL;
	}
	if (ctx->fixed_files) {
		return -EBUSY;
	}
	ctx->fixed_files = calloc(nr_slots, sizeof(*ctx->fixed_files));
	if (!ctx->fixed_files) {
		return -ENOMEM;
	}
	ret = io_uring_register_files_sparse(&ctx->ring, nr_slots);
	if (ret < 0) {
		free(ctx->fixed_files);
		ctx->fixed_files = NULL;
		return ret;
	}
	ctx->nr_fixed_files = nr_slots;
	return 0;
}

int vd_ioctx_fixed_file(struct vd_ioctx *ctx, uint64_t file_id, int fd)
{
	unsigned int i;
	int ret;

	if (!ctx->fixed_files || file_id == 0 || fd < 0) {
		return -1;
	}
	for (i = 0; i < ctx->fixed_files_used; i++) {
		if (ctx->fixed_files[i] == file_id) {
			return (int)i;
		}
	}
	if (ctx->fixed_files_used == ctx->nr_fixed_files) {
		return -1;
	}
	ret = io_uring_register_files_update(&ctx->ring, ctx->fixed_files_used, &fd, 1);
	if (ret != 1) {
		/* the kernel will not take it: stop trying on this ring */
		ctx->fixed_files_used = ctx->nr_fixed_files;
		return -1;
	}
	ctx->fixed_files[ctx->fixed_files_used] = file_id;
	return (int)ctx->fixed_files_used++;
}

uint64_t vd_io_new_file_id(void)
{
	static atomic_uint_fast64_t next = 1;

	return (uint64_t)atomic_fetch_add(&next, 1);
}

struct io_uring *vd_ioctx_uring(struct vd_ioctx *ctx)
{
	return &ctx->ring;
}

void vd_ioctx_set_multishot(struct vd_ioctx *ctx, bool on)
{
	ctx->multishot = on;
}

bool vd_ioctx_multishot(const struct vd_ioctx *ctx)
{
	return ctx->multishot;
}

unsigned int vd_ioctx_inflight(const struct vd_ioctx *ctx)
{
	return ctx->inflight;
}

struct io_uring_sqe *vd_ioctx_get_sqe(struct vd_ioctx *ctx)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&ctx->ring);

	if (!sqe) {
		/* SQ full: push it to the kernel, then retry once */
		(void)io_uring_submit(&ctx->ring);
		sqe = io_uring_get_sqe(&ctx->ring);
	}
	return sqe;
}

void vd_ioctx_sqe_set_req(struct io_uring_sqe *sqe, struct vd_file_req *req)
{
	io_uring_sqe_set_data64(sqe, (uint64_t)(uintptr_t)req | TAG_REQ);
}

void vd_ioctx_track(struct vd_ioctx *ctx, struct vd_file_req *req)
{
	if (!req->counted) {
		req->counted = 1;
		ctx->inflight++;
	}
}

void vd_ioctx_backlog(struct vd_ioctx *ctx, struct vd_file_req *req)
{
	vd_ioctx_track(ctx, req);
	req->next_done = NULL;
	if (ctx->backlog_tail) {
		ctx->backlog_tail->next_done = req;
	} else {
		ctx->backlog_head = req;
	}
	ctx->backlog_tail = req;
}

void vd_ioctx_complete(struct vd_ioctx *ctx, struct vd_file_req *req, int64_t result)
{
	vd_ioctx_track(ctx, req);
	req->result = result;
	req->next_done = NULL;
	if (ctx->done_tail) {
		ctx->done_tail->next_done = req;
	} else {
		ctx->done_head = req;
	}
	ctx->done_tail = req;
}

/* ---- fd watches ---- */

static void arm(struct vd_ioctx *ctx, struct watch *w)
{
	struct io_uring_sqe *sqe = vd_ioctx_get_sqe(ctx);

	if (!sqe) {
		if (!w->need_arm) {
			w->need_arm = true;
			ctx->fixups++;
		}
		return;
	}
	if (w->need_arm) {
		w->need_arm = false;
		ctx->fixups--;
	}
	w->multishot = ctx->multishot;
	if (w->multishot) {
		io_uring_prep_poll_multishot(sqe, w->fd, POLLIN);
	} else {
		io_uring_prep_poll_add(sqe, w->fd, POLLIN);
	}
	io_uring_sqe_set_data64(sqe, (uint64_t)(uintptr_t)w | TAG_WATCH);
	w->armed = true;
}

static void cancel(struct vd_ioctx *ctx, struct watch *w)
{
	struct io_uring_sqe *sqe = vd_ioctx_get_sqe(ctx);

	if (!sqe) {
		if (!w->need_remove) {
			w->need_remove = true;
			ctx->fixups++;
		}
		return;
	}
	if (w->need_remove) {
		w->need_remove = false;
		ctx->fixups--;
	}
	io_uring_prep_poll_remove(sqe, (uint64_t)(uintptr_t)w | TAG_WATCH);
	io_uring_sqe_set_data64(sqe, TAG_IGNORE);
}

static struct watch **find_watch(struct vd_ioctx *ctx, int fd)
{
	struct watch **pw;

	for (pw = &ctx->watches; *pw; pw = &(*pw)->next) {
		if ((*pw)->fd == fd) {
			return pw;
		}
	}
	return NULL;
}

int vd_ioctx_watch_fd(struct vd_ioctx *ctx, int fd, vd_poll_cb cb, void *arg)
{
	struct watch *w;

	if (fd < 0 || !cb) {
		return -EINVAL;
	}
	if (find_watch(ctx, fd)) {
		return -EEXIST;
	}
	w = calloc(1, sizeof(*w));
	if (!w) {
		return -ENOMEM;
	}
	w->fd = fd;
	w->cb = cb;
	w->arg = arg;
	w->next = ctx->watches;
	ctx->watches = w;
	arm(ctx, w);
	return 0;
}

static void unlink_dying(struct vd_ioctx *ctx, struct watch *w)
{
	struct watch **pw;

	for (pw = &ctx->dying; *pw; pw = &(*pw)->next) {
		if (*pw == w) {
			*pw = w->next;
			break;
		}
	}
	if (w->need_arm) {
		ctx->fixups--;
	}
	if (w->need_remove) {
		ctx->fixups--;
	}
	free(w);
}

static void kill_watch(struct vd_ioctx *ctx, struct watch **pw)
{
	struct watch *w = *pw;

	*pw = w->next;
	w->dying = true;
	w->next = ctx->dying;
	ctx->dying = w;
	if (w->need_arm) {
		w->need_arm = false;
		ctx->fixups--;
	}
	if (w->armed) {
		cancel(ctx, w);
	} else if (!w->in_cb) {
		unlink_dying(ctx, w);
	}
	/* else: dispatch() frees it when the callback returns */
}

void vd_ioctx_unwatch_fd(struct vd_ioctx *ctx, int fd)
{
	struct watch **pw = find_watch(ctx, fd);

	if (pw) {
		kill_watch(ctx, pw);
	}
}

static struct watch **live_slot(struct vd_ioctx *ctx, struct watch *w)
{
	struct watch **pw;

	for (pw = &ctx->watches; *pw; pw = &(*pw)->next) {
		if (*pw == w) {
			return pw;
		}
	}
	return NULL;
}

/* Returns the number of callbacks run (0 or 1). */
static int dispatch_watch(struct vd_ioctx *ctx, struct watch *w, int32_t res, uint32_t flags)
{
	int ran = 0;

	if (!(flags & IORING_CQE_F_MORE)) {
		w->armed = false;
	}
	if (w->dying) {
		if (!w->armed && !w->in_cb) {
			unlink_dying(ctx, w);
		}
		return 0;
	}
	if (res == -EINVAL && w->multishot) {
		/* kernel without multishot poll: fall back to re-armed single shots */
		ctx->multishot = false;
		if (!w->armed) {
			arm(ctx, w);
		}
		return 0;
	}
	if (res == -ECANCELED) {
		/* multishot ended by the kernel (e.g. CQ overflow): re-arm */
		if (!w->armed) {
			arm(ctx, w);
		}
		return 0;
	}
	w->in_cb = true;
	if (res < 0) {
		vd_log(VD_LOG_ERR, "io: poll on fd %d failed: %s", w->fd, strerror(-res));
		w->cb(w->arg, POLLERR);
		ran = 1;
		w->in_cb = false;
		if (!w->dying) {
			struct watch **pw = live_slot(ctx, w);

			if (pw) {
				kill_watch(ctx, pw);
			}
		} else if (!w->armed) {
			unlink_dying(ctx, w);
		}
		return ran;
	}
	w->cb(w->arg, res);
	ran = 1;
	w->in_cb = false;
	if (w->dying) {
		if (!w->armed) {
			unlink_dying(ctx, w);
		}
	} else if (!w->armed) {
		arm(ctx, w);
	}
	return ran;
}

static void do_fixups(struct vd_ioctx *ctx)
{
	struct watch *w, *next;

	for (w = ctx->watches; w && ctx->fixups; w = w->next) {
		if (w->need_arm) {
			arm(ctx, w);
		}
	}
	for (w = ctx->dying; w && ctx->fixups; w = next) {
		next = w->next;
		if (w->need_remove) {
			cancel(ctx, w);
		}
	}
}

/* ---- the loop ---- */

struct cqe_copy {
	uint64_t user_data;
	int32_t res;
	uint32_t flags;
};

static int reap(struct vd_ioctx *ctx)
{
	struct io_uring_cqe *cqes[REAP_BATCH];
	struct cqe_copy copy[REAP_BATCH];
	unsigned int total = 0;
	int ran = 0;

	/* bounded, so that callbacks that keep resubmitting cannot starve the caller */
	while (total < 2 * ctx->cq_entries) {
		unsigned int n = io_uring_peek_batch_cqe(&ctx->ring, cqes, REAP_BATCH);
		unsigned int i;

		if (n == 0) {
			break;
		}
		for (i = 0; i < n; i++) {
			copy[i].user_data = cqes[i]->user_data;
			copy[i].res = cqes[i]->res;
			copy[i].flags = cqes[i]->flags;
		}
		io_uring_cq_advance(&ctx->ring, n);
		total += n;
		for (i = 0; i < n; i++) {
			uint64_t ud = copy[i].user_data;
			void *ptr = (void *)(uintptr_t)(ud & ~TAG_MASK);

			if (ud == LIBURING_UDATA_TIMEOUT) {
				continue;
			}
			switch (ud & TAG_MASK) {
			case TAG_REQ: {
				struct vd_file_req *req = ptr;
				struct vd_file *f = req->file;

				if (f && f->backend->cqe) {
					f->backend->cqe(f, ctx, req, copy[i].res);
				} else {
					vd_ioctx_complete(ctx, req, copy[i].res);
				}
				break;
			}
			case TAG_WATCH:
				ran += dispatch_watch(ctx, ptr, copy[i].res, copy[i].flags);
				break;
			default:
				break;
			}
		}
	}
	return ran;
}

static void redrive_backlog(struct vd_ioctx *ctx)
{
	struct vd_file_req *r = ctx->backlog_head;

	ctx->backlog_head = ctx->backlog_tail = NULL;
	while (r) {
		struct vd_file_req *next = r->next_done;

		r->next_done = NULL;
		r->file->backend->submit(r->file, ctx, r);
		r = next;
	}
}

static int run_done(struct vd_ioctx *ctx)
{
	struct vd_file_req *r = ctx->done_head;
	int ran = 0;

	ctx->done_head = ctx->done_tail = NULL;
	while (r) {
		struct vd_file_req *next = r->next_done;

		assert(ctx->inflight > 0);
		ctx->inflight--;
		r->counted = 0;
		r->next_done = NULL;
		free(r->rest_iov);
		r->rest_iov = NULL;
		r->cb(r, r->result);
		ran++;
		r = next;
	}
	return ran;
}

int vd_ioctx_poll(struct vd_ioctx *ctx)
{
	int ran;

	(void)io_uring_submit(&ctx->ring);
	ran = reap(ctx);
	if (ctx->fixups) {
		do_fixups(ctx);
	}
	if (ctx->backlog_head) {
		redrive_backlog(ctx);
	}
	ran += run_done(ctx);
	ran += run_msgs(ctx);
	if (io_uring_sq_ready(&ctx->ring)) {
		(void)io_uring_submit(&ctx->ring);
	}
	return ran;
}

int vd_ioctx_wait(struct vd_ioctx *ctx, uint64_t timeout_ns)
{
	struct __kernel_timespec ts;
	struct io_uring_cqe *cqe = NULL;
	int ret;

	if (ctx->done_head || ctx->backlog_head || ctx->fixups || io_uring_cq_ready(&ctx->ring)) {
		return vd_ioctx_poll(ctx);
	}
	if (timeout_ns == 0 && ctx->inflight == 0 && !ctx->watches && !ctx->dying) {
		/* nothing could ever wake us */
		return vd_ioctx_poll(ctx);
	}
	if (timeout_ns) {
		ts.tv_sec = (long long)(timeout_ns / 1000000000u);
		ts.tv_nsec = (long long)(timeout_ns % 1000000000u);
		ret = io_uring_submit_and_wait_timeout(&ctx->ring, &cqe, 1, &ts, NULL);
	} else {
		ret = io_uring_submit_and_wait(&ctx->ring, 1);
	}
	if (ret < 0 && ret != -ETIME && ret != -EINTR && ret != -EBUSY && ret != -EAGAIN) {
		return ret;
	}
	return vd_ioctx_poll(ctx);
}
