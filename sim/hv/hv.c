/*
 * The simulated hypervisor: an epoll loop over the hv.sock listener, its
 * client connections, a signalfd and the embedded xenstored.
 *
 * Every client is untrusted: requests are fixed-size and fully validated,
 * fds a client sends are closed, and a client that does not read its
 * responses is dropped (responses are sent with MSG_DONTWAIT), so no client
 * can crash, block or bloat the hypervisor. Resources are bounded by the
 * VD_HVC_MAX_* limits of hvc-proto.h.
 *
 * Domain 0 is implicit and shared by all connections that did not create a
 * domain; each of them owns the dom0 ports it opened (like a
 * /dev/xen/evtchn handle), which close with the connection.
 */
#define _GNU_SOURCE
#include "sim/hv/hv.h"
#include "common/log.h"
#include "transport/sim/hvc.h"
#include "transport/sim/hvc-proto.h"
#ifdef VD_HAVE_SIM_XS
#include "sim/xs/xs.h"
#endif

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#define HV_MSGS_PER_WAKEUP 16
#define HV_MAX_EVENTS      64

enum { PORT_FREE = 0, PORT_UNBOUND, PORT_INTERDOMAIN };

struct hv_conn;

struct hv_port {
	uint8_t state;
	uint16_t remote_domid;
	uint32_t remote_port;
	int efd; /* events TO this port; the client polls its dup */
	/*
	 * Unbound after its peer closed: the closed peer's eventfd, kept for the
	 * next port that binds to us. Our client may have cached it as its
	 * notify target, so the rebound peer gets exactly that eventfd and a
	 * restarted backend keeps receiving the guest's events.
	 */
	int stash_efd;
	struct hv_conn *owner;
};

struct hv_dom {
	bool alive;
	uint16_t domid;
	int mem_fd;
	int gnt_fd;
	uint64_t mem_bytes;
	uint32_t nr_grant_entries;
	struct hv_port *ports; /* VD_HVC_MAX_PORTS entries, port 0 unused */
	bool xs_listening;
	bool xs_introduced;
};

struct hv_conn {
	int fd;
	struct hv_dom *dom; /* the domain this connection created; NULL: dom0 */
	struct hv_conn *prev, *next;
};

struct hv {
	char dir[PATH_MAX];
	char sock_path[sizeof(((struct sockaddr_un *)0)->sun_path)];
	char pid_path[PATH_MAX];
	int ep;
	int lsock;
	int sfd;
	sigset_t old_mask;
	bool mask_set;
	bool pid_written;
	struct hv_dom dom0;
	struct hv_dom doms[VD_HVC_MAX_DOMAINS];
	struct hv_conn *conns;
	unsigned int nr_conns;
#ifdef VD_HAVE_SIM_XS
	struct vd_xs_server *xs;
	char xs_path[sizeof(((struct sockaddr_un *)0)->sun_path)];
#endif
};

/* epoll cookies for the non-connection fds */
static char tag_listen, tag_signal, tag_xs;

/* ---- domains and ports ---- */

static struct hv_dom *find_dom(struct hv *hv, uint32_t domid)
{
	if (domid == 0) {
		return &hv->dom0;
	}
	for (unsigned int i = 0; i < VD_HVC_MAX_DOMAINS; i++) {
		if (hv->doms[i].alive && hv->doms[i].domid == domid) {
			return &hv->doms[i];
		}
	}
	return NULL;
}

static struct hv_dom *conn_dom(struct hv *hv, struct hv_conn *c)
{
	return c->dom != NULL ? c->dom : &hv->dom0;
}

static struct hv_port *ports_alloc(void)
{
	struct hv_port *p = calloc(VD_HVC_MAX_PORTS, sizeof(*p));

	if (p != NULL) {
		for (unsigned int i = 0; i < VD_HVC_MAX_PORTS; i++) {
			p[i].efd = -1;
			p[i].stash_efd = -1;
		}
	}
	return p;
}

