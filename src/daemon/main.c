/*
 * vdiskd [--transport sim|xen] [--foreground] [--log-level L]
 */
#include <getopt.h>
#include <stdio.h>
#include <string.h>
#include "common/log.h"
#include "ctl/ctl.h"

static void usage(FILE *f)
{
	fprintf(f, "usage: vdiskd [--transport sim|xen] [--foreground] "
		   "[--log-level error|warning|notice|info|debug]\n");
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
		{ NULL, 0, NULL, 0 },
	};
	struct vd_daemon_opts o = { .transport = "xen" };
	enum vd_log_level level;
	int c;

	while ((c = getopt_long(argc, argv, "t:fl:hV", longopts, NULL)) != -1) {
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
