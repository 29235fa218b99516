/*
 * attach / detach / list, VBD config reading and caps, against the
 * simulated xenstored (real wire protocol, real libxenstore, permissions
 * enforced per domain). Skips (77) when vd-xenstored is not built.
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <xen/io/xenbus.h>

#include "ctl/ctl-int.h"
#include "ctl-test.h"

#define BE5 VD_CTL_BACKEND_ROOT "/5"
#define FE5 "/local/domain/5/device/vbd"

static struct xsd g_xsd;
static struct xs_handle *g_xs;
static char g_image[128];

static int group_setup(void **state)
{
	static const char *const doms[] = { "5", "6", NULL };
	int r = xsd_start(&g_xsd, doms);
	FILE *f;

	if (r != 0) {
		return r == 77 ? 77 : -1;
	}
	g_xs = xs_open(0);
	if (g_xs == NULL) {
		return -1;
	}
	snprintf(g_image, sizeof(g_image), "%s/disk.img", g_xsd.dir);
	f = fopen(g_image, "w");
	if (f == NULL) {
		return -1;
	}
	fclose(f);
	return 0;
}

static int group_teardown(void **state)
{
	xs_close(g_xs);
	xsd_stop(&g_xsd);
	return 0;
}

static void attach(uint16_t domid, const char *vdev, const char *io, int want)
{
	struct vd_attach_opts o = {
		.domid = domid, .image = g_image, .io_backend = io, .check_image = true
	};
	struct vd_err err = { 0 };

	assert_int_equal(vd_ctl_parse_vdev(vdev, &o.vdev), 0);
	if (vdev[0] < '0' || vdev[0] > '9') {
		o.vdev_name = vdev;
	}
	assert_int_equal(vd_ctl_attach(g_xs, &o, &err), want);
	if (want < 0) {
		assert_int_equal(err.errnum, -want);
	}
}

static void expect(const char *path, const char *want)
{
	char *v = xsd_read(g_xs, path);

	if (want == NULL) {
		assert_null(v);
		return;
	}
	assert_non_null(v);
	assert_string_equal(v, want);
	free(v);
}

static void test_attach_no_domain(void **state)
{
	struct vd_attach_opts o = { .domid = 7, .vdev = 51712, .image = g_image };
	struct vd_err err = { 0 };

	assert_int_equal(vd_ctl_attach(g_xs, &o, &err), -ENOENT);
	assert_non_null(strstr(err.msg, "domain 7 does not exist"));
	expect(VD_CTL_BACKEND_ROOT "/7", NULL);
	expect("/local/domain/7", NULL);
}

static void test_attach_keys_and_perms(void **state)
{
	struct xs_permissions *p;
	struct xs_handle *guest;
	unsigned int n = 0;

	attach(5, "xvda", NULL, 0);
	expect(BE5 "/51712/frontend", FE5 "/51712");
	expect(BE5 "/51712/frontend-id", "5");
	expect(BE5 "/51712/online", "1");
	expect(BE5 "/51712/state", "1");
	expect(BE5 "/51712/params", g_image);
	expect(BE5 "/51712/mode", "w");
	expect(BE5 "/51712/type", "raw");
	expect(BE5 "/51712/dev", "xvda");
	expect(BE5 "/51712/device-type", "disk");
	expect(BE5 "/51712/discard-enable", "1");
	expect(BE5 "/51712/format", "raw");
	expect(BE5 "/51712/io-backend", "uring");
	expect(BE5 "/51712/size", NULL);
	expect(BE5 "/51712/polling-duration", NULL); /* the daemon's defaults */
	expect(BE5 "/51712/zero-copy", NULL);
	expect(FE5 "/51712/backend", BE5 "/51712");
	expect(FE5 "/51712/backend-id", "0");
	expect(FE5 "/51712/state", "1");
	expect(FE5 "/51712/virtual-device", "51712");
	expect(FE5 "/51712/device-type", "disk");

	p = xs_get_permissions(g_xs, XBT_NULL, BE5 "/51712", &n);
	assert_non_null(p);
	assert_int_equal(n, 2);
	assert_int_equal(p[0].id, 0);
	assert_int_equal(p[0].perms, XS_PERM_NONE);
	assert_int_equal(p[1].id, 5);
	assert_int_equal(p[1].perms, XS_PERM_READ);
	free(p);
	p = xs_get_permissions(g_xs, XBT_NULL, FE5 "/51712", &n);
	assert_non_null(p);
	assert_int_equal(n, 2);
	assert_int_equal(p[0].id, 5);
	assert_int_equal(p[1].id, 0);
	assert_int_equal(p[1].perms, XS_PERM_READ);
	free(p);

	/* As the guest: reads the backend, may not write it; owns its frontend. */
	guest = xsd_open_guest(&g_xsd);
	assert_non_null(guest);
	char *v = xsd_read(guest, BE5 "/51712/params");
	assert_non_null(v);
	free(v);
	assert_false(xs_write(guest, XBT_NULL, BE5 "/51712/params", "x", 1));
	assert_true(xs_write(guest, XBT_NULL, FE5 "/51712/state", "1", 1));
	assert_true(xs_write(guest, XBT_NULL, FE5 "/51712/ring-ref", "8", 1));
	xs_close(guest);

	attach(5, "51712", NULL, -EEXIST);
	/* the guest cannot see another guest's backend dir */
}

