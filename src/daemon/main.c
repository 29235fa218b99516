/*
 * vdiskd [--transport sim|xen] [--foreground] [--log-level L] [--backing-dir DIR]...
 */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "common/log.h"
#include "ctl/ctl.h"

#define MAX_BACKING_DIRS 16

static void usage(FILE *f)
{
	fprintf(f, "usage: vdiskd [--transport sim|xen] [--foreground] "
		   "[--log-level error|warning|notice|info|debug]\n"
		   "              [--backing-dir DIR]...   backing files may also lie in DIR's "
		   "tree\n");
}

static int parse_level(const char *s, enum vd_log_level *out)
{
	static const char *const names[] = { "error", "warning", "notice", "info", "debug" };

	for (unsigned int i = 0; i < VD_ARRAY_SIZE(names); i++) {
		if (strcmp(s, names[i]) == 0 || (strcmp(s, "warn") == 0 && i == VD_LOG_WARN) ||
		    (strcmp(s, "err") == 0 && i == VD_LOG_ERR)) {
			*out = (enum vd_log_level)i;
			return 0;
		}
	}
	return -1;
}

int main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "transport", required_argument, NULL, 't' },
		{ "foreground", no_argument, NULL, 'f' },
		{ "log-level", required_argument, NULL, 'l' },
		{ "help", no_argument, NULL, 'h' },
		{ "version", no_argument, NULL, 'V' },
		{ "backing-dir", required_argument, NULL, 'B' },
		{ NULL, 0, NULL, 0 },
	};
	static char dirs[MAX_BACKING_DIRS][PATH_MAX];
	static const char *dir_ptrs[MAX_BACKING_DIRS];
	struct vd_daemon_opts o = { .transport = "xen", .backing_dirs = dir_ptrs };
	enum vd_log_level level;
	int c;

	while ((c = getopt_long(argc, argv, "t:fl:hVB:", longopts, NULL)) != -1) {
		switch (c) {
		case 't':
			if (strcmp(optarg, "sim") != 0 && strcmp(optarg, "xen") != 0) {
				fprintf(stderr, "vdiskd: unknown transport '%s' (sim or xen)\n",
					optarg);
				return 2;
			}
			o.transport = optarg;
			break;
		case 'f':
			o.foreground = true;
			break;
		case 'l':
			if (parse_level(optarg, &level) < 0) {
				fprintf(stderr, "vdiskd: unknown log level '%s'\n", optarg);
				usage(stderr);
				return 2;
			}
			vd_log_set_level(level);
			break;
		case 'h':
			usage(stdout);
			return 0;
		case 'V':
			printf("vdiskd %s\n", VD_VERSION);
			return 0;
		case 'B':
			/* resolved now: the daemon leaves its cwd when it detaches */
			if (o.n_backing_dirs >= MAX_BACKING_DIRS ||
			    realpath(optarg, dirs[o.n_backing_dirs]) == NULL) {
				fprintf(stderr, "vdiskd: --backing-dir %s: %s\n", optarg,
					o.n_backing_dirs >= MAX_BACKING_DIRS ? "too many"
									     : strerror(errno));
				return 2;
			}
			dir_ptrs[o.n_backing_dirs] = dirs[o.n_backing_dirs];
			o.n_backing_dirs++;
			break;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (optind != argc) {
		fprintf(stderr, "vdiskd: unexpected argument '%s'\n", argv[optind]);
		usage(stderr);
		return 2;
	}
	return vd_daemon_run(&o);
}
