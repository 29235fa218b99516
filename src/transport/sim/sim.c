/*
 * The sim transport: dom0's side of the simulated hypervisor. Guest memory
 * and grant tables come from vd_hvc_domain_map(); every grant access goes
 * through vd_simdom_check_grant(), i.e. Xen's checks.
 *
 * Attached domains live in a small array of pointers published with
 * release stores, so queue threads look them up without locks. A domain is
 * detached only once no queue uses it any more (transport.h contract).
 */
#include "transport/transport-int.h"
#include "transport/sim/hvc.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define SIM_MAX_DOMS     64u
#define SIM_MAX_MAP_REFS 4096u /* pages per vd_gnt_map call */
#define SIM_SELF_DOMID   0     /* the backend is dom0 */

struct sim_dom {
	struct vd_simdom d;
	unsigned int refs;
};

struct sim_transport {
	struct vd_transport base;
	struct vd_hvc *hvc;
	pthread_mutex_t lock; /* attach/detach */
	struct sim_dom *doms[SIM_MAX_DOMS];
};

struct sim_gnt {
	struct vd_gnt base;
	struct sim_transport *st;
	unsigned int hint; /* slot of the last domain used */
};

struct sim_evtchn {
	struct vd_evtchn base;
	struct sim_transport *st;
	uint32_t port;
	int fd;
};

static struct sim_transport *to_st(struct vd_transport *t)
{
	return vd_container_of(t, struct sim_transport, base);
}

static int sim_open(struct vd_transport **out, struct vd_err *err)
{
	struct sim_transport *st;
	int ret;

	st = calloc(1, sizeof(*st));
	if (st == NULL) {
		return vd_err_set(err, ENOMEM, "sim transport");
	}
	st->base.ops = &vd_transport_sim_ops;
	ret = pthread_mutex_init(&st->lock, NULL);
	if (ret != 0) {
		free(st);
		return vd_err_set(err, ret, "sim transport mutex");
	}
	ret = vd_hvc_connect(NULL, &st->hvc, err);
	if (ret < 0) {
		pthread_mutex_destroy(&st->lock);
		free(st);
		return ret;
	}
	*out = &st->base;
	return 0;
}

static void sim_close(struct vd_transport *t)
{
	struct sim_transport *st = to_st(t);

	for (unsigned int i = 0; i < SIM_MAX_DOMS; i++) {
		if (st->doms[i] != NULL) {
			vd_hvc_domain_unmap(&st->doms[i]->d);
			free(st->doms[i]);
		}
	}
	vd_hvc_close(st->hvc);
	pthread_mutex_destroy(&st->lock);
	free(st);
}

static int sim_attach_domain(struct vd_transport *t, uint16_t domid, struct vd_err *err)
{
	struct sim_transport *st = to_st(t);
	struct sim_dom *sd;
	int free_slot = -1;
	int ret;

	pthread_mutex_lock(&st->lock);
	for (unsigned int i = 0; i < SIM_MAX_DOMS; i++) {
		if (st->doms[i] == NULL) {
			if (free_slot < 0) {
				free_slot = (int)i;
			}
		} else if (st->doms[i]->d.domid == domid) {
			st->doms[i]->refs++;
			pthread_mutex_unlock(&st->lock);
			return 0;
		}
	}
	if (free_slot < 0) {
		ret = vd_err_set(err, ENOSPC, "sim transport: more than %u domains attached",
				 SIM_MAX_DOMS);
		goto out;
	}
	sd = calloc(1, sizeof(*sd));
	if (sd == NULL) {
		ret = vd_err_set(err, ENOMEM, "attach d%u", domid);
		goto out;
	}
	ret = vd_hvc_domain_map(st->hvc, domid, &sd->d, err);
	if (ret < 0) {
		free(sd);
		goto out;
	}
	sd->refs = 1;
	__atomic_store_n(&st->doms[free_slot], sd, __ATOMIC_RELEASE);
out:
	pthread_mutex_unlock(&st->lock);
	return ret;
}

