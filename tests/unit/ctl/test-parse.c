/*
 * The strict parsers of src/ctl/parse.c: numbers, sizes, vdev names, the
 * names found under backend/vbd3, JSON escaping.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "ctl/ctl.h"

static void test_u64(void **state)
{
	uint64_t v = 7;

	assert_int_equal(vd_ctl_parse_u64("0", 10, &v), 0);
	assert_int_equal(v, 0);
	assert_int_equal(vd_ctl_parse_u64("18446744073709551615", UINT64_MAX, &v), 0);
	assert_true(v == UINT64_MAX);
	v = 7;
	assert_int_equal(vd_ctl_parse_u64("18446744073709551616", UINT64_MAX, &v), -ERANGE);
	assert_int_equal(vd_ctl_parse_u64("99999999999999999999999", UINT64_MAX, &v), -ERANGE);
	assert_int_equal(vd_ctl_parse_u64("11", 10, &v), -ERANGE);
	assert_int_equal(v, 7); /* untouched on error */
	assert_int_equal(vd_ctl_parse_u64("", 10, &v), -EINVAL);
	assert_int_equal(vd_ctl_parse_u64(NULL, 10, &v), -EINVAL);
	assert_int_equal(vd_ctl_parse_u64(" 1", 10, &v), -EINVAL);
	assert_int_equal(vd_ctl_parse_u64("1 ", 10, &v), -EINVAL);
	assert_int_equal(vd_ctl_parse_u64("+1", 10, &v), -EINVAL);
	assert_int_equal(vd_ctl_parse_u64("-1", 10, &v), -EINVAL);
	assert_int_equal(vd_ctl_parse_u64("0x1", 10, &v), -EINVAL);
	assert_int_equal(vd_ctl_parse_u64("007", 10, &v), 0);
	assert_int_equal(v, 7);
	assert_int_equal(vd_ctl_parse_canon_u64("007", 10, &v), -EINVAL);
	assert_int_equal(vd_ctl_parse_canon_u64("0", 10, &v), 0);
	assert_int_equal(v, 0);
}

static void test_size(void **state)
{
	uint64_t v = 0;

	assert_int_equal(vd_ctl_parse_size("4096", &v), 0);
	assert_int_equal(v, 4096);
	assert_int_equal(vd_ctl_parse_size("4K", &v), 0);
	assert_int_equal(v, 4096);
	assert_int_equal(vd_ctl_parse_size("4k", &v), 0);
	assert_int_equal(v, 4096);
	assert_int_equal(vd_ctl_parse_size("64M", &v), 0);
	assert_int_equal(v, 64ull << 20);
	assert_int_equal(vd_ctl_parse_size("2G", &v), 0);
	assert_true(v == 2ull << 30);
	assert_int_equal(vd_ctl_parse_size("3T", &v), 0);
	assert_true(v == 3ull << 40);
	assert_int_equal(vd_ctl_parse_size("1MiB", &v), 0);
	assert_int_equal(v, 1 << 20);
	assert_int_equal(vd_ctl_parse_size("1MB", &v), 0);
	assert_int_equal(v, 1 << 20);
	/* 2^24 T = 2^64: overflow, and one below fits */
	assert_int_equal(vd_ctl_parse_size("16777216T", &v), -ERANGE);
	assert_int_equal(vd_ctl_parse_size("16777215T", &v), 0);
	assert_true(v == 16777215ull << 40);
	assert_int_equal(vd_ctl_parse_size("18446744073709551616", &v), -ERANGE);
	assert_int_equal(vd_ctl_parse_size("123456789012345678901234567890", &v), -ERANGE);
	assert_int_equal(vd_ctl_parse_size("", &v), -EINVAL);
	assert_int_equal(vd_ctl_parse_size("K", &v), -EINVAL);
	assert_int_equal(vd_ctl_parse_size("1X", &v), -EINVAL);
	assert_int_equal(vd_ctl_parse_size("1KK", &v), -EINVAL);
	assert_int_equal(vd_ctl_parse_size("1Kx", &v), -EINVAL);
	assert_int_equal(vd_ctl_parse_size("-1", &v), -EINVAL);
	assert_int_equal(vd_ctl_parse_size("1.5G", &v), -EINVAL);
	assert_int_equal(vd_ctl_parse_size(" 1", &v), -EINVAL);
}

