/*
 * model-crash FORMAT: crash consistency of an image format against a flat
 * model of the disk.
 *
 * Each cut: open the image through the fault io backend, run a seeded
 * random workload of writes, discards and flushes, cut the power (all or
 * a random subset of the unflushed sectors is lost), reopen, check/repair
 * when the format has metadata, then verify every sector:
 *  - it holds its content as of the last completed flush, or
 *  - the content of a write (or the zeroes of a discard) issued after it.
 * A write acknowledged before the last completed flush therefore reads back
 * exactly. The image then ages: the next cut continues on it; every
 * IMAGE_CYCLE cuts a new image is made (for vhd/qcow2 every other one has
 * a raw backing file with its own content).
 *
 * qcow2 also runs out of space: in one cut of three the disk fills at a
 * random point (the fault backend's cap, anywhere in the file: in-place
 * metadata writes past it fail too) and empties later. A write or
 * discard that fails is read back at once: each sector holds its old
 * content or the new one (that part landed), nothing else. FLUSHes may fail
 * meanwhile (the model then keeps the log); once space returns the live
 * image must pass check with no leak and no corruption.
 *
 * Environment: VD_SEED (base seed, decimal or 0x hex), VD_MODEL_CUTS
 * (number of cuts, default 1000), VD_MODEL_BUDGET (seconds, default 40:
 * a slow machine stops early, saying how many cuts it made), TMPDIR. A failure prints the seed and cut index; the
 * same VD_SEED and VD_MODEL_CUTS replay it exactly.
 * Exit: 0 pass, 1 fail, 77 the format is not built in.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/compiler.h"
#include "common/log.h"
#include "image/image.h"
#include "io/fault.h"

#define SECTOR       512u
#define IMG_BYTES    (4u << 20)
#define NSEC         (IMG_BYTES / SECTOR)
#define MAX_OPS      48
#define MAX_WRITE    64 /* sectors */
#define IMAGE_CYCLE  50
#define MAGIC        0x7664736bu /* "vdsk" */
#define DEFAULT_CUTS 1000

struct logent {
	uint32_t id; /* 0: discard */
	uint32_t first, nsec;
};

struct model {
	const char *format;
	char dir[256];
	char path[300];
	char backing[300];
	bool with_backing;
	uint64_t rng;
	uint32_t next_id;
	uint32_t durable[NSEC];
	struct logent log[MAX_OPS * 4]; /* failed ops may log a few runs */
	unsigned int nlog;
	bool has_check;
	bool discard;
	bool enospc;           /* the disk fills now and then (qcow2) */
	struct vd_file *fault; /* the image's fault file while open */
	unsigned char *buf;
	/* stats */
	uint64_t writes, flushes, discards, reverted, repaired;
	uint64_t enospc_ops, enospc_flushes;
};

static uint64_t rnd(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ull);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static uint64_t below(uint64_t *s, uint64_t n)
{
	return rnd(s) % n;
}

/* Sector content for write id at sector lba: a header plus a pattern. */
static void fill(unsigned char *p, uint32_t id, uint32_t lba)
{
	uint64_t s = ((uint64_t)id << 32) | lba;
	size_t i;

	memcpy(p, &(uint32_t){ MAGIC }, 4);
	memcpy(p + 4, &id, 4);
	memcpy(p + 8, &lba, 4);
	for (i = 16; i < SECTOR; i += 8) {
		uint64_t v = rnd(&s);

		memcpy(p + i, &v, 8);
	}
	memset(p + 12, 0, 4);
}

/* The id a sector holds: 0 for zeroes, UINT32_MAX for anything else unexpected. */
static uint32_t decode(const unsigned char *p, uint32_t lba)
{
	unsigned char want[SECTOR];
	uint32_t magic, id, l;
	size_t i;

	for (i = 0; i < SECTOR && p[i] == 0; i++) {
	}
	if (i == SECTOR) {
		return 0;
	}
	memcpy(&magic, p, 4);
	memcpy(&id, p + 4, 4);
	memcpy(&l, p + 8, 4);
	if (magic != MAGIC || l != lba || id == 0) {
		return UINT32_MAX;
	}
	fill(want, id, lba);
	return memcmp(want, p, SECTOR) == 0 ? id : UINT32_MAX;
}