/* The port `port` of d if it is open and owned by c, else NULL. */
static struct hv_port *owned_port(struct hv_dom *d, struct hv_conn *c, uint32_t port)
{
	struct hv_port *p;

	if (port == 0 || port >= VD_HVC_MAX_PORTS) {
		return NULL;
	}
	p = &d->ports[port];
	if (p->state == PORT_FREE || p->owner != c) {
		return NULL;
	}
	return p;
}

static void close_port(struct hv *hv, struct hv_dom *d, uint32_t port)
{
	struct hv_port *p = &d->ports[port];

	if (p->state == PORT_INTERDOMAIN) {
		/* As in Xen, the peer's end falls back to unbound, for us. */
		struct hv_dom *rd = find_dom(hv, p->remote_domid);

		if (rd != NULL && p->remote_port < VD_HVC_MAX_PORTS) {
			struct hv_port *rp = &rd->ports[p->remote_port];

			if (rp->state == PORT_INTERDOMAIN && rp->remote_domid == d->domid &&
			    rp->remote_port == port) {
				rp->state = PORT_UNBOUND;
				rp->remote_port = 0;
				assert(rp->stash_efd < 0);
				rp->stash_efd = p->efd;
				p->efd = -1;
			}
		}
	}
	if (p->efd >= 0) {
		close(p->efd);
	}
	if (p->stash_efd >= 0) {
		close(p->stash_efd);
	}
	memset(p, 0, sizeof(*p));
	p->efd = -1;
	p->stash_efd = -1;
}

/*
 * Allocate the lowest free port of d, with *efd (taken over) or, if *efd is
 * -1, a fresh eventfd.
 */
static int port_alloc(struct hv_dom *d, struct hv_conn *owner, int *efd, uint32_t *out)
{
	*out = 0; /* port 0 is never valid */
	for (uint32_t i = 1; i < VD_HVC_MAX_PORTS; i++) {
		struct hv_port *p = &d->ports[i];

		if (p->state != PORT_FREE) {
			continue;
		}
		if (*efd >= 0) {
			p->efd = *efd;
			*efd = -1;
		} else {
			p->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
			if (p->efd < 0) {
				return -errno;
			}
		}
		p->owner = owner;
		*out = i;
		return 0;
	}
	return -ENOSPC;
}

static void domain_destroy(struct hv *hv, struct hv_dom *d)
{
	char path[sizeof(((struct sockaddr_un *)0)->sun_path)];

	if (d->ports != NULL) {
		for (uint32_t i = 1; i < VD_HVC_MAX_PORTS; i++) {
			if (d->ports[i].state != PORT_FREE) {
				close_port(hv, d, i);
			}
		}
		free(d->ports);
		d->ports = NULL;
	}
	if (d->mem_fd >= 0) {
		close(d->mem_fd);
	}
	if (d->gnt_fd >= 0) {
		close(d->gnt_fd);
	}
	d->mem_fd = -1;
	d->gnt_fd = -1;
	snprintf(path, sizeof(path), "%s/xenstored.d%u", hv->dir, d->domid);
#ifdef VD_HAVE_SIM_XS
	if (d->xs_introduced) {
		vd_xs_server_release_domain(hv->xs, d->domid);
	}
	if (d->xs_listening) {
		vd_xs_server_unlisten(hv->xs, path);
	}
#endif
	d->xs_introduced = false;
	d->xs_listening = false;
	if (d->alive && d->domid != 0) {
		vd_log(VD_LOG_INFO, "sim hv: domain %u destroyed", d->domid);
	}
	d->alive = false;
}

static int make_memfd(const char *name, uint64_t bytes)
{
	int fd = memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING);

	if (fd < 0) {
		return -errno;
	}
	/* Sealed: nobody (a guest included) can shrink it under a mapping. */
	if (ftruncate(fd, (off_t)bytes) < 0 ||
	    fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) < 0) {
		int ret = -errno;

		close(fd);
		return ret;
	}
	return fd;
}

