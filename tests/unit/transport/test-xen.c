/*
 * The xen transport without Xen: libxengnttab and libxenevtchn are
 * replaced with -Wl,--wrap fakes that record what the transport asks for,
 * so the segment translation, batching, status mapping and event-channel
 * calls are checked. The real libraries are used once, to check that open
 * fails cleanly, with a clear message, where /dev/xen is absent.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>
#include <xenevtchn.h>
#include <xengnttab.h>

#include "transport/transport.h"

/* The fakes' state. */
static bool g_real;       /* pass open calls to the real library */
static int g_fake_handle; /* what the fake handles point to */
static unsigned int g_copy_calls;
static unsigned int g_copy_counts[8];
static xengnttab_grant_copy_segment_t g_segs[2048];
static unsigned int g_nr_segs;
static int g_copy_fail_errno;
static uint32_t g_map_count, g_map_domid;
static int g_map_prot;
static void *g_map_ret;
static int g_evfd = -1;
static int g_notified_port = -1, g_unmasked_port = -1, g_unbound_port = -1;
static int g_pending[4];
static unsigned int g_nr_pending;

xengnttab_handle *__real_xengnttab_open(struct xentoollog_logger *logger, unsigned int flags);
xengnttab_handle *__wrap_xengnttab_open(struct xentoollog_logger *logger, unsigned int flags);
int __real_xengnttab_close(xengnttab_handle *xgt);
int __wrap_xengnttab_close(xengnttab_handle *xgt);
int __wrap_xengnttab_grant_copy(xengnttab_handle *xgt, uint32_t count,
				xengnttab_grant_copy_segment_t *segs);
void *__wrap_xengnttab_map_domain_grant_refs(xengnttab_handle *xgt, uint32_t count, uint32_t domid,
					     uint32_t *refs, int prot);
int __wrap_xengnttab_unmap(xengnttab_handle *xgt, void *start, uint32_t count);
xenevtchn_handle *__real_xenevtchn_open(struct xentoollog_logger *logger, unsigned int flags);
xenevtchn_handle *__wrap_xenevtchn_open(struct xentoollog_logger *logger, unsigned int flags);
int __real_xenevtchn_close(xenevtchn_handle *xce);
int __wrap_xenevtchn_close(xenevtchn_handle *xce);
int __wrap_xenevtchn_fd(xenevtchn_handle *xce);
xenevtchn_port_or_error_t __wrap_xenevtchn_bind_interdomain(xenevtchn_handle *xce, uint32_t domid,
							    evtchn_port_t remote_port);
int __wrap_xenevtchn_unbind(xenevtchn_handle *xce, evtchn_port_t port);
xenevtchn_port_or_error_t __wrap_xenevtchn_pending(xenevtchn_handle *xce);
int __wrap_xenevtchn_unmask(xenevtchn_handle *xce, evtchn_port_t port);
int __wrap_xenevtchn_notify(xenevtchn_handle *xce, evtchn_port_t port);

xengnttab_handle *__wrap_xengnttab_open(struct xentoollog_logger *logger, unsigned int flags)
{
	return g_real ? __real_xengnttab_open(logger, flags) : (void *)&g_fake_handle;
}

int __wrap_xengnttab_close(xengnttab_handle *xgt)
{
	return (void *)xgt == &g_fake_handle ? 0 : __real_xengnttab_close(xgt);
}

int __wrap_xengnttab_grant_copy(xengnttab_handle *xgt, uint32_t count,
				xengnttab_grant_copy_segment_t *segs)
{
	assert_ptr_equal(xgt, &g_fake_handle);
	if (g_copy_fail_errno) {
		errno = g_copy_fail_errno;
		return -1;
	}
	assert_true(g_nr_segs + count <= VD_ARRAY_SIZE(g_segs));
	if (g_copy_calls < VD_ARRAY_SIZE(g_copy_counts)) {
		g_copy_counts[g_copy_calls] = count;
	}
	g_copy_calls++;
	for (uint32_t i = 0; i < count; i++) {
		g_segs[g_nr_segs + i] = segs[i];
		/* status = -(global index % 4): 0, -1, -2, -3, 0, ... */
		segs[i].status = (int16_t)(-(int)((g_nr_segs + i) % 4));
	}
	g_nr_segs += count;
	return 0;
}

