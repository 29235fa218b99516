/*
 * qcow2-tool: drives the image API for the qcow2 interop and func tests.
 *   create IMG SIZE [cluster=N] [compat=2|3] [lazy] [extl2] [refbits=N]
 *          [backing=FILE] [backing_fmt=FMT] [prealloc]
 *   dump IMG OUT            the virtual disk into a raw file
 *   pattern IMG OFF LEN BYTE   verify that [OFF, OFF+LEN) holds BYTE
 *   write IMG OFF LEN BYTE     write BYTE over [OFF, OFF+LEN)
 *   crashwrite IMG OFF LEN BYTE   the same, flush, then exit without closing
 *   discard IMG OFF LEN
 *   random IMG MODEL SEED COUNT   random writes/discards/flushes on IMG and
 *                                 the raw MODEL file (same size) alike
 *   check IMG [repair]      prints the result; exit 1 on corruption/leak
 *   map IMG                 JSON lines: start length depth zero data offset
 *   info IMG
 *   resize IMG SIZE
 *   snapshots IMG           lists internal snapshots
 *   readsnap IMG SNAP OUT   dump an internal snapshot into a raw file
 * Environment: VD_L2_CACHE, VD_L2_ENTRY (cache options), VD_IO (backend).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "image/image-driver.h"
#include "image/qcow2/qcow2.h"
#include "tool-num.h"

static struct vd_image *open_img(const char *path, bool ro, const char *snap)
{
	struct vd_image_opts o = { .cache = VD_CACHE_WRITEBACK, .readonly = ro, .snapshot = snap };
	struct vd_err err = { 0 };
	struct vd_image *img;
	const char *e;

	o.io_backend = getenv("VD_IO");
	if ((e = getenv("VD_L2_CACHE")) != NULL) {
		o.l2_cache_bytes = tool_num(e);
	}
	if ((e = getenv("VD_L2_ENTRY")) != NULL) {
		o.l2_cache_entry_bytes = tool_num(e);
	}
	if (vd_image_open(path, &o, &img, &err) < 0) {
		fprintf(stderr, "open %s: %s\n", path, vd_err_msg(&err));
		exit(1);
	}
	return img;
}

static struct vd_image_sync *sync_open(struct vd_image *img)
{
	struct vd_err err = { 0 };
	struct vd_image_sync *s;

	if (vd_image_sync_open(img, &s, &err) < 0) {
		fprintf(stderr, "sync open: %s\n", vd_err_msg(&err));
		exit(1);
	}
	return s;
}

static void *xbuf(size_t len)
{
	void *p;

	if (posix_memalign(&p, 4096, len ? len : 1) != 0) {
		exit(1);
	}
	return p;
}

static int do_create(int argc, char **argv)
{
	struct vd_image_create_opts o = { .size_bytes = tool_num(argv[1]) };
	struct vd_err err = { 0 };

	for (int i = 2; i < argc; i++) {
		const char *a = argv[i];

		if (!strncmp(a, "cluster=", 8)) {
			o.cluster_bytes = (uint32_t)tool_num(a + 8);
		} else if (!strncmp(a, "compat=", 7)) {
			o.compat = (unsigned int)tool_num(a + 7);
		} else if (!strcmp(a, "lazy")) {
			o.lazy_refcounts = true;
		} else if (!strcmp(a, "extl2")) {
			o.extended_l2 = true;
		} else if (!strncmp(a, "refbits=", 8)) {
			o.refcount_bits = (uint32_t)tool_num(a + 8);
		} else if (!strncmp(a, "backing=", 8)) {
			o.backing_file = a + 8;
		} else if (!strncmp(a, "backing_fmt=", 12)) {
			o.backing_format = a + 12;
		} else if (!strcmp(a, "prealloc")) {
			o.preallocation = "metadata";
		} else {
			fprintf(stderr, "unknown option %s\n", a);
			return 2;
		}
	}
	o.flags = VD_IMAGE_CREATE_OVERWRITE;
	if (vd_image_create_opts(argv[0], "qcow2", &o, &err) < 0) {
		fprintf(stderr, "create: %s\n", vd_err_msg(&err));
		return 1;
	}
	return 0;
}

static int do_dump(const char *path, const char *out, const char *snap)
{
	struct vd_image *img = open_img(path, true, snap);
	struct vd_image_sync *s = sync_open(img);
	uint64_t size = img->info.size_bytes, chunk = 1 << 20;
	uint8_t *buf = xbuf(chunk);
	int fd = open(out, O_WRONLY | O_CREAT | O_TRUNC, 0644), ret = 0;

	if (fd < 0 || ftruncate(fd, (off_t)size) < 0) {
		perror(out);
		return 1;
	}
	for (uint64_t off = 0; off < size; off += chunk) {
		uint64_t n = size - off < chunk ? size - off : chunk;
		struct vd_block_status bs;
		int64_t r;

		/* skip what reads as zeroes (sparse output) */
		if (vd_image_block_status(img, off, n, &bs) == 0 && bs.len_bytes == n &&
		    !(bs.flags & VD_BLOCK_DATA)) {
			continue;
		}
		r = vd_image_sync_io(s, VD_IO_READ, buf, n, off);
		if (r != (int64_t)n) {
			fprintf(stderr, "read at %" PRIu64 ": %s\n", off, strerror((int)-r));
			ret = 1;
			break;
		}
		if (pwrite(fd, buf, n, (off_t)off) != (ssize_t)n) {
			perror("write");
			ret = 1;
			break;
		}
	}
	close(fd);
	free(buf);
	vd_image_sync_close(s);
	vd_image_close(img);
	return ret;
}

