/*
 * Guest memory: a first-fit page allocator over the domain's RAM and a
 * grant-reference allocator over its v1 grant table.
 *
 * Free refs form a FIFO: a ref released goes to the back, so it is reused
 * as late as possible. A ref the backend still has mapped or in a copy
 * (GTF_reading/GTF_writing) is never freed (Linux leaks it the same way).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "sim/guest/guest-int.h"

int vd_gmem_init(struct vd_gmem *m, void *mem, uint64_t nr_pages, struct grant_entry_v1 *gnttab,
		 uint32_t nr_grefs)
{
	memset(m, 0, sizeof(*m));
	if (nr_pages == 0 || nr_grefs <= VD_SG_NR_RESERVED_GREFS) {
		return -EINVAL;
	}
	m->page_used = calloc(VD_DIV_ROUND_UP(nr_pages, 64), sizeof(uint64_t));
	m->gref_fifo = calloc(nr_grefs, sizeof(uint32_t));
	if (m->page_used == NULL || m->gref_fifo == NULL) {
		free(m->page_used);
		free(m->gref_fifo);
		return -ENOMEM;
	}
	pthread_mutex_init(&m->lock, NULL);
	m->mem = mem;
	m->nr_pages = nr_pages;
	m->gnttab = gnttab;
	m->nr_grefs = nr_grefs;
	m->fifo_cap = nr_grefs;
	for (uint32_t ref = VD_SG_NR_RESERVED_GREFS; ref < nr_grefs; ref++) {
		m->gref_fifo[m->fifo_count++] = ref;
	}
	return 0;
}

void vd_gmem_fini(struct vd_gmem *m)
{
	if (m->page_used == NULL) {
		return;
	}
	pthread_mutex_destroy(&m->lock);
	free(m->page_used);
	free(m->gref_fifo);
	m->page_used = NULL;
	m->gref_fifo = NULL;
}

static bool page_is_used(const struct vd_gmem *m, uint64_t p)
{
	return (m->page_used[p / 64] >> (p % 64)) & 1;
}

static void page_mark(struct vd_gmem *m, uint64_t p, bool used)
{
	if (used) {
		m->page_used[p / 64] |= 1ull << (p % 64);
	} else {
		m->page_used[p / 64] &= ~(1ull << (p % 64));
	}
}

int vd_gmem_alloc_pages(struct vd_gmem *m, uint64_t n, uint64_t *first)
{
	int rc = -ENOMEM;
	uint64_t run = 0;

	if (n == 0 || n > m->nr_pages) {
		return n == 0 ? -EINVAL : -ENOMEM;
	}
	pthread_mutex_lock(&m->lock);
	for (uint64_t p = 0; p < m->nr_pages; p++) {
		run = page_is_used(m, p) ? 0 : run + 1;
		if (run == n) {
			*first = p + 1 - n;
			for (uint64_t i = *first; i <= p; i++) {
				page_mark(m, i, true);
			}
			rc = 0;
			break;
		}
	}
	pthread_mutex_unlock(&m->lock);
	return rc;
}

void vd_gmem_free_pages(struct vd_gmem *m, uint64_t first, uint64_t n)
{
	pthread_mutex_lock(&m->lock);
	for (uint64_t p = first; p < first + n && p < m->nr_pages; p++) {
		assert(page_is_used(m, p));
		page_mark(m, p, false);
	}
	pthread_mutex_unlock(&m->lock);
}

uint64_t vd_gmem_free_page_count(struct vd_gmem *m)
{
	uint64_t n = 0;

	pthread_mutex_lock(&m->lock);
	for (uint64_t p = 0; p < m->nr_pages; p++) {
		n += !page_is_used(m, p);
	}
	pthread_mutex_unlock(&m->lock);
	return n;
}

void *vd_gmem_page(const struct vd_gmem *m, uint64_t page)
{
	assert(page < m->nr_pages);
	return m->mem + page * VD_PAGE_SIZE;
}

int vd_gmem_gref_get(struct vd_gmem *m, uint32_t *ref)
{
	int rc = -ENOSPC;

	pthread_mutex_lock(&m->lock);
	if (m->fifo_count > 0) {
		*ref = m->gref_fifo[m->fifo_head];
		m->fifo_head = (m->fifo_head + 1) % m->fifo_cap;
		m->fifo_count--;
		rc = 0;
	}
	pthread_mutex_unlock(&m->lock);
	return rc;
}

void vd_gmem_gref_put(struct vd_gmem *m, uint32_t ref)
{
	assert(ref >= VD_SG_NR_RESERVED_GREFS && ref < m->nr_grefs);
	pthread_mutex_lock(&m->lock);
	assert(m->fifo_count < m->fifo_cap);
	m->gref_fifo[(m->fifo_head + m->fifo_count) % m->fifo_cap] = ref;
	m->fifo_count++;
	pthread_mutex_unlock(&m->lock);
}

void vd_gmem_grant_set(struct vd_gmem *m, uint32_t ref, uint16_t domid, uint64_t page,
		       bool readonly)
{
	struct grant_entry_v1 *e = &m->gnttab[ref];
	uint16_t flags = GTF_permit_access | (readonly ? GTF_readonly : 0);

	VD_WRITE_ONCE(e->domid, domid);
	VD_WRITE_ONCE(e->frame, (uint32_t)page);
	vd_smp_wmb(); /* the peer must see domid/frame before the flags allow access */
	__atomic_store_n(&e->flags, flags, __ATOMIC_RELEASE);
}

int vd_gmem_grant(struct vd_gmem *m, uint16_t domid, uint64_t page, bool readonly, uint32_t *ref)
{
	int rc = vd_gmem_gref_get(m, ref);

	if (rc < 0) {
		return rc;
	}
	vd_gmem_grant_set(m, *ref, domid, page, readonly);
	return 0;
}

int vd_gmem_ungrant(struct vd_gmem *m, uint32_t ref)
{
	struct grant_entry_v1 *e = &m->gnttab[ref];
	uint16_t flags = __atomic_load_n(&e->flags, __ATOMIC_ACQUIRE);

	do {
		if (flags & (GTF_reading | GTF_writing)) {
			pthread_mutex_lock(&m->lock);
			m->leaked_grefs++;
			pthread_mutex_unlock(&m->lock);
			return -EBUSY;
		}
	} while (!__atomic_compare_exchange_n(&e->flags, &flags, 0, false, __ATOMIC_SEQ_CST,
					      __ATOMIC_ACQUIRE));
	vd_gmem_gref_put(m, ref);
	return 0;
}