static int domain_create(struct hv *hv, struct hv_conn *c, const struct vd_hvc_req *req,
			 struct hv_dom **out)
{
	struct hv_dom *d = NULL;
	uint32_t domid = req->domid;
	uint64_t gbytes;
	char name[64];
	int ret;

	if (c->dom != NULL) {
		return -EEXIST;
	}
	for (uint32_t i = 1; i < VD_HVC_MAX_PORTS; i++) {
		if (hv->dom0.ports[i].state != PORT_FREE && hv->dom0.ports[i].owner == c) {
			return -EBUSY; /* already acting as dom0 */
		}
	}
	if (req->mem_bytes == 0 || req->mem_bytes > VD_HVC_MAX_MEM_BYTES ||
	    !VD_IS_ALIGNED(req->mem_bytes, (uint64_t)VD_PAGE_SIZE) || req->nr_grant_entries == 0 ||
	    req->nr_grant_entries > VD_HVC_MAX_GRANT_ENTRIES || domid > VD_HVC_MAX_DOMID) {
		return -EINVAL;
	}
	if (domid == 0) {
		for (domid = 1; domid <= VD_HVC_MAX_DOMID && find_dom(hv, domid) != NULL; domid++) {
		}
	} else if (find_dom(hv, domid) != NULL) {
		return -EEXIST;
	}
	for (unsigned int i = 0; i < VD_HVC_MAX_DOMAINS; i++) {
		if (!hv->doms[i].alive) {
			d = &hv->doms[i];
			break;
		}
	}
	if (d == NULL || domid > VD_HVC_MAX_DOMID) {
		return -ENOSPC;
	}
	memset(d, 0, sizeof(*d));
	d->domid = (uint16_t)domid;
	d->mem_fd = -1;
	d->gnt_fd = -1;
	d->mem_bytes = req->mem_bytes;
	d->nr_grant_entries = req->nr_grant_entries;
	gbytes = VD_ALIGN_UP((uint64_t)req->nr_grant_entries * sizeof(struct grant_entry_v1),
			     (uint64_t)VD_PAGE_SIZE);
	d->ports = ports_alloc();
	if (d->ports == NULL) {
		ret = -ENOMEM;
		goto err;
	}
	snprintf(name, sizeof(name), "vdisk-d%u-ram", domid);
	d->mem_fd = make_memfd(name, req->mem_bytes);
	if (d->mem_fd < 0) {
		ret = d->mem_fd;
		goto err;
	}
	snprintf(name, sizeof(name), "vdisk-d%u-gnttab", domid);
	d->gnt_fd = make_memfd(name, gbytes);
	if (d->gnt_fd < 0) {
		ret = d->gnt_fd;
		goto err;
	}
	d->alive = true;
#ifdef VD_HAVE_SIM_XS
	{
		char path[sizeof(((struct sockaddr_un *)0)->sun_path)];

		snprintf(path, sizeof(path), "%s/xenstored.d%u", hv->dir, domid);
		ret = vd_xs_server_listen(hv->xs, path, d->domid);
		if (ret < 0) {
			goto err;
		}
		d->xs_listening = true;
		ret = vd_xs_server_introduce_domain(hv->xs, d->domid);
		if (ret < 0) {
			goto err;
		}
		d->xs_introduced = true;
	}
#endif
	c->dom = d;
	*out = d;
	vd_log(VD_LOG_INFO, "sim hv: domain %u created (%llu bytes, %u grant entries)", domid,
	       (unsigned long long)req->mem_bytes, req->nr_grant_entries);
	return 0;

err:
	domain_destroy(hv, d);
	return ret;
}

/* ---- requests ---- */

