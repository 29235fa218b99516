/* simguest's command line. */
#include <errno.h>
#include <getopt.h>
#include <stdlib.h>
#include <string.h>

#include "sim/guest/guest-int.h"

enum {
	OPT_DIR = 256,
	OPT_DOMID,
	OPT_VDEV,
	OPT_WAIT,
	OPT_QUEUES,
	OPT_RING_ORDER,
	OPT_NO_INDIRECT,
	OPT_MAX_INDIRECT,
	OPT_RW,
	OPT_RWMIX,
	OPT_BS,
	OPT_IODEPTH,
	OPT_RUNTIME,
	OPT_IOS,
	OPT_FLUSH_EVERY,
	OPT_DISCARD_EVERY,
	OPT_SEED,
	OPT_JSON,
	OPT_NO_VERIFY_INITIAL,
	OPT_NO_VERIFY,
	OPT_HOSTILE,
	OPT_PERSISTENT,
	OPT_NO_PERSISTENT,
	OPT_HELP,
};

static const struct option g_longopts[] = {
	{ "dir", required_argument, NULL, OPT_DIR },
	{ "domid", required_argument, NULL, OPT_DOMID },
	{ "vdev", required_argument, NULL, OPT_VDEV },
	{ "wait", required_argument, NULL, OPT_WAIT },
	{ "queues", required_argument, NULL, OPT_QUEUES },
	{ "ring-order", required_argument, NULL, OPT_RING_ORDER },
	{ "no-indirect", no_argument, NULL, OPT_NO_INDIRECT },
	{ "max-indirect", required_argument, NULL, OPT_MAX_INDIRECT },
	{ "rw", required_argument, NULL, OPT_RW },
	{ "rwmix", required_argument, NULL, OPT_RWMIX },
	{ "bs", required_argument, NULL, OPT_BS },
	{ "iodepth", required_argument, NULL, OPT_IODEPTH },
	{ "runtime", required_argument, NULL, OPT_RUNTIME },
	{ "ios", required_argument, NULL, OPT_IOS },
	{ "flush-every", required_argument, NULL, OPT_FLUSH_EVERY },
	{ "discard-every", required_argument, NULL, OPT_DISCARD_EVERY },
	{ "seed", required_argument, NULL, OPT_SEED },
	{ "json", no_argument, NULL, OPT_JSON },
	{ "no-verify-initial", no_argument, NULL, OPT_NO_VERIFY_INITIAL },
	{ "no-verify", no_argument, NULL, OPT_NO_VERIFY },
	{ "hostile", required_argument, NULL, OPT_HOSTILE },
	{ "persistent", no_argument, NULL, OPT_PERSISTENT },
	{ "no-persistent", no_argument, NULL, OPT_NO_PERSISTENT },
	{ "help", no_argument, NULL, OPT_HELP },
	{ NULL, 0, NULL, 0 },
};

static const char *const g_rw_names[] = {
	[VD_RW_RANDRW] = "randrw", [VD_RW_RANDREAD] = "randread", [VD_RW_RANDWRITE] = "randwrite",
	[VD_RW_READ] = "read",     [VD_RW_WRITE] = "write",
};

const char *vd_sg_rw_name(enum vd_sg_rw rw)
{
	return (unsigned int)rw < VD_ARRAY_SIZE(g_rw_names) ? g_rw_names[rw] : "?";
}

void vd_sg_usage(FILE *f)
{
	fprintf(f,
		"usage: vdisk sim guest [--dir DIR] [--domid N] [--vdev 51712] [--wait SECONDS]\n"
		"  [--queues 1..16] [--ring-order 0..4] [--no-indirect] [--max-indirect N]\n"
		"  [--rw randrw|randread|randwrite|read|write] [--rwmix PCT_READS] [--bs BYTES]\n"
		"  [--iodepth N] [--runtime SECONDS | --ios COUNT] [--flush-every N]\n"
		"  [--discard-every N] [--seed S] [--json] [--no-verify-initial]\n"
		"  [--no-verify]  (benchmarks: no data pattern, no read checks)\n"
		"  [--persistent | --no-persistent]  (feature-persistent: offer it, and\n"
		"      reuse a fixed set of read-write granted pages; default on, as Linux)\n"
		"  [--hostile CASE|list]\n");
}

