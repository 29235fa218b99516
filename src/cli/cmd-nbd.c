/*
 * vdisk serve-nbd: an image over NBD, in the foreground.
 *
 * The main thread opens the image, starts the serving threads (each one a
 * vd_ioctx reactor with its own image queue, created one after the other
 * so that thread 0 holds the first image queue: the metadata owner of
 * qcow2/vhd), listens, and then waits in one poll() on the listening socket
 * and a signalfd. SIGINT/SIGTERM: stop accepting, close the connections
 * once their I/O is done, stop the threads, close the image, exit 0.
 *
 * Listening: a UNIX socket (mode 0600) unless --port asks for TCP, which
 * binds 127.0.0.1 unless --bind says otherwise (see default_socket()).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli/cli.h"
#include "common/err.h"
#include "common/log.h"
#include "image/image.h"
#include "io/io.h"
#include "nbd/nbd.h"

#define EXIT_USAGE  2
#define MAX_THREADS 16
#define SERVE_NBD_USAGE                                                                     \
	"usage: vdisk serve-nbd IMAGE [-f|--format FMT] [--socket PATH | --port N "         \
	"[--bind ADDR]]\n"                                                                  \
	"                        [--readonly] [--export NAME] [--description TEXT]\n"       \
	"                        [--threads N] [--cache direct|writeback] [--io BACKEND]\n" \
	"                        [--max-conns N] [--max-per-peer N]\n"                      \
	"                        [--handshake-timeout SECONDS] [--idle-timeout SECONDS]\n"  \
	"                        [--tls x509 --tls-certs DIR | --tls psk --tls-psk FILE]\n" \
	"                        [--tls-required] [--backing-dir DIR]... [--no-backing]\n"

enum {
	OPT_SOCKET = 256,
	OPT_PORT,
	OPT_BIND,
	OPT_READONLY,
	OPT_EXPORT,
	OPT_DESC,
	OPT_THREADS,
	OPT_CACHE,
	OPT_IO,
	OPT_MAX_CONNS,
	OPT_HANDSHAKE,
	OPT_IDLE,
	OPT_PER_PEER,
	OPT_TLS,
	OPT_TLS_CERTS,
	OPT_TLS_PSK,
	OPT_TLS_REQUIRED,
};

struct serve_thread {
	pthread_t tid;
	struct vd_image *img;
	struct vd_ioctx *ioctx;
	struct vd_image_queue *iq;
	int ret;
	bool started, stop;
	pthread_mutex_t lock;
	pthread_cond_t cond;
};

static int th_send(void *thread, void (*fn)(void *), void *arg)
{
	struct serve_thread *st = thread;

	return vd_ioctx_send_msg(st->ioctx, fn, arg);
}

static void th_bind(void *thread, struct vd_ioctx **ioctx, struct vd_image_queue **iq)
{
	struct serve_thread *st = thread;

	*ioctx = st->ioctx;
	*iq = st->iq;
}

static const struct vd_nbd_thread_ops g_thread_ops = { .send = th_send, .bind = th_bind };

static void th_stop(void *arg)
{
	struct serve_thread *st = arg;

	st->stop = true;
}

static void *th_main(void *arg)
{
	struct serve_thread *st = arg;
	struct vd_err err = { 0 };
	int ret;

	ret = vd_ioctx_create(256, &st->ioctx, &err);
	if (ret == 0) {
		ret = vd_ioctx_msgs_enable(st->ioctx);
	}
	if (ret == 0) {
		ret = vd_image_queue_create(st->img, st->ioctx, &st->iq);
	}
	if (ret < 0) {
		fprintf(stderr, "vdisk serve-nbd: serving thread: %s\n",
			err.errnum != 0 ? vd_err_msg(&err) : strerror(-ret));
	}
	pthread_mutex_lock(&st->lock);
	st->ret = ret;
	st->started = true;
	pthread_cond_broadcast(&st->cond);
	pthread_mutex_unlock(&st->lock);
	if (ret < 0) {
		vd_ioctx_destroy(st->ioctx);
		st->ioctx = NULL;
		return NULL;
	}
	while (!st->stop) {
		ret = vd_ioctx_wait(st->ioctx, 0);
		if (ret < 0 && ret != -EINTR) {
			fprintf(stderr, "vdisk serve-nbd: reactor: %s\n", strerror(-ret));
			break;
		}
	}
	/* the server has drained its connections: nothing of ours is in flight */
	while (vd_ioctx_inflight(st->ioctx) != 0) {
		(void)vd_ioctx_wait(st->ioctx, 1000000);
	}
	vd_image_queue_destroy(st->iq);
	vd_ioctx_destroy(st->ioctx);
	return NULL;
}