static int open_img(struct model *m, bool fault, struct vd_image **img, struct vd_err *err)
{
	char fpath[320];
	struct vd_image_opts o = {
		.format = m->format,
		.io_backend = fault ? "fault" : "sync",
		.cache = VD_CACHE_WRITEBACK,
		/* "sync:PATH" is no directory: name the tree of the backing file */
		.backing.root_dir = m->dir,
	};

	snprintf(fpath, sizeof(fpath), "%s%s", fault ? "sync:" : "", m->path);
	return vd_image_open(fpath, &o, img, err);
}

/* Write the pattern of a fresh id over [first, first+nsec) of s. */
static int64_t do_write(struct vd_image_sync *s, unsigned char *buf, uint32_t id, uint32_t first,
			uint32_t nsec)
{
	uint32_t i;

	for (i = 0; i < nsec; i++) {
		fill(buf + (size_t)i * SECTOR, id, first + i);
	}
	return vd_image_sync_io(s, VD_IO_WRITE, buf, (uint64_t)nsec * SECTOR,
				(uint64_t)first * SECTOR);
}

static void apply_log(struct model *m)
{
	unsigned int i;
	uint32_t j;

	for (i = 0; i < m->nlog; i++) {
		for (j = 0; j < m->log[i].nsec; j++) {
			m->durable[m->log[i].first + j] = m->log[i].id;
		}
	}
	m->nlog = 0;
}

/* A new image (and backing file), whose content the model then knows. */
static int new_image(struct model *m, bool with_backing)
{
	struct vd_image_create_opts co = { .size_bytes = IMG_BYTES,
					   .flags = VD_IMAGE_CREATE_OVERWRITE };
	struct vd_err err = { 0 };
	int ret;

	memset(m->durable, 0, sizeof(m->durable));
	m->nlog = 0;
	m->with_backing = with_backing;
	if (with_backing) {
		struct vd_image_opts bo = { .format = "raw",
					    .io_backend = "sync",
					    .cache = VD_CACHE_WRITEBACK };
		struct vd_image_sync *s;
		struct vd_image *b;
		uint32_t k;

		ret = vd_image_create_ex(m->backing, "raw", IMG_BYTES, VD_IMAGE_CREATE_OVERWRITE,
					 &err);
		if (ret < 0 || vd_image_open(m->backing, &bo, &b, &err) < 0) {
			fprintf(stderr, "model: backing: %s\n", vd_err_msg(&err));
			return -1;
		}
		if (vd_image_sync_open(b, &s, &err) < 0) {
			vd_image_close(b);
			return -1;
		}
		for (k = 0; k < 16; k++) {
			uint32_t first = (uint32_t)below(&m->rng, NSEC - MAX_WRITE);
			uint32_t n = 1 + (uint32_t)below(&m->rng, MAX_WRITE);
			uint32_t id = m->next_id++, j;

			if (do_write(s, m->buf, id, first, n) < 0) {
				vd_image_sync_close(s);
				vd_image_close(b);
				return -1;
			}
			for (j = 0; j < n; j++) {
				m->durable[first + j] = id;
			}
		}
		vd_image_sync_io(s, VD_IO_FLUSH, NULL, 0, 0);
		vd_image_sync_close(s);
		vd_image_close(b);
		co.backing_file = m->backing;
		co.backing_format = "raw";
	}
	ret = vd_image_create_opts(m->path, m->format, &co, &err);
	if (ret < 0) {
		fprintf(stderr, "model: creating a %s image%s: %s\n", m->format,
			with_backing ? " with a backing file" : "", vd_err_msg(&err));
		return ret;
	}
	return 0;
}

static bool acceptable(const struct model *m, uint32_t sector, uint32_t got)
{
	unsigned int i;

	if (got == m->durable[sector]) {
		return true;
	}
	for (i = 0; i < m->nlog; i++) {
		const struct logent *e = &m->log[i];

		if (sector >= e->first && sector < e->first + e->nsec && e->id == got) {
			return true;
		}
	}
	return false;
}

/*
 * A write (id) or discard (id 0) of [first, first+n) failed: read it back;
 * each sector holds what it held or the new content (logged: it landed).
 */
