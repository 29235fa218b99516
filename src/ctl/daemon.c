/*
 * vdiskd: watches backend/vbd3 in xenstore and runs one worker process per
 * VBD (forked, not exec'd), as tapdisk runs one process per disk: a crash or
 * a hostile guest takes down one disk only.
 *
 * One thread, one poll(): the xenstore watch fd and a signalfd (SIGCHLD,
 * SIGTERM, SIGINT). Each batch of watch events leads to one rescan of the
 * tree; the scan compares what is there with what we know:
 *
 *   new dir, online=1      fork a worker (once per appearance of the dir)
 *   dir gone               forget it once its worker (if any) has exited
 *   worker exits 0         forget the pid
 *   worker crashes         log, vdisk-error + state=5 if the dir still
 *                          exists, no respawn; later online=0 -> state=6
 *   @releaseDomain         SIGTERM the workers of domains that are gone
 *
 * We never remove anything from xenstore: the toolstack owns the dirs.
 */
#define _GNU_SOURCE
#include "ctl/ctl-int.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include "common/log.h"

#define VBDS_TOKEN              "vdiskd-vbds"
#define RELEASE_TOKEN           "vdiskd-release"
#define KILL_TIMEOUT_MS_DEFAULT 5000u

struct vbd_ent {
	struct vbd_ent *next;
	uint16_t domid;
	uint32_t devid;
	char be[VD_CTL_PATH_MAX];
	pid_t pid;          /* running worker, 0: none */
	bool spawned;       /* a worker was started for this appearance of the dir */
	bool crashed;       /* and it crashed */
	bool closed_marked; /* we wrote state=6 after online=0 for a crashed VBD */
	bool present;       /* the dir existed at the last scan */
	bool seen;          /* scan scratch */
	bool term_sent;     /* its domain died: SIGTERM sent */
};

struct daemon {
	const struct vd_daemon_opts *o;
	struct xs_handle *xs;
	int xs_fd;
	int sig_fd;
	char root[VD_CTL_PATH_MAX]; /* <dom0 path>/backend/vbd3 */
	int lock_fd;                /* run dir's vdiskd.lock, flock()ed: one vdiskd */
	struct vbd_ent *vbds;
	unsigned int nr_vbds;
	unsigned int nr_workers;
};

static struct vbd_ent *find_ent(struct daemon *d, uint16_t domid, uint32_t devid)
{
	for (struct vbd_ent *e = d->vbds; e != NULL; e = e->next) {
		if (e->domid == domid && e->devid == devid) {
			return e;
		}
	}
	return NULL;
}

static struct vbd_ent *find_pid(struct daemon *d, pid_t pid)
{
	for (struct vbd_ent *e = d->vbds; e != NULL; e = e->next) {
		if (e->pid == pid) {
			return e;
		}
	}
	return NULL;
}

static void free_all(struct daemon *d)
{
	while (d->vbds != NULL) {
		struct vbd_ent *e = d->vbds;

		d->vbds = e->next;
		free(e);
	}
	d->nr_vbds = 0;
}

VD_NORETURN static void child_main(struct daemon *d, struct vbd_ent *e)
{
	struct vd_worker_opts wo = { .domid = e->domid,
				     .devid = e->devid,
				     .transport = d->o->transport,
				     .backing_dirs = d->o->backing_dirs,
				     .n_backing_dirs = d->o->n_backing_dirs };
	char be[VD_CTL_PATH_MAX];
	sigset_t set;
	int rc;

	memcpy(be, e->be, sizeof(be));
	wo.be_path = be;
	/* The parent's connection is not ours to use: throw it away, open our own. */
	close(d->sig_fd);
	/* a worker that outlives vdiskd must not keep a new one from starting */
	close(d->lock_fd);
	xs_daemon_destroy_postfork(d->xs);
	d->xs = NULL;
	free_all(d);
	/* Keep SIGTERM/SIGINT blocked (the worker takes them by signalfd). */
	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigprocmask(SIG_SETMASK, &set, NULL);
	(void)signal(SIGPIPE, SIG_IGN);
	rc = vd_worker_run(&wo);
	_exit(rc);
}

