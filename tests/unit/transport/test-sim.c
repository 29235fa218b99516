/*
 * The sim transport against a real simulated hypervisor (forked child):
 * a guest domain created through one hvc connection, the backend attached
 * as dom0 through vd_transport_open("sim"). Every grant check of Xen,
 * through vd_gnt_copy and vd_gnt_map; event channels both ways; death.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <poll.h>

#include "tests/unit/hv/hv-test-util.h"
#include "transport/transport.h"

#define NR_PAGES 64u
#define NR_GNT   32u

struct fx {
	struct hvt hv;
	struct vd_hvc *guest;
	struct vd_simdom gd; /* the guest's view */
	struct vd_transport *t;
	struct vd_gnt *g;
};

static struct fx g_fx;

static int setup(void **state)
{
	struct vd_err err = { 0 };

	memset(&g_fx, 0, sizeof(g_fx));
	if (hvt_start(&g_fx.hv) < 0 || vd_hvc_connect(g_fx.hv.dir, &g_fx.guest, &err) < 0 ||
	    vd_hvc_domain_create(g_fx.guest, 0, NR_PAGES * 4096ull, NR_GNT, &g_fx.gd, &err) < 0 ||
	    vd_transport_open("sim", &g_fx.t, &err) < 0 ||
	    vd_transport_attach_domain(g_fx.t, g_fx.gd.domid, &err) < 0 ||
	    vd_gnt_open(g_fx.t, &g_fx.g) < 0) {
		fprintf(stderr, "setup: %s\n", vd_err_msg(&err));
		return -1;
	}
	*state = &g_fx;
	return 0;
}

static int teardown(void **state)
{
	vd_gnt_close(g_fx.g);
	if (g_fx.t != NULL) {
		vd_transport_detach_domain(g_fx.t, g_fx.gd.domid);
		vd_transport_close(g_fx.t);
	}
	vd_hvc_domain_unmap(&g_fx.gd);
	vd_hvc_close(g_fx.guest);
	return hvt_stop(&g_fx.hv) == 0 ? 0 : -1;
}

/* The guest grants `frame` to domid, as a frontend does (flags last). */
static void grant(uint32_t ref, uint16_t domid, uint32_t frame, uint16_t flags)
{
	struct grant_entry_v1 *e = &g_fx.gd.gnttab[ref];

	e->flags = 0;
	vd_smp_wmb();
	e->domid = domid;
	e->frame = frame;
	vd_smp_wmb();
	e->flags = flags;
}

static unsigned char *gpage(uint32_t frame)
{
	return (unsigned char *)g_fx.gd.mem + (size_t)frame * 4096;
}

static int16_t copy1(uint32_t ref, uint16_t off, uint16_t len, bool to_guest, void *buf)
{
	struct vd_gcopy s = {
		.local = buf,
		.gref = ref,
		.domid = g_fx.gd.domid,
		.guest_offset_bytes = off,
		.len_bytes = len,
		.to_guest = to_guest,
		.status = 99,
	};

	assert_int_equal(vd_gnt_copy(g_fx.g, &s, 1), 0);
	return s.status;
}

static void test_open_unknown(void **state)
{
	struct vd_transport *t = NULL;
	struct vd_err err = { 0 };

	assert_int_equal(vd_transport_open("nope", &t, &err), -ENOENT);
	assert_non_null(strstr(err.msg, "nope"));
	assert_string_equal(vd_transport_name(g_fx.t), "sim");
	/* Attaching a domain that does not exist fails. */
	memset(&err, 0, sizeof(err));
	assert_int_equal(vd_transport_attach_domain(g_fx.t, 55, &err), -ENOENT);
	assert_int_equal(err.errnum, ENOENT);
}

static void test_copy_from_guest(void **state)
{
	unsigned char buf[4096];

	for (int i = 0; i < 4096; i++) {
		gpage(3)[i] = (unsigned char)(i * 7);
	}
	grant(5, 0, 3, GTF_permit_access | GTF_readonly);
	memset(buf, 0, sizeof(buf));
	/* A readonly grant allows reading (a WRITE request's data). */
	assert_int_equal(copy1(5, 100, 200, false, buf), GNTST_okay);
	assert_memory_equal(buf, gpage(3) + 100, 200);
	assert_int_equal(buf[200], 0);
	assert_int_equal(copy1(5, 0, 4096, false, buf), GNTST_okay);
	assert_memory_equal(buf, gpage(3), 4096);
}

