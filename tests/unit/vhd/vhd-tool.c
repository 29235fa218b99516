/*
 * vhd-tool: a small driver of the image layer for the vhd interop and func
 * tests, independent of the generic CLI.
 *   vhd-tool create IMG SIZE [fixed|dynamic] [BLOCK_BYTES] [PARENT]
 *   vhd-tool write IMG OFFSET LEN BYTE       fill LEN bytes with BYTE
 *   vhd-tool dump IMG OUT                    the virtual disk as a raw file
 *   vhd-tool check IMG [repair]              exit 0 clean, 1 problems left
 *   vhd-tool resize IMG SIZE
 *   vhd-tool info IMG
 * Exit 0 ok, 1 error, 2 usage.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/compiler.h"
#include "image/image.h"

#define CHUNK (1u << 20)

static int num(const char *s, uint64_t *out)
{
	char *end;
	unsigned long long v;

	errno = 0;
	v = strtoull(s, &end, 0);
	if (errno || end == s || *end) {
		return -1;
	}
	*out = v;
	return 0;
}

static int open_img(const char *path, bool ro, struct vd_image **img)
{
	struct vd_image_opts o = {
		.format = "vhd", .readonly = ro, .io_backend = "uring", .cache = VD_CACHE_WRITEBACK
	};
	struct vd_err err = { 0 };

	if (getenv("VHD_TOOL_FORMAT")) {
		o.format = getenv("VHD_TOOL_FORMAT");
	}
	if (vd_image_open(path, &o, img, &err) < 0) {
		fprintf(stderr, "open: %s\n", vd_err_msg(&err));
		return -1;
	}
	return 0;
}

static int do_io(struct vd_image *img, int argc, char **argv, bool dump)
{
	struct vd_image_sync *s;
	struct vd_err err = { 0 };
	uint64_t off = 0, len = 0, b = 0, done;
	void *buf;
	int fd = -1, rc = 1;

	struct vd_image_info info;

	vd_image_get_info(img, &info);
	if (vd_image_sync_open(img, &s, &err) < 0) {
		fprintf(stderr, "sync: %s\n", vd_err_msg(&err));
		return 1;
	}
	if (posix_memalign(&buf, 4096, CHUNK) != 0) {
		goto out;
	}
	if (dump) {
		fd = open(argv[0], O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
		if (fd < 0) {
			perror(argv[0]);
			goto out_buf;
		}
		len = info.size_bytes;
	} else if (argc < 3 || num(argv[0], &off) || num(argv[1], &len) || num(argv[2], &b)) {
		fprintf(stderr, "write IMG OFFSET LEN BYTE\n");
		goto out_buf;
	} else {
		memset(buf, (int)b, CHUNK);
	}
	for (done = 0; done < len;) {
		uint64_t n = VD_MIN((uint64_t)CHUNK, len - done);
		int64_t r =
			vd_image_sync_io(s, dump ? VD_IO_READ : VD_IO_WRITE, buf, n, off + done);

		if (r != (int64_t)n) {
			fprintf(stderr, "%s at %" PRIu64 ": %s\n", dump ? "read" : "write",
				off + done, strerror(r < 0 ? (int)-r : EIO));
			goto out_fd;
		}
		if (dump && pwrite(fd, buf, n, (off_t)done) != (ssize_t)n) {
			perror("pwrite");
			goto out_fd;
		}
		done += n;
	}
	if (!dump && vd_image_sync_io(s, VD_IO_FLUSH, NULL, 0, 0) != 0) {
		fprintf(stderr, "flush failed\n");
		goto out_fd;
	}
	rc = 0;
out_fd:
	if (fd >= 0) {
		close(fd);
	}
out_buf:
	free(buf);
out:
	vd_image_sync_close(s);
	return rc;
}

int main(int argc, char **argv)
{
	struct vd_err err = { 0 };
	struct vd_image *img = NULL;
	const char *cmd;
	int rc = 1;

	if (argc < 3) {
		fprintf(stderr, "usage: vhd-tool create|write|dump|check|resize|info IMG ...\n");
		return 2;
	}
	cmd = argv[1];
	if (strcmp(cmd, "create") == 0) {
		struct vd_image_create_opts o = { 0 };
		uint64_t v;

		if (argc < 4 || num(argv[3], &o.size_bytes)) {
			return 2;
		}
		o.subformat = argc > 4 ? argv[4] : NULL;
		if (argc > 5 && num(argv[5], &v) == 0) {
			o.cluster_bytes = (uint32_t)v;
		}
		o.backing_file = argc > 6 ? argv[6] : NULL;
		if (vd_image_create_opts(argv[2], "vhd", &o, &err) < 0) {
			fprintf(stderr, "create: %s\n", vd_err_msg(&err));
			return 1;
		}
		return 0;
	}
	if (open_img(argv[2],
		     strcmp(cmd, "dump") == 0 || strcmp(cmd, "info") == 0 ||
			     (strcmp(cmd, "check") == 0 && argc < 4),
		     &img) < 0) {
		return 1;
	}
	if (strcmp(cmd, "write") == 0) {
		rc = do_io(img, argc - 3, argv + 3, false);
	} else if (strcmp(cmd, "dump") == 0 && argc > 3) {
		rc = do_io(img, argc - 3, argv + 3, true);
	} else if (strcmp(cmd, "check") == 0) {
		struct vd_check_result r;

		if (vd_image_check(img, argc > 3, &r, &err) < 0) {
			fprintf(stderr, "check: %s\n", vd_err_msg(&err));
		} else {
			printf("corruptions %" PRIu64 " leaks %" PRIu64 " fixed %" PRIu64
			       "/%" PRIu64 " allocated %" PRIu64 "/%" PRIu64 " %s\n",
			       r.corruptions, r.leaks, r.corruptions_fixed, r.leaks_fixed,
			       r.allocated_units, r.total_units, r.first_problem);
			rc = (r.corruptions - r.corruptions_fixed) || (r.leaks - r.leaks_fixed);
		}
	} else if (strcmp(cmd, "resize") == 0 && argc > 3) {
		uint64_t sz;

		if (num(argv[3], &sz) == 0 && vd_image_resize(img, sz, &err) == 0) {
			rc = 0;
		} else {
			fprintf(stderr, "resize: %s\n", vd_err_msg(&err));
		}
	} else if (strcmp(cmd, "info") == 0) {
		struct vd_image_info info;
		struct vd_image *b;
		int depth = 0;

		vd_image_get_info(img, &info);
		printf("size %" PRIu64 " subformat %s block %u backing %s corrupt %d\n",
		       info.size_bytes, info.subformat ? info.subformat : "-", info.cluster_bytes,
		       info.backing_file ? info.backing_file : "-", info.corrupt);
		for (b = vd_image_backing(img); b; b = vd_image_backing(b)) {
			depth++;
		}
		printf("depth %d\n", depth);
		rc = 0;
	} else {
		rc = 2;
	}
	vd_image_close(img);
	return rc;
}
