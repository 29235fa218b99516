/*
 * The xen transport: libxengnttab (gntdev) and libxenevtchn, one handle of
 * each per queue thread, so no locks are needed.
 *
 * Grant copies are translated into xengnttab_grant_copy_segment batches
 * kept in the vd_gnt (allocated at open: no allocation per request).
 */
#include "transport/transport-int.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <xenevtchn.h>
#include <xengnttab.h>

#define XEN_COPY_BATCH 512u

struct xen_transport {
	struct vd_transport base;
};

struct xen_gnt {
	struct vd_gnt base;
	xengnttab_handle *xgt;
	xengnttab_grant_copy_segment_t segs[XEN_COPY_BATCH];
};

struct xen_evtchn {
	struct vd_evtchn base;
	xenevtchn_handle *xce;
	int fd;
	bool bound;
	evtchn_port_t port;
};

static int xen_open(struct vd_transport **out, struct vd_err *err)
{
	struct xen_transport *xt;
	xengnttab_handle *xgt;
	xenevtchn_handle *xce;

	/* Probe both devices now, so a box without Xen fails here, clearly. */
	xgt = xengnttab_open(NULL, 0);
	if (xgt == NULL) {
		return vd_err_set(
			err, errno ? errno : ENODEV,
			"xen transport: cannot open the grant device /dev/xen/gntdev "
			"(not running in a Xen dom0, or the xen-gntdev module is not loaded)");
	}
	xengnttab_close(xgt);
	xce = xenevtchn_open(NULL, 0);
	if (xce == NULL) {
		return vd_err_set(
			err, errno ? errno : ENODEV,
			"xen transport: cannot open the event channel device /dev/xen/evtchn "
			"(not running in a Xen dom0, or the xen-evtchn module is not loaded)");
	}
	xenevtchn_close(xce);
	xt = calloc(1, sizeof(*xt));
	if (xt == NULL) {
		return vd_err_set(err, ENOMEM, "xen transport");
	}
	xt->base.ops = &vd_transport_xen_ops;
	*out = &xt->base;
	return 0;
}

static void xen_close(struct vd_transport *t)
{
	free(vd_container_of(t, struct xen_transport, base));
}

static int xen_attach_domain(struct vd_transport *t, uint16_t domid, struct vd_err *err)
{
	return 0;
}

static void xen_detach_domain(struct vd_transport *t, uint16_t domid)
{
}

static int xen_gnt_open(struct vd_transport *t, struct vd_gnt **out)
{
	struct xen_gnt *g = calloc(1, sizeof(*g));
	int ret;

	if (g == NULL) {
		return -ENOMEM;
	}
	g->base.ops = &vd_transport_xen_ops;
	g->xgt = xengnttab_open(NULL, 0);
	if (g->xgt == NULL) {
		ret = errno ? -errno : -ENODEV;
		free(g);
		return ret;
	}
	*out = &g->base;
	return 0;
}

static void xen_gnt_close(struct vd_gnt *vg)
{
	struct xen_gnt *g = vd_container_of(vg, struct xen_gnt, base);

	xengnttab_close(g->xgt);
	free(g);
}

static void *xen_gnt_map(struct vd_gnt *vg, uint16_t domid, const uint32_t *refs,
			 unsigned int nr_refs, bool writable, int *status)
{
	struct xen_gnt *g = vd_container_of(vg, struct xen_gnt, base);
	void *p;

	/* gntdev's map ioctl casts away const on refs but does not write them. */
	p = xengnttab_map_domain_grant_refs(g->xgt, nr_refs, domid, (uint32_t *)refs,
					    writable ? PROT_READ | PROT_WRITE : PROT_READ);
	if (status != NULL) {
		/* gntdev reports no per-ref status for a failed map. */
		*status = p != NULL ? GNTST_okay : GNTST_general_error;
	}
	return p;
}

static int xen_gnt_unmap(struct vd_gnt *vg, void *addr, unsigned int nr_refs)
{
	struct xen_gnt *g = vd_container_of(vg, struct xen_gnt, base);

	if (xengnttab_unmap(g->xgt, addr, nr_refs) < 0) {
		return errno ? -errno : -EINVAL;
	}
	return 0;
}

static void to_xen_seg(const struct vd_gcopy *s, xengnttab_grant_copy_segment_t *x)
{
	memset(x, 0, sizeof(*x));
	x->len = s->len_bytes;
	if (s->to_guest) {
		x->flags = GNTCOPY_dest_gref;
		x->source.virt = s->local;
		x->dest.foreign.ref = s->gref;
		x->dest.foreign.offset = s->guest_offset_bytes;
		x->dest.foreign.domid = s->domid;
	} else {
		x->flags = GNTCOPY_source_gref;
		x->source.foreign.ref = s->gref;
		x->source.foreign.offset = s->guest_offset_bytes;
		x->source.foreign.domid = s->domid;
		x->dest.virt = s->local;
	}
	x->status = GNTST_general_error;
}