static void spawn(struct daemon *d, struct vbd_ent *e)
{
	pid_t pid;

	e->spawned = true; /* at most once per appearance, whatever happens */
	pid = fork();
	if (pid < 0) {
		char why[96];

		snprintf(why, sizeof(why), "cannot start a worker: %s", strerror(errno));
		vd_log(VD_LOG_ERR, "d%u/%u: %s", e->domid, e->devid, why);
		vd_ctl_report_error(d->xs, e->be, why);
		e->crashed = true;
		return;
	}
	if (pid == 0) {
		child_main(d, e);
	}
	e->pid = pid;
	d->nr_workers++;
	vd_log(VD_LOG_INFO, "d%u/%u: worker %d started", e->domid, e->devid, (int)pid);
}

/* "1", "0", or NULL (absent or unreadable: not online). */
static bool is_online(struct daemon *d, const struct vbd_ent *e, bool *offline)
{
	char *v = vd_ctl_xs_read(d->xs, XBT_NULL, e->be, "online", 8);
	bool on = v != NULL && strcmp(v, "1") == 0;

	*offline = v != NULL && strcmp(v, "0") == 0;
	free(v);
	return on;
}

static struct vbd_ent *add_ent(struct daemon *d, uint16_t domid, uint32_t devid)
{
	struct vbd_ent *e;

	if (d->nr_vbds >= VD_CTL_MAX_VBDS) {
		vd_log_ratelimited(VD_LOG_WARN, "more than %d VBDs: ignoring d%u/%u",
				   VD_CTL_MAX_VBDS, domid, devid);
		return NULL;
	}
	e = calloc(1, sizeof(*e));
	if (e == NULL) {
		vd_log_ratelimited(VD_LOG_ERR, "out of memory tracking d%u/%u", domid, devid);
		return NULL;
	}
	e->domid = domid;
	e->devid = devid;
	snprintf(e->be, sizeof(e->be), "%s/%u/%u", d->root, domid, devid);
	e->next = d->vbds;
	d->vbds = e;
	d->nr_vbds++;
	return e;
}

static void mark_domain_seen(struct daemon *d, uint16_t domid)
{
	for (struct vbd_ent *e = d->vbds; e != NULL; e = e->next) {
		if (e->domid == domid) {
			e->seen = true;
		}
	}
}

static void scan_domain(struct daemon *d, const char *dom_name)
{
	char path[VD_CTL_PATH_MAX];
	unsigned int n = 0;
	uint16_t domid;
	uint32_t devid;
	char **devs;

	if (vd_ctl_parse_vbd_names(dom_name, "0", &domid, &devid) < 0) {
		vd_log_ratelimited(VD_LOG_WARN, "ignoring %s/%.40s: not a domid", d->root,
				   dom_name);
		return;
	}
	snprintf(path, sizeof(path), "%s/%u", d->root, domid);
	devs = xs_directory(d->xs, XBT_NULL, path, &n);
	if (devs == NULL) {
		if (errno != ENOENT) {
			/* Not an answer about what exists: keep what we know. */
			vd_log_ratelimited(VD_LOG_WARN, "listing %s: %s", path, strerror(errno));
			mark_domain_seen(d, domid);
		}
		return;
	}
	for (unsigned int i = 0; i < n; i++) {
		struct vbd_ent *e;

		if (vd_ctl_parse_vbd_names(dom_name, devs[i], &domid, &devid) < 0) {
			vd_log_ratelimited(VD_LOG_WARN, "ignoring %s/%.40s: not a devid", path,
					   devs[i]);
			continue;
		}
		e = find_ent(d, domid, devid);
		if (e == NULL) {
			e = add_ent(d, domid, devid);
		}
		if (e != NULL) {
			e->seen = true;
		}
	}
	free(devs);
}

