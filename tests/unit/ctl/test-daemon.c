/*
 * vdiskd end to end against the simulated xenstored: garbage names are
 * ignored, a VBD that cannot be served is refused cleanly (vdisk-error,
 * state 5, then 6 after online=0, worker exits 0), a crashed worker is
 * reported and not respawned, detach completes, SIGTERM stops the daemon
 * with status 0. No hypervisor is needed: the images do not exist, so the
 * workers refuse before touching the transport.
 */
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "ctl/ctl.h"
#include "ctl-test.h"

#define ROOT VD_CTL_BACKEND_ROOT
#define BE   ROOT "/5/51712"
#define BE2  ROOT "/5/51728"

static struct xsd g_xsd;
static struct xs_handle *g_xs;
static pid_t g_daemon;
static char g_log[128];

static int group_setup(void **state)
{
	static const char *const doms[] = { "5", NULL };
	const char *bin = getenv("VD_VDISKD");

	if (xsd_start(&g_xsd, doms) != 0) {
		return -1;
	}
	g_xs = xs_open(0);
	if (g_xs == NULL) {
		return -1;
	}
	snprintf(g_log, sizeof(g_log), "%s/vdiskd.log", g_xsd.dir);
	g_daemon = fork();
	if (g_daemon < 0) {
		return -1;
	}
	if (g_daemon == 0) {
		int fd = open(g_log, O_WRONLY | O_CREAT | O_TRUNC, 0644);

		if (fd >= 0) {
			dup2(fd, STDERR_FILENO);
		}
		setenv("VDISK_SIM_DIR", g_xsd.dir, 1);
		execl(bin, bin, "--transport", "sim", "--foreground", "--log-level", "debug",
		      (char *)NULL);
		_exit(127);
	}
	/* The daemon creates backend/vbd3 when it is ready. */
	return xsd_wait(g_xs, ROOT, "", 5000) ? 0 : -1;
}

static void dump_log(void)
{
	char cmd[192];

	snprintf(cmd, sizeof(cmd), "cat '%s' >&2", g_log);
	if (system(cmd) != 0) {
		fprintf(stderr, "(no log)\n");
	}
}

static int group_teardown(void **state)
{
	if (g_daemon > 0) {
		kill(g_daemon, SIGKILL);
		waitpid(g_daemon, NULL, 0);
	}
	dump_log();
	xs_close(g_xs);
	xsd_stop(&g_xsd);
	return 0;
}

/* The daemon's children, 0 if none, -1 if /proc cannot tell. */
static int children(pid_t *first)
{
	char path[64], buf[256];
	FILE *f;
	int n = 0;

	snprintf(path, sizeof(path), "/proc/%d/task/%d/children", (int)g_daemon, (int)g_daemon);
	f = fopen(path, "r");
	if (f == NULL) {
		return -1;
	}
	if (fgets(buf, sizeof(buf), f) != NULL) {
		char *p = buf;

		while (*p != '\0' && *p != '\n') {
			long v = strtol(p, &p, 10);

			if (v > 0) {
				if (n == 0 && first != NULL) {
					*first = (pid_t)v;
				}
				n++;
			}
			while (*p == ' ') {
				p++;
			}
		}
	}
	fclose(f);
	return n;
}

static int wait_children(int want, unsigned int timeout_ms)
{
	int n = -1;

	for (unsigned int t = 0; t <= timeout_ms; t += 20) {
		n = children(NULL);
		if (n == want || n < 0) {
			return n;
		}
		msleep(20);
	}
	return n;
}

static void attach_missing(uint32_t vdev)
{
	struct vd_attach_opts o = { .domid = 5, .vdev = vdev, .image = "/nonexistent/disk.img" };
	struct vd_err err = { 0 };

	assert_int_equal(vd_ctl_attach(g_xs, &o, &err), 0);
}

static bool log_contains(const char *needle)
{
	char buf[16384];
	FILE *f = fopen(g_log, "r");
	size_t n;

	if (f == NULL) {
		return false;
	}
	n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = '\0';
	return strstr(buf, needle) != NULL;
}

static void assert_daemon_alive(void)
{
	assert_int_equal(waitpid(g_daemon, NULL, WNOHANG), 0);
}

