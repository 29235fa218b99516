/*
 * The I/O engine: one thread per queue, each keeping up to iodepth
 * requests in flight on its ring. The issuer locks the byte range of every
 * read/write/discard it has in flight, so no two in-flight requests overlap
 * and the model (one generation per unit) is exact.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <xen/io/xenbus.h>

#include "common/log.h"
#include "sim/guest/guest-int.h"

#define STALL_NS   (30ull * 1000000000ull)
#define PICK_TRIES 4

enum pick { PICK_OK, PICK_BUSY, PICK_STOP };

struct range_lock {
	uint64_t start, end;
	bool used;
};

struct wl_shared {
	pthread_mutex_t lock;
	struct vd_front *f;
	struct vd_model *model;
	const struct vd_wl_params *p;
	uint64_t size_bytes;
	uint32_t align_bytes;   /* offsets of reads/writes */
	uint32_t discard_align; /* offsets and lengths of discards */
	uint8_t flush_op;       /* 0: no flush available */
	bool no_verify;         /* benchmark: writes carry no pattern */
	bool discard_ok;
	bool readonly;
	uint64_t rw_issued;
	uint64_t flush_pending;
	uint64_t discard_pending;
	uint64_t deadline_ns;
	uint64_t seq_off;
	uint32_t next_gen;
	bool stop;
	unsigned int running; /* queue threads still going (atomic) */
	struct range_lock *locks;
	unsigned int nr_locks;
};

struct wl_queue {
	struct wl_shared *sh;
	struct vd_fq *q;
	uint64_t rng;
	unsigned int inflight;
	struct vd_wl_stats st;
	pthread_t thread;
};

void vd_wl_params_from_opts(struct vd_wl_params *p, const struct vd_sg_opts *o)
{
	memset(p, 0, sizeof(*p));
	p->rw = o->rw;
	p->rwmix = o->rwmix;
	p->bs = o->bs;
	p->ios = o->ios;
	p->runtime_ns = o->runtime_s * 1000000000ull;
	p->flush_every = o->flush_every;
	p->discard_every = o->discard_every;
	p->seed = o->seed;
	p->iodepth = o->iodepth;
}

uint32_t vd_wl_model_unit(uint64_t bs, uint32_t sector_size, uint64_t size_bytes)
{
	if (sector_size >= 4096 || (bs % 4096 == 0 && size_bytes % 4096 == 0)) {
		return 4096;
	}
	return 512;
}

static uint64_t rng_next(uint64_t *s)
{
	/* xorshift64*: the seed decides every choice of the run */
	*s ^= *s >> 12;
	*s ^= *s << 25;
	*s ^= *s >> 27;
	return *s * 0x2545f4914f6cdd1dull;
}

/* ---- range locks (sh->lock held) ---- */

static int range_lock(struct wl_shared *sh, uint64_t start, uint64_t len)
{
	int free_idx = -1;

	for (unsigned int i = 0; i < sh->nr_locks; i++) {
		struct range_lock *l = &sh->locks[i];

		if (!l->used) {
			free_idx = free_idx < 0 ? (int)i : free_idx;
		} else if (start < l->end && l->start < start + len) {
			return -EBUSY;
		}
	}
	if (free_idx < 0) {
		return -EBUSY;
	}
	sh->locks[free_idx] = (struct range_lock){ start, start + len, true };
	return free_idx;
}

static void range_unlock(struct wl_shared *sh, int idx)
{
	if (idx < 0) {
		return;
	}
	pthread_mutex_lock(&sh->lock);
	sh->locks[idx].used = false;
	pthread_mutex_unlock(&sh->lock);
}

/* ---- picking the next request (sh->lock held) ---- */

static bool finished(struct wl_shared *sh)
{
	if (sh->stop) {
		return true;
	}
	if (sh->p->ios != 0) {
		return sh->rw_issued >= sh->p->ios;
	}
	return vd_now_ns() >= sh->deadline_ns;
}

static uint64_t random_offset(struct wl_queue *wq, uint64_t len, uint32_t align)
{
	uint64_t slots = (wq->sh->size_bytes - len) / align + 1;

	return (rng_next(&wq->rng) % slots) * align;
}