static void scan(struct daemon *d)
{
	unsigned int n = 0;
	char **doms;

	for (struct vbd_ent *e = d->vbds; e != NULL; e = e->next) {
		e->seen = false;
	}
	doms = xs_directory(d->xs, XBT_NULL, d->root, &n);
	if (doms == NULL) {
		if (errno != ENOENT) {
			vd_log_ratelimited(VD_LOG_WARN, "listing %s: %s", d->root, strerror(errno));
			return;
		}
		n = 0;
	}
	for (unsigned int i = 0; i < n; i++) {
		scan_domain(d, doms[i]);
	}
	free(doms);

	for (struct vbd_ent **pe = &d->vbds; *pe != NULL;) {
		struct vbd_ent *e = *pe;
		bool offline;

		if (!e->seen) {
			if (e->present) {
				vd_log(VD_LOG_INFO, "d%u/%u: removed", e->domid, e->devid);
			}
			e->present = false;
			if (e->pid == 0) {
				*pe = e->next;
				d->nr_vbds--;
				free(e);
				continue;
			}
			pe = &e->next;
			continue;
		}
		if (!e->present) {
			/* A new appearance of the dir: it gets one worker. */
			e->present = true;
			e->spawned = false;
			e->crashed = false;
			e->closed_marked = false;
			e->term_sent = false;
		}
		if (!e->spawned && e->pid == 0) {
			/* A previous appearance's worker must be gone before a new one starts. */
			if (is_online(d, e, &offline)) {
				spawn(d, e);
			}
		} else if (e->crashed && e->pid == 0 && !e->closed_marked) {
			/* Nobody serves it: let the toolstack's detach complete. */
			if (!is_online(d, e, &offline) && offline) {
				e->closed_marked = true;
				vd_ctl_mark_closed(d->xs, e->be);
			}
		}
		pe = &e->next;
	}
}

static void reap(struct daemon *d, bool report)
{
	int status;
	pid_t pid;

	while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
		struct vbd_ent *e = find_pid(d, pid);
		char why[64];

		if (e == NULL) {
			continue;
		}
		e->pid = 0;
		d->nr_workers--;
		if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
			vd_log(VD_LOG_INFO, "d%u/%u: worker %d exited", e->domid, e->devid,
			       (int)pid);
			continue;
		}
		if (WIFSIGNALED(status)) {
			snprintf(why, sizeof(why), "worker crashed: signal %d", WTERMSIG(status));
		} else {
			snprintf(why, sizeof(why), "worker exited with status %d",
				 WIFEXITED(status) ? WEXITSTATUS(status) : -1);
		}
		vd_log(VD_LOG_ERR, "d%u/%u: %s (pid %d)", e->domid, e->devid, why, (int)pid);
		e->crashed = true;
		if (report && e->present) {
			int r = vd_ctl_report_error(d->xs, e->be, why);

			if (r < 0 && r != -ENOENT) {
				vd_log(VD_LOG_WARN, "d%u/%u: cannot report in xenstore: %s",
				       e->domid, e->devid, strerror(-r));
			}
		}
	}
}

static void domains_released(struct daemon *d)
{
	for (struct vbd_ent *e = d->vbds; e != NULL; e = e->next) {
		char dom[32];
		int r;

		if (e->pid == 0 || e->term_sent) {
			continue;
		}
		snprintf(dom, sizeof(dom), "/local/domain/%u", e->domid);
		r = vd_ctl_xs_exists(d->xs, XBT_NULL, dom);
		if (r == 0) {
			vd_log(VD_LOG_INFO, "d%u/%u: domain %u is gone, stopping its worker",
			       e->domid, e->devid, e->domid);
			kill(e->pid, SIGTERM);
			e->term_sent = true;
		}
	}
}

