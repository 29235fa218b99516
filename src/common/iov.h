/*
 * iovec helpers shared by the layers (no I/O here).
 */
#ifndef VD_COMMON_IOV_H
#define VD_COMMON_IOV_H

#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/uio.h>

/*
 * True if iov[0..iovcnt) is a usable vector for a transfer of len_bytes:
 * non-NULL, 1..IOV_MAX elements, lengths summing to exactly len_bytes
 * without overflow. Both the image core and the io core check every
 * request with it, as a last line of defence behind the callers' own checks.
 */
static inline bool vd_iov_covers(const struct iovec *iov, int iovcnt, uint64_t len_bytes)
{
	uint64_t sum = 0;
	int i;

	if (iov == NULL || iovcnt <= 0 || iovcnt > IOV_MAX) {
		return false;
	}
	for (i = 0; i < iovcnt; i++) {
		if (iov[i].iov_len > UINT64_MAX - sum) {
			return false;
		}
		sum += iov[i].iov_len;
	}
	return sum == len_bytes;
}

#endif
