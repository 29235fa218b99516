/*
 * vhd-alloc: the metadata owner's allocation rounds. Jobs (first writes to
 * a block, or to clear sectors of a block with a partial bitmap) wait on
 * the owner's list; a round takes all of them, places new blocks at the
 * end of data and runs the ordered steps of vhd.h, then answers the jobs.
 * A failed round puts the file back as it was (see round_rollback).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "image/vhd/vhd-io-int.h"

/* ---- owner rounds ---- */

struct rblk {
	uint32_t block;
	bool fresh;
	uint32_t sector; /* BAT value */
	uint8_t *bitmap; /* staging: bitmap_bytes */
	uint8_t *batsec; /* staging: 512 bytes of BAT */
	bool became_full;
	struct vd_file_req zreq, breq, treq;
	struct iovec biov, tiov;
};

struct vhd_round {
	struct vhd_job *jobs;
	struct rblk *blks;
	uint32_t nblks;
	int pending;
	int phase;
	int64_t error;
	struct vd_file_req flush;
	struct vd_file_req footer_req, bm_hdr_req, bm_req;
	uint8_t *footer; /* 512 */
	uint8_t *bm_hdr; /* 512 */
	struct iovec fiov, bmiov, bmhiov;
	bool wrote_fresh;
	bool any_fresh;     /* new blocks placed at the end of data */
	bool bat_written;   /* BAT sectors were submitted (step 3) */
	uint64_t data_end0; /* before the round: what a rollback restores */
	int64_t rb_error;   /* first error of the rollback itself */
	struct vhd_queue *q;
};
static void round_start(struct vd_image *img, struct vhd_queue *q);

/* round phases 0..5 (vhd.h steps), then the rollback of a failed round */
enum { RB_FIRST = 10, RB_BAT = RB_FIRST, RB_FLUSH, RB_FOOTER, RB_TRUNCATE };

static void msg_answer(void *arg)
{
	struct vhd_sub *sub = arg;

	vhd_sub_done(sub, sub->job.result);
}

static void answer_resend_cb(struct vd_file_req *r, int64_t result);

static void answer(struct vhd_queue *owner, struct vhd_job *job)
{
	struct vhd_sub *sub = job->sub;
	struct vhd_queue *origin = sub->req->q;
	int ret;

	if (origin == owner) {
		vhd_sub_done(sub, job->result);
		return;
	}
	ret = vd_ioctx_send_msg(origin->ioctx, msg_answer, sub);
	if (ret == -EAGAIN) {
		vhd_freq_init(&sub->msgreq, VD_IO_FLUSH, 0, 0, NULL, 0, answer_resend_cb, sub);
		vd_ioctx_complete(owner->ioctx, &sub->msgreq, 0);
	}
}

static void answer_resend_cb(struct vd_file_req *r, int64_t result)
{
	struct vhd_sub *sub = r->cb_arg;
	struct vhd_state *s = vhd_st(sub->req->q->img);

	(void)result;
	answer(__atomic_load_n(&s->owner, __ATOMIC_ACQUIRE), &sub->job);
}

void vhd_job_enqueue(struct vd_image *img, struct vhd_queue *q, struct vhd_job *job)
{
	struct vhd_state *s = vhd_st(img);

	job->next = NULL;
	if (s->jobs_tail) {
		s->jobs_tail->next = job;
	} else {
		s->jobs_head = job;
	}
	s->jobs_tail = job;
	if (!s->round_running) {
		round_start(img, q);
	}
}

static void set_bits(uint8_t *map, uint32_t sec, uint32_t nsec)
{
	uint32_t i;

	for (i = sec; i < sec + nsec; i++) {
		map[i >> 3] |= (uint8_t)(0x80 >> (i & 7));
	}
}

static bool all_bits(const uint8_t *map, uint32_t n)
{
	uint32_t i;

	for (i = 0; i < n; i++) {
		if (!vhd_bit_test(map, i)) {
			return false;
		}
	}
	return true;
}

static void round_step(struct vhd_round *rd);
static void answer(struct vhd_queue *owner, struct vhd_job *job);

/* Record the round's first error (the rollback's, once it runs). */
static void round_fail(struct vhd_round *rd, int64_t result)
{
	int64_t *err = rd->phase >= RB_FIRST ? &rd->rb_error : &rd->error;

	if (result < 0 && *err == 0) {
		*err = result;
	}
}

static void round_one_done(struct vhd_round *rd, int64_t result)
{
	round_fail(rd, result);
	if (--rd->pending == 0) {
		round_step(rd);
	}
}

static void round_io_cb(struct vd_file_req *r, int64_t result)
{
	round_one_done(r->cb_arg, result);
}

