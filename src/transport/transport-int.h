/*
 * transport internals: the ops vtable behind transport.h. Each transport
 * embeds struct vd_transport / vd_gnt / vd_evtchn as the first member of its
 * own structs and points base.ops at its const ops.
 */
#ifndef VD_TRANSPORT_INT_H
#define VD_TRANSPORT_INT_H

#include "transport/transport.h"

struct vd_transport_ops {
	const char *name;
	/* Control thread. */
	int (*open)(struct vd_transport **out, struct vd_err *err);
	void (*close)(struct vd_transport *t);
	int (*attach_domain)(struct vd_transport *t, uint16_t domid, struct vd_err *err);
	void (*detach_domain)(struct vd_transport *t, uint16_t domid);
	/* Queue threads (one handle per thread). */
	int (*gnt_open)(struct vd_transport *t, struct vd_gnt **out);
	void (*gnt_close)(struct vd_gnt *g);
	void *(*gnt_map)(struct vd_gnt *g, uint16_t domid, const uint32_t *refs,
			 unsigned int nr_refs, bool writable, int *status);
	int (*gnt_unmap)(struct vd_gnt *g, void *addr, unsigned int nr_refs);
	int (*gnt_copy)(struct vd_gnt *g, struct vd_gcopy *segs, unsigned int nr_segs);
	int (*evtchn_open)(struct vd_transport *t, struct vd_evtchn **out);
	void (*evtchn_close)(struct vd_evtchn *e);
	int (*evtchn_bind)(struct vd_evtchn *e, uint16_t remote_domid, uint32_t remote_port,
			   uint32_t *local_port);
	int (*evtchn_fd)(struct vd_evtchn *e);
	int (*evtchn_ack)(struct vd_evtchn *e);
	int (*evtchn_notify)(struct vd_evtchn *e);
};

struct vd_transport {
	const struct vd_transport_ops *ops;
};

struct vd_gnt {
	const struct vd_transport_ops *ops;
};

struct vd_evtchn {
	const struct vd_transport_ops *ops;
};

extern const struct vd_transport_ops vd_transport_sim_ops;
extern const struct vd_transport_ops vd_transport_xen_ops;

#endif
