/*
 * backing: which backing files (qcow2) and parents (vhd) an image may open,
 * the policy of image.h's struct vd_backing_policy.
 *
 * The name of a backing file comes from the image, which is untrusted: a
 * hostile image could otherwise name /etc/shadow (probed as raw) and have
 * the host's file served to the guest. So every layer's backing file is
 * resolved (realpath, all symlinks followed) and must lie in the tree of
 * the top image's directory or of an allow-listed directory, and a raw
 * backing file needs a recorded format, never a probe. The resolved path
 * is what gets opened, so a symlink cannot point the check and the open at
 * two different files (a host user racing renames in an allowed directory
 * is outside this threat model: that user owns the tree).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "image/image-driver.h"

/* True if path (resolved) is dir (resolved) or lies below it. */
static bool in_tree(const char *path, const char *dir)
{
	size_t n = strlen(dir);

	while (n > 0 && dir[n - 1] == '/') {
		n--; /* "/" becomes "": everything is below the root */
	}
	return strncmp(path, dir, n) == 0 && (path[n] == '/' || path[n] == '\0');
}

char *vd_image_backing_root(const char *image_path)
{
	char *dup = strdup(image_path);
	char *root = NULL;

	if (dup) {
		root = realpath(dirname(dup), NULL);
		free(dup);
	}
	return root;
}

/* 0 if the policy allows real (resolved), else -EACCES with err set. */
static int check_allowed(const struct vd_image *img, const char *name, const char *real,
			 struct vd_err *err)
{
	const struct vd_backing_policy *p = &img->opts.backing;
	char rdir[PATH_MAX];
	bool differs;
	size_t i;

	/* resolved again: a caller may name the root itself (opts.backing.root_dir) */
	if (p->root_dir && realpath(p->root_dir, rdir) && in_tree(real, rdir)) {
		return 0;
	}
	for (i = 0; i < p->n_dirs; i++) {
		if (p->dirs[i] && realpath(p->dirs[i], rdir) && in_tree(real, rdir)) {
			return 0;
		}
	}
	/* paths can be long and vd_err short: the verdict and the remedy first */
	differs = strcmp(name, real) != 0;
	return vd_err_set(err, EACCES,
			  "%s: backing file %s%s%s%s refused (--backing-dir DIR allows it): "
			  "outside %s%s",
			  img->path, name, differs ? " (" : "", differs ? real : "",
			  differs ? ")" : "", p->root_dir ? p->root_dir : "the image's directory",
			  p->n_dirs ? " and the allowed directories" : "");
}

int vd_image_open_backing(struct vd_image *img, const char *name, const char *path,
			  const char *format, struct vd_image **out, struct vd_err *err)
{
	struct vd_image_opts bo = img->opts;
	char *real;
	int ret;

	*out = NULL;
	if (img->opts.backing.none) {
		if (!img->readonly) {
			return vd_err_set(err, EROFS,
					  "%s: without its backing file %s (--no-backing) the "
					  "image can only be opened read-only",
					  img->path, name);
		}
		return 0;
	}
	real = realpath(path, NULL);
	if (!real) {
		ret = errno;
		return vd_err_set(err, ret, "%s: cannot open backing file %s: %s", img->path, path,
				  strerror(ret));
	}
	ret = check_allowed(img, name, real, err);
	if (ret < 0) {
		goto out;
	}
	bo.readonly = true;
	bo.format = format;
	bo.snapshot = NULL;
	ret = vd_image_open(real, &bo, out, err);
	if (ret < 0) {
		vd_err_set(err, -ret, "%s: cannot open backing file %s", img->path, real);
		goto out;
	}
	if (!format && (*out)->driver == &vd_raw_driver) {
		vd_image_close(*out);
		*out = NULL;
		ret = vd_err_set(err, EACCES,
				 "%s: backing file %s has no recorded format and would be read "
				 "as raw: refused (record it: qemu-img rebase -u -F raw)",
				 img->path, name);
	}
out:
	free(real);
	return ret;
}