static void test_copy_to_guest(void **state)
{
	unsigned char buf[4096];

	memset(buf, 0x5a, sizeof(buf));
	memset(gpage(9), 0, 4096);
	grant(6, 0, 9, GTF_permit_access);
	assert_int_equal(copy1(6, 4000, 96, true, buf), GNTST_okay);
	assert_int_equal(gpage(9)[3999], 0);
	assert_int_equal(gpage(9)[4000], 0x5a);
	assert_int_equal(gpage(9)[4095], 0x5a);
	/* A READ from disk writes guest memory: a readonly grant refuses it. */
	memset(gpage(9), 0, 4096);
	grant(6, 0, 9, GTF_permit_access | GTF_readonly);
	assert_int_equal(copy1(6, 0, 4096, true, buf), GNTST_general_error);
	assert_int_equal(gpage(9)[0], 0);
	assert_int_equal(gpage(9)[4095], 0);
}

static void test_copy_checks(void **state)
{
	unsigned char buf[4096];

	memset(buf, 0, sizeof(buf));
	grant(1, 0, 2, GTF_permit_access);
	assert_int_equal(copy1(1, 0, 16, false, buf), GNTST_okay); /* the control case */
	/* ref out of range */
	assert_int_equal(copy1(NR_GNT, 0, 16, false, buf), GNTST_bad_gntref);
	assert_int_equal(copy1(0xffffffffu, 0, 16, false, buf), GNTST_bad_gntref);
	/* not permitted: invalid entry, or another grant type */
	grant(1, 0, 2, GTF_invalid);
	assert_int_equal(copy1(1, 0, 16, false, buf), GNTST_general_error);
	grant(1, 0, 2, GTF_accept_transfer);
	assert_int_equal(copy1(1, 0, 16, false, buf), GNTST_general_error);
	grant(1, 0, 2, GTF_transitive);
	assert_int_equal(copy1(1, 0, 16, false, buf), GNTST_general_error);
	/* granted to another domain */
	grant(1, 5, 2, GTF_permit_access);
	assert_int_equal(copy1(1, 0, 16, false, buf), GNTST_general_error);
	assert_int_equal(copy1(1, 0, 16, true, buf), GNTST_general_error);
	/* frame beyond the guest's memory */
	grant(1, 0, NR_PAGES, GTF_permit_access);
	assert_int_equal(copy1(1, 0, 16, false, buf), GNTST_bad_page);
	grant(1, 0, 0xffffffffu, GTF_permit_access);
	assert_int_equal(copy1(1, 0, 16, true, buf), GNTST_bad_page);
	/* offset + len must stay within the page */
	grant(1, 0, NR_PAGES - 1, GTF_permit_access);
	assert_int_equal(copy1(1, 4000, 97, false, buf), GNTST_bad_copy_arg);
	assert_int_equal(copy1(1, 4095, 2, true, buf), GNTST_bad_copy_arg);
	assert_int_equal(copy1(1, 0, 4097, true, buf), GNTST_bad_copy_arg);
	assert_int_equal(copy1(1, 4095, 1, true, buf), GNTST_okay);
	assert_int_equal(copy1(1, 0, 4096, false, buf), GNTST_okay);
}

static void test_copy_batch(void **state)
{
	unsigned char a[512], b[512], c[512];
	struct vd_gcopy s[4];

	memset(a, 1, sizeof(a));
	memset(b, 2, sizeof(b));
	memset(c, 0, sizeof(c));
	memset(gpage(20), 0, 4096);
	memset(gpage(21), 0x77, 4096);
	grant(10, 0, 20, GTF_permit_access);
	grant(11, 0, 21, GTF_permit_access | GTF_readonly);
	memset(s, 0, sizeof(s));
	s[0] = (struct vd_gcopy){ a, 10, g_fx.gd.domid, 0, 512, true, 99 };
	s[1] = (struct vd_gcopy){ b, 11, g_fx.gd.domid, 0, 512, true, 99 }; /* r/o */
	s[2] = (struct vd_gcopy){ c, 11, g_fx.gd.domid, 512, 512, false, 99 };
	s[3] = (struct vd_gcopy){ c, 10, 77, 0, 512, false, 99 }; /* no such dom */
	assert_int_equal(vd_gnt_copy(g_fx.g, s, 4), 0);
	assert_int_equal(s[0].status, GNTST_okay);
	assert_int_equal(s[1].status, GNTST_general_error);
	assert_int_equal(s[2].status, GNTST_okay);
	assert_int_equal(s[3].status, GNTST_bad_domain);
	assert_memory_equal(gpage(20), a, 512);
	assert_int_equal(gpage(21)[0], 0x77);
	assert_int_equal(c[0], 0x77);
	assert_int_equal(c[511], 0x77);
}