static int reply(struct hv_conn *c, struct vd_hvc_rsp *rsp, const int *fds, unsigned int nr_fds)
{
	union {
		char buf[CMSG_SPACE(sizeof(int) * VD_HVC_MAX_FDS)];
		struct cmsghdr align;
	} cbuf;
	struct iovec iov = { .iov_base = rsp, .iov_len = sizeof(*rsp) };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };
	ssize_t n;

	assert(nr_fds <= VD_HVC_MAX_FDS);
	rsp->version = VD_HVC_VERSION;
	rsp->nr_fds = nr_fds;
	if (nr_fds > 0) {
		struct cmsghdr *cm;

		memset(&cbuf, 0, sizeof(cbuf));
		mh.msg_control = cbuf.buf;
		mh.msg_controllen = CMSG_SPACE(sizeof(int) * nr_fds);
		cm = CMSG_FIRSTHDR(&mh);
		cm->cmsg_level = SOL_SOCKET;
		cm->cmsg_type = SCM_RIGHTS;
		cm->cmsg_len = CMSG_LEN(sizeof(int) * nr_fds);
		memcpy(CMSG_DATA(cm), fds, sizeof(int) * nr_fds);
	}
	/* A client that does not read its responses is dropped, not waited for. */
	n = sendmsg(c->fd, &mh, MSG_DONTWAIT | MSG_NOSIGNAL);
	if (n < 0) {
		return -errno;
	}
	return (size_t)n == sizeof(*rsp) ? 0 : -EPROTO;
}

static uint32_t self_or(struct hv_dom *me, uint32_t domid)
{
	return domid == DOMID_SELF ? me->domid : domid;
}

static void describe(const struct hv_dom *d, struct vd_hvc_rsp *rsp, int *fds, unsigned int *nr_fds)
{
	rsp->domid = d->domid;
	rsp->mem_bytes = d->mem_bytes;
	rsp->nr_grant_entries = d->nr_grant_entries;
	fds[0] = d->mem_fd;
	fds[1] = d->gnt_fd;
	*nr_fds = 2;
}

/* Execute one request; fills rsp and the fds to send (borrowed). */
static int execute(struct hv *hv, struct hv_conn *c, const struct vd_hvc_req *req,
		   struct vd_hvc_rsp *rsp, int *fds, unsigned int *nr_fds)
{
	struct hv_dom *me = conn_dom(hv, c);
	struct hv_dom *d;
	struct hv_port *p;
	uint32_t port, remote;
	int efd = -1;
	int ret;

	if (req->reserved != 0) {
		return -EINVAL;
	}
	switch (req->op) {
	case VD_HVC_OP_DOMAIN_CREATE:
		ret = domain_create(hv, c, req, &d);
		if (ret < 0) {
			return ret;
		}
		describe(d, rsp, fds, nr_fds);
		return 0;
	case VD_HVC_OP_DOMAIN_MAP:
		if (c->dom != NULL) {
			return -EPERM;
		}
		d = req->domid == 0 ? NULL : find_dom(hv, req->domid);
		if (d == NULL) {
			return -ENOENT;
		}
		describe(d, rsp, fds, nr_fds);
		return 0;
	case VD_HVC_OP_EVTCHN_ALLOC_UNBOUND:
		remote = self_or(me, req->domid);
		if (remote > VD_HVC_MAX_DOMID) {
			return -EINVAL;
		}
		ret = port_alloc(me, c, &efd, &port);
		if (ret < 0) {
			return ret;
		}
		p = &me->ports[port];
		p->state = PORT_UNBOUND;
		p->remote_domid = (uint16_t)remote;
		break;
	case VD_HVC_OP_EVTCHN_BIND_INTERDOMAIN: {
		struct hv_port *rp;

		remote = self_or(me, req->domid);
		d = remote <= VD_HVC_MAX_DOMID ? find_dom(hv, remote) : NULL;
		if (d == NULL || req->port == 0 || req->port >= VD_HVC_MAX_PORTS) {
			return -EINVAL;
		}
		rp = &d->ports[req->port];
		if (rp->state != PORT_UNBOUND || rp->remote_domid != me->domid) {
			return -EINVAL;
		}
		ret = port_alloc(me, c, &rp->stash_efd, &port);
		if (ret < 0) {
			return ret;
		}
		p = &me->ports[port];
		p->state = PORT_INTERDOMAIN;
		p->remote_domid = d->domid;
		p->remote_port = req->port;
		rp->state = PORT_INTERDOMAIN;
		rp->remote_port = port;
		break;
	}
	case VD_HVC_OP_EVTCHN_PEER_FD: {
		struct hv_port *rp;

		p = owned_port(me, c, req->port);
		if (p == NULL) {
			return -EINVAL;
		}
		if (p->state != PORT_INTERDOMAIN) {
			return -ENOTCONN;
		}
		d = find_dom(hv, p->remote_domid);
		if (d == NULL || p->remote_port >= VD_HVC_MAX_PORTS) {
			return -ENOTCONN;
		}
		rp = &d->ports[p->remote_port];
		rsp->port = req->port;
		fds[0] = rp->efd;
		*nr_fds = 1;
		return 0;
	}
	case VD_HVC_OP_EVTCHN_CLOSE:
		if (owned_port(me, c, req->port) == NULL) {
			return -EINVAL;
		}
		close_port(hv, me, req->port);
		return 0;
	default:
		return -EOPNOTSUPP;
	}
	/* A new port: hand its eventfd to the client. */
	rsp->port = port;
	fds[0] = me->ports[port].efd;
	*nr_fds = 1;
	return 0;
}

