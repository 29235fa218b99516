/*
 * transport: dispatch to the named implementation (sim/sim.c, xen/xen.c).
 */
#include "transport/transport-int.h"

#include <errno.h>
#include <string.h>

static const struct vd_transport_ops *const transports[] = {
	&vd_transport_xen_ops,
	&vd_transport_sim_ops,
};

int vd_transport_open(const char *name, struct vd_transport **out, struct vd_err *err)
{
	if (name == NULL) {
		return vd_err_set(err, EINVAL, "no transport named");
	}
	for (size_t i = 0; i < VD_ARRAY_SIZE(transports); i++) {
		if (strcmp(transports[i]->name, name) == 0) {
			return transports[i]->open(out, err);
		}
	}
	return vd_err_set(err, ENOENT, "unknown transport '%s' (expected xen or sim)", name);
}

void vd_transport_close(struct vd_transport *t)
{
	if (t != NULL) {
		t->ops->close(t);
	}
}

const char *vd_transport_name(const struct vd_transport *t)
{
	return t->ops->name;
}

int vd_transport_attach_domain(struct vd_transport *t, uint16_t domid, struct vd_err *err)
{
	return t->ops->attach_domain(t, domid, err);
}

void vd_transport_detach_domain(struct vd_transport *t, uint16_t domid)
{
	t->ops->detach_domain(t, domid);
}

int vd_gnt_open(struct vd_transport *t, struct vd_gnt **out)
{
	return t->ops->gnt_open(t, out);
}

void vd_gnt_close(struct vd_gnt *g)
{
	if (g != NULL) {
		g->ops->gnt_close(g);
	}
}

void *vd_gnt_map(struct vd_gnt *g, uint16_t domid, const uint32_t *refs, unsigned int nr_refs,
		 bool writable, int *status)
{
	return g->ops->gnt_map(g, domid, refs, nr_refs, writable, status);
}

int vd_gnt_unmap(struct vd_gnt *g, void *addr, unsigned int nr_refs)
{
	return g->ops->gnt_unmap(g, addr, nr_refs);
}

int vd_gnt_copy(struct vd_gnt *g, struct vd_gcopy *segs, unsigned int nr_segs)
{
	return g->ops->gnt_copy(g, segs, nr_segs);
}

int vd_evtchn_open(struct vd_transport *t, struct vd_evtchn **out)
{
	return t->ops->evtchn_open(t, out);
}

void vd_evtchn_close(struct vd_evtchn *e)
{
	if (e != NULL) {
		e->ops->evtchn_close(e);
	}
}

int vd_evtchn_bind(struct vd_evtchn *e, uint16_t remote_domid, uint32_t remote_port,
		   uint32_t *local_port)
{
	return e->ops->evtchn_bind(e, remote_domid, remote_port, local_port);
}

int vd_evtchn_fd(struct vd_evtchn *e)
{
	return e->ops->evtchn_fd(e);
}

int vd_evtchn_ack(struct vd_evtchn *e)
{
	return e->ops->evtchn_ack(e);
}

int vd_evtchn_notify(struct vd_evtchn *e)
{
	return e->ops->evtchn_notify(e);
}
