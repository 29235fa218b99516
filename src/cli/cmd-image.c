/*
 * vdisk check map convert snapshot commit resize (being written).
 */
#include <stdio.h>
#include "cli/cli.h"

int vd_cli_check(int argc, char **argv)
{
	fprintf(stderr, "vdisk check: not available in this build yet\n");
	return 1;
}

int vd_cli_map(int argc, char **argv)
{
	fprintf(stderr, "vdisk map: not available in this build yet\n");
	return 1;
}

int vd_cli_convert(int argc, char **argv)
{
	fprintf(stderr, "vdisk convert: not available in this build yet\n");
	return 1;
}

int vd_cli_snapshot(int argc, char **argv)
{
	fprintf(stderr, "vdisk snapshot: not available in this build yet\n");
	return 1;
}

int vd_cli_commit(int argc, char **argv)
{
	fprintf(stderr, "vdisk commit: not available in this build yet\n");
	return 1;
}

int vd_cli_resize(int argc, char **argv)
{
	fprintf(stderr, "vdisk resize: not available in this build yet\n");
	return 1;
}

