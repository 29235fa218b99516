/*
 * The queue's stats helpers: latency histogram buckets and percentiles, and
 * the text form the worker's stats socket sends (format, then parse back).
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "queue/queue.h"

static void test_lat_buckets(void **state)
{
	(void)state;
	/* Every value lands in the bucket whose range holds it. */
	for (uint64_t us = 0; us < 5000000; us = us < 64 ? us + 1 : us * 9 / 8) {
		unsigned int b = vd_queue_lat_bucket(us);

		assert_true(b < VD_QUEUE_LAT_BUCKETS);
		assert_true(vd_queue_lat_bucket_low(b) <= us);
		if (b + 1 < VD_QUEUE_LAT_BUCKETS) {
			assert_true(us < vd_queue_lat_bucket_low(b + 1));
		}
	}
	/* Bounds grow strictly; buckets are at most 25% wide above 4 us. */
	for (unsigned int i = 1; i < VD_QUEUE_LAT_BUCKETS; i++) {
		uint64_t lo = vd_queue_lat_bucket_low(i - 1), hi = vd_queue_lat_bucket_low(i);

		assert_true(lo < hi);
		if (lo >= 4) {
			assert_true((hi - lo) * 4 <= lo);
		}
	}
	assert_int_equal(vd_queue_lat_bucket(UINT64_MAX), VD_QUEUE_LAT_BUCKETS - 1);
}

static void test_percentiles(void **state)
{
	uint64_t h[VD_QUEUE_LAT_BUCKETS] = { 0 };

	(void)state;
	assert_int_equal(vd_queue_lat_percentile(h, 50), 0);
	/* 90 requests at 10 us, 10 at 1000 us. */
	h[vd_queue_lat_bucket(10)] = 90;
	h[vd_queue_lat_bucket(1000)] = 10;
	assert_in_range(vd_queue_lat_percentile(h, 50), 10, 12);
	assert_in_range(vd_queue_lat_percentile(h, 90), 10, 12);
	assert_in_range(vd_queue_lat_percentile(h, 99), 896, 1024);
	assert_in_range(vd_queue_lat_percentile(h, 100), 896, 1024);
}

static void test_text_roundtrip(void **state)
{
	struct vd_queue_stats a, b;
	char buf[8192];
	char *line, *next;
	int n;

	(void)state;
	memset(&a, 0, sizeof(a));
	memset(&b, 0, sizeof(b));
	a.reqs = 123456789012ull;
	a.bytes_read = UINT64_MAX;
	a.polls_empty = 7;
	a.sleeps = 3;
	a.batches = 11;
	a.batch_reqs = 40;
	for (unsigned int i = 0; i < VD_QUEUE_BATCH_BUCKETS; i++) {
		a.batch_hist[i] = i * 3 + 1;
	}
	for (unsigned int i = 0; i < VD_QUEUE_LAT_BUCKETS; i++) {
		a.lat_hist[i] = (uint64_t)i * i;
	}
	n = vd_queue_stats_format(&a, 5, buf, sizeof(buf));
	assert_true(n > 0 && (size_t)n < sizeof(buf));
	assert_int_equal(strlen(buf), (size_t)n);
	assert_memory_equal(buf, "queue 5\n", 8);
	for (line = buf + 8; *line != '\0'; line = next) {
		next = strchr(line, '\n');
		assert_non_null(next);
		*next++ = '\0';
		assert_int_equal(vd_queue_stats_parse_line(&b, line), 0);
	}
	assert_memory_equal(&a, &b, sizeof(a));
	/* Too small a buffer fails cleanly instead of truncating silently. */
	assert_int_equal(vd_queue_stats_format(&a, 5, buf, 100), -ENOSPC);
	assert_int_equal(vd_queue_stats_format(&a, 5, buf, 0), -ENOSPC);
	/* Unknown names and malformed numbers are refused. */
	assert_int_equal(vd_queue_stats_parse_line(&b, "no_such_counter 1"), -EINVAL);
	assert_int_equal(vd_queue_stats_parse_line(&b, "reqs -1"), -EINVAL);
	assert_int_equal(vd_queue_stats_parse_line(&b, "reqs 1x"), -EINVAL);
	assert_int_equal(vd_queue_stats_parse_line(&b, "reqs 99999999999999999999999"), -EINVAL);
	assert_int_equal(vd_queue_stats_parse_line(&b, "lat_hist 1 2 3"), -EINVAL);
	assert_int_equal(vd_queue_stats_parse_line(&b, "reqs"), -EINVAL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_lat_buckets),
		cmocka_unit_test(test_percentiles),
		cmocka_unit_test(test_text_roundtrip),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
