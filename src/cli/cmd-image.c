/*
 * vdisk check map convert snapshot commit resize: argument parsing in
 * qemu-img's order and conventions; the work is in src/ctl/imgtool.c.
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "common/err.h"
#include "ctl/imgtool.h"

#define EXIT_USAGE 2

enum {
	OPT_JSON = 256,
	OPT_REPAIR,
	OPT_SHRINK,
	OPT_OUTPUT,
};

static int usage(const char *cmd, const char *synopsis, const char *why)
{
	if (why) {
		fprintf(stderr, "vdisk %s: %s\n", cmd, why);
	}
	fprintf(stderr, "usage: vdisk %s %s\n", cmd, synopsis);
	return EXIT_USAGE;
}

static int fail(const struct vd_err *err, int ret)
{
	if (err->errnum) {
		fprintf(stderr, "vdisk: %s\n", vd_err_msg(err));
	} else {
		fprintf(stderr, "vdisk: %s\n", strerror(-ret));
	}
	return 1;
}

static void reset_getopt(void)
{
	optind = 0;
	opterr = 1;
}

/* --output=json|human (qemu-img) as well as --json */
static int parse_output(const char *v, bool *json)
{
	if (strcmp(v, "json") == 0) {
		*json = true;
		return 0;
	}
	if (strcmp(v, "human") == 0) {
		*json = false;
		return 0;
	}
	return -EINVAL;
}

#define CHECK_SYN "[-f FMT] [-r|--repair] [--json] IMAGE"

