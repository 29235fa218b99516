/*
 * hvc: client of the simulated hypervisor. The wire protocol is in
 * hvc-proto.h; the contract is in hvc.h.
 */
#include "transport/sim/hvc.h"
#include "transport/sim/hvc-proto.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#define HVC_TIMEOUT_S 30

struct vd_hvc {
	int sock;
	pthread_mutex_t lock; /* serialises requests on sock */
	uint32_t seq;
	/* Cached eventfd of the peer of each local port; -1 = not fetched. */
	int peer_fd[VD_HVC_MAX_PORTS];
};

const char *vd_hvc_sim_dir(void)
{
	const char *d = getenv("VDISK_SIM_DIR");

	return (d != NULL && d[0] != '\0') ? d : VD_SIM_DEFAULT_DIR;
}

int vd_hvc_connect(const char *sim_dir, struct vd_hvc **out, struct vd_err *err)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct timeval tv = { .tv_sec = HVC_TIMEOUT_S };
	struct vd_hvc *h;
	int n, ret;

	if (sim_dir == NULL) {
		sim_dir = vd_hvc_sim_dir();
	}
	n = snprintf(sa.sun_path, sizeof(sa.sun_path), "%s/hv.sock", sim_dir);
	if (n < 0 || (size_t)n >= sizeof(sa.sun_path)) {
		return vd_err_set(err, ENAMETOOLONG, "sim dir %s: socket path too long", sim_dir);
	}
	h = calloc(1, sizeof(*h));
	if (h == NULL) {
		return vd_err_set(err, ENOMEM, "hvc");
	}
	for (unsigned int i = 0; i < VD_HVC_MAX_PORTS; i++) {
		h->peer_fd[i] = -1;
	}
	ret = pthread_mutex_init(&h->lock, NULL);
	if (ret != 0) {
		free(h);
		return vd_err_set(err, ret, "hvc mutex");
	}
	h->sock = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	if (h->sock < 0) {
		ret = vd_err_set(err, errno, "hvc socket");
		goto err_free;
	}
	if (connect(h->sock, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		ret = vd_err_set(err, errno, "connect to simulated hypervisor at %s", sa.sun_path);
		goto err_close;
	}
	/* A hung hypervisor must not hang us forever. */
	(void)setsockopt(h->sock, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	(void)setsockopt(h->sock, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	*out = h;
	return 0;

err_close:
	close(h->sock);
err_free:
	pthread_mutex_destroy(&h->lock);
	free(h);
	return ret;
}

void vd_hvc_close(struct vd_hvc *h)
{
	if (h == NULL) {
		return;
	}
	for (unsigned int i = 0; i < VD_HVC_MAX_PORTS; i++) {
		if (h->peer_fd[i] >= 0) {
			close(h->peer_fd[i]);
		}
	}
	close(h->sock);
	pthread_mutex_destroy(&h->lock);
	free(h);
}

static void close_fds(int *fds, unsigned int n)
{
	for (unsigned int i = 0; i < n; i++) {
		if (fds[i] >= 0) {
			close(fds[i]);
			fds[i] = -1;
		}
	}
}

/*
 * One request/response exchange; caller holds h->lock. On success (rsp->ret
 * == 0) exactly nr_fds descriptors are stored in fds; otherwise none are
 * left open. Returns rsp->ret or a local -errno.
 */
static int call_locked(struct vd_hvc *h, struct vd_hvc_req *req, struct vd_hvc_rsp *rsp, int *fds,
		       unsigned int nr_fds)
{
	union {
		char buf[CMSG_SPACE(sizeof(int) * VD_HVC_MAX_FDS)];
		struct cmsghdr align;
	} cbuf;
	int got[VD_HVC_MAX_FDS];
	unsigned int nr_got = 0;
	struct iovec iov;
	struct msghdr mh;
	ssize_t n;
	int ret;

	req->version = VD_HVC_VERSION;
	req->seq = ++h->seq;
	do {
		n = send(h->sock, req, sizeof(*req), MSG_NOSIGNAL);
	} while (n < 0 && errno == EINTR);
	if (n < 0) {
		return -errno;
	}
	if ((size_t)n != sizeof(*req)) {
		return -EPROTO;
	}

	memset(&mh, 0, sizeof(mh));
	iov.iov_base = rsp;
	iov.iov_len = sizeof(*rsp);
	mh.msg_iov = &iov;
	mh.msg_iovlen = 1;
	mh.msg_control = cbuf.buf;
	mh.msg_controllen = sizeof(cbuf.buf);
	do {
		n = recvmsg(h->sock, &mh, MSG_CMSG_CLOEXEC);
	} while (n < 0 && errno == EINTR);
	if (n < 0) {
		return errno == EAGAIN ? -ETIMEDOUT : -errno;
	}
	if (n == 0) {
		return -ECONNRESET;
	}
	for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c != NULL; c = CMSG_NXTHDR(&mh, c)) {
		size_t cnt;

		if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) {
			continue;
		}
		cnt = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
		for (size_t i = 0; i < cnt; i++) {
			int fd;

			memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
			if (nr_got < VD_HVC_MAX_FDS) {
				got[nr_got++] = fd;
			} else {
				close(fd);
			}
		}
	}
	if ((size_t)n != sizeof(*rsp) || (mh.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) ||
	    rsp->version != VD_HVC_VERSION || rsp->seq != req->seq || rsp->op != req->op) {
		ret = -EPROTO;
		goto err_close;
	}
	if (rsp->ret != 0) {
		ret = rsp->ret < 0 && rsp->ret > -4096 ? rsp->ret : -EPROTO;
		goto err_close;
	}
	if (rsp->nr_fds != nr_fds || nr_got != nr_fds) {
		ret = -EPROTO;
		goto err_close;
	}
	for (unsigned int i = 0; i < nr_fds; i++) {
		fds[i] = got[i];
	}
	return 0;

err_close:
	close_fds(got, nr_got);
	return ret;
}

