/*
 * qcow2: the asynchronous metadata write-back of the owner thread.
 *
 * One job at a time. It takes its snapshot when it starts (see qcow2-int.h
 * for why that keeps the crash-safe order) and then runs its steps on the
 * owner's ioctx, each step's writes in parallel, each followed by an
 * fdatasync:
 *   RB  dirty refcount blocks (from the live blocks)
 *   RT  the refcount table, only when a block was added (after a sync of
 *       the blocks it points at)
 *   L2  the copies of the dirty L2 slices
 *   L1  the dirty L1 chunks
 * then it applies the frees that were pending when it started, releases
 * the slices and resumes its waiters. Requests that asked for a write-back
 * while a job ran wait for the next one, started as soon as this one ends.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "image/qcow2/qcow2-int.h"

enum {
	P_RB,
	P_RBF,
	P_RT,
	P_F1, /* data and refcounts durable before any L2 entry */
	P_L2,
	P_F2,
	P_L1,
	P_F3,
	P_DONE,
};

static void advance(struct vd_image *img);
static int begin(struct vd_image *img, struct qcow2_req *waiters);

static void set_err(struct qcow2_mflush *m, int err)
{
	if (m->err == 0) {
		m->err = err;
	}
}

static void io_done(struct vd_file_req *freq, int64_t result)
{
	struct qcow2_mf_io *x = vd_container_of(freq, struct qcow2_mf_io, freq);
	struct vd_image *img = x->img;
	struct qcow2_mflush *m = &qcow2_s(img)->mf;

	if (result < 0) {
		set_err(m, (int)result);
	} else if (freq->op != VD_IO_FLUSH && (uint64_t)result != freq->len_bytes) {
		set_err(m, -EIO);
	}
	if (--m->inflight == 0) {
		m->phase++;
		advance(img);
	}
}

/* One write (or FLUSH: buf NULL) of the job; O_DIRECT-unaligned ones synchronously. */
static void submit(struct vd_image *img, enum vd_io_op op, void *buf, uint64_t len, uint64_t off)
{
	struct qcow2_state *s = qcow2_s(img);
	struct qcow2_mflush *m = &s->mf;
	uint64_t lb = s->file->info.direct ? s->file->info.logical_block_bytes : 1;
	struct qcow2_mf_io *x;

	if (op == VD_IO_WRITE && (!VD_IS_ALIGNED(len, lb) || !VD_IS_ALIGNED(off, lb))) {
		/* e.g. 512-byte L2 slices on a 4 KiB-sector disk: read-modify-write */
		int ret = vd_qcow2_pwrite(s, buf, len, off);

		if (ret < 0) {
			set_err(m, ret);
		}
		return;
	}
	x = &m->io[m->nr_io++];
	memset(x, 0, sizeof(*x));
	x->img = img;
	x->freq.op = op;
	if (op != VD_IO_FLUSH) {
		x->iov.iov_base = buf;
		x->iov.iov_len = len;
		x->freq.iov = &x->iov;
		x->freq.iovcnt = 1;
		x->freq.offset_bytes = off;
		x->freq.len_bytes = len;
	}
	x->freq.cb = io_done;
	x->freq.cb_arg = x;
	m->inflight++;
	vd_file_submit(s->file, s->owner_ctx, &x->freq);
}

static void snapshot_free(struct qcow2_mflush *m)
{
	free(m->rb);
	free(m->rt_buf);
	free(m->wb);
	free(m->wb_buf);
	free(m->l1_buf);
	free(m->l1_first);
	free(m->io);
	m->rb = NULL;
	m->rt_buf = NULL;
	m->wb = NULL;
	m->wb_buf = NULL;
	m->l1_buf = NULL;
	m->l1_first = NULL;
	m->io = NULL;
	m->nr_rb = m->nr_wb = m->nr_l1 = m->nr_io = 0;
}

static bool l1_chunk_dirty(const struct qcow2_state *s, uint64_t first, uint64_t n)
{
	for (uint64_t i = first; i < first + n; i++) {
		if (s->l1_dirty[i]) {
			return true;
		}
	}
	return false;
}

static void kick_done(struct vd_file_req *freq, int64_t result)
{
	struct qcow2_mf_io *x = vd_container_of(freq, struct qcow2_mf_io, freq);
	struct qcow2_mflush *m = &qcow2_s(x->img)->mf;

	m->inflight = 0;
	advance(x->img);
}

