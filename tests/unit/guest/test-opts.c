/* simguest's option parsing: defaults, values, and refusals. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "sim/guest/guest-int.h"

static int parse(struct vd_sg_opts *o, const char *const *args)
{
	char *argv[32];
	int argc = 0;
	struct vd_err err = { 0 };

	argv[argc++] = (char *)"simguest";
	for (; *args != NULL; args++) {
		argv[argc++] = (char *)*args;
	}
	argv[argc] = NULL;
	return vd_sg_opts_parse(o, argc, argv, &err);
}

static void test_defaults(void **state)
{
	const char *args[] = { NULL };
	struct vd_sg_opts o;

	assert_int_equal(parse(&o, args), 0);
	assert_int_equal(o.vdev, 51712);
	assert_int_equal(o.wait_s, 30);
	assert_int_equal(o.queues, 1);
	assert_int_equal(o.bs, 4096);
	assert_int_equal(o.rw, VD_RW_RANDRW);
	assert_true(o.ios > 0);
	assert_true(o.verify_initial);
	assert_null(o.hostile);
}

static void test_values(void **state)
{
	const char *args[] = { "--dir",
			       "/tmp/x",
			       "--domid",
			       "5",
			       "--vdev",
			       "51728",
			       "--queues",
			       "16",
			       "--ring-order",
			       "4",
			       "--no-indirect",
			       "--rw",
			       "randwrite",
			       "--rwmix",
			       "70",
			       "--bs",
			       "64k",
			       "--iodepth",
			       "32",
			       "--runtime",
			       "3",
			       "--flush-every",
			       "10",
			       "--discard-every",
			       "20",
			       "--seed",
			       "99",
			       "--json",
			       "--hostile",
			       "list",
			       NULL };
	struct vd_sg_opts o;

	assert_int_equal(parse(&o, args), 0);
	assert_string_equal(o.dir, "/tmp/x");
	assert_int_equal(o.domid, 5);
	assert_int_equal(o.vdev, 51728);
	assert_int_equal(o.queues, 16);
	assert_int_equal(o.ring_order, 4);
	assert_true(o.no_indirect);
	assert_int_equal(o.rw, VD_RW_RANDWRITE);
	assert_int_equal(o.rwmix, 70);
	assert_int_equal(o.bs, 65536);
	assert_int_equal(o.iodepth, 32);
	assert_int_equal(o.runtime_s, 3);
	assert_int_equal(o.ios, 0);
	assert_int_equal(o.flush_every, 10);
	assert_int_equal(o.discard_every, 20);
	assert_int_equal(o.seed, 99);
	assert_true(o.json);
	assert_string_equal(o.hostile, "list");
}

static void test_refusals(void **state)
{
	static const char *const bad[][3] = {
		{ "--queues", "0", NULL },     { "--queues", "17", NULL },
		{ "--ring-order", "5", NULL }, { "--bs", "1000", NULL },
		{ "--bs", "0", NULL },         { "--bs", "4x", NULL },
		{ "--bs", "64m", NULL },       { "--rw", "sideways", NULL },
		{ "--rwmix", "101", NULL },    { "--iodepth", "-1", NULL },
		{ "--iodepth", "0", NULL },    { "--seed", "", NULL },
		{ "--domid", "99999", NULL },  { "--nope", NULL, NULL },
		{ "stray", NULL, NULL },       { "--ios", "12abc", NULL },
	};
	const char *both[] = { "--runtime", "1", "--ios", "5", NULL };
	struct vd_sg_opts o;

	for (unsigned int i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		assert_int_equal(parse(&o, bad[i]), -EINVAL);
	}
	assert_int_equal(parse(&o, both), -EINVAL);
}

static void test_sizes(void **state)
{
	uint64_t v;

	assert_int_equal(vd_sg_parse_size("512", &v), 0);
	assert_int_equal(v, 512);
	assert_int_equal(vd_sg_parse_size("4k", &v), 0);
	assert_int_equal(v, 4096);
	assert_int_equal(vd_sg_parse_size("1M", &v), 0);
	assert_int_equal(v, 1 << 20);
	assert_int_equal(vd_sg_parse_size("2g", &v), 0);
	assert_int_equal(v, 2ull << 30);
	assert_int_equal(vd_sg_parse_size("4kk", &v), -EINVAL);
	assert_int_equal(vd_sg_parse_size("k", &v), -EINVAL);
	assert_int_equal(vd_sg_parse_size("-4", &v), -EINVAL);
	assert_int_equal(vd_sg_parse_size("99999999999999999999", &v), -ERANGE);
	assert_int_equal(vd_sg_parse_size("17179869184g", &v), -ERANGE);
	assert_int_equal(vd_sg_parse_uint("10", 9, &v), -ERANGE);
	assert_int_equal(vd_sg_parse_uint("0x10", 100, &v), 0);
	assert_int_equal(v, 16);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_defaults),
		cmocka_unit_test(test_values),
		cmocka_unit_test(test_refusals),
		cmocka_unit_test(test_sizes),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