int vd_cli_check(int argc, char **argv)
{
	static const struct option lo[] = {
		{ "format", required_argument, NULL, 'f' },
		{ "repair", no_argument, NULL, OPT_REPAIR },
		{ "json", no_argument, NULL, OPT_JSON },
		{ "output", required_argument, NULL, OPT_OUTPUT },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const char *format = NULL;
	bool repair = false, json = false;
	struct vd_err err = { 0 };
	int c, ret;

	reset_getopt();
	while ((c = getopt_long(argc, argv, "f:r:h", lo, NULL)) != -1) {
		switch (c) {
		case 'f':
			format = optarg;
			break;
		case 'r': /* qemu-img: -r leaks|all */
			if (strcmp(optarg, "all") != 0 && strcmp(optarg, "leaks") != 0) {
				return usage("check", CHECK_SYN, "-r takes leaks or all");
			}
			repair = true;
			break;
		case OPT_REPAIR:
			repair = true;
			break;
		case OPT_JSON:
			json = true;
			break;
		case OPT_OUTPUT:
			if (parse_output(optarg, &json) < 0) {
				return usage("check", CHECK_SYN, "--output takes json or human");
			}
			break;
		case 'h':
			usage("check", CHECK_SYN, NULL);
			return 0;
		default:
			return usage("check", CHECK_SYN, NULL);
		}
	}
	if (argc - optind != 1) {
		return usage("check", CHECK_SYN, "needs IMAGE");
	}
	ret = vd_imgtool_check(argv[optind], format, repair, json, stdout, &err);
	if (ret < 0) {
		return fail(&err, ret);
	}
	return ret;
}

#define MAP_SYN "[-f FMT] [--json|--output=json] IMAGE"

int vd_cli_map(int argc, char **argv)
{
	static const struct option lo[] = {
		{ "format", required_argument, NULL, 'f' },
		{ "json", no_argument, NULL, OPT_JSON },
		{ "output", required_argument, NULL, OPT_OUTPUT },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const char *format = NULL;
	struct vd_err err = { 0 };
	bool json = false;
	int c, ret;

	reset_getopt();
	while ((c = getopt_long(argc, argv, "f:h", lo, NULL)) != -1) {
		switch (c) {
		case 'f':
			format = optarg;
			break;
		case OPT_JSON:
			json = true;
			break;
		case OPT_OUTPUT:
			if (parse_output(optarg, &json) < 0) {
				return usage("map", MAP_SYN, "--output takes json or human");
			}
			break;
		case 'h':
			usage("map", MAP_SYN, NULL);
			return 0;
		default:
			return usage("map", MAP_SYN, NULL);
		}
	}
	if (argc - optind != 1) {
		return usage("map", MAP_SYN, "needs IMAGE");
	}
	ret = vd_imgtool_map(argv[optind], format, json, stdout, &err);
	return ret < 0 ? fail(&err, ret) : 0;
}

#define CONVERT_SYN "[-f FMT] -O FMT [-o key=val,...] [-p] [-q] SRC DST"

int vd_cli_convert(int argc, char **argv)
{
	static const struct option lo[] = {
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	struct vd_convert_opts o = { .progress = VD_PROGRESS_AUTO };
	struct vd_err err = { 0 };
	int c, ret;

	reset_getopt();
	while ((c = getopt_long(argc, argv, "f:O:o:pqh", lo, NULL)) != -1) {
		switch (c) {
		case 'f':
			o.src_format = optarg;
			break;
		case 'O':
			o.dst_format = optarg;
			break;
		case 'o':
			if (vd_imgtool_parse_create_opts(optarg, &o.create, &err) < 0) {
				return usage("convert", CONVERT_SYN, vd_err_msg(&err));
			}
			break;
		case 'p':
			/* progress is shown whenever stderr is a terminal */
			break;
		case 'q':
			o.progress = VD_PROGRESS_NEVER;
			break;
		case 'h':
			usage("convert", CONVERT_SYN, NULL);
			return 0;
		default:
			return usage("convert", CONVERT_SYN, NULL);
		}
	}
	if (argc - optind != 2) {
		return usage("convert", CONVERT_SYN, "needs SRC DST");
	}
	if (!o.dst_format) {
		return usage("convert", CONVERT_SYN, "needs -O FMT");
	}
	o.src = argv[optind];
	o.dst = argv[optind + 1];
	ret = vd_imgtool_convert(&o, &err);
	return ret < 0 ? fail(&err, ret) : 0;
}

#define SNAPSHOT_SYN "[-f FMT] [-F NEWFMT] IMAGE NEW"

int vd_cli_snapshot(int argc, char **argv)
{
	static const struct option lo[] = {
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const char *format = NULL, *new_format = NULL;
	struct vd_err err = { 0 };
	int c, ret;

	reset_getopt();
	while ((c = getopt_long(argc, argv, "f:F:h", lo, NULL)) != -1) {
		switch (c) {
		case 'f':
			format = optarg;
			break;
		case 'F':
			new_format = optarg;
			break;
		case 'h':
			usage("snapshot", SNAPSHOT_SYN, NULL);
			return 0;
		default:
			return usage("snapshot", SNAPSHOT_SYN, NULL);
		}
	}
	if (argc - optind != 2) {
		return usage("snapshot", SNAPSHOT_SYN, "needs IMAGE NEW");
	}
	ret = vd_imgtool_snapshot(argv[optind], format, argv[optind + 1], new_format, &err);
	return ret < 0 ? fail(&err, ret) : 0;
}

#define COMMIT_SYN "[-f FMT] [-p] [-q] IMAGE"

int vd_cli_commit(int argc, char **argv)
{
	static const struct option lo[] = {
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	enum vd_progress_mode progress = VD_PROGRESS_AUTO;
	const char *format = NULL;
	struct vd_err err = { 0 };
	bool quiet = false;
	int c, ret;

	reset_getopt();
	while ((c = getopt_long(argc, argv, "f:pqh", lo, NULL)) != -1) {
		switch (c) {
		case 'f':
			format = optarg;
			break;
		case 'p':
			break;
		case 'q':
			progress = VD_PROGRESS_NEVER;
			quiet = true;
			break;
		case 'h':
			usage("commit", COMMIT_SYN, NULL);
			return 0;
		default:
			return usage("commit", COMMIT_SYN, NULL);
		}
	}
	if (argc - optind != 1) {
		return usage("commit", COMMIT_SYN, "needs IMAGE");
	}
	ret = vd_imgtool_commit(argv[optind], format, progress, quiet ? NULL : stdout, &err);
	return ret < 0 ? fail(&err, ret) : 0;
}

#define RESIZE_SYN "[-f FMT] [--shrink] IMAGE [+|-]SIZE"

int vd_cli_resize(int argc, char **argv)
{
	static const struct option lo[] = {
		{ "format", required_argument, NULL, 'f' },
		{ "shrink", no_argument, NULL, OPT_SHRINK },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const char *format = NULL;
	struct vd_err err = { 0 };
	bool shrink = false, quiet = false;
	int c, ret, i, n = 0;
	char *pos[2] = { NULL, NULL };

	/* "-1G" is a size, not an option: pick positionals by hand around getopt */
	for (i = 1; i < argc; i++) {
		if (argv[i][0] == '-' && argv[i][1] >= '0' && argv[i][1] <= '9') {
			if (n >= 2) {
				return usage("resize", RESIZE_SYN, "too many arguments");
			}
			pos[n++] = argv[i];
			memmove(&argv[i], &argv[i + 1], sizeof(*argv) * (size_t)(argc - i - 1));
			argc--;
			i--;
		}
	}
	reset_getopt();
	while ((c = getopt_long(argc, argv, "f:qh", lo, NULL)) != -1) {
		switch (c) {
		case 'f':
			format = optarg;
			break;
		case 'q':
			quiet = true;
			break;
		case OPT_SHRINK:
			shrink = true;
			break;
		case 'h':
			usage("resize", RESIZE_SYN, NULL);
			return 0;
		default:
			return usage("resize", RESIZE_SYN, NULL);
		}
	}
	for (i = optind; i < argc; i++) {
		if (n >= 2) {
			return usage("resize", RESIZE_SYN, "too many arguments");
		}
		pos[n++] = argv[i];
	}
	if (n != 2) {
		return usage("resize", RESIZE_SYN, "needs IMAGE SIZE");
	}
	/* a negative size came first only if IMAGE was after it: keep IMAGE SIZE order */
	if (pos[0][0] == '-' && pos[1][0] != '-') {
		char *t = pos[0];

		pos[0] = pos[1];
		pos[1] = t;
	}
	ret = vd_imgtool_resize(pos[0], format, pos[1], shrink, quiet ? NULL : stdout, &err);
	return ret < 0 ? fail(&err, ret) : 0;
}
