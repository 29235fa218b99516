/*
 * struct vd_err: a human-readable reason attached to a -errno, for control
 * plane calls (QEMU Error **errp, lite). The producer fills it; the consumer
 * reports it. Passing NULL is allowed everywhere.
 */
#ifndef VD_COMMON_ERR_H
#define VD_COMMON_ERR_H

#include "common/compiler.h"

struct vd_err {
	int errnum; /* positive errno, 0 when unset */
	char msg[256];
};

/* Sets err (if not NULL and not already set) and returns -errnum. */
int vd_err_set(struct vd_err *err, int errnum, const char *fmt, ...) VD_PRINTF(3, 4);
const char *vd_err_msg(const struct vd_err *err);

#endif
