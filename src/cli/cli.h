/*
 * The vdisk commands, one file per owner: main.c (VBDs, sim, create, info),
 * cmd-image.c (image tools), cmd-perf.c (stats, bench). Each takes the
 * arguments after "vdisk" (argv[0] is the command name) and returns the
 * process exit code: 0 ok, 1 runtime error, 2 usage error.
 */
#ifndef VD_CLI_H
#define VD_CLI_H

#include "image/image.h"

int vd_cli_check(int argc, char **argv);
int vd_cli_map(int argc, char **argv);
int vd_cli_convert(int argc, char **argv);
int vd_cli_snapshot(int argc, char **argv);
int vd_cli_commit(int argc, char **argv);
int vd_cli_resize(int argc, char **argv);
int vd_cli_stats(int argc, char **argv);
int vd_cli_bench(int argc, char **argv);
int vd_cli_serve_nbd(int argc, char **argv); /* cmd-nbd.c */

/*
 * backing-opts.c: take --backing-dir DIR (repeatable, also =DIR) and
 * --no-backing out of argv[1..argc) (up to "--"), updating *argc; the
 * policy they give is vd_cli_backing() (argv's strings are kept). -EINVAL
 * after printing why.
 */
int vd_cli_take_backing_opts(int *argc, char **argv);
const struct vd_backing_policy *vd_cli_backing(void);

#endif
