/*
 * vdisk <command> [args]: one command for images, VBDs and the simulator.
 * Exit status: 0 ok, 1 runtime error ("vdisk: <what>: <why>"), 2 usage.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xenstore.h>
#include "common/err.h"
#include "common/log.h"
#include "cli/cli.h"
#include "ctl/ctl.h"
#include "ctl/imgtool.h"
#include "image/image.h"
#ifdef VD_HAVE_SIM_HV
#include "sim/hv/hv.h"
#endif
#ifdef VD_HAVE_SIMGUEST
#include "sim/guest/simguest.h"
#endif

#define EXIT_USAGE 2

static void usage(FILE *f)
{
	(void)fputs(
		"usage: vdisk <command> [args]\n"
		"\n"
		"VBDs (the toolstack's part, through xenstore; XENSTORED_PATH is honoured):\n"
		"  attach DOMID VDEV IMAGE [--format raw] [--readonly] [--io uring|sync|null|mem]\n"
		"         [--size BYTES] [--cache direct|writeback] [--max-queues N]\n"
		"         [--l2-cache-size BYTES] [--l2-cache-entry-size BYTES]   (qcow2)\n"
		"         [--polling-duration US] [--polling-idle-threshold PCT]\n"
		"         [--zero-copy 0|1] [--io-fixed 0|1] [--wait SECONDS (10; 0: none)]\n"
		"  detach DOMID VDEV [--timeout SECONDS] [--force]\n"
		"  list [--json]\n"
		"Images:\n"
		"  create [-f FMT] [-o k=v,...] [-b BACKING [-F FMT]] IMAGE [SIZE]\n"
		"                                    SIZE in bytes, or with K/M/G/T\n"
		"  info IMAGE [--json] [-U]   (-U, --force-share: even while in use)\n"
		"  check [-f FMT] [--repair] [--json] IMAGE\n"
		"  map [-f FMT] [--json] IMAGE\n"
		"  convert [-f FMT] -O FMT [-o k=v,...] [-p] SRC DST\n"
		"  snapshot [-f FMT] [-F FMT] IMAGE NEW\n"
		"  commit [-f FMT] [-p] IMAGE\n"
		"  resize [-f FMT] [--shrink] IMAGE [+|-]SIZE\n"
		"Run-time and exports:\n"
		"  stats DOMID VDEV [--interval S] [--json]  per-queue counters of a VBD\n"
		"  serve-nbd IMAGE [-f FMT] [--socket PATH | --port N [--bind ADDR]]\n"
		"            [--readonly] [--export NAME]   an image over NBD\n"
		"Simulator:\n"
		"  sim hv [--dir DIR]                the simulated hypervisor\n"
		"  sim guest [options]               a simulated guest (--help)\n"
		"Other:\n"
		"  help, --help, --version\n"
		"\n"
		"VDEV is a number (51712) or a name (xvda, xvdb1, sda, hdc).\n"
		"Every command that opens images (attach, create, info, check, map, convert,\n"
		"snapshot, commit, resize, serve-nbd) also takes:\n"
		"  --backing-dir DIR   backing files may also lie in DIR's tree (repeatable);\n"
		"                      by default only in the top image's directory tree\n"
		"  --no-backing        do not open backing files: the top layer alone, read-only\n",
		f);
}

/*
 * "vdisk: <msg>" where the first "%s" in msg (if any) is replaced by arg:
 * no printf with a non-literal format.
 */
static int usage_error(const char *msg, const char *arg)
{
	const char *hole = strstr(msg, "%s");

	(void)fputs("vdisk: ", stderr);
	if (hole != NULL) {
		(void)fwrite(msg, 1, (size_t)(hole - msg), stderr);
		(void)fputs(arg != NULL ? arg : "", stderr);
		(void)fputs(hole + 2, stderr);
	} else {
		(void)fputs(msg, stderr);
	}
	(void)fputs("\nTry 'vdisk help'.\n", stderr);
	return EXIT_USAGE;
}

static int runtime_error(const struct vd_err *err)
{
	fprintf(stderr, "vdisk: %s\n", vd_err_msg(err));
	return 1;
}

static struct xs_handle *open_xs(void)
{
	struct xs_handle *xs = xs_open(0);

	if (xs == NULL) {
		int e = errno;
		const char *p = getenv("XENSTORED_PATH");

		fprintf(stderr, "vdisk: connecting to xenstore%s%s: %s\n", p ? " at " : "",
			p ? p : "", strerror(e));
	}
	return xs;
}

/* getopt_long over argv[0..argc): argv[0] is the subcommand. */
static void reset_getopt(void)
{
	optind = 0; /* glibc: full re-initialisation */
	opterr = 1;
}