static int parse_uint(const char *s, unsigned long max, unsigned long *out)
{
	char *end;
	unsigned long v;

	errno = 0;
	v = strtoul(s, &end, 10);
	if (errno != 0 || end == s || *end != '\0' || v > max || s[0] == '-') {
		return -EINVAL;
	}
	*out = v;
	return 0;
}

static int usage(const char *why)
{
	if (why != NULL) {
		fprintf(stderr, "vdisk serve-nbd: %s\n", why);
	}
	(void)fputs(SERVE_NBD_USAGE, stderr);
	return EXIT_USAGE;
}

/*
 * Without --socket or --port: a UNIX socket, mode 0600, in a directory of
 * ours (mode 0700): $VDISK_RUN_DIR, else /run/vdisk for root, else
 * $XDG_RUNTIME_DIR/vdisk. TCP, which anyone on the host (or the network)
 * may reach, is only ever an explicit --port.
 */
static int default_socket(char *buf, size_t cap)
{
	const char *dir = getenv("VDISK_RUN_DIR");
	char sub[80];

	if (dir == NULL || dir[0] == '\0') {
		const char *xdg = getenv("XDG_RUNTIME_DIR");

		if (getuid() == 0) {
			dir = "/run/vdisk";
		} else if (xdg != NULL && xdg[0] == '/' &&
			   (size_t)snprintf(sub, sizeof(sub), "%s/vdisk", xdg) < sizeof(sub)) {
			dir = sub;
		} else {
			return -ENOENT;
		}
	}
	if (mkdir(dir, 0700) < 0 && errno != EEXIST) {
		return -errno;
	}
	if ((size_t)snprintf(buf, cap, "%s/serve-nbd-%ld.sock", dir, (long)getpid()) >= cap) {
		return -ENAMETOOLONG;
	}
	return 0;
}

/* TCP beyond loopback without required TLS: say what that means. */
static void tls_note(const struct vd_nbd_config *cfg, const char *tcp_addr)
{
	if (tcp_addr == NULL || cfg->tls_required || strcmp(tcp_addr, "127.0.0.1") == 0 ||
	    strcmp(tcp_addr, "::1") == 0 || strcmp(tcp_addr, "localhost") == 0) {
		return;
	}
	fprintf(stderr,
		"vdisk serve-nbd: warning: listening on %s without --tls-required: anyone who "
		"reaches it can read%s the image in the clear\n",
		tcp_addr, cfg->readonly ? "" : " and write");
}

