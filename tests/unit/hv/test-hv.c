/*
 * The simulated hypervisor, through its socket: lifecycle, domains, limits,
 * event channels, hostile clients and domain death.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>

#include "tests/unit/hv/hv-test-util.h"
#include "transport/sim/hvc-proto.h"

#define MEM_BYTES (64u * 4096u)
#define NR_GNT    32u

static struct hvt g_hv;

static int setup(void **state)
{
	return hvt_start(&g_hv) == 0 ? 0 : -1;
}

static int teardown(void **state)
{
	return hvt_stop(&g_hv) == 0 ? 0 : -1;
}

static struct vd_hvc *conn(void)
{
	struct vd_hvc *h = NULL;
	struct vd_err err = { 0 };

	assert_int_equal(vd_hvc_connect(g_hv.dir, &h, &err), 0);
	return h;
}

static bool readable(int fd, int timeout_ms)
{
	struct pollfd p = { .fd = fd, .events = POLLIN };

	return poll(&p, 1, timeout_ms) == 1 && (p.revents & POLLIN);
}

static void test_lifecycle(void **state)
{
	char p[256], buf[32] = { 0 };
	struct hvt t;
	long pid;
	int fd;

	assert_int_equal(hvt_start(&t), 0);
	assert_true(hvt_exists(&t, "hv.sock"));
	snprintf(p, sizeof(p), "%s/hv.pid", t.dir);
	fd = open(p, O_RDONLY);
	assert_true(fd >= 0);
	assert_true(read(fd, buf, sizeof(buf) - 1) > 0);
	close(fd);
	pid = strtol(buf, NULL, 10);
	assert_int_equal(pid, t.pid);
#ifdef VD_HAVE_SIM_XS
	assert_true(hvt_exists(&t, "xenstored"));
#endif
	/* A second hypervisor on the same dir refuses to start. */
	{
		char *argv[] = { (char *)"hv", (char *)"--dir", t.dir, NULL };
		pid_t c;
		int st;

		fflush(NULL);
		c = fork();
		assert_true(c >= 0);
		if (c == 0) {
			exit(vd_sim_hv_main(3, argv));
		}
		assert_int_equal(waitpid(c, &st, 0), c);
		assert_true(WIFEXITED(st));
		assert_int_equal(WEXITSTATUS(st), 1);
		assert_true(hvt_exists(&t, "hv.sock"));
		assert_true(hvt_exists(&t, "hv.pid"));
#ifdef VD_HAVE_SIM_XS
		assert_true(hvt_exists(&t, "xenstored"));
#endif
	}
	/* Clean stop: exit 0, every file removed (hvt_stop rmdirs the dir). */
	assert_int_equal(hvt_stop(&t), 0);
}

static void test_usage(void **state)
{
	char *argv[] = { (char *)"hv", (char *)"--bogus", NULL };
	char *argv2[] = { (char *)"hv", (char *)"--dir", NULL };

	assert_int_equal(vd_sim_hv_main(2, argv), 2);
	assert_int_equal(vd_sim_hv_main(2, argv2), 2);
}