static int do_pattern(const char *path, uint64_t off, uint64_t len, int byte)
{
	struct vd_image *img = open_img(path, true, NULL);
	struct vd_image_sync *s = sync_open(img);
	uint8_t *buf = xbuf(len);
	int64_t r = vd_image_sync_io(s, VD_IO_READ, buf, len, off);
	int ret = 0;

	if (r != (int64_t)len) {
		fprintf(stderr, "read: %s\n", strerror((int)-r));
		ret = 1;
	}
	for (uint64_t i = 0; ret == 0 && i < len; i++) {
		if (buf[i] != byte) {
			fprintf(stderr, "byte %" PRIu64 " is 0x%x, not 0x%x\n", off + i, buf[i],
				byte);
			ret = 1;
		}
	}
	free(buf);
	vd_image_sync_close(s);
	vd_image_close(img);
	return ret;
}

static bool crash; /* leave without closing: as a power cut after the flush */

static int do_write(const char *path, enum vd_io_op op, uint64_t off, uint64_t len, int byte)
{
	struct vd_image *img = open_img(path, false, NULL);
	struct vd_image_sync *s = sync_open(img);
	uint8_t *buf = xbuf(len);
	int64_t r;

	memset(buf, byte, len);
	r = vd_image_sync_io(s, op, op == VD_IO_WRITE ? buf : NULL, len, off);
	if (r >= 0) {
		r = vd_image_sync_io(s, VD_IO_FLUSH, NULL, 0, 0);
	}
	if (crash) {
		_exit(r < 0);
	}
	free(buf);
	vd_image_sync_close(s);
	vd_image_close(img);
	if (r < 0) {
		fprintf(stderr, "io: %s\n", strerror((int)-r));
		return 1;
	}
	return 0;
}

static uint64_t rnd(uint64_t *x)
{
	*x ^= *x << 13;
	*x ^= *x >> 7;
	*x ^= *x << 17;
	return *x;
}