static bool got_stop_signal(int sfd)
{
	struct signalfd_siginfo si;

	while (read(sfd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
		if (si.ssi_signo == SIGINT || si.ssi_signo == SIGTERM) {
			return true;
		}
	}
	return false;
}

struct serve_args {
	struct vd_image_opts io;
	struct vd_nbd_config cfg;
	const char *sock, *bind_addr, *image;
	unsigned long port, nthreads;
	bool have_port, have_bind;
	char defsock[108];
};

/* One option into a. -1: go on; else the exit code (0 after --help). */
static int parse_opt(struct serve_args *a, int c)
{
	unsigned long v;

	switch (c) {
	case 'f':
		a->io.format = optarg;
		return -1;
	case OPT_SOCKET:
		a->sock = optarg;
		return -1;
	case OPT_PORT:
		if (parse_uint(optarg, 65535, &a->port) < 0 || a->port == 0) {
			return usage("--port: 1..65535");
		}
		a->have_port = true;
		return -1;
	case OPT_BIND:
		a->bind_addr = optarg;
		a->have_bind = true;
		return -1;
	case OPT_READONLY:
		a->io.readonly = true;
		a->cfg.readonly = true;
		return -1;
	case OPT_EXPORT:
		a->cfg.export_name = optarg;
		return -1;
	case OPT_DESC:
		a->cfg.description = optarg;
		return -1;
	case OPT_THREADS:
		if (parse_uint(optarg, MAX_THREADS, &a->nthreads) < 0 || a->nthreads == 0) {
			return usage("--threads: 1..16");
		}
		return -1;
	case OPT_CACHE:
		if (strcmp(optarg, "direct") == 0) {
			a->io.cache = VD_CACHE_DIRECT;
		} else if (strcmp(optarg, "writeback") == 0) {
			a->io.cache = VD_CACHE_WRITEBACK;
		} else {
			return usage("--cache: direct or writeback");
		}
		return -1;
	case OPT_IO:
		a->io.io_backend = optarg;
		return -1;
	case OPT_MAX_CONNS:
		if (parse_uint(optarg, 4096, &v) < 0 || v == 0) {
			return usage("--max-conns: 1..4096");
		}
		a->cfg.max_conns = (unsigned int)v;
		return -1;
	case OPT_HANDSHAKE:
		if (parse_uint(optarg, 3600, &v) < 0 || v == 0) {
			return usage("--handshake-timeout: 1..3600 seconds");
		}
		a->cfg.handshake_ms = (uint32_t)v * 1000;
		return -1;
	case OPT_IDLE:
		if (parse_uint(optarg, 86400, &v) < 0) {
			return usage("--idle-timeout: 0 (never) .. 86400 seconds");
		}
		a->cfg.idle_ms = v == 0 ? VD_NBD_IDLE_NEVER : (uint32_t)v * 1000;
		return -1;
	case OPT_PER_PEER:
		if (parse_uint(optarg, 4096, &v) < 0 || v == 0) {
			return usage("--max-per-peer: 1..4096");
		}
		a->cfg.max_per_peer = (unsigned int)v;
		return -1;
	case OPT_TLS:
		if (strcmp(optarg, "x509") == 0) {
			a->cfg.tls = VD_NBD_TLS_X509;
		} else if (strcmp(optarg, "psk") == 0) {
			a->cfg.tls = VD_NBD_TLS_PSK;
		} else {
			return usage("--tls: x509 or psk");
		}
		return -1;
	case OPT_TLS_CERTS:
		a->cfg.tls_certs_dir = optarg;
		return -1;
	case OPT_TLS_PSK:
		a->cfg.tls_psk_file = optarg;
		return -1;
	case OPT_TLS_REQUIRED:
		a->cfg.tls_required = true;
		return -1;
	case 'h':
		(void)fputs(SERVE_NBD_USAGE, stdout);
		return 0;
	default:
		return usage(NULL);
	}
}

/* -1: serve as a says; else the exit code. */
static int parse_args(int argc, char **argv, struct serve_args *a)
{
	static const struct option lo[] = {
		{ "format", required_argument, NULL, 'f' },
		{ "socket", required_argument, NULL, OPT_SOCKET },
		{ "port", required_argument, NULL, OPT_PORT },
		{ "bind", required_argument, NULL, OPT_BIND },
		{ "readonly", no_argument, NULL, OPT_READONLY },
		{ "export", required_argument, NULL, OPT_EXPORT },
		{ "description", required_argument, NULL, OPT_DESC },
		{ "threads", required_argument, NULL, OPT_THREADS },
		{ "cache", required_argument, NULL, OPT_CACHE },
		{ "io", required_argument, NULL, OPT_IO },
		{ "max-conns", required_argument, NULL, OPT_MAX_CONNS },
		{ "handshake-timeout", required_argument, NULL, OPT_HANDSHAKE },
		{ "idle-timeout", required_argument, NULL, OPT_IDLE },
		{ "max-per-peer", required_argument, NULL, OPT_PER_PEER },
		{ "tls", required_argument, NULL, OPT_TLS },
		{ "tls-certs", required_argument, NULL, OPT_TLS_CERTS },
		{ "tls-psk", required_argument, NULL, OPT_TLS_PSK },
		{ "tls-required", no_argument, NULL, OPT_TLS_REQUIRED },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	int c, r;

	memset(a, 0, sizeof(*a));
	a->bind_addr = "127.0.0.1";
	a->nthreads = 1;
	optind = 0;
	opterr = 1;
	while ((c = getopt_long(argc, argv, "f:h", lo, NULL)) != -1) {
		r = parse_opt(a, c);
		if (r >= 0) {
			return r;
		}
	}
	if (optind + 1 != argc) {
		return usage("one IMAGE expected");
	}
	if (a->sock != NULL && a->have_port) {
		return usage("--socket and --port exclude each other");
	}
	if (a->have_bind && !a->have_port) {
		return usage("--bind needs --port");
	}
	if ((a->cfg.tls == VD_NBD_TLS_X509) != (a->cfg.tls_certs_dir != NULL) ||
	    (a->cfg.tls == VD_NBD_TLS_PSK) != (a->cfg.tls_psk_file != NULL) ||
	    (a->cfg.tls_required && a->cfg.tls == VD_NBD_TLS_OFF)) {
		return usage("--tls x509 goes with --tls-certs, --tls psk with --tls-psk; "
			     "--tls-required needs --tls");
	}
	if (a->sock == NULL && !a->have_port) {
		if (default_socket(a->defsock, sizeof(a->defsock)) < 0) {
			return usage("no --socket and no run directory ($VDISK_RUN_DIR, "
				     "$XDG_RUNTIME_DIR): give --socket PATH or --port N");
		}
		a->sock = a->defsock;
	}
	a->image = argv[optind];
	return -1;
}

/* Listen as a says and print where (with the URI for a client). */
static int listen_announce(struct vd_nbd_server *srv, const struct serve_args *a)
{
	const char *s = a->cfg.tls_required ? "s" : "";
	const char *name = a->cfg.export_name != NULL ? a->cfg.export_name : "";
	struct vd_err err = { 0 };
	int ret;

	if (a->sock != NULL) {
		ret = vd_nbd_server_listen_unix(srv, a->sock, &err);
	} else {
		ret = vd_nbd_server_listen_tcp(srv, a->bind_addr, (uint16_t)a->port, &err);
	}
	if (ret < 0) {
		fprintf(stderr, "vdisk serve-nbd: %s\n", vd_err_msg(&err));
		return ret;
	}
	tls_note(&a->cfg, a->sock == NULL ? a->bind_addr : NULL);
	if (a->sock != NULL) {
		printf("serving %s on unix:%s (nbd%s+unix:///%s?socket=%s)\n", a->image, a->sock, s,
		       name, a->sock);
	} else {
		printf("serving %s on %s:%lu (nbd%s://%s:%lu/%s)\n", a->image, a->bind_addr,
		       a->port, s, a->bind_addr, a->port, name);
	}
	(void)fflush(stdout);
	return 0;
}

/* Accept until SIGINT/SIGTERM (exit code 0), or a poll failure (1). */
static int serve_loop(struct vd_nbd_server *srv, int sfd)
{
	for (;;) {
		struct pollfd pfd[2] = {
			{ .fd = vd_nbd_server_fd(srv), .events = POLLIN },
			{ .fd = sfd, .events = POLLIN },
		};

		if (poll(pfd, 2, -1) < 0) {
			if (errno == EINTR) {
				continue;
			}
			fprintf(stderr, "vdisk serve-nbd: poll: %s\n", strerror(errno));
			return 1;
		}
		if ((pfd[1].revents & POLLIN) && got_stop_signal(sfd)) {
			return 0;
		}
		if (pfd[0].revents & POLLIN) {
			vd_nbd_server_accept(srv);
		}
	}
}

int vd_cli_serve_nbd(int argc, char **argv)
{
	struct serve_args a;
	struct serve_thread th[MAX_THREADS];
	struct vd_nbd_server *srv = NULL;
	struct vd_image *img = NULL;
	struct vd_err err = { 0 };
	unsigned int started = 0;
	sigset_t set, old;
	int sfd = -1, rc = 1, ret;

	ret = parse_args(argc, argv, &a);
	if (ret >= 0) {
		return ret;
	}

	a.io.backing = *vd_cli_backing(); /* --backing-dir, --no-backing: main.c */
	ret = vd_image_open(a.image, &a.io, &img, &err);
	if (ret < 0) {
		fprintf(stderr, "vdisk serve-nbd: %s\n",
			err.errnum != 0 ? vd_err_msg(&err) : strerror(-ret));
		return 1;
	}
	ret = vd_nbd_server_create(img, &a.cfg, &srv, &err);
	if (ret < 0) {
		fprintf(stderr, "vdisk serve-nbd: %s\n", vd_err_msg(&err));
		goto out_image;
	}

	/* Threads inherit the mask: signals are taken only through sfd. */
	sigemptyset(&set);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGPIPE);
	pthread_sigmask(SIG_BLOCK, &set, &old);
	sfd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
	if (sfd < 0) {
		fprintf(stderr, "vdisk serve-nbd: signalfd: %s\n", strerror(errno));
		goto out_server;
	}

	memset(th, 0, sizeof(th));
	for (unsigned int i = 0; i < a.nthreads; i++) {
		struct serve_thread *st = &th[i];

		st->img = img;
		pthread_mutex_init(&st->lock, NULL);
		pthread_cond_init(&st->cond, NULL);
		if (pthread_create(&st->tid, NULL, th_main, st) != 0) {
			fprintf(stderr, "vdisk serve-nbd: cannot start a thread\n");
			goto out_threads;
		}
		started++;
		pthread_mutex_lock(&st->lock);
		while (!st->started) {
			pthread_cond_wait(&st->cond, &st->lock);
		}
		pthread_mutex_unlock(&st->lock);
		if (st->ret < 0) {
			goto out_threads;
		}
		(void)vd_nbd_server_add_thread(srv, &g_thread_ops, st);
	}

	if (listen_announce(srv, &a) == 0) {
		rc = serve_loop(srv, sfd);
	}

out_threads:
	/* connections first (their I/O completes on the running threads) */
	vd_nbd_server_stop(srv);
	for (unsigned int i = 0; i < started; i++) {
		struct serve_thread *st = &th[i];

		if (st->ret == 0 && st->ioctx != NULL) {
			while (vd_ioctx_send_msg(st->ioctx, th_stop, st) == -EAGAIN) {
				usleep(100);
			}
		}
		pthread_join(st->tid, NULL);
	}
	for (unsigned int i = 0; i < a.nthreads && th[i].img != NULL; i++) {
		pthread_mutex_destroy(&th[i].lock);
		pthread_cond_destroy(&th[i].cond);
	}
out_server:
	vd_nbd_server_destroy(srv);
	if (sfd >= 0) {
		close(sfd);
	}
	pthread_sigmask(SIG_SETMASK, &old, NULL);
out_image:
	vd_image_close(img);
	return rc;
}
