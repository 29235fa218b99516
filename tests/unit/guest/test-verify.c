/* The verification model: what it accepts and what it must catch. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "sim/guest/guest-int.h"

static struct vd_model *mk(uint64_t size, uint32_t unit, bool verify_initial)
{
	struct vd_model *m = NULL;

	assert_int_equal(vd_model_create(size, unit, 42, verify_initial, &m), 0);
	return m;
}

static void test_create_bounds(void **state)
{
	struct vd_model *m = NULL;

	assert_int_equal(vd_model_create(1 << 20, 1024, 1, true, &m), -EINVAL);
	assert_int_equal(vd_model_create(0, 512, 1, true, &m), -EINVAL);
	/* 1 TiB in 512-byte units is far too big a model */
	assert_int_equal(vd_model_create(1ull << 40, 512, 1, true, &m), -E2BIG);
	/* 1 GiB works with either unit */
	m = mk(1ull << 30, 512, true);
	assert_int_equal(m->nr_units, 2u << 20);
	vd_model_destroy(m);
	m = mk(1ull << 30, 4096, true);
	assert_int_equal(m->nr_units, 256u << 10);
	vd_model_destroy(m);
	vd_model_destroy(NULL);
}

static void test_write_then_read(void **state)
{
	struct vd_model *m = mk(1 << 20, 4096, true);
	uint8_t buf[8192];

	vd_model_fill(m, buf, 8192, sizeof(buf), 7);
	vd_model_set(m, 8192, sizeof(buf), 7);
	assert_int_equal(vd_model_get(m, 8192), 7);
	assert_int_equal(vd_model_get(m, 12288), 7);
	assert_int_equal(vd_model_get(m, 4096), VD_GEN_NEVER);
	assert_int_equal(vd_model_verify(m, buf, 8192, sizeof(buf)), 0);
	/* the same data seen at another offset is misplaced */
	vd_model_set(m, 0, 8192, 7);
	assert_int_equal(vd_model_verify(m, buf, 0, sizeof(buf)), 16);
	vd_model_destroy(m);
}

static void test_detects_stale_and_torn(void **state)
{
	struct vd_model *m = mk(1 << 20, 512, true);
	uint8_t buf[4096];

	vd_model_fill(m, buf, 0, sizeof(buf), 5);
	vd_model_set(m, 0, sizeof(buf), 6); /* a newer write was acknowledged */
	assert_int_equal(vd_model_verify(m, buf, 0, sizeof(buf)), 8);
	vd_model_set(m, 0, sizeof(buf), 5);
	buf[1000] ^= 1; /* one flipped bit in the second sector */
	assert_int_equal(vd_model_verify(m, buf, 0, sizeof(buf)), 1);
	vd_model_destroy(m);
}

static void test_seed_matters(void **state)
{
	struct vd_model *m = mk(1 << 20, 512, true);
	uint8_t buf[512];

	vd_sector_fill(buf, 0, 9, 43); /* another run's seed */
	vd_model_set(m, 0, 512, 9);
	assert_int_equal(vd_model_verify(m, buf, 0, sizeof(buf)), 1);
	vd_model_destroy(m);
}

static void test_zero_discard_unknown(void **state)
{
	struct vd_model *strict = mk(1 << 20, 512, true);
	struct vd_model *lax = mk(1 << 20, 512, false);
	uint8_t zero[512] = { 0 }, junk[512];

	memset(junk, 0x5a, sizeof(junk));
	assert_true(vd_sector_matches(strict, zero, 0, VD_GEN_NEVER));
	assert_false(vd_sector_matches(strict, junk, 0, VD_GEN_NEVER));
	assert_true(vd_sector_matches(lax, junk, 0, VD_GEN_NEVER));
	/* discarded reads as zero even when the initial content is not checked */
	assert_true(vd_sector_matches(lax, zero, 0, VD_GEN_DISCARDED));
	assert_false(vd_sector_matches(lax, junk, 0, VD_GEN_DISCARDED));
	assert_true(vd_sector_matches(strict, junk, 0, VD_GEN_UNKNOWN));
	vd_model_destroy(strict);
	vd_model_destroy(lax);
}

static void test_header_layout(void **state)
{
	struct vd_model *m = mk(1 << 20, 512, true);
	struct vd_sector_hdr hdr;
	uint8_t buf[512];

	vd_sector_fill(buf, 0x1200, 77, 42);
	memcpy(&hdr, buf, sizeof(hdr));
	assert_int_equal(hdr.magic, VD_SECTOR_MAGIC);
	assert_int_equal(hdr.offset_bytes, 0x1200);
	assert_int_equal(hdr.gen, 77);
	assert_int_equal(hdr.seed, 42);
	vd_model_destroy(m);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_create_bounds),
		cmocka_unit_test(test_write_then_read),
		cmocka_unit_test(test_detects_stale_and_torn),
		cmocka_unit_test(test_seed_matters),
		cmocka_unit_test(test_zero_discard_unknown),
		cmocka_unit_test(test_header_layout),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