static enum pick pick_discard(struct wl_queue *wq, struct vd_gio *io)
{
	struct wl_shared *sh = wq->sh;
	uint64_t len = VD_ALIGN_UP(sh->p->bs, (uint64_t)sh->discard_align);
	int idx;

	if (len > sh->size_bytes) {
		sh->discard_pending--;
		return PICK_BUSY;
	}
	io->off_bytes = random_offset(wq, len, sh->discard_align);
	idx = range_lock(sh, io->off_bytes, len);
	if (idx < 0) {
		return PICK_BUSY;
	}
	sh->discard_pending--;
	io->op = BLKIF_OP_DISCARD;
	io->len_bytes = len;
	io->lock_idx = idx;
	return PICK_OK;
}

static uint8_t pick_rw_op(struct wl_queue *wq)
{
	const struct vd_wl_params *p = wq->sh->p;

	if (wq->sh->readonly) {
		return BLKIF_OP_READ;
	}
	switch (p->rw) {
	case VD_RW_RANDREAD:
	case VD_RW_READ:
		return BLKIF_OP_READ;
	case VD_RW_RANDWRITE:
	case VD_RW_WRITE:
		return BLKIF_OP_WRITE;
	default:
		return rng_next(&wq->rng) % 100 < p->rwmix ? BLKIF_OP_READ : BLKIF_OP_WRITE;
	}
}

static enum pick pick_rw(struct wl_queue *wq, struct vd_gio *io)
{
	struct wl_shared *sh = wq->sh;
	const struct vd_wl_params *p = sh->p;
	bool seq = p->rw == VD_RW_READ || p->rw == VD_RW_WRITE;
	int idx = -EBUSY;

	for (int i = 0; i < (seq ? 1 : PICK_TRIES) && idx < 0; i++) {
		if (seq) {
			if (sh->seq_off + p->bs > sh->size_bytes) {
				sh->seq_off = 0;
			}
			io->off_bytes = sh->seq_off;
		} else {
			io->off_bytes = random_offset(wq, p->bs, sh->align_bytes);
		}
		idx = range_lock(sh, io->off_bytes, p->bs);
	}
	if (idx < 0) {
		return PICK_BUSY;
	}
	if (seq) {
		sh->seq_off += p->bs;
	}
	io->op = pick_rw_op(wq);
	io->len_bytes = p->bs;
	io->lock_idx = idx;
	sh->rw_issued++;
	if (p->flush_every != 0 && sh->rw_issued % p->flush_every == 0 && sh->flush_op != 0) {
		sh->flush_pending++;
	}
	if (p->discard_every != 0 && sh->rw_issued % p->discard_every == 0 && sh->discard_ok) {
		sh->discard_pending++;
	}
	return PICK_OK;
}

static enum pick pick(struct wl_queue *wq, struct vd_gio *io)
{
	struct wl_shared *sh = wq->sh;
	enum pick r;

	memset(io, 0, sizeof(*io));
	io->lock_idx = -1;
	pthread_mutex_lock(&sh->lock);
	if (sh->flush_pending > 0) {
		sh->flush_pending--;
		io->op = sh->flush_op;
		r = PICK_OK;
	} else if (sh->discard_pending > 0 && pick_discard(wq, io) == PICK_OK) {
		r = PICK_OK;
	} else if (finished(sh)) {
		r = PICK_STOP;
	} else {
		r = pick_rw(wq, io);
	}
	if (r == PICK_OK && io->op != BLKIF_OP_READ && io->len_bytes != 0) {
		io->gen = sh->next_gen++;
	}
	pthread_mutex_unlock(&sh->lock);
	return r;
}

/* ---- completion ---- */

static void count_op(struct vd_wl_stats *st, const struct vd_gio *io)
{
	switch (io->op) {
	case BLKIF_OP_READ:
		st->reads++;
		st->bytes += io->len_bytes;
		break;
	case BLKIF_OP_WRITE:
		st->writes++;
		st->bytes += io->len_bytes;
		break;
	case BLKIF_OP_DISCARD:
		st->discards++;
		break;
	default:
		st->flushes++;
		break;
	}
}

