/*
 * The worker process: serves one VBD. One control thread (this file) runs
 * the xenbus state machine and owns the queues; each queue has its own
 * thread. A queue that halts hands the reason over through a small
 * lock-protected slot and an eventfd; the control thread then fails the
 * VBD in xenstore (blkback's xenbus_dev_fatal).
 *
 * Everything waits in one poll(): xenstore watch fd, halt eventfd,
 * signalfd, stats socket. No timers, no busy loops.
 *
 * Per-VBD tuning read from the backend dir at connect and again whenever it
 * is written: polling-duration (us, 0 = event mode) and
 * polling-idle-threshold (%), see vd_queue_set_polling().
 *
 * Stats: a UNIX stream socket, $VDISK_RUN_DIR/vbd-DOMID-DEVID.sock
 * (VDISK_RUN_DIR defaults to /run/vdisk, or $VDISK_SIM_DIR/run with the sim
 * transport), mode 0600. Every connection gets one reply and is closed;
 * nothing is read from it. The reply is text: "vdisk-stats 1", "vbd DOMID
 * DEVID", the worker's "cpu_user_us"/"cpu_sys_us" (getrusage), the polling
 * settings, "queues N", then each queue's vd_queue_stats_format() lines, and
 * "end". Nothing is written to xenstore per I/O.
 *
 * NBD export (when built with src/nbd): while the frontend is connected,
 * the VBD is also served over NBD on the UNIX socket
 * $VDISK_RUN_DIR/vbd-DOMID-DEVID.nbd (mode 0600, export name ""), on the
 * queue threads, through their image queues: the dom0 view of the disk,
 * consistent with what the guest sees. The control thread accepts; the
 * export is stopped (connections closed, their I/O finished) before the
 * queues are.
 */
#define _GNU_SOURCE
#include "ctl/ctl-int.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>
#include <xen/io/xenbus.h>
#include "common/log.h"
#include "queue/queue.h"
#include "transport/transport.h"
#ifdef VD_HAVE_NBD
#include "nbd/nbd.h"
#endif

#define REFUSED_TOKEN "vdisk-refused"

struct worker {
	const struct vd_worker_opts *o;
	char name[48]; /* "d5/51712" */
	struct xs_handle *xs;
	int sig_fd;
	int halt_fd;
	struct vd_vbd_conf conf;
	struct vd_image *image;
	struct vd_transport *transport;
	bool domain_attached;
	struct vd_blkif_caps caps;
	struct vd_xenbus_backend *backend;

	struct vd_queue *queues[VD_BLKIF_MAX_QUEUES];
	unsigned int nr_queues; /* created (and started, once connect returns 0) */

	uint32_t poll_us;       /* polling-duration */
	uint32_t poll_idle_pct; /* polling-idle-threshold */
	struct rusage ru_connect;
	int stats_fd; /* listening stats socket, -1 if none */
	char stats_path[108];
#ifdef VD_HAVE_NBD
	struct vd_nbd_server *nbd; /* the NBD export while connected, or NULL */
#endif

	pthread_mutex_t halt_lock; /* protects the slot below */
	bool halt_pending;
	unsigned int halt_qidx;
	int halt_errnum;
	char halt_why[128];
};

/* On a queue thread: only hand the news over. */
static void on_halt(void *arg, unsigned int qidx, int errnum, const char *why)
{
	struct worker *w = arg;
	uint64_t one = 1;

	pthread_mutex_lock(&w->halt_lock);
	if (!w->halt_pending) {
		w->halt_pending = true;
		w->halt_qidx = qidx;
		w->halt_errnum = errnum;
		snprintf(w->halt_why, sizeof(w->halt_why), "%s", why != NULL ? why : "halted");
	}
	pthread_mutex_unlock(&w->halt_lock);
	if (write(w->halt_fd, &one, sizeof(one)) < 0) {
		/* The counter cannot overflow in practice; the slot is set anyway. */
	}
}

