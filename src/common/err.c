#include "common/err.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

int vd_err_set(struct vd_err *err, int errnum, const char *fmt, ...)
{
	if (errnum < 0) {
		errnum = -errnum;
	}
	if (err != NULL && err->errnum == 0) {
		va_list ap;
		char tmp[sizeof(err->msg)];

		va_start(ap, fmt);
		(void)vsnprintf(tmp, sizeof(tmp), fmt, ap);
		va_end(ap);
		err->errnum = errnum;
		snprintf(err->msg, sizeof(err->msg), "%s: %s", tmp, strerror(errnum));
	}
	return -errnum;
}

const char *vd_err_msg(const struct vd_err *err)
{
	return err->errnum ? err->msg : "no error";
}