static int call(struct vd_hvc *h, struct vd_hvc_req *req, struct vd_hvc_rsp *rsp, int *fds,
		unsigned int nr_fds)
{
	int ret;

	pthread_mutex_lock(&h->lock);
	ret = call_locked(h, req, rsp, fds, nr_fds);
	pthread_mutex_unlock(&h->lock);
	return ret;
}

static size_t gnttab_bytes(uint32_t nr_entries)
{
	return VD_ALIGN_UP((size_t)nr_entries * sizeof(struct grant_entry_v1),
			   (size_t)VD_PAGE_SIZE);
}

/* Map the two memfds described by rsp into out; takes ownership of fds. */
static int map_domain(const struct vd_hvc_rsp *rsp, int fds[2], bool guest, struct vd_simdom *out,
		      struct vd_err *err)
{
	struct stat st_mem, st_gnt;
	size_t gbytes;
	void *mem, *gnt;
	int ret;

	/* The hypervisor is trusted more than a guest, but not blindly. */
	if (rsp->mem_bytes == 0 || rsp->mem_bytes > VD_HVC_MAX_MEM_BYTES ||
	    !VD_IS_ALIGNED(rsp->mem_bytes, (uint64_t)VD_PAGE_SIZE) || rsp->nr_grant_entries == 0 ||
	    rsp->nr_grant_entries > VD_HVC_MAX_GRANT_ENTRIES || rsp->domid > VD_HVC_MAX_DOMID) {
		ret = vd_err_set(err, EPROTO, "hypervisor sent a bad domain description");
		goto err_close;
	}
	gbytes = gnttab_bytes(rsp->nr_grant_entries);
	if (fstat(fds[0], &st_mem) < 0 || fstat(fds[1], &st_gnt) < 0) {
		ret = vd_err_set(err, errno, "fstat domain memfd");
		goto err_close;
	}
	if ((uint64_t)st_mem.st_size < rsp->mem_bytes || (uint64_t)st_gnt.st_size < gbytes) {
		ret = vd_err_set(err, EPROTO, "domain memfd smaller than announced");
		goto err_close;
	}
	mem = mmap(NULL, rsp->mem_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fds[0], 0);
	if (mem == MAP_FAILED) {
		ret = vd_err_set(err, errno, "map d%u memory", rsp->domid);
		goto err_close;
	}
	gnt = mmap(NULL, gbytes, guest ? PROT_READ | PROT_WRITE : PROT_READ, MAP_SHARED, fds[1], 0);
	if (gnt == MAP_FAILED) {
		ret = vd_err_set(err, errno, "map d%u grant table", rsp->domid);
		munmap(mem, rsp->mem_bytes);
		goto err_close;
	}
	out->domid = (uint16_t)rsp->domid;
	out->mem = mem;
	out->nr_pages = rsp->mem_bytes / VD_PAGE_SIZE;
	out->gnttab = gnt;
	out->nr_grant_entries = rsp->nr_grant_entries;
	out->writable_gnttab = guest;
	out->mem_fd = fds[0];
	out->gnttab_fd = fds[1];
	return 0;

err_close:
	close_fds(fds, 2);
	return ret;
}