static void test_attach_options(void **state)
{
	struct vd_attach_opts o = { .domid = 5,
				    .image = "/nonexistent/x.img",
				    .check_image = true };
	struct vd_err err = { 0 };

	o.vdev = 51728;
	assert_int_equal(vd_ctl_attach(g_xs, &o, &err), -ENOENT);
	assert_non_null(strstr(err.msg, "/nonexistent/x.img"));
	expect(BE5 "/51728", NULL);

	memset(&err, 0, sizeof(err));
	o.io_backend = "floppy";
	assert_int_equal(vd_ctl_attach(g_xs, &o, &err), -EINVAL);

	/* null/mem: no image file needed */
	memset(&err, 0, sizeof(err));
	o.io_backend = "null";
	o.have_size = true;
	o.size_bytes = 1ull << 30;
	o.readonly = true;
	o.max_queues = 2;
	o.cache = "writeback";
	o.l2_cache_bytes = 4u << 20;
	o.l2_cache_entry_bytes = 4096;

	/* The queue tunables: out of range refused, nothing written. */
	o.have_polling_us = true;
	o.polling_us = VD_CTL_POLL_US_MAX + 1;
	memset(&err, 0, sizeof(err));
	assert_int_equal(vd_ctl_attach(g_xs, &o, &err), -EINVAL);
	assert_non_null(strstr(err.msg, "polling-duration"));
	expect(BE5 "/51728", NULL);
	o.polling_us = 0;
	o.have_poll_idle_pct = true;
	o.poll_idle_pct = 101;
	memset(&err, 0, sizeof(err));
	assert_int_equal(vd_ctl_attach(g_xs, &o, &err), -EINVAL);
	assert_non_null(strstr(err.msg, "polling-idle-threshold"));
	expect(BE5 "/51728", NULL);
	o.poll_idle_pct = 35;
	o.have_zero_copy = true;
	o.zero_copy = false;
	o.have_io_fixed = true;
	o.io_fixed = true;
	/* backing directories: each must exist (resolved), joined by ':' */
	{
		static const char *const bad[] = { "/nonexistent-vdisk-dir" };
		static const char *const dirs[] = { "/", "/tmp/../etc" };

		o.backing_dirs = bad;
		o.n_backing_dirs = 1;
		memset(&err, 0, sizeof(err));
		assert_int_equal(vd_ctl_attach(g_xs, &o, &err), -ENOENT);
		assert_non_null(strstr(err.msg, "backing directory"));
		expect(BE5 "/51728", NULL);
		o.backing_dirs = dirs;
		o.n_backing_dirs = 2;
		o.no_backing = true;
	}
	memset(&err, 0, sizeof(err));
	assert_int_equal(vd_ctl_attach(g_xs, &o, &err), 0);
	expect(BE5 "/51728/backing-dirs", "/:/etc");
	expect(BE5 "/51728/no-backing", "1");
	expect(BE5 "/51728/polling-duration", "0");
	expect(BE5 "/51728/polling-idle-threshold", "35");
	expect(BE5 "/51728/zero-copy", "0");
	expect(BE5 "/51728/io-fixed", "1");
	expect(BE5 "/51728/l2-cache-size", "4194304");
	expect(BE5 "/51728/l2-cache-entry-size", "4096");
	expect(BE5 "/51728/size", "1073741824");
	expect(BE5 "/51728/mode", "r");
	expect(BE5 "/51728/io-backend", "null");
	expect(BE5 "/51728/max-queues", "2");
	expect(BE5 "/51728/cache", "writeback");
	expect(BE5 "/51728/dev", "51728");
}

static char *list_to_string(bool json)
{
	struct vd_err err = { 0 };
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);

	assert_non_null(f);
	assert_int_equal(vd_ctl_list(g_xs, f, json, &err), 0);
	fclose(f);
	return buf;
}

