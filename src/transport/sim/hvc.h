/*
 * hvc: client of the simulated hypervisor (`vdisk sim hv`), used by the
 * sim transport (backend side, dom0) and by simguest (guest side, domU).
 *
 * The hypervisor listens on $VDISK_SIM_DIR/hv.sock (SOCK_SEQPACKET). It
 * also serves xenstore: $VDISK_SIM_DIR/xenstored for dom0 (privileged) and
 * $VDISK_SIM_DIR/xenstored.d<N> for guest N (unprivileged, acting as
 * domain N), so each side reaches xenstore through the real libxenstore
 * with XENSTORED_PATH set to its socket.
 *
 * Domains: a guest connection creates a domain; the domain dies (xenstore
 * @releaseDomain fires, its /local/domain/N is removed, its event channels
 * close) when that connection closes.
 *
 * Memory: the guest's RAM is a memfd and its grant table a memfd of
 * struct grant_entry_v1, both created by the hypervisor and shared with the
 * guest (read-write) and with dom0 on request (vd_hvc_domain_map).
 *
 * Event channels: each port is an eventfd owned by the hypervisor. The fd
 * returned for a local port becomes readable when the peer notifies it.
 *
 * Threads: calls on one struct vd_hvc are serialised by an internal mutex
 * (slow path only); vd_hvc_evtchn_notify on a bound port is a write to a
 * cached eventfd and takes no lock after the first call.
 */
#ifndef VD_TRANSPORT_SIM_HVC_H
#define VD_TRANSPORT_SIM_HVC_H

#include <stdbool.h>
#include <stdint.h>
#include <xen/xen.h>
#include <xen/grant_table.h>
#include "common/err.h"

#define VD_SIM_DEFAULT_DIR "/run/vdisk-sim"

struct vd_hvc;

/* A domain's memory and grant table as mapped in this process. */
struct vd_simdom {
	uint16_t domid;
	void *mem; /* nr_pages * 4096 bytes */
	uint64_t nr_pages;
	struct grant_entry_v1 *gnttab; /* nr_grant_entries entries */
	uint32_t nr_grant_entries;
	bool writable_gnttab; /* guest side only */
	int mem_fd;           /* the RAM memfd (sealed size); -1 once unmapped */
	int gnttab_fd;        /* the grant table memfd; -1 once unmapped */
};

/* sim_dir: NULL = $VDISK_SIM_DIR or VD_SIM_DEFAULT_DIR. */
const char *vd_hvc_sim_dir(void);
int vd_hvc_connect(const char *sim_dir, struct vd_hvc **out, struct vd_err *err);
void vd_hvc_close(struct vd_hvc *h);

/* ---- guest side ---- */

/*
 * Become a new domain (domid 0 = the hypervisor picks the next free one,
 * starting at 1) with mem_bytes of RAM and nr_grant_entries grant entries.
 * Maps both; the domain lives until vd_hvc_close().
 */
int vd_hvc_domain_create(struct vd_hvc *h, uint16_t domid, uint64_t mem_bytes,
			 uint32_t nr_grant_entries, struct vd_simdom *out, struct vd_err *err);

/* ---- backend side (dom0) ---- */

/*
 * Map domain domid's memory and grant table (read-only table). -ENOENT if
 * the domain does not exist (or died), -EPERM from a guest connection.
 * The mapping stays valid after the domain dies; unmap it with
 * vd_hvc_domain_unmap(). vd_hvc_domain_create()'s *out is unmapped by
 * vd_hvc_domain_unmap() too (after vd_hvc_close(), or before it: the domain
 * lives as long as the connection).
 */
int vd_hvc_domain_map(struct vd_hvc *h, uint16_t domid, struct vd_simdom *out, struct vd_err *err);
void vd_hvc_domain_unmap(struct vd_simdom *d);

/*
 * Xen's checks for one access by domain `self` to (d, gref), as
 * gnttab_copy/gnttab_map do them: gref < nr entries, GTF_permit_access,
 * entry domid == self, GTF_readonly forbids write, frame < nr_pages.
 * Returns GNTST_okay and the page's address, or a GNTST_* error.
 */
int vd_simdom_check_grant(const struct vd_simdom *d, uint16_t self, uint32_t gref, bool write,
			  void **page);

/* ---- event channels (both sides) ---- */

/*
 * Allocate an unbound port that remote_domid may bind. *fd (an eventfd,
 * O_NONBLOCK|O_CLOEXEC) is the caller's: poll it, read it to consume
 * events, close it after vd_hvc_evtchn_close(). The same holds for the *fd of
 * vd_hvc_evtchn_bind_interdomain().
 */
int vd_hvc_evtchn_alloc_unbound(struct vd_hvc *h, uint16_t remote_domid, uint32_t *port, int *fd);
/* Bind to (remote_domid, remote_port); -EINVAL if it is not unbound for us. */
int vd_hvc_evtchn_bind_interdomain(struct vd_hvc *h, uint16_t remote_domid, uint32_t remote_port,
				   uint32_t *local_port, int *fd);
/* Signal the peer of local port. -ENOTCONN if the port is not bound. */
int vd_hvc_evtchn_notify(struct vd_hvc *h, uint32_t port);
/* Close the port (the peer sees it unbound). */
int vd_hvc_evtchn_close(struct vd_hvc *h, uint32_t port);

#endif
