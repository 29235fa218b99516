/*
 * vd-xenstored: the simulated xenstored alone, for tests.
 *   vd-xenstored --socket PATH [--guest-socket PATH DOMID]... [--introduce DOMID]...
 * Serves until SIGTERM/SIGINT, then removes its sockets and exits 0.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "sim/xs/xs.h"

static volatile sig_atomic_t g_stop;

static void on_signal(int sig)
{
	(void)sig;
	g_stop = 1;
}

static int parse_domid(const char *str, uint16_t *out)
{
	unsigned long v;
	char *end;

	if (str[0] < '0' || str[0] > '9') {
		return -EINVAL;
	}
	errno = 0;
	v = strtoul(str, &end, 10);
	if (errno || *end != '\0' || v > 65535) {
		return -EINVAL;
	}
	*out = (uint16_t)v;
	return 0;
}

static void usage(void)
{
	fprintf(stderr, "usage: vd-xenstored --socket PATH [--guest-socket PATH DOMID]... "
			"[--introduce DOMID]...\n");
}

int main(int argc, char **argv)
{
	struct sigaction sa = { .sa_handler = on_signal };
	struct vd_xs_server *s;
	bool have_socket = false;
	int rc, ret = 1;

	vd_log_set_ident("vd-xenstored");
	rc = vd_xs_server_create(&s);
	if (rc < 0) {
		vd_log(VD_LOG_ERR, "cannot create the server: %s", strerror(-rc));
		return 1;
	}
	for (int i = 1; i < argc; i++) {
		uint16_t domid;

		if (strcmp(argv[i], "--socket") == 0 && i + 1 < argc) {
			rc = vd_xs_server_listen(s, argv[++i], 0);
			have_socket = true;
		} else if (strcmp(argv[i], "--guest-socket") == 0 && i + 2 < argc) {
			if (parse_domid(argv[i + 2], &domid) < 0) {
				usage();
				goto out;
			}
			rc = vd_xs_server_listen(s, argv[i + 1], domid);
			i += 2;
		} else if (strcmp(argv[i], "--introduce") == 0 && i + 1 < argc) {
			if (parse_domid(argv[++i], &domid) < 0) {
				usage();
				goto out;
			}
			rc = vd_xs_server_introduce_domain(s, domid);
			if (rc == -EEXIST) {
				rc = 0;
			}
		} else {
			usage();
			goto out;
		}
		if (rc < 0) {
			vd_log(VD_LOG_ERR, "%s %s: %s", argv[i - 1], argv[i], strerror(-rc));
			goto out;
		}
	}
	if (!have_socket) {
		usage();
		goto out;
	}
	sigemptyset(&sa.sa_mask);
	(void)sigaction(SIGTERM, &sa, NULL);
	(void)sigaction(SIGINT, &sa, NULL);
	(void)signal(SIGPIPE, SIG_IGN);

	while (!g_stop) {
		struct pollfd pfd = { .fd = vd_xs_server_fd(s), .events = POLLIN };

		if (poll(&pfd, 1, 1000) < 0 && errno != EINTR) {
			vd_log(VD_LOG_ERR, "poll: %s", strerror(errno));
			goto out;
		}
		rc = vd_xs_server_run(s);
		if (rc < 0) {
			vd_log(VD_LOG_ERR, "server: %s", strerror(-rc));
			goto out;
		}
	}
	ret = 0;
out:
	vd_xs_server_destroy(s);
	return ret;
}