static void test_garbage_is_ignored(void **state)
{
	assert_true(xs_write(g_xs, XBT_NULL, ROOT "/junk/1/online", "1", 1));
	assert_true(xs_write(g_xs, XBT_NULL, ROOT "/5/abc/online", "1", 1));
	assert_true(xs_write(g_xs, XBT_NULL, ROOT "/05/1/online", "1", 1));
	assert_true(xs_write(g_xs, XBT_NULL, ROOT "/70000/1/online", "1", 1));
	assert_true(xs_write(g_xs, XBT_NULL, ROOT "/5/99999999999/online", "1", 1));
	/* a valid name but not online: no worker */
	assert_true(xs_write(g_xs, XBT_NULL, ROOT "/5/3/online", "0", 1));
	/* a VBD served after the garbage appeared: the daemon went past it */
	attach_missing(51760);
	assert_true(xsd_wait(g_xs, ROOT "/5/51760/state", "5", 10000));
	assert_daemon_alive();
	assert_true(log_contains("ignoring " ROOT "/junk: not a domid"));
	assert_true(log_contains("ignoring " ROOT "/05: not a domid"));
	assert_true(log_contains("ignoring " ROOT "/70000: not a domid"));
	assert_true(log_contains("ignoring " ROOT "/5/abc: not a devid"));
	assert_true(log_contains("ignoring " ROOT "/5/99999999999: not a devid"));
	assert_false(log_contains("d5/3: worker"));
	assert_true(xs_rm(g_xs, XBT_NULL, ROOT "/junk"));
	assert_true(xs_rm(g_xs, XBT_NULL, ROOT "/05"));
	assert_true(xs_rm(g_xs, XBT_NULL, ROOT "/70000"));
	assert_true(xs_rm(g_xs, XBT_NULL, ROOT "/5/abc"));
	assert_true(xs_rm(g_xs, XBT_NULL, ROOT "/5/99999999999"));
	assert_true(xs_rm(g_xs, XBT_NULL, ROOT "/5/3"));
	/* removing a refused VBD's dir ends its worker (exit 0) */
	assert_true(xs_rm(g_xs, XBT_NULL, ROOT "/5/51760"));
	if (children(NULL) >= 0) {
		assert_int_equal(wait_children(0, 5000), 0);
	}
	assert_daemon_alive();
}

static void test_refusal_then_crash(void **state)
{
	pid_t worker = 0;
	struct vd_err err = { 0 };
	char *why;

	attach_missing(51712);
	assert_true(xsd_wait(g_xs, BE "/state", "5", 10000));
	why = xsd_read(g_xs, BE "/vdisk-error");
	assert_non_null(why);
	assert_true(strlen(why) > 0);
	free(why);

	/* the refused worker stays until the toolstack acts: kill it hard */
	if (children(&worker) < 0) {
		skip();
	}
	assert_int_equal(wait_children(1, 2000), 1);
	assert_int_equal(children(&worker), 1);
	assert_int_equal(kill(worker, SIGKILL), 0);
	assert_true(xsd_wait(g_xs, BE "/vdisk-error", "worker crashed: signal 9", 5000));
	/* not respawned */
	assert_int_equal(wait_children(0, 2000), 0);
	msleep(100);
	assert_int_equal(children(NULL), 0);

	/* nobody serves it: online=0 makes the daemon close it, detach completes */
	assert_true(xs_write(g_xs, XBT_NULL, BE "/online", "0", 1));
	assert_true(xsd_wait(g_xs, BE "/state", "6", 5000));
	assert_int_equal(vd_ctl_detach(g_xs, 5, 51712, 5000, false, &err), 0);
	assert_true(xsd_equals(g_xs, BE, NULL));
	assert_daemon_alive();
}

static void test_refusal_clean_exit(void **state)
{
	struct vd_err err = { 0 };
	char *why;

	attach_missing(51728);
	assert_true(xsd_wait(g_xs, BE2 "/state", "5", 10000));
	if (children(NULL) >= 0) {
		assert_int_equal(wait_children(1, 2000), 1);
	}
	/* detach: the refused worker closes (6) and exits 0 */
	assert_true(xs_write(g_xs, XBT_NULL, BE2 "/online", "0", 1));
	assert_true(xsd_wait(g_xs, BE2 "/state", "6", 5000));
	if (children(NULL) >= 0) {
		assert_int_equal(wait_children(0, 5000), 0);
	}
	msleep(100);
	why = xsd_read(g_xs, BE2 "/vdisk-error");
	assert_non_null(why);
	assert_null(strstr(why, "worker")); /* no crash reported for a clean exit */
	free(why);
	assert_int_equal(vd_ctl_detach(g_xs, 5, 51728, 5000, false, &err), 0);
	assert_true(xsd_equals(g_xs, BE2, NULL));
}

static void test_sigterm(void **state)
{
	int status = 0;
	pid_t r = 0;

	/* one live worker to take down with it */
	attach_missing(51744);
	assert_true(xsd_wait(g_xs, ROOT "/5/51744/state", "5", 10000));
	assert_int_equal(kill(g_daemon, SIGTERM), 0);
	for (int i = 0; i < 500 && r == 0; i++) {
		r = waitpid(g_daemon, &status, WNOHANG);
		if (r == 0) {
			msleep(20);
		}
	}
	assert_int_equal(r, g_daemon);
	g_daemon = 0;
	assert_true(WIFEXITED(status));
	assert_int_equal(WEXITSTATUS(status), 0);
	/* the daemon removes nothing the toolstack owns */
	assert_false(xsd_equals(g_xs, ROOT "/5/51744", NULL));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_garbage_is_ignored),
		cmocka_unit_test(test_refusal_then_crash),
		cmocka_unit_test(test_refusal_clean_exit),
		cmocka_unit_test(test_sigterm),
	};
	const char *xsd = getenv("VD_XENSTORED"), *d = getenv("VD_VDISKD");

	if (xsd == NULL || access(xsd, X_OK) != 0 || d == NULL || access(d, X_OK) != 0) {
		fprintf(stderr, "vd-xenstored or vdiskd not available: skipping\n");
		return 77;
	}
	signal(SIGPIPE, SIG_IGN);
	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