/* Read and answer one datagram. 1: handled, 0: no more, <0: drop the client. */
static int handle_one(struct hv *hv, struct hv_conn *c)
{
	union {
		char buf[CMSG_SPACE(sizeof(int) * 8)];
		struct cmsghdr align;
	} cbuf;
	struct vd_hvc_req req;
	struct vd_hvc_rsp rsp;
	struct iovec iov = { .iov_base = &req, .iov_len = sizeof(req) };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };
	int fds[VD_HVC_MAX_FDS];
	unsigned int nr_fds = 0;
	ssize_t n;
	int ret;

	mh.msg_control = cbuf.buf;
	mh.msg_controllen = sizeof(cbuf.buf);
	n = recvmsg(c->fd, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
	if (n < 0) {
		if (errno == EAGAIN || errno == EINTR) {
			return 0;
		}
		return -errno;
	}
	if (n == 0) {
		return -ECONNRESET;
	}
	/* We never accept fds from a client. */
	for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); cm != NULL; cm = CMSG_NXTHDR(&mh, cm)) {
		if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_RIGHTS) {
			size_t cnt = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);

			for (size_t i = 0; i < cnt; i++) {
				int fd;

				memcpy(&fd, CMSG_DATA(cm) + i * sizeof(int), sizeof(int));
				close(fd);
			}
		}
	}
	memset(&rsp, 0, sizeof(rsp));
	if ((size_t)n != sizeof(req) || (mh.msg_flags & MSG_TRUNC) ||
	    req.version != VD_HVC_VERSION) {
		if ((size_t)n >= offsetof(struct vd_hvc_req, domid)) {
			rsp.op = req.op;
			rsp.seq = req.seq;
		}
		rsp.ret = -EPROTO;
	} else {
		rsp.op = req.op;
		rsp.seq = req.seq;
		rsp.ret = execute(hv, c, &req, &rsp, fds, &nr_fds);
		if (rsp.ret < 0) {
			nr_fds = 0;
		}
	}
	ret = reply(c, &rsp, fds, nr_fds);
	return ret < 0 ? ret : 1;
}

/* ---- connections ---- */

static void conn_close(struct hv *hv, struct hv_conn *c)
{
	epoll_ctl(hv->ep, EPOLL_CTL_DEL, c->fd, NULL);
	close(c->fd);
	if (c->dom != NULL) {
		domain_destroy(hv, c->dom);
	} else {
		for (uint32_t i = 1; i < VD_HVC_MAX_PORTS; i++) {
			if (hv->dom0.ports[i].state != PORT_FREE && hv->dom0.ports[i].owner == c) {
				close_port(hv, &hv->dom0, i);
			}
		}
	}
	if (c->prev != NULL) {
		c->prev->next = c->next;
	} else {
		hv->conns = c->next;
	}
	if (c->next != NULL) {
		c->next->prev = c->prev;
	}
	hv->nr_conns--;
	free(c);
}