/* Take the snapshot and start the steps. < 0: nothing started. */
static int start(struct vd_image *img)
{
	struct qcow2_state *s = qcow2_s(img);
	struct qcow2_mflush *m = &s->mf;
	bool l2 = s->nr_dirty_slices > 0, l1 = s->l1_any_dirty;
	bool refs = s->refcounts_dirty && !s->lazy_refcounts;
	uint64_t chunk = vd_qcow2_l1_chunk(s), nr_rb = 0, nr_l1 = 0;
	int ret;

	if (img->corrupt && (l1 || l2 || refs || s->nr_frees)) {
		return -EIO;
	}
	if (img->corrupt) {
		l1 = l2 = refs = false;
	}
	if (s->lazy_refcounts && (l1 || l2) && !s->dirty_set) {
		/* once per image: synchronous */
		ret = vd_qcow2_set_incompat(s, QCOW2_INCOMPAT_DIRTY, true);
		if (ret < 0) {
			return ret;
		}
		s->dirty_set = true;
	}
	for (uint64_t i = 0; refs && i < s->reftable_entries; i++) {
		nr_rb += s->refblock_dirty[i] && s->refblocks[i];
	}
	for (uint64_t f = 0; l1 && f < s->l1_size; f += chunk) {
		nr_l1 += l1_chunk_dirty(s, f, VD_MIN(chunk, s->l1_size - f));
	}
	m->rb = calloc(nr_rb + 1, sizeof(*m->rb));
	m->wb = calloc(s->nr_dirty_slices + 1u,
		       sizeof(*m->wb)); /* NOLINT(bugprone-sizeof-expression) */
	m->wb_buf = vd_qcow2_alloc_buf(l2 ? (size_t)s->nr_dirty_slices * s->slice_bytes : 1);
	m->l1_buf = vd_qcow2_alloc_buf(nr_l1 ? nr_l1 * chunk * 8 : 1);
	m->l1_first = calloc(nr_l1 + 1, sizeof(*m->l1_first));
	m->io = calloc(nr_rb + s->nr_dirty_slices + nr_l1 + 8, sizeof(*m->io));
	if (refs && s->reftable_dirty) {
		m->rt_buf = vd_qcow2_alloc_buf(s->reftable_entries * 8);
	}
	if (!m->rb || !m->wb || !m->wb_buf || !m->l1_buf || !m->l1_first || !m->io ||
	    (refs && s->reftable_dirty && !m->rt_buf)) {
		snapshot_free(m);
		return -ENOMEM;
	}
	/* refcount blocks: written from the live blocks (only 0 -> 1 meanwhile) */
	for (uint64_t i = 0; refs && i < s->reftable_entries; i++) {
		if (s->refblock_dirty[i] && s->refblocks[i]) {
			m->rb[m->nr_rb++] = i;
			s->refblock_dirty[i] = false;
		}
	}
	if (refs) {
		s->refcounts_dirty = false;
	}
	if (m->rt_buf) {
		vd_qcow2_reftable_encode(s, m->rt_buf);
		m->rt_off = s->reftable_offset;
		m->rt_bytes = s->reftable_entries * 8;
		s->reftable_dirty = false;
	}
	if (l2) {
		m->nr_wb = vd_qcow2_cache_snapshot(s, m->wb, m->wb_buf);
	}
	for (uint64_t f = 0; l1 && f < s->l1_size; f += chunk) {
		uint64_t n = VD_MIN(chunk, s->l1_size - f);
		uint8_t *p = m->l1_buf + (size_t)m->nr_l1 * chunk * 8;

		if (!l1_chunk_dirty(s, f, n)) {
			continue;
		}
		for (uint64_t i = 0; i < n; i++) {
			qcow2_put_be64(p + i * 8, s->l1[f + i]);
			s->l1_dirty[f + i] = false;
		}
		m->l1_first[m->nr_l1++] = f;
	}
	if (l1) {
		s->l1_any_dirty = false;
	}
	m->frees_snap = s->nr_frees;
	m->running = true;
	m->err = 0;
	m->phase = P_RB;
	/* the steps start from the ioctx: a job never ends inside its caller */
	m->inflight = 1;
	memset(&m->kick, 0, sizeof(m->kick));
	m->kick.freq.op = VD_IO_FLUSH;
	m->kick.freq.cb = kick_done;
	m->kick.img = img;
	vd_ioctx_complete(s->owner_ctx, &m->kick.freq, 0);
	return 0;
}