static void update_model(struct wl_queue *wq, struct vd_slot *s)
{
	struct vd_model *m = wq->sh->model;
	struct vd_gio *io = &s->io;

	if (m == NULL || io->len_bytes == 0) {
		return;
	}
	if (io->status != BLKIF_RSP_OKAY) {
		if (io->op != BLKIF_OP_READ) {
			vd_model_set(m, io->off_bytes, io->len_bytes, VD_GEN_UNKNOWN);
		}
		return;
	}
	switch (io->op) {
	case BLKIF_OP_READ:
		wq->st.verify_errors += vd_model_verify(m, s->buf, io->off_bytes, io->len_bytes);
		break;
	case BLKIF_OP_WRITE:
		vd_model_set(m, io->off_bytes, io->len_bytes, io->gen);
		break;
	case BLKIF_OP_DISCARD:
		vd_model_set(m, io->off_bytes, io->len_bytes, VD_GEN_DISCARDED);
		break;
	default:
		break;
	}
}

static void io_done(void *arg, struct vd_fq *q, struct vd_slot *s)
{
	struct wl_queue *wq = arg;
	struct vd_gio *io = &s->io;

	vd_hist_add(&wq->st.lat, (vd_now_ns() - io->submit_ns) / 1000u);
	count_op(&wq->st, io);
	if (io->status != BLKIF_RSP_OKAY) {
		wq->st.io_errors++;
		vd_log_ratelimited(VD_LOG_ERR,
				   "q%u: op %u at 0x%" PRIx64 " len %" PRIu64
				   " failed with status %d",
				   q->idx, io->op, io->off_bytes, io->len_bytes, io->status);
	}
	update_model(wq, s);
	range_unlock(wq->sh, io->lock_idx);
	wq->inflight--;
	vd_fq_slot_put(q, s);
}

/* ---- the queue thread ---- */

static void fill_write(struct wl_queue *wq, struct vd_slot *s)
{
	for (uint64_t i = 0; i < s->io.len_bytes; i += VD_SECTOR_SIZE) {
		vd_sector_fill(s->buf + i, s->io.off_bytes + i, s->io.gen, wq->sh->p->seed);
	}
}

static void fatal(struct wl_queue *wq, const char *why)
{
	vd_log(VD_LOG_ERR, "q%u: %s; %u request(s) lost", wq->q->idx, why, wq->inflight);
	wq->st.io_errors += wq->inflight;
	pthread_mutex_lock(&wq->sh->lock);
	wq->sh->stop = true;
	pthread_mutex_unlock(&wq->sh->lock);
}

/* Fill the ring; returns true when the workload has nothing more to issue. */
static bool issue(struct wl_queue *wq)
{
	struct vd_slot *s;

	while ((s = vd_fq_slot_get(wq->q)) != NULL) {
		enum pick r = pick(wq, &s->io);
		int rc;

		if (r != PICK_OK) {
			vd_fq_slot_put(wq->q, s);
			return r == PICK_STOP;
		}
		if (s->io.op == BLKIF_OP_WRITE && !wq->sh->no_verify) {
			fill_write(wq, s);
		}
		rc = vd_fq_submit(wq->q, s);
		if (rc < 0) {
			range_unlock(wq->sh, s->io.lock_idx);
			vd_fq_slot_put(wq->q, s);
			wq->st.io_errors++;
			fatal(wq, "cannot submit");
			return true;
		}
		wq->inflight++;
	}
	return false;
}

static void *queue_main(void *arg)
{
	struct wl_queue *wq = arg;
	uint64_t last_progress = vd_now_ns();
	bool done = false;

	for (;;) {
		int n;

		if (!done) {
			done = issue(wq);
		}
		(void)vd_fq_kick(wq->q);
		if (done && wq->inflight == 0) {
			break;
		}
		n = vd_fq_reap(wq->q, io_done, wq);
		if (n < 0) {
			fatal(wq, "the backend broke the ring protocol");
			break;
		}
		if (n > 0 || wq->inflight == 0) {
			last_progress = vd_now_ns();
			if (n == 0) {
				usleep(50); /* everything we could pick was locked */
			}
			continue;
		}
		(void)vd_fq_wait(wq->q, 100);
		if (vd_now_ns() - last_progress > STALL_NS) {
			fatal(wq, "no response for 30 s");
			break;
		}
	}
	wq->st.unknown_ids = wq->q->unknown_ids;
	__atomic_sub_fetch(&wq->sh->running, 1, __ATOMIC_RELEASE);
	return NULL;
}