/* An optional numeric key of the backend dir: def if absent or malformed. */
static uint32_t read_tunable(struct worker *w, const char *key, uint64_t max, uint32_t def)
{
	char *v = vd_ctl_xs_read(w->xs, XBT_NULL, w->o->be_path, key, 32);
	uint64_t n;

	if (v == NULL) {
		return def;
	}
	if (vd_ctl_parse_u64(v, max, &n) < 0) {
		vd_log(VD_LOG_WARN, "%s: '%.32s' is not a number <= %llu; using %u", key, v,
		       (unsigned long long)max, def);
		free(v);
		return def;
	}
	free(v);
	return (uint32_t)n;
}

static void read_polling(struct worker *w)
{
	uint32_t us =
		read_tunable(w, "polling-duration", VD_QUEUE_MAX_POLL_US, VD_QUEUE_DEF_POLL_US);
	uint32_t pct = read_tunable(w, "polling-idle-threshold", 100, VD_QUEUE_DEF_POLL_IDLE_PCT);

	if (us != w->poll_us || pct != w->poll_idle_pct) {
		vd_log(VD_LOG_INFO, "polling: %u us while host idle >= %u%%", us, pct);
	}
	w->poll_us = us;
	w->poll_idle_pct = pct;
	for (unsigned int i = 0; i < w->nr_queues; i++) {
		vd_queue_set_polling(w->queues[i], us, pct);
	}
}

static bool is_polling_key(struct worker *w, const char *path)
{
	size_t n = strlen(w->o->be_path);

	return path != NULL && strncmp(path, w->o->be_path, n) == 0 && path[n] == '/' &&
	       (strcmp(path + n + 1, "polling-duration") == 0 ||
		strcmp(path + n + 1, "polling-idle-threshold") == 0);
}

static uint64_t tv_us(const struct timeval *tv)
{
	return (uint64_t)tv->tv_sec * 1000000u + (uint64_t)tv->tv_usec;
}

static void stats_open(struct worker *w)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	char dir[160];
	int fd;

	w->stats_fd = -1;
	if (vd_ctl_run_dir(w->o->transport, dir, sizeof(dir)) < 0) {
		vd_log(VD_LOG_WARN, "stats socket: the run dir name is too long");
		return;
	}
	if (mkdir(dir, 0700) < 0 && errno != EEXIST) {
		vd_log(VD_LOG_WARN, "stats socket: cannot create %s: %s", dir, strerror(errno));
		return;
	}
	if ((size_t)snprintf(w->stats_path, sizeof(w->stats_path), "%s/vbd-%u-%u.sock", dir,
			     w->o->domid, w->o->devid) >= sizeof(w->stats_path)) {
		vd_log(VD_LOG_WARN, "stats socket: %s is too long a directory name", dir);
		w->stats_path[0] = '\0';
		return;
	}
	memcpy(sa.sun_path, w->stats_path, strlen(w->stats_path) + 1);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		return;
	}
	/* A previous worker of this VBD may have left its socket behind. */
	unlink(w->stats_path);
	if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || chmod(w->stats_path, 0600) < 0 ||
	    listen(fd, 8) < 0) {
		vd_log(VD_LOG_WARN, "stats socket %s: %s", w->stats_path, strerror(errno));
		close(fd);
		w->stats_path[0] = '\0';
		return;
	}
	w->stats_fd = fd;
}

static void stats_close(struct worker *w)
{
	if (w->stats_fd >= 0) {
		close(w->stats_fd);
		unlink(w->stats_path);
		w->stats_fd = -1;
	}
}

