/* The latency histogram: bucket layout and percentiles. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "sim/guest/guest-int.h"

static void test_buckets_are_contiguous(void **state)
{
	for (unsigned int i = 0; i + 1 < VD_HIST_BUCKETS; i++) {
		assert_true(vd_hist_bucket_low(i) <= vd_hist_bucket_high(i));
		assert_int_equal(vd_hist_bucket_high(i) + 1, vd_hist_bucket_low(i + 1));
	}
}

static void test_index_roundtrip(void **state)
{
	static const uint64_t vals[] = { 0,   1,    31,   32,   33,     63,        64,
					 100, 1000, 4095, 4096, 123456, 1ull << 39 };

	for (unsigned int i = 0; i < sizeof(vals) / sizeof(vals[0]); i++) {
		unsigned int idx = vd_hist_index(vals[i]);

		assert_true(idx < VD_HIST_BUCKETS);
		assert_true(vd_hist_bucket_low(idx) <= vals[i]);
		assert_true(vals[i] <= vd_hist_bucket_high(idx));
		/* relative width at most 1/16 */
		assert_true((vd_hist_bucket_high(idx) - vd_hist_bucket_low(idx)) * 16 <=
			    vd_hist_bucket_low(idx) + 16);
	}
	/* huge values are clamped into the last bucket */
	assert_int_equal(vd_hist_index(UINT64_MAX), VD_HIST_BUCKETS - 1);
}

static void test_percentiles(void **state)
{
	struct vd_hist *h = calloc(1, sizeof(*h));
	struct vd_hist *h2 = calloc(1, sizeof(*h2));

	assert_int_equal(vd_hist_percentile(h, 50), 0);
	for (uint64_t v = 1; v <= 20; v++) {
		vd_hist_add(h, v);
	}
	assert_int_equal(h->count, 20);
	assert_int_equal(vd_hist_percentile(h, 50), 10);
	assert_int_equal(vd_hist_percentile(h, 99), 20);
	assert_int_equal(vd_hist_percentile(h, 0), 1);
	/* 99 fast, 1 slow: p99 is fast, p100 is slow (within a bucket) */
	for (int i = 0; i < 99; i++) {
		vd_hist_add(h2, 100);
	}
	vd_hist_add(h2, 100000);
	assert_in_range(vd_hist_percentile(h2, 99), 96, 103);
	assert_in_range(vd_hist_percentile(h2, 100), 96000, 104000);
	vd_hist_merge(h2, h);
	assert_int_equal(h2->count, 120);
	assert_int_equal(vd_hist_percentile(h2, 10), 12);
	free(h);
	free(h2);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_buckets_are_contiguous),
		cmocka_unit_test(test_index_roundtrip),
		cmocka_unit_test(test_percentiles),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