static void accept_conns(struct hv *hv)
{
	for (;;) {
		struct epoll_event ev = { .events = EPOLLIN };
		struct hv_conn *c;
		int fd = accept4(hv->lsock, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);

		if (fd < 0) {
			if (errno != EAGAIN && errno != EINTR) {
				vd_log_ratelimited(VD_LOG_WARN, "sim hv: accept: %s",
						   strerror(errno));
			}
			return;
		}
		if (hv->nr_conns >= VD_HVC_MAX_CONNS) {
			vd_log_ratelimited(VD_LOG_WARN, "sim hv: too many clients, refusing one");
			close(fd);
			continue;
		}
		c = calloc(1, sizeof(*c));
		if (c == NULL) {
			close(fd);
			continue;
		}
		c->fd = fd;
		ev.data.ptr = c;
		if (epoll_ctl(hv->ep, EPOLL_CTL_ADD, fd, &ev) < 0) {
			close(fd);
			free(c);
			continue;
		}
		c->next = hv->conns;
		if (hv->conns != NULL) {
			hv->conns->prev = c;
		}
		hv->conns = c;
		hv->nr_conns++;
	}
}

static void conn_event(struct hv *hv, struct hv_conn *c, uint32_t events)
{
	for (int i = 0; i < HV_MSGS_PER_WAKEUP; i++) {
		int ret = handle_one(hv, c);

		if (ret < 0) {
			conn_close(hv, c);
			return;
		}
		if (ret == 0) {
			break;
		}
	}
	if ((events & (EPOLLHUP | EPOLLERR)) && !(events & EPOLLIN)) {
		conn_close(hv, c);
	}
}

/* ---- setup and teardown ---- */

static int mkdir_p(const char *dir)
{
	char tmp[PATH_MAX];
	size_t len = strlen(dir);

	if (len == 0 || len >= sizeof(tmp)) {
		return -ENAMETOOLONG;
	}
	memcpy(tmp, dir, len + 1);
	for (size_t i = 1; i <= len; i++) {
		if (tmp[i] == '/' || tmp[i] == '\0') {
			char save = tmp[i];

			tmp[i] = '\0';
			if (mkdir(tmp, 0755) < 0 && errno != EEXIST) {
				return -errno;
			}
			tmp[i] = save;
		}
	}
	return 0;
}

static int epoll_add(struct hv *hv, int fd, void *tag)
{
	struct epoll_event ev = { .events = EPOLLIN, .data.ptr = tag };

	return epoll_ctl(hv->ep, EPOLL_CTL_ADD, fd, &ev) < 0 ? -errno : 0;
}

static int write_pid(struct hv *hv)
{
	char buf[32];
	int n = snprintf(buf, sizeof(buf), "%ld\n", (long)getpid());
	int fd = open(hv->pid_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	int ret = 0;

	if (fd < 0) {
		return -errno;
	}
	if (write(fd, buf, (size_t)n) != n) {
		ret = -EIO;
	}
	close(fd);
	hv->pid_written = true;
	return ret;
}

/* A live hypervisor already owns the dir: refuse before touching anything. */
static int check_not_running(struct hv *hv)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int fd, ret = 0;

	memcpy(sa.sun_path, hv->sock_path, sizeof(sa.sun_path));
	fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		return -errno;
	}
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0) {
		ret = -EADDRINUSE;
	}
	close(fd);
	return ret;
}