static void test_domain_create_map(void **state)
{
	struct vd_hvc *g1 = conn(), *g2 = conn(), *g3 = conn(), *d0 = conn();
	struct vd_simdom a = { 0 }, b = { 0 }, c = { 0 }, m = { 0 }, x = { 0 };
	struct vd_err err = { 0 };

	assert_int_equal(vd_hvc_domain_create(g1, 0, MEM_BYTES, NR_GNT, &a, &err), 0);
	assert_int_equal(a.domid, 1);
	assert_int_equal(a.nr_pages, 64);
	assert_int_equal(a.nr_grant_entries, NR_GNT);
	assert_true(a.writable_gnttab);
	assert_int_equal(vd_hvc_domain_create(g2, 7, MEM_BYTES, NR_GNT, &b, NULL), 0);
	assert_int_equal(b.domid, 7);
	/* domid taken; one domain per connection */
	assert_int_equal(vd_hvc_domain_create(g3, 7, MEM_BYTES, NR_GNT, &c, &err), -EEXIST);
	assert_int_equal(err.errnum, EEXIST);
	assert_int_equal(vd_hvc_domain_create(g1, 0, MEM_BYTES, NR_GNT, &c, NULL), -EEXIST);
	/* auto picks the lowest free domid */
	assert_int_equal(vd_hvc_domain_create(g3, 0, MEM_BYTES, NR_GNT, &c, NULL), 0);
	assert_int_equal(c.domid, 2);
#ifdef VD_HAVE_SIM_XS
	assert_true(hvt_exists(&g_hv, "xenstored.d1"));
	assert_true(hvt_exists(&g_hv, "xenstored.d7"));
#endif

	/* The guest writes its memory and grant table; dom0 sees both. */
	memset((char *)a.mem + 5 * 4096, 0xab, 4096);
	a.gnttab[3].frame = 5;
	a.gnttab[3].domid = 0;
	a.gnttab[3].flags = GTF_permit_access;
	assert_int_equal(vd_hvc_domain_map(d0, 1, &m, &err), 0);
	assert_int_equal(m.domid, 1);
	assert_int_equal(m.nr_pages, 64);
	assert_false(m.writable_gnttab);
	assert_int_equal(((unsigned char *)m.mem)[5 * 4096 + 17], 0xab);
	assert_int_equal(m.gnttab[3].frame, 5);
	assert_int_equal(m.gnttab[3].flags, GTF_permit_access);
	/* dom0 writes guest RAM (what a READ's grant copy does) */
	((char *)m.mem)[0] = 'x';
	assert_int_equal(((char *)a.mem)[0], 'x');
	/* The memfds are sealed: nobody can shrink them under a mapping. */
	assert_true(ftruncate(m.mem_fd, 0) < 0);
	assert_true(ftruncate(a.mem_fd, 4096) < 0);
	assert_true(ftruncate(a.gnttab_fd, 0) < 0);

	/* Only dom0 maps; only existing domains. */
	assert_int_equal(vd_hvc_domain_map(g2, 1, &x, NULL), -EPERM);
	assert_int_equal(vd_hvc_domain_map(d0, 3, &x, NULL), -ENOENT);
	assert_int_equal(vd_hvc_domain_map(d0, 0, &x, NULL), -ENOENT);
	assert_null(x.mem);

	vd_hvc_domain_unmap(&m);
	assert_null(m.mem);
	vd_hvc_domain_unmap(&m); /* idempotent */
	vd_hvc_domain_unmap(&a);
	vd_hvc_domain_unmap(&b);
	vd_hvc_domain_unmap(&c);
	vd_hvc_close(g1);
	vd_hvc_close(g2);
	vd_hvc_close(g3);
	vd_hvc_close(d0);
}

static void test_domain_create_invalid(void **state)
{
	struct vd_hvc *g = conn();
	struct vd_simdom d = { 0 };

	assert_int_equal(vd_hvc_domain_create(g, 0, 0, NR_GNT, &d, NULL), -EINVAL);
	assert_int_equal(vd_hvc_domain_create(g, 0, 4097, NR_GNT, &d, NULL), -EINVAL);
	assert_int_equal(vd_hvc_domain_create(g, 0, (4ull << 30) + 4096, NR_GNT, &d, NULL),
			 -EINVAL);
	assert_int_equal(vd_hvc_domain_create(g, 0, MEM_BYTES, 0, &d, NULL), -EINVAL);
	assert_int_equal(vd_hvc_domain_create(g, 0, MEM_BYTES, 65537, &d, NULL), -EINVAL);
	assert_int_equal(vd_hvc_domain_create(g, 0x7ff0, MEM_BYTES, NR_GNT, &d, NULL), -EINVAL);
	assert_null(d.mem);
	/* The maxima are allowed (sparse memfds cost nothing until touched). */
	assert_int_equal(vd_hvc_domain_create(g, 0x7fef, 4ull << 30, 65536, &d, NULL), 0);
	assert_int_equal(d.domid, 0x7fef);
	assert_int_equal(d.nr_pages, (4ull << 30) / 4096);
	vd_hvc_domain_unmap(&d);
	vd_hvc_close(g);
}

