/*
 * qcow2-bench: the image engine alone, on one ioctx (io_uring, O_DIRECT),
 * with qemu-img bench's access pattern and options, so that the two engines
 * can be compared without vdisk's datapath (rings, grant copies, simguest)
 * in between. Not a test: bench/formats.sh runs it (BENCH_ENGINE=1).
 *
 *   qcow2-bench [-w] [-c COUNT] [-d DEPTH] [-s BYTES] [-S STEP] [-o OFFSET]
 *               [--flush-interval N] [--l2-cache-size BYTES] IMAGE
 *
 * Request i is at (OFFSET + i * STEP) mod (image size - BYTES) (as qemu-img
 * bench); with --flush-interval N a FLUSH is sent after every N requests
 * without draining (qemu-img bench --no-drain). Prints qemu-img bench's
 * "Run completed in X seconds." and the IOPS.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/compiler.h"
#include "image/image.h"
#include "io/io.h"
#include "tool-num.h"

struct slot {
	struct vd_io io;
	struct iovec iov;
	void *ctx;
	void *buf;
	bool busy;
};

static unsigned long long g_errors;
static unsigned int g_inflight;

static void done(struct vd_io *io, int64_t result)
{
	struct slot *sl = io->cb_arg;

	if (result < 0) {
		g_errors++;
	}
	sl->busy = false;
	g_inflight--;
}

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	static const struct option lo[] = { { "flush-interval", required_argument, NULL, 'F' },
					    { "l2-cache-size", required_argument, NULL, 'L' },
					    { NULL, 0, NULL, 0 } };
	struct vd_image_opts o = { .cache = VD_CACHE_DIRECT };
	uint64_t count = 75000, depth = 64, bs = 4096, step = 0, offset = 0, flush_every = 0;
	uint64_t issued = 0, since_flush = 0, size;
	struct vd_image_info info;
	struct vd_err err = { 0 };
	struct vd_image_queue *q;
	struct vd_image *img;
	struct vd_ioctx *ctx;
	struct slot *slots;
	bool write = false;
	double t0, t;
	int c;

	while ((c = getopt_long(argc, argv, "wc:d:s:S:o:", lo, NULL)) != -1) {
		switch (c) {
		case 'w':
			write = true;
			break;
		case 'c':
			count = tool_num(optarg);
			break;
		case 'd':
			depth = tool_num(optarg);
			break;
		case 's':
			bs = tool_num(optarg);
			break;
		case 'S':
			step = tool_num(optarg);
			break;
		case 'o':
			offset = tool_num(optarg);
			break;
		case 'F':
			flush_every = tool_num(optarg);
			break;
		case 'L':
			o.l2_cache_bytes = tool_num(optarg);
			break;
		default:
			return 2;
		}
	}
	if (optind + 1 != argc || depth == 0 || depth > 1024 || bs == 0 || bs > (64u << 20)) {
		fprintf(stderr, "usage: qcow2-bench [-w] [-c COUNT] [-d DEPTH] [-s BYTES] "
				"[-S STEP] [-o OFFSET] [--flush-interval N] "
				"[--l2-cache-size BYTES] IMAGE\n");
		return 2;
	}
	if (step == 0) {
		step = bs;
	}
	if (vd_image_open(argv[optind], &o, &img, &err) < 0 ||
	    vd_ioctx_create(256, &ctx, &err) < 0) {
		fprintf(stderr, "qcow2-bench: %s\n", vd_err_msg(&err));
		return 1;
	}
	if (vd_image_get_info(img, &info) < 0 || info.size_bytes <= bs) {
		fprintf(stderr, "qcow2-bench: image too small\n");
		return 1;
	}
	size = info.size_bytes;
	if (vd_image_queue_create(img, ctx, &q) < 0) {
		fprintf(stderr, "qcow2-bench: queue setup failed\n");
		return 1;
	}
	slots = calloc(depth + 1, sizeof(*slots));
	if (!slots) {
		return 1;
	}
	for (uint64_t i = 0; i <= depth; i++) {
		slots[i].ctx = calloc(1, vd_image_io_ctx_size(img) + 1);
		if (!slots[i].ctx || posix_memalign(&slots[i].buf, 4096, bs) != 0) {
			return 1;
		}
		memset(slots[i].buf, 0x5a, bs);
	}
	printf("Sending %llu %s requests, %llu bytes each, %llu in parallel (step %llu)\n",
	       (unsigned long long)count, write ? "write" : "read", (unsigned long long)bs,
	       (unsigned long long)depth, (unsigned long long)step);
	t0 = now();
	while (issued < count || g_inflight) {
		struct slot *fl = &slots[depth]; /* the FLUSH slot */

		if (flush_every && since_flush >= flush_every && !fl->busy) {
			memset(&fl->io, 0, sizeof(fl->io));
			fl->io.op = VD_IO_FLUSH;
			fl->io.cb = done;
			fl->io.cb_arg = fl;
			fl->io.driver_ctx = fl->ctx;
			fl->busy = true;
			g_inflight++;
			since_flush = 0;
			vd_image_submit(q, &fl->io);
		}
		for (uint64_t i = 0; i < depth && issued < count; i++) {
			struct slot *sl = &slots[i];

			if (sl->busy) {
				continue;
			}
			memset(&sl->io, 0, sizeof(sl->io));
			sl->iov.iov_base = sl->buf;
			sl->iov.iov_len = bs;
			sl->io.op = write ? VD_IO_WRITE : VD_IO_READ;
			sl->io.offset_bytes = (offset + issued * step) % (size - bs) / 512 * 512;
			sl->io.len_bytes = bs;
			sl->io.iov = &sl->iov;
			sl->io.iovcnt = 1;
			sl->io.cb = done;
			sl->io.cb_arg = sl;
			sl->io.driver_ctx = sl->ctx;
			sl->busy = true;
			g_inflight++;
			issued++;
			since_flush += write;
			vd_image_submit(q, &sl->io);
		}
		if (vd_ioctx_wait(ctx, 0) < 0) {
			break;
		}
	}
	t = now() - t0;
	printf("Run completed in %.3f seconds.\n", t);
	printf("IOPS: %.0f\n%llu errors\n", (double)count / t, g_errors);
	vd_image_queue_destroy(q);
	vd_ioctx_destroy(ctx);
	vd_image_close(img);
	for (uint64_t i = 0; i <= depth; i++) {
		free(slots[i].ctx);
		free(slots[i].buf);
	}
	free(slots);
	return g_errors ? 1 : 0;
}