void *__wrap_xengnttab_map_domain_grant_refs(xengnttab_handle *xgt, uint32_t count, uint32_t domid,
					     uint32_t *refs, int prot)
{
	g_map_count = count;
	g_map_domid = domid;
	g_map_prot = prot;
	if (g_map_ret == NULL) {
		errno = EINVAL;
	}
	return g_map_ret;
}

int __wrap_xengnttab_unmap(xengnttab_handle *xgt, void *start, uint32_t count)
{
	return start == g_map_ret && count == g_map_count ? 0 : (errno = EINVAL, -1);
}

xenevtchn_handle *__wrap_xenevtchn_open(struct xentoollog_logger *logger, unsigned int flags)
{
	return g_real ? __real_xenevtchn_open(logger, flags) : (void *)&g_fake_handle;
}

int __wrap_xenevtchn_close(xenevtchn_handle *xce)
{
	return (void *)xce == &g_fake_handle ? 0 : __real_xenevtchn_close(xce);
}

int __wrap_xenevtchn_fd(xenevtchn_handle *xce)
{
	return g_evfd;
}

xenevtchn_port_or_error_t __wrap_xenevtchn_bind_interdomain(xenevtchn_handle *xce, uint32_t domid,
							    evtchn_port_t remote_port)
{
	if (domid != 5 || remote_port != 11) {
		errno = EINVAL;
		return -1;
	}
	return 42;
}

int __wrap_xenevtchn_unbind(xenevtchn_handle *xce, evtchn_port_t port)
{
	g_unbound_port = (int)port;
	return 0;
}

xenevtchn_port_or_error_t __wrap_xenevtchn_pending(xenevtchn_handle *xce)
{
	/* The transport must have made the fd non-blocking. */
	assert_true(fcntl(g_evfd, F_GETFL) & O_NONBLOCK);
	if (g_nr_pending == 0) {
		errno = EAGAIN;
		return -1;
	}
	return g_pending[--g_nr_pending];
}

int __wrap_xenevtchn_unmask(xenevtchn_handle *xce, evtchn_port_t port)
{
	g_unmasked_port = (int)port;
	return 0;
}

int __wrap_xenevtchn_notify(xenevtchn_handle *xce, evtchn_port_t port)
{
	g_notified_port = (int)port;
	return 0;
}

static void reset(void)
{
	g_real = false;
	g_copy_calls = 0;
	g_nr_segs = 0;
	g_copy_fail_errno = 0;
	memset(g_segs, 0, sizeof(g_segs));
	memset(g_copy_counts, 0, sizeof(g_copy_counts));
}

static void test_open_without_xen(void **state)
{
	struct vd_transport *t = NULL;
	struct vd_err err = { 0 };

	if (access("/dev/xen/gntdev", F_OK) == 0) {
		skip();
	}
	g_real = true;
	assert_true(vd_transport_open("xen", &t, &err) < 0);
	g_real = false;
	assert_null(t);
	assert_true(err.errnum != 0);
	assert_non_null(strstr(err.msg, "/dev/xen/gntdev"));
	assert_non_null(strstr(err.msg, "Xen"));
}

