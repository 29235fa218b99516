/*
 * The real libxenstore against vd-xenstored: a transaction conflict between
 * two handles ends in EAGAIN, xs_watch/xs_read_watch (libxenstore's reader
 * thread) see the initial event and changes, permissions round-trip, and a
 * guest handle is refused what its ACL does not allow.
 * Usage: test-libxenstore PATH-TO-vd-xenstored. Exit 0 pass, 1 fail.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <xenstore.h>

static int g_fails;

#define CHECK(cond)                                                                               \
	do {                                                                                      \
		if (!(cond)) {                                                                    \
			fprintf(stderr, "FAIL %s:%d: %s (errno %d)\n", __FILE__, __LINE__, #cond, \
				errno);                                                           \
			g_fails++;                                                                \
		}                                                                                 \
	} while (0)

static struct xs_handle *open_as(const char *sock)
{
	setenv("XENSTORED_PATH", sock, 1);
	return xs_open(0);
}

static bool read_is(struct xs_handle *h, const char *path, const char *want)
{
	unsigned int len;
	char *v = xs_read(h, XBT_NULL, path, &len);
	bool ok = v && len == strlen(want) && strcmp(v, want) == 0;

	free(v);
	return ok;
}

/* Next watch event within timeout_ms, as "path|token" into buf. */
static bool next_event(struct xs_handle *h, int timeout_ms, char *buf, size_t len)
{
	struct pollfd p = { .fd = xs_fileno(h), .events = POLLIN };
	unsigned int n;
	char **vec;

	if (poll(&p, 1, timeout_ms) != 1) {
		return false;
	}
	vec = xs_read_watch(h, &n);
	if (vec == NULL) {
		return false;
	}
	snprintf(buf, len, "%s|%s", vec[XS_WATCH_PATH], vec[XS_WATCH_TOKEN]);
	free(vec);
	return true;
}

int main(int argc, char **argv)
{
	char dir[] = "/tmp/vd-xs-libxs.XXXXXX", s0[64], s5[64], ev[256];
	struct xs_permissions perms[2] = { { .id = 0, .perms = XS_PERM_NONE },
					   { .id = 5, .perms = XS_PERM_READ } };
	struct xs_permissions *got;
	struct xs_handle *a, *b, *g;
	xs_transaction_t t;
	unsigned int n;
	pid_t pid;
	char *v;

	if (argc != 2) {
		fprintf(stderr, "usage: %s vd-xenstored\n", argv[0]);
		return 1;
	}
	alarm(60);
	if (mkdtemp(dir) == NULL) {
		return 1;
	}
	snprintf(s0, sizeof(s0), "%s/s0", dir);
	snprintf(s5, sizeof(s5), "%s/s5", dir);
	pid = fork();
	if (pid == 0) {
		execl(argv[1], argv[1], "--socket", s0, "--guest-socket", s5, "5", "--introduce",
		      "5", (char *)NULL);
		_exit(127);
	}
	for (int i = 0; i < 100 && access(s5, F_OK) != 0; i++) {
		usleep(50000);
	}

	a = open_as(s0);
	b = open_as(s0);
	g = open_as(s5);
	CHECK(a && b && g);
	if (!a || !b || !g) {
		goto out;
	}

	/* Transactions: a conflicting commit fails with EAGAIN, a retry works. */
	CHECK(xs_write(a, XBT_NULL, "/tx/x", "0", 1));
	t = xs_transaction_start(a);
	CHECK(t != XBT_NULL);
	v = xs_read(a, t, "/tx/x", &n);
	CHECK(v && strcmp(v, "0") == 0);
	free(v);
	CHECK(xs_write(b, XBT_NULL, "/tx/x", "b", 1));
	CHECK(xs_write(a, t, "/tx/x", "a", 1));
	errno = 0;
	CHECK(!xs_transaction_end(a, t, false));
	CHECK(errno == EAGAIN);
	CHECK(read_is(b, "/tx/x", "b"));
	t = xs_transaction_start(a);
	CHECK(xs_write(a, t, "/tx/x", "a", 1));
	CHECK(xs_transaction_end(a, t, false));
	CHECK(read_is(b, "/tx/x", "a"));
	/* Abort discards. */
	t = xs_transaction_start(a);
	CHECK(xs_rm(a, t, "/tx"));
	CHECK(xs_transaction_end(a, t, true));
	CHECK(read_is(b, "/tx/x", "a"));

	/* Watches through libxenstore's reader thread. */
	CHECK(xs_watch(a, "/wt", "tok"));
	CHECK(next_event(a, 5000, ev, sizeof(ev)) && strcmp(ev, "/wt|tok") == 0);
	CHECK(xs_write(b, XBT_NULL, "/wt/k", "1", 1));
	CHECK(next_event(a, 5000, ev, sizeof(ev)) && strcmp(ev, "/wt/k|tok") == 0);
	CHECK(xs_mkdir(b, XBT_NULL, "/wt/dir"));
	CHECK(next_event(a, 5000, ev, sizeof(ev)) && strcmp(ev, "/wt/dir|tok") == 0);
	CHECK(xs_rm(b, XBT_NULL, "/wt"));
	CHECK(next_event(a, 5000, ev, sizeof(ev)) && strcmp(ev, "/wt|tok") == 0);
	CHECK(xs_unwatch(a, "/wt", "tok"));
	CHECK(xs_write(b, XBT_NULL, "/wt/k", "2", 1));
	CHECK(!next_event(a, 200, ev, sizeof(ev)));

	/* Permissions, and a guest held to them. */
	CHECK(xs_write(a, XBT_NULL, "/perm/n", "secret", 6));
	v = xs_read(g, XBT_NULL, "/perm/n", &n);
	CHECK(v == NULL && errno == EACCES);
	free(v);
	CHECK(xs_set_permissions(a, XBT_NULL, "/perm/n", perms, 2));
	got = xs_get_permissions(a, XBT_NULL, "/perm/n", &n);
	CHECK(got && n == 2 && got[0].id == 0 && got[0].perms == XS_PERM_NONE && got[1].id == 5 &&
	      got[1].perms == XS_PERM_READ);
	free(got);
	CHECK(read_is(g, "/perm/n", "secret"));
	CHECK(!xs_write(g, XBT_NULL, "/perm/n", "x", 1) && errno == EACCES);
	v = xs_get_domain_path(g, 5);
	CHECK(v && strcmp(v, "/local/domain/5") == 0);
	free(v);
	CHECK(xs_write(g, XBT_NULL, "/local/domain/5/mine", "1", 1));
	CHECK(xs_is_domain_introduced(a, 5));
	{
		char **list = xs_directory(a, XBT_NULL, "/local/domain", &n);

		CHECK(list && n == 2);
		free(list);
	}

out:
	if (a) {
		xs_close(a);
	}
	if (b) {
		xs_close(b);
	}
	if (g) {
		xs_close(g);
	}
	kill(pid, SIGTERM);
	waitpid(pid, NULL, 0);
	rmdir(dir);
	if (g_fails) {
		fprintf(stderr, "%d check(s) failed\n", g_fails);
		return 1;
	}
	printf("all passed\n");
	return 0;
}