/* Returns true when asked to stop. */
static bool handle_signals(struct daemon *d, bool report)
{
	struct signalfd_siginfo si;
	bool stop = false;

	while (read(d->sig_fd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
		if (si.ssi_signo == SIGCHLD) {
			continue; /* reaped below: one SIGCHLD may stand for several children */
		}
		if (si.ssi_signo == SIGTERM || si.ssi_signo == SIGINT) {
			vd_log(VD_LOG_NOTICE, "signal %u: shutting down", si.ssi_signo);
			stop = true;
		}
	}
	reap(d, report);
	return stop;
}

static void shutdown_workers(struct daemon *d)
{
	unsigned int timeout_ms =
		d->o->kill_timeout_ms ? d->o->kill_timeout_ms : KILL_TIMEOUT_MS_DEFAULT;
	uint64_t deadline = vd_now_ns() + (uint64_t)timeout_ms * 1000000ull;

	for (struct vbd_ent *e = d->vbds; e != NULL; e = e->next) {
		if (e->pid != 0) {
			kill(e->pid, SIGTERM);
		}
	}
	reap(d, false);
	while (d->nr_workers > 0) {
		uint64_t now = vd_now_ns();
		struct pollfd pfd = { .fd = d->sig_fd, .events = POLLIN };

		if (now >= deadline) {
			break;
		}
		poll(&pfd, 1, (int)VD_DIV_ROUND_UP(deadline - now, 1000000ull));
		handle_signals(d, false);
	}
	if (d->nr_workers > 0) {
		vd_log(VD_LOG_WARN, "%u worker(s) did not stop within %u ms: killing them",
		       d->nr_workers, timeout_ms);
		for (struct vbd_ent *e = d->vbds; e != NULL; e = e->next) {
			if (e->pid != 0) {
				kill(e->pid, SIGKILL);
			}
		}
		for (struct vbd_ent *e = d->vbds; e != NULL; e = e->next) {
			if (e->pid != 0) {
				waitpid(e->pid, NULL, 0);
				e->pid = 0;
				d->nr_workers--;
			}
		}
	}
}

static int daemonize(void)
{
	pid_t pid = fork();
	int fd;

	if (pid < 0) {
		return -errno;
	}
	if (pid > 0) {
		_exit(0);
	}
	if (setsid() < 0) {
		return -errno;
	}
	if (chdir("/") < 0) {
		return -errno;
	}
	fd = open("/dev/null", O_RDWR | O_CLOEXEC);
	if (fd >= 0) {
		dup2(fd, STDIN_FILENO);
		if (fd != STDIN_FILENO) {
			close(fd);
		}
	}
	/* stdout/stderr stay: the log goes there (redirect it, or use a supervisor). */
	return 0;
}

static int setup(struct daemon *d)
{
	char *dom0;

	d->xs = xs_open(0);
	if (d->xs == NULL) {
		vd_log(VD_LOG_ERR, "cannot open xenstore: %s", strerror(errno));
		return -1;
	}
	d->xs_fd = xs_fileno(d->xs);
	if (d->xs_fd < 0) {
		vd_log(VD_LOG_ERR, "xenstore fd: %s", strerror(errno));
		return -1;
	}
	dom0 = xs_get_domain_path(d->xs, 0);
	if (dom0 != NULL && dom0[0] == '/' && strlen(dom0) < 64) {
		snprintf(d->root, sizeof(d->root), "%s/backend/%s", dom0, VD_CTL_BACKEND_KIND);
	} else {
		snprintf(d->root, sizeof(d->root), "%s", VD_CTL_BACKEND_ROOT);
	}
	free(dom0);
	if (!xs_mkdir(d->xs, XBT_NULL, d->root)) {
		vd_log(VD_LOG_ERR, "cannot create %s: %s", d->root, strerror(errno));
		return -1;
	}
	if (!xs_watch(d->xs, d->root, VBDS_TOKEN)) {
		vd_log(VD_LOG_ERR, "cannot watch %s: %s", d->root, strerror(errno));
		return -1;
	}
	if (!xs_watch(d->xs, "@releaseDomain", RELEASE_TOKEN)) {
		/* Not fatal: workers also see their VBD go when the toolstack cleans up. */
		vd_log(VD_LOG_WARN, "cannot watch @releaseDomain: %s", strerror(errno));
	}
	vd_log(VD_LOG_NOTICE, "watching %s (transport %s)", d->root,
	       d->o->transport != NULL ? d->o->transport : "xen");
	return 0;
}

int vd_ctl_run_dir(const char *transport, char *buf, size_t len)
{
	const char *dir = getenv("VDISK_RUN_DIR");
	int n;

	if (dir != NULL && dir[0] != '\0') {
		n = snprintf(buf, len, "%s", dir);
	} else if (transport != NULL && strcmp(transport, "sim") == 0) {
		const char *sim = getenv("VDISK_SIM_DIR");

		n = snprintf(buf, len, "%s/run",
			     sim != NULL && sim[0] != '\0' ? sim : "/run/vdisk-sim");
	} else {
		n = snprintf(buf, len, "/run/vdisk");
	}
	return n < 0 || (size_t)n >= len ? -ENAMETOOLONG : 0;
}

/*
 * One vdiskd per run dir (and so per host or sim): two would both fork
 * workers for every VBD. An exclusive flock on run-dir/vdiskd.lock, held
 * by the daemon's open file description until it exits (or is killed);
 * the file holds the owner's pid, for the message.
 */
static int take_daemon_lock(struct daemon *d)
{
	char dir[160], path[192], pid[32] = "";
	ssize_t n;
	int fd;

	if (vd_ctl_run_dir(d->o->transport, dir, sizeof(dir)) < 0) {
		vd_log(VD_LOG_ERR, "the run dir name is too long");
		return -1;
	}
	if (mkdir(dir, 0700) < 0 && errno != EEXIST) {
		vd_log(VD_LOG_ERR, "cannot create the run dir %s: %s", dir, strerror(errno));
		return -1;
	}
	snprintf(path, sizeof(path), "%s/vdiskd.lock", dir);
	fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (fd < 0) {
		vd_log(VD_LOG_ERR, "cannot open %s: %s", path, strerror(errno));
		return -1;
	}
	if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
		int e = errno;

		n = pread(fd, pid, sizeof(pid) - 1, 0);
		pid[n > 0 ? n : 0] = '\0';
		pid[strcspn(pid, "\n")] = '\0';
		if (e == EWOULDBLOCK) {
			vd_log(VD_LOG_ERR, "another vdiskd (pid %s) is running with run dir %s",
			       pid[0] ? pid : "?", dir);
		} else {
			vd_log(VD_LOG_ERR, "cannot lock %s: %s", path, strerror(e));
		}
		close(fd);
		return -1;
	}
	d->lock_fd = fd;
	return 0;
}

