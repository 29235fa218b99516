/*
 * io-bench: 4 KiB random reads at queue depth 32 on each io backend, for
 * a fixed time, printing IOPS. Usage: io-bench [SECONDS] [DIR]
 * The file (64 MiB, filled with data so reads hit the disk rather than
 * holes) is created in DIR ($VDISK_BUILD_DIR or /var/tmp) and removed after.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/compiler.h"
#include "common/log.h"
#include "io/io.h"

#define FILE_BYTES (64u << 20)
#define BS         4096u
#define QD         32

struct bench {
	struct vd_file *f;
	struct vd_ioctx *ctx;
	uint64_t rng;
	uint64_t ios;
	uint64_t errors;
	bool stop;
	struct vd_file_req req[QD];
	struct iovec iov[QD];
};

static uint64_t rnd(struct bench *b)
{
	b->rng ^= b->rng << 13;
	b->rng ^= b->rng >> 7;
	b->rng ^= b->rng << 17;
	return b->rng;
}

static void issue(struct bench *b, struct vd_file_req *r);

static void done(struct vd_file_req *r, int64_t result)
{
	struct bench *b = r->cb_arg;

	if (result != BS) {
		b->errors++;
	}
	b->ios++;
	if (!b->stop) {
		issue(b, r);
	}
}

static void issue(struct bench *b, struct vd_file_req *r)
{
	r->op = VD_IO_READ;
	r->offset_bytes = (rnd(b) % (FILE_BYTES / BS)) * BS;
	r->len_bytes = BS;
	r->cb = done;
	r->cb_arg = b;
	vd_file_submit(b->f, b->ctx, r);
}

static int run(const char *backend, const char *path, enum vd_cache_mode cache, double seconds)
{
	struct vd_file_opts o = { .cache = cache, .size_bytes = FILE_BYTES };
	struct vd_err err = { 0 };
	struct bench *b = calloc(1, sizeof(*b));
	uint64_t t0, t1;
	void *bufs = NULL;
	int i, ret;

	if (!b || posix_memalign(&bufs, 4096, (size_t)QD * BS) != 0) {
		free(b);
		return -ENOMEM;
	}
	b->rng = 0x9e3779b97f4a7c15ull;
	ret = vd_file_open(backend, path, &o, &b->f, &err);
	if (ret < 0) {
		fprintf(stderr, "%s: %s\n", backend, vd_err_msg(&err));
		goto out;
	}
	ret = vd_ioctx_create(64, &b->ctx, &err);
	if (ret < 0) {
		fprintf(stderr, "%s: %s\n", backend, vd_err_msg(&err));
		goto out_close;
	}
	for (i = 0; i < QD; i++) {
		b->iov[i].iov_base = (char *)bufs + (size_t)i * BS;
		b->iov[i].iov_len = BS;
		b->req[i].iov = &b->iov[i];
		b->req[i].iovcnt = 1;
	}
	t0 = vd_now_ns();
	for (i = 0; i < QD; i++) {
		issue(b, &b->req[i]);
	}
	while (vd_now_ns() - t0 < (uint64_t)(seconds * 1e9)) {
		ret = vd_ioctx_wait(b->ctx, 100000000);
		if (ret < 0) {
			break;
		}
	}
	t1 = vd_now_ns();
	b->stop = true;
	while (vd_ioctx_inflight(b->ctx) > 0) {
		if (vd_ioctx_wait(b->ctx, 100000000) < 0) {
			break;
		}
	}
	printf("%-6s cache=%-9s direct=%d  IOPS: %.0f  errors: %llu\n", backend,
	       cache == VD_CACHE_DIRECT ? "direct" : "writeback", b->f->info.direct,
	       (double)b->ios / ((double)(t1 - t0) / 1e9), (unsigned long long)b->errors);
	ret = b->errors ? -EIO : 0;
	vd_ioctx_destroy(b->ctx);
out_close:
	vd_file_close(b->f);
out:
	free(bufs);
	free(b);
	return ret;
}

static int make_file(const char *path)
{
	char *buf = malloc(1u << 20);
	int fd, ret = 0;
	unsigned int i;

	if (!buf) {
		return -ENOMEM;
	}
	fd = open(path, O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0600);
	if (fd < 0) {
		free(buf);
		return -errno;
	}
	for (i = 0; i < FILE_BYTES >> 20 && ret == 0; i++) {
		memset(buf, (int)i + 1, 1u << 20);
		if (write(fd, buf, 1u << 20) != (ssize_t)(1u << 20)) {
			ret = -EIO;
		}
	}
	if (ret == 0 && fsync(fd) < 0) {
		ret = -errno;
	}
	close(fd);
	free(buf);
	return ret;
}

int main(int argc, char **argv)
{
	const char *dir = argc > 2 ? argv[2] : getenv("VDISK_BUILD_DIR");
	double seconds = 2.0;
	char path[4096];
	int failed = 0;

	if (argc > 1) {
		char *end;

		seconds = strtod(argv[1], &end);
		if (*end || seconds <= 0 || seconds > 3600) {
			fprintf(stderr, "usage: io-bench [SECONDS] [DIR]\n");
			return 2;
		}
	}
	if (!dir || !*dir) {
		dir = "/var/tmp";
	}
	snprintf(path, sizeof(path), "%s/vd-io-bench.%d", dir, (int)getpid());
	if (make_file(path) < 0) {
		fprintf(stderr, "cannot create %s\n", path);
		return 1;
	}
	printf("4 KiB random read, QD %d, %.1f s each, file %s\n", QD, seconds, path);
	failed |= run("uring", path, VD_CACHE_DIRECT, seconds) < 0;
	failed |= run("uring", path, VD_CACHE_WRITEBACK, seconds) < 0;
	failed |= run("sync", path, VD_CACHE_DIRECT, seconds) < 0;
	failed |= run("mem", NULL, VD_CACHE_DIRECT, seconds) < 0;
	failed |= run("null", NULL, VD_CACHE_DIRECT, seconds) < 0;
	unlink(path);
	return failed ? 1 : 0;
}
