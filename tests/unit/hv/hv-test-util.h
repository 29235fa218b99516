/*
 * Test helper shared by tests/unit/hv and tests/unit/transport: run the
 * simulated hypervisor (vd_sim_hv_main) in a forked child on a fresh temp
 * dir, and stop it with SIGTERM. Header-only (static functions).
 */
#ifndef VD_TESTS_HV_TEST_UTIL_H
#define VD_TESTS_HV_TEST_UTIL_H

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "sim/hv/hv.h"
#include "transport/sim/hvc.h"

struct hvt {
	pid_t pid;
	char dir[64];
};

static inline void hvt_sleep_ms(unsigned int ms)
{
	struct timespec ts = { .tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L };

	nanosleep(&ts, NULL);
}

static inline bool hvt_exists(const struct hvt *t, const char *name)
{
	char p[256];
	struct stat st;

	snprintf(p, sizeof(p), "%s/%s", t->dir, name);
	return stat(p, &st) == 0;
}

/* Start the hypervisor; returns 0 once hv.sock accepts connections. */
static inline int hvt_start(struct hvt *t)
{
	snprintf(t->dir, sizeof(t->dir), "/tmp/vdisk-hvt-XXXXXX");
	if (mkdtemp(t->dir) == NULL) {
		return -errno;
	}
	fflush(NULL);
	t->pid = fork();
	if (t->pid < 0) {
		return -errno;
	}
	if (t->pid == 0) {
		char *argv[] = { (char *)"hv", (char *)"--dir", t->dir, NULL };

		exit(vd_sim_hv_main(3, argv));
	}
	setenv("VDISK_SIM_DIR", t->dir, 1);
	for (int i = 0; i < 500; i++) {
		struct vd_hvc *h;

		if (vd_hvc_connect(t->dir, &h, NULL) == 0) {
			vd_hvc_close(h);
			return 0;
		}
		if (waitpid(t->pid, NULL, WNOHANG) == t->pid) {
			t->pid = -1;
			return -ECHILD;
		}
		hvt_sleep_ms(10);
	}
	return -ETIMEDOUT;
}

/* Stop it; returns its exit status (0 for a clean stop) or -errno. */
static inline int hvt_stop(struct hvt *t)
{
	int status = 0;

	if (t->pid > 0) {
		kill(t->pid, SIGTERM);
		if (waitpid(t->pid, &status, 0) < 0) {
			return -errno;
		}
		t->pid = -1;
	}
	/* The hv removes its own files; anything left is a test failure. */
	if (rmdir(t->dir) < 0) {
		return -errno;
	}
	if (!WIFEXITED(status)) {
		return -EINTR;
	}
	return WEXITSTATUS(status);
}

#endif