static void job_io_cb(struct vd_file_req *r, int64_t result)
{
	struct vhd_sub *sub = r->cb_arg;
	round_one_done(vhd_st(sub->req->q->img)->round, result);
}

static void rsubmit(struct vhd_round *rd, struct vd_file_req *r, enum vd_io_op op, uint64_t off,
		    uint64_t len, void *buf, struct iovec *iov)
{
	struct vhd_state *s = vhd_st(rd->q->img);

	if (buf) {
		iov->iov_base = buf;
		iov->iov_len = len;
	}
	vhd_freq_init(r, op, off, len, buf ? iov : NULL, buf ? 1 : 0, round_io_cb, rd);
	rd->pending++;
	vd_file_submit(s->file, rd->q->ioctx, r);
}

static struct rblk *find_blk(struct vhd_round *rd, uint32_t block)
{
	uint32_t i;

	for (i = 0; i < rd->nblks; i++) {
		if (rd->blks[i].block == block) {
			return &rd->blks[i];
		}
	}
	return NULL;
}

static void round_free(struct vhd_round *rd)
{
	uint32_t i;

	for (i = 0; i < rd->nblks; i++) {
		free(rd->blks[i].bitmap);
		free(rd->blks[i].batsec);
	}
	free(rd->blks);
	free(rd->footer);
	free(rd->bm_hdr);
	free(rd);
}

static void answer_later_cb(struct vd_file_req *r, int64_t result)
{
	struct vhd_sub *sub = r->cb_arg;
	struct vhd_state *s = vhd_st(sub->req->q->img);

	(void)result;
	answer(__atomic_load_n(&s->owner, __ATOMIC_ACQUIRE), &sub->job);
}

/* Fail every job, each answered from the owner's next poll (never inline). */
static void fail_jobs_later(struct vhd_queue *owner, struct vhd_job *jobs, int64_t err)
{
	struct vhd_job *j, *next;

	for (j = jobs; j; j = next) {
		next = j->next;
		j->result = err;
		vhd_freq_init(&j->sub->msgreq, VD_IO_FLUSH, 0, 0, NULL, 0, answer_later_cb, j->sub);
		vd_ioctx_complete(owner->ioctx, &j->sub->msgreq, 0);
	}
}

/* Run the round's next phase from the owner's next poll. */
static void round_kick(struct vhd_round *rd)
{
	rd->pending = 1;
	vhd_freq_init(&rd->flush, VD_IO_FLUSH, 0, 0, NULL, 0, round_io_cb, rd);
	vd_ioctx_complete(rd->q->ioctx, &rd->flush, 0);
}

/* Group the round's jobs by block and place new blocks at the end of data. */
static int group_jobs(struct vhd_round *rd)
{
	struct vhd_state *s = vhd_st(rd->q->img);
	struct vhd_job *j;
	uint32_t i;

	for (j = rd->jobs; j; j = j->next) {
		struct rblk *b = find_blk(rd, j->block);

		if (!b) {
			b = &rd->blks[rd->nblks++];
			b->block = j->block;
			b->sector = vhd_bat_get(s, j->block);
			if (b->sector == VHD_BAT_UNUSED) {
				/*
				 * The sector bitmap sits just before a page boundary so
				 * that the block's data is page-aligned: O_DIRECT on
				 * 4 KiB-sector disks needs it, and sub-block direct
				 * writes serialise on ext4/xfs.
				 */
				uint64_t off = VD_ALIGN_UP(s->data_end + s->bitmap_bytes,
							   (uint64_t)VD_PAGE_SIZE) -
					       s->bitmap_bytes;

				if (off / VHD_SECTOR >= VHD_BAT_UNUSED) {
					return -ENOSPC;
				}
				b->fresh = true;
				rd->any_fresh = true;
				b->sector = (uint32_t)(off / VHD_SECTOR);
				s->data_end = off + s->bitmap_bytes + s->block_size;
			}
			b->bitmap = aligned_alloc(VD_PAGE_SIZE,
						  VD_ALIGN_UP(s->bitmap_bytes, VD_PAGE_SIZE));
			if (!b->bitmap) {
				return -ENOMEM;
			}
			if (b->fresh) {
				memset(b->bitmap, s->type == VHD_TYPE_DYNAMIC ? 0xff : 0,
				       s->bitmap_bytes);
			} else {
				const uint8_t *cur = s->bitmaps[b->block];

				for (i = 0; i < s->bitmap_bytes; i++) {
					b->bitmap[i] = __atomic_load_n(&cur[i], __ATOMIC_RELAXED);
				}
			}
		}
		/* a fresh dynamic block's bitmap is all ones already */
		set_bits(b->bitmap, j->sec, j->nsec);
	}
	return 0;
}