int vd_hvc_domain_create(struct vd_hvc *h, uint16_t domid, uint64_t mem_bytes,
			 uint32_t nr_grant_entries, struct vd_simdom *out, struct vd_err *err)
{
	struct vd_hvc_req req = {
		.op = VD_HVC_OP_DOMAIN_CREATE,
		.domid = domid,
		.mem_bytes = mem_bytes,
		.nr_grant_entries = nr_grant_entries,
	};
	struct vd_hvc_rsp rsp;
	int fds[2];
	int ret;

	ret = call(h, &req, &rsp, fds, 2);
	if (ret < 0) {
		return vd_err_set(err, -ret, "create domain %u (%llu bytes, %u grant entries)",
				  domid, (unsigned long long)mem_bytes, nr_grant_entries);
	}
	if (domid != 0 && rsp.domid != domid) {
		close_fds(fds, 2);
		return vd_err_set(err, EPROTO, "hypervisor created d%u, not d%u", rsp.domid, domid);
	}
	return map_domain(&rsp, fds, true, out, err);
}

int vd_hvc_domain_map(struct vd_hvc *h, uint16_t domid, struct vd_simdom *out, struct vd_err *err)
{
	struct vd_hvc_req req = { .op = VD_HVC_OP_DOMAIN_MAP, .domid = domid };
	struct vd_hvc_rsp rsp;
	int fds[2];
	int ret;

	ret = call(h, &req, &rsp, fds, 2);
	if (ret < 0) {
		return vd_err_set(err, -ret, "map domain %u", domid);
	}
	if (rsp.domid != domid) {
		close_fds(fds, 2);
		return vd_err_set(err, EPROTO, "hypervisor mapped d%u, not d%u", rsp.domid, domid);
	}
	return map_domain(&rsp, fds, false, out, err);
}

void vd_hvc_domain_unmap(struct vd_simdom *d)
{
	if (d == NULL || d->mem == NULL) {
		return;
	}
	munmap(d->mem, d->nr_pages * VD_PAGE_SIZE);
	munmap(d->gnttab, gnttab_bytes(d->nr_grant_entries));
	if (d->mem_fd >= 0) {
		close(d->mem_fd);
	}
	if (d->gnttab_fd >= 0) {
		close(d->gnttab_fd);
	}
	d->mem = NULL;
	d->gnttab = NULL;
	d->nr_pages = 0;
	d->nr_grant_entries = 0;
	d->mem_fd = -1;
	d->gnttab_fd = -1;
}

int vd_simdom_check_grant(const struct vd_simdom *d, uint16_t self, uint32_t gref, bool write,
			  void **page)
{
	const struct grant_entry_v1 *e;
	uint16_t flags, domid;
	uint32_t frame;

	if (gref >= d->nr_grant_entries) {
		return GNTST_bad_gntref;
	}
	e = &d->gnttab[gref];
	/*
	 * The guest fills domid and frame, then (after a write barrier) flags:
	 * read flags first, each field exactly once, and decide on those copies.
	 */
	flags = VD_READ_ONCE(e->flags);
	vd_smp_rmb();
	domid = VD_READ_ONCE(e->domid);
	frame = VD_READ_ONCE(e->frame);
	if ((flags & GTF_type_mask) != GTF_permit_access || domid != self) {
		return GNTST_general_error;
	}
	if (write && (flags & GTF_readonly)) {
		return GNTST_general_error;
	}
	if (frame >= d->nr_pages) {
		return GNTST_bad_page;
	}
	*page = (char *)d->mem + (size_t)frame * VD_PAGE_SIZE;
	return GNTST_okay;
}