static void write_daemon_pid(struct daemon *d)
{
	char pid[32];
	int n = snprintf(pid, sizeof(pid), "%d\n", (int)getpid());

	if (ftruncate(d->lock_fd, 0) < 0 || pwrite(d->lock_fd, pid, (size_t)n, 0) != n) {
		vd_log(VD_LOG_WARN, "cannot record the pid in the lock file: %s", strerror(errno));
	}
}

int vd_daemon_run(const struct vd_daemon_opts *o)
{
	struct daemon d = { .o = o, .xs_fd = -1, .sig_fd = -1, .lock_fd = -1 };
	sigset_t set;
	bool stop = false;
	int rc = 1;

	vd_log_set_ident("vdiskd");
	/* Before detaching: a second vdiskd fails where its caller sees it. */
	if (take_daemon_lock(&d) < 0) {
		return 1;
	}
	if (!o->foreground && daemonize() < 0) {
		vd_log(VD_LOG_ERR, "cannot detach: %s", strerror(errno));
		return 1;
	}
	/* Before xs_open: libxenstore's thread must inherit the blocked mask. */
	sigemptyset(&set);
	sigaddset(&set, SIGCHLD);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	if (sigprocmask(SIG_BLOCK, &set, NULL) < 0) {
		return 1;
	}
	(void)signal(SIGPIPE, SIG_IGN);
	write_daemon_pid(&d); /* after daemonize: the pid that stays */
	d.sig_fd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
	if (d.sig_fd < 0) {
		vd_log(VD_LOG_ERR, "signalfd: %s", strerror(errno));
		return 1;
	}
	if (setup(&d) < 0) {
		goto out;
	}
	scan(&d);
	while (!stop) {
		struct pollfd pfd[2] = {
			{ .fd = d.xs_fd, .events = POLLIN },
			{ .fd = d.sig_fd, .events = POLLIN },
		};
		bool rescan = false, released = false;
		char **ev;

		if (poll(pfd, 2, -1) < 0) {
			if (errno == EINTR) {
				continue;
			}
			vd_log(VD_LOG_ERR, "poll: %s", strerror(errno));
			break;
		}
		if (pfd[1].revents & POLLIN) {
			stop = handle_signals(&d, true);
			rescan = true; /* a worker gone may let a re-created dir start */
		}
		if (pfd[0].revents & (POLLIN | POLLHUP | POLLERR)) {
			while ((ev = xs_check_watch(d.xs)) != NULL) {
				if (strcmp(ev[XS_WATCH_TOKEN], RELEASE_TOKEN) == 0) {
					released = true;
				} else {
					rescan = true;
				}
				free(ev);
			}
			if (errno != EAGAIN) {
				vd_log(VD_LOG_ERR, "xenstore connection lost: %s", strerror(errno));
				break;
			}
		}
		if (!stop && rescan) {
			scan(&d);
		}
		if (!stop && released) {
			domains_released(&d);
		}
	}
	rc = stop ? 0 : 1;
out:
	shutdown_workers(&d);
	free_all(&d);
	if (d.xs != NULL) {
		xs_close(d.xs);
	}
	close(d.sig_fd);
	close(d.lock_fd);
	vd_log(VD_LOG_NOTICE, "exiting");
	return rc;
}