static int do_random(const char *path, const char *model, uint64_t seed, uint64_t count)
{
	struct vd_image *img = open_img(path, false, NULL);
	struct vd_image_sync *s = sync_open(img);
	uint64_t size = img->info.size_bytes, x = seed * 2654435761u + 1;
	uint64_t maxlen = 256 << 10;
	uint8_t *buf = xbuf(maxlen), *zero = xbuf(maxlen);
	int fd = open(model, O_RDWR);
	int ret = 0;

	memset(zero, 0, maxlen);
	if (fd < 0) {
		perror(model);
		return 1;
	}
	for (uint64_t i = 0; i < count && ret == 0; i++) {
		uint64_t len = ((rnd(&x) % (maxlen / 512)) + 1) * 512;
		uint64_t off = (rnd(&x) % (size / 512)) * 512;
		unsigned int what = (unsigned int)(rnd(&x) % 10);
		int64_t r;

		if (off + len > size) {
			len = size - off;
		}
		if (what < 6) {
			for (uint64_t j = 0; j < len; j += 8) {
				uint64_t v = rnd(&x);

				memcpy(buf + j, &v, 8);
			}
			r = vd_image_sync_io(s, VD_IO_WRITE, buf, len, off);
			if (pwrite(fd, buf, len, (off_t)off) != (ssize_t)len) {
				ret = 1;
			}
		} else if (what < 8) {
			r = vd_image_sync_io(s, what == 6 ? VD_IO_DISCARD : VD_IO_WRITE_ZEROES,
					     NULL, len, off);
			if (pwrite(fd, zero, len, (off_t)off) != (ssize_t)len) {
				ret = 1;
			}
		} else if (what == 8) {
			r = vd_image_sync_io(s, VD_IO_FLUSH, NULL, 0, 0);
		} else {
			/* read back and compare with the model */
			uint8_t *m = xbuf(len);

			r = vd_image_sync_io(s, VD_IO_READ, buf, len, off);
			if (pread(fd, m, len, (off_t)off) != (ssize_t)len) {
				ret = 1;
			}
			if (r == (int64_t)len && memcmp(m, buf, len) != 0) {
				fprintf(stderr,
					"op %" PRIu64 ": mismatch at %" PRIu64 "+%" PRIu64 "\n", i,
					off, len);
				ret = 1;
			}
			free(m);
		}
		if (r < 0) {
			fprintf(stderr, "op %" PRIu64 " (%u at %" PRIu64 "+%" PRIu64 "): %s\n", i,
				what, off, len, strerror((int)-r));
			ret = 1;
		}
	}
	close(fd);
	free(buf);
	free(zero);
	vd_image_sync_close(s);
	vd_image_close(img);
	return ret;
}

static int do_check(const char *path, bool repair)
{
	struct vd_image *img = open_img(path, !repair, NULL);
	struct vd_check_result res;
	struct vd_err err = { 0 };
	int ret = vd_image_check(img, repair, &res, &err);

	if (ret < 0) {
		fprintf(stderr, "check: %s\n", vd_err_msg(&err));
		vd_image_close(img);
		return 1;
	}
	printf("corruptions %" PRIu64 " leaks %" PRIu64 " fixed %" PRIu64 "/%" PRIu64
	       " allocated %" PRIu64 "/%" PRIu64 "%s%s\n",
	       res.corruptions, res.leaks, res.corruptions_fixed, res.leaks_fixed,
	       res.allocated_units, res.total_units, res.first_problem[0] ? ": " : "",
	       res.first_problem);
	vd_image_close(img);
	if (repair) {
		return res.corruptions != res.corruptions_fixed || res.leaks != res.leaks_fixed;
	}
	return res.corruptions || res.leaks;
}

static int do_map(const char *path)
{
	struct vd_image *img = open_img(path, true, NULL);
	uint64_t size = img->info.size_bytes;

	for (uint64_t off = 0; off < size;) {
		struct vd_block_status bs;
		int ret = vd_image_block_status(img, off, size - off, &bs);

		if (ret < 0) {
			fprintf(stderr, "block status: %s\n", strerror(-ret));
			vd_image_close(img);
			return 1;
		}
		printf("%" PRIu64 " %" PRIu64 " %u %s %s", off, bs.len_bytes, bs.depth,
		       (bs.flags & VD_BLOCK_ZERO) ? "zero" : "-",
		       (bs.flags & VD_BLOCK_DATA) ? "data" : "-");
		if (bs.host_offset_bytes != UINT64_MAX) {
			printf(" %" PRIu64, bs.host_offset_bytes);
		}
		printf("\n");
		off += bs.len_bytes;
	}
	vd_image_close(img);
	return 0;
}