static int cmd_attach(int argc, char **argv)
{
	static const struct option lo[] = {
		{ "format", required_argument, NULL, 'f' },
		{ "readonly", no_argument, NULL, 'r' },
		{ "io", required_argument, NULL, 'i' },
		{ "size", required_argument, NULL, 's' },
		{ "cache", required_argument, NULL, 'c' },
		{ "max-queues", required_argument, NULL, 'q' },
		{ "l2-cache-size", required_argument, NULL, 'L' },
		{ "l2-cache-entry-size", required_argument, NULL, 'E' },
		{ "polling-duration", required_argument, NULL, 'P' },
		{ "polling-idle-threshold", required_argument, NULL, 'T' },
		{ "zero-copy", required_argument, NULL, 'Z' },
		{ "io-fixed", required_argument, NULL, 'X' },
		{ "wait", required_argument, NULL, 'w' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	struct vd_attach_opts o = { .check_image = true };
	struct vd_err err = { 0 };
	unsigned int wait_s = 10;
	struct xs_handle *xs;
	uint64_t v;
	int c, r;

	reset_getopt();
	while ((c = getopt_long(argc, argv, "f:ri:s:c:q:L:E:P:T:Z:X:w:h", lo, NULL)) != -1) {
		switch (c) {
		case 'w':
			if (vd_ctl_parse_u64(optarg, 3600, &v) < 0) {
				return usage_error("invalid --wait '%s' (seconds, 0..3600)",
						   optarg);
			}
			wait_s = (unsigned int)v;
			break;
		case 'f':
			o.format = optarg;
			break;
		case 'r':
			o.readonly = true;
			break;
		case 'i':
			o.io_backend = optarg;
			break;
		case 's':
			if (vd_ctl_parse_size(optarg, &o.size_bytes) < 0) {
				return usage_error("invalid --size '%s'", optarg);
			}
			o.have_size = true;
			break;
		case 'c':
			o.cache = optarg;
			break;
		case 'q':
			if (vd_ctl_parse_u64(optarg, 16, &v) < 0 || v == 0) {
				return usage_error("invalid --max-queues '%s' (1..16)", optarg);
			}
			o.max_queues = (unsigned int)v;
			break;
		case 'L':
			if (vd_ctl_parse_size(optarg, &o.l2_cache_bytes) < 0 ||
			    o.l2_cache_bytes == 0) {
				return usage_error("invalid --l2-cache-size '%s'", optarg);
			}
			break;
		case 'E':
			if (vd_ctl_parse_size(optarg, &o.l2_cache_entry_bytes) < 0 ||
			    o.l2_cache_entry_bytes == 0) {
				return usage_error("invalid --l2-cache-entry-size '%s'", optarg);
			}
			break;
		case 'P':
			if (vd_ctl_parse_u64(optarg, VD_CTL_POLL_US_MAX, &v) < 0) {
				return usage_error(
					"invalid --polling-duration '%s' (0..1000000 us)", optarg);
			}
			o.polling_us = (uint32_t)v;
			o.have_polling_us = true;
			break;
		case 'T':
			if (vd_ctl_parse_u64(optarg, 100, &v) < 0) {
				return usage_error("invalid --polling-idle-threshold '%s' (0..100)",
						   optarg);
			}
			o.poll_idle_pct = (uint32_t)v;
			o.have_poll_idle_pct = true;
			break;
		case 'Z':
		case 'X':
			if (vd_ctl_parse_u64(optarg, 1, &v) < 0) {
				return usage_error("invalid --zero-copy/--io-fixed '%s' (0 or 1)",
						   optarg);
			}
			if (c == 'Z') {
				o.zero_copy = v != 0;
				o.have_zero_copy = true;
			} else {
				o.io_fixed = v != 0;
				o.have_io_fixed = true;
			}
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			return usage_error("attach: bad option", NULL);
		}
	}
	if (argc - optind != 3) {
		return usage_error("attach needs DOMID VDEV IMAGE", NULL);
	}
	if (vd_ctl_parse_domid(argv[optind], &o.domid) < 0) {
		return usage_error("invalid DOMID '%s' (1..65534)", argv[optind]);
	}
	if (vd_ctl_parse_vdev(argv[optind + 1], &o.vdev) < 0) {
		return usage_error("invalid VDEV '%s' (a number, or xvda, sdb, hdc...)",
				   argv[optind + 1]);
	}
	if (!(argv[optind + 1][0] >= '0' && argv[optind + 1][0] <= '9')) {
		o.vdev_name = argv[optind + 1];
	}
	o.image = argv[optind + 2];
	xs = open_xs();
	if (xs == NULL) {
		return 1;
	}
	o.backing_dirs = vd_cli_backing()->dirs; /* --backing-dir, --no-backing: main() */
	o.n_backing_dirs = vd_cli_backing()->n_dirs;
	o.no_backing = vd_cli_backing()->none;
	r = vd_ctl_attach(xs, &o, &err);
	if (r == 0 && wait_s > 0) {
		/* the worker opens (and locks) the image: say so if it cannot */
		r = vd_ctl_attach_wait(xs, o.domid, o.vdev, wait_s * 1000u, &err);
		if (r == 1) {
			fprintf(stderr,
				"vdisk: attach: no backend took %u/%u within %u s (is vdiskd "
				"running?)\n",
				o.domid, o.vdev, wait_s);
			r = 0;
		}
	}
	xs_close(xs);
	if (r < 0) {
		return runtime_error(&err);
	}
	return 0;
}

static int cmd_detach(int argc, char **argv)
{
	static const struct option lo[] = {
		{ "timeout", required_argument, NULL, 't' },
		{ "force", no_argument, NULL, 'f' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	struct vd_err err = { 0 };
	unsigned int timeout_ms = 10000;
	struct xs_handle *xs;
	bool force = false;
	uint16_t domid;
	uint32_t vdev;
	uint64_t v;
	int c, r;

	reset_getopt();
	while ((c = getopt_long(argc, argv, "t:fh", lo, NULL)) != -1) {
		switch (c) {
		case 't':
			if (vd_ctl_parse_u64(optarg, 3600, &v) < 0) {
				return usage_error("invalid --timeout '%s' (seconds, 0..3600)",
						   optarg);
			}
			timeout_ms = (unsigned int)v * 1000u;
			break;
		case 'f':
			force = true;
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			return usage_error("detach: bad option", NULL);
		}
	}
	if (argc - optind != 2) {
		return usage_error("detach needs DOMID VDEV", NULL);
	}
	if (vd_ctl_parse_domid(argv[optind], &domid) < 0) {
		return usage_error("invalid DOMID '%s' (1..65534)", argv[optind]);
	}
	if (vd_ctl_parse_vdev(argv[optind + 1], &vdev) < 0) {
		return usage_error("invalid VDEV '%s'", argv[optind + 1]);
	}
	xs = open_xs();
	if (xs == NULL) {
		return 1;
	}
	r = vd_ctl_detach(xs, domid, vdev, timeout_ms, force, &err);
	xs_close(xs);
	if (r < 0) {
		return runtime_error(&err);
	}
	return 0;
}

static int cmd_list(int argc, char **argv)
{
	static const struct option lo[] = {
		{ "json", no_argument, NULL, 'j' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	struct vd_err err = { 0 };
	struct xs_handle *xs;
	bool json = false;
	int c, r;

	reset_getopt();
	while ((c = getopt_long(argc, argv, "jh", lo, NULL)) != -1) {
		switch (c) {
		case 'j':
			json = true;
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			return usage_error("list: bad option", NULL);
		}
	}
	if (optind != argc) {
		return usage_error("list: unexpected argument '%s'", argv[optind]);
	}
	xs = open_xs();
	if (xs == NULL) {
		return 1;
	}
	r = vd_ctl_list(xs, stdout, json, &err);
	xs_close(xs);
	if (r < 0) {
		return runtime_error(&err);
	}
	return 0;
}

static int cmd_create(int argc, char **argv)
{
	static const struct option lo[] = {
		{ "format", required_argument, NULL, 'f' },
		{ "options", required_argument, NULL, 'o' },
		{ "parent", required_argument, NULL, 'b' },  /* vhd: differencing child */
		{ "backing", required_argument, NULL, 'b' }, /* qcow2: overlay */
		{ "backing-format", required_argument, NULL, 'F' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	struct vd_image_create_opts co = { 0 };
	const char *format = "raw";
	struct vd_err err = { 0 };
	int c, r;

	reset_getopt();
	while ((c = getopt_long(argc, argv, "f:o:b:F:h", lo, NULL)) != -1) {
		switch (c) {
		case 'f':
			format = optarg;
			break;
		case 'o': /* imgtool.h */
			if (vd_imgtool_parse_create_opts(optarg, &co, &err) < 0) {
				return usage_error("create: %s", vd_err_msg(&err));
			}
			break;
		case 'b':
			co.backing_file = optarg;
			break;
		case 'F':
			co.backing_format = optarg;
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			return usage_error("create: bad option", NULL);
		}
	}
	if (argc - optind != 2 && !(argc - optind == 1 && co.backing_file != NULL)) {
		return usage_error("create needs IMAGE SIZE", NULL);
	}
	if (argc - optind == 2) {
		r = vd_ctl_parse_size(argv[optind + 1], &co.size_bytes);
		if (r < 0 || co.size_bytes == 0) {
			return usage_error(r == -ERANGE
						   ? "SIZE '%s' is too large"
						   : "invalid SIZE '%s' (bytes, or with K/M/G/T)",
					   argv[optind + 1]);
		}
	}
	r = vd_imgtool_create(argv[optind], format, &co, &err);
	if (r < 0) {
		return runtime_error(&err);
	}
	return 0;
}

static int cmd_info(int argc, char **argv)
{
	static const struct option lo[] = {
		{ "json", no_argument, NULL, 'j' },
		{ "force-share", no_argument, NULL, 'U' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	struct vd_err err = { 0 };
	bool json = false, force_share = false;
	int c, r;

	reset_getopt();
	while ((c = getopt_long(argc, argv, "jUh", lo, NULL)) != -1) {
		switch (c) {
		case 'j':
			json = true;
			break;
		case 'U':
			force_share = true;
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			return usage_error("info: bad option", NULL);
		}
	}
	if (argc - optind != 1) {
		return usage_error("info needs IMAGE", NULL);
	}
	r = vd_imgtool_info(argv[optind], NULL, json, force_share, stdout, &err); /* imgtool.h */
	if (r < 0) {
		return runtime_error(&err);
	}
	return 0;
}

static int cmd_sim(int argc, char **argv)
{
	if (argc < 2) {
		return usage_error("sim needs 'hv' or 'guest'", NULL);
	}
	if (strcmp(argv[1], "hv") == 0) {
#ifdef VD_HAVE_SIM_HV
		return vd_sim_hv_main(argc - 1, argv + 1);
#else
		fputs("vdisk: sim hv: not built in\n", stderr);
		return 1;
#endif
	}
	if (strcmp(argv[1], "guest") == 0) {
#ifdef VD_HAVE_SIMGUEST
		return vd_simguest_main(argc - 1, argv + 1);
#else
		fputs("vdisk: sim guest: not built in\n", stderr);
		return 1;
#endif
	}
	return usage_error("unknown sim command '%s' (hv, guest)", argv[1]);
}

struct cmd {
	const char *name;
	int (*fn)(int argc, char **argv);
	bool opens_images; /* takes --backing-dir DIR and --no-backing */
};

static const struct cmd g_cmds[] = {
	{ "attach", cmd_attach, true },
	{ "detach", cmd_detach },
	{ "list", cmd_list },
	{ "create", cmd_create, true },
	{ "info", cmd_info, true },
	{ "sim", cmd_sim },
	/* image tools: cmd-image.c */
	{ "check", vd_cli_check, true },
	{ "map", vd_cli_map, true },
	{ "convert", vd_cli_convert, true },
	{ "snapshot", vd_cli_snapshot, true },
	{ "commit", vd_cli_commit, true },
	{ "resize", vd_cli_resize, true },
	/* run-time views and benchmarks: cmd-perf.c */
	{ "stats", vd_cli_stats },
	{ "bench", vd_cli_bench },
#ifdef VD_HAVE_NBD
	/* NBD export of an image: cmd-nbd.c */
	{ "serve-nbd", vd_cli_serve_nbd, true },
#endif
};

int main(int argc, char **argv)
{
	vd_log_set_ident("vdisk");
	if (argc < 2) {
		usage(stderr);
		return EXIT_USAGE;
	}
	if (strcmp(argv[1], "help") == 0 || strcmp(argv[1], "--help") == 0 ||
	    strcmp(argv[1], "-h") == 0) {
		usage(stdout);
		return 0;
	}
	if (strcmp(argv[1], "--version") == 0 || strcmp(argv[1], "version") == 0) {
		printf("vdisk %s\n", VD_VERSION);
		return 0;
	}
	for (size_t i = 0; i < VD_ARRAY_SIZE(g_cmds); i++) {
		if (strcmp(argv[1], g_cmds[i].name) == 0) {
			int n = argc - 1;

			if (g_cmds[i].opens_images) {
				if (vd_cli_take_backing_opts(&n, argv + 1) < 0) {
					return EXIT_USAGE;
				}
				vd_imgtool_set_backing_policy(vd_cli_backing());
			}
			return g_cmds[i].fn(n, argv + 1);
		}
	}
	return usage_error("unknown command '%s'", argv[1]);
}