static void done(struct vd_image *img)
{
	struct qcow2_state *s = qcow2_s(img);
	struct qcow2_mflush *m = &s->mf;
	struct qcow2_req *w = m->waiters, *sw = s->slice_waiters;
	uint64_t chunk = vd_qcow2_l1_chunk(s);
	int err = m->err;

	vd_qcow2_cache_release(s, m->wb, m->nr_wb, err < 0);
	if (err < 0) {
		/* all of it again next time */
		for (uint32_t i = 0; i < m->nr_rb; i++) {
			s->refblock_dirty[m->rb[i]] = true;
			s->refcounts_dirty = true;
		}
		if (m->rt_buf) {
			s->reftable_dirty = true;
		}
		for (uint32_t c = 0; c < m->nr_l1; c++) {
			uint64_t f = m->l1_first[c], n = VD_MIN(chunk, s->l1_size - f);

			for (uint64_t i = f; i < f + n; i++) {
				s->l1_dirty[i] = true;
			}
			s->l1_any_dirty = true;
		}
		vd_log_ratelimited(VD_LOG_ERR, "qcow2: %s: writing metadata back: %s", img->path,
				   strerror(-err));
	} else {
		vd_qcow2_apply_frees(img, m->frees_snap);
	}
	snapshot_free(m);
	m->waiters = NULL;
	s->slice_waiters = NULL;
	m->running = false;
	if (m->next_waiters || m->again || (err == 0 && s->nr_frees >= QCOW2_MAX_PENDING_FREES)) {
		struct qcow2_req *nw = m->next_waiters;

		m->next_waiters = NULL;
		m->again = false;
		int ret = begin(img, nw);

		if (ret < 0) {
			vd_qcow2_wake(nw, ret);
		}
	}
	vd_qcow2_wake(w, err);
	vd_qcow2_wake(sw, err);
}

static void advance(struct vd_image *img)
{
	struct qcow2_state *s = qcow2_s(img);
	struct qcow2_mflush *m = &s->mf;
	uint64_t chunk = vd_qcow2_l1_chunk(s);

	for (;;) {
		if (m->err < 0 && m->phase < P_DONE) {
			m->phase = P_DONE;
		}
		switch (m->phase) {
		case P_RB:
			for (uint32_t i = 0; i < m->nr_rb; i++) {
				uint64_t b = m->rb[i];

				submit(img, VD_IO_WRITE, s->refblocks[b], s->cluster_bytes,
				       s->reftable[b]);
			}
			break;
		case P_RBF:
			if (m->rt_buf) {
				submit(img, VD_IO_FLUSH, NULL, 0, 0);
			}
			break;
		case P_RT:
			if (m->rt_buf) {
				submit(img, VD_IO_WRITE, m->rt_buf, m->rt_bytes, m->rt_off);
			}
			break;
		case P_F1:
			submit(img, VD_IO_FLUSH, NULL, 0, 0);
			break;
		case P_L2:
			for (uint32_t i = 0; i < m->nr_wb; i++) {
				submit(img, VD_IO_WRITE, m->wb_buf + (size_t)i * s->slice_bytes,
				       s->slice_bytes, m->wb[i]->key);
			}
			break;
		case P_F2:
			if (m->nr_wb) {
				submit(img, VD_IO_FLUSH, NULL, 0, 0);
			}
			break;
		case P_L1:
			for (uint32_t c = 0; c < m->nr_l1; c++) {
				uint64_t f = m->l1_first[c], n = VD_MIN(chunk, s->l1_size - f);

				/* whole sectors: entries past l1_size are zero */
				submit(img, VD_IO_WRITE, m->l1_buf + (size_t)c * chunk * 8,
				       VD_ALIGN_UP(n * 8, 512ull), s->l1_offset + f * 8);
			}
			break;
		case P_F3:
			if (m->nr_l1) {
				submit(img, VD_IO_FLUSH, NULL, 0, 0);
			}
			break;
		default:
			done(img);
			return;
		}
		if (m->inflight) {
			return;
		}
		m->phase++;
	}
}

/* Start a job for waiters; < 0: not started (the waiters are the caller's again). */
static int begin(struct vd_image *img, struct qcow2_req *waiters)
{
	struct qcow2_mflush *m = &qcow2_s(img)->mf;
	int ret;

	m->waiters = waiters;
	ret = start(img);
	if (ret < 0) {
		m->waiters = NULL;
		m->running = false;
	}
	return ret;
}

int vd_qcow2_mflush(struct vd_image *img, struct qcow2_req *req)
{
	struct qcow2_mflush *m = &qcow2_s(img)->mf;

	if (req) {
		req->next = NULL;
	}
	if (m->running) {
		if (req) {
			req->next = m->next_waiters;
			m->next_waiters = req;
		} else {
			m->again = true;
		}
		return 0;
	}
	return begin(img, req);
}

void vd_qcow2_mflush_drain(struct vd_image *img)
{
	struct qcow2_state *s = qcow2_s(img);

	while (s->mf.running && s->owner_ctx) {
		if (vd_ioctx_wait(s->owner_ctx, 100000000ull) < 0) {
			break;
		}
	}
}