static void test_domain_limit(void **state)
{
	struct vd_hvc *g[VD_HVC_MAX_DOMAINS + 1];
	struct vd_simdom d;

	for (unsigned int i = 0; i <= VD_HVC_MAX_DOMAINS; i++) {
		int ret;

		g[i] = conn();
		memset(&d, 0, sizeof(d));
		ret = vd_hvc_domain_create(g[i], 0, 4096, 1, &d, NULL);
		if (i < VD_HVC_MAX_DOMAINS) {
			assert_int_equal(ret, 0);
			assert_int_equal(d.domid, i + 1);
			vd_hvc_domain_unmap(&d);
		} else {
			assert_int_equal(ret, -ENOSPC);
		}
	}
	/* A dead domain frees its slot. */
	vd_hvc_close(g[10]);
	for (int i = 0; i < 200; i++) {
		memset(&d, 0, sizeof(d));
		if (vd_hvc_domain_create(g[VD_HVC_MAX_DOMAINS], 0, 4096, 1, &d, NULL) == 0) {
			break;
		}
		hvt_sleep_ms(10);
	}
	assert_int_equal(d.domid, 11);
	vd_hvc_domain_unmap(&d);
	for (unsigned int i = 0; i <= VD_HVC_MAX_DOMAINS; i++) {
		if (i != 10) {
			vd_hvc_close(g[i]);
		}
	}
}

static void test_evtchn(void **state)
{
	struct vd_hvc *g = conn(), *d0 = conn(), *d0b = conn();
	struct vd_simdom d = { 0 };
	uint32_t gport, lport, p2, other, x;
	int gfd, lfd, fd2, xfd;
	uint64_t v;

	assert_int_equal(vd_hvc_domain_create(g, 0, MEM_BYTES, NR_GNT, &d, NULL), 0);
	assert_int_equal(vd_hvc_evtchn_alloc_unbound(g, 0, &gport, &gfd), 0);
	assert_true(gport > 0);
	assert_int_equal(vd_hvc_evtchn_alloc_unbound(g, 5, &other, &fd2), 0);
	assert_int_not_equal(other, gport);

	/* Notifying an unbound port is refused. */
	assert_int_equal(vd_hvc_evtchn_notify(g, gport), -ENOTCONN);
	/* Bogus ports. */
	assert_int_equal(vd_hvc_evtchn_notify(g, 0), -EINVAL);
	assert_int_equal(vd_hvc_evtchn_notify(g, 5000), -EINVAL);
	assert_int_equal(vd_hvc_evtchn_notify(g, 999), -EINVAL);
	assert_int_equal(vd_hvc_evtchn_close(g, 999), -EINVAL);
	/* Wrong port, port for another domid, unknown domain. */
	assert_int_equal(vd_hvc_evtchn_bind_interdomain(d0, d.domid, gport + 50, &x, &xfd),
			 -EINVAL);
	assert_int_equal(vd_hvc_evtchn_bind_interdomain(d0, d.domid, other, &x, &xfd), -EINVAL);
	assert_int_equal(vd_hvc_evtchn_bind_interdomain(d0, 33, gport, &x, &xfd), -EINVAL);
	assert_int_equal(vd_hvc_evtchn_bind_interdomain(d0, d.domid, 0, &x, &xfd), -EINVAL);
	assert_int_equal(vd_hvc_evtchn_bind_interdomain(d0, d.domid, 70000, &x, &xfd), -EINVAL);

	assert_int_equal(vd_hvc_evtchn_bind_interdomain(d0, d.domid, gport, &lport, &lfd), 0);
	/* Already bound. */
	assert_int_equal(vd_hvc_evtchn_bind_interdomain(d0b, d.domid, gport, &x, &xfd), -EINVAL);
	/* dom0 ports belong to the connection that opened them. */
	assert_int_equal(vd_hvc_evtchn_notify(d0b, lport), -EINVAL);
	assert_int_equal(vd_hvc_evtchn_close(d0b, lport), -EINVAL);

	/* guest -> dom0 */
	assert_false(readable(lfd, 0));
	assert_int_equal(vd_hvc_evtchn_notify(g, gport), 0);
	assert_true(readable(lfd, 1000));
	assert_false(readable(gfd, 0));
	assert_int_equal(read(lfd, &v, sizeof(v)), sizeof(v));
	assert_false(readable(lfd, 0));
	/* dom0 -> guest, twice: the cached fd path */
	assert_int_equal(vd_hvc_evtchn_notify(d0, lport), 0);
	assert_int_equal(vd_hvc_evtchn_notify(d0, lport), 0);
	assert_true(readable(gfd, 1000));
	assert_int_equal(read(gfd, &v, sizeof(v)), sizeof(v));
	assert_int_equal(v, 2);

	/* Closing our end makes the peer's end unbound (for us) again. */
	assert_int_equal(vd_hvc_evtchn_close(d0, lport), 0);
	close(lfd);
	assert_int_equal(vd_hvc_evtchn_notify(g, gport), 0); /* cached: dropped, as Xen does */
	assert_int_equal(vd_hvc_evtchn_bind_interdomain(d0b, d.domid, gport, &p2, &fd2), 0);
	close(fd2);
	(void)xfd;

	/* Guest loopback bind (DOMID_SELF) works too. */
	assert_int_equal(vd_hvc_evtchn_alloc_unbound(g, DOMID_SELF, &x, &xfd), 0);
	close(xfd);
	assert_int_equal(vd_hvc_evtchn_bind_interdomain(g, DOMID_SELF, x, &p2, &fd2), 0);
	assert_int_equal(vd_hvc_evtchn_notify(g, p2), 0);
	close(fd2);

	close(gfd);
	vd_hvc_domain_unmap(&d);
	vd_hvc_close(g);
	vd_hvc_close(d0);
	vd_hvc_close(d0b);
}