/* Answer every pending connection with one stats reply, then close it. */
static void stats_serve(struct worker *w)
{
	enum { REPLY_MAX = 8192 + VD_BLKIF_MAX_QUEUES * 4096 };
	char *buf = malloc(REPLY_MAX);
	int c;

	while ((c = accept4(w->stats_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0) {
		struct vd_queue_stats st;
		struct rusage ru;
		size_t pos = 0;
		int r;

		if (buf == NULL) {
			close(c);
			continue;
		}
		getrusage(RUSAGE_SELF, &ru);
		r = snprintf(buf, REPLY_MAX,
			     "vdisk-stats 1\nvbd %u %u\ncpu_user_us %llu\ncpu_sys_us %llu\n"
			     "polling_duration_us %u\npolling_idle_threshold %u\nqueues %u\n",
			     w->o->domid, w->o->devid, (unsigned long long)tv_us(&ru.ru_utime),
			     (unsigned long long)tv_us(&ru.ru_stime), w->poll_us, w->poll_idle_pct,
			     w->nr_queues);
		pos = r > 0 ? (size_t)r : 0;
		for (unsigned int i = 0; i < w->nr_queues && pos < REPLY_MAX; i++) {
			vd_queue_get_stats(w->queues[i], &st);
			r = vd_queue_stats_format(&st, i, buf + pos, REPLY_MAX - pos);
			if (r < 0) {
				break;
			}
			pos += (size_t)r;
		}
		r = snprintf(buf + pos, REPLY_MAX - pos, "end\n");
		pos += r > 0 && (size_t)r < REPLY_MAX - pos ? (size_t)r : 0;
		/* A reader too slow for one small reply gets a truncated one (no "end"). */
		if (send(c, buf, pos, MSG_DONTWAIT | MSG_NOSIGNAL) < 0) {
			vd_log_ratelimited(VD_LOG_WARN, "stats reply: %s", strerror(errno));
		}
		close(c);
	}
	free(buf);
}

#ifdef VD_HAVE_NBD
/* The NBD export's serving threads are the VBD's queue threads. */
static int nbd_send(void *thread, void (*fn)(void *), void *arg)
{
	return vd_queue_send_msg(thread, fn, arg);
}

static void nbd_bind(void *thread, struct vd_ioctx **ioctx, struct vd_image_queue **iq)
{
	*ioctx = vd_queue_ioctx(thread);
	*iq = vd_queue_image_queue(thread);
}

static const struct vd_nbd_thread_ops g_nbd_ops = { .send = nbd_send, .bind = nbd_bind };

/* After the queues started. A failure only costs the export (logged). */
static void nbd_export_open(struct worker *w)
{
	struct vd_nbd_config cfg = { .export_name = "", .description = w->name };
	struct vd_err err = { 0 };
	char path[sizeof(w->stats_path)];
	size_t len = strlen(w->stats_path);

	if (len < 5 || strcmp(w->stats_path + len - 5, ".sock") != 0) {
		return; /* no run directory */
	}
	snprintf(path, sizeof(path), "%.*s.nbd", (int)(len - 5), w->stats_path);
	cfg.readonly = w->caps.readonly;
	if (vd_nbd_server_create(w->image, &cfg, &w->nbd, &err) < 0) {
		goto fail;
	}
	for (unsigned int i = 0; i < w->nr_queues; i++) {
		(void)vd_nbd_server_add_thread(w->nbd, &g_nbd_ops, w->queues[i]);
	}
	if (vd_nbd_server_listen_unix(w->nbd, path, &err) < 0) {
		goto fail;
	}
	vd_log(VD_LOG_INFO, "NBD export on %s", path);
	return;
fail:
	vd_log(VD_LOG_WARN, "NBD export: %s", vd_err_msg(&err));
	vd_nbd_server_destroy(w->nbd);
	w->nbd = NULL;
}

static void nbd_export_close(struct worker *w)
{
	vd_nbd_server_destroy(w->nbd); /* waits for the connections' I/O */
	w->nbd = NULL;
}

static int nbd_export_fd(const struct worker *w)
{
	return w->nbd != NULL ? vd_nbd_server_fd(w->nbd) : -1;
}
#else
static void nbd_export_open(struct worker *w)
{
	(void)w;
}

static void nbd_export_close(struct worker *w)
{
	(void)w;
}

static int nbd_export_fd(const struct worker *w)
{
	(void)w;
	return -1;
}
#endif

static void stop_queues(struct worker *w)
{
	/* the NBD export runs on the queue threads: it goes first */
	nbd_export_close(w);
	for (unsigned int i = w->nr_queues; i-- > 0;) {
		vd_queue_stop(w->queues[i]);
	}
	for (unsigned int i = w->nr_queues; i-- > 0;) {
		vd_queue_destroy(w->queues[i]);
		w->queues[i] = NULL;
	}
	w->nr_queues = 0;
}

static int vbd_connect(void *arg, const struct vd_blkif_fe_conf *conf, struct vd_err *err)
{
	struct worker *w = arg;
	struct vd_queue_config qc;
	int r = 0;

	if (w->nr_queues != 0) {
		/* A reconnect without a disconnect: start from scratch. */
		stop_queues(w);
	}
	if (w->image == NULL) {
		return vd_err_set(err, ESHUTDOWN, "the VBD is being unplugged (online=0)");
	}
	if (conf->nr_queues == 0 || conf->nr_queues > w->caps.max_queues ||
	    conf->nr_queues > VD_BLKIF_MAX_QUEUES) {
		return vd_err_set(err, EINVAL, "frontend asks for %u queues (max %u)",
				  conf->nr_queues, w->caps.max_queues);
	}
	read_polling(w);
	for (unsigned int i = 0; i < conf->nr_queues; i++) {
		memset(&qc, 0, sizeof(qc));
		qc.index = i;
		snprintf(qc.name, sizeof(qc.name), "%s q%u", w->name, i);
		qc.domid = conf->domid;
		qc.abi = conf->abi;
		qc.ring_refs = conf->queue[i].ring_refs;
		qc.nr_ring_pages = conf->nr_ring_pages;
		qc.remote_port = conf->queue[i].evtchn;
		vd_vbd_make_limits(&w->caps, &qc.limits);
		qc.transport = w->transport;
		qc.image = w->image;
		qc.on_halt = on_halt;
		qc.on_halt_arg = w;
		qc.poll_us = w->poll_us;
		qc.poll_idle_pct = w->poll_idle_pct;
		qc.persistent = conf->persistent;
		qc.zero_copy = read_tunable(w, "zero-copy", 1, VD_QUEUE_DEF_ZERO_COPY) != 0;
		qc.no_io_fixed = read_tunable(w, "io-fixed", 1, 1) == 0;
		r = vd_queue_create(&qc, &w->queues[i], err);
		if (r < 0) {
			goto fail;
		}
		w->nr_queues = i + 1;
	}
	for (unsigned int i = 0; i < w->nr_queues; i++) {
		r = vd_queue_start(w->queues[i], err);
		if (r < 0) {
			goto fail;
		}
	}
	vd_log(VD_LOG_INFO, "connected: %u queue(s), ring order %u", conf->nr_queues,
	       conf->ring_page_order);
	getrusage(RUSAGE_SELF, &w->ru_connect);
	nbd_export_open(w);
	return 0;
fail:
	vd_log(VD_LOG_ERR, "connect failed: %s", err != NULL ? vd_err_msg(err) : "error");
	/* queue.h allows stopping a queue that never started. */
	stop_queues(w);
	return r;
}

/*
 * The toolstack unplugs (online=0, or the dir is gone): the backend writes
 * Closed right after this disconnect, and whoever waited for Closed may
 * open the image at once (vdisk detach; attach elsewhere). So let go of
 * the image, and of its locks, now rather than when the process exits.
 * No reconnect follows an unplug (vbd_connect refuses one).
 */
static void release_if_unplugged(struct worker *w)
{
	char *online = vd_ctl_xs_read(w->xs, XBT_NULL, w->o->be_path, "online", 8);
	bool gone = online == NULL ? errno == ENOENT : strcmp(online, "0") == 0;

	free(online);
	if (gone && w->image != NULL) {
		vd_image_close(w->image);
		w->image = NULL;
		vd_log(VD_LOG_INFO, "unplugged: image closed");
	}
}

static void vbd_disconnect(void *arg)
{
	struct worker *w = arg;

	struct vd_queue_stats st;
	struct rusage ru;
	uint64_t reqs = 0, cpu_us;
	unsigned int n = w->nr_queues;

	if (n != 0) {
		vd_log(VD_LOG_INFO, "disconnecting %u queue(s)", w->nr_queues);
	}
	for (unsigned int i = 0; i < n; i++) {
		vd_queue_get_stats(w->queues[i], &st);
		reqs += st.reqs;
	}
	stop_queues(w);
	release_if_unplugged(w);
	if (n != 0 && getrusage(RUSAGE_SELF, &ru) == 0) {
		/* The queue threads have exited: their CPU time is in RUSAGE_SELF. */
		cpu_us = tv_us(&ru.ru_utime) + tv_us(&ru.ru_stime) -
			 tv_us(&w->ru_connect.ru_utime) - tv_us(&w->ru_connect.ru_stime);
		vd_log(VD_LOG_INFO, "served %llu requests; backend cpu_us=%llu (%.2f us/request)",
		       (unsigned long long)reqs, (unsigned long long)cpu_us,
		       reqs ? (double)cpu_us / (double)reqs : 0.0);
	}
}

static const struct vd_xenbus_backend_ops g_ops = {
	.connect = vbd_connect,
	.disconnect = vbd_disconnect,
};

static int setup_signals(struct worker *w)
{
	sigset_t set;

	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	if (pthread_sigmask(SIG_BLOCK, &set, NULL) != 0) {
		return -EINVAL;
	}
	w->sig_fd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
	return w->sig_fd < 0 ? -errno : 0;
}

/* True if a termination signal was read. */
static bool got_signal(struct worker *w)
{
	struct signalfd_siginfo si;
	bool any = false;

	while (read(w->sig_fd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
		vd_log(VD_LOG_INFO, "signal %u: shutting down", si.ssi_signo);
		any = true;
	}
	return any;
}

static void take_halt(struct worker *w)
{
	uint64_t cnt;
	bool pending;
	unsigned int qidx;
	int errnum;
	char why[sizeof(w->halt_why)];

	if (read(w->halt_fd, &cnt, sizeof(cnt)) < 0) {
		/* EAGAIN: nothing new; the slot is the truth. */
	}
	pthread_mutex_lock(&w->halt_lock);
	pending = w->halt_pending;
	qidx = w->halt_qidx;
	errnum = w->halt_errnum;
	memcpy(why, w->halt_why, sizeof(why));
	w->halt_pending = false;
	pthread_mutex_unlock(&w->halt_lock);
	if (!pending) {
		return;
	}
	vd_log(VD_LOG_ERR, "queue %u halted: %s (errno %d)", qidx, why, errnum);
	if (w->backend != NULL) {
		char msg[160];

		snprintf(msg, sizeof(msg), "queue %u: %s", qidx, why);
		vd_xenbus_backend_fatal(w->backend, errnum < 0 ? -errnum : errnum, msg);
	}
}

/*
 * We refused the VBD (reason already in xenstore, state Closing). Stay until
 * the toolstack takes it away: online=0 gets state Closed (so `vdisk
 * detach` completes), a removed dir or a signal ends us.
 */
static void wait_after_refusal(struct worker *w)
{
	const char *be = w->o->be_path;
	int fd = xs_fileno(w->xs);

	if (fd < 0 || !xs_watch(w->xs, be, REFUSED_TOKEN)) {
		return;
	}
	for (;;) {
		struct pollfd pfd[2] = {
			{ .fd = fd, .events = POLLIN },
			{ .fd = w->sig_fd, .events = POLLIN },
		};
		char **ev;
		char *online;
		int ex;

		while ((ev = xs_check_watch(w->xs)) != NULL) {
			free(ev);
		}
		if (errno != EAGAIN) {
			break; /* xenstore connection lost */
		}
		ex = vd_ctl_xs_exists(w->xs, XBT_NULL, be);
		if (ex <= 0) {
			break;
		}
		online = vd_ctl_xs_read(w->xs, XBT_NULL, be, "online", 8);
		if (online != NULL && strcmp(online, "0") == 0) {
			free(online);
			/* Only while the dir exists: never recreate it. */
			vd_ctl_mark_closed(w->xs, be);
			break;
		}
		free(online);
		if (poll(pfd, 2, -1) < 0 && errno != EINTR) {
			break;
		}
		if ((pfd[1].revents & POLLIN) && got_signal(w)) {
			break;
		}
	}
	xs_unwatch(w->xs, be, REFUSED_TOKEN);
}

static void refuse(struct worker *w, const struct vd_err *err)
{
	const char *why = vd_err_msg(err);
	int r;

	vd_log(VD_LOG_ERR, "cannot serve %s: %s", w->o->be_path, why);
	r = vd_ctl_report_error(w->xs, w->o->be_path, why);
	if (r < 0) {
		vd_log(VD_LOG_WARN, "could not report the error in xenstore: %s", strerror(-r));
		return;
	}
	wait_after_refusal(w);
}

/* Returns 0 to exit cleanly, 1 on a xenstore failure. */
static int serve(struct worker *w)
{
	int xs_fd = xs_fileno(w->xs);

	for (;;) {
		struct pollfd pfd[5] = {
			{ .fd = xs_fd, .events = POLLIN },
			{ .fd = w->halt_fd, .events = POLLIN },
			{ .fd = w->sig_fd, .events = POLLIN },
			{ .fd = w->stats_fd, .events = POLLIN },      /* -1: ignored */
			{ .fd = nbd_export_fd(w), .events = POLLIN }, /* -1: ignored */
		};
		char **ev;

		if (poll(pfd, 5, -1) < 0) {
			if (errno == EINTR) {
				continue;
			}
			vd_log(VD_LOG_ERR, "poll: %s", strerror(errno));
			return 1;
		}
		if ((pfd[2].revents & POLLIN) && got_signal(w)) {
			return 0;
		}
		if (pfd[1].revents & POLLIN) {
			take_halt(w);
		}
		if (pfd[3].revents & POLLIN) {
			stats_serve(w);
		}
#ifdef VD_HAVE_NBD
		if ((pfd[4].revents & POLLIN) && w->nbd != NULL) {
			vd_nbd_server_accept(w->nbd);
		}
#endif
		if (pfd[0].revents & (POLLIN | POLLHUP | POLLERR)) {
			while ((ev = xs_check_watch(w->xs)) != NULL) {
				int r;

				if (is_polling_key(w, ev[XS_WATCH_PATH])) {
					read_polling(w);
				}
				r = vd_xenbus_backend_handle_watch(w->backend, ev[XS_WATCH_PATH],
								   ev[XS_WATCH_TOKEN]);
				free(ev);
				if (r == 1) {
					vd_log(VD_LOG_INFO, "VBD finished");
					return 0;
				}
			}
			if (errno != EAGAIN) {
				vd_log(VD_LOG_ERR, "xenstore connection lost: %s", strerror(errno));
				return 1;
			}
		}
	}
}

int vd_worker_run(const struct vd_worker_opts *o)
{
	struct worker w = { .o = o, .sig_fd = -1, .halt_fd = -1, .stats_fd = -1 };
	struct vd_err err = { 0 };
	struct vd_image_opts iopts;
	struct vd_image_info info;
	char ident[64];
	int rc = 1;
	int r;

	snprintf(w.name, sizeof(w.name), "d%u/%u", o->domid, o->devid);
	snprintf(ident, sizeof(ident), "worker %s", w.name);
	vd_log_set_ident(ident);
	pthread_mutex_init(&w.halt_lock, NULL);

	/* Signals first: threads (libxenstore's, the queues') inherit the mask. */
	if (setup_signals(&w) < 0) {
		vd_log(VD_LOG_ERR, "signalfd: %s", strerror(errno));
		goto out;
	}
	w.halt_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (w.halt_fd < 0) {
		vd_log(VD_LOG_ERR, "eventfd: %s", strerror(errno));
		goto out;
	}
	w.xs = xs_open(0);
	if (w.xs == NULL) {
		vd_log(VD_LOG_ERR, "cannot open xenstore: %s", strerror(errno));
		goto out;
	}
	/* Before any watch: events are signalled on this fd only once it exists. */
	if (xs_fileno(w.xs) < 0) {
		vd_log(VD_LOG_ERR, "xenstore fd: %s", strerror(errno));
		goto out;
	}
	rc = 0; /* from here on, failures are reported in xenstore, not by exit status */

	r = vd_vbd_conf_read(w.xs, o->be_path, o->domid, &w.conf, &err);
	if (r < 0) {
		refuse(&w, &err);
		goto out;
	}
	r = vd_vbd_conf_add_backing_dirs(&w.conf, o->backing_dirs, o->n_backing_dirs, &err);
	if (r < 0) {
		refuse(&w, &err);
		goto out;
	}
	vd_vbd_image_opts(&w.conf, &iopts);
	r = vd_image_open(w.conf.params, &iopts, &w.image, &err);
	if (r < 0) {
		if (err.errnum == 0) {
			vd_err_set(&err, -r, "opening %s", w.conf.params);
		}
		refuse(&w, &err);
		goto out;
	}
	r = vd_image_get_info(w.image, &info);
	if (r < 0) {
		vd_err_set(&err, -r, "reading the geometry of %s", w.conf.params);
		refuse(&w, &err);
		goto out;
	}
	vd_vbd_make_caps(&w.conf, &info, &w.caps);
	vd_log(VD_LOG_INFO, "image %s: %s, %llu bytes, sector %u%s%s", w.conf.params,
	       info.format != NULL ? info.format : "?", (unsigned long long)info.size_bytes,
	       w.caps.sector_bytes, w.caps.readonly ? ", read-only" : "",
	       w.caps.discard ? ", discard" : "");

	r = vd_transport_open(o->transport != NULL ? o->transport : "xen", &w.transport, &err);
	if (r < 0) {
		refuse(&w, &err);
		goto out;
	}
	r = vd_transport_attach_domain(w.transport, w.conf.frontend_id, &err);
	if (r < 0) {
		refuse(&w, &err);
		goto out;
	}
	w.domain_attached = true;

	r = vd_xenbus_backend_create(w.xs, o->be_path, &w.caps, &g_ops, &w, &w.backend, &err);
	if (r < 0) {
		refuse(&w, &err);
		goto out;
	}
	stats_open(&w);
	rc = serve(&w);
out:
	/* Stop the queues first (in-flight I/O completes), then the state machine;
	 * disconnect is idempotent, the backend may call it again. */
	vbd_disconnect(&w);
	stats_close(&w);
	if (w.backend != NULL) {
		vd_xenbus_backend_destroy(w.backend);
	}
	if (w.domain_attached) {
		vd_transport_detach_domain(w.transport, w.conf.frontend_id);
	}
	if (w.transport != NULL) {
		vd_transport_close(w.transport);
	}
	if (w.image != NULL) {
		vd_image_close(w.image);
	}
	vd_vbd_conf_fini(&w.conf);
	xs_close(w.xs);
	if (w.halt_fd >= 0) {
		close(w.halt_fd);
	}
	if (w.sig_fd >= 0) {
		close(w.sig_fd);
	}
	pthread_mutex_destroy(&w.halt_lock);
	return rc;
}