static int do_info(const char *path)
{
	struct vd_image *img = open_img(path, true, NULL);
	struct vd_image_info *i = &img->info;

	printf("format %s %s size %" PRIu64 " cluster %u backing %s dirty %d corrupt %d\n",
	       i->format, i->subformat ? i->subformat : "-", i->size_bytes, i->cluster_bytes,
	       i->backing_file ? i->backing_file : "-", i->dirty, i->corrupt);
	vd_image_close(img);
	return 0;
}

static int do_resize(const char *path, uint64_t size)
{
	struct vd_image *img = open_img(path, false, NULL);
	struct vd_err err = { 0 };
	int ret = vd_image_resize(img, size, &err);

	if (ret < 0) {
		fprintf(stderr, "resize: %s\n", vd_err_msg(&err));
	}
	vd_image_close(img);
	return ret < 0;
}

static int do_snapshots(const char *path)
{
	struct vd_image *img = open_img(path, true, NULL);
	int n = vd_qcow2_snapshot_count(img);

	for (int i = 0; i < n; i++) {
		struct vd_qcow2_snapshot_info si;

		if (vd_qcow2_snapshot_get(img, (unsigned int)i, &si) == 0) {
			printf("%s %s %" PRIu64 "\n", si.id, si.name, si.size_bytes);
		}
	}
	vd_image_close(img);
	return n < 0;
}

int main(int argc, char **argv)
{
	if (argc < 3) {
		fprintf(stderr, "usage: qcow2-tool CMD IMG ...\n");
		return 2;
	}
	if (!strcmp(argv[1], "create") && argc >= 4) {
		return do_create(argc - 2, argv + 2);
	}
	if (!strcmp(argv[1], "dump") && argc == 4) {
		return do_dump(argv[2], argv[3], NULL);
	}
	if (!strcmp(argv[1], "readsnap") && argc == 5) {
		return do_dump(argv[2], argv[4], argv[3]);
	}
	if (!strcmp(argv[1], "pattern") && argc == 6) {
		return do_pattern(argv[2], tool_num(argv[3]), tool_num(argv[4]),
				  (int)tool_num(argv[5]));
	}
	if (!strcmp(argv[1], "write") && argc == 6) {
		return do_write(argv[2], VD_IO_WRITE, tool_num(argv[3]), tool_num(argv[4]),
				(int)tool_num(argv[5]));
	}
	if (!strcmp(argv[1], "crashwrite") && argc == 6) {
		crash = true;
		return do_write(argv[2], VD_IO_WRITE, tool_num(argv[3]), tool_num(argv[4]),
				(int)tool_num(argv[5]));
	}
	if (!strcmp(argv[1], "discard") && argc == 5) {
		return do_write(argv[2], VD_IO_DISCARD, tool_num(argv[3]), tool_num(argv[4]), 0);
	}
	if (!strcmp(argv[1], "random") && argc == 6) {
		return do_random(argv[2], argv[3], tool_num(argv[4]), tool_num(argv[5]));
	}
	if (!strcmp(argv[1], "check")) {
		return do_check(argv[2], argc > 3 && !strcmp(argv[3], "repair"));
	}
	if (!strcmp(argv[1], "map")) {
		return do_map(argv[2]);
	}
	if (!strcmp(argv[1], "info")) {
		return do_info(argv[2]);
	}
	if (!strcmp(argv[1], "resize") && argc == 4) {
		return do_resize(argv[2], tool_num(argv[3]));
	}
	if (!strcmp(argv[1], "snapshots")) {
		return do_snapshots(argv[2]);
	}
	fprintf(stderr, "unknown command %s\n", argv[1]);
	return 2;
}