static int after_failed_op(struct model *m, struct vd_image_sync *s, uint32_t id, uint32_t first,
			   uint32_t n)
{
	int64_t r = vd_image_sync_io(s, VD_IO_READ, m->buf, (uint64_t)n * SECTOR,
				     (uint64_t)first * SECTOR);
	uint32_t j;

	if (r < 0) {
		fprintf(stderr, "model: reading back a failed op: %s\n", strerror((int)-r));
		return -1;
	}
	for (j = 0; j < n; j++) {
		uint32_t got = decode(m->buf + (size_t)j * SECTOR, first + j);

		/*
		 * The failed op's own content landed: log it as the newest, even
		 * where it equals an older value (the durable one, say, which a
		 * later write in the log would otherwise win over at the flush).
		 */
		if (got == id) {
			struct logent *e = m->nlog ? &m->log[m->nlog - 1] : NULL;

			if (e && e->id == id && e->first + e->nsec == first + j) {
				e->nsec++;
			} else if (m->nlog < VD_ARRAY_SIZE(m->log)) {
				m->log[m->nlog++] = (struct logent){ id, first + j, 1 };
			} else {
				fprintf(stderr, "model: log full\n");
				return -1;
			}
		} else if (!acceptable(m, first + j, got)) {
			fprintf(stderr, "model: sector %u holds %" PRIu32 " after a failed op\n",
				first + j, got);
			return -1;
		}
	}
	m->enospc_ops++;
	return 0;
}

/* Fill the disk (cap anywhere in the file) or empty it (then check live). */
static int set_full(struct model *m, struct vd_image *img, bool full)
{
	struct vd_check_result res;
	struct vd_err err = { 0 };
	struct stat st;
	uint64_t cap = 0;

	if (full) {
		if (stat(m->path, &st) < 0) {
			return -1;
		}
		/* anywhere: past the data, or below the metadata (its write-back fails) */
		cap = below(&m->rng, (uint64_t)st.st_size + 1);
		cap = VD_ALIGN_UP(cap, (uint64_t)SECTOR);
	}
	if (vd_fault_set_full(m->fault, cap) < 0) {
		return -1;
	}
	if (full) {
		return 0;
	}
	if (vd_image_check(img, false, &res, &err) < 0 || res.corruptions || res.leaks) {
		fprintf(stderr,
			"model: space returned, the live image fails check: %" PRIu64
			" corruptions, %" PRIu64 " leaks (%s)\n",
			res.corruptions, res.leaks, vd_err_msg(&err));
		return -1;
	}
	return 0;
}

/* The seeded random ops of one cut on the open image. 0 ok, -1 failed. */
static int workload(struct model *m, struct vd_image *img, struct vd_image_sync *s)
{
	unsigned int nops = 1 + (unsigned int)below(&m->rng, MAX_OPS), i;
	unsigned int full_at = UINT32_MAX, empty_at = UINT32_MAX;
	int64_t r;

	m->fault = vd_fault_lookup(m->path);
	if (m->enospc && m->fault && below(&m->rng, 3) == 0) {
		full_at = (unsigned int)below(&m->rng, nops);
		empty_at = full_at + 1 + (unsigned int)below(&m->rng, nops);
	}
	for (i = 0; i < nops; i++) {
		unsigned int kind = (unsigned int)below(&m->rng, 10);
		bool full = full_at <= i && i < empty_at;
		uint32_t n, first;

		if ((i == full_at || i == empty_at) && set_full(m, img, i == full_at) < 0) {
			return -1;
		}
		n = 1 + (uint32_t)below(&m->rng, MAX_WRITE);
		first = (uint32_t)below(&m->rng, NSEC - n + 1);
		if (kind < 2) {
			r = vd_image_sync_io(s, VD_IO_FLUSH, NULL, 0, 0);
			if (r < 0 && full) {
				m->enospc_flushes++; /* the log stays: not durable */
				continue;
			}
			if (r < 0) {
				fprintf(stderr, "model: flush: %s\n", strerror((int)-r));
				return -1;
			}
			apply_log(m);
			m->flushes++;
			continue;
		}
		if (kind == 2 && m->discard) {
			/* discard granularity: whole 4 KiB blocks keep every format honest */
			first &= ~7u;
			n = VD_ALIGN_UP(n, 8u);
			if (first + n > NSEC) {
				n = NSEC - first;
			}
			r = vd_image_sync_io(s, VD_IO_DISCARD, NULL, (uint64_t)n * SECTOR,
					     (uint64_t)first * SECTOR);
			if (r == -EOPNOTSUPP) {
				m->discard = false;
				continue;
			}
			if (r == -ENOSPC && full) {
				if (after_failed_op(m, s, 0, first, n) < 0) {
					return -1;
				}
				continue;
			}
			if (r < 0) {
				fprintf(stderr, "model: discard: %s\n", strerror((int)-r));
				return -1;
			}
			m->log[m->nlog++] = (struct logent){ 0, first, n };
			m->discards++;
			continue;
		}
		r = do_write(s, m->buf, m->next_id, first, n);
		if (r == -ENOSPC && full) {
			if (after_failed_op(m, s, m->next_id++, first, n) < 0) {
				return -1;
			}
			continue;
		}
		if (r < 0) {
			fprintf(stderr, "model: write: %s\n", strerror((int)-r));
			return -1;
		}
		m->log[m->nlog++] = (struct logent){ m->next_id++, first, n };
		m->writes++;
	}
	if (full_at < nops && empty_at >= nops && set_full(m, img, false) < 0) {
		return -1;
	}
	return 0;
}