static void sim_detach_domain(struct vd_transport *t, uint16_t domid)
{
	struct sim_transport *st = to_st(t);

	pthread_mutex_lock(&st->lock);
	for (unsigned int i = 0; i < SIM_MAX_DOMS; i++) {
		struct sim_dom *sd = st->doms[i];

		if (sd != NULL && sd->d.domid == domid) {
			if (--sd->refs == 0) {
				__atomic_store_n(&st->doms[i], NULL, __ATOMIC_RELEASE);
				vd_hvc_domain_unmap(&sd->d);
				free(sd);
			}
			break;
		}
	}
	pthread_mutex_unlock(&st->lock);
}

static const struct vd_simdom *lookup(struct sim_gnt *g, uint16_t domid)
{
	struct sim_dom *sd = __atomic_load_n(&g->st->doms[g->hint], __ATOMIC_ACQUIRE);

	if (vd_likely(sd != NULL && sd->d.domid == domid)) {
		return &sd->d;
	}
	for (unsigned int i = 0; i < SIM_MAX_DOMS; i++) {
		sd = __atomic_load_n(&g->st->doms[i], __ATOMIC_ACQUIRE);
		if (sd != NULL && sd->d.domid == domid) {
			g->hint = i;
			return &sd->d;
		}
	}
	return NULL;
}

static int sim_gnt_open(struct vd_transport *t, struct vd_gnt **out)
{
	struct sim_gnt *g = calloc(1, sizeof(*g));

	if (g == NULL) {
		return -ENOMEM;
	}
	g->base.ops = &vd_transport_sim_ops;
	g->st = to_st(t);
	*out = &g->base;
	return 0;
}

static void sim_gnt_close(struct vd_gnt *g)
{
	free(vd_container_of(g, struct sim_gnt, base));
}