static bool port_ok(uint32_t port)
{
	return port > 0 && port < VD_HVC_MAX_PORTS;
}

static int evtchn_open(struct vd_hvc *h, struct vd_hvc_req *req, uint32_t *port, int *fd)
{
	struct vd_hvc_rsp rsp;
	int fds[1];
	int ret;

	pthread_mutex_lock(&h->lock);
	ret = call_locked(h, req, &rsp, fds, 1);
	if (ret == 0 && !port_ok(rsp.port)) {
		close(fds[0]);
		ret = -EPROTO;
	}
	if (ret == 0) {
		/* A stale cached peer of a reused port number must go. */
		int old = __atomic_exchange_n(&h->peer_fd[rsp.port], -1, __ATOMIC_ACQ_REL);

		if (old >= 0) {
			close(old);
		}
		*port = rsp.port;
		*fd = fds[0];
	}
	pthread_mutex_unlock(&h->lock);
	return ret;
}

int vd_hvc_evtchn_alloc_unbound(struct vd_hvc *h, uint16_t remote_domid, uint32_t *port, int *fd)
{
	struct vd_hvc_req req = { .op = VD_HVC_OP_EVTCHN_ALLOC_UNBOUND, .domid = remote_domid };

	return evtchn_open(h, &req, port, fd);
}

int vd_hvc_evtchn_bind_interdomain(struct vd_hvc *h, uint16_t remote_domid, uint32_t remote_port,
				   uint32_t *local_port, int *fd)
{
	struct vd_hvc_req req = {
		.op = VD_HVC_OP_EVTCHN_BIND_INTERDOMAIN,
		.domid = remote_domid,
		.port = remote_port,
	};

	return evtchn_open(h, &req, local_port, fd);
}

static int fetch_peer_fd(struct vd_hvc *h, uint32_t port)
{
	struct vd_hvc_req req = { .op = VD_HVC_OP_EVTCHN_PEER_FD, .port = port };
	struct vd_hvc_rsp rsp;
	int fd, ret;

	pthread_mutex_lock(&h->lock);
	fd = __atomic_load_n(&h->peer_fd[port], __ATOMIC_ACQUIRE);
	if (fd < 0) {
		ret = call_locked(h, &req, &rsp, &fd, 1);
		if (ret < 0) {
			fd = ret;
		} else {
			__atomic_store_n(&h->peer_fd[port], fd, __ATOMIC_RELEASE);
		}
	}
	pthread_mutex_unlock(&h->lock);
	return fd;
}

int vd_hvc_evtchn_notify(struct vd_hvc *h, uint32_t port)
{
	uint64_t one = 1;
	int fd;

	if (vd_unlikely(!port_ok(port))) {
		return -EINVAL;
	}
	fd = __atomic_load_n(&h->peer_fd[port], __ATOMIC_ACQUIRE);
	if (vd_unlikely(fd < 0)) {
		fd = fetch_peer_fd(h, port);
		if (fd < 0) {
			return fd;
		}
	}
	/* EAGAIN: the counter is saturated, the peer has an event pending anyway. */
	if (write(fd, &one, sizeof(one)) < 0 && errno != EAGAIN) {
		return -errno;
	}
	return 0;
}

int vd_hvc_evtchn_close(struct vd_hvc *h, uint32_t port)
{
	struct vd_hvc_req req = { .op = VD_HVC_OP_EVTCHN_CLOSE, .port = port };
	struct vd_hvc_rsp rsp;
	int ret, old;

	if (!port_ok(port)) {
		return -EINVAL;
	}
	pthread_mutex_lock(&h->lock);
	ret = call_locked(h, &req, &rsp, NULL, 0);
	old = __atomic_exchange_n(&h->peer_fd[port], -1, __ATOMIC_ACQ_REL);
	if (old >= 0) {
		close(old);
	}
	pthread_mutex_unlock(&h->lock);
	return ret;
}
