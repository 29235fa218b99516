/*
 * io: byte-level backends (uring, sync, null, mem, later fault, nbd, rbd)
 * behind one vtable, and the per-thread reactor they complete through.
 *
 * struct vd_ioctx is one thread's io_uring plus a deferred-completion list.
 * The thread that creates it is its only user (a queue thread, or the CLI).
 * Besides file I/O it carries poll requests for any fd (event channels,
 * message eventfds) so the thread has one wait point:
 * vd_ioctx_wait() = io_uring_submit_and_wait.
 *
 * struct vd_file is one open backing file or device (or a null/mem target),
 * shared by every thread; per-thread state lives in the ioctx.
 *
 * A request (struct vd_file_req) is owned by the caller until its callback
 * runs; the callback runs exactly once, on the ioctx's thread, from
 * vd_ioctx_poll() (never inline from submit, so callers need not handle
 * re-entrancy). result is bytes transferred (== len_bytes on success) or
 * -errno. Buffers in iov must stay valid until the callback.
 */
#ifndef VD_IO_H
#define VD_IO_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/uio.h>
#include "common/err.h"

struct vd_ioctx;
struct vd_file;
struct vd_file_req;

enum vd_io_op {
	VD_IO_READ,
	VD_IO_WRITE,
	VD_IO_FLUSH,        /* make every completed write durable (fdatasync) */
	VD_IO_DISCARD,      /* deallocate; reads after it return zeroes */
	VD_IO_WRITE_ZEROES, /* reads after it return zeroes; may deallocate */
};

typedef void (*vd_file_cb)(struct vd_file_req *req, int64_t result);

struct vd_file_req {
	enum vd_io_op op;
	uint64_t offset_bytes;
	uint64_t len_bytes;     /* READ/WRITE: sum of iov lengths */
	struct iovec *iov;      /* borrowed until the callback */
	int iovcnt;
	vd_file_cb cb;
	void *cb_arg;
	/* private to the io layer */
	struct vd_file_req *next_done;
	int64_t result;
};

enum vd_cache_mode {
	VD_CACHE_DIRECT,    /* O_DIRECT where the filesystem allows (default) */
	VD_CACHE_WRITEBACK, /* page cache; FLUSH honoured */
};

struct vd_file_opts {
	bool readonly;
	enum vd_cache_mode cache;
	uint64_t size_bytes;    /* null and mem: the size to present */
};

struct vd_file_info {
	uint64_t size_bytes;
	uint32_t logical_block_bytes;   /* 512 or 4096: alignment O_DIRECT needs */
	uint32_t physical_block_bytes;
	bool is_blockdev;
	bool direct;                    /* O_DIRECT in effect */
	bool discard;                   /* DISCARD supported */
};

/*
 * Backend vtable. All ops run on any thread unless noted; submit runs on
 * the ioctx's thread.
 */
struct vd_io_backend {
	const char *name;            /* "uring", "sync", "null", "mem" */
	size_t file_state_size;      /* the core allocates it zeroed after struct vd_file */
	int (*open)(struct vd_file *f, const char *path, const struct vd_file_opts *o,
		    struct vd_err *err);
	void (*close)(struct vd_file *f);
	/* Queue one request on ctx; completion through vd_ioctx_complete(). */
	void (*submit)(struct vd_file *f, struct vd_ioctx *ctx, struct vd_file_req *req);
	int (*resize)(struct vd_file *f, uint64_t size_bytes); /* optional */
};

struct vd_file {
	const struct vd_io_backend *backend;
	struct vd_file_info info;
	int fd;                      /* -1 if none */
	char *path;
	/* backend state follows (file_state_size bytes) */
	_Alignas(16) unsigned char state[];
};

/* Backend by name; NULL if unknown. */
const struct vd_io_backend *vd_io_backend_find(const char *name);

int vd_file_open(const char *backend, const char *path, const struct vd_file_opts *o,
		 struct vd_file **out, struct vd_err *err);
void vd_file_close(struct vd_file *f);
void vd_file_submit(struct vd_file *f, struct vd_ioctx *ctx, struct vd_file_req *req);
/* Synchronous helper for control-plane code (creates a temporary ioctx). */
int64_t vd_file_rw_sync(struct vd_file *f, enum vd_io_op op, void *buf, uint64_t len_bytes,
			uint64_t offset_bytes);

/* ---- reactor ---- */

typedef void (*vd_poll_cb)(void *arg, int revents);

/* entries: io_uring SQ size (the CQ is twice that). */
int vd_ioctx_create(unsigned int entries, struct vd_ioctx **out, struct vd_err *err);
void vd_ioctx_destroy(struct vd_ioctx *ctx);
struct io_uring *vd_ioctx_uring(struct vd_ioctx *ctx); /* for backends */

/*
 * Watch fd for POLLIN (multishot where available): cb runs from
 * vd_ioctx_poll() each time the fd becomes readable. One watch per fd.
 */
int vd_ioctx_watch_fd(struct vd_ioctx *ctx, int fd, vd_poll_cb cb, void *arg);
void vd_ioctx_unwatch_fd(struct vd_ioctx *ctx, int fd);

/* For backends: finish req later, from vd_ioctx_poll(). */
void vd_ioctx_complete(struct vd_ioctx *ctx, struct vd_file_req *req, int64_t result);

/* Number of requests submitted and not yet completed. */
unsigned int vd_ioctx_inflight(const struct vd_ioctx *ctx);

/*
 * Submit queued SQEs, then run the callbacks of everything that has
 * completed (io_uring CQEs, deferred completions, fd watches) without
 * blocking. Returns the number of callbacks run.
 */
int vd_ioctx_poll(struct vd_ioctx *ctx);

/*
 * Submit and sleep until at least one completion or watched fd is ready, or
 * timeout_ns passes (0: no timeout). Then behaves as vd_ioctx_poll().
 */
int vd_ioctx_wait(struct vd_ioctx *ctx, uint64_t timeout_ns);

#endif