static void test_list(void **state)
{
	char *s;

	/* garbage names must be skipped, not crash the listing */
	assert_true(xs_write(g_xs, XBT_NULL, VD_CTL_BACKEND_ROOT "/junk/1/state", "4", 1));
	assert_true(xs_write(g_xs, XBT_NULL, BE5 "/0x10/state", "4", 1));
	s = list_to_string(false);
	assert_non_null(strstr(s, "DOMID"));
	assert_non_null(strstr(s, "5      51712"));
	assert_non_null(strstr(s, "5      51728"));
	assert_non_null(strstr(s, "1:Initialising"));
	assert_null(strstr(s, "junk"));
	assert_null(strstr(s, "0x10"));
	/* sorted by vdev */
	assert_true(strstr(s, "51712") < strstr(s, "51728"));
	free(s);
	s = list_to_string(true);
	assert_non_null(strstr(s, "\"domid\": 5, \"vdev\": 51712, \"state\": 1"));
	assert_non_null(strstr(s, "\"params\": \"/tmp/vd-ctl-test-"));
	assert_int_equal(s[0], '[');
	free(s);
	assert_true(xs_rm(g_xs, XBT_NULL, VD_CTL_BACKEND_ROOT "/junk"));
	assert_true(xs_rm(g_xs, XBT_NULL, BE5 "/0x10"));
}

static void test_detach_never_served(void **state)
{
	struct vd_err err = { 0 };

	/* state 1: no backend took it, removal is immediate */
	assert_int_equal(vd_ctl_detach(g_xs, 5, 51728, 10000, false, &err), 0);
	expect(BE5 "/51728", NULL);
	expect(FE5 "/51728", NULL);
	expect(BE5 "/51712/params", g_image); /* the other VBD is untouched */
	assert_int_equal(vd_ctl_detach(g_xs, 5, 51728, 100, false, &err), -ENOENT);
}

static void test_detach_timeout_and_force(void **state)
{
	struct vd_err err = { 0 };

	assert_true(xs_write(g_xs, XBT_NULL, BE5 "/51712/state", "4", 1));
	assert_int_equal(vd_ctl_detach(g_xs, 5, 51712, 200, false, &err), -ETIMEDOUT);
	expect(BE5 "/51712/online", "0");
	expect(BE5 "/51712/state", "5");
	expect(FE5 "/51712/state", "1");
	memset(&err, 0, sizeof(err));
	assert_int_equal(vd_ctl_detach(g_xs, 5, 51712, 100, true, &err), 0);
	expect(BE5 "/51712", NULL);
	expect(FE5 "/51712", NULL);
	/* the last VBD of the domain: its backend/vbd3/5 dir is tidied up */
	expect(BE5, NULL);
}

/* Plays a backend: when state becomes 5 (Closing), it answers 6 (Closed). */
static void *fake_backend(void *arg)
{
	const char *state_path = arg;
	struct xs_handle *xs = xs_open(0);

	if (xs == NULL) {
		return NULL;
	}
	if (xsd_wait(xs, state_path, "5", 5000)) {
		xs_write(xs, XBT_NULL, state_path, "6", 1);
	}
	xs_close(xs);
	return NULL;
}

static void test_detach_waits_for_closed(void **state)
{
	struct vd_err err = { 0 };
	pthread_t th;

	attach(6, "xvdb", NULL, 0);
	assert_true(xs_write(g_xs, XBT_NULL, VD_CTL_BACKEND_ROOT "/6/51728/state", "4", 1));
	assert_int_equal(pthread_create(&th, NULL, fake_backend,
					(void *)(VD_CTL_BACKEND_ROOT "/6/51728/state")),
			 0);
	assert_int_equal(vd_ctl_detach(g_xs, 6, 51728, 5000, false, &err), 0);
	pthread_join(th, NULL);
	expect(VD_CTL_BACKEND_ROOT "/6/51728", NULL);
	expect("/local/domain/6/device/vbd/51728", NULL);
}

static void test_report_error(void **state)
{
	const char *be = VD_CTL_BACKEND_ROOT "/6/1";

	/* never recreates a dir that is gone */
	assert_int_equal(vd_ctl_report_error(g_xs, be, "boom"), -ENOENT);
	expect(be, NULL);
	assert_int_equal(vd_ctl_mark_closed(g_xs, be), -ENOENT);
	expect(be, NULL);
	assert_true(xs_write(g_xs, XBT_NULL, VD_CTL_BACKEND_ROOT "/6/1/state", "4", 1));
	assert_int_equal(vd_ctl_report_error(g_xs, be, "worker crashed: signal 11"), 0);
	expect(VD_CTL_BACKEND_ROOT "/6/1/vdisk-error", "worker crashed: signal 11");
	expect(VD_CTL_BACKEND_ROOT "/6/1/state", "5");
	assert_int_equal(vd_ctl_mark_closed(g_xs, be), 0);
	expect(VD_CTL_BACKEND_ROOT "/6/1/state", "6");
	assert_true(xs_rm(g_xs, XBT_NULL, VD_CTL_BACKEND_ROOT "/6"));
}