static void round_start(struct vd_image *img, struct vhd_queue *q)
{
	struct vhd_state *s = vhd_st(img);
	struct vhd_round *rd;
	struct vhd_job *j;
	uint32_t n = 0;

	if (!s->jobs_head) {
		return;
	}
	rd = calloc(1, sizeof(*rd));
	for (j = s->jobs_head; j; j = j->next) {
		n++;
	}
	if (rd) {
		rd->blks = calloc(n, sizeof(*rd->blks));
		rd->footer = aligned_alloc(VD_PAGE_SIZE, VD_PAGE_SIZE);
		rd->bm_hdr = aligned_alloc(VD_PAGE_SIZE, VD_PAGE_SIZE);
	}
	if (!rd || !rd->blks || !rd->footer || !rd->bm_hdr) {
		/* answer everyone with ENOMEM; nothing was written */
		struct vhd_job *jobs = s->jobs_head;

		s->jobs_head = s->jobs_tail = NULL;
		if (rd) {
			round_free(rd);
		}
		fail_jobs_later(q, jobs, -ENOMEM);
		return;
	}
	rd->q = q;
	rd->jobs = s->jobs_head;
	s->jobs_head = s->jobs_tail = NULL;
	s->round = rd;
	s->round_running = true;
	if (img->corrupt) {
		fail_jobs_later(q, rd->jobs, -EIO);
		rd->jobs = NULL;
		rd->phase = 99;
		round_kick(rd);
		return;
	}
	rd->data_end0 = s->data_end;
	rd->error = group_jobs(rd);
	if (rd->error) {
		/* nothing was written: the placement is undone */
		s->data_end = rd->data_end0;
		fail_jobs_later(q, rd->jobs, rd->error);
		rd->jobs = NULL;
		rd->phase = 99;
		round_kick(rd);
		return;
	}
	rd->phase = 0;
	round_kick(rd);
}

/*
 * The BAT sectors holding the round's new blocks: with their new entries,
 * or (restore: rolling back) with the entries as they were, which the
 * in-memory BAT still has (new entries are published only on success).
 */
static void write_bat_sectors(struct vhd_round *rd, bool restore)
{
	struct vhd_state *s = vhd_st(rd->q->img);
	uint32_t i, k;

	for (i = 0; i < rd->nblks; i++) {
		struct rblk *b = &rd->blks[i];
		uint32_t first = b->block & ~127u; /* 128 entries per sector */

		if (!b->fresh) {
			continue;
		}
		if (!b->batsec) {
			b->batsec = aligned_alloc(VD_PAGE_SIZE, VD_PAGE_SIZE);
		}
		if (!b->batsec) {
			round_fail(rd, -ENOMEM);
			return;
		}
		for (k = 0; k < 128; k++) {
			uint32_t e = first + k < s->header.max_table_entries
					     ? vhd_bat_get(s, first + k)
					     : VHD_BAT_UNUSED;
			struct rblk *o = find_blk(rd, first + k);

			if (o && o->fresh && !restore) {
				e = o->sector;
			}
			vhd_put_be32(b->batsec + 4 * (size_t)k, e);
		}
		rsubmit(rd, &b->treq, VD_IO_WRITE, s->header.table_offset + (uint64_t)first * 4,
			VHD_SECTOR, b->batsec, &b->tiov);
	}
}

static void publish(struct vhd_round *rd)
{
	struct vd_image *img = rd->q->img;
	struct vhd_state *s = vhd_st(img);
	uint32_t i, k;

	for (i = 0; i < rd->nblks; i++) {
		struct rblk *b = &rd->blks[i];
		bool full = all_bits(b->bitmap, s->sectors_per_block);

		if (b->fresh) {
			/* the staging copy becomes the block's bitmap */
			uint8_t *map = full ? s->full_bitmap : b->bitmap;

			if (!full) {
				b->bitmap = NULL;
			}
			__atomic_store_n(&s->bitmaps[b->block], map, __ATOMIC_RELEASE);
		} else if (s->bitmaps[b->block] != s->full_bitmap) {
			uint8_t *cur = s->bitmaps[b->block];

			for (k = 0; k < s->bitmap_bytes; k++) {
				__atomic_fetch_or(&cur[k], b->bitmap[k], __ATOMIC_RELEASE);
			}
		}
		if (b->fresh) {
			__atomic_store_n(&s->bat[b->block], b->sector, __ATOMIC_RELEASE);
			rd->wrote_fresh = true;
		}
		if (s->has_batmap && full && !vhd_bit_test(s->batmap, b->block)) {
			b->became_full = true;
			s->batmap[b->block >> 3] |= (uint8_t)(0x80 >> (b->block & 7));
		}
	}
}