static void test_map(void **state)
{
	const uint32_t refs[3] = { 12, 13, 14 };
	const uint32_t frames[3] = { 40, 4, 22 };
	unsigned char *p;
	int st = 99;

	for (int i = 0; i < 3; i++) {
		memset(gpage(frames[i]), 'a' + i, 4096);
		grant(refs[i], 0, frames[i], GTF_permit_access);
	}
	p = vd_gnt_map(g_fx.g, g_fx.gd.domid, refs, 3, true, &st);
	assert_non_null(p);
	assert_int_equal(st, GNTST_okay);
	/* Contiguous in our address space, whatever the guest frames. */
	for (int i = 0; i < 3; i++) {
		assert_int_equal(p[i * 4096], 'a' + i);
		assert_int_equal(p[i * 4096 + 4095], 'a' + i);
	}
	/* Shared both ways. */
	p[4096 + 10] = 'Z';
	assert_int_equal(gpage(4)[10], 'Z');
	gpage(22)[5] = 'Y';
	assert_int_equal(p[2 * 4096 + 5], 'Y');
	assert_int_equal(vd_gnt_unmap(g_fx.g, p, 3), 0);

	/* A readonly grant maps readonly, not writable. */
	grant(13, 0, 4, GTF_permit_access | GTF_readonly);
	p = vd_gnt_map(g_fx.g, g_fx.gd.domid, refs, 3, false, &st);
	assert_non_null(p);
	assert_int_equal(p[4096 + 10], 'Z');
	assert_int_equal(vd_gnt_unmap(g_fx.g, p, 3), 0);
	st = 99;
	assert_null(vd_gnt_map(g_fx.g, g_fx.gd.domid, refs, 3, true, &st));
	assert_int_equal(st, GNTST_general_error);
}

/* Persistent grants: one page at a time, writable, as Xen allows it. */
static void test_map_single(void **state)
{
	uint32_t ref = 17;
	unsigned char *p, *p2;
	int st = 99;

	grant(17, 0, 30, GTF_permit_access);
	grant(18, 0, 31, GTF_permit_access);
	p = vd_gnt_map(g_fx.g, g_fx.gd.domid, &ref, 1, true, &st);
	assert_non_null(p);
	assert_int_equal(st, GNTST_okay);
	ref = 18;
	p2 = vd_gnt_map(g_fx.g, g_fx.gd.domid, &ref, 1, true, &st);
	assert_non_null(p2);
	p[100] = 'P';
	p2[200] = 'Q';
	assert_int_equal(gpage(30)[100], 'P');
	assert_int_equal(gpage(31)[200], 'Q');
	/* The mapping outlives a later change of the entry (Xen pins a mapped grant). */
	grant(17, 0, 30, GTF_invalid);
	p[101] = 'R';
	assert_int_equal(gpage(30)[101], 'R');
	assert_int_equal(vd_gnt_unmap(g_fx.g, p, 1), 0);
	assert_int_equal(vd_gnt_unmap(g_fx.g, p2, 1), 0);
	/* Revoked: no new mapping. Read-only: no writable mapping. */
	ref = 17;
	st = 99;
	assert_null(vd_gnt_map(g_fx.g, g_fx.gd.domid, &ref, 1, true, &st));
	assert_int_equal(st, GNTST_general_error);
	grant(18, 0, 31, GTF_permit_access | GTF_readonly);
	ref = 18;
	st = 99;
	assert_null(vd_gnt_map(g_fx.g, g_fx.gd.domid, &ref, 1, true, &st));
	assert_int_equal(st, GNTST_general_error);
	/* Granted to another domain than us (dom0). */
	grant(18, 4, 31, GTF_permit_access);
	assert_null(vd_gnt_map(g_fx.g, g_fx.gd.domid, &ref, 1, true, &st));
	assert_int_equal(st, GNTST_general_error);
}

