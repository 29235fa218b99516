/*
 * image-driver: the vtable every format driver implements (raw, vhd, qcow2).
 * Only src/image/ includes this.
 */
#ifndef VD_IMAGE_DRIVER_H
#define VD_IMAGE_DRIVER_H

#include "image/image.h"

struct vd_image {
	const struct vd_image_driver *driver;
	char *path;
	struct vd_image_opts opts;
	bool readonly;
	bool corrupt;              /* set once metadata is found bad: writes fail */
	bool force_share;          /* lock as a reader sharing everything (qemu -U) */
	bool format_probed;        /* the format was guessed (no -f) */
	struct vd_image *backing;  /* opened (and closed) by the driver, or NULL */
	char *backing_root;        /* the top image's resolved directory (opts.backing.root_dir) */
	struct vd_image_info info; /* from get_info at open; the core's submit checks use it */
	/* driver state follows (image_state_size bytes) */
	_Alignas(16) unsigned char state[];
};

struct vd_image_queue {
	struct vd_image *img;
	struct vd_ioctx *ioctx;
	void *driver_state; /* from queue_init */
};

struct vd_image_driver {
	const char *name;        /* "raw", "vhd", "qcow2" */
	size_t image_state_size; /* core allocates img->state */
	size_t io_ctx_size;      /* per-request scratch at io->driver_ctx */
	/* Score 0..100 for the first len bytes of the file (raw = 1). */
	int (*probe)(const void *hdr, size_t len);
	/*
	 * Optional, for formats found by a trailer (fixed VHD): score 0..100
	 * for the last len bytes of the file (the file ends at tail + len).
	 * Any score > 0 means "this file ends like one of mine": the core
	 * refuses to resize such a file whose format was guessed as raw.
	 */
	int (*probe_tail)(const void *tail, size_t len);
	/* Control thread. Opens backing files through vd_file_open(). */
	int (*open)(struct vd_image *img, const struct vd_image_opts *o, struct vd_err *err);
	void (*close)(struct vd_image *img);
	/* On the queue thread; may leave *state NULL. Optional. */
	int (*queue_init)(struct vd_image *img, struct vd_image_queue *iq);
	void (*queue_fini)(struct vd_image *img, struct vd_image_queue *iq);
	/*
	 * Queue thread. Completes exactly once through vd_image_io_done(),
	 * possibly before returning only via the ioctx deferral (never a
	 * direct callback from inside submit). Buffers may be guest memory.
	 */
	void (*submit)(struct vd_image *img, struct vd_image_queue *iq, struct vd_io *io);
	int (*get_info)(struct vd_image *img, struct vd_image_info *info);
	/* Optional. Sizes are validated by the core; o->flags: VD_IMAGE_CREATE_*. */
	int (*create)(const char *path, const struct vd_image_create_opts *o, struct vd_err *err);
	/*
	 * Optional, control thread, synchronous. Status of THIS layer only:
	 * ALLOCATED (+ DATA and/or ZERO) if this layer decides the range, else
	 * flags 0 (falls through to img->backing; the core recurses and fills
	 * depth). Absent: the whole image is DATA|ALLOCATED.
	 */
	int (*block_status)(struct vd_image *img, uint64_t offset_bytes, uint64_t max_bytes,
			    struct vd_block_status *out);
	/* Optional, control thread, image not being served. */
	int (*check)(struct vd_image *img, bool repair, struct vd_check_result *res,
		     struct vd_err *err);
	/* Optional, control thread, image not being served. */
	int (*resize)(struct vd_image *img, uint64_t size_bytes, struct vd_err *err);
};

/* For drivers: finish io (runs io->cb). Call only from a vd_ioctx callback. */
void vd_image_io_done(struct vd_io *io, int64_t result);
/* For drivers: finish io later (from vd_ioctx_poll), e.g. on an early error. */
void vd_image_io_fail(struct vd_image_queue *iq, struct vd_io *io, int64_t result);
/*
 * For drivers: the image's file opened with the image's options (backend,
 * cache, ro) and locked (io/lock.h): writer or reader per img->readonly.
 * Every file of an image is opened here, so every open is locked.
 */
int vd_image_open_file(struct vd_image *img, const char *path, struct vd_file **out,
		       struct vd_err *err);
/* The same with explicit file options (o->readonly must be img->readonly). */
int vd_image_open_file_opts(struct vd_image *img, const char *path, const struct vd_file_opts *o,
			    struct vd_file **out, struct vd_err *err);

/*
 * For drivers (backing.c): open the backing file of img under the policy
 * img->opts.backing. name: as recorded in the image (for messages); path:
 * where it points (a relative name made relative to the image's
 * directory); format: the recorded format, NULL if none (then a file that
 * probes as raw is refused). Opens read-only, with img's other options.
 * 0 with *out NULL when the policy says to serve the top alone; -EACCES
 * when the policy refuses it; err says why.
 */
int vd_image_open_backing(struct vd_image *img, const char *name, const char *path,
			  const char *format, struct vd_image **out, struct vd_err *err);
/* The resolved directory of image_path (malloc'd), or NULL. */
char *vd_image_backing_root(const char *image_path);

extern const struct vd_image_driver vd_raw_driver;
extern const struct vd_image_driver vd_vhd_driver;   /* src/image/vhd/ */
extern const struct vd_image_driver vd_qcow2_driver; /* src/image/qcow2/ */

#endif
