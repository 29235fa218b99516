/*
 * vdisk stats bench (being written).
 */
#include <stdio.h>
#include "cli/cli.h"

int vd_cli_stats(int argc, char **argv)
{
	fprintf(stderr, "vdisk stats: not available in this build yet\n");
	return 1;
}

int vd_cli_bench(int argc, char **argv)
{
	fprintf(stderr, "vdisk bench: not available in this build yet\n");
	return 1;
}