static void test_map_checks(void **state)
{
	uint32_t refs[2] = { 15, 16 };
	int st;

	grant(15, 0, 1, GTF_permit_access);
	grant(16, 0, 2, GTF_permit_access);
	refs[1] = NR_GNT + 3;
	st = 99;
	assert_null(vd_gnt_map(g_fx.g, g_fx.gd.domid, refs, 2, false, &st));
	assert_int_equal(st, GNTST_bad_gntref);
	refs[1] = 16;
	grant(16, 0, 2, GTF_invalid);
	assert_null(vd_gnt_map(g_fx.g, g_fx.gd.domid, refs, 2, false, &st));
	assert_int_equal(st, GNTST_general_error);
	grant(16, 3, 2, GTF_permit_access);
	assert_null(vd_gnt_map(g_fx.g, g_fx.gd.domid, refs, 2, false, &st));
	assert_int_equal(st, GNTST_general_error);
	grant(16, 0, NR_PAGES + 100, GTF_permit_access);
	assert_null(vd_gnt_map(g_fx.g, g_fx.gd.domid, refs, 2, false, &st));
	assert_int_equal(st, GNTST_bad_page);
	assert_null(vd_gnt_map(g_fx.g, 99, refs, 1, false, &st));
	assert_int_equal(st, GNTST_bad_domain);
	assert_null(vd_gnt_map(g_fx.g, g_fx.gd.domid, refs, 0, false, &st));
	assert_null(vd_gnt_map(g_fx.g, g_fx.gd.domid, refs, 2, false, NULL));
	/* and the control case */
	grant(16, 0, 2, GTF_permit_access);
	{
		void *p = vd_gnt_map(g_fx.g, g_fx.gd.domid, refs, 2, false, &st);

		assert_non_null(p);
		assert_int_equal(vd_gnt_unmap(g_fx.g, p, 2), 0);
	}
}

static bool readable(int fd, int timeout_ms)
{
	struct pollfd p = { .fd = fd, .events = POLLIN };

	return poll(&p, 1, timeout_ms) == 1 && (p.revents & POLLIN);
}

static void test_evtchn(void **state)
{
	struct vd_evtchn *e, *e2;
	uint32_t gport, other, lport, x;
	int gfd, ofd;
	uint64_t v;

	assert_int_equal(vd_hvc_evtchn_alloc_unbound(g_fx.guest, 0, &gport, &gfd), 0);
	assert_int_equal(vd_hvc_evtchn_alloc_unbound(g_fx.guest, 9, &other, &ofd), 0);
	assert_int_equal(vd_evtchn_open(g_fx.t, &e), 0);
	assert_int_equal(vd_evtchn_open(g_fx.t, &e2), 0);
	assert_int_equal(vd_evtchn_fd(e), -ENOTCONN);
	assert_int_equal(vd_evtchn_notify(e), -ENOTCONN);
	/* wrong port, a port meant for domain 9, a wrong domain */
	assert_int_equal(vd_evtchn_bind(e, g_fx.gd.domid, gport + 7, &x), -EINVAL);
	assert_int_equal(vd_evtchn_bind(e, g_fx.gd.domid, other, &x), -EINVAL);
	assert_int_equal(vd_evtchn_bind(e, 44, gport, &x), -EINVAL);
	assert_int_equal(vd_evtchn_bind(e, g_fx.gd.domid, gport, &lport), 0);
	assert_true(vd_evtchn_fd(e) >= 0);
	/* already bound: from another handle, and this handle twice */
	assert_int_equal(vd_evtchn_bind(e2, g_fx.gd.domid, gport, &x), -EINVAL);
	assert_int_equal(vd_evtchn_bind(e, g_fx.gd.domid, gport, &x), -EBUSY);

	/* guest -> backend, then ack clears it */
	assert_false(readable(vd_evtchn_fd(e), 0));
	assert_int_equal(vd_hvc_evtchn_notify(g_fx.guest, gport), 0);
	assert_true(readable(vd_evtchn_fd(e), 1000));
	assert_int_equal(vd_evtchn_ack(e), 0);
	assert_false(readable(vd_evtchn_fd(e), 0));
	assert_int_equal(vd_evtchn_ack(e), 0); /* nothing pending: no block, no error */
	/* backend -> guest */
	assert_false(readable(gfd, 0));
	assert_int_equal(vd_evtchn_notify(e), 0);
	assert_true(readable(gfd, 1000));
	assert_int_equal(read(gfd, &v, sizeof(v)), sizeof(v));
	assert_int_equal(v, 1);
	assert_false(readable(vd_evtchn_fd(e), 0)); /* not to ourselves */

	/* Closing unbinds: the guest's port can be bound again. */
	vd_evtchn_close(e);
	assert_int_equal(vd_evtchn_bind(e2, g_fx.gd.domid, gport, &x), 0);
	assert_int_equal(vd_hvc_evtchn_notify(g_fx.guest, gport), 0);
	/* The guest's cached notify target reaches the new binding (restart). */
	assert_true(readable(vd_evtchn_fd(e2), 1000));
	assert_int_equal(vd_evtchn_ack(e2), 0);
	assert_int_equal(vd_evtchn_notify(e2), 0);
	assert_true(readable(gfd, 1000));
	vd_evtchn_close(e2);
	vd_evtchn_close(NULL);
	assert_int_equal(vd_hvc_evtchn_close(g_fx.guest, gport), 0);
	assert_int_equal(vd_hvc_evtchn_close(g_fx.guest, other), 0);
	close(gfd);
	close(ofd);
}

