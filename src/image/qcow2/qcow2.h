/*
 * qcow2: what tools may ask of a qcow2 image beyond the image API
 * (internal snapshots). Control thread; img must be a qcow2 image
 * (-EINVAL otherwise). Strings are owned by the image.
 * To read a snapshot, open the image with vd_image_opts.snapshot set to its
 * id or name: the image is then read-only and shows that snapshot.
 */
#ifndef VD_QCOW2_H
#define VD_QCOW2_H

#include <stdint.h>
#include "image/image.h"

struct vd_qcow2_snapshot_info {
	const char *id;
	const char *name;
	uint64_t size_bytes; /* virtual size when it was taken */
	uint64_t vm_state_bytes;
	uint32_t date_sec;
};

int vd_qcow2_snapshot_count(struct vd_image *img);
int vd_qcow2_snapshot_get(struct vd_image *img, unsigned int i, struct vd_qcow2_snapshot_info *out);

#endif
