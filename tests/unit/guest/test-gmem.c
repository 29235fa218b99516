/* The guest page allocator and grant-reference allocator. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "sim/guest/guest-int.h"

#define NPAGES 100
#define NGREFS 20

struct fixture {
	struct vd_gmem m;
	uint8_t *mem;
	struct grant_entry_v1 *gnttab;
};

static int setup(void **state)
{
	struct fixture *fx = calloc(1, sizeof(*fx));

	fx->mem = calloc(NPAGES, VD_PAGE_SIZE);
	fx->gnttab = calloc(NGREFS, sizeof(*fx->gnttab));
	assert_int_equal(vd_gmem_init(&fx->m, fx->mem, NPAGES, fx->gnttab, NGREFS), 0);
	*state = fx;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *fx = *state;

	vd_gmem_fini(&fx->m);
	free(fx->mem);
	free(fx->gnttab);
	free(fx);
	return 0;
}

static void test_pages(void **state)
{
	struct fixture *fx = *state;
	uint64_t a, b, c, d;

	assert_int_equal(vd_gmem_alloc_pages(&fx->m, 10, &a), 0);
	assert_int_equal(vd_gmem_alloc_pages(&fx->m, 20, &b), 0);
	assert_int_equal(vd_gmem_alloc_pages(&fx->m, 10, &c), 0);
	assert_int_equal(a, 0);
	assert_int_equal(b, 10);
	assert_int_equal(c, 30);
	assert_ptr_equal(vd_gmem_page(&fx->m, b), fx->mem + 10 * VD_PAGE_SIZE);
	assert_int_equal(vd_gmem_free_page_count(&fx->m), 60);
	/* a hole of 20 fits 15, not 21 (which goes after c) */
	vd_gmem_free_pages(&fx->m, b, 20);
	assert_int_equal(vd_gmem_alloc_pages(&fx->m, 21, &d), 0);
	assert_int_equal(d, 40);
	vd_gmem_free_pages(&fx->m, d, 21);
	assert_int_equal(vd_gmem_alloc_pages(&fx->m, 15, &d), 0);
	assert_int_equal(d, 10);
	/* exhaustion */
	assert_int_equal(vd_gmem_alloc_pages(&fx->m, 61, &d), -ENOMEM);
	assert_int_equal(vd_gmem_alloc_pages(&fx->m, 0, &d), -EINVAL);
	assert_int_equal(vd_gmem_alloc_pages(&fx->m, 1000, &d), -ENOMEM);
}

static void test_grant_entry(void **state)
{
	struct fixture *fx = *state;
	uint32_t ref;

	assert_int_equal(vd_gmem_grant(&fx->m, 0, 17, true, &ref), 0);
	assert_true(ref >= VD_SG_NR_RESERVED_GREFS && ref < NGREFS);
	assert_int_equal(fx->gnttab[ref].domid, 0);
	assert_int_equal(fx->gnttab[ref].frame, 17);
	assert_int_equal(fx->gnttab[ref].flags, GTF_permit_access | GTF_readonly);
	assert_int_equal(vd_gmem_ungrant(&fx->m, ref), 0);
	assert_int_equal(fx->gnttab[ref].flags, 0);
	assert_int_equal(vd_gmem_grant(&fx->m, 7, 3, false, &ref), 0);
	assert_int_equal(fx->gnttab[ref].domid, 7);
	assert_int_equal(fx->gnttab[ref].flags, GTF_permit_access);
}

static void test_refs_fifo_and_exhaustion(void **state)
{
	struct fixture *fx = *state;
	uint32_t refs[NGREFS], ref, first;
	unsigned int n = 0;

	while (vd_gmem_grant(&fx->m, 0, 1, false, &refs[n]) == 0) {
		/* reserved refs are never handed out, none twice */
		assert_true(refs[n] >= VD_SG_NR_RESERVED_GREFS);
		for (unsigned int i = 0; i < n; i++) {
			assert_int_not_equal(refs[i], refs[n]);
		}
		n++;
	}
	assert_int_equal(n, NGREFS - VD_SG_NR_RESERVED_GREFS);
	assert_int_equal(vd_gmem_gref_get(&fx->m, &ref), -ENOSPC);
	/* freed refs come back in the order they were freed, oldest first */
	first = refs[3];
	assert_int_equal(vd_gmem_ungrant(&fx->m, refs[3]), 0);
	assert_int_equal(vd_gmem_ungrant(&fx->m, refs[5]), 0);
	assert_int_equal(vd_gmem_gref_get(&fx->m, &ref), 0);
	assert_int_equal(ref, first);
	assert_int_equal(vd_gmem_gref_get(&fx->m, &ref), 0);
	assert_int_equal(ref, refs[5]);
}

static void test_busy_ref_is_never_reused(void **state)
{
	struct fixture *fx = *state;
	uint32_t ref, other;
	unsigned int n = 0;

	assert_int_equal(vd_gmem_grant(&fx->m, 0, 1, false, &ref), 0);
	fx->gnttab[ref].flags |= GTF_reading; /* the backend is copying from it */
	assert_int_equal(vd_gmem_ungrant(&fx->m, ref), -EBUSY);
	assert_int_equal(fx->m.leaked_grefs, 1);
	assert_true(fx->gnttab[ref].flags & GTF_permit_access);
	while (vd_gmem_gref_get(&fx->m, &other) == 0) {
		assert_int_not_equal(other, ref);
		n++;
	}
	assert_int_equal(n, NGREFS - VD_SG_NR_RESERVED_GREFS - 1);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_pages, setup, teardown),
		cmocka_unit_test_setup_teardown(test_grant_entry, setup, teardown),
		cmocka_unit_test_setup_teardown(test_refs_fifo_and_exhaustion, setup, teardown),
		cmocka_unit_test_setup_teardown(test_busy_ref_is_never_reused, setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