static void test_copy_translation(void **state)
{
	struct vd_transport *t;
	struct vd_gnt *g;
	char a[64], b[64];
	struct vd_gcopy s[3] = {
		{ .local = a,
		  .gref = 7,
		  .domid = 5,
		  .guest_offset_bytes = 512,
		  .len_bytes = 64,
		  .to_guest = true,
		  .status = 99 },
		{ .local = b,
		  .gref = 8,
		  .domid = 5,
		  .guest_offset_bytes = 4032,
		  .len_bytes = 64,
		  .to_guest = false,
		  .status = 99 },
		{ .local = b,
		  .gref = 9,
		  .domid = 6,
		  .guest_offset_bytes = 0,
		  .len_bytes = 4096,
		  .to_guest = false,
		  .status = 99 },
	};

	reset();
	assert_int_equal(vd_transport_open("xen", &t, NULL), 0);
	assert_string_equal(vd_transport_name(t), "xen");
	assert_int_equal(vd_transport_attach_domain(t, 5, NULL), 0);
	assert_int_equal(vd_gnt_open(t, &g), 0);
	assert_int_equal(vd_gnt_copy(g, s, 3), 0);
	assert_int_equal(g_copy_calls, 1);
	assert_int_equal(g_nr_segs, 3);
	/* local -> guest: source is our buffer, dest the grant */
	assert_int_equal(g_segs[0].flags, GNTCOPY_dest_gref);
	assert_ptr_equal(g_segs[0].source.virt, a);
	assert_int_equal(g_segs[0].dest.foreign.ref, 7);
	assert_int_equal(g_segs[0].dest.foreign.offset, 512);
	assert_int_equal(g_segs[0].dest.foreign.domid, 5);
	assert_int_equal(g_segs[0].len, 64);
	/* guest -> local */
	assert_int_equal(g_segs[1].flags, GNTCOPY_source_gref);
	assert_int_equal(g_segs[1].source.foreign.ref, 8);
	assert_int_equal(g_segs[1].source.foreign.offset, 4032);
	assert_int_equal(g_segs[1].source.foreign.domid, 5);
	assert_ptr_equal(g_segs[1].dest.virt, b);
	assert_int_equal(g_segs[2].source.foreign.domid, 6);
	assert_int_equal(g_segs[2].len, 4096);
	/* per-segment statuses come back */
	assert_int_equal(s[0].status, 0);
	assert_int_equal(s[1].status, -1);
	assert_int_equal(s[2].status, -2);

	/* A failed call fails every segment. */
	g_copy_fail_errno = EFAULT;
	assert_int_equal(vd_gnt_copy(g, s, 3), -EFAULT);
	for (int i = 0; i < 3; i++) {
		assert_int_equal(s[i].status, GNTST_general_error);
	}
	vd_gnt_close(g);
	vd_transport_detach_domain(t, 5);
	vd_transport_close(t);
}

static void test_copy_batches(void **state)
{
	static struct vd_gcopy s[1100];
	static char buf[16];
	struct vd_transport *t;
	struct vd_gnt *g;

	reset();
	for (unsigned int i = 0; i < VD_ARRAY_SIZE(s); i++) {
		s[i] = (struct vd_gcopy){ .local = buf,
					  .gref = i,
					  .domid = 3,
					  .len_bytes = 16,
					  .to_guest = i & 1,
					  .status = 99 };
	}
	assert_int_equal(vd_transport_open("xen", &t, NULL), 0);
	assert_int_equal(vd_gnt_open(t, &g), 0);
	assert_int_equal(vd_gnt_copy(g, s, VD_ARRAY_SIZE(s)), 0);
	assert_true(g_copy_calls >= 3); /* batched, not all at once */
	assert_int_equal(g_nr_segs, VD_ARRAY_SIZE(s));
	for (unsigned int i = 0; i < VD_ARRAY_SIZE(s); i++) {
		uint32_t ref = (i & 1) ? g_segs[i].dest.foreign.ref : g_segs[i].source.foreign.ref;

		assert_int_equal(ref, i);
		assert_int_equal(s[i].status, -(int)(i % 4));
	}
	assert_int_equal(vd_gnt_copy(g, s, 0), 0);
	vd_gnt_close(g);
	vd_transport_close(t);
}

