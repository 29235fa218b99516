/* vd_simguest_main(): set up the domain, find the VBD, run, report. */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "sim/guest/guest-int.h"
#include "sim/guest/simguest.h"

#define EXTRA_PAGES 1024 /* hostile cases, slack */
#define EXTRA_GREFS 1024

/* Guest RAM for the largest configuration the options allow. */
static uint64_t mem_pages(const struct vd_sg_opts *o)
{
	uint64_t ring_pages = 1ull << o->ring_order;
	uint64_t depth = VD_MIN((uint64_t)o->iodepth, 32ull << o->ring_order);
	uint64_t io_pages = VD_MAX(VD_DIV_ROUND_UP(o->bs, VD_PAGE_SIZE), 1u);
	uint64_t ind = VD_DIV_ROUND_UP(io_pages, VD_SG_SEGS_PER_PAGE);

	return o->queues * (ring_pages + depth * (io_pages + ind)) + EXTRA_PAGES;
}

static int setup_domain(struct vd_front *f, struct vd_err *err)
{
	const struct vd_sg_opts *o = f->opts;
	uint64_t pages = mem_pages(o);
	uint64_t grefs = pages + EXTRA_GREFS;
	int rc;

	if (grefs > UINT32_MAX || pages > (16ull << 30) / VD_PAGE_SIZE) {
		return vd_err_set(err, E2BIG,
				  "the workload needs too much guest memory; "
				  "reduce --queues, --iodepth or --bs");
	}
	rc = vd_hvc_connect(o->dir, &f->hvc, err);
	if (rc < 0) {
		return rc;
	}
	rc = vd_hvc_domain_create(f->hvc, (uint16_t)o->domid, pages * VD_PAGE_SIZE, (uint32_t)grefs,
				  &f->dom, err);
	if (rc < 0) {
		return rc;
	}
	f->dom_mapped = true;
	f->domid = f->dom.domid;
	if (f->dom.nr_pages < pages || f->dom.nr_grant_entries < grefs) {
		return vd_err_set(err, EINVAL, "the hypervisor gave a smaller domain than asked");
	}
	rc = vd_gmem_init(&f->gmem, f->dom.mem, f->dom.nr_pages, f->dom.gnttab,
			  f->dom.nr_grant_entries);
	if (rc < 0) {
		return vd_err_set(err, -rc, "guest memory allocator setup failed");
	}
	return 0;
}

static int open_xenstore(struct vd_front *f, struct vd_err *err)
{
	const char *dir = f->opts->dir != NULL ? f->opts->dir : vd_hvc_sim_dir();
	char path[512];

	snprintf(path, sizeof(path), "%s/xenstored.d%u", dir, f->domid);
	if (setenv("XENSTORED_PATH", path, 1) != 0) {
		return vd_err_set(err, errno, "setenv failed");
	}
	f->xs = xs_open(0);
	if (f->xs == NULL) {
		return vd_err_set(err, errno, "cannot open xenstore at %s", path);
	}
	return 0;
}

static void teardown(struct vd_front *f)
{
	vd_front_free_queues(f);
	if (f->xs != NULL) {
		xs_close(f->xs);
	}
	if (f->gmem.leaked_grefs > 0) {
		vd_log(VD_LOG_WARN, "%" PRIu64 " grant ref(s) were still in use by the backend",
		       f->gmem.leaked_grefs);
	}
	vd_gmem_fini(&f->gmem);
	if (f->dom_mapped) {
		vd_hvc_domain_unmap(&f->dom);
	}
	if (f->hvc != NULL) {
		vd_hvc_close(f->hvc);
	}
}

static int run_workload(struct vd_front *f)
{
	const struct vd_sg_opts *o = f->opts;
	struct vd_model *model = NULL;
	struct vd_wl_params p;
	struct vd_wl_result res;
	uint64_t size = f->feat.sectors * VD_SECTOR_SIZE;
	int rc;

	vd_wl_params_from_opts(&p, o);
	rc = o->no_verify ? 0
			  : vd_model_create(size, vd_wl_model_unit(p.bs, f->feat.sector_size, size),
					    p.seed, o->verify_initial, &model);
	if (rc < 0) {
		vd_log(VD_LOG_WARN, "no verification model for a %" PRIu64 "-byte disk (%s)", size,
		       strerror(-rc));
	}
	if (f->feat.readonly && p.rw != VD_RW_RANDREAD && p.rw != VD_RW_READ) {
		vd_log(VD_LOG_NOTICE, "the VBD is read-only: reads only");
	}
	if (!o->json) {
		printf("simguest d%u vbd %u: %" PRIu64 " sectors, %u queue(s), ring order %u, "
		       "iodepth %u, bs %" PRIu64 ", %s, seed %" PRIu64 "\n",
		       f->domid, o->vdev, f->feat.sectors, f->nr_queues, f->ring_order, f->iodepth,
		       p.bs, vd_sg_rw_name(p.rw), p.seed);
	}
	rc = vd_wl_run(f, model, &p, &res);
	vd_model_destroy(model);
	if (rc < 0) {
		vd_log(VD_LOG_ERR, "the workload could not run: %s", strerror(-rc));
		return 1;
	}
	vd_wl_print(&res, &p, o->json);
	(void)fflush(stdout);
	return res.st.verify_errors == 0 && res.st.io_errors == 0 && res.st.unknown_ids == 0 ? 0
											     : 1;
}

static int parse_args(struct vd_sg_opts *o, int argc, char **argv)
{
	struct vd_err err = { 0 };

	if (vd_sg_opts_parse(o, argc, argv, &err) < 0) {
		fprintf(stderr, "simguest: %s\n", vd_err_msg(&err));
		vd_sg_usage(stderr);
		return 2;
	}
	if (o->help) {
		vd_sg_usage(stdout);
		return 0;
	}
	if (o->hostile != NULL && strcmp(o->hostile, "list") == 0) {
		vd_hostile_list(stdout);
		return 0;
	}
	if (o->hostile != NULL && !vd_hostile_exists(o->hostile)) {
		fprintf(stderr, "simguest: unknown hostile case '%s' (--hostile list)\n",
			o->hostile);
		return 2;
	}
	if (o->hostile != NULL) {
		/* hostile cases use the whole ring */
		o->iodepth = 32u << o->ring_order;
	}
	return -1;
}

int vd_simguest_main(int argc, char **argv)
{
	struct vd_sg_opts o;
	struct vd_front f;
	struct vd_err err = { 0 };
	int status = 1, rc;

	rc = parse_args(&o, argc, argv);
	if (rc >= 0) {
		return rc;
	}
	vd_log_set_ident("simguest");
	memset(&f, 0, sizeof(f));
	f.opts = &o;
	if (setup_domain(&f, &err) < 0 || open_xenstore(&f, &err) < 0 ||
	    vd_front_wait_device(&f, o.wait_s, &err) < 0) {
		goto out;
	}
	if (o.hostile != NULL) {
		status = vd_hostile_run(&f, o.hostile);
	} else {
		if (vd_front_connect(&f, &err) < 0) {
			goto out;
		}
		status = run_workload(&f);
	}
	if (f.q[0] != NULL && vd_front_disconnect(&f, &err) < 0) {
		vd_log(VD_LOG_WARN, "disconnect: %s", vd_err_msg(&err));
		err.errnum = 0;
	}
out:
	if (err.errnum != 0) {
		vd_log(VD_LOG_ERR, "%s", vd_err_msg(&err));
		status = 1;
	}
	teardown(&f);
	return status;
}