static void test_port_limit(void **state)
{
	struct vd_hvc *h = conn();
	unsigned int n = 0;
	uint32_t port;
	int fd, ret;

	while ((ret = vd_hvc_evtchn_alloc_unbound(h, 1, &port, &fd)) == 0) {
		close(fd);
		n++;
		assert_true(n < VD_HVC_MAX_PORTS);
	}
	assert_int_equal(ret, -ENOSPC);
	assert_int_equal(n, VD_HVC_MAX_PORTS - 1);
	/* Closing the connection releases them for the next dom0 client. */
	vd_hvc_close(h);
	h = conn();
	for (int i = 0; i < 200; i++) {
		ret = vd_hvc_evtchn_alloc_unbound(h, 1, &port, &fd);
		if (ret == 0) {
			close(fd);
			break;
		}
		hvt_sleep_ms(10);
	}
	assert_int_equal(ret, 0);
	vd_hvc_close(h);
}

static int raw_connect(void)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);

	assert_true(fd >= 0);
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s/hv.sock", g_hv.dir);
	assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	return fd;
}

/* Send raw bytes (and optionally an fd), return the response's ret. */
static int raw_call(int fd, const void *buf, size_t len, int pass_fd)
{
	union {
		char b[CMSG_SPACE(sizeof(int))];
		struct cmsghdr align;
	} cbuf;
	struct iovec iov = { .iov_base = (void *)buf, .iov_len = len };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };
	struct vd_hvc_rsp rsp;

	if (pass_fd >= 0) {
		struct cmsghdr *cm;

		memset(&cbuf, 0, sizeof(cbuf));
		mh.msg_control = cbuf.b;
		mh.msg_controllen = sizeof(cbuf.b);
		cm = CMSG_FIRSTHDR(&mh);
		cm->cmsg_level = SOL_SOCKET;
		cm->cmsg_type = SCM_RIGHTS;
		cm->cmsg_len = CMSG_LEN(sizeof(int));
		memcpy(CMSG_DATA(cm), &pass_fd, sizeof(int));
	}
	assert_int_equal(sendmsg(fd, &mh, MSG_NOSIGNAL), (ssize_t)len);
	assert_int_equal(recv(fd, &rsp, sizeof(rsp), 0), sizeof(rsp));
	assert_int_equal(rsp.version, VD_HVC_VERSION);
	return rsp.ret;
}

