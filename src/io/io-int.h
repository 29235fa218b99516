/*
 * io-int: private to src/io/ (backends and the reactor). Not for other layers.
 */
#ifndef VD_IO_INT_H
#define VD_IO_INT_H

#include <liburing.h>
#include "io/io.h"

extern const struct vd_io_backend vd_uring_backend;
extern const struct vd_io_backend vd_sync_backend;
extern const struct vd_io_backend vd_null_backend;
extern const struct vd_io_backend vd_mem_backend;

/* ---- reactor services for backends (ctx's thread only) ---- */

/*
 * An SQE for a request of this backend, or NULL if the SQ is still full
 * after submitting what it holds: then call vd_ioctx_backlog(), and the
 * ioctx calls backend->submit(req) again from vd_ioctx_poll() (submit must
 * therefore resume from req->done_bytes, not restart).
 */
struct io_uring_sqe *vd_ioctx_get_sqe(struct vd_ioctx *ctx);
/* Tag sqe so that its CQE goes to req->file->backend->cqe. */
void vd_ioctx_sqe_set_req(struct io_uring_sqe *sqe, struct vd_file_req *req);
/* Count req in vd_ioctx_inflight() until its callback runs (idempotent). */
void vd_ioctx_track(struct vd_ioctx *ctx, struct vd_file_req *req);
void vd_ioctx_backlog(struct vd_ioctx *ctx, struct vd_file_req *req);
/*
 * Registered resources (vd_ioctx_register_buffers/_files): the fixed
 * buffer index holding [base, base + len) (-1: none); the fixed-file slot
 * of the file with unique id file_id and fd (registered now if a slot is
 * free; -1: use the fd).
 */
int vd_ioctx_fixed_buf(const struct vd_ioctx *ctx, const void *base, size_t len);
int vd_ioctx_fixed_file(struct vd_ioctx *ctx, uint64_t file_id, int fd);
/* A process-unique id for a newly opened file (never 0, never reused). */
uint64_t vd_io_new_file_id(void);

/* Tests: force single-shot (re-armed) polls instead of multishot. */
void vd_ioctx_set_multishot(struct vd_ioctx *ctx, bool on);
bool vd_ioctx_multishot(const struct vd_ioctx *ctx);

/* ---- helpers shared by the fd backends (uring, sync) ---- */

/* Open path per o, fill f->fd and f->info. */
int vd_fd_open(struct vd_file *f, const char *path, const struct vd_file_opts *o,
	       struct vd_err *err);
void vd_fd_close(struct vd_file *f);
int vd_fd_resize(struct vd_file *f, uint64_t size_bytes);
int vd_fd_lock(struct vd_file *f, unsigned int perm, unsigned int shared, struct vd_err *err);
int vd_fd_prealloc(struct vd_file *f, uint64_t offset_bytes, uint64_t len_bytes);
/* DISCARD/WRITE_ZEROES on a block device (BLKDISCARD/BLKZEROOUT): 0 or -errno. */
int vd_fd_blkdev_range(struct vd_file *f, enum vd_io_op op, uint64_t offset_bytes,
		       uint64_t len_bytes);
/* fallocate() mode for DISCARD / WRITE_ZEROES (attempt 0: preferred, 1: fallback). */
int vd_fd_falloc_mode(enum vd_io_op op, unsigned int attempt);

/* Zero the request's iov from byte from_bytes to the end. */
void vd_req_zero_from(struct vd_file_req *req, uint64_t from_bytes);
/*
 * Point (*iov, *iovcnt) at the part of req's iov after req->done_bytes
 * (req->iov itself when done_bytes is 0; else a heap copy in req->rest_iov,
 * freed when the request completes). -ENOMEM.
 */
int vd_req_rest(struct vd_file_req *req, struct iovec **iov, int *iovcnt);

#endif