/* One workload + power cut + recovery + verification. 0 ok, -1 failed. */
static int one_cut(struct model *m, uint64_t seed)
{
	struct vd_image *img = NULL;
	struct vd_image_sync *s = NULL;
	struct vd_check_result res;
	struct vd_image_info info;
	struct vd_err err = { 0 };
	enum vd_fault_cut_mode mode;
	int64_t r;
	uint32_t sec;

	m->rng = seed;
	if (open_img(m, true, &img, &err) < 0 || vd_image_sync_open(img, &s, &err) < 0) {
		fprintf(stderr, "model: opening %s: %s\n", m->path, vd_err_msg(&err));
		vd_image_close(img);
		return -1;
	}
	vd_image_get_info(img, &info);
	m->discard = info.discard;
	if (workload(m, img, s) < 0) {
		goto fail;
	}
	/* power cut, then whatever the driver does on close hits a dead disk */
	mode = below(&m->rng, 2) ? VD_FAULT_CUT_RANDOM : VD_FAULT_CUT_ALL;
	r = vd_fault_cut_power_all(rnd(&m->rng), mode);
	if (r < 0) {
		fprintf(stderr, "model: cutting power: %s\n", strerror((int)-r));
		goto fail;
	}
	m->reverted += (uint64_t)r;
	vd_image_sync_close(s);
	vd_image_close(img);
	s = NULL;
	img = NULL;

	/* recovery */
	if (open_img(m, false, &img, &err) < 0) {
		fprintf(stderr, "model: reopening after the cut: %s\n", vd_err_msg(&err));
		return -1;
	}
	if (m->has_check) {
		r = vd_image_check(img, true, &res, &err);
		if (r == -EOPNOTSUPP) {
			m->has_check = false;
		} else if (r < 0) {
			fprintf(stderr, "model: check --repair: %s\n", vd_err_msg(&err));
			goto fail;
		} else {
			m->repaired += res.corruptions_fixed + res.leaks_fixed;
			r = vd_image_check(img, false, &res, &err);
			if (r < 0 || res.corruptions || res.leaks) {
				fprintf(stderr,
					"model: the image does not pass check after repair: "
					"%" PRIu64 " corruptions, %" PRIu64 " leaks (%s)\n",
					res.corruptions, res.leaks,
					r < 0 ? vd_err_msg(&err) : res.first_problem);
				goto fail;
			}
		}
	}
	if (vd_image_sync_open(img, &s, &err) < 0) {
		fprintf(stderr, "model: %s\n", vd_err_msg(&err));
		goto fail;
	}
	for (sec = 0; sec < NSEC; sec += MAX_WRITE) {
		uint32_t j;

		r = vd_image_sync_io(s, VD_IO_READ, m->buf, (uint64_t)MAX_WRITE * SECTOR,
				     (uint64_t)sec * SECTOR);
		if (r < 0) {
			fprintf(stderr, "model: read at sector %u: %s\n", sec, strerror((int)-r));
			goto fail;
		}
		for (j = 0; j < MAX_WRITE; j++) {
			uint32_t got = decode(m->buf + (size_t)j * SECTOR, sec + j);

			if (!acceptable(m, sec + j, got)) {
				fprintf(stderr,
					"model: sector %u holds %s%" PRIu32 ", expected %" PRIu32
					" (flushed) or a later write to it (%u ops since the flush, "
					"cut mode %s)\n",
					sec + j, got == UINT32_MAX ? "garbage " : "write ",
					got == UINT32_MAX ? 0 : got, m->durable[sec + j], m->nlog,
					mode == VD_FAULT_CUT_ALL ? "all" : "random");
				goto fail;
			}
			m->durable[sec + j] = got;
		}
	}
	m->nlog = 0;
	vd_image_sync_close(s);
	vd_image_close(img);
	return 0;

fail:
	vd_image_sync_close(s);
	vd_image_close(img);
	return -1;
}

