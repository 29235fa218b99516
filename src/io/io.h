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
#include <stddef.h>
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
	uint64_t len_bytes; /* READ/WRITE: sum of iov lengths */
	struct iovec *iov;  /* borrowed until the callback */
	int iovcnt;
	vd_file_cb cb;
	void *cb_arg;
	/* private to the io layer (vd_file_submit initialises it) */
	struct vd_file_req *next_done;
	int64_t result;
	struct vd_file *file;
	uint64_t done_bytes;    /* READ/WRITE: bytes transferred so far (short I/O) */
	struct iovec *rest_iov; /* remainder after a short transfer (heap, rare) */
	int rest_iovcnt;
	uint8_t counted; /* included in vd_ioctx_inflight() */
	uint8_t attempt; /* backend-private retry state */
};

enum vd_cache_mode {
	VD_CACHE_DIRECT,    /* O_DIRECT where the filesystem allows (default) */
	VD_CACHE_WRITEBACK, /* page cache; FLUSH honoured */
};

struct vd_file_opts {
	bool readonly;
	enum vd_cache_mode cache;
	uint64_t size_bytes; /* null and mem: the size to present */
};

struct vd_file_info {
	uint64_t size_bytes;
	uint32_t logical_block_bytes; /* 512 or 4096: alignment O_DIRECT needs */
	uint32_t physical_block_bytes;
	uint32_t discard_granularity_bytes; /* 4096 for files, the device's for bdevs */
	bool is_blockdev;
	bool direct;   /* O_DIRECT in effect */
	bool discard;  /* DISCARD supported */
	bool readonly; /* opened read-only: writes fail with -EROFS */
};

/*
 * Request rules (checked by vd_file_submit, which completes a bad request
 * with -EINVAL, and a WRITE/DISCARD/WRITE_ZEROES on a read-only file with
 * -EROFS, both through the ioctx):
 *  - READ/WRITE: iovcnt 1..IOV_MAX, sum of iov lengths == len_bytes > 0.
 *  - With info.direct, offset_bytes, len_bytes and every iov element's base
 *    and length must be multiples of info.logical_block_bytes (the kernel
 *    refuses otherwise with -EINVAL). Without O_DIRECT, anything goes.
 *  - READ past the end of the file/device: the missing part reads as zeroes
 *    and result is still len_bytes. WRITE past the end of a device or of a
 *    null/mem target fails (-ENOSPC); on a regular file it extends it.
 *  - FLUSH ignores offset/len; DISCARD/WRITE_ZEROES use offset/len only.
 *  - result: READ/WRITE len_bytes, FLUSH/DISCARD/WRITE_ZEROES 0, or -errno.
 *
 * Backend vtable. open/close/resize run on any (control) thread; submit and
 * cqe run on the ioctx's thread.
 */
struct vd_io_backend {
	const char *name;       /* "uring", "sync", "null", "mem" */
	size_t file_state_size; /* the core allocates it zeroed after struct vd_file */
	int (*open)(struct vd_file *f, const char *path, const struct vd_file_opts *o,
		    struct vd_err *err);
	void (*close)(struct vd_file *f);
	/* Queue one request on ctx; completion through vd_ioctx_complete(). */
	void (*submit)(struct vd_file *f, struct vd_ioctx *ctx, struct vd_file_req *req);
	int (*resize)(struct vd_file *f, uint64_t size_bytes); /* optional */
	/*
	 * Optional: allocate [offset, offset+len) and extend the file over it
	 * (fallocate mode 0: never changes data). Any thread.
	 */
	int (*prealloc)(struct vd_file *f, uint64_t offset_bytes, uint64_t len_bytes);
	/*
	 * Optional, for backends that put SQEs on the ring (see io-int.h): a
	 * CQE tagged with req arrived (res as the kernel gave it). NULL means
	 * "complete req with res".
	 */
	void (*cqe)(struct vd_file *f, struct vd_ioctx *ctx, struct vd_file_req *req, int32_t res);
	/*
	 * Optional (NULL: nothing to lock, as null and mem): take the image
	 * locks for (perm, shared) on the file (io/lock.h), control thread.
	 */
	int (*lock)(struct vd_file *f, unsigned int perm, unsigned int shared, struct vd_err *err);
};

struct vd_file {
	const struct vd_io_backend *backend;
	struct vd_file_info info;
	int fd; /* -1 if none */
	char *path;
	/* backend state follows (file_state_size bytes) */
	_Alignas(16) unsigned char state[];
};

/* Backend by name ("uring", "sync", "null", "mem"); NULL if unknown. */
const struct vd_io_backend *vd_io_backend_find(const char *name);

/*
 * Open path with backend (NULL: "uring"). cache=DIRECT falls back to the
 * page cache (one WARN) where the filesystem refuses O_DIRECT. null/mem
 * ignore path and need o->size_bytes > 0. f->info describes the result.
 */
int vd_file_open(const char *backend, const char *path, const struct vd_file_opts *o,
		 struct vd_file **out, struct vd_err *err);
void vd_file_close(struct vd_file *f); /* NULL is a no-op */
/* On ctx's thread. req->cb runs later, from vd_ioctx_poll(). */
void vd_file_submit(struct vd_file *f, struct vd_ioctx *ctx, struct vd_file_req *req);
/*
 * Take QEMU-compatible image locks on f: it uses the permissions in perm
 * and lets others use those in shared (VD_PERM_*, io/lock.h). -EBUSY with
 * err when another opener (any process, or another open in this one) is in
 * the way. Released when f is closed. 0 for backends without files.
 */
