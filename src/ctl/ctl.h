/*
 * ctl: the control plane. The daemon (vdiskd) that watches xenstore for
 * VBDs, the per-VBD worker process that serves one of them, the toolstack
 * commands (attach, detach, list) and the strict parsers the CLI uses.
 *
 * Xenstore layout (see the team brief, "Runtime contracts"):
 *
 *   /local/domain/0/backend/vbd3/<domid>/<devid>    backend dir (ours)
 *     frontend frontend-id online state params mode type dev device-type
 *     discard-enable format io-backend [size] [cache] [max-queues]
 *     [l2-cache-size] [l2-cache-entry-size]   (qcow2, bytes)
 *     vdisk-error   written by the daemon/worker when a VBD cannot be served
 *   /local/domain/<domid>/device/vbd/<devid>        frontend dir (the guest's)
 *     backend backend-id state virtual-device device-type
 *
 * Trust: every name and value read from xenstore is untrusted; the daemon
 * and the worker validate all of it and never crash on it.
 *
 * Threads: everything here runs on one control thread per process.
 */
#ifndef VD_CTL_H
#define VD_CTL_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>
#include <xenstore.h>
#include "common/err.h"

/* Where the toolstack puts backend dirs (relative to dom0's home). */
#define VD_CTL_BACKEND_KIND "vbd3"
#define VD_CTL_DOM0_PATH    "/local/domain/0"
#define VD_CTL_BACKEND_ROOT VD_CTL_DOM0_PATH "/backend/" VD_CTL_BACKEND_KIND

#define VD_CTL_DOMID_MAX      65534u     /* domids we accept in paths: 1..65534 */
#define VD_CTL_DEVID_MAX      (1u << 31) /* devids we accept in paths: 0..2^31 */
#define VD_CTL_PATH_MAX       256        /* every xenstore path we build fits */
#define VD_CTL_MAX_VBDS       4096       /* the daemon tracks at most this many */
#define VD_CTL_DEFAULT_QUEUES 4

/* ---- strict parsers (parse.c) ----
 * All return 0 or -EINVAL (malformed, empty, sign, spaces, trailing junk)
 * or -ERANGE (overflow or above max); *out is untouched on error.
 */

/* Decimal digits only, value <= max. Leading zeros allowed. */
int vd_ctl_parse_u64(const char *s, uint64_t max, uint64_t *out);

/*
 * Canonical decimal, as a xenstore directory name must be: digits only, no
 * leading zero unless the name is "0", value <= max.
 */
int vd_ctl_parse_canon_u64(const char *s, uint64_t max, uint64_t *out);

/*
 * A byte count: decimal digits with an optional binary suffix K, M, G or T
 * (case-insensitive, optionally followed by "B" or "iB": 4K, 4KiB, 1g).
 * -ERANGE if the result overflows 64 bits.
 */
int vd_ctl_parse_size(const char *s, uint64_t *out);

/*
 * A virtual device: a number (51712) or a name, per Xen's vbd-interface.txt:
 *   xvd<disk>[<part>]  disk a..z, aa.. (bijective base 26);
 *                      disk < 16, part < 16: (202 << 8) | (disk << 4) | part
 *                      else (1 << 28) | (disk << 8) | part  (disk < 2^20, part < 256)
 *   hd[a-d][<part>]    (3 << 8) / (22 << 8), slave +64, part < 64
 *   sd[a-p][<part>]    (8 << 8) | (disk << 4) | part, part < 16
 * xvda = 51712, xvdb = 51728. Numbers must be <= VD_CTL_DEVID_MAX.
 */
int vd_ctl_parse_vdev(const char *s, uint32_t *out);

/* A domid for the toolstack commands: decimal 1..VD_CTL_DOMID_MAX. */
int vd_ctl_parse_domid(const char *s, uint16_t *out);

/*
 * Validate the two names under backend/vbd3: <domid>/<devid>. Canonical
 * decimal only, domid 1..VD_CTL_DOMID_MAX, devid 0..VD_CTL_DEVID_MAX.
 */
int vd_ctl_parse_vbd_names(const char *domid_name, const char *devid_name, uint16_t *domid,
			   uint32_t *devid);

/* Name of a xenbus state (XenbusStateConnected -> "Connected"), "?" if unknown. */
const char *vd_ctl_state_name(int state);

/* Write s to f as a JSON string literal (quoted, escaped). */
void vd_ctl_json_string(FILE *f, const char *s);

/* ---- toolstack commands (toolstack.c), one transaction each ---- */

#define VD_CTL_POLL_US_MAX 1000000u /* the daemon's bound, VD_QUEUE_MAX_POLL_US */

struct vd_attach_opts {
	uint16_t domid;         /* 1..VD_CTL_DOMID_MAX */
	uint32_t vdev;          /* from vd_ctl_parse_vdev */
	const char *vdev_name;  /* written as "dev"; NULL: the number */
	const char *image;      /* params */
	const char *format;     /* NULL: "raw" */
	const char *io_backend; /* NULL: "uring"; "uring", "sync", "null", "mem" */
	const char *cache;      /* NULL: not written; "direct" or "writeback" */
	bool readonly;          /* mode=r */
	bool have_size;
	uint64_t size_bytes;           /* "size", for null/mem */
	unsigned int max_queues;       /* 0: not written */
	uint64_t l2_cache_bytes;       /* qcow2 l2-cache-size; 0: not written */
	uint64_t l2_cache_entry_bytes; /* qcow2 l2-cache-entry-size; 0: not written */
	/* The queues' tunables; each written only when its have_ flag is set. */
	bool have_polling_us, have_poll_idle_pct, have_zero_copy, have_io_fixed;
	uint32_t polling_us;    /* polling-duration, 0..VD_CTL_POLL_US_MAX (0: off) */
	uint32_t poll_idle_pct; /* polling-idle-threshold, 0..100 */
	bool zero_copy;         /* zero-copy: O_DIRECT straight to mapped guest pages */
	bool io_fixed;          /* io-fixed: io_uring registered buffers and files */
	bool check_image;       /* check IMAGE exists and is readable (not for null/mem) */
	/* The backing-file policy: "backing-dirs" (joined by ':'), "no-backing". */
	const char *const *backing_dirs;
	size_t n_backing_dirs;
	bool no_backing;
};