/*
 * While the queues run, follow the backend's state as blkfront does: once
 * the toolstack unplugs the disk (backend Closing or Closed, or its
 * directory gone), issue nothing new and let what is in flight finish.
 */
static bool watch_backend(struct wl_shared *sh, struct vd_front *f)
{
	bool unplugged = false;

	while (__atomic_load_n(&sh->running, __ATOMIC_ACQUIRE) > 0) {
		int state = XenbusStateConnected;
		int rc = vd_front_read_state(f, f->be_path, &state);

		if (!unplugged &&
		    (rc == -ENOENT || state == XenbusStateClosing || state == XenbusStateClosed)) {
			unplugged = true;
			pthread_mutex_lock(&sh->lock);
			sh->stop = true;
			pthread_mutex_unlock(&sh->lock);
		}
		usleep(20000);
	}
	return unplugged;
}

static int check_params(struct vd_front *f, const struct vd_wl_params *p, uint64_t size)
{
	if (p->bs == 0 || p->bs % f->feat.sector_size != 0) {
		vd_log(VD_LOG_ERR, "bs %" PRIu64 " is not a multiple of the sector size %u", p->bs,
		       f->feat.sector_size);
		return -EINVAL;
	}
	if (p->bs > (uint64_t)f->io_pages * VD_PAGE_SIZE) {
		vd_log(VD_LOG_ERR, "bs %" PRIu64 " is above what the backend allows (%u bytes%s)",
		       p->bs, f->io_pages * VD_PAGE_SIZE,
		       f->max_segs > BLKIF_MAX_SEGMENTS_PER_REQUEST ? "" : ", no indirect");
		return -EINVAL;
	}
	if (p->bs > size) {
		vd_log(VD_LOG_ERR, "bs %" PRIu64 " is larger than the disk", p->bs);
		return -EINVAL;
	}
	return 0;
}

static void shared_init(struct wl_shared *sh, struct vd_front *f, struct vd_model *model,
			const struct vd_wl_params *p)
{
	memset(sh, 0, sizeof(*sh));
	pthread_mutex_init(&sh->lock, NULL);
	sh->f = f;
	sh->model = model;
	sh->p = p;
	sh->no_verify = f->opts->no_verify;
	sh->size_bytes = f->feat.sectors * VD_SECTOR_SIZE;
	sh->align_bytes = model != NULL
				  ? model->unit_bytes
				  : vd_wl_model_unit(p->bs, f->feat.sector_size, sh->size_bytes);
	sh->align_bytes = VD_MAX(sh->align_bytes, f->feat.sector_size);
	sh->discard_align = VD_MAX(sh->align_bytes, f->feat.discard_granularity);
	sh->readonly = f->feat.readonly;
	sh->discard_ok = f->feat.discard && !f->feat.readonly &&
			 (sh->discard_align & (sh->discard_align - 1)) == 0;
	sh->flush_op = f->feat.flush ? BLKIF_OP_FLUSH_DISKCACHE
				     : (f->feat.barrier ? BLKIF_OP_WRITE_BARRIER : 0);
	if (f->feat.readonly) {
		sh->flush_op = 0; /* a flush is a write to a read-only VBD */
	}
	sh->deadline_ns = vd_now_ns() + p->runtime_ns;
	sh->next_gen = VD_GEN_FIRST;
	if (model != NULL) {
		/* generations must grow across runs on the same model */
		for (uint64_t u = 0; u < model->nr_units; u++) {
			if (model->gen[u] != VD_GEN_UNKNOWN && model->gen[u] >= sh->next_gen) {
				sh->next_gen = model->gen[u] + 1;
			}
		}
	}
}

int vd_wl_run(struct vd_front *f, struct vd_model *model, const struct vd_wl_params *p,
	      struct vd_wl_result *res)
{
	struct wl_queue wq[VD_SG_MAX_QUEUES];
	struct wl_shared sh;
	uint64_t start;
	unsigned int started = 0;
	int rc;