static void test_domain_death(void **state)
{
	struct vd_err err = { 0 };
	unsigned char buf[16];
	int ret = 0;

	grant(2, 0, 7, GTF_permit_access);
	gpage(7)[0] = 'k';
	vd_hvc_close(g_fx.guest);
	g_fx.guest = NULL;
	/* A new attach fails once the hv has seen the death. */
	vd_transport_detach_domain(g_fx.t, g_fx.gd.domid);
	for (int i = 0; i < 200; i++) {
		ret = vd_transport_attach_domain(g_fx.t, g_fx.gd.domid, &err);
		if (ret < 0) {
			break;
		}
		vd_transport_detach_domain(g_fx.t, g_fx.gd.domid);
		hvt_sleep_ms(10);
	}
	assert_int_equal(ret, -ENOENT);
	/* Not attached: grant copies fail cleanly. */
	assert_int_equal(copy1(2, 0, 1, false, buf), GNTST_bad_domain);
	/* teardown detaches again: must be harmless */
}

static void test_check_grant_direct(void **state)
{
	/* vd_simdom_check_grant alone, on private memory. */
	static struct grant_entry_v1 tab[4];
	static char mem[2 * 4096];
	struct vd_simdom d = {
		.domid = 3,
		.mem = mem,
		.nr_pages = 2,
		.gnttab = tab,
		.nr_grant_entries = 4,
	};
	void *page = NULL;

	tab[0] = (struct grant_entry_v1){ GTF_permit_access, 0, 1 };
	tab[1] = (struct grant_entry_v1){ GTF_permit_access | GTF_readonly, 0, 0 };
	tab[2] = (struct grant_entry_v1){ GTF_permit_access, 0, 2 };
	tab[3] = (struct grant_entry_v1){ GTF_permit_access | GTF_PWT, 8, 0 };
	assert_int_equal(vd_simdom_check_grant(&d, 0, 0, true, &page), GNTST_okay);
	assert_ptr_equal(page, mem + 4096);
	assert_int_equal(vd_simdom_check_grant(&d, 0, 1, false, &page), GNTST_okay);
	assert_ptr_equal(page, mem);
	assert_int_equal(vd_simdom_check_grant(&d, 0, 1, true, &page), GNTST_general_error);
	assert_int_equal(vd_simdom_check_grant(&d, 0, 2, false, &page), GNTST_bad_page);
	assert_int_equal(vd_simdom_check_grant(&d, 0, 4, false, &page), GNTST_bad_gntref);
	assert_int_equal(vd_simdom_check_grant(&d, 0, 3, false, &page), GNTST_general_error);
	/* extra subflags do not matter, the domid does */
	assert_int_equal(vd_simdom_check_grant(&d, 8, 3, true, &page), GNTST_okay);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_check_grant_direct),
		cmocka_unit_test_setup_teardown(test_open_unknown, setup, teardown),
		cmocka_unit_test_setup_teardown(test_copy_from_guest, setup, teardown),
		cmocka_unit_test_setup_teardown(test_copy_to_guest, setup, teardown),
		cmocka_unit_test_setup_teardown(test_copy_checks, setup, teardown),
		cmocka_unit_test_setup_teardown(test_copy_batch, setup, teardown),
		cmocka_unit_test_setup_teardown(test_map, setup, teardown),
		cmocka_unit_test_setup_teardown(test_map_checks, setup, teardown),
		cmocka_unit_test_setup_teardown(test_map_single, setup, teardown),
		cmocka_unit_test_setup_teardown(test_evtchn, setup, teardown),
		cmocka_unit_test_setup_teardown(test_domain_death, setup, teardown),
	};

	signal(SIGPIPE, SIG_IGN);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