static int listen_hv(struct hv *hv)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int ret;

	memcpy(sa.sun_path, hv->sock_path, sizeof(sa.sun_path));
	ret = write_pid(hv);
	if (ret < 0) {
		vd_log(VD_LOG_ERR, "sim hv: write %s: %s", hv->pid_path, strerror(-ret));
		return ret;
	}
	unlink(hv->sock_path);
	hv->lsock = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (hv->lsock < 0) {
		return -errno;
	}
	if (bind(hv->lsock, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(hv->lsock, 64) < 0) {
		return -errno;
	}
	return epoll_add(hv, hv->lsock, &tag_listen);
}

static void hv_fini(struct hv *hv)
{
	while (hv->conns != NULL) {
		conn_close(hv, hv->conns);
	}
	for (unsigned int i = 0; i < VD_HVC_MAX_DOMAINS; i++) {
		if (hv->doms[i].alive) {
			domain_destroy(hv, &hv->doms[i]);
		}
	}
	if (hv->dom0.ports != NULL) {
		domain_destroy(hv, &hv->dom0);
	}
#ifdef VD_HAVE_SIM_XS
	if (hv->xs != NULL) {
		vd_xs_server_destroy(hv->xs);
		unlink(hv->xs_path);
	}
#endif
	if (hv->lsock >= 0) {
		close(hv->lsock);
		unlink(hv->sock_path);
	}
	if (hv->pid_written) {
		unlink(hv->pid_path);
	}
	if (hv->sfd >= 0) {
		close(hv->sfd);
	}
	if (hv->ep >= 0) {
		close(hv->ep);
	}
	if (hv->mask_set) {
		pthread_sigmask(SIG_SETMASK, &hv->old_mask, NULL);
	}
}

static int hv_init(struct hv *hv, const char *dir)
{
	struct sockaddr_un sa;
	sigset_t mask;
	int n, ret;

	hv->ep = hv->lsock = hv->sfd = -1;
	hv->dom0.mem_fd = hv->dom0.gnt_fd = -1;
	for (unsigned int i = 0; i < VD_HVC_MAX_DOMAINS; i++) {
		hv->doms[i].mem_fd = hv->doms[i].gnt_fd = -1;
	}
	n = snprintf(hv->dir, sizeof(hv->dir), "%s", dir);
	/* The longest socket name is DIR/xenstored.dNNNNN. */
	if (n < 0 || (size_t)n + sizeof("/xenstored.d32767") > sizeof(sa.sun_path)) {
		vd_log(VD_LOG_ERR, "sim hv: directory name too long: %s", dir);
		return -ENAMETOOLONG;
	}
	snprintf(hv->sock_path, sizeof(hv->sock_path), "%s/hv.sock", dir);
	snprintf(hv->pid_path, sizeof(hv->pid_path), "%s/hv.pid", dir);
	ret = mkdir_p(dir);
	if (ret < 0) {
		vd_log(VD_LOG_ERR, "sim hv: create %s: %s", dir, strerror(-ret));
		return ret;
	}
	ret = check_not_running(hv);
	if (ret < 0) {
		vd_log(VD_LOG_ERR, "sim hv: another hypervisor is running on %s", hv->sock_path);
		return ret;
	}
	hv->dom0.alive = true;
	hv->dom0.ports = ports_alloc();
	if (hv->dom0.ports == NULL) {
		return -ENOMEM;
	}
	hv->ep = epoll_create1(EPOLL_CLOEXEC);
	if (hv->ep < 0) {
		return -errno;
	}
	sigemptyset(&mask);
	sigaddset(&mask, SIGTERM);
	sigaddset(&mask, SIGINT);
	if (pthread_sigmask(SIG_BLOCK, &mask, &hv->old_mask) != 0) {
		return -EINVAL;
	}
	hv->mask_set = true;
	hv->sfd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
	if (hv->sfd < 0) {
		return -errno;
	}
	ret = epoll_add(hv, hv->sfd, &tag_signal);
	if (ret < 0) {
		return ret;
	}
#ifdef VD_HAVE_SIM_XS
	ret = vd_xs_server_create(&hv->xs);
	if (ret < 0) {
		hv->xs = NULL;
		vd_log(VD_LOG_ERR, "sim hv: xenstored: %s", strerror(-ret));
		return ret;
	}
	snprintf(hv->xs_path, sizeof(hv->xs_path), "%s/xenstored", dir);
	ret = vd_xs_server_listen(hv->xs, hv->xs_path, 0);
	if (ret < 0) {
		vd_log(VD_LOG_ERR, "sim hv: xenstored on %s: %s", hv->xs_path, strerror(-ret));
		return ret;
	}
	ret = epoll_add(hv, vd_xs_server_fd(hv->xs), &tag_xs);
	if (ret < 0) {
		return ret;
	}
#endif
	/* hv.sock last: once it accepts, everything else is ready. */
	ret = listen_hv(hv);
	if (ret < 0) {
		vd_log(VD_LOG_ERR, "sim hv: listen on %s: %s", hv->sock_path, strerror(-ret));
		return ret;
	}
	return 0;
}

