/*
 * Helpers for the ctl tests: run the simulated xenstored (vd-xenstored,
 * path in $VD_XENSTORED) in a temporary directory, connect to it as dom0 or
 * as a guest, and wait for xenstore values by watch (no sleeping loops).
 */
#ifndef VD_TESTS_CTL_TEST_H
#define VD_TESTS_CTL_TEST_H

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <xenstore.h>

struct xsd {
	pid_t pid;
	char dir[64];
	char sock[128];
	char gsock[128]; /* guest 5 */
};

static inline void msleep(unsigned int ms)
{
	struct timespec ts = { .tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L };

	nanosleep(&ts, NULL);
}

/* 0, or 77 (skip) when vd-xenstored is not available, or -1. */
static inline int xsd_start(struct xsd *x, const char *const *introduce)
{
	const char *bin = getenv("VD_XENSTORED");
	char *argv[16];
	int argc = 0;

	if (bin == NULL || access(bin, X_OK) != 0) {
		fprintf(stderr, "vd-xenstored not available: skipping\n");
		return 77;
	}
	snprintf(x->dir, sizeof(x->dir), "/tmp/vd-ctl-test-XXXXXX");
	if (mkdtemp(x->dir) == NULL) {
		return -1;
	}
	snprintf(x->sock, sizeof(x->sock), "%s/xenstored", x->dir);
	snprintf(x->gsock, sizeof(x->gsock), "%s/xenstored.d5", x->dir);
	argv[argc++] = (char *)bin;
	argv[argc++] = (char *)"--socket";
	argv[argc++] = x->sock;
	argv[argc++] = (char *)"--guest-socket";
	argv[argc++] = x->gsock;
	argv[argc++] = (char *)"5";
	for (; introduce != NULL && *introduce != NULL && argc < 14; introduce++) {
		argv[argc++] = (char *)"--introduce";
		argv[argc++] = (char *)*introduce;
	}
	argv[argc] = NULL;
	x->pid = fork();
	if (x->pid < 0) {
		return -1;
	}
	if (x->pid == 0) {
		execv(bin, argv);
		_exit(127);
	}
	/* Wait for both sockets (the server creates them before serving). */
	for (int i = 0; i < 500; i++) {
		struct stat st;

		if (stat(x->sock, &st) == 0 && stat(x->gsock, &st) == 0) {
			setenv("XENSTORED_PATH", x->sock, 1);
			return 0;
		}
		msleep(10);
	}
	return -1;
}

static inline void xsd_stop(struct xsd *x)
{
	char cmd[128];

	if (x->pid > 0) {
		kill(x->pid, SIGTERM);
		waitpid(x->pid, NULL, 0);
		x->pid = 0;
	}
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", x->dir);
	if (system(cmd) != 0) {
		fprintf(stderr, "could not remove %s\n", x->dir);
	}
}

/* A connection acting as guest 5. */
static inline struct xs_handle *xsd_open_guest(struct xsd *x)
{
	struct xs_handle *h;

	setenv("XENSTORED_PATH", x->gsock, 1);
	h = xs_open(0);
	setenv("XENSTORED_PATH", x->sock, 1);
	return h;
}

static inline char *xsd_read(struct xs_handle *xs, const char *path)
{
	unsigned int len;

	return xs_read(xs, XBT_NULL, path, &len);
}

static inline bool xsd_equals(struct xs_handle *xs, const char *path, const char *want)
{
	char *v = xsd_read(xs, path);
	bool eq = want == NULL ? v == NULL : (v != NULL && strcmp(v, want) == 0);

	free(v);
	return eq;
}

/*
 * Wait until path reads want (NULL: until it does not exist), by watch.
 * Returns true if it did within timeout_ms.
 */
static inline bool xsd_wait(struct xs_handle *xs, const char *path, const char *want,
			    unsigned int timeout_ms)
{
	int fd = xs_fileno(xs);
	bool ok = false;
	struct timespec t0, t1;

	if (fd < 0 || !xs_watch(xs, path, "test-wait")) {
		return false;
	}
	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (;;) {
		char **ev;
		long el;

		while ((ev = xs_check_watch(xs)) != NULL) {
			free(ev);
		}
		if (xsd_equals(xs, path, want)) {
			ok = true;
			break;
		}
		clock_gettime(CLOCK_MONOTONIC, &t1);
		el = (t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000;
		if (el >= (long)timeout_ms) {
			break;
		}
		struct pollfd p = { .fd = fd, .events = POLLIN };
		poll(&p, 1, (int)(timeout_ms - (unsigned long)el));
	}
	xs_unwatch(xs, path, "test-wait");
	return ok;
}

#endif