static void *sim_gnt_map(struct vd_gnt *vg, uint16_t domid, const uint32_t *refs,
			 unsigned int nr_refs, bool writable, int *status)
{
	struct sim_gnt *g = vd_container_of(vg, struct sim_gnt, base);
	int prot = writable ? PROT_READ | PROT_WRITE : PROT_READ;
	const struct vd_simdom *d;
	size_t len;
	char *base;
	int st = GNTST_okay;

	if (nr_refs == 0 || nr_refs > SIM_MAX_MAP_REFS) {
		st = GNTST_general_error;
		goto fail;
	}
	d = lookup(g, domid);
	if (d == NULL) {
		st = GNTST_bad_domain;
		goto fail;
	}
	/* Reserve the whole range, then place each granted frame in it. */
	len = (size_t)nr_refs * VD_PAGE_SIZE;
	base = mmap(NULL, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (base == MAP_FAILED) {
		st = GNTST_no_space;
		goto fail;
	}
	for (unsigned int i = 0; i < nr_refs; i++) {
		void *page;
		off_t off;

		st = vd_simdom_check_grant(d, SIM_SELF_DOMID, refs[i], writable, &page);
		if (st != GNTST_okay) {
			goto err_unmap;
		}
		off = (off_t)((char *)page - (char *)d->mem);
		if (mmap(base + (size_t)i * VD_PAGE_SIZE, VD_PAGE_SIZE, prot,
			 MAP_SHARED | MAP_FIXED, d->mem_fd, off) == MAP_FAILED) {
			st = GNTST_general_error;
			goto err_unmap;
		}
	}
	if (status != NULL) {
		*status = GNTST_okay;
	}
	return base;

err_unmap:
	munmap(base, len);
fail:
	if (status != NULL) {
		*status = st;
	}
	return NULL;
}

static int sim_gnt_unmap(struct vd_gnt *g, void *addr, unsigned int nr_refs)
{
	if (addr == NULL || nr_refs == 0 || !VD_IS_ALIGNED((uintptr_t)addr, VD_PAGE_SIZE)) {
		return -EINVAL;
	}
	if (munmap(addr, (size_t)nr_refs * VD_PAGE_SIZE) < 0) {
		return -errno;
	}
	return 0;
}

static int16_t copy_one(struct sim_gnt *g, struct vd_gcopy *s)
{
	const struct vd_simdom *d = lookup(g, s->domid);
	void *page;
	char *gp;
	int st;

	if (vd_unlikely(d == NULL)) {
		return GNTST_bad_domain;
	}
	/* A READ from disk writes into guest memory: to_guest needs write access. */
	st = vd_simdom_check_grant(d, SIM_SELF_DOMID, s->gref, s->to_guest, &page);
	if (vd_unlikely(st != GNTST_okay)) {
		return (int16_t)st;
	}
	if (vd_unlikely((uint32_t)s->guest_offset_bytes + s->len_bytes > VD_PAGE_SIZE)) {
		return GNTST_bad_copy_arg;
	}
	gp = (char *)page + s->guest_offset_bytes;
	if (s->to_guest) {
		memcpy(gp, s->local, s->len_bytes);
	} else {
		memcpy(s->local, gp, s->len_bytes);
	}
	return GNTST_okay;
}

static int sim_gnt_copy(struct vd_gnt *vg, struct vd_gcopy *segs, unsigned int nr_segs)
{
	struct sim_gnt *g = vd_container_of(vg, struct sim_gnt, base);

	for (unsigned int i = 0; i < nr_segs; i++) {
		segs[i].status = copy_one(g, &segs[i]);
	}
	return 0;
}

static struct sim_evtchn *to_se(struct vd_evtchn *e)
{
	return vd_container_of(e, struct sim_evtchn, base);
}

static int sim_evtchn_open(struct vd_transport *t, struct vd_evtchn **out)
{
	struct sim_evtchn *e = calloc(1, sizeof(*e));

	if (e == NULL) {
		return -ENOMEM;
	}
	e->base.ops = &vd_transport_sim_ops;
	e->st = to_st(t);
	e->fd = -1;
	*out = &e->base;
	return 0;
}

static void sim_evtchn_close(struct vd_evtchn *ve)
{
	struct sim_evtchn *e = to_se(ve);

	if (e->fd >= 0) {
		(void)vd_hvc_evtchn_close(e->st->hvc, e->port);
		close(e->fd);
	}
	free(e);
}

static int sim_evtchn_bind(struct vd_evtchn *ve, uint16_t remote_domid, uint32_t remote_port,
			   uint32_t *local_port)
{
	struct sim_evtchn *e = to_se(ve);
	int ret;

	if (e->fd >= 0) {
		return -EBUSY;
	}
	ret = vd_hvc_evtchn_bind_interdomain(e->st->hvc, remote_domid, remote_port, &e->port,
					     &e->fd);
	if (ret < 0) {
		e->fd = -1;
		return ret;
	}
	if (local_port != NULL) {
		*local_port = e->port;
	}
	return 0;
}

static int sim_evtchn_fd(struct vd_evtchn *ve)
{
	struct sim_evtchn *e = to_se(ve);

	return e->fd >= 0 ? e->fd : -ENOTCONN;
}

static int sim_evtchn_ack(struct vd_evtchn *ve)
{
	struct sim_evtchn *e = to_se(ve);
	uint64_t v;

	if (vd_unlikely(e->fd < 0)) {
		return -ENOTCONN;
	}
	if (read(e->fd, &v, sizeof(v)) < 0 && errno != EAGAIN) {
		return -errno;
	}
	return 0;
}

static int sim_evtchn_notify(struct vd_evtchn *ve)
{
	struct sim_evtchn *e = to_se(ve);

	if (vd_unlikely(e->fd < 0)) {
		return -ENOTCONN;
	}
	return vd_hvc_evtchn_notify(e->st->hvc, e->port);
}

const struct vd_transport_ops vd_transport_sim_ops = {
	.name = "sim",
	.open = sim_open,
	.close = sim_close,
	.attach_domain = sim_attach_domain,
	.detach_domain = sim_detach_domain,
	.gnt_open = sim_gnt_open,
	.gnt_close = sim_gnt_close,
	.gnt_map = sim_gnt_map,
	.gnt_unmap = sim_gnt_unmap,
	.gnt_copy = sim_gnt_copy,
	.evtchn_open = sim_evtchn_open,
	.evtchn_close = sim_evtchn_close,
	.evtchn_bind = sim_evtchn_bind,
	.evtchn_fd = sim_evtchn_fd,
	.evtchn_ack = sim_evtchn_ack,
	.evtchn_notify = sim_evtchn_notify,
};