int vd_file_lock(struct vd_file *f, unsigned int perm, unsigned int shared, struct vd_err *err);
/* Change the size (regular files only; -EOPNOTSUPP otherwise). Control thread. */
int vd_file_resize(struct vd_file *f, uint64_t size_bytes);
/*
 * Reserve space: allocate [offset, offset+len) of a regular file, growing
 * it (data untouched). -EOPNOTSUPP where the backend or the file cannot,
 * -ENOSPC when the filesystem is full (what was allocated may stay).
 */
int vd_file_prealloc(struct vd_file *f, uint64_t offset_bytes, uint64_t len_bytes);
/*
 * Synchronous helper for control-plane code (creates a temporary ioctx, or
 * uses pread/pwrite when io_uring is unavailable). Any op; buf, len and
 * offset need no alignment (it bounces through an aligned buffer for
 * O_DIRECT, read-modify-write for writes: do not race it with the datapath
 * on the same blocks). Returns bytes (READ/WRITE), 0, or -errno.
 */
int64_t vd_file_rw_sync(struct vd_file *f, enum vd_io_op op, void *buf, uint64_t len_bytes,
			uint64_t offset_bytes);

/* ---- reactor ---- */

typedef void (*vd_poll_cb)(void *arg, int revents);

/*
 * entries: io_uring SQ size (the CQ is twice that; rounded up to a power of
 * two, 1..4096). Any number of requests may be in flight: when the SQ is
 * full the ioctx submits, and keeps what still does not fit on a backlog
 * that vd_ioctx_poll() resubmits. Fails (-ENOSYS/-EPERM with a message)
 * when io_uring is unavailable (old kernel, sysctl, seccomp).
 */
int vd_ioctx_create(unsigned int entries, struct vd_ioctx **out, struct vd_err *err);
/* Requests still in flight are abandoned (their callbacks never run). NULL ok. */
void vd_ioctx_destroy(struct vd_ioctx *ctx);
struct io_uring *vd_ioctx_uring(struct vd_ioctx *ctx); /* for backends */

/*
 * Watch fd for POLLIN (multishot where available): cb runs from
 * vd_ioctx_poll() each time the fd becomes readable (level-triggered: the
 * callback must drain the fd, e.g. read the eventfd). One watch per fd
 * (-EEXIST). revents is a POLL* mask; POLLERR alone if the watch failed
 * (it is then dropped). vd_ioctx_unwatch_fd may be called from any
 * callback, including the watch's own; cb never runs after it returns.
 */
int vd_ioctx_watch_fd(struct vd_ioctx *ctx, int fd, vd_poll_cb cb, void *arg);
void vd_ioctx_unwatch_fd(struct vd_ioctx *ctx, int fd);

/*
 * Cross-thread messages. The owner thread enables them once, before
 * handing ctx to anyone else; then any thread may send fn(arg), which runs
 * on the owner's thread from vd_ioctx_poll(), in order per sender. Sending
 * takes no lock. -EAGAIN: the ring (1024 messages) is full, try later;
 * -ENOTCONN: messages were not enabled.
 */
typedef void (*vd_ioctx_msg_fn)(void *arg);
int vd_ioctx_msgs_enable(struct vd_ioctx *ctx);
int vd_ioctx_send_msg(struct vd_ioctx *ctx, vd_ioctx_msg_fn fn, void *arg);

/*
 * io_uring registered resources (optional speed-ups; owner thread, or the
 * creating thread before it hands ctx over). Everything works without them.
 *
 * register_buffers: the one region [base, base + len_bytes) (page-aligned,
 * at most 1 GiB) becomes io_uring fixed buffer 0 (replacing any earlier
 * one); from then on a READ/WRITE whose iov is one element inside it goes
 * as READ_FIXED/WRITE_FIXED (no page pinning per I/O). The region must stay
 * mapped until vd_ioctx_destroy. -errno (ENOMEM: RLIMIT_MEMLOCK, EOPNOTSUPP)
 * and nothing changes if the kernel refuses.
 *
 * register_files: a table of nr_slots fixed files; each file of an fd
 * backend (uring) is registered at its first request on ctx and then used
 * with IOSQE_FIXED_FILE. Slots are never reused: when they run out, files
 * go by fd as before. A registered file stays referenced by the ring until
 * vd_ioctx_destroy, even after vd_file_close. -errno if unsupported.
 */
int vd_ioctx_register_buffers(struct vd_ioctx *ctx, void *base, size_t len_bytes);
int vd_ioctx_register_files(struct vd_ioctx *ctx, unsigned int nr_slots);

/* For backends: finish req later, from vd_ioctx_poll(). */
void vd_ioctx_complete(struct vd_ioctx *ctx, struct vd_file_req *req, int64_t result);

/* Number of requests submitted (or deferred) whose callback has not run yet. */
unsigned int vd_ioctx_inflight(const struct vd_ioctx *ctx);

/*
 * Submit queued SQEs, then run the callbacks of everything that has
 * completed (io_uring CQEs, deferred completions, fd watches) without
 * blocking. Returns the number of callbacks run.
 */
int vd_ioctx_poll(struct vd_ioctx *ctx);

/*
 * Submit and sleep until at least one completion or watched fd is ready, or
 * timeout_ns passes (0: no timeout; returns at once if nothing is in flight
 * and nothing is watched). Then behaves as vd_ioctx_poll(). Returns the
 * number of callbacks run (0 on timeout) or -errno.
 */
int vd_ioctx_wait(struct vd_ioctx *ctx, uint64_t timeout_ns);

#endif