int vd_sg_parse_uint(const char *s, uint64_t max, uint64_t *out)
{
	char *end;
	unsigned long long v;

	if (s == NULL || *s < '0' || *s > '9') {
		return -EINVAL;
	}
	errno = 0;
	v = strtoull(s, &end, 0);
	if (errno != 0 || *end != '\0') {
		return errno == ERANGE ? -ERANGE : -EINVAL;
	}
	if (v > max) {
		return -ERANGE;
	}
	*out = v;
	return 0;
}

int vd_sg_parse_size(const char *s, uint64_t *out)
{
	char *end;
	unsigned long long v;
	unsigned int shift = 0;

	if (s == NULL || *s < '0' || *s > '9') {
		return -EINVAL;
	}
	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno != 0) {
		return -ERANGE;
	}
	switch (*end) {
	case '\0':
		break;
	case 'k':
	case 'K':
		shift = 10;
		break;
	case 'm':
	case 'M':
		shift = 20;
		break;
	case 'g':
	case 'G':
		shift = 30;
		break;
	default:
		return -EINVAL;
	}
	if (*end != '\0' && end[1] != '\0') {
		return -EINVAL;
	}
	if (v > (UINT64_MAX >> shift)) {
		return -ERANGE;
	}
	*out = (uint64_t)v << shift;
	return 0;
}

static int parse_rw(const char *s, enum vd_sg_rw *rw)
{
	for (unsigned int i = 0; i < VD_ARRAY_SIZE(g_rw_names); i++) {
		if (strcmp(s, g_rw_names[i]) == 0) {
			*rw = (enum vd_sg_rw)i;
			return 0;
		}
	}
	return -EINVAL;
}

static void set_defaults(struct vd_sg_opts *o)
{
	memset(o, 0, sizeof(*o));
	o->vdev = 51712;
	o->wait_s = 30;
	o->queues = 1;
	o->ring_order = 0;
	o->rw = VD_RW_RANDRW;
	o->rwmix = 50;
	o->bs = 4096;
	o->iodepth = 8;
	o->seed = 1;
	o->verify_initial = true;
}

/* Options taking an unsigned number: where it goes and its bounds. */
static int parse_number_opt(struct vd_sg_opts *o, int c, const char *arg, struct vd_err *err)
{
	uint64_t v;
	uint64_t min = 0, max = UINT64_MAX;
	int rc;

	switch (c) {
	case OPT_DOMID:
		max = 0x7fef;
		break;
	case OPT_VDEV:
		max = UINT32_MAX;
		break;
	case OPT_WAIT:
		max = 86400;
		break;
	case OPT_QUEUES:
		min = 1;
		max = VD_SG_MAX_QUEUES;
		break;
	case OPT_RING_ORDER:
		max = VD_SG_MAX_RING_ORDER;
		break;
	case OPT_MAX_INDIRECT:
		min = 1;
		max = VD_SG_MAX_SEGS;
		break;
	case OPT_RWMIX:
		max = 100;
		break;
	case OPT_IODEPTH:
		min = 1;
		max = VD_SG_MAX_IODEPTH;
		break;
	case OPT_RUNTIME:
		min = 1;
		max = 86400ull * 365;
		break;
	case OPT_IOS:
		min = 1;
		break;
	default:
		break;
	}
	rc = vd_sg_parse_uint(arg, max, &v);
	if (rc < 0 || v < min) {
		return vd_err_set(err, EINVAL, "bad value '%s' (expected %llu..%llu)", arg,
				  (unsigned long long)min, (unsigned long long)max);
	}
	switch (c) {
	case OPT_DOMID:
		o->domid = (unsigned int)v;
		break;
	case OPT_VDEV:
		o->vdev = (unsigned int)v;
		break;
	case OPT_WAIT:
		o->wait_s = (unsigned int)v;
		break;
	case OPT_QUEUES:
		o->queues = (unsigned int)v;
		break;
	case OPT_RING_ORDER:
		o->ring_order = (unsigned int)v;
		break;
	case OPT_MAX_INDIRECT:
		o->max_indirect = (unsigned int)v;
		break;
	case OPT_RWMIX:
		o->rwmix = (unsigned int)v;
		break;
	case OPT_IODEPTH:
		o->iodepth = (unsigned int)v;
		break;
	case OPT_RUNTIME:
		o->runtime_s = v;
		break;
	case OPT_IOS:
		o->ios = v;
		break;
	case OPT_FLUSH_EVERY:
		o->flush_every = v;
		break;
	case OPT_DISCARD_EVERY:
		o->discard_every = v;
		break;
	case OPT_SEED:
		o->seed = v;
		o->seed_set = true;
		break;
	default:
		return vd_err_set(err, EINVAL, "internal: option %d", c);
	}
	return 0;
}

