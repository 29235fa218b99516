/*
 * Latency histogram in microseconds, log-linear: values below 2*SUB have a
 * bucket each; above, each power of two is split into SUB linear buckets,
 * so a bucket is at most 1/SUB (6%) wide relative to its value.
 */
#include <math.h>
#include <string.h>

#include "sim/guest/guest-int.h"

#define HIST_MAX_VALUE ((1ull << VD_HIST_MAX_BITS) - 1)

unsigned int vd_hist_index(uint64_t v)
{
	unsigned int msb, shift;

	if (v > HIST_MAX_VALUE) {
		v = HIST_MAX_VALUE;
	}
	if (v < 2ull * VD_HIST_SUB) {
		return (unsigned int)v;
	}
	msb = 63u - (unsigned int)__builtin_clzll(v);
	shift = msb - VD_HIST_SUB_BITS;
	return shift * VD_HIST_SUB + (unsigned int)(v >> shift);
}

uint64_t vd_hist_bucket_low(unsigned int idx)
{
	unsigned int shift;

	if (idx < 2 * VD_HIST_SUB) {
		return idx;
	}
	shift = idx / VD_HIST_SUB - 1;
	return (uint64_t)(idx - shift * VD_HIST_SUB) << shift;
}

uint64_t vd_hist_bucket_high(unsigned int idx)
{
	if (idx < 2 * VD_HIST_SUB) {
		return idx;
	}
	return vd_hist_bucket_low(idx) + (1ull << (idx / VD_HIST_SUB - 1)) - 1;
}

void vd_hist_add(struct vd_hist *h, uint64_t us)
{
	h->bucket[vd_hist_index(us)]++;
	h->count++;
}

void vd_hist_merge(struct vd_hist *dst, const struct vd_hist *src)
{
	for (unsigned int i = 0; i < VD_HIST_BUCKETS; i++) {
		dst->bucket[i] += src->bucket[i];
	}
	dst->count += src->count;
}

uint64_t vd_hist_percentile(const struct vd_hist *h, double pct)
{
	uint64_t target, seen = 0;

	if (h->count == 0) {
		return 0;
	}
	if (pct < 0) {
		pct = 0;
	}
	if (pct > 100) {
		pct = 100;
	}
	target = (uint64_t)ceil(pct / 100.0 * (double)h->count);
	if (target == 0) {
		target = 1;
	}
	for (unsigned int i = 0; i < VD_HIST_BUCKETS; i++) {
		seen += h->bucket[i];
		if (seen >= target) {
			return (vd_hist_bucket_low(i) + vd_hist_bucket_high(i)) / 2;
		}
	}
	return HIST_MAX_VALUE;
}