static int hv_run(struct hv *hv)
{
	struct epoll_event evs[HV_MAX_EVENTS];

	for (;;) {
		int n = epoll_wait(hv->ep, evs, HV_MAX_EVENTS, -1);

		if (n < 0) {
			if (errno == EINTR) {
				continue;
			}
			return -errno;
		}
		for (int i = 0; i < n; i++) {
			void *tag = evs[i].data.ptr;

			if (tag == &tag_signal) {
				struct signalfd_siginfo si;

				if (read(hv->sfd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
					vd_log(VD_LOG_INFO, "sim hv: signal %u, exiting",
					       si.ssi_signo);
					return 0;
				}
			} else if (tag == &tag_listen) {
				accept_conns(hv);
			} else if (tag == &tag_xs) {
#ifdef VD_HAVE_SIM_XS
				int ret = vd_xs_server_run(hv->xs);

				if (ret < 0) {
					vd_log_ratelimited(VD_LOG_WARN, "sim hv: xenstored: %s",
							   strerror(-ret));
				}
#endif
			} else {
				conn_event(hv, tag, evs[i].events);
			}
		}
	}
}

static void usage(FILE *f, const char *prog)
{
	fprintf(f,
		"usage: %s [--dir DIR]\n"
		"Run the simulated hypervisor in the foreground (SIGTERM/SIGINT stop it).\n"
		"  --dir DIR   sim directory (default $VDISK_SIM_DIR or %s)\n",
		prog, VD_SIM_DEFAULT_DIR);
}

int vd_sim_hv_main(int argc, char **argv)
{
	const char *prog = argc > 0 && argv[0] != NULL ? argv[0] : "vdisk sim hv";
	const char *dir = NULL;
	struct hv *hv;
	int ret;

	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--dir") == 0 && i + 1 < argc) {
			dir = argv[++i];
		} else if (strncmp(argv[i], "--dir=", 6) == 0) {
			dir = argv[i] + 6;
		} else if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
			usage(stdout, prog);
			return 0;
		} else {
			fprintf(stderr, "%s: unknown or incomplete option '%s'\n", prog, argv[i]);
			usage(stderr, prog);
			return 2;
		}
	}
	if (dir == NULL) {
		dir = vd_hvc_sim_dir();
	}
	if (dir[0] == '\0') {
		fprintf(stderr, "%s: empty --dir\n", prog);
		return 2;
	}
	hv = calloc(1, sizeof(*hv));
	if (hv == NULL) {
		fprintf(stderr, "%s: out of memory\n", prog);
		return 1;
	}
	ret = hv_init(hv, dir);
	if (ret == 0) {
		vd_log(VD_LOG_INFO, "sim hv: serving %s (pid %ld)", dir, (long)getpid());
		ret = hv_run(hv);
		if (ret < 0) {
			vd_log(VD_LOG_ERR, "sim hv: event loop: %s", strerror(-ret));
		}
	}
	hv_fini(hv);
	free(hv);
	return ret < 0 ? 1 : 0;
}