/*
 * Write the backend and frontend dirs of a new VBD, with the permissions of
 * the brief (backend: owner 0, DOMID may read; frontend: owner DOMID, 0 may
 * read). -ENOENT if /local/domain/DOMID does not exist, -EEXIST if either
 * dir exists, -EINVAL for bad options; err says why.
 */
int vd_ctl_attach(struct xs_handle *xs, const struct vd_attach_opts *o, struct vd_err *err);

/*
 * After vd_ctl_attach: wait up to timeout_ms for the backend (vdiskd's
 * worker) to take the VBD. 0: it serves it (the image is open and locked);
 * -EIO with err = the backend's vdisk-error when it refused (an image in
 * use, a bad image...; the VBD stays, for `vdisk detach`); 1: no answer
 * in time (no vdiskd running?).
 */
int vd_ctl_attach_wait(struct xs_handle *xs, uint16_t domid, uint32_t vdev, unsigned int timeout_ms,
		       struct vd_err *err);

/*
 * Ask the backend to close (online=0, state=5), wait up to timeout_ms for
 * its state to reach 6 (Closed) or its dir to vanish, then remove both
 * dirs. No wait when the backend state is absent, 1 (Initialising: no
 * backend ever took it) or already 6. On timeout: -ETIMEDOUT and nothing
 * removed, unless force, which removes them anyway (and returns 0).
 * -ENOENT if the VBD does not exist; a frontend dir without its backend
 * dir is just removed.
 */
int vd_ctl_detach(struct xs_handle *xs, uint16_t domid, uint32_t vdev, unsigned int timeout_ms,
		  bool force, struct vd_err *err);

/* Print the VBDs under backend/vbd3: a table DOMID VDEV STATE PARAMS, or JSON. */
int vd_ctl_list(struct xs_handle *xs, FILE *out, bool json, struct vd_err *err);

/*
 * Run fn(xs, t, arg) in a transaction, retrying on EAGAIN (bounded). fn
 * returns 0 to commit, or -errno to abort and fail with that error.
 */
typedef int (*vd_ctl_txn_fn)(struct xs_handle *xs, xs_transaction_t t, void *arg,
			     struct vd_err *err);
int vd_ctl_transaction(struct xs_handle *xs, vd_ctl_txn_fn fn, void *arg, struct vd_err *err);

/* True if path exists (distinguishes ENOENT from other errors: -errno). */
int vd_ctl_xs_exists(struct xs_handle *xs, xs_transaction_t t, const char *path);

/*
 * Write be_path/vdisk-error = why and be_path/state = 5 (Closing), only if
 * be_path still exists (never recreates a removed dir). 0, or -ENOENT if
 * the dir is gone.
 */
int vd_ctl_report_error(struct xs_handle *xs, const char *be_path, const char *why);

/*
 * Write be_path/state = 6 (Closed), only if be_path still exists: a VBD that
 * nobody serves (refused, or its worker crashed) and that the toolstack
 * took offline (online=0), so that `vdisk detach` completes.
 */
int vd_ctl_mark_closed(struct xs_handle *xs, const char *be_path);

/* ---- the per-VBD worker (worker.c, vbd.c) ---- */

struct vd_worker_opts {
	const char *be_path; /* backend dir of the VBD */
	uint16_t domid;      /* from the path (validated) */
	uint32_t devid;
	const char *transport; /* "sim" or "xen" */
	/* vdiskd --backing-dir: allowed for every VBD, besides its backing-dirs key */
	const char *const *backing_dirs;
	size_t n_backing_dirs;
};

/*
 * Serve one VBD until it is finished or SIGTERM/SIGINT arrives. Opens its
 * own xenstore connection. Returns the process exit status: 0 when done,
 * including a clean refusal (image cannot be opened: the reason is in
 * be_path/vdisk-error and state is 5); nonzero only for internal failures.
 * Blocks SIGTERM/SIGINT in the calling thread and takes them by signalfd.
 */
int vd_worker_run(const struct vd_worker_opts *o);

/* ---- the daemon (daemon.c) ---- */

struct vd_daemon_opts {
	const char *transport;           /* "sim" or "xen"; NULL: "xen" */
	bool foreground;                 /* false: detach from the terminal */
	unsigned int kill_timeout_ms;    /* SIGTERM -> SIGKILL grace at shutdown; 0: 5000 */
	const char *const *backing_dirs; /* --backing-dir, for every worker */
	size_t n_backing_dirs;
};

/*
 * Run vdiskd until SIGTERM/SIGINT. Returns the exit status (0 after a
 * clean shutdown, 1 if it could not start).
 */
int vd_daemon_run(const struct vd_daemon_opts *o);

#endif
