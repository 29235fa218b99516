/*
 * transport: how the backend reaches guest memory and event channels.
 *
 *   xen  real Xen: libxengnttab (grant map, batched grant copy) and
 *        libxenevtchn, both opened per queue thread.
 *   sim  the simulated hypervisor (`vdisk sim hv`): guest memory and the
 *        guest's v1 grant table are shared with us over the hypervisor
 *        socket and every access is checked as Xen checks it.
 *
 * xenstore is not here: both use libxenstore (the sim serves the real wire
 * protocol, found through XENSTORED_PATH).
 *
 * Threads: vd_transport_open/close and attach/detach_domain run on the
 * control thread of a worker. A struct vd_gnt or vd_evtchn belongs to the one
 * queue thread that opened it; its calls need no locks.
 *
 * Guest memory is reached only through these calls: the backend never
 * holds a pointer into guest memory other than a live grant mapping.
 */
#ifndef VD_TRANSPORT_H
#define VD_TRANSPORT_H

#include <stdbool.h>
#include <stdint.h>
#include <xen/xen.h>
#include <xen/grant_table.h>
#include "common/err.h"

struct vd_transport;
struct vd_gnt;
struct vd_evtchn;

/* Segment status values are Xen's GNTST_* (xen/grant_table.h). */

/*
 * One segment of a batched grant copy. Exactly one side is the guest page
 * named by (domid, gref, guest_offset_bytes); the other is local memory.
 * guest_offset_bytes + len_bytes must stay within the 4 KiB guest page
 * (checked by the hypervisor, not trusted from the caller).
 */
struct vd_gcopy {
	void *local; /* our buffer */
	uint32_t gref;
	uint16_t domid;
	uint16_t guest_offset_bytes;
	uint16_t len_bytes; /* 1..4096 */
	bool to_guest;      /* true: local -> guest (a READ's data) */
	int16_t status;     /* out: GNTST_* */
};

/* Open the named transport ("xen" or "sim"). sim finds the hypervisor at
 * $VDISK_SIM_DIR/hv.sock (default /run/vdisk-sim). */
int vd_transport_open(const char *name, struct vd_transport **out, struct vd_err *err);
void vd_transport_close(struct vd_transport *t);
const char *vd_transport_name(const struct vd_transport *t);

/*
 * Prepare to serve domain domid (sim: map its memory and grant table; xen:
 * nothing). Must be called before any grant operation on that domain.
 */
int vd_transport_attach_domain(struct vd_transport *t, uint16_t domid, struct vd_err *err);
void vd_transport_detach_domain(struct vd_transport *t, uint16_t domid);

/* Per-queue grant handle. */
int vd_gnt_open(struct vd_transport *t, struct vd_gnt **out);
void vd_gnt_close(struct vd_gnt *g);

/*
 * Map nr_refs grants of domid contiguously (ring pages, persistent grants).
 * Returns the address, or NULL with *status (if not NULL) set to the first
 * failing GNTST_* value. Unmap with the same count.
 */
void *vd_gnt_map(struct vd_gnt *g, uint16_t domid, const uint32_t *refs, unsigned int nr_refs,
		 bool writable, int *status);
int vd_gnt_unmap(struct vd_gnt *g, void *addr, unsigned int nr_refs);

/*
 * Batched grant copy. Returns 0 if the batch was carried out (each segment
 * then has its own status), -errno if the call itself failed (every status
 * is then GNTST_general_error).
 */
int vd_gnt_copy(struct vd_gnt *g, struct vd_gcopy *segs, unsigned int nr_segs);

/*
 * Per-queue event channel handle, bound to one interdomain channel.
 */
int vd_evtchn_open(struct vd_transport *t, struct vd_evtchn **out);
void vd_evtchn_close(struct vd_evtchn *e); /* unbinds */
int vd_evtchn_bind(struct vd_evtchn *e, uint16_t remote_domid, uint32_t remote_port,
		   uint32_t *local_port);
/* An fd that becomes readable when the channel is pending. */
int vd_evtchn_fd(struct vd_evtchn *e);
/* Consume the pending event and unmask (call after draining the ring). */
int vd_evtchn_ack(struct vd_evtchn *e);
int vd_evtchn_notify(struct vd_evtchn *e);

#endif