static void test_map(void **state)
{
	static char pages[2 * 4096] __attribute__((aligned(4096)));
	const uint32_t refs[2] = { 3, 4 };
	struct vd_transport *t;
	struct vd_gnt *g;
	int st = 99;

	reset();
	assert_int_equal(vd_transport_open("xen", &t, NULL), 0);
	assert_int_equal(vd_gnt_open(t, &g), 0);
	g_map_ret = pages;
	assert_ptr_equal(vd_gnt_map(g, 9, refs, 2, true, &st), pages);
	assert_int_equal(st, GNTST_okay);
	assert_int_equal(g_map_count, 2);
	assert_int_equal(g_map_domid, 9);
	assert_int_equal(g_map_prot, PROT_READ | PROT_WRITE);
	assert_int_equal(vd_gnt_unmap(g, pages, 2), 0);
	assert_ptr_equal(vd_gnt_map(g, 9, refs, 2, false, &st), pages);
	assert_int_equal(g_map_prot, PROT_READ);
	assert_int_equal(vd_gnt_unmap(g, pages, 1), -EINVAL);
	g_map_ret = NULL;
	assert_null(vd_gnt_map(g, 9, refs, 2, false, &st));
	assert_int_equal(st, GNTST_general_error);
	/* One page, writable: a persistent grant. */
	g_map_ret = pages + 4096;
	st = 99;
	assert_ptr_equal(vd_gnt_map(g, 9, &refs[1], 1, true, &st), pages + 4096);
	assert_int_equal(st, GNTST_okay);
	assert_int_equal(g_map_count, 1);
	assert_int_equal(g_map_prot, PROT_READ | PROT_WRITE);
	assert_int_equal(vd_gnt_unmap(g, pages + 4096, 1), 0);
	/* gntdev refuses a writable map of a read-only grant: NULL, an error status. */
	g_map_ret = NULL;
	assert_null(vd_gnt_map(g, 9, &refs[1], 1, true, &st));
	assert_int_equal(st, GNTST_general_error);
	vd_gnt_close(g);
	vd_transport_close(t);
}

static void test_evtchn(void **state)
{
	struct vd_transport *t;
	struct vd_evtchn *e;
	uint32_t port = 0;

	reset();
	g_evfd = eventfd(0, EFD_CLOEXEC);
	assert_true(g_evfd >= 0);
	assert_int_equal(vd_transport_open("xen", &t, NULL), 0);
	assert_int_equal(vd_evtchn_open(t, &e), 0);
	assert_int_equal(vd_evtchn_fd(e), g_evfd);
	assert_int_equal(vd_evtchn_notify(e), -ENOTCONN);
	assert_int_equal(vd_evtchn_bind(e, 5, 12, &port), -EINVAL);
	assert_int_equal(vd_evtchn_bind(e, 5, 11, &port), 0);
	assert_int_equal(port, 42);
	assert_int_equal(vd_evtchn_bind(e, 5, 11, &port), -EBUSY);
	assert_int_equal(vd_evtchn_notify(e), 0);
	assert_int_equal(g_notified_port, 42);
	/* ack: nothing pending is fine; a pending port is unmasked */
	g_unmasked_port = -1;
	assert_int_equal(vd_evtchn_ack(e), 0);
	assert_int_equal(g_unmasked_port, -1);
	g_pending[0] = 42;
	g_nr_pending = 1;
	assert_int_equal(vd_evtchn_ack(e), 0);
	assert_int_equal(g_unmasked_port, 42);
	assert_int_equal(g_nr_pending, 0);
	vd_evtchn_close(e);
	assert_int_equal(g_unbound_port, 42);
	vd_transport_close(t);
	close(g_evfd);
	g_evfd = -1;
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_open_without_xen), cmocka_unit_test(test_copy_translation),
		cmocka_unit_test(test_copy_batches),     cmocka_unit_test(test_map),
		cmocka_unit_test(test_evtchn),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