static int parse_one(struct vd_sg_opts *o, int c, const char *arg, struct vd_err *err)
{
	switch (c) {
	case OPT_DIR:
		o->dir = arg;
		return 0;
	case OPT_NO_INDIRECT:
		o->no_indirect = true;
		return 0;
	case OPT_PERSISTENT:
		o->no_persistent = false;
		return 0;
	case OPT_NO_PERSISTENT:
		o->no_persistent = true;
		return 0;
	case OPT_RW:
		if (parse_rw(arg, &o->rw) < 0) {
			return vd_err_set(err, EINVAL, "--rw: unknown mode '%s'", arg);
		}
		return 0;
	case OPT_BS:
		if (vd_sg_parse_size(arg, &o->bs) < 0 || o->bs == 0 || o->bs % 512 != 0 ||
		    o->bs > (uint64_t)VD_SG_MAX_SEGS * VD_PAGE_SIZE) {
			return vd_err_set(err, EINVAL,
					  "--bs: '%s' is not a multiple of 512 "
					  "between 512 and %u",
					  arg, VD_SG_MAX_SEGS * VD_PAGE_SIZE);
		}
		return 0;
	case OPT_JSON:
		o->json = true;
		return 0;
	case OPT_NO_VERIFY_INITIAL:
		o->verify_initial = false;
		return 0;
	case OPT_NO_VERIFY:
		o->no_verify = true;
		return 0;
	case OPT_HOSTILE:
		o->hostile = arg;
		return 0;
	case OPT_HELP:
		o->help = true;
		return 0;
	default:
		return parse_number_opt(o, c, arg, err);
	}
}

int vd_sg_opts_parse(struct vd_sg_opts *o, int argc, char **argv, struct vd_err *err)
{
	int c, rc;

	set_defaults(o);
	optind = 1;
	opterr = 0;
	while ((c = getopt_long(argc, argv, "", g_longopts, NULL)) != -1) {
		if (c == '?' || c == ':') {
			return vd_err_set(err, EINVAL, "unknown option or missing value: %s",
					  argv[optind - 1]);
		}
		rc = parse_one(o, c, optarg, err);
		if (rc < 0) {
			return rc;
		}
	}
	if (optind < argc) {
		return vd_err_set(err, EINVAL, "unexpected argument '%s'", argv[optind]);
	}
	if (o->runtime_s != 0 && o->ios != 0) {
		return vd_err_set(err, EINVAL, "--runtime and --ios are exclusive");
	}
	if (o->runtime_s == 0 && o->ios == 0) {
		o->ios = 2000;
	}
	return 0;
}
