/*
 * --backing-dir DIR (repeatable) and --no-backing: the backing-file policy
 * (image.h struct vd_backing_policy) of every command that opens images.
 * main() takes them out of argv before the command parses the rest, so
 * each command's own option table stays as it is.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"
#include "common/compiler.h"

#define MAX_DIRS 32

static const char *g_dirs[MAX_DIRS];
static struct vd_backing_policy g_policy = { .dirs = g_dirs };

const struct vd_backing_policy *vd_cli_backing(void)
{
	return &g_policy;
}

/* Drop argv[i..i+n) from the argument vector. */
static void drop(int *argc, char **argv, int i, int n)
{
	memmove(&argv[i], &argv[i + n], sizeof(*argv) * (size_t)(*argc - i - n + 1));
	*argc -= n;
}

static int add_dir(const char *dir)
{
	if (!dir || !*dir) {
		fprintf(stderr, "vdisk: --backing-dir needs a directory\n");
		return -EINVAL;
	}
	if (g_policy.n_dirs >= MAX_DIRS) {
		fprintf(stderr, "vdisk: at most %d --backing-dir\n", MAX_DIRS);
		return -E2BIG;
	}
	g_dirs[g_policy.n_dirs++] = dir;
	return 0;
}

int vd_cli_take_backing_opts(int *argc, char **argv)
{
	int i = 1;

	while (i < *argc) {
		const char *a = argv[i];

		if (strcmp(a, "--") == 0) {
			break;
		}
		if (strcmp(a, "--no-backing") == 0) {
			g_policy.none = true;
			drop(argc, argv, i, 1);
		} else if (strcmp(a, "--backing-dir") == 0) {
			if (i + 1 >= *argc || add_dir(argv[i + 1]) < 0) {
				if (i + 1 >= *argc) {
					fprintf(stderr, "vdisk: --backing-dir needs a directory\n");
				}
				return -EINVAL;
			}
			drop(argc, argv, i, 2);
		} else if (strncmp(a, "--backing-dir=", 14) == 0) {
			if (add_dir(a + 14) < 0) {
				return -EINVAL;
			}
			drop(argc, argv, i, 1);
		} else {
			i++;
		}
	}
	return 0;
}