static uint64_t env_u64(const char *name, uint64_t dflt)
{
	const char *v = getenv(name);
	char *end;
	unsigned long long n;

	if (!v || !*v) {
		return dflt;
	}
	errno = 0;
	n = strtoull(v, &end, 0);
	if (errno || *end) {
		fprintf(stderr, "model: ignoring bad %s='%s'\n", name, v);
		return dflt;
	}
	return n;
}

int main(int argc, char **argv)
{
	static struct model m;
	struct timespec ts;
	uint64_t base_seed, cuts, c, cycle = 0, budget, start;
	const char *tmp = getenv("TMPDIR");
	void *buf;
	int rc = 0;

	if (argc != 2) {
		fprintf(stderr, "usage: model-crash FORMAT\n");
		return 2;
	}
	vd_log_set_level(VD_LOG_ERR);
	m.format = argv[1];
	clock_gettime(CLOCK_REALTIME, &ts);
	base_seed = env_u64("VD_SEED", (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 20) ^
					       (uint64_t)getpid());
	cuts = env_u64("VD_MODEL_CUTS", DEFAULT_CUTS);
	budget = env_u64("VD_MODEL_BUDGET", 40);
	snprintf(m.dir, sizeof(m.dir), "%s/vdisk-model-XXXXXX", tmp && *tmp ? tmp : "/tmp");
	if (!mkdtemp(m.dir)) {
		perror("model: mkdtemp");
		return 1;
	}
	snprintf(m.path, sizeof(m.path), "%s/image.%s", m.dir, m.format);
	snprintf(m.backing, sizeof(m.backing), "%s/backing.raw", m.dir);
	if (posix_memalign(&buf, 4096, (size_t)MAX_WRITE * SECTOR) != 0) {
		return 1;
	}
	m.buf = buf;
	m.rng = base_seed;
	m.next_id = 1;
	if (new_image(&m, false) < 0) {
		printf("SKIP: cannot create %s images in this build (driver not registered?)\n",
		       m.format);
		rc = 77;
		goto out;
	}
	m.has_check = true;
	m.enospc = strcmp(m.format, "qcow2") == 0;
	printf("model %s: seed 0x%" PRIx64 ", %" PRIu64 " cuts\n", m.format, base_seed, cuts);
	clock_gettime(CLOCK_MONOTONIC, &ts);
	start = (uint64_t)ts.tv_sec;
	for (c = 0; c < cuts; c++) {
		uint64_t seed = base_seed ^ (0x9e3779b97f4a7c15ull * (c + 1));

		if (c && c % IMAGE_CYCLE == 0) {
			bool backing = strcmp(m.format, "raw") != 0 && (++cycle & 1);

			m.rng = seed;
			if (new_image(&m, backing) < 0) {
				if (!backing) {
					rc = 1;
					break;
				}
				/* overlays not supported (yet): plain images only */
				if (new_image(&m, false) < 0) {
					rc = 1;
					break;
				}
			}
		}
		clock_gettime(CLOCK_MONOTONIC, &ts);
		if (budget && (uint64_t)ts.tv_sec - start >= budget) {
			printf("model %s: time budget of %" PRIu64 " s used up after %" PRIu64
			       " cuts\n",
			       m.format, budget, c);
			cuts = c;
			break;
		}
		if (one_cut(&m, seed) < 0) {
			fprintf(stderr,
				"model %s: FAILED at cut %" PRIu64 " (image %s a backing file); "
				"replay: VD_SEED=0x%" PRIx64 " VD_MODEL_CUTS=%" PRIu64 "\n",
				m.format, c, m.with_backing ? "with" : "without", base_seed, c + 1);
			rc = 1;
			break;
		}
	}
	if (rc == 0) {
		printf("model %s: %" PRIu64 " cuts ok: %" PRIu64 " writes, %" PRIu64
		       " discards, %" PRIu64 " flushes, %" PRIu64 " sectors lost to cuts, %" PRIu64
		       " repairs%s\n",
		       m.format, cuts, m.writes, m.discards, m.flushes, m.reverted, m.repaired,
		       m.has_check ? "" : " (no check for this format)");
		if (m.enospc) {
			printf("model %s: %" PRIu64 " writes/discards and %" PRIu64
			       " flushes failed for lack of space\n",
			       m.format, m.enospc_ops, m.enospc_flushes);
		}
	}
out:
	unlink(m.path);
	unlink(m.backing);
	rmdir(m.dir);
	free(buf);
	return rc;
}