static int xen_gnt_copy(struct vd_gnt *vg, struct vd_gcopy *segs, unsigned int nr_segs)
{
	struct xen_gnt *g = vd_container_of(vg, struct xen_gnt, base);
	int ret = 0;

	for (unsigned int done = 0; done < nr_segs;) {
		unsigned int n = VD_MIN(nr_segs - done, XEN_COPY_BATCH);

		for (unsigned int i = 0; i < n; i++) {
			to_xen_seg(&segs[done + i], &g->segs[i]);
		}
		if (xengnttab_grant_copy(g->xgt, n, g->segs) < 0) {
			ret = errno ? -errno : -EIO;
			for (unsigned int i = 0; i < nr_segs; i++) {
				segs[i].status = GNTST_general_error;
			}
			return ret;
		}
		for (unsigned int i = 0; i < n; i++) {
			segs[done + i].status = g->segs[i].status;
		}
		done += n;
	}
	return ret;
}

static struct xen_evtchn *to_xe(struct vd_evtchn *e)
{
	return vd_container_of(e, struct xen_evtchn, base);
}

static int xen_evtchn_open(struct vd_transport *t, struct vd_evtchn **out)
{
	struct xen_evtchn *e = calloc(1, sizeof(*e));
	int ret, fl;

	if (e == NULL) {
		return -ENOMEM;
	}
	e->base.ops = &vd_transport_xen_ops;
	e->xce = xenevtchn_open(NULL, 0);
	if (e->xce == NULL) {
		ret = errno ? -errno : -ENODEV;
		goto err_free;
	}
	e->fd = xenevtchn_fd(e->xce);
	/*
	 * ack must never block: with O_NONBLOCK, xenevtchn_pending() fails with
	 * EAGAIN when nothing is pending (Linux's evtchn driver honours it).
	 */
	fl = fcntl(e->fd, F_GETFL);
	if (fl < 0 || fcntl(e->fd, F_SETFL, fl | O_NONBLOCK) < 0) {
		ret = -errno;
		goto err_close;
	}
	*out = &e->base;
	return 0;

err_close:
	xenevtchn_close(e->xce);
err_free:
	free(e);
	return ret;
}

static void xen_evtchn_close(struct vd_evtchn *ve)
{
	struct xen_evtchn *e = to_xe(ve);

	if (e->bound) {
		(void)xenevtchn_unbind(e->xce, e->port);
	}
	xenevtchn_close(e->xce);
	free(e);
}

static int xen_evtchn_bind(struct vd_evtchn *ve, uint16_t remote_domid, uint32_t remote_port,
			   uint32_t *local_port)
{
	struct xen_evtchn *e = to_xe(ve);
	xenevtchn_port_or_error_t p;

	if (e->bound) {
		return -EBUSY;
	}
	p = xenevtchn_bind_interdomain(e->xce, remote_domid, remote_port);
	if (p < 0) {
		return errno ? -errno : -EINVAL;
	}
	e->port = (evtchn_port_t)p;
	e->bound = true;
	if (local_port != NULL) {
		*local_port = e->port;
	}
	return 0;
}

static int xen_evtchn_fd(struct vd_evtchn *ve)
{
	return to_xe(ve)->fd;
}

static int xen_evtchn_ack(struct vd_evtchn *ve)
{
	struct xen_evtchn *e = to_xe(ve);

	/* One port per handle: a few reads drain it; unmask what we read. */
	for (unsigned int i = 0; i < 8; i++) {
		xenevtchn_port_or_error_t p = xenevtchn_pending(e->xce);

		if (p < 0) {
			return errno == EAGAIN ? 0 : -errno;
		}
		if (xenevtchn_unmask(e->xce, (evtchn_port_t)p) < 0) {
			return -errno;
		}
	}
	return 0;
}

static int xen_evtchn_notify(struct vd_evtchn *ve)
{
	struct xen_evtchn *e = to_xe(ve);

	if (vd_unlikely(!e->bound)) {
		return -ENOTCONN;
	}
	if (xenevtchn_notify(e->xce, e->port) < 0) {
		return -errno;
	}
	return 0;
}

const struct vd_transport_ops vd_transport_xen_ops = {
	.name = "xen",
	.open = xen_open,
	.close = xen_close,
	.attach_domain = xen_attach_domain,
	.detach_domain = xen_detach_domain,
	.gnt_open = xen_gnt_open,
	.gnt_close = xen_gnt_close,
	.gnt_map = xen_gnt_map,
	.gnt_unmap = xen_gnt_unmap,
	.gnt_copy = xen_gnt_copy,
	.evtchn_open = xen_evtchn_open,
	.evtchn_close = xen_evtchn_close,
	.evtchn_bind = xen_evtchn_bind,
	.evtchn_fd = xen_evtchn_fd,
	.evtchn_ack = xen_evtchn_ack,
	.evtchn_notify = xen_evtchn_notify,
};