static void write_tail(struct vhd_round *rd)
{
	struct vhd_state *s = vhd_st(rd->q->img);
	uint32_t i;
	bool bm = false;

	for (i = 0; i < rd->nblks; i++) {
		if (rd->blks[i].became_full) {
			bm = true;
		}
	}
	if (bm) {
		uint64_t len = (uint64_t)s->batmap_sectors * VHD_SECTOR;
		uint32_t sum = 0;
		uint64_t k;

		/* the whole map: it is small (1 bit per block) and keeps the checksum true */
		for (k = 0; k < len; k++) {
			sum += s->batmap[k];
		}
		memset(rd->bm_hdr, 0, 512);
		memcpy(rd->bm_hdr, VHD_COOKIE_BATMAP, 8);
		for (k = 0; k < 8; k++) {
			rd->bm_hdr[8 + k] = (uint8_t)(s->batmap_off >> (56 - 8 * k));
		}
		vhd_put_be32(rd->bm_hdr + 16, s->batmap_sectors);
		vhd_put_be32(rd->bm_hdr + 20, VHD_BATMAP_VERSION);
		vhd_put_be32(rd->bm_hdr + 24, ~sum);
		rsubmit(rd, &rd->bm_req, VD_IO_WRITE, s->batmap_off, len, s->batmap, &rd->bmiov);
		rsubmit(rd, &rd->bm_hdr_req, VD_IO_WRITE, s->batmap_hdr_off, 512, rd->bm_hdr,
			&rd->bmhiov);
	}
}

/*
 * A round that placed new blocks failed (a full filesystem, an I/O error):
 * put the file back as it was before the round, so that the footer is at
 * the end of the file and the next round allocates at the same place:
 *   RB_BAT       the BAT sectors again with the old entries, if step 3 ran
 *   RB_FLUSH     (then) flush them
 *   RB_FOOTER    the footer at the old end (the first new bitmap or data
 *                may have overwritten it)
 *   RB_TRUNCATE  cut the file after that footer, giving back what the
 *                round's writes took; restore data_end
 * Each step runs only if the ones before succeeded. If any failed, the
 * round's blocks stay placed (data_end is not moved back): nothing
 * references them, they are a leak that `check --repair` truncates. The
 * truncate is a synchronous call on the owner's thread, on this rare
 * error path only (the io layer has no asynchronous resize).
 */
static void round_rollback(struct vhd_round *rd)
{
	struct vd_image *img = rd->q->img;
	struct vhd_state *s = vhd_st(img);
	int ret;

	switch (rd->phase) {
	case RB_BAT:
		rd->phase = RB_FLUSH;
		if (rd->bat_written) {
			write_bat_sectors(rd, true);
		}
		break;
	case RB_FLUSH:
		rd->phase = RB_FOOTER;
		if (rd->bat_written && rd->rb_error == 0) {
			rsubmit(rd, &rd->flush, VD_IO_FLUSH, 0, 0, NULL, NULL);
		}
		break;
	case RB_FOOTER:
		rd->phase = RB_TRUNCATE;
		if (rd->rb_error == 0) {
			vhd_footer_encode(&s->footer, rd->footer);
			rsubmit(rd, &rd->footer_req, VD_IO_WRITE, rd->data_end0, 512, rd->footer,
				&rd->fiov);
		}
		break;
	default:
		rd->phase = 99;
		ret = rd->rb_error == 0 ? vd_file_resize(s->file, rd->data_end0 + 512) : 0;
		if (rd->rb_error == 0 && ret == 0) {
			s->data_end = rd->data_end0;
			s->file_bytes = rd->data_end0 + 512;
			s->end_footer_ok = true;
		} else {
			vd_log_ratelimited(VD_LOG_ERR,
					   "vhd: %s: cannot undo a failed allocation (%s): "
					   "unreferenced blocks left at the end",
					   img->path,
					   strerror((int)-(rd->rb_error ? rd->rb_error : ret)));
			s->end_footer_ok = false;
		}
		break;
	}
}

