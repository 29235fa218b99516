/*
 * ctl internals shared between the files of src/ctl and its unit tests.
 */
#ifndef VD_CTL_INT_H
#define VD_CTL_INT_H

#include "ctl/ctl.h"
#include "blkif/xenbus.h"
#include "image/image.h"

/*
 * Read dir/key. Returns a malloc'd NUL-terminated string, or NULL with
 * errno set (ENOENT if absent, ENAMETOOLONG if the path does not fit,
 * E2BIG if the value is longer than max_len bytes).
 */
char *vd_ctl_xs_read(struct xs_handle *xs, xs_transaction_t t, const char *dir, const char *key,
		     size_t max_len);

/*
 * The run dir of vdiskd and its workers (stats and NBD sockets, the
 * daemon's lock): $VDISK_RUN_DIR, else /run/vdisk, or with the sim
 * transport $VDISK_SIM_DIR/run (/run/vdisk-sim/run). -ENAMETOOLONG.
 */
int vd_ctl_run_dir(const char *transport, char *buf, size_t len);

/* What the toolstack asked for, read from the backend dir and validated. */
struct vd_vbd_conf {
	char *params;                  /* image path (anything for null/mem) */
	char *format;                  /* NULL: probe */
	char *io_backend;              /* NULL: the image layer's default */
	bool readonly;                 /* mode=r */
	enum vd_cache_mode cache;      /* "cache": direct (default) or writeback */
	uint64_t size_bytes;           /* "size", 0 if absent */
	unsigned int max_queues;       /* "max-queues" 1..16, default VD_CTL_DEFAULT_QUEUES */
	bool discard_enable;           /* "discard-enable", default true */
	uint16_t frontend_id;          /* "frontend-id", must equal the path's domid */
	uint64_t l2_cache_bytes;       /* qcow2 "l2-cache-size", 0: the driver's default */
	uint64_t l2_cache_entry_bytes; /* qcow2 "l2-cache-entry-size", 0: default */
	/*
	 * The backing-file policy (image.h): "backing-dirs", absolute
	 * directories separated by ':', plus the daemon's --backing-dir
	 * (vd_vbd_conf_add_backing_dirs); "no-backing" 0|1.
	 */
	char **backing_dirs;
	size_t n_backing_dirs;
	bool no_backing;
};

/*
 * Read and validate the backend keys of be_path for the VBD of domid.
 * -EINVAL (malformed), -ENOENT (params or frontend-id missing) with err set.
 * On success release with vd_vbd_conf_fini().
 */
int vd_vbd_conf_read(struct xs_handle *xs, const char *be_path, uint16_t domid,
		     struct vd_vbd_conf *c, struct vd_err *err);
void vd_vbd_conf_fini(struct vd_vbd_conf *c);

/* Append copies of dirs[0..n) to c's allow-list (the daemon's --backing-dir). */
int vd_vbd_conf_add_backing_dirs(struct vd_vbd_conf *c, const char *const *dirs, size_t n,
				 struct vd_err *err);

/* Fill the image options for vd_image_open from c (borrows c's strings). */
void vd_vbd_image_opts(const struct vd_vbd_conf *c, struct vd_image_opts *o);

/* What we offer the frontend, from the conf and the opened image. */
void vd_vbd_make_caps(const struct vd_vbd_conf *c, const struct vd_image_info *info,
		      struct vd_blkif_caps *caps);

/* The per-ring limits a queue enforces, from the caps. */
void vd_vbd_make_limits(const struct vd_blkif_caps *caps, struct vd_blkif_limits *lim);

#endif