	memset(res, 0, sizeof(*res));
	shared_init(&sh, f, model, p);
	rc = check_params(f, p, sh.size_bytes);
	if (rc < 0) {
		goto out;
	}
	sh.nr_locks = f->nr_queues * f->iodepth;
	sh.locks = calloc(sh.nr_locks, sizeof(*sh.locks));
	if (sh.locks == NULL) {
		rc = -ENOMEM;
		goto out;
	}
	start = vd_now_ns();
	for (unsigned int i = 0; i < f->nr_queues; i++) {
		memset(&wq[i], 0, sizeof(wq[i]));
		wq[i].sh = &sh;
		wq[i].q = f->q[i];
		wq[i].rng = (p->seed + 1) * 0x9e3779b97f4a7c15ull + i * 0x632be59bd9b4e019ull;
		wq[i].rng |= 1;
		f->q[i]->unknown_ids = 0;
		__atomic_add_fetch(&sh.running, 1, __ATOMIC_RELAXED);
		rc = -pthread_create(&wq[i].thread, NULL, queue_main, &wq[i]);
		if (rc < 0) {
			__atomic_sub_fetch(&sh.running, 1, __ATOMIC_RELAXED);
			pthread_mutex_lock(&sh.lock);
			sh.stop = true;
			pthread_mutex_unlock(&sh.lock);
			break;
		}
		started++;
	}
	res->unplugged = watch_backend(&sh, f);
	for (unsigned int i = 0; i < started; i++) {
		pthread_join(wq[i].thread, NULL);
		res->st.reads += wq[i].st.reads;
		res->st.writes += wq[i].st.writes;
		res->st.flushes += wq[i].st.flushes;
		res->st.discards += wq[i].st.discards;
		res->st.bytes += wq[i].st.bytes;
		res->st.io_errors += wq[i].st.io_errors;
		res->st.verify_errors += wq[i].st.verify_errors;
		res->st.unknown_ids += wq[i].st.unknown_ids;
		vd_hist_merge(&res->st.lat, &wq[i].st.lat);
	}
	res->elapsed_ns = vd_now_ns() - start;
out:
	free(sh.locks);
	pthread_mutex_destroy(&sh.lock);
	return rc;
}

void vd_wl_print(const struct vd_wl_result *r, const struct vd_wl_params *p, bool json)
{
	const struct vd_wl_stats *st = &r->st;
	uint64_t ops = st->reads + st->writes + st->flushes + st->discards;
	double secs = r->elapsed_ns > 0 ? (double)r->elapsed_ns / 1e9 : 1e-9;
	uint64_t iops = (uint64_t)((double)ops / secs);
	double mbps = (double)st->bytes / secs / 1e6;
	uint64_t p50 = vd_hist_percentile(&st->lat, 50.0);
	uint64_t p99 = vd_hist_percentile(&st->lat, 99.0);
	uint64_t io_errors = st->io_errors + st->unknown_ids;

	if (json) {
		printf("{\"ops\": %" PRIu64 ", \"reads\": %" PRIu64 ", \"writes\": %" PRIu64
		       ", \"flushes\": %" PRIu64 ", \"discards\": %" PRIu64 ", \"bytes\": %" PRIu64
		       ", \"seconds\": %.3f, \"iops\": %" PRIu64
		       ", \"mbps\": %.2f, \"lat_p50_us\": %" PRIu64 ", \"lat_p99_us\": %" PRIu64
		       ", \"verification_errors\": %" PRIu64 ", \"io_errors\": %" PRIu64
		       ", \"unknown_ids\": %" PRIu64 ", \"seed\": %" PRIu64 ", \"bs\": %" PRIu64
		       ", \"unplugged\": %s}\n",
		       ops, st->reads, st->writes, st->flushes, st->discards, st->bytes, secs, iops,
		       mbps, p50, p99, st->verify_errors, io_errors, st->unknown_ids, p->seed,
		       p->bs, r->unplugged ? "true" : "false");
		return;
	}
	printf("ops: %" PRIu64 " (reads %" PRIu64 ", writes %" PRIu64 ", flushes %" PRIu64
	       ", discards %" PRIu64 ") in %.3f s\n",
	       ops, st->reads, st->writes, st->flushes, st->discards, secs);
	printf("IOPS: %" PRIu64 "\n", iops);
	printf("MB/s: %.2f\n", mbps);
	printf("lat p50: %" PRIu64 " us p99: %" PRIu64 " us\n", p50, p99);
	printf("%" PRIu64 " verification errors\n", st->verify_errors);
	printf("%" PRIu64 " I/O errors\n", io_errors);
	if (r->unplugged) {
		printf("backend closing: workload stopped early, in-flight I/O completed\n");
	}
}