static void test_hostile_client(void **state)
{
	struct vd_hvc_req req = { .version = VD_HVC_VERSION, .op = VD_HVC_OP_EVTCHN_CLOSE };
	char big[4096] = { 0 };
	struct vd_simdom d = { 0 };
	struct vd_hvc *h;
	int fd = raw_connect();
	int efd[2];

	/* Wrong sizes, version, op, reserved bits; fds we never asked for. */
	assert_int_equal(raw_call(fd, "x", 1, -1), -EPROTO);
	assert_int_equal(raw_call(fd, big, sizeof(big), -1), -EPROTO);
	req.version = 99;
	assert_int_equal(raw_call(fd, &req, sizeof(req), -1), -EPROTO);
	req.version = VD_HVC_VERSION;
	req.op = 77;
	assert_int_equal(raw_call(fd, &req, sizeof(req), -1), -EOPNOTSUPP);
	req.op = VD_HVC_OP_EVTCHN_CLOSE;
	req.port = 0xffffffffu;
	assert_int_equal(raw_call(fd, &req, sizeof(req), -1), -EINVAL);
	req.op = VD_HVC_OP_EVTCHN_PEER_FD;
	assert_int_equal(raw_call(fd, &req, sizeof(req), -1), -EINVAL);
	req.op = VD_HVC_OP_DOMAIN_MAP;
	req.domid = 0xffffffffu;
	assert_int_equal(raw_call(fd, &req, sizeof(req), -1), -ENOENT);
	req.reserved = 1;
	assert_int_equal(raw_call(fd, &req, sizeof(req), -1), -EINVAL);
	req.reserved = 0;
	req.op = VD_HVC_OP_DOMAIN_CREATE;
	req.domid = 0;
	req.mem_bytes = ~0ull;
	req.nr_grant_entries = ~0u;
	assert_int_equal(raw_call(fd, &req, sizeof(req), -1), -EINVAL);
	assert_int_equal(pipe(efd), 0);
	req.op = 0;
	assert_int_equal(raw_call(fd, &req, sizeof(req), efd[0]), -EOPNOTSUPP);
	close(efd[0]);
	/* The hv closed its copy of the fd we sent: the pipe's reader is gone. */
	assert_true(write(efd[1], "x", 1) < 0);
	close(efd[1]);

	/* A flood without reading responses gets the client dropped. */
	assert_int_equal(fcntl(fd, F_SETFL, O_NONBLOCK), 0);
	for (int i = 0; i < 100000; i++) {
		if (send(fd, &req, sizeof(req), MSG_NOSIGNAL) < 0) {
			break;
		}
	}
	close(fd);

	/* The hypervisor still serves everybody else. */
	h = conn();
	assert_int_equal(vd_hvc_domain_create(h, 0, MEM_BYTES, NR_GNT, &d, NULL), 0);
	vd_hvc_domain_unmap(&d);
	vd_hvc_close(h);
}

static void test_domain_death(void **state)
{
	struct vd_hvc *g = conn(), *d0 = conn();
	struct vd_simdom d = { 0 }, m = { 0 };
	uint32_t gport, lport, x;
	int gfd, lfd, xfd, ret = 0;
	uint16_t domid;

	assert_int_equal(vd_hvc_domain_create(g, 0, MEM_BYTES, NR_GNT, &d, NULL), 0);
	domid = d.domid;
	((char *)d.mem)[100] = 'q';
	assert_int_equal(vd_hvc_domain_map(d0, domid, &m, NULL), 0);
	assert_int_equal(vd_hvc_evtchn_alloc_unbound(g, 0, &gport, &gfd), 0);
	assert_int_equal(vd_hvc_evtchn_alloc_unbound(g, 0, &x, &xfd), 0);
	assert_int_equal(vd_hvc_evtchn_bind_interdomain(d0, domid, gport, &lport, &lfd), 0);
	vd_hvc_domain_unmap(&d);
	vd_hvc_close(g);
	close(gfd);
	close(xfd);

	for (int i = 0; i < 200; i++) {
		struct vd_simdom y = { 0 };

		ret = vd_hvc_domain_map(d0, domid, &y, NULL);
		if (ret < 0) {
			break;
		}
		vd_hvc_domain_unmap(&y);
		hvt_sleep_ms(10);
	}
	assert_int_equal(ret, -ENOENT);
#ifdef VD_HAVE_SIM_XS
	assert_false(hvt_exists(&g_hv, "xenstored.d1"));
#endif
	/* The dead domain's ports are gone; our end is unbound. */
	assert_int_equal(vd_hvc_evtchn_bind_interdomain(d0, domid, x, &x, &xfd), -EINVAL);
	assert_int_equal(vd_hvc_evtchn_close(d0, lport), 0);
	close(lfd);
	/* An existing mapping stays valid (the memfd outlives the domain). */
	assert_int_equal(((char *)m.mem)[100], 'q');
	vd_hvc_domain_unmap(&m);
	vd_hvc_close(d0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_lifecycle),
		cmocka_unit_test(test_usage),
		cmocka_unit_test_setup_teardown(test_domain_create_map, setup, teardown),
		cmocka_unit_test_setup_teardown(test_domain_create_invalid, setup, teardown),
		cmocka_unit_test_setup_teardown(test_domain_limit, setup, teardown),
		cmocka_unit_test_setup_teardown(test_evtchn, setup, teardown),
		cmocka_unit_test_setup_teardown(test_port_limit, setup, teardown),
		cmocka_unit_test_setup_teardown(test_hostile_client, setup, teardown),
		cmocka_unit_test_setup_teardown(test_domain_death, setup, teardown),
	};

	signal(SIGPIPE, SIG_IGN);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