static void test_vdev(void **state)
{
	uint32_t v = 0;

	assert_int_equal(vd_ctl_parse_vdev("51712", &v), 0);
	assert_int_equal(v, 51712);
	assert_int_equal(vd_ctl_parse_vdev("xvda", &v), 0);
	assert_int_equal(v, 51712);
	assert_int_equal(vd_ctl_parse_vdev("xvdb", &v), 0);
	assert_int_equal(v, 51728);
	assert_int_equal(vd_ctl_parse_vdev("xvda1", &v), 0);
	assert_int_equal(v, 51713);
	assert_int_equal(vd_ctl_parse_vdev("xvdp15", &v), 0);
	assert_int_equal(v, (202u << 8) | (15u << 4) | 15u);
	/* beyond the compact encoding: extended format */
	assert_int_equal(vd_ctl_parse_vdev("xvdq", &v), 0);
	assert_int_equal(v, (1u << 28) | (16u << 8));
	assert_int_equal(vd_ctl_parse_vdev("xvda16", &v), 0);
	assert_int_equal(v, (1u << 28) | 16u);
	assert_int_equal(vd_ctl_parse_vdev("xvdaa", &v), 0);
	assert_int_equal(v, (1u << 28) | (26u << 8));
	assert_int_equal(vd_ctl_parse_vdev("hda", &v), 0);
	assert_int_equal(v, 3u << 8);
	assert_int_equal(vd_ctl_parse_vdev("hdb2", &v), 0);
	assert_int_equal(v, (3u << 8) | 64 | 2);
	assert_int_equal(vd_ctl_parse_vdev("hdc", &v), 0);
	assert_int_equal(v, 22u << 8);
	assert_int_equal(vd_ctl_parse_vdev("sdb", &v), 0);
	assert_int_equal(v, (8u << 8) | 16);

	v = 1;
	assert_int_equal(vd_ctl_parse_vdev("xvd", &v), -EINVAL);
	assert_int_equal(vd_ctl_parse_vdev("xvdA", &v), -EINVAL);
	assert_int_equal(vd_ctl_parse_vdev("xvda0", &v), -EINVAL);
	assert_int_equal(vd_ctl_parse_vdev("xvda01", &v), -EINVAL);
	assert_int_equal(vd_ctl_parse_vdev("xvda256", &v), -ERANGE);
	assert_int_equal(vd_ctl_parse_vdev("xvdzzzzz", &v), -ERANGE);
	assert_int_equal(vd_ctl_parse_vdev("hde", &v), -EINVAL);
	assert_int_equal(vd_ctl_parse_vdev("sdq", &v), -EINVAL);
	assert_int_equal(vd_ctl_parse_vdev("sda16", &v), -ERANGE);
	assert_int_equal(vd_ctl_parse_vdev("vda", &v), -EINVAL);
	assert_int_equal(vd_ctl_parse_vdev("", &v), -EINVAL);
	assert_int_equal(vd_ctl_parse_vdev("2147483649", &v), -ERANGE);
	assert_int_equal(vd_ctl_parse_vdev("51712x", &v), -EINVAL);
	assert_int_equal(v, 1);
}

static void test_domid(void **state)
{
	uint16_t d = 9;

	assert_int_equal(vd_ctl_parse_domid("5", &d), 0);
	assert_int_equal(d, 5);
	assert_int_equal(vd_ctl_parse_domid("65534", &d), 0);
	assert_int_equal(d, 65534);
	assert_int_equal(vd_ctl_parse_domid("0", &d), -ERANGE);
	assert_int_equal(vd_ctl_parse_domid("65535", &d), -ERANGE);
	assert_int_equal(vd_ctl_parse_domid("5a", &d), -EINVAL);
	assert_int_equal(d, 65534);
}

static void test_vbd_names(void **state)
{
	uint16_t domid = 0;
	uint32_t devid = 0;

	assert_int_equal(vd_ctl_parse_vbd_names("5", "51712", &domid, &devid), 0);
	assert_int_equal(domid, 5);
	assert_int_equal(devid, 51712);
	assert_int_equal(vd_ctl_parse_vbd_names("1", "0", &domid, &devid), 0);
	assert_int_equal(devid, 0);
	assert_int_equal(vd_ctl_parse_vbd_names("65534", "2147483648", &domid, &devid), 0);
	assert_int_equal(devid, 2147483648u);

	assert_int_equal(vd_ctl_parse_vbd_names("0", "51712", &domid, &devid), -ERANGE);
	assert_int_equal(vd_ctl_parse_vbd_names("65535", "51712", &domid, &devid), -ERANGE);
	assert_int_equal(vd_ctl_parse_vbd_names("05", "51712", &domid, &devid), -EINVAL);
	assert_int_equal(vd_ctl_parse_vbd_names("5", "051712", &domid, &devid), -EINVAL);
	assert_int_equal(vd_ctl_parse_vbd_names("5", "2147483649", &domid, &devid), -ERANGE);
	assert_int_equal(vd_ctl_parse_vbd_names("5", "xvda", &domid, &devid), -EINVAL);
	assert_int_equal(vd_ctl_parse_vbd_names("five", "1", &domid, &devid), -EINVAL);
	assert_int_equal(vd_ctl_parse_vbd_names("", "1", &domid, &devid), -EINVAL);
	assert_int_equal(vd_ctl_parse_vbd_names("5", "", &domid, &devid), -EINVAL);
	assert_int_equal(vd_ctl_parse_vbd_names("5", "1/2", &domid, &devid), -EINVAL);
	assert_int_equal(domid, 65534);
	assert_int_equal(devid, 2147483648u);
}

static void test_json_and_states(void **state)
{
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);

	assert_non_null(f);
	vd_ctl_json_string(f, "a\"b\\c\n\x01\xc3");
	fclose(f);
	assert_string_equal(buf, "\"a\\\"b\\\\c\\n\\u0001\\u00c3\"");
	free(buf);
	assert_string_equal(vd_ctl_state_name(4), "Connected");
	assert_string_equal(vd_ctl_state_name(6), "Closed");
	assert_string_equal(vd_ctl_state_name(99), "?");
	assert_string_equal(vd_ctl_state_name(-1), "?");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_u64),       cmocka_unit_test(test_size),
		cmocka_unit_test(test_vdev),      cmocka_unit_test(test_domid),
		cmocka_unit_test(test_vbd_names), cmocka_unit_test(test_json_and_states),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