static void put(const char *key, const char *val)
{
	char path[256];

	snprintf(path, sizeof(path), "%s/6/2/%s", VD_CTL_BACKEND_ROOT, key);
	if (val == NULL) {
		xs_rm(g_xs, XBT_NULL, path);
	} else {
		assert_true(xs_write(g_xs, XBT_NULL, path, val, (unsigned int)strlen(val)));
	}
}

static int conf(struct vd_vbd_conf *c)
{
	struct vd_err err = { 0 };
	int r = vd_vbd_conf_read(g_xs, VD_CTL_BACKEND_ROOT "/6/2", 6, c, &err);

	if (r < 0) {
		assert_int_not_equal(err.errnum, 0);
	}
	return r;
}

static void test_conf_read(void **state)
{
	struct vd_vbd_conf c;

	put("frontend-id", "6");
	put("params", "/img");
	assert_int_equal(conf(&c), 0);
	assert_string_equal(c.params, "/img");
	assert_null(c.format);
	assert_null(c.io_backend);
	assert_false(c.readonly);
	assert_int_equal(c.max_queues, VD_CTL_DEFAULT_QUEUES);
	assert_true(c.discard_enable);
	assert_int_equal(c.cache, VD_CACHE_DIRECT);
	assert_int_equal(c.l2_cache_bytes, 0);
	assert_int_equal(c.l2_cache_entry_bytes, 0);
	vd_vbd_conf_fini(&c);

	put("mode", "r");
	put("format", "raw");
	put("io-backend", "mem");
	put("size", "1048576");
	put("cache", "writeback");
	put("max-queues", "16");
	put("discard-enable", "0");
	put("l2-cache-size", "33554432");
	put("l2-cache-entry-size", "8192");
	assert_int_equal(conf(&c), 0);
	assert_int_equal(c.l2_cache_bytes, 33554432);
	assert_int_equal(c.l2_cache_entry_bytes, 8192);
	assert_true(c.readonly);
	assert_string_equal(c.format, "raw");
	assert_string_equal(c.io_backend, "mem");
	assert_int_equal(c.size_bytes, 1048576);
	assert_int_equal(c.cache, VD_CACHE_WRITEBACK);
	assert_int_equal(c.max_queues, 16);
	assert_false(c.discard_enable);
	vd_vbd_conf_fini(&c);

	/* each malformed value is refused */
	put("max-queues", "17");
	assert_int_equal(conf(&c), -EINVAL);
	put("max-queues", "0");
	assert_int_equal(conf(&c), -EINVAL);
	put("max-queues", "4");
	put("mode", "rwx");
	assert_int_equal(conf(&c), -EINVAL);
	put("mode", "w");
	put("size", "-1");
	assert_int_equal(conf(&c), -EINVAL);
	put("size", "99999999999999999999999");
	assert_int_equal(conf(&c), -EINVAL);
	put("size", NULL);
	put("l2-cache-entry-size", "4294967296");
	assert_int_equal(conf(&c), -EINVAL);
	put("l2-cache-entry-size", "x");
	assert_int_equal(conf(&c), -EINVAL);
	put("l2-cache-entry-size", NULL);
	put("io-backend", "tape");
	assert_int_equal(conf(&c), -EINVAL);
	put("io-backend", "sync");
	put("cache", "none");
	assert_int_equal(conf(&c), -EINVAL);
	put("cache", NULL);
	put("frontend-id", "7");
	assert_int_equal(conf(&c), -EINVAL);
	put("frontend-id", NULL);
	assert_int_equal(conf(&c), -ENOENT);
	put("frontend-id", "6");
	put("params", "");
	assert_int_equal(conf(&c), -ENOENT);
	put("params", "/img");
	assert_int_equal(conf(&c), 0);
	vd_vbd_conf_fini(&c);
	assert_true(xs_rm(g_xs, XBT_NULL, VD_CTL_BACKEND_ROOT "/6"));
}