/* Step 1: the bitmaps of new blocks, the footer at the new end, the jobs' data. */
static void write_blocks(struct vhd_round *rd)
{
	struct vhd_state *s = vhd_st(rd->q->img);
	struct vhd_job *j;
	uint32_t i;

	for (i = 0; i < rd->nblks; i++) {
		struct rblk *b = &rd->blks[i];

		if (b->fresh) {
			rsubmit(rd, &b->breq, VD_IO_WRITE, (uint64_t)b->sector * VHD_SECTOR,
				s->bitmap_bytes, b->bitmap, &b->biov);
		}
	}
	if (rd->any_fresh) {
		/*
		 * The footer at the new end before any reference to the
		 * new blocks: if the file cannot grow that far, the round
		 * fails and is rolled back, and no step after the BAT can
		 * leave the file without a footer at its end.
		 */
		vhd_footer_encode(&s->footer, rd->footer);
		rsubmit(rd, &rd->footer_req, VD_IO_WRITE, s->data_end, 512, rd->footer, &rd->fiov);
		s->file_bytes = VD_MAX(s->file_bytes, s->data_end + 512);
	}
	for (j = rd->jobs; j; j = j->next) {
		struct rblk *b = find_blk(rd, j->block);
		struct vhd_sub *sub = j->sub;
		uint64_t off = (uint64_t)b->sector * VHD_SECTOR + s->bitmap_bytes +
			       (uint64_t)j->sec * VHD_SECTOR;
		uint64_t len = (uint64_t)j->nsec * VHD_SECTOR;

		if (j->zero) {
			vhd_freq_init(&sub->freq, VD_IO_WRITE_ZEROES, off, len, NULL, 0, job_io_cb,
				      sub);
		} else {
			vhd_freq_init(&sub->freq, VD_IO_WRITE, off, len, sub->iov, sub->iovcnt,
				      job_io_cb, sub);
		}
		rd->pending++;
		vd_file_submit(s->file, rd->q->ioctx, &sub->freq);
		s->file_bytes = VD_MAX(s->file_bytes, off + len);
	}
}

static void round_step(struct vhd_round *rd)
{
	struct vd_image *img = rd->q->img;
	struct vhd_state *s = vhd_st(img);
	struct vhd_job *j, *next;
	uint32_t i;

	rd->pending = 1; /* held while submitting */
	switch (rd->phase) {
	case 0: /* zero the data area of fresh blocks that lie inside the file */
		rd->phase = 1;
		for (i = 0; i < rd->nblks && rd->error == 0; i++) {
			struct rblk *b = &rd->blks[i];
			uint64_t data = (uint64_t)b->sector * VHD_SECTOR + s->bitmap_bytes;

			if (b->fresh && data < s->file_bytes) {
				rsubmit(rd, &b->zreq, VD_IO_WRITE_ZEROES, data,
					VD_MIN((uint64_t)s->block_size, s->file_bytes - data), NULL,
					NULL);
			}
		}
		break;
	case 1: /* bitmaps of fresh blocks, the footer at the new end, the jobs' data */
		rd->phase = 2;
		if (rd->error) {
			break;
		}
		write_blocks(rd);
		break;
	case 2: /* data before references */
		rd->phase = 3;
		if (rd->error == 0) {
			rsubmit(rd, &rd->flush, VD_IO_FLUSH, 0, 0, NULL, NULL);
		}
		break;
	case 3: /* BAT entries of fresh blocks, bitmaps of old blocks */
		rd->phase = 4;
		if (rd->error) {
			break;
		}
		rd->bat_written = rd->any_fresh;
		write_bat_sectors(rd, false);
		for (i = 0; i < rd->nblks; i++) {
			struct rblk *b = &rd->blks[i];

			if (!b->fresh) {
				rsubmit(rd, &b->breq, VD_IO_WRITE, (uint64_t)b->sector * VHD_SECTOR,
					s->bitmap_bytes, b->bitmap, &b->biov);
			}
		}
		break;
	case 4: /* visible: publish, answer, then the footer and batmap */
		rd->phase = 5;
		if (rd->error == 0) {
			publish(rd);
		} else {
			vd_log_ratelimited(VD_LOG_ERR, "vhd: %s: allocation failed: %s", img->path,
					   strerror((int)-rd->error));
		}
		for (j = rd->jobs; j; j = next) {
			next = j->next;
			j->result = rd->error;
			answer(rd->q, j);
		}
		rd->jobs = NULL;
		if (rd->error == 0) {
			write_tail(rd);
		} else if (rd->any_fresh) {
			rd->phase = RB_BAT;
		}
		break;
	case RB_BAT:
	case RB_FLUSH:
	case RB_FOOTER:
	case RB_TRUNCATE:
		round_rollback(rd);
		break;
	default: /* done */
		s->round = NULL;
		s->round_running = false;
		{
			struct vhd_queue *q = rd->q;

			round_free(rd);
			if (s->jobs_head) {
				round_start(img, q);
			}
		}
		return;
	}
	round_one_done(rd, 0);
}