/* backing-dirs / no-backing, and the daemon's --backing-dir added to them. */
static void test_conf_backing(void **state)
{
	static const char *const daemon_dirs[] = { "/srv/base" };
	struct vd_image_opts o;
	struct vd_vbd_conf c;
	struct vd_err err = { 0 };

	put("frontend-id", "6");
	put("params", "/img");
	assert_int_equal(conf(&c), 0);
	assert_false(c.no_backing);
	assert_int_equal(c.n_backing_dirs, 0);
	vd_vbd_conf_fini(&c);

	put("backing-dirs", "/a:/b/c");
	put("no-backing", "1");
	assert_int_equal(conf(&c), 0);
	assert_true(c.no_backing);
	assert_int_equal(c.n_backing_dirs, 2);
	assert_string_equal(c.backing_dirs[0], "/a");
	assert_string_equal(c.backing_dirs[1], "/b/c");
	assert_int_equal(vd_vbd_conf_add_backing_dirs(&c, daemon_dirs, 1, &err), 0);
	vd_vbd_image_opts(&c, &o);
	assert_true(o.backing.none);
	assert_int_equal(o.backing.n_dirs, 3);
	assert_string_equal(o.backing.dirs[2], "/srv/base");
	assert_null(o.backing.root_dir);
	vd_vbd_conf_fini(&c);

	/* relative or empty directories, and junk in no-backing, are refused */
	put("backing-dirs", "/a:rel");
	assert_int_equal(conf(&c), -EINVAL);
	put("backing-dirs", "/a::/b");
	assert_int_equal(conf(&c), -EINVAL);
	put("backing-dirs", "/a");
	put("no-backing", "2");
	assert_int_equal(conf(&c), -EINVAL);
	put("no-backing", NULL);
	put("backing-dirs", NULL);
	assert_true(xs_rm(g_xs, XBT_NULL, VD_CTL_BACKEND_ROOT "/6"));
}

static void test_caps(void **state)
{
	struct vd_vbd_conf c = { .max_queues = 4, .discard_enable = true };
	struct vd_image_info info = { .size_bytes = 1 << 30,
				      .sector_bytes = 512,
				      .physical_sector_bytes = 4096,
				      .discard = true,
				      .discard_granularity_bytes = 4096 };
	struct vd_blkif_caps caps;
	struct vd_blkif_limits lim;

	vd_vbd_make_caps(&c, &info, &caps);
	assert_int_equal(caps.size_bytes, 1 << 30);
	assert_int_equal(caps.sector_bytes, 512);
	assert_int_equal(caps.physical_sector_bytes, 4096);
	assert_false(caps.readonly);
	assert_true(caps.flush);
	assert_true(caps.barrier);
	assert_true(caps.discard);
	assert_int_equal(caps.discard_granularity_bytes, 4096);
	assert_true(caps.persistent);
	assert_int_equal(caps.max_queues, 4);
	assert_int_equal(caps.max_ring_page_order, 4);
	assert_int_equal(caps.max_indirect_segs, 256);
	vd_vbd_make_limits(&caps, &lim);
	assert_int_equal(lim.size_bytes, 1 << 30);
	assert_int_equal(lim.max_indirect_segs, 256);
	assert_true(lim.discard);

	c.discard_enable = false;
	vd_vbd_make_caps(&c, &info, &caps);
	assert_false(caps.discard);
	c.discard_enable = true;
	c.readonly = true;
	vd_vbd_make_caps(&c, &info, &caps);
	assert_true(caps.readonly);
	assert_false(caps.discard);
	c.readonly = false;
	info.readonly = true;
	vd_vbd_make_caps(&c, &info, &caps);
	assert_true(caps.readonly);
	info.readonly = false;
	info.discard = false;
	info.sector_bytes = 4096;
	info.physical_sector_bytes = 512; /* nonsense from an image: never below logical */
	c.max_queues = 99;
	vd_vbd_make_caps(&c, &info, &caps);
	assert_false(caps.discard);
	assert_int_equal(caps.sector_bytes, 4096);
	assert_int_equal(caps.physical_sector_bytes, 4096);
	assert_int_equal(caps.max_queues, 16);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_attach_no_domain),
		cmocka_unit_test(test_attach_keys_and_perms),
		cmocka_unit_test(test_attach_options),
		cmocka_unit_test(test_list),
		cmocka_unit_test(test_detach_never_served),
		cmocka_unit_test(test_detach_timeout_and_force),
		cmocka_unit_test(test_detach_waits_for_closed),
		cmocka_unit_test(test_report_error),
		cmocka_unit_test(test_conf_read),
		cmocka_unit_test(test_conf_backing),
		cmocka_unit_test(test_caps),
	};
	const char *bin = getenv("VD_XENSTORED");

	if (bin == NULL || access(bin, X_OK) != 0) {
		fprintf(stderr, "vd-xenstored not available: skipping\n");
		return 77;
	}
	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
